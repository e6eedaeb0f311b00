/*
 * cpu/grpo.c -- GRPO advantages and the GRPO policy loss with its gradient, on the CPU (the
 * reference for kernels/grpo.cu). The formulas are in deepseek_c.h (section "GRPO").
 *
 * Legend: B completions (rows), T positions per row, G group size, n = B rewards,
 *         n_b the completion tokens of row b (targets != ignore_index), S the counted rows
 *         (n_b > 0 and kept), N_tok = sum of n_b over them, Lmax DR_GRPO's normalizer.
 *
 * Everything is accumulated in double in a fixed order (rows in order, positions in order
 * within a row), so the results do not depend on threads; these are O(B*T) passes over
 * small arrays next to the model's forward and backward.
 */
#include <math.h>

#include "cpu_common.h"

static inline int64_t target_at(int tgt64, const void *targets, int64_t i) {
  return tgt64 ? ((const int64_t *)targets)[i] : (int64_t)((const int32_t *)targets)[i];
}

dsc_status dsc_cpu_find_nonfinite(dsc_context *ctx, int64_t n, const float *x /* [n] */,
                                  int64_t *bad_pos) {
  (void)ctx;
  *bad_pos = -1;
  for (int64_t i = 0; i < n; ++i)
    if (!isfinite(x[i])) {
      *bad_pos = i;
      break;
    }
  return DSC_OK;
}

/* Sample standard deviation (n - 1 in the denominator) of r [n], n >= 2, around mean. */
static double sample_std(int64_t n, const float *r, double mean) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = (double)r[i] - mean;
    ss += d * d;
  }
  return sqrt(ss / (double)(n - 1));
}

static double mean_of(int64_t n, const float *r) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += (double)r[i];
  return s / (double)n;
}

dsc_status dsc_cpu_grpo_advantages(dsc_context *ctx, const dsc_grpo_params *p, int64_t n,
                                   const float *rewards /* [n] */, float *adv /* [n] */,
                                   int32_t *keep /* [n] or NULL */) {
  (void)ctx;
  const int64_t G = p->group_size;
  const double batch_std = p->scale_rewards == DSC_GRPO_SCALE_BATCH && n > 1
                               ? sample_std(n, rewards, mean_of(n, rewards))
                               : 0.0;
  for (int64_t g0 = 0; g0 < n; g0 += G) {
    const float *r = rewards + g0; /* [G] this group's */
    const double mean = mean_of(G, r);
    float lo = r[0], hi = r[0];
    for (int64_t i = 1; i < G; ++i) {
      lo = r[i] < lo ? r[i] : lo;
      hi = r[i] > hi ? r[i] : hi;
    }
    double denom = 1.0;
    if (p->scale_rewards == DSC_GRPO_SCALE_GROUP) denom = sample_std(G, r, mean) + (double)p->std_eps;
    else if (p->scale_rewards == DSC_GRPO_SCALE_BATCH) denom = batch_std + (double)p->std_eps;
    const int32_t k = !(p->drop_zero_std_groups && lo == hi);
    for (int64_t i = 0; i < G; ++i) {
      adv[g0 + i] = (float)(((double)r[i] - mean) / denom);
      if (keep) keep[g0 + i] = k;
    }
  }
  return DSC_OK;
}

