/*
 * ops/moe_internal.h -- internal: validation the MoE ops share with the layers composed
 * from them (the MoE layer checks its route parameters up front, so that a bad value is
 * reported under the function the caller called, not an inner step's).
 */
#ifndef DSC_OPS_MOE_INTERNAL_H
#define DSC_OPS_MOE_INTERNAL_H

#include "backend.h"

/* The route parameters p against E routed experts (top_k, n_group, topk_group, scoring,
 * topk_method, norm_topk_prob, routed_scaling_factor); messages name `fn`. */
dsc_status dsc_moe_check_route_params(const char *fn, const dsc_moe_route_params *p, int64_t E);

#endif /* DSC_OPS_MOE_INTERNAL_H */
