"""ONNX export (fastrnn.interop.onnx_export) against two independent runtimes.

Every exported graph is run on ONNX Runtime and on onnx's ReferenceEvaluator and compared
with fastrnn on an input of other sizes than the exporter's own check (dynamic axes).
ONNX Runtime's CPU recurrent operators are float32 only, so float64 graphs run on the
reference evaluator alone; the reference evaluator ignores sequence_lens, so with ragged
lengths it runs each row alone on its valid steps (ONNX Runtime runs the ragged batch).
Weights are drawn at random (fastrnn initialises biases and peepholes to constants, which
would hide a misplaced block). Skipped without onnx / onnxruntime.
"""
import importlib.util
import json
import os
import zlib

import numpy as np
import pytest

import fastrnn
from fastrnn.interop import ParityError, check_parity
from _helpers import assert_identical

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from fastrnn.interop import onnx_export, onnx_layout       # noqa: E402
from fastrnn.interop.onnx_export import to_onnx            # noqa: E402

# Largest absolute difference accepted against each runtime. Measured: <= 4.5e-7 (float32,
# values below ~2) and <= 7e-16 (float64); the tolerances leave room, and a wrong gate
# moves outputs by ~0.1.
TOL = {np.float32: 5e-6, np.float64: 1e-12}
T, B, I, H = 9, 5, 4, 6

VARIANTS = {
    "rnn_tanh": (fastrnn.RNN, dict(nonlinearity="tanh")),
    "rnn_relu": (fastrnn.RNN, dict(nonlinearity="relu")),
    "lstm": (fastrnn.LSTM, {}),
    "lstm_peep_i": (fastrnn.LSTM, dict(peephole="i")),
    "lstm_peep_f": (fastrnn.LSTM, dict(peephole="f")),
    "lstm_peep_o": (fastrnn.LSTM, dict(peephole="o")),
    "lstm_peep_ifo": (fastrnn.LSTM, dict(peephole=True)),
    "lstm_coupled": (fastrnn.LSTM, dict(coupled=True)),
    "lstm_coupled_peep_io": (fastrnn.LSTM, dict(coupled=True, peephole="io")),
    "gru_reset_after": (fastrnn.GRU, dict(reset_after=True)),
    "gru_reset_before": (fastrnn.GRU, dict(reset_after=False)),
}


def _layer_configs():
    """Two random configurations per variant, the second the first's complement, so every
    variant is seen with and without each of bidirectional, batch_first, bias, lengths and
    initial states, and with two different depths in 1..3."""
    cases = []
    for name in VARIANTS:
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        flags = dict(zip(("bidirectional", "batch_first", "bias", "with_lengths", "with_state"),
                         (bool(v) for v in rng.integers(0, 2, 5))))
        depth = int(rng.integers(1, 4))
        for k in range(2):
            cfg = flags if k == 0 else {f: not v for f, v in flags.items()}
            cfg = dict(cfg, num_layers=depth if k == 0 else depth % 3 + 1)
            on = [f for f, v in cfg.items() if v is True]
            label = "-".join([name, f"L{cfg['num_layers']}"] + on)
            cases.append(pytest.param(name, cfg, id=label))
    return cases


def _randomize(obj, seed=0):
    """Every parameter uniform in +-0.5 (layers, embedding, head)."""
    rng = np.random.default_rng(seed)
    arrays = list(obj.named_parameters().values()) if hasattr(obj, "named_parameters") \
        else list(obj.params.values())
    for a in arrays:
        a[...] = rng.uniform(-0.5, 0.5, a.shape)
    return obj


def _make_layer(name, cfg, dtype):
    cls, kw = VARIANTS[name]
    layer = cls(I, H, cfg["num_layers"], bidirectional=cfg["bidirectional"],
                batch_first=cfg["batch_first"], bias=cfg["bias"], dtype=dtype, seed=3, **kw)
    return _randomize(layer)


def _ragged(rng):
    """Lengths in [1, T], one full row and one of length 1."""
    lengths = rng.integers(1, T + 1, B)
    lengths[0], lengths[1] = T, 1
    return lengths.astype(np.int64)


