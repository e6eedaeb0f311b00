/*
 * dist/comm.c -- dsc_comm: the public entry points (each validates its arguments, then
 * calls the backend), the asynchronous worker that lets CPU communicators overlap with
 * computation, and the world of one.
 *
 * Asynchronous operations (dist.h: dsc_comm_iall_reduce, ...) on a CPU communicator run on
 * one worker thread per communicator, in the order they were issued (a stream, like NCCL's
 * on the GPU). A synchronous operation first waits for the queued ones, so at any moment
 * one thread at most runs a communicator's operations and every rank issues them in
 * program order. Without MPI_THREAD_MULTIPLE (or for the world of one) the asynchronous
 * calls run at once in the caller's thread.
 *
 * Legend: W ranks, r this rank, n elements.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm_internal.h"
#include "dist.h"

const char *dsc_coll_name(int kind) {
  switch (kind) {
    case DSC_COLL_ALL_REDUCE: return "all_reduce";
    case DSC_COLL_REDUCE_SCATTER: return "reduce_scatter";
    case DSC_COLL_ALL_GATHER: return "all_gather";
    case DSC_COLL_BROADCAST: return "broadcast";
    case DSC_COLL_ALL_TO_ALL: return "all_to_all_v";
    case DSC_COLL_COUNTS: return "all_to_all_v counts";
    case DSC_COLL_BARRIER: return "barrier";
    case DSC_COLL_SPLIT: return "split";
  }
  return "collective";
}

double dsc_comm_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

dsc_status dsc_comm_fail(dsc_comm *c, const char *fn, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  dsc_verror(DSC_ERR_COMM, fn, fmt, ap);
  va_end(ap);
  if (c && !c->broken) {
    c->broken = 1;
    snprintf(c->broken_msg, sizeof c->broken_msg, "%s", dsc_last_error());
  }
  return DSC_ERR_COMM;
}

/* ------------------------------------------------------------------ reductions (CPU) */

#define FOLD(T, OP)                                                        \
  do {                                                                     \
    T *out = (T *)y;                                                       \
    const T *p0 = (const T *)parts[0];                                     \
    if ((const void *)out != (const void *)p0) memcpy(out, p0, (size_t)n * sizeof(T)); \
    for (int32_t q = 1; q < W; ++q) {                                      \
      const T *pq = (const T *)parts[q];                                   \
      for (int64_t i = 0; i < n; ++i) OP(out[i], pq[i]);                   \
    }                                                                      \
  } while (0)
#define ADD_(a, b) ((a) = (a) + (b))
#define MAX_(a, b) ((a) = (b) > (a) ? (b) : (a))

void dsc_comm_fold(dsc_dtype dt, int op, int32_t W, const void *const *parts, int64_t n, void *y) {
  /* y may be parts[0] itself, but no other part: ((x_0 op x_1) op x_2) ... */
  switch (dt) {
    case DSC_DTYPE_FLOAT32:
      if (op == DSC_REDUCE_MAX) FOLD(float, MAX_); else FOLD(float, ADD_);
      break;
    case DSC_DTYPE_FLOAT64:
      if (op == DSC_REDUCE_MAX) FOLD(double, MAX_); else FOLD(double, ADD_);
      break;
    case DSC_DTYPE_INT32:
      if (op == DSC_REDUCE_MAX) FOLD(int32_t, MAX_); else FOLD(int32_t, ADD_);
      break;
    default: /* int64 */
      if (op == DSC_REDUCE_MAX) FOLD(int64_t, MAX_); else FOLD(int64_t, ADD_);
      break;
  }
}

/* ------------------------------------------------------------------ the world of one */

