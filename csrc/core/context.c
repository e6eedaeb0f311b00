/*
 * context.c -- dsc_context: the device, stream, workspace, RNG seed, threads and
 * log callback that every op runs with; plus device memory helpers.
 */
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "backend.h"

static const char *const FN_CREATE = "dsc_context_create";

int dsc_ctx_is_cuda(const dsc_context *ctx) { return ctx->device.device_type == kDLCUDA; }

dsc_status dsc_context_create(const dsc_context_options *options, dsc_context **out) {
  DSC_CHECK(out != NULL, DSC_ERR_INVALID_ARGUMENT, FN_CREATE, "out: expected a pointer, got NULL");
  *out = NULL;
  dsc_context_options o;
  memset(&o, 0, sizeof o);
  if (options != NULL) {
    DSC_CHECK(options->size >= offsetof(dsc_context_options, size) + sizeof(size_t) &&
                  options->size <= sizeof(dsc_context_options),
              DSC_ERR_INVALID_ARGUMENT, FN_CREATE,
              "options->size: expected sizeof(dsc_context_options) = %zu, got %zu",
              sizeof(dsc_context_options), options->size);
    memcpy(&o, options, options->size);
  }
  if (o.device_type == 0) o.device_type = kDLCPU;
  DSC_CHECK(o.device_type == kDLCPU || o.device_type == kDLCUDA, DSC_ERR_DEVICE, FN_CREATE,
            "options->device_type: expected kDLCPU (1) or kDLCUDA (2), got %d", (int)o.device_type);
  DSC_CHECK(o.device_id >= 0, DSC_ERR_INVALID_ARGUMENT, FN_CREATE,
            "options->device_id: expected >= 0, got %d", (int)o.device_id);
  DSC_CHECK(o.num_threads >= 0, DSC_ERR_INVALID_ARGUMENT, FN_CREATE,
            "options->num_threads: expected >= 0, got %d", (int)o.num_threads);
#ifndef DSC_WITH_CUDA
  DSC_CHECK(o.device_type != kDLCUDA, DSC_ERR_UNSUPPORTED, FN_CREATE,
            "options->device_type: CUDA requested, but this build of deepseek_c has no CUDA "
            "backend (rebuild with nvcc on PATH and DSC_CUDA=1)");
#endif
  DSC_CHECK(o.device_type == kDLCUDA || o.stream == NULL, DSC_ERR_INVALID_ARGUMENT, FN_CREATE,
            "options->stream: expected NULL for a CPU context, got %p", o.stream);

  dsc_context *ctx = (dsc_context *)calloc(1, sizeof *ctx);
  if (!ctx) return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN_CREATE, "out of host memory");
  ctx->device.device_type = (DLDeviceType)o.device_type;
  ctx->device.device_id = o.device_type == kDLCPU ? 0 : o.device_id;
  ctx->stream = o.stream;
  ctx->seed = o.seed;
  ctx->deterministic = o.deterministic != 0;
  ctx->log_fn = o.log_fn;
  ctx->log_user_data = o.log_user_data;
  /* The instruction set of the CPU kernels, chosen once here: AVX2 where the CPU (and OS)
   * has it. DSC_CPU_ISA=generic forces the portable kernels (for tests and comparisons;
   * cpu/gemm.c says where both give the same bits). */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  ctx->cpu_avx2 = __builtin_cpu_supports("avx2") != 0;
#endif
  const char *dbg = getenv("DSC_DEBUG_CHECKS");
  ctx->debug_checks = dbg != NULL && dbg[0] != '\0' && strcmp(dbg, "0") != 0;
  const char *isa = getenv("DSC_CPU_ISA");
  if (isa != NULL && strcmp(isa, "generic") == 0) ctx->cpu_avx2 = 0;
#ifdef _OPENMP
  ctx->num_threads = o.num_threads > 0 ? o.num_threads : omp_get_max_threads();
#else
  ctx->num_threads = 1;
