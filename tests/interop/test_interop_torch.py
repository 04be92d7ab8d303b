"""PyTorch interop against PyTorch itself: random configurations of nn.RNN/LSTM/GRU (every
module option) and the cells imported with from_torch and exported with to_torch, each run
on a fresh random input, initial state and ragged lengths by the test's own calls into torch
(not the module's parity code); exact weight round trips; state dicts with and without
prefixes; every refusal; the parity check catching swapped gate blocks; compare() on each
pair of sides (fastrnn, torch, ONNX, Keras). Skipped when torch is not installed.
"""
import re
import warnings

import numpy as np
import pytest

import fastrnn
from fastrnn.interop import torch_io
from fastrnn.interop.compare import compare
from fastrnn.interop.parity import ParityError, default_tolerance
from fastrnn.interop.torch_io import from_torch, to_torch
from _helpers import assert_close

torch = pytest.importorskip("torch")
nn = torch.nn

T, B = 7, 4
LENGTHS = np.array([7, 1, 5, 3])          # unsorted, full and partial, >= 1 for torch
TORCH_CLASS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}

# torch 2.13 deprecates torch.jit (script, trace, save, load) in favour of torch.export; the
# modules made with it still exist in the wild, and these tests make them
_JIT = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning",
                                  "ignore::torch.jit.TracerWarning")
FASTRNN_CLASS = {"rnn": fastrnn.RNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}


def random_configs(n, seed):
    """n random module configurations; the coverage test below checks every option value
    occurs."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        kind = ["rnn", "lstm", "gru"][rng.integers(3)]
        cfg = dict(kind=kind, input_size=int(rng.integers(1, 6)),
                   hidden_size=int(rng.integers(1, 8)), num_layers=int(rng.integers(1, 4)),
                   bias=bool(rng.integers(2)), batch_first=bool(rng.integers(2)),
                   bidirectional=bool(rng.integers(2)), dropout=[0.0, 0.3][rng.integers(2)],
                   dtype=[np.float32, np.float64][rng.integers(2)])
        if kind == "rnn":
            cfg["nonlinearity"] = ["tanh", "relu"][rng.integers(2)]
        out.append(cfg)
    return out


CONFIGS = random_configs(36, seed=5)


def cfg_id(c):
    return (f"{c['kind']}{'-' + c['nonlinearity'] if 'nonlinearity' in c else ''}"
            f"-L{c['num_layers']}{'-bi' if c['bidirectional'] else ''}"
            f"{'-bf' if c['batch_first'] else ''}{'' if c['bias'] else '-nobias'}"
            f"-{np.dtype(c['dtype']).name}")


def torch_dtype(dtype):
    return torch.float64 if np.dtype(dtype) == np.float64 else torch.float32


def make_torch(cfg, seed=0):
    torch.manual_seed(seed)
    kw = {k: v for k, v in cfg.items() if k not in ("kind", "dtype")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # torch: dropout with one layer does nothing
        return TORCH_CLASS[cfg["kind"]](**kw, dtype=torch_dtype(cfg["dtype"]))


def make_fastrnn(cfg, seed=0):
    kw = {k: v for k, v in cfg.items() if k != "kind"}
    layer = FASTRNN_CLASS[cfg["kind"]](seed=seed, **kw)
    rng = np.random.default_rng(seed + 1)
    layer.flat[...] += rng.uniform(-0.3, 0.3, layer.flat.shape).astype(layer.dtype)
    return layer


def random_case(cfg, rng):
    """x in the module's layout, and an initial state, (L*D, B, H) (LSTM: a pair)."""
    I, H = cfg["input_size"], cfg["hidden_size"]
    LD = cfg["num_layers"] * (2 if cfg["bidirectional"] else 1)
    x = rng.standard_normal((B, T, I) if cfg["batch_first"] else (T, B, I))
    states = tuple(rng.uniform(-0.5, 0.5, (LD, B, H)) for _ in range(2 if cfg["kind"] == "lstm" else 1))
    x = x.astype(cfg["dtype"])
    states = tuple(s.astype(cfg["dtype"]) for s in states)
    return x, (states if cfg["kind"] == "lstm" else states[0])


