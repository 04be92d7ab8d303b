"""fastrnn: fast CPU recurrent neural networks.

Compiled kernels (Cython, scipy's BLAS, a thread pool of their own) for vanilla RNN, LSTM (plain, peephole,
coupled input-forget gates) and GRU (both reset forms), forward and backward over whole
sequences; :mod:`fastrnn.reference` holds the numpy oracle of every cell.

Where to look: :class:`LSTM`, :class:`GRU`, :class:`RNN` and their cells (equations,
arguments, shapes, parameter layouts); :class:`SequenceModel` and ``help(model.fit)``;
:mod:`fastrnn.functional` (the kernels' Python API); :mod:`fastrnn.nn.optim`,
:mod:`fastrnn.nn.losses`; :func:`save`/:func:`load`.

    >>> import numpy as np
    >>> import fastrnn
    >>> lstm = fastrnn.LSTM(8, 16, batch_first=True, seed=0)
    >>> out, (h_n, c_n) = lstm(np.zeros((2, 10, 8), np.float32))
    >>> out.shape, h_n.shape
    ((2, 10, 16), (1, 2, 16))
"""
import sys as _sys

# The numpy oracle, the facts and the file format's parser need no compiled code: they import
# from an unbuilt checkout. Everything else waits for the kernels.
from . import reference  # noqa: E402

try:
    from .kernels import _openmp as _built  # noqa: E402
except ImportError as _exc:                  # an unbuilt checkout (or a broken build)
    _BUILD_ERROR = _exc
else:
    _BUILD_ERROR = None
    del _built
    from .kernels._openmp import (openmp_enabled, effective_n_threads,  # noqa: E402
                                  set_num_threads, get_num_threads)
    from . import functional
    from .functional import (rnn_forward, rnn_backward, lstm_forward, lstm_backward,
                             gru_forward, gru_backward)
    from .nn.layers import RNN, LSTM, GRU, RNNCell, LSTMCell, GRUCell
    from .kernels._stream import Stream
    from .nn.models import SequenceModel, cosine_similarity, pad_sequences
    from .io import load, save, ModelFileError, NotARegularFileError
    from .nn import losses, optim
    from .interop import ParityError
    from . import _conveniences

    _conveniences.bind()

    # the paths these modules had before fastrnn.nn (``from fastrnn.optim import Adam``)
    for _name in ("layers", "models", "losses", "optim"):
        _sys.modules[f"{__name__}.{_name}"] = _sys.modules[f"{__name__}.nn.{_name}"]
    del _name

from ._spec import VERSION as __version__  # noqa: E402

# Crossing to and from other frameworks: fastrnn.interop loads each converter on first use,
# so `import fastrnn` neither imports PyTorch, ONNX or Keras nor pays for the converters.
from .interop import CONVERTERS as _INTEROP  # noqa: E402


def __getattr__(name):
    if _BUILD_ERROR is not None and name in __all__:
        raise ImportError(f"fastrnn.{name} needs the compiled kernels, which are not built "
                          f"here ({_BUILD_ERROR}): pip install -e . (or python setup.py "
                          "build_ext --inplace); fastrnn.reference works without them")
    if name not in _INTEROP:
        raise AttributeError(f"module 'fastrnn' has no attribute {name!r}")
    # the converter's own module, not fastrnn.interop's attribute: importing the submodule
    # fastrnn.interop.compare rebinds the package's `compare` to that module
    import importlib
    value = getattr(importlib.import_module(f".interop.{_INTEROP[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_INTEROP))

__all__ = ["openmp_enabled", "effective_n_threads", "set_num_threads", "get_num_threads",
           "functional", "reference",
           "rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward",
           "gru_forward", "gru_backward", "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell",
           "GRUCell", "Stream", "SequenceModel", "cosine_similarity", "pad_sequences", "load",
           "save", "ModelFileError", "NotARegularFileError", "ParityError", "losses", "optim",
           "__version__",
           *_INTEROP]
