/*
 * ops/moe.c -- validation and dispatch of the MoE ops: routing and its backward, expert
 * load, bias update, sequence-wise balance loss, permute / unpermute (with backward).
 *
 * Checks ctx and every tensor (device, dtype, contiguity), then ranks and shapes, then
 * parameters and index values (through the backend's index_range, on the device); only
 * then calls dsc_cpu_moe_* or dsc_cuda_moe_* (DSC_DISPATCH, core/backend.h).
 *
 * Legend: T tokens, E routed experts, k experts per token, G groups, D hidden,
 *         R permuted rows, L sequence length.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "moe_internal.h"

void dsc_moe_route_params_default(dsc_moe_route_params *p) {
  if (!p) return;
  memset(p, 0, sizeof *p);
  p->size = sizeof *p;
  p->top_k = 8;
  p->n_group = 8;
  p->topk_group = 4;
  p->scoring = DSC_MOE_SCORING_SIGMOID;
  p->topk_method = DSC_MOE_TOPK_NOAUX_TC;
  p->norm_topk_prob = 1;
  p->routed_scaling_factor = 2.5f;
}

static int is64(const DLTensor *t) { return dsc_tensor_dtype(t) == DSC_DTYPE_INT64; }

/* Every value of an index tensor in [0, hi). */
static dsc_status check_range(dsc_context *ctx, const char *fn, const char *arg,
                              const DLTensor *ids, int64_t hi, const char *what) {
  const int64_t n = dsc_numel(ids);
  if (n == 0) return DSC_OK;
  int64_t bad_pos = -1, bad_value = 0;
  DSC_TRY(dsc_index_range(ctx, n, is64(ids), dsc_data(ids), 0, hi, 0, &bad_pos, &bad_value));
  DSC_CHECK(bad_pos < 0, DSC_ERR_INVALID_ARGUMENT, fn,
            "%s: expected values in [0, %lld) (%s), got %lld at flat position %lld", arg,
            (long long)hi, what, (long long)bad_value, (long long)bad_pos);
  return DSC_OK;
}

/* A [T, k] tensor with the given T, k (T or k < 0: take it from the tensor). */
static dsc_status check_2d(const char *fn, const char *arg, const DLTensor *t, int64_t d0,
                           int64_t d1, const char *what) {
  DSC_TRY(dsc_check_ndim(fn, arg, t, 2, 2, what));
  const int64_t shape[2] = {d0 < 0 ? t->shape[0] : d0, d1 < 0 ? t->shape[1] : d1};
  return dsc_check_shape(fn, arg, t, 2, shape);
}

