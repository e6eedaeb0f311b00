/*
 * kernels/embedding.cu -- token embedding lookup and its gradient on the GPU; the twin
 * of csrc/cpu/embedding.c.
 *
 * Legend: n tokens (ids flattened), V vocabulary rows, D features per row, T storage
 *         type of table/dout, I index type (int32 or int64).
 *
 *   forward:  out[i, :] = table[ids[i], :]                   (an exact byte copy)
 *   backward: dtable = 0; dtable[ids[i], :] += dout[i, :]    (float32)
 *
 * Forward: one block per token row (grid-stride), copying in the widest unit (16, 4 or
 * 2 bytes) that the row size and both pointers allow.
 * Backward, ctx->deterministic == 0: memset, then one atomicAdd per element (fast, the
 * order of the float adds varies from run to run).
 * Backward, ctx->deterministic == 1: a stable radix sort (CUB) of (id, token) pairs
 * groups the tokens of each id in token order; one block per group then sums its dout
 * rows in that order and stores the row once. The float adds per element are then the
 * CPU's (0 + d_first + ... + d_last, token order): bitwise the CPU result, every run.
 */
#include <cub/device/device_radix_sort.cuh>

#include "common.cuh"

/* The id of token i (range-checked by the ops layer, or only recorded by a deferred check:
 * the kernels guard with 0 <= id < V, as the CPU does: a bad id's output row is zeros and
 * it adds nothing to dtable). */
template <typename I>
__device__ __forceinline__ int64_t id_at(const I *ids, int64_t i) {
  return (int64_t)ids[i];
}

/* ---- forward ------------------------------------------------------------------------- */

/* U: the copy unit (uint4, uint32_t or uint16_t); row_units = row bytes / sizeof(U). */
template <typename U, typename I>
__global__ void embedding_fwd_kernel(int64_t n, int64_t V, int64_t row_units,
                                     const I *__restrict__ ids /* [n] */,
                                     const U *__restrict__ table /* [V, row_units] */,
                                     U *__restrict__ out /* [n, row_units] */) {
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const int64_t id = id_at(ids, i);
    U *dst = out + i * row_units; /* [row_units] */
    if (id < 0 || id >= V) {
      for (int64_t k = threadIdx.x; k < row_units; k += blockDim.x) dst[k] = U{};
      continue;
    }
    const U *src = table + id * row_units; /* [row_units] */
    for (int64_t k = threadIdx.x; k < row_units; k += blockDim.x) dst[k] = src[k];
  }
}

template <typename U, typename I>
static void launch_fwd(cudaStream_t s, int64_t n, int64_t V, int64_t row_bytes, const void *ids,
                       const void *table, void *out) {
  const int64_t units = row_bytes / (int64_t)sizeof(U);
  const int threads = units >= 256 ? 256 : (units >= 128 ? 128 : 64);
  const unsigned blocks = (unsigned)(n < 65536 ? n : 65536);
  embedding_fwd_kernel<U, I><<<blocks, threads, 0, s>>>(n, V, units, (const I *)ids,
                                                        (const U *)table, (U *)out);
}

template <typename I>
static void fwd_by_unit(cudaStream_t s, int64_t n, int64_t V, int64_t row_bytes, const void *ids,
                        const void *table, void *out) {
  if (row_bytes % 16 == 0 && dsc_cuda_aligned(table, 16) && dsc_cuda_aligned(out, 16))
    launch_fwd<uint4, I>(s, n, V, row_bytes, ids, table, out);
  else if (row_bytes % 4 == 0 && dsc_cuda_aligned(table, 4) && dsc_cuda_aligned(out, 4))
    launch_fwd<uint32_t, I>(s, n, V, row_bytes, ids, table, out);
  else
    launch_fwd<uint16_t, I>(s, n, V, row_bytes, ids, table, out);
}