#endif
#ifdef DSC_WITH_CUDA
  if (o.device_type == kDLCUDA) {
    dsc_status st = dsc_cuda_context_init(ctx); /* also the device's check record */
    if (st != DSC_OK) {
      free(ctx);
      return st;
    }
  }
#endif
  if (o.device_type == kDLCPU) {
    ctx->check_record = (dsc_check_record *)calloc(2, sizeof(dsc_check_record)); /* + mirror */
    ctx->check_mirror = ctx->check_record ? ctx->check_record + 1 : NULL;
    if (!ctx->check_record) {
      free(ctx);
      return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN_CREATE, "out of host memory");
    }
  }
  *out = ctx;
  return DSC_OK;
}

void dsc_context_destroy(dsc_context *ctx) {
  if (!ctx) return;
#ifdef DSC_WITH_CUDA
  /* The stream-ordered buffers below are freed with cudaFree, which does not wait for
   * their last users (the caller's stream may be gone by now): wait for the device. */
  if (dsc_ctx_is_cuda(ctx)) dsc_cuda_quiesce(ctx);
#endif
  if (ctx->moe_local && ctx->moe_local_release) ctx->moe_local_release(ctx->moe_local);
  ctx->moe_local = NULL;
  for (int i = 0; i < DSC_SLOT_COUNT; ++i) {
    dsc_free(ctx, ctx->slot[i]);
    ctx->slot[i] = NULL;
  }
  dsc_free(ctx, ctx->workspace);
  ctx->workspace = NULL;
#ifdef DSC_WITH_CUDA
  if (dsc_ctx_is_cuda(ctx)) dsc_cuda_context_release(ctx); /* frees the device record */
#endif
  if (!dsc_ctx_is_cuda(ctx)) free(ctx->check_record);
  free(ctx);
}

dsc_status dsc_context_set_stream(dsc_context *ctx, void *stream) {
  DSC_CHECK(ctx != NULL, DSC_ERR_INVALID_ARGUMENT, "dsc_context_set_stream",
            "ctx: expected a context, got NULL");
  DSC_CHECK(dsc_ctx_is_cuda(ctx) || stream == NULL, DSC_ERR_INVALID_ARGUMENT,
            "dsc_context_set_stream", "stream: expected NULL for a CPU context, got %p", stream);
#ifdef DSC_WITH_CUDA
  /* The workspace and the scratch buffers pass to the new stream only after the old
   * stream's work that may still use them (an event, no host wait). */
  if (dsc_ctx_is_cuda(ctx) && stream != ctx->stream) DSC_TRY(dsc_cuda_set_stream(ctx, stream));
#endif
  ctx->stream = stream;
  return DSC_OK;
}

dsc_status dsc_context_get_stream(const dsc_context *ctx, void **stream) {
  DSC_CHECK(ctx != NULL && stream != NULL, DSC_ERR_INVALID_ARGUMENT, "dsc_context_get_stream",
            "ctx, stream: expected non-NULL pointers");
  *stream = ctx->stream;
  return DSC_OK;
}

dsc_status dsc_context_get_device(const dsc_context *ctx, DLDevice *device) {
  DSC_CHECK(ctx != NULL && device != NULL, DSC_ERR_INVALID_ARGUMENT, "dsc_context_get_device",
            "ctx, device: expected non-NULL pointers");
  *device = ctx->device;
  return DSC_OK;
}

dsc_status dsc_context_synchronize(dsc_context *ctx) {
  DSC_CHECK(ctx != NULL, DSC_ERR_INVALID_ARGUMENT, "dsc_context_synchronize",
            "ctx: expected a context, got NULL");
  /* The record of the deferred checks comes back with this wait (its copy queued first). */
  DSC_TRY(dsc_ctx_check_begin_read(ctx));
#ifdef DSC_WITH_CUDA
  if (dsc_ctx_is_cuda(ctx)) DSC_TRY(dsc_cuda_synchronize(ctx));
#endif
  return dsc_ctx_check_end_read(ctx);
}

