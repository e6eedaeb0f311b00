/*
 * kernels/index.cu -- range check of an index tensor on the GPU (embedding ids,
 * cross-entropy targets, RoPE positions); the twin of csrc/cpu/index.c.
 *
 * Legend: n number of indices.
 *
 * Finds the FIRST (lowest) position whose value is outside [lo, hi) and is not `skip`.
 * Every thread scans its grid-stride slice in increasing order and stops at its first
 * bad value; atomicMin over the positions picks the lowest, which does not depend on
 * the order of the atomics. A second one-thread kernel fetches the value at that
 * position, and both results come back in one 16-byte copy (then a stream sync).
 */
#include "common.cuh"

static const char *const FN_INDEX = "dsc_cuda_index_range";

/* first: [1] lowest bad position so far, initialized to ~0 (none). */
template <typename I>
__global__ void index_first_bad_kernel(int64_t n, const I *__restrict__ ids /* [n] */,
                                       int64_t lo, int64_t hi, int64_t skip,
                                       unsigned long long *first /* [1] */) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t v = (int64_t)ids[i];
    if ((v < lo || v >= hi) && v != skip) {
      atomicMin(first, (unsigned long long)i);
      return; /* the rest of this thread's slice lies at higher positions */
    }
  }
}

/* value: [1] ids[*first] when a bad position was found (left untouched otherwise). */
template <typename I>
__global__ void index_value_kernel(const I *__restrict__ ids /* [n] */,
                                   const unsigned long long *first /* [1] */,
                                   long long *value /* [1] */) {
  const unsigned long long f = *first;
  if (f != ~0ull) *value = (long long)ids[f];
}

extern "C" dsc_status dsc_cuda_index_range(dsc_context *ctx, int64_t n, int ids64,
                                           const void *ids /* [n] int32 or int64 */, int64_t lo,
                                           int64_t hi, int64_t skip, int64_t *bad_pos,
                                           int64_t *bad_value) {
  *bad_pos = -1;
  *bad_value = 0;
  if (n <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN_INDEX);
  dsc_cuda_state *st = dsc_cuda_st(ctx);
  cudaStream_t s = dsc_cuda_stream(ctx);
  /* scratch: [0] first bad position (u64), [1] its value (i64); ~0 = none. */
  unsigned long long *first = (unsigned long long *)st->scratch;
  long long *value = (long long *)(first + 1);
  DSC_CUDA_TRY(cudaMemsetAsync(first, 0xff, 2 * sizeof(unsigned long long), s), FN_INDEX);
  const int threads = 256;
  const unsigned blocks = dsc_cuda_blocks(n, threads, 4096);
  if (ids64) {
    index_first_bad_kernel<int64_t>
        <<<blocks, threads, 0, s>>>(n, (const int64_t *)ids, lo, hi, skip, first);
    DSC_CUDA_CHECK_LAUNCH(FN_INDEX);
    index_value_kernel<int64_t><<<1, 1, 0, s>>>((const int64_t *)ids, first, value);
  } else {
    index_first_bad_kernel<int32_t>
        <<<blocks, threads, 0, s>>>(n, (const int32_t *)ids, lo, hi, skip, first);
    DSC_CUDA_CHECK_LAUNCH(FN_INDEX);
    index_value_kernel<int32_t><<<1, 1, 0, s>>>((const int32_t *)ids, first, value);
  }
  DSC_CUDA_CHECK_LAUNCH(FN_INDEX);
  unsigned long long *host = (unsigned long long *)st->pinned; /* [2] */
  DSC_TRY(dsc_cuda_to_host(ctx, host, first, 2 * sizeof(unsigned long long), FN_INDEX));
  if (host[0] != ~0ull) {
    *bad_pos = (int64_t)host[0];
    *bad_value = (int64_t)(long long)host[1];
  }
  return DSC_OK;
}

/* ---- deferred mode: the record on the device, no copy, no wait ---------------------------- */

/* Like index_first_bad_kernel into rec->running, but nothing to do once an earlier check's
 * failure is recorded (first failure wins). */
template <typename I>
__global__ void index_record_scan_kernel(int64_t n, const I *__restrict__ ids /* [n] */, int64_t lo,
                                         int64_t hi, int64_t skip, dsc_check_record *rec) {
  if (*(volatile int64_t *)&rec->status != DSC_OK) return;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t v = (int64_t)ids[i];
    if ((v < lo || v >= hi) && v != skip) {
      atomicMin((unsigned long long *)&rec->running, (unsigned long long)i);
      return;
    }
  }
}

/* One thread, after the scan on the same stream: move this check's first bad position (if
 * any, and if no earlier failure is recorded) into the record; reset running for the next
 * check. */
