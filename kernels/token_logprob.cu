/*
 * kernels/token_logprob.cu -- per-token log-probabilities of targets under softmax(logits)
 * and their backward on the GPU; the twin of csrc/cpu/token_logprob.c.
 *
 * Legend: N rows (tokens), V vocabulary, t_n the target of row n, T storage type of
 *         logits/dlogits, I target index type (int32 or int64).
 *
 *   m_n = max_j x_nj,  s_n = sum_j exp(x_nj - m_n) (double),  lse_n = m_n + log(s_n)
 *   logprob_n = x_n,t_n - lse_n;  entropy_n = lse_n - sum_j p_nj x_nj  (0 on ignored rows)
 *   dlogits_nj = dlogprobs_n * ([j == t_n] - p_nj)                     (0 on ignored rows)
 *
 * One block per row (grid-stride over rows), block reductions in a fixed tree: the same
 * bits for the same input on the same device. dlogits may alias logits: both reductions
 * finish (their barriers) before any element of the row is written, and each thread reads
 * element j before it writes element j.
 */
#include "common.cuh"

static inline int tl_threads(int64_t V) { return V >= 16384 ? 1024 : (V >= 2048 ? 256 : (V >= 256 ? 128 : 32)); }

/* max and sum of exp of row xr [V] (every thread of the block gets both). */
template <typename T>
__device__ __forceinline__ double tl_row_stats(const T *xr, int64_t V, float *m_out, float *smem_f,
                                               double *smem_d) {
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float v = dsc_ld(xr, j);
    m = v > m ? v : m; /* NaN skipped here, propagates through the sum */
  }
  m = dsc_block_max(m, smem_f);
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) s += (double)expf(dsc_ld(xr, j) - m);
  s = dsc_block_sum(s, smem_d);
  *m_out = m;
  return s;
}

template <typename T, typename I>
__global__ void tl_fwd_kernel(int64_t N, int64_t V, const T *__restrict__ logits /* [N,V] */,
                              const I *__restrict__ targets /* [N] */, int64_t ignore_index,
                              float *__restrict__ logprobs /* [N] */, float *__restrict__ entropy /* [N] or NULL */) {
  __shared__ float smem_f[32];
  __shared__ double smem_d[32];
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    /* a target outside [0, V) (a deferred range check's failure) counts as ignored */
    const int64_t t = dsc_guard_index((int64_t)targets[n], V, ignore_index);
    if (t == ignore_index) { /* uniform over the block: every thread skips the row */
      if (threadIdx.x == 0) {
        logprobs[n] = 0.0f;
        if (entropy) entropy[n] = 0.0f;
      }
      continue;
    }
    const T *xr = logits + n * V; /* [V] */
    float m;
    const double s = tl_row_stats(xr, V, &m, smem_f, smem_d);
    const double lse = (double)m + log(s);
    if (entropy) {
      double px = 0.0;
      for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
        const float x = dsc_ld(xr, j), e = expf(x - m);
        if (e != 0.0f) px += (double)e * (double)x;
      }
      px = dsc_block_sum(px, smem_d);
      if (threadIdx.x == 0) entropy[n] = (float)(lse - px / s);
    }
    if (threadIdx.x == 0) logprobs[n] = (float)((double)dsc_ld(xr, t) - lse);
  }
}

template <typename T, typename I>
__global__ void tl_bwd_kernel(int64_t N, int64_t V, const T *logits /* [N,V] */, const I *__restrict__ targets,
                              int64_t ignore_index, const float *__restrict__ dlogprobs /* [N] */,
                              T *dlogits /* [N,V], may alias logits */) {
  __shared__ float smem_f[32];
  __shared__ double smem_d[32];
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    /* a target outside [0, V) (a deferred range check's failure) counts as ignored */
    const int64_t t = dsc_guard_index((int64_t)targets[n], V, ignore_index);
    T *dr = dlogits + n * V; /* [V] */
    if (t == ignore_index) {
      for (int64_t j = threadIdx.x; j < V; j += blockDim.x) dsc_st(dr, j, 0.0f);
      continue;
    }
    const T *xr = logits + n * V; /* [V] */
    float m;
    const double s = tl_row_stats(xr, V, &m, smem_f, smem_d);
    const float inv_s = (float)(1.0 / s), g = dlogprobs[n];
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      const float p = expf(dsc_ld(xr, j) - m) * inv_s;
      dsc_st(dr, j, j == t ? g * (1.0f - p) : -g * p);
    }
  }
}

