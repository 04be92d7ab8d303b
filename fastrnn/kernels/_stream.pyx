# The streaming step: one call per time step, the state kept in native buffers.
#
# A service that feeds a recurrent model one input at a time pays, per call, for whatever
# sits between Python and the arithmetic. At batch 1 and H=64 the arithmetic of an LSTM
# step is about 1 us (the weights stream from L2: gemv.h), so this path does everything
# else once, at construction: the weight pointers, the state, the scratch buffers. A call
# checks the input through the buffer protocol, releases the GIL, runs every layer's cell
# step (the same *_step_units functions the whole-sequence kernels run, so the arithmetic
# is theirs, bit for bit) and returns the top layer's output as a new array.
#
# Shapes: L layers, B streams, H hidden, I input of layer 0 (H above it), G gate blocks,
# GH = G*H. Per layer: h, c (2, B, H) with [0] the state carried in and [1] the step's
# result, copied back to [0] after the step; scratch gates (B, GH), side and tc (B, H);
# bias (GH,) fused from b_ih and b_hh on every call, so weights updated in place (by an
# optimizer) are seen, exactly as the layer's own forward sees them.
#
# Threads: one pool job per call (include/fastrnn/pool.h): a phase per layer (a layer reads
# all of the one below; the reset-before GRU has two, r then n), chunks of hidden units of
# every gate block. Small steps run on one thread (step_threads).
# A lock serialises calls on one Stream; separate Streams run concurrently.
#
# StepPlan: the same run_step for one layer whose state the caller holds (cells, layer.step,
# SequenceModel.step, through fastrnn.functional.<cell>_step): the state is copied into
# per-call scratch (h, c (2, B, H) with [0] the state in), the batch is the call's, and
# the result is copied out to new arrays, so one plan serves any number of threads at once.
#
# Weights replaced while streams run (layer.load_state_dict, a step of fit): the writer
# makes the layer's version count (fastrnn.kernels._guard, gen_array) odd, copies in place, makes
# it even. A step reads the count before and after its arithmetic, which writes only the
# [1] halves, the scratch and y; if the count moved (or was odd) the step is run again from
# the unchanged [0] state, and only then carried. So every step computes from one version
# of the weights, and the pointers stay valid because the buffers never move. The native
# wait is bounded: a step that finds a write under way for long, or loses the race a few
# times, goes back to Python, takes the writer's lock there (a wait Ctrl-C can interrupt,
# and which raises if the count was left odd with no writer) and steps holding it.
#
# A Stream is immutable once built (a second __init__ is refused): a step in another thread
# reads the plan without the GIL, so nothing it points to may change or be freed while the
# stream lives. Every size in the plan comes from the kernels' rules for the cell (gate
# count from cell and coupled) and every array is checked against them, each attribute of
# the caller's layer read once (_layer_spec).
#
# Fork: in a child process (a stream made before os.fork) a step runs on the calling
# thread alone (libgomp's pool does not survive fork, fastrnn.kernels._threads; the thread split
# does not change the result, bit for bit); its lock is made anew if a thread of the parent
# held it, and a state that thread was writing at that moment is refused until reset().
from cython cimport floating
from cpython.buffer cimport PyBuffer_Release, PyBUF_C_CONTIGUOUS, PyBUF_FORMAT
from cpython.pythread cimport (PyThread_type_lock, PyThread_allocate_lock, PyThread_free_lock,
                               PyThread_acquire_lock, PyThread_release_lock, WAIT_LOCK,
                               NOWAIT_LOCK)
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy
cimport numpy as cnp
import os

import numpy as np

from ._threads import effective_n_threads, serial_blas

include "_common.pxi"      # kernel_threads, pool_run, unit_chunk: the kernels' own
from ._lstm cimport LSTMShape, make_shape, lstm_step_units
from ._gru cimport GRUShape, gru_after_step_units, gru_before_rz_units, gru_before_n_units
from ._rnn cimport rnn_step_units

cnp.import_array()

cdef extern from *:
    """
    /* numpy's headers pull in complex.h, whose macro I would rename the kernels' shape
       fields (LSTMShape.I, GRUShape.I) */
    #ifdef I
    #undef I
    #endif
    /* the version a step starts from (even); while a write is under way (odd), give the
       CPU to the writer. Acquire: the weights are read after the count */
    #if defined(_MSC_VER)
    #include <windows.h>
    #include <intrin.h>
    static inline void fr_yield(void) { SwitchToThread(); }
    /* x86/x64 keep loads in order; the barrier keeps the compiler from moving them */
    static inline long long fr_load_acquire(const long long *p) {
        long long v = *(const volatile long long *)p; _ReadWriteBarrier(); return v; }
    static inline void fr_fence_acquire(void) { _ReadWriteBarrier(); }
    #else
    #include <sched.h>
    static inline void fr_yield(void) { sched_yield(); }
    static inline long long fr_load_acquire(const long long *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void fr_fence_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
    #endif
    /* -1 instead, after max_yields yields with the count still odd: the caller waits
       for the writer with the GIL, where it can be interrupted (or learn that there is no
       writer: a count left odd) */
    static inline long long fr_seq_begin(const long long *gen, int max_yields) {
        long long g;
        int n = 0;
        while ((g = fr_load_acquire(gen)) & 1) {
            if (n++ >= max_yields)
                return -1;
            fr_yield();
        }
        return g;
    }
    /* a flag another process may snapshot (fork) while this thread runs: stores before
       it stay before it, stores after it stay after it */
    static inline void fr_store_flag(int *p, int v) {
    #if defined(_MSC_VER)
        _ReadWriteBarrier(); *(volatile int *)p = v; _ReadWriteBarrier();
    #else
        __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
    #endif
    }
    /* 1 when a write began or ended since fr_seq_begin returned g: the weights read in
       between may mix two versions */
    static inline int fr_seq_moved(const long long *gen, long long g) {
        fr_fence_acquire();
        return fr_load_acquire(gen) != g;
    }
    """
    long long fr_seq_begin(const long long *gen, int max_yields) noexcept nogil
    void fr_store_flag(int *p, int v) noexcept nogil
    int fr_seq_moved(const long long *gen, long long g) noexcept nogil

cdef enum Cell:
    CELL_RNN_TANH = 0
    CELL_RNN_RELU = 1
    CELL_LSTM = 2
    CELL_GRU = 3


