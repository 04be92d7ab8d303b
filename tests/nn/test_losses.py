"""fastrnn.nn.losses: values and gradients against torch.nn.functional (cross_entropy,
binary_cross_entropy_with_logits, mse_loss) and autograd, float32 and float64, with masks
(torch sees the masked-selected elements), extreme logits, central finite differences in
float64, and every argument error. The torch comparisons skip when torch is missing.

Letters: T time steps, B batch, C classes / labels.
"""
import numpy as np
import pytest

from fastrnn.nn.losses import (mask_from_lengths, mean_squared_error, sigmoid_binary_cross_entropy,
                            softmax_cross_entropy)

# (rtol, atol) against torch. Our elementwise math is in the input dtype like torch's, but
# we sum the scalar loss in float64 and torch sums in the input dtype, so float32 losses
# differ by float32 rounding of the sum. Measured worst cases over the torch tests below:
# float64 loss 5e-16 relative, gradients 2.2e-16 absolute; float32 loss 1.6e-7 relative,
# gradients 1.2e-7 absolute / 1.5e-6 relative (extreme logits).
TOL = {np.float32: (1e-5, 1e-7), np.float64: (1e-12, 1e-15)}
DTYPES = [np.float32, np.float64]

T, B, C = 5, 4, 6
LENGTHS = np.array([5, 2, 0, 3])            # ragged, one empty row


def assert_close(name, actual, expected, rtol, atol):
    """llm.c-style: on failure print the first mismatching pairs and the max abs diff."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    bad = ~(np.abs(actual - expected) <= atol + rtol * np.abs(expected))
    if bad.any():
        idx = np.argwhere(bad)[:5] if actual.ndim else [()]
        pairs = "\n".join(f"  {tuple(int(k) for k in j)}: got {actual[tuple(j)]!r}, "
                          f"expected {expected[tuple(j)]!r}" for j in idx)
        pytest.fail(f"{name}: {int(bad.sum())} mismatches, max abs diff "
                    f"{np.max(np.abs(actual - expected)):.3e}\n{pairs}")


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def _masks(kind):
    """The mask of a case: None, per position (T, B) from lengths, or per element (T, B, C)."""
    if kind == "none":
        return None
    if kind == "position":
        return mask_from_lengths(LENGTHS, T)
    return np.random.default_rng(5).random((T, B, C)) < 0.6


def _torch_loss_and_grad(torch, fn, x, y, mask, dtype, **kw):
    """torch's loss over the masked-selected elements and its autograd gradient on x."""
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.tensor(y)
    if mask is None:
        loss = fn(xt, yt, **kw)
    else:
        m = torch.tensor(mask)
        loss = fn(xt[m], yt[m], **kw)
    loss.backward()
    return loss.item(), xt.grad.numpy()


# ---- mask_from_lengths ---------------------------------------------------------------------

def test_mask_from_lengths():
    m = mask_from_lengths(np.array([3, 0, 1]), 4)
    assert m.dtype == np.bool_ and m.shape == (4, 3)
    np.testing.assert_array_equal(m, [[1, 0, 1], [1, 0, 0], [1, 0, 0], [0, 0, 0]])
    assert mask_from_lengths(np.array([], np.int64), 2).shape == (2, 0)


@pytest.mark.parametrize("lengths, T, exc, match", [
    (np.array([1.0, 2.0]), 3, TypeError, "integers"),
    (np.array([[1, 2]]), 3, ValueError, r"shape \(B,\)"),
    (np.array([1, 4]), 3, ValueError, r"\[0, T=3\]"),
    (np.array([-1, 2]), 3, ValueError, r"\[0, T=3\]"),
    (np.array([1, 2]), -1, ValueError, "non-negative int"),
])
def test_mask_from_lengths_errors(lengths, T, exc, match):
    with pytest.raises(exc, match=match):
        mask_from_lengths(lengths, T)


