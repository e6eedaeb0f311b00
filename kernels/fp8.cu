/*
 * kernels/fp8.cu -- FP8 conversions on the GPU: cast, fused block quantization,
 * dequantization, transpose and quantization statistics; the twin of csrc/cpu/fp8.c
 * (the GEMMs are in fp8_gemm.cu).
 *
 * Legend: n element counts; x [M,K] the float32|bfloat16 input (M rows, K inner dim);
 * q [R,C] the fp8 bytes ([M,K], or [K,M] = x^T with transpose); br x bc the block shape
 * of the scales (1x128 activation tiles, 128x128 weight blocks; any br, bc >= 1 work);
 * Rb = ceil(R/br), Cb = ceil(C/bc); scale [Rb,Cb] float32 multipliers (x ~= q * s).
 *
 * Bit-exactness: every conversion is the bit-manipulation algorithm of
 * csrc/core/fp8_format.h (float32 -> fp8: RNE on the exact value, finite overflow
 * saturates, NaN -> NaN|sign, inf -> NaN (E4M3) / inf (E5M2); fp8 -> float32 exact) and
 * of numeric.h for float32 -> bfloat16, rewritten as __device__ functions (that header
 * is host-only). CUDA's __nv_cvt_float_to_fp8 is not used: its NaN codes and its
 * handling of inf under __NV_SATFINITE (inf -> max finite) differ from the CPU.
 * Scales: s = max(amax, amax_floor) / fp8_max in IEEE float32 (nvcc's default
 * -prec-div=true; no fast math), rounded up to a power of two by exponent bits with
 * pow2; q = enc(x / s). amax is over the block's finite |x| (NaN/inf skipped).
 *
 * Reductions are max (order-independent) and integer counts (integer atomics are
 * exact), so every result is deterministic.
 */
#include <string.h>

#include "common.cuh"
#include "fp8_format.h"

#define FP8_E4M3_MAX 448.0f
#define FP8_E5M2_MAX 57344.0f

/* ---- scalar conversions ------------------------------------------------------------ */

/* The scalar conversions are fp8_format.h / numeric.h themselves (host + device under
 * nvcc), so casts and quantization are bit-identical to the CPU by construction. */

/* e5 = 1: float8_e5m2, else float8_e4m3fn. */
__device__ __forceinline__ uint8_t fp8_enc(float f, int e5) {
  return e5 ? dsc_f32_to_e5m2(f) : dsc_f32_to_e4m3(f);
}

__device__ __forceinline__ float fp8_dec(uint8_t c, int e5) {
  return e5 ? dsc_e5m2_to_f32(c) : dsc_e4m3_to_f32(c);
}

/* dsc_f32_to_bf16 (numeric.h) as a CUDA bfloat16. */
__device__ __forceinline__ __nv_bfloat16 f32_to_bf16_cpu(float f) {
  return __ushort_as_bfloat16(dsc_f32_to_bf16(f));
}

__device__ __forceinline__ void st_out(float *p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st_out(__nv_bfloat16 *p, int64_t i, float v) {
  p[i] = f32_to_bf16_cpu(v);
}

/* dsc_fp8_e4m3_clips / dsc_fp8_e5m2_clips. */
__device__ __forceinline__ bool fp8_clips(float ay, int e5) {
  return e5 ? ay >= 61440.0f : ay > 464.0f;
}

/* The block scale from the block's finite amax, as block_scale() in csrc/cpu/fp8.c:
 * max(amax, floor) / fp8_max, then (pow2) rounded up to a power of two by bumping the
 * exponent when a mantissa bit is set (a subnormal s becomes 2^-126). */
__device__ __forceinline__ float fp8_block_scale(float amax, float amax_floor, float fmax,
                                                 int pow2) {
  float s = (amax > amax_floor ? amax : amax_floor) / fmax;
  if (pow2) {
    uint32_t u = __float_as_uint(s);
    if (u & 0x007fffffu) u = (u & 0xff800000u) + 0x00800000u;
    s = __uint_as_float(u);
  }
  return s;
}

static inline bool is_e5(dsc_dtype t) { return t == DSC_DTYPE_FLOAT8_E5M2; }
static inline bool is_fp8(dsc_dtype t) {
  return t == DSC_DTYPE_FLOAT8_E4M3FN || t == DSC_DTYPE_FLOAT8_E5M2;
}

/* ---- cast ----------------------------------------------------------------------------- */

/* float (TI) -> fp8. */
template <typename TI>
__global__ void cast_to_fp8_kernel(int64_t n, const TI *__restrict__ src /*[n]*/, int e5,
                                   uint8_t *__restrict__ dst /*[n]*/) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] = fp8_enc(dsc_ld(src, i), e5);
}

