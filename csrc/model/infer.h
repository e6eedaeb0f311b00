/*
 * model/infer.h -- inference on the paged latent cache (infer.c), below generation
 * (generate.c): the state of one batch (buffers, cache, FP8-held weights), the prefill /
 * decode passes of the main model and of MTP module 0, and the device-resident decode step.
 *
 * Legend: B sequences (batch rows), T tokens per row, N = B*T, D hidden, V vocab, L main
 * layers, K num_draft (0: no MTP layer in the cache), Tp the longest prompt.
 */
#ifndef DSC_MODEL_INFER_H_
#define DSC_MODEL_INFER_H_

#include "model_internal.h"

/* A row-major DLTensor over `data` on `dev`; shape/stride storage in the struct. */
typedef struct {
  DLTensor t;
  int64_t shape[3];
  int64_t strides[3];
} dsc_gview;
DLTensor *dsc_gview_make(dsc_gview *v, DLDevice dev, void *data, dsc_dtype dt, int ndim, int64_t d0,
                         int64_t d1, int64_t d2);

typedef struct {
  dsc_model *m;
  dsc_context *ctx;
  DLDevice dev;
  int host; /* the model lives on the CPU: device buffers are host memory */
  int32_t B, D, V, L, K, Tp, Tv;
  int64_t Nmax, LRmax; /* rows of the activation buffers, rows of the logits buffer */
  int all_logits;      /* dsc_model_forward of a frozen model: logits of every prefill row */
  dsc_mla_cache *cache;
  dsc_model_fp8w w8;        /* fp8 models: the block matrices held in E4M3 for this call */
  const dsc_model_fp8w *hw; /* the held weights used: &w8, the frozen model's, or NULL */
  /* device */
  void *dmem;
  float *h, *xn, *tmp, *hn, *e, *cat, *mo, *logits;
  int32_t *d_ids, *d_pos, *d_gidx;
  int64_t *d_seq;
  /* host staging of a batch: ids, positions [N], gather rows [N], drafting rows [B], seq [B] */
  void *hmem;
  int32_t *h_ids, *h_pos, *h_gidx, *h_last;
  int64_t *h_seq;
  float *h_logits; /* NULL on the CPU (logits read in place) */
  int32_t main_forwards;
  /* the device-resident decode step (dsc_infer_plan_device): row b = sequence b */
  int64_t *d_slot;  /* [B] cache slot of each row */
  int64_t *d_slotv; /* [B*Tv] the slot of row b*Tv + j: sequence b's (speculative steps) */
  int64_t *d_meta;  /* [3*B*Tv] the step's cache plan */
  int32_t *d_last;  /* [B] drafting rows of an MTP pass */
  int64_t max_kv;  /* the reserved length: >= every row's kv_len */
} dsc_infer;

/* The fields every batch sets alike (model, context, device, sizes, a frozen model's held
 * weights). */
dsc_status dsc_infer_init(dsc_infer *in, dsc_model *m, int32_t B);
/* Buffers and the cache (L layers, + 1 for MTP when K > 0) for prompts of lengths plen [B]
 * (host) and up to max_new more tokens each; fn names the caller in messages. */
dsc_status dsc_infer_setup(dsc_infer *in, const char *fn, const int32_t *plen, int32_t max_new,
                           int32_t K, int32_t cache_dtype, int32_t block_size);
void dsc_infer_release(dsc_infer *in);
/* The main model on the batch staged in h_ids / h_pos / h_seq ([nb, T]): hn = RMSNorm(h;
 * model.norm) for every row, then logits [nr, V] of rows h_gidx[0 .. nr) of hn (in
 * in->logits); *lh = their host copy (in place on the CPU). */
dsc_status dsc_infer_main(dsc_infer *in, int32_t nb, int32_t T, int prefill, int64_t nr, const float **lh);
/* MTP module 0 on the batch [nb, T]: h_ids the tokens one ahead, h_pos the positions, h_seq
 * the sequences, h_gidx [N] the rows of hsrc ([hrows, D] device) holding the hidden inputs,
 * h_last [nb] the drafting rows. mo [nb, D] their normalized outputs; logits [nb, V]. */
dsc_status dsc_infer_mtp(dsc_infer *in, int32_t nb, int32_t T, int prefill, const float *hsrc,
                         int64_t hrows, const float **lh);
/* Expert parallelism: a decode step of a rank without sequences (its experts still serve). */
dsc_status dsc_infer_idle_step(dsc_infer *in);

/* The device-resident decode step. plan_device: every sequence b (in the cache as id b,
 * prefilled) gets its blocks for total[b] tokens now, and the block tables and row slots
 * go to the device once. decode_device: one step of every row b at d_pos[b] (-1: a
 * finished row, padding) with input d_ids[b] (device): logits [B, V] stay in in->logits.
 * It neither waits for the device nor copies to or from the host. */
dsc_status dsc_infer_plan_device(dsc_infer *in, const int32_t *total);
dsc_status dsc_infer_decode_device(dsc_infer *in);
/* The device-resident speculative step (after plan_device; row layouts in
 * core/spec_step.h). verify_device: the main model on [B, Tv] rows (row b*Tv + j: sequence
 * b at d_pos, -1 padding) with inputs d_ids: hn [B*Tv, D] and logits [B*Tv, V] stay on the
 * device. mtp_device: MTP module 0 on [B, T] rows (T = Tv: the catch-up, T = 1: a chain
 * step) with d_ids, d_pos, d_gidx (rows of hsrc [hrows, D]) and d_last [B] (the drafting
 * rows) on the device: mo [B, D] and logits [B, V]. Neither waits nor copies. */
dsc_status dsc_infer_verify_device(dsc_infer *in);
dsc_status dsc_infer_mtp_device(dsc_infer *in, int32_t T, const float *hsrc, int64_t hrows);

#endif /* DSC_MODEL_INFER_H_ */
