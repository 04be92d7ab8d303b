"""fit leaves the model whole: every input is checked before the first update; an update
is all-or-nothing whatever interrupts it (a signal handler that raises, an exception from
inside the optimizer); checkpoint paths that would overwrite each other are refused."""
import numpy as np
import pytest

import fastrnn
from fastrnn import optim

N, T, I, C = 12, 5, 3, 4


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((N, T, I)).astype(np.float32), rng.integers(0, C, (N, T)),
            rng.integers(1, T + 1, N))


def _model(task="per_step_classification", output_size=C):
    return fastrnn.SequenceModel("gru", input_size=I, hidden_size=6, output_size=output_size,
                                 task=task, seed=0)


def _bad_validation_label():
    x, y, lengths = _data()
    vy = y.copy()
    vy[-1, 0] = C                           # class C of C, in the last validation row
    return dict(validation_data=(x, vy, lengths)), ValueError, r"class indices in \[0, 4\)"


def _bad_last_training_label():
    x, y, lengths = _data()
    y[-1, 0] = -1                           # in the last batch
    return dict(y=y, shuffle=False), ValueError, r"class indices in \[0, 4\)"


BAD = {
    "validation label out of range": _bad_validation_label,
    "training label out of range in the last batch": _bad_last_training_label,
    "validation features NaN": lambda: (
        dict(validation_data=(np.where(np.arange(N)[:, None, None] == N - 1, np.nan,
                                       _data()[0]), _data()[1])),
        ValueError, "x contains NaN or infinity"),
    "validation targets of the wrong shape": lambda: (
        dict(validation_data=(_data()[0], _data()[1][:, :-1])), ValueError,
        r"targets have shape \(12, 4\), expected \(12, 5\)"),
    "validation lengths too long": lambda: (
        dict(validation_data=(*_data()[:2], np.full(N, T + 1))), ValueError,
        r"lengths must lie in \[0, T=5\]"),
    "validation features of the wrong width": lambda: (
        dict(validation_data=(_data()[0][..., :2], _data()[1])), ValueError,
        "x has 2 features, expected input_size=3"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_every_input_is_checked_before_the_first_update(case):
    change, exc, match = BAD[case]()
    x, y, lengths = _data()
    m = _model()
    opt = optim.Adam(m.parameters(), lr=0.01)
    before = [p.copy() for p, _ in m.parameters()]
    kw = dict(x=x, y=y, lengths=lengths, epochs=2, batch_size=4, optimizer=opt,
              progress=False)
    kw.update(change)
    with pytest.raises(exc, match=match):
        m.fit(**kw)
    assert opt.steps == 0
    assert all(p.tobytes() == b.tobytes() for (p, _), b in zip(m.parameters(), before))


def test_regression_targets_are_checked_only_where_the_loss_reads_them():
    """NaN in the padding of regression targets is never read (training and validation
    run); NaN at a valid step is refused before anything changes."""
    x, _, lengths = _data()
    y = np.random.default_rng(3).standard_normal((N, T, 2))
    y[np.arange(T)[None, :] >= lengths[:, None]] = np.nan
    m = _model("regression", 2)
    h = m.fit(x, y, lengths, epochs=1, batch_size=4, progress=False,
              validation_data=(x, y, lengths))
    assert np.isfinite(h["loss"] + h["val_loss"]).all()
    y[0, 0, 1] = np.nan
    before = [p.copy() for p, _ in m.parameters()]
    with pytest.raises(ValueError, match="targets contain NaN or infinity"):
        m.fit(x, y, lengths, epochs=1, progress=False)
    assert all(p.tobytes() == b.tobytes() for (p, _), b in zip(m.parameters(), before))
