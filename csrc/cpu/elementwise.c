/*
 * cpu/elementwise.c -- elementwise arithmetic on the CPU (the reference for
 * kernels/elementwise.cu).
 *
 * Legend: n elements (any shape, flattened).
 *   add: out = a + b, in float32 (bf16 inputs widened exactly, the sum rounded once).
 *   scale_f32: x *= alpha.   round_bf16_f32: dst = float(bf16_rne(src)).   copy2d: a strided copy of rows (concat / split / slicing).
 */
#include <string.h>

#include "cpu_common.h"

dsc_status dsc_cpu_add(dsc_context *ctx, dsc_dtype dt, int64_t n, const void *a /* [n] dt */,
                       const void *b /* [n] dt */, void *out /* [n] dt, may alias a or b */) {
  (void)ctx; /* read only by the OpenMP pragma */
  if (dt == DSC_DTYPE_FLOAT32) { /* blocks of plain float loops: vectorized by the compiler */
    const float *fa = (const float *)a, *fb = (const float *)b;
    float *fo = (float *)out;
    const int64_t nb = (n + 4095) / 4096;
    DSC_CPU_FOR(n >= DSC_CPU_PAR_MIN, ctx->num_threads, blk, nb,
      const int64_t i1 = (blk + 1) * 4096 < n ? (blk + 1) * 4096 : n;
      for (int64_t i = blk * 4096; i < i1; ++i) fo[i] = fa[i] + fb[i];
    );
    return DSC_OK;
  }
  DSC_CPU_FOR(n >= DSC_CPU_PAR_MIN, ctx->num_threads, i, n,
    dsc_cpu_st(dt, out, i, dsc_cpu_ld(dt, a, i) + dsc_cpu_ld(dt, b, i));
  );
  return DSC_OK;
}

dsc_status dsc_cpu_scale_f32(dsc_context *ctx, int64_t n, float *x /* [n] */, float alpha) {
  (void)ctx;
  const int64_t nb = (n + 4095) / 4096;
  DSC_CPU_FOR(n >= DSC_CPU_PAR_MIN, ctx->num_threads, blk, nb,
    const int64_t i1 = (blk + 1) * 4096 < n ? (blk + 1) * 4096 : n;
    for (int64_t i = blk * 4096; i < i1; ++i) x[i] *= alpha;
  );
  return DSC_OK;
}

dsc_status dsc_cpu_round_bf16_f32(dsc_context *ctx, int64_t n, const float *src /* [n] */,
                                 float *dst /* [n], may alias src */) {
  (void)ctx;
  const int64_t nb = (n + 4095) / 4096;
  DSC_CPU_FOR(n >= DSC_CPU_PAR_MIN, ctx->num_threads, blk, nb,
    const int64_t i1 = (blk + 1) * 4096 < n ? (blk + 1) * 4096 : n;
    for (int64_t i = blk * 4096; i < i1; ++i) dst[i] = dsc_bf16_to_f32(dsc_f32_to_bf16(src[i]));
  );
  return DSC_OK;
}

dsc_status dsc_cpu_zero(dsc_context *ctx, size_t bytes, void *dst) {
  (void)ctx;
  if (bytes) memset(dst, 0, bytes);
  return DSC_OK;
}

dsc_status dsc_cpu_copy2d(dsc_context *ctx, int64_t rows, size_t row_bytes,
                          const void *src /* rows x src_pitch bytes */, size_t src_pitch,
                          void *dst /* rows x dst_pitch bytes */, size_t dst_pitch) {
  (void)ctx;
  for (int64_t r = 0; r < rows; ++r)
    memcpy((char *)dst + (size_t)r * dst_pitch, (const char *)src + (size_t)r * src_pitch, row_bytes);
  return DSC_OK;
}
