"""Every float32 code path runs and is right: AVX-512, AVX2/FMA and plain C.

The kernels choose their vector code at run time (include/fastrnn/cpu.h); FASTRNN_SIMD=0
forces the plain C paths and FASTRNN_SIMD=avx2 the AVX2 ones. The choice is made once per
process, so each path runs in a subprocess: the batch-1 matrix-vector product and the
packed recurrent product (gemm.h) against float64 numpy at awkward sizes, a 2-layer LSTM
and GRU stream against the numpy reference, and an LSTM's batched forward and backward
against the reference and the float64 layer."""
import os
import subprocess
import sys

import numpy as np
import pytest

from fastrnn.kernels import _blas

CHECK = r"""
import sys
import numpy as np
from fastrnn.kernels import _blas
from fastrnn import LSTM, GRU
import fastrnn.reference as R
print(_blas.vector_path())
rng = np.random.default_rng(0)
for m, k in [(1, 1), (7, 5), (8, 16), (9, 17), (33, 31), (64, 64), (130, 200)]:
    for beta in (0.0, 1.0, -0.5):
        A = rng.standard_normal((m, k)).astype(np.float32)
        x = rng.standard_normal(k).astype(np.float32)
        y = rng.standard_normal(m).astype(np.float32)
        want = A.astype(np.float64) @ x + beta * y.astype(np.float64)
        _blas._gemv_memview(_blas.NoTrans, 1.0, A, x, beta, y)
        scale = np.abs(A).astype(np.float64) @ np.abs(x) + abs(beta) * 10
        assert np.all(np.abs(y - want) <= 1e-6 * scale + 1e-7), (m, k, beta)
for cls in (LSTM, GRU):
    layer = cls(12, 20, num_layers=2, seed=0)
    xs = rng.standard_normal((5, 1, 12)).astype(np.float32)
    s = layer.stream()
    ys = np.stack([s.step(x) for x in xs])
    inp = xs
    for l in range(2):
        W_ih, W_hh, b_ih, b_hh = layer._kernel_params(f"_l{l}")
        z = np.zeros((1, 20), np.float32)
        if cls is LSTM:
            inp = R.lstm_forward(inp, z, z, W_ih, W_hh, b_ih, b_hh)[0]
        else:
            inp = R.gru_forward(inp, z, W_ih, W_hh, b_ih, b_hh)[0]
    assert np.abs(ys - inp).max() < 2e-5, (cls, np.abs(ys - inp).max())
# the packed recurrent product (gemm.h) at awkward sizes: row tails of the 6-row tile,
# column tails of the 16-column panels, a column range, both packings, accumulate or not
for m, n, k in [(1, 16, 1), (5, 37, 13), (6, 32, 64), (7, 100, 5), (13, 48, 64), (64, 96, 33)]:
    for transposed in (False, True):
        for accumulate in (False, True):
            for c0, c1 in ((0, n), (16, n), (16, min(n, 40))):
                A = rng.standard_normal((m, k)).astype(np.float32)
                W = rng.standard_normal((k, n) if transposed else (n, k)).astype(np.float32)
                C = rng.standard_normal((m, n)).astype(np.float32)
                C0 = C.copy()
                used = _blas._packed_product(A, W, C, transposed, accumulate, c0, c1)
                prod = A.astype(np.float64) @ (W if transposed else W.T).astype(np.float64)
                want = C0.astype(np.float64)
                want[:, c0:c1] = prod[:, c0:c1] + (C0[:, c0:c1] if accumulate else 0)
                scale = np.abs(A).astype(np.float64) @ np.abs(W if transposed else W.T) + 10
                assert np.all(np.abs(C - want) <= 1e-6 * scale), (m, n, k, transposed, c0, c1)
assert used == (_blas.vector_path() != "plain")
# LSTM and GRU (both reset forms) at batch > 1, their recurrent products packed where the
# path runs, forward and backward on 1 and 2 threads, against the float64 layer
for cls, kw in ((LSTM, {}), (GRU, {"reset_after": True}), (GRU, {"reset_after": False})):
    for nt in (1, 2):
        layer = cls(8, 32, seed=1, n_threads=nt, **kw)
        layer64 = cls(8, 32, seed=1, dtype=np.float64, **kw)
        xs = rng.standard_normal((6, 7, 8)).astype(np.float32)
        out, _, tape = layer.forward(xs)
        out64, _, tape64 = layer64.forward(xs.astype(np.float64))
        assert np.abs(out - out64).max() < 2e-5, (cls, np.abs(out - out64).max())
        dout = rng.standard_normal(out.shape).astype(np.float32)
        dx, _ = layer.backward(dout, None, tape)
        dx64, _ = layer64.backward(dout.astype(np.float64), None, tape64)
        assert np.abs(dx - dx64).max() < 1e-4 * max(1, np.abs(dx64).max()), (cls, nt)
        for name in layer.grads:
            g, g64 = layer.grads[name], layer64.grads[name]
            assert np.abs(g - g64).max() < 1e-4 * max(1, np.abs(g64).max()), (cls, nt, name)
from fastrnn import LSTMCell, GRUCell                 # the one-step path cells share (StepPlan)
for cls in (LSTMCell, GRUCell):
    cell = cls(12, 20, seed=0)
    x = rng.standard_normal((1, 12)).astype(np.float32)
    got = cell(x)
    got = got[0] if cls is LSTMCell else got
    W_ih, W_hh, b_ih, b_hh = cell._layer._kernel_params("_l0")
    z = np.zeros((1, 20), np.float32)
    want = (R.lstm_forward(x[None], z, z, W_ih, W_hh, b_ih, b_hh) if cls is LSTMCell else
            R.gru_forward(x[None], z, W_ih, W_hh, b_ih, b_hh))[0][0]
    assert np.abs(got - want).max() < 2e-5, (cls, np.abs(got - want).max())
print("ok")
"""


