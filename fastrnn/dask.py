"""Batch inference on Dask (issue 8): predict over a ``dask.array`` of padded sequences or
a ``dask.dataframe`` of time steps, on a ``dask.distributed`` cluster or Dask's local
schedulers.

Optional extra ``fastrnn[dask]``. fastrnn opens no sockets: Dask does the transport.

    from dask.distributed import Client, LocalCluster
    import fastrnn, fastrnn.dask
    client = Client(LocalCluster(n_workers=2, threads_per_worker=1))
    y = fastrnn.dask.predict(model, x, lengths)          # x (N, T, I) dask array, lazy
    y.compute()

How the model travels: once per call, as the bytes of a model file (fastrnn.io's safe
format: no code, validated on arrival), broadcast to every worker with
``client.scatter``; each worker process decodes it once and keeps it (a small cache keyed
by the bytes' SHA-256), so tasks find it ready. Each task runs the pure function
:func:`predict_padded` on its block.

Speed: Dask starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which makes glibc map
and page-fault every large buffer of every call anew. fastrnn keeps its inference buffers
across calls (fastrnn.functional.Workspace), which leaves about 5% of that cost here (it
was a third); unset the variable before the cluster starts for the rest, where the memory
trade-off allows::

    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})

Threads: Dask's workers already fill the cores (a LocalCluster starts one worker thread per
core), so each task runs fastrnn's kernels on ``n_threads=1`` by default; pass
``n_threads`` for a cluster with one single-threaded worker per machine.
"""
import hashlib
import threading
from collections import OrderedDict

import numpy as np

from . import io
from ._spec import positive_int

__all__ = ["predict", "predict_frame", "predict_padded", "decode_count"]

try:
    import dask
    import dask.array as da
except ImportError as exc:              # the extra is not installed
    raise ImportError("fastrnn.dask needs dask: pip install 'fastrnn[dask]'") from exc


def predict_padded(model, x, lengths=None, batch_size=256):
    """The pure batch function: padded ``x (B, T, I)`` (or token ids ``(B, T)``) plus
    ``lengths (B,)`` in, ``model.predict``'s outputs out (``(B, T, C)`` per-step,
    ``(B, C)`` per sequence). Reads nothing but its arguments and changes none of them.

    A row's result depends on its own data and, in the last bits, on the rows computed
    with it: BLAS may round a product differently for a different number of rows
    (measured with OpenBLAS: up to a few ulps when a batch has 8 rows or fewer, or only
    3 output columns). ``predict`` computes ``batch_size`` rows at a time from the first
    row, so two calls give the same bits when they cut the rows at the same multiples of
    ``batch_size``; :func:`predict` below relies on that."""
    return model.predict(x, lengths, batch_size=batch_size)


