# LSTM kernels over a whole sequence: plain, peephole (any subset of p_i, p_f, p_o),
# and coupled input-forget gates (CIFG).
#
# T = time steps, B = batch, I = input size, H = hidden size,
# G = gate blocks: 4 in PyTorch's order (i, f, g, o); coupled: 3, order (i, g, o), f = 1 - i.
# GH = G * H. Arrays are time-major, C-contiguous:
#   x (T, B, I); gates (T, B, GH): input projection, then post-activation gates;
#   hbuf, cbuf (T+1, B, H): [0] = h0 / c0, [t+1] = state after step t;
#   tcbuf (T, B, H) = tanh(c_t), cached for backward; W_ih (GH, I), W_hh (GH, H),
#   bias (GH,) = b_ih + b_hh; peepholes p_i, p_f, p_o (H,) or None.
#
#   i = sigmoid(a_i + p_i * c_{t-1})      f = sigmoid(a_f + p_f * c_{t-1})   (coupled: f = 1 - i)
#   g = tanh(a_g)                         c_t = f * c_{t-1} + i * g
#   o = sigmoid(a_o + p_o * c_t)          h_t = o * tanh(c_t)
#   a = x_t @ W_ih.T + h_{t-1} @ W_hh.T + bias
#
# Backward (BPTT), t = T-1 .. 0; dh, dc (B, H) are carried in dh0's and dc0's buffers, which
# hold dh_n and dc_n on entry; gates (i, f, g, o) post-activation from the forward cache:
#   dh   = dhs[t] + dgates[t+1] @ W_hh                grad w.r.t. h_t (dh_n at t = T-1), (B, H)
#   da_o = dh * tanh(c_t) * o * (1 - o)               grad w.r.t. the output-gate pre-activation
#   dc   = dc + dh * o * (1 - tanh(c_t)^2) + da_o * p_o    grad w.r.t. c_t (dc_n at t = T-1)
#   da_g = dc * i * (1 - g * g)                       grad w.r.t. the candidate pre-activation
#   da_i = dc * g * i * (1 - i)                       grad w.r.t. the input-gate pre-activation
#   da_i = dc * (g - c_{t-1}) * i * (1 - i)           ... coupled (c_t = (1 - i) c_{t-1} + i g)
#   da_f = dc * c_{t-1} * f * (1 - f)                 grad w.r.t. the forget-gate pre-activation
#   dc   = dc * f + da_i * p_i + da_f * p_f           grad w.r.t. c_{t-1} (coupled: f = 1 - i)
#   dgates[t] = [da_i, da_f, da_g, da_o]              (T, B, GH) workspace (coupled: no da_f)
#   dh0     = dgates[0] @ W_hh;  dc0 = dc             grads w.r.t. h0, c0, (B, H)
#   dW_ih  += dgates.T @ x                            (GH, I), one GEMM over all T*B rows
#   dW_hh  += dgates.T @ h_prev                       (GH, H), h_prev = hbuf[:T] (T*B, H)
#   db     += dgates.sum(axis=(0, 1))                 (GH,), the gradient of b_ih and of b_hh
#   dp_i   += (da_i * c_{t-1}).sum(axis=(0, 1))       (H,); dp_f likewise with da_f
#   dp_o   += (da_o * c_t).sum(axis=(0, 1))           (H,), c_t = cbuf[1:]
#   dx      = dgates @ W_ih                           (T, B, I), only when need_dx
# Peephole terms are there only for the peepholes given. A padding step (t >= lengths[b])
# has dgates[t, b] = 0, ignores dhs[t, b], and passes row b's dh and dc through unchanged.
# dgates may be the forward's gates buffer itself (fastrnn.functional without
# retain_cache): each element is read before it is overwritten. Parameter grads accumulate.
#
# Parallelism: fastrnn's pool (include/fastrnn/pool.h): a step is a phase of chunks of
# hidden units (a chunk computes units [j0, j1) of every gate block and every row, so its
# products and gate math need nothing from other chunks; step t+1 starts once every chunk
# of step t is done); the hoisted GEMMs split rows or columns into blocks. Chunks are
# claimed by whichever thread is free, so a descheduled thread holds up no step.
# BLAS is single-threaded.
include "_common.pxi"


