"""Losses for training recurrent networks: each returns ``(loss, dlogits)``.

Letters as everywhere in fastrnn: T time steps, B batch, C classes (softmax) or labels /
output features (sigmoid, squared error). Arrays are time-major, e.g. ``logits (T, B, C)``,
but any leading shape works: ``(B, C)``, ``(T, B, C)``, ``(N, C)``.

Every loss returns the loss as a Python float and ``dlogits``, the gradient of that float
with respect to ``logits`` (or ``pred``): a fresh array of the same shape and dtype,
ready to pass to a layer's ``backward``. Elementwise work stays in the input's dtype
(float32 or float64) and is written in forms that cannot overflow (log-sum-exp with the
maximum taken out; ``log1p(exp(-|x|))``), so logits of +-1e4 give finite losses and
gradients; only the final scalar sum is accumulated in float64.

Masks exclude padding. ``mask_from_lengths(lengths, T)`` gives the usual ``(T, B)`` one.
A position's mask entry is True where it counts; masked-out positions contribute nothing
to the loss and get an exact zero gradient, and their targets are never read, so padding
may hold any value (e.g. -1). Logits must be finite everywhere.

Reductions::

    "mean"             sum of valid terms / number of valid terms   (PyTorch's 'mean')
    "sum"              sum of valid terms
    "sum_over_labels"  (sigmoid and squared error only) sum of valid terms / number of
                       valid positions, i.e. the mean over positions of the per-position sum
                       over the C labels: the per-time-step NLL of polyphonic-music models
"""
import numpy as np

from .._spec import lengths_array

__all__ = ["mask_from_lengths", "softmax_cross_entropy", "sigmoid_binary_cross_entropy",
           "mean_squared_error"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def mask_from_lengths(lengths, T):
    """Padding mask for ragged sequences: ``mask[t, b] = t < lengths[b]``.

    lengths  (B,) integers in [0, T], of any integer type
    returns  (T, B) bool

    Example::

        >>> from fastrnn.nn import losses
        >>> losses.mask_from_lengths([3, 1], T=3).astype(int)     # (T, B)
        array([[1, 1],
               [1, 0],
               [1, 0]])
    """
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 0:
        raise ValueError(f"T must be a non-negative int, got {T!r}")
    if lengths is None:
        raise TypeError("lengths must be integers, got None")
    lengths = lengths_array(lengths, T)
    return np.arange(T)[:, None] < lengths[None, :]


# ---- argument checks ---------------------------------------------------------------------

def _float_input(name, x):
    """x as a float32/float64 ndarray (lists become float64), finite, with a last axis."""
    x = np.asarray(x)
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name} must be float32 or float64, got dtype {x.dtype}")
    if x.ndim < 1:
        raise ValueError(f"{name} must have at least one axis (the last one is C), "
                         f"got a scalar")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _real_targets(name, y, shape, dtype):
    """Real-valued targets of exactly ``shape``, cast to ``dtype``."""
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be real numbers, got dtype {y.dtype}")
    if y.shape != shape:
        raise ValueError(f"{name} have shape {y.shape}, expected {shape}")
    with np.errstate(over="ignore"):         # beyond float32's range: inf, refused below
        return y.astype(dtype, copy=False)


def _class_targets(targets, shape, C, valid):
    """Integer class indices of exactly ``shape``, in [0, C) where ``valid`` (bool, same
    shape, or None: everywhere); elsewhere they are never read."""
    y = np.asarray(targets)
    if y.dtype.kind not in "iu":
        raise TypeError(f"targets must be integer class indices, got dtype {y.dtype}")
    if y.shape != shape:
        raise ValueError(f"targets have shape {y.shape}, expected {shape} "
                         f"(logits' shape without the class axis)")
    yv = y if valid is None else y[valid]
    if yv.size and (yv.min() < 0 or yv.max() >= C):
        raise ValueError(f"targets must be class indices in [0, {C}), got values from "
                         f"{yv.min()} to {yv.max()}")
    return y


