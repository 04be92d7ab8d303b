"""The experiments' task generators and data loaders (experiments/tasks.py): shapes, label
correctness against a direct definition, determinism. The real data sets are read from
../shared/data when it is there (the project never needs it to install or run)."""
import os

import numpy as np
import pytest

from experiments import tasks


def test_copy_memory_targets_repeat_the_symbols_after_the_marker():
    x, y = tasks.copy_memory(50, 30, np.random.default_rng(0))
    assert x.shape == y.shape == (50, 50) and x.dtype == y.dtype == np.int64
    for xi, yi in zip(x, y):
        marker = np.flatnonzero(xi == tasks.RECALL)
        assert marker.tolist() == [10 + 30 - 1]                    # one recall marker
        assert set(xi[:10]) <= set(range(1, 9))                    # symbols first
        assert (xi[10:] != 0).sum() == 1                           # then blanks and the marker
        np.testing.assert_array_equal(yi[-10:], xi[:10])           # recalled at the end
        assert (yi[:-10] == 0).all()
    x2, y2 = tasks.copy_memory(50, 30, np.random.default_rng(0))
    np.testing.assert_array_equal(x, x2)


def test_copy_memory_baseline_is_the_memoryless_cross_entropy():
    # a guess that is blank with certainty for the first T+10 steps and uniform over the 8
    # symbols for the last 10: cross-entropy 10 ln 8 per sequence
    T = 100
    assert tasks.copy_memory_baseline(T) == pytest.approx(10 * np.log(8) / 120)


def test_adding_problem_sums_the_two_marked_numbers():
    x, y = tasks.adding_problem(20, 40, np.random.default_rng(1))
    assert x.shape == (20, 40, 2) and y.shape == (20, 1)
    for xi, yi in zip(x, y):
        marked = np.flatnonzero(xi[:, 1])
        assert len(marked) == 2 and marked[0] < 20 <= marked[1]
        assert yi[0] == pytest.approx(xi[marked, 0].sum())


def test_piano_roll_and_next_step_pairs():
    rolls = [tasks.piano_roll([[60, 64], [21], [108, 60]]), tasks.piano_roll([[70], [71]])]
    assert rolls[0].shape == (3, 88)
    assert rolls[0][0].nonzero()[0].tolist() == [39, 43] and rolls[0][1, 0] == 1
    assert rolls[0][2, 87] == 1
    x, y, lengths = tasks.next_step_pairs(rolls)
    assert x.shape == y.shape == (2, 2, 88) and lengths.tolist() == [2, 1]
    np.testing.assert_array_equal(x[0], rolls[0][:2])
    np.testing.assert_array_equal(y[0], rolls[0][1:])
    assert not x[1, 1].any() and not y[1, 1].any()                 # padding
    with pytest.raises(ValueError, match="outside"):
        tasks.piano_roll([[20]])


def test_nll_per_step_against_bernoulli_likelihood():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((2, 3, 88))
    targets = (rng.random((2, 3, 88)) < 0.1).astype(np.float32)
    lengths = np.array([3, 1])
    p = 1 / (1 + np.exp(-logits))
    ll = targets * np.log(p) + (1 - targets) * np.log(1 - p)        # (2, 3, 88)
    want = -(ll[0].sum() + ll[1, :1].sum()) / 4
    assert tasks.nll_per_step(logits, targets, lengths) == pytest.approx(want, rel=1e-12)


@pytest.mark.skipif(not os.path.exists(os.path.join(tasks.DATA_DIR, "jsb-chorales-quarter.json")),
                    reason="../shared/data is not here")
def test_jsb_chorales_loads_the_published_split():
    data = tasks.jsb_chorales()
    assert {k: len(v) for k, v in data.items()} == {"train": 229, "valid": 76, "test": 77}
    assert all(r.shape[1] == 88 and set(np.unique(r)) <= {0.0, 1.0} for r in data["train"])
    assert max(len(r) for r in data["train"]) == 129


@pytest.mark.skipif(not os.path.exists(os.path.join(tasks.DATA_DIR, "tinyshakespeare.txt")),
                    reason="../shared/data is not here")
def test_tiny_shakespeare_split_is_90_10():
    train, valid = tasks.tiny_shakespeare()
    n = len(train) + len(valid)
    assert len(train) == int(n * 0.9) and train.startswith("First Citizen")
