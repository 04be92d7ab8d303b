"""Plain numpy reference of recurrent cells: forward pass and backward pass (BPTT).

This module is the correctness oracle of the project's tests and the "numpy"
side of its benchmarks.  It is written for clarity, not speed: every cell is a
Python loop over time steps with one line per equation, the way a numpy user
would write it.

Dimension alphabet
------------------
    T   time steps
    B   batch size
    I   input size
    H   hidden size
    G   gate blocks per cell: RNN 1, LSTM 4, coupled LSTM 3, GRU 3

Layout (time-major; weights row-major exactly as PyTorch stores them)
---------------------------------------------------------------------
    x       (T, B, I)       input sequence
    hs      (T, B, H)       hidden state output at every step
    h0, h_n (B, H)          initial / final hidden state (c0, c_n likewise for LSTM)
    W_ih    (G*H, I)        input-to-hidden weights, gate blocks stacked along rows
    W_hh    (G*H, H)        hidden-to-hidden weights
    b_ih    (G*H,)          input-side bias
    b_hh    (G*H,)          hidden-side bias
    p_i, p_f, p_o  (H,)     optional LSTM peephole weights (per unit)

Gate block order: LSTM (i, f, g, o) as torch.nn.LSTM; coupled LSTM (i, g, o);
GRU (r, z, n) as torch.nn.GRU.

Variable lengths
----------------
``lengths`` (B,) integer, each in [0, T].  For batch row b, steps
t >= lengths[b] leave that row's state unchanged and produce a zero output
hs[t, b]; h_n (and c_n) is the state after the row's last valid step (h0/c0
for length 0).  Backward matches this exactly: upstream gradients of padded
outputs are ignored (those outputs are constant zero) and dh_n/dc_n flow back
to each row's last valid step.

Dtypes
------
float32 or float64.  All floating-point inputs of a forward call must share
one dtype, and everything is computed and returned in that dtype (no silent
upcast).  Upstream gradients given to a backward call are converted to the
dtype of its forward pass.  Backward returns freshly allocated arrays.

Example: the oracle against the compiled kernels (:mod:`fastrnn.functional`, same
arguments)::

    >>> import numpy as np
    >>> from fastrnn import functional, reference
    >>> rng = np.random.default_rng(0)
    >>> T, B, I, H = 4, 2, 3, 5
    >>> x, h0 = rng.standard_normal((T, B, I)), rng.standard_normal((B, H))
    >>> W_ih, W_hh = rng.standard_normal((3 * H, I)), rng.standard_normal((3 * H, H))
    >>> b_ih, b_hh = rng.standard_normal(3 * H), rng.standard_normal(3 * H)
    >>> hs, h_n, cache = reference.gru_forward(x, h0, W_ih, W_hh, b_ih, b_hh, lengths=[4, 2])
    >>> hs_k, h_n_k, _ = functional.gru_forward(x, h0, W_ih, W_hh, b_ih, b_hh, lengths=[4, 2])
    >>> bool(np.allclose(hs, hs_k) and np.allclose(h_n, h_n_k))
    True
    >>> dx, dh0, grads = reference.gru_backward(np.ones_like(hs), None, cache)
    >>> dx.shape, dh0.shape, sorted(grads)
    ((4, 2, 3), (2, 5), ['W_hh', 'W_ih', 'b_hh', 'b_ih'])
"""

import numpy as np

__all__ = [
    "sigmoid",
    "rnn_forward",
    "rnn_backward",
    "lstm_forward",
    "lstm_backward",
    "gru_forward",
    "gru_backward",
]


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------

def sigmoid(a):
    """Logistic function 1 / (1 + exp(-a)), in the dtype of ``a``."""
    with np.errstate(over="ignore"):  # exp(-a) overflows to inf for very negative a; 1/(1+inf) = 0 is right
        return 1.0 / (1.0 + np.exp(-a))


def _check_dtype(dtype, arrays):
    """All named float arrays must have ``dtype``, which must be float32 or float64."""
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"x must be float32 or float64, got {dtype}")
    for name, a in arrays.items():
        if a.dtype != dtype:
            raise ValueError(
                f"{name} has dtype {a.dtype} but x has dtype {dtype}; "
                "all inputs must share one dtype (no silent casting)")


