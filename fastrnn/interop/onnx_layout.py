"""Gate tables between fastrnn's weights and ONNX's ``RNN``/``LSTM``/``GRU`` operators.

Pure numpy, no ONNX import: both the importer and the exporter use these functions, so the
two directions of the mapping are written once and tested against each other.

Letters: H hidden size, I input size. One direction of one layer, in each convention::

    fastrnn  W_ih (G*H, I)  W_hh (G*H, H)  b_ih (G*H,)  b_hh (G*H,)  peepholes {g: (H,)}
    ONNX     W    (G'*H, I) R    (G'*H, H) B    (2*G'*H,) = [Wb | Rb]  P (3*H,) = [p_i|p_o|p_f]

(the ONNX node stacks these along a leading direction axis D.) Gate blocks, in order:

    kind            fastrnn        ONNX
    "rnn"           (h)            (h)
    "lstm"          (i, f, g, o)   (i, o, f, c)      c is fastrnn's g
    "lstm_coupled"  (i, g, o)      (i, o, f, c)      input_forget=1: f = 1 - i, ONNX's f block
                                                     and p_f unused (written as zeros)
    "gru"           (r, z, n)      (z, r, h)         h is fastrnn's n; the GRU form
                                                     (linear_before_reset = reset_after) does
                                                     not change the weights

Every function copies: slices of the inputs are never returned, and values are moved, never
computed, so fastrnn -> ONNX -> fastrnn is bit-identical.
"""
import numpy as np

__all__ = ["KINDS", "ONNX_OP", "kind_of", "onnx_gate_count", "to_onnx_slices",
           "from_onnx_slices", "direction_weights"]

# fastrnn block k is ONNX block _FROM_ONNX[kind][k]; None of ONNX blocks is unused.
_FROM_ONNX = {
    "rnn": (0,),
    "lstm": (0, 2, 3, 1),          # i<-i, f<-f, g<-c, o<-o
    "lstm_coupled": (0, 3, 1),     # i<-i, g<-c, o<-o; ONNX's f (block 2) unused
    "gru": (1, 0, 2),              # r<-r, z<-z, n<-h
}
KINDS = tuple(_FROM_ONNX)
ONNX_OP = {"rnn": "RNN", "lstm": "LSTM", "lstm_coupled": "LSTM", "gru": "GRU"}
_ONNX_PEEPHOLES = "iof"           # the order of P's three (H,) blocks


def _check_kind(kind):
    if kind not in _FROM_ONNX:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def onnx_gate_count(kind):
    """Gate blocks in the ONNX tensors of ``kind`` (RNN 1, LSTM 4 even when coupled, GRU 3)."""
    _check_kind(kind)
    return 4 if kind.startswith("lstm") else len(_FROM_ONNX[kind])


def kind_of(layer):
    """The kind of a fastrnn RNN/LSTM/GRU layer: "rnn", "lstm", "lstm_coupled" or "gru"."""
    cell = getattr(layer, "cell", None)
    if cell not in ("rnn", "lstm", "gru"):
        raise TypeError(f"expected a fastrnn RNN, LSTM or GRU layer, got {type(layer).__name__}")
    return "lstm_coupled" if cell == "lstm" and layer.coupled else cell


def _blocks(a, n, what):
    """Split a's first axis into n equal gate blocks."""
    if a.shape[0] % n:
        raise ValueError(f"{what} has {a.shape[0]} rows, not a multiple of {n} gate blocks")
    return np.split(np.asarray(a), n, axis=0)


