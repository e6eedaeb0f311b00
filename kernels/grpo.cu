/*
 * kernels/grpo.cu -- GRPO advantages and the GRPO policy loss with its gradient on the GPU;
 * the twin of csrc/cpu/grpo.c (formulas in deepseek_c.h, section "GRPO").
 *
 * Legend: B completions (rows), T positions per row, G group size, n = B rewards, n_b the
 *         completion tokens of row b, S the counted rows (n_b > 0 and kept), N_tok their
 *         tokens, Lmax DR_GRPO's normalizer, I the target index type.
 *
 * Advantages: one thread per group walks its G rewards in order (as the CPU does: the same
 * bits); the batch std (scale BATCH) by one thread before them. The loss, four kernels on
 * the stream and no host sync:
 *   1. one block per row counts n_b;
 *   2. one block sums S and N_tok over the rows (integers: exact);
 *   3. one block per row: every token's loss term and dL/dlogp, the row's sums (double) of
 *      the weighted loss and of the statistics (policy term, KL, ratio, clip counts);
 *   4. one block adds the rows' sums in a fixed order into loss[0] and stats.
 * These are O(B*T) passes over small arrays next to the model's forward and backward.
 */
#include "common.cuh"

#define GRPO_THREADS 256

/* ---------------------------------------------------------------- non-finite values */

/* first: [1] lowest position of a non-finite value, ~0 = none (atomicMin: order-free). */
__global__ void grpo_first_nonfinite_kernel(int64_t n, const float *__restrict__ x, unsigned long long *first) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    if (!isfinite(x[i])) {
      atomicMin(first, (unsigned long long)i);
      return; /* the rest of this thread's slice lies at higher positions */
    }
  }
}

extern "C" dsc_status dsc_cuda_find_nonfinite(dsc_context *ctx, int64_t n, const float *x /* [n] */,
                                              int64_t *bad_pos) {
  static const char *const FN = "dsc_cuda_find_nonfinite";
  *bad_pos = -1;
  if (n <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  dsc_cuda_state *st = dsc_cuda_st(ctx);
  cudaStream_t s = dsc_cuda_stream(ctx);
  unsigned long long *first = (unsigned long long *)st->scratch; /* [1] */
  DSC_CUDA_TRY(cudaMemsetAsync(first, 0xff, sizeof(unsigned long long), s), FN);
  grpo_first_nonfinite_kernel<<<dsc_cuda_blocks(n, 256, 4096), 256, 0, s>>>(n, x, first);
  DSC_CUDA_CHECK_LAUNCH(FN);
  unsigned long long *host = (unsigned long long *)st->pinned; /* [1] */
  DSC_TRY(dsc_cuda_to_host(ctx, host, first, sizeof(unsigned long long), FN));
  if (host[0] != ~0ull) *bad_pos = (int64_t)host[0];
  return DSC_OK;
}

/* ---------------------------------------------------------------- advantages */

/* bstd: [1] the sample std of all n rewards (one thread, in order). */
__global__ void grpo_batch_std_kernel(int64_t n, const float *__restrict__ r, double *bstd) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  double mean = 0.0;
  for (int64_t i = 0; i < n; ++i) mean += (double)r[i];
  mean /= (double)n;
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = (double)r[i] - mean;
    ss += d * d;
  }
  *bstd = n > 1 ? sqrt(ss / (double)(n - 1)) : 0.0;
}

