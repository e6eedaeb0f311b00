/*
 * test_mla_tile.c -- the index math of the tensor-core MLA decode (kernels/mla_tile.cuh) on
 * the CPU: mma.sync m16n8k16 fragment ownership (a bijection onto each tile, the PTX
 * table's entries), the FP8 row layout, and a simulation of the decode kernel's loops
 * (paged addressing, KV splits, 32-key tiles, scores and P V as a warp computes them from
 * fragments, the online softmax, the merge of the splits) against a direct softmax
 * attention in double, on random inputs with odd sizes: kv_len 0 and 1, lengths that are
 * no multiple of the tile, more splits than keys; and of the training forward's tile loop
 * (kernels/mla_attn_tc.cu: quad reductions, P reused from the score registers through
 * mla_c2a_*) and backward (dK, dV over transposed tiles; dQ) against a direct causal
 * attention, T not a multiple of the tile.
 * Built and run by tests/test_mla.py (test_mla_tile_header_on_cpu); the last line is
 * "N passed, N failed".
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "../../kernels/mla_tile.cuh"

static uint64_t g_rng = 88172645463325252ull;
static double urand(void) { /* xorshift64, [0, 1) */
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return (double)(g_rng >> 11) / 9007199254740992.0;
}

/* ---- fragments ---------------------------------------------------------------------- */

static void test_fragments(void) {
  int a[16][16] = {{0}}, b[16][8] = {{0}}, c[16][8] = {{0}}, ok_pairs = 1;
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 8; ++i) {
      const int r = mla_fa_row(lane, i), k = mla_fa_col(lane, i);
      if (r >= 0 && r < 16 && k >= 0 && k < 16) ++a[r][k];
      /* register i/2 packs two neighbours of one row (low half first) */
      if (i % 2 == 1 && (mla_fa_row(lane, i) != mla_fa_row(lane, i - 1) ||
                         mla_fa_col(lane, i) != mla_fa_col(lane, i - 1) + 1))
        ok_pairs = 0;
    }
    for (int i = 0; i < 4; ++i) {
      const int k = mla_fb_k(lane, i), n = mla_fb_n(lane, i);
      if (k >= 0 && k < 16 && n >= 0 && n < 8) ++b[k][n];
      if (i % 2 == 1 && (mla_fb_n(lane, i) != mla_fb_n(lane, i - 1) ||
                         mla_fb_k(lane, i) != mla_fb_k(lane, i - 1) + 1))
        ok_pairs = 0;
      const int r = mla_fc_row(lane, i), cc = mla_fc_col(lane, i);
      if (r >= 0 && r < 16 && cc >= 0 && cc < 8) ++c[r][cc];
    }
  }
  int once = 1;
  for (int r = 0; r < 16; ++r)
    for (int k = 0; k < 16; ++k) once &= a[r][k] == 1;
  CHECK(once, "A fragments cover the 16x16 tile exactly once");
  once = 1;
  for (int k = 0; k < 16; ++k)
    for (int n = 0; n < 8; ++n) once &= b[k][n] == 1 && c[k][n] == 1;
  CHECK(once, "B and C fragments cover their 16x8 tiles exactly once");
  CHECK(ok_pairs, "a register holds two neighbouring elements");
  /* entries of the PTX ISA's tables (lane 5: groupID 1, thread-in-group 1) */
  CHECK(mla_fa_row(5, 2) == 9 && mla_fa_col(5, 2) == 2, "a2 of lane 5 is (9, 2)");
  CHECK(mla_fa_row(5, 5) == 1 && mla_fa_col(5, 5) == 11, "a5 of lane 5 is (1, 11)");
  CHECK(mla_fa_row(31, 7) == 15 && mla_fa_col(31, 7) == 15, "a7 of lane 31 is (15, 15)");
  CHECK(mla_fb_k(5, 3) == 11 && mla_fb_n(5, 3) == 1, "b3 of lane 5 is (k 11, n 1)");
  CHECK(mla_fc_row(5, 2) == 9 && mla_fc_col(5, 2) == 2, "c2 of lane 5 is (9, 2)");
  CHECK(mla_fc_row(30, 1) == 7 && mla_fc_col(30, 1) == 5, "c1 of lane 30 is (7, 5)");
}

/* A warp's m16n8k16: each lane loads its fragments as the kernel does (tc_load_a: A
 * row-major with stride lda; B through get_b), the "hardware" multiplies the tiles the
 * fragments describe, and lane/element e of D receives row fc_row, column fc_col. */
typedef float (*getter)(const float *base, int ld, int k, int n);
static float b_kmajor(const float *base, int ld, int k, int n) { return base[k * ld + n]; }
static float b_nmajor(const float *base, int ld, int k, int n) { return base[n * ld + k]; }

