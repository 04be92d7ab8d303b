"""Data-parallel training over real MPI (issue 8): ``mpiexec -n 2`` running fit with
fastrnn.mpi.Allreduce on two halves of each batch. Both ranks must end with bit-identical
parameters, equal to one process training on the whole batches (float64, 1e-12), and only
rank 0 writes the checkpoint. Needs the ``mpi`` extra (mpi4py and the mpich wheel)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # tests/: mpi/
ROOT = os.path.dirname(HERE)


def _env():
    """2 ranks on 2 cores: one OpenMP thread each; fastrnn importable from this checkout
    (an in-place build) as well as from an installed copy."""
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)


def _mpiexec():
    try:
        import mpi4py  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"the mpi extra is not installed ({exc}); pip install 'fastrnn[mpi]'")
    # the mpich wheel puts mpiexec next to this interpreter
    found = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or \
        shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec found (the mpich wheel installs one next to python)")
    return found


def test_two_ranks_train_like_one_process(tmp_path):
    mpiexec = _mpiexec()
    proc = subprocess.run([mpiexec, "-n", "2", sys.executable,
                           os.path.join(HERE, "mpi", "train_two_halves.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    r0, r1 = (np.load(tmp_path / f"rank{r}.npz") for r in (0, 1))
    single = np.load(tmp_path / "single.npz")
    for name in single.files:
        assert r0[name].tobytes() == r1[name].tobytes(), name
        np.testing.assert_allclose(r0[name], single[name], rtol=0, atol=1e-12, err_msg=name)
    hist = json.loads((tmp_path / "history.json").read_text())
    assert hist["ranks"] == 2 and hist["steps"][0] == hist["steps"][1] > 0
    np.testing.assert_allclose(hist["parallel"], hist["single"], rtol=1e-12)
    assert (tmp_path / "ckpt-rank0.fastrnn").exists()
    assert not (tmp_path / "ckpt-rank1.fastrnn").exists()


def test_the_readme_recipe_runs_on_two_ranks(tmp_path):
    """The README's train.py, as written, under mpiexec -n 2: rank 0 writes the checkpoint,
    and it loads."""
    from test_readme import MPI_BLOCKS
    import fastrnn
    mpiexec = _mpiexec()
    assert len(MPI_BLOCKS) == 1
    (tmp_path / "train.py").write_text(MPI_BLOCKS[0])
    proc = subprocess.run([mpiexec, "-n", "2", sys.executable, "train.py"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    model = fastrnn.load(tmp_path / "model.fastrnn")
    assert model.config["cell"] == "lstm"
