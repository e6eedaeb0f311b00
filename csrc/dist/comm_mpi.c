/*
 * dist/comm_mpi.c -- the MPI backend of dsc_comm (OpenMPI, MPICH: any MPI-3), compiled
 * where the build finds mpi.h (DSC_WITH_MPI).
 *
 * Every collective is built from nonblocking point-to-point messages (MPI_Isend/Irecv of
 * bytes) that this file waits for itself, polling with a deadline. That gives what MPI's
 * own collectives do not:
 *  - bounded waits: a peer that died or hangs is DSC_ERR_COMM after comm->timeout_s naming
 *    the ranks still missing, never a hang (mpirun also kills a job whose rank died; a rank
 *    that hangs it does not notice);
 *  - mismatch detection: the tag carries the collective's kind and sequence number, so a
 *    rank in another collective never matches; a message of the wrong size is an error;
 *  - reductions in a fixed order (((x_0 + x_1) + x_2) + ...), computed here: bitwise the
 *    same on every rank and with every MPI.
 * All-reduce: small messages are all-gathered and folded; large ones reduce-scattered
 * (rank q folds chunk q of every rank's data, in rank order) and then all-gathered: each
 * rank sends and receives 2 (W-1)/W of the data, as a ring all-reduce does.
 * Messages larger than 1 GiB are split. The communicator is a duplicate of the user's with
 * MPI_ERRORS_RETURN, so an MPI error is a status here, not an abort.
 *
 * Legend: W ranks, r this rank, n elements, es element bytes.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm_internal.h"

#ifdef DSC_WITH_MPI
#include <mpi.h>

typedef struct {
  MPI_Comm comm;
  int thread_level;
} mpi_impl;

#define MSG_MAX ((int64_t)1 << 30) /* bytes per message */
#define SMALL_BYTES ((int64_t)1 << 16)

/* One transfer of a collective: bytes to (send) or from (recv) a peer. */
typedef struct {
  int32_t peer;
  int send;
  char *buf;
  int64_t bytes;
} xfer;

static int tag_of(int kind, int phase, uint64_t seq) { return kind * 4096 + phase * 2048 + (int)(seq & 2047); }

static const char *mpi_errstr(int code, char *buf) {
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) snprintf(buf, MPI_MAX_ERROR_STRING, "MPI error %d", code);
  return buf;
}

static void backoff(int *spins) {
  if (*spins < 64) {
    ++*spins;
    return;
  }
  /* poll less often while waiting long: sleeping ranks leave the cores to the ones computing */
  const long ns = *spins < 200 ? 20000L : *spins < 1000 ? 100000L : 500000L;
  ++*spins;
  struct timespec ts = {0, ns};
  nanosleep(&ts, NULL);
}