static dsc_status check_params(const char *fn, const dsc_moe_route_params *p, int64_t E) {
  DSC_CHECK(p != NULL, DSC_ERR_INVALID_ARGUMENT, fn, "p: expected route parameters, got NULL");
  DSC_CHECK(p->size >= sizeof(dsc_moe_route_params), DSC_ERR_INVALID_ARGUMENT, fn,
            "p->size: expected sizeof(dsc_moe_route_params) = %zu, got %zu",
            sizeof(dsc_moe_route_params), p->size);
  DSC_CHECK(p->scoring == DSC_MOE_SCORING_SIGMOID || p->scoring == DSC_MOE_SCORING_SOFTMAX,
            DSC_ERR_INVALID_ARGUMENT, fn,
            "p->scoring: expected DSC_MOE_SCORING_SIGMOID (0) or _SOFTMAX (1), got %d",
            (int)p->scoring);
  DSC_CHECK(p->topk_method >= DSC_MOE_TOPK_NOAUX_TC &&
                p->topk_method <= DSC_MOE_TOPK_GROUP_LIMITED_GREEDY,
            DSC_ERR_INVALID_ARGUMENT, fn,
            "p->topk_method: expected NOAUX_TC (0), GREEDY (1) or GROUP_LIMITED_GREEDY (2), "
            "got %d",
            (int)p->topk_method);
  DSC_CHECK(p->norm_topk_prob == 0 || p->norm_topk_prob == 1, DSC_ERR_INVALID_ARGUMENT, fn,
            "p->norm_topk_prob: expected 0 or 1, got %d", (int)p->norm_topk_prob);
  DSC_CHECK(isfinite(p->routed_scaling_factor), DSC_ERR_INVALID_ARGUMENT, fn,
            "p->routed_scaling_factor: expected a finite number, got %g",
            (double)p->routed_scaling_factor);
  DSC_CHECK(E >= 1, DSC_ERR_SHAPE, fn, "logits: expected at least 1 expert, got %lld",
            (long long)E);
  DSC_CHECK(p->top_k >= 1 && p->top_k <= E, DSC_ERR_INVALID_ARGUMENT, fn,
            "p->top_k: expected 1 <= top_k <= n_experts = %lld, got %d", (long long)E,
            (int)p->top_k);
  DSC_CHECK(p->n_group >= 1 && E % p->n_group == 0, DSC_ERR_INVALID_ARGUMENT, fn,
            "p->n_group: expected a divisor of n_experts = %lld, got %d", (long long)E,
            (int)p->n_group);
  DSC_CHECK(p->topk_group >= 1 && p->topk_group <= p->n_group, DSC_ERR_INVALID_ARGUMENT, fn,
            "p->topk_group: expected 1 <= topk_group <= n_group = %d, got %d", (int)p->n_group,
            (int)p->topk_group);
  if (p->topk_method != DSC_MOE_TOPK_GREEDY) {
    const int64_t kept = (int64_t)p->topk_group * (E / p->n_group);
    DSC_CHECK(p->top_k <= kept, DSC_ERR_INVALID_ARGUMENT, fn,
              "p->top_k: expected at most topk_group * n_experts / n_group = %d * %lld = %lld "
              "experts (those in the kept groups), got %d",
              (int)p->topk_group, (long long)(E / p->n_group), (long long)kept, (int)p->top_k);
  }
  return DSC_OK;
}

dsc_status dsc_moe_check_route_params(const char *fn, const dsc_moe_route_params *p, int64_t E) {
  return check_params(fn, p, E);
}

/* ---- routing ------------------------------------------------------------------ */

dsc_status dsc_moe_route(dsc_context *ctx, const dsc_moe_route_params *p, const DLTensor *logits,
                         const DLTensor *bias, DLTensor *indices, DLTensor *weights,
                         DLTensor *scores) {
  static const char *const FN = "dsc_moe_route";
  DSC_TRY(dsc_check_tensor(ctx, FN, "logits", logits, DSC_DT_FLOAT));
  if (bias) DSC_TRY(dsc_check_tensor(ctx, FN, "bias", bias, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "indices", indices, DSC_DT(DSC_DTYPE_INT32)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "weights", weights, DSC_DT(DSC_DTYPE_FLOAT32)));
  if (scores) DSC_TRY(dsc_check_tensor(ctx, FN, "scores", scores, DSC_DT(DSC_DTYPE_FLOAT32)));

  DSC_TRY(dsc_check_ndim(FN, "logits", logits, 2, 2, "(tokens, n_experts)"));
  const int64_t T = logits->shape[0], E = logits->shape[1];
  DSC_TRY(check_params(FN, p, E));
  const int64_t k = p->top_k;
  if (bias) {
    DSC_TRY(dsc_check_shape(FN, "bias", bias, 1, &E));
    DSC_CHECK(p->scoring == DSC_MOE_SCORING_SIGMOID && p->topk_method == DSC_MOE_TOPK_NOAUX_TC,
              DSC_ERR_INVALID_ARGUMENT, FN,
              "bias: expected NULL unless scoring is sigmoid and topk_method noaux_tc (the "
              "correction bias is DeepSeek-V3's), got a bias with scoring %d, topk_method %d",
              (int)p->scoring, (int)p->topk_method);
  }
  DSC_TRY(check_2d(FN, "indices", indices, T, k, "(tokens, top_k)"));
  DSC_TRY(check_2d(FN, "weights", weights, T, k, "(tokens, top_k)"));
  if (scores) DSC_TRY(dsc_check_same_shape(FN, "scores", scores, "logits", logits));
  /* a token's logits are read before its scores are written: scores may be (float32)
   * logits itself; no other output shares memory with anything */
  DSC_TRY(dsc_check_inplace_or_disjoint(FN, "scores", scores, "logits", logits));
  DSC_TRY(dsc_check_disjoint(FN, "scores", scores, "bias", bias, "indices", indices, "weights", weights, NULL));
  DSC_TRY(dsc_check_disjoint(FN, "indices", indices, "logits", logits, "bias", bias, "weights", weights, NULL));
  DSC_TRY(dsc_check_disjoint(FN, "weights", weights, "logits", logits, "bias", bias, NULL));
  if (T == 0) return DSC_OK;

  return DSC_DISPATCH(moe_route, ctx, dsc_tensor_dtype(logits), T, E, k, p->n_group, p->topk_group,
                      p->scoring, p->topk_method, p->norm_topk_prob, p->routed_scaling_factor,
                      dsc_data(logits), bias ? (const float *)dsc_data(bias) : NULL,
                      (int32_t *)dsc_data(indices), (float *)dsc_data(weights),
                      scores ? (float *)dsc_data(scores) : NULL);
}

