/*
 * kernels/adamw.cu -- the AdamW update and the float64 sum of squares behind global-norm
 * clipping, on the GPU; the twin of csrc/cpu/adamw.c.
 *
 * Legend: n elements of one parameter tensor (flattened); M moment storage type
 *         (float or __nv_bfloat16, from mom_dt).
 *
 *   g'  = g * gscale
 *   m   = beta1 * m + (1 - beta1) * g'
 *   v   = beta2 * v + (1 - beta2) * g'^2
 *   p   = p - lr * wd * p - lr * (m / bc1) / (sqrt(v / bc2) + eps)   (decay on the old p)
 *
 * The update is written with __fmul_rn/__fadd_rn/__fsub_rn so nvcc cannot contract it
 * into FMAs: with IEEE division and sqrt (nvcc's defaults) every element is then bitwise
 * the CPU result (which gcc computes without contraction on x86-64). bf16 moments are
 * widened, updated in float32, used for p unrounded, then rounded once when stored.
 *
 * sumsq: a fixed grid (a function of n only, not of the device) of per-thread float64
 * partials, a shuffle tree per block, then one block sums the block partials in order:
 * the same bits on every run and every GPU.
 */
#include "common.cuh"

/* ---- sum of squares ------------------------------------------------------------------ */

#define SUMSQ_THREADS 256
#define SUMSQ_MAX_BLOCKS 1024 /* partials fit the context scratch (8 KiB of doubles) */

/* part: [gridDim.x] per-block float64 sums of g^2. */
__global__ void __launch_bounds__(SUMSQ_THREADS)
    sumsq_partial_kernel(int64_t n, const float *__restrict__ g /* [n] */,
                         double *__restrict__ part /* [gridDim.x] */) {
  __shared__ double smem[32];
  double acc = 0.0;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const double v = (double)g[i];
    acc += v * v;
  }
  acc = dsc_block_sum(acc, smem);
  if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

/* out: [1] = sum of part[0..nb) in a fixed order (one block). */
__global__ void __launch_bounds__(SUMSQ_THREADS)
    sumsq_final_kernel(int nb, const double *__restrict__ part /* [nb] */,
                       double *__restrict__ out /* [1] */) {
  __shared__ double smem[32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < nb; i += blockDim.x) acc += part[i];
  acc = dsc_block_sum(acc, smem);
  if (threadIdx.x == 0) *out = acc;
}