/* Post every transfer (receives first), then wait for all with the deadline. */
static dsc_status run_xfers(dsc_comm *c, int kind, int phase, int32_t n, const xfer *x) {
  mpi_impl *m = (mpi_impl *)c->impl;
  const char *fn = "dsc_comm";
  const int tag = tag_of(kind, phase, c->seq);
  int64_t nreq = 0;
  for (int32_t i = 0; i < n; ++i)
    if (x[i].bytes > 0) nreq += (x[i].bytes + MSG_MAX - 1) / MSG_MAX;
  if (nreq == 0) return DSC_OK;
  MPI_Request *req = (MPI_Request *)malloc((size_t)nreq * sizeof *req);
  int32_t *of = (int32_t *)malloc((size_t)nreq * sizeof *of);     /* transfer of each request */
  int64_t *expect = (int64_t *)malloc((size_t)nreq * sizeof *expect);
  if (!req || !of || !expect) {
    free(req), free(of), free(expect);
    return dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
  }
  int64_t k = 0;
  int rc = MPI_SUCCESS;
  for (int pass = 0; pass < 2 && rc == MPI_SUCCESS; ++pass) {
    for (int32_t i = 0; i < n && rc == MPI_SUCCESS; ++i) {
      if (x[i].bytes <= 0 || x[i].send != pass) continue;
      for (int64_t off = 0; off < x[i].bytes && rc == MPI_SUCCESS; off += MSG_MAX, ++k) {
        const int64_t b = x[i].bytes - off < MSG_MAX ? x[i].bytes - off : MSG_MAX;
        of[k] = i;
        expect[k] = b;
        rc = x[i].send ? MPI_Isend(x[i].buf + off, (int)b, MPI_BYTE, x[i].peer, tag, m->comm, &req[k])
                       : MPI_Irecv(x[i].buf + off, (int)b, MPI_BYTE, x[i].peer, tag, m->comm, &req[k]);
        if (rc != MPI_SUCCESS) req[k] = MPI_REQUEST_NULL;
      }
    }
  }
  dsc_status st = DSC_OK;
  char eb[MPI_MAX_ERROR_STRING];
  if (rc != MPI_SUCCESS) {
    for (int64_t j = k; j < nreq; ++j) req[j] = MPI_REQUEST_NULL;
    st = dsc_comm_fail(c, fn, "%s #%llu on rank %d: posting a message failed: %s", dsc_coll_name(kind),
                       (unsigned long long)c->seq, (int)c->rank, mpi_errstr(rc, eb));
  }
  const double t0 = dsc_comm_now(), deadline = t0 + c->timeout_s;
  int64_t left = st == DSC_OK ? nreq : 0;
  int spins = 0;
  while (left > 0 && st == DSC_OK) {
    int progress = 0;
    for (int64_t j = 0; j < nreq && st == DSC_OK; ++j) {
      if (req[j] == MPI_REQUEST_NULL) continue;
      int flag = 0;
      MPI_Status s;
      rc = MPI_Test(&req[j], &flag, &s);
      if (rc != MPI_SUCCESS) {
        st = dsc_comm_fail(c, fn, "%s #%llu on rank %d: a message %s rank %d failed: %s", dsc_coll_name(kind),
                           (unsigned long long)c->seq, (int)c->rank, x[of[j]].send ? "to" : "from",
                           (int)x[of[j]].peer, mpi_errstr(rc, eb));
        break;
      }
      if (!flag) continue;
      progress = 1;
      --left;
      if (!x[of[j]].send) {
        int got = 0;
        MPI_Get_count(&s, MPI_BYTE, &got);
        if ((int64_t)got != expect[j])
          st = dsc_comm_fail(c, fn,
                             "%s #%llu on rank %d: rank %d sent %d bytes where %lld were expected: the ranks "
                             "called this collective with different sizes",
                             dsc_coll_name(kind), (unsigned long long)c->seq, (int)c->rank, (int)x[of[j]].peer, got,
                             (long long)expect[j]);
      }
    }
    if (st != DSC_OK || left == 0) break;
    if (progress) {
      spins = 0;
      continue;
    }
    if (dsc_comm_now() > deadline) {
      char who[256];
      size_t used = 0;
      int listed = 0;
      who[0] = '\0';
      for (int32_t i = 0; i < n; ++i) {
        int pending = 0;
        for (int64_t j = 0; j < nreq; ++j) pending |= of[j] == i && req[j] != MPI_REQUEST_NULL;
        if (!pending) continue;
        int dup = 0;
        for (int32_t i2 = 0; i2 < i; ++i2) {
          int p2 = 0;
          for (int64_t j = 0; j < nreq; ++j) p2 |= of[j] == i2 && req[j] != MPI_REQUEST_NULL;
          dup |= p2 && x[i2].peer == x[i].peer;
        }
        if (dup || listed >= 16 || used >= sizeof who - 16) continue;
        int w = snprintf(who + used, sizeof who - used, "%s%d", listed ? ", " : "", (int)x[i].peer);
        if (w > 0) used += (size_t)w;
        ++listed;
      }
      st = dsc_comm_fail(c, fn,
                         "%s #%llu on rank %d of %d: no answer from rank%s %s within the %g s timeout: a peer "
                         "died, hangs, or called a different collective (dsc_comm_set_timeout / DSC_COMM_TIMEOUT "
                         "set the limit)",
                         dsc_coll_name(kind), (unsigned long long)c->seq, (int)c->rank, (int)c->size,
                         listed > 1 ? "s" : "", who, c->timeout_s);
      break;
    }
    backoff(&spins);
  }
  if (st != DSC_OK) {
    /* receives still posted would write into buffers the caller frees: cancel them */
    for (int64_t j = 0; j < nreq; ++j) {
      if (req[j] == MPI_REQUEST_NULL) continue;
      if (!x[of[j]].send) {
        MPI_Cancel(&req[j]);
        MPI_Wait(&req[j], MPI_STATUS_IGNORE);
      } else {
        MPI_Request_free(&req[j]);
      }
    }
  } else {
    for (int32_t i = 0; i < n; ++i) {
      if (x[i].send) c->stats.bytes_sent += x[i].bytes;
      else c->stats.bytes_received += x[i].bytes;
    }
  }
  free(req), free(of), free(expect);
  return st;
}

