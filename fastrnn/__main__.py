"""Command line: ``fastrnn demo``, ``check``, ``bench``, ``train``, ``sample``, ``predict``,
``similar``, ``info``, ``convert``.

``fastrnn demo`` needs no arguments and no data: it trains a vanilla RNN, an LSTM and a
GRU on the adding problem and shows that the gated networks learn the long-term
dependency while the vanilla RNN does not. ``fastrnn check`` runs every cell forward and
backward on the compiled kernels against the numpy reference, then times a few cases.
"""
import argparse
import sys
import time

import numpy as np


def _demo(args):
    from fastrnn import demo
    results = demo.run(T=args.T, seed=args.seed, plot=args.plot, progress=not args.quiet)
    return 0 if all(r["mse"] < 0.01 for c, r in results.items() if c != "rnn") else 1


def _check(args):
    import fastrnn
    from fastrnn import functional as F, reference as R
    from fastrnn.benchmark import compare, machine_info, make_case

    info = machine_info()
    print(f"fastrnn {fastrnn.__version__}: {info['cpu']}, {info['cores']} cores ({info['simd']}), "
          f"OpenMP {'on' if fastrnn.openmp_enabled() else 'OFF'}, "
          f"{fastrnn.effective_n_threads(args.threads)} thread(s)\n")
    print("1. Every cell against the numpy reference (float64, T=20, B=4, I=8, H=24, ragged lengths)")
    rng = np.random.default_rng(0)
    T, B, I, H = 20, 4, 8, 24
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((B, H)) * 0.1, rng.standard_normal((B, H)) * 0.1
    dhs = rng.standard_normal((T, B, H))
    lengths = np.array([20, 13, 1, 0])
    variants = [("rnn tanh", "rnn", 1, {"nonlinearity": "tanh"}),
                ("rnn relu", "rnn", 1, {"nonlinearity": "relu"}),
                ("lstm", "lstm", 4, {}),
                ("lstm peephole", "lstm", 4, {"p_i": 0, "p_f": 0, "p_o": 0}),
                ("lstm coupled", "lstm", 3, {"coupled": True}),
                ("gru (reset after)", "gru", 3, {"reset_after": True}),
                ("gru (reset before)", "gru", 3, {"reset_after": False})]
    worst = 0.0
    for name, cell, G, kw in variants:
        kw = {k: (rng.standard_normal(H) * 0.3 if k.startswith("p_") else v) for k, v in kw.items()}
        s = 1 / np.sqrt(H)
        W = [rng.uniform(-s, s, shape) for shape in ((G * H, I), (G * H, H), (G * H,), (G * H,))]
        results = []
        for mod, extra in ((R, {}), (F, {"n_threads": args.threads})):
            if cell == "lstm":
                out = mod.lstm_forward(x, h0, c0, *W, lengths=lengths, **kw, **extra)
                back = mod.lstm_backward(dhs, None, None, out[-1])
            else:
                fwd = mod.rnn_forward if cell == "rnn" else mod.gru_forward
                out = fwd(x, h0, *W, lengths=lengths, **kw, **extra)
                back = getattr(mod, cell + "_backward")(dhs, None, out[-1])
            results.append(list(out[:-1]) + list(back[:-1]) + [back[-1][k] for k in sorted(back[-1])])
        err = max(float(np.abs(a - b).max()) for a, b in zip(*results))
        worst = max(worst, err)
        print(f"   {name:<20} outputs and all gradients: max |fastrnn - numpy| = {err:.1e}")
    if worst > 1e-9:
        print("FAILED: fastrnn disagrees with the reference")
        return 1
    print("\n2. Speed against the numpy reference (float32, T=100, I=H=128, checked first)")
    print(f"   {'case':<28} {'fastrnn':>10} {'numpy':>10} {'speed-up':>9}")
    for cell in ("lstm", "gru"):
        for B, train in ((1, False), (32, False), (32, True)):
            r = compare(make_case(cell, 100, B, 128), train=train, n_threads=args.threads or 1,
                        repeats=3, min_time=0.05)
            label = f"{cell} {'fwd+bwd' if train else 'forward'} B={B}"
            print(f"   {label:<28} {r['fastrnn'] * 1e3:8.2f}ms {r['numpy'] * 1e3:8.2f}ms "
                  f"{r['numpy'] / r['fastrnn']:8.2f}x")
    print("\nFull benchmark: fastrnn bench (PyTorch and ONNX Runtime too, when installed)")
    return 0


