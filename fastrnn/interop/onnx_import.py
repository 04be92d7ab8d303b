"""Import ONNX graphs of ``RNN``, ``LSTM`` and ``GRU`` nodes and run them on fastrnn's kernels.

    model = from_onnx("net.onnx")            # path, bytes or onnx.ModelProto; checked
    model.parity_max_abs_diff                # largest |fastrnn - ONNX Runtime| on a random input
    Y, Y_h = model.run(None, {"X": x})       # the graph outputs, as InferenceSession.run
    [Y_h] = model.run(["Y_h"], {"X": x})     # the outputs named, in that order
    layer = model.to_fastrnn()               # fastrnn.LSTM(...) (or a SequenceModel), checked

``run(output_names, feeds)`` is ``onnxruntime.InferenceSession.run``'s call (``run(feeds)``
gives every output too); ``to_fastrnn()`` gives a fastrnn
``RNN``/``LSTM``/``GRU`` or ``SequenceModel`` when the graph maps onto one. Letters: T time
steps, B batch, I input size, H hidden size, D directions, L recurrent nodes.

Accepted graphs, the pattern PyTorch's and fastrnn's exporters emit; anything else is
refused with an :class:`OnnxImportError` naming the op, attribute or value::

    ids --Gather(E (V, I), ids)--+                        (optional embedding)
    x ---------------------------+--[Transpose 1,0,2]--> X of the first recurrent node
    node k: Y (T, D, B, H) --Transpose 0,2,1,3 + Reshape (T, B, D*H)--> X of node k+1
            (Squeeze axes=1 when D = 1; layout=1: Y (B, T, D, H) --Reshape / Squeeze 2-->)
    last node: Y as above, or Y_h --[Transpose 1,0,2] + Reshape (B, D*H) / Squeeze 0-->
            [Transpose 1,0,2] --> MatMul + Add, or Gemm --> [Softmax | Sigmoid]
    sequence_lens: a graph input, optionally through Cast; initial states: graph inputs,
    constants, or Slice(rows [k*D, (k+1)*D)) of one (L*D, B, H) input; Concat(axis=0) of
    Y_h/Y_c; Identity; Constant; weights as initializers or as graph inputs (fed at run time)

Recurrent nodes: default activations only (RNN: Tanh or Relu), no ``clip``, no
``activation_alpha``/``beta``; ``input_forget`` (coupled LSTM), ``linear_before_reset``
(0: GRU reset_after=False, 1: True), peepholes ``P``, every direction, ``layout`` 0 and 1,
float32 and float64. Weight mapping: :mod:`fastrnn.interop.onnx_layout`.

Semantics follow ONNX Runtime, and where they differ ONNX Runtime follows the spec:

* ``sequence_lens``: Y is zero past a row's length and the reverse direction reads each
  row's valid steps backwards (the spec; ONNX Runtime agrees with the reference evaluator
  run on each row truncated to its length). ``onnx.reference.ReferenceEvaluator`` ignores
  ``sequence_lens`` altogether.
* A row of length 0 gets Y_h = Y_c = 0 from ONNX Runtime, so here too; a fastrnn layer
  returns that row's initial state instead (``to_fastrnn()`` results differ there only).
* ``input_forget=1``: ONNX Runtime computes f = 1 - i and ignores the f weights, biases and
  p_f, as the spec's "couple the input and forget gates" says; the reference evaluator
  ignores the attribute (an uncoupled LSTM).
* ONNX Runtime's CPU kernels take only float32 and layout 0: the parity check runs a copy
  of the graph whose layout-1 nodes are wrapped in Transposes, and checks float64 graphs
  on the reference evaluator (with full-length rows; input_forget=1 only when the f block
  is -i, as fastrnn's exporter writes it, so that sigmoid(-a_i) = 1 - i there too).

Hostile files: the bytes are parsed by protobuf and then checked before anything is
allocated from them. Every tensor must hold the values its dims declare (no external data,
no sparse tensors; float32, float64, int32, int64); every attribute must have its spec's
type; every node its inputs and outputs, each name produced once, in graph order; every
string valid UTF-8; ``hidden_size`` must agree with the weights, a Slice of an initial state
must take one node's D rows within the rows the nodes use, and declared dims must agree with
each other. The parity check's random input takes T = 6 and B = 3 unless a graph input (or
a constant state, lengths or Reshape) fixes them; when the sizes it needs pass
``CHECK_MAX_VALUES`` values or ``CHECK_MAX_MACS`` multiply-adds (whatever the graph
declares: a fixed T or B of thousands with tiny weights is within them), the check is
refused with the figures and the hint ``check=False``, which loads the graph unchecked.
Everything wrong with the file raises :class:`OnnxImportError`, whose message starts with
the file's name and names the node; a path that cannot be read raises OSError as ``open``
does.
"""
import math
import os

import numpy as np

from .. import functional as F, io
from .._spec import TASKS, lengths_array
from .onnx_layout import from_onnx_slices, onnx_gate_count
from .parity import check_parity

__all__ = ["from_onnx", "OnnxRecurrentModel", "OnnxImportError", "CHECK_MAX_VALUES",
           "CHECK_MAX_MACS"]


class OnnxImportError(ValueError):
    """An ONNX file fastrnn cannot import: bytes that are no ONNX model, a malformed graph,
    sizes the file declares but cannot hold, or a graph outside the supported pattern.

    The message starts with the file (its path, ``ONNX bytes (N bytes)`` or ``ONNX model
    'graph name'``), held in ``source``, and names the node at fault where there is one
    (``LSTM node 'rnn'``, or ``node #k`` when unnamed). A ValueError, so callers that
    catch bad input catch it:

        >>> import fastrnn
        >>> issubclass(fastrnn.OnnxImportError, ValueError)
        True
    """
    source = None


def _from_source(error, source):
    """``error`` with ``source`` at the head of its message (once)."""
    if error.source is None:
        error.source = source
        error.args = (f"{source}: {error}",) + error.args[1:]
    return error


# ONNX's enum values (fixed by the spec): AttributeProto.AttributeType, TensorProto.DataType
_FLOAT_ATTR, _INT_ATTR, _STRING_ATTR, _TENSOR_ATTR = 1, 2, 3, 4
_FLOATS_ATTR, _INTS_ATTR, _STRINGS_ATTR = 6, 7, 8
_ATTR_TYPE_NAMES = {1: "a float", 2: "an int", 3: "a string", 4: "a tensor", 5: "a graph",
                    6: "floats", 7: "ints", 8: "strings", 9: "tensors", 10: "graphs",
                    11: "a sparse tensor", 12: "sparse tensors", 13: "a type", 14: "types"}
# the element types read: TensorProto.DataType -> (dtype, the typed field of its values)
_TENSOR_TYPES = {1: (np.float32, "float_data"), 11: (np.float64, "double_data"),
                 6: (np.int32, "int32_data"), 7: (np.int64, "int64_data")}
_ONNX_EXTERNAL = 1                # TensorProto.DataLocation.EXTERNAL

_RECURRENT_ATTRS = {"activation_alpha": _FLOATS_ATTR, "activation_beta": _FLOATS_ATTR,
                    "activations": _STRINGS_ATTR, "clip": _FLOAT_ATTR,
                    "direction": _STRING_ATTR, "hidden_size": _INT_ATTR, "layout": _INT_ATTR}
_EXTRA_ATTRS = {"RNN": {}, "LSTM": {"input_forget": _INT_ATTR},
                "GRU": {"linear_before_reset": _INT_ATTR}}
_DEFAULT_ACTS = {"RNN": ("tanh",), "LSTM": ("sigmoid", "tanh", "tanh"), "GRU": ("sigmoid", "tanh")}
# op: (inputs required, most inputs or None for any, outputs required, most outputs); a
# required input or output must be named, optional ones may be "" (absent)
_ARITY = {"Constant": (0, 0, 1, 1), "Identity": (1, 1, 1, 1), "Cast": (1, 1, 1, 1),
          "Transpose": (1, 1, 1, 1), "Reshape": (2, 2, 1, 1), "Squeeze": (1, 2, 1, 1),
          "Slice": (3, 5, 1, 1), "Gather": (2, 2, 1, 1), "Concat": (1, None, 1, 1),
          "MatMul": (2, 2, 1, 1), "Add": (2, 2, 1, 1), "Gemm": (2, 3, 1, 1),
          "Softmax": (1, 1, 1, 1), "Sigmoid": (1, 1, 1, 1),
          "RNN": (3, 6, 0, 2), "GRU": (3, 6, 0, 2), "LSTM": (3, 8, 0, 3)}
_SIZES = dict(T=6, B=3)           # sizes of the parity check's random input, unless fixed
# What the parity check may cost, whatever the graph declares: values held by its random
# inputs, outputs and gate buffers (16 MiB of float32), and the recurrent nodes' and output
# layer's multiply-adds (about a second a side on one core). A fixed T of 5000 with small
# weights is far inside; T = B = 5000 (75 M input values from a 300-byte file) is not.
CHECK_MAX_VALUES = 1 << 22
CHECK_MAX_MACS = 1 << 31
_MAX_SHOWN = 60                   # characters of a name a message shows


def from_onnx(path_or_model, *, check=True, tol=None):
    """Load an ONNX model (path, bytes or ``onnx.ModelProto``) as an :class:`OnnxRecurrentModel`.

    With ``check`` (default) the graph runs on a random input here and in ONNX Runtime (the
    reference evaluator when ONNX Runtime is missing or the graph is float64), raising
    :class:`ParityError` above ``tol`` (default: ``default_tolerance`` of the dtype); the
    largest absolute difference is ``model.parity_max_abs_diff`` (None without a check).
    The input is small (T=6, B=3) unless the graph fixes T or B; a check that would pass
    :data:`CHECK_MAX_VALUES` or :data:`CHECK_MAX_MACS` is refused (``check=False`` skips it).

    Raises :class:`OnnxImportError` (a ValueError) for anything wrong with the file, naming
    it and the node; OSError when a path cannot be read; TypeError for another argument.
    Only a regular file is opened (a FIFO or device is refused before opening), and
    external-data tensors are refused, so nothing but the given file is read.

    Example (onnx and onnxruntime installed)::

        >>> import numpy as np, fastrnn
        >>> _ = fastrnn.GRU(3, 5, seed=0).to_onnx("gru.onnx")
        >>> graph = fastrnn.from_onnx("gru.onnx")
        >>> out, h_n = graph.run(None, {"x": np.zeros((7, 2, 3), np.float32)})
        >>> out.shape, h_n.shape
        ((7, 2, 5), (1, 2, 5))
        >>> graph.to_fastrnn()
        GRU(3, 5)
    """
    model, source = _read_model(path_or_model)
    # no onnx.checker here: it demands output shapes that ONNX Runtime (and this import)
    # do without; the parse refuses what it cannot follow, by name
    imported = OnnxRecurrentModel(model, source=source)
    if check:
        imported.parity_max_abs_diff = imported._check_run(tol)
    return imported


