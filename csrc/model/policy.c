/*
 * model/policy.c -- reinforcement learning and distillation steps of dsc_model, composed
 * from the composable training pieces (dsc_model_forward_train, dsc_model_backward,
 * dsc_model_optimizer_step, in model_train.c) and the public ops (token log-probabilities,
 * GRPO, top-k KL, cross-entropy). It sits above model_train.c and generate.c and calls only
 * downward: the ABI of the model and the ops.
 *
 *   token_logprobs: logits = forward(tokens);  lp[b, t] = log softmax(logits[b, t])[targets[b, t]]
 *   policy_step:    adv, keep = grpo_advantages(rewards)
 *                   logits = forward_train(tokens);  lp, entropy = token_logprob(logits, targets)
 *                   loss, dL/dlp = grpo_loss(lp, old, ref, adv, targets, keep)
 *                   dL/dlogits = token_logprob_backward(dL/dlp)   (in place over the logits)
 *                   backward(dL/dlogits);  optimizer_step
 *   distill_step:   logits = forward_train(tokens)
 *                   dL/dlogits = alpha tau^2 d topk_kl + (1 - alpha) d cross_entropy
 *                   backward;  optimizer_step
 *
 * Buffers of a step ([B, T, V] logits and the per-token arrays) are allocated on the model's
 * device for the call and freed before it returns, on every path. Small per-row values the
 * step reports (rewards, keep flags, entropies, statistics) are copied to the host.
 * Legend: B completions (rows), T tokens per row, V vocab, K teacher logits per position,
 * G group size.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../ops/grpo.h"
#include "model_internal.h"

/* A DLTensor with its own shape storage. */
typedef struct {
  DLTensor t;
  int64_t sh[4], st[4];
} view;

static DLTensor *mk(view *v, const dsc_model *m, void *data, dsc_dtype dt, int ndim, int64_t d0, int64_t d1,
                    int64_t d2) {
  const int64_t d[3] = {d0, d1, d2};
  v->t = dsc_model_view(m, data, dt, ndim, d, v->sh, v->st);
  return &v->t;
}

/* The train options' ranges (those of dsc_model_train_step), checked before any work so
 * that a bad option leaves the model's gradients as they were; plus grad_accum == 1. */
static dsc_status check_options(const char *fn, const dsc_train_options *o) {
  DSC_CHECK(o != NULL && o->size >= sizeof(dsc_train_options), DSC_ERR_INVALID_ARGUMENT, fn,
            "opt: expected a dsc_train_options with size = %zu (dsc_train_options_default)",
            sizeof(dsc_train_options));
  const float nonneg[] = {o->lr, o->weight_decay, o->max_grad_norm, o->bias_update_rate};
  const char *const names[] = {"lr", "weight_decay", "max_grad_norm", "bias_update_rate"};
  for (int i = 0; i < 4; ++i)
    DSC_CHECK(isfinite(nonneg[i]) && nonneg[i] >= 0.0f, DSC_ERR_INVALID_ARGUMENT, fn,
              "opt->%s: expected a finite number >= 0, got %g", names[i], (double)nonneg[i]);
  DSC_CHECK(o->beta1 >= 0.0f && o->beta1 < 1.0f, DSC_ERR_INVALID_ARGUMENT, fn, "opt->beta1: expected [0, 1), got %g",
            (double)o->beta1);
  DSC_CHECK(o->beta2 >= 0.0f && o->beta2 < 1.0f, DSC_ERR_INVALID_ARGUMENT, fn, "opt->beta2: expected [0, 1), got %g",
            (double)o->beta2);
  DSC_CHECK(isfinite(o->eps) && o->eps > 0.0f, DSC_ERR_INVALID_ARGUMENT, fn, "opt->eps: expected > 0, got %g",
            (double)o->eps);
  DSC_CHECK(o->grad_accum == 1, DSC_ERR_INVALID_ARGUMENT, fn,
            "opt->grad_accum: expected 1 (the objective normalizes over the whole batch), got %d",
            (int)o->grad_accum);
  return DSC_OK;
}

