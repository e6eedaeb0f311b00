/*
 * ops/mla_cache.c -- the paged latent cache of MLA inference (see deepseek_c.h): the block
 * allocator (per-sequence block tables, a free list), the device mirror of the block
 * tables, reading rows back, and the FP8 projection scratch of the MLA layer.
 * Rows are [ckv (R) | kpe (dr)] in float32 or bfloat16, or the FP8 row: R e4m3, then
 * ceil(R/128) float32 scales at byte round4(R), then dr bf16 (656 bytes for R 512, dr 64).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mla_internal.h"

static const DLDevice HOST = {kDLCPU, 0};

static int64_t cache_row_bytes(dsc_dtype dt, int64_t R, int64_t dr) {
  if (dt == DSC_DTYPE_FLOAT32) return 4 * (R + dr);
  if (dt == DSC_DTYPE_BFLOAT16) return 2 * (R + dr);
  const int64_t b = ((R + 3) & ~(int64_t)3) + 4 * ((R + 127) / 128) + 2 * dr;
  return (b + 3) & ~(int64_t)3;
}

void dsc_mla_cache_destroy(dsc_mla_cache *c) {
  if (!c) return;
  dsc_free(c->ctx, c->pool);
  free(c->ids);
  free(c->len);
  free(c->nblk);
  if (c->dtables && c->dtables != c->tables) dsc_free(c->ctx, c->dtables);
  free(c->tables);
  free(c->free_list);
  free(c);
}

dsc_status dsc_mla_cache_create(dsc_context *ctx, const dsc_mla_cache_options *opt,
                                dsc_mla_cache **out) {
  static const char *const FN = "dsc_mla_cache_create";
  DSC_CHECK(out != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "out: expected a pointer, got NULL");
  *out = NULL;
  DSC_TRY(mla_check_ctx(FN, ctx));
  DSC_CHECK(opt != NULL && opt->size >= sizeof(dsc_mla_cache_options), DSC_ERR_INVALID_ARGUMENT,
            FN, "opt: expected options with size = %zu", sizeof(dsc_mla_cache_options));
#define POS(f)                                                                                  \
  DSC_CHECK(opt->f >= 1 && opt->f <= (1 << 24), DSC_ERR_INVALID_ARGUMENT, FN,                  \
            "opt->" #f ": expected a value in [1, 2^24], got %d", (int)opt->f)
  POS(n_layers);
  POS(max_batch);
  POS(max_tokens);
  POS(block_size);
  POS(kv_lora_rank);
  POS(rope_dim);
#undef POS
  DSC_CHECK(opt->n_blocks >= 0, DSC_ERR_INVALID_ARGUMENT, FN,
            "opt->n_blocks: expected >= 0 (0: enough for every sequence), got %d", (int)opt->n_blocks);
  const dsc_dtype dt = (dsc_dtype)opt->dtype;
  DSC_CHECK(dt == DSC_DTYPE_FLOAT32 || dt == DSC_DTYPE_BFLOAT16 || dt == DSC_DTYPE_FLOAT8_E4M3FN,
            DSC_ERR_DTYPE, FN, "opt->dtype: expected float32, bfloat16 or float8_e4m3fn, got %s",
            dsc_dtype_name(dt));
  const int64_t max_blk = (opt->max_tokens + opt->block_size - 1) / opt->block_size;
  const int64_t n_blocks = opt->n_blocks ? opt->n_blocks : max_blk * opt->max_batch;
  DSC_CHECK(n_blocks <= INT32_MAX, DSC_ERR_INVALID_ARGUMENT, FN,
            "opt: expected at most 2^31 blocks, got %lld", (long long)n_blocks);
  const int64_t rb = cache_row_bytes(dt, opt->kv_lora_rank, opt->rope_dim);
  int ok = 1;
  const int64_t total = dsc_cmul(dsc_cmul3(opt->n_layers, n_blocks, opt->block_size, &ok), rb, &ok);
  const int64_t table = dsc_cmul3(opt->max_batch, max_blk, (int64_t)sizeof(int32_t), &ok);
  DSC_CHECK(ok && total < (int64_t)1e15 && table < (int64_t)1e15, DSC_ERR_OUT_OF_MEMORY, FN,
            "opt: a pool of %.3g bytes (block tables %.3g bytes) is too large",
            (double)opt->n_layers * (double)n_blocks * opt->block_size * (double)rb,
            (double)opt->max_batch * (double)max_blk * 4.0);

  dsc_mla_cache *c = (dsc_mla_cache *)calloc(1, sizeof *c);
  if (!c) return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "could not allocate the cache");
  c->ctx = ctx;
  c->o = *opt;
  c->o.size = sizeof c->o;
  c->o.n_blocks = (int32_t)n_blocks;
  c->dt = dt;
  c->row_bytes = rb;
  c->max_blk = max_blk;
  const int64_t S = opt->max_batch;
  c->ids = (int64_t *)malloc((size_t)S * sizeof(int64_t));
  c->len = (int64_t *)calloc((size_t)S, sizeof(int64_t));
  c->nblk = (int32_t *)calloc((size_t)S, sizeof(int32_t));
  c->tables = (int32_t *)calloc((size_t)(S * max_blk), sizeof(int32_t));
  c->free_list = (int32_t *)malloc((size_t)n_blocks * sizeof(int32_t));
  if (!c->ids || !c->len || !c->nblk || !c->tables || !c->free_list) {
    dsc_mla_cache_destroy(c);
    return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "could not allocate the block tables");
  }
  for (int64_t i = 0; i < S; ++i) c->ids[i] = -1;
  /* Pop order 0, 1, 2, ...: the stack holds the ids in reverse. */
  for (int64_t i = 0; i < n_blocks; ++i) c->free_list[i] = (int32_t)(n_blocks - 1 - i);
  c->n_free = (int32_t)n_blocks;
  dsc_status s = dsc_malloc(ctx, (size_t)total, &c->pool);
  if (s == DSC_OK && dsc_ctx_is_cuda(ctx)) {
    void *dt = NULL;
    s = dsc_malloc(ctx, (size_t)(S * max_blk) * sizeof(int32_t), &dt);
    c->dtables = (int32_t *)dt;
    c->tables_dirty = 1;
  } else {
    c->dtables = c->tables;
  }
  if (s != DSC_OK) {
    dsc_mla_cache_destroy(c);
    return s;
  }
  *out = c;
  return DSC_OK;
}

