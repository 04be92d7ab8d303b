"""Training loop: mini-batches over ragged data, optimizers, clipping, truncated BPTT,
validation, early stopping, progress and checkpoints."""
import math
import signal
import threading
import time

import numpy as np

from . import optim

_OPTIMIZERS = {"sgd": optim.SGD, "adam": optim.Adam, "adamw": optim.AdamW,
               "adagrad": optim.Adagrad, "rmsprop": optim.RMSprop}


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
    kernels' own BLAS is left to fastrnn._threads.serial_blas, which counts its users across
    Python threads; limiting it here too could restore it under another thread's kernel."""
    from threadpoolctl import ThreadpoolController
    from ._threads import serial_blas
    with serial_blas:                       # make sure it has found its library
        pass
    ours = {lib.filepath for lib in serial_blas._libs}
    controller = ThreadpoolController()
    others = [lib.filepath for lib in controller.lib_controllers
              if lib.user_api == "blas" and lib.filepath not in ours]
    return controller.select(filepath=others).limit(limits=1)


class _HoldCtrlC:
    """Context manager: a Ctrl-C (SIGINT) arriving inside is held back and delivered, to
    the handler that was there before, when the block ends. For the short blocks that must
    not stop half way (a parameter update: an interrupt between two buffers' updates would
    leave the model a mix of two steps). Only the main thread receives signals, and only it
    can install handlers; elsewhere, and when the current handler was not set from Python,
    this does nothing."""

    def __enter__(self):
        self.previous, self.received = None, None
        if threading.current_thread() is threading.main_thread():
            current = signal.getsignal(signal.SIGINT)
            if current is not None:               # None: a handler not set from Python
                self.previous = current
                signal.signal(signal.SIGINT, self._hold)
        return self

    def _hold(self, signum, frame):
        self.received = (signum, frame)

    def __exit__(self, *exc):
        if self.previous is None:
            return False
        signal.signal(signal.SIGINT, self.previous)
        if self.received is not None:
            if callable(self.previous):
                self.previous(*self.received)     # default_int_handler: KeyboardInterrupt
            elif self.previous == signal.SIG_DFL:
                signal.raise_signal(signal.SIGINT)
        return False