extern "C" dsc_status dsc_cuda_embedding_fwd(dsc_context *ctx, dsc_dtype dt, int64_t n, int ids64,
                                             const void *ids /* [n] int32|int64 */, int64_t V,
                                             int64_t D, const void *table /* [V,D] dt */,
                                             void *out /* [n,D] dt */) {
  static const char *const FN = "dsc_cuda_embedding_fwd";
  if (n <= 0 || D <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  const int64_t row_bytes = D * (dt == DSC_DTYPE_BFLOAT16 ? 2 : 4);
  cudaStream_t s = dsc_cuda_stream(ctx);
  if (ids64)
    fwd_by_unit<int64_t>(s, n, V, row_bytes, ids, table, out);
  else
    fwd_by_unit<int32_t>(s, n, V, row_bytes, ids, table, out);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

/* ---- backward, atomics ----------------------------------------------------------------- */

/* dtable: [V,D] f32, zeroed before; one block per token row. */
template <typename T, typename I>
__global__ void embedding_bwd_atomic_kernel(int64_t n, int64_t V, int64_t D,
                                            const I *__restrict__ ids /* [n] */,
                                            const T *__restrict__ dout /* [n,D] */,
                                            float *__restrict__ dtable /* [V,D] */) {
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const int64_t id = id_at(ids, i);
    if (id < 0 || id >= V) continue; /* uniform over the block */
    float *dst = dtable + id * D; /* [D] */
    const T *src = dout + i * D;              /* [D] */
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) atomicAdd(dst + j, dsc_ld(src, j));
  }
}

/* ---- backward, deterministic ------------------------------------------------------------ */

/* keys[i] = ids[i] (as the radix-sort key), vals[i] = i (the token). An id outside [0, V)
 * gets the key V: it sorts after every real id and its group is skipped. */
template <typename I>
__global__ void embedding_keys_kernel(int64_t n, int64_t V, const I *__restrict__ ids /* [n] */,
                                      uint32_t *__restrict__ keys /* [n] */,
                                      int32_t *__restrict__ vals /* [n] */) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t id = id_at(ids, i);
    keys[i] = (uint32_t)(id >= 0 && id < V ? id : V);
    vals[i] = (int32_t)i;
  }
}

/* skeys/svals: [n] sorted by id, tokens ascending within an id (stable sort). The block
 * at sorted position k works only if k starts a group: it sums the group's dout rows in
 * token order and writes dtable[id, :] (rows of absent ids keep the memset zeros). */
template <typename T>
__global__ void embedding_bwd_sorted_kernel(int64_t n, int64_t V, int64_t D,
                                            const uint32_t *__restrict__ skeys /* [n] */,
                                            const int32_t *__restrict__ svals /* [n] */,
                                            const T *__restrict__ dout /* [n,D] */,
                                            float *__restrict__ dtable /* [V,D] */) {
  for (int64_t k = blockIdx.x; k < n; k += gridDim.x) {
    const uint32_t id = skeys[k];
    if ((int64_t)id >= V) break;               /* the bad ids' group: sorted last, skipped */
    if (k > 0 && skeys[k - 1] == id) continue; /* not the first of its group */
    int64_t end = k + 1;
    while (end < n && skeys[end] == id) ++end;
    float *dst = dtable + (int64_t)id * D; /* [D] */
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      float acc = 0.0f;
      for (int64_t q = k; q < end; ++q) acc += dsc_ld(dout, (int64_t)svals[q] * D + j);
      dst[j] = acc;
    }
  }
}

