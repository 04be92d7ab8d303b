"""Import Keras 3 recurrent layers: ``SimpleRNN``, ``LSTM``, ``GRU``, ``Bidirectional`` around
one of them, and a ``Sequential`` stack of them.

``from_keras(layer)`` takes a built Keras layer object; ``from_keras(weights, config)`` takes
what ``layer.get_weights()`` and ``layer.get_config()`` return (saved with numpy and JSON, say)
and needs no Keras at all. Either way the result is a fastrnn ``RNN``/``LSTM``/``GRU`` with
``batch_first=True`` (Keras is batch-first) holding the same weights, moved, never recomputed.

Letters: I input size, H units, G gate blocks (SimpleRNN 1, GRU 3, LSTM 4). One direction::

    Keras    kernel (I, G*H)   recurrent_kernel (H, G*H)   bias (G*H,), GRU reset_after (2, 3H)
    fastrnn  weight_ih (G*H, I) = kernel.T   weight_hh (G*H, H) = recurrent_kernel.T

    cell                    Keras gates   fastrnn gates   biases in fastrnn
    SimpleRNN               (h)           (h)             bias_ih = bias, bias_hh = 0
    LSTM                    (i, f, c, o)  (i, f, g, o)    bias_ih = bias, bias_hh = 0
    GRU reset_after=True    (z, r, h)     (r, z, n)       bias_ih = bias[0], bias_hh = bias[1]
    GRU reset_after=False   (z, r, h)     (r, z, n)       bias_ih = bias, bias_hh = 0

Keras's GRU with reset_after=True is ``n = tanh(W_n x + b_n + r * (U_n h + c_n))`` and with
False ``n = tanh(W_n x + b_n + U_n (r * h))``, both ``h' = z h + (1 - z) n``: fastrnn's two GRU
forms (``reset_after``), the second with ``bias_hh = 0``. ``Bidirectional`` stores the forward
layer's arrays, then the backward layer's (run with go_backwards=True, its outputs flipped
back to time order and concatenated after the forward ones): fastrnn's ``_reverse`` half.

Config keys that do not change the function a trained layer computes are accepted and
ignored: initializers (``unit_forget_bias`` is one), regularizers and constraints act only
on training; ``dropout``/``recurrent_dropout`` only in training mode; ``unroll``,
``implementation`` and ``use_cudnn`` choose how the same recurrence is computed;
``zero_output_for_mask`` matters only with a mask; ``return_sequences``/``return_state``
choose which outputs Keras returns (fastrnn always returns ``out, state``: Keras's
``return_sequences=False`` output is ``out[:, -1]``, or for a bidirectional layer
``concat(state[-2], state[-1])``). Everything else fastrnn cannot represent is refused with
the name of the feature: other activations, ``go_backwards`` outside Bidirectional,
``stateful``, merge modes other than "concat", mixed precision, and unknown config keys.

The parity check (``check=True``) runs the imported layer on a random input and compares it
with Keras's own ``layer(x)`` when given a Keras object, and otherwise with
:func:`keras_reference`, a numpy transcription of Keras's cell equations on Keras's weight
layout, written here for that purpose and tested against Keras. The largest absolute
difference is ``layer.parity_max_abs_diff`` (None with ``check=False``). The default tolerance
is ``default_tolerance(dtype)``, except that a float64 layer compared with a Keras object gets
the float32 one: Keras 3.15 computes some float64 products in float32 (see ``_parity``).
"""
from dataclasses import dataclass, field

import numpy as np

from ..nn.layers import GRU, LSTM, RNN
from .parity import check_parity, default_tolerance

__all__ = ["from_keras", "keras_reference"]

_GATES = {"SimpleRNN": 1, "GRU": 3, "LSTM": 4}
_CLASSES = {"SimpleRNN": RNN, "LSTM": LSTM, "GRU": GRU}

