"""Command line: ``fastrnn demo`` and ``fastrnn bench``.

``fastrnn demo`` needs no arguments and no data: it runs every cell (vanilla RNN, LSTM,
peephole LSTM, coupled-gate LSTM, GRU in both forms) forward and backward on the
compiled kernels, checks each against the numpy reference, and times a mid-sized case
against numpy.
"""
import argparse
import sys
import time

import numpy as np


def _demo(args):
    import fastrnn
    from fastrnn import functional as F, reference as R
    from fastrnn.benchmark import compare, machine_info, make_case

    info = machine_info()
    print(f"fastrnn {fastrnn.__version__}: {info['cpu']}, {info['cores']} cores ({info['simd']}), "
          f"OpenMP {'on' if fastrnn.openmp_enabled() else 'OFF'}, "
          f"{fastrnn.effective_n_threads(args.threads)} thread(s)\n")
    print("1. Every cell against the numpy reference (float64, T=20, B=4, I=8, H=24, ragged lengths)")
    rng = np.random.default_rng(0)
    T, B, I, H = 20, 4, 8, 24
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((B, H)) * 0.1, rng.standard_normal((B, H)) * 0.1
    dhs = rng.standard_normal((T, B, H))
    lengths = np.array([20, 13, 1, 0])
    variants = [("rnn tanh", "rnn", 1, {"nonlinearity": "tanh"}),
                ("rnn relu", "rnn", 1, {"nonlinearity": "relu"}),
                ("lstm", "lstm", 4, {}),
                ("lstm peephole", "lstm", 4, {"p_i": 0, "p_f": 0, "p_o": 0}),
                ("lstm coupled", "lstm", 3, {"coupled": True}),
                ("gru (reset after)", "gru", 3, {"reset_after": True}),
                ("gru (reset before)", "gru", 3, {"reset_after": False})]
    worst = 0.0
    for name, cell, G, kw in variants:
        kw = {k: (rng.standard_normal(H) * 0.3 if k.startswith("p_") else v) for k, v in kw.items()}
        s = 1 / np.sqrt(H)
        W = [rng.uniform(-s, s, shape) for shape in ((G * H, I), (G * H, H), (G * H,), (G * H,))]
        results = []
        for mod, extra in ((R, {}), (F, {"n_threads": args.threads})):
            if cell == "lstm":
                out = mod.lstm_forward(x, h0, c0, *W, lengths=lengths, **kw, **extra)
                back = mod.lstm_backward(dhs, None, None, out[-1])
            else:
                fwd = mod.rnn_forward if cell == "rnn" else mod.gru_forward
                out = fwd(x, h0, *W, lengths=lengths, **kw, **extra)
                back = getattr(mod, cell + "_backward")(dhs, None, out[-1])
            results.append(list(out[:-1]) + list(back[:-1]) + [back[-1][k] for k in sorted(back[-1])])
        err = max(float(np.abs(a - b).max()) for a, b in zip(*results))
        worst = max(worst, err)
        print(f"   {name:<20} outputs and all gradients: max |fastrnn - numpy| = {err:.1e}")
    if worst > 1e-9:
        print("FAILED: fastrnn disagrees with the reference")
        return 1
    print("\n2. Speed against the numpy reference (float32, T=100, I=H=128, checked first)")
    print(f"   {'case':<28} {'fastrnn':>10} {'numpy':>10} {'speed-up':>9}")
    for cell in ("lstm", "gru"):
        for B, train in ((1, False), (32, False), (32, True)):
            r = compare(make_case(cell, 100, B, 128), train=train, n_threads=args.threads or 1,
                        repeats=3, min_time=0.05)
            label = f"{cell} {'fwd+bwd' if train else 'forward'} B={B}"
            print(f"   {label:<28} {r['fastrnn'] * 1e3:8.2f}ms {r['numpy'] * 1e3:8.2f}ms "
                  f"{r['numpy'] / r['fastrnn']:8.2f}x")
    print("\nFull benchmark: fastrnn bench (or python bench/bench_core.py)")
    return 0


def _bench(args):
    from fastrnn.benchmark import core_table
    core_table(threads=tuple(args.threads_list), out=lambda line: print(line, flush=True))
    return 0


def _info(args):
    import fastrnn
    from fastrnn.benchmark import machine_info
    info = machine_info()
    print(f"fastrnn {fastrnn.__version__}")
    for k in ("cpu", "cores", "simd", "blas", "openmp", "python", "numpy"):
        print(f"  {k:<8} {info[k]}")
    print(f"  threads  {fastrnn.effective_n_threads()} (OMP_NUM_THREADS, capped at the CPUs)")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="fastrnn", description="fast CPU recurrent networks")
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="check every cell against numpy and time a few cases")
    d.add_argument("--threads", type=int, default=1, help="OpenMP threads (default 1)")
    d.set_defaults(func=_demo)
    b = sub.add_parser("bench", help="the core benchmark against the numpy reference")
    b.add_argument("--threads", dest="threads_list", type=int, nargs="+", default=[1, 2])
    b.set_defaults(func=_bench)
    i = sub.add_parser("info", help="versions, BLAS, OpenMP and threads")
    i.set_defaults(func=_info)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rc = args.func(args)
    if args.command in ("demo", "bench"):
        print(f"\n({time.perf_counter() - t0:.1f} s)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
