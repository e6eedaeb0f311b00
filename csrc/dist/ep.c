/*
 * dist/ep.c -- the expert-parallel exchange of an MoE layer: the dsc_moe_exchange hooks
 * (ops/moe_layer_ex.h) over an expert-parallel communicator of W ranks, rank q owning
 * experts q*El .. (q+1)*El - 1.
 *
 *   plan      each rank's rows per expert [E] are already grouped by expert, so the rows
 *             for rank q are one contiguous block; counts first: every rank sends each peer
 *             the El counts of that peer's experts (an all-to-all of El int64 per peer), and
 *             learns from[q][e]: the rows of its local expert e that rank q sends.
 *   dispatch  the rows (all-to-all-v), then reordered from source-major (as received) to
 *             expert-major: expert e's rows from rank 0, then rank 1, ... -- for the ranks'
 *             batches concatenated in rank order exactly the order one process routing the
 *             whole batch has (no reorder when El = 1: the two orders coincide). Rows of
 *             several planes (FP8 values and their scales) are packed per peer before and
 *             unpacked after, so that a row costs the sum of its planes' bytes in one message.
 *   combine   the reverse: expert-major -> source-major, all-to-all-v back into the
 *             sender's permuted layout.
 * Each hook pair (start, finish) lets the all-to-all run asynchronously (the
 * communicator's worker on the CPU, the stream with NCCL) while the caller computes.
 * Two plans (micro-batches 0 and 1) live side by side.
 *
 * Legend: W ranks of the group, E experts, El = E / W, R rows sent, Rin rows received.
 */
#include <stdlib.h>
#include <string.h>

#include "comm_internal.h"
#include "dist.h"

typedef struct {
  int64_t *send_rows; /* [W] */
  int64_t *recv_rows; /* [W] */
  int64_t *from;      /* [W, El]: rows of local expert e from rank q */
  int64_t *lc;        /* [El] */
  int64_t *sb, *rb;   /* [W] bytes of the pending all-to-all */
  int64_t R, Rin;
  void *stage;        /* device: source-major rows (received by a dispatch, sent by a combine) */
  size_t stage_cap;
  void *sstage;       /* device: a multi-plane dispatch's rows packed per peer */
  size_t sstage_cap;
  dsc_comm_req *req;
  int32_t n_planes;   /* of the pending dispatch */
  dsc_moe_plane planes[DSC_MOE_MAX_PLANES]; /* where its rows go (unpacked at the finish) */
  int unpack_out;     /* the pending dispatch landed in stage and must be unpacked */
} ep_plan;

struct dsc_ep_exchange {
  dsc_comm *comm; /* borrowed */
  dsc_context *ctx;
  int32_t W, E, El;
  int64_t *cnt_dev; /* [2, W * El] on the comm's device: the counts step's staging */
  ep_plan p[2];
  dsc_moe_exchange hooks;
};

static const char *const FN = "dsc_ep_exchange";

static dsc_status ensure_buf(dsc_ep_exchange *x, void **buf, size_t *cap, size_t bytes) {
  if (*buf && *cap >= bytes) return DSC_OK;
  if (*buf) dsc_free(x->ctx, *buf);
  *buf = NULL;
  *cap = 0;
  DSC_TRY(dsc_malloc(x->ctx, bytes ? bytes : 1, buf));
  *cap = bytes;
  return DSC_OK;
}
static dsc_status ensure_stage(dsc_ep_exchange *x, ep_plan *p, size_t bytes) {
  return ensure_buf(x, &p->stage, &p->stage_cap, bytes);
}

static int needs_reorder(const dsc_ep_exchange *x) { return x->W > 1 && x->El > 1; }