/* A [B, T] float32 tensor on the model's device. */
static dsc_status check_bt(dsc_model *m, const char *fn, const char *arg, const DLTensor *t, int64_t B, int64_t T) {
  DSC_TRY(dsc_check_tensor(m->ctx, fn, arg, t, DSC_DT(DSC_DTYPE_FLOAT32)));
  const int64_t shp[2] = {B, T};
  return dsc_check_shape(fn, arg, t, 2, shp);
}

/* Room for n elements of size es (256-byte aligned) at *off = the old *total (checked). */
static int add_bytes(size_t *total, int64_t n, size_t es, size_t *off) {
  size_t b = 0;
  if (n < 0 || !dsc_mul_size((size_t)n, es, &b) || !dsc_add_size(b, 255, &b)) return 0;
  b = b / 256 * 256;
  *off = *total;
  return dsc_add_size(*total, b, total);
}

/* The host copy of targets [B, T] (int32 on the model's device): *out malloc'ed. */
static dsc_status host_targets(dsc_model *m, const char *fn, const DLTensor *targets, int32_t **out) {
  const int64_t n = dsc_numel(targets);
  int32_t *h = (int32_t *)malloc((size_t)n * sizeof(int32_t));
  if (!h) return dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory (%lld targets)", (long long)n);
  const dsc_status st = dsc_memcpy(m->ctx, h, (DLDevice){kDLCPU, 0}, dsc_data(targets), targets->device,
                                   (size_t)n * sizeof(int32_t));
  if (st != DSC_OK) {
    free(h);
    return st;
  }
  *out = h;
  return DSC_OK;
}

dsc_status dsc_model_token_logprobs(dsc_model *m, const DLTensor *tokens, const DLTensor *targets,
                                    int32_t ignore_index, DLTensor *logprobs) {
  static const char *const FN = "dsc_model_token_logprobs";
  DSC_CHECK(m != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "model: expected a model, got NULL");
  DSC_TRY(dsc_model_check_ids(m, FN, "tokens", tokens, NULL, 0, 0));
  DSC_TRY(dsc_model_check_ids(m, FN, "targets", targets, tokens, ignore_index, 1));
  const int64_t B = tokens->shape[0], T = tokens->shape[1], V = m->cfg.vocab_size;
  DSC_TRY(check_bt(m, FN, "logprobs", logprobs, B, T));
  DSC_TRY(dsc_check_disjoint(FN, "logprobs", logprobs, "tokens", tokens, "targets", targets, NULL));
  size_t bytes = 0, off = 0;
  DSC_CHECK(add_bytes(&bytes, B * T * V, sizeof(float), &off), DSC_ERR_OUT_OF_MEMORY, FN,
            "tokens: [%lld, %lld] x vocab %lld logits do not fit in memory", (long long)B, (long long)T,
            (long long)V);
  void *buf = NULL;
  DSC_TRY(dsc_model_alloc(m, bytes, &buf));
  view lg;
  mk(&lg, m, buf, DSC_DTYPE_FLOAT32, 3, B, T, V);
  dsc_status st = dsc_model_forward(m, tokens, &lg.t);
  if (st == DSC_OK) st = dsc_token_logprob(m->ctx, &lg.t, targets, ignore_index, logprobs, NULL);
  dsc_free(m->ctx, buf);
  return st;
}

/* ------------------------------------------------------------------ GRPO */

/* Device buffers of one policy step, carved from one allocation. */
typedef struct {
  void *mem;
  float *logits;         /* [B, T, V], then dL/dlogits */
  float *lp, *ent, *dlp; /* [B, T] */
  float *adv;            /* [B] */
  int32_t *keep;         /* [B] */
  float *loss;           /* [1] */
  float *stats;          /* [DSC_GRPO_NUM_STATS] */
} policy_bufs;

