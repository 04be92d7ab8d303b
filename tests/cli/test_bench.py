"""``fastrnn bench``'s contention group (issue 14) and the spread column, on tiny cases so
they take seconds: the rows come out with numbers, the group is part of both the quick and
the full run, and the load it creates (a spinning process, a background ONNX Runtime pool)
never outlives it."""
import threading

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from fastrnn.cli import bench, peers  # noqa: E402

TINY = {"seq": [(1, 8)], "contention": [("lstm", 1, 8), ("gru", 2, 8)], "repeats": 2,
        "min_time": 0.002}
PEERS = ["torch", "onnxruntime"]


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _number(text):
    return float(text.rstrip("x"))


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(peers, "T", 4)
    cfg = dict(peers.QUICK, **TINY)
    monkeypatch.setattr(peers, "QUICK", cfg)
    monkeypatch.setattr(peers, "FULL", dict(peers.FULL, **TINY))
    return cfg


def _run_group(cfg, sides):
    lines = []
    peers.contention_group(cfg, sides, lambda *new: lines.extend(new))
    return lines


def test_contention_group_prints_a_row_of_numbers_per_case(tiny):
    lines = _run_group(tiny, PEERS)
    head = next(line for line in lines if line.startswith("| cell"))
    names = _cells(head)
    rows = [_cells(line) for line in lines if line.startswith(("| lstm", "| gru"))]
    assert [r[:3] for r in rows] == [["lstm", "1", "8"], ["gru", "2", "8"]]
    for r in rows:
        got = dict(zip(names, r))
        assert len(r) == len(names)
        for name in names:
            if name.endswith((" ms", "vs 1t idle", "ORT / fastrnn")):
                assert _number(got[name]) > 0, (name, got[name])
        spreads = got[next(n for n in names if n.startswith("spread"))].split(" / ")
        assert len(spreads) == 3 and all(_number(s) >= 1.0 for s in spreads)
        target = got["target"]
        for part in ("busy <=1.3x 1t idle", "ORT pool <=1.3x 1t idle", "busy >=1x ORT",
                     "spread <=1.15"):
            assert f"{part}: met" in target or f"{part}: MISSED" in target, target
        assert all(float(e) <= 1e-3 for e in got[names[-1]].split(" / "))


def test_without_onnxruntime_the_pool_condition_is_not_applicable(tiny):
    cfg = dict(tiny, contention=[("gru", 1, 8)])
    lines = _run_group(cfg, ["torch"])
    names = _cells(next(line for line in lines if line.startswith("| cell")))
    got = dict(zip(names, _cells(next(line for line in lines if line.startswith("| gru")))))
    assert got["idle: ORT ms"] == "n/a" and got["ORT pool: fastrnn ms"] == "n/a"
    assert _number(got["busy: fastrnn ms"]) > 0 and _number(got["idle: PyTorch ms"]) > 0
    assert "busy >=1x ORT: n/a" in got["target"]


@pytest.mark.parametrize("quick", [True, False])
def test_the_bench_runs_the_contention_group_quick_and_full(tiny, monkeypatch, capsys, quick):
    for group in ("seq_group", "train_group", "memory_group", "stream_group", "cell_group",
                  "import_group"):
        monkeypatch.setattr(peers, group, lambda *a, **k: None)
    monkeypatch.setattr(peers, "measure_peaks", lambda threads: {n: 1.0 for n in threads})
    for cfg in (peers.QUICK, peers.FULL):
        cfg["contention"] = [("gru", 1, 8)]
    assert peers.main(["--quick"] if quick else []) == 0
    out = capsys.readouterr().out
    assert "### Under contention" in out
    assert sum(line.startswith("| gru | 1 | 8 |") for line in out.splitlines()) == 1


def test_whole_sequence_rows_report_the_spread_of_their_rounds(tiny):
    lines = []
    peers.seq_group(dict(tiny, seq=[(1, 8)]), [1, 2], PEERS, {1: 1.0, 2: 1.0},
                    lambda *new: lines.extend(new))
    names = _cells(next(line for line in lines if line.startswith("| cell")))
    col = next(i for i, n in enumerate(names) if n.startswith("spread"))
    rows = [_cells(line) for line in lines if line.startswith(("| lstm", "| gru"))]
    assert len(rows) == 4
    for r in rows:
        assert _number(r[col]) >= 1.0
        assert ("spread <=1.15" in r[names.index("target")]) == (r[3] == "2")


def test_the_load_ends_with_its_block():
    with bench.busy_core(start=0.05) as hog:
        assert hog.poll() is None
    assert hog.poll() is not None
    calls = []
    with bench.running_in_background(lambda: calls.append(1)) as state:
        pass
    assert state["runs"] >= 1
    assert not any(t.name == "fastrnn-bench-load" for t in threading.enumerate())


def test_an_error_in_the_background_load_is_raised():
    def fail():
        raise ValueError("load broke")
    with pytest.raises(ValueError, match="load broke"):
        with bench.running_in_background(fail):
            pass


def test_spread_is_max_over_min():
    assert bench.spread([2.0, 3.0, 2.5]) == 1.5
    rounds = {}
    bench.time_blocks({"a": lambda: None}, repeats=3, min_time=0.001, settle=0,
                      rounds=rounds)
    assert len(rounds["a"]) == 3 and bench.spread(rounds["a"]) >= 1.0
