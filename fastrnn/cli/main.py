"""Command line: ``fastrnn demo``, ``check``, ``bench``, ``train``, ``sample``, ``predict``,
``similar``, ``info``, ``convert``.

``fastrnn demo`` needs no arguments and no data: it trains a vanilla RNN, an LSTM and a
GRU on the adding problem and shows that the gated networks learn the long-term
dependency while the vanilla RNN does not. ``fastrnn check`` runs every cell forward and
backward on the compiled kernels against the numpy reference, then times a few cases.

A mistake (a missing or wrong file, a bad number) ends a command with one line on stderr,
``fastrnn <command>: error: ...``, naming the path or option, and exit status 1, or 2 for
a usage error (argparse's own: a missing argument, an unknown option, a number out of
range); Ctrl-C exits 130. ``--debug`` (before or after the command) adds the traceback.
Everything a command reads is checked before the long part starts (``train`` checks that
it may write ``--out`` before it trains).
"""
import argparse
import io as _bytes_io
import math
import os
import stat
import sys
import time
import traceback

import numpy as np

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
EXIT_STATUS_HELP = """exit status:
  0    done
  1    an error, told in one line "fastrnn COMMAND: error: ..." on stderr
       (--debug adds the traceback)
  2    a usage error: a missing argument, an unknown option, a number out of range
  130  interrupted (Ctrl-C)"""


class UserError(Exception):
    """A mistake in a command's arguments or files: reported as its one-line message."""


# ---- argument types: a bad number is a usage error naming the option ---------------------

def _integer(text, low, what):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def _positive_int(text):
    return _integer(text, 1, "a positive integer")


def _non_negative_int(text):
    return _integer(text, 0, "an integer >= 0")


def _at_least(low):
    """An argparse type: an integer >= ``low``."""
    def parse(text):
        return _integer(text, low, f"an integer >= {low}")
    return parse


