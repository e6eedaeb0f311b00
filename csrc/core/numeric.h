/*
 * numeric.h -- scalar conversions shared by the CPU backend and host code.
 * bfloat16 is the top half of an IEEE float32; conversion rounds to nearest even
 * and keeps NaN a (quiet) NaN.
 */
#ifndef DSC_NUMERIC_H_
#define DSC_NUMERIC_H_

#include <stdint.h>
#include <string.h>

/* One definition for the CPU backend and the CUDA kernels: under nvcc these scalar
 * helpers are also device functions, so both backends round bit for bit alike. */
#if defined(__CUDACC__)
#define DSC_HD __host__ __device__
#else
#define DSC_HD
#endif

static inline DSC_HD float dsc_bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static inline DSC_HD uint16_t dsc_f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0u) {
    return (uint16_t)((u >> 16) | 0x0040u); /* NaN stays NaN (quieted) */
  }
  /* round to nearest, ties to even, on the 16 bits dropped */
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

#endif /* DSC_NUMERIC_H_ */
