"""The row-major BLAS wrappers (fastrnn/kernels/_blas.pyx) through their test hooks, against numpy.

_gemm_memview(ta, tb, alpha, A, B, beta, C, n_threads, split_cols):
    C = alpha * op(A) @ op(B) + beta * C, op(X) = X or X.T; with n_threads > 1 C's rows
    (or, split_cols, its columns) are cut into chunks, one single-threaded BLAS call each.
_gemv_memview(ta, alpha, A, x, beta, y):  y = alpha * op(A) @ x + beta * y.
All four transpose combinations, float32 / float64, odd sizes (including chunks that come
out empty), alpha / beta other than 1 / 0. The hooks do no shape checks (raw BLAS): the
tests always pass consistent shapes.
"""
import numpy as np
import pytest

from fastrnn.kernels import _blas
from _helpers import DTYPES, assert_close_scaled

# (rtol, atol) against numpy in float64 on the same (float32-rounded) inputs, atol relative
# to the largest |expected|. A k-term dot product is off by ~sqrt(k) eps |a||b| per term,
# plus the beta * C term; measured worst over every case here: float32 6.8e-6 on values up
# to ~45 (1.5e-7 of the scale); float64 1.4e-14 (3e-16 of the scale). The budget below leaves
# about 6x (float32) and 14x (float64) margin.
TOL = {np.float32: (2e-6, 5e-7), np.float64: (2e-14, 3e-15)}

N, T_ = _blas.NoTrans, _blas.Trans
TRANS = {"NN": (N, N), "NT": (N, T_), "TN": (T_, N), "TT": (T_, T_)}

# (m, n, k): ones, a single row / column, odd sizes; n > 16 and m > 4 so that both the
# column split (16-aligned chunks) and the row split (4-aligned chunks) really use 2 threads
SIZES = [(1, 1, 1), (1, 33, 7), (5, 1, 3), (7, 5, 3), (13, 37, 9), (37, 45, 11), (64, 48, 17)]
ALPHA_BETA = [(1.0, 0.0), (0.7, -1.3), (-2.5, 1.0)]


def _operands(ta, tb, m, n, k, dtype, rng):
    A = rng.standard_normal((m, k) if ta == N else (k, m)).astype(dtype)
    Bm = rng.standard_normal((k, n) if tb == N else (n, k)).astype(dtype)
    C = rng.standard_normal((m, n)).astype(dtype)
    return A, Bm, C


def _op(X, t):
    return X if t == N else X.T


@pytest.mark.parametrize("split_cols", [False, True], ids=["rows", "cols"])
@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("mnk", SIZES, ids=lambda s: "m{}n{}k{}".format(*s))
@pytest.mark.parametrize("trans", list(TRANS))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_gemm_matches_numpy(dtype, trans, mnk, n_threads, split_cols):
    ta, tb = TRANS[trans]
    m, n, k = mnk
    rng = np.random.default_rng(m * 10000 + n * 100 + k)
    rtol, atol = TOL[dtype]
    for alpha, beta in ALPHA_BETA:
        A, Bm, C = _operands(ta, tb, m, n, k, dtype, rng)
        a_, b_ = np.float64(dtype(alpha)), np.float64(dtype(beta))   # taken in C's dtype
        expected = a_ * _op(A, ta).astype(np.float64) @ _op(Bm, tb).astype(np.float64) \
            + b_ * C.astype(np.float64)
        A0, B0 = A.copy(), Bm.copy()
        _blas._gemm_memview(ta, tb, alpha, A, Bm, beta, C, n_threads, split_cols)
        assert C.dtype == dtype
        assert_close_scaled(f"gemm {trans} {np.dtype(dtype).name} m,n,k={mnk} alpha={alpha} "
                            f"beta={beta} n_threads={n_threads} split_cols={split_cols}",
                            C, expected, rtol, atol)
        assert np.array_equal(A, A0) and np.array_equal(Bm, B0), "inputs must not change"


@pytest.mark.parametrize("n_threads,split_cols", [(1, False), (2, False), (2, True)])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_gemm_beta_zero_ignores_garbage_in_C(dtype, n_threads, split_cols):
    """beta = 0 overwrites C without reading it (BLAS semantics): the kernels rely on this
    when they GEMM into np.empty buffers, whose garbage may be NaN."""
    m, n, k = 37, 45, 11
    rng = np.random.default_rng(1)
    for trans, (ta, tb) in TRANS.items():
        A, Bm, _ = _operands(ta, tb, m, n, k, dtype, rng)
        C = np.full((m, n), np.nan, dtype)
        _blas._gemm_memview(ta, tb, 1.5, A, Bm, 0.0, C, n_threads, split_cols)
        expected = 1.5 * _op(A, ta).astype(np.float64) @ _op(Bm, tb).astype(np.float64)
        assert_close_scaled(f"gemm {trans} beta=0 over NaN", C, expected, *TOL[dtype])


@pytest.mark.parametrize("mn", [(1, 1), (1, 9), (9, 1), (7, 5), (33, 17), (64, 40)],
                         ids=lambda s: "m{}n{}".format(*s))
@pytest.mark.parametrize("ta", [N, T_], ids=["N", "T"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_gemv_matches_numpy(dtype, ta, mn):
    m, n = mn
    rng = np.random.default_rng(m * 100 + n)
    rtol, atol = TOL[dtype]
    for alpha, beta in ALPHA_BETA:
        A = rng.standard_normal((m, n)).astype(dtype)
        x = rng.standard_normal(n if ta == N else m).astype(dtype)
        y = rng.standard_normal(m if ta == N else n).astype(dtype)
        a_, b_ = np.float64(dtype(alpha)), np.float64(dtype(beta))
        expected = a_ * _op(A, ta).astype(np.float64) @ x.astype(np.float64) \
            + b_ * y.astype(np.float64)
        _blas._gemv_memview(ta, alpha, A, x, beta, y)
        assert y.dtype == dtype
        assert_close_scaled(f"gemv {'N' if ta == N else 'T'} {np.dtype(dtype).name} m,n={mn} "
                            f"alpha={alpha} beta={beta}", y, expected, rtol, atol)


def test_enum_values_and_dtype_mismatch():
    assert int(_blas.NoTrans) == ord("n") and int(_blas.Trans) == ord("t")
    A = np.ones((2, 3), np.float32)
    with pytest.raises((TypeError, ValueError), match="dtype mismatch|No matching signature"):
        _blas._gemm_memview(N, N, 1.0, A, np.ones((3, 2)), 0.0, np.zeros((2, 2)))
