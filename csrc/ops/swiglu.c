/*
 * ops/swiglu.c -- validation and dispatch of SwiGLU (forward, backward).
 *
 * Checks ctx and every tensor (device, dtype, contiguity), then shapes; then calls
 * dsc_cpu_swiglu_* or dsc_cuda_swiglu_* on the flattened elements.
 *
 * Legend: F intermediate features (last dim); n all elements of gate.
 */
#include "backend.h"

dsc_status dsc_swiglu_forward(dsc_context *ctx, const DLTensor *gate, const DLTensor *up,
                              DLTensor *out) {
  static const char *const FN = "dsc_swiglu_forward";
  DSC_TRY(dsc_check_tensor(ctx, FN, "gate", gate, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "up", up, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "out", out, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_same_dtype(FN, "up", up, "gate", gate));
  DSC_TRY(dsc_check_same_dtype(FN, "out", out, "gate", gate));
  DSC_TRY(dsc_check_same_shape(FN, "up", up, "gate", gate));
  DSC_TRY(dsc_check_same_shape(FN, "out", out, "gate", gate));
  /* elementwise (each element read before it is written): out may be gate or up itself */
  DSC_TRY(dsc_check_inplace_or_disjoint(FN, "out", out, "gate", gate));
  DSC_TRY(dsc_check_inplace_or_disjoint(FN, "out", out, "up", up));
  const int64_t n = dsc_numel(gate);
  if (n == 0) return DSC_OK;

  const dsc_dtype dt = dsc_tensor_dtype(gate);
  return DSC_DISPATCH(swiglu_fwd, ctx, dt, n, dsc_data(gate), dsc_data(up), dsc_data(out));
}

dsc_status dsc_swiglu_backward(dsc_context *ctx, const DLTensor *dout, const DLTensor *gate,
                               const DLTensor *up, DLTensor *dgate, DLTensor *dup) {
  static const char *const FN = "dsc_swiglu_backward";
  DSC_TRY(dsc_check_tensor(ctx, FN, "dout", dout, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "gate", gate, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "up", up, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "dgate", dgate, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "dup", dup, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_same_dtype(FN, "dout", dout, "gate", gate));
  DSC_TRY(dsc_check_same_dtype(FN, "up", up, "gate", gate));
  DSC_TRY(dsc_check_same_dtype(FN, "dgate", dgate, "gate", gate));
  DSC_TRY(dsc_check_same_dtype(FN, "dup", dup, "gate", gate));
  DSC_TRY(dsc_check_same_shape(FN, "dout", dout, "gate", gate));
  DSC_TRY(dsc_check_same_shape(FN, "up", up, "gate", gate));
  DSC_TRY(dsc_check_same_shape(FN, "dgate", dgate, "gate", gate));
  DSC_TRY(dsc_check_same_shape(FN, "dup", dup, "gate", gate));
  DSC_TRY(dsc_check_no_overlap(FN, "dup", dup, "dgate", dgate));
  /* elementwise (all three inputs of an element read before its outputs are written):
   * each output may be one of the inputs itself */
  DSC_TRY(dsc_check_inplace_or_disjoint(FN, "dgate", dgate, "dout", dout));
  DSC_TRY(dsc_check_inplace_or_disjoint(FN, "dgate", dgate, "gate", gate));
  DSC_TRY(dsc_check_inplace_or_disjoint(FN, "dgate", dgate, "up", up));
  DSC_TRY(dsc_check_inplace_or_disjoint(FN, "dup", dup, "dout", dout));
  DSC_TRY(dsc_check_inplace_or_disjoint(FN, "dup", dup, "gate", gate));
  DSC_TRY(dsc_check_inplace_or_disjoint(FN, "dup", dup, "up", up));
  const int64_t n = dsc_numel(gate);
  if (n == 0) return DSC_OK;

  const dsc_dtype dt = dsc_tensor_dtype(gate);
  return DSC_DISPATCH(swiglu_bwd, ctx, dt, n, dsc_data(dout), dsc_data(gate), dsc_data(up), dsc_data(dgate),
                      dsc_data(dup));
}
