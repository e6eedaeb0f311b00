/*
 * ops/fp8.c -- validation and dispatch of the FP8 functions of deepseek_c.h: casts, block
 * quantization / dequantization, the block-scaled GEMMs (plain, grouped, masked),
 * statistics, and the FP8 linear layer (forward, backward) composed from the layer pieces
 * of fp8_layers.c.
 *
 * Checks ctx and every tensor (device, dtype, contiguity), then ranks and shapes (the
 * scale shapes against the block layout), then values: scales finite and > 0, group
 * offsets, masked_m (read on the host; a copy from the device on CUDA). Only then
 * dsc_cpu_fp8_* or its CUDA twin (DSC_DISPATCH, core/backend.h).
 *
 * Legend: M rows, K inner dim, N output features, Kb = ceil(K/128), Nb = ceil(N/128),
 * Mb = ceil(M/128), G groups (experts), Mmax rows per group (masked layout).
 *
 * The GEMMs take their scratch from the context's workspace (dsc_workspace invalidates
 * earlier pointers, so nothing the caller passes lives there).
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "fp8_layers.h"


#define DSC_DT_FP8 (DSC_DT(DSC_DTYPE_FLOAT8_E4M3FN) | DSC_DT(DSC_DTYPE_FLOAT8_E5M2))
#define DSC_DT_F32 DSC_DT(DSC_DTYPE_FLOAT32)

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

static float fp8_max(dsc_dtype ft) { return ft == DSC_DTYPE_FLOAT8_E5M2 ? 57344.0f : 448.0f; }

/* ---- reading small tensors on the host ----------------------------------------------- */

/* n elements of `bytes_each` bytes of t on the host: *out points at them; *owned is a
 * malloc'ed copy to free (CUDA), NULL on the CPU. */
static dsc_status host_view(dsc_context *ctx, const char *fn, const char *arg, const DLTensor *t,
                            int64_t n, size_t bytes_each, const void **out, void **owned) {
  *owned = NULL;
  *out = dsc_data(t);
  if (!dsc_ctx_is_cuda(ctx) || n == 0) return DSC_OK;
  const size_t bytes = (size_t)n * bytes_each;
  void *h = malloc(bytes);
  DSC_CHECK(h != NULL, DSC_ERR_OUT_OF_MEMORY, fn, "%s: host copy of %zu bytes", arg, bytes);
  const DLDevice host = {kDLCPU, 0};
  dsc_status s = dsc_memcpy(ctx, h, host, dsc_data(t), t->device, bytes);
  if (s != DSC_OK) {
    free(h);
    return s;
  }
  *owned = h;
  *out = h;
  return DSC_OK;
}

/* The error for scale v at flat index i of t (2-D or 3-D): not finite or not > 0. */
static dsc_status scale_error(const char *fn, const char *arg, const DLTensor *t, int64_t i,
                              float v) {
  char idx[96];
  if (t->ndim == 3) {
    const int64_t d1 = t->shape[1], d2 = t->shape[2];
    snprintf(idx, sizeof idx, "[%lld, %lld, %lld]", (long long)(i / (d1 * d2)),
             (long long)(i / d2 % d1), (long long)(i % d2));
  } else {
    const int64_t d1 = t->shape[t->ndim - 1];
    snprintf(idx, sizeof idx, "[%lld, %lld]", (long long)(i / d1), (long long)(i % d1));
  }
  return dsc_error(DSC_ERR_INVALID_ARGUMENT, fn, "%s: expected finite scales > 0, got %g at %s",
                   arg, (double)v, idx);
}

/* The scales of t are finite and > 0: all of them (masked_m NULL), or for a masked GEMM's
 * a_scale [G, Mmax, Kb] the rows [0, masked_m[g]) of each group (masked_m on ctx's
 * device). Checked by the backend where the scales are (CUDA: one small kernel and one
 * 16-byte copy back, not a copy of the scales). */
static dsc_status check_scales_rows(dsc_context *ctx, const char *fn, const char *arg,
                                    const DLTensor *t, const int32_t *masked_m, int64_t group,
                                    int64_t row) {
  int64_t bad = -1;
  float v = 0.0f;
  DSC_TRY(DSC_DISPATCH(fp8_scales_check, ctx, dsc_numel(t), (const float *)dsc_data(t), masked_m, group, row,
                       &bad, &v));
  return bad < 0 ? DSC_OK : scale_error(fn, arg, t, bad, v);
}

static dsc_status check_scales(dsc_context *ctx, const char *fn, const char *arg,
                               const DLTensor *t) {
  return check_scales_rows(ctx, fn, arg, t, NULL, 1, 1);
}

/* ---- shapes --------------------------------------------------------------------------- */

/* A GEMM operand's scale: [rows, Kb] (1x128 tiles, *br = 1) or [ceil(rows/128), Kb]
 * (128x128 blocks, *br = 128). */
