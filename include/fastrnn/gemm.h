/* The recurrent product of a whole-sequence step, C (m, n) = A (m, k) @ W^T (+ C), float32,
 * with W (n, k) row-major packed once per call into panels of 16 output columns.
 *
 * Why not BLAS: a step's product is small (B=64, 4H=1024, H=256) and BLAS packs both
 * operands on every call, so over T steps it repacks W_hh T times: 10% of an LSTM B=64
 * H=256 forward and 23% of a B=32 H=128 training step were sgemm's packing routines
 * (perf, this machine). Here W is packed once per sequence, and a step reads the panels
 * as they lie.
 *
 *   packed: P[p][kk][i] = W[16 p + i][kk], p < ceil(n / 16), kk < k, i < 16 (zero past n)
 *
 * Micro-kernel: 6 rows of A by 32 columns (two panels), 12 vector accumulators (AVX-512;
 * AVX2: 6 rows by 16 columns, the same 12 registers), each C element summed over k in
 * order with one FMA per term, so the AVX-512 and AVX2 paths give the same bits; the
 * plain C path (no AVX2/FMA, or FASTRNN_SIMD=0) rounds differently, within float32
 * accuracy. A panel pair (k x 32 floats: 32 KiB at k=256) stays in L1 while every row
 * block of A passes it; rows of A are read in place (broadcast loads).
 */
#ifndef FASTRNN_GEMM_H
#define FASTRNN_GEMM_H

#include <stddef.h>
#include "cpu.h"

/* floats of the packed copy of an (n, k) W */
static inline size_t fr_packed_size(int n, int k) {
    return (size_t)((n + 15) / 16) * (size_t)k * 16;
}

/* P = W (n, k) row-major (row stride ldw) packed as above */
static void fr_pack_nt_f32(int n, int k, const float *W, int ldw, float *P) {
    for (int p = 0; p < (n + 15) / 16; p++) {
        float *dst = P + (size_t)p * k * 16;
        for (int i = 0; i < 16; i++) {
            int row = 16 * p + i;
            if (row < n) {
                const float *src = W + (size_t)row * ldw;
                for (int kk = 0; kk < k; kk++) dst[(size_t)kk * 16 + i] = src[kk];
            } else {
                for (int kk = 0; kk < k; kk++) dst[(size_t)kk * 16 + i] = 0.0f;
            }
        }
    }
}

/* P = W^T packed, for a product with W (k, n) row-major itself (C = A @ W): the rows of
   W^T are W's columns, P[p][kk][i] = W[kk][16 p + i] (row stride ldw) */
static void fr_pack_tn_f32(int n, int k, const float *W, int ldw, float *P) {
    for (int p = 0; p < (n + 15) / 16; p++) {
        float *dst = P + (size_t)p * k * 16;
        for (int kk = 0; kk < k; kk++) {
            const float *src = W + (size_t)kk * ldw + 16 * p;
            for (int i = 0; i < 16; i++)
                dst[(size_t)kk * 16 + i] = 16 * p + i < n ? src[i] : 0.0f;
        }
    }
}

/* 1 where the packed products run (fr_gemm_packed_f32 is then faster than BLAS): the
   AVX2/FMA and AVX-512 paths; elsewhere the kernels keep BLAS */
static inline int fr_packed_path(void) { return fr_have_avx2_fma(); }

/* plain C: columns [c0, c1) of C (m rows) = A @ W^T (+ C when accumulate) */
static void fr_gemm_packed_plain(int m, int c0, int c1, int k, const float *A, int lda,
                                 const float *P, int accumulate, float *C, int ldc) {
    for (int r = 0; r < m; r++) {
        const float *a = A + (size_t)r * lda;
        for (int col = c0; col < c1; col++) {
            const float *w = P + (size_t)(col / 16) * k * 16 + (col % 16);
            float acc = 0.0f;
            for (int kk = 0; kk < k; kk++) acc += a[kk] * w[(size_t)kk * 16];
            C[(size_t)r * ldc + col] = accumulate ? C[(size_t)r * ldc + col] + acc : acc;
        }
    }
}

#if FASTRNN_X86_DISPATCH
/* AVX-512: rows [0, MR) of A by panels p0 (and p0 + 1 when two), C columns 16 p0 ..,
   `live` of the 32 (or 16) columns inside [c0, c1) written. MR is a constant at each call
   site (the switch below), so the accumulators stay in registers. */
