/*
 * vmath_sweep.c -- the vectorized exp / sigmoid of csrc/cpu/vmath.h against float64 libm,
 * over every `stride`-th float32 bit pattern (tests/test_vexp.py builds and runs it).
 *   argv: stride [sample_path [sample_stride]]
 * Prints one line of key=value figures: max ulp and relative error of exp where exp(x) is a
 * normal float, the largest absolute error below 2^-126 in units of 2^-149, mismatches of
 * the special cases (overflow, underflow, NaN), the same for sigmoid, and how many results
 * of the AVX2 version differ from the portable one in their bits (NaN compared as NaN).
 * With sample_path: writes x, exp(x) and sigmoid(x) (portable) of every sample_stride-th
 * swept value as float32 triples, for the NumPy float64 check.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../csrc/cpu/vmath.h"

#ifdef DSC_VM_AVX2
/* exp8 / sigmoid8 of 8 values (the AVX2 code needs a target("avx2") function). */
DSC_VM_AVX2_FN static void vm_avx2_block(const float *in, float *e, float *s) {
  const __m256 x = _mm256_loadu_ps(in);
  _mm256_storeu_ps(e, dsc_vm_exp8(x));
  _mm256_storeu_ps(s, dsc_vm_sigmoid8(x));
}
#endif

static float f_of(uint32_t b) {
  float f;
  memcpy(&f, &b, 4);
  return f;
}
static uint32_t b_of(float f) {
  uint32_t b;
  memcpy(&b, &f, 4);
  return b;
}
/* Same bits, or both NaN. */
static int same(float a, float b) { return (a != a && b != b) || b_of(a) == b_of(b); }

/* Error of y against the float64 value ref: ulps (of ref's float32 spacing) where ref is a
 * normal float, else absolute in units of 2^-149; inf/0/NaN expectations counted as bad. */
typedef struct {
  double max_ulp, max_rel, max_sub;
  long bad_special;
} err_t;

static void account(err_t *e, double ref, float y) {
  if (isnan(ref)) {
    if (y == y) ++e->bad_special;
    return;
  }
  if (ref > (double)FLT_MAX) {
    if (!(isinf(y) && y > 0)) ++e->bad_special;
    return;
  }
  if (!isfinite(y)) {
    ++e->bad_special;
    return;
  }
  const double d = fabs((double)y - ref);
  if (ref >= (double)FLT_MIN) {
    const double ulp = ldexp(1.0, ilogb(ref) - 23);
    if (d / ulp > e->max_ulp) e->max_ulp = d / ulp;
    if (d / ref > e->max_rel) e->max_rel = d / ref;
  } else {
    const double s = d / ldexp(1.0, -149);
    if (s > e->max_sub) e->max_sub = s;
  }
}

int main(int argc, char **argv) {
  const uint64_t stride = argc > 1 ? strtoull(argv[1], NULL, 10) : 97;
  FILE *fs = argc > 2 ? fopen(argv[2], "wb") : NULL;
  const uint64_t sstride = argc > 3 ? strtoull(argv[3], NULL, 10) : 64;
  if (argc > 2 && !fs) return 2;
  err_t ee = {0, 0, 0, 0}, es = {0, 0, 0, 0};
  long n = 0, diff_avx = 0, avx = 0;
#ifdef DSC_VM_AVX2
  avx = __builtin_cpu_supports("avx2") != 0;
#endif
  enum { BLK = 1024 };
  float xs[BLK], ye[BLK], ys[BLK];
  int nb = 0;
  /* the specials first, then the sweep */
  const float special[] = {INFINITY, -INFINITY, NAN, -NAN, 0.0f, -0.0f, 88.72283f, 88.7228394f,
                           88.72284f, 89.0f, 89.5f, -87.33654f, -103.2789f, -103.9721f, -104.0f,
                           -104.5f, FLT_MAX, -FLT_MAX, FLT_MIN, 1e-30f};
  const long nspec = (long)(sizeof special / sizeof special[0]);
  uint64_t bits = 0;
  for (long i = 0;; ++i) {
    float x;
    if (i < nspec) {
      x = special[i];
    } else {
      if (bits > 0xFFFFFFFFull) break;
      x = f_of((uint32_t)bits);
      bits += stride;
    }
    const float y = dsc_vm_exp(x), s = dsc_vm_sigmoid(x);
    const double xd = (double)x;
    account(&ee, exp(xd), y);
    const double sref = isnan(xd) ? NAN : (xd >= 0 ? 1.0 / (1.0 + exp(-xd)) : exp(xd) / (1.0 + exp(xd)));
    account(&es, sref, s);
    if (fs && i % (long)sstride == 0 && isfinite(x)) {
      const float t[3] = {x, y, s};
      fwrite(t, sizeof t, 1, fs);
    }
    xs[nb] = x, ye[nb] = y, ys[nb] = s;
    ++nb, ++n;
    if (nb == BLK || bits > 0xFFFFFFFFull) {
#ifdef DSC_VM_AVX2
      if (avx) {
        for (int j = 0; j < nb; j += 8) {
          float a[8] = {0}, b[8], c[8];
          const int m = nb - j < 8 ? nb - j : 8;
          memcpy(a, xs + j, (size_t)m * 4);
          vm_avx2_block(a, b, c);
          for (int q = 0; q < m; ++q) diff_avx += !same(b[q], ye[j + q]) + !same(c[q], ys[j + q]);
        }
      }
#endif
      nb = 0;
    }
  }
  if (fs) fclose(fs);
  printf("n=%ld avx2=%ld exp_max_ulp=%.4f exp_max_rel=%.4g exp_max_sub=%.4f exp_bad_special=%ld "
         "sig_max_ulp=%.4f sig_max_rel=%.4g sig_max_sub=%.4f sig_bad_special=%ld avx2_diff=%ld\n",
         n, avx, ee.max_ulp, ee.max_rel, ee.max_sub, ee.bad_special, es.max_ulp, es.max_rel,
         es.max_sub, es.bad_special, diff_avx);
  return 0;
}

