"""Model files: the safetensors layout, written and checked here, never pickle.

A file is ``u64 little-endian header length N | N bytes of JSON header | tensor bytes``,
the safetensors layout (readable by the ``safetensors`` package and PyTorch users' tools;
the tests check that). fastrnn writes it itself so the core needs no extra dependency, and
reads it itself so that every byte is checked before it is trusted:

* header length bounded (1 MiB) and inside the file; JSON only, no names resolved, no paths;
* ``__metadata__``: ``fastrnn_format`` (this module reads version 1), ``architecture``
  (a JSON object whose keys and values come from closed sets), ``sha256`` of that metadata
  and the tensor bytes, optional ``optimizer`` (name and scalars) and ``vocabulary`` (a
  JSON list of vocab_size strings);
* tensors: dtype from {F32, F64}, shapes of non-negative ints, offsets in order, without
  gaps or overlaps, covering the data exactly (no trailing bytes), sizes matching
  shape x itemsize; the names and shapes must be exactly those of the architecture;
  values finite.

Anything wrong raises :class:`ModelFileError` (a ValueError) saying what and where.
:func:`save` writes atomically: a temporary file in the same folder, fsync, ``os.replace``,
fsync of the folder, so a crash leaves the previous file or the new one, never a mix.
"""
import hashlib
import json
import math
import os
import struct

import numpy as np

FORMAT_VERSION = 1
MAX_HEADER = 1 << 20
_DTYPES = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8")}
_NAMES = {v: k for k, v in _DTYPES.items()}

# architecture: key -> check
_ARCH = {
    "cell": lambda v: v in ("rnn", "lstm", "gru"),
    "task": lambda v: v in ("next_token", "per_step_classification", "sequence_classification",
                            "multilabel", "regression", "sequence_regression"),
    "dtype": lambda v: v in ("float32", "float64"),
    "input_size": lambda v: v is None or _small_int(v),
    "vocab_size": lambda v: v is None or _small_int(v),
    "embedding_dim": lambda v: v is None or _small_int(v),
    "hidden_size": lambda v: _small_int(v),
    "output_size": lambda v: _small_int(v),
    "num_layers": lambda v: _small_int(v, 64),
    "bidirectional": lambda v: isinstance(v, bool),
    "dropout": lambda v: isinstance(v, (int, float)) and 0 <= v < 1,
    "nonlinearity": lambda v: v in ("tanh", "relu"),
    "peephole": lambda v: isinstance(v, bool) or v in ("", "i", "f", "o", "if", "io", "fo", "ifo"),
    "coupled": lambda v: isinstance(v, bool),
    "reset_after": lambda v: isinstance(v, bool),
}
_REQUIRED = ("cell", "task", "dtype", "hidden_size", "output_size", "num_layers")
_OPTIMIZERS = ("SGD", "Adam", "AdamW", "Adagrad", "RMSprop")


def _small_int(v, limit=1 << 24):
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= limit


class ModelFileError(ValueError):
    """A model file that fastrnn will not load, with the reason."""


def _foreign(head):
    """Name a known foreign format from the first bytes, or None."""
    if head[:2] == b"\x80\x02" or head[:1] == b"\x80":
        return "a Python pickle (never loaded: it could run code)"
    if head[:4] == b"PK\x03\x04":
        return "a zip archive (a PyTorch .pt/.pth file? convert it with fastrnn's importers)"
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        return "an HDF5 file (Keras .h5?)"
    if head[:2] == b"\x08\x07" or head[:1] == b"\x08":
        return "possibly an ONNX protobuf"
    if head[:3] == b"\x93NU" or head[:6] == b"\x93NUMPY":
        return "a numpy .npy file"
    return None


