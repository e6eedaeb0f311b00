/*
 * test_fp8_mma_tile.cpp -- CPU simulation of the tensor-core FP8 GEMM of
 * kernels/fp8_grouped_mma.cu with the index functions it uses (kernels/fp8_mma_tile.cuh,
 * compiled here as plain C++): every CTA tile's cp.async chunks fill padded shared tiles
 * (padding poisoned with the E4M3 NaN code), every warp's lanes load their fragments by
 * mt_*_frag_off, a model of mma.sync.m16n8k32 written from the PTX ISA's per-element
 * formulas (a_i / b_i / c_i, not the header's per-register ones) multiplies them, the
 * partials are promoted per 128-K block with mt_scale_idx, and the stores go through the
 * same guards. The result must equal a reference block-scaled GEMM for random inputs:
 * plain (1x128 and 128x128 scales), grouped (offsets with empty and unaligned groups, and
 * rows past the last group: zeros, the MoE layer's row bound), masked and K-grouped (the
 * MoE weight gradient: group g sums the 128-blocks of its token range into its own C)
 * layouts, M and N not multiples of the tile, K multiples of 128 and of 16 only.
 * Outputs are poisoned with NaN first: a missing store shows. Also checks that each
 * fragment layout is a bijection and that the fragment loads are bank-conflict-free.
 * Build: g++ -std=c++17 -O1 -Icsrc/core -Ikernels tests/c/test_fp8_mma_tile.cpp
 * (tests/test_fp8.py does this). Closing line: "N passed, N failed".
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#include "fp8_format.h"
#include "fp8_mma_tile.cuh"

#include "check.h" /* CHECK, the "N passed, N failed" line */

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd() {
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return (uint32_t)(g_rng >> 16);
}
static uint8_t rnd_code() { /* a finite E4M3 code (0x7f / 0xff are NaN) */
  uint8_t c;
  do c = (uint8_t)rnd(); while ((c & 0x7f) == 0x7f);
  return c;
}
static float rnd_scale() { return 0.25f + (float)(rnd() % 1000) / 250.0f; }

/* ---- the mma.sync.m16n8k32 model (PTX ISA, 8-bit A/B, f32 C/D) ---------------------- */

/* D = A B + C for one warp. Registers as the lanes hold them; the element positions follow
 * the ISA's formulas per element index. */
static void mma_model(float d[32][4], const uint32_t a[32][4], const uint32_t b[32][2],
                      const float c[32][4]) {
  float A[16][32], B[32][8], C[16][8];
  int seenA[16][32] = {{0}}, seenB[32][8] = {{0}}, seenC[16][8] = {{0}};
  for (int lane = 0; lane < 32; ++lane) {
    const int groupID = lane >> 2, tig = lane % 4;
    for (int i = 0; i < 16; ++i) { /* a0..a15 */
      const int row = (i < 4 || (i >= 8 && i < 12)) ? groupID : groupID + 8;
      const int col = tig * 4 + (i & 3) + (i >= 8 ? 16 : 0);
      const uint8_t code = (uint8_t)(a[lane][i / 4] >> (8 * (i % 4)));
      A[row][col] = dsc_e4m3_to_f32(code);
      seenA[row][col]++;
    }
    for (int i = 0; i < 8; ++i) { /* b0..b7 */
      const int row = tig * 4 + (i & 3) + (i >= 4 ? 16 : 0), col = groupID;
      const uint8_t code = (uint8_t)(b[lane][i / 4] >> (8 * (i % 4)));
      B[row][col] = dsc_e4m3_to_f32(code);
      seenB[row][col]++;
    }
    for (int i = 0; i < 4; ++i) { /* c0..c3 */
      const int row = groupID + (i >= 2 ? 8 : 0), col = tig * 2 + (i & 1);
      C[row][col] = c[lane][i];
      seenC[row][col]++;
    }
  }
  for (int r = 0; r < 16; ++r)
    for (int k = 0; k < 32; ++k)
      if (seenA[r][k] != 1) { fprintf(stderr, "model: A not a bijection\n"); exit(2); }
  for (int lane = 0; lane < 32; ++lane) {
    const int groupID = lane >> 2, tig = lane % 4;
    for (int i = 0; i < 4; ++i) {
      const int row = groupID + (i >= 2 ? 8 : 0), col = tig * 2 + (i & 1);
      float s = C[row][col];
      for (int k = 0; k < 32; ++k) s += A[row][k] * B[k][col];
      d[lane][i] = s;
    }
  }
  (void)seenB;
  (void)seenC;
}

