"""Data for the experiments: synthetic long-lag tasks and loaders for the real data sets.

Synthetic tasks return float32 inputs and targets for ``SequenceModel`` (batch-first):
    adding_problem  x (n, T, 2), y (n, 1)   (fastrnn.cli.demo's generator)
    copy_memory     x (n, T + 20) token ids, y (n, T + 20) token ids
Real data (found in ``../shared/data`` from the repository root, or a folder given):
    jsb_chorales    dict split -> list of piano rolls (L, 88) float32
    tiny_shakespeare  (train text, validation text): first 90%, last 10%
"""
import json
import os

import numpy as np

from fastrnn.cli.demo import adding_problem, BASELINE_MSE as ADDING_BASELINE_MSE  # noqa: F401

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        os.pardir, "shared", "data")

COPY_SYMBOLS = 8          # symbols 1..8 to remember; 0 = blank, 9 = "recall now"
COPY_LENGTH = 10          # how many symbols to copy
BLANK, RECALL = 0, COPY_SYMBOLS + 1


def copy_memory(n, T, rng):
    """The copying memory problem (Arjovsky, Shah & Bengio 2016, after Hochreiter &
    Schmidhuber 1997): 10 random symbols from 1..8, then T-1 blanks, a recall marker, and
    10 more blanks (length T + 20). The target is blank everywhere except the last 10
    steps, which must repeat the first 10 symbols. Returns x, y (n, T + 20) int64."""
    L = T + 2 * COPY_LENGTH
    symbols = rng.integers(1, COPY_SYMBOLS + 1, (n, COPY_LENGTH))
    x = np.full((n, L), BLANK, np.int64)
    x[:, :COPY_LENGTH] = symbols
    x[:, COPY_LENGTH + T - 1] = RECALL
    y = np.full((n, L), BLANK, np.int64)
    y[:, -COPY_LENGTH:] = symbols
    return x, y


def copy_memory_baseline(T):
    """Cross-entropy per step (nats) of the memoryless best guess: blanks where the target
    is surely blank, a uniform guess among the 8 symbols in the last 10 steps."""
    return COPY_LENGTH * np.log(COPY_SYMBOLS) / (T + 2 * COPY_LENGTH)


PIANO_LOW, PIANO_KEYS = 21, 88          # MIDI notes 21..108


def piano_roll(chorale):
    """A chorale (list of steps, each a list of MIDI notes) -> (L, 88) float32 of 0/1."""
    roll = np.zeros((len(chorale), PIANO_KEYS), np.float32)
    for t, notes in enumerate(chorale):
        for note in notes:
            if not PIANO_LOW <= note < PIANO_LOW + PIANO_KEYS:
                raise ValueError(f"step {t}: MIDI note {note} outside the piano's 21..108")
            roll[t, note - PIANO_LOW] = 1
    return roll


def jsb_chorales(data_dir=DATA_DIR):
    """{"train": [...], "valid": [...], "test": [...]} of piano rolls (L, 88)."""
    with open(os.path.join(data_dir, "jsb-chorales-quarter.json")) as f:
        raw = json.load(f)
    if set(raw) != {"train", "valid", "test"}:
        raise ValueError(f"expected train/valid/test splits, got {sorted(raw)}")
    return {split: [piano_roll(c) for c in chorales] for split, chorales in raw.items()}


def next_step_pairs(rolls):
    """Inputs and targets for next-step prediction: x = roll[:-1], y = roll[1:] per
    chorale, padded to (N, T, 88), with lengths (N,)."""
    lengths = np.array([len(r) - 1 for r in rolls])
    if lengths.min() < 1:
        raise ValueError("every chorale needs at least 2 steps")
    x = np.zeros((len(rolls), lengths.max(), PIANO_KEYS), np.float32)
    y = np.zeros_like(x)
    for k, r in enumerate(rolls):
        x[k, :len(r) - 1], y[k, :len(r) - 1] = r[:-1], r[1:]
    return x, y, lengths


def nll_per_step(logits, targets, lengths):
    """Negative log-likelihood per time step of independent Bernoulli notes: the sum over
    the 88 notes of the binary cross-entropy, averaged over every valid step of every
    sequence (the score of Boulanger-Lewandowski et al. 2012 and Chung et al. 2014)."""
    x = logits.astype(np.float64)
    per_note = np.maximum(x, 0) - x * targets + np.log1p(np.exp(-np.abs(x)))   # (N, T, 88)
    valid = np.arange(x.shape[1])[None, :] < np.asarray(lengths)[:, None]       # (N, T)
    return float(per_note.sum(axis=2)[valid].sum() / valid.sum())


def tiny_shakespeare(data_dir=DATA_DIR):
    """(train, valid) text: the first 90% and the last 10% of the corpus."""
    with open(os.path.join(data_dir, "tinyshakespeare.txt"), encoding="utf-8") as f:
        text = f.read()
    cut = int(len(text) * 0.9)
    return text[:cut], text[cut:]
