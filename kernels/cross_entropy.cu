/*
 * kernels/cross_entropy.cu -- fused softmax cross-entropy over the vocabulary on the GPU;
 * the twin of csrc/cpu/cross_entropy.c.
 *
 * Legend: N rows (tokens), V vocabulary (classes), t_n the target of row n, T storage
 *         type of logits/dlogits, I target index type (int32 or int64).
 *
 *   m_n   = max_j x_nj
 *   lse_n = m_n + log(sum_j exp(x_nj - m_n))          (the sum in double)
 *   loss  = sum_{n valid} (lse_n - x_n,t_n) / n_valid   (0 when no row is valid)
 *   dlogits_nj = grad_scale / n_valid * (exp(x_nj - m_n) / sum_n - [j == t_n]),
 *                0 on rows whose target is ignore_index
 *
 * Three kernels on the stream, no host sync:
 *   1. one block counts the valid rows (integers: exact) into the workspace;
 *   2. one block per row (grid-stride): max, sum of exp, the row loss (double, to the
 *      workspace), lse, and the gradient row;
 *   3. one block adds the N row losses in a fixed order and writes loss[0].
 * dlogits may alias logits: the target logit and both reductions are read before any
 * element of the row is written (the reductions' barriers order them), and in the
 * gradient pass each thread reads element j before it writes element j.
 */
#include "common.cuh"

#define CE_FINAL_THREADS 1024

/* The target of row i; one outside [0, V) (only recorded by a deferred range check:
 * dsc_context_check reports it) is treated as ignore_index, as on the CPU. */
template <typename I>
__device__ __forceinline__ int64_t target_at(const I *t, int64_t i, int64_t V, int64_t ignore_index) {
  return dsc_guard_index((int64_t)t[i], V, ignore_index);
}

/* n_valid: [1] number of rows whose target is not ignore_index (one block). */
template <typename I>
__global__ void __launch_bounds__(CE_FINAL_THREADS)
    ce_count_kernel(int64_t N, int64_t V, const I *__restrict__ targets /* [N] */, int64_t ignore_index,
                    long long *__restrict__ n_valid /* [1] */) {
  __shared__ long long smem[32];
  long long c = 0;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) c += target_at(targets, n, V, ignore_index) != ignore_index;
  c = dsc_block_sum(c, smem);
  if (threadIdx.x == 0) *n_valid = c;
}

/* row_loss: [N] lse - x_t (0 for ignored rows); lse: [N] or NULL; dlogits: [N,V] or NULL
 * (may alias logits). */
template <typename T, typename I>
__global__ void ce_row_kernel(int64_t N, int64_t V, const T *logits /* [N,V] */,
                              const I *__restrict__ targets /* [N] */, int64_t ignore_index,
                              float grad_scale, const long long *__restrict__ n_valid /* [1] */,
                              double *__restrict__ row_loss /* [N] */,
                              float *__restrict__ lse /* [N] or NULL */,
                              T *dlogits /* [N,V] or NULL */) {
  __shared__ float smem_f[32];
  __shared__ double smem_d[32];
  const long long nv = *n_valid;
  /* The gradient's common factor grad_scale / n_valid (unused when n_valid == 0). */
  const float gscale = nv > 0 ? (float)((double)grad_scale / (double)nv) : 0.0f;
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const T *xr = logits + n * V; /* [V] */
    const int64_t t = target_at(targets, n, V, ignore_index);
    const bool valid = t != ignore_index;
    /* Max first, so every exp argument is <= 0 (no overflow). NaN is skipped here, as by
     * the CPU's `v > m`, and propagates through the sum below. */
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      const float v = dsc_ld(xr, j);
      m = v > m ? v : m;
    }
    m = dsc_block_max(m, smem_f);
    double s = 0.0;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) s += (double)expf(dsc_ld(xr, j) - m);
    const float xt = (valid && threadIdx.x == 0) ? dsc_ld(xr, t) : 0.0f; /* before any write */
    s = dsc_block_sum(s, smem_d);
    const double lse_d = (double)m + log(s);
    if (threadIdx.x == 0) {
      row_loss[n] = valid ? lse_d - (double)xt : 0.0;
      if (lse) lse[n] = (float)lse_d;
    }
    if (dlogits) {
      T *dr = dlogits + n * V; /* [V] */
      if (!valid) {
        for (int64_t j = threadIdx.x; j < V; j += blockDim.x) dsc_st(dr, j, 0.0f);
      } else {
        const float inv_s = (float)(1.0 / s);
        for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
          const float p = expf(dsc_ld(xr, j) - m) * inv_s; /* softmax_j */
          dsc_st(dr, j, (p - (j == t ? 1.0f : 0.0f)) * gscale);
        }
      }
    }
  }
}

