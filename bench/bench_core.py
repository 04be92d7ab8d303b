"""Core-engine benchmark: fastrnn kernels against the numpy reference (issue 2 cases).

    python bench/bench_core.py [--threads 1 2] [--write]

T=100, input = hidden = 256, float32. LSTM and GRU: forward at batch 1 and 64,
forward+backward at batch 32. Every fastrnn result is checked against the reference
before it is timed; both sides get the same number of BLAS/OpenMP threads and are timed
alternately. --write replaces the core table in bench/RESULTS.md.
"""
import argparse
import os
import re
import sys

from fastrnn.cli.bench import core_table

BEGIN, END = "<!-- core:begin -->", "<!-- core:end -->"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = ap.parse_args(argv)
    lines = core_table(threads=args.threads, out=lambda line: print(line, flush=True))
    if args.write:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
        with open(path) as f:
            text = f.read()
        block = "\n".join([BEGIN] + lines + [END])
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda m: block, text, flags=re.S)
        with open(path, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
