/* fastrnn's thread pool: the work of a kernel as phases of chunks, claimed one at a time.
 *
 * Why not OpenMP's parallel region with a barrier per step: a static schedule gives each
 * thread its share of every step before the step starts, so a thread the operating system
 * has descheduled (another process busy on its core, another library's pool spinning in
 * this process) holds up every step until it runs again, and the barrier's spinning takes
 * the core others want. Measured (AMD EPYC, 2 cores, LSTM B=1 H=256 T=100): 1.5 ms alone,
 * 5.6 ms beside ONNX Runtime's pool.
 *
 * Here a job is n_phases x n_chunks calls fn(ctx, phase, chunk); every chunk of a phase
 * finishes before any chunk of the next starts (a time step reads all of the previous
 * step's state). Each thread of the team has home chunks, the same in every phase (thread
 * i of n: chunks [i*C/n, (i+1)*C/n)), so the weight rows a chunk reads stay in that core's
 * cache from step to step; a thread that has done its own claims the others' that nobody
 * has claimed yet, from the end of their ranges. The calling thread always takes part, so
 * a job finishes even if no worker ever runs, and a worker that is not running holds up
 * nothing it has not claimed: its home chunks are taken over each phase. Which thread
 * runs a chunk never changes its result: a chunk's bounds come from the job, not the team.
 *
 * Counters: a chunk is claimed by raising its stamp with a compare-and-swap, so it runs
 * once per phase. Stamps come from one 64-bit count that every job advances by its number
 * of phases and that never wraps (the 32-bit generation is only the futex word and the
 * "a new job" signal), so a worker late from an earlier job, whose stamps are all below
 * its own job's last ones, can never claim a chunk of a later job; `done` = chunks finished in this job, from which
 * a thread joining late reads the phase under way. Jobs' fields alternate between two
 * slots, read and then checked against the generation, so a late reader never uses a
 * half-written job. Waits spin briefly, then yield; idle workers spin ~50 us after a job
 * (the next step or call usually comes sooner), then sleep on a futex, so they never keep
 * a core from the rest of the machine. One job runs at a time: a second caller meanwhile
 * (another Python thread) runs its job alone, on its own thread, with the same results.
 * After fork() the child has no workers; the pool starts afresh there.
 *
 * Linux uses futex(2); elsewhere idle workers poll with a short sleep.
 */
#ifndef FASTRNN_POOL_H
#define FASTRNN_POOL_H

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <time.h>
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FR_PAUSE() _mm_pause()
#else
#define FR_PAUSE() ((void)0)
#endif

typedef void (*fr_chunk_fn)(void *ctx, int phase, int chunk);

#define FR_POOL_MAX_WORKERS 63
#define FR_POOL_MAX_CHUNKS 256           /* per phase; a larger job runs on the caller */
#define FR_IDLE_SPIN_NS 50000            /* an idle worker's spin before it sleeps */
#define FR_WAIT_SPINS 2000               /* pauses in a wait before each yield */
#define FR_STALL_MIN_NS 20000            /* a phase this late past a thread's own work: stalled */
#define FR_BENCH_MIN_NS 1000000          /* a worker that stalled a phase sits out 1 ms, */
#define FR_BENCH_MAX_NS 200000000        /* doubling on each stall after it came back, to 200 ms */

typedef struct {
    fr_chunk_fn fn;
    void *ctx;
    int n_phases, n_chunks, team;        /* team: the caller and team - 1 workers */
    uint64_t base;                       /* phase p's stamp: base + p + 1 */
    int caller_cpu;                      /* where the caller posted it from, or -1 */
    signed char slot[FR_POOL_MAX_WORKERS + 1];  /* worker i's place in the team, or -1 */
} fr_job_t;

/* a chunk's claim (stamp), its end (finished = the stamp once it ran), and who claimed it;
   a cache line each */
typedef struct { uint64_t stamp, finished; int owner; char pad[44]; } fr_stamp_t;

