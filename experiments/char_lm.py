"""Character-level language model (issue 7, section 4): tiny Shakespeare, 2-layer LSTM.

    python -m experiments.char_lm            # the full run (fastrnn, then PyTorch)
    python -m experiments.char_lm --quick    # a smoke run

First 90% of the text for training, last 10% for validation (nats per character). The
training text is cut into 32 parallel streams, read in order with truncated BPTT (chunks
of 100 characters, the state carried across chunks and the gradient cut between them), as
char-rnn does. Model: embedding 64, two LSTM layers of 256 units, softmax output; Adam
(lr 2e-3), gradient norm clipped at 1. The validation loss is measured after every fifth
of an epoch; the clock counts training only. The identical recipe then runs in PyTorch on
the same machine and thread count, and the time each takes to reach the same validation
loss is compared. The trained model also gives samples and, through its features
(`model.encode`), nearest neighbours of a few words by cosine similarity.
Writes experiments/results/char_lm.md and char_lm.png.
"""
import argparse
import os
import time

import numpy as np

import fastrnn
from fastrnn import SequenceModel, cosine_similarity, optim, text
from experiments import tasks

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
QUERY_WORDS = ["king", "queen", "love", "death", "lord", "night", "good", "blood"]


def streams(ids, n_streams):
    """ids (N,) -> x, y (n_streams, L): n_streams contiguous stretches, next-char targets."""
    L = (len(ids) - 1) // n_streams
    x = ids[:n_streams * L].reshape(n_streams, L)
    y = ids[1:n_streams * L + 1].reshape(n_streams, L)
    return x, y


def fastrnn_run(train_xy, valid_xy, vocab, cfg, threads, seed):
    model = SequenceModel("lstm", vocab_size=len(vocab), embedding_dim=cfg["embed"],
                          hidden_size=cfg["hidden"], num_layers=2, task="next_token",
                          seed=seed, n_threads=threads)
    model.vocabulary = vocab
    opt = optim.Adam(model.parameters(), lr=cfg["lr"])
    x, y = train_xy
    curve, clock = [], 0.0
    for epoch in range(cfg["epochs"]):
        for seg in np.array_split(np.arange(x.shape[1]), cfg["rounds"]):
            t0 = time.perf_counter()
            model.fit(x[:, seg], y[:, seg], epochs=1, batch_size=x.shape[0], optimizer=opt,
                      clip_norm=1.0, tbptt=cfg["bptt"], shuffle=False, progress=False)
            clock += time.perf_counter() - t0
            curve.append((clock, model.evaluate(*valid_xy)["loss"]))
            print(f"fastrnn  {clock:7.1f} s  validation {curve[-1][1]:.4f}", flush=True)
    return model, curve


def torch_run(train_xy, valid_xy, vocab, cfg, threads, seed):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    V = len(vocab)
    emb = torch.nn.Embedding(V, cfg["embed"])
    lstm = torch.nn.LSTM(cfg["embed"], cfg["hidden"], num_layers=2, batch_first=True)
    head = torch.nn.Linear(cfg["hidden"], V)
    params = [*emb.parameters(), *lstm.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=cfg["lr"])
    x, y = (torch.from_numpy(a) for a in train_xy)
    vx, vy = (torch.from_numpy(a) for a in valid_xy)
    ce = torch.nn.functional.cross_entropy
    curve, clock = [], 0.0
    for epoch in range(cfg["epochs"]):
        for seg in np.array_split(np.arange(x.shape[1]), cfg["rounds"]):
            t0 = time.perf_counter()
            state = None
            for c0 in range(int(seg[0]), int(seg[-1]) + 1, cfg["bptt"]):
                c1 = min(c0 + cfg["bptt"], int(seg[-1]) + 1)
                out, state = lstm(emb(x[:, c0:c1]), state)
                loss = ce(head(out).reshape(-1, V), y[:, c0:c1].reshape(-1))
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                state = tuple(s.detach() for s in state)
            clock += time.perf_counter() - t0
            with torch.no_grad():
                out, _ = lstm(emb(vx))
                curve.append((clock, float(ce(head(out).reshape(-1, V), vy.reshape(-1)))))
            print(f"PyTorch  {clock:7.1f} s  validation {curve[-1][1]:.4f}", flush=True)
    return curve


def time_to_reach(curve, level):
    """Training seconds at which the validation loss first reaches ``level`` (linear
    interpolation between measurements), or None."""
    prev_t, prev_v = 0.0, None
    for t, v in curve:
        if v <= level:
            if prev_v is None or prev_v == v:
                return t
            return prev_t + (t - prev_t) * (prev_v - level) / (prev_v - v)
        prev_t, prev_v = t, v
    return None


