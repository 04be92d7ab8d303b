"""Training loop: mini-batches over ragged data, optimizers, clipping, truncated BPTT,
validation, early stopping, progress and checkpoints."""
import base64
import errno
import hashlib
import json
import math
import os
import time

import numpy as np

from . import io
from ._spec import OPTIMIZERS
from .nn import optim

_OPTIMIZERS = {name.lower(): getattr(optim, name) for name in OPTIMIZERS}


def _as_batch_data(model, x, y, lengths, what="training"):
    """``(x, y, lengths)`` checked by the model's input rule (see SequenceModel), targets
    included, with at least one sequence of at least one step."""
    x, y, lengths = model._data(x, y, lengths)
    if len(x) == 0:
        raise ValueError(f"no {what} data: x is empty")
    if x.shape[1] == 0:
        raise ValueError(f"{what} x must have T >= 1 time steps, got shape {x.shape}")
    return x, y, lengths


def _check_positive(name, v, integer=False, allow_none=False):
    if v is None and allow_none:
        return None
    bad = isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
        or not math.isfinite(v) or v <= 0 or (integer and int(v) != v)
    if bad:
        kind = "a positive int" if integer else "a positive finite number"
        raise ValueError(f"{name} must be {kind}, got {v!r}")
    return int(v) if integer else float(v)


class _Progress:
    """A tqdm bar when tqdm is installed and wanted; without tqdm, one line per epoch."""
    _hinted = False

    def __init__(self, enabled, total, desc):
        self.bar, self.line, self.desc = None, False, desc
        self.t0 = time.perf_counter()
        if enabled:
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total, desc=desc, unit="batch", leave=True)
            except ImportError:
                self.line = True
                if not _Progress._hinted:
                    _Progress._hinted = True
                    print("(pip install tqdm for a progress bar; one line per epoch meanwhile)")

    def update(self, **postfix):
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)

    def close(self, **postfix):
        if self.bar is not None:
            self.bar.set_postfix(postfix)
            self.bar.close()
        elif self.line:
            stats = " ".join(f"{k}={v}" for k, v in postfix.items())
            print(f"{self.desc}: {stats} ({time.perf_counter() - self.t0:.1f} s)", flush=True)


def _other_blas_serial():
    """Every BLAS but the one the kernels call held at one thread (threadpoolctl). The
    kernels' own BLAS is left to fastrnn.kernels._threads.serial_blas, which counts its users across
    Python threads; limiting it here too could restore it under another thread's kernel."""
    from threadpoolctl import ThreadpoolController
    from .kernels._threads import serial_blas
    with serial_blas:                       # make sure it has found its library
        pass
    ours = {lib.filepath for lib in serial_blas._libs}
    controller = ThreadpoolController()
    others = [lib.filepath for lib in controller.lib_controllers
              if lib.user_api == "blas" and lib.filepath not in ours]
    return controller.select(filepath=others).limit(limits=1)


class _Backup:
    """Copies of what an update changes, kept across each update: the parameters and, for
    a fastrnn optimizer, its buffers, step count and learning rate, and a schedule's
    state (one with ``state_dict``/``load_state_dict``). Whatever goes wrong inside the
    update (a non-finite result, any exception: a MemoryError in the optimizer's arithmetic,
    a failing schedule) restores them, so an update happens whole or not at all. Signals
    cannot stop it half way: it runs inside the model's weight guard, which holds every
    Python-level signal handler to the end of the write (fastrnn.kernels._guard.HeldSignals).
    Another optimizer object gets its parameters restored, not its own state."""

    def __init__(self, model, optimizer, sched):
        self.params = [p for p, _ in model.parameters()]
        self.copies = [np.empty_like(p) for p in self.params]
        self.optimizer = optimizer if isinstance(optimizer, optim.Optimizer) else None
        buffers = [] if self.optimizer is None else \
            [b for bufs in optimizer.state.values() for b in bufs]
        self.buffers = [(b, np.empty_like(b)) for b in buffers]
        self.sched = sched if _has_state(sched) else None
        self.scalars = self.sched_state = None

    def take(self):
        for c, p in zip(self.copies, self.params):
            np.copyto(c, p)
        for b, c in self.buffers:
            np.copyto(c, b)
        if self.optimizer is not None:
            self.scalars = (self.optimizer.steps, self.optimizer.lr)
        if self.sched is not None:
            self.sched_state = self.sched.state_dict()

    def restore(self):
        for c, p in zip(self.copies, self.params):
            np.copyto(p, c)
        for b, c in self.buffers:
            np.copyto(b, c)
        if self.optimizer is not None:
            self.optimizer.steps, self.optimizer.lr = self.scalars
        if self.sched is not None:
            self.sched.load_state_dict(self.sched_state)


def _has_state(obj):
    return obj is not None and callable(getattr(obj, "state_dict", None)) and \
        callable(getattr(obj, "load_state_dict", None))


# ---- checkpoints and resuming ------------------------------------------------------------

LOOP_STATE_SUFFIX = ".fit-state.json"
_LOOP_STATE_FORMAT = 1


def loop_state_path(checkpoint):
    """The file next to ``checkpoint`` where ``fit`` keeps the loop state that
    ``resume`` reads: ``<checkpoint>.fit-state.json``."""
    return os.fspath(checkpoint) + LOOP_STATE_SUFFIX


