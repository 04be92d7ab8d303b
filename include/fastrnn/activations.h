/* Gate activations shared by the fastrnn kernels: sigmoid and tanh over arrays.
 *
 * float32: AVX-512F or AVX2/FMA vector code (the same operations on 16 or 8 lanes), chosen
 *   at run time from the CPU's features (cpu.h), else libm.
 *   exp(x): Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, then a degree-6
 *     polynomial for e^r (Cephes expf coefficients), scaled by 2^n through the exponent
 *     bits. Input clamped to [-87.3, 88.3] so 2^n stays a normal float.
 *   sigmoid(x) = 1 / (1 + exp(-x)).
 *   tanh(x): |x| < 0.625: odd polynomial x + x^3 P(x^2) (Cephes tanhf), keeping relative
 *     accuracy near 0; otherwise sign(x) (1 - 2 / (exp(2|x|) + 1)).
 *   Error against float64, measured on 2,000,001 points in [-20, 20], a log sweep down to
 *   1e-45 and every float32 around tanh's branch point (tests/test_activations.py, which
 *   asserts these bounds): sigmoid max abs error 8.9e-8, max 3.1 ulp; tanh max abs error
 *   8.0e-8, max 1.35 ulp. NaN in gives NaN out; +-Inf give the limits (sigmoid(-inf) is
 *   4.6e-39, not 0, because exp's argument is clamped).
 *   Every element is computed by the same vector code (the tail goes through a padded
 *   buffer or masked lanes), so a value never depends on where it sits in the array.
 *   Both vector paths meet the bounds above (tests/test_simd_paths.py runs the AVX2 one).
 * float64: libm exp and tanh, exact to libm's accuracy (float64 is the checking dtype).
 *
 * y may alias x. No allocation, no Python.
 */
#ifndef FASTRNN_ACTIVATIONS_H
#define FASTRNN_ACTIVATIONS_H

#include <math.h>
#include <string.h>

#include "cpu.h"

/* ---- float64: exact (libm) ---------------------------------------------- */
static inline void fr_sigmoid_f64(double *y, const double *x, int n) {
    for (int j = 0; j < n; j++) y[j] = 1.0 / (1.0 + exp(-x[j]));
}
static inline void fr_tanh_f64(double *y, const double *x, int n) {
    for (int j = 0; j < n; j++) y[j] = tanh(x[j]);
}

/* ---- float32: portable fallback (libm) ---------------------------------- */
static inline void fr_sigmoid_f32_libm(float *y, const float *x, int n) {
    for (int j = 0; j < n; j++) y[j] = 1.0f / (1.0f + expf(-x[j]));
}
static inline void fr_tanh_f32_libm(float *y, const float *x, int n) {
    for (int j = 0; j < n; j++) y[j] = tanhf(x[j]);
}

#if FASTRNN_X86_DISPATCH

/* e^x for 8 floats; NaN propagates (max/min return their second operand on NaN) */
FR_AVX2 static inline __m256 fr_exp8(__m256 x) {
    x = _mm256_max_ps(_mm256_set1_ps(-87.3f), x);
    x = _mm256_min_ps(_mm256_set1_ps(88.3f), x);
    /* n = round(x / ln2); r = x - n ln2 in two parts so r is exact enough */
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    /* e^r ~= 1 + r + r^2 (1/2 + r/6 + ...) */
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    /* 2^n through the exponent field */
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

FR_AVX2 static inline __m256 fr_sigmoid8(__m256 x) {
    __m256 one = _mm256_set1_ps(1.0f);
    __m256 e = fr_exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));   /* exp(-x) */
    return _mm256_div_ps(one, _mm256_add_ps(one, e));
}

FR_AVX2 static inline __m256 fr_tanh8(__m256 x) {
    __m256 sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0f));
    __m256 ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
    /* small |x|: x + x^3 P(x^2) */
    __m256 z = _mm256_mul_ps(x, x);
    __m256 p = _mm256_set1_ps(-5.70498872745e-3f);
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(2.06390887954e-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-5.37397155531e-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.33314422036e-1f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-3.33332819422e-1f));
    __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x);
    /* large |x|: 1 - 2 / (exp(2|x|) + 1), sign restored; min keeps NaN (2nd operand) */
    __m256 one = _mm256_set1_ps(1.0f);
    __m256 e = fr_exp8(_mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_add_ps(ax, ax)));
    __m256 big = _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, one)));
    big = _mm256_or_ps(big, sign);
    __m256 use_small = _mm256_cmp_ps(ax, _mm256_set1_ps(0.625f), _CMP_LT_OQ);
    return _mm256_blendv_ps(big, small, use_small);
}

