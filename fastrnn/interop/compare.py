"""``compare(a, b, x)``: the largest absolute difference between two implementations of one
network on the same input, whichever frameworks they live in.

A side is one of:

* fastrnn: ``RNN``/``LSTM``/``GRU`` (``out`` and final states), ``RNNCell``/``LSTMCell``/
  ``GRUCell`` (the new state; its h is the output), ``SequenceModel`` (the forward outputs,
  logits for classification; no states);
* PyTorch: ``nn.RNN``/``nn.LSTM``/``nn.GRU``, the cells, a module from ``to_torch(model)``
  (as fastrnn's), or any other module, called as ``module(x)``, its (first) output compared;
* ONNX: a path to a ``.onnx`` file, an ``onnx.ModelProto`` or an
  ``onnxruntime.InferenceSession``, run on ONNX Runtime's CPU provider (a float64 graph given
  as a path or ModelProto on onnx's reference evaluator: ONNX Runtime's recurrent operators
  are float32 only): ``x`` goes to the first graph input, ``lengths`` and ``state`` to the
  inputs ``lengths``, ``h0``, ``c0`` (those of :func:`fastrnn.interop.onnx_export.to_onnx`);
  the first graph output is the output, outputs ``h_n`` [``c_n``] the final states;
* Keras (when installed): a layer or model, batch-first, called on ``x``; its first output
  compared: ``(B, T, D*H)`` with ``return_sequences=True``, or ``(B, D*H)`` otherwise, which
  is then compared with the other side's final hidden states of the last layer (both
  directions concatenated, as Keras does).

What is compared: the outputs, always; the final states ``h_n`` (and ``c_n``) too where both
sides give them (fastrnn and PyTorch layers and cells, ONNX graphs with those outputs).
``x`` is in side ``a``'s layout (``(T, B, I)``, or ``(B, T, I)`` when it is batch-first;
SequenceModels and Keras are batch-first; an ONNX graph takes the layout of the other side):
a side with the other layout gets ``x`` transposed and its output transposed back. Float inputs are cast to each side's dtype (the comparison itself is in
float64); integer inputs (token ids) go unchanged (int64 to PyTorch and ONNX Runtime).
``lengths (B,)`` and ``state`` (PyTorch's shapes) go to the sides that take them and are
refused for those that cannot (Keras; ONNX graphs without such inputs; lengths for cells
and generic torch modules).

Before anything runs, the two sides must be the same architecture as far as each can say:
cell kind (RNN, LSTM, GRU), variant (RNN nonlinearity; LSTM peepholes and coupled gates; GRU
reset_after), input and hidden sizes, layers, directions, and for sequence models the
vocabulary and output sizes. fastrnn objects, ``torch.nn`` recurrent modules and cells (also
scripted with ``torch.jit.script``), modules from ``to_torch(model)``, Keras recurrent
layers and ONNX graphs fastrnn's import reads say all of these; an ``InferenceSession``, a
generic torch module or a traced one say nothing, and only their output shapes are compared.
A difference raises ValueError naming it (``fastrnn.compare(GRU(...), LSTM(...), x)``
returned 0.907 before).
"""
import os

import numpy as np

from ..nn import layers as L
from .torch_io import type_name, run_fastrnn, run_torch

__all__ = ["compare"]

_ONNX_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32}     # ONNX Runtime's names