def _read_model(source):
    """(onnx.ModelProto, the name messages give the file) of from_onnx's argument."""
    import onnx
    if isinstance(source, onnx.ModelProto):
        return source, f"ONNX model {_shown(source.graph.name)}"
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        where = f"ONNX bytes ({len(data)} bytes)"
    elif isinstance(source, (str, os.PathLike)):
        where = os.fsdecode(source)
        data = _read_regular_file(where)
    else:
        raise TypeError("from_onnx takes a path, bytes or an onnx.ModelProto, got "
                        f"{type(source).__name__}")
    if not data:
        raise _from_source(OnnxImportError("empty, not an ONNX model"), where)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except MemoryError:
        raise
    except Exception as e:        # protobuf's DecodeError (its class differs by backend)
        raise _from_source(OnnxImportError(
            f"not an ONNX model: protobuf cannot decode it ({type(e).__name__}: {e})"),
            where) from None
    if not model.HasField("graph"):
        raise _from_source(OnnxImportError("not an ONNX model: it holds no graph"), where)
    return model, where


def _read_regular_file(path):
    """The bytes of ``path``, refused unless it is a regular file (fastrnn.io.read_regular:
    a FIFO with no writer would block forever)."""
    try:
        return io.read_regular(path, "ONNX model")
    except io.NotARegularFileError:
        raise _from_source(OnnxImportError(
            "not a regular file (a folder, FIFO, device or socket); ONNX models are read "
            "from regular files only"), path) from None


def _shown(name):
    """A name from the file as a message shows it: quoted, at most _MAX_SHOWN characters,
    bytes (protobuf's answer for text that is not UTF-8) as their repr."""
    if isinstance(name, str) and len(name) > _MAX_SHOWN:
        return repr(name[:_MAX_SHOWN]) + "..."
    return repr(name)


def _check_text(model):
    """Refuse strings that are not UTF-8 where the import reads them (protobuf hands such a
    string field back as bytes)."""
    def text(value, where):
        if not isinstance(value, str):
            raise OnnxImportError(f"{where} is not valid UTF-8 text: {value[:_MAX_SHOWN]!r}")
    for p in model.metadata_props:
        text(p.key, "a metadata key")
        text(p.value, f"metadata {_shown(p.key)}")
    for o in model.opset_import:
        text(o.domain, "an opset domain")
    g = model.graph
    for what, items in (("graph input", g.input), ("graph output", g.output),
                        ("initializer", g.initializer)):
        for k, item in enumerate(items):
            text(item.name, f"the name of {what} #{k}")
    for k, node in enumerate(g.node):
        for what, value in (("name", node.name), ("op_type", node.op_type),
                            ("domain", node.domain)):
            text(value, f"node #{k}: its {what}")
        for name in list(node.input) + list(node.output):
            text(name, f"node #{k}: an input or output name")
        for a in node.attribute:
            text(a.name, f"node #{k}: an attribute name")


def _tensor_array(t, what):
    """A TensorProto's values as a numpy array, refused unless the tensor holds exactly the
    values its dims declare (counted before anything is allocated), in a type read here,
    all finite (the weights of every pattern accepted here)."""
    if t.data_location == _ONNX_EXTERNAL or len(t.external_data):
        raise OnnxImportError(f"{what} keeps its values in an external file, which fastrnn's "
                              "import does not read")
    if t.HasField("segment"):
        raise OnnxImportError(f"{what} is a segment of a tensor, which is not supported")
    if t.data_type not in _TENSOR_TYPES:
        raise OnnxImportError(f"{what} has data type {type_name(t.data_type)}; the import reads "
                              "float32, float64, int32 and int64 tensors")
    dtype, field = _TENSOR_TYPES[t.data_type]
    dims = [int(d) for d in t.dims]
    if any(d < 0 for d in dims):
        raise OnnxImportError(f"{what} declares negative dims {dims}")
    count = math.prod(dims)                      # Python ints: no overflow
    itemsize = np.dtype(dtype).itemsize
    if t.HasField("raw_data"):
        if len(t.raw_data) != count * itemsize:
            raise OnnxImportError(f"{what} declares shape {dims} ({count} {np.dtype(dtype).name} "
                                  f"values) but holds {len(t.raw_data)} bytes")
        values = np.frombuffer(t.raw_data, np.dtype(dtype).newbyteorder("<")).astype(dtype)
    else:
        stored = getattr(t, field)
        if len(stored) != count:
            raise OnnxImportError(f"{what} declares shape {dims} ({count} values) but holds "
                                  f"{len(stored)}")
        values = np.array(stored, dtype)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise OnnxImportError(f"{what} holds NaN or infinity")
    return values.reshape(dims)


def type_name(elem_type):
    """An ONNX element type in words: the numpy name where there is one (float16), else the
    ONNX name (BFLOAT16), else the number."""
    try:
        from onnx import helper
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:            # noqa: BLE001 - no numpy equivalent, or not a type at all
        from onnx import TensorProto
        try:
            return TensorProto.DataType.Name(elem_type).lower()
        except ValueError:
            return f"#{elem_type}"


def _declared_type(value_info):
    """(dtype, dims with None where symbolic or unknown; None without a shape) of a graph
    input, refused unless a float32, float64, int32 or int64 tensor with dims >= 1."""
    what = f"graph input {_shown(value_info.name)}"
    if not value_info.type.HasField("tensor_type"):
        raise OnnxImportError(f"{what} is not a tensor")
    t = value_info.type.tensor_type
    if t.elem_type not in _TENSOR_TYPES:
        raise OnnxImportError(f"{what} has element type {type_name(t.elem_type)}; the import "
                              "takes float32, float64, int32 and int64 inputs")
    if not t.HasField("shape"):
        return np.dtype(_TENSOR_TYPES[t.elem_type][0]), None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    if any(d is not None and d < 1 for d in dims):
        raise OnnxImportError(f"{what} declares dims {dims}: each must be at least 1 or "
                              "symbolic")
    return np.dtype(_TENSOR_TYPES[t.elem_type][0]), dims


def _attr_value(a, kind, what):
    """The value of attribute ``a`` of ONNX type ``kind`` (its type already checked)."""
    def text(b):
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            raise OnnxImportError(f"{what} is not valid UTF-8 text: {b[:_MAX_SHOWN]!r}") from None
    if kind == _INT_ATTR:
        return a.i
    if kind == _FLOAT_ATTR:
        return a.f
    if kind == _STRING_ATTR:
        return text(a.s)
    if kind == _INTS_ATTR:
        return list(a.ints)
    if kind == _FLOATS_ATTR:
        return list(a.floats)
    if kind == _STRINGS_ATTR:
        return [text(b) for b in a.strings]
    return _tensor_array(a.t, what)


def _label(node, index):
    """How messages name a node: ``LSTM node 'rnn'``, or ``LSTM node #3`` when unnamed."""
    return f"{node.op_type} node {_shown(node.name)}" if node.name else \
        f"{node.op_type} node #{index}"


def _describe(tag):
    kind = tag["kind"]
    where = "" if tag.get("layer") is None else f" of recurrent node {tag['layer']}"
    return {"input": "a graph input", "const": "a constant", "weight": "a weight input",
            "seq": "a sequence", "y": "a Y output", "yt": "a transposed Y",
            "state": "a Y_h/Y_c output", "state_bd": "a transposed state",
            "state_slice": "a slice of an initial state",
            "last": "a last-state feature", "states": "concatenated states",
            "lengths": "sequence lengths", "ids": "token ids", "head": "an output layer",
            "prob": "output probabilities"}.get(kind, kind) + where


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _reverse_steps(a, lengths):
    """a (T, B, ...) with each row's first lengths[b] steps in reverse order (padding steps
    stay where they are); its own inverse."""
    if lengths is None:
        return np.ascontiguousarray(a[::-1])
    T, B = a.shape[:2]
    t = np.arange(T)[:, None]
    idx = np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)         # (T, B)
    return np.take_along_axis(a, idx.reshape(T, B, *([1] * (a.ndim - 2))), axis=0)