static dsc_status self_copy(dsc_context *ctx, void *y, const void *x, int64_t bytes) {
  if (x == y || bytes == 0) return DSC_OK;
  memmove(y, x, (size_t)bytes);
  (void)ctx;
  return DSC_OK;
}
static dsc_status self_all_reduce(dsc_comm *c, dsc_context *ctx, const void *x, void *y, int64_t n, dsc_dtype dt,
                                  int op) {
  (void)c, (void)op;
  return self_copy(ctx, y, x, n * (int64_t)dsc_dtype_size(dt));
}
static dsc_status self_reduce_scatter(dsc_comm *c, dsc_context *ctx, const void *x, void *y, int64_t n,
                                      dsc_dtype dt, int op) {
  (void)c, (void)op;
  return self_copy(ctx, y, x, n * (int64_t)dsc_dtype_size(dt));
}
static dsc_status self_all_gather(dsc_comm *c, dsc_context *ctx, const void *x, void *y, int64_t bytes) {
  (void)c;
  return self_copy(ctx, y, x, bytes);
}
static dsc_status self_broadcast(dsc_comm *c, dsc_context *ctx, void *x, int64_t bytes, int32_t root) {
  (void)c, (void)ctx, (void)x, (void)bytes, (void)root;
  return DSC_OK;
}
static dsc_status self_counts(dsc_comm *c, dsc_context *ctx, const int64_t *send, int64_t *recv) {
  (void)c, (void)ctx;
  recv[0] = send[0];
  return DSC_OK;
}
static dsc_status self_all_to_all_v(dsc_comm *c, dsc_context *ctx, const void *x, const int64_t *sbytes, void *y,
                                    const int64_t *rbytes) {
  (void)c, (void)rbytes;
  return self_copy(ctx, y, x, sbytes[0]);
}
static dsc_status self_barrier(dsc_comm *c, dsc_context *ctx) {
  (void)c, (void)ctx;
  return DSC_OK;
}
static dsc_status self_split(dsc_comm *c, int32_t color, int32_t key, dsc_comm **out) {
  (void)c, (void)color, (void)key;
  return dsc_comm_create_self(out);
}
static dsc_status self_sync(dsc_comm *c, dsc_context *ctx) {
  (void)c, (void)ctx;
  return DSC_OK;
}
static void self_destroy(dsc_comm *c) { (void)c; }

static const dsc_comm_vt SELF_VT = {"self", self_all_reduce, self_reduce_scatter, self_all_gather,
                                    self_broadcast, self_counts, self_all_to_all_v, self_barrier,
                                    self_split, self_sync, self_destroy};

/* ------------------------------------------------------------------ creation */

dsc_status dsc_comm_new(const dsc_comm_vt *vt, void *impl, int32_t rank, int32_t size, int32_t backend,
                        DLDevice device, dsc_comm **out) {
  dsc_comm *c = (dsc_comm *)calloc(1, sizeof *c);
  if (!c) return dsc_error(DSC_ERR_OUT_OF_MEMORY, "dsc_comm", "out of host memory");
  c->vt = vt;
  c->impl = impl;
  c->rank = rank;
  c->size = size;
  c->backend = backend;
  c->device = device;
  c->timeout_s = 300.0;
  const char *env = getenv("DSC_COMM_TIMEOUT");
  if (env && env[0]) {
    char *end = NULL;
    const double t = strtod(env, &end);
    if (end != env && isfinite(t) && t > 0.0) c->timeout_s = t;
  }
  c->stats.size = sizeof c->stats;
  *out = c;
  return DSC_OK;
}

dsc_status dsc_comm_create_self(dsc_comm **out) {
  DSC_CHECK(out != NULL, DSC_ERR_INVALID_ARGUMENT, "dsc_comm_create_self", "out: expected a pointer, got NULL");
  *out = NULL;
  return dsc_comm_new(&SELF_VT, NULL, 0, 1, DSC_COMM_BACKEND_SELF, (DLDevice){kDLCPU, 0}, out);
}

dsc_status dsc_comm_create_mpi(const void *mpi_comm, dsc_comm **out) {
  static const char *const FN = "dsc_comm_create_mpi";
  DSC_CHECK(out != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "out: expected a pointer, got NULL");
  *out = NULL;
  DSC_CHECK(mpi_comm != NULL, DSC_ERR_INVALID_ARGUMENT, FN,
            "mpi_comm: expected the address of an MPI_Comm, got NULL");
  return dsc_comm_mpi_create(mpi_comm, out);
}

/* ------------------------------------------------------------------ the worker */

enum { JOB_ALL_REDUCE = 0, JOB_ALL_TO_ALL = 1 };

struct dsc_comm_req {
  dsc_comm *comm; /* the communicator it was issued on */
  int kind;
  dsc_context *ctx;
  const void *x;
  void *y;
  int64_t n;
  dsc_dtype dt;
  int op;
  int64_t *sb, *rb; /* [W] each, owned (all-to-all-v) */
  dsc_status st;
  char msg[1024];
  int done;
  double t_start;   /* when it was issued (busy time runs from its start on the worker) */
  struct dsc_comm_req *next;
};

