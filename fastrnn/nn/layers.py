"""Recurrent layers and cells with PyTorch's arguments, parameter names and shapes.

:class:`RNN`, :class:`LSTM` and :class:`GRU` run whole sequences through stacks of
``num_layers`` layers, each optionally bidirectional, on the compiled kernels (through
:mod:`fastrnn.functional`); :class:`RNNCell`, :class:`LSTMCell` and :class:`GRUCell` are
one time step, as PyTorch's cells. Each class's docstring holds its equations, arguments
and defaults, input and output shapes in every layout, parameter names, gate order and
initialisation, and an example. What they share:

* parameters live in one flat, 64-byte aligned buffer ``layer.flat`` with named views
  ``layer.params``; ``layer.grad``/``layer.grads`` mirror it, so an optimizer is one loop
  over two arrays, and :meth:`~RecurrentLayer.load_state_dict` keeps the buffer (optimizers
  and streams made earlier follow new weights);
* calling a layer is inference (no dropout, buffers kept per thread); training is
  :meth:`~RecurrentLayer.forward`, which returns a tape, then :meth:`~RecurrentLayer.backward`,
  which accumulates into ``layer.grad``;
* the initialisation follows the reference essay's advice (orthogonal recurrent weights,
  Glorot input weights, a remembering LSTM forget gate), and ``seed`` fixes every random
  choice.
"""
import difflib
import inspect
import threading

import numpy as np

from .. import functional as F
from .._spec import INT32_MAX, flag, float_dtype, gate_count, lengths_array, positive_int
from ..kernels._guard import WeightGuard
from ..kernels._threads import all_blas_serial

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"]

