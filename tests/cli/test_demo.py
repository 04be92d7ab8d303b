"""The demo's data and plot (the full demo runs in CI via `fastrnn demo`, which exits
non-zero unless LSTM and GRU reach MSE < 0.01)."""
import xml.dom.minidom

import numpy as np

from fastrnn.cli import demo


def test_adding_problem_data():
    rng = np.random.default_rng(0)
    x, y = demo.adding_problem(2000, 30, rng)
    marks = x[:, :, 1]
    assert (marks.sum(1) == 2).all()
    assert (marks[:, :15].sum(1) == 1).all() and (marks[:, 15:].sum(1) == 1).all()
    np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * marks).sum(1), rtol=1e-6)
    assert abs(np.var(y) - demo.BASELINE_MSE) < 0.015     # the mean predictor's MSE


def test_small_run_learns_and_writes_a_plot(tmp_path):
    plot = tmp_path / "curves.svg"
    lines = []
    r = demo.run(T=10, hidden=16, n_train=2048, n_test=256, epochs=4, cells=("rnn", "gru"),
                 plot=str(plot), progress=False, out=lines.append)
    assert r["gru"]["mse"] < 0.5 * demo.BASELINE_MSE
    assert len(r["gru"]["curve"]) == 4
    doc = xml.dom.minidom.parse(str(plot))
    assert len(doc.getElementsByTagName("polyline")) == 2
    assert any("GRU" in line for line in lines)
