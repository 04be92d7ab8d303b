"""Export fastrnn layers and sequence models to ONNX, checked against a runtime.

    proto = to_onnx(layer_or_model, "net.onnx")      # or layer.to_onnx("net.onnx")

The graph uses ONNX's own recurrent operators, one ``RNN``/``LSTM``/``GRU`` node per layer
(``direction`` forward or bidirectional), so any ONNX runtime runs it. Letters: T time,
B batch, I input, H hidden, D directions, L layers, E embedding, V vocabulary, C outputs::

    layer   x (T, B, I) [batch_first: (B, T, I) -Transpose(1, 0, 2)-> (T, B, I)]
            lengths (B,) int64 -Cast-> int32 sequence_lens                   (with_lengths)
            h0 (L*D, B, H) [c0] -Slice per layer-> (D, B, H)                 (with_state)
            per layer  Y (T, D, B, H), Y_h (D, B, H) [Y_c]
                       D=1: Squeeze(axes=1); D=2: Transpose(0, 2, 1, 3) + Reshape -> (T, B, D*H)
            out (T, B, D*H) [batch_first: Transpose -> (B, T, D*H)]
            h_n = Concat(every layer's Y_h) (L*D, B, H) [c_n], torch's layout
    model   ids (B, T) int64 -Gather(embedding (V, E))-> (B, T, E), or x (B, T, I);
            Transpose -> time-major, the stack as above, then the head (MatMul + Add):
            per-step tasks  out (B, T, D*H) -> logits (B, T, C)
            "last" tasks    last layer's Y_h (D, B, H) -Transpose(1, 0, 2) + Reshape->
                            (B, D*H) [forward | reverse], as SequenceModel._last -> (B, C)

Weights: fastrnn's gate blocks are reordered by :mod:`fastrnn.interop.onnx_layout`
(LSTM i,f,g,o -> i,o,f,c; GRU r,z,n -> z,r,h; B = [Wb | Rb]; P = [p_i, p_o, p_f], zeros
for gates without a peephole). A coupled LSTM is ``input_forget=1`` with ONNX's f block
written as the negated i block (and p_f = -p_i): ONNX Runtime ignores that block, while
runtimes that ignore ``input_forget`` (onnx's reference evaluator does) compute
sigmoid(-a_i) = 1 - i, so both get f = 1 - i. GRU reset_after is ``linear_before_reset=1``;
a relu RNN is ``activations=["Relu"]`` per direction.

Where the two sides differ: for a row of length 0 ONNX Runtime returns zeros in Y_h/Y_c
where fastrnn returns h0/c0 (the same when no initial state is given); the parity check
uses lengths >= 1. Unbatched (T, I) inputs are not part of the graph (add a batch axis).

Opset 14 by default: the lowest opset in which every operator used here has its current
definition (LSTM/GRU/RNN 14 added ``layout``; Reshape 14; Squeeze 13 takes axes as an
input; later versions only add element types), so the widest range of runtimes loads it.
``opset=`` takes 14 up to the installed onnx package's newest (ONNX Runtime 1.32 ran 14 to
28 in the tests).

The parity check (``check=True``) runs the exported graph on a random input (B=3, T=7,
lengths 7, 1, 4 and random initial states when those are graph inputs) and compares it with
fastrnn through :func:`check_parity`. float32 runs on ONNX Runtime; ONNX Runtime's CPU
recurrent operators are float32 only, so float64 graphs run on onnx's reference evaluator,
which ignores ``sequence_lens``: with lengths, each row then runs alone on its valid steps.
The largest absolute difference is attached to the returned model as the metadata entry
``fastrnn.parity_max_abs_diff`` (with ``fastrnn.parity_runtime``). The metadata entry
``fastrnn.config`` (JSON) records the layer's or model's configuration, so an importer can
restore what the operators cannot say (which peepholes exist, the task); a language model's
``fastrnn.vocabulary`` (JSON list of tokens) and ``fastrnn.text_level`` ("char" or "word")
come along, so ``fastrnn convert m.fastrnn m.onnx`` and back keeps them. The file is
written by :func:`fastrnn.io.atomic_write`, like every fastrnn writer (umask honoured).
"""
import json
import os

import numpy as np

from . import onnx_layout
from .parity import check_parity

