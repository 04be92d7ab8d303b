"""Layers (fastrnn.RNN / LSTM / GRU and the cells) against PyTorch with copied weights:
multi-layer, bidirectional, batch_first, ragged lengths, unbatched input; outputs, final
states and every gradient. Then the layer's own contracts: flat buffer views, init,
seeding, streaming == whole sequence, dropout, validation."""
import numpy as np
import pytest

import fastrnn

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

# float64 throughout the PyTorch comparisons: both sides are exact to ~1e-15 per op, the
# stacks here are short, so differences are summation order only.
RTOL, ATOL = 1e-9, 1e-10

T, B, I, H = 6, 3, 4, 5
LENGTHS = np.array([6, 2, 4])

CONFIGS = [
    dict(cls="RNN", num_layers=1, bidirectional=False),
    dict(cls="RNN", num_layers=2, bidirectional=True, nonlinearity="relu"),
    dict(cls="LSTM", num_layers=1, bidirectional=False),
    dict(cls="LSTM", num_layers=2, bidirectional=True),
    dict(cls="LSTM", num_layers=3, bidirectional=False, bias=False),
    dict(cls="GRU", num_layers=2, bidirectional=False),
    dict(cls="GRU", num_layers=2, bidirectional=True),
]


def _pair(cfg, batch_first=False):
    kw = {k: v for k, v in cfg.items() if k != "cls"}
    ours = getattr(fastrnn, cfg["cls"])(I, H, dtype=np.float64, seed=3, batch_first=batch_first, **kw)
    theirs = getattr(torch.nn, cfg["cls"])(I, H, batch_first=batch_first, **kw).double()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            p.copy_(torch.from_numpy(ours.params[name]))
    return ours, theirs


def _close(what, got, want):
    want = want.detach().numpy() if hasattr(want, "detach") else want
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=what)


@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "ragged"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_layer_matches_pytorch(cfg, ragged, batch_first):
    ours, theirs = _pair(cfg, batch_first)
    rng = np.random.default_rng(0)
    D, L = 2 if cfg["bidirectional"] else 1, cfg["num_layers"]
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    h0 = rng.standard_normal((L * D, B, H))
    c0 = rng.standard_normal((L * D, B, H))
    state = (h0, c0) if cfg["cls"] == "LSTM" else h0
    lengths = LENGTHS if ragged else None

    out, state_n, tape = ours.forward(x, state, lengths)
    R = rng.standard_normal(out.shape)
    Rs = [rng.standard_normal((L * D, B, H)) for _ in range(2)]
    dstate = (Rs[0], Rs[1]) if cfg["cls"] == "LSTM" else Rs[0]
    ours.zero_grad()
    dx, dstate0 = ours.backward(R, dstate, tape)

    tx = torch.tensor(x, requires_grad=True)
    th = [torch.tensor(s, requires_grad=True) for s in (h0, c0)]
    tstate = tuple(th) if cfg["cls"] == "LSTM" else th[0]
    if ragged:
        packed = pack_padded_sequence(tx, torch.from_numpy(lengths), batch_first=batch_first,
                                      enforce_sorted=False)
        tout, tstate_n = theirs(packed, tstate)
        tout, _ = pad_packed_sequence(tout, batch_first=batch_first, total_length=T)
    else:
        tout, tstate_n = theirs(tx, tstate)
    tfinals = tstate_n if cfg["cls"] == "LSTM" else (tstate_n,)
    finals = state_n if cfg["cls"] == "LSTM" else (state_n,)
    _close("out", out, tout)
    for k, (a, b) in enumerate(zip(finals, tfinals)):
        _close(f"final state {k}", a, b)
    loss = (tout * torch.from_numpy(R)).sum() + sum(
        (s * torch.from_numpy(r)).sum() for s, r in zip(tfinals, Rs))
    loss.backward()
    _close("dx", dx, tx.grad)
    d0 = dstate0 if cfg["cls"] == "LSTM" else (dstate0,)
    for k, a in enumerate(d0):
        _close(f"d state0 {k}", a, th[k].grad)
    for name, p in theirs.named_parameters():
        _close(f"d {name}", ours.grads[name], p.grad)