def _positive_float(text):
    """A finite number > 0 (nan and inf refused: a learning rate or temperature of inf
    would run and produce nothing useful)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _threads(text):
    """A thread count as fastrnn.effective_n_threads takes it (-1: all CPUs, -2: all but
    one, ...), checked against this machine now rather than inside the first kernel."""
    from fastrnn import effective_n_threads
    try:
        value = int(text)
        effective_n_threads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"must be a thread count (positive, or -1 for all CPUs), got {text!r}"
            + ("" if str(exc).startswith("invalid literal") else f": {exc}")) from None
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # one line like every other error (argparse prints its usage first): --help has it
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's default appended to its help, unless the help states it already (or
    the option is a flag, off by default)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or not action.option_strings
                or action.default in (None, False, argparse.SUPPRESS)):
            return text
        return text + " (default: %(default)s)"


# ---- files: checked before any long work, errors naming the user's path ------------------

def _input_file(path, what):
    """Check that ``path`` is a regular file (or a link to one) before it is opened: a FIFO
    without a writer would block open() forever, and a folder fails later with a vaguer
    message. Raises UserError naming ``path``."""
    from fastrnn import io
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {path} is {io.kind_of(st.st_mode)}, not a file")
    return path


def _output_file(path, what, force=None):
    """Check, writing nothing, that ``path`` can be written (fastrnn.io.check_writable: the
    folder exists and may be written, no folder, FIFO or device there). ``force=False``:
    an existing file is refused too (pass --force)."""
    from fastrnn import io
    io.check_writable(path, what)
    if force is False and os.path.lexists(path):
        raise UserError(f"{what} {path} exists; pass --force to replace it")


def _stamp(path):
    """What identifies the file at ``path`` now (None: no file): an atomic replace makes
    a new inode, so a changed stamp means the file was written since."""
    try:
        st = os.stat(path) if path is not None else None
    except OSError:
        st = None
    return None if st is None else (st.st_ino, st.st_mtime_ns, st.st_size)


def _write_bytes(path, data, what):
    from fastrnn import io
    io.atomic_write(path, data, what)


def _demo(args):
    from fastrnn.cli import demo
    results = demo.run(T=args.T, seed=args.seed, plot=args.plot, progress=not args.quiet)
    return 0 if all(r["mse"] < 0.01 for c, r in results.items() if c != "rnn") else 1


def _check(args):
    import fastrnn
    from fastrnn import functional as F, reference as R
    from fastrnn.cli.bench import compare, machine_info, make_case

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
        from fastrnn.cli.bench import core_table
        core_table(threads=tuple(args.threads_list), out=lambda line: print(line, flush=True))
        return 0
    from fastrnn.cli.peers import main as peers
    return peers(["--threads", *map(str, args.threads_list)] + (["--quick"] if args.quick else [])
                 + (["--write"] if args.write else [])
                 + (["--chart", args.chart] if args.chart else []))


def _info(args):
    import fastrnn
    from fastrnn.cli.bench import machine_info
    info = machine_info()
    print(f"fastrnn {fastrnn.__version__}")
    for k in ("cpu", "cores", "simd", "blas", "openmp", "python", "numpy"):
        print(f"  {k:<8} {info[k]}")
    print(f"  threads  {fastrnn.effective_n_threads()} (OMP_NUM_THREADS, capped at the CPUs)")
    return 0


# ---- text models ----------------------------------------------------------------------

_TRAIN_SHARE = 0.9              # of the tokens; the rest is held out for validation


def _read_text(path):
    """The UTF-8 text of ``path``; UserError for an empty or non-UTF-8 file."""
    with open(_input_file(path, "text file"), "rb") as f:
        data = f.read()
    if not data:
        raise UserError(f"text file {path} is empty")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"text file {path} is not UTF-8: byte 0x{data[exc.start]:02x} at "
                        f"offset {exc.start}; convert it first (e.g. iconv -f latin1 -t "
                        "utf-8)") from None


def _windows_fit(n, seq_len):
    """Whether ``n`` tokens make a training and a validation window of ``seq_len``."""
    split = int(n * _TRAIN_SHARE)
    return split >= seq_len + 1 and n - split >= seq_len + 1


def _tokens_needed(seq_len):
    n = max(seq_len + 1, int((seq_len + 1) / (1 - _TRAIN_SHARE)) - 20)
    while not _windows_fit(n, seq_len):
        n += 1
    return n


def _train(args):
    import fastrnn
    from fastrnn import text as tx
    _input_file(args.file, "text file")
    _output_file(args.out, "model file", args.force)
    if args.checkpoint:
        if os.path.realpath(args.checkpoint) == os.path.realpath(args.out):
            raise UserError(f"--checkpoint and --out name the same file {args.out}: the "
                            "checkpoint of every epoch would overwrite the best model")
        _output_file(args.checkpoint, "checkpoint", args.force)
    tokens = tx.tokenize(_read_text(args.file), args.level)
    if not _windows_fit(len(tokens), args.seq_len):
        raise UserError(f"text file {args.file} is too short for --seq-len {args.seq_len}: "
                        f"{len(tokens)} {args.level} tokens, {_tokens_needed(args.seq_len)} "
                        f"needed (the last {1 - _TRAIN_SHARE:.0%} is held out for validation, "
                        "and each part needs one window of seq_len + 1 tokens)")
    vocab = tx.build_vocabulary(tokens, args.max_vocab)
    ids = tx.encode(tokens, vocab)
    split = int(len(ids) * _TRAIN_SHARE)
    x, y = tx.windows(ids[:split], args.seq_len)
    vx, vy = tx.windows(ids[split:], args.seq_len)
    model = fastrnn.SequenceModel(args.cell, vocab_size=len(vocab), hidden_size=args.hidden,
                                  num_layers=args.layers, task="next_token", seed=args.seed)
    model.vocabulary, model.text_level = vocab, args.level
    print(f"{len(tokens)} {args.level} tokens, vocabulary {len(vocab)}, {len(x)} training "
          f"windows of {args.seq_len}; {model.rnn!r}", flush=True)
    before = _stamp(args.out), _stamp(args.checkpoint)
    try:
        h = model.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      clip_norm=5.0, validation_data=(vx, vy), seed=args.seed,
                      max_steps=args.max_steps, best_checkpoint=args.out,
                      checkpoint=args.checkpoint, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"fastrnn train: {_interrupted(args, before)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if _stamp(args.out) == before[0]:       # no finite validation loss: nothing saved yet
        model.save(args.out)
    print(f"validation loss {min(h['val_loss'] or [float('nan')]):.4f} nats/token; "
          f"saved {args.out}")
    print("sample:", repr(tx.sample(fastrnn.load(args.out), length=120, temperature=0.8,
                                    level=args.level, seed=args.seed)))
    return 0


def _interrupted(args, before):
    """The line for Ctrl-C during training: which file holds what."""
    best = _stamp(args.out) != before[0]
    last = args.checkpoint and _stamp(args.checkpoint) != before[1]
    if last:
        return (f"interrupted; {args.checkpoint} holds the last completed epoch (model and "
                f"optimizer state), {args.out} the model of the best validation loss")
    if best:
        return (f"interrupted; {args.out} holds the model of the best validation loss so far"
                + ("" if args.checkpoint else " (--checkpoint keeps the last epoch too)"))
    return "interrupted before the first epoch ended; nothing was saved"


def _load_model(path, command):
    """The SequenceModel in the fastrnn file ``path``; UserError for anything else."""
    import fastrnn
    from fastrnn.nn.layers import RecurrentCell
    from fastrnn.nn.models import SequenceModel
    obj = fastrnn.load(_input_file(path, "model file"))
    if not isinstance(obj, SequenceModel):
        what = f"a cell, {_describe_obj(obj)}" if isinstance(obj, RecurrentCell) else \
            f"a layer stack, {_describe_obj(obj)}"
        raise UserError(f"{path} holds {what}: fastrnn {command} needs a SequenceModel file "
                        "(what fastrnn train and SequenceModel.save write)")
    return obj


def _language_model(path, command):
    """The SequenceModel of ``path``, which must read token ids and have a vocabulary."""
    model = _load_model(path, command)
    if model.vocabulary is None or model.embedding is None:
        raise UserError(f"{path}: this model has no vocabulary (it was not trained on text "
                        f"by fastrnn train); fastrnn {command} needs a language model")
    return model


def _text_level(model, args):
    """How to cut text for ``model``: the level its file records; files written before
    levels were recorded say nothing, and then --level is used (default char). A --level
    that contradicts the file is refused: the model would read tokens it never saw."""
    recorded = getattr(model, "text_level", None)
    if args.level is None:
        return recorded or "char"
    if recorded is not None and args.level != recorded:
        raise UserError(f"--level {args.level} contradicts {args.model}, a {recorded}-level "
                        "model: leave --level out (the file's level is used)")
    return args.level


def _encoded(text, level, model, what):
    from fastrnn import text as tx
    try:
        return tx.encode(tx.tokenize(text, level), model.vocabulary)
    except ValueError as exc:
        raise UserError(f"{what} {text!r}: {exc}") from None


def _sample(args):
    from fastrnn import text as tx
    model = _language_model(args.model, "sample")
    level = _text_level(model, args)
    if model.config["task"] != "next_token":
        raise UserError(f"{args.model}: a {model.config['task']} model; fastrnn sample needs "
                        "a next-token language model")
    _encoded(args.prime, level, model, "--prime")
    print(args.prime + tx.sample(model, args.prime, args.length, args.temperature, level,
                                 args.seed))
    return 0


def _similar(args):
    import fastrnn
    model = _language_model(args.model, "similar")
    level = _text_level(model, args)
    feats = []
    for which, text in (("first", args.a), ("second", args.b)):
        if not text:
            raise UserError(f"the {which} text is empty")
        ids = _encoded(text, level, model, f"the {which} text")[None]
        feats.append(model.encode(ids, pooling=args.pooling)[0])
    print(f"{fastrnn.cosine_similarity(*feats):.4f}")
    return 0


# ---- predict --------------------------------------------------------------------------

def _load_array(path, what):
    """The numeric array of the .npy file ``path``; UserError for anything else (nothing
    is unpickled)."""
    from fastrnn import io
    with open(_input_file(path, what), "rb") as f:
        head = f.read(io.HEAD_BYTES)
    if not head.startswith(b"\x93NUMPY"):
        found = "it is empty" if not head else io.foreign_format(head)
        raise UserError(f"{what} {path} is not a .npy array file"
                        + (f" ({found})" if found else "") + "; write arrays with numpy.save")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc) or "Object arrays" in str(exc):
            raise UserError(f"{what} {path} holds Python objects (an object array), which "
                            "would have to be unpickled: save a numeric array") from None
        raise UserError(f"{what} {path} is not a readable .npy file ({exc})") from None
    except (EOFError, OSError) as exc:
        raise UserError(f"{what} {path} is not a readable .npy file ({exc})") from None


_OUTPUTS = ("probabilities", "logits", "classes")


def _predict(args):
    model = _load_model(args.model, "predict")
    regression = model.loss_name == "mse"
    if regression and args.output in ("probabilities", "classes"):
        raise UserError(f"--output {args.output}: {args.model} is a regression model "
                        f"({model.config['task']}); its outputs are values (--output logits, "
                        "the default for it)")
    output = args.output or ("logits" if regression else "probabilities")
    if args.out:
        _output_file(args.out, "output file")
    x = _load_array(args.input, "input")
    lengths = None if args.lengths is None else _load_array(args.lengths, "--lengths file")
    compute = {"probabilities": model.predict_proba}.get(output, model.predict)
    try:
        y = compute(x, lengths)
    except (TypeError, ValueError) as exc:
        source = args.lengths if lengths is not None and str(exc).startswith("lengths") \
            else args.input
        raise UserError(f"{source}: {exc}") from None
    if output == "classes":
        y = (y.argmax(-1) if model.loss_name == "cross_entropy" else y > 0).astype(np.int64)
    if args.out:
        buffer = _bytes_io.BytesIO()
        np.save(buffer, y)
        _write_bytes(args.out, buffer.getvalue(), "output file")
        print(f"{output} {y.shape} -> {args.out}")
    else:
        print(y)
    return 0


# ---- convert ----------------------------------------------------------------------------

_FORMATS = {".pt": "torch", ".pth": "torch", ".bin": "torch", ".safetensors": "safetensors",
            ".onnx": "onnx", ".fastrnn": "fastrnn"}
_FORMAT_NAMES = {"torch": "a torch.save file", "safetensors": "a safetensors state dict",
                 "onnx": "an ONNX model", "fastrnn": "a fastrnn file"}
_SAFETENSORS_DEPTH = 3          # {name: {"shape": [...]}}: a header is never deeper


def _format_of(path):
    """The format to write ``path`` in, from its extension."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in _FORMATS:
        raise UserError(f"{path}: unknown extension {ext!r}; expected one of "
                        f"{', '.join(_FORMATS)}")
    return _FORMATS[ext]