/* ---- the kernel, simulated ----------------------------------------------------------- */

struct Sim {
  const Fp8MmaArgs &p;
  std::vector<uint8_t> sa, sb; /* one stage of the shared tiles */
  float *out;                  /* [Bt, M, N] float32 */
  int64_t reads_outside = 0;
  explicit Sim(const Fp8MmaArgs &pp) : p(pp), sa(MT_BM * MT_SROW), sb(MT_BN * MT_SROW) {
    out = (float *)pp.c;
  }

  void load_stage(const uint8_t *A, const uint8_t *B, int64_t m0, int64_t n0, int64_t r0,
                  int64_t r1, int64_t kb) {
    memset(sa.data(), 0x7f, sa.size()); /* NaN codes: a read of padding shows */
    memset(sb.data(), 0x7f, sb.size());
    for (int tid = 0; tid < MT_THREADS; ++tid)
      for (int c = tid; c < MT_BM * MT_CHUNKS_PER_ROW; c += MT_THREADS) {
        const int row = mt_chunk_row(c), kc = mt_chunk_k(c);
        const int64_t k = kb * MT_BK + kc, gm = m0 + row, gn = n0 + row;
        const int ba = mt_chunk_bytes(gm, r0, r1, k, p.K), bb = mt_chunk_bytes(gn, 0, p.N, k, p.K);
        uint8_t *da = &sa[mt_smem_off(row, kc)], *db = &sb[mt_smem_off(row, kc)];
        for (int e = 0; e < 16; ++e) { /* cp.async: src-size bytes copied, the rest zero */
          da[e] = e < ba ? A[gm * p.K + k + e] : 0;
          db[e] = e < bb ? B[gn * p.K + k + e] : 0;
        }
      }
  }

  static uint32_t ld32(const std::vector<uint8_t> &s, int off) {
    return (uint32_t)s[off] | (uint32_t)s[off + 1] << 8 | (uint32_t)s[off + 2] << 16 |
           (uint32_t)s[off + 3] << 24;
  }

  void tile(int64_t z, int64_t g, int64_t zc, int64_t m0, int64_t n0, int64_t r0, int64_t r1, int64_t kb0,
            int64_t kb1) {
    const int64_t M = p.M, N = p.N, K = p.K, Kb = p.Kb;
    const uint8_t *A = p.a + z * M * K;
    const float *AS = p.a_scale + z * ((M + p.a_br - 1) / p.a_br) * Kb;
    const uint8_t *B = p.b + g * N * K;
    const float *BS = p.b_scale + g * ((N + p.b_br - 1) / p.b_br) * Kb;
    static float acc[MT_WARPS][32][MT_FM][MT_FN][4];
    memset(acc, 0, sizeof acc);
    for (int64_t kb = kb0; kb < kb1; ++kb) {
      load_stage(A, B, m0, n0, r0, r1, kb);
      for (int w = 0; w < MT_WARPS; ++w) {
        static float part[MT_FM][MT_FN][32][4];
        memset(part, 0, sizeof part);
        for (int ks = 0; ks < MT_BK / 32; ++ks) {
          uint32_t af[MT_FM][32][4], bf[MT_FN][32][2];
          for (int lane = 0; lane < 32; ++lane) {
            for (int i = 0; i < MT_FM; ++i)
              for (int r = 0; r < 4; ++r) af[i][lane][r] = ld32(sa, mt_a_frag_off(w, i, ks, lane, r));
            for (int j = 0; j < MT_FN; ++j)
              for (int r = 0; r < 2; ++r) bf[j][lane][r] = ld32(sb, mt_b_frag_off(w, j, ks, lane, r));
          }
          for (int i = 0; i < MT_FM; ++i)
            for (int j = 0; j < MT_FN; ++j) {
              float d[32][4];
              mma_model(d, af[i], bf[j], part[i][j]);
              memcpy(part[i][j], d, sizeof d);
            }
        }
        for (int lane = 0; lane < 32; ++lane)
          for (int i = 0; i < MT_FM; ++i)
            for (int j = 0; j < MT_FN; ++j)
              for (int e = 0; e < 4; ++e) {
                const int64_t m = m0 + mt_warp_m0(w) + i * 16 + mt_c_row(lane, 2 * (e >> 1));
                const int64_t n = n0 + mt_warp_n0(w) + j * 8 + mt_c_col(lane, e & 1);
                const float s_a = (m >= r0 && m < r1) ? AS[mt_scale_idx(m, kb, p.a_br, Kb)] : 0.0f;
                const float s_b = n < N ? BS[mt_scale_idx(n, kb, p.b_br, Kb)] : 0.0f;
                acc[w][lane][i][j][e] += part[i][j][lane][e] * s_a * s_b;
              }
      }
    }
    float *C = out + zc * M * N;
    for (int w = 0; w < MT_WARPS; ++w)
      for (int lane = 0; lane < 32; ++lane)
        for (int i = 0; i < MT_FM; ++i)
          for (int j = 0; j < MT_FN; ++j)
            for (int e = 0; e < 4; ++e) {
              const int64_t m = m0 + mt_warp_m0(w) + i * 16 + mt_c_row(lane, e);
              const int64_t n = n0 + mt_warp_n0(w) + j * 8 + mt_c_col(lane, e);
              if (m >= r0 && m < r1 && n < N) C[m * N + n] = acc[w][lane][i][j][e];
            }
  }

