"""Data-parallel training (issue 8): ``fit(..., allreduce=hook)`` against one process
training on the whole batch, with the processes played by threads sharing an in-memory
all-reduce (the MPI run itself is in test_mpi.py), and ``fastrnn.mpi.shard``.

The oracle: plain ``fit`` on the whole data set, float64, within 1e-12."""
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastrnn
from fastrnn.mpi import shard


class ThreadGroup:
    """``size`` ranks in threads of one process: ``hooks[r](buffer)`` sums the ranks'
    buffers in rank order (the same bits for everyone), ``broadcast`` copies rank 0's."""

    def __init__(self, size):
        self.size, self.slots = size, [None] * size
        self.barrier = threading.Barrier(size, timeout=60)
        self.calls = [0] * size
        self.hooks = [self._hook(r) for r in range(size)]

    def _hook(self, rank):
        group = self

        class Hook:
            def __call__(self, buffer):
                group.calls[rank] += 1
                group._exchange(rank, buffer, lambda parts: np.sum(parts, axis=0))

            def broadcast(self, buffer):
                group._exchange(rank, buffer, lambda parts: parts[0])

        h = Hook()
        h.rank = rank
        return h

    def _exchange(self, rank, buffer, combine):
        self.slots[rank] = buffer.copy()
        self.barrier.wait()
        result = combine(np.stack(self.slots))
        self.barrier.wait()
        buffer[...] = result

    def run(self, work):
        """``work(rank, hook)`` on every rank at once; their results (or exceptions)."""
        out = [None] * self.size

        def target(r):
            try:
                out[r] = work(r, self.hooks[r])
            except BaseException as exc:           # noqa: BLE001 - compared by the test
                # no barrier.abort() here: a rank released from the last exchange but not
                # yet awake would see the abort; a rank left waiting times out instead
                out[r] = exc

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.size)]
        # fit limits numpy's BLAS for its duration; two fits in threads of one process would
        # restore each other's limits out of order, so the limit is held around both here
        with threadpool_limits(limits=1):
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
        return out


PER_STEP = {"regression", "per_step_classification", "multilabel", "next_token"}


