"""Timing harness shared by ``bench/`` and ``fastrnn demo``: fastrnn against the numpy
reference on the same inputs, checked before it is timed.

Each case builds one set of weights and inputs, verifies fastrnn's outputs (and
gradients, for training cases) against :mod:`fastrnn.reference`, then times the two in
alternating blocks (warm-up first, medians of single calls), so drift in the machine hits
both sides.
"""
import contextlib
import os
import platform
import time

import numpy as np

from .. import functional as F
from .._spec import gate_count
from .. import reference as R
from ..kernels._openmp import cpu_count, openmp_enabled



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
    from ..kernels._blas import vector_path
    return {"cpu": model, "cores": cpu_count(), "simd": " ".join(simd) or "unknown",
            "kernels": vector_path(),
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
    G = gate_count(cell)
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


def flops(c, train, need_dx=True):
    """Multiply-adds x2 of the GEMMs: forward 2 T B GH (I + H); backward twice that, less
    the dx GEMM (2 T B GH I) when the input needs no gradient."""
    TBG = c["T"] * c["B"] * gate_count(c["cell"]) * c["H"]
    fwd = 2 * TBG * (c["I"] + c["H"])
    if not train:
        return fwd
    return 3 * fwd - (0 if need_dx else 2 * TBG * c["I"])


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

    Blocks as in :func:`time_alternating`: each starts after a pause and one untimed call,
    because the other side's idle threads still spin for a while (OpenBLAS and libgomp
    both busy-wait before sleeping). The 2-thread rows still vary between runs on the
    2-core test machine (GRU forward B=64: 33 to 47 ms, in this benchmark and in a plain
    loop after the reference has run); the cause was not found."""
    from threadpoolctl import threadpool_limits
    err = verify(c, train, n_threads)
    ours = (lambda: _train(F, c, n_threads=n_threads)) if train else \
        (lambda: _forward(F, c, n_threads=n_threads))
    ref = (lambda: _train(R, c)) if train else (lambda: _forward(R, c))
    with threadpool_limits(n_threads, user_api="blas"):   # numpy's BLAS gets the same cores
        ours(), ref()                                      # warm-up
        t = time_alternating({"fastrnn": ours, "numpy": ref}, repeats, min_time, settle=0.2)
    return {"fastrnn": t["fastrnn"], "numpy": t["numpy"],
            "max_rel_err": err, "gflops": flops(c, train) / t["fastrnn"] / 1e9}

CORE_CASES = [  # (cell, batch, train, target speed-up over numpy at one thread, issue 2)
    ("lstm", 1, False, 2.5), ("lstm", 64, False, 1.6), ("lstm", 32, True, 2.0),
    ("gru", 1, False, 2.5), ("gru", 64, False, 1.6), ("gru", 32, True, 2.0),
]


def core_table(threads=(1, 2), T=100, H=256, cases=CORE_CASES, out=print):
    """Run the core cases and return the markdown lines (printed as they come)."""
    import datetime
    info = machine_info()
    lines = [f"Machine: {info['cpu']}, {info['cores']} cores ({info['simd']}; "
             f"kernels: {info['kernels']}); "
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


# ---- peers: PyTorch and ONNX Runtime (issue 4, bench/bench_peers.py) --------------------
#
# Every builder below takes the same case (make_case) and returns a callable that runs it,
# so one timing loop serves all sides. PyTorch and ONNX Runtime are imported only here,
# only when asked for; `import fastrnn` never loads them.

_ONNX_ORDER = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2)}  # PyTorch (i,f,g,o) -> ONNX (i,o,f,c);
                                                         # (r,z,n) -> (z,r,h)


def peer_versions():
    """{"torch": version, "onnxruntime": version}; None where the peer is not installed
    (ONNX Runtime also needs the `onnx` package, to build its graphs)."""
    found = {}
    for name, needs in (("torch", ()), ("onnxruntime", ("onnx",))):
        try:
            for extra in needs:
                __import__(extra)
            found[name] = __import__(name).__version__
        except ImportError:
            found[name] = None
    return found


def time_alternating(fns, repeats=5, min_time=0.2, settle=0.03, rounds=None):
    """Median seconds of single calls of each ``fns[name]()``: a warm-up call each, then
    ``repeats`` rounds in which every side runs a block of at least 3 calls (about
    ``min_time / repeats`` seconds), each call timed on its own, as in :func:`compare`.

    Each block starts with a pause of ``settle`` seconds and one untimed call. Why: the
    libraries' worker threads spin-wait for a while after their last job (ONNX Runtime's
    intra-op pool, the OpenMP runtimes, OpenBLAS), and with two cores a side timed right
    after another shares a core with the other's spinning threads. Measured here: fastrnn
    LSTM B=64 H=256 at 2 threads took 57 ms in blocks right after ONNX Runtime's, 43 ms
    alone. A user runs one library, so each side is timed on a quiet machine, warm.

    ``rounds``: a dict that, when given, receives each side's per-round figures (the
    median of that round's block), for :func:`spread`."""
    return _in_rounds(fns, repeats, min_time, settle, (3, 20000),
                      lambda fn, n: [_once(fn) for _ in range(n)], rounds)


