"""One model shared by many threads, weights replaced while they read, models sent to other
processes.

* Threads calling ``predict``, ``step``, ``encode`` and streams on one shared model get
  results bit-identical to serial calls (mismatches counted; there must be none).
* A writer replacing the weights (``load_state_dict``) while readers run: every reader
  result equals, bit for bit, the serial result of the old weights or of the new ones,
  never a mix (fastrnn.kernels._guard). A deterministic interleaving (a write made from inside a
  reader's computation, between two layers) shows the retry at work, and that the check
  catches a mix when the guard is bypassed.
* Models, layers and cells pickle as validated model-file bytes: unpickling references
  ``fastrnn.io.load_bytes`` and nothing else of fastrnn; a process pool gets the same
  predictions.

The soaks run a short, bounded time here and longer under ``pytest --long``.
"""
import contextlib
import copy
import io as _io
import multiprocessing
import operator
import pickle
import threading
import time

import numpy as np
import pytest

import fastrnn
from fastrnn import GRU, LSTM, RNN, GRUCell, LSTMCell, SequenceModel

f32 = np.float32
SOAK_SHORT, SOAK_LONG = 1.5, 30.0       # seconds of threaded soak: CI, pytest --long


def _model(cell="lstm", seed=0, **kw):
    kw = dict(dict(input_size=6, hidden_size=16, output_size=4, task="per_step_classification",
                   num_layers=2), **kw)
    return SequenceModel(cell, seed=seed, **kw)


