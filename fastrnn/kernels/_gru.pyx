# GRU kernels over a whole sequence, both published forms.
#
# T = time steps, B = batch, I = input size, H = hidden size, G = 3 gate blocks in
# PyTorch's order (r, z, n), GH = 3H. Arrays are time-major, C-contiguous:
#   x (T, B, I); gates (T, B, GH): input projection in, post-activation (r, z, n) out;
#   hbuf (T+1, B, H): [0] = h0, [t+1] = state after step t; W_ih (GH, I), W_hh (GH, H).
#
#   r = sigmoid(x W_ir.T + b_ir + h_{t-1} W_hr.T + b_hr)
#   z = sigmoid(x W_iz.T + b_iz + h_{t-1} W_hz.T + b_hz)
#   reset_after (PyTorch, cuDNN, ONNX linear_before_reset=1):
#       n = tanh(x W_in.T + b_in + r * (h_{t-1} W_hn.T + b_hn))     hn (T, B, H) cached
#   reset before (Cho et al. 2014, ONNX default, Keras reset_after=False):
#       n = tanh(x W_in.T + b_in + (r * h_{t-1}) W_hn.T + b_hn)     rh (T, B, H) cached
#   h_t = (1 - z) * n + z * h_{t-1}
#
# Backward (BPTT), t = T-1 .. 0; dh (B, H) is carried in dh0's buffer, which holds dh_n on
# entry; r, z, n post-activation from the forward cache; dgx (T, B, GH) holds the gradients
# w.r.t. the input-side pre-activations [da_r, da_z, da_n]:
#   dh   = dhs[t] + dh_carry                          grad w.r.t. h_t (dh_n at t = T-1), (B, H)
#   da_n = dh * (1 - z) * (1 - n * n)                 grad w.r.t. the candidate pre-activation
#   da_z = dh * (h_{t-1} - n) * z * (1 - z)           grad w.r.t. the update-gate pre-activation
#   reset_after:
#       dghn = da_n * r                               grad w.r.t. hn = h_{t-1} W_hn.T + b_hn
#       da_r = da_n * hn * r * (1 - r)                grad w.r.t. the reset-gate pre-activation
#       dh_carry = dh * z + da_r @ W_hr + da_z @ W_hz + dghn @ W_hn      grad w.r.t. h_{t-1}
#   reset before:
#       drh  = da_n @ W_hn                            grad w.r.t. rh = r * h_{t-1}, (B, H)
#       da_r = drh * h_{t-1} * r * (1 - r)            grad w.r.t. the reset-gate pre-activation
#       dh_carry = dh * z + drh * r + da_r @ W_hr + da_z @ W_hz          grad w.r.t. h_{t-1}
#   dh0         = dh_carry after step 0               grad w.r.t. h0, (B, H)
#   dW_ih      += dgx.T @ x                           (GH, I), one GEMM over all T*B rows
#   db_ih      += dgx.sum(axis=(0, 1))                (GH,)
#   dW_h{r,z}  += dgx[..., r,z].T @ h_prev            (2H, H), h_prev = hbuf[:T] (T*B, H)
#   db_h{r,z}  += dgx[..., r,z].sum(axis=(0, 1))      (2H,)
#   dW_hn      += dghn.T @ h_prev;  db_hn += dghn.sum(axis=(0, 1))       reset_after; dghn (T, B, H)
#   dW_hn      += da_n.T @ rh;      db_hn += da_n.sum(axis=(0, 1))       reset before
#   dx          = dgx @ W_ih                          (T, B, I), only when need_dx
# The @ W_h terms of dh_carry are added at the start of the step before (one GEMM per step
# over all units a thread owns), and for step 0 after the loop. A padding step
# (t >= lengths[b]) has zero gradients at (t, b), ignores dhs[t, b], and passes row b's dh
# through unchanged. Parameter grads accumulate.
#
# bias_x (GH,) is added to the input projection inside the step: b_ih + b_hh for every block
# except, with reset_after, the n block, where b_hn sits inside r * (...).
#
# Parallelism: fastrnn's pool (include/fastrnn/pool.h), chunks of hidden units, a phase
# per step; reset-before needs every r before the n product (and, backward, every d a_n
# before d(rh)): two phases per step. BLAS is single-threaded.
include "_common.pxi"