/* One thread per group: mean, std, min/max of its G rewards, then its advantages. */
__global__ void grpo_adv_kernel(int64_t ngroups, int64_t G, int scale, float std_eps, int drop,
                                const float *__restrict__ rewards /* [n] */, const double *__restrict__ bstd,
                                float *__restrict__ adv /* [n] */, int32_t *__restrict__ keep /* [n] or NULL */) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < ngroups; g += stride) {
    const float *r = rewards + g * G; /* [G] */
    double mean = 0.0;
    float lo = r[0], hi = r[0];
    for (int64_t i = 0; i < G; ++i) {
      mean += (double)r[i];
      lo = r[i] < lo ? r[i] : lo;
      hi = r[i] > hi ? r[i] : hi;
    }
    mean /= (double)G;
    double denom = 1.0;
    if (scale == DSC_GRPO_SCALE_GROUP) {
      double ss = 0.0;
      for (int64_t i = 0; i < G; ++i) {
        const double d = (double)r[i] - mean;
        ss += d * d;
      }
      denom = sqrt(ss / (double)(G - 1)) + (double)std_eps;
    } else if (scale == DSC_GRPO_SCALE_BATCH) {
      denom = *bstd + (double)std_eps;
    }
    const int32_t k = !(drop && lo == hi);
    for (int64_t i = 0; i < G; ++i) {
      adv[g * G + i] = (float)(((double)r[i] - mean) / denom);
      if (keep) keep[g * G + i] = k;
    }
  }
}

extern "C" dsc_status dsc_cuda_grpo_advantages(dsc_context *ctx, const dsc_grpo_params *p, int64_t n,
                                               const float *rewards /* [n] */, float *adv /* [n] */,
                                               int32_t *keep /* [n] or NULL */) {
  static const char *const FN = "dsc_cuda_grpo_advantages";
  DSC_CUDA_ENTER(ctx, FN);
  if (n <= 0) return DSC_OK;
  cudaStream_t s = dsc_cuda_stream(ctx);
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, sizeof(double), &ws));
  double *bstd = (double *)ws; /* [1] */
  if (p->scale_rewards == DSC_GRPO_SCALE_BATCH) {
    grpo_batch_std_kernel<<<1, 32, 0, s>>>(n, rewards, bstd);
    DSC_CUDA_CHECK_LAUNCH(FN);
  }
  const int64_t ngroups = n / p->group_size;
  grpo_adv_kernel<<<dsc_cuda_blocks(ngroups, 128, 1024), 128, 0, s>>>(
      ngroups, p->group_size, p->scale_rewards, p->std_eps, p->drop_zero_std_groups, rewards, bstd, adv, keep);
  DSC_CUDA_CHECK_LAUNCH(FN);
  return DSC_OK;
}

/* ---------------------------------------------------------------- loss */

/* Per-row sums of kernel 3, in the workspace (structure of arrays over B). */
struct GrpoRows {
  long long *nb;    /* [B] completion tokens of the row */
  long long *tot;   /* [2] S, N_tok */
  double *loss;     /* [B] weight x sum_t L_bt (0 for rows not counted) */
  double *pl, *kl, *rho; /* [B] sums over the row's tokens */
  long long *clo, *chi;  /* [B] clip counts */
};

template <typename I>
__global__ void grpo_count_kernel(int64_t B, int64_t T, const I *__restrict__ targets, int64_t ignore_index,
                                  long long *__restrict__ nb) {
  __shared__ long long smem[32];
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    long long c = 0;
    for (int64_t t = threadIdx.x; t < T; t += blockDim.x) c += (int64_t)targets[b * T + t] != ignore_index;
    c = dsc_block_sum(c, smem);
    if (threadIdx.x == 0) nb[b] = c;
  }
}

__global__ void __launch_bounds__(1024) grpo_total_kernel(int64_t B, const long long *__restrict__ nb,
                                                          const int32_t *__restrict__ keep, long long *tot) {
  __shared__ long long smem[32];
  long long S = 0, Nt = 0;
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x)
    if (nb[b] > 0 && (!keep || keep[b])) {
      ++S;
      Nt += nb[b];
    }
  S = dsc_block_sum(S, smem);
  Nt = dsc_block_sum(Nt, smem);
  if (threadIdx.x == 0) {
    tot[0] = S;
    tot[1] = Nt;
  }
}

