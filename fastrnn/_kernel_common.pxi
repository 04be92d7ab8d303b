# Shared by the cell kernels (_rnn.pyx, _lstm.pyx, _gru.pyx): gate activations for both
# dtypes, and the lengths mask.
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memcpy, memset
from ._blas cimport _gemm, _gemv, _gemm_split, chunk_bounds, NoTrans, Trans

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


cdef inline void fill_rows(floating *out, const floating *row, Py_ssize_t n_rows,
                           int n) noexcept nogil:
    # out (n_rows, n) <- row (n,) broadcast: the bias under the input-projection GEMM
    cdef Py_ssize_t r
    for r in range(n_rows):
        memcpy(out + r * n, row, n * sizeof(floating))


cdef inline void colsum_into(floating *acc, const floating *A, Py_ssize_t n_rows, int n_cols,
                             int lda, int n_threads) noexcept nogil:
    # acc (n_cols,) += A[:, :n_cols].sum(axis=0), A (n_rows, lda); columns split over threads
    cdef int tid, c0, c1, j
    cdef Py_ssize_t r
    for tid in prange(n_threads, schedule='static', num_threads=n_threads):
        chunk_bounds(n_cols, n_threads, tid, 16, &c0, &c1)
        for r in range(n_rows):
            for j in range(c0, c1):
                acc[j] += A[r * lda + j]


cdef inline void coldot_into(floating *acc, const floating *A, int lda, const floating *C,
                             Py_ssize_t n_rows, int n_cols, int n_threads) noexcept nogil:
    # acc (n_cols,) += (A[:, :n_cols] * C).sum(axis=0), A (n_rows, lda), C (n_rows, n_cols)
    cdef int tid, c0, c1, j
    cdef Py_ssize_t r
    for tid in prange(n_threads, schedule='static', num_threads=n_threads):
        chunk_bounds(n_cols, n_threads, tid, 16, &c0, &c1)
        for r in range(n_rows):
            for j in range(c0, c1):
                acc[j] += A[r * lda + j] * C[r * n_cols + j]
