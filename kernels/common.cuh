/*
 * kernels/common.cuh -- what every file of the CUDA backend shares: the per-context CUDA
 * state, error macros that turn a cudaError_t into a dsc_status with a message (the
 * library never prints, exits or aborts), bf16 <-> f32 loads and stores, 16-byte
 * vector packs, and deterministic warp/block reductions.
 *
 * Legend: n element counts; `T` is the storage type of a float tensor (float or
 * __nv_bfloat16); all arithmetic is float32 (or float64 where a sum says so).
 *
 * Conventions of the kernels/ files:
 *  - every launcher calls DSC_CUDA_ENTER first (the context's device becomes current),
 *    returns DSC_OK without launching for empty inputs, runs on ctx->stream, and checks
 *    every launch with DSC_CUDA_CHECK_LAUNCH;
 *  - index math is int64_t; grids are capped and kernels loop (grid-stride), so no
 *    grid dimension limit is ever reached;
 *  - a sum that must be reproducible is done in a fixed order: per-thread partials over a
 *    fixed partition, then a fixed shuffle tree (no atomics).
 */
#ifndef DSC_KERNELS_COMMON_CUH_
#define DSC_KERNELS_COMMON_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "backend.h"

/* ---- per-context state (owned by ctx->cuda, created in context.cu) ------------------- */

/* Bytes of the small device scratch (index_range results, sumsq partials). */
#define DSC_CUDA_SCRATCH_BYTES ((size_t)16384)
/* Bytes of the pinned host buffer that small results are copied back through. */
#define DSC_CUDA_PINNED_BYTES ((size_t)4096)

struct dsc_cuda_state {
  int device;        /* CUDA ordinal the context runs on */
  int sm_count;      /* multiprocessors of that device */
  void *lt;          /* cublasLtHandle_t, created on the first GEMM (NULL before) */
  void *lt_cache;    /* DscLtCache * of blaslt.cu: cuBLASLt plans per problem (NULL before) */
  void *scratch;     /* [DSC_CUDA_SCRATCH_BYTES] device memory; stream-ordered, and no
                        user leaves data in it for a later op */
  void *pinned;      /* [DSC_CUDA_PINNED_BYTES] page-locked host memory */
  cudaMemPool_t pool;     /* the workspace's stream-ordered pool (NULL: the device has no
                             memory pools; the workspace then uses cudaMalloc/cudaFree) */
  cudaEvent_t handoff;    /* dsc_context_set_stream: the new stream waits on the old one */
};

/* Frees the cuBLASLt plan cache and handle of st (blaslt.cu); context release calls it. */
void dsc_lt_release(dsc_cuda_state *st);

static inline dsc_cuda_state *dsc_cuda_st(const dsc_context *ctx) {
  return (dsc_cuda_state *)ctx->cuda;
}

static inline cudaStream_t dsc_cuda_stream(const dsc_context *ctx) {
  return (cudaStream_t)ctx->stream;
}

/* ---- errors ------------------------------------------------------------------------- */

/* Return DSC_ERR_CUDA naming fn and the failing call if `call` is not cudaSuccess. */
#define DSC_CUDA_TRY(call, fn)                                                           \
  do {                                                                                   \
    cudaError_t dsc_cuda_e_ = (call);                                                    \
    if (dsc_cuda_e_ != cudaSuccess)                                                      \
      return dsc_error(DSC_ERR_CUDA, (fn), "%s: %s (%s)", #call,                         \
                       cudaGetErrorString(dsc_cuda_e_), cudaGetErrorName(dsc_cuda_e_)); \
  } while (0)

/* After a <<<...>>> launch: report a bad configuration (or an earlier sticky error). */
#define DSC_CUDA_CHECK_LAUNCH(fn)                                                        \
  do {                                                                                   \
    cudaError_t dsc_cuda_e_ = cudaGetLastError();                                        \
    if (dsc_cuda_e_ != cudaSuccess)                                                      \
      return dsc_error(DSC_ERR_CUDA, (fn), "kernel launch failed: %s (%s)",              \
                       cudaGetErrorString(dsc_cuda_e_), cudaGetErrorName(dsc_cuda_e_));  \
  } while (0)

/* The host waits for the context's stream (counted: dsc_context_get_counters). Every host
 * wait of the backend goes through here or dsc_cuda_to_host. */
static inline dsc_status dsc_cuda_wait(dsc_context *ctx, const char *fn) {
  ctx->counts.syncs++;
  DSC_CUDA_TRY(cudaStreamSynchronize(dsc_cuda_stream(ctx)), fn);
  return DSC_OK;
}

/* Copy a small device result to host memory (the context's pinned buffer) on the stream
 * and wait for it: one copy, one host wait, both counted. */
