/*
 * kernels/moe.cu -- DeepSeekMoE on the GPU: fused routing and its backward, expert load,
 * the bias update of auxiliary-loss-free balancing, the sequence-wise balance loss, and
 * dropless dispatch (permute) / combine (unpermute) with their backward; the twin of
 * csrc/cpu/moe.c (read that file for the math; this one mirrors it step for step).
 *
 * Legend: T tokens, E routed experts, k experts per token, G expert groups (per = E/G
 *         contiguous experts each), D hidden features, R permuted rows, L sequence length,
 *         B = T/L sequences, n = T*k (token, slot) pairs in flat order i = t*k + j,
 *         TS storage type of a float tensor (float or __nv_bfloat16), I index type
 *         (int32_t or int64_t), VW elements per vector access, U a raw copy unit.
 *
 * Agreement with the CPU:
 *  - routing indices are bit-identical: the affinities use moe_expf, a port of glibc's
 *    expf (the CPU's), and every float operation of csrc/cpu/moe.c is done with the same
 *    rounding (__fadd_rn & co: nvcc may not contract them into FMAs) in the same order
 *    (the softmax sum and the weight sum run serially in lane 0, like the CPU loop). The
 *    rankings use the CPU's total order: larger value first, ties to the lower index, NaN
 *    as -inf, non-kept groups never candidates. So scores and weights are also bitwise
 *    the CPU's on a glibc host.
 *  - route_bwd, permute(_bwd), unpermute, the dexpert_out part of unpermute_bwd, the bias
 *    update and the seq-aux gradient repeat the CPU's operations in the CPU's order: bitwise
 *    equal. dweights of unpermute_bwd (a D-long dot) and the seq-aux loss (sums in float64
 *    over chunks) use fixed-order parallel sums: deterministic, within rounding of the CPU.
 *  - no float atomics anywhere; counts use integer atomics (exact, order-free).
 *
 * Work split: the per-token kernels (route, route_bwd, seq-aux row sums / gradient) run one
 * warp per token; a warp's per-token arrays live in shared memory ([MOE_WARPS, words] per
 * block) or, when E is too large for that, in a workspace slice per warp (then the grid is
 * capped so the workspace stays small). Row kernels (permute, unpermute, ...) run one block
 * per row with 16-byte vector accesses when D and the pointers allow.
 */
#include <limits.h>

#include <cub/device/device_radix_sort.cuh>
#include <type_traits>

#include "common.cuh"

#define MOE_WARPS 8                             /* warps per block of warp-per-token kernels */
#define MOE_SMEM_MAX ((size_t)48 << 10)         /* dynamic shared memory without opt-in */
#define MOE_FULL 0xffffffffu                    /* all 32 lanes */
#define SEQ_CHUNK 256                           /* tokens per partial sum of the seq-aux P */
#define HIST_SMEM_MAX_E ((int64_t)12288)        /* shared-memory histogram up to 48 KiB */

/* ---- float helpers (exactly the CPU's operations) -------------------------------------- */

/* glibc's expf (sysdeps/ieee754/flt-32/e_expf.c, from ARM's optimized-routines): 2^(k/32)
 * from a table times a cubic in r, evaluated in float64, rounded once. Ported operation for
 * operation as glibc's x86-64 FMA build computes it (selected at run time on every CPU with
 * FMA; GCC fuses the range reduction z*InvLn2N +- ... and the polynomial into FMAs), so the
 * affinities are the CPU's bit for bit on glibc hosts. Checked (host replica of this code)
 * against glibc 2.36's run-time expf on every 3rd float in (-110, 110): 0 differences; the
 * unfused reduction differs in 1 of 7.5e8; CUDA's expf (<= 2 ulp error) would differ far
 * more often and could flip near-tied rankings. */
__device__ const unsigned long long kExp2fTab[32] = {
    0x3ff0000000000000ull, 0x3fefd9b0d3158574ull, 0x3fefb5586cf9890full, 0x3fef9301d0125b51ull,
    0x3fef72b83c7d517bull, 0x3fef54873168b9aaull, 0x3fef387a6e756238ull, 0x3fef1e9df51fdee1ull,
    0x3fef06fe0a31b715ull, 0x3feef1a7373aa9cbull, 0x3feedea64c123422ull, 0x3feece086061892dull,
    0x3feebfdad5362a27ull, 0x3feeb42b569d4f82ull, 0x3feeab07dd485429ull, 0x3feea47eb03a5585ull,
    0x3feea09e667f3bcdull, 0x3fee9f75e8ec5f74ull, 0x3feea11473eb0187ull, 0x3feea589994cce13ull,
    0x3feeace5422aa0dbull, 0x3feeb737b0cdc5e5ull, 0x3feec49182a3f090ull, 0x3feed503b23e255dull,
    0x3feee89f995ad3adull, 0x3feeff76f2fb5e47ull, 0x3fef199bdd85529cull, 0x3fef3720dcef9069ull,
    0x3fef5818dcfba487ull, 0x3fef7c97337b9b5full, 0x3fefa4afa2a490daull, 0x3fefd0765b6e4540ull,
};

__device__ __forceinline__ float moe_expf(float x) {
  const double kInvLn2N = 0x1.71547652b82fep+0 * 32.0, kShift = 0x1.8p+52;
  const double kC0 = 0x1.c6af84b912394p-5 / 32.0 / 32.0 / 32.0;
  const double kC1 = 0x1.ebfce50fac4f3p-3 / 32.0 / 32.0;
  const double kC2 = 0x1.62e42ff0c52d6p-1 / 32.0;
  const uint32_t ux = __float_as_uint(x);
  const uint32_t abstop = (ux >> 20) & 0x7ffu;
  if (abstop >= 0x42bu) {                  /* |x| >= 88 or NaN */
    if (ux == 0xff800000u) return 0.0f;    /* -inf */
    if (abstop >= 0x7f8u) return x + x;    /* +inf, NaN */
    if (x > 0x1.62e42ep6f) return INFINITY;  /* overflow */
    if (x < -0x1.9fe368p6f) return 0.0f;     /* underflow */
  }
  /* x*32/ln2 = ki + r, ki an integer (by the 1.5*2^52 shift), |r| <= 1/2 */
  const double xd = (double)x;
  double kd = fma(kInvLn2N, xd, kShift);
  const unsigned long long ki = (unsigned long long)__double_as_longlong(kd);
  kd = __dsub_rn(kd, kShift);
  const double r = fma(kInvLn2N, xd, -kd);
  /* s = 2^(ki/32): table mantissa for ki % 32, exponent from ki / 32 */
  const unsigned long long tbits = kExp2fTab[ki % 32] + (ki << 47);
  const double s = __longlong_as_double((long long)tbits);
  const double p = fma(kC0, r, kC1);
  const double r2 = __dmul_rn(r, r);
  double y = fma(kC2, r, 1.0);
  y = fma(p, r2, y);
  y = __dmul_rn(y, s);
  return __double2float_rn(y);
}

/* The CPU's sigmoidf_stable: exp of a non-positive number only. */
__device__ __forceinline__ float moe_sigmoid(float z) {
  if (z >= 0.0f) return __fdiv_rn(1.0f, __fadd_rn(1.0f, moe_expf(-z)));
  const float e = moe_expf(z);
  return __fdiv_rn(e, __fadd_rn(1.0f, e));
}

/* Ranking key: NaN ranks below every number (ties with -inf, lower index first). */
__device__ __forceinline__ float rank_key(float v) { return isnan(v) ? -INFINITY : v; }

/* The ranking order: (av, ai) comes before (bv, bi). A strict total order on keys without
 * NaN and distinct indices, so the first k under it are the CPU's topk_offer result. */
__device__ __forceinline__ bool rank_before(float av, int ai, float bv, int bi) {
  return av > bv || (av == bv && ai < bi);
}

/* v rounded to TS and back (the CPU's store + load of an accumulator kept in TS). */
template <typename TS>
__device__ __forceinline__ float round_to(float v) {
  return dsc_to_f32(dsc_from_f32<TS>(v));
}

/* VW consecutive elements at p (aligned to the pack) as float32, and back. */
template <typename TS, int VW>
__device__ __forceinline__ void ld_vec(const TS *p, float (&v)[VW]) {
  const DscPack<TS, VW> pk = *reinterpret_cast<const DscPack<TS, VW> *>(p);
#pragma unroll
  for (int q = 0; q < VW; ++q) v[q] = dsc_to_f32(pk.v[q]);
}
template <typename TS, int VW>
__device__ __forceinline__ void st_vec(TS *p, const float (&v)[VW]) {
  DscPack<TS, VW> pk;
#pragma unroll
  for (int q = 0; q < VW; ++q) pk.v[q] = dsc_from_f32<TS>(v[q]);
  *reinterpret_cast<DscPack<TS, VW> *>(p) = pk;
}

static inline int64_t esize_of(dsc_dtype dt) { return dt == DSC_DTYPE_BFLOAT16 ? 2 : 4; }

/* Threads of a one-block-per-row kernel with `units` accesses per row. */
static inline int row_threads(int64_t units) {
  return units >= 256 ? 256 : (units >= 128 ? 128 : 64);
}
static inline unsigned row_blocks(int64_t rows) {
  return (unsigned)(rows < 1 ? 1 : (rows < 65535 ? rows : 65535));
}