struct dsc_comm_worker {
  pthread_t th;
  pthread_mutex_t mu;
  pthread_cond_t cv_work, cv_done;
  dsc_comm_req *head, *tail;
  int64_t pending; /* issued and not yet waited for */
  int stop;
};

/* The operation of a request, on whichever thread runs it. */
static dsc_status run_req(dsc_comm *c, dsc_comm_req *r) {
  if (c->broken) return dsc_error(DSC_ERR_COMM, "dsc_comm", "communicator unusable after an earlier failure: %s",
                                  c->broken_msg);
  c->seq++;
  c->stats.ops++;
  if (r->kind == JOB_ALL_REDUCE) return c->vt->all_reduce(c, r->ctx, r->x, r->y, r->n, r->dt, r->op);
  return c->vt->all_to_all_v(c, r->ctx, r->x, r->sb, r->y, r->rb);
}

static void *worker_main(void *arg) {
  dsc_comm *c = (dsc_comm *)arg;
  dsc_comm_worker *w = c->worker;
  for (;;) {
    pthread_mutex_lock(&w->mu);
    while (!w->head && !w->stop) pthread_cond_wait(&w->cv_work, &w->mu);
    dsc_comm_req *r = w->head;
    if (!r) {
      pthread_mutex_unlock(&w->mu);
      break;
    }
    pthread_mutex_unlock(&w->mu);
    const double t0 = dsc_comm_now();
    const dsc_status st = run_req(c, r);
    const double t1 = dsc_comm_now();
    pthread_mutex_lock(&w->mu);
    r->st = st;
    if (st != DSC_OK) snprintf(r->msg, sizeof r->msg, "%s", dsc_last_error());
    c->stats.busy_seconds += t1 - t0;
    w->head = r->next;
    if (!w->head) w->tail = NULL;
    r->done = 1;
    pthread_cond_broadcast(&w->cv_done);
    pthread_mutex_unlock(&w->mu);
  }
  return NULL;
}

static dsc_status worker_start(dsc_comm *c) {
  if (c->worker) return DSC_OK;
  dsc_comm_worker *w = (dsc_comm_worker *)calloc(1, sizeof *w);
  if (!w) return dsc_error(DSC_ERR_OUT_OF_MEMORY, "dsc_comm", "out of host memory");
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv_work, NULL);
  pthread_cond_init(&w->cv_done, NULL);
  c->worker = w;
  if (pthread_create(&w->th, NULL, worker_main, c) != 0) {
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv_work);
    pthread_cond_destroy(&w->cv_done);
    free(w);
    c->worker = NULL;
    c->async_ok = 0; /* run them synchronously from now on */
  }
  return DSC_OK;
}

/* Wait until every queued operation has run (not for their requests to be waited on). */
static void worker_drain(dsc_comm *c) {
  dsc_comm_worker *w = c->worker;
  if (!w) return;
  const double t0 = dsc_comm_now();
  pthread_mutex_lock(&w->mu);
  int waited = w->head != NULL;
  while (w->head) pthread_cond_wait(&w->cv_done, &w->mu);
  if (waited) c->stats.wait_seconds += dsc_comm_now() - t0;
  pthread_mutex_unlock(&w->mu);
}

static dsc_status issue(dsc_comm *c, dsc_comm_req *r, dsc_comm_req **req) {
  r->comm = c;
  r->t_start = dsc_comm_now();
  if (c->async_ok && c->worker == NULL) DSC_TRY(worker_start(c));
  if (!c->async_ok || !c->worker) {
    /* synchronous: run now, report at the wait */
    r->st = run_req(c, r);
    if (r->st != DSC_OK) snprintf(r->msg, sizeof r->msg, "%s", dsc_last_error());
    const double dt = dsc_comm_now() - r->t_start;
    c->stats.busy_seconds += dt;
    c->stats.wait_seconds += dt;
    r->done = 1;
    *req = r;
    return DSC_OK;
  }
  dsc_comm_worker *w = c->worker;
  pthread_mutex_lock(&w->mu);
  if (w->tail) w->tail->next = r;
  else w->head = r;
  w->tail = r;
  w->pending++;
  pthread_cond_signal(&w->cv_work);
  pthread_mutex_unlock(&w->mu);
  *req = r;
  return DSC_OK;
}