cdef void gru_rz_units(GRUShape s, floating *gates, const floating *h_prev,
                       const floating *x, const floating *W_ih, const floating *W_hh,
                       int t, int j0, int j1) noexcept nogil:
    """gates[t][:, r and z blocks, j0:j1] += h_prev @ W_h{r,z}[j0:j1].T (pre-activation).
    In a one-step call (x given, else NULL) the input projection of all three blocks is
    done here first, so each thread reads only its own rows of W_ih."""
    cdef floating *a = gates + <Py_ssize_t>t * s.B * s.GH
    if x != NULL:
        gate_blocks_product(a, s.GH, W_ih, x, s.B, s.I, s.H, 3, j0, j1, <floating>0)
    if floating is float and s.packed_rz != NULL:
        if j1 - j0 == s.H:
            fr_gemm_packed_f32(s.B, 0, 2 * s.H, s.H, h_prev, s.H, s.packed_rz, 1, a, s.GH)
        else:                       # chunks of 16-multiples: whole panels (gru_forward)
            fr_gemm_packed_f32(s.B, j0, j1, s.H, h_prev, s.H, s.packed_rz, 1, a, s.GH)
            fr_gemm_packed_f32(s.B, s.H + j0, s.H + j1, s.H, h_prev, s.H, s.packed_rz, 1, a,
                               s.GH)
    else:
        gate_blocks_product(a, s.GH, W_hh, h_prev, s.B, s.H, s.H, 2, j0, j1, <floating>1)


cdef void gru_after_step_units(GRUShape s, floating *gates, floating *hbuf, floating *hn,
                               const floating *x, const floating *W_ih, const floating *W_hh, const floating *bias_x, const floating *b_hn,
                               const long long *lengths, int t, int j0, int j1) noexcept nogil:
    """reset_after forward step t, units [j0, j1)."""
    cdef int B = s.B, H = s.H, GH = s.GH, n = j1 - j0, b, j
    cdef Py_ssize_t BH = <Py_ssize_t>B * H
    cdef const floating *h_prev = hbuf + t * BH
    cdef floating *h = hbuf + (t + 1) * BH
    cdef floating *hn_t = hn + t * BH
    cdef floating *a
    cdef floating *hnb
    if n <= 0:
        return
    gru_rz_units(s, gates, h_prev, x, W_ih, W_hh, t, j0, j1)
    # hn[t][:, j0:j1] = h_prev @ W_hn[j0:j1].T
    if floating is float and s.packed_n != NULL:
        fr_gemm_packed_f32(B, j0, j1, H, h_prev, H, s.packed_n, 0, hn_t, H)
    else:
        gate_blocks_product(hn_t, H, W_hh + <Py_ssize_t>2 * H * H, h_prev, B, H, H, 1, j0, j1,
                            <floating>0)
    for b in range(B):
        if not step_is_valid(lengths, t, b):
            memset(h + b * H + j0, 0, n * sizeof(floating))
            continue
        a = gates + (<Py_ssize_t>t * B + b) * GH
        hnb = hn_t + b * H
        add_block_bias(a, bias_x, H, j0, j1, 3)
        sigmoid_inplace(a + j0, n)            # r
        sigmoid_inplace(a + H + j0, n)        # z
        for j in range(j0, j1):
            hnb[j] += b_hn[j]
            a[2 * H + j] += a[j] * hnb[j]     # a_n + r * (W_hn h + b_hn)
        tanh_into(a + 2 * H + j0, a + 2 * H + j0, n)
        for j in range(j0, j1):
            h[b * H + j] = (1 - a[H + j]) * a[2 * H + j] + a[H + j] * h_prev[b * H + j]


cdef void gru_before_rz_units(GRUShape s, floating *gates, const floating *hbuf, floating *rh,
                              const floating *x, const floating *W_ih, const floating *W_hh, const floating *bias_x,
                              const long long *lengths,
                              int t, int j0, int j1) noexcept nogil:
    """reset-before forward step t, first half: r, z and rh = r * h_prev for units [j0, j1)."""
    cdef int B = s.B, H = s.H, GH = s.GH, n = j1 - j0, b, j
    cdef Py_ssize_t BH = <Py_ssize_t>B * H
    cdef const floating *h_prev = hbuf + t * BH
    cdef floating *rh_t = rh + t * BH
    cdef floating *a
    if n <= 0:
        return
    gru_rz_units(s, gates, h_prev, x, W_ih, W_hh, t, j0, j1)
    for b in range(B):
        if not step_is_valid(lengths, t, b):
            memset(rh_t + b * H + j0, 0, n * sizeof(floating))
            continue
        a = gates + (<Py_ssize_t>t * B + b) * GH
        add_block_bias(a, bias_x, H, j0, j1, 3)
        sigmoid_inplace(a + j0, n)            # r
        sigmoid_inplace(a + H + j0, n)        # z
        for j in range(j0, j1):
            rh_t[b * H + j] = a[j] * h_prev[b * H + j]


