"""Bad input to every public entry point, and unusual input that must still give the answer.

Entry points: ``fastrnn.functional`` ``*_forward`` / ``*_backward``; the layers' ``__call__``,
``forward``/``backward``, ``step`` and ``stream().step``; the cells; ``SequenceModel``
``predict``, ``predict_proba``, ``evaluate``, ``encode``, ``step`` and ``fit``.

Each input gets either the result its contiguous, well-typed copy gets -- the same bytes,
not merely close ones -- or a ValueError/TypeError whose message names what was expected.
No input is ever modified. The hypothesis properties draw shapes, memory layouts (Fortran
order, negative strides, gaps, read-only, misaligned, offset views) and values; each has a
short variant here and a long one behind the ``long`` marker (``pytest --long``).
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastrnn
from fastrnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, SequenceModel, optim
from fastrnn import functional as F

f32, f64 = np.float32, np.float64

# examples per property: the CI run, and the long run (pytest --long)
SHORT, LONG = 50, 5000
_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                       HealthCheck.data_too_large])

LAYERS = {
    "rnn_tanh": (RNN, {}),
    "rnn_relu": (RNN, {"nonlinearity": "relu"}),
    "lstm": (LSTM, {}),
    "lstm_peephole": (LSTM, {"peephole": True}),
    "lstm_coupled": (LSTM, {"coupled": True, "peephole": "io"}),
    "gru": (GRU, {}),
    "gru_reset_before": (GRU, {"reset_after": False}),
    "gru_no_bias": (GRU, {"bias": False}),
}


# ---- helpers ----------------------------------------------------------------------------

def _arrays(obj):
    """Every numpy array inside obj (nested tuples/lists/dicts)."""
    if isinstance(obj, np.ndarray):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        return [a for o in obj for a in _arrays(o)]
    return []


def snapshot(*objs):
    """(array, its bytes, its strides) for every array given: to prove nothing was modified.
    Zero-stride views of huge logical size (the overflow cases) are left out: their bytes
    would not fit in memory, and they are read-only."""
    return [(a, a.tobytes(), a.strides) for o in objs for a in _arrays(o)
            if a.size < 10 ** 7]


def assert_unchanged(snap):
    for a, raw, strides in snap:
        assert a.strides == strides and a.tobytes() == raw, "an input was modified"


def assert_same(got, want, what="result"):
    """Bit-identical results (NaNs included): shapes, dtypes and bytes."""
    if isinstance(want, (tuple, list)):
        assert isinstance(got, (tuple, list)) and len(got) == len(want), what
        for k, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{what}[{k}]")
        return
    if want is None:
        assert got is None, what
        return
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, \
        f"{what}: {got.dtype}{got.shape} != {want.dtype}{want.shape}"
    if got.tobytes() != want.tobytes():
        bad = np.flatnonzero(got.reshape(-1) != want.reshape(-1))[:5]
        pytest.fail(f"{what} differs from the contiguous copy's at flat indices {bad}: "
                    f"{got.reshape(-1)[bad]} vs {want.reshape(-1)[bad]}; max abs diff "
                    f"{np.nanmax(np.abs(got.astype(f64) - want.astype(f64)))}")


LAYOUTS = ("C", "F", "reversed", "gaps", "readonly", "misaligned", "offset", "swapped")


def relayout(a, how):
    """An array equal to ``a`` element by element, laid out in memory as ``how`` says."""
    a = np.asarray(a)
    if how == "C":
        return a.copy()
    if how == "F":
        return np.asfortranarray(a)
    if how == "reversed":                       # negative strides on every axis
        return np.flip(np.flip(a).copy())
    if how == "gaps":                           # every other element of a wider array
        if a.ndim == 0:
            return a.copy()
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1] + 1,), a.dtype)
        big[..., 1::2] = a
        return big[..., 1::2]
    if how == "readonly":
        b = a.copy()
        b.flags.writeable = False
        return b
    if how == "misaligned":                     # an odd byte offset: not aligned to itemsize
        buf = np.zeros(a.nbytes + a.itemsize + 1, np.uint8)
        b = np.ndarray(a.shape, a.dtype, buffer=buf, offset=1)
        b[...] = a
        assert a.itemsize == 1 or a.size == 0 or not b.flags.aligned
        return b
    if how == "offset":                         # contiguous, one element into a buffer
        buf = np.zeros(a.size + 1, a.dtype)
        b = buf[1:].reshape(a.shape)
        b[...] = a
        return b
    if how == "swapped":                        # the first two axes transposed in memory
        if a.ndim < 2:
            return a.copy()
        return np.ascontiguousarray(np.swapaxes(a, 0, 1)).swapaxes(0, 1)
    raise AssertionError(how)


def relayout_state(state, how):
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(relayout(s, how) for s in state)
    return relayout(state, how)


def copy_state(state):
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(np.array(s) for s in state)
    return np.array(state)


def make_layer(name, I, H, **kw):
    cls, extra = LAYERS[name]
    layer = cls(I, H, seed=0, **extra, **kw)
    if layer.bias:      # non-zero biases, so that a bias read from the wrong place shows
        rng = np.random.default_rng(1)
        for k, v in layer.params.items():
            if k.startswith("bias"):
                v[:] = rng.uniform(-0.5, 0.5, v.shape)
    return layer


def refuses(fn, exc, match, *inputs):
    """fn() raises exc (ValueError/TypeError) with a message matching ``match``, and leaves
    every array in ``inputs`` as it was."""
    assert exc in (ValueError, TypeError) or issubclass(exc, (ValueError, TypeError))
    snap = snapshot(*inputs)
    with pytest.raises(exc, match=match):
        fn()
    assert_unchanged(snap)


FLOATS = st.floats(-6, 6, allow_nan=False, width=32)
_F32_BIG = float(np.float32(3e38))
BAD_DTYPES = (np.float16, np.int8, np.int32, np.int64, np.uint8, np.complex64, np.complex128,
              np.bool_, object, "U3", ">f4")


# ---- functional: refused inputs ---------------------------------------------------------

T, B, I, H = 4, 3, 5, 6
_rng = np.random.default_rng(0)


def _lstm_args(dtype=f32):
    r = np.random.default_rng(0)
    return dict(x=r.standard_normal((T, B, I)).astype(dtype), h0=None, c0=None,
                W_ih=r.standard_normal((4 * H, I)).astype(dtype),
                W_hh=r.standard_normal((4 * H, H)).astype(dtype),
                b_ih=np.zeros(4 * H, dtype), b_hh=np.zeros(4 * H, dtype))


def _call_lstm(**change):
    a = _lstm_args()
    kw = {k: change.pop(k) for k in list(change) if k in ("lengths", "n_threads", "coupled",
                                                             "p_i", "p_f", "p_o")}
    a.update(change)
    return F.lstm_forward(a["x"], a["h0"], a["c0"], a["W_ih"], a["W_hh"], a["b_ih"], a["b_hh"],
                          **kw)


def _x(dtype=f32, shape=(T, B, I)):
    return np.ones(shape, dtype) if np.dtype(dtype).kind != "U" else np.full(shape, "a", dtype)


_HUGE = np.lib.stride_tricks.as_strided(np.zeros(1, f32), (2 ** 20, 2 ** 12, I), (0, 0, 0))
FUNCTIONAL_REFUSED = [
    *[(dict(x=_x(dt)), TypeError, "x has dtype .* expected float32") for dt in BAD_DTYPES],
    (dict(x=_x(shape=(B, I))), ValueError, r"x must be 3-D \(T, B, I\)"),
    (dict(x=_x(shape=(1, T, B, I))), ValueError, r"x must be 3-D \(T, B, I\)"),
    (dict(x=_x(shape=(T, B, I + 1))), ValueError, r"W_ih has shape .* expected \(24, 6\)"),
    (dict(x=None), TypeError, "x must be a numpy array"),
    (dict(x=1.5), TypeError, "x must be a numpy array"),
    (dict(x="abc"), TypeError, "x must be a numpy array"),
    (dict(x=[[["a"] * I] * B] * T), TypeError, "list of real numbers"),
    (dict(x=[[[1j] * I] * B] * T), TypeError, "list of real numbers"),
    (dict(x=[[[1.0] * I] * B, [[1.0] * I]]), (ValueError, TypeError), "list of real numbers"),
    (dict(x=_HUGE), ValueError, "32-bit index range"),
    (dict(W_ih=np.zeros((4 * H, I), np.float16)), TypeError,
     "weights must be float32 or float64"),
    (dict(W_ih=np.zeros((4 * H, I)).tolist()), TypeError, "W_ih must be a numpy array"),
    (dict(W_hh=np.zeros((4 * H, H + 1), f32)), ValueError, r"W_hh must have shape \(4\*H, H\)"),
    (dict(W_hh=np.zeros((4 * H,), f32)), ValueError, r"W_hh must have shape"),
    (dict(W_hh=np.zeros((4 * H, H), f64)), TypeError, "W_hh has dtype float64, expected float32"),
    (dict(W_ih=np.lib.stride_tricks.as_strided(np.zeros(1, f32), (4 * H, 2 ** 27), (0, 0)),
          x=np.lib.stride_tricks.as_strided(np.zeros(1, f32), (1, 1, 2 ** 27), (0, 0, 0))),
     ValueError, "32-bit index range"),
    (dict(b_ih=None), TypeError, "b_ih must be a numpy array"),
    (dict(b_hh=np.zeros(4 * H + 1, f32)), ValueError, r"b_hh has shape \(25,\), expected \(24,\)"),
    (dict(h0=np.zeros((B, H + 1), f32)), ValueError, r"h0 has shape \(3, 7\), expected \(3, 6\)"),
    (dict(h0=np.zeros((B, H), f64)), TypeError, "h0 has dtype float64, expected float32"),
    (dict(c0=np.zeros((1, B, H), f32)), ValueError, r"c0 has shape .* expected \(3, 6\)"),
    (dict(h0=0.0), TypeError, "h0 must be a numpy array"),
    (dict(lengths=[-1, 2, 3]), ValueError, r"lengths must lie in \[0, T=4\]"),
    (dict(lengths=[5, 2, 3]), ValueError, r"lengths must lie in \[0, T=4\]"),
    (dict(lengths=[1, 2]), ValueError, r"lengths must have shape \(3,\)"),
    (dict(lengths=[[1, 2, 3]]), ValueError, r"lengths must have shape \(3,\)"),
    (dict(lengths=[1.0, 2.0, 3.0]), TypeError, "lengths must be integers"),
    (dict(lengths=[True, False, True]), TypeError, "lengths must be integers"),
    (dict(lengths="abc"), TypeError, "lengths must be integers"),
    (dict(lengths=np.array([2 ** 63 + 5, 1, 1], np.uint64)), ValueError, "lengths must lie"),
    (dict(n_threads=0), ValueError, "n_threads=0"),
    (dict(n_threads=1.5), TypeError, "n_threads must be an int"),
    (dict(n_threads="2"), TypeError, "n_threads must be an int"),
    (dict(n_threads=True), TypeError, "n_threads must be an int"),
    (dict(coupled="no"), TypeError, "coupled must be True or False"),
    (dict(p_i=np.zeros(H + 1, f32)), ValueError, r"p_i has shape \(7,\), expected \(6,\)"),
    (dict(coupled=True, p_f=np.zeros(H, f32), W_ih=np.zeros((3 * H, I), f32),
          W_hh=np.zeros((3 * H, H), f32), b_ih=np.zeros(3 * H, f32), b_hh=np.zeros(3 * H, f32)),
     ValueError, "p_f must be None"),
]


@pytest.mark.parametrize("change,exc,match", FUNCTIONAL_REFUSED,
                         ids=[f"{i}-{'-'.join(c)}" for i, (c, _, _) in
                              enumerate(FUNCTIONAL_REFUSED)])
def test_functional_forward_refuses(change, exc, match):
    exc = exc if isinstance(exc, tuple) else (exc,)
    snap = snapshot(change)
    with pytest.raises(exc, match=match):
        _call_lstm(**dict(change))
    assert_unchanged(snap)


def test_functional_other_cells_refuse_their_own_bad_arguments():
    r = np.random.default_rng(0)
    x = r.standard_normal((T, B, I)).astype(f32)
    W1, U1, b1 = np.zeros((H, I), f32), np.zeros((H, H), f32), np.zeros(H, f32)
    W3, U3, b3 = np.zeros((3 * H, I), f32), np.zeros((3 * H, H), f32), np.zeros(3 * H, f32)
    refuses(lambda: F.rnn_forward(x, None, W1, U1, b1, b1, nonlinearity="sigmoid"), ValueError,
            "nonlinearity must be 'tanh' or 'relu'", x)
    refuses(lambda: F.rnn_forward(x, None, W1, U1, b1, b1, nonlinearity=["tanh"]), ValueError,
            "nonlinearity must be 'tanh' or 'relu'", x)
    refuses(lambda: F.gru_forward(x, None, W3, U3, b3, b3, reset_after="False"), TypeError,
            "reset_after must be True or False", x)
    refuses(lambda: F.gru_forward(x, None, W1, U1, b1, b1), ValueError,
            r"W_hh must have shape \(3\*H, H\)", x)
    refuses(lambda: F.rnn_forward(x.astype(f64), None, W1, U1, b1, b1), TypeError,
            "x has dtype float64, expected float32")


def test_functional_backward_refuses():
    a = _lstm_args()

    def fresh():
        return F.lstm_forward(a["x"], None, None, a["W_ih"], a["W_hh"], a["b_ih"], a["b_hh"])[3]
    dhs = np.ones((T, B, H), f32)
    refuses(lambda: F.lstm_backward(np.ones((T, B, H + 1), f32), None, None, fresh()),
            ValueError, r"dhs has shape \(4, 3, 7\), expected \(4, 3, 6\)")
    refuses(lambda: F.lstm_backward(dhs.astype(f64), None, None, fresh()), TypeError,
            "dhs has dtype float64, expected float32")
    refuses(lambda: F.lstm_backward(dhs, np.ones((B, H), f32)[:, :2], None, fresh()),
            ValueError, r"dh_n has shape .* expected \(3, 6\)", dhs)
    refuses(lambda: F.lstm_backward(dhs, None, None, None), TypeError,
            "cache must be the cache returned by fastrnn.functional.lstm_forward")
    refuses(lambda: F.gru_backward(dhs, None, fresh()), TypeError,
            "cache returned by fastrnn.functional.gru_forward")
    refuses(lambda: F.lstm_backward(dhs, None, None, fresh(), grads=[1]), TypeError,
            "grads must be a dict")
    refuses(lambda: F.lstm_backward(dhs, None, None, fresh(), grads={}), ValueError,
            r"grads\['W_ih'\] must be a writeable C-contiguous float32 array")
    ro = {k: np.zeros(s, f32) for k, s in (("W_ih", (4 * H, I)), ("W_hh", (4 * H, H)),
                                           ("b_ih", (4 * H,)), ("b_hh", (4 * H,)))}
    ro["W_hh"].flags.writeable = False
    refuses(lambda: F.lstm_backward(dhs, None, None, fresh(), grads=ro), ValueError,
            r"grads\['W_hh'\] must be a writeable", ro)
    refuses(lambda: F.lstm_backward(dhs, None, None, fresh(), n_threads=0), ValueError,
            "n_threads=0")


def test_n_threads_beyond_any_machine_is_refused_not_a_crash():
    """OpenMP asked for a million threads crashes the process (seen: SIGSEGV in libgomp);
    fastrnn refuses such a count up front. Run in a subprocess: a build that lacks the
    check must fail this test, not take the test session down."""
    import subprocess
    import sys
    code = ("import numpy as np, fastrnn\n"
            "try:\n"
            "    fastrnn.LSTM(3, 4, n_threads=10**6)\n"
            "    print('accepted')\n"
            "except ValueError as e:\n"
            "    print('refused', e)\n"
            "try:\n"
            "    fastrnn.set_num_threads(10**6)\n"
            "    print('accepted')\n"
            "except ValueError as e:\n"
            "    print('refused', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all(l.startswith("refused n_threads=1000000") for l in lines), \
        out.stdout
    assert fastrnn.effective_n_threads(-10 ** 30) == 1       # "all but 10**30 CPUs": one


# ---- layers, steps, streams, cells: refused inputs ----------------------------------------

def test_layer_call_and_forward_refuse():
    m = LSTM(I, H, num_layers=2, seed=0)
    x = np.ones((T, B, I), f32)
    ok_state = (np.zeros((2, B, H), f32), np.zeros((2, B, H), f32))
    for call in (lambda *a, **k: m(*a, **k), lambda *a, **k: m.forward(*a, **k)):
        for dt in BAD_DTYPES:
            refuses(lambda: call(_x(dt)), TypeError, r"x has dtype .* expected float32")
        refuses(lambda: call(x[0, 0]), ValueError, r"x must be 3-D \(T, B, I\) or 2-D \(T, I\)")
        refuses(lambda: call(x[None]), ValueError, "x must be 3-D")
        refuses(lambda: call(x[..., :4]), ValueError, "x has 4 features, expected input_size=5")
        refuses(lambda: call(None), TypeError, "x must be a numpy array")
        refuses(lambda: call([[["a"] * I]]), TypeError, "list of real numbers")
        refuses(lambda: call(x, (ok_state[0], ok_state[1][:, :, :2])), ValueError,
                r"initial state has shape \(2, 3, 2\), expected \(2, 3, 6\)", x, ok_state)
        refuses(lambda: call(x, list(ok_state)), TypeError, r"LSTM state must be a pair", x)
        refuses(lambda: call(x, ok_state[0]), TypeError, r"LSTM state must be a pair", x)
        refuses(lambda: call(x, (ok_state[0].astype(f64), ok_state[1])), TypeError,
                "initial state has dtype float64, expected float32")
        refuses(lambda: call(x, lengths=[1.0, 2.0, 3.0]), TypeError, "lengths must be integers")
        refuses(lambda: call(x, lengths=[1, 2]), ValueError, r"lengths must have shape \(3,\)")
        refuses(lambda: call(x, lengths=[-1, 2, 3]), ValueError, r"lengths must lie in \[0, T=4\]")
        refuses(lambda: call(x, lengths=[5, 2, 3]), ValueError, r"lengths must lie in \[0, T=4\]")
        refuses(lambda: call(x, lengths=2), ValueError, r"lengths must have shape \(3,\)")
    # batch_first: the layout is the layer's; a lengths count that fits the other reading
    # of the axes is caught
    bf = LSTM(I, H, batch_first=True, seed=0)
    refuses(lambda: bf(np.ones((B, T, I), f32), lengths=[1] * T), ValueError,
            r"lengths must have shape \(3,\)")
    g = GRU(I, H, seed=0)
    refuses(lambda: g(x, (np.zeros((1, B, H), f32),) * 2), ValueError, "initial state has shape")
    big = np.broadcast_to(np.float32(0), (2 ** 16, 2 ** 16, I))
    refuses(lambda: g(big), ValueError, "32-bit index range")


def test_layer_backward_refuses():
    m = GRU(I, H, seed=0)
    x = np.ones((T, B, I), f32)
    _, _, tape = m.forward(x)
    refuses(lambda: m.backward(np.ones((T, B, H + 1), f32), None, tape), ValueError,
            "dout has shape .* expected the output's shape")
    for dt in (np.complex64, np.int32, np.bool_, object, "U3"):
        refuses(lambda: m.backward(_x(dt, (T, B, H)), None, m.forward(x)[2]), TypeError,
                "dout has dtype .* expected floats")
    refuses(lambda: m.backward(None, None, (1, 2)), TypeError,
            r"tape must be the third value returned by this layer's forward\(\)")
    refuses(lambda: m.backward(None, None, None), TypeError, "tape must be")
    other = GRU(I, H, seed=0)                 # same shapes: its tape would run silently
    refuses(lambda: other.backward(None, None, tape), TypeError, "tape must be")
    model = SequenceModel("gru", input_size=I, hidden_size=H, output_size=2,
                          task="regression", seed=0)
    _, _, mtape = model.forward(np.ones((B, T, I), f32), need_tape=True)
    twin = SequenceModel("gru", input_size=I, hidden_size=H, output_size=2,
                         task="regression", seed=0)
    refuses(lambda: twin.backward(np.ones((B, T, 2), f32), mtape), TypeError,
            "tape must be the third value returned by this model's forward")
    refuses(lambda: model.backward(np.ones((B, T, 2), f32), tape), TypeError, "tape must be")


def test_layer_constructors_refuse():
    good = dict(input_size=I, hidden_size=H)
    bad = [(dict(input_size=0), ValueError, "input_size must be a positive int"),
           (dict(input_size=2.5), ValueError, "input_size must be a positive int"),
           (dict(input_size="5"), ValueError, "input_size must be a positive int"),
           (dict(hidden_size=-1), ValueError, "hidden_size must be a positive int"),
           (dict(hidden_size=True), ValueError, "hidden_size must be a positive int"),
           (dict(num_layers=0), ValueError, "num_layers must be a positive int"),
           (dict(dropout=1.0), ValueError, r"dropout must be a number in \[0, 1\)"),
           (dict(dropout=float("nan")), ValueError, "dropout must be a number"),
           (dict(dropout="0.1"), ValueError, "dropout must be a number"),
           (dict(dtype=np.float16), TypeError, "dtype must be float32 or float64"),
           (dict(dtype="int32"), TypeError, "dtype must be float32 or float64"),
           (dict(bias="False"), TypeError, "bias must be True or False"),
           (dict(batch_first="no"), TypeError, "batch_first must be True or False"),
           (dict(bidirectional=2), TypeError, "bidirectional must be True or False"),
           (dict(n_threads=0), ValueError, "n_threads=0"),
           (dict(n_threads="x"), TypeError, "n_threads must be an int"),
           (dict(input_size=10 ** 10), ValueError, "32-bit index range"),
           (dict(hidden_size=10 ** 5), ValueError, "32-bit index range")]
    for change, exc, match in bad:
        with pytest.raises(exc, match=match):
            LSTM(**{**good, **change})
    with pytest.raises(TypeError, match="coupled must be True or False"):
        LSTM(I, H, coupled="yes")
    with pytest.raises(TypeError, match="reset_after must be True or False"):
        GRU(I, H, reset_after="no")
    with pytest.raises(ValueError, match="peephole must be a bool or a string"):
        LSTM(I, H, peephole=3)
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'"):
        RNN(I, H, nonlinearity=["tanh"])


def test_load_state_dict_refuses_and_changes_nothing():
    m = LSTM(I, H, seed=0)
    before = m.flat.copy()
    good = m.state_dict()
    cases = [
        ([1], TypeError, "state must be a mapping"),
        ({k: v.astype(np.complex64) for k, v in good.items()}, TypeError,
         "dtype complex64, expected a float array"),
        ({k: v.astype(np.int64) for k, v in good.items()}, TypeError, "expected a float array"),
        ({k: "a" for k in good}, TypeError, "expected a float array"),
        ({**good, "weight_hh_l0": good["weight_hh_l0"][:, :2]}, ValueError,
         r"weight_hh_l0: shape \(24, 2\), expected \(24, 6\)"),
        ({**good, "bias_ih_l0": good["bias_ih_l0"] * np.nan}, ValueError,
         "bias_ih_l0 holds NaN or infinity"),
        ({**good, "bias_ih_l0": np.full(4 * H, 1e300)}, ValueError,
         r"NaN or infinity \(in the layer's float32\)"),
        ({k: v for k, v in good.items() if k != "bias_hh_l0"}, ValueError, "missing"),
        ({**good, "extra": good["bias_hh_l0"]}, ValueError, "unexpected"),
    ]
    for state, exc, match in cases:
        refuses(lambda: m.load_state_dict(state), exc, match, state)
        np.testing.assert_array_equal(m.flat, before)       # nothing half-written


def test_step_and_stream_refuse():
    m = LSTM(I, H, num_layers=2, seed=0)
    xt = np.ones((B, I), f32)
    st_ok = m.initial_state(B)
    refuses(lambda: m.step(xt[0], None), ValueError, r"x_t must be 2-D \(batch, input_size\)", xt)
    refuses(lambda: m.step(xt.astype(f64), None), TypeError,
            "x_t has dtype float64, expected float32")
    refuses(lambda: m.step(xt[:, :4], None), ValueError, "x_t has 4 features, expected 5")
    refuses(lambda: m.step(xt, (st_ok[0][:, :, :2], st_ok[1])), ValueError,
            r"state must be a pair of float32 arrays of shape \(2, 3, 6\)", st_ok)
    refuses(lambda: m.step(xt, tuple(s.astype(f64) for s in st_ok)), ValueError,
            "state must be a pair of float32 arrays")
    refuses(lambda: GRU(I, H).step(xt, (np.zeros((1, B, H), f32),)), ValueError,
            r"state must be float32 arrays of shape \(1, 3, 6\)")
    refuses(lambda: GRU(I, H, bidirectional=True).step(xt, None), ValueError, "bidirectional")
    refuses(lambda: m.step(np.broadcast_to(np.float32(0), (2 ** 27, I)), None), ValueError,
            "too large for the kernels' 32-bit index range")
    s = m.stream(B)
    state0 = s.get_state()
    for bad, exc, match in [
            (xt[:2], ValueError, r"x_t has shape \(2, 5\), expected \(3, 5\)"),
            (xt.astype(f64), TypeError, "x_t has dtype float64, expected float32"),
            (xt.astype(np.complex64), TypeError, "x_t has dtype complex64"),
            (None, TypeError, r"x_t must be a numpy array of shape \(3, 5\)"),
            (xt.tobytes(), TypeError, "x_t must be a numpy array"),
            (xt[None], ValueError, "x_t has shape")]:
        refuses(lambda: s.step(bad), exc, match, bad)
    assert_same(s.get_state(), state0, "the state after refused steps")
    for batch, exc, match in [(0, ValueError, "batch must be a positive int"),
                              (2.0, ValueError, "batch must be a positive int"),
                              (2 ** 31, ValueError, "too large"),
                              (10 ** 12, ValueError, "too large")]:
        refuses(lambda: m.stream(batch), exc, match)
    refuses(lambda: s.set_state((st_ok[0][:, :1], st_ok[1][:, :1])), ValueError,
            r"state arrays must be float32 of shape \(2, 3, 6\)")
    refuses(lambda: s.set_state(list(st_ok)), ValueError, r"an LSTM stream's state is a pair")


def test_cells_refuse():
    c = LSTMCell(I, H, seed=0)
    g = GRUCell(I, H, seed=0)
    x = np.ones((B, I), f32)
    h = np.zeros((B, H), f32)
    refuses(lambda: c(x.astype(f64)), TypeError, "x has dtype float64, expected float32")
    refuses(lambda: c(x[None]), ValueError, r"x must be \(batch, input_size\) or \(input_size,\)")
    refuses(lambda: c("abc"), ValueError, r"x must be \(batch, input_size\)")
    refuses(lambda: c(x, h), TypeError, r"LSTMCell state must be a pair \(h, c\)")
    refuses(lambda: c(x, (h, h[:, :2])), ValueError, r"state has shape \(3, 2\), expected \(3, 6\)")
    refuses(lambda: g(x, (h, h)), TypeError, "GRUCell state must be one array h, not a tuple")
    refuses(lambda: g(x, (h,)), TypeError, "GRUCell state must be one array h")
    refuses(lambda: g(x[0], h), ValueError, r"state has shape \(3, 6\), expected \(6,\)")
    refuses(lambda: RNNCell(I, H)(x, h.astype(f64)), TypeError, "initial state has dtype float64")


# ---- SequenceModel: refused inputs ------------------------------------------------------

def _models():
    feat = SequenceModel("lstm", input_size=I, hidden_size=H, output_size=3,
                         task="per_step_classification", seed=0)
    tok = SequenceModel("gru", vocab_size=10, hidden_size=H, task="next_token", seed=0)
    seq = SequenceModel("rnn", input_size=I, hidden_size=H, output_size=2,
                        task="sequence_regression", seed=0)
    return feat, tok, seq


def test_model_inference_refuses():
    feat, tok, seq = _models()
    x = np.ones((B, T, I), f32)
    y = np.zeros((B, T), np.int64)
    for fn in (feat.predict, feat.predict_proba, feat.encode,
               lambda a, **k: feat.evaluate(a, y, **k)):
        for dt in BAD_DTYPES:
            xd = _x(dt, (B, T, I))
            if np.dtype(dt).kind in "fiu":      # real numbers of any width are cast, once
                np.testing.assert_array_equal(fn(xd), fn(xd.astype(f32)))
                continue
            refuses(lambda: fn(xd), TypeError, "x must hold real numbers", xd)
        refuses(lambda: fn(x[0]), ValueError, r"x must be 3-D \(batch, time, 5\)")
        refuses(lambda: fn(None), ValueError, "x must be 3-D")
        refuses(lambda: fn("abc"), ValueError, "x must be 3-D")
        refuses(lambda: fn(x[..., :4]), ValueError, "x has 4 features, expected input_size=5")
        for v in (np.nan, np.inf, -np.inf):
            xn = x.copy()
            xn[1, 2, 3] = v
            refuses(lambda: fn(xn), ValueError, "x contains NaN or infinity", xn)
        refuses(lambda: fn(x, lengths=[1.0, 2.0, 3.0]), TypeError, "lengths must be integers")
        refuses(lambda: fn(x, lengths=[1, 2]), ValueError, r"lengths must have shape \(3,\)")
        refuses(lambda: fn(x, lengths=[1, 2, 3, 4, 4]), ValueError,
                r"lengths must have shape \(3,\)")
        refuses(lambda: fn(x, lengths=[1, 2, 9]), ValueError, r"lengths must lie in \[0, T=4\]")
        refuses(lambda: fn(x, lengths=[1, -2, 3]), ValueError, r"lengths must lie in \[0, T=4\]")
        refuses(lambda: fn(np.broadcast_to(np.float32(0), (1, 2 ** 28, I))), ValueError,
                "too long for the kernels' 32-bit index range")
    for bs in (0, -1, 1.5, "8", True):
        refuses(lambda: feat.predict(x, batch_size=bs), ValueError,
                "batch_size must be a positive int")
        refuses(lambda: feat.evaluate(x, y, batch_size=bs), ValueError,
                "batch_size must be a positive int")
    refuses(lambda: feat.evaluate(x, y[:2]), ValueError,
            r"y must hold one target per sequence \(3\)")
    refuses(lambda: feat.evaluate(x, y + 5), ValueError, r"class indices in \[0, 3\)")
    refuses(lambda: feat.evaluate(x, y.astype(f64)), TypeError, "integer class indices")
    refuses(lambda: feat.encode(x, pooling="max"), ValueError, "pooling must be 'last' or 'mean'")
    refuses(lambda: seq.predict_proba(x), ValueError, "predict_proba is for classification")
    yr = np.zeros((B, 2))
    refuses(lambda: seq.evaluate(x, yr.astype(np.complex64)), TypeError,
            "targets must be real numbers")
    refuses(lambda: seq.evaluate(x, yr + np.nan), ValueError, "targets contain NaN or infinity")
    ids = np.zeros((B, T), np.int64)
    refuses(lambda: tok.predict(ids.astype(f32)), TypeError, "token ids: x must be integers")
    refuses(lambda: tok.predict(ids.astype(bool)), TypeError, "x must be integers")
    refuses(lambda: tok.predict(ids + 10), ValueError, r"token ids must lie in \[0, 10\)")
    refuses(lambda: tok.predict(ids - 1), ValueError, r"token ids must lie in \[0, 10\)")
    refuses(lambda: tok.predict(np.full((B, T), 2 ** 64 - 1, np.uint64)), ValueError,
            "token ids must lie in")
    refuses(lambda: tok.predict(ids[None]), ValueError, r"token ids must be 2-D \(batch, time\)")


def test_model_step_refuses():
    feat, tok, seq = _models()
    xt = np.ones((B, I), f32)
    np.testing.assert_array_equal(feat.step(xt.astype(f64), None)[0], feat.step(xt, None)[0])
    refuses(lambda: feat.step(xt.astype(np.complex64), None), TypeError,
            "x must hold real numbers")
    refuses(lambda: feat.step(xt[None], None), ValueError, r"x must be 2-D \(batch, 5\)")
    refuses(lambda: feat.step(np.full((B, I), np.nan, f32), None), ValueError, "NaN or infinity")
    refuses(lambda: feat.step(xt, (np.zeros((1, B, H), f32),) * 2 + (None,)), ValueError,
            "state must be")
    refuses(lambda: tok.step(np.zeros(B, f32), None), TypeError, "x must be integers")
    refuses(lambda: tok.step(np.zeros((B, 2), np.int64), None), ValueError,
            r"token ids must be 1-D \(batch,\)")
    refuses(lambda: tok.step(np.array([1, 10, 2]), None), ValueError,
            r"token ids must lie in \[0, 10\)")
    refuses(lambda: seq.step(xt, None), ValueError, "step\\(\\) is for per-step tasks")


def test_model_constructor_refuses():
    good = dict(cell="lstm", input_size=I, hidden_size=H, output_size=3, task="regression")
    for change, exc, match in [
            (dict(output_size=0), ValueError, "output_size must be a positive int"),
            (dict(output_size=2.5), ValueError, "output_size must be a positive int"),
            (dict(hidden_size="8"), ValueError, "hidden_size must be a positive int"),
            (dict(input_size=0), ValueError, "input_size must be a positive int"),
            (dict(input_size=None, vocab_size=0), ValueError, "vocab_size must be a positive int"),
            (dict(input_size=None, vocab_size=5, embedding_dim=0), ValueError,
             "embedding_dim must be a positive int"),
            (dict(cell=["lstm"]), ValueError, "cell must be one of"),
            (dict(task="nope"), ValueError, "task must be one of"),
            (dict(dropout=2), ValueError, "dropout must be a number"),
            (dict(dtype="int8"), TypeError, "dtype must be float32 or float64"),
            (dict(n_threads=0), ValueError, "n_threads=0"),
            (dict(bidirectional="yes"), TypeError, "bidirectional must be True or False"),
            (dict(coupled="no"), TypeError, "coupled must be True or False")]:
        with pytest.raises(exc, match=match):
            SequenceModel(**{**good, **change})
    # numpy ints are accepted and stored as Python ints (the config goes into model files)
    m = SequenceModel(**{**good, "hidden_size": np.int64(4), "output_size": np.int32(2)})
    assert type(m.config["hidden_size"]) is int and type(m.config["output_size"]) is int
    assert fastrnn.io.load_bytes(fastrnn.io.model_bytes(m)).config["hidden_size"] == 4


# ---- fit: hyper-parameters and data refused up front; a non-finite step stops it ----------

def _fit_data():
    r = np.random.default_rng(0)
    return r.standard_normal((8, 7, I)).astype(f32), r.integers(0, 3, (8, 7))


FIT_REFUSED = [
    (dict(lr=-1), ValueError, "lr must be a positive finite number"),
    (dict(lr=float("nan")), ValueError, "lr must be a positive finite number"),
    (dict(lr="0.1"), ValueError, "lr must be a positive finite number"),
    (dict(epochs=0), ValueError, "epochs must be a positive int"),
    (dict(epochs=1.5), ValueError, "epochs must be a positive int"),
    (dict(batch_size=0), ValueError, "batch_size must be a positive int"),
    (dict(optimizer="foo"), ValueError, "optimizer must be one of"),
    (dict(optimizer=3), TypeError, r"optimizer must be a name .* or an optimizer object"),
    (dict(weight_decay=-1), ValueError, "weight_decay must be >= 0"),
    (dict(weight_decay=float("nan")), ValueError, "weight_decay must be finite"),
    (dict(clip_norm=0), ValueError, "clip_norm must be a positive finite number"),
    (dict(clip_value=float("inf")), ValueError, "clip_value must be a positive finite number"),
    (dict(tbptt=0), ValueError, "tbptt must be a positive int"),
    (dict(max_steps=0), ValueError, "max_steps must be a positive int"),
    (dict(max_steps=-1), ValueError, "max_steps must be a positive int"),
    (dict(max_steps=1.5), ValueError, "max_steps must be a positive int"),
    (dict(shuffle="no"), TypeError, "shuffle must be True or False"),
    (dict(progress="yes"), TypeError, "progress must be True or False"),
    (dict(schedule=3), TypeError, "schedule must be a callable"),
    (dict(early_stopping=0), ValueError, "early_stopping must be a positive int"),
    (dict(early_stopping=2), ValueError, "early_stopping needs validation_data"),
    (dict(checkpoint_every=2), ValueError, "checkpoint_every needs checkpoint"),
    (dict(validation_data=(1,)), ValueError, r"validation_data must be \(x, y\)"),
    (dict(x=_fit_data()[0].astype(np.complex64)), TypeError, "x must hold real numbers"),
    (dict(x=_fit_data()[0].astype(str)), TypeError, "x must hold real numbers"),
    (dict(x=_fit_data()[0] > 0), TypeError, "x must hold real numbers"),
    (dict(x=_fit_data()[0].astype(object)), TypeError, "x must hold real numbers"),
    (dict(x=np.full((8, 7, I), np.nan, f32)), ValueError, "x contains NaN or infinity"),
    (dict(x=np.zeros((8, 0, I), f32), y=np.zeros((8, 0), np.int64)), ValueError,
     "T >= 1 time steps"),
    (dict(x=np.zeros((0, 7, I), f32), y=np.zeros((0, 7), np.int64)), ValueError,
     "no training data"),
    (dict(y=_fit_data()[1][:3]), ValueError, "x has 8 sequences but y has 3"),
    (dict(lengths=[1.0] * 8), TypeError, "lengths must be integers"),
    (dict(lengths=[9] * 8), ValueError, r"lengths must lie in \[0, T=7\]"),
    (dict(lengths=[1] * 7), ValueError, r"lengths must have shape \(8,\)"),
]


@pytest.mark.parametrize("change,exc,match", FIT_REFUSED,
                         ids=[f"{i}-{'-'.join(c)}" for i, (c, _, _) in enumerate(FIT_REFUSED)])
def test_fit_refuses_up_front(change, exc, match):
    m = SequenceModel("lstm", input_size=I, hidden_size=H, output_size=3,
                      task="per_step_classification", seed=0)
    before = [p.copy() for p, _ in m.parameters()]
    x, y = _fit_data()
    kw = dict(epochs=1, batch_size=4, progress=False)
    kw.update(change)
    x, y = kw.pop("x", x), kw.pop("y", y)
    refuses(lambda: m.fit(x, y, **kw), exc, match, x, y)
    for (p, _), b in zip(m.parameters(), before):
        np.testing.assert_array_equal(p, b)


def test_fit_refuses_an_optimizer_of_another_model():
    m, other = (SequenceModel("gru", input_size=I, hidden_size=H, output_size=3,
                              task="per_step_classification", seed=s) for s in (0, 1))
    x, y = _fit_data()
    with pytest.raises(ValueError, match="updates none of this model's parameters"):
        m.fit(x, y, optimizer=optim.SGD(other.parameters(), lr=0.1), progress=False)


class _PoisonOnSecondStep(optim.SGD):
    """An SGD whose second update overflows a weight to infinity (as lr * grad can)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.calls, self.after_first = 0, None

    def step(self):
        super().step()
        self.calls += 1
        if self.calls == 1:
            self.after_first = [p.copy() for p in self.params]
        if self.calls == 2:
            self.params[0][3] = np.inf