extern "C" dsc_status dsc_cuda_sumsq(dsc_context *ctx, int64_t n, const float *g /* [n] */,
                                     double *sumsq /* [1] host */) {
  static const char *const FN = "dsc_cuda_sumsq";
  *sumsq = 0.0;
  if (n <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  dsc_cuda_state *st = dsc_cuda_st(ctx);
  cudaStream_t s = dsc_cuda_stream(ctx);
  /* At least 8 elements per thread before adding blocks; the count depends on n only. */
  const int nb = (int)dsc_cuda_blocks(n, SUMSQ_THREADS * 8, SUMSQ_MAX_BLOCKS);
  double *part = (double *)st->scratch;   /* [SUMSQ_MAX_BLOCKS] */
  double *result = part + SUMSQ_MAX_BLOCKS; /* [1] */
  sumsq_partial_kernel<<<nb, SUMSQ_THREADS, 0, s>>>(n, g, part);
  DSC_CUDA_CHECK_LAUNCH(FN);
  sumsq_final_kernel<<<1, SUMSQ_THREADS, 0, s>>>(nb, part, result);
  DSC_CUDA_CHECK_LAUNCH(FN);
  double *host = (double *)st->pinned; /* [1] */
  DSC_TRY(dsc_cuda_to_host(ctx, host, result, sizeof(double), FN));
  *sumsq = host[0];
  return DSC_OK;
}

/* total: [1] = per[0] + per[1] + ... + per[n-1] in list order, in float64 (one thread: the
 * same additions, in the same order, as the host loop over per-tensor sums). */
__global__ void sumsq_list_total_kernel(int n, const double *__restrict__ per /* [n] */,
                                        double *__restrict__ total /* [1] */) {
  double acc = 0.0;
  for (int i = 0; i < n; ++i) acc += per[i];
  *total = acc;
}

/* *total (device) = the list's sum of squares: per tensor as dsc_cuda_sumsq, added in list
 * order (no copy, no wait). */
extern "C" dsc_status dsc_cuda_sumsq_list_dev(dsc_context *ctx, int32_t n,
                                              const float *const *g /* [n] host array of device ptrs */,
                                              const int64_t *numel /* [n] host */,
                                              double *total /* [1] device */) {
  static const char *const FN = "dsc_cuda_sumsq_list";
  DSC_CUDA_ENTER(ctx, FN);
  dsc_cuda_state *st = dsc_cuda_st(ctx);
  cudaStream_t s = dsc_cuda_stream(ctx);
  if (n <= 0) {
    DSC_CUDA_TRY(cudaMemsetAsync(total, 0, sizeof(double), s), FN);
    return DSC_OK;
  }
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, (size_t)n * sizeof(double), &ws));
  double *per = (double *)ws;           /* [n] per-tensor sums (0 for empty tensors) */
  double *part = (double *)st->scratch; /* [SUMSQ_MAX_BLOCKS], reused tensor by tensor */
  DSC_CUDA_TRY(cudaMemsetAsync(per, 0, (size_t)n * sizeof(double), s), FN);
  for (int32_t i = 0; i < n; ++i) {
    if (numel[i] <= 0) continue;
    /* the same partition and order as dsc_cuda_sumsq: the same per-tensor bits */
    const int nb = (int)dsc_cuda_blocks(numel[i], SUMSQ_THREADS * 8, SUMSQ_MAX_BLOCKS);
    sumsq_partial_kernel<<<nb, SUMSQ_THREADS, 0, s>>>(numel[i], g[i], part);
    DSC_CUDA_CHECK_LAUNCH(FN);
    sumsq_final_kernel<<<1, SUMSQ_THREADS, 0, s>>>(nb, part, per + i);
    DSC_CUDA_CHECK_LAUNCH(FN);
  }
  sumsq_list_total_kernel<<<1, 1, 0, s>>>((int)n, per, total);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_sumsq_list(dsc_context *ctx, int32_t n,
                                          const float *const *g /* [n] host array of device ptrs */,
                                          const int64_t *numel /* [n] host */,
                                          double *sumsq /* [1] host */) {
  static const char *const FN = "dsc_cuda_sumsq_list";
  *sumsq = 0.0;
  if (n <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  dsc_cuda_state *st = dsc_cuda_st(ctx);
  double *total = (double *)st->scratch + SUMSQ_MAX_BLOCKS; /* [1], past the partials */
  DSC_TRY(dsc_cuda_sumsq_list_dev(ctx, n, g, numel, total));
  double *host = (double *)st->pinned; /* [1] */
  DSC_TRY(dsc_cuda_to_host(ctx, host, total, sizeof(double), FN));
  *sumsq = host[0];
  return DSC_OK;
}

/* ---- the training step's control block (dsc_step_ctl) ------------------------------------- */

/* One thread: csrc/cpu/adamw.c dsc_cpu_step_ctl's expressions (IEEE sqrt and division in
 * double, as the host). */
__global__ void step_ctl_kernel(const double *__restrict__ total /* [1] */, float max_norm, int64_t step,
                                const int64_t *__restrict__ failed /* [1] or NULL */,
                                dsc_step_ctl *__restrict__ ctl /* [1] */) {
  const double t = *total;
  const float norm = (float)sqrt(t);
  ctl->sumsq = t;
  ctl->norm = norm;
  ctl->coef = (max_norm > 0.0f && norm > max_norm) ? (float)((double)max_norm / ((double)norm + 1e-6)) : 1.0f;
  const int32_t skip = failed != NULL && *failed != 0;
  ctl->skip = skip;
  ctl->pad = 0;
  if (!skip) ctl->applied = step;
}

extern "C" dsc_status dsc_cuda_step_ctl(dsc_context *ctx, const double *total /* [1] device */, float max_norm,
                                        int64_t step, const int64_t *failed /* [1] device or NULL */,
                                        dsc_step_ctl *ctl /* [1] device */) {
  static const char *const FN = "dsc_cuda_step_ctl";
  DSC_CUDA_ENTER(ctx, FN);
  step_ctl_kernel<<<1, 1, 0, dsc_cuda_stream(ctx)>>>(total, max_norm, step, failed, ctl);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

/* ---- AdamW --------------------------------------------------------------------------- */

struct AdamwArgs {
  float lr, beta1, beta2, eps, decay /* lr * weight_decay */, bc1, bc2, gscale;
  const dsc_step_ctl *ctl; /* NULL, or the step's control block: skip, or gscale = ctl->coef */
};

/* The block's arguments after the control block: 0 when the update is skipped. */
__device__ __forceinline__ bool adamw_ctl(AdamwArgs &a) {
  if (a.ctl == NULL) return true;
  if (a.ctl->skip) return false;
  a.gscale = a.ctl->coef;
  return true;
}

/* One element: the CPU expression, operation for operation, without contraction.
 * p, m, v are updated in place (m, v as float32 here). */
__device__ __forceinline__ void adamw_one(const AdamwArgs &a, float &p, float gi_raw, float &m,
                                          float &v) {
  const float gi = __fmul_rn(gi_raw, a.gscale);
  const float mi = __fadd_rn(__fmul_rn(a.beta1, m), __fmul_rn(1.0f - a.beta1, gi));
  const float vi = __fadd_rn(__fmul_rn(a.beta2, v), __fmul_rn(1.0f - a.beta2, __fmul_rn(gi, gi)));
  const float mhat = __fdiv_rn(mi, a.bc1), vhat = __fdiv_rn(vi, a.bc2);
  const float step = __fdiv_rn(__fmul_rn(a.lr, mhat), __fadd_rn(__fsqrt_rn(vhat), a.eps));
  p = __fsub_rn(__fsub_rn(p, __fmul_rn(a.decay, p)), step);
  m = mi;
  v = vi;
}

/* Scalar path, any alignment. p, g: [n] f32; m, v: [n] M. */
template <typename M>
__global__ void adamw_kernel(int64_t n, AdamwArgs a, float *__restrict__ p,
                             const float *__restrict__ g, M *__restrict__ m,
                             M *__restrict__ v) {
  if (!adamw_ctl(a)) return;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    float pi = p[i], mi = dsc_ld(m, i), vi = dsc_ld(v, i);
    adamw_one(a, pi, g[i], mi, vi);
    p[i] = pi;
    dsc_st(m, i, mi);
    dsc_st(v, i, vi);
  }
}

/* Vector path: 4 elements per access; every pointer aligned to its pack. The n % 4 tail
 * elements are done by the first threads after the loop. */
template <typename M>
__global__ void adamw_vec4_kernel(int64_t n, AdamwArgs a, float *__restrict__ p,
                                  const float *__restrict__ g, M *__restrict__ m,
                                  M *__restrict__ v) {
  if (!adamw_ctl(a)) return;
  typedef DscPack<float, 4> PF;
  typedef DscPack<M, 4> PM;
  const int64_t nvec = n / 4;
  const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t k = tid; k < nvec; k += stride) {
    PF pp = ((PF *)p)[k];
    const PF gg = ((const PF *)g)[k];
    PM mm = ((PM *)m)[k], vv = ((PM *)v)[k];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float mi = dsc_to_f32(mm.v[e]), vi = dsc_to_f32(vv.v[e]);
      adamw_one(a, pp.v[e], gg.v[e], mi, vi);
      mm.v[e] = dsc_from_f32<M>(mi);
      vv.v[e] = dsc_from_f32<M>(vi);
    }
    ((PF *)p)[k] = pp;
    ((PM *)m)[k] = mm;
    ((PM *)v)[k] = vv;
  }
  const int64_t i = nvec * 4 + tid;
  if (i < n) {
    float pi = p[i], mi = dsc_ld(m, i), vi = dsc_ld(v, i);
    adamw_one(a, pi, g[i], mi, vi);
    p[i] = pi;
    dsc_st(m, i, mi);
    dsc_st(v, i, vi);
  }
}

