/*
 * model/model_internal.h -- the dsc_model struct shared by the files of csrc/model, which
 * call only downward in this order (no file calls a later one):
 *   json.c, safetensors.c, checkpoint_dir.c  formats and atomic checkpoint directories
 *   config.c, calc.c                         the config (the one parser/writer) and calculator
 *   model.c                                  storage: the arenas, views, BF16 copy, EP state
 *   model_fp8.c                              FP8-held weights and their layer math
 *   model_acts.c                             the activations of a training shape (one arena)
 *   model_layers.c                           layer math shared by training and inference (FFN,
 *                                            MoE, block, whole-model forward, MTP concat)
 *   model_train.c                            training: backward, losses, optimizer, grad norm
 *   infer.c (infer.h)                        inference: cache, prefill/decode passes, the
 *                                            device decode step, a frozen model's forward
 *   generate.c                               generation: sampling, speculation, emission,
 *                                            the device-resident decode loop
 *   policy.c                                 R1: token log-probs, GRPO and distillation steps
 *   model_io.c                               checkpoints and Hugging Face loading
 * tools/check_layering.py reads this list and checks it on the compiled objects (nm); a new
 * file of csrc/model gets its line here.
 *
 * Parameters live in one float32 arena, laid out region by region:
 *   [embed] [layer 0] .. [layer L-1] [final norm] [lm_head?] [mtp 0] .. [mtp Dm-1]
 * A region is the unit of gradient bookkeeping: the first backward contribution to a
 * region in a pass writes its gradients in place, later ones (grad accumulation, the
 * embedding and head shared by MTP) go through a scratch copy and an add.
 * "Storage" entries are what the optimizer sees (experts stacked [E, F, D]); "named"
 * entries are the Hugging Face tensors (experts one by one, views of the stacks).
 *
 * Legend: B batch, T tokens per row, N = B*T, V vocab, D hidden, L main layers,
 * Dm MTP depths, E routed experts.
 */
#ifndef DSC_MODEL_INTERNAL_H_
#define DSC_MODEL_INTERNAL_H_

#include "../core/internal.h"
#include "../dist/dist.h"

#define DSC_MODEL_NAME_MAX 96
#define DSC_MODEL_MAX_MTP 8

/* The weight slots of a block, in arena order (dsc_model.block_entries). */
enum {
  S_IN_NORM, S_QA, S_QA_NORM, S_QB, S_Q, S_KVA, S_KVA_NORM, S_KVB, S_O, S_POST_NORM,
  S_MG, S_MU, S_MD, S_ROUTER, S_BIAS, S_EG, S_EU, S_ED, S_SG, S_SU, S_SD, S_COUNT
};

/* One tensor of the arena. */
typedef struct {
  char name[DSC_MODEL_NAME_MAX]; /* HF name; stacked experts: "...mlp.experts.gate_proj.weight" */
  int32_t ndim;
  int64_t shape[3];
  int64_t strides[3];
  int64_t offset;  /* elements from the arena start */
  int64_t numel;
  int32_t region;  /* index into dsc_model.regions */
  int32_t decay;   /* weight decay applies (matrices) */
  int32_t train;   /* updated by AdamW (all but e_score_correction_bias) */
  int32_t storage; /* index of the storage entry (named entries); itself for storage */
} dsc_model_entry;

typedef struct {
  int64_t offset, numel; /* elements */
} dsc_model_region;

/* Views of one decoder block's weights (main layer or an MTP module's block). */
typedef struct {
  int32_t is_moe;
  int32_t region;
  DLTensor input_norm, post_norm;                       /* [D] */
  DLTensor q_a_proj, q_a_norm, q_b_proj, q_proj;        /* MLA (unused ones: data NULL) */
  DLTensor kv_a_proj, kv_a_norm, kv_b_proj, o_proj;
  DLTensor mlp_gate, mlp_up, mlp_down;                  /* dense: [I, D], [I, D], [D, I] */
  DLTensor router, bias;                                /* MoE: [E, D], [E] (bias data NULL: none) */
  DLTensor ex_gate, ex_up, ex_down;                     /* [E, F, D], [E, F, D], [E, D, F] */
  DLTensor sh_gate, sh_up, sh_down;                     /* shared experts (data NULL: none) */
  int64_t shapes[24][3];                                /* storage of the views' shapes */
  int64_t strides[24][3];
} dsc_model_block;

