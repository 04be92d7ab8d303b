"""SequenceModel and fit: the glue (embedding, head, losses, last-state features) against
finite differences; training drives a loss down and is bit-reproducible; truncated BPTT;
NaN safety; early stopping; checkpoints; features; bad arguments."""
import numpy as np
import pytest

import fastrnn
from fastrnn import optim

TASKS = [
    dict(cell="lstm", vocab_size=5, hidden_size=4, task="next_token", peephole=True),
    dict(cell="gru", input_size=3, hidden_size=4, output_size=3, task="sequence_classification",
         bidirectional=True, num_layers=2),
    dict(cell="rnn", input_size=3, hidden_size=4, output_size=2, task="multilabel"),
    dict(cell="lstm", input_size=3, hidden_size=4, output_size=2, task="regression",
         coupled=True),
    dict(cell="gru", input_size=3, hidden_size=4, output_size=1, task="sequence_regression",
         reset_after=False),
]
B, T = 3, 5
LENGTHS = np.array([5, 3, 1])


def _data(m, rng):
    cfg = m.config
    x = rng.integers(0, cfg["vocab_size"], (B, T)) if cfg.get("vocab_size") else \
        rng.standard_normal((B, T, cfg["input_size"]))
    C = cfg["output_size"]
    if m.loss_name == "cross_entropy":
        y = rng.integers(0, C, (B, T) if m.output == "per_step" else (B,))
    elif m.loss_name == "binary_cross_entropy":
        y = (rng.random((B, T, C)) < 0.5).astype(float)
    else:
        y = rng.standard_normal((B, T, C) if m.output == "per_step" else (B, C))
    return x, y