typedef struct {
    /* written by the caller once per job, read by everyone */
    uint32_t gen __attribute__((aligned(64)));   /* job generation; the futex word */
    uint64_t next_stamp;                 /* the count stamps are taken from (callers only) */
    fr_job_t jobs[2];                    /* job gen lives in jobs[gen & 1] */
    /* written by every chunk */
    int64_t done __attribute__((aligned(64)));
    /* workers' bookkeeping */
    int sleepers __attribute__((aligned(64)));
    int busy;                            /* 1 while a job runs */
    int n_workers;                       /* workers started (under grow_lock) */
    pthread_mutex_t grow_lock;
    fr_stamp_t stamps[FR_POOL_MAX_CHUNKS];
    /* chunks run by team member i (0: callers) since the last fr_pool_take_counts: how
       the work was shared, for tests and benchmarks */
    int64_t ran[FR_POOL_MAX_WORKERS + 1];
    /* worker i takes no part in jobs until this time (ns): it stalled a phase lately; how
       long its next sit-out lasts; the job in which it last stalled one */
    int64_t benched_until[FR_POOL_MAX_WORKERS + 1];
    int64_t bench_ns[FR_POOL_MAX_WORKERS + 1];
    uint32_t stalled_in[FR_POOL_MAX_WORKERS + 1];
} fr_pool_t;

static fr_pool_t fr_pool = {.grow_lock = PTHREAD_MUTEX_INITIALIZER};
static pthread_once_t fr_pool_once = PTHREAD_ONCE_INIT;

#define FR_LOAD(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define FR_LOAD_RELAXED(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define FR_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)

static int64_t fr_now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void fr_futex_wait(uint32_t *word, uint32_t expected) {
#if defined(__linux__)
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
#else
    struct timespec t = {0, 200000};
    (void)word; (void)expected;
    nanosleep(&t, NULL);
#endif
}

/* the CPU this thread runs on, or -1 */
static int fr_cpu(void) {
#if defined(__linux__) && defined(SYS_getcpu)
    unsigned cpu = 0;
    return syscall(SYS_getcpu, &cpu, NULL, NULL) == 0 ? (int)cpu : -1;
#else
    return -1;
#endif
}

/* A worker woken from its futex is often put on its waker's CPU (the scheduler's wake-
   affine choice, seen here on a 2-vCPU machine with the other CPU idle), where it cannot
   run until the caller's job ends or yields: measured, it joined a 100-step job 1.5 ms
   late, every time. If it finds itself on the caller's CPU, it leaves it: its affinity
   set to the allowed CPUs but that one (the move happens then), then restored. */
static void fr_leave_cpu(int cpu) {
#if defined(__linux__) && defined(SYS_sched_getaffinity)
    unsigned long mask[16], others[16];
    long n = syscall(SYS_sched_getaffinity, 0, sizeof(mask), mask);
    if (n <= 0 || cpu < 0 || cpu >= (int)(8 * sizeof(mask))) return;
    int any = 0;
    for (int i = 0; i < 16; i++) {
        others[i] = i < n / (long)sizeof(long) ? mask[i] : 0;
        if (i == cpu / (int)(8 * sizeof(long)))
            others[i] &= ~(1ul << (cpu % (8 * sizeof(long))));
        any |= others[i] != 0;
    }
    if (!any) return;                                   /* the caller's CPU is all we have */
    if (syscall(SYS_sched_setaffinity, 0, (size_t)n, others) == 0)
        syscall(SYS_sched_setaffinity, 0, (size_t)n, mask);
#else
    (void)cpu;
#endif
}

static void fr_futex_wake(uint32_t *word) {
#if defined(__linux__)
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, FR_POOL_MAX_WORKERS, NULL, NULL, 0);
#else
    (void)word;
#endif
}

/* wait until done >= target, or job gen is over: spin, and yield between bursts (the
   thread we wait for may need this core) */
static void fr_wait_done(fr_pool_t *p, uint32_t gen, int64_t target) {
    for (;;) {
        for (int i = 0; i < FR_WAIT_SPINS; i++) {
            if (__atomic_load_n(&p->done, __ATOMIC_ACQUIRE) >= target) return;
            FR_PAUSE();
        }
        if (FR_LOAD(&p->gen) != gen) return;
        sched_yield();
    }
}

/* wait until done >= target, for at most `ns` nanoseconds; 1 if it got there */
static int fr_wait_done_for(fr_pool_t *p, int64_t target, int64_t ns) {
    int64_t until = fr_now_ns() + ns;
    for (int i = 1;; i++) {
        if (__atomic_load_n(&p->done, __ATOMIC_ACQUIRE) >= target) return 1;
        FR_PAUSE();
        if (i % 32 == 0 && fr_now_ns() > until) return 0;
    }
}