def _check_shapes(x, h0, W_ih, W_hh, b_ih, b_hh, G, cell):
    """Validate the arrays every cell takes; return (T, B, I, H)."""
    if x.ndim != 3:
        raise ValueError(f"{cell}: x must have shape (T, B, I), got shape {x.shape}")
    if W_hh.ndim != 2:
        raise ValueError(f"{cell}: W_hh must have shape ({G}*H, H), got shape {W_hh.shape}")
    T, B, I = x.shape
    H = W_hh.shape[1]  # hidden size is read off W_hh, so W_hh is checked first
    expected = {
        "W_hh": (W_hh, (G * H, H)),
        "h0": (h0, (B, H)),
        "W_ih": (W_ih, (G * H, I)),
        "b_ih": (b_ih, (G * H,)),
        "b_hh": (b_hh, (G * H,)),
    }
    for name, (a, shape) in expected.items():
        if a.shape != shape:
            raise ValueError(
                f"{cell}: {name} must have shape {shape} (T={T}, B={B}, I={I}, H={H}, G={G}), "
                f"got {a.shape}")
    return T, B, I, H


def _step_mask(lengths, T, B):
    """(T, B, 1) bool array: True where step t is a valid (non-padded) step of row b."""
    if lengths is None:
        return np.ones((T, B, 1), dtype=bool)
    lengths = np.asarray(lengths)
    if lengths.shape != (B,):
        raise ValueError(f"lengths must have shape (B,) = ({B},), got {lengths.shape}")
    if lengths.dtype.kind not in "iu":
        raise ValueError(f"lengths must be an integer array, got dtype {lengths.dtype}")
    if B > 0 and (lengths.min() < 0 or lengths.max() > T):
        raise ValueError(f"lengths must lie in [0, T={T}], got {lengths.tolist()}")
    return np.arange(T)[:, None, None] < lengths[None, :, None]


def _upstream(grad, shape, dtype, name):
    """Fresh copy of an upstream gradient in the forward dtype (zeros when None)."""
    if grad is None:
        return np.zeros(shape, dtype=dtype)
    grad = np.array(grad, dtype=dtype)  # np.array copies
    if grad.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {grad.shape}")
    return grad


# ----------------------------------------------------------------------------
# vanilla RNN:  h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
# ----------------------------------------------------------------------------

