/*
 * kernels/context.cu -- the CUDA side of dsc_context: device selection and checks, the
 * per-context state (cuBLASLt handle, small device scratch, pinned host buffer), device
 * memory, copies, synchronization, device queries and the toolkit version.
 *
 * Legend: bytes sizes in bytes; kind of a copy: 0 host->device, 1 device->host,
 * 2 device->device, 3 host->host.
 *
 * Every failure is reported through dsc_error with the CUDA reason; a missing driver or
 * device is a DSC_ERR_CUDA status, never a crash. Errors that CUDA keeps as the "last
 * error" of the thread are cleared after they are reported, so the next launch check
 * does not blame an innocent kernel.
 */
#include <cublasLt.h>
#include <stdlib.h>
#include <string.h>

#include "common.cuh"

static const char *const FN_INIT = "dsc_context_create";

/* Report a failed runtime call of the context plumbing, clearing CUDA's last error. */
static dsc_status cuda_fail(cudaError_t e, const char *fn, const char *what) {
  (void)cudaGetLastError();
  return dsc_error(e == cudaErrorMemoryAllocation ? DSC_ERR_OUT_OF_MEMORY : DSC_ERR_CUDA, fn,
                   "%s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

/* cudaGetDeviceCount failed: say why in the user's words. No driver at all (a machine
 * without an NVIDIA GPU: cudaDriverGetVersion gives 0) is not "insufficient driver". */
static dsc_status no_device(cudaError_t e, const char *fn) {
  int drv = 0, rt = 0;
  (void)cudaDriverGetVersion(&drv);
  (void)cudaRuntimeGetVersion(&rt);
  (void)cudaGetLastError();
  if (drv == 0 || e == cudaErrorNoDevice)
    return dsc_error(DSC_ERR_CUDA, fn, "no NVIDIA driver or no GPU on this machine (%s)",
                     cudaGetErrorName(e));
  if (e == cudaErrorInsufficientDriver)
    return dsc_error(DSC_ERR_CUDA, fn,
                     "the NVIDIA driver supports CUDA %d.%d, this build needs CUDA %d.%d: update the "
                     "driver (%s)", drv / 1000, drv % 1000 / 10, rt / 1000, rt % 1000 / 10,
                     cudaGetErrorName(e));
  return cuda_fail(e, fn, "cudaGetDeviceCount");
}

extern "C" dsc_status dsc_cuda_enter(dsc_context *ctx, const char *fn) {
  const int want = ctx->device.device_id;
  int cur = -1;
  cudaError_t e = cudaGetDevice(&cur);
  if (e != cudaSuccess) return cuda_fail(e, fn, "cudaGetDevice");
  if (cur != want) {
    e = cudaSetDevice(want);
    if (e != cudaSuccess) return cuda_fail(e, fn, "cudaSetDevice");
  }
  return DSC_OK;
}

extern "C" void dsc_cuda_context_release(dsc_context *ctx) {
  dsc_cuda_state *st = dsc_cuda_st(ctx);
  if (!st) return;
  (void)cudaSetDevice(st->device);
  /* No stream sync here (the caller's stream may already be gone): cudaFree and
   * cudaFreeHost wait for pending work on the device themselves. */
  dsc_lt_release(st); /* cuBLASLt plans and handle (blaslt.cu) */
  if (st->scratch) (void)cudaFree(st->scratch);
  if (ctx->check_record) (void)cudaFree(ctx->check_record);
  if (ctx->check_mirror) (void)cudaFreeHost(ctx->check_mirror);
  ctx->check_record = NULL;
  ctx->check_mirror = NULL;
  if (st->pinned) (void)cudaFreeHost(st->pinned);
  if (st->handoff) (void)cudaEventDestroy(st->handoff);
  /* Outstanding frees of the pool complete on their own; the pool goes once they have. */
  if (st->pool) (void)cudaMemPoolDestroy(st->pool);
  (void)cudaGetLastError();
  free(st);
  ctx->cuda = NULL;
}

/* The workspace's own pool (not the device's default one, whose settings other libraries
 * share): it keeps what is freed (release threshold: everything), so a workspace that
 * shrinks and grows again, or is freed and reallocated on the stream, costs no
 * cudaMalloc in steady state. Devices without memory pools get none (st->pool NULL). */
static cudaError_t create_pool(dsc_cuda_state *st) {
  int supported = 0;
  cudaError_t e = cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, st->device);
  if (e != cudaSuccess || !supported) {
    (void)cudaGetLastError();
    return cudaSuccess;
  }
  cudaMemPoolProps props;
  memset(&props, 0, sizeof props);
  props.allocType = cudaMemAllocationTypePinned;
  props.handleTypes = cudaMemHandleTypeNone;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = st->device;
  e = cudaMemPoolCreate(&st->pool, &props);
  if (e != cudaSuccess) {
    st->pool = NULL;
    return e;
  }
  /* Without the threshold the pool still works, only handing memory back at each sync. */
  uint64_t keep = UINT64_MAX;
  if (cudaMemPoolSetAttribute(st->pool, cudaMemPoolAttrReleaseThreshold, &keep) != cudaSuccess)
    (void)cudaGetLastError();
  return cudaSuccess;
}

extern "C" dsc_status dsc_cuda_context_init(dsc_context *ctx) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) return no_device(e, FN_INIT);
  const int id = ctx->device.device_id;
  if (id < 0 || id >= count)
    return dsc_error(DSC_ERR_INVALID_ARGUMENT, FN_INIT,
                     "options->device_id: expected < %d visible CUDA devices, got %d", count, id);
  e = cudaSetDevice(id);
  if (e != cudaSuccess) return cuda_fail(e, FN_INIT, "cudaSetDevice");

  dsc_cuda_state *st = (dsc_cuda_state *)calloc(1, sizeof *st);
  if (!st) return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN_INIT, "out of host memory");
  st->device = id;
  ctx->cuda = st;
  e = cudaDeviceGetAttribute(&st->sm_count, cudaDevAttrMultiProcessorCount, id);
  if (e == cudaSuccess) e = cudaMalloc(&st->scratch, DSC_CUDA_SCRATCH_BYTES);
  if (e == cudaSuccess) e = cudaMallocHost(&st->pinned, DSC_CUDA_PINNED_BYTES);
  if (e == cudaSuccess) e = cudaEventCreateWithFlags(&st->handoff, cudaEventDisableTiming);
  if (e == cudaSuccess) e = create_pool(st);
  /* The deferred checks' error record (dsc_index_check): nothing recorded, running = ~0. */
  if (e == cudaSuccess) e = cudaMalloc((void **)&ctx->check_record, sizeof(dsc_check_record));
  if (e == cudaSuccess) e = cudaMallocHost((void **)&ctx->check_mirror, sizeof(dsc_check_record));
  if (e == cudaSuccess) e = cudaMemset(ctx->check_record, 0, sizeof(dsc_check_record));
  if (e == cudaSuccess) e = cudaMemset(&ctx->check_record->running, 0xff, sizeof(uint64_t));
  if (e == cudaSuccess) e = cudaDeviceSynchronize(); /* the memsets are done before any stream uses it */
  if (e != cudaSuccess) {
    dsc_status s = cuda_fail(e, FN_INIT, "allocating the context's CUDA scratch buffers");
    dsc_cuda_context_release(ctx);
    return s;
  }
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, id) == cudaSuccess)
    dsc_log(ctx, DSC_LOG_DEBUG, "CUDA context on device %d: %s (sm_%d%d, %d SMs)", id, prop.name,
            prop.major, prop.minor, st->sm_count);
  (void)cudaGetLastError();
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_mem_info(dsc_context *ctx, size_t *free_bytes, size_t *total_bytes) {
  static const char *const FN = "dsc_cuda_mem_info";
  *free_bytes = *total_bytes = 0;
  DSC_CUDA_ENTER(ctx, FN);
  cudaError_t e = cudaMemGetInfo(free_bytes, total_bytes);
  if (e != cudaSuccess) return cuda_fail(e, FN, "cudaMemGetInfo");
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_malloc(dsc_context *ctx, size_t bytes, void **ptr) {
  static const char *const FN = "dsc_malloc";
  *ptr = NULL;
  DSC_CUDA_ENTER(ctx, FN);
  /* A zero-byte request still gets a distinct, freeable pointer (like the CPU path). */
  void *p = NULL;
  ctx->counts.allocs++;
  cudaError_t e = cudaMalloc(&p, bytes > 0 ? bytes : 256);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return dsc_error(e == cudaErrorMemoryAllocation ? DSC_ERR_OUT_OF_MEMORY : DSC_ERR_CUDA, FN,
                     "bytes: could not allocate %zu bytes on CUDA device %d: %s", bytes,
                     (int)ctx->device.device_id, cudaGetErrorString(e));
  }
  *ptr = p;
  return DSC_OK;
}