def neighbours(model, words, candidates, k=5):
    """For each query word, the k candidates whose features (the final hidden state after
    reading " word") are closest by cosine similarity."""
    def features(ws):
        ids = [text.encode(list(" " + w), model.vocabulary) for w in ws]
        lengths = np.array([len(i) for i in ids])
        x = np.zeros((len(ws), lengths.max()), np.int64)
        for r, i in enumerate(ids):
            x[r, :len(i)] = i
        return model.encode(x, lengths)
    cand = features(candidates)
    out = {}
    for w in words:
        f = features([w])
        sims = cosine_similarity(np.repeat(f, len(candidates), 0), cand)
        order = [i for i in np.argsort(-sims) if candidates[i] != w][:k]
        out[w] = [(candidates[i], float(sims[i])) for i in order]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch run")
    args = ap.parse_args(argv)
    cfg = dict(embed=64, hidden=256, lr=2e-3, bptt=100, streams=32, epochs=3, rounds=5)
    train_text, valid_text = tasks.tiny_shakespeare()
    if args.quick:
        cfg = dict(embed=8, hidden=16, lr=2e-3, bptt=20, streams=4, epochs=1, rounds=2)
        train_text, valid_text = train_text[:4000], valid_text[:1000]
    # the alphabet of the whole corpus (as char-rnn does): a character is not learned content
    vocab = text.build_vocabulary(text.tokenize(train_text + valid_text))
    train_xy = streams(text.encode(list(train_text), vocab), cfg["streams"])
    valid_xy = streams(text.encode(list(valid_text), vocab), 8)
    model, ours = fastrnn_run(train_xy, valid_xy, vocab, cfg, args.threads, args.seed)
    theirs = None
    if not args.no_torch:
        try:
            theirs = torch_run(train_xy, valid_xy, vocab, cfg, args.threads, args.seed)
        except ImportError:
            print("PyTorch is not installed: no comparison")
    samples = [fastrnn.text.sample(model, prime=p, length=300, temperature=0.8, seed=1)
               for p in ("ROMEO:", "First Citizen:\n")]
    words = [w for w in text.tokenize(train_text, "word") if w.isalpha() and len(w) > 2]
    counts = {}
    for w in words:
        counts[w.lower()] = counts.get(w.lower(), 0) + 1
    candidates = sorted(counts, key=lambda w: -counts[w])[:400]
    near = neighbours(model, [w for w in QUERY_WORDS if w in counts] or candidates[:3],
                      candidates)
    for s in samples:
        print("----\n" + s)
    for w, ns in near.items():
        print(w, ns)
    if not args.quick:
        write_report(cfg, ours, theirs, samples, near, args.threads)
        plot(ours, theirs)


def write_report(cfg, ours, theirs, samples, near, threads):
    lines = ["# Character-level language model: tiny Shakespeare", "",
             "Command: `python -m experiments.char_lm` "
             f"({threads} threads). Recipe (both sides): embedding {cfg['embed']}, 2 LSTM layers "
             f"of {cfg['hidden']}, Adam lr {cfg['lr']}, gradient norm clipped at 1, "
             f"{cfg['streams']} streams, truncated BPTT over {cfg['bptt']} characters, "
             f"{cfg['epochs']} epochs; validation loss (nats per character, last 10% of the "
             "text) after every fifth of an epoch; the clock counts training only.", "",
             "| after | fastrnn: seconds | fastrnn: validation | PyTorch: seconds | "
             "PyTorch: validation |", "|---|---|---|---|---|"]
    for k, (t, v) in enumerate(ours):
        tt, tv = theirs[k] if theirs else (float("nan"), float("nan"))
        lines.append(f"| {(k + 1) / cfg['rounds']:.1f} epochs | {t:.1f} | {v:.4f} | {tt:.1f} | "
                     f"{tv:.4f} |")
    if theirs:
        level = max(ours[-1][1], theirs[-1][1])
        a, b = time_to_reach(ours, level), time_to_reach(theirs, level)
        lines += ["", f"Time to reach a validation loss of {level:.4f} (the final loss of the "
                  f"side that ended higher): fastrnn {a:.1f} s, PyTorch {b:.1f} s: fastrnn "
                  f"{b / a:.2f}x sooner (target: 1.5x)."]
    lines += ["", "## Samples (temperature 0.8)", ""]
    for s in samples:
        lines += ["```", s, "```", ""]
    lines += ["## Nearest words by the model's features", "",
              "Features: the final hidden state (both layers' top output) after reading a space "
              "and the word; candidates: the 400 most frequent words of the training text; "
              "cosine similarity.", "", "| word | nearest (similarity) |", "|---|---|"]
    for w, ns in near.items():
        lines.append(f"| {w} | " + ", ".join(f"{n} ({s:.2f})" for n, s in ns) + " |")
    with open(os.path.join(RESULTS, "char_lm.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def plot(ours, theirs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(*zip(*ours), marker="o", ms=3, label="fastrnn")
    if theirs:
        ax.plot(*zip(*theirs), marker="s", ms=3, label="PyTorch 2.13")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("validation loss (nats per character)")
    ax.set_title("tiny Shakespeare, 2-layer LSTM")
    ax.legend()
    fig.tight_layout()
    os.makedirs(RESULTS, exist_ok=True)
    fig.savefig(os.path.join(RESULTS, "char_lm.png"), dpi=110)


if __name__ == "__main__":
    main()
