"""The compiled kernels (fastrnn.functional) against the numpy reference (fastrnn.reference).

Every cell and variant, float32 and float64, forward (hs, h_n, c_n) and backward (dx, dh0,
dc0 and every parameter gradient), over a fixed list of shapes (T, B, I, H = 1; odd sizes;
B = 1 with H >= 16; H >= 9 so the unit split over 2 threads is used) and a seeded random
sweep, each with and without ragged lengths. Then the API's contracts: grads= accumulates,
None upstream == zeros, inputs are never modified, memory layout does not change a bit,
dtypes are kept, empty T / B, and validation errors that say what was expected.
"""
import zlib

import numpy as np
import pytest

from fastrnn import functional as F
from fastrnn import reference as R
from _helpers import case_names
from _helpers import (CASES, DTYPES, assert_close_scaled, assert_identical, backward, forward,
                      has_cell_state, make_cotangents, make_inputs)

# ---------------------------------------------------------------------------------------
# Tolerances, kernel vs reference in the same dtype: (rtol, atol), where atol is relative to
# the array's largest magnitude (see _helpers.assert_close_scaled: gradients are sums over
# T*B terms, so their error is absolute at the scale of the largest element).
# Measured with the init of _helpers.make_inputs over these shapes and a larger
# T=50, B=8, I=16, H=64, worst element over all cases:
#   float64: forward max abs diff 2.2e-16, gradients 3.5e-14 (|dW| up to ~60): 8% of the
#            budget below (BLAS kernels differ by CPU, which changes summation order).
#   float32: forward 1.8e-7 (6% of the budget), gradients 2.3e-6 on |dW_hh| ~ 10 (18%).
TOL = {np.float32: (1e-5, 2e-6), np.float64: (1e-13, 1e-14)}

# (T, B, I, H): T=1, B=1, I=1, H=1; odd sizes; B=1 with H >= 16; H a multiple of 8 and not.
FIXED_SHAPES = [
    (1, 1, 1, 1),
    (1, 4, 3, 9),
    (7, 3, 5, 13),
    (3, 2, 9, 33),
    (6, 1, 4, 20),
    (5, 4, 1, 16),
    (4, 5, 6, 8),
]
_rng = np.random.default_rng(20240611)
RANDOM_SHAPES = [tuple(int(v) for v in (_rng.integers(1, 10), _rng.integers(1, 7),
                                         _rng.integers(1, 12), _rng.integers(1, 41)))
                 for _ in range(8)]
SHAPES = FIXED_SHAPES + RANDOM_SHAPES


def ragged_lengths(T, B, rng):
    """A full length, a 0 length and random ones in between; with B = 1 a partial length
    (0 when T = 1, the only non-full one)."""
    if B == 1:
        return np.array([T - 1])
    lengths = rng.integers(0, T + 1, B)
    lengths[0], lengths[-1] = T, 0
    return lengths


def _shape_id(s):
    return "T{}B{}I{}H{}".format(*s)


def _pairs(hs, finals, grads):
    out = [("hs", hs)] + [(("h_n", "c_n")[k], f) for k, f in enumerate(finals)]
    return out + [(f"d{k}", g) for k, g in sorted(grads.items())]


# ---------------------------------------------------------------------------------------
# kernel == reference
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "ragged"])
@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", case_names("rnn"))
def test_rnn_kernel_matches_reference(name, dtype, shape, ragged):
    """RNN, every variant in _helpers.CASES: forward
    values and backward gradients == the numpy reference."""
    _kernel_matches_reference(name, dtype, shape, ragged)


@pytest.mark.parametrize("ragged", [False, True], ids=["full", "ragged"])
@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", case_names("lstm"))
def test_lstm_kernel_matches_reference(name, dtype, shape, ragged):
    """LSTM, every variant in _helpers.CASES: forward
    values and backward gradients == the numpy reference."""
    _kernel_matches_reference(name, dtype, shape, ragged)


@pytest.mark.parametrize("ragged", [False, True], ids=["full", "ragged"])
@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", case_names("gru"))
def test_gru_kernel_matches_reference(name, dtype, shape, ragged):
    """GRU, every variant in _helpers.CASES: forward
    values and backward gradients == the numpy reference."""
    _kernel_matches_reference(name, dtype, shape, ragged)


