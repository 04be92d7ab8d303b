"""OpenMP status and thread-count resolution."""
import os

from ._openmp cimport FASTRNN_OPENMP_ENABLED, omp_get_max_threads


def openmp_enabled():
    """True when the kernels were compiled with OpenMP (parallel over threads)."""
    return bool(FASTRNN_OPENMP_ENABLED)


_cpu_count = None


def cpu_count():
    """CPUs this process may run on (affinity-aware where the OS tells), read once: a
    syscall per kernel call is a measurable part of a one-step streaming call."""
    global _cpu_count
    if _cpu_count is None:
        try:
            _cpu_count = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            _cpu_count = os.cpu_count() or 1
    return _cpu_count


_default_threads = None     # set by set_num_threads


def max_threads():
    """The largest ``n_threads`` accepted: 4 per CPU (oversubscription only slows down), and
    never less than 1024 so that code written for a big machine runs on a small one."""
    return max(1024, 4 * cpu_count())


def set_num_threads(n_threads):
    """Default thread count of every fastrnn call that does not pass ``n_threads``
    (like torch.set_num_threads). None restores OpenMP's default (``OMP_NUM_THREADS``,
    capped at the CPUs); -1 means all CPUs."""
    global _default_threads
    if n_threads is not None:
        effective_n_threads(n_threads)            # validates
    _default_threads = n_threads


def get_num_threads():
    """The thread count a call without ``n_threads`` uses now."""
    return effective_n_threads(None)


def effective_n_threads(n_threads=None):
    """Resolve a user's ``n_threads`` to a positive thread count.

    None: OpenMP's default (``OMP_NUM_THREADS`` when set), capped at the CPUs available.
    -1: all CPUs; -2: all but one, and so on (scikit-learn's convention). Positive: as given,
    up to ``max_threads()`` (more is refused: OpenMP would try to start them all, and a
    million threads crash the process instead of failing). Without OpenMP the answer is 1.
    """
    if n_threads is None:
        n_threads = _default_threads
    if n_threads is not None:
        if isinstance(n_threads, bool) or not isinstance(n_threads, (int,)) and not hasattr(n_threads, "__index__"):
            raise TypeError(f"n_threads must be an int or None, got {type(n_threads).__name__}")
        n_threads = int(n_threads)
        if n_threads == 0:
            raise ValueError("n_threads=0 is not a thread count; use None, -1 or a positive int")
        if n_threads > max_threads():
            raise ValueError(f"n_threads={n_threads} is more than fastrnn starts (at most "
                             f"{max_threads()}, the larger of 1024 and 4 per CPU); use -1 "
                             "for all CPUs")
    if not FASTRNN_OPENMP_ENABLED:
        return 1
    if n_threads is None:
        return max(1, min(omp_get_max_threads(), cpu_count()))
    if n_threads < 0:
        return max(1, cpu_count() + 1 + n_threads)
    return n_threads
