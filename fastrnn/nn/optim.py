"""Optimizers, gradient clipping and learning-rate schedules over flat parameter buffers.

A model keeps its parameters in a few flat buffers with gradients mirroring them
(``layer.flat`` / ``layer.grad``), so an optimizer takes a short list of ``(param, grad)``
pairs and updates each whole buffer with a handful of vectorised numpy operations::

    opt = Adam([(lstm.flat, lstm.grad), (head.flat, head.grad)], lr=1e-3)
    sched = CosineLR(opt, total_steps=10_000)
    for x, y in batches:
        opt.zero_grad()                      # backward accumulates into .grad
        ...forward, loss, backward...
        clip_grad_norm(opt.grads, 1.0)
        opt.step()                           # params updated in place
        sched.step()                         # sets opt.lr for the next step

The update rules are exactly torch.optim's (checked against it to 1e-12 in float64):
``step()`` counts steps from 1 (``t`` below), ``g`` is the gradient, ``p`` the parameter.
Moment buffers have the parameter's shape and dtype; scalars are Python floats, so float32
parameters are updated in float32 throughout. Gradients are only read, never modified.

``state_dict()`` holds plain values only: ``"step"`` (int), ``"lr"`` and every other
hyper-parameter (floats; flags as 0/1 ints), and the buffers as ``"<name>.<i>"`` for the
i-th pair (``"m.0"``, ``"v.1"``, ...). It survives ``np.savez``/``np.load``;
``load_state_dict`` validates keys, shapes, dtypes and values, then copies, so a resumed
run continues bit for bit.
"""
import math
import numbers

import numpy as np

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Adagrad", "RMSprop",
           "clip_grad_norm", "clip_grad_value", "StepLR", "CosineLR", "WarmupLR"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


# ---- scalar checks -----------------------------------------------------------------------

def _real(name, v):
    """v as a finite Python float (0-d numpy arrays accepted, as np.load returns them)."""
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v!r}")
    return v


def _positive(name, v):
    v = _real(name, v)
    if v <= 0:
        raise ValueError(f"{name} must be > 0, got {v!r}")
    return v


def _nonnegative(name, v):
    v = _real(name, v)
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {v!r}")
    return v


def _unit(name, v, closed=False):
    """v in [0, 1), or [0, 1] when closed."""
    v = _real(name, v)
    if not (0 <= v <= 1 if closed else 0 <= v < 1):
        raise ValueError(f"{name} must be in [0, 1{']' if closed else ')'}, got {v!r}")
    return v


def _count(name, v, minimum):
    """An int >= minimum (0-d integer arrays accepted)."""
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
    return int(v)


def _flag(name, v):
    """A bool (0/1 ints, as state_dict stores flags, accepted)."""
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v.item()
    if v not in (True, False):          # also admits 0, 1, 0.0, 1.0
        raise ValueError(f"{name} must be a bool, got {v!r}")
    return bool(v)


def _check_keys(what, got, expected):
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{what} state dict does not match: missing {missing}, "
                         f"unexpected {unexpected}")


# ---- optimizers --------------------------------------------------------------------------

def _check_params(params):
    """(params, grads) lists from a list of (param, grad) pairs, validated."""
    if isinstance(params, tuple) and len(params) == 2 and isinstance(params[0], np.ndarray):
        raise TypeError("params must be a list of (param, grad) pairs, e.g. "
                        "[(layer.flat, layer.grad)]; got a single pair")
    pairs = list(params)
    if not pairs:
        raise ValueError("params is empty: give at least one (param, grad) pair")
    ps, gs = [], []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise TypeError(f"params[{i}] must be a (param, grad) pair, got {type(pair).__name__}")
        p, g = pair
        for name, a in (("param", p), ("grad", g)):
            if not isinstance(a, np.ndarray):
                raise TypeError(f"params[{i}]: {name} must be a numpy array, "
                                f"got {type(a).__name__}")
            if a.dtype not in _FLOATS:
                raise TypeError(f"params[{i}]: {name} must be float32 or float64, got {a.dtype}")
            if not a.flags.c_contiguous:
                raise ValueError(f"params[{i}]: {name} must be C-contiguous")
            if not a.flags.writeable:
                raise ValueError(f"params[{i}]: {name} is read-only")
        if g.shape != p.shape or g.dtype != p.dtype:
            raise ValueError(f"params[{i}]: grad is {g.dtype}{g.shape}, expected the param's "
                             f"{p.dtype}{p.shape}")
        if np.may_share_memory(p, g):
            raise ValueError(f"params[{i}]: param and grad share memory")
        for j, q in enumerate(ps):
            if np.may_share_memory(p, q):
                raise ValueError(f"params[{i}] overlaps params[{j}]: each buffer once")
        ps.append(p)
        gs.append(g)
    return ps, gs


