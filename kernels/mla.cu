/*
 * kernels/mla.cu -- the attention core of Multi-head Latent Attention on the GPU; the twin
 * of csrc/cpu/mla.c (same math, layouts and argument semantics; see that file's header).
 *
 * Legend: B batch, T tokens, H heads, dn / dr / dv the nope / rope / value head dims,
 *         dqk = dn + dr, dkv = dn + dv, R kv_lora_rank, W = R + dr (one cache row's values),
 *         NQ decode query rows, S keys of a decode row, TQ x TK the (query x key) tile,
 *         HG heads sharing one pass over the latent rows in decode.
 *
 * Training attention (causal, float32, never materializes T x T):
 *   forward: one block per (b, h, 32-query tile); key tiles of 32 with an online softmax
 *     (running max m and sum l per query row, accumulator rescaled by exp(m_old - m_new));
 *     o = acc / l, lse = m + log(l) (the CPU's saved state).
 *   backward: D_t = dO_t . o_t (one warp per row); then two passes, each owning its outputs
 *     (no atomics, deterministic): per key tile, loop over query tiles t >= j and
 *     accumulate dK, dV; per query tile, loop over key tiles j <= t and accumulate dQ. P is
 *     recomputed as exp(scale*s - lse). The shared kpe's gradient goes through per-head
 *     partials [B,H,T,dr] summed in head order (as the CPU).
 *   Every score tile is a 32x32 block of dot products over the head dim in chunks of 32
 *   staged in shared memory (tile_dots), so any head dim works with fixed shared memory.
 *   Accumulators live in shared memory when small enough, else in the (block-owned)
 *   output rows in global memory.
 *
 * Cache rows: FLOAT32 / BFLOAT16 [ckv (R) | kpe (dr)]; FLOAT8_E4M3FN: R e4m3 bytes, then
 *   ceil(R/128) float32 scales at byte offset round4(R), then dr bf16. Conversions are the
 *   bit algorithms of numeric.h / fp8_format.h rewritten for the device (bit-identical).
 *
 * Decode (the float32 path: float32 caches, R > 512; BF16 and FP8 caches take the tensor
 *   cores of kernels/mla_decode_tc.cu): one block per (query row, group of 8 heads, key
 *   split); per 32-key tile each
 *   latent row is decoded once per head group per chunk, scores by warps (one head per
 *   warp, one key per lane), online softmax, then o_lat accumulation. Long rows with few
 *   blocks are split over keys; the splits' (m, l, acc) partials merge in split order.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.cuh"
#include "fp8_format.h"

#define MLA_NT 256   /* threads per block: 8 warps */
#define MLA_TILE 32  /* TQ = TK = chunk width */
#define MLA_RPT 4    /* tile rows per thread: TQ / 8 warps */
#define MLA_HG 8     /* decode heads per block (one per warp) */
#define MLA_ACC_SMEM_BYTES 32768 /* largest dynamic shared accumulator */
#define MLA_MAX_GRID 65535

/* ---- scalar conversions (device twins of numeric.h / fp8_format.h) ------------------ */

/* The scalar conversions are numeric.h / fp8_format.h themselves (host + device under
 * nvcc): dsc_f32_to_bf16, dsc_bf16_to_f32, dsc_f32_to_e4m3, dsc_e4m3_to_f32. */

/* ---- cache row layout --------------------------------------------------------------- */

enum { MLA_C_F32 = 0, MLA_C_BF16 = 1, MLA_C_FP8 = 2 };

static int cache_code(dsc_dtype cdt) {
  return cdt == DSC_DTYPE_FLOAT32 ? MLA_C_F32 : cdt == DSC_DTYPE_BFLOAT16 ? MLA_C_BF16 : MLA_C_FP8;
}

/* Byte offset of the fp8 scales (round4(R)), as fp8_scale_off in cpu/mla.c. */
__host__ __device__ __forceinline__ int64_t fp8_scale_off(int64_t R) { return (R + 3) & ~(int64_t)3; }

/* Value d (0 <= d < R + dr) of one cache row, widened to float32 exactly as row_load:
 * fp8 latent = decode(byte) * scale (one float multiply). so = scale offset, nb = #scales. */
__device__ __forceinline__ float cache_elem(int code, const unsigned char *row /* [row_bytes] */,
                                            int64_t R, int64_t d, int64_t so, int64_t nb) {
  if (code == MLA_C_F32) return ((const float *)row)[d];
  if (code == MLA_C_BF16) return dsc_bf16_to_f32(((const uint16_t *)row)[d]);
  if (d < R) return dsc_e4m3_to_f32(row[d]) * *(const float *)(row + so + (d >> 7) * 4);
  return dsc_bf16_to_f32(*(const uint16_t *)(row + so + nb * 4 + 2 * (d - R)));
}

/* ---- copy_cols ---------------------------------------------------------------------- */

__global__ void mla_copy_cols_kernel(int64_t rows, int64_t C, const float *__restrict__ src,
                                     int64_t lds, float *__restrict__ dst, int64_t ldd) {
  const int64_t n = rows * C, stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t r = i / C, c = i % C;
    dst[r * ldd + c] = src[r * lds + c];
  }
}