def model_bytes(model, optimizer=None):
    """The file's bytes for ``model`` (and optionally its optimizer's state)."""
    tensors = {name: np.ascontiguousarray(a) for name, a in model.named_parameters().items()}
    meta = {"fastrnn_format": str(FORMAT_VERSION),
            "architecture": json.dumps(model.config, sort_keys=True)}
    if model.vocabulary is not None:
        meta["vocabulary"] = json.dumps(list(model.vocabulary))
    if optimizer is not None:
        state = optimizer.state_dict()
        scalars = {}
        for k, v in state.items():
            if isinstance(v, np.ndarray):
                tensors[f"optimizer.{k}"] = np.ascontiguousarray(v, dtype=model.dtype) \
                    if v.dtype.kind == "f" else None
                if tensors[f"optimizer.{k}"] is None:
                    raise TypeError(f"optimizer state {k!r} is not a float array")
            else:
                scalars[k] = v
        meta["optimizer"] = json.dumps({"name": type(optimizer).__name__, "scalars": scalars},
                                       sort_keys=True, default=float)
    header, offset, chunks = {}, 0, []
    for name in sorted(tensors):
        a = tensors[name]
        raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _NAMES[a.dtype.newbyteorder("<")], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    data = b"".join(chunks)
    meta["sha256"] = _checksum(meta, data)
    header["__metadata__"] = meta
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)             # tensors start 8-byte aligned
    return struct.pack("<Q", len(text)) + text + data