/* Radix-sort key bits that can be set by values < hi. */
static inline int key_bits(int64_t hi) {
  int b = 1;
  while (b < 32 && ((uint64_t)1 << b) < (uint64_t)hi) ++b;
  return b;
}

/* The stable radix sort of n (uint32 key < 2^end_bit, int32 value) pairs that permute and
 * unpermute's backward share: keys, skeys, vals, svals [n] (4-byte each, 256-aligned), then
 * CUB's temporary storage, in one slice of the workspace that starts at `base`. */
struct PairSort {
  int64_t n;
  int end_bit;
  size_t tmp_bytes; /* CUB's temporary storage */
  uint32_t *keys, *skeys;
  int32_t *vals, *svals;
  void *tmp;
};

/* Size the sort (ps->n, ps->end_bit given): *bytes = the whole slice. */
static dsc_status pair_sort_plan(PairSort *ps, cudaStream_t s, const char *fn, size_t *bytes) {
  ps->tmp_bytes = 0;
  DSC_CUDA_TRY((cub::DeviceRadixSort::SortPairs<uint32_t, int32_t, int64_t>(
                   NULL, ps->tmp_bytes, NULL, NULL, NULL, NULL, ps->n, 0, ps->end_bit, s)),
               fn);
  *bytes = 4 * dsc_cuda_round256((size_t)ps->n * 4) + ps->tmp_bytes;
  return DSC_OK;
}

/* Lay the slice out at base (from pair_sort_plan's size). */
static void pair_sort_carve(PairSort *ps, char *base) {
  const size_t bN = dsc_cuda_round256((size_t)ps->n * 4);
  ps->keys = (uint32_t *)base;
  ps->skeys = (uint32_t *)(base + bN);
  ps->vals = (int32_t *)(base + 2 * bN);
  ps->svals = (int32_t *)(base + 3 * bN);
  ps->tmp = base + 4 * bN;
}

/* (keys, vals) -> (skeys, svals), stable: equal keys keep their order. */
static dsc_status pair_sort_run(const PairSort *ps, cudaStream_t s, const char *fn) {
  size_t tb = ps->tmp_bytes;
  DSC_CUDA_TRY((cub::DeviceRadixSort::SortPairs<uint32_t, int32_t, int64_t>(
                   ps->tmp, tb, ps->keys, ps->skeys, ps->vals, ps->svals, ps->n, 0, ps->end_bit,
                   s)),
               fn);
  return DSC_OK;
}

/* Per-warp scratch of `words` 4-byte (or, for doubles, 8-byte) units for the warp-per-token
 * kernels: in shared memory when MOE_WARPS slices fit, else a workspace slice per warp with
 * the grid capped at one block per SM. *smem = dynamic shared bytes, *gscratch = NULL or
 * the workspace, *blocks = the grid. */
static dsc_status warp_scratch(dsc_context *ctx, int64_t T, int64_t words, size_t unit,
                               unsigned *blocks, size_t *smem, void **gscratch) {
  const size_t bytes = (size_t)MOE_WARPS * (size_t)words * unit;
  *gscratch = NULL;
  *smem = 0;
  if (bytes <= MOE_SMEM_MAX) {
    *blocks = dsc_cuda_blocks(T, MOE_WARPS, 65535);
    *smem = bytes;
    return DSC_OK;
  }
  const int sms = dsc_cuda_st(ctx)->sm_count > 0 ? dsc_cuda_st(ctx)->sm_count : 1;
  *blocks = dsc_cuda_blocks(T, MOE_WARPS, sms);
  return dsc_workspace(ctx, (size_t)*blocks * bytes, gscratch);
}

/* ======================================================================================
 * Routing
 * ====================================================================================== */

/* One warp per token. Per-warp scratch (words = E + 2G + k, 4-byte): sv [E] affinities,
 * gsc [G] group scores, keep [G] kept flags, pick [k] chosen experts (best first). */
template <typename TS>
__global__ void __launch_bounds__(MOE_WARPS * 32)
    moe_route_kernel(int64_t T, int E, int k, int G, int topk_group, int scoring, int method,
                     int norm, float scale, const TS *logits /* [T,E] */,
                     const float *__restrict__ bias /* [E] or NULL */,
                     int32_t *__restrict__ indices /* [T,k] */,
                     float *__restrict__ weights /* [T,k] */,
                     float *scores /* [T,E] or NULL, may alias logits */,
                     float *gscratch /* [warps of the grid, words] or NULL */, int64_t words) {
  extern __shared__ __align__(16) unsigned char moe_smem[];
  const int lane = threadIdx.x & 31, wib = threadIdx.x >> 5;
  const int64_t gw = (int64_t)blockIdx.x * MOE_WARPS + wib;
  const int64_t nw = (int64_t)gridDim.x * MOE_WARPS;
  float *sv = gscratch ? gscratch + gw * words : (float *)moe_smem + wib * words; /* [E] */
  float *gsc = sv + E;                   /* [G] */
  int *keep = (int *)(gsc + G);          /* [G] */
  int *pick = keep + G;                  /* [k] */
  const bool noaux = method == DSC_MOE_TOPK_NOAUX_TC;
  const bool use_bias = noaux && bias != NULL;
  const bool grouped = method != DSC_MOE_TOPK_GREEDY && topk_group < G;
  const int per = E / G;
  /* selection score of expert e: s + bias (noaux_tc with a bias) or s */
  auto sel = [&](int e) -> float { return use_bias ? __fadd_rn(sv[e], bias[e]) : sv[e]; };

  for (int64_t t = gw; t < T; t += nw) {
    const TS *z = logits + t * E; /* [E] */
    /* 1. affinities */
    if (scoring == DSC_MOE_SCORING_SIGMOID) {
      for (int e = lane; e < E; e += 32) sv[e] = moe_sigmoid(dsc_ld(z, e));
    } else {
      float mx = -INFINITY; /* `v > mx` skips NaN, as on the CPU; max is order-free */
      for (int e = lane; e < E; e += 32) {
        const float v = dsc_ld(z, e);
        if (v > mx) mx = v;
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        const float v = __shfl_xor_sync(MOE_FULL, mx, o);
        if (v > mx) mx = v;
      }
      for (int e = lane; e < E; e += 32) sv[e] = moe_expf(__fsub_rn(dsc_ld(z, e), mx));
      __syncwarp();
      /* the sum in the CPU's order (e ascending), so 1/sum is the CPU's */
      float sum = 0.0f;
      if (lane == 0)
        for (int e = 0; e < E; ++e) sum = __fadd_rn(sum, sv[e]);
      sum = __shfl_sync(MOE_FULL, sum, 0);
      const float inv = __fdiv_rn(1.0f, sum);
      for (int e = lane; e < E; e += 32) sv[e] = __fmul_rn(sv[e], inv);
    }
    __syncwarp();

    /* 2. group selection. best/second are the two largest keys of the group whatever the
     *    visiting order, so a lane per group gives the CPU's score; a group is kept when
     *    fewer than topk_group groups rank before it. */
    if (grouped) {
      for (int g = lane; g < G; g += 32) {
        float best = -INFINITY, second = -INFINITY;
        for (int e = g * per; e < (g + 1) * per; ++e) {
          const float v = rank_key(noaux ? sel(e) : sv[e]);
          if (v > best) {
            second = best;
            best = v;
          } else if (v > second) {
            second = v;
          }
        }
        gsc[g] = (noaux && per >= 2) ? rank_key(__fadd_rn(best, second)) : best;
      }
      __syncwarp();
      for (int g = lane; g < G; g += 32) {
        const float v = gsc[g];
        int rank = 0;
        for (int h = 0; h < G && rank < topk_group; ++h) rank += rank_before(gsc[h], h, v, g);
        keep[g] = rank < topk_group;
      }
      __syncwarp();
    }

    /* 3. top-k of the selection keys over the kept experts: k rounds of a warp arg-max,
     *    each over the candidates ranked after the previous pick (no marking needed). */
    float last_v = INFINITY;
    int last_i = -1; /* before every candidate */
    for (int j = 0; j < k; ++j) {
      float bv = -INFINITY;
      int bi = INT_MAX; /* "none": ranks after every real candidate */
      for (int e = lane; e < E; e += 32) {
        if (grouped && !keep[e / per]) continue;
        const float v = rank_key(sel(e));
        if (!rank_before(last_v, last_i, v, e)) continue; /* picked already */
        if (rank_before(v, e, bv, bi)) {
          bv = v;
          bi = e;
        }
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(MOE_FULL, bv, o);
        const int oi = __shfl_xor_sync(MOE_FULL, bi, o);
        if (rank_before(ov, oi, bv, bi)) {
          bv = ov;
          bi = oi;
        }
      }
      last_v = bv;
      last_i = bi;
      /* bi == INT_MAX cannot happen (the ops layer checks k <= kept experts); 0 keeps the
       * reads below in bounds if it ever did */
      if (lane == 0) pick[j] = bi == INT_MAX ? 0 : bi;
    }
    __syncwarp();

    /* 4. weights from the unbiased affinities; every lane forms the sum in j order */
    float sum = 0.0f;
    for (int j = 0; j < k; ++j) sum = __fadd_rn(sum, sv[pick[j]]);
    const float den = __fadd_rn(sum, 1e-20f);
    for (int j = lane; j < k; j += 32) {
      const int e = pick[j];
      const float w = sv[e];
      indices[t * k + j] = e;
      weights[t * k + j] = norm ? __fmul_rn(__fdiv_rn(w, den), scale) : __fmul_rn(w, scale);
    }
    if (scores)
      for (int e = lane; e < E; e += 32) scores[t * E + e] = sv[e];
    __syncwarp(); /* every read of this token's scratch is done before the next token */
  }
}

