/*
 * core/sample_math.h -- the random stream of token sampling, shared by the CPU reference
 * (cpu/sample.c) and the CUDA kernel (kernels/sample.cu) so both draw the same numbers:
 * a counter-based splitmix64 stream per row. Draw i of a row (i = 1, 2, ..: the counter
 * is advanced before the draw) is mix64(key + i * golden) mapped to [0, 1) with 53 bits.
 */
#ifndef DSC_CORE_SAMPLE_MATH_H_
#define DSC_CORE_SAMPLE_MATH_H_

#include <stdint.h>

#include "numeric.h" /* DSC_HD */

static inline DSC_HD uint64_t dsc_sample_mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* The next uniform double in [0, 1) of the stream (key, *ctr); advances *ctr. */
static inline DSC_HD double dsc_sample_urand(uint64_t key, uint64_t *ctr) {
  const uint64_t r = dsc_sample_mix64(key + (++*ctr) * 0x9e3779b97f4a7c15ull);
  return (double)(r >> 11) * (1.0 / 9007199254740992.0);
}

/* The stream key of row b for a seed (what dsc_model_generate uses for sequence b). */
static inline DSC_HD uint64_t dsc_sample_key(uint64_t seed, uint64_t b) {
  const uint64_t base = dsc_sample_mix64(seed ^ 0x6a09e667f3bcc908ull);
  return dsc_sample_mix64(base + dsc_sample_mix64(b + 1));
}

#endif /* DSC_CORE_SAMPLE_MATH_H_ */