/* One MTP module: norms and projection around its block. */
typedef struct {
  int32_t region;
  DLTensor enorm, hnorm;    /* [D] */
  DLTensor eh_proj;         /* [D, 2D] */
  DLTensor head_norm;       /* shared_head.norm [D] */
  int64_t shapes[4][3];
  int64_t strides[4][3];
} dsc_model_mtp;

typedef struct dsc_model_acts dsc_model_acts; /* activations of a training shape (model_layers.h) */

/* A distributed model (dsc_model_options.comm): its place in the world and the
 * communicators it made for itself (duplicates and splits of the user's, so its messages
 * never meet the user's). rank = dp_rank * ep + ep_rank. */
typedef struct dsc_model_dist {
  int32_t world, rank, ep, dp, ep_rank, dp_rank;
  int32_t n_local_experts, first_expert; /* El = E / ep, ep_rank * El */
  int32_t check_every, overlap, micro_batches;
  dsc_comm *grad; /* the world: replicated gradients (asynchronous buckets), losses, load, checks */
  dsc_comm *epc;  /* the expert-parallel group: ranks dp_rank * ep .. + ep - 1 */
  dsc_comm *dpg;  /* the ranks holding the same experts (same ep_rank): expert gradients */
  dsc_ep_exchange **ex;   /* [n_blocks]: the exchange of each MoE block (NULL: dense, or ep 1) */
  dsc_comm_req **req;     /* [n_req = n_regions * 4]: reductions in flight */
  int64_t n_req;
  uint8_t *launched;      /* [n_regions]: this pass's reduction of the region is issued */
  int32_t reduce_in_backward; /* the next backward reduces its regions as they complete */
  int32_t grads_reduced;  /* m->grads hold the sums over the ranks */
  int32_t load_reduced;   /* m->load holds the sum over the ranks */
  int32_t single_mb;      /* force one micro-batch per MoE layer (dsc_model_routing) */
  int64_t steps;          /* optimizer steps since creation (the check's clock) */
} dsc_model_dist;

/* FP8-held inference weights (csrc/model/model_fp8.c): every block matrix -- attention
 * projections, dense MLP, routed experts (per expert), shared experts -- as E4M3 codes with
 * 128x128 block scales, the form DeepSeek's checkpoints hold them in, quantized once from
 * the float32 masters (per generate call, or once and for all by dsc_model_freeze_fp8).
 * q[i] / s[i] for block slot i = b * S_COUNT + slot: data NULL where the slot holds nothing. */
typedef struct dsc_model_fp8w_s {
  void *mem;       /* one device allocation: all codes, then all scales */
  size_t bytes;    /* of mem */
  DLTensor *q, *s; /* [n_blocks * S_COUNT] */
  int64_t *dims;   /* [n_blocks * S_COUNT * 12]: shape/stride storage of the views */
} dsc_model_fp8w;

struct dsc_model {
  dsc_context *ctx;
  dsc_model_config cfg;
  int32_t fp8;
  int32_t n_layers, n_mtp, n_blocks; /* n_blocks = n_layers + n_mtp */

  dsc_model_entry *storage; int64_t n_storage;
  dsc_model_entry *named;   int64_t n_named;
  dsc_model_region *regions; int32_t n_regions;
  int64_t n_params;

  float *params;   /* [n_params] on ctx's device */
  int32_t compute_dtype; /* FLOAT32, or BFLOAT16: passes read wc, the masters rounded to BF16 */
  float *wc;       /* [n_params] BF16-rounded copy of params (BFLOAT16 compute only, else NULL);
                      the block / MTP / embedding / head views point into it */
  float *grads;    /* [n_params], allocated with the first backward */
  void *exp_avg, *exp_avg_sq; /* [n_params] of mom_dtype, allocated with the first step / state access */
  dsc_dtype mom_dtype;        /* FLOAT32 or BFLOAT16 */
  float *scratch;  /* [largest region]: gradient contributions to add */
  int64_t scratch_numel;
  int64_t step;

