"""Golden model files: every released format version keeps loading, to the same weights bit
for bit and to the same predictions.

``tests/golden/v<N>/`` holds the files of format version N (written once by
``tests/golden/make_golden.py`` when that version was released, never rewritten), their
weights and inputs and outputs in ``expected.npz``, and in ``manifest.json`` each file's
class and constructor arguments. For every file:

* the file is the committed one (sha256), and it loads, as the class the manifest names;
* its weights equal ``expected.npz``'s bit for bit (the format's meaning is unchanged);
* its outputs equal, bit for bit, those of the same object built here from the manifest's
  arguments with those weights (loading adds nothing and loses nothing), and equal the
  outputs stored when the file was written: bit for bit on a machine with the same vector
  path and BLAS core as the one that wrote them, within float rounding elsewhere (the last
  bits of float math depend on the CPU);
* the optimizer state and vocabulary saved with a model come back.
"""
import hashlib
import json
import pathlib
import sys

import numpy as np
import pytest

import fastrnn

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "golden"
sys.path.insert(0, str(GOLDEN))
import make_golden  # noqa: E402

VERSIONS = sorted(p for p in GOLDEN.iterdir() if p.is_dir() and p.name.startswith("v"))
CASES = [(v, name) for v in VERSIONS
         for name in json.loads((v / "manifest.json").read_text())["files"]]
TOLERANCE = {np.dtype(np.float32): dict(rtol=1e-5, atol=1e-6),
             np.dtype(np.float64): dict(rtol=1e-12, atol=1e-13)}


def _expected(version, name, part):
    with np.load(version / "expected.npz", allow_pickle=False) as z:
        prefix = f"{name}::{part}::"
        return {k[len(prefix):]: z[k] for k in z.files if k.startswith(prefix)}


def test_every_format_version_has_golden_files():
    from fastrnn.io import FORMAT_VERSION
    assert [v.name for v in VERSIONS] == [f"v{n}" for n in range(1, FORMAT_VERSION + 1)], \
        "run tests/golden/make_golden.py for the new format version"
    kinds = {e["class"] for v in VERSIONS
             for e in json.loads((v / "manifest.json").read_text())["files"].values()}
    assert kinds >= {"SequenceModel", "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"}


@pytest.mark.parametrize("version,name", CASES, ids=lambda v: getattr(v, "name", v))
def test_golden_file_loads_to_the_same_weights_and_predictions(version, name):
    manifest = json.loads((version / "manifest.json").read_text())
    entry = manifest["files"][name]
    path = version / f"{name}.fastrnn"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], \
        "a committed golden file changed; golden files are never rewritten"
    loaded, opt_state = fastrnn.load(path, with_optimizer=True)
    assert type(loaded).__name__ == entry["class"]

    params = _expected(version, name, "param")
    got = make_golden.params_of(loaded)
    assert set(got) == set(params)
    for k, want in params.items():
        assert got[k].dtype == want.dtype and got[k].tobytes() == want.tobytes(), k

    fresh = make_golden.build(entry["class"], entry["kwargs"])
    for k, p in make_golden.params_of(fresh).items():
        p[...] = params[k]
    if hasattr(fresh, "eval"):
        fresh.eval()
    inputs = _expected(version, name, "in")
    outs = make_golden.run(entry["class"], loaded, inputs)
    ref = make_golden.run(entry["class"], fresh, inputs)
    stored = _expected(version, name, "out")
    assert set(outs) == set(ref) == set(stored)
    same_machine = make_golden.machine() == manifest["outputs_computed_on"]
    for k in outs:
        assert outs[k].tobytes() == ref[k].tobytes(), \
            f"{k}: loading changed the outputs, max diff {np.abs(outs[k] - ref[k]).max()}"
        assert outs[k].dtype == stored[k].dtype and outs[k].shape == stored[k].shape
        if same_machine:
            assert outs[k].tobytes() == stored[k].tobytes(), \
                f"{k}: first {outs[k].ravel()[:4]} vs stored {stored[k].ravel()[:4]}, " \
                f"max diff {np.abs(outs[k] - stored[k]).max()}"
        else:
            np.testing.assert_allclose(outs[k], stored[k], **TOLERANCE[outs[k].dtype])

    if "optimizer" in entry:
        assert opt_state["name"] == entry["optimizer"]["name"]
        for k, v in entry["optimizer"]["scalars"].items():
            assert opt_state["state"][k] == v, k
        for k, v in _expected(version, name, "optimizer").items():
            assert opt_state["state"][k].tobytes() == v.tobytes(), k
        opt = fastrnn.nn.optim.Adam(loaded.parameters(), lr=1.0)
        opt.load_state_dict(opt_state["state"])          # resumable
    else:
        assert opt_state is None
    assert getattr(loaded, "vocabulary", None) == entry.get("vocabulary")
    if entry["class"] == "SequenceModel":         # files from before text_level: None
        assert loaded.text_level is None


def test_current_writer_reproduces_the_current_version_byte_for_byte():
    """The writer has not changed what it writes for this version (if this fails on
    purpose, the format changed: bump FORMAT_VERSION and add a golden folder)."""
    from fastrnn.io import FORMAT_VERSION
    manifest = json.loads((GOLDEN / f"v{FORMAT_VERSION}" / "manifest.json").read_text())
    for name, (blob, _, entry) in make_golden.make().items():
        assert hashlib.sha256(blob).hexdigest() == manifest["files"][name]["sha256"], name