/* fp8 -> float (TO); the decoded value is exact in float32 and in bfloat16. */
template <typename TO>
__global__ void cast_from_fp8_kernel(int64_t n, const uint8_t *__restrict__ src /*[n]*/, int e5,
                                     TO *__restrict__ dst /*[n]*/) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    st_out(dst, i, fp8_dec(src[i], e5));
}

/* fp8 -> fp8 (through the exact float32 value). */
__global__ void cast_fp8_fp8_kernel(int64_t n, const uint8_t *__restrict__ src, int se5,
                                    uint8_t *__restrict__ dst, int de5) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] = fp8_enc(fp8_dec(src[i], se5), de5);
}

extern "C" dsc_status dsc_cuda_fp8_cast(dsc_context *ctx, int64_t n, dsc_dtype src_dt,
                                        const void *src /*[n]*/, dsc_dtype dst_dt,
                                        void *dst /*[n]*/) {
  static const char *const FN = "dsc_cuda_fp8_cast";
  if (n <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  cudaStream_t s = dsc_cuda_stream(ctx);
  const unsigned blocks = dsc_cuda_blocks(n, 256);
  if (is_fp8(dst_dt) && is_fp8(src_dt)) {
    cast_fp8_fp8_kernel<<<blocks, 256, 0, s>>>(n, (const uint8_t *)src, is_e5(src_dt),
                                               (uint8_t *)dst, is_e5(dst_dt));
  } else if (is_fp8(dst_dt)) {
    if (src_dt == DSC_DTYPE_BFLOAT16)
      cast_to_fp8_kernel<<<blocks, 256, 0, s>>>(n, (const __nv_bfloat16 *)src, is_e5(dst_dt),
                                                (uint8_t *)dst);
    else
      cast_to_fp8_kernel<<<blocks, 256, 0, s>>>(n, (const float *)src, is_e5(dst_dt),
                                                (uint8_t *)dst);
  } else {
    if (dst_dt == DSC_DTYPE_BFLOAT16)
      cast_from_fp8_kernel<<<blocks, 256, 0, s>>>(n, (const uint8_t *)src, is_e5(src_dt),
                                                  (__nv_bfloat16 *)dst);
    else
      cast_from_fp8_kernel<<<blocks, 256, 0, s>>>(n, (const uint8_t *)src, is_e5(src_dt),
                                                  (float *)dst);
  }
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

/* ---- block quantization ----------------------------------------------------------------- */

/* Where element (r, c) of q [R,C] lives in x [M,K]: x[r,c], or x[c,r] with transpose. */
__device__ __forceinline__ int64_t q_to_x(int64_t r, int64_t c, int64_t C, int64_t R, int tr) {
  return tr ? c * R + r : r * C + c;
}

struct QuantArgs {
  int64_t R, C;       /* shape of q */
  int64_t br, bc;     /* block shape */
  int64_t Rb, Cb;     /* ceil(R/br), ceil(C/bc) */
  int transpose;      /* q = x^T */
  int pow2, e5;
  float amax_floor, fmax;
};

/* Rows of one block (br == 1): one warp per block tile, grid-stride over the Rb*Cb
 * tiles. Lanes walk the tile's columns (coalesced without transpose); warp max, then
 * every lane quantizes its own elements with the same scale. */
template <typename TX>
__global__ void quant_rows_kernel(QuantArgs p, const TX *__restrict__ x /*[M,K]*/,
                                  uint8_t *__restrict__ q /*[R,C]*/,
                                  float *__restrict__ scale /*[Rb,Cb]*/) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
  const int64_t tiles = p.Rb * p.Cb;
  for (int64_t t = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); t < tiles;
       t += warps) {
    const int64_t r = t / p.Cb, cb = t % p.Cb;
    const int64_t c0 = cb * p.bc;
    const int64_t c1 = c0 + p.bc < p.C ? c0 + p.bc : p.C;
    float amax = 0.0f;
    for (int64_t c = c0 + lane; c < c1; c += 32) {
      const float a = fabsf(dsc_ld(x, q_to_x(r, c, p.C, p.R, p.transpose)));
      if (a <= 3.402823466e38f && a > amax) amax = a; /* finite only (NaN fails <=) */
    }
    amax = dsc_warp_reduce(amax, DscMax());
    const float s = fp8_block_scale(amax, p.amax_floor, p.fmax, p.pow2);
    if (lane == 0) scale[t] = s;
    for (int64_t c = c0 + lane; c < c1; c += 32)
      q[r * p.C + c] = fp8_enc(dsc_ld(x, q_to_x(r, c, p.C, p.R, p.transpose)) / s, p.e5);
  }
}

