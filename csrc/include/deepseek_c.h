/*
 * deepseek_c.h -- the public C ABI of deepseek_c.
 *
 * This is the only header another language needs (with dlpack/dlpack.h beside it).
 *
 * Conventions
 *  - Every function returns dsc_status; DSC_OK is 0. On failure dsc_last_error()
 *    returns a message for this thread naming the function, the argument, what was
 *    expected and what came, e.g.
 *      "dsc_rms_norm_forward: w: expected shape (64), got (32)".
 *  - Tensors cross the ABI as DLTensor (DLPack). Every tensor must live on the
 *    context's device. Ops accept C-contiguous tensors (strides equal to the
 *    row-major strides of the shape; size-1 dimensions may carry any stride) and
 *    reject anything else with DSC_ERR_INVALID_ARGUMENT.
 *  - Outputs are written into caller-provided tensors. Scratch space comes from the
 *    context's workspace. A context is used by one thread at a time.
 *  - Aliasing: an output may share no byte with an input or another output of the same
 *    call (DSC_ERR_INVALID_ARGUMENT "<out>: expected memory that does not overlap <in>"),
 *    except where a comment says "may alias <in>": then <in> itself (same address, dtype
 *    and shape) is computed in place correctly; a partial overlap is always an error.
 *  - Sizes: a tensor's size in bytes (and the product of its non-zero dims times the
 *    element size) must fit in 2^57 bytes, the largest address space; every size the
 *    library derives from shapes, configs and options is computed with overflow checks, so
 *    a huge value is an error (DSC_ERR_SHAPE / _INVALID_ARGUMENT / _OUT_OF_MEMORY), never
 *    a wrapped allocation.
 *  - Parameter structs are passed by pointer and start with a `size` field set to
 *    sizeof(struct); fields may be appended in later versions, never reordered.
 *  - Enums are append-only with explicit values.
 *  - Dimension letters used in shape comments: N rows (tokens, flattened leading
 *    dims), D features, B batch, T sequence, H heads, V vocabulary, M/N/K GEMM dims.
 *  - Parameter gradients (dw of RMSNorm, embedding table gradient) are float32,
 *    whatever the activation dtype: DeepSeek-V3 keeps FP32 gradients and masters.
 *  - The library never prints, exits or aborts. Messages go to the log callback.
 */
#ifndef DEEPSEEK_C_H_
#define DEEPSEEK_C_H_

#include <stddef.h>
#include <stdint.h>

#include "dlpack/dlpack.h"

#if defined(_WIN32)
#if defined(DSC_BUILDING_LIBRARY)
#define DSC_API __declspec(dllexport)
#else
#define DSC_API __declspec(dllimport)
#endif
#else
#define DSC_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define DSC_VERSION_MAJOR 0
#define DSC_VERSION_MINOR 1
#define DSC_VERSION_PATCH 0

/* ------------------------------------------------------------------ status */

typedef enum dsc_status {
  DSC_OK = 0,
  DSC_ERR_INVALID_ARGUMENT = 1, /* a value out of range, a NULL, bad strides   */
  DSC_ERR_SHAPE = 2,            /* a shape that does not match                 */
  DSC_ERR_DTYPE = 3,            /* a dtype that is not accepted                */
  DSC_ERR_DEVICE = 4,           /* tensor not on the context's device          */
  DSC_ERR_OUT_OF_MEMORY = 5,
  DSC_ERR_UNSUPPORTED = 6,      /* valid request this build cannot serve       */
  DSC_ERR_CUDA = 7,             /* a CUDA / cuBLASLt / NCCL call failed        */
  DSC_ERR_IO = 8,
  DSC_ERR_FORMAT = 9,           /* a corrupt or truncated file                 */
  DSC_ERR_INTERNAL = 10,        /* a broken invariant: a bug, please report    */
  DSC_ERR_COMM = 11,            /* a communicator failed: a peer rank did not answer
                                   in time (died, hangs, or called another
                                   collective), or the ranks disagree (config) */
} dsc_status;

/* The message of the last failure in the calling thread ("" if none). */
DSC_API const char *dsc_last_error(void);
/* Forget the last failure of the calling thread. */
DSC_API void dsc_clear_error(void);
/* A fixed name for a status, e.g. "DSC_ERR_SHAPE". */
DSC_API const char *dsc_status_string(dsc_status status);

/* ------------------------------------------------------------------ dtypes */

/* Element types, named independently of DLPack (which needs code and bits). */
typedef enum dsc_dtype {
  DSC_DTYPE_INVALID = 0,
  DSC_DTYPE_FLOAT32 = 1,
  DSC_DTYPE_BFLOAT16 = 2,
  DSC_DTYPE_FLOAT16 = 3,
  DSC_DTYPE_FLOAT8_E4M3FN = 4,
  DSC_DTYPE_FLOAT8_E5M2 = 5,
  DSC_DTYPE_INT32 = 6,
  DSC_DTYPE_INT64 = 7,
  DSC_DTYPE_UINT8 = 8,
  DSC_DTYPE_BOOL = 9,
  DSC_DTYPE_FLOAT64 = 10,
  DSC_DTYPE_INT8 = 11,
} dsc_dtype;

DSC_API dsc_dtype dsc_dtype_from_dlpack(DLDataType t);
DSC_API DLDataType dsc_dtype_to_dlpack(dsc_dtype t);
DSC_API const char *dsc_dtype_name(dsc_dtype t);
DSC_API size_t dsc_dtype_size(dsc_dtype t);

/* ------------------------------------------------------------------ build */

typedef struct dsc_build_info {
  size_t size;               /* set to sizeof(dsc_build_info) by the caller */
  const char *version;       /* "0.1.0" */
  int32_t cuda;              /* 1 when the CUDA backend is compiled in */
  const char *cuda_version;  /* toolkit used at build time, "" without CUDA */
  const char *cuda_archs;    /* e.g. "sm_80;sm_90a", "" without CUDA */
  int32_t cublaslt;          /* 1 when cuBLASLt is linked */
  int32_t nccl;              /* 1 when NCCL is linked */
  const char *blas;          /* e.g. "scipy-openblas32 0.3.30" */
  int32_t openmp;            /* 1 when built with OpenMP */
  int32_t max_threads;       /* OpenMP threads available, 1 without OpenMP */
  int32_t mpi;               /* 1 when the MPI backend of dsc_comm is compiled in */
  const char *mpi_library;   /* MPI_Get_library_version of the MPI linked, "" without MPI */
} dsc_build_info;

DSC_API dsc_status dsc_get_build_info(dsc_build_info *info);

/* Number of CUDA devices visible. Without the CUDA backend, or without a usable
 * driver/device, *count is 0 and the return is DSC_ERR_UNSUPPORTED or
 * DSC_ERR_CUDA with the reason in dsc_last_error(). */
DSC_API dsc_status dsc_cuda_device_count(int32_t *count);
/* Name and compute capability of CUDA device `index`. */
DSC_API dsc_status dsc_cuda_device_name(int32_t index, char *name, size_t name_size,
                                        int32_t *cc_major, int32_t *cc_minor);

/* ------------------------------------------------------------------ logging */

typedef enum dsc_log_level {
  DSC_LOG_DEBUG = 0,
  DSC_LOG_INFO = 1,
  DSC_LOG_WARN = 2,
  DSC_LOG_ERROR = 3,
} dsc_log_level;

typedef void (*dsc_log_fn)(dsc_log_level level, const char *message, void *user_data);

/* ------------------------------------------------------------------ context */

typedef struct dsc_context dsc_context;

typedef struct dsc_context_options {
  size_t size;              /* sizeof(dsc_context_options) */
  int32_t device_type;      /* kDLCPU (default when 0) or kDLCUDA */
  int32_t device_id;        /* CUDA ordinal; 0 for CPU */
  void *stream;             /* cudaStream_t to run on; NULL = legacy default stream */
  uint64_t seed;            /* seed of the context's RNG */
  int32_t num_threads;      /* CPU threads for OpenMP; 0 = OpenMP default */
  int32_t deterministic;    /* 1: avoid atomics that reorder float sums on GPU */
  dsc_log_fn log_fn;        /* NULL: messages are dropped */
  void *log_user_data;
} dsc_context_options;

DSC_API dsc_status dsc_context_create(const dsc_context_options *options, dsc_context **out);
DSC_API void dsc_context_destroy(dsc_context *ctx);
DSC_API dsc_status dsc_context_set_stream(dsc_context *ctx, void *stream);
DSC_API dsc_status dsc_context_get_stream(const dsc_context *ctx, void **stream);
DSC_API dsc_status dsc_context_get_device(const dsc_context *ctx, DLDevice *device);
/* Wait until all work queued on the context's stream has finished (no wait on CPU), then
 * report a failure of the deferred checks like dsc_context_check (below). */
DSC_API dsc_status dsc_context_synchronize(dsc_context *ctx);
DSC_API dsc_status dsc_context_set_log_callback(dsc_context *ctx, dsc_log_fn fn, void *user_data);
DSC_API dsc_status dsc_context_set_seed(dsc_context *ctx, uint64_t seed);
DSC_API dsc_status dsc_context_set_deterministic(dsc_context *ctx, int32_t deterministic);
/* Precision of the float32 GEMMs and attention a context runs. DSC_MATH_DEFAULT: exact
 * float32 (no TF32, no BF16). DSC_MATH_BF16_OPERANDS: on CUDA, float32 GEMM operands
 * (kernels/gemm.cu: cuBLASLt CUBLAS_COMPUTE_32F_FAST_16BF) and the MLA training
 * attention's q, k, v, dO, P (kernels/mla_attn_tc.cu) may be rounded to BF16 to run on
 * tensor cores, accumulating in FP32; on operands already BF16-exact a GEMM's result is
 * that of float32 math. The CPU computes exact float32 in both modes. A BF16 model
 * (dsc_model_options.compute_dtype) sets BF16_OPERANDS for each of its passes and
 * restores the caller's mode after. Keep one mode between an op's forward and backward. */
typedef enum dsc_math_mode {
  DSC_MATH_DEFAULT = 0,
  DSC_MATH_BF16_OPERANDS = 1,
} dsc_math_mode;

/* mode: a dsc_math_mode value; anything else is DSC_ERR_INVALID_ARGUMENT. */
DSC_API dsc_status dsc_context_set_math_mode(dsc_context *ctx, int32_t mode);
DSC_API dsc_status dsc_context_get_math_mode(const dsc_context *ctx, int32_t *mode);
/* When the range checks of user index tensors (embedding ids, cross-entropy and
 * token_logprob targets, RoPE positions, distillation teacher indices) report a bad value.
 * DSC_CHECK_IMMEDIATE (the default): the op fails with DSC_ERR_INVALID_ARGUMENT at the call;
 * on CUDA each check costs one small copy and one host wait. DSC_CHECK_DEFERRED: the check
 * runs on the context's device and a failure is only recorded there (the first one since
 * the last read: the earliest failing check, at its lowest bad position); the op returns
 * DSC_OK without waiting, and computes on: a bad index is treated as documented by the op
 * (never read or written out of bounds). dsc_context_check (or dsc_context_synchronize)
 * reads the record once and reports the failure with the immediate check's message.
 * DSC_DEBUG_CHECKS=1 in the environment at context creation forces immediate checks. */
typedef enum dsc_check_mode {
  DSC_CHECK_IMMEDIATE = 0,
  DSC_CHECK_DEFERRED = 1,
} dsc_check_mode;

/* mode: a dsc_check_mode value; anything else is DSC_ERR_INVALID_ARGUMENT. A record not yet
 * read stays until dsc_context_check reads it, whatever the mode. */
DSC_API dsc_status dsc_context_set_check_mode(dsc_context *ctx, int32_t mode);
/* The mode the context's checks run in now (DSC_CHECK_IMMEDIATE under DSC_DEBUG_CHECKS=1). */
DSC_API dsc_status dsc_context_get_check_mode(const dsc_context *ctx, int32_t *mode);
/* Read the deferred checks' record and clear it: DSC_OK when nothing was recorded, else the
 * recorded failure (DSC_ERR_INVALID_ARGUMENT) with the immediate check's message in
 * dsc_last_error() (function, argument, expected range, bad value and position). On CUDA
 * one small copy and one host wait, and none when no deferred check ran since the last
 * read. dsc_context_synchronize also reads it (its copy rides on that wait), so on CUDA a
 * failure also surfaces at the next synchronize, like CUDA's own asynchronous errors. */
DSC_API dsc_status dsc_context_check(dsc_context *ctx);
/* Bytes currently held by the context's workspace. */
DSC_API dsc_status dsc_context_workspace_size(const dsc_context *ctx, size_t *bytes);

/* What the context made the host wait for or allocate, counted by the backend's own
 * wrappers since creation (or the last reset): a training or decode step in steady state
 * should add 0 syncs and 0 allocations. CPU contexts count allocations only (dsc_malloc,
 * workspace growth); their copies are plain memmoves and they never wait. */
typedef struct dsc_context_counters {
  size_t size;              /* sizeof(dsc_context_counters), set by the caller */
  uint64_t syncs;           /* host waits for the device (stream or device synchronize) */
  uint64_t copies_to_device;   /* host -> device copies */
  uint64_t copies_to_host;     /* device -> host copies (each also waits: counted in syncs) */
  uint64_t allocs;          /* device (CUDA) or host (CPU) allocations: dsc_malloc, the
                               workspace growing, stream-ordered workspace allocations */
  uint64_t frees;           /* the matching releases */
  uint64_t workspace_grows; /* times the workspace had to grow (included in allocs) */
  uint64_t index_checks;    /* range checks of index tensors run (each one host wait on CUDA);
                               checks of indices the library made itself are skipped unless
                               DSC_DEBUG_CHECKS=1 */
  uint64_t deferred_checks; /* range checks queued in DSC_CHECK_DEFERRED mode (no wait, no
                               copy: not in index_checks) */
  uint64_t check_reads;     /* reads of the deferred checks' record that copied it back (one
                               copy and one wait each on CUDA; dsc_context_check) */
} dsc_context_counters;
/* Fill out (up to out->size bytes; a smaller, older struct gets its prefix); reset != 0 then
 * zeroes the counters. */
DSC_API dsc_status dsc_context_get_counters(dsc_context *ctx, dsc_context_counters *out,
                                           int32_t reset);

/* ------------------------------------------------------------------ memory */

/* Memory on the context's device (CUDA: cudaMalloc; CPU: 64-byte aligned). */
DSC_API dsc_status dsc_malloc(dsc_context *ctx, size_t bytes, void **ptr);
DSC_API void dsc_free(dsc_context *ctx, void *ptr);
/* Copy between host and the context's device, or within either, on the stream. */
DSC_API dsc_status dsc_memcpy(dsc_context *ctx, void *dst, DLDevice dst_device, const void *src,
                              DLDevice src_device, size_t bytes);

/* ------------------------------------------------------------------ RMSNorm */
/* y = w * x / sqrt(mean(x^2) + eps) over the last dim, computed in float32.
 *   x    [..., D]   float32 | bfloat16
 *   w    [D]        same dtype as x
 *   y    [..., D]   same dtype as x (may alias x)
 *   rstd [...]      float32, optional (NULL): 1/sqrt(mean(x^2)+eps) per row, for backward */
DSC_API dsc_status dsc_rms_norm_forward(dsc_context *ctx, const DLTensor *x, const DLTensor *w,
                                        float eps, DLTensor *y, DLTensor *rstd);
/*   dy   [..., D]   dtype of x
 *   rstd [...]      float32, optional: recomputed from x when NULL
 *   dx   [..., D]   dtype of x (may alias dy or x)
 *   dw   [D]        float32, overwritten (not accumulated) */
