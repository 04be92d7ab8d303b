"""Scale-out throughput (issue 8): Dask batch inference with 1 and 2 workers, MPI
data-parallel training with 1 and 2 ranks, next to one process using fastrnn's own
threads, all measured in the same run on this machine.

    python bench/bench_scale.py [--repeats 3]

Inference: an LSTM SequenceModel (I=32, H=128, 10 classes per sequence, float32) over
4,096 ragged sequences of 50 to 100 steps in 16 partitions (made on the workers by
``dask.array.random``; the one-process rows use a numpy array of the same shape); a
``LocalCluster`` of W workers with one thread each (loopback), the model sent once per
call. Throughput is
sequences per second of ``fastrnn.dask.predict(...).compute()``, best of ``--repeats``,
after one untimed call (the workers decode the model there).

Training: the same LSTM fitted for 2 epochs on 2,048 sequences of 50 steps, batch 64
over all ranks (``mpiexec -n R``, each rank ``OMP_NUM_THREADS=1``); throughput is
sequences per second of rank 0's ``fit``.

Needs the dask and mpi extras: pip install -e ".[dask,mpi]".
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import fastrnn  # noqa: E402

N_INFER, T_INFER, N_TRAIN, T_TRAIN, BATCH = 4096, 100, 2048, 50, 64

TRAIN = r"""
import json, sys, time
import numpy as np
import fastrnn, fastrnn.mpi
hook = fastrnn.mpi.Allreduce()
n, T, batch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
x = rng.standard_normal((n, T, 32)).astype(np.float32)
y = rng.integers(0, 10, n)
m = fastrnn.SequenceModel("lstm", input_size=32, hidden_size=128, output_size=10,
                          task="sequence_classification", seed=0)
rows = fastrnn.mpi.shard(n, batch)
m.fit(x[rows][:batch], y[rows][:batch], batch_size=batch // hook.size, epochs=1,
      allreduce=hook, progress=False)                      # warm-up
t = time.perf_counter()
h = m.fit(x[rows], y[rows], batch_size=batch // hook.size, epochs=2, allreduce=hook,
          progress=False)
s = time.perf_counter() - t
if hook.rank == 0:
    print(json.dumps({"ranks": hook.size, "seconds": s, "seq_per_s": 2 * n / s,
                      "loss": h["loss"][-1]}))
"""


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"


def infer_data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N_INFER, T_INFER, 32)).astype(np.float32)
    lengths = rng.integers(T_INFER // 2, T_INFER + 1, N_INFER)
    model = fastrnn.SequenceModel("lstm", input_size=32, hidden_size=128, output_size=10,
                                  task="sequence_classification", seed=0)
    return model, x, lengths


def best_rate(call, n, repeats):
    call()
    best = min(_timed(call) for _ in range(repeats))
    return n / best


def _timed(call):
    t = time.perf_counter()
    call()
    return time.perf_counter() - t


def bench_inference(repeats):
    import dask
    import dask.array as da
    from distributed import Client, LocalCluster, wait
    import fastrnn.dask
    model, x, lengths = infer_data()
    rows = {}
    for threads in (1, 2):
        model.rnn.n_threads = threads
        rows[f"one process, predict, {threads} thread(s)"] = best_rate(
            lambda: model.predict(x, lengths), N_INFER, repeats)
    # the data made where it is used (workers), as Dask users load it, in 16 chunks of 256
    # rows: predict's batch size, so nothing is re-cut
    dx = da.random.default_rng(0).standard_normal(
        (N_INFER, T_INFER, 32), chunks=(N_INFER // 16, T_INFER, 32)).astype(np.float32)
    trim = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
    for workers, unset_trim in ((1, False), (2, False), (1, True), (2, True)):
        # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also fixes glibc's
        # mmap threshold: every large buffer of every call is then mapped and faulted anew
        setting = {trim: None} if unset_trim else {}
        # a LocalCluster's nannies run in this process and copy that environment into
        # os.environ (distributed's nanny.py), where later workers and the mpiexec runs
        # below would inherit it: put the environment back after each cluster
        saved = dict(os.environ)
        label = "MALLOC_TRIM_THRESHOLD_ unset" if unset_trim else "Dask's default environment"
        with dask.config.set(setting), LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=None, silence_logs=40) as c, \
                Client(c) as client:
            data = client.persist(dx)           # in the workers' memory before timing
            wait(data)
            rows[f"Dask, {workers} worker(s) x 1 thread, {label}"] = best_rate(
                lambda: fastrnn.dask.predict(model, data, lengths, client=client).compute(),
                N_INFER, repeats)
            del data
        os.environ.clear()
        os.environ.update(saved)
    return rows


def bench_training():
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or \
        shutil.which("mpiexec")
    if mpiexec is None:
        return {"(no mpiexec: pip install -e '.[mpi]')": float("nan")}
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        script = os.path.join(d, "train.py")
        with open(script, "w") as f:
            f.write(TRAIN)
        for ranks, omp in ((1, 2), (1, 1), (2, 1)):
            root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            env = dict(os.environ, OMP_NUM_THREADS=str(omp),       # this checkout's fastrnn
                       PYTHONPATH=os.pathsep.join(
                           p for p in (root, os.environ.get("PYTHONPATH")) if p))
            out = subprocess.run([mpiexec, "-n", str(ranks), sys.executable, script,
                                  str(N_TRAIN), str(T_TRAIN), str(BATCH)],
                                 capture_output=True, text=True, env=env, timeout=1200,
                                 cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            if out.returncode:
                raise RuntimeError(out.stderr[-2000:])
            res = json.loads(out.stdout.strip().splitlines()[-1])
            rows[f"MPI, {ranks} rank(s) x {omp} thread(s)"] = res["seq_per_s"]
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print(f"machine: {machine()}")
    print(f"fastrnn vector path: {fastrnn.kernels._blas.vector_path()}")
    print(f"\ninference: LSTM I=32 H=128, {N_INFER} ragged sequences of <= {T_INFER} steps")
    for name, rate in bench_inference(args.repeats).items():
        print(f"  {name:62s} {rate:9.0f} sequences/s")
    print(f"\ntraining: LSTM I=32 H=128, {N_TRAIN} sequences of {T_TRAIN} steps, batch "
          f"{BATCH} over all ranks, 2 epochs")
    for name, rate in bench_training().items():
        print(f"  {name:62s} {rate:9.0f} sequences/s")


if __name__ == "__main__":
    main()