dsc_status dsc_mla_cache_bytes(const dsc_mla_cache *c, size_t *bpt, size_t *total) {
  DSC_CHECK(c != NULL, DSC_ERR_INVALID_ARGUMENT, "dsc_mla_cache_bytes", "cache: expected a cache, got NULL");
  if (bpt) *bpt = (size_t)c->row_bytes;
  if (total) *total = (size_t)c->o.n_layers * (size_t)c->o.n_blocks * c->o.block_size * (size_t)c->row_bytes;
  return DSC_OK;
}

int64_t mla_find_seq(const dsc_mla_cache *c, int64_t id) {
  for (int64_t i = 0; i < c->o.max_batch; ++i)
    if (c->ids[i] == id) return i;
  return -1;
}


dsc_status mla_lookup(const char *fn, const dsc_mla_cache *c, int64_t id, int64_t *slot) {
  *slot = id >= 0 ? mla_find_seq(c, id) : -1;
  DSC_CHECK(*slot >= 0, DSC_ERR_INVALID_ARGUMENT, fn,
            "seq_id: expected a sequence added to the cache, got %lld (unknown)", (long long)id);
  return DSC_OK;
}

dsc_status dsc_mla_cache_add_sequence(dsc_mla_cache *c, int64_t id) {
  static const char *const FN = "dsc_mla_cache_add_sequence";
  CACHE_ARG(FN);
  DSC_CHECK(id >= 0, DSC_ERR_INVALID_ARGUMENT, FN, "seq_id: expected >= 0, got %lld", (long long)id);
  DSC_CHECK(mla_find_seq(c, id) < 0, DSC_ERR_INVALID_ARGUMENT, FN,
            "seq_id: expected a new id, got %lld (already in the cache)", (long long)id);
  const int64_t slot = mla_find_seq(c, -1);
  DSC_CHECK(slot >= 0, DSC_ERR_INVALID_ARGUMENT, FN,
            "seq_id: the cache is full: all %d sequence slots (max_batch) are in use",
            (int)c->o.max_batch);
  c->ids[slot] = id;
  c->len[slot] = 0;
  c->nblk[slot] = 0;
  return DSC_OK;
}