static dsc_status gemm_scale_layout(const char *fn, const char *arg, const char *rows_name,
                                    const DLTensor *scale, int64_t rows, int64_t Kb,
                                    int64_t *br) {
  char buf[256];
  const int64_t rb = cdiv(rows, 128);
  if (scale->ndim == 2 && scale->shape[1] == Kb) {
    if (scale->shape[0] == rows) {
      *br = 1;
      return DSC_OK;
    }
    if (scale->shape[0] == rb) {
      *br = 128;
      return DSC_OK;
    }
  }
  return dsc_error(DSC_ERR_SHAPE, fn,
                   "%s: expected shape (%s, Kb) = (%lld, %lld) for 1x128 tiles or "
                   "(ceil(%s/128), Kb) = (%lld, %lld) for 128x128 blocks, got %s",
                   arg, rows_name, (long long)rows, (long long)Kb, rows_name, (long long)rb,
                   (long long)Kb, dsc_shape_str(scale, buf, sizeof buf));
}

/* t is [..., D] with the given leading dims (those of ref, all but its last) and last D. */
static dsc_status check_rows_like(const char *fn, const char *arg, const DLTensor *t,
                                  const char *ref_arg, const DLTensor *ref, int64_t D) {
  int64_t shape[16];
  for (int i = 0; i + 1 < ref->ndim; ++i) shape[i] = ref->shape[i];
  shape[ref->ndim - 1] = D;
  (void)ref_arg;
  return dsc_check_shape(fn, arg, t, ref->ndim, shape);
}

static dsc_status check_qparams(const char *fn, const dsc_fp8_quant_params *p, dsc_dtype ft) {
  DSC_CHECK(p != NULL, DSC_ERR_INVALID_ARGUMENT, fn, "p: expected parameters, got NULL");
  DSC_CHECK(p->size >= sizeof(dsc_fp8_quant_params), DSC_ERR_INVALID_ARGUMENT, fn,
            "p->size: expected sizeof(dsc_fp8_quant_params) = %zu, got %zu",
            sizeof(dsc_fp8_quant_params), p->size);
  DSC_CHECK(p->block_rows > 0, DSC_ERR_INVALID_ARGUMENT, fn,
            "p->block_rows: expected a block size > 0, got %d", (int)p->block_rows);
  DSC_CHECK(p->block_cols > 0, DSC_ERR_INVALID_ARGUMENT, fn,
            "p->block_cols: expected a block size > 0, got %d", (int)p->block_cols);
  DSC_CHECK(p->transpose == 0 || p->transpose == 1, DSC_ERR_INVALID_ARGUMENT, fn,
            "p->transpose: expected 0 or 1, got %d", (int)p->transpose);
  DSC_CHECK(p->pow2_scale == 0 || p->pow2_scale == 1, DSC_ERR_INVALID_ARGUMENT, fn,
            "p->pow2_scale: expected 0 or 1, got %d", (int)p->pow2_scale);
  const double lo = (double)fp8_max(ft) * (double)FLT_MIN; /* scales stay normal floats */
  DSC_CHECK(isfinite(p->amax_floor) && (double)p->amax_floor >= lo, DSC_ERR_INVALID_ARGUMENT, fn,
            "p->amax_floor: expected a finite number >= %g (fp8_max * FLT_MIN), got %g", lo,
            (double)p->amax_floor);
  return DSC_OK;
}

/* ---- public functions ------------------------------------------------------------------ */

void dsc_fp8_quant_params_default(dsc_fp8_quant_params *p) {
  if (!p) return;
  memset(p, 0, sizeof *p);
  p->size = sizeof *p;
  p->block_rows = 1;
  p->block_cols = 128;
  p->transpose = 0;
  p->pow2_scale = 0;
  p->amax_floor = 1e-4f;
}

dsc_status dsc_fp8_cast(dsc_context *ctx, const DLTensor *src, DLTensor *dst) {
  static const char *const FN = "dsc_fp8_cast";
  DSC_TRY(dsc_check_tensor(ctx, FN, "src", src, DSC_DT_FLOAT | DSC_DT_FP8));
  DSC_TRY(dsc_check_tensor(ctx, FN, "dst", dst, DSC_DT_FLOAT | DSC_DT_FP8));
  const dsc_dtype st = dsc_tensor_dtype(src), dt = dsc_tensor_dtype(dst);
  const int src8 = (DSC_DT(st) & DSC_DT_FP8) != 0, dst8 = (DSC_DT(dt) & DSC_DT_FP8) != 0;
  DSC_CHECK(src8 != dst8, DSC_ERR_DTYPE, FN,
            "dst: expected %s for a %s src, got %s",
            src8 ? "float32 or bfloat16" : "float8_e4m3fn or float8_e5m2", dsc_dtype_name(st),
            dsc_dtype_name(dt));
  DSC_TRY(dsc_check_same_shape(FN, "dst", dst, "src", src));
  DSC_TRY(dsc_check_no_overlap(FN, "dst", dst, "src", src)); /* different widths */
  const int64_t n = dsc_numel(src);
  if (n == 0) return DSC_OK;
  return DSC_DISPATCH(fp8_cast, ctx, n, st, dsc_data(src), dt, dsc_data(dst));
}