def _aligned_zeros(n, dtype, align=64):
    """n zeros of dtype starting on an ``align``-byte boundary (a cache line): the batch-1
    kernels stream weight rows with 64-byte loads, and loads that straddle two lines made
    an H=128 LSTM step 40% slower (gemv.h)."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.zeros(n * itemsize + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + n * itemsize].view(dtype)


def _float_array(name, a, dtype):
    """``a`` as an array of ``dtype``: a list is taken in ``dtype``, a float array of another
    width is cast; anything else (complex, ints, bools, objects, strings) is refused."""
    if isinstance(a, (list, tuple)):
        try:
            return np.asarray(a, dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name}: expected a (nested) list of real numbers ({exc})") from None
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype.kind != "f":
        raise TypeError(f"{name} has dtype {a.dtype}, expected floats ({np.dtype(dtype)})")
    return a.astype(dtype, copy=False)


def checked_state(state, layout, params):
    """{name: float array} from a state dict, every name, shape and value checked against
    ``layout`` ((name, shape, offset) triples) before anything is copied."""
    from collections.abc import Mapping
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping of parameter name -> array, got "
                        f"{type(state).__name__}")
    missing = [n for n, _, _ in layout if n not in state]
    extra = [k for k in state if k not in params]
    if missing or extra:
        raise ValueError(f"state dict mismatch: missing {missing}, unexpected {extra}")
    out = {}
    for name, shape, _ in layout:
        v = state[name]
        a = np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
        if a.dtype.kind != "f":
            raise TypeError(f"{name}: dtype {a.dtype}, expected a float array")
        if a.shape != tuple(shape):
            raise ValueError(f"{name}: shape {a.shape}, expected {tuple(shape)}")
        with np.errstate(over="ignore"):         # a float64 beyond float32's range -> inf
            a = a.astype(params[name].dtype, copy=False)
        if not np.isfinite(a).all():
            raise ValueError(f"{name} holds NaN or infinity (in the layer's {a.dtype})")
        out[name] = a
    return out


def _keyword_names(*functions):
    """The argument names of ``functions`` that can be given by keyword, in order."""
    names = []
    for f in functions:
        for p in inspect.signature(f).parameters.values():
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self" \
                    and p.name not in names:
                names.append(p.name)
    return names


def _refuse_unknown_keywords(owner, given, valid):
    """Python's TypeError for a keyword argument that ``owner`` (a public class name) does
    not take, raised by the public class rather than by the private base that would
    otherwise name itself, with the closest valid argument as a hint."""
    for name in given:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"{owner}() got an unexpected keyword argument {name!r}{hint}")


def _orthogonal(rng, n):
    """A uniformly random (n, n) orthogonal matrix (QR of a Gaussian, signs fixed). On one
    BLAS thread, so that making a layer leaves no BLAS threads spinning beside its kernels."""
    with all_blas_serial():
        q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


class Tape:
    """What a layer's :meth:`~RecurrentLayer.forward` keeps for its backward: per layer of
    the stack ``(caches per direction, dropout mask or None, the layer's input (T, B, ·))``,
    the reverse direction's time index, the lengths, the thread count, whether the input was
    unbatched, and the input's shape ``(T, B, I)``. ``owner`` is the layer that made it: a
    tape is only valid for that layer's backward."""

    __slots__ = ("owner", "layers", "reverse_index", "lengths", "n_threads", "unbatched",
                 "shape")

    def __init__(self, owner, layers, reverse_index, lengths, n_threads, unbatched, shape):
        self.owner, self.layers, self.reverse_index = owner, layers, reverse_index
        self.lengths, self.n_threads, self.unbatched, self.shape = \
            lengths, n_threads, unbatched, shape


class RecurrentLayer:
    """The machinery :class:`RNN`, :class:`LSTM` and :class:`GRU` share (parameters, calls,
    training, stepping, streaming); each subclass's docstring documents its arguments,
    equations, shapes and parameters. Not built directly."""
    cell = None

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype=np.float32, seed=None, n_threads=None):
        self.input_size = positive_int("input_size", input_size)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        self.num_layers = positive_int("num_layers", num_layers)
        if isinstance(dropout, (bool, np.bool_)) or not isinstance(
                dropout, (int, float, np.integer, np.floating)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.bias, self.batch_first = flag("bias", bias), flag("batch_first", batch_first)
        self.dropout, self.bidirectional = float(dropout), flag("bidirectional", bidirectional)
        self.dtype = float_dtype(dtype)
        F.check_n_threads(n_threads)            # refuses a bad count now, not at the first call
        self.n_threads = n_threads
        self.training = True
        self._guard = WeightGuard()             # load_state_dict is atomic for readers
        H, G = self.hidden_size, self.gates
        widest = G * H * max(self.input_size, H * self.num_directions, H)
        if widest > INT32_MAX:
            raise ValueError(f"a weight matrix of {widest} values (gates * hidden_size * "
                             "max(input_size, hidden_size)) exceeds the kernels' 32-bit index "
                             "range")
        self._rng = np.random.default_rng(seed)
        self._layout = self._param_layout()
        size = sum(int(np.prod(shape)) for _, shape, _ in self._layout)
        self.flat = _aligned_zeros(size, self.dtype)      # all parameters, one buffer
        self.grad = _aligned_zeros(size, self.dtype)      # their gradients, same layout
        self.params = self._views(self.flat)
        self.grads = self._views(self.grad)
        self._init_params()

    # ---- parameters ----------------------------------------------------------------
    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def gates(self):
        return gate_count(self.cell)

    def _cell_params(self):
        """Extra per-direction parameters of the cell, (suffix-less name, shape)."""
        return []

    def _param_layout(self):
        H, G = self.hidden_size, self.gates
        layout, offset = [], 0
        for layer in range(self.num_layers):
            I = self.input_size if layer == 0 else H * self.num_directions
            for d in range(self.num_directions):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                entries = [("weight_ih", (G * H, I)), ("weight_hh", (G * H, H))]
                if self.bias:
                    entries += [("bias_ih", (G * H,)), ("bias_hh", (G * H,))]
                entries += self._cell_params()
                for name, shape in entries:
                    layout.append((name + sfx, shape, offset))
                    offset += int(np.prod(shape))
        return layout

    def _views(self, flat):
        return {name: flat[off:off + int(np.prod(shape))].reshape(shape)
                for name, shape, off in self._layout}

    def __getattr__(self, name):
        params = self.__dict__.get("params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def _init_params(self):
        H, G, rng = self.hidden_size, self.gates, self._rng
        for name, shape, _ in self._layout:
            p = self.params[name]
            if name.startswith("weight_hh"):
                p[...] = np.concatenate([_orthogonal(rng, H) for _ in range(G)])
            elif name.startswith("weight_ih"):
                limit = np.sqrt(6.0 / (shape[1] + H))
                p[...] = rng.uniform(-limit, limit, shape)
        self._init_gate_bias()

    def _init_gate_bias(self):
        pass

    def state_dict(self):
        """Copies of every parameter, by PyTorch's names."""
        return {name: self.params[name].copy() for name, _, _ in self._layout}

    def load_state_dict(self, state):
        """Copy arrays (numpy or anything with ``.numpy()``/``__array__``) into the
        parameters; names and shapes must match exactly, values must be finite floats
        (float16/32/64, cast to the layer's dtype). Everything is checked before anything
        is written, and the copy is one step for concurrent readers: a call running
        meanwhile (``__call__``, ``step``, a stream's step) computes entirely from the old
        weights or entirely from the new ones (fastrnn.kernels._guard). The parameter buffer stays
        the same object, so optimizers and streams made earlier follow the new weights."""
        self._write_params(checked_state(state, self._layout, self.params))

    def _write_params(self, checked):
        """Copy checked arrays (every parameter, by name) in, as one version for readers."""
        with self._guard.writing():
            for name, _, _ in self._layout:
                self.params[name][...] = checked[name]

    def zero_grad(self):
        self.grad.fill(0)

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    # ---- the kernels, per direction --------------------------------------------------
    def _kernel_params(self, sfx):
        """(W_ih, W_hh, b_ih, b_hh) of one direction; with bias=False, shared zeros."""
        p = self.params
        if not self.bias:
            zeros = self.__dict__.get("_zero_bias")
            if zeros is None:
                zeros = self._zero_bias = np.zeros(self.gates * self.hidden_size, self.dtype)
            return p["weight_ih" + sfx], p["weight_hh" + sfx], zeros, zeros
        return (p["weight_ih" + sfx], p["weight_hh" + sfx], p["bias_ih" + sfx],
                p["bias_hh" + sfx])

    def _run(self, sfx, x, h0, c0, lengths, nt, workspace=None):
        """One direction of one layer: (hs, h_n, c_n or None, cache); with a
        ``workspace`` (inference), hs and the cache live in its buffers."""
        raise NotImplementedError

    def _step_plan(self, sfx):
        """The native step of one direction of one layer (fastrnn.functional.step_plan),
        made at its first use and kept: it reads the parameters in place, so it follows
        load_state_dict and optimizers; each step computes from one version of them."""
        plans = self.__dict__.get("_plans")
        if plans is None:
            plans = self.__dict__.setdefault("_plans", _StepPlans())
        plan = plans.get(sfx)
        if plan is None:
            p = self.params
            guard = self.__dict__.get("_guard")
            plan = plans[sfx] = F.step_plan(
                self.cell, p["weight_ih" + sfx], p["weight_hh" + sfx], p.get("bias_ih" + sfx),
                p.get("bias_hh" + sfx), **self._peepholes(sfx), **self._step_variant(),
                guard=guard if isinstance(guard, WeightGuard) else None)
        return plan

    def _peepholes(self, sfx):
        return {}

    def _step_variant(self):
        """The cell variant's arguments of fastrnn.functional.step_plan."""
        return {}

    def _step_layer(self, sfx, x, h, c, nt):
        """One step of one layer: (h', c' or None), new (B, H) arrays."""
        raise NotImplementedError

    def release_buffers(self):
        """Drop the inference buffers every thread keeps for this layer (at most 64 MiB per
        thread and direction of each layer; they come back on the next call)."""
        self.__dict__["_workspaces"] = threading.local()

    def _workspace(self, sfx):
        """This thread's inference buffers for one direction of one layer (F.Workspace):
        kept across calls, so a batch does not map and fault tens of MB anew each time."""
        local = self.__dict__.get("_workspaces")
        if local is None:
            local = self.__dict__.setdefault("_workspaces", threading.local())
        spaces = getattr(local, "spaces", None)
        if spaces is None:
            spaces = local.spaces = {}
        ws = spaces.get(sfx)
        if ws is None:
            ws = spaces[sfx] = F.Workspace()
        return ws

    def _back(self, sfx, dhs, dh_n, dc_n, cache, nt, need_dx=True):
        """Backward of one direction: (dx, dh0, dc0 or None); accumulates into self.grads."""
        raise NotImplementedError

    def _grad_views(self, sfx, cache_keys):
        g = self.grads
        out = {}
        for k in cache_keys:
            name = {"W_ih": "weight_ih", "W_hh": "weight_hh", "b_ih": "bias_ih",
                    "b_hh": "bias_hh", "p_i": "peephole_i", "p_f": "peephole_f",
                    "p_o": "peephole_o"}[k] + sfx
            # bias=False: the kernel still writes a bias gradient, into scratch
            out[k] = g[name] if name in g else np.zeros(self.gates * self.hidden_size,
                                                        self.dtype)
        return out

    # ---- public calls --------------------------------------------------------------
    def _prepare(self, x, state, lengths):
        if isinstance(x, (list, tuple)):
            x = _float_array("x", x, self.dtype)
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a numpy array, got {type(x).__name__}")
        if x.dtype != self.dtype:
            raise TypeError(f"x has dtype {x.dtype}, expected {self.dtype} (the layer's dtype)")
        unbatched = x.ndim == 2
        if x.ndim not in (2, 3):
            raise ValueError(f"x must be 3-D ({'B, T' if self.batch_first else 'T, B'}, I) "
                             f"or 2-D (T, I), got shape {x.shape}")
        if unbatched:
            x = x[:, None, :]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        T, B, I = x.shape
        if I != self.input_size:
            raise ValueError(f"x has {I} features, expected input_size={self.input_size}")
        LD, H = self.num_layers * self.num_directions, self.hidden_size
        states = self._split_state(state, LD, B, H, unbatched)
        if lengths is not None:
            if unbatched:
                lengths = np.asarray(lengths).reshape(-1)
            lengths = lengths_array(lengths, T, B)
        return x, states, lengths, unbatched

    def _split_state(self, state, LD, B, H, unbatched):
        """[(h0, c0)] per (layer, direction); c0 is None for RNN/GRU."""
        parts = [None, None]
        if state is not None:
            given = state if self.cell == "lstm" else (state,)
            if self.cell == "lstm" and not (isinstance(state, tuple) and len(state) == 2):
                raise TypeError("LSTM state must be a pair (h0, c0)")
            for i, s in enumerate(given):
                # a list is data in the layer's dtype, as x is; an array keeps its own
                s = _float_array("initial state", s, self.dtype) if isinstance(s, list) \
                    else np.asarray(s)
                if s.dtype != self.dtype:
                    raise TypeError(f"initial state has dtype {s.dtype}, expected {self.dtype}")
                want = (LD, H) if unbatched else (LD, B, H)
                if s.shape != want:
                    raise ValueError(f"initial state has shape {s.shape}, expected {want} "
                                     "(num_layers * num_directions, batch, hidden_size)")
                parts[i] = s.reshape(LD, B, H)
        return [(None if parts[0] is None else parts[0][k],
                 None if parts[1] is None else parts[1][k]) for k in range(LD)]

    def _forward(self, x, states, lengths, need_cache, training):
        """Whole stack; returns out (T, B, D*H), [(h_n, c_n)] per (layer, direction), tape.
        ``training``: dropout between layers (an argument, not ``self.training``, so that
        inference in one thread never changes the mode another thread trains in)."""
        nt = F.effective_n_threads(self.n_threads)
        T, B, _ = x.shape
        rev = None if not self.bidirectional else _reverse_index(T, B, lengths)
        finals, tape = [], []
        inp = x
        for layer in range(self.num_layers):
            outs, layer_tape = [], []
            for d in range(self.num_directions):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                h0, c0 = states[layer * self.num_directions + d]
                xin = inp if d == 0 else _gather_time(inp, rev)
                # inference keeps its buffers per thread (the caller copies what it
                # returns); training's cache must outlive the call
                ws = None if need_cache else self._workspace(sfx)
                hs, h_n, c_n, cache = self._run(sfx, xin, h0, c0, lengths, nt, ws)
                outs.append(hs if d == 0 else _gather_time(hs, rev))
                finals.append((h_n, c_n))
                layer_tape.append(cache)
            out = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=2)
            mask = None
            if training and self.dropout > 0 and layer < self.num_layers - 1:
                keep = 1.0 - self.dropout
                mask = (self._rng.random(out.shape) < keep).astype(self.dtype) / keep
                out = out * mask
            tape.append((layer_tape, mask, inp))
            inp = out
        return inp, finals, (tape, rev, lengths, nt) if need_cache else None     # Tape's parts

    def _pack_state(self, finals, B, unbatched):
        LD, H = len(finals), self.hidden_size
        h = np.stack([f[0] for f in finals])
        shape = (LD, H) if unbatched else (LD, B, H)
        if self.cell == "lstm":
            return h.reshape(shape), np.stack([f[1] for f in finals]).reshape(shape)
        return h.reshape(shape)

    def _pack_out(self, out, unbatched):
        if unbatched:
            return out[:, 0, :]
        return out.transpose(1, 0, 2) if self.batch_first else out

    def __call__(self, x, state=None, lengths=None):
        """Inference: ``out, state_n`` with PyTorch's shapes (dropout off)."""
        x, states, lengths, unbatched = self._prepare(x, state, lengths)
        out, finals, _ = self._guard.read(self._forward, x, states, lengths, False, False)
        return self._pack_out(out, unbatched).copy(), self._pack_state(finals, x.shape[1], unbatched)

    def _final_state(self, x, state=None, lengths=None):
        """``self(x, state, lengths)[1]`` without copying out the outputs (a model that
        predicts once per sequence reads only the final state)."""
        x, states, lengths, unbatched = self._prepare(x, state, lengths)
        _, finals, _ = self._guard.read(self._forward, x, states, lengths, False, False)
        return self._pack_state(finals, x.shape[1], unbatched)

    def forward(self, x, state=None, lengths=None):
        """Training forward: ``out, state_n, tape``; pass the tape to :meth:`backward`.
        Dropout between layers is applied when ``self.training``."""
        x, states, lengths, unbatched = self._prepare(x, state, lengths)
        out, finals, parts = self._forward(x, states, lengths, True, self.training)
        tape = Tape(self, *parts, unbatched, x.shape)
        return (self._pack_out(out, unbatched).copy(),
                self._pack_state(finals, x.shape[1], unbatched), tape)

    def backward(self, dout, dstate_n, tape, need_dx=True):
        """Gradients of a loss through :meth:`forward`: accumulates into ``self.grad`` (call
        :meth:`zero_grad` first) and returns ``dx, dstate0`` in the input's layout.
        ``dout`` and ``dstate_n`` may be None (zeros). ``need_dx=False`` skips the input
        gradient (dx is None), for inputs that are data. A float ``dout`` of another
        width is cast to the layer's dtype."""
        if not isinstance(tape, Tape) or tape.owner is not self:
            raise TypeError("tape must be the third value returned by this layer's forward()")
        stack, rev, lengths, nt = tape.layers, tape.reverse_index, tape.lengths, tape.n_threads
        unbatched, (T, B, I) = tape.unbatched, tape.shape
        LD, H, D = self.num_layers * self.num_directions, self.hidden_size, self.num_directions
        if dout is None:
            dout = np.zeros((T, B, D * H), self.dtype)
        else:
            dout = _float_array("dout", dout, self.dtype)
            dout = dout[:, None, :] if unbatched else (
                dout.transpose(1, 0, 2) if self.batch_first else dout)
            if dout.shape != (T, B, D * H):
                raise ValueError(f"dout has shape {dout.shape}, expected the output's shape")
        dstates = self._split_state(dstate_n, LD, B, H, unbatched)
        dstate0 = [None] * LD
        for layer in range(self.num_layers - 1, -1, -1):
            caches, mask, _ = stack[layer]
            if mask is not None:
                dout = dout * mask
            dx = None
            for d in range(D):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                k = layer * D + d
                dhs = dout[:, :, d * H:(d + 1) * H]
                if d == 1:
                    dhs = _gather_time(dhs, rev)
                dh_n, dc_n = dstates[k]
                want_dx = need_dx or layer > 0
                dxd, dh0, dc0 = self._back(sfx, np.ascontiguousarray(dhs), dh_n, dc_n,
                                           caches[d], nt, want_dx)
                if want_dx:
                    if d == 1:
                        dxd = _gather_time(dxd, rev)
                    dx = dxd if dx is None else dx + dxd
                dstate0[k] = (dh0, dc0)
            dout = dx
        if not need_dx:
            return None, self._pack_state(dstate0, B, unbatched)
        dx = dout[:, 0, :] if unbatched else (dout.transpose(1, 0, 2) if self.batch_first else dout)
        return dx, self._pack_state(dstate0, B, unbatched)

    # ---- streaming -----------------------------------------------------------------
    def initial_state(self, batch=1):
        """The zero state for ``batch`` streams; a plain array (LSTM: a pair) you own."""
        shape = (self.num_layers * self.num_directions, batch, self.hidden_size)
        z = np.zeros(shape, self.dtype)
        return (z, z.copy()) if self.cell == "lstm" else z

    def step(self, x_t, state):
        """One time step for ``B`` streams: ``x_t (B, I)`` -> ``y_t (B, H), state``. The
        state is returned new, never modified in place, so one layer serves many streams.

        This is the streaming hot path: it checks only what the kernels need (dtype, shape,
        contiguity) and calls them directly, one layer after another."""
        if self.bidirectional:
            raise ValueError("a bidirectional layer needs the whole sequence; it cannot step")
        if not isinstance(x_t, np.ndarray) or x_t.ndim != 2 or x_t.dtype != self.dtype \
                or x_t.shape[1] != self.input_size:
            x_t = self._step_input(x_t)
        B, H, L = x_t.shape[0], self.hidden_size, self.num_layers
        if B * max(self.gates * H, x_t.shape[1]) > INT32_MAX:
            raise ValueError(f"batch {B} is too large for the kernels' 32-bit index range; "
                             "split it")
        lstm = self.cell == "lstm"
        if state is None:
            state = self.initial_state(B)
        if lstm and not (isinstance(state, (tuple, list)) and len(state) == 2):
            raise ValueError(f"state must be a pair of {self.dtype} arrays of shape "
                             f"{(L, B, H)} (from initial_state({B}))")
        hs = state[0] if lstm else state
        cs = state[1] if lstm else None
        for s in (hs, cs) if lstm else (hs,):
            if not isinstance(s, np.ndarray) or s.shape != (L, B, H) or s.dtype != self.dtype:
                raise ValueError(f"state must be {'a pair of ' if lstm else ''}{self.dtype} "
                                 f"arrays of shape {(L, B, H)} (from initial_state({B}))")
        inp = np.ascontiguousarray(x_t)
        if not inp.flags.aligned:               # a misaligned buffer: the kernels get a copy
            inp = inp.copy()
        # one version of the weights for the whole step (fastrnn.kernels._guard, inlined: this is
        # the hot path); _step_all changes nothing the caller sees, so it can run again
        guard = self._guard
        g = guard.gen
        if not g & 1:
            out = self._step_all(inp, hs, cs, B)
            if guard.gen == g:
                return out
        return guard.read(self._step_all, inp, hs, cs, B)

    def _step_all(self, inp, hs, cs, B):
        # every layer through the cell's one native step (fastrnn.functional.<cell>_step)
        L, lstm = self.num_layers, self.cell == "lstm"
        nt = F.effective_n_threads(self.n_threads)
        hn, cn = [], []
        for layer in range(L):
            h, c = self._step_layer(f"_l{layer}", inp, hs[layer],
                                    None if cs is None else cs[layer], nt)
            hn.append(h)
            cn.append(c)
            inp = h
        h_new = np.stack(hn)            # (L, B, H), new: y below stays a separate array
        y = hn[-1]
        return y, ((h_new, np.stack(cn)) if lstm else h_new)

    def stream(self, batch=1, state=None):
        """A :class:`fastrnn.Stream`: this network running over ``batch`` streams, one call
        per time step, its state kept inside (zeros, or ``state`` as :meth:`step` takes it).

        The lowest-latency way to serve a model: ``y = s.step(x_t)`` with ``x_t (B, I)``,
        or ``(I,)`` when ``batch`` is 1, returns ``(B, H)`` (or ``(H,)``). The stream reads
        this layer's parameters in place on every call and fixes its thread count when
        made. One stream's calls are serialised by a lock; give each client its own.

        Weights replaced with :meth:`load_state_dict` (or by a step of ``fit``) while the
        stream runs: each step computes from one version, old or new, never a mix; the
        step after the replacement runs the new weights from the state the old ones left
        (``reset()`` the stream to start over). The parameter buffer is written in place,
        so the stream's pointers into it stay valid. A stream made before ``os.fork`` steps
        on one thread in the child, with the same results."""
        if self.bidirectional:
            raise ValueError("a bidirectional layer needs the whole sequence; it cannot stream")
        batch = positive_int("batch", batch)
        if batch * max(self.gates * self.hidden_size, self.input_size) > INT32_MAX:
            raise ValueError(f"batch={batch} is too large for the kernels' 32-bit index range")
        params = []
        for layer in range(self.num_layers):
            sfx = f"_l{layer}"
            p = self.params
            d = {"W_ih": p["weight_ih" + sfx], "W_hh": p["weight_hh" + sfx],
                 "b_ih": p.get("bias_ih" + sfx), "b_hh": p.get("bias_hh" + sfx)}
            for g in getattr(self, "peephole", ""):
                d["p_" + g] = p[f"peephole_{g}" + sfx]
            params.append(d)
        s = F.make_stream(self, batch, params, F.effective_n_threads(self.n_threads))
        if state is not None:
            s.set_state(state)
        return s

    def _step_input(self, x_t):
        x_t = _float_array("x_t", x_t, self.dtype) if isinstance(x_t, (list, tuple)) else x_t
        if not isinstance(x_t, np.ndarray) or x_t.ndim != 2:
            raise ValueError(f"x_t must be 2-D (batch, input_size), got {getattr(x_t, 'shape', x_t)}")
        if x_t.dtype != self.dtype:
            raise TypeError(f"x_t has dtype {x_t.dtype}, expected {self.dtype}")
        if x_t.shape[1] != self.input_size:
            raise ValueError(f"x_t has {x_t.shape[1]} features, expected {self.input_size}")
        return x_t

    # ---- construction arguments ------------------------------------------------------
    # the arguments of RNN/LSTM/GRU's own __init__ beyond RecurrentLayer's (nonlinearity, ...)
    _variant_arguments = ()

    @classmethod
    def _refuse_unknown(cls, owner, given):
        _refuse_unknown_keywords(owner, given,
                                 _keyword_names(cls.__init__, RecurrentLayer.__init__))

    def _arguments(self, names):
        """``name=value`` for each of ``names`` whose value differs from its default."""
        defaults = {}
        for f in (type(self).__init__, RecurrentLayer.__init__):
            for p in inspect.signature(f).parameters.values():
                defaults.setdefault(p.name, p.default)
        defaults["peephole"] = ""               # peephole=False is stored as no gates
        out = []
        for name in names:
            value = getattr(self, name)
            if value != defaults[name]:
                out.append(f"{name}={value.name if name == 'dtype' else value!r}")
        return out

    def __repr__(self):
        """PyTorch's form, with every argument that is not at its default, e.g.
        ``LSTM(64, 128, num_layers=2, batch_first=True, peephole='ifo')``."""
        args = [str(self.input_size), str(self.hidden_size)] + self._arguments(
            ("num_layers", "bias", "batch_first", "dropout", "bidirectional")
            + self._variant_arguments + ("dtype", "n_threads"))
        return f"{type(self).__name__}({', '.join(args)})"


def _reverse_index(T, B, lengths):
    """idx (T, B): time index that the reverse direction reads at step t for row b (each
    row's valid steps backwards; padding steps stay where they are)."""
    t = np.arange(T)[:, None]
    L = np.full((1, B), T) if lengths is None else lengths[None, :]
    return np.where(t < L, L - 1 - t, t)


def _gather_time(a, idx):
    """a[idx[t, b], b] for every t, b: an involution when idx comes from _reverse_index."""
    return np.take_along_axis(a, idx[:, :, None], axis=0)


class RNN(RecurrentLayer):
    """A multi-layer Elman RNN over whole sequences, ``torch.nn.RNN``'s arguments, names
    and shapes. For each layer and direction, at every time step t::

        h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)      act = tanh or relu

    ``x_t`` is the input at step t (layer 0) or the previous layer's output ``(D*H,)``
    (layers 1 and up), ``h_{t-1}`` the layer's state before the step (``h0`` at t = 0).

    Arguments (``bias`` and those after it by keyword only):

    * ``input_size`` (I): features of ``x``. ``hidden_size`` (H): units per layer.
    * ``num_layers=1`` (L): stacked layers; layer k+1 reads layer k's output.
    * ``nonlinearity="tanh"``: ``"tanh"`` or ``"relu"``.
    * ``bias=True``: False drops ``bias_ih``/``bias_hh`` (the sums above lose them).
    * ``batch_first=False``: True takes and returns ``(B, T, ...)`` instead of
      ``(T, B, ...)``; states stay ``(L*D, B, H)`` either way, as in PyTorch.
    * ``dropout=0.0``: probability in [0, 1) of zeroing each output of every layer but
      the last, in :meth:`forward` while ``training`` (inverted dropout, scaled by
      ``1/(1-p)``); calling the layer (inference) never drops.
    * ``bidirectional=False`` (D = 2 if True else 1): a second direction per layer reads
      each row's valid steps backwards; outputs are concatenated ``[forward, reverse]``.
    * ``dtype=np.float32``: float32 or float64; inputs and states must have it.
    * ``seed=None``: seeds the initialisation and the dropout masks (same seed,
      bit-identical layer). ``n_threads=None``: threads of the kernels (None:
      OMP_NUM_THREADS or the CPUs; -1 all CPUs, -2 all but one).

    Inputs of ``layer(x, state=None, lengths=None)`` (D = num_directions, L = num_layers):

    * ``x``: ``(T, B, I)``, ``(B, T, I)`` with ``batch_first``, or ``(T, I)`` unbatched;
      a numpy array of the layer's dtype (a nested list is taken in that dtype).
    * ``state`` (h0): ``(L*D, B, H)`` (``(L*D, H)`` unbatched), zeros when None; row
      ``k*D + d`` is layer k, direction d (0 forward, 1 reverse).
    * ``lengths``: ``(B,)`` integers in [0, T]. Steps ``t >= lengths[b]`` are padding:
      their output is zero and the state is held, so ``h_n`` is the state after each
      row's last valid step (``h0`` for length 0), as with PyTorch's packed sequences.

    Outputs ``out, h_n``:

    * ``out``: ``(T, B, D*H)``, ``(B, T, D*H)`` with ``batch_first``, or ``(T, D*H)``
      unbatched: the last layer's ``h_t`` at every step, a new array.
    * ``h_n``: ``(L*D, B, H)`` (``(L*D, H)`` unbatched), ordered as ``h0``.

    Parameters, PyTorch's names, in one flat buffer ``layer.flat`` (gradients in
    ``layer.grad``, same layout; ``layer.params``/``layer.grads`` are the named views,
    also attributes, e.g. ``layer.weight_ih_l0``), per layer k with suffix ``_l{k}``
    and ``_l{k}_reverse`` for the second direction:

    * ``weight_ih_l{k}``: ``(H, I)`` for k = 0, ``(H, D*H)`` above.
    * ``weight_hh_l{k}``: ``(H, H)``. ``bias_ih_l{k}``, ``bias_hh_l{k}``: ``(H,)``.

    Initialisation: ``weight_hh`` a random orthogonal ``(H, H)`` matrix; ``weight_ih``
    Xavier/Glorot uniform in ``[-a, a]``, ``a = sqrt(6 / (fan_in + H))``; biases zero.

    Training: :meth:`forward` returns a tape for :meth:`backward`, which accumulates
    into ``layer.grad`` (zero it with :meth:`zero_grad`). One step at a time:
    :meth:`step` or :meth:`stream` (unidirectional stacks).

    Example::

        >>> import numpy as np
        >>> import fastrnn
        >>> rnn = fastrnn.RNN(10, 20, num_layers=2, nonlinearity="relu", seed=0)
        >>> rnn
        RNN(10, 20, num_layers=2, nonlinearity='relu')
        >>> x = np.random.default_rng(0).standard_normal((5, 3, 10)).astype(np.float32)
        >>> out, h_n = rnn(x)                       # x (T, B, I)
        >>> out.shape, h_n.shape
        ((5, 3, 20), (2, 3, 20))
        >>> bool((out[-1] == h_n[-1]).all())        # the last step is the top layer's h_n
        True
        >>> rnn.weight_ih_l1.shape, rnn.weight_hh_l1.shape
        ((20, 20), (20, 20))
    """
    cell = "rnn"
    _variant_arguments = ("nonlinearity",)

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", **kw):
        RNN._refuse_unknown(type(self).__name__, kw)
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, **kw)

    def _run(self, sfx, x, h0, c0, lengths, nt, workspace=None):
        hs, h_n, cache = F.rnn_forward(x, h0, *self._kernel_params(sfx), lengths=lengths,
                                       nonlinearity=self.nonlinearity, n_threads=nt,
                                       workspace=workspace)
        return hs, h_n, None, cache

    def _step_variant(self):
        return {"nonlinearity": self.nonlinearity}

    def _step_layer(self, sfx, x, h, c, nt):
        return F.rnn_step(self._step_plan(sfx), x, h, n_threads=nt), None

    def _back(self, sfx, dhs, dh_n, dc_n, cache, nt, need_dx=True):
        dx, dh0, _ = F.rnn_backward(dhs, dh_n, cache, n_threads=nt, need_dx=need_dx,
                                    grads=self._grad_views(sfx, ("W_ih", "W_hh", "b_ih", "b_hh")))
        return dx, dh0, None


