/*
 * cpu/fp8.c -- DeepSeek-V3's fine-grained FP8 on the CPU: casts, block quantization,
 * dequantization, the block-scaled GEMMs (plain, contiguous grouped, masked grouped)
 * and quantization statistics. The readable reference for kernels/fp8.cu.
 *
 * Legend: M rows of A / x, N rows of B (output features), K the inner dim,
 *         Kb = ceil(K/128) scale blocks along K, G groups (experts), Mmax rows per
 *         group in the masked layout; br x bc a quantization block (1x128 activation
 *         tiles, 128x128 weight blocks); R x C the shape of a quantized matrix.
 *
 * Quantization of one block (the DeepSeek `act_quant` / `per_block_cast_to_fp8` recipe):
 *   amax = max |x| over the block's FINITE elements (NaN and +-inf do not enter it, so a
 *          scale is always finite; they come out of the cast as NaN / inf codes),
 *   s    = max(amax, amax_floor) / fp8_max       (float32 division)
 *   s    = 2^ceil(log2 s) with pow2 (UE8M0 scales),
 *   q    = cast(x / s)                            (float32 division, RNE, saturating).
 *
 * GEMM: "exact dequantize-and-accumulate in FP32". A and B are dequantized (fp8 value
 * times its block scale, each product exact in float32 up to one rounding) into float32
 * buffers of the caller's `work`, and one sgemm (BLAS, FP32 accumulation) forms
 *   C[m,n] = sum_k (A[m,k] sa(m,k/128)) (B[n,k] sb(n,k/128)),
 * which is the block formula sum_kb (sum_{k in kb} A B) sa sb up to float32 rounding.
 * NaN in an operand propagates into its row / column of C. bfloat16 C is computed in a
 * float32 buffer and rounded once.
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "cpu_common.h"
#include "fp8_format.h"

/* Elementwise FP8 work costs ~1-2 ns an element: below this many elements a parallel
 * region (and the handover to OpenBLAS's own threads right after, in the GEMMs) costs
 * more than it saves, badly so on a loaded machine. */
#define FP8_PAR_MIN ((int64_t)1 << 18)

/* Floats of one quantization block kept on the stack (64 KiB: a 128x128 block). */
#define QBUF 16384

/* Work buffers are carved at 64-byte boundaries. */
static size_t al64(size_t b) { return (b + 63u) & ~(size_t)63u; }

static float fp8_max(dsc_dtype ft) {
  return ft == DSC_DTYPE_FLOAT8_E5M2 ? DSC_FP8_E5M2_MAX : DSC_FP8_E4M3_MAX;
}

static inline uint8_t enc(dsc_dtype ft, float v) {
  return ft == DSC_DTYPE_FLOAT8_E5M2 ? dsc_f32_to_e5m2(v) : dsc_f32_to_e4m3(v);
}

/* tab[c] = float32 value of fp8 code c. */
static void decode_table(dsc_dtype ft, float tab[256]) {
  for (int c = 0; c < 256; ++c)
    tab[c] = ft == DSC_DTYPE_FLOAT8_E5M2 ? dsc_e5m2_to_f32((uint8_t)c)
                                         : dsc_e4m3_to_f32((uint8_t)c);
}

/* The scale of a block with the given finite amax. */
static inline float block_scale(float amax, float amax_floor, float fmax, int pow2) {
  float s = (amax > amax_floor ? amax : amax_floor) / fmax;
  if (pow2) { /* round up to a power of two: bump the exponent when a mantissa bit is set */
    uint32_t u = dsc_fp8_f32_bits(s);
    if (u & 0x007fffffu) u = (u & 0xff800000u) + 0x00800000u;
    s = dsc_fp8_bits_f32(u);
  }
  return s;
}

/* ---- cast ----------------------------------------------------------------------- */