extern "C" void dsc_cuda_free(dsc_context *ctx, void *ptr) {
  if (!ptr) return;
  if (dsc_cuda_enter(ctx, "dsc_free") != DSC_OK) return;
  ctx->counts.frees++;
  cudaError_t e = cudaFree(ptr);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    dsc_log(ctx, DSC_LOG_WARN, "dsc_free: cudaFree(%p) failed: %s", ptr, cudaGetErrorString(e));
  }
}

extern "C" dsc_status dsc_cuda_memcpy(dsc_context *ctx, void *dst, const void *src, size_t bytes,
                                      int kind) {
  static const char *const FN = "dsc_memcpy";
  if (bytes == 0) return DSC_OK;
  if (kind == 3) {
    memmove(dst, src, bytes);
    return DSC_OK;
  }
  DSC_CUDA_ENTER(ctx, FN);
  cudaMemcpyKind k;
  switch (kind) {
    case 0: k = cudaMemcpyHostToDevice; break;
    case 1: k = cudaMemcpyDeviceToHost; break;
    case 2: k = cudaMemcpyDeviceToDevice; break;
    default:
      return dsc_error(DSC_ERR_INTERNAL, FN, "kind: expected 0..3, got %d", kind);
  }
  cudaStream_t s = dsc_cuda_stream(ctx);
  if (kind == 0) ctx->counts.copies_to_device++;
  if (kind == 1) ctx->counts.copies_to_host++;
  DSC_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, k, s), FN);
  /* A copy that touches host memory completes before returning: the caller may read
   * (device->host) or reuse (host->device, also for pinned sources) its buffer at once.
   * Device->device copies stay asynchronous, ordered on the stream. */
  if (kind != 2) return dsc_cuda_wait(ctx, FN);
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_synchronize(dsc_context *ctx) {
  static const char *const FN = "dsc_context_synchronize";
  DSC_CUDA_ENTER(ctx, FN);
  return dsc_cuda_wait(ctx, FN);
}