__all__ = ["to_onnx", "reference_evaluator", "DEFAULT_OPSET", "MIN_OPSET"]

DEFAULT_OPSET = 14
MIN_OPSET = 14
_CHECK_LENGTHS = (7, 1, 4)     # parity input rows: full length T=7, shortest, partial


def to_onnx(obj, path=None, *, check=True, tol=None, opset=None, with_lengths=False,
            with_state=False):
    """Export a fastrnn ``RNN``/``LSTM``/``GRU`` layer or a ``SequenceModel`` to ONNX.

    Returns the ``onnx.ModelProto``; when ``path`` is given it is also written there, only
    after the checks pass, by :func:`fastrnn.io.atomic_write` as :func:`fastrnn.save`
    writes (a temporary file in the same folder, then a rename; a new file gets mode
    ``0o666 & ~umask``, a replaced one keeps its mode; a symlink's target is replaced, a
    folder, FIFO, device or socket refused with an OSError naming ``path``). A
    SequenceModel's ``vocabulary`` and ``text_level`` (a language model's tokens and how its
    text was cut) go into the metadata entries ``fastrnn.vocabulary`` (a JSON list) and
    ``fastrnn.text_level``, which :func:`fastrnn.from_onnx` restores; a vocabulary that is
    not vocab_size strings, or a level not in ``fastrnn.io.TEXT_LEVELS``, raises ValueError. ``with_lengths`` adds an int64 ``lengths (B,)`` input, ``with_state``
    the initial states ``h0`` (and ``c0``), (L*D, B, H). Graph inputs: ``x`` (or ``ids``),
    [``lengths``], [``h0``, ``c0``]; outputs: a layer's ``out``, ``h_n`` [, ``c_n``]; a
    model's ``logits`` (``predictions`` for regression tasks).

    ``check`` runs the parity check (see the module docstring) and raises
    :class:`ParityError` when the largest absolute difference exceeds ``tol`` (default
    :func:`default_tolerance` of the dtype); ``opset`` defaults to :data:`DEFAULT_OPSET`.

    Example (onnx and onnxruntime installed)::

        >>> import fastrnn
        >>> proto = fastrnn.LSTM(3, 5, seed=0).to_onnx("lstm.onnx", with_lengths=True)
        >>> [i.name for i in proto.graph.input], [o.name for o in proto.graph.output]
        (['x', 'lengths'], ['out', 'h_n', 'c_n'])
    """
    import onnx
    from onnx import helper

    layer, model = _split(obj)
    for name, v in (("check", check), ("with_lengths", with_lengths),
                    ("with_state", with_state)):
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be a bool, got {v!r}")
    number = isinstance(tol, (int, float, np.floating)) and not isinstance(tol, bool)
    if tol is not None and not (number and tol >= 0):
        raise ValueError(f"tol must be a non-negative number or None, got {tol!r}")
    opset = _opset(opset)
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")

    g = _GraphBuilder(layer.dtype)
    if model is None:
        _layer_graph(g, layer, with_lengths, with_state)
    else:
        _model_graph(g, model, with_lengths, with_state)
    graph = helper.make_graph(g.nodes, f"fastrnn_{type(obj).__name__}", g.inputs, g.outputs,
                              initializer=g.initializers)
    proto = helper.make_model_gen_version(graph, opset_imports=[helper.make_opsetid("", opset)],
                                          producer_name="fastrnn",
                                          producer_version=_fastrnn_version())
    proto.doc_string = f"fastrnn {obj!r}"
    _metadata(proto, {"fastrnn.config": json.dumps(_config(obj), default=str)})
    _metadata(proto, _text_metadata(model))
    onnx.checker.check_model(proto, full_check=True)
    if check:
        worst, runtime = _parity(obj, proto, with_lengths, with_state, tol)
        _metadata(proto, {"fastrnn.parity_max_abs_diff": repr(worst),
                          "fastrnn.parity_runtime": runtime})
    if path is not None:
        from ..io import atomic_write
        atomic_write(os.fspath(path), proto.SerializeToString(), what="ONNX file")
    return proto


# ---- arguments -------------------------------------------------------------------------