static dsc_status oom(void) { return dsc_error(DSC_ERR_OUT_OF_MEMORY, "dsc_comm", "out of host memory"); }

/* Every rank's `bytes` of x into y[q * bytes] (y may not overlap x). */
static dsc_status gather_all(dsc_comm *c, int kind, int phase, const void *x, void *y, int64_t bytes) {
  const int32_t W = c->size, r = c->rank;
  xfer *t = (xfer *)malloc(2 * (size_t)W * sizeof *t);
  if (!t) return oom();
  int32_t n = 0;
  for (int32_t q = 0; q < W; ++q) {
    if (q == r) continue;
    t[n++] = (xfer){q, 1, (char *)x, bytes};
    t[n++] = (xfer){q, 0, (char *)y + (size_t)q * (size_t)bytes, bytes};
  }
  if (bytes > 0 && (char *)y + (size_t)r * (size_t)bytes != (const char *)x)
    memcpy((char *)y + (size_t)r * (size_t)bytes, x, (size_t)bytes);
  const dsc_status st = run_xfers(c, kind, phase, n, t);
  free(t);
  return st;
}

/* Chunk q of n elements: [lo(q), lo(q+1)). */
static int64_t lo_of(int64_t n, int32_t W, int32_t q) { return (int64_t)((__int128)n * q / W); }

/* Phase 1 of a large all-reduce / a reduce-scatter: chunk r of the fold of every rank's x
 * into out (n_r elements). chunk(q) gives rank q's chunk [off, len) of x. */
static dsc_status scatter_fold(dsc_comm *c, int kind, const char *x, int64_t (*chunk)(int64_t, int32_t, int32_t, int64_t *),
                               int64_t n, dsc_dtype dt, int op, void *out) {
  const int32_t W = c->size, r = c->rank;
  const size_t es = dsc_dtype_size(dt);
  int64_t my_off = 0;
  const int64_t my_len = chunk(n, W, r, &my_off);
  char *tmp = (char *)malloc((size_t)W * (size_t)(my_len ? my_len : 1) * es);
  xfer *t = (xfer *)malloc(2 * (size_t)W * sizeof *t);
  const void **parts = (const void **)malloc((size_t)W * sizeof *parts);
  if (!tmp || !t || !parts) {
    free(tmp), free(t), free(parts);
    return oom();
  }
  int32_t m = 0;
  for (int32_t q = 0; q < W; ++q) {
    parts[q] = tmp + (size_t)q * (size_t)my_len * es;
    if (q == r) {
      memcpy(tmp + (size_t)q * (size_t)my_len * es, x + (size_t)my_off * es, (size_t)my_len * es);
      continue;
    }
    int64_t qo = 0;
    const int64_t ql = chunk(n, W, q, &qo);
    t[m++] = (xfer){q, 1, (char *)x + (size_t)qo * es, ql * (int64_t)es};
    t[m++] = (xfer){q, 0, tmp + (size_t)q * (size_t)my_len * es, my_len * (int64_t)es};
  }
  dsc_status st = run_xfers(c, kind, 0, m, t);
  if (st == DSC_OK) dsc_comm_fold(dt, op, W, parts, my_len, out);
  free(tmp), free(t), free(parts);
  return st;
}

