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

/* The row bound of the permuted layout: R_max = n + min(E, n) * (align - 1), rounded up to
 * a multiple of align (align > 1), for n (token, slot) pairs over E experts; the padded row
 * count R = sum_e roundup(count_e, align) never exceeds it whatever the routing (at most
 * min(E, n) experts get pairs, each padded by < align rows), so the MoE layer sizes its
 * buffers and launches by R_max and never learns R on the host (a decode step of k pairs
 * stays at k * align rows). align 1: R_max = R = n. -1 when it does not fit in int64. */
int64_t dsc_moe_row_bound(int64_t n, int64_t E, int64_t align);

/* dsc_moe_permute into out [R_max, D] (R_max = dsc_moe_row_bound(T*k, E, align)): rows
 * [offsets[E], R_max) are zero padding like the experts' own; offsets[E] = R stays on the
 * device. For the layer's own tensors (contiguous, right dtypes, trusted indices): checks
 * shapes only, errors named under fn. */
dsc_status dsc_moe_permute_bound(dsc_context *ctx, const char *fn, const DLTensor *x,
                                 const DLTensor *indices, int32_t n_experts, int32_t align,
                                 DLTensor *out, DLTensor *group_offsets, DLTensor *row_map);

/* 1 when the grouped-linear kernels read the offsets on the device only for these tensors
 * (CUDA, float32 with a float32 dw: kernels/f32_grouped.cu, or kernels/bf16_grouped_mma.cu
 * in the BF16-operand math mode), so the MoE layer needs no host copy of them; dw_dt
 * DSC_DTYPE_INVALID without a weight gradient. */
int dsc_grouped_linear_reads_device_offsets(const dsc_context *ctx, dsc_dtype dt, dsc_dtype dw_dt);
#ifdef DSC_WITH_CUDA
int dsc_cuda_grouped_linear_on_device(const dsc_context *ctx, dsc_dtype dt, dsc_dtype dw_dt);
#endif

/* dsc_grouped_linear_forward / _backward for the MoE layer: x has R_max rows (the row
 * bound), 0 = o_0 <= ... <= o_E <= R_max, rows past o_E of y / dx written as zeros.
 * offs_h [E+1]: the caller's checked host copy of group_offsets (no copy back), or NULL:
 * read in place on the CPU, not needed on CUDA when the kernels read the device offsets
 * (dsc_grouped_linear_reads_device_offsets), else copied and checked here. The MoE layer
 * passes NULL: its float32 tensors never need a host copy. */
dsc_status dsc_grouped_linear_forward_h(dsc_context *ctx, const DLTensor *x, const DLTensor *w,
                                        const DLTensor *group_offsets, const int32_t *offs_h,
                                        DLTensor *y);
dsc_status dsc_grouped_linear_backward_h(dsc_context *ctx, const DLTensor *dy, const DLTensor *x,
                                         const DLTensor *w, const DLTensor *group_offsets,
                                         const int32_t *offs_h, DLTensor *dx, DLTensor *dw);

#endif /* DSC_OPS_MOE_INTERNAL_H */
