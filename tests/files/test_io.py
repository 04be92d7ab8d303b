"""Model files: bit-exact round trips, the safetensors package as an independent reader,
every crafted bad file rejected with ModelFileError, atomic saves under faults and SIGKILL."""
import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

import fastrnn
from fastrnn.io import ModelFileError, load_bytes, model_bytes
from _helpers import bit_flips_that_load

CONFIGS = [
    dict(cell="lstm", input_size=3, hidden_size=4, output_size=2, task="regression",
         peephole="io", coupled=True),
    dict(cell="lstm", input_size=3, hidden_size=4, output_size=2, task="multilabel",
         peephole=True, num_layers=2, bidirectional=True),
    dict(cell="gru", vocab_size=7, hidden_size=5, task="next_token", reset_after=False),
    dict(cell="rnn", input_size=2, hidden_size=3, output_size=3,
         task="sequence_classification", nonlinearity="relu", dtype="float64"),
]


def tiny():
    return fastrnn.SequenceModel("gru", input_size=2, hidden_size=2, output_size=1,
                                 task="regression", seed=0)


def _inputs(m, rng):
    if m.embedding is not None:
        return rng.integers(0, m.config["vocab_size"], (3, 5))
    return rng.standard_normal((3, 5, m.config["input_size"])).astype(m.dtype)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c['cell']}-{c['task']}")
def test_round_trip_is_bit_exact(cfg, tmp_path):
    m = fastrnn.SequenceModel(seed=1, **cfg)
    for p, _ in m.parameters():
        p += np.random.default_rng(2).standard_normal(p.shape).astype(p.dtype) * 0.1
    path = tmp_path / "m.fastrnn"
    m.save(path)
    back = fastrnn.load(path)
    assert back.config == m.config
    for name, a in m.named_parameters().items():
        b = back.named_parameters()[name]
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    x = _inputs(m, np.random.default_rng(3))
    lengths = np.array([5, 2, 0])
    assert m.predict(x, lengths).tobytes() == back.predict(x, lengths).tobytes()


