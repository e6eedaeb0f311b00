/*
 * ops/grpo.h -- internal: the check of a dsc_grpo_params that dsc_grpo_advantages,
 * dsc_grpo_loss and dsc_model_policy_step share, naming the caller in its messages.
 */
#ifndef DSC_OPS_GRPO_H
#define DSC_OPS_GRPO_H

#include "backend.h"

/* p non-NULL, p->size >= sizeof(dsc_grpo_params), every field in range (deepseek_c.h). */
dsc_status dsc_grpo_check_params(const char *fn, const dsc_grpo_params *p);

#endif /* DSC_OPS_GRPO_H */