def _format_read(path):
    """The format of the file ``path`` from its content, whatever its name: "torch" (a
    torch.save zip, or a pickle, which only torch.load(weights_only=True) will read),
    "safetensors" (a state dict), "fastrnn" (a safetensors file whose metadata has
    fastrnn_format) or "onnx" (a protobuf starting with ir_version). Only a bounded prefix
    is read: the first bytes, then a safetensors header of at most fastrnn.io.MAX_HEADER
    bytes, its nesting checked before it is parsed. UserError saying what the file is
    otherwise."""
    import json
    import struct
    import zipfile
    from fastrnn import io
    with open(_input_file(path, "input file"), "rb") as f:
        head = f.read(io.HEAD_BYTES)
        size = os.fstat(f.fileno()).st_size
        if len(head) >= 9 and head[8:9] == b"{":
            n = struct.unpack("<Q", head[:8])[0]
            if 8 + n <= size:
                if n > io.MAX_HEADER:            # larger than any fastrnn header
                    return "safetensors"
                f.seek(8)
                text = f.read(n)
                depth = _nesting_depth(text)
                if depth > _SAFETENSORS_DEPTH:
                    raise UserError(f"{path}: refused: a safetensors header nested {depth} "
                                    f"levels deep (a real one has {_SAFETENSORS_DEPTH})")
                try:
                    meta = json.loads(text).get("__metadata__")
                except (ValueError, AttributeError):
                    raise UserError(f"{path}: refused: its safetensors header is not a JSON "
                                    "object") from None
                return "fastrnn" if isinstance(meta, dict) and "fastrnn_format" in meta \
                    else "safetensors"
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile as exc:
            raise UserError(f"{path}: refused: a damaged zip archive ({exc})") from None
        if any(name.endswith("data.pkl") for name in names):
            return "torch"
        raise UserError(f"{path}: refused: a zip archive without data.pkl, not a torch.save "
                        "file")
    if head[:1] == b"\x80":
        return "torch"
    if head[:1] == b"\x08":
        return "onnx"
    found = "the file is empty" if not head else io.foreign_format(head) or "content not recognised"
    raise UserError(f"{path}: refused: {found}; fastrnn convert reads torch.save files, "
                    "safetensors, ONNX and fastrnn files (by their content, whatever the name)")