  void run() { /* the kernel's tile loop, one "CTA" at a time */
    const int64_t tiles_m = (p.M + MT_BM - 1) / MT_BM, tiles_n = (p.N + MT_BN - 1) / MT_BN;
    const int64_t batch = (p.mode == MT_MODE_MASKED || p.mode == MT_MODE_KGROUPED) ? p.G : 1;
    for (int64_t t = 0; t < batch * tiles_m * tiles_n; ++t) {
      int64_t z, tm, tn;
      mt_tile_coords(t, tiles_m, tiles_n, &z, &tm, &tn);
      const int64_t m0 = tm * MT_BM, n0 = tn * MT_BN;
      const int64_t mend = m0 + MT_BM < p.M ? m0 + MT_BM : p.M;
      if (p.mode == MT_MODE_PLAIN) {
        tile(0, 0, 0, m0, n0, m0, mend, 0, p.Kb);
      } else if (p.mode == MT_MODE_KGROUPED) {
        int64_t kb0, kb1;
        mt_kgroup_blocks(p.gidx, z, &kb0, &kb1);
        tile(0, 0, z, m0, n0, m0, mend, kb0, kb1);
      } else if (p.mode == MT_MODE_MASKED) {
        const int64_t mm = mt_masked_end(p.gidx[z], m0, mend);
        if (mm > m0) tile(z, z, z, m0, n0, m0, mm, 0, p.Kb);
        const int64_t nend = n0 + MT_BN < p.N ? n0 + MT_BN : p.N;
        const int64_t wd = nend - n0, cnt = (mend - mm) * wd;
        for (int64_t e = 0; e < cnt; ++e) out[z * p.M * p.N + (mm + e / wd) * p.N + n0 + e % wd] = 0.0f;
      } else {
        for (int64_t g = mt_first_group(p.gidx, p.G, m0); g < p.G; ++g) {
          if ((int64_t)p.gidx[g] >= mend) break;
          int64_t s0, s1;
          if (mt_group_rows(p.gidx, g, m0, mend, &s0, &s1)) tile(0, g, 0, m0, n0, s0, s1, 0, p.Kb);
        }
        /* rows past every group: zeros (the kernel's tail loop) */
        const int64_t mz = mt_masked_end(p.gidx[p.G], m0, mend);
        const int64_t nend = n0 + MT_BN < p.N ? n0 + MT_BN : p.N;
        const int64_t wd = nend - n0, cnt = (mend - mz) * wd;
        for (int64_t e = 0; e < cnt; ++e) out[(mz + e / wd) * p.N + n0 + e % wd] = 0.0f;
      }
    }
  }
};

/* Reference: C[z][m][n] = sum_kb (sum_k A B) sa sb in double, with group g of row m (plain:
 * 0; grouped: offsets, rows past the last group zero; masked: z, rows >= mm zero;
 * K-grouped: batch z sums the K blocks of tokens [offsets[z], offsets[z+1]) of the shared
 * A and B, written without the header's helpers). */
