"""`import fastrnn` loads scipy's BLAS module without scipy.linalg's package (for import
time); scipy must behave exactly as if it had been imported the ordinary way."""
import subprocess
import sys

import pytest

CHECK = """
import fastrnn, sys
assert 'scipy.linalg' not in sys.modules, 'scipy.linalg imported eagerly'
import numpy as np, scipy.linalg, scipy.linalg.cython_blas as cb
assert scipy.linalg.cython_blas is cb
assert np.allclose(scipy.linalg.solve(np.eye(3) * 2, np.ones(3)), 0.5)
x = np.ones((1, 3, 2), np.float32)
m = fastrnn.SequenceModel('gru', input_size=2, hidden_size=4, output_size=1, task='regression')
assert m.predict(x).shape == (1, 3, 1)
print('ok')
"""


@pytest.mark.parametrize("first", ["fastrnn", "scipy"])
def test_scipy_is_unchanged_after_import(first):
    code = CHECK if first == "fastrnn" else "import scipy.linalg\n" + CHECK.replace(
        "assert 'scipy.linalg' not in sys.modules, 'scipy.linalg imported eagerly'\n", "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_core_import_loads_no_framework_and_interop_resolves_lazily():
    code = """
import sys, fastrnn
heavy = [m for m in ("torch", "onnx", "onnxruntime", "keras", "fastrnn.interop.torch_io")
         if m in sys.modules]
assert not heavy, heavy
names = ["from_torch", "to_torch", "from_onnx", "to_onnx", "from_keras", "compare"]
assert all(callable(getattr(fastrnn, n)) for n in names)
assert set(names) <= set(dir(fastrnn)) and set(names) <= set(fastrnn.__all__)
assert fastrnn.ParityError is fastrnn.interop.ParityError
try:
    fastrnn.no_such_name
except AttributeError as e:
    assert "no_such_name" in str(e)
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
