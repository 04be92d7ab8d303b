"""Row-major GEMM/GEMV over scipy's BLAS, fastrnn's thread pool, and a GEMM split over it.

Why scipy.linalg.cython_blas: it is a well-kept OpenBLAS that arrives with a wheel, so
nothing is linked at build time and no headers are needed. Row-major is handled by
swapping operands (C^T = B^T A^T), as scikit-learn's _cython_blas does.

Threads: the kernels call BLAS only with BLAS limited to one thread (the Python layer
does that with threadpoolctl) and parallelise themselves with fastrnn's pool
(include/fastrnn/pool.h, kept in this module), so BLAS's own pthread pool never runs
inside, or next to, a kernel's work.
"""
from libc.stdlib cimport free
from posix.stdlib cimport posix_memalign
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv

cdef extern from "fastrnn/pool.h" nogil:
    ctypedef void (*fr_chunk_fn)(void *ctx, int phase, int chunk) noexcept nogil
    int fr_pool_run(int n_threads, int n_phases, int n_chunks, fr_chunk_fn fn, void *ctx)
    void fr_pool_take_counts(long long *counts, int n)

cdef extern from "fastrnn/gemm.h" nogil:
    size_t fr_packed_size(int n, int k)
    void fr_pack_nt_f32(int n, int k, const float *W, int ldw, float *P)
    void fr_pack_tn_f32(int n, int k, const float *W, int ldw, float *P)
    void fr_gemm_packed_f32(int m, int c0, int c1, int k, const float *A, int lda,
                            const float *P, int accumulate, float *C, int ldc)
    int fr_packed_path()

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


cdef int pool_run(int n_threads, int n_phases, int n_chunks, chunk_fn fn, void *ctx) noexcept nogil:
    return fr_pool_run(n_threads, n_phases, n_chunks, <fr_chunk_fn>fn, ctx)


def pool_counts(int n=2):
    """Chunks of pool jobs run by the calling threads ([0]) and by workers 1 .. n-1 since the
    last call, as a list; the counts restart from zero. Chunks of jobs that ran on their
    caller alone (one thread) are not counted. How a test sees who did the work."""
    cdef long long counts[256]
    n = max(1, min(n, 256))
    fr_pool_take_counts(counts, n)
    return [counts[i] for i in range(n)]


cdef int unit_chunk(int H, int B) noexcept nogil:
    # batch 1: H/8, at least 16 units (the products are gemv.h's, a call costs little);
    # larger batches: H/4, at least 32 units (each chunk makes one BLAS call per gate
    # block, ~1 us each: at B=32 H=64, 16-unit chunks made 16 calls a step, and the LSTM's
    # 2-thread forward + backward took 15.6 ms against 11.1 on one thread)
    cdef int per = (H + 7) // 8 if B == 1 else (H + 3) // 4
    return (max(16 if B == 1 else 32, per) + 15) // 16 * 16


cdef struct GemmJob:
    BLAS_Trans ta, tb
    int m, n, k, lda, ldb, ldc, block, split_cols
    double alpha, beta                  # in the dtype of the call
    const void *A
    const void *B
    void *C


cdef void _gemm_block(GemmJob *j, floating dtype_of, int chunk) noexcept nogil:
    cdef int lo = chunk * j.block, hi
    cdef const floating *A = <const floating *>j.A
    cdef const floating *B = <const floating *>j.B
    cdef floating *C = <floating *>j.C
    if j.split_cols:
        hi = min(j.n, lo + j.block)
        # C[:, lo:hi] = op(A) @ op(B)[:, lo:hi]
        _gemm(j.ta, j.tb, j.m, hi - lo, j.k, <floating>j.alpha, A, j.lda,
              B + (lo if j.tb == NoTrans else <Py_ssize_t>lo * j.ldb), j.ldb,
              <floating>j.beta, C + lo, j.ldc)
    else:
        hi = min(j.m, lo + j.block)
        # C[lo:hi] = op(A)[lo:hi] @ op(B)
        _gemm(j.ta, j.tb, hi - lo, j.n, j.k, <floating>j.alpha,
              A + (<Py_ssize_t>lo * j.lda if j.ta == NoTrans else lo), j.lda,
              B, j.ldb, <floating>j.beta, C + <Py_ssize_t>lo * j.ldc, j.ldc)


