"""Whole-sequence forward and backward of every cell, on the compiled kernels.

Same signatures and semantics as :mod:`fastrnn.reference` (the numpy oracle), plus
``n_threads`` and, in backward, ``grads`` to accumulate into.

Layout: time-major, ``x (T, B, I)``, states ``(B, H)``, weights row-major as PyTorch stores
them, ``W_ih (G*H, I)``, ``W_hh (G*H, H)``, ``b_ih, b_hh (G*H,)``; gate order LSTM
(i, f, g, o), coupled LSTM (i, g, o), GRU (r, z, n). ``lengths (B,)``: steps past a row's
length hold its state and give zero output. float32 and float64; every floating input
must have the weights' dtype (no silent casts).

Outputs ``hs`` are views into the cache; modify them in place only after backward.
Backward accumulates into ``grads`` when given (zero it yourself), which makes truncated
BPTT and gradient accumulation free; without ``grads`` it returns fresh zeros-based ones.
``need_dx=False`` skips the input gradient (returned as None), as PyTorch does for an input
that needs no gradient: one GEMM of six in a training step.
Like PyTorch's ``retain_graph=False``, LSTM and GRU backward reuse the cached gate buffer
for the gate gradients (no second (T, B, G*H) buffer, no page faults for it), so a cache can
be backpropagated once; pass ``retain_cache=True`` to keep it usable.
"""
import numpy as np

from ._spec import INT32_MAX, NONLINEARITIES, lengths_array
from .kernels import _blas, _gru, _lstm, _rnn
from .kernels._stream import Stream, StepPlan, cell_step as _native_cell_step
from .kernels._threads import effective_n_threads, serial_blas
from .kernels._threads import check_n_threads  # noqa: F401  (the layers' check, re-exported)

__all__ = ["rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward",
           "gru_forward", "gru_backward", "step_plan", "rnn_step", "lstm_step", "gru_step",
           "cell_step", "make_stream"]

class Cache:
    """What backward needs from forward; opaque to callers."""
    __slots__ = ("cell", "dtype", "T", "B", "I", "H", "x", "hbuf", "cbuf", "tcbuf", "gates",
                 "side", "W_ih", "W_hh", "p_i", "p_f", "p_o", "lengths", "variant", "n_threads",
                 "consumed")

    def __init__(self, **fields):
        for name in self.__slots__:
            setattr(self, name, fields.get(name))


# ---- validation at the Python boundary -----------------------------------------------

def _dtype_of(W_ih):
    if not isinstance(W_ih, np.ndarray):
        raise TypeError(f"W_ih must be a numpy array, got {type(W_ih).__name__}")
    if W_ih.dtype not in (np.float32, np.float64):
        raise TypeError(f"weights must be float32 or float64, got W_ih.dtype={W_ih.dtype}")
    return W_ih.dtype


def _array(name, a, dtype, shape):
    """A C-contiguous array of `dtype` and `shape` (a copy when needed; never the caller's
    array modified). Python lists are taken in `dtype`; arrays of another dtype are refused."""
    if isinstance(a, (list, tuple)):
        try:
            a = np.asarray(a, dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name}: expected a (nested) list of real numbers ({exc})") from None
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} has dtype {a.dtype}, expected {np.dtype(dtype)} "
                        f"(the weights' dtype); convert with .astype(np.{np.dtype(dtype)})")
    if a.shape != tuple(shape):
        raise ValueError(f"{name} has shape {a.shape}, expected {tuple(shape)}")
    a = np.ascontiguousarray(a)
    # a buffer that is not aligned to its itemsize (a view at an odd byte offset) is copied:
    # the kernels and BLAS take float pointers as aligned
    return a if a.flags.aligned else a.copy()


def _check_flag(name, v):
    """A bool argument: a string such as "False" is refused, not read as True."""
    if not isinstance(v, (bool, np.bool_)) and not (isinstance(v, (int, np.integer))
                                                    and v in (0, 1)):
        raise TypeError(f"{name} must be True or False, got {v!r}")


def _optional(name, a, dtype, shape):
    return None if a is None else _array(name, a, dtype, shape)


def _sizes(x, W_ih, W_hh, G, cell):
    if not isinstance(x, np.ndarray) and not isinstance(x, (list, tuple)):
        raise TypeError(f"x must be a numpy array, got {type(x).__name__}")
    try:
        xs = np.shape(x)
    except ValueError as exc:               # a ragged list
        raise TypeError(f"x: expected a (nested) list of real numbers ({exc})") from None
    if len(xs) != 3:
        raise ValueError(f"x must be 3-D (T, B, I), got shape {xs}")
    T, B, I = xs
    if np.ndim(W_hh) != 2 or np.shape(W_hh)[0] % G or np.shape(W_hh)[0] != G * np.shape(W_hh)[1]:
        raise ValueError(f"{cell}: W_hh must have shape ({G}*H, H), got {np.shape(W_hh)}")
    H = np.shape(W_hh)[1]
    if H < 1 or I < 1:
        raise ValueError(f"{cell}: hidden size and input size must be >= 1, got H={H}, I={I}")
    if np.shape(W_ih) != (G * H, I):
        raise ValueError(f"{cell}: W_ih has shape {np.shape(W_ih)}, expected ({G * H}, {I}) "
                         f"for input size {I} and hidden size {H}")
    if G * H * max(H, I) > INT32_MAX:
        raise ValueError(f"{cell}: a weight matrix of {G * H} x {max(H, I)} values exceeds the "
                         "kernels' 32-bit index range")
    if T * B * max(G * H, I) > INT32_MAX or (T + 1) * B * H > INT32_MAX:
        raise ValueError(f"{cell}: T*B*{max(G * H, I)} = {T * B * max(G * H, I)} exceeds the "
                         "kernels' 32-bit index range; split the batch or the sequence")
    return T, B, I, H



