# Vanilla RNN kernels over a whole sequence.
#
# T = time steps, B = batch, I = input size, H = hidden size (G = 1 gate block).
# Arrays are time-major, C-contiguous:
#   x (T, B, I), hbuf (T+1, B, H) with hbuf[0] = h0 and hbuf[t+1] = output of step t,
#   W_ih (H, I), W_hh (H, H), bias (H,) = b_ih + b_hh.
#   h_t = act(x_t @ W_ih.T + h_{t-1} @ W_hh.T + bias),  act = tanh or relu.
#
# Backward (BPTT), t = T-1 .. 0; dh (B, H) is carried in dh0's buffer, which holds dh_n on entry:
#   dh_t    = dhs[t] + dpre[t+1] @ W_hh               grad w.r.t. h_t (dh_n at t = T-1), (B, H)
#   dpre[t] = dh_t * (1 - h_t * h_t)                  grad w.r.t. the pre-activation, tanh
#   dpre[t] = dh_t * (h_t > 0)                        ... relu; dpre (T, B, H) workspace
#   dh0     = dpre[0] @ W_hh                          grad w.r.t. h0, (B, H)
#   dW_ih  += dpre.T @ x                              (H, I), one GEMM over all T*B rows
#   dW_hh  += dpre.T @ h_prev                         (H, H), h_prev = hbuf[:T] (T*B, H)
#   db     += dpre.sum(axis=(0, 1))                   (H,), the gradient of b_ih and of b_hh
#   dx      = dpre @ W_ih                             (T, B, I), only when need_dx
# A padding step (t >= lengths[b]) has dpre[t, b] = 0, ignores dhs[t, b], and passes row b's
# dh through unchanged, so dh_n reaches the row's last valid step. Parameter grads accumulate.
#
# Parallelism: fastrnn's pool (include/fastrnn/pool.h): a phase per step, chunks of hidden
# units (a chunk computes units [j0, j1) of every batch row with a single-threaded BLAS
# call), and blocks of rows or columns in the hoisted GEMMs. BLAS must be limited to one
# thread by the caller.
include "_common.pxi"


cdef void rnn_step_units(floating *hbuf, const floating *x, const floating *W_ih, int I,
                         const floating *W_hh, const floating *bias, const long long *lengths,
                         int t, int B, int H, int act, int j0, int j1) noexcept nogil:
    """Step t for hidden units [j0, j1) of every row; x (B, I) is given (else NULL) in a
    one-step call, whose input projection is done here, per thread."""
    cdef floating *h_prev = hbuf + <Py_ssize_t>t * B * H   # (B, H)
    cdef floating *h = h_prev + <Py_ssize_t>B * H          # (B, H), holds the x-projection
    cdef int n = j1 - j0, b, j
    cdef floating *hb
    if n <= 0:
        return
    if x != NULL:
        # h[:, j0:j1] = x @ W_ih[j0:j1].T
        gate_blocks_product(h, H, W_ih, x, B, I, H, 1, j0, j1, <floating>0)
    # h[:, j0:j1] += h_prev @ W_hh[j0:j1].T
    gate_blocks_product(h, H, W_hh, h_prev, B, H, H, 1, j0, j1, <floating>1)
    for b in range(B):
        hb = h + <Py_ssize_t>b * H + j0
        if not step_is_valid(lengths, t, b):
            memset(hb, 0, n * sizeof(floating))
            continue
        for j in range(n):
            hb[j] += bias[j0 + j]
        if act == ACT_TANH:
            tanh_into(hb, hb, n)
        else:
            for j in range(n):
                hb[j] = hb[j] if hb[j] > 0 else 0


def rnn_forward(floating[:, :, ::1] hbuf,           # INOUT (T+1, B, H): hbuf[0] = h0 in, outputs out
                const floating[:, :, ::1] x,          # IN (T, B, I)
                const floating[:, ::1] W_ih,          # IN (H, I)
                const floating[:, ::1] W_hh,          # IN (H, H)
                const floating[::1] bias,             # IN (H,) = b_ih + b_hh
                const long long[::1] lengths,         # IN (B,) or None
                int act, int n_threads):
    cdef int T = x.shape[0], B = x.shape[1], I = x.shape[2], H = W_hh.shape[0]
    cdef int t
    cdef SeqJob q
    cdef Py_ssize_t r, TB = <Py_ssize_t>T * B
    cdef floating *hb = &hbuf[0, 0, 0]
    cdef floating *out = hb + <Py_ssize_t>B * H        # (T*B, H)
    cdef const long long *len_ptr = NULL if lengths is None else &lengths[0]
    cdef int nt = kernel_threads(n_threads, T, B, I, H, H)
    cdef const floating *xp
    cdef const char *k = b"rnn_forward"
    expect_shape(k, b"hbuf", hbuf.shape, 3, T + 1, B, H)
    expect_shape(k, b"W_ih", W_ih.shape, 2, H, I)
    expect_shape(k, b"W_hh", W_hh.shape, 2, H, H)
    expect_shape(k, b"bias", bias.shape, 1, H)
    if lengths is not None:
        expect_shape(k, b"lengths", lengths.shape, 1, B)
    if T == 0 or B == 0:
        return
    with nogil:
        # out = x @ W_ih.T (bias added per step, in cache)
        xp = input_projection(out, &x[0, 0, 0], &W_ih[0, 0], T, B, I, H, n_threads)
        if nt == 1:
            for t in range(T):
                rnn_step_units(hb, xp, &W_ih[0, 0], I, &W_hh[0, 0], &bias[0], len_ptr, t, B, H,
                               act, 0, H)
        else:
            # a phase per step, chunks of units: step t+1 reads all of h_t
            q.hbuf, q.x, q.W_ih, q.W_hh, q.bias, q.lengths = hb, xp, &W_ih[0, 0], &W_hh[0, 0], \
                &bias[0], len_ptr
            q.T, q.B, q.I, q.H, q.act, q.chunk = T, B, I, H, act, unit_chunk(H, B)
            run_unit_chunks(nt, T, H, q.chunk, _forward_chunk_f32, _forward_chunk_f64, &q,
                            <floating>0)