def _bench(args):
    if args.core:
        from fastrnn.benchmark import core_table
        core_table(threads=tuple(args.threads_list), out=lambda line: print(line, flush=True))
        return 0
    from fastrnn.bench_peers import main as peers
    return peers(["--threads", *map(str, args.threads_list)] + (["--quick"] if args.quick else [])
                 + (["--write"] if args.write else [])
                 + (["--chart", args.chart] if args.chart else []))


def _info(args):
    import fastrnn
    from fastrnn.benchmark import machine_info
    info = machine_info()
    print(f"fastrnn {fastrnn.__version__}")
    for k in ("cpu", "cores", "simd", "blas", "openmp", "python", "numpy"):
        print(f"  {k:<8} {info[k]}")
    print(f"  threads  {fastrnn.effective_n_threads()} (OMP_NUM_THREADS, capped at the CPUs)")
    return 0


def _train(args):
    import fastrnn
    from fastrnn import text as tx
    with open(args.file, encoding="utf-8") as f:
        corpus = f.read()
    tokens = tx.tokenize(corpus, args.level)
    vocab = tx.build_vocabulary(tokens, args.max_vocab)
    ids = tx.encode(tokens, vocab)
    split = int(len(ids) * 0.9)
    x, y = tx.windows(ids[:split], args.seq_len)
    vx, vy = tx.windows(ids[split:], args.seq_len)
    model = fastrnn.SequenceModel(args.cell, vocab_size=len(vocab), hidden_size=args.hidden,
                                  num_layers=args.layers, task="next_token", seed=args.seed)
    model.vocabulary = vocab
    print(f"{len(tokens)} {args.level} tokens, vocabulary {len(vocab)}, {len(x)} training "
          f"windows of {args.seq_len}; {model.rnn!r}")
    h = model.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                  clip_norm=5.0, validation_data=(vx, vy), seed=args.seed,
                  max_steps=args.max_steps, best_checkpoint=args.out)
    if not h["val_loss"]:
        model.save(args.out)
    print(f"validation loss {min(h['val_loss'] or [float('nan')]):.4f} nats/token; "
          f"saved {args.out}")
    print("sample:", repr(tx.sample(fastrnn.load(args.out), length=120, temperature=0.8,
                                    level=args.level, seed=args.seed)))
    return 0


def _sample(args):
    import fastrnn
    from fastrnn import text as tx
    model = fastrnn.load(args.model)
    print(args.prime + tx.sample(model, args.prime, args.length, args.temperature,
                                 args.level, args.seed))
    return 0


def _predict(args):
    import fastrnn
    model = fastrnn.load(args.model)
    x = np.load(args.input, allow_pickle=False)
    y = model.predict_proba(x) if model.loss_name != "mse" else model.predict(x)
    if args.out:
        np.save(args.out, y)
        print(f"{y.shape} -> {args.out}")
    else:
        print(y)
    return 0


def _similar(args):
    import fastrnn
    from fastrnn import text as tx
    model = fastrnn.load(args.model)
    feats = []
    for s in (args.a, args.b):
        ids = tx.encode(tx.tokenize(s, args.level), model.vocabulary)[None]
        feats.append(model.encode(ids, pooling=args.pooling)[0])
    print(f"{fastrnn.cosine_similarity(*feats):.4f}")
    return 0


_FORMATS = {".pt": "torch", ".pth": "torch", ".safetensors": "safetensors", ".onnx": "onnx",
            ".fastrnn": "fastrnn"}


def _format_of(path):
    import os
    ext = os.path.splitext(path)[1].lower()
    if ext not in _FORMATS:
        raise ValueError(f"{path}: unknown extension {ext!r}; expected one of "
                         f"{', '.join(_FORMATS)}")
    return _FORMATS[ext]