def gemm_nt_accumulate(a, b, out):
    """out += a @ b.T in the kernels' BLAS on one thread (a (M, K), b (N, K), out (M, N),
    all C-contiguous of one dtype): what the output layer runs, whatever thread pool numpy's
    BLAS has."""
    with serial_blas:
        _blas._gemm_memview(_blas.NoTrans, _blas.Trans, 1.0, a, b, 1.0, out)


def _zero_padding(x, lengths, workspace=None):
    """x (T, B, I) with zeros at every padding step (t >= lengths[b]), a copy when there is
    padding. Forward never uses those steps' values, but backward's hoisted
    dW_ih += dgates^T x runs over all T*B rows, where a zero dgate times a NaN (or an
    infinity) left in the padding would be NaN: junk in the padding must not reach the
    gradients."""
    if lengths is None or not x.size or lengths.min() >= x.shape[0]:
        return x
    out = _scratch(workspace, "x", x.shape, x.dtype)
    np.copyto(out, x)
    out[np.arange(x.shape[0])[:, None] >= lengths[None, :]] = 0
    return out


class Workspace:
    """Scratch buffers kept from one inference call to the next (one per thread and layer
    direction; fastrnn.nn.layers owns them). Fresh buffers of tens of MB cost a page fault per
    4 KiB page when the allocator maps them anew, which glibc does on every call once
    ``MALLOC_TRIM_THRESHOLD_`` (or another malloc tunable) is set, as Dask sets it for its
    workers: measured, a third of an LSTM batch's time. ``get`` returns a view of a kept
    buffer when one is large enough; past ``limit`` bytes in all (64 MiB: a 256-row batch
    of 16 steps of a 512-unit LSTM), buffers are not kept.
    The arrays handed out are valid until the next call that uses the same workspace."""

    def __init__(self, limit=1 << 26):
        self.limit, self._buffers = limit, {}

    def get(self, name, shape, dtype):
        n = int(np.prod(shape))
        kept = self._buffers.get(name)
        if kept is None or kept.dtype != dtype or kept.size < n:
            held = sum(b.nbytes for k, b in self._buffers.items() if k != name)
            if held + n * np.dtype(dtype).itemsize > self.limit:
                return np.empty(shape, dtype)
            kept = self._buffers[name] = np.empty(n, dtype)
        return kept[:n].reshape(shape)


def _scratch(workspace, name, shape, dtype):
    """An uninitialised (shape) array: a workspace's buffer, or a fresh one."""
    return np.empty(shape, dtype) if workspace is None else workspace.get(name, shape, dtype)


def _state(name, s, dtype, B, H):
    if s is None:
        return np.zeros((B, H), dtype)
    return _array(name, s, dtype, (B, H))


def _final_state(buf, lengths, T):
    """State after each row's last valid step: buf[lengths[b], b], a fresh (B, H) array."""
    if lengths is None:
        return buf[T].copy()
    return buf[lengths, np.arange(buf.shape[1])]


def _upstream(name, g, dtype, shape):
    return None if g is None else _array(name, g, dtype, shape)


def _grads(grads, shapes, dtype):
    """Accumulate into the caller's arrays, or into fresh zeros. shapes: name -> shape."""
    if grads is None:
        return {k: np.zeros(shape, dtype) for k, shape in shapes.items()}
    if not isinstance(grads, dict):
        raise TypeError(f"grads must be a dict of arrays by name ({sorted(shapes)}) or None, "
                        f"got {type(grads).__name__}")
    for k, shape in shapes.items():
        g = grads.get(k)
        if not isinstance(g, np.ndarray) or g.shape != shape or g.dtype != dtype \
                or not g.flags.c_contiguous or not g.flags.writeable:
            raise ValueError(f"grads[{k!r}] must be a writeable C-contiguous {np.dtype(dtype)} "
                             f"array of shape {shape}")
    return grads


def _param_shapes(c):
    GH = c.W_ih.shape[0]
    shapes = {"W_ih": c.W_ih.shape, "W_hh": c.W_hh.shape, "b_ih": (GH,), "b_hh": (GH,)}
    for name in ("p_i", "p_f", "p_o"):
        if getattr(c, name) is not None:
            shapes[name] = (c.H,)
    return shapes


# ---- vanilla RNN ---------------------------------------------------------------------

