"""Fuzz target: ``fastrnn.io.load_bytes`` on arbitrary bytes (atheris, libFuzzer).

The contract under test: for any bytes, loading returns a model or raises
``fastrnn.io.ModelFileError``. Any other exception is a finding (atheris reports it as an
uncaught exception and writes the input to ``crash-<sha1>``), and so is a crash, a hang
past ``-timeout`` or memory past ``-rss_limit_mb``.

Each input is loaded twice: as given, and with its metadata checksum recomputed (when the
header is a JSON object with a ``__metadata__`` object). Random mutations almost never keep
a sha256 valid, so without the second load the fuzzer would only ever exercise the checks
that run before the checksum; with it, it reaches the architecture, tensor index, size and
model-building checks behind it.

Run it (needs ``pip install atheris``; 3.0.0 has Linux wheels for CPython 3.11):

    python tests/fuzz_load.py -dict=tests/fuzz_load.dict -max_total_time=600 \\
        -rss_limit_mb=2048 -timeout=10 NEW_CORPUS_DIR tests/golden/v1

The first corpus folder is where libFuzzer adds the inputs it finds interesting, so give it
an empty scratch folder; ``tests/golden/v1`` seeds it with real files of every kind.
``tests/robustness/test_hostile_files.py::test_fuzz_load_short_run`` runs it for a few seconds.
"""
import json
import pathlib
import struct
import sys

import atheris

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))   # the repository root

with atheris.instrument_imports(include=["fastrnn"]):
    import fastrnn.io as fio

# OpenMP/BLAS threads are never needed to load (no kernel runs), keep the fuzzer lean
fio_load, ModelFileError = fio.load_bytes, fio.ModelFileError


def rechecksummed(data):
    """``data`` with a valid checksum, or None when its header is not a JSON object with a
    ``__metadata__`` object of strings (then there is no checksum to recompute)."""
    if len(data) < 8:
        return None
    n = struct.unpack("<Q", data[:8])[0]
    if n > min(len(data) - 8, fio.MAX_HEADER):
        return None
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        return None
    try:
        meta["sha256"] = fio._checksum(meta, data[8 + n:])
        text = json.dumps(header).encode()
    except (UnicodeEncodeError, ValueError, RecursionError):
        return None
    return struct.pack("<Q", len(text)) + text + data[8 + n:]


def TestOneInput(data):
    for blob in (data, rechecksummed(data)):
        if blob is None:
            continue
        for with_optimizer in (False, True):
            try:
                fio_load(blob, "fuzz", with_optimizer=with_optimizer)
            except ModelFileError:
                pass


def main():
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
