/*
 * dist/comm_nccl.c -- the NCCL backend of dsc_comm, compiled in CUDA builds that find
 * nccl.h (DSC_WITH_NCCL). Buffers are device memory of the communicator's GPU; every
 * collective is enqueued on the caller's context stream (ctx->stream) and returns without
 * waiting, as NCCL's own calls do. All-to-all-v is a group of ncclSend/ncclRecv (NCCL has
 * no all-to-all-v); its counts step stages the counts through a small device buffer and
 * waits for them (the host needs them to size the rows).
 *
 * Waiting (the counts step, barrier, dsc_comm_synchronize) polls the stream and
 * ncclCommGetAsyncError with the communicator's deadline; on expiry or an asynchronous
 * error the communicator is aborted (ncclCommAbort: kernels stuck on a dead peer return)
 * and the call is DSC_ERR_COMM. Communicators made here from a unique id are created
 * non-blocking and waited for the same way.
 *
 * Legend: W ranks, r this rank.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm_internal.h"

#ifdef DSC_WITH_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

typedef struct {
  ncclComm_t comm;
  int owned;       /* created here (destroyed with the dsc_comm); else borrowed */
  int device;
  int64_t *counts; /* device [2W] int64: the counts step's staging */
} nccl_impl;

static const char *const FN = "dsc_comm";

static ncclDataType_t nccl_dtype(dsc_dtype dt) {
  switch (dt) {
    case DSC_DTYPE_FLOAT32: return ncclFloat32;
    case DSC_DTYPE_FLOAT64: return ncclFloat64;
    case DSC_DTYPE_INT32: return ncclInt32;
    case DSC_DTYPE_INT64: return ncclInt64;
    case DSC_DTYPE_BFLOAT16: return ncclBfloat16;
    default: return ncclUint8;
  }
}

static dsc_status nccl_check(dsc_comm *c, ncclResult_t r, const char *what) {
  if (r == ncclSuccess || r == ncclInProgress) return DSC_OK;
  return dsc_comm_fail(c, FN, "%s #%llu on rank %d: %s", what, (unsigned long long)c->seq, (int)c->rank,
                       ncclGetErrorString(r));
}

static dsc_status cuda_check(cudaError_t e, const char *what) {
  if (e == cudaSuccess) return DSC_OK;
  return dsc_error(DSC_ERR_CUDA, FN, "%s: %s", what, cudaGetErrorString(e));
}

static cudaStream_t stream_of(dsc_context *ctx) { return ctx ? (cudaStream_t)ctx->stream : (cudaStream_t)0; }

/* Poll until the stream's work is done, with the deadline and NCCL's asynchronous errors. */
static dsc_status wait_stream(dsc_comm *c, cudaStream_t s, const char *what) {
  nccl_impl *m = (nccl_impl *)c->impl;
  const double deadline = dsc_comm_now() + c->timeout_s;
  for (int spins = 0;; ++spins) {
    const cudaError_t q = cudaStreamQuery(s);
    if (q == cudaSuccess) return DSC_OK;
    if (q != cudaErrorNotReady) return cuda_check(q, what);
    ncclResult_t ae = ncclSuccess;
    ncclCommGetAsyncError(m->comm, &ae);
    if (ae != ncclSuccess && ae != ncclInProgress) {
      ncclCommAbort(m->comm);
      m->comm = NULL;
      return dsc_comm_fail(c, FN, "%s on rank %d: NCCL reported %s (the communicator was aborted)", what,
                           (int)c->rank, ncclGetErrorString(ae));
    }
    if (dsc_comm_now() > deadline) {
      ncclCommAbort(m->comm);
      m->comm = NULL;
      return dsc_comm_fail(c, FN,
                           "%s on rank %d of %d: not complete within the %g s timeout: a peer died, hangs, or "
                           "called a different collective (the communicator was aborted)",
                           what, (int)c->rank, (int)c->size, c->timeout_s);
    }
    if (spins > 100) {
      struct timespec ts = {0, 100000L};
      nanosleep(&ts, NULL);
    }
  }
}

