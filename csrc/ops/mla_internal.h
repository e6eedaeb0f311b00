/*
 * ops/mla_internal.h -- what the three MLA files of csrc/ops share:
 *   mla.c        validation of the MLA arguments and the attention ops (backend dispatch:
 *                training attention, absorbed decode attention over the paged cache);
 *   mla_cache.c  the paged latent cache (allocator, block tables and their device mirror,
 *                write/read of rows) and the FP8 projection scratch;
 *   mla_layer.c  the orchestration of the projections: forward/backward of the layer and
 *                prefill/decode against the cache.
 * Legend: B batch, T tokens, N = B*T rows, H heads, R kv_lora_rank, dn / dr / dv nope /
 * rope / value head dims, NQ decode query rows.
 */
#ifndef DSC_OPS_MLA_INTERNAL_H_
#define DSC_OPS_MLA_INTERNAL_H_

#include "backend.h"
#include "fp8_layers.h"

#ifdef DSC_WITH_CUDA
#define MLA_CUDA_OK 1
#else
#define MLA_CUDA_OK 0
#endif

static inline const float *F(const DLTensor *t) { return t ? (const float *)dsc_data(t) : NULL; }
static inline float *FO(DLTensor *t) { return t ? (float *)dsc_data(t) : NULL; }

/* ---- validation (mla.c) */
dsc_status mla_check_ctx(const char *fn, dsc_context *ctx);
dsc_status mla_check_params(const char *fn, const dsc_mla_params *p);
/* One float32 weight: present (contiguous, shape (d0) or (d0, d1) by ndim) or absent, as
 * `needed` says. */
dsc_status mla_check_w(dsc_context *ctx, const char *fn, const char *name, const DLTensor *t,
                       int needed, int ndim, int64_t d0, int64_t d1);
/* infer: prefill/decode, where weights may be held in FP8 (with p->fp8). */
dsc_status mla_check_weights(dsc_context *ctx, const char *fn, const dsc_mla_params *p,
                             const dsc_mla_weights *w, int infer);
/* The weights of w as named inputs (absent ones NULL) after the n already in l (room for
 * 14 more); returns the new count. */
int mla_weight_list(const dsc_mla_weights *w, dsc_named_tensor *l, int n);
/* x [B,T,Hd] float32 and positions [B,T] int32 (values checked by the caller). */
dsc_status mla_check_x(dsc_context *ctx, const char *fn, const dsc_mla_params *p,
                       const char *xname, const DLTensor *x, const DLTensor *positions);
/* A host view of an index tensor (a copy from the device on CUDA). *owned must be freed. */
dsc_status mla_host_ints(dsc_context *ctx, const DLTensor *t, void **host, void **owned);
/* positions >= 0, checked where they live (the backend's index_range: no host copy). */
dsc_status mla_check_positions(dsc_context *ctx, const char *fn, const DLTensor *pos);

/* ---- attention ops (mla.c): dispatch of the attention cores; arguments as backend.h */
dsc_status mla_attn_fwd(dsc_context *ctx, int64_t B, int64_t T, int64_t H, int64_t dn,
                        int64_t dr, int64_t dv, float scale, const float *q, const float *q_pe,
                        const float *kv, const float *kpe, float *o, float *lse);
dsc_status mla_attn_bwd(dsc_context *ctx, int64_t B, int64_t T, int64_t H, int64_t dn,
                        int64_t dr, int64_t dv, float scale, const float *q, const float *q_pe,
                        const float *kv, const float *kpe, const float *o, const float *lse,
                        const float *dout, float *dq, float *dq_pe, float *dkv, float *dkpe);

/* ---- the paged latent cache (mla_cache.c) */
struct dsc_mla_cache {
  dsc_context *ctx;
  dsc_mla_cache_options o;
  dsc_dtype dt;
  int64_t row_bytes;   /* bytes of one token of one layer */
  int64_t max_blk;     /* blocks per sequence: ceil(max_tokens / block_size) */
  void *pool;          /* [n_layers, n_blocks * block_size, row_bytes] on the device */
  int64_t *ids;        /* [max_batch] sequence id of each slot, -1 free */
  int64_t *len;        /* [max_batch] tokens */
  int32_t *nblk;       /* [max_batch] blocks held */
  int32_t *tables;     /* [max_batch, max_blk] block ids (host, the allocator's truth) */
  int32_t *free_list;  /* [n_blocks] stack of free block ids */
  int32_t n_free;
  /* the block tables on the context's device (CUDA; on a CPU context it is `tables`),
   * uploaded by mla_cache_device_tables when tables_dirty */
  int32_t *dtables;    /* [max_batch, max_blk] */
  int tables_dirty;
};