extern "C" dsc_status dsc_cuda_mla_copy_cols(dsc_context *ctx, int64_t rows, int64_t C,
                                             const float *src /* [rows, lds] */, int64_t lds,
                                             float *dst /* [rows, ldd] */, int64_t ldd) {
  static const char *const FN = "dsc_cuda_mla_copy_cols";
  DSC_CUDA_ENTER(ctx, FN);
  if (rows <= 0 || C <= 0) return DSC_OK;
  mla_copy_cols_kernel<<<dsc_cuda_blocks(rows * C, 256), 256, 0, dsc_cuda_stream(ctx)>>>(
      rows, C, src, lds, dst, ldd);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

/* ---- training attention: shared tile machinery --------------------------------------- */

/* A row set made of two column segments: row i, column d is p0[i*ld0 + d] for d < n0,
 * else p1[i*ld1 + d - n0] (e.g. q nope | q_pe, kv nope | kpe). n1 may be 0. */
struct MlaOp {
  const float *p0;
  int64_t ld0, n0;
  const float *p1;
  int64_t ld1, n1;
};

__device__ __forceinline__ float op_ld(const MlaOp &a, int64_t i, int64_t d) {
  return d < a.n0 ? a.p0[i * a.ld0 + d] : a.p1[i * a.ld1 + (d - a.n0)];
}

/* acc[k] = A[a0 + ty + 8k] . B[b0 + tx] over all n0 + n1 columns (rows >= na / nb read as
 * 0), for thread (tx = lane, ty = warp). Chunks of 32 columns staged in As/Bs; the sum
 * runs in a fixed column order (deterministic). Starts and ends with the smem free. */
__device__ __forceinline__ void tile_dots(const MlaOp &A, int64_t a0, int64_t na, const MlaOp &B,
                                          int64_t b0, int64_t nb, float acc[MLA_RPT],
                                          float (*As)[MLA_TILE + 1], float (*Bs)[MLA_TILE + 1]) {
  const int tid = threadIdx.x, tx = tid & 31, ty = tid >> 5;
  const int64_t D = A.n0 + A.n1;
#pragma unroll
  for (int k = 0; k < MLA_RPT; ++k) acc[k] = 0.0f;
  for (int64_t d0 = 0; d0 < D; d0 += MLA_TILE) {
    for (int e = tid; e < MLA_TILE * MLA_TILE; e += MLA_NT) {
      const int r = e >> 5, dd = e & 31;
      const int64_t d = d0 + dd;
      As[r][dd] = (a0 + r < na && d < D) ? op_ld(A, a0 + r, d) : 0.0f;
      Bs[r][dd] = (b0 + r < nb && d < D) ? op_ld(B, b0 + r, d) : 0.0f;
    }
    __syncthreads();
#pragma unroll 8
    for (int dd = 0; dd < MLA_TILE; ++dd) {
      const float bv = Bs[tx][dd];
#pragma unroll
      for (int k = 0; k < MLA_RPT; ++k) acc[k] = fmaf(As[ty + 8 * k][dd], bv, acc[k]);
    }
    __syncthreads();
  }
}

/* acc rows r = ty + 8k (of a 32-row tile starting at global row x0, rows < nx) get
 * acc = acc * alpha[k] + sum_jj W[r][jj] * M[m0 + jj, c] for every column c < ncol, where
 * M is an MlaOp (rows < nm) staged 32 columns at a time in Bs. Column c of row r lives at
 * out0[r*ld0 + c] for c < n0out, else out1[r*ld1 + c - n0out] (split outputs, e.g. dq|dq_pe).
 * Every (r, c) is owned by one thread (tx = c % 32): no races. Ends with smem free. */
__device__ __forceinline__ void tile_accum(float *out0, int64_t ld0, int64_t n0out, float *out1,
                                           int64_t ld1, int64_t x0, int64_t nx,
                                           const float alpha[MLA_RPT],
                                           float (*Wt)[MLA_TILE + 1], const MlaOp &M, int64_t m0,
                                           int64_t nm, int64_t ncol, float (*Bs)[MLA_TILE + 1]) {
  const int tid = threadIdx.x, tx = tid & 31, ty = tid >> 5;
  for (int64_t c0 = 0; c0 < ncol; c0 += MLA_TILE) {
    __syncthreads(); /* Wt written; earlier readers of Bs done */
    for (int e = tid; e < MLA_TILE * MLA_TILE; e += MLA_NT) {
      const int jj = e >> 5, cc = e & 31;
      Bs[jj][cc] = (m0 + jj < nm && c0 + cc < ncol) ? op_ld(M, m0 + jj, c0 + cc) : 0.0f;
    }
    __syncthreads();
    const int64_t c = c0 + tx;
    if (c < ncol) {
#pragma unroll
      for (int k = 0; k < MLA_RPT; ++k) {
        const int r = ty + 8 * k;
        if (x0 + r >= nx) continue;
        float *p = c < n0out ? out0 + r * ld0 + c : out1 + r * ld1 + (c - n0out);
        float v = *p * alpha[k];
#pragma unroll 8
        for (int jj = 0; jj < MLA_TILE; ++jj) v = fmaf(Wt[r][jj], Bs[jj][tx], v);
        *p = v;
      }
    }
  }
  __syncthreads();
}

/* Zero the (r, c) elements this thread owns in tile_accum's mapping. */
__device__ __forceinline__ void tile_zero(float *out0, int64_t ld0, int64_t n0out, float *out1,
                                          int64_t ld1, int64_t x0, int64_t nx, int64_t ncol) {
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
  for (int64_t c = tx; c < ncol; c += MLA_TILE)
    for (int k = 0; k < MLA_RPT; ++k) {
      const int r = ty + 8 * k;
      if (x0 + r >= nx) continue;
      if (c < n0out)
        out0[r * ld0 + c] = 0.0f;
      else
        out1[r * ld1 + (c - n0out)] = 0.0f;
    }
}

/* ---- training attention: forward ------------------------------------------------------ */

/* One block per (b, h, query tile) (grid-stride). Dynamic smem: [TQ, dv] accumulator when
 * acc_smem, else the accumulator is o itself (rows owned by this block). */
__global__ void __launch_bounds__(MLA_NT)
    mla_fwd_kernel(int64_t B, int64_t T, int64_t H, int64_t dn, int64_t dr, int64_t dv,
                   float scale, const float *__restrict__ q /* [B,T,H,dqk] */,
                   const float *__restrict__ q_pe /* [B,T,H,dr] */,
                   const float *__restrict__ kv /* [B,T,H,dkv] */,
                   const float *__restrict__ kpe /* [B,T,dr] */, float *o /* [B,T,H,dv] */,
                   float *__restrict__ lse /* [B,H,T] */, int acc_smem) {
  __shared__ float As[MLA_TILE][MLA_TILE + 1], Bs[MLA_TILE][MLA_TILE + 1],
      Ps[MLA_TILE][MLA_TILE + 1];
  extern __shared__ float mla_dyn[]; /* [TQ, dv] when acc_smem */
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
  const int64_t dqk = dn + dr, dkv = dn + dv;
  const int64_t nqt = (T + MLA_TILE - 1) / MLA_TILE, ntask = B * H * nqt;
  for (int64_t task = blockIdx.x; task < ntask; task += gridDim.x) {
    const int64_t qt = nqt - 1 - task % nqt; /* longest (last) query tiles first */
    const int64_t bh = task / nqt, b = bh / H, h = bh % H;
    const int64_t q0 = qt * MLA_TILE, base = b * T * H + h; /* row t of (b,h): base + t*H */
    const MlaOp Q = {q + base * dqk, H * dqk, dn, q_pe + base * dr, H * dr, dr};
    const MlaOp K = {kv + base * dkv, H * dkv, dn, kpe + b * T * dr, dr, dr};
    const MlaOp V = {kv + base * dkv + dn, H * dkv, dv, nullptr, 0, 0};
    float *O = o + (base + q0 * H) * dv; /* row r of the tile: O + r*H*dv */
    float *acc = acc_smem ? mla_dyn : O;
    const int64_t lda = acc_smem ? dv : H * dv;
    float m[MLA_RPT], l[MLA_RPT], al[MLA_RPT];
    for (int k = 0; k < MLA_RPT; ++k) {
      m[k] = -INFINITY;
      l[k] = 0.0f;
    }
    tile_zero(acc, lda, dv, nullptr, 0, q0, T, dv);
    const int64_t kend = q0 + MLA_TILE < T ? q0 + MLA_TILE : T; /* causal: keys < kend */
    for (int64_t k0 = 0; k0 < kend; k0 += MLA_TILE) {
      float s[MLA_RPT];
      tile_dots(Q, q0, T, K, k0, T, s, As, Bs);
      const int64_t j = k0 + tx;
#pragma unroll
      for (int k = 0; k < MLA_RPT; ++k) {
        const int64_t t = q0 + ty + 8 * k;
        const bool valid = t < T && j <= t;
        const float sv = valid ? scale * s[k] : -INFINITY;
        const float mn = fmaxf(m[k], dsc_warp_reduce(sv, DscMax()));
        /* mn = -inf only for a row with no key yet (or a padding row): nothing to rescale */
        al[k] = mn == -INFINITY ? 1.0f : expf(m[k] - mn);
        const float p = valid ? expf(sv - mn) : 0.0f;
        l[k] = l[k] * al[k] + dsc_warp_reduce(p, DscSum());
        m[k] = mn;
        Ps[ty + 8 * k][tx] = p;
      }
      tile_accum(acc, lda, dv, nullptr, 0, q0, T, al, Ps, V, k0, T, dv, Bs);
    }
    /* o = acc / l, lse = m + log(l); every real row has key 0, so l >= 1 */
    for (int64_t c = tx; c < dv; c += MLA_TILE)
      for (int k = 0; k < MLA_RPT; ++k) {
        const int r = ty + 8 * k;
        if (q0 + r < T) O[r * H * dv + c] = acc[r * lda + c] / l[k];
      }
    if (tx == 0)
      for (int k = 0; k < MLA_RPT; ++k) {
        const int64_t t = q0 + ty + 8 * k;
        if (t < T) lse[(b * H + h) * T + t] = m[k] + logf(l[k]);
      }
    __syncthreads(); /* the shared accumulator is reused by the next task */
  }
}

static unsigned task_grid(int64_t ntask) { return dsc_cuda_blocks(ntask, 1, MLA_MAX_GRID); }

/* The tensor-core training attention (kernels/mla_attn_tc.cu): *done = 0 when it does not
 * apply (head dims above its register tiles, below sm_80, not enough shared memory). */
dsc_status mla_attn_tc_fwd(dsc_context *ctx, int64_t B, int64_t T, int64_t H, int64_t dn,
                           int64_t dr, int64_t dv, float scale, const float *q, const float *q_pe,
                           const float *kv, const float *kpe, float *o, float *lse, int *done);
dsc_status mla_attn_tc_bwd(dsc_context *ctx, int64_t B, int64_t T, int64_t H, int64_t dn,
                           int64_t dr, int64_t dv, float scale, const float *q, const float *q_pe,
                           const float *kv, const float *kpe, const float *o, const float *lse,
                           const float *dout, float *dq, float *dq_pe, float *dkv, float *dkpe,
                           int *done);

extern "C" dsc_status dsc_cuda_mla_attn_fwd(dsc_context *ctx, int64_t B, int64_t T, int64_t H,
                                            int64_t dn, int64_t dr, int64_t dv, int bf16,
                                            float scale, const float *q, const float *q_pe,
                                            const float *kv, const float *kpe, float *o,
                                            float *lse) {
  static const char *const FN = "dsc_cuda_mla_attn_fwd";
  DSC_CUDA_ENTER(ctx, FN);
  if (B * T * H == 0) return DSC_OK;
  if (bf16) {
    int done = 0;
    DSC_TRY(mla_attn_tc_fwd(ctx, B, T, H, dn, dr, dv, scale, q, q_pe, kv, kpe, o, lse, &done));
    if (done) return DSC_OK;
  }
  const size_t accb = (size_t)MLA_TILE * (size_t)dv * sizeof(float);
  const int acc_smem = accb <= MLA_ACC_SMEM_BYTES;
  const int64_t ntask = B * H * ((T + MLA_TILE - 1) / MLA_TILE);
  mla_fwd_kernel<<<task_grid(ntask), MLA_NT, acc_smem ? accb : 0, dsc_cuda_stream(ctx)>>>(
      B, T, H, dn, dr, dv, scale, q, q_pe, kv, kpe, o, lse, acc_smem);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

/* ---- training attention: backward ----------------------------------------------------- */

/* Dd[b,h,t] = dO[b,t,h] . o[b,t,h]; one warp per row, lane partials then a fixed tree. */
__global__ void mla_bwd_d_kernel(int64_t B, int64_t T, int64_t H, int64_t dv,
                                 const float *__restrict__ o, const float *__restrict__ dout,
                                 float *__restrict__ Dd /* [B,H,T] */) {
  const int lane = threadIdx.x & 31;
  const int64_t nrow = B * T * H, nw = ((int64_t)gridDim.x * blockDim.x) >> 5;
  for (int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; row < nrow; row += nw) {
    float s = 0.0f;
    for (int64_t c = lane; c < dv; c += 32) s = fmaf(dout[row * dv + c], o[row * dv + c], s);
    s = dsc_warp_reduce(s, DscSum());
    if (lane == 0) {
      const int64_t h = row % H, bt = row / H, b = bt / T, t = bt % T;
      Dd[(b * H + h) * T + t] = s;
    }
  }
}

/* dK, dV for one (b, h, key tile) per block: loop over the query tiles t >= j. Thread
 * (tx, ty) scores key k0+ty+8k against query q0+tx. dK's rope part goes to the per-head
 * partial dkpe_h. Accumulates in the block-owned output rows. */
__global__ void __launch_bounds__(MLA_NT)
    mla_bwd_dkv_kernel(int64_t B, int64_t T, int64_t H, int64_t dn, int64_t dr, int64_t dv,
                       float scale, const float *__restrict__ q, const float *__restrict__ q_pe,
                       const float *__restrict__ kv, const float *__restrict__ kpe,
                       const float *__restrict__ lse /* [B,H,T] */,
                       const float *__restrict__ Dd /* [B,H,T] */,
                       const float *__restrict__ dout /* [B,T,H,dv] */,
                       float *dkv /* [B,T,H,dkv] */, float *dkpe_h /* [B,H,T,dr] */) {
  __shared__ float As[MLA_TILE][MLA_TILE + 1], Bs[MLA_TILE][MLA_TILE + 1],
      Ps[MLA_TILE][MLA_TILE + 1], Ss[MLA_TILE][MLA_TILE + 1];
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
  const int64_t dqk = dn + dr, dkvw = dn + dv;
  const int64_t nkt = (T + MLA_TILE - 1) / MLA_TILE, ntask = B * H * nkt;
  const float one[MLA_RPT] = {1.0f, 1.0f, 1.0f, 1.0f};
  for (int64_t task = blockIdx.x; task < ntask; task += gridDim.x) {
    const int64_t kt = task % nkt; /* first key tiles have the most queries: first */
    const int64_t bh = task / nkt, b = bh / H, h = bh % H;
    const int64_t k0 = kt * MLA_TILE, base = b * T * H + h;
    const MlaOp Q = {q + base * dqk, H * dqk, dn, q_pe + base * dr, H * dr, dr};
    const MlaOp K = {kv + base * dkvw, H * dkvw, dn, kpe + b * T * dr, dr, dr};
    const MlaOp V = {kv + base * dkvw + dn, H * dkvw, dv, nullptr, 0, 0};
    const MlaOp dO = {dout + base * dv, H * dv, dv, nullptr, 0, 0};
    const float *L = lse + (b * H + h) * T, *Dr = Dd + (b * H + h) * T; /* [T] */
    float *dK = dkv + (base + k0 * H) * dkvw;                /* row r: dK + r*H*dkvw */
    float *dKp = dkpe_h + ((b * H + h) * T + k0) * dr;       /* row r: dKp + r*dr */
    float *dV = dK + dn;
    tile_zero(dK, H * dkvw, dn, dKp, dr, k0, T, dqk);
    tile_zero(dV, H * dkvw, dv, nullptr, 0, k0, T, dv);
    for (int64_t q0 = k0; q0 < T; q0 += MLA_TILE) {
      float s[MLA_RPT], dp[MLA_RPT];
      tile_dots(K, k0, T, Q, q0, T, s, As, Bs);
      tile_dots(V, k0, T, dO, q0, T, dp, As, Bs);
      const int64_t t = q0 + tx;
      const float Lt = t < T ? L[t] : 0.0f, Dt = t < T ? Dr[t] : 0.0f;
#pragma unroll
      for (int k = 0; k < MLA_RPT; ++k) {
        const int64_t j = k0 + ty + 8 * k;
        const bool valid = t < T && j <= t;
        const float p = valid ? expf(scale * s[k] - Lt) : 0.0f;
        Ps[ty + 8 * k][tx] = p;
        Ss[ty + 8 * k][tx] = valid ? scale * p * (dp[k] - Dt) : 0.0f;
      }
      /* dV_j += sum_t P[j][t] dO_t ; dK_j += sum_t dS[j][t] q_t */
      tile_accum(dV, H * dkvw, dv, nullptr, 0, k0, T, one, Ps, dO, q0, T, dv, Bs);
      tile_accum(dK, H * dkvw, dn, dKp, dr, k0, T, one, Ss, Q, q0, T, dqk, Bs);
    }
  }
}

/* dQ for one (b, h, query tile) per block: loop over key tiles j <= t. dq's rope columns
 * are left untouched; the rope part goes to dq_pe. */
__global__ void __launch_bounds__(MLA_NT)
    mla_bwd_dq_kernel(int64_t B, int64_t T, int64_t H, int64_t dn, int64_t dr, int64_t dv,
                      float scale, const float *__restrict__ q, const float *__restrict__ q_pe,
                      const float *__restrict__ kv, const float *__restrict__ kpe,
                      const float *__restrict__ lse, const float *__restrict__ Dd,
                      const float *__restrict__ dout, float *dq /* [B,T,H,dqk] */,
                      float *dq_pe /* [B,T,H,dr] */) {
  __shared__ float As[MLA_TILE][MLA_TILE + 1], Bs[MLA_TILE][MLA_TILE + 1],
      Ss[MLA_TILE][MLA_TILE + 1];
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
  const int64_t dqk = dn + dr, dkvw = dn + dv;
  const int64_t nqt = (T + MLA_TILE - 1) / MLA_TILE, ntask = B * H * nqt;
  const float one[MLA_RPT] = {1.0f, 1.0f, 1.0f, 1.0f};
  for (int64_t task = blockIdx.x; task < ntask; task += gridDim.x) {
    const int64_t qt = nqt - 1 - task % nqt;
    const int64_t bh = task / nqt, b = bh / H, h = bh % H;
    const int64_t q0 = qt * MLA_TILE, base = b * T * H + h;
    const MlaOp Q = {q + base * dqk, H * dqk, dn, q_pe + base * dr, H * dr, dr};
    const MlaOp K = {kv + base * dkvw, H * dkvw, dn, kpe + b * T * dr, dr, dr};
    const MlaOp V = {kv + base * dkvw + dn, H * dkvw, dv, nullptr, 0, 0};
    const MlaOp dO = {dout + base * dv, H * dv, dv, nullptr, 0, 0};
    const float *L = lse + (b * H + h) * T, *Dr = Dd + (b * H + h) * T;
    float *dQ = dq + (base + q0 * H) * dqk, *dQp = dq_pe + (base + q0 * H) * dr;
    float Lr[MLA_RPT], Drow[MLA_RPT];
    for (int k = 0; k < MLA_RPT; ++k) {
      const int64_t t = q0 + ty + 8 * k;
      Lr[k] = t < T ? L[t] : 0.0f;
      Drow[k] = t < T ? Dr[t] : 0.0f;
    }
    tile_zero(dQ, H * dqk, dn, dQp, H * dr, q0, T, dqk);
    const int64_t kend = q0 + MLA_TILE < T ? q0 + MLA_TILE : T;
    for (int64_t k0 = 0; k0 < kend; k0 += MLA_TILE) {
      float s[MLA_RPT], dp[MLA_RPT];
      tile_dots(Q, q0, T, K, k0, T, s, As, Bs);
      tile_dots(dO, q0, T, V, k0, T, dp, As, Bs);
      const int64_t j = k0 + tx;
#pragma unroll
      for (int k = 0; k < MLA_RPT; ++k) {
        const int64_t t = q0 + ty + 8 * k;
        const bool valid = t < T && j <= t;
        const float p = valid ? expf(scale * s[k] - Lr[k]) : 0.0f;
        Ss[ty + 8 * k][tx] = valid ? scale * p * (dp[k] - Drow[k]) : 0.0f;
      }
      /* dq_t += sum_j dS[t][j] k_j (nope -> dq[..., :dn], rope -> dq_pe) */
      tile_accum(dQ, H * dqk, dn, dQp, H * dr, q0, T, one, Ss, K, k0, T, dqk, Bs);
    }
  }
}

/* dkpe[b,j,:] = sum_h dkpe_h[b,h,j,:] in head order (the CPU's order, bit-identical for the
 * same partials). */
__global__ void mla_bwd_dkpe_kernel(int64_t B, int64_t T, int64_t H, int64_t dr,
                                    const float *__restrict__ dkpe_h, float *__restrict__ dkpe) {
  const int64_t n = B * T * dr, stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t b = i / (T * dr), rem = i % (T * dr);
    float d = 0.0f;
    for (int64_t h = 0; h < H; ++h) d += dkpe_h[(b * H + h) * T * dr + rem];
    dkpe[i] = d;
  }
}

extern "C" dsc_status dsc_cuda_mla_attn_bwd(dsc_context *ctx, int64_t B, int64_t T, int64_t H,
                                            int64_t dn, int64_t dr, int64_t dv, int bf16,
                                            float scale, const float *q, const float *q_pe,
                                            const float *kv, const float *kpe, const float *o,
                                            const float *lse, const float *dout, float *dq,
                                            float *dq_pe, float *dkv, float *dkpe) {
  static const char *const FN = "dsc_cuda_mla_attn_bwd";
  DSC_CUDA_ENTER(ctx, FN);
  if (B * T == 0) return DSC_OK;
  cudaStream_t st = dsc_cuda_stream(ctx);
  if (H == 0) { /* no head contributes: dkpe is all zeros (as the CPU's empty sum) */
    DSC_CUDA_TRY(cudaMemsetAsync(dkpe, 0, (size_t)(B * T * dr) * sizeof(float), st), FN);
    return DSC_OK;
  }
  if (bf16) {
    int done = 0;
    DSC_TRY(mla_attn_tc_bwd(ctx, B, T, H, dn, dr, dv, scale, q, q_pe, kv, kpe, o, lse, dout, dq,
                            dq_pe, dkv, dkpe, &done));
    if (done) return DSC_OK;
  }
  const size_t nD = (size_t)(B * H * T);
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, dsc_cuda_round256(nD * sizeof(float)) + nD * (size_t)dr * sizeof(float), &ws));
  float *Dd = (float *)ws;                                                     /* [B,H,T] */
  float *dkpe_h = (float *)((char *)ws + dsc_cuda_round256(nD * sizeof(float))); /* [B,H,T,dr] */
  mla_bwd_d_kernel<<<dsc_cuda_blocks(B * T * H * 32, 256), 256, 0, st>>>(B, T, H, dv, o, dout, Dd);
  DSC_CUDA_CHECK_LAUNCH(FN);
  const int64_t ntask = B * H * ((T + MLA_TILE - 1) / MLA_TILE);
  mla_bwd_dkv_kernel<<<task_grid(ntask), MLA_NT, 0, st>>>(B, T, H, dn, dr, dv, scale, q, q_pe, kv,
                                                          kpe, lse, Dd, dout, dkv, dkpe_h);
  DSC_CUDA_CHECK_LAUNCH(FN);
  mla_bwd_dq_kernel<<<task_grid(ntask), MLA_NT, 0, st>>>(B, T, H, dn, dr, dv, scale, q, q_pe, kv,
                                                         kpe, lse, Dd, dout, dq, dq_pe);
  DSC_CUDA_CHECK_LAUNCH(FN);
  if (dr > 0) {
    mla_bwd_dkpe_kernel<<<dsc_cuda_blocks(B * T * dr, 256), 256, 0, st>>>(B, T, H, dr, dkpe_h, dkpe);
    DSC_CUDA_CHECK_LAUNCH(FN);
  }
  return DSC_OK;
}