template <typename M>
static dsc_status launch_adamw(dsc_context *ctx, const char *fn, int64_t n, const AdamwArgs &a,
                               float *p, const float *g, void *m, void *v) {
  cudaStream_t s = dsc_cuda_stream(ctx);
  const int threads = 256;
  const bool vec = dsc_cuda_aligned(p, 16) && dsc_cuda_aligned(g, 16) &&
                   dsc_cuda_aligned(m, 4 * sizeof(M)) && dsc_cuda_aligned(v, 4 * sizeof(M));
  if (vec) {
    adamw_vec4_kernel<M><<<dsc_cuda_blocks(n / 4 + 1, threads), threads, 0, s>>>(
        n, a, p, g, (M *)m, (M *)v);
  } else {
    adamw_kernel<M><<<dsc_cuda_blocks(n, threads), threads, 0, s>>>(n, a, p, g, (M *)m, (M *)v);
  }
  DSC_CUDA_CHECK_LAUNCH(fn);
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_adamw(dsc_context *ctx, int64_t n, float *p /* [n] f32 */,
                                     const float *g /* [n] f32 */, dsc_dtype mom_dt,
                                     void *m /* [n] mom_dt */, void *v /* [n] mom_dt */,
                                     float lr, float beta1, float beta2, float eps,
                                     float weight_decay, float bc1, float bc2, float gscale,
                                     const dsc_step_ctl *ctl /* device or NULL */) {
  static const char *const FN = "dsc_cuda_adamw";
  if (n <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  AdamwArgs a;
  a.lr = lr;
  a.beta1 = beta1;
  a.beta2 = beta2;
  a.eps = eps;
  a.decay = lr * weight_decay; /* the same float product as the CPU's `decay` */
  a.bc1 = bc1;
  a.bc2 = bc2;
  a.gscale = gscale;
  a.ctl = ctl;
  if (mom_dt == DSC_DTYPE_BFLOAT16)
    return launch_adamw<__nv_bfloat16>(ctx, FN, n, a, p, g, m, v);
  return launch_adamw<float>(ctx, FN, n, a, p, g, m, v);
}
