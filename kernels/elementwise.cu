/*
 * kernels/elementwise.cu -- elementwise arithmetic on the GPU; the CPU reference is
 * csrc/cpu/elementwise.c.
 *
 * Legend: n elements (flattened); T storage type (float or __nv_bfloat16).
 *   add: out = a + b in float32, rounded once to T (bit-identical to the CPU: one
 *   IEEE add, no fusion possible).
 *   scale_f32: x *= alpha (one IEEE multiply, as the CPU).
 *   round_bf16_f32: dst = float(bf16_rne(src)) by numeric.h's dsc_f32_to_bf16 (the CPU's bits).
 *   copy2d: cudaMemcpy2DAsync of rows with pitches.
 */
#include "common.cuh"
#include "numeric.h"

namespace {

template <typename T>
__global__ void add_kernel(int64_t n, const T *__restrict__ a /* [n] */,
                           const T *__restrict__ b /* [n] */, T *out /* [n], may alias */) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    dsc_st(out, i, __fadd_rn(dsc_ld(a, i), dsc_ld(b, i)));
  }
}

__global__ void scale_kernel(int64_t n, float *x /* [n] */, float alpha) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    x[i] = __fmul_rn(x[i], alpha);
  }
}

__global__ void round_bf16_kernel(int64_t n, const float *src /* [n] */, float *dst /* [n], may alias */) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    dst[i] = dsc_bf16_to_f32(dsc_f32_to_bf16(src[i]));
  }
}

}  // namespace

extern "C" dsc_status dsc_cuda_add(dsc_context *ctx, dsc_dtype dt, int64_t n, const void *a,
                                   const void *b, void *out) {
  static const char *const FN = "dsc_add";
  DSC_CUDA_ENTER(ctx, FN);
  if (n == 0) return DSC_OK;
  const int threads = 256;
  const unsigned blocks = dsc_cuda_blocks(n, threads);
  cudaStream_t s = dsc_cuda_stream(ctx);
  if (dt == DSC_DTYPE_BFLOAT16) {
    add_kernel<__nv_bfloat16><<<blocks, threads, 0, s>>>(n, (const __nv_bfloat16 *)a,
                                                         (const __nv_bfloat16 *)b, (__nv_bfloat16 *)out);
  } else {
    add_kernel<float><<<blocks, threads, 0, s>>>(n, (const float *)a, (const float *)b, (float *)out);
  }
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_scale_f32(dsc_context *ctx, int64_t n, float *x, float alpha) {
  static const char *const FN = "dsc_scale";
  DSC_CUDA_ENTER(ctx, FN);
  if (n == 0) return DSC_OK;
  const int threads = 256;
  scale_kernel<<<dsc_cuda_blocks(n, threads), threads, 0, dsc_cuda_stream(ctx)>>>(n, x, alpha);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_round_bf16_f32(dsc_context *ctx, int64_t n, const float *src, float *dst) {
  static const char *const FN = "dsc_round_bf16";
  DSC_CUDA_ENTER(ctx, FN);
  if (n == 0) return DSC_OK;
  const int threads = 256;
  round_bf16_kernel<<<dsc_cuda_blocks(n, threads), threads, 0, dsc_cuda_stream(ctx)>>>(n, src, dst);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_zero(dsc_context *ctx, size_t bytes, void *dst) {
  static const char *const FN = "dsc_cuda_zero";
  if (bytes == 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  DSC_CUDA_TRY(cudaMemsetAsync(dst, 0, bytes, dsc_cuda_stream(ctx)), FN);
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_copy2d(dsc_context *ctx, int64_t rows, size_t row_bytes,
                                      const void *src, size_t src_pitch, void *dst,
                                      size_t dst_pitch) {
  static const char *const FN = "dsc_copy2d";
  DSC_CUDA_ENTER(ctx, FN);
  if (rows == 0 || row_bytes == 0) return DSC_OK;
  DSC_CUDA_TRY(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, row_bytes, (size_t)rows,
                                 cudaMemcpyDeviceToDevice, dsc_cuda_stream(ctx)),
               FN);
  return DSC_OK;
}