static inline dsc_status dsc_cuda_to_host(dsc_context *ctx, void *host, const void *dev,
                                          size_t bytes, const char *fn) {
  ctx->counts.copies_to_host++;
  DSC_CUDA_TRY(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, dsc_cuda_stream(ctx)),
               fn);
  return dsc_cuda_wait(ctx, fn);
}

/* Make the context's device current for this thread (context.cu). */
extern "C" dsc_status dsc_cuda_enter(dsc_context *ctx, const char *fn);
#define DSC_CUDA_ENTER(ctx, fn) DSC_TRY(dsc_cuda_enter((ctx), (fn)))

/* ---- launch geometry ---------------------------------------------------------------- */

/* Blocks for a grid-stride loop over `work` items with `threads` per block: enough to
 * fill any current GPU, never more than `cap` (grid.x allows 2^31-1; the cap only bounds
 * launch overhead). Returns at least 1. */
static inline unsigned dsc_cuda_blocks(int64_t work, int threads, int64_t cap = 16384) {
  int64_t b = (work + threads - 1) / threads;
  if (b > cap) b = cap;
  if (b < 1) b = 1;
  return (unsigned)b;
}

/* Largest power of two (<= 256) dividing the address, and every byte stride given. */
static inline unsigned dsc_cuda_alignment(const void *p, int64_t s1 = 0, int64_t s2 = 0) {
  uint64_t v = (uint64_t)(uintptr_t)p | (uint64_t)s1 | (uint64_t)s2 | 256u;
  return (unsigned)(v & (~v + 1u)); /* lowest set bit */
}

static inline bool dsc_cuda_aligned(const void *p, size_t a) {
  return ((uintptr_t)p % a) == 0;
}

/* Round a byte count up to 256, for partitioning one workspace into several arrays. */
static inline size_t dsc_cuda_round256(size_t b) { return (b + 255) / 256 * 256; }

/* ---- element access ----------------------------------------------------------------- */

__device__ __forceinline__ float dsc_ld(const float *p, int64_t i) { return p[i]; }
__device__ __forceinline__ float dsc_ld(const __nv_bfloat16 *p, int64_t i) {
  return __bfloat162float(p[i]);
}
__device__ __forceinline__ void dsc_st(float *p, int64_t i, float v) { p[i] = v; }
/* bf16 stores round to nearest even (NaN stays NaN), like dsc_f32_to_bf16 on the CPU. */
__device__ __forceinline__ void dsc_st(__nv_bfloat16 *p, int64_t i, float v) {
  p[i] = __float2bfloat16_rn(v);
}
__device__ __forceinline__ float dsc_to_f32(float v) { return v; }
__device__ __forceinline__ float dsc_to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T dsc_from_f32(float v);
template <>
__device__ __forceinline__ float dsc_from_f32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 dsc_from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

/* VW elements of T loaded or stored as one (up to 16-byte) access; the address must be
 * aligned to sizeof(Pack). */
template <typename T, int VW>
struct alignas(sizeof(T) * VW) DscPack {
  T v[VW];
};

/* ---- reductions --------------------------------------------------------------------- */

struct DscSum {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a + b;
  }
};
struct DscMax {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

/* Butterfly over the 32 lanes: every lane ends with the same value, combined in an order
 * that depends only on the lane values (deterministic). */
template <typename T, typename Op>
__device__ __forceinline__ T dsc_warp_reduce(T v, Op op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/* Reduce v over a 1-D block (blockDim.x a multiple of 32, <= 1024); every thread gets the
 * result. smem: [32] in shared memory, reusable across calls (the leading barrier
 * protects the previous call's readers). All threads of the block must call it. */
template <typename T, typename Op>
__device__ __forceinline__ T dsc_block_reduce(T v, Op op, T identity, T *smem /* [32] */) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  const int nw = (int)(blockDim.x >> 5);
  v = dsc_warp_reduce(v, op);
  __syncthreads();
  if (lane == 0) smem[wid] = v;
  __syncthreads();
  if (wid == 0) {
    T r = lane < nw ? smem[lane] : identity;
    r = dsc_warp_reduce(r, op);
    if (lane == 0) smem[0] = r;
  }
  __syncthreads();
  return smem[0];
}

template <typename T>
__device__ __forceinline__ T dsc_block_sum(T v, T *smem /* [32] */) {
  return dsc_block_reduce(v, DscSum(), (T)0, smem);
}

__device__ __forceinline__ float dsc_block_max(float v, float *smem /* [32] */) {
  return dsc_block_reduce(v, DscMax(), -INFINITY, smem);
}

#endif /* DSC_KERNELS_COMMON_CUH_ */
