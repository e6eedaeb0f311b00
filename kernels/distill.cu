/*
 * kernels/distill.cu -- logit distillation on the GPU, the twin of csrc/cpu/distill.c: the
 * top-k of each row of logits, and KL(teacher top-k || student softmax) with its gradient.
 *
 * Legend: N rows, V vocabulary, K kept logits per row, tau the temperature, T storage type
 *         of logits/dlogits, I index type (int32 or int64) of indices/targets.
 *
 * top-k: one block per row, K passes; pass k finds the best element (value descending,
 *   index ascending, NaN last: a strict total order) that ranks after the one pass k-1
 *   found, by a block reduction over (value, index) pairs. O(K V) work per row, exact.
 * KL: one block per row: the student's max and sum of exp(x/tau - m) (double), the
 *   teacher's over its K; KL_n by a block sum (row_kl to the workspace, then one block adds
 *   the rows in a fixed order); the gradient element j = c (q_j - sum_{k: idx_k = j} p_k)
 *   by the thread owning j, which scans the row's K indices (O(V K / threads) per row;
 *   meant for K up to a few hundred). Alias-safe: the reductions finish before any store
 *   and a thread reads x_j before it writes dlogits_j.
 */
#include "common.cuh"

/* ---------------------------------------------------------------- top-k */

/* (a, ia) ranks before (b, ib): larger value first, then the lower index; NaN last. */
__device__ __forceinline__ bool dk_before(float a, long long ia, float b, long long ib) {
  const bool na = isnan(a), nb = isnan(b);
  if (na || nb) return na && nb ? ia < ib : nb;
  return a > b || (a == b && ia < ib);
}

template <typename T, typename I>
__global__ void dk_topk_kernel(int64_t N, int64_t V, int64_t K, const T *__restrict__ logits /* [N,V] */,
                               float *__restrict__ values /* [N,K] */, I *__restrict__ indices /* [N,K] */) {
  __shared__ float sv[32];
  __shared__ long long si[32];
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (int)(blockDim.x >> 5);
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const T *xr = logits + n * V; /* [V] */
    float pv = 0.0f;
    long long pi = -1; /* the previous pick (none) */
    for (int64_t k = 0; k < K; ++k) {
      float bv = 0.0f;
      long long bi = -1; /* this thread's best after (pv, pi); -1: none */
      for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
        const float v = dsc_ld(xr, j);
        if (pi >= 0 && !dk_before(pv, pi, v, j)) continue; /* not after the previous pick */
        if (bi < 0 || dk_before(v, j, bv, bi)) {
          bv = v;
          bi = j;
        }
      }
      /* warp then block argbest (a fixed tree: deterministic) */
      for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const long long oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (oi >= 0 && (bi < 0 || dk_before(ov, oi, bv, bi))) {
          bv = ov;
          bi = oi;
        }
      }
      __syncthreads();
      if (lane == 0) {
        sv[wid] = bv;
        si[wid] = bi;
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        for (int w = 1; w < nw; ++w)
          if (si[w] >= 0 && (bi < 0 || dk_before(sv[w], si[w], bv, bi))) {
            bv = sv[w];
            bi = si[w];
          }
        sv[0] = bv;
        si[0] = bi;
        values[n * K + k] = bv;
        indices[n * K + k] = (I)bi;
      }
      __syncthreads();
      pv = sv[0];
      pi = si[0];
    }
  }
}

template <typename T, typename I>
static dsc_status dk_topk_launch(dsc_context *ctx, const char *fn, int64_t N, int64_t V, int64_t K,
                                 const void *logits, float *values, void *indices) {
  const int threads = V >= 4096 ? 256 : (V >= 512 ? 128 : 32);
  const unsigned blocks = (unsigned)(N < 65536 ? N : 65536);
  dk_topk_kernel<T, I><<<blocks, threads, 0, dsc_cuda_stream(ctx)>>>(N, V, K, (const T *)logits, values,
                                                                      (I *)indices);
  DSC_CUDA_CHECK_LAUNCH(fn);
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_logits_topk(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t V, int64_t K,
                                           const void *logits /* [N,V] dt */, float *values /* [N,K] */,
                                           int idx64, void *indices /* [N,K] */) {
  static const char *const FN = "dsc_cuda_logits_topk";
  DSC_CUDA_ENTER(ctx, FN);
  if (N <= 0) return DSC_OK;
  const bool bf16 = dt == DSC_DTYPE_BFLOAT16;
  if (idx64)
    return bf16 ? dk_topk_launch<__nv_bfloat16, int64_t>(ctx, FN, N, V, K, logits, values, indices)
                : dk_topk_launch<float, int64_t>(ctx, FN, N, V, K, logits, values, indices);
  return bf16 ? dk_topk_launch<__nv_bfloat16, int32_t>(ctx, FN, N, V, K, logits, values, indices)
              : dk_topk_launch<float, int32_t>(ctx, FN, N, V, K, logits, values, indices);
}

/* ---------------------------------------------------------------- top-k KL */

template <typename I>
__global__ void __launch_bounds__(1024) dk_count_kernel(int64_t N, const I *__restrict__ targets, int64_t ignore_index,
                                                        long long *__restrict__ n_valid) {
  __shared__ long long smem[32];
  long long c = 0;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) c += (int64_t)targets[n] != ignore_index;
  c = dsc_block_sum(c, smem);
  if (threadIdx.x == 0) *n_valid = c;
}

