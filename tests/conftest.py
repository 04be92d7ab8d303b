"""Test-session setup: import path and OpenMP spin-waiting.

* `python -m pytest` from the repository root puts the root on sys.path, a bare `pytest`
  does not (it inserts only the test file's folder and tests/); the compiled modules are
  built in place (`python setup.py build_ext --inplace`), so put the root first either way.
* GOMP_SPINCOUNT=1000 (unless set): the kernels meet at an OpenMP barrier every time step
  (and the backward kernels open a region per step), and libgomp's default spins ~300000
  iterations at every barrier. On this 2-core
  machine with two other busy processes (a benchmark, a build), kernels/test_kernels.py +
  kernels/test_gradcheck.py took 73 s with the default, 16 s with OMP_WAIT_POLICY=passive and 18 s
  with GOMP_SPINCOUNT=1000; idle, 5.5 s, 15.8 s (a futex wake per region) and 5.3 s.
  Results do not depend on the wait policy. Must be set before fastrnn (hence libgomp)
  loads, which is why it lives here; it only affects GCC's libgomp.
"""
import os
import pathlib
import sys

import pytest

os.environ.setdefault("GOMP_SPINCOUNT", "1000")

_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

# The tests live in folders by what they check (tests/README.md), the shared helpers
# (_helpers, _isolated, the scripts run by path, golden/, mpi/) here in tests/. Put tests/
# on sys.path for `from _helpers import ...` whichever folder or working directory pytest
# starts from, and each folder after it, so that a test can read another file's constants
# (test_dask and test_mpi take the README's recipes from cli/test_readme.py) when only its
# own folder runs. No __init__.py anywhere, so test file names stay unique across folders.
_TESTS = pathlib.Path(__file__).resolve().parent
for _p in [str(_TESTS)] + sorted(str(d) for d in _TESTS.iterdir()
                                 if d.is_dir() and d.name not in ("golden", "mpi", "__pycache__")):
    if _p not in sys.path:
        sys.path.append(_p)


def pytest_configure(config):
    """Run every threaded path even on the small sizes tests use: the kernels fall back to
    one thread below a per-step work threshold (fastrnn.kernels._blas.set_min_parallel_work)."""
    from fastrnn.kernels import _blas
    _blas.set_min_parallel_work(0)
    config.addinivalue_line("markers", "long: a long run (soak, many examples); skipped "
                                       "unless pytest is given --long")


# ---- long runs (soaks, many hypothesis examples): `python -m pytest --long` ---------------

def pytest_addoption(parser):
    parser.addoption("--long", action="store_true", default=False,
                     help="also run the tests marked long (soaks, 100,000-call memory runs, "
                          "thousands of hypothesis examples)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="long run: pass --long to run it")
    for item in items:
        if item.get_closest_marker("long") is not None:
            item.add_marker(skip)



# ---- fixtures shared by tests/files and tests/robustness --------------------------------

@pytest.fixture(params=["anonymous", "named"])
def temporaries(request, monkeypatch):
    """Both ways a write makes its temporary (O_TMPFILE where it works, a named file)."""
    from fastrnn import io         # here, not at the top: GOMP_SPINCOUNT is set first
    if request.param == "anonymous" and not io._anonymous_temporaries:
        pytest.skip("O_TMPFILE temporaries are not available here")
    monkeypatch.setattr(io, "_anonymous_temporaries", request.param == "anonymous")
    return request.param