def rnn_forward(x, h0, W_ih, W_hh, b_ih, b_hh, lengths=None, nonlinearity="tanh",
                n_threads=None, workspace=None):
    """Elman RNN over a whole sequence, one direction of one layer::

        h_t = act(x_t @ W_ih.T + b_ih + h_{t-1} @ W_hh.T + b_hh)      act = tanh or relu

    Arguments:

    * ``x``: ``(T, B, I)`` input, time-major; ``h0``: ``(B, H)`` initial state, zeros
      when None. Every float input must have the weights' dtype (float32 or float64; a
      nested list is taken in it).
    * ``lengths=None``: ``(B,)`` integers in [0, T]; steps ``t >= lengths[b]`` hold row
      b's state and output zero, and the final state is the one after its last valid step.
    * ``n_threads=None``: the kernels' threads (None: ``OMP_NUM_THREADS`` or the CPUs; -1
      all CPUs); backward uses the forward's count unless given its own.
    * ``workspace=None``: a :class:`Workspace` to take the buffers from (outputs and cache
      then live in it until its next use; the layers' inference path).
    * ``W_ih (H, I)``, ``W_hh (H, H)``, ``b_ih (H,)``, ``b_hh (H,)``: PyTorch's layout.
    * ``nonlinearity="tanh"``: ``"tanh"`` or ``"relu"``.

    Returns ``hs (T, B, H)`` (every step's output, a view into the cache), ``h_n (B, H)``
    and the cache for :func:`rnn_backward`.

        >>> import numpy as np
        >>> from fastrnn import functional as F
        >>> rng = np.random.default_rng(0)
        >>> T, B, I, H = 5, 2, 3, 4
        >>> x = rng.standard_normal((T, B, I))              # float64, as the weights
        >>> W_ih, W_hh = rng.standard_normal((H, I)), rng.standard_normal((H, H)) * 0.5
        >>> hs, h_n, cache = F.rnn_forward(x, None, W_ih, W_hh, np.zeros(H), np.zeros(H))
        >>> hs.shape, h_n.shape, bool((hs[-1] == h_n).all())
        ((5, 2, 4), (2, 4), True)
    """
    if not isinstance(nonlinearity, str) or nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    dtype = _dtype_of(W_ih)
    T, B, I, H = _sizes(x, W_ih, W_hh, 1, "rnn")
    x = _array("x", x, dtype, (T, B, I))
    W_ih = _array("W_ih", W_ih, dtype, (H, I))
    W_hh = _array("W_hh", W_hh, dtype, (H, H))
    bias = _array("b_ih", b_ih, dtype, (H,)) + _array("b_hh", b_hh, dtype, (H,))
    lengths = lengths_array(lengths, T, B)
    x = _zero_padding(x, lengths, workspace)
    hbuf = _scratch(workspace, "h", (T + 1, B, H), dtype)
    hbuf[0] = _state("h0", h0, dtype, B, H)
    nt = effective_n_threads(n_threads)
    if T and B:
        with serial_blas:
            _rnn.rnn_forward(hbuf, x, W_ih, W_hh, bias, lengths, NONLINEARITIES[nonlinearity], nt)
    cache = Cache(cell="rnn", dtype=dtype, T=T, B=B, I=I, H=H, x=x, hbuf=hbuf, W_ih=W_ih,
                  W_hh=W_hh, lengths=lengths, variant=nonlinearity, n_threads=nt)
    return hbuf[1:], _final_state(hbuf, lengths, T), cache


def rnn_backward(dhs, dh_n, cache, grads=None, n_threads=None, retain_cache=False,
                 need_dx=True):
    """Backward (BPTT) of :func:`rnn_forward`: gradients of a loss given its gradients
    w.r.t. the outputs (the equations are in fastrnn/kernels/_rnn.pyx's header).

    Arguments:

    * ``dhs``: ``(T, B, H)`` gradient w.r.t. ``hs``, or None (zeros); padding steps' values
      are ignored. ``dh_n``: ``(B, H)`` gradient w.r.t. ``h_n``, or None.
    * ``cache``: the forward's third/fourth result.
    * ``grads=None``: a dict of C-contiguous arrays of the parameters' shapes and dtype
      (keys as returned) to accumulate ``+=`` into (zero them yourself); None: fresh zeros.
    * ``n_threads=None``: the forward's thread count, or another.
    * ``need_dx=True``: False skips the input gradient (``dx`` is None), one GEMM of six.
    * ``retain_cache=False``: the default of every cell's backward; the RNN cache holds only
      the hidden states, which backward does not overwrite, so it is never consumed and
      either value keeps it usable.

    Returns ``dx (T, B, I)`` (None when ``need_dx=False``), ``dh0 (B, H)`` and ``grads``
    with keys ``W_ih``, ``W_hh``, ``b_ih``, ``b_hh``.

        >>> import numpy as np
        >>> from fastrnn import functional as F
        >>> rng = np.random.default_rng(0)
        >>> x, W_ih = rng.standard_normal((5, 2, 3)), rng.standard_normal((4, 3))
        >>> W_hh = np.eye(4)
        >>> hs, h_n, cache = F.rnn_forward(x, None, W_ih, W_hh, np.zeros(4), np.zeros(4))
        >>> dx, dh0, grads = F.rnn_backward(np.ones_like(hs), None, cache)   # loss = hs.sum()
        >>> dx.shape, dh0.shape, grads["W_hh"].shape
        ((5, 2, 3), (2, 4), (4, 4))
        >>> bool((grads["b_ih"] == grads["b_hh"]).all())    # one bias gradient, twice
        True
    """
    c = _check_cache(cache, "rnn")
    T, B, I, H, dtype = c.T, c.B, c.I, c.H, c.dtype
    dhs = _upstream("dhs", dhs, dtype, (T, B, H))
    dh = _state("dh_n", dh_n, dtype, B, H).copy()
    grads = _grads(grads, _param_shapes(c), dtype)
    dx = np.zeros((T, B, I), dtype) if need_dx else None    # None: x needs no gradient
    dx_out = dx if need_dx else np.empty((1, 1, 1), dtype)
    if T and B:
        db = np.zeros(H, dtype)
        dpre = np.empty((T, B, H), dtype)
        with serial_blas:
            _rnn.rnn_backward(dx_out, dh, grads["W_ih"], grads["W_hh"], db, dpre, dhs, c.x, c.hbuf,
                              c.W_ih, c.W_hh, c.lengths, NONLINEARITIES[c.variant],
                              _threads(n_threads, c), need_dx)
        grads["b_ih"] += db
        grads["b_hh"] += db
    return dx, dh, grads


