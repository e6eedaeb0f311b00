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
 * Precision on the wire (w->fp8 as DeepSeek-V3 trains): the forward dispatch sends each
 * row as E4M3 with its 1x128 scales, quantized on the sender exactly as the expert GEMM
 * quantizes its input (the tiles lie along D, within a row: the same bytes wherever it is
 * done), and the experts' gate/up GEMMs and their weight gradients use those FP8 rows --
 * as the layer without an exchange does, so the two agree. The combine and both backward
 * exchanges carry float32 (V3 keeps its combines in BF16; here activations and gradients
 * are float32, and the output gradients also feed the down projection's weight gradient,
 * which tiles them along the tokens from their float32 values).
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

enum { DSC_MOE_MAX_PLANES = 2 };

/* One array of rows of a dispatch. */
typedef struct dsc_moe_plane {
  const void *rows; /* [R, row_bytes] */
  size_t row_bytes;
  void *out; /* [Rin, row_bytes] */
} dsc_moe_plane;

typedef struct dsc_moe_exchange {
  void *user;
  int32_t n_local; /* El: experts computed here (the weight stacks' first dimension) */
  /* Plan micro-batch mb (0 or 1): counts [E] host, rows this rank routes to each expert
   * (its permuted rows are grouped by expert in that order). Out: *rows_in = Rin, and
   * local_counts [El] host: the rows each local expert gets. Collective over the group. */
  dsc_status (*plan)(void *user, dsc_context *ctx, int32_t mb, const int64_t *counts, int64_t *rows_in,
                     int64_t *local_counts);
  /* n (1..DSC_MOE_MAX_PLANES) arrays of rows that travel together, row i of every plane
   * with row i of the others (one message per peer: a row costs the sum of the planes'
   * row_bytes): planes[j].rows [R, row_bytes_j] (grouped by expert) -> planes[j].out
   * [Rin, row_bytes_j] (grouped by local expert); started, then finished (the finish
   * waits). FP8 rows travel as two planes: E4M3 values [R, D] and their 1x128 scales
   * [R, ceil(D/128)] float32. */
  dsc_status (*dispatch_start)(void *user, dsc_context *ctx, int32_t mb, int32_t n, const dsc_moe_plane *planes);
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
/* The balance loss dsc_moe_layer_aux_loss last computed, where it lives (ctx's device;
 * [1] float32), for callers that read it later with other values (the model's read-back);
 * NULL before any. */
const float *dsc_moe_layer_saved_aux_device(const dsc_moe_layer_saved *saved);

#endif /* DSC_MOE_LAYER_EX_H_ */