cdef void gru_before_n_units(GRUShape s, floating *gates, floating *hbuf, const floating *rh,
                             const floating *W_hh, const long long *lengths,
                             int t, int j0, int j1) noexcept nogil:
    """reset-before forward step t, second half: n and h_t for units [j0, j1)."""
    cdef int B = s.B, H = s.H, GH = s.GH, n = j1 - j0, b, j
    cdef Py_ssize_t BH = <Py_ssize_t>B * H
    cdef const floating *h_prev = hbuf + t * BH
    cdef floating *h = hbuf + (t + 1) * BH
    cdef const floating *rh_t = rh + t * BH
    cdef floating *a = gates + <Py_ssize_t>t * B * GH
    if n <= 0:
        return
    # a[:, n block, j0:j1] += rh[t] @ W_hn[j0:j1].T
    if floating is float and s.packed_n != NULL:
        fr_gemm_packed_f32(B, j0, j1, H, rh_t, H, s.packed_n, 1, a + 2 * H, GH)
    elif B == 1:
        _gemv(NoTrans, n, H, <floating>1, W_hh + <Py_ssize_t>(2 * H + j0) * H, H, rh_t,
              <floating>1, a + 2 * H + j0)
    else:
        _gemm(NoTrans, Trans, B, n, H, <floating>1, rh_t, H, W_hh + <Py_ssize_t>(2 * H + j0) * H,
              H, <floating>1, a + 2 * H + j0, GH)
    for b in range(B):
        if not step_is_valid(lengths, t, b):
            memset(h + b * H + j0, 0, n * sizeof(floating))
            continue
        a = gates + (<Py_ssize_t>t * B + b) * GH
        tanh_into(a + 2 * H + j0, a + 2 * H + j0, n)
        for j in range(j0, j1):
            h[b * H + j] = (1 - a[H + j]) * a[2 * H + j] + a[H + j] * h_prev[b * H + j]