static dsc_status ex_plan(void *user, dsc_context *ctx, int32_t mb, const int64_t *counts, int64_t *rows_in,
                          int64_t *local_counts) {
  dsc_ep_exchange *x = (dsc_ep_exchange *)user;
  ep_plan *p = &x->p[mb];
  const int32_t W = x->W, El = x->El;
  DSC_CHECK(p->req == NULL, DSC_ERR_INVALID_ARGUMENT, FN, "mb %d: a plan while an exchange is in flight", (int)mb);
  p->R = 0;
  for (int32_t q = 0; q < W; ++q) {
    int64_t s = 0;
    for (int32_t e = 0; e < El; ++e) s += counts[(int64_t)q * El + e];
    p->send_rows[q] = s;
    p->R += s;
  }
  /* counts first: El values per peer (the counts of its experts), through the comm's device */
  const size_t nb = (size_t)W * (size_t)El * sizeof(int64_t);
  const DLDevice host = {kDLCPU, 0};
  for (int32_t q = 0; q < W; ++q) p->sb[q] = p->rb[q] = (int64_t)El * 8;
  DSC_TRY(dsc_memcpy(ctx, x->cnt_dev, ctx->device, counts, host, nb));
  DSC_TRY(dsc_comm_all_to_all_v_raw(x->comm, ctx, x->cnt_dev, p->sb, x->cnt_dev + (size_t)W * El, p->rb));
  if (ctx->device.device_type != kDLCPU) DSC_TRY(dsc_comm_synchronize(x->comm, ctx));
  DSC_TRY(dsc_memcpy(ctx, p->from, host, x->cnt_dev + (size_t)W * El, ctx->device, nb));
  p->Rin = 0;
  for (int32_t e = 0; e < El; ++e) p->lc[e] = 0;
  for (int32_t q = 0; q < W; ++q) {
    int64_t s = 0;
    for (int32_t e = 0; e < El; ++e) {
      const int64_t c = p->from[(int64_t)q * El + e];
      DSC_CHECK(c >= 0, DSC_ERR_COMM, FN, "rank %d sent a negative row count (%lld)", (int)q, (long long)c);
      s += c;
      p->lc[e] += c;
    }
    p->recv_rows[q] = s;
    p->Rin += s;
  }
  *rows_in = p->Rin;
  memcpy(local_counts, p->lc, (size_t)El * sizeof(int64_t));
  return DSC_OK;
}

/* Expert-major start of each local expert's rows: eoff [El] (host, caller frees). */
static dsc_status expert_offsets(const dsc_ep_exchange *x, const ep_plan *p, int64_t **eoff) {
  *eoff = (int64_t *)malloc((size_t)x->El * sizeof(int64_t));
  if (!*eoff) return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  int64_t acc = 0;
  for (int32_t e = 0; e < x->El; ++e) {
    (*eoff)[e] = acc;
    acc += p->lc[e];
  }
  return DSC_OK;
}

/* A dispatch's received rows, src: per source rank q (in rank order) its recv_rows[q] rows of
 * plane 0, then of plane 1, ... (each plane's rows grouped by local expert) -> each plane's
 * out, expert-major (expert e's rows from rank 0, then rank 1, ...). */
static dsc_status unpack(dsc_ep_exchange *x, dsc_context *ctx, const ep_plan *p, const char *src) {
  const int32_t W = x->W, El = x->El;
  int64_t *eoff = NULL;
  DSC_TRY(expert_offsets(x, p, &eoff));
  dsc_status st = DSC_OK;
  size_t base = 0; /* rank q's block in src */
  for (int32_t q = 0; q < W && st == DSC_OK; ++q) {
    const int64_t nq = p->recv_rows[q];
    int64_t within = 0; /* rows of q's block before expert e's */
    for (int32_t e = 0; e < El && st == DSC_OK; ++e) {
      const int64_t n = p->from[(int64_t)q * El + e];
      size_t pbase = base; /* plane j's part of q's block */
      for (int32_t j = 0; j < p->n_planes && st == DSC_OK; ++j) {
        const size_t rb = p->planes[j].row_bytes;
        if (n)
          st = dsc_memcpy(ctx, (char *)p->planes[j].out + (size_t)eoff[e] * rb, ctx->device,
                          src + pbase + (size_t)within * rb, ctx->device, (size_t)n * rb);
        pbase += (size_t)nq * rb;
      }
      within += n;
      eoff[e] += n;
    }
    for (int32_t j = 0; j < p->n_planes; ++j) base += (size_t)nq * p->planes[j].row_bytes;
  }
  free(eoff);
  return st;
}

/* A combine's rows, src expert-major -> dst source-major (rank q's rows, within them by
 * expert): the order the dispatch received them in. */