/* ---- check modes and the deferred checks' record --------------------------------- */

int32_t dsc_ctx_check_mode(const dsc_context *ctx) {
  return ctx->debug_checks ? DSC_CHECK_IMMEDIATE : ctx->check_mode;
}

int32_t dsc_ctx_check_mode_push(dsc_context *ctx, int32_t mode) {
  const int32_t saved = ctx->check_mode;
  ctx->check_mode = mode == DSC_CHECK_DEFERRED ? DSC_CHECK_DEFERRED : DSC_CHECK_IMMEDIATE;
  return saved;
}

void dsc_ctx_check_mode_pop(dsc_context *ctx, int32_t saved) { ctx->check_mode = saved; }

dsc_status dsc_context_set_check_mode(dsc_context *ctx, int32_t mode) {
  static const char *const FN = "dsc_context_set_check_mode";
  DSC_CHECK(ctx != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "ctx: expected a context, got NULL");
  DSC_CHECK(mode == DSC_CHECK_IMMEDIATE || mode == DSC_CHECK_DEFERRED, DSC_ERR_INVALID_ARGUMENT, FN,
            "mode: expected DSC_CHECK_IMMEDIATE (0) or DSC_CHECK_DEFERRED (1), got %d", (int)mode);
  ctx->check_mode = mode;
  return DSC_OK;
}

dsc_status dsc_context_get_check_mode(const dsc_context *ctx, int32_t *mode) {
  DSC_CHECK(ctx != NULL && mode != NULL, DSC_ERR_INVALID_ARGUMENT, "dsc_context_get_check_mode",
            "ctx, mode: expected non-NULL pointers");
  *mode = dsc_ctx_check_mode(ctx);
  return DSC_OK;
}

dsc_status dsc_ctx_check_begin_read(dsc_context *ctx) {
  if (ctx->check_pending == 0 || ctx->check_inflight) return DSC_OK;
#ifdef DSC_WITH_CUDA
  if (dsc_ctx_is_cuda(ctx)) {
    DSC_TRY(dsc_cuda_check_enqueue(ctx)); /* copy, then clear, on the stream */
  } else
#endif
  {
    *ctx->check_mirror = *ctx->check_record;
    memset(ctx->check_record, 0, sizeof *ctx->check_record);
  }
  ctx->check_pending = 0;
  ctx->check_inflight = 1;
  ctx->counts.check_reads++;
  return DSC_OK;
}

dsc_status dsc_ctx_check_end_read(dsc_context *ctx) {
  if (!ctx->check_inflight) return DSC_OK;
  ctx->check_inflight = 0;
  const dsc_check_record r = *ctx->check_mirror;
  if (r.status == DSC_OK) return DSC_OK;
  const dsc_index_site site = {(const char *)(uintptr_t)r.fn, (const char *)(uintptr_t)r.arg,
                               (const char *)(uintptr_t)r.what, (int32_t)r.style};
  return dsc_index_error(&site, r.lo, r.hi, r.skip, r.pos, r.value);
}

dsc_status dsc_ctx_check_read(dsc_context *ctx) {
  DSC_TRY(dsc_ctx_check_begin_read(ctx));
  if (!ctx->check_inflight) return DSC_OK; /* nothing queued since the last read */
#ifdef DSC_WITH_CUDA
  if (dsc_ctx_is_cuda(ctx)) DSC_TRY(dsc_cuda_synchronize(ctx)); /* the one wait */
#endif
  return dsc_ctx_check_end_read(ctx);
}

dsc_status dsc_context_check(dsc_context *ctx) {
  DSC_CHECK(ctx != NULL, DSC_ERR_INVALID_ARGUMENT, "dsc_context_check",
            "ctx: expected a context, got NULL");
  return dsc_ctx_check_read(ctx);
}

