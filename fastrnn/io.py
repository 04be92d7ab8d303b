"""Model files: the safetensors layout, written and checked here, never pickle.

A file is ``u64 little-endian header length N | N bytes of JSON header | tensor bytes``,
the safetensors layout (readable by the ``safetensors`` package and PyTorch users' tools;
the tests check that). fastrnn writes it itself so the core needs no extra dependency, and
reads it itself so that every byte is checked before it is trusted:

* header length bounded (1 MiB) and inside the file; JSON only, no names resolved, no paths;
* ``__metadata__``: ``fastrnn_format`` (this module writes version 2 and reads 1 and 2),
  ``gate_order`` (version 2: how the weight matrices stack the gate blocks, e.g. ``"ifgo"``;
  version 1 files hold PyTorch's order, the one fastrnn has always used), ``architecture``
  (a JSON object whose keys and values come from closed sets; ``"kind"`` says what the file
  holds: a :class:`SequenceModel` (no key, or ``"model"``), a bare recurrent stack
  (``"layer"``: ``fastrnn.RNN``/``LSTM``/``GRU``, tensors under their PyTorch names) or a
  cell (``"cell"``); each kind has its own keys), ``sha256`` of that metadata
  and the tensor bytes, optional ``optimizer`` (name and scalars) and ``vocabulary`` (a
  JSON list of vocab_size strings) and ``text_level`` (how a language model's text was cut
  into tokens: ``"char"`` or ``"word"``; only when set, covered by the checksum then);
* tensors: dtype from {F32, F64}, shapes of non-negative ints, stored contiguously in name
  order (the order fastrnn and the safetensors package write; the checksum covers the
  bytes, not the index, so the index has one allowed layout and moved offsets are refused),
  covering the data exactly (no trailing bytes), sizes matching shape x itemsize; the
  architecture's parameter count no larger than the tensors present (checked before
  anything is built, so a few bytes cannot ask for gigabytes); the names, shapes and dtype
  must be exactly those of the architecture; values finite.

Anything wrong raises :class:`ModelFileError` (a ValueError) saying what and where; no
other exception escapes :func:`parse` or :func:`load_bytes` for any bytes (fuzzed:
``tests/fuzz_load.py``). The memory a load takes is a small multiple of the file's size.
The checks run in the order of the file: the 8-byte length and the header first, the index
checked against the file's size and the architecture's parameter count bounded both ways,
all before a tensor byte is read; :func:`load` then reads exactly the bytes that index
covers, so a file is never read past what its header validated. A file that is not
fastrnn's is named by what it looks like (text, a zip or PyTorch file, ONNX, a foreign
safetensors file, ...) with the function that reads it.

:func:`save` writes with :func:`atomic_write`, which every fastrnn writer uses: a temporary
file in the same folder, fsync, ``os.replace``, fsync of the folder, so a crash leaves the
previous file or the new one, never a mix; folders, FIFOs, devices and sockets at the path
are refused, a symlink's target is replaced (the link stays), the umask is honoured. On
Linux the temporary is anonymous (``O_TMPFILE``) until its data is on disk, so a process
killed while writing leaves nothing behind; it gets a name, ``.fastrnn-<pid>-<12 hex>.tmp``,
only for the instant before the rename (and everywhere else for the whole write). A failed
write removes its temporary. A killed one cannot: the first write of a later process into
that folder removes such files once they are an hour old and their process is gone (only
regular files of this user with exactly that name; :func:`remove_stale_temporaries`).
"""
import errno
import hashlib
import json
import math
import os
import re
import stat
import struct
import time

import numpy as np

from ._spec import GATE_ORDER, OPTIMIZERS, gate_count

FORMAT_VERSION = 2
READABLE_VERSIONS = ("1", "2")    # 1: before gate_order was recorded
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
    "kind": lambda v: v in ("model", "layer", "cell"),
    "bias": lambda v: isinstance(v, bool),
    "batch_first": lambda v: isinstance(v, bool),
}
_VARIANT_KEYS = {"nonlinearity": "rnn", "peephole": "lstm", "coupled": "lstm",
                 "reset_after": "gru"}
_CELL_KEYS = ("kind", "cell", "dtype", "input_size", "hidden_size", "bias")
# kind -> (keys allowed, keys required)
_KINDS = {
    "model": (("kind", "cell", "task", "dtype", "input_size", "vocab_size", "embedding_dim",
               "hidden_size", "output_size", "num_layers", "bidirectional", "dropout")
              + tuple(_VARIANT_KEYS),
              ("cell", "task", "dtype", "hidden_size", "output_size", "num_layers")),
    "layer": (_CELL_KEYS + ("num_layers", "batch_first", "dropout", "bidirectional")
              + tuple(_VARIANT_KEYS),
              _CELL_KEYS + ("num_layers", "batch_first", "dropout", "bidirectional")),
    "cell": (_CELL_KEYS + tuple(_VARIANT_KEYS), _CELL_KEYS),
}
TEXT_LEVELS = ("char", "word")      # SequenceModel.text_level, when not None
MAX_TOKEN_CHARS = 1023              # the longest vocabulary entry a file may hold


