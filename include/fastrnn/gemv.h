/* Matrix-vector product for batch-1 steps: y (m,) = A (m, k) @ x (k,) + beta * y,
 * A row-major with row stride lda, float32.
 *
 * Why not BLAS: at batch 1 a step's products are small (H=64: 256 x 64) and a BLAS call
 * costs about as much as the arithmetic; OpenBLAS's sgemv also ran at about half of one
 * core's peak here (../shared/peers/README.md). The weights of a small model sit in L2, so
 * the work is loads and FMAs: eight rows at a time share each load of x, and eight
 * independent accumulators cover the FMA latency.
 *
 * Every row is summed in the same order (8-lane partial sums over k, the tail through a
 * masked load, then a fixed reduction tree), whatever m is and wherever the row sits, so
 * splitting the rows between threads gives bit-identical results. Rows past m in the last
 * block re-read row m-1 and are dropped; masked loads never touch memory past a row.
 *
 * The plain C path (no AVX2/FMA, or FASTRNN_SIMD=0) is a simple loop; it rounds
 * differently, within float32 accuracy.
 */
#ifndef FASTRNN_GEMV_H
#define FASTRNN_GEMV_H

#include "cpu.h"

static void fr_gemv_f32_plain(int m, int k, const float *A, int lda, const float *x,
                              float beta, float *y) {
    for (int r = 0; r < m; r++) {
        const float *row = A + (size_t)r * lda;
        float acc = 0.0f;
        for (int j = 0; j < k; j++) acc += row[j] * x[j];
        y[r] = beta == 0.0f ? acc : acc + beta * y[r];   /* beta 0 ignores y, as BLAS does */
    }
}

#if FASTRNN_X86_DISPATCH
/* lanes [0, n) set, n in [0, 8] */
FR_AVX2 static inline __m256i fr_tail_mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* the eight lane sums of a0..a7, in order, as one vector */
FR_AVX2 static inline __m256 fr_hsum8x8(__m256 a0, __m256 a1, __m256 a2, __m256 a3,
                                        __m256 a4, __m256 a5, __m256 a6, __m256 a7) {
    __m256 t0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    __m256 t1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
    /* t0 = [sums of rows 0-3 over lanes 0-3 | the same over lanes 4-7], t1 rows 4-7 */
    return _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20),
                         _mm256_permute2f128_ps(t0, t1, 0x31));
}

FR_AVX2 static void fr_gemv_f32_avx2(int m, int k, const float *A, int lda, const float *x,
                                     float beta, float *y) {
    const int k8 = k & ~7;
    const __m256i tail = fr_tail_mask(k - k8);
    for (int r = 0; r < m; r += 8) {
        const float *p[8];
        for (int i = 0; i < 8; i++)
            p[i] = A + (size_t)(r + i < m ? r + i : m - 1) * lda;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        __m256 a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        for (int j = 0; j < k8; j += 8) {
            __m256 xv = _mm256_loadu_ps(x + j);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(p[0] + j), xv, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(p[1] + j), xv, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(p[2] + j), xv, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(p[3] + j), xv, a3);
            a4 = _mm256_fmadd_ps(_mm256_loadu_ps(p[4] + j), xv, a4);
            a5 = _mm256_fmadd_ps(_mm256_loadu_ps(p[5] + j), xv, a5);
            a6 = _mm256_fmadd_ps(_mm256_loadu_ps(p[6] + j), xv, a6);
            a7 = _mm256_fmadd_ps(_mm256_loadu_ps(p[7] + j), xv, a7);
        }
        if (k8 < k) {
            __m256 xv = _mm256_maskload_ps(x + k8, tail);
            a0 = _mm256_fmadd_ps(_mm256_maskload_ps(p[0] + k8, tail), xv, a0);
            a1 = _mm256_fmadd_ps(_mm256_maskload_ps(p[1] + k8, tail), xv, a1);
            a2 = _mm256_fmadd_ps(_mm256_maskload_ps(p[2] + k8, tail), xv, a2);
            a3 = _mm256_fmadd_ps(_mm256_maskload_ps(p[3] + k8, tail), xv, a3);
            a4 = _mm256_fmadd_ps(_mm256_maskload_ps(p[4] + k8, tail), xv, a4);
            a5 = _mm256_fmadd_ps(_mm256_maskload_ps(p[5] + k8, tail), xv, a5);
            a6 = _mm256_fmadd_ps(_mm256_maskload_ps(p[6] + k8, tail), xv, a6);
            a7 = _mm256_fmadd_ps(_mm256_maskload_ps(p[7] + k8, tail), xv, a7);
        }
        __m256 s = fr_hsum8x8(a0, a1, a2, a3, a4, a5, a6, a7);
        int n = m - r < 8 ? m - r : 8;
        __m256i out = fr_tail_mask(n);
        if (beta != 0.0f)
            s = _mm256_fmadd_ps(_mm256_set1_ps(beta), _mm256_maskload_ps(y + r, out), s);
        _mm256_maskstore_ps(y + r, out, s);
    }
}

