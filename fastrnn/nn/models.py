"""A sequence model (:class:`SequenceModel`): optional embedding, stacked recurrent layers,
linear output layer; and its parts :class:`Embedding` and :class:`Linear`, with helpers
:func:`pad_sequences` and :func:`cosine_similarity`::

    ids (B, T) ints --Embedding--> (B, T, E) --+
    x   (B, T, I) floats ----------------------+--> RNN/LSTM/GRU stack --> h (B, T, D*H)
                                                    --Linear--> (B, T, C) or (B, C)

:class:`SequenceModel`'s docstring holds the equations, the tasks and their losses, every
argument, the parameter names and an example.
"""
import difflib
import functools

import numpy as np

from .. import functional as F
from .._spec import INT32_MAX, TASKS, lengths_array, positive_int
from . import layers as L
from . import losses

_CELLS = {"rnn": L.RNN, "lstm": L.LSTM, "gru": L.GRU}
# the arguments each cell adds to SequenceModel's own (what a model file can record)
_CELL_ARGUMENTS = {name: layer._variant_arguments for name, layer in _CELLS.items()}


class Embedding:
    """Token ids -> vectors. ``weight (V, E)`` in a flat buffer; init N(0, 1) as PyTorch.

    Arguments: ``num_embeddings`` (V), ``embedding_dim`` (E), ``dtype=np.float32``,
    ``rng=None`` (a ``numpy.random.Generator``; None: a fresh one). ``forward(ids)``: ids
    of any shape with values in [0, V) -> ``(*ids.shape, E)``; ``backward(dout, ids)``
    accumulates into ``weight_grad`` (repeated ids add up).

        >>> import numpy as np
        >>> from fastrnn.nn.models import Embedding
        >>> emb = Embedding(10, 4, rng=np.random.default_rng(0))
        >>> ids = np.array([[1, 2, 2]])                       # (B, T)
        >>> emb.forward(ids).shape
        (1, 3, 4)
        >>> emb.backward(np.ones((1, 3, 4), np.float32), ids)
        >>> emb.weight_grad[2].tolist()                       # id 2 seen twice
        [2.0, 2.0, 2.0, 2.0]
    """

    def __init__(self, num_embeddings, embedding_dim, dtype=np.float32, rng=None):
        rng = rng if rng is not None else np.random.default_rng()
        self.flat = rng.standard_normal(num_embeddings * embedding_dim).astype(dtype)
        self.grad = np.zeros_like(self.flat)
        self.weight = self.flat.reshape(num_embeddings, embedding_dim)
        self.weight_grad = self.grad.reshape(num_embeddings, embedding_dim)

    def forward(self, ids):
        # out[b, t] = weight[ids[b, t]]
        V = self.weight.shape[0]
        if ids.size and (ids.min() < 0 or ids.max() >= V):
            raise ValueError(f"token ids must lie in [0, {V}), got min {ids.min()}, max {ids.max()}")
        return self.weight[ids]

    def backward(self, dout, ids):
        # dweight[ids[b, t]] += dout[b, t], repeated ids accumulate
        np.add.at(self.weight_grad, ids.reshape(-1), dout.reshape(-1, dout.shape[-1]))

    def __repr__(self):
        return f"Embedding({self.weight.shape[0]}, {self.weight.shape[1]})"


class Linear:
    """``y = x @ W.T + b``, ``W (C, D)``, ``b (C,)`` in one flat buffer; Glorot-uniform W,
    zero b.

    Arguments: ``in_features`` (D), ``out_features`` (C), ``dtype=np.float32``,
    ``rng=None``. Glorot bound ``a = sqrt(6 / (D + C))``. ``forward(x (..., D))`` ->
    ``(..., C)``; ``backward(dy, x)`` accumulates ``weight_grad``/``bias_grad`` and
    returns ``dx``.

        >>> import numpy as np
        >>> from fastrnn.nn.models import Linear
        >>> head = Linear(3, 2, rng=np.random.default_rng(0))
        >>> x = np.ones((4, 5, 3), np.float32)
        >>> y = head.forward(x)
        >>> y.shape, head.backward(np.ones_like(y), x).shape, head.bias_grad.tolist()
        ((4, 5, 2), (4, 5, 3), [20.0, 20.0])
    """

    def __init__(self, in_features, out_features, dtype=np.float32, rng=None):
        rng = rng if rng is not None else np.random.default_rng()
        n = out_features * in_features
        self.flat = np.zeros(n + out_features, dtype)
        self.grad = np.zeros_like(self.flat)
        self.weight = self.flat[:n].reshape(out_features, in_features)
        self.bias = self.flat[n:]
        self.weight_grad = self.grad[:n].reshape(out_features, in_features)
        self.bias_grad = self.grad[n:]
        limit = np.sqrt(6.0 / (in_features + out_features))
        self.weight[...] = rng.uniform(-limit, limit, (out_features, in_features))

    def forward(self, x):
        # y (..., C) = x (..., D) @ W.T + b, on the kernels' BLAS held at one thread: numpy's
        # product would wake numpy's BLAS pool, whose threads then spin on the cores the next
        # kernel call needs (measured: a 2-thread predict of 4,096 LSTM sequences took
        # 1.05 s instead of 0.57 s while they spun). One row or one output stays numpy's: a
        # matrix-vector product there, whose last bits the kernels' GEMM would not repeat
        # (predictions keep their bits across this change; OpenBLAS threads a gemv only
        # past about 9,000 values).
        C, D = self.weight.shape
        if not isinstance(x, np.ndarray) or x.dtype != self.weight.dtype or \
                x.shape[-1:] != (D,) or x.size == D or C == 1:
            return x @ self.weight.T + self.bias    # numpy's casts, errors and gemv
        x2 = np.ascontiguousarray(x.reshape(-1, D))
        y = np.empty((x2.shape[0], C), self.weight.dtype)
        y[...] = self.bias
        if x2.shape[0]:
            F.gemm_nt_accumulate(x2, self.weight, y)
        return y.reshape(*x.shape[:-1], C)

    def __repr__(self):
        C, D = self.weight.shape
        return f"Linear(in_features={D}, out_features={C})"

    def backward(self, dy, x):
        # dW += dy.T @ x,  db += dy.sum,  dx = dy @ W  (over all leading axes)
        dy2, x2 = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
        self.weight_grad += dy2.T @ x2
        self.bias_grad += dy2.sum(axis=0)
        return dy @ self.weight


