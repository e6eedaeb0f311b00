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

#endif /* DSC_OPS_SAMPLE_INTERNAL_H_ */