def _nesting_depth(json_text):
    """How deep the brackets of ``json_text`` nest, brackets inside strings not counted,
    found without parsing (json.loads recurses once per level)."""
    import re
    bare = np.frombuffer(re.sub(rb'"(?:[^"\\]|\\.)*"', b"", json_text), np.uint8)
    steps = np.isin(bare, list(b"{[")).astype(np.int64) - np.isin(bare, list(b"]}"))
    return int(np.cumsum(steps).max(initial=0))


def _state_dict_options(args, fmt):
    """The state-dict options given (--kind, --nonlinearity, --batch-first, --prefix) for
    from_torch; refused for the formats they cannot apply to."""
    hints = {k: v for k, v in (("kind", args.kind), ("nonlinearity", args.nonlinearity),
                               ("batch_first", args.batch_first or None),
                               ("prefix", args.prefix)) if v is not None}
    if hints and fmt not in ("torch", "safetensors"):
        raise UserError(f"--{'/--'.join(hints).replace('_', '-')} apply to state dicts "
                        f"(torch.save and safetensors files) only; {args.input} is "
                        f"{_FORMAT_NAMES[fmt]}")
    return hints


def _convert_read(args, check):
    """IN as a fastrnn object, the parity difference of the import (None: unchecked) and
    the side it was checked against."""
    import fastrnn
    from fastrnn.interop import torch_io
    fmt = _format_read(args.input)
    hints = _state_dict_options(args, fmt)
    if fmt in ("torch", "safetensors"):
        obj = torch_io.from_torch(torch_io.read_state_dict(args.input, fmt), check=check, **hints)
        return obj, obj.parity_max_abs_diff, "PyTorch"
    if fmt == "onnx":
        from fastrnn.interop.onnx_import import from_onnx
        imported = from_onnx(args.input, check=check)
        obj = imported.to_fastrnn(check=check)
        diffs = [d for d in (imported.parity_max_abs_diff, obj.parity_max_abs_diff)
                 if d is not None]
        return obj, (max(diffs) if diffs else None), "ONNX Runtime"
    return fastrnn.load(args.input), None, None


