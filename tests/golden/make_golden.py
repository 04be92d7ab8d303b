"""Write the golden model files of the current format version: ``tests/golden/v<N>/``.

Run it once when a NEW model-file format version is released (``fastrnn.io.FORMAT_VERSION``
bumped), from the repository root, and commit the folder it writes:

    python tests/golden/make_golden.py

It refuses to touch a folder that exists: the files of every released version stay as they
were committed, and ``tests/files/test_golden.py`` checks that each of them keeps loading, to the
same weights bit for bit and to the same predictions. ``--check`` writes nothing and says
whether the files the current code writes are still byte-identical to the committed ones of
the current version (they should be, as long as the writer does not change).

Per version folder:
* ``<name>.fastrnn``: one small file per kind the format holds: a SequenceModel of each
  cell (float32 and float64, feature and token inputs, one with optimizer state), a bare
  layer stack of each cell, a cell of each kind;
* ``expected.npz``: for each file, ``<name>::param::<tensor>`` (the weights, written
  independently of the model file), ``<name>::in::<input>`` (x, lengths, the initial state)
  and ``<name>::out::<output>`` (what the object computed from them when written);
  optimizer arrays as ``<name>::optimizer::<key>``;
* ``manifest.json``: for each file its class and constructor arguments (so a test can build
  the object without the file), its sha256, and where the expected outputs were computed
  (vector path, BLAS core), since the last bits of float math depend on the CPU.
"""
import argparse
import datetime
import hashlib
import json
import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))        # the repository root, for `import fastrnn`

import fastrnn  # noqa: E402
from fastrnn import io  # noqa: E402

# name -> (class name, constructor kwargs); every name's class is in fastrnn's namespace
CASES = {
    "model-lstm-peephole-2layer-f32": ("SequenceModel", dict(
        cell="lstm", input_size=3, hidden_size=4, output_size=2, task="regression",
        num_layers=2, peephole=True)),
    "model-lstm-coupled-bi-f64": ("SequenceModel", dict(
        cell="lstm", input_size=3, hidden_size=3, output_size=3,
        task="sequence_classification", bidirectional=True, coupled=True, peephole="io",
        dtype="float64")),
    "model-lstm-adam-f32": ("SequenceModel", dict(
        cell="lstm", input_size=2, hidden_size=3, output_size=1, task="sequence_regression")),
    "model-gru-tokens-f32": ("SequenceModel", dict(
        cell="gru", vocab_size=6, embedding_dim=3, hidden_size=4, task="next_token",
        reset_after=False)),
    "model-gru-multilabel-f64": ("SequenceModel", dict(
        cell="gru", input_size=2, hidden_size=5, output_size=3, task="multilabel",
        dtype="float64")),
    "model-rnn-relu-f32": ("SequenceModel", dict(
        cell="rnn", input_size=3, hidden_size=4, output_size=2,
        task="per_step_classification", nonlinearity="relu")),
    "model-rnn-tanh-bi-f64": ("SequenceModel", dict(
        cell="rnn", input_size=2, hidden_size=3, output_size=2, task="sequence_regression",
        bidirectional=True, num_layers=2, dtype="float64")),
    "layer-lstm-bi-2layer-f32": ("LSTM", dict(
        input_size=3, hidden_size=4, num_layers=2, bidirectional=True, batch_first=True)),
    "layer-lstm-peephole-f64": ("LSTM", dict(
        input_size=2, hidden_size=3, peephole="ifo", dtype="float64")),
    "layer-gru-nobias-f64": ("GRU", dict(
        input_size=2, hidden_size=5, bias=False, reset_after=False, dtype="float64")),
    "layer-gru-f32": ("GRU", dict(input_size=3, hidden_size=4, num_layers=2, dropout=0.25)),
    "layer-rnn-relu-f32": ("RNN", dict(input_size=3, hidden_size=4, nonlinearity="relu")),
    "cell-lstm-peephole-f32": ("LSTMCell", dict(input_size=3, hidden_size=4, peephole="if")),
    "cell-lstm-coupled-f64": ("LSTMCell", dict(input_size=2, hidden_size=3, coupled=True,
                                               dtype="float64")),
    "cell-gru-f32": ("GRUCell", dict(input_size=3, hidden_size=4)),
    "cell-gru-before-f64": ("GRUCell", dict(input_size=2, hidden_size=3, reset_after=False,
                                            dtype="float64")),
    "cell-rnn-f32": ("RNNCell", dict(input_size=3, hidden_size=4, bias=False)),
}
VOCABULARY = ["<pad>", "a", "b", "c", "d", "\u00e9"]


def build(cls, kwargs):
    """The object a manifest entry describes, with default weights."""
    return getattr(fastrnn, cls)(**kwargs)


def params_of(obj):
    return obj.named_parameters() if isinstance(obj, fastrnn.SequenceModel) else obj.params


def dtype_of(obj):
    return obj.dtype if isinstance(obj, fastrnn.SequenceModel) else (
        obj._layer.dtype if isinstance(obj, fastrnn.nn.layers.RecurrentCell) else obj.dtype)