def _block(fn, n):
    """[seconds per call] of ``n`` calls of ``fn`` under one clock."""
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return [(time.perf_counter() - t) / n]


def _in_rounds(fns, repeats, min_time, settle, k_bounds, measure, rounds=None):
    """The median of what ``measure(fn, k)`` gives for each side over ``repeats`` rounds:
    a warm-up call each first; per round and side a pause of ``settle`` seconds, one
    untimed call, then ``k`` calls (about ``min_time / repeats`` seconds, within
    ``k_bounds``) measured. When ``rounds`` is a dict, ``rounds[name]`` is set to the
    side's ``repeats`` per-round figures (the median of each round's measurements)."""
    for fn in fns.values():
        fn()
    low, high = k_bounds
    k = {name: int(min(high, max(low, min_time / max(_once(fn), 1e-7) / repeats)))
         for name, fn in fns.items()}
    times = {name: [] for name in fns}
    per_round = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(settle)
            fn()
            got = measure(fn, k[name])
            times[name] += got
            per_round[name].append(float(np.median(got)))
    if rounds is not None:
        rounds.update(per_round)
    return {name: float(np.median(t)) for name, t in times.items()}


def spread(per_round):
    """max / min of a side's per-round figures (``rounds=`` of :func:`time_alternating`
    or :func:`time_blocks`): 1.0 when every round agreed; how far apart runs of the same
    call land on this machine. With the rounds of one timing, a repeat costs nothing."""
    return max(per_round) / min(per_round)


def rel_err(a, b):
    """max |a - b| / max(1, max |b|), verify's measure; torch tensors accepted."""
    a, b = (np.asarray(v.detach().numpy() if hasattr(v, "detach") else v, np.float64)
            for v in (a, b))
    return float(np.abs(a - b).max()) / max(1.0, float(np.abs(b).max())) if b.size else 0.0


def _check(what, err, c, tol=1e-3):
    if not err <= tol:
        raise AssertionError(f"fastrnn disagrees with {what} on {c['cell']} B={c['B']} "
                             f"H={c['H']}: relative error {err:.2e} > {tol}")
    return err


