/*
 * ops/sample.c -- validation and dispatch of token sampling (dsc_sample_tokens), and the
 * internal per-step ops of generation's device-resident decode loops (plain and
 * speculative).
 *
 * Legend: B rows, V vocabulary.
 */
#include <math.h>
#include <string.h>

#include "sample_internal.h"

void dsc_sample_params_default(dsc_sample_params *p) {
  if (!p) return;
  memset(p, 0, sizeof *p);
  p->size = sizeof *p;
  p->temperature = 0.0f;
  p->top_k = 0;
  p->top_p = 1.0f;
}

dsc_status dsc_sample_tokens(dsc_context *ctx, const dsc_sample_params *p, const DLTensor *logits,
                             DLTensor *rng, const DLTensor *active, DLTensor *tokens) {
  static const char *const FN = "dsc_sample_tokens";
  DSC_CHECK(ctx != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "ctx: expected a context, got NULL");
  DSC_CHECK(p != NULL && p->size >= sizeof(dsc_sample_params), DSC_ERR_INVALID_ARGUMENT, FN,
            "p: expected params with size = %zu (dsc_sample_params_default), got %zu",
            sizeof(dsc_sample_params), p ? p->size : (size_t)0);
  DSC_CHECK(isfinite(p->temperature) && p->temperature >= 0.0f, DSC_ERR_INVALID_ARGUMENT, FN,
            "p->temperature: expected a finite value >= 0 (0: greedy), got %g", (double)p->temperature);
  DSC_CHECK(p->top_k >= 0, DSC_ERR_INVALID_ARGUMENT, FN, "p->top_k: expected >= 0 (0: off), got %d",
            (int)p->top_k);
  DSC_CHECK(p->top_p > 0.0f && p->top_p <= 1.0f, DSC_ERR_INVALID_ARGUMENT, FN,
            "p->top_p: expected a value in (0, 1] (1: off), got %g", (double)p->top_p);
  DSC_TRY(dsc_check_tensor(ctx, FN, "logits", logits, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "rng", rng, DSC_DT(DSC_DTYPE_INT64)));
  if (active) DSC_TRY(dsc_check_tensor(ctx, FN, "active", active, DSC_DT(DSC_DTYPE_INT32)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "tokens", tokens, DSC_DT(DSC_DTYPE_INT32)));
  DSC_TRY(dsc_check_ndim(FN, "logits", logits, 2, 2, "(B, V)"));
  const int64_t B = logits->shape[0], V = logits->shape[1];
  DSC_CHECK(V >= 1, DSC_ERR_SHAPE, FN, "logits: expected a vocabulary V >= 1, got shape (%lld, %lld)",
            (long long)B, (long long)V);
  DSC_CHECK(V <= INT32_MAX, DSC_ERR_SHAPE, FN, "logits: expected V < 2^31 (int32 ids), got %lld",
            (long long)V);
  const int64_t rs[2] = {B, 2};
  DSC_TRY(dsc_check_shape(FN, "rng", rng, 2, rs));
  if (active) DSC_TRY(dsc_check_shape(FN, "active", active, 1, &B));
  DSC_TRY(dsc_check_shape(FN, "tokens", tokens, 1, &B));
  DSC_TRY(dsc_check_disjoint(FN, "tokens", tokens, "logits", logits, "rng", rng, "active", active, NULL));
  DSC_TRY(dsc_check_disjoint(FN, "rng", rng, "logits", logits, "active", active, NULL));
  if (B == 0) return DSC_OK;
  return dsc_sample_rows(ctx, B, V, p, (const float *)dsc_data(logits), (int64_t *)dsc_data(rng),
                         active ? (const int32_t *)dsc_data(active) : NULL, (int32_t *)dsc_data(tokens));
}

dsc_status dsc_sample_rows(dsc_context *ctx, int64_t B, int64_t V, const dsc_sample_params *p,
                           const float *logits, int64_t *rng, const int32_t *active,
                           int32_t *tokens) {
  return DSC_DISPATCH(sample_tokens, ctx, B, V, p->temperature, p->top_k, p->top_p, logits, rng, active,
                      tokens);
}

dsc_status dsc_decode_advance(dsc_context *ctx, int64_t B, int32_t max_new, int32_t eos,
                              const int32_t *tok, int32_t *ids, int32_t *pos, int32_t *state,
                              int32_t *out) {
  return DSC_DISPATCH(decode_advance, ctx, B, max_new, eos, tok, ids, pos, state, out);
}

dsc_status dsc_spec_inputs(dsc_context *ctx, int32_t mode, int64_t B, int32_t T, int32_t K, int32_t j,
                           int32_t max_new, const int32_t *plen, const int32_t *state, const int32_t *out,
                           const int32_t *drafts, const int32_t *nd, const int32_t *acc, int32_t *ids,
                           int32_t *pos, int32_t *gidx, int32_t *last) {
  return DSC_DISPATCH(spec_inputs, ctx, mode, B, T, K, j, max_new, plen, state, out, drafts, nd, acc, ids, pos,
                      gidx, last);
}

dsc_status dsc_spec_draft(dsc_context *ctx, int64_t B, int32_t K, int32_t j, int64_t V, const dsc_sample_params *p,
                          const float *logits, int64_t *rng, const int32_t *nd, int32_t *drafts, double *q) {
  return DSC_DISPATCH(spec_draft, ctx, B, K, j, V, p->temperature, p->top_k, p->top_p, logits, rng, nd, drafts,
                      p->temperature == 0.0f ? NULL : q);
}

dsc_status dsc_spec_verify(dsc_context *ctx, int64_t B, int32_t K, int64_t V, int32_t max_new, int32_t eos,
                           const dsc_sample_params *p, const float *logits, const int32_t *drafts,
                           const double *q, int64_t *rng, int32_t *state, int32_t *out, int32_t *nd,
                           int32_t *acc, int32_t nrec, int32_t *cnt, int32_t *rec) {
  return DSC_DISPATCH(spec_verify, ctx, B, K, V, max_new, eos, p->temperature, p->top_k, p->top_p, logits,
                      drafts, p->temperature == 0.0f ? NULL : q, rng, state, out, nd, acc, nrec, cnt, rec);
}