dsc_status dsc_index_check(dsc_context *ctx, const dsc_index_site *site, int64_t n, int ids64,
                           const void *ids, int64_t lo, int64_t hi, int64_t skip) {
  if (n <= 0 || (ctx->trusted_indices > 0 && !ctx->debug_checks)) return DSC_OK;
  if (dsc_ctx_check_mode(ctx) == DSC_CHECK_DEFERRED) {
    ctx->counts.deferred_checks++;
    ctx->check_pending++;
#ifdef DSC_WITH_CUDA
    if (dsc_ctx_is_cuda(ctx))
      return dsc_cuda_index_record(ctx, site, n, ids64, ids, lo, hi, skip);
#endif
    return dsc_cpu_index_record(ctx, site, n, ids64, ids, lo, hi, skip);
  }
  int64_t bad_pos = -1, bad_value = 0;
  DSC_TRY(dsc_index_range(ctx, n, ids64, ids, lo, hi, skip, &bad_pos, &bad_value));
  if (bad_pos >= 0) return dsc_index_error(site, lo, hi, skip, bad_pos, bad_value);
  return DSC_OK;
}

dsc_status dsc_context_set_log_callback(dsc_context *ctx, dsc_log_fn fn, void *user_data) {
  DSC_CHECK(ctx != NULL, DSC_ERR_INVALID_ARGUMENT, "dsc_context_set_log_callback",
            "ctx: expected a context, got NULL");
  ctx->log_fn = fn;
  ctx->log_user_data = user_data;
  return DSC_OK;
}

dsc_status dsc_context_set_seed(dsc_context *ctx, uint64_t seed) {
  DSC_CHECK(ctx != NULL, DSC_ERR_INVALID_ARGUMENT, "dsc_context_set_seed",
            "ctx: expected a context, got NULL");
  ctx->seed = seed;
  ctx->rng_counter = 0;
  return DSC_OK;
}

dsc_status dsc_context_set_deterministic(dsc_context *ctx, int32_t deterministic) {
  DSC_CHECK(ctx != NULL, DSC_ERR_INVALID_ARGUMENT, "dsc_context_set_deterministic",
            "ctx: expected a context, got NULL");
  ctx->deterministic = deterministic != 0;
  return DSC_OK;
}

dsc_status dsc_context_set_math_mode(dsc_context *ctx, int32_t mode) {
  DSC_CHECK(ctx != NULL, DSC_ERR_INVALID_ARGUMENT, "dsc_context_set_math_mode",
            "ctx: expected a context, got NULL");
  DSC_CHECK(mode == DSC_MATH_DEFAULT || mode == DSC_MATH_BF16_OPERANDS, DSC_ERR_INVALID_ARGUMENT,
            "dsc_context_set_math_mode",
            "mode: expected DSC_MATH_DEFAULT (0) or DSC_MATH_BF16_OPERANDS (1), got %d", (int)mode);
  ctx->math_mode = mode;
  return DSC_OK;
}

dsc_status dsc_context_get_math_mode(const dsc_context *ctx, int32_t *mode) {
  DSC_CHECK(ctx != NULL && mode != NULL, DSC_ERR_INVALID_ARGUMENT, "dsc_context_get_math_mode",
            "ctx, mode: expected non-NULL pointers");
  *mode = ctx->math_mode;
  return DSC_OK;
}

dsc_status dsc_context_workspace_size(const dsc_context *ctx, size_t *bytes) {
  DSC_CHECK(ctx != NULL && bytes != NULL, DSC_ERR_INVALID_ARGUMENT, "dsc_context_workspace_size",
            "ctx, bytes: expected non-NULL pointers");
  *bytes = ctx->workspace_bytes;
  return DSC_OK;
}