def torch_module(cell, p, step=False):
    """torch.nn.LSTM/GRU (or LSTMCell/GRUCell with step=True) holding the weights ``p``."""
    import torch
    GH, I = p["W_ih"].shape
    name = {"lstm": "LSTM", "gru": "GRU"}[cell] + ("Cell" if step else "")
    mod = getattr(torch.nn, name)(I, GH // gate_count(cell))
    sfx = "" if step else "_l0"
    with torch.no_grad():
        for k, attr in (("W_ih", "weight_ih"), ("W_hh", "weight_hh"), ("b_ih", "bias_ih"),
                        ("b_hh", "bias_hh")):
            getattr(mod, attr + sfx).copy_(torch.from_numpy(p[k]))
    return mod


def torch_forward(c, n_threads):
    """Whole-sequence inference in PyTorch under no_grad; the callable returns hs."""
    import torch
    torch.set_num_threads(n_threads)
    mod = torch_module(c["cell"], c["params"]).eval()
    x, h0 = torch.from_numpy(c["x"]), torch.from_numpy(c["h0"])[None]
    state = (h0, h0) if c["cell"] == "lstm" else h0     # _forward uses c0 = h0 too

    def run():
        with torch.no_grad():
            return mod(x, state)[0]
    return run


def onnx_session(cell, p, n_threads, T, B):
    """An ONNX Runtime session of one LSTM/GRU node (GRU with linear_before_reset=1, i.e.
    PyTorch's form) with the weights ``p`` as initializers; inputs X (T, B, I) and
    initial_h (and initial_c) (1, B, H); outputs Y (T, 1, B, H), Y_h (and Y_c) (1, B, H)."""
    from onnx import TensorProto, helper, numpy_helper
    GH, I = p["W_ih"].shape
    H = GH // gate_count(cell)

    def onnx_gates(a):
        blocks = np.split(a, gate_count(cell))
        return np.concatenate([blocks[k] for k in _ONNX_ORDER[cell]])
    inits = {"W": onnx_gates(p["W_ih"])[None], "R": onnx_gates(p["W_hh"])[None],
             "B": np.concatenate([onnx_gates(p["b_ih"]), onnx_gates(p["b_hh"])])[None]}
    states = ["initial_h", "initial_c"] if cell == "lstm" else ["initial_h"]
    outs = ["Y", "Y_h", "Y_c"] if cell == "lstm" else ["Y", "Y_h"]
    attrs = {"linear_before_reset": 1} if cell == "gru" else {}
    node = helper.make_node(cell.upper(), ["X", "W", "R", "B", ""] + states, outs,
                            hidden_size=H, **attrs)
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        [node], cell, [helper.make_tensor_value_info("X", f32, [T, B, I])]
        + [helper.make_tensor_value_info(s, f32, [1, B, H]) for s in states],
        [helper.make_tensor_value_info(o, f32, None) for o in outs],
        [numpy_helper.from_array(np.ascontiguousarray(a), k) for k, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort_session(model.SerializeToString(), n_threads)


def ort_session(model_bytes, n_threads):
    """An ONNX Runtime CPU session of a serialized model, as every peer here gets it:
    ``intra_op_num_threads=n_threads``, ``inter_op_num_threads=1``, sequential execution."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = n_threads, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def onnx_forward(c, n_threads):
    """Whole-sequence inference in ONNX Runtime; the callable returns hs (T, B, H)."""
    sess = onnx_session(c["cell"], c["params"], n_threads, c["T"], c["B"])
    feed = {"X": c["x"], "initial_h": c["h0"][None]}
    if c["cell"] == "lstm":
        feed["initial_c"] = c["h0"][None]
    return lambda: sess.run(["Y"], feed)[0][:, 0]


def compare_peers(c, n_threads=1, peers=("torch", "onnxruntime"), repeats=5, min_time=0.2):
    """Whole-sequence inference: fastrnn, the numpy reference and each peer, timed in
    alternating blocks after fastrnn is checked against the reference and every peer's
    output is checked against fastrnn's. Returns {"time": {side: s}, "err": {side: rel},
    "gflops": fastrnn's rate, "spread": {side: max/min of its ``repeats`` per-round medians}}
    (:func:`spread`: the spread is over the rounds of this one timing, not extra runs)."""
    from threadpoolctl import threadpool_limits
    err = {"numpy": verify(c, False, n_threads)}
    fns = {"fastrnn": lambda: _forward(F, c, n_threads=n_threads)[0],
           "numpy": lambda: _forward(R, c)[0]}
    builders = {"torch": torch_forward, "onnxruntime": onnx_forward}
    with threadpool_limits(n_threads, user_api="blas"):
        ours = fns["fastrnn"]().copy()
        for name in peers:
            fns[name] = builders[name](c, n_threads)
            err[name] = _check(name, rel_err(ours, fns[name]()), c)
        rounds = {}
        t = time_alternating(fns, repeats, min_time, rounds=rounds)
    return {"time": t, "err": err, "gflops": flops(c, False) / t["fastrnn"] / 1e9,
            "spread": {name: spread(r) for name, r in rounds.items()}}


# ---- training step: forward, backward, Adam -----------------------------------------------

def case_layer(c, n_threads):
    """A fastrnn.LSTM/GRU layer (one layer, PyTorch's form) holding the case's weights."""
    from ..nn.layers import GRU, LSTM
    layer = {"lstm": LSTM, "gru": GRU}[c["cell"]](c["I"], c["H"], n_threads=n_threads)
    layer.load_state_dict({name + "_l0": c["params"][k] for k, name in
                           (("W_ih", "weight_ih"), ("W_hh", "weight_hh"),
                            ("b_ih", "bias_ih"), ("b_hh", "bias_hh"))})
    return layer


def fastrnn_train_step(c, n_threads, lr=1e-3):
    """(step, layer): one fastrnn.LSTM/GRU layer with the case's weights, zero initial
    state, upstream gradient c["dhs"]; step() = zero_grad, forward, backward, Adam update."""
    from ..nn.optim import Adam
    layer = case_layer(c, n_threads)
    opt = Adam([(layer.flat, layer.grad)], lr=lr)

    def step():
        layer.zero_grad()
        out, _, tape = layer.forward(c["x"])
        layer.backward(c["dhs"], None, tape, need_dx=False)   # as torch: x needs no grad
        opt.step()
        return out
    return step, layer


def torch_train_step(c, n_threads, lr=1e-3):
    """(step, module): nn.LSTM/GRU, loss = (out * R).sum() so dL/dout = R = c["dhs"],
    torch.optim.Adam; step() = zero_grad, forward, backward, update."""
    import torch
    torch.set_num_threads(n_threads)
    mod = torch_module(c["cell"], c["params"])
    opt = torch.optim.Adam(mod.parameters(), lr=lr)
    x, r = torch.from_numpy(c["x"]), torch.from_numpy(c["dhs"])

    def step():
        opt.zero_grad()
        out = mod(x)[0]
        (out * r).sum().backward()
        opt.step()
        return out
    return step, mod


def compare_train(c, n_threads=1, peers=("torch",), repeats=5, min_time=0.2):
    """Training step, fastrnn against PyTorch: the kernels are checked against the
    reference (verify), then one step of each is checked against the other (outputs and
    every gradient), then both are timed alternately."""
    err = {"numpy": verify(c, True, n_threads)}
    fns = {}
    step, layer = fastrnn_train_step(c, n_threads)
    out = step().copy()
    fns["fastrnn"] = step
    if "torch" in peers:
        tstep, mod = torch_train_step(c, n_threads)
        worst = rel_err(out, tstep().detach())
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            worst = max(worst, rel_err(layer.grads[name + "_l0"],
                                       getattr(mod, name + "_l0").grad))
        err["torch"] = _check("torch (training step)", worst, c)
        fns["torch"] = tstep
    t = time_alternating(fns, repeats, min_time)
    return {"time": t, "err": err,
            "gflops": flops(c, True, need_dx=False) / t["fastrnn"] / 1e9}


def _proc_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak():
    """Restart the peak-RSS count at the current RSS and return that RSS in KiB (Linux;
    elsewhere the running ru_maxrss, which can only overstate the baseline)."""
    import gc
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                                 # VmHWM := VmRSS (Linux >= 4.0)
        return _proc_kib("VmRSS")
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak():
    try:
        return _proc_kib("VmHWM")
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _memory_child(lib, cell, T, B, H, n_threads, steps=2):
    """Run in a fresh process; prints two peaks in MiB (see train_peak_mib)."""
    if lib == "torch":
        import torch  # noqa: F401  (imported before the baseline)
    train_step = torch_train_step if lib == "torch" else fastrnn_train_step
    c = make_case(cell, T, B, H)
    cold = _reset_peak()
    tiny = train_step(make_case(cell, 2, 1, 8), n_threads)[0]
    tiny(), tiny()                  # the library's one-time start-up: code pages, thread pools
    del tiny
    warm = _reset_peak()
    step = train_step(c, n_threads)[0]
    for _ in range(steps):
        step()
    peak = _peak()
    print((peak - warm) / 1024, (peak - cold) / 1024)


def _child_env():
    """The environment for a child Python that must import this same fastrnn."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _python(code):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-c", code], env=_child_env(), check=True,
                          capture_output=True, text=True).stdout.split()


def train_peak_mib(lib, cell, T, B, H, n_threads, steps=2):
    """Peak memory of training ("fastrnn" or "torch"), in a fresh subprocess: returns
    (step, with_start_up) in MiB. After imports and input data the child runs a tiny
    model (T=2, B=1, H=8) twice, so the library's one-time start-up (code pages, thread
    pools) is paid; then it resets the peak count (/proc/self/clear_refs: VmHWM restarts at
    VmRSS), builds the model and Adam and runs ``steps`` steps. ``step`` is VmHWM minus
    that VmRSS: parameters, gradients, Adam moments, saved activations and every transient
    of a step. ``with_start_up`` counts from before the tiny model instead."""
    step, total = _python(f"from fastrnn.cli.bench import _memory_child; _memory_child("
                          f"{lib!r}, {cell!r}, {T}, {B}, {H}, {n_threads}, {steps})")
    return float(step), float(total)


def import_seconds(module="fastrnn", repeats=5):
    """Median seconds of ``import module`` in a fresh interpreter (interpreter start-up
    not counted), over ``repeats`` subprocesses."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    return float(np.median([float(_python(code)[0]) for _ in range(repeats)]))


# ---- streaming: one call per step, batch 1, state carried ----------------------------------

def lstm_steppers(p, n_threads, peers=("torch", "onnxruntime")):
    """name -> (step, to_input): ``step(x_t)`` advances that side's LSTM one step at
    batch 1, carrying its own state, and returns h_t; ``to_input`` turns a (1, I) float32
    array into the input type it takes. Sides: fastrnn (a ``Stream``), numpy
    (reference at T=1), torch (nn.LSTMCell), onnxruntime (a T=1 LSTM session fed
    initial_h/initial_c). Call torch's step with grad off (compare_stream does)."""
    from ..nn.layers import LSTM
    GH, I = p["W_ih"].shape
    H = GH // 4
    zero = np.zeros((1, H), np.float32)
    layer = LSTM(I, H, n_threads=n_threads)
    layer.load_state_dict({"weight_ih_l0": p["W_ih"], "weight_hh_l0": p["W_hh"],
                           "bias_ih_l0": p["b_ih"], "bias_hh_l0": p["b_hh"]})
    sides = {}
    state = {"numpy": (zero, zero)}
    sides["fastrnn"] = (layer.stream(1).step, lambda x: x)

    def ref(x):
        _, h, c, _ = R.lstm_forward(x[None], *state["numpy"], p["W_ih"], p["W_hh"],
                                    p["b_ih"], p["b_hh"])
        state["numpy"] = (h, c)
        return h
    sides["numpy"] = (ref, lambda x: x)
    if "torch" in peers:
        import torch
        torch.set_num_threads(n_threads)
        cell = torch_module("lstm", p, step=True)
        state["torch"] = (torch.zeros(1, H), torch.zeros(1, H))

        def tstep(x):
            state["torch"] = cell(x, state["torch"])
            return state["torch"][0]
        sides["torch"] = (tstep, torch.from_numpy)
    if "onnxruntime" in peers:
        sess = onnx_session("lstm", p, n_threads, 1, 1)
        state["onnxruntime"] = (zero[None], zero[None])

        def ostep(x):
            h, c = sess.run(["Y_h", "Y_c"], {"X": x, "initial_h": state["onnxruntime"][0],
                                             "initial_c": state["onnxruntime"][1]})
            state["onnxruntime"] = (h, c)
            return h[0]
        sides["onnxruntime"] = (ostep, lambda x: x[None])
    return sides


def compare_stream(H, n_threads=1, peers=("torch", "onnxruntime"), repeats=5, min_time=0.2,
                   check_steps=8):
    """Streaming LSTM at batch 1, I = H: the kernel is verified at T=1, then every side
    steps through the same ``check_steps`` inputs and must match the reference at each
    step; then one step of each is timed in alternating blocks (state still carried)."""
    from threadpoolctl import threadpool_limits
    c = make_case("lstm", 1, 1, H)
    err = {"kernel": verify(c, False, n_threads)}
    sides = lstm_steppers(c["params"], n_threads, peers)
    xs = np.random.default_rng(1).standard_normal((check_steps, 1, H)).astype(np.float32)
    grad_off = contextlib.nullcontext()
    if "torch" in sides:      # entered once, as a streaming loop would (faster than no_grad)
        import torch
        grad_off = torch.inference_mode()
    with threadpool_limits(n_threads, user_api="blas"), grad_off:
        outs = {name: [np.array(step(to(x))).reshape(1, H) for x in xs]
                for name, (step, to) in sides.items()}
        for name in sides:           # fastrnn against the reference, each peer against fastrnn
            if name != "fastrnn":
                a, b = (outs["fastrnn"], outs[name]) if name == "numpy" else \
                    (outs[name], outs["fastrnn"])
                err[name] = _check(name + " (streaming)",
                                   max(rel_err(u, v) for u, v in zip(a, b)), c)
        fns = {name: (lambda step=step, x=to(xs[0]): step(x)) for name, (step, to) in sides.items()}
        t = time_alternating(fns, repeats, min_time)
    return {"time": t, "err": err}


def time_blocks(fns, repeats=7, min_time=0.3, settle=0.03, rounds=None):
    """Median seconds per call of each ``fns[name]()``, each side timed as whole blocks:
    a warm-up call each, then ``repeats`` rounds in which every side, after a pause of
    ``settle`` seconds and one untimed call, runs ``k`` calls back to back under one
    clock (about ``min_time / repeats`` seconds a block). For calls of a few microseconds,
    where reading the clock around each call (:func:`time_alternating`) would add a
    visible share to every side. ``rounds``: as in :func:`time_alternating` (a round's
    figure is its block's seconds per call)."""
    return _in_rounds(fns, repeats, min_time, settle, (10, 200000), _block, rounds)


def cell_steppers(cell, p, n_threads=1, peers=("torch",)):
    """name -> (step, to_input) for one cell at batch 1, each side carrying its own state
    and returning h_t: "cell" (fastrnn's LSTMCell/GRUCell called as ``cell(x, state)``, the
    state kept by the caller as PyTorch code keeps it), "stream" (the same cell's
    ``layer.stream().step``), "numpy" (the reference at T=1), "torch" (nn.LSTMCell /
    nn.GRUCell; call it with grad off)."""
    from ..nn.layers import GRUCell, LSTMCell
    GH, I = p["W_ih"].shape
    H = GH // gate_count(cell)
    lstm = cell == "lstm"
    ours = (LSTMCell if lstm else GRUCell)(I, H, n_threads=n_threads)
    ours.load_state_dict({"weight_ih": p["W_ih"], "weight_hh": p["W_hh"],
                          "bias_ih": p["b_ih"], "bias_hh": p["b_hh"]})
    zero = np.zeros((1, H), np.float32)
    state = {"cell": (zero, zero) if lstm else zero, "numpy": (zero, zero)}

    def cstep(x):
        state["cell"] = ours(x, state["cell"])
        return state["cell"][0] if lstm else state["cell"]
    sides = {"cell": (cstep, lambda x: x), "stream": (ours._layer.stream(1).step, lambda x: x)}

    def ref(x):
        h0, c0 = state["numpy"]
        if lstm:
            _, h, c, _ = R.lstm_forward(x[None], h0, c0, p["W_ih"], p["W_hh"], p["b_ih"],
                                        p["b_hh"])
        else:
            _, h, _ = R.gru_forward(x[None], h0, p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"])
            c = c0
        state["numpy"] = (h, c)
        return h
    sides["numpy"] = (ref, lambda x: x)
    if "torch" in peers:
        import torch
        torch.set_num_threads(n_threads)
        tcell = torch_module(cell, p, step=True)
        state["torch"] = (torch.zeros(1, H), torch.zeros(1, H)) if lstm else torch.zeros(1, H)

        def tstep(x):
            state["torch"] = tcell(x, state["torch"])
            return state["torch"][0] if lstm else state["torch"]
        sides["torch"] = (tstep, torch.from_numpy)
    return sides


def compare_cell_step(cell, H, peers=("torch",), repeats=7, min_time=0.3, check_steps=8):
    """A cell stepped from Python at batch 1, I = H, one thread on every side: fastrnn's
    ``LSTMCell(x, state)`` / ``GRUCell(x, h)`` against the same layer's ``Stream.step`` and
    PyTorch's ``nn.LSTMCell`` / ``nn.GRUCell`` (``torch.set_num_threads(1)``, under
    ``torch.no_grad()``). Every side first steps through the same ``check_steps`` inputs
    and must match (fastrnn's cell and stream the numpy reference, PyTorch fastrnn's cell);
    then one step of each is timed in blocks after a short pause (:func:`time_blocks`),
    the state still carried. Returns {"time": seconds per step by side, "err": ...}."""
    from threadpoolctl import threadpool_limits
    c = make_case(cell, 1, 1, H)
    sides = cell_steppers(cell, c["params"], 1, peers)
    xs = np.random.default_rng(1).standard_normal((check_steps, 1, H)).astype(np.float32)
    grad_off = contextlib.nullcontext()
    if "torch" in sides:
        import torch
        grad_off = torch.no_grad()
    err = {}
    with threadpool_limits(1, user_api="blas"), grad_off:
        outs = {name: [np.array(step(to(x))).reshape(1, H) for x in xs]
                for name, (step, to) in sides.items()}
        for name in sides:
            if name != "numpy":
                a, b = (outs[name], outs["numpy"]) if name != "torch" else \
                    (outs[name], outs["cell"])
                err[name] = _check(f"{name} ({cell} cell steps)",
                                   max(rel_err(u, v) for u, v in zip(a, b)), c)
        fns = {name: (lambda step=step, x=to(xs[0]): step(x)) for name, (step, to) in sides.items()
               if name != "numpy"}
        t = time_blocks(fns, repeats, min_time)
    return {"time": t, "err": err}


# ---- contention: 2 threads while something else wants the cores (issue 14) --------------

CONDITIONS = ("idle", "busy", "pool")   # idle; one core busy (another process spinning);
                                        # an ONNX Runtime pool running in this process


def layer_forward(c, n_threads):
    """Whole-sequence inference through a fastrnn layer, as a user calls it:
    ``layer(x, state)`` with the case's h0 (and c0 = h0, as :func:`_forward`); the callable
    returns the outputs (T, B, H)."""
    layer = case_layer(c, n_threads)
    h0 = c["h0"][None]
    state = (h0, h0) if c["cell"] == "lstm" else h0
    return lambda: layer(c["x"], state)[0]


def onnx_export_forward(c, n_threads):
    """Whole-sequence inference in ONNX Runtime of the case's layer exported by fastrnn's
    own ``to_onnx`` (``with_state=True``; its parity check on), in a session from
    :func:`ort_session`; the callable returns the graph's ``out`` (T, B, H)."""
    from ..interop.onnx_export import to_onnx
    sess = ort_session(to_onnx(case_layer(c, 1), with_state=True).SerializeToString(),
                       n_threads)
    feed = {"x": c["x"], "h0": c["h0"][None]}
    if c["cell"] == "lstm":
        feed["c0"] = c["h0"][None]
    return lambda: sess.run(["out"], feed)[0]


@contextlib.contextmanager
def busy_core(start=0.3):
    """Another process spinning on one core (``while True: pass``) for the duration of the
    block; killed and reaped on the way out, whatever happens inside. ``start``: seconds
    given to it to start spinning before the block runs."""
    import subprocess
    import sys
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(start)
        if hog.poll() is not None:
            raise RuntimeError(f"the busy-core process exited at once (status {hog.returncode})")
        yield hog
    finally:
        hog.kill()
        hog.wait()


@contextlib.contextmanager
def running_in_background(run, start_timeout=60.0):
    """``run()`` called again and again in a background thread of this process for the
    duration of the block (an ONNX Runtime session's inferences: its intra-op pool busy
    beside the code timed in the block). Yields a dict whose "runs" counts the calls done;
    on the way out the thread is stopped (an Event) and joined, whatever happens inside,
    and an exception raised in it is raised here."""
    import threading
    stop, started = threading.Event(), threading.Event()
    state = {"runs": 0, "error": None}

    def loop():
        try:
            while not stop.is_set():
                run()
                state["runs"] += 1
                started.set()
        except BaseException as exc:         # reported by the caller's thread
            state["error"] = exc
        finally:
            started.set()
    worker = threading.Thread(target=loop, name="fastrnn-bench-load", daemon=True)
    worker.start()
    try:
        if not started.wait(start_timeout):
            raise RuntimeError(f"the background load made no call in {start_timeout} s")
        if state["error"] is not None:
            raise state["error"]
        yield state
    finally:
        stop.set()
        worker.join()
    if state["error"] is not None:
        raise state["error"]


def compare_contention(c, n_threads=2, peers=("torch", "onnxruntime"), repeats=5,
                       min_time=0.2, settle=0.03):
    """Whole-sequence inference at ``n_threads`` under three conditions (:data:`CONDITIONS`):

    * "idle": nothing else runs; fastrnn is also timed at one thread here, the yardstick
      of the targets ("fastrnn under load within 1.3x of its own 1-thread idle time").
    * "busy": another process spins on one core for the whole timing (:func:`busy_core`).
    * "pool": an ONNX Runtime session of the same model with ``n_threads`` intra-op
      threads runs inferences continuously in a background thread of this process
      (:func:`running_in_background`) while fastrnn and PyTorch are timed; ONNX Runtime
      itself is not timed there. Needs onnxruntime; skipped (None) without it.

    Sides: fastrnn's layer (``layer(x, state)``, :func:`layer_forward`), ONNX Runtime
    running that layer as exported by ``to_onnx`` (:func:`onnx_export_forward`) and
    PyTorch (:func:`torch_forward`), each at ``n_threads``. Before any timing fastrnn (both
    thread counts) is checked against the numpy reference and each peer against fastrnn.
    Each condition is one :func:`time_alternating` (blocks after a ``settle`` pause, so in
    the idle condition no side runs beside another library's spinning threads).

    Returns {"time": {condition: {side: s} or None}, "spread": {condition: max/min of
    fastrnn's ``repeats`` per-round medians (:func:`spread`) or None}, "err": {side:
    rel}, "load_runs": inferences the background pool ran}. Sides are "fastrnn",
    "fastrnn 1t" (idle only), "onnxruntime" (idle, busy) and "torch"."""
    ref = _forward(R, c)[0]
    ours = layer_forward(c, n_threads)
    one = layer_forward(c, 1)
    out = np.array(ours())
    err = {"numpy": _check("the numpy reference", max(rel_err(out, ref), rel_err(one(), ref)),
                           c)}
    builders = {"torch": torch_forward, "onnxruntime": onnx_export_forward}
    others = {}
    for name in peers:
        others[name] = builders[name](c, n_threads)
        err[name] = _check(name, rel_err(others[name](), out), c)
    result = {"time": dict.fromkeys(CONDITIONS), "spread": dict.fromkeys(CONDITIONS),
              "err": err, "load_runs": 0}

    def timed(condition, fns):
        rounds = {}
        result["time"][condition] = time_alternating(fns, repeats, min_time, settle, rounds)
        result["spread"][condition] = spread(rounds["fastrnn"])

    timed("idle", {"fastrnn": ours, "fastrnn 1t": one, **others})
    with busy_core():
        timed("busy", {"fastrnn": ours, **others})
    if "onnxruntime" in peers:
        load = onnx_export_forward(c, n_threads)        # a session of its own
        with running_in_background(load) as state:
            timed("pool", {"fastrnn": ours, **{k: v for k, v in others.items()
                                               if k != "onnxruntime"}})
        result["load_runs"] = state["runs"]
    return result