static dsc_status policy_alloc(dsc_model *m, const char *fn, int64_t B, int64_t T, policy_bufs *b) {
  const int64_t V = m->cfg.vocab_size;
  size_t total = 0, o[8];
  int ok = add_bytes(&total, B * T * V, sizeof(float), &o[0]);
  ok = ok && add_bytes(&total, B * T, sizeof(float), &o[1]);
  ok = ok && add_bytes(&total, B * T, sizeof(float), &o[2]);
  ok = ok && add_bytes(&total, B * T, sizeof(float), &o[3]);
  ok = ok && add_bytes(&total, B, sizeof(float), &o[4]);
  ok = ok && add_bytes(&total, B, sizeof(int32_t), &o[5]);
  ok = ok && add_bytes(&total, 1, sizeof(float), &o[6]);
  ok = ok && add_bytes(&total, DSC_GRPO_NUM_STATS, sizeof(float), &o[7]);
  DSC_CHECK(ok, DSC_ERR_OUT_OF_MEMORY, fn, "tokens: [%lld, %lld] x vocab %lld logits do not fit in memory",
            (long long)B, (long long)T, (long long)V);
  DSC_TRY(dsc_model_alloc(m, total, &b->mem));
  char *base = (char *)b->mem;
  b->logits = (float *)(base + o[0]);
  b->lp = (float *)(base + o[1]);
  b->ent = (float *)(base + o[2]);
  b->dlp = (float *)(base + o[3]);
  b->adv = (float *)(base + o[4]);
  b->keep = (int32_t *)(base + o[5]);
  b->loss = (float *)(base + o[6]);
  b->stats = (float *)(base + o[7]);
  return DSC_OK;
}

/* The step once the buffers exist (the caller frees them whatever happens). tgt_h, rew_h:
 * host copies of targets [B, T] and rewards [B]. */
