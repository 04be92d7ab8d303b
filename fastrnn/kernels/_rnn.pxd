# What other kernel modules (the streaming step, _stream.pyx) call from _rnn.pyx.
from cython cimport floating


cdef enum:
    ACT_TANH = 0
    ACT_RELU = 1


cdef void rnn_step_units(floating *hbuf, const floating *x, const floating *W_ih, int I,
                         const floating *W_hh, const floating *bias, const long long *lengths,
                         int t, int B, int H, int act, int j0, int j1) noexcept nogil
