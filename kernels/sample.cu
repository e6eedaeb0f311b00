/*
 * kernels/sample.cu -- token sampling on the GPU (dsc_sample_tokens); the twin of
 * csrc/cpu/sample.c, whose header states the rules. One CTA per row.
 *
 * Legend: B rows, V vocabulary, p the row's unnormalized probabilities (float64, in a
 * [B,V] workspace), "key" of an element: its p (descending), then its id (ascending) --
 * the order in which the CPU sorts.
 *
 * Greedy: a block argmax over (value, id): NaN never wins, ties go to the lower id: the
 * same token as the CPU always.
 * Sampling: p exactly as the CPU (same double formula, same exp). top_k and top_p without a
 * sort: for positive doubles the bit pattern orders like the value, so the k-th largest p
 * is found bit by bit (64 counting passes over the row), then among the ties at that value
 * the lowest ids by a second bit search on the id (31 passes); top_p likewise on the
 * kept mass (the largest threshold whose mass at or above it still reaches the target).
 * The searches are kernels/sample_select.cuh, checked on the CPU against the sort by
 * tests/c/test_sample_select.cpp. Cost: ~95 passes over the row per filter (a row of 129k
 * stays in L2), instead of a sort.
 * Every count and sum is a fixed-partition block reduction: deterministic run to run.
 * Where it can differ from the CPU: sums of doubles are added in another order (the kept
 * total of top_p, the normalizer, the running sum of the draw: per-thread chunks, then the
 * chunks in order), so a draw whose u falls within rounding of a boundary, or a top_p cut
 * within rounding of the target, can pick a neighbouring id. The integer steps (argmax,
 * top_k's set) are exact.
 */
#include "common.cuh"
#include "sample_math.h"
#include "sample_select.cuh"

#include <climits>

struct DscMaxLL {
  __device__ __forceinline__ long long operator()(long long a, long long b) const { return a > b ? a : b; }
};
struct DscMinI {
  __device__ __forceinline__ int operator()(int a, int b) const { return a < b ? a : b; }
};

static inline int sm_threads(int64_t V) { return V >= 16384 ? 1024 : (V >= 1024 ? 256 : 64); }

/* (value, id) argmax of two candidates: NaN (id -1) never wins, ties: lower id. */
__device__ __forceinline__ void sm_better(float &bv, int &bi, float v, int i) {
  if (i < 0) return;
  if (bi < 0 || v > bv || (v == bv && i < bi)) {
    bv = v;
    bi = i;
  }
}

__device__ int sm_block_argmax(float v, int i, float *sv /* [32] */, int *si /* [32] */) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    sm_better(v, i, ov, oi);
  }
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (int)(blockDim.x >> 5);
  __syncthreads();
  if (lane == 0) {
    sv[wid] = v;
    si[wid] = i;
  }
  __syncthreads();
  if (wid == 0) {
    v = lane < nw ? sv[lane] : 0.0f;
    i = lane < nw ? si[lane] : -1;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, v, o);
      const int oi = __shfl_xor_sync(0xffffffffu, i, o);
      sm_better(v, i, ov, oi);
    }
    if (lane == 0) si[0] = i;
  }
  __syncthreads();
  return si[0];
}

__device__ __forceinline__ uint64_t sm_bits(double p) { return (uint64_t)__double_as_longlong(p); }

/* Which elements a pass looks at: kept so far (top_k), then a threshold test on the key. */
struct SmSel {
  int use_k;
  uint64_t tk;  /* top_k: elements with bits > tk, or == tk and id <= ik */
  int64_t ik;
  __device__ __forceinline__ bool kept(uint64_t b, int64_t v) const {
    return b != 0 && (!use_k || ss_inside(b, v, tk, ik));
  }
};

