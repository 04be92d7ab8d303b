"""fastrnn's thread pool (include/fastrnn/pool.h): every kernel's threaded work runs on it.

What it promises, checked here against the one-thread run and the numpy reference:
* a chunk's bounds come from the job, never from which thread runs it, so a thread count
  repeats its bits exactly, idle or under load; counts agree to float32 rounding;
* the work is shared (the workers run chunks), yet the calling thread can finish a job
  alone: with another process busy on the cores, and with more threads asked for than the
  machine has, results are those of the idle run;
* the pool runs with no thread environment variable set (tests/conftest.py sets none).
Timing under load is the benchmark's (`fastrnn bench`, contention group), not a test's.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn import reference as R
from fastrnn.kernels import _blas

CELLS = {"rnn": fastrnn.RNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}


def _run(cell, B, H, n_threads, T=12, seed=0, **variant):
    """(output, final states, input and parameter gradients) of one layer, forward and
    backward, on n_threads."""
    layer = CELLS[cell](H, H, seed=seed, n_threads=n_threads, **variant)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    out, state, tape = layer.forward(x)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dx, _ = layer.backward(dout, None, tape)
    finals = state if isinstance(state, tuple) else (state,)
    return [out, *finals, dx, *(g.copy() for g in layer.grads.values())], layer, x


VARIANTS = [("rnn", {}), ("lstm", {}), ("lstm", dict(peephole="io", coupled=True)),
            ("gru", dict(reset_after=True)), ("gru", dict(reset_after=False))]
IDS = [c + "".join(f"-{k}" for k in kw) for c, kw in VARIANTS]


@pytest.mark.parametrize("B,H", [(1, 72), (3, 72), (3, 64), (5, 128)])
@pytest.mark.parametrize("cell,variant", VARIANTS, ids=IDS)
def test_team_sizes_agree_and_each_repeats_its_bits(cell, variant, B, H):
    """Batch 1, H=72: 5 chunks of 16 units (the last 8); batch 3, H=72: 3 of 32 (the last 8,
    BLAS products: 72 is no multiple of 16); H=64 and 128: 2 and 4 chunks of 32, the packed
    products (gemm.h) on whole panels; teams of 2, 3 and 4 split them differently. Each thread count repeats its own bits exactly (which thread
    ran a chunk does not matter); counts differ from one another only by float32 rounding
    (the hoisted GEMMs are split into 2 blocks per thread, and BLAS rounds a split product
    differently)."""
    one = _run(cell, B, H, 1, **variant)[0]
    for n in (2, 3, 4):
        first = _run(cell, B, H, n, **variant)[0]
        for a, b in zip(_run(cell, B, H, n, **variant)[0], first):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(first, one):
            assert np.abs(a - b).max() <= 2e-6 * max(1.0, np.abs(b).max())


def test_the_workers_share_the_work():
    """A job big enough to split (LSTM B=1 H=256, T=100): the workers run some of its
    chunks. A busy machine may keep a worker out of a job (it sits out after a stall), so
    a few tries are allowed."""
    layer = fastrnn.LSTM(256, 256, seed=0, n_threads=2)
    x = np.random.default_rng(0).standard_normal((100, 1, 256)).astype(np.float32)
    layer(x)
    _blas.pool_counts()
    for _ in range(50):
        layer(x)
        caller, worker = _blas.pool_counts(2)
        if worker > 0:
            break
    assert caller > 0 and worker > 0, (caller, worker)


def _reference_lstm(layer, x):
    p = {k[:-3]: v for k, v in layer.params.items()}
    zeros = np.zeros((x.shape[1], layer.hidden_size), np.float32)
    out, h, c, _ = R.lstm_forward(x, zeros, zeros, p["weight_ih"], p["weight_hh"],
                                  p["bias_ih"], p["bias_hh"])
    return out


def test_results_hold_with_a_core_taken_and_more_threads_than_cores():
    """Another process spins on a core while 2- and 8-thread jobs run (8 > this machine's
    cores on small CI machines): each job finishes, and its bits are the idle 2-thread
    run's; the idle run matches the numpy reference."""
    idle, layer, x = _run("lstm", 1, 128, 2, T=40)
    np.testing.assert_allclose(idle[0], _reference_lstm(layer, x), rtol=1e-4, atol=1e-5)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for n in (2, 8, 2):
            for _ in range(3):
                for a, b in zip(_run("lstm", 1, 128, n, T=40)[0], idle):
                    np.testing.assert_array_equal(a, b)
    finally:
        hog.kill()
        hog.wait()


def test_pool_counts_reads_and_restarts():
    """pool_counts: a list of n counts, zero right after being read; a one-thread call
    puts nothing on the pool."""
    _blas.pool_counts(4)
    assert _blas.pool_counts(4) == [0, 0, 0, 0]
    fastrnn.GRU(64, 64, seed=0, n_threads=1)(np.ones((50, 1, 64), np.float32))
    assert _blas.pool_counts(3) == [0, 0, 0]
    assert len(_blas.pool_counts(1000)) == 256


PINNED = r"""
import os, threading
import numpy as np
import fastrnn
from fastrnn.kernels import _blas
def first_use():                      # the pool's workers start here, on a pinned thread
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    layer = fastrnn.LSTM(64, 64, seed=0, n_threads=2)
    for _ in range(2000):             # until the worker has run (it starts asynchronously)
        layer(np.ones((20, 1, 64), np.float32))
        if _blas.pool_counts(2)[1] > 0:
            break
t = threading.Thread(target=first_use)
t.start(); t.join()
main = sorted(os.sched_getaffinity(0))
workers = []                          # the pool's threads, by name (OpenBLAS's are not ours)
for tid in os.listdir("/proc/self/task"):
    with open(f"/proc/self/task/{tid}/comm") as f:
        if f.read().strip() == "fastrnn-pool":
            workers.append(sorted(os.sched_getaffinity(int(tid))))
print(all(w == main for w in workers), len(workers))
"""


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux affinity calls and 2 CPUs")
def test_workers_started_by_a_pinned_thread_keep_the_process_cpus():
    """A thread pinned to one CPU that makes the pool's first job starts its workers
    (threads named "fastrnn-pool"); they take the process's CPUs (its main thread's), not
    the pinned thread's. Checked in a fresh interpreter, whose pool has no workers yet."""
    out = subprocess.run([sys.executable, "-c", PINNED], capture_output=True, text=True,
                         timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stderr
    same, n_threads = out.stdout.split()
    assert same == "True" and int(n_threads) >= 1, out.stdout
