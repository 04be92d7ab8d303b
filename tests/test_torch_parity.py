"""The compiled kernels against PyTorch: nn.RNN (tanh, relu), nn.LSTM, nn.GRU with copied
weights, float32 and float64: outputs, final states and the gradients of x, h0, c0 and every
weight and bias for loss = sum(hs * R) + sum(h_n * Rh) (+ sum(c_n * Rc)); ragged lengths
through pack_padded_sequence(enforce_sorted=False) (torch rejects length 0).
Skipped when torch is not installed.
"""
import numpy as np
import pytest

from fastrnn import functional as F
from _helpers import (CASES, DTYPES, assert_close_scaled, backward, forward, has_cell_state,
                      make_cotangents, make_inputs)

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

# (rtol, atol), atol relative to the array's largest magnitude (_helpers.assert_close_scaled).
# Two independent implementations, so each side's rounding counts. Measured worst elements
# over all cases below: float64 max abs diff 3.6e-15 on values up to ~14 (2% of the
# budget); float32 2.9e-6 (6% of the budget).
TOL = {np.float32: (1e-5, 2e-6), np.float64: (1e-13, 1e-14)}

T, B, I, H = 6, 4, 5, 17          # H = 17: units split over 2 threads as [0, 16), [16, 17)
LENGTHS = np.array([T, 1, 4, 2])  # unsorted, full and partial, all >= 1 for torch

TORCH_CASES = ["rnn_tanh", "rnn_relu", "lstm", "gru_reset_after"]


def _module(case, dtype):
    if case["cell"] == "rnn":
        m = torch.nn.RNN(I, H, nonlinearity=case["nonlinearity"])
    elif case["cell"] == "lstm":
        m = torch.nn.LSTM(I, H)
    else:
        m = torch.nn.GRU(I, H)    # PyTorch's GRU is the reset-after form
    return m.to(torch.float64 if dtype == np.float64 else torch.float32)


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "ragged"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", TORCH_CASES)
def test_kernels_match_pytorch(name, dtype, lengths):
    case = CASES[name]
    rng = np.random.default_rng(11)
    a = make_inputs(case, rng, T, B, I, H, dtype)
    R, Rf = make_cotangents(case, rng, T, B, H, dtype)
    rtol, atol = TOL[dtype]

    module = _module(case, dtype)
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

    hs, finals, cache = forward(F, case, a, lengths, n_threads=2)
    grads = backward(F, case, R, Rf, cache)
    label = f"{name} {np.dtype(dtype).name} lengths={lengths}"
    assert_close_scaled(f"{label} hs", hs, out.detach().numpy(), rtol, atol)
    for k, (f, ft) in enumerate(zip(finals, finals_t)):
        assert_close_scaled(f"{label} final[{k}]", f, ft.detach().numpy(), rtol, atol)
    expected = {k: t.grad.numpy() for k, t in tin.items()}
    expected.update({k: p.grad.numpy() for k, p in params.items()})
    assert set(grads) == set(expected)
    for k, g in expected.items():
        assert grads[k].dtype == dtype
        assert_close_scaled(f"{label} d{k}", grads[k], g, rtol, atol)
