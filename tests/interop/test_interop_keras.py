"""fastrnn.interop.keras_io.from_keras against Keras itself.

Part 1 needs no Keras: fixed small examples whose expected outputs were computed once with
Keras 3.15.1 (PyTorch backend) and are written below as literals; refusals of configs
fastrnn cannot represent; a broken gate mapping caught by the parity check.
Part 2 runs Keras (skipped, with the reason, when it is not importable): random layers of
every supported kind, both import paths (the layer object; its weights plus a JSON round trip
of its config), compared with Keras's ``layer(x)`` on a fresh input.

Letters: B batch, T time steps, I input size, H units, D directions.
"""
import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from fastrnn.interop import ParityError, keras_io
from fastrnn.interop.keras_io import from_keras, keras_reference

# Keras 3.15 on numpy 2 warns about its own __array__ signature on every get_weights().
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

# Two implementations of one recurrence over <= 9 steps: measured worst differences are
# ~2e-7 (float32) and ~1e-15 (float64); a wrong gate order or bias moves outputs by ~0.1.
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
# Keras 3.15's keras.ops.matmul returns float32 for float64 inputs (keras-team/keras#23223);
# its float64 SimpleRNN and GRU(reset_after=False) cells use it, so they are float32-accurate
# (measured 1e-7); LSTM and GRU(reset_after=True) run through torch directly and are not.
KERAS_FLOAT64_MATMUL_TOL = 1e-6


def det(shape, k):
    """Deterministic weights/inputs for the literal examples (no RNG stream to drift)."""
    n = int(np.prod(shape))
    return (0.6 * np.sin(np.arange(n) * 0.37 + k)).reshape(shape).astype(np.float32)


def as_keras_returns(out, state, return_sequences, return_state, D):
    """fastrnn's ``out (B, T, D*H), state`` arranged as a Keras layer returns them: the
    sequence (or the last output of each direction, concatenated), then with return_state
    h (and c) of the forward direction, then of the backward one."""
    finals = state if isinstance(state, tuple) else (state,)       # each (L*D, B, H)
    first = out if return_sequences else np.concatenate(list(finals[0][-D:]), axis=-1)
    if not return_state:
        return [first]
    return [first] + [f[len(f) - D + d] for d in range(D) for f in finals]


def swap_blocks(a, G, i, j, axis=-1):
    blocks = np.split(a, G, axis=axis)
    blocks[i], blocks[j] = blocks[j], blocks[i]
    return np.concatenate(blocks, axis=axis)


# ---- part 1: no Keras ----------------------------------------------------------------------
X_FIXED = det((2, 3, 3), 0.5) * 2                                   # (B, T, I)

# get_config() of keras.layers.GRU(2, reset_after=False, return_sequences=True), Keras 3.15.1
GRU_BEFORE_CONFIG = json.loads(
    '{"name":"gru","trainable":true,"dtype":{"module":"keras","class_name":"DTypePolicy",'
    '"config":{"name":"float32"},"registered_name":null},"return_sequences":true,'
    '"return_state":false,"go_backwards":false,"stateful":false,"unroll":false,'
    '"zero_output_for_mask":false,"units":2,"activation":"tanh",'
    '"recurrent_activation":"sigmoid","use_bias":true,"kernel_initializer":{"module":'
    '"keras.initializers","class_name":"GlorotUniform","config":{"seed":null,"input_axes":'
    'null,"output_axes":null},"registered_name":null},"recurrent_initializer":{"module":'
    '"keras.initializers","class_name":"Orthogonal","config":{"seed":null,"gain":1.0},'
    '"registered_name":null},"bias_initializer":{"module":"keras.initializers","class_name":'
    '"Zeros","config":{},"registered_name":null},"kernel_regularizer":null,'
    '"recurrent_regularizer":null,"bias_regularizer":null,"activity_regularizer":null,'
    '"kernel_constraint":null,"recurrent_constraint":null,"bias_constraint":null,'
    '"dropout":0.0,"recurrent_dropout":0.0,"reset_after":false,"seed":null}')