class LSTM(RecurrentLayer):
    """A multi-layer LSTM over whole sequences, ``torch.nn.LSTM``'s arguments, names and
    shapes, with optional peepholes and coupled input-forget gates. For each layer and
    direction, at every time step t (σ the logistic sigmoid, ``*`` elementwise)::

        a_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh       (G*H,), blocks a_i, a_f, a_g, a_o
        i_t = σ(a_i + p_i * c_{t-1})                      input gate
        f_t = σ(a_f + p_f * c_{t-1})                      forget gate (coupled: f_t = 1 - i_t)
        g_t = tanh(a_g)                                   candidate cell
        c_t = f_t * c_{t-1} + i_t * g_t                   cell state
        o_t = σ(a_o + p_o * c_t)                          output gate (sees the new c_t)
        h_t = o_t * tanh(c_t)                             hidden state, the output

    A peephole term ``p * c`` is there only for the gates named in ``peephole`` (Gers &
    Schmidhuber 2000; the ONNX convention). ``x_t`` is the input (layer 0) or the
    previous layer's output ``(D*H,)``; ``(h_{t-1}, c_{t-1})`` is ``(h0, c0)`` at t = 0.

    Arguments (``bias`` and those after it by keyword only):

    * ``input_size`` (I): features of ``x``. ``hidden_size`` (H): units per layer.
    * ``num_layers=1`` (L): stacked layers; layer k+1 reads layer k's output.
    * ``peephole=False``: True (gates i, f and o) or a string of distinct gates from
      ``"ifo"``, e.g. ``"io"``, that look at the cell state.
    * ``coupled=False``: True couples the forget gate to the input gate, ``f = 1 - i``
      (CIFG, Greff et al.): three gate blocks (i, g, o), G = 3, no peephole ``f``.
    * ``bias=True``: False drops ``bias_ih``/``bias_hh`` (and the forget-gate bias).
    * ``batch_first=False``: True takes and returns ``(B, T, ...)`` instead of
      ``(T, B, ...)``; states stay ``(L*D, B, H)`` either way, as in PyTorch.
    * ``dropout=0.0``: probability in [0, 1) of zeroing each output of every layer but
      the last, in :meth:`forward` while ``training`` (inverted dropout, scaled by
      ``1/(1-p)``); calling the layer (inference) never drops.
    * ``bidirectional=False`` (D = 2 if True else 1): a second direction per layer reads
      each row's valid steps backwards; outputs are concatenated ``[forward, reverse]``.
    * ``dtype=np.float32``: float32 or float64; inputs and states must have it.
    * ``seed=None``: seeds the initialisation and the dropout masks (same seed,
      bit-identical layer). ``n_threads=None``: threads of the kernels (None:
      OMP_NUM_THREADS or the CPUs; -1 all CPUs, -2 all but one).

    Inputs of ``layer(x, state=None, lengths=None)``:

    * ``x``: ``(T, B, I)``, ``(B, T, I)`` with ``batch_first``, or ``(T, I)`` unbatched;
      a numpy array of the layer's dtype (a nested list is taken in that dtype).
    * ``state``: a pair ``(h0, c0)``, each ``(L*D, B, H)`` (``(L*D, H)`` unbatched),
      zeros when None; row ``k*D + d`` is layer k, direction d (0 forward, 1 reverse).
    * ``lengths``: ``(B,)`` integers in [0, T]. Steps ``t >= lengths[b]`` are padding:
      their output is zero and the state is held, so ``(h_n, c_n)`` is the state after
      each row's last valid step (``(h0, c0)`` for length 0), as with PyTorch's packed
      sequences.

    Outputs ``out, (h_n, c_n)``:

    * ``out``: ``(T, B, D*H)``, ``(B, T, D*H)`` with ``batch_first``, or ``(T, D*H)``
      unbatched: the last layer's ``h_t`` at every step, a new array.
    * ``h_n``, ``c_n``: ``(L*D, B, H)`` (``(L*D, H)`` unbatched), ordered as ``h0``.

    Parameters, PyTorch's names, in one flat buffer ``layer.flat`` (gradients in
    ``layer.grad``, same layout; ``layer.params``/``layer.grads`` are the named views,
    also attributes, e.g. ``layer.weight_ih_l0``), per layer k with suffix ``_l{k}``
    and ``_l{k}_reverse`` for the second direction; gate blocks stacked along the rows in
    the order (i, f, g, o), coupled (i, g, o), so a ``torch.nn.LSTM`` ``state_dict``
    loads by copy:

    * ``weight_ih_l{k}``: ``(G*H, I)`` for k = 0, ``(G*H, D*H)`` above
      (``W_ii|W_if|W_ig|W_io``).
    * ``weight_hh_l{k}``: ``(G*H, H)``. ``bias_ih_l{k}``, ``bias_hh_l{k}``: ``(G*H,)``.
    * ``peephole_i_l{k}``, ``peephole_f_l{k}``, ``peephole_o_l{k}``: ``(H,)``, for the
      gates in ``peephole``.

    Initialisation: ``weight_hh`` one random orthogonal ``(H, H)`` block per gate;
    ``weight_ih`` Xavier/Glorot uniform in ``[-a, a]``, ``a = sqrt(6 / (fan_in + H))``;
    biases and peepholes zero, except the forget block of ``bias_ih``, 1.0, so the cell
    remembers from the start (coupled: the input block of ``bias_ih`` is -1.0, giving the
    same ``f = 1 - σ(-1) = 0.73``).

    Training: :meth:`forward` returns a tape for :meth:`backward`, which accumulates
    into ``layer.grad`` (zero it with :meth:`zero_grad`). One step at a time:
    :meth:`step` or :meth:`stream` (unidirectional stacks).

    Example::

        >>> import numpy as np
        >>> import fastrnn
        >>> lstm = fastrnn.LSTM(10, 20, num_layers=2, seed=0)
        >>> x = np.random.default_rng(0).standard_normal((5, 3, 10)).astype(np.float32)
        >>> out, (h_n, c_n) = lstm(x)               # x (T, B, I)
        >>> out.shape, h_n.shape, c_n.shape
        ((5, 3, 20), (2, 3, 20), (2, 3, 20))
        >>> float(lstm.bias_ih_l0[20:40].min())     # the forget block (i, f, g, o)
        1.0
        >>> bi = fastrnn.LSTM(10, 20, batch_first=True, bidirectional=True, seed=0)
        >>> out, (h_n, c_n) = bi(x.transpose(1, 0, 2), lengths=[5, 2, 0])   # (B, T, I)
        >>> out.shape, h_n.shape
        ((3, 5, 40), (2, 3, 20))
        >>> float(abs(out[1, 2:]).max()), float(abs(h_n[:, 2]).max())   # padding, length 0
        (0.0, 0.0)
        >>> for name, p in fastrnn.LSTM(3, 4, peephole="io").params.items():
        ...     print(name, p.shape)
        weight_ih_l0 (16, 3)
        weight_hh_l0 (16, 4)
        bias_ih_l0 (16,)
        bias_hh_l0 (16,)
        peephole_i_l0 (4,)
        peephole_o_l0 (4,)
    """
    cell = "lstm"
    _variant_arguments = ("peephole", "coupled")

    def __init__(self, input_size, hidden_size, num_layers=1, peephole=False, coupled=False,
                 **kw):
        LSTM._refuse_unknown(type(self).__name__, kw)
        gates = "ifo" if peephole is True else ("" if peephole is False else str(peephole))
        if set(gates) - set("ifo") or len(set(gates)) != len(gates):
            raise ValueError(f"peephole must be a bool or a string of distinct gates from 'ifo', "
                             f"got {peephole!r}")
        self.coupled = flag("coupled", coupled)
        if self.coupled and "f" in gates:
            raise ValueError("a coupled LSTM has no forget gate of its own: peephole 'f' "
                             "is not available (use 'io')")
        self.peephole = "".join(g for g in "ifo" if g in gates)
        super().__init__(input_size, hidden_size, num_layers, **kw)

    @property
    def gates(self):
        return gate_count("lstm", self.coupled)

    def _cell_params(self):
        return [(f"peephole_{g}", (self.hidden_size,)) for g in self.peephole]

    def _init_gate_bias(self):
        H = self.hidden_size
        for name, _, _ in self._layout:
            if name.startswith("bias_ih"):
                if self.coupled:
                    self.params[name][0:H] = -1.0      # f = 1 - sigmoid(-1) = 0.73
                else:
                    self.params[name][H:2 * H] = 1.0   # forget gate remembers by default

    def _peepholes(self, sfx):
        return {f"p_{g}": self.params[f"peephole_{g}" + sfx] for g in self.peephole}

    def _run(self, sfx, x, h0, c0, lengths, nt, workspace=None):
        return F.lstm_forward(x, h0, c0, *self._kernel_params(sfx), coupled=self.coupled,
                              lengths=lengths, n_threads=nt, workspace=workspace,
                              **self._peepholes(sfx))

    def _step_variant(self):
        return {"coupled": self.coupled}

    def _step_layer(self, sfx, x, h, c, nt):
        return F.lstm_step(self._step_plan(sfx), x, h, c, n_threads=nt)

    def _back(self, sfx, dhs, dh_n, dc_n, cache, nt, need_dx=True):
        keys = ("W_ih", "W_hh", "b_ih", "b_hh") + tuple(f"p_{g}" for g in self.peephole)
        dx, dh0, dc0, _ = F.lstm_backward(dhs, dh_n, dc_n, cache, n_threads=nt,
                                          need_dx=need_dx, grads=self._grad_views(sfx, keys))
        return dx, dh0, dc0


