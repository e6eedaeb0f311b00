/*
 * backend.h -- the contract between csrc/ops (validation + dispatch) and the two
 * compute backends: csrc/cpu/<family>.c (dsc_cpu_*) and kernels/<family>.cu
 * (dsc_cuda_*, compiled only when DSC_WITH_CUDA is defined).
 *
 * Backends never validate user input: the ops layer has checked shapes, dtypes,
 * devices and contiguity before calling. Pointers are to the first element and
 * are on the context's device. They return DSC_OK, or a status with a message
 * recorded through dsc_error() for failures of their own (out of memory, CUDA).
 * A CPU function and its CUDA twin have the same signature.
 *
 * Dimension legend: N rows, D features, B batch, T tokens, H heads, V vocabulary,
 * M/N/K GEMM dims, n element counts. `dt` is the dtype of the float tensors
 * (DSC_DTYPE_FLOAT32 or DSC_DTYPE_BFLOAT16); index tensors are int32 or int64
 * (`ids64` = 1 for int64).
 */
#ifndef DSC_BACKEND_H_
#define DSC_BACKEND_H_

#include "internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The per-family functions, listed once for both backends. */
#define DSC_BACKEND_DECLS(P)                                                                     \
  /* Find the first index outside [lo, hi) that is not `skip` (pass lo: it is in range).  \
   * *bad_pos = -1 when all are fine, else its position and *bad_value its value. */        \
  dsc_status P##index_range(dsc_context *ctx, int64_t n, int ids64, const void *ids /*[n]*/,    \
                            int64_t lo, int64_t hi, int64_t skip, int64_t *bad_pos,            \
                            int64_t *bad_value);                                               \
  /* RMSNorm over rows. rstd may be NULL. */                                                   \
  dsc_status P##rms_norm_fwd(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t D,              \
                             const void *x /*[N,D]*/, const void *w /*[D]*/, float eps,        \
                             void *y /*[N,D]*/, float *rstd /*[N] or NULL*/);                  \
  /* rstd may be NULL (then recomputed from x with eps). dw is overwritten. */                \
  dsc_status P##rms_norm_bwd(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t D,              \
                             const void *dy /*[N,D]*/, const void *x /*[N,D]*/,               \
                             const void *w /*[D]*/, const float *rstd /*[N] or NULL*/,         \
                             float eps, void *dx /*[N,D]*/, float *dw /*[D]*/);                \
  /* RoPE on x [B,T,H,D] with positions [B,T]; inv_freq [D/2] is a HOST array; cos and     \
   * sin are multiplied by cs_scale; inverse = 1 rotates by -angle (the backward). */       \
  dsc_status P##rope(dsc_context *ctx, dsc_dtype dt, int layout, int64_t B, int64_t T,         \
                     int64_t H, int64_t D, const void *x, const int32_t *pos,                  \
                     const float *inv_freq, float cs_scale, int inverse, void *y);             \
  /* Row-major C[M,N] = alpha*op(A)@op(B) + beta*C over `batch` matrices, FP32 accumulate.    \
   * lda/ldb/ldc are row strides; sA/sB/sC the batch strides (sB = 0: B shared). */         \
  dsc_status P##gemm(dsc_context *ctx, dsc_dtype dt, int trans_a, int trans_b, int64_t M,      \
                     int64_t N, int64_t K, float alpha, const void *A, int64_t lda,            \
                     const void *B, int64_t ldb, float beta, void *C, int64_t ldc,             \
                     int64_t batch, int64_t sA, int64_t sB, int64_t sC);                       \
  /* Like gemm with batch 1, but C is float32 while A and B are dt (weight grads). */       \
  dsc_status P##gemm_f32out(dsc_context *ctx, dsc_dtype dt, int trans_a, int trans_b,          \
                            int64_t M, int64_t N, int64_t K, float alpha, const void *A,       \
                            int64_t lda, const void *B, int64_t ldb, float beta, float *C,     \
                            int64_t ldc);                                                      \
  dsc_status P##swiglu_fwd(dsc_context *ctx, dsc_dtype dt, int64_t n, const void *gate,        \
                           const void *up, void *out);                                         \
  dsc_status P##swiglu_bwd(dsc_context *ctx, dsc_dtype dt, int64_t n, const void *dout,        \
                           const void *gate, const void *up, void *dgate, void *dup);          \
  /* out[i,:] = table[ids[i],:]; ids already range-checked. */                               \
  dsc_status P##embedding_fwd(dsc_context *ctx, dsc_dtype dt, int64_t n, int ids64,            \
                              const void *ids /*[n]*/, int64_t V, int64_t D,                   \
                              const void *table /*[V,D]*/, void *out /*[n,D]*/);               \
  /* dtable = 0, then dtable[ids[i],:] += dout[i,:]. */                                      \
  dsc_status P##embedding_bwd(dsc_context *ctx, dsc_dtype dt, int64_t n, int ids64,            \
                              const void *ids /*[n]*/, int64_t V, int64_t D,                   \
                              const void *dout /*[n,D]*/, float *dtable /*[V,D]*/);            \
  /* Targets already range-checked. loss: one float32 on the device. dlogits, lse may be     \
   * NULL; dlogits may alias logits. */                                                       \
  dsc_status P##cross_entropy(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t V,            \
                              const void *logits /*[N,V]*/, int tgt64,                         \
                              const void *targets /*[N]*/, int64_t ignore_index,               \
                              float grad_scale, float *loss /*[1]*/,                           \
                              void *dlogits /*[N,V]*/, float *lse /*[N]*/);                    \
  /* *sumsq (host) = sum of g^2 in float64, in a fixed order. */                              \
  dsc_status P##sumsq(dsc_context *ctx, int64_t n, const float *g, double *sumsq);             \
  /* One AdamW update of n elements. mom_dt (FLOAT32|BFLOAT16) is the dtype of m and v.   \
   * g is multiplied by gscale first; bc1 = 1-beta1^t, bc2 = 1-beta2^t. */                   \
  dsc_status P##adamw(dsc_context *ctx, int64_t n, float *p, const float *g, dsc_dtype mom_dt, \
                      void *m, void *v, float lr, float beta1, float beta2, float eps,         \
                      float weight_decay, float bc1, float bc2, float gscale);

DSC_BACKEND_DECLS(dsc_cpu_)

#ifdef DSC_WITH_CUDA
DSC_BACKEND_DECLS(dsc_cuda_)

/* CUDA context plumbing (kernels/context.cu). */
dsc_status dsc_cuda_context_init(dsc_context *ctx);  /* sets ctx->cuda */
void dsc_cuda_context_release(dsc_context *ctx);
dsc_status dsc_cuda_malloc(dsc_context *ctx, size_t bytes, void **ptr);
void dsc_cuda_free(dsc_context *ctx, void *ptr);
/* kind: 0 host->device, 1 device->host, 2 device->device, 3 host->host */
dsc_status dsc_cuda_memcpy(dsc_context *ctx, void *dst, const void *src, size_t bytes, int kind);
dsc_status dsc_cuda_synchronize(dsc_context *ctx);
dsc_status dsc_cuda_get_device_count(int32_t *count);
dsc_status dsc_cuda_get_device_name(int32_t index, char *name, size_t n, int32_t *major,
                                    int32_t *minor);
const char *dsc_cuda_build_version(void);
#endif

#ifdef __cplusplus
}
#endif
#endif /* DSC_BACKEND_H_ */