class OnnxRecurrentModel:
    """An ONNX graph of recurrent nodes, run with fastrnn's kernels (see the module docstring).

    ``input_names``/``output_names`` as in the graph (initializers are not inputs);
    ``run(feeds)`` -> list of outputs; ``to_fastrnn()`` -> a fastrnn layer or SequenceModel;
    ``layers``: one dict per recurrent node, in graph order (op, kind, direction, layout...)."""

    def __init__(self, model, *, source=None):
        self.source = source or f"ONNX model {_shown(model.graph.name)}"
        self._where = "the graph"            # what is being read, for unexpected errors
        try:
            self._parse(model)
        except OnnxImportError as e:
            raise _from_source(e, self.source)
        except (MemoryError, RecursionError):
            raise
        except Exception as e:               # a check missed: still the one error class
            raise _from_source(OnnxImportError(
                f"{self._where}: malformed ({type(e).__name__}: {e})"), self.source) from e
        self.dtype = np.dtype(self.layers[0]["dtype"])
        self.parity_max_abs_diff = self.parity_oracle = None
        self._oracle_cache = None

    def _parse(self, model):
        self._model = model
        g = model.graph
        _check_text(model)
        if len(g.sparse_initializer):
            raise OnnxImportError("sparse initializers are not supported")
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self._const = {}
        for t in g.initializer:
            what = f"initializer {_shown(t.name)}"
            if not t.name or t.name in self._const:
                raise OnnxImportError(f"{what}: each initializer needs a name of its own")
            self._const[t.name] = _tensor_array(t, what)
        self.input_names = [i.name for i in g.input if i.name not in self._const]
        self.output_names = [o.name for o in g.output]
        for names, what in ((self.input_names, "graph input"), (self.output_names,
                                                                "graph output")):
            seen = set()
            for name in names:
                if not name or name in seen:
                    raise OnnxImportError(f"{what} {_shown(name)}: each {what} needs a name of "
                                          "its own")
                seen.add(name)
        self.metadata = {p.key: p.value for p in model.metadata_props}
        self._declared = {}          # graph input -> (dtype, dims with None where unknown)
        for i in g.input:
            if i.name not in self._const:
                self._declared[i.name] = _declared_type(i)
        self._tags = {n: {"kind": "input"} for n in self.input_names}
        self._tags.update({n: {"kind": "const"} for n in self._const})
        self._roles, self._input_order, self._steps, self.layers = {}, {}, [], []
        self._fixed = []             # (axis "T" or "B", size, what fixes it)
        for index, node in enumerate(g.node):
            label = self._where = _label(node, index)
            if node.domain not in ("", "ai.onnx"):
                raise OnnxImportError(f"{label}: domain {_shown(node.domain)} is not supported")
            handler = getattr(self, "_op_" + node.op_type, None)
            if node.op_type in ("RNN", "LSTM", "GRU"):
                handler = self._op_recurrent
            if handler is None or node.op_type not in _ARITY:
                raise OnnxImportError(f"{label}: op {_shown(node.op_type)} is not supported by "
                                      "fastrnn's ONNX import")
            self._check_arity(node, label)
            for name in node.input:
                if name and name not in self._tags:
                    raise OnnxImportError(f"{label} reads {_shown(name)}, which no earlier node "
                                          "or graph input produces (nodes must come in graph "
                                          "order, without cycles)")
            handler(node, label)
        self._where = "the graph"
        if not self.layers:
            raise OnnxImportError("the graph has no RNN, LSTM or GRU node")
        for name in self.output_names:
            if name not in self._tags:
                raise OnnxImportError(f"graph output {_shown(name)} is produced by no node")
        self._shapes = self._expected_shapes()
        self.vocabulary, self.text_level = _text_metadata(self)

    # ---- parsing helpers ---------------------------------------------------------------
    def _check_arity(self, node, label):
        """Refuse a node whose inputs or outputs do not fit its op, or whose outputs reuse a
        name (ONNX: every name is produced once)."""
        least, most, least_out, most_out = _ARITY[node.op_type]
        if node.op_type == "Concat":       # every input is required, at least one
            least = max(1, len(node.input))
        n_in, n_out = len(node.input), len(node.output)
        if n_in < least or most is not None and n_in > most or \
                not all(node.input[:least]) or n_out < least_out or n_out > most_out or \
                not all(node.output[:least_out]):
            ins = f"{least}" if most == least else f"{least} to {most if most else 'any'}"
            raise OnnxImportError(f"{label}: has inputs {list(node.input)[:9]} and outputs "
                                  f"{list(node.output)[:4]}; {node.op_type} takes {ins} inputs "
                                  f"(the first {least} named) and up to {most_out} outputs")
        outputs = [o for o in node.output if o]
        for name in outputs:
            if name in self._tags or outputs.count(name) > 1:
                raise OnnxImportError(f"{label}: output {_shown(name)} is already produced by a "
                                      "graph input, an initializer or another output")

    def _attrs(self, node, label, allowed):
        """The node's attributes as Python values; ``allowed``: name -> ONNX attribute type.
        Unknown names, repeated names and values of another type are refused."""
        out = {}
        for a in node.attribute:
            if a.name not in allowed:
                raise OnnxImportError(f"{label}: attribute {_shown(a.name)} is not supported")
            if a.name in out:
                raise OnnxImportError(f"{label}: attribute {a.name!r} is given twice")
            want = allowed[a.name]
            if a.type != want or a.ref_attr_name:
                got = "a function attribute" if a.ref_attr_name else \
                    _ATTR_TYPE_NAMES.get(a.type, f"of type {a.type}")
                raise OnnxImportError(f"{label}: attribute {a.name!r} must be "
                                      f"{_ATTR_TYPE_NAMES[want]}, got {got}")
            out[a.name] = _attr_value(a, want, f"{label}: attribute {a.name!r}")
        return out

    def _claim(self, name, role, label):
        """Give graph input ``name`` its role (x, ids, lengths, h0, c0, weight); one each."""
        previous = self._roles.setdefault(name, role)
        if previous != role:
            raise OnnxImportError(f"{label}: graph input {name!r} is used as {previous} and "
                                  f"as {role}")

    def _input_kind(self, name):
        dtype = self._declared[name][0]
        return "ids" if np.dtype(dtype).kind in "iu" else "seq"

    def _tensor(self, name, label, what, ndim):
        """A constant or a graph input used as weights (values from the feeds)."""
        kind = self._tags[name]["kind"]
        if kind == "input":
            self._claim(name, "weight", label)
            dims = self._declared[name][1]
            if dims is not None and len(dims) != ndim:
                raise OnnxImportError(f"{label}: {what} {name!r} must be {ndim}-D, declared {dims}")
            return None
        if kind not in ("const", "weight"):
            raise OnnxImportError(f"{label}: {what} {name!r} is {_describe(self._tags[name])}, "
                                  "not a weight")
        value = self._const[name]
        if value.ndim != ndim:
            raise OnnxImportError(f"{label}: {what} {name!r} must be {ndim}-D, got {value.shape}")
        return value

    def _ints(self, node, label, attr_name, input_index, a):
        """An int list given as an attribute (old opsets) or a constant input (new ones)."""
        if attr_name in a:
            return [int(v) for v in a[attr_name]]
        if len(node.input) > input_index and node.input[input_index]:
            name = node.input[input_index]
            if name not in self._const:
                raise OnnxImportError(f"{label}: {attr_name} {name!r} must be a constant")
            value = self._const[name]
            if value.dtype.kind not in "iu" or value.ndim > 1:
                raise OnnxImportError(f"{label}: {attr_name} {name!r} must be a 1-D integer "
                                      f"constant, got {value.dtype} {list(value.shape)}")
            return [int(v) for v in value.reshape(-1)]
        raise OnnxImportError(f"{label}: {attr_name} must be given")

    def _order(self, tag, label, name, batch_major):
        """Check (and for graph inputs, fix) that sequence ``tag`` is batch-major or not."""
        src, flip = tag.get("src"), tag.get("flip", False)
        if src is None:
            if flip != batch_major:
                want = "(B, T, ...)" if batch_major else "(T, B, ...)"
                raise OnnxImportError(f"{label}: {name!r} must be {want} here")
            return
        own = batch_major != flip
        if self._input_order.setdefault(src, own) != own:
            raise OnnxImportError(f"graph input {src!r} is read both time- and batch-major")

    def _step(self, fn, label):
        """Queue ``fn(vals)`` for run(); its bad-input errors name the node."""
        def guarded(vals):
            try:
                fn(vals)
            except (ValueError, TypeError) as e:
                raise (TypeError if isinstance(e, TypeError) else ValueError)(
                    f"{label}: {e}") from e
        self._steps.append(guarded)

    def _value(self, vals, name):
        return self._const[name] if name in self._const else vals[name]

    # ---- ops ---------------------------------------------------------------------------
    def _op_Constant(self, node, label):
        a = self._attrs(node, label, {"value": _TENSOR_ATTR, "value_float": _FLOAT_ATTR,
                                      "value_floats": _FLOATS_ATTR, "value_int": _INT_ATTR,
                                      "value_ints": _INTS_ATTR})
        if len(a) != 1:
            raise OnnxImportError(f"{label}: expected one value attribute, got {sorted(a)}")
        v = next(iter(a.values()))
        if not isinstance(v, np.ndarray):   # value_float(s) float32, value_int(s) int64 (spec)
            v = np.array(v, np.float32 if "float" in next(iter(a)) else np.int64)
        self._const[node.output[0]] = v
        self._tags[node.output[0]] = {"kind": "const"}

    def _op_Identity(self, node, label):
        self._attrs(node, label, {})
        src, dst = node.input[0], node.output[0]
        if self._tags[src]["kind"] == "input":
            raise OnnxImportError(f"{label}: an Identity of a graph input is not supported")
        self._tags[dst] = dict(self._tags[src])
        if src in self._const:
            self._const[dst] = self._const[src]
            return
        self._step(lambda vals: vals.__setitem__(dst, vals[src]), label)

    def _op_Cast(self, node, label):
        from onnx import TensorProto
        a = self._attrs(node, label, {"to": _INT_ATTR, "saturate": _INT_ATTR})
        src, dst = node.input[0], node.output[0]
        tag = self._tags[src]
        if a.get("to") not in (TensorProto.INT32, TensorProto.INT64) or \
                tag["kind"] not in ("input", "lengths") or \
                (tag["kind"] == "input" and self._input_kind(src) != "ids"):
            raise OnnxImportError(f"{label}: only a Cast of integer sequence lengths to "
                                  "int32/int64 is supported")
        root = src if tag["kind"] == "input" else tag["src"]
        if tag["kind"] == "input":
            self._claim(src, "lengths", label)
        self._tags[dst] = {"kind": "lengths", "src": root}
        to = np.int32 if a["to"] == TensorProto.INT32 else np.int64
        self._step(lambda vals: vals.__setitem__(dst, vals[src].astype(to)), label)

    def _op_Transpose(self, node, label):
        perm = self._attrs(node, label, {"perm": _INTS_ATTR}).get("perm", [])
        src, dst = node.input[0], node.output[0]
        tag = dict(self._tags[src])
        kind = tag["kind"]
        if kind == "input":
            kind = self._input_kind(src)
            self._claim(src, "x" if kind == "seq" else "ids", label)
            tag = {"kind": kind, "src": src, "flip": False}
        time_and_batch = [1, 0] if kind == "ids" else [1, 0, 2]
        if kind in ("seq", "ids", "head", "prob") and tag.get("base") != "last" \
                and perm == time_and_batch:
            tag["flip"] = not tag.get("flip", False)
        elif kind == "y" and tag["layout"] == 0 and perm == [0, 2, 1, 3]:
            tag["kind"] = "yt"
        elif kind == "state" and tag["layout"] == 0 and perm == [1, 0, 2]:
            tag["kind"] = "state_bd"
        else:
            raise OnnxImportError(f"{label}: Transpose(perm={perm}) of {_describe(tag)} is not "
                                  "part of a supported pattern")
        self._tags[dst] = tag
        self._step(lambda vals: vals.__setitem__(dst, np.transpose(vals[src], perm)), label)

    def _op_Reshape(self, node, label):
        if self._attrs(node, label, {"allowzero": _INT_ATTR}).get("allowzero", 0):
            raise OnnxImportError(f"{label}: allowzero=1 is not supported")
        src, dst = node.input[0], node.output[0]
        tag = self._tags[src]
        shape = self._ints(node, label, "shape", 1, {})
        merge_steps = tag["kind"] == "yt" or tag["kind"] == "y" and tag["layout"] == 1
        merge_state = tag["kind"] == "state_bd" or tag["kind"] == "state" and tag["layout"] == 1
        spec = self.layers[tag["layer"]] if "layer" in tag else None
        DH = None if spec is None or spec["H"] is None else spec["D"] * spec["H"]
        keep = 2 if merge_steps else 1                     # leading axes that must survive
        if not (merge_steps or merge_state) or len(shape) != keep + 1 \
                or shape[-1] not in (-1, DH) or any(s < -1 for s in shape):
            raise OnnxImportError(f"{label}: Reshape(shape={shape}) of {_describe(tag)} is not "
                                  "part of a supported pattern (merging the direction and "
                                  "hidden axes)")
        if merge_steps:
            self._tags[dst] = {"kind": "seq", "layer": tag["layer"], "flip": tag["kind"] == "y"}
        else:
            self._tags[dst] = {"kind": "last", "layer": tag["layer"], "which": tag["which"]}
        # a literal leading size fixes T or B: (T, B, ..) for "yt", (B, T, ..) or (B, ..) else
        axes = ("T", "B") if tag["kind"] == "yt" else ("B", "T")
        for axis, size in zip(axes, shape[:keep]):
            if size > 0:
                self._fixed.append((axis, size, f"{label}'s shape {shape}"))

        def reshape(vals):
            x = vals[src]
            out = x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(shape)])
            if out.shape[:keep] != x.shape[:keep]:
                raise ValueError(f"Reshape to {shape} would mix the leading axes of {x.shape}")
            vals[dst] = out
        self._step(reshape, label)

    def _op_Squeeze(self, node, label):
        axes = self._ints(node, label, "axes", 1, self._attrs(node, label, {"axes": _INTS_ATTR}))
        src, dst = node.input[0], node.output[0]
        tag = self._tags[src]
        kind, D = tag["kind"], self.layers[tag["layer"]]["D"] if "layer" in tag else None
        rank = 4 if kind == "y" else 3
        axes = [a % rank for a in axes]
        if D == 1 and kind == "y" and axes == [1 + tag["layout"]]:
            self._tags[dst] = {"kind": "seq", "layer": tag["layer"], "flip": tag["layout"] == 1}
        elif D == 1 and kind == "state" and axes == [tag["layout"]]:
            self._tags[dst] = {"kind": "last", "layer": tag["layer"], "which": tag["which"]}
        else:
            raise OnnxImportError(f"{label}: Squeeze(axes={axes}) of {_describe(tag)} is not "
                                  "part of a supported pattern")
        self._step(lambda vals: vals.__setitem__(dst, np.squeeze(vals[src], tuple(axes))), label)

    def _op_Slice(self, node, label):
        """Rows [start, end) of a stacked initial state (L*D, B, H) graph input: layer k's
        (D, B, H), as torch's and fastrnn's exporters give each layer its part of h0/c0."""
        self._attrs(node, label, {})
        src, dst = node.input[0], node.output[0]
        starts, ends = (self._ints(node, label, n, i, {}) for n, i in (("starts", 1), ("ends", 2)))
        axes = self._ints(node, label, "axes", 3, {}) if len(node.input) > 3 and node.input[3] \
            else [0]
        steps = self._ints(node, label, "steps", 4, {}) if len(node.input) > 4 and node.input[4] \
            else [1]
        if self._tags[src]["kind"] != "input" or self._input_kind(src) != "seq" or \
                axes != [0] or steps != [1] or len(starts) != 1 or len(ends) != 1 or \
                not 0 <= starts[0] < ends[0] < 2**31:
            raise OnnxImportError(f"{label}: only a Slice of rows [start, end) of an initial-"
                                  "state graph input is supported")
        start, end = starts[0], ends[0]
        self._tags[dst] = {"kind": "state_slice", "src": src, "start": start, "end": end}
        self._step(lambda vals: vals.__setitem__(dst, vals[src][start:end]), label)

    def _op_Gather(self, node, label):
        if self._attrs(node, label, {"axis": _INT_ATTR}).get("axis", 0) != 0:
            raise OnnxImportError(f"{label}: only Gather along axis 0 (an embedding) is supported")
        data, ids, dst = node.input[0], node.input[1], node.output[0]
        self._tensor(data, label, "embedding", 2)
        tag = dict(self._tags[ids])
        if tag["kind"] == "input" and self._input_kind(ids) == "ids":
            self._claim(ids, "ids", label)
            tag = {"kind": "ids", "src": ids, "flip": False}
        if tag["kind"] != "ids":
            raise OnnxImportError(f"{label}: Gather indices must be integer token ids from a "
                                  f"graph input, got {_describe(tag)}")
        self._tags[dst] = {"kind": "seq", "src": tag["src"], "flip": tag["flip"],
                           "embedding": data}

        def gather(vals):
            E, i = self._value(vals, data), vals[ids]
            if i.size and (i.min() < -E.shape[0] or i.max() >= E.shape[0]):
                raise ValueError(f"token ids must lie in [-{E.shape[0]}, {E.shape[0]})")
            vals[dst] = E[i]
        self._step(gather, label)

    def _op_Concat(self, node, label):
        if self._attrs(node, label, {"axis": _INT_ATTR}).get("axis") != 0:
            raise OnnxImportError(f"{label}: only Concat(axis=0) of Y_h/Y_c outputs is supported")
        tags = [self._tags[n] for n in node.input]
        if any(t["kind"] != "state" or t["layout"] != 0 or t["which"] != tags[0]["which"]
               for t in tags):
            raise OnnxImportError(f"{label}: only Concat(axis=0) of layout-0 Y_h (or Y_c) "
                                  "outputs is supported")
        names, dst = list(node.input), node.output[0]
        self._tags[dst] = {"kind": "states", "which": tags[0]["which"],
                           "parts": [t["layer"] for t in tags]}
        self._step(lambda vals: vals.__setitem__(dst, np.concatenate([vals[n] for n in names])),
                   label)

    def _head_input(self, name, label):
        tag = self._tags[name]
        if tag["kind"] not in ("seq", "last") or tag.get("layer") is None:
            raise OnnxImportError(f"{label}: an output layer must read a recurrent node's "
                                  f"outputs, got {_describe(tag)}")
        return tag

    def _op_MatMul(self, node, label):
        self._attrs(node, label, {})
        src, w, dst = node.input[0], node.input[1], node.output[0]
        tag = self._head_input(src, label)
        self._tensor(w, label, "MatMul weight", 2)
        self._tags[dst] = {"kind": "head", "layer": tag["layer"], "base": tag["kind"],
                           "flip": tag.get("flip", False), "which": tag.get("which"),
                           "weight": w, "transpose": False, "bias": None}
        self._step(lambda vals: vals.__setitem__(dst, vals[src] @ self._value(vals, w)), label)

    def _op_Add(self, node, label):
        self._attrs(node, label, {})
        a, b = node.input
        if self._tags[b]["kind"] == "head":
            a, b = b, a
        tag = dict(self._tags[a])
        if tag["kind"] != "head" or tag["bias"] is not None:
            raise OnnxImportError(f"{label}: Add is supported only as the bias of a MatMul "
                                  "output layer")
        self._tensor(b, label, "bias", 1)
        tag["bias"] = b
        dst = node.output[0]
        self._tags[dst] = tag
        self._step(lambda vals: vals.__setitem__(dst, vals[a] + self._value(vals, b)), label)

    def _op_Gemm(self, node, label):
        a = self._attrs(node, label, {"alpha": _FLOAT_ATTR, "beta": _FLOAT_ATTR,
                                      "transA": _INT_ATTR, "transB": _INT_ATTR})
        if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0):
            raise OnnxImportError(f"{label}: Gemm with alpha, beta != 1 or transA is not supported")
        src, w, dst = node.input[0], node.input[1], node.output[0]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        tag = self._head_input(src, label)
        if tag["kind"] != "last":
            raise OnnxImportError(f"{label}: Gemm must read a last-state feature (B, D*H)")
        self._tensor(w, label, "Gemm weight", 2)
        if bias is not None:
            self._tensor(bias, label, "Gemm bias", 1)
        trans = bool(a.get("transB", 0))
        self._tags[dst] = {"kind": "head", "layer": tag["layer"], "base": "last", "weight": w,
                           "which": tag["which"], "transpose": trans, "bias": bias}

        def gemm(vals):
            W = self._value(vals, w)
            y = vals[src] @ (W.T if trans else W)
            vals[dst] = y if bias is None else y + self._value(vals, bias)
        self._step(gemm, label)

    def _activation(self, node, label, act, fn):
        src, dst = node.input[0], node.output[0]
        tag = dict(self._tags[src])
        if tag["kind"] != "head":
            raise OnnxImportError(f"{label}: {node.op_type} must follow the output layer")
        tag.update(kind="prob", act=act)
        self._tags[dst] = tag
        self._step(lambda vals: vals.__setitem__(dst, fn(vals[src])), label)

    def _op_Softmax(self, node, label):
        rank = 2 if self._tags[node.input[0]].get("base") == "last" else 3
        axis = self._attrs(node, label, {"axis": _INT_ATTR}).get(
            "axis", -1 if self.opset >= 13 else 1)
        if axis % rank != rank - 1:     # before opset 13 the last axis is the only same case
            raise OnnxImportError(f"{label}: Softmax over axis {axis} is not supported (only the "
                                  "last axis)")
        self._activation(node, label, "softmax", _softmax)

    def _op_Sigmoid(self, node, label):
        self._attrs(node, label, {})
        self._activation(node, label, "sigmoid", lambda x: 1 / (1 + np.exp(-x)))

    # ---- recurrent nodes ---------------------------------------------------------------
    def _op_recurrent(self, node, label):
        spec = self._recurrent_attrs(node, label)
        x, W, R, B, lens, h0, c0, P = list(node.input) + [""] * (8 - len(node.input))
        if not (x and W and R) or spec["op"] != "LSTM" and (c0 or P):
            raise OnnxImportError(f"{label}: inputs {list(node.input)} do not fit {spec['op']}")
        k = len(self.layers)
        tag = self._tags[x]
        if tag["kind"] == "input":
            if self._input_kind(x) != "seq":
                raise OnnxImportError(f"{label}: X {x!r} must be floating point")
            self._claim(x, "x", label)
            tag = {"kind": "seq", "src": x, "flip": False}
        if tag["kind"] != "seq":
            raise OnnxImportError(f"{label}: X {x!r} is {_describe(tag)}, not a sequence")
        self._order(tag, label, x, batch_major=spec["layout"] == 1)
        consts = [self._tensor(n, label, what, nd) if n else None
                  for n, what, nd in ((W, "W", 3), (R, "R", 3), (B, "B", 2), (P, "P", 2))]
        R_dims = consts[1].shape if consts[1] is not None else self._declared[R][1]
        dtype = np.dtype(consts[0].dtype if consts[0] is not None else self._declared[W][0])
        if dtype not in (np.float32, np.float64):
            raise OnnxImportError(f"{label}: dtype {dtype} is not supported (float32 and "
                                  "float64 only)")
        self._check_input_dtypes(label, dtype, x=tag.get("src") if "embedding" not in tag
                                 else None, lens=lens, h0=h0, c0=c0)
        spec.update(H=spec["H"] or (R_dims[2] if R_dims and R_dims[2] else None), dtype=dtype,
                    x=x, x_tag=tag, W=W, R=R, B=B or None, P=P or None, lens=lens or None,
                    lengths_src=self._recurrent_lengths(lens, label), h0=h0 or None,
                    c0=c0 or None, onnx=consts, weights=None, label=label,
                    state_sources=[self._recurrent_state(n, role, spec, label)
                                   for n, role in ((h0, "h0"), (c0, "c0"))])
        if consts[1] is not None and spec["H"] != consts[1].shape[-1]:
            raise OnnxImportError(f"{label}: hidden_size={spec['H']}, but R {R!r} has shape "
                                  f"{list(consts[1].shape)}, whose last axis is the hidden size")
        if all(c is not None or not n for c, n in zip(consts, (W, R, B, P))):
            try:
                spec["weights"] = self._direction_weights(spec, *consts)
            except (ValueError, TypeError) as e:
                raise OnnxImportError(f"{label}: {e}") from e
        if lens and self._tags[lens]["kind"] == "const":
            value = self._const[lens]
            if value.ndim != 1 or value.dtype.kind not in "iu":
                raise OnnxImportError(f"{label}: constant sequence_lens {lens!r} must be a 1-D "
                                      f"integer tensor, got {value.dtype} {list(value.shape)}")
            self._fixed.append(("B", value.size, f"constant sequence_lens {lens!r}"))
            if value.size:       # the check's T must hold the longest row
                self._fixed.append(("T>=", int(value.max()), f"constant sequence_lens {lens!r}"))
        self.layers.append(spec)
        state = {"kind": "state", "layer": k, "layout": spec["layout"]}
        for name, t in zip(node.output, ({"kind": "y", "layer": k, "layout": spec["layout"]},
                                         dict(state, which="h"), dict(state, which="c"))):
            if name:
                self._tags[name] = t
        self._step(lambda vals: self._run_recurrent(spec, node.output, vals), label)

    def _recurrent_attrs(self, node, label):
        """The node's attributes as fastrnn's variant: op, kind, direction, D, layout, ..."""
        op = node.op_type
        a = self._attrs(node, label, {**_RECURRENT_ATTRS, **_EXTRA_ATTRS[op]})
        for name in ("activation_alpha", "activation_beta", "clip"):
            if name in a:
                raise OnnxImportError(f"{label}: attribute {name!r} is not supported")
        direction, layout = a.get("direction", "forward"), a.get("layout", 0)
        if direction not in ("forward", "reverse", "bidirectional") or layout not in (0, 1):
            raise OnnxImportError(f"{label}: direction={direction!r}, layout={layout!r} invalid")
        D = 2 if direction == "bidirectional" else 1
        acts = tuple(s.lower() for s in a.get("activations", ()))
        default, nonlinearity = _DEFAULT_ACTS[op], "tanh"
        if op == "RNN" and acts and acts[0] == "relu":
            default, nonlinearity = ("relu",), "relu"
        if acts and acts not in (default, default * D):     # one list for both, or one each
            raise OnnxImportError(f"{label}: activations {a['activations']} are not supported "
                                  f"(only the defaults{', or Relu' if op == 'RNN' else ''})")
        coupled = op == "LSTM" and a.get("input_forget", 0)
        H = a.get("hidden_size")
        if H is not None and not 1 <= H < 2 ** 31:
            raise OnnxImportError(f"{label}: hidden_size={H}; it must be in [1, 2**31)")
        return dict(op=op, kind="lstm_coupled" if coupled else op.lower(), direction=direction,
                    D=D, H=a.get("hidden_size"), layout=layout, nonlinearity=nonlinearity,
                    reset_after=bool(a.get("linear_before_reset", 0)))

    def _recurrent_lengths(self, lens, label):
        """The graph input that sequence_lens comes from (None: absent or a constant)."""
        if not lens:
            return None
        tag = self._tags[lens]
        if tag["kind"] == "input":
            self._claim(lens, "lengths", label)
            return lens
        if tag["kind"] == "lengths":
            return tag["src"]
        if tag["kind"] != "const":
            raise OnnxImportError(f"{label}: sequence_lens is {_describe(tag)}")
        return None

    def _recurrent_state(self, name, role, spec, label):
        """(graph input, first row, end row) an initial state comes from: rows None when it
        is the input itself; None for an absent or constant state."""
        tag = self._tags[name] if name else {"kind": None}
        layout, D = spec["layout"], spec["D"]
        if tag["kind"] == "input":
            self._claim(name, role, label)
            return name, None, None
        if tag["kind"] == "state_slice" and not layout:
            if tag["end"] - tag["start"] != D:
                raise OnnxImportError(f"{label}: {role} is rows [{tag['start']}, {tag['end']}) "
                                      f"of {tag['src']!r} (Slice); a node with {D} "
                                      f"direction(s) takes {D} row(s)")
            self._claim(tag["src"], role, label)
            return tag["src"], tag["start"], tag["end"]
        if tag["kind"] not in (None, "const"):
            raise OnnxImportError(f"{label}: {role} {name!r} must be a graph input, a Slice of "
                                  f"one or a constant, got {_describe(tag)}")
        if tag["kind"] == "const":
            value = self._const[name]
            if value.ndim != 3 or value.shape[layout] != D:             # (D, B, H) / (B, D, H)
                raise OnnxImportError(f"{label}: constant {role} {name!r} has shape "
                                      f"{list(value.shape)}; expected (D={D}, B, H)"
                                      f"{' after layout' if layout else ''}")
            self._fixed.append(("B", value.shape[1 - layout], f"constant {role} {name!r}"))
        return None

    def _check_input_dtypes(self, label, dtype, x, lens, h0, c0):
        """Graph inputs read by a recurrent node: X and the states in the weights' dtype,
        sequence_lens int32 (int64 lengths go through a Cast, as ONNX requires)."""
        for name, want in ((x, dtype), (h0, dtype), (c0, dtype), (lens, np.dtype(np.int32))):
            if name and self._tags[name]["kind"] == "input" and \
                    self._declared[name][0] != want:
                raise OnnxImportError(f"{label}: graph input {name!r} is "
                                      f"{self._declared[name][0]}, the node needs {want}")

    def _direction_weights(self, spec, W, R, B, P):
        """Check the ONNX tensors' shapes; fastrnn's (W_ih, W_hh, b_ih, b_hh, peepholes) per
        direction."""
        D, G = spec["D"], onnx_gate_count(spec["kind"])
        H = R.shape[-1] if spec["H"] is None else spec["H"]
        I = W.shape[-1]
        want = {"W": (D, G * H, I), "R": (D, G * H, H), "B": (D, 2 * G * H), "P": (D, 3 * H)}
        for name, arr in zip("WRBP", (W, R, B, P)):
            if arr is None:
                continue
            if arr.shape != want[name]:
                raise ValueError(f"{name} has shape {arr.shape}, expected {want[name]}")
            if arr.dtype != np.dtype(spec["dtype"]):
                raise TypeError(f"{name} has dtype {arr.dtype}, expected {np.dtype(spec['dtype'])}")
        return [from_onnx_slices(spec["kind"], W[d], R[d], None if B is None else B[d],
                                 None if P is None else P[d]) for d in range(D)]

    def _run_recurrent(self, spec, outputs, vals):
        X = vals[spec["x"]]
        X = X.transpose(1, 0, 2) if spec["layout"] else X                          # (T, B, I)
        T, B = X.shape[:2]
        weights = spec["weights"] or self._direction_weights(
            spec, *[None if n is None else self._value(vals, n)
                    for n in (spec["W"], spec["R"], spec["B"], spec["P"])])
        H, dtype = weights[0][1].shape[1], X.dtype
        lengths = None
        if spec["lens"]:
            lengths = lengths_array(np.asarray(self._value(vals, spec["lens"])), T, B)
        states = []
        for name in (spec["h0"], spec["c0"]):
            s = None if name is None else self._value(vals, name)
            if s is not None:
                s = s.transpose(1, 0, 2) if spec["layout"] else s                  # (D, B, H)
                if s.shape != (spec["D"], B, H):
                    raise ValueError(f"initial state {name!r} has shape {s.shape}, expected "
                                     f"{(spec['D'], B, H)} (after layout)")
            states.append(s)
        ys, hs, cs = [], [], []
        for d, (W_ih, W_hh, b_ih, b_hh, peep) in enumerate(weights):
            backwards = spec["direction"] == "reverse" or d == 1
            x = _reverse_steps(X, lengths) if backwards else np.ascontiguousarray(X)
            h0, c0 = (None if s is None else s[d] for s in states)
            zeros = np.zeros(W_ih.shape[0], dtype)
            b_ih, b_hh = (zeros if b_ih is None else b_ih), (zeros if b_hh is None else b_hh)
            if spec["op"] == "RNN":
                y, h_n, _ = F.rnn_forward(x, h0, W_ih, W_hh, b_ih, b_hh, lengths,
                                          spec["nonlinearity"])
            elif spec["op"] == "GRU":
                y, h_n, _ = F.gru_forward(x, h0, W_ih, W_hh, b_ih, b_hh, spec["reset_after"],
                                          lengths)
            else:
                y, h_n, c_n, _ = F.lstm_forward(
                    x, h0, c0, W_ih, W_hh, b_ih, b_hh, **{"p_" + g: v for g, v in peep.items()},
                    coupled=spec["kind"] == "lstm_coupled", lengths=lengths)
                cs.append(c_n)
            ys.append(_reverse_steps(y, lengths) if backwards else y)
            hs.append(h_n)
        Y = np.stack(ys, axis=1)                                                   # (T, D, B, H)
        finals = [np.stack(hs), np.stack(cs) if cs else None]                      # (D, B, H)
        if lengths is not None:          # ONNX Runtime: a row of length 0 ends in zero states
            for s in finals:
                if s is not None:
                    s[:, lengths == 0] = 0
        if spec["layout"]:
            Y = Y.transpose(2, 0, 1, 3)
            finals = [None if s is None else s.transpose(1, 0, 2) for s in finals]
        for name, value in zip(outputs, [Y] + finals):
            if name:
                vals[name] = value

    # ---- running -----------------------------------------------------------------------
    def run(self, output_names, feeds=None, run_options=None):
        """The graph outputs for ``feeds`` (input name -> array), as a list of arrays.

        Called as ``onnxruntime.InferenceSession.run`` is: ``run(output_names, feeds)``,
        ``output_names`` None for every graph output in ``self.output_names`` order, or a
        list of output names (the list comes back in that order; a name may repeat);
        ``run_options`` is accepted for that signature and unused. ``run(feeds)`` (feeds
        alone) gives every output too. Every graph input must be fed, in its declared
        dtype and shape. Raises TypeError for another dtype or a feeds that is not a dict,
        ValueError for a missing or unknown input or output name, a shape the graph does not
        declare, or values the kernels refuse (naming the node)."""
        if feeds is None and isinstance(output_names, dict):
            output_names, feeds = None, output_names
        if not isinstance(feeds, dict):
            raise TypeError("feeds must be a dict of input name -> array, got "
                            f"{type(feeds).__name__}")
        if output_names is None:
            output_names = self.output_names
        elif isinstance(output_names, (list, tuple)) and \
                all(isinstance(n, str) for n in output_names):
            odd = [n for n in output_names if n not in self.output_names]
            if odd:
                raise ValueError(f"output names {odd} are not outputs of the graph (its "
                                 f"outputs: {self.output_names})")
        else:
            raise TypeError("output_names must be None or a list of output names, got "
                            f"{output_names!r:.80}")
        unknown = sorted(set(feeds) - set(self.input_names))
        missing = [n for n in self.input_names if n not in feeds]
        if unknown or missing:
            raise ValueError(f"feeds: missing inputs {missing}, unknown inputs {unknown}")
        vals = {}
        for name in self.input_names:
            value, (dtype, dims) = np.asarray(feeds[name]), self._declared[name]
            if value.dtype != dtype:
                raise TypeError(f"input {name!r} has dtype {value.dtype}, expected "
                                f"{np.dtype(dtype)}")
            if dims is not None and (value.ndim != len(dims) or
                                     any(d and d != s for d, s in zip(dims, value.shape))):
                raise ValueError(f"input {name!r} has shape {value.shape}, expected {dims}")
            vals[name] = value
        for step in self._steps:
            step(vals)
        return [np.array(self._value(vals, n)) for n in output_names]          # fresh copies

    def __repr__(self):
        kinds = ", ".join(f"{s['op']}({s['kind']}, {s['direction']})" for s in self.layers)
        return (f"OnnxRecurrentModel([{kinds}], inputs={self.input_names}, "
                f"outputs={self.output_names})")

    # ---- parity --------------------------------------------------------------------------
    def _oracle(self):
        """(random feeds, the other side's outputs, its name), computed once."""
        if self._oracle_cache is None:
            self._oracle_cache = self._checked(self._run_oracle)
        return self._oracle_cache

    def _run_oracle(self):
        try:
            import onnxruntime
        except ImportError:
            onnxruntime = None
        use_ort = onnxruntime is not None and self.dtype == np.float32
        feeds = self._random_feeds(np.random.default_rng(0), full_lengths=not use_ort)
        if use_ort:
            model = _time_major_copy(self._model)
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 4      # fatal only: its refusals come in the exception
            options.intra_op_num_threads = 1    # a small input: no thread pool to spin
            try:
                session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                                       providers=["CPUExecutionProvider"])
                outs, name = session.run(None, feeds), "onnxruntime"
            except Exception as e:      # onnxruntime raises its own exception types
                raise OnnxImportError(f"ONNX Runtime cannot run the graph for the parity "
                                      f"check ({e}); pass check=False to skip it") from e
        else:
            self._reference_can_check()
            from .onnx_export import reference_evaluator      # its RNN knows Relu
            try:
                outs = reference_evaluator(self._model).run(None, feeds)
            except Exception as e:      # noqa: BLE001 - anything it raises on this graph
                raise OnnxImportError(f"onnx's reference evaluator cannot run the graph for "
                                      f"the parity check ({type(e).__name__}: {e}); pass "
                                      "check=False to skip it") from e
            name = "onnx.reference.ReferenceEvaluator"
        return feeds, [np.asarray(o) for o in outs], name

    def _reference_can_check(self):
        why = ""
        for s in self.layers:
            if s["kind"] == "lstm_coupled" and (s["weights"] is None or
                                                not _forget_is_negated_input(*s["onnx"])):
                why = "input_forget=1, which it ignores"
            elif s["lens"] and s["lengths_src"] is None:
                why = "constant sequence_lens, which it ignores"
        if why:
            raise OnnxImportError(
                f"the parity check needs ONNX Runtime (float32 only) here: the reference "
                f"evaluator cannot check {why}; pass check=False to skip it")

    def _check_run(self, tol):
        feeds, theirs, self.parity_oracle = self._oracle()
        ours = self._checked(lambda: self.run(None, feeds))
        return check_parity(f"from_onnx against {self.parity_oracle}", ours, theirs, tol)

    def _checked(self, fn):
        """``fn()``, its errors as OnnxImportError naming the file: a ValueError or TypeError
        of running the check's own input is the graph's inconsistency (a node that cannot
        take what the one before gives), not the caller's."""
        try:
            return fn()
        except OnnxImportError as e:
            raise _from_source(e, self.source)
        except (ValueError, TypeError) as e:
            raise _from_source(OnnxImportError(f"the parity check cannot run the graph: {e}"),
                               self.source) from e

    def _random_feeds(self, rng, full_lengths=False):
        """One random array per graph input, shaped by its role at the check's sizes
        (:meth:`_check_sizes`); lengths in [1, T] with one full row."""
        T, B = self._check_sizes()
        feeds = {}
        for name, shape in self._feed_shapes(T, B).items():
            dtype, role = self._declared[name][0], self._roles.get(name)
            if role == "ids":
                V = self._vocab(name)
                if V is None:
                    raise OnnxImportError(f"cannot make random token ids for {name!r}: the "
                                          "embedding's size is not declared; pass check=False")
                value = rng.integers(0, V, shape)
            elif role == "lengths":
                value = np.full(shape, T) if full_lengths else rng.integers(1, T + 1, shape)
                value.reshape(-1)[:1] = T
            elif role == "x":
                value = rng.standard_normal(shape)
            else:
                value = rng.uniform(-0.5, 0.5, shape)
            feeds[name] = value.astype(dtype)
        return feeds

    def _input_size(self, s):
        """The input size I of recurrent node ``s`` (None when nothing says), from its W, its
        X (a graph input, the previous node, an embedding); refused when they disagree."""
        sizes = []                                  # (I, what says so)
        if s["W"] in self._const:
            sizes.append((self._const[s["W"]].shape[2], f"W {s['W']!r}"))
        elif self._declared_dim(s["W"], 2):
            sizes.append((self._declared_dim(s["W"], 2), f"W {s['W']!r} as declared"))
        tag = s["x_tag"]
        src, embedding, layer = tag.get("src"), tag.get("embedding"), tag.get("layer")
        if embedding is not None:
            E = self._const[embedding].shape[1] if embedding in self._const else \
                self._declared_dim(embedding, 1)
            if E:
                sizes.append((E, f"the embedding {embedding!r}"))
        elif src is not None and self._declared_dim(src, 2):
            sizes.append((self._declared_dim(src, 2), f"X {src!r} as declared"))
        elif layer is not None and self.layers[layer]["H"]:
            prev = self.layers[layer]
            sizes.append((prev["D"] * prev["H"], f"the output of {prev['label']}"))
        for size, why in sizes[1:]:
            if size != sizes[0][0]:
                raise OnnxImportError(f"{s['label']}: input size {sizes[0][0]} from "
                                      f"{sizes[0][1]}, but {size} from {why}")
        return sizes[0][0] if sizes else None

    def _declared_dim(self, name, k):
        """Dim k that graph input ``name`` declares, None when unknown or absent."""
        dims = self._declared[name][1]
        return dims[k] if dims is not None and len(dims) > k else None

    def _expected_shapes(self):
        """Graph input -> its shape for the parity check: ints, "T" and "B" (the check's
        time steps and batch), None where nothing says. What the nodes imply and the
        declared dims must agree; declared T and B go to ``self._fixed``."""
        wants = {}                                  # name -> [(shape, what needs it)]

        def want(name, shape, why):
            if name and self._tags.get(name, {}).get("kind") == "input":
                wants.setdefault(name, []).append((shape, why))
        rows = {}                                   # sliced state input -> rows it needs
        for s in self.layers:
            G, D, H, I = onnx_gate_count(s["kind"]), s["D"], s["H"], self._input_size(s)
            GH = None if H is None else G * H
            why = f"{s['label']}"
            tag = s["x_tag"]
            order = self._input_order.get(tag.get("src"), False)
            if tag.get("src") is not None:
                if tag.get("embedding") is None:
                    want(tag["src"], ["B", "T", I] if order else ["T", "B", I], why)
                else:
                    want(tag["src"], ["B", "T"] if order else ["T", "B"], why)
                    want(tag["embedding"], [None, I], why)
            for name, shape in ((s["W"], [D, GH, I]), (s["R"], [D, GH, H]),
                                (s["B"], [D, GH and 2 * GH]), (s["P"], [D, H and 3 * H])):
                want(name, shape, why)
            for source in s["state_sources"]:
                if source and source[1] is None:
                    want(source[0], ["B", D, H] if s["layout"] else [D, "B", H], why)
                elif source:
                    rows[source[0]] = max(rows.get(source[0], 0), source[2])
                    want(source[0], [None, "B", H], why)
            want(s["lengths_src"], ["B"], why)
        most_rows = sum(s["D"] for s in self.layers)
        shapes = {}
        for name in self.input_names:
            declared = self._declared[name][1]
            shape = None if declared is None else list(declared)
            for expected, why in wants.get(name, []):
                if shape is None:
                    shape = list(expected)
                if len(expected) != len(shape):
                    raise OnnxImportError(f"graph input {name!r} is declared {declared}, but "
                                          f"{why} needs {len(expected)} dims")
                for k, (have, need) in enumerate(zip(list(shape), expected)):
                    if need in ("T", "B"):
                        if isinstance(have, int):
                            self._fixed.append((need, have, f"graph input {name!r}"))
                        shape[k] = need
                    elif need is not None:
                        if have not in (None, need):
                            raise OnnxImportError(f"graph input {name!r} is declared "
                                                  f"{declared}, but {why} needs {need} at "
                                                  f"axis {k} (shape {expected})")
                        shape[k] = need
            if name in rows:
                if rows[name] > most_rows:
                    raise OnnxImportError(f"a Slice takes rows up to {rows[name]} of {name!r}, "
                                          f"past the {most_rows} rows the graph's recurrent "
                                          "nodes take")
                if shape[0] is not None and shape[0] < rows[name]:
                    raise OnnxImportError(f"graph input {name!r} is declared {declared}, but a "
                                          f"Slice takes rows up to {rows[name]}")
                shape[0] = shape[0] or rows[name]
            shapes[name] = shape
        return shapes

    def _check_sizes(self):
        """(T, B) of the parity check's input: those the graph fixes, else ``_SIZES``.
        Refused when the graph fixes one two ways, or when the check would pass
        CHECK_MAX_VALUES values or CHECK_MAX_MACS multiply-adds."""
        fixed, least_T = {"T": {}, "B": {}}, 1
        for axis, size, why in self._fixed:
            if axis == "T>=":
                least_T = max(least_T, size)
            else:
                fixed[axis].setdefault(size, why)
        for axis, what in (("T", "the time steps"), ("B", "the batch")):
            if len(fixed[axis]) > 1:
                (a, why_a), (b, why_b) = list(fixed[axis].items())[:2]
                raise OnnxImportError(f"the graph fixes {what} two ways: {a} ({why_a}) and "
                                      f"{b} ({why_b})")
        T = next(iter(fixed["T"]), max(_SIZES["T"], least_T))
        B = next(iter(fixed["B"]), _SIZES["B"])
        if T < least_T:
            raise OnnxImportError(f"constant sequence_lens reach {least_T}, past the {T} time "
                                  f"steps {fixed['T'][T]} fixes")
        values = sum(math.prod(shape) for shape in self._feed_shapes(T, B).values())
        macs = 0
        for s in self.layers:
            G, D, H, I = onnx_gate_count(s["kind"]), s["D"], s["H"], self._input_size(s)
            values += T * B * D * H * (G + 2)       # Y, final states, gate buffers
            macs += T * B * D * G * H * (I + H)
        heads = {t["weight"]: t for t in self._tags.values() if t["kind"] == "head"}
        for W, tag in heads.items():                # output layers: (.., D*H) @ (D*H, C)
            shape = list(self._const[W].shape) if W in self._const else self._shapes[W]
            rows = B if tag["base"] == "last" else T * B
            values += rows * shape[0 if tag["transpose"] else -1]
            macs += rows * math.prod(shape)
        if values > CHECK_MAX_VALUES or macs > CHECK_MAX_MACS:
            fixes = ", ".join(f"{a} by {why}" for a in "TB" for why in fixed[a].values())
            raise OnnxImportError(
                f"the parity check runs the graph at T={T}, B={B} "
                f"({'fixed: ' + fixes if fixes else 'the default sizes'}); checking "
                f"it needs {values:,} values and {macs:,} multiply-adds, past the limits of "
                f"{CHECK_MAX_VALUES:,} and {CHECK_MAX_MACS:,}: pass check=False to load it "
                "unchecked")
        return T, B

    def _feed_shapes(self, T, B):
        """Graph input -> the check's shape for it, refused where a size is not known."""
        out = {}
        for name in self.input_names:
            shape = self._shapes[name]
            if shape is None or None in shape:
                raise OnnxImportError(
                    f"cannot make a random input for graph input {name!r} (role "
                    f"{self._roles.get(name)}, declared {self._declared[name][1]}): its shape "
                    "is not known; pass check=False")
            out[name] = [T if d == "T" else B if d == "B" else d for d in shape]
        return out

    def _vocab(self, ids_name):
        """Rows of the embedding that ``ids_name`` indexes; None when not known."""
        for s in self.layers:
            name = s["x_tag"].get("embedding")
            if s["x_tag"].get("src") == ids_name and name:
                if name in self._const:
                    return self._const[name].shape[0]
                return (self._declared[name][1] or [None])[0]
        return None

    # ---- to fastrnn ------------------------------------------------------------------------
    def to_fastrnn(self, *, task=None, check=True, tol=None):
        """A fastrnn layer (one stack of the graph's recurrent nodes) or, with an embedding or
        an output layer, a batch-first :class:`fastrnn.SequenceModel` (``task`` defaults from
        the output activation: Softmax -> classification, Sigmoid -> multilabel, none ->
        regression). Refuses, naming it, what has no fastrnn equivalent. With ``check`` the
        result runs against ONNX Runtime on a random input (rows of length >= 1);
        ``obj.parity_max_abs_diff`` holds the largest absolute difference. A SequenceModel
        gets the ``vocabulary`` and ``text_level`` fastrnn's exporter recorded (None when
        the file has none). Raises :class:`OnnxImportError` naming the file."""
        obj, derive = self._checked(lambda: _build_fastrnn(self, task))
        obj.parity_max_abs_diff = None
        if hasattr(obj, "vocabulary"):
            obj.vocabulary, obj.text_level = self.vocabulary, self.text_level
        if check:
            feeds, theirs, oracle = self._oracle()
            ours = self._checked(lambda: derive(feeds))
            obj.parity_max_abs_diff = check_parity(f"to_fastrnn against {oracle}", ours, theirs,
                                                   tol)
        return obj