cdef struct LayerPlan:
    int I                                           # input size of this layer
    const void *W_ih                                # (GH, I)
    const void *W_hh                                # (GH, H)
    const void *b_ih                                # (GH,) or NULL (bias=False)
    const void *b_hh                                # (GH,) or NULL
    const void *p_i                                 # LSTM peepholes (H,) or NULL
    const void *p_f
    const void *p_o
    void *h                                         # (2, B, H)
    void *c                                         # (2, B, H), LSTM only
    void *bias                                      # (GH,) scratch: fused bias


cdef struct Plan:
    int cell, L, B, H, G, GH, n_threads
    bint coupled, reset_after
    LayerPlan *layers
    void *gates                                     # (B, GH) scratch, shared by the layers
    void *side                                      # (B, H) scratch: GRU hn / rh
    void *tc                                        # (B, H) scratch: LSTM tanh(c)


cdef void fuse_bias(Plan *p, LayerPlan *lp, floating *bias) noexcept nogil:
    # bias (GH,) = b_ih + b_hh, except the reset_after GRU's n block, where b_hn sits
    # inside r * (...) and the kernel adds it itself (functional.gru_input_bias)
    cdef const floating *bi = <const floating *>lp.b_ih
    cdef const floating *bh = <const floating *>lp.b_hh
    cdef int j, n_fused = p.GH
    if bi == NULL:
        for j in range(p.GH):
            bias[j] = 0
        return
    if p.cell == CELL_GRU and p.reset_after:
        n_fused = 2 * p.H
        for j in range(n_fused, p.GH):
            bias[j] = bi[j]
    for j in range(n_fused):
        bias[j] = bi[j] + bh[j]


cdef void layer_units(Plan *p, LayerPlan *lp, const floating *x, const floating *zero_hn,
                      int part, int j0, int j1) noexcept nogil:
    """One layer's step for units [j0, j1) of every row: x (B, I) in, lp.h[1] (and
    lp.c[1]) out. A GRU without bias passes zero_hn (H,) zeros as b_hn. ``part``: -1 the
    whole step; a reset-before GRU's step in two parts, 0 (r, z) then 1 (n), which reads
    r * h of every unit (see layer_phases)."""
    cdef floating *g = <floating *>p.gates
    cdef floating *h = <floating *>lp.h
    cdef const floating *W_ih = <const floating *>lp.W_ih
    cdef const floating *W_hh = <const floating *>lp.W_hh
    cdef const floating *bias = <const floating *>lp.bias
    cdef const floating *b_hn
    cdef LSTMShape ls
    cdef GRUShape gs
    if p.cell == CELL_LSTM:
        ls = make_shape(1, p.B, lp.I, p.H, p.coupled)
        lstm_step_units(ls, g, h, <floating *>lp.c, <floating *>p.tc, x, W_ih, W_hh, bias,
                        <const floating *>lp.p_i, <const floating *>lp.p_f,
                        <const floating *>lp.p_o, NULL, 0, j0, j1)
    elif p.cell == CELL_GRU:
        gs.T = 1; gs.B = p.B; gs.I = lp.I; gs.H = p.H; gs.GH = p.GH
        gs.packed_rz = gs.packed_n = NULL
        if p.reset_after:
            b_hn = zero_hn if lp.b_hh == NULL else <const floating *>lp.b_hh + 2 * p.H
            gru_after_step_units(gs, g, h, <floating *>p.side, x, W_ih, W_hh, bias, b_hn, NULL,
                                 0, j0, j1)
        else:
            if part <= 0:
                gru_before_rz_units(gs, g, h, <floating *>p.side, x, W_ih, W_hh, bias, NULL, 0,
                                    j0, j1)
            if part != 0:
                gru_before_n_units(gs, g, h, <const floating *>p.side, W_hh, NULL, 0, j0, j1)
    else:
        rnn_step_units(h, x, W_ih, lp.I, W_hh, bias, NULL, 0, p.B, p.H,
                       0 if p.cell == CELL_RNN_TANH else 1, j0, j1)


cdef inline int layer_phases(Plan *p) noexcept nogil:
    # pool phases per layer: a reset-before GRU's n needs every unit's r first
    return 2 if p.cell == CELL_GRU and not p.reset_after else 1


cdef void carry_units(Plan *p, Py_ssize_t isz, int j0, int j1) noexcept nogil:
    # the step's result becomes the carried state: [1] -> [0], units [j0, j1) of every row;
    # isz = bytes per element
    cdef int l, b
    cdef Py_ssize_t BH = <Py_ssize_t>p.B * p.H, off
    cdef char *h
    cdef char *c
    for l in range(p.L):
        h = <char *>p.layers[l].h
        c = <char *>p.layers[l].c
        for b in range(p.B):
            off = (<Py_ssize_t>b * p.H + j0) * isz
            memcpy(h + off, h + BH * isz + off, (j1 - j0) * isz)
            if c != NULL:
                memcpy(c + off, c + BH * isz + off, (j1 - j0) * isz)


cdef struct StepJob:
    # one step of every layer for the pool: phase = layer (two per reset-before GRU layer)
    Plan *p
    const void *x
    const void *zero_hn
    int chunk


cdef inline const floating *layer_input(Plan *p, const floating *x, int l) noexcept nogil:
    # layer l reads x (l = 0) or the layer below's new h, its h[1]
    return x if l == 0 else <const floating *>p.layers[l - 1].h + <Py_ssize_t>p.B * p.H


cdef void _step_chunk(StepJob *q, floating dtype_of, int phase, int c) noexcept nogil:
    cdef Plan *p = q.p
    cdef int per = layer_phases(p), l = phase // per, j0 = c * q.chunk
    layer_units(p, &p.layers[l], layer_input(p, <const floating *>q.x, l),
                <const floating *>q.zero_hn, -1 if per == 1 else phase % per, j0,
                min(p.H, j0 + q.chunk))


cdef void _step_chunk_f32(void *ctx, int phase, int c) noexcept nogil:
    _step_chunk(<StepJob *>ctx, <float>0, phase, c)


cdef void _step_chunk_f64(void *ctx, int phase, int c) noexcept nogil:
    _step_chunk(<StepJob *>ctx, <double>0, phase, c)