/* General blocks (br > 1, e.g. 128x128): one CTA per block tile, grid-stride; pass 1
 * block max over the tile, pass 2 quantizes (re-reading x, which is L2-resident). The
 * element order puts consecutive threads on consecutive bytes of x (reads coalesced). */
template <typename TX>
__global__ void __launch_bounds__(256)
    quant_blocks_kernel(QuantArgs p, const TX *__restrict__ x /*[M,K]*/,
                        uint8_t *__restrict__ q /*[R,C]*/, float *__restrict__ scale /*[Rb,Cb]*/) {
  __shared__ float red[32];
  const int64_t tiles = p.Rb * p.Cb;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int64_t rb = t / p.Cb, cb = t % p.Cb;
    const int64_t r0 = rb * p.br, c0 = cb * p.bc;
    const int64_t nr = (r0 + p.br < p.R ? r0 + p.br : p.R) - r0;
    const int64_t nc = (c0 + p.bc < p.C ? c0 + p.bc : p.C) - c0;
    const int64_t ne = nr * nc;
    /* element e -> (r, c): with transpose r (= a column of x) runs fastest */
    float amax = 0.0f;
    for (int64_t e = threadIdx.x; e < ne; e += blockDim.x) {
      const int64_t r = r0 + (p.transpose ? e % nr : e / nc);
      const int64_t c = c0 + (p.transpose ? e / nr : e % nc);
      const float a = fabsf(dsc_ld(x, q_to_x(r, c, p.C, p.R, p.transpose)));
      if (a <= 3.402823466e38f && a > amax) amax = a;
    }
    amax = dsc_block_max(amax, red);
    const float s = fp8_block_scale(amax, p.amax_floor, p.fmax, p.pow2);
    if (threadIdx.x == 0) scale[t] = s;
    for (int64_t e = threadIdx.x; e < ne; e += blockDim.x) {
      const int64_t r = r0 + (p.transpose ? e % nr : e / nc);
      const int64_t c = c0 + (p.transpose ? e / nr : e % nc);
      q[r * p.C + c] = fp8_enc(dsc_ld(x, q_to_x(r, c, p.C, p.R, p.transpose)) / s, p.e5);
    }
  }
}

template <typename TX>
static dsc_status launch_quant(dsc_context *ctx, const char *fn, const QuantArgs &p,
                               const void *x, uint8_t *q, float *scale) {
  cudaStream_t s = dsc_cuda_stream(ctx);
  const int64_t tiles = p.Rb * p.Cb;
  if (p.br == 1) {
    quant_rows_kernel<TX><<<dsc_cuda_blocks(tiles, 8, 65535), 256, 0, s>>>(p, (const TX *)x, q,
                                                                          scale);
  } else {
    quant_blocks_kernel<TX><<<dsc_cuda_blocks(tiles, 1, 65535), 256, 0, s>>>(p, (const TX *)x, q,
                                                                            scale);
  }
  DSC_CUDA_CHECK_LAUNCH(fn);
  return DSC_OK;
}

static QuantArgs make_quant_args(int64_t M, int64_t K, int64_t br, int64_t bc, int transpose,
                                 int pow2, float amax_floor, dsc_dtype ft) {
  QuantArgs p;
  p.R = transpose ? K : M;
  p.C = transpose ? M : K;
  p.br = br;
  p.bc = bc;
  p.Rb = (p.R + br - 1) / br;
  p.Cb = (p.C + bc - 1) / bc;
  p.transpose = transpose ? 1 : 0;
  p.pow2 = pow2 ? 1 : 0;
  p.e5 = is_e5(ft) ? 1 : 0;
  p.amax_floor = amax_floor;
  p.fmax = p.e5 ? FP8_E5M2_MAX : FP8_E4M3_MAX;
  return p;
}

