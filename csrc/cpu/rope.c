/*
 * cpu/rope.c -- rotary position embedding (RoPE, optionally YaRN-scaled) on the CPU
 * (the reference for kernels/rope.cu).
 *
 * Legend: B batch, T tokens, H heads (1 for a [B,T,D] input), D rotary dims (even),
 *         i pair index in [0, D/2).
 *
 *   angle_i = (float)pos[b,t] * inv_freq[i]          (a float32 multiply)
 *   c_i = cosf(angle_i) * cs_scale,  s_i = sinf(angle_i) * cs_scale   (s negated: inverse)
 *   pair (a, b) -> (a*c - b*s, a*s + b*c)
 *   layout DSC_ROPE_INTERLEAVED: pair i is (x[2i], x[2i+1])     (DeepSeek reference)
 *   layout DSC_ROPE_HALF:        pair i is (x[i], x[i + D/2])   (NeoX rotate_half)
 *
 * The inverse (backward) rotates by -angle: R^T = R(-angle), also for cs_scale != 1,
 * since the scale multiplies both entries of the rotation.
 * cosf/sinf must be the accurate ones (arguments reach p * 1 = 1.6e5 rad with YaRN);
 * a GPU twin should use sincosf, not __sinf/__cosf.
 */
#include <math.h>

#include "cpu_common.h"

/* D <= 512 is checked by the ops layer, so the per-row tables fit on the stack. */
#define ROPE_MAX_HALF 256

dsc_status dsc_cpu_rope(dsc_context *ctx, dsc_dtype dt, int layout, int64_t B, int64_t T,
                        int64_t H, int64_t D, const void *x /* [B,T,H,D] dt */,
                        const int32_t *pos /* [B,T] */, const float *inv_freq /* [D/2] host */,
                        float cs_scale, int inverse, void *y /* [B,T,H,D] dt, may alias x */) {
  (void)ctx; /* read only by the OpenMP loop */
  const int64_t es = dsc_cpu_esize(dt);
  const int64_t half = D / 2;
  const int64_t BT = B * T;
  if (half > ROPE_MAX_HALF)
    return dsc_error(DSC_ERR_INTERNAL, "dsc_cpu_rope", "D: expected <= %d, got %lld",
                     2 * ROPE_MAX_HALF, (long long)D);
  const float sign = inverse ? -1.0f : 1.0f;
  /* Training batches repeat the positions of row 0 in every row: then the cos/sin of the T
   * positions are computed once into the workspace (the same values) instead of per row. */
  int shared = B > 1;
  for (int64_t i = T; i < BT && shared; ++i) shared = pos[i] == pos[i % T];
  float *tab = NULL; /* [T, 2, D/2] cos then sin of row 0's positions */
  if (shared) {
    void *ws = NULL;
    DSC_TRY(dsc_workspace(ctx, (size_t)(T * 2 * half) * sizeof(float), &ws));
    tab = (float *)ws;
    DSC_CPU_FOR(T * half >= DSC_CPU_PAR_MIN / 8, ctx->num_threads, t, T,
      const float p = (float)pos[t];
      for (int64_t i = 0; i < half; ++i) {
        const float angle = p * inv_freq[i];
        tab[(t * 2) * half + i] = cosf(angle) * cs_scale;
        tab[(t * 2 + 1) * half + i] = sign * (sinf(angle) * cs_scale);
      }
    );
  }
  /* One token (b, t) per iteration: its cos/sin table serves all H heads. */
  DSC_CPU_FOR(BT * H * D >= DSC_CPU_PAR_MIN, ctx->num_threads, bt, BT,
    float cs_own[ROPE_MAX_HALF], sn_own[ROPE_MAX_HALF]; /* [D/2] */
    const float *cs = cs_own, *sn = sn_own;
    if (tab) {
      cs = tab + ((bt % T) * 2) * half;
      sn = cs + half;
    } else {
      const float p = (float)pos[bt];
      for (int64_t i = 0; i < half; ++i) {
        const float angle = p * inv_freq[i];
        cs_own[i] = cosf(angle) * cs_scale;
        sn_own[i] = sign * (sinf(angle) * cs_scale);
      }
    }
    for (int64_t h = 0; h < H; ++h) {
      const int64_t off = (bt * H + h) * D;            /* element offset of row (b,t,h) */
      const void *xr = (const char *)x + off * es;     /* [D] */
      void *yr = (char *)y + off * es;                 /* [D] */
      for (int64_t i = 0; i < half; ++i) {
        /* ia, ib: the two elements of pair i in this layout. */
        const int64_t ia = layout == DSC_ROPE_HALF ? i : 2 * i;
        const int64_t ib = layout == DSC_ROPE_HALF ? i + half : 2 * i + 1;
        /* Both inputs are read before either output is written: y may alias x. */
        const float a = dsc_cpu_ld(dt, xr, ia), b = dsc_cpu_ld(dt, xr, ib);
        dsc_cpu_st(dt, yr, ia, a * cs[i] - b * sn[i]);
        dsc_cpu_st(dt, yr, ib, a * sn[i] + b * cs[i]);
      }
    }
  );
  return DSC_OK;
}