cdef void run_step(Plan *p, const floating *x, floating *y, const floating *zero_hn) noexcept nogil:
    """x (B, I) -> y (B, H) and every layer's h[1] (c[1]); h[0] (c[0]) unchanged. The
    carried state [0] is only read (the caller carries, once the step is known good)."""
    cdef int l
    cdef StepJob q
    for l in range(p.L):
        fuse_bias(p, &p.layers[l], <floating *>p.layers[l].bias)
    if p.n_threads == 1:
        for l in range(p.L):
            layer_units(p, &p.layers[l], layer_input(p, x, l), zero_hn, -1, 0, p.H)
    else:
        # a phase per layer (layer l reads all of layer l-1's new h), chunks of units
        q.p, q.x, q.zero_hn, q.chunk = p, x, zero_hn, unit_chunk(p.H, p.B)
        if floating is float:
            pool_run(p.n_threads, p.L * layer_phases(p), n_chunks_of(p.H, q.chunk),
                     _step_chunk_f32, &q)
        else:
            pool_run(p.n_threads, p.L * layer_phases(p), n_chunks_of(p.H, q.chunk),
                     _step_chunk_f64, &q)
    # y = the top layer's h[1] (the step's result; not yet carried to h[0])
    memcpy(y, <floating *>p.layers[p.L - 1].h + <Py_ssize_t>p.B * p.H,
           <Py_ssize_t>p.B * p.H * sizeof(floating))


cdef enum:
    # a step's native attempts before it goes back to Python for the writer's lock, and the
    # yields to a write under way each attempt may spend before that
    _NATIVE_TRIES = 4
    _MAX_YIELDS = 256


cdef bint guarded_step(Plan *p, const long long *gen, bint is_f32, const void *xp, void *yp,
                       const void *zero_hn, int tries) noexcept nogil:
    """run_step computed from one version of the weights: True once a step ran with the
    version count ``gen`` (1,) even and unmoved across it. ``tries`` optimistic attempts
    (False if none succeeded); 0, or gen NULL: once, unchecked (the caller holds the
    writer's lock, or the weights have no guard). The carried state h[0] (c[0]) is only
    read, so an attempt can be repeated; the caller carries or copies out the result."""
    cdef long long g = 0
    cdef int k
    if tries <= 0:
        gen = NULL
    for k in range(max(tries, 1)):
        if gen != NULL:
            g = fr_seq_begin(gen, _MAX_YIELDS)
            if g < 0:
                return False
        if is_f32:
            run_step(p, <const float *>xp, <float *>yp, <const float *>zero_hn)
        else:
            run_step(p, <const double *>xp, <double *>yp, <const double *>zero_hn)
        if gen == NULL or not fr_seq_moved(gen, g):
            return True
    return False

# forks seen by this process (a child counts one more than its parent): a stream made
# under another count was made in another process
cdef unsigned long _fork_generation = 0


def _count_fork_in_child():
    global _fork_generation
    _fork_generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_count_fork_in_child)