#define NCHECK(call, what) DSC_TRY(nccl_check(c, (call), (what)))

static dsc_status use(dsc_comm *c) {
  nccl_impl *m = (nccl_impl *)c->impl;
  if (!m->comm) return dsc_error(DSC_ERR_COMM, FN, "communicator aborted: %s", c->broken_msg);
  return cuda_check(cudaSetDevice(m->device), "cudaSetDevice");
}

static dsc_status n_all_reduce(dsc_comm *c, dsc_context *ctx, const void *x, void *y, int64_t n, dsc_dtype dt,
                               int op) {
  nccl_impl *m = (nccl_impl *)c->impl;
  DSC_TRY(use(c));
  NCHECK(ncclAllReduce(x, y, (size_t)n, nccl_dtype(dt), op == DSC_REDUCE_MAX ? ncclMax : ncclSum, m->comm,
                       stream_of(ctx)),
         "ncclAllReduce");
  const int64_t b = n * (int64_t)dsc_dtype_size(dt) * 2 * (c->size - 1) / (c->size ? c->size : 1);
  c->stats.bytes_sent += b, c->stats.bytes_received += b;
  return DSC_OK;
}

static dsc_status n_reduce_scatter(dsc_comm *c, dsc_context *ctx, const void *x, void *y, int64_t n, dsc_dtype dt,
                                   int op) {
  nccl_impl *m = (nccl_impl *)c->impl;
  DSC_TRY(use(c));
  NCHECK(ncclReduceScatter(x, y, (size_t)n, nccl_dtype(dt), op == DSC_REDUCE_MAX ? ncclMax : ncclSum, m->comm,
                           stream_of(ctx)),
         "ncclReduceScatter");
  const int64_t b = n * (int64_t)dsc_dtype_size(dt) * (c->size - 1);
  c->stats.bytes_sent += b, c->stats.bytes_received += b;
  return DSC_OK;
}

static dsc_status n_all_gather(dsc_comm *c, dsc_context *ctx, const void *x, void *y, int64_t bytes) {
  nccl_impl *m = (nccl_impl *)c->impl;
  DSC_TRY(use(c));
  NCHECK(ncclAllGather(x, y, (size_t)bytes, ncclUint8, m->comm, stream_of(ctx)), "ncclAllGather");
  c->stats.bytes_sent += bytes * (c->size - 1), c->stats.bytes_received += bytes * (c->size - 1);
  return DSC_OK;
}

static dsc_status n_broadcast(dsc_comm *c, dsc_context *ctx, void *x, int64_t bytes, int32_t root) {
  nccl_impl *m = (nccl_impl *)c->impl;
  DSC_TRY(use(c));
  NCHECK(ncclBroadcast(x, x, (size_t)bytes, ncclUint8, root, m->comm, stream_of(ctx)), "ncclBroadcast");
  if (c->rank == root) c->stats.bytes_sent += bytes;
  else c->stats.bytes_received += bytes;
  return DSC_OK;
}

/* Grouped point-to-point: x has sbytes[q] for each q, y receives rbytes[q] from each q. */
static dsc_status grouped_p2p(dsc_comm *c, cudaStream_t s, const char *x, const int64_t *sbytes, char *y,
                              const int64_t *rbytes, const char *what) {
  nccl_impl *m = (nccl_impl *)c->impl;
  NCHECK(ncclGroupStart(), what);
  int64_t so = 0, ro = 0;
  ncclResult_t r = ncclSuccess;
  for (int32_t q = 0; q < c->size && (r == ncclSuccess || r == ncclInProgress); ++q) {
    if (q == c->rank) {
      if (sbytes[q]) {
        const cudaError_t e = cudaMemcpyAsync(y + ro, x + so, (size_t)sbytes[q], cudaMemcpyDeviceToDevice, s);
        if (e != cudaSuccess) {
          ncclGroupEnd();
          return cuda_check(e, "cudaMemcpyAsync");
        }
      }
    } else {
      if (sbytes[q]) r = ncclSend(x + so, (size_t)sbytes[q], ncclUint8, q, m->comm, s);
      if (rbytes[q] && (r == ncclSuccess || r == ncclInProgress))
        r = ncclRecv(y + ro, (size_t)rbytes[q], ncclUint8, q, m->comm, s);
      c->stats.bytes_sent += sbytes[q];
      c->stats.bytes_received += rbytes[q];
    }
    so += sbytes[q];
    ro += rbytes[q];
  }
  const ncclResult_t e = ncclGroupEnd();
  NCHECK(r, what);
  NCHECK(e, what);
  return DSC_OK;
}