@pytest.mark.parametrize("kind", ["update_overflows", "loss_is_inf", "huge_lr"])
def test_a_non_finite_step_stops_fit_and_keeps_the_last_good_parameters(kind):
    m = SequenceModel("lstm", input_size=I, hidden_size=H, output_size=1, task="regression",
                      seed=0)
    x = np.random.default_rng(0).standard_normal((8, 7, I)).astype(f32)
    y = np.random.default_rng(1).standard_normal((8, 7, 1)).astype(f32)
    initial = [p.copy() for p, _ in m.parameters()]
    kw = dict(epochs=3, batch_size=4, progress=False, shuffle=False)
    if kind == "update_overflows":
        opt = _PoisonOnSecondStep(m.parameters(), lr=0.01)
        with pytest.raises(FloatingPointError, match="the update made parameters NaN or infinite"):
            m.fit(x, y, optimizer=opt, **kw)
        want = opt.after_first
    elif kind == "loss_is_inf":
        with np.errstate(over="ignore"), pytest.raises(FloatingPointError,
                                                       match="the training loss is inf"):
            m.fit(x, y * np.float32(1e30), **kw)
        want = initial
    else:       # a finite loss and gradient, and an update that overflows to inf
        with np.errstate(over="ignore"), pytest.raises(FloatingPointError,
                                                       match="NaN or infinite"):
            m.fit(x, y * np.float32(1e3), optimizer="sgd", lr=1e38, **kw)
        want = initial
    for (p, _), w in zip(m.parameters(), want):
        assert np.isfinite(p).all()
        np.testing.assert_array_equal(p, w)


