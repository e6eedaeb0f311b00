/*
 * kernels/rms_norm.cu -- RMSNorm forward and backward on the GPU; the twin of
 * csrc/cpu/rms_norm.c.
 *
 * Legend: N rows (all leading dims flattened), D features (the normalized last dim),
 *         T storage type of x, w, y, dy, dx; Pc row chunks of the dw reduction.
 *
 *   forward:  r_n = 1 / sqrt(mean_j(x_nj^2) + eps)          (sum of squares in double)
 *             y_nj = w_j * (x_nj * r_n)
 *   backward: g_nj = dy_nj * w_j
 *             dx_nj = r_n * (g_nj - x_nj * r_n^2 * mean_k(g_nk * x_nk))   (dot in double)
 *             dw_j  = sum_n dy_nj * (x_nj * r_n)              (float32, overwritten)
 *
 * Row kernels: one block per row (grid-stride over rows); each thread takes the columns
 * j = tid, tid + blockDim, ... and the row's sums go through a fixed shuffle tree.
 * dw: no atomics. Rows are cut into Pc chunks (a function of N only); a block of 32x8
 * threads sums one 32-column tile of one chunk (float64) into the workspace, then one
 * thread per column adds the Pc partials in chunk order. Both are the same bits on
 * every run.
 * Aliasing: y may alias x (forward). In the backward, r and dw are finished before the
 * dx kernel runs, and dx kernel threads read their elements before writing them, so dx
 * may alias dy or x, as on the CPU.
 */
#include "common.cuh"

/* Threads per row block: enough to cover wide rows, few enough for narrow ones. */
static int row_threads(int64_t D) {
  if (D >= 4096) return 512;
  if (D >= 1024) return 256;
  if (D >= 256) return 128;
  return 64;
}

/* Rows per launch grid: grid-stride covers the rest. */
static unsigned row_blocks(int64_t N) { return (unsigned)(N < 65536 ? N : 65536); }

/* 1/sqrt(mean(x^2)+eps) of the row xr, computed by the whole block. */
template <typename T>
__device__ __forceinline__ float block_row_rstd(int64_t D, const T *xr /* [D] */, float eps,
                                                double *smem /* [32] */) {
  double ss = 0.0;
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
    const double v = (double)dsc_ld(xr, j);
    ss += v * v;
  }
  ss = dsc_block_sum(ss, smem);
  return (float)(1.0 / sqrt(ss / (double)D + (double)eps));
}

/* y: [N,D] (may alias x); rstd: [N] or NULL. */
template <typename T>
__global__ void rms_fwd_kernel(int64_t N, int64_t D, const T *x /* [N,D] */,
                               const T *__restrict__ w /* [D] */, float eps, T *y /* [N,D] */,
                               float *__restrict__ rstd /* [N] or NULL */) {
  __shared__ double smem[32];
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const T *xr = x + n * D; /* [D] */
    T *yr = y + n * D;       /* [D] */
    const float r = block_row_rstd(D, xr, eps, smem);
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
      dsc_st(yr, j, dsc_ld(w, j) * (dsc_ld(xr, j) * r));
    if (rstd && threadIdx.x == 0) rstd[n] = r;
  }
}

/* r: [N] recomputed 1/rms per row (backward without a saved rstd). */
template <typename T>
__global__ void rms_rstd_kernel(int64_t N, int64_t D, const T *__restrict__ x /* [N,D] */,
                                float eps, float *__restrict__ r /* [N] */) {
  __shared__ double smem[32];
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const float rr = block_row_rstd(D, x + n * D, eps, smem);
    if (threadIdx.x == 0) r[n] = rr;
  }
}

#define DW_TX 32 /* columns per dw tile (one warp: coalesced row reads) */
#define DW_TY 8  /* row lanes per dw block */

/* part: [Pc, D] float64; block (blockIdx.x, blockIdx.y) sums columns
 * [32*blockIdx.x, +32) over rows [rpc*blockIdx.y, +rpc) in row order per lane, then the
 * 8 lanes in lane order. */
template <typename T>
__global__ void __launch_bounds__(DW_TX *DW_TY)
    rms_dw_partial_kernel(int64_t N, int64_t D, int64_t rpc, const T *__restrict__ dy /* [N,D] */,
                          const T *__restrict__ x /* [N,D] */,
                          const float *__restrict__ r /* [N] */,
                          double *__restrict__ part /* [Pc,D] */) {
  __shared__ double acc_s[DW_TY][DW_TX + 1];
  const int64_t j = (int64_t)blockIdx.x * DW_TX + threadIdx.x;
  const int64_t n0 = (int64_t)blockIdx.y * rpc;
  const int64_t n1 = n0 + rpc < N ? n0 + rpc : N;
  double acc = 0.0;
  if (j < D) {
    for (int64_t n = n0 + threadIdx.y; n < n1; n += DW_TY) {
      const float prod = dsc_ld(dy, n * D + j) * (dsc_ld(x, n * D + j) * r[n]);
      acc += (double)prod;
    }
  }
  acc_s[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && j < D) {
    double s = 0.0;
#pragma unroll
    for (int k = 0; k < DW_TY; ++k) s += acc_s[k][threadIdx.x];
    part[(int64_t)blockIdx.y * D + j] = s;
  }
}

/* dw: [D] = sum over the Pc chunks, in chunk order. */
__global__ void rms_dw_final_kernel(int64_t D, int64_t Pc, const double *__restrict__ part,
                                    float *__restrict__ dw /* [D] */) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < D; j += stride) {
    double s = 0.0;
    for (int64_t c = 0; c < Pc; ++c) s += part[c * D + j];
    dw[j] = (float)s;
  }
}