dsc_status dsc_cpu_fp8_cast(dsc_context *ctx, int64_t n, dsc_dtype src_dt,
                            const void *src /* [n] src_dt */, dsc_dtype dst_dt,
                            void *dst /* [n] dst_dt */) {
  (void)ctx; /* read only by the OpenMP pragmas */
  const int to_fp8 = dst_dt == DSC_DTYPE_FLOAT8_E4M3FN || dst_dt == DSC_DTYPE_FLOAT8_E5M2;
  if (to_fp8) {
    uint8_t *d = (uint8_t *)dst; /* [n] */
#ifdef _OPENMP
#pragma omp parallel for num_threads(ctx->num_threads) schedule(static) if (n >= FP8_PAR_MIN)
#endif
    for (int64_t i = 0; i < n; ++i) d[i] = enc(dst_dt, dsc_cpu_ld(src_dt, src, i));
    return DSC_OK;
  }
  float tab[256];
  decode_table(src_dt, tab);
  const uint8_t *s = (const uint8_t *)src; /* [n] */
#ifdef _OPENMP
#pragma omp parallel for num_threads(ctx->num_threads) schedule(static) if (n >= FP8_PAR_MIN)
#endif
  for (int64_t i = 0; i < n; ++i) dsc_cpu_st(dst_dt, dst, i, tab[s[i]]);
  return DSC_OK;
}

/* ---- quantize / dequantize ------------------------------------------------------- */

dsc_status dsc_cpu_fp8_quantize(dsc_context *ctx, dsc_dtype xt, int64_t M, int64_t K, int64_t br,
                                int64_t bc, int transpose, int pow2, float amax_floor,
                                dsc_dtype ft, const void *x /* [M,K] xt */,
                                uint8_t *q /* [R,C] = [M,K], or [K,M] with transpose */,
                                float *scale /* [ceil(R/br), ceil(C/bc)] */) {
  (void)ctx;
  const int64_t R = transpose ? K : M, C = transpose ? M : K;
  const int64_t nrb = (R + br - 1) / br, ncb = (C + bc - 1) / bc;
  /* element (r, c) of the matrix being quantized sits at x[r*sr + c*sc] */
  const int64_t sr = transpose ? 1 : K, sc = transpose ? K : 1;
  const float fmax = fp8_max(ft);
#ifdef _OPENMP
#pragma omp parallel for num_threads(ctx->num_threads) schedule(static) if (R * C >= FP8_PAR_MIN)
#endif
  for (int64_t rb = 0; rb < nrb; ++rb) {
    const int64_t r0 = rb * br, r1 = r0 + br < R ? r0 + br : R;
    float buf[QBUF]; /* one block's values, when it fits */
    for (int64_t cb = 0; cb < ncb; ++cb) {
      const int64_t c0 = cb * bc, c1 = c0 + bc < C ? c0 + bc : C;
      const int64_t w = c1 - c0, n = (r1 - r0) * w;
      if (n <= QBUF) {
        /* gather the block (widened), amax, divide, encode: the loops vectorize but the last */
        for (int64_t r = r0; r < r1; ++r) {
          float *b = buf + (r - r0) * w; /* [w] */
          if (xt == DSC_DTYPE_FLOAT32) {
            const float *xr = (const float *)x + r * sr + c0 * sc;
            for (int64_t c = 0; c < w; ++c) b[c] = xr[c * sc];
          } else {
            const uint16_t *xr = (const uint16_t *)x + r * sr + c0 * sc;
            for (int64_t c = 0; c < w; ++c) b[c] = dsc_bf16_to_f32(xr[c * sc]);
          }
        }
        float amax = 0.0f;
        for (int64_t i = 0; i < n; ++i) {
          const float a = fabsf(buf[i]);
          amax = (a > amax && a <= FLT_MAX) ? a : amax; /* finite only (NaN fails >) */
        }
        const float s = block_scale(amax, amax_floor, fmax, pow2);
        scale[rb * ncb + cb] = s;
        for (int64_t i = 0; i < n; ++i) buf[i] = buf[i] / s;
        for (int64_t r = r0; r < r1; ++r) {
          const float *b = buf + (r - r0) * w; /* [w] */
          uint8_t *qr = q + r * C + c0;        /* [w] */
          if (ft == DSC_DTYPE_FLOAT8_E5M2)
            for (int64_t c = 0; c < w; ++c) qr[c] = dsc_f32_to_e5m2(b[c]);
          else
            for (int64_t c = 0; c < w; ++c) qr[c] = dsc_f32_to_e4m3(b[c]);
        }
        continue;
      }
      float amax = 0.0f; /* a block larger than the buffer: two passes over x */
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) {
          const float a = fabsf(dsc_cpu_ld(xt, x, r * sr + c * sc));
          if (a > amax && a <= FLT_MAX) amax = a;
        }
      const float s = block_scale(amax, amax_floor, fmax, pow2);
      scale[rb * ncb + cb] = s;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) q[r * C + c] = enc(ft, dsc_cpu_ld(xt, x, r * sr + c * sc) / s);
    }
  }
  return DSC_OK;
}

