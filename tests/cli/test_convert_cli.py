"""``fastrnn convert IN OUT``: every direction between .pt/.pth, .safetensors, .onnx and
.fastrnn that is available, each result checked against PyTorch (or ONNX Runtime) by the
test itself; the printed parity number; .pt files holding anything but tensors refused
without being unpickled (a payload that would create a marker file never runs)."""
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn import io
from fastrnn.cli.main import main
from fastrnn.interop import torch_io

torch = pytest.importorskip("torch")
nn = torch.nn


def convert(capsys, *argv):
    rc = main(["convert", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def reported(out):
    """The largest absolute difference the command printed."""
    m = re.search(r"largest absolute difference: (\S+)", out)
    assert m, out
    return float(m.group(1))


def run_torch(module, x):
    module.eval()
    with torch.no_grad():
        out, st = module(torch.from_numpy(x))
    st = st if isinstance(st, tuple) else (st,)
    return [out.numpy()] + [s.numpy() for s in st]


def run_fastrnn(layer, x):
    out, st = layer(x)
    return [out] + list(st if isinstance(st, tuple) else (st,))


def assert_same_function(layer, module, input_size, batch_first=False):
    x = np.random.default_rng(3).standard_normal((2, 6, input_size) if batch_first
                                                 else (6, 2, input_size)).astype(np.float32)
    for a, b in zip(run_fastrnn(layer, x), run_torch(module, x)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


@pytest.fixture
def lstm_pt(tmp_path):
    torch.manual_seed(0)
    module = nn.LSTM(3, 5, num_layers=2, bidirectional=True)
    path = tmp_path / "lstm.pt"
    torch.save({"rnn." + k: v for k, v in module.state_dict().items()}, path)
    return module, path


def test_pt_to_fastrnn_to_pt_is_exact(lstm_pt, tmp_path, capsys):
    module, path = lstm_pt
    rc, out, _ = convert(capsys, path, tmp_path / "m.fastrnn")
    assert rc == 0 and 0 < reported(out) <= 1e-4, out
    layer = fastrnn.load(tmp_path / "m.fastrnn")
    assert isinstance(layer, fastrnn.LSTM) and layer.num_layers == 2 and layer.bidirectional
    assert_same_function(layer, module, 3)
    rc, out, _ = convert(capsys, tmp_path / "m.fastrnn", tmp_path / "back.pth")
    assert rc == 0 and reported(out) <= 1e-4
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert set(back) == set(module.state_dict())
    for k, v in module.state_dict().items():
        assert torch.equal(back[k], v), k


def test_safetensors_both_ways(tmp_path, capsys):
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file, save_file
    torch.manual_seed(1)
    module = nn.GRU(4, 3, batch_first=True, dtype=torch.float64)
    save_file(module.state_dict(), str(tmp_path / "gru.safetensors"))
    rc, out, _ = convert(capsys, tmp_path / "gru.safetensors", tmp_path / "g.fastrnn",
                         "--batch-first")
    assert rc == 0 and reported(out) <= 1e-9, out
    layer = fastrnn.load(tmp_path / "g.fastrnn")
    assert layer.batch_first and layer.dtype == np.float64
    rc, out, _ = convert(capsys, tmp_path / "g.fastrnn", tmp_path / "out.safetensors")
    assert rc == 0
    back = load_file(str(tmp_path / "out.safetensors"))
    for k, v in module.state_dict().items():
        assert torch.equal(back[k], v), k
    # a fastrnn file named .safetensors is read as the fastrnn file it is
    io.save(layer, tmp_path / "ours.safetensors")
    rc, out, _ = convert(capsys, tmp_path / "ours.safetensors", tmp_path / "copy.fastrnn")
    assert rc == 0 and reported(out) == 0.0


def test_relu_rnn_state_dict_needs_the_flag(tmp_path, capsys):
    torch.manual_seed(2)
    module = nn.RNN(3, 4, nonlinearity="relu")
    torch.save(module.state_dict(), tmp_path / "rnn.pt")
    rc, out, _ = convert(capsys, tmp_path / "rnn.pt", tmp_path / "r.fastrnn",
                         "--nonlinearity", "relu", "--kind", "rnn")
    assert rc == 0
    layer = fastrnn.load(tmp_path / "r.fastrnn")
    assert layer.nonlinearity == "relu"
    assert_same_function(layer, module, 3)
    rc, _, err = convert(capsys, tmp_path / "rnn.pt", tmp_path / "g.fastrnn", "--kind", "gru")
    assert rc == 1 and "gate blocks" in err
    rc, _, err = convert(capsys, tmp_path / "r.fastrnn", tmp_path / "x.pt", "--kind", "rnn")
    assert rc == 1 and "state dicts" in err


def test_sequence_model_to_pt(tmp_path, capsys):
    model = fastrnn.SequenceModel("lstm", vocab_size=9, hidden_size=4, num_layers=2,
                                  task="next_token", seed=0)
    model.save(tmp_path / "lm.fastrnn")
    rc, out, _ = convert(capsys, tmp_path / "lm.fastrnn", tmp_path / "lm.pt")
    assert rc == 0 and reported(out) <= 1e-4
    state = torch.load(tmp_path / "lm.pt", weights_only=True)
    assert set(state) == set(model.named_parameters())
    module = torch_io.to_torch(fastrnn.SequenceModel(
        "lstm", vocab_size=9, hidden_size=4, num_layers=2, task="next_token", seed=5),
        check=False)
    module.load_state_dict(state)
    ids = np.random.default_rng(0).integers(0, 9, (2, 6))
    with torch.no_grad():
        expected = module.eval()(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(model.predict(ids), expected, rtol=0, atol=1e-5)


def test_fastrnn_copy_and_no_check(tmp_path, capsys):
    layer = fastrnn.GRU(2, 3, reset_after=False, seed=0)       # no torch equivalent
    io.save(layer, tmp_path / "a.fastrnn")
    rc, out, _ = convert(capsys, tmp_path / "a.fastrnn", tmp_path / "b.fastrnn")
    assert rc == 0 and reported(out) == 0.0
    assert (tmp_path / "a.fastrnn").read_bytes() == (tmp_path / "b.fastrnn").read_bytes()
    rc, out, _ = convert(capsys, tmp_path / "a.fastrnn", tmp_path / "c.fastrnn", "--no-check")
    assert rc == 0 and "skipped" in out
    rc, _, err = convert(capsys, tmp_path / "a.fastrnn", tmp_path / "c.pt")
    assert rc == 1 and "reset_after=False" in err and not (tmp_path / "c.pt").exists()


def test_onnx_export_direction(lstm_pt, tmp_path, capsys):
    pytest.importorskip("fastrnn.interop.onnx_export")
    pytest.importorskip("onnxruntime")
    from fastrnn.interop.compare import compare
    module, path = lstm_pt
    rc, out, _ = convert(capsys, path, tmp_path / "lstm.onnx")
    assert rc == 0 and 0 < reported(out) <= 1e-4, out
    x = np.random.default_rng(0).standard_normal((6, 2, 3)).astype(np.float32)
    assert compare(module, tmp_path / "lstm.onnx", x) <= 1e-4      # torch against ORT


def test_onnx_import_direction(tmp_path, capsys):
    pytest.importorskip("fastrnn.interop.onnx_import")
    onnx_export = pytest.importorskip("fastrnn.interop.onnx_export")
    pytest.importorskip("onnxruntime")
    torch.manual_seed(4)
    module = nn.GRU(3, 4, num_layers=2)
    onnx_export.to_onnx(torch_io.from_torch(module), tmp_path / "gru.onnx")
    rc, out, _ = convert(capsys, tmp_path / "gru.onnx", tmp_path / "gru.pt")
    assert rc == 0 and reported(out) <= 1e-4, out
    layer = torch_io.from_torch(torch.load(tmp_path / "gru.pt", weights_only=True))
    assert_same_function(layer, module, 3)


# ---- refusals ------------------------------------------------------------------------

class _CreatesMarker:
    """Unpickling this would create the marker file (it calls open(path, "w"))."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")   # torch, on the raw pickle
@pytest.mark.parametrize("how", ["raw_pickle", "torch_save"])
def test_a_pickled_object_is_refused_and_never_executed(how, tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"weight_ih_l0": _CreatesMarker(str(marker))}
    if how == "raw_pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    assert not marker.exists()
    rc, _, err = convert(capsys, path, tmp_path / "out.fastrnn")
    assert rc == 1 and "refused" in err and "weights_only=False" not in err
    assert not marker.exists()
    assert not (tmp_path / "out.fastrnn").exists()


@pytest.mark.parametrize("content,match", [
    (lambda: {"rnn": {"weight_ih_l0": torch.zeros(4, 3)}}, "flat dict"),
    (lambda: {"weight_ih_l0": torch.zeros(4, 3), "step": 3}, "flat dict"),
    (lambda: [torch.zeros(4, 3)], "not a state dict"),
    (lambda: torch.zeros(4, 3), "not a state dict"),
])
def test_pt_files_that_are_not_flat_tensor_dicts_are_refused(content, match, tmp_path, capsys):
    torch.save(content(), tmp_path / "x.pt")
    rc, _, err = convert(capsys, tmp_path / "x.pt", tmp_path / "out.fastrnn")
    assert rc == 1 and re.search(match, err), err


def test_unknown_extensions_and_missing_files(tmp_path, capsys):
    io.save(fastrnn.GRU(2, 3), tmp_path / "a.fastrnn")
    rc, _, err = convert(capsys, tmp_path / "a.fastrnn", tmp_path / "b.h5")
    assert rc == 1 and "unknown extension '.h5'" in err
    rc, _, err = convert(capsys, tmp_path / "a.h5", tmp_path / "b.fastrnn")
    assert rc == 1 and "a.h5 does not exist" in err
    rc, _, err = convert(capsys, tmp_path / "missing.fastrnn", tmp_path / "b.pt")
    assert rc == 1 and "missing.fastrnn" in err
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    rc, _, err = convert(capsys, tmp_path / "junk.pt", tmp_path / "b.fastrnn")
    assert rc == 1 and "refused" in err


def test_a_parity_failure_fails_the_conversion(lstm_pt, tmp_path, capsys, monkeypatch):
    _, path = lstm_pt
    real = torch_io._copy_into_fastrnn

    def swapped_gates(ours, arrays):                   # a conversion bug: i and f swapped
        a = np.array(arrays["weight_ih_l0"])
        a[:5], a[5:10] = arrays["weight_ih_l0"][5:10], arrays["weight_ih_l0"][:5]
        real(ours, dict(arrays, weight_ih_l0=a))
    monkeypatch.setattr(torch_io, "_copy_into_fastrnn", swapped_gates)
    rc, _, err = convert(capsys, path, tmp_path / "out.fastrnn")
    assert rc == 1 and "exceeds" in err
    assert not (tmp_path / "out.fastrnn").exists()


def test_the_command_line_entry_point(lstm_pt, tmp_path):
    _, path = lstm_pt
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "fastrnn", "convert", str(path),
                           str(tmp_path / "m.fastrnn")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert reported(done.stdout) <= 1e-4
    assert isinstance(fastrnn.load(tmp_path / "m.fastrnn"), fastrnn.LSTM)


# ---- formats read from the content; --prefix; how files are written ---------------------

@pytest.mark.parametrize("name", ["pytorch_model.bin", "weights.ckpt", "model"])
def test_a_torch_file_is_read_whatever_its_name(name, tmp_path, capsys):
    torch.manual_seed(5)
    module = nn.GRU(3, 4)
    torch.save(module.state_dict(), tmp_path / name)
    rc, out, err = convert(capsys, tmp_path / name, tmp_path / "g.fastrnn")
    assert rc == 0, err
    assert_same_function(fastrnn.load(tmp_path / "g.fastrnn"), module, 3)


def test_fastrnn_onnx_and_legacy_torch_files_are_read_by_content(tmp_path, capsys):
    """A fastrnn file named .pt, an ONNX model named .pb and a torch.save file in the
    legacy (pickle, not zip) layout are each read as what they hold."""
    pytest.importorskip("fastrnn.interop.onnx_export")
    pytest.importorskip("onnxruntime")
    from fastrnn.interop.onnx_export import to_onnx
    layer = fastrnn.LSTM(3, 4, seed=0)
    io.save(layer, tmp_path / "looks_like_torch.pt")
    rc, out, err = convert(capsys, tmp_path / "looks_like_torch.pt", tmp_path / "a.fastrnn")
    assert rc == 0 and reported(out) == 0.0, err
    assert (tmp_path / "a.fastrnn").read_bytes() == (tmp_path / "looks_like_torch.pt").read_bytes()
    to_onnx(layer, tmp_path / "graph.pb")
    rc, out, err = convert(capsys, tmp_path / "graph.pb", tmp_path / "b.fastrnn")
    assert rc == 0 and reported(out) <= 1e-4, err
    torch.manual_seed(6)
    module = nn.LSTM(3, 4)
    torch.save(module.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert (tmp_path / "legacy.pt").read_bytes()[:1] == b"\x80"       # a pickle, not a zip
    rc, out, err = convert(capsys, tmp_path / "legacy.pt", tmp_path / "c.fastrnn")
    assert rc == 0, err
    assert_same_function(fastrnn.load(tmp_path / "c.fastrnn"), module, 3)


@pytest.mark.parametrize("content,found", [
    (b"\x89HDF\r\n\x1a\n" + bytes(64), "HDF5"),
    (b"\x1f\x8b\x08\x00" + bytes(64), "gzip"),
    (b"", "empty"),
    ("h\u00e9llo, some notes\n".encode(), "text"),
    (None, "zip archive without data.pkl"),
])
def test_a_file_convert_cannot_read_is_named(content, found, tmp_path, capsys):
    path = tmp_path / "mystery.pt"
    if content is None:
        import zipfile
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "hello")
    else:
        path.write_bytes(content)
    rc, _, err = convert(capsys, path, tmp_path / "out.fastrnn")
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert str(path) in err and found in err and "refused" in err, err


@pytest.fixture
def whole_model_pt(tmp_path):
    """A torch.save of a whole model: two recurrent modules under their prefixes."""
    torch.manual_seed(7)
    encoder, decoder = nn.GRU(3, 4), nn.LSTM(4, 2)
    state = {**{"encoder.rnn." + k: v for k, v in encoder.state_dict().items()},
             **{"decoder.rnn." + k: v for k, v in decoder.state_dict().items()},
             "head.weight": torch.zeros(2, 2)}
    torch.save(state, tmp_path / "whole.pt")
    return tmp_path / "whole.pt", encoder, decoder


def test_prefix_picks_one_module_of_a_whole_model(whole_model_pt, tmp_path, capsys):
    path, encoder, decoder = whole_model_pt
    rc, _, err = convert(capsys, path, tmp_path / "m.fastrnn")
    assert rc == 1 and "encoder.rnn" in err and "decoder.rnn" in err, err
    assert len(err.strip().splitlines()) == 1
    rc, out, err = convert(capsys, path, tmp_path / "enc.fastrnn", "--prefix", "encoder.rnn.")
    assert rc == 0 and reported(out) <= 1e-4, err
    assert_same_function(fastrnn.load(tmp_path / "enc.fastrnn"), encoder, 3)
    rc, out, err = convert(capsys, path, tmp_path / "dec.fastrnn", "--prefix", "decoder.rnn")
    assert rc == 0, err
    assert_same_function(fastrnn.load(tmp_path / "dec.fastrnn"), decoder, 4)


@pytest.mark.parametrize("ext", [".fastrnn", ".pt", ".safetensors", ".onnx"])
def test_written_files_honour_the_umask(ext, lstm_pt, tmp_path, capsys):
    """Every file convert writes gets 0o666 & ~umask, as open() would make it (to_onnx's
    and convert's files were 0o600), and no temporary is left beside it."""
    if ext == ".onnx":
        pytest.importorskip("onnxruntime")
    if ext == ".safetensors":
        pytest.importorskip("safetensors")
    _, path = lstm_pt
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    old = os.umask(0o002)
    try:
        rc, _, err = convert(capsys, path, out_dir / ("m" + ext))
    finally:
        os.umask(old)
    assert rc == 0, err
    assert os.stat(out_dir / ("m" + ext)).st_mode & 0o777 == 0o664
    assert os.listdir(out_dir) == ["m" + ext]


def test_a_fifo_as_output_is_refused_without_blocking(lstm_pt, tmp_path):
    """torch.save opened a FIFO named OUT and blocked for its reader; refused now, naming
    OUT (in a subprocess: a regression fails on the timeout instead of hanging)."""
    _, path = lstm_pt
    os.mkfifo(tmp_path / "pipe.pt")
    done = subprocess.run([sys.executable, "-m", "fastrnn", "convert", str(path),
                           str(tmp_path / "pipe.pt")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert str(tmp_path / "pipe.pt") in done.stderr and "FIFO" in done.stderr
