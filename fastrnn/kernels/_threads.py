"""Thread control: how many threads a kernel uses, and keeping BLAS serial under it.

The kernels parallelise on fastrnn's own pool (include/fastrnn/pool.h, kept in
fastrnn.kernels._blas) and call BLAS from its threads, so BLAS's own thread pool must be
limited to one thread while a kernel runs (a pool thread calling a multi-threaded OpenBLAS
oversubscribes the cores or serialises on its lock). The count itself is resolved as
OpenMP would (``OMP_NUM_THREADS``, capped at the CPUs: fastrnn.kernels._openmp).

Fork: a child forked after the parent handed a kernel more than one thread runs its
kernels on the calling thread: :func:`effective_n_threads` answers 1 there. The rule dates
from the OpenMP kernels (GCC's libgomp cannot be used in such a child: its first parallel
region waited forever for the parent's threads, measured in a ``multiprocessing`` "fork"
child); the pool itself starts afresh in a child, but the rule stays until the fork tests
run threaded children (noted in issue 14's closing note). Use the "forkserver" or "spawn"
start method for children that should run multi-threaded kernels. A :class:`fastrnn.Stream`
made before the fork steps on the calling thread alone in the child, with the same results
(the thread split does not change them); make streams in the child for threaded steps
there. Weights being replaced in another thread at the fork are never inherited half
copied (fastrnn.kernels._guard).
"""
import os
import threading

from ._openmp import effective_n_threads as _resolve_n_threads
from ._openmp import openmp_enabled  # noqa: F401  (re-exported)

_threads_used = False               # this process has handed a kernel more than one thread
_forked_after_threads = False       # a fork child of a process where that had happened


def effective_n_threads(n_threads=None):
    """:func:`fastrnn.kernels._openmp.effective_n_threads` (which validates and resolves
    ``n_threads``), except 1 in a process forked after multi-threaded use (see above)."""
    global _threads_used
    n = _resolve_n_threads(n_threads)
    if n > 1:
        if _forked_after_threads:
            return 1
        _threads_used = True
    return n


def check_n_threads(n_threads):
    """Refuse a bad ``n_threads`` now, with :func:`effective_n_threads`' TypeError or
    ValueError (a layer checks its count when made, not at its first call), without
    counting it as handed to a kernel."""
    _resolve_n_threads(n_threads)


def _after_fork_in_child():
    global _forked_after_threads
    if _threads_used:
        _forked_after_threads = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _SerialBLAS:
    """Context manager: scipy's OpenBLAS runs on one thread inside it.

    Reference-counted across Python threads, so concurrent kernel calls from several
    threads neither restore the thread count under each other's feet nor pay for a
    set/restore each. Only the BLAS that scipy.linalg.cython_blas calls is touched (numpy's
    copy keeps its own setting); when it cannot be identified, every BLAS is limited.
    When it is one OpenBLAS, its own get/set functions are called from C (fastrnn.kernels._blas),
    ~0.2 us instead of ~2 us through threadpoolctl; the GIL makes that path atomic.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self._libs = None
        self._saved = []
        self._native = None         # (enter, exit) of the C path, or False

    def _find_libs(self):
        from threadpoolctl import ThreadpoolController
        import scipy
        import scipy.linalg.cython_blas  # noqa: F401  (loads the library we call)
        blas = [lib for lib in ThreadpoolController().lib_controllers
                if lib.user_api == "blas"]
        scipy_dir = os.path.dirname(os.path.realpath(scipy.__file__))
        ours = [lib for lib in blas
                if os.path.realpath(lib.filepath).startswith(scipy_dir)]  # scipy/ and scipy.libs/
        return ours or blas

    def _setup(self):
        """Find the library; register its get/set functions with the C path if we can."""
        import ctypes
        from . import _blas
        # self._native is assigned once, at the end: another thread that sees it set must
        # find everything ready (it reads it without the lock)
        libs = self._find_libs()
        native = False
        if len(libs) == 1 and libs[0].internal_api == "openblas":
            lib = libs[0]
            try:
                pre = getattr(lib, "_symbol_prefix", "")
                suf = getattr(lib, "_symbol_suffix", "")
                get = lib.dynlib[f"{pre}openblas_get_num_threads{suf}"]
                set_ = lib.dynlib[f"{pre}openblas_set_num_threads{suf}"]
                _blas.register_thread_control(ctypes.cast(get, ctypes.c_void_p).value,
                                              ctypes.cast(set_, ctypes.c_void_p).value)
                native = (_blas.serial_enter, _blas.serial_exit)
            except (AttributeError, KeyError, TypeError):
                pass
        self._libs = libs
        self._native = native

    def __enter__(self):
        if self._native is None:
            with self._lock:
                if self._native is None:
                    self._setup()
        if self._native:
            self._native[0]()
            return self
        with self._lock:
            if self._depth == 0:
                self._saved = []
                for lib in self._libs:
                    n = lib.num_threads
                    self._saved.append(n)
                    if n != 1:
                        lib.set_num_threads(1)
            self._depth += 1
        return self

    def __exit__(self, *exc):
        if self._native:
            self._native[1]()
            return
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for lib, n in zip(self._libs, self._saved):
                    if n != 1:
                        lib.set_num_threads(n)


serial_blas = _SerialBLAS()


_controller = None


def all_blas_serial():
    """Context manager: every BLAS in the process (numpy's and scipy's) on one thread, for
    the library's own small numpy calls outside the kernels (the orthogonal init's QR).
    A multi-threaded BLAS call wakes that BLAS's threads, which then spin for a while
    (OpenBLAS: tens of ms) and take the core the kernels' pool wants: measured here, LSTM
    B=1 H=256 on 2 threads right after making the layer, 3.6 ms against 1.8 ms without."""
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")