extern "C" dsc_status dsc_cuda_fp8_quantize(dsc_context *ctx, dsc_dtype xt, int64_t M, int64_t K,
                                            int64_t br, int64_t bc, int transpose, int pow2,
                                            float amax_floor, dsc_dtype ft,
                                            const void *x /*[M,K] xt*/,
                                            uint8_t *q /*[M,K] or [K,M]*/,
                                            float *scale /*[ceil(R/br),ceil(C/bc)]*/) {
  static const char *const FN = "dsc_cuda_fp8_quantize";
  if (M <= 0 || K <= 0) return DSC_OK;
  if (br < 1 || bc < 1)
    return dsc_error(DSC_ERR_INVALID_ARGUMENT, FN, "block %lld x %lld", (long long)br,
                     (long long)bc);
  DSC_CUDA_ENTER(ctx, FN);
  const QuantArgs p = make_quant_args(M, K, br, bc, transpose, pow2, amax_floor, ft);
  return xt == DSC_DTYPE_BFLOAT16 ? launch_quant<__nv_bfloat16>(ctx, FN, p, x, q, scale)
                                  : launch_quant<float>(ctx, FN, p, x, q, scale);
}

/* ---- dequantization ---------------------------------------------------------------------- */

template <typename TO>
__global__ void dequant_kernel(int64_t R, int64_t C, int64_t br, int64_t bc, int64_t Cb, int e5,
                               const uint8_t *__restrict__ q /*[R,C]*/,
                               const float *__restrict__ scale /*[Rb,Cb]*/,
                               TO *__restrict__ out /*[R,C]*/) {
  const int64_t n = R * C, stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t r = i / C, c = i % C;
    st_out(out, i, fp8_dec(q[i], e5) * scale[(r / br) * Cb + c / bc]);
  }
}

