"""The documentation's examples run, as CI runs them: ``doctest`` over every public module
(ELLIPSIS | NORMALIZE_WHITESPACE), and over the docstring of every public class defined
elsewhere (the stream in the compiled kernels, the interop errors); every public class in
``fastrnn.__all__`` has at least one example. Examples run in a temporary folder, so one
that writes a file leaves nothing behind, and each module's take well under a second."""
import doctest
import importlib

import pytest

import fastrnn

MODULES = ["fastrnn", "fastrnn.nn.layers", "fastrnn.nn.models", "fastrnn.functional",
           "fastrnn.reference", "fastrnn.nn.losses", "fastrnn.nn.optim", "fastrnn.io",
           "fastrnn.training", "fastrnn.interop.keras_io"]     # keras_io's runs without Keras
# the converters' examples need the optional packages they convert with (the test extras)
INTEROP = {"fastrnn.interop.torch_io": ("torch",), "fastrnn.interop.compare": ("torch",),
           "fastrnn.interop.onnx_export": ("onnx", "onnxruntime"),
           "fastrnn.interop.onnx_import": ("onnx", "onnxruntime")}
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _public_classes():
    return {name: getattr(fastrnn, name) for name in fastrnn.__all__
            if isinstance(getattr(fastrnn, name), type)}


def _run(tests):
    """(examples run, failure report) of doctest ``tests``."""
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = []
    for test in tests:
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    return result.attempted, result.failed, "".join(report)


@pytest.mark.parametrize("name", MODULES)
def test_module_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
    attempted, failed, report = _run(tests)
    assert failed == 0, f"{failed} of {attempted} examples in {name} failed:\n{report}"


@pytest.mark.parametrize("name", sorted(INTEROP))
def test_converter_examples_run(name, tmp_path, monkeypatch):
    for package in INTEROP[name]:
        pytest.importorskip(package)
    test_module_examples_run(name, tmp_path, monkeypatch)
    tests = doctest.DocTestFinder(exclude_empty=True).find(importlib.import_module(name), name)
    assert sum(len(t.examples) for t in tests) >= 3, f"{name} has no examples"


def test_examples_of_public_classes_defined_elsewhere_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    finder = doctest.DocTestFinder(exclude_empty=True, recurse=False)
    tests = []
    for name, cls in _public_classes().items():
        if cls.__module__ not in MODULES:
            tests += finder.find(cls, f"fastrnn.{name}", module=False, globs={})
    attempted, failed, report = _run(tests)
    assert failed == 0, f"{failed} of {attempted} examples failed:\n{report}"


def test_every_public_class_has_an_example():
    missing = [name for name, cls in _public_classes().items()
               if ">>>" not in (cls.__doc__ or "")]
    assert not missing, f"public classes without an example (>>>) in their docstring: {missing}"


def test_the_modules_have_examples():
    """The runner finds examples at all (a finder that saw nothing would pass the above)."""
    counts = {}
    for name in MODULES:
        module = importlib.import_module(name)
        tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
        counts[name] = sum(len(t.examples) for t in tests)
    assert counts["fastrnn.nn.layers"] and counts["fastrnn.nn.models"] and \
        counts["fastrnn.training"], counts


def test_fit_documents_every_argument():
    """``help(model.fit)`` is fastrnn.training.fit's documentation (test_models checks the
    binding); it names every argument and its default."""
    import inspect

    from fastrnn import training
    doc = inspect.getdoc(training.fit)
    for p in inspect.signature(training.fit).parameters.values():
        assert f"* ``{p.name}``" in doc or p.name == "model", p.name
        if p.default is not p.empty:
            written = " ".join(doc.split()).replace('"', "'").replace("1e-3", "0.001")
            assert f"Default ``{p.default!r}``" in written, p.name