__global__ void sm_greedy_kernel(int64_t B, int64_t V, const float *__restrict__ logits,
                                 const int32_t *__restrict__ active, int32_t *__restrict__ tokens) {
  __shared__ float sv[32];
  __shared__ int si[32];
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    if (active && !active[b]) continue; /* uniform over the block */
    const float *l = logits + b * V;
    float bv = 0.0f;
    int bi = -1;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      const float x = l[v];
      if (x == x) sm_better(bv, bi, x, (int)v);
    }
    const int best = sm_block_argmax(bv, bi, sv, si);
    if (threadIdx.x == 0) tokens[b] = best;
  }
}

__global__ void sm_sample_kernel(int64_t B, int64_t V, float temperature, int32_t top_k, float top_p,
                                 const float *__restrict__ logits /* [B,V] */, int64_t *__restrict__ rng /* [B,2] */,
                                 const int32_t *__restrict__ active, int32_t *__restrict__ tokens,
                                 double *__restrict__ pw /* [B,V] */) {
  __shared__ float sf[32];
  __shared__ double sd[32];
  __shared__ long long sl[32];
  __shared__ double chunk[1024];
  __shared__ int sfound[32];
  const double invT = 1.0 / (double)temperature;
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    if (active && !active[b]) continue;
    const float *l = logits + b * V;
    double *p = pw + b * V;
    /* 1. +inf present? the largest finite logit */
    float mxf = -INFINITY;
    long long inf = 0;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      const float x = l[v];
      if (isinf(x) && x > 0) inf = 1;
      else if (isfinite(x)) mxf = fmaxf(mxf, x);
    }
    const int any_inf = dsc_block_sum(inf, sl) > 0;
    const double mx = (double)dsc_block_max(mxf, sf);
    /* 2. p and the number of positive entries */
    long long n = 0;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      const float x = l[v];
      double pv;
      if (any_inf) pv = (isinf(x) && x > 0) ? 1.0 : 0.0;
      else pv = isfinite(x) ? exp(((double)x - mx) * invT) : 0.0;
      p[v] = pv;
      n += pv > 0.0;
    }
    n = dsc_block_sum(n, sl);
    if (n == 0) {
      if (threadIdx.x == 0) tokens[b] = -1;
      continue;
    }
    /* 3. top_k: the k-th largest key, then the lowest ids among its ties */
    SmSel sel{0, 0, 0};
    if (top_k > 0 && top_k < n) {
      const uint64_t t = ss_threshold_bits(
          [&](uint64_t cand) {
            long long c = 0;
            for (int64_t v = threadIdx.x; v < V; v += blockDim.x) c += sm_bits(p[v]) >= cand;
            return dsc_block_sum(c, sl);
          },
          (long long)top_k);
      long long gt = 0;
      for (int64_t v = threadIdx.x; v < V; v += blockDim.x) gt += sm_bits(p[v]) > t;
      const long long above = dsc_block_sum(gt, sl);
      const int64_t x = ss_tie_cut(
          [&](int64_t cand) {
            long long c = 0;
            for (int64_t v = threadIdx.x; v < V && v < cand; v += blockDim.x) c += sm_bits(p[v]) == t;
            return dsc_block_sum(c, sl);
          },
          0LL, (long long)top_k - above);
      sel = SmSel{1, t, x};
    }
    /* 4. top_p: the shortest key-ordered prefix of the kept set reaching top_p of its mass */
    uint64_t tp = 0;
    int64_t ip = INT64_MAX;
    if (top_p < 1.0f) {
      auto mass_ge = [&](uint64_t cand) {
        double c = 0.0;
        for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
          const double pv = p[v];
          const uint64_t bb = sm_bits(pv);
          if (sel.kept(bb, v) && bb >= cand) c += pv;
        }
        return dsc_block_sum(c, sd);
      };
      const double target = (double)top_p * mass_ge(1);
      tp = ss_threshold_bits(mass_ge, target);
      double above = 0.0;
      for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
        const double pv = p[v];
        const uint64_t bb = sm_bits(pv);
        if (sel.kept(bb, v) && bb > tp) above += pv;
      }
      above = dsc_block_sum(above, sd);
      ip = ss_tie_cut(
          [&](int64_t cand) {
            double c = 0.0;
            for (int64_t v = threadIdx.x; v < V && v < cand; v += blockDim.x) {
              const double pv = p[v];
              const uint64_t bb = sm_bits(pv);
              if (sel.kept(bb, v) && bb == tp) c += pv;
            }
            return dsc_block_sum(c, sd);
          },
          above, target);
    }
    /* 5. the kept set, normalized (p *= 1/s as the CPU), then the draw over ids in order:
     * thread j owns ids [j*ch, (j+1)*ch) so the running sum goes in id order */
    double s = 0.0;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      const double pv = p[v];
      const uint64_t bb = sm_bits(pv);
      const bool k = sel.kept(bb, v) && (top_p >= 1.0f || ss_inside(bb, v, tp, ip));
      if (!k) p[v] = 0.0;
      else s += pv;
    }
    s = dsc_block_sum(s, sd);
    const double inv = 1.0 / s;
    __syncthreads(); /* p writes above by other threads, read by chunk below */
    const int64_t ch = (V + blockDim.x - 1) / blockDim.x;
    const int64_t v0 = (int64_t)threadIdx.x * ch, v1 = v0 + ch < V ? v0 + ch : V;
    double own = 0.0;
    long long last = -1;
    for (int64_t v = v0; v < v1; ++v) {
      const double q = p[v] * inv;
      if (q > 0.0) {
        own += q;
        last = v;
      }
    }
    chunk[threadIdx.x] = own;
    long long lastall = dsc_block_reduce(last, DscMaxLL(), -1LL, sl);
    __syncthreads();
    if (threadIdx.x == 0) { /* exclusive prefix in thread (= id) order */
      double c = 0.0;
      for (unsigned j = 0; j < blockDim.x; ++j) {
        const double o = chunk[j];
        chunk[j] = c;
        c += o;
      }
      uint64_t ctr = (uint64_t)rng[2 * b + 1];
      const double u = dsc_sample_urand((uint64_t)rng[2 * b], &ctr);
      rng[2 * b + 1] = (int64_t)ctr;
      sd[0] = u * c; /* target: u times the total */
    }
    __syncthreads();
    const double target = sd[0];
    double c = chunk[threadIdx.x];
    int found = INT_MAX;
    for (int64_t v = v0; v < v1; ++v) {
      const double q = p[v] * inv;
      if (q <= 0.0) continue;
      c += q;
      if (target < c) {
        found = (int)v;
        break;
      }
    }
    found = dsc_block_reduce(found, DscMinI(), INT_MAX, sfound);
    if (threadIdx.x == 0) tokens[b] = found != INT_MAX ? found : (int32_t)(lastall < 0 ? 0 : lastall);
  }
}

