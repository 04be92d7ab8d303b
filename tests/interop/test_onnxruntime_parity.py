"""The compiled kernels' forward against ONNX Runtime (float32): LSTM with peepholes
(ONNX P = [p_i, p_o, p_f], gate order i, o, f, c), coupled LSTM (input_forget=1: ONNX
Runtime ignores the f block and p_f, so they are filled with junk), GRU with
linear_before_reset 1 (our reset_after=True) and 0 (ONNX order z, r, h); with and without
sequence_lens. Skipped when onnx or onnxruntime is not installed.
"""
import numpy as np
import pytest

from fastrnn import functional as F
from _helpers import CASES, assert_close_scaled, forward, make_inputs, reorder, run_onnx

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# (rtol, atol), atol relative to the array's largest magnitude (_helpers.assert_close_scaled).
# float32 on both sides, different activation code (ours: AVX2 polynomials, error < 2.5e-7)
# and summation orders. Measured: max abs diff 1.2e-7 on values below 1, 15% of this.
ORT_RTOL, ORT_ATOL = 2e-6, 5e-7

T, B, I, H = 6, 4, 5, 17
LENGTHS = np.array([T, 0, 3, 1])   # full, zero, partial

LSTM_CASES = ["lstm", "lstm_p_i", "lstm_p_f", "lstm_p_o", "lstm_peep_all", "lstm_coupled",
              "lstm_coupled_p_i_p_o"]


def _compare(label, hs, finals, Y, finals_onnx, lengths):
    """Y (T, 1, B, H); ONNX final states (1, B, H). ONNX Runtime returns zeros for Y_h / Y_c
    of a length-0 row (we return h0 / c0), so final states are compared on rows of length > 0."""
    assert_close_scaled(f"{label} Y", hs, Y[:, 0], ORT_RTOL, ORT_ATOL)
    rows = np.arange(B) if lengths is None else np.flatnonzero(lengths > 0)
    for k, (f, fo) in enumerate(zip(finals, finals_onnx)):
        assert_close_scaled(f"{label} final[{k}]", f[rows], fo[0][rows], ORT_RTOL, ORT_ATOL)


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "ragged"])
@pytest.mark.parametrize("name", LSTM_CASES)
def test_lstm_matches_onnxruntime(name, lengths):
    case = CASES[name]
    coupled = case.get("coupled", False)
    rng = np.random.default_rng(12)
    a = make_inputs(case, rng, T, B, I, H, np.float32)
    hs, finals, _ = forward(F, case, a, lengths, n_threads=2)

    # ours (i, f, g, o) or coupled (i, g, o) -> ONNX (i, o, f, c); for input_forget=1 the
    # f block (and p_f) ONNX still stores are junk that must not matter
    src = ("i", "g", "o") if coupled else ("i", "f", "g", "o")
    junk = (lambda *shape: {"f": rng.standard_normal(shape).astype(np.float32)}) if coupled \
        else (lambda *shape: None)
    W = reorder(a["W_ih"], src, "iofg", junk(H, I))[None]
    R = reorder(a["W_hh"], src, "iofg", junk(H, H))[None]
    Bias = np.concatenate([reorder(a["b_ih"], src, "iofg", junk(H)),
                           reorder(a["b_hh"], src, "iofg", junk(H))])[None]
    P = None
    if case.get("peepholes"):
        p = {k: a.get(k, np.zeros(H, np.float32)) for k in ("p_i", "p_o", "p_f")}
        if coupled:
            p["p_f"] = rng.standard_normal(H).astype(np.float32)
        P = np.concatenate([p["p_i"], p["p_o"], p["p_f"]])[None]
    seq = None if lengths is None else lengths.astype(np.int32)
    Y, Y_h, Y_c = run_onnx("LSTM", [("X", a["x"]), ("W", W), ("R", R), ("B", Bias),
                                    ("sequence_lens", seq), ("initial_h", a["h0"][None]),
                                    ("initial_c", a["c0"][None]), ("P", P)],
                           dict(hidden_size=H, input_forget=int(coupled)), ["Y", "Y_h", "Y_c"])
    _compare(f"{name} lengths={lengths}", hs, finals, Y, (Y_h, Y_c), lengths)


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "ragged"])
@pytest.mark.parametrize("reset_after", [True, False], ids=["lbr1", "lbr0"])
def test_gru_matches_onnxruntime(reset_after, lengths):
    case = CASES["gru_reset_after" if reset_after else "gru_reset_before"]
    a = make_inputs(case, np.random.default_rng(13), T, B, I, H, np.float32)
    hs, finals, _ = forward(F, case, a, lengths, n_threads=2)
    # ours (r, z, n) -> ONNX (z, r, h)
    W = reorder(a["W_ih"], "rzn", "zrn")[None]
    R = reorder(a["W_hh"], "rzn", "zrn")[None]
    Bias = np.concatenate([reorder(a["b_ih"], "rzn", "zrn"),
                           reorder(a["b_hh"], "rzn", "zrn")])[None]
    seq = None if lengths is None else lengths.astype(np.int32)
    Y, Y_h = run_onnx("GRU", [("X", a["x"]), ("W", W), ("R", R), ("B", Bias),
                              ("sequence_lens", seq), ("initial_h", a["h0"][None])],
                      dict(hidden_size=H, linear_before_reset=int(reset_after)), ["Y", "Y_h"])
    _compare(f"gru reset_after={reset_after} lengths={lengths}", hs, finals, Y, (Y_h,), lengths)
