"""fastrnn.Stream (layer.stream()): the native streaming step, against the numpy reference
run over the whole sequence, layer by layer; its state, its errors, and its threads."""
import threading

import numpy as np
import pytest

import fastrnn
import fastrnn.reference as R
from fastrnn import GRU, LSTM, RNN

LAYERS = {
    "rnn_tanh": (RNN, {}),
    "rnn_relu": (RNN, {"nonlinearity": "relu"}),
    "lstm": (LSTM, {}),
    "lstm_peep_all": (LSTM, {"peephole": True}),
    "lstm_coupled_io": (LSTM, {"coupled": True, "peephole": "io"}),
    "lstm_no_bias": (LSTM, {"bias": False}),
    "gru_reset_after": (GRU, {}),
    "gru_reset_before": (GRU, {"reset_after": False}),
    "gru_no_bias": (GRU, {"bias": False}),
}
TOL = {np.float32: 2e-5, np.float64: 1e-12}


def reference_stack(layer, x):
    """The numpy reference over the whole sequence x (T, B, I), one layer after another:
    the top layer's outputs (T, B, H) and the final states (L, B, H) (LSTM: h and c)."""
    T, B, _ = x.shape
    H, dt = layer.hidden_size, x.dtype
    hs_all, cs_all, inp = [], [], x
    for l in range(layer.num_layers):
        W_ih, W_hh, b_ih, b_hh = layer._kernel_params(f"_l{l}")
        h0 = np.zeros((B, H), dt)
        if layer.cell == "lstm":
            peep = {f"p_{g}": layer.params[f"peephole_{g}_l{l}"] for g in layer.peephole}
            inp, h, c, _ = R.lstm_forward(inp, h0, h0, W_ih, W_hh, b_ih, b_hh,
                                          coupled=layer.coupled, **peep)
            cs_all.append(c)
        elif layer.cell == "gru":
            inp, h, _ = R.gru_forward(inp, h0, W_ih, W_hh, b_ih, b_hh,
                                      reset_after=layer.reset_after)
        else:
            inp, h, _ = R.rnn_forward(inp, h0, W_ih, W_hh, b_ih, b_hh,
                                      nonlinearity=layer.nonlinearity)
        hs_all.append(h)
    return inp, np.stack(hs_all), (np.stack(cs_all) if cs_all else None)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("B,L,H,I", [(1, 1, 16, 7), (1, 2, 20, 13), (3, 2, 24, 5),
                                     (1, 1, 1, 1), (2, 1, 40, 33)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_stream_matches_reference_sequence(name, dtype, B, L, H, I, n_threads):
    cls, kw = LAYERS[name]
    layer = cls(I, H, num_layers=L, dtype=dtype, seed=3, n_threads=n_threads, **kw)
    if layer.bias:   # non-zero biases everywhere, so a mix-up of b_ih and b_hh shows
        for k in layer.params:
            if k.startswith("bias"):
                layer.params[k][:] = np.random.default_rng(7).uniform(-0.5, 0.5,
                                                                      layer.params[k].shape)
    x = np.random.default_rng(1).standard_normal((6, B, I)).astype(dtype)
    stream = layer.stream(B)
    ys = np.stack([stream.step(x[t]) for t in range(len(x))])
    out, h_n, c_n = reference_stack(layer, x)
    np.testing.assert_allclose(ys, out, rtol=TOL[dtype], atol=TOL[dtype])
    state = stream.get_state()
    h = state[0] if layer.cell == "lstm" else state
    np.testing.assert_allclose(h, h_n, rtol=TOL[dtype], atol=TOL[dtype])
    if layer.cell == "lstm":
        np.testing.assert_allclose(state[1], c_n, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("name", ["lstm", "gru_reset_before", "rnn_tanh"])
def test_stream_equals_layer_step_and_threads_agree(name):
    """The stream runs the same cell kernels as layer.step: same outputs; at batch 1 the
    matrix-vector rows are summed in a fixed order, so 1 and 2 threads are bit-identical."""
    cls, kw = LAYERS[name]
    x = np.random.default_rng(2).standard_normal((5, 1, 48)).astype(np.float32)
    outs = []
    for nt in (1, 2):
        layer = cls(48, 48, num_layers=2, seed=4, n_threads=nt, **kw)
        stream, state = layer.stream(), None
        ys = []
        for t in range(len(x)):
            y_step, state = layer.step(x[t], state)
            ys.append(stream.step(x[t]))
            np.testing.assert_allclose(ys[-1], y_step, rtol=1e-6, atol=1e-6)
        outs.append(np.stack(ys))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_unbatched_input_and_output():
    layer = LSTM(5, 8, seed=0)
    a, b = layer.stream(), layer.stream()
    x = np.random.default_rng(0).standard_normal(5).astype(np.float32)
    y1 = a.step(x)
    y2 = b.step(x[None])
    assert y1.shape == (8,) and y2.shape == (1, 8)
    np.testing.assert_array_equal(y1, y2[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_contiguous_arrays_are_read_in_place(dtype):
    """The fast path: a C-contiguous array of the layer's dtype and shape is read through
    the buffer protocol, anything else goes through the checked copy."""
    s1, s3 = LSTM(5, 8, dtype=dtype).stream(), LSTM(5, 8, dtype=dtype).stream(3)
    x = np.ones((3, 10), dtype)
    assert s1._takes_fast_path(x[:1, :5].copy()) and s1._takes_fast_path(x[0, :5].copy())
    assert s3._takes_fast_path(x[:, :5].copy())
    other = np.float64 if dtype == np.float32 else np.float32
    for slow in (x[:, :5], x[:1, :5].astype(other), x[:2, :5].copy(), [[1.0] * 5], x[:1, ::2]):
        assert not s1._takes_fast_path(slow)
    assert not s3._takes_fast_path(x[0, :5].copy())   # (I,) only when batch is 1


def test_outputs_are_new_arrays_and_inputs_untouched():
    layer = GRU(4, 6, seed=0)
    s = layer.stream(2)
    x = np.ones((2, 4), np.float32)
    x_before = x.copy()
    y1 = s.step(x)
    y1_copy = y1.copy()
    y2 = s.step(x)
    assert y1 is not y2
    np.testing.assert_array_equal(y1, y1_copy)     # the next step did not write into it
    np.testing.assert_array_equal(x, x_before)


def test_non_contiguous_and_list_inputs_take_the_checked_path():
    layer = RNN(3, 5, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    a, b, c = layer.stream(2), layer.stream(2), layer.stream(2)
    y_strided = a.step(x[:, ::2])                   # (2, 3) view with stride 2
    y_copy = b.step(np.ascontiguousarray(x[:, ::2]))
    y_list = c.step(x[:, ::2].tolist())
    np.testing.assert_array_equal(y_strided, y_copy)
    np.testing.assert_array_equal(y_list, y_copy)
    f = x[:, ::2].copy(order="F")
    np.testing.assert_array_equal(layer.stream(2).step(f), y_copy)


@pytest.mark.parametrize("bad,err,match", [
    (np.ones((1, 3), np.float64), TypeError, "dtype float64, expected float32"),
    (np.ones((1, 3), np.int32), TypeError, "dtype int32"),
    (np.ones((2, 3), np.float32), ValueError, r"shape \(2, 3\), expected \(1, 3\)"),
    (np.ones((1, 4), np.float32), ValueError, "shape"),
    (np.ones((1, 1, 3), np.float32), ValueError, "shape"),
    (np.float32(1.0), TypeError, "numpy array of shape"),
    ("abc", TypeError, "numpy array"),
    (None, TypeError, "numpy array"),
])
def test_bad_inputs_are_refused_by_name(bad, err, match):
    s = LSTM(3, 4, seed=0).stream()
    state_before = s.get_state()
    with pytest.raises(err, match=match):
        s.step(bad)
    for a, b in zip(state_before, s.get_state()):
        np.testing.assert_array_equal(a, b)         # a refused call does not step


def test_bidirectional_and_bad_batch_refused():
    with pytest.raises(ValueError, match="bidirectional"):
        GRU(3, 4, bidirectional=True).stream()
    for batch in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch"):
            GRU(3, 4).stream(batch)


def test_direct_construction_checks_every_array():
    """Stream reads its arrays through raw pointers: a wrong one is refused up front."""
    layer = LSTM(3, 4, num_layers=2, peephole="io", seed=0)
    good = layer.stream()   # the layer's own path works
    assert good.step(np.ones(3, np.float32)).shape == (4,)

    def params(**change):
        ps = []
        for l in range(2):
            d = {"W_ih": layer.params[f"weight_ih_l{l}"], "W_hh": layer.params[f"weight_hh_l{l}"],
                 "b_ih": layer.params[f"bias_ih_l{l}"], "b_hh": layer.params[f"bias_hh_l{l}"],
                 "p_i": layer.params[f"peephole_i_l{l}"], "p_o": layer.params[f"peephole_o_l{l}"]}
            d.update(change if l == 1 else {})
            ps.append(d)
        return ps
    fastrnn.Stream(layer, 1, params(), 1)
    bad = [dict(W_hh=np.zeros((16, 3), np.float32)), dict(W_ih=np.zeros((16, 4), np.float64)),
           dict(b_ih=np.zeros(15, np.float32)), dict(p_i=None),
           dict(p_f=np.zeros(4, np.float32)), dict(b_hh=None),
           dict(W_ih=np.zeros((16, 8), np.float32)[:, ::2])]
    for change in bad:
        with pytest.raises(ValueError):
            fastrnn.Stream(layer, 1, params(**change), 1)
    with pytest.raises(ValueError, match="one dict per layer"):
        fastrnn.Stream(layer, 1, params()[:1], 1)
    with pytest.raises(ValueError, match="batch"):
        fastrnn.Stream(layer, 0, params(), 1)


def test_state_round_trip_and_reset():
    layer = LSTM(3, 4, num_layers=2, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 1, 3)).astype(np.float32)
    a = layer.stream()
    for t in range(2):
        a.step(x[t])
    saved = a.get_state()
    rest = [a.step(x[t]) for t in (2, 3)]
    b = layer.stream(state=saved)                 # resumes where a was
    np.testing.assert_array_equal(np.stack([b.step(x[t]) for t in (2, 3)]), np.stack(rest))
    b.set_state(None)                             # back to zeros = a fresh stream
    np.testing.assert_array_equal(b.step(x[0]), layer.stream().step(x[0]))
    with pytest.raises(ValueError, match="pair"):
        b.set_state(saved[0])
    with pytest.raises(ValueError, match=r"shape \(2, 1, 4\)"):
        b.set_state((saved[0][:1], saved[1][:1]))
    with pytest.raises(ValueError, match="float32"):
        b.set_state(tuple(s.astype(np.float64) for s in saved))


def test_parameters_are_read_in_place():
    """An optimizer updates layer.flat in place; the stream sees it on the next call."""
    layer = GRU(3, 4, seed=0)
    s = layer.stream()
    x = np.ones(3, np.float32)
    layer.flat *= 0.5
    layer.params["bias_hh_l0"][:] = 0.25       # the fused bias is rebuilt per call
    expected = layer.step(x[None], None)[0][0]
    np.testing.assert_allclose(s.step(x), expected, rtol=1e-6, atol=1e-7)


def test_one_stream_shared_by_threads_is_serialised():
    """Eight threads step one stream; the lock keeps each step whole, so the final state
    is the state after all 8 x 50 steps in some order. With equal inputs the order does
    not matter: compare with 400 serial steps."""
    layer = LSTM(16, 32, seed=0)
    x = np.random.default_rng(0).standard_normal(16).astype(np.float32)
    shared = layer.stream()

    def work():
        for _ in range(50):
            shared.step(x)
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    serial = layer.stream()
    for _ in range(400):
        serial.step(x)
    for a, b in zip(shared.get_state(), serial.get_state()):
        np.testing.assert_array_equal(a, b)


def test_separate_streams_in_threads_match_serial_runs():
    layer = GRU(24, 48, num_layers=2, seed=1)
    xs = np.random.default_rng(5).standard_normal((6, 40, 24)).astype(np.float32)
    serial = []
    for seq in xs:
        s = layer.stream()
        serial.append(np.stack([s.step(x) for x in seq]))
    results = [None] * len(xs)

    def work(i):
        s = layer.stream()
        results[i] = np.stack([s.step(x) for x in xs[i]])
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(results, serial):
        np.testing.assert_array_equal(a, b)


def test_thread_count_follows_the_work_threshold():
    from fastrnn.kernels import _blas
    old = _blas.set_min_parallel_work(400000)
    try:
        assert LSTM(64, 64, n_threads=2).stream().n_threads == 1      # 0.13 M multiply-adds
        expected = 2 if fastrnn.openmp_enabled() else 1
        assert LSTM(256, 256, n_threads=2).stream().n_threads == expected   # 0.52 M
        assert LSTM(256, 256, n_threads=1).stream().n_threads == 1
    finally:
        _blas.set_min_parallel_work(old)
