/*
 * ops/grpo.c -- validation and dispatch of GRPO: the advantages (dsc_grpo_advantages) and
 * the policy loss with its gradient (dsc_grpo_loss). The formulas are in deepseek_c.h.
 *
 * Checks ctx, the parameters, every tensor (device, dtype, contiguity), ranks and shapes,
 * aliasing, then values through the backend (rewards finite: find_nonfinite; targets and
 * keep need no range); then calls dsc_cpu_grpo_* or dsc_cuda_grpo_*.
 *
 * Legend: B completions, T positions per completion, G group size, n rewards.
 */
#include <math.h>

#include "grpo.h"

void dsc_grpo_params_default(dsc_grpo_params *p) {
  if (!p) return;
  p->size = sizeof *p;
  p->loss_type = DSC_GRPO_LOSS_DAPO;
  p->epsilon_low = 0.2f;
  p->epsilon_high = 0.28f;
  p->beta = 0.001f;
  p->max_completion_length = 0;
  p->group_size = 8;
  p->scale_rewards = DSC_GRPO_SCALE_GROUP;
  p->std_eps = 1e-4f;
  p->drop_zero_std_groups = 0;
}

dsc_status dsc_grpo_check_params(const char *fn, const dsc_grpo_params *p) {
  DSC_CHECK(p != NULL, DSC_ERR_INVALID_ARGUMENT, fn, "p: expected GRPO parameters, got NULL");
  DSC_CHECK(p->size >= sizeof(dsc_grpo_params), DSC_ERR_INVALID_ARGUMENT, fn,
            "p->size: expected sizeof(dsc_grpo_params) = %zu, got %zu", sizeof(dsc_grpo_params), p->size);
  DSC_CHECK(p->loss_type >= DSC_GRPO_LOSS_GRPO && p->loss_type <= DSC_GRPO_LOSS_DAPO, DSC_ERR_INVALID_ARGUMENT,
            fn, "p->loss_type: expected 0 (GRPO), 1 (DR_GRPO) or 2 (DAPO), got %d", (int)p->loss_type);
  DSC_CHECK(isfinite(p->epsilon_low) && p->epsilon_low > 0.0f && p->epsilon_low < 1.0f, DSC_ERR_INVALID_ARGUMENT,
            fn, "p->epsilon_low: expected a number in (0, 1), got %g", (double)p->epsilon_low);
  DSC_CHECK(isfinite(p->epsilon_high) && p->epsilon_high > 0.0f, DSC_ERR_INVALID_ARGUMENT, fn,
            "p->epsilon_high: expected a finite number > 0, got %g", (double)p->epsilon_high);
  DSC_CHECK(isfinite(p->beta) && p->beta >= 0.0f, DSC_ERR_INVALID_ARGUMENT, fn,
            "p->beta: expected a finite number >= 0, got %g", (double)p->beta);
  DSC_CHECK(p->max_completion_length >= 0, DSC_ERR_INVALID_ARGUMENT, fn,
            "p->max_completion_length: expected >= 0 (0: the padded length T), got %d",
            (int)p->max_completion_length);
  DSC_CHECK(p->group_size >= 2, DSC_ERR_INVALID_ARGUMENT, fn,
            "p->group_size: expected >= 2 completions per prompt (a group of 1 has no relative "
            "advantage), got %d", (int)p->group_size);
  DSC_CHECK(p->scale_rewards >= DSC_GRPO_SCALE_GROUP && p->scale_rewards <= DSC_GRPO_SCALE_NONE,
            DSC_ERR_INVALID_ARGUMENT, fn, "p->scale_rewards: expected 0 (GROUP), 1 (BATCH) or 2 (NONE), got %d",
            (int)p->scale_rewards);
  DSC_CHECK(isfinite(p->std_eps) && p->std_eps > 0.0f, DSC_ERR_INVALID_ARGUMENT, fn,
            "p->std_eps: expected a finite number > 0, got %g", (double)p->std_eps);
  DSC_CHECK(p->drop_zero_std_groups == 0 || p->drop_zero_std_groups == 1, DSC_ERR_INVALID_ARGUMENT, fn,
            "p->drop_zero_std_groups: expected 0 or 1, got %d", (int)p->drop_zero_std_groups);
  return DSC_OK;
}

dsc_status dsc_grpo_advantages(dsc_context *ctx, const dsc_grpo_params *p, const DLTensor *rewards,
                               DLTensor *advantages, DLTensor *keep) {
  static const char *const FN = "dsc_grpo_advantages";
  char buf[256];
  DSC_TRY(dsc_grpo_check_params(FN, p));
  DSC_TRY(dsc_check_tensor(ctx, FN, "rewards", rewards, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "advantages", advantages, DSC_DT(DSC_DTYPE_FLOAT32)));
  if (keep) DSC_TRY(dsc_check_tensor(ctx, FN, "keep", keep, DSC_DT(DSC_DTYPE_INT32)));
  DSC_TRY(dsc_check_ndim(FN, "rewards", rewards, 1, 1, "(n)"));
  const int64_t n = rewards->shape[0];
  DSC_CHECK(n >= 1 && n % p->group_size == 0, DSC_ERR_SHAPE, FN,
            "rewards: expected a positive multiple of p->group_size = %d values (the groups' completions "
            "side by side), got %s", (int)p->group_size, dsc_shape_str(rewards, buf, sizeof buf));
  DSC_TRY(dsc_check_shape(FN, "advantages", advantages, 1, &n));
  if (keep) DSC_TRY(dsc_check_shape(FN, "keep", keep, 1, &n));
  DSC_TRY(dsc_check_disjoint(FN, "advantages", advantages, "rewards", rewards, "keep", keep, NULL));
  DSC_TRY(dsc_check_disjoint(FN, "keep", keep, "rewards", rewards, NULL));
  const float *r = (const float *)dsc_data(rewards);
  /* Deferred mode: a non-finite reward makes its group's advantages NaN (no memory is
   * indexed by rewards). */
  const dsc_index_site site = {FN, "rewards", NULL, DSC_IDX_MSG_FINITE};
  DSC_TRY(dsc_finite_check(ctx, &site, n, r));
  float *a = (float *)dsc_data(advantages);
  int32_t *k = keep ? (int32_t *)dsc_data(keep) : NULL;
  return DSC_DISPATCH(grpo_advantages, ctx, p, n, r, a, k);
}