def _kernel_matches_reference(name, dtype, shape, ragged):
    case = CASES[name]
    T, B, I, H = shape
    rng = np.random.default_rng(zlib.crc32(f"{name}{shape}".encode()))
    a = make_inputs(case, rng, T, B, I, H, dtype)
    dhs, dfinals = make_cotangents(case, rng, T, B, H, dtype)
    lengths = ragged_lengths(T, B, rng) if ragged else None
    rtol, atol = TOL[dtype]

    hs_r, fin_r, cache_r = forward(R, case, a, lengths)
    g_r = backward(R, case, dhs, dfinals, cache_r)
    expected = dict(_pairs(hs_r, fin_r, g_r))

    for n_threads in (1, 2):
        hs, fin, cache = forward(F, case, a, lengths, n_threads=n_threads)
        g = backward(F, case, dhs, dfinals, cache)
        assert set(g) == set(g_r), f"gradient keys {sorted(g)} != reference {sorted(g_r)}"
        for label, got in _pairs(hs, fin, g):
            assert got.dtype == dtype, f"{name} {label}: dtype {got.dtype}, not {np.dtype(dtype)}"
            assert_close_scaled(f"{name} {np.dtype(dtype).name} {_shape_id(shape)} "
                                f"lengths={lengths} n_threads={n_threads} {label}",
                                got, expected[label], rtol, atol)
        if lengths is not None:
            for b, L in enumerate(lengths):
                assert np.all(hs[L:, b] == 0), f"{name}: padded outputs of row {b} must be 0"
                if L == 0:  # nothing ran: the initial state comes back bit for bit
                    assert_identical(f"{name} h_n of a length-0 row", fin[0][b], a["h0"][b])
                    if has_cell_state(case):
                        assert_identical(f"{name} c_n of a length-0 row", fin[1][b], a["c0"][b])


# ---------------------------------------------------------------------------------------
# API contracts (one mid-sized threaded shape, ragged, both dtypes)
# ---------------------------------------------------------------------------------------
T0, B0, I0, H0 = 5, 3, 4, 11
LENGTHS0 = np.array([T0, 0, 3])


def _setup(name, dtype, seed=0):
    case = CASES[name]
    rng = np.random.default_rng(seed)
    a = make_inputs(case, rng, T0, B0, I0, H0, dtype)
    dhs, dfinals = make_cotangents(case, rng, T0, B0, H0, dtype)
    return case, a, dhs, dfinals


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", list(CASES))
def test_grads_accumulate(name, dtype):
    """backward(grads=g) adds into g in place: twice into one dict gives 2x, onto a nonzero
    start gives start + fresh; dx / dh0 / dc0 are not accumulated; with retain_cache=True
    the cache stays reusable."""
    case, a, dhs, dfinals = _setup(name, dtype)
    rtol, atol = TOL[dtype]
    _, _, cache = forward(F, case, a, LENGTHS0, n_threads=1)
    fresh = backward(F, case, dhs, dfinals, cache, retain_cache=True)
    param_keys = [k for k in fresh if k not in ("x", "h0", "c0")]

    acc = {k: np.zeros_like(fresh[k]) for k in param_keys}
    arrays = {k: acc[k] for k in param_keys}
    for _ in range(2):
        out = backward(F, case, dhs, dfinals, cache, grads=acc, retain_cache=True)
        for k in ("x", "h0", "c0"):
            if k in fresh:
                assert_identical(f"{name} d{k} with grads=", out[k], fresh[k])
    for k in param_keys:
        assert acc[k] is arrays[k], f"grads[{k!r}] was replaced, not accumulated into"
        assert_close_scaled(f"{name} 2 x d{k}", acc[k], 2 * fresh[k], rtol, atol)

    start = {k: np.random.default_rng(1).standard_normal(fresh[k].shape).astype(dtype)
             for k in param_keys}
    acc = {k: v.copy() for k, v in start.items()}
    backward(F, case, dhs, dfinals, cache, grads=acc, retain_cache=True)
    for k in param_keys:
        assert_close_scaled(f"{name} start + d{k}", acc[k], start[k] + fresh[k], rtol, atol)

    again = backward(F, case, dhs, dfinals, cache)
    for k in fresh:
        assert_identical(f"{name} d{k}, second backward on one cache", again[k], fresh[k])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", list(CASES))