dsc_status dsc_cpu_grpo_loss(dsc_context *ctx, const dsc_grpo_params *p, int64_t B, int64_t T,
                             int64_t Lmax, const float *lp /* [B,T] */,
                             const float *old /* [B,T] or NULL */,
                             const float *ref /* [B,T] or NULL */, const float *adv /* [B] */,
                             int tgt64, const void *targets /* [B,T] */, int64_t ignore_index,
                             const int32_t *keep /* [B] or NULL */, float *loss /* [1] */,
                             float *dlp /* [B,T] or NULL */, float *stats /* [NUM_STATS] or NULL */) {
  (void)ctx;
  const double lo = 1.0 - (double)p->epsilon_low, hi = 1.0 + (double)p->epsilon_high;
  const double beta = (double)p->beta;
  /* counted rows and tokens first: every weight depends on them */
  int64_t S = 0, Ntok = 0;
  for (int64_t b = 0; b < B; ++b) {
    int64_t nb = 0;
    for (int64_t t = 0; t < T; ++t) nb += target_at(tgt64, targets, b * T + t) != ignore_index;
    if (nb > 0 && (!keep || keep[b])) {
      ++S;
      Ntok += nb;
    }
  }
  double total = 0.0, s_pl = 0.0, s_kl = 0.0, s_rho = 0.0;
  int64_t c_low = 0, c_high = 0;
  for (int64_t b = 0; b < B; ++b) {
    int64_t nb = 0;
    for (int64_t t = 0; t < T; ++t) nb += target_at(tgt64, targets, b * T + t) != ignore_index;
    const int counted = nb > 0 && (!keep || keep[b]);
    /* the aggregation weight of each of this row's tokens */
    double w = 0.0;
    if (counted) {
      if (p->loss_type == DSC_GRPO_LOSS_GRPO) w = 1.0 / ((double)S * (double)nb);
      else if (p->loss_type == DSC_GRPO_LOSS_DR_GRPO) w = 1.0 / ((double)S * (double)Lmax);
      else w = 1.0 / (double)Ntok;
    }
    const double A = (double)adv[b];
    double row = 0.0; /* sum_t L_bt */
    for (int64_t t = 0; t < T; ++t) {
      const int64_t i = b * T + t;
      if (!counted || target_at(tgt64, targets, i) == ignore_index) {
        if (dlp) dlp[i] = 0.0f;
        continue;
      }
      const double l = (double)lp[i];
      const double rho = old ? exp(l - (double)old[i]) : 1.0;
      const double rc = rho < lo ? lo : (rho > hi ? hi : rho); /* NaN stays NaN */
      const double u1 = rho * A, u2 = rc * A;
      const double pl = -(u1 < u2 ? u1 : u2);
      const int clow = A < 0.0 && rho < lo, chigh = A > 0.0 && rho > hi;
      double g = (clow || chigh) ? 0.0 : -A * rho;
      double kl = 0.0, lt = pl;
      if (ref) { /* the statistic always, the term when beta > 0 */
        const double x = (double)ref[i] - l, ex = exp(x);
        kl = ex - x - 1.0;
        if (beta > 0.0) {
          lt += beta * kl;
          g += beta * (1.0 - ex);
        }
      }
      row += lt;
      s_pl += pl;
      s_kl += kl;
      s_rho += rho;
      c_low += clow;
      c_high += chigh;
      if (dlp) dlp[i] = (float)(w * g);
    }
    if (counted) total += w * row;
  }
  loss[0] = (float)total;
  if (stats) {
    const double inv = Ntok > 0 ? 1.0 / (double)Ntok : 0.0;
    stats[DSC_GRPO_STAT_LOSS] = (float)total;
    stats[DSC_GRPO_STAT_POLICY_LOSS] = (float)(s_pl * inv);
    stats[DSC_GRPO_STAT_KL] = (float)(s_kl * inv);
    stats[DSC_GRPO_STAT_CLIP_LOW] = (float)((double)c_low * inv);
    stats[DSC_GRPO_STAT_CLIP_HIGH] = (float)((double)c_high * inv);
    stats[DSC_GRPO_STAT_CLIP_REGION] = (float)((double)(c_low + c_high) * inv);
    stats[DSC_GRPO_STAT_RATIO_MEAN] = (float)(s_rho * inv);
    stats[DSC_GRPO_STAT_TOKENS] = (float)Ntok;
    stats[DSC_GRPO_STAT_SEQUENCES] = (float)S;
  }
  return DSC_OK;
}
