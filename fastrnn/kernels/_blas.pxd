# Row-major BLAS on top of scipy.linalg.cython_blas (Fortran, column-major, LP64).
# A row-major (m, n) matrix is a column-major (n, m) one: each wrapper swaps operands
# instead of copying. Dims are C int. No checks: callers validate shapes first.
from cython cimport floating

cpdef enum BLAS_Trans:
    NoTrans = 110  # ord('n')
    Trans = 116    # ord('t')

cdef void _gemm(BLAS_Trans ta, BLAS_Trans tb, int m, int n, int k,
                floating alpha, const floating *A, int lda,
                const floating *B, int ldb,
                floating beta, floating *C, int ldc) noexcept nogil

cdef void _gemv(BLAS_Trans ta, int m, int n, floating alpha,
                const floating *A, int lda, const floating *x,
                floating beta, floating *y) noexcept nogil

cdef void _gemm_split(BLAS_Trans ta, BLAS_Trans tb, int m, int n, int k,
                      floating alpha, const floating *A, int lda,
                      const floating *B, int ldb,
                      floating beta, floating *C, int ldc,
                      int n_threads, bint split_cols) noexcept nogil

# Chunk `chunk` of range(n) split into n_chunks pieces whose sizes are multiples of `align`
# (SIMD width) except the last; a chunk may be empty. Returned by value, not through
# pointers: inside prange, Cython makes a variable thread-private only when it is assigned.
cdef int chunk_start(int n, int n_chunks, int chunk, int align) noexcept nogil
cdef int chunk_stop(int n, int n_chunks, int chunk, int align) noexcept nogil

# Threads for the per-step work of a recurrent kernel: at most one per 8 hidden units, and
# one when a step is too small to pay for waking a second thread (work = multiply-adds).
cdef int step_threads(int n_threads, int H, long long work) noexcept nogil

# fastrnn's thread pool (include/fastrnn/pool.h): fn(ctx, phase, chunk) for every chunk of
# every phase, phase by phase, chunks claimed dynamically by the caller and up to
# n_threads - 1 workers. One pool per process, kept here; every kernel module uses it.
ctypedef void (*chunk_fn)(void *ctx, int phase, int chunk) noexcept nogil
cdef int pool_run(int n_threads, int n_phases, int n_chunks, chunk_fn fn, void *ctx) noexcept nogil

# hidden units per chunk of a step's work: chunks do not depend on the thread count, so
# neither do the results; about 8 chunks a step at batch 1 (4, of at least 32 units, for
# larger batches, whose per-chunk BLAS calls each repack the state)
cdef int unit_chunk(int H, int B) noexcept nogil