dsc_status dsc_cpu_fp8_dequantize(dsc_context *ctx, dsc_dtype ft, int64_t R, int64_t C,
                                  int64_t br, int64_t bc, const uint8_t *q /* [R,C] */,
                                  const float *scale /* [ceil(R/br), ceil(C/bc)] */,
                                  dsc_dtype ot, void *out /* [R,C] ot */) {
  (void)ctx;
  float tab[256];
  decode_table(ft, tab);
  const int64_t ncb = (C + bc - 1) / bc;
#ifdef _OPENMP
#pragma omp parallel for num_threads(ctx->num_threads) schedule(static) if (R * C >= FP8_PAR_MIN)
#endif
  for (int64_t r = 0; r < R; ++r) {
    const float *srow = scale + (r / br) * ncb; /* [ncb] */
    const uint8_t *qr = q + r * C;              /* [C] */
    for (int64_t cb = 0; cb < ncb; ++cb) {
      const int64_t c0 = cb * bc, c1 = c0 + bc < C ? c0 + bc : C;
      const float s = srow[cb];
      if (ot == DSC_DTYPE_FLOAT32) {
        float *o = (float *)out + r * C; /* [C] */
        for (int64_t c = c0; c < c1; ++c) o[c] = tab[qr[c]] * s;
      } else {
        uint16_t *o = (uint16_t *)out + r * C; /* [C] */
        for (int64_t c = c0; c < c1; ++c) o[c] = dsc_f32_to_bf16(tab[qr[c]] * s);
      }
    }
  }
  return DSC_OK;
}

dsc_status dsc_cpu_fp8_transpose(dsc_context *ctx, int64_t R, int64_t C, int64_t esize,
                                 const void *src /* [R,C] */, void *dst /* [C,R] */) {
  (void)ctx;
  const int64_t T = 32; /* tile edge */
  const int64_t nt = (R + T - 1) / T;
#ifdef _OPENMP
#pragma omp parallel for num_threads(ctx->num_threads) schedule(static) if (R * C >= FP8_PAR_MIN)
#endif
  for (int64_t tr = 0; tr < nt; ++tr) {
    const int64_t r0 = tr * T, r1 = r0 + T < R ? r0 + T : R;
    for (int64_t c0 = 0; c0 < C; c0 += T) {
      const int64_t c1 = c0 + T < C ? c0 + T : C;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) {
          if (esize == 1)
            ((uint8_t *)dst)[c * R + r] = ((const uint8_t *)src)[r * C + c];
          else
            memcpy((char *)dst + (c * R + r) * esize, (const char *)src + (r * C + c) * esize,
                   (size_t)esize);
        }
    }
  }
  return DSC_OK;
}

/* ---- GEMMs -------------------------------------------------------------------------- */

dsc_status dsc_cpu_fp8_gemm_work(dsc_context *ctx, int64_t G, int64_t M, int64_t N, int64_t K,
                                 dsc_dtype ct, size_t *bytes) {
  (void)ctx;
  (void)G; /* one group at a time: B [N,K] is reused */
  /* fA [M,K] f32, fB [N,K] f32, fC [M,N] f32 (bfloat16 C only) */
  *bytes = al64((size_t)(M * K) * 4u) + al64((size_t)(N * K) * 4u) +
           (ct == DSC_DTYPE_BFLOAT16 ? al64((size_t)(M * N) * 4u) : 0u);
  return DSC_OK;
}

/* dst[r,k] = float(src[r,k]) * scale[r/br, k/128] for rows r of an [rows,K] fp8 matrix. */
static void dequant_rows(const dsc_context *ctx, dsc_dtype ft, int64_t rows, int64_t K,
                         const uint8_t *src /* [rows,K] */,
                         const float *scale /* [ceil(rows/br), Kb] */, int64_t br,
                         float *dst /* [rows,K] */) {
  (void)ctx;
  float tab[256];
  decode_table(ft, tab);
  const int64_t Kb = (K + 127) / 128;
#ifdef _OPENMP
#pragma omp parallel for num_threads(ctx->num_threads) schedule(static) if (rows * K >= FP8_PAR_MIN)
#endif
  for (int64_t r = 0; r < rows; ++r) {
    const float *s = scale + (r / br) * Kb; /* [Kb] */
    const uint8_t *a = src + r * K;         /* [K] */
    float *d = dst + r * K;                 /* [K] */
    for (int64_t k = 0; k < K; ++k) d[k] = tab[a[k]] * s[k >> 7];
  }
}

