"""Shared test helpers: the cell/variant table, input builders, uniform wrappers over the
kernels (fastrnn.functional) and the numpy reference (fastrnn.reference), llm.c-style
comparison, and single-node ONNX Runtime runs.

Dimension letters as everywhere in fastrnn: T time steps, B batch, I input size,
H hidden size, G gate blocks (RNN 1, LSTM 4, coupled LSTM 3, GRU 3).
"""
import numpy as np
import pytest

# Every cell and variant the kernels implement, as keyword sets for the wrappers below.
CASES = {
    "rnn_tanh": dict(cell="rnn", nonlinearity="tanh"),
    "rnn_relu": dict(cell="rnn", nonlinearity="relu"),
    "lstm": dict(cell="lstm"),
    "lstm_p_i": dict(cell="lstm", peepholes=("p_i",)),
    "lstm_p_f": dict(cell="lstm", peepholes=("p_f",)),
    "lstm_p_o": dict(cell="lstm", peepholes=("p_o",)),
    "lstm_peep_all": dict(cell="lstm", peepholes=("p_i", "p_f", "p_o")),
    "lstm_coupled": dict(cell="lstm", coupled=True),
    "lstm_coupled_p_i_p_o": dict(cell="lstm", coupled=True, peepholes=("p_i", "p_o")),
    "gru_reset_after": dict(cell="gru", reset_after=True),
    "gru_reset_before": dict(cell="gru", reset_after=False),
}


# The cells by family, for tests named after the cell they check (test_lstm_..., test_gru_...).
CELLS = {"rnn": "RNN (tanh, relu)",
         "lstm": "LSTM (plain, each peephole, all peepholes, coupled, coupled with peepholes)",
         "gru": "GRU (reset-after, reset-before)"}


def case_names(cell, among=None):
    """The CASES keys of one cell family ("rnn", "lstm", "gru"), in CASES order, optionally
    only those in `among`."""
    return [n for n, c in CASES.items() if c["cell"] == cell and (among is None or n in among)]


DTYPES = [np.float32, np.float64]


def n_gates(case):
    if case["cell"] == "rnn":
        return 1
    if case["cell"] == "lstm":
        return 3 if case.get("coupled") else 4
    return 3


def has_cell_state(case):
    return case["cell"] == "lstm"


def make_inputs(case, rng, T, B, I, H, dtype=np.float64):
    """Every differentiable input of a case, keyed by gradient name.

    Parameters are drawn like a real initialisation, uniform in +-1/sqrt(H) (PyTorch's
    nn.RNN/LSTM/GRU init), so float32 recurrences stay well-conditioned; x ~ N(0, 1),
    initial states uniform in +-0.5.
    """
    G = n_gates(case)
    k = 1.0 / np.sqrt(H)
    a = dict(
        x=rng.standard_normal((T, B, I)),
        h0=rng.uniform(-0.5, 0.5, (B, H)),
        W_ih=rng.uniform(-k, k, (G * H, I)),
        W_hh=rng.uniform(-k, k, (G * H, H)),
        b_ih=rng.uniform(-k, k, G * H),
        b_hh=rng.uniform(-k, k, G * H),
    )
    if has_cell_state(case):
        a["c0"] = rng.uniform(-0.5, 0.5, (B, H))
        for p in case.get("peepholes", ()):
            a[p] = rng.uniform(-k, k, H)
    return {name: v.astype(dtype) for name, v in a.items()}


def make_cotangents(case, rng, T, B, H, dtype=np.float64):
    """Upstream gradients: R for hs, and one per final state (h_n, and c_n for LSTM)."""
    n_finals = 2 if has_cell_state(case) else 1
    return (rng.standard_normal((T, B, H)).astype(dtype),
            tuple(rng.standard_normal((B, H)).astype(dtype) for _ in range(n_finals)))


