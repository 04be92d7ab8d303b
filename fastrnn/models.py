"""A sequence model: optional embedding, stacked recurrent layers, linear output layer.

    ids (B, T) ints --Embedding--> (B, T, E) --+
    x   (B, T, I) floats ----------------------+--> RNN/LSTM/GRU stack --> h (B, T, D*H)
        output="per_step":  y_t = W_hy h_t + b_y           -> (B, T, C)
        output="last":      y = W_hy h_last + b_y          -> (B, C), h_last the state after
                            each row's last valid step (both directions when bidirectional)

Batch-first throughout, as Keras users expect; ``lengths (B,)`` marks ragged rows (padding
steps hold the state, give zero output and are masked out of the loss).

Tasks (``task=``) pick the output and the loss:
    "next_token" / "per_step_classification": per step, softmax cross-entropy
    "sequence_classification": last state, softmax cross-entropy
    "multilabel": per step, sigmoid binary cross-entropy (summed over labels, mean over steps)
    "regression": per step, mean squared error ("sequence_regression": last state)
"""
import numpy as np

from . import layers as L

_TASKS = {
    "next_token": ("per_step", "cross_entropy"),
    "per_step_classification": ("per_step", "cross_entropy"),
    "sequence_classification": ("last", "cross_entropy"),
    "multilabel": ("per_step", "binary_cross_entropy"),
    "regression": ("per_step", "mse"),
    "sequence_regression": ("last", "mse"),
}
_CELLS = {"rnn": L.RNN, "lstm": L.LSTM, "gru": L.GRU}


class Embedding:
    """Token ids -> vectors. ``weight (V, E)`` in a flat buffer; init N(0, 1) as PyTorch."""

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


class Linear:
    """``y = x @ W.T + b``, ``W (C, D)``, ``b (C,)`` in one flat buffer; Glorot-uniform W,
    zero b."""

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
        # y (..., C) = x (..., D) @ W.T + b
        return x @ self.weight.T + self.bias

    def backward(self, dy, x):
        # dW += dy.T @ x,  db += dy.sum,  dx = dy @ W  (over all leading axes)
        dy2, x2 = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
        self.weight_grad += dy2.T @ x2
        self.bias_grad += dy2.sum(axis=0)
        return dy @ self.weight