dsc_status dsc_fp8_quantize(dsc_context *ctx, const dsc_fp8_quant_params *p, const DLTensor *x,
                            DLTensor *q, DLTensor *scale) {
  static const char *const FN = "dsc_fp8_quantize";
  DSC_TRY(dsc_check_tensor(ctx, FN, "x", x, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "q", q, DSC_DT_FP8));
  DSC_TRY(dsc_check_tensor(ctx, FN, "scale", scale, DSC_DT_F32));
  const dsc_dtype ft = dsc_tensor_dtype(q);
  DSC_TRY(check_qparams(FN, p, ft));
  DSC_TRY(dsc_check_ndim(FN, "x", x, 1, 16, "(..., K)"));
  const int64_t M = dsc_rows(x), K = dsc_last_dim(x);
  const int64_t R = p->transpose ? K : M, C = p->transpose ? M : K;
  const int64_t q2[2] = {R, C};
  /* q is (M, K) or x's own shape; (K, M) with transpose */
  int q_like_x = !p->transpose && q->ndim == x->ndim;
  for (int i = 0; q_like_x && i < x->ndim; ++i) q_like_x = q->shape[i] == x->shape[i];
  if (!q_like_x) DSC_TRY(dsc_check_shape(FN, "q", q, 2, q2));
  const int64_t s2[2] = {cdiv(R, p->block_rows), cdiv(C, p->block_cols)};
  DSC_TRY(dsc_check_shape(FN, "scale", scale, 2, s2));
  DSC_TRY(dsc_check_disjoint(FN, "q", q, "x", x, "scale", scale, NULL));
  DSC_TRY(dsc_check_disjoint(FN, "scale", scale, "x", x, NULL));
  if (R == 0 || C == 0) return DSC_OK;
  return DSC_DISPATCH(fp8_quantize, ctx, dsc_tensor_dtype(x), M, K, p->block_rows, p->block_cols,
                      p->transpose, p->pow2_scale, p->amax_floor, ft, dsc_data(x), (uint8_t *)dsc_data(q),
                      (float *)dsc_data(scale));
}

dsc_status dsc_fp8_dequantize(dsc_context *ctx, int32_t block_rows, int32_t block_cols,
                              const DLTensor *q, const DLTensor *scale, DLTensor *out) {
  static const char *const FN = "dsc_fp8_dequantize";
  DSC_TRY(dsc_check_tensor(ctx, FN, "q", q, DSC_DT_FP8));
  DSC_TRY(dsc_check_tensor(ctx, FN, "scale", scale, DSC_DT_F32));
  DSC_TRY(dsc_check_tensor(ctx, FN, "out", out, DSC_DT_FLOAT));
  DSC_CHECK(block_rows > 0, DSC_ERR_INVALID_ARGUMENT, FN,
            "block_rows: expected a block size > 0, got %d", (int)block_rows);
  DSC_CHECK(block_cols > 0, DSC_ERR_INVALID_ARGUMENT, FN,
            "block_cols: expected a block size > 0, got %d", (int)block_cols);
  DSC_TRY(dsc_check_ndim(FN, "q", q, 1, 16, "(..., C)"));
  const int64_t R = dsc_rows(q), C = dsc_last_dim(q);
  const int64_t s2[2] = {cdiv(R, block_rows), cdiv(C, block_cols)};
  DSC_TRY(dsc_check_shape(FN, "scale", scale, 2, s2));
  DSC_TRY(dsc_check_same_shape(FN, "out", out, "q", q));
  DSC_TRY(dsc_check_disjoint(FN, "out", out, "q", q, "scale", scale, NULL));
  DSC_TRY(check_scales(ctx, FN, "scale", scale));
  if (R == 0 || C == 0) return DSC_OK;
  return DSC_DISPATCH(fp8_dequantize, ctx, dsc_tensor_dtype(q), R, C, block_rows, block_cols,
                      (const uint8_t *)dsc_data(q), (const float *)dsc_data(scale), dsc_tensor_dtype(out),
                      dsc_data(out));
}