# ---- softmax cross-entropy -----------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("mask_kind", ["none", "position"])
@pytest.mark.parametrize("shape", [(T, B, C), (B, C)], ids=["TBC", "BC"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_cross_entropy_matches_torch(torch, dtype, shape, mask_kind, reduction):
    rng = np.random.default_rng(0)
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    y = rng.integers(0, C, shape[:-1])
    mask = _masks(mask_kind)
    if mask is not None and len(shape) == 2:
        mask = mask[0]
    loss, dx = softmax_cross_entropy(x, y, mask=mask, reduction=reduction)
    assert dx.dtype == dtype and dx.shape == x.shape

    def ce(a, b, reduction):
        return torch.nn.functional.cross_entropy(a.reshape(-1, C), b.reshape(-1),
                                                 reduction=reduction)
    want, dwant = _torch_loss_and_grad(torch, ce, x, y, mask, dtype, reduction=reduction)
    rtol, atol = TOL[dtype]
    assert_close("loss", loss, want, rtol, atol)
    assert_close("dlogits", dx, dwant, rtol, atol)
    if mask is not None:
        assert not dx[~mask].any(), "masked positions must get exactly zero gradient"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_cross_entropy_extreme_logits(torch, dtype):
    rng = np.random.default_rng(1)
    x = rng.choice([-1e4, 1e4, 0.0], size=(T, B, C)).astype(dtype)
    y = rng.integers(0, C, (T, B))
    loss, dx = softmax_cross_entropy(x, y)
    assert np.isfinite(loss) and np.isfinite(dx).all()
    ce = lambda a, b: torch.nn.functional.cross_entropy(a.reshape(-1, C), b.reshape(-1))
    want, dwant = _torch_loss_and_grad(torch, ce, x, y, None, dtype)
    rtol, atol = TOL[dtype]
    assert_close("loss", loss, want, rtol, atol)
    assert_close("dlogits", dx, dwant, rtol, atol)


def test_cross_entropy_ignores_padding_targets():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, B, C))
    mask = mask_from_lengths(LENGTHS, T)
    y = rng.integers(0, C, (T, B))
    y_padded = np.where(mask, y, -1)                 # padding holds an invalid class
    a = softmax_cross_entropy(x, y, mask)
    b = softmax_cross_entropy(x, y_padded, mask)
    assert a[0] == b[0] and np.array_equal(a[1], b[1])


def test_cross_entropy_unbatched_row():
    x = np.array([1.0, 2.0, 0.5])
    loss, dx = softmax_cross_entropy(x, np.array(1))
    p = np.exp(x) / np.exp(x).sum()
    assert_close("loss", loss, -np.log(p[1]), 1e-14, 0)
    assert_close("dlogits", dx, p - [0, 1, 0], 1e-14, 1e-16)


# ---- sigmoid binary cross-entropy and squared error -----------------------------------------

def _bce_targets(rng, shape, dtype):
    """Half hard 0/1 labels, half soft probabilities."""
    y = rng.random(shape)
    hard = rng.random(shape) < 0.5
    return np.where(hard, np.round(y), y).astype(dtype)


def _torch_reduced(torch, fn, reduction, mask, shape):
    """torch's function for our reduction, on the masked-selected elements."""
    if reduction != "sum_over_labels":
        return lambda a, b: fn(a, b, reduction=reduction)
    if mask is None:
        positions = int(np.prod(shape[:-1]))
    elif mask.ndim == len(shape) - 1:
        positions = int(mask.sum())
    else:
        positions = int(mask.any(axis=-1).sum())
    return lambda a, b: fn(a, b, reduction="sum") / positions