extern "C" dsc_status dsc_cuda_sample_tokens(dsc_context *ctx, int64_t B, int64_t V, float temperature,
                                             int32_t top_k, float top_p, const float *logits /* [B,V] */,
                                             int64_t *rng /* [B,2] */, const int32_t *active /* [B] or NULL */,
                                             int32_t *tokens /* [B] */) {
  static const char *const FN = "dsc_cuda_sample_tokens";
  DSC_CUDA_ENTER(ctx, FN);
  if (B <= 0) return DSC_OK;
  cudaStream_t st = dsc_cuda_stream(ctx);
  const unsigned blocks = (unsigned)(B < 65536 ? B : 65536);
  const int thr = sm_threads(V);
  if (temperature == 0.0f) {
    sm_greedy_kernel<<<blocks, thr, 0, st>>>(B, V, logits, active, tokens);
    DSC_CUDA_CHECK_LAUNCH(FN);
    return DSC_OK;
  }
  int ok = 1;
  const size_t bytes = dsc_cbytes(dsc_cmul(B, V, &ok), sizeof(double), &ok);
  if (!ok) return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "a [%lld, %lld] float64 scratch does not fit",
                            (long long)B, (long long)V);
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, bytes, &ws));
  sm_sample_kernel<<<blocks, thr, 0, st>>>(B, V, temperature, top_k, top_p, logits, rng, active, tokens,
                                           (double *)ws);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}