def _layer_feeds(layer, cfg, rng):
    x_shape = (B, T, I) if layer.batch_first else (T, B, I)
    feeds = {"x": rng.standard_normal(x_shape).astype(layer.dtype)}
    if cfg["with_lengths"]:
        feeds["lengths"] = _ragged(rng)
    if cfg["with_state"]:
        LD = layer.num_layers * layer.num_directions
        for s in ("h0", "c0") if layer.cell == "lstm" else ("h0",):
            feeds[s] = rng.uniform(-0.5, 0.5, (LD, B, H)).astype(layer.dtype)
    return feeds


def _layer_ours(layer, feeds):
    state = None
    if "h0" in feeds:
        state = (feeds["h0"], feeds["c0"]) if "c0" in feeds else feeds["h0"]
    out, state_n = layer(feeds["x"], state, feeds.get("lengths"))
    return [out, *(state_n if isinstance(state_n, tuple) else (state_n,))]


def _onnxruntime(proto, feeds):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _reference_rows(proto, feeds, ours, axes):
    """The reference evaluator row by row on each row's valid steps (it ignores
    sequence_lens); returns (ours, theirs) restricted to those rows and steps.
    ``axes``: name -> (batch axis, time axis or None) for every input and output."""
    session = onnx_export.reference_evaluator(proto)
    names = [o.name for o in proto.graph.output]
    lengths = feeds.get("lengths")
    if lengths is None:
        return ours, session.run(None, feeds)
    mine, theirs = [], []
    for b, n in enumerate(lengths):
        def row(name, a):
            a = np.take(a, [b], axis=axes[name][0])
            return a if axes[name][1] is None else np.take(a, np.arange(n), axis=axes[name][1])
        theirs += session.run(None, {k: row(k, v) for k, v in feeds.items()})
        mine += [row(k, v) for k, v in zip(names, ours)]
    return mine, theirs


def _layer_axes(layer):
    seq = (0, 1) if layer.batch_first else (1, 0)
    return dict(x=seq, out=seq, lengths=(0, None), h0=(1, None), c0=(1, None),
                h_n=(1, None), c_n=(1, None))


def _parity_diff(proto):
    meta = {p.key: p.value for p in proto.metadata_props}
    return float(meta["fastrnn.parity_max_abs_diff"]), meta["fastrnn.parity_runtime"]


# ---- layers ----------------------------------------------------------------------------

@pytest.mark.parametrize("name,cfg", _layer_configs())
def test_layer_matches_onnxruntime_and_reference(name, cfg):
    layer = _make_layer(name, cfg, np.float32)
    proto = to_onnx(layer, with_lengths=cfg["with_lengths"], with_state=cfg["with_state"])
    onnx.checker.check_model(proto, full_check=True)
    diff, runtime = _parity_diff(proto)
    assert 0 <= diff <= TOL[np.float32] and runtime.startswith("onnxruntime")

    feeds = _layer_feeds(layer, cfg, np.random.default_rng(7))
    ours = _layer_ours(layer, feeds)
    assert [o.name for o in proto.graph.output] == ["out", "h_n", "c_n"][:len(ours)]
    check_parity(f"{name} vs onnxruntime", ours, _onnxruntime(proto, feeds), TOL[np.float32])
    check_parity(f"{name} vs onnx.reference",
                 *_reference_rows(proto, feeds, ours, _layer_axes(layer)), TOL[np.float32])


@pytest.mark.parametrize("name,cfg", _layer_configs()[::2])
def test_float64_layer_matches_reference(name, cfg):
    """ONNX Runtime has no float64 RNN/LSTM/GRU kernels; the graph is double all the way
    and the exporter checks it on the reference evaluator."""
    layer = _make_layer(name, cfg, np.float64)
    proto = to_onnx(layer, with_lengths=cfg["with_lengths"], with_state=cfg["with_state"])
    onnx.checker.check_model(proto, full_check=True)
    diff, runtime = _parity_diff(proto)
    assert diff <= TOL[np.float64] and runtime.startswith("onnx.reference")
    assert {t.data_type for t in proto.graph.initializer if t.name.startswith("l")} \
        >= {onnx.TensorProto.DOUBLE}
    feeds = _layer_feeds(layer, cfg, np.random.default_rng(8))
    ours = _layer_ours(layer, feeds)
    check_parity(f"{name} float64 vs onnx.reference",
                 *_reference_rows(proto, feeds, ours, _layer_axes(layer)), TOL[np.float64])


