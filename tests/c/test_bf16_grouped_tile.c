/*
 * test_bf16_grouped_tile.c -- CPU simulation of the BF16 tensor-core grouped GEMM
 * (kernels/bf16_grouped_mma.cu) with the index functions it uses
 * (kernels/bf16_grouped_tile.cuh, the fragment ownership of kernels/mla_tile.cuh): every
 * CTA tile's stage loop fills padded shared tiles (padding poisoned with a BF16 NaN) by
 * bg_stage_coords, each warp's lanes load their fragments as mla_load_a / mla_load_bt do, a
 * model of mma.sync.m16n8k16 written from the PTX ISA's per-element formulas multiplies
 * them, and the stores go through the kernel's guards. The result must equal a reference
 * in double of the BF16-rounded operands (rounded here independently) for the three MoE
 * products with their strides: forward (rows grouped), input gradient (rows grouped, B
 * transposed) and weight gradient (inner dim grouped, A transposed), with unaligned,
 * empty first/last groups, rows past the last group (zeros) and sizes no multiple of the
 * tile. Outputs are poisoned with NaN first: a missing store shows.
 * Built and run by tests/test_grouped_linear_bf16.py; the last line is "N passed, N failed".
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "../../kernels/mla_tile.cuh"
#include "../../kernels/bf16_grouped_tile.cuh"

static uint64_t g_rng = 0x2545F4914F6CDD1Dull;
static double urand(void) {
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return (double)(g_rng >> 11) / 9007199254740992.0;
}

/* float32 -> bfloat16 bits, round to nearest even (finite inputs only here) */
static uint16_t bf16_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  const uint32_t lsb = (u >> 16) & 1u;
  return (uint16_t)((u + 0x7fffu + lsb) >> 16);
}
static float bf16_val(uint16_t h) {
  const uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static float rbf(float f) { return bf16_val(bf16_bits(f)); }

/* ---- mma.sync.m16n8k16 bf16 model (PTX ISA element formulas, groupID g, tig t) --------- */

/* From the ISA's table (not mla_tile.cuh's formulas):
 *   a0,a1: row g,   cols 2t, 2t+1      a2,a3: row g+8, cols 2t, 2t+1
 *   a4,a5: row g,   cols 2t+8, 2t+9    a6,a7: row g+8, cols 2t+8, 2t+9
 * B: b0,b1: k 2t, 2t+1; b2,b3: k 2t+8, 2t+9; n = g.  C: c0,c1: row g, cols 2t, 2t+1;
 * c2,c3: row g+8. Registers hold element pairs (low half = even element). */
static void mma_model(float d[32][4], const uint32_t a[32][4], const uint32_t b[32][2]) {
  float A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 8; ++i) {
      const int row = g + ((i == 2 || i == 3 || i == 6 || i == 7) ? 8 : 0);
      const int col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
      A[row][col] = bf16_val((uint16_t)(a[lane][i / 2] >> (16 * (i & 1))));
    }
    for (int i = 0; i < 4; ++i) {
      const int k = 2 * t + (i & 1) + (i >= 2 ? 8 : 0);
      B[k][g] = bf16_val((uint16_t)(b[lane][i / 2] >> (16 * (i & 1))));
    }
  }
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; ++i) {
      const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
      float s = d[lane][i];
      for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][col];
      d[lane][i] = s;
    }
  }
}

/* ---- the kernel, simulated ------------------------------------------------------------ */

static uint16_t sa[BG_BM * BG_SROW], sb[BG_BN * BG_SROW];

static uint32_t ld32(const uint16_t *s, int off) { return (uint32_t)s[off] | ((uint32_t)s[off + 1] << 16); }

/* as mla_load_a: register j = elements 2j, 2j+1 of the A fragment (one row, neighbours) */
static void load_a(uint32_t a[4], const uint16_t *base, int ld, int lane) {
  for (int j = 0; j < 4; ++j) a[j] = ld32(base, mla_fa_row(lane, 2 * j) * ld + mla_fa_col(lane, 2 * j));
}
/* as mla_load_bt: B[k][n] = base[n * ld + k] */
static void load_bt(uint32_t b[2], const uint16_t *base, int ld, int lane) {
  for (int j = 0; j < 2; ++j) b[j] = ld32(base, mla_fb_n(lane, 2 * j) * ld + mla_fb_k(lane, 2 * j));
}

