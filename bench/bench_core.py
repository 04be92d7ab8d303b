"""Core-engine benchmark: fastrnn kernels against the numpy reference (issue 2 cases).

    python bench/bench_core.py [--threads 1 2] [--write]

T=100, input = hidden = 256, float32. LSTM and GRU: forward at batch 1 and 64,
forward+backward at batch 32. Every fastrnn result is checked against the reference
before it is timed; both sides get the same number of BLAS/OpenMP threads. --write
replaces the core table in bench/RESULTS.md.
"""
import argparse
import datetime
import os
import re
import sys

from fastrnn.benchmark import compare, machine_info, make_case, sgemm_peak

CASES = [  # (cell, batch, train, target ratio vs numpy at one thread)
    ("lstm", 1, False, 2.5), ("lstm", 64, False, 1.6), ("lstm", 32, True, 2.0),
    ("gru", 1, False, 2.5), ("gru", 64, False, 1.6), ("gru", 32, True, 2.0),
]
T, H = 100, 256
BEGIN, END = "<!-- core:begin -->", "<!-- core:end -->"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = ap.parse_args(argv)
    info = machine_info()
    lines = [f"Machine: {info['cpu']}, {info['cores']} cores ({info['simd']}); "
             f"BLAS: {info['blas']}; OpenMP: {info['openmp']}; numpy {info['numpy']}, "
             f"Python {info['python']}; {datetime.date.today()}", ""]
    peaks = {n: sgemm_peak(n) for n in args.threads}
    lines.append("sgemm 1024^3 peak (numpy's BLAS): " +
                 ", ".join(f"{n} thread{'s' * (n > 1)}: {p:.1f} GFLOP/s" for n, p in peaks.items()))
    lines += ["", "| cell | case | threads | fastrnn ms | numpy ms | speed-up | target (1 thread) "
              "| GFLOP/s | % of sgemm peak | max rel err |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for n in args.threads:
        for cell, B, train, target in CASES:
            c = make_case(cell, T, B, H)
            r = compare(c, train=train, n_threads=n)
            ratio = r["numpy"] / r["fastrnn"]
            what = f"{'fwd+bwd' if train else 'forward'} T={T} B={B} H={H}"
            ok = "" if n != 1 else (f"{target}x {'met' if ratio >= target else 'MISSED'}")
            row = (f"| {cell} | {what} | {n} | {r['fastrnn'] * 1e3:.2f} | {r['numpy'] * 1e3:.2f} "
                   f"| {ratio:.2f}x | {ok} | {r['gflops']:.1f} | {100 * r['gflops'] / peaks[n]:.0f}% "
                   f"| {r['max_rel_err']:.1e} |")
            lines.append(row)
            print(row, flush=True)
    if args.write:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
        text = open(path).read() if os.path.exists(path) else "# Benchmark results\n\n"
        block = "\n".join([BEGIN, "Command: `python bench/bench_core.py --write`", ""] + lines + [END])
        if BEGIN in text:
            text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda m: block, text, flags=re.S)
        else:
            text += "\n## Core kernels against the numpy reference\n\n" + block + "\n"
        with open(path, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