def compare(a, b, x, lengths=None, state=None):
    """Largest absolute difference of ``a``'s and ``b``'s outputs on ``x`` (and of their final
    states where both give them), as a float; see the module docstring for the sides, the
    layouts and what is compared. Raises ValueError when the two sides' outputs cannot be
    compared (different shapes), naming both, and when they are not the same architecture
    (see the module docstring), naming the difference.

    Example (PyTorch installed)::

        >>> import numpy as np, fastrnn
        >>> lstm = fastrnn.LSTM(3, 5, seed=0)
        >>> x = np.random.default_rng(0).standard_normal((7, 2, 3)).astype(np.float32)
        >>> fastrnn.compare(lstm, lstm.to_torch(), x) < 1e-5
        True
    """
    x = _validate_x(x)
    side_a, side_b = _side(a, "a"), _side(b, "b")
    _check_same_architecture(a, b)
    layout = side_a.batch_first if side_a.batch_first is not None else side_b.batch_first
    results = []
    for side in (side_a, side_b):
        flip = (x.ndim == 3 and layout is not None and side.batch_first is not None
                and side.batch_first != layout)
        xs = x.transpose(1, 0, 2) if flip else x
        out, states = side.run(xs, lengths, state)
        out = np.asarray(out)
        if flip and out.ndim == 3:
            out = out.transpose(1, 0, 2)
        results.append((out, states))
    (out_a, st_a), (out_b, st_b) = results
    out_a, out_b = _last_states_for_keras(side_a, side_b, out_a, out_b, st_a, st_b)
    worst = _max_diff("outputs", out_a, out_b)
    if st_a is not None and st_b is not None:
        # h_n, then c_n where both sides give it (a graph may leave c_n out)
        for name, s, t in zip(("h_n", "c_n"), st_a, st_b):
            worst = max(worst, _max_diff(f"final state {name}", s, t))
    return worst


# ---- what each side says about its architecture ----------------------------------------

def _check_same_architecture(a, b):
    """Refuse two sides whose known facts (cell, variant, sizes, layers, directions)
    differ; a fact only one side knows is not compared."""
    (what_a, facts_a), (what_b, facts_b) = _architecture(a), _architecture(b)
    keys = [k for k in _FACTS if k in facts_a and k in facts_b and facts_a[k] != facts_b[k]]
    if keys:
        differences = "; ".join(f"{k} {facts_a[k]!r} against {facts_b[k]!r}" for k in keys)
        raise ValueError(f"a ({what_a}) and b ({what_b}) are not the same architecture: "
                         f"{differences}")


# in the order messages name them; the variant facts are those of the cell
_FACTS = ("cell", "nonlinearity", "peephole", "coupled", "reset_after", "proj_size",
          "input_size", "hidden_size", "num_layers", "bidirectional", "vocab_size",
          "output_size")
_TORCH_CELLS = {"RNN": "rnn", "LSTM": "lstm", "GRU": "gru", "RNNCell": "rnn",
                "LSTMCell": "lstm", "GRUCell": "gru"}


def _variant(cell, nonlinearity="tanh", peephole="", coupled=False, reset_after=True):
    """The variant facts of a cell: only those that exist for it."""
    return {"rnn": {"nonlinearity": nonlinearity},
            "lstm": {"peephole": peephole, "coupled": coupled},
            "gru": {"reset_after": reset_after}}[cell]


def _architecture(obj):
    """(what ``obj`` is, in words; {fact: value} of what it says about itself)."""
    from ..nn.models import SequenceModel
    if isinstance(obj, SequenceModel):
        what, facts = _architecture(obj.rnn)
        facts["output_size"] = obj.head.weight.shape[0]
        if obj.embedding is not None:
            facts["vocab_size"] = obj.embedding.weight.shape[0]
            facts.pop("input_size", None)          # the embedding's width, not the data's
        return f"fastrnn SequenceModel({what})", facts
    if isinstance(obj, (L.RecurrentLayer, L.RecurrentCell)):
        layer = obj._layer if isinstance(obj, L.RecurrentCell) else obj
        facts = dict(cell=layer.cell, input_size=layer.input_size,
                     hidden_size=layer.hidden_size, num_layers=layer.num_layers,
                     bidirectional=layer.bidirectional, proj_size=0)
        facts.update(_variant(layer.cell, getattr(layer, "nonlinearity", "tanh"),
                              "".join(sorted(getattr(layer, "peephole", "") or "")),
                              bool(getattr(layer, "coupled", False)),
                              bool(getattr(layer, "reset_after", True))))
        return f"fastrnn {type(obj).__name__}", facts
    module = type(obj).__module__
    if module.startswith(("keras", "tf_keras")):
        return _keras_architecture(obj)
    if _is_torch_module(obj):
        return _torch_architecture(obj)
    if isinstance(obj, (str, os.PathLike)) or type(obj).__name__ == "ModelProto":
        return _onnx_architecture(obj)
    return type_name(obj), {}