def forward(mod, case, a, lengths=None, **kw):
    """Forward of `case` through module `mod` (fastrnn.functional or fastrnn.reference).

    Returns (hs, finals, cache); finals is (h_n,) or (h_n, c_n). `kw` goes to the call
    (n_threads for the kernels)."""
    if case["cell"] == "rnn":
        hs, h_n, cache = mod.rnn_forward(a["x"], a["h0"], a["W_ih"], a["W_hh"], a["b_ih"],
                                         a["b_hh"], lengths=lengths,
                                         nonlinearity=case["nonlinearity"], **kw)
        return hs, (h_n,), cache
    if case["cell"] == "lstm":
        hs, h_n, c_n, cache = mod.lstm_forward(
            a["x"], a["h0"], a["c0"], a["W_ih"], a["W_hh"], a["b_ih"], a["b_hh"],
            p_i=a.get("p_i"), p_f=a.get("p_f"), p_o=a.get("p_o"),
            coupled=case.get("coupled", False), lengths=lengths, **kw)
        return hs, (h_n, c_n), cache
    hs, h_n, cache = mod.gru_forward(a["x"], a["h0"], a["W_ih"], a["W_hh"], a["b_ih"], a["b_hh"],
                                     reset_after=case["reset_after"], lengths=lengths, **kw)
    return hs, (h_n,), cache


def backward(mod, case, dhs, dfinals, cache, **kw):
    """Backward through `mod`; returns every gradient keyed like make_inputs
    (x, h0, [c0,] W_ih, W_hh, b_ih, b_hh, [p_*]). `kw`: n_threads / grads / retain_cache
    (kernels). LSTM and GRU kernel backward consume their cache unless retain_cache=True;
    the RNN's cache is never consumed (its retain_cache is accepted and has no effect)."""
    if case["cell"] == "lstm":
        dx, dh0, dc0, grads = mod.lstm_backward(dhs, dfinals[0], dfinals[1], cache, **kw)
        return dict(grads, x=dx, h0=dh0, c0=dc0)
    fn = mod.rnn_backward if case["cell"] == "rnn" else mod.gru_backward
    dx, dh0, grads = fn(dhs, dfinals[0], cache, **kw)
    return dict(grads, x=dx, h0=dh0)


# ---- independent gradient oracles ---------------------------------------------------

def numeric_gradients(loss, arrays, eps):
    """Central finite differences of the scalar `loss()` w.r.t. every element of every array
    in `arrays` (dict name -> array), perturbed in place by +-eps and restored.
    Returns {name: gradient} in the order of `arrays`."""
    numeric = {}
    for key, arr in arrays.items():
        num = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            orig = arr[idx]
            arr[idx] = orig + eps
            plus = loss()
            arr[idx] = orig - eps
            minus = loss()
            arr[idx] = orig
            num[idx] = (plus - minus) / (2 * eps)
        numeric[key] = num
    return numeric


def torch_forward_backward(case, a, R, Rf, lengths, dtype):
    """The same forward and loss = sum(hs * R) + sum(final * Rf) through PyTorch's nn.RNN /
    nn.LSTM / nn.GRU (reset-after form only) with a's weights copied in; ragged `lengths`
    (all >= 1) via pack_padded_sequence(enforce_sorted=False).

    Returns (hs, finals, grads) as numpy: finals (h_n,) or (h_n, c_n); grads keyed x, h0,
    [c0,] W_ih, W_hh, b_ih, b_hh."""
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    T, _, I = a["x"].shape
    H = a["h0"].shape[1]
    if case["cell"] == "rnn":
        module = torch.nn.RNN(I, H, nonlinearity=case["nonlinearity"])
    elif case["cell"] == "lstm":
        module = torch.nn.LSTM(I, H)
    else:
        module = torch.nn.GRU(I, H)    # PyTorch's GRU is the reset-after form
    module = module.to(torch.float64 if dtype == np.float64 else torch.float32)
    params = dict(W_ih=module.weight_ih_l0, W_hh=module.weight_hh_l0,
                  b_ih=module.bias_ih_l0, b_hh=module.bias_hh_l0)
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(torch.from_numpy(a[k]))
    tin = {k: torch.tensor(a[k], requires_grad=True) for k in ("x", "h0", "c0") if k in a}
    state = (tin["h0"][None], tin["c0"][None]) if has_cell_state(case) else tin["h0"][None]
    if lengths is None:
        out, state_n = module(tin["x"], state)
    else:
        packed = pack_padded_sequence(tin["x"], torch.from_numpy(lengths), enforce_sorted=False)
        out_packed, state_n = module(packed, state)
        out, _ = pad_packed_sequence(out_packed, total_length=T)
    finals_t = tuple(s[0] for s in state_n) if has_cell_state(case) else (state_n[0],)
    loss = (out * torch.from_numpy(R)).sum() + sum(
        (f * torch.from_numpy(r)).sum() for f, r in zip(finals_t, Rf))
    loss.backward()
    grads = {k: t.grad.numpy() for k, t in tin.items()}
    grads.update({k: p.grad.numpy() for k, p in params.items()})
    return out.detach().numpy(), tuple(f.detach().numpy() for f in finals_t), grads


