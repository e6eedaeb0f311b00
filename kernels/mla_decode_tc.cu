/*
 * kernels/mla_decode_tc.cu -- absorbed MLA decode on tensor cores (mma.sync m16n8k16, BF16
 * in, FP32 accumulate; sm_80 and later) over the paged latent cache (BF16 rows or the FP8
 * row), with split-KV and a combine kernel. The float32 path of kernels/mla.cu stays for
 * float32 caches, R > 512 and devices without the shared memory.
 *
 * Legend: NQ query rows, H heads, R kv_lora_rank, dr rope dim, W = R + dr, Wp = W rounded
 * up to 16 (the mma k step), HB = 32 heads per CTA (two m16 tiles), TK = 32 keys per tile,
 * CH keys per split, S = kv_len[r].
 *
 * One CTA (8 warps) per (query row r, head block of 32 heads, KV split); the head blocks
 * of one (row, split) are adjacent in the grid (mla_decode_task), so the keys they share
 * come from L2 after the first read. Per tile of 32 keys:
 *   1. the 32 cache rows are decoded ONCE into shared memory as BF16 [TK, Wp] (FP8:
 *      e4m3 * its 128-column scale, rounded to BF16; the rope part is BF16 already);
 *   2. scores S [HB, TK] = Q [HB, Wp] K^T: warp w computes the m16 x n8 tile
 *      (w >> 2, w & 3) over Wp / 16 k steps; scale applied in FP32; keys >= the split's end
 *      masked to -inf;
 *   3. online softmax in FP32 per head (warp w: heads 4w..4w+3, lane = key): running max m,
 *      sum l, the factor alpha of the old accumulator; P stored as BF16;
 *   4. acc [HB, R] = alpha * acc + P [HB, TK] V [TK, R] (V = the latent part of the same
 *      shared rows): warp w owns the n8 column tiles w, w+8, ... (R <= 512: 8 tiles x 2 m
 *      tiles x 4 = 64 accumulator registers).
 * One split: o_lat = acc / l. Several: the split's acc (unnormalized) and (m, l) go to a
 * workspace and mla_decode_combine merges them in split order (mla_merge_* of mla_tile.cuh).
 * All index math (fragment ownership, addressing, split ranges, softmax steps) is in
 * mla_tile.cuh, tested on the CPU by tests/c/test_mla_tile.c.
 *
 * Rounding (against the float32 CPU reference): q_lat / q_pe are rounded to BF16, FP8
 * latents are dequantized to FP32 then rounded to BF16, P is rounded to BF16 for the PV
 * product; scores, softmax and accumulation are FP32.
 */
#include <math.h>

#include "common.cuh"
#include "fp8_format.h"
#include "mla_mma.cuh"
#include "mla_tile.cuh"

#define TC_HB 32                       /* heads per CTA: two m16 tiles */
#define TC_TK 32                       /* keys per tile */
#define TC_NW 8                        /* warps */
#define TC_NT (TC_NW * 32)             /* threads */
#define TC_RMAX 512                    /* widest latent of the register accumulator */
#define TC_NTW (TC_RMAX / 8 / TC_NW)   /* n8 accumulator tiles per warp and m tile */
#define TC_MAX_GRID 65535

enum { TC_BF16 = 0, TC_FP8 = 1 };

/* Shared memory of one CTA for rows of W values: slot [TK] int64, Ss [HB, TK+1] f32, m, l,
 * alpha [HB] f32, Qs [HB, ld] bf16, Ks [TK, ld] bf16, Ps [HB, TK+8] bf16 (ld = Wp + 8: rows
 * stay 16-byte aligned and off the same banks). */
__host__ __device__ __forceinline__ int tc_ld(int64_t W) { return (int)((W + 15) / 16 * 16) + 8; }
__host__ __device__ __forceinline__ size_t tc_smem_bytes(int64_t W) {
  return (size_t)TC_TK * 8 + (size_t)TC_HB * (TC_TK + 1) * 4 + 3 * (size_t)TC_HB * 4 +
         2 * (size_t)(TC_HB + TC_TK) * (size_t)tc_ld(W) + 2 * (size_t)TC_HB * (TC_TK + 8);
}