cdef class Stream:
    """A running recurrent network for ``batch`` streams, one call per time step; build
    it with ``layer.stream()``. ``stream.step(x_t)``: ``x_t (B, I)`` (or ``(I,)`` when
    B = 1) -> the top layer's output ``(B, H)`` (or ``(H,)``), a new array; the state
    stays inside and advances. Reads the layer's parameters in place on every call.

    A stream is built once (calling ``__init__`` again raises RuntimeError). Used in a
    process forked after it was made, it steps on the calling thread alone, with the same
    results. ``reset()`` returns to the zero state; ``get_state()``/``set_state()`` read and
    write the carried state, as :meth:`fastrnn.LSTM.step` takes it.

        >>> import numpy as np
        >>> import fastrnn
        >>> lstm = fastrnn.LSTM(4, 8, num_layers=2, seed=0)
        >>> stream = lstm.stream(batch=3)
        >>> x = np.random.default_rng(0).standard_normal((5, 3, 4)).astype(np.float32)
        >>> for x_t in x:                           # x_t (B, I), one call per step
        ...     y_t = stream.step(x_t)
        >>> y_t.shape
        (3, 8)
        >>> out, _ = lstm(x)                        # the whole sequence at once
        >>> bool(np.allclose(y_t, out[-1], atol=1e-5))
        True
    """
    cdef Plan plan
    cdef LayerPlan *layer_plans
    cdef PyThread_type_lock lock
    cdef readonly object layer
    cdef object arrays          # everything the plan points into, kept alive
    cdef object guard           # the layer's fastrnn.kernels._guard.WeightGuard, or None
    cdef object dtype
    cdef int typenum, I
    cdef bint is_f32, lstm, needs_blas
    cdef bint built             # __init__ has begun: never again
    cdef bint ready             # __init__ finished: the plan is complete
    cdef bint torn              # forked while another thread wrote the state: refuse it
    cdef int writing_state      # the carried state is being written (fr_store_flag)
    cdef unsigned long fork_generation
    cdef readonly int batch
    cdef Py_ssize_t _zero_hn_offset        # bytes into the scratch: H zeros
    cdef const long long *gen              # the layer's weight version (1,), or NULL

    def __cinit__(self):
        self.lock = PyThread_allocate_lock()
        if self.lock == NULL:
            raise MemoryError("could not allocate the stream's lock")

    def __dealloc__(self):
        if self.lock != NULL:
            PyThread_free_lock(self.lock)
        if self.layer_plans != NULL:
            free(self.layer_plans)

    def __init__(self, layer, batch, params, n_threads):
        """Use ``layer.stream()``. ``layer``: a fastrnn RNN, LSTM or GRU (unidirectional);
        ``params``: one dict per layer (W_ih, W_hh, b_ih, b_hh and, for a peephole LSTM,
        p_i, p_f, p_o: aligned C-contiguous arrays of the layer's dtype, or None for absent
        ones); ``n_threads``: a positive int. Every size comes from the kernels' rules for
        the layer's cell and every array is checked against them, because the step reads
        them through raw pointers: a ValueError or TypeError says what does not fit.
        RuntimeError when called on a stream already built."""
        if self.built:
            raise RuntimeError("this Stream is already built; a stream cannot be rebuilt "
                               "(a step in another thread may be reading it): make a new "
                               "one with layer.stream()")
        self.built = True
        spec = _layer_spec(layer, batch, params, n_threads)
        cdef int L = spec.num_layers, l, H = spec.hidden_size
        cdef int B = spec.batch
        cdef Plan *p = &self.plan
        self.layer, self.batch, self.dtype = layer, B, spec.dtype
        self.is_f32 = self.dtype == np.float32
        self.typenum = cnp.NPY_FLOAT32 if self.is_f32 else cnp.NPY_FLOAT64
        self.I = spec.input_size
        self.lstm = spec.cell == "lstm"
        p.cell = {"lstm": CELL_LSTM, "gru": CELL_GRU}.get(
            spec.cell, CELL_RNN_RELU if spec.nonlinearity == "relu" else CELL_RNN_TANH)
        p.L, p.B, p.H = L, B, H
        p.G = spec.gates
        p.GH = p.G * H
        p.coupled = spec.coupled
        p.reset_after = spec.reset_after
        # BLAS runs only for batch > 1 or float64 (batch-1 float32 products are gemv.h)
        self.needs_blas = B > 1 or not self.is_f32
        state = np.zeros((L, 2, 2, B, H), self.dtype)   # layer, (h, c), (in, out)
        scratch = np.zeros((L + 1) * p.GH + 2 * B * H + B * p.GH + H, self.dtype)
        self.arrays = [state, scratch, spec.arrays]
        self.layer_plans = <LayerPlan *>malloc(L * sizeof(LayerPlan))
        if self.layer_plans == NULL:
            raise MemoryError("could not allocate the stream's plan")
        p.layers = self.layer_plans
        cdef char *s0 = cnp.PyArray_BYTES(scratch)
        cdef Py_ssize_t isz = self.dtype.itemsize
        p.gates = s0
        p.side = s0 + B * p.GH * isz
        p.tc = s0 + (B * p.GH + B * H) * isz
        # scratch tail: L fused biases (GH,), then H zeros (b_hn of a bias-free GRU)
        for l in range(L):
            lp = &self.layer_plans[l]
            d = spec.arrays[l]
            _point_at(lp, d, spec.input_size if l == 0 else H)
            lp.h = cnp.PyArray_DATA(state[l, 0])
            lp.c = cnp.PyArray_DATA(state[l, 1]) if self.lstm else NULL
            lp.bias = s0 + (B * p.GH + 2 * B * H + l * p.GH) * isz
        self._zero_hn_offset = (B * p.GH + 2 * B * H + L * p.GH) * isz
        work = sum(B * p.GH * (H + (spec.input_size if l == 0 else H)) for l in range(L))
        p.n_threads = step_threads(spec.n_threads, H, work)
        # the weight version count of fastrnn.kernels._guard, read by every step without the GIL
        self.guard = spec.guard
        self.gen = NULL
        if spec.gen_array is not None:
            self.arrays.append(spec.gen_array)
            self.gen = <const long long *>cnp.PyArray_DATA(spec.gen_array)
        self.fork_generation = _fork_generation
        self.ready = True

    @property
    def guarded(self):
        """True when each step follows the layer's weight version (fastrnn.kernels._guard): a
        step that overlaps a weight replacement is run again from the same state."""
        return self.gen != NULL

    @property
    def n_threads(self):
        """Threads a step runs on (one for small steps: see step_threads; one in
        a process forked after the stream was made)."""
        self._check_process()
        return self.plan.n_threads

    def _state_array(self):
        return self.arrays[0]

    cdef int _check_process(self) except -1:
        """Refuse an unbuilt stream; adopt one made in the parent of this process."""
        if not self.ready:
            raise RuntimeError("this Stream was not built (its __init__ failed or was never "
                               "called): make one with layer.stream()")
        if self.fork_generation != _fork_generation:
            self._adopt_after_fork()
        return 0

    cdef void _adopt_after_fork(self):
        """First use in a forked child: the only thread here is this one, so a held lock
        was held by a thread of the parent that does not exist here; and libgomp's pool
        did not survive the fork, so steps run on this thread alone."""
        cdef PyThread_type_lock fresh
        if PyThread_acquire_lock(self.lock, NOWAIT_LOCK):
            PyThread_release_lock(self.lock)
        else:
            fresh = PyThread_allocate_lock()
            if fresh != NULL:           # else keep the old one: calls will wait (rare OOM)
                PyThread_free_lock(self.lock)
                self.lock = fresh
            if self.writing_state:
                self.torn = True
            self.writing_state = 0
        self.plan.n_threads = 1
        self.fork_generation = _fork_generation

    cdef int _acquire(self) except -1:
        self._check_process()
        if not PyThread_acquire_lock(self.lock, NOWAIT_LOCK):
            with nogil:       # another thread is using this stream: wait without the GIL
                PyThread_acquire_lock(self.lock, WAIT_LOCK)
        return 0

    cdef int _refuse_torn(self) except -1:
        if self.torn:
            raise RuntimeError("this process was forked while another thread was writing "
                               "this stream's state, which is therefore unknown here: "
                               "call reset() or set_state() before stepping")
        return 0

    def step(self, x_t):
        cdef Py_buffer view
        cdef bint have_view = False, unbatched = False
        cdef cnp.npy_intp dims[2]
        cdef const void *xp
        cdef char *zero_hn
        self._check_process()
        zero_hn = <char *>cnp.PyArray_BYTES(self.arrays[1]) + self._zero_hn_offset
        if get_buffer_noraise(x_t, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) == 0:
            have_view = _view_matches(&view, self.is_f32, self.batch, self.I)
            if not have_view:
                PyBuffer_Release(&view)
        else:
            _clear_error()
        if have_view:
            unbatched = view.ndim == 1
            xp = view.buf
        else:   # anything else: the slow path validates and says what was expected
            x_t = self._checked_input(x_t)
            unbatched = x_t.ndim == 1
            xp = cnp.PyArray_DATA(x_t)
        try:
            if unbatched:
                dims[0] = self.plan.H
                y = cnp.PyArray_EMPTY(1, dims, self.typenum, 0)
            else:
                dims[0] = self.batch
                dims[1] = self.plan.H
                y = cnp.PyArray_EMPTY(2, dims, self.typenum, 0)
            if self.needs_blas:
                from ._threads import serial_blas
                with serial_blas:
                    self._run(xp, cnp.PyArray_DATA(y), zero_hn)
            else:
                self._run(xp, cnp.PyArray_DATA(y), zero_hn)
        finally:
            if have_view:
                PyBuffer_Release(&view)
        return y

    cdef int _run(self, const void *xp, void *yp, char *zero_hn) except -1:
        cdef bint done
        self._acquire()
        try:
            self._refuse_torn()
            with nogil:
                done = self._attempt(xp, yp, zero_hn, _NATIVE_TRIES)
        finally:
            PyThread_release_lock(self.lock)
        if done:
            return 0
        # a write is long, or writes keep coming: wait for the writer's lock here, with the
        # GIL (Ctrl-C can interrupt the wait; a count left odd with no writer raises), and
        # step holding it, so that no write can overlap. Lock order: guard, then stream.
        with self.guard.stable():
            self._acquire()
            try:
                self._refuse_torn()
                with nogil:
                    self._attempt(xp, yp, zero_hn, 0)
            finally:
                PyThread_release_lock(self.lock)
        return 0

    cdef bint _attempt(self, const void *xp, void *yp, char *zero_hn, int tries) noexcept nogil:
        """Step under the stream's lock: True once a step computed from one version of the
        weights is carried. ``tries`` optimistic attempts (False if none succeeded, the
        state untouched); 0: once, unchecked (the caller holds the writer's lock)."""
        if not guarded_step(&self.plan, self.gen, self.is_f32, xp, yp, zero_hn, tries):
            return False
        # the step is good: its result becomes the carried state
        fr_store_flag(&self.writing_state, 1)
        carry_units(&self.plan, 4 if self.is_f32 else 8, 0, self.plan.H)
        fr_store_flag(&self.writing_state, 0)
        return True

    def _takes_fast_path(self, x_t):
        """Test hook: whether step() would read x_t in place, without the checked copy."""
        cdef Py_buffer view
        self._check_process()
        if get_buffer_noraise(x_t, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0:
            _clear_error()
            return False
        ok = _view_matches(&view, self.is_f32, self.batch, self.I)
        PyBuffer_Release(&view)
        return ok

    def _checked_input(self, x_t):
        # a list is data in the layer's dtype, as layer.step takes it; an array must already
        # be of that dtype (converting it silently would hide a float64 pipeline)
        x = np.asarray(x_t, dtype=self.dtype) if isinstance(x_t, (list, tuple)) else x_t
        want = (self.batch, self.I)
        alt = f" or {(self.I,)}" if self.batch == 1 else ""
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x_t must be a numpy array of shape {want}{alt} and dtype "
                            f"{self.dtype}, got {type(x_t).__name__}")
        if x.dtype != self.dtype:
            raise TypeError(f"x_t has dtype {x.dtype}, expected {self.dtype} (the layer's)")
        if not (x.shape == want or (self.batch == 1 and x.shape == (self.I,))):
            raise ValueError(f"x_t has shape {x.shape}, expected {want}{alt}")
        x = np.ascontiguousarray(x)
        return x if x.flags.aligned else x.copy()

    def get_state(self):
        """A copy of the carried state as ``layer.step`` takes it: ``h (L, B, H)``, or
        for an LSTM the pair ``(h, c)``."""
        st = self.arrays[0] if self.ready else None
        self._acquire()               # not in the middle of another thread's step
        try:
            self._refuse_torn()
            if self.lstm:
                return st[:, 0, 0].copy(), st[:, 1, 0].copy()
            return st[:, 0, 0].copy()
        finally:
            PyThread_release_lock(self.lock)

    def set_state(self, state):
        """Replace the carried state, in ``get_state``'s form; None: zeros (as
        :meth:`reset`). ValueError if the arrays are not the layer's dtype and shape."""
        self._check_process()
        L, B, H = self.plan.L, self.batch, self.plan.H
        checked = []
        if state is not None:
            if self.lstm and (not isinstance(state, tuple) or len(state) != 2):
                raise ValueError("an LSTM stream's state is a pair (h, c)")
            for part in (state if self.lstm else (state,)):
                a = np.asarray(part)
                if a.shape != (L, B, H) or a.dtype != self.dtype:
                    raise ValueError(f"state arrays must be {self.dtype} of shape {(L, B, H)}, "
                                     f"got {a.dtype} {a.shape}")
                checked.append(a)
        self._write_state(checked)

    def reset(self):
        """Set the carried state to zeros, as a new stream starts (Keras'
        ``reset_states()``; to go back to some other state, ``set_state`` it). The layer's
        weights are not touched."""
        self._write_state([])

    def _write_state(self, parts):
        # parts: checked arrays for h (and c); none: zeros
        st = self.arrays[0] if self.ready else None
        self._acquire()
        try:
            self.writing_state = 1      # a fork meanwhile leaves the child's copy refused
            if not parts:
                st[...] = 0
            for k, a in enumerate(parts):
                st[:, k, 0] = a
            self.writing_state = 0
            self.torn = False
        finally:
            PyThread_release_lock(self.lock)

    def __repr__(self):
        return f"<fastrnn.Stream of {self.layer!r}, batch={self.batch}>"