def _probability_targets(name, y, valid, unit):
    """Checks the values of real targets ``y`` where ``valid`` (bool, broadcastable to
    y): finite, and in [0, 1] when ``unit``."""
    yv = y[np.broadcast_to(valid, y.shape)] if valid is not None else y
    if not np.isfinite(yv).all():
        raise ValueError(f"{name} contain NaN or infinity")
    if unit and yv.size and (yv.min() < 0 or yv.max() > 1):
        raise ValueError(f"{name} must lie in [0, 1], got values from {yv.min()} to {yv.max()}")


def check_targets(loss, targets, shape, dtype, mask=None, name="targets"):
    """The targets ``loss`` would accept for outputs of ``shape`` (..., C), checked without
    computing it, e.g. over a whole data set before training: ``targets`` as the loss
    reads them (class indices; real values cast to ``dtype``). Raises the loss's own
    TypeError/ValueError.

    loss     "cross_entropy" (targets ``shape[:-1]``, integers in [0, C)),
             "binary_cross_entropy" (``shape``, real numbers in [0, 1]) or "mse"
             (``shape``, real numbers); values must be finite
    mask     bool ``shape[:-1]`` or None: where the targets are read (elsewhere anything goes)
    """
    if loss == "cross_entropy":
        return _class_targets(targets, tuple(shape[:-1]), shape[-1], mask)
    if loss not in ("binary_cross_entropy", "mse"):
        raise ValueError(f"loss must be 'cross_entropy', 'binary_cross_entropy' or 'mse', "
                         f"got {loss!r}")
    y = _real_targets(name, targets, tuple(shape), dtype)
    _probability_targets(name, y, None if mask is None else mask[..., None],
                         unit=loss == "binary_cross_entropy")
    return y


def _check_reduction(reduction, allowed):
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, allowed))}, "
                         f"got {reduction!r}")