# ---- unusual input that must give the right answer ---------------------------------------

@pytest.mark.parametrize("name", ["lstm", "gru", "rnn_tanh"])
def test_empty_time_and_batch(name):
    """T = 0: no steps, the state comes back as given; B = 0: empty outputs of the right
    shapes, through every entry point."""
    layer = make_layer(name, I, H, num_layers=2)
    lstm = layer.cell == "lstm"
    h0 = np.random.default_rng(0).standard_normal((2, B, H)).astype(f32)
    state = (h0, h0 + 1) if lstm else h0
    out, st = layer(np.zeros((0, B, I), f32), state)
    assert out.shape == (0, B, H)
    assert_same(st, state, "state after zero steps")
    out, st = layer(np.zeros((T, 0, I), f32))
    assert out.shape == (T, 0, H) and _arrays(st)[0].shape == (2, 0, H)
    y, st = layer.step(np.zeros((0, I), f32), None)
    assert y.shape == (0, H)
    out, st, tape = layer.forward(np.zeros((T, 0, I), f32))
    dx, _ = layer.backward(np.zeros((T, 0, H), f32), None, tape)
    assert dx.shape == (T, 0, I)
    out, st, tape = layer.forward(np.zeros((0, B, I), f32))
    dx, _ = layer.backward(None, None, tape)
    assert dx.shape == (0, B, I)
    m = SequenceModel(name.split("_")[0], input_size=I, hidden_size=H, output_size=3,
                      task="per_step_classification", seed=0)
    assert m.predict(np.zeros((0, T, I), f32)).shape == (0, T, 3)
    assert m.predict_proba(np.zeros((0, T, I), f32)).shape == (0, T, 3)
    assert m.predict(np.zeros((B, 0, I), f32)).shape == (B, 0, 3)
    assert m.encode(np.zeros((0, T, I), f32)).shape == (0, H)
    assert m.evaluate(np.zeros((0, T, I), f32), np.zeros((0, T), np.int64))["loss"] == 0.0
    s = SequenceModel(name.split("_")[0], input_size=I, hidden_size=H, output_size=2,
                      task="sequence_classification", seed=0)
    assert s.predict(np.zeros((0, T, I), f32)).shape == (0, 2)