# Config keys that only affect training, computation strategy or which outputs are returned.
_IGNORED = {"name", "trainable", "return_sequences", "return_state", "unroll",
            "zero_output_for_mask", "kernel_initializer", "recurrent_initializer",
            "bias_initializer", "kernel_regularizer", "recurrent_regularizer",
            "bias_regularizer", "activity_regularizer", "kernel_constraint",
            "recurrent_constraint", "bias_constraint", "dropout", "recurrent_dropout", "seed",
            "implementation", "use_cudnn", "batch_input_shape"}
_MAPPED = {"units", "activation", "use_bias", "dtype", "go_backwards", "stateful", "time_major"}
_KEYS = {"SimpleRNN": _IGNORED | _MAPPED,
         "LSTM": _IGNORED | _MAPPED | {"recurrent_activation", "unit_forget_bias"},
         "GRU": _IGNORED | _MAPPED | {"recurrent_activation", "reset_after"}}
_BIDIRECTIONAL_KEYS = {"name", "trainable", "dtype", "merge_mode", "layer", "backward_layer"}


@dataclass
class _Spec:
    """One Keras recurrent layer (both halves of a Bidirectional), weights in Keras's layout."""
    cell: str                       # "SimpleRNN", "LSTM" or "GRU"
    name: str
    units: int                      # H
    input_size: int                 # I
    activation: str                 # "tanh" or "relu" (SimpleRNN), "tanh" otherwise
    use_bias: bool
    reset_after: bool               # GRU only
    dtype: np.dtype
    go_backwards: bool
    return_sequences: bool
    return_state: bool
    directions: list = field(default_factory=list)  # [(kernel (I, GH), recurrent (H, GH), bias)]

    def signature(self):
        """What must agree between stacked layers and between the halves of a Bidirectional."""
        return (self.cell, self.units, self.activation, self.use_bias, self.reset_after,
                self.dtype)

    def describe(self):
        extra = f", reset_after={self.reset_after}" if self.cell == "GRU" else ""
        extra += f", activation={self.activation!r}" if self.cell == "SimpleRNN" else ""
        return (f"{self.cell}(units={self.units}{extra}, use_bias={self.use_bias}, "
                f"dtype={self.dtype.name}{', bidirectional' if len(self.directions) == 2 else ''})")


# ---- public --------------------------------------------------------------------------------
def from_keras(layer_or_weights, config=None, *, check=True, tol=None):
    """A fastrnn layer (``batch_first=True``) with the weights of a Keras recurrent layer.

    ``from_keras(keras_layer)``: a built ``keras.layers.SimpleRNN``/``LSTM``/``GRU``, a
    ``Bidirectional`` around one (merge_mode "concat"), or a ``keras.Sequential`` of such
    layers sharing cell type, units and direction (every one but the last with
    ``return_sequences=True``), which becomes one multi-layer fastrnn layer.
    ``from_keras(weights, config)``: the list ``get_weights()`` returns and the dict
    ``get_config()`` returns (or ``{"class_name": ..., "config": ...}`` as
    ``keras.saving.serialize_keras_object`` writes it); Keras is not imported.

    ``check``: run both sides on a random input (Keras itself for a layer object, the numpy
    :func:`keras_reference` for weights + config) and raise :class:`ParityError` if the
    largest absolute difference exceeds ``tol`` (default: ``default_tolerance(dtype)``, and
    the float32 one for a float64 Keras object, see the module docstring); the difference is
    stored as ``layer.parity_max_abs_diff`` (None when not checked).

    Example: with Keras, ``layer = from_keras(keras_lstm)``; without it, from what a Keras
    LSTM's ``get_weights()`` and ``get_config()`` give (gate blocks i, f, c, o; kernel
    (I, 4H), recurrent kernel (H, 4H), bias (4H,)), checked against the numpy reference:

        >>> import numpy as np
        >>> from fastrnn.interop.keras_io import from_keras
        >>> rng = np.random.default_rng(0)
        >>> I, H = 3, 5
        >>> weights = [0.3 * rng.standard_normal((I, 4 * H)).astype(np.float32),
        ...            0.3 * rng.standard_normal((H, 4 * H)).astype(np.float32),
        ...            np.zeros(4 * H, np.float32)]
        >>> config = {"class_name": "LSTM", "config": {"units": H, "return_sequences": True}}
        >>> layer = from_keras(weights, config)
        >>> layer
        LSTM(3, 5, batch_first=True)
        >>> layer.parity_max_abs_diff < 1e-5
        True
        >>> out, (h_n, c_n) = layer(rng.standard_normal((2, 7, I)).astype(np.float32))
        >>> out.shape, h_n.shape                    # x (B, T, I) -> out (B, T, D*H)
        ((2, 7, 5), (1, 2, 5))
    """
    keras_layer = None
    if config is None:
        if isinstance(layer_or_weights, (list, tuple)):
            raise TypeError("from_keras(weights, config): a list of weight arrays needs the "
                            "layer's config (the dict get_config() returns)")
        keras_layer = layer_or_weights
        weights, config = read_keras_object(keras_layer)
    else:
        if not isinstance(layer_or_weights, (list, tuple)):
            raise TypeError("from_keras(weights, config): weights must be the list that "
                            f"get_weights() returns, got {type(layer_or_weights).__name__}")
        weights = list(layer_or_weights)
    stack, input_shape = parse_config(config, weights)
    layer = _build(stack)
    layer.parity_max_abs_diff = None
    if check:
        layer.parity_max_abs_diff = _parity(layer, stack, keras_layer, input_shape, tol)
    return layer