def gru_forward(floating[:, :, ::1] gates,          # OUT (T, B, GH) post-activation r, z, n
                floating[:, :, ::1] hbuf,           # INOUT (T+1, B, H): [0] = h0 in
                floating[:, :, ::1] side,           # OUT (T, B, H): hn (reset_after) or rh (before)
                const floating[:, :, ::1] x,        # IN (T, B, I)
                const floating[:, ::1] W_ih,        # IN (GH, I)
                const floating[:, ::1] W_hh,        # IN (GH, H)
                const floating[::1] bias_x,         # IN (GH,) see module header
                const floating[::1] b_hh,           # IN (GH,)
                const long long[::1] lengths,       # IN (B,) or None
                bint reset_after, int n_threads):
    cdef GRUShape s
    s.T = x.shape[0]; s.B = x.shape[1]; s.I = x.shape[2]; s.H = W_hh.shape[1]; s.GH = 3 * s.H
    s.packed_rz = s.packed_n = NULL
    cdef int t
    cdef SeqJob q
    cdef floating *g = &gates[0, 0, 0]
    cdef floating *hb = &hbuf[0, 0, 0]
    cdef floating *sd = &side[0, 0, 0]
    cdef const floating *Whh = &W_hh[0, 0]
    cdef const floating *Wih = &W_ih[0, 0]
    cdef const floating *xp
    cdef const floating *b_hn = &b_hh[0] + 2 * s.H
    cdef const floating *bx = &bias_x[0]
    cdef const long long *len_ptr = NULL if lengths is None else &lengths[0]
    cdef int nt = kernel_threads(n_threads, s.T, s.B, s.I, s.H, s.GH)
    cdef const char *k = b"gru_forward"
    expect_shape(k, b"gates", gates.shape, 3, s.T, s.B, s.GH)
    expect_shape(k, b"hbuf", hbuf.shape, 3, s.T + 1, s.B, s.H)
    expect_shape(k, b"side", side.shape, 3, s.T, s.B, s.H)
    expect_shape(k, b"W_ih", W_ih.shape, 2, s.GH, s.I)
    expect_shape(k, b"W_hh", W_hh.shape, 2, s.GH, s.H)
    expect_shape(k, b"bias_x", bias_x.shape, 1, s.GH)
    expect_shape(k, b"b_hh", b_hh.shape, 1, s.GH)
    if lengths is not None:
        expect_shape(k, b"lengths", lengths.shape, 1, s.B)
    if s.T == 0 or s.B == 0:
        return
    with nogil:
        # gates = x @ W_ih.T (bias_x added per step, in cache)
        xp = input_projection(g, &x[0, 0, 0], Wih, s.T, s.B, s.I, s.GH, n_threads)
        if floating is float and s.B > 1 and s.T > 1 and (nt == 1 or s.H % 16 == 0):
            # W_hh's blocks packed once for the T recurrent products (batch 1 keeps gemv.h)
            s.packed_rz = packed_copy(Whh, 2 * s.H, s.H, False)
            s.packed_n = packed_copy(Whh + <Py_ssize_t>2 * s.H * s.H, s.H, s.H, False)
        if nt == 1:
            for t in range(s.T):
                if reset_after:
                    gru_after_step_units(s, g, hb, sd, xp, Wih, Whh, bx, b_hn, len_ptr, t, 0, s.H)
                else:
                    gru_before_rz_units(s, g, hb, sd, xp, Wih, Whh, bx, len_ptr, t, 0, s.H)
                    gru_before_n_units(s, g, hb, sd, Whh, len_ptr, t, 0, s.H)
        else:
            # a phase per step (step t+1 reads all of h_t); reset-before two, r and z then n
            # (n reads r * h of every unit)
            q.s, q.gates, q.hbuf, q.side, q.x, q.W_ih, q.W_hh = s, g, hb, sd, xp, Wih, Whh
            q.bias_x, q.b_hn, q.lengths, q.reset_after = bx, b_hn, len_ptr, reset_after
            q.chunk = unit_chunk(s.H, s.B)
            run_unit_chunks(nt, s.T * (1 if reset_after else 2), s.H, q.chunk, _forward_chunk_f32,
                            _forward_chunk_f64, &q, <floating>0)
        free(<void *>s.packed_rz)
        free(<void *>s.packed_n)


cdef struct SeqJob:
    # one whole-sequence forward or backward for the pool's chunks: the pointers of the
    # *_units functions (backward: gates = dgx, side = dside, hbuf = dh_carry, x = dhs,
    # W_ih = drh; fw_* the forward cache), the variant, and the units per chunk
    GRUShape s
    void *gates
    void *hbuf
    void *side
    const void *x
    void *W_ih
    const void *W_hh
    const void *bias_x
    const void *b_hn
    const void *fw_gates
    const void *fw_hbuf
    const void *fw_side
    const long long *lengths
    bint reset_after
    int chunk


cdef void _forward_chunk(SeqJob *q, floating dtype_of, int phase, int c) noexcept nogil:
    cdef int j0 = c * q.chunk, j1 = min(q.s.H, j0 + q.chunk), t
    cdef floating *g = <floating *>q.gates
    cdef floating *hb = <floating *>q.hbuf
    cdef floating *sd = <floating *>q.side
    cdef const floating *xp = <const floating *>q.x
    cdef const floating *Wih = <const floating *>q.W_ih
    cdef const floating *Whh = <const floating *>q.W_hh
    cdef const floating *bx = <const floating *>q.bias_x
    if q.reset_after:
        gru_after_step_units(q.s, g, hb, sd, xp, Wih, Whh, bx, <const floating *>q.b_hn,
                             q.lengths, phase, j0, j1)
        return
    t = phase // 2
    if phase % 2 == 0:
        gru_before_rz_units(q.s, g, hb, sd, xp, Wih, Whh, bx, q.lengths, t, j0, j1)
    else:
        gru_before_n_units(q.s, g, hb, sd, Whh, q.lengths, t, j0, j1)


cdef void _forward_chunk_f32(void *ctx, int phase, int c) noexcept nogil:
    _forward_chunk(<SeqJob *>ctx, <float>0, phase, c)


