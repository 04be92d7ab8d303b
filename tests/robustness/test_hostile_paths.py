"""What fastrnn.load does with what lies at a path: a FIFO with no writer (it blocked forever
in open()), a device, a socket, a folder, a symlink, and huge sparse files that cost
nothing to make (it read them whole before looking at their 8-byte header: 1.5 GiB of RSS,
and a bare MemoryError under an address-space limit). Loads that could hang or exhaust
memory run in a child process with a timeout."""
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastrnn
from fastrnn import io
from fastrnn.io import ModelFileError, NotARegularFileError, model_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GIB = 1 << 30


def _python(code, *args, timeout=120):
    """Run ``code`` in a fresh interpreter; a hang fails the test instead of blocking."""
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the child did not finish in {timeout} s (a load that hangs)")


def _tiny():
    return fastrnn.SequenceModel("gru", input_size=2, hidden_size=2, output_size=1,
                                 task="regression", seed=0)


# ---- special files ----------------------------------------------------------------------

FIFO = r"""
import os, sys
import fastrnn
from fastrnn.io import NotARegularFileError
path = sys.argv[1]
os.mkfifo(path)
try:
    fastrnn.load(path)
    print("loaded")
except NotARegularFileError as exc:
    print("refused:", exc)
# the race: stat() saw a file, a FIFO is there by the time it is opened (O_NONBLOCK keeps
# the open from waiting for a writer, fstat refuses it)
real_stat = os.stat
def stat_says_a_file(p, *a, **k):
    st = real_stat(p, *a, **k)
    return os.stat_result((0o100644,) + tuple(st)[1:]) if os.fspath(p) == path else st
os.stat = stat_says_a_file
fds = len(os.listdir("/proc/self/fd"))
try:
    fastrnn.load(path)
    print("loaded")
except NotARegularFileError as exc:
    print("refused after opening:", exc)
print("fds", len(os.listdir("/proc/self/fd")) - fds)
"""