def test_lists_are_data_in_the_layers_dtype():
    for dtype in (f32, f64):
        layer = make_layer("gru", I, H, dtype=dtype)
        x = np.random.default_rng(0).standard_normal((T, B, I)).astype(dtype)
        assert_same(layer(x.tolist()), layer(x))
        assert_same(layer.step(x[0].tolist(), None), layer.step(x[0], None))
        assert_same(layer.stream(B).step(x[0].tolist()), layer.stream(B).step(x[0]))
        cell = GRUCell(I, H, dtype=dtype, seed=0)
        assert_same(cell(x[0].tolist(), x[0, :, :1].repeat(H, 1).tolist()),
                    cell(x[0], np.ascontiguousarray(x[0, :, :1].repeat(H, 1))))
        m = SequenceModel("gru", input_size=I, hidden_size=H, output_size=2, task="regression",
                          dtype=dtype, seed=0)
        xb = np.ascontiguousarray(x.transpose(1, 0, 2))
        assert_same(m.predict(xb.tolist()), m.predict(xb))
        assert_same(m.step(xb[:, 0].tolist(), None), m.step(xb[:, 0], None))


def test_batch_first_is_the_transpose_exactly():
    for name in ("lstm", "gru_reset_before"):
        tm = make_layer(name, I, H, num_layers=2, bidirectional=True)
        bf = make_layer(name, I, H, num_layers=2, bidirectional=True, batch_first=True)
        x = np.random.default_rng(0).standard_normal((T, B, I)).astype(f32)
        lengths = [4, 1, 3]
        out_t, st_t = tm(x, lengths=lengths)
        out_b, st_b = bf(np.ascontiguousarray(x.transpose(1, 0, 2)), lengths=lengths)
        assert_same(out_b, out_t.transpose(1, 0, 2))
        assert_same(st_b, st_t)


