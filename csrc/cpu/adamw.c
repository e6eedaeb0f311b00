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
 *
 * The model's step uses the *_runs forms: one parallel pass over all trained parameters
 * (runs of the flat arenas) instead of a parallel region per tensor; float32 moments run
 * 8 lanes at a time with AVX2 (mul/add/div/sqrt, each correctly rounded: the portable bits).
 */
#include <math.h>
#include <stdlib.h>

#include "cpu_common.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define ADAMW_AVX2 1
#define ADAMW_AVX2_FN __attribute__((target("avx2")))
#endif

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
                         float bc1, float bc2, float gscale, const dsc_step_ctl *ctl) {
  (void)ctx; /* read only by the OpenMP pragmas */
  if (ctl) {
    if (ctl->skip) return DSC_OK;
    gscale = ctl->coef;
  }
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

/* ---- the training step's control block (model_train.c's step without the host) --------- */

dsc_status dsc_cpu_sumsq_list_dev(dsc_context *ctx, int32_t n, const float *const *g, const int64_t *numel,
                                  double *total /* [1] */) {
  double acc = 0.0;
  for (int32_t i = 0; i < n; ++i) {
    if (numel[i] <= 0) continue;
    double s = 0.0;
    DSC_TRY(dsc_cpu_sumsq(ctx, numel[i], g[i], &s));
    acc += s;
  }
  *total = acc;
  return DSC_OK;
}

dsc_status dsc_cpu_step_ctl(dsc_context *ctx, const double *total /* [1] */, float max_norm, int64_t step,
                            const int64_t *failed /* [1] or NULL */, dsc_step_ctl *ctl /* [1] */) {
  (void)ctx;
  /* the host path's expressions (dsc_global_norm's float norm, then the coefficient) */
  const float norm = (float)sqrt(*total);
  ctl->sumsq = *total;
  ctl->norm = norm;
  ctl->coef = (max_norm > 0.0f && norm > max_norm) ? (float)((double)max_norm / ((double)norm + 1e-6)) : 1.0f;
  ctl->skip = failed && *failed != 0;
  ctl->pad = 0;
  if (!ctl->skip) ctl->applied = step;
  return DSC_OK;
}

/* ---- flat runs (the model's step) ------------------------------------------------------ */

#define RUN_CHUNK ((int64_t)8192) /* elements per work item and per sumsq partial */

/* The chunks of the runs: first[r] = index of run r's first chunk, first[nrun] = total. */
static int64_t run_chunks(int32_t nrun, const dsc_param_run *runs, int64_t *first) {
  int64_t c = 0;
  for (int32_t r = 0; r < nrun; ++r) {
    first[r] = c;
    c += (runs[r].n + RUN_CHUNK - 1) / RUN_CHUNK;
  }
  first[nrun] = c;
  return c;
}

/* The run holding chunk c (binary search in first). */
static int32_t run_of(int32_t nrun, const int64_t *first, int64_t c) {
  int32_t lo = 0, hi = nrun - 1;
  while (lo < hi) {
    const int32_t mid = (lo + hi + 1) / 2;
    if (first[mid] <= c) lo = mid; else hi = mid - 1;
  }
  return lo;
}

/* sum of g[i]^2 over n elements: 8 double lanes (lane l: i = l, l + 8, ...), fixed tree. */
static double sumsq8(int64_t n, const float *g) {
  double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = 0; i < n; ++i) a[i % 8] += (double)g[i] * (double)g[i];
  return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

#ifdef ADAMW_AVX2
ADAMW_AVX2_FN static double sumsq8_avx2(int64_t n, const float *g) {
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(g + i);
    const __m256d a = _mm256_cvtps_pd(_mm256_castps256_ps128(x));
    const __m256d b = _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1));
    lo = _mm256_add_pd(lo, _mm256_mul_pd(a, a));
    hi = _mm256_add_pd(hi, _mm256_mul_pd(b, b));
  }
  double a[8];
  _mm256_storeu_pd(a, lo);
  _mm256_storeu_pd(a + 4, hi);
  for (int l = 0; i < n; ++i, ++l) a[l] += (double)g[i] * (double)g[i];
  return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}
#endif

dsc_status dsc_cpu_sumsq_runs(dsc_context *ctx, int32_t nrun, const dsc_param_run *runs,
                              const float *g /* flat arena */, double *sumsq) {
  *sumsq = 0.0;
  if (nrun <= 0) return DSC_OK;
  int64_t *first = (int64_t *)malloc((size_t)(nrun + 1) * sizeof(int64_t));
  if (!first) return dsc_error(DSC_ERR_OUT_OF_MEMORY, "dsc_cpu_sumsq_runs", "out of host memory");
  const int64_t nc = run_chunks(nrun, runs, first);
  void *ws = NULL;
  dsc_status st = dsc_workspace(ctx, (size_t)(nc ? nc : 1) * sizeof(double), &ws);
  if (st != DSC_OK) {
    free(first);
    return st;
  }
  double *part = (double *)ws; /* [nc] */
#ifdef ADAMW_AVX2
  const int avx2 = ctx->cpu_avx2;
#endif
  DSC_CPU_FOR(nc > 1 && nc * RUN_CHUNK >= DSC_CPU_PAR_MIN, ctx->num_threads, c, nc,
    const int32_t r = run_of(nrun, first, c);
    const int64_t i0 = (c - first[r]) * RUN_CHUNK;
    const int64_t n = runs[r].n - i0 < RUN_CHUNK ? runs[r].n - i0 : RUN_CHUNK;
    const float *gp = g + runs[r].off + i0;
#ifdef ADAMW_AVX2
    part[c] = avx2 ? sumsq8_avx2(n, gp) : sumsq8(n, gp);
#else
    part[c] = sumsq8(n, gp);
#endif
  );
  double s = 0.0;
  for (int64_t c = 0; c < nc; ++c) s += part[c];
  *sumsq = s;
  free(first);
  return DSC_OK;
}

