"""``fit(..., resume=checkpoint)`` continues a run exactly: trained N epochs without a stop,
or stopped (max_steps, or an exception after a checkpoint_every save) and resumed from its
checkpoint, a run ends with the same parameters, optimizer state and history, bit for bit
(the oracle is the uninterrupted run), with shuffling, dropout, every schedule, truncated
BPTT, validation, early stopping and best checkpoints. Before, the shuffle order restarted
from ``seed`` and schedules from step 0 (parameters 0.03 away from the uninterrupted run)."""
import json
import os

import numpy as np
import pytest

import fastrnn
from fastrnn import optim, training

N, T, V = 23, 9, 6
EPOCHS = 4


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, V, (N, T))
    return x, (x + 1) % V, rng.integers(0, T + 1, N)


def _model():
    # two layers with dropout between them: the dropout generator must be resumed too
    return fastrnn.SequenceModel("lstm", vocab_size=V, hidden_size=6, num_layers=2,
                                 dropout=0.3, task="next_token", seed=0)


class Halving:
    """A user schedule: lr = base / (1 + steps), with its own state dict."""

    def __init__(self, opt):
        self.opt, self.steps, self.base = opt, 0, opt.lr

    def step(self):
        self.steps += 1
        self.opt.lr = self.base / (1 + self.steps)

    def state_dict(self):
        return {"steps": np.int64(self.steps), "base": self.base}

    def load_state_dict(self, d):
        self.steps, self.base = int(d["steps"]), d["base"]
        self.opt.lr = self.base / (1 + self.steps)


SCHEDULES = {
    "none": None,
    "step": lambda o: optim.StepLR(o, step_size=4, gamma=0.5),
    "cosine": lambda o: optim.CosineLR(o, total_steps=15),
    "warmup_cosine": lambda o: optim.WarmupLR(o, 3, after=optim.CosineLR(o, 12)),
    "user": Halving,
}


def _fit(m, path, **kw):
    x, y, lengths = _data()
    vx, vy, vl = _data(1)
    args = dict(epochs=EPOCHS, batch_size=5, lr=0.05, progress=False, seed=3,
                validation_data=(vx, vy, vl), checkpoint=path)
    args.update(kw)
    return m.fit(x, y, lengths, **args)


def _state(m, h, opt):
    """Everything that must match: parameters, the optimizer's state, the history."""
    hist = {k: v for k, v in h.items() if k not in ("seconds", "sequences_per_second")}
    return ([p.tobytes() for p, _ in m.parameters()],
            {k: (v.tobytes() if isinstance(v, np.ndarray) else v)
             for k, v in opt.state_dict().items()},
            json.dumps(hist))


def _run(path, **kw):
    m = _model()
    opt = optim.Adam(m.parameters(), lr=0.05)
    return _state(m, _fit(m, path, optimizer=opt, **kw), opt)


def _assert_same(got, want):
    params, opt_state, history = got
    assert history == want[2]
    assert opt_state == want[1]
    assert params == want[0]


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("stop_after", [1, 7, 10])      # in epoch 1, in epoch 2, its end
def test_a_run_stopped_by_max_steps_resumes_bit_for_bit(tmp_path, schedule, stop_after):
    sched = SCHEDULES[schedule]
    want = _run(tmp_path / "whole.fastrnn", schedule=sched)
    path = tmp_path / "run.fastrnn"
    _run(path, schedule=sched, max_steps=stop_after)
    _assert_same(_run(path, schedule=sched, resume=path), want)


def test_tbptt_early_stopping_and_the_best_checkpoint_resume_bit_for_bit(tmp_path):
    kw = dict(tbptt=4, early_stopping=1, epochs=8, lr=0.3,
              schedule=SCHEDULES["warmup_cosine"])
    want = _run(tmp_path / "whole.fastrnn", best_checkpoint=tmp_path / "best0.fastrnn", **kw)
    assert len(json.loads(want[2])["loss"]) < 8          # early stopping did stop it
    path, best = tmp_path / "run.fastrnn", tmp_path / "best.fastrnn"
    _run(path, best_checkpoint=best, max_steps=9, **kw)     # tbptt: 3 updates a batch
    _assert_same(_run(path, best_checkpoint=best, resume=path, **kw), want)
    a, b = fastrnn.load(tmp_path / "best0.fastrnn"), fastrnn.load(best)
    assert all(a.named_parameters()[k].tobytes() == v.tobytes()
               for k, v in b.named_parameters().items())
    # a run that has stopped early stays stopped
    _assert_same(_run(path, best_checkpoint=best, resume=path, **kw), want)