cdef LSTMShape make_shape(int T, int B, int I, int H, bint coupled) noexcept nogil:
    cdef LSTMShape s
    s.T = T; s.B = B; s.I = I; s.H = H; s.coupled = coupled; s.packed = NULL
    if coupled:
        s.GH = 3 * H; s.off_i = 0; s.off_f = -1; s.off_g = H; s.off_o = 2 * H
    else:
        s.GH = 4 * H; s.off_i = 0; s.off_f = H; s.off_g = 2 * H; s.off_o = 3 * H
    return s


cdef int check_cache_shapes(const char *k, LSTMShape s, Py_ssize_t *gates, Py_ssize_t *hbuf,
                            Py_ssize_t *cbuf, Py_ssize_t *tcbuf, Py_ssize_t *W_ih,
                            Py_ssize_t *W_hh) except -1:
    """The buffers forward writes and backward reads, and the weights: the same shapes."""
    expect_shape(k, b"gates", gates, 3, s.T, s.B, s.GH)
    expect_shape(k, b"hbuf", hbuf, 3, s.T + 1, s.B, s.H)
    expect_shape(k, b"cbuf", cbuf, 3, s.T + 1, s.B, s.H)
    expect_shape(k, b"tcbuf", tcbuf, 3, s.T, s.B, s.H)
    expect_shape(k, b"W_ih", W_ih, 2, s.GH, s.I)
    expect_shape(k, b"W_hh", W_hh, 2, s.GH, s.H)
    return 0


cdef void lstm_step_units(LSTMShape s, floating *gates, floating *hbuf, floating *cbuf,
                          floating *tcbuf, const floating *x, const floating *W_ih,
                          const floating *W_hh, const floating *bias,
                          const floating *p_i, const floating *p_f, const floating *p_o,
                          const long long *lengths, int t, int j0, int j1) noexcept nogil:
    """Forward step t for hidden units [j0, j1) of every row. x (B, I) is given (else
    NULL) when the input projection of this step is still to do."""
    cdef int B = s.B, H = s.H, GH = s.GH, n = j1 - j0, b, j, k, G = GH // H
    cdef Py_ssize_t BH = <Py_ssize_t>B * H
    cdef floating *a = gates + <Py_ssize_t>t * B * GH   # (B, GH) this step
    cdef const floating *h_prev = hbuf + t * BH         # (B, H)
    cdef floating *h = hbuf + (t + 1) * BH
    cdef const floating *c_prev = cbuf + t * BH
    cdef floating *c = cbuf + (t + 1) * BH
    cdef floating *tc = tcbuf + t * BH
    cdef floating *ai
    cdef floating *af
    cdef floating *ag
    cdef floating *ao
    cdef const floating *cp
    cdef floating *cb
    cdef floating *tcb
    cdef floating *hb
    if n <= 0:
        return
    if x != NULL:
        # one-step call: a[:, blocks, j0:j1] = x @ W_ih[blocks, j0:j1].T here, so each
        # thread reads only its own rows of W_ih (at batch 1 the weights are the traffic)
        gate_blocks_product(a, GH, W_ih, x, B, s.I, H, G, j0, j1, <floating>0)
    # a[:, blocks, j0:j1] += h_prev @ W_hh[blocks, j0:j1].T
    if floating is float and s.packed != NULL:
        if n == H:
            fr_gemm_packed_f32(B, 0, GH, H, h_prev, H, s.packed, 1, a, GH)
        else:                       # chunks of 16-multiples: whole panels (lstm_forward)
            for k in range(G):
                fr_gemm_packed_f32(B, k * H + j0, k * H + j1, H, h_prev, H, s.packed, 1, a, GH)
    else:
        gate_blocks_product(a, GH, W_hh, h_prev, B, H, H, G, j0, j1, <floating>1)
    for b in range(B):
        cb = c + <Py_ssize_t>b * H + j0
        hb = h + <Py_ssize_t>b * H + j0
        tcb = tc + <Py_ssize_t>b * H + j0
        if not step_is_valid(lengths, t, b):
            # padding: zero output; the held state is read back from the last valid step
            memset(hb, 0, n * sizeof(floating))
            memset(cb, 0, n * sizeof(floating))
            memset(tcb, 0, n * sizeof(floating))
            continue
        for k in range(G):
            # bias here rather than under the input GEMM: one pass over cached data
            # instead of two over the whole (T, B, GH) buffer
            for j in range(k * H + j0, k * H + j1):
                a[<Py_ssize_t>b * GH + j] += bias[j]
        ai = a + <Py_ssize_t>b * GH + s.off_i + j0
        ag = a + <Py_ssize_t>b * GH + s.off_g + j0
        ao = a + <Py_ssize_t>b * GH + s.off_o + j0
        cp = c_prev + <Py_ssize_t>b * H + j0
        if p_i != NULL:
            for j in range(n):
                ai[j] += p_i[j0 + j] * cp[j]
        sigmoid_inplace(ai, n)
        tanh_into(ag, ag, n)
        if s.coupled:
            for j in range(n):
                cb[j] = (1 - ai[j]) * cp[j] + ai[j] * ag[j]
        else:
            af = a + <Py_ssize_t>b * GH + s.off_f + j0
            if p_f != NULL:
                for j in range(n):
                    af[j] += p_f[j0 + j] * cp[j]
            sigmoid_inplace(af, n)
            for j in range(n):
                cb[j] = af[j] * cp[j] + ai[j] * ag[j]
        tanh_into(tcb, cb, n)
        if p_o != NULL:
            for j in range(n):
                ao[j] += p_o[j0 + j] * cb[j]
        sigmoid_inplace(ao, n)
        for j in range(n):
            hb[j] = ao[j] * tcb[j]


