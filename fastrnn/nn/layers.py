"""Recurrent layers with PyTorch's arguments, parameter names and shapes, over the kernels.

``fastrnn.RNN``, ``fastrnn.LSTM`` and ``fastrnn.GRU`` stack ``num_layers`` layers, each
optionally bidirectional. Shapes (D = 2 if bidirectional else 1, L = num_layers)::

    x        (T, B, I)  or (B, T, I) with batch_first, or (T, I) unbatched
    out      (T, B, D*H) or (B, T, D*H), or (T, D*H)
    h0, h_n  (L*D, B, H), or (L*D, H) unbatched; LSTM states are pairs (h, c)
    lengths  (B,) ints in [0, T]: steps past a row's length hold its state and output zero;
             the reverse direction reads each row's valid steps backwards, as PyTorch does
             with packed sequences

Parameters live in one flat buffer ``layer.flat`` with named views
(``weight_ih_l0 (G*H, I)``, ``weight_hh_l0 (G*H, H)``, ``bias_ih_l0``, ``bias_hh_l0``,
``_reverse`` for the second direction; LSTM peepholes ``peephole_i_l0`` etc. ``(H,)``);
``layer.grad`` mirrors it, so an optimizer is one loop over two arrays. Gate order is
PyTorch's: LSTM (i, f, g, o), coupled LSTM (i, g, o), GRU (r, z, n), so a PyTorch
``state_dict`` loads by copy.

Initialisation, as the reference essay recommends: recurrent weights orthogonal, one
orthogonal (H, H) block per gate; input weights Xavier/Glorot uniform per gate block,
limit sqrt(6 / (fan_in + H)); biases zero, except the LSTM forget gate, whose ``bias_ih``
block is 1.0 so the cell remembers by default (for the coupled LSTM, where f = 1 - i, the
input-gate bias is -1.0, giving the same f = 0.73 at the start). ``seed`` fixes every random
choice (initialisation and dropout masks); the same seed gives bit-identical models.
"""
import difflib
import inspect
import threading

import numpy as np

from ..kernels import _gru, _lstm, _openmp, _rnn
from .. import functional as F
from ..kernels._guard import WeightGuard

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"]

_GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def _flag(name, v):
    """A bool argument: True/False (numpy's too) or 0/1; a string such as "False" is
    refused rather than read as True."""
    if isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and v in (0, 1)):
        return bool(v)
    raise TypeError(f"{name} must be True or False, got {v!r}")


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