def inputs_for(cls, kwargs, obj, seed):
    """Deterministic inputs for ``obj``: {name: array}."""
    rng = np.random.default_rng(seed)
    dt = dtype_of(obj)
    B, T = 3, 5
    if cls == "SequenceModel":
        if kwargs.get("vocab_size"):
            x = rng.integers(0, kwargs["vocab_size"], (B, T))
        else:
            x = rng.standard_normal((B, T, kwargs["input_size"])).astype(dt)
        return {"x": x, "lengths": np.array([5, 2, 4])}
    H = kwargs["hidden_size"]
    if cls.endswith("Cell"):
        st = {"h": rng.standard_normal((B, H)).astype(dt)}
        if cls == "LSTMCell":
            st["c"] = rng.standard_normal((B, H)).astype(dt)
        return {"x": rng.standard_normal((B, kwargs["input_size"])).astype(dt), **st}
    LD = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    shape = (B, T, kwargs["input_size"]) if kwargs.get("batch_first") else \
        (T, B, kwargs["input_size"])
    st = {"h0": rng.standard_normal((LD, B, H)).astype(dt)}
    if cls == "LSTM":
        st["c0"] = rng.standard_normal((LD, B, H)).astype(dt)
    return {"x": rng.standard_normal(shape).astype(dt), "lengths": np.array([5, 2, 4]), **st}


def run(cls, obj, inp):
    """What ``obj`` computes from ``inp``: {name: array}."""
    if cls == "SequenceModel":
        return {"y": obj.predict(inp["x"], inp["lengths"])}
    if cls.endswith("Cell"):
        st = (inp["h"], inp["c"]) if "c" in inp else inp["h"]
        out = obj(inp["x"], st)
        return {"h": out[0], "c": out[1]} if isinstance(out, tuple) else {"h": out}
    st = (inp["h0"], inp["c0"]) if "c0" in inp else inp["h0"]
    out, st_n = obj(inp["x"], st, inp["lengths"])
    res = {"out": out}
    if isinstance(st_n, tuple):
        res.update(h_n=st_n[0], c_n=st_n[1])
    else:
        res["h_n"] = st_n
    return res


def machine():
    """Where outputs are computed: the kernels' vector path and the BLAS core (their last
    bits depend on both)."""
    from threadpoolctl import threadpool_info
    from fastrnn.kernels import _blas
    from fastrnn.kernels._threads import serial_blas
    with serial_blas:           # loads the BLAS the kernels call
        pass
    ours = {lib.filepath for lib in serial_blas._libs}
    cores = sorted({i.get("architecture") or "?" for i in threadpool_info()
                    if i["filepath"] in ours})
    return {"vector_path": _blas.vector_path(), "blas_core": ",".join(cores)}


def make(seed_base=0):
    """{name: (blob, arrays, manifest entry)} for every case."""
    out = {}
    for i, (name, (cls, kwargs)) in enumerate(CASES.items()):
        obj = build(cls, kwargs)
        rng = np.random.default_rng(1000 + i)
        for p in params_of(obj).values():
            p[...] = rng.uniform(-0.6, 0.6, p.shape)
        optimizer = None
        if name == "model-lstm-adam-f32":
            optimizer = fastrnn.nn.optim.Adam(obj.parameters(), lr=1e-2)
            for _ in range(2):
                for _, g in obj.parameters():
                    g[...] = rng.standard_normal(g.shape)
                optimizer.step()
        if cls == "SequenceModel" and kwargs.get("vocab_size"):
            obj.vocabulary = VOCABULARY
        if hasattr(obj, "eval"):
            obj.eval()
        blob = io.model_bytes(obj, optimizer)
        inp = inputs_for(cls, kwargs, obj, 2000 + i)
        arrays = {f"{name}::param::{k}": v.copy() for k, v in params_of(obj).items()}
        arrays.update({f"{name}::in::{k}": v for k, v in inp.items()})
        arrays.update({f"{name}::out::{k}": v for k, v in run(cls, obj, inp).items()})
        entry = {"class": cls, "kwargs": kwargs, "sha256": hashlib.sha256(blob).hexdigest()}
        if optimizer is not None:
            state = optimizer.state_dict()
            arrays.update({f"{name}::optimizer::{k}": v for k, v in state.items()
                           if isinstance(v, np.ndarray)})
            entry["optimizer"] = {"name": "Adam", "scalars": {
                k: v for k, v in state.items() if not isinstance(v, np.ndarray)}}
        if cls == "SequenceModel" and kwargs.get("vocab_size"):
            entry["vocabulary"] = VOCABULARY
        out[name] = (blob, arrays, entry)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="write nothing; compare with the committed files of this version")
    args = ap.parse_args(argv)
    folder = HERE / f"v{io.FORMAT_VERSION}"
    cases = make()
    if args.check:
        manifest = json.loads((folder / "manifest.json").read_text())
        changed = [n for n, (blob, _, _) in cases.items()
                   if manifest["files"].get(n, {}).get("sha256")
                   != hashlib.sha256(blob).hexdigest()]
        print("byte-identical" if not changed else f"differ: {changed}")
        return 1 if changed else 0
    if folder.exists():
        sys.exit(f"{folder.name} exists: golden files of a released version are never "
                 "rewritten (bump fastrnn.io.FORMAT_VERSION first, or use --check)")
    folder.mkdir()
    arrays = {}
    for name, (blob, arr, _) in cases.items():
        (folder / f"{name}.fastrnn").write_bytes(blob)
        arrays.update(arr)
    np.savez_compressed(folder / "expected.npz", **arrays)
    manifest = {
        "format_version": io.FORMAT_VERSION,
        "written_by": f"fastrnn {getattr(fastrnn, '__version__', '?')}, numpy {np.__version__}",
        "date": datetime.date.today().isoformat(),
        "outputs_computed_on": machine(),
        "files": {name: entry for name, (_, _, entry) in cases.items()},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True)
                                          + "\n")
    print(f"wrote {len(cases)} files to {folder.relative_to(HERE.parents[1])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