def lstm_forward(floating[:, :, ::1] gates,          # OUT (T, B, GH) post-activation gates
                 floating[:, :, ::1] hbuf,           # INOUT (T+1, B, H): [0] = h0 in
                 floating[:, :, ::1] cbuf,           # INOUT (T+1, B, H): [0] = c0 in
                 floating[:, :, ::1] tcbuf,          # OUT (T, B, H) tanh(c_t)
                 const floating[:, :, ::1] x,        # IN (T, B, I)
                 const floating[:, ::1] W_ih,        # IN (GH, I)
                 const floating[:, ::1] W_hh,        # IN (GH, H)
                 const floating[::1] bias,           # IN (GH,) = b_ih + b_hh
                 const floating[::1] p_i,            # IN (H,) or None
                 const floating[::1] p_f,            # IN (H,) or None
                 const floating[::1] p_o,            # IN (H,) or None
                 const long long[::1] lengths,       # IN (B,) or None
                 bint coupled, int n_threads):
    cdef LSTMShape s = make_shape(x.shape[0], x.shape[1], x.shape[2], W_hh.shape[1], coupled)
    cdef int t
    cdef SeqJob q
    cdef floating *g = &gates[0, 0, 0]
    cdef const floating *pi = NULL if p_i is None else &p_i[0]
    cdef const floating *pf = NULL if p_f is None else &p_f[0]
    cdef const floating *po = NULL if p_o is None else &p_o[0]
    cdef const long long *len_ptr = NULL if lengths is None else &lengths[0]
    cdef int nt = kernel_threads(n_threads, s.T, s.B, s.I, s.H, s.GH)
    cdef const floating *xp
    cdef const char *k = b"lstm_forward"
    check_cache_shapes(k, s, gates.shape, hbuf.shape, cbuf.shape, tcbuf.shape, W_ih.shape,
                       W_hh.shape)
    expect_shape(k, b"bias", bias.shape, 1, s.GH)
    for name, p in ((b"p_i", p_i), (b"p_f", p_f), (b"p_o", p_o)):
        if p is not None:
            expect_shape(k, name, p.shape, 1, s.H)
    if lengths is not None:
        expect_shape(k, b"lengths", lengths.shape, 1, s.B)
    if s.T == 0 or s.B == 0:
        return
    with nogil:
        # gates = x @ W_ih.T (bias added per step, in cache)
        xp = input_projection(g, &x[0, 0, 0], &W_ih[0, 0], s.T, s.B, s.I, s.GH, n_threads)
        if floating is float and s.B > 1 and s.T > 1 and (nt == 1 or s.H % 16 == 0):
            # W_hh packed once for the T recurrent products (batch 1 keeps gemv.h)
            s.packed = packed_copy(&W_hh[0, 0], s.GH, s.H, False)
        if nt == 1:
            for t in range(s.T):
                lstm_step_units(s, g, &hbuf[0, 0, 0], &cbuf[0, 0, 0], &tcbuf[0, 0, 0], xp,
                                &W_ih[0, 0], &W_hh[0, 0], &bias[0], pi, pf, po, len_ptr, t, 0, s.H)
        else:
            # a phase per step, chunks of units: step t+1 reads all of h_t
            q.s, q.gates, q.hbuf, q.cbuf, q.tcbuf = s, g, &hbuf[0, 0, 0], &cbuf[0, 0, 0], \
                &tcbuf[0, 0, 0]
            q.x, q.W_ih, q.W_hh, q.bias = xp, &W_ih[0, 0], &W_hh[0, 0], &bias[0]
            q.p_i, q.p_f, q.p_o, q.lengths = pi, pf, po, len_ptr
            q.chunk = unit_chunk(s.H, s.B)
            run_unit_chunks(nt, s.T, s.H, q.chunk, _forward_chunk_f32, _forward_chunk_f64, &q,
                            <floating>0)
        free(<void *>s.packed)


