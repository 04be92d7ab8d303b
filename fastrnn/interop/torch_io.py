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

from .. import layers as L
from .parity import check_parity

__all__ = ["from_torch", "to_torch", "read_state_dict", "write_state_dict", "run_torch"]

_LAYERS = {"rnn": L.RNN, "lstm": L.LSTM, "gru": L.GRU}
_CELLS = {"rnn": L.RNNCell, "lstm": L.LSTMCell, "gru": L.GRUCell}
_KIND_OF_GATES = {1: "rnn", 4: "lstm", 3: "gru"}
_TORCH_NAMES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
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
               dtype=None):
    """A fastrnn ``RNN``/``LSTM``/``GRU`` (or ``RNNCell``/``LSTMCell``/``GRUCell``) holding
    exact copies of a PyTorch module's or state dict's weights.

    ``source``: an ``nn.RNN``, ``nn.LSTM``, ``nn.GRU``, ``nn.RNNCell``, ``nn.LSTMCell`` or
    ``nn.GRUCell`` (configuration read from it; ``proj_size`` refused), or a state dict
    (a mapping of names to torch tensors or numpy arrays) of one of them. A prefix shared by
    every key up to its last dot (``"lstm."``, ``"encoder.rnn."``) is stripped. Keys with
    ``_l<k>`` make a layer stack (layers, directions, bias and sizes read from the keys and
    shapes); keys without make a cell. What a state dict cannot say:

    * ``kind``: "rnn", "lstm" or "gru"; inferred from the gate count, given to assert it;
    * ``nonlinearity``: of an RNN, "tanh" (the default: a state dict does not record it, and
      the parity check cannot tell, since it rebuilds the module with the same assumption)
      or "relu";
    * ``batch_first``: the layout of the layer made (default False, PyTorch's).

    For a module these are read from it; passing one that disagrees raises ValueError.
    ``dtype``: None keeps the source's float32 or float64 (other dtypes are refused);
    float32 or float64 converts (the parity check then runs PyTorch in that dtype too).

    ``check``: run the module (for a state dict, a module PyTorch builds from it) and the
    result on a random input and initial state; raises ParityError when outputs or final
    states differ by more than ``tol`` (default :func:`default_tolerance`). The largest
    absolute difference is set as ``result.parity_max_abs_diff`` (None when not checked).
    """
    if kind is not None and kind not in _LAYERS:
        raise ValueError(f"kind must be 'rnn', 'lstm' or 'gru', got {kind!r}")
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(source, torch.nn.Module):
        ours, reference = _from_module(torch, source, kind, nonlinearity, batch_first, dtype)
    elif isinstance(source, Mapping):
        ours, reference = _from_state_dict(source, kind, nonlinearity, batch_first, dtype)
    else:
        raise TypeError("from_torch takes an nn.RNN, nn.LSTM, nn.GRU, nn.RNNCell, nn.LSTMCell "
                        f"or nn.GRUCell, or a state dict; got {_type_name(source)}")
    ours.parity_max_abs_diff = None
    if check:
        ours.parity_max_abs_diff = _parity("from_torch", ours, reference(), tol)
    return ours