def _forget_is_negated_input(W, R, B, P):
    """Whether a coupled LSTM's unused f block is exactly -i (p_f = -p_i), as fastrnn's
    exporter writes it: then a runtime that ignores input_forget computes
    f = sigmoid(-a_i) = 1 - i too. False when a tensor is a graph input (None)."""
    if W is None or R is None:
        return False
    H = R.shape[-1]
    blocks = [(a[:, 2 * H:3 * H], a[:, :H]) for a in (W, R)]                  # (f, i)
    if B is not None:
        b = B.reshape(B.shape[0], 2, 4, H)                                      # [Wb | Rb]
        blocks.append((b[:, :, 2], b[:, :, 0]))
    if P is not None:
        blocks.append((P[:, 2 * H:], P[:, :H]))                                 # p_f, p_i
    return all(np.array_equal(f, -i) for f, i in blocks)


def _time_major_copy(model):
    """``model`` with every layout-1 recurrent node turned into layout 0 between Transposes
    (ONNX Runtime's CPU kernels take layout 0 only); the model itself when there is none."""
    from onnx import helper
    if not any(a.name == "layout" and a.i == 1 for n in model.graph.node for a in n.attribute
               if n.op_type in ("RNN", "LSTM", "GRU")):
        return model
    copy = type(model)()
    copy.CopyFrom(model)
    nodes = []
    for n in copy.graph.node:
        if n.op_type not in ("RNN", "LSTM", "GRU") or \
                not any(a.name == "layout" and a.i == 1 for a in n.attribute):
            nodes.append(n)
            continue
        for a in n.attribute:
            if a.name == "layout":
                a.i = 0
        for k in (0, 5, 6):                               # X, initial_h, initial_c
            if len(n.input) > k and n.input[k]:
                tm = n.input[k] + "__time_major"
                nodes.append(helper.make_node("Transpose", [n.input[k]], [tm], perm=[1, 0, 2]))
                n.input[k] = tm
        nodes.append(n)
        for k, perm in ((0, [2, 0, 1, 3]), (1, [1, 0, 2]), (2, [1, 0, 2])):
            if len(n.output) > k and n.output[k]:
                tm = n.output[k] + "__time_major"
                nodes.append(helper.make_node("Transpose", [tm], [n.output[k]], perm=perm))
                n.output[k] = tm
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    return copy


