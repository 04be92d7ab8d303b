"""Tests of fastrnn.reference (the numpy oracle) against independent oracles.

* central finite differences (float64) for every gradient element of every cell variant,
  with and without ragged lengths;
* PyTorch nn.RNN / nn.LSTM / nn.GRU (float64), including pack_padded_sequence for lengths;
* ONNX Runtime LSTM (peepholes, input_forget) and GRU (linear_before_reset 0/1), float32.
"""

import numpy as np
import pytest

from fastrnn import reference as ref
from _helpers import (CASES, assert_close, n_gates, numeric_gradients, reorder as _reorder,
                      run_onnx as _run_onnx, torch_forward_backward)


# ---------------------------------------------------------------------------
# tolerances and sizes (declared once)
# ---------------------------------------------------------------------------
FD_EPS = 1e-6                       # central-difference step (float64)
FD_RTOL, FD_ATOL = 1e-6, 1e-8       # analytic vs finite-difference gradients
TORCH_RTOL, TORCH_ATOL = 1e-10, 1e-12  # reference vs PyTorch, both float64
ORT_RTOL, ORT_ATOL = 1e-5, 1e-5     # reference vs ONNX Runtime, both float32
F32_RTOL, F32_ATOL = 1e-4, 1e-5     # reference float32 vs reference float64

T, B, I, H = 4, 3, 3, 4
RAGGED = np.array([T, 0, 2])        # full length, zero length, partial
RAGGED_NONZERO = np.array([T, 1, 2])  # for torch.pack_padded_sequence (lengths must be > 0)


# ---------------------------------------------------------------------------
# uniform wrappers over the three cells
# ---------------------------------------------------------------------------
def make_inputs(case, rng, dtype=np.float64, t=T, b=B):
    """All differentiable inputs of a case, keyed by gradient name."""
    G = n_gates(case)
    arrays = dict(
        x=rng.standard_normal((t, b, I)),
        h0=0.5 * rng.standard_normal((b, H)),
        W_ih=0.5 * rng.standard_normal((G * H, I)),
        W_hh=0.5 * rng.standard_normal((G * H, H)),
        b_ih=0.3 * rng.standard_normal(G * H),
        b_hh=0.3 * rng.standard_normal(G * H),
    )
    if case["cell"] == "lstm":
        arrays["c0"] = 0.5 * rng.standard_normal((b, H))
        for p in case.get("peepholes", ()):
            arrays[p] = 0.5 * rng.standard_normal(H)
    return {k: v.astype(dtype) for k, v in arrays.items()}


def forward(case, a, lengths=None):
    """Returns (hs, finals, cache) where finals is (h_n,) or (h_n, c_n)."""
    if case["cell"] == "rnn":
        hs, h_n, cache = ref.rnn_forward(a["x"], a["h0"], a["W_ih"], a["W_hh"], a["b_ih"], a["b_hh"],
                                         lengths=lengths, nonlinearity=case["nonlinearity"])
        return hs, (h_n,), cache
    if case["cell"] == "lstm":
        hs, h_n, c_n, cache = ref.lstm_forward(
            a["x"], a["h0"], a["c0"], a["W_ih"], a["W_hh"], a["b_ih"], a["b_hh"],
            p_i=a.get("p_i"), p_f=a.get("p_f"), p_o=a.get("p_o"),
            coupled=case.get("coupled", False), lengths=lengths)
        return hs, (h_n, c_n), cache
    hs, h_n, cache = ref.gru_forward(a["x"], a["h0"], a["W_ih"], a["W_hh"], a["b_ih"], a["b_hh"],
                                     reset_after=case["reset_after"], lengths=lengths)
    return hs, (h_n,), cache


def backward(case, dhs, dfinals, cache):
    """Returns all gradients keyed like make_inputs."""
    if case["cell"] == "lstm":
        dx, dh0, dc0, grads = ref.lstm_backward(dhs, dfinals[0], dfinals[1], cache)
        return dict(grads, x=dx, h0=dh0, c0=dc0)
    fn = ref.rnn_backward if case["cell"] == "rnn" else ref.gru_backward
    dx, dh0, grads = fn(dhs, dfinals[0], cache)
    return dict(grads, x=dx, h0=dh0)