static void reference(const Fp8MmaArgs &p, std::vector<double> &ref, std::vector<double> &mag) {
  const int kg = p.mode == MT_MODE_KGROUPED;
  const int64_t batch = (p.mode == MT_MODE_MASKED || kg) ? p.G : 1;
  ref.assign(batch * p.M * p.N, 0.0);
  mag.assign(batch * p.M * p.N, 0.0);
  for (int64_t z = 0; z < batch; ++z)
    for (int64_t m = 0; m < p.M; ++m) {
      int64_t g = 0;
      if (p.mode == MT_MODE_GROUPED) {
        if (m >= p.gidx[p.G]) continue; /* past every group: 0 */
        while (p.gidx[g + 1] <= m) ++g;
      }
      if (p.mode == MT_MODE_MASKED) {
        g = z;
        if (m >= p.gidx[z]) continue;
      }
      const int64_t za = kg ? 0 : z;
      if (kg) g = 0;
      const uint8_t *A = p.a + (za * p.M + m) * p.K;
      const float *AS = p.a_scale + za * ((p.M + p.a_br - 1) / p.a_br) * p.Kb;
      for (int64_t n = 0; n < p.N; ++n) {
        const uint8_t *B = p.b + (g * p.N + n) * p.K;
        const float *BS = p.b_scale + g * ((p.N + p.b_br - 1) / p.b_br) * p.Kb;
        double tot = 0, ab = 0;
        for (int64_t kb = 0; kb < p.Kb; ++kb) {
          double s = 0, sabs = 0;
          for (int64_t k = kb * 128; k < p.K && k < (kb + 1) * 128; ++k) {
            if (kg && (k < p.gidx[z] || k >= p.gidx[z + 1])) continue; /* another group's token */
            const double x = (double)dsc_e4m3_to_f32(A[k]) * dsc_e4m3_to_f32(B[k]);
            s += x;
            sabs += fabs(x);
          }
          const double sc = (double)AS[(m / p.a_br) * p.Kb + kb] * BS[(n / p.b_br) * p.Kb + kb];
          tot += s * sc;
          ab += sabs * sc;
        }
        ref[(z * p.M + m) * p.N + n] = tot;
        mag[(z * p.M + m) * p.N + n] = ab;
      }
    }
}

static void run_case(const char *name, int mode, int64_t G, int64_t M, int64_t N, int64_t K,
                     int64_t a_br, int64_t b_br, std::vector<int32_t> gidx) {
  Fp8MmaArgs p;
  p.M = M;
  p.N = N;
  p.K = K;
  p.Kb = mt_k_blocks(K);
  p.mode = mode;
  p.G = G;
  p.a_br = a_br;
  p.b_br = b_br;
  const int64_t Bt = mode == MT_MODE_MASKED ? G : 1;
  const int64_t Gb = (mode == MT_MODE_PLAIN || mode == MT_MODE_KGROUPED) ? 1 : G; /* B matrices */
  const int64_t Ct = (mode == MT_MODE_MASKED || mode == MT_MODE_KGROUPED) ? G : 1; /* C batches */
  std::vector<uint8_t> a(Bt * M * K), b(Gb * N * K);
  for (auto &x : a) x = rnd_code();
  for (auto &x : b) x = rnd_code();
  std::vector<float> as(Bt * ((M + a_br - 1) / a_br) * p.Kb), bs(Gb * ((N + b_br - 1) / b_br) * p.Kb);
  for (auto &x : as) x = rnd_scale();
  for (auto &x : bs) x = rnd_scale();
  std::vector<float> c(Ct * M * N, NAN);
  p.a = a.data();
  p.b = b.data();
  p.a_scale = as.data();
  p.b_scale = bs.data();
  p.c = c.data();
  p.gidx = mode == MT_MODE_PLAIN ? NULL : gidx.data();
  Sim sim(p);
  sim.run();
  std::vector<double> ref, mag;
  reference(p, ref, mag);
  int64_t bad = 0, first = -1;
  for (size_t i = 0; i < c.size(); ++i) {
    const double tol = 1e-5 * mag[i] + 1e-6;
    if (!(fabs((double)c[i] - ref[i]) <= tol)) {
      if (first < 0) first = (int64_t)i;
      ++bad;
    }
  }
  CHECK(bad == 0, "%s (G %lld M %lld N %lld K %lld a_br %lld b_br %lld): %lld of %zu wrong, first [%lld] got %g want %g",
        name, (long long)G, (long long)M, (long long)N, (long long)K, (long long)a_br, (long long)b_br,
        (long long)bad, c.size(), (long long)first, first >= 0 ? (double)c[first] : 0.0,
        first >= 0 ? ref[first] : 0.0);
}

