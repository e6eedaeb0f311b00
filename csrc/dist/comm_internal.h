/*
 * dist/comm_internal.h -- the dsc_comm object shared by comm.c (the public entry points,
 * validation, the asynchronous worker, the world of one) and its backends (comm_mpi.c,
 * comm_nccl.c). Backends move bytes and reduce; they never validate user input.
 *
 * Legend: W ranks (size), r this rank, n elements, es element bytes.
 */
#ifndef DSC_COMM_INTERNAL_H_
#define DSC_COMM_INTERNAL_H_

#include "../core/internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Collective kinds: carried in every MPI message tag, named in messages. */
enum {
  DSC_COLL_ALL_REDUCE = 0,
  DSC_COLL_REDUCE_SCATTER = 1,
  DSC_COLL_ALL_GATHER = 2,
  DSC_COLL_BROADCAST = 3,
  DSC_COLL_ALL_TO_ALL = 4, /* all-to-all-v of rows */
  DSC_COLL_COUNTS = 5,     /* the counts step of an all-to-all-v */
  DSC_COLL_BARRIER = 6,
  DSC_COLL_SPLIT = 7,
};
const char *dsc_coll_name(int kind);

/* A backend: raw buffers on the communicator's device, sizes already checked. Reductions
 * over float32 / float64 / int32 / int64 (NCCL: + bfloat16) with dsc_reduce_op. */
typedef struct dsc_comm_vt {
  const char *name; /* "self", "mpi", "nccl" */
  /* y[n] = reduce over ranks of x[n]; y may equal x */
  dsc_status (*all_reduce)(dsc_comm *c, dsc_context *ctx, const void *x, void *y, int64_t n, dsc_dtype dt,
                           int op);
  /* y[n] = reduce over ranks of x[r*n .. (r+1)*n) */
  dsc_status (*reduce_scatter)(dsc_comm *c, dsc_context *ctx, const void *x, void *y, int64_t n, dsc_dtype dt,
                               int op);
  /* y[q*bytes ..] = x of rank q */
  dsc_status (*all_gather)(dsc_comm *c, dsc_context *ctx, const void *x, void *y, int64_t bytes);
  dsc_status (*broadcast)(dsc_comm *c, dsc_context *ctx, void *x, int64_t bytes, int32_t root);
  /* host int64 [W]: recv[q] = send[r] of rank q */
  dsc_status (*counts)(dsc_comm *c, dsc_context *ctx, const int64_t *send, int64_t *recv);
  /* x: sbytes[q] bytes for each rank q in order; y: rbytes[q] from each q in order */
  dsc_status (*all_to_all_v)(dsc_comm *c, dsc_context *ctx, const void *x, const int64_t *sbytes, void *y,
                             const int64_t *rbytes);
  dsc_status (*barrier)(dsc_comm *c, dsc_context *ctx);
  dsc_status (*split)(dsc_comm *c, int32_t color, int32_t key, dsc_comm **out);
  /* host-side completion of everything issued (NCCL: the stream, with the deadline) */
  dsc_status (*synchronize)(dsc_comm *c, dsc_context *ctx);
  void (*destroy)(dsc_comm *c);
} dsc_comm_vt;

typedef struct dsc_comm_worker dsc_comm_worker; /* comm.c */

struct dsc_comm {
  const dsc_comm_vt *vt;
  void *impl;          /* the backend's state */
  int32_t rank, size;
  int32_t backend;     /* dsc_comm_backend */
  DLDevice device;
  double timeout_s;
  int32_t async_ok;    /* the backend may run on the worker thread (MPI_THREAD_MULTIPLE) */
  uint64_t seq;        /* collectives issued: the sequence number in tags and messages */
  int32_t broken;      /* a failed collective left the group in an unknown state */
  char broken_msg[768];
  dsc_comm_stats stats;
  dsc_comm_worker *worker; /* started by the first asynchronous operation */
};

/* A new communicator object around a backend (timeout from DSC_COMM_TIMEOUT or 300 s). */
dsc_status dsc_comm_new(const dsc_comm_vt *vt, void *impl, int32_t rank, int32_t size, int32_t backend,
                        DLDevice device, dsc_comm **out);
/* Record a failure that leaves the group unusable: DSC_ERR_COMM with the message, remembered. */
dsc_status dsc_comm_fail(dsc_comm *c, const char *fn, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
double dsc_comm_now(void);
/* y = x_0 op x_1 op ... in rank order: parts[q] points at rank q's n values (CPU). */
void dsc_comm_fold(dsc_dtype dt, int op, int32_t W, const void *const *parts, int64_t n, void *y);

/* Backends (DSC_ERR_UNSUPPORTED where not compiled in). */
dsc_status dsc_comm_mpi_create(const void *mpi_comm, dsc_comm **out);

#ifdef __cplusplus
}
#endif
#endif /* DSC_COMM_INTERNAL_H_ */
