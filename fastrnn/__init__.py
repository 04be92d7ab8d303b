"""fastrnn: fast CPU recurrent neural networks.

Compiled kernels (Cython, scipy's BLAS, OpenMP) for vanilla RNN, LSTM (plain, peephole,
coupled input-forget gates) and GRU (both reset forms), forward and backward over whole
sequences; :mod:`fastrnn.reference` holds the numpy oracle of every cell.
"""
import sys as _sys


def _preload_cython_blas():
    """Load scipy.linalg.cython_blas without running scipy.linalg's __init__.

    The kernels only need the BLAS function pointers that module exports; importing it
    the ordinary way first imports the whole scipy.linalg package, which is ~0.15 s of
    `import fastrnn` (measured with -X importtime). Any surprise falls back to the
    ordinary import."""
    name = "scipy.linalg.cython_blas"
    if name in _sys.modules or "scipy.linalg" in _sys.modules:
        return
    import importlib.machinery
    import importlib.util
    import os
    try:
        spec = importlib.util.find_spec("scipy")
        folder = os.path.join(spec.submodule_search_locations[0], "linalg")
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "cython_blas" + suffix)
            if os.path.exists(path):
                break
        else:
            return
        loader = importlib.machinery.ExtensionFileLoader(name, path)
        mspec = importlib.util.spec_from_file_location(name, path, loader=loader)
        module = importlib.util.module_from_spec(mspec)
        _sys.modules[name] = module
        try:
            mspec.loader.exec_module(module)
        except BaseException:
            del _sys.modules[name]
            raise
    except Exception:
        return
    _sys.meta_path.insert(0, _LinkCythonBlas())


class _LinkCythonBlas:
    """One-shot import hook: when scipy.linalg is imported later, set its ``cython_blas``
    attribute to the module loaded above, as an ordinary import would have."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "scipy.linalg":
            return None
        import importlib.util
        _sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_link(module):
            exec_module(module)
            blas = _sys.modules.get("scipy.linalg.cython_blas")
            if blas is not None and not hasattr(module, "cython_blas"):
                module.cython_blas = blas

        spec.loader.exec_module = exec_and_link
        return spec


_preload_cython_blas()

from .kernels._openmp import (openmp_enabled, effective_n_threads, set_num_threads,  # noqa: E402
                      get_num_threads)
from . import functional, reference
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

# the paths these modules had before fastrnn.nn (``from fastrnn.optim import Adam``) still work
for _name in ("layers", "models", "losses", "optim"):
    _sys.modules[f"{__name__}.{_name}"] = _sys.modules[f"{__name__}.nn.{_name}"]
del _name

__version__ = "0.1.0"

# Crossing to and from other frameworks: fastrnn.interop loads each converter on first use,
# so `import fastrnn` neither imports PyTorch, ONNX or Keras nor pays for the converters.
from .interop import _LAZY as _INTEROP  # noqa: E402


def __getattr__(name):
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
           "save", "ModelFileError", "NotARegularFileError", "ParityError", "losses", "optim", "__version__",
           *_INTEROP]