def _check_cache(cache, cell):
    if not isinstance(cache, Cache) or cache.cell != cell:
        raise TypeError(f"cache must be the cache returned by fastrnn.functional.{cell}_forward")
    if cache.consumed:
        raise RuntimeError(f"{cell}_backward already ran on this cache and reused its buffers; "
                           "run forward again, or pass retain_cache=True to backward")
    return cache


def _gate_grad_buffer(cache, retain_cache):
    """Where backward writes d(pre-activation gates): the cached gates themselves (each
    element is read before it is overwritten), unless the cache must survive."""
    if retain_cache:
        return np.empty_like(cache.gates)
    cache.consumed = True
    return cache.gates


def _threads(n_threads, cache):
    return cache.n_threads if n_threads is None else effective_n_threads(n_threads)


# ---- LSTM ----------------------------------------------------------------------------

def lstm_forward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, p_i=None, p_f=None, p_o=None,
                 coupled=False, lengths=None, n_threads=None, workspace=None):
    """LSTM over a whole sequence, one direction of one layer (σ the sigmoid, ``*``
    elementwise)::

        a   = x_t @ W_ih.T + b_ih + h_{t-1} @ W_hh.T + b_hh     blocks a_i, a_f, a_g, a_o
        i   = σ(a_i + p_i * c_{t-1})                           input gate
        f   = σ(a_f + p_f * c_{t-1})                           forget gate (coupled: 1 - i)
        g   = tanh(a_g)                                        candidate
        c_t = f * c_{t-1} + i * g                              cell state
        o   = σ(a_o + p_o * c_t)                               output gate
        h_t = o * tanh(c_t)                                    output

    Arguments:

    * ``x``: ``(T, B, I)`` input, time-major; ``h0``, ``c0``: ``(B, H)`` initial states,
      zeros when None. Every float input must have the weights' dtype (float32 or float64; a
      nested list is taken in it).
    * ``lengths=None``: ``(B,)`` integers in [0, T]; steps ``t >= lengths[b]`` hold row
      b's state and output zero, and the final state is the one after its last valid step.
    * ``n_threads=None``: the kernels' threads (None: ``OMP_NUM_THREADS`` or the CPUs; -1
      all CPUs); backward uses the forward's count unless given its own.
    * ``workspace=None``: a :class:`Workspace` to take the buffers from (outputs and cache
      then live in it until its next use; the layers' inference path).
    * ``W_ih (G*H, I)``, ``W_hh (G*H, H)``, ``b_ih (G*H,)``, ``b_hh (G*H,)``: gate blocks
      (i, f, g, o), G = 4, or (i, g, o), G = 3, when ``coupled``.
    * ``p_i=None``, ``p_f=None``, ``p_o=None``: peephole weights ``(H,)``, each optional
      (a term missing above when None); ``p_f`` must be None when ``coupled``.
    * ``coupled=False``: True couples the gates, ``f = 1 - i`` (CIFG).

    Returns ``hs (T, B, H)`` (a view into the cache), ``h_n (B, H)``, ``c_n (B, H)`` and
    the cache for :func:`lstm_backward`.

        >>> import numpy as np
        >>> from fastrnn import functional as F
        >>> rng = np.random.default_rng(0)
        >>> T, B, I, H = 5, 2, 3, 4
        >>> x = rng.standard_normal((T, B, I)).astype(np.float32)
        >>> W_ih = rng.standard_normal((4 * H, I)).astype(np.float32)
        >>> W_hh = rng.standard_normal((4 * H, H)).astype(np.float32)
        >>> b = np.zeros(4 * H, np.float32)
        >>> hs, h_n, c_n, cache = F.lstm_forward(x, None, None, W_ih, W_hh, b, b,
        ...                                      p_o=np.ones(H, np.float32), lengths=[5, 3])
        >>> hs.shape, c_n.shape, float(abs(hs[3:, 1]).max())     # row 1 stops after 3 steps
        ((5, 2, 4), (2, 4), 0.0)
    """
    _check_flag("coupled", coupled)
    G = 3 if coupled else 4
    if coupled and p_f is not None:
        raise ValueError("coupled LSTM has no forget gate of its own (f = 1 - i): p_f must be None")
    dtype = _dtype_of(W_ih)
    T, B, I, H = _sizes(x, W_ih, W_hh, G, "lstm (coupled)" if coupled else "lstm")
    x = _array("x", x, dtype, (T, B, I))
    W_ih = _array("W_ih", W_ih, dtype, (G * H, I))
    W_hh = _array("W_hh", W_hh, dtype, (G * H, H))
    bias = _array("b_ih", b_ih, dtype, (G * H,)) + _array("b_hh", b_hh, dtype, (G * H,))
    p_i = _optional("p_i", p_i, dtype, (H,))
    p_f = _optional("p_f", p_f, dtype, (H,))
    p_o = _optional("p_o", p_o, dtype, (H,))
    lengths = lengths_array(lengths, T, B)
    x = _zero_padding(x, lengths, workspace)
    hbuf = _scratch(workspace, "h", (T + 1, B, H), dtype)
    cbuf = _scratch(workspace, "c", (T + 1, B, H), dtype)
    hbuf[0] = _state("h0", h0, dtype, B, H)
    cbuf[0] = _state("c0", c0, dtype, B, H)
    gates = _scratch(workspace, "gates", (T, B, G * H), dtype)
    tcbuf = _scratch(workspace, "tanh_c", (T, B, H), dtype)
    nt = effective_n_threads(n_threads)
    if T and B:
        with serial_blas:
            _lstm.lstm_forward(gates, hbuf, cbuf, tcbuf, x, W_ih, W_hh, bias, p_i, p_f, p_o,
                               lengths, coupled, nt)
    cache = Cache(cell="lstm", dtype=dtype, T=T, B=B, I=I, H=H, x=x, hbuf=hbuf, cbuf=cbuf,
                  tcbuf=tcbuf, gates=gates, W_ih=W_ih, W_hh=W_hh, p_i=p_i, p_f=p_f, p_o=p_o,
                  lengths=lengths, variant=coupled, n_threads=nt)
    return hbuf[1:], _final_state(hbuf, lengths, T), _final_state(cbuf, lengths, T), cache


