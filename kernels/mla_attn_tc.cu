/*
 * kernels/mla_attn_tc.cu -- MLA training attention on tensor cores: FlashAttention-2 tiling
 * with mma.sync m16n8k16 (BF16 in, FP32 accumulate; sm_80 and later), causal, forward and
 * backward. The float32 SIMT kernels of kernels/mla.cu remain the default; this path runs
 * when the ops layer asks for BF16 attention compute (see ops/mla.c).
 *
 * Legend: B batch, T tokens, H heads, dn / dr / dv nope / rope / value head dims, dqk =
 * dn + dr, Dk = dqk and Dv = dv rounded up to 16 (zero columns), BQ = BK = 64 (query rows /
 * keys per tile), 4 warps of 16 rows each.
 *
 * Inputs are float32 (the layer's buffers); the launchers pack them once into a BF16
 * workspace per (b, h): Qb [B,H,T,Dk] = q nope | q_pe, Kb [B,H,T,Dk] = kv nope | kpe (the
 * shared rope key), Vb [B,H,T,Dv] (and dOb in the backward). Rounding: q, k, v, dO and the
 * probabilities P (and dS) entering a product are rounded to BF16; scores, softmax, lse,
 * D = rowsum(dO * o) (float32 inputs) and every accumulation are FP32.
 *
 * forward (CTA per (b, h, query block), last blocks first): Q tile in shared memory; per key
 *   block up to the diagonal: S = Q K^T per warp (16 x 64 in registers), mask j > t, online
 *   softmax in FP32 (row max over the lane quad), O = alpha O + P V with P taken straight
 *   from the S registers as the A operand (mla_c2a_*); o = O / l, lse = m + log l.
 * backward (standard recompute, no atomics): D_t = dO_t . o_t (FP32); per key block (CTA),
 *   loop over query blocks t >= j: P^T = exp(scale K Q^T - lse), dV += P^T dO, dP^T = V dO^T,
 *   dS^T = P^T (dP^T - D), dK += dS^T Q; per query block (CTA), loop over key blocks j <= t:
 *   the same P and dS, dQ += dS K. dK's rope part goes to per-head partials summed in head
 *   order (the kpe key is shared by the heads). dQ and dK carry the softmax scale.
 * Limits (else the SIMT path): Dk <= 192 and Dv <= 128 (the register accumulators), sm_80+.
 * Fragment ownership, the C-to-A reuse and the causal ranges are mla_tile.cuh's functions,
 * tested on the CPU (tests/c/test_mla_tile.c simulates the forward's tile loop).
 */
#include <math.h>

#include "common.cuh"
#include "mla_mma.cuh"
#include "mla_tile.cuh"
#include "numeric.h"

#define AT_B 64        /* query rows and keys per tile */
#define AT_NW 4        /* warps: 16 rows each */
#define AT_NT (AT_NW * 32)
#define AT_DK_MAX 192  /* dK / dQ accumulators: Dk / 8 n-tiles */
#define AT_DV_MAX 128  /* O / dV accumulators: Dv / 8 n-tiles */
#define AT_MAX_GRID 65535

/* The A fragment of k step ks from two C tiles (c[2ks], c[2ks+1]) rounded to BF16. */
__device__ __forceinline__ void at_c2a(uint32_t a[4], const float (*c)[4], int ks) {
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int i = 2 * j;
    const uint32_t lo = dsc_f32_to_bf16(c[2 * ks + mla_c2a_tile(i)][mla_c2a_elem(i)]);
    const uint32_t hi = dsc_f32_to_bf16(c[2 * ks + mla_c2a_tile(i + 1)][mla_c2a_elem(i + 1)]);
    a[j] = lo | (hi << 16);
  }
}

/* Rows [r0, r0+64) of a [T, D] BF16 matrix into shared [64, ld] (rows >= T zero), 16 bytes
 * at a time (D is a multiple of 16, rows and ld keep 16-byte alignment). */
__device__ __forceinline__ void at_load_tile(uint16_t *s, int ld, const uint16_t *g, int64_t r0,
                                             int64_t T, int D) {
  const int vpr = D / 8;
  for (int e = threadIdx.x; e < AT_B * vpr; e += blockDim.x) {
    const int r = e / vpr, v = e % vpr;
    uint4 x = make_uint4(0u, 0u, 0u, 0u);
    if (r0 + r < T) x = *(const uint4 *)(g + (r0 + r) * D + v * 8);
    *(uint4 *)(s + r * ld + v * 8) = x;
  }
}