dsc_status dsc_moe_route_backward(dsc_context *ctx, const dsc_moe_route_params *p,
                                  const DLTensor *dweights, const DLTensor *scores,
                                  const DLTensor *indices, const DLTensor *dscores,
                                  DLTensor *dlogits) {
  static const char *const FN = "dsc_moe_route_backward";
  DSC_TRY(dsc_check_tensor(ctx, FN, "dweights", dweights, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "scores", scores, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "indices", indices, DSC_DT_INDEX));
  if (dscores)
    DSC_TRY(dsc_check_tensor(ctx, FN, "dscores", dscores, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "dlogits", dlogits, DSC_DT_FLOAT));

  DSC_TRY(dsc_check_ndim(FN, "scores", scores, 2, 2, "(tokens, n_experts)"));
  const int64_t T = scores->shape[0], E = scores->shape[1];
  DSC_TRY(check_params(FN, p, E));
  const int64_t k = p->top_k;
  DSC_TRY(check_2d(FN, "indices", indices, T, k, "(tokens, top_k)"));
  DSC_TRY(check_2d(FN, "dweights", dweights, T, k, "(tokens, top_k)"));
  if (dscores) DSC_TRY(dsc_check_same_shape(FN, "dscores", dscores, "scores", scores));
  DSC_TRY(dsc_check_same_shape(FN, "dlogits", dlogits, "scores", scores));
  /* a token's scores and dscores are read before its dlogits are written: dlogits may be
   * (float32) scores or dscores itself */
  DSC_TRY(dsc_check_inplace_or_disjoint(FN, "dlogits", dlogits, "scores", scores));
  DSC_TRY(dsc_check_inplace_or_disjoint(FN, "dlogits", dlogits, "dscores", dscores));
  DSC_TRY(dsc_check_disjoint(FN, "dlogits", dlogits, "dweights", dweights, "indices", indices, NULL));
  DSC_TRY(check_range(ctx, FN, "indices", indices, E, "expert ids"));
  if (T == 0) return DSC_OK;

  return DSC_DISPATCH(moe_route_bwd, ctx, T, E, k, p->scoring, p->norm_topk_prob, p->routed_scaling_factor,
                      (const float *)dsc_data(dweights), (const float *)dsc_data(scores), is64(indices),
                      dsc_data(indices), dscores ? (const float *)dsc_data(dscores) : NULL,
                      dsc_tensor_dtype(dlogits), dsc_data(dlogits));
}