extern "C" dsc_status dsc_cuda_workspace_alloc(dsc_context *ctx, size_t bytes, void **ptr) {
  static const char *const FN = "dsc_workspace";
  *ptr = NULL;
  dsc_cuda_state *st = dsc_cuda_st(ctx);
  if (!st->pool) return dsc_cuda_malloc(ctx, bytes, ptr);
  DSC_CUDA_ENTER(ctx, FN);
  void *p = NULL;
  ctx->counts.allocs++;
  cudaError_t e = cudaMallocFromPoolAsync(&p, bytes > 0 ? bytes : 256, st->pool,
                                          dsc_cuda_stream(ctx));
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return dsc_error(e == cudaErrorMemoryAllocation ? DSC_ERR_OUT_OF_MEMORY : DSC_ERR_CUDA, FN,
                     "bytes: could not allocate a workspace of %zu bytes on CUDA device %d: %s",
                     bytes, (int)ctx->device.device_id, cudaGetErrorString(e));
  }
  *ptr = p;
  return DSC_OK;
}

extern "C" void dsc_cuda_workspace_free(dsc_context *ctx, void *ptr) {
  if (!ptr) return;
  dsc_cuda_state *st = dsc_cuda_st(ctx);
  if (!st->pool) {
    dsc_cuda_free(ctx, ptr);
    return;
  }
  if (dsc_cuda_enter(ctx, "dsc_workspace") != DSC_OK) return;
  ctx->counts.frees++;
  /* Back to the pool once the stream's work queued so far (which may read it) is done. */
  cudaError_t e = cudaFreeAsync(ptr, dsc_cuda_stream(ctx));
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    dsc_log(ctx, DSC_LOG_WARN, "dsc_workspace: cudaFreeAsync(%p) failed: %s", ptr,
            cudaGetErrorString(e));
  }
}