/* Max / sum over the 4 lanes of a quad (they hold one row's columns). */
__device__ __forceinline__ float at_quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float at_quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

/* ---- packing -------------------------------------------------------------------------- */

__global__ void at_pack_kernel(int64_t B, int64_t T, int64_t H, int64_t dn, int64_t dr,
                               int64_t dv, int Dk, int Dv, const float *__restrict__ q,
                               const float *__restrict__ q_pe, const float *__restrict__ kv,
                               const float *__restrict__ kpe, const float *__restrict__ dout,
                               uint16_t *__restrict__ Qb, uint16_t *__restrict__ Kb,
                               uint16_t *__restrict__ Vb, uint16_t *__restrict__ dOb) {
  const int64_t dqk = dn + dr, dkv = dn + dv, rows = B * H * T;
  const int64_t nk = rows * Dk, nv = rows * Dv, stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < nk + nv; i += stride) {
    const int64_t D = i < nk ? Dk : Dv, ii = i < nk ? i : i - nk;
    const int64_t bh = ii / (T * D), t = ii / D % T, d = ii % D, b = bh / H, h = bh % H;
    const int64_t row = (b * T + t) * H + h; /* [B,T,H] row of the layer's buffers */
    if (i < nk) {
      Qb[ii] = dsc_f32_to_bf16(d < dn ? q[row * dqk + d] : d < dqk ? q_pe[row * dr + d - dn] : 0.0f);
      Kb[ii] = dsc_f32_to_bf16(d < dn ? kv[row * dkv + d]
                               : d < dqk ? kpe[(b * T + t) * dr + d - dn] : 0.0f);
    } else {
      Vb[ii] = dsc_f32_to_bf16(d < dv ? kv[row * dkv + dn + d] : 0.0f);
      if (dOb) dOb[ii] = dsc_f32_to_bf16(d < dv ? dout[row * dv + d] : 0.0f);
    }
  }
}

/* ---- forward -------------------------------------------------------------------------- */

__global__ void __launch_bounds__(AT_NT)
    at_fwd_kernel(int64_t B, int64_t T, int64_t H, int Dk, int Dv, int64_t dv, float scale,
                  const uint16_t *__restrict__ Qb, const uint16_t *__restrict__ Kb,
                  const uint16_t *__restrict__ Vb, float *__restrict__ o /* [B,T,H,dv] */,
                  float *__restrict__ lse /* [B,H,T] */) {
  extern __shared__ __align__(16) unsigned char at_smem[];
  const int ldk = Dk + 8, ldv = Dv + 8, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint16_t *Qs = (uint16_t *)at_smem, *Ks = Qs + AT_B * ldk, *Vs = Ks + AT_B * ldk;
  const int nvt = Dv / 8;
  const int64_t nqb = (T + AT_B - 1) / AT_B, ntask = B * H * nqb;
  for (int64_t task = blockIdx.x; task < ntask; task += gridDim.x) {
    const int64_t qb = nqb - 1 - task % nqb, bh = task / nqb, b = bh / H, h = bh % H;
    const int64_t q0 = qb * AT_B, r0 = q0 + warp * 16; /* this warp's first query row */
    const uint16_t *Qg = Qb + bh * T * Dk, *Kg = Kb + bh * T * Dk, *Vg = Vb + bh * T * Dv;
    __syncthreads();
    at_load_tile(Qs, ldk, Qg, q0, T, Dk);
    float O[AT_DV_MAX / 8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
    for (int vt = 0; vt < AT_DV_MAX / 8; ++vt)
#pragma unroll
      for (int e = 0; e < 4; ++e) O[vt][e] = 0.0f;
    const int64_t kend = mla_causal_kend(q0, AT_B, T);
    for (int64_t k0 = 0; k0 < kend; k0 += AT_B) {
      __syncthreads();
      at_load_tile(Ks, ldk, Kg, k0, T, Dk);
      at_load_tile(Vs, ldv, Vg, k0, T, Dv);
      __syncthreads();
      float S[8][4];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) S[nt][e] = 0.0f;
      for (int kk = 0; kk < Dk; kk += 16) {
        uint32_t a[4];
        mla_load_a(a, Qs + warp * 16 * ldk + kk, ldk, lane);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
          uint32_t bq[2];
          mla_load_bt(bq, Ks + nt * 8 * ldk + kk, ldk, lane);
          mla_mma(S[nt], a, bq);
        }
      }
      float tmax[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t t = r0 + mla_fc_row(lane, e), j = k0 + nt * 8 + mla_fc_col(lane, e);
          S[nt][e] = (j <= t && j < T) ? scale * S[nt][e] : -INFINITY;
          tmax[e >> 1] = fmaxf(tmax[e >> 1], S[nt][e]);
        }
      float alpha[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        m[r] = mla_online_max(m[r], at_quad_max(tmax[r]), &alpha[r]);
        l[r] *= alpha[r]; /* this lane's part of the row sum */
      }
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          S[nt][e] = mla_prob(S[nt][e], m[e >> 1]);
          l[e >> 1] += S[nt][e];
        }
#pragma unroll
      for (int vt = 0; vt < AT_DV_MAX / 8; ++vt)
#pragma unroll
        for (int e = 0; e < 4; ++e) O[vt][e] *= alpha[e >> 1];
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) {
        uint32_t a[4];
        at_c2a(a, S, ks);
#pragma unroll
        for (int vt = 0; vt < AT_DV_MAX / 8; ++vt) {
          if (vt >= nvt) continue;
          uint32_t bv[2];
          mla_load_b(bv, Vs + ks * 16 * ldv + vt * 8, ldv, lane);
          mla_mma(O[vt], a, bv);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) l[r] = at_quad_sum(l[r]); /* every real row has key 0: l >= 1 */
#pragma unroll
    for (int vt = 0; vt < AT_DV_MAX / 8; ++vt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t t = r0 + mla_fc_row(lane, e), c = vt * 8 + mla_fc_col(lane, e);
        if (vt < nvt && t < T && c < dv) o[((b * T + t) * H + h) * dv + c] = O[vt][e] * (1.0f / l[e >> 1]);
      }
    if ((lane & 3) == 0)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t t = r0 + mla_fc_row(lane, 2 * r);
        if (t < T) lse[(b * H + h) * T + t] = m[r] + logf(l[r]);
      }
  }
}