static int64_t g_reads_bad; /* global reads outside the operands' extents */

static void sim_tile(const struct Bf16GroupedArgs *p, const float *bg, int64_t Bext, int64_t zc, int64_t m0,
                     int64_t n0, int64_t r0, int64_t r1, int64_t k0, int64_t k1, int64_t Aext) {
  static float acc[BG_WARPS][BG_FM][BG_FN][32][4];
  memset(acc, 0, sizeof acc);
  const int a_kfast = p->sak == 1, b_kfast = p->sbk == 1;
  for (int64_t ks = k0; ks < k1; ks += BG_BK) {
    for (size_t i = 0; i < sizeof sa / 2; ++i) sa[i] = sb[i] = 0x7fc1; /* NaN: a read of padding shows */
    for (int tid = 0; tid < BG_THREADS; ++tid)
      for (int e = tid; e < BG_BM * BG_BK; e += BG_THREADS) {
        int row, kk;
        bg_stage_coords(e, a_kfast, &row, &kk);
        const int64_t gm = m0 + row, gk = ks + kk;
        float v = 0.0f;
        if (gm >= r0 && gm < r1 && gk < k1) {
          const int64_t ia = gm * p->sam + gk * p->sak;
          if (ia < 0 || ia >= Aext) ++g_reads_bad; else v = p->a[ia];
        }
        sa[bg_smem_off(row, kk)] = bf16_bits(v);
        bg_stage_coords(e, b_kfast, &row, &kk);
        const int64_t gn = n0 + row, gk2 = ks + kk;
        float u = 0.0f;
        if (gn < p->N && gk2 < k1) {
          const int64_t ib = gk2 * p->sbk + gn * p->sbn;
          if (ib < 0 || ib >= Bext) ++g_reads_bad; else u = bg[ib];
        }
        sb[bg_smem_off(row, kk)] = bf16_bits(u);
      }
    for (int w = 0; w < BG_WARPS; ++w)
      for (int kq = 0; kq < BG_BK / 16; ++kq) {
        uint32_t af[BG_FM][32][4], bf[BG_FN][32][2];
        for (int lane = 0; lane < 32; ++lane) {
          for (int i = 0; i < BG_FM; ++i)
            load_a(af[i][lane], sa + bg_smem_off(bg_warp_m0(w) + 16 * i, 16 * kq), BG_SROW, lane);
          for (int j = 0; j < BG_FN; ++j)
            load_bt(bf[j][lane], sb + bg_smem_off(bg_warp_n0(w) + 8 * j, 16 * kq), BG_SROW, lane);
        }
        for (int i = 0; i < BG_FM; ++i)
          for (int j = 0; j < BG_FN; ++j) mma_model(acc[w][i][j], af[i], bf[j]);
      }
  }
  float *C = p->c + zc * p->M * p->N;
  for (int w = 0; w < BG_WARPS; ++w)
    for (int lane = 0; lane < 32; ++lane)
      for (int i = 0; i < BG_FM; ++i)
        for (int j = 0; j < BG_FN; ++j)
          for (int e = 0; e < 4; ++e) {
            const int64_t m = m0 + bg_warp_m0(w) + 16 * i + mla_fc_row(lane, e);
            const int64_t n = n0 + bg_warp_n0(w) + 8 * j + mla_fc_col(lane, e);
            if (m >= r0 && m < r1 && n < p->N) C[m * p->N + n] = acc[w][i][j][lane][e];
          }
}

static void sim_run(const struct Bf16GroupedArgs *p, int64_t Aext, int64_t Bext) {
  const int64_t tiles_m = (p->M + BG_BM - 1) / BG_BM, tiles_n = (p->N + BG_BN - 1) / BG_BN;
  const int64_t batch = p->mode == BG_KROWS ? p->G : 1;
  for (int64_t t = 0; t < batch * tiles_m * tiles_n; ++t) {
    int64_t z, tm, tn;
    bg_tile_coords(t, tiles_m, tiles_n, &z, &tm, &tn);
    const int64_t m0 = tm * BG_BM, n0 = tn * BG_BN;
    const int64_t mend = m0 + BG_BM < p->M ? m0 + BG_BM : p->M;
    if (p->mode == BG_KROWS) {
      int64_t k0, k1;
      bg_kgroup_range(p->offsets, z, &k0, &k1);
      sim_tile(p, p->b, Bext, z, m0, n0, m0, mend, k0, k1, Aext);
      continue;
    }
    for (int64_t g = bg_first_group(p->offsets, p->G, m0); g < p->G; ++g) {
      if ((int64_t)p->offsets[g] >= mend) break;
      int64_t s0, s1;
      if (bg_group_rows(p->offsets, g, m0, mend, &s0, &s1))
        sim_tile(p, p->b + g * p->b_group, Bext - g * p->b_group, 0, m0, n0, s0, s1, 0, p->K, Aext);
    }
    const int64_t mz = bg_tail_start(p->offsets, p->G, m0, mend);
    const int64_t nend = n0 + BG_BN < p->N ? n0 + BG_BN : p->N;
    const int64_t wd = nend - n0, cnt = (mend - mz) * wd;
    for (int64_t e = 0; e < cnt; ++e) p->c[(mz + e / wd) * p->N + n0 + e % wd] = 0.0f;
  }
}