def lstm_backward(dhs, dh_n, dc_n, cache, grads=None, n_threads=None, retain_cache=False,
                  need_dx=True):
    """Backward (BPTT) of :func:`lstm_forward` (the equations are in
    fastrnn/kernels/_lstm.pyx's header).

    Arguments:

    * ``dhs``: ``(T, B, H)`` gradient w.r.t. ``hs``, or None (zeros); padding steps' values
      are ignored. ``dh_n``, ``dc_n``: ``(B, H)`` gradients w.r.t. ``h_n`` and ``c_n``, or
      None.
    * ``cache``: the forward's third/fourth result.
    * ``grads=None``: a dict of C-contiguous arrays of the parameters' shapes and dtype
      (keys as returned) to accumulate ``+=`` into (zero them yourself); None: fresh zeros.
    * ``n_threads=None``: the forward's thread count, or another.
    * ``need_dx=True``: False skips the input gradient (``dx`` is None), one GEMM of six.
    * ``retain_cache=False``: backward writes the gate gradients over the cached gates
      (no second ``(T, B, G*H)`` buffer), so the cache can be used once, as PyTorch's
      ``retain_graph=False``; True keeps it usable for another backward.

    Returns ``dx (T, B, I)`` (None when ``need_dx=False``), ``dh0 (B, H)``, ``dc0 (B, H)``
    and ``grads`` with keys ``W_ih``, ``W_hh``, ``b_ih``, ``b_hh`` and ``p_i``/``p_f``/
    ``p_o`` for the peepholes in use.

        >>> import numpy as np
        >>> from fastrnn import functional as F
        >>> rng = np.random.default_rng(0)
        >>> x = rng.standard_normal((5, 2, 3))
        >>> W_ih, W_hh = rng.standard_normal((12, 3)), rng.standard_normal((12, 4))
        >>> b = np.zeros(12)
        >>> hs, h_n, c_n, cache = F.lstm_forward(x, None, None, W_ih, W_hh, b, b, coupled=True)
        >>> dx, dh0, dc0, grads = F.lstm_backward(np.ones_like(hs), None, None, cache)
        >>> dx.shape, dc0.shape, sorted(grads)
        ((5, 2, 3), (2, 4), ['W_hh', 'W_ih', 'b_hh', 'b_ih'])
        >>> F.lstm_backward(None, None, None, cache)
        Traceback (most recent call last):
        RuntimeError: lstm_backward already ran on this cache and reused its buffers; ...
    """
    c = _check_cache(cache, "lstm")
    T, B, I, H, dtype = c.T, c.B, c.I, c.H, c.dtype
    dhs = _upstream("dhs", dhs, dtype, (T, B, H))
    dh = _state("dh_n", dh_n, dtype, B, H).copy()
    dc = _state("dc_n", dc_n, dtype, B, H).copy()
    grads = _grads(grads, _param_shapes(c), dtype)
    dx = np.zeros((T, B, I), dtype) if need_dx else None    # None: x needs no gradient
    dx_out = dx if need_dx else np.empty((1, 1, 1), dtype)
    if T and B:
        db = np.zeros(c.W_ih.shape[0], dtype)
        nt = _threads(n_threads, c)      # validated before the cache is consumed
        gates = c.gates
        dgates = _gate_grad_buffer(c, retain_cache)
        with serial_blas:
            _lstm.lstm_backward(dx_out, dh, dc, grads["W_ih"], grads["W_hh"], db,
                                grads.get("p_i") if c.p_i is not None else None,
                                grads.get("p_f") if c.p_f is not None else None,
                                grads.get("p_o") if c.p_o is not None else None,
                                dgates, dhs, c.x, gates, c.hbuf, c.cbuf, c.tcbuf, c.W_ih,
                                c.W_hh, c.p_i, c.p_f, c.p_o, c.lengths, c.variant, nt,
                                need_dx)
        grads["b_ih"] += db
        grads["b_hh"] += db
    return dx, dh, dc, grads


