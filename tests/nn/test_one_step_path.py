"""One native step per cell: cells, layer.step, SequenceModel.step and Stream all run the
cell's one step (fastrnn.functional.<cell>_step over kernels/_stream.pyx's run_step, the
Stream's own), so they give the same bits; the numpy reference checks the value; and
fastrnn/nn/layers.py calls no kernel module itself."""
import ast
import pathlib

import numpy as np
import pytest

import fastrnn
import fastrnn.functional as F
from fastrnn import reference as R
from fastrnn.nn.layers import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from fastrnn.nn.models import SequenceModel

# the recurrence over T steps in float32 rounds differently from numpy's
TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}

VARIANTS = [("rnn", dict(nonlinearity="tanh")), ("rnn", dict(nonlinearity="relu")),
            ("lstm", {}), ("lstm", dict(peephole=True)), ("lstm", dict(coupled=True)),
            ("lstm", dict(coupled=True, peephole="io")),
            ("gru", dict(reset_after=True)), ("gru", dict(reset_after=False))]
LAYERS = {"rnn": (RNN, RNNCell), "lstm": (LSTM, LSTMCell), "gru": (GRU, GRUCell)}
IDS = [c + "-" + ",".join(f"{k}={v}" for k, v in kw.items()) for c, kw in VARIANTS]


