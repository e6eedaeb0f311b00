/*
 * model/model_layers.h -- what the layer math (model_layers.c) hands up to the training
 * passes (model_train.c): the whole-model forward that fills the activations of a training
 * shape (model_acts.h), and the micro-batch helpers of the MoE layer both directions use.
 * Private to csrc/model (generate.c and the rest see model_internal.h only).
 *
 * Legend: B batch, T tokens per row, Tb tokens per row of a block's input (T, or Td = T - d - 1
 * at MTP depth d), N = B*T, V vocab, D hidden, L main layers, Dm MTP depths.
 */
#ifndef DSC_MODEL_LAYERS_H_
#define DSC_MODEL_LAYERS_H_

#include "model_acts.h"

/* Options of one forward pass. */
typedef struct {
  int train;        /* keep activations for backward */
  float aux_alpha;  /* sequence-wise balance loss weight (already times grad_scale) */
  double aux_sum;   /* += alpha * L_bal of each MoE block */
  int defer_read;   /* 1: the caller reads the pass's read-back region itself (with its losses:
                       dsc_model_read_back); 0: the forward reads it at its end */
} fwd_opts;

/* Micro-batches of block b's MoE layer: 2 when expert parallel with ep_micro_batches 2. */
static inline int moe_mbs(const dsc_model *m, int32_t b) {
  return dsc_model_exchange(m, b) && !m->dist->single_mb ? m->dist->micro_batches : 1;
}

/* Rows [h*B0*Tb ..) of a [B, Tb, D] float32 buffer as the [Bh, Tb, D] view of micro-batch h
 * (B0 = B / 2 sequences in the first, the rest in the second: either may be empty). */
static inline DLTensor *half_view(tv *v, const dsc_model *m, const DLTensor *t, int64_t B, int64_t Tb, int h) {
  const int64_t B0 = B / 2, Bh = h ? B - B0 : B0, D = dsc_last_dim(t);
  return tv_make(v, m, (const float *)dsc_data(t) + (h ? B0 * Tb * D : 0), DSC_DTYPE_FLOAT32, 3, Bh, Tb, D);
}

/* Rows [b, first:first+n) of a [B, rows_src, W] buffer into a [B, n, W] one (elem bytes each). */
dsc_status dsc_model_slice_rows(dsc_model *m, int64_t B, int64_t n, int64_t W, size_t elem, const void *src,
                                int64_t rows_src, int64_t first, void *dst);
/* Main model forward (and the MTP depths when n_mtp_run > 0) over tokens [B, T] into the
 * activations of (B, T), in the model's math mode. logits_out: where the main logits go
 * (NULL: the activation arena). With o->train the MLA / MoE ops keep their saved state. */
dsc_status dsc_model_run_forward(dsc_model *m, const DLTensor *tokens, int32_t n_mtp_run, fwd_opts *o,
                                 float *logits_out);
/* The dense FFN's saved FP8 operands of block acts k over `rows` rows, as views [3] (gate,
 * up, down): inputs xq [rows, K] E4M3 with scales xs [rows, K/128], weights wq [N, K] with
 * scales ws [N/128, K/128]; the forward writes them, the backward reads them. */
void dsc_model_ffn_fp8_views(const dsc_model *m, const blk_acts *k, int64_t rows, tv *xq, tv *xs, tv *wq,
                             tv *ws);
/* Copy the activations' read-back region to the host in one piece (one host wait), add
 * the pass's expert counts into m->load and its balance losses into o->aux_sum (block order,
 * the order a host sum per block would take); *losses (optional, [1 + Dm]) gets the losses. */
dsc_status dsc_model_read_back(dsc_model *m, fwd_opts *o, float *losses, int32_t n_losses);

#endif /* DSC_MODEL_LAYERS_H_ */