template <typename T, typename I>
static dsc_status tl_launch(dsc_context *ctx, const char *fn, int bwd, int64_t N, int64_t V, const void *logits,
                            const void *targets, int64_t ignore_index, float *logprobs, float *entropy,
                            const float *dlogprobs, void *dlogits) {
  cudaStream_t s = dsc_cuda_stream(ctx);
  const unsigned blocks = (unsigned)(N < 65536 ? N : 65536);
  if (bwd)
    tl_bwd_kernel<T, I><<<blocks, tl_threads(V), 0, s>>>(N, V, (const T *)logits, (const I *)targets, ignore_index,
                                                        dlogprobs, (T *)dlogits);
  else
    tl_fwd_kernel<T, I><<<blocks, tl_threads(V), 0, s>>>(N, V, (const T *)logits, (const I *)targets, ignore_index,
                                                        logprobs, entropy);
  DSC_CUDA_CHECK_LAUNCH(fn);
  return DSC_OK;
}

static dsc_status tl_dispatch(dsc_context *ctx, const char *fn, int bwd, dsc_dtype dt, int64_t N, int64_t V,
                              const void *logits, int tgt64, const void *targets, int64_t ignore_index,
                              float *logprobs, float *entropy, const float *dlogprobs, void *dlogits) {
  DSC_CUDA_ENTER(ctx, fn);
  if (N <= 0) return DSC_OK;
  const bool bf16 = dt == DSC_DTYPE_BFLOAT16;
  if (tgt64)
    return bf16 ? tl_launch<__nv_bfloat16, int64_t>(ctx, fn, bwd, N, V, logits, targets, ignore_index, logprobs,
                                                    entropy, dlogprobs, dlogits)
                : tl_launch<float, int64_t>(ctx, fn, bwd, N, V, logits, targets, ignore_index, logprobs, entropy,
                                            dlogprobs, dlogits);
  return bf16 ? tl_launch<__nv_bfloat16, int32_t>(ctx, fn, bwd, N, V, logits, targets, ignore_index, logprobs,
                                                  entropy, dlogprobs, dlogits)
              : tl_launch<float, int32_t>(ctx, fn, bwd, N, V, logits, targets, ignore_index, logprobs, entropy,
                                          dlogprobs, dlogits);
}

extern "C" dsc_status dsc_cuda_token_logprob(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t V,
                                             const void *logits /* [N,V] dt */, int tgt64,
                                             const void *targets /* [N] */, int64_t ignore_index,
                                             float *logprobs /* [N] */, float *entropy /* [N] or NULL */) {
  return tl_dispatch(ctx, "dsc_cuda_token_logprob", 0, dt, N, V, logits, tgt64, targets, ignore_index, logprobs,
                     entropy, NULL, NULL);
}

extern "C" dsc_status dsc_cuda_token_logprob_bwd(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t V,
                                                 const void *logits /* [N,V] dt */, int tgt64,
                                                 const void *targets /* [N] */, int64_t ignore_index,
                                                 const float *dlogprobs /* [N] */,
                                                 void *dlogits /* [N,V] dt, may alias logits */) {
  return tl_dispatch(ctx, "dsc_cuda_token_logprob_bwd", 1, dt, N, V, logits, tgt64, targets, ignore_index, NULL,
                     NULL, dlogprobs, dlogits);
}