#define FR_K512_BODY(MR)                                                                    \
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00,          \
           c21 = c00, c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;    \
    const float *a0 = A, *a1 = A + lda, *a2 = A + 2 * (size_t)lda, *a3 = A + 3 * (size_t)lda, \
                *a4 = A + 4 * (size_t)lda, *a5 = A + 5 * (size_t)lda;                      \
    const float *w0 = P0, *w1 = P1;                                                         \
    for (int kk = 0; kk < k; kk++) {                                                        \
        __m512 b0 = _mm512_load_ps(w0 + 16 * (size_t)kk);                                  \
        __m512 b1 = two ? _mm512_load_ps(w1 + 16 * (size_t)kk) : b0;                       \
        __m512 x;                                                                           \
        x = _mm512_set1_ps(a0[kk]); c00 = _mm512_fmadd_ps(x, b0, c00);                     \
        if (two) c01 = _mm512_fmadd_ps(x, b1, c01);                                         \
        if (MR > 1) { x = _mm512_set1_ps(a1[kk]); c10 = _mm512_fmadd_ps(x, b0, c10);       \
                      if (two) c11 = _mm512_fmadd_ps(x, b1, c11); }                         \
        if (MR > 2) { x = _mm512_set1_ps(a2[kk]); c20 = _mm512_fmadd_ps(x, b0, c20);       \
                      if (two) c21 = _mm512_fmadd_ps(x, b1, c21); }                         \
        if (MR > 3) { x = _mm512_set1_ps(a3[kk]); c30 = _mm512_fmadd_ps(x, b0, c30);       \
                      if (two) c31 = _mm512_fmadd_ps(x, b1, c31); }                         \
        if (MR > 4) { x = _mm512_set1_ps(a4[kk]); c40 = _mm512_fmadd_ps(x, b0, c40);       \
                      if (two) c41 = _mm512_fmadd_ps(x, b1, c41); }                         \
        if (MR > 5) { x = _mm512_set1_ps(a5[kk]); c50 = _mm512_fmadd_ps(x, b0, c50);       \
                      if (two) c51 = _mm512_fmadd_ps(x, b1, c51); }                         \
    }                                                                                       \
    __m512 acc[12] = {c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51};          \
    for (int r = 0; r < MR; r++)                                                            \
        for (int h = 0; h < 1 + two; h++) {                                                 \
            __mmask16 mk = h ? m1 : m0;                                                     \
            float *dst = C + (size_t)r * ldc + 16 * h;                                      \
            __m512 v = acc[2 * r + h];                                                      \
            if (accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(mk, dst), v);          \
            _mm512_mask_storeu_ps(dst, mk, v);                                              \
        }

#define FR_K512(MR)                                                                         \
FR_AVX512 static void fr_k512_##MR(int k, const float *A, int lda, const float *P0,         \
                                   const float *P1, int two, __mmask16 m0, __mmask16 m1,    \
                                   int accumulate, float *C, int ldc) {                     \
    if (two) { FR_K512_BODY(MR) } else { FR_K512_BODY(MR) }                                 \
}
FR_K512(1) FR_K512(2) FR_K512(3) FR_K512(4) FR_K512(5) FR_K512(6)

FR_AVX512 static void fr_gemm_packed_avx512(int m, int c0, int c1, int k, const float *A,
                                            int lda, const float *P, int accumulate,
                                            float *C, int ldc) {
    for (int col = c0; col < c1; col += 32) {           /* c0 is a multiple of 16 */
        int p = col / 16, live = c1 - col < 32 ? c1 - col : 32, two = live > 16;
        __mmask16 m0 = (__mmask16)(live >= 16 ? 0xffff : (1u << live) - 1u);
        __mmask16 m1 = (__mmask16)(live >= 32 ? 0xffff : live > 16 ? (1u << (live - 16)) - 1u : 0);
        const float *P0 = P + (size_t)p * k * 16, *P1 = P0 + (size_t)k * 16;
        for (int r = 0; r < m; r += 6) {
            const float *a = A + (size_t)r * lda;
            float *c = C + (size_t)r * ldc + col;
            switch (m - r < 6 ? m - r : 6) {
            case 1: fr_k512_1(k, a, lda, P0, P1, two, m0, m1, accumulate, c, ldc); break;
            case 2: fr_k512_2(k, a, lda, P0, P1, two, m0, m1, accumulate, c, ldc); break;
            case 3: fr_k512_3(k, a, lda, P0, P1, two, m0, m1, accumulate, c, ldc); break;
            case 4: fr_k512_4(k, a, lda, P0, P1, two, m0, m1, accumulate, c, ldc); break;
            case 5: fr_k512_5(k, a, lda, P0, P1, two, m0, m1, accumulate, c, ldc); break;
            default: fr_k512_6(k, a, lda, P0, P1, two, m0, m1, accumulate, c, ldc); break;
            }
        }
    }
}

