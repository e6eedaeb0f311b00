/*
 * cpu/vmath.h -- exp, sigmoid and SiLU for the CPU backends' hot loops (softmax, routing,
 * SwiGLU, cross-entropy): a portable scalar version and an 8-lane AVX2 version that give
 * the same bits (both use only +, -, *, / and integer/bit operations, each rounded once as
 * IEEE float32 says; no FMA, which gcc does not form under -std=c11 and the AVX2 code does
 * not call). A kernel may therefore run its AVX2 body and a scalar tail, or take the
 * portable path (DSC_CPU_ISA=generic), and get the same results.
 *
 * exp(x), float32:
 *   xc = clamp(x, -104, 89)                (below: 0, above: inf, once scaled)
 *   k  = round-to-nearest(xc * log2(e))    (the 1.5 * 2^23 shifter)
 *   r  = (xc - k * ln2_hi) - k * ln2_lo    (ln2_hi has 9 significant bits: k * ln2_hi exact)
 *   p  = 1 + r (1 + r (c2 + r (c3 + r (c4 + r (c5 + r c6)))))   ~ exp(r), |r| <= 0.35
 *   y  = (p * 2^k1) * 2^k2,  k1 = floor(k / 2), k2 = k - k1 (two normal powers of two: a
 *        subnormal result is rounded once, an overflow becomes inf)
 *   NaN in, NaN out.
 * Accuracy against float64 exp, measured over all 2^32 float32 inputs (tests/test_vexp.py
 * sweeps every 97th bit pattern): at most 1.18 ulp (relative error 9.9e-8) where exp(x) is
 * a normal float; below 2^-126 the absolute error is under 0.82 units of the smallest
 * subnormal (2^-149); exp(x) > FLT_MAX gives +inf, x < -103.97 gives 0, exp(+-inf) = inf / 0,
 * and the AVX2 version gives the portable bits on every input. glibc's expf is within
 * ~0.5 ulp.
 * c2..c6: a relative-error minimax fit on [-0.3468, 0.3468] (float64 error 3.1e-9),
 * rounded to float32.
 *
 * sigmoid(x) = num / (1 + e) with e = exp(-|x|), num = 1 (x >= 0) or e (x < 0, NaN): no
 *   overflow; over all 2^32 inputs at most 2.40 ulp (relative 1.9e-7) where the result is a
 *   normal float, under 0.82 units of 2^-149 below.
 * silu(x) = x * sigmoid(x).
 */
#ifndef DSC_CPU_VMATH_H_
#define DSC_CPU_VMATH_H_

#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define DSC_VM_AVX2 1 /* the AVX2 versions exist (used when ctx->cpu_avx2) */
#define DSC_VM_AVX2_FN __attribute__((target("avx2")))
#define DSC_VM_AVX2_INLINE __attribute__((target("avx2"), always_inline)) static inline
#endif

/* Whether this context runs the AVX2 versions (ctx->cpu_avx2, decided at context creation;
 * DSC_CPU_ISA=generic forces the portable ones). */
#ifdef DSC_VM_AVX2
#define DSC_VM_USE_AVX2(ctx) ((ctx)->cpu_avx2)
#else
#define DSC_VM_USE_AVX2(ctx) 0
#endif

#define DSC_VM_XHI 89.0f
#define DSC_VM_XLO (-104.0f)
#define DSC_VM_LOG2E 1.44269504088896341f
#define DSC_VM_SHIFT 12582912.0f /* 1.5 * 2^23: x + SHIFT - SHIFT rounds x to an integer */
#define DSC_VM_LN2_HI 0.693359375f
#define DSC_VM_LN2_LO (-2.12194440e-4f)
#define DSC_VM_C2 0x1.fffffcp-2f
#define DSC_VM_C3 0x1.555492p-3f
#define DSC_VM_C4 0x1.5558f2p-5f
#define DSC_VM_C5 0x1.123a2p-7f
#define DSC_VM_C6 0x1.6a23d6p-10f