/* dx: [N,D] (may alias dy or x). */
template <typename T>
__global__ void rms_dx_kernel(int64_t N, int64_t D, const T *dy /* [N,D] */, const T *x /* [N,D] */,
                              const T *__restrict__ w /* [D] */,
                              const float *__restrict__ r /* [N] */, T *dx /* [N,D] */) {
  __shared__ double smem[32];
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const T *dyr = dy + n * D; /* [D] */
    const T *xr = x + n * D;   /* [D] */
    T *dxr = dx + n * D;       /* [D] */
    const float rr = r[n];
    double dot = 0.0;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      const float g = dsc_ld(dyr, j) * dsc_ld(w, j);
      dot += (double)g * (double)dsc_ld(xr, j);
    }
    /* The reduction's barriers also order every read of the row before the writes. */
    dot = dsc_block_sum(dot, smem);
    const float c = (float)(dot / (double)D) * rr * rr; /* r^2 * mean(g x) */
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      const float g = dsc_ld(dyr, j) * dsc_ld(w, j);
      dsc_st(dxr, j, rr * (g - dsc_ld(xr, j) * c));
    }
  }
}

template <typename T>
static dsc_status rms_fwd(dsc_context *ctx, const char *fn, int64_t N, int64_t D, const void *x,
                          const void *w, float eps, void *y, float *rstd) {
  const int threads = row_threads(D);
  rms_fwd_kernel<T><<<row_blocks(N), threads, 0, dsc_cuda_stream(ctx)>>>(
      N, D, (const T *)x, (const T *)w, eps, (T *)y, rstd);
  DSC_CUDA_CHECK_LAUNCH(fn);
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_rms_norm_fwd(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t D,
                                            const void *x /* [N,D] dt */,
                                            const void *w /* [D] dt */, float eps,
                                            void *y /* [N,D] dt, may alias x */,
                                            float *rstd /* [N] or NULL */) {
  static const char *const FN = "dsc_cuda_rms_norm_fwd";
  if (N <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  if (D <= 0) return DSC_OK; /* not reached: the ops layer requires D > 0 when N > 0 */
  if (dt == DSC_DTYPE_BFLOAT16) return rms_fwd<__nv_bfloat16>(ctx, FN, N, D, x, w, eps, y, rstd);
  return rms_fwd<float>(ctx, FN, N, D, x, w, eps, y, rstd);
}

template <typename T>
static dsc_status rms_bwd(dsc_context *ctx, const char *fn, int64_t N, int64_t D, const void *dy,
                          const void *x, const void *w, const float *rstd, float eps, void *dx,
                          float *dw) {
  cudaStream_t s = dsc_cuda_stream(ctx);
  /* Row chunks of the dw reduction: >= 64 rows each, at most 256 chunks (grid.y). */
  const int64_t rpc = (N + 255) / 256 > 64 ? (N + 255) / 256 : 64;
  const int64_t Pc = (N + rpc - 1) / rpc;
  /* One workspace, partitioned: r_ws [N] f32 (only without a saved rstd), part [Pc,D] f64. */
  const size_t r_bytes = rstd ? 0 : dsc_cuda_round256((size_t)N * sizeof(float));
  const size_t part_bytes = (size_t)Pc * (size_t)D * sizeof(double);
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, r_bytes + part_bytes, &ws));
  double *part = (double *)((char *)ws + r_bytes); /* [Pc, D] */
  const float *r = rstd;                            /* [N] */
  const int threads = row_threads(D);
  if (!rstd) {
    float *r_ws = (float *)ws; /* [N] */
    rms_rstd_kernel<T><<<row_blocks(N), threads, 0, s>>>(N, D, (const T *)x, eps, r_ws);
    DSC_CUDA_CHECK_LAUNCH(fn);
    r = r_ws;
  }
  const dim3 dw_grid((unsigned)((D + DW_TX - 1) / DW_TX), (unsigned)Pc);
  rms_dw_partial_kernel<T><<<dw_grid, dim3(DW_TX, DW_TY), 0, s>>>(N, D, rpc, (const T *)dy,
                                                                  (const T *)x, r, part);
  DSC_CUDA_CHECK_LAUNCH(fn);
  rms_dw_final_kernel<<<dsc_cuda_blocks(D, 256), 256, 0, s>>>(D, Pc, part, dw);
  DSC_CUDA_CHECK_LAUNCH(fn);
  rms_dx_kernel<T><<<row_blocks(N), threads, 0, s>>>(N, D, (const T *)dy, (const T *)x,
                                                     (const T *)w, r, (T *)dx);
  DSC_CUDA_CHECK_LAUNCH(fn);
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_rms_norm_bwd(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t D,
                                            const void *dy /* [N,D] dt */,
                                            const void *x /* [N,D] dt */,
                                            const void *w /* [D] dt */,
                                            const float *rstd /* [N] or NULL */, float eps,
                                            void *dx /* [N,D] dt */, float *dw /* [D] f32 */) {
  static const char *const FN = "dsc_cuda_rms_norm_bwd";
  if (D <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  if (N <= 0) { /* an empty sum: dw = 0 (float32 zero is all-zero bytes) */
    DSC_CUDA_TRY(cudaMemsetAsync(dw, 0, (size_t)D * sizeof(float), dsc_cuda_stream(ctx)), FN);
    return DSC_OK;
  }
  if (dt == DSC_DTYPE_BFLOAT16)
    return rms_bwd<__nv_bfloat16>(ctx, FN, N, D, dy, x, w, rstd, eps, dx, dw);
  return rms_bwd<float>(ctx, FN, N, D, dy, x, w, rstd, eps, dx, dw);
}