cdef struct SeqJob:
    # one whole-sequence forward or backward, for the pool's chunks: the pointers of
    # lstm_step_units / lstm_backstep_units (gates doubles as dgates, hbuf as dh_carry,
    # cbuf as dc_carry, x as dhs in backward), and the units per chunk
    LSTMShape s
    void *gates
    void *hbuf
    void *cbuf
    void *tcbuf
    const void *x
    const void *W_ih
    const void *W_hh
    const void *bias
    const void *p_i
    const void *p_f
    const void *p_o
    const void *fw_gates
    const void *fw_cbuf
    const void *fw_tcbuf
    const long long *lengths
    int chunk


cdef void _forward_chunk(SeqJob *q, floating dtype_of, int t, int c) noexcept nogil:
    cdef int j0 = c * q.chunk
    lstm_step_units(q.s, <floating *>q.gates, <floating *>q.hbuf, <floating *>q.cbuf,
                    <floating *>q.tcbuf, <const floating *>q.x, <const floating *>q.W_ih,
                    <const floating *>q.W_hh, <const floating *>q.bias,
                    <const floating *>q.p_i, <const floating *>q.p_f, <const floating *>q.p_o,
                    q.lengths, t, j0, min(q.s.H, j0 + q.chunk))


cdef void _forward_chunk_f32(void *ctx, int t, int c) noexcept nogil:
    _forward_chunk(<SeqJob *>ctx, <float>0, t, c)


cdef void _forward_chunk_f64(void *ctx, int t, int c) noexcept nogil:
    _forward_chunk(<SeqJob *>ctx, <double>0, t, c)


cdef void _backward_chunk(SeqJob *q, floating dtype_of, int phase, int c) noexcept nogil:
    # phase p is step T-1-p: backward runs from the last step to the first
    cdef int j0 = c * q.chunk
    lstm_backstep_units(q.s, <floating *>q.gates, <floating *>q.hbuf, <floating *>q.cbuf,
                        <const floating *>q.x, <const floating *>q.fw_gates,
                        <const floating *>q.fw_cbuf, <const floating *>q.fw_tcbuf,
                        <const floating *>q.W_hh, <const floating *>q.p_i,
                        <const floating *>q.p_f, <const floating *>q.p_o, q.lengths,
                        q.s.T - 1 - phase, j0, min(q.s.H, j0 + q.chunk))