/* ---- latent cache write / read --------------------------------------------------------- */

/* FLOAT32 / BFLOAT16 rows: one thread per value. */
__global__ void mla_cache_write_plain_kernel(int code, int64_t R, int64_t dr, int64_t row_bytes,
                                             int64_t n, const int64_t *__restrict__ slots /* [n] */,
                                             const float *__restrict__ ckv /* [n,R] */,
                                             const float *__restrict__ kpe /* [n,dr] */,
                                             unsigned char *pool) {
  const int64_t W = R + dr, tot = n * W, stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < tot; idx += stride) {
    const int64_t i = idx / W, c = idx % W, slot = slots[i];
    if (slot < 0) continue;
    const float v = c < R ? ckv[i * R + c] : kpe[i * dr + (c - R)];
    unsigned char *row = pool + slot * row_bytes;
    if (code == MLA_C_F32)
      ((float *)row)[c] = v;
    else
      ((uint16_t *)row)[c] = dsc_f32_to_bf16(v);
  }
}

/* FLOAT8 rows: one warp per (token, 128-value tile), plus one per token for the bf16 rope
 * part (g == nb). amax is a max (order-free), so the scale equals the CPU's exactly. */
__global__ void mla_cache_write_fp8_kernel(int64_t R, int64_t dr, int64_t row_bytes, int64_t n,
                                           const int64_t *__restrict__ slots,
                                           const float *__restrict__ ckv,
                                           const float *__restrict__ kpe, unsigned char *pool) {
  const int lane = threadIdx.x & 31;
  const int64_t nb = (R + 127) / 128, so = fp8_scale_off(R), items = n * (nb + 1);
  const int64_t nw = ((int64_t)gridDim.x * blockDim.x) >> 5;
  for (int64_t it = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; it < items; it += nw) {
    const int64_t i = it / (nb + 1), g = it % (nb + 1), slot = slots[i];
    if (slot < 0) continue; /* warp-uniform */
    unsigned char *row = pool + slot * row_bytes;
    if (g < nb) {
      const int64_t c0 = g * 128, c1 = c0 + 128 < R ? c0 + 128 : R;
      float amax = 0.0f;
      for (int64_t c = c0 + lane; c < c1; c += 32) amax = fmaxf(amax, fabsf(ckv[i * R + c]));
      amax = dsc_warp_reduce(amax, DscMax());
      const float sc = fmaxf(amax, 1e-4f) / 448.0f; /* DSC_FP8_E4M3_MAX, IEEE division */
      for (int64_t c = c0 + lane; c < c1; c += 32) row[c] = dsc_f32_to_e4m3(ckv[i * R + c] / sc);
      if (lane == 0) *(float *)(row + so + g * 4) = sc;
    } else {
      for (int64_t c = lane; c < dr; c += 32)
        *(uint16_t *)(row + so + nb * 4 + 2 * c) = dsc_f32_to_bf16(kpe[i * dr + c]);
    }
  }
}