def _split(obj):
    """(layer, model or None) of what to_onnx was given."""
    from ..nn.layers import RecurrentLayer
    from ..nn.models import SequenceModel
    if isinstance(obj, SequenceModel):
        return obj.rnn, obj
    if isinstance(obj, RecurrentLayer):
        return obj, None
    raise TypeError("to_onnx exports a fastrnn RNN, LSTM or GRU layer or a SequenceModel, "
                    f"got {type(obj).__name__}")


def _opset(opset):
    import onnx
    newest = onnx.defs.onnx_opset_version()
    if opset is None:
        return DEFAULT_OPSET
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) \
            or not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset must be an int in [{MIN_OPSET}, {newest}] (the installed onnx "
                         f"package knows up to {newest}), got {opset!r}")
    return int(opset)


def _config(obj):
    """What fastrnn knows about the exported object, for the model's metadata."""
    layer, model = _split(obj)
    if model is not None:
        return dict(kind="SequenceModel", **model.config)
    cfg = dict(kind=type(layer).__name__, input_size=layer.input_size,
               hidden_size=layer.hidden_size, num_layers=layer.num_layers, bias=layer.bias,
               batch_first=layer.batch_first, bidirectional=layer.bidirectional,
               dtype=layer.dtype.name)
    for name in ("nonlinearity", "peephole", "coupled", "reset_after"):
        if name in vars(layer):
            cfg[name] = getattr(layer, name)
    return cfg


def _text_metadata(model):
    """The metadata entries of a language model's vocabulary and text level ({} for a layer
    or a model without them), refused unless the importer (and fastrnn.load) would take
    them: vocab_size strings, each of at most io.MAX_TOKEN_CHARS characters; a level of TEXT_LEVELS."""
    from .. import io
    vocabulary = None if model is None else getattr(model, "vocabulary", None)
    level = None if model is None else getattr(model, "text_level", None)
    entries = {}
    if vocabulary is not None:
        V = None if model.embedding is None else model.embedding.weight.shape[0]
        vocabulary = list(vocabulary)
        if not io.is_vocabulary(vocabulary, V):
            raise ValueError(f"the model's vocabulary has {len(vocabulary)} entries; it must be "
                             f"vocab_size {V} strings of at most {io.MAX_TOKEN_CHARS} "
                             "characters each")
        entries["fastrnn.vocabulary"] = json.dumps(vocabulary)
    if level is not None:
        if level not in io.TEXT_LEVELS:
            raise ValueError(f"the model's text_level is {level!r}, not one of "
                             f"{io.TEXT_LEVELS}")
        entries["fastrnn.text_level"] = level
    return entries


def _fastrnn_version():
    from .._spec import VERSION
    return VERSION


def _metadata(proto, entries):
    for key, value in entries.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value


# ---- graph -----------------------------------------------------------------------------