cdef void _backward_chunk_f32(void *ctx, int phase, int c) noexcept nogil:
    _backward_chunk(<SeqJob *>ctx, <float>0, phase, c)


cdef void _backward_chunk_f64(void *ctx, int phase, int c) noexcept nogil:
    _backward_chunk(<SeqJob *>ctx, <double>0, phase, c)


cdef void lstm_backstep_units(LSTMShape s, floating *dgates, floating *dh_carry,
                              floating *dc_carry, const floating *dhs,
                              const floating *gates, const floating *cbuf,
                              const floating *tcbuf, const floating *W_hh,
                              const floating *p_i, const floating *p_f, const floating *p_o,
                              const long long *lengths, int t, int j0, int j1) noexcept nogil:
    """Backward step t for units [j0, j1): first the recurrent term of step t+1 into
    dh_carry, then the gate gradients of step t. dh_carry, dc_carry (B, H) hold the
    gradient w.r.t. the state after step t; rows past their length pass it through."""
    cdef int B = s.B, H = s.H, GH = s.GH, n = j1 - j0, b, j
    cdef Py_ssize_t BH = <Py_ssize_t>B * H, row
    cdef const floating *G
    cdef floating *dG
    cdef floating i, f, g, o, cp, cv, tc, dh, dc, do_pre, di_pre, df_pre, dg_pre, dcp
    if n <= 0:
        return
    if t + 1 < s.T:
        # dh_carry[:, j0:j1] += dgates[t+1] (B, GH) @ W_hh[:, j0:j1] (GH, n)
        if floating is float and s.packed != NULL:
            fr_gemm_packed_f32(B, j0, j1, GH, dgates + <Py_ssize_t>(t + 1) * B * GH, GH,
                               s.packed, 1, dh_carry, H)
        else:
            _gemm(NoTrans, NoTrans, B, n, GH, <floating>1, dgates + <Py_ssize_t>(t + 1) * B * GH,
                  GH, W_hh + j0, H, <floating>1, dh_carry + j0, H)
    for b in range(B):
        row = <Py_ssize_t>t * B + b
        G = gates + row * GH
        dG = dgates + row * GH
        if not step_is_valid(lengths, t, b):
            memset(dG + s.off_i + j0, 0, n * sizeof(floating))
            memset(dG + s.off_g + j0, 0, n * sizeof(floating))
            memset(dG + s.off_o + j0, 0, n * sizeof(floating))
            if not s.coupled:
                memset(dG + s.off_f + j0, 0, n * sizeof(floating))
            continue
        for j in range(j0, j1):
            i = G[s.off_i + j]
            g = G[s.off_g + j]
            o = G[s.off_o + j]
            f = (1 - i) if s.coupled else G[s.off_f + j]
            cp = cbuf[row * H + j]            # c_{t-1}
            tc = tcbuf[row * H + j]           # tanh(c_t)
            dh = dh_carry[b * H + j]
            if dhs != NULL:
                dh = dh + dhs[row * H + j]
            do_pre = dh * tc * o * (1 - o)                    # d a_o
            dc = dc_carry[b * H + j] + dh * o * (1 - tc * tc)
            if p_o != NULL:
                dc = dc + do_pre * p_o[j]                     # o looked at c_t
            dg_pre = dc * i * (1 - g * g)                     # d a_g
            dcp = dc * f                                      # through the forget path
            if s.coupled:
                di_pre = dc * (g - cp) * i * (1 - i)          # c = (1-i) c_prev + i g
            else:
                di_pre = dc * g * i * (1 - i)
                df_pre = dc * cp * f * (1 - f)
                dG[s.off_f + j] = df_pre
                if p_f != NULL:
                    dcp = dcp + df_pre * p_f[j]
            if p_i != NULL:
                dcp = dcp + di_pre * p_i[j]
            dG[s.off_i + j] = di_pre
            dG[s.off_g + j] = dg_pre
            dG[s.off_o + j] = do_pre
            dc_carry[b * H + j] = dcp
            dh_carry[b * H + j] = 0          # refilled by the next step's recurrent GEMM


