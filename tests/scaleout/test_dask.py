"""Batch inference on Dask (issue 8): a 2-worker LocalCluster on loopback predicting 1,000
ragged sequences in several partitions gives exactly (bit for bit) what one process's
``model.predict`` gives, and each worker decodes the model once. Needs the ``dask`` extra."""
import os

import numpy as np
import pytest

import fastrnn

dask = pytest.importorskip("dask", reason="the dask extra is not installed; "
                                          "pip install 'fastrnn[dask]'")
distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")
import dask.array as da  # noqa: E402

import fastrnn.dask as frd  # noqa: E402


def _data(n=1000, T=30, I=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, T, I)).astype(np.float32)
    lengths = rng.integers(0, T + 1, n)             # length-0 rows included
    return x, lengths


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster
    # a LocalCluster's nannies copy their worker environment (OMP_NUM_THREADS=1,
    # MALLOC_TRIM_THRESHOLD_, ...) into this process's os.environ; later tests' subprocesses
    # must not inherit it
    saved = dict(os.environ)
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address=None, silence_logs=40)
    try:
        with cluster, Client(cluster) as c:
            yield c
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _models():
    return [fastrnn.SequenceModel("lstm", input_size=5, hidden_size=32, output_size=3,
                                  task="sequence_classification", seed=1),
            fastrnn.SequenceModel("gru", input_size=5, hidden_size=24, output_size=2,
                                  task="regression", num_layers=2, seed=2),
            fastrnn.SequenceModel("lstm", input_size=5, hidden_size=16, output_size=4,
                                  task="sequence_regression", bidirectional=True, seed=3)]


@pytest.mark.parametrize("index", range(3))
def test_cluster_predict_is_bit_identical_to_one_process(client, index):
    model = _models()[index]
    x, lengths = _data()
    want = model.predict(x, lengths)
    before = client.run(frd.decode_count)
    dx = da.from_array(x, chunks=(137, 30, 5))          # 8 partitions, uneven
    got = frd.predict(model, dx, lengths, client=client)
    assert got.shape == want.shape and got.dtype == want.dtype
    got = got.compute()
    assert got.tobytes() == want.tobytes()
    # once per worker, not per partition (both workers got partitions)
    after = client.run(frd.decode_count)
    assert len(after) == 2
    assert all(after[w] - before[w] == 1 for w in after), (before, after)
    # the same model again: no decoding at all
    again = frd.predict(model, dx, da.from_array(lengths, chunks=250), client=client)
    assert again.compute().tobytes() == want.tobytes()       # lengths in other chunks
    assert client.run(frd.decode_count) == after


def test_token_model_and_local_scheduler():
    """Token-id inputs, and Dask's threaded scheduler without a cluster (no copies)."""
    model = fastrnn.SequenceModel("gru", vocab_size=20, hidden_size=16, task="next_token",
                                  seed=4)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 20, (300, 12))
    lengths = rng.integers(1, 13, 300)
    want = model.predict(ids, lengths)
    got = frd.predict(model, da.from_array(ids, chunks=(70, 12)), lengths,
                      client=False).compute(scheduler="threads")
    assert got.tobytes() == want.tobytes()


def test_dataframe_of_time_steps(client):
    """Long format (one row per time step, sequences spread over partitions and shuffled):
    the per-sequence outputs equal model.predict on the padded arrays."""
    import pandas as pd
    import dask.dataframe as dd
    model = _models()[0]
    x, lengths = _data(n=200, T=10)
    lengths = np.maximum(lengths, 1)
    rows = [(f"s{i:03d}", t, *x[i, t]) for i in range(len(x)) for t in range(lengths[i])]
    frame = pd.DataFrame(rows, columns=["seq", "t", *[f"f{j}" for j in range(5)]])
    frame = frame.sample(frac=1.0, random_state=0)      # steps out of order, anywhere
    df = dd.from_pandas(frame, npartitions=7)
    out = frd.predict_frame(model, df, sequence="seq", time="t",
                            features=[f"f{j}" for j in range(5)], client=client).compute()
    out = out.set_index("seq").sort_index()
    want = model.predict(x, lengths)
    assert list(out.index) == [f"s{i:03d}" for i in range(200)]
    # each partition batches its own sequences (after Dask's shuffle): float rounding only
    np.testing.assert_allclose(out[["y0", "y1", "y2"]].to_numpy(), want, rtol=1e-5,
                               atol=1e-6)