def _is_fastrnn_file(path):
    """A .safetensors file whose metadata says fastrnn_format (fastrnn files are
    safetensors too); only the JSON header is read, fastrnn.load validates the rest."""
    import json
    import struct
    from fastrnn.io import MAX_HEADER
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8 or struct.unpack("<Q", head)[0] > MAX_HEADER:
            return False
        try:
            meta = json.loads(f.read(struct.unpack("<Q", head)[0])).get("__metadata__")
        except (ValueError, AttributeError):
            return False
    return isinstance(meta, dict) and "fastrnn_format" in meta


def _convert_read(args, check):
    """IN as a fastrnn object, and the parity difference of the import (None: unchecked)."""
    import fastrnn
    from fastrnn.interop import torch_io
    fmt = _format_of(args.input)
    hints = {k: v for k, v in (("kind", args.kind), ("nonlinearity", args.nonlinearity),
                               ("batch_first", args.batch_first or None)) if v is not None}
    state_dict = fmt == "torch" or (fmt == "safetensors" and not _is_fastrnn_file(args.input))
    if hints and not state_dict:
        raise ValueError(f"--{'/--'.join(hints).replace('_', '-')} apply to state dicts "
                         "(.pt, .pth, .safetensors) only")
    if state_dict:
        obj = torch_io.from_torch(torch_io.read_state_dict(args.input), check=check, **hints)
        return obj, obj.parity_max_abs_diff, "PyTorch"
    if fmt == "onnx":
        from fastrnn.interop.onnx_import import from_onnx
        imported = from_onnx(args.input, check=check)
        obj = imported.to_fastrnn(check=check)
        diffs = [d for d in (imported.parity_max_abs_diff, obj.parity_max_abs_diff)
                 if d is not None]
        return obj, (max(diffs) if diffs else None), "ONNX Runtime"
    return fastrnn.load(args.input), None, None


def _convert_write(obj, path, check):
    """Write ``obj`` to ``path``; the parity difference of the export (None: unchecked)."""
    import numpy as np
    import fastrnn
    from fastrnn import io
    from fastrnn.interop import torch_io
    fmt = _format_of(path)
    if fmt in ("torch", "safetensors"):
        module = torch_io.to_torch(obj, check=check)
        torch_io.write_state_dict(module.state_dict(), path)
        return module.parity_max_abs_diff, "PyTorch"
    if fmt == "onnx":
        from fastrnn.interop.onnx_export import to_onnx
        proto = to_onnx(obj, path, check=check)
        meta = {p.key: p.value for p in proto.metadata_props}      # the exporter's report
        diff = meta.get("fastrnn.parity_max_abs_diff")
        return (None if diff is None else float(diff)), meta.get("fastrnn.parity_runtime")
    io.save(obj, path)
    if not check:
        return None, None
    # the file read back runs like the object written, on a random input and state
    from fastrnn.interop.compare import compare
    from fastrnn.interop.parity import ParityError, default_tolerance
    x, state = torch_io._random_case(obj, np.random.default_rng(0))
    diff = compare(obj, fastrnn.load(path), x, state=state)
    dtype = getattr(obj, "dtype", None) or obj._layer.dtype          # cells: their layer's
    if diff > default_tolerance(dtype):
        raise ParityError(f"{path} read back differs from what was written by {diff:.3g}")
    return diff, "the file read back"


def _convert(args):
    from fastrnn.interop.parity import ParityError
    check = not args.no_check
    try:
        _format_of(args.output)                   # refuse a bad OUT before any work
        obj, diff_in, side_in = _convert_read(args, check)
        print(f"read   {args.input}: {_describe_obj(obj)}" +
              (f" (against {side_in}: max abs diff {diff_in:.3g})" if diff_in is not None else ""))
        diff_out, side_out = _convert_write(obj, args.output, check)
        print(f"wrote  {args.output}" +
              (f" (against {side_out}: max abs diff {diff_out:.3g})" if diff_out is not None
               else ""))
    except (ValueError, TypeError, ImportError, OSError, ParityError) as exc:
        print(f"fastrnn convert: {exc}", file=sys.stderr)
        return 1
    diffs = [d for d in (diff_in, diff_out) if d is not None]
    if not check:
        print("parity check skipped (--no-check)")
    else:
        print(f"largest absolute difference: {max(diffs, default=0.0):.3g}")
    return 0