def _torch_architecture(m):
    """A torch.nn recurrent module or cell (or one scripted with torch.jit.script, which
    keeps the attributes), or an exported SequenceModel; {} for anything else."""
    name = getattr(m, "original_name", None) or type(m).__name__
    if _is_exported_model(m):
        what, facts = _torch_architecture(m.rnn)
        facts["output_size"] = m.head.out_features
        if m.embedding is not None:
            facts["vocab_size"] = m.embedding.num_embeddings
            facts.pop("input_size", None)
        return f"torch {type(m).__name__}({what})", facts
    cell = _TORCH_CELLS.get(name)
    if cell is None or not hasattr(m, "hidden_size"):      # a traced module keeps none
        return f"torch {name}", {}
    facts = dict(cell=cell, input_size=m.input_size, hidden_size=m.hidden_size,
                 num_layers=getattr(m, "num_layers", 1),
                 bidirectional=bool(getattr(m, "bidirectional", False)),
                 proj_size=getattr(m, "proj_size", 0))
    facts.update(_variant(cell, getattr(m, "nonlinearity", "tanh")))
    return f"torch.nn.{name}", facts


def _onnx_architecture(obj):
    """The recurrent nodes of an ONNX graph fastrnn's import reads; {} for one it cannot
    (compare still runs it, on ONNX Runtime)."""
    from .onnx_import import OnnxImportError, peephole_gates, from_onnx
    try:
        m = from_onnx(obj, check=False)
    except (OnnxImportError, OSError):
        return "ONNX graph", {}
    first = m.layers[0]
    if any(s["op"] != first["op"] or s["D"] != first["D"] or s["H"] != first["H"]
           for s in m.layers):
        return "ONNX graph", {"num_layers": len(m.layers)}
    cell = first["op"].lower()
    peephole = None
    if cell == "lstm" and all(s["weights"] is not None for s in m.layers):
        peephole = "".join(sorted(peephole_gates(m, m.layers)))
    facts = dict(cell=cell, input_size=m._input_size(first), hidden_size=first["H"],
                 num_layers=len(m.layers), bidirectional=first["D"] == 2)
    facts.update(_variant(cell, first["nonlinearity"], peephole,
                          first["kind"] == "lstm_coupled", first["reset_after"]))
    embedding = first["x_tag"].get("embedding")
    if embedding is not None:                  # token ids in: the data has no input size
        facts.pop("input_size")
        if embedding in m._const:
            facts["vocab_size"] = m._const[embedding].shape[0]
    return f"ONNX graph of {len(m.layers)} {first['op']} node(s)", \
        {k: v for k, v in facts.items() if v is not None}


def _keras_architecture(layer):
    """A Keras SimpleRNN/LSTM/GRU, Bidirectional or Sequential of them; {} otherwise."""
    from .keras_io import parse_config, read_keras_object
    try:
        stack, _ = parse_config(*reversed(read_keras_object(layer)))
    except (TypeError, ValueError):
        return f"Keras {type(layer).__name__}", {}
    first = stack[0]
    cell = {"SimpleRNN": "rnn", "LSTM": "lstm", "GRU": "gru"}[first.cell]
    facts = dict(cell=cell, input_size=first.input_size, hidden_size=first.units,
                 num_layers=len(stack), bidirectional=len(first.directions) == 2, proj_size=0)
    facts.update(_variant(cell, first.activation, reset_after=first.reset_after))
    return f"Keras {type(layer).__name__}", facts