/* The same with the A fragments already in the lanes' registers (fa[lane][element]). */
static void warp_mma_frag(float d[32][4], float fa[32][8], const float *B, int ldb, getter gb) {
  float fb[32][4], At[16][16], Bt[16][8];
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 4; ++i) fb[l][i] = gb(B, ldb, mla_fb_k(l, i), mla_fb_n(l, i));
  /* the tiles as the hardware assembles them from the lanes' registers */
  for (int l = 0; l < 32; ++l) {
    for (int i = 0; i < 8; ++i) At[mla_fa_row(l, i)][mla_fa_col(l, i)] = fa[l][i];
    for (int i = 0; i < 4; ++i) Bt[mla_fb_k(l, i)][mla_fb_n(l, i)] = fb[l][i];
  }
  for (int l = 0; l < 32; ++l)
    for (int e = 0; e < 4; ++e) {
      float s = d[l][e];
      for (int k = 0; k < 16; ++k) s += At[mla_fc_row(l, e)][k] * Bt[k][mla_fc_col(l, e)];
      d[l][e] = s;
    }
}

static void warp_mma(float d[32][4], const float *A, int lda, const float *B, int ldb, getter gb) {
  float fa[32][8];
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 8; ++i) fa[l][i] = A[mla_fa_row(l, i) * lda + mla_fa_col(l, i)];
  warp_mma_frag(d, fa, B, ldb, gb);
}

/* ---- FP8 row layout ------------------------------------------------------------------ */

static void test_fp8_layout(void) {
  CHECK(mla_fp8_scale_off(512) == 512 && mla_fp8_rope_off(512) == 528 &&
            mla_fp8_row_bytes(512, 64) == 656,
        "V3's row: scales at 512, rope at 528, 656 bytes");
  CHECK(mla_fp8_scale_off(130) == 132 && mla_fp8_nscale(130) == 2 && mla_fp8_rope_off(130) == 140 &&
            mla_fp8_row_bytes(130, 3) == 148,
        "R 130, dr 3: scales at 132 (two), rope at 140, 148 bytes");
  CHECK(mla_fp8_row_bytes(1, 2) == 12, "R 1, dr 2: 4 + 4 + 4 bytes");
}

/* ---- the decode kernel, simulated ---------------------------------------------------- */

#define HB 32
#define TK 32

/* o [H, R] for one query row: keys of sequence row `r` through the kernel's loops. */
static void sim_decode(int64_t H, int64_t R, int64_t dr, int64_t bs, const float *pool /* [rows, W] */,
                       const int32_t *tables, int64_t toff, int64_t S, int64_t CH, int64_t nsplit,
                       float scale, const float *q /* [H, W] */, float *o /* [H, R] */) {
  const int64_t W = R + dr, Wp = (W + 15) / 16 * 16, ld = Wp, nhb = (H + HB - 1) / HB;
  float *Qs = calloc((size_t)(HB * ld), sizeof(float)), *Ks = calloc((size_t)(TK * ld), sizeof(float));
  float *part = calloc((size_t)(nsplit * H * R), sizeof(float)), *ml = calloc((size_t)(nsplit * H * 2), sizeof(float));
  float Ss[HB][TK], Ps[HB][TK], m[HB], l[HB], al[HB];
  for (int64_t task = 0; task < nhb * nsplit; ++task) {
    int64_t r, hb, sp, j0, j1;
    mla_decode_task(task, nhb, nsplit, &r, &hb, &sp);
    const int64_t h0 = hb * HB;
    mla_split_range(S, CH, sp, &j0, &j1);
    for (int hh = 0; hh < HB; ++hh)
      for (int64_t d = 0; d < Wp; ++d)
        Qs[hh * ld + d] = h0 + hh < H && d < W ? q[(h0 + hh) * W + d] : 0.0f;
    float *acc = calloc((size_t)(HB * Wp), sizeof(float)); /* [HB, columns of the n8 tiles] */
    for (int hh = 0; hh < HB; ++hh) {
      m[hh] = -INFINITY;
      l[hh] = 0.0f;
    }
    for (int64_t k0 = j0; k0 < j1; k0 += TK) {
      for (int jj = 0; jj < TK; ++jj) {
        const int64_t slot = k0 + jj < j1 ? mla_page_row(tables, toff, k0 + jj, bs) : -1;
        for (int64_t d = 0; d < Wp; ++d) Ks[jj * ld + d] = slot >= 0 && d < W ? pool[slot * W + d] : 0.0f;
      }
      for (int warp = 0; warp < 8; ++warp) { /* scores: tile (warp >> 2, warp & 3) */
        const int mt = warp >> 2, nt = warp & 3;
        float c[32][4] = {{0}};
        for (int64_t kk = 0; kk < Wp; kk += 16)
          warp_mma(c, Qs + mt * 16 * ld + kk, (int)ld, Ks + nt * 8 * ld + kk, (int)ld, b_nmajor);
        for (int lane = 0; lane < 32; ++lane)
          for (int e = 0; e < 4; ++e) {
            const int row = mt * 16 + mla_fc_row(lane, e), col = nt * 8 + mla_fc_col(lane, e);
            Ss[row][col] = k0 + col < j1 ? scale * c[lane][e] : -INFINITY;
          }
      }
      for (int row = 0; row < HB; ++row) { /* online softmax */
        float tmax = -INFINITY, psum = 0.0f;
        for (int j = 0; j < TK; ++j) tmax = Ss[row][j] > tmax ? Ss[row][j] : tmax;
        const float mn = mla_online_max(m[row], tmax, &al[row]);
        for (int j = 0; j < TK; ++j) psum += Ps[row][j] = mla_prob(Ss[row][j], mn);
        l[row] = l[row] * al[row] + psum;
        m[row] = mn;
      }
      const int nct = (int)((R + 7) / 8);
      for (int warp = 0; warp < 8; ++warp) /* P V: column tiles warp, warp + 8, ... */
        for (int mt = 0; mt < 2; ++mt)
          for (int t = warp; t < nct; t += 8) {
            float c[32][4];
            for (int lane = 0; lane < 32; ++lane)
              for (int e = 0; e < 4; ++e) {
                const int row = mt * 16 + mla_fc_row(lane, e), col = t * 8 + mla_fc_col(lane, e);
                c[lane][e] = acc[row * Wp + col] * al[row];
              }
            for (int ks = 0; ks < 2; ++ks)
              warp_mma(c, &Ps[mt * 16][ks * 16], TK, Ks + ks * 16 * ld + t * 8, (int)ld, b_kmajor);
            for (int lane = 0; lane < 32; ++lane)
              for (int e = 0; e < 4; ++e)
                acc[(mt * 16 + mla_fc_row(lane, e)) * Wp + t * 8 + mla_fc_col(lane, e)] = c[lane][e];
          }
    }
    for (int hh = 0; hh < HB && h0 + hh < H; ++hh) {
      for (int64_t cc = 0; cc < R; ++cc) part[(sp * H + h0 + hh) * R + cc] = acc[hh * Wp + cc];
      ml[(sp * H + h0 + hh) * 2] = m[hh];
      ml[(sp * H + h0 + hh) * 2 + 1] = l[hh];
    }
    free(acc);
  }
  /* the combine (nsplit == 1 is the same formula with one split) */
  for (int64_t h = 0; h < H; ++h) {
    float mlh[2 * 64];
    for (int64_t s = 0; s < nsplit; ++s) {
      mlh[2 * s] = ml[(s * H + h) * 2];
      mlh[2 * s + 1] = ml[(s * H + h) * 2 + 1];
    }
    const float M = mla_merge_max(mlh, nsplit);
    for (int64_t cc = 0; cc < R; ++cc) {
      float L = 0.0f, a = 0.0f;
      for (int64_t s = 0; s < nsplit; ++s) {
        const float w = mla_merge_weight(mlh[2 * s], mlh[2 * s + 1], M);
        L += mlh[2 * s + 1] * w;
        a += part[(s * H + h) * R + cc] * w;
      }
      o[h * R + cc] = L > 0.0f ? a / L : 0.0f;
    }
  }
  free(Qs);
  free(Ks);
  free(part);
  free(ml);
}

