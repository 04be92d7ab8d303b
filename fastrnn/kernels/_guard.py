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

A write always finishes, so the count never stays odd:

* Signals are held during a write (:class:`HeldSignals`): a Ctrl-C, or any signal whose
  Python handler raises, lands when the copy is complete, never between two buffers.
* ``os.fork`` waits for the writes under way in other threads to finish (and holds new ones
  until it is done), so a child never inherits a half-copied buffer; in the child every
  guard's locks are fresh, since the threads that held them do not exist there.
* A count found odd while holding the writer's lock means a write that can no longer
  finish (the count was changed by hand, or a write bypassed this module): readers raise
  :class:`RuntimeError` saying so instead of computing from a possible mix or waiting
  forever. The next complete write (``load_state_dict``) repairs it.

Only writes made through the guard are seen by readers as one step: a direct write into
``layer.flat`` or an optimizer's ``step()`` called outside ``fit`` is not announced, and a
reader running at that moment can see a mix.
"""
import os
import threading
import weakref

import numpy as np

try:                    # the C module under ``signal``: its getsignal is ~15x faster (no enum)
    import _signal as _signals
except ImportError:     # pragma: no cover
    import signal as _signals

# attempts a reader makes before it computes holding the writer's lock
_OPTIMISTIC_TRIES = 2

TORN_MESSAGE = ("the weights' version count is odd while no write is under way: a write "
                "into them was interrupted and can no longer finish (the count was changed "
                "by hand, or weights were written without the guard), so they may be a mix "
                "of two versions; load the weights again (load_state_dict)")


class WeightGuard:
    """The sequence count of one parameter set (a layer, or a model with its layer)."""
    __slots__ = ("gen", "gen_array", "_lock", "_fence", "_writer", "_depth", "__weakref__")

    def __init__(self):
        self.gen = 0                                # even: stable; odd: a write is under way
        self.gen_array = np.zeros(1, np.int64)      # the same count, for native readers
        self._lock = threading.RLock()              # one writer at a time
        self._fence = threading.Lock()              # a full memory barrier, see _store()
        self._writer = None                         # ident of the thread writing, or None
        self._depth = 0                             # nested writes of that thread
        _live_guards.add(self)

    def writing(self):
        """Hold the weights for a write; readers running meanwhile compute again. Do
        every check before entering: what happens inside should not be able to fail.
        Signals are held to the end of the block (:class:`HeldSignals`), and a fork in
        another thread waits for it. A nested write by the same thread is part of the
        outer one."""
        return _Write(self)

    def _store(self, gen):
        self.gen = gen
        self.gen_array[0] = gen
        # a mutex acquire/release is a full barrier: the count's store is visible before
        # any weight store that follows (odd) / after every one that precedes (even), for
        # readers that run without the GIL on another core
        self._fence.acquire()
        self._fence.release()

    def read(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` computed from one version of the weights. ``fn`` must
        not change anything the caller can see (it may run more than once). Raises
        RuntimeError when the weights were left half-written (see the module docstring)."""
        for _ in range(_OPTIMISTIC_TRIES):
            g = self.gen
            if g & 1:                       # a write is under way: wait for its end
                with self.stable():
                    pass
                continue
            out = fn(*args, **kwargs)
            if self.gen == g:
                return out
        with self.stable():                 # writers wait for this one
            return fn(*args, **kwargs)

    def stable(self):
        """Context manager: hold the writer's lock, so no other thread writes meanwhile
        (waiting for a write under way; the wait can be interrupted by Ctrl-C). Raises
        RuntimeError if the count is odd with no write under way (weights left torn). The
        thread that is writing may enter: it sees its own write."""
        return _Stable(self)

    def _after_fork_in_child(self):
        # the only thread here is the one that called fork: a lock held by any other thread
        # would never be released, so it is made anew (a write of this thread, forked from
        # inside its own write, goes on and keeps its lock)
        if self._writer != threading.get_ident():
            self._lock._at_fork_reinit()
            self._writer, self._depth = None, 0
        self._fence._at_fork_reinit()


class _Write:
    """What ``WeightGuard.writing()`` returns (a class rather than a generator: nothing
    between acquiring and releasing may be a point where an exception can land)."""
    __slots__ = ("guard", "held")

    def __init__(self, guard):
        self.guard = guard

    def __enter__(self):
        g = self.guard
        self.held = HeldSignals().__enter__()     # from here on nothing raises asynchronously
        _fork_gate.writer_enters()
        g._lock.acquire()
        if g._depth == 0:
            g._writer = threading.get_ident()
            # odd, and new even if a write was left torn (odd): readers of the torn
            # version must not take the end of this write for a stable state they saw
            g._store(g.gen + 1 if not g.gen & 1 else g.gen + 2)
        g._depth += 1
        return self

    def __exit__(self, *exc):
        g = self.guard
        try:
            g._depth -= 1
            if g._depth == 0:
                g._store(g.gen + 1)             # even: a new version
                g._writer = None
        finally:
            g._lock.release()
            _fork_gate.writer_leaves()
            self.held.__exit__()              # held signals are delivered now
        return False


