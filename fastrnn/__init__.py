"""fastrnn: fast CPU recurrent neural networks.

Compiled kernels (Cython, scipy's BLAS, OpenMP) for vanilla RNN, LSTM (plain, peephole,
coupled input-forget gates) and GRU (both reset forms), forward and backward over whole
sequences; :mod:`fastrnn.reference` holds the numpy oracle of every cell.
"""
from ._openmp import openmp_enabled, effective_n_threads
from . import functional, reference
from .functional import (rnn_forward, rnn_backward, lstm_forward, lstm_backward,
                         gru_forward, gru_backward)
from .layers import RNN, LSTM, GRU, RNNCell, LSTMCell, GRUCell
from .models import SequenceModel, cosine_similarity, pad_sequences
from .io import load, ModelFileError
from . import losses, optim

__version__ = "0.1.0"

__all__ = ["openmp_enabled", "effective_n_threads", "functional", "reference",
           "rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward",
           "gru_forward", "gru_backward", "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell",
           "GRUCell", "SequenceModel", "cosine_similarity", "pad_sequences", "load",
           "ModelFileError", "losses", "optim", "__version__"]