dsc_status dsc_grpo_loss(dsc_context *ctx, const dsc_grpo_params *p, const DLTensor *logprobs,
                         const DLTensor *old_logprobs, const DLTensor *ref_logprobs, const DLTensor *advantages,
                         const DLTensor *targets, int64_t ignore_index, const DLTensor *keep, DLTensor *loss,
                         DLTensor *dlogprobs, DLTensor *stats) {
  static const char *const FN = "dsc_grpo_loss";
  char buf[256];
  DSC_TRY(dsc_grpo_check_params(FN, p));
  const unsigned F32 = DSC_DT(DSC_DTYPE_FLOAT32);
  DSC_TRY(dsc_check_tensor(ctx, FN, "logprobs", logprobs, F32));
  if (old_logprobs) DSC_TRY(dsc_check_tensor(ctx, FN, "old_logprobs", old_logprobs, F32));
  const int use_ref = ref_logprobs != NULL;
  DSC_CHECK(p->beta == 0.0f || use_ref, DSC_ERR_INVALID_ARGUMENT, FN,
            "ref_logprobs: expected the reference model's log-probabilities with p->beta = %g > 0, got NULL",
            (double)p->beta);
  if (use_ref) DSC_TRY(dsc_check_tensor(ctx, FN, "ref_logprobs", ref_logprobs, F32));
  DSC_TRY(dsc_check_tensor(ctx, FN, "advantages", advantages, F32));
  DSC_TRY(dsc_check_tensor(ctx, FN, "targets", targets, DSC_DT_INDEX));
  if (keep) DSC_TRY(dsc_check_tensor(ctx, FN, "keep", keep, DSC_DT(DSC_DTYPE_INT32)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "loss", loss, F32));
  if (dlogprobs) DSC_TRY(dsc_check_tensor(ctx, FN, "dlogprobs", dlogprobs, F32));
  if (stats) DSC_TRY(dsc_check_tensor(ctx, FN, "stats", stats, F32));

  DSC_TRY(dsc_check_ndim(FN, "logprobs", logprobs, 2, 2, "(B, T)"));
  const int64_t B = logprobs->shape[0], T = logprobs->shape[1];
  if (old_logprobs) DSC_TRY(dsc_check_same_shape(FN, "old_logprobs", old_logprobs, "logprobs", logprobs));
  if (use_ref) DSC_TRY(dsc_check_same_shape(FN, "ref_logprobs", ref_logprobs, "logprobs", logprobs));
  DSC_TRY(dsc_check_shape(FN, "advantages", advantages, 1, &B));
  DSC_TRY(dsc_check_same_shape(FN, "targets", targets, "logprobs", logprobs));
  if (keep) DSC_TRY(dsc_check_shape(FN, "keep", keep, 1, &B));
  DSC_CHECK((loss->ndim == 0 || (loss->ndim == 1 && loss->shape[0] == 1)), DSC_ERR_SHAPE, FN,
            "loss: expected shape () or (1), got %s", dsc_shape_str(loss, buf, sizeof buf));
  if (dlogprobs) DSC_TRY(dsc_check_same_shape(FN, "dlogprobs", dlogprobs, "logprobs", logprobs));
  if (stats) {
    const int64_t ns = DSC_GRPO_NUM_STATS;
    DSC_TRY(dsc_check_shape(FN, "stats", stats, 1, &ns));
  }
  const DLTensor *ref = ref_logprobs;
  /* outputs share no byte with an input or with each other */
  const dsc_named_tensor outs[] = {{"loss", loss}, {"dlogprobs", dlogprobs}, {"stats", stats}};
  const dsc_named_tensor ins[] = {{"logprobs", logprobs}, {"old_logprobs", old_logprobs},
                                  {"ref_logprobs", ref},  {"advantages", advantages},
                                  {"targets", targets},   {"keep", keep}};
  DSC_TRY(dsc_check_outputs_disjoint(FN, 3, outs, 6, ins));

  const int64_t Lmax = p->max_completion_length > 0 ? (int64_t)p->max_completion_length : (T > 0 ? T : 1);
  const int tgt64 = dsc_tensor_dtype(targets) == DSC_DTYPE_INT64;
#define OPT_F(t) ((t) ? (const float *)dsc_data(t) : NULL)
  const float *lp = (const float *)dsc_data(logprobs), *old = OPT_F(old_logprobs), *rf = OPT_F(ref);
  const float *adv = (const float *)dsc_data(advantages);
  const int32_t *kp = keep ? (const int32_t *)dsc_data(keep) : NULL;
  float *dl = dlogprobs ? (float *)dsc_data(dlogprobs) : NULL, *sp = stats ? (float *)dsc_data(stats) : NULL;
#undef OPT_F
  return DSC_DISPATCH(grpo_loss, ctx, p, B, T, Lmax, lp, old, rf, adv, tgt64, dsc_data(targets), ignore_index,
                      kp, (float *)dsc_data(loss), dl, sp);
}