def _same(a, b):
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if a is None or b is None:
        return a is b
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _run_threads(n, target, args=()):
    errors = []

    def wrapped(i):
        try:
            target(i, *args)
        except BaseException as exc:            # surfaced in the main thread below
            errors.append(exc)
    threads = [threading.Thread(target=wrapped, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# ---- many readers, no writer: bit-identical to serial -------------------------------------

@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_threads_sharing_a_model_match_serial_calls(cell):
    m = _model(cell, bidirectional=False)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((3, 9, 6)).astype(f32) for _ in range(6)]
    lengths = [rng.integers(0, 10, 3) for _ in range(6)]
    serial = [(m.predict(x, l), m.encode(x, l), m.predict(x, batch_size=2)) for x, l in
              zip(xs, lengths)]
    steps = []
    for x in xs:
        st, ys = None, []
        for t in range(x.shape[1]):
            y, st = m.step(x[:, t], st)
            ys.append(y)
        steps.append(np.stack(ys))
    mismatches = []

    def reader(i):
        for _ in range(10):
            k = (i + _) % len(xs)
            got = (m.predict(xs[k], lengths[k]), m.encode(xs[k], lengths[k]),
                   m.predict(xs[k], batch_size=2))
            if not _same(got, serial[k]):
                mismatches.append(("predict", k))
            st, ys = None, []
            for t in range(xs[k].shape[1]):
                y, st = m.step(xs[k][:, t], st)
                ys.append(y)
            if not _same(np.stack(ys), steps[k]):
                mismatches.append(("step", k))
    _run_threads(4, reader)
    assert mismatches == []


def test_threads_with_their_own_streams_on_one_layer_match_serial():
    layer = LSTM(6, 32, num_layers=2, seed=0)
    xs = np.random.default_rng(2).standard_normal((4, 60, 1, 6)).astype(f32)
    serial = []
    for seq in xs:
        s = layer.stream()
        serial.append(np.stack([s.step(x) for x in seq]))
    results = [None] * len(xs)

    def reader(i):
        s = layer.stream()
        results[i] = np.stack([s.step(x) for x in xs[i]])
    _run_threads(len(xs), reader)
    assert sum(not _same(a, b) for a, b in zip(results, serial)) == 0


def test_inference_in_one_thread_never_switches_dropout_on_in_another():
    """__call__ used to flip layer.training off and back around its forward: with another
    thread inside a training forward, or a second __call__ in flight, inference could run
    with dropout on (and the training forward without it). The mode is now an argument."""
    layer = LSTM(5, 16, num_layers=3, dropout=0.5, seed=0)      # training mode
    x = np.random.default_rng(0).standard_normal((8, 2, 5)).astype(f32)
    want = layer(x)[0]
    bad = []

    def worker(i):
        for _ in range(60):
            if i == 0:
                layer.forward(x)                # training: dropout, random masks
            elif not _same(layer(x)[0], want):
                bad.append(i)
    _run_threads(3, worker)
    assert bad == [] and layer.training


# ---- a writer replacing weights: all-old or all-new, deterministic interleaving -----------

def _two_versions(m):
    """(state_dict A, state_dict B): the model's weights and a clearly different set."""
    a = m.state_dict()
    rng = np.random.default_rng(99)
    b = {k: (v + rng.uniform(-0.3, 0.3, v.shape)).astype(v.dtype) for k, v in a.items()}
    return a, b


def _results_for(m, state, fn):
    m.load_state_dict(state)
    return fn()


@pytest.mark.parametrize("entry", ["predict", "evaluate", "encode", "model_step",
                                   "layer_call", "layer_step"])
def test_a_write_between_two_layers_is_never_seen_half_done(entry):
    """A replacement made from inside a reader's computation, after its first layer ran:
    the reader notices and recomputes, so it returns the all-new result. With the guard
    bypassed, the same interleaving returns a mix: the check can fail."""
    m = _model("gru")
    x = np.random.default_rng(3).standard_normal((2, 7, 6)).astype(f32)
    y = np.zeros((2, 7), np.int64)
    layer = m.rnn
    calls = {
        "predict": lambda: m.predict(x),
        "evaluate": lambda: m.evaluate(x, y)["loss"],
        "encode": lambda: m.encode(x, pooling="mean"),
        "model_step": lambda: m.step(x[:, 0], None),
        "layer_call": lambda: layer(x),
        "layer_step": lambda: layer.step(x[:, 0], None),
    }
    call = calls[entry]
    A, B = _two_versions(m)
    want_old, want_new = _results_for(m, A, call), _results_for(m, B, call)
    assert not _same(want_old, want_new)
    hook_name = "_step_layer" if entry in ("model_step", "layer_step") else "_run"

    def run_with_write_inside(bypass):
        m.load_state_dict(A)
        original = getattr(layer, hook_name)
        fired = []

        def hooked(sfx, *args):
            out = original(sfx, *args)
            if sfx == "_l0" and not fired:      # after layer 0, before layer 1
                fired.append(1)
                m.load_state_dict(B)
            return out
        setattr(layer, hook_name, hooked)
        guard = m._guard
        if bypass:
            m._guard = layer._guard = _NoGuard()
        try:
            return call(), fired
        finally:
            delattr(layer, hook_name)
            m._guard = layer._guard = guard

    got, fired = run_with_write_inside(bypass=False)
    assert fired and _same(got, want_new), f"{entry}: not the all-new result"
    got, fired = run_with_write_inside(bypass=True)
    assert fired and not _same(got, want_new) and not _same(got, want_old), \
        f"{entry}: the control (guard bypassed) should have produced a mix"


class _NoGuard:
    """A guard that guards nothing: readers run once, writers announce nothing."""
    gen = 0

    def read(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)

    def writing(self):
        return contextlib.nullcontext()


def test_load_state_dict_keeps_the_buffers_that_optimizers_and_streams_hold():
    m = _model("lstm", bidirectional=False)
    flat_ids = [id(p) for p, _ in m.parameters()]
    s = m.rnn.stream()
    A, B = _two_versions(m)
    m.load_state_dict(B)
    assert [id(p) for p, _ in m.parameters()] == flat_ids
    assert _same(m.state_dict(), B)
    fresh = m.rnn.stream()
    x = np.ones(6, f32)
    assert _same(s.step(x), fresh.step(x))      # the old stream follows the new weights


# ---- a writer replacing weights while reader threads run: the soak ------------------------

def _soak(m, seconds, readers=3):
    """Readers call predict / model.step / a stream of m.rnn while a writer alternates two
    weight sets. Returns (mismatches, counts)."""
    assert m.rnn.stream().guarded, ("this build's Stream does not follow weight "
                                    "replacements: rebuild the extensions "
                                    "(python setup.py build_ext --inplace)")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 8, 6)).astype(f32)
    xt = rng.standard_normal((4, 1, 6)).astype(f32)
    A, B = _two_versions(m)
    ref_a, ref_b = copy.deepcopy(m), copy.deepcopy(m)
    ref_a.load_state_dict(A)
    ref_b.load_state_dict(B)
    want_predict = (ref_a.predict(x), ref_b.predict(x))
    want_step = (ref_a.step(xt[0], None), ref_b.step(xt[0], None))
    m.load_state_dict(A)
    stop = threading.Event()
    counts = {"writes": 0, "predict": [0, 0], "step": [0, 0], "stream": 0}
    mismatches = []
    stream_log = [[] for _ in range(readers)]

    def writer():
        k = 0
        while not stop.is_set():
            k ^= 1
            m.load_state_dict(B if k else A)
            counts["writes"] += 1
            # back to back, or after a pause: readers then also finish on the first try
            time.sleep(0.0003 * (counts["writes"] % 3))

    deadline = time.perf_counter() + seconds
    max_log = int(300 * seconds)        # stream steps kept per reader, checked afterwards

    def reader(i):
        s = m.rnn.stream()
        t = 0
        while time.perf_counter() < deadline:
            p = m.predict(x)
            hit = [_same(p, w) for w in want_predict]
            if any(hit):
                counts["predict"][hit.index(True)] += 1
            else:
                mismatches.append("predict")
            y = m.step(xt[0], None)
            hit = [_same(y, w) for w in want_step]
            if any(hit):
                counts["step"][hit.index(True)] += 1
            else:
                mismatches.append("step")
            if len(stream_log[i]) < max_log:
                before = s.get_state()
                stream_log[i].append((before, xt[t % 4, 0], s.step(xt[t % 4, 0])))
                t += 1
    w = threading.Thread(target=writer, daemon=True)
    w.start()
    try:
        _run_threads(readers, reader)
    finally:
        stop.set()
        w.join()

    # each stream step equals the step of the old or of the new weights from its state
    for log in stream_log:
        for before, x_t, y in log:
            outs = [ref.rnn.stream(state=before).step(x_t) for ref in (ref_a, ref_b)]
            if not any(_same(y, o) for o in outs):
                mismatches.append("stream")
            counts["stream"] += 1
    return mismatches, counts