cdef inline bint _exact(object a, int typenum, int ndim, cnp.npy_intp d0,
                        cnp.npy_intp d1) noexcept:
    """a is a plain ndarray of typenum in native byte order, C-contiguous, aligned, of shape
    (d0,) (ndim 1) or (d0, d1) (ndim 2): what the native step reads through a raw pointer."""
    cdef cnp.ndarray arr
    if not cnp.PyArray_CheckExact(a):
        return False
    arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) != typenum or cnp.PyArray_NDIM(arr) != ndim \
            or not cnp.PyArray_ISCARRAY_RO(arr) or not cnp.PyArray_ISNOTSWAPPED(arr):
        return False
    if cnp.PyArray_DIM(arr, 0) != d0:
        return False
    return ndim == 1 or cnp.PyArray_DIM(arr, 1) == d1


def cell_step(StepPlan plan not None, x, state=None, n_threads=None):
    """fastrnn.functional.cell_step(plan, x, state=None, n_threads=None): the step of
    ``rnn_step``, ``lstm_step`` or ``gru_step`` with the state in the form a cell takes it:
    None (zeros), the array h (RNN, GRU) or exactly a tuple (h, c) of two arrays (LSTM);
    ``n_threads`` as those functions take it. Returns what they return, or None, computing
    nothing, where :meth:`StepPlan.step` would return None or the state has another form:
    call the cell's function then, whose checks say what is wrong. One native call, no
    Python frame: the cells' hot path. (A module function, not a method, so that a wrong
    ``plan`` is refused by its type.)"""
    cdef int nt = 1 if n_threads == 1 and type(n_threads) is int \
        else effective_n_threads(n_threads)
    return plan._state_step(x, state, nt)


# doubles of stack scratch a StepPlan step uses before it mallocs: 32 KiB, a batch-1 LSTM
# step (14 H values of the dtype) up to H=585 in float32, well inside any thread's stack
cdef enum:
    _SMALL_SCRATCH = 4096