dsc_status dsc_comm_iall_reduce(dsc_comm *c, dsc_context *ctx, void *buf, int64_t n, dsc_dtype dt, int op,
                                dsc_comm_req **req) {
  *req = NULL;
  dsc_comm_req *r = (dsc_comm_req *)calloc(1, sizeof *r);
  if (!r) return dsc_error(DSC_ERR_OUT_OF_MEMORY, "dsc_comm_iall_reduce", "out of host memory");
  r->kind = JOB_ALL_REDUCE;
  r->ctx = ctx;
  r->x = buf;
  r->y = buf;
  r->n = n;
  r->dt = dt;
  r->op = op;
  return issue(c, r, req);
}

dsc_status dsc_comm_iall_to_all_v(dsc_comm *c, dsc_context *ctx, const void *x, const int64_t *sbytes, void *y,
                                  const int64_t *rbytes, dsc_comm_req **req) {
  *req = NULL;
  dsc_comm_req *r = (dsc_comm_req *)calloc(1, sizeof *r);
  int64_t *sb = (int64_t *)malloc(2 * (size_t)c->size * sizeof(int64_t));
  if (!r || !sb) {
    free(r);
    free(sb);
    return dsc_error(DSC_ERR_OUT_OF_MEMORY, "dsc_comm_iall_to_all_v", "out of host memory");
  }
  memcpy(sb, sbytes, (size_t)c->size * sizeof(int64_t));
  memcpy(sb + c->size, rbytes, (size_t)c->size * sizeof(int64_t));
  r->kind = JOB_ALL_TO_ALL;
  r->ctx = ctx;
  r->x = x;
  r->y = y;
  r->sb = sb;
  r->rb = sb + c->size;
  return issue(c, r, req);
}

dsc_status dsc_comm_wait(dsc_comm *c, dsc_comm_req *r) {
  if (!r) return DSC_OK;
  c = r->comm;
  dsc_comm_worker *w = c->worker;
  if (w && !r->done) {
    const double t0 = dsc_comm_now();
    pthread_mutex_lock(&w->mu);
    while (!r->done) pthread_cond_wait(&w->cv_done, &w->mu);
    c->stats.wait_seconds += dsc_comm_now() - t0;
    pthread_mutex_unlock(&w->mu);
  }
  if (w) {
    pthread_mutex_lock(&w->mu);
    w->pending--;
    pthread_mutex_unlock(&w->mu);
  }
  const dsc_status st = r->st;
  if (st != DSC_OK) dsc_error_set(st, r->msg); /* the worker's message, as it was */
  free(r->sb);
  free(r);
  return st;
}

/* ------------------------------------------------------------------ public collectives */

/* Before a synchronous operation: the comm is usable, queued work has run. */
static dsc_status enter(dsc_comm *c, const char *fn) {
  DSC_CHECK(c != NULL, DSC_ERR_INVALID_ARGUMENT, fn, "comm: expected a communicator, got NULL");
  worker_drain(c);
  DSC_CHECK(!c->broken, DSC_ERR_COMM, fn, "comm: unusable after an earlier failure: %s", c->broken_msg);
  c->seq++;
  c->stats.ops++;
  return DSC_OK;
}

static dsc_status timed(dsc_comm *c, double t0, dsc_status st) {
  const double dt = dsc_comm_now() - t0;
  c->stats.wait_seconds += dt;
  c->stats.busy_seconds += dt;
  return st;
}

static dsc_status check_buf(const dsc_comm *c, dsc_context *ctx, const char *fn, const char *arg, const DLTensor *t,
                            unsigned dtypes) {
  DSC_CHECK(ctx != NULL, DSC_ERR_INVALID_ARGUMENT, fn, "ctx: expected a context, got NULL");
  DSC_CHECK(ctx->device.device_type == c->device.device_type && ctx->device.device_id == c->device.device_id,
            DSC_ERR_DEVICE, fn, "ctx: expected a context on the communicator's device (%s:%d), got %s:%d",
            c->device.device_type == kDLCPU ? "cpu" : "cuda", (int)c->device.device_id,
            ctx->device.device_type == kDLCPU ? "cpu" : "cuda", (int)ctx->device.device_id);
  return dsc_check_tensor(ctx, fn, arg, t, dtypes);
}

