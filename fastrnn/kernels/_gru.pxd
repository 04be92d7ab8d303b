# What other kernel modules (the streaming step, _stream.pyx) call from _gru.pyx.
from cython cimport floating


cdef struct GRUShape:
    int T, B, I, H, GH
    # W_hh packed for the float32 recurrent products (gemm.h), or NULL (BLAS): forward the
    # r, z rows' and the n rows' transposes, backward the blocks themselves (set per call
    # by gru_forward / gru_backward)
    const float *packed_rz
    const float *packed_n


cdef void gru_after_step_units(GRUShape s, floating *gates, floating *hbuf, floating *hn,
                               const floating *x, const floating *W_ih, const floating *W_hh,
                               const floating *bias_x, const floating *b_hn,
                               const long long *lengths, int t, int j0, int j1) noexcept nogil

cdef void gru_before_rz_units(GRUShape s, floating *gates, const floating *hbuf, floating *rh,
                              const floating *x, const floating *W_ih, const floating *W_hh,
                              const floating *bias_x, const long long *lengths,
                              int t, int j0, int j1) noexcept nogil

cdef void gru_before_n_units(GRUShape s, floating *gates, floating *hbuf, const floating *rh,
                             const floating *W_hh, const long long *lengths,
                             int t, int j0, int j1) noexcept nogil
