"""Weight replacement that readers never see half done: a sequence lock over a parameter buffer.

A service serves one model from many threads and, now and then, loads new weights into it
(``layer.load_state_dict``, ``model.load_state_dict``, a training step in ``fit``). The
weights are written in place, into the same buffers, so that optimizers, streams and views
made earlier keep pointing at the live parameters. Readers take no lock:

    writer:  gen += 1 (odd: writing) ... copy the new weights ... gen += 1 (even)
    reader:  g = gen; (wait while odd) ... compute ... if gen != g: discard and recompute

A reader whose computation overlapped a write sees ``gen`` changed and runs again, so every
result it returns was computed entirely from one version of the weights, old or new. This
costs a reader two reads of an integer per call; a writer, one lock. A reader that keeps
losing the race (a writer writing without pause) runs its last attempt holding the writer's
lock, so it always finishes.

The same count lives in ``gen_array`` (one int64), where the native stream step
(:class:`fastrnn.Stream`) reads it without the GIL, with the same retry.

Only writes made through the guard are seen by readers as one step: a direct write into
``layer.flat`` or an optimizer's ``step()`` called outside ``fit`` is not announced, and a
reader running at that moment can see a mix.
"""
import threading
from contextlib import contextmanager

import numpy as np

# attempts a reader makes before it computes holding the writer's lock
_OPTIMISTIC_TRIES = 2


class WeightGuard:
    """The sequence count of one parameter set (a layer, or a model with its layer)."""
    __slots__ = ("gen", "gen_array", "_lock", "_fence")

    def __init__(self):
        self.gen = 0                                # even: stable; odd: a write is under way
        self.gen_array = np.zeros(1, np.int64)      # the same count, for native readers
        self._lock = threading.RLock()              # one writer at a time
        self._fence = threading.Lock()              # a full memory barrier, see writing()

    @contextmanager
    def writing(self):
        """Hold the weights for a write; readers running meanwhile compute again. Do
        every check before entering: what happens inside should not be able to fail."""
        with self._lock:
            self._bump()                    # odd: readers that start now wait
            try:
                yield
            finally:
                self._bump()                # even: a new version

    def _bump(self):
        self.gen += 1
        self.gen_array[0] = self.gen
        # a mutex acquire/release is a full barrier: the count's store is visible before
        # any weight store that follows (odd) / after every one that precedes (even), for
        # readers that run without the GIL on another core
        self._fence.acquire()
        self._fence.release()

    def read(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` computed from one version of the weights. ``fn`` must
        not change anything the caller can see (it may run more than once)."""
        for _ in range(_OPTIMISTIC_TRIES):
            g = self.gen
            if g & 1:                       # a write is under way: wait for its end
                with self._lock:
                    pass
                continue
            out = fn(*args, **kwargs)
            if self.gen == g:
                return out
        with self._lock:                    # writers wait for this one
            return fn(*args, **kwargs)
