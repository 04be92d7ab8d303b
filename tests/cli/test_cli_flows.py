"""What the command line does when used as intended: a word-level model keeps its level from
train to sample, predict's outputs and inputs (probabilities, logits, classes, lengths,
float64 features), Ctrl-C during train (exit 130 and one line naming what was saved), and
help that states every option's default. Each result is checked against the library call
it stands for."""
import argparse

import numpy as np
import pytest

import fastrnn
import fastrnn.cli.main as cli
from fastrnn import text as tx


def run_main(argv, capsys):
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


CORPUS = "the cat sat on the mat. the dog sat on the log. " * 40


def test_a_word_level_model_samples_words_without_being_told(tmp_path, capsys):
    (tmp_path / "c.txt").write_text(CORPUS)
    rc, out, err = run_main(["train", tmp_path / "c.txt", "--level", "word", "--hidden", "16",
                             "--seq-len", "8", "--max-steps", "3", "--quiet",
                             "--out", tmp_path / "w.fastrnn"], capsys)
    assert rc == 0, err
    model = fastrnn.load(tmp_path / "w.fastrnn")
    assert model.text_level == "word" and "cat" in model.vocabulary
    rc, out, err = run_main(["sample", tmp_path / "w.fastrnn", "--prime", "the cat",
                             "--length", "12", "--seed", "1"], capsys)
    assert rc == 0, err
    # twelve word-level tokens after the prime: the file's level, not the default char
    assert out.rstrip("\n") == "the cat" + tx.sample(model, "the cat", 12, 1.0, "word", 1)
    with pytest.raises(ValueError, match="not in the model's vocabulary"):
        tx.sample(model, "the cat", 12, 1.0, "char", 1)       # what reading it as chars gives
    rc, out, err = run_main(["similar", tmp_path / "w.fastrnn", "the cat", "the dog"],
                            capsys)
    assert rc == 0, err
    ids = [tx.encode(tx.tokenize(s, "word"), model.vocabulary)[None]
           for s in ("the cat", "the dog")]
    expected = fastrnn.cosine_similarity(*(model.encode(i, pooling="mean")[0] for i in ids))
    assert float(out) == pytest.approx(expected, abs=1e-4)


@pytest.fixture
def classifier(tmp_path):
    m = fastrnn.SequenceModel("lstm", input_size=3, hidden_size=5, output_size=4,
                              task="sequence_classification", seed=2)
    m.save(tmp_path / "clf.fastrnn")
    x = np.random.default_rng(0).standard_normal((6, 7, 3))     # float64 on purpose
    lengths = np.array([7, 1, 3, 0, 5, 7])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "len.npy", lengths.astype(np.uint8))
    return m, x, lengths


@pytest.mark.parametrize("output", [None, "probabilities", "logits", "classes"])
def test_predict_outputs_match_the_library(output, classifier, tmp_path, capsys):
    m, x, lengths = classifier
    argv = ["predict", tmp_path / "clf.fastrnn", tmp_path / "x.npy", "--lengths",
            tmp_path / "len.npy", "--out", tmp_path / "y.npy"]
    rc, out, err = run_main(argv + (["--output", output] if output else []), capsys)
    assert rc == 0, err
    y = np.load(tmp_path / "y.npy")
    x32 = x.astype(np.float32)
    if output in (None, "probabilities"):
        np.testing.assert_array_equal(y, m.predict_proba(x32, lengths))
        np.testing.assert_allclose(y.sum(-1), 1, rtol=1e-5)
    elif output == "logits":
        np.testing.assert_array_equal(y, m.predict(x32, lengths))
    else:
        np.testing.assert_array_equal(y, m.predict(x32, lengths).argmax(-1))
        assert y.dtype == np.int64


def test_predict_replaces_its_output_file_whole(classifier, tmp_path, capsys):
    """predict's --out is a result, replaced as numpy.save would (train's model file needs
    --force instead): written atomically, so a reader never sees half of it."""
    (tmp_path / "y.npy").write_bytes(b"old result")
    rc, _, err = run_main(["predict", tmp_path / "clf.fastrnn", tmp_path / "x.npy",
                           "--out", tmp_path / "y.npy"], capsys)
    assert rc == 0, err
    assert np.load(tmp_path / "y.npy").shape == (6, 4)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _interrupt_after(epochs_done):
    """A stand-in for SequenceModel.fit that runs the real fit for ``epochs_done`` epochs
    (saving as asked) and then raises KeyboardInterrupt, as Ctrl-C does."""
    real = fastrnn.SequenceModel.fit

    def fit(self, x, y, **kw):
        if epochs_done:
            real(self, x, y, **{**kw, "epochs": epochs_done})
        raise KeyboardInterrupt
    return fit