extern "C" dsc_status dsc_cuda_fp8_dequantize(dsc_context *ctx, dsc_dtype ft, int64_t R,
                                              int64_t C, int64_t br, int64_t bc,
                                              const uint8_t *q /*[R,C]*/,
                                              const float *scale /*[ceil(R/br),ceil(C/bc)]*/,
                                              dsc_dtype ot, void *out /*[R,C] ot*/) {
  static const char *const FN = "dsc_cuda_fp8_dequantize";
  if (R <= 0 || C <= 0) return DSC_OK;
  if (br < 1 || bc < 1)
    return dsc_error(DSC_ERR_INVALID_ARGUMENT, FN, "block %lld x %lld", (long long)br,
                     (long long)bc);
  DSC_CUDA_ENTER(ctx, FN);
  const int64_t Cb = (C + bc - 1) / bc;
  const unsigned blocks = dsc_cuda_blocks(R * C, 256);
  cudaStream_t s = dsc_cuda_stream(ctx);
  if (ot == DSC_DTYPE_BFLOAT16)
    dequant_kernel<<<blocks, 256, 0, s>>>(R, C, br, bc, Cb, is_e5(ft) ? 1 : 0, q, scale,
                                          (__nv_bfloat16 *)out);
  else
    dequant_kernel<<<blocks, 256, 0, s>>>(R, C, br, bc, Cb, is_e5(ft) ? 1 : 0, q, scale,
                                          (float *)out);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

/* ---- transpose --------------------------------------------------------------------------- */

#define TR_TILE 32

/* dst [C,R] = src [R,C]^T in 32x32 tiles through shared memory (reads and writes both
 * coalesced); E an integer type of the element size. Grid-stride over tiles. */
template <typename E>
__global__ void __launch_bounds__(TR_TILE * 8)
    transpose_kernel(int64_t R, int64_t C, const E *__restrict__ src /*[R,C]*/,
                     E *__restrict__ dst /*[C,R]*/) {
  __shared__ E tile[TR_TILE][TR_TILE + 1];
  const int64_t tr = (R + TR_TILE - 1) / TR_TILE, tc = (C + TR_TILE - 1) / TR_TILE;
  const int tx = threadIdx.x, ty = threadIdx.y; /* 32 x 8 */
  for (int64_t t = blockIdx.x; t < tr * tc; t += gridDim.x) {
    const int64_t r0 = (t / tc) * TR_TILE, c0 = (t % tc) * TR_TILE;
    for (int i = ty; i < TR_TILE; i += 8) {
      const int64_t r = r0 + i, c = c0 + tx;
      if (r < R && c < C) tile[i][tx] = src[r * C + c];
    }
    __syncthreads();
    for (int i = ty; i < TR_TILE; i += 8) {
      const int64_t c = c0 + i, r = r0 + tx; /* dst row c, column r */
      if (r < R && c < C) dst[c * R + r] = tile[tx][i];
    }
    __syncthreads();
  }
}

template <typename E>
static dsc_status launch_transpose(dsc_context *ctx, const char *fn, int64_t R, int64_t C,
                                   const void *src, void *dst) {
  const int64_t tiles = ((R + TR_TILE - 1) / TR_TILE) * ((C + TR_TILE - 1) / TR_TILE);
  transpose_kernel<E><<<dsc_cuda_blocks(tiles, 1, 65535), dim3(TR_TILE, 8), 0,
                        dsc_cuda_stream(ctx)>>>(R, C, (const E *)src, (E *)dst);
  DSC_CUDA_CHECK_LAUNCH(fn);
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_fp8_transpose(dsc_context *ctx, int64_t R, int64_t C,
                                             int64_t esize, const void *src /*[R,C]*/,
                                             void *dst /*[C,R]*/) {
  static const char *const FN = "dsc_cuda_fp8_transpose";
  if (R <= 0 || C <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  switch (esize) {
    case 1: return launch_transpose<uint8_t>(ctx, FN, R, C, src, dst);
    case 2: return launch_transpose<uint16_t>(ctx, FN, R, C, src, dst);
    case 4: return launch_transpose<uint32_t>(ctx, FN, R, C, src, dst);
    case 8: return launch_transpose<uint64_t>(ctx, FN, R, C, src, dst);
    default:
      return dsc_error(DSC_ERR_INVALID_ARGUMENT, FN, "element size %lld", (long long)esize);
  }
}

/* ---- statistics -------------------------------------------------------------------------- */

/* Device results of fp8_stats, in the context's scratch. */
struct StatsOut {
  unsigned long long counts[3]; /* clipped, underflow, NaN */
  unsigned int amax_bits;       /* max over bits of |x|: non-negative floats order as
                                   their bits, and every NaN is above +inf */
};

/* Counts of one element x under scale s. */
__device__ __forceinline__ void stats_elem(float v, float s, int e5, unsigned long long *cnt) {
  const float av = fabsf(v);
  if (av != av) {
    ++cnt[2];
    return;
  }
  if (av > 3.402823466e38f) return; /* +-inf: neither clipped nor underflow */
  const float y = v / s;
  if (fp8_clips(fabsf(y), e5)) ++cnt[0];
  if (v != 0.0f && (fp8_enc(y, e5) & 0x7fu) == 0u) ++cnt[1];
}

/* One CTA per (br x bc) block of x [M,K] (like quant_blocks_kernel without transpose),
 * or, with tensor_scale > 0, per 64Ki-element chunk with that one scale. Per-thread
 * counts and max, then one integer atomic per CTA. */
template <typename TX>
__global__ void __launch_bounds__(256)
    stats_kernel(QuantArgs p, float tensor_scale, const TX *__restrict__ x /*[M,K]*/,
                 StatsOut *__restrict__ out) {
  __shared__ float red[32];
  __shared__ unsigned long long cred[3][32];
  unsigned long long cnt[3] = {0, 0, 0};
  unsigned int abits = 0;
  const bool tensor = tensor_scale > 0.0f;
  const int64_t chunk = 65536, n = p.R * p.C;
  const int64_t tiles = tensor ? (n + chunk - 1) / chunk : p.Rb * p.Cb;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    if (tensor) {
      const int64_t e1 = (t + 1) * chunk < n ? (t + 1) * chunk : n;
      for (int64_t e = t * chunk + threadIdx.x; e < e1; e += blockDim.x) {
        const float v = dsc_ld(x, e);
        const unsigned int b = __float_as_uint(v) & 0x7fffffffu;
        if (b > abits) abits = b;
        stats_elem(v, tensor_scale, p.e5, cnt);
      }
      continue;
    }
    const int64_t rb = t / p.Cb, cb = t % p.Cb;
    const int64_t r0 = rb * p.br, c0 = cb * p.bc;
    const int64_t nr = (r0 + p.br < p.R ? r0 + p.br : p.R) - r0;
    const int64_t nc = (c0 + p.bc < p.C ? c0 + p.bc : p.C) - c0;
    const int64_t ne = nr * nc;
    float amax = 0.0f;
    for (int64_t e = threadIdx.x; e < ne; e += blockDim.x) {
      const float v = dsc_ld(x, (r0 + e / nc) * p.C + c0 + e % nc);
      const unsigned int b = __float_as_uint(v) & 0x7fffffffu;
      if (b > abits) abits = b;
      const float a = fabsf(v);
      if (a <= 3.402823466e38f && a > amax) amax = a;
    }
    amax = dsc_block_max(amax, red);
    const float s = fp8_block_scale(amax, p.amax_floor, p.fmax, p.pow2);
    for (int64_t e = threadIdx.x; e < ne; e += blockDim.x)
      stats_elem(dsc_ld(x, (r0 + e / nc) * p.C + c0 + e % nc), s, p.e5, cnt);
  }
  /* block reduction of the integers (exact, any order) */
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    unsigned long long v = cnt[k];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) cred[k][wid] = v;
  }
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned int ob = __shfl_xor_sync(0xffffffffu, abits, o);
    if (ob > abits) abits = ob;
  }
  __shared__ unsigned int bred[32];
  if (lane == 0) bred[wid] = abits;
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned long long tot[3] = {0, 0, 0};
    unsigned int mb = 0;
    for (int w = 0; w < nw; ++w) {
      for (int k = 0; k < 3; ++k) tot[k] += cred[k][w];
      if (bred[w] > mb) mb = bred[w];
    }
    for (int k = 0; k < 3; ++k)
      if (tot[k]) atomicAdd(&out->counts[k], tot[k]);
    atomicMax(&out->amax_bits, mb);
  }
}

