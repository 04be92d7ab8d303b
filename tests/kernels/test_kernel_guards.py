"""The compiled kernels check every buffer's shape before touching memory (boundscheck is
off inside them): calling them directly with a wrong buffer raises, never reads or writes
out of bounds."""
import numpy as np
import pytest

from fastrnn.kernels import _gru, _lstm, _rnn

T, B, I, H = 3, 2, 4, 16
f = np.float32


def z(*shape):
    return np.zeros(shape, f)


def lstm_fwd(**o):
    a = dict(gates=z(T, B, 4 * H), hbuf=z(T + 1, B, H), cbuf=z(T + 1, B, H), tcbuf=z(T, B, H),
             x=z(T, B, I), W_ih=z(4 * H, I), W_hh=z(4 * H, H), bias=z(4 * H), p_i=None,
             p_f=None, p_o=None, lengths=None)
    a.update(o)
    return _lstm.lstm_forward(*a.values(), False, 2)


def gru_fwd(**o):
    a = dict(gates=z(T, B, 3 * H), hbuf=z(T + 1, B, H), side=z(T, B, H), x=z(T, B, I),
             W_ih=z(3 * H, I), W_hh=z(3 * H, H), bias_x=z(3 * H), b_hh=z(3 * H), lengths=None)
    a.update(o)
    return _gru.gru_forward(*a.values(), True, 2)


def rnn_fwd(**o):
    a = dict(hbuf=z(T + 1, B, H), x=z(T, B, I), W_ih=z(H, I), W_hh=z(H, H), bias=z(H),
             lengths=None)
    a.update(o)
    return _rnn.rnn_forward(*a.values(), 0, 2)


def rnn_bwd(**o):
    a = dict(dx=z(T, B, I), dh0=z(B, H), dW_ih=z(H, I), dW_hh=z(H, H), db=z(H),
             dpre=z(T, B, H), dhs=None, x=z(T, B, I), hbuf=z(T + 1, B, H), W_ih=z(H, I),
             W_hh=z(H, H), lengths=None)
    a.update(o)
    return _rnn.rnn_backward(*a.values(), 0, 2)


@pytest.mark.parametrize("call,bad", [
    (lstm_fwd, dict(hbuf=z(T, B, H))), (lstm_fwd, dict(p_i=z(1))),
    (lstm_fwd, dict(lengths=np.zeros(B + 1, np.int64))), (lstm_fwd, dict(bias=z(H))),
    (gru_fwd, dict(side=z(T - 1, B, H))), (gru_fwd, dict(b_hh=z(2 * H))),
    (rnn_fwd, dict(W_hh=z(H, H - 1))), (rnn_bwd, dict(dpre=z(1, B, H))),
    (rnn_bwd, dict(dhs=z(T, B, H + 1))), (rnn_bwd, dict(dW_ih=z(H, I + 1))),
])
def test_wrong_buffer_is_refused(call, bad):
    call()                      # the right shapes run
    with pytest.raises(ValueError, match="expected"):
        call(**bad)
