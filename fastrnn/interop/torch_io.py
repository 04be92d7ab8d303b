"""PyTorch <-> fastrnn: ``nn.RNN``/``nn.LSTM``/``nn.GRU`` and their cells, both ways, checked.

fastrnn stores PyTorch's parameter names, shapes and gate orders (LSTM i, f, g, o; GRU
r, z, n; ``weight_ih_l{k} (G*H, I)``, ``weight_hh_l{k} (G*H, H)``, ``bias_ih_l{k}``,
``bias_hh_l{k} (G*H,)``, ``_reverse`` for the second direction), so the weights cross as
exact copies, float32 as float32 and float64 as float64. What has to be read and checked is
the configuration: a module says it; a bare state dict says the sizes through its shapes
(G = rows / columns of ``weight_hh``: 1 RNN, 3 GRU, 4 LSTM) but not the RNN nonlinearity
nor the layout (``batch_first``), which the caller may give.

Every crossing runs both sides on one random input with a random initial state, unless
``check=False``, and compares the outputs and final states with
:func:`fastrnn.interop.check_parity` (raising :class:`ParityError` above the tolerance); the
largest absolute difference is attached to the result as ``parity_max_abs_diff`` (None when
not checked). Shapes: layers ``x (T, B, I)`` (``(B, T, I)`` with batch_first), states
``(L*D, B, H)``; cells ``x (B, I)``, states ``(B, H)``.

Not supported, refused by name: ``proj_size`` (LSTM projections), and on export the
fastrnn-only variants (peephole or coupled LSTM, GRU with ``reset_after=False``).
"""
import copy
import re
import sys
import warnings
from collections.abc import Mapping

import numpy as np

from .._spec import float_dtype
from ..nn import layers as L
from .parity import check_parity

__all__ = ["from_torch", "to_torch", "read_state_dict", "write_state_dict", "run_torch"]

_LAYERS = {"rnn": L.RNN, "lstm": L.LSTM, "gru": L.GRU}
_CELLS = {"rnn": L.RNNCell, "lstm": L.LSTMCell, "gru": L.GRUCell}
_KIND_OF_GATES = {1: "rnn", 4: "lstm", 3: "gru"}
_TORCH_NAMES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
_KIND_OF_NAME = {v: k for k, v in _TORCH_NAMES.items()}
# a parameter of a layer (with _l<k>) or of a cell (without)
_KEY = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh)(?:_l(0|[1-9][0-9]*)(_reverse)?)?")
_PARITY_T, _PARITY_B = 5, 3          # the random input of every check: 5 steps, 3 rows


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("PyTorch interop needs torch: pip install 'fastrnn[torch]'") from None
    return torch


def _torch_dtype(torch, dtype):
    return torch.float64 if np.dtype(dtype) == np.float64 else torch.float32


# ---- PyTorch -> fastrnn ------------------------------------------------------------------

def from_torch(source, *, check=True, tol=None, kind=None, nonlinearity=None, batch_first=None,
               dtype=None, prefix=None):
    """A fastrnn ``RNN``/``LSTM``/``GRU`` (or ``RNNCell``/``LSTMCell``/``GRUCell``) holding
    exact copies of a PyTorch module's or state dict's weights.

    ``source`` is one of:

    * an ``nn.RNN``, ``nn.LSTM``, ``nn.GRU``, ``nn.RNNCell``, ``nn.LSTMCell`` or
      ``nn.GRUCell`` (configuration read from it; ``proj_size`` refused);
    * any other module holding them, with ``prefix`` naming the one to import
      (``from_torch(model, prefix="encoder.rnn")``, as ``model.get_submodule`` names it);
      without it the error lists the recurrent submodules found;
    * one of those modules compiled by TorchScript, live (``torch.jit.script``,
      ``torch.jit.trace``, or what ``torch.jit.load`` returned): a scripted module keeps its
      configuration as attributes; a traced one keeps only its weights and graph, whose
      ``aten::lstm``/``gru``/``rnn_*`` call says ``batch_first`` and the nonlinearity (a
      traced cell: the tanh or relu it applies). The parity check runs the TorchScript
      module itself (without an initial state when it was traced without one). fastrnn
      never loads TorchScript files: ``torch.jit.load`` runs the TorchScript code the file
      holds, so loading one is the caller's decision, for files they trust;
    * a state dict (a mapping of names to torch tensors or numpy arrays), or a checkpoint
      holding one (a dict whose ``"state_dict"``, ``"model_state_dict"``, ``"model"``,
      ``"net"``, ``"network"`` or ``"module"`` entry is the state dict, the first found;
      the rest, such as ``"optimizer"``, is ignored). Of a whole model's state dict,
      ``prefix`` selects one module's entries (``"encoder.rnn"`` or ``"encoder.rnn."``;
      with ``DataParallel``'s ``"module."`` in front where it is); without it the keys must
      all belong to one module (a prefix they share is stripped), else the error lists the
      recurrent modules found, with their kind, layers and sizes. Keys with ``_l<k>`` make
      a layer stack (layers, directions, bias and sizes read from the keys and shapes);
      keys without make a cell. What a state dict cannot say:

      * ``kind``: "rnn", "lstm" or "gru"; inferred from the gate count, given to assert it;
      * ``nonlinearity``: of an RNN, "tanh" (the default: a state dict does not record it,
        and the parity check cannot tell, since it rebuilds the module with the same
        assumption) or "relu";
      * ``batch_first``: the layout of the layer made (default False, PyTorch's).

    For a module these are read from it; passing one that disagrees raises ValueError.
    ``dtype``: None keeps the source's float32 or float64 (other dtypes are refused);
    float32 or float64 converts (the parity check then runs PyTorch in that dtype too; a
    traced module, whose graph fixes its dtype, is refused).

    Example (PyTorch installed)::

        >>> import torch, numpy as np, fastrnn
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> lstm = fastrnn.from_torch(torch.nn.LSTM(3, 5, num_layers=2, batch_first=True))
        >>> lstm, lstm.parity_max_abs_diff < 1e-4
        (LSTM(3, 5, num_layers=2, batch_first=True), True)
        >>> cell = fastrnn.from_torch(torch.nn.GRUCell(3, 5).state_dict())
        >>> type(cell).__name__
        'GRUCell'

    ``check``: run the module (for a state dict, a module PyTorch builds from it) and the
    result on a random input and initial state; raises ParityError when outputs or final
    states differ by more than ``tol`` (default :func:`default_tolerance`). The largest
    absolute difference is set as ``result.parity_max_abs_diff`` (None when not checked).
    """
    if kind is not None and kind not in _LAYERS:
        raise ValueError(f"kind must be 'rnn', 'lstm' or 'gru', got {kind!r}")
    if prefix is not None and not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str (a module's name, e.g. 'encoder.rnn'), got "
                        f"{type_name(prefix)}")
    torch = sys.modules.get("torch")
    with_state = True
    if torch is not None and isinstance(source, torch.nn.Module):
        source = _submodule(torch, source, prefix)
        if _is_traced(torch, source) and _module_kind(torch, source)[0] is not None:
            ours, reference = _from_traced(torch, source, kind, nonlinearity, batch_first,
                                           dtype)
            with_state = _traced_takes_state(source)
        else:
            ours, reference = _from_module(torch, source, kind, nonlinearity, batch_first,
                                           dtype)
    elif isinstance(source, Mapping):
        state = _select_module(_state_dict_of(source), prefix)
        ours, reference = _from_state_dict(state, kind, nonlinearity, batch_first, dtype)
    else:
        raise TypeError("from_torch takes an nn.RNN, nn.LSTM, nn.GRU, nn.RNNCell, nn.LSTMCell "
                        f"or nn.GRUCell, or a state dict; got {type_name(source)}")
    ours.parity_max_abs_diff = None
    if check:
        ours.parity_max_abs_diff = _parity("from_torch", ours, reference(), tol, with_state)
    return ours