static int64_t chunk_even(int64_t n, int32_t W, int32_t q, int64_t *off) {
  *off = lo_of(n, W, q);
  return lo_of(n, W, q + 1) - *off;
}
static int64_t chunk_block(int64_t n, int32_t W, int32_t q, int64_t *off) {
  (void)W;
  *off = n * q;
  return n;
}

static dsc_status mpi_all_reduce(dsc_comm *c, dsc_context *ctx, const void *x, void *y, int64_t n, dsc_dtype dt,
                                 int op) {
  (void)ctx;
  const int32_t W = c->size, r = c->rank;
  const size_t es = dsc_dtype_size(dt);
  if (W == 1 || n == 0) {
    if (x != y && n) memmove(y, x, (size_t)n * es);
    return DSC_OK;
  }
  if ((int64_t)((size_t)n * es) * W <= SMALL_BYTES || n < W) {
    char *all = (char *)malloc((size_t)W * (size_t)n * es);
    const void **parts = (const void **)malloc((size_t)W * sizeof *parts);
    if (!all || !parts) {
      free(all), free(parts);
      return oom();
    }
    dsc_status st = gather_all(c, DSC_COLL_ALL_REDUCE, 0, x, all, n * (int64_t)es);
    for (int32_t q = 0; q < W; ++q) parts[q] = all + (size_t)q * (size_t)n * es;
    if (st == DSC_OK) {
      dsc_comm_fold(dt, op, W, parts, n, all); /* into rank 0's slot, then out */
      memcpy(y, all, (size_t)n * es);
    }
    free(all), free(parts);
    return st;
  }
  /* reduce-scatter: chunk r folded here (x is only read) ... */
  int64_t off = 0;
  const int64_t len = chunk_even(n, W, r, &off);
  char *mine = (char *)malloc((size_t)(len ? len : 1) * es);
  if (!mine) return oom();
  dsc_status st = scatter_fold(c, DSC_COLL_ALL_REDUCE, (const char *)x, chunk_even, n, dt, op, mine);
  /* ... then all-gather the chunks into y (x may be y: every rank has read x by now) */
  xfer *t = (xfer *)malloc(2 * (size_t)W * sizeof *t);
  if (st == DSC_OK && !t) st = oom();
  if (st == DSC_OK) {
    memcpy((char *)y + (size_t)off * es, mine, (size_t)len * es);
    int32_t m = 0;
    for (int32_t q = 0; q < W; ++q) {
      if (q == r) continue;
      int64_t qo = 0;
      const int64_t ql = chunk_even(n, W, q, &qo);
      t[m++] = (xfer){q, 1, mine, len * (int64_t)es};
      t[m++] = (xfer){q, 0, (char *)y + (size_t)qo * es, ql * (int64_t)es};
    }
    st = run_xfers(c, DSC_COLL_ALL_REDUCE, 1, m, t);
  }
  free(t), free(mine);
  return st;
}

static dsc_status mpi_reduce_scatter(dsc_comm *c, dsc_context *ctx, const void *x, void *y, int64_t n, dsc_dtype dt,
                                     int op) {
  (void)ctx;
  return scatter_fold(c, DSC_COLL_REDUCE_SCATTER, (const char *)x, chunk_block, n, dt, op, y);
}

static dsc_status mpi_all_gather(dsc_comm *c, dsc_context *ctx, const void *x, void *y, int64_t bytes) {
  (void)ctx;
  return gather_all(c, DSC_COLL_ALL_GATHER, 0, x, y, bytes);
}