def rnn_forward(x, h0, W_ih, W_hh, b_ih, b_hh, lengths=None, nonlinearity="tanh"):
    """Elman RNN over a sequence.  Returns (hs, h_n, cache)."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    x, h0, W_ih, W_hh, b_ih, b_hh = (np.asarray(a) for a in (x, h0, W_ih, W_hh, b_ih, b_hh))
    T, B, I, H = _check_shapes(x, h0, W_ih, W_hh, b_ih, b_hh, G=1, cell="rnn")
    _check_dtype(x.dtype, dict(h0=h0, W_ih=W_ih, W_hh=W_hh, b_ih=b_ih, b_hh=b_hh))
    mask = _step_mask(lengths, T, B)

    hs = np.zeros((T, B, H), dtype=x.dtype)     # outputs (zero at padded steps)
    h_in = np.zeros((T, B, H), dtype=x.dtype)   # state entering each step
    h_out = np.zeros((T, B, H), dtype=x.dtype)  # activation computed at each step
    h = h0.copy()                               # running hidden state
    for t in range(T):
        a = x[t] @ W_ih.T + b_ih + h @ W_hh.T + b_hh                    # pre-activation (B, H)
        h_new = np.tanh(a) if nonlinearity == "tanh" else np.maximum(a, 0)  # new hidden state
        h_in[t], h_out[t] = h, h_new
        hs[t] = np.where(mask[t], h_new, 0)     # output: zero past the row's length
        h = np.where(mask[t], h_new, h)         # state: frozen past the row's length

    cache = dict(x=x, W_ih=W_ih, W_hh=W_hh, mask=mask, nonlinearity=nonlinearity,
                 h_in=h_in, h_out=h_out)
    return hs, h, cache


def rnn_backward(dhs, dh_n, cache):
    """BPTT for rnn_forward.  Returns (dx, dh0, grads) with grads W_ih, W_hh, b_ih, b_hh."""
    x, W_ih, W_hh, mask = cache["x"], cache["W_ih"], cache["W_hh"], cache["mask"]
    h_in, h_out = cache["h_in"], cache["h_out"]
    T, B, H = h_in.shape
    dhs = _upstream(dhs, (T, B, H), x.dtype, "dhs")
    dh = _upstream(dh_n, (B, H), x.dtype, "dh_n")  # grad w.r.t. the running state h

    dx = np.zeros_like(x)
    dW_ih, dW_hh = np.zeros_like(W_ih), np.zeros_like(W_hh)
    db_ih, db_hh = np.zeros(W_ih.shape[0], x.dtype), np.zeros(W_hh.shape[0], x.dtype)
    for t in reversed(range(T)):
        m = mask[t]
        dh_new = np.where(m, dh + dhs[t], 0)       # grad w.r.t. this step's new state (valid rows)
        if cache["nonlinearity"] == "tanh":
            da = dh_new * (1 - h_out[t] ** 2)      # grad w.r.t. pre-activation, tanh' = 1 - h^2
        else:
            da = dh_new * (h_out[t] > 0)           # grad w.r.t. pre-activation, relu' = [a > 0]
        dW_ih += da.T @ x[t]
        dW_hh += da.T @ h_in[t]
        db_ih += da.sum(axis=0)
        db_hh += da.sum(axis=0)
        dx[t] = da @ W_ih                          # grad w.r.t. input
        dh = da @ W_hh + np.where(m, 0, dh)        # grad w.r.t. previous state (padded rows pass through)

    grads = dict(W_ih=dW_ih, W_hh=dW_hh, b_ih=db_ih, b_hh=db_hh)
    return dx, dh, grads


# ----------------------------------------------------------------------------
# LSTM (optional peepholes, optional coupled input-forget gate)
#   a = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh, split into gate blocks
#   i = σ(a_i + p_i c_{t-1}),  f = σ(a_f + p_f c_{t-1})  (or f = 1 - i if coupled)
#   g = tanh(a_g),  c_t = f c_{t-1} + i g
#   o = σ(a_o + p_o c_t),  h_t = o tanh(c_t)
# ----------------------------------------------------------------------------

def lstm_forward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, p_i=None, p_f=None, p_o=None,
                 coupled=False, lengths=None):
    """LSTM over a sequence.  Returns (hs, h_n, c_n, cache).

    Gate blocks are (i, f, g, o), or (i, g, o) when ``coupled`` (f = 1 - i).
    Peepholes p_i, p_f, p_o (H,) are each optional; p_o looks at the new cell state.
    """
    G = 3 if coupled else 4
    x, h0, c0, W_ih, W_hh, b_ih, b_hh = (np.asarray(a) for a in (x, h0, c0, W_ih, W_hh, b_ih, b_hh))
    T, B, I, H = _check_shapes(x, h0, W_ih, W_hh, b_ih, b_hh, G=G, cell="lstm")
    if c0.shape != (B, H):
        raise ValueError(f"lstm: c0 must have shape {(B, H)}, got {c0.shape}")
    if coupled and p_f is not None:
        raise ValueError("lstm: p_f must be None when coupled=True (the forget gate is 1 - i)")
    peepholes = {name: np.asarray(p) for name, p in (("p_i", p_i), ("p_f", p_f), ("p_o", p_o))
                 if p is not None}
    for name, p in peepholes.items():
        if p.shape != (H,):
            raise ValueError(f"lstm: {name} must have shape (H,) = ({H},), got {p.shape}")
    _check_dtype(x.dtype, dict(h0=h0, c0=c0, W_ih=W_ih, W_hh=W_hh, b_ih=b_ih, b_hh=b_hh, **peepholes))
    p_i, p_f, p_o = (peepholes.get(name) for name in ("p_i", "p_f", "p_o"))
    mask = _step_mask(lengths, T, B)

    steps = {k: np.zeros((T, B, H), dtype=x.dtype)
             for k in ("h_in", "c_in", "i", "f", "g", "o", "c_new", "tanh_c")}
    hs = np.zeros((T, B, H), dtype=x.dtype)  # outputs (zero at padded steps)
    h, c = h0.copy(), c0.copy()              # running hidden and cell state
    for t in range(T):
        a = x[t] @ W_ih.T + b_ih + h @ W_hh.T + b_hh  # gate pre-activations (B, G*H)
        if coupled:
            a_i, a_g, a_o = np.split(a, 3, axis=1)
        else:
            a_i, a_f, a_g, a_o = np.split(a, 4, axis=1)
        if p_i is not None:
            a_i = a_i + p_i * c                       # input peephole on the previous cell state
        i = sigmoid(a_i)                              # input gate
        if coupled:
            f = 1 - i                                 # forget gate coupled to the input gate
        else:
            if p_f is not None:
                a_f = a_f + p_f * c                   # forget peephole on the previous cell state
            f = sigmoid(a_f)                          # forget gate
        g = np.tanh(a_g)                              # candidate cell values
        c_new = f * c + i * g                         # new cell state
        if p_o is not None:
            a_o = a_o + p_o * c_new                   # output peephole on the NEW cell state
        o = sigmoid(a_o)                              # output gate
        tanh_c = np.tanh(c_new)                       # squashed cell state
        h_new = o * tanh_c                            # new hidden state

        for k, v in (("h_in", h), ("c_in", c), ("i", i), ("f", f), ("g", g), ("o", o),
                     ("c_new", c_new), ("tanh_c", tanh_c)):
            steps[k][t] = v
        hs[t] = np.where(mask[t], h_new, 0)           # output: zero past the row's length
        h = np.where(mask[t], h_new, h)               # states: frozen past the row's length
        c = np.where(mask[t], c_new, c)

    cache = dict(x=x, W_ih=W_ih, W_hh=W_hh, p_i=p_i, p_f=p_f, p_o=p_o, coupled=coupled,
                 mask=mask, **steps)
    return hs, h, c, cache


def lstm_backward(dhs, dh_n, dc_n, cache):
    """BPTT for lstm_forward.  Returns (dx, dh0, dc0, grads).

    grads has W_ih, W_hh, b_ih, b_hh and p_i / p_f / p_o for each peephole used.
    """
    x, W_ih, W_hh, mask = cache["x"], cache["W_ih"], cache["W_hh"], cache["mask"]
    p_i, p_f, p_o, coupled = cache["p_i"], cache["p_f"], cache["p_o"], cache["coupled"]
    T, B, H = cache["h_in"].shape
    dhs = _upstream(dhs, (T, B, H), x.dtype, "dhs")
    dh = _upstream(dh_n, (B, H), x.dtype, "dh_n")  # grad w.r.t. the running hidden state
    dc = _upstream(dc_n, (B, H), x.dtype, "dc_n")  # grad w.r.t. the running cell state

    dx = np.zeros_like(x)
    dW_ih, dW_hh = np.zeros_like(W_ih), np.zeros_like(W_hh)
    db_ih, db_hh = np.zeros(W_ih.shape[0], x.dtype), np.zeros(W_hh.shape[0], x.dtype)
    dp = {name: np.zeros(H, x.dtype) for name, p in (("p_i", p_i), ("p_f", p_f), ("p_o", p_o))
          if p is not None}
    for t in reversed(range(T)):
        m = mask[t]
        h_prev, c_prev = cache["h_in"][t], cache["c_in"][t]
        i, f, g, o = cache["i"][t], cache["f"][t], cache["g"][t], cache["o"][t]
        c_new, tanh_c = cache["c_new"][t], cache["tanh_c"][t]

        dh_new = np.where(m, dh + dhs[t], 0)                  # grad w.r.t. new hidden state (valid rows)
        da_o = dh_new * tanh_c * o * (1 - o)                  # grad w.r.t. output-gate pre-activation
        dc_new = np.where(m, dc, 0) + dh_new * o * (1 - tanh_c ** 2)  # grad w.r.t. new cell state
        if p_o is not None:
            dc_new += da_o * p_o                              # output peephole path into c_t
            dp["p_o"] += (da_o * c_new).sum(axis=0)
        di = dc_new * g                                       # grad w.r.t. input gate
        df = dc_new * c_prev                                  # grad w.r.t. forget gate
        dg = dc_new * i                                       # grad w.r.t. candidate
        dc = dc_new * f + np.where(m, 0, dc)                  # grad w.r.t. previous cell state
        if coupled:
            di = di - df                                      # f = 1 - i feeds back into i
        da_i = di * i * (1 - i)                               # grad w.r.t. input-gate pre-activation
        da_g = dg * (1 - g ** 2)                              # grad w.r.t. candidate pre-activation
        if p_i is not None:
            dc += da_i * p_i                                  # input peephole path into c_{t-1}
            dp["p_i"] += (da_i * c_prev).sum(axis=0)
        if coupled:
            da = np.concatenate([da_i, da_g, da_o], axis=1)   # grad w.r.t. all pre-activations (B, 3H)
        else:
            da_f = df * f * (1 - f)                           # grad w.r.t. forget-gate pre-activation
            if p_f is not None:
                dc += da_f * p_f                              # forget peephole path into c_{t-1}
                dp["p_f"] += (da_f * c_prev).sum(axis=0)
            da = np.concatenate([da_i, da_f, da_g, da_o], axis=1)  # (B, 4H)

        dW_ih += da.T @ x[t]
        dW_hh += da.T @ h_prev
        db_ih += da.sum(axis=0)
        db_hh += da.sum(axis=0)
        dx[t] = da @ W_ih                                     # grad w.r.t. input
        dh = da @ W_hh + np.where(m, 0, dh)                   # grad w.r.t. previous hidden state

    grads = dict(W_ih=dW_ih, W_hh=dW_hh, b_ih=db_ih, b_hh=db_hh, **dp)
    return dx, dh, dc, grads


# ----------------------------------------------------------------------------
# GRU, gate blocks (r, z, n)
#   r = σ(W_ir x + b_ir + W_hr h + b_hr),  z = σ(W_iz x + b_iz + W_hz h + b_hz)
#   reset_after=True :  n = tanh(W_in x + b_in + r * (W_hn h + b_hn))     (PyTorch, cuDNN)
#   reset_after=False:  n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)     (Cho et al. 2014)
#   h_t = (1 - z) * n + z * h_{t-1}
# ----------------------------------------------------------------------------

def gru_forward(x, h0, W_ih, W_hh, b_ih, b_hh, reset_after=True, lengths=None):
    """GRU over a sequence.  Returns (hs, h_n, cache)."""
    x, h0, W_ih, W_hh, b_ih, b_hh = (np.asarray(a) for a in (x, h0, W_ih, W_hh, b_ih, b_hh))
    T, B, I, H = _check_shapes(x, h0, W_ih, W_hh, b_ih, b_hh, G=3, cell="gru")
    _check_dtype(x.dtype, dict(h0=h0, W_ih=W_ih, W_hh=W_hh, b_ih=b_ih, b_hh=b_hh))
    mask = _step_mask(lengths, T, B)
    W_hr, W_hz, W_hn = np.split(W_hh, 3, axis=0)  # hidden-side weight blocks (H, H) each
    b_hr, b_hz, b_hn = np.split(b_hh, 3)          # hidden-side bias blocks (H,) each

    steps = {k: np.zeros((T, B, H), dtype=x.dtype) for k in ("h_in", "r", "z", "n", "a_hn")}
    hs = np.zeros((T, B, H), dtype=x.dtype)       # outputs (zero at padded steps)
    h = h0.copy()                                 # running hidden state
    for t in range(T):
        a_x = x[t] @ W_ih.T + b_ih                # input-side pre-activations (B, 3H)
        a_xr, a_xz, a_xn = np.split(a_x, 3, axis=1)
        r = sigmoid(a_xr + h @ W_hr.T + b_hr)     # reset gate
        z = sigmoid(a_xz + h @ W_hz.T + b_hz)     # update gate
        if reset_after:
            a_hn = h @ W_hn.T + b_hn              # hidden part of the candidate, reset applied after
            n = np.tanh(a_xn + r * a_hn)          # candidate state
        else:
            a_hn = (r * h) @ W_hn.T + b_hn        # hidden part of the candidate, reset applied before
            n = np.tanh(a_xn + a_hn)              # candidate state
        h_new = (1 - z) * n + z * h               # new hidden state

        for k, v in (("h_in", h), ("r", r), ("z", z), ("n", n), ("a_hn", a_hn)):
            steps[k][t] = v
        hs[t] = np.where(mask[t], h_new, 0)       # output: zero past the row's length
        h = np.where(mask[t], h_new, h)           # state: frozen past the row's length

    cache = dict(x=x, W_ih=W_ih, W_hh=W_hh, reset_after=reset_after, mask=mask, **steps)
    return hs, h, cache


def gru_backward(dhs, dh_n, cache):
    """BPTT for gru_forward.  Returns (dx, dh0, grads) with grads W_ih, W_hh, b_ih, b_hh."""
    x, W_ih, W_hh, mask = cache["x"], cache["W_ih"], cache["W_hh"], cache["mask"]
    reset_after = cache["reset_after"]
    T, B, H = cache["h_in"].shape
    dhs = _upstream(dhs, (T, B, H), x.dtype, "dhs")
    dh = _upstream(dh_n, (B, H), x.dtype, "dh_n")  # grad w.r.t. the running state h
    W_hr, W_hz, W_hn = np.split(W_hh, 3, axis=0)

    dx = np.zeros_like(x)
    dW_ih, dW_hh = np.zeros_like(W_ih), np.zeros_like(W_hh)
    db_ih, db_hh = np.zeros(W_ih.shape[0], x.dtype), np.zeros(W_hh.shape[0], x.dtype)
    dW_hr, dW_hz, dW_hn = np.split(dW_hh, 3, axis=0)  # views into dW_hh: += writes through
    db_hr, db_hz, db_hn = np.split(db_hh, 3)          # views into db_hh
    for t in reversed(range(T)):
        m = mask[t]
        h_prev = cache["h_in"][t]
        r, z, n, a_hn = cache["r"][t], cache["z"][t], cache["n"][t], cache["a_hn"][t]

        dh_new = np.where(m, dh + dhs[t], 0)      # grad w.r.t. new hidden state (valid rows)
        dn = dh_new * (1 - z)                     # grad w.r.t. candidate
        dz = dh_new * (h_prev - n)                # grad w.r.t. update gate
        dh_prev = dh_new * z                      # grad w.r.t. h_{t-1} through the z * h_{t-1} term
        da_n = dn * (1 - n ** 2)                  # grad w.r.t. candidate pre-activation
        if reset_after:
            dr = da_n * a_hn                      # grad w.r.t. reset gate
            da_hn = da_n * r                      # grad w.r.t. W_hn h + b_hn
            dW_hn += da_hn.T @ h_prev
            dh_prev += da_hn @ W_hn
        else:
            da_hn = da_n                          # grad w.r.t. W_hn (r h) + b_hn
            drh = da_hn @ W_hn                    # grad w.r.t. r * h_{t-1}
            dr = drh * h_prev                     # grad w.r.t. reset gate
            dW_hn += da_hn.T @ (r * h_prev)
            dh_prev += drh * r
        da_r = dr * r * (1 - r)                   # grad w.r.t. reset-gate pre-activation
        da_z = dz * z * (1 - z)                   # grad w.r.t. update-gate pre-activation
        dW_hr += da_r.T @ h_prev
        dW_hz += da_z.T @ h_prev
        db_hr += da_r.sum(axis=0)
        db_hz += da_z.sum(axis=0)
        db_hn += da_hn.sum(axis=0)
        dh_prev += da_r @ W_hr + da_z @ W_hz

        da_x = np.concatenate([da_r, da_z, da_n], axis=1)  # grad w.r.t. input-side pre-activations (B, 3H)
        dW_ih += da_x.T @ x[t]
        db_ih += da_x.sum(axis=0)
        dx[t] = da_x @ W_ih                       # grad w.r.t. input
        dh = dh_prev + np.where(m, 0, dh)         # grad w.r.t. previous state (padded rows pass through)

    grads = dict(W_ih=dW_ih, W_hh=dW_hh, b_ih=db_ih, b_hh=db_hh)
    return dx, dh, grads