/* Each lane's fragment elements cover each matrix position exactly once (header side). */
static void test_fragment_bijections(void) {
  int a[16][32] = {{0}}, b[32][8] = {{0}}, cc[16][8] = {{0}};
  for (int lane = 0; lane < 32; ++lane) {
    for (int r = 0; r < 4; ++r)
      for (int j = 0; j < 4; ++j) a[mt_a_row(lane, r)][mt_a_col(lane, r, j)]++;
    for (int r = 0; r < 2; ++r)
      for (int j = 0; j < 4; ++j) b[mt_b_k(lane, r, j)][mt_b_n(lane)]++;
    for (int i = 0; i < 4; ++i) cc[mt_c_row(lane, i)][mt_c_col(lane, i)]++;
  }
  int ok = 1;
  for (int r = 0; r < 16; ++r)
    for (int k = 0; k < 32; ++k) ok &= a[r][k] == 1;
  CHECK(ok, "A fragment is a bijection");
  ok = 1;
  for (int k = 0; k < 32; ++k)
    for (int n = 0; n < 8; ++n) ok &= b[k][n] == 1;
  CHECK(ok, "B fragment is a bijection");
  ok = 1;
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 8; ++n) ok &= cc[r][n] == 1;
  CHECK(ok, "C fragment is a bijection");
}

/* A warp's 32-bit fragment loads (one register index at a time) hit 32 distinct banks;
 * the tile fits the shared rows; the warps cover the CTA tile. */
static void test_banks_and_tiling(void) {
  int conflicts = 0;
  for (int w = 0; w < MT_WARPS; ++w)
    for (int ks = 0; ks < 4; ++ks) {
      for (int i = 0; i < MT_FM; ++i)
        for (int r = 0; r < 4; ++r) {
          int seen[32] = {0};
          for (int lane = 0; lane < 32; ++lane) {
            const int off = mt_a_frag_off(w, i, ks, lane, r);
            if (off % 4 != 0) ++conflicts;
            seen[(off / 4) % 32]++;
          }
          for (int k = 0; k < 32; ++k) conflicts += seen[k] > 1;
        }
      for (int j = 0; j < MT_FN; ++j)
        for (int r = 0; r < 2; ++r) {
          int seen[32] = {0};
          for (int lane = 0; lane < 32; ++lane) seen[(mt_b_frag_off(w, j, ks, lane, r) / 4) % 32]++;
          for (int k = 0; k < 32; ++k) conflicts += seen[k] > 1;
        }
    }
  CHECK(conflicts == 0, "fragment loads: %d bank conflicts or misaligned words", conflicts);
  int cover[MT_BM][MT_BN] = {{0}};
  for (int w = 0; w < MT_WARPS; ++w)
    for (int lane = 0; lane < 32; ++lane)
      for (int i = 0; i < MT_FM; ++i)
        for (int j = 0; j < MT_FN; ++j)
          for (int e = 0; e < 4; ++e)
            cover[mt_warp_m0(w) + i * 16 + mt_c_row(lane, e)][mt_warp_n0(w) + j * 8 + mt_c_col(lane, e)]++;
  int ok = 1;
  for (int m = 0; m < MT_BM; ++m)
    for (int n = 0; n < MT_BN; ++n) ok &= cover[m][n] == 1;
  CHECK(ok, "the 4 warps cover the 64 x 64 tile once");
  CHECK(MT_CHUNKS_PER_ROW * 16 == MT_BK && MT_SROW >= MT_BK && MT_SROW % 16 == 0, "shared rows hold 16-byte chunks");
  int chunks[MT_BM][MT_CHUNKS_PER_ROW] = {{0}};
  for (int c = 0; c < MT_BM * MT_CHUNKS_PER_ROW; ++c) chunks[mt_chunk_row(c)][mt_chunk_k(c) / 16]++;
  ok = 1;
  for (int m = 0; m < MT_BM; ++m)
    for (int k = 0; k < MT_CHUNKS_PER_ROW; ++k) ok &= chunks[m][k] == 1;
  CHECK(ok, "cp.async chunks cover the tile once");
}

