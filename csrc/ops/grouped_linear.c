/*
 * ops/grouped_linear.c -- validation and dispatch of the grouped linear layer (the MoE
 * expert GEMM over the contiguous per-expert layout of dsc_moe_permute), forward and
 * backward.
 *
 * Checks ctx and every tensor (device, dtype, contiguity), then ranks and shapes, then
 * the offsets' values (read on the host: a copy from the device on CUDA); then calls
 * dsc_cpu_grouped_linear_* or its CUDA twin (DSC_DISPATCH, core/backend.h).
 *
 * The public ops check the caller's offsets on the host (on CUDA one copy and one wait: a
 * bad value is DSC_ERR_INVALID_ARGUMENT at the call); for float32 tensors the CUDA kernels
 * then read the device offsets, for bfloat16 ones cuBLASLt runs on the host copy's row
 * slices. The MoE layer's calls (_h, moe_internal.h: offsets from dsc_moe_permute, trusted,
 * rows bounded by R_max) copy nothing on the CPU or for float32 tensors on CUDA
 * (dsc_grouped_linear_reads_device_offsets): the layer never waits for its offsets.
 *
 * Legend: E experts, R rows, K in features, N out features.
 */
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "moe_internal.h"

/* The offsets on the host (*owned: a malloc'ed copy to free), checked:
 * 0 = o_0 <= o_1 <= ... <= o_E = R; bound: o_E <= R (the MoE layer's row bound, rows
 * [o_E, R) padding). */
static dsc_status host_offsets(dsc_context *ctx, const char *fn, const DLTensor *offsets,
                               int64_t E, int64_t R, int bound, const int32_t **out,
                               int32_t **owned) {
  *owned = NULL;
  const int32_t *o = (const int32_t *)dsc_data(offsets);
  if (dsc_ctx_is_cuda(ctx)) {
    int32_t *h = (int32_t *)malloc((size_t)(E + 1) * sizeof(int32_t));
    DSC_CHECK(h != NULL, DSC_ERR_OUT_OF_MEMORY, fn, "group_offsets: host copy of %lld bytes",
              (long long)((E + 1) * 4));
    const DLDevice host = {kDLCPU, 0};
    dsc_status s = dsc_memcpy(ctx, h, host, o, offsets->device, (size_t)(E + 1) * sizeof(int32_t));
    if (s != DSC_OK) {
      free(h);
      return s;
    }
    *owned = h;
    o = h;
  }
  dsc_status s = DSC_OK;
  if (o[0] != 0) {
    s = dsc_error(DSC_ERR_INVALID_ARGUMENT, fn, "group_offsets: expected [0] = 0, got %d",
                  (int)o[0]);
  } else if (bound ? o[E] > R : o[E] != R) {
    s = dsc_error(DSC_ERR_INVALID_ARGUMENT, fn,
                  "group_offsets: expected [%lld] %s %lld (the rows of x), got %d", (long long)E,
                  bound ? "<=" : "=", (long long)R, (int)o[E]);
  } else {
    for (int64_t e = 0; e < E; ++e) {
      if (o[e + 1] < o[e]) {
        s = dsc_error(DSC_ERR_INVALID_ARGUMENT, fn,
                      "group_offsets: expected non-decreasing values, got [%lld] = %d > [%lld] "
                      "= %d",
                      (long long)e, (int)o[e], (long long)(e + 1), (int)o[e + 1]);
        break;
      }
    }
  }
  if (s != DSC_OK) {
    free(*owned);
    *owned = NULL;
    return s;
  }
  *out = o;
  return DSC_OK;
}

int dsc_grouped_linear_reads_device_offsets(const dsc_context *ctx, dsc_dtype dt, dsc_dtype dw_dt) {
#ifdef DSC_WITH_CUDA
  return dsc_ctx_is_cuda(ctx) && dsc_cuda_grouped_linear_on_device(ctx, dt, dw_dt);
#else
  (void)ctx;
  (void)dt;
  (void)dw_dt;
  return 0;
#endif
}