def random_cotangents(case, rng, dtype=np.float64):
    """R for hs and one R per final state (h_n, and c_n for LSTM)."""
    n_finals = 2 if case["cell"] == "lstm" else 1
    return (rng.standard_normal((T, B, H)).astype(dtype),
            tuple(rng.standard_normal((B, H)).astype(dtype) for _ in range(n_finals)))


# ---------------------------------------------------------------------------
# finite differences
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("lengths", [None, RAGGED], ids=["full", "ragged"])
@pytest.mark.parametrize("name", list(CASES))
def test_gradients_match_finite_differences(name, lengths):
    case = CASES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    a = make_inputs(case, rng)
    R, Rf = random_cotangents(case, rng)

    def loss():
        hs, finals, _ = forward(case, a, lengths)
        return np.sum(hs * R) + sum(np.sum(f * r) for f, r in zip(finals, Rf))

    _, _, cache = forward(case, a, lengths)
    grads = backward(case, R, Rf, cache)
    assert set(grads) == set(a), f"gradient keys {sorted(grads)} != input keys {sorted(a)}"

    for key, numeric in numeric_gradients(loss, a, FD_EPS).items():
        assert grads[key].dtype == np.float64
        assert_close(f"{name} d{key}", grads[key], numeric, FD_RTOL, FD_ATOL)


# ---------------------------------------------------------------------------
# semantics of lengths, dtypes, None gradients, validation
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_ragged_equals_each_row_run_alone(name):
    """Row b of a ragged batch == that row run alone on its first lengths[b] steps."""
    case = CASES[name]
    a = make_inputs(case, np.random.default_rng(1))
    hs, finals, _ = forward(case, a, RAGGED)
    for b, L in enumerate(RAGGED):
        row = {k: (v[:L, b:b + 1] if k == "x" else v[b:b + 1] if k in ("h0", "c0") else v)
               for k, v in a.items()}
        hs_b, finals_b, _ = forward(case, row)
        assert_close(f"{name} hs row {b}", hs[:L, b:b + 1], hs_b, 1e-13, 1e-14)
        assert np.all(hs[L:, b] == 0), "padded outputs must be exactly zero"
        for k, (f, f_b) in enumerate(zip(finals, finals_b)):
            assert_close(f"{name} final[{k}] row {b}", f[b:b + 1], f_b, 1e-13, 1e-14)
        if L == 0:
            assert np.array_equal(finals[0][b], a["h0"][b])


@pytest.mark.parametrize("name", list(CASES))
def test_float32_stays_float32_and_matches_float64(name):
    case = CASES[name]
    a64 = make_inputs(case, np.random.default_rng(2))
    a32 = {k: v.astype(np.float32) for k, v in a64.items()}
    R, Rf = random_cotangents(case, np.random.default_rng(3))
    hs64, fin64, c64 = forward(case, a64, RAGGED)
    hs32, fin32, c32 = forward(case, a32, RAGGED)
    g64 = backward(case, R, Rf, c64)
    g32 = backward(case, R.astype(np.float32), tuple(r.astype(np.float32) for r in Rf), c32)
    for label, x32, x64 in ([("hs", hs32, hs64)] + [(f"final{k}", u, v) for k, (u, v)
                                                     in enumerate(zip(fin32, fin64))]
                            + [(f"d{k}", g32[k], g64[k]) for k in g64]):
        assert x32.dtype == np.float32, f"{name} {label} is {x32.dtype}"
        assert_close(f"{name} {label} f32 vs f64", x32, x64, F32_RTOL, F32_ATOL)


