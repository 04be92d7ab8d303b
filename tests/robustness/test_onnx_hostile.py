"""``from_onnx`` on hostile and malformed files.

* Sizes a file declares but cannot hold (static input dims, ``hidden_size``, Slice bounds,
  tensor dims without their data): each is refused, or checked on a small input, in a
  process of its own under an address-space limit, with its time and peak RSS measured.
* Malformed graphs (missing inputs, wrong attribute types, wrong-rank weights, non-UTF-8
  strings, truncated or garbage bytes, an empty file, unknown ops, cycles, duplicate
  names...): each raises :class:`fastrnn.OnnxImportError` naming the file and the node.
* A mutation fuzz of valid files' bytes and of their protobuf fields: only a successful
  load or ``OnnxImportError`` may come out (1,000 mutations by default, 200,000 with
  ``--long``; a ParityError only for huge finite weights, where float32 rounding exceeds the
  check's absolute tolerance).
"""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import fastrnn  # noqa: E402
from fastrnn import OnnxImportError, ParityError  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
F32 = TensorProto.FLOAT


# ---- builders: small hand-made graphs (no onnx.checker: hostile files skip it too) -------

def vi(name, dims, elem=F32):
    return helper.make_tensor_value_info(name, elem, dims)


def model_of(nodes, inputs, outputs, initializers=(), opset=14, metadata=None):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    for k, v in (metadata or {}).items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    return model


def lstm_weights(H=2, I=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"W": rng.uniform(-0.5, 0.5, (1, 4 * H, I)).astype(np.float32),
            "R": rng.uniform(-0.5, 0.5, (1, 4 * H, H)).astype(np.float32)}


def lstm_model(x_dims=("T", "B", 3), H=2, I=3, hidden_size=None, inputs=("X", "W", "R"),
               extra_inputs=(), weights=None, node_name="rnn", attrs=None, nodes_before=(),
               nodes_after=(), outputs=("Y", "Y_h"), initializers=()):
    """One LSTM node ``node_name`` reading X (declared ``x_dims``) and constant W, R."""
    weights = lstm_weights(H, I) if weights is None else weights
    node = helper.make_node("LSTM", list(inputs), ["Y", "Y_h"], name=node_name,
                            hidden_size=H if hidden_size is None else hidden_size,
                            **(attrs or {}))
    return model_of(list(nodes_before) + [node] + list(nodes_after),
                    [vi("X", list(x_dims))] + list(extra_inputs),
                    [vi(n, None) for n in outputs],
                    [numpy_helper.from_array(v, n) for n, v in weights.items()] +
                    list(initializers))


def sliced_state_model(start, end, rows="rows"):
    """An LSTM whose initial_h is Slice(h0, [start, end)) of a (rows, B, H) graph input."""
    ints = [numpy_helper.from_array(np.array([v], np.int64), n)
            for n, v in (("start", start), ("end", end), ("axis0", 0))]
    slice_node = helper.make_node("Slice", ["h0", "start", "end", "axis0"], ["h0_0"],
                                  name="slice_h0")
    return lstm_model(inputs=("X", "W", "R", "", "", "h0_0"),
                      extra_inputs=[vi("h0", [rows, "B", 2])], nodes_before=[slice_node],
                      initializers=ints)


def tensor_without_data(name, dims, data_type=F32, **fields):
    t = TensorProto(name=name, data_type=data_type, dims=dims)
    for k, v in fields.items():
        if k == "raw_data":
            t.raw_data = v
        else:
            getattr(t, k).extend(v)
    return t


# ---- (1) sizes a file declares but cannot hold --------------------------------------------

def _weights_as_inputs(H, declared=True):
    G, D = 4, 1
    dims = {"W": [D, G * H, 3], "R": [D, G * H, H]} if declared else {"W": None, "R": None}
    return lstm_model(hidden_size=H, weights={}, extra_inputs=[vi(n, d) for n, d in dims.items()])