static dsc_status fwd(dsc_context *ctx, const DLTensor *x, const DLTensor *w,
                      const DLTensor *group_offsets, const int32_t *given_h, int bound, DLTensor *y);

dsc_status dsc_grouped_linear_forward(dsc_context *ctx, const DLTensor *x, const DLTensor *w,
                                      const DLTensor *group_offsets, DLTensor *y) {
  return fwd(ctx, x, w, group_offsets, NULL, 0, y);
}

dsc_status dsc_grouped_linear_forward_h(dsc_context *ctx, const DLTensor *x, const DLTensor *w,
                                        const DLTensor *group_offsets, const int32_t *given_h,
                                        DLTensor *y) {
  return fwd(ctx, x, w, group_offsets, given_h, 1, y);
}

static dsc_status fwd(dsc_context *ctx, const DLTensor *x, const DLTensor *w,
                      const DLTensor *group_offsets, const int32_t *given_h, int bound, DLTensor *y) {
  static const char *const FN = "dsc_grouped_linear_forward";
  DSC_TRY(dsc_check_tensor(ctx, FN, "x", x, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "w", w, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "group_offsets", group_offsets, DSC_DT(DSC_DTYPE_INT32)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "y", y, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_same_dtype(FN, "w", w, "x", x));
  DSC_TRY(dsc_check_same_dtype(FN, "y", y, "x", x));
  DSC_TRY(dsc_check_ndim(FN, "x", x, 2, 2, "(R, K)"));
  DSC_TRY(dsc_check_ndim(FN, "w", w, 3, 3, "(n_experts, N, K)"));
  const int64_t R = x->shape[0], K = x->shape[1], E = w->shape[0], N = w->shape[1];
  const int64_t w_shape[3] = {E, N, K}, y_shape[2] = {R, N}, o_shape = E + 1;
  DSC_TRY(dsc_check_shape(FN, "w", w, 3, w_shape));
  DSC_TRY(dsc_check_shape(FN, "group_offsets", group_offsets, 1, &o_shape));
  DSC_TRY(dsc_check_shape(FN, "y", y, 2, y_shape));
  DSC_TRY(dsc_check_disjoint(FN, "y", y, "x", x, "w", w, "group_offsets", group_offsets, NULL));
  const int32_t *offs_h = given_h;
  int32_t *owned = NULL;
  /* the layer's trusted offsets stay on the device when the kernels read them there */
  const int dev = bound && dsc_grouped_linear_reads_device_offsets(ctx, dsc_tensor_dtype(x), DSC_DTYPE_INVALID);
  if (!offs_h && !dev) DSC_TRY(host_offsets(ctx, FN, group_offsets, E, R, bound, &offs_h, &owned));
  dsc_status s = DSC_OK;
  if (R > 0 && N > 0) {
    s = DSC_DISPATCH(grouped_linear_fwd, ctx, dsc_tensor_dtype(x), E, R, N, K, dsc_data(x), dsc_data(w),
                     (const int32_t *)dsc_data(group_offsets), offs_h, dsc_data(y));
  }
  free(owned);
  return s;
}

static dsc_status bwd(dsc_context *ctx, const DLTensor *dy, const DLTensor *x, const DLTensor *w,
                      const DLTensor *group_offsets, const int32_t *given_h, int bound, DLTensor *dx,
                      DLTensor *dw);

dsc_status dsc_grouped_linear_backward(dsc_context *ctx, const DLTensor *dy, const DLTensor *x,
                                       const DLTensor *w, const DLTensor *group_offsets,
                                       DLTensor *dx, DLTensor *dw) {
  return bwd(ctx, dy, x, w, group_offsets, NULL, 0, dx, dw);
}

dsc_status dsc_grouped_linear_backward_h(dsc_context *ctx, const DLTensor *dy, const DLTensor *x,
                                         const DLTensor *w, const DLTensor *group_offsets,
                                         const int32_t *given_h, DLTensor *dx, DLTensor *dw) {
  return bwd(ctx, dy, x, w, group_offsets, given_h, 1, dx, dw);
}

static dsc_status bwd(dsc_context *ctx, const DLTensor *dy, const DLTensor *x, const DLTensor *w,
                      const DLTensor *group_offsets, const int32_t *given_h, int bound, DLTensor *dx,
                      DLTensor *dw) {
  static const char *const FN = "dsc_grouped_linear_backward";
  DSC_TRY(dsc_check_tensor(ctx, FN, "dy", dy, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "x", x, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "w", w, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "group_offsets", group_offsets, DSC_DT(DSC_DTYPE_INT32)));
  DSC_CHECK(dx != NULL || dw != NULL, DSC_ERR_INVALID_ARGUMENT, FN,
            "dx, dw: expected at least one output tensor, got NULL for both");
  if (dx) DSC_TRY(dsc_check_tensor(ctx, FN, "dx", dx, DSC_DT_FLOAT));
  if (dw) DSC_TRY(dsc_check_tensor(ctx, FN, "dw", dw, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_same_dtype(FN, "dy", dy, "x", x));
  DSC_TRY(dsc_check_same_dtype(FN, "w", w, "x", x));
  if (dx) DSC_TRY(dsc_check_same_dtype(FN, "dx", dx, "x", x));
  const dsc_dtype dt = dsc_tensor_dtype(x);
  const dsc_dtype dw_dt = dw ? dsc_tensor_dtype(dw) : DSC_DTYPE_INVALID;
  DSC_CHECK(!dw || dw_dt == dt || dw_dt == DSC_DTYPE_FLOAT32, DSC_ERR_DTYPE, FN,
            "dw: expected the dtype of w (%s) or float32, got %s", dsc_dtype_name(dt),
            dsc_dtype_name(dw_dt));
  DSC_TRY(dsc_check_ndim(FN, "x", x, 2, 2, "(R, K)"));
  DSC_TRY(dsc_check_ndim(FN, "w", w, 3, 3, "(n_experts, N, K)"));
  const int64_t R = x->shape[0], K = x->shape[1], E = w->shape[0], N = w->shape[1];
  const int64_t w_shape[3] = {E, N, K}, dy_shape[2] = {R, N}, o_shape = E + 1;
  DSC_TRY(dsc_check_shape(FN, "w", w, 3, w_shape));
  DSC_TRY(dsc_check_shape(FN, "group_offsets", group_offsets, 1, &o_shape));
  DSC_TRY(dsc_check_shape(FN, "dy", dy, 2, dy_shape));
  if (dx) DSC_TRY(dsc_check_same_shape(FN, "dx", dx, "x", x));
  if (dw) DSC_TRY(dsc_check_shape(FN, "dw", dw, 3, w_shape));
  DSC_TRY(dsc_check_disjoint(FN, "dx", dx, "dy", dy, "x", x, "w", w, "group_offsets", group_offsets,
                             "dw", dw, NULL));
  DSC_TRY(dsc_check_disjoint(FN, "dw", dw, "dy", dy, "x", x, "w", w, "group_offsets", group_offsets,
                             NULL));
  const int32_t *offs_h = given_h;
  int32_t *owned = NULL;
  const int dev = bound && dsc_grouped_linear_reads_device_offsets(ctx, dt, dw_dt);
  if (!offs_h && !dev) DSC_TRY(host_offsets(ctx, FN, group_offsets, E, R, bound, &offs_h, &owned));
  dsc_status s = DSC_OK;
  /* N == 0 still runs: dx is then an empty sum, i.e. zeros, and must be written. */
  if (K > 0) {
    s = DSC_DISPATCH(grouped_linear_bwd, ctx, dt, E, R, N, K, dsc_data(dy), dsc_data(x), dsc_data(w),
                     (const int32_t *)dsc_data(group_offsets), offs_h, dx ? dsc_data(dx) : NULL, dw_dt,
                     dw ? dsc_data(dw) : NULL);
  }
  free(owned);
  return s;
}