/* Round a float32 [rows,N] buffer into the bfloat16 C. */
static void narrow_bf16(const dsc_context *ctx, int64_t n, const float *src /* [n] */,
                        uint16_t *dst /* [n] */) {
  (void)ctx;
#ifdef _OPENMP
#pragma omp parallel for num_threads(ctx->num_threads) schedule(static) if (n >= FP8_PAR_MIN)
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = dsc_f32_to_bf16(src[i]);
}

static void zero_c(dsc_dtype ct, int64_t n, void *c /* [n] ct */) {
  memset(c, 0, (size_t)(n * dsc_cpu_esize(ct)));
}

/* The float32 product fC [M,N] = fA [M,K] @ fB [N,K]^T (BLAS, FP32 accumulation). */
static dsc_status sgemm_nt(dsc_context *ctx, int64_t M, int64_t N, int64_t K, const float *fA,
                           const float *fB, float *fC) {
  return dsc_cpu_gemm_f32out(ctx, DSC_DTYPE_FLOAT32, 0, 1, M, N, K, 1.0f, fA, K, fB, K, 0.0f, fC,
                             N);
}

dsc_status dsc_cpu_fp8_gemm(dsc_context *ctx, int64_t M, int64_t N, int64_t K, dsc_dtype at,
                            const uint8_t *a /* [M,K] */,
                            const float *a_scale /* [ceil(M/a_br), Kb] */, int64_t a_br,
                            dsc_dtype bt, const uint8_t *b /* [N,K] */,
                            const float *b_scale /* [ceil(N/b_br), Kb] */, int64_t b_br,
                            dsc_dtype ct, void *c /* [M,N] ct */, void *work) {
  if (M == 0 || N == 0) return DSC_OK;
  if (K == 0) {
    zero_c(ct, M * N, c);
    return DSC_OK;
  }
  float *fA = (float *)work;                                           /* [M,K] */
  float *fB = (float *)((char *)work + al64((size_t)(M * K) * 4u));    /* [N,K] */
  float *fC = ct == DSC_DTYPE_FLOAT32                                  /* [M,N] */
                  ? (float *)c
                  : (float *)((char *)fB + al64((size_t)(N * K) * 4u));
  dequant_rows(ctx, at, M, K, a, a_scale, a_br, fA);
  dequant_rows(ctx, bt, N, K, b, b_scale, b_br, fB);
  DSC_TRY(sgemm_nt(ctx, M, N, K, fA, fB, fC));
  if (ct == DSC_DTYPE_BFLOAT16) narrow_bf16(ctx, M * N, fC, (uint16_t *)c);
  return DSC_OK;
}

dsc_status dsc_cpu_fp8_grouped_gemm(dsc_context *ctx, int64_t G, int64_t M, int64_t N, int64_t K,
                                    dsc_dtype at, const uint8_t *a /* [M,K] */,
                                    const float *a_scale /* [M,Kb] */, dsc_dtype bt,
                                    const uint8_t *b /* [G,N,K] */,
                                    const float *b_scale /* [G, ceil(N/128), Kb] */,
                                    const int32_t *offsets /* [G+1] */,
                                    const int32_t *offs_h /* [G+1] host */, dsc_dtype ct,
                                    void *c /* [M,N] ct */, void *work) {
  (void)offsets; /* the same values as offs_h on the CPU */
  if (M == 0 || N == 0) return DSC_OK;
  if (K == 0) {
    zero_c(ct, M * N, c);
    return DSC_OK;
  }
  const int64_t Kb = (K + 127) / 128, Nb = (N + 127) / 128;
  float *fA = (float *)work;                                        /* [M,K] */
  float *fB = (float *)((char *)work + al64((size_t)(M * K) * 4u)); /* [N,K], one expert */
  float *fC = ct == DSC_DTYPE_FLOAT32                               /* [M,N] */
                  ? (float *)c
                  : (float *)((char *)fB + al64((size_t)(N * K) * 4u));
  dequant_rows(ctx, at, M, K, a, a_scale, 1, fA);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = offs_h[g], rows = offs_h[g + 1] - r0;
    if (rows == 0) continue; /* an expert without tokens */
    dequant_rows(ctx, bt, N, K, b + g * N * K, b_scale + g * Nb * Kb, 128, fB);
    DSC_TRY(sgemm_nt(ctx, rows, N, K, fA + r0 * K, fB, fC + r0 * N));
  }
  /* rows past every group (the MoE layer's row bound): zeros */
  if (offs_h[G] < M) memset(fC + (int64_t)offs_h[G] * N, 0, (size_t)((M - offs_h[G]) * N) * sizeof(float));
  if (ct == DSC_DTYPE_BFLOAT16) narrow_bf16(ctx, M * N, fC, (uint16_t *)c);
  return DSC_OK;
}

