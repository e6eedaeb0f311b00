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

/* The greedy token of a row l [V], computed by the whole block (uniform result). */
__device__ int sm_row_argmax(int64_t V, const float *l) {
  __shared__ float sv[32];
  __shared__ int si[32];
  float bv = 0.0f;
  int bi = -1;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const float x = l[v];
    if (x == x) sm_better(bv, bi, x, (int)v);
  }
  return sm_block_argmax(bv, bi, sv, si);
}

/* Sampling of one row l [V] by the whole block (the rules of cpu/sample.c); p [V] the
 * row's float64 scratch. store: p is left holding the row's distribution (kept entries
 * normalized, the rest 0: dsc_cpu_sample_dist's output). rng (the row's key, counter) NULL:
 * no draw. Returns the token (0 when not drawn), -1 when the row has nothing to sample;
 * uniform over the block. */
__device__ int sm_sample_row(int64_t V, float temperature, int32_t top_k, float top_p, const float *__restrict__ l,
                             double *__restrict__ p, int store, int64_t *__restrict__ rng) {
  __shared__ float sf[32];
  __shared__ double sd[32];
  __shared__ long long sl[32];
  __shared__ double chunk[1024];
  __shared__ int sfound[32];
  const double invT = 1.0 / (double)temperature;
  {
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
    if (n == 0) return -1;
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
    if (!rng) { /* the distribution only */
      if (store)
        for (int64_t v = v0; v < v1; ++v) p[v] *= inv;
      __syncthreads();
      return 0;
    }
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
      uint64_t ctr = (uint64_t)rng[1];
      const double u = dsc_sample_urand((uint64_t)rng[0], &ctr);
      rng[1] = (int64_t)ctr;
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
    if (store) { /* after every read of the chunk (each thread writes its own) */
      for (int64_t v = v0; v < v1; ++v) p[v] *= inv;
      __syncthreads();
    }
    return found != INT_MAX ? found : (int)(lastall < 0 ? 0 : lastall);
  }
}

