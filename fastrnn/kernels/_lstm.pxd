# What other kernel modules (the streaming step, _stream.pyx) call from _lstm.pyx.
from cython cimport floating


cdef struct LSTMShape:
    int T, B, I, H, GH
    int off_i, off_f, off_g, off_o   # gate block offsets inside a GH row; off_f = -1 if coupled
    bint coupled
    # W_hh packed for the float32 recurrent product (gemm.h), or NULL (BLAS): forward as
    # W_hh.T's panels, backward as W_hh's (set by lstm_forward / lstm_backward per call)
    const float *packed


cdef LSTMShape make_shape(int T, int B, int I, int H, bint coupled) noexcept nogil

cdef void lstm_step_units(LSTMShape s, floating *gates, floating *hbuf, floating *cbuf,
                          floating *tcbuf, const floating *x, const floating *W_ih,
                          const floating *W_hh, const floating *bias,
                          const floating *p_i, const floating *p_f, const floating *p_o,
                          const long long *lengths, int t, int j0, int j1) noexcept nogil