extern "C" dsc_status dsc_cuda_moe_route(dsc_context *ctx, dsc_dtype dt, int64_t T, int64_t E,
                                         int64_t k, int64_t G, int64_t topk_group, int scoring,
                                         int method, int norm, float scale,
                                         const void *logits /* [T,E] dt */,
                                         const float *bias /* [E] or NULL */,
                                         int32_t *indices /* [T,k] */, float *weights /* [T,k] */,
                                         float *scores /* [T,E] or NULL */) {
  static const char *const FN = "dsc_cuda_moe_route";
  if (T <= 0 || E <= 0 || k <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  if (E > INT32_MAX)
    return dsc_error(DSC_ERR_UNSUPPORTED, FN, "logits: at most 2^31-1 experts, got %lld",
                     (long long)E);
  const int64_t words = E + 2 * G + k;
  unsigned blocks = 1;
  size_t smem = 0;
  void *gs = NULL;
  DSC_TRY(warp_scratch(ctx, T, words, 4, &blocks, &smem, &gs));
  cudaStream_t s = dsc_cuda_stream(ctx);
  if (dt == DSC_DTYPE_BFLOAT16)
    moe_route_kernel<__nv_bfloat16><<<blocks, MOE_WARPS * 32, smem, s>>>(
        T, (int)E, (int)k, (int)G, (int)topk_group, scoring, method, norm, scale,
        (const __nv_bfloat16 *)logits, bias, indices, weights, scores, (float *)gs, words);
  else
    moe_route_kernel<float><<<blocks, MOE_WARPS * 32, smem, s>>>(
        T, (int)E, (int)k, (int)G, (int)topk_group, scoring, method, norm, scale,
        (const float *)logits, bias, indices, weights, scores, (float *)gs, words);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

/* One warp per token. Per-warp scratch (words = 2E floats): ds [E] dL/ds, prod [E]. */
template <typename I, typename TL>
__global__ void __launch_bounds__(MOE_WARPS * 32)
    moe_route_bwd_kernel(int64_t T, int E, int k, int scoring, int norm, float scale,
                         const float *__restrict__ dweights /* [T,k] */,
                         const float *scores /* [T,E] */,
                         const I *__restrict__ indices /* [T,k] */,
                         const float *dscores /* [T,E] or NULL */,
                         TL *dlogits /* [T,E], may alias scores / dscores */,
                         float *gscratch /* [warps of the grid, words] or NULL */, int64_t words) {
  extern __shared__ __align__(16) unsigned char moe_smem[];
  const int lane = threadIdx.x & 31, wib = threadIdx.x >> 5;
  const int64_t gw = (int64_t)blockIdx.x * MOE_WARPS + wib;
  const int64_t nw = (int64_t)gridDim.x * MOE_WARPS;
  float *ds = gscratch ? gscratch + gw * words : (float *)moe_smem + wib * words; /* [E] */
  float *prod = ds + E;                                                          /* [E] */
  for (int64_t t = gw; t < T; t += nw) {
    const float *s = scores + t * E;  /* [E] */
    const float *dw = dweights + t * k; /* [k] */
    const I *ix = indices + t * k;    /* [k] */
    for (int e = lane; e < E; e += 32) ds[e] = dscores ? dscores[t * E + e] : 0.0f;
    __syncwarp();
    /* the k scattered terms, serially in j order (as the CPU; rows may even repeat) */
    if (lane == 0) {
      if (norm) {
        /* w_j = c s_j / (S + eps): ds_i += c/Dn (dw_i - sum_j dw_j s_j / Dn) */
        float S = 0.0f, dot = 0.0f;
        for (int j = 0; j < k; ++j) {
          const float sj = s[(int64_t)ix[j]];
          S = __fadd_rn(S, sj);
          dot = __fadd_rn(dot, __fmul_rn(dw[j], sj));
        }
        const float Dn = __fadd_rn(S, 1e-20f);
        const float c = __fdiv_rn(scale, Dn), q = __fdiv_rn(dot, Dn);
        for (int j = 0; j < k; ++j) {
          const int64_t e = (int64_t)ix[j];
          ds[e] = __fadd_rn(ds[e], __fmul_rn(c, __fsub_rn(dw[j], q)));
        }
      } else {
        for (int j = 0; j < k; ++j) {
          const int64_t e = (int64_t)ix[j];
          ds[e] = __fadd_rn(ds[e], __fmul_rn(scale, dw[j]));
        }
      }
    }
    __syncwarp();
    TL *dl = dlogits + t * E; /* [E] */
    if (scoring == DSC_MOE_SCORING_SIGMOID) {
      for (int e = lane; e < E; e += 32) {
        const float se = s[e];
        dsc_st(dl, e, __fmul_rn(__fmul_rn(ds[e], se), __fsub_rn(1.0f, se)));
      }
    } else { /* softmax: dz = s * (ds - <ds, s>), the dot summed in e order by lane 0 */
      for (int e = lane; e < E; e += 32) prod[e] = __fmul_rn(ds[e], s[e]);
      __syncwarp();
      float dot = 0.0f;
      if (lane == 0)
        for (int e = 0; e < E; ++e) dot = __fadd_rn(dot, prod[e]);
      dot = __shfl_sync(MOE_FULL, dot, 0);
      for (int e = lane; e < E; e += 32) dsc_st(dl, e, __fmul_rn(s[e], __fsub_rn(ds[e], dot)));
    }
    __syncwarp();
  }
}

template <typename I, typename TL>
static void route_bwd_launch(cudaStream_t st, unsigned blocks, size_t smem, int64_t T, int E,
                             int k, int scoring, int norm, float scale, const float *dweights,
                             const float *scores, const void *indices, const float *dscores,
                             void *dlogits, float *gs, int64_t words) {
  moe_route_bwd_kernel<I, TL><<<blocks, MOE_WARPS * 32, smem, st>>>(
      T, E, k, scoring, norm, scale, dweights, scores, (const I *)indices, dscores,
      (TL *)dlogits, gs, words);
}

extern "C" dsc_status dsc_cuda_moe_route_bwd(dsc_context *ctx, int64_t T, int64_t E, int64_t k,
                                             int scoring, int norm, float scale,
                                             const float *dweights /* [T,k] */,
                                             const float *scores /* [T,E] */, int ids64,
                                             const void *indices /* [T,k] */,
                                             const float *dscores /* [T,E] or NULL */,
                                             dsc_dtype dl_dt, void *dlogits /* [T,E] dl_dt */) {
  static const char *const FN = "dsc_cuda_moe_route_bwd";
  if (T <= 0 || E <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  if (E > INT32_MAX || k > INT32_MAX)
    return dsc_error(DSC_ERR_UNSUPPORTED, FN, "scores: at most 2^31-1 experts, got %lld",
                     (long long)E);
  const int64_t words = 2 * E;
  unsigned blocks = 1;
  size_t smem = 0;
  void *gs = NULL;
  DSC_TRY(warp_scratch(ctx, T, words, 4, &blocks, &smem, &gs));
  cudaStream_t s = dsc_cuda_stream(ctx);
  const bool b16 = dl_dt == DSC_DTYPE_BFLOAT16;
  if (ids64) {
    if (b16)
      route_bwd_launch<int64_t, __nv_bfloat16>(s, blocks, smem, T, (int)E, (int)k, scoring, norm,
                                               scale, dweights, scores, indices, dscores, dlogits,
                                               (float *)gs, words);
    else
      route_bwd_launch<int64_t, float>(s, blocks, smem, T, (int)E, (int)k, scoring, norm, scale,
                                       dweights, scores, indices, dscores, dlogits, (float *)gs,
                                       words);
  } else {
    if (b16)
      route_bwd_launch<int32_t, __nv_bfloat16>(s, blocks, smem, T, (int)E, (int)k, scoring, norm,
                                               scale, dweights, scores, indices, dscores, dlogits,
                                               (float *)gs, words);
    else
      route_bwd_launch<int32_t, float>(s, blocks, smem, T, (int)E, (int)k, scoring, norm, scale,
                                       dweights, scores, indices, dscores, dlogits, (float *)gs,
                                       words);
  }
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

/* ======================================================================================
 * Balancing: expert load, bias update
 * ====================================================================================== */

/* counts[ids[i]] += 1 for i < n (counts zeroed before). C: unsigned int or unsigned long
 * long. With use_smem a block first counts its share in shared memory (u32: a block sees
 * at most n / gridDim.x ids) and adds its non-zero bins once: integer adds, exact. */
template <typename I, typename C>
__global__ void moe_hist_kernel(int64_t n, const I *__restrict__ ids /* [n] */, int64_t E,
                                int use_smem, C *__restrict__ counts /* [E] */) {
  extern __shared__ __align__(16) unsigned char moe_smem[];
  unsigned int *h = (unsigned int *)moe_smem; /* [E] when use_smem */
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  const int64_t i0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (use_smem) {
    for (int64_t e = threadIdx.x; e < E; e += blockDim.x) h[e] = 0u;
    __syncthreads();
    for (int64_t i = i0; i < n; i += stride) atomicAdd(&h[(int64_t)ids[i]], 1u);
    __syncthreads();
    for (int64_t e = threadIdx.x; e < E; e += blockDim.x)
      if (h[e]) atomicAdd(&counts[e], (C)h[e]);
  } else {
    for (int64_t i = i0; i < n; i += stride) atomicAdd(&counts[(int64_t)ids[i]], (C)1);
  }
}

/* Zero counts [E] (bytes csize each) and count n ids into them, on the stream. */
template <typename C>
static dsc_status histogram(dsc_context *ctx, const char *fn, int64_t n, int ids64,
                            const void *ids, int64_t E, C *counts) {
  cudaStream_t s = dsc_cuda_stream(ctx);
  DSC_CUDA_TRY(cudaMemsetAsync(counts, 0, (size_t)E * sizeof(C), s), fn);
  if (n <= 0) return DSC_OK;
  const int use_smem = E <= HIST_SMEM_MAX_E;
  const size_t smem = use_smem ? (size_t)E * sizeof(unsigned int) : 0;
  const unsigned blocks = dsc_cuda_blocks(n, 256, 1024);
  if (ids64)
    moe_hist_kernel<int64_t, C><<<blocks, 256, smem, s>>>(n, (const int64_t *)ids, E, use_smem,
                                                          counts);
  else
    moe_hist_kernel<int32_t, C><<<blocks, 256, smem, s>>>(n, (const int32_t *)ids, E, use_smem,
                                                          counts);
  DSC_CUDA_CHECK_LAUNCH(fn);
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_moe_expert_load(dsc_context *ctx, int64_t n, int ids64,
                                               const void *ids /* [n] */, int64_t E, int cnt64,
                                               void *counts /* [E] */) {
  static const char *const FN = "dsc_cuda_moe_expert_load";
  if (E <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  /* int32 / int64 counts are counted as u32 / u64 (same bits for non-negative counts) */
  if (cnt64) return histogram(ctx, FN, n, ids64, ids, E, (unsigned long long *)counts);
  return histogram(ctx, FN, n, ids64, ids, E, (unsigned int *)counts);
}

/* One block. mean = (sum of counts) / E in float64 (an integer sum: exact, like the CPU's
 * float64 sum of integers), then bias[e] += rate * sign(mean - c). */
template <typename C>
__global__ void __launch_bounds__(1024)
    moe_update_bias_kernel(int64_t E, float *__restrict__ bias /* [E] */,
                           const C *__restrict__ counts /* [E] */, float rate,
                           const dsc_step_ctl *__restrict__ ctl /* NULL or [1] */) {
  if (ctl != NULL && ctl->skip) return;
  __shared__ long long smem[32];
  long long tot = 0;
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) tot += (long long)counts[e];
  tot = dsc_block_sum(tot, smem);
  const double mean = (double)tot / (double)E;
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
    const double c = (double)counts[e];
    const float sgn = mean > c ? 1.0f : (mean < c ? -1.0f : 0.0f);
    bias[e] = __fadd_rn(bias[e], __fmul_rn(rate, sgn));
  }
}

extern "C" dsc_status dsc_cuda_moe_update_bias(dsc_context *ctx, int64_t E, float *bias /* [E] */,
                                               int cnt64, const void *counts /* [E] */,
                                               float rate, const dsc_step_ctl *ctl /* device or NULL */) {
  static const char *const FN = "dsc_cuda_moe_update_bias";
  if (E <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  cudaStream_t s = dsc_cuda_stream(ctx);
  if (cnt64)
    moe_update_bias_kernel<int64_t><<<1, 1024, 0, s>>>(E, bias, (const int64_t *)counts, rate, ctl);
  else
    moe_update_bias_kernel<int32_t><<<1, 1024, 0, s>>>(E, bias, (const int32_t *)counts, rate, ctl);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

/* dst [nb, E]: one thread per (b, e), the slots and halves added in order (integers: exact). */
__global__ void moe_sum_counts_kernel(int64_t S, int64_t nb, int64_t E, const int64_t *__restrict__ src,
                                      int64_t slot_stride, int64_t *__restrict__ dst /* [nb, E] */) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < nb * E; i += stride) {
    const int64_t b = i / E, e = i % E;
    long long c = 0;
    for (int64_t sl = 0; sl < S; ++sl)
      for (int64_t h = 0; h < 2; ++h) c += (long long)src[sl * slot_stride + (2 * b + h) * E + e];
    dst[i] = (int64_t)c;
  }
}

extern "C" dsc_status dsc_cuda_moe_sum_counts(dsc_context *ctx, int64_t S, int64_t nb, int64_t E,
                                              const int64_t *src /* [S, slot_stride] */, int64_t slot_stride,
                                              int64_t *dst /* [nb, E] */) {
  static const char *const FN = "dsc_cuda_moe_sum_counts";
  if (nb <= 0 || E <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  const int threads = 256;
  moe_sum_counts_kernel<<<dsc_cuda_blocks(nb * E, threads), threads, 0, dsc_cuda_stream(ctx)>>>(
      S, nb, E, src, slot_stride, dst);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

/* ======================================================================================
 * Sequence-wise balance loss
 * ====================================================================================== */

/* One warp per token: S[t] = sum_i s[t,i] in float64, in i order (lane 0 over a staged
 * row: the CPU's sum). Per-warp scratch: [E] floats (in double-sized words). */
__global__ void __launch_bounds__(MOE_WARPS * 32)
    seq_rowsum_kernel(int64_t T, int E, const float *__restrict__ scores /* [T,E] */,
                      double *__restrict__ S /* [T] */, double *gscratch, int64_t words) {
  extern __shared__ __align__(16) unsigned char moe_smem[];
  const int lane = threadIdx.x & 31, wib = threadIdx.x >> 5;
  const int64_t gw = (int64_t)blockIdx.x * MOE_WARPS + wib;
  const int64_t nw = (int64_t)gridDim.x * MOE_WARPS;
  float *row = (float *)(gscratch ? gscratch + gw * words : (double *)moe_smem + wib * words);
  for (int64_t t = gw; t < T; t += nw) {
    for (int e = lane; e < E; e += 32) row[e] = scores[t * E + e];
    __syncwarp();
    if (lane == 0) {
      double acc = 0.0;
      for (int e = 0; e < E; ++e) acc = __dadd_rn(acc, (double)row[e]);
      S[t] = acc;
    }
    __syncwarp();
  }
}

/* cnt[b, e] = #{(t, j): t in sequence b, indices[t, j] = e} (zeroed before). */
template <typename I>
__global__ void seq_count_kernel(int64_t n, int64_t k, int64_t L, int64_t E,
                                 const I *__restrict__ indices /* [T,k] */,
                                 unsigned long long *__restrict__ cnt /* [B,E] */) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    atomicAdd(&cnt[(i / k / L) * E + (int64_t)indices[i]], 1ull);
}

/* Block per (b, chunk c): ppart[b, c, i] = sum over the chunk's tokens (in order) of
 * s[t,i] / S[t], float64. */
__global__ void seq_ppart_kernel(int64_t B, int64_t L, int64_t E, int64_t nch,
                                 const float *__restrict__ scores /* [T,E] */,
                                 const double *__restrict__ S /* [T] */,
                                 double *__restrict__ ppart /* [B,nch,E] */) {
  for (int64_t bc = blockIdx.x; bc < B * nch; bc += gridDim.x) {
    const int64_t b = bc / nch, c = bc % nch;
    const int64_t t0 = b * L + c * SEQ_CHUNK;
    const int64_t t1 = t0 + SEQ_CHUNK < (b + 1) * L ? t0 + SEQ_CHUNK : (b + 1) * L;
    for (int64_t i = threadIdx.x; i < E; i += blockDim.x) {
      double acc = 0.0;
      for (int64_t t = t0; t < t1; ++t)
        acc = __dadd_rn(acc, __ddiv_rn((double)scores[t * E + i], S[t]));
      ppart[bc * E + i] = acc;
    }
  }
}

/* Block per sequence b: P_i = sum_c ppart (chunk order), f_i = cnt * E/(kL),
 * seq_loss[b] = alpha * sum_i f_i (P_i / L) (fixed-order block sum), and the gradient's
 * g[b, i] = alpha/(B L) * f_i. */
__global__ void __launch_bounds__(256)
    seq_loss_kernel(int64_t B, int64_t L, int64_t E, int64_t k, int64_t nch, float alpha,
                    const double *__restrict__ ppart /* [B,nch,E] */,
                    const unsigned long long *__restrict__ cnt /* [B,E] */,
                    double *__restrict__ seq_loss /* [B] */, double *__restrict__ g /* [B,E] */) {
  __shared__ double smem[32];
  const double ratio = (double)E / ((double)k * (double)L);
  const double gscale = (double)alpha / ((double)B * (double)L);
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    double acc = 0.0;
    for (int64_t i = threadIdx.x; i < E; i += blockDim.x) {
      double P = 0.0;
      for (int64_t c = 0; c < nch; ++c) P = __dadd_rn(P, ppart[(b * nch + c) * E + i]);
      const double f = __dmul_rn((double)cnt[b * E + i], ratio);
      acc = __dadd_rn(acc, __dmul_rn(f, __ddiv_rn(P, (double)L)));
      g[b * E + i] = __dmul_rn(gscale, f);
    }
    acc = dsc_block_sum(acc, smem);
    if (threadIdx.x == 0) seq_loss[b] = __dmul_rn((double)alpha, acc);
  }
}

/* One block: loss = (sum_b seq_loss[b]) / B, fixed order. */
__global__ void __launch_bounds__(1024)
    seq_final_kernel(int64_t B, const double *__restrict__ seq_loss /* [B] */,
                     float *__restrict__ loss /* [1] */) {
  __shared__ double smem[32];
  double acc = 0.0;
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x) acc += seq_loss[b];
  acc = dsc_block_sum(acc, smem);
  if (threadIdx.x == 0) loss[0] = (float)(acc / (double)B);
}

/* One warp per token: q_i = g_i * (s_i / S) by the lanes, dot = sum_i q_i in i order by
 * lane 0 (the CPU's), dscores = (g_i - dot) / S. Per-warp scratch: q [E] doubles. */
__global__ void __launch_bounds__(MOE_WARPS * 32)
    seq_grad_kernel(int64_t T, int E, int64_t L, const float *scores /* [T,E] */,
                    const double *__restrict__ S /* [T] */, const double *__restrict__ g /* [B,E] */,
                    float *dscores /* [T,E], may alias scores */, double *gscratch, int64_t words) {
  extern __shared__ __align__(16) unsigned char moe_smem[];
  const int lane = threadIdx.x & 31, wib = threadIdx.x >> 5;
  const int64_t gw = (int64_t)blockIdx.x * MOE_WARPS + wib;
  const int64_t nw = (int64_t)gridDim.x * MOE_WARPS;
  double *q = gscratch ? gscratch + gw * words : (double *)moe_smem + wib * words; /* [E] */
  for (int64_t t = gw; t < T; t += nw) {
    const double St = S[t];
    const double *gb = g + (t / L) * E; /* [E] */
    for (int e = lane; e < E; e += 32)
      q[e] = __dmul_rn(gb[e], __ddiv_rn((double)scores[t * E + e], St));
    __syncwarp();
    double dot = 0.0;
    if (lane == 0)
      for (int e = 0; e < E; ++e) dot = __dadd_rn(dot, q[e]);
    dot = __shfl_sync(MOE_FULL, dot, 0);
    for (int e = lane; e < E; e += 32)
      dscores[t * E + e] = (float)__ddiv_rn(__dsub_rn(gb[e], dot), St);
    __syncwarp();
  }
}

extern "C" dsc_status dsc_cuda_moe_seq_aux_loss(dsc_context *ctx, int64_t T, int64_t E, int64_t k,
                                                int64_t L, const float *scores /* [T,E] */,
                                                int ids64, const void *indices /* [T,k] */,
                                                float alpha, float *loss /* [1] */,
                                                float *dscores /* [T,E] or NULL */) {
  static const char *const FN = "dsc_cuda_moe_seq_aux_loss";
  DSC_CUDA_ENTER(ctx, FN);
  cudaStream_t s = dsc_cuda_stream(ctx);
  if (T <= 0 || E <= 0 || L <= 0) { /* no sequence: loss 0 (all-zero bytes), no gradient */
    DSC_CUDA_TRY(cudaMemsetAsync(loss, 0, sizeof(float), s), FN);
    return DSC_OK;
  }
  if (E > INT32_MAX)
    return dsc_error(DSC_ERR_UNSUPPORTED, FN, "scores: at most 2^31-1 experts, got %lld",
                     (long long)E);
  const int64_t B = T / L, nch = (L + SEQ_CHUNK - 1) / SEQ_CHUNK;
  /* Per-warp scratch of the two warp-per-token kernels: E doubles; the grid and the
   * workspace need are computed first so everything comes from one workspace. */
  const int64_t words = E;
  const size_t wbytes = (size_t)MOE_WARPS * (size_t)words * sizeof(double);
  const bool in_smem = wbytes <= MOE_SMEM_MAX;
  const int sms = dsc_cuda_st(ctx)->sm_count > 0 ? dsc_cuda_st(ctx)->sm_count : 1;
  const unsigned wblocks = dsc_cuda_blocks(T, MOE_WARPS, in_smem ? 65535 : sms);
  /* One workspace, partitioned: S [T], cnt [B,E], g [B,E], ppart [B,nch,E], seq_loss [B]
   * (all 8-byte), then the warps' scratch when not in shared memory. */
  const size_t bS = dsc_cuda_round256((size_t)T * 8), bC = dsc_cuda_round256((size_t)(B * E) * 8);
  const size_t bP = dsc_cuda_round256((size_t)(B * nch * E) * 8);
  const size_t bL = dsc_cuda_round256((size_t)B * 8);
  const size_t bW = in_smem ? 0 : (size_t)wblocks * wbytes;
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, bS + 2 * bC + bP + bL + bW, &ws));
  char *base = (char *)ws;
  double *S = (double *)base;                                      /* [T] */
  unsigned long long *cnt = (unsigned long long *)(base + bS);     /* [B,E] */
  double *g = (double *)(base + bS + bC);                          /* [B,E] */
  double *ppart = (double *)(base + bS + 2 * bC);                  /* [B,nch,E] */
  double *seq_loss = (double *)(base + bS + 2 * bC + bP);          /* [B] */
  double *gs = in_smem ? NULL : (double *)(base + bS + 2 * bC + bP + bL); /* warps' scratch */
  const size_t smem = in_smem ? wbytes : 0;

  seq_rowsum_kernel<<<wblocks, MOE_WARPS * 32, smem, s>>>(T, (int)E, scores, S, gs, words);
  DSC_CUDA_CHECK_LAUNCH(FN);
  DSC_CUDA_TRY(cudaMemsetAsync(cnt, 0, (size_t)(B * E) * 8, s), FN);
  const int64_t n = T * k;
  if (n > 0) {
    if (ids64)
      seq_count_kernel<int64_t><<<dsc_cuda_blocks(n, 256, 4096), 256, 0, s>>>(
          n, k, L, E, (const int64_t *)indices, cnt);
    else
      seq_count_kernel<int32_t><<<dsc_cuda_blocks(n, 256, 4096), 256, 0, s>>>(
          n, k, L, E, (const int32_t *)indices, cnt);
    DSC_CUDA_CHECK_LAUNCH(FN);
  }
  const int pthreads = E >= 256 ? 256 : (E >= 128 ? 128 : (E >= 64 ? 64 : 32));
  seq_ppart_kernel<<<dsc_cuda_blocks(B * nch, 1, 65535), pthreads, 0, s>>>(B, L, E, nch, scores,
                                                                           S, ppart);
  DSC_CUDA_CHECK_LAUNCH(FN);
  seq_loss_kernel<<<dsc_cuda_blocks(B, 1, 65535), 256, 0, s>>>(B, L, E, k, nch, alpha, ppart, cnt,
                                                              seq_loss, g);
  DSC_CUDA_CHECK_LAUNCH(FN);
  seq_final_kernel<<<1, 1024, 0, s>>>(B, seq_loss, loss);
  DSC_CUDA_CHECK_LAUNCH(FN);
  if (dscores) {
    seq_grad_kernel<<<wblocks, MOE_WARPS * 32, smem, s>>>(T, (int)E, L, scores, S, g, dscores, gs,
                                                          words);
    DSC_CUDA_CHECK_LAUNCH(FN);
  }
  return DSC_OK;
}

/* ======================================================================================
 * Dispatch (permute) and combine (unpermute)
 * ====================================================================================== */

/* Exclusive prefix sum of v over a 1-D block (blockDim.x a multiple of 32); *total gets the
 * block's sum. All threads must call it. smem: [32]. */
__device__ __forceinline__ long long block_excl_scan(long long v, long long *smem /* [32] */,
                                                     long long *total) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  const int nw = (int)(blockDim.x >> 5);
  long long inc = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const long long u = __shfl_up_sync(MOE_FULL, inc, o);
    if (lane >= o) inc += u;
  }
  __syncthreads(); /* earlier readers of smem are done */
  if (lane == 31) smem[wid] = inc;
  __syncthreads();
  if (wid == 0) {
    long long w = lane < nw ? smem[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const long long u = __shfl_up_sync(MOE_FULL, w, o);
      if (lane >= o) w += u;
    }
    smem[lane] = w; /* inclusive prefix of the warp sums */
  }
  __syncthreads();
  *total = smem[nw - 1];
  return (wid > 0 ? smem[wid - 1] : 0) + inc - v;
}