static void test_decode_sim(void) {
  const int64_t Hs[] = {1, 5, 33}, Rs[] = {20, 8, 37}, drs[] = {6, 4, 3};
  const int64_t Ss[] = {0, 1, 2, 31, 32, 33, 97, 200, 300};
  for (int cfg = 0; cfg < 3; ++cfg)
    for (int si = 0; si < 9; ++si)
      for (int mode = 0; mode < 3; ++mode) {
        const int64_t H = Hs[cfg], R = Rs[cfg], dr = drs[cfg], W = R + dr, S = Ss[si], bs = 3 + cfg;
        /* mode 0: the launcher's choice for a busy GPU; 1: for an idle one (splits); 2: one
         * tile per split with a bound far above S (splits past the end) */
        const int64_t max_kv = mode == 2 ? S + 70 : S;
        const int64_t CH = mode == 0 ? mla_split_chunk(1000, 132, max_kv, TK)
                           : mode == 1 ? mla_split_chunk(1, 132, max_kv, TK) : TK;
        const int64_t nsplit = mla_num_splits(max_kv, CH);
        const int64_t nblk = (S + bs - 1) / bs + 2;
        int32_t *tables = malloc((size_t)(nblk + 5) * sizeof(int32_t));
        for (int64_t i = 0; i < nblk + 5; ++i) tables[i] = (int32_t)((i * 7 + 3) % (nblk + 5));
        const int64_t toff = 2, rows = (nblk + 5) * bs;
        float *pool = malloc((size_t)(rows * W) * sizeof(float)), *q = malloc((size_t)(H * W) * sizeof(float));
        float *o = malloc((size_t)(H * R) * sizeof(float));
        for (int64_t i = 0; i < rows * W; ++i) pool[i] = (float)(2 * urand() - 1);
        for (int64_t i = 0; i < H * W; ++i) q[i] = (float)(4 * urand() - 2);
        const float scale = 0.7f;
        sim_decode(H, R, dr, bs, pool, tables, toff, S, CH, nsplit, scale, q, o);
        double err = 0.0;
        for (int64_t h = 0; h < H; ++h) {
          double mx = -INFINITY, den = 0.0, *num = calloc((size_t)R, sizeof(double));
          for (int64_t j = 0; j < S; ++j) {
            const float *k = pool + ((int64_t)tables[toff + j / bs] * bs + j % bs) * W;
            double s = 0.0;
            for (int64_t d = 0; d < W; ++d) s += (double)q[h * W + d] * k[d];
            mx = fmax(mx, scale * s);
          }
          for (int64_t j = 0; j < S; ++j) {
            const float *k = pool + ((int64_t)tables[toff + j / bs] * bs + j % bs) * W;
            double s = 0.0;
            for (int64_t d = 0; d < W; ++d) s += (double)q[h * W + d] * k[d];
            const double p = exp(scale * s - mx);
            den += p;
            for (int64_t cc = 0; cc < R; ++cc) num[cc] += p * k[cc];
          }
          for (int64_t cc = 0; cc < R; ++cc) {
            const double want = S > 0 ? num[cc] / den : 0.0;
            err = fmax(err, fabs(want - o[h * R + cc]));
          }
          free(num);
        }
        CHECK(err < 2e-5, "decode H %lld R %lld dr %lld S %lld CH %lld splits %lld: max error %g",
              (long long)H, (long long)R, (long long)dr, (long long)S, (long long)CH,
              (long long)nsplit, err);
        free(tables);
        free(pool);
        free(q);
        free(o);
      }
}

