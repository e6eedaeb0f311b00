/*
 * cpu/adamw.c -- the AdamW update and the sum of squares behind global-norm clipping, on
 * the CPU (the reference for kernels/adamw.cu).
 *
 * Legend: n elements of one parameter tensor (flattened).
 *
 *   g'  = g * gscale                                  (gscale: the clip coefficient)
 *   m   = beta1 * m + (1 - beta1) * g'
 *   v   = beta2 * v + (1 - beta2) * g'^2
 *   p   = p - lr * wd * p - lr * (m / bc1) / (sqrt(v / bc2) + eps)
 *   with bc1 = 1 - beta1^step, bc2 = 1 - beta2^step (computed by the ops layer).
 *
 * All in float32. With bfloat16 moments, m and v are widened, updated, used for p in
 * float32, then rounded once when stored (p uses the unrounded m and v).
 * sumsq: float64 partial sums over fixed chunks of SUMSQ_CHUNK elements, then a serial
 * sum of the partials in chunk order: bitwise the same for any thread count.
 */
#include <math.h>

#include "cpu_common.h"

/* Fixed chunk of the sum of squares; independent of the thread count by design. */
#define SUMSQ_CHUNK ((int64_t)8192)

dsc_status dsc_cpu_sumsq(dsc_context *ctx, int64_t n, const float *g /* [n] */,
                         double *sumsq /* [1] host */) {
  const int64_t nchunk = (n + SUMSQ_CHUNK - 1) / SUMSQ_CHUNK;
  if (nchunk <= 1) { /* one chunk: no partials needed */
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += (double)g[i] * (double)g[i];
    *sumsq = s;
    return DSC_OK;
  }
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, (size_t)nchunk * sizeof(double), &ws));
  double *part = (double *)ws; /* [nchunk] */
#ifdef _OPENMP
#pragma omp parallel for num_threads(ctx->num_threads) schedule(static) if (n >= DSC_CPU_PAR_MIN)
#endif
  for (int64_t c = 0; c < nchunk; ++c) {
    const int64_t i0 = c * SUMSQ_CHUNK;
    const int64_t i1 = i0 + SUMSQ_CHUNK < n ? i0 + SUMSQ_CHUNK : n;
    double s = 0.0;
    for (int64_t i = i0; i < i1; ++i) s += (double)g[i] * (double)g[i];
    part[c] = s;
  }
  double s = 0.0;
  for (int64_t c = 0; c < nchunk; ++c) s += part[c];
  *sumsq = s;
  return DSC_OK;
}

dsc_status dsc_cpu_adamw(dsc_context *ctx, int64_t n, float *p /* [n] f32, updated */,
                         const float *g /* [n] f32 */, dsc_dtype mom_dt,
                         void *m /* [n] mom_dt, updated */, void *v /* [n] mom_dt, updated */,
                         float lr, float beta1, float beta2, float eps, float weight_decay,
                         float bc1, float bc2, float gscale) {
  (void)ctx; /* read only by the OpenMP pragmas */
  const float decay = lr * weight_decay; /* decoupled weight decay factor */
#ifdef _OPENMP
#pragma omp parallel for num_threads(ctx->num_threads) schedule(static) if (n >= DSC_CPU_PAR_MIN)
#endif
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i] * gscale;
    const float mi = beta1 * dsc_cpu_ld(mom_dt, m, i) + (1.0f - beta1) * gi;
    const float vi = beta2 * dsc_cpu_ld(mom_dt, v, i) + (1.0f - beta2) * (gi * gi);
    const float mhat = mi / bc1, vhat = vi / bc2;
    const float pi = p[i];
    p[i] = pi - decay * pi - lr * mhat / (sqrtf(vhat) + eps);
    dsc_cpu_st(mom_dt, m, i, mi);
    dsc_cpu_st(mom_dt, v, i, vi);
  }
  return DSC_OK;
}