# ---- to_fastrnn: the graph as one fastrnn stack (+ embedding and head) ----------------------

def _refuse(why):
    raise OnnxImportError(f"to_fastrnn: {why}")


def peephole_gates(m, specs):
    """The gates with a peephole: those whose P block is non-zero somewhere, plus those the
    exporter's metadata names (ONNX's P always has all three; zeros mean none)."""
    gates = "io" if specs[0]["kind"] == "lstm_coupled" else "ifo"
    used = {g for s in specs for *_, peep in s["weights"] for g, v in peep.items() if np.any(v)}
    recorded = _exported_config(m).get("peephole")
    if any(s["P"] for s in specs):
        used |= set(gates if recorded is True else recorded if isinstance(recorded, str) else "")
    return "".join(g for g in gates if g in used)


def _stack_weights(specs, G, H, peephole):
    """fastrnn state dict of the stack, and whether it has biases."""
    sd = {}
    bias = any(s["B"] for s in specs)
    for k, s in enumerate(specs):
        for d, (W_ih, W_hh, b_ih, b_hh, peep) in enumerate(s["weights"]):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            sd["weight_ih" + sfx], sd["weight_hh" + sfx] = W_ih, W_hh
            zeros = np.zeros(G * H, W_ih.dtype)
            if bias:
                sd["bias_ih" + sfx] = zeros if b_ih is None else b_ih
                sd["bias_hh" + sfx] = zeros if b_hh is None else b_hh
            for g in peephole:
                sd[f"peephole_{g}" + sfx] = peep.get(g, zeros[:H])
    return sd, bias