/* AVX-512: sixteen lanes per load, same row blocking; where the CPU has it this reaches
 * L2's bandwidth (256 x 64: 0.57 us against 0.68 us for the AVX2 path, 115 GB/s). */
FR_AVX512 static void fr_gemv_f32_avx512(int m, int k, const float *A, int lda,
                                         const float *x, float beta, float *y) {
    const int k16 = k & ~15;
    const __mmask16 tail = (__mmask16)((1u << (k - k16)) - 1u);
    for (int r = 0; r < m; r += 8) {
        const float *p[8];
        for (int i = 0; i < 8; i++)
            p[i] = A + (size_t)(r + i < m ? r + i : m - 1) * lda;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        __m512 a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        for (int j = 0; j < k16; j += 16) {
            __m512 xv = _mm512_loadu_ps(x + j);
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(p[0] + j), xv, a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(p[1] + j), xv, a1);
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(p[2] + j), xv, a2);
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(p[3] + j), xv, a3);
            a4 = _mm512_fmadd_ps(_mm512_loadu_ps(p[4] + j), xv, a4);
            a5 = _mm512_fmadd_ps(_mm512_loadu_ps(p[5] + j), xv, a5);
            a6 = _mm512_fmadd_ps(_mm512_loadu_ps(p[6] + j), xv, a6);
            a7 = _mm512_fmadd_ps(_mm512_loadu_ps(p[7] + j), xv, a7);
        }
        if (k16 < k) {
            __m512 xv = _mm512_maskz_loadu_ps(tail, x + k16);
            a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, p[0] + k16), xv, a0);
            a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, p[1] + k16), xv, a1);
            a2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, p[2] + k16), xv, a2);
            a3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, p[3] + k16), xv, a3);
            a4 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, p[4] + k16), xv, a4);
            a5 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, p[5] + k16), xv, a5);
            a6 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, p[6] + k16), xv, a6);
            a7 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, p[7] + k16), xv, a7);
        }
        /* fold each 16-lane sum to 8 lanes, then the AVX2 path's reduction tree */
#define FR_FOLD(a) _mm256_add_ps(_mm512_castps512_ps256(a), \
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)))
        __m256 s = fr_hsum8x8(FR_FOLD(a0), FR_FOLD(a1), FR_FOLD(a2), FR_FOLD(a3),
                              FR_FOLD(a4), FR_FOLD(a5), FR_FOLD(a6), FR_FOLD(a7));
#undef FR_FOLD
        int n = m - r < 8 ? m - r : 8;
        __m256i out = fr_tail_mask(n);
        if (beta != 0.0f)
            s = _mm256_fmadd_ps(_mm256_set1_ps(beta), _mm256_maskload_ps(y + r, out), s);
        _mm256_maskstore_ps(y + r, out, s);
    }
}
#endif

static inline void fr_gemv_f32(int m, int k, const float *A, int lda, const float *x,
                               float beta, float *y) {
#if FASTRNN_X86_DISPATCH
    if (fr_have_avx512()) { fr_gemv_f32_avx512(m, k, A, lda, x, beta, y); return; }
    if (fr_have_avx2_fma()) { fr_gemv_f32_avx2(m, k, A, lda, x, beta, y); return; }
#endif
    fr_gemv_f32_plain(m, k, A, lda, x, beta, y);
}

#endif /* FASTRNN_GEMV_H */