def keras_reference(weights, config, x):
    """Keras's recurrences in plain numpy (float64), on Keras's weight layout: ``x (B, T, I)``
    -> ``out (B, T, D*H)`` (every step of the last layer) and the final states of every layer
    and direction, ``h (L*D, B, H)`` (LSTM: ``(h, c)``). The parity oracle of
    ``from_keras(weights, config)``; it shares no code with the conversion."""
    stack, _ = parse_config(config, list(weights))
    return _reference_forward(stack, np.asarray(x, np.float64))


# ---- reading the config --------------------------------------------------------------------
def read_keras_object(obj):
    if not (hasattr(obj, "get_config") and hasattr(obj, "get_weights")):
        raise TypeError(f"from_keras expects a Keras layer or (weights, config), got "
                        f"{type(obj).__name__}")
    weights = obj.get_weights()
    if not weights:
        raise ValueError(f"the Keras {type(obj).__name__} has no weights yet: build it "
                         "(call it on an input) before importing")
    return weights, {"class_name": type(obj).__name__, "config": obj.get_config()}


def _unwrap(config):
    """(class_name or None, config dict) from get_config()'s dict or a serialized object."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be the dict get_config() returns, got "
                        f"{type(config).__name__}")
    if "class_name" in config and isinstance(config.get("config"), dict):
        return config["class_name"], config["config"]
    return None, config


def _guess_class(cfg):
    """The class of a bare get_config() dict, from the keys only that class writes."""
    if "layers" in cfg:
        return "Sequential"
    if "layer" in cfg and "merge_mode" in cfg:
        return "Bidirectional"
    if "cell" in cfg:
        return "RNN"
    if "reset_after" in cfg:
        return "GRU"
    return "LSTM" if "unit_forget_bias" in cfg else "SimpleRNN"


def parse_config(config, weights):
    """[_Spec per Keras recurrent layer], (B, T) of a declared input shape or Nones."""
    class_name, cfg = _unwrap(config)
    class_name = class_name or _guess_class(cfg)
    weights = [_float_array(w, k) for k, w in enumerate(weights)]
    input_shape = (None, None)
    if class_name == "Sequential":
        stack, used, input_shape = _parse_sequential(cfg, weights)
    else:
        spec, used = _parse_layer(class_name, cfg, weights, 0)
        _refuse_go_backwards(spec)
        stack = [spec]
    if used != len(weights):
        raise ValueError(f"{len(weights)} weight arrays given, the config describes {used}")
    return stack, input_shape


def _float_array(w, k):
    a = np.asarray(w)
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"weight array {k} has dtype {a.dtype}, expected floating point")
    return a


def _parse_sequential(cfg, weights):
    stack, used, input_shape = [], 0, (None, None)
    for entry in cfg.get("layers", []):
        class_name, sub = _unwrap(entry)
        class_name = class_name or _guess_class(sub)
        if class_name == "InputLayer":
            shape = sub.get("batch_shape") or sub.get("batch_input_shape") or [None] * 3
            input_shape = (shape[0], shape[1]) if len(shape) == 3 else (None, None)
            continue
        if class_name not in ("SimpleRNN", "LSTM", "GRU", "Bidirectional"):
            raise ValueError(f"Sequential layer {sub.get('name')!r} is a {class_name}: "
                             "from_keras imports only stacks of SimpleRNN, LSTM, GRU or "
                             "Bidirectional layers")
        spec, n = _parse_layer(class_name, sub, weights, used)
        _refuse_go_backwards(spec)
        stack.append(spec)
        used += n
    if not stack:
        raise ValueError("the Sequential holds no recurrent layer")
    if input_shape == (None, None) and len(cfg.get("build_input_shape") or ()) == 3:
        input_shape = tuple(cfg["build_input_shape"][:2])
    first = stack[0]
    for k, spec in enumerate(stack[1:], 1):
        if spec.signature() != first.signature() or \
                len(spec.directions) != len(first.directions):
            raise ValueError(f"Sequential layer {k} is {spec.describe()} but layer 0 is "
                             f"{first.describe()}: a multi-layer fastrnn layer needs one cell "
                             "type, size, direction, activation, bias setting and dtype")
        want = first.units * len(first.directions)
        if spec.input_size != want:
            raise ValueError(f"Sequential layer {k} ({spec.name!r}) takes {spec.input_size} "
                             f"features, but the layer below it gives {want}")
    for spec in stack[:-1]:
        if not spec.return_sequences or spec.return_state:
            raise ValueError(f"Sequential layer {spec.name!r} feeds another recurrent layer: "
                             "it needs return_sequences=True and return_state=False")
    return stack, used, input_shape


def _parse_layer(class_name, cfg, weights, start):
    """A _Spec for one SimpleRNN/LSTM/GRU/Bidirectional from weights[start:]; (spec, used)."""
    if class_name == "Bidirectional":
        return _parse_bidirectional(cfg, weights, start)
    if class_name not in _GATES:
        hint = (": import the equivalent SimpleRNN/LSTM/GRU layer" if class_name == "RNN"
                else "")
        raise ValueError(f"unsupported Keras layer class {class_name!r}; from_keras supports "
                         f"SimpleRNN, LSTM, GRU, Bidirectional and Sequential{hint}")
    name = cfg.get("name", class_name)
    where = f"Keras {class_name} {name!r}"
    unknown = sorted(set(cfg) - _KEYS[class_name])
    if unknown:
        raise ValueError(f"{where}: config keys {unknown} are unknown to from_keras; "
                         "refusing rather than guessing what they change")
    for key in ("stateful", "time_major"):
        if cfg.get(key):
            raise ValueError(f"{where}: {key}=True is not supported (fastrnn takes the state "
                             "explicitly and its batch_first layers are batch-major)")
    units = cfg.get("units")
    if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units < 1:
        raise ValueError(f"{where}: config 'units' must be a positive int, got {units!r}")
    activation = _activation(where, "activation", cfg.get("activation", "tanh"),
                             ("tanh", "relu") if class_name == "SimpleRNN" else ("tanh",))
    if class_name != "SimpleRNN":
        _activation(where, "recurrent_activation", cfg.get("recurrent_activation", "sigmoid"),
                    ("sigmoid",))
    use_bias = _flag(where, cfg, "use_bias", True)
    reset_after = _flag(where, cfg, "reset_after", True) if class_name == "GRU" else False
    n = 3 if use_bias else 2
    arrays = weights[start:start + n]
    if len(arrays) < n:
        raise ValueError(f"{where}: expects {n} weight arrays (kernel, recurrent_kernel"
                         f"{', bias' if use_bias else ''}), only {len(arrays)} left")
    GH = _GATES[class_name] * units
    kernel, recurrent = arrays[0], arrays[1]
    bias = arrays[2] if use_bias else None
    if kernel.ndim != 2 or kernel.shape[1] != GH:
        raise ValueError(f"{where}: kernel has shape {kernel.shape}, expected (input_size, "
                         f"{GH}) for units={units}")
    if recurrent.shape != (units, GH):
        raise ValueError(f"{where}: recurrent_kernel has shape {recurrent.shape}, expected "
                         f"{(units, GH)}")
    want = (2, GH) if class_name == "GRU" and reset_after else (GH,)
    if use_bias and bias.shape != want:
        form = f" (reset_after={reset_after})" if class_name == "GRU" else ""
        raise ValueError(f"{where}: bias has shape {bias.shape}, expected {want}{form}")
    spec = _Spec(class_name, name, int(units), kernel.shape[0], activation, use_bias,
                 reset_after,
                 _layer_dtype(where, cfg.get("dtype"), kernel),
                 _flag(where, cfg, "go_backwards", False),
                 _flag(where, cfg, "return_sequences", False),
                 _flag(where, cfg, "return_state", False), [(kernel, recurrent, bias)])
    return spec, n


def _parse_bidirectional(cfg, weights, start):
    where = f"Keras Bidirectional {cfg.get('name', '')!r}"
    unknown = sorted(set(cfg) - _BIDIRECTIONAL_KEYS)
    if unknown:
        raise ValueError(f"{where}: config keys {unknown} are unknown to from_keras")
    merge_mode = cfg.get("merge_mode", "concat")
    if merge_mode != "concat":
        raise ValueError(f"{where}: merge_mode={merge_mode!r} is not supported; fastrnn "
                         "concatenates the two directions (merge_mode='concat')")
    if "layer" not in cfg:
        raise ValueError(f"{where}: config has no 'layer'")
    fw_class, fw_cfg = _unwrap(cfg["layer"])
    fw_class = fw_class or _guess_class(fw_cfg)
    bw_class, bw_cfg = fw_class, dict(fw_cfg, go_backwards=not fw_cfg.get("go_backwards"))
    if cfg.get("backward_layer") is not None:
        bw_class, bw_cfg = _unwrap(cfg["backward_layer"])
        bw_class = bw_class or _guess_class(bw_cfg)
    if "Bidirectional" in (fw_class, bw_class):
        raise ValueError(f"{where}: a Bidirectional inside a Bidirectional is not supported")
    fw, n_fw = _parse_layer(fw_class, fw_cfg, weights, start)
    bw, n_bw = _parse_layer(bw_class, bw_cfg, weights, start + n_fw)
    if fw.go_backwards or not bw.go_backwards:
        raise ValueError(f"{where}: expected a forward layer with go_backwards=False and a "
                         "backward layer with go_backwards=True")
    if (fw.signature(), fw.input_size, fw.return_sequences, fw.return_state) != \
            (bw.signature(), bw.input_size, bw.return_sequences, bw.return_state):
        raise ValueError(f"{where}: backward layer {bw.describe()} differs from forward layer "
                         f"{fw.describe()}; fastrnn's two directions share one configuration")
    fw.directions.append(bw.directions[0])
    return fw, n_fw + n_bw


def _refuse_go_backwards(spec):
    if spec.go_backwards:
        raise ValueError(f"Keras {spec.cell} {spec.name!r}: go_backwards=True outside "
                         "Bidirectional (a reverse-only layer) is not supported")


def _activation(where, key, value, allowed):
    if isinstance(value, str) and value in allowed:
        return value
    what = value.get("config", value) if isinstance(value, dict) else value
    extra = (" (Keras 2's piecewise-linear approximation of sigmoid)"
             if what == "hard_sigmoid" else "")
    raise ValueError(f"{where}: {key}={what!r}{extra} is not supported; fastrnn allows "
                     f"{' or '.join(map(repr, allowed))}")


def _flag(where, cfg, key, default):
    value = cfg.get(key, default)
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{where}: config {key!r} must be true or false, got {value!r}")
    return bool(value)


def _layer_dtype(where, policy, kernel):
    """float32/float64 from the dtype policy (a name, or DTypePolicy's serialized dict)."""
    if policy is None:
        name = kernel.dtype.name
    elif isinstance(policy, str):
        name = policy
    elif isinstance(policy, dict) and isinstance(policy.get("config"), dict):
        name = policy["config"].get("name")
    else:
        raise ValueError(f"{where}: unreadable dtype policy {policy!r}")
    if name not in ("float32", "float64"):
        raise ValueError(f"{where}: dtype policy {name!r} is not supported; fastrnn computes "
                         "in float32 or float64 (mixed precision is not available)")
    return np.dtype(name)


# ---- building the fastrnn layer ------------------------------------------------------------
def _keras_to_fastrnn_gates(cell, a):
    """Gate blocks along axis 0 from Keras's order to fastrnn's: GRU (z, r, h) -> (r, z, n);
    SimpleRNN and LSTM (i, f, c, o) already agree. Returns a new array."""
    if cell != "GRU":
        return a.copy()
    z, r, n = np.split(a, 3, axis=0)
    return np.concatenate([r, z, n], axis=0)


def _build(stack):
    first = stack[0]
    kw = {"SimpleRNN": {"nonlinearity": first.activation}, "LSTM": {},
          "GRU": {"reset_after": first.reset_after}}[first.cell]
    layer = _CLASSES[first.cell](first.input_size, first.units, num_layers=len(stack),
                                 bias=first.use_bias, batch_first=True,
                                 bidirectional=len(first.directions) == 2, dtype=first.dtype,
                                 **kw)
    state, GH = {}, _GATES[first.cell] * first.units
    for k, spec in enumerate(stack):
        for d, (kernel, recurrent, bias) in enumerate(spec.directions):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            state["weight_ih" + sfx] = _keras_to_fastrnn_gates(spec.cell, kernel.T)
            state["weight_hh" + sfx] = _keras_to_fastrnn_gates(spec.cell, recurrent.T)
            if spec.use_bias:
                two = bias.ndim == 2            # GRU reset_after: [input bias; recurrent bias]
                state["bias_ih" + sfx] = _keras_to_fastrnn_gates(spec.cell, bias[0] if two
                                                                 else bias)
                state["bias_hh" + sfx] = (_keras_to_fastrnn_gates(spec.cell, bias[1]) if two
                                          else np.zeros(GH, first.dtype))
    layer.load_state_dict(state)
    return layer


# ---- parity --------------------------------------------------------------------------------
def _parity(layer, stack, keras_layer, input_shape, tol):
    B, T = (n if isinstance(n, int) and n > 0 else default
            for n, default in zip(input_shape, (3, 7)))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, layer.input_size)).astype(layer.dtype)   # (B, T, I)
    out, state = layer(x)
    h_n, c_n = state if layer.cell == "lstm" else (state, None)
    last = stack[-1]
    what = f"from_keras({last.describe()}" + (f" x {len(stack)}" if len(stack) > 1 else "") + ")"
    if keras_layer is None:
        ref_out, ref_state = _reference_forward(stack, x.astype(np.float64))
        ours = (out, h_n) + ((c_n,) if c_n is not None else ())
        theirs = (ref_out,) + (ref_state if isinstance(ref_state, tuple) else (ref_state,))
        return check_parity(what + " against the numpy Keras reference", ours, theirs, tol)
    from keras import ops
    if tol is None and layer.dtype == np.float64:
        # Keras's float64 is not float64 throughout: 3.15's keras.ops.matmul returns float32
        # for float64 inputs (keras-team/keras#23223), which SimpleRNN and GRU with
        # reset_after=False use, so they are float32-accurate (measured 1e-7).
        tol = default_tolerance(np.float32)
    result = keras_layer(x, training=False)
    theirs = tuple(ops.convert_to_numpy(t) for t in
                   (result if isinstance(result, (list, tuple)) else [result]))
    return check_parity(what + " against Keras", _as_keras_returns(last, out, h_n, c_n),
                        theirs, tol)