@pytest.mark.parametrize("cfg", TASKS, ids=lambda c: f"{c['cell']}-{c['task']}")
def test_model_gradients_match_finite_differences(cfg):
    m = fastrnn.SequenceModel(dtype="float64", seed=0, **cfg)
    rng = np.random.default_rng(1)
    x, y = _data(m, rng)
    for p, _ in m.parameters():
        p += rng.standard_normal(p.shape) * 0.1
    m.train()

    def loss():
        return m.loss(m.forward(x, LENGTHS)[0], y, LENGTHS)[0]

    out, _, tape = m.forward(x, LENGTHS, need_tape=True)
    _, dy = m.loss(out, y, LENGTHS)
    m.zero_grad()
    m.backward(dy, tape)
    eps = 1e-6
    for (p, g) in m.parameters():
        for i in range(0, p.size, max(1, p.size // 25)):
            orig = p[i]
            p[i] = orig + eps; plus = loss()
            p[i] = orig - eps; minus = loss()
            p[i] = orig
            num = (plus - minus) / (2 * eps)
            assert abs(num - g[i]) <= 1e-6 + 1e-5 * abs(num), (i, num, g[i])


def _pattern_data(n=64, T=12, seed=0):
    """Next-token prediction on sequences that count up modulo 4 from a random start."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, 4, n)
    seq = (start[:, None] + np.arange(T + 1)[None]) % 4
    return seq[:, :-1], seq[:, 1:]


def test_fit_learns_and_is_reproducible():
    x, y = _pattern_data()
    runs = []
    for _ in range(2):
        m = fastrnn.SequenceModel("gru", vocab_size=4, hidden_size=16, task="next_token", seed=3)
        h = m.fit(x, y, epochs=15, batch_size=16, lr=0.02, progress=False, seed=1)
        runs.append((h, m.named_parameters()))
    (h, p1), (h2, p2) = runs
    assert h["loss"][-1] < 0.2 * h["loss"][0], h["loss"]
    assert h["loss"] == h2["loss"]
    assert all(p1[k].tobytes() == p2[k].tobytes() for k in p1)
    assert m.evaluate(x, y)["accuracy"] > 0.95


def test_ragged_list_input_and_validation_history():
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((n, 2)) for n in (3, 7, 5, 2, 6)]
    ys = [np.array([s.sum()]) for s in xs]
    m = fastrnn.SequenceModel("lstm", input_size=2, hidden_size=8, output_size=1,
                              task="sequence_regression", seed=0)
    h = m.fit(xs, ys, epochs=3, batch_size=2, progress=False, validation_data=(xs, ys))
    assert len(h["loss"]) == 3 and len(h["val_loss"]) == 3
    assert np.isfinite(h["val_loss"]).all()


def test_tbptt_with_one_chunk_equals_full_bptt():
    x, y = _pattern_data(n=16)
    results = []
    for k in (None, x.shape[1], 100):
        m = fastrnn.SequenceModel("lstm", vocab_size=4, hidden_size=8, task="next_token", seed=2)
        m.fit(x, y, epochs=2, batch_size=8, progress=False, tbptt=k, shuffle=False)
        results.append(m.named_parameters())
    for r in results[1:]:
        assert all(results[0][k].tobytes() == r[k].tobytes() for k in r)


def test_tbptt_carries_the_state_and_cuts_the_gradient():
    """Chunks of 4: forward outputs equal the full sequence's; the gradient of a chunk's
    loss does not reach earlier chunks (equal to a fresh model run from the carried state)."""
    x, y = _pattern_data(n=4, T=12)
    m = fastrnn.SequenceModel("gru", vocab_size=4, hidden_size=6, task="next_token",
                              dtype="float64", seed=0)
    full = m.forward(x)[0]
    state, chunks = None, []
    for t0 in range(0, 12, 4):
        out, state, _ = m.forward(x[:, t0:t0 + 4], None, state)
        chunks.append(out)
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), full, rtol=1e-12, atol=1e-13)
    m2 = fastrnn.SequenceModel("gru", vocab_size=4, hidden_size=6, task="next_token",
                               dtype="float64", seed=0)
    m.fit(x, y, epochs=1, batch_size=4, progress=False, tbptt=4, optimizer=optim.SGD(
        m.parameters(), lr=0.1), shuffle=False)
    # by hand: three SGD steps, each from the state carried out of the previous chunk
    opt = optim.SGD(m2.parameters(), lr=0.1)
    state = None
    for t0 in range(0, 12, 4):
        out, state_n, tape = m2.forward(x[:, t0:t0 + 4], None, state, need_tape=True)
        _, dy = m2.loss(out, y[:, t0:t0 + 4])
        m2.zero_grad(); m2.backward(dy, tape); opt.step()
        state = state_n
    for k, a in m.named_parameters().items():
        np.testing.assert_allclose(a, m2.named_parameters()[k], rtol=1e-12, atol=1e-14)


def test_nan_loss_stops_before_the_update(monkeypatch):
    x, y = _pattern_data(n=32)
    m = fastrnn.SequenceModel("lstm", vocab_size=4, hidden_size=8, task="next_token", seed=0)
    real, calls, snapshot = m.loss, [0], {}

    def loss(*a, **k):
        calls[0] += 1
        if calls[0] == 3:
            snapshot.update({n: p.copy() for n, p in m.named_parameters().items()})
            return float("nan"), real(*a, **k)[1]
        return real(*a, **k)
    monkeypatch.setattr(m, "loss", loss)
    with pytest.raises(FloatingPointError, match="last good parameters"):
        m.fit(x, y, epochs=1, batch_size=8, progress=False)
    assert all(snapshot[n].tobytes() == p.tobytes() for n, p in m.named_parameters().items())


def test_early_stopping_restores_the_best_and_checkpoints(tmp_path):
    x, y = _pattern_data(n=32)
    vx, vy = _pattern_data(n=16, seed=5)
    path, best_path = tmp_path / "last.fastrnn", tmp_path / "best.fastrnn"
    m = fastrnn.SequenceModel("gru", vocab_size=4, hidden_size=8, task="next_token", seed=0)
    h = m.fit(x, y, epochs=30, batch_size=8, lr=0.5, progress=False,
              validation_data=(vx, vy), early_stopping=2, checkpoint=path, checkpoint_every=3,
              best_checkpoint=best_path)
    best = min(h["val_loss"])
    assert len(h["val_loss"]) < 30 or best == h["val_loss"][-1]
    assert m.evaluate(vx, vy)["loss"] == pytest.approx(best, rel=1e-6)
    saved = fastrnn.load(best_path)
    assert saved.evaluate(vx, vy)["loss"] == pytest.approx(best, rel=1e-6)
    last, state = fastrnn.load(path, with_optimizer=True)     # resumable: has Adam's state
    assert state["name"] == "Adam" and state["state"]["step"] == h["steps"]


def test_optimizer_state_resumes_bit_for_bit(tmp_path):
    x, y = _pattern_data(n=16)
    a = fastrnn.SequenceModel("lstm", vocab_size=4, hidden_size=8, task="next_token", seed=0)
    oa = optim.Adam(a.parameters(), lr=0.01)
    a.fit(x, y, epochs=2, batch_size=8, optimizer=oa, progress=False, shuffle=False)
    a.save(tmp_path / "c.fastrnn", optimizer=oa)
    a.fit(x, y, epochs=1, batch_size=8, optimizer=oa, progress=False, shuffle=False)
    b, st = fastrnn.load(tmp_path / "c.fastrnn", with_optimizer=True)
    assert st["name"] == "Adam"
    ob = optim.Adam(b.parameters(), lr=0.01)
    ob.load_state_dict(st["state"])
    b.fit(x, y, epochs=1, batch_size=8, optimizer=ob, progress=False, shuffle=False)
    for k, p in a.named_parameters().items():
        assert p.tobytes() == b.named_parameters()[k].tobytes(), k


def test_encode_and_cosine_similarity():
    m = fastrnn.SequenceModel("lstm", vocab_size=6, hidden_size=8, task="next_token", seed=0)
    ids = np.array([[1, 2, 3, 0], [1, 2, 3, 4]])
    last = m.encode(ids, lengths=np.array([3, 3]))
    np.testing.assert_allclose(last[0], last[1], rtol=1e-6)       # padding ignored
    assert fastrnn.cosine_similarity(last[0], last[1]) == pytest.approx(1.0, abs=1e-6)
    mean = m.encode(ids, lengths=np.array([3, 4]), pooling="mean")
    out = m.rnn(m.embedding.forward(ids))[0]
    np.testing.assert_allclose(mean[1], out[1].mean(axis=0), rtol=1e-5)
    assert fastrnn.cosine_similarity([1, 0], [0, 1]) == 0.0
    assert fastrnn.cosine_similarity([0, 0], [1, 1]) == 0.0


def test_bad_arguments():
    x, y = _pattern_data(n=8)
    m = fastrnn.SequenceModel("gru", vocab_size=4, hidden_size=4, task="next_token", seed=0)
    for kw, match in [(dict(epochs=0), "epochs"), (dict(lr=-1.0), "lr"),
                      (dict(batch_size=2.5), "batch_size"), (dict(clip_norm=0), "clip_norm"),
                      (dict(optimizer="adamax"), "optimizer"),
                      (dict(early_stopping=3), "validation_data")]:
        with pytest.raises(ValueError, match=match):
            m.fit(x, y, progress=False, **kw)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        m.fit(x, y + 1, progress=False)
    with pytest.raises(ValueError, match="token ids"):
        m.fit(x + 4, y, progress=False)
    with pytest.raises(ValueError, match="lengths"):
        m.fit(x, y, lengths=np.full(8, 99), progress=False)
    with pytest.raises(ValueError, match="empty"):
        m.fit(x[:0], y[:0], progress=False)
    with pytest.raises(TypeError, match="integers"):
        m.predict(x.astype(float))
    with pytest.raises(ValueError, match="task"):
        fastrnn.SequenceModel("gru", input_size=2, output_size=2, task="translate")
    f = fastrnn.SequenceModel("gru", input_size=2, hidden_size=4, output_size=1,
                              task="regression")
    with pytest.raises(ValueError, match="NaN"):
        f.predict(np.full((1, 3, 2), np.nan, np.float32))
    with pytest.raises(ValueError, match="per-step"):
        fastrnn.SequenceModel("gru", input_size=2, hidden_size=4, output_size=1,
                              task="sequence_regression").fit(
            np.zeros((2, 3, 2)), np.zeros((2, 1)), tbptt=2, progress=False)


@pytest.mark.parametrize("clip", [dict(), dict(clip_norm=1.0), dict(clip_value=0.5),
                                  dict(clip_norm=1.0, clip_value=0.5)])
def test_non_finite_gradients_stop_before_the_update(monkeypatch, clip):
    x, y = _pattern_data(n=16)
    m = fastrnn.SequenceModel("gru", vocab_size=4, hidden_size=8, task="next_token", seed=0)
    real_backward = m.backward

    def backward(dy, tape):
        real_backward(dy, tape)
        m.head.weight_grad[0, 0] = np.inf
    monkeypatch.setattr(m, "backward", backward)
    before = {n: p.copy() for n, p in m.named_parameters().items()}
    with pytest.raises(FloatingPointError, match="non-finite gradients"):
        m.fit(x, y, epochs=1, batch_size=8, progress=False, **clip)
    assert all(before[n].tobytes() == p.tobytes() for n, p in m.named_parameters().items())


def _padded_rows_data(n, T=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, T, 2))
    lengths = rng.integers(1, T + 1, n)
    return x, rng.integers(0, 3, (n, T)), lengths


def test_evaluate_skips_batches_of_empty_rows_and_does_not_depend_on_batch_size():
    """Rows 2-5 have length 0, so batch_size=2 makes batches with nothing to score (they
    raised "reduction='mean' over no valid entries"). The oracle: the mean cross-entropy
    over every valid step, by hand from one predict call."""
    m = fastrnn.SequenceModel("gru", input_size=2, hidden_size=6, output_size=3,
                              task="per_step_classification", dtype="float64", seed=0)
    x, y, lengths = _padded_rows_data(10)
    lengths[2:6] = 0
    logits = m.predict(x, lengths)
    valid = np.arange(x.shape[1])[None, :] < lengths[:, None]
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, y[..., None], -1)[..., 0]
    want_loss = nll[valid].mean()
    want_accuracy = (logits.argmax(-1) == y)[valid].mean()
    for bs in (1, 2, 3, 4, 256):
        r = m.evaluate(x, y, lengths, batch_size=bs)
        assert r["loss"] == pytest.approx(want_loss, rel=1e-12), bs
        assert r["accuracy"] == pytest.approx(want_accuracy, rel=1e-12), bs


def test_fit_validates_on_data_whose_first_batch_is_all_empty_rows():
    m = fastrnn.SequenceModel("gru", input_size=2, hidden_size=6, output_size=3,
                              task="per_step_classification", dtype="float64", seed=0)
    x, y, lengths = _padded_rows_data(300)
    vl = lengths.copy()
    vl[:256] = 0                    # the whole first validation batch (evaluate's 256 rows)
    h = m.fit(x[:20], y[:20], lengths[:20], epochs=1, progress=False,
              validation_data=(x, y, vl))
    assert h["val_loss"] == [pytest.approx(m.evaluate(x[256:], y[256:], vl[256:])["loss"],
                                           rel=1e-12)]


@pytest.mark.parametrize("kwargs, message", [
    (dict(hiden=3), "'hiden' (did you mean 'hidden_size'?)"),
    (dict(outputsize=2), "'outputsize' (did you mean 'output_size'?)"),
    (dict(peephole=True), "'peephole': it is an argument of cell='lstm', not cell='gru'"),
    (dict(bias=False), "'bias'"),
])
def test_an_unknown_argument_names_the_model_and_the_closest_argument(kwargs, message):
    with pytest.raises(TypeError) as info:
        fastrnn.SequenceModel("gru", input_size=2, output_size=1, **kwargs)
    assert str(info.value).startswith("SequenceModel() got an unexpected keyword argument "
                                      + message), str(info.value)


def test_repr_shows_the_architecture():
    m = fastrnn.SequenceModel("lstm", vocab_size=4, hidden_size=32, num_layers=2, dropout=0.1,
                              bidirectional=True, peephole=True, seed=0)
    assert repr(m) == (
        "SequenceModel(\n"
        "  (embedding): Embedding(4, 32)\n"
        "  (rnn): LSTM(32, 32, num_layers=2, batch_first=True, dropout=0.1, "
        "bidirectional=True, peephole='ifo')\n"
        "  (head): Linear(in_features=64, out_features=4)\n"
        "  task='next_token', dtype=float32, parameters=42,756\n"
        ")")
    assert sum(p.size for p, _ in m.parameters()) == 42756
    m = fastrnn.SequenceModel("gru", input_size=3, hidden_size=8, output_size=2,
                              task="sequence_regression", dtype="float64", reset_after=False)
    assert str(m) == (
        "SequenceModel(\n"
        "  (rnn): GRU(3, 8, batch_first=True, reset_after=False, dtype='float64')\n"
        "  (head): Linear(in_features=8, out_features=2)\n"
        "  task='sequence_regression', dtype=float64, parameters=330\n"
        ")")
    from fastrnn import io
    assert repr(io.load_bytes(io.model_bytes(m))) == repr(m)          # a loaded model too


def test_methods_show_the_documentation_and_signature_of_their_functions():
    import inspect
    from fastrnn import io, training
    m = fastrnn.SequenceModel("gru", input_size=2, hidden_size=4, output_size=1,
                              task="regression")
    assert m.fit.__doc__ == training.fit.__doc__
    assert "``tbptt``: chunk length k" in m.fit.__doc__          # the arguments' descriptions
    params = list(inspect.signature(m.fit).parameters)
    assert params == list(inspect.signature(training.fit).parameters)[1:]
    assert params[:3] == ["x", "y", "lengths"] and "checkpoint" in params
    assert m.save.__doc__ == io.save.__doc__
    assert list(inspect.signature(m.save).parameters)[:1] == ["path"]
    for name in ("to_onnx", "to_torch"):
        method = getattr(m, name)
        assert "parity" in method.__doc__.lower() and len(method.__doc__) > 300, name
        assert "check" in inspect.signature(method).parameters, name