# ---- GRU -----------------------------------------------------------------------------

def gru_input_bias(b_ih, b_hh, reset_after):
    """The bias the GRU kernel adds to the input projection: b_ih + b_hh, except that with
    reset_after the n block's b_hn stays inside r * (W_hn h + b_hn) and is added per step."""
    bias_x = b_ih + b_hh
    if reset_after:
        H = b_ih.shape[0] // 3
        bias_x[2 * H:] = b_ih[2 * H:]
    return bias_x


def gru_forward(x, h0, W_ih, W_hh, b_ih, b_hh, reset_after=True, lengths=None, n_threads=None,
                workspace=None):
    """GRU over a whole sequence, one direction of one layer (σ the sigmoid, ``*``
    elementwise)::

        r   = σ(x_t @ W_ir.T + b_ir + h_{t-1} @ W_hr.T + b_hr)            reset gate
        z   = σ(x_t @ W_iz.T + b_iz + h_{t-1} @ W_hz.T + b_hz)            update gate
        n   = tanh(x_t @ W_in.T + b_in + r * (h_{t-1} @ W_hn.T + b_hn))   reset_after=True
        n   = tanh(x_t @ W_in.T + b_in + (r * h_{t-1}) @ W_hn.T + b_hn)   reset_after=False
        h_t = (1 - z) * n + z * h_{t-1}

    Arguments:

    * ``x``: ``(T, B, I)`` input, time-major; ``h0``: ``(B, H)`` initial state, zeros
      when None. Every float input must have the weights' dtype (float32 or float64; a
      nested list is taken in it).
    * ``lengths=None``: ``(B,)`` integers in [0, T]; steps ``t >= lengths[b]`` hold row
      b's state and output zero, and the final state is the one after its last valid step.
    * ``n_threads=None``: the kernels' threads (None: ``OMP_NUM_THREADS`` or the CPUs; -1
      all CPUs); backward uses the forward's count unless given its own.
    * ``workspace=None``: a :class:`Workspace` to take the buffers from (outputs and cache
      then live in it until its next use; the layers' inference path).
    * ``W_ih (3*H, I)``, ``W_hh (3*H, H)``, ``b_ih (3*H,)``, ``b_hh (3*H,)``: gate blocks
      (r, z, n), PyTorch's layout.
    * ``reset_after=True``: PyTorch's and cuDNN's form; False is Cho et al. 2014's.

    Returns ``hs (T, B, H)`` (a view into the cache), ``h_n (B, H)`` and the cache for
    :func:`gru_backward`.

        >>> import numpy as np
        >>> from fastrnn import functional as F
        >>> rng = np.random.default_rng(0)
        >>> x = rng.standard_normal((5, 2, 3))
        >>> W_ih, W_hh = rng.standard_normal((12, 3)), rng.standard_normal((12, 4))
        >>> b = np.zeros(12)
        >>> h0 = np.ones((2, 4))
        >>> hs, h_n, cache = F.gru_forward(x, h0, W_ih, W_hh, b, b, reset_after=False)
        >>> hs.shape, h_n.shape
        ((5, 2, 4), (2, 4))
    """
    _check_flag("reset_after", reset_after)
    dtype = _dtype_of(W_ih)
    T, B, I, H = _sizes(x, W_ih, W_hh, 3, "gru")
    x = _array("x", x, dtype, (T, B, I))
    W_ih = _array("W_ih", W_ih, dtype, (3 * H, I))
    W_hh = _array("W_hh", W_hh, dtype, (3 * H, H))
    b_ih = _array("b_ih", b_ih, dtype, (3 * H,))
    b_hh = _array("b_hh", b_hh, dtype, (3 * H,))
    bias_x = gru_input_bias(b_ih, b_hh, reset_after)
    lengths = lengths_array(lengths, T, B)
    x = _zero_padding(x, lengths, workspace)
    hbuf = _scratch(workspace, "h", (T + 1, B, H), dtype)
    hbuf[0] = _state("h0", h0, dtype, B, H)
    gates = _scratch(workspace, "gates", (T, B, 3 * H), dtype)
    side = _scratch(workspace, "side", (T, B, H), dtype)
    nt = effective_n_threads(n_threads)
    if T and B:
        with serial_blas:
            _gru.gru_forward(gates, hbuf, side, x, W_ih, W_hh, bias_x, b_hh, lengths,
                             bool(reset_after), nt)
    cache = Cache(cell="gru", dtype=dtype, T=T, B=B, I=I, H=H, x=x, hbuf=hbuf, gates=gates,
                  side=side, W_ih=W_ih, W_hh=W_hh, lengths=lengths, variant=bool(reset_after),
                  n_threads=nt)
    return hbuf[1:], _final_state(hbuf, lengths, T), cache