static unsigned reduce_dtypes(const dsc_comm *c) {
  unsigned m = DSC_DT(DSC_DTYPE_FLOAT32) | DSC_DT(DSC_DTYPE_FLOAT64) | DSC_DT(DSC_DTYPE_INT32) |
               DSC_DT(DSC_DTYPE_INT64);
  if (c->backend == DSC_COMM_BACKEND_NCCL) m |= DSC_DT(DSC_DTYPE_BFLOAT16);
  return m;
}

static const unsigned ANY_DT = ~0u & ~DSC_DT(DSC_DTYPE_INVALID);

static size_t nbytes(const DLTensor *t) {
  return (size_t)dsc_numel(t) * dsc_dtype_size(dsc_tensor_dtype(t));
}

dsc_status dsc_comm_all_reduce(dsc_comm *c, dsc_context *ctx, const DLTensor *x, DLTensor *y, int32_t op) {
  static const char *const FN = "dsc_comm_all_reduce";
  DSC_CHECK(c != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "comm: expected a communicator, got NULL");
  DSC_TRY(check_buf(c, ctx, FN, "x", x, reduce_dtypes(c)));
  DSC_TRY(check_buf(c, ctx, FN, "y", y, reduce_dtypes(c)));
  DSC_TRY(dsc_check_same_shape(FN, "y", y, "x", x));
  DSC_TRY(dsc_check_same_dtype(FN, "y", y, "x", x));
  DSC_TRY(dsc_check_inplace_or_disjoint(FN, "y", y, "x", x));
  DSC_CHECK(op == DSC_REDUCE_SUM || op == DSC_REDUCE_MAX, DSC_ERR_INVALID_ARGUMENT, FN,
            "op: expected DSC_REDUCE_SUM (0) or DSC_REDUCE_MAX (1), got %d", (int)op);
  DSC_TRY(enter(c, FN));
  const double t0 = dsc_comm_now();
  return timed(c, t0, c->vt->all_reduce(c, ctx, dsc_data(x), dsc_data(y), dsc_numel(x), dsc_tensor_dtype(x), op));
}

dsc_status dsc_comm_reduce_scatter(dsc_comm *c, dsc_context *ctx, const DLTensor *x, DLTensor *y, int32_t op) {
  static const char *const FN = "dsc_comm_reduce_scatter";
  DSC_CHECK(c != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "comm: expected a communicator, got NULL");
  DSC_TRY(check_buf(c, ctx, FN, "x", x, reduce_dtypes(c)));
  DSC_TRY(check_buf(c, ctx, FN, "y", y, reduce_dtypes(c)));
  DSC_TRY(dsc_check_same_dtype(FN, "y", y, "x", x));
  DSC_CHECK(x->ndim >= 1 && x->shape[0] == c->size && y->ndim == x->ndim - 1, DSC_ERR_SHAPE, FN,
            "x: expected [size = %d, ...] and y its row shape, got x with %d dims (first %lld), y with %d",
            (int)c->size, (int)x->ndim, (long long)(x->ndim ? x->shape[0] : 0), (int)y->ndim);
  for (int i = 1; i < x->ndim; ++i)
    DSC_CHECK(y->shape[i - 1] == x->shape[i], DSC_ERR_SHAPE, FN, "y: expected the shape of x[0], got dim %d = %lld",
              i - 1, (long long)y->shape[i - 1]);
  DSC_TRY(dsc_check_no_overlap(FN, "y", y, "x", x));
  DSC_CHECK(op == DSC_REDUCE_SUM || op == DSC_REDUCE_MAX, DSC_ERR_INVALID_ARGUMENT, FN,
            "op: expected DSC_REDUCE_SUM (0) or DSC_REDUCE_MAX (1), got %d", (int)op);
  DSC_TRY(enter(c, FN));
  const double t0 = dsc_comm_now();
  return timed(c, t0,
               c->vt->reduce_scatter(c, ctx, dsc_data(x), dsc_data(y), dsc_numel(y), dsc_tensor_dtype(x), op));
}

