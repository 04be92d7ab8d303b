/* Run-time choice of the vector code paths.
 *
 * The build targets plain x86-64 (no -march flags), so a wheel built here runs on any
 * x86-64 CPU. The AVX2/FMA kernels are compiled for that target alone through function
 * attributes and chosen here, once, from the CPU's features (AVX-512F, where present, for
 * the batch-1 matrix-vector product and the activations). FASTRNN_SIMD=0 in the
 * environment forces the plain C paths and FASTRNN_SIMD=avx2 the AVX2 ones, so the tests
 * run every path on a machine that has AVX-512 (tests/test_simd_paths.py).
 */
#ifndef FASTRNN_CPU_H
#define FASTRNN_CPU_H

#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define FASTRNN_X86_DISPATCH 1
#include <immintrin.h>
#define FR_AVX2 __attribute__((target("avx2,fma")))
#define FR_AVX512 __attribute__((target("avx512f,avx2,fma")))
#else
#define FASTRNN_X86_DISPATCH 0
#endif

/* 1 when the AVX2/FMA paths run: the CPU has both and FASTRNN_SIMD is not "0".
 * Read once per extension module; the race on first use writes the same value. */
static int fr_have_avx2_fma(void) {
    static int cached = -1;
    if (cached < 0) {
        int have = 0;
#if FASTRNN_X86_DISPATCH
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
        const char *env = getenv("FASTRNN_SIMD");
        if (env != NULL && env[0] == '0' && env[1] == '\0')
            have = 0;
        cached = have;
    }
    return cached;
}

/* 1 when the AVX-512F paths run (as above, and only where AVX2/FMA paths do) */
static int fr_have_avx512(void) {
    static int cached = -1;
    if (cached < 0) {
        int have = 0;
#if FASTRNN_X86_DISPATCH
        have = fr_have_avx2_fma() && __builtin_cpu_supports("avx512f");
#endif
        const char *env = getenv("FASTRNN_SIMD");
        if (env != NULL && strcmp(env, "avx2") == 0)
            have = 0;
        cached = have;
    }
    return cached;
}

#endif /* FASTRNN_CPU_H */
