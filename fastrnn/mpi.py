"""Data-parallel training over MPI (issue 8): the ``allreduce`` hook of
:func:`fastrnn.training.fit` on top of ``mpi4py``, and the rows each process trains on.

Optional extra ``fastrnn[mpi]`` (the ``mpi4py`` and ``mpich`` wheels: a self-contained MPI,
no system install). A training script runs unchanged on one or N processes::

    # mpiexec -n 2 python train.py
    import fastrnn, fastrnn.mpi
    hook = fastrnn.mpi.Allreduce()                   # MPI.COMM_WORLD
    rows = fastrnn.mpi.shard(len(x), batch_size=64)  # this rank's part of every batch of 64
    model.fit(x[rows], y[rows], lengths[rows], batch_size=64 // hook.size,
              allreduce=hook, checkpoint="model.fastrnn")   # written by rank 0 only

Each update sums one flat buffer (the gradients weighted by each rank's loss terms) with
``Allreduce`` in place, so the update is the one a single process makes on the whole batch
of 64; the parameters are broadcast from rank 0 first. fastrnn opens no sockets: MPI does
the transport.
"""
import numpy as np

from ._spec import positive_int

__all__ = ["Allreduce", "shard"]


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:          # the extra is not installed
        raise ImportError("fastrnn.mpi needs mpi4py: pip install 'fastrnn[mpi]' (mpi4py and "
                          "the mpich wheel)") from exc
    return MPI


class Allreduce:
    """The hook ``fit(..., allreduce=Allreduce(comm))``: ``hook(buffer)`` sums a contiguous
    1-D float array across the communicator's processes in place (``MPI.SUM``);
    ``hook.broadcast(buffer)`` replaces it by rank 0's values. ``rank`` and ``size`` are the
    communicator's (``comm`` defaults to ``MPI.COMM_WORLD``).

    Every rank gets the same sum bit for bit where the MPI library reduces in one order
    for all ranks (MPICH does for the sizes tested here: 2 ranks); ``deterministic=True``
    makes it certain for any size and library at the cost of a second message: a
    ``Reduce`` to rank 0, then a ``Bcast`` of its result."""

    def __init__(self, comm=None, deterministic=False):
        MPI = _mpi()
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self._MPI = MPI
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.deterministic = bool(deterministic)

    @staticmethod
    def _checked(buffer):
        if not isinstance(buffer, np.ndarray) or buffer.ndim != 1 or \
                not buffer.flags.c_contiguous or not buffer.flags.writeable or \
                buffer.dtype not in (np.float32, np.float64):
            raise TypeError("the buffer must be a writeable, contiguous 1-D float32/float64 "
                            f"numpy array, got {getattr(buffer, 'dtype', type(buffer))} "
                            f"{getattr(buffer, 'shape', '')}")
        return buffer

    def __call__(self, buffer):
        buffer, MPI = self._checked(buffer), self._MPI
        if self.deterministic:
            if self.rank == 0:
                self.comm.Reduce(MPI.IN_PLACE, buffer, op=MPI.SUM, root=0)
            else:
                self.comm.Reduce(buffer, None, op=MPI.SUM, root=0)
            self.comm.Bcast(buffer, root=0)
        else:
            self.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)

    def broadcast(self, buffer):
        self.comm.Bcast(self._checked(buffer), root=0)

    def __repr__(self):
        return f"fastrnn.mpi.Allreduce(rank={self.rank}, size={self.size})"


def shard(n, batch_size, rank=None, size=None):
    """Indices of the rows this process trains on: its part of every batch of
    ``batch_size`` consecutive rows of ``n``, so that ``fit(x[rows], ...,
    batch_size=batch_size // size, shuffle=False)`` on every rank makes the updates one
    process makes with ``fit(x, ..., batch_size=batch_size, shuffle=False)``. With
    ``shuffle=True`` each rank shuffles its own rows (the same seed everywhere), so every
    update still averages over ``batch_size`` rows.

    n           rows of the whole data set (every rank must pass the same n)
    batch_size  rows of one update over all processes, a multiple of ``size``
    rank, size  this process and the number of processes (MPI.COMM_WORLD's by default)
    returns     (m,) int64 indices, increasing
    """
    if rank is None or size is None:
        comm = _mpi().COMM_WORLD
        rank = comm.Get_rank() if rank is None else rank
        size = comm.Get_size() if size is None else size
    n, batch_size, size = (positive_int(name, v) for name, v in
                           (("n", n), ("batch_size", batch_size), ("size", size)))
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or \
            not 0 <= rank < size:
        raise ValueError(f"rank must be an int in [0, {size}), got {rank!r}")
    if batch_size % size:
        raise ValueError(f"batch_size ({batch_size}) must be a multiple of the number of "
                         f"processes ({size}): each takes batch_size // size rows")
    last = n % batch_size
    if 0 < last < size:
        raise ValueError(f"the last batch has {last} rows, fewer than the {size} processes; "
                         f"drop {last} rows or choose another batch_size")
    per = batch_size // size
    starts = np.arange(0, n, batch_size)
    parts = []
    for start in starts:
        m = min(batch_size, n - start)
        # full batches: per rows each; the last one split as evenly as it goes
        lo = start + (rank * per if m == batch_size else (rank * m) // size)
        hi = start + ((rank + 1) * per if m == batch_size else ((rank + 1) * m) // size)
        parts.append(np.arange(lo, hi, dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)