def _state_dict_bytes(state, fmt):
    """The bytes of a .pt file (torch.save of its tensors, readable with weights_only=True)
    or a .safetensors file holding the torch state dict ``state``."""
    if fmt == "torch":
        import torch
        buffer = _bytes_io.BytesIO()
        # clones: a parameter viewing a larger storage would save all of that storage
        torch.save({k: v.detach().clone() for k, v in state.items()}, buffer)
        return buffer.getvalue()
    try:
        from safetensors.torch import save
    except ImportError:
        raise ImportError(".safetensors files need the safetensors package: "
                          "pip install safetensors") from None
    return save({k: v.detach().contiguous() for k, v in state.items()})


def _convert_write(obj, path, check):
    """Write ``obj`` to ``path`` (atomically, fastrnn.io.atomic_write: the umask honoured,
    no half-written file); the parity difference of the export (None: unchecked)."""
    import fastrnn
    from fastrnn import io
    from fastrnn.interop import torch_io
    fmt = _format_of(path)
    if fmt in ("torch", "safetensors"):
        module = torch_io.to_torch(obj, check=check)
        _write_bytes(path, _state_dict_bytes(module.state_dict(), fmt), "state dict file")
        return module.parity_max_abs_diff, "PyTorch"
    if fmt == "onnx":
        from fastrnn.interop.onnx_export import to_onnx
        proto = to_onnx(obj, path, check=check)                     # written atomically
        meta = {p.key: p.value for p in proto.metadata_props}      # the exporter's report
        diff = meta.get("fastrnn.parity_max_abs_diff")
        return (None if diff is None else float(diff)), meta.get("fastrnn.parity_runtime")
    io.save(obj, path)
    if not check:
        return None, None
    # the file read back runs like the object written, on a random input and state
    from fastrnn.interop.compare import compare
    from fastrnn.interop.parity import ParityError, default_tolerance
    x, state = torch_io.random_case(obj, np.random.default_rng(0))
    diff = compare(obj, fastrnn.load(path), x, state=state)
    dtype = getattr(obj, "dtype", None) or obj._layer.dtype          # cells: their layer's
    if diff > default_tolerance(dtype):
        raise ParityError(f"{path} read back differs from what was written by {diff:.3g}")
    return diff, "the file read back"