static dsc_status policy_run(dsc_model *m, const char *fn, const dsc_train_options *opt, const dsc_grpo_params *p,
                             const DLTensor *tokens, const DLTensor *targets, const DLTensor *rewards,
                             const DLTensor *old_logprobs, const DLTensor *ref_logprobs, const int32_t *tgt_h,
                             const float *rew_h, policy_bufs *b, dsc_policy_stats *stats) {
  dsc_context *ctx = m->ctx;
  const int64_t B = tokens->shape[0], T = tokens->shape[1], V = m->cfg.vocab_size, G = p->group_size;
  const int32_t ig = opt->ignore_index;
  const DLDevice host = {kDLCPU, 0};
  view lg, lp, ent, dlp, adv, keep, loss, sv;
  mk(&lg, m, b->logits, DSC_DTYPE_FLOAT32, 3, B, T, V);
  mk(&lp, m, b->lp, DSC_DTYPE_FLOAT32, 2, B, T, 0);
  mk(&ent, m, b->ent, DSC_DTYPE_FLOAT32, 2, B, T, 0);
  mk(&dlp, m, b->dlp, DSC_DTYPE_FLOAT32, 2, B, T, 0);
  mk(&adv, m, b->adv, DSC_DTYPE_FLOAT32, 1, B, 0, 0);
  mk(&keep, m, b->keep, DSC_DTYPE_INT32, 1, B, 0, 0);
  mk(&loss, m, b->loss, DSC_DTYPE_FLOAT32, 1, 1, 0, 0);
  mk(&sv, m, b->stats, DSC_DTYPE_FLOAT32, 1, DSC_GRPO_NUM_STATS, 0, 0);

  /* advantages and the groups kept */
  DSC_TRY(dsc_grpo_advantages(ctx, p, rewards, &adv.t, &keep.t));
  int32_t *keep_h = (int32_t *)malloc((size_t)B * sizeof(int32_t));
  float *ent_h = (float *)malloc((size_t)(B * T) * sizeof(float));
  if (!keep_h || !ent_h) {
    free(keep_h);
    free(ent_h);
    return dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
  }
  dsc_status st = dsc_memcpy(ctx, keep_h, host, b->keep, ctx->device, (size_t)B * sizeof(int32_t));
  int64_t kept = 0, dropped = 0;
  for (int64_t i = 0; st == DSC_OK && i < B; i += G) {
    kept += keep_h[i] ? G : 0;
    dropped += !keep_h[i];
  }
  double rm = 0.0, rs = 0.0; /* reward mean and sample std over the batch */
  for (int64_t i = 0; i < B; ++i) rm += (double)rew_h[i];
  rm /= (double)B;
  for (int64_t i = 0; i < B; ++i) rs += ((double)rew_h[i] - rm) * ((double)rew_h[i] - rm);
  rs = B > 1 ? sqrt(rs / (double)(B - 1)) : 0.0;
  float gstats[DSC_GRPO_NUM_STATS] = {0};
  double ent_sum = 0.0;
  dsc_train_stats ts;
  memset(&ts, 0, sizeof ts);
  ts.size = sizeof ts;
  ts.step = m->step;
  ts.load_imbalance = 1.0f;

  if (st == DSC_OK && kept > 0) { /* every group dropped: nothing to learn from, no update */
    st = dsc_model_forward_train(m, tokens, 0, &lg.t, NULL);
    if (st == DSC_OK) st = dsc_token_logprob(ctx, &lg.t, targets, ig, &lp.t, &ent.t);
    if (st == DSC_OK)
      st = dsc_grpo_loss(ctx, p, &lp.t, old_logprobs, ref_logprobs, &adv.t, targets, ig, &keep.t, &loss.t, &dlp.t,
                         &sv.t);
    /* dL/dlogits over the logits, in place: a row is read whole before it is written */
    if (st == DSC_OK) st = dsc_token_logprob_backward(ctx, &lg.t, targets, ig, &dlp.t, &lg.t);
    if (st == DSC_OK) st = dsc_model_backward(m, &lg.t, 0, NULL, 0);
    if (st == DSC_OK) st = dsc_model_optimizer_step(m, opt, &ts);
    if (st == DSC_OK) st = dsc_memcpy(ctx, gstats, host, b->stats, ctx->device, sizeof gstats);
    if (st == DSC_OK) st = dsc_memcpy(ctx, ent_h, host, b->ent, ctx->device, (size_t)(B * T) * sizeof(float));
    if (st == DSC_OK)
      for (int64_t r = 0; r < B; ++r)
        if (keep_h[r])
          for (int64_t t = 0; t < T; ++t)
            if (tgt_h[r * T + t] != ig) ent_sum += (double)ent_h[r * T + t];
  }
  free(keep_h);
  free(ent_h);
  if (st != DSC_OK || !stats) return st;
  const double ntok = (double)gstats[DSC_GRPO_STAT_TOKENS];
  stats->loss = gstats[DSC_GRPO_STAT_LOSS];
  stats->policy_loss = gstats[DSC_GRPO_STAT_POLICY_LOSS];
  stats->kl = gstats[DSC_GRPO_STAT_KL];
  stats->clip_low = gstats[DSC_GRPO_STAT_CLIP_LOW];
  stats->clip_high = gstats[DSC_GRPO_STAT_CLIP_HIGH];
  stats->clip_region = gstats[DSC_GRPO_STAT_CLIP_REGION];
  stats->ratio_mean = gstats[DSC_GRPO_STAT_RATIO_MEAN];
  stats->entropy = ntok > 0 ? (float)(ent_sum / ntok) : 0.0f;
  stats->reward_mean = (float)rm;
  stats->reward_std = (float)rs;
  stats->grad_norm = ts.grad_norm;
  stats->load_imbalance = ts.load_imbalance;
  stats->step = ts.step;
  stats->tokens = (int64_t)ntok;
  stats->sequences = kept;
  stats->groups_dropped = dropped;
  return DSC_OK;
}

