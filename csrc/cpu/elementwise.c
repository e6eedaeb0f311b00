/*
 * cpu/elementwise.c -- elementwise arithmetic on the CPU (the reference for
 * kernels/elementwise.cu).
 *
 * Legend: n elements (any shape, flattened).
 *   add: out = a + b, in float32 (bf16 inputs widened exactly, the sum rounded once).
 */
#include "cpu_common.h"

dsc_status dsc_cpu_add(dsc_context *ctx, dsc_dtype dt, int64_t n, const void *a /* [n] dt */,
                       const void *b /* [n] dt */, void *out /* [n] dt, may alias a or b */) {
  (void)ctx; /* read only by the OpenMP pragma */
#ifdef _OPENMP
#pragma omp parallel for num_threads(ctx->num_threads) schedule(static) if (n >= DSC_CPU_PAR_MIN)
#endif
  for (int64_t i = 0; i < n; ++i) dsc_cpu_st(dt, out, i, dsc_cpu_ld(dt, a, i) + dsc_cpu_ld(dt, b, i));
  return DSC_OK;
}