# (config, weight shapes, Keras's output for X_FIXED); weights are det(shape, k + 1) for the
# k-th array of get_weights(). Configs other than the first keep only non-default keys,
# which Keras's from_config accepts too.
FIXED = {
    "gru_reset_before": (GRU_BEFORE_CONFIG, [(3, 6), (2, 6), (6,)], [
        [[-0.25867248, -0.23991269], [-0.32620183, -0.35070044], [-0.37355146, -0.44365132]],
        [[-0.2491448, -0.3126634], [-0.4035709, -0.41188663], [-0.43400666, -0.37027097]]]),
    "gru_reset_after": ({"class_name": "GRU", "config": {"units": 2, "reset_after": True}},
                        [(3, 6), (2, 6), (2, 6)], [
        [[-0.27335182, -0.18089972], [-0.30831635, -0.2611373], [-0.34273535, -0.3559072]],
        [[-0.28742367, -0.30765066], [-0.41494977, -0.33462065], [-0.40931484, -0.23422799]]]),
    "bidirectional_lstm": (
        {"class_name": "Bidirectional", "config": {"merge_mode": "concat", "layer": {
            "class_name": "LSTM", "config": {"units": 2, "return_sequences": True}}}},
        [(3, 8), (2, 8), (8,)] * 2, [
            [[-0.04650497, -0.06989945, 0.07719285, 0.14609787],
             [-0.06897186, -0.10754885, 0.09130663, 0.16131629],
             [-0.12684841, -0.14408058, 0.14756174, 0.17583929]],
            [[-0.11156573, -0.10424799, 0.44757918, 0.4363992],
             [-0.14379603, -0.12988243, 0.32103226, 0.31007004],
             [-0.14970684, -0.13332689, 0.11538026, 0.13039325]]]),
    "simple_rnn_relu": ({"units": 2, "activation": "relu"}, [(3, 2), (2, 2), (2,)], [
        [[1.3359612, 0.870394], [2.5889134, 1.8586516], [2.0790854, 1.2382643]],
        [[0.0, 0.0], [0.0, 0.0], [0.25618273, 0.0]]]),
}


def fixed_weights(name):
    return [det(shape, k + 1) for k, shape in enumerate(FIXED[name][1])]


@pytest.mark.parametrize("name", FIXED)
def test_fixed_example_matches_keras_literals(name):
    config, _, expected = FIXED[name]
    layer = from_keras(fixed_weights(name), json.loads(json.dumps(config)))
    assert layer.batch_first and layer.dtype == np.float32
    assert 0.0 <= layer.parity_max_abs_diff < 1e-5      # against the numpy Keras reference
    out, _ = layer(X_FIXED)
    np.testing.assert_allclose(out, np.array(expected, np.float32), rtol=0, atol=1e-6)
    ref_out, _ = keras_reference(fixed_weights(name), config, X_FIXED)
    np.testing.assert_allclose(ref_out, expected, rtol=0, atol=1e-6)


def test_fixed_gru_mapping_is_an_exact_move():
    kernel, recurrent, bias = fixed_weights("gru_reset_after")
    layer = from_keras([kernel, recurrent, bias], FIXED["gru_reset_after"][0])
    H = 2
    z, r, n = (slice(0, H), slice(H, 2 * H), slice(2 * H, 3 * H))   # Keras's column blocks
    for name, keras_array in (("weight_ih_l0", kernel.T), ("weight_hh_l0", recurrent.T),
                              ("bias_ih_l0", bias[0]), ("bias_hh_l0", bias[1])):
        ours = layer.params[name]                                     # (r, z, n) rows
        assert np.array_equal(ours[0:H], keras_array[r])
        assert np.array_equal(ours[H:2 * H], keras_array[z])
        assert np.array_equal(ours[2 * H:], keras_array[n])