HUGE = {
    # a 300-byte file that asked for T*B*I = 75 M random values (20 s, 4 GB before the fix)
    "static_input_dims_5000": lambda: lstm_model(x_dims=(5000, 5000, 3)),
    "static_input_dims_8000": lambda: lstm_model(x_dims=(8000, 8000, 3)),
    "static_batch_1e9": lambda: lstm_model(x_dims=("T", 10 ** 9, 3)),
    "static_time_1e12": lambda: lstm_model(x_dims=(10 ** 12, 1, 3)),
    "static_dims_past_int64_product": lambda: lstm_model(x_dims=(2 ** 62, 2 ** 62, 3)),
    "weight_inputs_hidden_2e16": lambda: _weights_as_inputs(2 ** 16),
    "weight_inputs_undeclared_hidden_2e30": lambda: _weights_as_inputs(2 ** 30, False),
    "hidden_size_2e40_tiny_weights": lambda: lstm_model(hidden_size=2 ** 40),
    "slice_end_2e31": lambda: sliced_state_model(0, 2 ** 31 - 1),
    "slice_rows_at_2e30": lambda: sliced_state_model(2 ** 30, 2 ** 30 + 1),
    "state_input_batch_1e8": lambda: lstm_model(
        inputs=("X", "W", "R", "", "", "h0"), extra_inputs=[vi("h0", [1, 10 ** 8, 2])]),
    "lengths_input_1e9": lambda: lstm_model(
        inputs=("X", "W", "R", "", "lens"),
        extra_inputs=[vi("lens", [10 ** 9], TensorProto.INT32)]),
    "initializer_dims_without_raw_data": lambda: lstm_model(weights={}, initializers=[
        tensor_without_data("W", [1, 4 << 20, 3], raw_data=b""),
        tensor_without_data("R", [1, 4 << 20, 1 << 20], raw_data=b"\0" * 16)]),
    "initializer_dims_with_short_float_data": lambda: lstm_model(weights={}, initializers=[
        tensor_without_data("W", [1, 1 << 40, 3], float_data=[1.0, 2.0]),
        tensor_without_data("R", [1, 1 << 40, 1 << 38], float_data=[1.0])]),
    "initializer_int4_huge": lambda: lstm_model(initializers=[
        tensor_without_data("unused", [1 << 20, 1 << 20], TensorProto.INT4, raw_data=b"\0")]),
    "constant_node_huge_tensor": lambda: lstm_model(nodes_before=[helper.make_node(
        "Constant", [], ["c"], name="big_constant",
        value=tensor_without_data("v", [1 << 30, 1 << 30], float_data=[0.0]))]),
    "embedding_input_2e31_rows": lambda: model_of(
        [helper.make_node("Gather", ["E", "ids"], ["emb"], name="embed"),
         helper.make_node("LSTM", ["emb", "W", "R"], ["Y"], name="rnn", hidden_size=2)],
        [vi("ids", ["T", "B"], TensorProto.INT64), vi("E", [2 ** 31, 3])], [vi("Y", None)],
        [numpy_helper.from_array(v, n) for n, v in lstm_weights().items()]),
}

# the same process loads every file in turn under an address-space limit 1.5 GiB above
# what the imports and one ordinary load took, and reports each outcome, time and RSS
_HUGE_CHILD = textwrap.dedent("""
    import json, os, resource, sys, time
    sys.path.insert(0, sys.argv[2])
    import numpy as np
    import fastrnn
    folder = sys.argv[1]
    fastrnn.from_onnx(os.path.join(folder, "warm_up.onnx"))     # ORT and the kernels loaded
    def vm():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = vm() + (3 << 29)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report = {}
    for name in sorted(os.listdir(folder)):
        start = time.perf_counter()
        try:
            m = fastrnn.from_onnx(os.path.join(folder, name))
            outcome = "checked %.3g" % m.parity_max_abs_diff
        except fastrnn.OnnxImportError as e:
            outcome = "refused: " + str(e)
        except BaseException as e:
            outcome = "ESCAPED %s: %s" % (type(e).__name__, str(e)[:300])
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        report[name[:-5]] = dict(outcome=outcome, seconds=time.perf_counter() - start,
                                 peak_growth=peak - before)
    print(json.dumps(report))
""")