def _refuse_unknown_arguments(cell, kwargs):
    """TypeError for a keyword argument SequenceModel does not take, naming the closest
    one (a misspelling) or the cell that takes it."""
    for name in kwargs:
        if name in _CELL_ARGUMENTS[cell]:
            continue
        owners = [c for c, names in _CELL_ARGUMENTS.items() if name in names]
        if owners:
            raise TypeError(f"SequenceModel() got an unexpected keyword argument {name!r}: it "
                            f"is an argument of cell={owners[0]!r}, not cell={cell!r}")
        import inspect
        known = [k for k in inspect.signature(SequenceModel).parameters if k != "cell_kwargs"]
        known += [k for names in _CELL_ARGUMENTS.values() for k in names]
        close = difflib.get_close_matches(name, known, n=1) if isinstance(name, str) else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TypeError(f"SequenceModel() got an unexpected keyword argument {name!r}{hint}")


class ModelTape:
    """What :meth:`SequenceModel.forward` keeps for its backward: the token ids (None for
    features), the recurrent stack's :class:`~fastrnn.nn.layers.Tape`, the features the
    output layer read and the stack's output shape; ``owner`` is the model that made it."""

    __slots__ = ("owner", "ids", "rnn", "features", "out_shape")

    def __init__(self, owner, ids, rnn, features, out_shape):
        self.owner, self.ids, self.rnn, self.features, self.out_shape = \
            owner, ids, rnn, features, out_shape


