"""fastrnn files holding a bare recurrent stack or a cell (architecture kind "layer"/"cell"):
bit-exact round trips of every variant; the safetensors package and PyTorch as independent
readers; crafted architectures (re-checksummed, so only the architecture check can refuse
them) rejected with ModelFileError; model files unchanged."""
import json
import struct

import numpy as np
import pytest

import fastrnn
from fastrnn import io
from fastrnn.io import ModelFileError, load_bytes, model_bytes

OBJECTS = {
    "rnn-relu-bi-bf": lambda: fastrnn.RNN(3, 4, num_layers=2, nonlinearity="relu",
                                          bidirectional=True, batch_first=True),
    "lstm-coupled-peep-f64": lambda: fastrnn.LSTM(3, 4, peephole="io", coupled=True,
                                                  dtype=np.float64),
    "lstm-peep-dropout": lambda: fastrnn.LSTM(3, 4, num_layers=2, peephole=True, dropout=0.25),
    "gru-before-nobias": lambda: fastrnn.GRU(2, 5, reset_after=False, bias=False),
    "gru-3-bi-f64": lambda: fastrnn.GRU(2, 5, num_layers=3, bidirectional=True,
                                        dtype=np.float64),
    "rnncell-relu": lambda: fastrnn.RNNCell(3, 4, nonlinearity="relu"),
    "lstmcell-peep": lambda: fastrnn.LSTMCell(3, 4, peephole="if"),
    "grucell-before-f64": lambda: fastrnn.GRUCell(2, 3, bias=False, reset_after=False,
                                                  dtype=np.float64),
}
CONFIG_KEYS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
               "bidirectional", "nonlinearity", "peephole", "coupled", "reset_after", "cell",
               "dtype")


def _randomized(make, seed=0):
    obj = make()
    rng = np.random.default_rng(seed)
    for p in obj.params.values():
        p[...] = rng.uniform(-0.5, 0.5, p.shape)
    return obj


def _layer(obj):
    return obj._layer if isinstance(obj, fastrnn.nn.layers.RecurrentCell) else obj


def _run(obj, rng):
    layer = _layer(obj)
    if isinstance(obj, fastrnn.nn.layers.RecurrentCell):
        x = rng.standard_normal((3, layer.input_size)).astype(layer.dtype)
        out = obj(x)
        return out if isinstance(out, tuple) else (out,)
    x = rng.standard_normal((3, 5, layer.input_size) if layer.batch_first
                            else (5, 3, layer.input_size)).astype(layer.dtype)
    out, st = obj(x, None, np.array([5, 2, 3]))
    return (out,) + (st if isinstance(st, tuple) else (st,))


@pytest.mark.parametrize("name", OBJECTS)
def test_layer_and_cell_files_round_trip_bit_exactly(name, tmp_path):
    obj = _randomized(OBJECTS[name])
    path = tmp_path / "net.fastrnn"
    io.save(obj, path)
    back = fastrnn.load(path)
    assert type(back) is type(obj)
    for key in CONFIG_KEYS:
        if hasattr(_layer(obj), key):
            assert getattr(_layer(back), key) == getattr(_layer(obj), key), key
    assert set(back.params) == set(obj.params)
    for k, a in obj.params.items():
        assert back.params[k].dtype == a.dtype and back.params[k].tobytes() == a.tobytes(), k
    for a, b in zip(_run(obj, np.random.default_rng(1)), _run(back, np.random.default_rng(1))):
        assert a.tobytes() == b.tobytes()
    if isinstance(back, fastrnn.nn.layers.RecurrentLayer):
        assert not back.training                    # loaded for inference, as models are


