"""Workload for tests/training/test_fit_integrity.py: ``fit`` interrupted at random moments by a
SIGTERM whose handler calls ``sys.exit``, as a service's shutdown handler does.

Usage: ``python _interrupted_fit.py TRIALS SEED``. Prints one JSON line
``{"trials": n, "interrupted": k, "whole": w, "mixed": [trial, ...]}``: after every trial
(interrupted or not) the model's parameters and the optimizer's state must equal those
after exactly one step of the uninterrupted run (``whole`` counts them, ``mixed`` lists the
others). The model has many parameters and little computation (a large vocabulary, a short
batch), so a good share of the signals land inside an update.
"""
import json
import os
import signal
import sys
import threading
import time

import numpy as np

import fastrnn
from fastrnn import optim

STEPS = 12
VOCAB = 8000
armed = False


def on_sigterm(signum, frame):
    if armed:
        sys.exit(3)


def model():
    return fastrnn.SequenceModel("gru", vocab_size=VOCAB, embedding_dim=16, hidden_size=16,
                                 task="next_token", seed=0)


def state(m, opt):
    """Bytes of every parameter and of the optimizer's state."""
    parts = [p.tobytes() for p, _ in m.parameters()]
    parts += [b.tobytes() for name in sorted(opt.state) for b in opt.state[name]]
    return b"".join(parts) + str(opt.steps).encode()


class Recording(optim.Adam):
    """Adam that records the model's state after each of its steps."""

    def __init__(self, m, *a, **k):
        super().__init__(m.parameters(), *a, **k)
        self.model, self.snapshots = m, []

    def step(self):
        super().step()
        self.snapshots.append(state(self.model, self))


def fit(m, opt, x, y):
    m.fit(x, y, epochs=STEPS, batch_size=2, optimizer=opt, max_steps=STEPS, shuffle=False,
          progress=False)


def main(trials, seed):
    global armed
    signal.signal(signal.SIGTERM, on_sigterm)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, VOCAB, (2, 3))
    y = rng.integers(0, VOCAB, (2, 3))
    reference = model()
    opt = Recording(reference, lr=0.01)
    snapshots = {state(reference, opt): 0}
    for _ in range(2):                  # the second run's time: warm, and not recording
        warm = model()
        t0 = time.perf_counter()
        fit(warm, optim.Adam(warm.parameters(), lr=0.01), x, y)
        duration = time.perf_counter() - t0
    fit(reference, opt, x, y)
    snapshots.update({s: i + 1 for i, s in enumerate(opt.snapshots)})
    assert len(snapshots) == STEPS + 1
    interrupted, whole, mixed = 0, 0, []
    pid = os.getpid()
    for trial in range(trials):
        m = model()
        opt = optim.Adam(m.parameters(), lr=0.01)
        timer = threading.Timer(rng.uniform(0, duration), os.kill, (pid, signal.SIGTERM))
        try:
            armed = True
            timer.start()
            try:
                fit(m, opt, x, y)
            except SystemExit:
                interrupted += 1
            finally:
                armed = False
        except SystemExit:              # arrived just after fit returned: nothing to undo
            pass
        timer.cancel()
        timer.join()
        if state(m, opt) in snapshots:
            whole += 1
        else:
            mixed.append(trial)
    print(json.dumps({"trials": trials, "interrupted": interrupted, "whole": whole,
                      "mixed": mixed}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