/* ---- balancing ------------------------------------------------------------------ */

dsc_status dsc_moe_expert_load(dsc_context *ctx, const DLTensor *indices, DLTensor *counts) {
  static const char *const FN = "dsc_moe_expert_load";
  DSC_TRY(dsc_check_tensor(ctx, FN, "indices", indices, DSC_DT_INDEX));
  DSC_TRY(dsc_check_tensor(ctx, FN, "counts", counts, DSC_DT_INDEX));
  DSC_TRY(dsc_check_ndim(FN, "counts", counts, 1, 1, "(n_experts)"));
  const int64_t E = counts->shape[0];
  DSC_CHECK(E >= 1, DSC_ERR_SHAPE, FN, "counts: expected at least 1 expert, got shape (0)");
  DSC_TRY(dsc_check_no_overlap(FN, "counts", counts, "indices", indices));
  DSC_TRY(check_range(ctx, FN, "indices", indices, E, "expert ids; n_experts from counts"));
  return DSC_DISPATCH(moe_expert_load, ctx, dsc_numel(indices), is64(indices), dsc_data(indices), E,
                      is64(counts), dsc_data(counts));
}

dsc_status dsc_moe_update_bias(dsc_context *ctx, DLTensor *bias, const DLTensor *counts,
                               float rate) {
  static const char *const FN = "dsc_moe_update_bias";
  DSC_TRY(dsc_check_tensor(ctx, FN, "bias", bias, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "counts", counts, DSC_DT_INDEX));
  DSC_TRY(dsc_check_ndim(FN, "bias", bias, 1, 1, "(n_experts)"));
  const int64_t E = bias->shape[0];
  DSC_TRY(dsc_check_shape(FN, "counts", counts, 1, &E));
  DSC_CHECK(isfinite(rate) && rate >= 0.0f, DSC_ERR_INVALID_ARGUMENT, FN,
            "rate: expected a finite number >= 0, got %g", (double)rate);
  DSC_TRY(dsc_check_no_overlap(FN, "bias", bias, "counts", counts));
  if (E == 0) return DSC_OK;
  /* counts are token counts: negative ones are a caller's bug */
  int64_t bad_pos = -1, bad_value = 0;
  DSC_TRY(dsc_index_range(ctx, E, is64(counts), dsc_data(counts), 0, INT64_MAX, 0, &bad_pos,
                  &bad_value));
  DSC_CHECK(bad_pos < 0, DSC_ERR_INVALID_ARGUMENT, FN,
            "counts: expected values >= 0, got %lld at position %lld", (long long)bad_value,
            (long long)bad_pos);
  return DSC_DISPATCH(moe_update_bias, ctx, E, (float *)dsc_data(bias), is64(counts), dsc_data(counts), rate, NULL);
}