# ---- comparison, printed like llm.c's test_gpt2.c ------------------------------------

def assert_close(name, actual, expected, rtol, atol):
    """assert_allclose that, on failure, lists the first mismatching (got, expected) pairs
    and the max abs diff."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    bad = ~np.isclose(actual, expected, rtol=rtol, atol=atol)
    if bad.any():
        idx = np.argwhere(bad)[:5]
        pairs = "\n".join(f"  {tuple(int(k) for k in j)}: got {float(actual[tuple(j)])!r}, "
                          f"expected {float(expected[tuple(j)])!r}" for j in idx)
        diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        pytest.fail(f"{name}: {int(bad.sum())}/{bad.size} elements differ "
                    f"(max abs diff {np.nanmax(diff):.3e}, rtol={rtol}, atol={atol})\n{pairs}")


def assert_close_scaled(name, actual, expected, rtol, atol):
    """assert_close with `atol` taken relative to the array's largest magnitude:
    |actual - expected| <= rtol * |expected| + atol * max(1, max |expected|).

    Gradients are sums over T*B (and H) terms, so their rounding error is absolute, of the
    order of eps times the largest partial sums, not of each element: a small element of
    dW next to large ones carries the large ones' error."""
    expected_arr = np.asarray(expected)
    scale = max(1.0, float(np.nanmax(np.abs(expected_arr)))) if expected_arr.size else 1.0
    assert_close(name, actual, expected, rtol, atol * scale)


def assert_identical(name, actual, expected):
    """Bit-identical arrays (same dtype, shape and every bit, NaNs included)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    a = np.ascontiguousarray(actual).view(np.uint8)
    e = np.ascontiguousarray(expected).view(np.uint8)
    if not np.array_equal(a, e):
        bad = np.argwhere(~((actual == expected) | (np.isnan(actual) & np.isnan(expected))))[:5]
        pairs = "\n".join(f"  {tuple(int(k) for k in j)}: got {actual[tuple(j)]!r}, "
                          f"expected {expected[tuple(j)]!r}" for j in bad)
        diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        pytest.fail(f"{name}: not bit-identical (max abs diff {np.nanmax(diff):.3e})\n{pairs}")


# ---- ONNX Runtime ---------------------------------------------------------------------

def reorder(blocks, src, dst, fill=None):
    """Re-stack the H-row gate blocks of ``blocks`` from order ``src`` to ``dst``.

    A gate in ``dst`` but not in ``src`` is taken from ``fill`` (dict gate -> block).
    """
    parts = dict(zip(src, np.split(blocks, len(src), axis=0)))
    parts.update(fill or {})
    return np.concatenate([parts[g] for g in dst], axis=0)


def run_onnx(op, inputs, attrs, outputs):
    """Run a single ONNX node on ONNX Runtime's CPU provider.

    ``inputs`` is an ordered list of (name, array or None); None becomes an omitted optional input.
    """
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    given = [(n, v) for n, v in inputs if v is not None]
    node = helper.make_node(op, [n if v is not None else "" for n, v in inputs], outputs, **attrs)
    elem = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32}
    graph = helper.make_graph(
        [node], f"{op.lower()}_test",
        [helper.make_tensor_value_info(n, elem[v.dtype], v.shape) for n, v in given],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {n: v for n, v in given})



def bit_flips_that_load(blob, load, refused):
    """[(byte, bit)] of every single-bit flip of ``blob`` that ``load`` accepts instead of
    raising ``refused``: a model file's loader must refuse them all."""
    blob, accepted = bytearray(blob), []
    for i in range(len(blob)):
        for bit in range(8):
            blob[i] ^= 1 << bit
            try:
                load(bytes(blob))
                accepted.append((i, bit))
            except refused:
                pass
            blob[i] ^= 1 << bit
    return accepted