/* Value d of a cache row as BF16 bits: BF16 rows as stored; FP8 latents e4m3 * scale in
 * FP32 (the CPU's widening) rounded to BF16, the rope part as stored. */
__device__ __forceinline__ uint16_t tc_cache_elem(int code, const unsigned char *row, int64_t R,
                                                  int64_t d) {
  if (code == TC_BF16) return ((const uint16_t *)row)[d];
  if (d < R) {
    const float sc = *(const float *)(row + mla_fp8_scale_off(R) + (d >> 7) * 4);
    return dsc_f32_to_bf16(dsc_e4m3_to_f32(row[d]) * sc);
  }
  return *(const uint16_t *)(row + mla_fp8_rope_off(R) + 2 * (d - R));
}

__global__ void __launch_bounds__(TC_NT, 2) /* two CTAs per SM: one decodes while one multiplies */
    mla_decode_tc_kernel(int code, int64_t R, int64_t dr, int64_t row_bytes, int64_t bs,
                         const unsigned char *__restrict__ pool, int64_t NQ, int64_t H,
                         float scale, const float *__restrict__ q_lat /* [NQ,H,R] */,
                         const float *__restrict__ q_pe /* [NQ,H,dr] */,
                         const int64_t *__restrict__ kv_len /* [NQ] */,
                         const int64_t *__restrict__ table_off /* [NQ] */,
                         const int32_t *__restrict__ tables, float *__restrict__ o_lat /* [NQ,H,R] */,
                         float *__restrict__ part /* [NQ,H,nsplit,R] */,
                         float *__restrict__ ml /* [NQ,H,nsplit,2] */, int64_t nsplit, int64_t CH) {
  extern __shared__ __align__(16) unsigned char tc_smem[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t W = R + dr;
  const int Wp = (int)((W + 15) / 16 * 16), ld = tc_ld(W), lds = TC_TK + 1, ldp = TC_TK + 8;
  int64_t *slot_s = (int64_t *)tc_smem;              /* [TK] pool row of each key, -1 none */
  float *Ss = (float *)(slot_s + TC_TK);             /* [HB, lds] scores */
  float *m_s = Ss + TC_HB * lds, *l_s = m_s + TC_HB, *a_s = l_s + TC_HB; /* [HB] each */
  uint16_t *Qs = (uint16_t *)(a_s + TC_HB);          /* [HB, ld] */
  uint16_t *Ks = Qs + TC_HB * ld;                    /* [TK, ld] */
  uint16_t *Ps = Ks + TC_TK * ld;                    /* [HB, ldp] */
  const int64_t nhb = (H + TC_HB - 1) / TC_HB, ntask = NQ * nhb * nsplit;
  const int nct = (int)((R + 7) / 8); /* n8 column tiles of the latent */
  for (int64_t task = blockIdx.x; task < ntask; task += gridDim.x) {
    int64_t r, hb, sp, j0, j1;
    mla_decode_task(task, nhb, nsplit, &r, &hb, &sp);
    const int64_t h0 = hb * TC_HB, toff = table_off[r];
    mla_split_range(kv_len[r], CH, sp, &j0, &j1);
    __syncthreads(); /* the previous task's readers of the shared arrays are done */
    for (int e = tid; e < TC_HB * Wp; e += TC_NT) {
      const int hh = e / Wp, d = e % Wp;
      const int64_t h = h0 + hh;
      float v = 0.0f;
      if (h < H && d < W) v = d < R ? q_lat[(r * H + h) * R + d] : q_pe[(r * H + h) * dr + (d - R)];
      Qs[hh * ld + d] = dsc_f32_to_bf16(v);
    }
    if (tid < TC_HB) {
      m_s[tid] = -INFINITY;
      l_s[tid] = 0.0f;
    }
    float acc[2][TC_NTW][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int i = 0; i < TC_NTW; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mt][i][e] = 0.0f;

    for (int64_t k0 = j0; k0 < j1; k0 += TC_TK) {
      __syncthreads(); /* Ks, Ps, slot_s free; Qs, m_s, l_s written */
      if (tid < TC_TK) {
        const int64_t j = k0 + tid;
        slot_s[tid] = j < j1 ? mla_page_row(tables, toff, j, bs) : -1;
      }
      __syncthreads();
      /* 1. decode the tile's rows once */
      for (int jj = warp; jj < TC_TK; jj += TC_NW) { /* a row per warp, lanes along it */
        const int64_t slot = slot_s[jj];
        const unsigned char *row = pool + (slot >= 0 ? slot : 0) * row_bytes;
        for (int d = lane; d < Wp; d += 32)
          Ks[jj * ld + d] = (slot >= 0 && d < W) ? tc_cache_elem(code, row, R, d) : (uint16_t)0;
      }
      __syncthreads();
      /* 2. scores */
      {
        const int mt = warp >> 2, nt = warp & 3;
        float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int kk = 0; kk < Wp; kk += 16) {
          uint32_t a[4], b[2];
          mla_load_a(a, Qs + mt * 16 * ld + kk, ld, lane);
          mla_load_bt(b, Ks + nt * 8 * ld + kk, ld, lane);
          mla_mma(c, a, b);
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int row = mt * 16 + mla_fc_row(lane, e), col = nt * 8 + mla_fc_col(lane, e);
          Ss[row * lds + col] = k0 + col < j1 ? scale * c[e] : -INFINITY;
        }
      }
      __syncthreads();
      /* 3. online softmax, one head per warp at a time, lane = key */
      for (int q = 0; q < TC_HB / TC_NW; ++q) {
        const int row = warp * (TC_HB / TC_NW) + q;
        const float s = Ss[row * lds + lane];
        const float tmax = dsc_warp_reduce(s, DscMax());
        float alpha;
        const float mn = mla_online_max(m_s[row], tmax, &alpha);
        const float p = mla_prob(s, mn);
        const float psum = dsc_warp_reduce(p, DscSum()); /* every lane has read m_s[row] */
        Ps[row * ldp + lane] = dsc_f32_to_bf16(p);
        if (lane == 0) {
          l_s[row] = l_s[row] * alpha + psum;
          m_s[row] = mn;
          a_s[row] = alpha;
        }
      }
      __syncthreads();
      /* 4. acc = alpha * acc + P V */
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        uint32_t a[2][4];
        mla_load_a(a[0], Ps + mt * 16 * ldp, ldp, lane);
        mla_load_a(a[1], Ps + mt * 16 * ldp + 16, ldp, lane);
        float al[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) al[e] = a_s[mt * 16 + mla_fc_row(lane, e)];
#pragma unroll
        for (int i = 0; i < TC_NTW; ++i) {
          const int t = warp + TC_NW * i;
          if (t >= nct) continue;
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[mt][i][e] *= al[e];
#pragma unroll
          for (int ks = 0; ks < 2; ++ks) {
            uint32_t b[2];
            mla_load_b(b, Ks + ks * 16 * ld + t * 8, ld, lane);
            mla_mma(acc[mt][i], a[ks], b);
          }
        }
      }
    }
    __syncthreads(); /* the final l_s / m_s */
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int i = 0; i < TC_NTW; ++i) {
        const int t = warp + TC_NW * i;
        if (t >= nct) continue;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int row = mt * 16 + mla_fc_row(lane, e);
          const int64_t col = (int64_t)t * 8 + mla_fc_col(lane, e), h = h0 + row;
          if (col >= R || h >= H) continue;
          if (nsplit == 1) { /* o_lat = acc * (1/l), as the CPU; a row with no keys is 0 */
            const float l = l_s[row];
            o_lat[(r * H + h) * R + col] = l > 0.0f ? acc[mt][i][e] * (1.0f / l) : 0.0f;
          } else {
            part[((r * H + h) * nsplit + sp) * R + col] = acc[mt][i][e];
          }
        }
      }
    if (nsplit > 1 && tid < TC_HB && h0 + tid < H) {
      float *mlp = ml + ((r * H + h0 + tid) * nsplit + sp) * 2;
      mlp[0] = m_s[tid];
      mlp[1] = l_s[tid];
    }
  }
}

