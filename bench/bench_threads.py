"""Does fastrnn release the GIL? Throughput of 1 vs 2 Python threads sharing one model.

Each thread calls the same shared model in a loop (the model at ``n_threads=1``, so each
call runs on the calling thread only, and every BLAS held at one thread); the figure is
calls per second with two threads over calls per second with one. Close to 2 on two free
cores means the compiled work runs without the GIL; 1 would mean the calls serialise.

Workloads: ``predict`` (an LSTM SequenceModel over a (16, 50, 32) batch, a few
milliseconds per call), ``stream`` (one LSTM stream step at batch 1, a few microseconds,
where the Python part of each call, under the GIL, is most of it) and ``stream32`` (the
same step for 32 streams at once).

Before timing, the threaded results are checked against serial calls, bit for bit. A
control, numpy's matrix product (BLAS at one thread, GIL released), gives the ceiling the
machine offers at that moment: on a shared machine another process can take a core, and
then no code shows 2x.

    python bench/bench_threads.py [--seconds 3] [--repeats 3]
"""
import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import fastrnn  # noqa: E402


def workloads():
    rng = np.random.default_rng(0)
    model = fastrnn.SequenceModel("lstm", input_size=32, hidden_size=128, output_size=10,
                                  task="per_step_classification", seed=0, n_threads=1)
    x = rng.standard_normal((16, 50, 32)).astype(np.float32)
    layer = fastrnn.LSTM(64, 128, seed=0, n_threads=1)
    x1 = rng.standard_normal(64).astype(np.float32)
    x32 = rng.standard_normal((32, 64)).astype(np.float32)
    streams = {}

    def stream_call(batch, x):
        def call():
            key = (threading.get_ident(), batch)
            s = streams.get(key)
            if s is None:                   # one stream per thread: a stream is one client
                s = streams[key] = layer.stream(batch)
            return s.step(x)
        return call
    a = rng.standard_normal((192, 192))
    return {"control": (lambda: a @ a, None),
            "predict": (lambda: model.predict(x), lambda: model.predict(x)),
            "stream": (stream_call(1, x1), None),
            "stream32": (stream_call(32, x32), None)}


def verify(name, call):
    want = call()
    got = [None, None]

    def work(i):
        got[i] = [call() for _ in range(20)]
    ts = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    bad = sum(r.tobytes() != want.tobytes() for rs in got for r in rs)
    if bad:
        raise SystemExit(f"{name}: {bad} threaded results differ from the serial one")


def throughput(call, n_threads, seconds):
    """Calls per second of n_threads threads calling ``call`` for ``seconds``."""
    counts = [0] * n_threads
    start = threading.Barrier(n_threads + 1)
    stop = threading.Event()

    def work(i):
        call()                              # warm: this thread's stream, its buffers
        start.wait()
        n = 0
        while not stop.is_set():
            call()
            n += 1
        counts[i] = n
    ts = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"CPUs available: {fastrnn.effective_n_threads(-1)}; load average before: "
          f"{os.getloadavg()[0]:.2f}")
    with threadpool_limits(limits=1):
        for name, (call, check) in workloads().items():
            if check is not None:
                verify(name, check)
            best = {}
            for k in (1, 2):
                rates = [throughput(call, k, args.seconds) for _ in range(args.repeats)]
                best[k] = max(rates)
                print(f"{name:8s} {k} thread{'s' if k > 1 else ' '}: "
                      f"{' '.join(f'{r:9.0f}' for r in rates)} calls/s (best {best[k]:.0f})")
            print(f"{name:8s} 2-thread speedup: {best[2] / best[1]:.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
