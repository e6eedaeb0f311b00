/*
 * model/model_acts.h -- the activations of a training shape (model_acts.c): what each
 * block keeps between its forward (model_layers.c) and its backward (model_train.c), the
 * backward's scratch, all carved from one device arena per (B, T); and the tensor-view
 * helper those files share. Private to csrc/model (the rest sees model_internal.h only).
 *
 * Legend: B batch, T tokens per row, N = B*T, V vocab, D hidden, I dense intermediate,
 * L main layers, Dm MTP depths, E routed experts.
 */
#ifndef DSC_MODEL_ACTS_H_
#define DSC_MODEL_ACTS_H_

#include "model_internal.h"

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
  /* The read-back region: what the host needs of a pass, copied back in one piece (one
   * host wait per pass; dsc_model_read_back): the losses, then per MoE block and
   * micro-batch h its balance loss and expert counts (slot 2b + h). One slot per pass of a
   * training step (the step without the host reads them all at once), after a head: the
   * step's control block, the norm's sum of squares, the step's summed expert counts.
   *   rb: [rb_head | slot 0 | slot 1 | ...], slots rb_stride bytes apart (rb_cap of them);
   * loss / rb_aux / rb_load point into the selected slot (dsc_model_rb_select). */
  void *rb;                              /* device */
  void *rb_host;                         /* host mirror of rb */
  size_t rb_head, rb_stride;             /* bytes */
  size_t rb_aux_off, rb_load_off;        /* bytes into a slot */
  int32_t rb_cap;                        /* slots */
  dsc_step_ctl *rb_ctl;                  /* [1] (head) */
  double *rb_sumsq;                      /* [1] (head) */
  int64_t *rb_dload;                     /* [n_blocks, E] (head): the step's counts */
  float *loss;                           /* [1 + Dm] */
  float *rb_aux;                         /* [2 * n_blocks] */
  int64_t *rb_load;                      /* [2 * n_blocks, E] */
  size_t rb_bytes;                       /* loss .. the end of rb_load: one slot's content */
  int64_t *counts;                       /* [E] */
};

/* The dense FFN buffers of a block of `rows` rows (g, u, a; in fp8 mode the saved E4M3
 * operands and scales) carved at *off of base (NULL: sizes only). The training plan and
 * the inference FFN's scratch lay them out alike. */
void dsc_model_carve_ffn(const dsc_model *m, blk_acts *k, int64_t rows, char *base, size_t *off);
/* The read-back region with room for `slots` passes (grown, never shrunk), slot 0 selected. */
dsc_status dsc_model_rb_reserve(dsc_model *m, int32_t slots);
/* Point loss / rb_aux / rb_load at slot k (< rb_cap). */
void dsc_model_rb_select(dsc_model_acts *A, int32_t k);
/* The activations for (B, T): kept while the shape stays, re-planned when it changes. */
dsc_status dsc_model_acts_for(dsc_model *m, int64_t B, int64_t T, dsc_model_acts **out);

#endif /* DSC_MODEL_ACTS_H_ */