/* The K-grouped GEMM of the MoE weight gradient (ops/fp8_layers.h; the twin of
 * kernels/fp8_gemm.cu's): c_g [M,N] = the block-scaled product of the columns
 * offs_h[g]..offs_h[g+1] (multiples of 128) of a [M,K] and b [N,K] (per-row 1x128 scales).
 * Each group's columns are dequantized into contiguous [M,m] / [N,m] buffers and multiplied
 * exactly as dsc_cpu_fp8_gemm multiplies a group quantized on its own (its 128-blocks are
 * these blocks): the same bits as a per-group loop. work: dsc_cpu_fp8_gemm_work(1, M, N, K). */
dsc_status dsc_cpu_fp8_kgrouped_gemm(dsc_context *ctx, int64_t G, int64_t M, int64_t N, int64_t K,
                                     const uint8_t *a /* [M,K] */, const float *a_scale /* [M,Kb] */,
                                     const uint8_t *b /* [N,K] */, const float *b_scale /* [N,Kb] */,
                                     const int32_t *offsets /* [G+1] */,
                                     const int32_t *offs_h /* [G+1] host */, float *c /* [G,M,N] */,
                                     void *work) {
  (void)offsets; /* the same values as offs_h on the CPU */
  if (M == 0 || N == 0) return DSC_OK;
  float tab[256];
  decode_table(DSC_DTYPE_FLOAT8_E4M3FN, tab);
  const int64_t Kb = (K + 127) / 128;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t k0 = offs_h[g], m = offs_h[g + 1] - k0;
    float *cg = c + g * M * N; /* [M,N] */
    if (m <= 0) {
      memset(cg, 0, (size_t)(M * N) * sizeof(float));
      continue;
    }
    float *fA = (float *)work;                                          /* [M,m] */
    float *fB = (float *)((char *)work + al64((size_t)(M * m) * 4u));   /* [N,m] */
    const uint8_t *src[2] = {a, b};
    const float *sc[2] = {a_scale, b_scale};
    float *dst[2] = {fA, fB};
    const int64_t rows[2] = {M, N};
    for (int o = 0; o < 2; ++o) {
#ifdef _OPENMP
#pragma omp parallel for num_threads(ctx->num_threads) schedule(static) if (rows[o] * m >= FP8_PAR_MIN)
#endif
      for (int64_t r = 0; r < rows[o]; ++r) {
        const uint8_t *q = src[o] + r * K + k0; /* [m] */
        const float *s_r = sc[o] + r * Kb;      /* [Kb] */
        float *d = dst[o] + r * m;              /* [m] */
        for (int64_t j = 0; j < m; ++j) d[j] = tab[q[j]] * s_r[(k0 + j) >> 7];
      }
    }
    DSC_TRY(sgemm_nt(ctx, M, N, m, fA, fB, cg));
  }
  return DSC_OK;
}