@pytest.mark.parametrize("name", ["gru_reset_before", "bidirectional_lstm"])
def test_a_wrong_gate_mapping_is_caught(name, monkeypatch):
    """Simulate the classic bug (gates left in Keras's order, or LSTM's i and f swapped):
    the numpy reference shares no code with the mapping, so the parity check fails."""
    def wrong(cell, a):
        if cell == "GRU":
            return a.copy()                          # left in Keras's (z, r, h) order
        return swap_blocks(a, 4, 0, 1, axis=0)       # LSTM: i and f exchanged
    monkeypatch.setattr(keras_io, "_keras_to_fastrnn_gates", wrong)
    with pytest.raises(ParityError, match="largest absolute difference"):
        from_keras(fixed_weights(name), FIXED[name][0])
    layer = from_keras(fixed_weights(name), FIXED[name][0], check=False)
    assert layer.parity_max_abs_diff is None


def _refusal_cases():
    gru = FIXED["gru_reset_after"][0]["config"]
    w_gru = fixed_weights("gru_reset_after")
    w_rnn = fixed_weights("simple_rnn_relu")
    bi = FIXED["bidirectional_lstm"][0]
    return {
        "hard_sigmoid": (w_gru, dict(gru, recurrent_activation="hard_sigmoid"),
                         ValueError, "hard_sigmoid"),
        "custom_activation": (w_rnn, {"units": 2, "activation": {
            "module": "builtins", "class_name": "function", "config": "my_act"}},
            ValueError, "activation='my_act'"),
        "linear_activation": (w_rnn, {"units": 2, "activation": "linear"}, ValueError,
                              "activation='linear'"),
        "go_backwards": (w_gru, dict(gru, go_backwards=True), ValueError, "go_backwards"),
        "stateful": (w_gru, dict(gru, stateful=True), ValueError, "stateful"),
        "merge_mode": (fixed_weights("bidirectional_lstm"),
                       {"class_name": "Bidirectional",
                        "config": dict(bi["config"], merge_mode="sum")},
                       ValueError, "merge_mode='sum'"),
        "mixed_precision": (w_gru, dict(gru, dtype="mixed_float16"), ValueError,
                            "mixed_float16"),
        "unknown_key": (w_gru, dict(gru, zoneout=0.1), ValueError, "zoneout"),
        "generic_rnn": (w_gru, {"class_name": "RNN", "config": {"cell": {}}}, ValueError,
                        "'RNN'"),
        "bias_shape": (w_gru, dict(gru, reset_after=False), ValueError, "bias has shape"),
        "too_many_arrays": (w_gru + [w_gru[2]], gru, ValueError, "4 weight arrays"),
        "missing_units": (w_gru, {"reset_after": True}, ValueError, "units"),
        "int_weights": ([w.astype(np.int64) for w in w_gru], gru, TypeError, "floating"),
        "dense_in_sequential": (w_gru, {"layers": [{"class_name": "Dense", "config": {
            "name": "dense"}}]}, ValueError, "Dense"),
        "config_not_dict": (w_gru, "GRU", TypeError, "config must be"),
    }


@pytest.mark.parametrize("case", list(_refusal_cases()))
def test_refusals_name_the_feature(case):
    weights, config, error, words = _refusal_cases()[case]
    with pytest.raises(error, match=words.replace("(", r"\(").replace("[", r"\[")):
        from_keras(weights, config)


def test_argument_forms():
    with pytest.raises(TypeError, match="needs the layer's config"):
        from_keras(fixed_weights("gru_reset_after"))
    with pytest.raises(TypeError, match="Keras layer or"):
        from_keras(np.zeros(3))
    with pytest.raises(TypeError, match="weights must be the list"):
        from_keras(np.zeros(3), {"units": 2})