# ---- which module: prefix=, checkpoints, TorchScript -------------------------------------

# the entries in which common checkpoint layouts keep the model's state dict, first found
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module")


def _is_array(v):
    return isinstance(v, np.ndarray) or (type(v).__module__.startswith("torch") and
                                         hasattr(v, "detach"))


def _state_dict_of(source):
    """The state dict in ``source``: itself when every value is a tensor or an array, else
    its first _CHECKPOINT_KEYS entry that is one (a training checkpoint)."""
    if all(_is_array(v) for v in source.values()):
        return source
    for key in _CHECKPOINT_KEYS:
        inner = source.get(key)
        if isinstance(inner, Mapping) and inner and all(_is_array(v) for v in inner.values()):
            return inner
    odd = next(k for k, v in source.items() if not _is_array(v))
    raise TypeError(f"{odd!r}: expected a torch tensor or a numpy array, got "
                    f"{type_name(source[odd])}; a checkpoint must keep its state dict in one "
                    f"of the entries {', '.join(repr(k) for k in _CHECKPOINT_KEYS)}")


def _recurrent_modules(state):
    """{prefix: description} of the recurrent modules among a state dict's keys (those
    with a weight_hh[_l0] and weight_ih[_l0]), described from their shapes."""
    groups = {}
    for key in state:
        if isinstance(key, str):
            parent, _, leaf = key.rpartition(".")
            groups.setdefault(parent, {})[leaf] = state[key]
    found = {}
    for parent, leaves in groups.items():
        cell = "weight_hh" in leaves
        hh, ih = ("weight_hh", "weight_ih") if cell else ("weight_hh_l0", "weight_ih_l0")
        if hh not in leaves or ih not in leaves:
            continue
        W_hh, W_ih = tuple(leaves[hh].shape), tuple(leaves[ih].shape)
        if len(W_hh) != 2 or len(W_ih) != 2 or not W_hh[1] or W_hh[0] % W_hh[1]:
            continue
        name = _TORCH_NAMES.get(_KIND_OF_GATES.get(W_hh[0] // W_hh[1]), "?")
        sizes = f"input_size {W_ih[1]}, hidden_size {W_hh[1]}"
        if cell:
            found[parent] = f"{name}Cell, {sizes}"
            continue
        layers = {m.group(2) for m in map(_KEY.fullmatch, leaves) if m and m.group(2)}
        both = ", bidirectional" if any(leaf.endswith("_reverse") for leaf in leaves) else ""
        found[parent] = (f"{name}, {len(layers)} layer{'s' if len(layers) > 1 else ''}, "
                         f"{sizes}{both}")
    return found


def _listing(found):
    if not found:
        return "no recurrent module found (none has weight_ih and weight_hh entries)"
    return "recurrent modules found: " + ", ".join(f"{p!r} ({d})" for p, d in found.items())


def _select_module(state, prefix):
    """The entries of the one recurrent module ``prefix`` names (all of ``state`` when
    None and its keys share one parent)."""
    if prefix is None:
        parents = {k.rpartition(".")[0] if isinstance(k, str) else None for k in state}
        if len(parents) <= 1:
            if state and all(isinstance(k, str) for k in state) and not any(isinstance(k, str) and _KEY.fullmatch(k.rpartition(".")[2])
                       for k in state):
                raise ValueError(f"{_listing({})}: the state dict's keys are "
                                 f"{list(state)[:6]}")
            return state
        first = next(iter(state))
        odd = next(k for k in state if (k.rpartition(".")[0] if isinstance(k, str) else None)
                   != first.rpartition(".")[0])
        raise ValueError(f"the state dict holds more than one module ({first!r} and {odd!r} "
                         f"belong to different ones): pass prefix= naming the recurrent one; "
                         f"{_listing(_recurrent_modules(state))}")
    parent = prefix[:-1] if prefix.endswith(".") else prefix
    found = _recurrent_modules(state)
    if parent not in found:
        raise ValueError(f"prefix={prefix!r} matches no recurrent module of the state dict; "
                         f"{_listing(found)}")
    return {k: v for k, v in state.items() if k.rpartition(".")[0] == parent}


def _recurrent_submodules(torch, module):
    """{name: description} of the torch.nn recurrent modules inside ``module``."""
    found = {}
    for name, m in module.named_modules():
        kind, is_cell = _module_kind(torch, m)
        if kind is not None and name:
            found[name] = (f"{_TORCH_NAMES[kind]}{'Cell' if is_cell else ''}, "
                           + (f"{m.num_layers} layer{'s' if m.num_layers > 1 else ''}, "
                              if not is_cell else "")
                           + f"input_size {m.input_size}, hidden_size {m.hidden_size}"
                           + (", bidirectional" if getattr(m, "bidirectional", False) else ""))
    return found


def _submodule(torch, module, prefix):
    """The recurrent module ``prefix`` names inside ``module`` (``module`` itself when
    None); refused, listing what is there, when it names none."""
    if prefix is None:
        if _module_kind(torch, module)[0] is None and not _is_traced(torch, module):
            found = _recurrent_submodules(torch, module)
            if found:
                raise TypeError(f"{type_name(module)} is not a recurrent module: pass prefix= "
                                f"naming the one to import; {_listing(found)}")
        return module
    name = prefix[:-1] if prefix.endswith(".") else prefix
    try:
        inner = module.get_submodule(name)
    except AttributeError:
        inner = None
    if inner is None or _module_kind(torch, inner)[0] is None:
        raise ValueError(f"prefix={prefix!r} names {'nothing' if inner is None else 'a ' + type_name(inner)}"
                         f" in the {type_name(module)}, not a recurrent module; "
                         f"{_listing(_recurrent_submodules(torch, module))}")
    return inner


def _module_kind(torch, m):
    """(kind, is_cell) of an nn.RNN/LSTM/GRU or cell, or of one TorchScript compiled
    (its original_name says which); (None, None) for any other module."""
    nn = torch.nn
    for kind, layer, cell in (("rnn", nn.RNN, nn.RNNCell), ("lstm", nn.LSTM, nn.LSTMCell),
                              ("gru", nn.GRU, nn.GRUCell)):
        if isinstance(m, (layer, cell)):
            return kind, isinstance(m, cell)
    if isinstance(m, torch.jit.ScriptModule):
        name = getattr(m, "original_name", "")
        kind = _KIND_OF_NAME.get(name.removesuffix("Cell"))
        if kind is not None:
            return kind, name.endswith("Cell")
    return None, None


def _is_traced(torch, m):
    """A TorchScript module that keeps no configuration attributes (torch.jit.trace's, or
    a traced module saved and loaded again)."""
    return isinstance(m, torch.jit.ScriptModule) and not hasattr(m, "hidden_size")


def _traced_takes_state(m):
    """Whether a traced module's forward takes an initial state (it was traced with one)."""
    return len(list(m.graph.inputs())) > 2                      # self, x[, state]


# the aten call a traced nn.RNN/LSTM/GRU makes; its .input overload ends in batch_first
_ATEN_RNN = {"aten::lstm": "lstm", "aten::gru": "gru", "aten::rnn_tanh": "rnn",
             "aten::rnn_relu": "rnn"}


def _traced_config(m, kind, is_cell):
    """(nonlinearity or None, batch_first or None) that a traced module's graph fixes."""
    nodes = list(m.inlined_graph.nodes())
    if is_cell:                     # a traced cell is its gate arithmetic
        relu = any(n.kind() in ("aten::relu", "aten::relu_") for n in nodes)
        return ("relu" if relu else "tanh") if kind == "rnn" else None, None
    calls = [n for n in nodes if n.kind() in _ATEN_RNN]
    if len(calls) != 1 or _ATEN_RNN[calls[0].kind()] != kind or \
            "bool batch_first" not in calls[0].schema():
        raise ValueError(f"cannot read the traced {m.original_name}'s configuration: its "
                         f"graph makes {[n.kind() for n in calls]}, not one aten call of a "
                         f"{_TORCH_NAMES[kind]} on a tensor (traced on a PackedSequence?)")
    nl = ("relu" if calls[0].kind() == "aten::rnn_relu" else "tanh") if kind == "rnn" else None
    return nl, bool(list(calls[0].inputs())[-1].toIValue())


def _from_traced(torch, m, kind, nonlinearity, batch_first, dtype):
    """A traced module: sizes from its state dict, the rest from its graph; the parity
    check runs the traced module itself."""
    found, is_cell = _module_kind(torch, m)
    module_nl, module_bf = _traced_config(m, found, is_cell)
    for name, given, actual in (("kind", kind, found), ("nonlinearity", nonlinearity, module_nl),
                                ("batch_first", batch_first, module_bf)):
        if given is not None and given != actual:
            raise ValueError(f"{name}={given!r} disagrees with the traced module, which has "
                             f"{name}={actual!r}")
    state = m.state_dict()
    own = {str(v.dtype) for v in state.values()}
    if dtype is not None and own != {str(_torch_dtype(torch, dtype))}:
        raise ValueError(f"dtype={np.dtype(dtype).name}: a traced module's graph fixes its dtype "
                         f"({', '.join(sorted(own))}); convert the module before tracing it")
    ours, _ = _from_state_dict(state, found, module_nl, module_bf, dtype)
    return ours, lambda: m


def _from_module(torch, m, kind, nonlinearity, batch_first, dtype):
    """An nn module, or one scripted with torch.jit.script (same attributes)."""
    module_kind, is_cell = _module_kind(torch, m)
    if module_kind is None:
        what = f"TorchScript {getattr(m, 'original_name', '?')}" if \
            isinstance(m, torch.jit.ScriptModule) else type_name(m)
        raise TypeError("from_torch takes nn.RNN, nn.LSTM, nn.GRU, nn.RNNCell, nn.LSTMCell or "
                        f"nn.GRUCell (or TorchScript of one); {what} is not supported")
    found, found_cell = (None, module_kind) if is_cell else (module_kind, None)
    if getattr(m, "proj_size", 0):
        raise ValueError(f"proj_size={m.proj_size} (an LSTM with projections) is not supported "
                         "by fastrnn")
    given_kind = found or found_cell
    module_nl = getattr(m, "nonlinearity", None)
    for name, given, actual in (("kind", kind, given_kind),
                                ("nonlinearity", nonlinearity, module_nl),
                                ("batch_first", batch_first, getattr(m, "batch_first", None))):
        if given is not None and given != actual:
            raise ValueError(f"{name}={given!r} disagrees with the module, which has "
                             f"{name}={actual!r}")
    arrays = {k: _as_numpy(k, v, dtype) for k, v in m.state_dict().items()}
    target = _common_dtype(arrays, dtype)
    if found_cell:
        ours = _new_cell(found_cell, m.input_size, m.hidden_size, m.bias, target, module_nl)
    else:
        extra = {"nonlinearity": module_nl} if found == "rnn" else {}
        ours = _LAYERS[found](m.input_size, m.hidden_size, m.num_layers, bias=m.bias,
                              batch_first=m.batch_first, dropout=m.dropout,
                              bidirectional=m.bidirectional, dtype=target, **extra)
    _check_names_and_shapes(ours, arrays, {k: k for k in arrays})
    _copy_into_fastrnn(ours, {k: a.astype(target) for k, a in arrays.items()})

    def reference():
        want = _torch_dtype(torch, target)
        on_cpu = all(p.device.type == "cpu" and p.dtype == want for p in m.parameters())
        return m if on_cpu else copy.deepcopy(m).to(device="cpu", dtype=want)
    return ours, reference


def _from_state_dict(state, kind, nonlinearity, batch_first, dtype):
    if nonlinearity is not None and nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    if not state:
        raise ValueError("the state dict is empty")
    for k in state:
        if not isinstance(k, str):
            raise TypeError(f"state dict keys must be strings, got {k!r}")
    leaves = _strip_prefix(list(state))                   # leaf name -> original key
    layered = {leaf for leaf in leaves if _KEY.fullmatch(leaf).group(2) is not None}
    if layered and len(layered) != len(leaves):
        cell_key = leaves[next(leaf for leaf in leaves if leaf not in layered)]
        raise ValueError(f"{cell_key!r} is a cell's parameter (no _l<k>) but other keys are a "
                         "layer stack's: one module per state dict")
    arrays = {leaf: _as_numpy(key, state[key], dtype) for leaf, key in leaves.items()}
    target = _common_dtype(arrays, dtype)
    is_cell = not layered
    hh = "weight_hh" if is_cell else "weight_hh_l0"
    ih = "weight_ih" if is_cell else "weight_ih_l0"
    for need in (hh, ih):
        if need not in arrays:
            raise ValueError(f"the state dict has no {need!r} (after stripping the prefix): "
                             "cannot tell the sizes")
    W_hh = arrays[hh]                                     # (G*H, H)
    if W_hh.ndim != 2 or W_hh.shape[1] == 0 or W_hh.shape[0] % W_hh.shape[1]:
        raise ValueError(f"{leaves[hh]!r} has shape {W_hh.shape}; expected (G*H, H)")
    G, H = W_hh.shape[0] // W_hh.shape[1], W_hh.shape[1]
    inferred = _KIND_OF_GATES.get(G)
    if inferred is None:
        raise ValueError(f"{leaves[hh]!r} has shape {W_hh.shape}: {G} gate blocks of H={H}; "
                         "expected 1 (RNN), 3 (GRU) or 4 (LSTM)")
    if kind is not None and kind != inferred:
        raise ValueError(f"kind={kind!r}, but {leaves[hh]!r} has {G} gate blocks, "
                         f"which is {inferred!r}")
    if nonlinearity is not None and inferred != "rnn":
        raise ValueError(f"nonlinearity applies to an RNN; this state dict is {inferred!r}")
    W_ih = arrays[ih]                                     # (G*H, I)
    if W_ih.ndim != 2 or W_ih.shape[1] == 0:
        raise ValueError(f"{leaves[ih]!r} has shape {W_ih.shape}; expected (G*H, input_size)")
    I, bias = W_ih.shape[1], any(leaf.startswith("bias") for leaf in arrays)
    nl = nonlinearity or "tanh"
    if is_cell:
        if batch_first is not None:
            raise ValueError("batch_first applies to a layer; this state dict is a cell's")
        ours = _new_cell(inferred, I, H, bias, target, nl)
        config = dict(input_size=I, hidden_size=H, bias=bias)
    else:
        found = [_KEY.fullmatch(leaf).groups() for leaf in arrays]
        seen = {int(layer) for _, layer, _ in found}
        num_layers = len(seen)
        if seen != set(range(num_layers)):      # checked before anything is allocated
            gap = next(k for k in range(num_layers + 1) if k not in seen)
            raise ValueError(f"the state dict has keys for layer {max(seen)} but none for "
                             f"layer {gap}")
        bidirectional = any(rev for _, _, rev in found)
        config = dict(input_size=I, hidden_size=H, num_layers=num_layers, bias=bias,
                      batch_first=bool(batch_first), bidirectional=bidirectional)
        ours = _LAYERS[inferred](dtype=target, **config,
                                 **({"nonlinearity": nl} if inferred == "rnn" else {}))
    _check_names_and_shapes(ours, arrays, leaves)
    _copy_into_fastrnn(ours, {k: a.astype(target) for k, a in arrays.items()})

    def reference():
        # PyTorch builds the same module from the same state dict by its own rules
        torch = _torch()
        nn = torch.nn
        cls = getattr(nn, _TORCH_NAMES[inferred] + ("Cell" if is_cell else ""))
        extra = {"nonlinearity": nl} if inferred == "rnn" else {}
        module = cls(**config, **extra, dtype=_torch_dtype(torch, target))
        module.load_state_dict({leaf: _as_tensor(torch, state[key])
                                for leaf, key in leaves.items()})
        return module
    return ours, reference


def _strip_prefix(keys):
    """{leaf: key}: every key without the prefix all of them share (up to its last dot).
    Keys that are not parameters of one recurrent module are refused by name."""
    prefixes = {k.rpartition(".")[0] for k in keys}
    if len(prefixes) > 1:
        first = keys[0].rpartition(".")[0]
        odd = next(k for k in keys if k.rpartition(".")[0] != first)
        raise ValueError(f"state dict keys do not share one prefix: {keys[0]!r} and {odd!r}; "
                         "pass prefix= naming the recurrent module")
    cut = len(prefixes.pop())
    cut += 1 if cut else 0
    leaves = {}
    for k in keys:
        leaf = k[cut:]
        if leaf.startswith("weight_hr"):
            raise ValueError(f"{k!r}: proj_size (an LSTM with projections) is not supported "
                             "by fastrnn")
        if not _KEY.fullmatch(leaf):
            raise ValueError(f"unexpected key {k!r}: expected weight_ih, weight_hh, bias_ih, "
                             "bias_hh, with _l<k> (and _reverse) for a layer stack")
        leaves[leaf] = k
    return leaves


def _as_numpy(key, v, dtype):
    """A numpy view of a tensor or array, refused unless floating point and finite."""
    if type(v).__module__.startswith("torch") and hasattr(v, "detach"):
        v = v.detach().cpu()
        if not v.is_floating_point():
            raise TypeError(f"{key!r}: dtype {v.dtype} is not floating point")
        if str(v.dtype) not in ("torch.float32", "torch.float64"):
            if dtype is None:
                raise TypeError(f"{key!r}: dtype {v.dtype}; fastrnn computes in float32 or "
                                "float64: pass dtype=np.float32 to convert")
            v = v.double()                      # exact for float16 and bfloat16
        a = v.numpy()
    elif isinstance(v, np.ndarray):
        a = v
    else:
        raise TypeError(f"{key!r}: expected a torch tensor or a numpy array, got "
                        f"{type_name(v)}")
    if a.dtype.kind != "f":
        raise TypeError(f"{key!r}: dtype {a.dtype} is not floating point")
    if dtype is None and a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{key!r}: dtype {a.dtype}; fastrnn computes in float32 or float64: "
                        "pass dtype=np.float32 to convert")
    if not np.isfinite(a).all():
        raise ValueError(f"{key!r} holds NaN or infinity")
    return a


def _common_dtype(arrays, dtype):
    if dtype is not None:
        return float_dtype(dtype)
    found = sorted({a.dtype.name for a in arrays.values()})
    if len(found) > 1:
        raise TypeError(f"the weights mix dtypes {found}: pass dtype= to choose one")
    return np.dtype(found[0])


def _new_cell(kind, input_size, hidden_size, bias, dtype, nonlinearity):
    extra = {"nonlinearity": nonlinearity} if kind == "rnn" else {}
    return _CELLS[kind](input_size, hidden_size, bias=bias, dtype=dtype, **extra)


def _check_names_and_shapes(ours, arrays, keys):
    """The given arrays are exactly ``ours``' parameters; errors use the given key names."""
    expected = {name: p.shape for name, p in ours.params.items()}
    missing = [n for n in expected if n not in arrays]
    if missing:
        raise ValueError(f"missing {missing} for {describe(ours)}")
    for name, a in arrays.items():
        if name not in expected:
            raise ValueError(f"unexpected key {keys[name]!r} for {describe(ours)}")
        if a.shape != expected[name]:
            raise ValueError(f"{keys[name]!r} has shape {tuple(a.shape)}, expected "
                             f"{expected[name]} for {describe(ours)}")


def _copy_into_fastrnn(ours, arrays):
    """The import's one write: each array into the parameter of the same name."""
    for name, a in arrays.items():
        ours.params[name][...] = a


# ---- fastrnn -> PyTorch ------------------------------------------------------------------

def to_torch(obj, *, check=True, tol=None):
    """The ``torch.nn`` module equivalent to a fastrnn layer, cell or SequenceModel, with the
    same weights (same dtype, exact copies) and the same configuration.

    ``RNN``/``LSTM``/``GRU`` give ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (num_layers, bias,
    batch_first, dropout, bidirectional, nonlinearity); cells give ``nn.RNNCell`` etc.; a
    :class:`~fastrnn.SequenceModel` gives a small module (``nn.Embedding`` when it takes
    token ids, the stack with batch_first=True, ``nn.Linear``) whose ``forward(x,
    lengths=None, state=None)`` returns the model's outputs (logits), with the same
    parameter names as ``model.named_parameters()``. The training mode is carried over.

    Variants with no ``torch.nn`` equivalent raise ValueError naming the variant: peephole
    LSTM, coupled (CIFG) LSTM, GRU with ``reset_after=False``.

    ``check``: run both on a random input and initial state and raise ParityError when
    outputs or final states differ by more than ``tol``; the largest absolute difference is
    set as ``module.parity_max_abs_diff`` (None when not checked).

    Example (PyTorch installed)::

        >>> import fastrnn
        >>> module = fastrnn.GRU(3, 5, bidirectional=True, seed=0).to_torch()
        >>> module
        GRU(3, 5, bidirectional=True)
        >>> module.parity_max_abs_diff < 1e-4
        True
    """
    from ..nn.models import SequenceModel
    torch = _torch()
    if isinstance(obj, SequenceModel):
        module = _model_to_torch(torch, obj)
    elif isinstance(obj, (L.RecurrentLayer, L.RecurrentCell)):
        module = _recurrent_to_torch(torch, obj)
    else:
        raise TypeError("to_torch takes a fastrnn RNN, LSTM, GRU, RNNCell, LSTMCell, GRUCell "
                        f"or SequenceModel; got {type_name(obj)}")
    module.parity_max_abs_diff = None
    if check:
        module.parity_max_abs_diff = _parity("to_torch", obj, module, tol)
    return module


def _refuse_fastrnn_only(layer, what):
    if layer.cell == "lstm" and layer.peephole:
        raise ValueError(f"{what}: a peephole LSTM (peephole={layer.peephole!r}) has no "
                         "torch.nn equivalent")
    if layer.cell == "lstm" and layer.coupled:
        raise ValueError(f"{what}: a coupled (CIFG) LSTM has no torch.nn equivalent")
    if layer.cell == "gru" and not layer.reset_after:
        raise ValueError(f"{what}: a GRU with reset_after=False (reset gate before the "
                         "recurrent product) has no torch.nn equivalent; torch.nn.GRU "
                         "applies it after")


def _recurrent_to_torch(torch, obj):
    is_cell = isinstance(obj, L.RecurrentCell)
    layer = obj._layer if is_cell else obj
    _refuse_fastrnn_only(layer, "to_torch")
    cls = getattr(torch.nn, _TORCH_NAMES[layer.cell] + ("Cell" if is_cell else ""))
    kw = dict(bias=layer.bias, dtype=_torch_dtype(torch, layer.dtype))
    if layer.cell == "rnn":
        kw["nonlinearity"] = layer.nonlinearity
    if not is_cell:
        kw.update(num_layers=layer.num_layers, batch_first=layer.batch_first,
                  dropout=layer.dropout, bidirectional=layer.bidirectional)
    with warnings.catch_warnings():
        # torch warns that dropout does nothing with one layer; fastrnn allows it too
        warnings.filterwarnings("ignore", message=".*dropout.*", category=UserWarning)
        module = cls(layer.input_size, layer.hidden_size, **kw)
    _copy_into_torch(torch, module, obj.params)
    return module.train(layer.training)


def _copy_into_torch(torch, module, arrays):
    """The export's one write: each fastrnn array into the torch parameter of its name."""
    params = dict(module.named_parameters())
    if set(params) != set(arrays):
        raise ValueError(f"parameter names differ: torch {sorted(params)}, fastrnn "
                         f"{sorted(arrays)}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(torch.from_numpy(np.ascontiguousarray(arrays[name])))


SEQUENCE_CLASS = None


def _sequence_module_class(torch):
    """The torch.nn.Module class of an exported SequenceModel, made once (torch is imported
    only when needed, so the class cannot live at module level)."""
    global SEQUENCE_CLASS
    if SEQUENCE_CLASS is not None:
        return SEQUENCE_CLASS
    nn = torch.nn

    class TorchSequenceModel(nn.Module):
        """fastrnn.SequenceModel as torch.nn: embedding (or None), recurrent stack
        (batch_first), linear head over every step ("per_step") or over the final states of
        the last layer, both directions concatenated ("last")."""

        def __init__(self, embedding, rnn, head, output):
            super().__init__()
            self.embedding, self.rnn, self.head, self.output = embedding, rnn, head, output

        def forward(self, x, lengths=None, state=None):
            """x (B, T) token ids or (B, T, I) floats; lengths (B,) >= 1 -> (B, T, C) or
            (B, C)."""
            if self.embedding is not None:
                x = self.embedding(x)                                  # (B, T, E)
            out, state_n = _run_rnn_module(torch, self.rnn, x, state, lengths)
            if self.output == "per_step":
                return self.head(out)                                  # (B, T, C)
            h_n = state_n[0] if isinstance(state_n, tuple) else state_n    # (L*D, B, H)
            D = 2 if self.rnn.bidirectional else 1
            return self.head(torch.cat(list(h_n[-D:]), dim=1))         # (B, C)

    SEQUENCE_CLASS = TorchSequenceModel
    return TorchSequenceModel


def _model_to_torch(torch, model):
    nn, dtype = torch.nn, _torch_dtype(torch, model.dtype)
    embedding = None
    if model.embedding is not None:
        embedding = nn.Embedding(*model.embedding.weight.shape, dtype=dtype)
    rnn = _recurrent_to_torch(torch, model.rnn)
    head = nn.Linear(model.head.weight.shape[1], model.head.weight.shape[0], dtype=dtype)
    module = _sequence_module_class(torch)(embedding, rnn, head, model.output)
    params = dict(module.named_parameters())
    theirs = model.named_parameters()
    with torch.no_grad():
        for name in ("embedding.weight", "head.weight", "head.bias"):
            if name in theirs:
                params[name].copy_(torch.from_numpy(np.ascontiguousarray(theirs[name])))
    return module.train(model.rnn.training)


# ---- running either side -----------------------------------------------------------------

def _forward(torch, module):
    """What to call to run ``module`` on a tensor: the module, or for an nn.RNN/LSTM/GRU
    compiled by torch.jit.script its tensor overload of forward (TorchScript compiles the
    overloaded forward as forward__0/forward__1 and gives Python no forward to call)."""
    if not isinstance(module, torch.jit.ScriptModule) or \
            "forward" in module._c._method_names():
        return module
    for name in module._c._method_names():
        if name.startswith("forward__") and \
                "PackedSequence input" not in str(getattr(module, name).schema):
            return getattr(module, name)
    raise TypeError(f"the TorchScript {module.original_name} has no forward taking a tensor")


def _run_rnn_module(torch, module, x, state, lengths):
    """An nn.RNN/LSTM/GRU (or TorchScript of one) on x (a tensor), ragged rows through
    packing; (out, state_n)."""
    if _is_traced(torch, module) and not _traced_takes_state(module):
        if state is not None or lengths is not None:
            raise ValueError(f"the traced {module.original_name} was traced on x alone: it "
                             "takes no initial state and no lengths")
        return module(x)
    if lengths is None:
        return _forward(torch, module)(x, state)
    if isinstance(module, torch.jit.ScriptModule):
        raise ValueError(f"lengths cannot be given to the TorchScript {module.original_name} "
                         "(it runs on a tensor, not a PackedSequence)")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    T = x.shape[1] if module.batch_first else x.shape[0]
    packed = pack_padded_sequence(x, torch.as_tensor(lengths, dtype=torch.int64).cpu(),
                                  batch_first=module.batch_first, enforce_sorted=False)
    out, state_n = module(packed, state)
    out, _ = pad_packed_sequence(out, batch_first=module.batch_first, total_length=T)
    return out, state_n


def run_torch(module, x, state=None, lengths=None):
    """Run a torch module on numpy inputs in eval mode without gradients; returns
    ``(out, states)`` as numpy, ``states`` a tuple ((h_n,) or (h_n, c_n)) or None.

    nn.RNN/LSTM/GRU: ``out`` is the sequence output; ``lengths (B,)`` (all >= 1, PyTorch
    refuses empty rows) go through ``pack_padded_sequence``. Cells: ``out`` is the new h,
    ``states`` the new state. An exported SequenceModel: its outputs, no states. Any other
    module is called as ``module(x)`` and its (first) output compared, no states. Float
    inputs are cast to the module's parameter dtype, integer inputs (token ids) to int64.
    TorchScript of those modules runs as they do (a traced one without a state when it was
    traced without one; no lengths)."""
    torch = _torch()
    param = next(module.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    x = np.asarray(x)
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(torch.int64 if x.dtype.kind in "iu"
                                                      else dtype)
    if state is not None:
        state = tuple(torch.from_numpy(np.ascontiguousarray(s)).to(dtype) for s in
                      (state if isinstance(state, tuple) else (state,)))
        state = state if len(state) == 2 else state[0]
    kind, cell = _module_kind(torch, module)
    is_rnn, is_cell = kind is not None and not cell, kind is not None and cell
    is_model = SEQUENCE_CLASS is not None and isinstance(module, SEQUENCE_CLASS)
    if lengths is not None and not (is_rnn or is_model):
        raise ValueError(f"lengths apply to sequence modules; {type_name(module)} takes none")
    if state is not None and not (is_rnn or is_cell or is_model):
        raise ValueError(f"{type_name(module)} is called as module(x): no initial state")
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            if is_rnn:
                out, st = _run_rnn_module(torch, module, xt, state, lengths)
            elif is_cell:
                if _is_traced(torch, module) and not _traced_takes_state(module):
                    if state is not None:
                        raise ValueError(f"the traced {module.original_name} was traced on x "
                                         "alone: it takes no state")
                    st = module(xt)
                else:
                    st = module(xt, state)
                out = st[0] if isinstance(st, tuple) else st
            elif is_model:
                out, st = module(xt, lengths, state), None
            else:
                out, st = module(xt), None
                out = out[0] if isinstance(out, (tuple, list)) else out
    finally:
        module.train(training)
    if st is not None:
        st = tuple(s.numpy() for s in (st if isinstance(st, tuple) else (st,)))
    return out.numpy(), st


def run_fastrnn(obj, x, state=None, lengths=None):
    """A fastrnn layer, cell or SequenceModel on numpy inputs (dropout off); returns
    ``(out, states)`` as :func:`run_torch` does."""
    from ..nn.models import SequenceModel
    if isinstance(obj, SequenceModel):
        return obj.forward(x, lengths, state)[0], None
    if isinstance(obj, L.RecurrentCell):
        if lengths is not None:
            raise ValueError("lengths apply to sequence layers; a cell takes one step")
        st = obj(x, state)
        st = st if isinstance(st, tuple) else (st,)
        return st[0], st
    out, st = obj(x, state, lengths)
    return out, (st if isinstance(st, tuple) else (st,))


def random_case(obj, rng):
    """A random input and initial state in ``obj``'s layout and dtype."""
    from ..nn.models import SequenceModel
    T, B = _PARITY_T, _PARITY_B
    if isinstance(obj, SequenceModel):
        if obj.embedding is not None:
            return rng.integers(0, obj.embedding.weight.shape[0], (B, T)), None
        return rng.standard_normal((B, T, obj.rnn.input_size)).astype(obj.dtype), None
    layer = obj._layer if isinstance(obj, L.RecurrentCell) else obj
    H, dtype = layer.hidden_size, layer.dtype
    if isinstance(obj, L.RecurrentCell):
        x = rng.standard_normal((B, layer.input_size))                       # (B, I)
        shape = (B, H)
    else:
        x = rng.standard_normal((B, T, layer.input_size) if layer.batch_first
                                else (T, B, layer.input_size))              # (T, B, I)
        shape = (layer.num_layers * layer.num_directions, B, H)             # (L*D, B, H)
    n_states = 2 if layer.cell == "lstm" else 1
    state = tuple(rng.uniform(-0.5, 0.5, shape).astype(dtype) for _ in range(n_states))
    return x.astype(dtype), (state if n_states == 2 else state[0])


def _parity(what, ours, module, tol, with_state=True):
    """Largest abs difference of outputs and final states on a random case (seeded, so a
    failure reproduces), from a random initial state unless ``with_state`` is False (a
    module traced without one); raises ParityError above ``tol``."""
    x, state = random_case(ours, np.random.default_rng(0))
    state = state if with_state else None
    mine_out, mine_st = run_fastrnn(ours, x, state)
    theirs_out, theirs_st = run_torch(module, x, state)
    mine = (mine_out,) + (mine_st or ())
    theirs = (theirs_out,) + (theirs_st or ())
    return check_parity(f"{what}: fastrnn {describe(ours)} against PyTorch", mine, theirs, tol)


# ---- state dict files ----------------------------------------------------------------------

_STATE_DICT_FORMATS = {".pt": "torch", ".pth": "torch", ".safetensors": "safetensors"}


def read_state_dict(path, format=None):
    """A flat ``{name: array}`` from a ``torch.save`` file (``torch.load(weights_only=True)``
    only: anything but tensors in plain containers is refused unexecuted) or a
    ``.safetensors`` file (the ``safetensors`` package). Values are torch tensors (torch
    files) or numpy arrays (safetensors). ``format`` is ``"torch"`` or ``"safetensors"``;
    None (the default) takes it from the extension (``.pt``/``.pth``/``.safetensors``), so
    pass it for files named otherwise (``pytorch_model.bin``, ``.ckpt``). A torch file may
    hold a state dict or a training checkpoint keeping one in its ``"state_dict"``,
    ``"model_state_dict"``, ``"model"``, ``"net"``, ``"network"`` or ``"module"`` entry (the
    first found is returned; pass ``prefix=`` to :func:`from_torch` to pick one module of a
    whole model). TorchScript archives are refused: reading one runs its code (load it with
    ``torch.jit.load`` if you trust it, and pass the module to :func:`from_torch`). The file
    is read once, as fastrnn.load reads (a FIFO or a device is refused, never waited on)."""
    import io as _bytes_io
    from .. import io
    path = str(path)
    if format is None:
        ext = path[path.rfind("."):].lower() if "." in path else ""
        format = _STATE_DICT_FORMATS.get(ext)
        if format is None:
            raise ValueError(f"{path}: expected a .pt, .pth or .safetensors file, or pass "
                             "format='torch' or 'safetensors'")
    if format not in ("torch", "safetensors"):
        raise ValueError(f"format must be 'torch', 'safetensors' or None, got {format!r}")
    if format == "safetensors":
        try:
            from safetensors.numpy import load
        except ImportError:
            raise ImportError(".safetensors files need the safetensors package: "
                              "pip install safetensors") from None
        blob = io.read_regular(path, "safetensors file")
        try:
            return load(blob)
        except Exception as exc:       # safetensors' own error class differs by version
            raise ValueError(f"{path}: not a safetensors file ({exc})") from None
    torch = _torch()
    blob = io.read_regular(path, "torch.save file")
    if _is_torchscript_archive(blob):   # checked first: torch.load would hand it on
        raise ValueError(f"{path}: a TorchScript archive (torch.jit.save); fastrnn does "
                         "not load those itself, since torch.jit.load runs the code the "
                         "file holds: if you trust it, load it with torch.jit.load and "
                         "pass the module to from_torch")
    try:
        state = torch.load(_bytes_io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:      # the restricted unpickler refused, or not a torch file
        detail = next((line.strip() for line in str(exc).splitlines()
                       if line.strip().startswith("Unsupported")), type(exc).__name__)
        raise ValueError(f"{path}: refused: torch.load(weights_only=True) cannot read it "
                         f"({detail}); fastrnn never unpickles anything but tensors")
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: holds a {type_name(state)}, not a state dict")
    try:
        state = _state_dict_of(state)
    except TypeError:
        raise ValueError(f"{path}: neither a flat dict of tensors (a module's state_dict()) "
                         "nor a checkpoint keeping one in its "
                         f"{', '.join(repr(k) for k in _CHECKPOINT_KEYS)} entry") from None
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise ValueError(f"{path}: entry {k!r} is a {type_name(v)}; expected a flat "
                             "dict of tensors (a module's state_dict())")
    return dict(state)


def _is_torchscript_archive(blob):
    """A zip archive holding TorchScript's constants.pkl (what torch.jit.save writes)."""
    import io as _bytes_io
    import zipfile
    try:
        with zipfile.ZipFile(_bytes_io.BytesIO(blob)) as z:
            return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def write_state_dict(state, path):
    """Write ``{name: array}`` as ``.pt``/``.pth`` (``torch.save`` of a dict of tensors,
    readable with ``weights_only=True``) or ``.safetensors``."""
    path = str(path)
    arrays = {k: np.ascontiguousarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
              for k, v in state.items()}
    if path.endswith((".pt", ".pth")):
        torch = _torch()
        torch.save({k: torch.from_numpy(a.copy()) for k, a in arrays.items()}, path)
    elif path.endswith(".safetensors"):
        try:
            from safetensors.numpy import save_file
        except ImportError:
            raise ImportError(".safetensors files need the safetensors package: "
                              "pip install safetensors") from None
        save_file(arrays, path)
    else:
        raise ValueError(f"{path}: expected a .pt, .pth or .safetensors file")


def _as_tensor(torch, v):
    return v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))


def describe(obj):
    if isinstance(obj, L.RecurrentCell):
        return f"{type(obj).__name__}({obj.input_size}, {obj.hidden_size})"
    if isinstance(obj, L.RecurrentLayer):
        return repr(obj)
    return type(obj).__name__


def type_name(obj):
    cls = type(obj)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
