/*
 * internal.h -- what every layer below the public ABI shares: the context struct,
 * error recording, tensor checks, the workspace. Valid C11 and C++ (nvcc includes it).
 */
#ifndef DSC_INTERNAL_H_
#define DSC_INTERNAL_H_

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "checked.h"
#include "deepseek_c.h"

#ifdef __cplusplus
extern "C" {
#endif

struct dsc_check_record; /* below: the deferred checks' error record */

/* Everything mutable lives here; the library has no other global mutable state
 * (the thread-local error message aside). */
struct dsc_context {
  DLDevice device;        /* kDLCPU or kDLCUDA */
  void *stream;           /* cudaStream_t; NULL = legacy default stream */
  uint64_t seed;
  uint64_t rng_counter;   /* advanced by every op that draws random numbers */
  int32_t num_threads;    /* OpenMP threads, >= 1 */
  int32_t deterministic;
  int32_t cpu_avx2;       /* CPU kernels may use AVX2 (cpu/gemm.c); see dsc_context_create */
  int32_t row_invariant;  /* CPU GEMMs: a row of C must not depend on M (set by generation's
                             decode steps; cpu/gemm.c) */
  int32_t math_mode;      /* dsc_math_mode: BF16 operands allowed on CUDA (gemm.cu, ops/mla.c) */
  dsc_log_fn log_fn;
  void *log_user_data;
  void *workspace;        /* device memory, grown on demand, owned */
  size_t workspace_bytes;
  void *cuda;             /* dsc_cuda_state * (kernels/context.cu), owned; NULL on CPU */
  /* Host waits, host<->device copies and allocations made by the backend's own wrappers
   * (dsc_context_get_counters; the `size` field is unused here). */
  dsc_context_counters counts;
  /* Grow-only buffers of composite ops that must outlive the inner ops' workspace use
   * (dsc_ctx_slot), and the MoE layer's inference intermediates: kept across calls so a
   * steady-state step allocates nothing; released by dsc_context_destroy. */
  void *slot[4];
  size_t slot_bytes[4];
  void *moe_local;                                  /* dsc_moe_layer_saved *, or NULL */
  /* > 0 while a composite op passes index tensors it made itself (the MoE layer's routing)
   * to inner ops: dsc_index_range then skips their check (a GPU round trip each), unless
   * debug_checks (DSC_DEBUG_CHECKS=1 in the environment at context creation). */
  int32_t trusted_indices;
  int32_t debug_checks;
  /* Deferred range checks (dsc_context_set_check_mode, dsc_index_check): the requested
   * mode (DSC_CHECK_IMMEDIATE or DSC_CHECK_DEFERRED; debug_checks forces immediate), the
   * error record on the context's device (CUDA: device memory from kernels/context.cu;
   * CPU: host memory), its host copy being read (CUDA: pinned memory the record is copied
   * into on the stream; CPU: the second record of the same allocation), the deferred checks
   * issued since the record was last read (0: dsc_context_check has nothing to read, so it
   * copies and waits for nothing), and 1 between dsc_ctx_check_begin_read and _end_read. */
  int32_t check_mode;
  int32_t check_inflight;
  struct dsc_check_record *check_record;
  struct dsc_check_record *check_mirror;
  uint64_t check_pending;
  void (*moe_local_release)(void *moe_local);
};

/* dsc_ctx_slot ids. */
/* DSC_SLOT_MLA: the MLA layer's per-call scratch (the backward's gradients, prefill/decode
 * activations: never live at once); DSC_SLOT_MLA_FP8: its FP8 operands. */
enum { DSC_SLOT_FFN = 0, DSC_SLOT_MOE_FP8 = 1, DSC_SLOT_MLA = 2, DSC_SLOT_MLA_FP8 = 3, DSC_SLOT_COUNT = 4 };

/* The control block of a training step that runs without the host (model_train.c): made
 * on the device by step_ctl after the gradients, read by the AdamW update and the bias
 * update, copied back with the step's statistics. */
typedef struct dsc_step_ctl {
  float coef;      /* the clip coefficient the update multiplies the gradients by */
  int32_t skip;    /* 1: a deferred check failed (this step or an unread earlier one): no update */
  float norm;      /* the global norm before clipping (float, as dsc_global_norm) */
  int32_t pad;
  double sumsq;    /* its sum of squares */
  int64_t applied; /* the step number of the last update applied (unchanged when skipped) */
} dsc_step_ctl;

/* ---- errors ------------------------------------------------------------- */

/* Record "<fn>: <formatted message>" as this thread's last error; return st. */
dsc_status dsc_error(dsc_status st, const char *fn, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
dsc_status dsc_verror(dsc_status st, const char *fn, const char *fmt, va_list ap);
/* Record a complete message as it is (one recorded on another thread, passed on). */
dsc_status dsc_error_set(dsc_status st, const char *message);

/* Return from the enclosing function with the status of a failing call. */
#define DSC_TRY(expr)                  \
  do {                                 \
    dsc_status dsc_try_s_ = (expr);    \
    if (dsc_try_s_ != DSC_OK) return dsc_try_s_; \
  } while (0)

/* Check a condition; on failure record the message and return the status. */
#define DSC_CHECK(cond, st, fn, ...)                         \
  do {                                                       \
    if (!(cond)) return dsc_error((st), (fn), __VA_ARGS__);  \
  } while (0)

void dsc_log(const dsc_context *ctx, dsc_log_level level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* ---- tensors ------------------------------------------------------------ */

/* Bitmask of dsc_dtype values, for dtype checks. */
#define DSC_DT(t) (1u << (unsigned)(t))
#define DSC_DT_FLOAT (DSC_DT(DSC_DTYPE_FLOAT32) | DSC_DT(DSC_DTYPE_BFLOAT16))
#define DSC_DT_INDEX (DSC_DT(DSC_DTYPE_INT32) | DSC_DT(DSC_DTYPE_INT64))

/* Elements of t, or -1 when the product of its dims overflows int64 (dsc_check_tensor
 * rejects such tensors: after it, dsc_numel never fails). */
int64_t dsc_numel(const DLTensor *t);
/* *bytes = numel * dtype size of t; 0 (and *bytes = 0) when that does not fit in int64 or
 * a dim is negative. */
int dsc_tensor_nbytes(const DLTensor *t, size_t *bytes);
/* 1 when t's dims are >= 0 and the product of its non-zero dims times the dtype size fits
 * in DSC_MAX_TENSOR_BYTES (what dsc_check_tensor requires), for paths that do not take a
 * context. */
int dsc_tensor_size_ok(const DLTensor *t);
/* First element of t: data + byte_offset. */
void *dsc_data(const DLTensor *t);
dsc_dtype dsc_tensor_dtype(const DLTensor *t);
/* Product of all dims but the last (the "rows" of a [..., D] tensor). */
int64_t dsc_rows(const DLTensor *t);
int64_t dsc_last_dim(const DLTensor *t);

/* The largest tensor dsc_check_tensor accepts: 2^57 bytes, the largest virtual address
 * space of any current CPU (x86-64 5-level paging) or GPU, so no real tensor is refused.
 * With it, a tensor's element count times any factor up to 64, or the sum of up to 64
 * tensor sizes, fits in int64: the backends rely on this for their scratch sizes. */
#define DSC_MAX_TENSOR_BYTES ((uint64_t)1 << 57)

/* t is non-NULL, on ctx's device, C-contiguous, with non-NULL data when non-empty,
 * and of one of the dtypes in `dtypes` (a DSC_DT mask); its size in bytes fits in int64
 * and in DSC_MAX_TENSOR_BYTES (the product of its non-zero dims too: every partial product
 * of dims is then safe) and data + byte_offset + size does not wrap the address space.
 * Names fn and arg on failure. */
dsc_status dsc_check_tensor(const dsc_context *ctx, const char *fn, const char *arg,
                            const DLTensor *t, unsigned dtypes);
/* t has ndim in [min_ndim, max_ndim]; `what` describes the layout, e.g. "(..., D)". */
dsc_status dsc_check_ndim(const char *fn, const char *arg, const DLTensor *t, int min_ndim,
                          int max_ndim, const char *what);
/* t has exactly the given shape. */
dsc_status dsc_check_shape(const char *fn, const char *arg, const DLTensor *t, int ndim,
                           const int64_t *shape);
/* t has the same shape as ref (named ref_arg in the message). */
dsc_status dsc_check_same_shape(const char *fn, const char *arg, const DLTensor *t,
                                const char *ref_arg, const DLTensor *ref);
/* t has the same dtype as ref. */
dsc_status dsc_check_same_dtype(const char *fn, const char *arg, const DLTensor *t,
                                const char *ref_arg, const DLTensor *ref);
/* Aliasing between an output and another tensor of the same call (both already through
 * dsc_check_tensor; either may be NULL: nothing to check). Byte ranges
 * [data + byte_offset, + numel * dtype size) on the same device are compared; empty
 * tensors never overlap.
 * dsc_check_no_overlap: any shared byte is DSC_ERR_INVALID_ARGUMENT ("<out>: expected
 *   memory that does not overlap <in>, got an overlapping range").
 * dsc_check_inplace_or_disjoint: for outputs documented as "may alias <in>": exactly <in>
 *   (same address, dtype and shape: an in-place call) or disjoint; a partial overlap is the
 *   error. */
dsc_status dsc_check_no_overlap(const char *fn, const char *out_name, const DLTensor *out,
                                const char *in_name, const DLTensor *in);
dsc_status dsc_check_inplace_or_disjoint(const char *fn, const char *out_name,
                                         const DLTensor *out, const char *in_name,
                                         const DLTensor *in);
/* A named tensor of a composite op's argument list (NULL tensor: absent). */
typedef struct {
  const char *name;
  const DLTensor *t;
} dsc_named_tensor;
/* Every output shares no byte with any input or with any other output (composite ops:
 * the MoE layer, MLA), named in the message like dsc_check_no_overlap. */
dsc_status dsc_check_outputs_disjoint(const char *fn, int n_out, const dsc_named_tensor *outs,
                                      int n_in, const dsc_named_tensor *ins);
/* [*lo, *hi): the bytes of t (0: t is NULL or empty, nothing to overlap). For checks over
 * long lists of tensors on one device (dsc_adamw_step). */
int dsc_tensor_byte_range(const DLTensor *t, uintptr_t *lo, uintptr_t *hi);
/* dsc_check_no_overlap of out against each (name, tensor) pair of the list, which ends
 * with a NULL name: dsc_check_disjoint(FN, "c", c, "a", a, "b", b, NULL). */
dsc_status dsc_check_disjoint(const char *fn, const char *out_name, const DLTensor *out, ...)
#if defined(__GNUC__)
    __attribute__((sentinel))
#endif
    ;
/* Writes "(2, 3, 4)" into buf. */
const char *dsc_shape_str(const DLTensor *t, char *buf, size_t n);

/* ---- context helpers ----------------------------------------------------- */

int dsc_ctx_is_cuda(const dsc_context *ctx);
/* A scratch buffer of at least `bytes` on ctx's device, valid until the next call.
 * On CUDA it is stream-ordered (kernels/context.cu): growing it frees and allocates on the
 * context's stream without waiting, and a new stream (dsc_context_set_stream) first waits
 * for the old one's work, so the buffer is never used by two streams at once. */
dsc_status dsc_workspace(dsc_context *ctx, size_t bytes, void **ptr);

/* A buffer of at least `bytes` on ctx's device that belongs to `slot` (DSC_SLOT_*), valid
 * until the next dsc_ctx_slot call with the same slot (unlike dsc_workspace, which every
 * op may take). Grows like the workspace (stream-ordered on CUDA); never shrinks. */
dsc_status dsc_ctx_slot(dsc_context *ctx, int slot, size_t bytes, void **ptr);

/* The ops layer's one range check of index values (embedding ids, targets, positions,
 * expert indices): the backend's index_range on ctx's device (backend.h); skipped (all
 * fine) inside ctx->trusted_indices sections unless ctx->debug_checks. *bad_pos = -1
 * when every value is in [lo, hi) or equals skip (pass lo: nothing skipped), else the
 * first bad position and *bad_value its value; the caller words the error. On CUDA the
 * answer comes back in one small copy (one host wait, counted). */
dsc_status dsc_index_range(dsc_context *ctx, int64_t n, int ids64, const void *ids, int64_t lo,
                           int64_t hi, int64_t skip, int64_t *bad_pos, int64_t *bad_value);

/* ---- deferred index checks (issue #15) ------------------------------------- */

/* How a range-check failure is worded (the message of the immediate check, kept the same
 * when the failure is recorded and read later). With <arg>, <lo>, <hi>, <skip>, <what>,
 * <v> (the bad value) and <p> (its position) from dsc_index_site and the check:
 *   RANGE          "<arg>: expected values in [<lo>, <hi>), got <v> at position <p>"
 *   RANGE_OR_SKIP  "<arg>: expected values in [<lo>, <hi>) or ignore_index (<skip>), got ..."
 *   RANGE_WHAT     "<arg>: expected values in [<lo>, <hi>) (<what>), got <v> at flat position <p>"
 *   NONNEG         "<arg>: expected values >= 0, got <v> at position <p>"
 *   VOCAB          "<arg>: expected ids in [<lo>, <hi>) (vocab_size), got <v> at position <p>"
 *   VOCAB_OR_SKIP  "<arg>: expected ids in [<lo>, <hi>) (vocab_size) or ignore_index <skip>, ..."
 *   FINITE         "<arg>: expected finite values, got a NaN or infinity at index <p>"
 *                  (dsc_finite_check: float32 values; lo, hi, skip, v unused)
 * Every message starts with "<fn>: " (dsc_error). */
enum {
  DSC_IDX_MSG_RANGE = 0,
  DSC_IDX_MSG_RANGE_OR_SKIP = 1,
  DSC_IDX_MSG_RANGE_WHAT = 2,
  DSC_IDX_MSG_NONNEG = 3,
  DSC_IDX_MSG_VOCAB = 4,
  DSC_IDX_MSG_VOCAB_OR_SKIP = 5,
  DSC_IDX_MSG_FINITE = 6,
};

/* Which check: the strings must have static storage (a deferred failure keeps only the
 * pointers and words the message when the record is read). what may be NULL. */
typedef struct dsc_index_site {
  const char *fn;
  const char *arg;
  const char *what;
  int32_t style; /* DSC_IDX_MSG_* */
} dsc_index_site;

/* The error record. Same layout on the host and the device (plain 64-bit fields).
 * status DSC_OK: nothing recorded. The FIRST failure since the last read is kept: of the
 * deferred checks issued in that time, the earliest one (in issue order, which is the
 * stream's order on CUDA) that found a bad value, and in it the lowest bad position; later
 * failures change nothing. */
typedef struct dsc_check_record {
  uint64_t running; /* CUDA: the running check's lowest bad position (~0: none); the check's
                       last kernel moves it into the fields below and resets it */
  int64_t status;   /* dsc_status of the failure; DSC_OK: none */
  int64_t pos, value, lo, hi, skip;
  int64_t style;    /* DSC_IDX_MSG_* */
  uint64_t fn, arg, what; /* const char * of the dsc_index_site, as integers */
} dsc_check_record;

/* Record the error of a failed check through dsc_error (the immediate check's message). */
dsc_status dsc_index_error(const dsc_index_site *site, int64_t lo, int64_t hi, int64_t skip,
                           int64_t pos, int64_t value);

/* The range check of a user index tensor that a consumer op can survive unchecked: every
 * value in [lo, hi) or equal to skip (pass lo: nothing skipped). Skipped inside
 * trusted_indices sections like dsc_index_range. Immediate mode (the default): the check
 * runs now (one host wait on CUDA) and a bad value is DSC_ERR_INVALID_ARGUMENT with the
 * site's message. Deferred mode: the check is queued on the context's device and a failure
 * goes to the error record (first failure wins) with no copy and no wait; it returns DSC_OK
 * and the consumer must guard its reads and writes (each consumer documents what a bad
 * index gives). Use it only where the consumer guards; dsc_index_range stays immediate. */
dsc_status dsc_index_check(dsc_context *ctx, const dsc_index_site *site, int64_t n, int ids64,
                           const void *ids, int64_t lo, int64_t hi, int64_t skip);

/* The same for float32 values that must be finite (GRPO's rewards), with the FINITE message:
 * the first NaN or infinity. Not skipped in trusted sections (the values are not indices). */
dsc_status dsc_finite_check(dsc_context *ctx, const dsc_index_site *site, int64_t n, const float *x);

/* The check mode the context runs now (DSC_DEBUG_CHECKS=1 forces immediate). */
int32_t dsc_ctx_check_mode(const dsc_context *ctx);
/* For composite calls (the model's training and decode steps): switch to `mode` and
 * return the requested mode before, which dsc_ctx_check_mode_pop restores. A step then
 * reads the record once with dsc_ctx_check_read at a point that already waits. */
int32_t dsc_ctx_check_mode_push(dsc_context *ctx, int32_t mode);
void dsc_ctx_check_mode_pop(dsc_context *ctx, int32_t saved);
/* Read the record (CUDA: one copy and one wait; nothing when no deferred check was issued
 * since the last read), clear it, and return the recorded failure with its message, or
 * DSC_OK. dsc_context_check is this. */
dsc_status dsc_ctx_check_read(dsc_context *ctx);
/* The same in two halves around a host wait the caller makes anyway (a step's copy of its
 * loss to the host): begin queues the record's copy to the host and its clearing on the
 * stream (no wait; nothing when no deferred check was issued since the last read); end,
 * called after any host wait for the stream that followed begin, reads that copy and
 * returns the recorded failure (or DSC_OK; also when begin queued nothing). */
dsc_status dsc_ctx_check_begin_read(dsc_context *ctx);
dsc_status dsc_ctx_check_end_read(dsc_context *ctx);

/* The backends' share (csrc/cpu/index.c, kernels/index.cu and kernels/context.cu). */
dsc_status dsc_cpu_index_record(dsc_context *ctx, const dsc_index_site *site, int64_t n,
                                int ids64, const void *ids, int64_t lo, int64_t hi, int64_t skip);
dsc_status dsc_cuda_index_record(dsc_context *ctx, const dsc_index_site *site, int64_t n,
                                 int ids64, const void *ids, int64_t lo, int64_t hi, int64_t skip);
dsc_status dsc_cpu_finite_record(dsc_context *ctx, const dsc_index_site *site, int64_t n,
                                 const float *x);
dsc_status dsc_cuda_finite_record(dsc_context *ctx, const dsc_index_site *site, int64_t n,
                                  const float *x);
/* Queue on the stream: the copy of the device record into ctx->check_mirror (pinned), then
 * its clearing. No wait. */
dsc_status dsc_cuda_check_enqueue(dsc_context *ctx);

/* An index of a guarded consumer: v itself when it is in [0, hi) or equals skip, else
 * skip (the consumer treats it like skip: ignore_index rows contribute nothing). For ops
 * without a skip value, pass skip = -1 and test the result for < 0. */
#if defined(__CUDACC__)
__host__ __device__
#endif
static inline int64_t dsc_guard_index(int64_t v, int64_t hi, int64_t skip) {
  return (v >= 0 && v < hi) || v == skip ? v : skip;
}

#ifdef __cplusplus
}
#endif
#endif /* DSC_INTERNAL_H_ */