dsc_status dsc_moe_seq_aux_loss(dsc_context *ctx, const DLTensor *scores, const DLTensor *indices,
                                int64_t seq_len, float alpha, DLTensor *loss, DLTensor *dscores) {
  static const char *const FN = "dsc_moe_seq_aux_loss";
  char buf[256];
  DSC_TRY(dsc_check_tensor(ctx, FN, "scores", scores, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "indices", indices, DSC_DT_INDEX));
  DSC_TRY(dsc_check_tensor(ctx, FN, "loss", loss, DSC_DT(DSC_DTYPE_FLOAT32)));
  if (dscores)
    DSC_TRY(dsc_check_tensor(ctx, FN, "dscores", dscores, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_ndim(FN, "scores", scores, 2, 2, "(tokens, n_experts)"));
  const int64_t T = scores->shape[0], E = scores->shape[1];
  DSC_CHECK(E >= 1, DSC_ERR_SHAPE, FN, "scores: expected at least 1 expert, got %s",
            dsc_shape_str(scores, buf, sizeof buf));
  DSC_TRY(check_2d(FN, "indices", indices, T, -1, "(tokens, top_k)"));
  const int64_t k = indices->shape[1];
  DSC_CHECK(k >= 1 && k <= E, DSC_ERR_SHAPE, FN,
            "indices: expected 1 <= top_k <= n_experts = %lld columns, got %s", (long long)E,
            dsc_shape_str(indices, buf, sizeof buf));
  DSC_CHECK(loss->ndim == 0 || (loss->ndim == 1 && loss->shape[0] == 1), DSC_ERR_SHAPE, FN,
            "loss: expected shape () or (1), got %s", dsc_shape_str(loss, buf, sizeof buf));
  if (dscores) DSC_TRY(dsc_check_same_shape(FN, "dscores", dscores, "scores", scores));
  DSC_CHECK(seq_len >= 1 && T % seq_len == 0, DSC_ERR_INVALID_ARGUMENT, FN,
            "seq_len: expected a positive divisor of tokens = %lld, got %lld", (long long)T,
            (long long)seq_len);
  DSC_CHECK(isfinite(alpha), DSC_ERR_INVALID_ARGUMENT, FN, "alpha: expected a finite number, got %g",
            (double)alpha);
  /* a sequence's scores are all read before its dscores rows are written: dscores may be
   * scores itself */
  DSC_TRY(dsc_check_inplace_or_disjoint(FN, "dscores", dscores, "scores", scores));
  DSC_TRY(dsc_check_disjoint(FN, "dscores", dscores, "indices", indices, "loss", loss, NULL));
  DSC_TRY(dsc_check_disjoint(FN, "loss", loss, "scores", scores, "indices", indices, NULL));
  DSC_TRY(check_range(ctx, FN, "indices", indices, E, "expert ids"));
  return DSC_DISPATCH(moe_seq_aux_loss, ctx, T, E, k, seq_len, (const float *)dsc_data(scores), is64(indices),
                      dsc_data(indices), alpha, (float *)dsc_data(loss),
                      dscores ? (float *)dsc_data(dscores) : NULL);
}

/* ---- dispatch / combine ---------------------------------------------------------- */

static dsc_status check_experts_align(const char *fn, int32_t n_experts, int32_t align) {
  DSC_CHECK(n_experts >= 1, DSC_ERR_INVALID_ARGUMENT, fn,
            "n_experts: expected a number >= 1, got %d", (int)n_experts);
  DSC_CHECK(align >= 1, DSC_ERR_INVALID_ARGUMENT, fn, "align: expected a number >= 1, got %d",
            (int)align);
  return DSC_OK;
}

/* R for indices; fails when it does not fit the int32 offsets. */
static dsc_status permute_rows(dsc_context *ctx, const char *fn, const DLTensor *indices,
                               int64_t E, int64_t align, int64_t *rows) {
  DSC_TRY(check_range(ctx, fn, "indices", indices, E, "expert ids"));
  if (align == 1) /* every (token, slot) pair gets its own row: no count (no GPU round trip) */
    *rows = dsc_numel(indices);
  else
    DSC_TRY(DSC_DISPATCH(moe_permute_rows, ctx, dsc_numel(indices), is64(indices), dsc_data(indices), E,
                         align, rows));
  DSC_CHECK(*rows <= INT32_MAX, DSC_ERR_UNSUPPORTED, fn,
            "indices: expected at most 2^31-1 permuted rows (int32 offsets), got %lld",
            (long long)*rows);
  return DSC_OK;
}

dsc_status dsc_moe_permute_rows(dsc_context *ctx, const DLTensor *indices, int32_t n_experts,
                                int32_t align, int64_t *rows) {
  static const char *const FN = "dsc_moe_permute_rows";
  DSC_TRY(dsc_check_tensor(ctx, FN, "indices", indices, DSC_DT_INDEX));
  DSC_CHECK(rows != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "rows: expected a pointer, got NULL");
  DSC_TRY(check_experts_align(FN, n_experts, align));
  return permute_rows(ctx, FN, indices, n_experts, align, rows);
}

dsc_status dsc_moe_permute(dsc_context *ctx, const DLTensor *x, const DLTensor *indices,
                           int32_t n_experts, int32_t align, DLTensor *out,
                           DLTensor *group_offsets, DLTensor *row_map) {
  static const char *const FN = "dsc_moe_permute";
  char buf[256];
  DSC_TRY(dsc_check_tensor(ctx, FN, "x", x, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "indices", indices, DSC_DT_INDEX));
  DSC_TRY(dsc_check_tensor(ctx, FN, "out", out, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "group_offsets", group_offsets, DSC_DT(DSC_DTYPE_INT32)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "row_map", row_map, DSC_DT(DSC_DTYPE_INT32)));
  DSC_TRY(dsc_check_same_dtype(FN, "out", out, "x", x));
  DSC_TRY(check_experts_align(FN, n_experts, align));

  DSC_TRY(dsc_check_ndim(FN, "x", x, 2, 2, "(tokens, D)"));
  const int64_t T = x->shape[0], D = x->shape[1], E = n_experts;
  DSC_TRY(check_2d(FN, "indices", indices, T, -1, "(tokens, top_k)"));
  const int64_t k = indices->shape[1];
  DSC_TRY(dsc_check_same_shape(FN, "row_map", row_map, "indices", indices));
  const int64_t off_shape = E + 1;
  DSC_TRY(dsc_check_shape(FN, "group_offsets", group_offsets, 1, &off_shape));
  DSC_TRY(dsc_check_ndim(FN, "out", out, 2, 2, "(R, D)"));
  DSC_TRY(dsc_check_disjoint(FN, "out", out, "x", x, "indices", indices, "group_offsets", group_offsets,
                             "row_map", row_map, NULL));
  DSC_TRY(dsc_check_disjoint(FN, "group_offsets", group_offsets, "x", x, "indices", indices, "row_map",
                             row_map, NULL));
  DSC_TRY(dsc_check_disjoint(FN, "row_map", row_map, "x", x, "indices", indices, NULL));
  int64_t R = 0;
  DSC_TRY(permute_rows(ctx, FN, indices, E, align, &R));
  DSC_CHECK(out->shape[0] == R && out->shape[1] == D, DSC_ERR_SHAPE, FN,
            "out: expected shape (%lld, %lld) (R = sum over experts of the token count rounded "
            "up to align = %d; see dsc_moe_permute_rows), got %s",
            (long long)R, (long long)D, (int)align, dsc_shape_str(out, buf, sizeof buf));
  return DSC_DISPATCH(moe_permute, ctx, dsc_tensor_dtype(x), T, D, k, is64(indices), dsc_data(indices), E,
                      align, dsc_data(x), R, dsc_data(out), (int32_t *)dsc_data(group_offsets),
                      (int32_t *)dsc_data(row_map));
}

int64_t dsc_moe_row_bound(int64_t n, int64_t E, int64_t align) {
  if (n < 0 || E < 1 || align < 1) return -1;
  int ok = 1;
  /* only experts with a pair pad: at most min(E, n) of them */
  int64_t r = dsc_cmul(E < n ? E : n, align - 1, &ok);
  if (!ok || r > INT64_MAX - n) return -1;
  r += n;
  if (align > 1) { /* whole blocks of align rows (the FP8 wgrad's 128-token tiles) */
    if (r > INT64_MAX - (align - 1)) return -1;
    r = (r + align - 1) / align * align;
  }
  return r;
}

dsc_status dsc_moe_permute_bound(dsc_context *ctx, const char *fn, const DLTensor *x,
                                 const DLTensor *indices, int32_t n_experts, int32_t align,
                                 DLTensor *out, DLTensor *group_offsets, DLTensor *row_map) {
  /* the layer's own contiguous buffers and routing: shapes only (no range check, no count) */
  const int64_t T = x->shape[0], D = x->shape[1], k = indices->shape[1], E = n_experts;
  const int64_t Rb = dsc_moe_row_bound(T * k, E, align);
  DSC_CHECK(Rb >= 0 && Rb <= INT32_MAX, DSC_ERR_UNSUPPORTED, fn,
            "x: expected at most 2^31-1 permuted rows (int32 offsets) for %lld tokens x top_k %lld "
            "and %lld experts with align %d", (long long)T, (long long)k, (long long)E, (int)align);
  DSC_CHECK(out->shape[0] == Rb && out->shape[1] == D && group_offsets->shape[0] == E + 1 &&
                row_map->shape[0] == T && row_map->shape[1] == k,
            DSC_ERR_INTERNAL, fn, "the permutation's buffers do not have the layer's bound shapes");
  return DSC_DISPATCH(moe_permute, ctx, dsc_tensor_dtype(x), T, D, k, is64(indices), dsc_data(indices), E,
                      align, dsc_data(x), Rb, dsc_data(out), (int32_t *)dsc_data(group_offsets),
                      (int32_t *)dsc_data(row_map));
}

dsc_status dsc_moe_permute_backward(dsc_context *ctx, const DLTensor *dout,
                                    const DLTensor *row_map, DLTensor *dx) {
  static const char *const FN = "dsc_moe_permute_backward";
  DSC_TRY(dsc_check_tensor(ctx, FN, "dout", dout, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "row_map", row_map, DSC_DT(DSC_DTYPE_INT32)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "dx", dx, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_same_dtype(FN, "dx", dx, "dout", dout));
  DSC_TRY(dsc_check_ndim(FN, "dout", dout, 2, 2, "(R, D)"));
  const int64_t R = dout->shape[0], D = dout->shape[1];
  DSC_TRY(check_2d(FN, "row_map", row_map, -1, -1, "(tokens, top_k)"));
  const int64_t T = row_map->shape[0], k = row_map->shape[1];
  DSC_TRY(check_2d(FN, "dx", dx, T, D, "(tokens, D)"));
  DSC_TRY(dsc_check_disjoint(FN, "dx", dx, "dout", dout, "row_map", row_map, NULL));
  DSC_TRY(check_range(ctx, FN, "row_map", row_map, R, "rows of dout"));
  if (T == 0 || D == 0) return DSC_OK;
  return DSC_DISPATCH(moe_permute_bwd, ctx, dsc_tensor_dtype(dout), T, D, k, dsc_data(dout),
                      (const int32_t *)dsc_data(row_map), dsc_data(dx));
}

dsc_status dsc_moe_unpermute(dsc_context *ctx, const DLTensor *expert_out, const DLTensor *row_map,
                             const DLTensor *weights, DLTensor *y) {
  static const char *const FN = "dsc_moe_unpermute";
  char buf[256];
  DSC_TRY(dsc_check_tensor(ctx, FN, "expert_out", expert_out, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "row_map", row_map, DSC_DT(DSC_DTYPE_INT32)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "weights", weights, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "y", y, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_same_dtype(FN, "y", y, "expert_out", expert_out));
  DSC_TRY(dsc_check_ndim(FN, "expert_out", expert_out, 2, 2, "(R, D)"));
  const int64_t R = expert_out->shape[0], D = expert_out->shape[1];
  DSC_TRY(check_2d(FN, "row_map", row_map, -1, -1, "(tokens, top_k)"));
  const int64_t T = row_map->shape[0], k = row_map->shape[1];
  DSC_CHECK(k >= 1 || T == 0, DSC_ERR_SHAPE, FN,
            "row_map: expected at least 1 column (top_k), got %s",
            dsc_shape_str(row_map, buf, sizeof buf));
  DSC_TRY(dsc_check_same_shape(FN, "weights", weights, "row_map", row_map));
  DSC_TRY(check_2d(FN, "y", y, T, D, "(tokens, D)"));
  DSC_TRY(dsc_check_disjoint(FN, "y", y, "expert_out", expert_out, "row_map", row_map, "weights", weights,
                             NULL));
  DSC_TRY(check_range(ctx, FN, "row_map", row_map, R, "rows of expert_out"));
  if (T == 0 || D == 0) return DSC_OK;
  return DSC_DISPATCH(moe_unpermute, ctx, dsc_tensor_dtype(expert_out), T, D, k, dsc_data(expert_out),
                      (const int32_t *)dsc_data(row_map), (const float *)dsc_data(weights), dsc_data(y));
}

dsc_status dsc_moe_unpermute_backward(dsc_context *ctx, const DLTensor *dy,
                                      const DLTensor *expert_out, const DLTensor *row_map,
                                      const DLTensor *weights, DLTensor *dexpert_out,
                                      DLTensor *dweights) {
  static const char *const FN = "dsc_moe_unpermute_backward";
  DSC_TRY(dsc_check_tensor(ctx, FN, "dy", dy, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "expert_out", expert_out, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "row_map", row_map, DSC_DT(DSC_DTYPE_INT32)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "weights", weights, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_CHECK(dexpert_out != NULL || dweights != NULL, DSC_ERR_INVALID_ARGUMENT, FN,
            "dexpert_out, dweights: expected at least one output tensor, got NULL for both");
  if (dexpert_out)
    DSC_TRY(dsc_check_tensor(ctx, FN, "dexpert_out", dexpert_out, DSC_DT_FLOAT));
  if (dweights)
    DSC_TRY(dsc_check_tensor(ctx, FN, "dweights", dweights, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_same_dtype(FN, "expert_out", expert_out, "dy", dy));
  if (dexpert_out) DSC_TRY(dsc_check_same_dtype(FN, "dexpert_out", dexpert_out, "dy", dy));
  DSC_TRY(dsc_check_ndim(FN, "expert_out", expert_out, 2, 2, "(R, D)"));
  const int64_t R = expert_out->shape[0], D = expert_out->shape[1];
  DSC_TRY(check_2d(FN, "row_map", row_map, -1, -1, "(tokens, top_k)"));
  const int64_t T = row_map->shape[0], k = row_map->shape[1];
  DSC_TRY(dsc_check_same_shape(FN, "weights", weights, "row_map", row_map));
  DSC_TRY(check_2d(FN, "dy", dy, T, D, "(tokens, D)"));
  if (dexpert_out)
    DSC_TRY(dsc_check_same_shape(FN, "dexpert_out", dexpert_out, "expert_out", expert_out));
  if (dweights) DSC_TRY(dsc_check_same_shape(FN, "dweights", dweights, "row_map", row_map));
  DSC_TRY(dsc_check_disjoint(FN, "dexpert_out", dexpert_out, "dy", dy, "expert_out", expert_out, "row_map",
                             row_map, "weights", weights, "dweights", dweights, NULL));
  DSC_TRY(dsc_check_disjoint(FN, "dweights", dweights, "dy", dy, "expert_out", expert_out, "row_map",
                             row_map, "weights", weights, NULL));
  DSC_TRY(check_range(ctx, FN, "row_map", row_map, R, "rows of expert_out"));
  if (R * D == 0 && T * k == 0) return DSC_OK;
  return DSC_DISPATCH(moe_unpermute_bwd, ctx, dsc_tensor_dtype(dy), T, D, k, R, dsc_data(dy),
                      dsc_data(expert_out), (const int32_t *)dsc_data(row_map),
                      (const float *)dsc_data(weights), dexpert_out ? dsc_data(dexpert_out) : NULL,
                      dweights ? (float *)dsc_data(dweights) : NULL);
}