dsc_status dsc_model_policy_step(dsc_model *m, const dsc_train_options *opt, const dsc_grpo_params *p,
                                 const DLTensor *tokens, const DLTensor *targets, const DLTensor *rewards,
                                 const DLTensor *old_logprobs, const DLTensor *ref_logprobs,
                                 dsc_policy_stats *stats) {
  static const char *const FN = "dsc_model_policy_step";
  char buf[256];
  DSC_CHECK(m != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "model: expected a model, got NULL");
  DSC_TRY(dsc_model_check_not_frozen(m, FN, "training"));
  DSC_TRY(check_options(FN, opt));
  DSC_TRY(dsc_grpo_check_params(FN, p));
  DSC_CHECK(stats == NULL || stats->size >= sizeof(dsc_policy_stats), DSC_ERR_INVALID_ARGUMENT, FN,
            "stats: expected size = %zu", sizeof(dsc_policy_stats));
  DSC_TRY(dsc_model_check_ids(m, FN, "tokens", tokens, NULL, 0, 0));
  DSC_TRY(dsc_model_check_ids(m, FN, "targets", targets, tokens, opt->ignore_index, 1));
  const int64_t B = tokens->shape[0], T = tokens->shape[1];
  DSC_TRY(dsc_check_tensor(m->ctx, FN, "rewards", rewards, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_CHECK(rewards->ndim == 1 && rewards->shape[0] == B, DSC_ERR_SHAPE, FN,
            "rewards: expected shape (%lld) (one per completion), got %s", (long long)B,
            dsc_shape_str(rewards, buf, sizeof buf));
  DSC_CHECK(B % p->group_size == 0, DSC_ERR_SHAPE, FN,
            "tokens: expected a batch of whole groups (a multiple of p->group_size = %d rows), got %lld rows",
            (int)p->group_size, (long long)B);
  if (old_logprobs) DSC_TRY(check_bt(m, FN, "old_logprobs", old_logprobs, B, T));
  DSC_CHECK(p->beta == 0.0f || ref_logprobs != NULL, DSC_ERR_INVALID_ARGUMENT, FN,
            "ref_logprobs: expected the reference model's log-probabilities with p->beta = %g > 0, got NULL",
            (double)p->beta);
  if (ref_logprobs) DSC_TRY(check_bt(m, FN, "ref_logprobs", ref_logprobs, B, T));

  /* host copies: every row needs a completion token; rewards finite (and their statistics) */
  int32_t *tgt_h = NULL;
  DSC_TRY(host_targets(m, FN, targets, &tgt_h));
  for (int64_t r = 0; r < B; ++r) {
    int64_t n = 0;
    for (int64_t t = 0; t < T; ++t) n += tgt_h[r * T + t] != opt->ignore_index;
    if (n == 0) {
      free(tgt_h);
      return dsc_error(DSC_ERR_INVALID_ARGUMENT, FN,
                       "targets: expected at least one completion token (a target other than ignore_index %d) in "
                       "every row, got none in row %lld (an empty completion)",
                       (int)opt->ignore_index, (long long)r);
    }
  }
  float *rew_h = (float *)malloc((size_t)B * sizeof(float));
  dsc_status st = rew_h ? dsc_memcpy(m->ctx, rew_h, (DLDevice){kDLCPU, 0}, dsc_data(rewards), rewards->device,
                                     (size_t)B * sizeof(float))
                        : dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  for (int64_t i = 0; st == DSC_OK && i < B; ++i)
    if (!isfinite(rew_h[i]))
      st = dsc_error(DSC_ERR_INVALID_ARGUMENT, FN, "rewards: expected finite values, got %g at index %lld",
                     (double)rew_h[i], (long long)i);
  policy_bufs bufs;
  memset(&bufs, 0, sizeof bufs);
  if (st == DSC_OK) st = policy_alloc(m, FN, B, T, &bufs);
  if (st == DSC_OK)
    st = policy_run(m, FN, opt, p, tokens, targets, rewards, old_logprobs, ref_logprobs, tgt_h, rew_h, &bufs, stats);
  if (bufs.mem) dsc_free(m->ctx, bufs.mem);
  free(tgt_h);
  free(rew_h);
  return st;
}

/* ------------------------------------------------------------------ distillation */

void dsc_distill_params_default(dsc_distill_params *p) {
  if (!p) return;
  p->size = sizeof *p;
  p->temperature = 1.0f;
  p->alpha = 0.5f;
}

dsc_status dsc_model_distill_step(dsc_model *m, const dsc_train_options *opt, const dsc_distill_params *p,
                                  const DLTensor *tokens, const DLTensor *targets, const DLTensor *teacher_indices,
                                  const DLTensor *teacher_logits, dsc_distill_stats *stats) {
  static const char *const FN = "dsc_model_distill_step";
  char buf[256];
  DSC_CHECK(m != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "model: expected a model, got NULL");
  DSC_TRY(dsc_model_check_not_frozen(m, FN, "training"));
  DSC_TRY(check_options(FN, opt));
  DSC_CHECK(p != NULL && p->size >= sizeof(dsc_distill_params), DSC_ERR_INVALID_ARGUMENT, FN,
            "p: expected a dsc_distill_params with size = %zu (dsc_distill_params_default)",
            sizeof(dsc_distill_params));
  DSC_CHECK(isfinite(p->temperature) && p->temperature > 0.0f, DSC_ERR_INVALID_ARGUMENT, FN,
            "p->temperature: expected a finite number > 0, got %g", (double)p->temperature);
  DSC_CHECK(p->alpha >= 0.0f && p->alpha <= 1.0f, DSC_ERR_INVALID_ARGUMENT, FN,
            "p->alpha: expected a number in [0, 1], got %g", (double)p->alpha);
  DSC_CHECK(stats == NULL || stats->size >= sizeof(dsc_distill_stats), DSC_ERR_INVALID_ARGUMENT, FN,
            "stats: expected size = %zu", sizeof(dsc_distill_stats));
  DSC_TRY(dsc_model_check_ids(m, FN, "tokens", tokens, NULL, 0, 0));
  DSC_TRY(dsc_model_check_ids(m, FN, "targets", targets, tokens, opt->ignore_index, 1));
  const int64_t B = tokens->shape[0], T = tokens->shape[1], V = m->cfg.vocab_size;
  DSC_TRY(dsc_check_tensor(m->ctx, FN, "teacher_logits", teacher_logits, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_CHECK(teacher_logits->ndim == 3 && teacher_logits->shape[0] == B && teacher_logits->shape[1] == T &&
                teacher_logits->shape[2] >= 1 && teacher_logits->shape[2] <= V,
            DSC_ERR_SHAPE, FN, "teacher_logits: expected shape (%lld, %lld, K) with 1 <= K <= %lld, got %s",
            (long long)B, (long long)T, (long long)V, dsc_shape_str(teacher_logits, buf, sizeof buf));
  DSC_TRY(dsc_check_tensor(m->ctx, FN, "teacher_indices", teacher_indices, DSC_DT(DSC_DTYPE_INT32)));
  DSC_TRY(dsc_check_same_shape(FN, "teacher_indices", teacher_indices, "teacher_logits", teacher_logits));
  /* ids in [0, V) (compared with themselves for the shape) */
  DSC_TRY(dsc_model_check_ids(m, FN, "teacher_indices", teacher_indices, teacher_indices, 0, 0));
  const int64_t K = teacher_logits->shape[2];

  int32_t *tgt_h = NULL;
  DSC_TRY(host_targets(m, FN, targets, &tgt_h));
  int64_t n_valid = 0;
  for (int64_t i = 0; i < B * T; ++i) n_valid += tgt_h[i] != opt->ignore_index;
  free(tgt_h);
  size_t total = 0, o[4];
  int ok = add_bytes(&total, B * T * V, sizeof(float), &o[0]);
  ok = ok && add_bytes(&total, B * T * V, sizeof(float), &o[1]);
  ok = ok && add_bytes(&total, 1, sizeof(float), &o[2]);
  ok = ok && add_bytes(&total, 1, sizeof(float), &o[3]);
  DSC_CHECK(ok, DSC_ERR_OUT_OF_MEMORY, FN, "tokens: [%lld, %lld] x vocab %lld logits do not fit in memory",
            (long long)B, (long long)T, (long long)V);
  void *mem = NULL;
  DSC_TRY(dsc_model_alloc(m, total, &mem));
  char *base = (char *)mem;
  view lg, lkl, lce, ti, tl, tg, lg2, dkl2;
  mk(&lg, m, base + o[0], DSC_DTYPE_FLOAT32, 3, B, T, V); /* logits, then dL/dlogits */
  mk(&lkl, m, base + o[2], DSC_DTYPE_FLOAT32, 1, 1, 0, 0);
  mk(&lce, m, base + o[3], DSC_DTYPE_FLOAT32, 1, 1, 0, 0);
  /* [B*T, .] views: the rows of the ops */
  mk(&lg2, m, base + o[0], DSC_DTYPE_FLOAT32, 2, B * T, V, 0);
  mk(&dkl2, m, base + o[1], DSC_DTYPE_FLOAT32, 2, B * T, V, 0); /* the KL term's gradient */
  mk(&ti, m, dsc_data(teacher_indices), DSC_DTYPE_INT32, 2, B * T, K, 0);
  mk(&tl, m, dsc_data(teacher_logits), DSC_DTYPE_FLOAT32, 2, B * T, K, 0);
  mk(&tg, m, dsc_data(targets), DSC_DTYPE_INT32, 1, B * T, 0, 0);
  const float tau = p->temperature, a = p->alpha;
  dsc_train_stats ts;
  memset(&ts, 0, sizeof ts);
  ts.size = sizeof ts;
  float kl = 0.0f, ce = 0.0f;
  const DLDevice host = {kDLCPU, 0};
  dsc_status st = dsc_model_forward_train(m, tokens, 0, &lg.t, NULL);
  if (st == DSC_OK)
    st = dsc_topk_kl(m->ctx, &lg2.t, &ti.t, &tl.t, &tg.t, opt->ignore_index, tau, a * tau * tau, &lkl.t, &dkl2.t);
  /* the hard labels' gradient over the logits, in place, then the KL term's added */
  if (st == DSC_OK)
    st = dsc_cross_entropy(m->ctx, &lg2.t, &tg.t, opt->ignore_index, 1.0f - a, &lce.t, &lg2.t, NULL);
  if (st == DSC_OK) st = dsc_add(m->ctx, &lg2.t, &dkl2.t, &lg2.t);
  if (st == DSC_OK) st = dsc_model_backward(m, &lg.t, 0, NULL, 0);
  if (st == DSC_OK) st = dsc_model_optimizer_step(m, opt, &ts);
  if (st == DSC_OK) st = dsc_memcpy(m->ctx, &kl, host, base + o[2], m->ctx->device, sizeof kl);
  if (st == DSC_OK) st = dsc_memcpy(m->ctx, &ce, host, base + o[3], m->ctx->device, sizeof ce);
  dsc_free(m->ctx, mem);
  if (st != DSC_OK || !stats) return st;
  stats->kl = kl;
  stats->ce = ce;
  stats->loss = (float)((double)a * tau * tau * kl + (1.0 - (double)a) * ce);
  stats->grad_norm = ts.grad_norm;
  stats->load_imbalance = ts.load_imbalance;
  stats->step = ts.step;
  stats->tokens = n_valid;
  return DSC_OK;
}