def _reference_step(cell, kw, x, h, c, p):
    """One step of the numpy oracle: x (B, I), state (B, H)."""
    W = (p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"))
    if W[2] is None:
        W = W[:2] + (np.zeros(W[0].shape[0], x.dtype),) * 2
    if cell == "rnn":
        _, h, _ = R.rnn_forward(x[None], h, *W, nonlinearity=kw["nonlinearity"])
        return h, None
    if cell == "gru":
        _, h, _ = R.gru_forward(x[None], h, *W, reset_after=kw["reset_after"])
        return h, None
    peep = {f"p_{g}": p[f"peephole_{g}"] for g in "ifo" if f"peephole_{g}" in p}
    _, h, c, _ = R.lstm_forward(x[None], h, c, *W, coupled=kw.get("coupled", False), **peep)
    return h, c


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell,kw", VARIANTS, ids=IDS)
def test_cells_layer_step_model_step_and_stream_agree_bit_for_bit(cell, kw, dtype, bias):
    I, H, B, T = 5, 12, 3, 6
    Layer, Cell = LAYERS[cell]
    lstm = cell == "lstm"
    model = SequenceModel(cell, input_size=I, hidden_size=H, output_size=2, task="regression",
                          dtype=dtype, seed=3, n_threads=1, **kw)
    layer = model.rnn
    if not bias:        # the model's layer has biases; a bias-free layer with its weights
        layer = Layer(I, H, bias=False, dtype=dtype, seed=3, n_threads=1, **kw)
    c = Cell(I, H, bias=bias, dtype=dtype, n_threads=1, **kw)
    c.load_state_dict({k[:-3]: v for k, v in layer.state_dict().items()})
    stream = layer.stream(B)
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(dtype)
    zero = np.zeros((B, H), dtype)
    cell_state = layer_state = model_state = None
    ref = (zero, zero if lstm else None)
    for t in range(T):
        cell_state = c(x[t], cell_state)
        y_layer, layer_state = layer.step(x[t], layer_state)
        y_stream = stream.step(x[t])
        h_cell = cell_state[0] if lstm else cell_state
        h_layer = layer_state[0][0] if lstm else layer_state[0]
        np.testing.assert_array_equal(h_cell, h_layer)
        np.testing.assert_array_equal(y_layer, h_layer)
        np.testing.assert_array_equal(y_stream, h_layer)
        if lstm:
            np.testing.assert_array_equal(cell_state[1], layer_state[1][0])
        if bias:
            _, model_state = model.step(x[t], model_state)
            np.testing.assert_array_equal(model_state[0] if lstm else model_state,
                                          layer_state[0] if lstm else layer_state)
        ref = _reference_step(cell, kw, x[t], *ref, c.params)
        np.testing.assert_allclose(h_cell, ref[0], **TOL[dtype])
        assert h_cell.dtype == dtype


@pytest.mark.parametrize("cell,kw", VARIANTS, ids=IDS)
def test_every_entry_point_goes_through_functional_step(cell, kw, monkeypatch):
    """Cells, layer.step and SequenceModel.step call fastrnn.functional.<cell>_step (cells:
    its form with a cell's state, functional.cell_step) and nothing else that steps (a
    whole-sequence call of length 1 would be a second path)."""
    calls = []

    def counting(original):
        def counted(*args, **kwargs):
            calls.append(1)
            return original(*args, **kwargs)
        return counted

    def refused(*args, **kwargs):
        raise AssertionError("a step went through a whole-sequence function")
    for name in (f"{cell}_step", "cell_step"):
        monkeypatch.setattr(F, name, counting(getattr(F, name)))
    for name in ("rnn_forward", "lstm_forward", "gru_forward"):
        monkeypatch.setattr(F, name, refused)
    Layer, Cell = LAYERS[cell]
    x = np.ones((2, 4), np.float32)
    Cell(4, 6, **kw)(x)
    Cell(4, 6, **kw)(x[0])
    assert len(calls) == 2
    Layer(4, 6, num_layers=2, **kw).step(x, None)
    assert len(calls) == 4                      # one per layer
    model = SequenceModel(cell, input_size=4, hidden_size=6, output_size=2, task="regression",
                          **kw)
    model.step(x, None)
    assert len(calls) == 5


def test_cell_unbatched_and_batch_zero_shapes():
    c = LSTMCell(3, 4, seed=0)
    h, cc = c(np.ones(3, np.float32))
    assert h.shape == cc.shape == (4,)
    h2, _ = c(np.ones((1, 3), np.float32))
    np.testing.assert_array_equal(h, h2[0])
    h0, c0 = c(np.ones((0, 3), np.float32))
    assert h0.shape == c0.shape == (0, 4)
    g = GRUCell(3, 4, seed=0)
    assert g(np.ones((0, 3), np.float32)).shape == (0, 4)


def test_cell_inputs_it_cannot_read_in_place_give_the_same_result():
    c = GRUCell(3, 4, dtype=np.float64, seed=0)
    x = np.random.default_rng(1).standard_normal((5, 3))
    h = np.random.default_rng(2).standard_normal((5, 4))
    want = c(x, h)
    np.testing.assert_array_equal(c(np.asfortranarray(x), h[:, :]), want)
    np.testing.assert_array_equal(c(x.tolist(), h.tolist()), want)
    np.testing.assert_array_equal(c(x, np.asfortranarray(h)), want)
    with pytest.raises(ValueError, match=r"state has shape \(\), expected \(5, 4\)"):
        LSTMCell(3, 4)(x.astype(np.float32), (h.astype(np.float32), None))


def test_functional_step_checks_its_own_inputs():
    layer = LSTM(3, 4, seed=0)
    plan = layer._step_plan("_l0")
    with pytest.raises(TypeError, match="step_plan of a gru cell"):
        F.gru_step(plan, np.ones((1, 3), np.float32))
    with pytest.raises(TypeError, match="x has dtype float64"):
        F.lstm_step(plan, np.ones((1, 3)))
    with pytest.raises(ValueError, match=r"h has shape \(2, 4\), expected \(1, 4\)"):
        F.lstm_step(plan, np.ones((1, 3), np.float32), np.ones((2, 4), np.float32))
    h, c = F.lstm_step(plan, np.ones((1, 3), np.float32))
    y, (hl, cl) = layer.step(np.ones((1, 3), np.float32), None)
    np.testing.assert_array_equal(h, hl[0])
    np.testing.assert_array_equal(c, cl[0])


def test_step_plans_are_not_shared_by_copies():
    import copy
    layer = GRU(3, 4, seed=0)
    x = np.ones((1, 3), np.float32)
    layer.step(x, None)                          # makes the plan
    twin = copy.deepcopy(layer)
    twin.load_state_dict({k: v * 0 for k, v in twin.state_dict().items()})
    assert np.abs(layer.step(x, None)[0]).sum() > 0
    np.testing.assert_array_equal(twin.step(x, None)[0], np.zeros((1, 4), np.float32))


def test_cell_step_reads_a_cells_state_forms_and_declines_the_rest():
    """functional.cell_step, the cells' hot path: None, h or exactly (h, c) stepped as
    <cell>_step steps them; any other form returns None (computing nothing) for the
    cell's checks to explain."""
    rng = np.random.default_rng(3)
    x, h, c = (rng.standard_normal((2, n)).astype(np.float32) for n in (3, 4, 4))
    lstm = LSTM(3, 4, seed=0)._step_plan("_l0")
    for state, args in ((None, ()), ((h, c), (h, c))):
        want = F.lstm_step(lstm, x, *args)
        for nt in (1, None, 2):
            got = F.cell_step(lstm, x, state, nt)
            for a, b in zip(got, want):
                np.testing.assert_array_equal(a, b)
    for bad in ([h, c], (h,), (h, c, c), (h, None), (None, c), h, (h, c.astype(np.float64)),
                (h[:1], c), (np.ones((2, 8), np.float32)[:, ::2], c)):
        assert F.cell_step(lstm, x, bad, 1) is None
    gru = GRU(3, 4, seed=0)._step_plan("_l0")
    np.testing.assert_array_equal(F.cell_step(gru, x, h), F.gru_step(gru, x, h))
    for bad in ((h,), [h], h.astype(np.float64), h[:, :2]):
        assert F.cell_step(gru, x, bad, 1) is None
    assert F.cell_step(gru, x.astype(np.float64), h, 1) is None
    with pytest.raises(TypeError):
        F.cell_step("not a plan", x, h, 1)
    with pytest.raises(ValueError):
        F.cell_step(gru, x, h, 0)
    cell = LSTMCell(3, 4, seed=0)
    with pytest.raises(TypeError, match="state must be a pair"):
        cell(x, [h, c])
    with pytest.raises(TypeError, match="GRUCell state must be one array h"):
        GRUCell(3, 4, seed=0)(x, (h,))


@pytest.mark.parametrize("H", [8, 600])
def test_large_and_small_steps_match_the_reference(H):
    """A batch-1 step's scratch lives on the stack up to 32 KiB (H=600's LSTM step needs
    33.6 KiB, so it is allocated): both give the oracle's numbers, and a copied cell steps
    on its own weights."""
    import copy
    cell = LSTMCell(H, H, seed=1)
    rng = np.random.default_rng(4)
    x, h, c = (rng.standard_normal((1, H)).astype(np.float32) for _ in range(3))
    got = cell(x, (h, c))
    ref = _reference_step("lstm", {}, x, h, c, cell.params)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-5, atol=2e-6)
    twin = copy.deepcopy(cell)
    twin.load_state_dict({k: v * 0 for k, v in twin.state_dict().items()})
    np.testing.assert_array_equal(cell(x, (h, c))[0], got[0])
    np.testing.assert_array_equal(twin(x, (h, c))[1], c * 0.5)     # f = sigmoid(0)


def _imports(path):
    """Every module a file imports (top level and inside functions), as absolute names."""
    tree = ast.parse(pathlib.Path(path).read_text())
    package = "fastrnn.nn"
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names += [f"{base}.{a.name}" for a in node.names] + [base]
    return names


KERNEL_MODULES = ("_rnn", "_lstm", "_gru", "_stream", "_blas", "_openmp")


def test_layers_module_calls_no_kernel_module():
    """nn/layers.py reaches the kernels only through fastrnn.functional; from
    fastrnn.kernels it takes only the runtime (the weight guard, thread counts)."""
    import re
    path = pathlib.Path(fastrnn.__file__).parent / "nn" / "layers.py"
    names = _imports(path)
    assert "fastrnn.functional" in names
    bad = [n for n in names if any(n == f"fastrnn.kernels.{k}" or
                                   n.startswith(f"fastrnn.kernels.{k}.") for k in KERNEL_MODULES)]
    assert not bad, f"nn/layers.py imports kernel modules: {bad}"
    used = re.findall(r"(?<![\w.])(" + "|".join(KERNEL_MODULES) + r")\.\w", path.read_text())
    assert not used, f"nn/layers.py uses kernel modules: {sorted(set(used))}"