template <typename I>
__global__ void grpo_token_kernel(int64_t B, int64_t T, int loss_type, double lo, double hi, double beta, int64_t Lmax,
                                  const float *__restrict__ lp, const float *__restrict__ old,
                                  const float *__restrict__ ref, const float *__restrict__ adv,
                                  const I *__restrict__ targets, int64_t ignore_index, const int32_t *__restrict__ keep,
                                  float *__restrict__ dlp, GrpoRows rows) {
  __shared__ double smem_d[32];
  __shared__ long long smem_l[32];
  const long long S = rows.tot[0], Nt = rows.tot[1];
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    const long long nb = rows.nb[b];
    const bool counted = nb > 0 && (!keep || keep[b]);
    double w = 0.0;
    if (counted) {
      if (loss_type == DSC_GRPO_LOSS_GRPO) w = 1.0 / ((double)S * (double)nb);
      else if (loss_type == DSC_GRPO_LOSS_DR_GRPO) w = 1.0 / ((double)S * (double)Lmax);
      else w = 1.0 / (double)Nt;
    }
    const double A = (double)adv[b];
    double s_l = 0.0, s_pl = 0.0, s_kl = 0.0, s_rho = 0.0;
    long long c_lo = 0, c_hi = 0;
    for (int64_t t = threadIdx.x; t < T; t += blockDim.x) {
      const int64_t i = b * T + t;
      if (!counted || (int64_t)targets[i] == ignore_index) {
        if (dlp) dlp[i] = 0.0f;
        continue;
      }
      const double l = (double)lp[i];
      const double rho = old ? exp(l - (double)old[i]) : 1.0;
      const double rc = rho < lo ? lo : (rho > hi ? hi : rho);
      const double u1 = rho * A, u2 = rc * A;
      const double pl = -(u1 < u2 ? u1 : u2);
      const bool clo = A < 0.0 && rho < lo, chi = A > 0.0 && rho > hi;
      double g = (clo || chi) ? 0.0 : -A * rho;
      double kl = 0.0, lt = pl;
      if (ref) {
        const double x = (double)ref[i] - l, ex = exp(x);
        kl = ex - x - 1.0;
        if (beta > 0.0) {
          lt += beta * kl;
          g += beta * (1.0 - ex);
        }
      }
      s_l += lt;
      s_pl += pl;
      s_kl += kl;
      s_rho += rho;
      c_lo += clo;
      c_hi += chi;
      if (dlp) dlp[i] = (float)(w * g);
    }
    s_l = dsc_block_sum(s_l, smem_d);
    s_pl = dsc_block_sum(s_pl, smem_d);
    s_kl = dsc_block_sum(s_kl, smem_d);
    s_rho = dsc_block_sum(s_rho, smem_d);
    c_lo = dsc_block_sum(c_lo, smem_l);
    c_hi = dsc_block_sum(c_hi, smem_l);
    if (threadIdx.x == 0) {
      rows.loss[b] = counted ? w * s_l : 0.0;
      rows.pl[b] = s_pl;
      rows.kl[b] = s_kl;
      rows.rho[b] = s_rho;
      rows.clo[b] = c_lo;
      rows.chi[b] = c_hi;
    }
  }
}

__global__ void __launch_bounds__(1024) grpo_final_kernel(int64_t B, GrpoRows rows, float *__restrict__ loss,
                                                          float *__restrict__ stats /* or NULL */) {
  __shared__ double smem_d[32];
  __shared__ long long smem_l[32];
  double l = 0.0, pl = 0.0, kl = 0.0, rho = 0.0;
  long long clo = 0, chi = 0;
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x) {
    l += rows.loss[b];
    pl += rows.pl[b];
    kl += rows.kl[b];
    rho += rows.rho[b];
    clo += rows.clo[b];
    chi += rows.chi[b];
  }
  l = dsc_block_sum(l, smem_d);
  pl = dsc_block_sum(pl, smem_d);
  kl = dsc_block_sum(kl, smem_d);
  rho = dsc_block_sum(rho, smem_d);
  clo = dsc_block_sum(clo, smem_l);
  chi = dsc_block_sum(chi, smem_l);
  if (threadIdx.x == 0) {
    loss[0] = (float)l;
    if (stats) {
      const long long Nt = rows.tot[1];
      const double inv = Nt > 0 ? 1.0 / (double)Nt : 0.0;
      stats[DSC_GRPO_STAT_LOSS] = (float)l;
      stats[DSC_GRPO_STAT_POLICY_LOSS] = (float)(pl * inv);
      stats[DSC_GRPO_STAT_KL] = (float)(kl * inv);
      stats[DSC_GRPO_STAT_CLIP_LOW] = (float)((double)clo * inv);
      stats[DSC_GRPO_STAT_CLIP_HIGH] = (float)((double)chi * inv);
      stats[DSC_GRPO_STAT_CLIP_REGION] = (float)((double)(clo + chi) * inv);
      stats[DSC_GRPO_STAT_RATIO_MEAN] = (float)(rho * inv);
      stats[DSC_GRPO_STAT_TOKENS] = (float)Nt;
      stats[DSC_GRPO_STAT_SEQUENCES] = (float)rows.tot[0];
    }
  }
}