/* fr_wait_done for the end of a phase whose stamp this is: if it has not ended `stall_ns`
   after the wait began, a worker holding one of its chunks was descheduled mid-chunk
   (another process, another pool wants its core): that worker sits out jobs for a while
   (1 ms, doubled each time it stalls again after coming back; a job it takes part in
   without a stall resets it), so the rest of this job and the next ones do not wait for
   it again, and a one-off hiccup costs little */
static void fr_wait_phase(fr_pool_t *p, uint32_t gen, int64_t target, uint64_t stamp, int n,
                          int64_t stall_ns) {
    if (fr_wait_done_for(p, target, stall_ns)) return;
    int64_t now = fr_now_ns();
    for (int c = 0; c < n; c++) {
        fr_stamp_t *st = &p->stamps[c];
        if (FR_LOAD(&st->stamp) == stamp && FR_LOAD(&st->finished) != stamp) {
            int w = FR_LOAD_RELAXED(&st->owner);
            if (w <= 0 || FR_LOAD(&p->stalled_in[w]) == gen) continue;   /* once a job */
            FR_STORE(&p->stalled_in[w], gen);
            int64_t len = FR_LOAD(&p->bench_ns[w]);
            if (len < FR_BENCH_MIN_NS) len = FR_BENCH_MIN_NS;
            FR_STORE(&p->benched_until[w], now + len);
            FR_STORE(&p->bench_ns[w], 2 * len < FR_BENCH_MAX_NS ? 2 * len : FR_BENCH_MAX_NS);
        }
    }
    fr_wait_done(p, gen, target);
}

/* run chunk c of the phase whose stamp this is, unless another thread has claimed it;
   1 if this thread (worker index me, 0 for the caller) ran it */
static inline int fr_try_chunk(fr_pool_t *p, const fr_job_t *j, uint64_t stamp, int phase,
                               int c, int me) {
    uint64_t *slot = &p->stamps[c].stamp;
    uint64_t old = FR_LOAD_RELAXED(slot);
    while (old < stamp) {
        if (__atomic_compare_exchange_n(slot, &old, stamp, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_RELAXED)) {
            FR_STORE(&p->stamps[c].owner, me);
            j->fn(j->ctx, phase, c);
            FR_STORE(&p->stamps[c].finished, stamp);
            __atomic_add_fetch(&p->ran[me], 1, __ATOMIC_RELAXED);
            __atomic_add_fetch(&p->done, 1, __ATOMIC_SEQ_CST);  /* ctx not touched after */
            return 1;
        }
    }
    return 0;
}

/* worker `me` (0: the caller) in place `slot` of job gen's team: every phase, its home
   chunks; then, if the phase is not done within the time its own chunks took (their
   owners are late: descheduled, or not yet awake), the others' that nobody has claimed,
   from the end of their ranges. A thread that had to take over chunks does so at once in
   the next phase, until it finds none left: stealing early would cost the owners' cache
   locality, stealing late a wait. A worker benched meanwhile leaves the job. */
static void fr_pool_work(fr_pool_t *p, uint32_t gen, const fr_job_t *j, int slot, int me) {
    const int n = j->n_chunks, team = j->team;
    const int h0 = slot * n / team, h1 = (slot + 1) * n / team;
    int eager = 0;
    for (;;) {
        int phase = (int)(FR_LOAD(&p->done) / n);
        if (phase >= j->n_phases || FR_LOAD(&p->gen) != gen) return;
        uint64_t stamp = j->base + (uint64_t)phase + 1;
        int64_t target = (int64_t)(phase + 1) * n, start = fr_now_ns();
        if (me > 0 && FR_LOAD_RELAXED(&p->benched_until[me]) > start) return;
        for (int c = h0; c < h1; c++)
            fr_try_chunk(p, j, stamp, phase, c, me);
        int64_t own = fr_now_ns() - start;
        if (eager || !fr_wait_done_for(p, target, own > 1000 ? own : 1000)) {
            int taken = 0;
            for (int k = 1; k < team; k++) {
                int o = (slot + k) % team, o0 = o * n / team, o1 = (o + 1) * n / team;
                for (int c = o1 - 1; c >= o0; c--)
                    taken += fr_try_chunk(p, j, stamp, phase, c, me);
            }
            eager = taken > 0;
        }
        fr_wait_phase(p, gen, target, stamp, n,
                      4 * own > FR_STALL_MIN_NS ? 4 * own : FR_STALL_MIN_NS);
    }
}