dsc_status dsc_context_get_counters(dsc_context *ctx, dsc_context_counters *out, int32_t reset) {
  static const char *const FN = "dsc_context_get_counters";
  DSC_CHECK(ctx != NULL && out != NULL, DSC_ERR_INVALID_ARGUMENT, FN,
            "ctx, out: expected non-NULL pointers");
  const size_t want = out->size;
  DSC_CHECK(want >= offsetof(dsc_context_counters, syncs) + sizeof(uint64_t) &&
                want <= sizeof(dsc_context_counters),
            DSC_ERR_INVALID_ARGUMENT, FN,
            "out->size: expected sizeof(dsc_context_counters) = %zu (or an older prefix of it), "
            "got %zu", sizeof(dsc_context_counters), want);
  dsc_context_counters c = ctx->counts;
  c.size = want;
  memcpy(out, &c, want);
  if (reset) memset(&ctx->counts, 0, sizeof ctx->counts);
  return DSC_OK;
}

dsc_status dsc_index_range(dsc_context *ctx, int64_t n, int ids64, const void *ids, int64_t lo,
                           int64_t hi, int64_t skip, int64_t *bad_pos, int64_t *bad_value) {
  if (ctx->trusted_indices > 0 && !ctx->debug_checks) {
    *bad_pos = -1;
    *bad_value = 0;
    return DSC_OK;
  }
  ctx->counts.index_checks++;
#ifdef DSC_WITH_CUDA
  if (dsc_ctx_is_cuda(ctx))
    return dsc_cuda_index_range(ctx, n, ids64, ids, lo, hi, skip, bad_pos, bad_value);
#endif
  return dsc_cpu_index_range(ctx, n, ids64, ids, lo, hi, skip, bad_pos, bad_value);
}

dsc_status dsc_finite_check(dsc_context *ctx, const dsc_index_site *site, int64_t n, const float *x) {
  if (n <= 0) return DSC_OK;
  if (dsc_ctx_check_mode(ctx) == DSC_CHECK_DEFERRED) {
    ctx->counts.deferred_checks++;
    ctx->check_pending++;
#ifdef DSC_WITH_CUDA
    if (dsc_ctx_is_cuda(ctx)) return dsc_cuda_finite_record(ctx, site, n, x);
#endif
    return dsc_cpu_finite_record(ctx, site, n, x);
  }
  int64_t bad = -1;
#ifdef DSC_WITH_CUDA
  if (dsc_ctx_is_cuda(ctx)) {
    DSC_TRY(dsc_cuda_find_nonfinite(ctx, n, x, &bad));
  } else
#endif
  {
    DSC_TRY(dsc_cpu_find_nonfinite(ctx, n, x, &bad));
  }
  if (bad >= 0) return dsc_index_error(site, 0, 0, 0, bad, 0);
  return DSC_OK;
}

/* Grow *buf (of *cap bytes) to at least `bytes`: the workspace and the slots. */
static dsc_status grow(dsc_context *ctx, void **buf, size_t *cap, size_t bytes) {
  /* Grow geometrically so a sequence of slightly larger requests stays cheap. */
  size_t want = *cap <= SIZE_MAX / 2 && *cap * 2 > bytes ? *cap * 2 : bytes;
  if (want < 4096) want = 4096;
  ctx->counts.workspace_grows++;
#ifdef DSC_WITH_CUDA
  if (dsc_ctx_is_cuda(ctx)) {
    /* Stream-ordered: the old buffer goes back to the pool after the work queued on it. */
    dsc_cuda_workspace_free(ctx, *buf);
    *buf = NULL;
    *cap = 0;
    DSC_TRY(dsc_cuda_workspace_alloc(ctx, want, buf));
    *cap = want;
    return DSC_OK;
  }
#endif
  dsc_free(ctx, *buf);
  *buf = NULL;
  *cap = 0;
  DSC_TRY(dsc_malloc(ctx, want, buf));
  *cap = want;
  return DSC_OK;
}

