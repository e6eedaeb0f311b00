/*
 * ops/token_logprob.c -- validation and dispatch of the per-token log-probabilities
 * (dsc_token_logprob) and their backward (dsc_token_logprob_backward).
 *
 * Checks ctx and every tensor (device, dtype, contiguity), ranks and shapes, aliasing, then
 * the targets' values through the backend's index_range on the device; then calls
 * dsc_cpu_token_logprob* or dsc_cuda_token_logprob*.
 *
 * Legend: N rows (all leading dims of logits), V vocabulary (last dim).
 */
#include "backend.h"

/* Logits and targets: the checks both functions share. Sets *N, *V. */
static dsc_status check_logits_targets(dsc_context *ctx, const char *fn, const DLTensor *logits,
                                       const DLTensor *targets, int64_t ignore_index, int64_t *N,
                                       int64_t *V) {
  char buf[256];
  DSC_TRY(dsc_check_tensor(ctx, fn, "logits", logits, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, fn, "targets", targets, DSC_DT_INDEX));
  DSC_TRY(dsc_check_ndim(fn, "logits", logits, 1, 16, "(..., V)"));
  *V = dsc_last_dim(logits);
  *N = dsc_rows(logits);
  DSC_TRY(dsc_check_shape(fn, "targets", targets, logits->ndim - 1, logits->shape));
  DSC_CHECK(*V > 0 || *N == 0, DSC_ERR_SHAPE, fn, "logits: expected a last dim V > 0, got %s",
            dsc_shape_str(logits, buf, sizeof buf));
  if (*N == 0) return DSC_OK;
  const int tgt64 = dsc_tensor_dtype(targets) == DSC_DTYPE_INT64;
  /* Deferred mode: a bad target's row is treated as ignored (zeros). */
  const dsc_index_site site = {fn, "targets", NULL, DSC_IDX_MSG_RANGE_OR_SKIP};
  return dsc_index_check(ctx, &site, *N, tgt64, dsc_data(targets), 0, *V, ignore_index);
}

dsc_status dsc_token_logprob(dsc_context *ctx, const DLTensor *logits, const DLTensor *targets,
                             int64_t ignore_index, DLTensor *logprobs, DLTensor *entropy) {
  static const char *const FN = "dsc_token_logprob";
  DSC_TRY(dsc_check_tensor(ctx, FN, "logits", logits, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "targets", targets, DSC_DT_INDEX));
  DSC_TRY(dsc_check_tensor(ctx, FN, "logprobs", logprobs, DSC_DT(DSC_DTYPE_FLOAT32)));
  if (entropy) DSC_TRY(dsc_check_tensor(ctx, FN, "entropy", entropy, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_ndim(FN, "logits", logits, 1, 16, "(..., V)"));
  DSC_TRY(dsc_check_shape(FN, "logprobs", logprobs, logits->ndim - 1, logits->shape));
  if (entropy) DSC_TRY(dsc_check_shape(FN, "entropy", entropy, logits->ndim - 1, logits->shape));
  DSC_TRY(dsc_check_disjoint(FN, "logprobs", logprobs, "logits", logits, "targets", targets,
                             "entropy", entropy, NULL));
  DSC_TRY(dsc_check_disjoint(FN, "entropy", entropy, "logits", logits, "targets", targets, NULL));
  int64_t N = 0, V = 0;
  DSC_TRY(check_logits_targets(ctx, FN, logits, targets, ignore_index, &N, &V));
  if (N == 0) return DSC_OK;

  const dsc_dtype dt = dsc_tensor_dtype(logits);
  const int tgt64 = dsc_tensor_dtype(targets) == DSC_DTYPE_INT64;
  float *ent = entropy ? (float *)dsc_data(entropy) : NULL;
  return DSC_DISPATCH(token_logprob, ctx, dt, N, V, dsc_data(logits), tgt64, dsc_data(targets), ignore_index,
                      (float *)dsc_data(logprobs), ent);
}

dsc_status dsc_token_logprob_backward(dsc_context *ctx, const DLTensor *logits, const DLTensor *targets,
                                      int64_t ignore_index, const DLTensor *dlogprobs, DLTensor *dlogits) {
  static const char *const FN = "dsc_token_logprob_backward";
  DSC_TRY(dsc_check_tensor(ctx, FN, "logits", logits, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "targets", targets, DSC_DT_INDEX));
  DSC_TRY(dsc_check_tensor(ctx, FN, "dlogprobs", dlogprobs, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "dlogits", dlogits, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_same_dtype(FN, "dlogits", dlogits, "logits", logits));
  DSC_TRY(dsc_check_ndim(FN, "logits", logits, 1, 16, "(..., V)"));
  DSC_TRY(dsc_check_shape(FN, "dlogprobs", dlogprobs, logits->ndim - 1, logits->shape));
  DSC_TRY(dsc_check_same_shape(FN, "dlogits", dlogits, "logits", logits));
  /* a row is read whole before it is written: dlogits may be logits itself, nothing else */
  DSC_TRY(dsc_check_inplace_or_disjoint(FN, "dlogits", dlogits, "logits", logits));
  DSC_TRY(dsc_check_disjoint(FN, "dlogits", dlogits, "targets", targets, "dlogprobs", dlogprobs, NULL));
  int64_t N = 0, V = 0;
  DSC_TRY(check_logits_targets(ctx, FN, logits, targets, ignore_index, &N, &V));
  if (N == 0) return DSC_OK;

  const dsc_dtype dt = dsc_tensor_dtype(logits);
  const int tgt64 = dsc_tensor_dtype(targets) == DSC_DTYPE_INT64;
  return DSC_DISPATCH(token_logprob_bwd, ctx, dt, N, V, dsc_data(logits), tgt64, dsc_data(targets),
                      ignore_index, (const float *)dsc_data(dlogprobs), dsc_data(dlogits));
}