def _from_module(torch, m, kind, nonlinearity, batch_first, dtype):
    nn = torch.nn
    found = next((k for k, cls in (("rnn", nn.RNN), ("lstm", nn.LSTM), ("gru", nn.GRU))
                  if isinstance(m, cls)), None)
    found_cell = next((k for k, cls in (("rnn", nn.RNNCell), ("lstm", nn.LSTMCell),
                                        ("gru", nn.GRUCell)) if isinstance(m, cls)), None)
    if found is None and found_cell is None:
        raise TypeError("from_torch takes nn.RNN, nn.LSTM, nn.GRU, nn.RNNCell, nn.LSTMCell or "
                        f"nn.GRUCell; {_type_name(m)} is not supported")
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
                         "pass the entries of the recurrent module only")
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
                        f"{_type_name(v)}")
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
        return L._dtype(dtype)
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
        raise ValueError(f"missing {missing} for {_describe(ours)}")
    for name, a in arrays.items():
        if name not in expected:
            raise ValueError(f"unexpected key {keys[name]!r} for {_describe(ours)}")
        if a.shape != expected[name]:
            raise ValueError(f"{keys[name]!r} has shape {tuple(a.shape)}, expected "
                             f"{expected[name]} for {_describe(ours)}")


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
    """
    from ..models import SequenceModel
    torch = _torch()
    if isinstance(obj, SequenceModel):
        module = _model_to_torch(torch, obj)
    elif isinstance(obj, (L._Recurrent, L._Cell)):
        module = _recurrent_to_torch(torch, obj)
    else:
        raise TypeError("to_torch takes a fastrnn RNN, LSTM, GRU, RNNCell, LSTMCell, GRUCell "
                        f"or SequenceModel; got {_type_name(obj)}")
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
    is_cell = isinstance(obj, L._Cell)
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


_SEQUENCE_CLASS = None


def _sequence_module_class(torch):
    """The torch.nn.Module class of an exported SequenceModel, made once (torch is imported
    only when needed, so the class cannot live at module level)."""
    global _SEQUENCE_CLASS
    if _SEQUENCE_CLASS is not None:
        return _SEQUENCE_CLASS
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

    _SEQUENCE_CLASS = TorchSequenceModel
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

def _run_rnn_module(torch, module, x, state, lengths):
    """An nn.RNN/LSTM/GRU on x (a tensor), ragged rows through packing; (out, state_n)."""
    if lengths is None:
        return module(x, state)
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
    inputs are cast to the module's parameter dtype, integer inputs (token ids) to int64."""
    torch = _torch()
    nn = torch.nn
    param = next(module.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    x = np.asarray(x)
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(torch.int64 if x.dtype.kind in "iu"
                                                      else dtype)
    if state is not None:
        state = tuple(torch.from_numpy(np.ascontiguousarray(s)).to(dtype) for s in
                      (state if isinstance(state, tuple) else (state,)))
        state = state if len(state) == 2 else state[0]
    is_rnn = isinstance(module, nn.RNNBase)
    is_cell = isinstance(module, nn.RNNCellBase)
    is_model = _SEQUENCE_CLASS is not None and isinstance(module, _SEQUENCE_CLASS)
    if lengths is not None and not (is_rnn or is_model):
        raise ValueError(f"lengths apply to sequence modules; {_type_name(module)} takes none")
    if state is not None and not (is_rnn or is_cell or is_model):
        raise ValueError(f"{_type_name(module)} is called as module(x): no initial state")
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            if is_rnn:
                out, st = _run_rnn_module(torch, module, xt, state, lengths)
            elif is_cell:
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
    from ..models import SequenceModel
    if isinstance(obj, SequenceModel):
        return obj.forward(x, lengths, state)[0], None
    if isinstance(obj, L._Cell):
        if lengths is not None:
            raise ValueError("lengths apply to sequence layers; a cell takes one step")
        st = obj(x, state)
        st = st if isinstance(st, tuple) else (st,)
        return st[0], st
    out, st = obj(x, state, lengths)
    return out, (st if isinstance(st, tuple) else (st,))


def _random_case(obj, rng):
    """A random input and initial state in ``obj``'s layout and dtype."""
    from ..models import SequenceModel
    T, B = _PARITY_T, _PARITY_B
    if isinstance(obj, SequenceModel):
        if obj.embedding is not None:
            return rng.integers(0, obj.embedding.weight.shape[0], (B, T)), None
        return rng.standard_normal((B, T, obj.rnn.input_size)).astype(obj.dtype), None
    layer = obj._layer if isinstance(obj, L._Cell) else obj
    H, dtype = layer.hidden_size, layer.dtype
    if isinstance(obj, L._Cell):
        x = rng.standard_normal((B, layer.input_size))                       # (B, I)
        shape = (B, H)
    else:
        x = rng.standard_normal((B, T, layer.input_size) if layer.batch_first
                                else (T, B, layer.input_size))              # (T, B, I)
        shape = (layer.num_layers * layer.num_directions, B, H)             # (L*D, B, H)
    n_states = 2 if layer.cell == "lstm" else 1
    state = tuple(rng.uniform(-0.5, 0.5, shape).astype(dtype) for _ in range(n_states))
    return x.astype(dtype), (state if n_states == 2 else state[0])


def _parity(what, ours, module, tol):
    """Largest abs difference of outputs and final states on a random case (seeded, so a
    failure reproduces); raises ParityError above ``tol``."""
    x, state = _random_case(ours, np.random.default_rng(0))
    mine_out, mine_st = run_fastrnn(ours, x, state)
    theirs_out, theirs_st = run_torch(module, x, state)
    mine = (mine_out,) + (mine_st or ())
    theirs = (theirs_out,) + (theirs_st or ())
    return check_parity(f"{what}: fastrnn {_describe(ours)} against PyTorch", mine, theirs, tol)


# ---- state dict files ----------------------------------------------------------------------

def read_state_dict(path):
    """A flat ``{name: array}`` from a ``.pt``/``.pth`` file (``torch.load(weights_only=True)``
    only: anything but tensors in plain containers is refused unexecuted) or a
    ``.safetensors`` file (the ``safetensors`` package). Values are torch tensors (.pt) or
    numpy arrays (.safetensors); anything but a flat dict of tensors is refused."""
    path = str(path)
    if path.endswith((".pt", ".pth")):
        torch = _torch()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:      # the restricted unpickler refused, or not a torch file
            detail = next((line.strip() for line in str(exc).splitlines()
                           if line.strip().startswith("Unsupported")), type(exc).__name__)
            raise ValueError(f"{path}: refused: torch.load(weights_only=True) cannot read it "
                             f"({detail}); fastrnn never unpickles anything but tensors")
        if not isinstance(state, Mapping):
            raise ValueError(f"{path}: holds a {_type_name(state)}, not a state dict")
        for k, v in state.items():
            if not isinstance(k, str) or not isinstance(v, torch.Tensor):
                raise ValueError(f"{path}: entry {k!r} is a {_type_name(v)}; expected a flat "
                                 "dict of tensors (a module's state_dict())")
        return dict(state)
    if path.endswith(".safetensors"):
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise ImportError(".safetensors files need the safetensors package: "
                              "pip install safetensors") from None
        return load_file(path)
    raise ValueError(f"{path}: expected a .pt, .pth or .safetensors file")


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


def _describe(obj):
    if isinstance(obj, L._Cell):
        return f"{type(obj).__name__}({obj.input_size}, {obj.hidden_size})"
    if isinstance(obj, L._Recurrent):
        return repr(obj)
    return type(obj).__name__


def _type_name(obj):
    cls = type(obj)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