static void *fr_worker_main(void *arg) {
    fr_pool_t *p = &fr_pool;
    /* arg: (the generation when it was started << 32) | its index; the caller is 0. The
       job its starter is about to post is the first it joins. */
    int me = (int)((uint64_t)(uintptr_t)arg & 0xffffffffu) + 1;
    uint32_t seen = (uint32_t)((uint64_t)(uintptr_t)arg >> 32);
#if defined(__linux__)
    prctl(PR_SET_NAME, "fastrnn-pool", 0, 0, 0);       /* named in top, perf, /proc */
#endif
#if defined(__linux__) && defined(SYS_sched_getaffinity)
    /* a new thread inherits its creator's CPUs: a worker started by a thread pinned to one
       CPU would stay there for good. Take the process's (its main thread's) instead. */
    unsigned long cpus[16];
    long n = syscall(SYS_sched_getaffinity, (pid_t)getpid(), sizeof(cpus), cpus);
    if (n > 0) syscall(SYS_sched_setaffinity, 0, (size_t)n, cpus);
#endif
    for (;;) {
        /* sitting out (it stalled a phase lately): no jobs to wait for, so neither spin nor
           count as a sleeper to wake (a caller's wake and yield would be for nothing);
           look again every millisecond until the time is up */
        int64_t start = fr_now_ns(), until = FR_LOAD_RELAXED(&p->benched_until[me]);
        if (until > start) {
            struct timespec nap = {0, until - start < 1000000 ? (long)(until - start) : 1000000};
            nanosleep(&nap, NULL);
            seen = FR_LOAD(&p->gen);
            continue;
        }
        /* idle: spin a little for the next job, then sleep until one is posted */
        uint32_t gen;
        int spins = 0;
        while ((gen = FR_LOAD(&p->gen)) == seen) {
            FR_PAUSE();
            if (++spins % 64 == 0 && fr_now_ns() - start > FR_IDLE_SPIN_NS) {
                __atomic_add_fetch(&p->sleepers, 1, __ATOMIC_SEQ_CST);
                fr_futex_wait(&p->gen, seen);           /* returns at once if gen moved */
                __atomic_sub_fetch(&p->sleepers, 1, __ATOMIC_SEQ_CST);
                start = fr_now_ns();
            }
        }
        seen = gen;
        /* the job's fields, then the generation again: if a later job was posted
           meanwhile, what was read may be half of it, and this one is over anyway */
        fr_job_t j;
        const fr_job_t *src = &p->jobs[gen & 1];
        j.fn = FR_LOAD_RELAXED(&src->fn);
        j.ctx = FR_LOAD_RELAXED(&src->ctx);
        j.n_phases = FR_LOAD_RELAXED(&src->n_phases);
        j.n_chunks = FR_LOAD_RELAXED(&src->n_chunks);
        j.team = FR_LOAD_RELAXED(&src->team);
        j.base = FR_LOAD_RELAXED(&src->base);
        int slot = FR_LOAD_RELAXED(&src->slot[me]);
        int caller_cpu = FR_LOAD_RELAXED(&src->caller_cpu);
        /* the field loads above stay before the recheck on weakly ordered CPUs too */
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (FR_LOAD(&p->gen) == gen && slot > 0) {
            if (caller_cpu >= 0 && fr_cpu() == caller_cpu) fr_leave_cpu(caller_cpu);
            fr_pool_work(p, gen, &j, slot, me);
        }
    }
    return NULL;
}

static void fr_pool_after_fork_child(void) {
    /* the child has only the forking thread: no workers, no job under way */
    fr_pool.n_workers = 0;
    fr_pool.busy = 0;
    fr_pool.sleepers = 0;
    pthread_mutex_init(&fr_pool.grow_lock, NULL);
}

static void fr_pool_init(void) {
    pthread_atfork(NULL, NULL, fr_pool_after_fork_child);
}

/* start workers until there are n (fewer if the system refuses threads) */
static void fr_pool_grow(fr_pool_t *p, int n) {
    if (n > FR_POOL_MAX_WORKERS) n = FR_POOL_MAX_WORKERS;
    pthread_mutex_lock(&p->grow_lock);
    while (p->n_workers < n) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        uint64_t arg = ((uint64_t)FR_LOAD(&p->gen) << 32) | (uint32_t)p->n_workers;
        int rc = pthread_create(&t, &attr, fr_worker_main, (void *)(uintptr_t)arg);
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        p->n_workers++;
    }
    pthread_mutex_unlock(&p->grow_lock);
}