cdef void _gemm_chunk_f32(void *ctx, int phase, int chunk) noexcept nogil:
    _gemm_block(<GemmJob *>ctx, <float>0, chunk)


cdef void _gemm_chunk_f64(void *ctx, int phase, int chunk) noexcept nogil:
    _gemm_block(<GemmJob *>ctx, <double>0, chunk)


cdef void _gemm_split(BLAS_Trans ta, BLAS_Trans tb, int m, int n, int k,
                      floating alpha, const floating *A, int lda,
                      const floating *B, int ldb,
                      floating beta, floating *C, int ldc,
                      int n_threads, bint split_cols) noexcept nogil:
    """_gemm with C's rows (or columns) split into blocks run by the pool, each a
    single-threaded BLAS call. Two blocks per thread, so a thread that is not running
    leaves its second block to the others."""
    cdef GemmJob j
    cdef int extent = n if split_cols else m, n_blocks
    if n_threads <= 1 or extent < 32:
        _gemm(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)
        return
    j.ta, j.tb, j.m, j.n, j.k = ta, tb, m, n, k
    j.lda, j.ldb, j.ldc, j.split_cols = lda, ldb, ldc, split_cols
    j.alpha, j.beta, j.A, j.B, j.C = alpha, beta, A, B, C
    j.block = (extent + 2 * n_threads - 1) // (2 * n_threads)
    j.block = (j.block + 15) // 16 * 16
    n_blocks = (extent + j.block - 1) // j.block
    if floating is float:
        pool_run(n_threads, 1, n_blocks, _gemm_chunk_f32, &j)
    else:
        pool_run(n_threads, 1, n_blocks, _gemm_chunk_f64, &j)


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


def _packed_product(const float[:, ::1] A, const float[:, ::1] W, float[:, ::1] C,
                    bint transposed=False, bint accumulate=False, c0=0, c1=None):
    """Test hook of include/fastrnn/gemm.h: C[:, c0:c1] = (A @ W.T)[:, c0:c1] (W (n, k)),
    or (A @ W)[:, c0:c1] when transposed (W (k, n)), plus C's own values when accumulate;
    W packed here first. c0 a multiple of 16. Returns whether the kernels use this path
    here (fr_packed_path: the AVX2 and AVX-512 paths)."""
    cdef int m = A.shape[0], k = A.shape[1], n = C.shape[1]
    cdef int lo = c0, hi = n if c1 is None else c1
    cdef void *P = NULL
    if (W.shape[0], W.shape[1]) != ((k, n) if transposed else (n, k)) or C.shape[0] != m:
        raise ValueError("shapes do not fit: A (m, k), W (n, k) or (k, n), C (m, n)")
    if lo % 16 or not 0 <= lo <= hi <= n:
        raise ValueError("c0 must be a multiple of 16 and 0 <= c0 <= c1 <= n")
    if posix_memalign(&P, 64, max(1, fr_packed_size(n, k)) * sizeof(float)) != 0:
        raise MemoryError()
    with nogil:
        if transposed:
            fr_pack_tn_f32(n, k, &W[0, 0], n, <float *>P)
        else:
            fr_pack_nt_f32(n, k, &W[0, 0], k, <float *>P)
        fr_gemm_packed_f32(m, lo, hi, k, &A[0, 0], k, <const float *>P, accumulate, &C[0, 0], n)
    free(P)
    return bool(fr_packed_path())


def _gemv_memview(BLAS_Trans ta, double alpha, const floating[:, ::1] A,
                  const floating[::1] x, double beta, floating[::1] y):
    """Test hook: y = alpha * op(A) @ x + beta * y."""
    with nogil:
        _gemv(ta, A.shape[0], A.shape[1], <floating>alpha, &A[0, 0], A.shape[1], &x[0],
              <floating>beta, &y[0])


# Python names for the enum values (the C names NoTrans/Trans shadow plain assignments)
globals().update(NoTrans=BLAS_Trans.NoTrans, Trans=BLAS_Trans.Trans)


# ---- BLAS held at one thread while a kernel runs, at C speed ------------------------
# The kernels call BLAS from their pool's threads, so scipy's OpenBLAS must run
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
