/*
 * ops/moe_layer_ex.h -- internal: the MoE layer with its experts elsewhere. The layer
 * (moe_layer.c) routes its tokens and permutes their rows by expert as usual, then hands
 * the rows to an exchange (dsc_moe_exchange: hooks the caller supplies -- the
 * expert-parallel exchange of csrc/dist/ep.c) which brings back the rows this rank's
 * experts compute; the outputs travel back the same way and are combined in token order
 * with the routing weights. The backward reverses both exchanges. The ops layer never
 * calls csrc/dist: the model passes the dist layer's hooks in.
 *
 * Phases: a call may run part of the layer (phase = a mask of the phases to run, in order
 * across calls on one saved handle), so that two micro-batches interleave and the
 * exchange of one overlaps the computation of the other:
 *   forward   BEGIN   route, permute, plan the exchange, start the dispatch
 *             MIDDLE  finish the dispatch, expert GEMMs, start the combine, shared experts
 *             END     finish the combine, combine in token order (+ shared experts)
 *   backward  BEGIN   combine's backward, start dispatching its output gradients
 *             MIDDLE  finish, expert backward (weight gradients), start the combine of the
 *                     input gradients; the shared experts' weight gradients
 *             END     finish, permute's backward, router and shared input gradients
 * A phase-split call needs a saved handle (the intermediate state lives there).
 *
 * Legend: T tokens, D hidden, E routed experts (router rows), El experts this rank
 * computes (the weight stacks' first dim), R rows routed from here, Rin rows computed here.
 */
#ifndef DSC_MOE_LAYER_EX_H_
#define DSC_MOE_LAYER_EX_H_

#include "../core/internal.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { DSC_MOE_PHASE_BEGIN = 1, DSC_MOE_PHASE_MIDDLE = 2, DSC_MOE_PHASE_END = 4, DSC_MOE_PHASE_ALL = 7 };

typedef struct dsc_moe_exchange {
  void *user;
  int32_t n_local; /* El: experts computed here (the weight stacks' first dimension) */
  /* Plan micro-batch mb (0 or 1): counts [E] host, rows this rank routes to each expert
   * (its permuted rows are grouped by expert in that order). Out: *rows_in = Rin, and
   * local_counts [El] host: the rows each local expert gets. Collective over the group. */
  dsc_status (*plan)(void *user, dsc_context *ctx, int32_t mb, const int64_t *counts, int64_t *rows_in,
                     int64_t *local_counts);
  /* rows [R, row_bytes] (grouped by expert) -> out [Rin, row_bytes] (grouped by local
   * expert); started, then finished (the finish waits). */
  dsc_status (*dispatch_start)(void *user, dsc_context *ctx, int32_t mb, const void *rows, size_t row_bytes,
                               void *out);
  dsc_status (*dispatch_finish)(void *user, dsc_context *ctx, int32_t mb);
  /* rows [Rin, row_bytes] (grouped by local expert) -> out [R, row_bytes] (as dispatched) */
  dsc_status (*combine_start)(void *user, dsc_context *ctx, int32_t mb, const void *rows, size_t row_bytes,
                              void *out);
  dsc_status (*combine_finish)(void *user, dsc_context *ctx, int32_t mb);
} dsc_moe_exchange;

/* dsc_moe_layer_forward / _backward with an exchange (ex NULL: the plain layer, where the
 * stacks hold all E experts) and phases (DSC_MOE_PHASE_ALL: the whole layer). With ex, the
 * expert stacks of w and g are [El, ...]; x may have 0 rows (a rank with no tokens still
 * computes its experts for the others); align must be 1; mb selects the exchange's plan. */
dsc_status dsc_moe_layer_forward_ex(dsc_context *ctx, const dsc_moe_route_params *p, int32_t align,
                                    const dsc_moe_layer_weights *w, const DLTensor *x, DLTensor *y,
                                    DLTensor *counts, dsc_moe_layer_saved *saved, const dsc_moe_exchange *ex,
                                    int32_t mb, int32_t phase);
dsc_status dsc_moe_layer_backward_ex(dsc_context *ctx, const dsc_moe_route_params *p,
                                     const dsc_moe_layer_weights *w, const DLTensor *x, const DLTensor *dy,
                                     dsc_moe_layer_saved *saved, DLTensor *dx, const dsc_moe_layer_grads *g,
                                     const dsc_moe_exchange *ex, int32_t mb, int32_t phase);

#ifdef __cplusplus
}
#endif
#endif /* DSC_MOE_LAYER_EX_H_ */