/* Keep the first `keep` blocks of a slot, returning the rest to the free list. */
void mla_release_blocks(dsc_mla_cache *c, int64_t slot, int32_t keep) {
  while (c->nblk[slot] > keep) c->free_list[c->n_free++] = c->tables[slot * c->max_blk + --c->nblk[slot]];
}

void mla_grow_blocks(dsc_mla_cache *c, int64_t slot, int32_t nb) {
  while (c->nblk[slot] < nb) {
    c->tables[slot * c->max_blk + c->nblk[slot]++] = c->free_list[--c->n_free];
    c->tables_dirty = 1;
  }
}

dsc_status mla_cache_device_tables(dsc_mla_cache *c, const int32_t **dtables) {
  if (!dsc_ctx_is_cuda(c->ctx)) {
    *dtables = c->tables;
    return DSC_OK;
  }
  if (c->tables_dirty) {
    DSC_TRY(dsc_memcpy(c->ctx, c->dtables, c->ctx->device, c->tables, HOST,
                       (size_t)(c->o.max_batch * c->max_blk) * sizeof(int32_t)));
    c->tables_dirty = 0;
  }
  *dtables = c->dtables;
  return DSC_OK;
}

dsc_status mla_cache_reserve(dsc_mla_cache *c, int64_t id, int64_t tokens, int64_t *slot) {
  static const char *const FN = "dsc_mla_cache_reserve";
  DSC_TRY(mla_lookup(FN, c, id, slot));
  DSC_CHECK(tokens >= 0 && tokens <= c->o.max_tokens, DSC_ERR_INVALID_ARGUMENT, FN,
            "tokens: expected a value in [0, %d] (max_tokens), got %lld", (int)c->o.max_tokens, (long long)tokens);
  const int32_t nb = (int32_t)((tokens + c->o.block_size - 1) / c->o.block_size);
  const int32_t need = nb > c->nblk[*slot] ? nb - c->nblk[*slot] : 0;
  DSC_CHECK(need <= c->n_free, DSC_ERR_INVALID_ARGUMENT, FN,
            "cache full: sequence %lld needs %d more blocks, %d are free", (long long)id, (int)need,
            (int)c->n_free);
  mla_grow_blocks(c, *slot, nb);
  return DSC_OK;
}

dsc_status mla_cache_plan(dsc_context *ctx, dsc_mla_cache *c, int64_t n, const int32_t *pos,
                          const int64_t *slot, int64_t *meta) {
  const int32_t *dtables = NULL;
  DSC_TRY(mla_cache_device_tables(c, &dtables));
  return DSC_DISPATCH(decode_plan, ctx, n, pos, slot, dtables, c->max_blk, (int64_t)c->o.block_size, meta);
}

dsc_status mla_stage_ints(dsc_context *ctx, int64_t n, const int64_t *host, const int64_t **dev,
                          void **owned) {
  *owned = NULL;
  if (!dsc_ctx_is_cuda(ctx)) {
    *dev = host;
    return DSC_OK;
  }
  const size_t bytes = (size_t)(n > 0 ? n : 1) * sizeof(int64_t);
  DSC_TRY(dsc_malloc(ctx, bytes, owned));
  const dsc_status s = n > 0 ? dsc_memcpy(ctx, *owned, ctx->device, host, HOST, bytes) : DSC_OK;
  if (s != DSC_OK) {
    dsc_free(ctx, *owned);
    *owned = NULL;
    return s;
  }
  *dev = (const int64_t *)*owned;
  return DSC_OK;
}

dsc_status dsc_mla_cache_free_sequence(dsc_mla_cache *c, int64_t id) {
  static const char *const FN = "dsc_mla_cache_free_sequence";
  CACHE_ARG(FN);
  int64_t slot;
  DSC_TRY(mla_lookup(FN, c, id, &slot));
  mla_release_blocks(c, slot, 0);
  c->ids[slot] = -1;
  c->len[slot] = 0;
  return DSC_OK;
}