def _check_soak(seconds):
    mismatches, counts = _soak(_model("lstm", bidirectional=False), seconds)
    assert mismatches == [], f"{len(mismatches)} mixed results: {mismatches[:5]} ({counts})"
    assert counts["writes"] > 10 and sum(counts["predict"]) > 10 and counts["stream"] > 10, counts
    return counts


def test_readers_never_see_a_mix_while_a_writer_replaces_weights():
    _check_soak(SOAK_SHORT)


@pytest.mark.long
def test_readers_never_see_a_mix_while_a_writer_replaces_weights_long():
    counts = _check_soak(SOAK_LONG)
    print(f"soak {SOAK_LONG:.0f} s: {counts}")


def test_fit_updates_are_whole_for_a_reader_in_another_thread():
    """fit in one thread, predict in another: every prediction is that of a parameter
    set the training passed through (recorded after each update), never of half an
    update."""
    m = _model("gru", num_layers=1, hidden_size=12)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 6, 6)).astype(f32)
    y = rng.integers(0, 4, (16, 6))
    probe = x[:2]
    versions = [m.state_dict()]
    opt = fastrnn.nn.optim.SGD(m.parameters(), lr=0.5)
    step = opt.step

    def recording_step():
        step()
        versions.append(m.state_dict())
    opt.step = recording_step
    seen = []
    done = threading.Event()

    def reader():
        while not done.is_set():
            seen.append(m.predict(probe))
    r = threading.Thread(target=reader)
    r.start()
    try:
        m.fit(x, y, epochs=4, batch_size=4, optimizer=opt, progress=False)
    finally:
        done.set()
        r.join()
    ref = copy.deepcopy(m)
    allowed = []
    for v in versions:
        ref.load_state_dict(v)
        allowed.append(ref.predict(probe))
    assert len(seen) > 0
    bad = [k for k, p in enumerate(seen) if not any(_same(p, a) for a in allowed)]
    assert bad == [], f"{len(bad)} of {len(seen)} predictions match no parameter version"


