/*
 * fp8_format.h -- scalar conversions between float32 and the two OCP FP8 formats, shared
 * by the CPU backend and host code (C11 and C++/CUDA host code; everything static inline).
 *
 *   float8_e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities;
 *                  NaN = S.1111.111 (0x7f / 0xff); largest finite +-448 (0x7e / 0xfe);
 *                  smallest subnormal 2^-9.
 *   float8_e5m2:   1 sign, 5 exponent (bias 15), 2 mantissa bits (IEEE-like);
 *                  +-inf = 0x7c / 0xfc; NaN = 0x7d..0x7f / 0xfd..0xff (we write 0x7e|sign);
 *                  largest finite +-57344 (0x7b / 0xfb); smallest subnormal 2^-16.
 *
 * float32 -> fp8: round to nearest, ties to even, on the exact value (subnormals
 * included); finite values whose magnitude exceeds the largest finite SATURATE to it
 * (the DeepSeek / TransformerEngine convention; ml_dtypes would give NaN / inf there);
 * NaN -> NaN of the same sign (canonical: 0x7f|s for E4M3, 0x7e|s for E5M2, as ml_dtypes);
 * +-inf -> NaN|s for E4M3 (no inf) and +-inf for E5M2; -0 stays -0. Apart from the
 * saturation this is bit-identical to ml_dtypes' astype (tests/test_fp8.py checks every
 * bfloat16 pattern and millions of float32 patterns). bfloat16 inputs are widened to
 * float32 exactly first, so they need no separate rounding path.
 *
 * fp8 -> float32: exact; NaN codes give the quiet NaN 0x7fc00000|sign (as ml_dtypes).
 */
#ifndef DSC_FP8_FORMAT_H_
#define DSC_FP8_FORMAT_H_

#include <stdint.h>
#include <string.h>

#include "numeric.h" /* DSC_HD */

#define DSC_FP8_E4M3_MAX 448.0f
#define DSC_FP8_E5M2_MAX 57344.0f

static inline DSC_HD uint32_t dsc_fp8_f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static inline DSC_HD float dsc_fp8_bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* Shared encoder. ebits/mbits: exponent and mantissa widths, bias the exponent bias,
 * max_code the code of the largest finite magnitude, nan_code the NaN written, inf_code
 * the code of +inf (nan_code for E4M3, which has none). */
static inline DSC_HD uint8_t dsc_fp8_encode(float f, int mbits, int bias, uint32_t max_code,
                                     uint32_t nan_code, uint32_t inf_code) {
  const uint32_t u = dsc_fp8_f32_bits(f);
  const uint32_t sign = (u >> 24) & 0x80u;
  const uint32_t a = u & 0x7fffffffu; /* |f| */
  if (a > 0x7f800000u) return (uint8_t)(sign | nan_code);
  if (a == 0x7f800000u) return (uint8_t)(sign | inf_code);
  const int e = (int)(a >> 23); /* biased float32 exponent, 0 for subnormals */
  if (e >= 128 - bias) {
    /* Normal range of the fp8 format: drop 23 - mbits mantissa bits, ties to even. A
     * carry out of the mantissa correctly bumps the exponent. */
    const int drop = 23 - mbits;
    const uint32_t r = a + ((1u << (drop - 1)) - 1u) + ((a >> drop) & 1u);
    uint32_t code = (r >> drop) - ((uint32_t)(127 - bias) << mbits);
    if (code > max_code) code = max_code; /* saturation of finite values */
    return (uint8_t)(sign | code);
  }
  /* Subnormal range of the fp8 format: |f| / 2^(1 - bias - mbits) rounded to an integer,
   * ties to even. |f| = m * 2^(e - 150) with the implicit bit in m (e = 1 for float32
   * subnormals), so the integer is m >> shift with shift = 151 - bias - mbits - e.
   * A result of 2^mbits is the smallest normal, whose code is exactly 2^mbits. */
  const uint32_t m = e ? ((a & 0x7fffffu) | 0x800000u) : a;
  const int shift = 151 - bias - mbits - (e ? e : 1);
  if (shift > 24) return (uint8_t)sign; /* m < 2^24: below half the smallest subnormal */
  uint32_t q = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  return (uint8_t)(sign | q);
}

static inline DSC_HD uint8_t dsc_f32_to_e4m3(float f) { return dsc_fp8_encode(f, 3, 7, 0x7eu, 0x7fu, 0x7fu); }
static inline DSC_HD uint8_t dsc_f32_to_e5m2(float f) { return dsc_fp8_encode(f, 2, 15, 0x7bu, 0x7eu, 0x7cu); }

/* Shared decoder (exact). */
static inline DSC_HD float dsc_fp8_decode(uint8_t c, int mbits, int bias, int has_inf) {
  const uint32_t sign = (uint32_t)(c & 0x80u) << 24;
  const uint32_t e = (uint32_t)(c & 0x7fu) >> mbits;
  const uint32_t m = (uint32_t)c & ((1u << mbits) - 1u);
  const uint32_t emax = (1u << (7 - mbits)) - 1u; /* all-ones exponent */
  if (has_inf) {
    if (e == emax) return dsc_fp8_bits_f32(sign | (m ? 0x7fc00000u : 0x7f800000u));
  } else if (e == emax && m == (1u << mbits) - 1u) {
    return dsc_fp8_bits_f32(sign | 0x7fc00000u);
  }
  if (e == 0) {
    if (m == 0) return dsc_fp8_bits_f32(sign);
    /* m * 2^(1 - bias - mbits): normalize m into a float32 normal */
    int k = 0;
    uint32_t mm = m;
    while (!(mm & (1u << mbits))) {
      mm <<= 1;
      ++k;
    }
    const uint32_t fe = (uint32_t)(1 - bias - k + 127);
    return dsc_fp8_bits_f32(sign | (fe << 23) | ((mm & ((1u << mbits) - 1u)) << (23 - mbits)));
  }
  return dsc_fp8_bits_f32(sign | ((e - (uint32_t)bias + 127u) << 23) | (m << (23 - mbits)));
}

static inline DSC_HD float dsc_e4m3_to_f32(uint8_t c) { return dsc_fp8_decode(c, 3, 7, 0); }
static inline DSC_HD float dsc_e5m2_to_f32(uint8_t c) { return dsc_fp8_decode(c, 2, 15, 1); }

/* True when a finite |y| (y = x / scale) is clipped by the saturation: a cast without
 * saturation would overflow (round past the largest finite). With round-to-nearest-even
 * that is |y| > 464 for E4M3 (464 itself ties down to 448) and |y| >= 61440 for E5M2
 * (61440 ties up to 65536 = inf). */
static inline DSC_HD int dsc_fp8_e4m3_clips(float ay) { return ay > 464.0f; }
static inline DSC_HD int dsc_fp8_e5m2_clips(float ay) { return ay >= 61440.0f; }

#endif /* DSC_FP8_FORMAT_H_ */
