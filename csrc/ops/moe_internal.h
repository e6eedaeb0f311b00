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

/* dsc_grouped_linear_forward / _backward with the offsets also on the host: offs_h [E+1]
 * is the caller's copy of group_offsets, already checked (0 = o_0 <= ... <= o_E = R), so no
 * copy back (a GPU round trip) is made; NULL: as the public functions (copied, checked).
 * The MoE layer copies its offsets once per forward and passes them to all six calls. */
dsc_status dsc_grouped_linear_forward_h(dsc_context *ctx, const DLTensor *x, const DLTensor *w,
                                        const DLTensor *group_offsets, const int32_t *offs_h,
                                        DLTensor *y);
dsc_status dsc_grouped_linear_backward_h(dsc_context *ctx, const DLTensor *dy, const DLTensor *x,
                                         const DLTensor *w, const DLTensor *group_offsets,
                                         const int32_t *offs_h, DLTensor *dx, DLTensor *dw);

#endif /* DSC_OPS_MOE_INTERNAL_H */