template <typename I>
static dsc_status grpo_loss_launch(dsc_context *ctx, const char *fn, const dsc_grpo_params *p, int64_t B, int64_t T,
                                   int64_t Lmax, const float *lp, const float *old, const float *ref, const float *adv,
                                   const void *targets, int64_t ignore_index, const int32_t *keep, float *loss,
                                   float *dlp, float *stats) {
  cudaStream_t s = dsc_cuda_stream(ctx);
  /* one workspace: nb [B], tot [2], loss/pl/kl/rho [B] doubles, clo/chi [B] */
  const size_t rowb = dsc_cuda_round256((size_t)(B > 0 ? B : 1) * 8);
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, 7 * rowb + 256, &ws));
  char *w = (char *)ws;
  GrpoRows rows;
  rows.nb = (long long *)w;
  rows.tot = (long long *)(w + rowb);
  rows.loss = (double *)(w + rowb + 256);
  rows.pl = (double *)(w + 2 * rowb + 256);
  rows.kl = (double *)(w + 3 * rowb + 256);
  rows.rho = (double *)(w + 4 * rowb + 256);
  rows.clo = (long long *)(w + 5 * rowb + 256);
  rows.chi = (long long *)(w + 6 * rowb + 256);
  const unsigned blocks = (unsigned)(B < 65536 ? (B > 0 ? B : 1) : 65536);
  const int threads = T >= 1024 ? 256 : (T >= 128 ? 128 : 32);
  grpo_count_kernel<I><<<blocks, threads, 0, s>>>(B, T, (const I *)targets, ignore_index, rows.nb);
  DSC_CUDA_CHECK_LAUNCH(fn);
  grpo_total_kernel<<<1, 1024, 0, s>>>(B, rows.nb, keep, rows.tot);
  DSC_CUDA_CHECK_LAUNCH(fn);
  grpo_token_kernel<I><<<blocks, threads, 0, s>>>(
      B, T, p->loss_type, 1.0 - (double)p->epsilon_low, 1.0 + (double)p->epsilon_high, (double)p->beta, Lmax, lp, old,
      ref, adv, (const I *)targets, ignore_index, keep, dlp, rows);
  DSC_CUDA_CHECK_LAUNCH(fn);
  grpo_final_kernel<<<1, 1024, 0, s>>>(B, rows, loss, stats);
  DSC_CUDA_CHECK_LAUNCH(fn);
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_grpo_loss(dsc_context *ctx, const dsc_grpo_params *p, int64_t B, int64_t T,
                                         int64_t Lmax, const float *lp /* [B,T] */, const float *old /* or NULL */,
                                         const float *ref /* or NULL */, const float *adv /* [B] */, int tgt64,
                                         const void *targets /* [B,T] */, int64_t ignore_index,
                                         const int32_t *keep /* [B] or NULL */, float *loss /* [1] */,
                                         float *dlp /* [B,T] or NULL */, float *stats /* or NULL */) {
  static const char *const FN = "dsc_cuda_grpo_loss";
  DSC_CUDA_ENTER(ctx, FN);
  if (tgt64)
    return grpo_loss_launch<int64_t>(ctx, FN, p, B, T, Lmax, lp, old, ref, adv, targets, ignore_index, keep, loss,
                                     dlp, stats);
  return grpo_loss_launch<int32_t>(ctx, FN, p, B, T, Lmax, lp, old, ref, adv, targets, ignore_index, keep, loss, dlp,
                                   stats);
}