def _as_keras_returns(spec, out, h_n, c_n):
    """fastrnn's outputs arranged as the last Keras layer returns them: the sequence or last
    output, then with return_state each direction's h (and c) in forward, backward order."""
    D = len(spec.directions)
    finals = [h_n[-D:]] if c_n is None else [h_n[-D:], c_n[-D:]]     # each (D, B, H)
    first = out if spec.return_sequences else np.concatenate(list(h_n[-D:]), axis=-1)
    states = [f[d] for d in range(D) for f in finals] if spec.return_state else []
    return (first, *states)


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _reference_forward(stack, x):
    """Keras's equations, Keras's layout and gate order; x (B, T, I) float64."""
    seq, hs, cs = x, [], []
    for spec in stack:
        outs = []
        for d, (kernel, recurrent, bias) in enumerate(spec.directions):
            xs = seq if d == 0 else seq[:, ::-1]      # go_backwards reads time reversed
            ys, h, c = _reference_direction(spec, kernel.astype(np.float64),
                                            recurrent.astype(np.float64),
                                            None if bias is None else bias.astype(np.float64),
                                            xs)
            outs.append(ys if d == 0 else ys[:, ::-1])  # ...and Bidirectional flips it back
            hs.append(h)
            cs.append(c)
        seq = np.concatenate(outs, axis=-1)              # (B, T, D*H)
    if stack[0].cell == "LSTM":
        return seq, (np.stack(hs), np.stack(cs))
    return seq, np.stack(hs)