def test_weights_and_config_need_no_keras():
    """In a fresh interpreter where `import keras` fails: importing fastrnn does not import
    Keras, and the weights + config path converts and checks without it."""
    expected = FIXED["gru_reset_before"][2]
    code = f"""
import sys
sys.modules["keras"] = None                    # any `import keras` now raises ImportError
import json, numpy as np
import fastrnn
from fastrnn.interop.keras_io import from_keras
w = [(0.6 * np.sin(np.arange(int(np.prod(s))) * 0.37 + k + 1)).reshape(s).astype(np.float32)
     for k, s in enumerate([(3, 6), (2, 6), (6,)])]
x = (0.6 * np.sin(np.arange(18) * 0.37 + 0.5)).reshape(2, 3, 3).astype(np.float32) * 2
layer = from_keras(w, json.loads({json.dumps(json.dumps(GRU_BEFORE_CONFIG))}))
assert abs(layer(x)[0] - np.array({expected})).max() < 1e-6
assert layer.parity_max_abs_diff < 1e-5
"""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr


# ---- part 2: against Keras itself ----------------------------------------------------------
@pytest.fixture(scope="module")
def keras():
    """Keras 3 on the PyTorch backend. KERAS_BACKEND is read once, at Keras's import; it is
    restored afterwards so the rest of the session's environment is unchanged."""
    previous = os.environ.get("KERAS_BACKEND")
    os.environ["KERAS_BACKEND"] = "torch"
    try:
        keras = pytest.importorskip("keras", reason="keras (with torch) is not installed: "
                                    "Keras-oracle tests need `pip install keras==3.15.1`")
    finally:
        if previous is None:
            del os.environ["KERAS_BACKEND"]
        else:
            os.environ["KERAS_BACKEND"] = previous
    if not keras.__version__.startswith("3.") or keras.backend.backend() != "torch":
        pytest.skip(f"needs Keras 3 on the torch backend, found {keras.__version__} on "
                    f"{keras.backend.backend()}")
    return keras


def run_keras(keras, layer, x):
    result = layer(x, training=False)
    result = result if isinstance(result, (list, tuple)) else [result]
    return [keras.ops.convert_to_numpy(r) for r in result]


def randomize(layer, rng):
    """Non-default weights: every array (biases included) uniform in [-0.8, 0.8]."""
    layer.set_weights([rng.uniform(-0.8, 0.8, w.shape).astype(w.dtype)
                       for w in layer.get_weights()])


def assert_same_values(layer, weights):
    """Every Keras number is in the fastrnn layer, moved and never rounded: the fastrnn buffer
    holds exactly the Keras arrays' values plus zeros (the bias_hh Keras does not have)."""
    keras_values = np.concatenate([np.ravel(w) for w in weights]).astype(layer.dtype)
    zeros = np.zeros(layer.flat.size - keras_values.size, layer.dtype)
    assert np.array_equal(np.sort(layer.flat), np.sort(np.concatenate([keras_values, zeros])))


def keras_tolerance(dtype, class_name, extra):
    """What to expect of Keras itself (see KERAS_FLOAT64_MATMUL_TOL)."""
    uses_ops_matmul = class_name == "SimpleRNN" or extra.get("reset_after") is False
    if np.dtype(dtype) == np.float64 and uses_ops_matmul:
        return KERAS_FLOAT64_MATMUL_TOL
    return TOL[np.dtype(dtype)]