@pytest.mark.parametrize("cls", ["RNN", "LSTM", "GRU"])
def test_unbatched_input_and_cells_match_pytorch(cls):
    ours, theirs = _pair(dict(cls=cls, num_layers=2, bidirectional=False))
    x = np.random.default_rng(1).standard_normal((T, I))
    out, st = ours(x)
    tout, tst = theirs(torch.from_numpy(x))
    _close("unbatched out", out, tout)
    for a, b in zip(st if cls == "LSTM" else (st,), tst if cls == "LSTM" else (tst,)):
        _close("unbatched state", a, b)
    cell = getattr(fastrnn, cls + "Cell")(I, H, dtype=np.float64, seed=2)
    tcell = getattr(torch.nn, cls + "Cell")(I, H).double()
    with torch.no_grad():
        for name, p in tcell.named_parameters():
            p.copy_(torch.from_numpy(cell.params[name]))
    xb = np.random.default_rng(2).standard_normal((B, I))
    hb = np.random.default_rng(3).standard_normal((B, H))
    state = (hb, hb * 0.5) if cls == "LSTM" else hb
    tstate = tuple(map(torch.from_numpy, state)) if cls == "LSTM" else torch.from_numpy(state)
    got, want = cell(xb, state), tcell(torch.from_numpy(xb), tstate)
    for a, b in zip(got if cls == "LSTM" else (got,), want if cls == "LSTM" else (want,)):
        _close("cell", a, b)


@pytest.mark.parametrize("kw", [dict(cls="LSTM", peephole=True), dict(cls="LSTM", peephole="io", coupled=True),
                                dict(cls="GRU", reset_after=False), dict(cls="RNN")],
                         ids=["peephole", "coupled", "gru_before", "rnn"])