/* ---- the MoE products against a direct reference --------------------------------------- */

/* E experts, R rows (offs[E] <= R), x [R,K], w [E,N,K], dy [R,N]:
 *   y = x W_g^T (rows grouped), dx = dy W_g, dW_g = dy_g^T x_g; each in double from the
 * BF16-rounded float32 inputs. */
static void run_moe_case(const char *name, int64_t E, int64_t R, int64_t N, int64_t K, const int32_t *offs) {
  float *x = malloc(sizeof(float) * (size_t)(R * K)), *w = malloc(sizeof(float) * (size_t)(E * N * K));
  float *dy = malloc(sizeof(float) * (size_t)(R * N));
  float *y = malloc(sizeof(float) * (size_t)(R * N)), *dx = malloc(sizeof(float) * (size_t)(R * K));
  float *dw = malloc(sizeof(float) * (size_t)(E * N * K));
  for (int64_t i = 0; i < R * K; ++i) x[i] = (float)(2.0 * urand() - 1.0);
  for (int64_t i = 0; i < E * N * K; ++i) w[i] = (float)(2.0 * urand() - 1.0);
  for (int64_t i = 0; i < R * N; ++i) dy[i] = (float)(2.0 * urand() - 1.0);
  for (int64_t i = 0; i < R * N; ++i) y[i] = NAN;
  for (int64_t i = 0; i < R * K; ++i) dx[i] = NAN;
  for (int64_t i = 0; i < E * N * K; ++i) dw[i] = NAN;
  g_reads_bad = 0;
  /* the three launches of kernels/grouped_linear.cu, same arguments */
  struct Bf16GroupedArgs f = {R, N, K, x, K, 1, w, 1, K, N * K, y, BG_ROWS, E, offs};
  struct Bf16GroupedArgs d = {R, K, N, dy, N, 1, w, K, 1, N * K, dx, BG_ROWS, E, offs};
  struct Bf16GroupedArgs g = {N, K, R, dy, 1, N, x, K, 1, 0, dw, BG_KROWS, E, offs};
  sim_run(&f, R * K, E * N * K);
  sim_run(&d, R * N, E * N * K);
  sim_run(&g, R * N, R * K);
  int64_t bad_y = 0, bad_dx = 0, bad_dw = 0;
  for (int64_t r = 0; r < R; ++r) {
    int64_t e = -1;
    for (int64_t q = 0; q < E; ++q)
      if (r >= offs[q] && r < offs[q + 1]) e = q;
    for (int64_t n = 0; n < N; ++n) {
      double s = 0, mag = 0;
      for (int64_t k = 0; e >= 0 && k < K; ++k) {
        const double v = (double)rbf(x[r * K + k]) * rbf(w[(e * N + n) * K + k]);
        s += v;
        mag += fabs(v);
      }
      if (!(fabs(y[r * N + n] - s) <= 1e-5 * mag + 1e-6)) ++bad_y;
    }
    for (int64_t k = 0; k < K; ++k) {
      double s = 0, mag = 0;
      for (int64_t n = 0; e >= 0 && n < N; ++n) {
        const double v = (double)rbf(dy[r * N + n]) * rbf(w[(e * N + n) * K + k]);
        s += v;
        mag += fabs(v);
      }
      if (!(fabs(dx[r * K + k] - s) <= 1e-5 * mag + 1e-6)) ++bad_dx;
    }
  }
  for (int64_t e = 0; e < E; ++e)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        double s = 0, mag = 0;
        for (int64_t r = offs[e]; r < offs[e + 1]; ++r) {
          const double v = (double)rbf(dy[r * N + n]) * rbf(x[r * K + k]);
          s += v;
          mag += fabs(v);
        }
        if (!(fabs(dw[(e * N + n) * K + k] - s) <= 1e-5 * mag + 1e-6)) ++bad_dw;
      }
  CHECK(bad_y == 0 && bad_dx == 0 && bad_dw == 0 && g_reads_bad == 0,
        "%s (E %lld R %lld N %lld K %lld): wrong y %lld, dx %lld, dw %lld; reads outside %lld", name, (long long)E,
        (long long)R, (long long)N, (long long)K, (long long)bad_y, (long long)bad_dx, (long long)bad_dw,
        (long long)g_reads_bad);
  free(x), free(w), free(dy), free(y), free(dx), free(dw);
}