  dsc_model_block *blocks;  /* [n_blocks]: layers 0..L-1, then the MTP blocks */
  dsc_model_mtp *mtp;       /* [n_mtp] */
  DLTensor embed, final_norm, head; /* [V, D], [D], [V, D] (head = embed when tied) */
  int64_t tshape[3][2], tstrides[3][2];

  dsc_mla_params mla;         /* from cfg */
  dsc_moe_route_params route; /* from cfg */

  int64_t *load;   /* [n_blocks * E] host: expert load of the last pass (MoE blocks) */
  dsc_model_acts *acts;
  void (*acts_free)(dsc_model *m); /* set by model_acts.c with acts: frees them */
  int64_t arena_numel;     /* floats of params (n_params, less the held matrices once frozen) */

  uint8_t *touched;        /* [n_storage]: gradient already written in this pass */
  int32_t have_grads;      /* a loss_and_grad completed */
  /* The training step without the host (model_train.c, GPU): a step run with stats NULL
   * leaves its statistics in the read-back region, read by dsc_model_train_stats or the
   * next step that reads (pending: what that read needs); last: the last step's stats. */
  struct {
    int32_t pending, passes, n_mtp, grad_accum, have_last;
    float grad_scale;
    int64_t tokens;
    dsc_train_stats last;
  } defer;
  int32_t *block_entries;  /* [n_blocks * S_COUNT] storage index per block slot, -1 none */
  int32_t emb_entry, head_entry, norm_entry;
  int32_t mtp_entries[DSC_MODEL_MAX_MTP][4]; /* enorm, hnorm, eh_proj, shared_head.norm */

  /* frozen (dsc_model_freeze_fp8): inference only, the block matrices live in `held` alone;
   * their storage/named entries keep shapes and their pre-freeze offsets (relative
   * positions inside an expert stack) but have no float32 data. */
  int32_t frozen;
  dsc_model_fp8w held;
  int32_t *held_of; /* [n_storage]: block slot index (b * S_COUNT + slot) holding it, or -1 */

  dsc_model_dist *dist; /* NULL: one process */

  char *cfg_extra;      /* config.json members deepseek_c does not interpret (a JSON object), or NULL */
  char **warnings;      /* [n_warnings] what dsc_model_load let pass */
  int64_t n_warnings;
};

/* ---- config.json (config_json.c): the one parser and writer ---- */

/* Parse config.json text / file into *cfg (only on success) and, when extra != NULL, the
 * members deepseek_c does not interpret as a JSON object text (malloc'ed). */
dsc_status dsc_model_config_parse(const char *fn, const char *json, size_t len, dsc_model_config *cfg,
                                  char **extra);
dsc_status dsc_model_config_read(const char *fn, const char *path, dsc_model_config *cfg, char **extra);
/* config.json of cfg with the extra members (NULL: none): *out malloc'ed, *out_len bytes. */
#define DSC_CONFIG_CHECKPOINT 1   /* a checkpoint's: torch_dtype float32, quantization_config from... */
#define DSC_CONFIG_FP8_WEIGHTS 2  /* ...the weights: E4M3 block matrices (frozen) */
dsc_status dsc_model_config_render(const char *fn, const dsc_model_config *cfg, const char *extra, int flags,
                                   char **out, size_t *out_len);
/* text[0..n) into out[cap] with a NUL; cap 0 only reports the size in *out_len. */
dsc_status dsc_model_config_copy_out(const char *fn, const char *text, size_t n, char *out, size_t cap,
                                     size_t *out_len);