static dsc_status n_counts(dsc_comm *c, dsc_context *ctx, const int64_t *send, int64_t *recv) {
  nccl_impl *m = (nccl_impl *)c->impl;
  DSC_TRY(use(c));
  const int32_t W = c->size;
  cudaStream_t s = stream_of(ctx);
  DSC_TRY(cuda_check(cudaMemcpyAsync(m->counts, send, (size_t)W * 8, cudaMemcpyHostToDevice, s), "counts"));
  int64_t *sb = (int64_t *)malloc(2 * (size_t)W * sizeof *sb);
  if (!sb) return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  for (int32_t q = 0; q < W; ++q) sb[q] = sb[W + q] = 8;
  dsc_status st = grouped_p2p(c, s, (const char *)m->counts, sb, (char *)(m->counts + W), sb + W, "counts");
  free(sb);
  if (st == DSC_OK)
    st = cuda_check(cudaMemcpyAsync(recv, m->counts + W, (size_t)W * 8, cudaMemcpyDeviceToHost, s), "counts");
  if (st == DSC_OK) st = wait_stream(c, s, "all_to_all_v counts");
  return st;
}

static dsc_status n_all_to_all_v(dsc_comm *c, dsc_context *ctx, const void *x, const int64_t *sbytes, void *y,
                                 const int64_t *rbytes) {
  DSC_TRY(use(c));
  return grouped_p2p(c, stream_of(ctx), (const char *)x, sbytes, (char *)y, rbytes, "all_to_all_v");
}

static dsc_status n_barrier(dsc_comm *c, dsc_context *ctx) {
  nccl_impl *m = (nccl_impl *)c->impl;
  DSC_TRY(use(c));
  cudaStream_t s = stream_of(ctx);
  NCHECK(ncclAllReduce(m->counts, m->counts, 1, ncclInt64, ncclSum, m->comm, s), "barrier");
  return wait_stream(c, s, "barrier");
}

static dsc_status n_sync(dsc_comm *c, dsc_context *ctx) {
  DSC_TRY(use(c));
  return wait_stream(c, stream_of(ctx), "synchronize");
}

static void n_destroy(dsc_comm *c) {
  nccl_impl *m = (nccl_impl *)c->impl;
  if (!m) return;
  cudaSetDevice(m->device);
  if (m->counts) cudaFree(m->counts);
  if (m->owned && m->comm) {
    if (c->broken) ncclCommAbort(m->comm);
    else ncclCommDestroy(m->comm);
  }
  free(m);
  c->impl = NULL;
}

static dsc_status n_split(dsc_comm *c, int32_t color, int32_t key, dsc_comm **out);

static const dsc_comm_vt NCCL_VT = {"nccl", n_all_reduce, n_reduce_scatter, n_all_gather, n_broadcast, n_counts,
                                    n_all_to_all_v, n_barrier, n_split, n_sync, n_destroy};