/* ---- backward ------------------------------------------------------------------------- */

/* Dd[b,h,t] = dO[b,t,h] . o[b,t,h] in FP32 (the float32 buffers); one warp per row. */
__global__ void at_bwd_d_kernel(int64_t B, int64_t T, int64_t H, int64_t dv,
                                const float *__restrict__ o, const float *__restrict__ dout,
                                float *__restrict__ Dd /* [B,H,T] */) {
  const int lane = threadIdx.x & 31;
  const int64_t nrow = B * T * H, nw = ((int64_t)gridDim.x * blockDim.x) >> 5;
  for (int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; row < nrow; row += nw) {
    float s = 0.0f;
    for (int64_t c = lane; c < dv; c += 32) s = fmaf(dout[row * dv + c], o[row * dv + c], s);
    s = dsc_warp_reduce(s, DscSum());
    if (lane == 0) {
      const int64_t h = row % H, bt = row / H;
      Dd[((bt / T) * H + h) * T + bt % T] = s;
    }
  }
}

/* dK, dV of one (b, h, key block) per CTA; warp w owns keys k0 + 16w .. +16. Transposed
 * tiles: rows are keys, columns queries. */
__global__ void __launch_bounds__(AT_NT)
    at_bwd_dkv_kernel(int64_t B, int64_t T, int64_t H, int Dk, int Dv, int64_t dn, int64_t dr,
                      int64_t dv, float scale, const uint16_t *__restrict__ Qb,
                      const uint16_t *__restrict__ Kb, const uint16_t *__restrict__ Vb,
                      const uint16_t *__restrict__ dOb, const float *__restrict__ lse,
                      const float *__restrict__ Dd, float *__restrict__ dkv /* [B,T,H,dn+dv] */,
                      float *__restrict__ dkpe_h /* [B,H,T,dr] */) {
  extern __shared__ __align__(16) unsigned char at_smem[];
  const int ldk = Dk + 8, ldv = Dv + 8, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float *lse_s = (float *)at_smem, *D_s = lse_s + AT_B; /* [64] each: the query tile's */
  uint16_t *Ks = (uint16_t *)(D_s + AT_B), *Qs = Ks + AT_B * ldk, *Vs = Qs + AT_B * ldk,
           *dOs = Vs + AT_B * ldv;
  const int nvt = Dv / 8, nkt = Dk / 8;
  const int64_t nkb = (T + AT_B - 1) / AT_B, ntask = B * H * nkb, dkvw = dn + dv;
  for (int64_t task = blockIdx.x; task < ntask; task += gridDim.x) {
    const int64_t kb = task % nkb, bh = task / nkb, b = bh / H, h = bh % H;
    const int64_t k0 = kb * AT_B, j0 = k0 + warp * 16;
    const uint16_t *Qg = Qb + bh * T * Dk, *Kg = Kb + bh * T * Dk, *Vg = Vb + bh * T * Dv,
                   *dOg = dOb + bh * T * Dv;
    __syncthreads();
    at_load_tile(Ks, ldk, Kg, k0, T, Dk);
    at_load_tile(Vs, ldv, Vg, k0, T, Dv);
    float dV[AT_DV_MAX / 8][4], dK[AT_DK_MAX / 8][4];
#pragma unroll
    for (int i = 0; i < AT_DV_MAX / 8; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) dV[i][e] = 0.0f;
#pragma unroll
    for (int i = 0; i < AT_DK_MAX / 8; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) dK[i][e] = 0.0f;
    for (int64_t q0 = k0; q0 < T; q0 += AT_B) { /* causal: queries t >= j >= k0 */
      __syncthreads();
      at_load_tile(Qs, ldk, Qg, q0, T, Dk);
      at_load_tile(dOs, ldv, dOg, q0, T, Dv);
      if (threadIdx.x < AT_B) {
        const int64_t t = q0 + threadIdx.x;
        lse_s[threadIdx.x] = t < T ? lse[bh * T + t] : INFINITY;
        D_s[threadIdx.x] = t < T ? Dd[bh * T + t] : 0.0f;
      }
      __syncthreads();
      float P[8][4], dP[8][4];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) P[nt][e] = dP[nt][e] = 0.0f;
      for (int kk = 0; kk < Dk; kk += 16) { /* S^T = K Q^T */
        uint32_t a[4];
        mla_load_a(a, Ks + warp * 16 * ldk + kk, ldk, lane);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
          uint32_t bq[2];
          mla_load_bt(bq, Qs + nt * 8 * ldk + kk, ldk, lane);
          mla_mma(P[nt], a, bq);
        }
      }
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t j = j0 + mla_fc_row(lane, e);
          const int tq = nt * 8 + mla_fc_col(lane, e);
          const int64_t t = q0 + tq;
          P[nt][e] = (j <= t && t < T && j < T) ? expf(scale * P[nt][e] - lse_s[tq]) : 0.0f;
        }
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) { /* dV += P^T dO */
        uint32_t a[4];
        at_c2a(a, P, ks);
#pragma unroll
        for (int vt = 0; vt < AT_DV_MAX / 8; ++vt) {
          if (vt >= nvt) continue;
          uint32_t bo[2];
          mla_load_b(bo, dOs + ks * 16 * ldv + vt * 8, ldv, lane);
          mla_mma(dV[vt], a, bo);
        }
      }
      for (int kk = 0; kk < Dv; kk += 16) { /* dP^T = V dO^T */
        uint32_t a[4];
        mla_load_a(a, Vs + warp * 16 * ldv + kk, ldv, lane);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
          uint32_t bo[2];
          mla_load_bt(bo, dOs + nt * 8 * ldv + kk, ldv, lane);
          mla_mma(dP[nt], a, bo);
        }
      }
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) /* dS^T = P^T (dP^T - D) */
#pragma unroll
        for (int e = 0; e < 4; ++e) dP[nt][e] = P[nt][e] * (dP[nt][e] - D_s[nt * 8 + mla_fc_col(lane, e)]);
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) { /* dK += dS^T Q */
        uint32_t a[4];
        at_c2a(a, dP, ks);
#pragma unroll
        for (int kt = 0; kt < AT_DK_MAX / 8; ++kt) {
          if (kt >= nkt) continue;
          uint32_t bq[2];
          mla_load_b(bq, Qs + ks * 16 * ldk + kt * 8, ldk, lane);
          mla_mma(dK[kt], a, bq);
        }
      }
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t j = j0 + mla_fc_row(lane, e);
      if (j >= T) continue;
      float *out = dkv + ((b * T + j) * H + h) * dkvw;
