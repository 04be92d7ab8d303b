"""os.fork while fastrnn is busy in other threads: the child must neither hang nor compute
from half-copied weights.

* Forks at random moments while a thread reloads the weights (``load_state_dict``): before,
  children inherited an odd version count and a writer's lock held by a thread that does
  not exist in the child (19 of 40 hung in their first predict). Now fork waits for a copy
  under way (fastrnn.kernels._guard), so every child's first predict and stream step match the old
  or the new weights exactly, and the child can load weights itself.
* A Stream made (and stepped on two OpenMP threads) before the fork: libgomp's pool does
  not survive fork, and the child hung in its first step. Now it steps on one thread
  there, bit for bit as the parent does on two; one forked while another thread was
  stepping it gets a fresh lock.

Each attack runs in a fresh interpreter; the parent kills a child that does not finish in
time and counts it as hung."""
import json

import pytest

from _isolated import describe, run_python

# shared by the scripts: fork, let the child run `body` (exit code = its verdict), wait
# for it with a deadline and kill it if it hangs
FORK_HELPER = r"""
import os, time
def fork_and_wait(body, timeout=10.0):    # a child needs ~0.05 s
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            code = body()
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return "hung"
        time.sleep(0.002)
"""

RELOADS = FORK_HELPER + r"""
import copy, json, random, sys, threading
import numpy as np
import fastrnn
n_forks = int(sys.argv[1])
# large enough that a reload takes about a millisecond: forks land inside copies
m = fastrnn.SequenceModel("lstm", input_size=16, hidden_size=256, output_size=4,
                          task="per_step_classification", num_layers=2, seed=0, n_threads=1)
x = np.random.default_rng(1).standard_normal((2, 5, 16)).astype(np.float32)
xt = x[0, 0]
A = m.state_dict()
rng = np.random.default_rng(2)
B = {k: (v + rng.uniform(-0.2, 0.2, v.shape)).astype(v.dtype) for k, v in A.items()}
want = []
for version in (A, B):
    ref = copy.deepcopy(m)
    ref.rnn.n_threads = 1           # as the child runs (a copy comes back with the default)
    ref.load_state_dict(version)
    want.append((ref.predict(x).tobytes(), ref.rnn.stream().step(xt).tobytes()))
made_before = m.rnn.stream()        # never stepped here: zero state in the child too
stop, writes, odd_at_fork = [], [0], [0]

def writer():
    k = 0
    while not stop:
        k ^= 1
        m.load_state_dict(B if k else A)
        writes[0] += 1

def child():
    p = m.predict(x).tobytes()
    got = (p, made_before.step(xt).tobytes())
    got_new = (p, m.rnn.stream().step(xt).tobytes())
    if got not in want or got_new not in want:
        return 3                    # a mix of the two versions
    m.load_state_dict(A)            # the writer's lock is usable here
    if m.predict(x).tobytes() != want[0][0]:
        return 4
    return 0

threading.Thread(target=writer, daemon=True).start()
while writes[0] < 3:
    time.sleep(0.001)
random.seed(0)
codes = []
for i in range(n_forks):
    time.sleep(random.uniform(0, 0.003))
    odd_at_fork[0] += m._guard.gen & 1       # a copy under way just before the fork
    codes.append(fork_and_wait(child))
    if codes[-1] == "hung":
        break                       # one is enough to fail: don't wait for more
stop.append(1)
print("result", json.dumps([len(codes), codes.count(0), codes.count("hung"),
                            sorted(set(map(str, codes))), writes[0], odd_at_fork[0]]))
"""


def _fork_reloads(n):
    proc = run_python(RELOADS, n, timeout=60 + n)
    assert proc.returncode == 0, describe(proc)
    tried, held, hung, codes, writes, odd = json.loads(proc.stdout.split("result ")[1])
    assert int(held) == n, f"{held} of {tried} children held ({hung} hung, then stopped; " \
        f"exit codes {codes}; 3: a mix, 4: reload in the child)"
    print(f"forks during reloads: {tried} tried, {held} held ({writes} reloads, "
          f"{odd} forks asked for during a copy)")


def test_forks_during_reloads_give_children_one_version_that_they_can_reload():
    _fork_reloads(40)


@pytest.mark.long
def test_forks_during_reloads_long():
    _fork_reloads(400)


STREAM = FORK_HELPER + r"""
import sys, threading
import numpy as np
import fastrnn
from fastrnn.kernels import _blas
_blas.set_min_parallel_work(0)            # two threads even at this size
B = int(sys.argv[1])
layer = fastrnn.LSTM(32, 64, num_layers=2, seed=0, n_threads=2)
s = layer.stream(B)
x = np.random.default_rng(0).standard_normal((10, B, 32)).astype(np.float32)
for t in range(5):
    s.step(x[t])                          # the parent runs OpenMP regions: a pool exists
threads_here = s.n_threads
r, w = os.pipe()

def child():
    ys = b"".join(s.step(x[t]).tobytes() for t in range(5, 10))
    os.write(w, bytes([s.n_threads]) + ys)
    return 0
code = fork_and_wait(child)
os.close(w)                               # a killed child's pipe must read as empty
got = os.read(r, 1 << 20)
want = b"".join(s.step(x[t]).tobytes() for t in range(5, 10))
print("result", code, threads_here, got[0] if got else None, got[1:] == want, flush=True)
if code != 0:
    sys.exit(0)

# forked while another thread is inside a step of the same stream: the child's copy of the
# lock may be held by a thread that does not exist there
stop = []
def stepper():
    while not stop:
        s.step(x[0])
t = threading.Thread(target=stepper, daemon=True)
t.start()
def child2():
    try:
        s.step(x[0])
    except RuntimeError as exc:           # forked while that thread wrote the state
        if "reset()" not in str(exc):
            return 5
        s.reset()
        s.step(x[0])
    return 0
codes = []
for _ in range(int(sys.argv[2])):
    codes.append(fork_and_wait(child2))
    if codes[-1] == "hung":
        break
stop.append(1)
t.join()
print("busy", len(codes), codes.count(0), sorted(set(map(str, codes))))
"""


@pytest.mark.parametrize("batch", [1, 3])
def test_a_stream_made_before_fork_steps_in_the_child_with_the_same_bits(batch):
    """Before: the child hung in its first step (libgomp's pool; killed here after 30 s)."""
    import fastrnn
    n_busy = 20
    proc = run_python(STREAM, batch, n_busy, timeout=200)
    assert proc.returncode == 0, describe(proc)
    code, threads_parent, threads_child, same = proc.stdout.split("result ")[1].split()[:4]
    assert code == "0", f"the child {'hung' if code == 'hung' else 'failed: ' + code}"
    assert threads_parent == ("2" if fastrnn.openmp_enabled() else "1")
    assert threads_child == "1" and same == "True", proc.stdout
    tried, held, codes = proc.stdout.split("busy ")[1].split(" ", 2)
    assert int(held) == n_busy, f"forks while another thread steps: {held} of " \
                                              f"{tried} children held, exit codes {codes}"