/* One block over the E experts (a contiguous run of experts per thread):
 *   start[e]         = sum_{e' < e} cnt[e']               (unpadded, sorted position)
 *   poff[e]          = sum_{e' < e} roundup(cnt[e'], align)  (padded row offset), poff[E] = R
 *   group_offsets[e] = poff[e] as int32; *total = R.  Any output may be NULL. */
__global__ void __launch_bounds__(256)
    permute_scan_kernel(int64_t E, int64_t align, const unsigned long long *__restrict__ cnt /* [E] */,
                        long long *__restrict__ start /* [E] or NULL */,
                        long long *__restrict__ poff /* [E+1] or NULL */,
                        int32_t *__restrict__ group_offsets /* [E+1] or NULL */,
                        long long *__restrict__ total /* [1] or NULL */) {
  __shared__ long long smem[32];
  const int64_t chunk = (E + blockDim.x - 1) / blockDim.x;
  const int64_t e0 = (int64_t)threadIdx.x * chunk < E ? (int64_t)threadIdx.x * chunk : E;
  const int64_t e1 = e0 + chunk < E ? e0 + chunk : E;
  long long su = 0, sp = 0;
  for (int64_t e = e0; e < e1; ++e) {
    const long long c = (long long)cnt[e];
    su += c;
    sp += (c + align - 1) / align * align;
  }
  long long tu = 0, tp = 0;
  long long bu = block_excl_scan(su, smem, &tu);
  long long bp = block_excl_scan(sp, smem, &tp);
  for (int64_t e = e0; e < e1; ++e) {
    const long long c = (long long)cnt[e];
    if (start) start[e] = bu;
    if (poff) poff[e] = bp;
    if (group_offsets) group_offsets[e] = (int32_t)bp;
    bu += c;
    bp += (c + align - 1) / align * align;
  }
  if (threadIdx.x == 0) {
    if (poff) poff[E] = tp;
    if (group_offsets) group_offsets[E] = (int32_t)tp;
    if (total) *total = tp;
  }
  (void)tu;
}

