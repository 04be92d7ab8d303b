"""Thread control: fastrnn.set/get_num_threads, and BLAS held at one thread during kernel
calls (then restored), nested and from several Python threads."""
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import fastrnn
from fastrnn.kernels._threads import serial_blas


def scipy_blas_threads():
    with serial_blas:           # make sure it has found its library
        pass
    return [i["num_threads"] for i in threadpool_info()
            if i["filepath"] in {lib.filepath for lib in serial_blas._libs}]


def test_serial_blas_nests_and_restores():
    before = scipy_blas_threads()
    with serial_blas:
        assert scipy_blas_threads() == [1] * len(before)
        with serial_blas:
            assert scipy_blas_threads() == [1] * len(before)
        assert scipy_blas_threads() == [1] * len(before)
    assert scipy_blas_threads() == before


def test_kernel_calls_from_threads_restore_blas():
    before = scipy_blas_threads()
    m = fastrnn.LSTM(16, 32, seed=0)
    x = np.random.default_rng(0).standard_normal((20, 4, 16)).astype(np.float32)
    want = m(x)[0]
    results = []

    def work():
        for _ in range(20):
            results.append(m(x)[0])
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.tobytes() == want.tobytes() for r in results)
    assert scipy_blas_threads() == before


def test_set_and_get_num_threads():
    default = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(1)
        assert fastrnn.get_num_threads() == 1
        assert fastrnn.effective_n_threads() == 1
        assert fastrnn.effective_n_threads(2) == 2          # an explicit argument wins
        with pytest.raises(ValueError, match="n_threads=0"):
            fastrnn.set_num_threads(0)
        assert fastrnn.get_num_threads() == 1               # a refused value changes nothing
    finally:
        fastrnn.set_num_threads(None)
    assert fastrnn.get_num_threads() == default


def test_first_use_from_many_threads_keeps_blas_limited():
    """Every thread entering while the library is being found must take the same path."""
    code = """
import threading, numpy as np, fastrnn
from fastrnn.kernels._threads import serial_blas
from threadpoolctl import threadpool_info
barrier = threading.Barrier(8)
def work():
    barrier.wait()
    with serial_blas:
        pass
ts = [threading.Thread(target=work) for _ in range(8)]
[t.start() for t in ts]; [t.join() for t in ts]
with serial_blas:
    inside = [i['num_threads'] for i in threadpool_info()
              if i['filepath'] in {l.filepath for l in serial_blas._libs}]
print(inside)
"""
    import subprocess, sys
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[1]", out.stdout


def test_fit_leaves_every_blas_as_it_found_it():
    before = [(i["filepath"], i["num_threads"]) for i in threadpool_info()
              if i["user_api"] == "blas"]
    x = np.random.default_rng(0).integers(0, 4, (16, 6))
    m = fastrnn.SequenceModel("gru", vocab_size=4, hidden_size=8, task="next_token", seed=0)
    m.fit(x, (x + 1) % 4, epochs=1, batch_size=8, progress=False)
    after = [(i["filepath"], i["num_threads"]) for i in threadpool_info()
             if i["user_api"] == "blas"]
    assert after == before