cdef class StepPlan:
    """One layer's native step for any batch, the state passed in and returned new: what
    cells, ``layer.step`` and ``SequenceModel.step`` run, through
    ``fastrnn.functional.<cell>_step`` (make one with ``functional.step_plan``). It runs
    the Stream's own step (run_step over a one-layer plan, the same *_step_units as the
    whole-sequence kernels), on state copied into per-call scratch, so calls from several
    threads run concurrently. Built once and immutable (a step reads it without the GIL);
    the weights are read in place on every call, each step from one version of them when
    the layer has a weight guard (the version count, as Stream's steps)."""
    cdef Plan base              # cell, H, G, GH, coupled, reset_after; B, n_threads per call
    cdef LayerPlan lp0          # the weights; h, c, bias point into each call's scratch
    cdef object arrays          # everything the pointers point into, kept alive
    cdef object guard           # the layer's WeightGuard, or None
    cdef const long long *gen   # its version count (1,), or NULL
    cdef char *zero_hn          # (H,) zeros: b_hn of a bias-free GRU
    cdef int typenum, itemsize
    cdef bint is_f32, built
    cdef readonly bint lstm
    cdef readonly str cell
    cdef readonly int input_size, hidden_size
    cdef readonly object dtype

    def __init__(self, cell, params, nonlinearity="tanh", coupled=False, reset_after=False,
                 guard=None):
        """Use ``fastrnn.functional.step_plan``. ``params``: a dict of W_ih, W_hh and
        optionally b_ih, b_hh, p_i, p_f, p_o (aligned C-contiguous arrays of one float
        dtype, checked against the kernels' sizes for the cell); ``guard``: a WeightGuard
        the weights are written under, or None."""
        if self.built:
            raise RuntimeError("a StepPlan cannot be rebuilt: make a new one")
        self.built = True
        s = _plan_spec(cell, params, nonlinearity, coupled, reset_after, guard)
        d = s.arrays[0]
        cdef Plan *p = &self.base
        p.cell = {"lstm": CELL_LSTM, "gru": CELL_GRU}.get(
            s.cell, CELL_RNN_RELU if s.nonlinearity == "relu" else CELL_RNN_TANH)
        p.L, p.B, p.H, p.G = 1, 0, s.hidden_size, s.gates
        p.GH = p.G * p.H
        p.coupled, p.reset_after, p.n_threads = s.coupled, s.reset_after, 1
        self.cell, self.lstm, self.dtype = s.cell, s.cell == "lstm", s.dtype
        self.input_size, self.hidden_size = s.input_size, s.hidden_size
        self.is_f32 = s.dtype == np.float32
        self.typenum = cnp.NPY_FLOAT32 if self.is_f32 else cnp.NPY_FLOAT64
        self.itemsize = s.dtype.itemsize
        zeros = np.zeros(p.H, s.dtype)
        self.arrays = [d, zeros]
        self.zero_hn = cnp.PyArray_BYTES(zeros)
        lp = &self.lp0
        _point_at(lp, d, s.input_size)
        self.guard, self.gen = s.guard, NULL
        if s.gen_array is not None:
            self.arrays.append(s.gen_array)
            self.gen = <const long long *>cnp.PyArray_DATA(s.gen_array)

    @property
    def guarded(self):
        """True when each step follows the weights' version count (fastrnn.kernels._guard)."""
        return self.gen != NULL

    def step(self, x, h, c, int n_threads):
        """x (B, I), or (I,) for one unbatched row; h, c the state in x's batch shape,
        (B, H) or (H,), or None for zeros (c None for RNN and GRU); n_threads: a resolved
        positive count. Returns h' (RNN, GRU) or (h', c') (LSTM), new arrays of x's batch
        shape, the inputs untouched. None, computing nothing, when an input is not exactly
        what the step reads in place (a plain ndarray of the dtype, native byte order,
        C-contiguous, aligned, of these shapes) or the batch exceeds the kernels' 32-bit
        sizes: the caller checks it with its own messages, converts, and calls again."""
        return self._step(x, h, c, n_threads)

    cdef object _state_step(self, x, state, int n_threads):
        if state is None:
            return self._step(x, None, None, n_threads)
        if self.lstm:
            if type(state) is not tuple or len(<tuple>state) != 2:
                return None
            h, c = <tuple>state
            if h is None or c is None:
                return None
            return self._step(x, h, c, n_threads)
        if type(state) is tuple:
            return None
        return self._step(x, state, None, n_threads)

    cdef object _step(self, x, h, c, int n_threads):
        if not self.built or self.lp0.W_ih == NULL:
            raise RuntimeError("this StepPlan was not built: use fastrnn.functional.step_plan")
        cdef int ndim, B, H = self.base.H, GH = self.base.GH, I = self.input_size
        cdef cnp.npy_intp dims[2]
        cdef Py_ssize_t B_
        if not cnp.PyArray_CheckExact(x):
            return None
        ndim = cnp.PyArray_NDIM(<cnp.ndarray>x)
        if ndim == 2:
            B_ = cnp.PyArray_DIM(<cnp.ndarray>x, 0)
        elif ndim == 1:
            B_ = 1
        else:
            return None
        if B_ * max(GH, I, 2 * H) > _INT32_MAX:
            return None
        B = B_
        if ndim == 2:
            if not _exact(x, self.typenum, 2, B, I):
                return None
            dims[0], dims[1] = B, H
        else:
            if not _exact(x, self.typenum, 1, I, 0):
                return None
            dims[0] = H
        if h is not None and not _exact(h, self.typenum, ndim, dims[0], H):
            return None
        if self.lstm:
            if c is not None and not _exact(c, self.typenum, ndim, dims[0], H):
                return None
        elif c is not None:
            return None
        y = cnp.PyArray_EMPTY(ndim, dims, self.typenum, 0)
        cy = cnp.PyArray_EMPTY(ndim, dims, self.typenum, 0) if self.lstm else None
        if B == 0:
            return (y, cy) if self.lstm else y
        if B > 1 or not self.is_f32:        # batch-1 float32 products are gemv.h, not BLAS
            with serial_blas:
                self._run(x, h, c, y, cy, B, n_threads)
        else:
            self._run(x, h, c, y, cy, B, n_threads)
        return (y, cy) if self.lstm else y

    cdef int _run(self, x, h, c, y, cy, int B, int n_threads) except -1:
        cdef Plan p = self.base
        cdef LayerPlan lp = self.lp0
        cdef Py_ssize_t isz = self.itemsize, BH = <Py_ssize_t>B * p.H
        cdef Py_ssize_t n = 4 * BH + <Py_ssize_t>B * p.GH + 2 * BH + p.GH
        cdef double small[_SMALL_SCRATCH]   # on the stack: a small step costs no malloc
        cdef char *buf = <char *>small if n * isz <= sizeof(small) else <char *>malloc(n * isz)
        cdef const void *xp = cnp.PyArray_DATA(<cnp.ndarray>x)
        cdef void *yp = cnp.PyArray_DATA(<cnp.ndarray>y)
        cdef bint done
        if buf == NULL:
            raise MemoryError("could not allocate a step's scratch")
        try:
            # scratch: h (2, B, H), c (2, B, H), gates (B, GH), side (B, H), tc (B, H),
            # fused bias (GH,); [0] of h and c = the state in, [1] = the step's result
            lp.h = buf
            lp.c = buf + 2 * BH * isz if self.lstm else NULL
            p.gates = buf + 4 * BH * isz
            p.side = <char *>p.gates + <Py_ssize_t>B * p.GH * isz
            p.tc = <char *>p.side + BH * isz
            lp.bias = <char *>p.tc + BH * isz
            p.B = B
            p.layers = &lp
            p.n_threads = kernel_threads(n_threads, 1, B, lp.I, p.H, p.GH)
            _state_in(<char *>lp.h, h, BH * isz)
            if self.lstm:
                _state_in(<char *>lp.c, c, BH * isz)
            with nogil:
                done = guarded_step(&p, self.gen, self.is_f32, xp, yp, self.zero_hn,
                                    _NATIVE_TRIES)
            if not done:
                # a long write, or writes keep coming: step holding the writer's lock (a wait
                # Ctrl-C can interrupt; a count left odd with no writer raises)
                with self.guard.stable():
                    with nogil:
                        guarded_step(&p, NULL, self.is_f32, xp, yp, self.zero_hn, 0)
            if self.lstm:
                memcpy(cnp.PyArray_DATA(<cnp.ndarray>cy), <char *>lp.c + BH * isz, BH * isz)
        finally:
            if buf != <char *>small:
                free(buf)
        return 0

    def __reduce__(self):
        raise TypeError("a StepPlan points into its layer's weights and cannot be pickled or "
                        "copied: make one for the copy with fastrnn.functional.step_plan")

    def __repr__(self):
        return (f"<fastrnn StepPlan: {self.cell}, input_size={self.input_size}, "
                f"hidden_size={self.hidden_size}, {self.dtype}>")