extern "C" dsc_status dsc_cuda_moe_permute_rows(dsc_context *ctx, int64_t n, int ids64,
                                                const void *ids /* [n] */, int64_t E,
                                                int64_t align, int64_t *rows) {
  static const char *const FN = "dsc_cuda_moe_permute_rows";
  *rows = 0;
  if (n <= 0 || E <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  cudaStream_t s = dsc_cuda_stream(ctx);
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, dsc_cuda_round256((size_t)E * 8) + 256, &ws));
  unsigned long long *cnt = (unsigned long long *)ws;                             /* [E] */
  long long *total = (long long *)((char *)ws + dsc_cuda_round256((size_t)E * 8)); /* [1] */
  DSC_TRY(histogram(ctx, FN, n, ids64, ids, E, cnt));
  permute_scan_kernel<<<1, 256, 0, s>>>(E, align, cnt, NULL, NULL, NULL, total);
  DSC_CUDA_CHECK_LAUNCH(FN);
  long long *host = (long long *)dsc_cuda_st(ctx)->pinned; /* [1] */
  DSC_TRY(dsc_cuda_to_host(ctx, host, total, sizeof(long long), FN));
  *rows = (int64_t)host[0];
  return DSC_OK;
}

/* keys[i] = ids[i] (a radix-sort key), vals[i] = i. */
template <typename I>
__global__ void moe_keys_kernel(int64_t n, const I *__restrict__ ids /* [n] */,
                                uint32_t *__restrict__ keys /* [n] */,
                                int32_t *__restrict__ vals /* [n] */) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    keys[i] = (uint32_t)ids[i];
    vals[i] = (int32_t)i;
  }
}

