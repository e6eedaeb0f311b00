/*
 * ops/rms_norm.c -- validation and dispatch of RMSNorm (forward, backward).
 *
 * The pattern every file in csrc/ops follows: check ctx and every tensor (device,
 * dtype, contiguity), then ranks and shapes, then values; only then call
 * dsc_cpu_* or dsc_cuda_*. Messages name the public function and the argument.
 *
 * Legend: N rows (all leading dims of x), D features (last dim of x).
 */
#include <math.h>

#include "backend.h"

dsc_status dsc_rms_norm_forward(dsc_context *ctx, const DLTensor *x, const DLTensor *w, float eps,
                                DLTensor *y, DLTensor *rstd) {
  static const char *const FN = "dsc_rms_norm_forward";
  DSC_TRY(dsc_check_tensor(ctx, FN, "x", x, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "w", w, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "y", y, DSC_DT_FLOAT));
  if (rstd) DSC_TRY(dsc_check_tensor(ctx, FN, "rstd", rstd, DSC_DT(DSC_DTYPE_FLOAT32)));

  DSC_TRY(dsc_check_ndim(FN, "x", x, 1, 16, "(..., D)"));
  const int64_t D = dsc_last_dim(x), N = dsc_rows(x);
  DSC_TRY(dsc_check_same_dtype(FN, "w", w, "x", x));
  DSC_TRY(dsc_check_same_dtype(FN, "y", y, "x", x));
  DSC_TRY(dsc_check_shape(FN, "w", w, 1, &D));
  DSC_TRY(dsc_check_same_shape(FN, "y", y, "x", x));
  if (rstd) DSC_TRY(dsc_check_shape(FN, "rstd", rstd, x->ndim - 1, x->shape));
  DSC_CHECK(isfinite(eps) && eps >= 0.0f, DSC_ERR_INVALID_ARGUMENT, FN,
            "eps: expected a finite number >= 0, got %g", (double)eps);
  DSC_CHECK(D > 0 || N == 0, DSC_ERR_SHAPE, FN, "x: expected a last dim D > 0, got 0");
  /* a row is read whole before it is written: y may be x itself, nothing else */
  DSC_TRY(dsc_check_inplace_or_disjoint(FN, "y", y, "x", x));
  DSC_TRY(dsc_check_no_overlap(FN, "y", y, "w", w));
  DSC_TRY(dsc_check_disjoint(FN, "rstd", rstd, "x", x, "w", w, "y", y, NULL));
  if (N == 0) return DSC_OK;

  const dsc_dtype dt = dsc_tensor_dtype(x);
  float *rstd_p = rstd ? (float *)dsc_data(rstd) : NULL;
  return DSC_DISPATCH(rms_norm_fwd, ctx, dt, N, D, dsc_data(x), dsc_data(w), eps, dsc_data(y), rstd_p);
}

dsc_status dsc_rms_norm_backward(dsc_context *ctx, const DLTensor *dy, const DLTensor *x,
                                 const DLTensor *w, const DLTensor *rstd, float eps, DLTensor *dx,
                                 DLTensor *dw) {
  static const char *const FN = "dsc_rms_norm_backward";
  DSC_TRY(dsc_check_tensor(ctx, FN, "dy", dy, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "x", x, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "w", w, DSC_DT_FLOAT));
  if (rstd) DSC_TRY(dsc_check_tensor(ctx, FN, "rstd", rstd, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "dx", dx, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "dw", dw, DSC_DT(DSC_DTYPE_FLOAT32)));

  DSC_TRY(dsc_check_ndim(FN, "x", x, 1, 16, "(..., D)"));
  const int64_t D = dsc_last_dim(x), N = dsc_rows(x);
  DSC_TRY(dsc_check_same_dtype(FN, "dy", dy, "x", x));
  DSC_TRY(dsc_check_same_dtype(FN, "w", w, "x", x));
  DSC_TRY(dsc_check_same_dtype(FN, "dx", dx, "x", x));
  DSC_TRY(dsc_check_same_shape(FN, "dy", dy, "x", x));
  DSC_TRY(dsc_check_shape(FN, "w", w, 1, &D));
  if (rstd) DSC_TRY(dsc_check_shape(FN, "rstd", rstd, x->ndim - 1, x->shape));
  DSC_TRY(dsc_check_same_shape(FN, "dx", dx, "x", x));
  DSC_TRY(dsc_check_shape(FN, "dw", dw, 1, &D));
  DSC_CHECK(isfinite(eps) && eps >= 0.0f, DSC_ERR_INVALID_ARGUMENT, FN,
            "eps: expected a finite number >= 0, got %g", (double)eps);
  DSC_CHECK(D > 0 || N == 0, DSC_ERR_SHAPE, FN, "x: expected a last dim D > 0, got 0");
  /* dw and r are finished before dx is written, and a dx row only after its dy and x rows
   * are read: dx may be dy or x itself; dw shares nothing */
  DSC_TRY(dsc_check_inplace_or_disjoint(FN, "dx", dx, "dy", dy));
  DSC_TRY(dsc_check_inplace_or_disjoint(FN, "dx", dx, "x", x));
  DSC_TRY(dsc_check_disjoint(FN, "dx", dx, "w", w, "rstd", rstd, "dw", dw, NULL));
  DSC_TRY(dsc_check_disjoint(FN, "dw", dw, "dy", dy, "x", x, "w", w, "rstd", rstd, NULL));

  const dsc_dtype dt = dsc_tensor_dtype(x);
  const float *rstd_p = rstd ? (const float *)dsc_data(rstd) : NULL;
  return DSC_DISPATCH(rms_norm_bwd, ctx, dt, N, D, dsc_data(dy), dsc_data(x), dsc_data(w), rstd_p, eps,
                      dsc_data(dx), (float *)dsc_data(dw));
}