def _cpu_features():
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as f
    except ImportError:
        return {}
    return f


@pytest.mark.parametrize("simd,expected", [("0", "plain"), ("avx2", "avx2"), (None, None)])
def test_each_vector_path(simd, expected):
    feats = _cpu_features()
    if expected == "avx2" and not (feats.get("AVX2") and feats.get("FMA3")):
        pytest.skip("this CPU has no AVX2/FMA")
    env = dict(os.environ)
    env.pop("FASTRNN_SIMD", None)
    if simd is not None:
        env["FASTRNN_SIMD"] = simd
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    path, status = out.stdout.split()
    assert status == "ok"
    if expected is not None:
        assert path == expected
    else:   # the default picks the widest the CPU has
        widest = "avx512" if feats.get("AVX512F") and feats.get("AVX2") and feats.get("FMA3") \
            else "avx2" if feats.get("AVX2") and feats.get("FMA3") else "plain"
        assert path == widest


def test_gemv_rows_do_not_depend_on_the_split():
    """A row's value is summed in a fixed order wherever it sits, so threads splitting the
    rows of a step give bit-identical results (gemv.h)."""
    rng = np.random.default_rng(1)
    A = rng.standard_normal((77, 45)).astype(np.float32)
    x = rng.standard_normal(45).astype(np.float32)
    whole = np.zeros(77, np.float32)
    _blas._gemv_memview(_blas.NoTrans, 1.0, A, x, 0.0, whole)
    for lo, hi in [(0, 1), (3, 11), (8, 16), (16, 77), (70, 77), (13, 14)]:
        part = np.zeros(hi - lo, np.float32)
        _blas._gemv_memview(_blas.NoTrans, 1.0, np.ascontiguousarray(A[lo:hi]), x, 0.0, part)
        np.testing.assert_array_equal(part, whole[lo:hi])


def test_layer_parameters_start_on_a_cache_line():
    from fastrnn import LSTM
    for I, H in [(3, 5), (64, 64), (100, 37)]:
        layer = LSTM(I, H, num_layers=2)
        assert layer.flat.ctypes.data % 64 == 0
        assert layer.grad.ctypes.data % 64 == 0


def test_avx2_activations_meet_their_bounds_on_an_avx512_machine():
    """tests/kernels/test_activations.py asserts the measured error bounds of whichever path runs;
    where AVX-512 is the default, run it again on the AVX2 path."""
    if _blas.vector_path() != "avx512":
        pytest.skip("AVX-512 is not the default path here: test_activations.py covers it")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, FASTRNN_SIMD="avx2")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          os.path.join(root, "tests", "kernels", "test_activations.py")],
                         env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:]