static void test_splits(void) {
  int64_t j0, j1;
  mla_split_range(10, 32, 0, &j0, &j1);
  CHECK(j0 == 0 && j1 == 10, "one split holds a short row");
  mla_split_range(10, 32, 3, &j0, &j1);
  CHECK(j0 == 10 && j1 == 10, "a split past the row is empty");
  mla_split_range(100, 32, 3, &j0, &j1);
  CHECK(j0 == 96 && j1 == 100, "the last split ends at the row");
  CHECK(mla_split_chunk(512, 132, 4096, 32) == 4096 && mla_num_splits(4096, 4096) == 1,
        "batch 128 x 4 head blocks fills an H200: no split");
  const int64_t ch = mla_split_chunk(4, 132, 8192, 32);
  CHECK(ch % 32 == 0 && ch >= 128 && 4 * mla_num_splits(8192, ch) >= 132,
        "one row of 8192 keys on an idle GPU: splits of %lld keys fill the GPU", (long long)ch);
  CHECK(mla_split_chunk(4, 132, 0, 32) == 32 && mla_num_splits(0, 32) == 1, "no keys: one split");
  CHECK(mla_split_chunk(4, 132, 300, 32) >= 128, "at least 128 keys per split");
  /* every key in exactly one split, for any chunk */
  int ok = 1;
  for (int64_t S = 0; S < 70; ++S)
    for (int64_t CH = 1; CH < 40; ++CH) {
      const int64_t ns = mla_num_splits(S, CH);
      int64_t next = 0;
      for (int64_t sp = 0; sp < ns + 2; ++sp) {
        mla_split_range(S, CH, sp, &j0, &j1);
        if (j0 != next && j1 > j0) ok = 0;
        if (j1 > j0) next = j1;
      }
      ok &= next == S;
    }
  CHECK(ok, "the splits tile every row exactly");
  int64_t r, hb, sp;
  mla_decode_task((2 * 3 + 1) * 4 + 3, 4, 3, &r, &hb, &sp); /* 4 head blocks, 3 splits */
  CHECK(r == 2 && sp == 1 && hb == 3, "task -> (row, head block, split): %lld %lld %lld",
        (long long)r, (long long)hb, (long long)sp);
}

static void test_softmax_steps(void) {
  float a;
  CHECK(mla_online_max(-INFINITY, -INFINITY, &a) == -INFINITY && a == 1.0f, "nothing seen: alpha 1");
  CHECK(mla_online_max(-INFINITY, 2.0f, &a) == 2.0f && a == 0.0f, "first keys: alpha 0");
  CHECK(mla_online_max(3.0f, 1.0f, &a) == 3.0f && a == 1.0f, "a lower tile keeps the max");
  CHECK(fabsf(mla_online_max(1.0f, 3.0f, &a) - 3.0f) == 0.0f && fabsf(a - expf(-2.0f)) < 1e-7f,
        "a higher tile rescales by e^(m_old - m_new)");
  CHECK(mla_prob(-INFINITY, 0.0f) == 0.0f && mla_prob(1.0f, 1.0f) == 1.0f, "masked keys weigh 0");
  const float ml[6] = {5.0f, 0.0f, 1.0f, 2.0f, 3.0f, 1.0f}; /* split 0 empty (l = 0) */
  CHECK(mla_merge_max(ml, 3) == 3.0f, "the empty split's m is ignored");
  CHECK(mla_merge_weight(5.0f, 0.0f, 3.0f) == 0.0f && mla_merge_weight(3.0f, 1.0f, 3.0f) == 1.0f,
        "empty splits weigh 0, the max split 1");
  const float none[4] = {-INFINITY, 0.0f, -INFINITY, 0.0f};
  CHECK(mla_merge_max(none, 2) == -INFINITY, "all splits empty");
}