DSC_API dsc_status dsc_rms_norm_backward(dsc_context *ctx, const DLTensor *dy, const DLTensor *x,
                                         const DLTensor *w, const DLTensor *rstd, float eps,
                                         DLTensor *dx, DLTensor *dw);

/* ------------------------------------------------------------------ RoPE */

typedef enum dsc_rope_layout {
  /* pairs (x[2i], x[2i+1]) rotated by angle p*theta_i (DeepSeek reference, GPT-J) */
  DSC_ROPE_INTERLEAVED = 0,
  /* pairs (x[i], x[i+D/2]) rotated by angle p*theta_i (NeoX / rotate_half) */
  DSC_ROPE_HALF = 1,
} dsc_rope_layout;

/* RoPE with optional YaRN scaling (factor > 1). Defaults of DeepSeek-V3 in comments. */
typedef struct dsc_rope_params {
  size_t size;                    /* sizeof(dsc_rope_params) */
  int32_t layout;                 /* dsc_rope_layout */
  int32_t dim;                    /* rotary dims D (even), 64 */
  float theta;                    /* base, 10000 */
  float factor;                   /* YaRN factor; <= 1 disables YaRN, 40 */
  int32_t original_max_position;  /* YaRN L0, 4096 */
  float beta_fast;                /* 32 */
  float beta_slow;                /* 1 */
  float mscale;                   /* 1.0 */
  float mscale_all_dim;           /* 1.0 */
} dsc_rope_params;

/* Fills a dsc_rope_params with no scaling: layout interleaved, theta 10000. */
DSC_API void dsc_rope_params_default(dsc_rope_params *p, int32_t dim);
/* inv_freq [D/2] float32 (host): base frequencies, YaRN-corrected when factor > 1. */
DSC_API dsc_status dsc_rope_inv_freq(const dsc_rope_params *p, float *inv_freq, int32_t n);
/* The cos/sin multiplier ("attention factor"): m(factor,mscale)/m(factor,mscale_all_dim),
 * 1 without YaRN. */
DSC_API dsc_status dsc_rope_cos_sin_scale(const dsc_rope_params *p, float *scale);
/* The softmax scale of attention with head dim qk_head_dim:
 * qk_head_dim^-1/2 * m(factor, mscale_all_dim)^2 (just qk_head_dim^-1/2 without YaRN). */
DSC_API dsc_status dsc_rope_softmax_scale(const dsc_rope_params *p, int32_t qk_head_dim,
                                          float *scale);

/* Rotate the last dim of x by the angles of `positions`.
 *   x         [B, T, H, D] or [B, T, D]   float32 | bfloat16
 *   positions [B, T]                      int32 (>= 0)
 *   y         like x (may alias x) */
DSC_API dsc_status dsc_rope_forward(dsc_context *ctx, const dsc_rope_params *p, const DLTensor *x,
                                    const DLTensor *positions, DLTensor *y);
/* The transpose (inverse rotation): dx = R^T dy. Same shapes as the forward; dx may
 * alias dy. */
DSC_API dsc_status dsc_rope_backward(dsc_context *ctx, const dsc_rope_params *p,
                                     const DLTensor *dy, const DLTensor *positions, DLTensor *dx);

/* ------------------------------------------------------------------ matmul */
/* C = alpha * op(A) @ op(B) + beta * C, FP32 accumulation.
 *   A [M, K] (or [K, M] with trans_a), B [K, N] (or [N, K] with trans_b), C [M, N];
 *   batched: A [Bt, ., .], C [Bt, M, N], B [Bt, ., .] or 2-D (shared by the batch).
 *   dtype: all float32, or all bfloat16. */
DSC_API dsc_status dsc_matmul(dsc_context *ctx, const DLTensor *a, const DLTensor *b, DLTensor *c,
                              int32_t trans_a, int32_t trans_b, float alpha, float beta);

/* Linear layer without bias: y = x @ w^T.
 *   x [..., K]   w [N, K]   y [..., N]   (all float32 or all bfloat16) */
DSC_API dsc_status dsc_linear_forward(dsc_context *ctx, const DLTensor *x, const DLTensor *w,
                                      DLTensor *y);
/*   dy [..., N] -> dx [..., K] = dy @ w (optional, NULL to skip);
 *                  dw [N, K]   = dy^T @ x (optional; dtype of w, or float32) */
DSC_API dsc_status dsc_linear_backward(dsc_context *ctx, const DLTensor *dy, const DLTensor *x,
                                       const DLTensor *w, DLTensor *dx, DLTensor *dw);

/* ------------------------------------------------------------------ elementwise */
/* out = a + b (residual adds, gradient sums). a, b, out: same shape, float32 | bfloat16;
 * out may alias a or b. */
DSC_API dsc_status dsc_add(dsc_context *ctx, const DLTensor *a, const DLTensor *b, DLTensor *out);

/* ------------------------------------------------------------------ SwiGLU */
/* out = silu(gate) * up, silu(g) = g / (1 + exp(-g)).
 *   gate, up, out [..., F] float32 | bfloat16; out may alias gate or up.
 * Backward: dgate, dup like gate; each may alias dout, gate or up (not each other). */
DSC_API dsc_status dsc_swiglu_forward(dsc_context *ctx, const DLTensor *gate, const DLTensor *up,
                                      DLTensor *out);
DSC_API dsc_status dsc_swiglu_backward(dsc_context *ctx, const DLTensor *dout,
                                       const DLTensor *gate, const DLTensor *up, DLTensor *dgate,
                                       DLTensor *dup);

/* ------------------------------------------------------------------ embedding */
/*   ids   [...]      int32 | int64, each in [0, V)
 *   table [V, D]     float32 | bfloat16
 *   out   [..., D]   dtype of table */
DSC_API dsc_status dsc_embedding_forward(dsc_context *ctx, const DLTensor *ids,
                                         const DLTensor *table, DLTensor *out);
/* dtable [V, D] float32, overwritten: zero, then scatter-add of dout rows by id. */
DSC_API dsc_status dsc_embedding_backward(dsc_context *ctx, const DLTensor *ids,
                                          const DLTensor *dout, DLTensor *dtable);

/* ------------------------------------------------------------------ cross-entropy */
/* Fused softmax cross-entropy over the vocabulary, mean over valid tokens.
 *   logits  [N, V] (or [..., V])  float32 | bfloat16
 *   targets [N]    (or [...])     int32 | int64; ignore_index or in [0, V)
 *   loss    []  or [1]            float32: mean over tokens whose target != ignore_index
 *                                 (0 when there is none)
 *   dlogits like logits, optional: grad_scale * (softmax - onehot) / n_valid, 0 on
 *                                 ignored rows; may alias logits
 *   lse     [N] float32, optional: log-sum-exp per row */
DSC_API dsc_status dsc_cross_entropy(dsc_context *ctx, const DLTensor *logits,
                                     const DLTensor *targets, int64_t ignore_index,
                                     float grad_scale, DLTensor *loss, DLTensor *dlogits,
                                     DLTensor *lse);

/* ------------------------------------------------------------------ token log-probabilities */
/* The log-probability of each row's target under softmax(logits): what reinforcement
 * learning (GRPO) and distillation take of a completion, token by token.
 *   logits   [N, V] (or [..., V])  float32 | bfloat16
 *   targets  [N]    (or [...])     int32 | int64; ignore_index or in [0, V)
 *   logprobs [N]    (or [...])     float32: x_t - logsumexp(x), 0 on ignored rows
 *   entropy  [N]    (or [...])     float32, optional: -sum_j p_j log p_j of the row's
 *                                  softmax p (0 on ignored rows) */
DSC_API dsc_status dsc_token_logprob(dsc_context *ctx, const DLTensor *logits,
                                     const DLTensor *targets, int64_t ignore_index,
                                     DLTensor *logprobs, DLTensor *entropy);
/* Its backward: dlogits[n, j] = dlogprobs[n] * ([j == t_n] - softmax(x_n)_j), 0 on ignored
 * rows. dlogprobs [N] (or [...]) float32; dlogits like logits, may alias logits. */
DSC_API dsc_status dsc_token_logprob_backward(dsc_context *ctx, const DLTensor *logits,
                                              const DLTensor *targets, int64_t ignore_index,
                                              const DLTensor *dlogprobs, DLTensor *dlogits);

/* ------------------------------------------------------------------ GRPO */
/* Group Relative Policy Optimization (DeepSeekMath; DeepSeek-R1's RL algorithm) with the
 * variants of Dr. GRPO and DAPO. A batch holds B = groups * G completions, the G
 * completions of one prompt adjacent. Per completion i (its group g) and completion token
 * t, with rho = exp(logp - old_logp) and A_i the advantage:
 *   A_i   = (r_i - mean_g(r)) / (std + std_eps)   std: the group's (GROUP), the batch's
 *           (BATCH) sample standard deviation (n - 1 in the denominator), or A_i = r_i -
 *           mean_g(r) (NONE)
 *   L_it  = -min(rho A_i, clip(rho, 1 - epsilon_low, 1 + epsilon_high) A_i) + beta KL_it
 *   KL_it = exp(ref_logp - logp) - (ref_logp - logp) - 1          (the k3 estimator, >= 0)
 *   loss  = GRPO:    mean over completions of (sum_t L_it / n_i)   (n_i its tokens)
 *           DR_GRPO: sum_it L_it / (completions * max_completion_length)
 *           DAPO:    sum_it L_it / (completion tokens of the batch)
 * "Completions" counts the rows with at least one completion token that are kept; a row
 * without one, or with keep 0, contributes nothing anywhere (as if absent).
 * dL/dlogp_it = w_it * ((clipped ? 0 : -A_i rho) + beta (1 - exp(ref_logp - logp))), w_it
 * the aggregation weight; a token is clipped when A_i > 0 and rho > 1 + epsilon_high, or
 * A_i < 0 and rho < 1 - epsilon_low (where the min takes the constant clipped branch). */
typedef enum dsc_grpo_loss_type {
  DSC_GRPO_LOSS_GRPO = 0,    /* per-sequence token mean, then mean over sequences */
  DSC_GRPO_LOSS_DR_GRPO = 1, /* token sum / (sequences x max_completion_length) */
  DSC_GRPO_LOSS_DAPO = 2,    /* token mean over the whole batch */
} dsc_grpo_loss_type;

typedef enum dsc_grpo_scale {
  DSC_GRPO_SCALE_GROUP = 0, /* divide by the group's reward std (+ std_eps) */
  DSC_GRPO_SCALE_BATCH = 1, /* divide by the batch's reward std (+ std_eps) */
  DSC_GRPO_SCALE_NONE = 2,  /* no division (Dr. GRPO) */
} dsc_grpo_scale;

typedef struct dsc_grpo_params {
  size_t size;                   /* sizeof(dsc_grpo_params) */
  int32_t loss_type;             /* dsc_grpo_loss_type: DAPO */
  float epsilon_low;             /* > 0: 0.2 */
  float epsilon_high;            /* > 0: 0.28 (DAPO's clip-higher; GRPO: = epsilon_low) */
  float beta;                    /* >= 0, KL weight: 0.001 (R1); 0.04 (DeepSeekMath); 0: no
                                    reference model needed */
  int32_t max_completion_length; /* DR_GRPO's normalizer, >= 0; 0: T (the padded length) */
  int32_t group_size;            /* G >= 2: completions per prompt, 8 */
  int32_t scale_rewards;         /* dsc_grpo_scale: GROUP */
  float std_eps;                 /* > 0: 1e-4 */
  int32_t drop_zero_std_groups;  /* 1: the groups whose rewards are all equal (advantage 0
                                    everywhere) are dropped (DAPO's dynamic sampling); 0 */
} dsc_grpo_params;
/* The defaults above (R1's beta, DAPO's loss and clip-higher, groups of 8). */
DSC_API void dsc_grpo_params_default(dsc_grpo_params *p);

/* Statistics of dsc_grpo_loss, by index into its `stats` output. Token means are over the
 * counted completion tokens. */
typedef enum dsc_grpo_stat {
  DSC_GRPO_STAT_LOSS = 0,        /* the loss */
  DSC_GRPO_STAT_POLICY_LOSS = 1, /* token mean of -min(rho A, clip(rho) A) */
  DSC_GRPO_STAT_KL = 2,          /* token mean of KL_it (0 without ref_logprobs) */
  DSC_GRPO_STAT_CLIP_LOW = 3,    /* fraction of tokens with A < 0 and rho < 1 - epsilon_low */
  DSC_GRPO_STAT_CLIP_HIGH = 4,   /* fraction of tokens with A > 0 and rho > 1 + epsilon_high */
  DSC_GRPO_STAT_CLIP_REGION = 5, /* fraction clipped (the two above) */
  DSC_GRPO_STAT_RATIO_MEAN = 6,  /* token mean of rho */
  DSC_GRPO_STAT_TOKENS = 7,      /* completion tokens counted */
  DSC_GRPO_STAT_SEQUENCES = 8,   /* completions counted */
  DSC_GRPO_NUM_STATS = 9,
} dsc_grpo_stat;

/* Advantages: rewards [n] float32 (n a multiple of group_size, all finite) -> advantages
 * [n] float32 (formula above); keep [n] int32, optional: 0 for the completions of a group
 * whose rewards are all equal when drop_zero_std_groups, else 1. A non-finite reward is
 * DSC_ERR_INVALID_ARGUMENT naming its index. */
DSC_API dsc_status dsc_grpo_advantages(dsc_context *ctx, const dsc_grpo_params *p,
                                       const DLTensor *rewards, DLTensor *advantages,
                                       DLTensor *keep);
/* The loss (formula above) and its gradient:
 *   logprobs     [B, T] float32   log pi_theta of each token (from dsc_token_logprob)
 *   old_logprobs [B, T] float32, optional: log pi_old (NULL: pi_old = pi_theta, rho = 1:
 *                one optimizer step per rollout)
 *   ref_logprobs [B, T] float32: log pi_ref; required when beta > 0, optional otherwise
 *                (then only the KL statistic uses it)
 *   advantages   [B] float32
 *   targets      [B, T] int32 | int64: (b, t) is a completion token where != ignore_index
 *   keep         [B] int32, optional: rows with 0 are left out (NULL: every row kept)
 *   loss         [] or [1] float32
 *   dlogprobs    [B, T] float32, optional: dL/dlogprobs, 0 off the counted tokens
 *   stats        [DSC_GRPO_NUM_STATS] float32, optional (dsc_grpo_stat)
 * Non-finite log-probabilities or advantages propagate (NaN loss and gradient). */
DSC_API dsc_status dsc_grpo_loss(dsc_context *ctx, const dsc_grpo_params *p,
                                 const DLTensor *logprobs, const DLTensor *old_logprobs,
                                 const DLTensor *ref_logprobs, const DLTensor *advantages,
                                 const DLTensor *targets, int64_t ignore_index,
                                 const DLTensor *keep, DLTensor *loss, DLTensor *dlogprobs,
                                 DLTensor *stats);

/* ------------------------------------------------------------------ sampling */
/* Token sampling of dsc_model_generate as an op. temperature 0: greedy (argmax; NaN never
 * wins, ties: the lowest id). Else p = softmax(logits / temperature) in float64 (NaN and
 * -inf logits get 0; when any logit is +inf those share the mass), then top_k (0: off; the
 * k most probable, ties: lower ids), then top_p (1: off; the shortest most-probable-first
 * prefix reaching top_p of the kept mass), renormalized; one draw per row from a
 * counter-based stream: u = the next splitmix64 number of (key, counter) in [0, 1), the
 * token the first id (ascending) whose running probability exceeds u.
 * top_k >= 0, top_p in (0, 1], temperature finite >= 0. */