class GRU(RecurrentLayer):
    """A multi-layer GRU over whole sequences, ``torch.nn.GRU``'s arguments, names and
    shapes, in both published forms. For each layer and direction, at every time step t
    (σ the logistic sigmoid, ``*`` elementwise)::

        r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)               reset gate
        z_t = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)               update gate
        n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))    reset_after=True
        n_t = tanh(W_in x_t + b_in + W_hn (r_t * h_{t-1}) + b_hn)    reset_after=False
        h_t = (1 - z_t) * n_t + z_t * h_{t-1}                        hidden state, the output

    ``reset_after=True`` is PyTorch's, cuDNN's and Keras' default form (ONNX
    ``linear_before_reset=1``); False is Cho et al. 2014's (ONNX's default, Keras
    ``reset_after=False``). ``x_t`` is the input (layer 0) or the previous layer's output
    ``(D*H,)``; ``h_{t-1}`` is ``h0`` at t = 0.

    Arguments (``bias`` and those after it by keyword only):

    * ``input_size`` (I): features of ``x``. ``hidden_size`` (H): units per layer.
    * ``num_layers=1`` (L): stacked layers; layer k+1 reads layer k's output.
    * ``reset_after=True``: which form of ``n_t`` above.
    * ``bias=True``: False drops ``bias_ih``/``bias_hh`` (the sums above lose them).
    * ``batch_first=False``: True takes and returns ``(B, T, ...)`` instead of
      ``(T, B, ...)``; states stay ``(L*D, B, H)`` either way, as in PyTorch.
    * ``dropout=0.0``: probability in [0, 1) of zeroing each output of every layer but
      the last, in :meth:`forward` while ``training`` (inverted dropout, scaled by
      ``1/(1-p)``); calling the layer (inference) never drops.
    * ``bidirectional=False`` (D = 2 if True else 1): a second direction per layer reads
      each row's valid steps backwards; outputs are concatenated ``[forward, reverse]``.
    * ``dtype=np.float32``: float32 or float64; inputs and states must have it.
    * ``seed=None``: seeds the initialisation and the dropout masks (same seed,
      bit-identical layer). ``n_threads=None``: threads of the kernels (None:
      OMP_NUM_THREADS or the CPUs; -1 all CPUs, -2 all but one).

    Inputs of ``layer(x, state=None, lengths=None)``:

    * ``x``: ``(T, B, I)``, ``(B, T, I)`` with ``batch_first``, or ``(T, I)`` unbatched;
      a numpy array of the layer's dtype (a nested list is taken in that dtype).
    * ``state`` (h0): ``(L*D, B, H)`` (``(L*D, H)`` unbatched), zeros when None; row
      ``k*D + d`` is layer k, direction d (0 forward, 1 reverse).
    * ``lengths``: ``(B,)`` integers in [0, T]. Steps ``t >= lengths[b]`` are padding:
      their output is zero and the state is held, so ``h_n`` is the state after each
      row's last valid step (``h0`` for length 0), as with PyTorch's packed sequences.

    Outputs ``out, h_n``:

    * ``out``: ``(T, B, D*H)``, ``(B, T, D*H)`` with ``batch_first``, or ``(T, D*H)``
      unbatched: the last layer's ``h_t`` at every step, a new array.
    * ``h_n``: ``(L*D, B, H)`` (``(L*D, H)`` unbatched), ordered as ``h0``.

    Parameters, PyTorch's names, in one flat buffer ``layer.flat`` (gradients in
    ``layer.grad``, same layout; ``layer.params``/``layer.grads`` are the named views,
    also attributes, e.g. ``layer.weight_ih_l0``), per layer k with suffix ``_l{k}``
    and ``_l{k}_reverse`` for the second direction; gate blocks stacked along the rows in
    the order (r, z, n), so a ``torch.nn.GRU`` ``state_dict`` loads by copy:

    * ``weight_ih_l{k}``: ``(3*H, I)`` for k = 0, ``(3*H, D*H)`` above
      (``W_ir|W_iz|W_in``).
    * ``weight_hh_l{k}``: ``(3*H, H)`` (``W_hr|W_hz|W_hn``).
    * ``bias_ih_l{k}``, ``bias_hh_l{k}``: ``(3*H,)``; both forms keep ``b_in`` and
      ``b_hn`` apart.

    Initialisation: ``weight_hh`` one random orthogonal ``(H, H)`` block per gate;
    ``weight_ih`` Xavier/Glorot uniform in ``[-a, a]``, ``a = sqrt(6 / (fan_in + H))``;
    biases zero.

    Training: :meth:`forward` returns a tape for :meth:`backward`, which accumulates
    into ``layer.grad`` (zero it with :meth:`zero_grad`). One step at a time:
    :meth:`step` or :meth:`stream` (unidirectional stacks).

    Example::

        >>> import numpy as np
        >>> import fastrnn
        >>> gru = fastrnn.GRU(10, 20, batch_first=True, bidirectional=True, seed=0)
        >>> gru
        GRU(10, 20, batch_first=True, bidirectional=True)
        >>> x = np.random.default_rng(0).standard_normal((3, 5, 10)).astype(np.float32)
        >>> out, h_n = gru(x)                       # x (B, T, I)
        >>> out.shape, h_n.shape
        ((3, 5, 40), (2, 3, 20))
        >>> bool(np.allclose(out[:, -1, :20], h_n[0]) and np.allclose(out[:, 0, 20:], h_n[1]))
        True
        >>> gru.weight_hh_l0_reverse.shape
        (60, 20)
        >>> out, h_n = fastrnn.GRU(10, 20, reset_after=False, seed=0)(x[0])   # unbatched (T, I)
        >>> out.shape, h_n.shape
        ((5, 20), (1, 20))
    """
    cell = "gru"
    _variant_arguments = ("reset_after",)

    def __init__(self, input_size, hidden_size, num_layers=1, reset_after=True, **kw):
        GRU._refuse_unknown(type(self).__name__, kw)
        self.reset_after = flag("reset_after", reset_after)
        super().__init__(input_size, hidden_size, num_layers, **kw)

    def _run(self, sfx, x, h0, c0, lengths, nt, workspace=None):
        hs, h_n, cache = F.gru_forward(x, h0, *self._kernel_params(sfx),
                                       reset_after=self.reset_after, lengths=lengths,
                                       n_threads=nt, workspace=workspace)
        return hs, h_n, None, cache

    def _step_variant(self):
        return {"reset_after": self.reset_after}

    def _step_layer(self, sfx, x, h, c, nt):
        return F.gru_step(self._step_plan(sfx), x, h, n_threads=nt), None

    def _back(self, sfx, dhs, dh_n, dc_n, cache, nt, need_dx=True):
        dx, dh0, _ = F.gru_backward(dhs, dh_n, cache, n_threads=nt, need_dx=need_dx,
                                    grads=self._grad_views(sfx, ("W_ih", "W_hh", "b_ih", "b_hh")))
        return dx, dh0, None