dsc_status dsc_comm_all_gather(dsc_comm *c, dsc_context *ctx, const DLTensor *x, DLTensor *y) {
  static const char *const FN = "dsc_comm_all_gather";
  DSC_CHECK(c != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "comm: expected a communicator, got NULL");
  DSC_TRY(check_buf(c, ctx, FN, "x", x, ANY_DT));
  DSC_TRY(check_buf(c, ctx, FN, "y", y, ANY_DT));
  DSC_TRY(dsc_check_same_dtype(FN, "y", y, "x", x));
  DSC_CHECK(y->ndim == x->ndim + 1 && y->shape[0] == c->size, DSC_ERR_SHAPE, FN,
            "y: expected [size = %d, <shape of x>], got %d dims", (int)c->size, (int)y->ndim);
  for (int i = 0; i < x->ndim; ++i)
    DSC_CHECK(y->shape[i + 1] == x->shape[i], DSC_ERR_SHAPE, FN, "y: expected [size, <shape of x>], dim %d is %lld",
              i + 1, (long long)y->shape[i + 1]);
  DSC_TRY(dsc_check_no_overlap(FN, "y", y, "x", x));
  DSC_TRY(enter(c, FN));
  const double t0 = dsc_comm_now();
  return timed(c, t0, c->vt->all_gather(c, ctx, dsc_data(x), dsc_data(y), (int64_t)nbytes(x)));
}

dsc_status dsc_comm_broadcast(dsc_comm *c, dsc_context *ctx, DLTensor *x, int32_t root) {
  static const char *const FN = "dsc_comm_broadcast";
  DSC_CHECK(c != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "comm: expected a communicator, got NULL");
  DSC_TRY(check_buf(c, ctx, FN, "x", x, ANY_DT));
  DSC_CHECK(root >= 0 && root < c->size, DSC_ERR_INVALID_ARGUMENT, FN, "root: expected 0..%d, got %d",
            (int)c->size - 1, (int)root);
  DSC_TRY(enter(c, FN));
  const double t0 = dsc_comm_now();
  return timed(c, t0, c->vt->broadcast(c, ctx, dsc_data(x), (int64_t)nbytes(x), root));
}

dsc_status dsc_comm_exchange_counts(dsc_comm *c, dsc_context *ctx, const int64_t *send_counts, int64_t *recv_counts) {
  static const char *const FN = "dsc_comm_exchange_counts";
  DSC_CHECK(c != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "comm: expected a communicator, got NULL");
  DSC_CHECK(ctx != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "ctx: expected a context, got NULL");
  DSC_CHECK(send_counts != NULL && recv_counts != NULL, DSC_ERR_INVALID_ARGUMENT, FN,
            "send_counts, recv_counts: expected host arrays of size %d", (int)c->size);
  for (int32_t q = 0; q < c->size; ++q)
    DSC_CHECK(send_counts[q] >= 0, DSC_ERR_INVALID_ARGUMENT, FN, "send_counts[%d]: expected >= 0, got %lld",
              (int)q, (long long)send_counts[q]);
  DSC_TRY(enter(c, FN));
  const double t0 = dsc_comm_now();
  return timed(c, t0, c->vt->counts(c, ctx, send_counts, recv_counts));
}

dsc_status dsc_comm_all_to_all_v(dsc_comm *c, dsc_context *ctx, const DLTensor *x, const int64_t *send_counts,
                                 DLTensor *y, const int64_t *recv_counts) {
  static const char *const FN = "dsc_comm_all_to_all_v";
  DSC_CHECK(c != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "comm: expected a communicator, got NULL");
  DSC_TRY(check_buf(c, ctx, FN, "x", x, ANY_DT));
  DSC_TRY(check_buf(c, ctx, FN, "y", y, ANY_DT));
  DSC_TRY(dsc_check_same_dtype(FN, "y", y, "x", x));
  DSC_CHECK(send_counts != NULL && recv_counts != NULL, DSC_ERR_INVALID_ARGUMENT, FN,
            "send_counts, recv_counts: expected host arrays of size %d", (int)c->size);
  DSC_CHECK(x->ndim >= 1 && y->ndim == x->ndim, DSC_ERR_SHAPE, FN,
            "y: expected rows of the shape of x's rows, got %d dims for x's %d", (int)y->ndim, (int)x->ndim);
  for (int i = 1; i < x->ndim; ++i)
    DSC_CHECK(y->shape[i] == x->shape[i], DSC_ERR_SHAPE, FN, "y: expected rows of the shape of x's, dim %d: %lld vs %lld",
              i, (long long)y->shape[i], (long long)x->shape[i]);
  int64_t ss = 0, rs = 0;
  for (int32_t q = 0; q < c->size; ++q) {
    DSC_CHECK(send_counts[q] >= 0 && recv_counts[q] >= 0, DSC_ERR_INVALID_ARGUMENT, FN,
              "send_counts[%d], recv_counts[%d]: expected >= 0, got %lld, %lld", (int)q, (int)q,
              (long long)send_counts[q], (long long)recv_counts[q]);
    ss += send_counts[q];
    rs += recv_counts[q];
  }
  DSC_CHECK(ss == x->shape[0], DSC_ERR_SHAPE, FN, "x: expected sum(send_counts) = %lld rows, got %lld", (long long)ss,
            (long long)x->shape[0]);
  DSC_CHECK(rs == y->shape[0], DSC_ERR_SHAPE, FN, "y: expected sum(recv_counts) = %lld rows, got %lld", (long long)rs,
            (long long)y->shape[0]);
  DSC_TRY(dsc_check_no_overlap(FN, "y", y, "x", x));
  const int64_t row = x->shape[0] ? (int64_t)nbytes(x) / x->shape[0] : (int64_t)(y->shape[0] ? nbytes(y) / (size_t)y->shape[0] : 0);
  int64_t *b = (int64_t *)malloc(2 * (size_t)c->size * sizeof(int64_t));
  if (!b) return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  for (int32_t q = 0; q < c->size; ++q) {
    b[q] = send_counts[q] * row;
    b[c->size + q] = recv_counts[q] * row;
  }
  dsc_status st = enter(c, FN);
  if (st == DSC_OK) {
    const double t0 = dsc_comm_now();
    st = timed(c, t0, c->vt->all_to_all_v(c, ctx, dsc_data(x), b, dsc_data(y), b + c->size));
  }
  free(b);
  return st;
}

