"""Timing harness shared by ``bench/`` and ``fastrnn demo``: fastrnn against the numpy
reference on the same inputs, checked before it is timed.

Each case builds one set of weights and inputs, verifies fastrnn's outputs (and
gradients, for training cases) against :mod:`fastrnn.reference`, then times the two in
alternating blocks (warm-up first, medians of single calls), so drift in the machine hits
both sides.
"""
import os
import platform
import time

import numpy as np

from . import functional as F
from . import reference as R
from ._openmp import cpu_count, openmp_enabled

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def machine_info():
    """One-paragraph description of where a number was measured."""
    from threadpoolctl import threadpool_info
    model = platform.processor() or platform.machine()
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine()):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    simd = [f for f in ("avx2", "fma", "avx512f") if f in flags]
    blas = [f"{i['internal_api']} {i.get('version')} ({i.get('architecture')}, "
            f"{i['num_threads']} threads, {os.path.basename(i['filepath'])})"
            for i in threadpool_info() if i["user_api"] == "blas"]
    return {"cpu": model, "cores": cpu_count(), "simd": " ".join(simd) or "unknown",
            "blas": "; ".join(blas), "openmp": openmp_enabled(),
            "python": platform.python_version(), "numpy": np.__version__}


def sgemm_peak(n_threads, n=1024, repeats=5):
    """Practical fp32 GEMM rate (GFLOP/s) of numpy's BLAS at n_threads: the yardstick."""
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    with threadpool_limits(n_threads, user_api="blas"):
        a @ b
        best = min(_once(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _once(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def make_case(cell, T, B, H, I=None, dtype=np.float32, seed=0, variant=None):
    """Weights initialised like a trained model's scale (uniform +-1/sqrt(H)) and inputs."""
    I = H if I is None else I
    G = GATES[cell]
    rng = np.random.default_rng(seed)
    s = 1 / np.sqrt(H)
    p = {"W_ih": rng.uniform(-s, s, (G * H, I)), "W_hh": rng.uniform(-s, s, (G * H, H)),
         "b_ih": rng.uniform(-s, s, G * H), "b_hh": rng.uniform(-s, s, G * H)}
    p = {k: v.astype(dtype) for k, v in p.items()}
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype) * 0.1
    dhs = rng.standard_normal((T, B, H)).astype(dtype)
    return {"cell": cell, "T": T, "B": B, "I": I, "H": H, "x": x, "h0": h0, "dhs": dhs,
            "params": p, "variant": variant}


def _forward(mod, c, **kw):
    p = c["params"]
    if c["cell"] == "lstm":
        return mod.lstm_forward(c["x"], c["h0"], c["h0"], p["W_ih"], p["W_hh"], p["b_ih"],
                                p["b_hh"], **kw)
    if c["cell"] == "gru":
        return mod.gru_forward(c["x"], c["h0"], p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"], **kw)
    return mod.rnn_forward(c["x"], c["h0"], p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"], **kw)


def _train(mod, c, **kw):
    out = _forward(mod, c, **kw)
    back = getattr(mod, c["cell"] + "_backward")
    if c["cell"] == "lstm":
        return out, back(c["dhs"], None, None, out[-1])
    return out, back(c["dhs"], None, out[-1])


def flops(c, train):
    """Multiply-adds x2 of the GEMMs: forward 2 T B GH (I + H); backward twice that."""
    fwd = 2 * c["T"] * c["B"] * GATES[c["cell"]] * c["H"] * (c["I"] + c["H"])
    return 3 * fwd if train else fwd


def verify(c, train, n_threads):
    """Max abs difference between fastrnn and the reference; raises if out of tolerance."""
    ours = _train(F, c, n_threads=n_threads) if train else _forward(F, c, n_threads=n_threads)
    ref = _train(R, c) if train else _forward(R, c)
    pairs = []
    if train:
        (of, ob), (rf, rb) = ours, ref
        pairs += list(zip(of[:-1], rf[:-1])) + list(zip(ob[:-1], rb[:-1]))
        pairs += [(ob[-1][k], rb[-1][k]) for k in rb[-1]]
    else:
        pairs += list(zip(ours[:-1], ref[:-1]))
    worst = 0.0
    for a, b in pairs:
        scale = max(1.0, float(np.abs(b).max()) if b.size else 1.0)
        err = float(np.abs(a - b).max()) / scale if b.size else 0.0
        worst = max(worst, err)
    tol = 1e-3 if c["x"].dtype == np.float32 else 1e-9
    if not worst <= tol:
        raise AssertionError(f"fastrnn disagrees with the reference on {c['cell']} "
                             f"B={c['B']} H={c['H']}: relative error {worst:.2e} > {tol}")
    return worst


def compare(c, train=False, n_threads=1, repeats=5, min_time=0.2):
    """Time fastrnn and the numpy reference in alternating blocks; medians in seconds.

    Each block runs one side several times and every call is timed on its own: the first
    call after a switch can meet the other side's idle threads still spinning (OpenBLAS
    and libgomp both busy-wait a while before sleeping), and the median drops it."""
    from threadpoolctl import threadpool_limits
    err = verify(c, train, n_threads)
    ours = (lambda: _train(F, c, n_threads=n_threads)) if train else \
        (lambda: _forward(F, c, n_threads=n_threads))
    ref = (lambda: _train(R, c)) if train else (lambda: _forward(R, c))
    t_ours, t_ref = [], []
    with threadpool_limits(n_threads, user_api="blas"):   # numpy's BLAS gets the same cores
        ours(), ref()                                      # warm-up
        k_ours = max(3, int(min_time / max(_once(ours), 1e-6) / repeats))
        k_ref = max(3, int(min_time / max(_once(ref), 1e-6) / repeats))
        for _ in range(repeats):
            t_ours += [_once(ours) for _ in range(k_ours)]
            t_ref += [_once(ref) for _ in range(k_ref)]
    return {"fastrnn": float(np.median(t_ours)), "numpy": float(np.median(t_ref)),
            "max_rel_err": err, "gflops": flops(c, train) / float(np.median(t_ours)) / 1e9}

CORE_CASES = [  # (cell, batch, train, target speed-up over numpy at one thread, issue 2)
    ("lstm", 1, False, 2.5), ("lstm", 64, False, 1.6), ("lstm", 32, True, 2.0),
    ("gru", 1, False, 2.5), ("gru", 64, False, 1.6), ("gru", 32, True, 2.0),
]


def core_table(threads=(1, 2), T=100, H=256, cases=CORE_CASES, out=print):
    """Run the core cases and return the markdown lines (printed as they come)."""
    import datetime
    info = machine_info()
    lines = [f"Machine: {info['cpu']}, {info['cores']} cores ({info['simd']}); "
             f"BLAS: {info['blas']}; OpenMP: {info['openmp']}; numpy {info['numpy']}, "
             f"Python {info['python']}; {datetime.date.today()}", ""]
    peaks = {n: sgemm_peak(n) for n in threads}
    lines.append("sgemm 1024^3 peak (numpy's BLAS): " + ", ".join(
        f"{n} thread{'s' * (n > 1)}: {p:.1f} GFLOP/s" for n, p in peaks.items()))
    lines += ["", "| cell | case | threads | fastrnn ms | numpy ms | speed-up | target (1 thread) "
              "| GFLOP/s | % of sgemm peak | max rel err |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for line in lines:
        out(line)
    for n in threads:
        for cell, B, train, target in cases:
            r = compare(make_case(cell, T, B, H), train=train, n_threads=n)
            ratio = r["numpy"] / r["fastrnn"]
            what = f"{'fwd+bwd' if train else 'forward'} T={T} B={B} H={H}"
            goal = f"{target}x {'met' if ratio >= target else 'MISSED'}" if n == 1 else ""
            row = (f"| {cell} | {what} | {n} | {r['fastrnn'] * 1e3:.2f} | {r['numpy'] * 1e3:.2f} "
                   f"| {ratio:.2f}x | {goal} | {r['gflops']:.1f} | "
                   f"{100 * r['gflops'] / peaks[n]:.0f}% | {r['max_rel_err']:.1e} |")
            lines.append(row)
            out(row)
    return lines
