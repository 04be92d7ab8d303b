"""Memory stays flat: resident set size over many calls after a warm-up.

The workloads run in a fresh Python process (tests/_rss_workload.py), so that nothing the
rest of the test session allocates or frees moves the figure. Each warms up (its first
calls allocate thread pools, BLAS buffers, numpy caches), reads the RSS, makes the
measured calls and reads the RSS again at ten checkpoints; the growth is the largest
checkpoint minus the reading after the warm-up.

The bound, 1 MiB of growth after warm-up: a leak of one output array per call (the
smallest here is 64 float32s, 256 bytes of data plus a ~100-byte header) would be 7 MB
over the 20,000 stream steps of the short run and 35 MB over the 100,000 of the long one;
a leaked reference to anything per call is at least 16 bytes, 1.6 MB over 100,000; a
leaked forward cache (forward_backward, 500 calls in the short run) tens of KB per call.
The noise measured here is at most 52 KiB (the fit workload: glibc and pymalloc keep some
freed pages). The sanitizer and valgrind runs (tools/sanitize.sh) cover leaks too small
or too rare to show in RSS.
"""
import json
import os
import subprocess
import sys

import pytest

BOUND = 1 << 20                 # bytes of RSS growth allowed after the warm-up
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # tests/: _rss_workload.py
# workload -> (calls in the short run, in the long run): the 100,000 for the cheap
# per-call paths; fit steps cost ~1 ms each
CALLS = {"stream": (20_000, 100_000), "stream_threads": (10_000, 100_000),
         "layer_step": (10_000, 100_000), "model_step": (10_000, 100_000),
         "predict": (2_000, 100_000), "forward_backward": (500, 30_000),
         "fit": (1_000, 20_000)}

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"),
                                reason="RSS is read from /proc/self/statm (Linux)")


def run_workloads(which):
    """{name: {"rss": [...], "calls": n}} for every workload, the short or the long run,
    all in one fresh process."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(HERE)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                   if p]))
    args = [f"{name}={calls[which]}" for name, calls in CALLS.items()]
    out = subprocess.run([sys.executable, os.path.join(HERE, "_rss_workload.py"), *args],
                         capture_output=True, text=True, env=env, timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def short_run():
    return run_workloads(0)


@pytest.fixture(scope="module")
def long_run():
    return run_workloads(1)


def check(name, result):
    samples, calls = result["rss"], result["calls"]
    growth = max(samples[1:]) - samples[0]
    assert growth < BOUND, (f"{name}: RSS grew {growth / 1024:.0f} KiB over {calls} calls "
                            f"after warm-up (samples, KiB: {[s // 1024 for s in samples]})")
    return growth


@pytest.mark.parametrize("name", list(CALLS))
def test_rss_is_flat(name, short_run):
    check(name, short_run[name])


@pytest.mark.long
@pytest.mark.parametrize("name", list(CALLS))
def test_rss_is_flat_long(name, long_run):
    growth = check(name, long_run[name])
    print(f"{name}: {long_run[name]['calls']} calls, RSS growth {growth / 1024:.0f} KiB")
