"""Fuzz target: ``fastrnn.from_onnx`` on arbitrary bytes (atheris, libFuzzer).

The contract under test: for any bytes, ``from_onnx`` (with its parity check) returns a
model or raises ``fastrnn.OnnxImportError``; a ``ParityError`` is allowed only as "largest
absolute difference" (a valid graph whose huge weights round differently in float32). Any
other exception is a finding (atheris writes the input to ``crash-<sha1>``), and so is a
crash, a hang past ``-timeout`` or memory past ``-rss_limit_mb``.

Make the seed corpus (fastrnn's exports with lengths, states, two bidirectional layers, an
embedding and a head; a hand-made layout-1 LSTM), then run it (needs ``pip install
atheris``)::

    python tests/fuzz_onnx.py --seeds SEED_DIR
    python tests/fuzz_onnx.py -max_total_time=600 -rss_limit_mb=2048 -timeout=10 \\
        NEW_CORPUS_DIR SEED_DIR

The first corpus folder is where libFuzzer adds the inputs it finds interesting (give it an
empty scratch folder). ``tests/robustness/test_onnx_hostile.py`` holds the mutation fuzz that runs in
the test suite.
"""
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))                          # the repository root
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "robustness"))         # test_onnx_hostile, for the seeds


def write_seeds(folder):
    from test_onnx_hostile import _seed_models
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for k, data in enumerate(_seed_models()):
        (folder / f"seed{k}.onnx").write_bytes(data)


def main():
    import atheris
    with atheris.instrument_imports(include=["fastrnn"]):
        import fastrnn
        from fastrnn.interop import ParityError

    def test_one_input(data):
        try:
            fastrnn.from_onnx(data)
        except fastrnn.OnnxImportError:
            pass
        except ParityError as e:
            if "largest absolute difference" not in str(e):
                raise

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--seeds":
        write_seeds(sys.argv[2])
    else:
        main()