def run_huge_cases(tmp_path, cases):
    """{case: {outcome, seconds, peak_growth}} from one child process."""
    folder = tmp_path / "files"
    folder.mkdir()
    for name, make in cases.items():
        (folder / f"{name}.onnx").write_bytes(make().SerializeToString())
    (tmp_path / "warm_up.onnx").write_bytes(lstm_model().SerializeToString())
    (folder / "warm_up.onnx").symlink_to(tmp_path / "warm_up.onnx")
    proc = subprocess.run([sys.executable, "-c", _HUGE_CHILD, str(folder), str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    report.pop("warm_up")
    return report


def test_sizes_a_file_declares_but_cannot_hold_cost_nothing(tmp_path):
    report = run_huge_cases(tmp_path, HUGE)
    assert set(report) == set(HUGE)
    for name, r in report.items():
        # refused with a message naming the file, without allocating what it declares
        assert r["outcome"].startswith("refused: "), (name, r)
        assert f"{name}.onnx" in r["outcome"], (name, r)
        assert r["peak_growth"] < 100 << 20, (name, r)
        assert r["seconds"] < 5, (name, r)          # measured: all under 0.1 s
    sizes = {n: report[n]["outcome"] for n in ("static_input_dims_5000", "static_batch_1e9")}
    for outcome in sizes.values():
        assert "check=False" in outcome             # says how to load it unchecked
    assert "hidden_size" in report["hidden_size_2e40_tiny_weights"]["outcome"]
    assert "Slice" in report["slice_end_2e31"]["outcome"]
    assert "holds 0 bytes" in report["initializer_dims_without_raw_data"]["outcome"]


def test_a_fixed_long_sequence_with_small_weights_is_checked_at_its_length(tmp_path):
    """A fixed T=5000 with tiny weights is a legitimate graph: ONNX Runtime must run it at
    T, and the check does, in the same small memory."""
    report = run_huge_cases(tmp_path, {
        "fixed_time_5000": lambda: lstm_model(x_dims=(5000, "B", 3)),
        "fixed_time_and_batch": lambda: lstm_model(x_dims=(3000, 2, 3))})
    for name, r in report.items():
        assert r["outcome"].startswith("checked "), (name, r)
        assert r["peak_growth"] < 100 << 20 and r["seconds"] < 10, (name, r)


def test_fixed_dims_within_the_limits_are_used_and_past_them_refused_with_the_reason():
    model = fastrnn.from_onnx(lstm_model(x_dims=(40, 7, 3)))
    assert model.parity_max_abs_diff < 1e-5 and model._check_sizes() == (40, 7)
    with pytest.raises(OnnxImportError, match=r"checking it needs .* values.*check=False"):
        fastrnn.from_onnx(lstm_model(x_dims=(2000, 2000, 3)))
    unchecked = fastrnn.from_onnx(lstm_model(x_dims=(2000, 2000, 3)), check=False)
    assert unchecked.parity_max_abs_diff is None and unchecked.input_names == ["X"]


# ---- (2) malformed graphs: one error class naming the file and the node -------------------

def _swap_bytes(model, placeholder, replacement):
    """The serialized model with ``placeholder`` (ASCII) replaced by ``replacement`` bytes
    of the same length (so every length prefix stays right)."""
    data = model.SerializeToString()
    assert len(placeholder) == len(replacement) and data.count(placeholder) == 1
    return data.replace(placeholder, replacement)


def _valid_bytes():
    return lstm_model().SerializeToString()


def _two_nodes(first, second):
    return lstm_model(nodes_after=[first, second], outputs=("Y",))


_RNN = "LSTM node 'rnn'"
MALFORMED = {   # name: (model, ModelProto or bytes; fragment naming the node, or None)
    "empty_file": (lambda: b"", None),
    "garbage_bytes": (lambda: bytes(np.random.default_rng(1).integers(0, 256, 300,
                                                                     dtype=np.uint8)), None),
    "truncated_protobuf": (lambda: _valid_bytes()[:len(_valid_bytes()) // 2], None),
    "not_a_model_just_a_tensor": (lambda: numpy_helper.from_array(
        np.ones(3, np.float32), "t").SerializeToString(), None),
    "missing_inputs": (lambda: lstm_model(inputs=("X",)), _RNN),
    "empty_required_input": (lambda: lstm_model(inputs=("", "W", "R")), _RNN),
    "reads_what_nothing_produces": (lambda: lstm_model(inputs=("X", "W", "nothing")), _RNN),
    "add_with_one_input": (lambda: lstm_model(nodes_after=[helper.make_node(
        "Add", ["Y"], ["Z"], name="add1")]), "Add node 'add1'"),
    "transpose_without_output": (lambda: lstm_model(nodes_after=[helper.make_node(
        "Transpose", ["Y"], [], name="t0", perm=[0, 2, 1, 3])]), "Transpose node 't0'"),
    "concat_empty_input": (lambda: lstm_model(nodes_after=[helper.make_node(
        "Concat", ["Y_h", ""], ["Z"], name="cat", axis=0)]), "Concat node 'cat'"),
    "hidden_size_as_float": (lambda: _attr_model("hidden_size", 2.5), _RNN),
    "hidden_size_as_string": (lambda: _attr_model("hidden_size", "two"), _RNN),
    "hidden_size_zero": (lambda: lstm_model(hidden_size=0), _RNN),
    "hidden_size_negative": (lambda: lstm_model(hidden_size=-3), _RNN),
    "direction_as_int": (lambda: lstm_model(attrs={"direction": 1}), _RNN),
    "activations_as_ints": (lambda: lstm_model(attrs={"activations": [1, 2, 3]}), _RNN),
    "perm_as_string": (lambda: lstm_model(nodes_after=[helper.make_node(
        "Transpose", ["Y"], ["Z"], name="t0", perm="0213")]), "Transpose node 't0'"),
    "attribute_given_twice": (lambda: _duplicate_attribute(), _RNN),
    "attribute_type_undefined": (lambda: _attribute_type(0), _RNN),
    "weights_2d": (lambda: lstm_model(weights={k: v[0] for k, v in lstm_weights().items()}),
                   _RNN),
    "weights_4d": (lambda: lstm_model(weights={k: v[None] for k, v in lstm_weights().items()}),
                   _RNN),
    "weights_wrong_gate_rows": (lambda: lstm_model(
        weights={k: v[:, :5] for k, v in lstm_weights().items()}), _RNN),
    "weights_int64": (lambda: lstm_model(
        weights={k: v.astype(np.int64) for k, v in lstm_weights().items()}), _RNN),
    "weights_not_finite": (lambda: lstm_model(
        weights=dict(lstm_weights(), R=np.full((1, 8, 2), np.inf, np.float32))),
        "initializer 'R'"),
    "weights_mixed_dtypes": (lambda: lstm_model(weights=dict(
        lstm_weights(), R=lstm_weights()["R"].astype(np.float64))), _RNN),
    "x_float64_weights_float32": (lambda: model_of(
        [helper.make_node("LSTM", ["X", "W", "R"], ["Y"], name="rnn", hidden_size=2)],
        [vi("X", ["T", "B", 3], TensorProto.DOUBLE)], [vi("Y", None)],
        [numpy_helper.from_array(v, n) for n, v in lstm_weights().items()]), _RNN),
    "x_feature_size_differs_from_w": (lambda: lstm_model(x_dims=("T", "B", 5)), _RNN),
    "x_declared_rank_2": (lambda: lstm_model(x_dims=("T", 3)), _RNN),
    "x_declared_negative_dim": (lambda: lstm_model(x_dims=("T", -4, 3)), "graph input 'X'"),
    "input_elem_type_unknown": (lambda: _input_elem_type(999), "graph input 'X'"),
    "input_elem_type_undefined": (lambda: _input_elem_type(0), "graph input 'X'"),
    "input_not_a_tensor": (lambda: _sequence_input(), "graph input 'X'"),
    "sequence_lens_float": (lambda: lstm_model(
        inputs=("X", "W", "R", "", "lens"), extra_inputs=[vi("lens", ["B"])]), _RNN),
    "non_utf8_node_name": (lambda: _swap_bytes(lstm_model(node_name="@@NAME@@"), b"@@NAME@@",
                                               b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8"), "node #0"),
    "non_utf8_input_name": (lambda: _rename(lstm_model(
        inputs=("X", "W", "R", "", "", "h0@"), extra_inputs=[vi("h0@", [1, "B", 2])]),
        b"h0@", b"h0\xc3"), None),
    "non_utf8_attribute_string": (lambda: _swap_bytes(lstm_model(attrs={"direction": "@@@@@@@"}),
                                                      b"@@@@@@@", b"forw\xe0rd"), _RNN),
    "non_utf8_op_type": (lambda: _swap_bytes(
        lstm_model(nodes_after=[helper.make_node("@@@@", ["Y"], ["Z"], name="odd")]),
        b"@@@@", b"\xc3\x28\xa0\xa1"), "node #1"),
    "non_utf8_metadata": (lambda: _swap_bytes(
        _with_metadata(lstm_model(), {"fastrnn.vocabulary": "@@@@"}), b"@@@@", b"\xff\xff\xff\xff"),
        "metadata"),
    "unknown_op": (lambda: lstm_model(nodes_after=[helper.make_node(
        "Relu", ["Y"], ["Z"], name="act")]), "Relu node 'act'"),
    "unknown_domain": (lambda: lstm_model(nodes_after=[helper.make_node(
        "Transpose", ["Y"], ["Z"], name="t0", domain="com.example", perm=[0, 2, 1, 3])]),
        "Transpose node 't0'"),
    "no_recurrent_node": (lambda: model_of([helper.make_node(
        "Identity", ["X"], ["Y"], name="id")], [vi("X", [2])], [vi("Y", None)]), None),
    "cycle_reads_own_output": (lambda: lstm_model(inputs=("Y", "W", "R")), _RNN),
    "cycle_two_nodes": (lambda: _two_nodes(
        helper.make_node("Transpose", ["Z2"], ["Z1"], name="ta", perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["Z1"], ["Z2"], name="tb", perm=[0, 2, 1, 3])),
        "Transpose node 'ta'"),
    "duplicate_output_name": (lambda: lstm_model(nodes_after=[helper.make_node(
        "Squeeze", ["Y", "W"], ["Y_h"], name="sq")]), "Squeeze node 'sq'"),
    "output_overwrites_input": (lambda: lstm_model(nodes_after=[helper.make_node(
        "Transpose", ["Y"], ["X"], name="t0", perm=[0, 2, 1, 3])]), "Transpose node 't0'"),
    "duplicate_graph_input": (lambda: lstm_model(extra_inputs=[vi("X", ["T", "B", 3])]),
                              "graph input 'X'"),
    "duplicate_initializer": (lambda: lstm_model(initializers=[numpy_helper.from_array(
        lstm_weights()["W"], "W")]), "initializer 'W'"),
    "graph_output_produced_by_nothing": (lambda: lstm_model(outputs=("Y", "nowhere")),
                                         "graph output 'nowhere'"),
    "reshape_float_shape": (lambda: _merge_with("Reshape", np.array([0., 0., -1.])),
                            "Reshape node 'merge'"),
    "reshape_nan_shape": (lambda: _merge_with("Reshape", np.array([0., np.nan, -1.])),
                          "initializer 'shape'"),
    "slice_float_bounds": (lambda: _float_slice(), "Slice node 'slice_h0'"),
    "slice_rows_not_d": (lambda: sliced_state_model(0, 3), _RNN),
    "constant_two_values": (lambda: lstm_model(nodes_before=[helper.make_node(
        "Constant", [], ["c"], name="k", value_int=1, value_float=2.0)]), "Constant node 'k'"),
    "constant_no_value": (lambda: lstm_model(nodes_before=[helper.make_node(
        "Constant", [], ["c"], name="k")]), "Constant node 'k'"),
    "constant_string_tensor": (lambda: lstm_model(nodes_before=[helper.make_node(
        "Constant", [], ["c"], name="k", value=helper.make_tensor(
            "s", TensorProto.STRING, [1], [b"\xff"]))]), "Constant node 'k'"),
    "initializer_external_data": (lambda: _external_initializer(), "initializer 'W'"),
    "initializer_negative_dims": (lambda: lstm_model(weights={}, initializers=[
        tensor_without_data("W", [1, -8, 3]), numpy_helper.from_array(
            lstm_weights()["R"], "R")]), "initializer 'W'"),
    "initializer_type_undefined": (lambda: lstm_model(initializers=[
        tensor_without_data("odd", [1], 0, raw_data=b"\0")]), "initializer 'odd'"),
    "sparse_initializer": (lambda: _sparse_initializer(), None),
    "layout_2": (lambda: lstm_model(attrs={"layout": 2}), _RNN),
    "gather_float_indices": (lambda: model_of(
        [helper.make_node("Gather", ["E", "ids"], ["emb"], name="embed"),
         helper.make_node("LSTM", ["emb", "W", "R"], ["Y"], name="rnn", hidden_size=2)],
        [vi("ids", ["T", "B"])], [vi("Y", None)],
        [numpy_helper.from_array(v, n) for n, v in dict(
            lstm_weights(), E=np.ones((4, 3), np.float32)).items()]), "Gather node 'embed'"),
}


def _attr_model(name, value):
    model = lstm_model()
    node = model.graph.node[0]
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))
    return model


def _duplicate_attribute():
    model = lstm_model()
    model.graph.node[0].attribute.append(helper.make_attribute("hidden_size", 2))
    return model


def _attribute_type(code):
    model = lstm_model()
    for a in model.graph.node[0].attribute:
        if a.name == "hidden_size":
            a.type = code
    return model


def _input_elem_type(code):
    model = lstm_model()
    model.graph.input[0].type.tensor_type.elem_type = code
    return model


def _sequence_input():
    model = lstm_model()
    model.graph.input[0].CopyFrom(helper.make_tensor_sequence_value_info("X", F32, None))
    return model


def _rename(model, old, new):
    data = model.SerializeToString()
    return data.replace(old, new)


def _with_metadata(model, entries):
    for k, v in entries.items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    return model


def _merge_with(op, shape):
    """A bidirectional-free LSTM whose Y goes through a Reshape with a constant shape."""
    model = lstm_model(nodes_after=[helper.make_node(op, ["Y", "shape"], ["Z"], name="merge")],
                       initializers=[numpy_helper.from_array(shape, "shape")])
    return model


def _float_slice():
    model = sliced_state_model(0, 1)
    for t in model.graph.initializer:
        if t.name in ("start", "end"):
            t.CopyFrom(numpy_helper.from_array(
                np.array([0.0 if t.name == "start" else 1.5], np.float32), t.name))
    return model


def _external_initializer():
    model = lstm_model()
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    entry = w.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    return model


def _sparse_initializer():
    model = lstm_model()
    values = numpy_helper.from_array(np.ones(1, np.float32), "sp")
    indices = numpy_helper.from_array(np.zeros(1, np.int64), "sp_i")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4]))
    return model


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_graph_raises_the_one_error_naming_file_and_node(name, tmp_path):
    make, node = MALFORMED[name]
    made = make()
    data = made if isinstance(made, bytes) else made.SerializeToString()
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(data)
    with pytest.raises(OnnxImportError) as info:
        fastrnn.from_onnx(path)
    message = str(info.value)
    assert message.startswith(str(path) + ": "), message
    assert info.value.source == str(path)
    if node is not None:
        assert node in message, message
    assert len(message) < 600, message
    # bytes and a ModelProto are named too
    with pytest.raises(OnnxImportError, match=r"^ONNX bytes \(\d+ bytes\): "):
        fastrnn.from_onnx(data)
    assert issubclass(OnnxImportError, ValueError)


def test_the_error_class_is_one_public_name():
    from fastrnn.interop import OnnxImportError as from_interop
    from fastrnn.interop.onnx_import import OnnxImportError as from_module
    assert fastrnn.OnnxImportError is from_interop is from_module
    assert "OnnxImportError" in fastrnn.__all__ and "OnnxImportError" in dir(fastrnn)


def test_special_files_are_refused_before_opening(tmp_path):
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    code = ("import fastrnn, sys\n"
            "try:\n    fastrnn.from_onnx(sys.argv[1])\n"
            "except fastrnn.OnnxImportError as e:\n    print('refused', e)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.stdout.startswith(f"refused {fifo}: "), proc.stdout + proc.stderr
    with pytest.raises(OnnxImportError, match="not a regular file"):
        fastrnn.from_onnx(tmp_path)
    with pytest.raises(FileNotFoundError):
        fastrnn.from_onnx(tmp_path / "missing.onnx")


# ---- (2b) mutation fuzz ---------------------------------------------------------------------

def _seed_models():
    """Valid files of several shapes: fastrnn's exporter (lengths, states, 2 layers,
    bidirectional, embedding + head) and a hand-made layout-1 GRU."""
    seeds = []
    layer = fastrnn.LSTM(3, 4, num_layers=2, bidirectional=True, seed=0)
    seeds.append(fastrnn.to_onnx(layer, with_lengths=True, with_state=True, check=False))
    model = fastrnn.SequenceModel("gru", vocab_size=7, embedding_dim=3, hidden_size=4,
                                  output_size=7, task="next_token", seed=0)
    seeds.append(fastrnn.to_onnx(model, check=False))
    seeds.append(lstm_model(attrs={"layout": 1}, x_dims=("B", "T", 3)))
    return [s.SerializeToString() for s in seeds]


def _mutate_bytes(data, rng):
    data = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        op, at = int(rng.integers(0, 5)), int(rng.integers(0, len(data)))
        if op == 0:
            data[at] = int(rng.integers(0, 256))
        elif op == 1:
            data[at] ^= 1 << int(rng.integers(0, 8))
        elif op == 2:
            del data[at:at + int(rng.integers(1, 9))]
        elif op == 3:
            data[at:at] = bytes(rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8))
        else:                                  # a varint that says "huge"
            data[at:at] = b"\xff\xff\xff\xff\x0f"
    return bytes(data)


def _mutate_fields(data, rng):
    """A structural mutation: one field of one node, tensor or input changed."""
    model = onnx.ModelProto.FromString(data)
    g = model.graph
    choice = int(rng.integers(0, 9))
    node = g.node[int(rng.integers(0, len(g.node)))]
    big = int(rng.choice([0, -1, 1, 2, 3, 2 ** 31, 2 ** 40, 2 ** 62]))
    if choice == 0 and node.input:
        del node.input[int(rng.integers(0, len(node.input)))]
    elif choice == 1 and node.input:
        node.input[int(rng.integers(0, len(node.input)))] = rng.choice(
            [""] + [o for n in g.node for o in n.output] + [i.name for i in g.input])
    elif choice == 2 and node.attribute:
        a = node.attribute[int(rng.integers(0, len(node.attribute)))]
        a.type = int(rng.integers(0, 15))    # every AttributeType
        a.i, a.f, a.s = big, float(big), b"\xff" if rng.random() < 0.5 else b"forward"
        a.ints.extend([big])
    elif choice == 3 and g.initializer:
        t = g.initializer[int(rng.integers(0, len(g.initializer)))]
        if t.dims:
            t.dims[int(rng.integers(0, len(t.dims)))] = big
        else:
            t.dims.append(big)
    elif choice == 4 and g.input:
        dims = g.input[int(rng.integers(0, len(g.input)))].type.tensor_type.shape.dim
        if len(dims):
            dims[int(rng.integers(0, len(dims)))].dim_value = big
    elif choice == 5:
        node.op_type = str(rng.choice(["LSTM", "GRU", "RNN", "Slice", "Concat", "Add", "Gemm",
                                       "Softmax", "Constant", "Cast", "Squeeze"]))
    elif choice == 6:
        g.node.insert(int(rng.integers(0, len(g.node) + 1)), node)      # a duplicate node
    elif choice == 7 and g.initializer:
        t = g.initializer[int(rng.integers(0, len(g.initializer)))]
        t.data_type = int(rng.choice(list(TensorProto.DataType.values())))
    else:
        node.output.append(str(rng.choice([o.name for o in g.output] + ["x"])))
    return model.SerializeToString()


def fuzz(n, seed=0, check=True):
    """(mutations tried, loaded, refused, parity errors); raises on anything else, naming
    the case."""
    seeds = _seed_models()
    rng = np.random.default_rng(seed)
    loaded = refused = mismatched = 0
    for k in range(n):
        data = seeds[k % len(seeds)]
        data = (_mutate_bytes if k % 2 else _mutate_fields)(data, rng)
        try:
            fastrnn.from_onnx(data, check=check)
            loaded += 1
        except OnnxImportError as e:
            assert str(e).startswith("ONNX bytes ("), str(e)
            refused += 1
        except ParityError as e:
            # a valid graph whose mutated weights are huge (1e7 and up): float32 rounding
            # of outputs that large passes the check's absolute tolerance; NaN and infinity
            # are refused when the file is read, so the outputs are finite
            assert "largest absolute difference" in str(e), str(e)
            mismatched += 1
        except Exception as e:       # noqa: BLE001 - the finding, with its input
            raise AssertionError(f"mutation {k} (seed {seed}) escaped as {type(e).__name__}: "
                                 f"{e}; input {data.hex()}") from e
    return n, loaded, refused, mismatched


def test_mutation_fuzz_only_loads_or_raises_the_error_class():
    tried, loaded, refused, mismatched = fuzz(1000)          # about half a second
    assert tried == loaded + refused + mismatched and refused > 100 and loaded > 20


@pytest.mark.long
def test_mutation_fuzz_long():
    """200,000 mutations (about a minute)."""
    for seed in range(1, 21):
        fuzz(10_000, seed)