#pragma unroll
      for (int kt = 0; kt < AT_DK_MAX / 8; ++kt) {
        const int64_t c = kt * 8 + mla_fc_col(lane, e);
        if (kt >= nkt) continue;
        if (c < dn)
          out[c] = scale * dK[kt][e];
        else if (c < dn + dr)
          dkpe_h[(bh * T + j) * dr + (c - dn)] = scale * dK[kt][e];
      }
#pragma unroll
      for (int vt = 0; vt < AT_DV_MAX / 8; ++vt) {
        const int64_t c = vt * 8 + mla_fc_col(lane, e);
        if (vt < nvt && c < dv) out[dn + c] = dV[vt][e];
      }
    }
  }
}

/* dQ of one (b, h, query block) per CTA; warp w owns queries q0 + 16w .. +16. */
__global__ void __launch_bounds__(AT_NT)
    at_bwd_dq_kernel(int64_t B, int64_t T, int64_t H, int Dk, int Dv, int64_t dn, int64_t dr,
                     float scale, const uint16_t *__restrict__ Qb, const uint16_t *__restrict__ Kb,
                     const uint16_t *__restrict__ Vb, const uint16_t *__restrict__ dOb,
                     const float *__restrict__ lse, const float *__restrict__ Dd,
                     float *__restrict__ dq /* [B,T,H,dqk] */, float *__restrict__ dq_pe /* [B,T,H,dr] */) {
  extern __shared__ __align__(16) unsigned char at_smem[];
  const int ldk = Dk + 8, ldv = Dv + 8, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint16_t *Qs = (uint16_t *)at_smem, *Ks = Qs + AT_B * ldk, *dOs = Ks + AT_B * ldk,
           *Vs = dOs + AT_B * ldv;
  const int nkt = Dk / 8;
  const int64_t nqb = (T + AT_B - 1) / AT_B, ntask = B * H * nqb, dqk = dn + dr;
  for (int64_t task = blockIdx.x; task < ntask; task += gridDim.x) {
    const int64_t qb = nqb - 1 - task % nqb, bh = task / nqb, b = bh / H, h = bh % H;
    const int64_t q0 = qb * AT_B, r0 = q0 + warp * 16;
    const uint16_t *Qg = Qb + bh * T * Dk, *Kg = Kb + bh * T * Dk, *Vg = Vb + bh * T * Dv,
                   *dOg = dOb + bh * T * Dv;
    __syncthreads();
    at_load_tile(Qs, ldk, Qg, q0, T, Dk);
    at_load_tile(dOs, ldv, dOg, q0, T, Dv);
    float lse_r[2], D_r[2]; /* rows g and g + 8 of this warp */
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t t = r0 + mla_fc_row(lane, 2 * r);
      lse_r[r] = t < T ? lse[bh * T + t] : INFINITY;
      D_r[r] = t < T ? Dd[bh * T + t] : 0.0f;
    }
    float dQ[AT_DK_MAX / 8][4];
#pragma unroll
    for (int i = 0; i < AT_DK_MAX / 8; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) dQ[i][e] = 0.0f;
    const int64_t kend = mla_causal_kend(q0, AT_B, T);
    for (int64_t k0 = 0; k0 < kend; k0 += AT_B) {
      __syncthreads();
      at_load_tile(Ks, ldk, Kg, k0, T, Dk);
      at_load_tile(Vs, ldv, Vg, k0, T, Dv);
      __syncthreads();
      float P[8][4], dP[8][4];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) P[nt][e] = dP[nt][e] = 0.0f;
      for (int kk = 0; kk < Dk; kk += 16) { /* S = Q K^T */
        uint32_t a[4];
        mla_load_a(a, Qs + warp * 16 * ldk + kk, ldk, lane);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
          uint32_t bk[2];
          mla_load_bt(bk, Ks + nt * 8 * ldk + kk, ldk, lane);
          mla_mma(P[nt], a, bk);
        }
      }
      for (int kk = 0; kk < Dv; kk += 16) { /* dP = dO V^T */
        uint32_t a[4];
        mla_load_a(a, dOs + warp * 16 * ldv + kk, ldv, lane);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
          uint32_t bv[2];
          mla_load_bt(bv, Vs + nt * 8 * ldv + kk, ldv, lane);
          mla_mma(dP[nt], a, bv);
        }
      }
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t t = r0 + mla_fc_row(lane, e), j = k0 + nt * 8 + mla_fc_col(lane, e);
          const float p = (j <= t && j < T && t < T) ? expf(scale * P[nt][e] - lse_r[e >> 1]) : 0.0f;
          dP[nt][e] = p * (dP[nt][e] - D_r[e >> 1]); /* dS */
        }
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) { /* dQ += dS K */
        uint32_t a[4];
        at_c2a(a, dP, ks);
#pragma unroll
        for (int kt = 0; kt < AT_DK_MAX / 8; ++kt) {
          if (kt >= nkt) continue;
          uint32_t bk[2];
          mla_load_b(bk, Ks + ks * 16 * ldk + kt * 8, ldk, lane);
          mla_mma(dQ[kt], a, bk);
        }
      }
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t t = r0 + mla_fc_row(lane, e);
      if (t >= T) continue;
      const int64_t row = (b * T + t) * H + h;
