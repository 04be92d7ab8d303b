"""Every user mistake on the command line ends in one line on stderr and a documented exit
status (2: usage, 1: anything else), never a traceback unless ``--debug`` is given.

Each row of ``MISTAKES`` is one mistake, run in-process through ``fastrnn.cli.main.main``;
the check is the exit status, exactly one line on stderr, no "Traceback", and the words the
message must hold (the path or the option it is about). Mistakes that could block (a FIFO)
run in a subprocess with a timeout.
"""
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn.cli.main import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    """A folder of files, good and bad, that the mistakes below name as {d}/..."""
    d = tmp_path_factory.mktemp("cli_errors")
    lm = fastrnn.SequenceModel("gru", vocab_size=5, hidden_size=4, task="next_token", seed=0)
    lm.vocabulary = list("abcde")
    lm.text_level = "char"
    lm.save(d / "lm.fastrnn")
    no_vocab = fastrnn.SequenceModel("gru", vocab_size=5, hidden_size=4, task="next_token",
                                     seed=0)
    no_vocab.save(d / "novocab.fastrnn")
    fastrnn.SequenceModel("gru", input_size=3, hidden_size=4, output_size=2,
                          task="sequence_classification", seed=0).save(d / "clf.fastrnn")
    fastrnn.SequenceModel("gru", input_size=3, hidden_size=4, output_size=1,
                          task="sequence_regression", seed=0).save(d / "reg.fastrnn")
    fastrnn.io.save(fastrnn.GRU(3, 4), d / "layer.fastrnn")
    fastrnn.io.save(fastrnn.GRUCell(3, 4), d / "cell.fastrnn")
    np.save(d / "x.npy", np.zeros((2, 3, 3), np.float32))
    np.save(d / "x2d.npy", np.zeros((2, 3), np.float32))
    np.save(d / "x4.npy", np.zeros((2, 3, 4), np.float32))
    np.save(d / "xcomplex.npy", np.zeros((2, 3, 3), np.complex64))
    np.save(d / "ids.npy", np.zeros((2, 3), np.int64))
    np.save(d / "ids_big.npy", np.full((2, 3), 9))
    np.save(d / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(d / "len.npy", np.array([3, 1]))
    np.save(d / "len_long.npy", np.array([4, 1]))
    np.save(d / "len_neg.npy", np.array([-1, 1]))
    np.save(d / "len_float.npy", np.array([3.0, 1.0]))
    np.save(d / "len3.npy", np.array([3, 1, 2]))
    (d / "trunc.npy").write_bytes((d / "x.npy").read_bytes()[:100])
    (d / "notes.txt").write_text("hello world\n" * 40)
    (d / "tiny.txt").write_text("hello world\n")
    (d / "zero.txt").write_bytes(b"")
    (d / "latin.txt").write_bytes("caf\xe9 au lait ".encode("latin-1") * 50)
    (d / "junk.pt").write_bytes(b"not a torch file")
    (d / "folder").mkdir()
    (d / "taken.fastrnn").write_bytes(b"someone's model")
    # a safetensors header nested 100,000 deep: json.loads raises RecursionError on it
    header = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    (d / "deep.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    (d / "deep.fastrnn").write_bytes((d / "deep.safetensors").read_bytes())
    return d


# (argv, exit status, words the one stderr line must hold); {d} is the fixture's folder
MISTAKES = {
    # ---- the command itself
    "no command": ([], 2, ["command"]),
    "unknown command": (["nonsense"], 2, ["nonsense"]),
    # ---- demo
    "demo T=0": (["demo", "--T", "0"], 2, ["--T", "'0'"]),
    "demo T=1": (["demo", "--T", "1"], 2, ["--T", "2"]),
    "demo T not a number": (["demo", "--T", "ten"], 2, ["--T", "ten"]),
    "demo negative seed": (["demo", "--seed", "-1"], 2, ["--seed"]),
    "demo plot in a missing folder": (["demo", "--plot", "{d}/missing/p.svg"], 1,
                                      ["{d}/missing/p.svg", "does not exist"]),
    "demo plot is a folder": (["demo", "--plot", "{d}/folder"], 1, ["{d}/folder", "folder"]),
    # ---- check, bench, info
    "check 0 threads": (["check", "--threads", "0"], 2, ["--threads", "'0'"]),
    "check threads not a number": (["check", "--threads", "x"], 2, ["--threads"]),
    "check too many threads": (["check", "--threads", "100000000"], 2, ["--threads"]),
    "bench 0 threads": (["bench", "--threads", "0"], 2, ["--threads"]),
    "bench no thread count": (["bench", "--threads"], 2, ["--threads"]),
    "bench chart in a missing folder": (["bench", "--quick", "--chart", "{d}/missing/c.png"],
                                        1, ["{d}/missing/c.png", "does not exist"]),
    "info extra argument": (["info", "extra"], 2, ["extra"]),
    # ---- train
    "train missing file": (["train", "{d}/missing.txt"], 1,
                           ["{d}/missing.txt", "does not exist"]),
    "train no file": (["train"], 2, ["file"]),
    "train a folder": (["train", "{d}/folder"], 1, ["{d}/folder", "folder"]),
    "train empty text": (["train", "{d}/zero.txt", "--out", "{d}/new.fastrnn"], 1,
                         ["{d}/zero.txt", "empty"]),
    "train non-UTF-8 text": (["train", "{d}/latin.txt", "--out", "{d}/new.fastrnn"], 1,
                             ["{d}/latin.txt", "UTF-8", "0xe9"]),
    "train text too short": (["train", "{d}/tiny.txt", "--out", "{d}/new.fastrnn"], 1,
                             ["{d}/tiny.txt", "--seq-len 64", "too short"]),
    "train seq-len 0": (["train", "{d}/notes.txt", "--seq-len", "0"], 2, ["--seq-len", "'0'"]),
    "train seq-len negative": (["train", "{d}/notes.txt", "--seq-len", "-3"], 2,
                               ["--seq-len", "'-3'"]),
    "train seq-len not a number": (["train", "{d}/notes.txt", "--seq-len", "4.5"], 2,
                                   ["--seq-len", "'4.5'"]),
    "train hidden 0": (["train", "{d}/notes.txt", "--hidden", "0"], 2, ["--hidden"]),
    "train layers 0": (["train", "{d}/notes.txt", "--layers", "0"], 2, ["--layers"]),
    "train batch-size 0": (["train", "{d}/notes.txt", "--batch-size", "0"], 2,
                           ["--batch-size"]),
    "train epochs 0": (["train", "{d}/notes.txt", "--epochs", "0"], 2, ["--epochs"]),
    "train max-steps 0": (["train", "{d}/notes.txt", "--max-steps", "0"], 2, ["--max-steps"]),
    "train max-vocab 1": (["train", "{d}/notes.txt", "--max-vocab", "1"], 2, ["--max-vocab"]),
    "train lr 0": (["train", "{d}/notes.txt", "--lr", "0"], 2, ["--lr"]),
    "train lr negative": (["train", "{d}/notes.txt", "--lr", "-0.1"], 2, ["--lr"]),
    "train lr nan": (["train", "{d}/notes.txt", "--lr", "nan"], 2, ["--lr"]),
    "train lr inf": (["train", "{d}/notes.txt", "--lr", "inf"], 2, ["--lr"]),
    "train seed negative": (["train", "{d}/notes.txt", "--seed", "-1"], 2, ["--seed"]),
    "train unknown level": (["train", "{d}/notes.txt", "--level", "byte"], 2, ["--level"]),
    "train unknown cell": (["train", "{d}/notes.txt", "--cell", "tcn"], 2, ["--cell"]),
    "train out in a missing folder": (["train", "{d}/notes.txt", "--out",
                                       "{d}/missing/m.fastrnn"], 1,
                                      ["{d}/missing/m.fastrnn", "does not exist"]),
    "train out is a folder": (["train", "{d}/notes.txt", "--out", "{d}/folder"], 1,
                              ["{d}/folder", "folder"]),
    "train out exists": (["train", "{d}/notes.txt", "--out", "{d}/taken.fastrnn"], 1,
                         ["{d}/taken.fastrnn", "--force"]),
    "train checkpoint exists": (["train", "{d}/notes.txt", "--out", "{d}/new.fastrnn",
                                 "--checkpoint", "{d}/taken.fastrnn"], 1,
                                ["{d}/taken.fastrnn", "--force"]),
    "train checkpoint is out": (["train", "{d}/notes.txt", "--out", "{d}/new.fastrnn",
                                 "--checkpoint", "{d}/new.fastrnn"], 1,
                                ["--checkpoint", "--out"]),
    "train checkpoint in a missing folder": (["train", "{d}/notes.txt", "--out",
                                              "{d}/new.fastrnn", "--checkpoint",
                                              "{d}/missing/c.fastrnn"], 1,
                                             ["{d}/missing/c.fastrnn"]),
    # ---- sample
    "sample missing model": (["sample", "{d}/missing.fastrnn"], 1,
                             ["{d}/missing.fastrnn", "does not exist"]),
    "sample a folder": (["sample", "{d}/folder"], 1, ["{d}/folder", "folder"]),
    "sample a text file": (["sample", "{d}/notes.txt"], 1, ["{d}/notes.txt", "fastrnn"]),
    "sample an empty file": (["sample", "{d}/zero.txt"], 1, ["{d}/zero.txt"]),
    "sample a nested header": (["sample", "{d}/deep.fastrnn"], 1, ["{d}/deep.fastrnn"]),
    "sample a layer file": (["sample", "{d}/layer.fastrnn"], 1,
                            ["{d}/layer.fastrnn", "SequenceModel", "GRU"]),
    "sample a cell file": (["sample", "{d}/cell.fastrnn"], 1,
                           ["{d}/cell.fastrnn", "SequenceModel", "GRUCell"]),
    "sample no vocabulary": (["sample", "{d}/novocab.fastrnn"], 1,
                             ["{d}/novocab.fastrnn", "vocabulary"]),
    "sample a feature model": (["sample", "{d}/clf.fastrnn"], 1,
                               ["{d}/clf.fastrnn", "vocabulary"]),
    "sample negative length": (["sample", "{d}/lm.fastrnn", "--length", "-1"], 2,
                               ["--length"]),
    "sample temperature 0": (["sample", "{d}/lm.fastrnn", "--temperature", "0"], 2,
                             ["--temperature"]),
    "sample temperature nan": (["sample", "{d}/lm.fastrnn", "--temperature", "nan"], 2,
                               ["--temperature"]),
    "sample negative seed": (["sample", "{d}/lm.fastrnn", "--seed", "-2"], 2, ["--seed"]),
    "sample prime outside the vocabulary": (["sample", "{d}/lm.fastrnn", "--prime", "xyz"], 1,
                                            ["--prime", "'x'"]),
    "sample level contradicts the file": (["sample", "{d}/lm.fastrnn", "--level", "word"], 1,
                                          ["--level word", "char", "{d}/lm.fastrnn"]),
    "sample no model": (["sample"], 2, ["model"]),
    # ---- predict
    "predict missing model": (["predict", "{d}/missing.fastrnn", "{d}/x.npy"], 1,
                              ["{d}/missing.fastrnn", "does not exist"]),
    "predict a text file as model": (["predict", "{d}/notes.txt", "{d}/x.npy"], 1,
                                     ["{d}/notes.txt"]),
    "predict a layer file": (["predict", "{d}/layer.fastrnn", "{d}/x.npy"], 1,
                             ["{d}/layer.fastrnn", "SequenceModel", "GRU"]),
    "predict a cell file": (["predict", "{d}/cell.fastrnn", "{d}/x.npy"], 1,
                            ["{d}/cell.fastrnn", "SequenceModel", "GRUCell"]),
    "predict missing input": (["predict", "{d}/clf.fastrnn", "{d}/missing.npy"], 1,
                              ["{d}/missing.npy", "does not exist"]),
    "predict input is a folder": (["predict", "{d}/clf.fastrnn", "{d}/folder"], 1,
                                  ["{d}/folder", "folder"]),
    "predict input is text": (["predict", "{d}/clf.fastrnn", "{d}/notes.txt"], 1,
                              ["{d}/notes.txt", "not a .npy"]),
    "predict input is empty": (["predict", "{d}/clf.fastrnn", "{d}/zero.txt"], 1,
                               ["{d}/zero.txt", "not a .npy"]),
    "predict input is a model": (["predict", "{d}/clf.fastrnn", "{d}/clf.fastrnn"], 1,
                                 ["{d}/clf.fastrnn", "not a .npy"]),
    "predict input holds objects": (["predict", "{d}/clf.fastrnn", "{d}/obj.npy"], 1,
                                    ["{d}/obj.npy", "object"]),
    "predict input truncated": (["predict", "{d}/clf.fastrnn", "{d}/trunc.npy"], 1,
                                ["{d}/trunc.npy"]),
    "predict complex features": (["predict", "{d}/clf.fastrnn", "{d}/xcomplex.npy"], 1,
                                 ["{d}/xcomplex.npy", "complex64"]),
    "predict 2-D features": (["predict", "{d}/clf.fastrnn", "{d}/x2d.npy"], 1,
                             ["{d}/x2d.npy", "3-D"]),
    "predict wrong feature count": (["predict", "{d}/clf.fastrnn", "{d}/x4.npy"], 1,
                                    ["{d}/x4.npy", "features"]),
    "predict floats into a token model": (["predict", "{d}/lm.fastrnn", "{d}/x.npy"], 1,
                                          ["{d}/x.npy", "token ids"]),
    "predict ids outside the vocabulary": (["predict", "{d}/lm.fastrnn", "{d}/ids_big.npy"], 1,
                                           ["{d}/ids_big.npy", "[0, 5)"]),
    "predict missing lengths": (["predict", "{d}/clf.fastrnn", "{d}/x.npy", "--lengths",
                                 "{d}/missing.npy"], 1, ["{d}/missing.npy", "does not exist"]),
    "predict lengths too long": (["predict", "{d}/clf.fastrnn", "{d}/x.npy", "--lengths",
                                  "{d}/len_long.npy"], 1, ["{d}/len_long.npy", "T=3"]),
    "predict lengths negative": (["predict", "{d}/clf.fastrnn", "{d}/x.npy", "--lengths",
                                  "{d}/len_neg.npy"], 1, ["{d}/len_neg.npy"]),
    "predict lengths float": (["predict", "{d}/clf.fastrnn", "{d}/x.npy", "--lengths",
                               "{d}/len_float.npy"], 1, ["{d}/len_float.npy", "lengths"]),
    "predict lengths wrong count": (["predict", "{d}/clf.fastrnn", "{d}/x.npy", "--lengths",
                                     "{d}/len3.npy"], 1, ["{d}/len3.npy", "lengths"]),
    "predict lengths are text": (["predict", "{d}/clf.fastrnn", "{d}/x.npy", "--lengths",
                                  "{d}/notes.txt"], 1, ["{d}/notes.txt", "not a .npy"]),
    "predict out in a missing folder": (["predict", "{d}/clf.fastrnn", "{d}/x.npy", "--out",
                                         "{d}/missing/y.npy"], 1,
                                        ["{d}/missing/y.npy", "does not exist"]),
    "predict out is a folder": (["predict", "{d}/clf.fastrnn", "{d}/x.npy", "--out",
                                 "{d}/folder"], 1, ["{d}/folder", "folder"]),
    "predict unknown output": (["predict", "{d}/clf.fastrnn", "{d}/x.npy", "--output", "odds"],
                               2, ["--output"]),
    "predict probabilities of a regression": (["predict", "{d}/reg.fastrnn", "{d}/x.npy",
                                               "--output", "probabilities"], 1,
                                              ["--output probabilities", "regression"]),
    "predict classes of a regression": (["predict", "{d}/reg.fastrnn", "{d}/x.npy",
                                         "--output", "classes"], 1,
                                        ["--output classes", "regression"]),
    "predict no input": (["predict", "{d}/clf.fastrnn"], 2, ["input"]),
    # ---- similar
    "similar missing model": (["similar", "{d}/missing.fastrnn", "a", "b"], 1,
                              ["{d}/missing.fastrnn", "does not exist"]),
    "similar no vocabulary": (["similar", "{d}/novocab.fastrnn", "ab", "cd"], 1,
                              ["{d}/novocab.fastrnn", "vocabulary"]),
    "similar a feature model": (["similar", "{d}/clf.fastrnn", "ab", "cd"], 1,
                                ["{d}/clf.fastrnn", "vocabulary"]),
    "similar a layer file": (["similar", "{d}/layer.fastrnn", "ab", "cd"], 1,
                             ["{d}/layer.fastrnn", "SequenceModel"]),
    "similar text outside the vocabulary": (["similar", "{d}/lm.fastrnn", "ab", "xy"], 1,
                                            ["second text", "'x'"]),
    "similar empty text": (["similar", "{d}/lm.fastrnn", "", "ab"], 1, ["first text", "empty"]),
    "similar level contradicts the file": (["similar", "{d}/lm.fastrnn", "ab", "cd", "--level",
                                            "word"], 1, ["--level word", "{d}/lm.fastrnn"]),
    "similar unknown pooling": (["similar", "{d}/lm.fastrnn", "ab", "cd", "--pooling", "max"],
                                2, ["--pooling"]),
    "similar one text": (["similar", "{d}/lm.fastrnn", "ab"], 2, ["b"]),
    # ---- convert
    "convert missing .pt": (["convert", "{d}/missing.pt", "{d}/out.fastrnn"], 1,
                            ["{d}/missing.pt", "does not exist"]),
    "convert a folder": (["convert", "{d}/folder", "{d}/out.fastrnn"], 1,
                         ["{d}/folder", "folder"]),
    "convert a nested safetensors header": (["convert", "{d}/deep.safetensors",
                                             "{d}/out.fastrnn"], 1, ["{d}/deep.safetensors"]),
    "convert a text file": (["convert", "{d}/notes.txt", "{d}/out.fastrnn"], 1,
                            ["{d}/notes.txt", "text"]),
    "convert an empty file": (["convert", "{d}/zero.txt", "{d}/out.fastrnn"], 1,
                              ["{d}/zero.txt", "empty"]),
    "convert junk named .pt": (["convert", "{d}/junk.pt", "{d}/out.fastrnn"], 1,
                               ["{d}/junk.pt", "refused"]),
    "convert a .npy": (["convert", "{d}/x.npy", "{d}/out.fastrnn"], 1,
                       ["{d}/x.npy", "numpy"]),
    "convert to an unknown extension": (["convert", "{d}/layer.fastrnn", "{d}/out.h5"], 1,
                                        ["{d}/out.h5", "'.h5'"]),
    "convert into a missing folder": (["convert", "{d}/layer.fastrnn",
                                       "{d}/missing/out.fastrnn"], 1,
                                      ["{d}/missing/out.fastrnn", "does not exist"]),
    "convert onto a folder": (["convert", "{d}/layer.fastrnn", "{d}/folder"], 1,
                              ["{d}/folder", "folder"]),
    "convert unknown kind": (["convert", "{d}/layer.fastrnn", "{d}/o.pt", "--kind", "tcn"], 2,
                             ["--kind"]),
    "convert state-dict hints on a fastrnn file": (["convert", "{d}/layer.fastrnn",
                                                    "{d}/o.fastrnn", "--kind", "gru"], 1,
                                                   ["--kind", "state dicts"]),
    "convert prefix on a fastrnn file": (["convert", "{d}/layer.fastrnn", "{d}/o.fastrnn",
                                          "--prefix", "rnn."], 1, ["--prefix", "state dicts"]),
    "convert no output": (["convert", "{d}/layer.fastrnn"], 2, ["output"]),
}


def run_main(argv, capsys):
    """(exit status, stdout, stderr) of main(argv) in this process."""
    try:
        rc = main(argv)
    except SystemExit as exc:                      # argparse's usage errors and --help
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def fill(items, d):
    return [s.replace("{d}", str(d)) for s in items]


@pytest.mark.parametrize("name", list(MISTAKES))
def test_a_mistake_is_one_line_and_an_exit_status(name, d, capsys):
    argv, status, words = MISTAKES[name]
    rc, _, err = run_main(fill(argv, d), capsys)
    lines = err.strip().splitlines()
    assert rc == status, (rc, err)
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("fastrnn"), lines[0]
    for word in fill(words, d):
        assert word in lines[0], (word, lines[0])
    assert not (d / "new.fastrnn").exists()             # nothing trained, nothing written
    assert not (d / "out.fastrnn").exists()
    assert (d / "taken.fastrnn").read_bytes() == b"someone's model"


def test_the_error_line_names_the_command(d, capsys):
    rc, _, err = run_main(fill(["predict", "{d}/clf.fastrnn", "{d}/missing.npy"], d), capsys)
    assert rc == 1 and err.startswith("fastrnn predict: error: ")
    rc, _, err = run_main(["train", "--seq-len", "0", "x.txt"], capsys)
    assert rc == 2 and err.startswith("fastrnn train: error: argument --seq-len")


@pytest.mark.parametrize("argv", [
    ["--debug", "predict", "{d}/clf.fastrnn", "{d}/missing.npy"],
    ["predict", "{d}/clf.fastrnn", "{d}/missing.npy", "--debug"],
    ["sample", "{d}/layer.fastrnn", "--debug"],
])
def test_debug_shows_the_traceback(argv, d, capsys):
    rc, _, err = run_main(fill(argv, d), capsys)
    assert rc == 1
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("fastrnn ")    # the one line still ends it


def test_an_unexpected_failure_is_still_one_line(d, capsys, monkeypatch):
    """A bug of fastrnn's (here: a KeyError deep in a command) is reported in one line that
    says so and points to --debug; the traceback comes with --debug."""
    import fastrnn.cli.main as cli

    def broken(args):
        raise KeyError("weight_hh_l0")
    monkeypatch.setattr(cli, "_info", broken)
    rc, _, err = run_main(["info"], capsys)
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert "KeyError" in err and "--debug" in err and "Traceback" not in err
    rc, _, err = run_main(["--debug", "info"], capsys)
    assert rc == 1 and "Traceback" in err and "weight_hh_l0" in err


def test_help_states_the_exit_statuses(capsys):
    rc, out, _ = run_main(["--help"], capsys)
    assert rc == 0
    for words in ("0 ", "1 ", "2 ", "130 ", "--debug"):
        assert words in out, words


def _cli(*argv, timeout=60):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "fastrnn", *map(str, argv)],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("command", [["train", "{fifo}"], ["sample", "{fifo}"],
                                     ["predict", "{d}/clf.fastrnn", "{fifo}"],
                                     ["predict", "{fifo}", "{d}/x.npy"],
                                     ["convert", "{fifo}", "{d}/out.fastrnn"]])
def test_a_fifo_is_refused_without_blocking(command, d, tmp_path):
    """A FIFO with no writer would block open() forever: refused from its stat, in a
    subprocess so that a regression fails on the timeout instead of hanging the suite."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    argv = [a.replace("{fifo}", str(fifo)).replace("{d}", str(d)) for a in command]
    done = _cli(*argv)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert str(fifo) in lines[0] and "FIFO" in lines[0]


def test_the_entry_point_exits_with_the_status(d):
    done = _cli("predict", d / "layer.fastrnn", d / "x.npy")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("fastrnn predict: error: ")
    done = _cli("train", d / "notes.txt", "--seq-len", "0")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1


def test_a_closed_stdout_is_not_a_traceback(d):
    """`fastrnn sample ... | head -c 0`: the reader has gone; the command ends quietly."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "fastrnn", "sample", str(d / "lm.fastrnn"),
                             "--length", "10", "--seed", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and err == b"", err