def check_both_paths(keras, klayer, x, return_sequences, return_state, D, dtype, keras_tol):
    """Import by object and by weights + JSON config; compare each with Keras on x, and with
    the numpy Keras reference at the strict tolerance."""
    weights = klayer.get_weights()
    config = json.loads(json.dumps(klayer.get_config()))
    tol = TOL[np.dtype(dtype)]
    by_object = from_keras(klayer)
    by_config = from_keras(weights, config)
    assert 0.0 <= by_object.parity_max_abs_diff <= keras_tol        # against Keras
    assert 0.0 <= by_config.parity_max_abs_diff <= tol              # against numpy reference
    expected = run_keras(keras, klayer, x)
    ref_out, ref_state = keras_reference(weights, config, x)
    for layer in (by_object, by_config):
        assert layer.batch_first and layer.dtype == dtype
        assert_same_values(layer, weights)
        out, state = layer(x)
        got = as_keras_returns(out, state, return_sequences, return_state, D)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=0, atol=keras_tol)
        np.testing.assert_allclose(out, ref_out, rtol=0, atol=tol)
        for g, e in zip(state if isinstance(state, tuple) else (state,),
                        ref_state if isinstance(ref_state, tuple) else (ref_state,)):
            np.testing.assert_allclose(g, e, rtol=0, atol=tol)
    assert np.array_equal(by_object.flat, by_config.flat)
    # the numpy reference used without Keras agrees with Keras too
    got = as_keras_returns(ref_out, ref_state, return_sequences, return_state, D)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=0, atol=keras_tol)
    return by_object


CELLS = {"simple_rnn_tanh": ("SimpleRNN", {"activation": "tanh"}),
         "simple_rnn_relu": ("SimpleRNN", {"activation": "relu"}),
         "lstm": ("LSTM", {}),
         "gru_reset_after": ("GRU", {"reset_after": True}),
         "gru_reset_before": ("GRU", {"reset_after": False})}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", CELLS)
def test_random_layers_match_keras(keras, cell, bidirectional, use_bias, dtype):
    rng = np.random.default_rng(zlib.crc32(f"{cell} {bidirectional} {use_bias} {dtype}".encode()))
    H, I, B, T = (int(rng.integers(1, 10)), int(rng.integers(1, 8)),
                  int(rng.integers(1, 5)), int(rng.integers(1, 10)))
    return_sequences, return_state = bool(rng.integers(2)), bool(rng.integers(2))
    class_name, extra = CELLS[cell]
    klayer = getattr(keras.layers, class_name)(
        H, use_bias=use_bias, return_sequences=return_sequences, return_state=return_state,
        dtype=np.dtype(dtype).name, **extra)
    if bidirectional:
        klayer = keras.layers.Bidirectional(klayer, dtype=np.dtype(dtype).name)
    klayer(np.zeros((B, T, I), dtype))                                # build
    randomize(klayer, rng)
    x = rng.standard_normal((B, T, I)).astype(dtype)
    layer = check_both_paths(keras, klayer, x, return_sequences, return_state,
                             2 if bidirectional else 1, dtype,
                             keras_tolerance(dtype, class_name, extra))
    assert layer.hidden_size == H and layer.input_size == I
    assert layer.bidirectional == bidirectional and layer.bias == use_bias


STACKS = {
    "lstm_x3": ("LSTM", {}, 3, False, "float32"),
    "bi_gru_reset_before_x2": ("GRU", {"reset_after": False}, 2, True, "float32"),
    "simple_rnn_relu_x2": ("SimpleRNN", {"activation": "relu"}, 2, False, "float64"),
    "bi_gru_no_bias_x2": ("GRU", {"use_bias": False}, 2, True, "float64"),
}


@pytest.mark.parametrize("last_sequences", [True, False], ids=["seq", "last"])
@pytest.mark.parametrize("stack", STACKS)
def test_stacked_sequential_matches_keras(keras, stack, last_sequences):
    class_name, extra, L, bidirectional, dtype = STACKS[stack]
    rng = np.random.default_rng(len(stack) + L)
    B, T, I, H = 3, 6, 5, 4

    def recurrent(k):
        layer = getattr(keras.layers, class_name)(
            H, return_sequences=last_sequences or k < L - 1, dtype=dtype, **extra)
        return keras.layers.Bidirectional(layer, dtype=dtype) if bidirectional else layer
    model = keras.Sequential([keras.Input((T, I), dtype=dtype)] +
                             [recurrent(k) for k in range(L)])
    randomize(model, rng)
    x = rng.standard_normal((B, T, I)).astype(dtype)
    layer = check_both_paths(keras, model, x, last_sequences, False,
                             2 if bidirectional else 1, np.dtype(dtype),
                             keras_tolerance(dtype, class_name, extra))
    assert layer.num_layers == L