/* o_lat[r,h,c] = sum_s acc_s[c] w_s / sum_s l_s w_s over the splits in order
 * (mla_merge_max / mla_merge_weight); no keys at all gives 0. */
__global__ void mla_decode_combine_kernel(int64_t NQ, int64_t H, int64_t R, int64_t nsplit,
                                          const float *__restrict__ part /* [NQ,H,nsplit,R] */,
                                          const float *__restrict__ ml /* [NQ,H,nsplit,2] */,
                                          float *__restrict__ o_lat /* [NQ,H,R] */) {
  const int64_t n = NQ * H * R, stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t rh = i / R, c = i % R;
    const float *mlr = ml + rh * nsplit * 2;
    const float M = mla_merge_max(mlr, nsplit);
    float L = 0.0f, acc = 0.0f;
    for (int64_t s = 0; s < nsplit; ++s) {
      const float w = mla_merge_weight(mlr[2 * s], mlr[2 * s + 1], M);
      if (w == 0.0f) continue;
      L = fmaf(mlr[2 * s + 1], w, L);
      acc = fmaf(part[(rh * nsplit + s) * R + c], w, acc);
    }
    o_lat[i] = L > 0.0f ? acc * (1.0f / L) : 0.0f;
  }
}

dsc_status mla_decode_combine(dsc_context *ctx, int64_t NQ, int64_t H, int64_t R, int64_t nsplit,
                              const float *part, const float *ml, float *o_lat) {
  static const char *const FN = "dsc_cuda_mla_decode_attn";
  mla_decode_combine_kernel<<<dsc_cuda_blocks(NQ * H * R, 256), 256, 0, dsc_cuda_stream(ctx)>>>(
      NQ, H, R, nsplit, part, ml, o_lat);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

dsc_status mla_decode_tc(dsc_context *ctx, dsc_dtype cdt, int64_t R, int64_t dr, int64_t row_bytes,
                         int64_t block_size, const void *pool, int64_t NQ, int64_t H,
                         int64_t max_kv, float scale, const float *q_lat, const float *q_pe,
                         const int64_t *kv_len, const int64_t *table_off, const int32_t *tables,
                         float *o_lat, int *done) {
  static const char *const FN = "dsc_cuda_mla_decode_attn";
  *done = 0;
  if (cdt != DSC_DTYPE_BFLOAT16 && cdt != DSC_DTYPE_FLOAT8_E4M3FN) return DSC_OK;
  if (R > TC_RMAX || NQ <= 0 || H <= 0) return DSC_OK;
  int dev = 0, major = 0, optin = 0;
  DSC_CUDA_TRY(cudaGetDevice(&dev), FN);
  DSC_CUDA_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), FN);
  DSC_CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), FN);
  const size_t smem = tc_smem_bytes(R + dr);
  if (major < 8 || smem > (size_t)optin) return DSC_OK;
  if (smem > 48 * 1024)
    DSC_CUDA_TRY(cudaFuncSetAttribute(mla_decode_tc_kernel,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                 FN);
  const int64_t nhb = (H + TC_HB - 1) / TC_HB, base = NQ * nhb;
  const int64_t sms = dsc_cuda_st(ctx)->sm_count > 0 ? dsc_cuda_st(ctx)->sm_count : 1;
  const int64_t CH = mla_split_chunk(base, sms, max_kv, TC_TK);
  const int64_t nsplit = mla_num_splits(max_kv, CH);
  float *part = nullptr, *ml = nullptr;
  if (nsplit > 1) {
    const size_t b_part = dsc_cuda_round256((size_t)(NQ * H * nsplit * R) * sizeof(float));
    void *ws = NULL;
    DSC_TRY(dsc_workspace(ctx, b_part + (size_t)(NQ * H * nsplit * 2) * sizeof(float), &ws));
    part = (float *)ws;
    ml = (float *)((char *)ws + b_part);
  }
  const int code = cdt == DSC_DTYPE_BFLOAT16 ? TC_BF16 : TC_FP8;
  const unsigned grid = dsc_cuda_blocks(base * nsplit, 1, TC_MAX_GRID);
  mla_decode_tc_kernel<<<grid, TC_NT, smem, dsc_cuda_stream(ctx)>>>(
      code, R, dr, row_bytes, block_size, (const unsigned char *)pool, NQ, H, scale, q_lat, q_pe,
      kv_len, table_off, tables, o_lat, part, ml, nsplit, CH);
  DSC_CUDA_CHECK_LAUNCH(FN);
  if (nsplit > 1) DSC_TRY(mla_decode_combine(ctx, NQ, H, R, nsplit, part, ml, o_lat));
  *done = 1;
  return DSC_OK;
}