def gru_backward(dhs, dh_n, cache, grads=None, n_threads=None, retain_cache=False,
                 need_dx=True):
    """Backward (BPTT) of :func:`gru_forward` (the equations are in
    fastrnn/kernels/_gru.pyx's header).

    Arguments:

    * ``dhs``: ``(T, B, H)`` gradient w.r.t. ``hs``, or None (zeros); padding steps' values
      are ignored. ``dh_n``: ``(B, H)`` gradient w.r.t. ``h_n``, or None.
    * ``cache``: the forward's third/fourth result.
    * ``grads=None``: a dict of C-contiguous arrays of the parameters' shapes and dtype
      (keys as returned) to accumulate ``+=`` into (zero them yourself); None: fresh zeros.
    * ``n_threads=None``: the forward's thread count, or another.
    * ``need_dx=True``: False skips the input gradient (``dx`` is None), one GEMM of six.
    * ``retain_cache=False``: backward writes its gradients over the cached gates (and,
      with reset_after, the cached ``W_hn h + b_hn``), so the cache can be used once; True
      keeps it usable for another backward.

    Returns ``dx (T, B, I)`` (None when ``need_dx=False``), ``dh0 (B, H)`` and ``grads``
    with keys ``W_ih``, ``W_hh``, ``b_ih``, ``b_hh`` (``b_ih`` and ``b_hh`` differ in the n
    block).

        >>> import numpy as np
        >>> from fastrnn import functional as F
        >>> rng = np.random.default_rng(0)
        >>> x = rng.standard_normal((5, 2, 3))
        >>> W_ih, W_hh = rng.standard_normal((12, 3)), rng.standard_normal((12, 4))
        >>> b = np.zeros(12)
        >>> hs, h_n, cache = F.gru_forward(x, None, W_ih, W_hh, b, b)
        >>> grads = {k: np.zeros(v.shape) for k, v in
        ...          (("W_ih", W_ih), ("W_hh", W_hh), ("b_ih", b), ("b_hh", b))}
        >>> dx, dh0, _ = F.gru_backward(None, np.ones((2, 4)), cache, grads=grads,
        ...                             need_dx=False)            # accumulates into grads
        >>> dx is None, dh0.shape, bool(grads["W_hh"].any())
        (True, (2, 4), True)
    """
    c = _check_cache(cache, "gru")
    T, B, I, H, dtype = c.T, c.B, c.I, c.H, c.dtype
    dhs = _upstream("dhs", dhs, dtype, (T, B, H))
    dh = _state("dh_n", dh_n, dtype, B, H).copy()
    grads = _grads(grads, _param_shapes(c), dtype)
    dx = np.zeros((T, B, I), dtype) if need_dx else None    # None: x needs no gradient
    dx_out = dx if need_dx else np.empty((1, 1, 1), dtype)
    if T and B:
        nt = _threads(n_threads, c)      # validated before the cache is consumed
        gates, side = c.gates, c.side
        dgx = _gate_grad_buffer(c, retain_cache)
        if not c.variant:
            dside = np.empty((1, 1, 1), dtype)       # unused by the reset-before form
        elif retain_cache:
            dside = np.empty((T, B, H), dtype)
        else:
            dside = side    # d(W_hn h + b_hn) overwrites hn element by element, after its read
        drh = np.empty((B, H), dtype)
        with serial_blas:
            _gru.gru_backward(dx_out, dh, grads["W_ih"], grads["W_hh"], grads["b_ih"], grads["b_hh"],
                              dgx, dside, drh, dhs, c.x, gates, c.hbuf, side, c.W_ih,
                              c.W_hh, c.lengths, c.variant, nt, need_dx)
    return dx, dh, grads


# ---- one step: the native step of every cell -----------------------------------------
#
# Cells, layer.step, SequenceModel.step and Stream run one native function per step
# (kernels/_stream.pyx run_step, over the same *_step_units as the sequence kernels): a
# StepPlan holds one layer's weight pointers, checked once; <cell>_step runs it on a state
# passed in and returns the new state, reading x and the state in place when they are
# exactly what it takes (a plain C-contiguous aligned array of the weights' dtype).

def step_plan(cell, W_ih, W_hh, b_ih=None, b_hh=None, p_i=None, p_f=None, p_o=None,
              nonlinearity="tanh", coupled=False, reset_after=True, guard=None):
    """The native one-step plan of one layer, for :func:`rnn_step` / :func:`lstm_step` /
    :func:`gru_step`. ``cell``: "rnn", "lstm" or "gru"; weights as the sequence functions
    take them (``b_ih, b_hh`` both None: no bias; peepholes ``(H,)`` for the LSTM), aligned
    C-contiguous arrays of one float dtype, read in place on every step (update them in
    place; the plan keeps them alive). ``guard``: the fastrnn.kernels._guard.WeightGuard the
    weights are written under, so that each step computes from one version of them.

    A decoder-style loop over one LSTM's steps, the state kept by the caller (what
    ``fastrnn.LSTMCell`` runs), equal to the whole-sequence function's result:

        >>> import numpy as np
        >>> import fastrnn.functional as F
        >>> rng = np.random.default_rng(0)
        >>> I, H, B, T = 3, 4, 2, 5
        >>> W_ih, W_hh = (0.3 * rng.standard_normal((4 * H, n)).astype(np.float32)
        ...               for n in (I, H))
        >>> b_ih, b_hh = np.zeros((2, 4 * H), np.float32)
        >>> plan = F.step_plan("lstm", W_ih, W_hh, b_ih, b_hh)
        >>> x = rng.standard_normal((T, B, I)).astype(np.float32)
        >>> h = c = None                            # zeros
        >>> for x_t in x:
        ...     h, c = F.lstm_step(plan, x_t, h, c, n_threads=1)
        >>> out, h_n, c_n, _ = F.lstm_forward(x, np.zeros((B, H), np.float32),
        ...                                   np.zeros((B, H), np.float32), W_ih, W_hh,
        ...                                   b_ih, b_hh)
        >>> bool(np.allclose(h, h_n, atol=1e-6)), bool(np.allclose(c, c_n, atol=1e-6))
        (True, True)
    """
    params = {"W_ih": W_ih, "W_hh": W_hh, "b_ih": b_ih, "b_hh": b_hh}
    for name, p in (("p_i", p_i), ("p_f", p_f), ("p_o", p_o)):
        if p is not None:
            params[name] = p
    _check_flag("coupled", coupled)
    _check_flag("reset_after", reset_after)
    return StepPlan(cell, params, nonlinearity, bool(coupled),
                    bool(reset_after) if cell == "gru" else False, guard)