__global__ void mla_cache_read_kernel(int code, int64_t R, int64_t dr, int64_t row_bytes, int64_t n,
                                      const int64_t *__restrict__ slots,
                                      const unsigned char *__restrict__ pool,
                                      float *__restrict__ ckv, float *__restrict__ kpe) {
  const int64_t W = R + dr, tot = n * W, stride = (int64_t)gridDim.x * blockDim.x;
  const int64_t nb = (R + 127) / 128, so = fp8_scale_off(R);
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < tot; idx += stride) {
    const int64_t i = idx / W, c = idx % W, slot = slots[i];
    if (slot < 0) continue;
    const float v = cache_elem(code, pool + slot * row_bytes, R, c, so, nb);
    if (c < R)
      ckv[i * R + c] = v;
    else
      kpe[i * dr + (c - R)] = v;
  }
}

extern "C" dsc_status dsc_cuda_mla_cache_write(dsc_context *ctx, dsc_dtype cdt, int64_t R,
                                               int64_t dr, int64_t row_bytes, int64_t n,
                                               const int64_t *slots /* [n] device */,
                                               const float *ckv, const float *kpe, void *pool) {
  static const char *const FN = "dsc_cuda_mla_cache_write";
  DSC_CUDA_ENTER(ctx, FN);
  if (n <= 0 || R + dr <= 0) return DSC_OK;
  const int64_t *dslots = slots;
  cudaStream_t st = dsc_cuda_stream(ctx);
  const int code = cache_code(cdt);
  if (code == MLA_C_FP8) {
    const int64_t items = n * ((R + 127) / 128 + 1);
    mla_cache_write_fp8_kernel<<<dsc_cuda_blocks(items * 32, 256), 256, 0, st>>>(
        R, dr, row_bytes, n, dslots, ckv, kpe, (unsigned char *)pool);
  } else {
    mla_cache_write_plain_kernel<<<dsc_cuda_blocks(n * (R + dr), 256), 256, 0, st>>>(
        code, R, dr, row_bytes, n, dslots, ckv, kpe, (unsigned char *)pool);
  }
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_mla_cache_read(dsc_context *ctx, dsc_dtype cdt, int64_t R, int64_t dr,
                                              int64_t row_bytes, int64_t n,
                                              const int64_t *slots /* [n] device */, const void *pool,
                                              float *ckv, float *kpe) {
  static const char *const FN = "dsc_cuda_mla_cache_read";
  DSC_CUDA_ENTER(ctx, FN);
  if (n <= 0 || R + dr <= 0) return DSC_OK;
  const int64_t *dslots = slots;
  mla_cache_read_kernel<<<dsc_cuda_blocks(n * (R + dr), 256), 256, 0, dsc_cuda_stream(ctx)>>>(
      cache_code(cdt), R, dr, row_bytes, n, dslots, (const unsigned char *)pool, ckv, kpe);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

/* ---- absorbed decode attention over the paged cache ------------------------------------ */

/* One block per (row r, head group g, key split sp); warp ty = head g*HG + ty, lane tx =
 * key of the current 32-key tile. nsplit == 1: o_lat is finalized here (acc in smem when
 * acc_smem, else in o_lat). nsplit > 1: writes the split's acc (part [NQ,H,nsplit,R]) and
 * (m, l) (ml [NQ,H,nsplit,2]) for mla_decode_combine (kernels/mla_decode_tc.cu). */
__global__ void __launch_bounds__(MLA_NT)
    mla_decode_kernel(int code, int64_t R, int64_t dr, int64_t row_bytes, int64_t bs,
                      const unsigned char *__restrict__ pool, int64_t NQ, int64_t H, float scale,
                      const float *__restrict__ q_lat /* [NQ,H,R] */,
                      const float *__restrict__ q_pe /* [NQ,H,dr] */,
                      const int64_t *__restrict__ kv_len /* [NQ] */,
                      const int64_t *__restrict__ table_off /* [NQ] */,
                      const int32_t *__restrict__ tables, float *o_lat /* [NQ,H,R] */,
                      float *part, float *ml, int64_t nsplit, int64_t CH, int acc_smem) {
  __shared__ float Qc[MLA_HG][MLA_TILE + 1], Kc[MLA_TILE][MLA_TILE + 1], Ps[MLA_HG][MLA_TILE + 1];
  __shared__ int64_t slot_s[MLA_TILE];
  extern __shared__ float mla_dyn[]; /* [HG, R] when acc_smem */
  const int tid = threadIdx.x, tx = tid & 31, ty = tid >> 5;
  const int64_t W = R + dr, nb = (R + 127) / 128, so = fp8_scale_off(R);
  const int64_t ngrp = (H + MLA_HG - 1) / MLA_HG, ntask = NQ * ngrp * nsplit;
  for (int64_t task = blockIdx.x; task < ntask; task += gridDim.x) {
    const int64_t sp = task % nsplit, rg = task / nsplit, g = rg % ngrp, r = rg / ngrp;
    const int64_t h = g * MLA_HG + ty;
    const bool hv = h < H;
    const int64_t S = kv_len[r], j0 = sp * CH, j1 = j0 + CH < S ? j0 + CH : S;
    float *target = nsplit == 1 ? o_lat + (r * H + (hv ? h : 0)) * R
                                : part + ((r * H + (hv ? h : 0)) * nsplit + sp) * R; /* [R] */
    float *acc = acc_smem ? mla_dyn + ty * R : target;
    if (hv)
      for (int64_t c = tx; c < R; c += 32) acc[c] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int64_t k0 = j0; k0 < j1; k0 += MLA_TILE) {
      __syncthreads(); /* previous tile's readers of slot_s / Kc / Ps are done */
      if (tid < MLA_TILE) {
        const int64_t j = k0 + tid;
        slot_s[tid] = j < j1 ? (int64_t)tables[table_off[r] + j / bs] * bs + j % bs : -1;
      }
      /* scores: s[h][j] = q_h . row_j over W columns in chunks of 32 */
      float s = 0.0f;
      for (int64_t d0 = 0; d0 < W; d0 += MLA_TILE) {
        {
          const int hh = tid >> 5, dd = tid & 31; /* 256 threads = HG x 32 */
          const int64_t hq = g * MLA_HG + hh, d = d0 + dd;
          Qc[hh][dd] = (hq < H && d < W)
                           ? (d < R ? q_lat[(r * H + hq) * R + d] : q_pe[(r * H + hq) * dr + (d - R)])
                           : 0.0f;
        }
        __syncthreads(); /* slot_s ready (first chunk) */
        for (int e = tid; e < MLA_TILE * MLA_TILE; e += MLA_NT) {
          const int jj = e >> 5, dd = e & 31;
          const int64_t slot = slot_s[jj], d = d0 + dd;
          Kc[jj][dd] = (slot >= 0 && d < W) ? cache_elem(code, pool + slot * row_bytes, R, d, so, nb) : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int dd = 0; dd < MLA_TILE; ++dd) s = fmaf(Qc[ty][dd], Kc[tx][dd], s);
        __syncthreads();
      }
      const bool valid = k0 + tx < j1;
      const float sv = valid ? scale * s : -INFINITY;
      const float mn = fmaxf(m, dsc_warp_reduce(sv, DscMax())); /* finite: key k0 is valid */
      const float alpha = mn == -INFINITY ? 1.0f : expf(m - mn);
      const float p = valid ? expf(sv - mn) : 0.0f;
      l = l * alpha + dsc_warp_reduce(p, DscSum());
      m = mn;
      Ps[ty][tx] = p;
      /* acc = acc * alpha + sum_j p_j ckv_j, 32 latent columns at a time */
      for (int64_t c0 = 0; c0 < R; c0 += MLA_TILE) {
        __syncthreads();
        for (int e = tid; e < MLA_TILE * MLA_TILE; e += MLA_NT) {
          const int jj = e >> 5, cc = e & 31;
          const int64_t slot = slot_s[jj], c = c0 + cc;
          Kc[jj][cc] = (slot >= 0 && c < R) ? cache_elem(code, pool + slot * row_bytes, R, c, so, nb) : 0.0f;
        }
        __syncthreads();
        const int64_t c = c0 + tx;
        if (hv && c < R) {
          float v = acc[c] * alpha;
#pragma unroll 8
          for (int jj = 0; jj < MLA_TILE; ++jj) v = fmaf(Ps[ty][jj], Kc[jj][tx], v);
          acc[c] = v;
        }
      }
    }
    if (hv) {
      if (nsplit == 1) { /* o_lat = acc * (1/l), as the CPU; a row with no keys is 0 */
        const float inv = S > 0 ? 1.0f / l : 0.0f;
        for (int64_t c = tx; c < R; c += 32) target[c] = S > 0 ? acc[c] * inv : 0.0f;
      } else {
        if (acc_smem)
          for (int64_t c = tx; c < R; c += 32) target[c] = acc[c];
        if (tx == 0) {
          float *mlp = ml + ((r * H + h) * nsplit + sp) * 2;
          mlp[0] = m;
          mlp[1] = l;
        }
      }
    }
    __syncthreads(); /* the shared accumulator is reused by the next task */
  }
}

/* The tensor-core decode (kernels/mla_decode_tc.cu): *done = 0 when it does not apply
 * (float32 cache, R above its register tile, not enough shared memory). */
dsc_status mla_decode_tc(dsc_context *ctx, dsc_dtype cdt, int64_t R, int64_t dr, int64_t row_bytes,
                         int64_t block_size, const void *pool, int64_t NQ, int64_t H,
                         int64_t max_kv, float scale, const float *q_lat, const float *q_pe,
                         const int64_t *kv_len, const int64_t *table_off, const int32_t *tables,
                         float *o_lat, int *done);
/* The merge of split partials (kernels/mla_decode_tc.cu, mla_merge_* of mla_tile.cuh). */
dsc_status mla_decode_combine(dsc_context *ctx, int64_t NQ, int64_t H, int64_t R, int64_t nsplit,
                              const float *part /* [NQ,H,nsplit,R] */,
                              const float *ml /* [NQ,H,nsplit,2] */, float *o_lat);

extern "C" dsc_status dsc_cuda_mla_decode_attn(dsc_context *ctx, dsc_dtype cdt, int64_t R,
                                               int64_t dr, int64_t row_bytes, int64_t block_size,
                                               const void *pool, int64_t NQ, int64_t H,
                                               int64_t max_kv, float scale, const float *q_lat,
                                               const float *q_pe,
                                               const int64_t *kv_len /* [NQ] device */,
                                               const int64_t *table_off /* [NQ] device */,
                                               const int32_t *tables /* device */, float *o_lat) {
  static const char *const FN = "dsc_cuda_mla_decode_attn";
  DSC_CUDA_ENTER(ctx, FN);
  if (NQ <= 0 || H <= 0 || R <= 0) return DSC_OK;
  int done = 0;
  DSC_TRY(mla_decode_tc(ctx, cdt, R, dr, row_bytes, block_size, pool, NQ, H, max_kv, scale, q_lat,
                        q_pe, kv_len, table_off, tables, o_lat, &done));
  if (done) return DSC_OK;
  /* the float32 SIMT path (exact float32 scores; float32 caches and wide R). Key splits only
   * when (rows x head groups) cannot fill the GPU; partials stay small */
  const int64_t maxS = max_kv;
  const int64_t ngrp = (H + MLA_HG - 1) / MLA_HG, base = NQ * ngrp;
  const int64_t sm = dsc_cuda_st(ctx)->sm_count > 0 ? dsc_cuda_st(ctx)->sm_count : 1;
  int64_t nsplit = 1, CH = maxS > 0 ? maxS : 1;
  if (base < 2 * sm && maxS > 256) {
    const int64_t want = (2 * sm + base - 1) / base;
    CH = ((maxS + want - 1) / want + MLA_TILE - 1) / MLA_TILE * MLA_TILE;
    if (CH < 128) CH = 128;
    nsplit = (maxS + CH - 1) / CH;
    if (nsplit <= 1) {
      nsplit = 1;
      CH = maxS;
    }
  }
  const size_t b_part = nsplit > 1 ? dsc_cuda_round256((size_t)(NQ * H * nsplit * R) * sizeof(float)) : 0;
  const size_t b_ml = nsplit > 1 ? (size_t)(NQ * H * nsplit * 2) * sizeof(float) : 0;
  float *d_part = nullptr, *d_ml = nullptr;
  if (nsplit > 1) {
    void *ws = NULL;
    DSC_TRY(dsc_workspace(ctx, b_part + b_ml, &ws));
    d_part = (float *)ws;
    d_ml = (float *)((char *)ws + b_part);
  }
  const size_t accb = (size_t)MLA_HG * (size_t)R * sizeof(float);
  const int acc_smem = accb <= MLA_ACC_SMEM_BYTES;
  cudaStream_t st = dsc_cuda_stream(ctx);
  mla_decode_kernel<<<task_grid(base * nsplit), MLA_NT, acc_smem ? accb : 0, st>>>(
      cache_code(cdt), R, dr, row_bytes, block_size, (const unsigned char *)pool, NQ, H, scale,
      q_lat, q_pe, kv_len, table_off, tables, o_lat, d_part, d_ml, nsplit, CH, acc_smem);
  DSC_CUDA_CHECK_LAUNCH(FN);
  if (nsplit > 1) DSC_TRY(mla_decode_combine(ctx, NQ, H, R, nsplit, d_part, d_ml, o_lat));
  return DSC_OK;
}
