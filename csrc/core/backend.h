/*
 * backend.h -- the contract between csrc/ops (validation + dispatch) and the two
 * compute backends: csrc/cpu/<family>.c (dsc_cpu_*) and kernels/<family>.cu
 * (dsc_cuda_*, compiled only when DSC_WITH_CUDA is defined).
 *
 * Backends never validate user input: the ops layer has checked shapes, dtypes,
 * devices and contiguity before calling. Pointers are to the first element and
 * are on the context's device. They return DSC_OK, or a status with a message
 * recorded through dsc_error() for failures of their own (out of memory, CUDA).
 * A CPU function and its CUDA twin have the same signature.
 *
 * Dimension legend: N rows, D features, B batch, T tokens, H heads, V vocabulary,
 * M/N/K GEMM dims, n element counts. `dt` is the dtype of the float tensors
 * (DSC_DTYPE_FLOAT32 or DSC_DTYPE_BFLOAT16); index tensors are int32 or int64
 * (`ids64` = 1 for int64).
 */
#ifndef DSC_BACKEND_H_
#define DSC_BACKEND_H_

#include "internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The per-family functions, listed once for both backends. */
#define DSC_BACKEND_DECLS(P)                                                                     \
  /* Find the first index outside [lo, hi) that is not `skip` (pass lo: it is in range).  \
   * *bad_pos = -1 when all are fine, else its position and *bad_value its value. */        \
  dsc_status P##index_range(dsc_context *ctx, int64_t n, int ids64, const void *ids /*[n]*/,    \
                            int64_t lo, int64_t hi, int64_t skip, int64_t *bad_pos,            \
                            int64_t *bad_value);                                               \
  /* RMSNorm over rows. rstd may be NULL. */                                                   \
  dsc_status P##rms_norm_fwd(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t D,              \
                             const void *x /*[N,D]*/, const void *w /*[D]*/, float eps,        \
                             void *y /*[N,D]*/, float *rstd /*[N] or NULL*/);                  \
  /* rstd may be NULL (then recomputed from x with eps). dw is overwritten. */                \
  dsc_status P##rms_norm_bwd(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t D,              \
                             const void *dy /*[N,D]*/, const void *x /*[N,D]*/,               \
                             const void *w /*[D]*/, const float *rstd /*[N] or NULL*/,         \
                             float eps, void *dx /*[N,D]*/, float *dw /*[D]*/);                \
  /* RoPE on x [B,T,H,D] with positions [B,T]; inv_freq [D/2] is a HOST array; cos and     \
   * sin are multiplied by cs_scale; inverse = 1 rotates by -angle (the backward). */       \
  dsc_status P##rope(dsc_context *ctx, dsc_dtype dt, int layout, int64_t B, int64_t T,         \
                     int64_t H, int64_t D, const void *x, const int32_t *pos,                  \
                     const float *inv_freq, float cs_scale, int inverse, void *y);             \
  /* Row-major C[M,N] = alpha*op(A)@op(B) + beta*C over `batch` matrices, FP32 accumulate.    \
   * lda/ldb/ldc are row strides; sA/sB/sC the batch strides (sB = 0: B shared). */         \
  dsc_status P##gemm(dsc_context *ctx, dsc_dtype dt, int trans_a, int trans_b, int64_t M,      \
                     int64_t N, int64_t K, float alpha, const void *A, int64_t lda,            \
                     const void *B, int64_t ldb, float beta, void *C, int64_t ldc,             \
                     int64_t batch, int64_t sA, int64_t sB, int64_t sC);                       \
  /* Like gemm with batch 1, but C is float32 while A and B are dt (weight grads). */       \
  dsc_status P##gemm_f32out(dsc_context *ctx, dsc_dtype dt, int trans_a, int trans_b,          \
                            int64_t M, int64_t N, int64_t K, float alpha, const void *A,       \
                            int64_t lda, const void *B, int64_t ldb, float beta, float *C,     \
                            int64_t ldc);                                                      \
  /* out = a + b elementwise over n elements (out may alias a or b). */                      \
  dsc_status P##add(dsc_context *ctx, dsc_dtype dt, int64_t n, const void *a, const void *b,    \
                    void *out);                                                                \
  /* x *= alpha over n float32 elements (gradient clipping and scaling). */                  \
  dsc_status P##scale_f32(dsc_context *ctx, int64_t n, float *x /*[n]*/, float alpha);         \
  /* dst = float(bf16_rne(src)) over n float32 elements (dst may alias src): the BF16     \
   * compute model's rounding of weights and activations (dsc_f32_to_bf16, numeric.h). */  \
  dsc_status P##round_bf16_f32(dsc_context *ctx, int64_t n, const float *src /*[n]*/,          \
                               float *dst /*[n]*/);                                            \
  /* Strided row copy: rows rows of row_bytes each, src/dst rows pitch bytes apart (the     \
   * model's concat, split and row slicing). src and dst do not overlap. */                 \
  dsc_status P##copy2d(dsc_context *ctx, int64_t rows, size_t row_bytes, const void *src,       \
                       size_t src_pitch, void *dst, size_t dst_pitch);                         \
  /* bytes zero bytes at dst (stream-ordered; no host wait). */                               \
  dsc_status P##zero(dsc_context *ctx, size_t bytes, void *dst);                                \
  dsc_status P##swiglu_fwd(dsc_context *ctx, dsc_dtype dt, int64_t n, const void *gate,        \
                           const void *up, void *out);                                         \
  dsc_status P##swiglu_bwd(dsc_context *ctx, dsc_dtype dt, int64_t n, const void *dout,        \
                           const void *gate, const void *up, void *dgate, void *dup);          \
  /* out[i,:] = table[ids[i],:]; ids already range-checked. */                               \
  dsc_status P##embedding_fwd(dsc_context *ctx, dsc_dtype dt, int64_t n, int ids64,            \
                              const void *ids /*[n]*/, int64_t V, int64_t D,                   \
                              const void *table /*[V,D]*/, void *out /*[n,D]*/);               \
  /* dtable = 0, then dtable[ids[i],:] += dout[i,:]. */                                      \
  dsc_status P##embedding_bwd(dsc_context *ctx, dsc_dtype dt, int64_t n, int ids64,            \
                              const void *ids /*[n]*/, int64_t V, int64_t D,                   \
                              const void *dout /*[n,D]*/, float *dtable /*[V,D]*/);            \
  /* Targets already range-checked. loss: one float32 on the device. dlogits, lse may be     \
   * NULL; dlogits may alias logits. */                                                       \
  dsc_status P##cross_entropy(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t V,            \
                              const void *logits /*[N,V]*/, int tgt64,                         \
                              const void *targets /*[N]*/, int64_t ignore_index,               \
                              float grad_scale, float *loss /*[1]*/,                           \
                              void *dlogits /*[N,V]*/, float *lse /*[N]*/);                    \
  /* ---- token log-probabilities (csrc/cpu/token_logprob.c). Targets range-checked;     \
   * ignored rows give 0. entropy may be NULL; dlogits may alias logits. */                  \
  dsc_status P##token_logprob(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t V,            \
                              const void *logits /*[N,V]*/, int tgt64,                         \
                              const void *targets /*[N]*/, int64_t ignore_index,               \
                              float *logprobs /*[N]*/, float *entropy /*[N] or NULL*/);        \
  dsc_status P##token_logprob_bwd(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t V,        \
                                  const void *logits /*[N,V]*/, int tgt64,                     \
                                  const void *targets /*[N]*/, int64_t ignore_index,           \
                                  const float *dlogprobs /*[N]*/, void *dlogits /*[N,V]*/);    \
  /* ---- token sampling (csrc/cpu/sample.c; rules there). logits [B,V] float32, rng [B,2]  \
   * (key, counter as int64 bits; counter += 1 per draw), rows with active[b] == 0 (active \
   * may be NULL: all) untouched; tokens [B] (-1: no finite logit). */                     \
  dsc_status P##sample_tokens(dsc_context *ctx, int64_t B, int64_t V, float temperature,      \
                              int32_t top_k, float top_p, const float *logits /*[B,V]*/,      \
                              int64_t *rng /*[B,2]*/, const int32_t *active /*[B] or NULL*/,  \
                              int32_t *tokens /*[B]*/);                                        \
  /* ---- the device-resident decode loop (csrc/cpu/decode.c; generation's internal ops).  \
   * decode_plan: the MLA cache metadata of n single-token rows from their positions       \
   * (pos[r] < 0: padding): meta [3n] = pool row (-1 padding), kv_len (0 padding), table   \
   * offset slot[r] * max_blk, as mla_layer.c computes them on the host.                    \
   * decode_advance: one step's bookkeeping of B rows after sampling tok [B]: an alive row  \
   * (state[b] != 0) appends tok[b] to out [B,max_new] at ngen = state[B+b], ngen += 1;     \
   * it ends (alive 0, pos -1) on eos, on max_new tokens or on tok -1 (bad logits), else   \
   * its next input is ids[b] = tok[b] at pos[b] + 1. */                                    \
  dsc_status P##decode_plan(dsc_context *ctx, int64_t n, const int32_t *pos /*[n]*/,           \
                            const int64_t *slot /*[n]*/, const int32_t *tables,               \
                            int64_t max_blk, int64_t block_size, int64_t *meta /*[3n]*/);     \
  dsc_status P##decode_advance(dsc_context *ctx, int64_t B, int32_t max_new, int32_t eos,     \
                               const int32_t *tok /*[B]*/, int32_t *ids /*[B]*/,              \
                               int32_t *pos /*[B]*/, int32_t *state /*[2B] alive, ngen*/,     \
                               int32_t *out /*[B,max_new]*/);                                 \
  /* ---- speculative (MTP) decoding on the device (csrc/cpu/sample.c; row layouts in       \
   * core/spec_step.h; generation's internal ops). spec_inputs: ids, pos [B*T] (gidx [B*T], \
   * last [B] for the MTP layouts; gidx may be NULL for the main one) of layout mode.       \
   * spec_draft: draft j of the rows with nd[b] > j from logits [B,V] (one draw per row     \
   * when sampling; q [B,K,V] gets the row's distribution; -1: nothing to sample).          \
   * spec_verify: every alive row verifies its nd[b] drafts against logits [B*Tv,V] (rows  \
   * b*Tv + j), emits the accepted ones and a correction / bonus token into out, ends rows  \
   * on eos, max_new or bad logits (token -1), sets acc and nd = the drafts wanted next,    \
   * and records the step (dsc_spec_rec) at rec[cnt[b] % nrec, b], cnt[b] += 1; rng draws  \
   * in generate.c's order (verify). q NULL when greedy. Dead rows: nd 0, no record. */     \
  dsc_status P##spec_inputs(dsc_context *ctx, int32_t mode, int64_t B, int32_t T, int32_t K,   \
                            int32_t j, int32_t max_new, const int32_t *plen /*[B]*/,           \
                            const int32_t *state /*[2B]*/, const int32_t *out /*[B,max_new]*/,  \
                            const int32_t *drafts /*[B,K]*/, const int32_t *nd /*[B]*/,        \
                            const int32_t *acc /*[B]*/, int32_t *ids /*[B*T]*/,                \
                            int32_t *pos /*[B*T]*/, int32_t *gidx /*[B*T] or NULL*/,          \
                            int32_t *last /*[B] or NULL*/);                                   \
  dsc_status P##spec_draft(dsc_context *ctx, int64_t B, int32_t K, int32_t j, int64_t V,       \
                           float temperature, int32_t top_k, float top_p,                     \
                           const float *logits /*[B,V]*/, int64_t *rng /*[B,2]*/,             \
                           const int32_t *nd /*[B]*/, int32_t *drafts /*[B,K]*/,              \
                           double *q /*[B,K,V] or NULL*/);                                    \
  dsc_status P##spec_verify(dsc_context *ctx, int64_t B, int32_t K, int64_t V, int32_t max_new, \
                            int32_t eos, float temperature, int32_t top_k, float top_p,        \
                            const float *logits /*[B*(1+K),V]*/,                              \
                            const int32_t *drafts /*[B,K]*/, const double *q /*[B,K,V]*/,     \
                            int64_t *rng /*[B,2]*/, int32_t *state /*[2B]*/,                  \
                            int32_t *out /*[B,max_new]*/, int32_t *nd /*[B]*/,                \
                            int32_t *acc /*[B]*/, int32_t nrec, int32_t *cnt /*[B]*/,         \
                            int32_t *rec /*[nrec,B]*/);                                       \
  /* ---- GRPO (csrc/cpu/grpo.c). *bad_pos (host) = the first i with x[i] not finite, -1  \
   * when every value is. */                                                                  \
  dsc_status P##find_nonfinite(dsc_context *ctx, int64_t n, const float *x /*[n]*/,            \
                               int64_t *bad_pos);                                             \
  /* n = groups * p->group_size finite rewards -> advantages; keep [n] or NULL. */           \
  dsc_status P##grpo_advantages(dsc_context *ctx, const dsc_grpo_params *p, int64_t n,         \
                                const float *rewards /*[n]*/, float *adv /*[n]*/,              \
                                int32_t *keep /*[n] or NULL*/);                               \
  /* Lmax: DR_GRPO's normalizer (resolved: > 0). old, ref, keep, dlp, stats may be NULL    \
   * (ref NULL or not with beta 0: then it feeds the KL statistic alone). loss: [1]. */      \
  dsc_status P##grpo_loss(dsc_context *ctx, const dsc_grpo_params *p, int64_t B, int64_t T,    \
                          int64_t Lmax, const float *lp /*[B,T]*/, const float *old /*[B,T]*/, \
                          const float *ref /*[B,T]*/, const float *adv /*[B]*/, int tgt64,     \
                          const void *targets /*[B,T]*/, int64_t ignore_index,                \
                          const int32_t *keep /*[B]*/, float *loss /*[1]*/,                   \
                          float *dlp /*[B,T]*/, float *stats /*[DSC_GRPO_NUM_STATS]*/);        \
  /* ---- distillation (csrc/cpu/distill.c). 1 <= K <= V. */                               \
  dsc_status P##logits_topk(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t V, int64_t K,   \
                            const void *logits /*[N,V]*/, float *values /*[N,K]*/, int idx64,  \
                            void *indices /*[N,K]*/);                                         \
  /* Teacher indices range-checked. loss: one float32 on the device; dlogits may be NULL or \
   * alias logits. */                                                                         \
  dsc_status P##topk_kl(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t V, int64_t K,       \
                        const void *logits /*[N,V]*/, int idx64, const void *t_idx /*[N,K]*/,  \
                        const float *t_logits /*[N,K]*/, int tgt64,                           \
                        const void *targets /*[N]*/, int64_t ignore_index, float temperature, \
                        float grad_scale, float *loss /*[1]*/, void *dlogits /*[N,V]*/);      \
  /* *sumsq (host) = sum of g^2 in float64, in a fixed order. */                              \
  dsc_status P##sumsq(dsc_context *ctx, int64_t n, const float *g, double *sumsq);             \
  /* One AdamW update of n elements. mom_dt (FLOAT32|BFLOAT16) is the dtype of m and v.   \
   * g is multiplied by gscale first; bc1 = 1-beta1^t, bc2 = 1-beta2^t. */                   \
  dsc_status P##adamw(dsc_context *ctx, int64_t n, float *p, const float *g, dsc_dtype mom_dt, \
                      void *m, void *v, float lr, float beta1, float beta2, float eps,         \
                      float weight_decay, float bc1, float bc2, float gscale,                  \
                      const dsc_step_ctl *ctl /* device or NULL */);                           \
  /* The training step's control block without the host (dsc_step_ctl): *total (device) =   \
   * the sum of g^2 over the list (per tensor as sumsq, added in list order); g and numel  \
   * are host arrays (of device pointers). */                                                 \
  dsc_status P##sumsq_list_dev(dsc_context *ctx, int32_t n, const float *const *g,              \
                               const int64_t *numel, double *total /*[1] device*/);          \
  /* ctl (device) from the sum of squares: norm, clip coefficient (max_norm > 0), skip =    \
   * failed != NULL and *failed != 0 (the deferred checks' record), applied = step unless    \
   * skipped. One thread of work. */                                                          \
  dsc_status P##step_ctl(dsc_context *ctx, const double *total /*[1]*/, float max_norm,         \
                         int64_t step, const int64_t *failed /*[1] or NULL*/,                \
                         dsc_step_ctl *ctl /*[1]*/);                                           \
  /* ---- MoE (csrc/cpu/moe.c). E experts, k top-k, G groups, R permuted rows.              \
   * scoring/method: dsc_moe_scoring/_topk_method.                                          \
   * Index tensors: int32, or int64 when ids64. */                                          \
  dsc_status P##moe_route(dsc_context *ctx, dsc_dtype dt, int64_t T, int64_t E, int64_t k,     \
                          int64_t G, int64_t topk_group, int scoring, int method, int norm,   \
                          float scale, const void *logits /*[T,E] dt*/,                       \
                          const float *bias /*[E] or NULL*/, int32_t *indices /*[T,k]*/,      \
                          float *weights /*[T,k]*/, float *scores /*[T,E] or NULL*/);         \
  /* dlogits overwritten; dscores (extra dL/ds) may be NULL. */                              \
  dsc_status P##moe_route_bwd(dsc_context *ctx, int64_t T, int64_t E, int64_t k, int scoring,  \
                              int norm, float scale, const float *dweights /*[T,k]*/,         \
                              const float *scores /*[T,E]*/, int ids64,                       \
                              const void *indices /*[T,k]*/, const float *dscores /*[T,E]*/,  \
                              dsc_dtype dl_dt, void *dlogits /*[T,E] dl_dt*/);                \
  /* counts overwritten (int32, or int64 when cnt64). */                                     \
  dsc_status P##moe_expert_load(dsc_context *ctx, int64_t n, int ids64, const void *ids /*[n]*/, \
                                int64_t E, int cnt64, void *counts /*[E]*/);                  \
  /* ctl: NULL, or the training step's control block (nothing changes when ctl->skip). */  \
  dsc_status P##moe_update_bias(dsc_context *ctx, int64_t E, float *bias /*[E]*/, int cnt64,   \
                                const void *counts /*[E]*/, float rate,                       \
                                const dsc_step_ctl *ctl);                                      \
  /* dst [nb, E] = sum over slots s < S and halves h < 2 of src[s * slot_stride + (2b + h) * E \
   * + e] (the model's read-back region: a training step's expert counts, int64). */        \
  dsc_status P##moe_sum_counts(dsc_context *ctx, int64_t S, int64_t nb, int64_t E,              \
                               const int64_t *src, int64_t slot_stride, int64_t *dst);        \
  /* loss: one float32 on the device; dscores may be NULL. */                                \
  dsc_status P##moe_seq_aux_loss(dsc_context *ctx, int64_t T, int64_t E, int64_t k, int64_t L, \
                                 const float *scores /*[T,E]*/, int ids64,                    \
                                 const void *indices /*[T,k]*/, float alpha,                  \
                                 float *loss /*[1]*/, float *dscores /*[T,E]*/);              \
  /* *rows (host) = sum_e roundup(count_e, align). */                                        \
  dsc_status P##moe_permute_rows(dsc_context *ctx, int64_t n, int ids64,                       \
                                 const void *ids /*[n]*/, int64_t E, int64_t align,           \
                                 int64_t *rows);                                              \
  dsc_status P##moe_permute(dsc_context *ctx, dsc_dtype dt, int64_t T, int64_t D, int64_t k,   \
                            int ids64, const void *indices /*[T,k]*/, int64_t E,              \
                            int64_t align, const void *x /*[T,D]*/, int64_t R,                \
                            void *out /*[R,D]*/, int32_t *group_offsets /*[E+1]*/,            \
                            int32_t *row_map /*[T,k]*/);                                      \
  dsc_status P##moe_permute_bwd(dsc_context *ctx, dsc_dtype dt, int64_t T, int64_t D,          \
                                int64_t k, const void *dout /*[R,D]*/,                        \
                                const int32_t *row_map /*[T,k]*/, void *dx /*[T,D]*/);        \
  dsc_status P##moe_unpermute(dsc_context *ctx, dsc_dtype dt, int64_t T, int64_t D, int64_t k, \
                              const void *expert_out /*[R,D]*/,                               \
                              const int32_t *row_map /*[T,k]*/, const float *weights /*[T,k]*/, \
                              void *y /*[T,D]*/);                                             \
  /* dexpert_out / dweights may be NULL (not both). */                                      \
  dsc_status P##moe_unpermute_bwd(dsc_context *ctx, dsc_dtype dt, int64_t T, int64_t D,        \
                                  int64_t k, int64_t R, const void *dy /*[T,D]*/,             \
                                  const void *expert_out /*[R,D]*/,                           \
                                  const int32_t *row_map /*[T,k]*/,                           \
                                  const float *weights /*[T,k]*/, void *dexpert_out /*[R,D]*/, \
                                  float *dweights /*[T,k]*/);                                 \
  /* Grouped linear (csrc/cpu/grouped_linear.c): offsets [E+1] int32 on the device and    \
   * offs_h the same (validated) values on the host. */                                    \
  dsc_status P##grouped_linear_fwd(dsc_context *ctx, dsc_dtype dt, int64_t E, int64_t R,       \
                                   int64_t N, int64_t K, const void *x /*[R,K]*/,             \
                                   const void *w /*[E,N,K]*/, const int32_t *offsets,         \
                                   const int32_t *offs_h, void *y /*[R,N]*/);                 \
  /* dx (dtype dt) and dw (dtype dw_dt: dt or FLOAT32) may be NULL (not both). */           \
  dsc_status P##grouped_linear_bwd(dsc_context *ctx, dsc_dtype dt, int64_t E, int64_t R,       \
                                   int64_t N, int64_t K, const void *dy /*[R,N]*/,            \
                                   const void *x /*[R,K]*/, const void *w /*[E,N,K]*/,        \
                                   const int32_t *offsets, const int32_t *offs_h,             \
                                   void *dx /*[R,K]*/,                                        \
                                   dsc_dtype dw_dt, void *dw /*[E,N,K]*/);              \
  /* ---- FP8 (csrc/cpu/fp8.c). `xt` float32|bfloat16, `ft`/`at`/`bt` (and q_dt) fp8      \
   * (E4M3FN|E5M2), `ct` float32|bfloat16. Kb = ceil(K/128): every scale runs along the    \
   * inner dim in blocks of 128; a `*_br` of 1 means one scale row per matrix row (1x128     \
   * tiles), 128 one per 128 rows (128x128 blocks). Scales are multipliers, validated finite \
   * and > 0. */                                                                            \
  /* Elementwise cast of n elements, float <-> fp8 (saturating, see fp8_format.h). */      \
  dsc_status P##fp8_cast(dsc_context *ctx, int64_t n, dsc_dtype src_dt, const void *src /*[n]*/, \
                         dsc_dtype dst_dt, void *dst /*[n]*/);                               \
  /* Block quantization of x [M,K] (of x^T [K,M] with transpose) in br x bc blocks:          \
   * s = max(amax over the block's finite |x|, amax_floor) / fp8_max (rounded up to a power \
   * of two with pow2), q = cast(x / s). q [M,K] ([K,M]); scale [ceil(R/br), ceil(C/bc)]   \
   * with [R,C] the shape of q. */                                                        \
  dsc_status P##fp8_quantize(dsc_context *ctx, dsc_dtype xt, int64_t M, int64_t K, int64_t br, \
                             int64_t bc, int transpose, int pow2, float amax_floor,          \
                             dsc_dtype ft, const void *x /*[M,K] xt*/, uint8_t *q,           \
                             float *scale);                                                   \
  /* out[r,c] = float(q[r,c]) * scale[r/br, c/bc]. */                                     \
  dsc_status P##fp8_dequantize(dsc_context *ctx, dsc_dtype ft, int64_t R, int64_t C,         \
                               int64_t br, int64_t bc, const uint8_t *q /*[R,C]*/,          \
                               const float *scale /*[ceil(R/br),ceil(C/bc)]*/, dsc_dtype ot, \
                               void *out /*[R,C] ot*/);                                     \
  /* dst = src^T for an [R,C] matrix of esize-byte elements (1: fp8, 4: float32 scales). */ \
  dsc_status P##fp8_transpose(dsc_context *ctx, int64_t R, int64_t C, int64_t esize,         \
                              const void *src /*[R,C]*/, void *dst /*[C,R]*/);             \
  /* The first i in [0, n) with v[i] not finite or <= 0 that is checked (*bad_pos = -1 when \
   * none; *bad_value its value): all when masked_m is NULL, else the first                 \
   * masked_m[i / group] * row of each `group` elements (masked_m [n/group] int32 on the     \
   * context's device: a masked GEMM's used rows). */                                        \
  dsc_status P##fp8_scales_check(dsc_context *ctx, int64_t n, const float *v /*[n]*/,        \
                                 const int32_t *masked_m, int64_t group, int64_t row,         \
                                 int64_t *bad_pos, float *bad_value);                         \
  /* *bytes (host) = size of the `work` buffer the three GEMMs below need for G groups     \
   * (1: plain GEMM) and M rows of A (the grouped GEMM: all rows; masked: Mmax). */        \
  dsc_status P##fp8_gemm_work(dsc_context *ctx, int64_t G, int64_t M, int64_t N, int64_t K,  \
                              dsc_dtype ct, size_t *bytes);                                  \
  /* C[m,n] = sum_kb (sum_{k in kb} A[m,k] B[n,k]) sa(m,kb) sb(n,kb), FP32 accumulation,    \
   * sa(m,kb) = a_scale[m/a_br, kb], sb(n,kb) = b_scale[n/b_br, kb]; K == 0 writes zeros. */ \
  dsc_status P##fp8_gemm(dsc_context *ctx, int64_t M, int64_t N, int64_t K, dsc_dtype at,    \
                         const uint8_t *a /*[M,K]*/, const float *a_scale /*[ceil(M/a_br),Kb]*/, \
                         int64_t a_br, dsc_dtype bt, const uint8_t *b /*[N,K]*/,             \
                         const float *b_scale /*[ceil(N/b_br),Kb]*/, int64_t b_br,           \
                         dsc_dtype ct, void *c /*[M,N] ct*/, void *work);                    \
  /* Contiguous grouped GEMM: rows offs_h[g]..offs_h[g+1]-1 of A use expert g. offsets   \
   * [G+1] int32 on the device, offs_h the same (validated) values on the host. */         \
  dsc_status P##fp8_grouped_gemm(dsc_context *ctx, int64_t G, int64_t M, int64_t N, int64_t K, \
                                 dsc_dtype at, const uint8_t *a /*[M,K]*/,                   \
                                 const float *a_scale /*[M,Kb]*/, dsc_dtype bt,              \
                                 const uint8_t *b /*[G,N,K]*/,                               \
                                 const float *b_scale /*[G,ceil(N/128),Kb]*/,                \
                                 const int32_t *offsets, const int32_t *offs_h, dsc_dtype ct, \
                                 void *c /*[M,N] ct*/, void *work);                         \
  /* Masked grouped GEMM: group g uses rows [0, mm_h[g]) of its Mmax; other rows of c = 0.  \
   * masked_m [G] int32 on the device, mm_h the same (validated) values on the host. */    \
  dsc_status P##fp8_grouped_gemm_masked(dsc_context *ctx, int64_t G, int64_t Mmax, int64_t N, \
                                        int64_t K, dsc_dtype at,                             \
                                        const uint8_t *a /*[G,Mmax,K]*/,                     \
                                        const float *a_scale /*[G,Mmax,Kb]*/, dsc_dtype bt,  \
                                        const uint8_t *b /*[G,N,K]*/,                        \
                                        const float *b_scale /*[G,ceil(N/128),Kb]*/,         \
                                        const int32_t *masked_m, const int32_t *mm_h,        \
                                        dsc_dtype ct, void *c /*[G,Mmax,N] ct*/, void *work); \
  /* Quantization statistics of x [M,K] (host outputs): block scales as fp8_quantize, or   \
   * the one tensor_scale when > 0. *amax = max |x| (NaN if any NaN); counts[0] clipped    \
   * by saturation, counts[1] non-zero finite that become +-0, counts[2] NaN. */          \
  dsc_status P##fp8_stats(dsc_context *ctx, dsc_dtype xt, int64_t M, int64_t K, int64_t br,  \
                          int64_t bc, int pow2, float amax_floor, dsc_dtype ft,              \
                          float tensor_scale, const void *x /*[M,K] xt*/, float *amax,       \
                          int64_t *counts /*[3]*/);                                    \
  /* ---- MLA (csrc/cpu/mla.c), float32. B batch, T tokens, H heads, dn/dr/dv nope, rope  \
   * and value head dims, dqk = dn+dr, R = kv_lora_rank.                                   \
   * dst[r, :C] = src[r, :C] with row strides lds, ldd (elements). */                       \
  dsc_status P##mla_copy_cols(dsc_context *ctx, int64_t rows, int64_t C, const float *src,     \
                              int64_t lds, float *dst, int64_t ldd);                          \
  /* Causal attention (key j <= query t within each sequence), scores in float32:           \
   * s = scale*(q[.,h,:dn].kv[.,h,:dn] + q_pe[.,h].kpe), o = softmax(s) @ kv[.,h,dn:];     \
   * lse[b,h,t] = log-sum-exp of the scores (saved for backward). bf16 = 1 allows BF16      \
   * tensor-core compute (CUDA, kernels/mla_attn_tc.cu; the CPU ignores it); the backward    \
   * must get the forward's bf16. */                                                         \
  dsc_status P##mla_attn_fwd(dsc_context *ctx, int64_t B, int64_t T, int64_t H, int64_t dn,    \
                             int64_t dr, int64_t dv, int bf16, float scale,                   \
                             const float *q /*[B,T,H,dqk]*/, const float *q_pe /*[B,T,H,dr]*/, \
                             const float *kv /*[B,T,H,dn+dv]*/, const float *kpe /*[B,T,dr]*/, \
                             float *o /*[B,T,H,dv]*/, float *lse /*[B,H,T]*/);                \
  /* Its backward: dq_nope written into dq[..., :dn] (dq's rope part untouched), dq_pe,     \
   * dkv (both halves) and dkpe (summed over heads), all overwritten. */                    \
  dsc_status P##mla_attn_bwd(dsc_context *ctx, int64_t B, int64_t T, int64_t H, int64_t dn,    \
                             int64_t dr, int64_t dv, int bf16, float scale, const float *q,   \
                             const float *q_pe, const float *kv, const float *kpe,            \
                             const float *o, const float *lse, const float *dout /*[B,T,H,dv]*/, \
                             float *dq /*[B,T,H,dqk]*/, float *dq_pe /*[B,T,H,dr]*/,          \
                             float *dkv /*[B,T,H,dn+dv]*/, float *dkpe /*[B,T,dr]*/);          \
  /* Latent cache rows: pool [n_slots, row_bytes] (one layer) of cache dtype cdt            \
   * (FLOAT32 | BFLOAT16: [R+dr] values; FLOAT8_E4M3FN: R e4m3, ceil(R/128) float32 scales,  \
   * dr bf16). slots: int64 [n] on the context's device, the pool row of each token (-1: skip). */             \
  dsc_status P##mla_cache_write(dsc_context *ctx, dsc_dtype cdt, int64_t R, int64_t dr,        \
                                int64_t row_bytes, int64_t n, const int64_t *slots,           \
                                const float *ckv /*[n,R]*/, const float *kpe /*[n,dr]*/,     \
                                void *pool);                                                  \
  dsc_status P##mla_cache_read(dsc_context *ctx, dsc_dtype cdt, int64_t R, int64_t dr,         \
                               int64_t row_bytes, int64_t n, const int64_t *slots,            \
                               const void *pool, float *ckv /*[n,R]*/, float *kpe /*[n,dr]*/); \
  /* Absorbed attention over the paged cache for NQ query rows: row r attends to its         \
   * sequence's tokens 0..kv_len[r]-1 (0: padding, o_lat row = 0); token j of row r is      \
   * pool row tables[table_off[r] + j / block_size] * block_size + j % block_size.          \
   * s = scale*(q_lat . ckv_j + q_pe . kpe_j); o_lat = softmax(s) @ ckv.                    \
   * kv_len, table_off, tables: arrays on the context's device (no host copy: a decode step  \
   * can be captured in a CUDA graph); max_kv: a host upper bound of kv_len (it sizes the     \
   * KV splits; a larger bound only adds empty splits). */                                   \
  dsc_status P##mla_decode_attn(dsc_context *ctx, dsc_dtype cdt, int64_t R, int64_t dr,        \
                                int64_t row_bytes, int64_t block_size, const void *pool,      \
                                int64_t NQ, int64_t H, int64_t max_kv, float scale,           \
                                const float *q_lat /*[NQ,H,R]*/, const float *q_pe /*[NQ,H,dr]*/, \
                                const int64_t *kv_len /*[NQ]*/, const int64_t *table_off,     \
                                const int32_t *tables, float *o_lat /*[NQ,H,R]*/);

