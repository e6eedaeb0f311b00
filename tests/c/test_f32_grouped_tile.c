/*
 * test_f32_grouped_tile.c -- CPU simulation of the float32 grouped GEMM
 * (kernels/f32_grouped.cu) with the index functions it uses (kernels/f32_grouped_tile.cuh):
 * every CTA tile's stage loop fills the shared [k][row] tiles (pad words poisoned with NaN)
 * thread by thread through fg_stage_coords, each of the 256 threads accumulates its 4 x 4
 * outputs with fmaf from the shared tiles in the kernel's order, and the stores go through
 * the kernel's guards. The result must equal, bit for bit, the sequential fmaf sum of each
 * output's products in k order (the kernel's stated arithmetic), and a double reference
 * within float32 rounding, for the three MoE products with their strides: forward (rows
 * grouped), input gradient (rows grouped, B transposed) and weight gradient (inner dim
 * grouped, A transposed), with unaligned, empty first/last groups, rows past the last
 * group (zeros), tiles spanning several groups and sizes no multiple of the tile. Outputs
 * are poisoned with NaN first: a missing store shows. Unchecked offsets (decreasing, out
 * of range) must keep every read and write inside the operands.
 * Built and run by tests/test_grouped_linear_f32.py; the last line is "N passed, N failed".
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "../../kernels/f32_grouped_tile.cuh"

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static double urand(void) {
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return (double)(g_rng >> 11) / 9007199254740992.0;
}

/* ---- the kernel, simulated ------------------------------------------------------------ */

static float sa[FG_BK * FG_SROW], sb[FG_BK * FG_SROW];
static int64_t g_reads_bad, g_writes_bad; /* accesses outside the operands' extents */

static void sim_tile(const struct F32GroupedArgs *p, const float *bg, int64_t Bext, int64_t zc, int64_t m0,
                     int64_t n0, int64_t r0, int64_t r1, int64_t k0, int64_t k1, int64_t Aext, int64_t Cext) {
  static float acc[FG_THREADS][FG_TM][FG_TN];
  for (int t = 0; t < FG_THREADS; ++t)
    for (int i = 0; i < FG_TM; ++i)
      for (int j = 0; j < FG_TN; ++j) acc[t][i][j] = 0.0f;
  const int a_kfast = p->sak == 1, b_kfast = p->sbk == 1;
  for (int64_t ks = k0; ks < k1; ks += FG_BK) {
    for (size_t i = 0; i < sizeof sa / sizeof sa[0]; ++i) sa[i] = sb[i] = NAN; /* a read of a pad shows */
    for (int t = 0; t < FG_THREADS; ++t)
      for (int e = t; e < FG_BM * FG_BK; e += FG_THREADS) {
        int row, kk;
        fg_stage_coords(e, a_kfast, &row, &kk);
        const int64_t gm = m0 + row, gk = ks + kk;
        float v = 0.0f;
        if (gm >= r0 && gm < r1 && gk < k1) {
          const int64_t ia = gm * p->sam + gk * p->sak;
          if (ia < 0 || ia >= Aext) ++g_reads_bad; else v = p->a[ia];
        }
        sa[fg_smem_off(row, kk)] = v;
        fg_stage_coords(e, b_kfast, &row, &kk);
        const int64_t gn = n0 + row, gk2 = ks + kk;
        float u = 0.0f;
        if (gn < p->N && gk2 < k1) {
          const int64_t ib = gk2 * p->sbk + gn * p->sbn;
          if (ib < 0 || ib >= Bext) ++g_reads_bad; else u = bg[ib];
        }
        sb[fg_smem_off(row, kk)] = u;
      }
    for (int t = 0; t < FG_THREADS; ++t)
      for (int kk = 0; kk < FG_BK; ++kk) {
        float av[FG_TM], bv[FG_TN];
        for (int i = 0; i < FG_TM; ++i) av[i] = sa[fg_smem_off(fg_out_row(t, i), kk)];
        for (int j = 0; j < FG_TN; ++j) bv[j] = sb[fg_smem_off(fg_out_col(t, j), kk)];
        for (int i = 0; i < FG_TM; ++i)
          for (int j = 0; j < FG_TN; ++j) acc[t][i][j] = fmaf(av[i], bv[j], acc[t][i][j]);
      }
  }
  float *C = p->c + zc * p->M * p->N;
  for (int t = 0; t < FG_THREADS; ++t)
    for (int i = 0; i < FG_TM; ++i)
      for (int j = 0; j < FG_TN; ++j) {
        const int64_t m = m0 + fg_out_row(t, i), n = n0 + fg_out_col(t, j);
        if (m >= r0 && m < r1 && n < p->N) {
          const int64_t ic = zc * p->M * p->N + m * p->N + n;
          if (ic < 0 || ic >= Cext) ++g_writes_bad; else C[m * p->N + n] = acc[t][i][j];
        }
      }
}