/* Wait for a non-blocking communicator to be ready (creation, split), with a deadline. */
static dsc_status wait_ready(ncclComm_t comm, double timeout_s, const char *what) {
  const double deadline = dsc_comm_now() + timeout_s;
  for (;;) {
    ncclResult_t ae = ncclInProgress;
    const ncclResult_t r = ncclCommGetAsyncError(comm, &ae);
    if (r != ncclSuccess) return dsc_error(DSC_ERR_COMM, what, "ncclCommGetAsyncError: %s", ncclGetErrorString(r));
    if (ae == ncclSuccess) return DSC_OK;
    if (ae != ncclInProgress) {
      ncclCommAbort(comm);
      return dsc_error(DSC_ERR_COMM, what, "NCCL: %s", ncclGetErrorString(ae));
    }
    if (dsc_comm_now() > deadline) {
      ncclCommAbort(comm);
      return dsc_error(DSC_ERR_COMM, what,
                       "the NCCL communicator was not ready within %g s: a rank is missing, died or hangs",
                       timeout_s);
    }
    struct timespec ts = {0, 1000000L};
    nanosleep(&ts, NULL);
  }
}

static dsc_status wrap(const char *fn, ncclComm_t comm, int owned, int32_t device, dsc_comm **out) {
  int rank = 0, size = 0;
  ncclResult_t r = ncclCommUserRank(comm, &rank);
  if (r == ncclSuccess) r = ncclCommCount(comm, &size);
  if (r != ncclSuccess) {
    if (owned) ncclCommAbort(comm);
    return dsc_error(DSC_ERR_COMM, fn, "nccl_comm: not a usable NCCL communicator (%s)", ncclGetErrorString(r));
  }
  int dev = -1;
  if (ncclCommCuDevice(comm, &dev) == ncclSuccess && dev != device) {
    if (owned) ncclCommAbort(comm);
    return dsc_error(DSC_ERR_DEVICE, fn, "device: the NCCL communicator lives on CUDA device %d, got %d", dev,
                     (int)device);
  }
  nccl_impl *m = (nccl_impl *)calloc(1, sizeof *m);
  if (!m) {
    if (owned) ncclCommAbort(comm);
    return dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
  }
  m->comm = comm;
  m->owned = owned;
  m->device = device;
  cudaError_t e = cudaSetDevice(device);
  if (e == cudaSuccess) e = cudaMalloc((void **)&m->counts, 2 * (size_t)(size > 0 ? size : 1) * sizeof(int64_t));
  if (e != cudaSuccess) {
    if (owned) ncclCommAbort(comm);
    free(m);
    return cuda_check(e, "cudaMalloc");
  }
  const dsc_status st = dsc_comm_new(&NCCL_VT, m, rank, size, DSC_COMM_BACKEND_NCCL, (DLDevice){kDLCUDA, device}, out);
  if (st != DSC_OK) {
    cudaFree(m->counts);
    if (owned) ncclCommAbort(comm);
    free(m);
  }
  return st;
}

static dsc_status n_split(dsc_comm *c, int32_t color, int32_t key, dsc_comm **out) {
  nccl_impl *m = (nccl_impl *)c->impl;
  DSC_TRY(use(c));
  ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
  cfg.blocking = 0;
  ncclComm_t nc = NULL;
  const ncclResult_t r = ncclCommSplit(m->comm, color, key, &nc, &cfg);
  if (r != ncclSuccess && r != ncclInProgress)
    return dsc_comm_fail(c, "dsc_comm_split", "ncclCommSplit: %s", ncclGetErrorString(r));
  DSC_TRY(wait_ready(nc, c->timeout_s, "dsc_comm_split"));
  return wrap("dsc_comm_split", nc, 1, m->device, out);
}

dsc_status dsc_comm_create_nccl(void *nccl_comm, int32_t device, dsc_comm **out) {
  static const char *const F = "dsc_comm_create_nccl";
  DSC_CHECK(out != NULL, DSC_ERR_INVALID_ARGUMENT, F, "out: expected a pointer, got NULL");
  *out = NULL;
  DSC_CHECK(nccl_comm != NULL, DSC_ERR_INVALID_ARGUMENT, F, "nccl_comm: expected an ncclComm_t, got NULL");
  DSC_CHECK(device >= 0, DSC_ERR_INVALID_ARGUMENT, F, "device: expected >= 0, got %d", (int)device);
  return wrap(F, (ncclComm_t)nccl_comm, 0, device, out);
}

