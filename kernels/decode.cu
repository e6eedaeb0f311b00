/*
 * kernels/decode.cu -- the small per-step ops of generation's device-resident decode loop
 * on the GPU; twins of csrc/cpu/decode.c, the same row code (core/decode_step.h). One
 * thread per row: B is the batch (tens to hundreds), so one small block does it.
 */
#include "common.cuh"
#include "decode_step.h"

__global__ void dc_plan_kernel(int64_t n, const int32_t *__restrict__ pos, const int64_t *__restrict__ slot,
                               const int32_t *__restrict__ tables, int64_t max_blk, int64_t bs,
                               int64_t *__restrict__ meta /* [3n] */) {
  for (int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; r < n; r += (int64_t)gridDim.x * blockDim.x)
    dsc_decode_plan_row(r, n, pos, slot, tables, max_blk, bs, meta);
}

__global__ void dc_advance_kernel(int64_t B, int32_t max_new, int32_t eos, const int32_t *__restrict__ tok,
                                  int32_t *__restrict__ ids, int32_t *__restrict__ pos,
                                  int32_t *__restrict__ state, int32_t *__restrict__ out) {
  for (int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; b < B; b += (int64_t)gridDim.x * blockDim.x)
    dsc_decode_advance_row(b, B, max_new, eos, tok, ids, pos, state, out);
}

extern "C" dsc_status dsc_cuda_decode_plan(dsc_context *ctx, int64_t n, const int32_t *pos, const int64_t *slot,
                                           const int32_t *tables, int64_t max_blk, int64_t block_size,
                                           int64_t *meta) {
  static const char *const FN = "dsc_cuda_decode_plan";
  DSC_CUDA_ENTER(ctx, FN);
  if (n <= 0) return DSC_OK;
  dc_plan_kernel<<<dsc_cuda_blocks(n, 128), 128, 0, dsc_cuda_stream(ctx)>>>(n, pos, slot, tables, max_blk,
                                                                           block_size, meta);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_decode_advance(dsc_context *ctx, int64_t B, int32_t max_new, int32_t eos,
                                              const int32_t *tok, int32_t *ids, int32_t *pos, int32_t *state,
                                              int32_t *out) {
  static const char *const FN = "dsc_cuda_decode_advance";
  DSC_CUDA_ENTER(ctx, FN);
  if (B <= 0) return DSC_OK;
  dc_advance_kernel<<<dsc_cuda_blocks(B, 128), 128, 0, dsc_cuda_stream(ctx)>>>(B, max_new, eos, tok, ids, pos,
                                                                              state, out);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}