def test_sequential_mismatches_are_refused(keras):
    def model(*layers):
        m = keras.Sequential([keras.Input((4, 3))] + list(layers))
        return m
    L = keras.layers
    cases = [
        (model(L.LSTM(4, return_sequences=True), L.GRU(4)), "layer 1 is GRU"),
        (model(L.LSTM(4, return_sequences=True), L.LSTM(5)), "units=5"),
        (model(L.Bidirectional(L.GRU(4, return_sequences=True)), L.GRU(4)),
         r"layer 0 is GRU\(.*bidirectional\)"),
        (model(L.GRU(4, return_sequences=True), L.Dense(2)), "Dense"),
        (model(L.SimpleRNN(4, return_sequences=True),
               L.SimpleRNN(4, activation="relu")), "activation='relu'"),
    ]
    for m, words in cases:
        for args in ((m,), (m.get_weights(), json.loads(json.dumps(m.get_config())))):
            with pytest.raises(ValueError, match=words):
                from_keras(*args)


def test_keras_refusals(keras):
    L = keras.layers

    def my_tanh(v):
        return keras.ops.tanh(v)
    cases = [
        (L.SimpleRNN(3, activation=my_tanh), "my_tanh"),
        (L.GRU(3, recurrent_activation="hard_sigmoid"), "hard_sigmoid"),
        (L.LSTM(3, activation="relu"), "activation='relu'"),
        (L.LSTM(3, go_backwards=True), "go_backwards"),
        (L.Bidirectional(L.GRU(3), merge_mode="sum"), "merge_mode='sum'"),
        (L.Bidirectional(L.LSTM(3), merge_mode=None), "merge_mode=None"),
        (L.SimpleRNN(3, stateful=True), "stateful"),
        (L.GRU(3, dtype="mixed_float16"), "mixed_float16"),
    ]
    for klayer, words in cases:
        klayer(np.zeros((2, 4, 3), np.float32))
        for args in ((klayer,), (klayer.get_weights(),
                                 json.loads(json.dumps(klayer.get_config())))):
            with pytest.raises(ValueError, match=words):
                from_keras(*args)
    with pytest.raises(ValueError, match="no weights yet"):
        from_keras(L.LSTM(3))


@pytest.mark.parametrize("case", ["lstm_i_f", "lstm_c_o", "gru_z_r", "gru_bias_rows",
                                  "simple_rnn_transposed"])
def test_weights_that_do_not_match_the_layer_are_caught(keras, case, monkeypatch):
    """get_weights() tampered (two gate blocks swapped, the GRU's two bias rows exchanged,
    a recurrent kernel transposed): the import is then not the Keras layer, and the parity
    check against Keras itself must say so."""
    rng = np.random.default_rng(7)
    klayer = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU,
              "simple": keras.layers.SimpleRNN}[case.split("_")[0]](4)
    klayer(np.zeros((2, 5, 3), np.float32))
    randomize(klayer, rng)
    kernel, recurrent, bias = klayer.get_weights()
    if case == "lstm_i_f":
        kernel = swap_blocks(kernel, 4, 0, 1)
    elif case == "lstm_c_o":
        recurrent, bias = swap_blocks(recurrent, 4, 2, 3), swap_blocks(bias, 4, 2, 3)
    elif case == "gru_z_r":
        kernel, recurrent, bias = (swap_blocks(a, 3, 0, 1) for a in (kernel, recurrent, bias))
    elif case == "gru_bias_rows":
        bias = bias[::-1]
    else:
        recurrent = recurrent.T
    monkeypatch.setattr(klayer, "get_weights", lambda: [kernel, recurrent, bias])
    with pytest.raises(ParityError, match="against Keras"):
        from_keras(klayer)
    assert from_keras(klayer, check=False).parity_max_abs_diff is None