dsc_status dsc_mla_cache_truncate(dsc_mla_cache *c, int64_t id, int64_t length) {
  static const char *const FN = "dsc_mla_cache_truncate";
  CACHE_ARG(FN);
  int64_t slot;
  DSC_TRY(mla_lookup(FN, c, id, &slot));
  DSC_CHECK(length >= 0 && length <= c->len[slot], DSC_ERR_INVALID_ARGUMENT, FN,
            "length: expected a value in [0, %lld] (the sequence's length), got %lld",
            (long long)c->len[slot], (long long)length);
  mla_release_blocks(c, slot, (int32_t)((length + c->o.block_size - 1) / c->o.block_size));
  c->len[slot] = length;
  return DSC_OK;
}

dsc_status dsc_mla_cache_sequence_length(const dsc_mla_cache *c, int64_t id, int64_t *length) {
  static const char *const FN = "dsc_mla_cache_sequence_length";
  CACHE_ARG(FN);
  DSC_CHECK(length != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "length: expected a pointer, got NULL");
  int64_t slot;
  DSC_TRY(mla_lookup(FN, c, id, &slot));
  *length = c->len[slot];
  return DSC_OK;
}

dsc_status dsc_mla_cache_block_table(const dsc_mla_cache *c, int64_t id, int32_t *blocks,
                                     int32_t cap, int32_t *n) {
  static const char *const FN = "dsc_mla_cache_block_table";
  CACHE_ARG(FN);
  DSC_CHECK(n != NULL && (blocks != NULL || cap == 0), DSC_ERR_INVALID_ARGUMENT, FN,
            "blocks, n: expected pointers");
  int64_t slot;
  DSC_TRY(mla_lookup(FN, c, id, &slot));
  *n = c->nblk[slot];
  for (int32_t i = 0; i < *n && i < cap; ++i) blocks[i] = c->tables[slot * c->max_blk + i];
  return DSC_OK;
}

dsc_status dsc_mla_cache_free_counts(const dsc_mla_cache *c, int32_t *free_blocks,
                                     int32_t *free_sequences) {
  CACHE_ARG("dsc_mla_cache_free_counts");
  if (free_blocks) *free_blocks = c->n_free;
  if (free_sequences) {
    int32_t k = 0;
    for (int64_t i = 0; i < c->o.max_batch; ++i) k += c->ids[i] < 0;
    *free_sequences = k;
  }
  return DSC_OK;
}

void *mla_layer_pool(const dsc_mla_cache *c, int32_t layer) {
  return (char *)c->pool + (size_t)layer * c->o.n_blocks * c->o.block_size * c->row_bytes;
}

int64_t mla_slot_of(const dsc_mla_cache *c, int64_t slot, int64_t pos) {
  return (int64_t)c->tables[slot * c->max_blk + pos / c->o.block_size] * c->o.block_size +
         pos % c->o.block_size;
}

dsc_status dsc_mla_cache_read(dsc_context *ctx, const dsc_mla_cache *c, int32_t layer,
                              int64_t id, DLTensor *latent, DLTensor *rope) {
  static const char *const FN = "dsc_mla_cache_read";
  DSC_TRY(mla_check_ctx(FN, ctx));
  CACHE_ARG(FN);
  DSC_CHECK(c->ctx == ctx, DSC_ERR_INVALID_ARGUMENT, FN, "cache: expected a cache of this context");
  DSC_CHECK(layer >= 0 && layer < c->o.n_layers, DSC_ERR_INVALID_ARGUMENT, FN,
            "layer: expected a value in [0, %d), got %d", (int)c->o.n_layers, (int)layer);
  int64_t slot;
  DSC_TRY(mla_lookup(FN, c, id, &slot));
  DSC_TRY(dsc_check_tensor(ctx, FN, "latent", latent, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "rope", rope, DSC_DT(DSC_DTYPE_FLOAT32)));
  const int64_t L = c->len[slot];
  const int64_t ls[2] = {L, c->o.kv_lora_rank}, rs[2] = {L, c->o.rope_dim};
  DSC_TRY(dsc_check_shape(FN, "latent", latent, 2, ls));
  DSC_TRY(dsc_check_shape(FN, "rope", rope, 2, rs));
  DSC_TRY(dsc_check_no_overlap(FN, "rope", rope, "latent", latent));
  int64_t *slots = (int64_t *)malloc((size_t)(L ? L : 1) * sizeof(int64_t));
  if (!slots) return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "could not allocate %lld slots", (long long)L);
  for (int64_t j = 0; j < L; ++j) slots[j] = mla_slot_of(c, slot, j);
  const int64_t *dslots = NULL;
  void *own = NULL;
  dsc_status s = mla_stage_ints(ctx, L, slots, &dslots, &own);
  if (s == DSC_OK)
    s = DSC_DISPATCH(mla_cache_read, ctx, c->dt, c->o.kv_lora_rank, c->o.rope_dim, c->row_bytes, L, dslots,
                     mla_layer_pool(c, layer), FO(latent), FO(rope));
  dsc_free(ctx, own);
  free(slots);
  return s;
}

