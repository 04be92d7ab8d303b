"""Facts the whole package shares, each written once, and the validators every public entry
point applies to its arguments. Imports nothing of fastrnn: every layer may read it.

Gate blocks: the weight matrices of a cell stack one (H, ·) block per gate along their rows,
in GATE_ORDER's order (PyTorch's: LSTM i, f, g, o; GRU r, z, n). A coupled LSTM has no
forget block (f = 1 - i). Model files do not record the order yet (it would change every
file's bytes: a new FORMAT_VERSION); they hold this one.
"""
import numpy as np

VERSION = "0.1.0"               # fastrnn.__version__ and the package metadata (pyproject)

CELLS = ("rnn", "lstm", "gru")
GATE_ORDER = {"rnn": ("h",), "lstm": ("i", "f", "g", "o"), "lstm_coupled": ("i", "g", "o"),
              "gru": ("r", "z", "n")}
NONLINEARITIES = {"tanh": 0, "relu": 1}        # RNN's; the value is the kernels' code


def gate_count(cell, coupled=False):
    """How many (H, ·) blocks a ``cell``'s weight matrices stack."""
    return len(GATE_ORDER["lstm_coupled" if cell == "lstm" and coupled else cell])


# task -> (what the output layer reads: every step or the last, the loss)
TASKS = {
    "next_token": ("per_step", "cross_entropy"),
    "per_step_classification": ("per_step", "cross_entropy"),
    "sequence_classification": ("last", "cross_entropy"),
    "multilabel": ("per_step", "binary_cross_entropy"),
    "regression": ("per_step", "mse"),
    "sequence_regression": ("last", "mse"),
}
# the optimizers of fastrnn.nn.optim that fit takes by name (lower case) and files record
OPTIMIZERS = ("SGD", "Adam", "AdamW", "Adagrad", "RMSprop")

INT32_MAX = 2**31 - 1           # the kernels index with 32-bit ints


def float_dtype(dtype):
    """numpy float32 or float64; TypeError for anything else."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def positive_int(name, v):
    """``v`` as a Python int >= 1 (numpy ints too; bools refused)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def flag(name, v):
    """A bool argument: True/False (numpy's too) or 0/1; a string such as "False" is
    refused rather than read as True."""
    if isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and v in (0, 1)):
        return bool(v)
    raise TypeError(f"{name} must be True or False, got {v!r}")


def lengths_array(lengths, T, B=None):
    """The caller's ``lengths`` as the int64 array ``(B,)`` every computation uses, or None.

    The one place that reads lengths given to fastrnn (the kernels, the layers, the model's
    entry points and ``fit``, the losses' masks): any integer type (int8 ... uint64, a list)
    means the same, because arithmetic on the values (``lengths - t0`` in truncated BPTT)
    happens only after this conversion; in an unsigned type it would wrap. ``B=None``
    takes any 1-D count. Raises TypeError for non-integers (floats, bools, strings) and
    ValueError for another shape or a value outside [0, T]."""
    if lengths is None:
        return None
    given = lengths
    lengths = np.asarray(lengths)
    if isinstance(given, (list, tuple)) and lengths.size == 0:
        lengths = lengths.astype(np.int64)      # [] has no dtype of its own: no lengths
    if lengths.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers, got dtype {lengths.dtype}")
    if lengths.ndim != 1 or (B is not None and lengths.shape != (B,)):
        want = "(B,)" if B is None else f"({B},)"
        raise ValueError(f"lengths must have shape {want} (one per batch row), got "
                         f"{lengths.shape}")
    if lengths.size and (lengths.min() < 0 or lengths.max() > T):
        raise ValueError(f"lengths must lie in [0, T={T}], got min {lengths.min()}, "
                         f"max {lengths.max()}")
    return np.ascontiguousarray(lengths, dtype=np.int64)