def test_zero_length_rows_differ_only_in_the_final_state():
    """The documented difference: ONNX Runtime returns zeros in Y_h/Y_c for a row of
    length 0, fastrnn (like PyTorch) returns the initial state; outputs agree."""
    layer = _randomize(fastrnn.LSTM(I, H, 2, bidirectional=True))
    proto = to_onnx(layer, with_lengths=True, with_state=True)
    rng = np.random.default_rng(9)
    feeds = dict(x=rng.standard_normal((T, 3, I)).astype(np.float32),
                 lengths=np.array([T, 0, 4], np.int64),
                 h0=rng.uniform(-0.5, 0.5, (4, 3, H)).astype(np.float32),
                 c0=rng.uniform(-0.5, 0.5, (4, 3, H)).astype(np.float32))
    out, h_n, c_n = _layer_ours(layer, feeds)
    Y, Y_h, Y_c = _onnxruntime(proto, feeds)
    check_parity("out", out, Y, TOL[np.float32])
    keep = [0, 2]
    check_parity("states, rows of length >= 1", (h_n[:, keep], c_n[:, keep]),
                 (Y_h[:, keep], Y_c[:, keep]), TOL[np.float32])
    assert_identical("fastrnn h_n, length-0 row", h_n[:, 1], feeds["h0"][:, 1])
    assert not Y_h[:, 1].any() and not Y_c[:, 1].any()


def test_graph_uses_onnx_recurrent_operators():
    layer = _randomize(fastrnn.LSTM(I, H, 3, bidirectional=True, batch_first=True,
                                    coupled=True, peephole="i"))
    nodes = to_onnx(layer, with_lengths=True).graph.node
    ops = [n.op_type for n in nodes]
    assert ops.count("LSTM") == 3 and ops[:2] == ["Cast", "Transpose"]
    for n in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "LSTM":
            assert attrs["direction"] == b"bidirectional" and attrs["input_forget"] == 1
            assert attrs["hidden_size"] == H
    perms = [onnx.helper.get_attribute_value(n.attribute[0]) for n in nodes
             if n.op_type == "Transpose"]
    assert perms.count([0, 2, 1, 3]) == 3 and perms.count([1, 0, 2]) == 2
    one_dir = to_onnx(_randomize(fastrnn.GRU(I, H, 2)), check=False).graph.node
    assert [n.op_type for n in one_dir].count("Squeeze") == 2


# ---- models ----------------------------------------------------------------------------

_TASKS = ["next_token", "per_step_classification", "sequence_classification", "multilabel",
          "regression", "sequence_regression"]
_MODEL_CASES = [
    pytest.param(task, cell, tokens, flags, id=f"{task}-{cell}-{'ids' if tokens else 'x'}-{k}")
    for k, (task, cell, tokens, flags) in enumerate(
        (task, cell, tokens, flags)
        for i, task in enumerate(_TASKS)
        for tokens, cell, flags in (
            (True, ("lstm", "gru", "rnn")[i % 3], dict(num_layers=2, bidirectional=True,
                                                        with_lengths=True, with_state=i % 2 == 0)),
            (False, ("gru", "rnn", "lstm")[i % 3], dict(num_layers=1 + i % 3,
                                                         bidirectional=i % 2 == 1,
                                                         with_lengths=i % 2 == 0,
                                                         with_state=False)))
        if tokens or task != "next_token")
]
_CELL_KW = {"lstm": dict(peephole="if"), "gru": dict(reset_after=False),
            "rnn": dict(nonlinearity="relu")}


def _make_model(task, cell, tokens, flags, dtype=np.float32):
    inputs = dict(vocab_size=13, embedding_dim=5) if tokens else dict(input_size=I)
    model = fastrnn.SequenceModel(cell, hidden_size=H, output_size=3, task=task,
                                  num_layers=flags["num_layers"],
                                  bidirectional=flags["bidirectional"], dtype=dtype, seed=4,
                                  **inputs, **_CELL_KW[cell])
    return _randomize(model)