__global__ void sm_sample_kernel(int64_t B, int64_t V, float temperature, int32_t top_k, float top_p,
                                 const float *__restrict__ logits /* [B,V] */, int64_t *__restrict__ rng /* [B,2] */,
                                 const int32_t *__restrict__ active, int32_t *__restrict__ tokens,
                                 double *__restrict__ pw /* [B,V] */) {
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    if (active && !active[b]) continue;
    const int t = sm_sample_row(V, temperature, top_k, top_p, logits + b * V, pw + b * V, 0, rng + 2 * b);
    if (threadIdx.x == 0) tokens[b] = t;
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

/* ---- speculative (MTP) decoding's device-resident step (backend.h spec_*; row layouts in
 * core/spec_step.h; the CPU twin in cpu/sample.c). spec_inputs: one thread per row.
 * spec_draft: one CTA per sequence, sm_sample_row with store (q keeps the distribution).
 * spec_verify: first every row the verification may read gets its distribution (one CTA
 * per row, into a [B*Tv, V] float64 workspace; sampling only), then one CTA per sequence
 * walks its drafts in order as generate.c's verify: the rng draws, acceptance tests and
 * emissions are thread 0's arithmetic repeated by every thread (uniform control flow);
 * the residual / bonus draws are block draws over ids in order. Where it can differ from
 * the CPU: the float64 sums (distribution normalizers, draw totals) are added in another
 * order, as in dsc_sample_tokens (see the header). */

#include "spec_step.h"

/* A draw over weights w(v) >= 0, v < V, by the whole block: the first id (ascending) whose
 * running sum exceeds u times the total, else the last positive one (dsc_cpu_sample_draw;
 * thread j owns ids [j*ch, (j+1)*ch) so the running sum goes in id order). */
template <typename W>
__device__ int sv_block_draw(int64_t V, W w, double u) {
  __shared__ double chunk[1024];
  __shared__ double st[32];
  __shared__ long long sl[32];
  __shared__ int sfound[32];
  const int64_t ch = (V + blockDim.x - 1) / blockDim.x;
  const int64_t v0 = (int64_t)threadIdx.x * ch, v1 = v0 + ch < V ? v0 + ch : V;
  double own = 0.0;
  long long last = -1;
  for (int64_t v = v0; v < v1; ++v) {
    const double x = w(v);
    if (x > 0.0) {
      own += x;
      last = v;
    }
  }
  __syncthreads(); /* the previous call's readers of chunk / st */
  chunk[threadIdx.x] = own;
  const long long lastall = dsc_block_reduce(last, DscMaxLL(), -1LL, sl);
  __syncthreads();
  if (threadIdx.x == 0) {
    double c = 0.0;
    for (unsigned j = 0; j < blockDim.x; ++j) {
      const double o = chunk[j];
      chunk[j] = c;
      c += o;
    }
    st[0] = u * c;
  }
  __syncthreads();
  const double target = st[0];
  double c = chunk[threadIdx.x];
  int found = INT_MAX;
  for (int64_t v = v0; v < v1; ++v) {
    const double x = w(v);
    if (x <= 0.0) continue;
    c += x;
    if (target < c) {
      found = (int)v;
      break;
    }
  }
  found = dsc_block_reduce(found, DscMinI(), INT_MAX, sfound);
  return found != INT_MAX ? found : (int)(lastall < 0 ? 0 : lastall);
}

__global__ void sv_inputs_kernel(int32_t mode, int64_t B, int32_t T, int32_t K, int32_t j, int32_t mx,
                                 const int32_t *__restrict__ plen, const int32_t *__restrict__ state,
                                 const int32_t *__restrict__ out, const int32_t *__restrict__ drafts,
                                 const int32_t *__restrict__ nd, const int32_t *__restrict__ acc,
                                 int32_t *__restrict__ ids, int32_t *__restrict__ pos, int32_t *__restrict__ gidx,
                                 int32_t *__restrict__ last) {
  const int64_t n = B * T;
  for (int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; r < n; r += (int64_t)gridDim.x * blockDim.x)
    dsc_spec_inputs_row(mode, r / T, (int32_t)(r % T), T, K, j, mx, plen, state, B, out, drafts, nd, acc, ids, pos,
                        gidx, last);
}

__global__ void __launch_bounds__(1024) sv_draft_kernel(int64_t B, int32_t K, int32_t j, int64_t V, float temperature, int32_t top_k,
                                float top_p, const float *__restrict__ logits /* [B,V] */,
                                int64_t *__restrict__ rng /* [B,2] */, const int32_t *__restrict__ nd,
                                int32_t *__restrict__ drafts /* [B,K] */, double *__restrict__ q /* [B,K,V] */) {
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    if (nd[b] <= j) continue; /* uniform over the block */
    const float *l = logits + b * V;
    const int t = temperature == 0.0f ? sm_row_argmax(V, l)
                                      : sm_sample_row(V, temperature, top_k, top_p, l, q + (b * K + j) * V, 1,
                                                      rng + 2 * b);
    if (threadIdx.x == 0) drafts[b * K + j] = t;
  }
}

/* The distributions of the rows a verification may read: row b*Tv + jj, jj <= nd[b], of an
 * alive sequence; bad[row] = 1 when it has nothing to sample. */
__global__ void __launch_bounds__(1024) sv_dist_kernel(int64_t B, int32_t Tv, int64_t V, float temperature, int32_t top_k, float top_p,
                               const float *__restrict__ logits /* [B*Tv,V] */, const int32_t *__restrict__ state,
                               const int32_t *__restrict__ nd, double *__restrict__ pd /* [B*Tv,V] */,
                               int32_t *__restrict__ bad /* [B*Tv] */) {
  for (int64_t r = blockIdx.x; r < B * Tv; r += gridDim.x) {
    const int64_t b = r / Tv;
    if (!state[b] || r % Tv > nd[b]) continue;
    const int t = sm_sample_row(V, temperature, top_k, top_p, logits + r * V, pd + r * V, 1, nullptr);
    if (threadIdx.x == 0) bad[r] = t < 0;
  }
}