cdef struct SeqJob:
    # one whole-sequence forward or backward for the pool's chunks (backward: hbuf = dpre,
    # x = dh_carry, bias = dhs, W_ih = the forward's hbuf), sizes, units per chunk
    void *hbuf
    const void *x
    const void *W_ih
    const void *W_hh
    const void *bias
    const long long *lengths
    int T, B, I, H, act, chunk


cdef void _forward_chunk(SeqJob *q, floating dtype_of, int t, int c) noexcept nogil:
    cdef int j0 = c * q.chunk
    rnn_step_units(<floating *>q.hbuf, <const floating *>q.x, <const floating *>q.W_ih, q.I,
                   <const floating *>q.W_hh, <const floating *>q.bias, q.lengths, t, q.B, q.H,
                   q.act, j0, min(q.H, j0 + q.chunk))


cdef void _forward_chunk_f32(void *ctx, int t, int c) noexcept nogil:
    _forward_chunk(<SeqJob *>ctx, <float>0, t, c)


cdef void _forward_chunk_f64(void *ctx, int t, int c) noexcept nogil:
    _forward_chunk(<SeqJob *>ctx, <double>0, t, c)


cdef void _backward_chunk(SeqJob *q, floating dtype_of, int phase, int c) noexcept nogil:
    # phase p is step T-1-p
    cdef int j0 = c * q.chunk, t = q.T - 1 - phase
    cdef Py_ssize_t BH = <Py_ssize_t>q.B * q.H
    cdef floating *dp = <floating *>q.hbuf
    rnn_backstep_units(dp + t * BH, <floating *>q.x, dp + (t + 1) * BH,
                       <const floating *>q.bias, <const floating *>q.W_ih,
                       <const floating *>q.W_hh, q.lengths, t, q.T, q.B, q.H, q.act, j0,
                       min(q.H, j0 + q.chunk))


cdef void _backward_chunk_f32(void *ctx, int phase, int c) noexcept nogil:
    _backward_chunk(<SeqJob *>ctx, <float>0, phase, c)


cdef void _backward_chunk_f64(void *ctx, int phase, int c) noexcept nogil:
    _backward_chunk(<SeqJob *>ctx, <double>0, phase, c)


cdef void rnn_backstep_units(floating *dpre, floating *dh_carry, const floating *dpre_next,
                             const floating *dhs, const floating *hbuf, const floating *W_hh,
                             const long long *lengths, int t, int T, int B, int H, int act,
                             int j0, int j1) noexcept nogil:
    """Backward step t for units [j0, j1): finish dh_carry with the recurrent term of
    step t+1, then dpre[t] = dh * act'(h_t)."""
    cdef int n = j1 - j0, b, j
    cdef floating dh, hv
    cdef const floating *h = hbuf + <Py_ssize_t>(t + 1) * B * H   # (B, H) outputs of step t
    if n <= 0:
        return
    if t + 1 < T:
        # dh_carry[:, j0:j1] += dpre[t+1] @ W_hh[:, j0:j1]  (rows held at t+1 add zero)
        _gemm(NoTrans, NoTrans, B, n, H, <floating>1, dpre_next, H, W_hh + j0, H,
              <floating>1, dh_carry + j0, H)
    for b in range(B):
        if not step_is_valid(lengths, t, b):
            memset(dpre + <Py_ssize_t>b * H + j0, 0, n * sizeof(floating))
            continue   # padding: the carried gradient passes through unchanged
        for j in range(j0, j1):
            dh = dh_carry[b * H + j]
            if dhs != NULL:
                dh = dh + dhs[(<Py_ssize_t>t * B + b) * H + j]
            hv = h[b * H + j]
            if act == ACT_TANH:
                dpre[b * H + j] = dh * (1 - hv * hv)
            else:
                dpre[b * H + j] = dh if hv > 0 else 0
            dh_carry[b * H + j] = 0