dsc_status dsc_fp8_gemm(dsc_context *ctx, const DLTensor *a, const DLTensor *a_scale,
                        const DLTensor *b, const DLTensor *b_scale, DLTensor *c) {
  static const char *const FN = "dsc_fp8_gemm";
  char buf[256];
  DSC_TRY(dsc_check_tensor(ctx, FN, "a", a, DSC_DT_FP8));
  DSC_TRY(dsc_check_tensor(ctx, FN, "a_scale", a_scale, DSC_DT_F32));
  DSC_TRY(dsc_check_tensor(ctx, FN, "b", b, DSC_DT_FP8));
  DSC_TRY(dsc_check_tensor(ctx, FN, "b_scale", b_scale, DSC_DT_F32));
  DSC_TRY(dsc_check_tensor(ctx, FN, "c", c, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_ndim(FN, "a", a, 2, 2, "(M, K)"));
  DSC_TRY(dsc_check_ndim(FN, "b", b, 2, 2, "(N, K)"));
  const int64_t M = a->shape[0], K = a->shape[1], N = b->shape[0], Kb = cdiv(K, 128);
  DSC_CHECK(b->shape[1] == K, DSC_ERR_SHAPE, FN,
            "b: expected shape (N, K) with K = %lld (the last dim of a), got %s", (long long)K,
            dsc_shape_str(b, buf, sizeof buf));
  int64_t a_br = 1, b_br = 1;
  DSC_TRY(gemm_scale_layout(FN, "a_scale", "M", a_scale, M, Kb, &a_br));
  DSC_TRY(gemm_scale_layout(FN, "b_scale", "N", b_scale, N, Kb, &b_br));
  const int64_t c2[2] = {M, N};
  DSC_TRY(dsc_check_shape(FN, "c", c, 2, c2));
  DSC_TRY(dsc_check_disjoint(FN, "c", c, "a", a, "a_scale", a_scale, "b", b, "b_scale", b_scale, NULL));
  DSC_TRY(check_scales(ctx, FN, "a_scale", a_scale));
  DSC_TRY(check_scales(ctx, FN, "b_scale", b_scale));
  if (M == 0 || N == 0) return DSC_OK;
  const dsc_dtype ct = dsc_tensor_dtype(c);
  size_t bytes = 0;
  void *work = NULL;
  DSC_TRY(DSC_DISPATCH(fp8_gemm_work, ctx, 1, M, N, K, ct, &bytes));
  DSC_TRY(dsc_workspace(ctx, bytes, &work));
  return DSC_DISPATCH(fp8_gemm, ctx, M, N, K, dsc_tensor_dtype(a), (const uint8_t *)dsc_data(a),
                      (const float *)dsc_data(a_scale), a_br, dsc_tensor_dtype(b),
                      (const uint8_t *)dsc_data(b), (const float *)dsc_data(b_scale), b_br, ct, dsc_data(c),
                      work);
}

/* The checks shared by both grouped GEMMs on b [G,N,K] and b_scale [G,Nb,Kb]. */
static dsc_status check_grouped_b(const char *fn, const DLTensor *b, const DLTensor *b_scale,
                                  int64_t K, int64_t *G, int64_t *N) {
  char buf[256];
  DSC_TRY(dsc_check_ndim(fn, "b", b, 3, 3, "(G, N, K)"));
  *G = b->shape[0];
  *N = b->shape[1];
  DSC_CHECK(b->shape[2] == K, DSC_ERR_SHAPE, fn,
            "b: expected shape (G, N, K) with K = %lld (the last dim of a), got %s",
            (long long)K, dsc_shape_str(b, buf, sizeof buf));
  const int64_t bs[3] = {*G, cdiv(*N, 128), cdiv(K, 128)};
  DSC_CHECK(b_scale->ndim == 3 && b_scale->shape[0] == bs[0] && b_scale->shape[1] == bs[1] &&
                b_scale->shape[2] == bs[2],
            DSC_ERR_SHAPE, fn,
            "b_scale: expected shape (G, ceil(N/128), Kb) = (%lld, %lld, %lld) for 128x128 "
            "blocks, got %s",
            (long long)bs[0], (long long)bs[1], (long long)bs[2],
            dsc_shape_str(b_scale, buf, sizeof buf));
  return DSC_OK;
}

dsc_status dsc_fp8_grouped_gemm(dsc_context *ctx, const DLTensor *a, const DLTensor *a_scale,
                                const DLTensor *b, const DLTensor *b_scale,
                                const DLTensor *group_offsets, int32_t alignment, DLTensor *c) {
  static const char *const FN = "dsc_fp8_grouped_gemm";
  char buf[256];
  DSC_TRY(dsc_check_tensor(ctx, FN, "a", a, DSC_DT_FP8));
  DSC_TRY(dsc_check_tensor(ctx, FN, "a_scale", a_scale, DSC_DT_F32));
  DSC_TRY(dsc_check_tensor(ctx, FN, "b", b, DSC_DT_FP8));
  DSC_TRY(dsc_check_tensor(ctx, FN, "b_scale", b_scale, DSC_DT_F32));
  DSC_TRY(dsc_check_tensor(ctx, FN, "group_offsets", group_offsets, DSC_DT(DSC_DTYPE_INT32)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "c", c, DSC_DT_FLOAT));
  DSC_CHECK(alignment >= 0, DSC_ERR_INVALID_ARGUMENT, FN,
            "alignment: expected a value >= 0 (0 or 1: any), got %d", (int)alignment);
  DSC_TRY(dsc_check_ndim(FN, "a", a, 2, 2, "(M, K)"));
  const int64_t M = a->shape[0], K = a->shape[1], Kb = cdiv(K, 128);
  int64_t G = 0, N = 0;
  DSC_TRY(check_grouped_b(FN, b, b_scale, K, &G, &N));
  DSC_CHECK(a_scale->ndim == 2 && a_scale->shape[0] == M && a_scale->shape[1] == Kb,
            DSC_ERR_SHAPE, FN,
            "a_scale: expected shape (M, Kb) = (%lld, %lld) for 1x128 tiles, got %s",
            (long long)M, (long long)Kb, dsc_shape_str(a_scale, buf, sizeof buf));
  const int64_t o_shape = G + 1, c2[2] = {M, N};
  DSC_TRY(dsc_check_shape(FN, "group_offsets", group_offsets, 1, &o_shape));
  DSC_TRY(dsc_check_shape(FN, "c", c, 2, c2));
  DSC_TRY(dsc_check_disjoint(FN, "c", c, "a", a, "a_scale", a_scale, "b", b, "b_scale", b_scale,
                             "group_offsets", group_offsets, NULL));
  DSC_TRY(check_scales(ctx, FN, "a_scale", a_scale));
  DSC_TRY(check_scales(ctx, FN, "b_scale", b_scale));

  const void *ov = NULL;
  void *owned = NULL;
  DSC_TRY(host_view(ctx, FN, "group_offsets", group_offsets, G + 1, sizeof(int32_t), &ov, &owned));
  const int32_t *o = (const int32_t *)ov;
  const int64_t al = alignment > 1 ? alignment : 1;
  dsc_status s = DSC_OK;
  if (o[0] != 0) {
    s = dsc_error(DSC_ERR_INVALID_ARGUMENT, FN, "group_offsets: expected [0] = 0, got %d",
                  (int)o[0]);
  } else if (o[G] != M) {
    s = dsc_error(DSC_ERR_INVALID_ARGUMENT, FN,
                  "group_offsets: expected [%lld] = %lld (the rows of a), got %d", (long long)G,
                  (long long)M, (int)o[G]);
  } else {
    for (int64_t g = 0; g < G; ++g) {
      if (o[g + 1] < o[g]) {
        s = dsc_error(DSC_ERR_INVALID_ARGUMENT, FN,
                      "group_offsets: expected non-decreasing values, got [%lld] = %d > [%lld] "
                      "= %d",
                      (long long)g, (int)o[g], (long long)(g + 1), (int)o[g + 1]);
        break;
      }
      if (o[g + 1] % al != 0) {
        s = dsc_error(DSC_ERR_INVALID_ARGUMENT, FN,
                      "group_offsets: expected multiples of alignment %lld, got [%lld] = %d",
                      (long long)al, (long long)(g + 1), (int)o[g + 1]);
        break;
      }
    }
  }
  if (s == DSC_OK && M > 0 && N > 0) {
    const dsc_dtype ct = dsc_tensor_dtype(c);
    size_t bytes = 0;
    void *work = NULL;
    s = DSC_DISPATCH(fp8_gemm_work, ctx, G, M, N, K, ct, &bytes);
    if (s == DSC_OK) s = dsc_workspace(ctx, bytes, &work);
    if (s == DSC_OK)
      s = DSC_DISPATCH(fp8_grouped_gemm, ctx, G, M, N, K, dsc_tensor_dtype(a), (const uint8_t *)dsc_data(a),
                       (const float *)dsc_data(a_scale), dsc_tensor_dtype(b), (const uint8_t *)dsc_data(b),
                       (const float *)dsc_data(b_scale), (const int32_t *)dsc_data(group_offsets), o, ct,
                       dsc_data(c), work);
  }
  free(owned);
  return s;
}

dsc_status dsc_fp8_grouped_gemm_masked(dsc_context *ctx, const DLTensor *a,
                                       const DLTensor *a_scale, const DLTensor *b,
                                       const DLTensor *b_scale, const DLTensor *masked_m,
                                       DLTensor *c) {
  static const char *const FN = "dsc_fp8_grouped_gemm_masked";
  char buf[256];
  DSC_TRY(dsc_check_tensor(ctx, FN, "a", a, DSC_DT_FP8));
  DSC_TRY(dsc_check_tensor(ctx, FN, "a_scale", a_scale, DSC_DT_F32));
  DSC_TRY(dsc_check_tensor(ctx, FN, "b", b, DSC_DT_FP8));
  DSC_TRY(dsc_check_tensor(ctx, FN, "b_scale", b_scale, DSC_DT_F32));
  DSC_TRY(dsc_check_tensor(ctx, FN, "masked_m", masked_m, DSC_DT(DSC_DTYPE_INT32)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "c", c, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_ndim(FN, "a", a, 3, 3, "(G, Mmax, K)"));
  const int64_t Ga = a->shape[0], Mmax = a->shape[1], K = a->shape[2], Kb = cdiv(K, 128);
  int64_t G = 0, N = 0;
  DSC_TRY(check_grouped_b(FN, b, b_scale, K, &G, &N));
  DSC_CHECK(G == Ga, DSC_ERR_SHAPE, FN,
            "b: expected %lld groups (the first dim of a), got %s", (long long)Ga,
            dsc_shape_str(b, buf, sizeof buf));
  DSC_CHECK(a_scale->ndim == 3 && a_scale->shape[0] == G && a_scale->shape[1] == Mmax &&
                a_scale->shape[2] == Kb,
            DSC_ERR_SHAPE, FN,
            "a_scale: expected shape (G, Mmax, Kb) = (%lld, %lld, %lld) for 1x128 tiles, got %s",
            (long long)G, (long long)Mmax, (long long)Kb, dsc_shape_str(a_scale, buf, sizeof buf));
  const int64_t c3[3] = {G, Mmax, N};
  DSC_TRY(dsc_check_shape(FN, "masked_m", masked_m, 1, &G));
  DSC_TRY(dsc_check_shape(FN, "c", c, 3, c3));
  DSC_TRY(dsc_check_disjoint(FN, "c", c, "a", a, "a_scale", a_scale, "b", b, "b_scale", b_scale,
                             "masked_m", masked_m, NULL));
  DSC_TRY(check_scales(ctx, FN, "b_scale", b_scale));

  const void *mv = NULL;
  void *owned = NULL;
  DSC_TRY(host_view(ctx, FN, "masked_m", masked_m, G, sizeof(int32_t), &mv, &owned));
  const int32_t *mm = (const int32_t *)mv;
  dsc_status s = DSC_OK;
  for (int64_t g = 0; g < G && s == DSC_OK; ++g) {
    if (mm[g] < 0 || mm[g] > Mmax)
      s = dsc_error(DSC_ERR_INVALID_ARGUMENT, FN,
                    "masked_m: expected values in [0, %lld] (Mmax), got [%lld] = %d",
                    (long long)Mmax, (long long)g, (int)mm[g]);
  }
  /* only the used rows' scales: the rows past masked_m[g] may hold anything */
  if (s == DSC_OK && Mmax > 0)
    s = check_scales_rows(ctx, FN, "a_scale", a_scale, (const int32_t *)dsc_data(masked_m),
                          Mmax * Kb, Kb);
  if (s == DSC_OK && Mmax > 0 && N > 0) {
    const dsc_dtype ct = dsc_tensor_dtype(c);
    size_t bytes = 0;
    void *work = NULL;
    s = DSC_DISPATCH(fp8_gemm_work, ctx, G, Mmax, N, K, ct, &bytes);
    if (s == DSC_OK) s = dsc_workspace(ctx, bytes, &work);
    if (s == DSC_OK)
      s = DSC_DISPATCH(fp8_grouped_gemm_masked, ctx, G, Mmax, N, K, dsc_tensor_dtype(a),
                       (const uint8_t *)dsc_data(a), (const float *)dsc_data(a_scale), dsc_tensor_dtype(b),
                       (const uint8_t *)dsc_data(b), (const float *)dsc_data(b_scale),
                       (const int32_t *)dsc_data(masked_m), mm, ct, dsc_data(c), work);
  }
  free(owned);
  return s;
}

dsc_status dsc_fp8_compute_stats(dsc_context *ctx, const dsc_fp8_quant_params *p, dsc_dtype fmt,
                                 float tensor_scale, const DLTensor *x, dsc_fp8_stats *stats) {
  static const char *const FN = "dsc_fp8_compute_stats";
  DSC_TRY(dsc_check_tensor(ctx, FN, "x", x, DSC_DT_FLOAT));
  DSC_CHECK(fmt == DSC_DTYPE_FLOAT8_E4M3FN || fmt == DSC_DTYPE_FLOAT8_E5M2, DSC_ERR_DTYPE, FN,
            "fmt: expected float8_e4m3fn or float8_e5m2, got %s", dsc_dtype_name(fmt));
  DSC_TRY(check_qparams(FN, p, fmt));
  DSC_CHECK(p->transpose == 0, DSC_ERR_INVALID_ARGUMENT, FN,
            "p->transpose: expected 0 (statistics of x as laid out; pass x^T for the "
            "transposed tiling), got %d",
            (int)p->transpose);
  DSC_CHECK(isfinite(tensor_scale) && tensor_scale >= 0.0f, DSC_ERR_INVALID_ARGUMENT, FN,
            "tensor_scale: expected 0 (block scales) or a finite scale > 0, got %g",
            (double)tensor_scale);
  DSC_CHECK(stats != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "stats: expected a struct, got NULL");
  DSC_CHECK(stats->size >= sizeof(dsc_fp8_stats), DSC_ERR_INVALID_ARGUMENT, FN,
            "stats->size: expected sizeof(dsc_fp8_stats) = %zu, got %zu", sizeof(dsc_fp8_stats),
            stats->size);
  DSC_TRY(dsc_check_ndim(FN, "x", x, 1, 16, "(..., K)"));
  const int64_t M = dsc_rows(x), K = dsc_last_dim(x), n = M * K;
  float amax = 0.0f;
  int64_t counts[3] = {0, 0, 0};
  if (n > 0)
    DSC_TRY(DSC_DISPATCH(fp8_stats, ctx, dsc_tensor_dtype(x), M, K, p->block_rows, p->block_cols,
                         p->pow2_scale, p->amax_floor, fmt, tensor_scale, dsc_data(x), &amax, counts));
  stats->amax = amax;
  stats->count = n;
  stats->saturated_fraction = n ? (double)counts[0] / (double)n : 0.0;
  stats->underflow_fraction = n ? (double)counts[1] / (double)n : 0.0;
  stats->nan_fraction = n ? (double)counts[2] / (double)n : 0.0;
  return DSC_OK;
}

/* ---- the FP8 linear layer ------------------------------------------------------------------ */

/* The saved tensors of the forward: xq [M,K] fp8, xs [M,Kb], wq [N,K] fp8, ws [Nb,Kb]. */
static dsc_status check_saved(const char *fn, const DLTensor *xq, const DLTensor *xs,
                              const DLTensor *wq, const DLTensor *ws, int64_t M, int64_t N,
                              int64_t K) {
  const int64_t Kb = cdiv(K, 128);
  const int64_t xq2[2] = {M, K}, xs2[2] = {M, Kb}, wq2[2] = {N, K}, ws2[2] = {cdiv(N, 128), Kb};
  DSC_TRY(dsc_check_shape(fn, "xq", xq, 2, xq2));
  DSC_TRY(dsc_check_shape(fn, "xs", xs, 2, xs2));
  DSC_TRY(dsc_check_shape(fn, "wq", wq, 2, wq2));
  DSC_TRY(dsc_check_shape(fn, "ws", ws, 2, ws2));
  return DSC_OK;
}

dsc_status dsc_fp8_linear_forward(dsc_context *ctx, const DLTensor *x, const DLTensor *w,
                                  DLTensor *y, DLTensor *xq, DLTensor *xs, DLTensor *wq,
                                  DLTensor *ws) {
  static const char *const FN = "dsc_fp8_linear_forward";
  char buf[256];
  DSC_TRY(dsc_check_tensor(ctx, FN, "x", x, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "w", w, DSC_DT_F32));
  DSC_TRY(dsc_check_tensor(ctx, FN, "y", y, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "xq", xq, DSC_DT(DSC_DTYPE_FLOAT8_E4M3FN)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "xs", xs, DSC_DT_F32));
  DSC_TRY(dsc_check_tensor(ctx, FN, "wq", wq, DSC_DT(DSC_DTYPE_FLOAT8_E4M3FN)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "ws", ws, DSC_DT_F32));
  DSC_TRY(dsc_check_ndim(FN, "x", x, 1, 16, "(..., K)"));
  DSC_TRY(dsc_check_ndim(FN, "w", w, 2, 2, "(N, K)"));
  const int64_t M = dsc_rows(x), K = dsc_last_dim(x), N = w->shape[0];
  DSC_CHECK(w->shape[1] == K, DSC_ERR_SHAPE, FN,
            "w: expected shape (N, K) with K = %lld (the last dim of x), got %s", (long long)K,
            dsc_shape_str(w, buf, sizeof buf));
  DSC_TRY(check_rows_like(FN, "y", y, "x", x, N));
  DSC_TRY(check_saved(FN, xq, xs, wq, ws, M, N, K));
  /* five outputs, written one after another from x and w: no sharing at all */
  DSC_TRY(dsc_check_disjoint(FN, "y", y, "x", x, "w", w, "xq", xq, "xs", xs, "wq", wq, "ws", ws, NULL));
  DSC_TRY(dsc_check_disjoint(FN, "xq", xq, "x", x, "w", w, "xs", xs, "wq", wq, "ws", ws, NULL));
  DSC_TRY(dsc_check_disjoint(FN, "xs", xs, "x", x, "w", w, "wq", wq, "ws", ws, NULL));
  DSC_TRY(dsc_check_disjoint(FN, "wq", wq, "x", x, "w", w, "ws", ws, NULL));
  DSC_TRY(dsc_check_disjoint(FN, "ws", ws, "x", x, "w", w, NULL));

  const dsc_dtype ct = dsc_tensor_dtype(y);
  uint8_t *xq_p = (uint8_t *)dsc_data(xq), *wq_p = (uint8_t *)dsc_data(wq);
  float *xs_p = (float *)dsc_data(xs), *ws_p = (float *)dsc_data(ws);
  DSC_TRY(dsc_fp8l_quant_act(ctx, dsc_tensor_dtype(x), M, K, dsc_data(x), xq_p, xs_p));
  DSC_TRY(dsc_fp8l_quant_weight(ctx, 1, N, K, (const float *)dsc_data(w), 0, wq_p, ws_p));
  return dsc_fp8l_fprop(ctx, 1, M, N, K, xq_p, xs_p, wq_p, ws_p, NULL, NULL, ct, dsc_data(y));
}

dsc_status dsc_fp8_linear_backward(dsc_context *ctx, const DLTensor *dy, const DLTensor *xq,
                                   const DLTensor *xs, const DLTensor *wq, const DLTensor *ws,
                                   DLTensor *dx, DLTensor *dw) {
  static const char *const FN = "dsc_fp8_linear_backward";
  char buf[256];
  DSC_TRY(dsc_check_tensor(ctx, FN, "dy", dy, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "xq", xq, DSC_DT_FP8));
  DSC_TRY(dsc_check_tensor(ctx, FN, "xs", xs, DSC_DT_F32));
  DSC_TRY(dsc_check_tensor(ctx, FN, "wq", wq, DSC_DT_FP8));
  DSC_TRY(dsc_check_tensor(ctx, FN, "ws", ws, DSC_DT_F32));
  DSC_CHECK(dx != NULL || dw != NULL, DSC_ERR_INVALID_ARGUMENT, FN,
            "dx, dw: expected at least one output tensor, got NULL for both");
  if (dx) DSC_TRY(dsc_check_tensor(ctx, FN, "dx", dx, DSC_DT_FLOAT));
  if (dw) DSC_TRY(dsc_check_tensor(ctx, FN, "dw", dw, DSC_DT_F32));
  if (dx) DSC_TRY(dsc_check_same_dtype(FN, "dx", dx, "dy", dy));
  DSC_TRY(dsc_check_ndim(FN, "dy", dy, 1, 16, "(..., N)"));
  DSC_TRY(dsc_check_ndim(FN, "xq", xq, 2, 2, "(M, K)"));
  DSC_TRY(dsc_check_ndim(FN, "wq", wq, 2, 2, "(N, K)"));
  const int64_t M = dsc_rows(dy), N = dsc_last_dim(dy), K = xq->shape[1];
  DSC_CHECK(xq->shape[0] == M, DSC_ERR_SHAPE, FN,
            "xq: expected %lld rows (the rows of dy), got %s", (long long)M,
            dsc_shape_str(xq, buf, sizeof buf));
  DSC_CHECK(wq->shape[0] == N && wq->shape[1] == K, DSC_ERR_SHAPE, FN,
            "wq: expected shape (N, K) = (%lld, %lld) (N: the last dim of dy, K: of xq), got %s",
            (long long)N, (long long)K, dsc_shape_str(wq, buf, sizeof buf));
  DSC_TRY(check_saved(FN, xq, xs, wq, ws, M, N, K));
  if (dx) DSC_TRY(check_rows_like(FN, "dx", dx, "dy", dy, K));
  const int64_t dw2[2] = {N, K};
  if (dw) DSC_TRY(dsc_check_shape(FN, "dw", dw, 2, dw2));
  DSC_TRY(dsc_check_disjoint(FN, "dx", dx, "dy", dy, "xq", xq, "xs", xs, "wq", wq, "ws", ws, "dw", dw, NULL));
  DSC_TRY(dsc_check_disjoint(FN, "dw", dw, "dy", dy, "xq", xq, "xs", xs, "wq", wq, "ws", ws, NULL));
  DSC_TRY(check_scales(ctx, FN, "xs", xs));
  DSC_TRY(check_scales(ctx, FN, "ws", ws));

  const dsc_dtype dyt = dsc_tensor_dtype(dy);
  if (dx)
    DSC_TRY(dsc_fp8l_dgrad(ctx, 1, M, N, K, dyt, dsc_data(dy), dsc_tensor_dtype(wq),
                           (const uint8_t *)dsc_data(wq), (const float *)dsc_data(ws), 0, NULL,
                           NULL, dsc_data(dx)));
  if (dw)
    DSC_TRY(dsc_fp8l_wgrad(ctx, 1, M, N, K, dyt, dsc_data(dy), dsc_tensor_dtype(xq),
                           dsc_data(xq), (const float *)dsc_data(xs), NULL,
                           (float *)dsc_data(dw)));
  return DSC_OK;
}