def _checked_state(state, layout, params):
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
    """A uniformly random (n, n) orthogonal matrix (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


class _Recurrent:
    cell = None

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype=np.float32, seed=None, n_threads=None):
        self.input_size = _positive_int("input_size", input_size)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.num_layers = _positive_int("num_layers", num_layers)
        if isinstance(dropout, (bool, np.bool_)) or not isinstance(
                dropout, (int, float, np.integer, np.floating)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.bias, self.batch_first = _flag("bias", bias), _flag("batch_first", batch_first)
        self.dropout, self.bidirectional = float(dropout), _flag("bidirectional", bidirectional)
        self.dtype = _dtype(dtype)
        _openmp.effective_n_threads(n_threads)  # refuses a bad count now, not at the first call
        self.n_threads = n_threads
        self.training = True
        self._guard = WeightGuard()             # load_state_dict is atomic for readers
        H, G = self.hidden_size, self.gates
        widest = G * H * max(self.input_size, H * self.num_directions, H)
        if widest > F._INT32_MAX:
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
        return _GATES[self.cell]

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
        self._write_params(_checked_state(state, self._layout, self.params))

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
            lengths = F._lengths(lengths, T, B)
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
        return inp, finals, (tape, rev, lengths, nt) if need_cache else None

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
        out, finals, tape = self._forward(x, states, lengths, True, self.training)
        tape = tape + (unbatched, x.shape)
        return (self._pack_out(out, unbatched).copy(),
                self._pack_state(finals, x.shape[1], unbatched), tape)

    def backward(self, dout, dstate_n, tape, need_dx=True):
        """Gradients of a loss through :meth:`forward`: accumulates into ``self.grad`` (call
        :meth:`zero_grad` first) and returns ``dx, dstate0`` in the input's layout.
        ``dout`` and ``dstate_n`` may be None (zeros). ``need_dx=False`` skips the input
        gradient (dx is None), for inputs that are data. A float ``dout`` of another
        width is cast to the layer's dtype."""
        if not (isinstance(tape, tuple) and len(tape) == 6):
            raise TypeError("tape must be the third value returned by this layer's forward()")
        stack, rev, lengths, nt, unbatched, (T, B, I) = tape
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
        if B * max(self.gates * H, x_t.shape[1]) > F._INT32_MAX:
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
        H, L, lstm = self.hidden_size, self.num_layers, self.cell == "lstm"
        nt = F.effective_n_threads(self.n_threads)
        h_new = np.empty((L, B, H), self.dtype)
        c_new = np.empty((L, B, H), self.dtype) if lstm else None
        with F.serial_blas:
            for layer in range(L):
                self._step_layer(f"_l{layer}", inp, hs[layer], None if cs is None else cs[layer],
                                 h_new, c_new, layer, nt)
                inp = h_new[layer]
        y = h_new[L - 1].copy()
        return y, ((h_new, c_new) if lstm else h_new)

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
        from ..kernels._stream import Stream
        if self.bidirectional:
            raise ValueError("a bidirectional layer needs the whole sequence; it cannot stream")
        batch = _positive_int("batch", batch)
        if batch * max(self.gates * self.hidden_size, self.input_size) > F._INT32_MAX:
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
        s = Stream(self, batch, params, F.effective_n_threads(self.n_threads))
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

    def _step_bias(self, b_ih, b_hh):
        """The kernel's fused bias, recomputed per call: parameters may change between
        steps (an optimizer updates them in place)."""
        return b_ih + b_hh

    # ---- construction arguments ------------------------------------------------------
    # the arguments of RNN/LSTM/GRU's own __init__ beyond _Recurrent's (nonlinearity, ...)
    _variant_arguments = ()

    @classmethod
    def _refuse_unknown(cls, owner, given):
        _refuse_unknown_keywords(owner, given,
                                 _keyword_names(cls.__init__, _Recurrent.__init__))

    def _arguments(self, names):
        """``name=value`` for each of ``names`` whose value differs from its default."""
        defaults = {}
        for f in (type(self).__init__, _Recurrent.__init__):
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


def _rnn_act(nonlinearity):
    return F._ACTS[nonlinearity]


def _reverse_index(T, B, lengths):
    """idx (T, B): time index that the reverse direction reads at step t for row b (each
    row's valid steps backwards; padding steps stay where they are)."""
    t = np.arange(T)[:, None]
    L = np.full((1, B), T) if lengths is None else lengths[None, :]
    return np.where(t < L, L - 1 - t, t)


def _gather_time(a, idx):
    """a[idx[t, b], b] for every t, b: an involution when idx comes from _reverse_index."""
    return np.take_along_axis(a, idx[:, :, None], axis=0)


class RNN(_Recurrent):
    """Elman RNN: ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``, act tanh or relu.
    Arguments and shapes as ``torch.nn.RNN``; see the module docstring."""
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

    def _step_layer(self, sfx, x, h, c, h_new, c_new, layer, nt):
        B, H = x.shape[0], self.hidden_size
        hbuf = np.empty((2, B, H), self.dtype)
        hbuf[0] = h
        W_ih, W_hh, b_ih, b_hh = self._kernel_params(sfx)
        _rnn.rnn_forward(hbuf, x[None], W_ih, W_hh, self._step_bias(b_ih, b_hh), None,
                         _rnn_act(self.nonlinearity), nt)
        h_new[layer] = hbuf[1]

    def _back(self, sfx, dhs, dh_n, dc_n, cache, nt, need_dx=True):
        dx, dh0, _ = F.rnn_backward(dhs, dh_n, cache, n_threads=nt, need_dx=need_dx,
                                    grads=self._grad_views(sfx, ("W_ih", "W_hh", "b_ih", "b_hh")))
        return dx, dh0, None