def test_a_fifo_without_a_writer_is_refused_not_waited_on(tmp_path):
    """Before, load blocked forever in open() (here: the child timed out)."""
    if not hasattr(os, "mkfifo") or not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs FIFOs and /proc")
    path = tmp_path / "model.fastrnn"
    out = _python(FIFO, path, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("refused:") and "FIFO" in lines[0] and str(path) in lines[0]
    assert lines[1].startswith("refused after opening:") and "FIFO" in lines[1]
    assert lines[2] == "fds 0", out.stdout             # the descriptor was closed


def test_a_folder_and_a_socket_are_refused_naming_the_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                        # a socket's name must be short
    os.mkdir("folder.fastrnn")
    cases = [("folder.fastrnn", "folder")]
    if hasattr(socket, "AF_UNIX"):
        s = socket.socket(socket.AF_UNIX)
        s.bind("sock.fastrnn")
        s.close()
        cases.append(("sock.fastrnn", "socket"))
    for name, kind in cases:
        for path in (name, tmp_path / name):
            with pytest.raises(NotARegularFileError, match=kind) as info:
                fastrnn.load(path)
            assert str(path) in str(info.value)
            assert isinstance(info.value, OSError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("when", ["stat", "fstat"])
def test_a_device_is_refused_before_it_is_opened(when, tmp_path, monkeypatch):
    """A path that os.stat (or, after opening, os.fstat) says is a character device, as
    /dev/zero is (never opened for real here: loading it read without end)."""
    path = tmp_path / "zero"
    path.write_bytes(model_bytes(_tiny()))
    real = getattr(os, when)
    opened = []
    real_open = os.open

    def device(p, *a, **k):
        st = real(p, *a, **k)
        mine = (os.fspath(p) == str(path)) if when == "stat" else (p in opened)
        return os.stat_result((stat.S_IFCHR | 0o666,) + tuple(st)[1:]) if mine else st

    def recording_open(p, *a, **k):
        fd = real_open(p, *a, **k)
        if os.fspath(p) == str(path):
            opened.append(fd)
        return fd

    monkeypatch.setattr(os, when, device)
    monkeypatch.setattr(os, "open", recording_open)
    with pytest.raises(NotARegularFileError, match="character device") as info:
        fastrnn.load(path)
    assert str(path) in str(info.value)
    if when == "stat":
        assert opened == []                           # refused before open()
    else:
        assert len(opened) == 1
        with pytest.raises(OSError):                  # and its descriptor closed
            os.fstat(opened[0]) if when != "fstat" else real(opened[0])


def test_a_symlink_to_a_model_loads_and_a_missing_file_is_an_oserror(tmp_path):
    m = _tiny()
    m.save(tmp_path / "m.fastrnn")
    (tmp_path / "link").symlink_to("m.fastrnn")
    assert fastrnn.load(tmp_path / "link").head.weight.tobytes() == m.head.weight.tobytes()
    with pytest.raises(FileNotFoundError):
        fastrnn.load(tmp_path / "missing.fastrnn")


# ---- huge sparse files ------------------------------------------------------------------

def _sparse(path, size, head=b""):
    with open(path, "wb") as f:
        f.write(head)
    os.truncate(path, size)                           # a hole: no disk space, no time
    return path


def _huge_tensor_header(size):
    """A real tiny model's header whose first tensor is declared to cover the whole rest
    of a ``size``-byte file (every other tensor moved after it): a consistent index that
    asks for gigabytes, with a tiny architecture."""
    blob = model_bytes(_tiny())
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    names = sorted(k for k in header if k != "__metadata__")
    lengths = {k: header[k]["data_offsets"][1] - header[k]["data_offsets"][0] for k in names}
    text_len = len(json.dumps(header).encode()) + 512         # room for longer numbers
    big = size - 8 - text_len - sum(lengths[k] for k in names[1:])
    big -= big % 4
    lengths[names[0]] = big
    header[names[0]]["shape"] = [big // 4]
    offset = 0
    for k in names:
        header[k]["data_offsets"] = [offset, offset + lengths[k]]
        offset += lengths[k]
    text = json.dumps(header).encode()
    text += b" " * (size - 8 - offset - len(text))              # the index covers the file
    return struct.pack("<Q", len(text)) + text


SPARSE = r"""
import json, os, resource, sys, time
import fastrnn
def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
if sys.argv[1] == "limit":                # 2 GiB more address space than mapped now
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            limit = int(line.split()[1]) * 1024 + (2 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
results = []
for path in sys.argv[2:]:
    before, t = peak_kib(), time.perf_counter()
    try:
        fastrnn.load(path)
        outcome = "loaded"
    except fastrnn.ModelFileError as exc:
        outcome = "ModelFileError: " + str(exc)
    except BaseException as exc:
        outcome = type(exc).__name__ + ": " + str(exc)
    results.append(dict(path=os.path.basename(path), size=os.path.getsize(path),
                        seconds=time.perf_counter() - t,
                        rss_growth_mib=(peak_kib() - before) / 1024, outcome=outcome))
print(json.dumps(results))
"""

SPARSE_KINDS = {
    "zeros": lambda size: b"",                                    # header length 0
    "text": lambda size: b"notes about the model\n" * 40,         # header length absurd
    "trailing": lambda size: model_bytes(_tiny()),                # a real model, then zeros
    "huge-tensor": _huge_tensor_header,                           # declares it all
}


def _sparse_files(tmp_path):
    paths = []
    for size in (3 * GIB // 2, 3 * GIB):
        for kind, head in SPARSE_KINDS.items():
            paths.append(_sparse(tmp_path / f"{kind}-{size}.fastrnn", size, head(size)))
    return paths


@pytest.mark.parametrize("limit", ["none", "limit"])
def test_huge_sparse_files_are_refused_from_their_header(limit, tmp_path):
    """Sparse files of 1.5 and 3 GiB (no disk space used): zeros, text, a real model's
    bytes followed by zeros, and a header whose index covers the file with one huge tensor
    for a tiny architecture. Each is refused with ModelFileError from its header, reading
    nothing past it: well under a second, a few MiB of peak RSS, also with an address
    space only 2 GiB larger than the process's (``limit``). Before: the file was read
    whole first (1.5 GiB of RSS and seconds; 3 GiB under the limit: a bare MemoryError)."""
    paths = _sparse_files(tmp_path)
    out = _python(SPARSE, limit, *paths, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.splitlines()[-1])
    print(json.dumps(results, indent=1))
    for r in results:
        assert r["outcome"].startswith("ModelFileError"), r
        assert r["seconds"] < 0.5 and r["rss_growth_mib"] < 64, r


def test_what_a_huge_sparse_file_is_refused_for(tmp_path):
    """The messages say what is wrong with each kind (checked here, in this process,
    on the small end of the sizes)."""
    want = {"zeros": "not a fastrnn or safetensors file",
            "text": "text file",
            "trailing": "trailing bytes",
            "huge-tensor": "the file holds"}
    for kind, head in SPARSE_KINDS.items():
        path = _sparse(tmp_path / f"{kind}.fastrnn", 3 * GIB // 2, head(3 * GIB // 2))
        with pytest.raises(ModelFileError, match=want[kind]) as info:
            fastrnn.load(path)
        assert str(path) in str(info.value)
        os.unlink(path)


@pytest.mark.parametrize("change", ["grows", "shrinks"])
def test_a_file_that_grows_or_shrinks_while_it_is_read_is_refused(change, tmp_path,
                                                                  monkeypatch):
    """load reads only what the header, checked against the file's size, declared; a file
    changed under it is refused, not half-read and not read past that size."""
    m = _tiny()
    path = tmp_path / "m.fastrnn"
    m.save(path)
    good = path.read_bytes()
    real_read_at = io._read_at
    reads = []

    def changing(fd, offset, count):
        reads.append(count)
        if len(reads) == 3 and change == "shrinks":     # before the tensor bytes are read
            os.truncate(path, len(good) - 4)
        out = real_read_at(fd, offset, count)
        if len(reads) == 3 and change == "grows":       # after
            with open(path, "ab") as f:
                f.write(b"\0" * 8)
        return out

    monkeypatch.setattr(io, "_read_at", changing)
    with pytest.raises(ModelFileError, match="changed while it was read"):
        fastrnn.load(path)
    assert reads[0] <= 512 and sum(reads) <= 512 + len(good), reads
    monkeypatch.undo()
    path.write_bytes(good)
    assert fastrnn.load(path).head.weight.tobytes() == m.head.weight.tobytes()


def test_a_load_that_runs_out_of_memory_is_an_oserror_naming_the_file(tmp_path,
                                                                      monkeypatch):
    """The documented errors of load are ModelFileError and OSError: not enough memory
    for a (valid) file is an OSError (ENOMEM) naming it, not a bare MemoryError."""
    path = tmp_path / "m.fastrnn"
    _tiny().save(path)

    def no_memory(*a, **k):
        raise MemoryError()

    monkeypatch.setattr(io, "_build", no_memory)
    with pytest.raises(OSError, match="not enough memory") as info:
        fastrnn.load(path)
    assert str(path) in str(info.value) and not isinstance(info.value, MemoryError)
    assert info.value.errno == __import__("errno").ENOMEM
    assert np.isfinite(1.0)


def test_a_file_is_refused_for_the_same_reason_as_its_bytes(tmp_path):
    """load (header first, then the declared bytes) and load_bytes (all in memory) run
    the same checks in the same order: every truncation and every byte's top bit flipped
    of a golden file gives the same ModelFileError message from both."""
    golden = os.path.join(ROOT, "tests", "golden", "v1", "cell-lstm-peephole-f32.fastrnn")
    blob = open(golden, "rb").read()
    path = tmp_path / "m.fastrnn"
    variants = [blob[:n] for n in range(len(blob))]
    variants += [blob[:i] + bytes([blob[i] ^ 0x80]) + blob[i + 1:] for i in range(len(blob))]
    for v in variants:
        path.write_bytes(v)
        with pytest.raises(ModelFileError) as from_file:
            fastrnn.load(path)
        with pytest.raises(ModelFileError) as from_bytes:
            io.load_bytes(v, str(path))
        assert str(from_file.value) == str(from_bytes.value)
    assert len(variants) == 2 * len(blob)
