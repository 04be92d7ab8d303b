"""Training loop: mini-batches over ragged data, optimizers, clipping, truncated BPTT,
validation, early stopping, progress and checkpoints."""
import math
import signal
import threading
import time

import numpy as np

from . import optim
from .models import _all_finite, pad_sequences

_OPTIMIZERS = {"sgd": optim.SGD, "adam": optim.Adam, "adamw": optim.AdamW,
               "adagrad": optim.Adagrad, "rmsprop": optim.RMSprop}


def _as_batch_data(model, x, y, lengths):
    """Arrays (N, T, ...) plus lengths (N,) from arrays or lists of ragged sequences."""
    if isinstance(x, (list, tuple)) and len(x) and np.ndim(x[0]) >= 1 and \
            len({len(s) for s in x}) > 1:
        if lengths is not None:
            raise ValueError("give lengths only with padded arrays, not with a list of sequences")
        x, lengths = pad_sequences(x, None if model.embedding else model.dtype)
        if model.output == "per_step":
            y, _ = pad_sequences(y)
    if model.embedding:
        x = np.asarray(x)
    else:
        raw = x if isinstance(x, np.ndarray) else np.asarray(x)
        # real numbers only: complex, bool, strings and objects would be read as something
        # they are not (numpy casts "1.5" and True to floats, complex by dropping a part)
        if raw.dtype.kind not in "fiu":
            raise TypeError(f"x must hold real numbers (features), got dtype {raw.dtype}")
        x = raw.astype(model.dtype, copy=False)
    y = np.asarray(y)
    if len(x) == 0:
        raise ValueError("no training data: x is empty")
    if x.ndim < 2 or x.shape[1] == 0:
        raise ValueError(f"x must be (N, T{'' if model.embedding else ', I'}) with T >= 1 "
                         f"time steps, got shape {x.shape}")
    if not model.embedding and not _all_finite(x):
        raise ValueError("x contains NaN or infinity")
    if len(y) != len(x):
        raise ValueError(f"x has {len(x)} sequences but y has {len(y)}")
    if lengths is not None:
        lengths = np.asarray(lengths)
        if lengths.shape != (len(x),) or lengths.dtype.kind not in "iu":
            raise ValueError(f"lengths must be {len(x)} integers, got shape {lengths.shape} "
                             f"dtype {lengths.dtype}")
        if lengths.min() < 0 or lengths.max() > x.shape[1]:
            raise ValueError(f"lengths must lie in [0, {x.shape[1]}]")
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
        max_steps=None):
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

    Returns ``{"loss": [...], "val_loss": [...], "val_accuracy": [...], "steps": n,
    "seconds": s, "sequences_per_second": r}`` (per-epoch lists).
    """
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
        raise ValueError("truncated BPTT needs a per-step task; this model predicts once per "
                         "sequence")
    if early_stopping and validation_data is None:
        raise ValueError("early_stopping needs validation_data")
    x, y, lengths = _as_batch_data(model, x, y, lengths)
    if validation_data is not None:
        if len(validation_data) not in (2, 3):
            raise ValueError("validation_data must be (x, y) or (x, y, lengths)")
        vx, vy, vl = _as_batch_data(model, *validation_data[:2],
                                    validation_data[2] if len(validation_data) == 3 else None)
    if isinstance(optimizer, str):
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(_OPTIMIZERS)} or an optimizer "
                             f"object, got {optimizer!r}")
        lr = _check_positive("lr", lr)
        kw = {"weight_decay": weight_decay} if weight_decay else {}
        optimizer = _OPTIMIZERS[optimizer](model.parameters(), lr=lr, **kw)
    elif not callable(getattr(optimizer, "step", None)):
        raise TypeError(f"optimizer must be a name ({sorted(_OPTIMIZERS)}) or an optimizer "
                        f"object with a step() method, got {type(optimizer).__name__}")
    elif hasattr(optimizer, "params"):
        ours = {id(p) for p, _ in model.parameters()}
        if not any(id(p) in ours for p in optimizer.params):
            raise ValueError("the optimizer updates none of this model's parameters: build it "
                             "on model.parameters()")
    sched = schedule(optimizer) if schedule is not None else None

    # every BLAS (numpy's included, for the output layer and the losses) on one thread while
    # training: fastrnn's OpenMP threads are the parallelism, and an idle BLAS pool woken by
    # a numpy call spins on the cores they need (measured: a 17k-value np.dot woke numpy's
    # pool and made the next LSTM forward/backward 2x slower)
    with _other_blas_serial():
        return _fit_loop(model, x, y, lengths, epochs, batch_size, optimizer, clip_norm,
                         clip_value, sched, validation_data and (vx, vy, vl), early_stopping,
                         shuffle, seed, tbptt, progress, checkpoint, checkpoint_every,
                         best_checkpoint, max_steps)


def _fit_loop(model, x, y, lengths, epochs, batch_size, optimizer, clip_norm, clip_value,
              sched, validation, early_stopping, shuffle, seed, tbptt, progress, checkpoint,
              checkpoint_every, best_checkpoint, max_steps):
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
            if lb is not None:                      # no time steps past the longest row
                T = max(int(lb.max()), 1)
                xb = xb[:, :T]
                if model.output == "per_step":
                    yb = yb[:, :T]
            loss = _train_batch(model, optimizer, xb, yb, lb, tbptt, clip_norm, clip_value,
                                sched, backup)
            history["steps"] += 1 if not tbptt else -(-xb.shape[1] // tbptt)
            total, count, seen = total + loss * len(idx), count + len(idx), seen + len(idx)
            rate = seen / max(time.perf_counter() - t_start, 1e-9)
            bar.update(loss=f"{loss:.4f}", seq_per_s=f"{rate:.0f}")
            if checkpoint and checkpoint_every and history["steps"] % checkpoint_every == 0:
                model.save(checkpoint, optimizer)
            if max_steps and history["steps"] >= max_steps:
                break
        history["loss"].append(total / count)
        post = {"loss": f"{total / count:.4f}"}
        if validation:
            v = model.evaluate(*validation)
            history["val_loss"].append(v["loss"])
            history["val_accuracy"].append(v.get("accuracy"))
            post["val_loss"] = f"{v['loss']:.4f}"
            if v["loss"] < best:
                best, bad_epochs = v["loss"], 0
                best_params = [p.copy() for p, _ in model.parameters()]
                if best_checkpoint:
                    model.save(best_checkpoint)
            else:
                bad_epochs += 1
        bar.close(**post)
        if checkpoint:
            model.save(checkpoint, optimizer)
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


def _train_batch(model, optimizer, xb, yb, lb, tbptt, clip_norm, clip_value, sched, backup):
    """One batch: one update, or one per chunk of ``tbptt`` steps. Returns the mean loss.
    ``backup``: arrays shaped like the parameters, where they are kept across each update."""
    T = xb.shape[1]
    k = tbptt or T
    state, losses = None, []
    for t0 in range(0, T, k):
        xc = xb[:, t0:t0 + k]
        yc = yb[:, t0:t0 + k] if model.output == "per_step" and tbptt else yb
        lc = None if lb is None else np.clip(lb - t0, 0, xc.shape[1])
        if lc is not None and not lc.any():
            break
        out, state_n, tape = model.forward(xc, lc, state, need_tape=True)
        if not np.isfinite(out).all():
            raise FloatingPointError("the model's outputs are NaN or infinite: stopped before "
                                     "the update (the model keeps its last good parameters); "
                                     "lower the learning rate or clip gradients (clip_norm=1.0)")
        loss, dy = model.loss(out, yc, lc)
        if not math.isfinite(loss):
            raise FloatingPointError(f"the training loss is {loss}: stopped before the update "
                                     "(the model keeps its last good parameters); lower the "
                                     "learning rate or clip gradients (clip_norm=1.0)")
        model.zero_grad()
        model.backward(dy, tape)
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
    return float(np.mean(losses))