class SequenceModel:
    """A whole sequence model: an optional embedding, a stack of recurrent layers and a
    linear output layer, with training (:meth:`fit`), inference, streaming and model
    files. Batch-first throughout, as Keras users expect. For a batch row::

        e_t = E[ids_t]                     token-id models (vocab_size); features: e_t = x_t
        h_t = stack(e)_t                   the RNN/LSTM/GRU layers' output at step t, (D*H,)
        y_t = W_hy h_t + b_y               per-step tasks: every step,         y (B, T, C)
        y   = W_hy h_last + b_y            per-sequence tasks: once per row,    y (B, C)

    ``h_last`` is the top layer's final state, both directions concatenated when
    bidirectional (``[forward after the row's last valid step, reverse after reading the
    row backwards]``), D = 2 if bidirectional else 1, C = ``output_size``.

    Arguments (all may be given by keyword; the cell's own only by keyword):

    * ``cell="lstm"``: ``"rnn"``, ``"lstm"`` or ``"gru"``.
    * ``input_size=None``: features per step of float inputs ``(B, T, I)``; or
    * ``vocab_size=None``: token-id inputs ``(B, T)`` in [0, vocab_size), embedded by
      ``embedding.weight (V, E)``; ``embedding_dim=None`` (E) defaults to
      ``hidden_size``. Exactly one of ``input_size`` and ``vocab_size`` is given.
    * ``hidden_size=128`` (H): units per recurrent layer.
    * ``output_size=None`` (C): outputs per step or sequence; defaults to ``vocab_size``
      (a language model), required with ``input_size``.
    * ``task="next_token"``: the output and the loss, one of

      - ``"next_token"``, ``"per_step_classification"``: per step, softmax cross-entropy
        over C classes, targets ``(B, T)`` class indices;
      - ``"sequence_classification"``: per sequence, softmax cross-entropy, targets
        ``(B,)``;
      - ``"multilabel"``: per step, sigmoid binary cross-entropy summed over the C labels
        and averaged over steps, targets ``(B, T, C)`` in [0, 1];
      - ``"regression"``: per step, mean squared error, targets ``(B, T, C)``;
      - ``"sequence_regression"``: per sequence, mean squared error, targets ``(B, C)``.

      Padding steps (``lengths``) are masked out of every per-step loss.
    * ``num_layers=1``, ``bidirectional=False``, ``dropout=0.0`` (between recurrent
      layers, while training): as :class:`fastrnn.LSTM`.
    * ``dtype=np.float32``: float32 or float64, for every parameter and computation.
    * ``seed=None``: fixes every random choice of the model (initialisation, dropout
      masks); :meth:`fit`'s shuffling has its own ``seed``.
    * ``n_threads=None``: threads of the kernels (None: ``OMP_NUM_THREADS`` or the
      CPUs available; -1 all CPUs).
    * the cell's variant, by keyword: ``nonlinearity="tanh"`` (rnn), ``peephole=False``
      and ``coupled=False`` (lstm), ``reset_after=True`` (gru); see the layer classes.

    An unknown argument raises TypeError naming the closest one (or the cell that takes
    it).

    Parameters (:meth:`named_parameters`, the names of :meth:`state_dict` and of model
    files): ``embedding.weight (V, E)`` (token-id models), ``rnn.<name>`` for every
    parameter of the layer stack (``rnn.weight_ih_l0 (G*H, I)`` etc., PyTorch's names
    and gate order, see :class:`fastrnn.LSTM`), ``head.weight (C, D*H)``,
    ``head.bias (C,)``. Each part keeps one flat buffer; :meth:`parameters` gives the
    ``(flat, grad)`` pairs the optimizers take. Initialisation: the embedding N(0, 1) as
    PyTorch's, the layers as :class:`fastrnn.LSTM` describes, ``head.weight``
    Xavier/Glorot uniform ``[-a, a]``, ``a = sqrt(6 / (D*H + C))``, ``head.bias`` zero.

    Calls: :meth:`fit` (training; ``help(model.fit)`` has every argument),
    :meth:`predict` (raw outputs: logits or values), :meth:`predict_proba`,
    :meth:`evaluate` (mean loss, accuracy), :meth:`encode` (sequence features),
    :meth:`step` with :meth:`initial_state` (one step for many streams, per-step tasks),
    :meth:`forward`/:meth:`loss`/:meth:`backward` (one training step by hand),
    ``save(path)`` (:func:`fastrnn.save`), ``to_onnx``, ``to_torch``; :func:`fastrnn.load`
    reads a saved model back.

    Inputs follow one rule at every entry point (``fit`` and its ``validation_data``,
    ``evaluate``, ``predict``, ``predict_proba``, ``encode``, ``step``), checked before
    anything is computed:

    * features (``input_size`` models): ``(B, T, I)`` (``step``: ``(B, I)``), an array or
      a nested list of real numbers. Floats and integers of any width or byte order are
      cast to the model's dtype; complex, bool, string and object data raise TypeError;
      values must be finite after the cast (ValueError).
    * token ids (``vocab_size`` models): ``(B, T)`` (``step``: ``(B,)``), integers of any
      type in [0, vocab_size); anything else raises TypeError, ids out of range ValueError.
    * ragged data: a list of sequences of different lengths (``(T_i, I)`` features or
      ``(T_i,)`` ids) is padded with zeros and its lengths are taken from it (giving
      ``lengths`` as well is refused); per-step targets may be such a list too.
    * ``lengths (B,)``: integers of any type in [0, T]; steps at or past a row's length are
      padding.
    * targets (``fit``, ``evaluate``): class indices in [0, output_size) for the
      classification tasks, finite real numbers for the others (in [0, 1] for
      "multilabel"), shaped ``(B, T)`` (classes) or ``(B, T, C)`` per step and ``(B,)``
      (classes) or ``(B, C)`` per sequence; padding positions are never read.

    Example::

        >>> import numpy as np
        >>> import fastrnn
        >>> model = fastrnn.SequenceModel("gru", input_size=3, hidden_size=16, output_size=2,
        ...                               task="sequence_classification", seed=0)
        >>> model
        SequenceModel(
          (rnn): GRU(3, 16, batch_first=True)
          (head): Linear(in_features=16, out_features=2)
          task='sequence_classification', dtype=float32, parameters=1,042
        )
        >>> x = np.random.default_rng(0).standard_normal((8, 5, 3)).astype(np.float32)
        >>> y = (x.sum(axis=(1, 2)) > 0).astype(int)          # (B,) class indices
        >>> history = model.fit(x, y, epochs=2, batch_size=4, progress=False)
        >>> len(history["loss"]), history["steps"]
        (2, 4)
        >>> model.predict(x).shape
        (8, 2)
        >>> p = model.predict_proba(x, lengths=[5, 4, 3, 2, 1, 5, 5, 5])   # ragged rows
        >>> p.shape, bool(np.allclose(p.sum(axis=1), 1))
        ((8, 2), True)
        >>> lm = fastrnn.SequenceModel("lstm", vocab_size=10, hidden_size=8, seed=0)
        >>> lm.predict(np.array([[1, 2, 3]])).shape           # ids (B, T) -> (B, T, V)
        (1, 3, 10)
        >>> y_t, state = lm.step(np.array([1, 2]), lm.initial_state(2))   # two streams
        >>> y_t.shape, state[0].shape
        ((2, 10), (1, 2, 8))
    """

    def __init__(self, cell="lstm", input_size=None, hidden_size=128, output_size=None,
                 task="next_token", vocab_size=None, embedding_dim=None, num_layers=1,
                 bidirectional=False, dropout=0.0, dtype=np.float32, seed=None,
                 n_threads=None, **cell_kwargs):
        if not isinstance(cell, str) or cell not in _CELLS:
            raise ValueError(f"cell must be one of {sorted(_CELLS)}, got {cell!r}")
        _refuse_unknown_arguments(cell, cell_kwargs)
        if not isinstance(task, str) or task not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
        if (input_size is None) == (vocab_size is None):
            raise ValueError("give exactly one of input_size (feature inputs) and vocab_size "
                             "(token-id inputs)")
        if output_size is None:
            if vocab_size is None:
                raise ValueError("output_size is required")
            output_size = vocab_size
        # sizes as Python ints (the config is written to model files as JSON)
        input_size, vocab_size, embedding_dim = (
            None if v is None else positive_int(name, v) for name, v in
            (("input_size", input_size), ("vocab_size", vocab_size),
             ("embedding_dim", embedding_dim)))
        hidden_size = positive_int("hidden_size", hidden_size)
        output_size = positive_int("output_size", output_size)
        num_layers = positive_int("num_layers", num_layers)
        self.config = dict(cell=cell, input_size=input_size, hidden_size=hidden_size,
                           output_size=output_size, task=task, vocab_size=vocab_size,
                           embedding_dim=embedding_dim, num_layers=num_layers,
                           bidirectional=bidirectional, dropout=dropout,
                           dtype=np.dtype(dtype).name, **cell_kwargs)
        self.output, self.loss_name = TASKS[task]
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        self.embedding = None
        if vocab_size is not None:
            embedding_dim = embedding_dim or hidden_size
            self.config["embedding_dim"] = embedding_dim
            self.embedding = Embedding(vocab_size, embedding_dim, self.dtype, rng)
            input_size = embedding_dim
        self.rnn = _CELLS[cell](input_size, hidden_size, num_layers, batch_first=True,
                                dropout=dropout, bidirectional=bidirectional, dtype=self.dtype,
                                seed=rng.integers(2**63), n_threads=n_threads, **cell_kwargs)
        # the layer has checked them: store its reading (a bool, a float) in the config
        self.config.update(bidirectional=self.rnn.bidirectional, dropout=self.rnn.dropout)
        self._guard = self.rnn._guard       # one version count for the model and its layer
        D = 2 if self.rnn.bidirectional else 1
        self.head = Linear(D * hidden_size, output_size, self.dtype, rng)
        self.vocabulary = None      # optional tokens of a language model, saved with it
        self.text_level = None      # how its text was cut ("char" or "word"), saved with it

    # ---- parameters ----------------------------------------------------------------
    def parameters(self):
        """(flat params, flat grad) pairs, what the optimizers take."""
        parts = ([self.embedding] if self.embedding else []) + [self.rnn, self.head]
        return [(p.flat, p.grad) for p in parts]

    def named_parameters(self):
        """Every parameter by a stable name (the names the model file uses)."""
        out = {}
        if self.embedding:
            out["embedding.weight"] = self.embedding.weight
        out.update({f"rnn.{k}": v for k, v in self.rnn.params.items()})
        out["head.weight"], out["head.bias"] = self.head.weight, self.head.bias
        return out

    def zero_grad(self):
        for _, g in self.parameters():
            g.fill(0)

    def train(self, mode=True):
        self.rnn.train(mode)
        return self

    def eval(self):
        return self.train(False)

    # ---- forward / backward ----------------------------------------------------------
    def _inputs(self, x):
        """(features (B, T, I), ids (B, T) or None) of a batch, checked."""
        x = self._checked_inputs(x)
        if self.embedding is not None:
            return self.embedding.forward(x), x
        return x, None

    def _checked_inputs(self, x, ndim=3):
        """``x`` checked and cast by the class docstring's rule, not yet embedded: token ids
        ``(B, T)`` in range, or finite features ``(B, T, I)`` in the model's dtype. ``ndim``
        one less for a single step."""
        if self.embedding is not None:
            x = np.asarray(x)
            if x.dtype.kind not in "iu":
                raise TypeError(f"this model takes token ids: x must be integers, got {x.dtype}")
            if x.ndim != ndim - 1:
                raise ValueError(f"token ids must be {ndim - 1}-D "
                                 f"({'batch, time' if ndim == 3 else 'batch,'}), got shape "
                                 f"{x.shape}")
            self._check_row_size(x.shape)
            V = self.embedding.weight.shape[0]
            if x.size and (x.min() < 0 or x.max() >= V):
                raise ValueError(f"token ids must lie in [0, {V}), got min {x.min()}, "
                                 f"max {x.max()}")
            return x
        if isinstance(x, (list, tuple)):
            try:
                x = np.asarray(x)
            except ValueError as exc:               # ragged below the first axis
                raise TypeError(f"x: expected a (nested) list of real numbers ({exc})") \
                    from None
        want = "(batch, time, " if ndim == 3 else "(batch, "
        if not isinstance(x, np.ndarray) or x.ndim != ndim:
            raise ValueError(f"x must be {ndim}-D {want}{self.config['input_size']}), "
                             f"got {getattr(x, 'shape', type(x).__name__)}")
        # complex, bool, strings and objects would be read as something they are not
        # (numpy casts "1.5" and True to floats, complex by dropping a part)
        if x.dtype.kind not in "fiu":
            raise TypeError(f"x must hold real numbers (floats or integers, cast to the "
                            f"model's {self.dtype}), got dtype {x.dtype}")
        if x.shape[-1] != self.rnn.input_size:
            raise ValueError(f"x has {x.shape[-1]} features, expected "
                             f"input_size={self.rnn.input_size}")
        self._check_row_size(x.shape)       # before a cast could allocate a huge view's size
        cast = x.dtype != self.dtype
        if cast:
            with np.errstate(over="ignore"):        # beyond float32's range: inf, refused
                x = x.astype(self.dtype)
        if not _all_finite(x):
            raise ValueError("x contains NaN or infinity" +
                             (f" (in the model's {self.dtype})" if cast else ""))
        return x

    def _batch(self, x, lengths=None):
        """``(x, lengths)`` of a call, checked by the class docstring's rule: a list of
        sequences of different lengths padded, lengths as int64 (or None)."""
        x, lengths = _padded(x, lengths)
        x = self._checked_inputs(x)
        return x, lengths_array(lengths, x.shape[1], x.shape[0])

    def _data(self, x, y, lengths=None):
        """``fit``'s and ``evaluate``'s data ``(x, y, lengths)``: :meth:`_batch`, and the
        targets checked for the task at every position the loss reads (class indices in
        range, finite values, the task's shape); ragged per-step targets padded."""
        ragged = _is_ragged(x)
        x, lengths = self._batch(x, lengths)
        N, T = x.shape[:2]
        if ragged and self.output == "per_step" and _is_ragged(y, allow_equal=True):
            y, y_lengths = pad_sequences(y)
            if y_lengths.shape != lengths.shape or (y_lengths != lengths).any():
                raise ValueError("y's sequences must have the lengths of x's")
        if not hasattr(y, "__len__") or len(y) != N:
            got = len(y) if hasattr(y, "__len__") else type(y).__name__
            raise ValueError(f"y must hold one target per sequence ({N}): x has {N} "
                             f"sequences but y has {got}")
        C = self.config["output_size"]
        shape, mask = (N, C), None
        if self.output == "per_step":
            shape = (N, T, C)
            if lengths is not None:
                mask = np.arange(T)[None, :] < lengths[:, None]        # (N, T)
        y = losses.check_targets(self.loss_name, y, shape, self.dtype, mask)
        return x, y, lengths

    def _check_row_size(self, shape):
        """One sequence must fit the kernels' 32-bit indexing (checked here, before a scan
        of a huge zero-stride view could allocate its size)."""
        if len(shape) == 3 or (len(shape) == 2 and self.embedding is not None):
            T = shape[1]
            width = max(self.rnn.gates * self.rnn.hidden_size * self.rnn.num_directions,
                        self.rnn.input_size)
            if T * width > INT32_MAX:
                raise ValueError(f"a sequence of T={T} steps is too long for the kernels' "
                                 "32-bit index range; split it (stateful chunks)")

    def _last(self, out, state_n, lengths):
        """Features of each row's last valid step, (B, D*H)."""
        h_n = state_n[0] if isinstance(state_n, tuple) else state_n     # (L*D, B, H)
        D = 2 if self.rnn.bidirectional else 1
        return np.concatenate(list(h_n[-D:]), axis=1)

    def forward(self, x, lengths=None, state=None, need_tape=False):
        """Outputs (logits, or predictions for regression), final state, and a tape for
        :meth:`backward` when ``need_tape``. Without a tape this is inference, computed
        from one version of the weights (see :meth:`load_state_dict`)."""
        x = self._checked_inputs(x)
        if need_tape:
            return self._forward_checked(x, lengths, state, True)
        return self._guard.read(self._forward_checked, x, lengths, state, False)

    def _forward_checked(self, x, lengths, state, need_tape):
        """:meth:`forward` of checked inputs (token ids are embedded here)."""
        xin, ids = (self.embedding.weight[x], x) if self.embedding is not None else (x, None)
        if need_tape:
            out, state_n, rtape = self.rnn.forward(xin, state, lengths)
        else:
            out, state_n = self._infer(xin, state, lengths, self.output == "per_step")
            rtape = None
        feats = out if self.output == "per_step" else self._last(out, state_n, lengths)
        y = self.head.forward(feats)
        tape = ModelTape(self, ids, rtape, feats, out.shape) if need_tape else None
        return y, state_n, tape

    # Most multiply-adds one inference kernel call does. Ctrl-C (SIGINT) raises
    # KeyboardInterrupt only between kernel calls (they run without the GIL), so a long
    # sequence runs in chunks of time steps, the state carried from one to the next: the
    # interrupt arrives within about one chunk (~0.1 s on the 2-core test machine) instead
    # of after the whole sequence (measured: 22 s for a 64 x 4000-step LSTM-256 batch).
    _INFER_CHUNK_WORK = 1 << 28

    def _infer(self, xin, state, lengths, need_out=True):
        """``self.rnn(xin, state, lengths)`` for batch-first ``xin (B, T, I)``, in chunks of
        at least 16 time steps when the call would exceed ``_INFER_CHUNK_WORK``.
        Unidirectional stacks only (a bidirectional one needs the whole sequence at once).
        The chunked result equals the whole call up to float rounding (the kernels'
        products run over fewer rows, which can change the last bit). ``need_out=False``
        returns ``(None, state)``: the outputs are never copied out or joined."""
        rnn = self.rnn
        B, T = xin.shape[0], xin.shape[1]
        G, H, n_layers = rnn.gates, rnn.hidden_size, rnn.num_layers
        per_step = G * H * ((rnn.input_size + H) + (n_layers - 1) * 2 * H)   # a row, all layers
        k = max(16, self._INFER_CHUNK_WORK // max(1, B * per_step))
        if rnn.bidirectional or T <= k:
            return rnn(xin, state, lengths) if need_out else \
                (None, rnn._final_state(xin, state, lengths))
        if lengths is not None:
            lengths = lengths_array(lengths, T, B)   # checked against the whole T first
        outs = []
        for t0 in range(0, T, k):
            lc = None if lengths is None else np.clip(lengths - t0, 0, min(k, T - t0))
            if need_out:
                out, state = rnn(xin[:, t0:t0 + k], state, lc)
                outs.append(out)
            else:
                state = rnn._final_state(xin[:, t0:t0 + k], state, lc)
        return (np.concatenate(outs, axis=1) if need_out else None), state

    def backward(self, dy, tape):
        """Accumulate parameter gradients of a loss whose gradient w.r.t. the outputs is
        ``dy``. The gradient is cut at the initial state (truncated BPTT)."""
        if not isinstance(tape, ModelTape) or tape.owner is not self:
            raise TypeError("tape must be the third value returned by this model's "
                            "forward(..., need_tape=True)")
        ids, rtape, feats, out_shape = tape.ids, tape.rnn, tape.features, tape.out_shape
        dfeats = self.head.backward(dy, feats)
        if self.output == "per_step":
            dout, dstate = dfeats, None
        else:
            # only the last layer's final states feed the head
            B, D, H = dfeats.shape[0], 2 if self.rnn.bidirectional else 1, self.rnn.hidden_size
            LD = self.rnn.num_layers * D
            dh = np.zeros((LD, B, H), self.dtype)
            for d in range(D):
                dh[LD - D + d] = dfeats[:, d * H:(d + 1) * H]
            dout = None
            dstate = (dh, np.zeros_like(dh)) if self.rnn.cell == "lstm" else dh
        dx, _ = self.rnn.backward(dout, dstate, rtape, need_dx=ids is not None)
        if ids is not None:
            self.embedding.backward(dx, ids)

    def loss(self, y, target, lengths=None):
        """(loss, dy) for the task's loss, padding masked out by ``lengths``; the targets
        are checked by the loss (see :mod:`fastrnn.nn.losses`)."""
        mask = None
        if self.output == "per_step" and lengths is not None:
            mask = losses.mask_from_lengths(lengths, y.shape[1]).T      # (B, T)
        if self.loss_name == "cross_entropy":
            return losses.softmax_cross_entropy(y, target, mask)
        if self.loss_name == "binary_cross_entropy":
            return losses.sigmoid_binary_cross_entropy(y, target, mask,
                                                       reduction="sum_over_labels")
        return losses.mean_squared_error(y, target, mask)

    # ---- inference -----------------------------------------------------------------
    def predict(self, x, lengths=None, batch_size=256):
        """Raw outputs: logits for classification, values for regression. ``(B, T, C)`` for
        per-step tasks, ``(B, C)`` otherwise, ``B`` = 0 included. The whole call computes
        from one version of the weights, even while another thread replaces them."""
        x, lengths = self._batch(x, lengths)
        batch_size = positive_int("batch_size", batch_size)
        return self._guard.read(self._predict, x, lengths, batch_size)

    def _predict(self, x, lengths, batch_size):
        if len(x) == 0:                 # the empty batch still has the output's shape
            return self._forward_checked(x, lengths, None, False)[0]
        outs = [self._forward_checked(x[i:i + batch_size],
                                      None if lengths is None else lengths[i:i + batch_size],
                                      None, False)[0]
                for i in range(0, len(x), batch_size)]
        return np.concatenate(outs)

    def predict_proba(self, x, lengths=None, batch_size=256):
        """Class probabilities (softmax) or label probabilities (sigmoid)."""
        y = self.predict(x, lengths, batch_size)
        if self.loss_name == "cross_entropy":
            e = np.exp(y - y.max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)
        if self.loss_name == "binary_cross_entropy":
            return 1 / (1 + np.exp(-y))
        raise ValueError("predict_proba is for classification tasks; use predict")

    def evaluate(self, x, y, lengths=None, batch_size=256):
        """Mean loss over the data (and accuracy for classification), dropout off, from one
        version of the weights. The mean is over every loss term of the data, so it does
        not depend on ``batch_size`` (up to the rounding of the sums); a batch whose rows
        are all empty has nothing to score and adds nothing (a per-step task over only
        empty rows gives 0)."""
        return self._evaluation(*self._evaluation_sums(x, y, lengths, batch_size))

    def _evaluation_sums(self, x, y, lengths=None, batch_size=256):
        """:meth:`evaluate`'s sums (see :meth:`_evaluate_sums`) of checked inputs; data-parallel
        validation adds them across processes before :meth:`_evaluation`."""
        x, y, lengths = self._data(x, y, lengths)
        batch_size = positive_int("batch_size", batch_size)
        return self._guard.read(self._evaluate_sums, x, y, lengths, batch_size)

    def _evaluation(self, total, correct, count):
        """{"loss": mean loss[, "accuracy"]} from :meth:`_evaluation_sums`."""
        result = {"loss": total / max(count, 1)}
        if self.loss_name == "cross_entropy":
            result["accuracy"] = correct / max(count, 1)
        return result

    def _evaluate_sums(self, x, y, lengths, batch_size):
        """(loss summed over the loss terms, correct predictions, loss terms) of checked
        inputs: the sums data-parallel validation adds across processes."""
        total, count, correct = 0.0, 0, 0
        for i in range(0, len(x), batch_size):
            lb = None if lengths is None else lengths[i:i + batch_size]
            if self.output == "per_step" and lb is not None and not lb.any():
                continue                    # only empty rows: no loss term to score
            out = self._forward_checked(x[i:i + batch_size], lb, None, False)[0]
            loss, _ = self.loss(out, y[i:i + batch_size], lb)
            n = self._count(out, lb)
            total, count = total + loss * n, count + n
            if self.loss_name == "cross_entropy":
                hit = out.argmax(-1) == np.asarray(y[i:i + batch_size])
                if self.output == "per_step" and lb is not None:
                    hit = hit[np.arange(out.shape[1])[None, :] < np.asarray(lb)[:, None]]
                correct += int(hit.sum())
        return total, correct, count

    def _count(self, out, lengths):
        if self.output == "per_step" and lengths is not None:
            return int(np.minimum(np.asarray(lengths), out.shape[1]).sum())
        return int(np.prod(out.shape[:2 if self.output == "per_step" else 1]))

    def encode(self, x, lengths=None, pooling="last"):
        """Sequence features for comparison: the final hidden state ("last") or the mean of
        the last layer's outputs over valid steps ("mean"), (B, D*H)."""
        if not isinstance(pooling, str) or pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}")
        x, lengths = self._batch(x, lengths)
        return self._guard.read(self._encode, x, lengths, pooling)

    def _encode(self, x, lengths, pooling):
        xin = self.embedding.weight[x] if self.embedding is not None else x
        out, state_n = self._infer(xin, None, lengths, pooling != "last")
        if pooling == "last":
            return self._last(out, state_n, lengths)
        T = out.shape[1]
        n = np.full(out.shape[0], T) if lengths is None else np.asarray(lengths)
        return out.sum(axis=1) / np.maximum(n, 1)[:, None].astype(self.dtype)

    def release_buffers(self):
        """Drop the inference buffers kept per thread (see fastrnn.nn.layers)."""
        self.rnn.release_buffers()

    # ---- streaming -----------------------------------------------------------------
    def initial_state(self, batch=1):
        """The zero state for ``batch`` streams (a plain array, or a pair for LSTM)."""
        return self.rnn.initial_state(batch)

    def step(self, x_t, state):
        """One time step for ``B`` streams: ``x_t`` is ``(B,)`` token ids or ``(B, I)``
        features; returns ``(y_t (B, C), state)``. Per-step tasks only; the caller owns
        the state (never modified in place), so one model serves many streams. Computed
        from one version of the weights, as :meth:`predict` is."""
        if self.output != "per_step":
            raise ValueError("step() is for per-step tasks; this model predicts once per sequence")
        x_t = self._checked_inputs(x_t, ndim=2)
        g = self._guard.gen                 # fastrnn.kernels._guard, inlined: the per-step path
        if not g & 1:
            out = self._step_checked(x_t, state)
            if self._guard.gen == g:
                return out
        return self._guard.read(self._step_checked, x_t, state)

    def _step_checked(self, x_t, state):
        if self.embedding is not None:
            x_t = self.embedding.weight[x_t]
        h_t, state = self.rnn.step(x_t, state)       # refuses bidirectional stacks
        return self.head.forward(h_t), state

    def state_dict(self):
        """Copies of every parameter, by :meth:`named_parameters`' names."""
        return {k: v.copy() for k, v in self.named_parameters().items()}

    def load_state_dict(self, state):
        """Replace every parameter (names as :meth:`named_parameters`; finite floats, cast
        to the model's dtype), e.g. ``m.load_state_dict(fastrnn.load(path).state_dict())``
        to serve new weights without a new object. Everything is checked first; then the
        copy is one step for concurrent readers: a ``predict``/``evaluate``/``encode``/
        ``step`` running meanwhile, or a stream of ``self.rnn``, computes entirely from the
        old weights or entirely from the new ones, never from a mix (fastrnn.kernels._guard). The
        buffers stay the same objects, so optimizers and streams keep following them."""
        named = self.named_parameters()
        state = L.checked_state(state, [(k, v.shape, None) for k, v in named.items()], named)
        with self._guard.writing():
            for k, a in named.items():
                a[...] = state[k]

    def __repr__(self):
        """The architecture, as PyTorch prints a module: each part with its arguments."""
        c = self.config
        parts = [] if self.embedding is None else [f"(embedding): {self.embedding!r}"]
        parts += [f"(rnn): {self.rnn!r}", f"(head): {self.head!r}"]
        n = sum(p.size for p, _ in self.parameters())
        lines = "".join(f"  {p}\n" for p in parts)
        return (f"SequenceModel(\n{lines}  task={c['task']!r}, dtype={self.dtype.name}, "
                f"parameters={n:,}\n)")