def test_layer_equals_reference_stack(kw):
    """Variants PyTorch lacks: a 2-layer stack equals the numpy reference applied layer by layer."""
    kw = dict(kw)
    cls = kw.pop("cls")
    layer = getattr(fastrnn, cls)(I, H, num_layers=2, dtype=np.float64, seed=5, **kw)
    rng = np.random.default_rng(4)
    for p in layer.params.values():   # peepholes start at zero: give them values
        p += rng.standard_normal(p.shape) * 0.1
    x = rng.standard_normal((T, B, I))
    out, st = layer(x, lengths=LENGTHS)
    inp = x
    R = fastrnn.reference
    for l in range(2):
        p = {k[:-3]: v for k, v in layer.params.items() if k.endswith(f"_l{l}")}
        args = (p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"])
        z = np.zeros((B, H))
        if cls == "LSTM":
            peep = {f"p_{g}": p[f"peephole_{g}"] for g in layer.peephole}
            inp, h_n, c_n, _ = R.lstm_forward(inp, z, z, *args, coupled=layer.coupled,
                                              lengths=LENGTHS, **peep)
        elif cls == "GRU":
            inp, h_n, _ = R.gru_forward(inp, z, *args, reset_after=False, lengths=LENGTHS)
        else:
            inp, h_n, _ = R.rnn_forward(inp, z, *args, lengths=LENGTHS)
        h = st[0][l] if cls == "LSTM" else st[l]
        np.testing.assert_allclose(h, h_n, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(out, inp, rtol=1e-12, atol=1e-13)


def test_flat_buffer_views_and_names():
    m = fastrnn.LSTM(I, H, num_layers=2, bidirectional=True, peephole="if", seed=0)
    t = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True)
    torch_names = dict(t.named_parameters())
    for name, p in m.params.items():
        assert np.shares_memory(p, m.flat) and p.flags.c_contiguous
        assert np.shares_memory(m.grads[name], m.grad)
        if not name.startswith("peephole"):
            assert p.shape == tuple(torch_names[name].shape), name
    assert set(torch_names) <= set(m.params)
    assert m.flat.size == sum(p.size for p in m.params.values())
    assert m.weight_hh_l1_reverse is m.params["weight_hh_l1_reverse"]


def test_initialisation():
    m = fastrnn.LSTM(7, 16, num_layers=2, seed=1)
    H = 16
    for k in range(4):    # every gate block of W_hh orthogonal
        block = m.weight_hh_l0[k * H:(k + 1) * H].astype(np.float64)
        np.testing.assert_allclose(block @ block.T, np.eye(H), atol=1e-5)
    limit = np.sqrt(6 / (7 + 16))
    assert np.abs(m.weight_ih_l0).max() <= limit and np.abs(m.weight_ih_l0).max() > 0.8 * limit
    np.testing.assert_array_equal(m.bias_ih_l0[H:2 * H], 1.0)           # forget gate
    assert not m.bias_ih_l0[:H].any() and not m.bias_hh_l0.any()
    again = fastrnn.LSTM(7, 16, num_layers=2, seed=1)
    assert again.flat.tobytes() == m.flat.tobytes()                     # same seed, same bits
    assert fastrnn.LSTM(7, 16, num_layers=2, seed=2).flat.tobytes() != m.flat.tobytes()
    c = fastrnn.LSTM(3, 4, coupled=True, seed=0)
    assert c.weight_ih_l0.shape == (12, 3)
    np.testing.assert_array_equal(c.bias_ih_l0[:4], -1.0)


@pytest.mark.parametrize("cls", ["RNN", "LSTM", "GRU"])
def test_streaming_step_equals_whole_sequence(cls):
    m = getattr(fastrnn, cls)(I, H, num_layers=2, seed=0)
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    out, final = m(x)
    state = m.initial_state(B)
    kept = state
    ys = []
    for t in range(T):
        y, state = m.step(x[t], state)
        ys.append(y)
    np.testing.assert_allclose(np.stack(ys), out, rtol=1e-5, atol=1e-6)
    for a, b in zip(state if cls == "LSTM" else (state,), final if cls == "LSTM" else (final,)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for s in kept if cls == "LSTM" else (kept,):   # the caller's state is never modified
        assert not s.any()


def test_dropout_only_in_training_and_seeded():
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    a = fastrnn.GRU(I, H, num_layers=3, dropout=0.5, seed=7)
    b = fastrnn.GRU(I, H, num_layers=3, dropout=0.5, seed=7)
    no_drop = fastrnn.GRU(I, H, num_layers=3, seed=7)
    out_a, _, _ = a.forward(x)
    out_b, _, _ = b.forward(x)
    assert out_a.tobytes() == out_b.tobytes()
    assert not np.allclose(out_a, no_drop(x)[0])
    np.testing.assert_array_equal(a(x)[0], no_drop(x)[0])     # __call__ is inference


def test_bad_arguments():
    with pytest.raises(ValueError, match="hidden_size"):
        fastrnn.LSTM(3, 0)
    with pytest.raises(ValueError, match="dropout"):
        fastrnn.GRU(3, 4, dropout=1.0)
    with pytest.raises(ValueError, match="peephole"):
        fastrnn.LSTM(3, 4, peephole="ix")
    with pytest.raises(ValueError, match="coupled"):
        fastrnn.LSTM(3, 4, peephole=True, coupled=True)
    with pytest.raises(TypeError, match="dtype"):
        fastrnn.RNN(3, 4, dtype=np.float16)
    m = fastrnn.LSTM(3, 4, num_layers=2)
    with pytest.raises(ValueError, match="input_size=3"):
        m(np.zeros((5, 2, 4), np.float32))
    with pytest.raises(TypeError, match="float32"):
        m(np.zeros((5, 2, 3)))
    with pytest.raises(ValueError, match=r"\(num_layers \* num_directions"):
        m(np.zeros((5, 2, 3), np.float32), (np.zeros((1, 2, 4), np.float32),) * 2)
    with pytest.raises(ValueError, match="lengths"):
        m(np.zeros((5, 2, 3), np.float32), lengths=[6, 1])
    with pytest.raises(ValueError, match="bidirectional"):
        fastrnn.GRU(3, 4, bidirectional=True).step(np.zeros((1, 3), np.float32), None)
    with pytest.raises(ValueError, match="mismatch"):
        m.load_state_dict({"weight_ih_l0": np.zeros((16, 3))})


def test_dropout_scaling_and_gradient():
    """Inverted dropout: kept activations scaled by 1/keep; backward through the same mask
    matches central finite differences (the mask is redrawn identically by reseeding)."""
    m = fastrnn.LSTM(I, H, num_layers=2, dropout=0.4, dtype=np.float64, seed=3)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((T, B, I))
    R = rng.standard_normal((T, B, H))

    def loss():
        m._rng = np.random.default_rng(99)
        out, _, tape = m.forward(x)
        return float(np.sum(out * R)), tape

    _, tape = loss()
    mask = tape.layers[0][1]
    assert set(np.unique(mask)) == {0.0, 1 / 0.6}
    m.zero_grad()
    dx, _ = m.backward(R, None, tape)
    eps = 1e-6
    for name in ("weight_ih_l1", "weight_hh_l0", "bias_hh_l0"):
        p, g = m.params[name].reshape(-1), m.grads[name].reshape(-1)
        for i in range(0, p.size, max(1, p.size // 7)):
            orig = p[i]
            p[i] = orig + eps; plus = loss()[0]
            p[i] = orig - eps; minus = loss()[0]
            p[i] = orig
            assert abs((plus - minus) / (2 * eps) - g[i]) < 1e-6 * max(1, abs(g[i])), (name, i)
    i = (2, 1, 3)
    orig = x[i]
    x[i] = orig + eps; plus = loss()[0]
    x[i] = orig - eps; minus = loss()[0]
    x[i] = orig
    assert abs((plus - minus) / (2 * eps) - dx[i]) < 1e-6 * max(1, abs(dx[i]))


@pytest.mark.parametrize("cls", ["RNN", "LSTM", "GRU"])
def test_need_dx_false_skips_only_the_input_gradient(cls):
    m = getattr(fastrnn, cls)(I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((T, B, I))
    R = np.random.default_rng(1).standard_normal((T, B, 2 * H))
    grads = []
    for need in (True, False):
        out, _, tape = m.forward(x, lengths=LENGTHS)
        m.zero_grad()
        dx, _ = m.backward(R, None, tape, need_dx=need)
        assert (dx is None) == (not need)
        grads.append(m.grad.copy())
    assert grads[0].tobytes() == grads[1].tobytes()


# ---- cells' state dicts, keyword errors, repr ------------------------------------------------

@pytest.mark.parametrize("cls,kw", [("RNNCell", {}), ("RNNCell", dict(nonlinearity="relu")),
                                    ("LSTMCell", {}), ("GRUCell", {}),
                                    ("LSTMCell", dict(bias=False))])
def test_cells_load_a_torch_cells_state_dict_and_match_it(cls, kw):
    theirs = getattr(torch.nn, cls)(I, H, **kw).double()
    ours = getattr(fastrnn, cls)(I, H, dtype=np.float64, seed=0, **kw)
    ours.load_state_dict(theirs.state_dict())            # torch tensors, torch's names
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = np.random.default_rng(0).standard_normal((B, I))
    h = np.random.default_rng(1).standard_normal((B, H))
    state = (h, h * 0.5) if cls == "LSTMCell" else h
    tstate = tuple(map(torch.from_numpy, state)) if cls == "LSTMCell" else torch.from_numpy(h)
    got, want = ours(x, state), theirs(torch.from_numpy(x), tstate)
    for a, b in zip(got if cls == "LSTMCell" else (got,), want if cls == "LSTMCell" else (want,)):
        _close(f"{cls} after load_state_dict", a, b)
    # state_dict gives copies; a round trip into another cell gives the same outputs
    sd = ours.state_dict()
    sd["weight_ih"][...] = 0
    assert ours.params["weight_ih"].any()
    other = getattr(fastrnn, cls)(I, H, dtype=np.float64, seed=9, **kw)
    other.load_state_dict(ours.state_dict())
    for a, b in zip(other(x, state) if cls == "LSTMCell" else (other(x, state),),
                    got if cls == "LSTMCell" else (got,)):
        np.testing.assert_array_equal(a, b)


def test_a_cells_load_state_dict_checks_before_writing():
    cell = fastrnn.LSTMCell(I, H, peephole="io", seed=0)
    before = cell.state_dict()
    assert sorted(before) == ["bias_hh", "bias_ih", "peephole_i", "peephole_o", "weight_hh",
                              "weight_ih"]
    layer_names = fastrnn.LSTM(I, H, peephole="io").state_dict()      # weight_ih_l0, ...
    bad_shape = dict(before, weight_hh=np.zeros((4 * H, H + 1), np.float32))
    bad_value = dict(before, bias_ih=np.full(4 * H, np.nan, np.float32))
    for state, err, match in [(layer_names, ValueError, r"unexpected \['weight_ih_l0'"),
                              (bad_shape, ValueError, "weight_hh: shape"),
                              (bad_value, ValueError, "NaN"),
                              ({k: v for k, v in before.items() if k != "bias_hh"}, ValueError,
                               r"missing \['bias_hh'\]")]:
        with pytest.raises(err, match=match):
            cell.load_state_dict(state)
        for k, v in cell.state_dict().items():
            np.testing.assert_array_equal(v, before[k])      # nothing was written


@pytest.mark.parametrize("make,message", [
    (lambda: fastrnn.LSTM(4, 8, hiden=3), "LSTM() got an unexpected keyword argument 'hiden' "
                                          "(did you mean 'hidden_size'?)"),
    (lambda: fastrnn.GRU(4, 8, reset_afer=False), "GRU() got an unexpected keyword argument "
                                                  "'reset_afer' (did you mean 'reset_after'?)"),
    (lambda: fastrnn.RNN(4, 8, nonlinarity="relu"), "RNN() got an unexpected keyword argument "
                                                    "'nonlinarity' (did you mean 'nonlinearity'?)"),
    (lambda: fastrnn.LSTM(4, 8, batchfirst=True), "(did you mean 'batch_first'?)"),
    (lambda: fastrnn.GRU(4, 8, peephole=True), "GRU() got an unexpected keyword argument "
                                               "'peephole'"),
    (lambda: fastrnn.LSTMCell(4, 8, peepole="io"), "LSTMCell() got an unexpected keyword "
                                                   "argument 'peepole' (did you mean 'peephole'?)"),
    (lambda: fastrnn.GRUCell(4, 8, sed=0), "GRUCell() got an unexpected keyword argument 'sed' "
                                           "(did you mean 'seed'?)"),
    # a cell is one layer, one direction: the layer's other arguments are not a cell's
    (lambda: fastrnn.RNNCell(4, 8, bidirectional=True), "RNNCell() got an unexpected keyword "
                                                        "argument 'bidirectional'"),
    (lambda: fastrnn.LSTMCell(4, 8, num_layers=2), "LSTMCell() got an unexpected keyword "
                                                   "argument 'num_layers'"),
])
def test_a_misspelt_keyword_names_the_public_class_and_the_closest_argument(make, message):
    with pytest.raises(TypeError) as info:
        make()
    assert message in str(info.value) and "RecurrentLayer" not in str(info.value), str(info.value)


@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2, batch_first=True, bidirectional=True),
                                dict(bias=False, dropout=0.25, num_layers=3)])
@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_repr_is_pytorchs(cls, kw):
    assert repr(getattr(fastrnn, cls)(64, 128, **kw)) == repr(getattr(torch.nn, cls)(64, 128, **kw))


def test_repr_shows_every_argument_that_is_not_at_its_default():
    assert repr(fastrnn.LSTM(64, 128, num_layers=2, batch_first=True, bidirectional=True,
                             peephole=True)) == \
        "LSTM(64, 128, num_layers=2, batch_first=True, bidirectional=True, peephole='ifo')"
    assert repr(fastrnn.LSTM(4, 8, coupled=True, peephole="io", dtype=np.float64,
                             n_threads=2)) == \
        "LSTM(4, 8, peephole='io', coupled=True, dtype='float64', n_threads=2)"
    assert repr(fastrnn.GRU(4, 8, reset_after=False)) == "GRU(4, 8, reset_after=False)"
    assert repr(fastrnn.RNN(4, 8, nonlinearity="relu")) == "RNN(4, 8, nonlinearity='relu')"
    assert repr(fastrnn.LSTMCell(4, 8)) == repr(torch.nn.LSTMCell(4, 8))
    assert repr(fastrnn.GRUCell(4, 8, bias=False)) == repr(torch.nn.GRUCell(4, 8, bias=False))
    assert repr(fastrnn.LSTMCell(4, 8, peephole="if", dtype=np.float64)) == \
        "LSTMCell(4, 8, peephole='if', dtype='float64')"
    assert repr(fastrnn.RNNCell(4, 8, nonlinearity="relu")) == \
        "RNNCell(4, 8, nonlinearity='relu')"
    layer = fastrnn.GRU(4, 8, num_layers=2, dropout=0.5, dtype="float64")
    assert repr(eval(repr(layer), {"GRU": fastrnn.GRU})) == repr(layer)