def _aligned_chunks(chunks, batch_size):
    """Row chunks whose boundaries fall on multiples of ``batch_size``, each about as large
    as the given chunks on average (at least one batch)."""
    n = sum(chunks)
    per = batch_size * max(1, round(n / max(1, len(chunks)) / batch_size))
    out = [per] * (n // per)
    if n % per:
        out.append(n % per)
    return tuple(out)


# ---- the model on a worker ------------------------------------------------------------

_CACHE_SIZE = 4
_models = OrderedDict()                 # (digest, n_threads) -> model, per process
_models_lock = threading.Lock()
_decodes = 0


def decode_count():
    """How many times this process has decoded a model's bytes (the test asks each worker
    through ``client.run``)."""
    return _decodes


def _worker_model(digest, blob, n_threads):
    """The model of ``blob``, decoded once per process and kept (the last few models)."""
    global _decodes
    key = (digest, n_threads)
    with _models_lock:
        model = _models.get(key)
        if model is None:
            model = io.load_bytes(blob, where="the model sent to this Dask worker")
            model.rnn.n_threads = n_threads
            _decodes += 1
            _models[key] = model
            while len(_models) > _CACHE_SIZE:
                _models.popitem(last=False)
        else:
            _models.move_to_end(key)
        return model


def _predict_block(x, lengths, digest, blob, n_threads, batch_size):
    return predict_padded(_worker_model(digest, blob, n_threads), x, lengths, batch_size)


def _client(client):
    """The given client, the current one (``None``), or no cluster (``False``: Dask's
    local schedulers)."""
    if client is False:
        return None
    if client is not None:
        return client
    try:
        from distributed import get_client
        return get_client()
    except (ImportError, ValueError):
        return None


def _checked_model(model):
    from .nn.models import SequenceModel
    if not isinstance(model, SequenceModel):
        raise TypeError(f"model must be a fastrnn.SequenceModel, got {type(model).__name__}")
    return model


def _shipped_model(model, client):
    """(digest, the bytes or a Future of them on every worker)."""
    blob = io.model_bytes(model)
    digest = hashlib.sha256(blob).hexdigest()
    if client is None:
        return digest, blob
    return digest, client.scatter(blob, broadcast=True, hash=False)


def _output_shape(model, rows, T):
    C = model.config["output_size"]
    return (rows, T, C) if model.output == "per_step" else (rows, C)


def predict(model, x, lengths=None, *, client=None, n_threads=1, batch_size=256):
    """``model.predict`` over a dask array, block by block along the rows: a lazy dask array
    of the outputs with ``x``'s row chunks (call ``.compute()``). The result has the bits
    of ``model.predict(x, lengths, batch_size=batch_size)`` in one process: when ``x``'s
    row chunks do not end at multiples of ``batch_size`` they are re-cut so that they do
    (a rechunk; chunks of k * batch_size rows avoid it).

    x          (N, T, I) float features in the model's dtype, or (N, T) token ids; chunked
               along N only (the other axes are joined into one chunk here)
    lengths    (N,) integers, a dask or numpy array (rechunked to x's rows), or None
    client     a ``distributed.Client``; by default the current one if there is one;
               ``False`` for Dask's local schedulers (no copies made)
    returns    (N, T, C) or (N, C) dask array in the model's dtype
    """
    model, n_threads = _checked_model(model), positive_int("n_threads", n_threads)
    if not isinstance(x, da.Array):
        raise TypeError(f"x must be a dask.array.Array, got {type(x).__name__} (use "
                        "model.predict for numpy arrays)")
    want = 2 if model.embedding is not None else 3
    if x.ndim != want:
        raise ValueError(f"x must be {want}-D ({'N, T' if want == 2 else 'N, T, I'}), got "
                         f"shape {x.shape}")
    if any(np.isnan(c) for c in x.shape):
        raise ValueError("x needs known chunk sizes (call x.compute_chunk_sizes())")
    if model.embedding is not None and x.dtype.kind not in "iu":
        raise TypeError(f"this model takes token ids: x must be integers, got {x.dtype}")
    if model.embedding is None and x.dtype != model.dtype:
        raise TypeError(f"x has dtype {x.dtype}, expected {model.dtype} (the model's dtype)")
    if model.embedding is None and x.shape[2] != model.config["input_size"]:
        raise ValueError(f"x has {x.shape[2]} features, expected "
                         f"input_size={model.config['input_size']}")
    batch_size = positive_int("batch_size", batch_size)
    given = x.chunks[0]
    x = x.rechunk({i: -1 for i in range(1, x.ndim)})
    # blocks cut where model.predict cuts its batches, so every row is computed with the
    # same neighbours as in one process: the same bits (see predict_padded)
    bounds = np.cumsum(given)[:-1]
    if (bounds % batch_size).any():
        x = x.rechunk({0: _aligned_chunks(given, batch_size)})
    blocks = x.to_delayed().ravel()
    if lengths is not None:
        if not isinstance(lengths, da.Array):
            lengths = np.asarray(lengths)
            if lengths.shape != (x.shape[0],):
                raise ValueError(f"lengths must be ({x.shape[0]},), got {lengths.shape}")
            lengths = da.from_array(lengths, chunks=(x.chunks[0],))
        if lengths.shape != (x.shape[0],):
            raise ValueError(f"lengths must be ({x.shape[0]},), got {lengths.shape} (a dask "
                             "array of unknown size: call lengths.compute_chunk_sizes())")
        if lengths.dtype.kind not in "iu":
            raise TypeError(f"lengths must be integers, got {lengths.dtype}")
        lblocks = lengths.rechunk((x.chunks[0],)).to_delayed().ravel()
    else:
        lblocks = [None] * len(blocks)
    digest, shipped = _shipped_model(model, _client(client))
    run = dask.delayed(_predict_block, pure=True)
    outs = [da.from_delayed(run(b, lb, digest, shipped, n_threads, batch_size),
                            shape=_output_shape(model, rows, x.shape[1]), dtype=model.dtype)
            for b, lb, rows in zip(blocks, lblocks, x.chunks[0])]
    if not outs:
        return da.zeros(_output_shape(model, 0, x.shape[1]), dtype=model.dtype)
    return da.concatenate(outs, axis=0).rechunk({0: given})    # the caller's row chunks


# ---- data frames: one row per time step ---------------------------------------------------

def _empty_frame(columns, sequence, sequence_dtype, dtype):
    """The output frame with no rows: Dask's meta, and an empty partition's result."""
    import pandas as pd
    kinds = {sequence: sequence_dtype, "step": "int64"}
    return pd.DataFrame({c: pd.Series(dtype=kinds.get(c, dtype)) for c in columns})


def _frame_part(part, sequence, time, features, digest, blob, n_threads, batch_size, per_step,
                columns):
    """One partition of time steps -> its predictions (pandas in, pandas out)."""
    import pandas as pd
    model = _worker_model(digest, blob, n_threads)
    if len(part) == 0:
        return _empty_frame(columns, sequence, part[sequence].dtype, model.dtype)
    part = part.sort_values([sequence, time], kind="stable") if time else \
        part.sort_values(sequence, kind="stable")
    keys = part[sequence].to_numpy()
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])   # sorted: groups are runs
    counts = np.diff(np.r_[starts, len(keys)])
    ids = keys[starts]
    values = part[features].to_numpy()
    if model.embedding is None:
        values = values.astype(model.dtype, copy=False)
    else:
        values = values[:, 0]
    x = np.zeros((len(ids), int(counts.max())) + values.shape[1:], values.dtype)
    for i, (s, c) in enumerate(zip(starts, counts)):
        x[i, :c] = values[s:s + c]
    y = predict_padded(model, x, counts, batch_size)
    C = y.shape[-1]
    names = [f"y{j}" for j in range(C)]
    if per_step:
        valid = np.arange(x.shape[1])[None, :] < counts[:, None]           # (B, T)
        out = pd.DataFrame(y[valid], columns=names)
        out.insert(0, sequence, np.repeat(ids, counts))
        out.insert(1, "step", np.concatenate([np.arange(c) for c in counts]))
    else:
        out = pd.DataFrame(y, columns=names)
        out.insert(0, sequence, ids)
    return out