__global__ void __launch_bounds__(1024) sv_verify_kernel(int64_t B, int32_t K, int64_t V, int32_t mx, int32_t eos, int greedy,
                                 const float *__restrict__ logits /* [B*Tv,V] */,
                                 const int32_t *__restrict__ drafts /* [B,K] */,
                                 const double *__restrict__ q /* [B,K,V] */,
                                 const double *__restrict__ pd /* [B*Tv,V] */, const int32_t *__restrict__ bad,
                                 int64_t *__restrict__ rng, int32_t *__restrict__ state, int32_t *__restrict__ out,
                                 int32_t *__restrict__ nd, int32_t *__restrict__ acc, int32_t nrec,
                                 int32_t *__restrict__ cnt, int32_t *__restrict__ rec) {
  __shared__ double sd[32];
  const int64_t Tv = 1 + (int64_t)K;
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    if (!state[b]) { /* uniform over the block */
      if (threadIdx.x == 0) nd[b] = 0;
      continue;
    }
    const int32_t kb = nd[b];
    int32_t n = state[B + b], a = 0, ne = 0, alive = 1;
    uint64_t ctr = (uint64_t)rng[2 * b + 1];
    const uint64_t key = (uint64_t)rng[2 * b];
    for (int32_t jj = 0; jj <= kb; ++jj) {
      const int64_t row = b * Tv + jj;
      int32_t tok;
      int accepted = 0;
      const int32_t x = jj < kb ? drafts[b * K + jj] : 0;
      if (greedy) {
        tok = sm_row_argmax(V, logits + row * V);
        if (jj < kb) accepted = tok >= 0 && tok == x;
      } else if (bad[row]) {
        tok = -1;
      } else {
        const double *p = pd + row * V;
        if (jj < kb) {
          if (x < 0) {
            tok = -1;
          } else {
            const double *qr = q + (b * K + jj) * V;
            const double u = dsc_sample_urand(key, &ctr);
            accepted = u * qr[x] < p[x];
            if (accepted) {
              tok = x;
            } else {
              double s = 0.0;
              for (int64_t v = threadIdx.x; v < V; v += blockDim.x) s += p[v] > qr[v] ? p[v] - qr[v] : 0.0;
              s = dsc_block_sum(s, sd);
              const double u2 = dsc_sample_urand(key, &ctr);
              if (s > 0.0)
                tok = sv_block_draw(V, [&](int64_t v) { return p[v] > qr[v] ? p[v] - qr[v] : 0.0; }, u2);
              else
                tok = sv_block_draw(V, [&](int64_t v) { return p[v]; }, u2);
            }
          }
        } else {
          tok = sv_block_draw(V, [&](int64_t v) { return p[v]; }, dsc_sample_urand(key, &ctr));
        }
      }
      if (jj < kb && x < 0) { /* the draft's logits had nothing to sample */
        tok = -1;
        accepted = 0;
      }
      if (threadIdx.x == 0) out[b * mx + n] = tok;
      ++n;
      ++ne;
      a += accepted;
      if (tok < 0 || tok == eos || n >= mx) {
        alive = 0;
        break;
      }
      if (!accepted) break;
    }
    __syncthreads(); /* every thread read state / nd above */
    if (threadIdx.x == 0) {
      rng[2 * b + 1] = (int64_t)ctr;
      state[b] = alive;
      state[B + b] = n;
      acc[b] = a;
      rec[(int64_t)(cnt[b] % nrec) * B + b] = dsc_spec_rec(ne, a, kb);
      cnt[b] += 1;
      nd[b] = dsc_spec_wanted(alive, n, K, mx);
    }
  }
}