def test_safetensors_package_reads_our_files(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open
    m = fastrnn.SequenceModel(seed=1, **CONFIGS[1])
    path = tmp_path / "m.safetensors"
    m.save(path)
    arrays = st.load_file(str(path))
    assert set(arrays) == set(m.named_parameters())
    for name, a in m.named_parameters().items():
        np.testing.assert_array_equal(arrays[name], a)
    with safe_open(str(path), "np") as f:
        assert f.metadata()["fastrnn_format"] == str(fastrnn.io.FORMAT_VERSION)
    # and files the package writes (with our metadata) load here
    blob = model_bytes(m)
    n = struct.unpack("<Q", blob[:8])[0]
    meta = json.loads(blob[8:8 + n])["__metadata__"]
    st.save_file({k: np.ascontiguousarray(v) for k, v in m.named_parameters().items()},
                 str(tmp_path / "theirs.safetensors"), metadata=meta)
    back = fastrnn.load(tmp_path / "theirs.safetensors")
    assert back.named_parameters()["head.weight"].tobytes() == m.head.weight.tobytes()


def test_truncated_at_every_byte_is_rejected():
    blob = model_bytes(tiny())
    for n in range(len(blob)):
        with pytest.raises(ModelFileError):
            load_bytes(blob[:n])


def test_every_single_bit_flip_is_rejected():
    accepted = bit_flips_that_load(model_bytes(tiny()), load_bytes, ModelFileError)
    assert not accepted, f"{len(accepted)} flipped files loaded, first {accepted[:5]}"


def _craft(header, data=b"", meta=None, pad=True):
    header = dict(header)
    if meta is not None:
        header["__metadata__"] = meta
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _good_parts():
    blob = model_bytes(tiny())
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    return header, blob[8 + n:]


@pytest.mark.parametrize("case", ["version", "huge_header", "huge_tensor", "overlap", "gap",
                                  "trailing", "bad_dtype", "unknown_arch_key", "python_name",
                                  "missing_tensor", "no_metadata", "nan"])
def test_crafted_files_are_rejected(case):
    header, data = _good_parts()
    meta = header.pop("__metadata__")
    names = sorted(header, key=lambda k: header[k]["data_offsets"][0])
    if case == "version":
        meta["fastrnn_format"] = "3"
        match = "version"
    elif case == "huge_header":
        blob = struct.pack("<Q", 1 << 40) + b"{}"
        with pytest.raises(ModelFileError, match="header length"):
            load_bytes(blob)
        return
    elif case == "huge_tensor":
        header[names[0]]["shape"] = [1 << 30, 1 << 30]
        match = "shape|bytes"
    elif case == "overlap":
        header[names[1]]["data_offsets"][0] -= 4
        match = "gap or overlap|bytes"
    elif case == "gap":
        header[names[1]]["data_offsets"] = [o + 4 for o in header[names[1]]["data_offsets"]]
        match = "gap or overlap"
    elif case == "trailing":
        data = data + b"\0" * 8
        match = "checksum|trailing"
    elif case == "bad_dtype":
        header[names[0]]["dtype"] = "F16"
        match = "dtype"
    elif case == "unknown_arch_key":
        arch = json.loads(meta["architecture"]); arch["__class__"] = "os.system"
        meta["architecture"] = json.dumps(arch)
        match = "unknown key"
    elif case == "python_name":
        arch = json.loads(meta["architecture"]); arch["cell"] = "builtins.eval"
        meta["architecture"] = json.dumps(arch)
        match = "not allowed"
    elif case == "missing_tensor":
        del header[names[-1]]
        data = data[:header[names[-2]]["data_offsets"][1]]
        match = "checksum|match"
    elif case == "no_metadata":
        meta = None
        match = "__metadata__"
    elif case == "nan":
        data = bytearray(data)
        data[0:4] = np.array([np.nan], "<f4").tobytes()
        data = bytes(data)
        match = "checksum"
    with pytest.raises(ModelFileError, match=match):
        load_bytes(_craft(header, data, meta))


def test_nan_weights_with_a_valid_checksum_are_rejected():
    m = tiny()
    m.head.weight[0, 0] = np.nan
    with pytest.raises(ModelFileError, match="NaN"):
        load_bytes(model_bytes(m))


@pytest.mark.parametrize("blob,name", [
    (b"\x80\x04\x95" + b"x" * 40, "pickle"),
    (b"PK\x03\x04" + b"\0" * 40, "zip"),
    (b"\x89HDF\r\n\x1a\n" + b"\0" * 40, "HDF5"),
    (b"\x93NUMPY\x01\x00" + b"\0" * 40, "numpy"),
    (b"", "too short"),
    (b"hello world, not a model", "not a fastrnn or safetensors file: it looks like a text"),
])
def test_foreign_formats_are_named(blob, name):
    with pytest.raises(ModelFileError, match=name):
        load_bytes(blob)


def test_a_pickle_is_never_executed(tmp_path):
    import pickle
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.fastrnn"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ModelFileError, match="pickle"):
        fastrnn.load(path)
    assert not marker.exists()


def test_failed_save_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "m.fastrnn"
    old = tiny()
    old.save(path)
    before = path.read_bytes()
    new = fastrnn.SequenceModel("gru", input_size=2, hidden_size=2, output_size=1,
                                task="regression", seed=9)

    def boom(*a):
        raise OSError("simulated failure")
    for target in ("replace", "fsync"):
        with monkeypatch.context() as mp:
            mp.setattr(os, target, boom)
            with pytest.raises(OSError, match="simulated"):
                new.save(path)
        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.fastrnn"]


def test_disk_full_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.fastrnn"
    tiny().save(path)
    before = path.read_bytes()
    code = (
        "import resource, sys, fastrnn\n"
        "m = fastrnn.SequenceModel('lstm', input_size=8, hidden_size=64, output_size=1, "
        "task='regression', seed=1)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "import signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "try:\n    m.save(sys.argv[1])\nexcept OSError as e:\n    print('failed', e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120)
    assert "failed" in out.stdout, out.stdout + out.stderr
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.fastrnn"]


def test_sigkill_during_save_leaves_a_loadable_file(tmp_path):
    """Kill a process that saves in a loop at random moments: the file always loads and is
    one of the two models it alternates between."""
    path = tmp_path / "m.fastrnn"
    code = (
        "import sys, fastrnn\n"
        "ms = [fastrnn.SequenceModel('lstm', input_size=16, hidden_size=96, output_size=4, "
        "task='regression', seed=s) for s in (1, 2)]\n"
        "ms[0].save(sys.argv[1]); print('ready', flush=True)\n"
        "i = 0\n"
        "while True:\n    ms[i % 2].save(sys.argv[1]); i += 1\n")
    heads = {fastrnn.SequenceModel("lstm", input_size=16, hidden_size=96, output_size=4,
                                   task="regression", seed=s).head.weight.tobytes()
             for s in (1, 2)}
    rng = np.random.default_rng(0)
    kills = 12
    for _ in range(kills):
        p = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
        assert p.stdout.readline().startswith(b"ready")
        time.sleep(float(rng.uniform(0.0, 0.15)))
        p.send_signal(signal.SIGKILL)
        p.wait()
        m = fastrnn.load(path)
        assert m.head.weight.tobytes() in heads
    leftovers = [q.name for q in tmp_path.iterdir() if q.name != "m.fastrnn"]
    # a kill between mkstemp and replace can leave a temporary; it is never the model file
    assert all(n.startswith(".fastrnn-") for n in leftovers)


def test_saved_files_get_ordinary_permissions(tmp_path):
    m = fastrnn.SequenceModel("gru", input_size=2, hidden_size=2, output_size=1,
                              task="regression")
    m.save(tmp_path / "m.fastrnn")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "m.fastrnn").stat().st_mode & 0o777 == 0o666 & ~umask


def test_replaced_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "m.fastrnn"
    tiny().save(path)
    os.chmod(path, 0o600)
    tiny().save(path)
    assert path.stat().st_mode & 0o777 == 0o600


def test_declared_sizes_that_overflow_int64_are_rejected():
    header, data = _good_parts()
    meta = header.pop("__metadata__")
    name = sorted(header, key=lambda k: header[k]["data_offsets"][0])[0]
    header[name]["shape"] = [65536] * 4
    with pytest.raises(ModelFileError):
        load_bytes(_craft(header, data, meta))


# ---- text_level: how a language model's text was cut into tokens -------------------------

def _language_model(level):
    m = fastrnn.SequenceModel("gru", vocab_size=3, hidden_size=4, task="next_token", seed=0)
    m.vocabulary = ["a", "b", "c"] if level != "word" else ["the", "cat", "sat"]
    if level is not None:
        m.text_level = level
    return m


@pytest.mark.parametrize("level", ["char", "word", None])
def test_text_level_is_saved_and_restored(level, tmp_path):
    """Before, a word-level model came back without its level (`sample` and `similar`
    needed --level again)."""
    m = _language_model(level)
    m.save(tmp_path / "m.fastrnn")
    back = fastrnn.load(tmp_path / "m.fastrnn")
    assert back.text_level == level and back.vocabulary == m.vocabulary
    import copy
    assert copy.deepcopy(m).text_level == level        # pickling goes through the file bytes


def test_text_level_absent_from_old_files_and_unchanged_bytes_without_it():
    """A model without a level writes exactly the bytes it wrote before the key existed
    (its checksum too), so old files and new files without a level are the same."""
    blob = model_bytes(_language_model(None))
    assert b"text_level" not in blob
    assert load_bytes(blob).text_level is None


def test_text_level_is_checked_and_covered_by_the_checksum():
    blob = model_bytes(_language_model("word"))
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    meta = header["__metadata__"]
    meta["text_level"] = "char"                         # checksum not recomputed
    with pytest.raises(ModelFileError, match="checksum"):
        load_bytes(_craft(header, blob[8 + n:]))
    from fastrnn.io import _checksum
    for bad in ("sentence", "", "Word"):
        meta["text_level"] = bad
        meta["sha256"] = _checksum(meta, blob[8 + n:])
        with pytest.raises(ModelFileError, match="text_level"):
            load_bytes(_craft(header, blob[8 + n:]))


def test_only_models_have_a_text_level():
    layer = fastrnn.GRU(2, 3)
    layer.text_level = "word"
    with pytest.raises(ValueError, match="text_level"):
        model_bytes(layer)
    m = _language_model(None)
    m.text_level = "words"
    with pytest.raises(ValueError, match="text_level"):
        model_bytes(m)


# ---- the bounds a file's tensors must respect before they are read ------------------------

@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", {}),
                                     ("AdamW", {}), ("Adagrad", {}),
                                     ("RMSprop", dict(centered=True, momentum=0.9))],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_every_optimizer_state_fits_the_bound_the_loader_allows(name, kw, tmp_path):
    """fastrnn.io refuses optimizer tensors of more than _OPTIMIZER_BUFFERS values per
    parameter before reading them; each optimizer, with all its buffers, stays inside."""
    from fastrnn.io import _OPTIMIZER_BUFFERS
    m = fastrnn.SequenceModel("lstm", input_size=2, hidden_size=3, output_size=1,
                              task="regression", peephole=True, seed=0)
    opt = getattr(fastrnn.nn.optim, name)(m.parameters(), **kw)
    assert len(opt.state) <= _OPTIMIZER_BUFFERS
    m.save(tmp_path / "m.fastrnn", optimizer=opt)
    back, state = fastrnn.load(tmp_path / "m.fastrnn", with_optimizer=True)
    assert state["name"] == name