def predict_frame(model, df, sequence, features, time=None, *, client=None, n_threads=1,
                  batch_size=256):
    """``model.predict`` over a dask DataFrame holding one time step per row (long format):
    the ``sequence`` column names the sequence a row belongs to, ``time`` (optional) orders
    its steps (else the frame's order), ``features`` are the input columns (one column of
    token ids for a token model). Rows of one sequence may lie in different partitions:
    the frame is shuffled on ``sequence`` first (Dask's shuffle), so that each sequence's
    steps meet in one partition.

    returns a lazy dask DataFrame: per sequence ``[sequence, y0, ..., y{C-1}]``; per-step
    tasks ``[sequence, step, y0, ...]`` with ``step`` counting from 0. Each partition
    batches the sequences the shuffle gave it, so the outputs equal ``model.predict`` on
    the padded sequences up to float rounding (not bit for bit: see predict_padded).
    """
    import dask.dataframe as dd
    model, n_threads = _checked_model(model), positive_int("n_threads", n_threads)
    if not isinstance(df, dd.DataFrame):
        raise TypeError(f"df must be a dask.dataframe.DataFrame, got {type(df).__name__}")
    features = [features] if isinstance(features, str) else list(features)
    want = 1 if model.embedding is not None else model.config["input_size"]
    if len(features) != want:
        raise ValueError(f"the model takes {want} feature column(s), got {len(features)}: "
                         f"{features}")
    missing = [c for c in [sequence, *features, *([time] if time else [])]
               if c not in df.columns]
    if missing:
        raise ValueError(f"df has no column(s) {missing}; it has {list(df.columns)}")
    df = df[[sequence, *([time] if time else []), *features]]
    df = df.shuffle(on=sequence)            # every sequence's steps in one partition
    per_step = model.output == "per_step"
    C = model.config["output_size"]
    columns = [sequence, *(["step"] if per_step else []), *[f"y{j}" for j in range(C)]]
    meta = _empty_frame(columns, sequence, df[sequence].dtype, model.dtype)
    digest, shipped = _shipped_model(model, _client(client))
    run = dask.delayed(_frame_part, pure=True)
    parts = [run(p, sequence, time, features, digest, shipped, n_threads, batch_size,
                 per_step, columns) for p in df.to_delayed()]
    return dd.from_delayed(parts, meta=meta, verify_meta=False)