def test_lengths_of_any_integer_type_mean_the_same():
    layer = make_layer("lstm", I, H, bidirectional=True)
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(f32)
    want = layer(x, lengths=np.array([3, 0, 4], np.int64))
    for lengths in ([3, 0, 4], (3, 0, 4), np.array([3, 0, 4], np.int8),
                    np.array([3, 0, 4], np.uint16), np.array([3, 0, 4], np.uint64),
                    np.array([[3], [0], [4]])[:, 0]):
        assert_same(layer(x, lengths=lengths), want)


def test_nan_and_inf_in_a_row_stay_in_that_row():
    """Layers compute IEEE arithmetic (the models refuse non-finite features instead): a NaN
    or an infinity in one batch row makes that row's outputs non-finite from that step on
    and leaves the other rows bit-identical to a run where the row held zeros."""
    for name in ("lstm", "gru", "rnn_tanh"):
        layer = make_layer(name, I, H, num_layers=2, bidirectional=True)
        x = np.random.default_rng(0).standard_normal((T, B, I)).astype(f32)
        for bad in (np.nan, np.inf, -np.inf):
            xb = x.copy()
            xb[2, 1, 0] = bad
            xz = x.copy()
            xz[:, 1] = 0
            out, _ = layer(xb)
            ref, _ = layer(xz)
            assert_same(out[:, [0, 2]], ref[:, [0, 2]], f"{name}: rows without {bad}")
            if np.isnan(bad):
                assert np.isnan(out[2:, 1, :H]).all()