class _Interrupt(BaseException):
    pass


def test_a_run_interrupted_mid_epoch_resumes_from_its_last_checkpoint(tmp_path):
    """An interrupt (here raised by the schedule at step 8) after the save at step 6:
    resuming repeats steps 7 and 8 and ends as the uninterrupted run."""
    want = _run(tmp_path / "whole.fastrnn", schedule=SCHEDULES["cosine"])
    path = tmp_path / "run.fastrnn"

    def interrupting(o):
        s = optim.CosineLR(o, total_steps=15)
        real = s.step

        def step():
            if s.steps == 7:
                raise _Interrupt
            real()
        s.step = step
        return s
    with pytest.raises(_Interrupt):
        _run(path, schedule=interrupting, checkpoint_every=3)
    assert fastrnn.load(path, with_optimizer=True)[1]["state"]["step"] == 6
    _assert_same(_run(path, schedule=SCHEDULES["cosine"], resume=path), want)


def test_a_crash_between_the_two_files_of_a_checkpoint_still_resumes(tmp_path, monkeypatch):
    """The loop state is written first and keeps the previous save's entry: when the model
    file's write fails, the old model file and its entry still resume the run."""
    want = _run(tmp_path / "whole.fastrnn")
    path = tmp_path / "run.fastrnn"
    real, calls = fastrnn.io.atomic_write, []

    def failing(p, data, what="file"):
        calls.append(what)
        if len(calls) == 6:             # the third save's model file (step 6)
            raise OSError(28, "No space left on device")
        real(p, data, what)
    monkeypatch.setattr(fastrnn.io, "atomic_write", failing)
    with pytest.raises(OSError, match="No space left"):
        _run(path, checkpoint_every=2)
    assert calls[-2:] == ["loop state file", "model file"]
    monkeypatch.undo()
    assert fastrnn.load(path, with_optimizer=True)[1]["state"]["step"] == 4
    _assert_same(_run(path, resume=path), want)


def test_resume_refuses_what_cannot_continue_the_run(tmp_path):
    path = tmp_path / "run.fastrnn"
    _run(path, max_steps=3)
    x, y, lengths = _data()

    def resume(m=None, **kw):
        m = m or _model()
        before = [p.copy() for p, _ in m.parameters()]
        args = dict(epochs=EPOCHS, batch_size=5, lr=0.05, progress=False,
                    validation_data=(_data(1)), resume=path)
        args.update(kw)
        with pytest.raises((ValueError, TypeError, FileNotFoundError)) as info:
            m.fit(x, y, lengths, **args)
        assert all(p.tobytes() == b.tobytes() for (p, _), b in zip(m.parameters(), before))
        return str(info.value)

    assert "the run was made with other batch_size (5 there, 4 here)" in resume(batch_size=4)
    assert "shuffle (True there, False here)" in resume(shuffle=False)
    assert "validation (True there, False here)" in resume(validation_data=None)
    other = fastrnn.SequenceModel("gru", vocab_size=V, hidden_size=6, num_layers=2,
                                  dropout=0.3, task="next_token", seed=0)
    assert "its model differs from this one in cell ('lstm' there, 'gru' here)" in resume(other)
    assert "holds the state of Adam, this run trains with SGD" in resume(optimizer="sgd")
    assert "its run had no schedule" in resume(schedule=SCHEDULES["step"])
    # the model file replaced since (by save(), which writes no loop state)
    _model().save(path)
    assert "is not a model file its loop state" in resume()
    os.remove(training.loop_state_path(path))
    assert "its loop state file" in resume() and "is missing" in resume()