@pytest.mark.parametrize("reduction", ["mean", "sum", "sum_over_labels"])
@pytest.mark.parametrize("mask_kind", ["none", "position", "element"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_bce_matches_torch(torch, dtype, mask_kind, reduction):
    rng = np.random.default_rng(3)
    x = (3 * rng.standard_normal((T, B, C))).astype(dtype)
    y = _bce_targets(rng, x.shape, dtype)
    mask = _masks(mask_kind)
    loss, dx = sigmoid_binary_cross_entropy(x, y, mask=mask, reduction=reduction)
    assert dx.dtype == dtype and dx.shape == x.shape

    fn = _torch_reduced(torch, torch.nn.functional.binary_cross_entropy_with_logits,
                        reduction, mask, x.shape)
    want, dwant = _torch_loss_and_grad(torch, fn, x, y, mask, dtype)
    rtol, atol = TOL[dtype]
    assert_close("loss", loss, want, rtol, atol)
    assert_close("dlogits", dx, dwant, rtol, atol)


@pytest.mark.parametrize("reduction", ["mean", "sum", "sum_over_labels"])
@pytest.mark.parametrize("mask_kind", ["none", "position", "element"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_mse_matches_torch(torch, dtype, mask_kind, reduction):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T, B, C)).astype(dtype)
    y = rng.standard_normal((T, B, C)).astype(dtype)
    mask = _masks(mask_kind)
    loss, dx = mean_squared_error(x, y, mask=mask, reduction=reduction)
    assert dx.dtype == dtype and dx.shape == x.shape

    fn = _torch_reduced(torch, torch.nn.functional.mse_loss, reduction, mask, x.shape)
    want, dwant = _torch_loss_and_grad(torch, fn, x, y, mask, dtype)
    rtol, atol = TOL[dtype]
    assert_close("loss", loss, want, rtol, atol)
    assert_close("dpred", dx, dwant, rtol, atol)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_bce_extreme_logits(torch, dtype):
    rng = np.random.default_rng(5)
    x = rng.choice([-1e4, 1e4, 0.0], size=(T, B, C)).astype(dtype)
    y = _bce_targets(rng, x.shape, dtype)
    loss, dx = sigmoid_binary_cross_entropy(x, y, reduction="sum_over_labels")
    assert np.isfinite(loss) and np.isfinite(dx).all()
    fn = _torch_reduced(torch, torch.nn.functional.binary_cross_entropy_with_logits,
                        "sum_over_labels", None, x.shape)
    want, dwant = _torch_loss_and_grad(torch, fn, x, y, None, dtype)
    rtol, atol = TOL[dtype]
    assert_close("loss", loss, want, rtol, atol)
    assert_close("dlogits", dx, dwant, rtol, atol)


def test_elementwise_losses_ignore_padding_targets():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((T, B, C))
    y = _bce_targets(rng, x.shape, np.float64)
    mask = mask_from_lengths(LENGTHS, T)
    y_padded = np.where(mask[..., None], y, np.nan)  # padding holds garbage
    for fn in (sigmoid_binary_cross_entropy, mean_squared_error):
        a = fn(x, y, mask, "sum_over_labels")
        b = fn(x, y_padded, mask, "sum_over_labels")
        assert a[0] == b[0] and np.array_equal(a[1], b[1]), fn.__name__
        assert not b[1][~mask].any()


# ---- finite differences (float64) -------------------------------------------------------------

CASES = {
    "ce_mean": (softmax_cross_entropy, "classes", "position", "mean"),
    "ce_sum": (softmax_cross_entropy, "classes", "none", "sum"),
    "bce_mean": (sigmoid_binary_cross_entropy, "probs", "element", "mean"),
    "bce_sum_over_labels": (sigmoid_binary_cross_entropy, "probs", "position", "sum_over_labels"),
    "mse_mean": (mean_squared_error, "reals", "position", "mean"),
    "mse_sum_over_labels": (mean_squared_error, "reals", "element", "sum_over_labels"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_gradient_finite_differences(case):
    fn, kind, mask_kind, reduction = CASES[case]
    rng = np.random.default_rng(7)
    x = rng.standard_normal((T, B, C))
    y = {"classes": rng.integers(0, C, (T, B)), "probs": rng.random((T, B, C)),
         "reals": rng.standard_normal((T, B, C))}[kind]
    mask = _masks(mask_kind)
    _, dx = fn(x, y, mask, reduction)
    h = 1e-6
    num = np.empty_like(x)
    for i in np.ndindex(x.shape):                     # central differences, every element
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        num[i] = (fn(xp, y, mask, reduction)[0] - fn(xm, y, mask, reduction)[0]) / (2 * h)
    assert_close("dlogits vs finite differences", dx, num, 1e-6, 1e-9)


# ---- errors --------------------------------------------------------------------------------

X = np.zeros((T, B, C))
Y_CLS = np.zeros((T, B), np.int64)
Y_PROB = np.full((T, B, C), 0.5)
NO_MASK = np.zeros((T, B), bool)
NAN_X = X.copy()
NAN_X[1, 2, 3] = np.nan
INF_Y = Y_PROB.copy()
INF_Y[0, 0, 0] = np.inf


@pytest.mark.parametrize("call, exc, match", [
    # softmax cross-entropy
    (lambda: softmax_cross_entropy(X, np.zeros((T, C), np.int64)), ValueError,
     r"shape \(5, 6\), expected \(5, 4\)"),
    (lambda: softmax_cross_entropy(X, Y_CLS.astype(float)), TypeError, "integer class"),
    (lambda: softmax_cross_entropy(X, Y_CLS + C), ValueError, r"\[0, 6\)"),
    (lambda: softmax_cross_entropy(X, Y_CLS - 1), ValueError, r"\[0, 6\)"),
    (lambda: softmax_cross_entropy(NAN_X, Y_CLS), ValueError, "logits contains NaN"),
    (lambda: softmax_cross_entropy(X.astype(np.int64), Y_CLS), TypeError, "float32 or float64"),
    (lambda: softmax_cross_entropy(X.astype(np.float16), Y_CLS), TypeError, "float32 or float64"),
    (lambda: softmax_cross_entropy(X, Y_CLS, reduction="avg"), ValueError, "reduction"),
    (lambda: softmax_cross_entropy(X, Y_CLS, reduction="sum_over_labels"), ValueError,
     "reduction"),
    (lambda: softmax_cross_entropy(X, Y_CLS, mask=NO_MASK), ValueError, "no True entry"),
    (lambda: softmax_cross_entropy(X, Y_CLS, mask=NO_MASK.astype(int)), TypeError, "bool"),
    (lambda: softmax_cross_entropy(X, Y_CLS, mask=np.ones((B, T), bool)), ValueError,
     r"expected \(5, 4\)"),
    (lambda: softmax_cross_entropy(np.zeros((T, B, 0)), Y_CLS), ValueError, "C = 0"),
    (lambda: softmax_cross_entropy(np.float64(1.0), 0), ValueError, "at least one axis"),
    # sigmoid binary cross-entropy
    (lambda: sigmoid_binary_cross_entropy(X, Y_PROB[:, :, :2]), ValueError,
     r"expected \(5, 4, 6\)"),
    (lambda: sigmoid_binary_cross_entropy(X, Y_PROB + 1), ValueError, r"\[0, 1\]"),
    (lambda: sigmoid_binary_cross_entropy(X, -Y_PROB), ValueError, r"\[0, 1\]"),
    (lambda: sigmoid_binary_cross_entropy(X, INF_Y), ValueError, "targets contain NaN"),
    (lambda: sigmoid_binary_cross_entropy(NAN_X, Y_PROB), ValueError, "logits contains NaN"),
    (lambda: sigmoid_binary_cross_entropy(X.astype(int), Y_PROB), TypeError, "float32"),
    (lambda: sigmoid_binary_cross_entropy(X, Y_PROB.astype(str)), TypeError, "real numbers"),
    (lambda: sigmoid_binary_cross_entropy(X, Y_PROB, reduction="none"), ValueError,
     "reduction"),
    (lambda: sigmoid_binary_cross_entropy(X, Y_PROB, mask=NO_MASK), ValueError, "no True entry"),
    (lambda: sigmoid_binary_cross_entropy(X, Y_PROB, mask=NO_MASK, reduction="sum_over_labels"),
     ValueError, "no True entry"),
    (lambda: sigmoid_binary_cross_entropy(X, Y_PROB, mask=np.ones((T, C), bool)), ValueError,
     r"expected \(5, 4\) or \(5, 4, 6\)"),
    # squared error
    (lambda: mean_squared_error(X, Y_PROB[0]), ValueError, r"expected \(5, 4, 6\)"),
    (lambda: mean_squared_error(X, INF_Y), ValueError, "target contain NaN"),
    (lambda: mean_squared_error(NAN_X, Y_PROB), ValueError, "pred contains NaN"),
    (lambda: mean_squared_error(X.astype(np.int32), Y_PROB), TypeError, "float32"),
    (lambda: mean_squared_error(X, Y_PROB, reduction="max"), ValueError, "reduction"),
    (lambda: mean_squared_error(np.zeros((0, C)), np.zeros((0, C))), ValueError, "no True entry"),
])
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_sum_of_nothing_is_zero():
    loss, dx = softmax_cross_entropy(X, Y_CLS, mask=NO_MASK, reduction="sum")
    assert loss == 0.0 and not dx.any()
    loss, dx = mean_squared_error(X, Y_PROB, mask=NO_MASK, reduction="sum")
    assert loss == 0.0 and not dx.any()
