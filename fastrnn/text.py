"""Text language models: vocabularies, training windows, sampling with temperature."""
import re

import numpy as np

_WORD = re.compile(r"\w+|[^\w\s]|\s+")


def tokenize(text, level="char"):
    """Characters, or words (runs of word characters, punctuation, whitespace kept as
    tokens so sampled text reads back exactly)."""
    if level == "char":
        return list(text)
    if level == "word":
        return _WORD.findall(text)
    raise ValueError(f"level must be 'char' or 'word', got {level!r}")


def build_vocabulary(tokens, max_size=None):
    """Tokens by decreasing frequency (ties by first appearance); with max_size, the rest
    map to the last entry, "<unk>"."""
    counts = {}
    for t in tokens:
        counts[t] = counts.get(t, 0) + 1
    vocab = sorted(counts, key=lambda t: -counts[t])
    if max_size and len(vocab) > max_size:
        vocab = vocab[:max_size - 1] + ["<unk>"]
    return vocab


def encode(tokens, vocabulary):
    index = {t: i for i, t in enumerate(vocabulary)}
    unk = index.get("<unk>")
    ids = [index.get(t, unk) for t in tokens]
    if any(i is None for i in ids):
        missing = next(t for t, i in zip(tokens, ids) if i is None)
        raise ValueError(f"token {missing!r} is not in the model's vocabulary")
    return np.asarray(ids, np.int64)


def windows(ids, seq_len):
    """Non-overlapping (input, next-token target) windows: x (N, seq_len), y (N, seq_len)."""
    n = (len(ids) - 1) // seq_len
    if n < 1:
        raise ValueError(f"text too short: {len(ids)} tokens for windows of {seq_len}")
    x = ids[:n * seq_len].reshape(n, seq_len)
    y = ids[1:n * seq_len + 1].reshape(n, seq_len)
    return x, y


def sample(model, prime="", length=200, temperature=1.0, level="char", seed=None):
    """Generate ``length`` tokens after ``prime`` by streaming one token at a time, each
    drawn from softmax(logits / temperature)."""
    if model.vocabulary is None:
        raise ValueError("this model has no vocabulary: it was not trained on text")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    rng = np.random.default_rng(seed)
    vocab = model.vocabulary
    state = model.initial_state(1)
    prime_ids = encode(tokenize(prime, level), vocab) if prime else \
        np.array([rng.integers(len(vocab))])
    y = None
    for i in prime_ids:
        y, state = model.step(np.array([i]), state)
    out = []
    for _ in range(length):
        z = y[0].astype(np.float64) / temperature
        p = np.exp(z - z.max())
        i = int(rng.choice(len(vocab), p=p / p.sum()))
        out.append(vocab[i])
        y, state = model.step(np.array([i]), state)
    return "".join(out)
