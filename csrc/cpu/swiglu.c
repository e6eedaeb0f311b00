/*
 * cpu/swiglu.c -- the SwiGLU gate of DeepSeek's MLPs and experts on the CPU (the reference
 * for kernels/swiglu.cu). Elementwise, so the tensors are flat arrays.
 *
 * Legend: n elements (rows x F intermediate features, flattened).
 *
 *   sig = sigmoid(g), silu(g) = g * sig
 *   forward:  out = (g * sig) * u
 *   backward: dgate = dout * u * sig * (1 + g * (1 - sig))     (d silu / dg = sig (1 + g (1 - sig)))
 *             dup   = dout * g * sig
 */
#include <math.h>

#include "cpu_common.h"

/* sigmoid without overflow: exp of a non-positive number only. */
static inline float sigmoidf_stable(float g) {
  if (g >= 0.0f) return 1.0f / (1.0f + expf(-g));
  const float e = expf(g);
  return e / (1.0f + e);
}

dsc_status dsc_cpu_swiglu_fwd(dsc_context *ctx, dsc_dtype dt, int64_t n,
                              const void *gate /* [n] dt */, const void *up /* [n] dt */,
                              void *out /* [n] dt, may alias gate or up */) {
  (void)ctx; /* read only by the OpenMP pragmas */
  DSC_CPU_FOR(n >= DSC_CPU_PAR_MIN, ctx->num_threads, i, n,
    const float g = dsc_cpu_ld(dt, gate, i), u = dsc_cpu_ld(dt, up, i);
    dsc_cpu_st(dt, out, i, (g * sigmoidf_stable(g)) * u);
  );
  return DSC_OK;
}

dsc_status dsc_cpu_swiglu_bwd(dsc_context *ctx, dsc_dtype dt, int64_t n,
                              const void *dout /* [n] dt */, const void *gate /* [n] dt */,
                              const void *up /* [n] dt */, void *dgate /* [n] dt */,
                              void *dup /* [n] dt */) {
  (void)ctx; /* read only by the OpenMP pragmas */
  DSC_CPU_FOR(n >= DSC_CPU_PAR_MIN, ctx->num_threads, i, n,
    /* All three inputs are read before either output is written: dgate/dup may alias
     * the inputs element for element. */
    const float d = dsc_cpu_ld(dt, dout, i), g = dsc_cpu_ld(dt, gate, i),
                u = dsc_cpu_ld(dt, up, i);
    const float sig = sigmoidf_stable(g);
    dsc_cpu_st(dt, dgate, i, d * u * sig * (1.0f + g * (1.0f - sig)));
    dsc_cpu_st(dt, dup, i, d * g * sig);
  );
  return DSC_OK;
}