def test_none_upstream_equals_zeros(name, dtype):
    case, a, dhs, dfinals = _setup(name, dtype)
    _, _, cache = forward(F, case, a, LENGTHS0)
    zeros = tuple(np.zeros_like(d) for d in dfinals)
    for label, (d1, f1), (d2, f2) in [
            ("dhs", (None, dfinals), (np.zeros_like(dhs), dfinals)),
            ("finals", (dhs, (None,) * len(dfinals)), (dhs, zeros)),
            ("all", (None, (None,) * len(dfinals)), (np.zeros_like(dhs), zeros))]:
        g_none = backward(F, case, d1, f1, cache, retain_cache=True)
        g_zero = backward(F, case, d2, f2, cache, retain_cache=True)
        for k in g_zero:   # exact (rtol = atol = 0; only the sign of a zero may differ)
            assert_close_scaled(f"{name} d{k}, None vs zeros ({label})", g_none[k], g_zero[k], 0, 0)
    g = backward(F, case, None, (None,) * len(dfinals), cache)
    for k, v in g.items():
        assert not v.any(), f"{name} d{k} must be zero without upstream gradient"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", list(CASES))
def test_inputs_are_not_modified(name, dtype):
    case, a, dhs, dfinals = _setup(name, dtype)
    lengths = LENGTHS0.copy()
    before = ({k: v.copy() for k, v in a.items()}, dhs.copy(), [d.copy() for d in dfinals],
              lengths.copy())
    hs, finals, cache = forward(F, case, a, lengths, n_threads=2)
    backward(F, case, dhs, dfinals, cache, retain_cache=True)
    params = {k: np.zeros_like(v) for k, v in a.items() if k not in ("x", "h0", "c0")}
    grads = backward(F, case, dhs, dfinals, cache, grads=params)
    for k, v in before[0].items():
        assert_identical(f"{name} input {k} after forward+backward", a[k], v)
    assert_identical(f"{name} dhs", dhs, before[1])
    for k, (d, d0) in enumerate(zip(dfinals, before[2])):
        assert_identical(f"{name} upstream final[{k}]", d, d0)
    assert_identical(f"{name} lengths", lengths, before[3])
    # outputs and gradients are fresh memory, never the caller's arrays
    outs = [hs, *finals, *(grads[k] for k in ("x", "h0", "c0") if k in grads)]
    ins = [*a.values(), dhs, *dfinals]
    assert not any(np.shares_memory(o, i) for o in outs for i in ins)


def _strided(v):
    """Same values, not contiguous: every other element of a buffer twice as long."""
    fill = np.nan if v.dtype.kind == "f" else -1   # junk between the elements
    buf = np.full(v.shape[:-1] + (2 * v.shape[-1],), fill, v.dtype)
    view = buf[..., ::2]
    view[...] = v
    return view


