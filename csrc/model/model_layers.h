/*
 * model/model_layers.h -- what the activation plan (model_acts.c) and the layer math
 * (model_layers.c) hand up to the training passes (model_train.c): the activations of a
 * training shape, the whole-model forward that fills them, and the small helpers all three
 * use. Private to those files (generate.c and the rest see model_internal.h only).
 *
 * Legend: B batch, T tokens per row, Tb tokens per row of a block's input (T, or Td = T - d - 1
 * at MTP depth d), N = B*T, V vocab, D hidden, I dense intermediate, L main layers,
 * Dm MTP depths, E routed experts.
 */
#ifndef DSC_MODEL_LAYERS_H_
#define DSC_MODEL_LAYERS_H_

#include "model_internal.h"

/* Run a step only while every earlier step succeeded. */
#define STEP(call)                 \
  do {                             \
    if (st == DSC_OK) st = (call); \
  } while (0)

/* A DLTensor with its own shape storage (never copied by value once made). */
typedef struct {
  DLTensor t;
  int64_t sh[4], st[4];
} tv;

static inline DLTensor *tv_make(tv *v, const dsc_model *m, const void *data, dsc_dtype dt, int ndim, int64_t d0,
                                int64_t d1, int64_t d2) {
  const int64_t d[3] = {d0, d1, d2};
  v->t = dsc_model_view(m, (void *)data, dt, ndim, d, v->sh, v->st);
  return &v->t;
}
#define F32 DSC_DTYPE_FLOAT32
#define I32 DSC_DTYPE_INT32

/* ------------------------------------------------------------------ activations (model_acts.c) */

/* What block b keeps between its forward and its backward. */
typedef struct {
  float *x_in, *xn1, *hmid, *xn2, *out; /* [rows, D]; x_in / out point into the chain */
  float *g, *u, *a;                     /* dense FFN: [rows, I] */
  uint8_t *xq[3], *wq[3];               /* FP8 dense FFN saved (gate, up, down) */
  float *xs[3], *ws[3];
  dsc_mla_saved *mla;
  dsc_moe_layer_saved *moe;
  dsc_moe_layer_saved *moe2; /* the second micro-batch of an expert-parallel MoE layer */
} blk_acts;

/* The activations of one (B, T) shape, planned into one device arena. */
struct dsc_model_acts {
  int64_t B, T;
  void *arena;
  size_t bytes;
  int32_t *pos;                 /* [B, T] 0..T-1 */
  int32_t *tok;                 /* [B, T] the tokens of the last forward_train (its backward reads them) */
  int32_t fwd_mtp;              /* MTP depths that forward ran, -1: no backward pending */
  int64_t *fwd_load;            /* [n_blocks * E] host: the expert load of that forward */
  float *h;                     /* [L + 1, N, D] */
  float *hn;                    /* [N, D] */
  float *logits;                /* [N, V] (then dlogits) */
  blk_acts *blk;                /* [n_blocks] */
  int32_t *mtp_tok[DSC_MODEL_MAX_MTP], *mtp_tgt[DSC_MODEL_MAX_MTP], *mtp_pos[DSC_MODEL_MAX_MTP];
  float *mtp_e[DSC_MODEL_MAX_MTP], *mtp_en[DSC_MODEL_MAX_MTP], *mtp_hp[DSC_MODEL_MAX_MTP];
  float *mtp_hh[DSC_MODEL_MAX_MTP], *mtp_cat[DSC_MODEL_MAX_MTP], *mtp_x[DSC_MODEL_MAX_MTP];
  float *mtp_xo[DSC_MODEL_MAX_MTP], *mtp_xn[DSC_MODEL_MAX_MTP], *mtp_logits[DSC_MODEL_MAX_MTP];
  float *dh, *tA, *tB, *tC, *tD, *dprev; /* [N, D] */
  float *tE;                             /* [N, D] BF16 compute: rounded gradient copies */
  float *dI0, *dI1, *dI2;                /* [N, I] */
  float *dcat;                           /* [N, 2D] */
  float *loss;                           /* [1 + Dm] */
  int64_t *counts;                       /* [E] */
};

/* The next 256-byte aligned piece of `bytes` at *off of base (base NULL: only sizes);
 * returns the end. */
static inline size_t carve(char *base, size_t *off, size_t bytes, void **ptr) {
  *off = (*off + 255) & ~(size_t)255;
  if (base) *ptr = base + *off;
  *off += bytes ? bytes : 1;
  return *off;
}
#define CARVE(p, type, count) carve(base, &off, (size_t)(count) * sizeof(type), (void **)&(p))

/* The dense FFN buffers of a block of `rows` rows (g, u, a; in fp8 mode the saved E4M3
 * operands and scales) carved at *off of base (NULL: sizes only). The training plan and
 * the inference FFN's scratch lay them out alike. */
void dsc_model_carve_ffn(const dsc_model *m, blk_acts *k, int64_t rows, char *base, size_t *off);
/* The activations for (B, T): kept while the shape stays, re-planned when it changes. */
dsc_status dsc_model_acts_for(dsc_model *m, int64_t B, int64_t T, dsc_model_acts **out);

/* ------------------------------------------------------------------ the forward (model_layers.c) */

typedef struct {
  int train;        /* keep activations for backward */
  float aux_alpha;  /* sequence-wise balance loss weight (already times grad_scale) */
  double aux_sum;   /* += alpha * L_bal of each MoE block */
} fwd_opts;

/* Micro-batches of block b's MoE layer: 2 when expert parallel with ep_micro_batches 2. */
static inline int moe_mbs(const dsc_model *m, int32_t b) {
  return dsc_model_exchange(m, b) && !m->dist->single_mb ? m->dist->micro_batches : 1;
}

/* Rows [h*B0*Tb ..) of a [B, Tb, D] float32 buffer as the [Bh, Tb, D] view of micro-batch h
 * (B0 = B / 2 sequences in the first, the rest in the second: either may be empty). */
static inline DLTensor *half_view(tv *v, const dsc_model *m, const DLTensor *t, int64_t B, int64_t Tb, int h) {
  const int64_t B0 = B / 2, Bh = h ? B - B0 : B0, D = dsc_last_dim(t);
  return tv_make(v, m, (const float *)dsc_data(t) + (h ? B0 * Tb * D : 0), F32, 3, Bh, Tb, D);
}

/* Rows [b, first:first+n) of a [B, rows_src, W] buffer into a [B, n, W] one (elem bytes each). */
dsc_status dsc_model_slice_rows(dsc_model *m, int64_t B, int64_t n, int64_t W, size_t elem, const void *src,
                                int64_t rows_src, int64_t first, void *dst);
/* Main model forward (and the MTP depths when n_mtp_run > 0) over tokens [B, T] into the
 * activations of (B, T), in the model's math mode. logits_out: where the main logits go
 * (NULL: the activation arena). With o->train the MLA / MoE ops keep their saved state. */
dsc_status dsc_model_run_forward(dsc_model *m, const DLTensor *tokens, int32_t n_mtp_run, fwd_opts *o,
                                 float *logits_out);

#endif /* DSC_MODEL_LAYERS_H_ */