static dsc_status to_source_major(dsc_ep_exchange *x, dsc_context *ctx, const ep_plan *p, const char *src,
                                  char *dst, size_t rb) {
  const int32_t W = x->W, El = x->El;
  int64_t *eoff = NULL;
  DSC_TRY(expert_offsets(x, p, &eoff));
  dsc_status st = DSC_OK;
  int64_t soff = 0;
  for (int32_t q = 0; q < W && st == DSC_OK; ++q) {
    for (int32_t e = 0; e < El && st == DSC_OK; ++e) {
      const int64_t n = p->from[(int64_t)q * El + e];
      if (n)
        st = dsc_memcpy(ctx, dst + (size_t)soff * rb, ctx->device, src + (size_t)eoff[e] * rb, ctx->device,
                        (size_t)n * rb);
      soff += n;
      eoff[e] += n;
    }
  }
  free(eoff);
  return st;
}

/* The rows of several planes packed per destination rank q: q's send_rows[q] rows of plane
 * 0, then of plane 1, ... (so each peer gets one message). */
static dsc_status pack(dsc_ep_exchange *x, dsc_context *ctx, const ep_plan *p, int32_t n,
                       const dsc_moe_plane *planes, char *dst) {
  size_t off = 0;
  int64_t row0 = 0; /* q's first row in the planes */
  for (int32_t q = 0; q < x->W; ++q) {
    const int64_t nq = p->send_rows[q];
    for (int32_t j = 0; j < n; ++j) {
      const size_t rb = planes[j].row_bytes, bytes = (size_t)nq * rb;
      if (bytes)
        DSC_TRY(dsc_memcpy(ctx, dst + off, ctx->device, (const char *)planes[j].rows + (size_t)row0 * rb,
                           ctx->device, bytes));
      off += bytes;
    }
    row0 += nq;
  }
  return DSC_OK;
}

static dsc_status ex_dispatch_start(void *user, dsc_context *ctx, int32_t mb, int32_t n,
                                    const dsc_moe_plane *planes) {
  dsc_ep_exchange *x = (dsc_ep_exchange *)user;
  ep_plan *p = &x->p[mb];
  DSC_CHECK(p->req == NULL, DSC_ERR_INVALID_ARGUMENT, FN, "mb %d: an exchange is already in flight", (int)mb);
  DSC_CHECK(n >= 1 && n <= DSC_MOE_MAX_PLANES && planes != NULL, DSC_ERR_INVALID_ARGUMENT, FN,
            "n: expected 1..%d planes, got %d", (int)DSC_MOE_MAX_PLANES, (int)n);
  size_t row_bytes = 0; /* of all planes: what one row costs on the wire */
  for (int32_t j = 0; j < n; ++j) {
    p->planes[j] = planes[j];
    row_bytes += planes[j].row_bytes;
  }
  p->n_planes = n;
  for (int32_t q = 0; q < x->W; ++q) {
    p->sb[q] = p->send_rows[q] * (int64_t)row_bytes;
    p->rb[q] = p->recv_rows[q] * (int64_t)row_bytes;
  }
  const void *src = planes[0].rows;
  if (n > 1) {
    DSC_TRY(ensure_buf(x, &p->sstage, &p->sstage_cap, (size_t)p->R * row_bytes));
    DSC_TRY(pack(x, ctx, p, n, planes, (char *)p->sstage));
    src = p->sstage;
  }
  /* one plane in an order that needs no change lands where it belongs */
  p->unpack_out = n > 1 || needs_reorder(x);
  void *dst = planes[0].out;
  if (p->unpack_out) {
    DSC_TRY(ensure_stage(x, p, (size_t)p->Rin * row_bytes));
    dst = p->stage;
  }
  return dsc_comm_iall_to_all_v(x->comm, ctx, src, p->sb, dst, p->rb, &p->req);
}

static dsc_status ex_finish(void *user, dsc_context *ctx, int32_t mb) {
  dsc_ep_exchange *x = (dsc_ep_exchange *)user;
  ep_plan *p = &x->p[mb];
  dsc_comm_req *r = p->req;
  p->req = NULL;
  DSC_TRY(dsc_comm_wait(x->comm, r));
  if (p->unpack_out) {
    p->unpack_out = 0;
    DSC_TRY(unpack(x, ctx, p, (const char *)p->stage));
  }
  return DSC_OK;
}