LAYOUTS = {
    "strided": _strided,
    "fortran": np.asfortranarray,
    "reversed": lambda v: np.ascontiguousarray(v[::-1])[::-1],   # negative strides
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", list(CASES))
def test_layout_does_not_change_a_bit(name, dtype, layout):
    """Non-contiguous / Fortran-order / negatively strided inputs (and upstream gradients,
    and int32 or strided lengths) give bit-identical results to their C-contiguous copies."""
    case, a, dhs, dfinals = _setup(name, dtype)
    make = LAYOUTS[layout]
    a2 = {k: make(v) for k, v in a.items()}
    assert not a2["x"].flags.c_contiguous
    lengths2 = make(LENGTHS0.astype(np.int32))
    hs, fin, cache = forward(F, case, a, LENGTHS0, n_threads=1)
    hs2, fin2, cache2 = forward(F, case, a2, lengths2, n_threads=1)
    g = backward(F, case, dhs, dfinals, cache)
    g2 = backward(F, case, make(dhs), tuple(make(d) for d in dfinals), cache2)
    for (label, x1), (_, x2) in zip(_pairs(hs, fin, g), _pairs(hs2, fin2, g2)):
        assert_identical(f"{name} {layout} {label}", x2, x1)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", list(CASES))
def test_empty_time_or_batch(name, dtype):
    """T = 0: states come back unchanged (as copies), dh0 = dh_n, zero parameter grads.
    B = 0: correctly shaped empty results. Both equal the reference."""
    case = CASES[name]
    for T, B, lengths in [(0, 3, None), (0, 3, np.zeros(3, np.int64)), (4, 0, None),
                          (4, 0, np.zeros(0, np.int64)), (0, 0, None)]:
        rng = np.random.default_rng(3)
        a = make_inputs(case, rng, T, B, I0, H0, dtype)
        dhs, dfinals = make_cotangents(case, rng, T, B, H0, dtype)
        hs, fin, cache = forward(F, case, a, lengths, n_threads=2)
        g = backward(F, case, dhs, dfinals, cache)
        hs_r, fin_r, cache_r = forward(R, case, a, lengths)
        g_r = backward(R, case, dhs, dfinals, cache_r)
        label = f"{name} T={T} B={B} lengths={lengths}"
        assert hs.shape == (T, B, H0) and hs.dtype == dtype, label
        assert g["x"].shape == (T, B, I0), label
        for (lab, got), (_, exp) in zip(_pairs(hs, fin, g), _pairs(hs_r, fin_r, g_r)):
            assert got.dtype == dtype, f"{label} {lab}"
            assert_identical(f"{label} {lab}", got, exp.astype(dtype))
        if T == 0:
            states = [("h0", 0), ("c0", 1)] if has_cell_state(case) else [("h0", 0)]
            for key, k in states:
                assert_identical(f"{label} final {key}", fin[k], a[key])
                assert not np.shares_memory(fin[k], a[key]), "a final state must be a copy"
                assert_identical(f"{label} d{key}", g[key], dfinals[k])
                assert not np.shares_memory(g[key], dfinals[k])
            for k in g:
                if k not in ("x", "h0", "c0"):
                    assert not g[k].any(), f"{label} d{k} must be zero"


# ---------------------------------------------------------------------------------------
# validation: the right exception, naming what was expected
# ---------------------------------------------------------------------------------------
def _args(name, dtype=np.float64, T=T0, B=B0, I=I0, H=H0):
    case = CASES[name]
    return case, make_inputs(case, np.random.default_rng(5), T, B, I, H, dtype)


def _call(case, a, **kw):
    return forward(F, case, a, **kw)


@pytest.mark.parametrize("name", ["rnn_tanh", "lstm_peep_all", "gru_reset_before"])
@pytest.mark.parametrize("key,bad,exc,match", [
    ("x", lambda a: a["x"].astype(np.float32), TypeError, r"x has dtype float32, expected float64"),
    ("h0", lambda a: a["h0"].astype(np.float32), TypeError,
     r"h0 has dtype float32, expected float64"),
    ("W_hh", lambda a: a["W_hh"].astype(np.float32), TypeError,
     r"W_hh has dtype float32, expected float64"),
    ("b_hh", lambda a: a["b_hh"].astype(np.float32), TypeError,
     r"b_hh has dtype float32, expected float64"),
    ("W_ih", lambda a: a["W_ih"].astype(np.float16), TypeError, r"float32 or float64"),
    ("W_ih", lambda a: a["W_ih"].astype(np.int64), TypeError, r"float32 or float64"),
    ("x", lambda a: a["x"][0], ValueError, r"x must be 3-D \(T, B, I\)"),
    ("x", lambda a: np.concatenate([a["x"], a["x"][..., :1]], axis=2), ValueError,
     r"W_ih has shape \(\d+, 4\), expected \(\d+, 5\)"),
    ("W_ih", lambda a: a["W_ih"][:, :-1], ValueError, r"W_ih has shape .*expected"),
    ("W_hh", lambda a: a["W_hh"][:, :-1], ValueError, r"W_hh must have shape \(\d\*H, H\)"),
    ("W_hh", lambda a: a["W_hh"][:-1], ValueError, r"W_hh must have shape \(\d\*H, H\)"),
    ("h0", lambda a: a["h0"][:-1], ValueError, r"h0 has shape \(2, 11\), expected \(3, 11\)"),
    ("b_ih", lambda a: a["b_ih"][:-1], ValueError, r"b_ih has shape .*expected \(\d+,\)"),
    ("b_hh", lambda a: a["b_hh"][None], ValueError, r"b_hh has shape .*expected \(\d+,\)"),
])
def test_bad_arrays_raise(name, key, bad, exc, match):
    case, a = _args(name)
    a[key] = bad(a)
    with pytest.raises(exc, match=match):
        _call(case, a)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_mixed_dtype_the_other_way_raises(dtype):
    other = np.float64 if dtype == np.float32 else np.float32
    case, a = _args("lstm", dtype)
    a["x"] = a["x"].astype(other)
    with pytest.raises(TypeError, match=f"x has dtype {np.dtype(other).name}, "
                                        f"expected {np.dtype(dtype).name}"):
        _call(case, a)


def test_lstm_state_and_peephole_validation():
    case, a = _args("lstm_peep_all")
    for key, bad, match in [("c0", a["c0"][:, :-1], r"c0 has shape \(3, 10\), expected \(3, 11\)"),
                            ("p_i", a["p_i"][:-1], r"p_i has shape \(10,\), expected \(11,\)"),
                            ("p_o", a["p_o"][None], r"p_o has shape \(1, 11\), expected \(11,\)")]:
        with pytest.raises(ValueError, match=match):
            _call(case, dict(a, **{key: bad}))
    with pytest.raises(TypeError, match=r"p_f has dtype float32, expected float64"):
        _call(case, dict(a, p_f=a["p_f"].astype(np.float32)))
    with pytest.raises(TypeError, match=r"c0 has dtype float32, expected float64"):
        _call(case, dict(a, c0=a["c0"].astype(np.float32)))


@pytest.mark.parametrize("lengths,exc,match", [
    (np.array([1, -1, 2]), ValueError, r"lengths must lie in \[0, T=5\]"),
    (np.array([1, T0 + 1, 2]), ValueError, r"lengths must lie in \[0, T=5\]"),
    (np.array([1, 2]), ValueError, r"lengths must have shape \(3,\)"),
    (np.array([1, 2, 3, 4]), ValueError, r"lengths must have shape \(3,\)"),
    (np.array([[1, 2, 3]]), ValueError, r"lengths must have shape \(3,\)"),
    (np.array([1.0, 2.0, 3.0]), TypeError, r"lengths must be integers"),
    (np.array([True, False, True]), TypeError, r"lengths must be integers"),
])
@pytest.mark.parametrize("name", ["rnn_relu", "lstm", "gru_reset_after"])
def test_bad_lengths_raise(name, lengths, exc, match):
    case, a = _args(name)
    with pytest.raises(exc, match=match):
        _call(case, a, lengths=lengths)


def test_bad_options_raise():
    case, a = _args("rnn_tanh")
    with pytest.raises(ValueError, match=r"nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"):
        F.rnn_forward(a["x"], a["h0"], a["W_ih"], a["W_hh"], a["b_ih"], a["b_hh"],
                      nonlinearity="sigmoid")
    case, a = _args("lstm_coupled")
    with pytest.raises(ValueError, match=r"coupled LSTM .*p_f must be None"):
        F.lstm_forward(a["x"], a["h0"], a["c0"], a["W_ih"], a["W_hh"], a["b_ih"], a["b_hh"],
                       p_f=np.zeros(H0), coupled=True)
    # a plain LSTM given 3 gate blocks, a coupled one given 4
    with pytest.raises(ValueError, match=r"lstm: W_hh must have shape \(4\*H, H\)"):
        F.lstm_forward(a["x"], a["h0"], a["c0"], a["W_ih"], a["W_hh"], a["b_ih"], a["b_hh"])
    case, a = _args("lstm")
    with pytest.raises(ValueError, match=r"coupled\): W_hh must have shape \(3\*H, H\)"):
        F.lstm_forward(a["x"], a["h0"], a["c0"], a["W_ih"], a["W_hh"], a["b_ih"], a["b_hh"],
                       coupled=True)
    for n_threads, exc, match in [(0, ValueError, "n_threads=0"),
                                  (1.5, TypeError, "int or None"),
                                  ("2", TypeError, "int or None"),
                                  (True, TypeError, "int or None")]:
        with pytest.raises(exc, match=match):
            _call(case, a, n_threads=n_threads)


@pytest.mark.parametrize("name", ["rnn_tanh", "lstm_p_o", "gru_reset_after"])
def test_bad_backward_arguments_raise(name):
    case, a = _args(name)
    rng = np.random.default_rng(6)
    dhs, dfinals = make_cotangents(case, rng, T0, B0, H0)
    _, _, cache = forward(F, case, a)
    with pytest.raises(ValueError, match=r"dhs has shape \(5, 3, 10\), expected \(5, 3, 11\)"):
        backward(F, case, dhs[..., :-1], dfinals, cache)
    with pytest.raises(ValueError, match=r"dh_n has shape \(2, 11\), expected \(3, 11\)"):
        backward(F, case, dhs, (dfinals[0][:-1],) + dfinals[1:], cache)
    if has_cell_state(case):
        with pytest.raises(ValueError, match=r"dc_n has shape \(3, 12\), expected \(3, 11\)"):
            backward(F, case, dhs, (dfinals[0], np.zeros((B0, H0 + 1))), cache)
    with pytest.raises(TypeError, match=r"dhs has dtype float32, expected float64"):
        backward(F, case, dhs.astype(np.float32), dfinals, cache)
    other = "rnn_tanh" if case["cell"] != "rnn" else "gru_reset_after"
    _, _, other_cache = forward(F, CASES[other], _args(other)[1])
    wanted = f"cache returned by fastrnn.functional.{case['cell']}_forward"
    with pytest.raises(TypeError, match=wanted):
        backward(F, case, dhs, dfinals, other_cache)
    fresh = backward(F, case, dhs, dfinals, cache, retain_cache=True)
    good = {k: np.zeros_like(v) for k, v in fresh.items() if k not in ("x", "h0", "c0")}
    for k in good:
        for bad, why in [(good[k].astype(np.float32), "dtype"), (good[k][..., :-1], "shape"),
                         (np.asfortranarray(good[k]) if good[k].ndim == 2 else None, "order")]:
            if bad is None or (why == "order" and bad.flags.c_contiguous):
                continue
            with pytest.raises(ValueError,
                               match=rf"grads\['{k}'\] must be a writeable C-contiguous"):
                backward(F, case, dhs, dfinals, cache, grads=dict(good, **{k: bad}))
        with pytest.raises(ValueError, match=rf"grads\['{k}'\] must be"):
            backward(F, case, dhs, dfinals, cache, grads={j: v for j, v in good.items() if j != k})


# ---------------------------------------------------------------------------------------
# LSTM / GRU backward reuses the cached gate buffer: one backward per cache by default
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", list(CASES))
def test_backward_consumes_cache_unless_retained(name, dtype):
    case, a, dhs, dfinals = _setup(name, dtype)
    hs, fin, cache = forward(F, case, a, LENGTHS0, n_threads=2)
    hs_before, fin_before = hs.copy(), [f.copy() for f in fin]
    kept = [backward(F, case, dhs, dfinals, cache, retain_cache=True) for _ in range(2)]
    consumed = backward(F, case, dhs, dfinals, cache)      # the default: may reuse buffers
    for k in consumed:
        assert_identical(f"{name} d{k} retained, 2nd call", kept[1][k], kept[0][k])
        assert_identical(f"{name} d{k} consuming vs retained", consumed[k], kept[0][k])
    # forward outputs are not part of what backward may overwrite
    assert_identical(f"{name} hs after backward", hs, hs_before)
    if case["cell"] == "rnn":   # nothing to consume: backward may run again
        again = backward(F, case, dhs, dfinals, cache)
        for k in again:
            assert_identical(f"{name} d{k} rnn 2nd backward", again[k], consumed[k])
    else:
        with pytest.raises(RuntimeError, match=rf"{case['cell']}_backward already ran on this "
                                               r"cache.*retain_cache=True"):
            backward(F, case, dhs, dfinals, cache)


@pytest.mark.parametrize("name", ["lstm", "gru_reset_after"])
def test_failed_backward_leaves_cache_usable(name):
    case, a, dhs, dfinals = _setup(name, np.float64)
    _, _, cache = forward(F, case, a, LENGTHS0)
    with pytest.raises(ValueError, match="n_threads=0"):
        backward(F, case, dhs, dfinals, cache, n_threads=0)
    backward(F, case, dhs, dfinals, cache)   # a call that raised did not consume the cache


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", list(CASES))
def test_missing_initial_state_means_zeros(name, dtype):
    """h0 = None (and c0 = None) is the zero state, as in torch.nn.RNN without hx."""
    case, a, dhs, dfinals = _setup(name, dtype)
    zeros = dict(a, h0=np.zeros_like(a["h0"]))
    none = dict(a, h0=None)
    if has_cell_state(case):
        zeros["c0"], none["c0"] = np.zeros_like(a["c0"]), None
    hs, fin, cache = forward(F, case, zeros, LENGTHS0)
    hs2, fin2, cache2 = forward(F, case, none, LENGTHS0)
    g, g2 = backward(F, case, dhs, dfinals, cache), backward(F, case, dhs, dfinals, cache2)
    for (label, x1), (_, x2) in zip(_pairs(hs, fin, g), _pairs(hs2, fin2, g2)):
        assert_identical(f"{name} {label}, None vs zero initial state", x2, x1)