def _same_file(a, b):
    """Whether two paths name one file: the same path once links and ``..`` are resolved,
    or (both existing) the same inode, as hard links are."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_checkpoint_paths(checkpoint, best_checkpoint, resume, write):
    """The paths as str (TypeError for anything else), refused when two writers would
    overwrite each other's file; ``write``: check that each can be written (rank 0)."""
    paths = {}
    for name, p in (("checkpoint", checkpoint), ("best_checkpoint", best_checkpoint),
                    ("resume", resume)):
        if p is not None and not isinstance(p, (str, os.PathLike)):
            raise TypeError(f"{name} must be a path (str or os.PathLike), got "
                            f"{type(p).__name__}")
        paths[name] = None if p is None else os.fspath(p)
    checkpoint, best = paths["checkpoint"], paths["best_checkpoint"]
    if checkpoint is not None and best is not None:
        for own, what in ((checkpoint, "checkpoint"),
                          (loop_state_path(checkpoint), "checkpoint's loop state file")):
            if _same_file(own, best):
                raise ValueError(f"best_checkpoint {best} is the same file as the {what} "
                                 f"{own}: each save would overwrite the other; give two "
                                 "different paths")
    if write:
        for path, what in ((checkpoint, "checkpoint"), (best, "best checkpoint")):
            if path is not None:
                io.check_writable(path, what)
        if checkpoint is not None:
            io.check_writable(loop_state_path(checkpoint), "loop state file")
    return checkpoint, best, paths["resume"]


class _Run:
    """Where a run stands: everything a resumed run needs to continue exactly as the
    uninterrupted one would (the model's and the optimizer's state are in the checkpoint
    itself, the rest here)."""

    def __init__(self):
        self.epoch, self.batch = 0, 0           # the current epoch and its batches done
        self.epoch_rng = None                   # the shuffle generator at the epoch's start
        self.total, self.count = 0.0, 0         # the epoch's loss x rows and rows so far
        self.history = {"loss": [], "val_loss": [], "val_accuracy": [], "steps": 0}
        self.best, self.best_params, self.bad_epochs = math.inf, None, 0
        self.stopped_early = False

    def entry(self, epoch_rng, model, sched, arguments):
        """The loop state as JSON-ready values (the checkpoint's entry in the state file)."""
        best = None if self.best_params is None else [
            {"dtype": p.dtype.str, "data": base64.b64encode(p.tobytes()).decode()}
            for p in self.best_params]
        return {"epoch": self.epoch, "batch": self.batch, "shuffle_rng": epoch_rng,
                "dropout_rng": model.rnn._rng.bit_generator.state,
                "epoch_loss_sum": self.total, "epoch_rows": self.count,
                "history": {k: (list(v) if isinstance(v, list) else v)
                            for k, v in self.history.items()},
                "best": self.best, "bad_epochs": self.bad_epochs, "best_params": best,
                "stopped_early": self.stopped_early,
                "schedule": _json_ready(sched.state_dict()) if _has_state(sched) else None,
                "arguments": arguments}

    @classmethod
    def from_entry(cls, e, model, where):
        """A run from :meth:`entry`'s values, every field checked (ValueError naming
        ``where``)."""
        def bad(field):
            return ValueError(f"{where}: the loop state's {field} is missing or malformed")
        run = cls()
        try:
            run.epoch, run.batch = _count(e["epoch"]), _count(e["batch"])
            run.total, run.count = float(e["epoch_loss_sum"]), _count(e["epoch_rows"])
            h = e["history"]
            run.history = {k: list(h[k]) for k in ("loss", "val_loss", "val_accuracy")}
            run.history["steps"] = _count(h["steps"])
            run.best, run.bad_epochs = float(e["best"]), _count(e["bad_epochs"])
            run.stopped_early = e["stopped_early"] is True
        except (KeyError, TypeError, ValueError):
            raise bad("position or history") from None
        if e.get("best_params") is not None:
            params = [p for p, _ in model.parameters()]
            try:
                best = [np.frombuffer(base64.b64decode(b["data"], validate=True),
                                      np.dtype(b["dtype"])) for b in e["best_params"]]
            except (KeyError, TypeError, ValueError):
                raise bad("best parameters") from None
            if [(b.size, b.dtype) for b in best] != [(p.size, p.dtype.newbyteorder("="))
                                                      for p in params]:
                raise bad("best parameters (they do not fit this model)")
            run.best_params = [b.astype(p.dtype) for b, p in zip(best, params)]
        for field in ("shuffle_rng", "dropout_rng"):
            try:                        # a generator refuses a state that is not its own
                np.random.default_rng().bit_generator.state = e[field]
            except (KeyError, TypeError, ValueError):
                raise bad(f"{field.replace('_', ' ')} state") from None
        return run