def to_onnx_slices(kind, W_ih, W_hh, b_ih=None, b_hh=None, peepholes=None):
    """One direction of fastrnn weights -> ONNX ``(W, R, B, P)``.

    ``peepholes``: dict gate -> (H,) for any of "i", "f", "o" (missing gates are zeros in P).
    B is None when both biases are None (bias=False); P is None when there are no
    peepholes (RNN/GRU, or an LSTM without them). A coupled LSTM gets a zero f block."""
    _check_kind(kind)
    src, n = _FROM_ONNX[kind], onnx_gate_count(kind)
    H = np.asarray(W_hh).shape[1]

    def onnx_order(a, what):
        fast = _blocks(a, len(src), what)
        out = [np.zeros_like(fast[0]) for _ in range(n)]
        for k, j in enumerate(src):
            out[j] = fast[k].copy()
        return np.concatenate(out, axis=0)

    W, R = onnx_order(W_ih, "W_ih"), onnx_order(W_hh, "W_hh")
    B = None
    if b_ih is not None or b_hh is not None:
        zeros = np.zeros(len(src) * H, W.dtype)
        B = np.concatenate([onnx_order(zeros if b_ih is None else b_ih, "b_ih"),
                            onnx_order(zeros if b_hh is None else b_hh, "b_hh")])
    P = None
    if peepholes:
        if not kind.startswith("lstm"):
            raise ValueError(f"a {kind} cell has no peepholes")
        allowed = "io" if kind == "lstm_coupled" else "ifo"    # coupled: f = 1 - i, no p_f
        unknown = set(peepholes) - set(allowed)
        if unknown:
            raise ValueError(f"{kind} peephole gates must be among {allowed!r}, "
                             f"got {sorted(unknown)}")
        P = np.concatenate([np.array(peepholes[g], dtype=W.dtype, copy=True) if g in peepholes
                            else np.zeros(H, W.dtype) for g in _ONNX_PEEPHOLES])
    return W, R, B, P


def from_onnx_slices(kind, W, R, B=None, P=None):
    """One direction of ONNX ``(W, R, B, P)`` -> fastrnn ``(W_ih, W_hh, b_ih, b_hh, peepholes)``.

    b_ih/b_hh are None when B is None; ``peepholes`` is a dict gate -> (H,) ("i", "f", "o";
    "i", "o" for a coupled LSTM, whose p_f ONNX does not use), empty when P is None."""
    _check_kind(kind)
    src, n = _FROM_ONNX[kind], onnx_gate_count(kind)

    def fastrnn_order(a, what):
        onnx = _blocks(a, n, what)
        return np.concatenate([onnx[j] for j in src], axis=0)   # concatenate copies

    W_ih, W_hh = fastrnn_order(W, "W"), fastrnn_order(R, "R")
    b_ih = b_hh = None
    if B is not None:
        Wb, Rb = _blocks(B, 2, "B")
        b_ih, b_hh = fastrnn_order(Wb, "Wb"), fastrnn_order(Rb, "Rb")
    peepholes = {}
    if P is not None:
        if not kind.startswith("lstm"):
            raise ValueError(f"a {kind} cell has no peepholes")
        parts = dict(zip(_ONNX_PEEPHOLES, _blocks(P, 3, "P")))
        gates = "io" if kind == "lstm_coupled" else "ifo"
        peepholes = {g: parts[g].copy() for g in gates}
    return W_ih, W_hh, b_ih, b_hh, peepholes


def direction_weights(layer, index, reverse=False):
    """``(W_ih, W_hh, b_ih, b_hh, peepholes)`` of layer ``index`` of a fastrnn RNN/LSTM/GRU
    (the reverse direction when ``reverse``), as views of its parameters; biases None when
    the layer has bias=False, peepholes a dict over the layer's peephole gates."""
    kind_of(layer)
    sfx = f"_l{index}" + ("_reverse" if reverse else "")
    p = layer.params
    if "weight_ih" + sfx not in p:
        raise ValueError(f"the layer has no parameters {'weight_ih' + sfx!r}")
    peepholes = {g: p[f"peephole_{g}" + sfx] for g in getattr(layer, "peephole", "")}
    return (p["weight_ih" + sfx], p["weight_hh" + sfx], p.get("bias_ih" + sfx),
            p.get("bias_hh" + sfx), peepholes)
