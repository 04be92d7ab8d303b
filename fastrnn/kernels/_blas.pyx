"""Row-major GEMM/GEMV over scipy's BLAS, plus a GEMM split across OpenMP threads.

Why scipy.linalg.cython_blas: it is a well-kept OpenBLAS that arrives with a wheel, so
nothing is linked at build time and no headers are needed. Row-major is handled by
swapping operands (C^T = B^T A^T), as scikit-learn's _cython_blas does.

Threads: the kernels call BLAS only with BLAS limited to one thread (the Python layer
does that with threadpoolctl) and parallelise themselves with OpenMP, so BLAS's own
pthread pool never runs inside, or next to, an OpenMP region.
"""
from cython.parallel cimport prange
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv

cdef extern from "fastrnn/gemv.h" nogil:
    void fr_gemv_f32(int m, int k, const float *A, int lda, const float *x, float beta,
                     float *y)
    int fr_have_avx2_fma()
    int fr_have_avx512()


def vector_path():
    """Which code the float32 kernels run here (batch-1 products and gate activations):
    "avx512", "avx2", or "plain" (no AVX2/FMA, or FASTRNN_SIMD=0)."""
    if fr_have_avx512():
        return "avx512"
    return "avx2" if fr_have_avx2_fma() else "plain"


cdef void _gemm(BLAS_Trans ta, BLAS_Trans tb, int m, int n, int k,
                floating alpha, const floating *A, int lda,
                const floating *B, int ldb,
                floating beta, floating *C, int ldc) noexcept nogil:
    """C (m, n) = alpha * op(A) (m, k) @ op(B) (k, n) + beta * C, all row-major."""
    cdef char ta_ = ta
    cdef char tb_ = tb
    # column-major view: C^T (n, m) = op(B)^T (n, k) @ op(A)^T (k, m)
    if floating is float:
        sgemm(&tb_, &ta_, &n, &m, &k, &alpha, <float *>B, &ldb, <float *>A, &lda,
              &beta, C, &ldc)
    else:
        dgemm(&tb_, &ta_, &n, &m, &k, &alpha, <double *>B, &ldb, <double *>A, &lda,
              &beta, C, &ldc)


cdef void _gemv(BLAS_Trans ta, int m, int n, floating alpha,
                const floating *A, int lda, const floating *x,
                floating beta, floating *y) noexcept nogil:
    """y = alpha * op(A) @ x + beta * y, A row-major (m, n), unit strides.

    float32 A @ x (the batch-1 step products) runs fastrnn's own kernel (gemv.h): at the
    sizes a step has, a BLAS call costs as much as the arithmetic."""
    if floating is float and ta == NoTrans and alpha == 1:
        fr_gemv_f32(m, n, A, lda, x, beta, y)
        return
    # a row-major (m, n) A is a column-major (n, m) A^T: flip the transpose flag
    cdef char t_ = b't' if ta == NoTrans else b'n'
    cdef int one = 1
    if floating is float:
        sgemv(&t_, &n, &m, &alpha, <float *>A, &lda, <float *>x, &one, &beta, y, &one)
    else:
        dgemv(&t_, &n, &m, &alpha, <double *>A, &lda, <double *>x, &one, &beta, y, &one)