cdef void _forward_chunk_f64(void *ctx, int phase, int c) noexcept nogil:
    _forward_chunk(<SeqJob *>ctx, <double>0, phase, c)


cdef void _backward_chunk(SeqJob *q, floating dtype_of, int phase, int c) noexcept nogil:
    # steps from the last to the first; reset-before: two phases per step
    cdef int j0 = c * q.chunk, j1 = min(q.s.H, j0 + q.chunk), t
    cdef floating *dG = <floating *>q.gates
    cdef floating *dh = <floating *>q.hbuf
    cdef const floating *dhs = <const floating *>q.x
    cdef const floating *G = <const floating *>q.fw_gates
    cdef const floating *hb = <const floating *>q.fw_hbuf
    cdef const floating *Whh = <const floating *>q.W_hh
    if q.reset_after:
        gru_after_backstep_units(q.s, dG, <floating *>q.side, dh, dhs, G, hb,
                                 <const floating *>q.fw_side, Whh, q.lengths,
                                 q.s.T - 1 - phase, j0, j1)
        return
    t = q.s.T - 1 - phase // 2
    if phase % 2 == 0:
        gru_before_backstep1_units(q.s, dG, dh, dhs, G, hb, Whh, q.lengths, t, j0, j1)
    else:
        gru_before_backstep2_units(q.s, dG, dh, <floating *>q.W_ih, G, hb, Whh, q.lengths, t,
                                   j0, j1)


cdef void _backward_chunk_f32(void *ctx, int phase, int c) noexcept nogil:
    _backward_chunk(<SeqJob *>ctx, <float>0, phase, c)


cdef void _backward_chunk_f64(void *ctx, int phase, int c) noexcept nogil:
    _backward_chunk(<SeqJob *>ctx, <double>0, phase, c)


cdef void gru_carry_rz_units(GRUShape s, floating *dh_carry, const floating *dgx_next,
                             const floating *W_hh, int j0, int j1) noexcept nogil:
    """dh_carry[:, j0:j1] += dgx[t+1][:, r,z blocks] (B, 2H) @ W_h{r,z}[:, j0:j1] (2H, n)."""
    if floating is float and s.packed_rz != NULL:
        fr_gemm_packed_f32(s.B, j0, j1, 2 * s.H, dgx_next, s.GH, s.packed_rz, 1, dh_carry, s.H)
    else:
        _gemm(NoTrans, NoTrans, s.B, j1 - j0, 2 * s.H, <floating>1, dgx_next, s.GH, W_hh + j0,
              s.H, <floating>1, dh_carry + j0, s.H)


cdef void gru_after_backstep_units(GRUShape s, floating *dgx, floating *dghn, floating *dh_carry,
                                   const floating *dhs, const floating *gates,
                                   const floating *hbuf, const floating *hn,
                                   const floating *W_hh, const long long *lengths,
                                   int t, int j0, int j1) noexcept nogil:
    """reset_after backward step t, units [j0, j1). dgx = d pre-activations (r, z, n) on the
    input side; dghn = d (W_hn h + b_hn) = dn_pre * r on the recurrent side."""
    cdef int B = s.B, H = s.H, GH = s.GH, n = j1 - j0, b, j
    cdef Py_ssize_t BH = <Py_ssize_t>B * H, row
    cdef const floating *G
    cdef floating *dG
    cdef floating r, z, nv, hp, dh, dn_pre
    if n <= 0:
        return
    if t + 1 < s.T:
        gru_carry_rz_units(s, dh_carry, dgx + (t + 1) * BH * 3, W_hh, j0, j1)
        # dh_carry[:, j0:j1] += dghn[t+1] @ W_hn[:, j0:j1]
        if floating is float and s.packed_n != NULL:
            fr_gemm_packed_f32(B, j0, j1, H, dghn + (t + 1) * BH, H, s.packed_n, 1, dh_carry, H)
        else:
            _gemm(NoTrans, NoTrans, B, n, H, <floating>1, dghn + (t + 1) * BH, H,
                  W_hh + <Py_ssize_t>2 * H * H + j0, H, <floating>1, dh_carry + j0, H)
    for b in range(B):
        row = <Py_ssize_t>t * B + b
        G = gates + row * GH
        dG = dgx + row * GH
        if not step_is_valid(lengths, t, b):
            memset(dG + j0, 0, n * sizeof(floating))
            memset(dG + H + j0, 0, n * sizeof(floating))
            memset(dG + 2 * H + j0, 0, n * sizeof(floating))
            memset(dghn + row * H + j0, 0, n * sizeof(floating))
            continue
        for j in range(j0, j1):
            r = G[j]
            z = G[H + j]
            nv = G[2 * H + j]
            hp = hbuf[row * H + j]                              # h_{t-1}
            dh = dh_carry[b * H + j]
            if dhs != NULL:
                dh = dh + dhs[row * H + j]
            dn_pre = dh * (1 - z) * (1 - nv * nv)                # d a_n
            dG[2 * H + j] = dn_pre
            dG[H + j] = dh * (hp - nv) * z * (1 - z)             # d a_z
            dG[j] = dn_pre * hn[row * H + j] * r * (1 - r)       # d a_r
            dghn[row * H + j] = dn_pre * r
            dh_carry[b * H + j] = dh * z                         # direct path through z * h_prev