def test_safetensors_package_and_torch_read_layer_files(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file
    layer = _randomized(lambda: fastrnn.GRU(3, 4, num_layers=2, bidirectional=True))
    path = tmp_path / "gru.fastrnn"
    io.save(layer, path)
    arrays = st.load_file(str(path))
    assert set(arrays) == set(layer.params)
    for k, a in layer.params.items():
        np.testing.assert_array_equal(arrays[k], a)
    # the tensors are a PyTorch state dict: nn.GRU loads it and computes the same function
    module = torch.nn.GRU(3, 4, num_layers=2, bidirectional=True)
    module.load_state_dict(load_file(str(path)))
    x = np.random.default_rng(0).standard_normal((6, 2, 3)).astype(np.float32)
    with torch.no_grad():
        expected, h_n = module(torch.from_numpy(x))
    out, state = fastrnn.load(path)(x)
    np.testing.assert_allclose(out, expected.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(state, h_n.numpy(), rtol=0, atol=1e-5)


def test_layer_file_with_optimizer_state(tmp_path):
    layer = _randomized(lambda: fastrnn.LSTM(2, 3))
    opt = fastrnn.nn.optim.Adam([(layer.flat, layer.grad)], lr=1e-2)
    layer.grad[...] = 0.1
    opt.step()
    io.save(layer, tmp_path / "l.fastrnn", optimizer=opt)
    back, state = fastrnn.load(tmp_path / "l.fastrnn", with_optimizer=True)
    assert state["name"] == "Adam" and state["state"]["step"] == 1
    fresh = fastrnn.nn.optim.Adam([(back.flat, back.grad)], lr=1e-2)
    fresh.load_state_dict(state["state"])
    for k, v in opt.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[k], v)


def test_model_files_do_not_change():
    m = fastrnn.SequenceModel("gru", input_size=2, hidden_size=2, output_size=1,
                              task="regression", seed=0)
    arch = _header(model_bytes(m))[0]["__metadata__"]["architecture"]
    assert "kind" not in json.loads(arch)             # older fastrnn versions read it


def test_saving_something_else_is_refused(tmp_path):
    with pytest.raises(TypeError, match="SequenceModel"):
        io.save({"weight": np.zeros(3)}, tmp_path / "x.fastrnn")


# ---- crafted architectures -------------------------------------------------------------

def _header(blob):
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def _crafted(obj, edit, checksum=True):
    """obj's file with its architecture edited; checksum recomputed unless told not to."""
    header, data = _header(model_bytes(obj))
    meta = header["__metadata__"]
    arch = json.loads(meta["architecture"])
    edit(arch)
    meta["architecture"] = json.dumps(arch)
    if checksum:
        meta["sha256"] = io._checksum(meta, data)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _set(**kv):
    def edit(arch):
        for k, v in kv.items():
            if v is _DROP:
                arch.pop(k)
            else:
                arch[k] = v
    return edit


_DROP = object()


@pytest.mark.parametrize("make,edit,match", [
    (lambda: fastrnn.LSTM(3, 4), _set(kind="layers"), "kind='layers' is not allowed"),
    (lambda: fastrnn.LSTM(3, 4), _set(kind="builtins.eval"), "not allowed"),
    (lambda: fastrnn.LSTM(3, 4), _set(cell="torch.nn.LSTM"), "not allowed"),
    (lambda: fastrnn.LSTM(3, 4), _set(task="regression"), "unknown key 'task'"),
    (lambda: fastrnn.LSTM(3, 4), _set(__class__="os.system"), "unknown key"),
    (lambda: fastrnn.LSTM(3, 4), _set(num_layers=_DROP), "lacks.*num_layers"),
    (lambda: fastrnn.LSTM(3, 4), _set(nonlinearity="relu"), "'nonlinearity' is for a rnn"),
    (lambda: fastrnn.GRU(3, 4), _set(coupled=True), "'coupled' is for a lstm"),
    (lambda: fastrnn.LSTM(3, 4), _set(input_size=None), "input_size"),
    (lambda: fastrnn.LSTM(3, 4), _set(num_layers=0), "num_layers=0"),
    (lambda: fastrnn.LSTM(3, 4), _set(batch_first="yes"), "batch_first"),
    (lambda: fastrnn.LSTM(3, 4, coupled=True), _set(peephole="f"), "does not make"),
    (lambda: fastrnn.LSTM(3, 4), _set(hidden_size=5), "needs|match"),
    (lambda: fastrnn.LSTM(3, 4), _set(bias=False), "match"),
    (lambda: fastrnn.LSTM(3, 4), _set(num_layers=2), "match"),
    (lambda: fastrnn.LSTM(3, 4), _set(kind="cell"), "unknown key"),
    (lambda: fastrnn.LSTMCell(3, 4), _set(kind="layer"), "lacks"),
    (lambda: fastrnn.LSTMCell(3, 4), _set(num_layers=1), "unknown key 'num_layers'"),
    (lambda: fastrnn.LSTM(3, 4), _set(kind="model"), "unknown key|lacks"),
    (lambda: fastrnn.SequenceModel("gru", input_size=2, hidden_size=2, output_size=1,
                                   task="regression"), _set(batch_first=True),
     "unknown key 'batch_first'"),
    (lambda: fastrnn.SequenceModel("gru", input_size=2, hidden_size=2, output_size=1,
                                   task="regression"), _set(nonlinearity="relu"),
     "is for a rnn"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_crafted_architectures_are_rejected(make, edit, match):
    with pytest.raises(ModelFileError, match=match):
        load_bytes(_crafted(make(), edit))


def test_an_edited_architecture_without_its_checksum_is_rejected():
    blob = _crafted(fastrnn.RNN(3, 4), _set(nonlinearity="relu"), checksum=False)
    with pytest.raises(ModelFileError, match="checksum"):
        load_bytes(blob)