/* The kernel's tile loop (one CTA after the other). Aext, Bext, Cext: the operands' sizes. */
static void sim_run(const struct F32GroupedArgs *p, int64_t Aext, int64_t Bext, int64_t Cext) {
  const int64_t tiles_m = (p->M + FG_BM - 1) / FG_BM, tiles_n = (p->N + FG_BN - 1) / FG_BN;
  const int64_t batch = p->mode == FG_KROWS ? p->G : 1;
  for (int64_t t = 0; t < batch * tiles_m * tiles_n; ++t) {
    int64_t z, tm, tn;
    fg_tile_coords(t, tiles_m, tiles_n, &z, &tm, &tn);
    const int64_t m0 = tm * FG_BM, n0 = tn * FG_BN;
    const int64_t mend = m0 + FG_BM < p->M ? m0 + FG_BM : p->M;
    if (p->mode == FG_KROWS) {
      int64_t k0, k1;
      fg_kgroup_range(p->offsets, z, p->K, &k0, &k1);
      sim_tile(p, p->b, Bext, z, m0, n0, m0, mend, k0, k1, Aext, Cext);
      continue;
    }
    for (int64_t g = fg_first_group(p->offsets, p->G, m0); g < p->G; ++g) {
      if ((int64_t)p->offsets[g] >= mend) break;
      int64_t s0, s1;
      if (fg_group_rows(p->offsets, g, m0, mend, &s0, &s1))
        sim_tile(p, p->b + g * p->b_group, Bext - g * p->b_group, 0, m0, n0, s0, s1, 0, p->K, Aext, Cext);
    }
    const int64_t mz = fg_tail_start(p->offsets, p->G, m0, mend);
    const int64_t nend = n0 + FG_BN < p->N ? n0 + FG_BN : p->N;
    const int64_t wd = nend - n0, cnt = (mend - mz) * wd;
    for (int64_t e = 0; e < cnt; ++e) {
      const int64_t ic = (mz + e / wd) * p->N + n0 + e % wd;
      if (ic < 0 || ic >= Cext) ++g_writes_bad; else p->c[ic] = 0.0f;
    }
  }
}

/* ---- the MoE products against direct references ---------------------------------------- */

/* One output: the sequential fmaf sum (k ascending) of prod(i) = u[i] * v[i] over n terms,
 * and its double sum and magnitude. */
static void ref_dot(const float *u, int64_t su, const float *v, int64_t sv, int64_t n, float *f, double *d,
                    double *mag) {
  float s = 0.0f;
  double sd = 0.0, m = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    s = fmaf(u[i * su], v[i * sv], s);
    sd += (double)u[i * su] * v[i * sv];
    m += fabs((double)u[i * su] * v[i * sv]);
  }
  *f = s, *d = sd, *mag = m;
}

/* count of outputs that differ from the fmaf reference (bits) or from the double one by
 * more than the float32 bound of an n-term sum, n * 2^-24 * sum |products| */
static int64_t g_bits, g_tol;
static void cmp(float got, float f, double d, double mag, int64_t n) {
  if (memcmp(&got, &f, sizeof f) != 0) ++g_bits;
  if (!(fabs((double)got - d) <= (double)(n + 1) * 0x1p-24 * mag)) ++g_tol;
}

