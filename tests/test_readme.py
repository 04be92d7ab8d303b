"""The README's Python examples run as written."""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_example_runs(i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[i], f"README.md block {i}", "exec"), {})


def test_saved_files_get_ordinary_permissions(tmp_path):
    import os
    import fastrnn
    m = fastrnn.SequenceModel("gru", input_size=2, hidden_size=2, output_size=1,
                              task="regression")
    m.save(tmp_path / "m.fastrnn")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "m.fastrnn").stat().st_mode & 0o777 == 0o666 & ~umask
