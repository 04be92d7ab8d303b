"""Sequence-level consistency of the kernels (fastrnn.functional), no reference needed.

* step by step (T calls of length 1, state carried) == one call over the whole sequence,
  and so do chunks of uneven sizes (Karpathy's checkSequentialMatchesBatch);
* truncated BPTT: backward through the chunks in reverse, feeding each chunk's dh0 / dc0
  in as the previous chunk's dh_n / dc_n and accumulating parameter gradients into one
  dict, == backward of the whole sequence;
* n_threads = 1, 2, 3 give the same results (H >= 16, B in {1, 4}), and repeated
  threaded calls are bit-identical (a data race would show up here).
All with and without ragged lengths, float32 and float64.
"""
import numpy as np
import pytest

from fastrnn import functional as F
from _helpers import (CASES, DTYPES, assert_close_scaled, assert_identical, backward, forward,
                      has_cell_state, make_cotangents, make_inputs)

# (rtol, atol), atol relative to the array's largest magnitude (_helpers.assert_close_scaled).
# The pieces differ from the whole call only in how BLAS blocks the input projection (T*B
# rows at once vs B rows per call) and the weight-gradient sums (per chunk vs all steps),
# i.e. in rounding order. Measured here: forward by steps and by chunks bit-identical (not
# asserted: BLAS may block differently elsewhere); truncated-BPTT gradients max abs diff
# 3.6e-15 (float64) and 1.9e-6 (float32) on gradients up to ~12: 1% and 6% of the budget.
TOL = {np.float32: (1e-5, 1e-6), np.float64: (1e-13, 1e-14)}

T, B, I, H = 7, 3, 4, 13
LENGTHS = np.array([T, 0, 4])     # full, zero, partial
CHUNKS = [3, 1, 3]                # uneven chunk sizes, one of length 1; sum = T

ids_dtype = dict(ids=lambda d: np.dtype(d).name)


def _chunk_lengths(lengths, start, size):
    """Lengths of rows within the chunk [start, start + size)."""
    return None if lengths is None else np.clip(lengths - start, 0, size)


def _run_chunks(case, a, lengths, sizes, n_threads=2):
    """Forward over consecutive chunks, state carried; returns (hs, finals, caches)."""
    state = {k: a[k] for k in ("h0", "c0") if k in a}
    hs, caches, start = [], [], 0
    for size in sizes:
        piece = dict(a, x=a["x"][start:start + size], **state)
        h, finals, cache = forward(F, case, piece, _chunk_lengths(lengths, start, size),
                                   n_threads=n_threads)
        hs.append(h.copy())
        caches.append(cache)
        state = dict(zip(("h0", "c0"), finals))
        start += size
    return np.concatenate(hs), tuple(state[k] for k in ("h0", "c0") if k in state), caches


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "ragged"])
@pytest.mark.parametrize("split", ["steps", "chunks"])
@pytest.mark.parametrize("dtype", DTYPES, **ids_dtype)
@pytest.mark.parametrize("name", list(CASES))
def test_pieces_equal_whole_sequence(name, dtype, split, lengths):
    case = CASES[name]
    rng = np.random.default_rng(7)
    a = make_inputs(case, rng, T, B, I, H, dtype)
    rtol, atol = TOL[dtype]
    hs, finals, _ = forward(F, case, a, lengths, n_threads=2)
    sizes = [1] * T if split == "steps" else CHUNKS
    hs_p, finals_p, _ = _run_chunks(case, a, lengths, sizes)
    assert_close_scaled(f"{name} {split} hs", hs_p, hs, rtol, atol)
    for k, (f_p, f) in enumerate(zip(finals_p, finals)):
        assert f_p.dtype == dtype
        assert_close_scaled(f"{name} {split} final[{k}]", f_p, f, rtol, atol)


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "ragged"])
@pytest.mark.parametrize("dtype", DTYPES, **ids_dtype)
@pytest.mark.parametrize("name", list(CASES))
def test_truncated_bptt_through_chunks_equals_whole_backward(name, dtype, lengths):
    case = CASES[name]
    rng = np.random.default_rng(8)
    a = make_inputs(case, rng, T, B, I, H, dtype)
    dhs, dfinals = make_cotangents(case, rng, T, B, H, dtype)
    rtol, atol = TOL[dtype]

    _, _, cache = forward(F, case, a, lengths, n_threads=2)
    whole = backward(F, case, dhs, dfinals, cache)

    _, _, caches = _run_chunks(case, a, lengths, CHUNKS)
    grads = {k: np.zeros_like(v) for k, v in a.items() if k not in ("x", "h0", "c0")}
    carried = dfinals                    # gradient w.r.t. the state leaving each chunk
    dx = [None] * len(CHUNKS)
    starts = np.cumsum([0] + CHUNKS[:-1])
    for c in reversed(range(len(CHUNKS))):
        s, size = starts[c], CHUNKS[c]
        out = backward(F, case, dhs[s:s + size], carried, caches[c], grads=grads)
        dx[c] = out["x"]
        carried = (out["h0"], out["c0"]) if has_cell_state(case) else (out["h0"],)

    got = dict(grads, x=np.concatenate(dx), h0=carried[0])
    if has_cell_state(case):
        got["c0"] = carried[1]
    assert set(got) == set(whole)
    for k in whole:
        assert got[k].dtype == dtype
        assert_close_scaled(f"{name} truncated BPTT d{k}", got[k], whole[k], rtol, atol)