typedef struct dsc_sample_params {
  size_t size; /* sizeof(dsc_sample_params) */
  float temperature;
  int32_t top_k;
  float top_p;
} dsc_sample_params;
DSC_API void dsc_sample_params_default(dsc_sample_params *p); /* greedy, top_k 0, top_p 1 */
/*   logits [B, V] float32 (V >= 1)
 *   rng    [B, 2] int64: per row (key, counter), the uint64 bits; the counter grows by one
 *          per draw (greedy rows and inactive rows draw nothing). A fresh stream: counter 0.
 *   active [B] int32 or NULL (all rows): rows with 0 are left untouched (token, counter)
 *   tokens [B] int32: the sampled ids; -1 for a row whose logits are all NaN or -inf
 *          (nothing to sample: reported in the output, not as an error, so a device call
 *          never waits for the host). No output may overlap an input. */
DSC_API dsc_status dsc_sample_tokens(dsc_context *ctx, const dsc_sample_params *p,
                                     const DLTensor *logits, DLTensor *rng,
                                     const DLTensor *active, DLTensor *tokens);

/* ------------------------------------------------------------------ distillation */
/* The K largest logits of each row, descending (ties: the lower index first): what a
 * teacher keeps per position for logit distillation.
 *   logits [N, V] (or [..., V]) float32 | bfloat16, 1 <= K <= V
 *   values [N, K] (or [..., K]) float32; indices like values, int32 | int64
 * NaN sorts below every number. */
DSC_API dsc_status dsc_logits_topk(dsc_context *ctx, const DLTensor *logits, DLTensor *values,
                                   DLTensor *indices);
/* KL(teacher || student) per row over the teacher's top-k, at temperature tau > 0:
 *   p_k = softmax_k(teacher_logits / tau) (the top-k renormalized),
 *   log q = log_softmax(logits / tau) over the whole vocabulary,
 *   KL_n = sum_k p_k (log p_k - log q_{idx_k}),  loss = mean over valid rows of KL_n
 *   dlogits_nj = grad_scale / n_valid / tau * (q_nj - sum_{k: idx_k = j} p_k), 0 on rows
 *                whose target is ignore_index
 *   logits          [N, V] (or [..., V]) float32 | bfloat16 (the student's)
 *   teacher_indices [N, K] (or [..., K]) int32 | int64 in [0, V)
 *   teacher_logits  [N, K] (or [..., K]) float32
 *   targets         [N]    (or [...])    int32 | int64: rows with ignore_index are skipped
 *                                        (other values are not read)
 *   loss [] or [1] float32; dlogits like logits, optional, may alias logits. */
DSC_API dsc_status dsc_topk_kl(dsc_context *ctx, const DLTensor *logits,
                               const DLTensor *teacher_indices, const DLTensor *teacher_logits,
                               const DLTensor *targets, int64_t ignore_index, float temperature,
                               float grad_scale, DLTensor *loss, DLTensor *dlogits);

/* ------------------------------------------------------------------ AdamW */

typedef struct dsc_adamw_params {
  size_t size;         /* sizeof(dsc_adamw_params) */
  float lr;
  float beta1;         /* 0.9 */
  float beta2;         /* 0.95 (DeepSeek-V3) */
  float eps;           /* 1e-8 */
  float weight_decay;  /* decoupled: p -= lr * weight_decay * p; 0.1 */
  int64_t step;        /* 1-based step number, for bias correction */
  float max_grad_norm; /* > 0: clip by global norm over all tensors of the call; 0: off */
} dsc_adamw_params;

/* Global L2 norm over a list of gradient tensors (float32), accumulated in float64. */
DSC_API dsc_status dsc_global_norm(dsc_context *ctx, int32_t n, const DLTensor *const *tensors,
                                   float *norm);

/* One AdamW step over n parameter tensors, in place:
 *   params[i] float32 (master weights), grads[i] float32 same shape,
 *   exp_avg[i], exp_avg_sq[i] float32 | bfloat16 same shape.
 * With max_grad_norm > 0 the gradients are scaled by min(1, max/(norm+1e-6)) first
 * (the grads themselves are not modified). *grad_norm (optional) gets the norm
 * before clipping. Every params/exp_avg/exp_avg_sq tensor needs memory of its own: none
 * may overlap another tensor of the call (grads may share memory with grads). */
DSC_API dsc_status dsc_adamw_step(dsc_context *ctx, const dsc_adamw_params *p, int32_t n,
                                  DLTensor *const *params, const DLTensor *const *grads,
                                  DLTensor *const *exp_avg, DLTensor *const *exp_avg_sq,
                                  float *grad_norm);

/* ------------------------------------------------------------------ checkpoints */
/* safetensors files (Hugging Face format), read and written by the project's own
 * bounds-checked code: a corrupt or truncated file is DSC_ERR_FORMAT naming the file
 * and the tensor. Tensor data of an open file stays valid until it is closed. */

typedef struct dsc_safetensors dsc_safetensors;

DSC_API dsc_status dsc_safetensors_open(const char *path, dsc_safetensors **out);
DSC_API void dsc_safetensors_close(dsc_safetensors *file);
DSC_API int64_t dsc_safetensors_count(const dsc_safetensors *file);
/* Tensor `index` in [0, count): its name, dtype, shape (ndim entries) and bytes (host). */
DSC_API dsc_status dsc_safetensors_tensor(const dsc_safetensors *file, int64_t index,
                                          const char **name, dsc_dtype *dtype, int32_t *ndim,
                                          const int64_t **shape, const void **data,
                                          size_t *nbytes);
DSC_API dsc_status dsc_safetensors_find(const dsc_safetensors *file, const char *name,
                                        int64_t *index);
DSC_API int64_t dsc_safetensors_metadata_count(const dsc_safetensors *file);
DSC_API dsc_status dsc_safetensors_metadata(const dsc_safetensors *file, int64_t index,
                                            const char **key, const char **value);
/* Write n named host tensors (C-contiguous) and n_meta key/value string pairs
 * (meta_kv = {k0, v0, k1, v1, ...}) atomically: a temporary file in the same directory,
 * fsync, then rename over `path`. On failure the previous file is untouched. */
DSC_API dsc_status dsc_safetensors_save(const char *path, int64_t n, const char *const *names,
                                        const DLTensor *const *tensors, int64_t n_meta,
                                        const char *const *meta_kv);

/* ------------------------------------------------------------------ FP8 */
/* DeepSeek-V3's fine-grained FP8: E4M3 operands with one float32 scale per 1x128 tile
 * (activations) or 128x128 block (weights), dequantized per K-block inside the GEMM,
 * FP32 accumulation. Scales are multipliers: x ~= float(q) * scale (like the
 * checkpoints' `weight_scale_inv`). Legend: M rows, K inner dim, N output features,
 * Kb = ceil(K/128), G groups (experts). */

/* Elementwise cast between float32|bfloat16 and float8_e4m3fn|float8_e5m2 (either
 * direction, same shape). To FP8: round to nearest even, finite values beyond the
 * largest finite saturate to it (+-448 for E4M3, +-57344 for E5M2), NaN stays NaN,
 * +-inf becomes NaN for E4M3 (it has no inf) and +-inf for E5M2. From FP8: exact. */
DSC_API dsc_status dsc_fp8_cast(dsc_context *ctx, const DLTensor *src, DLTensor *dst);

typedef struct dsc_fp8_quant_params {
  size_t size;          /* sizeof(dsc_fp8_quant_params) */
  int32_t block_rows;   /* 1 for 1x128 activation tiles, 128 for 128x128 weight blocks */
  int32_t block_cols;   /* 128 */
  int32_t transpose;    /* 1: quantize x^T, i.e. q is [K, M] with tiles running along M
                           (the 128x1 tiling of activations that wgrad needs) */
  int32_t pow2_scale;   /* 1: round each scale up to a power of two (UE8M0 scales) */
  float amax_floor;     /* amax is clamped to >= this before scale = amax / fp8_max; 1e-4 */
} dsc_fp8_quant_params;

/* Fills block 1 x 128, no transpose, float32 scales, amax_floor 1e-4. */
DSC_API void dsc_fp8_quant_params_default(dsc_fp8_quant_params *p);

/* Block quantization: scale = max(amax(block), amax_floor) / fp8_max, q = cast(x / scale).
 *   x     [M, K] (or [..., K], leading dims flattened)   float32 | bfloat16
 *   q     [M, K] ([K, M] with transpose)                 float8_e4m3fn | float8_e5m2
 *   scale [ceil(M/br), ceil(K/bc)] ([ceil(K/br), ceil(M/bc)] with transpose)  float32
 * Ragged edges (K or M not a multiple of the block) are handled: a partial block's
 * amax is over its real elements. */
DSC_API dsc_status dsc_fp8_quantize(dsc_context *ctx, const dsc_fp8_quant_params *p,
                                    const DLTensor *x, DLTensor *q, DLTensor *scale);

/* out[r, c] = float(q[r, c]) * scale[r / block_rows, c / block_cols].
 *   q [R, C] fp8, scale [ceil(R/br), ceil(C/bc)] float32 (finite), out [R, C] float32|bfloat16 */
DSC_API dsc_status dsc_fp8_dequantize(dsc_context *ctx, int32_t block_rows, int32_t block_cols,
                                      const DLTensor *q, const DLTensor *scale, DLTensor *out);

/* C = A @ B^T with block scales, FP32 accumulation:
 *   C[m, n] = sum_kb ( sum_{k in kb} A[m, k] * B[n, k] ) * sa(m, kb) * sb(n, kb)
 *   a       [M, K]  float8_e4m3fn | float8_e5m2
 *   a_scale [M, Kb] (1x128 tiles) or [ceil(M/128), Kb] (128x128 blocks)  float32
 *   b       [N, K]  fp8
 *   b_scale [N, Kb] (1x128) or [ceil(N/128), Kb] (128x128)              float32
 *   c       [M, N]  float32 | bfloat16
 * The three products of a linear layer: fprop (x 1x128, w 128x128), dgrad (dy 1x128,
 * w^T 128x128) and wgrad (dy^T 1x128 along tokens, x^T 1x128 along tokens). */
DSC_API dsc_status dsc_fp8_gemm(dsc_context *ctx, const DLTensor *a, const DLTensor *a_scale,
                                const DLTensor *b, const DLTensor *b_scale, DLTensor *c);

/* MoE experts, contiguous layout: rows of A grouped by expert.
 *   a [M, K] fp8, a_scale [M, Kb]; b [G, N, K] fp8, b_scale [G, ceil(N/128), Kb];
 *   group_offsets [G + 1] int32: 0 = o_0 <= o_1 <= ... <= o_G = M, rows o_g..o_{g+1}-1
 *   use expert g; each offset a multiple of `alignment` (0 or 1: any);
 *   c [M, N] float32 | bfloat16 */
DSC_API dsc_status dsc_fp8_grouped_gemm(dsc_context *ctx, const DLTensor *a,
                                        const DLTensor *a_scale, const DLTensor *b,
                                        const DLTensor *b_scale, const DLTensor *group_offsets,
                                        int32_t alignment, DLTensor *c);

/* MoE experts, masked layout (decode): a [G, Mmax, K] fp8, a_scale [G, Mmax, Kb];
 * b, b_scale as above; masked_m [G] int32 in [0, Mmax]: rows used per group;
 * c [G, Mmax, N]: rows >= masked_m[g] are set to zero. */
DSC_API dsc_status dsc_fp8_grouped_gemm_masked(dsc_context *ctx, const DLTensor *a,
                                               const DLTensor *a_scale, const DLTensor *b,
                                               const DLTensor *b_scale, const DLTensor *masked_m,
                                               DLTensor *c);

typedef struct dsc_fp8_stats {
  size_t size;                /* sizeof(dsc_fp8_stats) */
  float amax;                 /* max |x| over the tensor (NaN if any NaN) */
  double saturated_fraction;  /* finite elements the saturation clips: |x / scale| rounds
                                 beyond fp8_max (> 464 for E4M3, >= 61440 for E5M2) */
  double underflow_fraction;  /* non-zero elements that quantize to zero */
  double nan_fraction;
  int64_t count;              /* elements */
} dsc_fp8_stats;

/* Quantization statistics of x under the block scaling of `p` (dynamic scales), or
 * under one given per-tensor scale when tensor_scale > 0 (for comparisons).
 *   x [M, K] float32 | bfloat16; fmt DSC_DTYPE_FLOAT8_E4M3FN | DSC_DTYPE_FLOAT8_E5M2 */
DSC_API dsc_status dsc_fp8_compute_stats(dsc_context *ctx, const dsc_fp8_quant_params *p,
                                         dsc_dtype fmt, float tensor_scale, const DLTensor *x,
                                         dsc_fp8_stats *stats);

/* A linear layer the V3 way: y = x @ w^T with x quantized online in 1x128 tiles and the
 * FP32 master weight in 128x128 blocks, FP32 accumulation.
 *   x [..., K] float32|bfloat16; w [N, K] float32 (master); y [..., N] float32|bfloat16
 *   saved for backward (all required): xq [M, K] e4m3, xs [M, Kb] f32,
 *                                      wq [N, K] e4m3, ws [ceil(N/128), Kb] f32 */
DSC_API dsc_status dsc_fp8_linear_forward(dsc_context *ctx, const DLTensor *x, const DLTensor *w,
                                          DLTensor *y, DLTensor *xq, DLTensor *xs, DLTensor *wq,
                                          DLTensor *ws);
/* dgrad dx = dy @ w (dy quantized 1x128, w^T blocks 128x128), wgrad dw = dy^T @ x (both
 * quantized 1x128 along the tokens), FP32 accumulation. The dy tiles' amax is not floored
 * at 1e-4 like the activations' (only at 1e-30): gradients are often far smaller, and the
 * result scales exactly with dy.
 *   dy [..., N] float32|bfloat16; dx [..., K] dtype of dy (optional); dw [N, K] float32
 *   (optional, overwritten); xq, xs, wq, ws from the forward. */
DSC_API dsc_status dsc_fp8_linear_backward(dsc_context *ctx, const DLTensor *dy,
                                           const DLTensor *xq, const DLTensor *xs,
                                           const DLTensor *wq, const DLTensor *ws, DLTensor *dx,
                                           DLTensor *dw);

/* ------------------------------------------------------------------ MoE */
/* DeepSeekMoE: routing (V3 sigmoid + correction bias + group-limited top-k; V2 softmax +
 * greedy or group-limited greedy), auxiliary-loss-free balancing, the complementary
 * sequence-wise balance loss, dropless dispatch/combine and grouped expert GEMMs.
 * Legend: T tokens, E routed experts, k experts per token (top_k), G expert groups
 * (n_group, E/G experts each, contiguous), D hidden, F expert intermediate size,
 * R permuted rows (R = sum_e roundup(count_e, align)), L sequence length.
 *
 * Selection (identical on every backend):
 *  - affinities s = sigmoid(logits) or softmax(logits) over E, in float32;
 *  - selection scores: noaux_tc: s + bias (bias NULL = 0); greedy, group_limited_greedy: s;
 *  - group score: noaux_tc: sum of the two largest selection scores of the group (the one
 *    score when a group has a single expert); group_limited_greedy: max of s in the group;
 *    greedy: no groups (n_group, topk_group ignored);
 *  - the topk_group best groups are kept; experts of the other groups are excluded,
 *    exactly as if their scores were -inf (never 0-filled);
 *  - top-k among the kept experts.
 *  - TIES are broken by the LOWER index, both for groups and for experts; a NaN score
 *    ranks below every number. indices[t, :] come out best first.
 * Weights: w = s[chosen] (the unbiased affinities); with norm_topk_prob
 * w = w / (sum_j w_j + 1e-20); then w *= routed_scaling_factor.
 * Dropless: no capacity, no token is dropped. */

