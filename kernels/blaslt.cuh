/*
 * kernels/blaslt.cuh -- the cuBLASLt layer shared by gemm.cu and fp8_gemm.cu: the
 * context's handle and its plan cache (blaslt_host.h: up to DSC_LT_SLOTS problems, LRU),
 * so a repeated problem creates no descriptor and queries no heuristic.
 *
 * A problem (DscLtProblem, blaslt_host.h) is given as cuBLASLt sees it (column-major).
 * Scale modes (FP8 block scaling) are -1 when unused; their device pointers are set on the
 * cached descriptor at each call.
 */
#ifndef DSC_KERNELS_BLASLT_CUH_
#define DSC_KERNELS_BLASLT_CUH_

#include <cublasLt.h>

#include "blaslt_host.h"
#include "common.cuh"

/* The context's cuBLASLt handle, created on first use. */
dsc_status dsc_lt_handle(dsc_context *ctx, const char *fn, cublasLtHandle_t *h);

/* D = alpha op(A) op(B) + beta C through the cached plan of pr (created on the first use
 * of this problem). alpha, beta: host floats. scale_a / scale_b: device scale arrays
 * (when the mode is not -1). *done = false (DSC_OK, nothing launched) when cuBLASLt has
 * no algorithm for it (remembered: the next call answers at once). */
dsc_status dsc_lt_matmul(dsc_context *ctx, const char *fn, const DscLtProblem &pr,
                         const float *alpha, const void *A, const void *B, const float *beta,
                         void *C, const void *scale_a, const void *scale_b, void *ws,
                         bool *done);

#endif /* DSC_KERNELS_BLASLT_CUH_ */