@pytest.mark.parametrize("epochs_done,checkpoint,words", [
    (0, False, ["nothing was saved"]),
    (1, False, ["{out}", "best validation loss"]),
    (1, True, ["{ckpt}", "last completed epoch", "{out}"]),
])
def test_ctrl_c_in_train_exits_130_naming_the_files(epochs_done, checkpoint, words, tmp_path,
                                                    capsys, monkeypatch):
    (tmp_path / "c.txt").write_text(CORPUS)
    out, ckpt = tmp_path / "m.fastrnn", tmp_path / "last.fastrnn"
    monkeypatch.setattr(fastrnn.SequenceModel, "fit", _interrupt_after(epochs_done))
    argv = ["train", tmp_path / "c.txt", "--hidden", "8", "--seq-len", "16", "--quiet",
            "--out", out] + (["--checkpoint", ckpt] if checkpoint else [])
    rc, _, err = run_main(argv, capsys)
    assert rc == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastrnn train: interrupted"), err
    for w in words:
        assert w.format(out=out, ckpt=ckpt) in lines[0], (w, lines[0])
    assert out.exists() == (epochs_done > 0)
    if epochs_done:
        assert isinstance(fastrnn.load(out), fastrnn.SequenceModel)


def _option_blocks(help_text):
    """{option string: its help, joined} of an argparse help text."""
    blocks, current = {}, None
    for line in help_text.splitlines():
        stripped = line.strip()
        if line.startswith("  -"):
            current = stripped.split()[0].rstrip(",")
            blocks[current] = stripped
        elif current and line.startswith("    ") and stripped:
            blocks[current] += " " + stripped
        else:
            current = None
    return blocks


def test_every_option_with_a_default_shows_it_in_help():
    parser = cli.build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    checked = 0
    for name, sub in subcommands.choices.items():
        blocks = _option_blocks(sub.format_help())
        for action in sub._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or \
                    action.default in (None, False, argparse.SUPPRESS):
                continue
            block = next(blocks[o] for o in action.option_strings if o in blocks)
            assert "default" in block, (name, action.option_strings, block)
            checked += 1
    assert checked >= 15


def test_train_force_replaces_an_existing_model(tmp_path, capsys):
    (tmp_path / "c.txt").write_text(CORPUS)
    (tmp_path / "m.fastrnn").write_bytes(b"an old model")
    argv = ["train", tmp_path / "c.txt", "--hidden", "8", "--seq-len", "16", "--max-steps",
            "2", "--quiet", "--out", tmp_path / "m.fastrnn"]
    rc, _, err = run_main(argv, capsys)
    assert rc == 1 and "--force" in err
    assert (tmp_path / "m.fastrnn").read_bytes() == b"an old model"
    rc, _, err = run_main(argv + ["--force"], capsys)
    assert rc == 0, err
    assert isinstance(fastrnn.load(tmp_path / "m.fastrnn"), fastrnn.SequenceModel)


def test_convert_to_onnx_and_back_keeps_the_vocabulary_and_level(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    lm = fastrnn.SequenceModel("gru", vocab_size=6, hidden_size=5, task="next_token", seed=4)
    lm.vocabulary, lm.text_level = ["the", " ", "cat", "sat", ".", "dog"], "word"
    lm.save(tmp_path / "lm.fastrnn")
    rc, _, err = run_main(["convert", tmp_path / "lm.fastrnn", tmp_path / "lm.onnx"], capsys)
    assert rc == 0, err
    rc, _, err = run_main(["convert", tmp_path / "lm.onnx", tmp_path / "back.fastrnn"], capsys)
    assert rc == 0, err
    back = fastrnn.load(tmp_path / "back.fastrnn")
    assert back.vocabulary == lm.vocabulary and back.text_level == "word"
    ids = np.array([[0, 1, 2, 1, 3]])
    np.testing.assert_allclose(back.predict(ids), lm.predict(ids), atol=1e-5)


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGINT") or
                    __import__("sys").platform == "win32", reason="POSIX signals")
def test_a_real_ctrl_c_in_train_exits_130_naming_the_checkpoint(tmp_path):
    """SIGINT sent to a running ``fastrnn train`` once its first checkpoint exists: one line
    on stderr naming the checkpoint, exit 130, and the checkpoint loads."""
    import signal
    import subprocess
    import sys
    import time
    (tmp_path / "c.txt").write_text(CORPUS * 4)
    ckpt, out = tmp_path / "last.fastrnn", tmp_path / "m.fastrnn"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastrnn", "train", str(tmp_path / "c.txt"), "--hidden", "16",
         "--seq-len", "16", "--epochs", "100000", "--quiet", "--out", str(out),
         "--checkpoint", str(ckpt)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert ckpt.exists(), "no checkpoint within 120 s"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0] and str(ckpt) in lines[0], err
    assert isinstance(fastrnn.load(ckpt), fastrnn.SequenceModel)
