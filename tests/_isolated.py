"""Run a piece of code in a fresh interpreter, for tests whose failure could be a crash
(a segfault must fail the test, not kill pytest) or a hang (a timeout fails it)."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code, *args, timeout=60):
    """``python -c code args...`` from the repository root: the CompletedProcess (text).
    A hang raises subprocess.TimeoutExpired (the child is killed)."""
    env = dict(os.environ, PYTHONFAULTHANDLER="1")    # a crash prints its stack
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def describe(proc):
    """The end of a child's output, for an assertion message."""
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-2000:]}\n--- stderr\n" \
           f"{proc.stderr[-3000:]}"