class SequenceModel:
    """Embedding (optional) + recurrent stack + linear output; see the module docstring.

    Arguments: ``cell`` ("rnn", "lstm", "gru"), ``input_size`` (feature inputs) or
    ``vocab_size`` (token-id inputs, with ``embedding_dim``, default ``hidden_size``),
    ``hidden_size``, ``output_size``, ``task``, and the layer arguments ``num_layers``,
    ``bidirectional``, ``dropout``, ``nonlinearity`` (rnn), ``peephole``/``coupled`` (lstm),
    ``reset_after`` (gru); ``dtype`` float32 (default) or float64; ``seed`` fixes every
    random choice.
    """

    def __init__(self, cell="lstm", input_size=None, hidden_size=128, output_size=None,
                 task="next_token", vocab_size=None, embedding_dim=None, num_layers=1,
                 bidirectional=False, dropout=0.0, dtype=np.float32, seed=None,
                 n_threads=None, **cell_kwargs):
        if cell not in _CELLS:
            raise ValueError(f"cell must be one of {sorted(_CELLS)}, got {cell!r}")
        if task not in _TASKS:
            raise ValueError(f"task must be one of {sorted(_TASKS)}, got {task!r}")
        if (input_size is None) == (vocab_size is None):
            raise ValueError("give exactly one of input_size (feature inputs) and vocab_size "
                             "(token-id inputs)")
        if output_size is None:
            if vocab_size is None:
                raise ValueError("output_size is required")
            output_size = vocab_size
        self.config = dict(cell=cell, input_size=input_size, hidden_size=hidden_size,
                           output_size=output_size, task=task, vocab_size=vocab_size,
                           embedding_dim=embedding_dim, num_layers=num_layers,
                           bidirectional=bidirectional, dropout=dropout,
                           dtype=np.dtype(dtype).name, **cell_kwargs)
        self.output, self.loss_name = _TASKS[task]
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
        D = 2 if bidirectional else 1
        self.head = Linear(D * hidden_size, output_size, self.dtype, rng)
        self.vocabulary = None      # optional tokens of a language model, saved with it

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
        if self.embedding is not None:
            x = np.asarray(x)
            if x.dtype.kind not in "iu":
                raise TypeError(f"this model takes token ids: x must be integers, got {x.dtype}")
            if x.ndim != 2:
                raise ValueError(f"token ids must be 2-D (batch, time), got shape {x.shape}")
            return self.embedding.forward(x), x
        if isinstance(x, (list, tuple)):
            x = np.asarray(x, dtype=self.dtype)
        if not isinstance(x, np.ndarray) or x.ndim != 3:
            raise ValueError(f"x must be 3-D (batch, time, {self.config['input_size']}), "
                             f"got {getattr(x, 'shape', type(x).__name__)}")
        if not np.isfinite(x).all():
            raise ValueError("x contains NaN or infinity")
        return x, None

    def _last(self, out, state_n, lengths):
        """Features of each row's last valid step, (B, D*H)."""
        h_n = state_n[0] if isinstance(state_n, tuple) else state_n     # (L*D, B, H)
        D = 2 if self.rnn.bidirectional else 1
        return np.concatenate(list(h_n[-D:]), axis=1)

    def forward(self, x, lengths=None, state=None, need_tape=False):
        """Outputs (logits, or predictions for regression), final state, and a tape for
        :meth:`backward` when ``need_tape``."""
        xin, ids = self._inputs(x)
        if need_tape:
            out, state_n, rtape = self.rnn.forward(xin, state, lengths)
        else:
            out, state_n = self.rnn(xin, state, lengths)
            rtape = None
        feats = out if self.output == "per_step" else self._last(out, state_n, lengths)
        y = self.head.forward(feats)
        tape = (ids, rtape, feats, out.shape) if need_tape else None
        return y, state_n, tape

    def backward(self, dy, tape):
        """Accumulate parameter gradients of a loss whose gradient w.r.t. the outputs is
        ``dy``. The gradient is cut at the initial state (truncated BPTT)."""
        ids, rtape, feats, out_shape = tape
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
        """(loss, dy) for the task's loss, padding masked out by ``lengths``."""
        from . import losses
        mask = None
        if self.output == "per_step" and lengths is not None:
            mask = losses.mask_from_lengths(lengths, y.shape[1]).T      # (B, T)
        if self.loss_name == "cross_entropy":
            return losses.softmax_cross_entropy(y, target, mask)
        if self.loss_name == "binary_cross_entropy":
            return losses.sigmoid_binary_cross_entropy(
                y, np.asarray(target, self.dtype), mask, reduction="sum_over_labels")
        return losses.mean_squared_error(y, np.asarray(target, self.dtype), mask)

    # ---- inference -----------------------------------------------------------------
    def predict(self, x, lengths=None, batch_size=256):
        """Raw outputs: logits for classification, values for regression."""
        self.eval()
        outs = [self.forward(x[i:i + batch_size],
                             None if lengths is None else lengths[i:i + batch_size])[0]
                for i in range(0, len(x), batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0,), self.dtype)

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
        """Mean loss over the data (and accuracy for classification), dropout off."""
        self.eval()
        total, count, correct = 0.0, 0, 0
        for i in range(0, len(x), batch_size):
            lb = None if lengths is None else lengths[i:i + batch_size]
            out = self.forward(x[i:i + batch_size], lb)[0]
            loss, _ = self.loss(out, y[i:i + batch_size], lb)
            n = self._count(out, lb)
            total, count = total + loss * n, count + n
            if self.loss_name == "cross_entropy":
                hit = out.argmax(-1) == np.asarray(y[i:i + batch_size])
                if self.output == "per_step" and lb is not None:
                    hit = hit[np.arange(out.shape[1])[None, :] < np.asarray(lb)[:, None]]
                correct += int(hit.sum())
        result = {"loss": total / max(count, 1)}
        if self.loss_name == "cross_entropy":
            result["accuracy"] = correct / max(count, 1)
        return result

    def _count(self, out, lengths):
        if self.output == "per_step" and lengths is not None:
            return int(np.minimum(np.asarray(lengths), out.shape[1]).sum())
        return int(np.prod(out.shape[:2 if self.output == "per_step" else 1]))

    def encode(self, x, lengths=None, pooling="last"):
        """Sequence features for comparison: the final hidden state ("last") or the mean of
        the last layer's outputs over valid steps ("mean"), (B, D*H)."""
        if pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}")
        self.eval()
        xin, _ = self._inputs(x)
        out, state_n = self.rnn(xin, None, lengths)
        if pooling == "last":
            return self._last(out, state_n, lengths)
        T = out.shape[1]
        n = np.full(out.shape[0], T) if lengths is None else np.asarray(lengths)
        return out.sum(axis=1) / np.maximum(n, 1)[:, None].astype(self.dtype)

    def save(self, path, optimizer=None):
        """Write the model (and optionally the optimizer's state) to ``path`` atomically, in
        the safetensors layout; see :mod:`fastrnn.io`."""
        from .io import save
        save(self, path, optimizer)

    # ---- streaming -----------------------------------------------------------------
    def initial_state(self, batch=1):
        """The zero state for ``batch`` streams (a plain array, or a pair for LSTM)."""
        return self.rnn.initial_state(batch)

    def step(self, x_t, state):
        """One time step for ``B`` streams: ``x_t`` is ``(B,)`` token ids or ``(B, I)``
        features; returns ``(y_t (B, C), state)``. Per-step tasks only; the caller owns
        the state (never modified in place), so one model serves many streams."""
        if self.output != "per_step":
            raise ValueError("step() is for per-step tasks; this model predicts once per sequence")
        x_t = np.asarray(x_t)
        if self.embedding is not None:
            if x_t.ndim != 1:
                raise ValueError(f"x_t must be (batch,) token ids, got shape {x_t.shape}")
            x_t = self.embedding.forward(x_t[:, None])[:, 0]
        h_t, state = self.rnn.step(x_t, state)       # refuses bidirectional stacks
        return self.head.forward(h_t), state

    def fit(self, *args, **kwargs):
        """Train; see :func:`fastrnn.training.fit`."""
        from .training import fit
        return fit(self, *args, **kwargs)


def cosine_similarity(a, b):
    """Cosine similarity of feature vectors, row by row: (N, F), (N, F) -> (N,) (1-D in,
    a float out). Zero vectors give 0."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    out = np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)
    return float(out) if out.ndim == 0 else out


def pad_sequences(seqs, dtype=None, value=0):
    """List of (T_i, ...) arrays -> padded (B, T_max, ...) array and lengths (B,)."""
    seqs = [np.asarray(s) if dtype is None else np.asarray(s, dtype) for s in seqs]
    if not seqs:
        raise ValueError("pad_sequences needs at least one sequence")
    lengths = np.array([len(s) for s in seqs], np.int64)
    tail = seqs[0].shape[1:]
    for s in seqs:
        if s.shape[1:] != tail:
            raise ValueError(f"sequences differ in feature shape: {s.shape[1:]} vs {tail}")
    out = np.full((len(seqs), int(lengths.max()), *tail), value, dtype=seqs[0].dtype)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out, lengths
