/*
 * ops/matmul.c -- validation and dispatch of the dense GEMM family: dsc_matmul (batched,
 * transposes, alpha/beta) and the bias-free linear layer (forward, backward).
 *
 * Checks ctx and every tensor (device, dtype, contiguity), then ranks and shapes, then
 * values; then calls dsc_cpu_gemm / dsc_cpu_gemm_f32out or their CUDA twins with
 * row-major leading dimensions taken from the (contiguous) shapes.
 *
 * Legend: M rows of C, N columns of C, K the inner dim, Bt the batch;
 *         for linear layers R rows (all leading dims of x), K in features, N out features.
 */
#include <math.h>
#include <string.h>

#include "backend.h"

dsc_status dsc_matmul(dsc_context *ctx, const DLTensor *a, const DLTensor *b, DLTensor *c,
                      int32_t trans_a, int32_t trans_b, float alpha, float beta) {
  static const char *const FN = "dsc_matmul";
  char buf[256];
  DSC_TRY(dsc_check_tensor(ctx, FN, "a", a, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "b", b, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "c", c, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_same_dtype(FN, "b", b, "a", a));
  DSC_TRY(dsc_check_same_dtype(FN, "c", c, "a", a));

  DSC_TRY(dsc_check_ndim(FN, "a", a, 2, 3, "(M, K) or (Bt, M, K)"));
  const int batched = a->ndim == 3;
  if (batched) {
    DSC_TRY(dsc_check_ndim(FN, "b", b, 2, 3, "(K, N), or (Bt, K, N) with a batched a"));
  } else {
    DSC_TRY(dsc_check_ndim(FN, "b", b, 2, 2, "(K, N) with a 2-D a"));
  }
  DSC_CHECK(trans_a == 0 || trans_a == 1, DSC_ERR_INVALID_ARGUMENT, FN,
            "trans_a: expected 0 or 1, got %d", (int)trans_a);
  DSC_CHECK(trans_b == 0 || trans_b == 1, DSC_ERR_INVALID_ARGUMENT, FN,
            "trans_b: expected 0 or 1, got %d", (int)trans_b);
  const int64_t Bt = batched ? a->shape[0] : 1;
  const int64_t a0 = a->shape[a->ndim - 2], a1 = a->shape[a->ndim - 1]; /* stored a [a0, a1] */
  const int64_t b0 = b->shape[b->ndim - 2], b1 = b->shape[b->ndim - 1]; /* stored b [b0, b1] */
  const int64_t M = trans_a ? a1 : a0, K = trans_a ? a0 : a1;
  const int64_t Kb = trans_b ? b1 : b0, N = trans_b ? b0 : b1;
  DSC_CHECK(b->ndim == 2 || b->shape[0] == Bt, DSC_ERR_SHAPE, FN,
            "b: expected a batch of %lld (the batch of a) or a 2-D b, got %s", (long long)Bt,
            dsc_shape_str(b, buf, sizeof buf));
  DSC_CHECK(Kb == K, DSC_ERR_SHAPE, FN,
            "b: expected op(b) with K = %lld rows (the inner dim of op(a)), got %s with "
            "trans_b = %d",
            (long long)K, dsc_shape_str(b, buf, sizeof buf), (int)trans_b);
  const int64_t c_shape[3] = {Bt, M, N};
  DSC_TRY(dsc_check_shape(FN, "c", c, batched ? 3 : 2, batched ? c_shape : c_shape + 1));
  DSC_CHECK(isfinite(alpha), DSC_ERR_INVALID_ARGUMENT, FN,
            "alpha: expected a finite number, got %g", (double)alpha);
  DSC_CHECK(isfinite(beta), DSC_ERR_INVALID_ARGUMENT, FN, "beta: expected a finite number, got %g",
            (double)beta);
  /* c is read (beta) and written while a and b are still being read: no sharing */
  DSC_TRY(dsc_check_disjoint(FN, "c", c, "a", a, "b", b, NULL));
  if (Bt == 0 || M == 0 || N == 0) return DSC_OK;

  const int64_t sB = b->ndim == 3 ? b0 * b1 : 0; /* 0: one b shared by the batch */
  return DSC_DISPATCH(gemm, ctx, dsc_tensor_dtype(a), trans_a, trans_b, M, N, K, alpha, dsc_data(a), a1,
                      dsc_data(b), b1, beta, dsc_data(c), N, Bt, a0 * a1, sB, M * N);
}

/* Writes the shape of x with its last dim replaced by `last` into shape[16]. */
static void shape_with_last(const DLTensor *x, int64_t last, int64_t *shape) {
  memcpy(shape, x->shape, (size_t)x->ndim * sizeof(int64_t));
  shape[x->ndim - 1] = last;
}

dsc_status dsc_linear_forward(dsc_context *ctx, const DLTensor *x, const DLTensor *w,
                              DLTensor *y) {
  static const char *const FN = "dsc_linear_forward";
  DSC_TRY(dsc_check_tensor(ctx, FN, "x", x, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "w", w, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "y", y, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_same_dtype(FN, "w", w, "x", x));
  DSC_TRY(dsc_check_same_dtype(FN, "y", y, "x", x));

  DSC_TRY(dsc_check_ndim(FN, "x", x, 1, 16, "(..., K)"));
  DSC_TRY(dsc_check_ndim(FN, "w", w, 2, 2, "(N, K)"));
  const int64_t K = dsc_last_dim(x), R = dsc_rows(x), N = w->shape[0];
  const int64_t w_shape[2] = {N, K};
  DSC_TRY(dsc_check_shape(FN, "w", w, 2, w_shape));
  int64_t y_shape[16];
  shape_with_last(x, N, y_shape);
  DSC_TRY(dsc_check_shape(FN, "y", y, x->ndim, y_shape));
  DSC_TRY(dsc_check_disjoint(FN, "y", y, "x", x, "w", w, NULL));
  if (R == 0 || N == 0) return DSC_OK;

  /* y [R, N] = x [R, K] @ w^T (w stored [N, K]). */
  return DSC_DISPATCH(gemm, ctx, dsc_tensor_dtype(x), 0, 1, R, N, K, 1.0f, dsc_data(x), K, dsc_data(w), K,
                      0.0f, dsc_data(y), N, 1, 0, 0, 0);
}

dsc_status dsc_linear_backward(dsc_context *ctx, const DLTensor *dy, const DLTensor *x,
                               const DLTensor *w, DLTensor *dx, DLTensor *dw) {
  static const char *const FN = "dsc_linear_backward";
  DSC_TRY(dsc_check_tensor(ctx, FN, "dy", dy, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "x", x, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "w", w, DSC_DT_FLOAT));
  DSC_CHECK(dx != NULL || dw != NULL, DSC_ERR_INVALID_ARGUMENT, FN,
            "dx, dw: expected at least one output tensor, got NULL for both");
  if (dx) DSC_TRY(dsc_check_tensor(ctx, FN, "dx", dx, DSC_DT_FLOAT));
  if (dw) DSC_TRY(dsc_check_tensor(ctx, FN, "dw", dw, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_same_dtype(FN, "dy", dy, "x", x));
  DSC_TRY(dsc_check_same_dtype(FN, "w", w, "x", x));
  if (dx) DSC_TRY(dsc_check_same_dtype(FN, "dx", dx, "x", x));
  const dsc_dtype dt = dsc_tensor_dtype(x);
  const dsc_dtype dw_dt = dw ? dsc_tensor_dtype(dw) : DSC_DTYPE_INVALID;
  /* dw: the dtype of w, or float32 (FP32 weight gradients of a bf16 model). */
  DSC_CHECK(!dw || dw_dt == dt || dw_dt == DSC_DTYPE_FLOAT32, DSC_ERR_DTYPE, FN,
            "dw: expected the dtype of w (%s) or float32, got %s", dsc_dtype_name(dt),
            dsc_dtype_name(dw_dt));

  DSC_TRY(dsc_check_ndim(FN, "x", x, 1, 16, "(..., K)"));
  DSC_TRY(dsc_check_ndim(FN, "w", w, 2, 2, "(N, K)"));
  const int64_t K = dsc_last_dim(x), R = dsc_rows(x), N = w->shape[0];
  const int64_t w_shape[2] = {N, K};
  DSC_TRY(dsc_check_shape(FN, "w", w, 2, w_shape));
  int64_t dy_shape[16];
  shape_with_last(x, N, dy_shape);
  DSC_TRY(dsc_check_shape(FN, "dy", dy, x->ndim, dy_shape));
  if (dx) DSC_TRY(dsc_check_same_shape(FN, "dx", dx, "x", x));
  if (dw) DSC_TRY(dsc_check_shape(FN, "dw", dw, 2, w_shape));
  DSC_TRY(dsc_check_disjoint(FN, "dx", dx, "dy", dy, "x", x, "w", w, "dw", dw, NULL));
  DSC_TRY(dsc_check_disjoint(FN, "dw", dw, "dy", dy, "x", x, "w", w, NULL));

  /* dx [R, K] = dy [R, N] @ w [N, K]. */
  if (dx && R > 0 && K > 0) {
    DSC_TRY(DSC_DISPATCH(gemm, ctx, dt, 0, 0, R, K, N, 1.0f, dsc_data(dy), N, dsc_data(w), K, 0.0f,
                         dsc_data(dx), K, 1, 0, 0, 0));
  }
  /* dw [N, K] = dy^T [N, R] @ x [R, K]: dy is stored [R, N], hence trans_a. Overwritten
   * (beta 0); R == 0 gives zeros. */
  if (dw && N > 0 && K > 0) {
    if (dw_dt == dt) {
      DSC_TRY(DSC_DISPATCH(gemm, ctx, dt, 1, 0, N, K, R, 1.0f, dsc_data(dy), N, dsc_data(x), K, 0.0f,
                           dsc_data(dw), K, 1, 0, 0, 0));
    } else {
      DSC_TRY(DSC_DISPATCH(gemm_f32out, ctx, dt, 1, 0, N, K, R, 1.0f, dsc_data(dy), N, dsc_data(x), K, 0.0f,
                           (float *)dsc_data(dw), K));
    }
  }
  return DSC_OK;
}
