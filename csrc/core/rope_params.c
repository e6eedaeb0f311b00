/*
 * rope_params.c -- RoPE frequencies with YaRN scaling (DeepSeek-V3 / HF "yarn"):
 * the per-pair inverse frequencies, the cos/sin multiplier and the softmax scale.
 * Host-only arithmetic in double, results in float32.
 */
#include <math.h>
#include <string.h>

#include "internal.h"

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

void dsc_rope_params_default(dsc_rope_params *p, int32_t dim) {
  if (!p) return;
  memset(p, 0, sizeof *p);
  p->size = sizeof *p;
  p->layout = DSC_ROPE_INTERLEAVED;
  p->dim = dim;
  p->theta = 10000.0f;
  p->factor = 1.0f;
  p->original_max_position = 4096;
  p->beta_fast = 32.0f;
  p->beta_slow = 1.0f;
  p->mscale = 1.0f;
  p->mscale_all_dim = 0.0f;
}

/* Validates the fields the helpers below read; fn names the caller. */
static dsc_status check_params(const char *fn, const dsc_rope_params *p) {
  DSC_CHECK(p != NULL, DSC_ERR_INVALID_ARGUMENT, fn, "params: expected a pointer, got NULL");
  DSC_CHECK(p->size >= sizeof(dsc_rope_params), DSC_ERR_INVALID_ARGUMENT, fn,
            "params->size: expected sizeof(dsc_rope_params) = %zu, got %zu",
            sizeof(dsc_rope_params), p->size);
  DSC_CHECK(p->layout == DSC_ROPE_INTERLEAVED || p->layout == DSC_ROPE_HALF,
            DSC_ERR_INVALID_ARGUMENT, fn,
            "params->layout: expected DSC_ROPE_INTERLEAVED (0) or DSC_ROPE_HALF (1), got %d",
            (int)p->layout);
  DSC_CHECK(p->dim >= 2 && p->dim <= 512 && p->dim % 2 == 0, DSC_ERR_INVALID_ARGUMENT, fn,
            "params->dim: expected an even number in [2, 512], got %d", (int)p->dim);
  DSC_CHECK(isfinite(p->theta) && p->theta > 1.0f, DSC_ERR_INVALID_ARGUMENT, fn,
            "params->theta: expected a finite base > 1, got %g", (double)p->theta);
  DSC_CHECK(isfinite(p->factor), DSC_ERR_INVALID_ARGUMENT, fn,
            "params->factor: expected a finite number, got %g", (double)p->factor);
  if (p->factor > 1.0f) {
    DSC_CHECK(p->original_max_position > 0, DSC_ERR_INVALID_ARGUMENT, fn,
              "params->original_max_position: expected > 0 with YaRN, got %d",
              (int)p->original_max_position);
    DSC_CHECK(isfinite(p->beta_fast) && isfinite(p->beta_slow) && p->beta_fast > 0.0f &&
                  p->beta_slow > 0.0f,
              DSC_ERR_INVALID_ARGUMENT, fn,
              "params->beta_fast, beta_slow: expected finite numbers > 0, got %g, %g",
              (double)p->beta_fast, (double)p->beta_slow);
    DSC_CHECK(p->beta_fast >= p->beta_slow, DSC_ERR_INVALID_ARGUMENT, fn,
              "params->beta_fast, beta_slow: expected beta_fast >= beta_slow (rotations at the "
              "high- and low-frequency ends of the ramp), got %g < %g (swapped?)",
              (double)p->beta_fast, (double)p->beta_slow);
    DSC_CHECK(isfinite(p->mscale) && isfinite(p->mscale_all_dim) && p->mscale >= 0.0f &&
                  p->mscale_all_dim >= 0.0f,
              DSC_ERR_INVALID_ARGUMENT, fn,
              "params->mscale, mscale_all_dim: expected finite numbers >= 0, got %g, %g",
              (double)p->mscale, (double)p->mscale_all_dim);
  }
  return DSC_OK;
}

/* YaRN's m(factor, x) = 0.1 * x * ln(factor) + 1, or 1 without scaling. */
static double yarn_m(double factor, double x) {
  return factor <= 1.0 ? 1.0 : 0.1 * x * log(factor) + 1.0;
}

/* The dimension index at which a frequency completes `rotations` turns over L0. */
static double correction_dim(double rotations, double dim, double base, double l0) {
  return dim * log(l0 / (rotations * 2.0 * M_PI)) / (2.0 * log(base));
}

dsc_status dsc_rope_inv_freq(const dsc_rope_params *p, float *inv_freq, int32_t n) {
  static const char *const FN = "dsc_rope_inv_freq";
  DSC_TRY(check_params(FN, p));
  DSC_CHECK(inv_freq != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "inv_freq: expected a pointer, got NULL");
  DSC_CHECK(n == p->dim / 2, DSC_ERR_SHAPE, FN, "n: expected params->dim / 2 = %d, got %d",
            (int)(p->dim / 2), (int)n);
  const double dim = p->dim, base = p->theta;
  double low = 0.0, high = 0.0;
  if (p->factor > 1.0f) {
    const double l0 = p->original_max_position;
    low = floor(correction_dim(p->beta_fast, dim, base, l0));
    high = ceil(correction_dim(p->beta_slow, dim, base, l0));
    if (low < 0.0) low = 0.0;
    if (high > dim - 1.0) high = dim - 1.0;
    if (low == high) high += 0.001; /* avoid a zero-width ramp */
  }
  for (int32_t i = 0; i < n; ++i) {
    double theta = pow(base, -2.0 * i / dim);
    if (p->factor > 1.0f) {
      double r = (i - low) / (high - low); /* 0: keep (high freq), 1: interpolate */
      r = r < 0.0 ? 0.0 : (r > 1.0 ? 1.0 : r);
      theta = theta * (1.0 - r) + theta / p->factor * r;
    }
    inv_freq[i] = (float)theta;
  }
  return DSC_OK;
}

dsc_status dsc_rope_cos_sin_scale(const dsc_rope_params *p, float *scale) {
  static const char *const FN = "dsc_rope_cos_sin_scale";
  DSC_TRY(check_params(FN, p));
  DSC_CHECK(scale != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "scale: expected a pointer, got NULL");
  *scale = (float)(yarn_m(p->factor, p->mscale) / yarn_m(p->factor, p->mscale_all_dim));
  return DSC_OK;
}

dsc_status dsc_rope_softmax_scale(const dsc_rope_params *p, int32_t qk_head_dim, float *scale) {
  static const char *const FN = "dsc_rope_softmax_scale";
  DSC_TRY(check_params(FN, p));
  DSC_CHECK(scale != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "scale: expected a pointer, got NULL");
  DSC_CHECK(qk_head_dim > 0, DSC_ERR_INVALID_ARGUMENT, FN,
            "qk_head_dim: expected > 0, got %d", (int)qk_head_dim);
  double m = yarn_m(p->factor, p->mscale_all_dim);
  *scale = (float)(m * m / sqrt((double)qk_head_dim));
  return DSC_OK;
}