static inline float dsc_vm_bits_to_f(int32_t b) {
  float f;
  memcpy(&f, &b, sizeof f);
  return f;
}

/* exp(x), portable. The comparisons are written as SSE's min/max behave (a NaN picks the
 * second operand), so the AVX2 version's intermediate values are the same. */
static inline float dsc_vm_exp(float x) {
  float xc = x < DSC_VM_XHI ? x : DSC_VM_XHI;
  xc = xc > DSC_VM_XLO ? xc : DSC_VM_XLO;
  const float t = xc * DSC_VM_LOG2E + DSC_VM_SHIFT;
  const float kf = t - DSC_VM_SHIFT;
  float r = xc - kf * DSC_VM_LN2_HI;
  r = r - kf * DSC_VM_LN2_LO;
  float p = DSC_VM_C6;
  p = p * r + DSC_VM_C5;
  p = p * r + DSC_VM_C4;
  p = p * r + DSC_VM_C3;
  p = p * r + DSC_VM_C2;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t k = (int32_t)kf;     /* an integer in [-150, 129]: exact */
  const int32_t k1 = k >> 1;         /* floor(k / 2) (arithmetic shift, as gcc and clang do) */
  const int32_t k2 = k - k1;
  const float y = (p * dsc_vm_bits_to_f((k1 + 127) << 23)) * dsc_vm_bits_to_f((k2 + 127) << 23);
  return x != x ? x : y;
}

static inline float dsc_vm_sigmoid(float x) {
  const float ax = x < 0.0f ? -x : x; /* |x| (NaN stays NaN) */
  const float e = dsc_vm_exp(-ax);
  const float num = x >= 0.0f ? 1.0f : e;
  return num / (1.0f + e);
}

static inline float dsc_vm_silu(float x) { return x * dsc_vm_sigmoid(x); }

#ifdef DSC_VM_AVX2
DSC_VM_AVX2_INLINE __m256 dsc_vm_exp8(__m256 x) {
  __m256 xc = _mm256_min_ps(x, _mm256_set1_ps(DSC_VM_XHI));
  xc = _mm256_max_ps(xc, _mm256_set1_ps(DSC_VM_XLO));
  const __m256 sh = _mm256_set1_ps(DSC_VM_SHIFT);
  const __m256 t = _mm256_add_ps(_mm256_mul_ps(xc, _mm256_set1_ps(DSC_VM_LOG2E)), sh);
  const __m256 kf = _mm256_sub_ps(t, sh);
  __m256 r = _mm256_sub_ps(xc, _mm256_mul_ps(kf, _mm256_set1_ps(DSC_VM_LN2_HI)));
  r = _mm256_sub_ps(r, _mm256_mul_ps(kf, _mm256_set1_ps(DSC_VM_LN2_LO)));
  __m256 p = _mm256_set1_ps(DSC_VM_C6);
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(DSC_VM_C5));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(DSC_VM_C4));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(DSC_VM_C3));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(DSC_VM_C2));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.0f));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.0f));
  const __m256i k = _mm256_cvttps_epi32(kf);
  const __m256i k1 = _mm256_srai_epi32(k, 1);
  const __m256i k2 = _mm256_sub_epi32(k, k1);
  const __m256i b = _mm256_set1_epi32(127);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k1, b), 23));
  const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k2, b), 23));
  const __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
  return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

DSC_VM_AVX2_INLINE __m256 dsc_vm_sigmoid8(__m256 x) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 e = dsc_vm_exp8(_mm256_or_ps(x, sign)); /* exp(-|x|) */
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 num = _mm256_blendv_ps(e, one, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ));
  return _mm256_div_ps(num, _mm256_add_ps(one, e));
}

/* n % 8 lanes [0, n) as a load/store mask. */
DSC_VM_AVX2_INLINE __m256i dsc_vm_mask8(int64_t n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), idx);
}
#endif

#endif /* DSC_CPU_VMATH_H_ */