cdef void gru_before_backstep1_units(GRUShape s, floating *dgx, floating *dh_carry,
                                     const floating *dhs, const floating *gates,
                                     const floating *hbuf, const floating *W_hh,
                                     const long long *lengths, int t, int j0, int j1) noexcept nogil:
    """reset-before backward step t, first half: d a_n, d a_z, direct dh for units [j0, j1)."""
    cdef int B = s.B, H = s.H, GH = s.GH, n = j1 - j0, b, j
    cdef Py_ssize_t BH = <Py_ssize_t>B * H, row
    cdef const floating *G
    cdef floating *dG
    cdef floating z, nv, hp, dh
    if n <= 0:
        return
    if t + 1 < s.T:
        gru_carry_rz_units(s, dh_carry, dgx + (t + 1) * BH * 3, W_hh, j0, j1)
    for b in range(B):
        row = <Py_ssize_t>t * B + b
        G = gates + row * GH
        dG = dgx + row * GH
        if not step_is_valid(lengths, t, b):
            memset(dG + H + j0, 0, n * sizeof(floating))
            memset(dG + 2 * H + j0, 0, n * sizeof(floating))
            continue
        for j in range(j0, j1):
            z = G[H + j]
            nv = G[2 * H + j]
            hp = hbuf[row * H + j]
            dh = dh_carry[b * H + j]
            if dhs != NULL:
                dh = dh + dhs[row * H + j]
            dG[2 * H + j] = dh * (1 - z) * (1 - nv * nv)         # d a_n
            dG[H + j] = dh * (hp - nv) * z * (1 - z)             # d a_z
            dh_carry[b * H + j] = dh * z


cdef void gru_before_backstep2_units(GRUShape s, floating *dgx, floating *dh_carry,
                                     floating *drh, const floating *gates, const floating *hbuf,
                                     const floating *W_hh, const long long *lengths,
                                     int t, int j0, int j1) noexcept nogil:
    """reset-before backward step t, second half: d(rh) = d a_n @ W_hn, then d a_r."""
    cdef int B = s.B, H = s.H, GH = s.GH, n = j1 - j0, b, j
    cdef Py_ssize_t BH = <Py_ssize_t>B * H, row
    cdef const floating *G
    cdef floating *dG
    cdef floating r
    if n <= 0:
        return
    # drh[:, j0:j1] = dgx[t][:, n block] (B, H) @ W_hn[:, j0:j1] (H, n)
    if floating is float and s.packed_n != NULL:
        fr_gemm_packed_f32(B, j0, j1, H, dgx + t * BH * 3 + 2 * H, GH, s.packed_n, 0, drh, H)
    else:
        _gemm(NoTrans, NoTrans, B, n, H, <floating>1, dgx + t * BH * 3 + 2 * H, GH,
              W_hh + <Py_ssize_t>2 * H * H + j0, H, <floating>0, drh + j0, H)
    for b in range(B):
        row = <Py_ssize_t>t * B + b
        G = gates + row * GH
        dG = dgx + row * GH
        if not step_is_valid(lengths, t, b):
            memset(dG + j0, 0, n * sizeof(floating))
            continue
        for j in range(j0, j1):
            r = G[j]
            dG[j] = drh[b * H + j] * hbuf[row * H + j] * r * (1 - r)   # d a_r
            dh_carry[b * H + j] += drh[b * H + j] * r                 # through r * h_prev


