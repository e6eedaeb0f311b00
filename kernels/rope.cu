/*
 * kernels/rope.cu -- rotary position embedding (RoPE, optionally YaRN-scaled) on the GPU;
 * the twin of csrc/cpu/rope.c.
 *
 * Legend: B batch, T tokens, H heads (1 for a [B,T,D] input), D rotary dims (even,
 *         <= 512), i pair index in [0, D/2), BT = B*T tokens, T_ storage type.
 *
 *   angle_i = (float)pos[b,t] * inv_freq[i]          (a float32 multiply)
 *   c_i = cosf(angle_i) * cs_scale,  s_i = sign * (sinf(angle_i) * cs_scale)
 *         (sign = -1 for the inverse rotation, the backward)
 *   pair (a, b) -> (a*c - b*s, a*s + b*c)
 *   layout DSC_ROPE_INTERLEAVED (0): pair i is (x[2i], x[2i+1])
 *   layout DSC_ROPE_HALF        (1): pair i is (x[i], x[i + D/2])
 *
 * inv_freq is a host array: it travels to the kernel by value, inside the launch
 * parameters (1 KiB), so no copy is queued. One thread owns pair i of one token for a
 * chunk of ROPE_HCHUNK heads: sincosf (the accurate one, which also takes the slow path
 * for large YaRN angles) is computed once per chunk instead of once per head; adjacent
 * threads take adjacent pairs, so every head's row is read coalesced. A thread reads
 * both elements of a pair before writing either, and pairs are disjoint: y may alias x.
 */
#include "common.cuh"

#define ROPE_MAX_HALF 256 /* D <= 512, guaranteed by the ops layer */
#define ROPE_HCHUNK 8     /* heads per thread */

struct RopeFreq {
  float v[ROPE_MAX_HALF]; /* [D/2] inv_freq, the rest unused */
};

template <typename T, int LAYOUT>
__global__ void rope_kernel(int64_t BT, int64_t H, int64_t D, int64_t nhc, const T *x /* [BT,H,D] */,
                            const int32_t *__restrict__ pos /* [BT] */, const RopeFreq freq,
                            float cs_scale, float sign, T *y /* [BT,H,D], may alias x */) {
  const int64_t half = D / 2;
  const int64_t total = BT * nhc * half;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += stride) {
    const int64_t i = idx % half;    /* pair */
    const int64_t rest = idx / half;
    const int64_t hc = rest % nhc;   /* head chunk */
    const int64_t bt = rest / nhc;   /* token */
    const float angle = (float)pos[bt] * freq.v[i];
    float sn, cs;
    sincosf(angle, &sn, &cs);
    cs = cs * cs_scale;
    sn = sign * (sn * cs_scale);
    /* ia, ib: the two elements of pair i in this layout. */
    const int64_t ia = LAYOUT == 1 ? i : 2 * i;
    const int64_t ib = LAYOUT == 1 ? i + half : 2 * i + 1;
    const int64_t h0 = hc * ROPE_HCHUNK;
    const int64_t h1 = h0 + ROPE_HCHUNK < H ? h0 + ROPE_HCHUNK : H;
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t off = (bt * H + h) * D; /* element offset of row (b,t,h) */
      const float a = dsc_ld(x, off + ia), b = dsc_ld(x, off + ib);
      dsc_st(y, off + ia, a * cs - b * sn);
      dsc_st(y, off + ib, a * sn + b * cs);
    }
  }
}

template <typename T>
static dsc_status launch_rope(dsc_context *ctx, const char *fn, int layout, int64_t BT, int64_t H,
                              int64_t D, const void *x, const int32_t *pos, const RopeFreq &freq,
                              float cs_scale, float sign, void *y) {
  const int64_t nhc = (H + ROPE_HCHUNK - 1) / ROPE_HCHUNK;
  const int64_t total = BT * nhc * (D / 2);
  const int threads = 256;
  const unsigned blocks = dsc_cuda_blocks(total, threads, 65536);
  cudaStream_t s = dsc_cuda_stream(ctx);
  if (layout == DSC_ROPE_HALF)
    rope_kernel<T, 1><<<blocks, threads, 0, s>>>(BT, H, D, nhc, (const T *)x, pos, freq,
                                                 cs_scale, sign, (T *)y);
  else
    rope_kernel<T, 0><<<blocks, threads, 0, s>>>(BT, H, D, nhc, (const T *)x, pos, freq,
                                                 cs_scale, sign, (T *)y);
  DSC_CUDA_CHECK_LAUNCH(fn);
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_rope(dsc_context *ctx, dsc_dtype dt, int layout, int64_t B,
                                    int64_t T, int64_t H, int64_t D,
                                    const void *x /* [B,T,H,D] dt */,
                                    const int32_t *pos /* [B,T] */,
                                    const float *inv_freq /* [D/2] host */, float cs_scale,
                                    int inverse, void *y /* [B,T,H,D] dt, may alias x */) {
  static const char *const FN = "dsc_cuda_rope";
  const int64_t half = D / 2;
  if (half > ROPE_MAX_HALF)
    return dsc_error(DSC_ERR_INTERNAL, FN, "D: expected <= %d, got %lld", 2 * ROPE_MAX_HALF,
                     (long long)D);
  if (B <= 0 || T <= 0 || H <= 0 || half <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  RopeFreq freq;
  for (int64_t i = 0; i < ROPE_MAX_HALF; ++i) freq.v[i] = i < half ? inv_freq[i] : 0.0f;
  const float sign = inverse ? -1.0f : 1.0f;
  if (dt == DSC_DTYPE_BFLOAT16)
    return launch_rope<__nv_bfloat16>(ctx, FN, layout, B * T, H, D, x, pos, freq, cs_scale, sign,
                                      y);
  return launch_rope<float>(ctx, FN, layout, B * T, H, D, x, pos, freq, cs_scale, sign, y);
}
