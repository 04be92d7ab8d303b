"""Test-session setup: import path.

* `python -m pytest` from the repository root puts the root on sys.path, a bare `pytest`
  does not (it inserts only the test file's folder and tests/); the compiled modules are
  built in place (`python setup.py build_ext --inplace`), so put the root first either way.
* No thread environment variable is set: the kernels run on fastrnn's own pool, whose idle
  workers sleep after ~50 us (until 2026-12 they met at OpenMP barriers, and this file set
  GOMP_SPINCOUNT=1000 to keep libgomp's spinning from slowing the suite 4x on a busy box).
"""
import pathlib
import sys

import pytest

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
