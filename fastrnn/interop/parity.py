"""The parity check every import and export runs: largest absolute difference between two
sides' outputs on the same input, against a tolerance."""
import numpy as np


class ParityError(AssertionError):
    """Two sides of a conversion disagree by more than the tolerance (an AssertionError):
    raised by ``to_onnx``, ``to_torch``, ``from_torch``, ``from_onnx`` and ``from_keras``
    when their parity check fails, with the largest absolute difference in the message.

        >>> import numpy as np
        >>> from fastrnn.interop.parity import check_parity
        >>> try:
        ...     check_parity("demo", np.zeros(3), np.full(3, 0.5), tol=1e-6)
        ... except AssertionError as exc:
        ...     print(type(exc).__name__, exc)
        ParityError demo: largest absolute difference 0.5 exceeds 1e-06
    """


def default_tolerance(dtype):
    """Largest absolute difference accepted between two implementations of one network:
    float32 sums of a few hundred products over a few dozen steps differ by ~1e-6 between
    libraries (different summation orders and activation code), so 1e-4 leaves room for
    long sequences without hiding a wrong gate order (which moves outputs by ~0.1)."""
    return 1e-4 if np.dtype(dtype) == np.float32 else 1e-9


def check_parity(what, ours, theirs, tol=None):
    """Largest |ours - theirs| over arrays of equal shape (or tuples of them, compared
    pairwise); raises ParityError naming ``what`` when it exceeds ``tol``. Returns it."""
    ours = ours if isinstance(ours, (tuple, list)) else (ours,)
    theirs = theirs if isinstance(theirs, (tuple, list)) else (theirs,)
    if len(ours) != len(theirs):
        raise ParityError(f"{what}: {len(ours)} outputs against {len(theirs)}")
    worst = 0.0
    for k, (a, b) in enumerate(zip(ours, theirs)):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise ParityError(f"{what}: output {k} has shape {a.shape} against {b.shape}")
        if a.size:
            if not (np.isfinite(a).all() and np.isfinite(b).all()):
                raise ParityError(f"{what}: output {k} is not finite")
            worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b))))
    if tol is None:
        tol = default_tolerance(np.result_type(*[np.asarray(a).dtype for a in ours]))
    if worst > tol:
        raise ParityError(f"{what}: largest absolute difference {worst:.3g} exceeds {tol:.3g}")
    return worst