def save(model, path, optimizer=None):
    """Write ``model`` (and optimizer state) to ``path`` atomically."""
    blob = model_bytes(model, optimizer)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    # O_EXCL with mode 0o666: the kernel applies the umask, as for any new file (mkstemp
    # would make it 0600; changing the umask to read it races with other threads)
    for _ in range(100):
        tmp = os.path.join(folder, f".fastrnn-{os.getpid()}-{os.urandom(6).hex()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)
            break
        except FileExistsError:
            continue
    else:
        raise OSError(f"could not create a temporary file in {folder}")
    try:
        try:                                      # a replaced file keeps its permissions
            os.fchmod(fd, os.stat(path).st_mode & 0o777)
        except (FileNotFoundError, AttributeError):
            pass
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:                                          # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass                                      # platforms that cannot fsync a folder


def parse(blob, where="model file"):
    """Validate ``blob`` and return ``(architecture, tensors, optimizer_meta)``."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError("expected bytes")
    blob = bytes(blob)
    def bad(msg):
        return ModelFileError(f"{where}: {msg}")
    if len(blob) < 8:
        foreign = _foreign(blob)
        raise bad(f"{len(blob)} bytes is too short for a fastrnn file"
                  + (f"; it looks like {foreign}" if foreign else ""))
    (n,) = struct.unpack("<Q", blob[:8])
    if n > MAX_HEADER or n > len(blob) - 8 or n < 2:
        foreign = _foreign(blob[:16])
        raise bad(f"header length {n} does not fit (file is {len(blob)} bytes)"
                  + (f"; it looks like {foreign}" if foreign else "; not a fastrnn file"))
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad(f"header is not valid JSON ({exc})") from None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        raise bad("header has no __metadata__ object")
    meta = header.pop("__metadata__")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise bad("metadata values must be strings")
    version = meta.get("fastrnn_format")
    if version is None:
        raise bad("no fastrnn_format in the metadata: a safetensors file, but not fastrnn's")
    if version != str(FORMAT_VERSION):
        raise bad(f"format version {version!r}; this fastrnn reads version {FORMAT_VERSION} "
                  "(upgrade fastrnn to read newer files)")
    arch = _architecture(meta.get("architecture"), bad)
    data = blob[8 + n:]
    if meta.get("sha256") != _checksum(meta, data):
        raise bad("checksum mismatch: the tensor bytes or the metadata are corrupted or "
                  "truncated")
    tensors, end = {}, 0
    entries = sorted(header.items(), key=lambda kv: _offsets(kv, bad)[0])
    for name, info in entries:
        begin, stop = _offsets((name, info), bad)
        dtype = _DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise bad(f"tensor {name!r}: dtype {info.get('dtype')!r} is not one of {sorted(_DTYPES)}")
        shape = info.get("shape")
        if not isinstance(shape, list) or len(shape) > 4 or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 31 for d in shape):
            raise bad(f"tensor {name!r}: bad shape {shape!r}")
        if begin != end:
            raise bad(f"tensor {name!r}: starts at {begin}, expected {end} (gap or overlap)")
        count = math.prod(shape)                   # Python ints: no overflow
        if stop - begin != count * dtype.itemsize:
            raise bad(f"tensor {name!r}: {stop - begin} bytes for shape {shape} {info['dtype']}")
        if stop > len(data):
            raise bad(f"tensor {name!r}: ends at {stop}, past the {len(data)} bytes of data")
        a = np.frombuffer(data, dtype, count=count, offset=begin)
        tensors[name] = a.reshape(shape).astype(dtype.newbyteorder("="))
        end = stop
    if end != len(data):
        raise bad(f"{len(data) - end} trailing bytes after the last tensor")
    vocabulary = None
    if "vocabulary" in meta:
        try:
            vocabulary = json.loads(meta["vocabulary"])
        except ValueError:
            raise bad("vocabulary metadata is not JSON") from None
        if not isinstance(vocabulary, list) or len(vocabulary) != arch.get("vocab_size") or \
                not all(isinstance(t, str) and len(t) < 1024 for t in vocabulary):
            raise bad("vocabulary must be a list of vocab_size strings")
    arch = dict(arch, _vocabulary=vocabulary)
    optimizer = None
    if "optimizer" in meta:
        try:
            optimizer = json.loads(meta["optimizer"])
        except ValueError:
            raise bad("optimizer metadata is not JSON") from None
        if not isinstance(optimizer, dict) or optimizer.get("name") not in _OPTIMIZERS \
                or not isinstance(optimizer.get("scalars"), dict):
            raise bad("optimizer metadata must name one of " + ", ".join(_OPTIMIZERS))
    return arch, tensors, optimizer


def _checksum(meta, data):
    """sha256 over the metadata that shapes the model and the tensor bytes, so a changed
    hyper-parameter is caught as surely as a changed weight."""
    h = hashlib.sha256()
    for key in ("fastrnn_format", "architecture", "optimizer", "vocabulary"):
        h.update(key.encode() + b"=" + meta.get(key, "").encode() + b"\n")
    h.update(data)
    return h.hexdigest()


def _offsets(kv, bad):
    name, info = kv
    if not isinstance(info, dict):
        raise bad(f"entry {name!r} is not an object")
    off = info.get("data_offsets")
    if not (isinstance(off, list) and len(off) == 2 and all(
            isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in off)
            and off[0] <= off[1]):
        raise bad(f"tensor {name!r}: bad data_offsets {off!r}")
    return off


def _architecture(text, bad):
    try:
        arch = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        arch = None
    if not isinstance(arch, dict):
        raise bad("architecture metadata is missing or not a JSON object")
    for k, v in arch.items():
        if k not in _ARCH:
            raise bad(f"architecture has an unknown key {k!r}")
        if not _ARCH[k](v):
            raise bad(f"architecture {k}={v!r} is not allowed")
    missing = [k for k in _REQUIRED if k not in arch]
    if missing:
        raise bad(f"architecture lacks {missing}")
    if (arch.get("input_size") is None) == (arch.get("vocab_size") is None):
        raise bad("architecture needs exactly one of input_size and vocab_size")
    return arch


def load_bytes(blob, where="model bytes", with_optimizer=False):
    """A model from validated bytes (see :func:`load`)."""
    from .models import SequenceModel
    arch, tensors, optimizer = parse(blob, where)
    vocabulary = arch.pop("_vocabulary")
    model = SequenceModel(**arch)
    model.vocabulary = vocabulary
    expected = model.named_parameters()
    weights = {k: v for k, v in tensors.items() if not k.startswith("optimizer.")}
    if set(weights) != set(expected):
        raise ModelFileError(f"{where}: tensors {sorted(set(weights) ^ set(expected))} do not "
                             "match the architecture")
    for name, a in expected.items():
        w = weights[name]
        if w.shape != a.shape or w.dtype != a.dtype:
            raise ModelFileError(f"{where}: {name} is {w.dtype}{list(w.shape)}, the architecture "
                                 f"needs {a.dtype}{list(a.shape)}")
        if not np.isfinite(w).all():
            raise ModelFileError(f"{where}: {name} holds NaN or infinity")
        a[...] = w
    model.eval()
    if not with_optimizer:
        return model
    state = None
    if optimizer is not None:
        state = dict(optimizer["scalars"])
        state.update({k[len("optimizer."):]: v for k, v in tensors.items()
                      if k.startswith("optimizer.")})
        state = {"name": optimizer["name"], "state": state}
    return model, state


def load(path, with_optimizer=False):
    """Load a model saved by :meth:`SequenceModel.save`. Every byte is validated first;
    anything wrong raises :class:`ModelFileError`. ``with_optimizer=True`` returns
    ``(model, {"name": ..., "state": ...} or None)`` for resuming training."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        blob = f.read(size + 1)
    if len(blob) != size:
        raise ModelFileError(f"{path}: the file changed while it was read")
    return load_bytes(blob, path, with_optimizer)