/* E experts, R rows (offs[E] <= R), x [R,K], w [E,N,K], dy [R,N]:
 *   y = x W_g^T (rows grouped), dx = dy W_g, dW_g = dy_g^T x_g. */
static void run_moe_case(const char *name, int64_t E, int64_t R, int64_t N, int64_t K, const int32_t *offs) {
  float *x = malloc(sizeof(float) * (size_t)(R * K + 1)), *w = malloc(sizeof(float) * (size_t)(E * N * K + 1));
  float *dy = malloc(sizeof(float) * (size_t)(R * N + 1));
  float *y = malloc(sizeof(float) * (size_t)(R * N + 1)), *dx = malloc(sizeof(float) * (size_t)(R * K + 1));
  float *dw = malloc(sizeof(float) * (size_t)(E * N * K + 1));
  for (int64_t i = 0; i < R * K; ++i) x[i] = (float)(2.0 * urand() - 1.0);
  for (int64_t i = 0; i < E * N * K; ++i) w[i] = (float)(2.0 * urand() - 1.0);
  for (int64_t i = 0; i < R * N; ++i) dy[i] = (float)(2.0 * urand() - 1.0);
  for (int64_t i = 0; i < R * N; ++i) y[i] = NAN;
  for (int64_t i = 0; i < R * K; ++i) dx[i] = NAN;
  for (int64_t i = 0; i < E * N * K; ++i) dw[i] = NAN;
  g_reads_bad = g_writes_bad = g_bits = g_tol = 0;
  /* the three launches of kernels/grouped_linear.cu, same arguments */
  struct F32GroupedArgs f = {R, N, K, x, K, 1, w, 1, K, N * K, y, FG_ROWS, E, offs};
  struct F32GroupedArgs d = {R, K, N, dy, N, 1, w, K, 1, N * K, dx, FG_ROWS, E, offs};
  struct F32GroupedArgs g = {N, K, R, dy, 1, N, x, K, 1, 0, dw, FG_KROWS, E, offs};
  sim_run(&f, R * K, E * N * K, R * N);
  sim_run(&d, R * N, E * N * K, R * K);
  sim_run(&g, R * N, R * K, E * N * K);
  int64_t bad_zero = 0;
  for (int64_t r = 0; r < R; ++r) {
    int64_t e = -1;
    for (int64_t q = 0; q < E; ++q)
      if (r >= offs[q] && r < offs[q + 1]) e = q;
    for (int64_t n = 0; n < N; ++n) {
      float fr = 0.0f;
      double dr = 0.0, mag = 0.0;
      if (e >= 0) ref_dot(x + r * K, 1, w + (e * N + n) * K, 1, K, &fr, &dr, &mag);
      if (e < 0 && !(y[r * N + n] == 0.0f)) ++bad_zero;
      cmp(y[r * N + n], fr, dr, mag, K);
    }
    for (int64_t k = 0; k < K; ++k) {
      float fr = 0.0f;
      double dr = 0.0, mag = 0.0;
      if (e >= 0) ref_dot(dy + r * N, 1, w + e * N * K + k, K, N, &fr, &dr, &mag);
      if (e < 0 && !(dx[r * K + k] == 0.0f)) ++bad_zero;
      cmp(dx[r * K + k], fr, dr, mag, N);
    }
  }
  for (int64_t e = 0; e < E; ++e)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        float fr;
        double dr, mag;
        ref_dot(dy + offs[e] * N + n, N, x + offs[e] * K + k, K, offs[e + 1] - offs[e], &fr, &dr, &mag);
        cmp(dw[(e * N + n) * K + k], fr, dr, mag, offs[e + 1] - offs[e]);
      }
  CHECK(g_bits == 0 && g_tol == 0 && bad_zero == 0 && g_reads_bad == 0 && g_writes_bad == 0,
        "%s (E %lld R %lld N %lld K %lld): %lld outputs not the fmaf sum, %lld off the double one, %lld "
        "rows past the groups not zero; accesses outside: %lld reads, %lld writes",
        name, (long long)E, (long long)R, (long long)N, (long long)K, (long long)g_bits, (long long)g_tol,
        (long long)bad_zero, (long long)g_reads_bad, (long long)g_writes_bad);
  free(x), free(w), free(dy), free(y), free(dx), free(dw);
}