extern "C" dsc_status dsc_cuda_spec_inputs(dsc_context *ctx, int32_t mode, int64_t B, int32_t T, int32_t K, int32_t j,
                                           int32_t max_new, const int32_t *plen, const int32_t *state,
                                           const int32_t *out, const int32_t *drafts, const int32_t *nd,
                                           const int32_t *acc, int32_t *ids, int32_t *pos, int32_t *gidx,
                                           int32_t *last) {
  static const char *const FN = "dsc_cuda_spec_inputs";
  DSC_CUDA_ENTER(ctx, FN);
  const int64_t n = B * T;
  if (n <= 0) return DSC_OK;
  sv_inputs_kernel<<<dsc_cuda_blocks(n, 128), 128, 0, dsc_cuda_stream(ctx)>>>(mode, B, T, K, j, max_new, plen, state,
                                                                             out, drafts, nd, acc, ids, pos, gidx,
                                                                             last);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_spec_draft(dsc_context *ctx, int64_t B, int32_t K, int32_t j, int64_t V,
                                          float temperature, int32_t top_k, float top_p, const float *logits,
                                          int64_t *rng, const int32_t *nd, int32_t *drafts, double *q) {
  static const char *const FN = "dsc_cuda_spec_draft";
  DSC_CUDA_ENTER(ctx, FN);
  if (B <= 0) return DSC_OK;
  const unsigned blocks = (unsigned)(B < 65536 ? B : 65536);
  sv_draft_kernel<<<blocks, sm_threads(V), 0, dsc_cuda_stream(ctx)>>>(B, K, j, V, temperature, top_k, top_p, logits,
                                                                      rng, nd, drafts, q);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_spec_verify(dsc_context *ctx, int64_t B, int32_t K, int64_t V, int32_t max_new,
                                           int32_t eos, float temperature, int32_t top_k, float top_p,
                                           const float *logits, const int32_t *drafts, const double *q,
                                           int64_t *rng, int32_t *state, int32_t *out, int32_t *nd, int32_t *acc,
                                           int32_t nrec, int32_t *cnt, int32_t *rec) {
  static const char *const FN = "dsc_cuda_spec_verify";
  DSC_CUDA_ENTER(ctx, FN);
  if (B <= 0) return DSC_OK;
  cudaStream_t st = dsc_cuda_stream(ctx);
  const int greedy = temperature == 0.0f;
  const int64_t rows = B * (1 + (int64_t)K);
  double *pd = NULL;
  int32_t *bad = NULL;
  if (!greedy) { /* [rows, V] distributions, then bad [rows] */
    int ok = 1;
    const size_t pb = dsc_calign(dsc_cbytes(dsc_cmul(rows, V, &ok), sizeof(double), &ok), 256, &ok);
    const size_t bytes = dsc_caddz(pb, dsc_cbytes(rows, sizeof(int32_t), &ok), &ok);
    if (!ok) return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "a [%lld, %lld] float64 scratch does not fit",
                              (long long)rows, (long long)V);
    void *ws = NULL;
    DSC_TRY(dsc_workspace(ctx, bytes, &ws));
    pd = (double *)ws;
    bad = (int32_t *)((char *)ws + pb);
    const unsigned rb = (unsigned)(rows < 65536 ? rows : 65536);
    sv_dist_kernel<<<rb, sm_threads(V), 0, st>>>(B, 1 + K, V, temperature, top_k, top_p, logits, state, nd, pd, bad);
    DSC_CUDA_CHECK_LAUNCH(FN);
  }
  const unsigned blocks = (unsigned)(B < 65536 ? B : 65536);
  sv_verify_kernel<<<blocks, sm_threads(V), 0, st>>>(B, K, V, max_new, eos, greedy, logits, drafts, q, pd, bad, rng,
                                                     state, out, nd, acc, nrec, cnt, rec);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}