def _bool_mask(mask, shapes):
    """mask as a bool array of one of ``shapes`` (None stays None)."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"mask must be a bool array, got dtype {mask.dtype}")
    if mask.shape not in shapes:
        want = " or ".join(str(s) for s in shapes)
        raise ValueError(f"mask has shape {mask.shape}, expected {want}")
    return mask


def _nothing_to_average(reduction):
    return ValueError(f"reduction={reduction!r} over no valid entries: the mask has no "
                      f"True entry (or the input is empty); use reduction='sum' or fix the mask")


# ---- softmax cross-entropy ---------------------------------------------------------------

def softmax_cross_entropy(logits, targets, mask=None, reduction="mean"):
    """Cross-entropy of integer class targets under a softmax over the last axis.

    Per position (one row of C logits x and its class y)::

        m       = max_c x[c]                        # taken out so exp never overflows
        lse     = m + log(sum_c exp(x[c] - m))      # log of the softmax normaliser
        nll     = lse - x[y]                        # -log softmax(x)[y]
        dnll/dx = softmax(x) - onehot(y)            # per position, before the reduction

    logits   (..., C) float32 or float64, e.g. (T, B, C) or (B, C)
    targets  (...) integers in [0, C), logits.shape[:-1]
    mask     (...) bool or None; False positions are skipped (their targets unread)
    reduction "mean" (over valid positions, like F.cross_entropy with ignore_index) or "sum"
    returns  loss (float), dlogits (..., C) in logits' dtype

    Example::

        >>> import numpy as np
        >>> from fastrnn.nn import losses
        >>> logits = np.zeros((2, 3, 4))                          # (T, B, C)
        >>> targets = np.array([[0, 1, 2], [3, 0, -1]])           # (T, B); -1 is padding
        >>> mask = targets >= 0
        >>> loss, dlogits = losses.softmax_cross_entropy(logits, targets, mask)
        >>> round(loss, 6) == round(float(np.log(4)), 6), dlogits.shape
        (True, (2, 3, 4))
        >>> float(abs(dlogits[1, 2]).max())                       # masked: exact zero
        0.0
    """
    x = _float_input("logits", logits)
    C = x.shape[-1]
    if C == 0:
        raise ValueError("logits have an empty class axis (C = 0)")
    mask = _bool_mask(mask, (x.shape[:-1],))
    y = _class_targets(targets, x.shape[:-1], C, mask)
    _check_reduction(reduction, ("mean", "sum"))
    valid = np.ones(y.shape, bool) if mask is None else mask           # (...)
    n = int(np.count_nonzero(valid))
    if reduction == "mean" and n == 0:
        raise _nothing_to_average(reduction)
    y = np.where(valid, y, 0)[..., None]                               # (..., 1)

    z = x - x.max(axis=-1, keepdims=True)       # shifted logits, max 0  (..., C)
    e = np.exp(z)                               # in (0, 1]              (..., C)
    s = e.sum(axis=-1, keepdims=True)           # normaliser, in [1, C]  (..., 1)
    nll = np.log(s) - np.take_along_axis(z, y, axis=-1)                # (..., 1)
    total = float(np.sum(nll[..., 0], where=valid, dtype=np.float64))

    scale = 1.0 / n if reduction == "mean" else 1.0
    dlogits = e / s                                                    # softmax (..., C)
    np.put_along_axis(dlogits, y, np.take_along_axis(dlogits, y, axis=-1) - 1, axis=-1)
    dlogits *= (valid.astype(x.dtype) * scale)[..., None]              # mask and 1/n
    return total * scale, dlogits


# ---- elementwise losses (sigmoid BCE, squared error) ---------------------------------------

def _elementwise_setup(xname, x, yname, y, mask, reduction, unit=False):
    """Shared checks of the elementwise losses (``unit``: targets must lie in [0, 1]).
    Returns x, y (zero where masked), the valid elements (x.shape bool) and the divisor
    that the reduction applies."""
    x = _float_input(xname, x)
    y = _real_targets(yname, y, x.shape, x.dtype)
    mask = _bool_mask(mask, (x.shape[:-1], x.shape))
    _check_reduction(reduction, ("mean", "sum", "sum_over_labels"))
    if mask is None:
        valid = np.ones(x.shape, bool)
    elif mask.shape == x.shape:
        valid = mask
    else:                                                  # per position: all its labels
        valid = np.broadcast_to(mask[..., None], x.shape)
    # the targets where read (zero elsewhere), checked as a whole: the check of the valid
    # values alone (a boolean-indexed copy) runs only to word the error
    y = y if mask is None else np.where(valid, y, 0)
    if not np.isfinite(y).all() or unit and y.size and (y.min() < 0 or y.max() > 1):
        _probability_targets(yname, y, valid, unit=unit)
    if reduction == "mean":
        count = int(np.count_nonzero(valid))               # valid elements
    elif reduction == "sum_over_labels":
        count = int(np.count_nonzero(valid.any(axis=-1)))  # positions with a valid label
    else:
        count = 1
    if count == 0:
        raise _nothing_to_average(reduction)
    return x, y, valid, count


def sigmoid_binary_cross_entropy(logits, targets, mask=None, reduction="mean"):
    """Binary cross-entropy of independent sigmoid outputs (multi-label, e.g. piano rolls).

    Per element (logit x, target probability y in [0, 1])::

        e       = exp(-|x|)                             # in (0, 1], never overflows
        loss    = max(x, 0) - x * y + log1p(e)          # = -y log s(x) - (1-y) log(1-s(x))
        s(x)    = 1 / (1 + e) if x >= 0 else e / (1 + e)  # sigmoid, stable both ways
        dloss/dx = s(x) - y                             # per element, before the reduction

    logits   (..., C) float32 or float64, e.g. (T, B, C)
    targets  (..., C) real numbers in [0, 1] (bool and int 0/1 accepted), cast to logits' dtype
    mask     (...) per position (all C labels of a False position are skipped), or (..., C)
             per element, bool, or None
    reduction "mean" (over valid elements, F.binary_cross_entropy_with_logits' 'mean'),
             "sum", or "sum_over_labels" (sum over C, mean over valid positions; with a
             per-element mask a position counts if any of its labels is valid)
    returns  loss (float), dlogits (..., C) in logits' dtype

    Example::

        >>> import numpy as np
        >>> from fastrnn.nn import losses
        >>> logits = np.array([[0.0, 1e4], [-1e4, 0.0]])          # (B, C); no overflow
        >>> loss, dlogits = losses.sigmoid_binary_cross_entropy(
        ...     logits, np.array([[1.0, 1.0], [0.0, 0.5]]), reduction="sum_over_labels")
        >>> round(loss, 6) == round(float(np.log(2)), 6), dlogits.tolist()
        (True, [[-0.25, 0.0], [0.0, 0.0]])
    """
    x, y, valid, count = _elementwise_setup("logits", logits, "targets", targets, mask,
                                            reduction, unit=True)

    # the equations above in three (..., C) buffers, each pass in place: every fresh array
    # of a batch (16 x 128 x 88 floats: 720 KB) is mapped and page-faulted anew, which cost
    # more than the arithmetic (4.9 ms a call with a fresh array per operation, 21% of the
    # JSB chorales recipe's fit)
    e = np.abs(x)
    np.negative(e, out=e)
    np.exp(e, out=e)                                    # e = exp(-|x|)
    loss = np.log1p(e)
    tmp = np.maximum(x, 0)
    loss += tmp
    loss -= np.multiply(x, y, out=tmp)                  # max(x, 0) - x y + log1p(e)
    total = float(np.sum(loss, where=valid, dtype=np.float64))

    scale = 1.0 / count
    dlogits = np.add(e, 1, out=loss)                    # 1 + e
    np.reciprocal(dlogits, out=dlogits)                 # 1 / (1 + e): sigmoid(x) for x >= 0
    np.minimum(x, 0, out=tmp)
    dlogits *= np.exp(tmp, out=tmp)                     # x < 0: e / (1 + e), as exp(x) = e
    dlogits -= y                                        # (a select by x < 0: 8x slower)
    np.multiply(dlogits, valid, out=dlogits)
    dlogits *= scale
    return total * scale, dlogits


def mean_squared_error(pred, target, mask=None, reduction="mean"):
    """Squared error between predictions and real targets.

    Per element::

        loss        = (pred - target)^2
        dloss/dpred = 2 (pred - target)                 # per element, before the reduction

    pred     (..., C) float32 or float64
    target   (..., C) real numbers, cast to pred's dtype
    mask     (...) per position or (..., C) per element, bool, or None
    reduction "mean" (over valid elements, F.mse_loss' 'mean'), "sum", or "sum_over_labels"
             (sum over C, mean over valid positions)
    returns  loss (float), dpred (..., C) in pred's dtype

    Example::

        >>> import numpy as np
        >>> from fastrnn.nn import losses
        >>> loss, dpred = losses.mean_squared_error(np.array([[1.0, 2.0]]), np.array([[0.0, 0.0]]))
        >>> loss, dpred.tolist()
        (2.5, [[1.0, 2.0]])
    """
    x, y, valid, count = _elementwise_setup("pred", pred, "target", target, mask, reduction)

    diff = x - y                                        # residual (..., C)
    sq = np.multiply(diff, diff)
    total = float(np.sum(sq, where=valid, dtype=np.float64))

    scale = 1.0 / count
    dpred = np.multiply(diff, valid, out=sq)            # in place, as the BCE's buffers
    dpred *= 2.0 * scale
    return total * scale, dpred
