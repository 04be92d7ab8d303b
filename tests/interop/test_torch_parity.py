"""The compiled kernels against PyTorch: nn.RNN (tanh, relu), nn.LSTM, nn.GRU with copied
weights, float32 and float64: outputs, final states and the gradients of x, h0, c0 and every
weight and bias for loss = sum(hs * R) + sum(h_n * Rh) (+ sum(c_n * Rc)); ragged lengths
through pack_padded_sequence(enforce_sorted=False) (torch rejects length 0).
Skipped when torch is not installed.
"""
import numpy as np
import pytest

from fastrnn import functional as F
from _helpers import case_names
from _helpers import (CASES, DTYPES, assert_close_scaled, backward, forward, make_cotangents,
                      make_inputs, torch_forward_backward)

pytest.importorskip("torch")

# (rtol, atol), atol relative to the array's largest magnitude (_helpers.assert_close_scaled).
# Two independent implementations, so each side's rounding counts. Measured worst elements
# over all cases below: float64 max abs diff 3.6e-15 on values up to ~14 (2% of the
# budget); float32 2.9e-6 (6% of the budget).
TOL = {np.float32: (1e-5, 2e-6), np.float64: (1e-13, 1e-14)}

T, B, I, H = 6, 4, 5, 17          # H = 17: units split over 2 threads as [0, 16), [16, 17)
LENGTHS = np.array([T, 1, 4, 2])  # unsorted, full and partial, all >= 1 for torch

TORCH_CASES = ["rnn_tanh", "rnn_relu", "lstm", "gru_reset_after"]


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "ragged"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", case_names("rnn", TORCH_CASES))
def test_rnn_kernels_match_pytorch(name, dtype, lengths):
    """RNN, each variant PyTorch has (TORCH_CASES):
    outputs, final states and every gradient == PyTorch."""
    _kernels_match_pytorch(name, dtype, lengths)


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "ragged"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", case_names("lstm", TORCH_CASES))
def test_lstm_kernels_match_pytorch(name, dtype, lengths):
    """LSTM, each variant PyTorch has (TORCH_CASES):
    outputs, final states and every gradient == PyTorch."""
    _kernels_match_pytorch(name, dtype, lengths)


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "ragged"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", case_names("gru", TORCH_CASES))
def test_gru_kernels_match_pytorch(name, dtype, lengths):
    """GRU, each variant PyTorch has (TORCH_CASES):
    outputs, final states and every gradient == PyTorch."""
    _kernels_match_pytorch(name, dtype, lengths)


def _kernels_match_pytorch(name, dtype, lengths):
    case = CASES[name]
    rng = np.random.default_rng(11)
    a = make_inputs(case, rng, T, B, I, H, dtype)
    R, Rf = make_cotangents(case, rng, T, B, H, dtype)
    rtol, atol = TOL[dtype]

    out, finals_t, expected = torch_forward_backward(case, a, R, Rf, lengths, dtype)

    hs, finals, cache = forward(F, case, a, lengths, n_threads=2)
    grads = backward(F, case, R, Rf, cache)
    label = f"{name} {np.dtype(dtype).name} lengths={lengths}"
    assert_close_scaled(f"{label} hs", hs, out, rtol, atol)
    for k, (f, ft) in enumerate(zip(finals, finals_t)):
        assert_close_scaled(f"{label} final[{k}]", f, ft, rtol, atol)
    assert set(grads) == set(expected)
    for k, g in expected.items():
        assert grads[k].dtype == dtype
        assert_close_scaled(f"{label} d{k}", grads[k], g, rtol, atol)