class LSTM(_Recurrent):
    """LSTM, gate order (i, f, g, o): ``c_t = f c_{t-1} + i g``, ``h_t = o tanh(c_t)``.

    ``peephole``: False, True (all three) or a string of the gates that look at the cell
    state, e.g. ``"io"``; i and f see ``c_{t-1}``, o sees ``c_t`` (Gers & Schmidhuber 2000,
    the ONNX convention). ``coupled=True``: f = 1 - i, three gate blocks (i, g, o).
    Arguments and shapes otherwise as ``torch.nn.LSTM``; see the module docstring."""
    cell = "lstm"
    _variant_arguments = ("peephole", "coupled")

    def __init__(self, input_size, hidden_size, num_layers=1, peephole=False, coupled=False,
                 **kw):
        LSTM._refuse_unknown(type(self).__name__, kw)
        gates = "ifo" if peephole is True else ("" if peephole is False else str(peephole))
        if set(gates) - set("ifo") or len(set(gates)) != len(gates):
            raise ValueError(f"peephole must be a bool or a string of distinct gates from 'ifo', "
                             f"got {peephole!r}")
        self.coupled = _flag("coupled", coupled)
        if self.coupled and "f" in gates:
            raise ValueError("a coupled LSTM has no forget gate of its own: peephole 'f' "
                             "is not available (use 'io')")
        self.peephole = "".join(g for g in "ifo" if g in gates)
        super().__init__(input_size, hidden_size, num_layers, **kw)

    @property
    def gates(self):
        return 3 if self.coupled else 4

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

    def _step_layer(self, sfx, x, h, c, h_new, c_new, layer, nt):
        B, H = x.shape[0], self.hidden_size
        hbuf = np.empty((2, B, H), self.dtype)
        cbuf = np.empty((2, B, H), self.dtype)
        hbuf[0], cbuf[0] = h, c
        W_ih, W_hh, b_ih, b_hh = self._kernel_params(sfx)
        p = self._peepholes(sfx)
        _lstm.lstm_forward(np.empty((1, B, self.gates * H), self.dtype), hbuf, cbuf,
                           np.empty((1, B, H), self.dtype), x[None], W_ih, W_hh,
                           self._step_bias(b_ih, b_hh), p.get("p_i"), p.get("p_f"),
                           p.get("p_o"),
                           None, self.coupled, nt)
        h_new[layer], c_new[layer] = hbuf[1], cbuf[1]

    def _back(self, sfx, dhs, dh_n, dc_n, cache, nt, need_dx=True):
        keys = ("W_ih", "W_hh", "b_ih", "b_hh") + tuple(f"p_{g}" for g in self.peephole)
        dx, dh0, dc0, _ = F.lstm_backward(dhs, dh_n, dc_n, cache, n_threads=nt,
                                          need_dx=need_dx, grads=self._grad_views(sfx, keys))
        return dx, dh0, dc0