static dsc_status ex_combine_start(void *user, dsc_context *ctx, int32_t mb, const void *rows, size_t row_bytes,
                                   void *out) {
  dsc_ep_exchange *x = (dsc_ep_exchange *)user;
  ep_plan *p = &x->p[mb];
  DSC_CHECK(p->req == NULL, DSC_ERR_INVALID_ARGUMENT, FN, "mb %d: an exchange is already in flight", (int)mb);
  for (int32_t q = 0; q < x->W; ++q) {
    p->sb[q] = p->recv_rows[q] * (int64_t)row_bytes; /* back where they came from */
    p->rb[q] = p->send_rows[q] * (int64_t)row_bytes;
  }
  p->unpack_out = 0;
  const void *src = rows;
  if (needs_reorder(x)) {
    DSC_TRY(ensure_stage(x, p, (size_t)p->Rin * row_bytes));
    DSC_TRY(to_source_major(x, ctx, p, (const char *)rows, (char *)p->stage, row_bytes));
    src = p->stage;
  }
  return dsc_comm_iall_to_all_v(x->comm, ctx, src, p->sb, out, p->rb, &p->req);
}

dsc_status dsc_ep_exchange_create(dsc_comm *comm, dsc_context *ctx, int32_t n_experts, dsc_ep_exchange **out) {
  *out = NULL;
  const int32_t W = comm->size;
  DSC_CHECK(n_experts >= 1 && n_experts % W == 0, DSC_ERR_INVALID_ARGUMENT, FN,
            "n_experts: expected a multiple of the %d expert-parallel ranks, got %d", (int)W, (int)n_experts);
  dsc_ep_exchange *x = (dsc_ep_exchange *)calloc(1, sizeof *x);
  if (!x) return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  x->comm = comm;
  x->ctx = ctx;
  x->W = W;
  x->E = n_experts;
  x->El = n_experts / W;
  dsc_status st = DSC_OK;
  for (int i = 0; i < 2 && st == DSC_OK; ++i) {
    ep_plan *p = &x->p[i];
    p->send_rows = (int64_t *)calloc((size_t)W, sizeof(int64_t));
    p->recv_rows = (int64_t *)calloc((size_t)W, sizeof(int64_t));
    p->from = (int64_t *)calloc((size_t)W * (size_t)x->El, sizeof(int64_t));
    p->lc = (int64_t *)calloc((size_t)x->El, sizeof(int64_t));
    p->sb = (int64_t *)calloc((size_t)W, sizeof(int64_t));
    p->rb = (int64_t *)calloc((size_t)W, sizeof(int64_t));
    if (!p->send_rows || !p->recv_rows || !p->from || !p->lc || !p->sb || !p->rb)
      st = dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  }
  if (st == DSC_OK) st = dsc_malloc(ctx, 2 * (size_t)W * (size_t)x->El * sizeof(int64_t), (void **)&x->cnt_dev);
  if (st != DSC_OK) {
    dsc_ep_exchange_destroy(x);
    return st;
  }
  x->hooks.user = x;
  x->hooks.n_local = x->El;
  x->hooks.plan = ex_plan;
  x->hooks.dispatch_start = ex_dispatch_start;
  x->hooks.dispatch_finish = ex_finish;
  x->hooks.combine_start = ex_combine_start;
  x->hooks.combine_finish = ex_finish;
  *out = x;
  return DSC_OK;
}

void dsc_ep_exchange_destroy(dsc_ep_exchange *x) {
  if (!x) return;
  for (int i = 0; i < 2; ++i) {
    ep_plan *p = &x->p[i];
    if (p->req) (void)dsc_comm_wait(x->comm, p->req); /* never leave the worker writing into freed memory */
    if (p->stage) dsc_free(x->ctx, p->stage);
    if (p->sstage) dsc_free(x->ctx, p->sstage);
    free(p->send_rows), free(p->recv_rows), free(p->from), free(p->lc), free(p->sb), free(p->rb);
  }
  if (x->cnt_dev) dsc_free(x->ctx, x->cnt_dev);
  free(x);
}

const dsc_moe_exchange *dsc_ep_exchange_hooks(dsc_ep_exchange *x) { return &x->hooks; }