def _the_head(m, last):
    """The output layer's final tag (after its bias) and activation, or (None, None)."""
    heads = [t for t in m._tags.values() if t["kind"] in ("head", "prob")]
    if len({t["weight"] for t in heads}) > 1:
        _refuse("the graph has more than one output layer")
    if not heads:
        return None, None
    head = max(heads, key=lambda t: t["bias"] is not None)
    acts = {t.get("act") for t in heads} - {None}
    if head["layer"] != last or head["base"] == "last" and head["which"] != "h":
        _refuse("the output layer must read the last recurrent node's Y or Y_h")
    return head, (acts.pop() if acts else None)


def _initial_state_source(m, spec, k):
    """(graph input, first row, end row) of ``spec``'s initial h (k=0) or c (k=1); None for
    zeros."""
    name, source = spec[("h0", "c0")[k]], spec["state_sources"][k]
    if name is not None and source is None and np.any(m._const[name]):
        _refuse(f"{spec['label']} starts from a constant non-zero state, which a fastrnn layer "
                "cannot hold")
    return source


def _exported_config(m):
    """The configuration fastrnn's exporter records in the model's metadata, or {}."""
    import json
    try:
        config = json.loads(m.metadata.get("fastrnn.config", "{}"))
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


_VOCABULARY_KEY, _TEXT_LEVEL_KEY = "fastrnn.vocabulary", "fastrnn.text_level"