def is_vocabulary(vocabulary, size):
    """Whether ``vocabulary`` is what a model file (and fastrnn's ONNX metadata) may hold
    for an embedding of ``size`` rows: a list of ``size`` strings of at most
    MAX_TOKEN_CHARS characters each."""
    return isinstance(vocabulary, list) and size is not None and len(vocabulary) == size \
        and all(isinstance(t, str) and len(t) <= MAX_TOKEN_CHARS for t in vocabulary)

# temporaries of save(): the pattern that stale-file cleaning matches, and their age limit
_TMP_PATTERN = re.compile(r"\.fastrnn-[0-9]{1,10}-[0-9a-f]{12}\.tmp")
STALE_TMP_SECONDS = 3600
_cleaned_folders = set()            # folders this process has cleaned (once each)


def _small_int(v, limit=1 << 24):
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= limit


class ModelFileError(ValueError):
    """A model file that fastrnn will not load, with the reason (a ValueError); the
    message names the file, or ``model bytes`` for :func:`load_bytes`.

        >>> import fastrnn
        >>> try:
        ...     fastrnn.io.load_bytes(b"not a model")
        ... except fastrnn.ModelFileError as exc:
        ...     print(exc)
        model bytes: not a fastrnn or safetensors file: it looks like a text file
    """


def foreign_format(head):
    """What a file that is not fastrnn's looks like, from its first bytes (up to
    :data:`HEAD_BYTES`), and which function reads it; None when unknown."""
    if head[:2] == b"\x80\x02" or head[:1] == b"\x80":
        return "a Python pickle (never loaded: it could run code)"
    if head[:4] == b"PK\x03\x04":
        return ("a zip archive (a PyTorch .pt/.pth file? read its state dict with "
                "fastrnn.from_torch(torch.load(path, weights_only=True)) or convert it "
                "with `fastrnn convert`)")
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        return "an HDF5 file (a Keras .h5? import its layer with fastrnn.from_keras)"
    if head[:1] == b"\x08":                      # field 1 of an ONNX ModelProto: ir_version
        return "an ONNX model (read it with fastrnn.from_onnx)"
    if head[:6] == b"\x93NUMPY":
        return "a numpy .npy file (data for a model, not a model)"
    if head[:2] == b"\x1f\x8b":
        return "a gzip-compressed file (decompress it first)"
    if head.lstrip()[:1] in (b"{", b"["):
        return "a JSON text file"
    if _looks_like_text(head):
        return "a text file"
    return None


HEAD_BYTES = 512            # what foreign_format looks at