/* Offsets no check has seen (decreasing, negative, past the rows): the three launches read
 * and write inside the operands only. */
static void run_unchecked_offsets(const char *name, int64_t E, int64_t R, int64_t N, int64_t K,
                                  const int32_t *offs) {
  float *x = calloc((size_t)(R * K + 1), sizeof(float)), *w = calloc((size_t)(E * N * K + 1), sizeof(float));
  float *dy = calloc((size_t)(R * N + 1), sizeof(float)), *y = calloc((size_t)(R * N + 1), sizeof(float));
  float *dx = calloc((size_t)(R * K + 1), sizeof(float)), *dw = calloc((size_t)(E * N * K + 1), sizeof(float));
  g_reads_bad = g_writes_bad = 0;
  struct F32GroupedArgs f = {R, N, K, x, K, 1, w, 1, K, N * K, y, FG_ROWS, E, offs};
  struct F32GroupedArgs d = {R, K, N, dy, N, 1, w, K, 1, N * K, dx, FG_ROWS, E, offs};
  struct F32GroupedArgs g = {N, K, R, dy, 1, N, x, K, 1, 0, dw, FG_KROWS, E, offs};
  sim_run(&f, R * K, E * N * K, R * N);
  sim_run(&d, R * N, E * N * K, R * K);
  sim_run(&g, R * N, R * K, E * N * K);
  CHECK(g_reads_bad == 0 && g_writes_bad == 0, "%s: %lld reads, %lld writes outside the operands", name,
        (long long)g_reads_bad, (long long)g_writes_bad);
  free(x), free(w), free(dy), free(y), free(dx), free(dw);
}