class _Stable:
    __slots__ = ("guard",)

    def __init__(self, guard):
        self.guard = guard

    def __enter__(self):
        g = self.guard
        g._lock.acquire()
        # the native readers' copy too: a count changed by hand in one place only
        if (g.gen | int(g.gen_array[0])) & 1 and g._writer != threading.get_ident():
            g._lock.release()
            raise RuntimeError(TORN_MESSAGE)
        return self

    def __exit__(self, *exc):
        self.guard._lock.release()
        return False


class HeldSignals:
    """Context manager: signals whose handlers are Python functions (Ctrl-C's
    ``default_int_handler``, a SIGTERM handler calling ``sys.exit``...) are recorded
    instead of handled while inside, and passed to those handlers, in arrival order, when
    the block ends. For short blocks that must not stop half way. Python runs signal
    handlers only in the main thread, so elsewhere this does nothing (nothing can land
    there). A signal left to the operating system (SIG_DFL, SIG_IGN, a handler set from C)
    is not touched. Reentrant: an inner block records into the outer one's handler.
    Each use costs a few microseconds (a scan of the handlers, two ``signal.signal`` calls
    per held signal)."""
    __slots__ = ("saved", "received")

    def __enter__(self):
        self.saved, self.received = [], []
        if threading.current_thread() is not threading.main_thread():
            return self
        hold = self._hold
        try:
            for sig in _CATCHABLE:
                handler = _signals.getsignal(sig)
                if callable(handler):
                    _signals.signal(sig, hold)
                    self.saved.append((sig, handler))
        except ValueError:
            # not the main interpreter: its handlers cannot be set here (nor run here)
            self._restore()
        except BaseException:
            # a signal handled before its own handler was replaced: undo and let it raise
            self._restore()
            raise
        return self

    def _hold(self, signum, frame):
        self.received.append((signum, frame))

    def _restore(self):
        # SIGINT last: until then a Ctrl-C landing here is still only recorded
        for sig, handler in sorted(self.saved, key=lambda p: p[0] == _SIGINT):
            _signals.signal(sig, handler)
        self.saved = []

    def __exit__(self, *exc):
        if not self.saved:
            return False
        handlers = dict(self.saved)
        self._restore()
        received, self.received = self.received, []
        for signum, frame in received:
            handlers[signum](signum, frame)     # e.g. default_int_handler: KeyboardInterrupt
        return False


_SIGINT = int(_signals.SIGINT)
# every signal a Python handler can be set for
_CATCHABLE = tuple(sorted(int(s) for s in _signals.valid_signals()
                          if s not in (getattr(_signals, "SIGKILL", None),
                                       getattr(_signals, "SIGSTOP", None))))


class _ForkGate:
    """Writers in progress, so that ``os.fork`` can wait for them (before it) and no new
    one starts until the fork is done: a child never inherits a write half done. A thread
    that forks from inside its own write is not waited for (it goes on writing in the
    child too)."""

    def __init__(self):
        self._cv = threading.Condition(threading.Lock())
        self._writing = {}          # thread ident -> writes under way in it
        self._forks = 0             # forks waiting or under way

    def writer_enters(self):
        me = threading.get_ident()
        with self._cv:
            while self._forks and me not in self._writing:
                self._cv.wait()
            self._writing[me] = self._writing.get(me, 0) + 1

    def writer_leaves(self):
        me = threading.get_ident()
        with self._cv:
            n = self._writing.pop(me) - 1
            if n:
                self._writing[me] = n
            else:
                self._cv.notify_all()

    def before_fork(self):
        me = threading.get_ident()
        with self._cv:
            self._forks += 1
            while any(t != me for t in self._writing):
                self._cv.wait()

    def after_fork_in_parent(self):
        with self._cv:
            self._forks -= 1
            self._cv.notify_all()

    def after_fork_in_child(self):
        me = threading.get_ident()
        mine = self._writing.get(me)
        self._cv = threading.Condition(threading.Lock())
        self._writing = {me: mine} if mine else {}
        self._forks = 0


_fork_gate = _ForkGate()
_live_guards = weakref.WeakSet()


def _after_fork_in_child():
    _fork_gate.after_fork_in_child()
    for guard in list(_live_guards):
        guard._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_fork_gate.before_fork,
                        after_in_parent=_fork_gate.after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