template <typename T, typename I, typename J>
__global__ void dk_kl_kernel(int64_t N, int64_t V, int64_t K, const T *logits /* [N,V] */,
                             const J *__restrict__ t_idx /* [N,K] */, const float *__restrict__ t_logits /* [N,K] */,
                             const I *__restrict__ targets /* [N] */, int64_t ignore_index, float inv_tau,
                             float grad_scale, float tau, const long long *__restrict__ n_valid,
                             double *__restrict__ row_kl /* [N] */, T *dlogits /* [N,V] or NULL */) {
  __shared__ float smem_f[32];
  __shared__ double smem_d[32];
  const long long nv = *n_valid;
  /* the gradient's common factor grad_scale / n_valid / tau */
  const float c = nv > 0 ? (float)((double)grad_scale / (double)nv / (double)tau) : 0.0f;
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const T *xr = logits + n * V; /* [V] */
    if ((int64_t)targets[n] == ignore_index) {
      if (threadIdx.x == 0) row_kl[n] = 0.0;
      if (dlogits)
        for (int64_t j = threadIdx.x; j < V; j += blockDim.x) dsc_st(dlogits + n * V, j, 0.0f);
      continue;
    }
    /* the student: z = x / tau, log q = z - lse_q */
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      const float z = dsc_ld(xr, j) * inv_tau;
      m = z > m ? z : m;
    }
    m = dsc_block_max(m, smem_f);
    double s = 0.0;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) s += (double)expf(dsc_ld(xr, j) * inv_tau - m);
    s = dsc_block_sum(s, smem_d);
    const double lse_q = (double)m + log(s);
    /* the teacher: p = softmax(y / tau) over its K */
    const float *y = t_logits + n * K; /* [K] */
    const J *ix = t_idx + n * K;       /* [K] */
    float my = -INFINITY;
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) my = y[k] * inv_tau > my ? y[k] * inv_tau : my;
    my = dsc_block_max(my, smem_f);
    double sy = 0.0;
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) sy += (double)expf(y[k] * inv_tau - my);
    sy = dsc_block_sum(sy, smem_d);
    const double lse_p = (double)my + log(sy);
    double kl = 0.0;
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
      const int64_t j = (int64_t)ix[k];
      /* an index outside [0, V) (a deferred range check's failure) is left out of the KL,
       * as on the CPU (the gradient loop below never matches it either) */
      if (j < 0 || j >= V) continue;
      const double logp = (double)(y[k] * inv_tau) - lse_p, pv = exp(logp);
      const double zq = (double)(dsc_ld(xr, j) * inv_tau) - lse_q;
      if (pv != 0.0 || isnan(pv)) kl += pv * (logp - zq);
    }
    kl = dsc_block_sum(kl, smem_d); /* its barriers: every read of the row is done */
    if (threadIdx.x == 0) row_kl[n] = kl;
    if (dlogits) {
      T *dr = dlogits + n * V; /* [V] */
      const float inv_s = (float)(1.0 / s);
      for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
        float g = expf(dsc_ld(xr, j) * inv_tau - m) * inv_s; /* q_j */
        for (int64_t k = 0; k < K; ++k)
          if ((int64_t)ix[k] == j) g -= (float)exp((double)(y[k] * inv_tau) - lse_p);
        dsc_st(dr, j, c * g);
      }
    }
  }
}