def _ragged(n, T, I, seed, C=None, per_step=True, multilabel=False):
    """Ragged float64 inputs (n, T, I), lengths in [1, T], and targets: regression
    (C None: 2 values), class ids (C classes) or 0/1 labels (multilabel, C labels)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, T, I))
    lengths = rng.integers(1, T + 1, n)
    lead = (n, T) if per_step else (n,)
    if C is None:
        y = rng.standard_normal(lead + (2,))
    elif multilabel:
        y = rng.integers(0, 2, lead + (C,)).astype(np.float64)
    else:
        y = rng.integers(0, C, lead)
    return x, y, lengths


def _model(cell, seed, task="regression", C=None):
    return fastrnn.SequenceModel(cell, input_size=3, hidden_size=8, output_size=C or 2,
                                 task=task, dtype=np.float64, seed=seed)


CASES = [
    # cell, task, classes or labels (None: regression), tbptt, fit options
    ("lstm", "sequence_regression", None, None, {}),
    ("gru", "sequence_classification", 4, None, {"clip_norm": 0.5}),
    ("rnn", "regression", None, None, {"optimizer": "sgd", "lr": 0.05}),
    ("lstm", "per_step_classification", 3, 4, {"optimizer": "adamw", "weight_decay": 0.01}),
    ("gru", "regression", None, 3, {"clip_value": 0.2}),
    ("lstm", "multilabel", 5, None, {"optimizer": "rmsprop"}),
]


@pytest.mark.parametrize("cell,task,C,tbptt,opts", CASES)
@pytest.mark.parametrize("size", [2, 3])
def test_ranks_train_like_one_process_on_the_whole_batch(cell, task, C, tbptt, opts, size):
    """Each rank's part of every batch (fastrnn.mpi.shard), ranks > 0 starting from other
    weights (the broadcast must replace them): the ranks end bit-identical, and equal to
    one process on whole batches within 1e-12 (float64). The last batch is short (size
    rows), so the ranks' parts differ in rows and in loss terms."""
    n, batch = 36 + size, 12
    x, y, lengths = _ragged(n, 9, 3, seed=1, C=C, per_step=task in PER_STEP,
                            multilabel=task == "multilabel")
    args = dict(epochs=2, batch_size=batch, shuffle=False, progress=False, tbptt=tbptt, **opts)
    single = _model(cell, 5, task, C)
    h1 = single.fit(x, y, lengths, **args)

    group = ThreadGroup(size)

    def work(rank, hook):
        model = _model(cell, 5 if rank == 0 else 99 + rank, task, C)
        rows = shard(n, batch, rank, size)
        h = model.fit(x[rows], y[rows], lengths[rows], allreduce=hook,
                      **{**args, "batch_size": batch // size})
        return model, h

    results = group.run(work)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    ref = single.named_parameters()
    for rank, (model, h) in enumerate(results):
        got = model.named_parameters()
        for name in ref:
            assert got[name].tobytes() == results[0][0].named_parameters()[name].tobytes(), \
                (rank, name)
            np.testing.assert_allclose(got[name], ref[name], rtol=0, atol=1e-12, err_msg=name)
        assert h["steps"] == h1["steps"]
        np.testing.assert_allclose(h["loss"], h1["loss"], rtol=1e-12)
    assert len(set(group.calls)) == 1               # the same collective calls on every rank


def test_validation_and_early_stopping_use_every_ranks_data():
    """Validation loss over all ranks' validation rows equals evaluate on their union, so
    early stopping decides alike on every rank."""
    x, y, lengths = _ragged(24, 6, 3, seed=2, C=3, per_step=False)
    vx, vy, vl = _ragged(10, 6, 3, seed=3, C=3, per_step=False)
    args = dict(epochs=3, batch_size=8, shuffle=False, progress=False, early_stopping=1)
    single = _model("lstm", 4, "sequence_classification", 3)
    h1 = single.fit(x, y, lengths, validation_data=(vx, vy, vl), **args)
    vparts = [np.arange(0, 4), np.arange(4, 10)]        # uneven validation parts

    def work(rank, hook):
        model = _model("lstm", 4, "sequence_classification", 3)
        rows, v = shard(24, 8, rank, 2), vparts[rank]
        return model.fit(x[rows], y[rows], lengths[rows], allreduce=hook,
                         validation_data=(vx[v], vy[v], vl[v]), **{**args, "batch_size": 4})

    h = ThreadGroup(2).run(work)
    for hr in h:
        np.testing.assert_allclose(hr["val_loss"], h1["val_loss"], rtol=1e-12)
        np.testing.assert_allclose(hr["val_accuracy"], h1["val_accuracy"], rtol=1e-12)


def test_checkpoints_and_progress_only_on_rank_0(tmp_path, capsys):
    x, y, lengths = _ragged(16, 5, 3, seed=2)

    def work(rank, hook):
        model = _model("gru", 1)
        rows = shard(16, 8, rank, 2)
        model.fit(x[rows], y[rows], lengths[rows], allreduce=hook, epochs=1, batch_size=4,
                  checkpoint=tmp_path / f"ckpt-{rank}.fastrnn", checkpoint_every=1,
                  best_checkpoint=tmp_path / f"best-{rank}.fastrnn",
                  validation_data=(x[rows], y[rows], lengths[rows]), progress=False)
        return model

    models = ThreadGroup(2).run(work)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best-0.fastrnn", "ckpt-0.fastrnn", "ckpt-0.fastrnn.fit-state.json"]
    loaded = fastrnn.load(tmp_path / "ckpt-0.fastrnn")
    for name, a in models[1].named_parameters().items():
        assert loaded.named_parameters()[name].tobytes() == a.tobytes()


def test_ranks_resume_from_rank_0s_checkpoint_bit_for_bit(tmp_path):
    """Two ranks stopped by max_steps in epoch 2 and resumed from rank 0's checkpoint (every
    rank passes resume=) end as two ranks never stopped, with shuffling and validation."""
    x, y, lengths = _ragged(16, 5, 3, seed=2, C=3, per_step=False)
    args = dict(epochs=3, batch_size=4, progress=False, seed=7,
                validation_data=(x[:6], y[:6], lengths[:6]))

    def work(path, **kw):
        def run(rank, hook):
            model = _model("gru", 1, "sequence_classification", 3)
            rows = shard(16, 8, rank, 2)
            h = model.fit(x[rows], y[rows], lengths[rows], allreduce=hook, checkpoint=path,
                          **args, **kw)
            return [p.tobytes() for p, _ in model.parameters()], \
                {k: v for k, v in h.items() if k not in ("seconds", "sequences_per_second")}
        results = ThreadGroup(2).run(run)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results

    want = work(tmp_path / "whole.fastrnn")
    path = tmp_path / "run.fastrnn"
    work(path, max_steps=3)
    assert work(path, resume=path) == want
    assert want[0] == want[1]


def test_ranks_with_different_numbers_of_batches_all_refuse():
    x, y, lengths = _ragged(20, 5, 3, seed=2)

    def work(rank, hook):
        rows = np.arange(0, 12) if rank == 0 else np.arange(12, 20)   # 3 and 2 batches of 4
        return _model("lstm", 1).fit(x[rows], y[rows], lengths[rows], allreduce=hook,
                                          batch_size=4, progress=False)

    for r in ThreadGroup(2).run(work):
        assert isinstance(r, ValueError) and "numbers of batches" in str(r)


def test_bad_input_on_one_rank_stops_every_rank():
    """A rank whose data fails its checks raises its own error; the others raise too
    instead of waiting for it in the all-reduce."""
    x, y, lengths = _ragged(16, 5, 3, seed=2)

    def work(rank, hook):
        xr = x[:8].copy()
        if rank == 1:
            xr[0, 0, 0] = np.nan
        return _model("lstm", 1).fit(xr, y[:8], lengths[:8], allreduce=hook,
                                          batch_size=4, progress=False)

    r0, r1 = ThreadGroup(2).run(work)
    assert isinstance(r1, ValueError) and "NaN" in str(r1)
    assert isinstance(r0, ValueError) and "1 of 2 processes failed" in str(r0)


def test_bad_targets_on_one_rank_stop_every_rank_before_training():
    x, y, lengths = _ragged(16, 5, 3, seed=2, C=3, per_step=False)

    def work(rank, hook, validation):
        yr, vy = y[:8].copy(), y[:4].copy()
        if rank == 1:
            (vy if validation else yr)[3] = 7           # class 7 of 3
        model = _model("gru", 1, "sequence_classification", 3)
        before = [p.copy() for p, _ in model.parameters()]
        try:
            return model.fit(x[:8], yr, lengths[:8], allreduce=hook, batch_size=4,
                             shuffle=False, progress=False,
                             validation_data=(x[:4], vy, lengths[:4]))
        except ValueError as exc:
            assert all(np.array_equal(p, b) for (p, _), b in zip(model.parameters(), before))
            return exc

    for validation in (False, True):
        r0, r1 = ThreadGroup(2).run(lambda rank, hook: work(rank, hook, validation))
        assert isinstance(r1, ValueError) and "class indices" in str(r1)
        assert isinstance(r0, ValueError) and "1 of 2 processes failed their input checks" \
            in str(r0)


def test_a_failure_on_one_rank_mid_training_stops_every_rank():
    """A step that raises on one rank only (here its loss, at the second batch) makes every
    rank raise instead of waiting for it."""
    x, y, lengths = _ragged(16, 5, 3, seed=2, C=3, per_step=False)

    def work(rank, hook):
        model = _model("gru", 1, "sequence_classification", 3)
        if rank == 1:
            real, calls = model.loss, []

            def loss(*a, **k):
                calls.append(1)
                if len(calls) == 2:
                    raise ValueError("injected failure")
                return real(*a, **k)
            model.loss = loss
        return model.fit(x[:8], y[:8], lengths[:8], allreduce=hook, batch_size=4,
                         shuffle=False, progress=False)

    r0, r1 = ThreadGroup(2).run(work)
    assert isinstance(r1, ValueError) and "injected failure" in str(r1)
    assert isinstance(r0, ValueError) and "other process(es) failed" in str(r0)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_an_infinite_loss_on_one_rank_stops_every_rank_before_the_update():
    """Targets of 1e200 on one rank only (finite, so they pass the input checks) make its
    squared error overflow: every rank raises FloatingPointError and keeps the parameters
    it had."""
    x, y, lengths = _ragged(8, 5, 3, seed=2)

    def work(rank, hook):
        model = _model("rnn", 1)
        before = {k: v.copy() for k, v in model.named_parameters().items()}
        yr = y * (1e200 if rank == 1 else 1.0)
        try:
            model.fit(x, yr, lengths, allreduce=hook, batch_size=8, progress=False)
        except FloatingPointError as exc:
            same = all(np.array_equal(before[k], v) for k, v in
                       model.named_parameters().items())
            return exc, same
        return None, None

    for exc, same in ThreadGroup(2).run(work):
        assert isinstance(exc, FloatingPointError) and "over all processes" in str(exc)
        assert same


def test_allreduce_must_be_callable():
    x, y, lengths = _ragged(8, 5, 3, seed=2)
    with pytest.raises(TypeError, match="allreduce must be a callable"):
        _model("lstm", 1).fit(x, y, lengths, allreduce=42, progress=False)


# ---- shard ------------------------------------------------------------------------------

@pytest.mark.parametrize("n,batch,size", [(36, 12, 3), (38, 12, 2), (5, 4, 1), (100, 8, 4),
                                          (3, 8, 2), (8, 8, 8)])
def test_shard_splits_every_batch_among_the_ranks(n, batch, size):
    parts = [shard(n, batch, r, size) for r in range(size)]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))   # each row once
    per = batch // size
    for k, start in enumerate(range(0, n, batch)):
        # the k-th local batch of every rank is its part of the k-th global batch
        rows = np.concatenate([p[k * per:(k + 1) * per] for p in parts])
        assert np.array_equal(np.sort(rows), np.arange(start, min(start + batch, n)))
    counts = {-(-len(p) // per) for p in parts}
    assert counts == {-(-n // batch)}


@pytest.mark.parametrize("args,match", [((10, 7, 0, 2), "multiple"),
                                        ((9, 8, 0, 2), "fewer than"),
                                        ((10, 8, 2, 2), "rank"),
                                        ((0, 8, 0, 2), "n must"),
                                        ((10, 8, True, 2), "rank")])
def test_shard_refuses_what_cannot_split(args, match):
    with pytest.raises(ValueError, match=match):
        shard(*args)


# ---- every failure reaches every rank (no rank left waiting in a collective) --------------

def _both_raise(work, kinds=(ValueError,)):
    results = ThreadGroup(2).run(work)
    for r in results:
        assert isinstance(r, kinds), results
    return results


@pytest.mark.parametrize("case", ["early_stopping_one_rank", "epochs", "hidden_size",
                                  "dtype", "checkpoint_one_rank", "bad_lr"])
def test_ranks_that_disagree_all_refuse(case, tmp_path):
    x, y, lengths = _ragged(16, 5, 3, seed=2)

    def work(rank, hook):
        args = dict(batch_size=4, progress=False, allreduce=hook, epochs=1)
        model = _model("lstm", 1)
        if case == "early_stopping_one_rank" and rank == 0:
            args.update(early_stopping=1, validation_data=(x[:4], y[:4], lengths[:4]))
        if case == "early_stopping_one_rank" and rank == 1:
            args.update(early_stopping=1)                   # no validation data here
        if case == "epochs" and rank == 1:
            args.update(epochs=2)
        if case == "hidden_size" and rank == 1:
            model = fastrnn.SequenceModel("lstm", input_size=3, hidden_size=9, output_size=2,
                                          task="regression", dtype=np.float64, seed=1)
        if case == "dtype" and rank == 1:
            model = fastrnn.SequenceModel("lstm", input_size=3, hidden_size=8, output_size=2,
                                          task="regression", seed=1)
            return model.fit(x[:8].astype(np.float32), y[:8], lengths[:8], **args)
        if case == "checkpoint_one_rank" and rank == 0:
            args.update(checkpoint=tmp_path / "c.fastrnn", checkpoint_every=1)
        if case == "bad_lr" and rank == 1:
            args.update(lr=-1.0)
        return model.fit(x[:8], y[:8], lengths[:8], **args)

    _both_raise(work)


def test_a_checkpoint_rank_0_cannot_write_stops_every_rank(tmp_path, monkeypatch):
    x, y, lengths = _ragged(16, 5, 3, seed=2)
    missing = tmp_path / "no such folder" / "c.fastrnn"

    def work(rank, hook, path):
        return _model("gru", 1).fit(x[:8], y[:8], lengths[:8], allreduce=hook, batch_size=4,
                                    progress=False, checkpoint=path, checkpoint_every=1)

    # a missing folder is found before training
    r0, r1 = ThreadGroup(2).run(lambda rank, hook: work(rank, hook, missing))
    assert isinstance(r0, FileNotFoundError) and str(missing) in str(r0)
    assert isinstance(r1, ValueError) and "failed their input checks" in str(r1)

    # a write that fails during training (a full disk, a folder removed meanwhile)
    def full_disk(path, data, what="file"):
        raise OSError(28, f"cannot write {what} {path}: No space left on device")
    monkeypatch.setattr(fastrnn.io, "atomic_write", full_disk)
    r0, r1 = ThreadGroup(2).run(lambda rank, hook: work(rank, hook, tmp_path / "c.fastrnn"))
    assert isinstance(r0, OSError) and "No space left" in str(r0)
    assert isinstance(r1, RuntimeError) and "could not write the checkpoint" in str(r1)


def test_a_validation_failure_on_one_rank_stops_every_rank():
    x, y, lengths = _ragged(16, 5, 3, seed=2, C=3, per_step=False)

    def work(rank, hook):
        model = _model("gru", 1, "sequence_classification", 3)
        if rank == 1:                   # fails at validation only (the data passed its checks)
            def failing(*a, **k):
                raise ValueError("injected validation failure")
            model._evaluate_sums = failing
        return model.fit(x[:8], y[:8], lengths[:8], allreduce=hook, batch_size=4,
                         progress=False, validation_data=(x[:4], y[:4], lengths[:4]))

    r0, r1 = ThreadGroup(2).run(work)
    assert isinstance(r1, ValueError) and "injected validation failure" in str(r1)
    assert isinstance(r0, ValueError) and "validation failed" in str(r0)


def test_length_zero_rows_of_a_per_sequence_task_count_as_in_one_process():
    """A rank whose rows all have length 0 still has their loss terms (the prediction comes
    from the initial state), as one process on the whole batch has."""
    x, y, lengths = _ragged(16, 5, 3, seed=2, per_step=False)
    lengths[[4, 5, 6, 7, 12, 13, 14, 15]] = 0               # rank 1's half of both batches
    args = dict(epochs=2, batch_size=8, shuffle=False, progress=False)
    single = _model("lstm", 3, "sequence_regression")
    h1 = single.fit(x, y, lengths, **args)

    def work(rank, hook):
        model = _model("lstm", 3, "sequence_regression")
        rows = shard(16, 8, rank, 2)
        h = model.fit(x[rows], y[rows], lengths[rows], allreduce=hook,
                      **{**args, "batch_size": 4})
        return model, h

    for model, h in ThreadGroup(2).run(work):
        np.testing.assert_allclose(h["loss"], h1["loss"], rtol=1e-12)
        for name, a in single.named_parameters().items():
            np.testing.assert_allclose(model.named_parameters()[name], a, rtol=0, atol=1e-12)