def test_huge_values_saturate():
    """Finite inputs near float32's limit: gates saturate, every output is finite and within
    [-1, 1] for the tanh cells (no overflow warning turned into an error, no crash)."""
    for name in ("lstm", "gru", "rnn_tanh", "lstm_peephole"):
        layer = make_layer(name, I, H)
        x = np.array([3e38, -3e38, 1e30, -1e-30, 0.0], f32)[None, None, :].repeat(T, 0)
        out, _ = layer(x)
        assert np.isfinite(out).all() and np.abs(out).max() <= 1.0
        m = SequenceModel(name.split("_")[0], input_size=I, hidden_size=H, output_size=2,
                          task="regression", seed=0)
        assert np.isfinite(m.predict(x.transpose(1, 0, 2))).all()


# ---- hypothesis properties ----------------------------------------------------------------

def _draw_state(data, layer, B, unbatched, dtype):
    if not data.draw(st.booleans(), label="give a state"):
        return None
    LD = layer.num_layers * layer.num_directions
    shape = (LD, layer.hidden_size) if unbatched else (LD, B, layer.hidden_size)
    parts = [data.draw(hnp.arrays(dtype, shape, elements=FLOATS), label="state")
             for _ in range(2 if layer.cell == "lstm" else 1)]
    return tuple(parts) if layer.cell == "lstm" else parts[0]


def _draw_lengths(data, T, B, unbatched):
    if not data.draw(st.booleans(), label="give lengths"):
        return None
    n = 1 if unbatched else B
    values = data.draw(st.lists(st.integers(0, T), min_size=n, max_size=n), label="lengths")
    kind = data.draw(st.sampled_from(["list", "int64", "int8", "uint32"]), label="lengths type")
    return values if kind == "list" else np.array(values, kind)