def _text_metadata(m):
    """(vocabulary, text_level) that fastrnn's exporter records for a language model, each
    None when absent, refused unless the vocabulary is a JSON list of as many strings (each
    under 1024 characters, as model files allow) as the embedding has rows, and the level
    one of fastrnn.io.TEXT_LEVELS."""
    import json
    vocabulary, text = None, m.metadata.get(_VOCABULARY_KEY)
    if text is not None:
        emb = m.layers[0]["x_tag"].get("embedding")
        V = None if emb is None else m._const[emb].shape[0] if emb in m._const else \
            m._declared_dim(emb, 0)
        try:
            vocabulary = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise OnnxImportError(f"metadata {_VOCABULARY_KEY!r} is not JSON ({e})") from None
        if not io.is_vocabulary(vocabulary, V):
            raise OnnxImportError(f"metadata {_VOCABULARY_KEY!r} must be a list of as many "
                                  f"strings (each at most {io.MAX_TOKEN_CHARS} characters) as the "
                                  f"embedding has "
                                  f"rows ({V})")
    level = m.metadata.get(_TEXT_LEVEL_KEY)
    if level is not None and level not in io.TEXT_LEVELS:
        raise OnnxImportError(f"metadata {_TEXT_LEVEL_KEY!r} is {level[:_MAX_SHOWN]!r}; it must "
                              f"be one of {io.TEXT_LEVELS}")
    return vocabulary, level