def fit(model, x, y, lengths=None, epochs=10, batch_size=32, optimizer="adam", lr=1e-3,
        weight_decay=0.0, clip_norm=None, clip_value=None, schedule=None,
        validation_data=None, early_stopping=None, shuffle=True, seed=0, tbptt=None,
        progress=True, checkpoint=None, checkpoint_every=None, best_checkpoint=None,
        max_steps=None, allreduce=None):
    """Train ``model`` on ``x`` (N sequences) and ``y`` (targets) and return the history.

    ``x``: padded array ``(N, T, I)`` (or ``(N, T)`` token ids) with ``lengths (N,)``, or a
    list of ragged sequences (padded here). ``y``: per-step targets ``(N, T[, C])`` or
    per-sequence ``(N[, C])`` as the task wants. ``optimizer``: a name ("adam", "adamw",
    "sgd", "rmsprop", "adagrad") or an optimizer built on ``model.parameters()``.
    ``clip_norm``: global-norm clipping (g <- g * clip_norm / ||g|| when ||g|| exceeds it);
    ``clip_value``: element-wise. ``schedule``: a callable ``optimizer -> schedule`` (e.g.
    ``lambda o: optim.CosineLR(o, total_steps)``). ``validation_data``: ``(x, y)`` or
    ``(x, y, lengths)``; ``early_stopping``: patience in epochs on the validation loss (the
    best weights are restored). ``tbptt``: chunk length k for truncated BPTT (per-step
    tasks): the state is carried across chunks, the gradient cut between them, one update
    per chunk. ``checkpoint``: a path where the model and the optimizer state are saved
    (atomically) every ``checkpoint_every`` steps and at the end of every epoch, to resume
    from; ``best_checkpoint``: a path for the model of the best validation loss so far.
    ``max_steps`` stops after that many updates. A non-finite output, loss or gradient stops
    training with FloatingPointError before the update, and an update that leaves a
    parameter non-finite is undone before the same error, so the model keeps its last good
    parameters. Ctrl-C (KeyboardInterrupt) stops training within one kernel call (a
    training step's forward or backward through one layer; ``tbptt`` shortens them for
    long sequences) and never in the middle of an update, so the model holds the parameters
    of its last complete step. Hyper-parameters are checked before anything runs. Each
    update is one step for threads that read the model meanwhile (``predict`` never sees
    half an update).

    ``allreduce``: data-parallel training over several processes, each running ``fit`` on
    its own part of every batch (:func:`fastrnn.mpi.shard` picks the rows). A callable
    ``allreduce(buffer)`` that sums a 1-D array in place across the processes (MPI's
    ``Allreduce`` with ``SUM``; :class:`fastrnn.mpi.Allreduce` is one). It is called once
    per update with the flat gradient buffer, each process's gradient weighted by its number
    of loss terms, so the update equals one process training on the whole batch even when
    the parts differ in size or length. When it has a ``broadcast(buffer)`` method (rank 0's
    values in place), the parameters are broadcast at the start; its ``rank`` attribute
    (0 when absent) limits checkpoints and the progress bar to rank 0. Every decision (NaN
    stop, validation loss, early stopping) is taken on reduced values, so all processes
    take it together; a failure on one process (its inputs, a target, a validation
    batch, rank 0's checkpoint write) makes every process raise instead of waiting. Every
    process must get the same model and the same loop arguments (epochs, max_steps, tbptt,
    early stopping, the checkpoint arguments), checked at the start. Only parameters are
    broadcast: an optimizer's state (a resumed Adam) must be loaded on every process.

    Returns ``{"loss": [...], "val_loss": [...], "val_accuracy": [...], "steps": n,
    "seconds": s, "sequences_per_second": r}`` (per-epoch lists).
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
        sched = schedule(optimizer) if schedule is not None else None
    except Exception:
        if parallel is not None:        # the other processes must not wait for this one
            parallel.start(failed=True)
        raise
    if parallel is not None:
        # every process must run the same loop: the same collective calls in the same order
        parallel.start(n_batches=-(-len(x) // batch_size), T=x.shape[1] if tbptt else 0,
                       same=[validation_data is not None, epochs, max_steps or 0, tbptt or 0,
                             early_stopping or 0, bool(checkpoint), checkpoint_every or 0,
                             bool(best_checkpoint)])

    # every BLAS (numpy's included, for the output layer and the losses) on one thread while
    # training: fastrnn's OpenMP threads are the parallelism, and an idle BLAS pool woken by
    # a numpy call spins on the cores they need (measured: a 17k-value np.dot woke numpy's
    # pool and made the next LSTM forward/backward 2x slower)
    with _other_blas_serial():
        return _fit_loop(model, x, y, lengths, epochs, batch_size, optimizer, clip_norm,
                         clip_value, sched, validation_data and (vx, vy, vl), early_stopping,
                         shuffle, seed, tbptt, progress, checkpoint, checkpoint_every,
                         best_checkpoint, max_steps, parallel)


def _fit_loop(model, x, y, lengths, epochs, batch_size, optimizer, clip_norm, clip_value,
              sched, validation, early_stopping, shuffle, seed, tbptt, progress, checkpoint,
              checkpoint_every, best_checkpoint, max_steps, parallel):
    if parallel is not None and parallel.rank != 0:
        progress = False                # rank 0 shows progress and writes the checkpoints

    def save(path, opt=None):
        """Write a checkpoint (rank 0 only). With several processes, every one learns
        whether the write worked, so a failed write on rank 0 stops them all."""
        failed = None
        if parallel is None or parallel.rank == 0:
            try:
                model.save(path, opt)
            except OSError as exc:
                if parallel is None:
                    raise
                failed = exc
        if parallel is not None:
            parallel.agree(failed, "rank 0 could not write the checkpoint")
    rng = np.random.default_rng(seed)
    N = len(x)
    n_batches = -(-N // batch_size)
    history = {"loss": [], "val_loss": [], "val_accuracy": [], "steps": 0}
    best, best_params, bad_epochs = math.inf, None, 0
    t_start, seen = time.perf_counter(), 0
    backup = [np.empty_like(p) for p, _ in model.parameters()]     # the last good parameters
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(N) if shuffle else np.arange(N)
        bar = _Progress(progress, n_batches, f"epoch {epoch + 1}/{epochs}")
        total, count = 0.0, 0
        for bi in range(n_batches):
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
            if not updates:             # every row empty: no update, nothing to count
                continue
            history["steps"] += updates
            total, count = total + loss * rows, count + rows
            rate = seen / max(time.perf_counter() - t_start, 1e-9)
            bar.update(loss=f"{loss:.4f}", seq_per_s=f"{rate:.0f}")
            if checkpoint and checkpoint_every and history["steps"] % checkpoint_every == 0:
                save(checkpoint, optimizer)
            if max_steps and history["steps"] >= max_steps:
                break
        history["loss"].append(total / count if count else math.nan)
        post = {"loss": f"{history['loss'][-1]:.4f}"}
        if validation:
            v = model.evaluate(*validation) if parallel is None else parallel.evaluate(*validation)
            history["val_loss"].append(v["loss"])
            history["val_accuracy"].append(v.get("accuracy"))
            post["val_loss"] = f"{v['loss']:.4f}"
            if v["loss"] < best:
                best, bad_epochs = v["loss"], 0
                best_params = [p.copy() for p, _ in model.parameters()]
                if best_checkpoint:
                    save(best_checkpoint)
            else:
                bad_epochs += 1
        bar.close(**post)
        if checkpoint:
            save(checkpoint, optimizer)
        if early_stopping and bad_epochs >= early_stopping:
            break
        if max_steps and history["steps"] >= max_steps:
            break
    if early_stopping and best_params is not None:
        with _HoldCtrlC(), model._guard.writing():
            for (p, _), b in zip(model.parameters(), best_params):
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
    ``parallel`` (a :class:`_DataParallel`) is given. ``backup``: arrays shaped like the
    parameters, where they are kept across each update."""
    T = xb.shape[1]
    k = tbptt or T
    state, losses, rows = None, [], len(xb)
    for t0 in range(0, T, k):
        xc = xb[:, t0:t0 + k]
        yc = yb[:, t0:t0 + k] if model.output == "per_step" and tbptt else yb
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
        # the update is one step for threads reading the model meanwhile (fastrnn._guard);
        # one that leaves a parameter non-finite (a finite gradient times a huge learning
        # rate overflows) is undone
        params = [p for p, _ in model.parameters()]
        for b, p in zip(backup, params):
            np.copyto(b, p)
        # a Ctrl-C here is held to the end of the update (and of the schedule's step)
        with _HoldCtrlC(), model._guard.writing():
            optimizer.step()
            finite = all(np.isfinite(p).all() for p in params)
            if not finite:
                for b, p in zip(backup, params):
                    np.copyto(p, b)
            elif sched is not None:
                sched.step()
        if not finite:
            raise FloatingPointError("the update made parameters NaN or infinite: it was undone "
                                     "(the model keeps its last good parameters; the optimizer's "
                                     "own state includes the refused step); lower the learning "
                                     "rate or clip gradients (clip_norm=1.0)")
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
             "checkpoint given", "checkpoint_every", "best_checkpoint given",
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