typedef enum dsc_moe_scoring {
  DSC_MOE_SCORING_SIGMOID = 0, /* DeepSeek-V3 */
  DSC_MOE_SCORING_SOFTMAX = 1, /* DeepSeek-V2 */
} dsc_moe_scoring;

typedef enum dsc_moe_topk_method {
  DSC_MOE_TOPK_NOAUX_TC = 0,             /* V3: bias for selection, group score = top-2 sum */
  DSC_MOE_TOPK_GREEDY = 1,               /* V2-Lite: plain top-k */
  DSC_MOE_TOPK_GROUP_LIMITED_GREEDY = 2, /* V2: group score = max */
} dsc_moe_topk_method;

typedef struct dsc_moe_route_params {
  size_t size;                 /* sizeof(dsc_moe_route_params) */
  int32_t top_k;               /* k, 8; 1 <= k <= E (and <= topk_group * E/G with groups) */
  int32_t n_group;             /* G, 8; divides E */
  int32_t topk_group;          /* 4; 1 <= topk_group <= G */
  int32_t scoring;             /* dsc_moe_scoring, SIGMOID */
  int32_t topk_method;         /* dsc_moe_topk_method, NOAUX_TC */
  int32_t norm_topk_prob;      /* 1: normalize the k weights to sum 1 (before scaling) */
  float routed_scaling_factor; /* 2.5 */
} dsc_moe_route_params;

/* Fills DeepSeek-V3's values: top_k 8, n_group 8, topk_group 4, sigmoid, noaux_tc,
 * norm_topk_prob 1, routed_scaling_factor 2.5. */
DSC_API void dsc_moe_route_params_default(dsc_moe_route_params *p);

/*   logits  [T, E] float32 | bfloat16 (router logits, computed in float32 preferably)
 *   bias    [E]    float32, optional (NULL): e_score_correction_bias; only with
 *                  scoring SIGMOID and topk_method NOAUX_TC
 *   indices [T, k] int32 out: chosen experts, best first
 *   weights [T, k] float32 out: gate weights
 *   scores  [T, E] float32 out, optional: the affinities s (saved for backward and for
 *                  the sequence-wise loss); may alias (float32) logits */
DSC_API dsc_status dsc_moe_route(dsc_context *ctx, const dsc_moe_route_params *p,
                                 const DLTensor *logits, const DLTensor *bias, DLTensor *indices,
                                 DLTensor *weights, DLTensor *scores);

/* Gradient into the router logits (none into the bias, which is not trained by gradient).
 *   dweights [T, k] float32: dL/dweights
 *   scores   [T, E] float32: the affinities from dsc_moe_route
 *   indices  [T, k] int32 | int64: from dsc_moe_route (each row distinct)
 *   dscores  [T, E] float32, optional: an extra dL/ds (e.g. the sequence-wise loss), added
 *   dlogits  [T, E] float32 | bfloat16 out, overwritten; may alias (float32) scores or
 *            dscores.
 * norm_topk_prob is differentiated; p must be the forward's parameters. */
DSC_API dsc_status dsc_moe_route_backward(dsc_context *ctx, const dsc_moe_route_params *p,
                                          const DLTensor *dweights, const DLTensor *scores,
                                          const DLTensor *indices, const DLTensor *dscores,
                                          DLTensor *dlogits);

/* counts[e] = number of (token, slot) pairs routed to expert e (overwritten).
 *   indices [...] int32 | int64 in [0, E); counts [E] int32 | int64 */
DSC_API dsc_status dsc_moe_expert_load(dsc_context *ctx, const DLTensor *indices,
                                       DLTensor *counts);

/* Auxiliary-loss-free balancing, in place: bias[e] += rate * sign(mean(counts) - counts[e])
 * (sign(0) = 0).  bias [E] float32; counts [E] int32 | int64 (>= 0); rate finite, >= 0. */
DSC_API dsc_status dsc_moe_update_bias(dsc_context *ctx, DLTensor *bias, const DLTensor *counts,
                                       float rate);

/* Complementary sequence-wise balance loss (DeepSeek-V3 eqs. 17-20), averaged over the
 * B = T / seq_len sequences of the batch (tokens of a sequence are contiguous):
 *   f_i = E / (k L) * #{t in seq : i in indices[t]},  s'_{t,i} = s_{t,i} / sum_j s_{t,j},
 *   P_i = (1/L) sum_{t in seq} s'_{t,i},   loss = alpha / B * sum_seq sum_i f_i P_i.
 * The gradient flows only through P (f is a count):
 *   dscores[t, j] = (g_{t,j} - sum_i g_{t,i} s'_{t,i}) / sum_i s_{t,i},  g_{t,i} = alpha f_i/(B L).
 *   scores  [T, E] float32 (> 0 sums), indices [T, k] int32 | int64 (the routed set),
 *   seq_len L >= 1 dividing T, loss [] or [1] float32, dscores [T, E] float32 optional
 *   (may alias scores). */
DSC_API dsc_status dsc_moe_seq_aux_loss(dsc_context *ctx, const DLTensor *scores,
                                        const DLTensor *indices, int64_t seq_len, float alpha,
                                        DLTensor *loss, DLTensor *dscores);

/* Rows of the permuted layout: *rows = R = sum_e roundup(count_e, align), align >= 1. */
DSC_API dsc_status dsc_moe_permute_rows(dsc_context *ctx, const DLTensor *indices,
                                        int32_t n_experts, int32_t align, int64_t *rows);

/* Dispatch: copy each token to one row per chosen expert, experts contiguous.
 *   x             [T, D] float32 | bfloat16
 *   indices       [T, k] int32 | int64 in [0, E)
 *   out           [R, D] dtype of x: expert e owns rows group_offsets[e] ..
 *                 group_offsets[e+1]-1, its tokens first in (token, slot) order, then
 *                 zeroed padding up to a multiple of align
 *   group_offsets [E + 1] int32 out: 0, then each a multiple of align, last = R
 *   row_map       [T, k] int32 out: row of out holding (token t, slot j) */
DSC_API dsc_status dsc_moe_permute(dsc_context *ctx, const DLTensor *x, const DLTensor *indices,
                                   int32_t n_experts, int32_t align, DLTensor *out,
                                   DLTensor *group_offsets, DLTensor *row_map);
/* dx[t] = sum_j dout[row_map[t, j]].  dout [R, D], row_map [T, k] int32 in [0, R),
 * dx [T, D] dtype of dout (overwritten). */
DSC_API dsc_status dsc_moe_permute_backward(dsc_context *ctx, const DLTensor *dout,
                                            const DLTensor *row_map, DLTensor *dx);

/* Combine: y[t] = sum_j weights[t, j] * expert_out[row_map[t, j]] (float32 sum, j order).
 *   expert_out [R, D] float32 | bfloat16; row_map [T, k] int32; weights [T, k] float32;
 *   y [T, D] dtype of expert_out. */
DSC_API dsc_status dsc_moe_unpermute(dsc_context *ctx, const DLTensor *expert_out,
                                     const DLTensor *row_map, const DLTensor *weights,
                                     DLTensor *y);
/*   dy [T, D]; dexpert_out [R, D] dtype of dy, optional: rows row_map[t, j] get
 *   weights[t, j] * dy[t] (accumulated if a row is shared), every other row 0;
 *   dweights [T, k] float32, optional: <dy[t], expert_out[row_map[t, j]]>. */
DSC_API dsc_status dsc_moe_unpermute_backward(dsc_context *ctx, const DLTensor *dy,
                                              const DLTensor *expert_out,
                                              const DLTensor *row_map, const DLTensor *weights,
                                              DLTensor *dexpert_out, DLTensor *dweights);

/* Grouped linear (expert GEMM over the contiguous layout): rows group_offsets[e] ..
 * group_offsets[e+1]-1 of x use expert e: y[r] = x[r] @ w[e]^T.
 *   x [R, K], w [E, N, K], y [R, N]: all float32 or all bfloat16 (FP32 accumulation);
 *   group_offsets [E + 1] int32: 0 = o_0 <= o_1 <= ... <= o_E = R. */
DSC_API dsc_status dsc_grouped_linear_forward(dsc_context *ctx, const DLTensor *x,
                                              const DLTensor *w, const DLTensor *group_offsets,
                                              DLTensor *y);
/*   dy [R, N]; dx [R, K] dtype of x, optional: dy @ w[e];
 *   dw [E, N, K] float32 or dtype of w, optional, overwritten: dy_e^T @ x_e (0 for an
 *   expert without rows). At least one of dx, dw. */
DSC_API dsc_status dsc_grouped_linear_backward(dsc_context *ctx, const DLTensor *dy,
                                               const DLTensor *x, const DLTensor *w,
                                               const DLTensor *group_offsets, DLTensor *dx,
                                               DLTensor *dw);

/* The whole DeepSeekMoE layer (routed SwiGLU experts + always-on shared experts),
 * composed from the ops above; float32. Weights by Hugging Face name, experts stacked:
 *   gate           mlp.gate.weight                          [E, D]
 *   bias           mlp.gate.e_score_correction_bias         [E] or NULL (selection only)
 *   experts_gate   mlp.experts.{e}.gate_proj.weight stacked [E, F, D]
 *   experts_up     mlp.experts.{e}.up_proj.weight stacked   [E, F, D]
 *   experts_down   mlp.experts.{e}.down_proj.weight stacked [E, D, F]
 *   shared_*       mlp.shared_experts.{gate,up,down}_proj.weight [Fs, D], [Fs, D], [D, Fs],
 *                  or all NULL for no shared experts */
typedef struct dsc_moe_layer_weights {
  size_t size; /* sizeof(dsc_moe_layer_weights) */
  const DLTensor *gate, *bias, *experts_gate, *experts_up, *experts_down;
  const DLTensor *shared_gate, *shared_up, *shared_down;
  /* 1: the routed and shared expert GEMMs run the V3 FP8 way (as dsc_fp8_linear_*:
   * activations E4M3 in 1x128 tiles, each expert's float32 weight in 128x128 blocks, FP32
   * accumulation; grouped GEMMs over the permuted rows, wgrad per expert along its rows);
   * the router GEMM, routing, SwiGLU and combine stay float32. The backward must use the
   * same value. Needs FP8 kernels on the context's device. */
  int32_t fp8;
  /* Weights held in FP8, as DeepSeek ships them (fp8 = 1, inference: saved NULL): when a
   * `*_scale_inv` is given, the matching weight above is float8_e4m3fn and its scales
   * float32 in 128x128 blocks per matrix: experts [E, ceil(N/128), ceil(K/128)], shared
   * [ceil(N/128), ceil(K/128)] for a weight [(E,) N, K]. NULL: float32 weight. */
  const DLTensor *experts_gate_scale_inv, *experts_up_scale_inv, *experts_down_scale_inv;
  const DLTensor *shared_gate_scale_inv, *shared_up_scale_inv, *shared_down_scale_inv;
} dsc_moe_layer_weights;

/* Gradients (float32, overwritten), each optional (NULL: not computed). */
typedef struct dsc_moe_layer_grads {
  size_t size; /* sizeof(dsc_moe_layer_grads) */
  DLTensor *gate, *experts_gate, *experts_up, *experts_down;
  DLTensor *shared_gate, *shared_up, *shared_down;
} dsc_moe_layer_grads;

/* Activations a forward keeps for its backward, owned by the handle (device memory of
 * the context it was created with). */
typedef struct dsc_moe_layer_saved dsc_moe_layer_saved;
DSC_API dsc_status dsc_moe_layer_saved_create(dsc_context *ctx, dsc_moe_layer_saved **out);
DSC_API void dsc_moe_layer_saved_destroy(dsc_moe_layer_saved *saved);

/*   x [..., D] float32 -> y [..., D] float32; counts [E] int32|int64 (optional): the
 *   expert load of this call; saved (optional, NULL for inference): filled for backward.
 *   align: row alignment of the permuted layout (1 on CPU; 128 suits grouped GEMMs). */
DSC_API dsc_status dsc_moe_layer_forward(dsc_context *ctx, const dsc_moe_route_params *p,
                                         int32_t align, const dsc_moe_layer_weights *w,
                                         const DLTensor *x, DLTensor *y, DLTensor *counts,
                                         dsc_moe_layer_saved *saved);
/*   dy [..., D]; dx [..., D] (optional); g: the weight gradients wanted. Uses the
 *   activations in `saved` from the matching forward. */
DSC_API dsc_status dsc_moe_layer_backward(dsc_context *ctx, const dsc_moe_route_params *p,
                                          const dsc_moe_layer_weights *w, const DLTensor *x,
                                          const DLTensor *dy, dsc_moe_layer_saved *saved,
                                          DLTensor *dx, const dsc_moe_layer_grads *g);

/* The routing of the forward that filled `saved`: indices [T, k] int32, weights [T, k]
 * float32, scores [T, E] float32 (any shape with those counts and last dim; each optional). */
DSC_API dsc_status dsc_moe_layer_saved_routing(dsc_context *ctx, const dsc_moe_layer_saved *saved,
                                               DLTensor *indices, DLTensor *weights, DLTensor *scores);
/* The complementary sequence-wise balance loss of the forward that filled `saved` (its
 * scores and indices; tokens of a sequence contiguous, seq_len each): *loss (host) =
 * alpha * L_bal; its gradient into the router is added by the next dsc_moe_layer_backward.
 * loss may be NULL: the gradient is still prepared, and nothing is copied back (no wait). */
DSC_API dsc_status dsc_moe_layer_aux_loss(dsc_context *ctx, dsc_moe_layer_saved *saved,
                                          int64_t seq_len, float alpha, float *loss);

/* ------------------------------------------------------------------ MLA */
/* Multi-head Latent Attention (DeepSeek-V2/V3), float32. Legend: B batch, T tokens,
 * N = B*T, Hd hidden, H heads, Rq q_lora_rank (0: no query compression), Rkv
 * kv_lora_rank, dn qk_nope_head_dim, dr qk_rope_head_dim, dv v_head_dim, dqk = dn + dr.
 *
 *   q   = q_b_proj(RMSNorm_qa(q_a_proj(x)))  (or q_proj(x) when Rq == 0)   [N, H, dqk]
 *         each head [nope dn | rope dr]; the rope part rotated by `rope` at `positions`
 *   kva = kv_a_proj_with_mqa(x) = [c (Rkv) | kpe (dr)];  ckv = RMSNorm_kva(c);
 *         kpe rotated (one rope key shared by all heads)
 *   kv  = kv_b_proj(ckv) [N, H, dn + dv]: k_nope = kv[..., :dn], v = kv[..., dn:]
 *   s   = softmax_scale * (q_nope . k_nope + q_pe . kpe), causal, softmax in float32
 *   out = o_proj(concat_h(softmax(s) @ v))
 * RoPE dims are interleaved in pairs (rope.layout DSC_ROPE_INTERLEAVED) as in the
 * checkpoints. Weights are laid out as the Hugging Face tensors (out_features, in).
 *
 * fp8 = 1 runs q_a/q_b (or q), kv_a, kv_b and o the V3 way (see dsc_fp8_linear_forward):
 * activations quantized to E4M3 in 1x128 tiles, the float32 weights in 128x128 blocks,
 * FP32 accumulation; backward dgrad with the transposed weight blocks and wgrad with dy
 * and the float32 activation both quantized along the tokens. Norms, RoPE and the
 * attention core stay float32; prefill/decode run the absorbed kv_b products in float32
 * on kv_b rounded through its E4M3 128x128 blocks (as DeepSeek's inference dequantizes the
 * FP8 checkpoint's kv_b). Needs FP8 kernels on the context's device. */
