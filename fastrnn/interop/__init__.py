"""Crossing between fastrnn and PyTorch, Keras and ONNX, each crossing checked.

The weight conventions of the frameworks disagree (gate orders, transposed kernels, one or
two biases, two GRU formulas); each importer and exporter here maps them explicitly and,
unless ``check=False``, runs both sides on a random input and raises
:class:`ParityError` when the largest absolute difference exceeds the tolerance.

Nothing here imports PyTorch, ONNX or Keras until a function that needs it is called: the
core package stays at numpy, scipy and threadpoolctl.

    fastrnn.from_torch(module_or_state_dict)   layer.to_torch()        (torch_io)
    fastrnn.from_keras(layer_or_weights, config)                       (keras_io)
    fastrnn.from_onnx(path_or_model)            layer.to_onnx(path)     (onnx_import, onnx_export)
    fastrnn.OnnxImportError                     every refusal of from_onnx (a ValueError)
    fastrnn.compare(a, b, x)                    largest |a(x) - b(x)|   (compare)
    fastrnn convert IN OUT                      between .pt, .safetensors, .onnx, .fastrnn
"""
from .parity import ParityError, check_parity, default_tolerance

__all__ = ["ParityError", "check_parity", "default_tolerance", "from_torch", "to_torch",
           "from_keras", "from_onnx", "OnnxImportError", "to_onnx", "compare"]

CONVERTERS = {"from_torch": "torch_io", "to_torch": "torch_io", "from_onnx": "onnx_import",
         "OnnxImportError": "onnx_import", "to_onnx": "onnx_export", "from_keras": "keras_io",
         "compare": "compare"}


def __getattr__(name):
    module = CONVERTERS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastrnn.interop' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f".{module}", __name__), name)