#define CACHE_ARG(fn) \
  DSC_CHECK(c != NULL, DSC_ERR_INVALID_ARGUMENT, fn, "cache: expected a cache, got NULL")

int64_t mla_find_seq(const dsc_mla_cache *c, int64_t id);
dsc_status mla_lookup(const char *fn, const dsc_mla_cache *c, int64_t id, int64_t *slot);
/* Keep the first `keep` blocks of a slot, returning the rest to the free list. */
void mla_release_blocks(dsc_mla_cache *c, int64_t slot, int32_t keep);
/* Give slot `slot` blocks until it holds nb (the caller checked that enough are free). */
void mla_grow_blocks(dsc_mla_cache *c, int64_t slot, int32_t nb);
void *mla_layer_pool(const dsc_mla_cache *c, int32_t layer);
/* The pool row of token `pos` of slot `slot`. */
int64_t mla_slot_of(const dsc_mla_cache *c, int64_t slot, int64_t pos);
/* The block tables on the context's device, uploaded once after they changed. */
dsc_status mla_cache_device_tables(dsc_mla_cache *c, const int32_t **dtables);
/* Host int64 arrays (n total) staged on the context's device for the backends: *dev points
 * at them (the host array itself on a CPU context). *owned is freed with dsc_free. */
dsc_status mla_stage_ints(dsc_context *ctx, int64_t n, const int64_t *host, const int64_t **dev,
                          void **owned);

/* ---- the device-resident decode loop (generation): the cache planned once, on the device.
 * mla_cache_reserve: sequence id gets the blocks for `tokens` tokens now (its length is
 * unchanged), so single-token steps up to that length never grow its table; *slot its slot.
 * A later host-planned call on the sequence (dsc_mla_decode) may release them again.
 * mla_cache_plan: meta [3n] on the device = the plan of n one-token rows at positions
 * pos [n] (-1: padding) of slots slot [n] (backend decode_plan); the tables are uploaded
 * first if they changed. Neither waits for the device. */
dsc_status mla_cache_reserve(dsc_mla_cache *c, int64_t id, int64_t tokens, int64_t *slot);
dsc_status mla_cache_plan(dsc_context *ctx, dsc_mla_cache *c, int64_t n, const int32_t *pos,
                          const int64_t *slot, int64_t *meta);
/* dsc_mla_decode of x [B,1,Hd] at positions [B,1] (device, int32) with the plan meta [3B]
 * (mla_cache_plan) and max_kv >= every row's kv_len: no host copy, no validation (the
 * caller made every argument), the host lengths are not advanced (mla_layer.c). */
dsc_status dsc_mla_decode_planned(dsc_context *ctx, const dsc_mla_params *p, const dsc_mla_weights *w,
                                  dsc_mla_cache *c, int32_t layer, const DLTensor *x,
                                  const DLTensor *positions, const int64_t *meta, int64_t max_kv,
                                  DLTensor *out);

/* ---- FP8 projection scratch (mla_cache.c). One buffer, the context's DSC_SLOT_MLA_FP8
 * (kept with the context for the next call; never freed by the caller): a quantized activation
 * xq [N,Kmax] (scales xs [N,ceil(Kmax/128)]), a quantized weight wq (scales ws), two float32
 * buffers tmp, tmp2 [N, max(R+dr, Hd)] (the joint kv_a output / its gradient, dx terms) and
 * wkvb [H*(dn+dv), R], kv_b through E4M3 for the absorbed inference products.
 * xq_of: the activation xq holds the tiles of (the layer input feeds two projections: it is
 * quantized once). */
typedef struct {
  void *mem; /* the slot's buffer (not owned) */
  uint8_t *xq, *wq;
  float *xs, *ws, *tmp, *tmp2, *wkvb;
  const float *xq_of;
} fp8_scratch;

dsc_status mla_fp8_scratch_alloc(dsc_context *ctx, const dsc_mla_params *p, int64_t N,
                                 fp8_scratch *f);

#endif /* DSC_OPS_MLA_INTERNAL_H_ */