cdef inline int _chunk_size(int n, int n_chunks, int align) noexcept nogil:
    cdef int per = (n + n_chunks - 1) // n_chunks
    return ((per + align - 1) // align) * align


cdef int chunk_start(int n, int n_chunks, int chunk, int align) noexcept nogil:
    return min(n, chunk * _chunk_size(n, n_chunks, align))


cdef int chunk_stop(int n, int n_chunks, int chunk, int align) noexcept nogil:
    return min(n, (chunk + 1) * _chunk_size(n, n_chunks, align))


cdef void _gemm_split(BLAS_Trans ta, BLAS_Trans tb, int m, int n, int k,
                      floating alpha, const floating *A, int lda,
                      const floating *B, int ldb,
                      floating beta, floating *C, int ldc,
                      int n_threads, bint split_cols) noexcept nogil:
    """_gemm with C's rows (or columns) split across n_threads OpenMP threads, each
    calling single-threaded BLAS on its block. Must not be called inside prange."""
    cdef int tid, lo, hi
    if n_threads <= 1:
        _gemm(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)
        return
    for tid in prange(n_threads, schedule='static', num_threads=n_threads):
        if split_cols:
            lo = chunk_start(n, n_threads, tid, 16)
            hi = chunk_stop(n, n_threads, tid, 16)
            if hi > lo:
                # C[:, lo:hi] = op(A) @ op(B)[:, lo:hi]
                _gemm(ta, tb, m, hi - lo, k, alpha, A, lda,
                      B + (lo if tb == NoTrans else <Py_ssize_t>lo * ldb), ldb,
                      beta, C + lo, ldc)
        else:
            lo = chunk_start(m, n_threads, tid, 4)
            hi = chunk_stop(m, n_threads, tid, 4)
            if hi > lo:
                # C[lo:hi] = op(A)[lo:hi] @ op(B)
                _gemm(ta, tb, hi - lo, n, k, alpha,
                      A + (<Py_ssize_t>lo * lda if ta == NoTrans else lo), lda,
                      B, ldb, beta, C + <Py_ssize_t>lo * ldc, ldc)


def _gemm_memview(BLAS_Trans ta, BLAS_Trans tb, double alpha,
                  const floating[:, ::1] A, const floating[:, ::1] B,
                  double beta, floating[:, ::1] C, int n_threads=1, bint split_cols=False):
    """Test hook: C = alpha * op(A) @ op(B) + beta * C on C-contiguous 2-D arrays
    (alpha, beta are taken in C's dtype)."""
    cdef int m = C.shape[0], n = C.shape[1]
    cdef int k = A.shape[1] if ta == NoTrans else A.shape[0]
    with nogil:
        _gemm_split(ta, tb, m, n, k, <floating>alpha, &A[0, 0], A.shape[1], &B[0, 0], B.shape[1],
                    <floating>beta, &C[0, 0], C.shape[1], n_threads, split_cols)


def _gemv_memview(BLAS_Trans ta, double alpha, const floating[:, ::1] A,
                  const floating[::1] x, double beta, floating[::1] y):
    """Test hook: y = alpha * op(A) @ x + beta * y."""
    with nogil:
        _gemv(ta, A.shape[0], A.shape[1], <floating>alpha, &A[0, 0], A.shape[1], &x[0],
              <floating>beta, &y[0])


# Python names for the enum values (the C names NoTrans/Trans shadow plain assignments)
globals().update(NoTrans=BLAS_Trans.NoTrans, Trans=BLAS_Trans.Trans)


# ---- BLAS held at one thread while a kernel runs, at C speed ------------------------
# The OpenMP kernels call BLAS from inside parallel regions, so scipy's OpenBLAS must run
# single-threaded meanwhile (see fastrnn/kernels/_threads.py). threadpoolctl does that through
# Python properties (~2 us a call); with the library's own get/set functions registered
# here it costs a few hundred ns, which matters for one-step streaming calls. Callers hold
# the GIL, which serialises enter/exit across Python threads.
from libc.stdint cimport uintptr_t

ctypedef int (*blas_get_threads_t)() noexcept nogil
ctypedef void (*blas_set_threads_t)(int) noexcept nogil
cdef blas_get_threads_t _blas_get_threads = NULL
cdef blas_set_threads_t _blas_set_threads = NULL
cdef int _serial_depth = 0
cdef int _saved_threads = 1


def register_thread_control(uintptr_t get_addr, uintptr_t set_addr):
    """Addresses of the BLAS's ``openblas_get_num_threads`` / ``openblas_set_num_threads``."""
    global _blas_get_threads, _blas_set_threads
    _blas_get_threads = <blas_get_threads_t>get_addr
    _blas_set_threads = <blas_set_threads_t>set_addr


def serial_enter():
    """Enter a region where the registered BLAS runs on one thread (nests)."""
    global _serial_depth, _saved_threads
    if _serial_depth == 0 and _blas_get_threads != NULL:
        _saved_threads = _blas_get_threads()
        if _saved_threads != 1:
            _blas_set_threads(1)
    _serial_depth += 1


def serial_exit():
    """Leave it; the outermost exit restores the thread count found on entry."""
    global _serial_depth
    if _serial_depth <= 0:
        raise RuntimeError("serial_exit without a matching serial_enter")
    _serial_depth -= 1
    if _serial_depth == 0 and _blas_get_threads != NULL and _saved_threads != 1:
        _blas_set_threads(_saved_threads)


# Below this many multiply-adds, a one-step call (streaming) runs on one thread: measured
# with fastrnn.LSTM.step at batch 1, 2 threads lost at H=64 and 128 (0.13 and 0.26 M) and
# won from H=256 (0.52 M) on. Whole sequences always split (their threads stay hot between
# steps: LSTM B=1 H=128, 0.50 ms on 1 thread, 0.42 ms on 2).
cdef long long _min_parallel_work = 400000


cdef int step_threads(int n_threads, int H, long long work) noexcept nogil:
    if work < _min_parallel_work:
        return 1
    return max(1, min(n_threads, (H + 7) // 8))


def set_min_parallel_work(long long work):
    """Set the per-step multiply-add count below which kernels use one thread (tests set 0
    so that every threaded path runs on small sizes); returns the previous value."""
    global _min_parallel_work
    previous = _min_parallel_work
    _min_parallel_work = work
    return previous