extern "C" void dsc_cuda_quiesce(dsc_context *ctx) {
  if (dsc_cuda_enter(ctx, "dsc_context_destroy") != DSC_OK) return;
  if (cudaDeviceSynchronize() != cudaSuccess) (void)cudaGetLastError();
}

extern "C" dsc_status dsc_cuda_set_stream(dsc_context *ctx, void *stream) {
  static const char *const FN = "dsc_context_set_stream";
  DSC_CUDA_ENTER(ctx, FN);
  dsc_cuda_state *st = dsc_cuda_st(ctx);
  /* Work queued on the old stream may still read or write the workspace and the scratch
   * buffers; the new stream starts after it (the host does not wait). */
  DSC_CUDA_TRY(cudaEventRecord(st->handoff, dsc_cuda_stream(ctx)), FN);
  DSC_CUDA_TRY(cudaStreamWaitEvent((cudaStream_t)stream, st->handoff, 0), FN);
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_get_device_count(int32_t *count) {
  int n = 0;
  *count = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) return no_device(e, "dsc_cuda_device_count");
  *count = (int32_t)n;
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_get_device_name(int32_t index, char *name, size_t n,
                                               int32_t *major, int32_t *minor) {
  static const char *const FN = "dsc_cuda_device_name";
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) return no_device(e, FN);
  if (index < 0 || index >= count)
    return dsc_error(DSC_ERR_INVALID_ARGUMENT, FN,
                     "index: expected 0 <= index < %d visible CUDA devices, got %d", count,
                     (int)index);
  cudaDeviceProp prop;
  e = cudaGetDeviceProperties(&prop, index);
  if (e != cudaSuccess) return cuda_fail(e, FN, "cudaGetDeviceProperties");
  size_t len = strnlen(prop.name, sizeof prop.name);
  if (len >= n) len = n - 1; /* n > 0: checked by the caller */
  memcpy(name, prop.name, len);
  name[len] = '\0';
  *major = prop.major;
  *minor = prop.minor;
  return DSC_OK;
}

/* "MAJOR.MINOR" of CUDART_VERSION (e.g. 13000 -> "13.0"), built at compile time. */
namespace {
struct VersionString {
  char s[16];
};
constexpr VersionString make_version(int v) {
  VersionString r{};
  const int major = v / 1000, minor = (v % 1000) / 10;
  int i = 0;
  if (major >= 10) r.s[i++] = (char)('0' + major / 10);
  r.s[i++] = (char)('0' + major % 10);
  r.s[i++] = '.';
  if (minor >= 10) r.s[i++] = (char)('0' + minor / 10);
  r.s[i++] = (char)('0' + minor % 10);
  r.s[i] = '\0';
  return r;
}
constexpr VersionString kCudaVersion = make_version(CUDART_VERSION);
}  // namespace

extern "C" const char *dsc_cuda_build_version(void) { return kCudaVersion.s; }