class _StepPlans(dict):
    """A layer's native step plans by direction suffix. A copy of the layer (deepcopy,
    pickle) makes its own, on its own parameters: these point into the original's."""

    def __deepcopy__(self, memo):
        return _StepPlans()

    def __reduce__(self):
        return _StepPlans, ()


_NONE_PART = np.asarray(None)       # a state part given as None: refused by the check


def _in_place(a):
    """``a`` as a C-contiguous aligned array (a copy only when it is not one)."""
    a = np.ascontiguousarray(a)
    return a if a.flags.aligned else a.copy()


class RecurrentCell:
    """One time step, PyTorch's cell API: ``cell(x (B, I), state) -> new state``; parameters
    ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` (same gate order and init as the
    layers), PyTorch's names for its cells, so ``load_state_dict`` takes a torch cell's
    ``state_dict()``. Arguments: ``input_size``, ``hidden_size``, ``bias=True``,
    ``dtype=np.float32``, ``seed=None``, ``n_threads=None``, and the cell's variant (see
    each class)."""
    layer_class = None

    def __init__(self, input_size, hidden_size, bias=True, dtype=np.float32, seed=None,
                 n_threads=None, **variant):
        allowed = self.layer_class._variant_arguments
        _refuse_unknown_keywords(type(self).__name__, variant,
                                 _keyword_names(RecurrentCell.__init__) + list(allowed))
        self._layer = self.layer_class(input_size, hidden_size, 1, bias=bias, dtype=dtype,
                                       seed=seed, n_threads=n_threads, **variant)
        self.input_size, self.hidden_size = input_size, hidden_size
        self.params = {k[:-3]: v for k, v in self._layer.params.items()}   # drop "_l0"
        # the layer's step plans, held here too: one lookup less on every call
        self._plans = self._layer.__dict__.setdefault("_plans", _StepPlans())

    def state_dict(self):
        """Copies of every parameter, by PyTorch's cell names (``weight_ih``, ``weight_hh``,
        ``bias_ih``, ``bias_hh``; ``peephole_i`` etc. for a peephole LSTMCell)."""
        return {name: a.copy() for name, a in self.params.items()}

    def load_state_dict(self, state):
        """Copy arrays (numpy, or torch tensors: a ``torch.nn.LSTMCell``'s ``state_dict()``
        loads as it is) into the parameters, by :meth:`state_dict`'s names. As the layers'
        ``load_state_dict``: names and shapes must match exactly (ValueError), values be
        finite floats (TypeError/ValueError), everything is checked before anything is
        written, and calls running meanwhile see the old weights or the new, never a mix."""
        layer = self._layer
        layout = [(name[:-3], shape, offset) for name, shape, offset in layer._layout]
        checked = checked_state(state, layout, self.params)
        layer._write_params({name + "_l0": a for name, a in checked.items()})

    def __repr__(self):
        """PyTorch's form, e.g. ``LSTMCell(4, 8, bias=False, peephole='io')``."""
        layer = self._layer
        args = [str(self.input_size), str(self.hidden_size)] + layer._arguments(
            ("bias",) + layer._variant_arguments + ("dtype", "n_threads"))
        return f"{type(self).__name__}({', '.join(args)})"

    def __getattr__(self, name):
        params = self.__dict__.get("params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __call__(self, x, state=None):
        # the cell's one native step (fastrnn.functional.<cell>_step): x and the state are
        # read in place when they are C-contiguous arrays of the cell's dtype and shapes;
        # anything else goes through _checked_step, which says what does not fit
        layer = self._layer
        plan = self._plans.get("_l0") or layer._step_plan("_l0")
        out = F.cell_step(plan, x, state, layer.n_threads)
        return out if out is not None else self._call_checked(plan, x, state)

    def _call_checked(self, plan, x, state):
        """The cell's call of inputs F.cell_step did not read in place: the state's form
        checked here, the rest by the cell's function through _checked_step."""
        layer = self._layer
        if plan.lstm:
            h = c = None
            if state is not None:
                if not isinstance(state, tuple) or len(state) != 2:
                    self._checked_x(x)          # x's errors first, as before
                    raise TypeError(f"{type(self).__name__} state must be a pair (h, c)")
                h, c = state
                # a part given as None is refused by the check (shape ()), not read as zeros
                if h is None or c is None:
                    h, c = (_NONE_PART if h is None else h), (_NONE_PART if c is None else c)
            return F.lstm_step(plan, x, h, c, layer.n_threads, self._checked_step)
        if isinstance(state, tuple):
            self._checked_x(x)
            raise TypeError(f"{type(self).__name__} state must be one array h, not a tuple")
        step = F.gru_step if plan.cell == "gru" else F.rnn_step
        return step(plan, x, state, layer.n_threads, self._checked_step)

    def _checked_x(self, x):
        if isinstance(x, (list, tuple)):
            x = _float_array("x", x, self._layer.dtype)    # a list is data in the cell's dtype
        if not isinstance(x, np.ndarray) or x.ndim not in (1, 2):
            raise ValueError(f"x must be (batch, input_size) or (input_size,), "
                             f"got {getattr(x, 'shape', x)}")
        return x

    def _checked_step(self, plan, x, h, c):
        """The cell's checks of inputs the native step cannot read in place, in the order
        and with the messages of ``layer(x[None], state)`` (the cell's former path), and the
        inputs converted: C-contiguous aligned arrays of the cell's dtype."""
        layer = self._layer
        dtype, H, lstm = layer.dtype, self.hidden_size, layer.cell == "lstm"
        x = self._checked_x(x)
        unbatched = x.ndim == 1
        B = 1 if unbatched else x.shape[0]
        parts = []
        if h is not None:
            want = (H,) if unbatched else (B, H)
            for s in ((h, c) if lstm else (h,)):
                s = _float_array("state", s, dtype) if isinstance(s, list) else np.asarray(s)
                if s.shape != want:
                    raise ValueError(f"state has shape {s.shape}, expected {want}")
                parts.append(s)
        if x.dtype != dtype:
            raise TypeError(f"x has dtype {x.dtype}, expected {dtype} (the layer's dtype)")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x has {x.shape[-1]} features, expected "
                             f"input_size={self.input_size}")
        for s in parts:
            if s.dtype != dtype:
                raise TypeError(f"initial state has dtype {s.dtype}, expected {dtype}")
        widest = max(layer.gates * H, self.input_size, 2 * H)
        if B * widest > INT32_MAX:
            raise ValueError(f"{layer.cell}: T*B*{widest} = {B * widest} exceeds the kernels' "
                             "32-bit index range; split the batch or the sequence")
        x, *parts = (_in_place(a) for a in [x] + parts)
        if not parts:
            return x, None, None
        return (x, parts[0], parts[1]) if lstm else (x, parts[0], None)