def test_optimizer_tensors_past_the_bound_are_refused_before_they_are_read():
    from fastrnn.io import _checksum
    m = tiny()
    blob = model_bytes(m)
    n = struct.unpack("<Q", blob[:8])[0]
    header, data = json.loads(blob[8:8 + n]), blob[8 + n:]
    weights = sum(a.size for a in m.named_parameters().values())
    extra = np.zeros(3 * weights + 1, "<f4").tobytes()
    header["optimizer.m.0"] = {"dtype": "F32", "shape": [3 * weights + 1],
                               "data_offsets": [0, len(extra)]}
    for k in header:                                  # the others move after it (name order)
        if k not in ("__metadata__", "optimizer.m.0") and k > "optimizer.m.0":
            header[k]["data_offsets"] = [o + len(extra) for o in header[k]["data_offsets"]]
    first = [k for k in sorted(header) if k != "__metadata__"]
    before = first[:first.index("optimizer.m.0")]
    end = max(header[k]["data_offsets"][1] for k in before)
    header["optimizer.m.0"]["data_offsets"] = [end, end + len(extra)]
    new = data[:end] + extra + data[end:]
    header["__metadata__"]["sha256"] = _checksum(header["__metadata__"], new)
    with pytest.raises(ModelFileError, match="optimizer tensors of"):
        load_bytes(_craft(header, new))