@pytest.mark.parametrize("name", list(CASES))
def test_none_upstream_means_zeros_and_results_are_fresh(name):
    case = CASES[name]
    a = make_inputs(case, np.random.default_rng(4))
    R, Rf = random_cotangents(case, np.random.default_rng(5))
    _, _, cache = forward(case, a, RAGGED)
    zeros = tuple(np.zeros_like(r) for r in Rf)
    g_none = backward(case, R, (None,) * len(Rf), cache)
    g_zero = backward(case, R, zeros, cache)
    for k in g_zero:
        assert_close(f"{name} d{k} None vs zeros (finals)", g_none[k], g_zero[k], 0, 0)
    g_none = backward(case, None, Rf, cache)
    g_zero = backward(case, np.zeros_like(R), Rf, cache)
    for k in g_zero:
        assert_close(f"{name} d{k} None vs zeros (dhs)", g_none[k], g_zero[k], 0, 0)
    # gradients are fresh arrays: scribbling on them does not change a second call
    g1 = backward(case, R, Rf, cache)
    g2 = backward(case, R, Rf, cache)
    for k in g1:
        g1[k][...] = np.nan
        assert not np.isnan(g2[k]).any()
    assert not any(np.shares_memory(g2[k], r) for k in g2 for r in (R,) + Rf)


def test_zero_length_sequence():
    case = CASES["lstm"]
    a = make_inputs(case, np.random.default_rng(6), t=0)
    hs, (h_n, c_n), cache = forward(case, a)
    assert hs.shape == (0, B, H)
    assert np.array_equal(h_n, a["h0"]) and not np.shares_memory(h_n, a["h0"])
    dh_n = np.ones((B, H))
    g = backward(case, None, (dh_n, None), cache)
    assert np.array_equal(g["h0"], dh_n) and not np.shares_memory(g["h0"], dh_n)
    assert g["x"].shape == (0, B, I) and np.all(g["W_ih"] == 0)


def test_zero_peepholes_equal_plain_lstm():
    a = make_inputs(CASES["lstm"], np.random.default_rng(7))
    hs, fin, _ = forward(CASES["lstm"], a, RAGGED)
    a0 = dict(a, p_i=np.zeros(H), p_f=np.zeros(H), p_o=np.zeros(H))
    hs0, fin0, _ = forward(CASES["lstm_peep_all"], a0, RAGGED)
    assert_close("hs", hs0, hs, 0, 0)
    for u, v in zip(fin0, fin):
        assert_close("final", u, v, 0, 0)


def _valid_rnn_args(rng=np.random.default_rng(8)):
    a = make_inputs(CASES["rnn_tanh"], rng)
    return [a[k] for k in ("x", "h0", "W_ih", "W_hh", "b_ih", "b_hh")]


@pytest.mark.parametrize("position,bad,match", [
    (0, np.zeros((B, I)), "x must have shape"),
    (0, np.zeros((T, B, I + 1)), "W_ih must have shape"),
    (1, np.zeros((B + 1, H)), "h0 must have shape"),
    (2, np.zeros((H, I + 1)), "W_ih must have shape"),
    (3, np.zeros((H, H + 1)), "W_hh must have shape"),
    (3, np.zeros((H,)), "W_hh must have shape"),
    (4, np.zeros((H + 1,)), "b_ih must have shape"),
    (5, np.zeros((2 * H,)), "b_hh must have shape"),
    (2, np.zeros((H, I), np.float32), "dtype"),
    (0, np.zeros((T, B, I), np.int64), "float32 or float64"),
])
def test_rnn_validation(position, bad, match):
    args = _valid_rnn_args()
    args[position] = bad
    with pytest.raises(ValueError, match=match):
        ref.rnn_forward(*args)


@pytest.mark.parametrize("lengths,match", [
    (np.array([1, 2]), "shape"),
    (np.array([[1, 2, 3]]), "shape"),
    (np.array([1.0, 2.0, 3.0]), "integer"),
    (np.array([1, -1, 2]), r"\[0, T"),
    (np.array([1, T + 1, 2]), r"\[0, T"),
])
def test_lengths_validation(lengths, match):
    with pytest.raises(ValueError, match=match):
        ref.rnn_forward(*_valid_rnn_args(), lengths=lengths)