#pragma unroll
      for (int kt = 0; kt < AT_DK_MAX / 8; ++kt) {
        const int64_t c = kt * 8 + mla_fc_col(lane, e);
        if (kt >= nkt) continue;
        if (c < dn)
          dq[row * dqk + c] = scale * dQ[kt][e];
        else if (c < dqk)
          dq_pe[row * dr + (c - dn)] = scale * dQ[kt][e];
      }
    }
  }
}

/* dkpe[b,t,:] = sum over h (in order) of dkpe_h[b,h,t,:]. */
__global__ void at_dkpe_sum_kernel(int64_t B, int64_t T, int64_t H, int64_t dr,
                                   const float *__restrict__ dkpe_h, float *__restrict__ dkpe) {
  const int64_t n = B * T * dr, stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t b = i / (T * dr), tc = i % (T * dr);
    float s = 0.0f;
    for (int64_t h = 0; h < H; ++h) s += dkpe_h[(b * H + h) * T * dr + tc];
    dkpe[i] = s;
  }
}

/* ---- launchers -------------------------------------------------------------------------- */

static int at_round16(int64_t d) { return (int)((d + 15) / 16 * 16); }

/* Whether the tensor-core path takes this shape on this device; *smem the largest kernel's
 * dynamic shared memory, set as each kernel's limit. */