def _all_finite(x, chunk=1 << 20):
    """np.isfinite(x).all() over row blocks of about ``chunk`` values: the temporary stays
    small however large x (or a broadcast view pretending to be large) is."""
    if x.dtype.kind in "iu":
        return True
    rows = max(1, chunk // max(1, int(np.prod(x.shape[1:]))))
    return all(np.isfinite(x[i:i + rows]).all() for i in range(0, len(x), rows))


def cosine_similarity(a, b):
    """Cosine similarity of feature vectors, row by row: (N, F), (N, F) -> (N,) (1-D in,
    a float out). Zero vectors give 0.

        >>> from fastrnn import cosine_similarity
        >>> cosine_similarity([[1, 0], [1, 1]], [[2, 0], [0, 0]]).tolist()
        [1.0, 0.0]
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    out = np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)
    return float(out) if out.ndim == 0 else out


def _is_ragged(x, allow_equal=False):
    """Whether ``x`` is a list of sequences of different lengths (``allow_equal``: or of
    any lengths), which the model's entry points pad."""
    if not isinstance(x, (list, tuple)) or not x:
        return False
    try:
        if not all(np.ndim(s) >= 1 for s in x):
            return False
    except ValueError:              # a sequence ragged inside: not data (refused later)
        return False
    return allow_equal or len({len(s) for s in x}) > 1


def _padded(x, lengths):
    """``(x, lengths)`` with a list of sequences of different lengths padded (its lengths
    taken from it); anything else as given."""
    if not _is_ragged(x):
        return x, lengths
    if lengths is not None:
        raise ValueError("give lengths only with padded arrays, not with a list of sequences "
                         "of different lengths")
    return pad_sequences(x)


def pad_sequences(seqs, dtype=None, value=0):
    """List of (T_i, ...) arrays -> padded (B, T_max, ...) array and lengths (B,). The
    array has ``dtype``, or the type that holds every sequence's values (numpy's type
    promotion) when None.

        >>> from fastrnn import pad_sequences
        >>> x, lengths = pad_sequences([[1, 2, 3], [4]])
        >>> x.tolist(), lengths.tolist()
        ([[1, 2, 3], [4, 0, 0]], [3, 1])
    """
    seqs = [np.asarray(s) if dtype is None else np.asarray(s, dtype) for s in seqs]
    if not seqs:
        raise ValueError("pad_sequences needs at least one sequence")
    if any(s.ndim == 0 for s in seqs):
        raise ValueError("pad_sequences needs sequences (arrays of at least one axis), got "
                         "a scalar")
    lengths = np.array([len(s) for s in seqs], np.int64)
    tail = seqs[0].shape[1:]
    for s in seqs:
        if s.shape[1:] != tail:
            raise ValueError(f"sequences differ in feature shape: {s.shape[1:]} vs {tail}")
    if dtype is None:
        dtype = functools.reduce(np.promote_types, {s.dtype for s in seqs})
    out = np.full((len(seqs), int(lengths.max()), *tail), value, dtype=dtype)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out, lengths