def test_predict_padded_cuts_at_batch_multiples_give_the_same_bits():
    """The pure batch function: pieces cut at multiples of batch_size give predict's bits;
    other cuts agree to float rounding (BLAS may round a product of a few rows
    differently)."""
    model = _models()[0]
    x, lengths = _data(n=200, T=9)
    whole = frd.predict_padded(model, x, lengths, batch_size=32)
    for cut in (32, 64, 160):
        parts = np.concatenate([frd.predict_padded(model, x[:cut], lengths[:cut], 32),
                                frd.predict_padded(model, x[cut:], lengths[cut:], 32)])
        assert parts.tobytes() == whole.tobytes(), cut
    for cut in (1, 7, 33, 199):
        parts = np.concatenate([frd.predict_padded(model, x[:cut], lengths[:cut], 32),
                                frd.predict_padded(model, x[cut:], lengths[cut:], 32)])
        np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-6)


def test_chunks_are_recut_at_batch_multiples_and_given_back():
    model = _models()[1]
    x, lengths = _data(n=300, T=8)
    dx = da.from_array(x, chunks=(45, 8, 5))
    got = frd.predict(model, dx, lengths, batch_size=64, client=False)
    assert got.chunks[0] == dx.chunks[0]                 # the caller's row chunks back
    want = model.predict(x, lengths, batch_size=64)
    assert got.compute(scheduler="threads").tobytes() == want.tobytes()


def test_bad_arguments():
    model = _models()[0]
    x, lengths = _data(n=10)
    with pytest.raises(TypeError, match="dask.array"):
        frd.predict(model, x)
    with pytest.raises(ValueError, match="3-D"):
        frd.predict(model, da.zeros((10, 5)))
    with pytest.raises(ValueError, match="lengths must be"):
        frd.predict(model, da.from_array(x), np.zeros(3, int))
    with pytest.raises(ValueError, match="n_threads"):
        frd.predict(model, da.from_array(x), n_threads=0)
    with pytest.raises(TypeError, match="SequenceModel"):
        frd.predict(object(), da.from_array(x))
    with pytest.raises(TypeError, match="dtype float64"):            # found now, not later
        frd.predict(model, da.from_array(x.astype(np.float64)))
    with pytest.raises(ValueError, match="features"):
        frd.predict(model, da.zeros((10, 30, 4), dtype=np.float32))
    with pytest.raises(TypeError, match="lengths must be integers"):
        frd.predict(model, da.from_array(x), lengths.astype(np.float64))


def test_the_readme_recipe_runs_as_a_script(tmp_path):
    """The README's Dask example saved as a file and run by python: Dask starts its workers
    by re-importing the main script, so the example must work as one."""
    import subprocess
    import sys
    from test_readme import DASK_BLOCKS
    assert len(DASK_BLOCKS) == 1
    script = tmp_path / "predict.py"
    script.write_text(DASK_BLOCKS[0] + "\n    print(y.shape)\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "(1000, 3)"


def test_an_empty_partition_has_the_outputs_dtypes():
    """A partition the shuffle left empty gives Dask's meta: the sequence column in its own
    dtype, step as int64, outputs in the model's dtype."""
    import pandas as pd
    model = fastrnn.SequenceModel("gru", input_size=2, hidden_size=4, output_size=2,
                                  task="regression", seed=0)
    part = pd.DataFrame({"yid": pd.Series(dtype="int32"), "t": pd.Series(dtype="int64"),
                         "a": pd.Series(dtype="float32"), "b": pd.Series(dtype="float32")})
    columns = ["yid", "step", "y0", "y1"]
    out = frd._frame_part(part, "yid", "t", ["a", "b"], "d", fastrnn.io.model_bytes(model), 1,
                          256, True, columns)
    assert list(out.columns) == columns and len(out) == 0
    assert [str(t) for t in out.dtypes] == ["int32", "int64", "float32", "float32"]