/* Append a load warning to the model (and send it to the log callback). */
dsc_status dsc_model_add_warning(dsc_model *m, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* ---- helpers shared by the model files (model.c) ---- */

/* The totals of a config that passed the range checks of dsc_model_config_validate, with
 * checked arithmetic: parameters, named (Hugging Face) tensors, storage entries, and the
 * largest region (elements). Each pointer optional. DSC_ERR_INVALID_ARGUMENT when a total
 * does not fit in int64. */
dsc_status dsc_model_config_sizes(const dsc_model_config *c, int64_t *n_params, int64_t *n_named,
                                  int64_t *n_entries, int64_t *max_region);
/* The same for a rank holding n_routed_experts / ep of the routed experts (ep divides E). */
dsc_status dsc_model_config_sizes_ep(const dsc_model_config *c, int32_t ep, int64_t *n_params, int64_t *n_named,
                                     int64_t *n_entries, int64_t *max_region);
/* Model creation in two steps, so a checkpoint's tensors can be checked against the layout
 * before the arena exists: dsc_model_plan validates cfg and opt, checks that the parameters
 * can fit in the device's memory, and builds the host tables (names, shapes, offsets; the
 * tensor views have data NULL). dsc_model_materialize allocates the arena and scratch and
 * initializes them (opt->init) or zeroes them. fn names the caller in messages. */
dsc_status dsc_model_plan(dsc_context *ctx, const char *fn, const dsc_model_config *cfg,
                          const dsc_model_options *opt, dsc_model **out);
dsc_status dsc_model_materialize(dsc_model *m, const dsc_model_options *opt);

/* A float32 / int32 row-major DLTensor over `data` (shape copied into *shape_store). */
DLTensor dsc_model_view(const dsc_model *m, void *data, dsc_dtype dt, int ndim, const int64_t *shape,
                        int64_t *shape_store, int64_t *stride_store);
/* The MLA weights struct of block b (pointers into m->blocks[b]). */
void dsc_model_mla_weights(const dsc_model *m, int32_t b, dsc_mla_weights *w);
/* The MoE weights struct of block b (an MoE block). */
void dsc_model_moe_weights(const dsc_model *m, int32_t b, dsc_moe_layer_weights *w);
/* FP8-held weights (model_fp8.c): build from the masters, free. */
int dsc_model_held_slot(int slot); /* the slot is held in FP8 (a block linear) */
dsc_status dsc_model_fp8w_build(dsc_model *m, dsc_model_fp8w *h);
void dsc_model_fp8w_free(dsc_model *m, dsc_model_fp8w *h);
/* The MLA weights of block b with its projections held in FP8 (h != NULL). */
void dsc_model_mla_weights_fp8(const dsc_model *m, int32_t b, const dsc_model_fp8w *h,
                               dsc_mla_weights *w);

/* Inference FFN of block b with its matrices held in FP8 (model_fp8.c). */
dsc_status dsc_model_ffn_infer_fp8(dsc_model *m, int32_t b, const DLTensor *x, DLTensor *y,
                                   DLTensor *counts, const dsc_model_fp8w *h);

/* x[n] host (int64 or float64 values) reduced over the ranks of c in place, through the
 * model's device (model_layers.c). */
dsc_status dsc_model_host_all_reduce(dsc_model *m, dsc_comm *c, void *x, int64_t n, dsc_dtype dt, int op);
/* The expert-parallel exchange of MoE block b (model.c), NULL in one process. */
const dsc_moe_exchange *dsc_model_exchange(const dsc_model *m, int32_t b);

/* Inference FFN of block b: x [N, D] -> y [N, D] (dense MLP or MoE, no saved state).
 * counts [E] int64 (optional, MoE only). h: FP8-held weights (fp8 models) or NULL. */
dsc_status dsc_model_ffn_infer(dsc_model *m, int32_t b, const DLTensor *x, DLTensor *y,
                               DLTensor *counts, const dsc_model_fp8w *h);
/* out[N, 2D] = [a | b] for a, b [N, D] (the MTP concat); and its split. */
dsc_status dsc_model_concat2(dsc_model *m, const DLTensor *a, const DLTensor *b, DLTensor *out);
dsc_status dsc_model_split2(dsc_model *m, const DLTensor *in, DLTensor *a, DLTensor *b);
/* Point the block / MTP / embedding / head views at the arena (frozen models: held slots
 * keep their shapes with data NULL). */
void dsc_model_bind_views(dsc_model *m);
/* BF16 compute (m->wc != NULL): puts the context in DSC_MATH_BF16_OPERANDS for a pass
 * (tensor-core GEMMs and MLA attention on CUDA) and returns the caller's mode, which
 * dsc_model_math_leave restores (on every return path); a float32 model's passes leave the
 * mode as the caller set it. Nesting is fine. */
int32_t dsc_model_math_enter(dsc_model *m);
void dsc_model_math_leave(dsc_model *m, int32_t saved);
/* BF16 compute (m->wc != NULL): wc = bf16_rne(params), before every pass; else nothing. */
dsc_status dsc_model_refresh_compute(dsc_model *m);
/* x = float(bf16_rne(x)) over n float32 elements on the model's device when the model
 * computes in BF16; nothing for a float32 model (the rounding points of the passes). */
dsc_status dsc_model_round(dsc_model *m, float *x, int64_t n);
/* dst = float(bf16_rne(src)) over n elements on the model's device (any model). */
dsc_status dsc_model_round_copy(dsc_model *m, const float *src, float *dst, int64_t n);
/* DSC_ERR_INVALID_ARGUMENT when the model is frozen: `what` needs the float32 masters. */
dsc_status dsc_model_check_not_frozen(const dsc_model *m, const char *fn, const char *what);
/* The logits of tokens [B, T] by the training forward, nothing kept for a backward
 * (model_layers.c). Arguments checked by the caller. */
dsc_status dsc_model_forward_logits(dsc_model *m, const DLTensor *tokens, DLTensor *logits);
/* Logits of every position of tokens [B, T] by the inference prefill (infer.c): the
 * forward of a frozen model. Arguments checked by the caller. */
dsc_status dsc_model_forward_infer(dsc_model *m, const DLTensor *tokens, DLTensor *logits);
/* Frees the planned training activations, if any (through the hook model_acts.c set). */
void dsc_model_drop_acts(dsc_model *m);
/* Device allocation helpers. */
dsc_status dsc_model_alloc(dsc_model *m, size_t bytes, void **p);
/* Block i is an MoE block (first_k_dense_replace, moe_layer_freq). */
int dsc_model_is_moe_block(const dsc_model_config *c, int32_t i);
/* Distributed models (model.c): storage entry e is a routed expert stack (its gradients are
 * reduced over the dp group, not the world); a checkpoint tensor name belongs to another
 * rank's experts (global expert index outside this rank's range). */
int dsc_model_entry_is_expert(const dsc_model *m, int64_t e);
int dsc_model_name_other_rank(const dsc_model *m, const char *name);
/* The layer and global expert of "model.layers.{i}.mlp.experts.{e}.<...>": 1, else 0. */
int dsc_model_expert_name(const char *name, long *layer, long *expert);
/* Storage entry e as a DLTensor over base (m->params, m->grads, ...). */
DLTensor dsc_model_storage_view(const dsc_model *m, int64_t e, float *base);
/* The AdamW moment (which 0: exp_avg, 1: exp_avg_sq) of storage entry e / named entry. */
DLTensor dsc_model_moment_view(const dsc_model *m, const dsc_model_entry *e, int which);
dsc_status dsc_model_ensure_moments(dsc_model *m);
/* Strided row copy on the model's device (backend copy2d); x *= alpha; x = 0. */
dsc_status dsc_model_copy2d(dsc_model *m, int64_t rows, size_t row_bytes, const void *src,
                            size_t src_pitch, void *dst, size_t dst_pitch);
dsc_status dsc_model_scale(dsc_model *m, float *x, int64_t n, float alpha);
dsc_status dsc_model_fill_zero(dsc_model *m, float *x, int64_t n);
/* The read of a training step run without the host (model_train.c): its statistics, expert
 * counts, step count and any deferred failure; DSC_OK with nothing pending. */
dsc_status dsc_model_settle(dsc_model *m);
/* t int32 on the model's device with ids in [0, V) (or == skip when use_skip); like:
 * expected shape (NULL: a non-empty [B, T] with T <= max_position_embeddings). */
dsc_status dsc_model_check_ids(dsc_model *m, const char *fn, const char *arg, const DLTensor *t,
                               const DLTensor *like, int64_t skip, int use_skip);

#endif /* DSC_MODEL_INTERNAL_H_ */
