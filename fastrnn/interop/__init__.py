"""Crossing between fastrnn and PyTorch, Keras and ONNX, each crossing checked.

The weight conventions of the frameworks disagree (gate orders, transposed kernels, one or
two biases, two GRU formulas); each importer and exporter here maps them explicitly and,
unless ``check=False``, runs both sides on a random input and raises
:class:`ParityError` when the largest absolute difference exceeds the tolerance.

Nothing here imports PyTorch, ONNX or Keras until a function that needs it is called: the
core package stays at numpy, scipy and threadpoolctl.
"""
from .parity import ParityError, check_parity, default_tolerance

__all__ = ["ParityError", "check_parity", "default_tolerance"]