typedef struct dsc_mla_params {
  size_t size;               /* sizeof(dsc_mla_params) */
  int32_t hidden;            /* Hd, 7168 */
  int32_t n_heads;           /* H, 128 */
  int32_t q_lora_rank;       /* Rq, 1536; 0: q_proj, no query compression */
  int32_t kv_lora_rank;      /* Rkv, 512 */
  int32_t qk_nope_head_dim;  /* dn, 128 */
  int32_t qk_rope_head_dim;  /* dr, 64 (must equal rope.dim) */
  int32_t v_head_dim;        /* dv, 128 */
  float rms_norm_eps;        /* 1e-6 */
  dsc_rope_params rope;      /* YaRN parameters of the rope part */
  float softmax_scale;       /* dqk^-1/2 * mscale^2: see dsc_rope_softmax_scale */
  int32_t fp8;               /* 1: the projections run as block-scaled FP8 GEMMs (below) */
} dsc_mla_params;

/* The weights of one attention layer (float32, C-contiguous; FP8 ones below). Unused ones are NULL:
 * with Rq > 0 q_a_proj, q_a_layernorm and q_b_proj (q_proj NULL); with Rq == 0 q_proj. */
typedef struct dsc_mla_weights {
  size_t size;                         /* sizeof(dsc_mla_weights) */
  const DLTensor *q_a_proj;            /* [Rq, Hd] */
  const DLTensor *q_a_layernorm;       /* [Rq] */
  const DLTensor *q_b_proj;            /* [H*dqk, Rq] */
  const DLTensor *q_proj;              /* [H*dqk, Hd] */
  const DLTensor *kv_a_proj_with_mqa;  /* [Rkv + dr, Hd] */
  const DLTensor *kv_a_layernorm;      /* [Rkv] */
  const DLTensor *kv_b_proj;           /* [H*(dn+dv), Rkv] */
  const DLTensor *o_proj;              /* [Hd, H*dv] */
  /* Weights held in FP8, as DeepSeek ships them (prefill/decode with p->fp8 only): when a
   * projection's `weight_scale_inv` is given, that projection above is float8_e4m3fn
   * [N, K] and its scales float32 [ceil(N/128), ceil(K/128)] (128x128 blocks, multipliers);
   * its GEMM uses them as they are. NULL: the weight is float32 (quantized per call). */
  const DLTensor *q_a_proj_scale_inv, *q_b_proj_scale_inv, *q_proj_scale_inv,
      *kv_a_proj_with_mqa_scale_inv, *kv_b_proj_scale_inv, *o_proj_scale_inv;
} dsc_mla_weights;

/* Gradients, float32, same shapes as the weights, overwritten. A NULL entry is not
 * computed (the ones of unused weights must be NULL). */
typedef struct dsc_mla_grads {
  size_t size; /* sizeof(dsc_mla_grads) */
  DLTensor *q_a_proj, *q_a_layernorm, *q_b_proj, *q_proj, *kv_a_proj_with_mqa,
      *kv_a_layernorm, *kv_b_proj, *o_proj;
} dsc_mla_grads;

/* Activations saved by dsc_mla_forward for dsc_mla_backward: an opaque handle owned by
 * the caller, (re)filled by each forward, on the context's device. The context must
 * outlive it. */
typedef struct dsc_mla_saved dsc_mla_saved;
DSC_API dsc_status dsc_mla_saved_create(dsc_context *ctx, dsc_mla_saved **out);
DSC_API void dsc_mla_saved_destroy(dsc_mla_saved *saved);
/* Bytes held by the saved activations. */
DSC_API dsc_status dsc_mla_saved_bytes(const dsc_mla_saved *saved, size_t *bytes);

/* Training forward: causal self-attention over each of the B sequences.
 *   x         [B, T, Hd] float32
 *   positions [B, T]     int32 >= 0 (RoPE angles; the causal mask is by token index)
 *   out       [B, T, Hd] float32
 *   saved     optional (NULL: inference only) */
DSC_API dsc_status dsc_mla_forward(dsc_context *ctx, const dsc_mla_params *p,
                                   const dsc_mla_weights *w, const DLTensor *x,
                                   const DLTensor *positions, DLTensor *out,
                                   dsc_mla_saved *saved);
/* Backward of the last forward that filled `saved`: same p, w, x and positions.
 *   dout [B, T, Hd] float32; dx [B, T, Hd] float32 (optional); grads: every weight. */
DSC_API dsc_status dsc_mla_backward(dsc_context *ctx, const dsc_mla_params *p,
                                    const dsc_mla_weights *w, const dsc_mla_saved *saved,
                                    const DLTensor *x, const DLTensor *positions,
                                    const DLTensor *dout, DLTensor *dx,
                                    const dsc_mla_grads *grads);

/* ---- paged latent cache (inference) ----
 * Per token and layer the cache keeps the normalized latent ckv (Rkv) and the rotated
 * rope key kpe (dr): Rkv + dr values (576 for V3), nothing per head. Tokens live in
 * blocks of block_size; each sequence has a block table. Sequence ids are the caller's
 * (any int64 >= 0). dtype: FLOAT32, BFLOAT16, or FLOAT8_E4M3FN (latent in E4M3 with one
 * float32 scale per 128 values, rope part in bfloat16). Metadata lives on the host. */
typedef struct dsc_mla_cache dsc_mla_cache;

typedef struct dsc_mla_cache_options {
  size_t size;             /* sizeof(dsc_mla_cache_options) */
  int32_t n_layers;        /* >= 1 */
  int32_t max_batch;       /* sequences at once */
  int32_t max_tokens;      /* per sequence */
  int32_t block_size;      /* tokens per block, 64 */
  int32_t n_blocks;        /* 0: max_batch * ceil(max_tokens / block_size) */
  int32_t kv_lora_rank;    /* Rkv */
  int32_t rope_dim;        /* dr */
  int32_t dtype;           /* dsc_dtype: FLOAT32 | BFLOAT16 | FLOAT8_E4M3FN */
} dsc_mla_cache_options;

DSC_API dsc_status dsc_mla_cache_create(dsc_context *ctx, const dsc_mla_cache_options *opt,
                                        dsc_mla_cache **out);
DSC_API void dsc_mla_cache_destroy(dsc_mla_cache *cache);
/* Bytes per token and layer (f32: 4*(Rkv+dr); bf16: 2*(Rkv+dr); fp8: Rkv + 4*ceil(Rkv/128)
 * + 2*dr), and the bytes of the whole pool. */
DSC_API dsc_status dsc_mla_cache_bytes(const dsc_mla_cache *cache, size_t *bytes_per_token,
                                       size_t *total_bytes);
DSC_API dsc_status dsc_mla_cache_add_sequence(dsc_mla_cache *cache, int64_t seq_id);
DSC_API dsc_status dsc_mla_cache_free_sequence(dsc_mla_cache *cache, int64_t seq_id);
/* Drop the tokens at positions >= length (e.g. rejected draft tokens); frees blocks. */
DSC_API dsc_status dsc_mla_cache_truncate(dsc_mla_cache *cache, int64_t seq_id, int64_t length);
DSC_API dsc_status dsc_mla_cache_sequence_length(const dsc_mla_cache *cache, int64_t seq_id,
                                                 int64_t *length);
/* The blocks of a sequence: *n = their count; blocks[0..min(n,cap)) filled. */
DSC_API dsc_status dsc_mla_cache_block_table(const dsc_mla_cache *cache, int64_t seq_id,
                                             int32_t *blocks, int32_t cap, int32_t *n);
/* Free blocks and free sequence slots. */
DSC_API dsc_status dsc_mla_cache_free_counts(const dsc_mla_cache *cache, int32_t *free_blocks,
                                             int32_t *free_sequences);
/* Read back the cached rows of a sequence (float32): latent [len, Rkv], rope [len, dr]
 * (dequantized), host or device memory of the context's device as DLTensors. */
DSC_API dsc_status dsc_mla_cache_read(dsc_context *ctx, const dsc_mla_cache *cache,
                                      int32_t layer, int64_t seq_id, DLTensor *latent,
                                      DLTensor *rope);

/* Attention of new tokens over the cache: writes their latents at their positions, then
 * each query token at position p attends to the sequence's tokens at positions <= p.
 *   x         [B, T, Hd] float32
 *   seq_ids   [B] int64 (distinct, added to the cache)
 *   positions [B, T] int32: row b holds n_b >= 0 tokens at start_b, start_b + 1, ..
 *             (start_b <= the sequence's length: a smaller start overwrites, i.e.
 *             truncates), then -1 padding; start_b + n_b <= max_tokens
 *   out       [B, T, Hd] float32 (zero on padding)
 * Every argument (ids, positions, room for the new blocks) is checked before the cache
 * is changed: on error the cache is as before. Decode uses weight absorption: W_UK is
 * folded into the query and attention runs over the Rkv + dr wide latents, W_UV after.
 * Prefill currently runs the same absorbed path (identical results). */
DSC_API dsc_status dsc_mla_prefill(dsc_context *ctx, const dsc_mla_params *p,
                                   const dsc_mla_weights *w, dsc_mla_cache *cache, int32_t layer,
                                   const DLTensor *x, const DLTensor *seq_ids,
                                   const DLTensor *positions, DLTensor *out);
DSC_API dsc_status dsc_mla_decode(dsc_context *ctx, const dsc_mla_params *p,
                                  const dsc_mla_weights *w, dsc_mla_cache *cache, int32_t layer,
                                  const DLTensor *x, const DLTensor *seq_ids,
                                  const DLTensor *positions, DLTensor *out);

/* ------------------------------------------------------------------ communicators */
/* dsc_comm: a group of processes (ranks 0..size-1) and the collectives the distributed
 * model needs, on an engine people already run: NCCL between GPUs, MPI (OpenMPI, MPICH)
 * between CPU processes, or a world of one. One interface for all of them:
 *
 *   dsc_comm_create_mpi(&comm_world, &c)     an MPI communicator (pointer to an MPI_Comm:
 *                                            this header needs no mpi.h); duplicated, so
 *                                            deepseek_c's messages never match the caller's
 *   dsc_comm_create_nccl(nccl_comm, dev, &c) an existing ncclComm_t (e.g. PyTorch's), borrowed:
 *                                            never destroyed by deepseek_c
 *   dsc_comm_nccl_unique_id / _create_nccl_uid   a new NCCL communicator from a unique id
 *                                            (rank 0 makes it, the launcher's channel carries it)
 *   dsc_comm_create_self(&c)                 a world of one (no library needed)
 *
 * The backends a build has: dsc_build_info.mpi / .nccl (the MPI and NCCL constructors answer
 * DSC_ERR_UNSUPPORTED in a build without them). Tensors are DLPack on the communicator's
 * device: host memory for MPI and self, the communicator's CUDA device for NCCL, where every
 * collective is stream-ordered on ctx's stream (NCCL's own semantics; the host does not wait).
 *
 * Numerics: MPI reductions are computed by deepseek_c, not by the MPI library, in a fixed
 * order: y = ((x_0 + x_1) + x_2) + ... over ranks 0..size-1, bitwise identical on every rank
 * and independent of the MPI implementation and its algorithm choice. NCCL reductions are
 * NCCL's (every rank gets the same bits).
 *
 * Failures are errors, never hangs: every MPI operation has a deadline (dsc_comm_set_timeout;
 * default 300 s or the DSC_COMM_TIMEOUT environment variable, seconds). A peer that does not
 * answer in time -- it died, hangs, or called another collective (every message carries the
 * collective's kind and sequence number) -- or a size that does not match what this rank
 * expects is DSC_ERR_COMM naming the collective, its sequence number and the ranks it waited
 * for; the communicator is then broken (every later call fails at once with the first error).
 * NCCL waits (dsc_comm_synchronize) poll the communicator's asynchronous error with the same
 * deadline and abort it (ncclCommAbort) on expiry. */
typedef struct dsc_comm dsc_comm;

typedef enum dsc_comm_backend {
  DSC_COMM_BACKEND_SELF = 0, /* a world of one */
  DSC_COMM_BACKEND_MPI = 1,  /* CPU processes */
  DSC_COMM_BACKEND_NCCL = 2, /* GPUs */
} dsc_comm_backend;

typedef enum dsc_reduce_op {
  DSC_REDUCE_SUM = 0,
  DSC_REDUCE_MAX = 1,
} dsc_reduce_op;

#define DSC_NCCL_UNIQUE_ID_BYTES 128

DSC_API dsc_status dsc_comm_create_self(dsc_comm **out);
/* mpi_comm: the address of an MPI_Comm (e.g. &comm; mpi4py: MPI._addressof(comm)). MPI must be
 * initialized; the communicator is duplicated (MPI_Comm_dup, errors returned, not fatal).
 * Overlapped (asynchronous) collectives need MPI_THREAD_MULTIPLE (mpi4py's default); at a
 * lower thread level they run synchronously. */
DSC_API dsc_status dsc_comm_create_mpi(const void *mpi_comm, dsc_comm **out);
/* nccl_comm: an ncclComm_t on CUDA device `device` (borrowed: it must outlive the dsc_comm). */
DSC_API dsc_status dsc_comm_create_nccl(void *nccl_comm, int32_t device, dsc_comm **out);
DSC_API dsc_status dsc_comm_nccl_unique_id(uint8_t id[DSC_NCCL_UNIQUE_ID_BYTES]);
/* A new NCCL communicator (owned: destroyed with the dsc_comm); collective over `size` ranks. */
DSC_API dsc_status dsc_comm_create_nccl_uid(const uint8_t id[DSC_NCCL_UNIQUE_ID_BYTES], int32_t rank,
                                            int32_t size, int32_t device, dsc_comm **out);
DSC_API void dsc_comm_destroy(dsc_comm *comm);
DSC_API int32_t dsc_comm_rank(const dsc_comm *comm);
DSC_API int32_t dsc_comm_size(const dsc_comm *comm);
DSC_API int32_t dsc_comm_backend_of(const dsc_comm *comm); /* dsc_comm_backend, -1 for NULL */
/* The device the collectives' tensors live on (CPU for MPI and self). */
DSC_API dsc_status dsc_comm_device(const dsc_comm *comm, DLDevice *device);
/* Deadline of every operation, seconds (> 0, finite). */
DSC_API dsc_status dsc_comm_set_timeout(dsc_comm *comm, double seconds);
DSC_API double dsc_comm_get_timeout(const dsc_comm *comm);
/* Ranks with the same color form a new communicator, ordered by (key, rank) (collective). */
DSC_API dsc_status dsc_comm_split(dsc_comm *comm, int32_t color, int32_t key, dsc_comm **out);

/* y = reduce over ranks of x (same shape and dtype on every rank; y may alias x).
 *   x, y: float32 | float64 | int32 | int64 (NCCL: also bfloat16); op: dsc_reduce_op */
DSC_API dsc_status dsc_comm_all_reduce(dsc_comm *comm, dsc_context *ctx, const DLTensor *x, DLTensor *y,
                                       int32_t op);
/* y [n...] on rank r = reduce over ranks of x[r] for x [size, n...]. */
DSC_API dsc_status dsc_comm_reduce_scatter(dsc_comm *comm, dsc_context *ctx, const DLTensor *x, DLTensor *y,
                                           int32_t op);
/* y [size, ...] = the x [...] of every rank (any dtype). */
DSC_API dsc_status dsc_comm_all_gather(dsc_comm *comm, dsc_context *ctx, const DLTensor *x, DLTensor *y);
/* x of rank root into x of every rank (in place). */
DSC_API dsc_status dsc_comm_broadcast(dsc_comm *comm, dsc_context *ctx, DLTensor *x, int32_t root);
/* The counts step of an all-to-all-v: recv_counts[q] = send_counts[me] of rank q (host int64
 * arrays [size], >= 0). */
DSC_API dsc_status dsc_comm_exchange_counts(dsc_comm *comm, dsc_context *ctx, const int64_t *send_counts,
                                            int64_t *recv_counts);