/* ---- the training forward (kernels/mla_attn_tc.cu), simulated ------------------------ */

#define BT 64 /* query rows and keys per tile; 4 warps of 16 rows */

/* o [T, Dv] and lse [T] of one (b, h): causal softmax(scale Q K^T) V through the kernel's
 * per-lane registers: S tiles, quad reductions, online softmax, P reused as the A operand. */
static void sim_attn_fwd(int64_t T, int Dk, int Dv, float scale, const float *Q /* [T,Dk] */,
                         const float *K /* [T,Dk] */, const float *V /* [T,Dv] */, float *o, float *lse) {
  float *Qs = calloc((size_t)(BT * Dk), sizeof(float)), *Ks = calloc((size_t)(BT * Dk), sizeof(float));
  float *Vs = calloc((size_t)(BT * Dv), sizeof(float));
  const int nvt = Dv / 8;
  for (int64_t q0 = 0; q0 < T; q0 += BT) {
    for (int r = 0; r < BT; ++r)
      for (int d = 0; d < Dk; ++d) Qs[r * Dk + d] = q0 + r < T ? Q[(q0 + r) * Dk + d] : 0.0f;
    for (int warp = 0; warp < 4; ++warp) {
      const int64_t r0 = q0 + warp * 16;
      float O[16][32][4] = {{{0}}}, m[32][2], l[32][2];
      for (int lane = 0; lane < 32; ++lane)
        for (int r = 0; r < 2; ++r) {
          m[lane][r] = -INFINITY;
          l[lane][r] = 0.0f;
        }
      for (int64_t k0 = 0; k0 < mla_causal_kend(q0, BT, T); k0 += BT) {
        for (int r = 0; r < BT; ++r) {
          for (int d = 0; d < Dk; ++d) Ks[r * Dk + d] = k0 + r < T ? K[(k0 + r) * Dk + d] : 0.0f;
          for (int d = 0; d < Dv; ++d) Vs[r * Dv + d] = k0 + r < T ? V[(k0 + r) * Dv + d] : 0.0f;
        }
        float S[8][32][4] = {{{0}}};
        for (int kk = 0; kk < Dk; kk += 16)
          for (int nt = 0; nt < 8; ++nt) warp_mma(S[nt], Qs + warp * 16 * Dk + kk, Dk, Ks + nt * 8 * Dk + kk, Dk, b_nmajor);
        float tmax[32][2], alpha[32][2];
        for (int lane = 0; lane < 32; ++lane) {
          tmax[lane][0] = tmax[lane][1] = -INFINITY;
          for (int nt = 0; nt < 8; ++nt)
            for (int e = 0; e < 4; ++e) {
              const int64_t t = r0 + mla_fc_row(lane, e), j = k0 + nt * 8 + mla_fc_col(lane, e);
              S[nt][lane][e] = (j <= t && j < T) ? scale * S[nt][lane][e] : -INFINITY;
              if (S[nt][lane][e] > tmax[lane][e >> 1]) tmax[lane][e >> 1] = S[nt][lane][e];
            }
        }
        for (int lane = 0; lane < 32; ++lane) /* the quad's max (shuffles xor 1, 2) */
          for (int r = 0; r < 2; ++r) {
            float q = -INFINITY;
            for (int x = 0; x < 4; ++x) q = fmaxf(q, tmax[(lane & ~3) | x][r]);
            m[lane][r] = mla_online_max(m[lane][r], q, &alpha[lane][r]);
            l[lane][r] *= alpha[lane][r];
          }
        for (int lane = 0; lane < 32; ++lane)
          for (int nt = 0; nt < 8; ++nt)
            for (int e = 0; e < 4; ++e) {
              S[nt][lane][e] = mla_prob(S[nt][lane][e], m[lane][e >> 1]);
              l[lane][e >> 1] += S[nt][lane][e];
            }
        for (int vt = 0; vt < nvt; ++vt)
          for (int lane = 0; lane < 32; ++lane)
            for (int e = 0; e < 4; ++e) O[vt][lane][e] *= alpha[lane][e >> 1];
        for (int ks = 0; ks < 4; ++ks) {
          float fa[32][8];
          for (int lane = 0; lane < 32; ++lane)
            for (int i = 0; i < 8; ++i) fa[lane][i] = S[2 * ks + mla_c2a_tile(i)][lane][mla_c2a_elem(i)];
          for (int vt = 0; vt < nvt; ++vt) warp_mma_frag(O[vt], fa, Vs + ks * 16 * Dv + vt * 8, Dv, b_kmajor);
        }
      }
      for (int lane = 0; lane < 32; ++lane) {
        float L[2];
        for (int r = 0; r < 2; ++r) {
          L[r] = 0.0f;
          for (int x = 0; x < 4; ++x) L[r] += l[(lane & ~3) | x][r];
        }
        for (int vt = 0; vt < nvt; ++vt)
          for (int e = 0; e < 4; ++e) {
            const int64_t t = r0 + mla_fc_row(lane, e);
            if (t < T) o[t * Dv + vt * 8 + mla_fc_col(lane, e)] = O[vt][lane][e] / L[e >> 1];
          }
        if ((lane & 3) == 0)
          for (int r = 0; r < 2; ++r) {
            const int64_t t = r0 + mla_fc_row(lane, 2 * r);
            if (t < T) lse[t] = m[lane][r] + logf(L[r]);
          }
      }
    }
  }
  free(Qs);
  free(Ks);
  free(Vs);
}