def _count(v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(v)
    return v


def _json_ready(state):
    """A schedule's state dict as JSON values (numpy scalars as Python numbers); TypeError
    for anything JSON cannot hold exactly."""
    def convert(v):
        if isinstance(v, dict):
            return {str(k): convert(u) for k, u in v.items()}
        if isinstance(v, (list, tuple)):
            return [convert(u) for u in v]
        if isinstance(v, np.generic):
            v = v.item()
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        raise TypeError(f"the schedule's state_dict() holds a {type(v).__name__}; a "
                        "checkpoint can record numbers, strings, lists and dicts")
    return convert(dict(state))


class _Checkpoints:
    """Writes ``fit``'s checkpoint: the model file (model and optimizer state, as
    :func:`fastrnn.io.save` writes it) and its loop state file (:func:`loop_state_path`),
    each atomically. Two files cannot be replaced in one step, so the loop state is written
    first and keeps, by the sha256 of the model file's bytes, the entry of this save and
    of the one before: whichever model file a crash between the two writes leaves on
    disk, its entry is there."""

    def __init__(self, path, previous=None):
        self.path, self.previous = path, previous      # previous: (sha256, entry) or None

    def write(self, model, optimizer, entry):
        blob = io.model_bytes(model, optimizer)
        digest = hashlib.sha256(blob).hexdigest()
        saves = {digest: entry}
        if self.previous is not None and self.previous[0] != digest:
            saves[self.previous[0]] = self.previous[1]
        text = json.dumps({"fastrnn_loop_state": _LOOP_STATE_FORMAT, "saves": saves})
        io.atomic_write(loop_state_path(self.path), text.encode(), what="loop state file")
        io.atomic_write(self.path, blob, what="model file")
        self.previous = (digest, entry)


def _read_resume(path, model, optimizer, sched, arguments):
    """Everything ``fit(resume=path)`` restores, read and checked, nothing changed yet:
    ``(model loaded from the file, optimizer state, run, loop state entry, the model
    file's sha256)``."""
    state_path = loop_state_path(path)
    blob = io.read_regular(path, "model file")
    try:
        text = io.read_regular(state_path, "loop state file")
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"cannot resume from {path}: its loop state "
                                f"file {state_path} is missing (fit(checkpoint=...) writes "
                                "both; a file written by save() has none)") from None
    try:
        saves = json.loads(text.decode("utf-8"))["saves"]
        if not isinstance(saves, dict):
            raise TypeError
    except (ValueError, TypeError, KeyError, RecursionError):
        raise ValueError(f"cannot resume from {path}: {state_path} is not a loop state "
                         "file") from None
    digest = hashlib.sha256(blob).hexdigest()
    entry = saves.get(digest)
    if not isinstance(entry, dict):
        raise ValueError(f"cannot resume from {path}: it is not a model file its loop state "
                         f"{state_path} was written with (replaced since, or a copy of "
                         "another run's)")
    loaded, opt_state = io.load_bytes(blob, path, with_optimizer=True)
    differ = sorted(k for k in set(loaded.config) | set(model.config)
                    if loaded.config.get(k) != model.config.get(k))
    if differ:
        raise ValueError(f"cannot resume from {path}: its model differs from this one in "
                         + ", ".join(f"{k} ({loaded.config.get(k)!r} there, "
                                     f"{model.config.get(k)!r} here)" for k in differ))
    if opt_state is None or opt_state["name"] != type(optimizer).__name__:
        raise ValueError(f"cannot resume from {path}: it holds the state of "
                         f"{opt_state['name'] if opt_state else 'no optimizer'}, this run "
                         f"trains with {type(optimizer).__name__}")
    given = entry.get("arguments")
    if given != arguments:
        differ = [k for k in arguments if not isinstance(given, dict)
                  or given.get(k) != arguments[k]]
        raise ValueError(f"cannot resume from {path}: the run was made with other "
                         + ", ".join(f"{k} ({given.get(k) if isinstance(given, dict) else '?'!r}"
                                     f" there, {arguments[k]!r} here)" for k in differ)
                         + "; resume with the same data and loop arguments")
    if (sched is None) != (entry.get("schedule") is None):
        raise ValueError(f"cannot resume from {path}: " + (
            "the run had a schedule; give the same schedule" if sched is None else
            "its run had no schedule with state (state_dict/load_state_dict); this one has"))
    if sched is not None and not _has_state(sched):
        raise TypeError("resume needs a schedule with state_dict() and load_state_dict()")
    run = _Run.from_entry(entry, model, f"cannot resume from {path}")
    return loaded, opt_state["state"], run, entry, digest


def _commit_resume(resumed, model, optimizer, sched, rng, parallel):
    """Load a checked checkpoint (:func:`_read_resume`) into the model, the optimizer, the
    schedule and the generators; the optimizer keeps its own state if anything fails
    (every process fails together)."""
    loaded, opt_state, run, entry, _ = resumed
    snapshot = optimizer.state_dict() if _has_state(optimizer) else None
    failed = None
    try:
        optimizer.load_state_dict(opt_state)
        if sched is not None:
            sched.load_state_dict(entry["schedule"])
    except Exception as exc:            # noqa: BLE001 - re-raised below (on every process)
        failed = exc
        if snapshot is not None:
            optimizer.load_state_dict(snapshot)
    if parallel is not None:
        parallel.agree(failed, "resuming failed")
    elif failed is not None:
        raise failed
    model.load_state_dict(loaded.state_dict())
    rng.bit_generator.state = entry["shuffle_rng"]
    model.rnn._rng.bit_generator.state = entry["dropout_rng"]
    return run


# ---- the loop ----------------------------------------------------------------------------