static dsc_status mpi_broadcast(dsc_comm *c, dsc_context *ctx, void *x, int64_t bytes, int32_t root) {
  (void)ctx;
  const int32_t W = c->size;
  xfer *t = (xfer *)malloc((size_t)W * sizeof *t);
  if (!t) return oom();
  int32_t m = 0;
  if (c->rank == root) {
    for (int32_t q = 0; q < W; ++q)
      if (q != root) t[m++] = (xfer){q, 1, (char *)x, bytes};
  } else {
    t[m++] = (xfer){root, 0, (char *)x, bytes};
  }
  const dsc_status st = run_xfers(c, DSC_COLL_BROADCAST, 0, m, t);
  free(t);
  return st;
}

static dsc_status mpi_counts(dsc_comm *c, dsc_context *ctx, const int64_t *send, int64_t *recv) {
  (void)ctx;
  const int32_t W = c->size;
  xfer *t = (xfer *)malloc(2 * (size_t)W * sizeof *t);
  if (!t) return oom();
  int32_t m = 0;
  for (int32_t q = 0; q < W; ++q) {
    if (q == c->rank) {
      recv[q] = send[q];
      continue;
    }
    t[m++] = (xfer){q, 1, (char *)(send + q), 8};
    t[m++] = (xfer){q, 0, (char *)(recv + q), 8};
  }
  const dsc_status st = run_xfers(c, DSC_COLL_COUNTS, 0, m, t);
  free(t);
  return st;
}

static dsc_status mpi_all_to_all_v(dsc_comm *c, dsc_context *ctx, const void *x, const int64_t *sbytes, void *y,
                                   const int64_t *rbytes) {
  (void)ctx;
  const int32_t W = c->size;
  xfer *t = (xfer *)malloc(2 * (size_t)W * sizeof *t);
  if (!t) return oom();
  int32_t m = 0;
  int64_t so = 0, ro = 0;
  for (int32_t q = 0; q < W; ++q) {
    if (q == c->rank) {
      if (sbytes[q]) memcpy((char *)y + ro, (const char *)x + so, (size_t)sbytes[q]);
    } else {
      t[m++] = (xfer){q, 1, (char *)x + so, sbytes[q]};
      t[m++] = (xfer){q, 0, (char *)y + ro, rbytes[q]};
    }
    so += sbytes[q];
    ro += rbytes[q];
  }
  const dsc_status st = run_xfers(c, DSC_COLL_ALL_TO_ALL, 0, m, t);
  free(t);
  return st;
}

static dsc_status mpi_barrier(dsc_comm *c, dsc_context *ctx) {
  (void)ctx;
  const int32_t W = c->size;
  char *b = (char *)calloc((size_t)W + 1, 1);
  xfer *t = (xfer *)malloc(2 * (size_t)W * sizeof *t);
  if (!b || !t) {
    free(b), free(t);
    return oom();
  }
  int32_t m = 0;
  for (int32_t q = 0; q < W; ++q) {
    if (q == c->rank) continue;
    t[m++] = (xfer){q, 1, b + W, 1};
    t[m++] = (xfer){q, 0, b + q, 1};
  }
  const dsc_status st = run_xfers(c, DSC_COLL_BARRIER, 0, m, t);
  free(b), free(t);
  return st;
}

static dsc_status mpi_sync(dsc_comm *c, dsc_context *ctx) {
  (void)c, (void)ctx;
  return DSC_OK; /* every operation completes before it returns */
}

static void mpi_destroy(dsc_comm *c) {
  mpi_impl *m = (mpi_impl *)c->impl;
  if (!m) return;
  int fin = 0;
  MPI_Finalized(&fin);
  /* a broken communicator may still have messages in flight: leave it to MPI_Finalize */
  if (!fin && !c->broken && m->comm != MPI_COMM_NULL) MPI_Comm_free(&m->comm);
  free(m);
  c->impl = NULL;
}

static dsc_status mpi_split(dsc_comm *c, int32_t color, int32_t key, dsc_comm **out);

static const dsc_comm_vt MPI_VT = {"mpi", mpi_all_reduce, mpi_reduce_scatter, mpi_all_gather, mpi_broadcast,
                                   mpi_counts, mpi_all_to_all_v, mpi_barrier, mpi_split, mpi_sync, mpi_destroy};