/* AVX2: rows [0, MR) by one panel (two 8-float halves), columns 16 p .. of which `live` */
#define FR_K256(MR)                                                                         \
FR_AVX2 static void fr_k256_##MR(int k, const float *A, int lda, const float *P0, int live, \
                                 int accumulate, float *C, int ldc) {                       \
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00,          \
           c21 = c00, c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;    \
    const float *a0 = A, *a1 = A + lda, *a2 = A + 2 * (size_t)lda, *a3 = A + 3 * (size_t)lda, \
                *a4 = A + 4 * (size_t)lda, *a5 = A + 5 * (size_t)lda;                      \
    for (int kk = 0; kk < k; kk++) {                                                        \
        __m256 b0 = _mm256_load_ps(P0 + 16 * (size_t)kk);                                  \
        __m256 b1 = _mm256_load_ps(P0 + 16 * (size_t)kk + 8);                              \
        __m256 x;                                                                           \
        x = _mm256_broadcast_ss(a0 + kk); c00 = _mm256_fmadd_ps(x, b0, c00);               \
        c01 = _mm256_fmadd_ps(x, b1, c01);                                                  \
        if (MR > 1) { x = _mm256_broadcast_ss(a1 + kk); c10 = _mm256_fmadd_ps(x, b0, c10); \
                      c11 = _mm256_fmadd_ps(x, b1, c11); }                                  \
        if (MR > 2) { x = _mm256_broadcast_ss(a2 + kk); c20 = _mm256_fmadd_ps(x, b0, c20); \
                      c21 = _mm256_fmadd_ps(x, b1, c21); }                                  \
        if (MR > 3) { x = _mm256_broadcast_ss(a3 + kk); c30 = _mm256_fmadd_ps(x, b0, c30); \
                      c31 = _mm256_fmadd_ps(x, b1, c31); }                                  \
        if (MR > 4) { x = _mm256_broadcast_ss(a4 + kk); c40 = _mm256_fmadd_ps(x, b0, c40); \
                      c41 = _mm256_fmadd_ps(x, b1, c41); }                                  \
        if (MR > 5) { x = _mm256_broadcast_ss(a5 + kk); c50 = _mm256_fmadd_ps(x, b0, c50); \
                      c51 = _mm256_fmadd_ps(x, b1, c51); }                                  \
    }                                                                                       \
    __m256 acc[12] = {c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51};          \
    for (int r = 0; r < MR; r++) {                                                          \
        float out[16];                                                                      \
        _mm256_storeu_ps(out, acc[2 * r]);                                                  \
        _mm256_storeu_ps(out + 8, acc[2 * r + 1]);                                          \
        float *dst = C + (size_t)r * ldc;                                                   \
        for (int i = 0; i < live; i++) dst[i] = accumulate ? dst[i] + out[i] : out[i];     \
    }                                                                                       \
}
FR_K256(1) FR_K256(2) FR_K256(3) FR_K256(4) FR_K256(5) FR_K256(6)

FR_AVX2 static void fr_gemm_packed_avx2(int m, int c0, int c1, int k, const float *A,
                                        int lda, const float *P, int accumulate,
                                        float *C, int ldc) {
    for (int col = c0; col < c1; col += 16) {
        int p = col / 16, live = c1 - col < 16 ? c1 - col : 16;
        const float *P0 = P + (size_t)p * k * 16;
        for (int r = 0; r < m; r += 6) {
            const float *a = A + (size_t)r * lda;
            float *c = C + (size_t)r * ldc + col;
            switch (m - r < 6 ? m - r : 6) {
            case 1: fr_k256_1(k, a, lda, P0, live, accumulate, c, ldc); break;
            case 2: fr_k256_2(k, a, lda, P0, live, accumulate, c, ldc); break;
            case 3: fr_k256_3(k, a, lda, P0, live, accumulate, c, ldc); break;
            case 4: fr_k256_4(k, a, lda, P0, live, accumulate, c, ldc); break;
            case 5: fr_k256_5(k, a, lda, P0, live, accumulate, c, ldc); break;
            default: fr_k256_6(k, a, lda, P0, live, accumulate, c, ldc); break;
            }
        }
    }
}
#endif

/* columns [c0, c1) of C (m, ldc) = A (m, k; row stride lda) @ W^T, plus C's own values when
   accumulate; P = fr_pack_nt_f32 of W (64-byte aligned), c0 a multiple of 16 */
static void fr_gemm_packed_f32(int m, int c0, int c1, int k, const float *A, int lda,
                               const float *P, int accumulate, float *C, int ldc) {
    if (m <= 0 || c1 <= c0) return;
#if FASTRNN_X86_DISPATCH
    if (fr_have_avx512()) { fr_gemm_packed_avx512(m, c0, c1, k, A, lda, P, accumulate, C, ldc); return; }
    if (fr_have_avx2_fma()) { fr_gemm_packed_avx2(m, c0, c1, k, A, lda, P, accumulate, C, ldc); return; }
#endif
    fr_gemm_packed_plain(m, c0, c1, k, A, lda, P, accumulate, C, ldc);
}

#endif /* FASTRNN_GEMM_H */
