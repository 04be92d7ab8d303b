"""The main job: the essay's long-term-dependency claim, on the adding problem.

Adding problem (Hochreiter & Schmidhuber 1997): each sequence has T steps of two features,
a random number in [0, 1) and a marker; exactly two steps are marked (one in each half)
and the target is the sum of their two numbers. Predicting the mean (1.0) scores an MSE
of Var(u1 + u2) = 2/12 = 0.167; a network has to carry the first marked number across up
to T steps to do better. A vanilla RNN stays near 0.167, LSTM and GRU get well below 0.01.
"""
import time

import numpy as np

from ..nn.models import SequenceModel

BASELINE_MSE = 2 / 12


def adding_problem(n, T, rng):
    """x (n, T, 2) float32, y (n, 1): the sum of the two marked numbers."""
    x = np.zeros((n, T, 2), np.float32)
    x[:, :, 0] = rng.random((n, T), dtype=np.float32)
    first = rng.integers(0, T // 2, n)
    second = rng.integers(T // 2, T, n)
    x[np.arange(n), first, 1] = 1
    x[np.arange(n), second, 1] = 1
    y = (x[:, :, 0] * x[:, :, 1]).sum(axis=1, keepdims=True)
    return x, y


def run(T=100, hidden=64, n_train=8000, n_test=1000, epochs=8, seed=0, plot="fastrnn-demo.svg",
        progress=True, cells=("rnn", "lstm", "gru"), out=print):
    """Train each cell on the same data; print a table, write the learning curves."""
    rng = np.random.default_rng(seed)
    x, y = adding_problem(n_train, T, rng)
    tx, ty = adding_problem(n_test, T, rng)
    out(f"Adding problem, T={T}: {n_train} training and {n_test} test sequences; predicting the "
        f"mean scores MSE {BASELINE_MSE:.3f}.\nEach network: hidden size {hidden}, Adam, lr 3e-3, "
        f"batch 32, gradients clipped at norm 1, {epochs} epochs.\n")
    results = {}
    for cell in cells:
        model = SequenceModel(cell, input_size=2, hidden_size=hidden, output_size=1,
                              task="sequence_regression", seed=seed)
        out(f"{cell.upper()}:")
        t0 = time.perf_counter()
        history = model.fit(x, y, epochs=epochs, batch_size=32, lr=3e-3, clip_norm=1.0,
                            validation_data=(tx, ty), seed=seed, progress=progress)
        results[cell] = {"curve": history["val_loss"], "mse": history["val_loss"][-1],
                         "seconds": time.perf_counter() - t0, "steps": history["steps"]}
    out(f"\n| network | test MSE | vs mean prediction | solved (MSE < 0.01) | train time |")
    out("|---|---|---|---|---|")
    for cell, r in results.items():
        out(f"| {cell.upper():<7} | {r['mse']:.4f} | {r['mse'] / BASELINE_MSE:6.1%} | "
            f"{'yes' if r['mse'] < 0.01 else 'no'} | {r['seconds']:.1f} s ({r['steps']} updates) |")
    if plot:
        write_svg(plot, {c.upper(): r["curve"] for c, r in results.items()}, BASELINE_MSE,
                  f"Adding problem, T={T}: test MSE after each epoch")
        out(f"\nLearning curves: {plot}")
    return results


def write_svg(path, curves, baseline, title, width=640, height=400):
    """A log-scale line chart of curves (name -> values per epoch) as a standalone SVG."""
    colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"]
    left, right, top, bottom = 70, 120, 40, 50
    n = max(len(v) for v in curves.values())
    lo = min(min(v) for v in curves.values())
    lo = 10 ** np.floor(np.log10(max(lo, 1e-6)))
    hi = 10 ** np.ceil(np.log10(max(max(max(v) for v in curves.values()), baseline)))

    def xy(i, v):
        px = left + (width - left - right) * (i / max(n - 1, 1))
        frac = (np.log10(max(v, lo)) - np.log10(lo)) / (np.log10(hi) - np.log10(lo))
        return px, top + (height - top - bottom) * (1 - frac)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="14">{title}</text>']
    decade = lo
    while decade <= hi * 1.0001:
        _, py = xy(0, decade)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{py:.1f}" y2="{py:.1f}" '
                     f'stroke="#ddd"/><text x="{left - 8}" y="{py + 4:.1f}" '
                     f'text-anchor="end">{decade:g}</text>')
        decade *= 10
    for i in range(n):
        px, _ = xy(i, lo)
        parts.append(f'<text x="{px:.1f}" y="{height - bottom + 18}" text-anchor="middle">'
                     f'{i + 1}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 12}" '
                 f'text-anchor="middle">epoch</text>')
    _, by = xy(0, baseline)
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{by:.1f}" y2="{by:.1f}" '
                 f'stroke="#888" stroke-dasharray="6,4"/><text x="{left + 6}" '
                 f'y="{by - 6:.1f}" fill="#555">predicting the mean: {baseline:.3f}</text>')
    for k, (name, values) in enumerate(curves.items()):
        pts = " ".join(f"{px:.1f},{py:.1f}" for px, py in (xy(i, v) for i, v in enumerate(values)))
        color = colors[k % len(colors)]
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
        lx, ly = xy(len(values) - 1, values[-1])
        parts.append(f'<text x="{lx + 6:.1f}" y="{ly + 4:.1f}" fill="{color}">{name}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")
