"""Polyphonic music (issue 7, section 3): every cell variant on the JSB chorales.

    python -m experiments.jsb_chorales            # the full run
    python -m experiments.jsb_chorales --quick    # a smoke run

Next-step prediction of piano rolls: 88 sigmoid outputs, binary cross-entropy; the score is
the test negative log-likelihood per time step (lower is better), on the split of
Boulanger-Lewandowski, Vincent & Bengio (2012). Every variant gets the same recipe: one
layer of 128 units, Adam (lr 3e-3), batch 16, gradient norm clipped at 1, at most 60
epochs with early stopping on the validation NLL (patience 8, best weights kept). Then the
same recipe for the variants PyTorch has (RNN, LSTM, GRU) runs in PyTorch 2.13 for the same
number of updates on 2 threads, and the wall times are compared. Writes
experiments/results/jsb_chorales.md and jsb_chorales.png.
"""
import argparse
import os
import time

import numpy as np

import fastrnn
from fastrnn import SequenceModel
from experiments import tasks

VARIANTS = {
    "RNN (tanh)": dict(cell="rnn"),
    "LSTM": dict(cell="lstm"),
    "LSTM, peepholes": dict(cell="lstm", peephole=True),
    "LSTM, coupled gates": dict(cell="lstm", coupled=True),
    "GRU (reset after)": dict(cell="gru", reset_after=True),
    "GRU (reset before, Cho et al.)": dict(cell="gru", reset_after=False),
}
TORCH = {"RNN (tanh)": "RNN", "LSTM": "LSTM", "GRU (reset after)": "GRU"}
PUBLISHED = [  # test NLL per step on JSB chorales (only figures checked against a source)
    ("GRU", 8.54, "Chung, Gulcehre, Cho & Bengio 2014, 'Empirical Evaluation of Gated "
                  "Recurrent Neural Networks on Sequence Modeling'"),
]
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def fastrnn_run(args, data, cfg, seed, threads):
    x, y, lengths = data["train"]
    model = SequenceModel(input_size=88, hidden_size=cfg["hidden"], output_size=88,
                          task="multilabel", seed=seed, n_threads=threads, **args)
    history = model.fit(x, y, lengths, epochs=cfg["epochs"], batch_size=cfg["batch"],
                        lr=cfg["lr"], clip_norm=1.0, validation_data=data["valid"],
                        early_stopping=cfg["patience"], seed=seed, progress=False)
    tx, ty, tl = data["test"]
    test = tasks.nll_per_step(model.predict(tx, tl), ty, tl)
    return {"test": test, "curve": history["val_loss"], "seconds": history["seconds"],
            "steps": history["steps"]}


def torch_run(kind, data, cfg, steps, seed, threads):
    """The same recipe in PyTorch for ``steps`` updates: batches of the same size, each cut
    to its longest sequence, the loss masked the same way; only the training loop is timed."""
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    x, y, lengths = (torch.from_numpy(a) for a in data["train"])
    rnn = getattr(torch.nn, kind)(88, cfg["hidden"], batch_first=True)
    head = torch.nn.Linear(cfg["hidden"], 88)
    params = list(rnn.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=cfg["lr"])
    rng = np.random.default_rng(seed)
    done, t0 = 0, time.perf_counter()
    while done < steps:
        order = rng.permutation(len(x))
        for i in range(0, len(x), cfg["batch"]):
            idx = torch.from_numpy(order[i:i + cfg["batch"]])
            lb = lengths[idx]
            T = int(lb.max())
            xb, yb = x[idx, :T], y[idx, :T]
            mask = (torch.arange(T)[None, :] < lb[:, None]).to(xb.dtype)     # (B, T)
            out, _ = rnn(xb)
            per_note = torch.nn.functional.binary_cross_entropy_with_logits(
                head(out), yb, reduction="none")
            loss = (per_note.sum(-1) * mask).sum() / mask.sum()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            done += 1
            if done == steps:
                break
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = dict(hidden=128, batch=16, lr=3e-3, epochs=60, patience=8)
    rolls = tasks.jsb_chorales()
    if args.quick:
        cfg = dict(hidden=8, batch=16, lr=3e-3, epochs=2, patience=1)
        rolls = {k: v[:20] for k, v in rolls.items()}
    data = {split: tasks.next_step_pairs(r) for split, r in rolls.items()}
    results = {}
    for name, variant in VARIANTS.items():
        results[name] = fastrnn_run(variant, data, cfg, args.seed, args.threads)
        r = results[name]
        print(f"{name:32} test NLL {r['test']:.3f}  {r['seconds']:6.1f} s  {r['steps']} updates",
              flush=True)
    timing = {}
    try:
        import torch  # noqa: F401
        for name, kind in TORCH.items():
            timing[name] = torch_run(kind, data, cfg, results[name]["steps"], args.seed,
                                     args.threads)
            print(f"PyTorch {kind:5} {timing[name]:6.1f} s for {results[name]['steps']} updates "
                  f"(fastrnn {results[name]['seconds']:.1f} s)", flush=True)
    except ImportError:
        print("PyTorch is not installed: no timing comparison")
    if not args.quick:
        write_table(results, timing, cfg, args.threads)
        plot(results)


def write_table(results, timing, cfg, threads):
    best = min((r["test"], n) for n, r in results.items() if not n.startswith("RNN"))
    lines = ["# JSB chorales: test negative log-likelihood per time step", "",
             "Command: `python -m experiments.jsb_chorales` (2 threads). Recipe for every "
             f"variant: one layer of {cfg['hidden']} units, Adam lr {cfg['lr']}, batch "
             f"{cfg['batch']}, gradient norm clipped at 1, at most {cfg['epochs']} epochs, early "
             f"stopping on validation NLL (patience {cfg['patience']}, best weights kept).", "",
             "| network | test NLL | train time | updates | PyTorch, same recipe | fastrnn speed-up |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        t = timing.get(name)
        torch_cols = f"{t:.1f} s | {t / r['seconds']:.2f}x" if t else "no such module | "
        lines.append(f"| {name} | {r['test']:.3f} | {r['seconds']:.1f} s | {r['steps']} | "
                     f"{torch_cols} |")
    lines += ["", f"Best gated network: {best[1]}, {best[0]:.3f} (target: 8.6 or lower).", "",
              "Published (same split, test NLL per step):", ""]
    lines += [f"- {net}: {v} ({src})" for net, v, src in PUBLISHED]
    lines += ["", "PyTorch times only the training loop of the same recipe (same batch size, "
              "batches cut to their longest sequence, same masked loss, Adam and clipping) "
              f"for the same number of updates, torch.set_num_threads({threads}); fastrnn's time is "
              "fit's, which also evaluates the validation set every epoch (so the speed-up is "
              "understated)."]
    with open(os.path.join(RESULTS, "jsb_chorales.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def plot(results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, r in results.items():
        ax.plot(np.arange(1, len(r["curve"]) + 1), r["curve"], label=f"{name} ({r['test']:.2f})")
    ax.axhline(8.54, color="grey", ls="--", lw=1, label="GRU, Chung et al. 2014 (8.54)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation NLL per step")
    ax.set_ylim(top=min(12, ax.get_ylim()[1]))
    ax.legend(fontsize=7)
    ax.set_title("JSB chorales, next-step prediction")
    fig.tight_layout()
    os.makedirs(RESULTS, exist_ok=True)
    fig.savefig(os.path.join(RESULTS, "jsb_chorales.png"), dpi=110)


if __name__ == "__main__":
    main()