template <typename I>
__global__ void index_record_final_kernel(const I *__restrict__ ids /* [n] */, int64_t lo, int64_t hi,
                                          int64_t skip, int64_t style, uint64_t fn, uint64_t arg,
                                          uint64_t what, dsc_check_record *rec) {
  const unsigned long long f = rec->running;
  rec->running = ~0ull;
  if (f == ~0ull || rec->status != DSC_OK) return;
  rec->status = DSC_ERR_INVALID_ARGUMENT;
  rec->pos = (int64_t)f;
  rec->value = (int64_t)ids[f];
  rec->lo = lo;
  rec->hi = hi;
  rec->skip = skip;
  rec->style = style;
  rec->fn = fn;
  rec->arg = arg;
  rec->what = what;
}

template <typename I>
static dsc_status record_launch(dsc_context *ctx, const dsc_index_site *site, int64_t n, const void *ids,
                                int64_t lo, int64_t hi, int64_t skip) {
  static const char *const FN = "dsc_cuda_index_record";
  cudaStream_t s = dsc_cuda_stream(ctx);
  const int threads = 256;
  index_record_scan_kernel<I><<<dsc_cuda_blocks(n, threads, 4096), threads, 0, s>>>(
      n, (const I *)ids, lo, hi, skip, ctx->check_record);
  DSC_CUDA_CHECK_LAUNCH(FN);
  index_record_final_kernel<I><<<1, 1, 0, s>>>((const I *)ids, lo, hi, skip, (int64_t)site->style,
                                               (uint64_t)(uintptr_t)site->fn, (uint64_t)(uintptr_t)site->arg,
                                               (uint64_t)(uintptr_t)site->what, ctx->check_record);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_index_record(dsc_context *ctx, const dsc_index_site *site, int64_t n,
                                            int ids64, const void *ids /* [n] int32 or int64 */,
                                            int64_t lo, int64_t hi, int64_t skip) {
  if (n <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, "dsc_cuda_index_record");
  return ids64 ? record_launch<int64_t>(ctx, site, n, ids, lo, hi, skip)
               : record_launch<int32_t>(ctx, site, n, ids, lo, hi, skip);
}

extern "C" dsc_status dsc_cuda_check_enqueue(dsc_context *ctx) {
  static const char *const FN = "dsc_context_check";
  DSC_CUDA_ENTER(ctx, FN);
  cudaStream_t s = dsc_cuda_stream(ctx);
  ctx->counts.copies_to_host++; /* its wait is the caller's (counted there) */
  DSC_CUDA_TRY(cudaMemcpyAsync(ctx->check_mirror, ctx->check_record, sizeof(dsc_check_record),
                               cudaMemcpyDeviceToHost, s),
               FN);
  /* Clear for the next checks, after the copy on the stream (running is ~0 already: every
   * check's last kernel resets it). */
  DSC_CUDA_TRY(cudaMemsetAsync(&ctx->check_record->status, 0,
                               sizeof(dsc_check_record) - sizeof(uint64_t), s),
               FN);
  return DSC_OK;
}

/* ---- deferred mode for float32 values that must be finite (GRPO's rewards) ---------------- */

__global__ void finite_record_scan_kernel(int64_t n, const float *__restrict__ x /* [n] */,
                                          dsc_check_record *rec) {
  if (*(volatile int64_t *)&rec->status != DSC_OK) return;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    if (!isfinite(x[i])) {
      atomicMin((unsigned long long *)&rec->running, (unsigned long long)i);
      return;
    }
  }
}

/* One thread, after the scan: like index_record_final_kernel, without a value. */
__global__ void finite_record_final_kernel(int64_t style, uint64_t fn, uint64_t arg, uint64_t what,
                                           dsc_check_record *rec) {
  const unsigned long long f = rec->running;
  rec->running = ~0ull;
  if (f == ~0ull || rec->status != DSC_OK) return;
  rec->status = DSC_ERR_INVALID_ARGUMENT;
  rec->pos = (int64_t)f;
  rec->value = rec->lo = rec->hi = rec->skip = 0;
  rec->style = style;
  rec->fn = fn;
  rec->arg = arg;
  rec->what = what;
}

extern "C" dsc_status dsc_cuda_finite_record(dsc_context *ctx, const dsc_index_site *site, int64_t n,
                                             const float *x /* [n] */) {
  static const char *const FN = "dsc_cuda_finite_record";
  if (n <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  cudaStream_t s = dsc_cuda_stream(ctx);
  finite_record_scan_kernel<<<dsc_cuda_blocks(n, 256, 4096), 256, 0, s>>>(n, x, ctx->check_record);
  DSC_CUDA_CHECK_LAUNCH(FN);
  finite_record_final_kernel<<<1, 1, 0, s>>>((int64_t)site->style, (uint64_t)(uintptr_t)site->fn,
                                             (uint64_t)(uintptr_t)site->arg,
                                             (uint64_t)(uintptr_t)site->what, ctx->check_record);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}