/* Block per sorted position p (pairs sorted stably by expert, so (token, slot) ascending
 * within an expert: the CPU's cursor order): the pair i = svals[p] of expert e goes to row
 * poff[e] + (p - start[e]); row_map[i] = that row and the token's row of x is copied
 * there. U: the copy unit; row_units = D * esize / sizeof(U). */
template <typename U>
__global__ void permute_scatter_kernel(int64_t n, int64_t k, int64_t row_units,
                                       const uint32_t *__restrict__ skeys /* [n] */,
                                       const int32_t *__restrict__ svals /* [n] */,
                                       const long long *__restrict__ start /* [E] */,
                                       const long long *__restrict__ poff /* [E+1] */,
                                       const U *__restrict__ x /* [T, row_units] */,
                                       U *__restrict__ out /* [R, row_units] */,
                                       int32_t *__restrict__ row_map /* [T*k] */) {
  for (int64_t p = blockIdx.x; p < n; p += gridDim.x) {
    const int64_t e = skeys[p], i = svals[p];
    const int64_t row = poff[e] + (p - start[e]);
    if (threadIdx.x == 0) row_map[i] = (int32_t)row;
    const U *src = x + (i / k) * row_units; /* [row_units] */
    U *dst = out + row * row_units;         /* [row_units] */
    for (int64_t u = threadIdx.x; u < row_units; u += blockDim.x) dst[u] = src[u];
  }
}

/* Block per expert: zero its padding rows poff[e] + cnt[e] .. poff[e+1]-1 (contiguous);
 * blocks E .. E+parts-1 zero part p of the rows poff[E] .. R-1 past every expert (a row
 * bound, see dsc_cuda_moe_permute; up to E * (align-1) rows, so spread over blocks). */
template <typename U>
__global__ void permute_pad_kernel(int64_t E, int64_t R, int64_t parts, int64_t row_units,
                                   const unsigned long long *__restrict__ cnt /* [E] */,
                                   const long long *__restrict__ poff /* [E+1] */,
                                   U *__restrict__ out /* [R, row_units] */) {
  for (int64_t e = blockIdx.x; e < E + parts; e += gridDim.x) {
    const int64_t tail = R - poff[E], p = e - E;
    const int64_t r0 = e < E ? poff[e] + (int64_t)cnt[e] : poff[E] + tail * p / parts;
    const int64_t r1 = e < E ? poff[e + 1] : poff[E] + tail * (p + 1) / parts;
    U *dst = out + r0 * row_units;
    const int64_t units = (r1 - r0) * row_units;
    for (int64_t u = threadIdx.x; u < units; u += blockDim.x) dst[u] = U();
  }
}

/* The widest copy unit (16, 4 or 2 bytes) that row_bytes and both pointers allow. */
static int copy_unit(int64_t row_bytes, const void *a, const void *b) {
  if (row_bytes % 16 == 0 && dsc_cuda_aligned(a, 16) && dsc_cuda_aligned(b, 16)) return 16;
  if (row_bytes % 4 == 0 && dsc_cuda_aligned(a, 4) && dsc_cuda_aligned(b, 4)) return 4;
  return 2;
}

template <typename U>
static void permute_copy_launch(cudaStream_t s, int64_t n, int64_t k, int64_t E, int64_t R,
                                int64_t row_bytes, int pad, const uint32_t *skeys, const int32_t *svals,
                                const long long *start, const long long *poff,
                                const unsigned long long *cnt, const void *x, void *out,
                                int32_t *row_map) {
  const int64_t units = row_bytes / (int64_t)sizeof(U);
  permute_scatter_kernel<U><<<row_blocks(n), row_threads(units), 0, s>>>(
      n, k, units, skeys, svals, start, poff, (const U *)x, (U *)out, row_map);
  const int64_t parts = R > n ? (R - n < 1024 ? R - n : 1024) : 0; /* the tail has <= R - n rows */
  if (pad && units > 0)
    permute_pad_kernel<U><<<row_blocks(E + parts), row_threads(units), 0, s>>>(E, R, parts, units, cnt, poff,
                                                                               (U *)out);
}

extern "C" dsc_status dsc_cuda_moe_permute(dsc_context *ctx, dsc_dtype dt, int64_t T, int64_t D,
                                           int64_t k, int ids64, const void *indices /* [T,k] */,
                                           int64_t E, int64_t align, const void *x /* [T,D] dt */,
                                           int64_t R, void *out /* [R,D] dt */,
                                           int32_t *group_offsets /* [E+1] */,
                                           int32_t *row_map /* [T,k] */) {
  static const char *const FN = "dsc_cuda_moe_permute";
  if (E <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  cudaStream_t s = dsc_cuda_stream(ctx);
  const int64_t n = T * k;
  /* R >= poff[E] (read on the device only): R == poff[E] for the public op (checked there);
   * the MoE layer passes its row bound R_max (moe_internal.h), whose rows past poff[E] the
   * pad kernel zeroes, so R is never learnt on the host */
  if (n <= 0) { /* no pairs: every group is empty, every row padding */
    DSC_CUDA_TRY(cudaMemsetAsync(group_offsets, 0, (size_t)(E + 1) * sizeof(int32_t), s), FN);
    if (R > 0 && D > 0) DSC_CUDA_TRY(cudaMemsetAsync(out, 0, (size_t)(R * D * esize_of(dt)), s), FN);
    return DSC_OK;
  }
  if (n > INT32_MAX || E > (int64_t)UINT32_MAX)
    return dsc_error(DSC_ERR_UNSUPPORTED, FN,
                     "indices: at most 2^31-1 (token, slot) pairs, got %lld", (long long)n);
  PairSort ps;
  ps.n = n;
  ps.end_bit = key_bits(E);
  size_t sort_bytes = 0;
  DSC_TRY(pair_sort_plan(&ps, s, FN, &sort_bytes));
  /* One workspace, partitioned: cnt [E] u64, start [E] i64, poff [E+1] i64, then the sort's
   * slice (keys, sorted keys, vals, sorted vals, CUB's storage). */
  const size_t bE = dsc_cuda_round256((size_t)(E + 1) * 8);
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, 3 * bE + sort_bytes, &ws));
  char *base = (char *)ws;
  unsigned long long *cnt = (unsigned long long *)base; /* [E] */
  long long *start = (long long *)(base + bE);           /* [E] */
  long long *poff = (long long *)(base + 2 * bE);        /* [E+1] */
  pair_sort_carve(&ps, base + 3 * bE);
  uint32_t *keys = ps.keys, *skeys = ps.skeys;           /* [n] */
  int32_t *vals = ps.vals, *svals = ps.svals;            /* [n] */

  DSC_TRY(histogram(ctx, FN, n, ids64, indices, E, cnt));
  permute_scan_kernel<<<1, 256, 0, s>>>(E, align, cnt, start, poff, group_offsets, NULL);
  DSC_CUDA_CHECK_LAUNCH(FN);
  if (ids64)
    moe_keys_kernel<int64_t><<<dsc_cuda_blocks(n, 256), 256, 0, s>>>(n, (const int64_t *)indices,
                                                                     keys, vals);
  else
    moe_keys_kernel<int32_t><<<dsc_cuda_blocks(n, 256), 256, 0, s>>>(n, (const int32_t *)indices,
                                                                     keys, vals);
  DSC_CUDA_CHECK_LAUNCH(FN);
  /* stable: pairs of one expert stay in flat (token, slot) order */
  DSC_TRY(pair_sort_run(&ps, s, FN));
  const int64_t row_bytes = D * esize_of(dt);
  const int pad = align > 1 || R > n; /* padding rows inside the experts, or past them */
  switch (copy_unit(row_bytes, x, out)) {
    case 16:
      permute_copy_launch<uint4>(s, n, k, E, R, row_bytes, pad, skeys, svals, start, poff, cnt, x,
                                 out, row_map);
      break;
    case 4:
      permute_copy_launch<uint32_t>(s, n, k, E, R, row_bytes, pad, skeys, svals, start, poff, cnt,
                                    x, out, row_map);
      break;
    default:
      permute_copy_launch<uint16_t>(s, n, k, E, R, row_bytes, pad, skeys, svals, start, poff, cnt,
                                    x, out, row_map);
  }
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

