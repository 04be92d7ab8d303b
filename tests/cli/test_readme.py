"""The README's Python examples run as written, as a script's main module. The Dask recipe
also runs as a script of its own (test_dask.py), and the MPI recipe (a ``train.py`` for
``mpiexec``) in test_mpi.py, under ``mpiexec -n 2``."""
import os
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
MPI_BLOCKS = [b for b in BLOCKS if "fastrnn.mpi" in b]
DASK_BLOCKS = [b for b in BLOCKS if "fastrnn.dask" in b]


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_example_runs(i, tmp_path, monkeypatch):
    if BLOCKS[i] in MPI_BLOCKS:
        pytest.skip("an mpiexec script: run by tests/scaleout/test_mpi.py")
    if "dask" in BLOCKS[i]:
        pytest.importorskip("distributed", reason="the dask extra is not installed")
    monkeypatch.chdir(tmp_path)
    saved = dict(os.environ)        # a Dask LocalCluster writes its workers' variables here
    try:
        exec(compile(BLOCKS[i], f"README.md block {i}", "exec"), {"__name__": "__main__"})
    finally:
        os.environ.clear()
        os.environ.update(saved)