def gru_backward(floating[:, :, ::1] dx,            # OUT (T, B, I), written when need_dx
                 floating[:, ::1] dh0,               # INOUT (B, H): dh_n in, dh0 out
                 floating[:, ::1] dW_ih,             # INOUT (GH, I), accumulated
                 floating[:, ::1] dW_hh,             # INOUT (GH, H), accumulated
                 floating[::1] db_ih,                # INOUT (GH,), accumulated
                 floating[::1] db_hh,                # INOUT (GH,), accumulated
                 floating[:, :, ::1] dgx,            # OUT (T, B, GH) workspace
                 floating[:, :, ::1] dside,          # OUT (T, B, H) workspace: dghn (after) / unused
                 floating[:, ::1] drh,               # OUT (B, H) workspace (reset-before)
                 const floating[:, :, ::1] dhs,      # IN (T, B, H) or None
                 const floating[:, :, ::1] x,        # IN (T, B, I)
                 const floating[:, :, ::1] gates,    # IN (T, B, GH) from forward
                 const floating[:, :, ::1] hbuf,     # IN (T+1, B, H) from forward
                 const floating[:, :, ::1] side,     # IN (T, B, H) hn or rh from forward
                 const floating[:, ::1] W_ih,        # IN (GH, I)
                 const floating[:, ::1] W_hh,        # IN (GH, H)
                 const long long[::1] lengths,       # IN (B,) or None
                 bint reset_after, int n_threads, bint need_dx=True):
    cdef GRUShape s
    s.T = x.shape[0]; s.B = x.shape[1]; s.I = x.shape[2]; s.H = W_hh.shape[1]; s.GH = 3 * s.H
    s.packed_rz = s.packed_n = NULL
    cdef int t, H = s.H
    cdef SeqJob q
    cdef Py_ssize_t TB = <Py_ssize_t>s.T * s.B
    cdef floating *dG = &dgx[0, 0, 0]
    cdef floating *dS = &dside[0, 0, 0]
    cdef const floating *Whh = &W_hh[0, 0]
    cdef const floating *dhs_ptr = NULL if dhs is None else &dhs[0, 0, 0]
    cdef const long long *len_ptr = NULL if lengths is None else &lengths[0]
    cdef int nt = kernel_threads(n_threads, s.T, s.B, s.I, s.H, s.GH)
    cdef const char *k = b"gru_backward"
    if need_dx:
        expect_shape(k, b"dx", dx.shape, 3, s.T, s.B, s.I)
    expect_shape(k, b"dh0", dh0.shape, 2, s.B, s.H)
    expect_shape(k, b"dW_ih", dW_ih.shape, 2, s.GH, s.I)
    expect_shape(k, b"dW_hh", dW_hh.shape, 2, s.GH, s.H)
    expect_shape(k, b"db_ih", db_ih.shape, 1, s.GH)
    expect_shape(k, b"db_hh", db_hh.shape, 1, s.GH)
    expect_shape(k, b"dgx", dgx.shape, 3, s.T, s.B, s.GH)
    if reset_after:
        expect_shape(k, b"dside", dside.shape, 3, s.T, s.B, s.H)
    expect_shape(k, b"drh", drh.shape, 2, s.B, s.H)
    if dhs is not None:
        expect_shape(k, b"dhs", dhs.shape, 3, s.T, s.B, s.H)
    expect_shape(k, b"gates", gates.shape, 3, s.T, s.B, s.GH)
    expect_shape(k, b"hbuf", hbuf.shape, 3, s.T + 1, s.B, s.H)
    expect_shape(k, b"side", side.shape, 3, s.T, s.B, s.H)
    expect_shape(k, b"W_ih", W_ih.shape, 2, s.GH, s.I)
    expect_shape(k, b"W_hh", W_hh.shape, 2, s.GH, s.H)
    if lengths is not None:
        expect_shape(k, b"lengths", lengths.shape, 1, s.B)
    if s.T == 0 or s.B == 0:
        return
    with nogil:
        if floating is float and s.T > 1 and (nt == 1 or s.H % 16 == 0):
            # for dgx @ W_h{r,z} and d(W_hn h) @ W_hn
            s.packed_rz = packed_copy(Whh, 2 * H, H, True)
            s.packed_n = packed_copy(Whh + <Py_ssize_t>2 * H * H, H, H, True)
        if nt == 1:
            for t in range(s.T - 1, -1, -1):
                if reset_after:
                    gru_after_backstep_units(s, dG, dS, &dh0[0, 0], dhs_ptr, &gates[0, 0, 0],
                                             &hbuf[0, 0, 0], &side[0, 0, 0], Whh, len_ptr, t, 0, H)
                else:
                    gru_before_backstep1_units(s, dG, &dh0[0, 0], dhs_ptr, &gates[0, 0, 0],
                                               &hbuf[0, 0, 0], Whh, len_ptr, t, 0, H)
                    gru_before_backstep2_units(s, dG, &dh0[0, 0], &drh[0, 0], &gates[0, 0, 0],
                                               &hbuf[0, 0, 0], Whh, len_ptr, t, 0, H)
        else:
            # a phase per step, last to first (reset-before: two, d a_n before d(rh))
            q.s, q.gates, q.side, q.hbuf, q.x, q.W_ih = s, dG, dS, &dh0[0, 0], dhs_ptr, &drh[0, 0]
            q.fw_gates, q.fw_hbuf, q.fw_side = &gates[0, 0, 0], &hbuf[0, 0, 0], &side[0, 0, 0]
            q.W_hh, q.lengths, q.reset_after = Whh, len_ptr, reset_after
            q.chunk = unit_chunk(s.H, s.B)
            run_unit_chunks(nt, s.T * (1 if reset_after else 2), s.H, q.chunk,
                            _backward_chunk_f32, _backward_chunk_f64, &q, <floating>0)
        free(<void *>s.packed_rz)
        free(<void *>s.packed_n)
        # dh0 += dgx[0][:, r,z] @ W_h{r,z}  (+ dghn[0] @ W_hn with reset_after)
        _gemm_split(NoTrans, NoTrans, s.B, H, 2 * H, <floating>1, dG, s.GH, Whh, H,
                    <floating>1, &dh0[0, 0], H, n_threads, True)
        if reset_after:
            _gemm_split(NoTrans, NoTrans, s.B, H, H, <floating>1, dS, H, Whh + 2 * H * H, H,
                        <floating>1, &dh0[0, 0], H, n_threads, True)
        # dW_ih += dgx.T @ x;  dx = dgx @ W_ih;  db_ih += dgx.sum(0)
        _gemm_split(Trans, NoTrans, s.GH, s.I, s.T * s.B, <floating>1, dG, s.GH, &x[0, 0, 0], s.I,
                    <floating>1, &dW_ih[0, 0], s.I, n_threads, False)
        if need_dx:
            _gemm_split(NoTrans, NoTrans, s.T * s.B, s.I, s.GH, <floating>1, dG, s.GH,
                        &W_ih[0, 0], s.I, <floating>0, &dx[0, 0, 0], s.I, n_threads, False)
        colsum_into(&db_ih[0], dG, TB, s.GH, s.GH, n_threads)
        # dW_hh[r,z] += dgx[:, r,z].T @ h_prev;  db_hh[r,z] += dgx[:, r,z].sum(0)
        _gemm_split(Trans, NoTrans, 2 * H, H, s.T * s.B, <floating>1, dG, s.GH, &hbuf[0, 0, 0], H,
                    <floating>1, &dW_hh[0, 0], H, n_threads, False)
        colsum_into(&db_hh[0], dG, TB, 2 * H, s.GH, n_threads)
        if reset_after:
            # dW_hn += dghn.T @ h_prev;  db_hn += dghn.sum(0)
            _gemm_split(Trans, NoTrans, H, H, s.T * s.B, <floating>1, dS, H, &hbuf[0, 0, 0], H,
                        <floating>1, &dW_hh[2 * H, 0], H, n_threads, False)
            colsum_into(&db_hh[2 * H], dS, TB, H, H, n_threads)
        else:
            # dW_hn += d a_n.T @ rh;  db_hn += d a_n.sum(0)
            _gemm_split(Trans, NoTrans, H, H, s.T * s.B, <floating>1, dG + 2 * H, s.GH,
                        &side[0, 0, 0], H, <floating>1, &dW_hh[2 * H, 0], H, n_threads, False)
            colsum_into(&db_hh[2 * H], dG + 2 * H, TB, H, s.GH, n_threads)