cdef inline void _state_in(char *dst, s, Py_ssize_t nbytes):
    # dst[0:nbytes] = the state s (a checked array), or zeros for None
    if s is None:
        memset(dst, 0, nbytes)
    else:
        memcpy(dst, cnp.PyArray_DATA(<cnp.ndarray>s), nbytes)


def _plan_spec(cell, params, nonlinearity, coupled, reset_after, guard):
    """What a StepPlan takes, checked as a Stream's layer is (_layer_spec), for one layer."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of arrays, got {type(params).__name__}")
    W_hh = params.get("W_hh")
    W_ih = params.get("W_ih")
    if not isinstance(W_hh, np.ndarray) or W_hh.ndim != 2 or not isinstance(W_ih, np.ndarray) \
            or W_ih.ndim != 2:
        raise ValueError("params W_ih and W_hh must be 2-D numpy arrays")

    class _Cell:
        pass
    layer = _Cell()
    layer.cell, layer.num_layers, layer.hidden_size = cell, 1, W_hh.shape[1]
    layer.input_size, layer.dtype = W_ih.shape[1], W_ih.dtype
    layer.coupled, layer.reset_after, layer.nonlinearity = coupled, reset_after, nonlinearity
    layer.peephole = "".join(g for g in "ifo" if params.get("p_" + g) is not None)
    layer._guard = guard
    return _layer_spec(layer, 1, [params], 1)


class _Spec:
    """What a Stream takes from its caller, checked: plain values and ndarrays."""
    __slots__ = ("cell", "gates", "hidden_size", "input_size", "num_layers", "batch",
                 "dtype", "coupled", "peephole", "reset_after", "nonlinearity", "n_threads",
                 "arrays", "guard", "gen_array")


_INT32_MAX = 2 ** 31 - 1
_MISSING = object()
_ARRAY_NAMES = ("W_ih", "W_hh", "b_ih", "b_hh", "p_i", "p_f", "p_o")


def _layer_spec(layer, batch, params, n_threads):
    """Everything the plan uses, from a caller's layer object that may lie: each attribute
    read once, every size derived from the kernels' rules for the cell (the gate count
    from cell and coupled, never from ``layer.gates``), every array checked against those
    sizes as a plain ndarray view (a subclass's overridden ``shape`` is not believed).
    Raises ValueError or TypeError naming what does not fit."""
    from ._guard import WeightGuard
    s = _Spec()

    def attr(name, default=_MISSING):
        try:
            return getattr(layer, name) if default is _MISSING else getattr(layer, name, default)
        except AttributeError:
            raise TypeError(f"layer has no attribute {name!r}: a Stream runs a fastrnn RNN, "
                            f"LSTM or GRU layer (use layer.stream()), got "
                            f"{type(layer).__name__}") from None

    cell = attr("cell")
    if type(cell) is not str or cell not in ("rnn", "lstm", "gru"):
        raise ValueError(f"layer.cell must be 'rnn', 'lstm' or 'gru', got {cell!r}")
    s.cell = cell
    if _flag("layer.bidirectional", attr("bidirectional", False)):
        raise ValueError("a Stream runs a unidirectional layer; a bidirectional one needs the "
                         "whole sequence")
    s.hidden_size = _count("layer.hidden_size", attr("hidden_size"))
    s.input_size = _count("layer.input_size", attr("input_size"))
    s.num_layers = _count("layer.num_layers", attr("num_layers"))
    s.batch = _count("batch", batch)
    s.n_threads = _count("n_threads", n_threads)
    dtype = np.dtype(attr("dtype"))
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)) or not dtype.isnative:
        raise TypeError(f"layer.dtype must be float32 or float64, got {dtype}")
    s.dtype = dtype
    s.coupled = _flag("layer.coupled", attr("coupled", False))
    peephole = attr("peephole", "")
    if peephole is False or peephole is None:
        peephole = ""
    if type(peephole) is not str or set(peephole) - set("ifo") or \
            len(set(peephole)) != len(peephole):
        raise ValueError(f"layer.peephole must be a string of distinct gates from 'ifo', "
                         f"got {peephole!r}")
    if cell != "lstm" and (peephole or s.coupled):
        raise ValueError(f"layer.peephole / layer.coupled are LSTM variants; a {cell} layer "
                         "has neither")
    if s.coupled and "f" in peephole:
        raise ValueError("a coupled LSTM has no forget gate: peephole 'f' is not possible")
    s.peephole = peephole
    s.reset_after = _flag("layer.reset_after", attr("reset_after", False)) \
        if cell == "gru" else False
    s.nonlinearity = attr("nonlinearity", "tanh") if cell == "rnn" else "tanh"
    if type(s.nonlinearity) is not str or s.nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"layer.nonlinearity must be 'tanh' or 'relu', got "
                         f"{s.nonlinearity!r}")
    # the kernels' own gate counts (make_shape for the LSTM)
    s.gates = {"rnn": 1, "gru": 3}.get(cell, 3 if s.coupled else 4)
    H, I, G, B = s.hidden_size, s.input_size, s.gates, s.batch
    if G * H * max(I, H) > _INT32_MAX or B * G * H > _INT32_MAX or B * I > _INT32_MAX:
        raise ValueError(f"hidden_size={H}, input_size={I}, batch={B}: a weight matrix or a "
                         "step's buffers exceed the kernels' 32-bit index range")
    s.arrays = _checked_arrays(s, params)
    guard = attr("_guard", None)
    s.guard, s.gen_array = None, None
    if guard is not None:
        if not isinstance(guard, WeightGuard):
            raise TypeError(f"layer._guard must be a fastrnn.kernels._guard.WeightGuard, got "
                            f"{type(guard).__name__}")
        gen = guard.gen_array
        gen = np.ndarray.view(gen, np.ndarray) if isinstance(gen, np.ndarray) else None
        if gen is None or gen.dtype != np.int64 or gen.shape != (1,) \
                or not gen.flags.c_contiguous or not gen.flags.aligned:
            raise ValueError("layer._guard.gen_array must be one aligned int64")
        s.guard, s.gen_array = guard, gen
    return s


def _checked_arrays(s, params):
    """params -> one dict per layer of every array name (None where absent), each a plain
    ndarray of the dtype, C-contiguous, aligned and of the shape the kernel indexes."""
    if not isinstance(params, (list, tuple)):
        raise TypeError(f"params must be a list of dicts, one per layer, got "
                        f"{type(params).__name__}")
    params = list(params)
    if len(params) != s.num_layers:
        raise ValueError(f"params: one dict per layer ({s.num_layers}) expected, got "
                         f"{len(params)}")
    H, GH = s.hidden_size, s.gates * s.hidden_size
    optional = {"b_ih", "b_hh"} | {"p_" + g for g in "ifo" if g not in s.peephole}
    out = []
    for l, d in enumerate(params):
        if not isinstance(d, dict):
            raise TypeError(f"params[{l}] must be a dict of arrays, got {type(d).__name__}")
        unknown = [k for k in list(d) if k not in _ARRAY_NAMES]
        if unknown:
            raise ValueError(f"layer {l}: unknown array names {unknown} (expected some of "
                             f"{list(_ARRAY_NAMES)})")
        I = s.input_size if l == 0 else H
        want = {"W_ih": (GH, I), "W_hh": (GH, H), "b_ih": (GH,), "b_hh": (GH,),
                "p_i": (H,), "p_f": (H,), "p_o": (H,)}
        arrays = {}
        for name in _ARRAY_NAMES:
            a = d.get(name)                 # read once: what is checked is what is used
            if a is None:
                if name not in optional:
                    raise ValueError(f"layer {l}: {name} is missing")
                arrays[name] = None
                continue
            if name.startswith("p_") and name[2] not in s.peephole:
                raise ValueError(f"layer {l}: {name} given, but the layer has no such peephole")
            if not isinstance(a, np.ndarray):
                raise TypeError(f"layer {l}: {name} must be a numpy array, got "
                                f"{type(a).__name__}")
            a = np.ndarray.view(a, np.ndarray)
            if a.dtype != s.dtype or a.shape != want[name] or not a.flags.c_contiguous \
                    or not a.flags.aligned:
                raise ValueError(f"layer {l}: {name} must be an aligned C-contiguous "
                                 f"{s.dtype} array of shape {want[name]}, got {a.dtype} "
                                 f"{a.shape}")
            arrays[name] = a
        if (arrays["b_ih"] is None) != (arrays["b_hh"] is None):
            raise ValueError(f"layer {l}: give both biases or neither")
        out.append(arrays)
    return out


def _count(name, v):
    """A positive int that fits the kernels' 32-bit sizes (bools refused)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= _INT32_MAX:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def _flag(name, v):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    raise TypeError(f"{name} must be True or False, got {v!r}")


cdef void _point_at(LayerPlan *lp, dict d, int I):
    """Point ``lp`` at one layer's checked arrays ``d`` (W_ih, W_hh, b_ih, b_hh, p_i, p_f,
    p_o; None for an absent one) and record its input size: Stream and StepPlan alike."""
    lp.I = I
    lp.W_ih = _ptr(d["W_ih"])
    lp.W_hh = _ptr(d["W_hh"])
    lp.b_ih = _ptr(d["b_ih"])
    lp.b_hh = _ptr(d["b_hh"])
    lp.p_i = _ptr(d["p_i"])
    lp.p_f = _ptr(d["p_f"])
    lp.p_o = _ptr(d["p_o"])


cdef const void *_ptr(a):
    if a is None:
        return NULL
    return cnp.PyArray_DATA(a)


cdef bint _view_matches(Py_buffer *v, bint is_f32, int batch, int I):
    # the fast path: a C-contiguous (B, I) buffer, or (I,) when B == 1, of the right type
    cdef char code
    if is_f32:
        code = b'f'
    else:
        code = b'd'
    if v.format == NULL or v.format[0] != code or v.format[1] != 0:
        return False
    if v.itemsize != (4 if is_f32 else 8):
        return False
    if (<size_t>v.buf) % v.itemsize:    # misaligned (an odd byte offset): the checked copy
        return False
    if v.ndim == 2:
        return v.shape[0] == batch and v.shape[1] == I
    return v.ndim == 1 and batch == 1 and v.shape[0] == I


cdef extern from "Python.h":
    void PyErr_Clear()
    # PyObject_GetBuffer returning -1 instead of raising: failure sends the input down the
    # validating slow path
    int get_buffer_noraise "PyObject_GetBuffer"(object obj, Py_buffer *view, int flags)


cdef void _clear_error():
    PyErr_Clear()