/* ---- FP8 projections (p->fp8) ----------------------------------------------------- */


static int64_t cdiv128(int64_t a) { return (a + 127) / 128; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

dsc_status mla_fp8_scratch_alloc(dsc_context *ctx, const dsc_mla_params *p, int64_t N,
                                    fp8_scratch *f) {
  const int64_t Hd = p->hidden, H = p->n_heads, Rq = p->q_lora_rank, R = p->kv_lora_rank;
  const int64_t dqk = p->qk_nope_head_dim + p->qk_rope_head_dim, dr = p->qk_rope_head_dim;
  const int64_t dkvw = p->qk_nope_head_dim + p->v_head_dim, dv = p->v_head_dim;
  /* every projection (out, in) */
  const int64_t wsh[6][2] = {{Rq, Hd}, {H * dqk, Rq}, {H * dqk, Hd},
                             {R + dr, Hd}, {H * dkvw, R}, {Hd, H * dv}};
  int ok = 1;
  int64_t kmax = 0, wmax = 0, wsmax = 0;
  for (int i = 0; i < 6; ++i) {
    kmax = max64(kmax, wsh[i][1]);
    wmax = max64(wmax, dsc_cmul(wsh[i][0], wsh[i][1], &ok));
    wsmax = max64(wsmax, dsc_cmul(cdiv128(wsh[i][0]), cdiv128(wsh[i][1]), &ok));
  }
  const int64_t tmpn = dsc_cmul(N, max64(R + dr, Hd), &ok);
  const size_t sz[7] = {dsc_cbytes(dsc_cmul(N, kmax, &ok), 1, &ok),
                        dsc_cbytes(dsc_cmul(N, cdiv128(kmax), &ok), 4, &ok),
                        dsc_cbytes(wmax, 1, &ok), dsc_cbytes(wsmax, 4, &ok),
                        dsc_cbytes(tmpn, 4, &ok), dsc_cbytes(tmpn, 4, &ok),
                        dsc_cbytes(dsc_cmul3(H, dkvw, R, &ok), 4, &ok)};
  size_t off[8] = {0};
  for (int i = 0; i < 7; ++i) off[i + 1] = dsc_caddz(off[i], dsc_calign(sz[i], 64, &ok), &ok);
  DSC_CHECK(ok, DSC_ERR_OUT_OF_MEMORY, "dsc_mla",
            "FP8 scratch for %lld tokens does not fit in 64 bits", (long long)N);
  /* the context's MLA FP8 slot: kept for the next call, so a step allocates nothing */
  DSC_TRY(dsc_ctx_slot(ctx, DSC_SLOT_MLA_FP8, off[7] ? off[7] : 1, &f->mem));
  char *b = (char *)f->mem;
  f->xq = (uint8_t *)b;
  f->xs = (float *)(b + off[1]);
  f->wq = (uint8_t *)(b + off[2]);
  f->ws = (float *)(b + off[3]);
  f->tmp = (float *)(b + off[4]);
  f->tmp2 = (float *)(b + off[5]);
  f->wkvb = (float *)(b + off[6]);
  return DSC_OK;
}
