/*
 * ops/sample_internal.h -- the internal ops of generation's device-resident decode loop
 * (ops/sample.c): arguments are made by csrc/model/generate.c, not users, so only what
 * the callers cannot guarantee is checked. Pointers are on the context's device.
 */
#ifndef DSC_OPS_SAMPLE_INTERNAL_H_
#define DSC_OPS_SAMPLE_INTERNAL_H_

#include "backend.h"

/* dsc_sample_tokens on raw device arrays (see backend.h sample_tokens). */
dsc_status dsc_sample_rows(dsc_context *ctx, int64_t B, int64_t V, const dsc_sample_params *p,
                           const float *logits, int64_t *rng, const int32_t *active,
                           int32_t *tokens);
/* One step's bookkeeping (backend.h decode_advance). */
dsc_status dsc_decode_advance(dsc_context *ctx, int64_t B, int32_t max_new, int32_t eos,
                              const int32_t *tok, int32_t *ids, int32_t *pos, int32_t *state,
                              int32_t *out);

/* Speculative (MTP) decoding's step (backend.h spec_inputs / spec_draft / spec_verify;
 * layouts in core/spec_step.h). q is ignored when p is greedy (temperature 0). */
dsc_status dsc_spec_inputs(dsc_context *ctx, int32_t mode, int64_t B, int32_t T, int32_t K, int32_t j,
                           int32_t max_new, const int32_t *plen, const int32_t *state, const int32_t *out,
                           const int32_t *drafts, const int32_t *nd, const int32_t *acc, int32_t *ids,
                           int32_t *pos, int32_t *gidx, int32_t *last);
dsc_status dsc_spec_draft(dsc_context *ctx, int64_t B, int32_t K, int32_t j, int64_t V, const dsc_sample_params *p,
                          const float *logits, int64_t *rng, const int32_t *nd, int32_t *drafts, double *q);
dsc_status dsc_spec_verify(dsc_context *ctx, int64_t B, int32_t K, int64_t V, int32_t max_new, int32_t eos,
                           const dsc_sample_params *p, const float *logits, const int32_t *drafts,
                           const double *q, int64_t *rng, int32_t *state, int32_t *out, int32_t *nd,
                           int32_t *acc, int32_t nrec, int32_t *cnt, int32_t *rec);

#endif /* DSC_OPS_SAMPLE_INTERNAL_H_ */
