"""What every fastrnn writer does to the path it is given (fastrnn.io.atomic_write, which
save, to_onnx and ``fastrnn convert`` use): honour the umask, refuse folders, FIFOs,
devices and sockets, write through a symlink to its target (the link stays a link), and
name the user's path in every error, never the temporary; check_writable says the same
before anything is written."""
import errno
import os
import socket
import stat

import pytest

import fastrnn
from fastrnn import io
from fastrnn.io import NotARegularFileError, atomic_write, check_writable


def _tiny():
    return fastrnn.SequenceModel("gru", input_size=2, hidden_size=2, output_size=1,
                                 task="regression", seed=0)


def _others(folder, *keep):
    return sorted(p for p in os.listdir(folder) if p not in keep)


def test_atomic_write_writes_the_bytes_and_leaves_nothing_else(temporaries, tmp_path):
    path = tmp_path / "out.bin"
    atomic_write(path, b"first")
    atomic_write(str(path), b"second", what="ONNX file")
    assert path.read_bytes() == b"second" and _others(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("umask", [0o002, 0o077, 0o022])
def test_new_files_honour_the_umask(umask, temporaries, tmp_path):
    """Mode 0o666 & ~umask, as open() makes it (mkstemp would make 0o600 whatever the
    umask: what to_onnx and convert wrote before)."""
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.bin", b"x")
        _tiny().save(tmp_path / "m.fastrnn")
    finally:
        os.umask(old)
    for name in ("a.bin", "m.fastrnn"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_a_replaced_file_keeps_its_mode_whatever_the_umask(temporaries, tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    old = os.umask(0o077)
    try:
        atomic_write(path, b"new")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o640


# ---- what is at the path -----------------------------------------------------------------

def _fifo(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


def _socket(tmp_path):
    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("no Unix sockets on this platform")
    s, cwd = socket.socket(socket.AF_UNIX), os.getcwd()
    os.chdir(tmp_path)             # a relative name: a socket's path is limited to ~100 bytes
    try:
        s.bind("sock")
    finally:
        os.chdir(cwd)
        s.close()                  # the socket file stays
    return tmp_path / "sock"


@pytest.mark.parametrize("kind,match", [("folder", "is a folder"), ("fifo", "FIFO"),
                                        ("socket", "socket")])
def test_folders_fifos_and_sockets_are_refused_naming_the_path(kind, match, temporaries,
                                                               tmp_path):
    """Before, save replaced a FIFO by a regular file (and a folder failed naming a
    temporary file)."""
    if kind == "folder":
        path = tmp_path / "m.fastrnn"
        path.mkdir()
    else:
        path = {"fifo": _fifo, "socket": _socket}[kind](tmp_path)
    before = os.lstat(path)
    for write in (lambda: atomic_write(path, b"x"), lambda: _tiny().save(path),
                  lambda: check_writable(path)):
        with pytest.raises(NotARegularFileError, match=match) as info:
            write()
        assert str(path) in str(info.value) and ".tmp" not in str(info.value)
        assert isinstance(info.value, ValueError) and isinstance(info.value, OSError)
    after = os.lstat(path)
    assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode)
    assert after.st_ino == before.st_ino and _others(tmp_path, path.name) == []


@pytest.mark.parametrize("device", [stat.S_IFCHR, stat.S_IFBLK])
def test_devices_are_refused(device, temporaries, tmp_path, monkeypatch):
    """A path whose os.stat says it is a device (as /dev/null is; never touched for
    real here): before, save replaced it by a regular file, as root even /dev/null."""
    path = tmp_path / "null"
    path.write_bytes(b"")
    real_stat = os.stat

    def device_stat(p, *a, **k):
        st = real_stat(p, *a, **k)
        if os.fspath(p) == str(path):
            return os.stat_result((device | 0o666,) + tuple(st)[1:])
        return st

    monkeypatch.setattr(os, "stat", device_stat)
    for write in (lambda: atomic_write(path, b"x"), lambda: _tiny().save(path),
                  lambda: check_writable(path)):
        with pytest.raises(NotARegularFileError, match="device") as info:
            write()
        assert str(path) in str(info.value)
    assert path.read_bytes() == b"" and _others(tmp_path, "null") == []


def test_a_symlink_stays_a_link_and_its_target_is_replaced(temporaries, tmp_path):
    """Before, save replaced the link by a regular file and left its target untouched."""
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "m.fastrnn"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    link = tmp_path / "link.fastrnn"
    link.symlink_to(os.path.join("real", "m.fastrnn"))       # relative, as users make them
    chain = tmp_path / "chain.fastrnn"
    chain.symlink_to(link)                                   # a link to a link
    m = _tiny()
    m.save(chain)
    assert chain.is_symlink() and link.is_symlink()
    assert os.readlink(link) == os.path.join("real", "m.fastrnn")
    assert target.read_bytes() == io.model_bytes(m) and target.stat().st_mode & 0o777 == 0o640
    atomic_write(link, b"bytes")
    assert link.is_symlink() and target.read_bytes() == b"bytes"
    assert _others(tmp_path, "real", "link.fastrnn", "chain.fastrnn") == []
    assert _others(tmp_path / "real") == ["m.fastrnn"]


def test_a_dangling_symlink_creates_its_target(temporaries, tmp_path):
    link = tmp_path / "link.fastrnn"
    link.symlink_to("new.fastrnn")
    check_writable(link)
    assert not (tmp_path / "new.fastrnn").exists()           # a check writes nothing
    m = _tiny()
    m.save(link)
    assert link.is_symlink() and (tmp_path / "new.fastrnn").read_bytes() == io.model_bytes(m)
    assert fastrnn.load(link).head.weight.tobytes() == m.head.weight.tobytes()


def test_a_symlink_to_a_folder_or_a_fifo_is_refused(temporaries, tmp_path):
    fifo = _fifo(tmp_path)
    (tmp_path / "dir").mkdir()
    for target, match in ((fifo, "FIFO"), (tmp_path / "dir", "folder")):
        link = tmp_path / f"to-{target.name}"
        link.symlink_to(target)
        with pytest.raises(NotARegularFileError, match=match) as info:
            atomic_write(link, b"x")
        assert str(link) in str(info.value) and str(target) in str(info.value)
        assert link.is_symlink()


def test_a_symlink_loop_is_an_error_naming_the_path(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.symlink_to(b)
    b.symlink_to(a)
    with pytest.raises(OSError) as info:
        atomic_write(a, b"x")
    assert str(a) in str(info.value) and a.is_symlink() and b.is_symlink()


# ---- errors name the user's path ---------------------------------------------------------

def test_a_missing_folder_is_named_before_and_while_writing(temporaries, tmp_path):
    """Before, the error named the temporary file (a named one) or the folder only."""
    path = tmp_path / "missing" / "dir" / "m.fastrnn"
    for write in (lambda: atomic_write(path, b"x", what="model file"),
                  lambda: _tiny().save(path), lambda: check_writable(path)):
        with pytest.raises(FileNotFoundError, match="does not exist") as info:
            write()
        assert str(path) in str(info.value) and ".tmp" not in str(info.value)
    assert _others(tmp_path) == []


def test_a_folder_that_cannot_be_written_is_named(temporaries, tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    os.chmod(folder, 0o555)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # root writes into any folder: refuse as the kernel refuses everybody else
        real_open, real_access = os.open, os.access

        def no_entry(p, *a, **k):
            if os.path.dirname(os.fspath(p)) == str(folder) or os.fspath(p) == str(folder):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(p))
            return real_open(p, *a, **k)
        monkeypatch.setattr(os, "open", no_entry)
        monkeypatch.setattr(os, "access", lambda p, m, **k: False if os.fspath(p) == str(
            folder) else real_access(p, m, **k))
    try:
        for write in (lambda: atomic_write(folder / "m.bin", b"x"),
                      lambda: check_writable(folder / "m.bin")):
            with pytest.raises(PermissionError) as info:
                write()
            assert str(folder / "m.bin") in str(info.value)
            assert ".tmp" not in str(info.value)
    finally:
        os.chmod(folder, 0o755)
    assert os.listdir(folder) == []


@pytest.mark.parametrize("call,err", [("replace", errno.EACCES), ("fsync", errno.EIO),
                                      ("fdopen", errno.ENOSPC)])
def test_failures_while_writing_name_the_path_not_the_temporary(call, err, temporaries,
                                                                tmp_path, monkeypatch):
    path = tmp_path / "m.bin"
    path.write_bytes(b"old")

    def boom(*a, **k):
        raise OSError(err, os.strerror(err), str(tmp_path / ".fastrnn-1-000000000000.tmp"))

    monkeypatch.setattr(os, call, boom)
    with pytest.raises(OSError) as info:
        atomic_write(path, b"new", what="ONNX file")
    monkeypatch.undo()
    assert info.value.errno == err and type(info.value) is type(OSError(err, "x"))
    assert str(path) in str(info.value) and ".tmp" not in str(info.value)
    assert "ONNX file" in str(info.value) and os.strerror(err) in str(info.value)
    assert path.read_bytes() == b"old" and _others(tmp_path, "m.bin") == []


def test_check_writable_accepts_good_paths_and_writes_nothing(tmp_path):
    check_writable(tmp_path / "new.fastrnn")
    (tmp_path / "old.fastrnn").write_bytes(b"old")
    check_writable(tmp_path / "old.fastrnn")
    assert _others(tmp_path) == ["old.fastrnn"]
    assert (tmp_path / "old.fastrnn").read_bytes() == b"old"
    with pytest.raises(TypeError):
        atomic_write(tmp_path / "x", "text, not bytes")
    assert _others(tmp_path) == ["old.fastrnn"]