def test_weights_more_than_the_architecture_makes_are_refused_before_they_are_read():
    """Before, only a lower bound was checked: a file could declare tensors of any size for
    a tiny architecture, and they were read (and checksummed) before it was refused."""
    from fastrnn.io import _checksum
    blob = model_bytes(tiny())
    n = struct.unpack("<Q", blob[:8])[0]
    header, data = json.loads(blob[8:8 + n]), blob[8 + n:]
    # head.bias grows by 1000 values; every later tensor moves along
    grow = 4000
    header["head.bias"]["shape"] = [header["head.bias"]["shape"][0] + 1000]
    b, e = header["head.bias"]["data_offsets"]
    header["head.bias"]["data_offsets"] = [b, e + grow]
    for k in header:
        if k not in ("__metadata__", "head.bias") and header[k]["data_offsets"][0] >= e:
            header[k]["data_offsets"] = [o + grow for o in header[k]["data_offsets"]]
    new = data[:e] + b"\0" * grow + data[e:]
    header["__metadata__"]["sha256"] = _checksum(header["__metadata__"], new)
    with pytest.raises(ModelFileError, match="at most .* parameters, the file holds"):
        load_bytes(_craft(header, new))


def test_files_record_the_gate_order_and_a_different_one_is_refused(monkeypatch):
    """Version 2 files say how their weight matrices stack the gate blocks; one written in
    another order (here: a build whose LSTM stacked i, g, f, o) is refused instead of read
    wrongly, and so is a version 2 file without the entry. Version 1 files (before the
    order was recorded) load in PyTorch's order: tests/files/test_golden.py."""
    from fastrnn import _spec
    for layer, order in ((fastrnn.LSTM(3, 4), "ifgo"), (fastrnn.LSTM(3, 4, coupled=True), "igo"),
                         (fastrnn.GRU(3, 4), "rzn"), (fastrnn.RNN(3, 4), "h"),
                         (fastrnn.LSTMCell(3, 4), "ifgo")):
        blob = fastrnn.io.model_bytes(layer)
        n = struct.unpack("<Q", blob[:8])[0]
        assert json.loads(blob[8:8 + n])["__metadata__"]["gate_order"] == order
        fastrnn.io.load_bytes(blob)
    monkeypatch.setitem(_spec.GATE_ORDER, "lstm", ("i", "g", "f", "o"))
    blob = fastrnn.io.model_bytes(fastrnn.LSTM(3, 4))
    monkeypatch.setitem(_spec.GATE_ORDER, "lstm", ("i", "f", "g", "o"))
    with pytest.raises(ModelFileError, match="gate_order 'igfo'.*'ifgo'"):
        load_bytes(blob)
    header, data = _good_parts()
    meta = header.pop("__metadata__")
    del meta["gate_order"]
    with pytest.raises(ModelFileError, match="gate_order None"):
        load_bytes(_craft(header, data, meta))