def _looks_like_text(head):
    """UTF-8 text without control characters (the head may cut a character in two)."""
    for cut in range(4):
        try:
            text = head[:len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return False
    return bool(text) and all(c.isprintable() or c in "\t\n\r\f" for c in text)


def _describe(obj):
    """(architecture, {name: array}, dtype) of a SequenceModel, a layer stack or a cell."""
    from .nn.layers import RecurrentCell, RecurrentLayer
    from .nn.models import SequenceModel
    if isinstance(obj, SequenceModel):
        return obj.config, obj.named_parameters(), obj.dtype
    if not isinstance(obj, (RecurrentLayer, RecurrentCell)):
        raise TypeError("fastrnn files hold a SequenceModel, an RNN/LSTM/GRU layer stack or "
                        f"a cell; got {type(obj).__name__}")
    layer = obj._layer if isinstance(obj, RecurrentCell) else obj
    arch = dict(kind="cell" if isinstance(obj, RecurrentCell) else "layer", cell=layer.cell,
                dtype=layer.dtype.name, input_size=layer.input_size,
                hidden_size=layer.hidden_size, bias=layer.bias)
    if not isinstance(obj, RecurrentCell):
        arch.update(num_layers=layer.num_layers, batch_first=layer.batch_first,
                    dropout=layer.dropout, bidirectional=layer.bidirectional)
    if layer.cell == "rnn":
        arch["nonlinearity"] = layer.nonlinearity
    elif layer.cell == "lstm":
        arch.update(peephole=layer.peephole, coupled=layer.coupled)
    else:
        arch["reset_after"] = layer.reset_after
    return arch, obj.params, layer.dtype


def _parameter_bounds(arch):
    """``(low, high)``: bounds on the number of parameters ``arch`` makes, from its sizes
    alone (nothing built). ``low`` counts the weight matrices; ``high`` adds at most two
    bias vectors and three peephole vectors per layer and direction and the output bias.
    The tensors of a file must hold a count in between: what :func:`_build` allocates is
    then a few times the file's size, and a file whose index declares gigabytes for a tiny
    architecture is refused before its tensors are read."""
    G = gate_count(arch["cell"], arch.get("coupled", False))
    H, layers = arch["hidden_size"], arch.get("num_layers", 1)
    D = 2 if arch.get("bidirectional") else 1
    inp, n, extra = arch.get("input_size"), 0, D * layers * (2 * G * H + 3 * H)
    if arch.get("kind", "model") == "model":
        if inp is None:                               # token ids: an embedding first
            inp = arch.get("embedding_dim") or H
            n += arch["vocab_size"] * inp
        n += D * H * arch["output_size"]              # head.weight
        extra += arch["output_size"]                  # head.bias
    for layer in range(layers):
        # weight_ih (G*H, I_l) and weight_hh (G*H, H) per direction
        n += D * G * H * ((inp if layer == 0 else D * H) + H)
    return n, n + extra


# an optimizer keeps at most this many buffers per parameter (RMSprop centered, with
# momentum: v, g, m); tests/files/test_io.py checks every optimizer against it
_OPTIMIZER_BUFFERS = 3


def _build(arch, where):
    """The empty object an architecture describes (its parameters to be filled)."""
    from .nn import layers
    from .nn.models import SequenceModel
    arch = dict(arch)
    kind = arch.pop("kind", "model")
    try:
        if kind == "model":
            return SequenceModel(**arch)
        cls = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}[arch.pop("cell")]
        if kind == "cell":
            return getattr(layers, cls + "Cell")(**arch)
        return getattr(layers, cls)(**arch)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{where}: the architecture does not make a network ({exc})") \
            from None


def _gate_order(arch):
    """How the weight matrices stack the gate blocks of ``arch``'s cell ("ifgo")."""
    cell = arch.get("cell")
    return "".join(GATE_ORDER["lstm_coupled" if cell == "lstm" and arch.get("coupled")
                              else cell])


def model_bytes(model, optimizer=None):
    """The file's bytes for ``model`` (a SequenceModel, a layer stack or a cell; and
    optionally its optimizer's state)."""
    config, params, dtype = _describe(model)
    tensors = {name: np.ascontiguousarray(a) for name, a in params.items()}
    meta = {"fastrnn_format": str(FORMAT_VERSION),
            "architecture": json.dumps(config, sort_keys=True),
            "gate_order": _gate_order(config)}
    if getattr(model, "vocabulary", None) is not None:
        meta["vocabulary"] = json.dumps(list(model.vocabulary))
    text_level = getattr(model, "text_level", None)
    if text_level is not None:
        if text_level not in TEXT_LEVELS or config.get("kind", "model") != "model":
            raise ValueError(f"text_level={text_level!r}: a SequenceModel's text_level is "
                             f"None or one of {TEXT_LEVELS}; layers and cells have none")
        meta["text_level"] = text_level
    if optimizer is not None:
        state = optimizer.state_dict()
        scalars = {}
        for k, v in state.items():
            if isinstance(v, np.ndarray):
                tensors[f"optimizer.{k}"] = np.ascontiguousarray(v, dtype=dtype) \
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
    """Write ``model`` (a SequenceModel, an RNN/LSTM/GRU layer stack or a cell; and
    optimizer state) to ``path`` atomically: afterwards ``path`` holds the complete old file
    or the complete new one, whatever happens (an exception, a full disk, a kill); a failed
    save leaves no temporary file behind.

    ``path`` is written as :func:`atomic_write` writes it: a new file gets mode
    ``0o666 & ~umask``, a replaced one keeps its mode; when ``path`` is a symlink, the
    file it points to is replaced and the link stays a link (a dangling link's target is
    created); a folder, FIFO, device or socket at ``path`` is refused
    (:class:`NotARegularFileError`), as is a missing folder (FileNotFoundError); every error
    names ``path``.

    Arguments: ``model`` (bound as ``model.save(path)``), ``path`` (a str or path-like),
    ``optimizer=None`` (a fastrnn optimizer whose state is saved with the model;
    ``fastrnn.load(path, with_optimizer=True)`` gives it back). :func:`load` reads the
    file, checking its format version, names, shapes and values.

    Example::

        >>> import os, tempfile
        >>> import numpy as np
        >>> import fastrnn
        >>> model = fastrnn.SequenceModel("gru", input_size=3, hidden_size=4, output_size=2,
        ...                               seed=0)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "model.safetensors")
        ...     model.save(path)
        ...     again = fastrnn.load(path)
        >>> x = np.ones((1, 5, 3), np.float32)
        >>> bool((again.predict(x) == model.predict(x)).all())
        True
    """
    atomic_write(path, model_bytes(model, optimizer), what="model file")