class GRU(_Recurrent):
    """GRU, gate order (r, z, n), ``h_t = (1 - z) n + z h_{t-1}``. ``reset_after=True``
    (default, PyTorch/cuDNN): ``n = tanh(W_in x + b_in + r (W_hn h + b_hn))``; False
    (Cho et al. 2014, Keras ``reset_after=False``): ``n = tanh(W_in x + b_in + W_hn (r h)
    + b_hn)``. Arguments and shapes otherwise as ``torch.nn.GRU``."""
    cell = "gru"
    _variant_arguments = ("reset_after",)

    def __init__(self, input_size, hidden_size, num_layers=1, reset_after=True, **kw):
        GRU._refuse_unknown(type(self).__name__, kw)
        self.reset_after = _flag("reset_after", reset_after)
        super().__init__(input_size, hidden_size, num_layers, **kw)

    def _run(self, sfx, x, h0, c0, lengths, nt, workspace=None):
        hs, h_n, cache = F.gru_forward(x, h0, *self._kernel_params(sfx),
                                       reset_after=self.reset_after, lengths=lengths,
                                       n_threads=nt, workspace=workspace)
        return hs, h_n, None, cache

    def _step_bias(self, b_ih, b_hh):
        return F.gru_input_bias(b_ih, b_hh, self.reset_after)

    def _step_layer(self, sfx, x, h, c, h_new, c_new, layer, nt):
        B, H = x.shape[0], self.hidden_size
        hbuf = np.empty((2, B, H), self.dtype)
        hbuf[0] = h
        W_ih, W_hh, b_ih, b_hh = self._kernel_params(sfx)
        _gru.gru_forward(np.empty((1, B, 3 * H), self.dtype), hbuf,
                         np.empty((1, B, H), self.dtype), x[None], W_ih, W_hh,
                         self._step_bias(b_ih, b_hh), b_hh, None, self.reset_after, nt)
        h_new[layer] = hbuf[1]

    def _back(self, sfx, dhs, dh_n, dc_n, cache, nt, need_dx=True):
        dx, dh0, _ = F.gru_backward(dhs, dh_n, cache, n_threads=nt, need_dx=need_dx,
                                    grads=self._grad_views(sfx, ("W_ih", "W_hh", "b_ih", "b_hh")))
        return dx, dh0, None


class _Cell:
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
                                 _keyword_names(_Cell.__init__) + list(allowed))
        self._layer = self.layer_class(input_size, hidden_size, 1, bias=bias, dtype=dtype,
                                       seed=seed, n_threads=n_threads, **variant)
        self.input_size, self.hidden_size = input_size, hidden_size
        self.params = {k[:-3]: v for k, v in self._layer.params.items()}   # drop "_l0"

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
        checked = _checked_state(state, layout, self.params)
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
        layer = self._layer
        if isinstance(x, (list, tuple)):
            x = _float_array("x", x, layer.dtype)          # a list is data in the cell's dtype
        if not isinstance(x, np.ndarray) or x.ndim not in (1, 2):
            raise ValueError(f"x must be (batch, input_size) or (input_size,), "
                             f"got {getattr(x, 'shape', x)}")
        unbatched = x.ndim == 1
        xb = x[None] if unbatched else x
        if state is not None:
            lstm, B, H = layer.cell == "lstm", xb.shape[0], self.hidden_size
            if lstm != isinstance(state, tuple) or (lstm and len(state) != 2):
                raise TypeError(f"{type(self).__name__} state must be "
                                + ("a pair (h, c)" if lstm else "one array h, not a tuple"))
            want = (H,) if unbatched else (B, H)
            parts = []
            for s in (state if lstm else (state,)):
                s = _float_array("state", s, layer.dtype) if isinstance(s, list) else np.asarray(s)
                if s.shape != want:
                    raise ValueError(f"state has shape {s.shape}, expected {want}")
                parts.append(s.reshape(1, B, H))
            state = tuple(parts) if lstm else parts[0]
        _, st = layer(xb[None], state)
        st = st if isinstance(st, tuple) else (st,)
        st = tuple(s[0, 0] if unbatched else s[0] for s in st)
        return st if self._layer.cell == "lstm" else st[0]


class RNNCell(_Cell):
    """One step of :class:`RNN`: ``h' = cell(x, h)``."""
    layer_class = RNN


class LSTMCell(_Cell):
    """One step of :class:`LSTM`: ``(h', c') = cell(x, (h, c))``."""
    layer_class = LSTM


class GRUCell(_Cell):
    """One step of :class:`GRU`: ``h' = cell(x, h)``."""
    layer_class = GRU
