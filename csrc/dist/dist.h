/*
 * dist/dist.h -- what the model layer (csrc/model) uses of csrc/dist: communicator
 * operations on raw buffers (sizes checked by the caller), asynchronous ones for the
 * overlap, the expert-parallel exchange of the MoE layer (ep.c) and the data-parallel
 * helpers (dp.c). dist calls ops and core, never the model.
 *
 * Legend: W ranks, E routed experts (global), El = E / ep experts per rank, R rows this
 * rank routes (its tokens x k), Rin rows this rank's experts compute, D hidden.
 */
#ifndef DSC_DIST_H_
#define DSC_DIST_H_

#include "../core/internal.h"
#include "../ops/moe_layer_ex.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- raw collectives (buffers on the communicator's device; see deepseek_c.h) ---- */
dsc_status dsc_comm_all_reduce_raw(dsc_comm *c, dsc_context *ctx, const void *x, void *y, int64_t n, dsc_dtype dt,
                                   int op);
dsc_status dsc_comm_all_gather_raw(dsc_comm *c, dsc_context *ctx, const void *x, void *y, int64_t bytes);
dsc_status dsc_comm_broadcast_raw(dsc_comm *c, dsc_context *ctx, void *x, int64_t bytes, int32_t root);
dsc_status dsc_comm_counts_raw(dsc_comm *c, dsc_context *ctx, const int64_t *send, int64_t *recv);
dsc_status dsc_comm_all_to_all_v_raw(dsc_comm *c, dsc_context *ctx, const void *x, const int64_t *sbytes, void *y,
                                     const int64_t *rbytes);
/* A duplicate (same ranks, separate message space). */
dsc_status dsc_comm_dup(dsc_comm *c, dsc_comm **out);
void dsc_comm_add_stats(const dsc_comm *c, dsc_comm_stats *acc);

/* ---- asynchronous operations: issued in order, run on the communicator's worker (CPU,
 * MPI_THREAD_MULTIPLE) or at once; the buffers belong to the operation until dsc_comm_wait,
 * which returns its status (and frees the request). */
typedef struct dsc_comm_req dsc_comm_req;
dsc_status dsc_comm_iall_reduce(dsc_comm *c, dsc_context *ctx, void *buf, int64_t n, dsc_dtype dt, int op,
                                dsc_comm_req **req);
dsc_status dsc_comm_iall_to_all_v(dsc_comm *c, dsc_context *ctx, const void *x, const int64_t *sbytes, void *y,
                                  const int64_t *rbytes, dsc_comm_req **req);
dsc_status dsc_comm_wait(dsc_comm *c, dsc_comm_req *req); /* c: unused (the request knows its own) */

/* ---- expert parallelism (ep.c) ----
 * One exchange per MoE block: it implements the MoE layer's dsc_moe_exchange hooks over the
 * expert-parallel communicator (its ep ranks; rank q owns experts q*El .. (q+1)*El - 1).
 * Counts go first (each rank learns how many rows of each of its experts every peer
 * sends), then the rows; the rows a rank computes are laid out expert-major, within an
 * expert by source rank, within a source in the source's order -- for the ranks' batches
 * concatenated in rank order, the order one process routing the whole batch has. */
typedef struct dsc_ep_exchange dsc_ep_exchange;
dsc_status dsc_ep_exchange_create(dsc_comm *ep_comm, dsc_context *ctx, int32_t n_experts, dsc_ep_exchange **out);
void dsc_ep_exchange_destroy(dsc_ep_exchange *x);
/* The hooks for dsc_moe_layer_forward_ex / _backward_ex (pointers into x). */
const dsc_moe_exchange *dsc_ep_exchange_hooks(dsc_ep_exchange *x);

/* ---- data parallelism and agreement (dp.c) ---- */

/* Every rank of c describes itself with n int64 values (fields[i] named names[i]); they must
 * all agree. On disagreement every rank returns DSC_ERR_COMM naming the first field that
 * differs and the ranks with their values (fn names the caller). */
dsc_status dsc_dist_agree(dsc_comm *c, dsc_context *ctx, const char *fn, int32_t n, const int64_t *fields,
                          const char *const *names);
/* A 64-bit hash of n bytes (host). */
uint64_t dsc_dist_hash(const void *data, size_t n, uint64_t h);

#ifdef __cplusplus
}
#endif
#endif /* DSC_DIST_H_ */
