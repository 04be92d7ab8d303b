# Shared by the cell kernels (_rnn.pyx, _lstm.pyx, _gru.pyx): gate activations for both
# dtypes, and the lengths mask.
from cython cimport floating
from libc.string cimport memcpy, memset
from ._blas cimport (_gemm, _gemv, _gemm_split, chunk_start, chunk_stop, step_threads,
                     NoTrans, Trans, chunk_fn, pool_run, unit_chunk)

# work figure that always passes step_threads' threshold: a whole sequence (or its backward)
# keeps the threads hot from one step to the next
cdef long long WHOLE_SEQUENCE = 1LL << 62


cdef inline int kernel_threads(int n_threads, int T, int B, int I, int H, int GH) noexcept nogil:
    # one thread for a small one-step call (waking a second costs more than it saves: its
    # work is the input and recurrent products of one step); a whole sequence always splits
    return step_threads(n_threads, H, <long long>B * GH * (H + I) if T == 1 else WHOLE_SEQUENCE)

cdef extern from *:
    """
    /* numpy's headers pull in complex.h, whose macro I would rename the shape fields */
    #ifdef I
    #undef I
    #endif
    """


cdef inline int n_chunks_of(int H, int chunk) noexcept nogil:
    # chunks of `chunk` units (unit_chunk) covering H units
    return (H + chunk - 1) // chunk


cdef inline void run_unit_chunks(int n_threads, int n_phases, int H, int chunk,
                                 chunk_fn for_f32, chunk_fn for_f64, void *job,
                                 floating dtype_of) noexcept nogil:
    # a kernel's pool job: n_phases phases of H units in chunks, by the chunk function of
    # the kernel's dtype (pass <floating>0 as dtype_of)
    if floating is float:
        pool_run(n_threads, n_phases, n_chunks_of(H, chunk), for_f32, job)
    else:
        pool_run(n_threads, n_phases, n_chunks_of(H, chunk), for_f64, job)


cdef extern from "fastrnn/activations.h" nogil:
    void fr_sigmoid_f32(float *y, const float *x, int n)
    void fr_tanh_f32(float *y, const float *x, int n)
    void fr_sigmoid_f64(double *y, const double *x, int n)
    void fr_tanh_f64(double *y, const double *x, int n)
    int fr_have_avx2_fma()


cdef extern from "fastrnn/gemm.h" nogil:
    size_t fr_packed_size(int n, int k)
    void fr_pack_nt_f32(int n, int k, const float *W, int ldw, float *P)
    void fr_pack_tn_f32(int n, int k, const float *W, int ldw, float *P)
    void fr_gemm_packed_f32(int m, int c0, int c1, int k, const float *A, int lda,
                            const float *P, int accumulate, float *C, int ldc)
    int fr_packed_path()

from libc.stdlib cimport free
from posix.stdlib cimport posix_memalign


cdef inline float *packed_copy(const float *W, int rows, int cols, bint transposed) noexcept nogil:
    # W (rows, cols) row-major packed for fr_gemm_packed_f32: as the product's W^T
    # (transposed=False: C = A @ W.T, n = rows) or as W itself (transposed=True: C = A @ W,
    # n = cols); NULL when the packed path does not run here or memory is short (the
    # caller then keeps BLAS). Free with free().
    cdef void *P = NULL
    cdef int n = cols if transposed else rows, k = rows if transposed else cols
    if not fr_packed_path() or posix_memalign(&P, 64, fr_packed_size(n, k) * sizeof(float)) != 0:
        return NULL
    if transposed:
        fr_pack_tn_f32(n, k, W, cols, <float *>P)
    else:
        fr_pack_nt_f32(n, k, W, cols, <float *>P)
    return <float *>P


cdef inline void sigmoid_inplace(floating *y, int n) noexcept nogil:
    # y (n,) <- 1 / (1 + exp(-y))
    if floating is float:
        fr_sigmoid_f32(y, y, n)
    else:
        fr_sigmoid_f64(y, y, n)


cdef inline void tanh_into(floating *y, const floating *x, int n) noexcept nogil:
    # y (n,) <- tanh(x)
    if floating is float:
        fr_tanh_f32(y, x, n)
    else:
        fr_tanh_f64(y, x, n)


cdef inline bint step_is_valid(const long long *lengths, int t, int b) noexcept nogil:
    # a step past a sequence's length is padding: state held, output zero
    return lengths == NULL or t < lengths[b]


cdef inline void add_block_bias(floating *a, const floating *bias, int H, int j0, int j1,
                                int n_blocks) noexcept nogil:
    # a[k*H + j] += bias[k*H + j] for gate blocks k < n_blocks and units j in [j0, j1)
    cdef int k, j
    for k in range(n_blocks):
        for j in range(k * H + j0, k * H + j1):
            a[j] += bias[j]


cdef struct ColumnJob:
    # acc (n_cols,) += column sums of A (n_rows, lda)[:, :n_cols], times C (n_rows, n_cols)
    # elementwise when C is not NULL; columns in blocks of 64
    void *acc
    const void *A
    const void *C
    Py_ssize_t n_rows
    int n_cols, lda