def lstm_backward(floating[:, :, ::1] dx,            # OUT (T, B, I), written when need_dx
                  floating[:, ::1] dh0,               # INOUT (B, H): dh_n in, dh0 out
                  floating[:, ::1] dc0,               # INOUT (B, H): dc_n in, dc0 out
                  floating[:, ::1] dW_ih,             # INOUT (GH, I), accumulated
                  floating[:, ::1] dW_hh,             # INOUT (GH, H), accumulated
                  floating[::1] db,                   # INOUT (GH,), accumulated (= d b_ih = d b_hh)
                  floating[::1] dp_i,                 # INOUT (H,) or None, accumulated
                  floating[::1] dp_f,                 # INOUT (H,) or None, accumulated
                  floating[::1] dp_o,                 # INOUT (H,) or None, accumulated
                  floating[:, :, ::1] dgates,         # OUT (T, B, GH) workspace: d pre-activations
                  const floating[:, :, ::1] dhs,      # IN (T, B, H) or None
                  const floating[:, :, ::1] x,        # IN (T, B, I)
                  const floating[:, :, ::1] gates,    # IN (T, B, GH) from forward
                  const floating[:, :, ::1] hbuf,     # IN (T+1, B, H) from forward
                  const floating[:, :, ::1] cbuf,     # IN (T+1, B, H) from forward
                  const floating[:, :, ::1] tcbuf,    # IN (T, B, H) from forward
                  const floating[:, ::1] W_ih,        # IN (GH, I)
                  const floating[:, ::1] W_hh,        # IN (GH, H)
                  const floating[::1] p_i,            # IN (H,) or None
                  const floating[::1] p_f,            # IN (H,) or None
                  const floating[::1] p_o,            # IN (H,) or None
                  const long long[::1] lengths,       # IN (B,) or None
                  bint coupled, int n_threads, bint need_dx=True):
    cdef LSTMShape s = make_shape(x.shape[0], x.shape[1], x.shape[2], W_hh.shape[1], coupled)
    cdef int t
    cdef SeqJob q
    cdef Py_ssize_t TB = <Py_ssize_t>s.T * s.B, BH = <Py_ssize_t>s.B * s.H
    cdef floating *dG = &dgates[0, 0, 0]
    cdef const floating *dhs_ptr = NULL if dhs is None else &dhs[0, 0, 0]
    cdef const floating *pi = NULL if p_i is None else &p_i[0]
    cdef const floating *pf = NULL if p_f is None else &p_f[0]
    cdef const floating *po = NULL if p_o is None else &p_o[0]
    cdef const long long *len_ptr = NULL if lengths is None else &lengths[0]
    cdef int nt = kernel_threads(n_threads, s.T, s.B, s.I, s.H, s.GH)
    cdef const char *k = b"lstm_backward"
    if need_dx:
        expect_shape(k, b"dx", dx.shape, 3, s.T, s.B, s.I)
    expect_shape(k, b"dh0", dh0.shape, 2, s.B, s.H)
    expect_shape(k, b"dc0", dc0.shape, 2, s.B, s.H)
    expect_shape(k, b"dW_ih", dW_ih.shape, 2, s.GH, s.I)
    expect_shape(k, b"dW_hh", dW_hh.shape, 2, s.GH, s.H)
    expect_shape(k, b"db", db.shape, 1, s.GH)
    expect_shape(k, b"dgates", dgates.shape, 3, s.T, s.B, s.GH)
    if dhs is not None:
        expect_shape(k, b"dhs", dhs.shape, 3, s.T, s.B, s.H)
    check_cache_shapes(k, s, gates.shape, hbuf.shape, cbuf.shape, tcbuf.shape, W_ih.shape,
                       W_hh.shape)
    for name, p in ((b"p_i", p_i), (b"p_f", p_f), (b"p_o", p_o),
                    (b"dp_i", dp_i), (b"dp_f", dp_f), (b"dp_o", dp_o)):
        if p is not None:
            expect_shape(k, name, p.shape, 1, s.H)
    if (p_i is None) != (dp_i is None) or (p_o is None) != (dp_o is None) or \
            (p_f is not None and not coupled and dp_f is None):
        raise ValueError("lstm_backward: each peephole needs its gradient buffer")
    if lengths is not None:
        expect_shape(k, b"lengths", lengths.shape, 1, s.B)
    if s.T == 0 or s.B == 0:
        return
    with nogil:
        if floating is float and s.T > 1 and (nt == 1 or s.H % 16 == 0):
            s.packed = packed_copy(&W_hh[0, 0], s.GH, s.H, True)    # for dgates @ W_hh
        if nt == 1:
            for t in range(s.T - 1, -1, -1):
                lstm_backstep_units(s, dG, &dh0[0, 0], &dc0[0, 0], dhs_ptr, &gates[0, 0, 0],
                                    &cbuf[0, 0, 0], &tcbuf[0, 0, 0], &W_hh[0, 0], pi, pf, po,
                                    len_ptr, t, 0, s.H)
        else:
            # a phase per step, last to first, chunks of units (SeqJob's backward fields)
            q.s, q.gates, q.hbuf, q.cbuf, q.x = s, dG, &dh0[0, 0], &dc0[0, 0], dhs_ptr
            q.fw_gates, q.fw_cbuf, q.fw_tcbuf = &gates[0, 0, 0], &cbuf[0, 0, 0], &tcbuf[0, 0, 0]
            q.W_hh, q.p_i, q.p_f, q.p_o, q.lengths = &W_hh[0, 0], pi, pf, po, len_ptr
            q.chunk = unit_chunk(s.H, s.B)
            run_unit_chunks(nt, s.T, s.H, q.chunk, _backward_chunk_f32, _backward_chunk_f64, &q,
                            <floating>0)
        free(<void *>s.packed)
        # dh0 += dgates[0] @ W_hh
        _gemm_split(NoTrans, NoTrans, s.B, s.H, s.GH, <floating>1, dG, s.GH, &W_hh[0, 0], s.H,
                    <floating>1, &dh0[0, 0], s.H, n_threads, True)
        # dW_ih += dgates.T (GH, T*B) @ x (T*B, I)
        _gemm_split(Trans, NoTrans, s.GH, s.I, s.T * s.B, <floating>1, dG, s.GH, &x[0, 0, 0], s.I,
                    <floating>1, &dW_ih[0, 0], s.I, n_threads, False)
        # dW_hh += dgates.T @ h_prev, h_prev = hbuf[:T] (T*B, H)
        _gemm_split(Trans, NoTrans, s.GH, s.H, s.T * s.B, <floating>1, dG, s.GH, &hbuf[0, 0, 0], s.H,
                    <floating>1, &dW_hh[0, 0], s.H, n_threads, False)
        # dx = dgates @ W_ih  (T*B, GH) @ (GH, I)
        if need_dx:
            _gemm_split(NoTrans, NoTrans, s.T * s.B, s.I, s.GH, <floating>1, dG, s.GH,
                        &W_ih[0, 0], s.I, <floating>0, &dx[0, 0, 0], s.I, n_threads, False)
        # db += dgates.sum(axis=(0, 1))
        colsum_into(&db[0], dG, TB, s.GH, s.GH, n_threads)
        # peepholes: dp_i += (d a_i * c_{t-1}).sum, dp_f likewise, dp_o += (d a_o * c_t).sum
        if pi != NULL:
            coldot_into(&dp_i[0], dG + s.off_i, s.GH, &cbuf[0, 0, 0], TB, s.H, n_threads)
        if pf != NULL and not coupled:
            coldot_into(&dp_f[0], dG + s.off_f, s.GH, &cbuf[0, 0, 0], TB, s.H, n_threads)
        if po != NULL:
            coldot_into(&dp_o[0], dG + s.off_o, s.GH, &cbuf[0, 0, 0] + BH, TB, s.H, n_threads)