static void test_index_math(void) {
  /* staged elements cover the tile once, both orders; threads walk the contiguous dim */
  int ok = 1;
  for (int kf = 0; kf < 2; ++kf) {
    static int seen[BG_BM][BG_BK];
    memset(seen, 0, sizeof seen);
    for (int e = 0; e < BG_BM * BG_BK; ++e) {
      int row, kk;
      bg_stage_coords(e, kf, &row, &kk);
      if (row < 0 || row >= BG_BM || kk < 0 || kk >= BG_BK) ok = 0; else seen[row][kk]++;
      if (e > 0) {
        int pr, pk;
        bg_stage_coords(e - 1, kf, &pr, &pk);
        if (e % 32 != 0 && (kf ? (pr != row || pk + 1 != kk) : (pk != kk || pr + 1 != row))) ok = 0;
      }
    }
    for (int r = 0; r < BG_BM; ++r)
      for (int k = 0; k < BG_BK; ++k) ok &= seen[r][k] == 1;
  }
  CHECK(ok, "bg_stage_coords covers a stage once, consecutive along the contiguous dim");
  /* fragment loads: 32 distinct banks per register, 4-byte aligned */
  int conflicts = 0;
  for (int w = 0; w < BG_WARPS; ++w)
    for (int kq = 0; kq < BG_BK / 16; ++kq) {
      for (int i = 0; i < BG_FM; ++i)
        for (int j = 0; j < 4; ++j) {
          int banks[32] = {0};
          for (int lane = 0; lane < 32; ++lane) {
            const int off = bg_smem_off(bg_warp_m0(w) + 16 * i + mla_fa_row(lane, 2 * j), 16 * kq + mla_fa_col(lane, 2 * j));
            if (off % 2) ++conflicts;
            banks[(off / 2) % 32]++;
          }
          for (int q = 0; q < 32; ++q) conflicts += banks[q] > 1;
        }
      for (int jn = 0; jn < BG_FN; ++jn)
        for (int j = 0; j < 2; ++j) {
          int banks[32] = {0};
          for (int lane = 0; lane < 32; ++lane) {
            const int off = bg_smem_off(bg_warp_n0(w) + 8 * jn + mla_fb_n(lane, 2 * j), 16 * kq + mla_fb_k(lane, 2 * j));
            if (off % 2) ++conflicts;
            banks[(off / 2) % 32]++;
          }
          for (int q = 0; q < 32; ++q) conflicts += banks[q] > 1;
        }
    }
  CHECK(conflicts == 0, "fragment loads: %d bank conflicts or odd offsets", conflicts);
  const int32_t off[] = {0, 0, 5, 5, 64, 200, 200};
  ok = 1;
  for (int64_t m0 = 0; m0 < 200; ++m0) {
    int64_t want = 0;
    while (want < 6 && off[want + 1] <= m0) ++want;
    ok &= bg_first_group(off, 6, m0) == want;
  }
  CHECK(ok && bg_first_group(off, 6, 200) == 6, "bg_first_group");
  CHECK(bg_tail_start(off, 6, 192, 256) == 200 && bg_tail_start(off, 6, 256, 300) == 256 &&
            bg_tail_start(off, 6, 64, 128) == 128,
        "bg_tail_start clamps offsets[G] to the tile");
  int64_t k0, k1;
  bg_kgroup_range(off, 4, &k0, &k1);
  CHECK(k0 == 64 && k1 == 200, "bg_kgroup_range");
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
  printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}