dsc_status dsc_comm_nccl_unique_id(uint8_t id[DSC_NCCL_UNIQUE_ID_BYTES]) {
  static const char *const F = "dsc_comm_nccl_unique_id";
  DSC_CHECK(id != NULL, DSC_ERR_INVALID_ARGUMENT, F, "id: expected a buffer of %d bytes, got NULL",
            DSC_NCCL_UNIQUE_ID_BYTES);
  ncclUniqueId u;
  const ncclResult_t r = ncclGetUniqueId(&u);
  if (r != ncclSuccess) return dsc_error(DSC_ERR_COMM, F, "ncclGetUniqueId: %s", ncclGetErrorString(r));
  memcpy(id, u.internal, sizeof u.internal < DSC_NCCL_UNIQUE_ID_BYTES ? sizeof u.internal : DSC_NCCL_UNIQUE_ID_BYTES);
  return DSC_OK;
}

dsc_status dsc_comm_create_nccl_uid(const uint8_t id[DSC_NCCL_UNIQUE_ID_BYTES], int32_t rank, int32_t size,
                                    int32_t device, dsc_comm **out) {
  static const char *const F = "dsc_comm_create_nccl_uid";
  DSC_CHECK(out != NULL, DSC_ERR_INVALID_ARGUMENT, F, "out: expected a pointer, got NULL");
  *out = NULL;
  DSC_CHECK(id != NULL, DSC_ERR_INVALID_ARGUMENT, F, "id: expected a unique id, got NULL");
  DSC_CHECK(size >= 1 && rank >= 0 && rank < size, DSC_ERR_INVALID_ARGUMENT, F,
            "rank, size: expected 0 <= rank < size, got rank %d, size %d", (int)rank, (int)size);
  DSC_CHECK(device >= 0, DSC_ERR_INVALID_ARGUMENT, F, "device: expected >= 0, got %d", (int)device);
  DSC_TRY(cuda_check(cudaSetDevice(device), "cudaSetDevice"));
  ncclUniqueId u;
  memcpy(u.internal, id, sizeof u.internal < DSC_NCCL_UNIQUE_ID_BYTES ? sizeof u.internal : DSC_NCCL_UNIQUE_ID_BYTES);
  ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
  cfg.blocking = 0;
  ncclComm_t comm = NULL;
  const ncclResult_t r = ncclCommInitRankConfig(&comm, size, u, rank, &cfg);
  if (r != ncclSuccess && r != ncclInProgress)
    return dsc_error(DSC_ERR_COMM, F, "ncclCommInitRankConfig: %s", ncclGetErrorString(r));
  double timeout = 300.0;
  const char *env = getenv("DSC_COMM_TIMEOUT");
  if (env && env[0] && atof(env) > 0) timeout = atof(env);
  DSC_TRY(wait_ready(comm, timeout, F));
  return wrap(F, comm, 1, device, out);
}

#else /* !DSC_WITH_NCCL */

static dsc_status no_nccl(const char *fn) {
  return dsc_error(DSC_ERR_UNSUPPORTED, fn,
                   "this build of deepseek_c has no NCCL backend (a CUDA build finds nccl.h in the CUDA "
                   "toolkit; rebuild with nvcc on PATH and DSC_CUDA=1)");
}

dsc_status dsc_comm_create_nccl(void *nccl_comm, int32_t device, dsc_comm **out) {
  (void)nccl_comm, (void)device;
  if (out) *out = NULL;
  return no_nccl("dsc_comm_create_nccl");
}

dsc_status dsc_comm_nccl_unique_id(uint8_t id[DSC_NCCL_UNIQUE_ID_BYTES]) {
  (void)id;
  return no_nccl("dsc_comm_nccl_unique_id");
}

dsc_status dsc_comm_create_nccl_uid(const uint8_t id[DSC_NCCL_UNIQUE_ID_BYTES], int32_t rank, int32_t size,
                                    int32_t device, dsc_comm **out) {
  (void)id, (void)rank, (void)size, (void)device;
  if (out) *out = NULL;
  return no_nccl("dsc_comm_create_nccl_uid");
}

#endif