static dsc_status at_usable(const char *fn, int64_t dn, int64_t dr, int64_t dv, size_t *smem, int *ok) {
  *ok = 0;
  const int Dk = at_round16(dn + dr), Dv = at_round16(dv);
  if (Dk > AT_DK_MAX || Dv > AT_DV_MAX) return DSC_OK;
  int dev = 0, major = 0, optin = 0;
  DSC_CUDA_TRY(cudaGetDevice(&dev), fn);
  DSC_CUDA_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), fn);
  DSC_CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), fn);
  *smem = 2 * (size_t)AT_B * (size_t)(2 * (Dk + 8) + 2 * (Dv + 8)) + 2 * AT_B * sizeof(float);
  if (major < 8 || *smem > (size_t)optin) return DSC_OK;
  const void *kernels[3] = {(const void *)at_fwd_kernel, (const void *)at_bwd_dkv_kernel,
                            (const void *)at_bwd_dq_kernel};
  for (int i = 0; i < 3; ++i)
    DSC_CUDA_TRY(cudaFuncSetAttribute(kernels[i], cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)*smem),
                 fn);
  *ok = 1;
  return DSC_OK;
}

/* The BF16 operands in the workspace: Qb, Kb [B,H,T,Dk], Vb (and dOb) [B,H,T,Dv], then
 * (backward) Dd [B,H,T] and dkpe_h [B,H,T,dr] float32. */
typedef struct {
  uint16_t *Qb, *Kb, *Vb, *dOb;
  float *Dd, *dkpe_h;
} at_ws;