def _reference_direction(spec, kernel, recurrent, bias, xs):
    """One Keras layer over xs (B, T, I): outputs (B, T, H), final h and c (B, H)."""
    B, T, _ = xs.shape
    H = spec.units
    h, c = np.zeros((B, H)), np.zeros((B, H))
    ys = np.zeros((B, T, H))
    two_biases = bias is not None and bias.ndim == 2
    b_in = 0.0 if bias is None else (bias[0] if two_biases else bias)   # input-side (G*H,)
    b_rec = bias[1] if two_biases else 0.0                              # recurrent-side
    for t in range(T):
        x_proj = xs[:, t] @ kernel + b_in                                # (B, G*H)
        if spec.cell == "SimpleRNN":
            a = x_proj + h @ recurrent
            h = np.tanh(a) if spec.activation == "tanh" else np.maximum(a, 0.0)
        elif spec.cell == "LSTM":
            zi, zf, zc, zo = np.split(x_proj + h @ recurrent, 4, axis=1)
            c = _sigmoid(zf) * c + _sigmoid(zi) * np.tanh(zc)            # cell state
            h = _sigmoid(zo) * np.tanh(c)
        else:
            x_z, x_r, x_h = np.split(x_proj, 3, axis=1)
            h_z, h_r, h_h = np.split(h @ recurrent + b_rec, 3, axis=1)
            z = _sigmoid(x_z + h_z)                                      # update gate
            r = _sigmoid(x_r + h_r)                                      # reset gate
            if spec.reset_after:
                hh = np.tanh(x_h + r * h_h)                              # candidate
            else:
                hh = np.tanh(x_h + (r * h) @ recurrent[:, 2 * H:])
            h = z * h + (1.0 - z) * hh
        ys[:, t] = h
    return ys, h, c