extern "C" dsc_status dsc_cuda_fp8_stats(dsc_context *ctx, dsc_dtype xt, int64_t M, int64_t K,
                                         int64_t br, int64_t bc, int pow2, float amax_floor,
                                         dsc_dtype ft, float tensor_scale,
                                         const void *x /*[M,K] xt*/, float *amax /*host*/,
                                         int64_t *counts /*[3] host*/) {
  static const char *const FN = "dsc_cuda_fp8_stats";
  *amax = 0.0f;
  counts[0] = counts[1] = counts[2] = 0;
  if (M <= 0 || K <= 0) return DSC_OK;
  if (br < 1 || bc < 1)
    return dsc_error(DSC_ERR_INVALID_ARGUMENT, FN, "block %lld x %lld", (long long)br,
                     (long long)bc);
  DSC_CUDA_ENTER(ctx, FN);
  dsc_cuda_state *st = dsc_cuda_st(ctx);
  cudaStream_t s = dsc_cuda_stream(ctx);
  StatsOut *dev = (StatsOut *)st->scratch; /* sizeof(StatsOut) << DSC_CUDA_SCRATCH_BYTES */
  DSC_CUDA_TRY(cudaMemsetAsync(dev, 0, sizeof(StatsOut), s), FN);
  const QuantArgs p = make_quant_args(M, K, br, bc, 0, pow2, amax_floor, ft);
  const int64_t tiles = tensor_scale > 0.0f ? (M * K + 65535) / 65536 : p.Rb * p.Cb;
  const unsigned blocks = dsc_cuda_blocks(tiles, 1, 4096);
  if (xt == DSC_DTYPE_BFLOAT16)
    stats_kernel<<<blocks, 256, 0, s>>>(p, tensor_scale, (const __nv_bfloat16 *)x, dev);
  else
    stats_kernel<<<blocks, 256, 0, s>>>(p, tensor_scale, (const float *)x, dev);
  DSC_CUDA_CHECK_LAUNCH(FN);
  StatsOut *host = (StatsOut *)st->pinned;
  DSC_TRY(dsc_cuda_to_host(ctx, host, dev, sizeof(StatsOut), FN));
  for (int k = 0; k < 3; ++k) counts[k] = (int64_t)host->counts[k];
  uint32_t b = host->amax_bits;
  if (b > 0x7f800000u) b = 0x7fc00000u; /* any NaN: the canonical quiet NaN */
  memcpy(amax, &b, sizeof b);
  return DSC_OK;
}
