"""Inference keeps its scratch buffers per thread and layer direction
(fastrnn.functional.Workspace): results must equal fresh-buffer results bit for bit, and
what a call returned must never change when the next call reuses the buffers."""
import threading

import numpy as np
import pytest

import fastrnn
from fastrnn import functional as F

LAYERS = [
    (fastrnn.LSTM, {}), (fastrnn.LSTM, {"peephole": True}), (fastrnn.LSTM, {"coupled": True}),
    (fastrnn.GRU, {}), (fastrnn.GRU, {"reset_after": False}), (fastrnn.RNN, {}),
    (fastrnn.RNN, {"nonlinearity": "relu"}),
]


def _inputs(seed, T=9, B=5, I=4):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((T, B, I)).astype(np.float32), rng.integers(0, T + 1, B)


@pytest.mark.parametrize("cls,kw", LAYERS)
@pytest.mark.parametrize("stack", [dict(num_layers=1), dict(num_layers=2),
                                   dict(num_layers=2, bidirectional=True)])
def test_results_equal_fresh_buffers_and_survive_the_next_call(cls, kw, stack):
    layer = cls(4, 6, seed=0, **kw, **stack)
    x1, l1 = _inputs(1)
    x2, l2 = _inputs(2, T=11, B=3)                 # another shape: buffers re-cut
    out1, s1 = layer(x1, lengths=l1)
    kept = out1.copy(), [np.copy(a) for a in (s1 if isinstance(s1, tuple) else (s1,))]
    out2, _ = layer(x2, lengths=l2)
    out1b, _ = layer(x1, lengths=l1)               # the same call again, buffers reused
    assert out1.tobytes() == kept[0].tobytes()     # the first result untouched
    for a, b in zip(s1 if isinstance(s1, tuple) else (s1,), kept[1]):
        assert a.tobytes() == b.tobytes()
    assert out1b.tobytes() == out1.tobytes()
    # training's forward allocates afresh (no workspace): the same numbers
    out_t, _, _ = layer.forward(x1, lengths=l1)
    assert out_t.tobytes() == out1.tobytes()
    assert not np.shares_memory(out2, out1b)


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
def test_functional_with_a_workspace_equals_without(name):
    rng = np.random.default_rng(3)
    T, B, I, H = 7, 4, 3, 5
    G = {"rnn": 1, "lstm": 4, "gru": 3}[name]
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    W_ih = rng.standard_normal((G * H, I)).astype(np.float32)
    W_hh = rng.standard_normal((G * H, H)).astype(np.float32)
    b = rng.standard_normal(G * H).astype(np.float32)
    h0 = rng.standard_normal((B, H)).astype(np.float32)
    lengths = np.array([7, 0, 3, 5])
    ws = F.Workspace()

    def run(workspace):
        if name == "lstm":
            return F.lstm_forward(x, h0, h0, W_ih, W_hh, b, b, lengths=lengths,
                                  workspace=workspace)[:3]
        fn = F.rnn_forward if name == "rnn" else F.gru_forward
        return fn(x, h0, W_ih, W_hh, b, b, lengths=lengths, workspace=workspace)[:2]

    fresh = [a.copy() for a in run(None)]
    for _ in range(2):
        got = run(ws)
        for a, b_ in zip(got, fresh):
            assert a.tobytes() == b_.tobytes()
    assert ws._buffers                               # kept for the next call


def test_workspace_keeps_buffers_up_to_its_limit():
    ws = F.Workspace(limit=1000)
    a = ws.get("a", (10, 10), np.float32)            # 400 bytes: kept
    assert ws.get("a", (5, 10), np.float32).base is a.base
    b = ws.get("b", (200,), np.float32)              # 800 more: over the limit, not kept
    assert "b" not in ws._buffers and b.shape == (200,)
    c = ws.get("a", (4,), np.float64)                # another dtype: a new buffer
    assert c.dtype == np.float64 and ws._buffers["a"].dtype == np.float64


def test_threads_have_their_own_buffers():
    """Two threads calling one layer at once get the serial results (each thread's
    workspace is its own)."""
    layer = fastrnn.LSTM(4, 16, num_layers=2, seed=0)
    inputs = [_inputs(s, T=40, B=8) for s in range(6)]
    want = [layer(x, lengths=lg)[0] for x, lg in inputs]
    bad = []

    def worker(k):
        for _ in range(20):
            for i, (x, lg) in enumerate(inputs):
                if layer(x, lengths=lg)[0].tobytes() != want[i].tobytes():
                    bad.append((k, i))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_sequence_outputs_from_the_final_state_alone(cell, monkeypatch):
    """A model that predicts once per sequence reads only the final state (no outputs
    copied out), in one call or in chunks of time steps: the same predictions as the head
    applied to the layer's full call."""
    rng = np.random.default_rng(4)
    model = fastrnn.SequenceModel(cell, input_size=3, hidden_size=8, num_layers=2,
                                  output_size=4, task="sequence_classification", seed=2)
    x = rng.standard_normal((6, 50, 3)).astype(np.float32)
    lengths = np.array([50, 0, 17, 33, 1, 49])
    _, state = model.rnn(x, None, lengths)
    h_n = state[0] if isinstance(state, tuple) else state
    want = model.head.forward(h_n[-1])
    np.testing.assert_array_equal(model.predict(x, lengths), want)
    monkeypatch.setattr(type(model), "_INFER_CHUNK_WORK", 1)        # 16-step chunks
    np.testing.assert_allclose(model.predict(x, lengths), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.encode(x, lengths), h_n[-1], rtol=1e-5, atol=1e-6)


def test_release_buffers_and_the_output_layer_with_other_inputs():
    model = fastrnn.SequenceModel("lstm", input_size=3, hidden_size=8, output_size=4,
                                  task="regression", seed=1)
    x = np.random.default_rng(0).standard_normal((5, 7, 3)).astype(np.float32)
    want = model.predict(x)
    model.release_buffers()
    assert model.predict(x).tobytes() == want.tobytes()
    head = model.head
    feats = np.random.default_rng(1).standard_normal((6, 8)).astype(np.float32)
    ref = feats @ head.weight.T + head.bias
    assert head.forward(feats).tobytes() == ref.tobytes()           # the kernels' GEMM
    np.testing.assert_allclose(head.forward(feats.astype(np.float64)), ref, rtol=1e-6)
    np.testing.assert_allclose(head.forward(feats.tolist()), ref, rtol=1e-6)
    np.testing.assert_array_equal(head.forward(feats[:1]),            # one row: numpy's
                                  feats[:1] @ head.weight.T + head.bias)
    with pytest.raises(ValueError):
        head.forward(feats[:, :5])
