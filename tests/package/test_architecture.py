"""How the package is put together (docs/ARCHITECTURE.md): every module imports only from
the layers below it, no module reaches into another's private names, and the numpy oracle
imports from a checkout whose kernels were never built.

Imports are read from the source with the AST, those inside functions too, so an import
deferred to call time counts as much as one at the top."""
import ast
import os
import shutil
import subprocess
import sys

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "fastrnn")

# low to high; a module may import only from a strictly lower rank
RANKS = {
    "fastrnn._spec": 0, "fastrnn.text": 0,
    "fastrnn.reference": 1,
    "fastrnn.kernels": 2, "fastrnn.kernels._openmp": 2, "fastrnn.kernels._guard": 2,
    "fastrnn.kernels._blas": 2.1,
    "fastrnn.kernels._threads": 2.2, "fastrnn.kernels._rnn": 2.2, "fastrnn.kernels._lstm": 2.2,
    "fastrnn.kernels._gru": 2.2,
    "fastrnn.kernels._stream": 2.3,
    "fastrnn.functional": 3,
    "fastrnn.nn.losses": 4, "fastrnn.nn.optim": 4,
    "fastrnn.nn.layers": 5,
    "fastrnn.nn.models": 6, "fastrnn.nn": 6.1,
    "fastrnn.io": 7,
    "fastrnn.training": 8,
    "fastrnn.interop.parity": 9, "fastrnn.interop.onnx_layout": 9,
    "fastrnn.interop": 9.1,
    "fastrnn.interop.torch_io": 9.2, "fastrnn.interop.keras_io": 9.2,
    "fastrnn.interop.onnx_export": 9.2,
    "fastrnn.interop.onnx_import": 9.3,
    "fastrnn.interop.compare": 9.4,
    "fastrnn.dask": 10, "fastrnn.mpi": 10,
    "fastrnn._conveniences": 11,
    "fastrnn": 12,
    "fastrnn.cli": 13, "fastrnn.cli.demo": 13, "fastrnn.cli.bench": 13,
    "fastrnn.cli.peers": 13.1, "fastrnn.cli.main": 13.2, "fastrnn.__main__": 13.3,
}
# who may call the compiled cell kernels (and read their private names)
KERNEL_CALLERS = {"fastrnn.functional", "fastrnn", "fastrnn.cli.bench", "fastrnn.cli.main"}
CELL_KERNELS = {"fastrnn.kernels._blas", "fastrnn.kernels._rnn", "fastrnn.kernels._lstm",
                "fastrnn.kernels._gru", "fastrnn.kernels._stream"}


def _modules():
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith((".py", ".pyx")):
                path = os.path.join(folder, f)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE)).rsplit(".", 1)[0]
                name = rel.replace(os.sep, ".")
                found[name[:-len(".__init__")] if name.endswith(".__init__") else name] = path
    return found


MODULES = _modules()


def _tree(path):
    source = open(path, encoding="utf-8").read()
    if path.endswith(".pyx"):      # the Python-level imports of a Cython module
        source = "\n".join(line.strip() for line in source.splitlines()
                           if line.startswith(("import ", "from ")) and " cimport " not in line
                           and not line.rstrip().endswith(("(", "\\")))
    return ast.parse(source)


def _imports(name):
    """[(line, imported module, imported names or None)] of module ``name``: internal ones
    only, relative imports resolved."""
    path = MODULES[name]
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, None) for a in node.names if a.name.split(".")[0] == "fastrnn"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] == "fastrnn":
                out.append((node.lineno, module, [a.name for a in node.names]))
    return out


def _targets(module, names):
    """The modules an import statement reads: the submodules it names, else the module."""
    if names is None:
        return [module]
    subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
    return subs + ([module] if len(subs) < len(names) else [])


def test_every_module_has_a_rank():
    assert sorted(set(MODULES) - set(RANKS)) == [], "add new modules to RANKS (and the docs)"
    assert sorted(set(RANKS) - set(MODULES)) == []


def test_modules_import_only_from_below():
    upward = []
    for name in MODULES:
        for line, module, names in _imports(name):
            for target in _targets(module, names):
                if target != name and not RANKS[target] < RANKS[name]:
                    upward.append(f"{MODULES[name]}:{line}: {name} imports {target}")
    assert upward == [], "\n".join(upward)


def test_no_module_reads_another_modules_private_names():
    crossings = []
    for name in MODULES:
        bound = {}                           # local name -> internal module it stands for
        for line, module, names in _imports(name):
            if names is None:
                continue
            for n in names:
                target = f"{module}.{n}"
                if target in MODULES:
                    bound[n] = target
                    private_module = n.startswith("_") and not n.startswith("__")
                    own_package = target.rpartition(".")[0] in (name, name.rpartition(".")[0])
                    if private_module and not own_package and not (
                            target in CELL_KERNELS and name in KERNEL_CALLERS) and \
                            target not in ("fastrnn.kernels._threads", "fastrnn.kernels._openmp",
                                           "fastrnn.kernels._guard"):
                        crossings.append(f"{name}:{line} imports the private module {target}")
                elif n.startswith("_") and not n.startswith("__"):
                    crossings.append(f"{name}:{line} imports {module}.{n}")
        tree = _tree(MODULES[name])
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                    node.value.id in bound and node.attr.startswith("_") and \
                    not node.attr.startswith("__"):
                target = bound[node.value.id]
                if not (target in CELL_KERNELS and name in KERNEL_CALLERS):
                    crossings.append(f"{name}:{node.lineno} reads {target}.{node.attr}")
    assert crossings == [], "\n".join(crossings)


def test_only_functional_calls_the_cell_kernels():
    callers = {name for name in MODULES for _, module, names in _imports(name)
               for target in _targets(module, names) if target in CELL_KERNELS}
    callers = {c for c in callers if not c.startswith("fastrnn.kernels")}
    assert callers <= KERNEL_CALLERS, sorted(callers - KERNEL_CALLERS)


def test_the_oracle_and_the_file_parser_import_without_the_build(tmp_path):
    """An unbuilt copy of the package (no compiled module): fastrnn.reference and the
    file-format parser work; the engine's names raise one clear ImportError."""
    shutil.copytree(PACKAGE, tmp_path / "fastrnn",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "*.c", "__pycache__"))
    code = "\n".join([
        "import numpy as np, fastrnn, fastrnn.reference as R, fastrnn.io as io",
        f"assert fastrnn.__file__.startswith({str(tmp_path)!r}), fastrnn.__file__",
        "x = np.zeros((2, 1, 3)); h = np.zeros((1, 4))",
        "p = [np.zeros((16, 3)), np.zeros((16, 4)), np.zeros(16), np.zeros(16)]",
        "hs = R.lstm_forward(x, h, h, *p)[0]",
        "assert hs.shape == (2, 1, 4), hs.shape",
        "try:",
        "    fastrnn.LSTM",
        "except ImportError as e:",
        "    assert 'not built' in str(e), e",
        "else:",
        "    raise AssertionError('fastrnn.LSTM without kernels')",
        "print('ok')"])
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