/* All-to-all-v of rows: x [sum(send_counts), ...] holds the rows for rank 0, then rank 1, ...;
 * y [sum(recv_counts), ...] receives rank 0's rows for me, then rank 1's, ... (same row shape
 * and dtype; recv_counts from dsc_comm_exchange_counts). */
DSC_API dsc_status dsc_comm_all_to_all_v(dsc_comm *comm, dsc_context *ctx, const DLTensor *x,
                                         const int64_t *send_counts, DLTensor *y, const int64_t *recv_counts);
DSC_API dsc_status dsc_comm_barrier(dsc_comm *comm, dsc_context *ctx);
/* Wait (with the deadline) for every collective of this communicator issued so far: host-side
 * completion of asynchronous work; for NCCL the stream's work and the communicator's errors. */
DSC_API dsc_status dsc_comm_synchronize(dsc_comm *comm, dsc_context *ctx);

/* Counters since creation (or the last reset). wait_seconds: time callers were blocked in
 * this communicator's operations (the communication the computation did not hide);
 * busy_seconds: time operations were in flight (asynchronous ones included). */
typedef struct dsc_comm_stats {
  size_t size;            /* sizeof(dsc_comm_stats) */
  int64_t ops;            /* collectives issued */
  int64_t bytes_sent;     /* payload bytes this rank sent to other ranks */
  int64_t bytes_received; /* payload bytes it received from them */
  double wait_seconds;
  double busy_seconds;
} dsc_comm_stats;
DSC_API dsc_status dsc_comm_get_stats(const dsc_comm *comm, dsc_comm_stats *stats);
DSC_API void dsc_comm_reset_stats(dsc_comm *comm);

/* ------------------------------------------------------------------ model */
/* A DeepSeek-V3-architecture causal LM (MLA + dense/MoE FFN + MTP) with its training
 * step and checkpoints, composed from the ops above on the context's device. Field names
 * follow the Hugging Face DeepseekV3/V2 config keys. Legend: B batch, T tokens per row,
 * N = B*T, V vocab, D hidden, L num_hidden_layers, Dm num_nextn_predict_layers. */
typedef struct dsc_model_config {
  size_t size;                      /* sizeof(dsc_model_config) */
  int32_t vocab_size;               /* V, 129280 */
  int32_t hidden_size;              /* D, 7168 */
  int32_t intermediate_size;        /* dense MLP, 18432 */
  int32_t moe_intermediate_size;    /* per expert, 2048 */
  int32_t num_hidden_layers;        /* L, 61 */
  int32_t num_nextn_predict_layers; /* MTP depth Dm, 1 (0: none) */
  int32_t num_attention_heads;      /* 128 */
  int32_t q_lora_rank;              /* 1536; 0 = null: q_proj, no query compression */
  int32_t kv_lora_rank;             /* 512 */
  int32_t qk_nope_head_dim;         /* 128 */
  int32_t qk_rope_head_dim;         /* 64 */
  int32_t v_head_dim;               /* 128 */
  int32_t n_routed_experts;         /* 256; 0: every layer dense */
  int32_t n_shared_experts;         /* 1 */
  int32_t num_experts_per_tok;      /* 8 */
  int32_t n_group;                  /* 8 */
  int32_t topk_group;               /* 4 */
  int32_t topk_method;              /* dsc_moe_topk_method, NOAUX_TC */
  int32_t scoring_func;             /* dsc_moe_scoring, SIGMOID */
  int32_t norm_topk_prob;           /* 1 */
  float routed_scaling_factor;      /* 2.5 */
  int32_t first_k_dense_replace;    /* 3: layers < this are dense */
  int32_t moe_layer_freq;           /* 1: MoE where layer % freq == 0 (and >= first_k) */
  float rms_norm_eps;               /* 1e-6 */
  dsc_rope_params rope;             /* rope_theta + rope_scaling (YaRN); dim = qk_rope_head_dim */
  int32_t max_position_embeddings;  /* 163840 */
  int32_t bos_token_id;             /* 0; -1: none */
  int32_t eos_token_id;             /* 1; -1: none */
  int32_t tie_word_embeddings;      /* 0 */
  float initializer_range;          /* std of the N(0, std) init: 0.02 (HF); V3's report used 0.006 */
  int32_t model_type;               /* dsc_model_type: whose config.json semantics (V3) */
} dsc_model_config;

/* The family a config.json describes ("model_type"). It decides the defaults of keys a
 * file leaves out -- Hugging Face's DeepseekV2 config has no scoring_func, top-k method or
 * MTP depth because that model always routes with softmax and greedy top-k and has no MTP
 * -- and what a checkpoint is written as. */
typedef enum dsc_model_type {
  DSC_MODEL_TYPE_DEEPSEEK_V3 = 0, /* "deepseek_v3": sigmoid + noaux_tc defaults, MTP */
  DSC_MODEL_TYPE_DEEPSEEK_V2 = 1, /* "deepseek_v2": softmax, greedy, no MTP by default */
} dsc_model_type;

/* DeepSeek-V3 (671B) values. */
DSC_API void dsc_model_config_default(dsc_model_config *cfg);
/* Every field in range and consistent (e.g. n_group divides n_routed_experts), and the
 * totals (parameter count) fit in int64, checked before anything is allocated. Each field
 * has an upper bound far above DeepSeek-V3's and V2's (e.g. hidden_size <= 2^20,
 * vocab_size <= 2^24, num_hidden_layers <= 2^12, n_routed_experts <= 2^16, heads <= 2^12,
 * num_nextn_predict_layers <= 8); dsc_model_create and dsc_model_load also refuse
 * (DSC_ERR_OUT_OF_MEMORY) a model whose float32 parameters exceed the machine's RAM (CPU)
 * or the device's memory (CUDA) before allocating. */
DSC_API dsc_status dsc_model_config_validate(const dsc_model_config *cfg);
/* Parse a Hugging Face config.json text (len bytes) / file. Keys the text leaves out take
 * the defaults of its model_type ("deepseek_v3" when absent; "deepseek_v2": softmax
 * scoring, greedy top-k, no MTP, ...); *cfg is only an output (its size field must be
 * set). Keys deepseek_c does not interpret are ignored here (dsc_model_create_json keeps
 * them). RoPE comes from rope_theta with rope_scaling (older files) or rope_parameters
 * (transformers 5): where both spellings are present they must agree. A malformed file,
 * a value of the wrong type or out of range, or a setting deepseek_c does not implement
 * (an activation other than silu, attention biases, a RoPE scaling other than YaRN) is
 * DSC_ERR_FORMAT naming the key. This is the one config parser: Python's ModelConfig
 * calls it too (through dsc_model_config_normalize_json). */
DSC_API dsc_status dsc_model_config_from_json(const char *json, size_t len, dsc_model_config *cfg);
DSC_API dsc_status dsc_model_config_load(const char *path, dsc_model_config *cfg);
/* The config.json deepseek_c writes for the text `json`: every key it interprets under
 * its Hugging Face name with the value it will use (model_type defaults filled in, RoPE
 * as rope_theta + rope_scaling), plus every other member of the input unchanged; keys
 * sorted, two-space indent. Writes at most cap bytes (NUL-terminated) to out (may be NULL
 * when cap is 0); *len receives the length without the NUL, so a call with cap 0 sizes
 * the buffer. Errors as dsc_model_config_from_json. */
DSC_API dsc_status dsc_model_config_normalize_json(const char *json, size_t len, char *out, size_t cap,
                                                   size_t *out_len);

typedef struct dsc_model dsc_model;

typedef struct dsc_model_options {
  size_t size;            /* sizeof(dsc_model_options) */
  uint64_t seed;          /* init RNG seed */
  int32_t init;           /* 1: V3 init (matrices N(0, initializer_range), norms 1, bias 0); 0: zeros */
  int32_t fp8;            /* 1: linear layers run as block-scaled FP8 GEMMs (see DESIGN.md) */
  int32_t moments_dtype;  /* AdamW moments: DSC_DTYPE_FLOAT32 (default) or DSC_DTYPE_BFLOAT16
                             (half the optimizer memory, as DeepSeek-V3 trained) */
  /* dsc_model_load only: */
  int32_t init_missing_mtp; /* MTP modules the config names but the checkpoint lacks (transformers
                               does not keep them): 0 = MTP off (num_nextn_predict_layers becomes the
                               depths present) with a warning; 1 = initialized (V3 init, `seed`) to
                               be trained */
  int32_t strict;           /* 1: a tensor the model has no use for is an error; 0 (default): it is
                               skipped with a warning (as transformers does). Buffers that never
                               carry weights (rotary_emb.inv_freq), the MTP modules' copies of the
                               embedding and head, and a tied lm_head equal to the embedding are
                               skipped silently either way. */
  /* Distributed (expert and data parallel) training and inference: every rank of `comm`
   * creates (or loads) the model with the same config and options. comm NULL: one process.
   * The world (size W = expert_parallel * data_parallel) is laid out rank = dp_index * ep + ep_index:
   * the ep ranks of a data-parallel index form an expert-parallel group, each holding
   * n_routed_experts / ep experts (ep_index * E/ep onwards) of every MoE layer and a replica of
   * everything else; tokens travel to their experts' ranks and back (all-to-all-v). Every rank
   * trains on its own micro-batch: gradients of replicated tensors are summed over the world,
   * an expert's over the dp ranks holding it (in buckets, overlapping the backward), the
   * global-norm clip and the bias update use every rank's gradients and expert load. The comm
   * must outlive the model (its operations run on duplicates of it).
   * Node-limited routing (DeepSeek-V3's "at most M nodes per token") is the config's
   * group-limited top-k with groups aligned to ranks: with topk_group < n_group, n_group must
   * be a multiple of ep (each rank holds whole groups: a token reaches at most topk_group
   * ranks) or a divisor of it (a group spans ep / n_group ranks, a node: at most
   * topk_group * ep / n_group ranks), else creation fails with DSC_ERR_INVALID_ARGUMENT.
   * With fp8, the dispatch sends each row as E4M3 with its 1x128 scales (D + 4 ceil(D/128)
   * bytes instead of 4 D); the combine and the backward exchanges send float32. */
  dsc_comm *comm;
  int32_t expert_parallel;  /* ep >= 1, divides n_routed_experts; 0: W / data_parallel, or W if that is 0 too */
  int32_t data_parallel;    /* dp >= 1; 0: W / ep. ep * dp must be W */
  int32_t check_every;      /* compare the replicated parameters of every rank every N optimizer
                               steps (a 64-bit hash per rank, all-gathered; a difference is
                               DSC_ERR_COMM); 0: never. Default 1 */
  int32_t overlap;          /* 1 (default): the gradient reduction overlaps the backward (a bucket
                               per layer, reduced while the layers below compute); 0: after it */
  int32_t ep_micro_batches; /* 1 (default): an MoE layer dispatches all its tokens at once (expert
                               rows in the single-process order); 2: as two micro-batches, the
                               dispatch/combine of one overlapping the expert computation of the
                               other (DualPipe's overlap without its pipeline schedule) */
  /* The compute dtype (DeepSeek-V3's BF16 recipe): DSC_DTYPE_FLOAT32 (default) or
   * DSC_DTYPE_BFLOAT16. BFLOAT16 keeps float32 masters, gradients and AdamW state; the
   * forward, backward and generation use the masters rounded to BF16 (RNE), refreshed before
   * every pass, and round activations and their gradients to BF16 at the GEMM / attention /
   * SwiGLU boundaries (the lists: csrc/model/model_layers.c and model_train.c, "BF16
   * compute"); GEMMs accumulate in float32, RMSNorm statistics, softmax and cross-entropy
   * run in float32, the residual stream stays float32. With fp8, the block linears run as
   * FP8 GEMMs on those BF16 values. */
  int32_t compute_dtype;
} dsc_model_options;
DSC_API void dsc_model_options_default(dsc_model_options *opt);

/* A distributed model's place in the world (a model without comm: world 1, every expert). */
typedef struct dsc_model_parallel {
  size_t size;             /* sizeof(dsc_model_parallel) */
  int32_t world, rank;
  int32_t expert_parallel, data_parallel;
  int32_t ep_rank, dp_rank;  /* rank = dp_rank * expert_parallel + ep_rank */
  int32_t n_local_experts;   /* routed experts held here (per MoE layer) */
  int32_t first_expert;      /* global index of the first of them */
} dsc_model_parallel;
DSC_API dsc_status dsc_model_parallel_info(const dsc_model *model, dsc_model_parallel *info);
/* The communication counters of the model's own communicators, summed (zeros without comm);
 * reset != 0 zeroes them after reading. */
DSC_API dsc_status dsc_model_comm_stats(dsc_model *model, int32_t reset, dsc_comm_stats *stats);

/* Parameters: float32 master weights in one arena on ctx's device. The context must
 * outlive the model; a model is used by one thread at a time. */
DSC_API dsc_status dsc_model_create(dsc_context *ctx, const dsc_model_config *cfg,
                                    const dsc_model_options *opt, dsc_model **out);
/* dsc_model_create from config.json text (parsed by dsc_model_config_from_json): the
 * members deepseek_c does not interpret (architectures, torch_dtype, ...) are kept and
 * written back by dsc_model_save. */
DSC_API dsc_status dsc_model_create_json(dsc_context *ctx, const char *config_json, size_t len,
                                         const dsc_model_options *opt, dsc_model **out);
DSC_API void dsc_model_destroy(dsc_model *model);
/* The config.json dsc_model_save writes for this model (see dsc_model_config_normalize_json
 * for the form and the buffer protocol). */
DSC_API dsc_status dsc_model_config_json(const dsc_model *model, char *out, size_t cap, size_t *out_len);
DSC_API dsc_status dsc_model_get_config(const dsc_model *model, dsc_model_config *cfg);
DSC_API dsc_context *dsc_model_context(const dsc_model *model);
/* Number of scalar parameters (the correction biases included). */
DSC_API int64_t dsc_model_num_parameters(const dsc_model *model);

/* The parameters by Hugging Face name (experts one by one, as in the checkpoints; no MTP
 * duplicates of the embedding/head). `view` is a float32 DLTensor into the arena (its
 * shape pointer stays valid while the model lives): writes change the model. A frozen
 * model's block matrices are float8_e4m3fn views (dsc_model_freeze_fp8). */
DSC_API int64_t dsc_model_num_tensors(const dsc_model *model);
DSC_API dsc_status dsc_model_tensor(const dsc_model *model, int64_t index, const char **name,
                                    DLTensor *view);
DSC_API dsc_status dsc_model_find_tensor(const dsc_model *model, const char *name,
                                         int64_t *index);
/* Gradient of tensor `index` (valid after dsc_model_loss_and_grad), same layout. */
DSC_API dsc_status dsc_model_grad(dsc_model *model, int64_t index, DLTensor *view);
/* AdamW state of tensor `index` (which 0: exp_avg, 1: exp_avg_sq) in the moments dtype of
 * the options (float32 or bfloat16); allocated (zeros) on first use. */
DSC_API dsc_status dsc_model_optimizer_state(dsc_model *model, int64_t index, int32_t which,
                                             DLTensor *view);
/* The compute copy of tensor `index`: a BF16-compute model's weights as its passes use
 * them (the float32 master rounded to BF16, RNE; refreshed from the masters by this call),
 * as float32 values; a float32 model's is the master itself. Read-only (a write is lost at
 * the next refresh); the view stays valid while the model lives. */
DSC_API dsc_status dsc_model_compute_tensor(dsc_model *model, int64_t index, DLTensor *view);
DSC_API int64_t dsc_model_step(const dsc_model *model);
DSC_API dsc_status dsc_model_set_step(dsc_model *model, int64_t step);

