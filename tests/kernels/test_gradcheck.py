"""Central finite-difference gradient checks of the compiled kernels (float64).

For every cell and variant, with and without ragged lengths, on 1 and 2 threads (H = 10,
so the kernels split each step's units over 2 threads as [0, 8) and [8, 10)):
loss = sum(hs * R) + sum(h_n * Rh) (+ sum(c_n * Rc)) with random R, and every element of
every parameter, of x, h0 and c0 is perturbed by +-eps (Karpathy's checkBatchGradient).
"""
import numpy as np
import pytest

from fastrnn import functional as F
from _helpers import case_names
from _helpers import (CASES, assert_close, backward, forward, make_cotangents, make_inputs,
                      numeric_gradients)

# Central differences in float64: truncation error ~ eps^2 |L'''| and rounding error
# ~ 1e-16 |L| / eps (|L| ~ 10). Measured over every case below, as max over elements of
# |analytic - numeric| / (1e-9 + 1e-7 |numeric|): 1.36 with eps = 1e-6 (rounding-bound),
# 0.46 with eps = 3e-6, 0.15 with eps = 1e-5 (max abs difference 1.4e-9 on gradients up
# to ~7). So eps = 1e-5 and (rtol, atol) = (1e-7, 1e-9): about 6x margin.
FD_EPS = 1e-5
FD_RTOL, FD_ATOL = 1e-7, 1e-9

T, B, I, H = 4, 3, 3, 10
RAGGED = np.array([T, 0, 2])     # full length, zero length, partial


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("lengths", [None, RAGGED], ids=["full", "ragged"])
@pytest.mark.parametrize("name", case_names("rnn"))
def test_rnn_kernel_gradients_match_finite_differences(name, lengths, n_threads):
    """RNN, every variant in _helpers.CASES: kernel
    gradients == central finite differences (float64)."""
    _kernel_gradients_match_finite_differences(name, lengths, n_threads)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("lengths", [None, RAGGED], ids=["full", "ragged"])
@pytest.mark.parametrize("name", case_names("lstm"))
def test_lstm_kernel_gradients_match_finite_differences(name, lengths, n_threads):
    """LSTM, every variant in _helpers.CASES: kernel
    gradients == central finite differences (float64)."""
    _kernel_gradients_match_finite_differences(name, lengths, n_threads)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("lengths", [None, RAGGED], ids=["full", "ragged"])
@pytest.mark.parametrize("name", case_names("gru"))
def test_gru_kernel_gradients_match_finite_differences(name, lengths, n_threads):
    """GRU, every variant in _helpers.CASES: kernel
    gradients == central finite differences (float64)."""
    _kernel_gradients_match_finite_differences(name, lengths, n_threads)


def _kernel_gradients_match_finite_differences(name, lengths, n_threads):
    case = CASES[name]
    rng = np.random.default_rng(sum(map(ord, name)) + n_threads)
    a = make_inputs(case, rng, T, B, I, H, np.float64)
    R, Rf = make_cotangents(case, rng, T, B, H, np.float64)

    def loss():
        hs, finals, _ = forward(F, case, a, lengths, n_threads=n_threads)
        return np.sum(hs * R) + sum(np.sum(f * r) for f, r in zip(finals, Rf))

    _, _, cache = forward(F, case, a, lengths, n_threads=n_threads)
    grads = backward(F, case, R, Rf, cache)
    assert set(grads) == set(a), f"gradient keys {sorted(grads)} != input keys {sorted(a)}"

    for key, numeric in numeric_gradients(loss, a, FD_EPS).items():
        assert grads[key].dtype == np.float64
        assert_close(f"{name} lengths={lengths} n_threads={n_threads} d{key} vs finite differences",
                     grads[key], numeric, FD_RTOL, FD_ATOL)