__global__ void __launch_bounds__(1024) dk_final_kernel(int64_t N, const double *__restrict__ row_kl,
                                                        const long long *__restrict__ n_valid, float *loss) {
  __shared__ double smem[32];
  double acc = 0.0;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) acc += row_kl[n];
  acc = dsc_block_sum(acc, smem);
  if (threadIdx.x == 0) {
    const long long nv = *n_valid;
    loss[0] = nv > 0 ? (float)(acc / (double)nv) : 0.0f;
  }
}

template <typename T, typename I, typename J>
static dsc_status dk_kl_launch(dsc_context *ctx, const char *fn, int64_t N, int64_t V, int64_t K, const void *logits,
                               const void *t_idx, const float *t_logits, const void *targets, int64_t ignore_index,
                               float tau, float grad_scale, float *loss, void *dlogits) {
  cudaStream_t s = dsc_cuda_stream(ctx);
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, 256 + (size_t)N * sizeof(double), &ws));
  long long *n_valid = (long long *)ws;            /* [1] */
  double *row_kl = (double *)((char *)ws + 256);   /* [N] */
  dk_count_kernel<I><<<1, 1024, 0, s>>>(N, (const I *)targets, ignore_index, n_valid);
  DSC_CUDA_CHECK_LAUNCH(fn);
  const int threads = V >= 16384 ? 1024 : (V >= 2048 ? 256 : (V >= 256 ? 128 : 32));
  const unsigned blocks = (unsigned)(N < 65536 ? N : 65536);
  dk_kl_kernel<T, I, J><<<blocks, threads, 0, s>>>(N, V, K, (const T *)logits, (const J *)t_idx, t_logits,
                                                   (const I *)targets, ignore_index, 1.0f / tau, grad_scale, tau,
                                                   n_valid, row_kl, (T *)dlogits);
  DSC_CUDA_CHECK_LAUNCH(fn);
  dk_final_kernel<<<1, 1024, 0, s>>>(N, row_kl, n_valid, loss);
  DSC_CUDA_CHECK_LAUNCH(fn);
  return DSC_OK;
}

template <typename T>
static dsc_status dk_kl_idx(dsc_context *ctx, const char *fn, int64_t N, int64_t V, int64_t K, const void *logits,
                            int idx64, const void *t_idx, const float *t_logits, int tgt64, const void *targets,
                            int64_t ignore_index, float tau, float grad_scale, float *loss, void *dlogits) {
  if (tgt64)
    return idx64 ? dk_kl_launch<T, int64_t, int64_t>(ctx, fn, N, V, K, logits, t_idx, t_logits, targets, ignore_index,
                                                     tau, grad_scale, loss, dlogits)
                 : dk_kl_launch<T, int64_t, int32_t>(ctx, fn, N, V, K, logits, t_idx, t_logits, targets, ignore_index,
                                                     tau, grad_scale, loss, dlogits);
  return idx64 ? dk_kl_launch<T, int32_t, int64_t>(ctx, fn, N, V, K, logits, t_idx, t_logits, targets, ignore_index,
                                                   tau, grad_scale, loss, dlogits)
               : dk_kl_launch<T, int32_t, int32_t>(ctx, fn, N, V, K, logits, t_idx, t_logits, targets, ignore_index,
                                                   tau, grad_scale, loss, dlogits);
}

extern "C" dsc_status dsc_cuda_topk_kl(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t V, int64_t K,
                                       const void *logits /* [N,V] dt */, int idx64, const void *t_idx /* [N,K] */,
                                       const float *t_logits /* [N,K] */, int tgt64, const void *targets /* [N] */,
                                       int64_t ignore_index, float temperature, float grad_scale,
                                       float *loss /* [1] */, void *dlogits /* [N,V] dt or NULL */) {
  static const char *const FN = "dsc_cuda_topk_kl";
  DSC_CUDA_ENTER(ctx, FN);
  if (N <= 0) {
    DSC_CUDA_TRY(cudaMemsetAsync(loss, 0, sizeof(float), dsc_cuda_stream(ctx)), FN);
    return DSC_OK;
  }
  if (dt == DSC_DTYPE_BFLOAT16)
    return dk_kl_idx<__nv_bfloat16>(ctx, FN, N, V, K, logits, idx64, t_idx, t_logits, tgt64, targets, ignore_index,
                                    temperature, grad_scale, loss, dlogits);
  return dk_kl_idx<float>(ctx, FN, N, V, K, logits, idx64, t_idx, t_logits, tgt64, targets, ignore_index, temperature,
                          grad_scale, loss, dlogits);
}