dsc_status dsc_comm_barrier(dsc_comm *c, dsc_context *ctx) {
  static const char *const FN = "dsc_comm_barrier";
  DSC_CHECK(c != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "comm: expected a communicator, got NULL");
  DSC_CHECK(ctx != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "ctx: expected a context, got NULL");
  DSC_TRY(enter(c, FN));
  const double t0 = dsc_comm_now();
  return timed(c, t0, c->vt->barrier(c, ctx));
}

dsc_status dsc_comm_synchronize(dsc_comm *c, dsc_context *ctx) {
  static const char *const FN = "dsc_comm_synchronize";
  DSC_CHECK(c != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "comm: expected a communicator, got NULL");
  DSC_CHECK(ctx != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "ctx: expected a context, got NULL");
  worker_drain(c);
  DSC_CHECK(!c->broken, DSC_ERR_COMM, FN, "comm: unusable after an earlier failure: %s", c->broken_msg);
  return c->vt->synchronize(c, ctx);
}

dsc_status dsc_comm_split(dsc_comm *c, int32_t color, int32_t key, dsc_comm **out) {
  static const char *const FN = "dsc_comm_split";
  DSC_CHECK(out != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "out: expected a pointer, got NULL");
  *out = NULL;
  DSC_CHECK(color >= 0, DSC_ERR_INVALID_ARGUMENT, FN, "color: expected >= 0, got %d", (int)color);
  DSC_TRY(enter(c, FN));
  DSC_TRY(c->vt->split(c, color, key, out));
  (*out)->timeout_s = c->timeout_s;
  return DSC_OK;
}

/* ------------------------------------------------------------------ raw (dist.h) */

dsc_status dsc_comm_all_reduce_raw(dsc_comm *c, dsc_context *ctx, const void *x, void *y, int64_t n, dsc_dtype dt,
                                   int op) {
  DSC_TRY(enter(c, "dsc_comm_all_reduce"));
  const double t0 = dsc_comm_now();
  return timed(c, t0, c->vt->all_reduce(c, ctx, x, y, n, dt, op));
}

dsc_status dsc_comm_all_gather_raw(dsc_comm *c, dsc_context *ctx, const void *x, void *y, int64_t bytes) {
  DSC_TRY(enter(c, "dsc_comm_all_gather"));
  const double t0 = dsc_comm_now();
  return timed(c, t0, c->vt->all_gather(c, ctx, x, y, bytes));
}

dsc_status dsc_comm_broadcast_raw(dsc_comm *c, dsc_context *ctx, void *x, int64_t bytes, int32_t root) {
  DSC_TRY(enter(c, "dsc_comm_broadcast"));
  const double t0 = dsc_comm_now();
  return timed(c, t0, c->vt->broadcast(c, ctx, x, bytes, root));
}

