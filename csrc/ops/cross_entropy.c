/*
 * ops/cross_entropy.c -- validation and dispatch of the fused softmax cross-entropy.
 *
 * Checks ctx and every tensor (device, dtype, contiguity), then ranks and shapes, then
 * values (grad_scale, and the targets through the backend's index_range on the device);
 * then calls dsc_cpu_cross_entropy or dsc_cuda_cross_entropy.
 *
 * Legend: N rows (all leading dims of logits), V vocabulary (last dim).
 */
#include <math.h>

#include "backend.h"

dsc_status dsc_cross_entropy(dsc_context *ctx, const DLTensor *logits, const DLTensor *targets,
                             int64_t ignore_index, float grad_scale, DLTensor *loss,
                             DLTensor *dlogits, DLTensor *lse) {
  static const char *const FN = "dsc_cross_entropy";
  char buf[256];
  DSC_TRY(dsc_check_tensor(ctx, FN, "logits", logits, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "targets", targets, DSC_DT_INDEX));
  DSC_TRY(dsc_check_tensor(ctx, FN, "loss", loss, DSC_DT(DSC_DTYPE_FLOAT32)));
  if (dlogits) DSC_TRY(dsc_check_tensor(ctx, FN, "dlogits", dlogits, DSC_DT_FLOAT));
  if (lse) DSC_TRY(dsc_check_tensor(ctx, FN, "lse", lse, DSC_DT(DSC_DTYPE_FLOAT32)));
  if (dlogits) DSC_TRY(dsc_check_same_dtype(FN, "dlogits", dlogits, "logits", logits));

  DSC_TRY(dsc_check_ndim(FN, "logits", logits, 1, 16, "(..., V)"));
  const int64_t V = dsc_last_dim(logits), N = dsc_rows(logits);
  /* targets: the leading dims of logits. */
  DSC_TRY(dsc_check_shape(FN, "targets", targets, logits->ndim - 1, logits->shape));
  DSC_CHECK((loss->ndim == 0 || (loss->ndim == 1 && loss->shape[0] == 1)), DSC_ERR_SHAPE, FN,
            "loss: expected shape () or (1), got %s", dsc_shape_str(loss, buf, sizeof buf));
  if (dlogits) DSC_TRY(dsc_check_same_shape(FN, "dlogits", dlogits, "logits", logits));
  if (lse) {
    /* lse: the leading dims of logits, or flat (N). */
    const int flat = lse->ndim == 1 && lse->shape[0] == N;
    if (!flat) DSC_TRY(dsc_check_shape(FN, "lse", lse, logits->ndim - 1, logits->shape));
  }
  DSC_CHECK(V > 0 || N == 0, DSC_ERR_SHAPE, FN,
            "logits: expected a last dim V > 0, got %s", dsc_shape_str(logits, buf, sizeof buf));
  DSC_CHECK(isfinite(grad_scale), DSC_ERR_INVALID_ARGUMENT, FN,
            "grad_scale: expected a finite number, got %g", (double)grad_scale);
  /* a row's max, sum and target logit are read before the row is written: dlogits may be
   * logits itself; nothing else may share memory */
  DSC_TRY(dsc_check_inplace_or_disjoint(FN, "dlogits", dlogits, "logits", logits));
  DSC_TRY(dsc_check_disjoint(FN, "dlogits", dlogits, "targets", targets, "loss", loss, "lse", lse, NULL));
  DSC_TRY(dsc_check_disjoint(FN, "loss", loss, "logits", logits, "targets", targets, "lse", lse, NULL));
  DSC_TRY(dsc_check_disjoint(FN, "lse", lse, "logits", logits, "targets", targets, NULL));

  const int tgt64 = dsc_tensor_dtype(targets) == DSC_DTYPE_INT64;
  if (N > 0) {
    /* Deferred mode: a bad target's row is treated as ignored (no loss, no gradient, not
     * counted). */
    const dsc_index_site site = {FN, "targets", NULL, DSC_IDX_MSG_RANGE_OR_SKIP};
    DSC_TRY(dsc_index_check(ctx, &site, N, tgt64, dsc_data(targets), 0, V, ignore_index));
  }

  /* N == 0 still runs: the loss of no token is 0 and must be written. */
  const dsc_dtype dt = dsc_tensor_dtype(logits);
  float *loss_p = (float *)dsc_data(loss);
  void *dl_p = dlogits ? dsc_data(dlogits) : NULL;
  float *lse_p = lse ? (float *)dsc_data(lse) : NULL;
  return DSC_DISPATCH(cross_entropy, ctx, dt, N, V, dsc_data(logits), tgt64, dsc_data(targets), ignore_index,
                      grad_scale, loss_p, dl_p, lse_p);
}