/* Vector width of a row kernel over TS: 16 bytes when D and every pointer allow it. */
template <typename TS>
static int row_vw(int64_t D, const void *a, const void *b, const void *c = NULL) {
  const int vw = 16 / (int)sizeof(TS);
  if (D % vw != 0) return 1;
  if (!dsc_cuda_aligned(a, 16) || !dsc_cuda_aligned(b, 16)) return 1;
  if (c && !dsc_cuda_aligned(c, 16)) return 1;
  return vw;
}

/* Block per token: dx[t] = sum_j dout[row_map[t,j]] (float32, 0 + j order: the CPU's). */
template <typename TS, int VW>
__global__ void permute_bwd_kernel(int64_t T, int64_t D, int64_t k,
                                   const TS *__restrict__ dout /* [R,D] */,
                                   const int32_t *__restrict__ row_map /* [T,k] */,
                                   TS *__restrict__ dx /* [T,D] */) {
  const int64_t units = D / VW;
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    const int32_t *rm = row_map + t * k; /* [k] */
    for (int64_t u = threadIdx.x; u < units; u += blockDim.x) {
      float acc[VW];
#pragma unroll
      for (int q = 0; q < VW; ++q) acc[q] = 0.0f;
      for (int64_t j = 0; j < k; ++j) {
        float a[VW];
        ld_vec<TS, VW>(dout + (int64_t)rm[j] * D + u * VW, a);
#pragma unroll
        for (int q = 0; q < VW; ++q) acc[q] = __fadd_rn(acc[q], a[q]);
      }
      st_vec<TS, VW>(dx + t * D + u * VW, acc);
    }
  }
}

template <typename TS>
static void permute_bwd_launch(cudaStream_t s, int64_t T, int64_t D, int64_t k, const void *dout,
                               const int32_t *row_map, void *dx) {
  const int vw = row_vw<TS>(D, dout, dx);
  const int threads = row_threads(D / vw);
  if (vw > 1)
    permute_bwd_kernel<TS, 16 / sizeof(TS)><<<row_blocks(T), threads, 0, s>>>(
        T, D, k, (const TS *)dout, row_map, (TS *)dx);
  else
    permute_bwd_kernel<TS, 1><<<row_blocks(T), threads, 0, s>>>(T, D, k, (const TS *)dout, row_map,
                                                                (TS *)dx);
}