def _convert(args):
    check = not args.no_check
    _format_of(args.output)                       # refuse a bad OUT before any work
    _output_file(args.output, "output file")
    obj, diff_in, side_in = _convert_read(args, check)
    print(f"read   {args.input}: {_describe_obj(obj)}" +
          (f" (against {side_in}: max abs diff {diff_in:.3g})" if diff_in is not None else ""))
    diff_out, side_out = _convert_write(obj, args.output, check)
    print(f"wrote  {args.output}" +
          (f" (against {side_out}: max abs diff {diff_out:.3g})" if diff_out is not None
           else ""))
    diffs = [d for d in (diff_in, diff_out) if d is not None]
    if not check:
        print("parity check skipped (--no-check)")
    else:
        print(f"largest absolute difference: {max(diffs, default=0.0):.3g}")
    return 0


def _describe_obj(obj):
    from fastrnn.interop.torch_io import describe
    from fastrnn.nn.models import SequenceModel
    if isinstance(obj, SequenceModel):
        return f"SequenceModel({obj.config['cell']}, task={obj.config['task']!r}) over {obj.rnn!r}"
    return describe(obj)


# ---- the parser and the one place errors are reported ------------------------------------

def _checked_paths(args):
    """Output paths of the long-running commands, checked before they start."""
    if args.command == "demo" and args.plot:
        _output_file(args.plot, "plot")
    if args.command == "bench":
        if args.chart:
            _output_file(args.chart, "chart")
        if args.write and not args.core:
            _output_file(os.path.join("bench", "RESULTS.md"), "results file")


def _demo_checked(args):
    _checked_paths(args)
    return _demo(args)


def _bench_checked(args):
    _checked_paths(args)
    return _bench(args)