template <typename T, typename I>
static dsc_status bwd_deterministic(dsc_context *ctx, const char *fn, int64_t n, const void *ids,
                                    int64_t V, int64_t D, const void *dout, float *dtable) {
  cudaStream_t s = dsc_cuda_stream(ctx);
  if (n > INT32_MAX || V >= (int64_t)UINT32_MAX)
    return dsc_error(DSC_ERR_UNSUPPORTED, fn,
                     "n, V: the deterministic embedding backward supports < 2^31 ids and < 2^32 - 1 "
                     "rows, got %lld ids and %lld rows",
                     (long long)n, (long long)V);
  /* Key bits that can be set: keys <= V (V: a bad id, see embedding_keys_kernel). */
  int end_bit = 1;
  while (end_bit < 32 && ((uint64_t)1 << end_bit) <= (uint64_t)V) ++end_bit;
  size_t sort_bytes = 0;
  DSC_CUDA_TRY((cub::DeviceRadixSort::SortPairs<uint32_t, int32_t, int64_t>(
                   NULL, sort_bytes, NULL, NULL, NULL, NULL, n, 0, end_bit, s)),
               fn);
  /* One workspace, partitioned: keys, sorted keys, vals, sorted vals [n] each, then CUB's
   * temporary storage. */
  const size_t kb = dsc_cuda_round256((size_t)n * sizeof(uint32_t));
  const size_t vb = dsc_cuda_round256((size_t)n * sizeof(int32_t));
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, 2 * kb + 2 * vb + sort_bytes, &ws));
  char *base = (char *)ws;
  uint32_t *keys = (uint32_t *)base;                /* [n] */
  uint32_t *skeys = (uint32_t *)(base + kb);        /* [n] */
  int32_t *vals = (int32_t *)(base + 2 * kb);       /* [n] */
  int32_t *svals = (int32_t *)(base + 2 * kb + vb); /* [n] */
  void *tmp = base + 2 * kb + 2 * vb;               /* [sort_bytes] */

  embedding_keys_kernel<I><<<dsc_cuda_blocks(n, 256), 256, 0, s>>>(n, V, (const I *)ids, keys, vals);
  DSC_CUDA_CHECK_LAUNCH(fn);
  DSC_CUDA_TRY((cub::DeviceRadixSort::SortPairs<uint32_t, int32_t, int64_t>(
                   tmp, sort_bytes, keys, skeys, vals, svals, n, 0, end_bit, s)),
               fn);
  const int threads = D >= 256 ? 256 : (D >= 128 ? 128 : 64);
  const unsigned blocks = (unsigned)(n < 65536 ? n : 65536);
  embedding_bwd_sorted_kernel<T><<<blocks, threads, 0, s>>>(n, V, D, skeys, svals, (const T *)dout,
                                                            dtable);
  DSC_CUDA_CHECK_LAUNCH(fn);
  return DSC_OK;
}

template <typename T, typename I>
static dsc_status bwd(dsc_context *ctx, const char *fn, int64_t n, const void *ids, int64_t V,
                      int64_t D, const void *dout, float *dtable) {
  if (ctx->deterministic) return bwd_deterministic<T, I>(ctx, fn, n, ids, V, D, dout, dtable);
  const int threads = D >= 256 ? 256 : (D >= 128 ? 128 : 64);
  const unsigned blocks = (unsigned)(n < 65536 ? n : 65536);
  embedding_bwd_atomic_kernel<T, I><<<blocks, threads, 0, dsc_cuda_stream(ctx)>>>(
      n, V, D, (const I *)ids, (const T *)dout, dtable);
  DSC_CUDA_CHECK_LAUNCH(fn);
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_embedding_bwd(dsc_context *ctx, dsc_dtype dt, int64_t n, int ids64,
                                             const void *ids /* [n] int32|int64 */, int64_t V,
                                             int64_t D, const void *dout /* [n,D] dt */,
                                             float *dtable /* [V,D] f32, overwritten */) {
  static const char *const FN = "dsc_cuda_embedding_bwd";
  if (V <= 0 || D <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  /* Zero first: rows of ids that never occur get a zero gradient. */
  DSC_CUDA_TRY(cudaMemsetAsync(dtable, 0, (size_t)V * (size_t)D * sizeof(float),
                               dsc_cuda_stream(ctx)),
               FN);
  if (n <= 0) return DSC_OK;
  const bool bf16 = dt == DSC_DTYPE_BFLOAT16;
  if (ids64)
    return bf16 ? bwd<__nv_bfloat16, int64_t>(ctx, FN, n, ids, V, D, dout, dtable)
                : bwd<float, int64_t>(ctx, FN, n, ids, V, D, dout, dtable);
  return bf16 ? bwd<__nv_bfloat16, int32_t>(ctx, FN, n, ids, V, D, dout, dtable)
              : bwd<float, int32_t>(ctx, FN, n, ids, V, D, dout, dtable);
}
