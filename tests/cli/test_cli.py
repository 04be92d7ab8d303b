"""Command line and text models: train -> sample / similar / predict, info, streaming."""
import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn import text as tx


def run(*args, cwd=None):
    out = subprocess.run([sys.executable, "-m", "fastrnn", *args], capture_output=True,
                         text=True, timeout=300, cwd=cwd)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    corpus = "the cat sat on the mat. the dog sat on the log. " * 60
    (d / "corpus.txt").write_text(corpus)
    out = run("train", str(d / "corpus.txt"), "--hidden", "32", "--epochs", "3",
              "--seq-len", "32", "--out", str(d / "lm.fastrnn"), "--lr", "0.01")
    return d / "lm.fastrnn", out


def test_train_learns_and_saves_a_vocabulary(text_model):
    path, out = text_model
    model = fastrnn.load(path)
    assert sorted(model.vocabulary) == sorted(set("the cat sat on mat. dog log"))
    loss = float(out.split("validation loss ")[1].split()[0])
    assert loss < np.log(len(model.vocabulary)) * 0.5       # far below a uniform guess


def test_sample_is_seeded_and_uses_the_vocabulary(text_model):
    path, _ = text_model
    a = run("sample", str(path), "--prime", "the ", "--length", "40", "--seed", "3",
            "--temperature", "0.5")
    b = run("sample", str(path), "--prime", "the ", "--length", "40", "--seed", "3",
            "--temperature", "0.5")
    assert a == b and a.startswith("the ") and len(a.rstrip("\n")) == 44
    assert set(a.rstrip("\n")) <= set("the cat sat on mat. dog log")


def test_similar_and_predict(text_model, tmp_path):
    path, _ = text_model
    same = float(run("similar", str(path), "the cat", "the cat"))
    assert same == pytest.approx(1.0, abs=1e-4)
    ids = tx.encode(tx.tokenize("the dog sat", "char"), fastrnn.load(path).vocabulary)[None]
    np.save(tmp_path / "x.npy", ids)
    run("predict", str(path), str(tmp_path / "x.npy"), "--out", str(tmp_path / "y.npy"))
    y = np.load(tmp_path / "y.npy")
    assert y.shape == (1, ids.shape[1], len(fastrnn.load(path).vocabulary))
    np.testing.assert_allclose(y.sum(-1), 1, rtol=1e-5)


def test_info_names_blas_and_openmp():
    out = run("info")
    assert "openblas" in out and "openmp   True" in out


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_model_step_equals_forward(cell):
    m = fastrnn.SequenceModel(cell, vocab_size=6, hidden_size=8, task="next_token",
                              num_layers=2, seed=0)
    ids = np.random.default_rng(0).integers(0, 6, (3, 7))
    full = m.predict(ids)
    state = m.initial_state(3)
    steps = []
    for t in range(7):
        y, state = m.step(ids[:, t], state)
        steps.append(y)
    np.testing.assert_allclose(np.stack(steps, axis=1), full, rtol=1e-5, atol=1e-6)


def test_word_level_tokens_round_trip():
    s = "Hello, world!  It's 2 o'clock."
    assert "".join(tx.tokenize(s, "word")) == s
    with pytest.raises(ValueError, match="level"):
        tx.tokenize(s, "byte")
    with pytest.raises(ValueError, match="vocabulary"):
        tx.encode(["zz"], ["a", "b"])


def test_model_step_refuses_bidirectional_and_matches_layer_step():
    m = fastrnn.SequenceModel("gru", input_size=3, hidden_size=8, output_size=2,
                              task="regression", bidirectional=True, seed=0)
    with pytest.raises(ValueError, match="bidirectional"):
        m.step(np.zeros((1, 3), np.float32), m.initial_state(1))