# ---------------------------------------------------------------------------------------
# threads
# ---------------------------------------------------------------------------------------
# 1 vs 2 or 3 threads: the unit split changes which BLAS call computes an output element
# (and how the hoisted GEMMs are cut), which may change its rounding. Measured max abs
# diff: float64 forward 5.6e-17, gradients 4.4e-16 (on gradients up to ~17); float32
# 3.0e-8 and 9.5e-7; i.e. at most 3% (float64) and 25% (float32) of these budgets.
THREAD_TOL = {np.float32: (2e-6, 4e-7), np.float64: (1e-13, 1e-15)}


@pytest.mark.parametrize("lengths", [None, "ragged"], ids=["full", "ragged"])
@pytest.mark.parametrize("BH", [(1, 16), (4, 16), (1, 37), (4, 37)],
                         ids=lambda s: "B{}H{}".format(*s))
@pytest.mark.parametrize("dtype", DTYPES, **ids_dtype)
@pytest.mark.parametrize("name", list(CASES))
def test_thread_counts_agree(name, dtype, BH, lengths):
    case = CASES[name]
    Bt, Ht = BH
    Tt = 5
    rng = np.random.default_rng(9)
    a = make_inputs(case, rng, Tt, Bt, I, Ht, dtype)
    dhs, dfinals = make_cotangents(case, rng, Tt, Bt, Ht, dtype)
    if lengths is not None:
        lengths = np.array([Tt - 2]) if Bt == 1 else np.array([Tt, 0, 3, 1])
    rtol, atol = THREAD_TOL[dtype]

    def run(n_threads, backward_n_threads=None):
        """backward_n_threads=None: backward uses the forward's thread count."""
        hs, finals, cache = forward(F, case, a, lengths, n_threads=n_threads)
        out = {"hs": hs.copy(), **{f"final{k}": f for k, f in enumerate(finals)}}
        grads = backward(F, case, dhs, dfinals, cache, n_threads=backward_n_threads)
        out.update({f"d{k}": g for k, g in grads.items()})
        return out

    one = run(1)
    for fwd, bwd in [(2, None), (3, None), (1, 2), (2, 1)]:
        many = run(fwd, bwd)
        for k in one:
            assert_close_scaled(f"{name} {k}: n_threads={fwd} (backward {bwd}) vs 1",
                                many[k], one[k], rtol, atol)
    # threaded runs are deterministic: repeated calls give the same bits
    first = run(2)
    for _ in range(5):
        again = run(2)
        for k in first:
            assert_identical(f"{name} {k}: repeated n_threads=2 call", again[k], first[k])


def test_concurrent_calls_from_python_threads():
    """The kernels release the GIL and limit BLAS to one thread with a reference-counted
    guard: calls from 4 Python threads at once give the same bits as serial calls."""
    from concurrent.futures import ThreadPoolExecutor

    lengths = np.array([20, 0, 7, 13])
    jobs = []
    for i, name in enumerate(CASES):
        rng = np.random.default_rng(100 + i)
        a = make_inputs(CASES[name], rng, 20, 4, 8, 40, np.float32 if i % 2 else np.float64)
        jobs.append((name, a, *make_cotangents(CASES[name], rng, 20, 4, 40, a["x"].dtype)))

    def run(job):
        name, a, dhs, dfinals = job
        hs, finals, cache = forward(F, CASES[name], a, lengths, n_threads=2)
        return hs.copy(), finals, backward(F, CASES[name], dhs, dfinals, cache)

    serial = [run(job) for job in jobs]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            for job, (hs, finals, g), (hs0, finals0, g0) in zip(jobs, pool.map(run, jobs * 2),
                                                                 serial * 2):
                assert_identical(f"{job[0]} hs, concurrent", hs, hs0)
                for k, (f, f0) in enumerate(zip(finals, finals0)):
                    assert_identical(f"{job[0]} final[{k}], concurrent", f, f0)
                for k in g0:
                    assert_identical(f"{job[0]} d{k}, concurrent", g[k], g0[k])