/* Logits of the main model: tokens [B, T] int32 in [0, V) on ctx's device (T <=
 * max_position_embeddings) -> logits [B, T, V] float32. A frozen model (no float32 masters)
 * computes them with generation's prefill: E4M3-held weights, the latent cache, absorbed
 * attention. */
DSC_API dsc_status dsc_model_forward(dsc_model *model, const DLTensor *tokens, DLTensor *logits);
/* Routing of MoE block `layer` for tokens [B, T] (main layers; MTP blocks see their own
 * inputs, not these): indices [B, T, k] int32, weights [B, T, k], scores [B, T, E] float32
 * (each optional). Does not change the expert-load statistics. */
DSC_API dsc_status dsc_model_routing(dsc_model *model, const DLTensor *tokens, int32_t layer,
                                     DLTensor *indices, DLTensor *weights, DLTensor *scores);
/* Logits of MTP depth `depth` (0-based): at position i they predict token i + depth + 2.
 *   tokens [B, T] (T > depth + 1) -> logits [B, T - depth - 1, V] float32 */
DSC_API dsc_status dsc_model_forward_mtp(dsc_model *model, const DLTensor *tokens, int32_t depth,
                                         DLTensor *logits);

typedef struct dsc_train_options {
  size_t size;             /* sizeof(dsc_train_options) */
  float lr;                /* this step's learning rate (the schedule is the caller's) */
  float beta1, beta2, eps; /* 0.9, 0.95, 1e-8 */
  float weight_decay;      /* 0.1, on matrices only */
  float max_grad_norm;     /* 1.0; 0: no clipping */
  float mtp_lambda;        /* 0.3: loss = L_main + lambda / Dm * sum_d L_mtp^d */
  float aux_alpha;         /* sequence-wise balance loss weight; 0: off */
  float bias_update_rate;  /* gamma of the aux-loss-free bias update, 0.001; 0: off */
  int32_t grad_accum;      /* micro-batches the batch is split into (divides B), 1 */
  int32_t ignore_index;    /* -100 */
} dsc_train_options;
DSC_API void dsc_train_options_default(dsc_train_options *opt);

typedef struct dsc_train_stats {
  size_t size;             /* sizeof(dsc_train_stats) */
  float loss;              /* main next-token loss (mean over micro-batches) */
  float mtp_loss;          /* mean over depths of the MTP losses */
  float aux_loss;          /* the balance loss term: aux_alpha * sum over MoE blocks of L_bal */
  float grad_norm;         /* global norm before clipping */
  int64_t step;            /* the step number after this step */
  float load_imbalance;    /* mean over MoE layers of max/mean expert load */
  int64_t tokens;          /* B*T */
} dsc_train_stats;

/* Loss and gradients of one batch, no update: tokens, targets [B, T] (targets int32,
 * ignore_index allowed). accumulate 0: gradients overwritten; 1: added. grad_scale
 * multiplies the gradients (1/grad_accum for accumulation). Fills loss, mtp_loss,
 * aux_loss and load_imbalance of stats (optional) and the per-layer expert load. */
DSC_API dsc_status dsc_model_loss_and_grad(dsc_model *model, const dsc_train_options *opt,
                                           const DLTensor *tokens, const DLTensor *targets,
                                           int32_t accumulate, float grad_scale,
                                           dsc_train_stats *stats);
/* One training step: loss_and_grad over grad_accum micro-batches, global-norm clipping,
 * AdamW (step + 1), the aux-loss-free bias update from this step's expert load.
 * On a GPU (one process) the step runs without the host: norm, clipping and the bias update
 * read device memory, and the host waits once, only to fill stats. With stats NULL it does
 * not wait at all: the statistics (and a bad token id, which makes this and any later step
 * before the read change nothing) are read by dsc_model_train_stats, or by the next step,
 * save or composable call, which then also sets the step count to the last update applied. */
DSC_API dsc_status dsc_model_train_step(dsc_model *model, const dsc_train_options *opt,
                                        const DLTensor *tokens, const DLTensor *targets,
                                        dsc_train_stats *stats);
/* The statistics of the last dsc_model_train_step (the host's one wait for a step run with
 * stats NULL; a failure recorded by that step is returned here). */
DSC_API dsc_status dsc_model_train_stats(dsc_model *model, dsc_train_stats *stats);
/* ---- composable training: the pieces of dsc_model_train_step, for objectives and loops
 * that are not next-token cross-entropy (an autograd framework's loss, RL, distillation)
 * and for data parallelism (gradients all-reduced between backward and the optimizer).
 *
 * dsc_model_forward_train: the training forward of tokens [B, T] int32, keeping what the
 * backward needs: logits [B, T, V] float32 and, for the first n_mtp MTP depths (0 <= n_mtp
 * <= num_nextn_predict_layers, < T), mtp_logits[d] [B, T - d - 1, V] (at position i they
 * predict token i + d + 2). logits and any mtp_logits[d] may be NULL (not copied out). No
 * auxiliary balance loss (dsc_model_loss_and_grad has it). Any other forward of the model
 * in between discards what it kept.
 * dsc_model_backward: the backward of the last dsc_model_forward_train from dL/dlogits
 * [B, T, V] and dL/dmtp_logits[d] for d < n_mtp (n_mtp <= the forward's; a NULL entry is a
 * zero gradient): the gradients (dsc_model_grad) are overwritten (accumulate 0) or added to
 * (1). One backward per forward.
 * dsc_model_optimizer_step: global-norm clipping, AdamW (step + 1) and the aux-loss-free
 * bias update from the expert load of the passes, on the gradients there are; stats gets
 * grad_norm, step and load_imbalance (the losses are the caller's). */
DSC_API dsc_status dsc_model_forward_train(dsc_model *model, const DLTensor *tokens, int32_t n_mtp,
                                           DLTensor *logits, DLTensor *const *mtp_logits);
DSC_API dsc_status dsc_model_backward(dsc_model *model, const DLTensor *dlogits, int32_t n_mtp,
                                      const DLTensor *const *dmtp_logits, int32_t accumulate);
DSC_API dsc_status dsc_model_optimizer_step(dsc_model *model, const dsc_train_options *opt,
                                            dsc_train_stats *stats);

/* ---- reinforcement learning and distillation (csrc/model/policy.c), on the pieces above.
 * tokens and targets are [B, T] int32 on the model's device as for dsc_model_train_step:
 * targets[b, t] is the token that position t predicts (tokens[b, t + 1]) where it is a
 * completion token, ignore_index (opt->ignore_index, -100) elsewhere (prompt, padding).
 *
 * dsc_model_token_logprobs: logprobs [B, T] float32 = log softmax(logits[b, t])[targets[b,
 * t]] (0 where ignored) by the plain forward; any model, frozen ones too (a reference or a
 * teacher). It discards a pending dsc_model_forward_train. */
DSC_API dsc_status dsc_model_token_logprobs(dsc_model *model, const DLTensor *tokens,
                                            const DLTensor *targets, int32_t ignore_index,
                                            DLTensor *logprobs);

typedef struct dsc_policy_stats {
  size_t size;           /* sizeof(dsc_policy_stats) */
  float loss;            /* the GRPO objective (dsc_grpo_loss) */
  float policy_loss;     /* token mean of the clipped surrogate term */
  float kl;              /* token mean of the k3 KL to the reference (0 without one) */
  float clip_low;        /* fractions of completion tokens clipped (dsc_grpo_stat) */
  float clip_high;
  float clip_region;
  float ratio_mean;
  float entropy;         /* token mean of the policy's entropy */
  float reward_mean;     /* over all B completions (dropped groups included) */
  float reward_std;      /* sample std over all B completions */
  float grad_norm;       /* global norm before clipping */
  float load_imbalance;  /* mean over MoE layers of max/mean expert load */
  int64_t step;          /* the optimizer step number after this step */
  int64_t tokens;        /* completion tokens counted */
  int64_t sequences;     /* completions counted (B less the dropped groups' rows) */
  int64_t groups_dropped;/* groups left out by drop_zero_std_groups */
} dsc_policy_stats;

/* One GRPO policy step over given completions: the training forward of tokens, the
 * per-token log-probabilities of targets (dsc_token_logprob), the advantages of rewards
 * (dsc_grpo_advantages), the GRPO loss and dL/dlogprobs (dsc_grpo_loss), dL/dlogits
 * (dsc_token_logprob_backward), the backward, then dsc_model_optimizer_step (clipping,
 * AdamW, the aux-loss-free bias update).
 *   rewards      [B] float32, finite, B a multiple of p->group_size (groups adjacent)
 *   old_logprobs [B, T] float32, optional (NULL: on-policy, rho = 1; give them, from
 *                dsc_model_token_logprobs at rollout time, for several steps per rollout)
 *   ref_logprobs [B, T] float32 (dsc_model_token_logprobs of the frozen reference model),
 *                required when p->beta > 0
 * Every completion (row) needs at least one target that is not ignore_index, and
 * opt->grad_accum must be 1. When every group is dropped nothing is updated (stats->step
 * unchanged, sequences 0). Rollouts are the caller's (dsc_model_generate), so any language
 * can drive RL with its own sampler and rewards. */
DSC_API dsc_status dsc_model_policy_step(dsc_model *model, const dsc_train_options *opt,
                                         const dsc_grpo_params *p, const DLTensor *tokens,
                                         const DLTensor *targets, const DLTensor *rewards,
                                         const DLTensor *old_logprobs,
                                         const DLTensor *ref_logprobs, dsc_policy_stats *stats);

typedef struct dsc_distill_params {
  size_t size;       /* sizeof(dsc_distill_params) */
  float temperature; /* tau > 0 of the soft targets: 1 */
  float alpha;       /* in [0, 1]: loss = alpha tau^2 KL + (1 - alpha) CE(targets); 0.5 */
} dsc_distill_params;
DSC_API void dsc_distill_params_default(dsc_distill_params *p);

typedef struct dsc_distill_stats {
  size_t size;          /* sizeof(dsc_distill_stats) */
  float loss;           /* alpha tau^2 kl + (1 - alpha) ce */
  float kl;             /* mean KL(teacher top-k || student) over the target positions */
  float ce;             /* mean cross-entropy of the targets (the hard labels) */
  float grad_norm;
  float load_imbalance;
  int64_t step;
  int64_t tokens;       /* positions with a target */
} dsc_distill_stats;

/* One logit-distillation step of a student: the training forward of tokens [B, T], at the
 * positions whose target is not ignore_index the mix of KL to the teacher's top-k logits
 * (dsc_topk_kl) and the hard-label cross-entropy, the backward, dsc_model_optimizer_step.
 *   teacher_indices [B, T, K] int32 in [0, V), teacher_logits [B, T, K] float32: the
 *   teacher's top-k per position (dsc_logits_topk of its logits for the same tokens; the
 *   teacher may have another config, with the same vocabulary). opt->grad_accum must be 1. */
DSC_API dsc_status dsc_model_distill_step(dsc_model *model, const dsc_train_options *opt,
                                          const dsc_distill_params *p, const DLTensor *tokens,
                                          const DLTensor *targets, const DLTensor *teacher_indices,
                                          const DLTensor *teacher_logits, dsc_distill_stats *stats);

/* Expert load of MoE layer `layer` summed over the last loss_and_grad / train_step:
 * counts[0..n_routed_experts) (host). DSC_ERR_INVALID_ARGUMENT for a dense layer. */
DSC_API dsc_status dsc_model_expert_load(const dsc_model *model, int32_t layer, int64_t *counts,
                                         int32_t n);
/* Bytes of the planned activation memory of the last training shape. */
DSC_API dsc_status dsc_model_activation_bytes(const dsc_model *model, size_t *bytes);

/* Inference-only FP8 ("frozen") model, the way DeepSeek ships V3: every block matrix --
 * attention projections, dense MLP, routed experts (one by one) and shared experts -- is
 * quantized once to E4M3 with one float32 scale per 128x128 block, and its float32 master is
 * freed (the arena is compacted to the rest: embedding, head, norms, router, correction
 * bias, MTP eh_proj, which V3 keeps in high precision). Gradients, optimizer state and
 * planned activations are freed too. The model then runs its block linears as FP8 GEMMs on
 * those codes (as an fp8 model generates) and serves:
 *   dsc_model_generate                      (bitwise what it gave before freezing, for an fp8
 *                                            model: the held codes are the same)
 *   dsc_model_save                          block matrices as float8_e4m3fn "<name>" plus
 *                                            float32 "<name>_scale_inv" [ceil(N/128),
 *                                            ceil(K/128)], config.json with DeepSeek-V3's
 *                                            quantization_config; dsc_model_load reads it back
 *                                            (dequantized), and freezing that gives the same
 *                                            codes and scales bit for bit
 *   dsc_model_tensor                        held matrices as float8_e4m3fn views (writes
 *                                            change the model), the rest float32
 *   dsc_model_tensor_scale                  a held matrix's block scales [Nb, Kb] float32
 *   dsc_model_forward                       logits by generation's prefill
 * The training paths (forward_mtp, routing, loss_and_grad, train_step, grad,
 * optimizer_state) answer DSC_ERR_INVALID_ARGUMENT. Freezing is one-way; a frozen model
 * is left as it is (DSC_OK). On failure (out of memory) the model is unchanged. */
DSC_API dsc_status dsc_model_freeze_fp8(dsc_model *model); /* float32-compute models only */
DSC_API int32_t dsc_model_is_frozen(const dsc_model *model);
DSC_API dsc_status dsc_model_tensor_scale(const dsc_model *model, int64_t index, DLTensor *view);
/* Bytes of weights the model holds on its device: the float32 arena plus, once frozen, the
 * E4M3 codes and block scales, plus a BF16-compute model's rounded copy (float32 values). */
DSC_API dsc_status dsc_model_weight_bytes(const dsc_model *model, size_t *bytes);

/* Checkpoints (Hugging Face layout): dir/config.json, dir/model.safetensors and, with
 * optimizer != 0 and step > 0, dir/optimizer.safetensors (step, exp_avg.*, exp_avg_sq.*)
 * (a frozen model, dsc_model_freeze_fp8: E4M3 block matrices with "<name>_scale_inv", no
 * optimizer file). dsc_model_save is the one writer of all three and replaces dir's
 * checkpoint as a whole: it writes a new generation into a sibling directory
 * (P/.B.tmp-<pid>-<rand> for dir = P/B), hard-links the files it does not own into it
 * (it owns config.json, every *.safetensors and model.safetensors.index.json; vocab.txt,
 * plots, README.md ... are kept), fsyncs, and swaps it in with renameat2(RENAME_EXCHANGE)
 * (where unsupported: two renames, the old generation kept aside as P/.B.old-* until the
 * new one is in place). After a kill at any instant dir loads as the complete old or the
 * complete new checkpoint, optimizer state included; a failed write (ENOSPC, EFBIG,
 * EACCES) is DSC_ERR_IO naming the file and the reason, the old checkpoint untouched and no
 * temporary file left. P/.B.lock (flock; created by the first save, kept) makes saves of one
 * dir run one at a time and a load wait for a save in progress; the next save or load of
 * dir recovers or removes what an interrupted save left. P must be writable and dir must
 * not be a mount point. Full protocol: the top of csrc/model/model_io.c.
 * dsc_model_load reads config.json and every *.safetensors shard (float32/bfloat16/float16
 * weights, or E4M3 + weight_scale_inv dequantized); missing tensors and wrong shapes or
 * dtypes are errors naming them, found from the headers before the model's memory is
 * allocated; what it does with tensors the model has no use for and with MTP modules the
 * file lacks: dsc_model_options (strict, init_missing_mtp). */