static void test_group_lookup(void) {
  const int32_t off[] = {0, 0, 5, 5, 64, 200, 200};
  const int64_t G = 6;
  int ok = 1;
  for (int64_t m0 = 0; m0 < 200; ++m0) {
    int64_t want = 0;
    while (want < G && off[want + 1] <= m0) ++want;
    ok &= mt_first_group(off, G, m0) == want;
  }
  CHECK(ok, "mt_first_group finds the first group ending after m0");
  CHECK(mt_first_group(off, G, 200) == G, "past the last row: G");
  CHECK(mt_masked_end(0, 64, 128) == 64 && mt_masked_end(100, 64, 128) == 100 &&
            mt_masked_end(300, 64, 128) == 128,
        "mt_masked_end clamps");
  int64_t s0, s1;
  CHECK(mt_group_rows(off, 3, 0, 64, &s0, &s1) && s0 == 5 && s1 == 64, "group 3 in tile 0");
  CHECK(!mt_group_rows(off, 2, 0, 64, &s0, &s1) && !mt_group_rows(off, 0, 0, 64, &s0, &s1), "empty groups 0 and 2");
  /* K groups: 128-aligned token ranges and their blocks */
  const int32_t ko[] = {0, 128, 128, 384, 512};
  int64_t kb0, kb1;
  mt_kgroup_blocks(ko, 0, &kb0, &kb1);
  CHECK(kb0 == 0 && kb1 == 1, "K group 0: block 0");
  mt_kgroup_blocks(ko, 1, &kb0, &kb1);
  CHECK(kb0 == 1 && kb1 == 1, "K group 1: empty");
  mt_kgroup_blocks(ko, 2, &kb0, &kb1);
  CHECK(kb0 == 1 && kb1 == 3, "K group 2: blocks 1, 2");
}

int main(void) {
  test_fragment_bijections();
  test_banks_and_tiling();
  test_group_lookup();
  run_case("plain", MT_MODE_PLAIN, 1, 64, 64, 128, 1, 128, {});
  run_case("plain odd", MT_MODE_PLAIN, 1, 77, 93, 256, 1, 128, {});
  run_case("plain K%128!=0", MT_MODE_PLAIN, 1, 130, 40, 272, 1, 128, {});
  run_case("plain 128x128 a", MT_MODE_PLAIN, 1, 150, 70, 384, 128, 1, {});
  run_case("plain K=16", MT_MODE_PLAIN, 1, 33, 17, 16, 1, 1, {});
  run_case("grouped", MT_MODE_GROUPED, 4, 200, 72, 256, 1, 128, {0, 37, 37, 150, 200});
  run_case("grouped aligned", MT_MODE_GROUPED, 3, 256, 130, 256, 1, 128, {0, 128, 128, 256});
  run_case("grouped empty first/last", MT_MODE_GROUPED, 5, 90, 64, 144, 1, 128, {0, 0, 3, 64, 90, 90});
  run_case("masked", MT_MODE_MASKED, 3, 100, 81, 256, 1, 128, {100, 0, 63});
  run_case("masked K%128!=0", MT_MODE_MASKED, 2, 70, 64, 176, 1, 128, {1, 70});
  run_case("grouped, rows past the last group", MT_MODE_GROUPED, 3, 300, 72, 128, 1, 128, {0, 128, 128, 256});
  run_case("grouped, a bound far past the rows", MT_MODE_GROUPED, 2, 200, 40, 144, 1, 128, {0, 0, 5});
  /* the weight gradient: M = N of dW, N = K of dW, K = tokens (per-row scales both) */
  run_case("kgrouped", MT_MODE_KGROUPED, 4, 72, 136, 640, 1, 1, {0, 128, 128, 384, 512});
  run_case("kgrouped empty first/last", MT_MODE_KGROUPED, 4, 64, 64, 384, 1, 1, {0, 0, 256, 384, 384});
  run_case("kgrouped all empty", MT_MODE_KGROUPED, 2, 30, 50, 256, 1, 1, {0, 0, 0});
  printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}