# ---- pickling through the validated file format -------------------------------------------

class _Recorder(pickle.Unpickler):
    """Unpickles, recording every global the pickle asks for."""

    def __init__(self, data):
        super().__init__(_io.BytesIO(data))
        self.globals = []

    def find_class(self, module, name):
        self.globals.append((module, name))
        return super().find_class(module, name)


def _objects():
    tok = SequenceModel("lstm", vocab_size=7, hidden_size=8, task="next_token", seed=0,
                        peephole="io")
    tok.vocabulary = list("abcdefg")
    return {
        "model": _model("gru", bidirectional=True),
        "token_model": tok,
        "layer": LSTM(4, 6, num_layers=2, coupled=True, seed=0),
        "rnn_layer": RNN(4, 6, nonlinearity="relu", bias=False, batch_first=True, seed=0),
        "cell": GRUCell(4, 6, reset_after=False, seed=0),
        "lstm_cell": LSTMCell(4, 6, seed=0, dtype=np.float64),
    }


def _infer(obj):
    """A deterministic output of any of the pickled objects."""
    rng = np.random.default_rng(0)
    if isinstance(obj, SequenceModel):
        if obj.embedding is not None:
            return obj.predict(rng.integers(0, 7, (2, 5)))
        return obj.predict(rng.standard_normal((2, 5, 6)).astype(obj.dtype))
    if isinstance(obj, (GRUCell, LSTMCell)):
        return obj(rng.standard_normal((3, 4)).astype(obj._layer.dtype))
    return obj(rng.standard_normal((5, 2, 4)).astype(obj.dtype))


@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("name", list(_objects()))
def test_pickle_round_trip_is_the_validated_loader_and_nothing_else(name, protocol):
    obj = _objects()[name]
    data = pickle.dumps(obj, protocol=protocol)
    rec = _Recorder(data)
    back = rec.load()
    assert type(back) is type(obj)
    assert _same(_infer(back), _infer(obj))
    ours = [g for g in rec.globals if g[0].split(".")[0] == "fastrnn"]
    assert ours == [("fastrnn.io", "load_bytes")], rec.globals
    others = {g for g in rec.globals if g[0].split(".")[0] != "fastrnn"}
    assert others <= {("_codecs", "encode")}, others       # protocol 2 spells bytes this way
    if name == "token_model":
        assert back.vocabulary == obj.vocabulary


def test_a_pickle_with_tampered_bytes_is_refused_by_the_loader():
    data = bytearray(pickle.dumps(_model(), protocol=4))
    k = data.rfind(b"head.bias")
    assert k > 0
    i = len(data) - 40                  # inside the tensor bytes, near the end
    data[i] ^= 0xFF
    with pytest.raises(fastrnn.ModelFileError, match="checksum"):
        pickle.loads(bytes(data))


def test_deepcopy_is_independent_and_equal():
    m = _model("lstm")
    c = copy.deepcopy(m)
    assert _same(_infer(c), _infer(m))
    c.load_state_dict({k: v * 0 for k, v in c.state_dict().items()})
    assert not _same(_infer(c), _infer(m))
    layer = GRU(3, 5, seed=0)
    lc = copy.deepcopy(layer)
    lc.flat[:] = 0
    assert np.abs(layer.flat).sum() > 0
    assert all(np.shares_memory(v, lc.flat) for v in lc.params.values())


def test_models_travel_to_a_process_pool():
    m = _model("lstm", bidirectional=True)
    x = np.random.default_rng(4).standard_normal((3, 7, 6)).astype(f32)
    want = m.predict(x)
    ctx = multiprocessing.get_context("spawn")      # fork would copy libgomp's threads' state
    with ctx.Pool(1) as pool:
        got = pool.apply(operator.methodcaller("predict", x), (m,))
        layer_out = pool.apply(operator.methodcaller("__call__", x), (m.rnn,))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(layer_out[0], m.rnn(x)[0], rtol=1e-6, atol=1e-7)
    assert _same(got, want), "the pool's predictions differ in the last bits"