dsc_status dsc_cpu_fp8_grouped_gemm_masked(dsc_context *ctx, int64_t G, int64_t Mmax, int64_t N,
                                           int64_t K, dsc_dtype at,
                                           const uint8_t *a /* [G,Mmax,K] */,
                                           const float *a_scale /* [G,Mmax,Kb] */, dsc_dtype bt,
                                           const uint8_t *b /* [G,N,K] */,
                                           const float *b_scale /* [G, ceil(N/128), Kb] */,
                                           const int32_t *masked_m /* [G] */,
                                           const int32_t *mm_h /* [G] host */, dsc_dtype ct,
                                           void *c /* [G,Mmax,N] ct */, void *work) {
  (void)masked_m;
  if (Mmax == 0 || N == 0) return DSC_OK;
  const int64_t Kb = (K + 127) / 128, Nb = (N + 127) / 128, es = dsc_cpu_esize(ct);
  float *fA = (float *)work;                                           /* [Mmax,K] */
  float *fB = (float *)((char *)work + al64((size_t)(Mmax * K) * 4u)); /* [N,K] */
  float *fCb = (float *)((char *)fB + al64((size_t)(N * K) * 4u));     /* [Mmax,N] (bf16 C) */
  for (int64_t g = 0; g < G; ++g) {
    const int64_t rows = mm_h[g];
    char *cg = (char *)c + g * Mmax * N * es; /* [Mmax,N] */
    if (rows > 0 && K > 0) {
      float *fC = ct == DSC_DTYPE_FLOAT32 ? (float *)cg : fCb; /* [rows,N] */
      dequant_rows(ctx, at, rows, K, a + g * Mmax * K, a_scale + g * Mmax * Kb, 1, fA);
      dequant_rows(ctx, bt, N, K, b + g * N * K, b_scale + g * Nb * Kb, 128, fB);
      DSC_TRY(sgemm_nt(ctx, rows, N, K, fA, fB, fC));
      if (ct == DSC_DTYPE_BFLOAT16) narrow_bf16(ctx, rows * N, fC, (uint16_t *)cg);
    } else if (rows > 0) {
      zero_c(ct, rows * N, cg); /* K == 0: an empty sum */
    }
    zero_c(ct, (Mmax - rows) * N, cg + rows * N * es); /* the masked-out rows */
  }
  return DSC_OK;
}

/* ---- statistics ----------------------------------------------------------------------- */

dsc_status dsc_cpu_fp8_stats(dsc_context *ctx, dsc_dtype xt, int64_t M, int64_t K, int64_t br,
                             int64_t bc, int pow2, float amax_floor, dsc_dtype ft,
                             float tensor_scale, const void *x /* [M,K] xt */,
                             float *amax_out /* host */, int64_t *counts /* [3] host */) {
  (void)ctx;
  const int64_t nrb = (M + br - 1) / br, ncb = (K + bc - 1) / bc;
  const float fmax = fp8_max(ft);
  const int e5 = ft == DSC_DTYPE_FLOAT8_E5M2;
  int64_t n_sat = 0, n_under = 0, n_nan = 0;
  float amax_all = 0.0f;
#ifdef _OPENMP
#pragma omp parallel for num_threads(ctx->num_threads) schedule(static) \
    reduction(+ : n_sat, n_under, n_nan) reduction(max : amax_all) if (M * K >= FP8_PAR_MIN)
#endif
  for (int64_t rb = 0; rb < nrb; ++rb) {
    const int64_t r0 = rb * br, r1 = r0 + br < M ? r0 + br : M;
    for (int64_t cb = 0; cb < ncb; ++cb) {
      const int64_t c0 = cb * bc, c1 = c0 + bc < K ? c0 + bc : K;
      float s = tensor_scale;
      if (!(tensor_scale > 0.0f)) { /* dynamic: the block's own scale */
        float amax = 0.0f;
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = c0; c < c1; ++c) {
            const float v = fabsf(dsc_cpu_ld(xt, x, r * K + c));
            if (v > amax && v <= FLT_MAX) amax = v;
          }
        s = block_scale(amax, amax_floor, fmax, pow2);
      }
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) {
          const float v = dsc_cpu_ld(xt, x, r * K + c);
          if (isnan(v)) {
            ++n_nan;
            continue;
          }
          const float av = fabsf(v);
          if (av > amax_all) amax_all = av;
          if (!isfinite(v)) continue;
          const float ay = fabsf(v / s);
          if (e5 ? dsc_fp8_e5m2_clips(ay) : dsc_fp8_e4m3_clips(ay))
            ++n_sat;
          else if (v != 0.0f && (enc(ft, v / s) & 0x7fu) == 0u)
            ++n_under;
        }
    }
  }
  *amax_out = n_nan ? NAN : amax_all;
  counts[0] = n_sat;
  counts[1] = n_under;
  counts[2] = n_nan;
  return DSC_OK;
}

dsc_status dsc_cpu_fp8_scales_check(dsc_context *ctx, int64_t n, const float *v, const int32_t *masked_m,
                                    int64_t group, int64_t row, int64_t *bad_pos, float *bad_value) {
  (void)ctx;
  *bad_pos = -1;
  *bad_value = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    if (masked_m && i % group >= (int64_t)masked_m[i / group] * row) continue;
    if (isfinite(v[i]) && v[i] > 0.0f) continue;
    *bad_pos = i;
    *bad_value = v[i];
    return DSC_OK;
  }
  return DSC_OK;
}
