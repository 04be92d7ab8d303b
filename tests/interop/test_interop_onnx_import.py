"""ONNX import (fastrnn.interop.onnx_import), against ONNX's conformance cases, ONNX Runtime
and onnx.reference.ReferenceEvaluator.

Where the two ONNX oracles disagree (found while writing these tests, pinned by the tests
named after them):

* ReferenceEvaluator ignores ``sequence_lens``: it runs every row over all T steps. The spec
  says steps past a row's length are padding and Y is zero there; ONNX Runtime follows the
  spec, and equals the reference evaluator run on each row cut to its own length. So
  ragged rows are checked against ONNX Runtime and against the evaluator row by row.
* ReferenceEvaluator ignores ``input_forget``; ONNX Runtime couples the gates as the spec
  says (f = 1 - i, the f weights, biases and p_f unused). Coupled LSTMs: ONNX Runtime only.
* A row of length 0: the spec is silent; ONNX Runtime returns Y_h = Y_c = 0 and from_onnx
  follows it (a fastrnn layer returns the initial state for such a row).
* ONNX Runtime's CPU kernels take float32 and layout 0 only: layout-1 graphs are compared
  with ONNX Runtime on their layout-0 twin (same weights, transposed inputs and outputs),
  float64 graphs with ONNX Runtime on their float32 twin at float32's tolerance.
  ReferenceEvaluator has no RNN Relu.
"""
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import fastrnn  # noqa: E402
from fastrnn.interop import ParityError, check_parity, default_tolerance  # noqa: E402
from fastrnn.interop import onnx_layout  # noqa: E402
from fastrnn.interop.onnx_import import OnnxImportError, from_onnx  # noqa: E402

# ONNX 1.23's conformance cases whose node is RNN, GRU or LSTM: a new onnx version that adds
# one fails test_conformance_case_list until it is listed here.
CONFORMANCE_CASES = [
    "test_gru_defaults", "test_gru_with_initial_bias", "test_gru_seq_length",
    "test_gru_batchwise", "test_gru_reverse", "test_gru_bidirectional",
    "test_lstm_defaults", "test_lstm_with_initial_bias", "test_lstm_with_peepholes",
    "test_lstm_batchwise", "test_lstm_reverse", "test_lstm_bidirectional",
    "test_simple_rnn_defaults", "test_simple_rnn_with_initial_bias", "test_rnn_seq_length",
    "test_simple_rnn_batchwise", "test_simple_rnn_reverse", "test_simple_rnn_bidirectional",
]
DIRECTIONS = ["forward", "reverse", "bidirectional"]
# (op, builder options): every cell kind and variant ONNX has and fastrnn runs
CELLS = {
    "rnn_tanh": ("RNN", {}),
    "rnn_relu": ("RNN", {"activations": ["Relu"]}),
    "lstm": ("LSTM", {}),
    "lstm_peephole": ("LSTM", {"peepholes": True}),
    "lstm_input_forget": ("LSTM", {"input_forget": 1}),
    "lstm_input_forget_peephole": ("LSTM", {"input_forget": 1, "peepholes": True}),
    "gru_linear_before_reset_0": ("GRU", {"linear_before_reset": 0}),
    "gru_linear_before_reset_1": ("GRU", {"linear_before_reset": 1}),
}
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


@pytest.fixture(scope="module")
def conformance():
    from onnx.backend.test.case.node import collect_testcases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # collect everything: the op_type filter only works on a process's first call
        cases = collect_testcases()
    return {c.name: c for c in cases if c.model is not None and
            any(n.op_type in ("RNN", "GRU", "LSTM") for n in c.model.graph.node)}


# ---- graph builders and oracles ---------------------------------------------------------

def recurrent_graph(op, *, direction="forward", layout=0, dtype=np.float32, T=5, B=4, I=3, H=4,
                    bias=True, peepholes=False, input_forget=0, linear_before_reset=None,
                    activations=None, lengths=None, initial=False, weights_as_inputs=False,
                    attrs=None, seed=0):
    """One RNN/LSTM/GRU node: (model, feeds). Random values are drawn time-major whatever
    the layout, so the layout-0 and layout-1 graphs of one seed hold the same numbers."""
    rng = np.random.default_rng(seed)
    D, G, k = 2 if direction == "bidirectional" else 1, GATES[op], 1 / np.sqrt(H)
    tensors = {"W": rng.uniform(-k, k, (D, G * H, I)), "R": rng.uniform(-k, k, (D, G * H, H))}
    if bias:
        tensors["B"] = rng.uniform(-k, k, (D, 2 * G * H))
    if peepholes:
        tensors["P"] = rng.uniform(-k, k, (D, 3 * H))
    x = rng.standard_normal((T, B, I))
    feeds = {"X": x.transpose(1, 0, 2) if layout else x}
    if lengths is not None:
        feeds["sequence_lens"] = np.asarray(lengths, np.int32)
    for name in ["initial_h", "initial_c"][:(2 if op == "LSTM" else 1) if initial else 0]:
        s = rng.uniform(-0.5, 0.5, (D, B, H))
        feeds[name] = s.transpose(1, 0, 2) if layout else s
    tensors = {n: v.astype(dtype) for n, v in tensors.items()}
    feeds = {n: v if v.dtype.kind in "iu" else v.astype(dtype) for n, v in feeds.items()}
    if weights_as_inputs:
        feeds.update(tensors)
    slots = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"][
        :8 if op == "LSTM" else 6]
    present = set(tensors) | set(feeds)
    names = [n if n in present else "" for n in slots]
    while not names[-1]:
        names.pop()
    a = dict(hidden_size=H, direction=direction, **(attrs or {}))
    if layout:
        a["layout"] = 1
    if input_forget:
        a["input_forget"] = input_forget
    if linear_before_reset is not None:
        a["linear_before_reset"] = linear_before_reset
    if activations:        # given for one direction (ONNX Runtime wants them for each)
        a["activations"] = activations * D
    outs = {"Y": 4, "Y_h": 3, **({"Y_c": 3} if op == "LSTM" else {})}
    node = helper.make_node(op, names, list(outs), **a)
    return make_model([node], feeds, outs, {} if weights_as_inputs else tensors, dtype), feeds


