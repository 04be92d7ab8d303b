# Shared by the cell kernels (_rnn.pyx, _lstm.pyx, _gru.pyx): gate activations for both
# dtypes, and the lengths mask.
from cython cimport floating
from cython.parallel cimport prange, parallel, threadid
from libc.string cimport memcpy, memset
from ._blas cimport (_gemm, _gemv, _gemm_split, chunk_start, chunk_stop, step_threads,
                     NoTrans, Trans)

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
    #ifdef _OPENMP
    #include <omp.h>
    #endif
    /* a barrier of the enclosing parallel region (orphaned: legal inside a function
       called from the region); nothing without OpenMP, where there is one thread */
    static inline void fr_omp_barrier(void) {
    #ifdef _OPENMP
        _Pragma("omp barrier")
    #endif
    }
    /* the size of the current team (1 outside a region or without OpenMP) */
    static inline int fr_team_size(void) {
    #ifdef _OPENMP
        return omp_get_num_threads();
    #else
        return 1;
    #endif
    }
    """
    void fr_omp_barrier() noexcept nogil
    int fr_team_size() noexcept nogil


cdef extern from "fastrnn/activations.h" nogil:
    void fr_sigmoid_f32(float *y, const float *x, int n)
    void fr_tanh_f32(float *y, const float *x, int n)
    void fr_sigmoid_f64(double *y, const double *x, int n)
    void fr_tanh_f64(double *y, const double *x, int n)
    int fr_have_avx2_fma()


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


cdef inline void colsum_into(floating *acc, const floating *A, Py_ssize_t n_rows, int n_cols,
                             int lda, int n_threads) noexcept nogil:
    # acc (n_cols,) += A[:, :n_cols].sum(axis=0), A (n_rows, lda); columns split over threads
    cdef int tid, c0, c1, j
    cdef Py_ssize_t r
    for tid in prange(n_threads, schedule='static', num_threads=n_threads):
        c0 = chunk_start(n_cols, n_threads, tid, 16)
        c1 = chunk_stop(n_cols, n_threads, tid, 16)
        for r in range(n_rows):
            for j in range(c0, c1):
                acc[j] += A[r * lda + j]


cdef inline void coldot_into(floating *acc, const floating *A, int lda, const floating *C,
                             Py_ssize_t n_rows, int n_cols, int n_threads) noexcept nogil:
    # acc (n_cols,) += (A[:, :n_cols] * C).sum(axis=0), A (n_rows, lda), C (n_rows, n_cols)
    cdef int tid, c0, c1, j
    cdef Py_ssize_t r
    for tid in prange(n_threads, schedule='static', num_threads=n_threads):
        c0 = chunk_start(n_cols, n_threads, tid, 16)
        c1 = chunk_stop(n_cols, n_threads, tid, 16)
        for r in range(n_rows):
            for j in range(c0, c1):
                acc[j] += A[r * lda + j] * C[r * n_cols + j]


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
    # inside the step and reads only its rows of W_ih
    if T > 1:
        _gemm_split(NoTrans, Trans, T * B, GH, I, <floating>1, x, I, W_ih, I, <floating>0,
                    out, GH, n_threads, False)
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