class RNNCell(RecurrentCell):
    """One step of an Elman RNN, ``torch.nn.RNNCell``'s API, names and shapes::

        h' = act(W_ih x + b_ih + W_hh h + b_hh)      act = tanh or relu

    Arguments: ``input_size`` (I), ``hidden_size`` (H), ``bias=True`` (False: no
    ``bias_ih``/``bias_hh``), ``dtype=np.float32`` (or float64; ``x`` and the state must
    have it), ``seed=None`` (seeds the initialisation), ``n_threads=None`` (the
    kernels' threads; None: OMP_NUM_THREADS or the CPUs, -1 all CPUs), and by keyword only ``nonlinearity="tanh"``
    (or ``"relu"``).

    ``cell(x, state=None)``: ``x (B, I)`` or ``(I,)`` unbatched, ``state`` the hidden
    state ``h (B, H)`` or ``(H,)`` (zeros when None) -> ``h' (B, H)`` or ``(H,)``, a new
    array.

    Parameters, PyTorch's cell names (no ``_l0`` suffix); ``cell.params`` holds them by
    name (also attributes, e.g. ``cell.weight_ih``), ``state_dict()``/``load_state_dict()``
    copy them, and a
    ``torch.nn.RNNCell``'s ``state_dict()`` loads as it is:

    * ``weight_ih (H, I)``, ``weight_hh (H, H)``, ``bias_ih (H,)``, ``bias_hh (H,)``.

    Initialisation as :class:`RNN`: ``weight_hh`` orthogonal, ``weight_ih`` Xavier/Glorot
    uniform (``a = sqrt(6 / (I + H))``), biases zero. To run a whole sequence, use
    :class:`RNN` (one kernel call instead of one per step).

    Example::

        >>> import numpy as np
        >>> import fastrnn
        >>> cell = fastrnn.RNNCell(10, 20, nonlinearity="relu", seed=0)
        >>> cell
        RNNCell(10, 20, nonlinearity='relu')
        >>> x = np.random.default_rng(0).standard_normal((6, 3, 10)).astype(np.float32)
        >>> h = None
        >>> for x_t in x:                           # x_t (B, I)
        ...     h = cell(x_t, h)
        >>> h.shape
        (3, 20)
    """
    layer_class = RNN