def build_parser():
    """The ``fastrnn`` argument parser (every option's help states its default)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="on an error, print the traceback too")
    kw = dict(formatter_class=_HelpFormatter, epilog=EXIT_STATUS_HELP, parents=[common])
    ap = _Parser(prog="fastrnn", description="fast CPU recurrent networks",
                 formatter_class=_HelpFormatter, epilog=EXIT_STATUS_HELP)
    ap.add_argument("--debug", action="store_true",
                    help="on an error, print the traceback too (also accepted after the "
                         "command)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="command")
    d = sub.add_parser("demo", help="RNN vs LSTM vs GRU on the adding problem (the essay's "
                       "claim)", **kw)
    d.add_argument("--T", type=_at_least(2), default=100, help="sequence length")
    d.add_argument("--seed", type=_non_negative_int, default=0, help="random seed")
    d.add_argument("--plot", default="fastrnn-demo.svg",
                   help="learning-curve plot (SVG) to write; '' for none")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_demo_checked)
    k = sub.add_parser("check", help="check every cell against numpy and time a few cases",
                       **kw)
    k.add_argument("--threads", type=_threads, default=1,
                   help="kernel threads (-1: all CPUs)")
    k.set_defaults(func=_check)
    b = sub.add_parser("bench", help="benchmark against numpy, PyTorch and ONNX Runtime", **kw)
    b.add_argument("--threads", dest="threads_list", type=_threads, nargs="+", default=[1, 2],
                   help="thread counts to time")
    b.add_argument("--quick", action="store_true", help="a short smoke run")
    b.add_argument("--write", action="store_true",
                   help="update bench/RESULTS.md (run from the repository's root)")
    b.add_argument("--chart", help="draw the speed-ups as a bar chart PNG here (needs "
                   "matplotlib; default: no chart)")
    b.add_argument("--core", action="store_true",
                   help="only the kernels against the numpy reference (bench/bench_core.py)")
    b.set_defaults(func=_bench_checked)
    i = sub.add_parser("info", help="versions, BLAS, OpenMP and threads", **kw)
    i.set_defaults(func=_info)
    t = sub.add_parser("train", help="train a character- or word-level language model",
                       description="Train a next-token language model on a UTF-8 text: the "
                       f"first {_TRAIN_SHARE:.0%} of its tokens for training, the rest for "
                       "validation. --out receives the model of the best validation loss "
                       "after each epoch that improves it (with the vocabulary and --level, "
                       "so sample and similar need neither); an existing file is refused "
                       "without --force. Ctrl-C stops training and says which file holds "
                       "what.", **kw)
    t.add_argument("file", help="a plain UTF-8 text file")
    t.add_argument("--level", choices=["char", "word"], default="char",
                   help="tokens: characters, or words (punctuation and whitespace kept as "
                        "tokens)")
    t.add_argument("--cell", choices=["rnn", "lstm", "gru"], default="lstm",
                   help="recurrent cell")
    t.add_argument("--hidden", type=_positive_int, default=128, help="hidden units per layer")
    t.add_argument("--layers", type=_positive_int, default=1, help="stacked layers")
    t.add_argument("--seq-len", type=_positive_int, default=64,
                   help="tokens per training window")
    t.add_argument("--batch-size", type=_positive_int, default=32,
                   help="windows per update")
    t.add_argument("--epochs", type=_positive_int, default=1,
                   help="passes over the training windows")
    t.add_argument("--lr", type=_positive_float, default=2e-3, help="Adam's learning rate")
    t.add_argument("--max-steps", type=_positive_int, default=None,
                   help="stop after this many updates (default: no limit)")
    t.add_argument("--max-vocab", type=_at_least(2), default=None,
                   help="keep the most frequent tokens, the rest as <unk> (default: all)")
    t.add_argument("--seed", type=_non_negative_int, default=0, help="random seed")
    t.add_argument("--out", default="model.fastrnn", help="the model file to write")
    t.add_argument("--checkpoint", default=None,
                   help="also save the model and optimizer state here after every epoch "
                        "(default: none)")
    t.add_argument("--force", action="store_true",
                   help="replace --out and --checkpoint when they exist")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)
    s = sub.add_parser("sample", help="generate text from a trained language model", **kw)
    s.add_argument("model", help="a model file written by fastrnn train")
    s.add_argument("--prime", default="", help="text to start from (default: a random "
                   "token)")
    s.add_argument("--length", type=_non_negative_int, default=200,
                   help="tokens to generate")
    s.add_argument("--temperature", type=_positive_float, default=1.0,
                   help="softmax temperature: lower is more conservative")
    s.add_argument("--level", choices=["char", "word"], default=None,
                   help="how to cut --prime into tokens (default: the level the model file "
                        "records; char for files that record none); refused if it "
                        "contradicts the file")
    s.add_argument("--seed", type=_non_negative_int, default=None,
                   help="random seed (default: a different sample each run)")
    s.set_defaults(func=_sample)
    p = sub.add_parser("predict", help="outputs of a model for inputs in a .npy file",
                       description="Run a SequenceModel on a .npy array. Python's "
                       "SequenceModel.predict returns logits (raw outputs) and predict_proba "
                       "probabilities; --output chooses between them here. Features of "
                       "any real dtype (np.save's default float64 included) are cast to the "
                       "model's, as predict does.", **kw)
    p.add_argument("model", help="a SequenceModel file")
    p.add_argument("input", help=".npy array: (N, T, I) features or (N, T) token ids")
    p.add_argument("--lengths", default=None,
                   help=".npy array of N integers: each row's valid steps (default: all T)")
    p.add_argument("--output", choices=_OUTPUTS, default=None,
                   help="probabilities (softmax, or sigmoid for multilabel: predict_proba), "
                        "logits (raw outputs: predict; a regression's values) or classes "
                        "(argmax, or 0/1 labels for multilabel) (default: probabilities for "
                        "classification, logits for regression)")
    p.add_argument("--out", default=None,
                   help="write the outputs to this .npy file (default: print them)")
    p.set_defaults(func=_predict)
    m = sub.add_parser("similar", help="cosine similarity of two texts' features", **kw)
    m.add_argument("model", help="a model file written by fastrnn train")
    m.add_argument("a", help="the first text")
    m.add_argument("b", help="the second text")
    m.add_argument("--level", choices=["char", "word"], default=None,
                   help="how to cut the texts into tokens (default: the level the model "
                        "file records; char for files that record none); refused if it "
                        "contradicts the file")
    m.add_argument("--pooling", choices=["last", "mean"], default="mean",
                   help="features: the final hidden state or the mean over the steps")
    m.set_defaults(func=_similar)
    c = sub.add_parser("convert", help="convert between torch.save (.pt/.pth/.bin), "
                       ".safetensors, .onnx and .fastrnn files, parity-checked",
                       description="IN's format is read from its content, whatever its name: "
                       "a torch.save file (a state dict or a checkpoint holding one, read "
                       "with torch.load(weights_only=True) only), a safetensors state dict, "
                       "a fastrnn file, an ONNX model. OUT's format comes from its "
                       "extension: .pt/.pth/.bin, .safetensors, .onnx, .fastrnn. Both sides "
                       "run on a random input; the largest absolute difference is printed.",
                       **kw)
    c.add_argument("input", help="the file to read")
    c.add_argument("output", help="the file to write (replaced when it exists)")
    c.add_argument("--no-check", action="store_true", help="skip the parity checks")
    c.add_argument("--kind", choices=["rnn", "lstm", "gru"], default=None,
                   help="state dicts: assert the cell (default: inferred from the shapes)")
    c.add_argument("--nonlinearity", choices=["tanh", "relu"], default=None,
                   help="state dicts of an RNN: its nonlinearity (not recorded; default "
                        "tanh)")
    c.add_argument("--batch-first", action="store_true",
                   help="state dicts: make a batch-first layer (not recorded; off by default)")
    c.add_argument("--prefix", default=None,
                   help="state dicts of a whole model: the recurrent module's key prefix, "
                        "e.g. encoder.rnn. (default: the only recurrent module)")
    c.set_defaults(func=_convert)
    return ap


def _one_line(exc):
    """The message of ``exc`` as one line; a failure that is not a user's mistake says it
    is fastrnn's and points to --debug."""
    from fastrnn.interop.parity import ParityError
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    if not isinstance(exc, (UserError, ValueError, OSError, ImportError,
                            ParityError, FloatingPointError, MemoryError)):
        text = (f"internal error {type(exc).__name__}: {text} (a fastrnn bug: rerun with "
                "--debug and report the traceback)")
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def main(argv=None):
    """Run ``fastrnn`` with ``argv`` (default: sys.argv[1:]) and return the exit status
    (argparse's usage errors and --help raise SystemExit, as argparse does)."""
    args = build_parser().parse_args(argv)
    prog = f"fastrnn {args.command}"
    t0 = time.perf_counter()
    try:
        rc = args.func(args)
        if args.command in ("demo", "check", "bench"):
            print(f"\n({time.perf_counter() - t0:.1f} s)")
        sys.stdout.flush()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:                       # `fastrnn ... | head`: the reader left
        _silence_stdout()
        return EXIT_ERROR
    except Exception as exc:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    return rc


def _silence_stdout():
    """Point stdout at /dev/null so that Python's flush at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass                                      # a replaced sys.stdout (tests)


if __name__ == "__main__":
    sys.exit(main())