class Optimizer:
    """Base class: ``params``/``grads`` lists, ``lr``, step count, buffers, state dicts.

    Subclasses set ``_hypers`` (hyper-parameter names, ``lr`` first), implement
    ``_validate(h) -> h`` (checks a dict of all hyper-parameters, returns cleaned values;
    shared by the constructor and ``load_state_dict``), ``_buffer_names()`` and ``step()``.
    """
    _hypers = ("lr",)
    _flags = ()                                  # the hyper-parameters that are bools

    def __init__(self, params, hypers):
        self.params, self.grads = _check_params(params)   # lists of same-shape arrays
        _positive("lr", hypers["lr"])            # a schedule may later set it to 0
        for name, v in self._validate(dict(hypers)).items():
            setattr(self, name, v)
        self.steps = 0                           # optimizer steps taken
        self.state = {name: [np.full_like(p, self._buffer_init(name)) for p in self.params]
                      for name in self._buffer_names()}   # name -> one array per param

    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = _nonnegative("lr", value)

    def _validate(self, h):
        raise NotImplementedError

    def _buffer_names(self):
        return ()

    def _buffer_init(self, name):
        return 0.0

    def zero_grad(self):
        """Zero every gradient buffer (backward accumulates into them)."""
        for g in self.grads:
            g.fill(0)

    def step(self):
        raise NotImplementedError

    def state_dict(self):
        """{"step": int, hyper-parameters: float (flags 0/1), "<buffer>.<i>": array copy}."""
        d = {"step": self.steps}
        for name in self._hypers:
            v = getattr(self, name)
            d[name] = int(v) if name in self._flags else v
        for name, bufs in self.state.items():
            for i, b in enumerate(bufs):
                d[f"{name}.{i}"] = b.copy()
        return d

    def load_state_dict(self, d):
        """Restore a :meth:`state_dict` (from an optimizer of the same kind over buffers of
        the same shapes). Everything is validated before anything is changed."""
        d = dict(d)
        buffers = [f"{name}.{i}" for name in self.state for i in range(len(self.params))]
        _check_keys(type(self).__name__, d, ["step", *self._hypers, *buffers])
        steps = _count("step", d["step"], 0)
        hypers = self._validate({name: d[name] for name in self._hypers})
        arrays = {}
        for name, bufs in self.state.items():
            for i, b in enumerate(bufs):
                key = f"{name}.{i}"
                a = np.asarray(d[key])
                if a.shape != b.shape:
                    raise ValueError(f"{key}: shape {a.shape}, expected {b.shape}")
                if not np.can_cast(a.dtype, b.dtype, "safe"):
                    raise TypeError(f"{key}: dtype {a.dtype} cannot be stored exactly as {b.dtype}")
                arrays[key] = a
        # All checked: commit.
        for name, v in hypers.items():
            setattr(self, name, v)
        self.steps = steps
        for name, bufs in self.state.items():
            for i, b in enumerate(bufs):
                np.copyto(b, arrays[f"{name}.{i}"])

    def __repr__(self):
        hypers = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._hypers)
        return f"{type(self).__name__}({len(self.params)} buffers, {hypers})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum (torch.optim.SGD).

    Per step t, for every buffer::

        g = g + weight_decay * p                        # L2 penalty's gradient
        m = g                      if t == 1            # momentum buffer starts at g
        m = momentum * m + (1 - dampening) * g  if t > 1
        d = g + momentum * m       if nesterov          # look-ahead direction
        d = m                      otherwise (d = g when momentum == 0)
        p = p - lr * d

    Buffers: ``m`` (only when momentum > 0). nesterov needs momentum > 0 and dampening 0.

    Arguments: ``params``: a list of ``(param, grad)`` array pairs of one shape each (e.g.
    ``model.parameters()``, ``[(layer.flat, layer.grad)]``); params are updated in place.
    ``lr`` (required, >= 0), ``momentum=0.0``, ``dampening=0.0`` (in [0, 1]),
    ``nesterov=False``, ``weight_decay=0.0``.

    Example::

        >>> import numpy as np
        >>> from fastrnn.nn import optim
        >>> p, g = np.ones(3), np.full(3, 0.5)
        >>> opt = optim.SGD([(p, g)], lr=0.1, momentum=0.9)
        >>> opt.step(); opt.step()
        >>> p.round(6).tolist()                 # 1 - 0.1 * (0.5 + 0.95)
        [0.855, 0.855, 0.855]
    """
    _hypers = ("lr", "momentum", "dampening", "nesterov", "weight_decay")
    _flags = ("nesterov",)

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, nesterov=False,
                 weight_decay=0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      nesterov=nesterov, weight_decay=weight_decay))

    def _validate(self, h):
        h = dict(lr=_nonnegative("lr", h["lr"]),
                 momentum=_nonnegative("momentum", h["momentum"]),
                 dampening=_unit("dampening", h["dampening"], closed=True),
                 nesterov=_flag("nesterov", h["nesterov"]),
                 weight_decay=_nonnegative("weight_decay", h["weight_decay"]))
        if h["nesterov"] and (h["momentum"] <= 0 or h["dampening"] != 0):
            raise ValueError("nesterov=True requires momentum > 0 and dampening = 0, got "
                             f"momentum={h['momentum']}, dampening={h['dampening']}")
        return h

    def _buffer_names(self):
        return ("m",) if self.momentum > 0 else ()

    def step(self):
        """One update of every parameter buffer from its gradient."""
        self.steps += 1
        lr, mu, wd = self.lr, self.momentum, self.weight_decay
        for i, (p, g) in enumerate(zip(self.params, self.grads)):
            if wd:
                g = g + wd * p                          # L2 penalty's gradient
            if mu > 0:
                m = self.state["m"][i]
                if self.steps == 1:
                    m[...] = g                          # buffer starts at the gradient
                else:
                    m *= mu                             # decay the velocity
                    m += (1 - self.dampening) * g       # add the (damped) gradient
                g = g + mu * m if self.nesterov else m  # update direction
            p -= lr * g


class Adam(Optimizer):
    """Adam (torch.optim.Adam, amsgrad=False); weight decay is an L2 term in the gradient.

    Per step t, for every buffer::

        g = g + weight_decay * p                        # L2 penalty's gradient (Adam)
        m = beta1 * m + (1 - beta1) * g                 # first moment
        v = beta2 * v + (1 - beta2) * g * g             # second moment
        denom = sqrt(v) / sqrt(1 - beta2**t) + eps      # bias-corrected RMS
        p = p - lr / (1 - beta1**t) * m / denom         # bias-corrected step

    Buffers: ``m``, ``v``.

    Arguments: ``params``: a list of ``(param, grad)`` array pairs of one shape each (e.g.
    ``model.parameters()``, ``[(layer.flat, layer.grad)]``); params are updated in place.
    ``lr=1e-3``, ``betas=(0.9, 0.999)`` (beta1, beta2), ``eps=1e-8``,
    ``weight_decay=0.0``.

    Example::

        >>> import numpy as np
        >>> from fastrnn.nn import optim
        >>> p, g = np.ones(2), np.array([1.0, -1.0])
        >>> opt = optim.Adam([(p, g)], lr=0.01)
        >>> opt.step()
        >>> p.round(4).tolist(), opt.steps, sorted(opt.state_dict())[:3]
        ([0.99, 1.01], 1, ['beta1', 'beta2', 'eps'])
    """
    _hypers = ("lr", "beta1", "beta2", "eps", "weight_decay")
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        super().__init__(params, dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                                      weight_decay=weight_decay))

    @property
    def betas(self):
        return (self.beta1, self.beta2)

    def _validate(self, h):
        return dict(lr=_nonnegative("lr", h["lr"]),
                    beta1=_unit("betas[0]", h["beta1"]),
                    beta2=_unit("betas[1]", h["beta2"]),
                    eps=_positive("eps", h["eps"]),
                    weight_decay=_nonnegative("weight_decay", h["weight_decay"]))

    def _buffer_names(self):
        return ("m", "v")

    def step(self):
        """One update of every parameter buffer from its gradient."""
        self.steps += 1
        t, lr, b1, b2, eps, wd = (self.steps, self.lr, self.beta1, self.beta2, self.eps,
                                  self.weight_decay)
        step_size = lr / (1 - b1 ** t)                  # lr over first-moment bias correction
        rms_correction = math.sqrt(1 - b2 ** t)         # sqrt of second-moment bias correction
        for p, g, m, v in zip(self.params, self.grads, self.state["m"], self.state["v"]):
            if self._decoupled:
                p *= 1 - lr * wd                        # AdamW: decay the weights directly
            elif wd:
                g = g + wd * p                          # Adam: L2 penalty's gradient
            m += (1 - b1) * (g - m)                     # first moment
            v *= b2
            v += (1 - b2) * (g * g)                     # second moment
            denom = np.sqrt(v) / rms_correction + eps   # bias-corrected RMS
            p -= step_size * (m / denom)                # bias-corrected step


class AdamW(Adam):
    """Adam with decoupled weight decay (torch.optim.AdamW, amsgrad=False).

    Per step t, for every buffer::

        p = p * (1 - lr * weight_decay)                 # decay the weights, not the gradient
        m = beta1 * m + (1 - beta1) * g                 # first moment
        v = beta2 * v + (1 - beta2) * g * g             # second moment
        denom = sqrt(v) / sqrt(1 - beta2**t) + eps      # bias-corrected RMS
        p = p - lr / (1 - beta1**t) * m / denom         # bias-corrected step

    Buffers: ``m``, ``v``.

    Arguments: ``params``: a list of ``(param, grad)`` array pairs of one shape each (e.g.
    ``model.parameters()``, ``[(layer.flat, layer.grad)]``); params are updated in place.
    ``lr=1e-3``, ``betas=(0.9, 0.999)``, ``eps=1e-8``, ``weight_decay=1e-2`` (torch's
    default; applied as ``p *= 1 - lr * weight_decay`` before the Adam step).

    Example::

        >>> import numpy as np
        >>> from fastrnn.nn import optim
        >>> p, g = np.ones(2), np.zeros(2)      # no gradient: only the decay acts
        >>> optim.AdamW([(p, g)], lr=0.1, weight_decay=0.5).step()
        >>> p.tolist()
        [0.95, 0.95]
    """
    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


class Adagrad(Optimizer):
    """Adagrad (torch.optim.Adagrad).

    Per step t, for every buffer::

        g = g + weight_decay * p                        # L2 penalty's gradient
        clr = lr / (1 + (t - 1) * lr_decay)             # decayed learning rate
        v = v + g * g                                   # sum of squared gradients
        p = p - clr * g / (sqrt(v) + eps)               # per-coordinate step

    Buffers: ``v``, starting at ``initial_accumulator_value``.

    Arguments: ``params``: a list of ``(param, grad)`` array pairs of one shape each (e.g.
    ``model.parameters()``, ``[(layer.flat, layer.grad)]``); params are updated in place.
    ``lr=1e-2``, ``lr_decay=0.0``, ``weight_decay=0.0``,
    ``initial_accumulator_value=0.0`` (the sum of squares starts there), ``eps=1e-10``.

    Example::

        >>> import numpy as np
        >>> from fastrnn.nn import optim
        >>> p, g = np.zeros(2), np.array([2.0, -0.5])
        >>> optim.Adagrad([(p, g)], lr=0.1).step()
        >>> p.round(6).tolist()                 # -lr * g / sqrt(g * g)
        [-0.1, 0.1]
    """
    _hypers = ("lr", "lr_decay", "weight_decay", "eps")

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10):
        self._init_acc = _nonnegative("initial_accumulator_value", initial_accumulator_value)
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      eps=eps))

    def _validate(self, h):
        return dict(lr=_nonnegative("lr", h["lr"]),
                    lr_decay=_nonnegative("lr_decay", h["lr_decay"]),
                    weight_decay=_nonnegative("weight_decay", h["weight_decay"]),
                    eps=_positive("eps", h["eps"]))

    def _buffer_names(self):
        return ("v",)

    def _buffer_init(self, name):
        return self._init_acc

    def step(self):
        """One update of every parameter buffer from its gradient."""
        self.steps += 1
        clr = self.lr / (1 + (self.steps - 1) * self.lr_decay)   # decayed learning rate
        wd, eps = self.weight_decay, self.eps
        for p, g, v in zip(self.params, self.grads, self.state["v"]):
            if wd:
                g = g + wd * p                          # L2 penalty's gradient
            v += g * g                                  # sum of squared gradients
            p -= clr * (g / (np.sqrt(v) + eps))         # per-coordinate step


class RMSprop(Optimizer):
    """RMSprop (torch.optim.RMSprop).

    Per step t, for every buffer::

        g = g + weight_decay * p                        # L2 penalty's gradient
        v = alpha * v + (1 - alpha) * g * g             # running mean of g^2
        a = alpha * a + (1 - alpha) * g                 # running mean of g   (centered)
        denom = sqrt(v - a * a) + eps   if centered     # running std of g
        denom = sqrt(v) + eps           otherwise       # running RMS of g
        m = momentum * m + g / denom                    # (momentum > 0)
        p = p - lr * m                  if momentum > 0
        p = p - lr * g / denom          otherwise

    Buffers: ``v``; ``g`` (the running mean ``a``) when centered; ``m`` when momentum > 0.

    Arguments: ``params``: a list of ``(param, grad)`` array pairs of one shape each (e.g.
    ``model.parameters()``, ``[(layer.flat, layer.grad)]``); params are updated in place.
    ``lr=1e-2``, ``alpha=0.99``, ``eps=1e-8``, ``weight_decay=0.0``, ``momentum=0.0``,
    ``centered=False``.

    Example::

        >>> import numpy as np
        >>> from fastrnn.nn import optim
        >>> p, g = np.zeros(1), np.ones(1)
        >>> opt = optim.RMSprop([(p, g)], lr=0.01)
        >>> opt.step()
        >>> round(float(p[0]), 4)               # -lr * g / sqrt(0.01 * g * g)
        -0.1
    """
    _hypers = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")
    _flags = ("centered",)

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0,
                 momentum=0.0, centered=False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered))

    def _validate(self, h):
        return dict(lr=_nonnegative("lr", h["lr"]),
                    alpha=_unit("alpha", h["alpha"]),
                    eps=_positive("eps", h["eps"]),
                    weight_decay=_nonnegative("weight_decay", h["weight_decay"]),
                    momentum=_nonnegative("momentum", h["momentum"]),
                    centered=_flag("centered", h["centered"]))

    def _buffer_names(self):
        return ("v",) + (("g",) if self.centered else ()) + (("m",) if self.momentum > 0 else ())

    def step(self):
        """One update of every parameter buffer from its gradient."""
        self.steps += 1
        lr, alpha, eps, wd, mu = self.lr, self.alpha, self.eps, self.weight_decay, self.momentum
        for i, (p, g) in enumerate(zip(self.params, self.grads)):
            if wd:
                g = g + wd * p                          # L2 penalty's gradient
            v = self.state["v"][i]
            v *= alpha
            v += (1 - alpha) * (g * g)                  # running mean of g^2
            if self.centered:
                a = self.state["g"][i]
                a += (1 - alpha) * (g - a)              # running mean of g
                denom = np.sqrt(v - a * a) + eps        # running std of g
            else:
                denom = np.sqrt(v) + eps                # running RMS of g
            if mu > 0:
                m = self.state["m"][i]
                m *= mu
                m += g / denom                          # velocity
                p -= lr * m
            else:
                p -= lr * (g / denom)


# ---- gradient clipping -------------------------------------------------------------------

def _grad_list(grads):
    if isinstance(grads, np.ndarray):
        grads = [grads]
    grads = list(grads)
    for i, g in enumerate(grads):
        if not isinstance(g, np.ndarray) or g.dtype not in _FLOATS:
            raise TypeError(f"grads[{i}] must be a float32/float64 numpy array")
        if not g.flags.writeable:
            raise ValueError(f"grads[{i}] is read-only")
    return grads


def clip_grad_norm(grads, max_norm):
    """Rescale gradients in place so that their global L2 norm is at most ``max_norm``.

    The norm is over all arrays together (Pascanu et al.'s rule)::

        norm = sqrt(sum_i sum(g_i * g_i))               # accumulated in float64
        g_i  = g_i * (max_norm / norm)   if norm > max_norm, else unchanged

    grads    a list of arrays (e.g. ``optimizer.grads``) or one array
    returns  the norm before clipping (float). A NaN or inf norm is returned without
             touching the gradients: the caller decides (skip the step, lower the lr).

    Example::

        >>> import numpy as np
        >>> from fastrnn.nn import optim
        >>> grads = [np.array([3.0]), np.array([4.0])]
        >>> optim.clip_grad_norm(grads, 1.0), [g.round(6).tolist() for g in grads]
        (5.0, [[0.6], [0.8]])
    """
    grads = _grad_list(grads)
    max_norm = _positive("max_norm", max_norm)
    sq = 0.0
    for g in grads:
        # a ufunc reduction, not np.dot: numpy's BLAS would wake its own thread pool,
        # which then competes with fastrnn's pool threads (measured: 5 ms for 17k values)
        flat = g.ravel().astype(np.float64, copy=False)
        sq += float(np.add.reduce(flat * flat))
    norm = math.sqrt(sq)
    if math.isfinite(norm) and norm > max_norm:
        coef = max_norm / norm
        for g in grads:
            g *= coef
    return norm


def clip_grad_value(grads, clip_value):
    """Clamp every gradient element into [-clip_value, clip_value], in place (NaN stays NaN).

    grads    a list of arrays (e.g. ``optimizer.grads``) or one array

    Example::

        >>> import numpy as np
        >>> from fastrnn.nn import optim
        >>> g = np.array([-3.0, 0.5, 2.0])
        >>> optim.clip_grad_value(g, 1.0)
        >>> g.tolist()
        [-1.0, 0.5, 1.0]
    """
    grads = _grad_list(grads)
    c = _positive("clip_value", clip_value)
    for g in grads:
        np.clip(g, -c, c, out=g)


# ---- learning-rate schedules -------------------------------------------------------------

class _Schedule:
    """A closed-form learning rate ``lr_at(k)`` for the step after ``k`` optimizer steps.

    Construction reads ``optimizer.lr`` as ``base_lr`` and sets ``optimizer.lr =
    lr_at(0)``; each :meth:`step` (call it after ``optimizer.step()``, as in PyTorch)
    advances ``steps`` by one and sets ``optimizer.lr = lr_at(steps)``.
    """

    def __init__(self, optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fastrnn.nn.optim.Optimizer, "
                            f"got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.steps = 0

    def lr_at(self, k):
        raise NotImplementedError

    @property
    def lr(self):
        """The learning rate for the next optimizer step."""
        return self.lr_at(self.steps)

    def _apply(self):
        self.optimizer.lr = self.lr

    def step(self):
        """Advance one optimizer step and set ``optimizer.lr`` for the next."""
        self.steps += 1
        self._apply()

    def state_dict(self):
        return {"steps": self.steps, "base_lr": self.base_lr}

    def load_state_dict(self, d):
        """Restore a :meth:`state_dict` and set ``optimizer.lr`` from it."""
        d = dict(d)
        _check_keys(type(self).__name__, d, self.state_dict())
        self.steps, self.base_lr = self._parse(d)
        self._apply()

    @staticmethod
    def _parse(d):
        return _count("steps", d["steps"], 0), _nonnegative("base_lr", d["base_lr"])


class StepLR(_Schedule):
    """Decay by ``gamma`` every ``step_size`` steps (torch.optim.lr_scheduler.StepLR)::

        lr_at(k) = base_lr * gamma ** (k // step_size)

    Arguments: ``optimizer`` (its ``lr`` is ``base_lr``), ``step_size`` (>= 1),
    ``gamma=0.1``.

    Example::

        >>> import numpy as np
        >>> from fastrnn.nn import optim
        >>> opt = optim.SGD([(np.zeros(1), np.zeros(1))], lr=1.0)
        >>> sched = optim.StepLR(opt, step_size=2, gamma=0.5)
        >>> lrs = []
        >>> for _ in range(5):
        ...     lrs.append(opt.lr); opt.step(); sched.step()
        >>> lrs
        [1.0, 1.0, 0.5, 0.5, 0.25]
    """

    def __init__(self, optimizer, step_size, gamma=0.1):
        super().__init__(optimizer)
        self.step_size = _count("step_size", step_size, 1)
        self.gamma = _positive("gamma", gamma)
        self._apply()

    def lr_at(self, k):
        return self.base_lr * self.gamma ** (k // self.step_size)


class CosineLR(_Schedule):
    """Half a cosine from ``base_lr`` down to ``min_lr`` over ``total_steps``, then flat
    (torch.optim.lr_scheduler.CosineAnnealingLR with T_max = total_steps, eta_min = min_lr,
    up to total_steps; torch's curve rises again after it, this one stays at min_lr)::

        lr_at(k) = min_lr + (base_lr - min_lr) * (1 + cos(pi * k / N)) / 2    k < N = total_steps
        lr_at(k) = min_lr                                                     k >= N

    Arguments: ``optimizer`` (its ``lr`` is ``base_lr``), ``total_steps`` (N >= 1),
    ``min_lr=0.0``.

    Example::

        >>> import numpy as np
        >>> from fastrnn.nn import optim
        >>> opt = optim.Adam([(np.zeros(1), np.zeros(1))], lr=1.0)
        >>> sched = optim.CosineLR(opt, total_steps=4)
        >>> [round(sched.lr_at(k), 4) for k in range(6)]
        [1.0, 0.8536, 0.5, 0.1464, 0.0, 0.0]
    """

    def __init__(self, optimizer, total_steps, min_lr=0.0):
        super().__init__(optimizer)
        self.total_steps = _count("total_steps", total_steps, 1)
        self.min_lr = _nonnegative("min_lr", min_lr)
        self._apply()

    def lr_at(self, k):
        if k >= self.total_steps:
            return self.min_lr
        cos = math.cos(math.pi * k / self.total_steps)
        return self.min_lr + (self.base_lr - self.min_lr) * (1 + cos) / 2


class WarmupLR(_Schedule):
    """Linear warm-up over the first ``warmup_steps`` steps, then ``after`` (or constant)::

        peak     = after.lr_at(0) if after else base_lr
        lr_at(k) = peak * (k + 1) / warmup_steps       k < warmup_steps   (peak/W, ..., peak)
        lr_at(k) = after.lr_at(k - warmup_steps)       k >= warmup_steps  (after from its start)
        lr_at(k) = peak                                k >= warmup_steps, no after

    The first step uses ``peak / warmup_steps`` (never 0) and step ``warmup_steps`` the full
    ``peak``; ``after`` then runs its own course from its step 0 (whose lr is also ``peak``),
    so e.g. ``WarmupLR(opt, 500, after=CosineLR(opt, 10_000))`` decays over 10 000 steps
    after the 500 warm-up steps. ``after`` must be built on the same optimizer; only the
    WarmupLR is stepped (it keeps ``after.steps`` in sync).

    Arguments: ``optimizer`` (its ``lr`` is ``base_lr``), ``warmup_steps`` (W >= 1),
    ``after=None`` (a schedule of the same optimizer, run after the warm-up).

    Example::

        >>> import numpy as np
        >>> from fastrnn.nn import optim
        >>> opt = optim.SGD([(np.zeros(1), np.zeros(1))], lr=1.0)
        >>> sched = optim.WarmupLR(opt, 2, after=optim.CosineLR(opt, total_steps=2))
        >>> [round(sched.lr_at(k), 4) for k in range(5)], opt.lr
        ([0.5, 1.0, 1.0, 0.5, 0.0], 0.5)
    """

    def __init__(self, optimizer, warmup_steps, after=None):
        super().__init__(optimizer)
        self.warmup_steps = _count("warmup_steps", warmup_steps, 1)
        if after is not None:
            if not isinstance(after, _Schedule):
                raise TypeError(f"after must be a schedule, got {type(after).__name__}")
            if after.optimizer is not optimizer:
                raise ValueError("after must be a schedule of the same optimizer")
        self.after = after
        self._apply()

    def lr_at(self, k):
        W = self.warmup_steps
        if k < W:
            peak = self.after.lr_at(0) if self.after is not None else self.base_lr
            return peak * (k + 1) / W
        return self.after.lr_at(k - W) if self.after is not None else self.base_lr

    def _apply(self):
        if self.after is not None:
            self.after.steps = max(0, self.steps - self.warmup_steps)
        super()._apply()

    def state_dict(self):
        d = super().state_dict()
        if self.after is not None:
            d.update({f"after.{k}": v for k, v in self.after.state_dict().items()})
        return d

    def load_state_dict(self, d):
        """Restore a :meth:`state_dict` (``after``'s included) and set ``optimizer.lr``."""
        d = dict(d)
        _check_keys(type(self).__name__, d, self.state_dict())
        steps, base_lr = self._parse(d)            # validate ours before changing anything
        if self.after is not None:
            self.after.load_state_dict({k[len("after."):]: v for k, v in d.items()
                                        if k.startswith("after.")})
        self.steps, self.base_lr = steps, base_lr
        self._apply()