def rnn_backward(floating[:, :, ::1] dx,             # OUT (T, B, I), written when need_dx
                 floating[:, ::1] dh0,                # OUT (B, H); holds dh_n on entry
                 floating[:, ::1] dW_ih,              # INOUT (H, I), accumulated
                 floating[:, ::1] dW_hh,              # INOUT (H, H), accumulated
                 floating[::1] db,                    # INOUT (H,), accumulated (d b_ih = d b_hh)
                 floating[:, :, ::1] dpre,            # OUT (T, B, H) workspace: d pre-activation
                 const floating[:, :, ::1] dhs,       # IN (T, B, H) or None
                 const floating[:, :, ::1] x,         # IN (T, B, I)
                 const floating[:, :, ::1] hbuf,      # IN (T+1, B, H) from forward
                 const floating[:, ::1] W_ih,         # IN (H, I)
                 const floating[:, ::1] W_hh,         # IN (H, H)
                 const long long[::1] lengths,        # IN (B,) or None
                 int act, int n_threads, bint need_dx=True):
    cdef int T = x.shape[0], B = x.shape[1], I = x.shape[2], H = W_hh.shape[0]
    cdef int t, j
    cdef SeqJob q
    cdef Py_ssize_t r, TB = <Py_ssize_t>T * B, BH = <Py_ssize_t>B * H
    cdef floating *dp = &dpre[0, 0, 0]
    cdef const floating *dhs_ptr = NULL if dhs is None else &dhs[0, 0, 0]
    cdef const long long *len_ptr = NULL if lengths is None else &lengths[0]
    cdef int nt = kernel_threads(n_threads, T, B, I, H, H)
    cdef floating acc
    cdef const char *k = b"rnn_backward"
    if need_dx:
        expect_shape(k, b"dx", dx.shape, 3, T, B, I)
    expect_shape(k, b"dh0", dh0.shape, 2, B, H)
    expect_shape(k, b"dW_ih", dW_ih.shape, 2, H, I)
    expect_shape(k, b"dW_hh", dW_hh.shape, 2, H, H)
    expect_shape(k, b"db", db.shape, 1, H)
    expect_shape(k, b"dpre", dpre.shape, 3, T, B, H)
    if dhs is not None:
        expect_shape(k, b"dhs", dhs.shape, 3, T, B, H)
    expect_shape(k, b"hbuf", hbuf.shape, 3, T + 1, B, H)
    expect_shape(k, b"W_ih", W_ih.shape, 2, H, I)
    expect_shape(k, b"W_hh", W_hh.shape, 2, H, H)
    if lengths is not None:
        expect_shape(k, b"lengths", lengths.shape, 1, B)
    if T == 0 or B == 0:
        return
    with nogil:
        if nt == 1:
            for t in range(T - 1, -1, -1):
                rnn_backstep_units(dp + t * BH, &dh0[0, 0], dp + (t + 1) * BH, dhs_ptr,
                                   &hbuf[0, 0, 0], &W_hh[0, 0], len_ptr, t, T, B, H, act, 0, H)
        else:
            # a phase per step, last to first, chunks of units (SeqJob's backward fields)
            q.hbuf, q.x, q.bias, q.W_ih, q.W_hh, q.lengths = dp, &dh0[0, 0], dhs_ptr, \
                &hbuf[0, 0, 0], &W_hh[0, 0], len_ptr
            q.T, q.B, q.I, q.H, q.act, q.chunk = T, B, I, H, act, unit_chunk(H, B)
            run_unit_chunks(nt, T, H, q.chunk, _backward_chunk_f32, _backward_chunk_f64, &q,
                            <floating>0)
        # dh0 += dpre[0] @ W_hh
        _gemm_split(NoTrans, NoTrans, B, H, H, <floating>1, dp, H, &W_hh[0, 0], H,
                    <floating>1, &dh0[0, 0], H, n_threads, True)
        # dW_ih += dpre.T (H, T*B) @ x (T*B, I)
        _gemm_split(Trans, NoTrans, H, I, T * B, <floating>1, dp, H, &x[0, 0, 0], I,
                    <floating>1, &dW_ih[0, 0], I, n_threads, False)
        # dW_hh += dpre.T @ h_prev, h_prev = hbuf[:T] (T*B, H)
        _gemm_split(Trans, NoTrans, H, H, T * B, <floating>1, dp, H, &hbuf[0, 0, 0], H,
                    <floating>1, &dW_hh[0, 0], H, n_threads, False)
        # dx = dpre @ W_ih  (T*B, H) @ (H, I)
        if need_dx:
            _gemm_split(NoTrans, NoTrans, T * B, I, H, <floating>1, dp, H, &W_ih[0, 0], I,
                        <floating>0, &dx[0, 0, 0], I, n_threads, False)
        # db += dpre.sum(axis=(0, 1))
        colsum_into(&db[0], dp, TB, H, H, n_threads)