DSC_BACKEND_DECLS(dsc_cpu_)

/* The one dispatch idiom of csrc/ops and csrc/model: DSC_DISPATCH(name, ctx, args...) is
 * dsc_cuda_<name>(ctx, args...) on a CUDA context and dsc_cpu_<name>(ctx, args...) otherwise.
 * A build without CUDA makes no CUDA contexts; should one reach a dispatch anyway, the call
 * fails with DSC_ERR_INTERNAL instead of handing device pointers to CPU code. */
#ifdef DSC_WITH_CUDA
#define DSC_DISPATCH(name, ctx, ...) \
  (dsc_ctx_is_cuda(ctx) ? dsc_cuda_##name((ctx), __VA_ARGS__) : dsc_cpu_##name((ctx), __VA_ARGS__))
#else
#define DSC_DISPATCH(name, ctx, ...)                                                          \
  (dsc_ctx_is_cuda(ctx) ? dsc_error(DSC_ERR_INTERNAL, __func__, "CUDA context in a build without CUDA") \
                        : dsc_cpu_##name((ctx), __VA_ARGS__))
#endif

/* ---- CPU-only helpers of the model's training step (csrc/model calls them on a CPU
 * context; a CUDA context takes the per-tensor ops instead). */

/* s = a + b and y = RMSNorm(s) (w, eps; rstd [N] or NULL) in one pass over the rows: the
 * same operations as dsc_cpu_add then dsc_cpu_rms_norm_fwd (the same bits). Float32 [N,D]. */
dsc_status dsc_cpu_add_rms_norm_fwd(dsc_context *ctx, int64_t N, int64_t D, const float *a,
                                    const float *b, const float *w, float eps, float *s, float *y,
                                    float *rstd);
/* dsc_cpu_rms_norm_bwd with the residual's gradient added: dx = res + (input gradient), as
 * dsc_cpu_add(res, dx_norm) gives; dw as dsc_cpu_rms_norm_bwd. dx may alias res. */
dsc_status dsc_cpu_rms_norm_bwd_add(dsc_context *ctx, int64_t N, int64_t D, const float *dy,
                                    const float *x, const float *w, const float *rstd, float eps,
                                    const float *res, float *dx, float *dw);

/* dsc_cpu_grouped_linear_bwd in float32 with dx accumulated (dx += dy_e @ w_e): the MoE
 * layer's gate and up input gradients into one buffer without a separate add. offs [E+1]
 * host offsets (the CPU's device memory), rows of an expert without rows keep dx. */
dsc_status dsc_cpu_grouped_linear_bwd_acc(dsc_context *ctx, int64_t E, int64_t R, int64_t N, int64_t K,
                                          const float *dy, const float *x, const float *w,
                                          const int32_t *offs, float *dx, float *dw);

/* A run of trained parameters: elements [off, off + n) of the flat parameter, gradient and
 * moment arenas, all with the same weight decay. */
typedef struct {
  int64_t off, n;
  float weight_decay;
} dsc_param_run;

/* *sumsq (host) = sum of g^2 over the runs, in float64, in a fixed order (chunks of a fixed
 * size within each run; within a chunk 8 lanes then a fixed tree; the chunks' partials
 * summed in order): bitwise the same for any thread count and with or without AVX2. */
dsc_status dsc_cpu_sumsq_runs(dsc_context *ctx, int32_t nrun, const dsc_param_run *runs,
                              const float *g, double *sumsq);
/* dsc_cpu_adamw over every run in one parallel pass (each run's own weight decay); the
 * same float operations per element, so the same bits as per-tensor calls. */
dsc_status dsc_cpu_adamw_runs(dsc_context *ctx, int32_t nrun, const dsc_param_run *runs, float *p,
                              const float *g, dsc_dtype mom_dt, void *m, void *v, float lr,
                              float beta1, float beta2, float eps, float bc1, float bc2,
                              float gscale);

/* Sampling rows on the host (cpu/sample.c): the rules of dsc_sample_tokens one row at a
 * time, for generation's speculative path (which needs the distributions themselves).
 * sample_dist: p [V] = the sampling distribution of l [V] (sums to 1); -1 when no logit
 * is finite or +inf. pairs [V] scratch. draw: the first id whose running sum of p (> 0
 * entries, ascending ids) exceeds u times their total. argmax: -1 when every logit is NaN. */
typedef struct {
  double p;
  int32_t id;
} dsc_sample_pair;
int32_t dsc_cpu_sample_argmax(const float *l, int64_t V);
int dsc_cpu_sample_dist(const float *l, int64_t V, float temperature, int32_t top_k, float top_p,
                        double *p, dsc_sample_pair *pairs);
int32_t dsc_cpu_sample_draw(const double *p, int64_t V, double u);

#ifdef DSC_WITH_CUDA
DSC_BACKEND_DECLS(dsc_cuda_)

/* CUDA context plumbing (kernels/context.cu). */
dsc_status dsc_cuda_context_init(dsc_context *ctx);  /* sets ctx->cuda */
void dsc_cuda_context_release(dsc_context *ctx);
dsc_status dsc_cuda_malloc(dsc_context *ctx, size_t bytes, void **ptr);
void dsc_cuda_free(dsc_context *ctx, void *ptr);
/* Free and total bytes of the context's device (cudaMemGetInfo). */
dsc_status dsc_cuda_mem_info(dsc_context *ctx, size_t *free_bytes, size_t *total_bytes);
/* kind: 0 host->device, 1 device->host, 2 device->device, 3 host->host */
dsc_status dsc_cuda_memcpy(dsc_context *ctx, void *dst, const void *src, size_t bytes, int kind);
dsc_status dsc_cuda_synchronize(dsc_context *ctx);
/* The context's workspace, stream-ordered on its stream (cudaMallocAsync from the
 * context's pool, which keeps freed memory: steady state allocates nothing). */
dsc_status dsc_cuda_workspace_alloc(dsc_context *ctx, size_t bytes, void **ptr);
void dsc_cuda_workspace_free(dsc_context *ctx, void *ptr);
/* Wait for all work on the context's device (context destruction only; not counted). */
void dsc_cuda_quiesce(dsc_context *ctx);
/* Make `stream` wait for the work queued so far on the context's current stream. */
dsc_status dsc_cuda_set_stream(dsc_context *ctx, void *stream);
/* *sumsq (host) = sum over the list of each tensor's sumsq (the dsc_cuda_sumsq bits),
 * added in list order in float64, with one host wait for the whole list (global norm).
 * g, numel: host arrays; g[i] float32 on the device, numel[i] >= 0. */
dsc_status dsc_cuda_sumsq_list(dsc_context *ctx, int32_t n, const float *const *g,
                               const int64_t *numel, double *sumsq);
dsc_status dsc_cuda_get_device_count(int32_t *count);
dsc_status dsc_cuda_get_device_name(int32_t index, char *name, size_t n, int32_t *major,
                                    int32_t *minor);
const char *dsc_cuda_build_version(void);
/* CUDA graphs of the context's stream (kernels/graph.cu): capture_begin starts a relaxed
 * capture of the work queued on the context's stream (a private stream stands in for the
 * legacy default stream until capture_end); capture_end ends it (always, restoring the
 * stream) and instantiates the graph (*exec; on failure NULL and the error says why);
 * launch replays it on the context's stream; destroy frees it. */
typedef struct dsc_graph_capture dsc_graph_capture;
dsc_status dsc_cuda_graph_capture_begin(dsc_context *ctx, dsc_graph_capture **cap);
dsc_status dsc_cuda_graph_capture_end(dsc_context *ctx, dsc_graph_capture *cap, void **exec);
dsc_status dsc_cuda_graph_launch(dsc_context *ctx, void *exec);
void dsc_cuda_graph_destroy(void *exec);
#endif

#ifdef __cplusplus
}
#endif
#endif /* DSC_BACKEND_H_ */