static void test_attn_fwd_sim(void) {
  const int64_t Ts[] = {1, 17, 64, 65, 130};
  for (int ti = 0; ti < 5; ++ti)
    for (int shape = 0; shape < 2; ++shape) {
      const int64_t T = Ts[ti];
      const int Dk = shape ? 48 : 32, Dv = shape ? 40 : 16; /* Dv 40: not a multiple of 16 */
      const int Dvp = (Dv + 15) / 16 * 16;
      float *Q = calloc((size_t)(T * Dk), sizeof(float)), *K = calloc((size_t)(T * Dk), sizeof(float));
      float *V = calloc((size_t)(T * Dvp), sizeof(float)), *o = calloc((size_t)(T * Dvp), sizeof(float));
      float *lse = calloc((size_t)T, sizeof(float));
      for (int64_t i = 0; i < T * Dk; ++i) {
        Q[i] = (float)(2 * urand() - 1);
        K[i] = (float)(2 * urand() - 1);
      }
      for (int64_t t = 0; t < T; ++t)
        for (int c = 0; c < Dv; ++c) V[t * Dvp + c] = (float)(2 * urand() - 1);
      const float scale = 0.9f;
      sim_attn_fwd(T, Dk, Dvp, scale, Q, K, V, o, lse);
      double err = 0.0, err_lse = 0.0;
      for (int64_t t = 0; t < T; ++t) {
        double mx = -INFINITY, den = 0.0, num[48] = {0};
        for (int64_t j = 0; j <= t; ++j) {
          double s = 0.0;
          for (int d = 0; d < Dk; ++d) s += (double)Q[t * Dk + d] * K[j * Dk + d];
          mx = fmax(mx, scale * s);
        }
        for (int64_t j = 0; j <= t; ++j) {
          double s = 0.0;
          for (int d = 0; d < Dk; ++d) s += (double)Q[t * Dk + d] * K[j * Dk + d];
          const double p = exp(scale * s - mx);
          den += p;
          for (int c = 0; c < Dv; ++c) num[c] += p * V[j * Dvp + c];
        }
        for (int c = 0; c < Dv; ++c) err = fmax(err, fabs(num[c] / den - o[t * Dvp + c]));
        err_lse = fmax(err_lse, fabs(mx + log(den) - lse[t]));
      }
      CHECK(err < 2e-5 && err_lse < 2e-5, "attention forward T %lld Dk %d Dv %d: max error %g, lse %g",
            (long long)T, Dk, Dv, err, err_lse);
      free(Q);
      free(K);
      free(V);
      free(o);
      free(lse);
    }
  CHECK(mla_causal_kend(64, 64, 100) == 100 && mla_causal_kend(0, 64, 100) == 64,
        "causal key ends: the block's last row, at most T");
}

/* The backward's two kernels (dK, dV per key block with transposed tiles; dQ per query
 * block), simulated like the forward, for one (b, h); lse and D come from the caller. */