def _wrong_plan(plan, cell):
    raise TypeError(f"plan must be a step_plan of a {cell} cell, got {plan!r}")


def _step_checked(plan, x, h, c, nt, check):
    """The step of inputs the native step did not take in place: checked (by the caller's
    ``check``, with its messages, or by :func:`_step_inputs`), converted, and stepped."""
    x, h, c = (check or _step_inputs)(plan, x, h, c)
    out = plan.step(x, h, c, nt)
    if out is None:
        raise ValueError(f"{plan.cell}_step: the checked inputs x {np.shape(x)}, h "
                         f"{np.shape(h)} do not fit the plan (input_size={plan.input_size}, "
                         f"hidden_size={plan.hidden_size})")
    return out


def _step_inputs(plan, x, h, c):
    """functional's own check of a step's inputs: x (B, I) or (I,), states of x's batch
    shape or None, every one of the plan's dtype; C-contiguous aligned copies where needed."""
    dtype, I, H = plan.dtype, plan.input_size, plan.hidden_size
    if isinstance(x, (list, tuple)):
        x = np.asarray(x, dtype=dtype)
    if not isinstance(x, np.ndarray) or x.ndim not in (1, 2):
        raise ValueError(f"x must be (B, {I}) or ({I},), got {np.shape(x)}")
    batch = x.shape[:-1]
    x = _array("x", x, dtype, batch + (I,))
    if x.ndim == 2 and x.shape[0] * max(plan.hidden_size * 4, I) > INT32_MAX:
        raise ValueError(f"batch {x.shape[0]} exceeds the kernels' 32-bit index range; split it")
    h = _optional("h", h, dtype, batch + (H,))
    c = _optional("c", c, dtype, batch + (H,)) if plan.lstm else c
    if c is not None and not plan.lstm:
        raise TypeError(f"a {plan.cell} step has no cell state c")
    return x, h, c


def rnn_step(plan, x, h=None, n_threads=None, check=None):
    """One step of an Elman RNN: ``h' = act(x @ W_ih.T + b_ih + h @ W_hh.T + b_hh)``.

    ``plan``: :func:`step_plan` ("rnn"); ``x (B, I)`` or ``(I,)``; ``h`` in x's batch shape
    (``(B, H)`` or ``(H,)``) or None (zeros). Returns ``h'``, a new array. ``check``: a
    function ``(plan, x, h, c) -> (x, h, c)`` run on inputs the native step cannot read in
    place, raising the caller's errors (default: this module's)."""
    if type(plan) is not StepPlan or plan.cell != "rnn":
        _wrong_plan(plan, "rnn")
    nt = 1 if n_threads == 1 and type(n_threads) is int else effective_n_threads(n_threads)
    out = plan.step(x, h, None, nt)          # None: not readable in place
    return out if out is not None else _step_checked(plan, x, h, None, nt, check)


def lstm_step(plan, x, h=None, c=None, n_threads=None, check=None):
    """One LSTM step (gate order i, f, g, o; peephole and coupled variants as
    :func:`lstm_forward`): returns ``(h', c')``, new arrays of x's batch shape. Arguments as
    :func:`rnn_step`; ``c`` the cell state, or None (zeros)."""
    if type(plan) is not StepPlan or not plan.lstm:
        _wrong_plan(plan, "lstm")
    nt = 1 if n_threads == 1 and type(n_threads) is int else effective_n_threads(n_threads)
    out = plan.step(x, h, c, nt)          # None: not readable in place
    return out if out is not None else _step_checked(plan, x, h, c, nt, check)


def gru_step(plan, x, h=None, n_threads=None, check=None):
    """One GRU step (gate order r, z, n; reset-after or reset-before as the plan's
    ``reset_after``): returns ``h'``. Arguments as :func:`rnn_step`."""
    if type(plan) is not StepPlan or plan.cell != "gru":
        _wrong_plan(plan, "gru")
    nt = 1 if n_threads == 1 and type(n_threads) is int else effective_n_threads(n_threads)
    out = plan.step(x, h, None, nt)          # None: not readable in place
    return out if out is not None else _step_checked(plan, x, h, None, nt, check)


# one step with the state as a cell takes it (None, h, or the tuple (h, c)), or None when
# an input is not readable in place: the cells' hot path, a native function called with no
# Python frame of ours in between (its docstring says everything)
cell_step = _native_cell_step


def make_stream(layer, batch, params, n_threads):
    """A :class:`fastrnn.Stream` of ``layer`` (see ``layer.stream()``): the same native step,
    its state kept inside."""
    return Stream(layer, batch, params, n_threads)