class NotARegularFileError(OSError, ValueError):
    """A folder, FIFO, device or socket where a regular file was expected (to write or to
    load). Both an OSError (the path cannot be used as a file) and a ValueError (the
    caller gave a wrong path), so either ``except`` clause catches it.

        >>> import fastrnn
        >>> try:
        ...     fastrnn.save(fastrnn.GRU(2, 3), ".")      # the current folder
        ... except OSError as exc:
        ...     print(type(exc).__name__, isinstance(exc, ValueError))
        NotARegularFileError True
    """


_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def kind_of(mode):
    """What a non-regular file is, in words."""
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


def _with_path(exc, path, what):
    """The OSError ``exc`` of writing ``path`` as one that names ``path`` (``exc`` may name
    the temporary, which the user never heard of), keeping its errno and so its class."""
    strerror = exc.strerror if exc.errno is not None and exc.strerror else str(exc)
    message = f"cannot write {what} {path}: {strerror}"
    return OSError(exc.errno, message) if exc.errno is not None else OSError(message)


def _write_target(path, what):
    """``(target, mode)``: the file a write of ``path`` replaces (``path``, or the end of
    the symlinks starting there, created when missing) and the mode to keep (None for a
    new file). Raises :class:`NotARegularFileError` for a folder, FIFO, device or socket,
    FileNotFoundError for a missing folder, the OSError of ``stat`` otherwise; each names
    ``path``."""
    target = os.path.realpath(path)               # every symlink followed, relative ones too
    via = "" if target == os.path.abspath(path) else f" (a link to {target})"
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:                        # a symlink loop, a file in the way, ...
        raise _with_path(exc, path, what) from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise NotARegularFileError(f"cannot write {what} {path}{via}: it is "
                                   f"{kind_of(st.st_mode)}, not a file; refusing to "
                                   "replace it")
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, f"cannot write {what} {path}{via}: the folder "
                                              f"{folder} does not exist")
    return target, (None if st is None else stat.S_IMODE(st.st_mode))


def check_writable(path, what="file"):
    """Check, writing nothing, that :func:`atomic_write` (and so :func:`save`) can write
    ``path``: its folder exists and may be written, and ``path`` is not a folder, FIFO,
    device or socket (nor a symlink to one). Meant for a caller about to spend a long time
    before its first write (``fastrnn train``, ``fit`` with checkpoints).

    Raises :class:`NotARegularFileError`, FileNotFoundError (missing folder) or
    PermissionError (a folder this process may not write in), each naming ``path``; a later
    write can still fail (a full disk, a folder removed meanwhile)."""
    path = os.fspath(path)
    target, _ = _write_target(path, what)
    folder = os.path.dirname(target)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"cannot write {what} {path}: the folder "
                                            f"{folder} may not be written by this process")


def atomic_write(path, data, what="file"):
    """Write the bytes ``data`` to ``path`` atomically: a temporary file in the same
    folder, fsync, ``os.replace``, fsync of the folder, so that ``path`` holds its complete
    old content or ``data``, whatever happens (an exception, a full disk, a kill), and a
    failed write leaves no temporary behind (see the module docstring for a killed one).

    A new file gets mode ``0o666 & ~umask``, as ``open(path, "wb")`` would make it; a
    replaced file keeps its mode. A symlink at ``path`` is followed to the end: the file it
    points to is replaced, in that file's folder, and the link stays a link (a dangling
    link's target is created, as ``open`` would). A folder, FIFO, device or socket at
    ``path`` (or at the end of its links) is refused with :class:`NotARegularFileError`
    rather than replaced by a file (the check and the rename are two steps: a FIFO created
    at ``path`` in between is still replaced). ``what`` names the file in messages
    (``"model file"``, ``"ONNX file"``).

    Raises :class:`NotARegularFileError`, FileNotFoundError for a missing folder, and any
    other OSError of writing, each naming ``path`` (never the temporary), with the errno
    (and so the class: PermissionError, ...) of the failure; TypeError when ``data`` is not
    bytes-like."""
    global _anonymous_temporaries
    path = os.fspath(path)
    data = memoryview(data)                       # TypeError for str, before any file exists
    target, mode = _write_target(path, what)
    folder = os.path.dirname(target)
    try:
        try:
            _write_and_replace(data, target, folder, mode, _anonymous_temporaries)
        except _CannotLink:                       # O_TMPFILE works here, linkat does not
            _anonymous_temporaries = False
            _write_and_replace(data, target, folder, mode, False)
    except OSError as exc:
        raise _with_path(exc, path, what) from None
    try:                                          # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass                                      # platforms that cannot fsync a folder
    if folder not in _cleaned_folders:
        _cleaned_folders.add(folder)
        remove_stale_temporaries(folder)