#define FR_DEFINE_ARRAY_OP(name, op8)                                          \
FR_AVX2 static void name(float *y, const float *x, int n) {                    \
    int j = 0;                                                                 \
    for (; j + 8 <= n; j += 8)                                                 \
        _mm256_storeu_ps(y + j, op8(_mm256_loadu_ps(x + j)));                  \
    if (j < n) {  /* tail through a padded buffer: same code for every lane */ \
        float buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};                               \
        memcpy(buf, x + j, (size_t)(n - j) * sizeof(float));                   \
        _mm256_storeu_ps(buf, op8(_mm256_loadu_ps(buf)));                      \
        memcpy(y + j, buf, (size_t)(n - j) * sizeof(float));                   \
    }                                                                          \
}
FR_DEFINE_ARRAY_OP(fr_sigmoid_f32_avx2, fr_sigmoid8)
FR_DEFINE_ARRAY_OP(fr_tanh_f32_avx2, fr_tanh8)
#undef FR_DEFINE_ARRAY_OP

/* AVX-512F: the same operations on 16 lanes (bit operations through the integer forms,
 * which need only AVX-512F); half the instructions per element, same accuracy bounds */
FR_AVX512 static inline __m512 fr_exp16(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-87.3f), x);
    x = _mm512_min_ps(_mm512_set1_ps(88.3f), x);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

FR_AVX512 static inline __m512 fr_sigmoid16(__m512 x) {
    __m512 one = _mm512_set1_ps(1.0f);
    __m512 e = fr_exp16(_mm512_sub_ps(_mm512_setzero_ps(), x));
    return _mm512_div_ps(one, _mm512_add_ps(one, e));
}

FR_AVX512 static inline __m512 fr_tanh16(__m512 x) {
    const __m512i sign_bit = _mm512_set1_epi32((int)0x80000000u);
    __m512i xi = _mm512_castps_si512(x);
    __m512i sign = _mm512_and_si512(xi, sign_bit);
    __m512 ax = _mm512_castsi512_ps(_mm512_andnot_si512(sign_bit, xi));
    __m512 z = _mm512_mul_ps(x, x);
    __m512 p = _mm512_set1_ps(-5.70498872745e-3f);
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(2.06390887954e-2f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-5.37397155531e-2f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.33314422036e-1f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-3.33332819422e-1f));
    __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), x, x);
    __m512 one = _mm512_set1_ps(1.0f);
    __m512 e = fr_exp16(_mm512_min_ps(_mm512_set1_ps(88.0f), _mm512_add_ps(ax, ax)));
    __m512 big = _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, one)));
    big = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(big), sign));
    __mmask16 use_small = _mm512_cmp_ps_mask(ax, _mm512_set1_ps(0.625f), _CMP_LT_OQ);
    return _mm512_mask_blend_ps(use_small, big, small);
}

#define FR_DEFINE_ARRAY_OP16(name, op16)                                       \
FR_AVX512 static void name(float *y, const float *x, int n) {                  \
    int j = 0;                                                                 \
    for (; j + 16 <= n; j += 16)                                               \
        _mm512_storeu_ps(y + j, op16(_mm512_loadu_ps(x + j)));                 \
    if (j < n) {  /* tail: masked lanes read as 0, as the AVX2 path's buffer */ \
        __mmask16 m = (__mmask16)((1u << (n - j)) - 1u);                       \
        _mm512_mask_storeu_ps(y + j, m, op16(_mm512_maskz_loadu_ps(m, x + j)));\
    }                                                                          \
}
FR_DEFINE_ARRAY_OP16(fr_sigmoid_f32_avx512, fr_sigmoid16)
FR_DEFINE_ARRAY_OP16(fr_tanh_f32_avx512, fr_tanh16)
#undef FR_DEFINE_ARRAY_OP16

#endif

static inline void fr_sigmoid_f32(float *y, const float *x, int n) {
#if FASTRNN_X86_DISPATCH
    if (fr_have_avx512()) { fr_sigmoid_f32_avx512(y, x, n); return; }
    if (fr_have_avx2_fma()) { fr_sigmoid_f32_avx2(y, x, n); return; }
#endif
    fr_sigmoid_f32_libm(y, x, n);
}

static inline void fr_tanh_f32(float *y, const float *x, int n) {
#if FASTRNN_X86_DISPATCH
    if (fr_have_avx512()) { fr_tanh_f32_avx512(y, x, n); return; }
    if (fr_have_avx2_fma()) { fr_tanh_f32_avx2(y, x, n); return; }
#endif
    fr_tanh_f32_libm(y, x, n);
}

#endif /* FASTRNN_ACTIVATIONS_H */