dsc_status dsc_comm_counts_raw(dsc_comm *c, dsc_context *ctx, const int64_t *send, int64_t *recv) {
  DSC_TRY(enter(c, "dsc_comm_exchange_counts"));
  const double t0 = dsc_comm_now();
  return timed(c, t0, c->vt->counts(c, ctx, send, recv));
}

dsc_status dsc_comm_all_to_all_v_raw(dsc_comm *c, dsc_context *ctx, const void *x, const int64_t *sbytes, void *y,
                                     const int64_t *rbytes) {
  DSC_TRY(enter(c, "dsc_comm_all_to_all_v"));
  const double t0 = dsc_comm_now();
  return timed(c, t0, c->vt->all_to_all_v(c, ctx, x, sbytes, y, rbytes));
}

dsc_status dsc_comm_dup(dsc_comm *c, dsc_comm **out) { return dsc_comm_split(c, 0, c->rank, out); }

/* ------------------------------------------------------------------ accessors */

void dsc_comm_destroy(dsc_comm *c) {
  if (!c) return;
  if (c->worker) {
    dsc_comm_worker *w = c->worker;
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_broadcast(&w->cv_work);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->th, NULL);
    /* requests never waited for: their owners are gone with the model; free them */
    for (dsc_comm_req *r = w->head; r;) {
      dsc_comm_req *n = r->next;
      free(r->sb);
      free(r);
      r = n;
    }
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv_work);
    pthread_cond_destroy(&w->cv_done);
    free(w);
  }
  if (c->vt && c->vt->destroy) c->vt->destroy(c);
  free(c);
}

int32_t dsc_comm_rank(const dsc_comm *c) { return c ? c->rank : -1; }
int32_t dsc_comm_size(const dsc_comm *c) { return c ? c->size : 0; }
int32_t dsc_comm_backend_of(const dsc_comm *c) { return c ? c->backend : -1; }

dsc_status dsc_comm_device(const dsc_comm *c, DLDevice *device) {
  DSC_CHECK(c != NULL && device != NULL, DSC_ERR_INVALID_ARGUMENT, "dsc_comm_device",
            "comm, device: expected pointers");
  *device = c->device;
  return DSC_OK;
}

dsc_status dsc_comm_set_timeout(dsc_comm *c, double seconds) {
  static const char *const FN = "dsc_comm_set_timeout";
  DSC_CHECK(c != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "comm: expected a communicator, got NULL");
  DSC_CHECK(isfinite(seconds) && seconds > 0.0, DSC_ERR_INVALID_ARGUMENT, FN,
            "seconds: expected a finite number > 0, got %g", seconds);
  worker_drain(c);
  c->timeout_s = seconds;
  return DSC_OK;
}

double dsc_comm_get_timeout(const dsc_comm *c) { return c ? c->timeout_s : 0.0; }

dsc_status dsc_comm_get_stats(const dsc_comm *c, dsc_comm_stats *stats) {
  static const char *const FN = "dsc_comm_get_stats";
  DSC_CHECK(c != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "comm: expected a communicator, got NULL");
  DSC_CHECK(stats != NULL && stats->size >= sizeof(dsc_comm_stats), DSC_ERR_INVALID_ARGUMENT, FN,
            "stats: expected a dsc_comm_stats with size = %zu", sizeof(dsc_comm_stats));
  dsc_comm *m = (dsc_comm *)c;
  if (m->worker) pthread_mutex_lock(&m->worker->mu);
  *stats = c->stats;
  stats->size = sizeof *stats;
  if (m->worker) pthread_mutex_unlock(&m->worker->mu);
  return DSC_OK;
}

void dsc_comm_reset_stats(dsc_comm *c) {
  if (!c) return;
  worker_drain(c);
  memset(&c->stats, 0, sizeof c->stats);
  c->stats.size = sizeof c->stats;
}

/* Add this communicator's counters into *acc (dist.h: the model sums its communicators). */
void dsc_comm_add_stats(const dsc_comm *c, dsc_comm_stats *acc) {
  if (!c) return;
  dsc_comm_stats s;
  s.size = sizeof s;
  if (dsc_comm_get_stats(c, &s) != DSC_OK) return;
  acc->ops += s.ops;
  acc->bytes_sent += s.bytes_sent;
  acc->bytes_received += s.bytes_received;
  acc->wait_seconds += s.wait_seconds;
  acc->busy_seconds += s.busy_seconds;
}