def test_other_validation():
    with pytest.raises(ValueError, match="nonlinearity"):
        ref.rnn_forward(*_valid_rnn_args(), nonlinearity="sigmoid")
    a = make_inputs(CASES["lstm_coupled"], np.random.default_rng(9))
    args = [a[k] for k in ("x", "h0", "c0", "W_ih", "W_hh", "b_ih", "b_hh")]
    with pytest.raises(ValueError, match="p_f"):
        ref.lstm_forward(*args, p_f=np.zeros(H), coupled=True)
    with pytest.raises(ValueError, match="p_o must have shape"):
        ref.lstm_forward(*args, p_o=np.zeros(H + 1), coupled=True)
    with pytest.raises(ValueError, match="c0 must have shape"):
        ref.lstm_forward(*args[:2], np.zeros((B, H + 1)), *args[3:], coupled=True)
    with pytest.raises(ValueError, match="W_hh must have shape"):  # 3 blocks given, 4 expected
        ref.lstm_forward(*args)
    g = make_inputs(CASES["gru_reset_after"], np.random.default_rng(10))
    with pytest.raises(ValueError, match="W_hh must have shape"):
        ref.gru_forward(g["x"], g["h0"], g["W_ih"], g["W_hh"][:2 * H], g["b_ih"], g["b_hh"])


# ---------------------------------------------------------------------------
# PyTorch cross-check (float64)
# ---------------------------------------------------------------------------
TORCH_CASES = ["rnn_tanh", "rnn_relu", "lstm", "gru_reset_after"]


@pytest.mark.parametrize("lengths", [None, RAGGED_NONZERO], ids=["full", "ragged"])
@pytest.mark.parametrize("name", TORCH_CASES)
def test_matches_pytorch(name, lengths):
    case = CASES[name]
    rng = np.random.default_rng(11)
    a = make_inputs(case, rng)
    R, Rf = random_cotangents(case, rng)
    out, finals_t, expected = torch_forward_backward(case, a, R, Rf, lengths, np.float64)

    hs, finals, cache = forward(case, a, lengths)
    grads = backward(case, R, Rf, cache)
    tol = dict(rtol=TORCH_RTOL, atol=TORCH_ATOL)
    assert_close(f"{name} hs", hs, out, **tol)
    for k, (f, ft) in enumerate(zip(finals, finals_t)):
        assert_close(f"{name} final[{k}]", f, ft, **tol)
    for k, g in expected.items():
        assert_close(f"{name} d{k}", grads[k], g, **tol)


# ---------------------------------------------------------------------------
# ONNX Runtime cross-check (float32, forward only)
# ---------------------------------------------------------------------------
def _compare_onnx(label, hs, finals, Y, finals_onnx, lengths):
    """Y is (T, 1, B, H); final states (1, B, H).

    ONNX Runtime returns Y_h = Y_c = 0 for a row of length 0 (the reference, like the
    project, returns h0 / c0), so final states are compared on rows of length > 0 only.
    """
    tol = dict(rtol=ORT_RTOL, atol=ORT_ATOL)
    assert_close(f"{label} Y", Y[:, 0], hs, **tol)
    rows = np.arange(B) if lengths is None else np.flatnonzero(lengths > 0)
    for k, (f, fo) in enumerate(zip(finals, finals_onnx)):
        assert_close(f"{label} final[{k}]", fo[0][rows], f[rows], **tol)


LSTM_ONNX_CASES = ["lstm", "lstm_peep_all", "lstm_p_o", "lstm_coupled", "lstm_coupled_p_i_p_o"]