DSC_API dsc_status dsc_model_save(dsc_model *model, const char *dir, int32_t optimizer);
DSC_API dsc_status dsc_model_load(dsc_context *ctx, const char *dir, const dsc_model_options *opt,
                                  dsc_model **out);
/* What dsc_model_load let pass with a warning (also sent to the context's log callback at
 * DSC_LOG_WARN): MTP modules absent from the checkpoint, tensors skipped. index in
 * [0, dsc_model_num_load_warnings); the text lives as long as the model. */
DSC_API int64_t dsc_model_num_load_warnings(const dsc_model *model);
DSC_API const char *dsc_model_load_warning(const dsc_model *model, int64_t index);

/* ------------------------------------------------------------------ generation */
/* Autoregressive generation with the paged latent cache (dsc_mla_cache): one batched,
 * ragged prefill of all prompts, then decode steps for the sequences still alive. A
 * sequence stops after emitting eos_token_id (kept in its output), after max_new_tokens
 * tokens, or when the token callback asks; its cache blocks are freed at once.
 *
 * Sampling (per sequence, in this order): logits / temperature; top_k keeps the k most
 * likely tokens (ties: lower id first); top_p keeps the smallest set of most likely tokens
 * whose probability sums to >= top_p; then a draw from the renormalized distribution.
 * temperature 0 is greedy (argmax, ties to the lowest id; top_k/top_p ignored). Each
 * sequence draws from its own counter-based stream (seed, prompt index), so a sequence's
 * tokens do not depend on the other prompts of the call; same seed, same build, same
 * device -> same tokens.
 *
 * Speculative decoding with the MTP modules (speculative = 1, the model needs
 * num_nextn_predict_layers >= 1): after each main step the first MTP module drafts
 * num_draft tokens: draft 1 from the main model's last hidden state (after model.norm)
 * and the pending token, exactly as in training; drafts 2.. by chaining the same module
 * autoregressively (its normalized output as the next hidden state, its draft as the next
 * token, one position further). Deeper MTP modules (depth >= 1) are not used: their
 * inputs need tokens beyond the last verified one. The main model verifies the pending
 * token and all drafts in one multi-token decode call; the cache is truncated past the
 * first rejection (every layer) and the MTP layer's latents are recomputed from the main
 * model's hidden states for every kept position. Greedy: tokens identical to plain greedy
 * decoding. Sampling: a draft x is accepted with probability min(1, p(x)/q(x)) (p the main
 * model's, q the draft's sampling distribution, both after temperature/top_k/top_p); on a
 * rejection the token is drawn from normalize(max(0, p - q)), so the output follows the
 * main model's distribution. Drafts never go past max_new_tokens. */

/* eos_token_id value meaning "the model config's eos_token_id" (the default). */
#define DSC_GENERATE_EOS_FROM_CONFIG (-2)

typedef struct dsc_generate_options {
  size_t size;              /* sizeof(dsc_generate_options) */
  int32_t max_new_tokens;   /* >= 0, 16; prompt_len + max_new_tokens <= max_position_embeddings */
  float temperature;        /* >= 0, finite; 0 = greedy (default) */
  int32_t top_k;            /* >= 0; 0 = off */
  float top_p;              /* (0, 1]; 1 = off */
  uint64_t seed;            /* sampling seed, 0 */
  int32_t eos_token_id;     /* DSC_GENERATE_EOS_FROM_CONFIG (default), -1 none, or an id in [0, V) */
  int32_t speculative;      /* 0 none (default), 1 MTP drafts */
  int32_t num_draft;        /* drafts per step with speculative = 1: [1, 16], 1 */
  int32_t cache_dtype;      /* dsc_dtype of the latent cache: FLOAT32 (default) | BFLOAT16 |
                               FLOAT8_E4M3FN */
  int32_t block_size;       /* cache block, tokens; [1, 2^16], 64 */
  int32_t max_batch;        /* most prompts per call; 0 = n_prompts */
} dsc_generate_options;

DSC_API void dsc_generate_options_default(dsc_generate_options *o);

typedef struct dsc_generate_stats {
  size_t size;              /* sizeof(dsc_generate_stats), set by the caller */
  int64_t prompt_tokens;    /* sum of the prompt lengths */
  int64_t new_tokens;       /* tokens emitted, eos included */
  int64_t drafted;          /* draft tokens proposed (speculative) */
  int64_t accepted;         /* drafts accepted by verification (speculative) */
  int32_t main_forwards;    /* calls of the main model: the prefill + one per decode step */
  double seconds;           /* wall time of the call */
  double tokens_per_s;      /* new_tokens / seconds */
} dsc_generate_stats;

/* Called for every emitted token in order (seq = the prompt's index, token its id).
 * Return 0 to go on, a positive value to stop that sequence after this token (the token
 * is kept), a negative value to stop every sequence (each keeps what it has). Called on
 * the calling thread, between steps: it must not use the model. Plain decoding (no
 * speculation) keeps the decode loop on the device and hands tokens over once per chunk of
 * 16 steps, so the calls come in bursts (same order); what a stopped sequence produced
 * after its stop within the chunk is dropped. DSC_DEVICE_DECODE=0: one step at a time. */
typedef int32_t (*dsc_token_fn)(void *user, int32_t seq, int32_t token);

/* Generate up to max_new_tokens tokens after each prompt.
 *   o           options (NULL: dsc_generate_options_default)
 *   prompts     [n_prompts] host pointers to the prompts' token ids, in [0, V)
 *   prompt_lens [n_prompts] >= 1
 *   out_tokens  [n_prompts, max_new_tokens] host int32: the new tokens, -1 padded (may be
 *               NULL when max_new_tokens is 0)
 *   out_lens    [n_prompts] host: tokens written per prompt
 *   on_token    optional callback, user its argument
 *   stats       optional (stats->size = sizeof(dsc_generate_stats))
 * The model may live on CPU or CUDA. out_tokens and out_lens may not overlap each other,
 * the prompts, prompt_lens or the pointer array. Every argument is checked before any work:
 * DSC_ERR_INVALID_ARGUMENT names it, e.g. "dsc_model_generate: prompts[3]: expected ids in
 * [0, 512), got 600 at index 2". */
DSC_API dsc_status dsc_model_generate(dsc_model *model, const dsc_generate_options *o,
                                      int32_t n_prompts, const int32_t *const *prompts,
                                      const int32_t *prompt_lens, int32_t *out_tokens,
                                      int32_t *out_lens, dsc_token_fn on_token, void *user,
                                      dsc_generate_stats *stats);

/* ------------------------------------------------------------------ model calculator */
/* What a config costs, computed from the config alone (no model is built): parameters,
 * FLOPs per token, KV-cache bytes and memory per GPU -- the numbers DeepSeek-V3's headline
 * claims are made of. Legend: V vocab, D hidden, L num_hidden_layers, Dm MTP depths, H heads,
 * dn/dr/dv qk_nope/qk_rope/v head dims, dqk = dn + dr, Rq q_lora_rank, Rkv kv_lora_rank,
 * E routed experts, K num_experts_per_tok, F moe_intermediate_size, Fs = F * n_shared_experts,
 * I intermediate_size, S = options.context.
 *
 * Parameters are the tensors dsc_model_create builds, each counted once: params_total ==
 * dsc_model_num_parameters and n_tensors == dsc_model_num_tensors for the same config (the
 * MTP modules share the embedding and the head; their copies in DeepSeek's checkpoints are
 * counted only in checkpoint_*). "Activated per token" is what one token of the main model
 * uses, in DeepSeek's convention: the whole embedding and head (counted in params_embedding
 * / params_head too, so either can be taken out), every attention, norm and dense-FFN
 * tensor, and in an MoE layer the router, its correction bias, K routed experts and the
 * shared experts.
 *
 * FLOPs count matrix products only, 2 per multiply-add (norms, RoPE, SwiGLU, softmax and
 * the embedding lookup are O(D) per token and left out). Attention in training is causal
 * over a sequence of S tokens: a query attends to (S + 1) / 2 keys on average, scores over
 * dqk and values over dv per head (the decompressed form training runs). A decoded token
 * attends to S cached tokens the absorbed way (scores over Rkv + dr, values over Rkv, per
 * head); the absorption products cost what kv_b_proj costs, so the weight part of a decode
 * step equals the forward's. Training = 3 x forward (dgrad + wgrad = 2 x fprop).
 *
 * Memory per GPU is for a recipe (dsc_calc_recipe) and a parallel layout of tp * pp * dp
 * GPUs: non-expert tensors split tp ways, routed experts split ep ways (ep divides dp: the
 * expert-parallel group is carved out of the data-parallel replicas; each expert lives on
 * dp / ep of them), an average pipeline stage holding 1/pp of everything. zero1 shards the
 * FP32 masters and the moments over the replicas of each tensor (dp for non-expert tensors,
 * dp / ep for experts), as DeepSeek-V3 shards its high-precision state. Gradients are FP32
 * and not sharded (they accumulate micro-batches). Activations are an estimate: one
 * micro-batch of micro_batch_tokens tokens with every tensor a plain backward needs saved,
 * per block and token
 *   attention  2D + 2Rq (Rq > 0) + (Rkv + dr) + Rkv + 2 H dqk + 2 H dv + H
 *              (block input, normed input, c_Q raw and normed, kv_a output, normed c_KV,
 *               q and k, v and the attention output, a log-sum-exp per head)
 *   dense FFN  2D + 3I                      (residual, normed input, gate, up, SwiGLU)
 *   MoE FFN    2D + E + K (D + 3F) + 3Fs    (+ router scores, each routed copy's input,
 *                                            gate, up, SwiGLU; the shared experts')
 * plus 2D + V per token for the final norm and the logits, and per MTP depth 6D + its block
 * + 2D + V; in the recipe's activation dtype except the logits (always float32: the loss
 * is computed in FP32) and, for the FP8 recipe, the routed experts' inputs (E4M3 with a
 * float32 scale per 128 values, as V3 caches them); divided by tp and pp (one micro-batch
 * in flight; a 1F1B pipeline's first stage holds up to pp). */
typedef enum dsc_calc_recipe {
  DSC_CALC_RECIPE_FP32 = 0, /* weights, gradients, activations float32; the weights are the masters */
  DSC_CALC_RECIPE_BF16 = 1, /* bfloat16 weights and activations (correction bias float32), float32
                               masters and gradients */
  DSC_CALC_RECIPE_FP8 = 2,  /* DeepSeek-V3: every block linear E4M3 with a float32 scale per
                               128x128 block (per expert); embedding, head, norms, router and MTP
                               eh_proj bfloat16, correction bias float32; float32 masters and
                               gradients; bfloat16 activations, routed-expert inputs E4M3 */
} dsc_calc_recipe;

typedef struct dsc_calc_options {
  size_t size;                /* sizeof(dsc_calc_options) */
  int64_t context;            /* S: training sequence length / tokens in the cache at decode, >= 1; 4096 */
  int32_t recipe;             /* dsc_calc_recipe; FP8 */
  int32_t moments_dtype;      /* AdamW moments: DSC_DTYPE_FLOAT32 or DSC_DTYPE_BFLOAT16 (V3; default) */
  int32_t tensor_parallel;    /* tp >= 1, divides num_attention_heads; 1 */
  int32_t pipeline_parallel;  /* pp in [1, num_hidden_layers]; 1 */
  int32_t data_parallel;      /* dp >= 1; 1 */
  int32_t expert_parallel;    /* ep >= 1, divides dp and n_routed_experts (1 without experts); 1 */
  int32_t zero1;              /* 1: masters and moments sharded over replicas; 0 (default) */
  int64_t micro_batch_tokens; /* tokens of one micro-batch on a GPU, >= 1; 4096 */
  int32_t compare_kv_heads;   /* KV heads of the GQA comparison, a divisor of H; 0 = H (MHA) */
} dsc_calc_options;
DSC_API void dsc_calc_options_default(dsc_calc_options *o);

typedef struct dsc_calc_result {
  size_t size; /* sizeof(dsc_calc_result), set by the caller */
  /* parameters (scalars) */
  int64_t params_total;          /* == dsc_model_num_parameters */
  int64_t params_embedding;      /* V D */
  int64_t params_head;           /* V D; 0 with tie_word_embeddings (the embedding is the head) */
  int64_t params_main;           /* params_total - params_mtp */
  int64_t params_mtp;            /* the MTP modules' own tensors (eh_proj, norms, blocks), all depths */
  int64_t params_routed_experts; /* every routed expert of every MoE block (main and MTP) */
  int64_t params_active;         /* per token of the main model, embedding and head included */
  int64_t params_active_mtp;     /* per token of one MTP module, its own tensors (not emb/head) */
  int64_t n_tensors;             /* Hugging Face tensors (experts one by one) == dsc_model_num_tensors */
  /* FLOPs per token */
  double flops_fwd_weights;      /* main model forward: products with weights (head included) */
  double flops_fwd_attention;    /* main model forward: attention scores and values, causal over S */
  double flops_fwd_mtp;          /* every MTP depth's forward (its weights, the head, its attention) */
  double flops_train;            /* 3 (flops_fwd_weights + flops_fwd_attention + flops_fwd_mtp) */
  double flops_decode;           /* one decoded token over S cached tokens (absorbed MLA) */
  int64_t decode_macs_main;      /* multiply-adds with weights of one main decode step (flops_fwd_weights / 2) */
  int64_t decode_macs_mtp;       /* of the first MTP module drafting one token: 2D^2 + its block + V D */
  /* KV cache per token, all L main layers */
  int64_t kv_values_per_layer;   /* MLA: Rkv + dr */
  int64_t kv_bytes_mla_bf16;     /* 2 L (Rkv + dr) */
  int64_t kv_bytes_mla_fp8;      /* L (Rkv + 4 ceil(Rkv/128) + 2 dr): E4M3 latent, a float32 scale per
                                    128, bfloat16 rope key (dsc_mla_cache's and FlashMLA's layout) */
  int64_t kv_bytes_mha_bf16;     /* 2 L H (dqk + dv): keys and values of the same heads without MLA */
  int64_t kv_bytes_gqa_bf16;     /* 2 L compare_kv_heads (dqk + dv) */
  /* whole-model weights in the recipe's dtypes */
  int64_t weight_bytes;          /* every parameter once (the inference weights) */
  int64_t fp8_params;            /* parameters in block linears (E4M3 in the FP8 recipe) */
  int64_t fp8_scales;            /* their 128x128 block scales, per expert */
  int64_t checkpoint_bytes;      /* weight_bytes + each MTP depth's copies of embedding and head (as
                                    DeepSeek's checkpoints hold them, in the recipe's high precision) */
  int64_t checkpoint_tensors;    /* n_tensors + 2 Dm copies + a weight_scale_inv per E4M3 tensor (FP8) */
  /* memory per GPU, bytes */
  int32_t gpus;                  /* tp pp dp */
  double mem_weights;            /* the compute copy of the weights */
  double mem_master;             /* float32 masters (0 for FP32: the weights are the masters) */
  double mem_grads;              /* float32 gradients */
  double mem_optimizer;          /* the two AdamW moments */
  double mem_activations;        /* estimate, see above */
  double mem_total;              /* the sum */
} dsc_calc_result;

/* Fill *out (out->size set by the caller) for cfg (validated as dsc_model_config_validate
 * does) and opt (NULL: dsc_calc_options_default). A bad option is DSC_ERR_INVALID_ARGUMENT
 * naming it, e.g. "dsc_model_calc: opt->expert_parallel: expected a divisor of
 * data_parallel (128) and of n_routed_experts (256), got 3"; on error *out is unchanged. */
DSC_API dsc_status dsc_model_calc(const dsc_model_config *cfg, const dsc_calc_options *opt,
                                  dsc_calc_result *out);

#ifdef __cplusplus
}
#endif
#endif /* DEEPSEEK_C_H_ */
