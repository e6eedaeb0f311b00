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
 *
 * sigmoid is vmath.h's (within 2.5 ulp of float64); float32 arrays run 8 lanes at a time with
 * AVX2 when ctx->cpu_avx2, the same operations as the portable loop (the same bits).
 */
#include <math.h>

#include "cpu_common.h"
#include "vmath.h"

/* Elements per OpenMP work item (a multiple of 8). */
#define SWIGLU_BLOCK ((int64_t)2048)

static inline void fwd1(float g, float u, float *out) { *out = (g * dsc_vm_sigmoid(g)) * u; }

static inline void bwd1(float d, float g, float u, float *dg, float *du) {
  const float sig = dsc_vm_sigmoid(g);
  *dg = d * u * sig * (1.0f + g * (1.0f - sig));
  *du = d * g * sig;
}

#ifdef DSC_VM_AVX2
DSC_VM_AVX2_FN static void fwd_avx2(int64_t n, const float *g, const float *u, float *out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gv = _mm256_loadu_ps(g + i), uv = _mm256_loadu_ps(u + i);
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(gv, dsc_vm_sigmoid8(gv)), uv));
  }
  for (; i < n; ++i) fwd1(g[i], u[i], out + i);
}

DSC_VM_AVX2_FN static void bwd_avx2(int64_t n, const float *d, const float *g, const float *u,
                                    float *dg, float *du) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 dv = _mm256_loadu_ps(d + i), gv = _mm256_loadu_ps(g + i),
                 uv = _mm256_loadu_ps(u + i);
    const __m256 sig = dsc_vm_sigmoid8(gv);
    const __m256 t = _mm256_add_ps(one, _mm256_mul_ps(gv, _mm256_sub_ps(one, sig)));
    _mm256_storeu_ps(dg + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(dv, uv), sig), t));
    _mm256_storeu_ps(du + i, _mm256_mul_ps(_mm256_mul_ps(dv, gv), sig));
  }
  for (; i < n; ++i) bwd1(d[i], g[i], u[i], dg + i, du + i);
}
#endif

dsc_status dsc_cpu_swiglu_fwd(dsc_context *ctx, dsc_dtype dt, int64_t n,
                              const void *gate /* [n] dt */, const void *up /* [n] dt */,
                              void *out /* [n] dt, may alias gate or up */) {
  (void)ctx; /* read only by the OpenMP pragmas */
  const int64_t nb = (n + SWIGLU_BLOCK - 1) / SWIGLU_BLOCK;
  const int avx2 = DSC_VM_USE_AVX2(ctx) && dt == DSC_DTYPE_FLOAT32;
  (void)avx2;
  DSC_CPU_FOR(n >= DSC_CPU_PAR_MIN, ctx->num_threads, b, nb,
    const int64_t i0 = b * SWIGLU_BLOCK, i1 = i0 + SWIGLU_BLOCK < n ? i0 + SWIGLU_BLOCK : n;
#ifdef DSC_VM_AVX2
    if (avx2) {
      fwd_avx2(i1 - i0, (const float *)gate + i0, (const float *)up + i0, (float *)out + i0);
      continue;
    }
#endif
    /* Each element's inputs are read before its output is written: out may alias. */
    for (int64_t i = i0; i < i1; ++i) {
      float o;
      fwd1(dsc_cpu_ld(dt, gate, i), dsc_cpu_ld(dt, up, i), &o);
      dsc_cpu_st(dt, out, i, o);
    }
  );
  return DSC_OK;
}

dsc_status dsc_cpu_swiglu_bwd(dsc_context *ctx, dsc_dtype dt, int64_t n,
                              const void *dout /* [n] dt */, const void *gate /* [n] dt */,
                              const void *up /* [n] dt */, void *dgate /* [n] dt */,
                              void *dup /* [n] dt */) {
  (void)ctx; /* read only by the OpenMP pragmas */
  const int64_t nb = (n + SWIGLU_BLOCK - 1) / SWIGLU_BLOCK;
  const int avx2 = DSC_VM_USE_AVX2(ctx) && dt == DSC_DTYPE_FLOAT32;
  (void)avx2;
  DSC_CPU_FOR(n >= DSC_CPU_PAR_MIN, ctx->num_threads, b, nb,
    const int64_t i0 = b * SWIGLU_BLOCK, i1 = i0 + SWIGLU_BLOCK < n ? i0 + SWIGLU_BLOCK : n;
#ifdef DSC_VM_AVX2
    if (avx2) {
      bwd_avx2(i1 - i0, (const float *)dout + i0, (const float *)gate + i0, (const float *)up + i0,
               (float *)dgate + i0, (float *)dup + i0);
      continue;
    }
#endif
    /* All three inputs of an element are read before either output is written: dgate/dup
     * may alias the inputs element for element. */
    for (int64_t i = i0; i < i1; ++i) {
      float dg, du;
      bwd1(dsc_cpu_ld(dt, dout, i), dsc_cpu_ld(dt, gate, i), dsc_cpu_ld(dt, up, i), &dg, &du);
      dsc_cpu_st(dt, dgate, i, dg);
      dsc_cpu_st(dt, dup, i, du);
    }
  );
  return DSC_OK;
}