def _prop_layer_layouts(data):
    """Layer __call__, forward and backward: any memory layout of x, the state and dout
    gives the contiguous copy's result, bit for bit, and no input changes."""
    name = data.draw(st.sampled_from(sorted(LAYERS)), label="cell")
    dtype = data.draw(st.sampled_from([f32, f64]), label="dtype")
    T = data.draw(st.integers(0, 5), label="T")
    B = data.draw(st.integers(0, 3), label="B")
    I = data.draw(st.integers(1, 6), label="I")
    H = data.draw(st.integers(1, 7), label="H")
    bidir = data.draw(st.booleans(), label="bidirectional")
    batch_first = data.draw(st.booleans(), label="batch_first")
    layer = make_layer(name, I, H, num_layers=data.draw(st.integers(1, 2), label="layers"),
                       bidirectional=bidir, batch_first=batch_first, dtype=dtype,
                       n_threads=data.draw(st.sampled_from([1, 2]), label="threads"))
    unbatched = B == 1 and data.draw(st.booleans(), label="unbatched")
    shape = (T, I) if unbatched else ((B, T, I) if batch_first else (T, B, I))
    x = data.draw(hnp.arrays(dtype, shape, elements=FLOATS), label="x")
    state = _draw_state(data, layer, B, unbatched, dtype)
    lengths = _draw_lengths(data, T, B, unbatched)
    xv = relayout(x, data.draw(st.sampled_from(LAYOUTS), label="x layout"))
    sv = relayout_state(state, data.draw(st.sampled_from(LAYOUTS), label="state layout"))
    snap = snapshot(xv, sv, lengths)
    want = layer(x.copy(), copy_state(state), lengths)
    assert_same(layer(xv, sv, lengths), want, f"{name} __call__")
    assert_unchanged(snap)
    if data.draw(st.booleans(), label="train"):
        D = layer.num_directions
        out_shape = want[0].shape
        dout = data.draw(hnp.arrays(dtype, out_shape, elements=FLOATS), label="dout")
        dv = relayout(dout, data.draw(st.sampled_from(LAYOUTS), label="dout layout"))
        snap = snapshot(xv, sv, lengths, dv)
        results = []
        for xx, ss, dd in ((x.copy(), copy_state(state), dout.copy()), (xv, sv, dv)):
            layer.zero_grad()
            out, st_n, tape = layer.forward(xx, ss, lengths)
            dx, dst = layer.backward(dd, None, tape)
            results.append((out, st_n, dx, dst, layer.grad.copy()))
        assert_same(results[1], results[0], f"{name} forward/backward (D={D})")
        assert_unchanged(snap)


def _prop_functional_layouts(data):
    """functional forward and backward with every array (weights too) in any layout."""
    cell = data.draw(st.sampled_from(["rnn", "lstm", "lstm_peep", "lstm_coupled", "gru",
                                      "gru_before"]), label="cell")
    dtype = data.draw(st.sampled_from([f32, f64]), label="dtype")
    T, B = data.draw(st.integers(0, 5), label="T"), data.draw(st.integers(0, 3), label="B")
    I, H = data.draw(st.integers(1, 6), label="I"), data.draw(st.integers(1, 7), label="H")
    G = {"rnn": 1, "lstm": 4, "lstm_peep": 4, "lstm_coupled": 3, "gru": 3, "gru_before": 3}[cell]
    arr = lambda shape, label: data.draw(hnp.arrays(dtype, shape, elements=FLOATS), label=label)
    args = dict(x=arr((T, B, I), "x"), h0=arr((B, H), "h0"), W_ih=arr((G * H, I), "W_ih"),
                W_hh=arr((G * H, H), "W_hh"), b_ih=arr((G * H,), "b_ih"),
                b_hh=arr((G * H,), "b_hh"))
    if cell.startswith("lstm"):
        args["c0"] = arr((B, H), "c0")
    if cell == "lstm_peep":
        args.update(p_i=arr((H,), "p_i"), p_f=arr((H,), "p_f"), p_o=arr((H,), "p_o"))
    lengths = _draw_lengths(data, T, B, False)
    views = {k: relayout(v, data.draw(st.sampled_from(LAYOUTS), label=f"{k} layout"))
             for k, v in args.items()}
    nt = data.draw(st.sampled_from([1, 2]), label="threads")

    def run(a):
        if cell == "rnn":
            hs, h_n, cache = F.rnn_forward(a["x"], a["h0"], a["W_ih"], a["W_hh"], a["b_ih"],
                                           a["b_hh"], lengths=lengths, n_threads=nt)
            back = F.rnn_backward(hs * 0.5 + 0.25, h_n, cache, n_threads=nt)
            return hs.copy(), h_n, back
        if cell.startswith("lstm"):
            peep = {k: a[k] for k in ("p_i", "p_f", "p_o") if k in a}
            hs, h_n, c_n, cache = F.lstm_forward(
                a["x"], a["h0"], a["c0"], a["W_ih"], a["W_hh"], a["b_ih"], a["b_hh"],
                coupled=cell == "lstm_coupled", lengths=lengths, n_threads=nt, **peep)
            hs = hs.copy()
            back = F.lstm_backward(hs * 0.5 + 0.25, h_n, c_n, cache, n_threads=nt)
            return hs, h_n, c_n, back
        hs, h_n, cache = F.gru_forward(a["x"], a["h0"], a["W_ih"], a["W_hh"], a["b_ih"],
                                       a["b_hh"], reset_after=cell == "gru", lengths=lengths,
                                       n_threads=nt)
        hs = hs.copy()
        return hs, h_n, F.gru_backward(hs * 0.5 + 0.25, h_n, cache, n_threads=nt)

    snap = snapshot(views, lengths)
    want = run({k: v.copy() for k, v in args.items()})
    got = run(views)
    assert_unchanged(snap)
    flat = lambda r: [a for a in _arrays(r)]
    assert_same(flat(got), flat(want), f"functional {cell}")


def _prop_stream_layouts(data):
    """stream().step and layer.step: any layout of x_t and the state gives the contiguous
    copy's result, bit for bit; inputs unchanged."""
    name = data.draw(st.sampled_from(sorted(LAYERS)), label="cell")
    dtype = data.draw(st.sampled_from([f32, f64]), label="dtype")
    B = data.draw(st.integers(1, 3), label="B")
    I, H = data.draw(st.integers(1, 9), label="I"), data.draw(st.integers(1, 9), label="H")
    layer = make_layer(name, I, H, num_layers=data.draw(st.integers(1, 2), label="layers"),
                       dtype=dtype, n_threads=data.draw(st.sampled_from([1, 2]), label="nt"))
    steps = data.draw(st.integers(1, 4), label="steps")
    xs = data.draw(hnp.arrays(dtype, (steps, B, I), elements=FLOATS), label="xs")
    unbatched = B == 1 and data.draw(st.booleans(), label="unbatched")
    a, b = layer.stream(B), layer.stream(B)
    state_a = state_b = None
    for t in range(steps):
        xt = xs[t, 0] if unbatched else xs[t]
        xv = relayout(xt, data.draw(st.sampled_from(LAYOUTS), label="x_t layout"))
        snap = snapshot(xv)
        assert_same(b.step(xv), a.step(xt.copy()), f"{name} stream step {t}")
        assert_unchanged(snap)
        xl = xs[t]
        sv = relayout_state(state_b, data.draw(st.sampled_from(LAYOUTS), label="state layout"))
        xlv = relayout(xl, data.draw(st.sampled_from(LAYOUTS), label="x_t layout (step)"))
        snap = snapshot(sv, xlv)
        ya, state_a = layer.step(xl.copy(), copy_state(state_a))
        yb, state_b = layer.step(xlv, sv)
        assert_unchanged(snap)
        assert_same((yb, state_b), (ya, state_a), f"{name} layer.step {t}")


def _prop_model_layouts(data):
    """SequenceModel predict / encode / evaluate / step: any layout of x, any integer type of
    lengths; the contiguous copy's result, bit for bit."""
    cell = data.draw(st.sampled_from(["rnn", "lstm", "gru"]), label="cell")
    task = data.draw(st.sampled_from(["per_step_classification", "sequence_classification",
                                      "regression", "multilabel"]), label="task")
    dtype = data.draw(st.sampled_from([f32, f64]), label="dtype")
    N, T = data.draw(st.integers(0, 5), label="N"), data.draw(st.integers(0, 4), label="T")
    I, H = data.draw(st.integers(1, 5), label="I"), data.draw(st.integers(1, 6), label="H")
    m = SequenceModel(cell, input_size=I, hidden_size=H, output_size=2, task=task, dtype=dtype,
                      bidirectional=data.draw(st.booleans(), label="bidirectional"), seed=0,
                      num_layers=data.draw(st.integers(1, 2), label="layers"))
    x = data.draw(hnp.arrays(dtype, (N, T, I), elements=FLOATS), label="x")
    lengths = _draw_lengths(data, T, N, False)
    bs = data.draw(st.integers(1, 4), label="batch_size")
    xv = relayout(x, data.draw(st.sampled_from(LAYOUTS), label="x layout"))
    snap = snapshot(xv, lengths)
    assert_same(m.predict(xv, lengths, batch_size=bs), m.predict(x.copy(), lengths, batch_size=bs))
    assert_same(m.encode(xv, lengths), m.encode(x.copy(), lengths))
    if task != "regression" and task != "multilabel":
        assert_same(m.predict_proba(xv, lengths, bs), m.predict_proba(x.copy(), lengths, bs))
    assert_unchanged(snap)
    if m.output == "per_step" and not m.rnn.bidirectional and T:
        a, b = m.step(x[:, 0].copy(), None), m.step(relayout(x[:, 0], "gaps"), None)
        assert_same(b, a)