def _validate_x(x):
    if hasattr(x, "detach") and hasattr(x, "numpy"):            # a torch tensor
        x = x.detach().cpu().numpy()
    if isinstance(x, (list, tuple)):
        x = np.asarray(x)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy array, got {type_name(x)}")
    if x.dtype.kind not in "fiu":
        raise TypeError(f"x must hold floats (features) or integers (token ids), got {x.dtype}")
    if x.ndim not in (1, 2, 3) or x.size == 0:
        raise ValueError(f"x must be a non-empty (T, B, I) or (B, T, I) array, (B, I) for "
                         f"cells, or (B, T) token ids; got shape {x.shape}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValueError("x contains NaN or infinity")
    return x


def _max_diff(what, a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"{what}: a gives shape {a.shape}, b gives {b.shape}; they cannot be "
                         "compared (same network? same layout?)")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


class _Side:
    """One side: ``batch_first`` (True/False, or None when it has no say) and
    ``run(x, lengths, state) -> (out, states tuple or None)``."""

    def __init__(self, name, batch_first, run, keras=False):
        self.name, self.batch_first, self.run, self.keras = name, batch_first, run, keras


def _side(obj, name):
    from ..nn.models import SequenceModel
    if isinstance(obj, SequenceModel):
        return _Side(name, True, lambda x, lengths, state: run_fastrnn(
            obj, _cast(x, obj.dtype), _cast_state(state, obj.dtype), lengths))
    if isinstance(obj, (L.RecurrentLayer, L.RecurrentCell)):
        layer = obj._layer if isinstance(obj, L.RecurrentCell) else obj
        bf = None if isinstance(obj, L.RecurrentCell) else layer.batch_first
        return _Side(name, bf, lambda x, lengths, state: run_fastrnn(
            obj, _cast(x, layer.dtype), _cast_state(state, layer.dtype), lengths))
    module = type(obj).__module__
    # before torch: with Keras's torch backend, Keras layers are torch modules too
    if module.startswith(("keras", "tf_keras")):
        return _Side(name, True, lambda x, lengths, state: _run_keras(obj, x, lengths, state),
                     keras=True)
    if _is_torch_module(obj):
        return _Side(name, getattr(obj, "batch_first", True if _is_exported_model(obj) else None),
                     lambda x, lengths, state: run_torch(obj, x, state, lengths))
    if isinstance(obj, (str, os.PathLike)) or module.startswith("onnx"):
        return _Side(name, None, _OnnxSide(obj, name).run)
    raise TypeError(f"{name}: a fastrnn layer, cell or SequenceModel, a torch module, an ONNX "
                    f"model (path, ModelProto, InferenceSession) or a Keras layer; got "
                    f"{type_name(obj)}")


def _is_torch_module(obj):
    import sys
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _is_exported_model(obj):
    from . import torch_io
    return torch_io.SEQUENCE_CLASS is not None and isinstance(obj, torch_io.SEQUENCE_CLASS)


def _cast(x, dtype):
    return x.astype(dtype) if x.dtype.kind == "f" else x


def _cast_state(state, dtype):
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(np.asarray(s, dtype) for s in state)
    return np.asarray(state, dtype)


class _OnnxSide:
    """An ONNX graph on ONNX Runtime (CPU), or on onnx's reference evaluator for a float64
    graph given as a path or ModelProto (ONNX Runtime's recurrent operators are float32
    only). Inputs fed by name: the first gets x; ``lengths`` (B,) int64; ``h0``/``c0``
    the initial states. The first output is ``out``; outputs ``h_n`` [``c_n``] are the final
    states (the names fastrnn's exporter writes)."""

    def __init__(self, obj, name):
        self.name = name
        proto = self._proto(obj)
        ort_session = obj if proto is None else None
        if proto is not None:
            elem = proto.graph.input[0].type.tensor_type.elem_type if proto.graph.input else 0
            if elem == 11:                                      # DOUBLE
                self._reference(proto)
                return
            ort_session = self._ort(proto)
        self.run_graph = lambda feeds: ort_session.run(None, feeds)
        self.inputs = [(i.name, _ONNX_TYPES.get(i.type)) for i in ort_session.get_inputs()]
        self.outputs = [o.name for o in ort_session.get_outputs()]

    def _proto(self, obj):
        if isinstance(obj, (str, os.PathLike)):
            path = os.fspath(obj)
            if not path.endswith(".onnx"):
                raise ValueError(f"{self.name}: {path!r} is not a .onnx file")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{self.name}: no such file {path!r}")
            import onnx
            return onnx.load(path)
        if type(obj).__name__ == "ModelProto":
            return obj
        if type(obj).__name__ == "InferenceSession":
            return None
        raise TypeError(f"{self.name}: {type_name(obj)} is not an ONNX model")

    def _ort(self, proto):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("ONNX sides need onnxruntime: pip install 'fastrnn[onnx]'") \
                from None
        return ort.InferenceSession(proto.SerializeToString(),
                                    providers=["CPUExecutionProvider"])

    def _reference(self, proto):
        from .onnx_export import reference_evaluator
        session = reference_evaluator(proto)
        types = {1: np.float32, 11: np.float64, 7: np.int64, 6: np.int32}
        self.run_graph = lambda feeds: session.run(None, feeds)
        self.inputs = [(i.name, types.get(i.type.tensor_type.elem_type))
                       for i in proto.graph.input]
        self.outputs = [o.name for o in proto.graph.output]
        self.ignores_lengths = True

    def run(self, x, lengths, state):
        (first, dtype), others = self.inputs[0], dict(self.inputs[1:])
        if dtype is None or (np.dtype(dtype).kind == "f") != (x.dtype.kind == "f"):
            raise TypeError(f"{self.name}: the graph's input {first!r} takes {dtype}, x is "
                            f"{x.dtype}")
        feeds = {first: x.astype(dtype)}
        given = {}
        if lengths is not None:
            if getattr(self, "ignores_lengths", False):
                raise ValueError(f"{self.name}: a float64 graph runs on onnx's reference "
                                 "evaluator, which ignores sequence lengths")
            given["lengths"] = np.asarray(lengths, np.int64)
        if state is not None:
            pair = state if isinstance(state, tuple) else (state,)
            given.update(zip(("h0", "c0"), pair))
        for k, v in given.items():
            if k not in others:
                raise ValueError(f"{self.name}: the graph has no input {k!r} (its inputs: "
                                 f"{[n for n, _ in self.inputs]})")
            feeds[k] = np.asarray(v, others[k])
        unfed = [n for n, _ in self.inputs if n not in feeds]
        if unfed:
            raise ValueError(f"{self.name}: the graph's inputs {unfed} are not fed "
                             "(give lengths= / state=)")
        results = dict(zip(self.outputs, self.run_graph(feeds)))
        states = tuple(results[k] for k in ("h_n", "c_n") if k in results) or None
        return results[self.outputs[0]], states


def _run_keras(layer, x, lengths, state):
    import keras
    if lengths is not None or state is not None:
        raise ValueError("lengths and state cannot be given to a Keras side (use a Masking "
                         "layer or initial_state in Keras itself)")
    dtype = getattr(layer, "compute_dtype", None) or "float32"
    out = layer(_cast(x, np.dtype(dtype)))
    out = out[0] if isinstance(out, (list, tuple)) else out
    return keras.ops.convert_to_numpy(out), None


def _last_states_for_keras(side_a, side_b, out_a, out_b, st_a, st_b):
    """A Keras recurrent layer without return_sequences gives (B, D*H): the last layer's
    final hidden states, directions concatenated; take those from the other side."""
    for keras_first, (k_out, o_out, o_st) in ((True, (out_a, out_b, st_b)),
                                               (False, (out_b, out_a, st_a))):
        keras_side = side_a if keras_first else side_b
        if keras_side.keras and k_out.ndim == 2 and o_out.ndim == 3 and o_st is not None:
            h_n = o_st[0]                                          # (L*D, B, H)
            D = k_out.shape[-1] // h_n.shape[-1]
            if D not in (1, 2) or D * h_n.shape[-1] != k_out.shape[-1]:
                break
            last = np.concatenate(list(h_n[-D:]), axis=-1)         # (B, D*H)
            return (k_out, last) if keras_first else (last, k_out)
    return out_a, out_b