@pytest.mark.parametrize("task,cell,tokens,flags", _MODEL_CASES)
def test_model_matches_onnxruntime_and_reference(task, cell, tokens, flags):
    model = _make_model(task, cell, tokens, flags)
    proto = to_onnx(model, with_lengths=flags["with_lengths"], with_state=flags["with_state"])
    onnx.checker.check_model(proto, full_check=True)
    assert _parity_diff(proto)[0] <= TOL[np.float32]

    rng = np.random.default_rng(11)
    feeds = {"ids": rng.integers(0, 13, (B, T), dtype=np.int64)} if tokens else \
        {"x": rng.standard_normal((B, T, I)).astype(np.float32)}
    state = None
    if flags["with_lengths"]:
        feeds["lengths"] = _ragged(rng)
    if flags["with_state"]:
        LD = flags["num_layers"] * (2 if flags["bidirectional"] else 1)
        for s in ("h0", "c0") if cell == "lstm" else ("h0",):
            feeds[s] = rng.uniform(-0.5, 0.5, (LD, B, H)).astype(np.float32)
        state = (feeds["h0"], feeds["c0"]) if cell == "lstm" else feeds["h0"]
    x = feeds.get("ids", feeds.get("x"))
    ours = [model.forward(x, feeds.get("lengths"), state)[0]]
    per_step = model.output == "per_step"
    assert ours[0].shape == ((B, T, 3) if per_step else (B, 3))
    assert proto.graph.output[0].name == ("predictions" if model.loss_name == "mse" else "logits")
    check_parity(f"{task} vs onnxruntime", ours, _onnxruntime(proto, feeds), TOL[np.float32])
    out = proto.graph.output[0].name
    axes = {"ids": (0, 1), "x": (0, 1), "lengths": (0, None), "h0": (1, None),
            "c0": (1, None), out: (0, 1) if per_step else (0, None)}
    check_parity(f"{task} vs onnx.reference", *_reference_rows(proto, feeds, ours, axes),
                 TOL[np.float32])


def test_float64_model_is_checked_on_reference():
    model = _make_model("sequence_classification", "lstm", True,
                        dict(num_layers=2, bidirectional=True), np.float64)
    proto = to_onnx(model, with_lengths=True)
    diff, runtime = _parity_diff(proto)
    assert diff <= TOL[np.float64] and runtime.startswith("onnx.reference")
    ids = np.random.default_rng(12).integers(0, 13, (B, T), dtype=np.int64)
    got = onnx_export.reference_evaluator(proto).run(None, {"ids": ids, "lengths": np.full(B, T)})
    check_parity("float64 model", model.forward(ids)[0], got[0], TOL[np.float64])


# ---- the check itself, opsets, arguments ---------------------------------------------

def _swap_first_two_gates(real):
    """to_onnx_slices with ONNX gate blocks 0 and 1 exchanged in W, R and B (LSTM i <-> o,
    GRU z <-> r): the mistake a hand-written gate table invites."""
    def swapped(kind, *args, **kwargs):
        W, R, Bias, P = real(kind, *args, **kwargs)
        n = onnx_layout.onnx_gate_count(kind)

        def swap(a, lead=()):
            blocks = a.reshape(*lead, n, -1).copy()
            blocks[..., [0, 1], :] = blocks[..., [1, 0], :]
            return blocks.reshape(a.shape)
        return swap(W), swap(R), None if Bias is None else swap(Bias, (2,)), P
    return swapped