class LSTMCell(RecurrentCell):
    """One step of an LSTM, ``torch.nn.LSTMCell``'s API, names and shapes, with the
    peephole and coupled variants of :class:`LSTM` (σ the logistic sigmoid, ``*``
    elementwise)::

        a  = W_ih x + b_ih + W_hh h + b_hh           (G*H,), blocks a_i, a_f, a_g, a_o
        i  = σ(a_i + p_i * c)                        input gate
        f  = σ(a_f + p_f * c)                        forget gate (coupled: f = 1 - i)
        g  = tanh(a_g)                               candidate cell
        c' = f * c + i * g                           new cell state
        o  = σ(a_o + p_o * c')                       output gate (sees the new c')
        h' = o * tanh(c')                            new hidden state

    Peephole terms only for the gates named in ``peephole``.

    Arguments: ``input_size`` (I), ``hidden_size`` (H), ``bias=True`` (False: no
    ``bias_ih``/``bias_hh``), ``dtype=np.float32`` (or float64; ``x`` and the state must
    have it), ``seed=None`` (seeds the initialisation), ``n_threads=None`` (the
    kernels' threads; None: OMP_NUM_THREADS or the CPUs, -1 all CPUs), and by keyword only ``peephole=False``
    (True, or a string of gates from ``"ifo"``) and ``coupled=False`` (f = 1 - i, three
    gate blocks).

    ``cell(x, state=None)``: ``x (B, I)`` or ``(I,)`` unbatched, ``state`` a pair
    ``(h, c)`` of ``(B, H)`` (or ``(H,)``) arrays, zeros when None -> ``(h', c')``, new
    arrays of the same shapes.

    Parameters, PyTorch's cell names (no ``_l0`` suffix), gate blocks stacked along the
    rows in the order (i, f, g, o), coupled (i, g, o); ``cell.params`` holds them by name
    (also attributes, e.g. ``cell.weight_ih``), ``state_dict()``/``load_state_dict()``
    copy them, and a
    ``torch.nn.LSTMCell``'s ``state_dict()`` loads as it is:

    * ``weight_ih (G*H, I)``, ``weight_hh (G*H, H)``, ``bias_ih (G*H,)``,
      ``bias_hh (G*H,)``, G = 4 (coupled: 3).
    * ``peephole_i``, ``peephole_f``, ``peephole_o``: ``(H,)``, for the gates in
      ``peephole``.

    Initialisation as :class:`LSTM`: ``weight_hh`` one orthogonal ``(H, H)`` block per
    gate, ``weight_ih`` Xavier/Glorot uniform (``a = sqrt(6 / (I + H))``), biases and
    peepholes zero except the forget block of ``bias_ih``, 1.0 (coupled: the input block
    is -1.0). To run a whole sequence, use :class:`LSTM` (one kernel call instead of one
    per step).

    Example::

        >>> import numpy as np
        >>> import fastrnn
        >>> cell = fastrnn.LSTMCell(10, 20, seed=0)
        >>> x = np.random.default_rng(0).standard_normal((6, 3, 10)).astype(np.float32)
        >>> state = None
        >>> for x_t in x:                           # x_t (B, I)
        ...     state = cell(x_t, state)
        >>> h, c = state
        >>> h.shape, c.shape
        ((3, 20), (3, 20))
        >>> sorted(fastrnn.LSTMCell(10, 20, peephole="io").state_dict())
        ['bias_hh', 'bias_ih', 'peephole_i', 'peephole_o', 'weight_hh', 'weight_ih']
    """
    layer_class = LSTM


