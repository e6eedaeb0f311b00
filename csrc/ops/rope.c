/*
 * ops/rope.c -- validation and dispatch of RoPE (forward, backward).
 *
 * Checks ctx and every tensor (device, dtype, contiguity), then the parameter struct,
 * then ranks and shapes, then the position values; computes the (YaRN) frequencies and
 * the cos/sin multiplier on the host with the dsc_rope_* helpers; then calls
 * dsc_cpu_rope or dsc_cuda_rope. The backward is the same rotation by -angle.
 *
 * Legend: B batch, T tokens, H heads (1 for a [B, T, D] input), D rotary dims.
 */
#include <math.h>
#include <stdint.h>

#include "backend.h"

/* Checks the fields of p that RoPE reads (the dsc_rope_* helpers check them again, but
 * this names the public function in the message). */
static dsc_status check_params(const char *fn, const dsc_rope_params *p) {
  DSC_CHECK(p != NULL, DSC_ERR_INVALID_ARGUMENT, fn, "p: expected RoPE parameters, got NULL");
  DSC_CHECK(p->size >= sizeof(dsc_rope_params), DSC_ERR_INVALID_ARGUMENT, fn,
            "p->size: expected sizeof(dsc_rope_params) = %zu, got %zu", sizeof(dsc_rope_params),
            p->size);
  DSC_CHECK(p->layout == DSC_ROPE_INTERLEAVED || p->layout == DSC_ROPE_HALF,
            DSC_ERR_INVALID_ARGUMENT, fn,
            "p->layout: expected DSC_ROPE_INTERLEAVED (0) or DSC_ROPE_HALF (1), got %d",
            (int)p->layout);
  DSC_CHECK(p->dim >= 2 && p->dim <= 512 && p->dim % 2 == 0, DSC_ERR_INVALID_ARGUMENT, fn,
            "p->dim: expected an even number in [2, 512], got %d", (int)p->dim);
  /* theta > 1: the frequencies base^(-2i/D) must decrease (the helpers require it). */
  DSC_CHECK(isfinite(p->theta) && p->theta > 1.0f, DSC_ERR_INVALID_ARGUMENT, fn,
            "p->theta: expected a finite base > 1, got %g", (double)p->theta);
  DSC_CHECK(isfinite(p->factor), DSC_ERR_INVALID_ARGUMENT, fn,
            "p->factor: expected a finite number, got %g", (double)p->factor);
  if (p->factor > 1.0f) { /* YaRN */
    DSC_CHECK(p->original_max_position > 0, DSC_ERR_INVALID_ARGUMENT, fn,
              "p->original_max_position: expected > 0 with YaRN (factor %g), got %d",
              (double)p->factor, (int)p->original_max_position);
    DSC_CHECK(isfinite(p->beta_fast) && p->beta_fast > 0.0f, DSC_ERR_INVALID_ARGUMENT, fn,
              "p->beta_fast: expected a finite number > 0 with YaRN, got %g",
              (double)p->beta_fast);
    DSC_CHECK(isfinite(p->beta_slow) && p->beta_slow > 0.0f, DSC_ERR_INVALID_ARGUMENT, fn,
              "p->beta_slow: expected a finite number > 0 with YaRN, got %g",
              (double)p->beta_slow);
    DSC_CHECK(isfinite(p->mscale), DSC_ERR_INVALID_ARGUMENT, fn,
              "p->mscale: expected a finite number, got %g", (double)p->mscale);
    DSC_CHECK(isfinite(p->mscale_all_dim), DSC_ERR_INVALID_ARGUMENT, fn,
              "p->mscale_all_dim: expected a finite number, got %g", (double)p->mscale_all_dim);
  }
  return DSC_OK;
}

/* Forward (inverse = 0: x -> y) and backward (inverse = 1: dy -> dx) share everything
 * but the argument names and the sign of the angle. */
static dsc_status rope(dsc_context *ctx, const char *fn, const dsc_rope_params *p,
                       const char *in_name, const DLTensor *in, const DLTensor *positions,
                       const char *out_name, DLTensor *out, int inverse) {
  DSC_TRY(dsc_check_tensor(ctx, fn, in_name, in, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, fn, "positions", positions, DSC_DT(DSC_DTYPE_INT32)));
  DSC_TRY(dsc_check_tensor(ctx, fn, out_name, out, DSC_DT_FLOAT));
  DSC_TRY(check_params(fn, p));

  DSC_TRY(dsc_check_ndim(fn, in_name, in, 3, 4, "(B, T, D) or (B, T, H, D)"));
  const int64_t B = in->shape[0], T = in->shape[1];
  const int64_t H = in->ndim == 4 ? in->shape[2] : 1;
  const int64_t D = dsc_last_dim(in);
  if (D != p->dim) {
    char buf[256];
    return dsc_error(DSC_ERR_SHAPE, fn, "%s: expected a last dim equal to p->dim = %d, got %s",
                     in_name, (int)p->dim, dsc_shape_str(in, buf, sizeof buf));
  }
  DSC_TRY(dsc_check_same_dtype(fn, out_name, out, in_name, in));
  DSC_TRY(dsc_check_same_shape(fn, out_name, out, in_name, in));
  const int64_t bt_shape[2] = {B, T};
  DSC_TRY(dsc_check_shape(fn, "positions", positions, 2, bt_shape));
  /* both elements of a pair are read before either is written: out may be in itself */
  DSC_TRY(dsc_check_inplace_or_disjoint(fn, out_name, out, in_name, in));
  DSC_TRY(dsc_check_no_overlap(fn, out_name, out, "positions", positions));

  /* Positions >= 0 (the angle of a negative position would be valid math, but it is
   * always a bug upstream). skip = lo: a value inside the range, i.e. no exception. */
  const int32_t *pos = (const int32_t *)dsc_data(positions);
  const int64_t npos = B * T;
  if (npos > 0) {
    /* Deferred mode: a negative position is rotated by its (negative) angle: no memory is
     * indexed by positions (the backends compute cos/sin from them). */
    const dsc_index_site site = {fn, "positions", NULL, DSC_IDX_MSG_RANGE};
    DSC_TRY(dsc_index_check(ctx, &site, npos, 0, pos, 0, INT32_MAX, 0));
  }
  if (B * T * H == 0) return DSC_OK;

  float inv_freq[256]; /* [D/2], host: the backends take it from the host */
  float cs_scale = 1.0f;
  DSC_TRY(dsc_rope_inv_freq(p, inv_freq, p->dim / 2));
  DSC_TRY(dsc_rope_cos_sin_scale(p, &cs_scale));

  const dsc_dtype dt = dsc_tensor_dtype(in);
  return DSC_DISPATCH(rope, ctx, dt, (int)p->layout, B, T, H, D, dsc_data(in), pos, inv_freq, cs_scale,
                      inverse, dsc_data(out));
}

dsc_status dsc_rope_forward(dsc_context *ctx, const dsc_rope_params *p, const DLTensor *x,
                            const DLTensor *positions, DLTensor *y) {
  return rope(ctx, "dsc_rope_forward", p, "x", x, positions, "y", y, 0);
}

dsc_status dsc_rope_backward(dsc_context *ctx, const dsc_rope_params *p, const DLTensor *dy,
                             const DLTensor *positions, DLTensor *dx) {
  return rope(ctx, "dsc_rope_backward", p, "dy", dy, positions, "dx", dx, 1);
}
