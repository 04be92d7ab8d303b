# OpenMP availability decided by the C compiler, not by Cython's deprecated DEF/IF:
# _OPENMP is defined exactly when the module was compiled with -fopenmp.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FASTRNN_OPENMP_ENABLED 1
    #else
    #define FASTRNN_OPENMP_ENABLED 0
    static int omp_get_max_threads(void) { return 1; }
    static int omp_get_num_threads(void) { return 1; }
    #endif
    """
    bint FASTRNN_OPENMP_ENABLED
    int omp_get_max_threads() noexcept nogil
    int omp_get_num_threads() noexcept nogil