/* Run fn(ctx, phase, chunk) for every phase < n_phases and chunk < n_chunks, phase by
   phase, on the calling thread and up to n_threads - 1 workers. Returns the size of the
   team the job was offered to (1: it ran on the caller alone, as a job of one chunk per
   phase always does: a second thread could only wait on it). */
static int fr_pool_run(int n_threads, int n_phases, int n_chunks, fr_chunk_fn fn, void *ctx) {
    fr_pool_t *p = &fr_pool;
    if (n_phases <= 0 || n_chunks <= 0) return 1;
    int expected = 0;
    /* the fork handler first, so that no fork can come between taking `busy` and it */
    if (n_threads > 1) pthread_once(&fr_pool_once, fr_pool_init);
    if (n_threads <= 1 || n_chunks > FR_POOL_MAX_CHUNKS ||
            (int64_t)n_phases * n_chunks >= INT32_MAX || n_chunks == 1 ||
            !__atomic_compare_exchange_n(&p->busy, &expected, 1, 0, __ATOMIC_SEQ_CST,
                                         __ATOMIC_SEQ_CST)) {
        for (int ph = 0; ph < n_phases; ph++)
            for (int c = 0; c < n_chunks; c++)
                fn(ctx, ph, c);
        return 1;
    }
    if (p->n_workers < n_threads - 1) fr_pool_grow(p, n_threads - 1);
    /* the team: the caller, and each of the first n_threads - 1 workers not sitting out */
    int64_t now = fr_now_ns();
    int team = 1;
    signed char slot[FR_POOL_MAX_WORKERS + 1];
    slot[0] = 0;
    for (int w = 1; w <= FR_POOL_MAX_WORKERS; w++)
        slot[w] = (w < n_threads && w <= p->n_workers &&
                   FR_LOAD_RELAXED(&p->benched_until[w]) <= now) ? (signed char)team++ : -1;
    if (team == 1) {
        FR_STORE(&p->busy, 0);
        for (int ph = 0; ph < n_phases; ph++)
            for (int c = 0; c < n_chunks; c++)
                fn(ctx, ph, c);
        return 1;
    }
    uint32_t gen = FR_LOAD(&p->gen) + 1;                /* wraps harmlessly, see above */
    fr_job_t *j = &p->jobs[gen & 1];
    FR_STORE(&j->base, p->next_stamp);
    p->next_stamp += (uint64_t)n_phases;
    FR_STORE(&j->fn, fn);
    FR_STORE(&j->ctx, ctx);
    FR_STORE(&j->n_phases, n_phases);
    FR_STORE(&j->n_chunks, n_chunks);
    FR_STORE(&j->team, team);
    FR_STORE(&j->caller_cpu, fr_cpu());
    for (int w = 0; w <= FR_POOL_MAX_WORKERS; w++) FR_STORE(&j->slot[w], slot[w]);
    FR_STORE(&p->done, 0);
    FR_STORE(&p->gen, gen);                             /* publishes the job */
    if (FR_LOAD(&p->sleepers) > 0) {
        fr_futex_wake(&p->gen);
        /* a woken worker may have been queued on this CPU (see fr_leave_cpu): let it run
           now, so that it can see that and move, rather than after this job */
        sched_yield();
    }
    fr_pool_work(p, gen, j, 0, 0);
    fr_wait_done(p, gen, (int64_t)n_phases * n_chunks);
    for (int w = 1; w <= FR_POOL_MAX_WORKERS; w++)     /* a clean job: sit-outs start over */
        if (slot[w] > 0 && FR_LOAD(&p->stalled_in[w]) != gen)
            FR_STORE(&p->bench_ns[w], FR_BENCH_MIN_NS);
    FR_STORE(&p->busy, 0);
    return team;
}

/* counts[i] = chunks team member i ran since the last call (i < n), then zero them */
static void fr_pool_take_counts(int64_t *counts, int n) {
    for (int i = 0; i < n && i <= FR_POOL_MAX_WORKERS; i++)
        counts[i] = __atomic_exchange_n(&fr_pool.ran[i], 0, __ATOMIC_RELAXED);
}

#endif /* FASTRNN_POOL_H */
