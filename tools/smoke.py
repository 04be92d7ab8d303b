"""A short run through every public entry point, for the memory checkers (tools/sanitize.sh):
small sizes, every cell and variant, both dtypes, both thread counts, refused inputs too.
Prints one line per part; exits 0 when everything ran.
"""
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import fastrnn  # noqa: E402
from fastrnn import functional as F  # noqa: E402

rng = np.random.default_rng(0)
T, B, I, H = 5, 3, 4, 8
LAYERS = [(fastrnn.RNN, {}), (fastrnn.RNN, {"nonlinearity": "relu", "bias": False}),
          (fastrnn.LSTM, {}), (fastrnn.LSTM, {"peephole": True}),
          (fastrnn.LSTM, {"coupled": True, "peephole": "io"}), (fastrnn.GRU, {}),
          (fastrnn.GRU, {"reset_after": False}), (fastrnn.GRU, {"bias": False})]


def refused(fn):
    try:
        fn()
    except (ValueError, TypeError):
        return
    raise AssertionError("accepted a bad input")


def functional():
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((T, B, I)).astype(dtype)
        lengths = [T, 2, 0]
        for G, fwd, bwd in ((1, F.rnn_forward, F.rnn_backward), (3, F.gru_forward, F.gru_backward)):
            W, U = (rng.standard_normal((G * H, n)).astype(dtype) * 0.3 for n in (I, H))
            b = np.zeros(G * H, dtype)
            hs, h_n, cache = fwd(x, None, W, U, b, b, lengths=lengths)
            bwd(np.ones_like(hs), h_n, cache)
        W, U = (rng.standard_normal((4 * H, n)).astype(dtype) * 0.3 for n in (I, H))
        b = np.zeros(4 * H, dtype)
        p = np.full(H, 0.1, dtype)
        hs, h_n, c_n, cache = F.lstm_forward(x, None, None, W, U, b, b, p, p, p, lengths=lengths)
        F.lstm_backward(np.ones_like(hs), h_n, c_n, cache, retain_cache=True)
        F.lstm_backward(np.ones_like(hs), h_n, c_n, cache, need_dx=False)
        refused(lambda: F.lstm_forward(x[:, :, :2], None, None, W, U, b, b))


def layers():
    for cls, kw in LAYERS:
        for dtype in (np.float32, np.float64):
            for nt in (1, 2):
                layer = cls(I, H, num_layers=2, bidirectional=True, dtype=dtype, seed=0,
                            n_threads=nt, dropout=0.2, **kw)
                x = rng.standard_normal((T, B, I)).astype(dtype)
                layer(x, lengths=[T, 1, 3])
                layer.zero_grad()
                out, _, tape = layer.forward(x, None, [T, 1, 3])
                layer.backward(out, None, tape)
                uni = cls(I, H, num_layers=2, dtype=dtype, seed=0, n_threads=nt, **kw)
                y, st = uni.step(x[0], None)
                uni.step(x[1], st)
                s = uni.stream(B)
                for t in range(T):
                    s.step(x[t])
                s1 = uni.stream()
                s1.step(x[0, 0])
                s1.set_state(s1.get_state())
                uni.load_state_dict(uni.state_dict())
                refused(lambda: s.step(x[0, :2]))
                refused(lambda: uni.step(x[0].astype(np.float16), None))
                pickle.loads(pickle.dumps(uni))
    for cell in (fastrnn.RNNCell(I, H), fastrnn.LSTMCell(I, H), fastrnn.GRUCell(I, H)):
        cell(rng.standard_normal((B, I)).astype(np.float32))


def models():
    x = rng.standard_normal((6, T, I)).astype(np.float32)
    y = rng.integers(0, 3, (6, T))
    for cell in ("rnn", "lstm", "gru"):
        m = fastrnn.SequenceModel(cell, input_size=I, hidden_size=H, output_size=3,
                                  task="per_step_classification", seed=0)
        m.predict(x, [T, 2, 0, 1, 3, T], batch_size=4)
        m.predict_proba(x)
        m.evaluate(x, y)
        m.encode(x, pooling="mean")
        m.step(x[:, 0], None)
        m.fit(x, y, epochs=1, batch_size=3, progress=False, clip_norm=1.0)
        m.load_state_dict(m.state_dict())
        pickle.loads(pickle.dumps(m))
        refused(lambda: m.predict(np.full_like(x, np.nan)))
    tok = fastrnn.SequenceModel("gru", vocab_size=9, hidden_size=H, task="next_token", seed=0)
    ids = rng.integers(0, 9, (4, T))
    tok.fit(ids, (ids + 1) % 9, epochs=1, batch_size=2, progress=False, tbptt=2)
    tok.predict(ids)


for part in (functional, layers, models):
    part()
    print(f"smoke: {part.__name__} ok", flush=True)