/* The update of one element (dsc_cpu_adamw's expression, operation for operation). */
static inline void adamw1(float *p, float g, float *m, float *v, float lr, float beta1, float beta2,
                          float eps, float decay, float bc1, float bc2, float gscale) {
  const float gi = g * gscale;
  const float mi = beta1 * *m + (1.0f - beta1) * gi;
  const float vi = beta2 * *v + (1.0f - beta2) * (gi * gi);
  const float mhat = mi / bc1, vhat = vi / bc2;
  const float pi = *p;
  *p = pi - decay * pi - lr * mhat / (sqrtf(vhat) + eps);
  *m = mi;
  *v = vi;
}

#ifdef ADAMW_AVX2
ADAMW_AVX2_FN static void adamw_f32_avx2(int64_t n, float *p, const float *g, float *m, float *v,
                                         float lr, float beta1, float beta2, float eps, float decay,
                                         float bc1, float bc2, float gscale) {
  const __m256 b1 = _mm256_set1_ps(beta1), b2 = _mm256_set1_ps(beta2);
  const __m256 c1 = _mm256_set1_ps(1.0f - beta1), c2 = _mm256_set1_ps(1.0f - beta2);
  const __m256 gs = _mm256_set1_ps(gscale), vb1 = _mm256_set1_ps(bc1), vb2 = _mm256_set1_ps(bc2);
  const __m256 dc = _mm256_set1_ps(decay), vlr = _mm256_set1_ps(lr), ve = _mm256_set1_ps(eps);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gi = _mm256_mul_ps(_mm256_loadu_ps(g + i), gs);
    const __m256 mi = _mm256_add_ps(_mm256_mul_ps(b1, _mm256_loadu_ps(m + i)), _mm256_mul_ps(c1, gi));
    const __m256 vi = _mm256_add_ps(_mm256_mul_ps(b2, _mm256_loadu_ps(v + i)),
                                    _mm256_mul_ps(c2, _mm256_mul_ps(gi, gi)));
    const __m256 mhat = _mm256_div_ps(mi, vb1), vhat = _mm256_div_ps(vi, vb2);
    const __m256 pi = _mm256_loadu_ps(p + i);
    const __m256 upd = _mm256_div_ps(_mm256_mul_ps(vlr, mhat), _mm256_add_ps(_mm256_sqrt_ps(vhat), ve));
    _mm256_storeu_ps(p + i, _mm256_sub_ps(_mm256_sub_ps(pi, _mm256_mul_ps(dc, pi)), upd));
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
  }
  for (; i < n; ++i) adamw1(p + i, g[i], m + i, v + i, lr, beta1, beta2, eps, decay, bc1, bc2, gscale);
}
#endif

dsc_status dsc_cpu_adamw_runs(dsc_context *ctx, int32_t nrun, const dsc_param_run *runs, float *p,
                              const float *g, dsc_dtype mom_dt, void *m, void *v, float lr,
                              float beta1, float beta2, float eps, float bc1, float bc2,
                              float gscale) {
  if (nrun <= 0) return DSC_OK;
  int64_t *first = (int64_t *)malloc((size_t)(nrun + 1) * sizeof(int64_t));
  if (!first) return dsc_error(DSC_ERR_OUT_OF_MEMORY, "dsc_cpu_adamw_runs", "out of host memory");
  const int64_t nc = run_chunks(nrun, runs, first);
  const int f32 = mom_dt == DSC_DTYPE_FLOAT32;
#ifdef ADAMW_AVX2
  const int avx2 = ctx->cpu_avx2 && f32;
#endif
  DSC_CPU_FOR(nc > 1 && nc * RUN_CHUNK >= DSC_CPU_PAR_MIN, ctx->num_threads, c, nc,
    const int32_t r = run_of(nrun, first, c);
    const int64_t i0 = runs[r].off + (c - first[r]) * RUN_CHUNK;
    const int64_t rest = runs[r].off + runs[r].n - i0;
    const int64_t n = rest < RUN_CHUNK ? rest : RUN_CHUNK;
    const float decay = lr * runs[r].weight_decay;
#ifdef ADAMW_AVX2
    if (avx2) {
      adamw_f32_avx2(n, p + i0, g + i0, (float *)m + i0, (float *)v + i0, lr, beta1, beta2, eps, decay,
                     bc1, bc2, gscale);
      continue;
    }
#endif
    if (f32) {
      for (int64_t i = i0; i < i0 + n; ++i)
        adamw1(p + i, g[i], (float *)m + i, (float *)v + i, lr, beta1, beta2, eps, decay, bc1, bc2, gscale);
    } else {
      for (int64_t i = i0; i < i0 + n; ++i) {
        float mi = dsc_cpu_ld(mom_dt, m, i), vi = dsc_cpu_ld(mom_dt, v, i);
        adamw1(p + i, g[i], &mi, &vi, lr, beta1, beta2, eps, decay, bc1, bc2, gscale);
        dsc_cpu_st(mom_dt, m, i, mi);
        dsc_cpu_st(mom_dt, v, i, vi);
      }
    }
  );
  free(first);
  return DSC_OK;
}