_REFUSE_KINDS = ("dtype", "rank", "features", "lengths_value", "lengths_count", "lengths_type",
                 "state_shape", "state_dtype")


def _prop_refused_inputs(data):
    """Any bad input, to any entry point: ValueError/TypeError naming the expectation, and
    the input untouched."""
    kind = data.draw(st.sampled_from(_REFUSE_KINDS), label="bad")
    entry = data.draw(st.sampled_from(["functional", "layer", "forward", "step", "stream",
                                       "cell", "predict"]), label="entry")
    T, B, I, H = (data.draw(st.integers(1, 4), label=k) for k in "TBIH")
    dtype = data.draw(st.sampled_from([f32, f64]), label="dtype")
    layer = make_layer(data.draw(st.sampled_from(["lstm", "gru", "rnn_tanh"]), label="cell"),
                       I, H, dtype=dtype)
    lstm = layer.cell == "lstm"
    G = layer.gates
    x = np.ones((T, B, I), dtype)
    state = layer.initial_state(B)
    lengths = None
    expect = {"dtype": (TypeError, "dtype"), "rank": (ValueError, r"-D|shape|must be \(batch"),
              "features": (ValueError, "features|expected|shape"),
              "lengths_value": (ValueError, r"lengths must lie in \[0"),
              "lengths_count": (ValueError, "lengths must (have shape|be)"),
              "lengths_type": ((TypeError, ValueError), "lengths must be"),
              "state_shape": ((ValueError, TypeError), "shape|pair|state"),
              "state_dtype": ((TypeError, ValueError), "dtype|float")}[kind]
    if kind == "dtype":
        x = _x(data.draw(st.sampled_from(BAD_DTYPES), label="bad dtype"), x.shape)
        if entry == "predict" and x.dtype.kind in "fiu":
            entry = "layer"     # the model's entry points cast real numbers of any width
    elif kind == "rank":
        x = np.ones(data.draw(st.sampled_from([(I,), (1, T, B, I), ()]), label="shape"), dtype)
    elif kind == "features":
        x = np.ones((T, B, I + data.draw(st.integers(1, 3), label="extra")), dtype)
    elif kind.startswith("lengths"):
        if entry in ("step", "stream", "cell"):
            entry = "layer"
        if kind == "lengths_value":
            lengths = [0] * B
            lengths[data.draw(st.integers(0, B - 1), label="row")] = data.draw(
                st.sampled_from([-1, T + 1, -(2 ** 40), 2 ** 40]), label="bad length")
        elif kind == "lengths_count":
            lengths = [1] * data.draw(st.sampled_from([0, B + 1, B + 3]), label="count")
        else:
            lengths = data.draw(st.sampled_from([[1.0] * B, [True] * B, ["1"] * B]), label="lt")
    else:
        if entry in ("stream", "predict"):
            entry = "layer"
        bad = np.zeros((1, B, H + 1), dtype) if kind == "state_shape" else \
            np.zeros((1, B, H), data.draw(st.sampled_from([np.float16, np.int32, np.complex64,
                                                           f64 if dtype == f32 else f32]),
                                          label="state dtype"))
        state = (bad, bad) if lstm else bad
    xm = np.ascontiguousarray(x.transpose(1, 0, 2)) if x.ndim == 3 else x
    calls = {
        "functional": lambda: (F.lstm_forward if lstm else F.gru_forward if G == 3 else
                               F.rnn_forward)(x, *((state[0][0], state[1][0]) if lstm else
                                                   (state[0],)),
                                              *layer._kernel_params("_l0"), lengths=lengths),
        "layer": lambda: layer(x, state, lengths),
        "forward": lambda: layer.forward(x, state, lengths),
        "step": lambda: layer.step(x[0] if x.ndim == 3 else x, state),
        "stream": lambda: layer.stream(B).step(x[0] if x.ndim == 3 else x),
        "cell": lambda: {"lstm": LSTMCell, "gru": GRUCell, "rnn": RNNCell}[layer.cell](
            I, H, dtype=dtype)(x[0] if x.ndim == 3 else x,
                               tuple(s[0] for s in state) if lstm else state[0]),
        "predict": lambda: SequenceModel(layer.cell, input_size=I, hidden_size=H, output_size=2,
                                         task="regression", dtype=dtype, seed=0).predict(
            xm, lengths),
    }
    if entry == "cell" and kind == "rank" and x.ndim == 1:
        return          # (I,) is an unbatched cell input: valid
    if entry in ("stream",) and kind == "rank" and x.ndim == 1 and B == 1 and x.shape == (I,):
        return          # (I,) is the stream's unbatched input: valid
    exc, match = expect
    exc = exc if isinstance(exc, tuple) else (exc,)
    snap = snapshot(x, xm, state, lengths)
    with pytest.raises(exc, match=match):
        calls[entry]()
    assert_unchanged(snap)


def _prop_padding_is_never_read(data):
    """Whatever lies in the padding (steps at or past a row's length) -- NaN, infinities,
    huge values -- the outputs, states and gradients are those of zero padding, bit for bit,
    in both directions."""
    name = data.draw(st.sampled_from(sorted(LAYERS)), label="cell")
    dtype = data.draw(st.sampled_from([f32, f64]), label="dtype")
    T, B = data.draw(st.integers(1, 5), label="T"), data.draw(st.integers(1, 3), label="B")
    I, H = data.draw(st.integers(1, 5), label="I"), data.draw(st.integers(1, 6), label="H")
    layer = make_layer(name, I, H, num_layers=data.draw(st.integers(1, 2), label="layers"),
                       bidirectional=data.draw(st.booleans(), label="bidirectional"), dtype=dtype)
    lengths = np.array(data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
    x = data.draw(hnp.arrays(dtype, (T, B, I), elements=FLOATS), label="x")
    junk = data.draw(hnp.arrays(dtype, (T, B, I), elements=st.one_of(
        st.just(np.nan), st.just(np.inf), st.just(-np.inf),
        st.floats(-_F32_BIG, _F32_BIG, width=32))),
        label="padding")
    pad = np.arange(T)[:, None] >= lengths[None, :]
    clean, dirty = np.where(pad[..., None], 0, x).astype(dtype), np.where(pad[..., None], junk, x)
    results = []
    for xx in (clean, dirty):
        out, st_n = layer(xx, None, lengths)
        layer.zero_grad()
        o2, _, tape = layer.forward(xx, None, lengths)
        dx, _ = layer.backward(np.ones_like(o2), None, tape)
        results.append((out, st_n, np.where(pad[..., None], 0, dx), layer.grad.copy()))
    assert_same(results[1], results[0], f"{name} with junk in the padding")


PROPERTIES = {
    "layer_layouts": _prop_layer_layouts,
    "functional_layouts": _prop_functional_layouts,
    "stream_and_step_layouts": _prop_stream_layouts,
    "model_layouts": _prop_model_layouts,
    "refused_inputs": _prop_refused_inputs,
    "padding_is_never_read": _prop_padding_is_never_read,
}


def _property_test(fn, n):
    return settings(max_examples=n, **_SETTINGS)(given(data=st.data())(fn))


for _name, _fn in PROPERTIES.items():
    globals()[f"test_property_{_name}"] = _property_test(_fn, SHORT)
    globals()[f"test_property_{_name}_long"] = pytest.mark.long(_property_test(_fn, LONG))
