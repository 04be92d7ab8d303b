"""The methods users call on fastrnn's objects whose work lives in a higher layer, bound here
once: ``model.fit`` (fastrnn.training), ``model.save`` and pickling (fastrnn.io),
``to_onnx``/``to_torch`` (fastrnn.interop). The classes in fastrnn.nn never import those
layers; ``import fastrnn`` runs this module, so the methods exist whichever way a class was
reached. Each is loaded on first use (``import fastrnn`` pays for neither the training loop
nor the converters) and shows its function's documentation and signature in ``help()``.
"""
import importlib
import types

from . import io
from .nn.layers import RecurrentCell, RecurrentLayer
from .nn.models import SequenceModel


class _Delegated:
    """A method whose function is ``name`` in module ``module``, imported when the attribute
    is first read: ``model.fit`` is ``fastrnn.training.fit`` bound to the model."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def function(self):
        return getattr(importlib.import_module(self.module), self.name)

    def __get__(self, obj, owner=None):
        function = self.function()
        return function if obj is None else types.MethodType(function, obj)


def _reduce(self):
    """Pickle (and copy.deepcopy) as the bytes of a model file: ``fastrnn.io.load_bytes``
    applied to ``fastrnn.io.model_bytes(self)``. Unpickling runs that validated loader and
    references no other fastrnn code, so layers and models travel safely to process pools.
    The copy comes back in eval mode, with n_threads and the dropout generator at their
    defaults (they belong to the process, not to the weights); a model keeps its
    vocabulary and text level."""
    return io.load_bytes, (io.model_bytes(self),)


def bind():
    for cls in (RecurrentLayer, RecurrentCell, SequenceModel):
        cls.__reduce__ = _reduce
        cls.to_torch = _Delegated("fastrnn.interop.torch_io", "to_torch")
    for cls in (RecurrentLayer, SequenceModel):
        cls.to_onnx = _Delegated("fastrnn.interop.onnx_export", "to_onnx")
    SequenceModel.save = _Delegated("fastrnn.io", "save")
    SequenceModel.fit = _Delegated("fastrnn.training", "fit")
