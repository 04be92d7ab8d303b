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