/* loss: [1] = (sum of row_loss in a fixed order) / n_valid, or 0 without valid rows. */
__global__ void __launch_bounds__(CE_FINAL_THREADS)
    ce_final_kernel(int64_t N, const double *__restrict__ row_loss /* [N] */,
                    const long long *__restrict__ n_valid /* [1] */,
                    float *__restrict__ loss /* [1] */) {
  __shared__ double smem[32];
  double acc = 0.0;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) acc += row_loss[n];
  acc = dsc_block_sum(acc, smem);
  if (threadIdx.x == 0) {
    const long long nv = *n_valid;
    loss[0] = nv > 0 ? (float)(acc / (double)nv) : 0.0f;
  }
}

template <typename T, typename I>
static dsc_status ce(dsc_context *ctx, const char *fn, int64_t N, int64_t V, const void *logits,
                     const void *targets, int64_t ignore_index, float grad_scale, float *loss,
                     void *dlogits, float *lse) {
  cudaStream_t s = dsc_cuda_stream(ctx);
  /* One workspace, partitioned: n_valid [1] i64, then row_loss [N] f64. */
  const size_t head = 256;
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, head + (size_t)N * sizeof(double), &ws));
  long long *n_valid = (long long *)ws;                /* [1] */
  double *row_loss = (double *)((char *)ws + head);    /* [N] */

  ce_count_kernel<I><<<1, CE_FINAL_THREADS, 0, s>>>(N, V, (const I *)targets, ignore_index, n_valid);
  DSC_CUDA_CHECK_LAUNCH(fn);
  const int threads = V >= 16384 ? 1024 : (V >= 2048 ? 256 : (V >= 256 ? 128 : 32));
  const unsigned blocks = (unsigned)(N < 65536 ? N : 65536);
  ce_row_kernel<T, I><<<blocks, threads, 0, s>>>(N, V, (const T *)logits, (const I *)targets,
                                                 ignore_index, grad_scale, n_valid, row_loss, lse,
                                                 (T *)dlogits);
  DSC_CUDA_CHECK_LAUNCH(fn);
  ce_final_kernel<<<1, CE_FINAL_THREADS, 0, s>>>(N, row_loss, n_valid, loss);
  DSC_CUDA_CHECK_LAUNCH(fn);
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_cross_entropy(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t V,
                                             const void *logits /* [N,V] dt */, int tgt64,
                                             const void *targets /* [N] int32|int64 */,
                                             int64_t ignore_index, float grad_scale,
                                             float *loss /* [1] device */,
                                             void *dlogits /* [N,V] dt or NULL, may alias logits */,
                                             float *lse /* [N] or NULL */) {
  static const char *const FN = "dsc_cuda_cross_entropy";
  DSC_CUDA_ENTER(ctx, FN);
  if (N <= 0) { /* the loss of no token is 0 (all-zero bytes) */
    DSC_CUDA_TRY(cudaMemsetAsync(loss, 0, sizeof(float), dsc_cuda_stream(ctx)), FN);
    return DSC_OK;
  }
  const bool bf16 = dt == DSC_DTYPE_BFLOAT16;
  if (tgt64)
    return bf16 ? ce<__nv_bfloat16, int64_t>(ctx, FN, N, V, logits, targets, ignore_index,
                                             grad_scale, loss, dlogits, lse)
                : ce<float, int64_t>(ctx, FN, N, V, logits, targets, ignore_index, grad_scale,
                                     loss, dlogits, lse);
  return bf16 ? ce<__nv_bfloat16, int32_t>(ctx, FN, N, V, logits, targets, ignore_index,
                                           grad_scale, loss, dlogits, lse)
              : ce<float, int32_t>(ctx, FN, N, V, logits, targets, ignore_index, grad_scale, loss,
                                   dlogits, lse);
}