class GRUCell(RecurrentCell):
    """One step of a GRU, ``torch.nn.GRUCell``'s API, names and shapes, in both forms of
    :class:`GRU` (σ the logistic sigmoid, ``*`` elementwise)::

        r  = σ(W_ir x + b_ir + W_hr h + b_hr)                reset gate
        z  = σ(W_iz x + b_iz + W_hz h + b_hz)                update gate
        n  = tanh(W_in x + b_in + r * (W_hn h + b_hn))       reset_after=True (PyTorch)
        n  = tanh(W_in x + b_in + W_hn (r * h) + b_hn)       reset_after=False (Cho et al.)
        h' = (1 - z) * n + z * h                             new hidden state

    Arguments: ``input_size`` (I), ``hidden_size`` (H), ``bias=True`` (False: no
    ``bias_ih``/``bias_hh``), ``dtype=np.float32`` (or float64; ``x`` and the state must
    have it), ``seed=None`` (seeds the initialisation), ``n_threads=None`` (the
    kernels' threads; None: OMP_NUM_THREADS or the CPUs, -1 all CPUs), and by keyword only ``reset_after=True``.

    ``cell(x, state=None)``: ``x (B, I)`` or ``(I,)`` unbatched, ``state`` the hidden
    state ``h (B, H)`` or ``(H,)`` (zeros when None) -> ``h' (B, H)`` or ``(H,)``, a new
    array.

    Parameters, PyTorch's cell names (no ``_l0`` suffix), gate blocks stacked along the
    rows in the order (r, z, n); ``cell.params`` holds them by name
    (also attributes, e.g. ``cell.weight_ih``), ``state_dict()``/``load_state_dict()``
    copy them, and a
    ``torch.nn.GRUCell``'s ``state_dict()`` loads as it is:

    * ``weight_ih (3*H, I)``, ``weight_hh (3*H, H)``, ``bias_ih (3*H,)``,
      ``bias_hh (3*H,)``.

    Initialisation as :class:`GRU`: ``weight_hh`` one orthogonal ``(H, H)`` block per
    gate, ``weight_ih`` Xavier/Glorot uniform (``a = sqrt(6 / (I + H))``), biases zero.
    To run a whole sequence, use :class:`GRU` (one kernel call instead of one per step).

    Example::

        >>> import numpy as np
        >>> import fastrnn
        >>> cell = fastrnn.GRUCell(10, 20, seed=0)
        >>> h = cell(np.ones(10, np.float32))       # unbatched: x (I,), h (H,)
        >>> h.shape, cell.weight_hh.shape
        ((20,), (60, 20))
    """
    layer_class = GRU