@pytest.mark.parametrize("name", ["lstm", "lstm_coupled", "gru_reset_after",
                                  "gru_reset_before"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wrong_gate_order_fails_the_check(monkeypatch, name, dtype):
    cfg = dict(num_layers=2, bidirectional=True, batch_first=False, bias=True)
    layer = _make_layer(name, cfg, dtype)
    to_onnx(layer)                                   # the real table passes
    monkeypatch.setattr(onnx_layout, "to_onnx_slices",
                        _swap_first_two_gates(onnx_layout.to_onnx_slices))
    with pytest.raises(ParityError, match="largest absolute difference"):
        to_onnx(layer)


def test_wrong_peephole_order_fails_the_check(monkeypatch):
    layer = _make_layer("lstm_peep_ifo", dict(num_layers=1, bidirectional=False,
                                               batch_first=False, bias=True), np.float32)
    real = onnx_layout.to_onnx_slices

    def p_io_swapped(kind, *args, **kwargs):
        W, R, Bias, P = real(kind, *args, **kwargs)
        return W, R, Bias, np.concatenate([P[H:2 * H], P[:H], P[2 * H:]])
    monkeypatch.setattr(onnx_layout, "to_onnx_slices", p_io_swapped)
    with pytest.raises(ParityError):
        to_onnx(layer)


def test_coupled_forget_block_matters_only_where_input_forget_is_ignored(monkeypatch):
    """Without the negated-i f block, ONNX Runtime (which honours input_forget=1) still
    agrees, but the reference evaluator (which ignores it) does not: the block is what
    makes the graph right under both readings."""
    cfg = dict(num_layers=1, bidirectional=False, batch_first=False, bias=True)
    monkeypatch.setattr(onnx_export, "_coupled_forget", lambda *tensors: tensors)
    to_onnx(_make_layer("lstm_coupled_peep_io", cfg, np.float32))
    with pytest.raises(ParityError):
        to_onnx(_make_layer("lstm_coupled_peep_io", cfg, np.float64))


@pytest.mark.parametrize("opset", [14, 17, 21, onnx.defs.onnx_opset_version()])
def test_opsets(opset):
    layer = _randomize(fastrnn.GRU(I, H, 2, bidirectional=True, batch_first=True))
    proto = to_onnx(layer, opset=opset, with_lengths=True, with_state=True)
    assert [o.version for o in proto.opset_import if o.domain == ""] == [opset]
    onnx.checker.check_model(proto, full_check=True)
    assert to_onnx(layer).opset_import[0].version == onnx_export.DEFAULT_OPSET == 14


@pytest.mark.parametrize("part", ["_graph_lengths", "_graph_states"])
def test_check_exercises_lengths_and_states(monkeypatch, part):
    """A graph that declares lengths / initial states but never reads them fails the
    check: the random check input has ragged lengths and nonzero states."""
    real = getattr(onnx_export, part)

    def unread(g, *args):
        real(g, *args)                   # the graph inputs exist...
        return "" if part == "_graph_lengths" else ("", "")    # ...but nothing reads them
    layer = _randomize(fastrnn.GRU(I, H, 2, bidirectional=True))
    to_onnx(layer, with_lengths=True, with_state=True)
    monkeypatch.setattr(onnx_export, part, unread)
    with pytest.raises(ParityError):
        to_onnx(layer, with_lengths=True, with_state=True)


def test_check_false_attaches_nothing():
    proto = to_onnx(_randomize(fastrnn.RNN(I, H)), check=False)
    assert "fastrnn.parity_max_abs_diff" not in {p.key for p in proto.metadata_props}


def test_a_tight_tolerance_raises():
    with pytest.raises(ParityError):
        to_onnx(_randomize(fastrnn.LSTM(I, H, 2)), tol=0.0)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(obj=object()), TypeError, "RNN, LSTM or GRU layer or a SequenceModel"),
    (dict(obj=fastrnn.LSTMCell(I, H)), TypeError, "LSTMCell"),
    (dict(opset=13), ValueError, "opset must be an int in"),
    (dict(opset=14.0), ValueError, "opset"),
    (dict(with_lengths=1), TypeError, "with_lengths must be a bool"),
    (dict(check="yes"), TypeError, "check must be a bool"),
    (dict(tol=-1.0), ValueError, "tol must be a non-negative"),
    (dict(path=3), TypeError, "path must be a str"),
])
def test_bad_arguments(kwargs, error, match):
    obj = kwargs.pop("obj", fastrnn.GRU(I, H))
    path = kwargs.pop("path", None)
    with pytest.raises(error, match=match):
        to_onnx(obj, path, **kwargs)


# ---- files -----------------------------------------------------------------------------

def test_methods_write_the_file_atomically(tmp_path):
    layer = _randomize(fastrnn.LSTM(I, H, 2, peephole="o"))
    path = tmp_path / "layer.onnx"
    proto = layer.to_onnx(path, with_lengths=True)
    assert os.listdir(tmp_path) == ["layer.onnx"]
    assert path.read_bytes() == proto.SerializeToString() == \
        to_onnx(layer, with_lengths=True).SerializeToString()
    model = _make_model("next_token", "gru", True, dict(num_layers=1, bidirectional=False))
    model.to_onnx(str(tmp_path / "model.onnx"))
    assert sorted(os.listdir(tmp_path)) == ["layer.onnx", "model.onnx"]
    loaded = onnx.load(str(tmp_path / "model.onnx"))
    assert [i.name for i in loaded.graph.input] == ["ids"]