class _GraphBuilder:
    """Nodes, initializers, inputs and outputs of one graph; float tensors of ``dtype``."""

    def __init__(self, dtype):
        from onnx import helper
        self.dtype = np.dtype(dtype)
        self.elem = helper.np_dtype_to_tensor_dtype(self.dtype)
        self.nodes, self.initializers, self.inputs, self.outputs = [], [], [], []
        self._names = set()

    def const(self, name, array):
        """An initializer; a name already added is reused (shared index constants)."""
        from onnx import numpy_helper
        if name not in self._names:
            self._names.add(name)
            self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def ints(self, name, values):
        return self.const(name, np.asarray(values, np.int64))

    def node(self, op, inputs, outputs, **attrs):
        """Add a node; "" marks an omitted optional input or output (trailing ones dropped)."""
        from onnx import helper
        inputs, outputs = list(inputs), list(outputs)
        while inputs and not inputs[-1]:
            inputs.pop()
        while outputs and not outputs[-1]:
            outputs.pop()
        self.nodes.append(helper.make_node(op, inputs, outputs,
                                           name=f"{op.lower()}_{len(self.nodes)}", **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def input(self, name, shape, elem=None):
        from onnx import helper
        self.inputs.append(helper.make_tensor_value_info(name, elem or self.elem, shape))
        return name

    def output(self, name, shape):
        from onnx import helper
        self.outputs.append(helper.make_tensor_value_info(name, self.elem, shape))
        return name


def _direction_tensors(layer, kind, k):
    """ONNX (W, R, B, P) of layer k, directions stacked: (D, G*H, I), (D, G*H, H),
    (D, 2*G*H) or None, (D, 3*H) or None."""
    per_dir = []
    for reverse in ((False, True) if layer.bidirectional else (False,)):
        W, R, B, P = onnx_layout.to_onnx_slices(kind,
                                                *onnx_layout.direction_weights(layer, k, reverse))
        if kind == "lstm_coupled":
            W, R, B, P = _coupled_forget(W, R, B, P)
        per_dir.append((W, R, B, P))
    return tuple(None if parts[0] is None else np.stack(parts) for parts in zip(*per_dir))


def _coupled_forget(W, R, B, P):
    """ONNX order (i, o, f, c): write f's block as -i's (p_f = -p_i), so a runtime that
    ignores input_forget=1 computes f = sigmoid(-a_i) = 1 - i; negation is exact."""
    H = R.shape[1]
    for a in (W, R):                               # (4H, I) / (4H, H)
        a[2 * H:3 * H] = -a[:H]
    if B is not None:
        b = B.reshape(2, 4, H)                     # [Wb | Rb], each (i, o, f, c)
        b[:, 2] = -b[:, 0]
    if P is not None:
        p = P.reshape(3, H)                        # (p_i, p_o, p_f)
        p[2] = -p[0]
    return W, R, B, P


def _stack(g, layer, x, seq_lens, h0, c0, out_name, state_names):
    """The layer nodes over time-major ``x`` (T, B, I). ``out_name``: the name of the last
    layer's output (T, B, D*H), None when nothing reads it; ``state_names``: per layer,
    the names of its final states (Y_h, Y_c), "" where not needed."""
    kind = onnx_layout.kind_of(layer)
    D, H, L = layer.num_directions, layer.hidden_size, layer.num_layers
    attrs = dict(hidden_size=H, direction="bidirectional" if D == 2 else "forward")
    if kind == "lstm_coupled":
        attrs["input_forget"] = 1
    if kind == "gru":
        attrs["linear_before_reset"] = int(layer.reset_after)
    if kind == "rnn" and layer.nonlinearity == "relu":
        attrs["activations"] = ["Relu"] * D
    inp = x
    for k in range(L):
        W, R, B, P = _direction_tensors(layer, kind, k)
        last = k == L - 1
        Y = "" if last and out_name is None else f"l{k}.Y"        # (T, D, B, H)
        inputs = [inp, g.const(f"l{k}.W", W), g.const(f"l{k}.R", R),
                  "" if B is None else g.const(f"l{k}.B", B), seq_lens,
                  _state_slice(g, h0, k, D, L)]
        outputs = [Y, state_names[k][0]]
        if layer.cell == "lstm":
            inputs += [_state_slice(g, c0, k, D, L), "" if P is None else g.const(f"l{k}.P", P)]
            outputs.append(state_names[k][1])
        g.node(onnx_layout.ONNX_OP[kind], inputs, outputs, **attrs)
        if Y:
            inp = _merge_directions(g, Y, out_name if last else f"l{k}.out", D, H)


def _state_slice(g, state, k, D, L):
    """Layer k's (D, B, H) rows of a (L*D, B, H) initial state ("" when not given)."""
    if not state or L == 1:
        return state
    return g.node("Slice", [state, g.ints(f"l{k}.state_start", [k * D]),
                            g.ints(f"l{k}.state_end", [(k + 1) * D]), g.ints("axis0", [0])],
                  [f"{state}.l{k}"])


def _merge_directions(g, Y, name, D, H):
    """Y (T, D, B, H) -> (T, B, D*H), forward then reverse features of each step."""
    if D == 1:
        return g.node("Squeeze", [Y, g.ints("axis1", [1])], [name])
    Yt = g.node("Transpose", [Y], [Y + "_tbdh"], perm=[0, 2, 1, 3])     # (T, B, D, H)
    return g.node("Reshape", [Yt, g.ints("out_shape", [0, 0, D * H])],   # 0: keep the dim
                  [name])


def _graph_states(g, layer, with_state):
    """Initial-state graph inputs h0 [, c0] (L*D, B, H), or ("", "")."""
    if not with_state:
        return "", ""
    shape = [layer.num_layers * layer.num_directions, "batch", layer.hidden_size]
    h0 = g.input("h0", shape)
    return h0, g.input("c0", shape) if layer.cell == "lstm" else ""


def _graph_lengths(g, with_lengths):
    """The lengths (B,) int64 input, cast to ONNX's int32 sequence_lens; "" without."""
    from onnx import TensorProto
    if not with_lengths:
        return ""
    lengths = g.input("lengths", ["batch"], TensorProto.INT64)
    return g.node("Cast", [lengths], ["sequence_lens"], to=TensorProto.INT32)


def _layer_graph(g, layer, with_lengths, with_state):
    D, H, L = layer.num_directions, layer.hidden_size, layer.num_layers
    lstm = layer.cell == "lstm"
    io_dims = ["batch", "time"] if layer.batch_first else ["time", "batch"]
    x = g.input("x", io_dims + [layer.input_size])
    seq_lens = _graph_lengths(g, with_lengths)
    h0, c0 = _graph_states(g, layer, with_state)
    if layer.batch_first:
        x = g.node("Transpose", [x], ["x_tbi"], perm=[1, 0, 2])              # (T, B, I)
    # one layer writes h_n/c_n itself; more are concatenated along the first axis
    states = [("h_n", "c_n" if lstm else "")] if L == 1 else \
        [(f"l{k}.Y_h", f"l{k}.Y_c" if lstm else "") for k in range(L)]
    _stack(g, layer, x, seq_lens, h0, c0, "out_tbh" if layer.batch_first else "out", states)
    if layer.batch_first:
        g.node("Transpose", ["out_tbh"], ["out"], perm=[1, 0, 2])          # (B, T, D*H)
    g.output("out", io_dims + [D * H])
    for k, name in enumerate(["h_n", "c_n"] if lstm else ["h_n"]):
        if L > 1:
            g.node("Concat", [s[k] for s in states], [name], axis=0)        # (L*D, B, H)
        g.output(name, [L * D, "batch", H])


def _model_graph(g, model, with_lengths, with_state):
    from onnx import TensorProto
    rnn = model.rnn
    D, H, L = rnn.num_directions, rnn.hidden_size, rnn.num_layers
    if model.embedding is not None:
        ids = g.input("ids", ["batch", "time"], TensorProto.INT64)
        emb = g.const("embedding.weight", model.embedding.weight)             # (V, E)
        x = g.node("Gather", [emb, ids], ["embedded"], axis=0)                # (B, T, E)
    else:
        x = g.input("x", ["batch", "time", rnn.input_size])
    seq_lens = _graph_lengths(g, with_lengths)
    h0, c0 = _graph_states(g, rnn, with_state)
    x = g.node("Transpose", [x], ["x_tbi"], perm=[1, 0, 2])                   # (T, B, I)
    per_step = model.output == "per_step"
    # "last" tasks read only the last layer's final hidden state
    states = [("", "")] * (L - 1) + [("", "") if per_step else (f"l{L - 1}.Y_h", "")]
    _stack(g, rnn, x, seq_lens, h0, c0, "out_tbh" if per_step else None, states)
    if per_step:
        feats = g.node("Transpose", ["out_tbh"], ["features"], perm=[1, 0, 2])   # (B, T, D*H)
    else:
        Yb = g.node("Transpose", [states[-1][0]], ["last_bdh"], perm=[1, 0, 2])  # (B, D, H)
        feats = g.node("Reshape", [Yb, g.ints("features_shape", [0, D * H])],
                       ["features"])                                             # (B, D*H)
    # y = feats @ W.T + b, W (C, D*H) stored transposed (D*H, C)
    W_t = g.const("head.weight_t", model.head.weight.T)
    b = g.const("head.bias", model.head.bias)
    name = "predictions" if model.loss_name == "mse" else "logits"
    g.node("Add", [g.node("MatMul", [feats, W_t], ["head.matmul"]), b], [name])
    C = model.head.weight.shape[0]
    g.output(name, ["batch", "time", C] if per_step else ["batch", C])


# ---- parity ----------------------------------------------------------------------------

def _parity(obj, proto, with_lengths, with_state, tol):
    """Run fastrnn and the exported graph on one random input; (largest difference,
    the runtime's name)."""
    layer, model = _split(obj)
    feeds, axes, lengths = _random_feeds(layer, model, with_lengths, with_state)
    ours = _run_fastrnn(layer, model, feeds)
    if layer.dtype == np.float32:
        theirs, runtime = _run_onnxruntime(proto, feeds)
    else:
        ours, theirs, runtime = _run_reference_by_row(proto, feeds, axes, ours, lengths)
    return check_parity(f"ONNX export of {obj!r} ({runtime})", ours, theirs, tol), runtime


def _random_feeds(layer, model, with_lengths, with_state):
    """Graph inputs by name, each name's (batch axis, time axis or None) for inputs and
    outputs, and the lengths (None when not an input)."""
    rng = np.random.default_rng(0)
    T, B = max(_CHECK_LENGTHS), len(_CHECK_LENGTHS)
    batch_first = model is not None or layer.batch_first
    seq = (0, 1) if batch_first else (1, 0)
    feeds, axes = {}, {}
    if model is not None and model.embedding is not None:
        V = model.embedding.weight.shape[0]
        feeds["ids"] = rng.integers(0, V, (B, T), dtype=np.int64)
        axes["ids"] = (0, 1)
    else:
        shape = (B, T, layer.input_size) if batch_first else (T, B, layer.input_size)
        feeds["x"] = rng.standard_normal(shape).astype(layer.dtype)
        axes["x"] = seq
    lengths = np.array(_CHECK_LENGTHS, np.int64) if with_lengths else None
    if with_lengths:
        feeds["lengths"], axes["lengths"] = lengths, (0, None)
    state_names = ["h0", "c0"] if layer.cell == "lstm" else ["h0"]
    if with_state:
        LD = layer.num_layers * layer.num_directions
        for name in state_names:
            feeds[name] = rng.uniform(-0.5, 0.5, (LD, B, layer.hidden_size)).astype(layer.dtype)
            axes[name] = (1, None)
    if model is None:
        axes.update(out=seq, h_n=(1, None), c_n=(1, None))
    else:
        axes["logits"] = axes["predictions"] = (0, 1) if model.output == "per_step" else (0, None)
    return feeds, axes, lengths


def _run_fastrnn(layer, model, feeds):
    """fastrnn's outputs in the graph's output order."""
    x = feeds.get("ids", feeds.get("x"))
    lengths = feeds.get("lengths")
    state = None
    if "h0" in feeds:
        state = (feeds["h0"], feeds["c0"]) if layer.cell == "lstm" else feeds["h0"]
    if model is not None:
        return [model.forward(x, lengths, state)[0]]
    out, state_n = layer(x, state, lengths)
    return [out] + list(state_n if isinstance(state_n, tuple) else (state_n,))


def _run_onnxruntime(proto, feeds):
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("the parity check of a float32 export runs ONNX Runtime: install "
                          "onnxruntime, or pass check=False") from e
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1               # a small input; don't spin a thread pool
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds), f"onnxruntime {ort.__version__}"


def reference_evaluator(proto):
    """onnx's ReferenceEvaluator for ``proto``, its RNN taught the Relu activation the ONNX
    spec lists (onnx's reference RNN knows only Tanh and Affine)."""
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.ops.op_rnn import RNN_14

    class RNN(RNN_14):
        op_domain = ""

        def choose_act(self, name, alpha, beta):
            if name in ("Relu", "relu"):
                return lambda x: np.maximum(x, 0)
            return super().choose_act(name, alpha, beta)

    return ReferenceEvaluator(proto, new_ops=[RNN])


def _run_reference_by_row(proto, feeds, axes, ours, lengths):
    """The graph on onnx's reference evaluator. It ignores sequence_lens, so with lengths
    each row runs alone on its valid steps, compared with fastrnn's row on those steps.
    Returns (ours, theirs, the runtime's name), lists of arrays to compare pairwise."""
    import onnx
    session = reference_evaluator(proto)
    runtime = f"onnx.reference {onnx.__version__}"
    if lengths is None:
        return ours, session.run(None, feeds), runtime
    names = [o.name for o in proto.graph.output]
    mine, theirs = [], []
    for b, n in enumerate(lengths):
        def row(name, a):
            batch, time = axes[name]
            a = np.take(a, [b], axis=batch)
            return a if time is None else np.take(a, np.arange(n), axis=time)
        theirs += session.run(None, {k: row(k, v) for k, v in feeds.items()})
        mine += [row(k, v) for k, v in zip(names, ours)]
    return mine, theirs, runtime