static void test_index_math(void) {
  /* staged elements cover the tile once, both orders; threads walk the contiguous dim */
  int ok = 1;
  for (int kf = 0; kf < 2; ++kf) {
    static int seen[FG_BM][FG_BK];
    memset(seen, 0, sizeof seen);
    for (int e = 0; e < FG_BM * FG_BK; ++e) {
      int row, kk;
      fg_stage_coords(e, kf, &row, &kk);
      if (row < 0 || row >= FG_BM || kk < 0 || kk >= FG_BK) ok = 0; else seen[row][kk]++;
      if (e % FG_BK != 0) {
        int pr, pk;
        fg_stage_coords(e - 1, kf, &pr, &pk);
        if (kf ? (pr != row || pk + 1 != kk) : (pk != kk || pr + 1 != row)) ok = 0;
      }
    }
    for (int r = 0; r < FG_BM; ++r)
      for (int k = 0; k < FG_BK; ++k) ok &= seen[r][k] == 1;
  }
  CHECK(ok, "fg_stage_coords covers a stage once, consecutive along the contiguous dim");
  /* the shared tiles: distinct words per (row, k), inside the arrays */
  ok = 1;
  for (int r = 0; r < FG_BM; ++r)
    for (int k = 0; k < FG_BK; ++k) {
      const int o = fg_smem_off(r, k);
      ok &= o >= 0 && o < FG_BK * FG_SROW && (o % FG_SROW) == r && o / FG_SROW == k;
    }
  CHECK(ok, "fg_smem_off: one word per (row, k) inside the shared tile");
  /* the threads' outputs cover the tile once */
  static int own[FG_BM][FG_BN];
  memset(own, 0, sizeof own);
  ok = 1;
  for (int t = 0; t < FG_THREADS; ++t)
    for (int i = 0; i < FG_TM; ++i)
      for (int j = 0; j < FG_TN; ++j) {
        const int m = fg_out_row(t, i), n = fg_out_col(t, j);
        if (m < 0 || m >= FG_BM || n < 0 || n >= FG_BN) ok = 0; else own[m][n]++;
      }
  for (int m = 0; m < FG_BM; ++m)
    for (int n = 0; n < FG_BN; ++n) ok &= own[m][n] == 1;
  CHECK(ok, "fg_out_row / fg_out_col: 256 threads x 4 x 4 cover the 64 x 64 tile once");
  /* shared reads of the inner loop: a warp's A and B words each sit in distinct banks (or
   * are the same word: a broadcast) */
  int conflicts = 0;
  for (int wbase = 0; wbase < FG_THREADS; wbase += 32)
    for (int kk = 0; kk < FG_BK; ++kk)
      for (int q = 0; q < 2 * FG_TM; ++q) {
        int word[32];
        for (int l = 0; l < 32; ++l) {
          const int t = wbase + l;
          word[l] = q < FG_TM ? fg_smem_off(fg_out_row(t, q), kk) : fg_smem_off(fg_out_col(t, q - FG_TM), kk);
        }
        for (int l = 0; l < 32; ++l)
          for (int l2 = 0; l2 < l; ++l2) conflicts += word[l] != word[l2] && word[l] % 32 == word[l2] % 32;
      }
  CHECK(conflicts == 0, "inner-loop shared reads: %d bank conflicts", conflicts);
  const int32_t off[] = {0, 0, 5, 5, 64, 200, 200};
  ok = 1;
  for (int64_t m0 = 0; m0 < 200; ++m0) {
    int64_t want = 0;
    while (want < 6 && off[want + 1] <= m0) ++want;
    ok &= fg_first_group(off, 6, m0) == want;
  }
  CHECK(ok && fg_first_group(off, 6, 200) == 6, "fg_first_group");
  CHECK(fg_tail_start(off, 6, 192, 256) == 200 && fg_tail_start(off, 6, 256, 300) == 256 &&
            fg_tail_start(off, 6, 64, 128) == 128,
        "fg_tail_start clamps offsets[G] to the tile");
  int64_t k0, k1;
  fg_kgroup_range(off, 4, 1000, &k0, &k1);
  CHECK(k0 == 64 && k1 == 200, "fg_kgroup_range");
  const int32_t wild[] = {-5, 30, 10, 99};
  fg_kgroup_range(wild, 0, 50, &k0, &k1);
  int ok2 = k0 == 0 && k1 == 30;
  fg_kgroup_range(wild, 1, 50, &k0, &k1);
  ok2 &= k0 == 30 && k1 == 30; /* decreasing: empty */
  fg_kgroup_range(wild, 2, 50, &k0, &k1);
  ok2 &= k0 == 10 && k1 == 50; /* past K: clamped */
  CHECK(ok2, "fg_kgroup_range clamps unchecked offsets into [0, K], never decreasing");
}

int main(void) {
  test_index_math();
  const int32_t o1[] = {0, 37, 37, 150, 200};
  run_moe_case("unaligned groups, an empty one", 4, 200, 72, 56, o1);
  const int32_t o2[] = {0, 0, 3, 64, 90, 90};
  run_moe_case("empty first/last, rows past the last group", 5, 130, 40, 48, o2);
  const int32_t o3[] = {0, 128, 256};
  run_moe_case("aligned, N and K no multiple of the tile", 2, 256, 70, 100, o3);
  const int32_t o4[] = {0, 0, 0};
  run_moe_case("no rows at all (the bound only)", 2, 20, 16, 16, o4);
  const int32_t o5[] = {0, 1, 2, 3};
  run_moe_case("one row each, K < one stage", 3, 67, 9, 7, o5);
  const int32_t o6[] = {0, 5, 9, 14, 20, 27, 33, 40, 41};
  run_moe_case("many groups in one tile, odd N and K", 8, 45, 33, 17, o6);
  const int32_t o7[] = {0, 70};
  run_moe_case("one expert, K = 1", 1, 70, 65, 1, o7);
  const int32_t b1[] = {0, 90, 20, 150};
  run_unchecked_offsets("decreasing, past the rows", 3, 100, 20, 24, b1);
  const int32_t b2[] = {-40, 7, -3, 2000000000};
  run_unchecked_offsets("negative, huge", 3, 70, 9, 33, b2);
  printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}