def _describe_obj(obj):
    from fastrnn.interop.torch_io import _describe
    from fastrnn.models import SequenceModel
    if isinstance(obj, SequenceModel):
        return f"SequenceModel({obj.config['cell']}, task={obj.config['task']!r}) over {obj.rnn!r}"
    return _describe(obj)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="fastrnn", description="fast CPU recurrent networks")
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="RNN vs LSTM vs GRU on the adding problem (the essay's claim)")
    d.add_argument("--T", type=int, default=100, help="sequence length (default 100)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--plot", default="fastrnn-demo.svg", help="learning-curve plot (SVG)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_demo)
    k = sub.add_parser("check", help="check every cell against numpy and time a few cases")
    k.add_argument("--threads", type=int, default=1, help="OpenMP threads (default 1)")
    k.set_defaults(func=_check)
    b = sub.add_parser("bench", help="benchmark against numpy, PyTorch and ONNX Runtime")
    b.add_argument("--threads", dest="threads_list", type=int, nargs="+", default=[1, 2])
    b.add_argument("--quick", action="store_true", help="a short smoke run")
    b.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    b.add_argument("--chart", help="draw the speed-ups as a bar chart PNG (needs matplotlib)")
    b.add_argument("--core", action="store_true",
                   help="only the kernels against the numpy reference (bench/bench_core.py)")
    b.set_defaults(func=_bench)
    i = sub.add_parser("info", help="versions, BLAS, OpenMP and threads")
    i.set_defaults(func=_info)
    t = sub.add_parser("train", help="train a character- or word-level language model")
    t.add_argument("file", help="a plain UTF-8 text file")
    t.add_argument("--level", choices=["char", "word"], default="char")
    t.add_argument("--cell", choices=["rnn", "lstm", "gru"], default="lstm")
    t.add_argument("--hidden", type=int, default=128)
    t.add_argument("--layers", type=int, default=1)
    t.add_argument("--seq-len", type=int, default=64)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--max-vocab", type=int, default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default="model.fastrnn")
    t.set_defaults(func=_train)
    s = sub.add_parser("sample", help="generate text from a trained language model")
    s.add_argument("model")
    s.add_argument("--prime", default="")
    s.add_argument("--length", type=int, default=200)
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--level", choices=["char", "word"], default="char")
    s.add_argument("--seed", type=int, default=None)
    s.set_defaults(func=_sample)
    p = sub.add_parser("predict", help="outputs of a model for inputs in a .npy file")
    p.add_argument("model")
    p.add_argument("input", help=".npy array (N, T, I) features or (N, T) token ids")
    p.add_argument("--out", help="write the outputs to this .npy file")
    p.set_defaults(func=_predict)
    m = sub.add_parser("similar", help="cosine similarity of two texts' features")
    m.add_argument("model")
    m.add_argument("a")
    m.add_argument("b")
    m.add_argument("--level", choices=["char", "word"], default="char")
    m.add_argument("--pooling", choices=["last", "mean"], default="mean")
    m.set_defaults(func=_similar)
    c = sub.add_parser("convert", help="convert between .pt/.pth, .safetensors, .onnx and "
                       ".fastrnn files, parity-checked",
                       description="Formats by extension: .pt/.pth (a state dict, read with "
                       "torch.load(weights_only=True) only), .safetensors (a state dict, or a "
                       "fastrnn file), .onnx, .fastrnn. Both sides run on a random input; the "
                       "largest absolute difference is printed.")
    c.add_argument("input", help="the file to read")
    c.add_argument("output", help="the file to write")
    c.add_argument("--no-check", action="store_true", help="skip the parity checks")
    c.add_argument("--kind", choices=["rnn", "lstm", "gru"],
                   help="state dicts: assert the cell (inferred from the shapes)")
    c.add_argument("--nonlinearity", choices=["tanh", "relu"],
                   help="state dicts of an RNN: its nonlinearity (not recorded; default tanh)")
    c.add_argument("--batch-first", action="store_true",
                   help="state dicts: make a batch-first layer (not recorded; default off)")
    c.set_defaults(func=_convert)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rc = args.func(args)
    if args.command in ("demo", "check", "bench"):
        print(f"\n({time.perf_counter() - t0:.1f} s)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