def test_failed_export_keeps_the_existing_file(tmp_path, monkeypatch):
    path = tmp_path / "net.onnx"
    path.write_bytes(b"previous model")
    layer = _randomize(fastrnn.LSTM(I, H))
    monkeypatch.setattr(onnx_layout, "to_onnx_slices",
                        _swap_first_two_gates(onnx_layout.to_onnx_slices))
    with pytest.raises(ParityError):
        to_onnx(layer, path)
    monkeypatch.undo()

    def broken_replace(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(onnx_export.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        to_onnx(layer, path)
    assert path.read_bytes() == b"previous model"
    assert os.listdir(tmp_path) == ["net.onnx"]


@pytest.mark.parametrize("umask, mode", [(0o002, 0o664), (0o077, 0o600), (0o022, 0o644)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    """As save() and open() do (to_onnx wrote 0o600 whatever the umask)."""
    layer = _randomize(fastrnn.GRU(I, H))
    old = os.umask(umask)
    try:
        to_onnx(layer, tmp_path / "new.onnx", check=False)
    finally:
        os.umask(old)
    assert (tmp_path / "new.onnx").stat().st_mode & 0o777 == mode
    fastrnn.save(layer, tmp_path / "same.fastrnn")       # the same rule as save()
    existing = tmp_path / "kept.onnx"
    existing.write_bytes(b"old")
    existing.chmod(0o640)
    to_onnx(layer, existing, check=False)                # a replaced file keeps its mode
    assert existing.stat().st_mode & 0o777 == 0o640


def test_special_files_and_links_are_not_replaced(tmp_path):
    layer = _randomize(fastrnn.GRU(I, H))
    os.mkfifo(tmp_path / "pipe.onnx")
    with pytest.raises(OSError, match=r"pipe.onnx.*FIFO"):
        to_onnx(layer, tmp_path / "pipe.onnx", check=False)
    target = tmp_path / "real.onnx"
    target.write_bytes(b"old")
    (tmp_path / "link.onnx").symlink_to(target)
    proto = to_onnx(layer, tmp_path / "link.onnx", check=False)
    assert (tmp_path / "link.onnx").is_symlink()
    assert target.read_bytes() == proto.SerializeToString()
    with pytest.raises(FileNotFoundError, match="missing"):
        to_onnx(layer, tmp_path / "missing" / "net.onnx", check=False)


# ---- round trip through the importer -------------------------------------------------

def _importer():
    if importlib.util.find_spec("fastrnn.interop.onnx_import") is None:
        pytest.skip("fastrnn/interop/onnx_import.py (the ONNX importer, issue 5) is not in "
                    "the tree yet")
    from fastrnn.interop.onnx_import import from_onnx
    return from_onnx


@pytest.mark.parametrize("name", list(VARIANTS))
def test_round_trip_is_bit_identical(tmp_path, name):
    from_onnx = _importer()
    cfg = dict(num_layers=2, bidirectional=True, batch_first=True, bias=name != "lstm")
    layer = _make_layer(name, cfg, np.float32)
    path = tmp_path / "layer.onnx"
    layer.to_onnx(path)
    back = from_onnx(str(path)).to_fastrnn()
    assert type(back) is type(layer)
    for attr in ("input_size", "hidden_size", "num_layers", "bidirectional", "batch_first",
                 "bias", "nonlinearity", "peephole", "coupled", "reset_after"):
        assert getattr(back, attr, None) == getattr(layer, attr, None), attr
    theirs = back.state_dict()
    assert sorted(theirs) == sorted(layer.state_dict())
    for k, v in layer.state_dict().items():
        assert_identical(k, theirs[k], v)


def test_model_round_trip_is_bit_identical(tmp_path):
    from_onnx = _importer()
    model = _make_model("sequence_classification", "lstm", True,
                        dict(num_layers=2, bidirectional=True))
    proto = model.to_onnx()
    back = from_onnx(proto).to_fastrnn()
    assert back.output == model.output
    theirs = back.named_parameters()
    assert sorted(theirs) == sorted(model.named_parameters())
    for k, v in model.named_parameters().items():
        assert_identical(k, theirs[k], v)


def test_round_trip_with_lengths_and_states(tmp_path):
    """Graph inputs for lengths and initial states (per-layer Slice of h0, as PyTorch's
    exporter also emits) do not change what comes back."""
    from_onnx = _importer()
    layer = _randomize(fastrnn.GRU(I, H, 3, bidirectional=True, reset_after=False))
    back = from_onnx(layer.to_onnx(with_lengths=True, with_state=True)).to_fastrnn()
    theirs = back.state_dict()
    assert sorted(theirs) == sorted(layer.state_dict())
    for k, v in layer.state_dict().items():
        assert_identical(k, theirs[k], v)


def _language_model(vocabulary, text_level):
    model = fastrnn.SequenceModel("lstm", vocab_size=len(vocabulary), embedding_dim=3,
                                  hidden_size=H, output_size=len(vocabulary),
                                  task="next_token", seed=0)
    model.vocabulary, model.text_level = vocabulary, text_level
    return model


@pytest.mark.parametrize("vocabulary, text_level", [
    (list("ab c\u00e9\n"), "char"), (["the", "cat", "sat", "<unk>", "\u2603"], "word"),
    (list("xyz"), None)])
def test_vocabulary_and_text_level_cross_onnx_both_ways(tmp_path, vocabulary, text_level):
    """fastrnn -> ONNX -> fastrnn -> file kept a language model's vocabulary (it was lost)."""
    from_onnx = _importer()
    model = _language_model(vocabulary, text_level)
    path = tmp_path / "lm.onnx"
    model.to_onnx(path)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["fastrnn.vocabulary"]) == vocabulary
    assert meta.get("fastrnn.text_level") == text_level
    imported = from_onnx(path)
    assert (imported.vocabulary, imported.text_level) == (vocabulary, text_level)
    back = imported.to_fastrnn()
    assert (back.vocabulary, back.text_level) == (vocabulary, text_level)
    fastrnn.save(back, tmp_path / "lm.fastrnn")
    again = fastrnn.load(tmp_path / "lm.fastrnn")
    assert (again.vocabulary, again.text_level) == (vocabulary, text_level)


def test_a_model_without_vocabulary_records_none():
    from_onnx = _importer()
    model = _make_model("next_token", "gru", True, dict(num_layers=1, bidirectional=False))
    proto = to_onnx(model)
    assert not {"fastrnn.vocabulary", "fastrnn.text_level"} & {p.key for p in
                                                               proto.metadata_props}
    back = from_onnx(proto).to_fastrnn()
    assert back.vocabulary is None and back.text_level is None


def _with_metadata(proto, key, value):
    for p in proto.metadata_props:
        if p.key == key:
            p.value = value
            return proto
    p = proto.metadata_props.add()
    p.key, p.value = key, value
    return proto


@pytest.mark.parametrize("key, value, match", [
    ("fastrnn.vocabulary", '["a", "b"]', "as many strings"),
    ("fastrnn.vocabulary", '["a", "b", 3, "d", "e"]', "as many strings"),
    ("fastrnn.vocabulary", '{"a": 1}', "as many strings"),
    ("fastrnn.vocabulary", json.dumps(["x" * 1024] + list("bcde")), "at most 1023 characters"),
    ("fastrnn.vocabulary", "[" * 100000, "not JSON"),
    ("fastrnn.vocabulary", "not json", "not JSON"),
    ("fastrnn.text_level", "sentence", "one of"),
])
def test_tampered_text_metadata_is_refused(key, value, match):
    from_onnx = _importer()
    from fastrnn import OnnxImportError
    proto = _with_metadata(to_onnx(_language_model(list("abcde"), "char")), key, value)
    with pytest.raises(OnnxImportError, match=match):
        from_onnx(proto)


def test_export_refuses_a_vocabulary_that_does_not_fit(tmp_path):
    model = _language_model(list("abcde"), "char")
    model.vocabulary = list("abc")
    with pytest.raises(ValueError, match="vocabulary has 3 entries.*vocab_size 5"):
        to_onnx(model, tmp_path / "bad.onnx")
    model.vocabulary, model.text_level = list("abcde"), "paragraph"
    with pytest.raises(ValueError, match="text_level"):
        to_onnx(model, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
