"""One input rule for every SequenceModel entry point (fit and its validation_data,
evaluate, predict, predict_proba, encode, step), as the SequenceModel docstring states it:
features of any real type are cast to the model's dtype (complex, bool, strings and
objects refused), token ids of any integer type, ragged lists padded. The oracle for a
cast is the same call on numpy's cast of the input, bit for bit; for a ragged list, the
call on the padded array with its lengths.

Before, fit cast float64 features and predict refused them (so ``fastrnn predict`` failed
on an array saved by np.save), and only fit took ragged lists."""
import numpy as np
import pytest

import fastrnn

B, T, I, C = 5, 6, 3, 4
REAL = ["float16", "float32", "float64", ">f4", "<f8", "int8", "int16", "int32", "int64",
        "uint8", "uint16", "uint32", "uint64"]
REFUSED = ["complex64", "complex128", "bool", "object", "U3"]
INTEGER = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "list"]


def _features():
    rng = np.random.default_rng(0)
    # small integers: every type in REAL holds them exactly, so every cast gives the same
    # float32 array and the same results
    return rng.integers(0, 5, (B, T, I)).astype(np.float64), rng.integers(0, C, (B, T))


def _feature_model(task="per_step_classification"):
    return fastrnn.SequenceModel("lstm", input_size=I, hidden_size=5, output_size=C,
                                 task=task, seed=0)


def _results(x, y, lengths=None, model=None, step=True):
    """Every entry point's result on x (fit last: it changes the model); ``step`` on the
    first time step when ``step``."""
    m = model or _feature_model()
    out = [m.predict(x, lengths), m.predict_proba(x, lengths), m.encode(x, lengths),
           m.encode(x, lengths, pooling="mean"),
           np.array(list(m.evaluate(x, y, lengths).values()))]
    if step and m.output == "per_step":
        x_t = x[:, 0] if isinstance(x, np.ndarray) else [s[0] for s in x]
        out += list(m.step(x_t, None)[:1])
    h = m.fit(x, y, lengths, epochs=1, batch_size=2, progress=False,
              validation_data=(x, y) if lengths is None else (x, y, lengths))
    out += [np.array(h["loss"] + h["val_loss"])] + [p.copy() for p, _ in m.parameters()]
    return out


def _assert_same(got, want, what):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, (what, i)
        assert a.tobytes() == b.tobytes(), f"{what}: result {i} differs"


@pytest.mark.parametrize("dtype", REAL)
def test_real_features_of_any_type_are_cast_to_the_model_dtype(dtype):
    x, y = _features()
    want = _results(x.astype(np.float32), y)
    given = x.astype(dtype)
    _assert_same(_results(given, y), want, dtype)
    np.testing.assert_array_equal(given, x.astype(dtype))              # not modified


def test_nested_lists_are_data_like_arrays():
    x, y = _features()
    _assert_same(_results(x.tolist(), y.tolist()), _results(x.astype(np.float32), y), "list")


@pytest.mark.parametrize("dtype", REFUSED)
def test_complex_bool_string_and_object_features_are_refused_everywhere(dtype):
    x, y = _features()
    bad = x.astype(dtype)
    m = _feature_model()
    calls = [lambda: m.predict(bad), lambda: m.predict_proba(bad), lambda: m.encode(bad),
             lambda: m.evaluate(bad, y), lambda: m.step(bad[:, 0], None),
             lambda: m.fit(bad, y, progress=False),
             lambda: m.fit(x, y, progress=False, validation_data=(bad, y))]
    before = [p.copy() for p, _ in m.parameters()]
    for call in calls:
        with pytest.raises(TypeError, match="x must hold real numbers"):
            call()
    assert all(np.array_equal(p, b) for (p, _), b in zip(m.parameters(), before))


def test_features_beyond_the_model_dtype_are_refused_after_the_cast():
    x, y = _features()
    x[1, 2, 0] = 1e39                     # finite in float64, infinite in float32
    m = _feature_model()
    for call in (lambda: m.predict(x), lambda: m.fit(x, y, progress=False)):
        with pytest.raises(ValueError, match=r"x contains NaN or infinity \(in the model's "
                                             r"float32\)"):
            call()


@pytest.mark.parametrize("kind", INTEGER)
def test_token_ids_of_any_integer_type_mean_the_same(kind):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 7, (B, T))
    m0, m1 = (fastrnn.SequenceModel("gru", vocab_size=7, hidden_size=5, seed=0)
              for _ in range(2))
    given = ids.tolist() if kind == "list" else ids.astype(kind)
    _assert_same(_results(given, (ids + 1) % 7, model=m1),
                 _results(ids, (ids + 1) % 7, model=m0), kind)


@pytest.mark.parametrize("dtype", ["float32", "float64", "bool"])
def test_token_ids_that_are_not_integers_are_refused(dtype):
    m = fastrnn.SequenceModel("gru", vocab_size=7, hidden_size=5, seed=0)
    ids = np.ones((B, T), dtype)
    for call in (lambda: m.predict(ids), lambda: m.encode(ids), lambda: m.step(ids[:, 0], None),
                 lambda: m.fit(ids, ids, progress=False)):
        with pytest.raises(TypeError, match="x must be integers"):
            call()


def _ragged(seed=2):
    rng = np.random.default_rng(seed)
    sizes = [6, 2, 4, 1, 6]
    xs = [rng.standard_normal((n, I)).astype(np.float32) for n in sizes]
    ys = [rng.integers(0, C, n) for n in sizes]
    return xs, ys


@pytest.mark.parametrize("task", ["per_step_classification", "sequence_classification"])
def test_ragged_lists_equal_the_padded_array_with_its_lengths(task):
    xs, ys = _ragged()
    x, lengths = fastrnn.pad_sequences(xs)
    if task == "per_step_classification":
        y = fastrnn.pad_sequences(ys)[0]
    else:
        ys = y = np.array([s[0] for s in ys])
    want = _results(x, y, lengths, _feature_model(task), step=False)
    _assert_same(_results(xs, ys, model=_feature_model(task), step=False), want, task)


def test_a_ragged_list_and_lengths_together_are_refused():
    xs, ys = _ragged()
    m = _feature_model()
    for call in (lambda: m.predict(xs, [1] * 5), lambda: m.evaluate(xs, ys, [1] * 5),
                 lambda: m.fit(xs, ys, [1] * 5, progress=False)):
        with pytest.raises(ValueError, match="give lengths only with padded arrays"):
            call()


def test_ragged_targets_must_have_the_inputs_lengths():
    xs, ys = _ragged()
    ys[1] = ys[1][:1]
    with pytest.raises(ValueError, match="y's sequences must have the lengths of x's"):
        _feature_model().evaluate(xs, ys)


def test_pad_sequences_keeps_every_sequences_values():
    x, lengths = fastrnn.pad_sequences([np.array([1, 2]), np.array([0.5])])
    assert x.dtype == np.float64                   # not the first sequence's int
    np.testing.assert_array_equal(x, [[1, 2], [0.5, 0]])
    np.testing.assert_array_equal(lengths, [2, 1])