@pytest.mark.parametrize("lengths", [None, RAGGED], ids=["full", "ragged"])
@pytest.mark.parametrize("name", LSTM_ONNX_CASES)
def test_lstm_matches_onnxruntime(name, lengths):
    case = CASES[name]
    coupled = case.get("coupled", False)
    rng = np.random.default_rng(12)
    a = make_inputs(case, rng, dtype=np.float32)
    hs, finals, _ = forward(case, a, lengths)

    # reference order (i, f, g, o) or (i, g, o) -> ONNX order (i, o, f, c)
    src = ("i", "g", "o") if coupled else ("i", "f", "g", "o")
    # for input_forget=1 ONNX still stores an f block: fill it with junk that must not matter
    junk = {"f": rng.standard_normal((H, I)).astype(np.float32)}
    junk_h = {"f": rng.standard_normal((H, H)).astype(np.float32)}
    junk_b = {"f": rng.standard_normal(H).astype(np.float32)}
    W = _reorder(a["W_ih"], src, "iofg", junk if coupled else None)[None]
    R = _reorder(a["W_hh"], src, "iofg", junk_h if coupled else None)[None]
    Bias = np.concatenate([_reorder(a["b_ih"], src, "iofg", junk_b if coupled else None),
                           _reorder(a["b_hh"], src, "iofg", junk_b if coupled else None)])[None]
    peeps = case.get("peepholes", ())
    P = None
    if peeps:
        # ONNX P is [p_i, p_o, p_f]; a junk p_f in coupled mode must be ignored too
        zero_or = {p: a.get(p, np.zeros(H, np.float32)) for p in ("p_i", "p_o", "p_f")}
        if coupled:
            zero_or["p_f"] = rng.standard_normal(H).astype(np.float32)
        P = np.concatenate([zero_or["p_i"], zero_or["p_o"], zero_or["p_f"]])[None]
    seq = None if lengths is None else lengths.astype(np.int32)

    def run(W_, R_, B_, P_):
        return _run_onnx("LSTM", [("X", a["x"]), ("W", W_), ("R", R_), ("B", B_),
                                  ("sequence_lens", seq), ("initial_h", a["h0"][None]),
                                  ("initial_c", a["c0"][None]), ("P", P_)],
                         dict(hidden_size=H, input_forget=int(coupled)), ["Y", "Y_h", "Y_c"])

    Y, Y_h, Y_c = run(W, R, Bias, P)
    _compare_onnx(name, hs, finals, Y, (Y_h, Y_c), lengths)

    if coupled:  # different junk in the f block (and p_f) gives bit-identical results
        W2, R2, B2 = W.copy(), R.copy(), Bias.copy()
        W2[0, 2 * H:3 * H] += 1.0
        R2[0, 2 * H:3 * H] -= 1.0
        B2[0, 2 * H:3 * H] += 5.0
        B2[0, 6 * H:7 * H] -= 5.0
        P2 = None if P is None else P.copy()
        if P2 is not None:
            P2[0, 2 * H:] += 3.0
        for o1, o2 in zip(run(W2, R2, B2, P2), (Y, Y_h, Y_c)):
            assert np.array_equal(o1, o2), "onnxruntime input_forget=1 must ignore the f block"


@pytest.mark.parametrize("lengths", [None, RAGGED], ids=["full", "ragged"])
@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_matches_onnxruntime(reset_after, lengths):
    case = CASES["gru_reset_after" if reset_after else "gru_reset_before"]
    a = make_inputs(case, np.random.default_rng(13), dtype=np.float32)
    hs, finals, _ = forward(case, a, lengths)
    # reference order (r, z, n) -> ONNX order (z, r, h)
    W = _reorder(a["W_ih"], "rzn", "zrn")[None]
    R = _reorder(a["W_hh"], "rzn", "zrn")[None]
    Bias = np.concatenate([_reorder(a["b_ih"], "rzn", "zrn"), _reorder(a["b_hh"], "rzn", "zrn")])[None]
    seq = None if lengths is None else lengths.astype(np.int32)
    Y, Y_h = _run_onnx("GRU", [("X", a["x"]), ("W", W), ("R", R), ("B", Bias),
                               ("sequence_lens", seq), ("initial_h", a["h0"][None])],
                       dict(hidden_size=H, linear_before_reset=int(reset_after)), ["Y", "Y_h"])
    _compare_onnx(f"gru reset_after={reset_after}", hs, finals, Y, (Y_h,), lengths)
