/*
 * ops/elementwise.c -- validation and dispatch of elementwise ops (dsc_add).
 *
 * Legend: n elements of a (any shape).
 */
#include "backend.h"

dsc_status dsc_add(dsc_context *ctx, const DLTensor *a, const DLTensor *b, DLTensor *out) {
  static const char *const FN = "dsc_add";
  DSC_TRY(dsc_check_tensor(ctx, FN, "a", a, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "b", b, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "out", out, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_same_dtype(FN, "b", b, "a", a));
  DSC_TRY(dsc_check_same_dtype(FN, "out", out, "a", a));
  DSC_TRY(dsc_check_same_shape(FN, "b", b, "a", a));
  DSC_TRY(dsc_check_same_shape(FN, "out", out, "a", a));
  /* elementwise: out may be a or b itself (each element is read before it is written) */
  DSC_TRY(dsc_check_inplace_or_disjoint(FN, "out", out, "a", a));
  DSC_TRY(dsc_check_inplace_or_disjoint(FN, "out", out, "b", b));
  const int64_t n = dsc_numel(a);
  if (n == 0) return DSC_OK;
  const dsc_dtype dt = dsc_tensor_dtype(a);
  return DSC_DISPATCH(add, ctx, dt, n, dsc_data(a), dsc_data(b), dsc_data(out));
}