def _exported_task(m, per_step):
    """The task fastrnn's exporter recorded, when it fits the graph (the graph's logits do
    not say which loss they were trained with)."""
    task = _exported_config(m).get("task")
    return task if task in TASKS and (TASKS[task][0] == "per_step") == per_step else None


def _check_stack(specs):
    """Refuse recurrent nodes that are not one fastrnn stack: same cell, variant, directions
    (forward or bidirectional), hidden size and lengths, each reading the one before."""
    first = specs[0]
    for k, s in enumerate(specs):
        if s["direction"] == "reverse":
            _refuse(f"{s['label']} runs direction='reverse' alone, which has no fastrnn "
                    "equivalent (fastrnn layers run forward or bidirectional); run() handles it")
        if s["weights"] is None:
            _refuse(f"{s['label']} takes its weights from graph inputs; give them as initializers")
        if k and s["x_tag"].get("layer") != k - 1 or not k and s["x_tag"].get("src") is None:
            _refuse(f"{s['label']} does not read the previous recurrent node's output (the "
                    "first one: a graph input): the nodes do not form one stack")
        for key in ("op", "kind", "D", "nonlinearity", "reset_after", "dtype"):
            if s[key] != first[key]:
                _refuse(f"{s['label']} differs from the first recurrent node in {key}")
        if s["weights"][0][1].shape != first["weights"][0][1].shape:
            _refuse(f"{s['label']} differs from the first recurrent node in hidden size")
        if s["lens"] and s["lengths_src"] is None:
            _refuse(f"{s['label']} has constant sequence_lens; fastrnn takes lengths per call")
        if s["lengths_src"] != first["lengths_src"]:
            _refuse("the recurrent nodes read different sequence_lens")


def _check_outputs(m, head, last):
    """Refuse graph outputs a fastrnn model cannot give (inner layers' Y, inputs...)."""
    for name in m.output_names:
        t = m._tags[name]
        if t["kind"] in ("head", "prob") and t["bias"] != head["bias"]:
            _refuse(f"graph output {name!r} skips the output layer's bias")
        if not (t["kind"] in ("state", "state_bd", "last", "states", "head", "prob") or
                t["kind"] in ("seq", "y", "yt") and t.get("layer") == last):
            _refuse(f"graph output {name!r} ({_describe(t)}) has no counterpart in a fastrnn model")


def _head_task(m, head, act, task, vocab_size):
    """The SequenceModel task: given, recorded by fastrnn's exporter, or from the output
    activation (Softmax: classification, Sigmoid: multilabel, none: regression)."""
    per_step = head["base"] == "seq"
    if task is not None:
        if task not in TASKS or (TASKS[task][0] == "per_step") != per_step:
            _refuse(f"task {task!r} does not match the graph's "
                    f"{'per-step' if per_step else 'last-state'} output")
        return task
    output_size = m._const[head["weight"]].shape[0 if head["transpose"] else 1]
    classify = "next_token" if vocab_size == output_size else "per_step_classification"
    task = _exported_task(m, per_step) or {
        ("softmax", True): classify, ("sigmoid", True): "multilabel", (None, True): "regression",
        ("softmax", False): "sequence_classification",
        (None, False): "sequence_regression"}.get((act, per_step))
    if task is None:
        _refuse("a Sigmoid over the last state matches no SequenceModel task")
    return task


def _sequence_model(m, head, act, task, embedding, rnn_args, sd):
    """A SequenceModel holding the graph's embedding, stack (state dict ``sd``) and head."""
    from ..nn.models import SequenceModel
    for name in (embedding, head["weight"], head["bias"]):
        if name is not None and name not in m._const:
            _refuse(f"{name!r} (embedding or output layer) is a graph input; give it as an "
                    "initializer")
    W = m._const[head["weight"]]
    W = W if head["transpose"] else W.T                                          # (O, D*H)
    E = None if embedding is None else m._const[embedding]                       # (V, E)
    kw = dict(rnn_args)
    I, H, L, D, dtype = (kw.pop(k) for k in ("input_size", "hidden_size", "num_layers", "D",
                                             "dtype"))
    emb = {} if E is None else dict(vocab_size=E.shape[0], embedding_dim=E.shape[1])
    model = SequenceModel(kw.pop("cell"), input_size=None if emb else I, hidden_size=H,
                          output_size=W.shape[0],
                          task=_head_task(m, head, act, task, emb.get("vocab_size")),
                          num_layers=L, bidirectional=D == 2, dtype=dtype, **emb, **kw)
    if not any("bias" in k for k in sd):      # no recurrent biases in the graph: zeros
        sd = dict(sd, **{k: np.zeros_like(v) for k, v in model.rnn.params.items() if "bias" in k})
    model.rnn.load_state_dict(sd)
    if E is not None:
        model.embedding.weight[...] = E
    model.head.weight[...] = W
    model.head.bias[...] = 0 if head["bias"] is None else m._const[head["bias"]].reshape(-1)
    return model


def _build_fastrnn(m, task):
    """(fastrnn object, derive(feeds) -> the graph outputs computed with that object)."""
    from ..nn import layers as L
    specs, first = m.layers, m.layers[0]
    _check_stack(specs)
    src, lengths_src = first["x_tag"]["src"], first["lengths_src"]
    op, D, last = first["op"], first["D"], len(specs) - 1
    W_ih0, W_hh0 = first["weights"][0][:2]
    H, dtype = W_hh0.shape[1], W_hh0.dtype
    batch_first = m._input_order[src]
    sources = [[_initial_state_source(m, s, k) for s in specs] for k in (0, 1)]
    peephole = peephole_gates(m, specs) if op == "LSTM" else ""
    sd, bias = _stack_weights(specs, W_hh0.shape[0] // H, H, peephole)
    rnn_args = dict(cell=op.lower(), input_size=W_ih0.shape[1], hidden_size=H,
                    num_layers=len(specs), D=D, dtype=dtype,
                    **{"RNN": dict(nonlinearity=first["nonlinearity"]),
                       "LSTM": dict(peephole=peephole, coupled=first["kind"] == "lstm_coupled"),
                       "GRU": dict(reset_after=first["reset_after"])}[op])
    embedding = first["x_tag"].get("embedding")
    head, act = _the_head(m, last)
    _check_outputs(m, head, last)
    if head is None and embedding is None:
        kw = dict(rnn_args)
        for k in ("cell", "D"):
            kw.pop(k)
        obj = rnn = getattr(L, op)(bias=bias, batch_first=batch_first, bidirectional=D == 2, **kw)
        obj.load_state_dict(sd)
    else:
        if head is None:
            _refuse("an embedding without an output layer has no fastrnn equivalent")
        if not batch_first:
            _refuse("the graph is time-major, but a SequenceModel (embedding or output layer) "
                    "is batch-first; run() handles it")
        obj = _sequence_model(m, head, act, task, embedding, rnn_args, sd)
        rnn = obj.rnn

    def derive(feeds):
        x = feeds[src]
        lengths = None if lengths_src is None else feeds[lengths_src]
        B = x.shape[0] if batch_first else x.shape[1]
        given = [[None if source is None else feeds[source[0]] if source[1] is None else
                  feeds[source[0]][source[1]:source[2]] for source in row] for row in sources]
        state = None
        if any(v is not None for row in given for v in row):
            # one (D, B, H) block per node, zeros where the graph gives none -> (L*D, B, H)
            state = tuple(np.concatenate([
                np.zeros((D, B, H), dtype) if v is None else v.transpose(1, 0, 2) if
                s["layout"] else v for v, s in zip(row, specs)]) for row in given)
            state = state if op == "LSTM" else state[0]
        inputs = x if embedding is None else obj.embedding.forward(x)
        out, state_n = rnn(inputs, state, lengths)
        out_tm = out.transpose(1, 0, 2) if batch_first else out                  # (T, B, D*H)
        h_n, c_n = state_n if op == "LSTM" else (state_n, None)
        y = None if head is None else obj.forward(x, lengths, state)[0]
        return [_derived(m._tags[n], out_tm, h_n, c_n, y, D, H) for n in m.output_names]
    return obj, derive


def _derived(tag, out_tm, h_n, c_n, y, D, H):
    """The value of a graph output described by ``tag`` from a fastrnn stack's outputs:
    out_tm (T, B, D*H), h_n and c_n (L*D, B, H), y the head's output ((B, T, O) or (B, O))."""
    kind = tag["kind"]
    T, B = out_tm.shape[:2]

    def state(k, which):
        return (h_n if which == "h" else c_n)[k * D:(k + 1) * D]                # (D, B, H)
    if kind == "seq":
        return out_tm.transpose(1, 0, 2) if tag["flip"] else out_tm
    if kind in ("y", "yt"):
        Y = out_tm.reshape(T, B, D, H)                                          # (T, B, D, H)
        if kind == "yt":
            return Y
        return Y.transpose(1, 0, 2, 3) if tag["layout"] else Y.transpose(0, 2, 1, 3)
    if kind == "states":
        return np.concatenate([state(k, tag["which"]) for k in tag["parts"]])
    if kind in ("head", "prob"):
        if tag["base"] == "seq" and not tag.get("flip"):
            y = y.transpose(1, 0, 2)
        if kind == "head":
            return y
        return _softmax(y) if tag["act"] == "softmax" else 1 / (1 + np.exp(-y))
    s = state(tag["layer"], tag["which"])
    if kind == "state":
        return s.transpose(1, 0, 2) if tag["layout"] else s
    if kind == "state_bd":
        return s.transpose(1, 0, 2)
    return s.transpose(1, 0, 2).reshape(B, D * H)                                # "last"