static dsc_status at_pack(dsc_context *ctx, const char *fn, int64_t B, int64_t T, int64_t H,
                          int64_t dn, int64_t dr, int64_t dv, const float *q, const float *q_pe,
                          const float *kv, const float *kpe, const float *dout, at_ws *w) {
  const int Dk = at_round16(dn + dr), Dv = at_round16(dv);
  const size_t rows = (size_t)(B * H * T);
  const size_t bk = dsc_cuda_round256(rows * Dk * 2), bv = dsc_cuda_round256(rows * Dv * 2);
  const size_t bd = dout ? dsc_cuda_round256(rows * 4) : 0, bp = dout ? rows * (size_t)dr * 4 : 0;
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, 2 * bk + (dout ? 2 : 1) * bv + bd + bp, &ws));
  char *p = (char *)ws;
  w->Qb = (uint16_t *)p;
  w->Kb = (uint16_t *)(p + bk);
  w->Vb = (uint16_t *)(p + 2 * bk);
  w->dOb = dout ? (uint16_t *)(p + 2 * bk + bv) : nullptr;
  w->Dd = dout ? (float *)(p + 2 * bk + 2 * bv) : nullptr;
  w->dkpe_h = dout ? (float *)(p + 2 * bk + 2 * bv + bd) : nullptr;
  at_pack_kernel<<<dsc_cuda_blocks((int64_t)rows * (Dk + Dv), 256), 256, 0, dsc_cuda_stream(ctx)>>>(
      B, T, H, dn, dr, dv, Dk, Dv, q, q_pe, kv, kpe, dout, w->Qb, w->Kb, w->Vb, w->dOb);
  DSC_CUDA_CHECK_LAUNCH(fn);
  return DSC_OK;
}

dsc_status mla_attn_tc_fwd(dsc_context *ctx, int64_t B, int64_t T, int64_t H, int64_t dn,
                           int64_t dr, int64_t dv, float scale, const float *q, const float *q_pe,
                           const float *kv, const float *kpe, float *o, float *lse, int *done) {
  static const char *const FN = "dsc_cuda_mla_attn_fwd";
  size_t smem = 0;
  DSC_TRY(at_usable(FN, dn, dr, dv, &smem, done));
  if (!*done || B * T * H == 0) return DSC_OK;
  at_ws w;
  DSC_TRY(at_pack(ctx, FN, B, T, H, dn, dr, dv, q, q_pe, kv, kpe, nullptr, &w));
  const int64_t ntask = B * H * ((T + AT_B - 1) / AT_B);
  at_fwd_kernel<<<dsc_cuda_blocks(ntask, 1, AT_MAX_GRID), AT_NT, smem, dsc_cuda_stream(ctx)>>>(
      B, T, H, at_round16(dn + dr), at_round16(dv), dv, scale, w.Qb, w.Kb, w.Vb, o, lse);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

dsc_status mla_attn_tc_bwd(dsc_context *ctx, int64_t B, int64_t T, int64_t H, int64_t dn,
                           int64_t dr, int64_t dv, float scale, const float *q, const float *q_pe,
                           const float *kv, const float *kpe, const float *o, const float *lse,
                           const float *dout, float *dq, float *dq_pe, float *dkv, float *dkpe,
                           int *done) {
  static const char *const FN = "dsc_cuda_mla_attn_bwd";
  size_t smem = 0;
  DSC_TRY(at_usable(FN, dn, dr, dv, &smem, done));
  if (!*done || B * T * H == 0) return DSC_OK;
  at_ws w;
  DSC_TRY(at_pack(ctx, FN, B, T, H, dn, dr, dv, q, q_pe, kv, kpe, dout, &w));
  cudaStream_t st = dsc_cuda_stream(ctx);
  const int Dk = at_round16(dn + dr), Dv = at_round16(dv);
  at_bwd_d_kernel<<<dsc_cuda_blocks(B * T * H * 32, 256), 256, 0, st>>>(B, T, H, dv, o, dout, w.Dd);
  DSC_CUDA_CHECK_LAUNCH(FN);
  const int64_t ntask = B * H * ((T + AT_B - 1) / AT_B);
  const unsigned grid = dsc_cuda_blocks(ntask, 1, AT_MAX_GRID);
  at_bwd_dkv_kernel<<<grid, AT_NT, smem, st>>>(B, T, H, Dk, Dv, dn, dr, dv, scale, w.Qb, w.Kb, w.Vb,
                                               w.dOb, lse, w.Dd, dkv, w.dkpe_h);
  DSC_CUDA_CHECK_LAUNCH(FN);
  at_bwd_dq_kernel<<<grid, AT_NT, smem, st>>>(B, T, H, Dk, Dv, dn, dr, scale, w.Qb, w.Kb, w.Vb,
                                              w.dOb, lse, w.Dd, dq, dq_pe);
  DSC_CUDA_CHECK_LAUNCH(FN);
  at_dkpe_sum_kernel<<<dsc_cuda_blocks(B * T * dr, 256), 256, 0, st>>>(B, T, H, dr, w.dkpe_h, dkpe);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}
