"""Every integer type of ``lengths`` means the same everywhere: int8 ... uint64 and Python
lists give the int64 run's results bit for bit at every entry point that takes lengths
(``fit`` plain and with truncated BPTT, its validation, ``evaluate``, ``predict``,
``predict_proba``, ``encode``, the model's forward and loss, the layers, the kernels'
forward and backward, ``losses.mask_from_lengths``); values that fit the type but not the
sequence (negative, > T) are refused by all of them.

The oracle is the int64 run. Before lengths were converted once at the boundary,
``fit(tbptt=k)`` computed ``lengths - t0`` in the caller's type, which wraps for unsigned
types, so rows that had ended counted as fully valid in later chunks."""
import numpy as np
import pytest

import fastrnn
from fastrnn import functional as F
from fastrnn import losses

T, B, I, H, V = 20, 8, 3, 5, 6
LENGTHS = [20, 3, 0, 13, 7, 20, 1, 12]         # full, short, empty, past several chunks
KINDS = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "list"]


def _typed(values, kind):
    return list(values) if kind == "list" else np.array(values, kind)


def _data():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, (B, T))
    feats = rng.standard_normal((B, T, I)).astype(np.float32)
    return ids, (ids + 1) % V, feats, rng.integers(0, 3, B)


def _token_model():
    return fastrnn.SequenceModel("lstm", vocab_size=V, hidden_size=H, task="next_token", seed=0)


def _sequence_model():
    return fastrnn.SequenceModel("gru", input_size=I, hidden_size=H, output_size=3,
                                 task="sequence_classification", bidirectional=True, seed=0)


def _params(m):
    return [p.copy() for p, _ in m.parameters()]


def _fit(lengths, **kw):
    ids, y, _, _ = _data()
    m = _token_model()
    h = m.fit(ids, y, lengths, epochs=2, batch_size=4, progress=False, **kw)
    return _params(m) + [np.array(h["loss"])]


def _fit_validation(lengths):
    ids, y, _, _ = _data()
    m = _token_model()
    h = m.fit(ids, y, epochs=1, batch_size=4, progress=False,
              validation_data=(ids, y, lengths))
    return [np.array(h["val_loss"]), np.array(h["val_accuracy"])]


def _fit_sequence(lengths):
    _, _, x, labels = _data()
    m = _sequence_model()
    m.fit(x, labels, lengths, epochs=1, batch_size=4, progress=False)
    return _params(m)


def _evaluate(lengths):
    ids, y, _, _ = _data()
    r = _token_model().evaluate(ids, y, lengths, batch_size=3)
    return [np.array([r["loss"], r["accuracy"]])]


def _layer(cell):
    _, _, x, _ = _data()
    layer = {"rnn": fastrnn.RNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}[cell](
        I, H, batch_first=True, bidirectional=True, seed=0)

    def run(lengths):
        out, state = layer(x, lengths=lengths)
        layer.zero_grad()
        out2, _, tape = layer.forward(x, lengths=lengths)
        dx, _ = layer.backward(np.ones_like(out2), None, tape)
        return [out, *(state if isinstance(state, tuple) else (state,)), dx, layer.grad.copy()]
    return run


def _kernel(cell):
    rng = np.random.default_rng(1)
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((B, H))
    W = [rng.standard_normal(s) * 0.3 for s in ((G * H, I), (G * H, H), (G * H,), (G * H,))]

    def run(lengths):
        if cell == "lstm":
            hs, h_n, c_n, cache = F.lstm_forward(x, h0, h0, *W, lengths=lengths)
            finals = [h_n, c_n]
            back = F.lstm_backward(np.ones_like(hs), h_n, c_n, cache)
        else:
            fwd, bwd = (F.rnn_forward, F.rnn_backward) if cell == "rnn" else \
                (F.gru_forward, F.gru_backward)
            hs, h_n, cache = fwd(x, h0, *W, lengths=lengths)
            finals = [h_n]
            back = bwd(np.ones_like(hs), h_n, cache)
        grads = back[-1]
        return [hs.copy(), *finals, *back[:-1], *(grads[k] for k in sorted(grads))]
    return run


def _model_forward_and_loss(lengths):
    ids, y, _, _ = _data()
    m = _token_model()
    out, state, _ = m.forward(ids, lengths)
    loss, dy = m.loss(out, y, lengths)
    return [out, *state, np.array(loss), dy]


ENTRY_POINTS = {
    "fit": _fit,
    "fit_tbptt": lambda lengths: _fit(lengths, tbptt=6),
    "fit_validation_data": _fit_validation,
    "fit_sequence_task": _fit_sequence,
    "evaluate": _evaluate,
    "predict": lambda lengths: [_token_model().predict(_data()[0], lengths, batch_size=3)],
    "predict_sequence_task": lambda lengths: [_sequence_model().predict(_data()[2], lengths)],
    "predict_proba": lambda lengths: [_token_model().predict_proba(_data()[0], lengths)],
    "encode_last": lambda lengths: [_sequence_model().encode(_data()[2], lengths)],
    "encode_mean": lambda lengths: [_token_model().encode(_data()[0], lengths, "mean")],
    "model_forward_and_loss": _model_forward_and_loss,
    "layer_rnn": _layer("rnn"), "layer_lstm": _layer("lstm"), "layer_gru": _layer("gru"),
    "kernel_rnn": _kernel("rnn"), "kernel_lstm": _kernel("lstm"), "kernel_gru": _kernel("gru"),
    "mask_from_lengths": lambda lengths: [losses.mask_from_lengths(lengths, T)],
}
_WANT = {}


def _want(entry):
    if entry not in _WANT:
        _WANT[entry] = ENTRY_POINTS[entry](np.array(LENGTHS, np.int64))
    return _WANT[entry]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_every_integer_type_gives_the_int64_results_bit_for_bit(entry, kind):
    lengths = _typed(LENGTHS, kind)
    given = np.array(lengths, copy=True)
    got, want = ENTRY_POINTS[entry](lengths), _want(entry)
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, (entry, kind, i)
        if a.tobytes() != b.tobytes():
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64)).max()
            pytest.fail(f"{entry} with {kind} lengths: result {i} differs from the int64 "
                        f"run (max abs diff {diff:.3g})")
    np.testing.assert_array_equal(np.asarray(lengths), given)      # never modified


def _bad(kind):
    """Values that fit the type but not a sequence of T steps."""
    bad = [LENGTHS[:-1] + [T + 1]]
    if kind == "list" or np.dtype(kind).kind == "i":
        bad.append([-1] + LENGTHS[1:])
    return [_typed(b, kind) for b in bad]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_negative_or_too_long_lengths_are_refused(entry, kind):
    for lengths in _bad(kind):
        with pytest.raises(ValueError, match=rf"lengths must lie in \[0, T={T}\]"):
            ENTRY_POINTS[entry](lengths)