def run_torch_directly(module, x, state, lengths):
    """The test's own torch call: packed ragged rows, eval mode, no gradients."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    module.eval()
    with torch.no_grad():
        xt = torch.from_numpy(x)
        st = tuple(torch.from_numpy(s) for s in state) if isinstance(state, tuple) \
            else torch.from_numpy(state)
        packed = pack_padded_sequence(xt, torch.from_numpy(lengths), enforce_sorted=False,
                                      batch_first=module.batch_first)
        out, st_n = module(packed, st)
        out, _ = pad_packed_sequence(out, batch_first=module.batch_first,
                                     total_length=x.shape[1 if module.batch_first else 0])
    st_n = st_n if isinstance(st_n, tuple) else (st_n,)
    return [out.numpy()] + [s.numpy() for s in st_n]


def assert_same_function(layer, module, cfg, seed=3):
    """fastrnn and torch agree on a fresh random input, state and ragged lengths."""
    x, state = random_case(cfg, np.random.default_rng(seed))
    out, st = layer(x, state, LENGTHS)
    ours = [out] + list(st if isinstance(st, tuple) else (st,))
    theirs = run_torch_directly(module, x, state, LENGTHS)
    tol = default_tolerance(cfg["dtype"])
    for name, a, b in zip(["out", "h_n", "c_n"], ours, theirs):
        assert a.dtype == np.dtype(cfg["dtype"])
        assert_close(name, a, b, rtol=0, atol=tol)


def assert_weights_identical(layer, module):
    sd = module.state_dict()
    assert set(sd) == set(layer.params)
    for name, t in sd.items():
        a = layer.params[name]
        assert a.dtype == t.numpy().dtype, name
        assert np.array_equal(a, t.numpy()) and a.tobytes() == t.numpy().tobytes(), name


# ---- random configurations --------------------------------------------------------------

def test_random_configurations_cover_every_option():
    seen = {(k, repr(c.get(k))) for c in CONFIGS for k in c if k not in ("input_size",
                                                                          "hidden_size")}
    for key, values in [("kind", ["rnn", "lstm", "gru"]), ("num_layers", [1, 2, 3]),
                        ("bias", [True, False]), ("batch_first", [True, False]),
                        ("bidirectional", [True, False]), ("dropout", [0.0, 0.3]),
                        ("nonlinearity", ["tanh", "relu"]),
                        ("dtype", [np.float32, np.float64])]:
        for v in values:
            assert (key, repr(v)) in seen, (key, v)


@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
def test_from_torch_module_matches_torch(cfg):
    module = make_torch(cfg, seed=1)
    module.train()
    layer = from_torch(module)
    assert type(layer) is FASTRNN_CLASS[cfg["kind"]]
    for key in ("input_size", "hidden_size", "num_layers", "bias", "batch_first",
                "bidirectional", "dropout", "nonlinearity"):
        if key in cfg:
            assert getattr(layer, key) == cfg[key], key
    assert layer.dtype == np.dtype(cfg["dtype"])
    assert isinstance(layer.parity_max_abs_diff, float)
    assert layer.parity_max_abs_diff <= default_tolerance(cfg["dtype"])
    assert module.training, "from_torch must not change the module's mode"
    assert_weights_identical(layer, module)
    assert_same_function(layer, module, cfg)


@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
def test_to_torch_matches_and_round_trips_bit_identically(cfg):
    layer = make_fastrnn(cfg, seed=2)
    module = to_torch(layer)
    assert type(module) is TORCH_CLASS[cfg["kind"]]
    for key in ("input_size", "hidden_size", "num_layers", "bias", "batch_first",
                "bidirectional", "dropout", "nonlinearity"):
        if key in cfg:
            assert getattr(module, key) == cfg[key], key
    assert module.parity_max_abs_diff <= default_tolerance(cfg["dtype"])
    assert_weights_identical(layer, module)
    assert_same_function(layer, module, cfg)
    # fastrnn -> torch -> fastrnn: every parameter bit-identical
    back = from_torch(module)
    assert set(back.params) == set(layer.params)
    for name, a in layer.params.items():
        assert back.params[name].dtype == a.dtype
        assert np.array_equal(back.params[name], a), name
        assert back.params[name].tobytes() == a.tobytes(), name
    # torch -> fastrnn -> torch too
    again = to_torch(back).state_dict()
    for name, t in module.state_dict().items():
        assert torch.equal(again[name], t), name


@pytest.mark.parametrize("cfg", CONFIGS[:12], ids=cfg_id)
@pytest.mark.parametrize("prefix", ["", "lstm.", "encoder.rnn."])
@pytest.mark.parametrize("as_numpy", [False, True], ids=["tensors", "numpy"])
def test_state_dicts_with_and_without_prefix(cfg, prefix, as_numpy):
    module = make_torch(cfg, seed=4)
    sd = {prefix + k: (v.numpy() if as_numpy else v) for k, v in module.state_dict().items()}
    layer = from_torch(sd, batch_first=cfg["batch_first"], nonlinearity=cfg.get("nonlinearity"))
    for key in ("input_size", "hidden_size", "num_layers", "bias", "bidirectional",
                "batch_first"):
        assert getattr(layer, key) == cfg[key], key
    assert layer.parity_max_abs_diff <= default_tolerance(cfg["dtype"])
    assert_weights_identical(layer, module)
    assert_same_function(layer, module, cfg)


def test_state_dict_rnn_nonlinearity_defaults_to_tanh():
    module = nn.RNN(3, 5, nonlinearity="relu")
    assert from_torch(module.state_dict()).nonlinearity == "tanh"      # cannot be known
    layer = from_torch(module.state_dict(), nonlinearity="relu")
    cfg = dict(kind="rnn", input_size=3, hidden_size=5, num_layers=1, bias=True,
               batch_first=False, bidirectional=False, dtype=np.float32)
    assert_same_function(layer, module, cfg)


# ---- cells --------------------------------------------------------------------------

CELL_CASES = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", None), ("gru", None)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind,nl", CELL_CASES)
def test_cells_both_ways(kind, nl, bias, dtype):
    torch.manual_seed(7)
    extra = {"nonlinearity": nl} if nl else {}
    cls = getattr(nn, {"rnn": "RNNCell", "lstm": "LSTMCell", "gru": "GRUCell"}[kind])
    module = cls(4, 6, bias=bias, dtype=torch_dtype(dtype), **extra)
    tol = default_tolerance(dtype)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((B, 4)).astype(dtype)
    state = tuple(rng.uniform(-0.5, 0.5, (B, 6)).astype(dtype) for _ in range(2))
    state = state if kind == "lstm" else state[0]
    with torch.no_grad():
        st = tuple(torch.from_numpy(s) for s in state) if kind == "lstm" \
            else torch.from_numpy(state)
        expected = module(torch.from_numpy(x), st)
    expected = [t.numpy() for t in (expected if kind == "lstm" else (expected,))]
    for cell in (from_torch(module), from_torch(module.state_dict(), nonlinearity=nl),
                 from_torch({"cell." + k: v for k, v in module.state_dict().items()},
                            nonlinearity=nl)):
        assert type(cell).__name__ == cls.__name__
        assert cell.parity_max_abs_diff <= tol
        got = cell(x, state)
        for a, b in zip(got if kind == "lstm" else (got,), expected):
            assert_close("cell state", a, b, rtol=0, atol=tol)
        back = to_torch(cell)
        assert type(back) is cls and back.parity_max_abs_diff <= tol
        for name, t in module.state_dict().items():
            assert torch.equal(back.state_dict()[name], t), name
            assert cell.params[name].tobytes() == t.numpy().tobytes(), name


# ---- SequenceModel ------------------------------------------------------------------

MODELS = [
    dict(cell="lstm", vocab_size=11, hidden_size=5, task="next_token", num_layers=2),
    dict(cell="gru", input_size=3, hidden_size=4, output_size=2, task="sequence_regression",
         bidirectional=True),
    dict(cell="rnn", input_size=3, hidden_size=4, output_size=3, nonlinearity="relu",
         task="sequence_classification", num_layers=2, bidirectional=True, dtype="float64"),
    dict(cell="lstm", input_size=2, hidden_size=3, output_size=2, task="regression",
         dropout=0.2, num_layers=2),
]


@pytest.mark.parametrize("cfg", MODELS, ids=lambda c: f"{c['cell']}-{c['task']}")
def test_sequence_model_to_torch(cfg):
    model = fastrnn.SequenceModel(seed=3, **cfg)
    module = model.to_torch()
    assert module.parity_max_abs_diff <= default_tolerance(model.dtype)
    theirs = {k: v.numpy() for k, v in module.state_dict().items()}
    assert set(theirs) == set(model.named_parameters())
    for name, a in model.named_parameters().items():
        assert a.tobytes() == theirs[name].tobytes(), name
    rng = np.random.default_rng(4)
    if model.embedding is not None:
        x = rng.integers(0, cfg["vocab_size"], (B, T))
        xt = torch.from_numpy(x)
    else:
        x = rng.standard_normal((B, T, cfg["input_size"])).astype(model.dtype)
        xt = torch.from_numpy(x)
    module.eval()
    for lengths in (None, LENGTHS):
        with torch.no_grad():
            expected = module(xt, None if lengths is None else torch.from_numpy(lengths))
        got = model.forward(x, lengths)[0]
        assert_close("logits", got, expected.numpy(), rtol=0,
                     atol=default_tolerance(model.dtype))
        assert compare(model, module, x, lengths=lengths) <= default_tolerance(model.dtype)


# ---- refusals -------------------------------------------------------------------------

def _lstm_sd(**kw):
    torch.manual_seed(0)
    return {k: v.clone() for k, v in nn.LSTM(3, 4, **kw).state_dict().items()}


def _with(sd, **changes):
    sd = dict(sd)
    for k, v in changes.items():
        if v is None:
            del sd[k]
        else:
            sd[k] = v
    return sd


@pytest.mark.parametrize("source,kw,error,match", [
    (lambda: nn.LSTM(3, 4, proj_size=2), {}, ValueError, "proj_size"),
    (lambda: nn.LSTM(3, 4, proj_size=2).state_dict(), {}, ValueError, "proj_size"),
    (lambda: nn.Linear(3, 4), {}, TypeError, "Linear"),
    (lambda: nn.Conv1d(3, 4, 2), {}, TypeError, "Conv1d"),
    (lambda: [torch.zeros(3)], {}, TypeError, "list"),
    (lambda: {}, {}, ValueError, "empty"),
    (lambda: {0: torch.zeros(3)}, {}, TypeError, "strings"),
    (lambda: _with(_lstm_sd(), running_mean=torch.zeros(4)), {}, ValueError,
     "running_mean"),
    (lambda: _with(_lstm_sd(), weight_ih_l0_extra=torch.zeros(4)), {}, ValueError,
     "weight_ih_l0_extra"),
    (lambda: {**{"rnn." + k: v for k, v in _lstm_sd().items()}, "head.weight": torch.zeros(2, 4)},
     {}, ValueError, "head.weight"),
    (lambda: _with(_lstm_sd(), bias_ih_l0=torch.zeros(15)), {}, ValueError,
     r"'bias_ih_l0' has shape \(15,\)"),
    (lambda: _with(_lstm_sd(), weight_hh_l0=torch.zeros(10, 4)), {}, ValueError,
     r"'weight_hh_l0' has shape"),
    (lambda: _with(_lstm_sd(), weight_hh_l0=torch.zeros(8, 4)), {}, ValueError,
     "expected 1 \\(RNN\\), 3 \\(GRU\\) or 4 \\(LSTM\\)"),
    (lambda: _with(_lstm_sd(num_layers=2), weight_ih_l1=torch.zeros(16, 5)), {}, ValueError,
     "'weight_ih_l1' has shape"),
    (lambda: _with(_lstm_sd(num_layers=3), weight_ih_l1=None, weight_hh_l1=None,
                   bias_ih_l1=None, bias_hh_l1=None), {}, ValueError,
     "keys for layer 2 but none for layer 1"),
    (lambda: _with(_lstm_sd(), weight_hh_l999999999=torch.zeros(16, 4)), {}, ValueError,
     "none for layer 1"),                   # refused before a huge stack is allocated
    (lambda: _with(_lstm_sd(), bias_hh_l0=None), {}, ValueError, "missing.*bias_hh_l0"),
    (lambda: _with(_lstm_sd(), weight_ih=torch.zeros(16, 3)), {}, ValueError, "cell"),
    (lambda: _lstm_sd(), {"kind": "gru"}, ValueError, "4 gate blocks"),
    (lambda: _lstm_sd(), {"kind": "transformer"}, ValueError, "kind"),
    (lambda: _lstm_sd(), {"nonlinearity": "relu"}, ValueError, "applies to an RNN"),
    (lambda: nn.LSTM(3, 4), {"batch_first": True}, ValueError, "batch_first"),
    (lambda: nn.GRU(3, 4), {"kind": "lstm"}, ValueError, "kind"),
    (lambda: nn.LSTM(3, 4).half(), {}, TypeError, "float16"),
    (lambda: _with(_lstm_sd(), bias_ih_l0=torch.zeros(16, dtype=torch.int64)), {}, TypeError,
     "not floating point"),
    (lambda: _with(_lstm_sd(), bias_ih_l0=torch.full((16,), float("nan"))), {}, ValueError,
     "NaN"),
    (lambda: _with(_lstm_sd(), bias_ih_l0=torch.zeros(16, dtype=torch.float64)), {},
     TypeError, "mix dtypes"),
    (lambda: _with(_lstm_sd(), bias_ih_l0="zeros"), {}, TypeError, "str"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_from_torch_refusals(source, kw, error, match):
    with pytest.raises(error, match=match):
        from_torch(source(), **kw)


def test_other_float_dtypes_convert_when_asked():
    torch.manual_seed(0)
    module = nn.GRU(3, 4).to(torch.bfloat16)
    layer = from_torch(module, dtype=np.float32)
    assert layer.dtype == np.float32
    for name, t in module.state_dict().items():
        assert np.array_equal(layer.params[name], t.float().numpy()), name   # exact widening
    assert layer.parity_max_abs_diff <= default_tolerance(np.float32)


@pytest.mark.parametrize("obj,match", [
    (lambda: fastrnn.LSTM(3, 4, peephole="io"), "peephole"),
    (lambda: fastrnn.LSTM(3, 4, coupled=True), "coupled"),
    (lambda: fastrnn.GRU(3, 4, reset_after=False), "reset_after=False"),
    (lambda: fastrnn.LSTMCell(3, 4, peephole=True), "peephole"),
    (lambda: fastrnn.GRUCell(3, 4, reset_after=False), "reset_after=False"),
    (lambda: fastrnn.SequenceModel("lstm", input_size=2, hidden_size=3, output_size=1,
                                   task="regression", coupled=True), "coupled"),
])
def test_to_torch_refuses_fastrnn_only_variants(obj, match):
    with pytest.raises(ValueError, match=match):
        to_torch(obj())


def test_to_torch_refuses_foreign_objects():
    with pytest.raises(TypeError, match="Linear"):
        to_torch(nn.Linear(2, 2))


# ---- the parity check catches a wrong conversion -----------------------------------------

def _swap_first_two_gate_blocks(a, H):
    a = np.array(a)
    a[[*range(H), *range(H, 2 * H)]] = a[[*range(H, 2 * H), *range(H)]]
    return a


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_parity_check_catches_swapped_gate_blocks(kind, monkeypatch):
    torch.manual_seed(0)
    module = TORCH_CLASS[kind](3, 4, num_layers=2)
    real_fastrnn, real_torch = torch_io._copy_into_fastrnn, torch_io._copy_into_torch

    def tampered(arrays):
        # (i, f) for LSTM, (r, z) for GRU, in one matrix of the second layer
        return {k: (_swap_first_two_gate_blocks(a, 4) if k == "weight_hh_l1" else a)
                for k, a in arrays.items()}
    monkeypatch.setattr(torch_io, "_copy_into_fastrnn",
                        lambda ours, arrays: real_fastrnn(ours, tampered(arrays)))
    with pytest.raises(ParityError, match="exceeds"):
        from_torch(module)
    with pytest.raises(ParityError, match="exceeds"):
        from_torch(module.state_dict())
    unchecked = from_torch(module, check=False)        # the check is what catches it
    assert unchecked.parity_max_abs_diff is None
    x = np.random.default_rng(0).standard_normal((T, B, 3)).astype(np.float32)
    assert compare(unchecked, module, x) > 1e-3
    monkeypatch.setattr(torch_io, "_copy_into_fastrnn", real_fastrnn)
    monkeypatch.setattr(torch_io, "_copy_into_torch",
                        lambda t, m, arrays: real_torch(t, m, tampered(arrays)))
    with pytest.raises(ParityError, match="exceeds"):
        to_torch(from_torch(module))


def test_tampered_weights_are_seen_by_compare():
    torch.manual_seed(0)
    module = nn.LSTM(3, 4)
    layer = from_torch(module)
    x = np.random.default_rng(0).standard_normal((T, B, 3)).astype(np.float32)
    assert compare(layer, module, x) <= 1e-4
    layer.params["weight_ih_l0"][...] = _swap_first_two_gate_blocks(
        layer.params["weight_ih_l0"], 4)
    assert compare(layer, module, x) > 1e-3


# ---- compare() on each pair of sides -------------------------------------------------------

def _layer_and_module(batch_first=False, dtype=np.float32):
    torch.manual_seed(2)
    module = nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=batch_first,
                     dtype=torch_dtype(dtype))
    return from_torch(module), module


def test_compare_fastrnn_and_torch_layers_across_layouts():
    layer, module = _layer_and_module(batch_first=True)
    time_major = fastrnn.LSTM(3, 4, num_layers=2, bidirectional=True)
    time_major.load_state_dict(layer.state_dict())
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, 3)).astype(np.float32)          # a's layout: time-major
    state = tuple(rng.uniform(-0.5, 0.5, (4, B, 4)).astype(np.float32) for _ in range(2))
    d = compare(time_major, module, x, lengths=LENGTHS, state=state)
    assert d <= 1e-4
    assert compare(module, time_major, x.transpose(1, 0, 2), state=state) <= 1e-4
    assert compare(module, module, x.transpose(1, 0, 2)) == 0.0
    assert compare(layer, layer, x.transpose(1, 0, 2), lengths=LENGTHS) == 0.0
    # a different network is seen: final states differ even where outputs might not
    other = fastrnn.LSTM(3, 4, num_layers=2, bidirectional=True, seed=1)
    assert compare(other, module, x) > 1e-2


def test_compare_cells():
    torch.manual_seed(0)
    module = nn.GRUCell(3, 5, dtype=torch.float64)
    cell = from_torch(module)
    rng = np.random.default_rng(0)
    x, h = rng.standard_normal((B, 3)), rng.uniform(-0.5, 0.5, (B, 5))
    assert compare(cell, module, x, state=h) <= 1e-12
    assert compare(module, cell, x.astype(np.float32), state=h) <= 1e-12   # cast to float64
    with pytest.raises(ValueError, match="lengths"):
        compare(cell, module, x, lengths=LENGTHS)


def _onnx_lstm_graph(layer):
    """A one-node ONNX LSTM built by hand (not by fastrnn's exporter): gates reordered to
    ONNX's (i, o, f, c), Y (T, 1, B, H) squeezed to (T, B, H), Y_h named h_n."""
    from onnx import TensorProto, helper, numpy_helper
    H = layer.hidden_size
    p = layer.params

    def iofc(a):
        i, f, g, o = np.split(a, 4, axis=0)
        return np.concatenate([i, o, f, g], axis=0)
    inits = [numpy_helper.from_array(iofc(p["weight_ih_l0"])[None], "W"),
             numpy_helper.from_array(iofc(p["weight_hh_l0"])[None], "R"),
             numpy_helper.from_array(np.concatenate([iofc(p["bias_ih_l0"]),
                                                     iofc(p["bias_hh_l0"])])[None], "B"),
             numpy_helper.from_array(np.array([1], np.int64), "axes")]
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["Y", "h_n"], hidden_size=H),
             helper.make_node("Squeeze", ["Y", "axes"], ["out"])]
    graph = helper.make_graph(
        nodes, "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                      ["T", "B", layer.input_size])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("h_n", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def test_compare_with_onnx_sides(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(3)
    module = nn.LSTM(3, 4)
    layer = from_torch(module)
    proto = _onnx_lstm_graph(layer)
    path = tmp_path / "lstm.onnx"
    onnx.save(proto, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((T, B, 3)).astype(np.float32)
    for side in (proto, path, str(path), session):
        assert compare(layer, side, x) <= 1e-4
        assert compare(side, module, x) <= 1e-4
    assert compare(module, proto, x) <= 1e-4                  # torch against the graph
    with pytest.raises(ValueError, match="no input 'lengths'"):
        compare(layer, proto, x, lengths=LENGTHS)
    with pytest.raises(ValueError, match="not a .onnx file"):
        compare(layer, str(tmp_path / "lstm.pt"), x)
    broken = fastrnn.LSTM(3, 4, seed=9)
    assert compare(broken, proto, x) > 1e-2


def test_compare_with_fastrnn_onnx_export():
    pytest.importorskip("onnxruntime")
    onnx_export = pytest.importorskip("fastrnn.interop.onnx_export")
    layer, module = _layer_and_module(batch_first=True)
    proto = onnx_export.to_onnx(layer, with_lengths=True, with_state=True)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((B, T, 3)).astype(np.float32)
    state = tuple(rng.uniform(-0.5, 0.5, (4, B, 4)).astype(np.float32) for _ in range(2))
    assert compare(module, proto, x, lengths=LENGTHS, state=state) <= 1e-4
    with pytest.raises(ValueError, match="not fed"):
        compare(module, proto, x)


def _keras():
    import os
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except Exception as exc:                       # not installed, or no usable backend
        pytest.skip(f"keras not usable: {exc}")
    return keras


@pytest.mark.filterwarnings("ignore::DeprecationWarning")    # inside Keras's torch backend
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_compare_with_keras(return_sequences, bidirectional):
    keras = _keras()
    layer = fastrnn.LSTM(3, 4, batch_first=True, bidirectional=bidirectional, seed=0)
    layer.flat[...] += np.random.default_rng(1).uniform(-0.3, 0.3, layer.flat.shape) \
        .astype(np.float32)
    k = keras.layers.LSTM(4, return_sequences=return_sequences)
    if bidirectional:
        k = keras.layers.Bidirectional(k)
    k.build((None, T, 3))
    weights = []
    for sfx in ["_l0", "_l0_reverse"][:layer.num_directions]:
        p = layer.params
        # Keras: kernel (I, 4H), recurrent (H, 4H), one bias, same (i, f, c, o) order
        weights += [p["weight_ih" + sfx].T, p["weight_hh" + sfx].T,
                    p["bias_ih" + sfx] + p["bias_hh" + sfx]]
    k.set_weights(weights)
    x = np.random.default_rng(2).standard_normal((B, T, 3)).astype(np.float32)
    assert compare(k, layer, x) <= 1e-4
    assert compare(layer, k, x) <= 1e-4
    time_major = fastrnn.LSTM(3, 4, bidirectional=bidirectional)
    time_major.load_state_dict(layer.state_dict())
    assert compare(time_major, k, x.transpose(1, 0, 2)) <= 1e-4
    assert compare(fastrnn.LSTM(3, 4, batch_first=True, bidirectional=bidirectional, seed=5),
                   k, x) > 1e-2
    with pytest.raises(ValueError, match="Keras"):
        compare(layer, k, x, lengths=np.full(B, T))


@pytest.mark.parametrize("x,error,match", [
    ("abc", TypeError, "numpy array"),
    (np.array(["a", "b"]), TypeError, "floats"),
    (np.full((T, B, 3), np.nan, np.float32), ValueError, "NaN"),
    (np.zeros((1, T, B, 3), np.float32), ValueError, "shape"),
    (np.zeros((0, B, 3), np.float32), ValueError, "non-empty"),
])
def test_compare_validates_x(x, error, match):
    layer, module = _layer_and_module()
    with pytest.raises(error, match=match):
        compare(layer, module, x)


def test_compare_refuses_unknown_sides_and_mismatched_networks():
    layer, module = _layer_and_module()
    x = np.zeros((T, B, 3), np.float32)
    with pytest.raises(TypeError, match="b: .*dict"):
        compare(layer, {"weight": 1}, x)
    with pytest.raises(ValueError, match="hidden_size 4 against 5"):
        compare(layer, fastrnn.LSTM(3, 5, num_layers=2, bidirectional=True), x)


def _gru_graph_file(tmp_path, **kw):
    path = tmp_path / "gru.onnx"
    fastrnn.GRU(3, 4, seed=0, **kw).to_onnx(path, check=False)
    return str(path)


@pytest.mark.parametrize("a, b, match", [
    (lambda p: fastrnn.GRU(3, 4, seed=0), lambda p: fastrnn.LSTM(3, 4, seed=0),
     "cell 'gru' against 'lstm'"),
    (lambda p: fastrnn.LSTM(3, 4, seed=0), lambda p: nn.GRU(3, 4), "cell 'lstm' against 'gru'"),
    (lambda p: fastrnn.LSTM(3, 4, peephole=True), lambda p: nn.LSTM(3, 4),
     "peephole 'fio' against ''"),
    (lambda p: fastrnn.LSTM(3, 4, coupled=True), lambda p: fastrnn.LSTM(3, 4),
     "coupled True against False"),
    (lambda p: fastrnn.GRU(3, 4, reset_after=False), lambda p: nn.GRU(3, 4),
     "reset_after False against True"),
    (lambda p: fastrnn.RNN(3, 4, nonlinearity="relu"), lambda p: nn.RNN(3, 4),
     "nonlinearity 'relu' against 'tanh'"),
    (lambda p: fastrnn.LSTM(3, 4, num_layers=2), lambda p: nn.LSTM(3, 4, num_layers=1),
     "num_layers 2 against 1"),
    (lambda p: fastrnn.LSTM(3, 4, bidirectional=True), lambda p: nn.LSTM(3, 4),
     "bidirectional True against False"),
    (lambda p: fastrnn.LSTM(3, 4), lambda p: nn.LSTM(3, 4, proj_size=2), "proj_size 0 against 2"),
    (lambda p: fastrnn.GRU(3, 4), lambda p: _gru_graph_file(p, reset_after=False),
     "reset_after True against False"),
    (lambda p: torch.jit.script(nn.LSTM(3, 4)), lambda p: fastrnn.GRU(3, 4),
     "cell 'lstm' against 'gru'"),
    (lambda p: fastrnn.GRUCell(3, 4), lambda p: nn.LSTMCell(3, 4), "cell 'gru' against 'lstm'"),
    (lambda p: fastrnn.SequenceModel("gru", vocab_size=6, embedding_dim=3, hidden_size=4,
                                     output_size=6, task="next_token", seed=0),
     lambda p: fastrnn.SequenceModel("gru", vocab_size=7, embedding_dim=3, hidden_size=4,
                                     output_size=7, task="next_token", seed=0),
     "vocab_size 6 against 7; output_size 6 against 7"),
], ids=lambda v: v if isinstance(v, str) else None)
@_JIT
def test_compare_refuses_different_architectures_naming_the_difference(tmp_path, a, b, match):
    """compare(GRU, LSTM, x) returned 0.907 with no complaint."""
    x = np.zeros((T, B, 3), np.float32)
    if "vocab" in match:
        x = np.zeros((B, T), np.int64)
    with pytest.raises(ValueError, match=r"not the same architecture: .*" + re.escape(match)):
        compare(a(tmp_path), b(tmp_path), x)


@_JIT
def test_compare_still_runs_matching_architectures(tmp_path):
    x = np.random.default_rng(0).standard_normal((T, B, 3)).astype(np.float32)
    gru = fastrnn.GRU(3, 4, seed=0)
    assert compare(gru, _gru_graph_file(tmp_path), x) <= 1e-5
    assert compare(gru, gru.to_torch(), x) <= 1e-5
    assert compare(torch.jit.script(gru.to_torch()), gru, x) <= 1e-5
    traced = torch.jit.trace(gru.to_torch(), torch.from_numpy(x))   # says nothing: runs
    assert compare(gru, traced, x) <= 1e-5
    with pytest.raises(ValueError, match="shape"):                   # ... and its shapes count
        compare(fastrnn.GRU(3, 5, seed=0), traced, x)
    lstm = fastrnn.LSTM(3, 4, num_layers=2, bidirectional=True, seed=0)
    assert compare(lstm, lstm.to_torch(), x) <= 1e-5
    model = fastrnn.SequenceModel("lstm", vocab_size=6, embedding_dim=3, hidden_size=4,
                                  output_size=6, task="next_token", seed=0)
    assert compare(model, model.to_torch(), np.zeros((B, T), np.int64)) <= 1e-5


# ---- methods, modes and flags -------------------------------------------------------------

def test_methods_and_check_flag():
    layer = fastrnn.GRU(3, 4, num_layers=2, seed=0)
    module = layer.to_torch(check=False)
    assert module.parity_max_abs_diff is None and isinstance(module, nn.GRU)
    assert layer.to_torch().parity_max_abs_diff <= 1e-4
    cell = fastrnn.RNNCell(3, 4, nonlinearity="relu", dtype=np.float64)
    assert cell.to_torch().nonlinearity == "relu"
    model = fastrnn.SequenceModel("gru", input_size=3, hidden_size=4, output_size=2,
                                  task="regression", seed=0)
    assert model.to_torch(tol=1e-5).parity_max_abs_diff <= 1e-5
    layer.eval()
    assert not layer.to_torch().training
    layer.train()
    assert layer.to_torch().training


def test_a_tighter_tolerance_than_the_rounding_raises():
    torch.manual_seed(0)
    module = nn.LSTM(8, 16, num_layers=3)
    d = from_torch(module).parity_max_abs_diff
    assert d > 0
    with pytest.raises(ParityError):
        from_torch(module, tol=d / 2)


# ---- whole models and checkpoints: prefix= --------------------------------------------------

class _Seq2Seq(nn.Module):
    """An embedding, an encoder LSTM (inside a submodule), a decoder GRU and a Linear."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(11, 5)
        self.encoder = nn.Module()
        self.encoder.rnn = nn.LSTM(5, 6, num_layers=2, bidirectional=True)
        self.decoder = nn.GRU(12, 7)
        self.out = nn.Linear(7, 11)


def _seq2seq():
    torch.manual_seed(5)
    return _Seq2Seq()


@pytest.mark.parametrize("layout", ["state_dict", "checkpoint", "state_dict_key",
                                    "data_parallel"])
def test_whole_model_state_dict_imports_the_module_named_by_prefix(tmp_path, layout):
    """A checkpoint of a whole model was refused ("keys do not share one prefix")."""
    model = _seq2seq()
    sd = model.state_dict()
    if layout == "data_parallel":
        sd = {"module." + k: v for k, v in sd.items()}
    saved = {"state_dict": sd, "model": sd,
             "checkpoint": {"model": sd, "optimizer": torch.optim.Adam(
                 model.parameters()).state_dict(), "epoch": 3},
             "state_dict_key": {"state_dict": sd, "epoch": 3, "lr": 0.1}}[
        "state_dict" if layout == "data_parallel" else layout]
    path = tmp_path / "ckpt.pt"
    torch.save(saved, path)
    loaded = torch.load(path, weights_only=True)
    pre = "module." if layout == "data_parallel" else ""
    for prefix, module in ((pre + "encoder.rnn", model.encoder.rnn),
                           (pre + "decoder.", model.decoder)):
        layer = from_torch(loaded, prefix=prefix)
        assert type(layer).__name__ == type(module).__name__
        assert (layer.num_layers, layer.bidirectional) == (module.num_layers,
                                                           module.bidirectional)
        assert layer.parity_max_abs_diff <= default_tolerance(np.float32)
        x = np.random.default_rng(0).standard_normal((T, B, module.input_size)).astype(
            np.float32)
        assert compare(layer, module, x) <= default_tolerance(np.float32)
    # the CLI's reader finds the state dict inside the checkpoint too
    flat = torch_io.read_state_dict(path)
    assert set(flat) == set(sd)
    assert from_torch(flat, prefix=pre + "decoder").hidden_size == 7


def test_without_or_with_a_wrong_prefix_the_error_lists_the_recurrent_modules():
    sd = _seq2seq().state_dict()
    listing = (r"'encoder.rnn' \(LSTM, 2 layers, input_size 5, hidden_size 6, "
               r"bidirectional\).*'decoder' \(GRU, 1 layer, input_size 12, hidden_size 7\)")
    with pytest.raises(ValueError, match="more than one module.*prefix=.*" + listing):
        from_torch(sd)
    with pytest.raises(ValueError, match="prefix='encoder' matches no recurrent module.*"
                                         + listing):
        from_torch(sd, prefix="encoder")
    with pytest.raises(ValueError, match="prefix='out' matches no recurrent module"):
        from_torch(sd, prefix="out")
    with pytest.raises(TypeError, match="prefix must be a str"):
        from_torch(sd, prefix=3)
    with pytest.raises(ValueError, match="no recurrent module"):
        from_torch({"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)})
    with pytest.raises(TypeError, match="'optimizer'.*dict.*'state_dict', 'model_state_dict',"):
        from_torch({"optimizer": {"lr": 1}, "epoch": 2})


def test_a_live_model_imports_its_submodule_by_prefix():
    model = _seq2seq()
    layer = from_torch(model, prefix="encoder.rnn")
    assert layer.hidden_size == 6 and layer.parity_max_abs_diff <= 1e-4
    with pytest.raises(TypeError, match=r"_Seq2Seq.*prefix=.*'encoder.rnn' \(LSTM.*'decoder' "
                                        r"\(GRU"):
        from_torch(model)
    with pytest.raises(ValueError, match="prefix='out'.*not a recurrent module"):
        from_torch(model, prefix="out")


# ---- TorchScript ----------------------------------------------------------------------------


_SCRIPTABLE = {
    "lstm": lambda: nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True),
    "gru": lambda: nn.GRU(3, 4, num_layers=2),
    "rnn_relu": lambda: nn.RNN(3, 4, nonlinearity="relu", batch_first=True),
    "rnn_tanh": lambda: nn.RNN(3, 4, bias=False),
    "lstm_cell": lambda: nn.LSTMCell(3, 4),
    "gru_cell": lambda: nn.GRUCell(3, 4),
    "rnn_cell_relu": lambda: nn.RNNCell(3, 4, nonlinearity="relu"),
}


def _traced(module, with_state):
    rng = np.random.default_rng(0)
    cell = isinstance(module, nn.RNNCellBase)
    bf = getattr(module, "batch_first", False)
    shape = (B, 3) if cell else (B, T, 3) if bf else (T, B, 3)
    x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    if not with_state:
        return torch.jit.trace(module, (x,))
    rows = () if cell else (module.num_layers * (2 if module.bidirectional else 1),)
    h = torch.zeros(*rows, B, 4)
    state = (h, h.clone()) if isinstance(module, (nn.LSTM, nn.LSTMCell)) else h
    return torch.jit.trace(module, (x, state))


@_JIT
@pytest.mark.parametrize("how", ["script", "trace", "trace_with_state", "script_file",
                                 "trace_file"])
@pytest.mark.parametrize("name", list(_SCRIPTABLE))
def test_torchscript_modules_import_and_match_the_original(tmp_path, name, how):
    """torch.jit.script / torch.jit.trace of the recurrent modules were refused."""
    torch.manual_seed(1)
    original = _SCRIPTABLE[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # tracer warnings about Python values
        scripted = torch.jit.script(original) if how.startswith("script") else \
            _traced(original, how == "trace_with_state")
    if how.endswith("_file"):
        # a file comes in as the live module the caller loads: torch.jit.load runs the
        # file's TorchScript, a choice fastrnn leaves to the caller
        torch.jit.save(scripted, tmp_path / "m.pt")
        scripted = torch.jit.load(tmp_path / "m.pt")
    layer = from_torch(scripted)
    reference = from_torch(original)
    assert type(layer) is type(reference)
    for attr in ("input_size", "hidden_size", "num_layers", "bidirectional", "batch_first",
                 "bias", "nonlinearity"):
        assert getattr(layer, attr, None) == getattr(reference, attr, None), attr
    assert layer.parity_max_abs_diff <= default_tolerance(np.float32)
    for k, v in reference.params.items():
        assert np.array_equal(layer.params[k], v), k
    x, state = torch_io.random_case(reference, np.random.default_rng(3))
    assert compare(layer, original, x, state=state) <= default_tolerance(np.float32)


@_JIT
def test_torchscript_refusals():
    with pytest.raises(TypeError, match="TorchScript.*Linear"):
        from_torch(torch.jit.script(nn.Linear(3, 4)))
    traced = torch.jit.trace(nn.GRU(3, 4), torch.zeros(T, B, 3))
    with pytest.raises(ValueError, match="batch_first=True disagrees"):
        from_torch(traced, batch_first=True)
    with pytest.raises(ValueError, match="traced.*dtype"):
        from_torch(traced, dtype=np.float64)


@_JIT
def test_torchscript_files_are_not_read_by_read_state_dict(tmp_path):
    torch.jit.save(torch.jit.script(nn.GRU(3, 4)), tmp_path / "gru.pt")
    with pytest.raises(ValueError, match="TorchScript archive.*torch.jit.load.*trust"):
        torch_io.read_state_dict(tmp_path / "gru.pt")


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="needs os.mkfifo")
@pytest.mark.parametrize("name", ["w.pt", "w.safetensors"])
def test_read_state_dict_refuses_a_fifo_without_waiting(name, tmp_path):
    """A FIFO named like a weights file has no writer: opening it would wait forever."""
    import os
    os.mkfifo(tmp_path / name)
    with pytest.raises(fastrnn.io.NotARegularFileError, match="it is a FIFO"):
        torch_io.read_state_dict(tmp_path / name)


def test_read_state_dict_takes_the_format_for_any_name(tmp_path):
    torch.manual_seed(1)
    module = nn.GRU(3, 4)
    torch.save(module.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pass format='torch' or 'safetensors'"):
        torch_io.read_state_dict(tmp_path / "pytorch_model.bin")
    state = torch_io.read_state_dict(tmp_path / "pytorch_model.bin", format="torch")
    assert sorted(state) == sorted(module.state_dict())
    with pytest.raises(ValueError, match="format must be"):
        torch_io.read_state_dict(tmp_path / "pytorch_model.bin", format="onnx")
    with pytest.raises(ValueError, match="not a safetensors file"):
        torch_io.read_state_dict(tmp_path / "pytorch_model.bin", format="safetensors")