/* Wrap an MPI communicator this file owns (errors returned, not fatal). */
static dsc_status wrap(const char *fn, MPI_Comm own, dsc_comm **out) {
  char eb[MPI_MAX_ERROR_STRING];
  int rc = MPI_Comm_set_errhandler(own, MPI_ERRORS_RETURN);
  int rank = 0, size = 0, level = MPI_THREAD_SINGLE;
  if (rc == MPI_SUCCESS) rc = MPI_Comm_rank(own, &rank);
  if (rc == MPI_SUCCESS) rc = MPI_Comm_size(own, &size);
  if (rc == MPI_SUCCESS) rc = MPI_Query_thread(&level);
  if (rc != MPI_SUCCESS) {
    MPI_Comm_free(&own);
    return dsc_error(DSC_ERR_COMM, fn, "MPI failed: %s", mpi_errstr(rc, eb));
  }
  mpi_impl *m = (mpi_impl *)calloc(1, sizeof *m);
  if (!m) {
    MPI_Comm_free(&own);
    return oom();
  }
  m->comm = own;
  m->thread_level = level;
  dsc_status st = dsc_comm_new(&MPI_VT, m, rank, size, DSC_COMM_BACKEND_MPI, (DLDevice){kDLCPU, 0}, out);
  if (st != DSC_OK) {
    MPI_Comm_free(&own);
    free(m);
    return st;
  }
  (*out)->async_ok = level == MPI_THREAD_MULTIPLE;
  return DSC_OK;
}

static dsc_status mpi_split(dsc_comm *c, int32_t color, int32_t key, dsc_comm **out) {
  mpi_impl *m = (mpi_impl *)c->impl;
  /* every rank alive and here first (bounded), then MPI's split (which has no deadline) */
  DSC_TRY(mpi_barrier(c, NULL));
  MPI_Comm nc = MPI_COMM_NULL;
  char eb[MPI_MAX_ERROR_STRING];
  const int rc = MPI_Comm_split(m->comm, color, key, &nc);
  if (rc != MPI_SUCCESS) return dsc_comm_fail(c, "dsc_comm_split", "MPI_Comm_split failed: %s", mpi_errstr(rc, eb));
  return wrap("dsc_comm_split", nc, out);
}

dsc_status dsc_comm_mpi_create(const void *mpi_comm, dsc_comm **out) {
  static const char *const FN = "dsc_comm_create_mpi";
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  DSC_CHECK(init && !fin, DSC_ERR_INVALID_ARGUMENT, FN,
            "MPI is %s: initialize it first (MPI_Init_thread; mpi4py does on import)",
            fin ? "already finalized" : "not initialized");
  const MPI_Comm user = *(const MPI_Comm *)mpi_comm;
  DSC_CHECK(user != MPI_COMM_NULL, DSC_ERR_INVALID_ARGUMENT, FN, "mpi_comm: expected a communicator, got MPI_COMM_NULL");
  MPI_Comm own = MPI_COMM_NULL;
  char eb[MPI_MAX_ERROR_STRING];
  /* the caller's error handler decides what a failure here does; ours returns errors after */
  const int rc = MPI_Comm_dup(user, &own);
  if (rc != MPI_SUCCESS) return dsc_error(DSC_ERR_COMM, FN, "MPI_Comm_dup failed: %s", mpi_errstr(rc, eb));
  return wrap(FN, own, out);
}

#else /* !DSC_WITH_MPI */

dsc_status dsc_comm_mpi_create(const void *mpi_comm, dsc_comm **out) {
  (void)mpi_comm, (void)out;
  return dsc_error(DSC_ERR_UNSUPPORTED, "dsc_comm_create_mpi",
                   "this build of deepseek_c has no MPI backend (mpi.h was not found at build time: install "
                   "an MPI, e.g. apt-get install libopenmpi-dev, and rebuild)");
}

#endif