extern "C" dsc_status dsc_cuda_moe_permute_bwd(dsc_context *ctx, dsc_dtype dt, int64_t T,
                                               int64_t D, int64_t k,
                                               const void *dout /* [R,D] dt */,
                                               const int32_t *row_map /* [T,k] */,
                                               void *dx /* [T,D] dt */) {
  static const char *const FN = "dsc_cuda_moe_permute_bwd";
  if (T <= 0 || D <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  cudaStream_t s = dsc_cuda_stream(ctx);
  if (k <= 0) { /* an empty sum per element */
    DSC_CUDA_TRY(cudaMemsetAsync(dx, 0, (size_t)(T * D * esize_of(dt)), s), FN);
    return DSC_OK;
  }
  if (dt == DSC_DTYPE_BFLOAT16)
    permute_bwd_launch<__nv_bfloat16>(s, T, D, k, dout, row_map, dx);
  else
    permute_bwd_launch<float>(s, T, D, k, dout, row_map, dx);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

/* Block per token: y[t] = sum_j w[t,j] * expert_out[row_map[t,j]], float32 in j order.
 * As on the CPU: float32 starts from w_0 e_0, bfloat16 from 0 + w_0 e_0 (which differ only
 * in the sign of a zero). */
template <typename TS, int VW>
__global__ void unpermute_kernel(int64_t T, int64_t D, int64_t k,
                                 const TS *__restrict__ eo /* [R,D] */,
                                 const int32_t *__restrict__ row_map /* [T,k] */,
                                 const float *__restrict__ weights /* [T,k] */,
                                 TS *__restrict__ y /* [T,D] */) {
  constexpr bool kF32 = std::is_same<TS, float>::value;
  const int64_t units = D / VW;
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    const int32_t *rm = row_map + t * k; /* [k] */
    const float *w = weights + t * k;    /* [k] */
    for (int64_t u = threadIdx.x; u < units; u += blockDim.x) {
      float acc[VW];
#pragma unroll
      for (int q = 0; q < VW; ++q) acc[q] = 0.0f;
      for (int64_t j = 0; j < k; ++j) {
        float a[VW];
        ld_vec<TS, VW>(eo + (int64_t)rm[j] * D + u * VW, a);
        const float wj = w[j];
#pragma unroll
        for (int q = 0; q < VW; ++q) {
          const float p = __fmul_rn(wj, a[q]);
          acc[q] = (kF32 && j == 0) ? p : __fadd_rn(acc[q], p);
        }
      }
      st_vec<TS, VW>(y + t * D + u * VW, acc);
    }
  }
}

template <typename TS>
static void unpermute_launch(cudaStream_t s, int64_t T, int64_t D, int64_t k, const void *eo,
                             const int32_t *row_map, const float *weights, void *y) {
  const int vw = row_vw<TS>(D, eo, y);
  const int threads = row_threads(D / vw);
  if (vw > 1)
    unpermute_kernel<TS, 16 / sizeof(TS)><<<row_blocks(T), threads, 0, s>>>(
        T, D, k, (const TS *)eo, row_map, weights, (TS *)y);
  else
    unpermute_kernel<TS, 1><<<row_blocks(T), threads, 0, s>>>(T, D, k, (const TS *)eo, row_map,
                                                              weights, (TS *)y);
}

extern "C" dsc_status dsc_cuda_moe_unpermute(dsc_context *ctx, dsc_dtype dt, int64_t T, int64_t D,
                                             int64_t k, const void *expert_out /* [R,D] dt */,
                                             const int32_t *row_map /* [T,k] */,
                                             const float *weights /* [T,k] */,
                                             void *y /* [T,D] dt */) {
  static const char *const FN = "dsc_cuda_moe_unpermute";
  if (T <= 0 || D <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  cudaStream_t s = dsc_cuda_stream(ctx);
  if (k <= 0) {
    DSC_CUDA_TRY(cudaMemsetAsync(y, 0, (size_t)(T * D * esize_of(dt)), s), FN);
    return DSC_OK;
  }
  if (dt == DSC_DTYPE_BFLOAT16)
    unpermute_launch<__nv_bfloat16>(s, T, D, k, expert_out, row_map, weights, y);
  else
    unpermute_launch<float>(s, T, D, k, expert_out, row_map, weights, y);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

/* Block per sorted position p that starts a row's group (pairs sorted stably by row, so
 * flat order within a row): dexp[row] = sum over the group of w_i * dy[t_i], accumulated in
 * flat order with the accumulator rounded to TS after every add (the CPU keeps it in the
 * output tensor), starting from 0. named[row] = 1. */
template <typename TS, int VW>
__global__ void unpermute_dexp_kernel(int64_t n, int64_t D, int64_t k,
                                      const uint32_t *__restrict__ skeys /* [n] rows */,
                                      const int32_t *__restrict__ svals /* [n] pairs */,
                                      const float *__restrict__ weights /* [T*k] */,
                                      const TS *__restrict__ dy /* [T,D] */,
                                      TS *__restrict__ dexp /* [R,D] */,
                                      unsigned char *__restrict__ named /* [R] */) {
  const int64_t units = D / VW;
  for (int64_t p = blockIdx.x; p < n; p += gridDim.x) {
    const uint32_t row = skeys[p];
    if (p > 0 && skeys[p - 1] == row) continue; /* not the first of its group */
    int64_t end = p + 1;
    while (end < n && skeys[end] == row) ++end;
    if (threadIdx.x == 0) named[row] = 1;
    for (int64_t u = threadIdx.x; u < units; u += blockDim.x) {
      float acc[VW];
#pragma unroll
      for (int q = 0; q < VW; ++q) acc[q] = 0.0f;
      for (int64_t g = p; g < end; ++g) {
        const int64_t i = svals[g];
        const float w = weights[i];
        float a[VW];
        ld_vec<TS, VW>(dy + (i / k) * D + u * VW, a);
#pragma unroll
        for (int q = 0; q < VW; ++q) acc[q] = round_to<TS>(__fadd_rn(acc[q], __fmul_rn(w, a[q])));
      }
      st_vec<TS, VW>(dexp + (int64_t)row * D + u * VW, acc);
    }
  }
}

/* Block per row: zero the rows that no pair names (padding). */
template <typename U>
__global__ void zero_unnamed_kernel(int64_t R, int64_t row_units,
                                    const unsigned char *__restrict__ named /* [R] */,
                                    U *__restrict__ out /* [R, row_units] */) {
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    if (named[r]) continue;
    U *dst = out + r * row_units;
    for (int64_t u = threadIdx.x; u < row_units; u += blockDim.x) dst[u] = U();
  }
}

/* One warp per pair i: dweights[i] = <dy[t], expert_out[row_map[i]]>, lane partials over a
 * fixed partition of D, then the fixed shuffle tree (deterministic). */
template <typename TS, int VW>
__global__ void __launch_bounds__(MOE_WARPS * 32)
    unpermute_dw_kernel(int64_t n, int64_t D, int64_t k, const TS *__restrict__ dy /* [T,D] */,
                        const TS *__restrict__ eo /* [R,D] */,
                        const int32_t *__restrict__ row_map /* [T*k] */,
                        float *__restrict__ dweights /* [T*k] */) {
  const int lane = threadIdx.x & 31, wib = threadIdx.x >> 5;
  const int64_t nw = (int64_t)gridDim.x * MOE_WARPS;
  const int64_t units = D / VW;
  for (int64_t i = (int64_t)blockIdx.x * MOE_WARPS + wib; i < n; i += nw) {
    const TS *a = dy + (i / k) * D;               /* [D] */
    const TS *b = eo + (int64_t)row_map[i] * D;   /* [D] */
    float acc = 0.0f;
    for (int64_t u = lane; u < units; u += 32) {
      float va[VW], vb[VW];
      ld_vec<TS, VW>(a + u * VW, va);
      ld_vec<TS, VW>(b + u * VW, vb);
#pragma unroll
      for (int q = 0; q < VW; ++q) acc = fmaf(va[q], vb[q], acc);
    }
    acc = dsc_warp_reduce(acc, DscSum());
    if (lane == 0) dweights[i] = acc;
  }
}

template <typename TS>
static void unpermute_dw_launch(cudaStream_t s, int64_t n, int64_t D, int64_t k, const void *dy,
                                const void *eo, const int32_t *row_map, float *dweights) {
  const unsigned blocks = dsc_cuda_blocks(n, MOE_WARPS, 65535);
  if (row_vw<TS>(D, dy, eo) > 1)
    unpermute_dw_kernel<TS, 16 / sizeof(TS)><<<blocks, MOE_WARPS * 32, 0, s>>>(
        n, D, k, (const TS *)dy, (const TS *)eo, row_map, dweights);
  else
    unpermute_dw_kernel<TS, 1><<<blocks, MOE_WARPS * 32, 0, s>>>(n, D, k, (const TS *)dy,
                                                                 (const TS *)eo, row_map, dweights);
}

template <typename TS>
static void unpermute_dexp_launch(cudaStream_t s, int64_t n, int64_t D, int64_t k,
                                  const uint32_t *skeys, const int32_t *svals,
                                  const float *weights, const void *dy, void *dexp,
                                  unsigned char *named) {
  const int vw = row_vw<TS>(D, dy, dexp);
  const int threads = row_threads(D / vw);
  if (vw > 1)
    unpermute_dexp_kernel<TS, 16 / sizeof(TS)><<<row_blocks(n), threads, 0, s>>>(
        n, D, k, skeys, svals, weights, (const TS *)dy, (TS *)dexp, named);
  else
    unpermute_dexp_kernel<TS, 1><<<row_blocks(n), threads, 0, s>>>(
        n, D, k, skeys, svals, weights, (const TS *)dy, (TS *)dexp, named);
}

template <typename U>
static void zero_unnamed_launch(cudaStream_t s, int64_t R, int64_t row_bytes,
                                const unsigned char *named, void *out) {
  const int64_t units = row_bytes / (int64_t)sizeof(U);
  zero_unnamed_kernel<U><<<row_blocks(R), row_threads(units), 0, s>>>(R, units, named, (U *)out);
}

extern "C" dsc_status dsc_cuda_moe_unpermute_bwd(dsc_context *ctx, dsc_dtype dt, int64_t T,
                                                 int64_t D, int64_t k, int64_t R,
                                                 const void *dy /* [T,D] dt */,
                                                 const void *expert_out /* [R,D] dt */,
                                                 const int32_t *row_map /* [T,k] */,
                                                 const float *weights /* [T,k] */,
                                                 void *dexpert_out /* [R,D] dt or NULL */,
                                                 float *dweights /* [T,k] or NULL */) {
  static const char *const FN = "dsc_cuda_moe_unpermute_bwd";
  DSC_CUDA_ENTER(ctx, FN);
  cudaStream_t s = dsc_cuda_stream(ctx);
  const int64_t n = T > 0 && k > 0 ? T * k : 0;
  const bool b16 = dt == DSC_DTYPE_BFLOAT16;
  const int64_t es = esize_of(dt);
  if (dweights && n > 0) {
    if (D <= 0) { /* empty dot products */
      DSC_CUDA_TRY(cudaMemsetAsync(dweights, 0, (size_t)n * sizeof(float), s), FN);
    } else {
      if (b16)
        unpermute_dw_launch<__nv_bfloat16>(s, n, D, k, dy, expert_out, row_map, dweights);
      else
        unpermute_dw_launch<float>(s, n, D, k, dy, expert_out, row_map, dweights);
      DSC_CUDA_CHECK_LAUNCH(FN);
    }
  }
  if (!dexpert_out || R <= 0 || D <= 0) return DSC_OK;
  if (n == 0) { /* no pair names a row: all zero */
    DSC_CUDA_TRY(cudaMemsetAsync(dexpert_out, 0, (size_t)(R * D * es), s), FN);
    return DSC_OK;
  }
  if (n > INT32_MAX || R > (int64_t)UINT32_MAX)
    return dsc_error(DSC_ERR_UNSUPPORTED, FN,
                     "row_map: at most 2^31-1 (token, slot) pairs, got %lld", (long long)n);
  /* Group the pairs by row (stable radix sort of (row, i)): each row is then written once
   * by one block, summing its pairs in flat order, with no atomics. */
  PairSort ps;
  ps.n = n;
  ps.end_bit = key_bits(R);
  size_t sort_bytes = 0;
  DSC_TRY(pair_sort_plan(&ps, s, FN, &sort_bytes));
  /* One workspace, partitioned: named [R] bytes, then the sort's slice. */
  const size_t bR = dsc_cuda_round256((size_t)R);
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, bR + sort_bytes, &ws));
  char *base = (char *)ws;
  unsigned char *named = (unsigned char *)base; /* [R] */
  pair_sort_carve(&ps, base + bR);
  const uint32_t *skeys = ps.skeys; /* [n] */
  const int32_t *svals = ps.svals;  /* [n] */
  DSC_CUDA_TRY(cudaMemsetAsync(named, 0, (size_t)R, s), FN);
  moe_keys_kernel<int32_t><<<dsc_cuda_blocks(n, 256), 256, 0, s>>>(n, row_map, ps.keys, ps.vals);
  DSC_CUDA_CHECK_LAUNCH(FN);
  DSC_TRY(pair_sort_run(&ps, s, FN));
  if (b16)
    unpermute_dexp_launch<__nv_bfloat16>(s, n, D, k, skeys, svals, weights, dy, dexpert_out,
                                         named);
  else
    unpermute_dexp_launch<float>(s, n, D, k, skeys, svals, weights, dy, dexpert_out, named);
  DSC_CUDA_CHECK_LAUNCH(FN);
  const int64_t row_bytes = D * es;
  switch (copy_unit(row_bytes, dexpert_out, dexpert_out)) {
    case 16:
      zero_unnamed_launch<uint4>(s, R, row_bytes, named, dexpert_out);
      break;
    case 4:
      zero_unnamed_launch<uint32_t>(s, R, row_bytes, named, dexpert_out);
      break;
    default:
      zero_unnamed_launch<uint16_t>(s, R, row_bytes, named, dexpert_out);
  }
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}