cdef void _column_block(ColumnJob *q, floating dtype_of, int block) noexcept nogil:
    cdef floating *acc = <floating *>q.acc
    cdef const floating *A = <const floating *>q.A
    cdef const floating *C = <const floating *>q.C
    cdef int j, c0 = block * 64, c1 = min(q.n_cols, c0 + 64)
    cdef Py_ssize_t r
    for r in range(q.n_rows):
        if C == NULL:
            for j in range(c0, c1):
                acc[j] += A[r * q.lda + j]
        else:
            for j in range(c0, c1):
                acc[j] += A[r * q.lda + j] * C[r * q.n_cols + j]


cdef void _column_chunk_f32(void *ctx, int phase, int chunk) noexcept nogil:
    _column_block(<ColumnJob *>ctx, <float>0, chunk)


cdef void _column_chunk_f64(void *ctx, int phase, int chunk) noexcept nogil:
    _column_block(<ColumnJob *>ctx, <double>0, chunk)


cdef inline void _column_sums(floating *acc, const floating *A, int lda, const floating *C,
                              Py_ssize_t n_rows, int n_cols, int n_threads) noexcept nogil:
    cdef ColumnJob q
    q.acc, q.A, q.C, q.n_rows, q.n_cols, q.lda = acc, A, C, n_rows, n_cols, lda
    if floating is float:
        pool_run(n_threads, 1, n_chunks_of(n_cols, 64), _column_chunk_f32, &q)
    else:
        pool_run(n_threads, 1, n_chunks_of(n_cols, 64), _column_chunk_f64, &q)


cdef inline void colsum_into(floating *acc, const floating *A, Py_ssize_t n_rows, int n_cols,
                             int lda, int n_threads) noexcept nogil:
    # acc (n_cols,) += A[:, :n_cols].sum(axis=0), A (n_rows, lda); column blocks on the pool
    _column_sums(acc, A, lda, <const floating *>NULL, n_rows, n_cols, n_threads)


cdef inline void coldot_into(floating *acc, const floating *A, int lda, const floating *C,
                             Py_ssize_t n_rows, int n_cols, int n_threads) noexcept nogil:
    # acc (n_cols,) += (A[:, :n_cols] * C).sum(axis=0), A (n_rows, lda), C (n_rows, n_cols)
    _column_sums(acc, A, lda, C, n_rows, n_cols, n_threads)


cdef inline void gate_blocks_product(floating *a, int lda, const floating *W, const floating *v,
                                     int B, int K, int H, int n_blocks, int j0, int j1,
                                     floating beta) noexcept nogil:
    # for each gate block k < n_blocks, units [j0, j1):
    #   a[:, k*H + j0 : k*H + j1] = v (B, K) @ W[k*H + j0 : k*H + j1].T + beta * a[...]
    # W (n_blocks*H, K) row-major, a (B, lda). One BLAS call when the range is all units.
    cdef int k, n = j1 - j0
    if n == H:
        if B == 1:
            _gemv(NoTrans, n_blocks * H, K, <floating>1, W, K, v, beta, a)
        else:
            _gemm(NoTrans, Trans, B, n_blocks * H, K, <floating>1, v, K, W, K, beta, a, lda)
        return
    for k in range(n_blocks):
        if B == 1:
            _gemv(NoTrans, n, K, <floating>1, W + <Py_ssize_t>(k * H + j0) * K, K, v, beta,
                  a + k * H + j0)
        else:
            _gemm(NoTrans, Trans, B, n, K, <floating>1, v, K, W + <Py_ssize_t>(k * H + j0) * K,
                  K, beta, a + k * H + j0, lda)


cdef inline const floating *input_projection(floating *out, const floating *x,
                                             const floating *W_ih, int T, int B, int I, int GH,
                                             int n_threads) noexcept nogil:
    # out (T*B, GH) = x (T*B, I) @ W_ih.T, one GEMM for all steps, and return NULL; a
    # one-step call (T == 1) returns x instead, so each thread projects its own units
    # inside the step and reads only its rows of W_ih. Split by columns of out: each block
    # packs only its rows of W_ih (split by rows, every block packed all of W_ih)
    if T > 1:
        _gemm_split(NoTrans, Trans, T * B, GH, I, <floating>1, x, I, W_ih, I, <floating>0,
                    out, GH, n_threads, True)
        return NULL
    return x


cdef inline int expect_shape(const char *kernel, const char *name, Py_ssize_t *shape, int ndim,
                             Py_ssize_t d0, Py_ssize_t d1=-1, Py_ssize_t d2=-1) except -1:
    # The def kernels take raw buffers and index them unchecked (boundscheck is off), so each
    # checks every buffer's shape against the sizes it derives, once, before entering nogil:
    # the Python layer validates user input, this makes the kernels safe to call directly.
    cdef Py_ssize_t want[3]
    want[0] = d0; want[1] = d1; want[2] = d2
    cdef int k
    for k in range(ndim):
        if shape[k] != want[k]:
            raise ValueError(f"{kernel.decode()}: {name.decode()} has shape "
                             f"{tuple(shape[i] for i in range(ndim))}, expected "
                             f"{tuple(want[i] for i in range(ndim))}")
    return 0