static void sim_attn_bwd(int64_t T, int Dk, int Dv, float scale, const float *Q, const float *K,
                         const float *V, const float *dO, const float *lse, const float *Dd,
                         float *dQo, float *dKo, float *dVo) {
  float *As = calloc((size_t)(BT * Dk), sizeof(float)), *Bs = calloc((size_t)(BT * Dk), sizeof(float));
  float *Cs = calloc((size_t)(BT * Dv), sizeof(float)), *Es = calloc((size_t)(BT * Dv), sizeof(float));
  const int nvt = Dv / 8, nkt = Dk / 8;
#define LOAD(dst, src, r0, D)                                                            \
  for (int r_ = 0; r_ < BT; ++r_)                                                        \
    for (int d_ = 0; d_ < (D); ++d_) (dst)[r_ * (D) + d_] = (r0) + r_ < T ? (src)[((r0) + r_) * (D) + d_] : 0.0f
  for (int64_t k0 = 0; k0 < T; k0 += BT) { /* dK, dV: As = K, Cs = V, Bs = Q, Es = dO tiles */
    LOAD(As, K, k0, Dk);
    LOAD(Cs, V, k0, Dv);
    for (int warp = 0; warp < 4; ++warp) {
      const int64_t j0 = k0 + warp * 16;
      static float dV[16][32][4], dK[24][32][4];
      memset(dV, 0, sizeof dV);
      memset(dK, 0, sizeof dK);
      for (int64_t q0 = k0; q0 < T; q0 += BT) {
        LOAD(Bs, Q, q0, Dk);
        LOAD(Es, dO, q0, Dv);
        float P[8][32][4] = {{{0}}}, dP[8][32][4] = {{{0}}};
        for (int kk = 0; kk < Dk; kk += 16)
          for (int nt = 0; nt < 8; ++nt) warp_mma(P[nt], As + warp * 16 * Dk + kk, Dk, Bs + nt * 8 * Dk + kk, Dk, b_nmajor);
        for (int nt = 0; nt < 8; ++nt)
          for (int lane = 0; lane < 32; ++lane)
            for (int e = 0; e < 4; ++e) {
              const int64_t j = j0 + mla_fc_row(lane, e), t = q0 + nt * 8 + mla_fc_col(lane, e);
              P[nt][lane][e] = (j <= t && t < T && j < T) ? expf(scale * P[nt][lane][e] - lse[t]) : 0.0f;
            }
        for (int ks = 0; ks < 4; ++ks) {
          float fa[32][8];
          for (int lane = 0; lane < 32; ++lane)
            for (int i = 0; i < 8; ++i) fa[lane][i] = P[2 * ks + mla_c2a_tile(i)][lane][mla_c2a_elem(i)];
          for (int vt = 0; vt < nvt; ++vt) warp_mma_frag(dV[vt], fa, Es + ks * 16 * Dv + vt * 8, Dv, b_kmajor);
        }
        for (int kk = 0; kk < Dv; kk += 16)
          for (int nt = 0; nt < 8; ++nt) warp_mma(dP[nt], Cs + warp * 16 * Dv + kk, Dv, Es + nt * 8 * Dv + kk, Dv, b_nmajor);
        for (int nt = 0; nt < 8; ++nt)
          for (int lane = 0; lane < 32; ++lane)
            for (int e = 0; e < 4; ++e) {
              const int64_t t = q0 + nt * 8 + mla_fc_col(lane, e);
              dP[nt][lane][e] = P[nt][lane][e] * (dP[nt][lane][e] - (t < T ? Dd[t] : 0.0f));
            }
        for (int ks = 0; ks < 4; ++ks) {
          float fa[32][8];
          for (int lane = 0; lane < 32; ++lane)
            for (int i = 0; i < 8; ++i) fa[lane][i] = dP[2 * ks + mla_c2a_tile(i)][lane][mla_c2a_elem(i)];
          for (int kt = 0; kt < nkt; ++kt) warp_mma_frag(dK[kt], fa, Bs + ks * 16 * Dk + kt * 8, Dk, b_kmajor);
        }
      }
      for (int lane = 0; lane < 32; ++lane)
        for (int e = 0; e < 4; ++e) {
          const int64_t j = j0 + mla_fc_row(lane, e);
          if (j >= T) continue;
          for (int kt = 0; kt < nkt; ++kt) dKo[j * Dk + kt * 8 + mla_fc_col(lane, e)] = scale * dK[kt][lane][e];
          for (int vt = 0; vt < nvt; ++vt) dVo[j * Dv + vt * 8 + mla_fc_col(lane, e)] = dV[vt][lane][e];
        }
    }
  }
  for (int64_t q0 = 0; q0 < T; q0 += BT) { /* dQ: As = Q, Es = dO, Bs = K, Cs = V tiles */
    LOAD(As, Q, q0, Dk);
    LOAD(Es, dO, q0, Dv);
    for (int warp = 0; warp < 4; ++warp) {
      const int64_t r0 = q0 + warp * 16;
      static float dQ[24][32][4];
      memset(dQ, 0, sizeof dQ);
      for (int64_t k0 = 0; k0 < mla_causal_kend(q0, BT, T); k0 += BT) {
        LOAD(Bs, K, k0, Dk);
        LOAD(Cs, V, k0, Dv);
        float P[8][32][4] = {{{0}}}, dP[8][32][4] = {{{0}}};
        for (int kk = 0; kk < Dk; kk += 16)
          for (int nt = 0; nt < 8; ++nt) warp_mma(P[nt], As + warp * 16 * Dk + kk, Dk, Bs + nt * 8 * Dk + kk, Dk, b_nmajor);
        for (int kk = 0; kk < Dv; kk += 16)
          for (int nt = 0; nt < 8; ++nt) warp_mma(dP[nt], Es + warp * 16 * Dv + kk, Dv, Cs + nt * 8 * Dv + kk, Dv, b_nmajor);
        for (int nt = 0; nt < 8; ++nt)
          for (int lane = 0; lane < 32; ++lane)
            for (int e = 0; e < 4; ++e) {
              const int64_t t = r0 + mla_fc_row(lane, e), j = k0 + nt * 8 + mla_fc_col(lane, e);
              const float pp = (j <= t && j < T && t < T) ? expf(scale * P[nt][lane][e] - lse[t]) : 0.0f;
              dP[nt][lane][e] = pp * (dP[nt][lane][e] - (t < T ? Dd[t] : 0.0f));
            }
        for (int ks = 0; ks < 4; ++ks) {
          float fa[32][8];
          for (int lane = 0; lane < 32; ++lane)
            for (int i = 0; i < 8; ++i) fa[lane][i] = dP[2 * ks + mla_c2a_tile(i)][lane][mla_c2a_elem(i)];
          for (int kt = 0; kt < nkt; ++kt) warp_mma_frag(dQ[kt], fa, Bs + ks * 16 * Dk + kt * 8, Dk, b_kmajor);
        }
      }
      for (int lane = 0; lane < 32; ++lane)
        for (int e = 0; e < 4; ++e) {
          const int64_t t = r0 + mla_fc_row(lane, e);
          if (t < T)
            for (int kt = 0; kt < nkt; ++kt) dQo[t * Dk + kt * 8 + mla_fc_col(lane, e)] = scale * dQ[kt][lane][e];
        }
    }
  }
#undef LOAD
  free(As);
  free(Bs);
  free(Cs);
  free(Es);
}