dsc_status dsc_ctx_slot(dsc_context *ctx, int slot, size_t bytes, void **ptr) {
  *ptr = NULL;
  if (slot < 0 || slot >= DSC_SLOT_COUNT)
    return dsc_error(DSC_ERR_INTERNAL, "dsc_ctx_slot", "slot: expected 0..%d, got %d",
                     DSC_SLOT_COUNT - 1, slot);
  if (!ctx->slot[slot] || bytes > ctx->slot_bytes[slot])
    DSC_TRY(grow(ctx, &ctx->slot[slot], &ctx->slot_bytes[slot], bytes));
  *ptr = ctx->slot[slot];
  return DSC_OK;
}

dsc_status dsc_workspace(dsc_context *ctx, size_t bytes, void **ptr) {
  if (bytes <= ctx->workspace_bytes && ctx->workspace) {
    *ptr = ctx->workspace;
    return DSC_OK;
  }
  DSC_TRY(grow(ctx, &ctx->workspace, &ctx->workspace_bytes, bytes));
  *ptr = ctx->workspace;
  return DSC_OK;
}

dsc_status dsc_malloc(dsc_context *ctx, size_t bytes, void **ptr) {
  DSC_CHECK(ctx != NULL && ptr != NULL, DSC_ERR_INVALID_ARGUMENT, "dsc_malloc",
            "ctx, ptr: expected non-NULL pointers");
  *ptr = NULL;
#ifdef DSC_WITH_CUDA
  if (dsc_ctx_is_cuda(ctx)) return dsc_cuda_malloc(ctx, bytes, ptr);
#endif
  /* rounding up must not wrap a huge request into a tiny allocation */
  int ok = bytes <= (size_t)PTRDIFF_MAX;
  size_t rounded = dsc_calign(bytes, 64, &ok);
  if (rounded == 0) rounded = 64;
  void *p = ok ? aligned_alloc(64, rounded) : NULL;
  if (!p)
    return dsc_error(DSC_ERR_OUT_OF_MEMORY, "dsc_malloc", "bytes: could not allocate %zu bytes",
                     bytes);
  ctx->counts.allocs++;
  *ptr = p;
  return DSC_OK;
}

void dsc_free(dsc_context *ctx, void *ptr) {
  if (!ctx || !ptr) return;
#ifdef DSC_WITH_CUDA
  if (dsc_ctx_is_cuda(ctx)) {
    dsc_cuda_free(ctx, ptr);
    return;
  }
#endif
  ctx->counts.frees++;
  free(ptr);
}

dsc_status dsc_memcpy(dsc_context *ctx, void *dst, DLDevice dst_device, const void *src,
                      DLDevice src_device, size_t bytes) {
  static const char *const FN = "dsc_memcpy";
  DSC_CHECK(ctx != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "ctx: expected a context, got NULL");
  if (bytes == 0) return DSC_OK;
  DSC_CHECK(dst != NULL && src != NULL, DSC_ERR_INVALID_ARGUMENT, FN,
            "dst, src: expected non-NULL pointers for %zu bytes", bytes);
  int dst_host = dst_device.device_type == kDLCPU, src_host = src_device.device_type == kDLCPU;
  DSC_CHECK(dst_host || (dst_device.device_type == ctx->device.device_type &&
                         dst_device.device_id == ctx->device.device_id),
            DSC_ERR_DEVICE, FN, "dst_device: expected the host or the context's device");
  DSC_CHECK(src_host || (src_device.device_type == ctx->device.device_type &&
                         src_device.device_id == ctx->device.device_id),
            DSC_ERR_DEVICE, FN, "src_device: expected the host or the context's device");
  if (dst_host && src_host) {
    memmove(dst, src, bytes);
    return DSC_OK;
  }
#ifdef DSC_WITH_CUDA
  int kind = src_host ? 0 : (dst_host ? 1 : 2);
  return dsc_cuda_memcpy(ctx, dst, src, bytes, kind);
#else
  return dsc_error(DSC_ERR_INTERNAL, FN, "a device copy in a build without CUDA");
#endif
}