# O_TMPFILE + linkat through /proc (Linux); False once linking has been refused here
_anonymous_temporaries = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")


class _CannotLink(Exception):
    """The anonymous temporary could not be given a name (nothing is left behind)."""


def _write_and_replace(data, path, folder, mode, anonymous):
    fd, tmp = _open_temporary(folder, anonymous)
    try:
        try:
            if mode is not None and hasattr(os, "fchmod"):
                os.fchmod(fd, mode)
            f = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            if tmp is None:                       # anonymous until its bytes are on disk
                tmp = _link_anonymous(f.fileno(), folder)
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise


def _temporary_name(folder):
    return os.path.join(folder, f".fastrnn-{os.getpid()}-{os.urandom(6).hex()}.tmp")


def _open_temporary(folder, anonymous):
    """``(fd, name)`` of a new file for writing in ``folder``; ``name`` is None when the file
    is anonymous (Linux ``O_TMPFILE``: nothing is left if the process dies before
    :func:`_link_anonymous`). Mode 0o666: the kernel applies the umask, as for any new file
    (mkstemp would make it 0600; changing the umask to read it races with other threads)."""
    flags = os.O_WRONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    if anonymous:
        try:
            return os.open(folder, flags | os.O_TMPFILE, 0o666), None
        except OSError:
            pass                                  # a file system without O_TMPFILE
    for _ in range(100):
        tmp = _temporary_name(folder)
        try:
            return os.open(tmp, flags | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise OSError(f"could not create a temporary file in {folder}")


def _link_anonymous(fd, folder):
    """Give the anonymous file ``fd`` a temporary name in ``folder`` and return it:
    linkat(/proc/self/fd/N, AT_SYMLINK_FOLLOW), as open(2) describes for O_TMPFILE (the
    src_dir_fd makes Python call linkat; a plain link() would not follow the /proc link)."""
    try:
        proc = os.open("/proc/self/fd", os.O_RDONLY)
    except OSError as exc:
        raise _CannotLink(str(exc)) from None
    try:
        for _ in range(100):
            tmp = _temporary_name(folder)
            try:
                os.link(str(fd), tmp, src_dir_fd=proc)
                return tmp
            except FileExistsError:
                continue
            except OSError as exc:
                raise _CannotLink(str(exc)) from None
    finally:
        os.close(proc)
    raise OSError(f"could not name the temporary file in {folder}")


def remove_stale_temporaries(folder, max_age=None):
    """Remove temporaries that :func:`atomic_write` calls killed mid-write left in ``folder``: only
    regular files owned by this user, named exactly ``.fastrnn-<pid>-<12 hex>.tmp``, last
    written more than ``max_age`` seconds ago (default :data:`STALE_TMP_SECONDS`) by a
    process that no longer runs here. Returns the names removed. Errors are ignored (the
    folder may be shared, listing it may be refused): this is housekeeping, never a reason
    for a save to fail."""
    max_age = STALE_TMP_SECONDS if max_age is None else max_age
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not _TMP_PATTERN.fullmatch(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not entry.is_file(follow_symlinks=False) or now - st.st_mtime < max_age or \
                    (hasattr(os, "getuid") and st.st_uid != os.getuid()):
                continue
            pid = int(entry.name.split("-")[1])
            if pid == os.getpid() or _process_exists(pid):
                continue
            os.unlink(entry.path)
            removed.append(entry.name)
        except (OSError, ValueError):
            continue
    return removed


def _process_exists(pid):
    if os.name != "posix":
        return True                               # cannot tell cheaply: assume it runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def parse(blob, where="model file"):
    """Validate ``blob`` and return ``(architecture, tensors, optimizer_meta)``."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError("expected bytes")
    blob = bytes(blob)
    layout = _layout(lambda offset, count: blob[offset:offset + count], len(blob), where)
    return _contents(layout, memoryview(blob)[layout.start:], where)


class _Layout:
    """A file's validated header: ``meta`` (the metadata strings), ``arch`` (the checked
    architecture, with ``_vocabulary`` and ``_text_level``), ``optimizer`` (its metadata
    or None), ``index`` (``(name, dtype, shape, begin, stop)`` per tensor, contiguous in
    name order, relative to ``start``), ``start`` (where the tensor bytes begin) and
    ``size`` (the file's size: ``start`` + the bytes the index covers, exactly)."""

    def __init__(self, meta, arch, optimizer, index, start, size):
        self.meta, self.arch, self.optimizer = meta, arch, optimizer
        self.index, self.start, self.size = index, start, size


def _layout(read, size, where):
    """Check everything a file of ``size`` bytes says before its tensor bytes, reading
    only its first bytes and its header: ``read(offset, count)`` returns those bytes (fewer
    at the end of the file). Every declared size is checked against ``size`` before
    anything is allocated for it. Returns a :class:`_Layout`; raises ModelFileError."""
    def bad(msg):
        return ModelFileError(f"{where}: {msg}")
    if size < 8:
        foreign = foreign_format(read(0, size))
        raise bad(f"{size} bytes: not a fastrnn or safetensors file (too short)"
                  + (f"; it looks like {foreign}" if foreign else ""))
    first = read(0, min(size, HEAD_BYTES))
    (n,) = struct.unpack("<Q", first[:8])
    if 2 <= n <= MAX_HEADER and n > size - 8 and first[8:9] == b"{":
        raise bad(f"truncated: the header alone needs {n} bytes, the file has "
                  f"{size - 8} after the length")
    if n > MAX_HEADER or n > size - 8 or n < 2:
        foreign = foreign_format(first)
        raise bad("not a fastrnn or safetensors file" + (
            f": it looks like {foreign}" if foreign else
            f" (header length {n} does not fit a file of {size} bytes)"))
    text = read(8, n)
    try:
        header = _json(text.decode("utf-8"), "header", bad)
    except UnicodeDecodeError as exc:
        raise bad(f"header is not UTF-8 text ({exc})") from None
    not_ours = ("a safetensors file, but not fastrnn's (a PyTorch state dict? import it "
                "with fastrnn.from_torch(fastrnn.interop.torch_io.read_state_dict(path)) "
                "or `fastrnn convert`)")
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        tensors_only = isinstance(header, dict) and "__metadata__" not in header and all(
            isinstance(v, dict) and "data_offsets" in v for v in header.values())
        raise bad("header has no __metadata__ object" + (
            f": {not_ours}" if tensors_only else ""))
    meta = header.pop("__metadata__")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise bad("metadata values must be strings")
    for k, v in meta.items():                 # JSON escapes can make lone surrogates
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise bad(f"metadata {k!r} is not valid Unicode text") from None
    version = meta.get("fastrnn_format")
    if version is None:
        raise bad(f"no fastrnn_format in the metadata: {not_ours}")
    if version not in READABLE_VERSIONS:
        raise bad(f"format version {version[:16]!r}; this fastrnn reads versions "
                  f"{', '.join(READABLE_VERSIONS)} (upgrade fastrnn to read newer files)")
    arch = _architecture(meta.get("architecture"), bad)
    gate_order = meta.get("gate_order")
    if version != "1" and gate_order != _gate_order(arch):
        raise bad(f"gate_order {gate_order if gate_order is None else gate_order[:16]!r}: a "
                  f"{arch['cell']} cell's weight blocks are stacked {_gate_order(arch)!r} here "
                  "(a file written in another order would be read wrongly)")
    index = _index(header, size - 8 - n, bad)
    low, high = _parameter_bounds(arch)
    weights = sum(math.prod(shape) for name, _, shape, _, _ in index
                  if not name.startswith("optimizer."))
    state = sum(math.prod(shape) for name, _, shape, _, _ in index
                if name.startswith("optimizer."))
    if not low <= weights <= high:
        raise bad(f"the tensors do not match the architecture (it needs at least {low} and "
                  f"at most {high} parameters, the file holds {weights})")
    if state > _OPTIMIZER_BUFFERS * weights:
        raise bad(f"optimizer tensors of {state} values for {weights} parameters (an "
                  f"optimizer keeps at most {_OPTIMIZER_BUFFERS} per parameter)")
    vocabulary = None
    if "vocabulary" in meta:
        vocabulary = _json(meta["vocabulary"], "vocabulary metadata", bad)
        if not is_vocabulary(vocabulary, arch.get("vocab_size")):
            raise bad("vocabulary must be a list of vocab_size strings")
    text_level = meta.get("text_level")
    if text_level is not None and (text_level not in TEXT_LEVELS
                                   or arch.get("kind", "model") != "model"):
        raise bad(f"text_level {text_level!r} is not allowed (a model's is one of "
                  f"{TEXT_LEVELS})")
    arch = dict(arch, _vocabulary=vocabulary, _text_level=text_level)
    optimizer = None
    if "optimizer" in meta:
        optimizer = _json(meta["optimizer"], "optimizer metadata", bad)
        if not isinstance(optimizer, dict) or optimizer.get("name") not in OPTIMIZERS \
                or not isinstance(optimizer.get("scalars"), dict):
            raise bad("optimizer metadata must name one of " + ", ".join(OPTIMIZERS))
    return _Layout(meta, arch, optimizer, index, 8 + n, size)


def _index(header, data_size, bad):
    """The tensor entries of ``header`` as ``(name, dtype, shape, begin, stop)``, checked
    to cover the ``data_size`` bytes after the header exactly. One layout is allowed:
    contiguous, in name order (the checksum covers the bytes, not this index, so two
    same-shaped tensors with swapped offsets must not load)."""
    index, end = [], 0
    for name in sorted(header):
        info = header[name]
        begin, stop = _offsets((name, info), bad)
        dtype = _DTYPES.get(info["dtype"]) if isinstance(info.get("dtype"), str) else None
        if dtype is None:
            raise bad(f"tensor {name!r}: dtype {info.get('dtype')!r} is not one of "
                      f"{sorted(_DTYPES)}")
        shape = info.get("shape")
        if not isinstance(shape, list) or len(shape) > 4 or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 31
                for d in shape):
            raise bad(f"tensor {name!r}: bad shape {shape!r}")
        if begin != end:
            raise bad(f"tensor {name!r}: starts at {begin}, expected {end} (tensors must be "
                      "contiguous in name order: a gap or overlap, or moved offsets)")
        if stop - begin != math.prod(shape) * dtype.itemsize:     # Python ints: no overflow
            raise bad(f"tensor {name!r}: {stop - begin} bytes for shape {shape} {info['dtype']}")
        if stop > data_size:
            raise bad(f"truncated: tensor {name!r} ends at byte {stop} of the data, the file "
                      f"holds {data_size} bytes of data")
        index.append((name, dtype, shape, begin, stop))
        end = stop
    if end != data_size:
        raise bad(f"{data_size - end} trailing bytes after the last tensor")
    return index


def _contents(layout, data, where):
    """``(architecture, tensors, optimizer_meta)`` from the tensor bytes ``data`` (exactly
    the ``layout.size - layout.start`` bytes its index covers): checksum, then arrays."""
    if layout.meta.get("sha256") != _checksum(layout.meta, data):
        raise ModelFileError(f"{where}: checksum mismatch: the tensor bytes or the metadata "
                             "are corrupted or truncated")
    tensors = {}
    for name, dtype, shape, begin, stop in layout.index:
        a = np.frombuffer(data, dtype, count=math.prod(shape), offset=begin)
        tensors[name] = a.reshape(shape).astype(dtype.newbyteorder("="))
    return dict(layout.arch), tensors, layout.optimizer


def _json(text, what, bad):
    """``json.loads(text)``; anything it refuses (nesting deep enough to exhaust the
    recursion limit included) is a ModelFileError."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise bad(f"{what} is not valid JSON ({exc})") from None
    except RecursionError:
        raise bad(f"{what} is JSON nested too deeply") from None


def _checksum(meta, data):
    """sha256 over the metadata that shapes the model and the tensor bytes, so a changed
    hyper-parameter is caught as surely as a changed weight."""
    h = hashlib.sha256()
    for key in ("fastrnn_format", "architecture", "optimizer", "vocabulary"):
        h.update(key.encode() + b"=" + meta.get(key, "").encode() + b"\n")
    if "gate_order" in meta:              # version 2 on; version 1 files keep their sums
        h.update(b"gate_order=" + meta["gate_order"].encode() + b"\n")
    if "text_level" in meta:              # added later: files without it keep their sums
        h.update(b"text_level=" + meta["text_level"].encode() + b"\n")
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
    if not isinstance(text, str):
        raise bad("architecture metadata is missing or not a JSON object")
    arch = _json(text, "architecture metadata", bad)
    if not isinstance(arch, dict):
        raise bad("architecture metadata is missing or not a JSON object")
    kind = arch.get("kind", "model")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise bad(f"architecture kind={kind!r} is not allowed")
    allowed, required = _KINDS[kind]
    for k, v in arch.items():
        if k not in allowed:
            raise bad(f"architecture has an unknown key {k!r}" +
                      (f" (for kind {kind!r})" if k in _ARCH else ""))
        if not _ARCH[k](v):
            raise bad(f"architecture {k}={v!r} is not allowed")
    missing = [k for k in required if k not in arch]
    if missing:
        raise bad(f"architecture lacks {missing}")
    for k in arch:
        if k in _VARIANT_KEYS and _VARIANT_KEYS[k] != arch["cell"]:
            raise bad(f"architecture key {k!r} is for a {_VARIANT_KEYS[k]}, not a "
                      f"{arch['cell']}")
    if kind == "model":
        if (arch.get("input_size") is None) == (arch.get("vocab_size") is None):
            raise bad("architecture needs exactly one of input_size and vocab_size")
    elif arch["input_size"] is None:
        raise bad("architecture needs an input_size")
    return arch


def load_bytes(blob, where="model bytes", with_optimizer=False):
    """A model, layer stack or cell from validated bytes (see :func:`load`)."""
    return _assemble(parse(blob, where), where, with_optimizer)


def _assemble(parsed, where, with_optimizer):
    """The object :func:`parse`'s result describes, its weights copied in and checked."""
    arch, tensors, optimizer = parsed
    vocabulary, text_level = arch.pop("_vocabulary"), arch.pop("_text_level")
    model = _build(arch, where)          # its size was bounded by the tensors present
    if vocabulary is not None:
        model.vocabulary = vocabulary
    if arch.get("kind", "model") == "model":
        model.text_level = text_level
    expected = _describe(model)[1]
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
    dtype = _describe(model)[2]
    for k, v in tensors.items():
        if k.startswith("optimizer.") and v.dtype != dtype:
            raise ModelFileError(f"{where}: {k} is {v.dtype}, the model is {dtype}")
    if hasattr(model, "eval"):                    # cells have no training mode
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
    """Load a model saved by :meth:`SequenceModel.save` (or a layer stack or cell saved by
    :func:`save`, returned in eval mode as models are). ``with_optimizer=True`` returns
    ``(model, {"name": ..., "state": ...} or None)`` for resuming training.

    Only a regular file (or a symlink to one) is opened: a folder, FIFO, device or socket
    is refused before it is opened (so a FIFO without a writer cannot block the call) with
    :class:`NotARegularFileError` (an OSError). The header is read and validated first,
    every size it declares checked against the file's size, and then only the tensor bytes
    it declares are read: a file is never read past what its header validated, and memory
    stays a small multiple of the file's size. Anything wrong with the contents raises
    :class:`ModelFileError` saying what and where; a path that cannot be read raises
    OSError as ``open`` does, and so does a valid file too large for the memory left
    (errno ENOMEM); each names ``path``."""
    path = os.fspath(path)
    fd = _open_regular(path)
    try:
        size = os.fstat(fd).st_size
        layout = _layout(lambda offset, count: _read_at(fd, offset, count), size, path)
        try:
            data = _read_at(fd, layout.start, size - layout.start)
            if len(data) != size - layout.start or os.fstat(fd).st_size != size:
                raise ModelFileError(f"{path}: the file changed while it was read")
            return _assemble(_contents(layout, data, path), path, with_optimizer)
        except MemoryError:
            raise OSError(errno.ENOMEM, f"cannot load {path}: not enough memory for a model "
                                        f"file of {size} bytes") from None
    finally:
        os.close(fd)


def read_regular(path, what="file"):
    """The bytes of the regular file at ``path``, read as :func:`load` reads: a folder,
    FIFO, device or socket is refused (:class:`NotARegularFileError`, naming ``what`` was
    expected) before it is opened, so the call never waits for a writer."""
    fd = _open_regular(path, what)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _open_regular(path, what="model file"):
    """A read-only descriptor of the regular file at ``path`` (symlinks followed). What
    :func:`os.stat` says is not a regular file is refused before it is opened (opening a
    FIFO waits for a writer, opening some devices acts); the open itself does not wait
    (O_NONBLOCK) and :func:`os.fstat` refuses what replaced the file in between."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotARegularFileError(f"cannot load {path}: it is {kind_of(st.st_mode)}, "
                                   f"not a {what}")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                 | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFileError(f"cannot load {path}: it is {kind_of(st.st_mode)}, "
                                       f"not a {what}")
    except BaseException:
        os.close(fd)
        raise
    return fd


_READ_CHUNK = 1 << 24


def _read_at(fd, offset, count):
    """Up to ``count`` bytes of ``fd`` from ``offset`` (fewer at its end), into one buffer
    of ``count`` bytes (callers bound it by the file's size first)."""
    os.lseek(fd, offset, os.SEEK_SET)
    buf, got = bytearray(count), 0
    while got < count:
        chunk = os.read(fd, min(count - got, _READ_CHUNK))
        if not chunk:
            del buf[got:]
            break
        buf[got:got + len(chunk)] = chunk
        got += len(chunk)
    return buf