def make_model(nodes, feeds, outputs, initializers, dtype=np.float32, opset=14):
    """A checked ONNX model; ``outputs`` maps each output name to its rank."""
    elem = helper.np_dtype_to_tensor_dtype
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, elem(v.dtype), v.shape)
                     for n, v in feeds.items()],
        [helper.make_tensor_value_info(n, elem(np.dtype(dtype)), [f"{n}_{i}" for i in range(r)])
         for n, r in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def ort_run(model, feeds):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def ort_twin(op, options, feeds_dtype):
    """ONNX Runtime's outputs for a graph it cannot run itself (layout 1 or float64): the
    same numbers as a float32 layout-0 graph, outputs brought back to the asked layout."""
    twin = dict(options, layout=0, dtype=np.float32)
    model, feeds = recurrent_graph(op, **twin)
    outs = ort_run(model, feeds)
    if options.get("layout"):
        outs = [outs[0].transpose(2, 0, 1, 3)] + [s.transpose(1, 0, 2) for s in outs[1:]]
    return [o.astype(feeds_dtype) for o in outs]


def reference_by_row(model, feeds, layout):
    """onnx.reference.ReferenceEvaluator run on each row cut to its length (it ignores
    sequence_lens); rows of length 0 get zeros, as ONNX Runtime gives."""
    from onnx.reference import ReferenceEvaluator
    ref = ReferenceEvaluator(model)
    lengths = feeds.get("sequence_lens")
    if lengths is None:
        return ref.run(None, feeds)
    outs = [np.zeros_like(o) for o in ref.run(None, feeds)]      # shapes; values overwritten
    for b, L in enumerate(lengths):
        if L == 0:
            continue
        row = dict(feeds, sequence_lens=np.array([L], np.int32))
        row["X"] = feeds["X"][b:b + 1, :L] if layout else feeds["X"][:L, b:b + 1]
        for n in ("initial_h", "initial_c"):
            if n in feeds:
                row[n] = feeds[n][b:b + 1] if layout else feeds[n][:, b:b + 1]
        Y, *states = ref.run(None, row)
        if layout:
            outs[0][b, :L] = Y[0]
        else:
            outs[0][:L, :, b] = Y[:, :, 0]
        for o, s in zip(outs[1:], states):
            if layout:
                o[b] = s[0]
            else:
                o[:, b] = s[:, 0]
    return outs


def assert_parity(what, ours, theirs, dtype, tol=None):
    tol = default_tolerance(dtype) if tol is None else tol
    return check_parity(what, ours, theirs, tol)
def _config(cell, direction, layout, dtype):
    """A random configuration, fixed per test id: sizes, bias, ragged lengths (some with an
    empty row), initial states."""
    op, options = CELLS[cell]
    index = ((list(CELLS).index(cell) * 3 + DIRECTIONS.index(direction)) * 2 + layout) * 2 + \
        (dtype == np.float64)
    rng = np.random.default_rng(index)
    T, B = int(rng.integers(2, 7)), int(rng.integers(3, 6))
    lengths = None
    if index % 3:
        lengths = rng.integers(1, T + 1, B)
        lengths[0] = T
        if index % 3 == 2:
            lengths[-1] = 0
    return op, dict(options, direction=direction, layout=layout, dtype=dtype, T=T, B=B,
                    I=int(rng.integers(1, 5)), H=int(rng.integers(1, 6)),
                    bias=bool(rng.random() < 0.8), lengths=lengths,
                    initial=bool((index // 3) % 2), seed=index)


# ---- (1) ONNX's conformance cases ----------------------------------------------------------

def test_conformance_case_list(conformance):
    assert sorted(conformance) == sorted(CONFORMANCE_CASES)


@pytest.mark.parametrize("name", CONFORMANCE_CASES)
def test_conformance_case(conformance, name):
    case = conformance[name]
    model = from_onnx(case.model)          # W, R, B... are graph inputs, read from the feeds
    assert 0 <= model.parity_max_abs_diff <= default_tolerance(np.float32)
    for inputs, expected in case.data_sets:
        got = model.run(dict(zip([i.name for i in case.model.graph.input], inputs)))
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=case.rtol, atol=case.atol)


# ---- (2) random configurations against ONNX Runtime and the reference evaluator ---------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("cell", list(CELLS))
def test_random_configuration(cell, direction, layout, dtype):
    op, options = _config(cell, direction, layout, dtype)
    model, feeds = recurrent_graph(op, **options)
    # the reference evaluator ignores input_forget and has no Relu (module docstring)
    reference_ok = not options.get("input_forget") and not options.get("activations")
    imported = from_onnx(model, check=dtype == np.float32 or not options.get("input_forget"))
    if imported.parity_max_abs_diff is not None:
        assert imported.parity_oracle == ("onnxruntime" if dtype == np.float32 else
                                          "onnx.reference.ReferenceEvaluator")
    ours = imported.run(feeds)
    if dtype == np.float32 and not layout:
        theirs = ort_run(model, feeds)
    else:
        theirs = ort_twin(op, options, dtype)
    assert_parity("against ONNX Runtime", ours, theirs, dtype, default_tolerance(np.float32))
    if reference_ok:
        assert_parity("against the reference evaluator", ours,
                      reference_by_row(model, feeds, layout), dtype)
    lengths = options["lengths"]
    if lengths is not None and lengths[-1] == 0:
        for state in ours[1:]:
            assert not np.take(state, -1, axis=1 - layout).any()


def test_float64_checks_on_the_reference_evaluator_and_refuses_what_it_cannot_check():
    model, _ = recurrent_graph("GRU", dtype=np.float64, lengths=[5, 2, 3, 1])
    imported = from_onnx(model)
    assert imported.parity_oracle == "onnx.reference.ReferenceEvaluator"
    assert imported.parity_max_abs_diff <= 1e-12
    coupled, _ = recurrent_graph("LSTM", dtype=np.float64, input_forget=1)
    with pytest.raises(OnnxImportError, match="input_forget"):
        from_onnx(coupled)
    assert from_onnx(coupled, check=False).parity_max_abs_diff is None


def test_input_forget_onnxruntime_couples_gates_reference_evaluator_ignores_it():
    from onnx.reference import ReferenceEvaluator
    H = 4
    model, feeds = recurrent_graph("LSTM", H=H, input_forget=1, peepholes=True, initial=True,
                                   lengths=[5, 5, 5, 5], weights_as_inputs=True)
    changed = {k: v.copy() for k, v in feeds.items()}
    changed["W"][:, 2 * H:3 * H] += 1          # ONNX gate order i, o, f, c: the f blocks
    changed["R"][:, 2 * H:3 * H] += 1
    changed["B"][:, 2 * H:3 * H] += 1
    changed["B"][:, 6 * H:7 * H] += 1
    changed["P"][:, 2 * H:] += 1               # P = [p_i, p_o, p_f]
    ort_before, ort_after = ort_run(model, feeds), ort_run(model, changed)
    for a, b in zip(ort_before, ort_after):    # the spec's coupling: f's weights unused
        np.testing.assert_array_equal(a, b)
    ref = ReferenceEvaluator(model)
    assert np.abs(ref.run(None, feeds)[0] - ref.run(None, changed)[0]).max() > 1e-3
    imported = from_onnx(model)
    for ours_before, ours_after, theirs in zip(imported.run(feeds), imported.run(changed),
                                               ort_before):
        np.testing.assert_array_equal(ours_before, ours_after)
        assert_parity("coupled LSTM against ONNX Runtime", ours_before, theirs, np.float32)


@pytest.mark.parametrize("op", ["RNN", "LSTM", "GRU"])
def test_sequence_lens_onnxruntime_follows_spec_reference_evaluator_ignores_it(op):
    from onnx.reference import ReferenceEvaluator
    model, feeds = recurrent_graph(op, direction="bidirectional", lengths=[5, 2, 3, 1],
                                   initial=True)
    ort = ort_run(model, feeds)
    assert np.abs(ReferenceEvaluator(model).run(None, feeds)[0][2:, :, 1]).max() > 0
    assert not ort[0][2:, :, 1].any()          # Y is zero past the row's length
    # each row equals a run over its valid steps alone (so reverse reads them backwards)
    assert_parity("ONNX Runtime against the row-wise reference", ort,
                  reference_by_row(model, feeds, 0), np.float32)
    assert_parity("ours against ONNX Runtime", from_onnx(model).run(feeds), ort, np.float32)


def test_zero_length_row_ends_in_zero_state_as_onnxruntime_gives():
    model, feeds = recurrent_graph("LSTM", direction="bidirectional", lengths=[5, 0, 3, 2],
                                   initial=True)
    imported = from_onnx(model)
    ours, theirs = imported.run(feeds), ort_run(model, feeds)
    for o, t in zip(ours[1:], theirs[1:]):
        assert not t[:, 1].any() and not o[:, 1].any()
    assert_parity("against ONNX Runtime", ours, theirs, np.float32)
    # the fastrnn layer holds the initial state of an empty row instead
    layer = imported.to_fastrnn()
    _, (h_n, c_n) = layer(feeds["X"], (feeds["initial_h"], feeds["initial_c"]),
                          feeds["sequence_lens"])
    np.testing.assert_array_equal(h_n[:, 1], feeds["initial_h"][:, 1])


# ---- (3) refusals --------------------------------------------------------------------------

def _graph_then(op_type, perm=None):
    """An LSTM whose Y goes through one more node."""
    model, feeds = recurrent_graph("LSTM")
    extra = helper.make_node(op_type, ["Y"], ["Z"], **({"perm": perm} if perm else {}))
    return make_model([model.graph.node[0], extra], feeds, {"Z": 4},
                      {t.name: numpy_helper.to_array(t) for t in model.graph.initializer})


REFUSALS = {
    "rnn_sigmoid_activation": (lambda: recurrent_graph("RNN", activations=["Sigmoid"])[0],
                               "activations"),
    "lstm_custom_activation": (lambda: recurrent_graph(
        "LSTM", activations=["HardSigmoid", "Tanh", "Tanh"])[0], "activations"),
    "gru_reverse_direction_relu": (lambda: recurrent_graph(
        "GRU", direction="bidirectional", attrs={"activations": [
            "Sigmoid", "Tanh", "Sigmoid", "Relu"]})[0], "activations"),
    "clip": (lambda: recurrent_graph("GRU", attrs={"clip": 3.0})[0], "clip"),
    "activation_alpha": (lambda: recurrent_graph(
        "RNN", activations=["Tanh"], attrs={"activation_alpha": [0.5]})[0], "activation_alpha"),
    "float16": (lambda: recurrent_graph("GRU", dtype=np.float16)[0], "float16"),
    "unknown_op": (lambda: _graph_then("Relu"), "op 'Relu'"),
    "unsupported_pattern": (lambda: _graph_then("Transpose", [3, 2, 1, 0]), "Transpose"),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_refusal(name):
    make, match = REFUSALS[name]
    with pytest.raises(OnnxImportError, match=match):
        from_onnx(make())


def test_to_fastrnn_refuses_what_has_no_fastrnn_equivalent():
    with pytest.raises(OnnxImportError, match="reverse"):
        from_onnx(recurrent_graph("LSTM", direction="reverse")[0]).to_fastrnn()
    with pytest.raises(OnnxImportError, match="initializers"):
        from_onnx(recurrent_graph("GRU", weights_as_inputs=True)[0]).to_fastrnn()
    mixed = stacked_graph(["LSTM", "GRU"], D=1, batch_first=False)[0]
    with pytest.raises(OnnxImportError, match="differs from the first recurrent node in op"):
        from_onnx(mixed).to_fastrnn()
    time_major, feeds = stacked_graph(["GRU"], D=1, batch_first=False, head="per_step")
    imported = from_onnx(time_major)                            # run() handles it ...
    assert_parity("time-major head", imported.run(feeds), ort_run(time_major, feeds),
                  np.float32)
    with pytest.raises(OnnxImportError, match="time-major"):   # ... a SequenceModel cannot
        imported.to_fastrnn()
    inner_y, _ = stacked_graph(["LSTM"] * 2, D=1, batch_first=False)
    inner_y.graph.output.append(helper.make_tensor_value_info("Y0", TensorProto.FLOAT, None))
    with pytest.raises(OnnxImportError, match="Y output of recurrent node 0"):
        from_onnx(inner_y).to_fastrnn()     # a fastrnn layer does not give inner layers' Y


def test_bad_feeds_and_arguments():
    model, feeds = recurrent_graph("GRU", lengths=[5, 3, 2, 1])
    imported = from_onnx(model)
    with pytest.raises(ValueError, match="missing inputs \\['sequence_lens'\\]"):
        imported.run({"X": feeds["X"]})
    with pytest.raises(TypeError, match="float64"):
        imported.run(dict(feeds, X=feeds["X"].astype(np.float64)))
    with pytest.raises(ValueError, match="lengths must lie in"):
        imported.run(dict(feeds, sequence_lens=np.array([6, 1, 1, 1], np.int32)))
    with pytest.raises(TypeError, match="path, bytes or an onnx.ModelProto"):
        from_onnx(42)
    with pytest.raises(ParityError):
        from_onnx(model, tol=-1.0)             # the check is wired: any difference fails


def test_loads_paths_and_bytes(tmp_path):
    model, feeds = recurrent_graph("RNN")
    onnx.save(model, tmp_path / "rnn.onnx")
    expected = ort_run(model, feeds)
    for source in (str(tmp_path / "rnn.onnx"), tmp_path / "rnn.onnx", model.SerializeToString()):
        imported = from_onnx(source)
        assert imported.input_names == ["X"] and imported.output_names == ["Y", "Y_h"]
        assert_parity("loaded", imported.run(feeds), expected, np.float32)


def test_run_takes_onnxruntimes_call_output_names_then_feeds():
    """run(output_names, feeds) as InferenceSession.run: None for all, or names in the
    order asked; run(feeds) keeps working."""
    ort = pytest.importorskip("onnxruntime")
    model, feeds = recurrent_graph("LSTM", lengths=[5, 3, 2, 1], initial=True)
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    imported = from_onnx(model)
    assert imported.output_names == [o.name for o in session.get_outputs()]
    for names in (None, ["Y_h"], ["Y_c", "Y"], ("Y", "Y_h", "Y_c"), ["Y_h", "Y_h"]):
        ours, theirs = imported.run(names, feeds), session.run(names, feeds)
        assert len(ours) == len(theirs)
        assert_parity(f"run({names})", ours, theirs, np.float32)
    assert_parity("run(feeds)", imported.run(feeds), session.run(None, feeds), np.float32)
    assert_parity("run_options", imported.run(None, feeds, ort.RunOptions()),
                  session.run(None, feeds), np.float32)
    with pytest.raises(ValueError, match=r"output names \['Z'\] are not outputs"):
        imported.run(["Z"], feeds)
    with pytest.raises(TypeError, match="output_names must be None or a list"):
        imported.run("Y", feeds)
    with pytest.raises(TypeError, match="feeds must be a dict"):
        imported.run(None, [feeds["X"]])


def _torch_export(module, args, names, dynamic_axes):
    import io
    torch = pytest.importorskip("torch")
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # the legacy exporter's deprecation and batch notes
        torch.onnx.export(module, args, buffer, dynamo=False, input_names=names[0],
                          output_names=names[1], dynamic_axes=dynamic_axes)
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic_x"])
def test_pytorch_export_with_fixed_state_batch_is_checked_at_that_batch(num_layers, dynamic):
    """torch.onnx.export fixes initial_h/c0 at the example's batch (1) even when x's axes
    are dynamic: the check must run at B=1 (ONNX Runtime refused B=3 before)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.LSTM(3, 5, num_layers=num_layers)
    x, h0, c0 = torch.randn(7, 1, 3), torch.randn(num_layers, 1, 5), torch.randn(num_layers, 1, 5)
    model = _torch_export(module, (x, (h0, c0)), (["x", "h0", "c0"], ["y", "h_n", "c_n"]),
                          {"x": {0: "T", 1: "B"}} if dynamic else None)
    imported = from_onnx(model)
    assert imported._check_sizes() == (6 if dynamic else 7, 1)
    assert imported.parity_max_abs_diff <= default_tolerance(np.float32)
    with torch.no_grad():
        y, (h_n, c_n) = module(x, (h0, c0))
    assert_parity("from_onnx against PyTorch", imported.run(None, {
        "x": x.numpy(), "h0": h0.numpy(), "c0": c0.numpy()}), [
        y.numpy(), h_n.numpy(), c_n.numpy()], np.float32)


def test_hand_made_fixed_batch_states_and_conflicts():
    model, feeds = recurrent_graph("GRU", initial=True, B=1)
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "batch"   # X (T, batch, I)
    imported = from_onnx(model)                        # initial_h alone says B = 1
    assert imported._check_sizes() == (5, 1)              # T = 5 as X declares
    assert_parity("fixed-batch state", imported.run(feeds), ort_run(model, feeds), np.float32)
    # a constant initial state of batch 2 fixes B too
    const, _ = recurrent_graph("RNN", B=2)
    const.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "batch"
    const.graph.initializer.append(numpy_helper.from_array(
        np.full((1, 2, 4), 0.25, np.float32), "initial_h"))
    const.graph.node[0].input.extend(["", "initial_h"])
    assert from_onnx(const)._check_sizes() == (5, 2)
    # X fixes B = 4, initial_h B = 1: ONNX Runtime could never run it
    clash, _ = recurrent_graph("GRU", initial=True, B=4)
    clash.graph.input[1].type.tensor_type.shape.dim[1].dim_value = 1
    with pytest.raises(OnnxImportError, match=r"fixes the batch two ways: 4 .*'X'.* and 1 "
                                              r".*'initial_h'"):
        from_onnx(clash)


# ---- (4) to_fastrnn ------------------------------------------------------------------------

def _layer_outputs_as_onnx(out, state_n, layout, D, H):
    """A fastrnn layer's (out, h_n[, c_n]) in the ONNX node's shapes: Y, Y_h[, Y_c]."""
    states = state_n if isinstance(state_n, tuple) else (state_n,)
    if layout:
        B, T = out.shape[:2]
        return [out.reshape(B, T, D, H)] + [s.transpose(1, 0, 2) for s in states]
    T, B = out.shape[:2]
    return [out.reshape(T, B, D, H).transpose(0, 2, 1, 3)] + list(states)


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_to_fastrnn_layer_matches_onnxruntime(cell, direction, layout):
    op, options = CELLS[cell]
    options = dict(options, direction=direction, layout=layout, lengths=[5, 3, 1, 4],
                   initial=True, seed=7)
    model, feeds = recurrent_graph(op, **options)
    layer = from_onnx(model).to_fastrnn()
    assert type(layer) is getattr(fastrnn, op)
    assert (layer.batch_first, layer.bidirectional) == (bool(layout), direction != "forward")
    if op == "LSTM":
        coupled = bool(options.get("input_forget"))
        assert layer.coupled == coupled
        assert layer.peephole == (("io" if coupled else "ifo") if options.get("peepholes") else "")
    if op == "GRU":
        assert layer.reset_after == bool(options["linear_before_reset"])
    if op == "RNN":
        assert layer.nonlinearity == ("relu" if options.get("activations") else "tanh")
    assert 0 <= layer.parity_max_abs_diff <= default_tolerance(np.float32)
    states = [feeds[n].transpose(1, 0, 2) if layout else feeds[n]
              for n in ("initial_h", "initial_c") if n in feeds]
    out, state_n = layer(feeds["X"], tuple(states) if op == "LSTM" else states[0],
                         feeds["sequence_lens"])
    theirs = ort_twin(op, options, np.float32) if layout else ort_run(model, feeds)
    D = 2 if direction == "bidirectional" else 1
    assert_parity("fastrnn layer against ONNX Runtime",
                  _layer_outputs_as_onnx(out, state_n, layout, D, 4), theirs, np.float32)


def stacked_graph(ops, *, D, batch_first, head=None, activation="Softmax", vocab=None, H=4,
                  I=3, T=5, B=4, O=3, peepholes=False, with_state=False, weights=None,
                  attrs=None, seed=0):
    """The exporter's pattern: [ids -Gather->] [Transpose] -> node -> (Transpose + Reshape |
    Squeeze) -> node ... -> [Transpose] -> [MatMul + Add | (Y_h) Gemm] -> [activation];
    lengths int64 -Cast-> int32; with_state: inputs h0 [c0] (L*D, B, H), Slice per layer;
    outputs (the head's or the last sequence, Concat of Y_h)."""
    rng = np.random.default_rng(seed)
    f32, k = np.float32, 1 / np.sqrt(H)
    init = {"merge": np.array([0, 0, -1]), "axis1": np.array([1]), "flat": np.array([0, -1]),
            "axis0": np.array([0])}
    nodes, feeds = [], {}
    order = (B, T) if batch_first else (T, B)
    if vocab:
        feeds["ids"] = rng.integers(0, vocab, order)
        init["embedding"] = rng.standard_normal((vocab, I)).astype(f32)
        nodes.append(helper.make_node("Gather", ["embedding", "ids"], ["x_emb"]))
        cur = "x_emb"
    else:
        feeds["x"] = rng.standard_normal(order + (I,)).astype(f32)
        cur = "x"
    if batch_first:
        nodes.append(helper.make_node("Transpose", [cur], ["x_tm"], perm=[1, 0, 2]))
        cur = "x_tm"
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    feeds["lengths"] = lengths
    nodes.append(helper.make_node("Cast", ["lengths"], ["lens32"], to=TensorProto.INT32))
    states = ["h0", "c0"][:(2 if ops[0] == "LSTM" else 1) if with_state else 0]
    for name in states:
        feeds[name] = rng.uniform(-0.5, 0.5, (len(ops) * D, B, H)).astype(f32)
    for n, op in enumerate(ops):
        G, In = GATES[op], I if n == 0 else D * H
        W, R, Bb, P = weights[n] if weights else (
            rng.uniform(-k, k, (D, G * H, In)), rng.uniform(-k, k, (D, G * H, H)),
            rng.uniform(-k, k, (D, 2 * G * H)),
            rng.uniform(-k, k, (D, 3 * H)) if peepholes and op == "LSTM" else None)
        names = [cur]
        for name, v in zip("WRB", (W, R, Bb)):
            init[f"{name}{n}"] = v.astype(f32)
            names.append(f"{name}{n}")
        names.append("lens32")
        for name in states:                     # this layer's rows of h0 / c0
            init[f"start{n}"], init[f"end{n}"] = np.array([n * D]), np.array([n * D + D])
            nodes.append(helper.make_node("Slice", [name, f"start{n}", f"end{n}", "axis0"],
                                          [f"{name}_{n}"]))
            names.append(f"{name}_{n}")
        if P is not None:
            init[f"P{n}"] = P.astype(f32)
            names += [""] * (7 - len(names)) + [f"P{n}"]
        outs = [f"Y{n}", f"Y_h{n}"] + ([f"Y_c{n}"] if op == "LSTM" else [])
        nodes.append(helper.make_node(op, names, outs, hidden_size=H,
                                      direction="bidirectional" if D == 2 else "forward",
                                      **(attrs[n] if attrs else {})))
        if D == 2:
            nodes.append(helper.make_node("Transpose", [f"Y{n}"], [f"Yt{n}"], perm=[0, 2, 1, 3]))
            nodes.append(helper.make_node("Reshape", [f"Yt{n}", "merge"], [f"seq{n}"]))
        else:
            nodes.append(helper.make_node("Squeeze", [f"Y{n}", "axis1"], [f"seq{n}"]))
        cur = f"seq{n}"
    nodes.append(helper.make_node("Concat", [f"Y_h{n}" for n in range(len(ops))], ["h_n"], axis=0))
    outputs = {cur: 3, "h_n": 3}
    if head:
        if head == "per_step":
            if batch_first:
                nodes.append(helper.make_node("Transpose", [cur], ["out_bf"], perm=[1, 0, 2]))
                cur = "out_bf"
            init["head_w"] = rng.uniform(-0.5, 0.5, (D * H, O)).astype(f32)
            nodes.append(helper.make_node("MatMul", [cur, "head_w"], ["mm"]))
            nodes.append(helper.make_node("Add", ["mm", "head_b"], ["logits"]))
        else:
            last = f"Y_h{len(ops) - 1}"
            if D == 2:
                nodes.append(helper.make_node("Transpose", [last], ["h_bd"], perm=[1, 0, 2]))
                nodes.append(helper.make_node("Reshape", ["h_bd", "flat"], ["feats"]))
            else:
                nodes.append(helper.make_node("Squeeze", [last, "axis0"], ["feats"]))
            init["head_w"] = rng.uniform(-0.5, 0.5, (O, D * H)).astype(f32)
            nodes.append(helper.make_node("Gemm", ["feats", "head_w", "head_b"], ["logits"],
                                          transB=1))
        init["head_b"] = rng.uniform(-0.5, 0.5, O).astype(f32)
        rank = 3 if head == "per_step" else 2
        outputs = {"logits": rank, "h_n": 3}
        if activation:
            nodes.append(helper.make_node(activation, ["logits"], ["probs"]))
            outputs = {"probs": rank, "h_n": 3}
    return make_model(nodes, feeds, outputs, init), feeds


def test_stacked_lstm_with_embedding_and_softmax_head():
    model, feeds = stacked_graph(["LSTM"] * 2, D=2, batch_first=True, head="per_step", vocab=7)
    imported = from_onnx(model)
    theirs = ort_run(model, feeds)
    assert_parity("from_onnx", imported.run(feeds), theirs, np.float32)
    seq = imported.to_fastrnn()
    assert isinstance(seq, fastrnn.SequenceModel)
    assert {k: seq.config[k] for k in ("cell", "num_layers", "bidirectional", "vocab_size",
                                       "task")} == dict(cell="lstm", num_layers=2,
                                                        bidirectional=True, vocab_size=7,
                                                        task="per_step_classification")
    probs = seq.predict_proba(feeds["ids"], feeds["lengths"])
    (h_n, _) = seq.forward(feeds["ids"], feeds["lengths"])[1]
    assert_parity("SequenceModel against ONNX Runtime", [probs, h_n], theirs, np.float32)


def test_stacked_coupled_peephole_lstm_with_sigmoid_head():
    model, feeds = stacked_graph(["LSTM"] * 2, D=1, batch_first=True, head="per_step",
                                 activation="Sigmoid", peepholes=True,
                                 attrs=[{"input_forget": 1}] * 2)
    seq = from_onnx(model).to_fastrnn()
    assert seq.config["task"] == "multilabel" and seq.rnn.coupled and seq.rnn.peephole == "io"
    probs = seq.predict_proba(feeds["x"], feeds["lengths"])
    assert_parity("SequenceModel against ONNX Runtime", probs, ort_run(model, feeds)[0],
                  np.float32)


@pytest.mark.parametrize("op", ["RNN", "LSTM", "GRU"])
def test_stacked_initial_states_sliced_per_layer(op):
    model, feeds = stacked_graph([op] * 3, D=2, batch_first=True, with_state=True)
    theirs = ort_run(model, feeds)
    imported = from_onnx(model)
    assert_parity("from_onnx", imported.run(feeds), theirs, np.float32)
    layer = imported.to_fastrnn()
    state = (feeds["h0"], feeds["c0"]) if op == "LSTM" else feeds["h0"]
    out, state_n = layer(feeds["x"], state, feeds["lengths"])
    h_n = state_n[0] if op == "LSTM" else state_n
    assert_parity("fastrnn stack against ONNX Runtime", [out.transpose(1, 0, 2), h_n], theirs,
                  np.float32)


def test_stacked_time_major_gru_maps_to_a_layer():
    model, feeds = stacked_graph(["GRU"] * 3, D=1, batch_first=False,
                                 attrs=[{"linear_before_reset": 1}] * 3)
    layer = from_onnx(model).to_fastrnn()
    assert isinstance(layer, fastrnn.GRU) and layer.num_layers == 3
    assert not layer.batch_first and layer.reset_after
    out, h_n = layer(feeds["x"], None, feeds["lengths"])
    assert_parity("GRU stack against ONNX Runtime", [out, h_n], ort_run(model, feeds),
                  np.float32)


def test_last_state_head_with_gemm():
    model, feeds = stacked_graph(["RNN"] * 2, D=2, batch_first=True, head="last")
    seq = from_onnx(model).to_fastrnn()
    assert seq.config["task"] == "sequence_classification"
    assert_parity("last-state head against ONNX Runtime",
                  seq.predict_proba(feeds["x"], feeds["lengths"]), ort_run(model, feeds)[0],
                  np.float32)


LAYER_KW = {"rnn_tanh": {}, "rnn_relu": {"nonlinearity": "relu"}, "lstm": {},
            "lstm_peephole": {"peephole": True}, "lstm_input_forget": {"coupled": True},
            "lstm_input_forget_peephole": {"coupled": True, "peephole": "io"},
            "gru_linear_before_reset_0": {"reset_after": False},
            "gru_linear_before_reset_1": {"reset_after": True}}


@pytest.mark.parametrize("cell", list(CELLS))
def test_round_trip_fastrnn_onnx_fastrnn_is_bit_identical(cell):
    from _helpers import assert_identical
    op, options = CELLS[cell]
    layer = getattr(fastrnn, op)(3, 4, num_layers=2, bidirectional=True, batch_first=True,
                                 seed=3, **LAYER_KW[cell])
    rng = np.random.default_rng(3)
    for v in layer.params.values():
        v[...] = rng.uniform(-0.5, 0.5, v.shape)
    kind, weights = onnx_layout.kind_of(layer), []
    for n in range(2):
        per_direction = [onnx_layout.to_onnx_slices(kind, *onnx_layout.direction_weights(
            layer, n, reverse)) for reverse in (False, True)]
        weights.append([None if per_direction[0][j] is None else
                        np.stack([p[j] for p in per_direction]) for j in range(4)])
    attrs = {k: v for k, v in options.items() if k in ("input_forget", "linear_before_reset")}
    if "activations" in options:
        attrs["activations"] = options["activations"] * 2
    model, feeds = stacked_graph([op] * 2, D=2, batch_first=True, weights=weights,
                                 attrs=[attrs] * 2)
    # the exported graph computes the layer's function (ONNX Runtime is the judge) ...
    out, state_n = layer(feeds["x"], None, feeds["lengths"])
    h_n = state_n[0] if op == "LSTM" else state_n
    assert_parity("fastrnn layer against its ONNX graph", [out.transpose(1, 0, 2), h_n],
                  ort_run(model, feeds), np.float32)
    # ... and importing it gives the same weights, bit for bit
    back = from_onnx(model).to_fastrnn()
    assert sorted(back.params) == sorted(layer.params)
    for name, v in layer.state_dict().items():
        assert_identical(name, back.params[name], v)


# ---- onnx_layout ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind, onnx_blocks, onnx_peepholes", [
    ("rnn", [1], None),
    ("lstm", [1, 4, 2, 3], [1, 3, 2]),          # fastrnn i,f,g,o -> ONNX i,o,f,c; P = i,o,f
    ("lstm_coupled", [1, 3, 0, 2], [1, 3, 0]),  # fastrnn i,g,o -> ONNX i,o,(f unused),c
    ("gru", [2, 1, 3], None),                   # fastrnn r,z,n -> ONNX z,r,h
])
def test_layout_gate_tables_follow_the_onnx_spec(kind, onnx_blocks, onnx_peepholes):
    H, I = 2, 3
    G = len([b for b in onnx_blocks if b])
    label = np.repeat(np.arange(1.0, G + 1), H)              # fastrnn block j holds j + 1
    peep = None if onnx_peepholes is None else {
        g: np.full(H, v) for g, v in zip("ifo", (1.0, 2.0, 3.0)) if kind == "lstm" or g != "f"}
    W, R, B, P = onnx_layout.to_onnx_slices(kind, np.outer(label, np.ones(I)),
                                            np.outer(label, np.ones(H)), label, -label, peep)
    np.testing.assert_array_equal(W[::H, 0], onnx_blocks)
    np.testing.assert_array_equal(R[::H, 0], onnx_blocks)
    np.testing.assert_array_equal(B[::H], onnx_blocks + [-b for b in onnx_blocks])
    if onnx_peepholes is not None:
        np.testing.assert_array_equal(P[::H], onnx_peepholes)
    # and back, bit for bit, on random values
    rng = np.random.default_rng(0)
    fast = [rng.standard_normal((G * H, I)), rng.standard_normal((G * H, H)),
            rng.standard_normal(G * H), rng.standard_normal(G * H)]
    peep = None if peep is None else {g: rng.standard_normal(H) for g in peep}
    back = onnx_layout.from_onnx_slices(kind, *onnx_layout.to_onnx_slices(kind, *fast, peep))
    for a, b in zip(back[:4], fast):
        np.testing.assert_array_equal(a, b)
    assert back[4].keys() == (peep or {}).keys()
    for g in back[4]:
        np.testing.assert_array_equal(back[4][g], peep[g])


# ---- round trips through fastrnn's own exporter ------------------------------------------

def _exporter():
    import importlib.util
    if importlib.util.find_spec("fastrnn.interop.onnx_export") is None:
        pytest.skip("fastrnn/interop/onnx_export.py (the exporter) is not in this tree")
    from fastrnn.interop.onnx_export import to_onnx
    return to_onnx


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_exporter_round_trip_layer(cell, dtype):
    to_onnx = _exporter()
    op, _ = CELLS[cell]
    layer = getattr(fastrnn, op)(3, 4, num_layers=2, bidirectional=True, batch_first=True,
                                 dtype=dtype, seed=5, **LAYER_KW[cell])
    rng = np.random.default_rng(5)
    for v in layer.params.values():
        v[...] = rng.uniform(-0.5, 0.5, v.shape)
    imported = from_onnx(to_onnx(layer, with_lengths=True, with_state=True))
    assert imported.parity_max_abs_diff <= default_tolerance(dtype)
    back = imported.to_fastrnn()
    assert type(back) is type(layer) and back.batch_first
    assert sorted(back.params) == sorted(layer.params)
    from _helpers import assert_identical
    for name, v in layer.state_dict().items():
        assert_identical(name, back.params[name], v)


@pytest.mark.parametrize("task", ["next_token", "sequence_classification", "multilabel",
                                  "sequence_regression"])
def test_exporter_round_trip_sequence_model(task):
    to_onnx = _exporter()
    tokens = task == "next_token"
    model = fastrnn.SequenceModel("gru", input_size=None if tokens else 3,
                                  vocab_size=6 if tokens else None, hidden_size=4,
                                  output_size=None if tokens else 2, task=task, num_layers=2,
                                  bidirectional=True, seed=2)
    back = from_onnx(to_onnx(model, with_lengths=True)).to_fastrnn()
    assert {k: back.config[k] for k in model.config} == model.config   # + explicit defaults
    from _helpers import assert_identical
    for name, v in model.named_parameters().items():
        assert_identical(name, back.named_parameters()[name], v)
