"""Memory workloads in a process of their own: ``python _rss_workload.py NAME=CALLS ...``.

Each workload in turn warms up, makes CALLS calls and records its RSS; prints one JSON
line ``{NAME: {"rss": [after warm-up, then 10 checkpoints] (bytes), "calls": CALLS}}``.
Used by tests/robustness/test_memory.py.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import fastrnn  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def workloads():
    """name -> a function making one call (each fresh objects only where a service would)."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    layer = fastrnn.LSTM(32, 64, num_layers=2, seed=0, n_threads=1)
    stream = layer.stream()
    x1 = rng.standard_normal(32).astype(f32)

    from fastrnn.kernels import _blas
    _blas.set_min_parallel_work(0)          # the OpenMP region on every step, as in tests
    wide = fastrnn.GRU(32, 128, seed=0, n_threads=2)
    stream2 = wide.stream(2)
    x2 = rng.standard_normal((2, 32)).astype(f32)

    xb = rng.standard_normal((4, 32)).astype(f32)
    state = layer.initial_state(4)

    # one thread where the workload is not about threads: on a busy machine, OpenMP
    # threads waiting for a core make the run slow, not the figure different
    model = fastrnn.SequenceModel("gru", input_size=8, hidden_size=32, output_size=5,
                                  task="per_step_classification", seed=0, n_threads=1)
    xs = rng.standard_normal((16, 12, 8)).astype(f32)
    ys = rng.integers(0, 5, (16, 12))
    lengths = rng.integers(1, 13, 16)
    mstate = model.initial_state(3)

    rnn = fastrnn.RNN(8, 32, num_layers=2, bidirectional=True, seed=0, n_threads=1)
    xt = rng.standard_normal((10, 4, 8)).astype(f32)

    def stream_step():
        stream.step(x1)

    def stream_threads():
        stream2.step(x2)

    def layer_step():
        layer.step(xb, state)

    def model_step():
        model.step(xs[:3, 0], mstate)

    def predict():
        model.predict(xs, lengths, batch_size=8)

    def forward_backward():
        rnn.zero_grad()
        out, _, tape = rnn.forward(xt, None, [10, 3, 0, 7])
        rnn.backward(out, None, tape)

    fit_model = fastrnn.SequenceModel("lstm", input_size=8, hidden_size=16, output_size=5,
                                      task="per_step_classification", seed=0, n_threads=1)

    def fit():          # one call: 16 updates (batch_size 1), with lengths and clipping
        fit_model.fit(xs, ys, lengths=lengths, epochs=1, batch_size=1, progress=False,
                      clip_norm=1.0)

    return {"stream": (stream_step, 1), "stream_threads": (stream_threads, 1),
            "layer_step": (layer_step, 1), "model_step": (model_step, 1),
            "predict": (predict, 1), "forward_backward": (forward_backward, 1),
            "fit": (fit, 16)}


def measure(fn, per_call, calls):
    """Warm up, then ``calls`` calls (fit counts its updates); RSS after the warm-up and at
    ten checkpoints."""
    n = max(1, calls // per_call)
    for _ in range(max(10, n // 10)):       # warm-up: a tenth of the run
        fn()
    samples = [rss()]
    for k in range(10):
        for _ in range(n // 10):
            fn()
        samples.append(rss())
    return {"rss": samples, "calls": n * per_call}


def main(args):
    """``NAME=CALLS ...``: each workload in turn, one JSON line {name: result}."""
    table = workloads()
    out = {}
    for arg in args:
        name, calls = arg.split("=")
        fn, per_call = table[name]
        out[name] = measure(fn, per_call, int(calls))
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