static void test_attn_bwd_sim(void) {
  const int64_t Ts[] = {1, 23, 64, 100};
  for (int ti = 0; ti < 4; ++ti) {
    const int64_t T = Ts[ti];
    const int Dk = 32, Dv = 16;
    const float scale = 0.8f;
    float *Q = calloc((size_t)(T * Dk), 4), *K = calloc((size_t)(T * Dk), 4), *V = calloc((size_t)(T * Dv), 4);
    float *dO = calloc((size_t)(T * Dv), 4), *lse = calloc((size_t)T, 4), *Dd = calloc((size_t)T, 4);
    float *dQ = calloc((size_t)(T * Dk), 4), *dK = calloc((size_t)(T * Dk), 4), *dV = calloc((size_t)(T * Dv), 4);
    double *P = calloc((size_t)(T * T), sizeof(double)), *dS = calloc((size_t)(T * T), sizeof(double));
    for (int64_t i = 0; i < T * Dk; ++i) {
      Q[i] = (float)(2 * urand() - 1);
      K[i] = (float)(2 * urand() - 1);
    }
    for (int64_t i = 0; i < T * Dv; ++i) {
      V[i] = (float)(2 * urand() - 1);
      dO[i] = (float)(2 * urand() - 1);
    }
    for (int64_t t = 0; t < T; ++t) { /* softmax rows, lse, D = dO . o */
      double mx = -INFINITY, den = 0.0;
      for (int64_t j = 0; j <= t; ++j) {
        double s = 0.0;
        for (int d = 0; d < Dk; ++d) s += (double)Q[t * Dk + d] * K[j * Dk + d];
        P[t * T + j] = scale * s;
        mx = fmax(mx, scale * s);
      }
      for (int64_t j = 0; j <= t; ++j) den += exp(P[t * T + j] - mx);
      for (int64_t j = 0; j <= t; ++j) P[t * T + j] = exp(P[t * T + j] - mx) / den;
      lse[t] = (float)(mx + log(den));
      double dd = 0.0;
      for (int c = 0; c < Dv; ++c) {
        double oc = 0.0;
        for (int64_t j = 0; j <= t; ++j) oc += P[t * T + j] * V[j * Dv + c];
        dd += oc * dO[t * Dv + c];
      }
      Dd[t] = (float)dd;
      for (int64_t j = 0; j <= t; ++j) {
        double dp = 0.0;
        for (int c = 0; c < Dv; ++c) dp += (double)dO[t * Dv + c] * V[j * Dv + c];
        dS[t * T + j] = P[t * T + j] * (dp - dd);
      }
    }
    sim_attn_bwd(T, Dk, Dv, scale, Q, K, V, dO, lse, Dd, dQ, dK, dV);
    double eq = 0.0, ek = 0.0, ev = 0.0;
    for (int64_t t = 0; t < T; ++t)
      for (int d = 0; d < Dk; ++d) {
        double wq = 0.0, wk = 0.0;
        for (int64_t j = 0; j < T; ++j) {
          wq += scale * dS[t * T + j] * K[j * Dk + d]; /* dQ[t] = scale sum_j dS[t,j] K[j] */
          wk += scale * dS[j * T + t] * Q[j * Dk + d]; /* dK[t] = scale sum_i dS[i,t] Q[i] */
        }
        eq = fmax(eq, fabs(wq - dQ[t * Dk + d]));
        ek = fmax(ek, fabs(wk - dK[t * Dk + d]));
      }
    for (int64_t j = 0; j < T; ++j)
      for (int c = 0; c < Dv; ++c) {
        double wv = 0.0;
        for (int64_t t = 0; t < T; ++t) wv += P[t * T + j] * dO[t * Dv + c];
        ev = fmax(ev, fabs(wv - dV[j * Dv + c]));
      }
    CHECK(eq < 5e-5 && ek < 5e-5 && ev < 5e-5, "attention backward T %lld: max errors dQ %g dK %g dV %g",
          (long long)T, eq, ek, ev);
    free(Q); free(K); free(V); free(dO); free(lse); free(Dd); free(dQ); free(dK); free(dV); free(P); free(dS);
  }
}

int main(void) {
  test_fragments();
  test_fp8_layout();
  test_splits();
  test_softmax_steps();
  test_decode_sim();
  test_attn_fwd_sim();
  test_attn_bwd_sim();
  printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail != 0;
}