def fit(model, x, y, lengths=None, epochs=10, batch_size=32, optimizer="adam", lr=1e-3,
        weight_decay=0.0, clip_norm=None, clip_value=None, schedule=None,
        validation_data=None, early_stopping=None, shuffle=True, seed=0, tbptt=None,
        progress=True, checkpoint=None, checkpoint_every=None, best_checkpoint=None,
        max_steps=None, allreduce=None, resume=None):
    """Train ``model`` (a :class:`~fastrnn.SequenceModel`) on ``x`` and ``y``; return the
    history. Bound as ``model.fit(x, y, ...)``, which is this function.

    Each epoch shuffles the N sequences, cuts them into batches of ``batch_size`` and makes
    one update per batch (per ``tbptt`` chunk): forward with dropout, the task's loss
    (padding masked out), backward, clipping, then the optimizer's and the schedule's
    step. The data (``validation_data`` too) follow the model's input rule (see
    :class:`~fastrnn.SequenceModel`), and everything, every target and hyper-parameter
    included, is checked before the first update. The model is left in eval mode.

    Arguments:

    * ``x``: a padded array ``(N, T, I)`` (``(N, T)`` token ids), or a list of N ragged
      sequences ``(T_i, I)`` / ``(T_i,)``, padded here (their lengths taken from them).
    * ``y``: targets for the model's task: per-step ``(N, T)`` class indices or ``(N, T,
      C)`` values, per-sequence ``(N,)`` class indices or ``(N, C)`` values; a ragged list
      for per-step tasks with ragged ``x``.
    * ``lengths``: ``(N,)`` integers in [0, T] for a padded ``x``; steps at or past a row's
      length are padding (no loss, no gradient). Batches are cut to their longest row.
      Default ``None``.
    * ``epochs``: passes over the data. Default ``10``.
    * ``batch_size``: sequences per update (the last batch of an epoch may be smaller).
      Default ``32``.
    * ``optimizer``: ``"adam"``, ``"adamw"``, ``"sgd"``, ``"rmsprop"`` or ``"adagrad"`` (the
      :mod:`fastrnn.nn.optim` class, built with ``lr`` and ``weight_decay``), or an
      optimizer object built on ``model.parameters()`` (then ``lr`` and ``weight_decay`` are
      not used). Default ``"adam"``.
    * ``lr``: learning rate of a named optimizer. Default ``1e-3``.
    * ``weight_decay``: weight decay of a named optimizer; 0 keeps the optimizer's own
      default, which is 0 for all but ``"adamw"`` (0.01, as ``torch.optim.AdamW``). Default
      ``0.0``.
    * ``clip_norm``: global-norm clipping over all gradients, ``g <- g * clip_norm / ||g||``
      when ``||g||`` exceeds it. Default ``None``.
    * ``clip_value``: element-wise clipping to ``[-clip_value, clip_value]``; with both,
      values are clipped first, then the norm. Default ``None``.
    * ``schedule``: a callable ``optimizer -> schedule`` (e.g. ``lambda o: optim.CosineLR(o,
      total_steps)``); the schedule's ``step()`` runs after each update. Default ``None``.
    * ``validation_data``: ``(x, y)`` or ``(x, y, lengths)``, evaluated after each epoch
      (``model.evaluate``): ``val_loss`` and ``val_accuracy`` in the history. Default
      ``None``.
    * ``early_stopping``: patience in epochs on the validation loss (needs
      ``validation_data``); when training stops, the best weights are restored. Default
      ``None``.
    * ``shuffle``: a new order of the sequences every epoch (False: their order). Default
      ``True``.
    * ``seed``: seeds the shuffling (the model's own ``seed`` fixes its dropout). Default
      ``0``.
    * ``tbptt``: chunk length k for truncated BPTT (per-step tasks): the state is carried
      across chunks, the gradient cut between them, one update per chunk. Default ``None``.
    * ``progress``: a tqdm bar per epoch when tqdm is installed, else one printed line per
      epoch; False prints nothing. Default ``True``.
    * ``checkpoint``: a path where the model and the optimizer's state are saved
      (atomically, as :func:`fastrnn.io.save` writes them) at the end of every epoch and,
      with ``checkpoint_every``, at the first batch end at or after every
      ``checkpoint_every`` updates; the loop's own state goes next to it
      (``<checkpoint>.fit-state.json``: epoch, batch position, shuffle and dropout
      generators, schedule state, step count, history, early-stopping state). Default
      ``None``.
    * ``checkpoint_every``: updates between checkpoints within an epoch (needs
      ``checkpoint``). Default ``None``.
    * ``best_checkpoint``: a path for the model of the best validation loss so far; another
      file than ``checkpoint`` (compared once links are resolved). Default ``None``.
    * ``max_steps``: stop after that many updates in all (a resumed run's included); an
      epoch it cuts short is still reported and validated. Default ``None``.
    * ``allreduce``: data-parallel training (below). Default ``None``.
    * ``resume``: a checkpoint (usually the same path as ``checkpoint``) to continue a run
      from, with the same data and the same loop arguments (``batch_size``, ``shuffle``,
      ``tbptt`` and whether there is validation data, checked; ``epochs``, ``max_steps`` and
      ``checkpoint_every`` may change): the resumed run continues exactly where the
      checkpoint was written, so it ends with the parameters, optimizer state and history of
      a run never stopped, bit for bit. The checkpoint's model must have this model's
      architecture, its optimizer this run's optimizer's class; its learning rate and
      schedule state replace the ones given. Paths are checked for writing before the first
      update. Default ``None``.

    Failures: a non-finite output, loss or gradient stops training with
    FloatingPointError before the update, and an update that leaves a parameter
    non-finite is undone before the same error. Each update is all or nothing: an
    exception raised inside it (a signal handler calling ``sys.exit``, Ctrl-C, a
    MemoryError) leaves the model, a fastrnn optimizer and the schedule as they were
    before it, and signals whose Python handlers would raise are held until it is
    complete (fastrnn.kernels._guard). Ctrl-C (KeyboardInterrupt) stops training within
    one kernel call (a training step's forward or backward through one layer; ``tbptt``
    shortens them for long sequences), so the model holds the parameters of its last
    complete step. Each update is one step for threads that read the model meanwhile
    (``predict`` never sees half an update).

    Data-parallel training, ``allreduce``: several processes each run ``fit`` on their
    own part of every batch (:func:`fastrnn.mpi.shard` picks the rows). ``allreduce`` is
    a callable ``allreduce(buffer)`` that sums a 1-D array in place across the processes
    (MPI's ``Allreduce`` with ``SUM``; :class:`fastrnn.mpi.Allreduce` is one). It is
    called once per update with the flat gradient buffer, each process's gradient
    weighted by its number of loss terms, so the update equals one process training on
    the whole batch even when the parts differ in size or length. When it has a
    ``broadcast(buffer)`` method (rank 0's values in place), the parameters are
    broadcast at the start; its ``rank`` attribute (0 when absent) limits checkpoints and
    the progress bar to rank 0. Every decision (NaN stop, validation loss, early
    stopping) is taken on reduced values, so all processes take it together; a failure
    on one process (its inputs, a target, a validation batch, rank 0's checkpoint write)
    makes every process raise instead of waiting. Every process must get the same model
    and the same loop arguments (epochs, max_steps, tbptt, early stopping, the checkpoint
    arguments), checked at the start. To resume, every process passes ``resume`` (rank
    0's checkpoint, readable by all) and the same number of rows as before.

    Returns ``{"loss": [...], "val_loss": [...], "val_accuracy": [...], "steps": n,
    "seconds": s, "sequences_per_second": r}``: per-epoch lists (of the whole run when
    resumed; ``val_accuracy`` entries are None for regression tasks), the number of
    updates, and this call's time and rate.

    Example::

        >>> import numpy as np
        >>> import fastrnn
        >>> model = fastrnn.SequenceModel("lstm", input_size=2, hidden_size=8,
        ...                               output_size=1, task="regression", seed=0)
        >>> x = np.random.default_rng(0).standard_normal((16, 6, 2)).astype(np.float32)
        >>> y = np.cumsum(x[..., :1], axis=1)                 # (N, T, C) per-step targets
        >>> history = model.fit(x, y, epochs=3, batch_size=8, lr=1e-2, clip_norm=1.0,
        ...                     validation_data=(x[:4], y[:4]), progress=False)
        >>> len(history["loss"]), len(history["val_loss"]), history["steps"]
        (3, 3, 6)
        >>> history["val_accuracy"]
        [None, None, None]
    """
    if allreduce is not None and not callable(allreduce):
        raise TypeError("allreduce must be a callable that sums a buffer in place across "
                        f"processes (e.g. fastrnn.mpi.Allreduce()), got "
                        f"{type(allreduce).__name__}")
    parallel = _DataParallel(allreduce, model) if allreduce is not None else None
    try:
        epochs = _check_positive("epochs", epochs, integer=True)
        batch_size = _check_positive("batch_size", batch_size, integer=True)
        clip_norm = _check_positive("clip_norm", clip_norm, allow_none=True)
        clip_value = _check_positive("clip_value", clip_value, allow_none=True)
        tbptt = _check_positive("tbptt", tbptt, integer=True, allow_none=True)
        early_stopping = _check_positive("early_stopping", early_stopping, integer=True,
                                         allow_none=True)
        checkpoint_every = _check_positive("checkpoint_every", checkpoint_every, integer=True,
                                           allow_none=True)
        max_steps = _check_positive("max_steps", max_steps, integer=True, allow_none=True)
        for name, v in (("shuffle", shuffle), ("progress", progress)):
            if not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {v!r}")
        if checkpoint_every and not checkpoint:
            raise ValueError("checkpoint_every needs checkpoint (the path to save to)")
        checkpoint, best_checkpoint, resume = _check_checkpoint_paths(
            checkpoint, best_checkpoint, resume, parallel is None or parallel.rank == 0)
        if schedule is not None and not callable(schedule):
            raise TypeError("schedule must be a callable optimizer -> schedule, e.g. "
                            "lambda o: optim.CosineLR(o, total_steps)")
        if tbptt and model.output != "per_step":
            raise ValueError("truncated BPTT needs a per-step task; this model predicts once "
                             "per sequence")
        if early_stopping and validation_data is None:
            raise ValueError("early_stopping needs validation_data")
        x, y, lengths = _as_batch_data(model, x, y, lengths)
        if validation_data is not None:
            if len(validation_data) not in (2, 3):
                raise ValueError("validation_data must be (x, y) or (x, y, lengths)")
            vx, vy, vl = _as_batch_data(model, *validation_data[:2],
                                        validation_data[2] if len(validation_data) == 3
                                        else None, what="validation")
        if isinstance(optimizer, str):
            if optimizer not in _OPTIMIZERS:
                raise ValueError(f"optimizer must be one of {sorted(_OPTIMIZERS)} or an "
                                 f"optimizer object, got {optimizer!r}")
            lr = _check_positive("lr", lr)
            kw = {"weight_decay": weight_decay} if weight_decay else {}
            optimizer = _OPTIMIZERS[optimizer](model.parameters(), lr=lr, **kw)
        elif not callable(getattr(optimizer, "step", None)):
            raise TypeError(f"optimizer must be a name ({sorted(_OPTIMIZERS)}) or an optimizer "
                            f"object with a step() method, got {type(optimizer).__name__}")
        elif hasattr(optimizer, "params"):
            ours = {id(p) for p, _ in model.parameters()}
            if not any(id(p) in ours for p in optimizer.params):
                raise ValueError("the optimizer updates none of this model's parameters: "
                                 "build it on model.parameters()")
        if (checkpoint or resume) and not _has_state(optimizer):
            raise TypeError("checkpoint and resume need an optimizer with state_dict() and "
                            f"load_state_dict(); {type(optimizer).__name__} has not both")
        sched = schedule(optimizer) if schedule is not None else None
        if checkpoint and _has_state(sched):
            _json_ready(sched.state_dict())         # a state a checkpoint can record
        # what must not change between a run and its resumption (the seed may: the
        # shuffle generator's state comes from the checkpoint)
        arguments = {"sequences": len(x), "batch_size": batch_size, "shuffle": bool(shuffle),
                     "tbptt": tbptt or 0, "validation": validation_data is not None}
        resumed = None if resume is None else _read_resume(resume, model, optimizer, sched,
                                                           arguments)
    except Exception:
        if parallel is not None:        # the other processes must not wait for this one
            parallel.start(failed=True)
        raise
    if parallel is not None:
        # every process must run the same loop: the same collective calls in the same order
        parallel.start(n_batches=-(-len(x) // batch_size), T=x.shape[1] if tbptt else 0,
                       same=[validation_data is not None, epochs, max_steps or 0, tbptt or 0,
                             early_stopping or 0, bool(checkpoint), checkpoint_every or 0,
                             bool(best_checkpoint), resume is not None])
    rng = np.random.default_rng(seed)
    run = _Run() if resumed is None else _commit_resume(resumed, model, optimizer, sched, rng,
                                                        parallel)
    writer = None
    if checkpoint:
        # a crash in the first save of a resumed run must leave the entry resumed from
        same = resumed is not None and _same_file(checkpoint, resume)
        writer = _Checkpoints(checkpoint, (resumed[4], resumed[3]) if same else None)

    # every BLAS (numpy's included, for the output layer and the losses) on one thread while
    # training: fastrnn's pool threads are the parallelism, and an idle BLAS pool woken by
    # a numpy call spins on the cores they need (measured: a 17k-value np.dot woke numpy's
    # pool and made the next LSTM forward/backward 2x slower)
    with _other_blas_serial():
        return _fit_loop(model, x, y, lengths, epochs, batch_size, optimizer, clip_norm,
                         clip_value, sched, validation_data and (vx, vy, vl), early_stopping,
                         shuffle, rng, tbptt, progress, writer, checkpoint_every,
                         best_checkpoint, max_steps, parallel, run, arguments)


def _fit_loop(model, x, y, lengths, epochs, batch_size, optimizer, clip_norm, clip_value,
              sched, validation, early_stopping, shuffle, rng, tbptt, progress, writer,
              checkpoint_every, best_checkpoint, max_steps, parallel, run, arguments):
    if parallel is not None and parallel.rank != 0:
        progress = False                # rank 0 shows progress and writes the checkpoints

    def on_rank_0(write):
        """Run a checkpoint write (rank 0 only). With several processes, every one learns
        whether the write worked, so a failed write on rank 0 stops them all."""
        failed = None
        if parallel is None or parallel.rank == 0:
            try:
                write()
            except OSError as exc:
                if parallel is None:
                    raise
                failed = exc
        if parallel is not None:
            parallel.agree(failed, "rank 0 could not write the checkpoint")

    def save_checkpoint(epoch_rng):
        if writer is not None:
            entry = run.entry(epoch_rng, model, sched, arguments)
            on_rank_0(lambda: writer.write(model, optimizer, entry))

    N = len(x)
    n_batches = -(-N // batch_size)
    history = run.history
    t_start, seen = time.perf_counter(), 0
    backup = _Backup(model, optimizer, sched)
    saved_at = history["steps"]             # the step count of the last checkpoint
    while run.epoch < epochs and not run.stopped_early:
        model.train()
        # a resumed run set the generator to this epoch's start: the same order again
        run.epoch_rng = rng.bit_generator.state
        order = rng.permutation(N) if shuffle else np.arange(N)
        bar = _Progress(progress, n_batches - run.batch, f"epoch {run.epoch + 1}/{epochs}")
        stop = False
        for bi in range(run.batch, n_batches):
            idx = order[bi * batch_size:(bi + 1) * batch_size]
            xb, yb = x[idx], y[idx]
            lb = None if lengths is None else lengths[idx]
            # no time steps past the longest row (data-parallel tbptt keeps the common T:
            # every process must take the same number of chunks)
            if lb is not None and not (parallel and tbptt):
                T = max(int(lb.max()), 1)
                xb = xb[:, :T]
                if model.output == "per_step":
                    yb = yb[:, :T]
            loss, updates, rows = _train_batch(model, optimizer, xb, yb, lb, tbptt, clip_norm,
                                               clip_value, sched, backup, parallel)
            seen += len(idx)
            run.batch = bi + 1
            if updates:                 # every row empty: no update, nothing to count
                history["steps"] += updates
                run.total, run.count = run.total + loss * rows, run.count + rows
                rate = seen / max(time.perf_counter() - t_start, 1e-9)
                bar.update(loss=f"{loss:.4f}", seq_per_s=f"{rate:.0f}")
            steps = history["steps"]
            stop = bool(max_steps) and steps >= max_steps
            due = checkpoint_every and steps // checkpoint_every > saved_at // checkpoint_every
            if (stop or due) and run.batch < n_batches:      # the epoch's end saves anyway
                save_checkpoint(run.epoch_rng)
                saved_at = steps
            if stop:
                break
        complete = run.batch == n_batches
        history["loss"].append(run.total / run.count if run.count else math.nan)
        post = {"loss": f"{history['loss'][-1]:.4f}"}
        if validation:
            v = model.evaluate(*validation) if parallel is None else parallel.evaluate(*validation)
            history["val_loss"].append(v["loss"])
            history["val_accuracy"].append(v.get("accuracy"))
            post["val_loss"] = f"{v['loss']:.4f}"
            if v["loss"] < run.best:
                run.best, run.bad_epochs = v["loss"], 0
                if early_stopping:
                    run.best_params = [p.copy() for p, _ in model.parameters()]
                if best_checkpoint:
                    on_rank_0(lambda: io.save(model, best_checkpoint))
            else:
                run.bad_epochs += 1
        bar.close(**post)
        if not complete:
            # cut short by max_steps: reported above; its checkpoint holds the position
            # inside the epoch, from which a resumed run finishes it
            break
        run.epoch, run.batch, run.total, run.count = run.epoch + 1, 0, 0.0, 0
        run.stopped_early = bool(early_stopping) and run.bad_epochs >= early_stopping
        save_checkpoint(rng.bit_generator.state)
        saved_at = history["steps"]
        if stop:
            break
    if early_stopping and run.best_params is not None:
        with model._guard.writing():
            for (p, _), b in zip(model.parameters(), run.best_params):
                p[...] = b
    elapsed = time.perf_counter() - t_start
    history["seconds"] = elapsed
    history["sequences_per_second"] = seen / max(elapsed, 1e-9)
    model.eval()
    return history


def _train_batch(model, optimizer, xb, yb, lb, tbptt, clip_norm, clip_value, sched, backup,
                 parallel=None):
    """One batch: one update, or one per chunk of ``tbptt`` steps. Returns ``(mean loss,
    updates made, sequences in the batch)``, the last two over all processes when
    ``parallel`` (a :class:`_DataParallel`) is given. ``backup``: a :class:`_Backup`, taken
    before each update and restored if it fails."""
    T = xb.shape[1]
    k = tbptt or T
    state, losses, rows = None, [], len(xb)
    for t0 in range(0, T, k):
        xc = xb[:, t0:t0 + k]
        yc = yb[:, t0:t0 + k] if model.output == "per_step" and tbptt else yb
        # int64 lengths (checked at fit's start): lb - t0 is negative, never wrapped
        lc = None if lb is None else np.clip(lb - t0, 0, xc.shape[1])
        if parallel is None:
            if lc is not None and not lc.any():
                break
            out, state_n, tape = model.forward(xc, lc, state, need_tape=True)
            if not np.isfinite(out).all():
                raise FloatingPointError(_STOPPED.format(
                    "the model's outputs are NaN or infinite"))
            loss, dy = model.loss(out, yc, lc)
            if not math.isfinite(loss):
                raise FloatingPointError(_STOPPED.format(f"the training loss is {loss}"))
            model.zero_grad()
            model.backward(dy, tape)
        else:
            loss, state_n = parallel.gradient(xc, yc, lc, state)
            if loss is None:            # no process has a valid step left in this batch
                break
            rows = parallel.rows
            if not math.isfinite(loss):
                raise FloatingPointError(_STOPPED.format(
                    f"the training loss (over all processes) is {loss}"))
        grads = [g for _, g in model.parameters()]
        if clip_norm and not clip_value:
            # the norm is non-finite exactly when a gradient is (and then nothing is scaled):
            # one pass over the gradients instead of a finiteness scan and a norm
            finite = math.isfinite(optim.clip_grad_norm(grads, clip_norm))
        else:
            finite = all(np.isfinite(g).all() for g in grads)
        if not finite:
            raise FloatingPointError("non-finite gradients: stopped before the update (the "
                                     "model keeps its last good parameters); try clip_norm=1.0 "
                                     "or a lower learning rate")
        if clip_value:
            optim.clip_grad_value(grads, clip_value)
            if clip_norm:
                optim.clip_grad_norm(grads, clip_norm)
        # the update is one step for threads reading the model meanwhile, and signals wait
        # for its end (fastrnn.kernels._guard); one that leaves a parameter non-finite (a finite
        # gradient times a huge learning rate overflows), or raises, is undone
        backup.take()
        with model._guard.writing():
            try:
                optimizer.step()
                finite = all(np.isfinite(p).all() for p in backup.params)
                if finite and sched is not None:
                    sched.step()
            except BaseException:
                backup.restore()
                raise
            if not finite:
                backup.restore()
        if not finite:
            raise FloatingPointError("the update made parameters NaN or infinite: it was undone "
                                     "(the model and the optimizer keep their last good "
                                     "state); lower the learning rate or clip gradients "
                                     "(clip_norm=1.0)")
        losses.append(loss)
        state = state_n                      # carried forward, gradient cut here
    return float(np.mean(losses)) if losses else 0.0, len(losses), rows


_STOPPED = ("{}: stopped before the update (the model keeps its last good parameters); lower "
            "the learning rate or clip gradients (clip_norm=1.0)")


class _DataParallel:
    """fit's side of data-parallel training: each process computes the gradient of its part
    of the batch; ``hook(buffer)`` sums one flat buffer across processes in place.

    buffer  (P + 5,) in the model's dtype: every parameter's gradient (P values, in
            ``model.parameters()`` order) times this process's number of loss terms w, then
            a failure flag, a has-a-valid-step flag, loss * w, w, and the number of
            sequences. After the sum, gradient / sum(w) is
            the gradient of the whole batch's mean loss: exact however the rows were split.

    Collective calls come in the same order on every process (each rank runs the same loop
    over the same number of batches, checked at the start), so decisions taken on reduced
    values (a NaN, a validation loss) are the same everywhere and nobody waits forever."""

    def __init__(self, hook, model):
        self.hook, self.model = hook, model
        rank = getattr(hook, "rank", 0)
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 0:
            raise ValueError(f"allreduce.rank must be a non-negative int, got {rank!r}")
        self.rank = int(rank)
        pairs = model.parameters()
        self.offsets = np.cumsum([0] + [p.size for p, _ in pairs])
        self.buffer = np.empty(int(self.offsets[-1]) + 5, model.dtype)
        self.rows = 0

    def _sum(self, values):
        """Sum a small float64 vector over the processes (for the checks and validation)."""
        buf = np.array(values, np.float64)
        self.hook(buf)
        return buf

    # what every process must share, in start()'s vector after the two counts
    _SAME = ("validation_data given", "epochs", "max_steps", "tbptt", "early_stopping",
             "checkpoint given", "checkpoint_every", "best_checkpoint given", "resume given",
             "number of parameters", "number of parameters", "parameter dtype")

    def start(self, failed=False, n_batches=0, T=0, same=()):
        """Agree before the first update: every process passed its checks, has the same
        number of batches per epoch (and of time steps under tbptt), the same model size
        and dtype, and the same loop arguments. Then rank 0's parameters replace
        everyone's. Decided on summed values, so alike everywhere: a ValueError on all
        processes, or on none."""
        P = int(self.offsets[-1])       # in two parts: their squares stay exact in float64
        values = [float(n_batches), float(T)] + [float(v) for v in same] + \
            [float(P % 65536), float(P // 65536), float(self.buffer.itemsize)]
        if failed:                      # its values are not known: only the flag counts
            values = [0.0] * (2 + len(self._SAME))
        # all equal exactly when n * sum(a^2) == (sum a)^2
        s = self._sum([failed, 1.0] + values + [v * v for v in values])
        if failed:
            return
        n, k = s[1], len(values)
        if s[0]:
            raise ValueError(f"{int(s[0])} of {int(n)} processes failed their input checks "
                             "(their error says why)")
        sums, squares = s[2:2 + k], s[2 + k:]
        for i, name in enumerate(("batches per epoch", "padded length T (tbptt)") + self._SAME):
            if n * squares[i] != sums[i] ** 2:
                if i == 0:
                    raise ValueError("the processes have different numbers of batches per "
                                     f"epoch (mean {sums[0] / n:g}); give each the same number "
                                     "of rows or use fastrnn.mpi.shard")
                raise ValueError(f"the processes differ in their {name}: give every process "
                                 "the same model and the same fit arguments (only rank 0 "
                                 "writes the checkpoints)")
        broadcast = getattr(self.hook, "broadcast", None)
        if broadcast is not None:
            pairs = self.model.parameters()
            flat = np.concatenate([p for p, _ in pairs])
            broadcast(flat)
            with self.model._guard.writing():
                for (p, _), a, b in zip(pairs, self.offsets[:-1], self.offsets[1:]):
                    p[...] = flat[a:b]

    def agree(self, failed, message):
        """Every process learns whether any failed a local step (``failed``: its exception
        or None): all raise, the failing ones their own error, or none does."""
        s = self._sum([failed is not None])
        if s[0]:
            if failed is not None:
                raise failed
            raise RuntimeError(f"{message} (on {int(s[0])} process(es); their error says "
                               "why)")

    def gradient(self, x, y, lengths, state):
        """This process's part of one update: forward, loss and backward, then the sum.
        Leaves the whole batch's mean gradient in the model's gradient buffers and returns
        ``(mean loss over all processes, final state)``; ``(None, None)`` when no process
        has a valid step (a finished tbptt batch: no update)."""
        model, buf = self.model, self.buffer
        model.zero_grad()
        state_n, loss, w, failed = state, 0.0, 0, None
        # a per-step chunk whose rows have all ended has no loss term here; a per-sequence
        # row of length 0 still has one (its prediction comes from the initial state)
        valid = lengths is None or bool(lengths.any())
        try:
            if valid or model.output != "per_step":
                out, state_n, tape = model.forward(x, lengths, state, need_tape=True)
                w = model._count(out, lengths)
                if np.isfinite(out).all():
                    loss, dy = model.loss(out, y, lengths)
                    model.backward(dy, tape)
                else:                   # every process learns of it through the sum
                    loss = math.nan
        except Exception as exc:        # e.g. a target out of range: the others must hear
            failed, loss, w = exc, 0.0, 0
            model.zero_grad()
        for (_, g), a, b in zip(model.parameters(), self.offsets[:-1], self.offsets[1:]):
            np.multiply(g, w, out=buf[a:b])
        buf[-5:] = failed is not None, valid, (loss * w if w else 0.0), w, len(x)
        self.hook(buf)
        if buf[-5]:                     # raised everywhere, so nobody waits for the others
            if failed is not None:
                raise failed
            raise ValueError(f"{int(buf[-5])} other process(es) failed on this batch (their "
                             "error says why)")
        total = float(buf[-2])
        if not buf[-4] or total == 0:   # no row of any process has a step: no update, as
            return None, None           # one process skips such a batch
        self.rows = int(round(float(buf[-1])))
        for (_, g), a, b in zip(model.parameters(), self.offsets[:-1], self.offsets[1:]):
            np.divide(buf[a:b], total, out=g)
        return float(buf[-3]) / total, state_n

    def evaluate(self, x, y, lengths):
        """The validation loss (and accuracy) over every process's validation data."""
        model, failed = self.model, None
        total = correct = count = 0.0
        try:
            total, correct, count = model._evaluation_sums(x, y, lengths)
        except Exception as exc:        # e.g. a validation target out of range
            failed = exc
        s = self._sum([failed is not None, total, correct, count])
        if s[0]:
            if failed is not None:
                raise failed
            raise ValueError(f"validation failed on {int(s[0])} other process(es) (their "
                             "error says why)")
        return model._evaluation(*s[1:])
