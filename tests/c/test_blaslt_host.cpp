/*
 * test_blaslt_host.cpp -- the host-only parts of the shared cuBLASLt layer
 * (kernels/blaslt_host.h), compiled with g++ without CUDA: the key of a problem (the
 * math mode included), the plan cache (a repeated key
 * finds its plan, every key word matters, least-recently-used eviction hands back exactly
 * the evicted plan, clear destroys every plan once) and the rules for cuBLASLt's
 * block-scaled FP8 GEMM (each rule alone turns the path off, with its reason).
 * Build: g++ -std=c++17 -Ikernels tests/c/test_blaslt_host.cpp (tests/test_fp8.py does it).
 * Closing line: "N passed, N failed".
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "blaslt_host.h"

#include "check.h" /* CHECK, the "N passed, N failed" line */

static DscLtKey key_of(int64_t M, int64_t N, int64_t K) {
  DscLtKey k;
  dsc_lt_key_clear(&k);
  k.w[LTK_KIND] = 1;
  k.w[LTK_M] = M;
  k.w[LTK_N] = N;
  k.w[LTK_K] = K;
  k.w[LTK_LDA] = K;
  k.w[LTK_LDB] = K;
  k.w[LTK_LDC] = N;
  k.w[LTK_BATCH] = 1;
  k.w[LTK_SCALE_A] = -1;
  k.w[LTK_SCALE_B] = -1;
  k.w[LTK_AL_A] = k.w[LTK_AL_B] = k.w[LTK_AL_C] = 16;
  return k;
}

static int g_destroyed[1000];
static void destroy(void *p) { g_destroyed[(intptr_t)p]++; }

static void test_cache(void) {
  static DscLtCache c;
  dsc_lt_cache_init(&c);
  DscLtKey k1 = key_of(64, 128, 256);
  CHECK(dsc_lt_cache_find(&c, &k1) == NULL, "empty cache misses");
  CHECK(dsc_lt_cache_insert(&c, &k1, (void *)(intptr_t)1) == NULL, "first insert evicts nothing");
  CHECK(dsc_lt_cache_find(&c, &k1) == (void *)(intptr_t)1, "repeated key hits");
  CHECK(c.hits == 1 && c.misses == 1, "counters: %llu hits %llu misses", (unsigned long long)c.hits,
        (unsigned long long)c.misses);
  /* every word of the key is part of the identity */
  int distinct = 1;
  for (int w = 0; w < DSC_LT_KEY_WORDS; ++w) {
    DscLtKey k2 = k1;
    k2.w[w] += 1;
    distinct &= dsc_lt_cache_find(&c, &k2) == NULL;
    distinct &= !dsc_lt_key_eq(&k1, &k2);
  }
  CHECK(distinct, "a key differing in any word misses");

  /* fill the slots; plans 1..64; touch plan 1 so plan 2 is the oldest */
  for (int i = 2; i <= DSC_LT_SLOTS; ++i) {
    DscLtKey k = key_of(i, 128, 256);
    CHECK(dsc_lt_cache_insert(&c, &k, (void *)(intptr_t)i) == NULL, "insert %d evicts nothing", i);
  }
  CHECK(dsc_lt_cache_find(&c, &k1) == (void *)(intptr_t)1, "plan 1 still there");
  DscLtKey k65 = key_of(65, 128, 256);
  void *ev = dsc_lt_cache_insert(&c, &k65, (void *)(intptr_t)65);
  CHECK(ev == (void *)(intptr_t)2, "the least recently used plan (2) is evicted, got %p", ev);
  DscLtKey k2 = key_of(2, 128, 256);
  CHECK(dsc_lt_cache_find(&c, &k2) == NULL, "evicted key misses");
  CHECK(dsc_lt_cache_find(&c, &k65) == (void *)(intptr_t)65, "new key hits");
  CHECK(dsc_lt_cache_find(&c, &k1) == (void *)(intptr_t)1, "recently used key kept");
  CHECK(c.evictions == 1, "one eviction");
  /* a workload cycling over more shapes than slots keeps the working set bounded */
  int found = 0;
  for (int i = 0; i < 3 * DSC_LT_SLOTS; ++i) {
    DscLtKey k = key_of(1000 + i % (DSC_LT_SLOTS / 2), 7, 9);
    if (dsc_lt_cache_find(&c, &k)) {
      ++found;
    } else {
      void *old = dsc_lt_cache_insert(&c, &k, (void *)(intptr_t)(100 + i % (DSC_LT_SLOTS / 2)));
      if (old) destroy(old);
    }
  }
  CHECK(found == 3 * DSC_LT_SLOTS - DSC_LT_SLOTS / 2, "a working set of half the slots hits after its first pass (%d)", found);
  memset(g_destroyed, 0, sizeof g_destroyed);
  int live = 0;
  for (int i = 0; i < DSC_LT_SLOTS; ++i) live += c.slot[i].last_use != 0;
  dsc_lt_cache_clear(&c, destroy);
  int total = 0, twice = 0;
  for (int i = 0; i < 1000; ++i) {
    total += g_destroyed[i];
    twice += g_destroyed[i] > 1;
  }
  CHECK(live == DSC_LT_SLOTS && total == live && twice == 0, "clear destroys each stored plan once (%d of %d)",
        total, live);
  CHECK(dsc_lt_cache_find(&c, &k1) == NULL, "cleared cache misses");
}

/* A dense float32 problem as gemm.cu fills it (values of the cuBLASLt enums: 68
 * CUBLAS_COMPUTE_32F, 75 CUBLAS_COMPUTE_32F_FAST_16BF, 0 CUDA_R_32F, 14 CUDA_R_16BF). */
static DscLtProblem dense_problem(int fp32, int32_t ctx_mode) {
  DscLtProblem p = {};
  p.math_mode = dsc_lt_dense_math(fp32, ctx_mode);
  p.compute = p.math_mode ? 75 : 68;
  p.opa = 1;
  p.opb = 0;
  p.ta = p.tb = fp32 ? 0 : 14;
  p.tc = 0;
  p.m = 512;
  p.n = 64;
  p.k = 256;
  p.lda = p.ldb = 256;
  p.ldc = 512;
  p.batch = 1;
  p.scale_a = p.scale_b = -1;
  p.al_a = p.al_b = p.al_c = 16;
  p.ws_bytes = (size_t)32 << 20;
  return p;
}

/* The math mode is part of a dense float32 problem's key (a plan made for exact float32
 * is never reused for BF16 operands, nor the reverse); BF16 operands share one plan. */
static void test_math_mode_key(void) {
  CHECK(dsc_lt_dense_math(1, 0) == 0 && dsc_lt_dense_math(1, 1) == 1, "float32 operands follow the mode");
  CHECK(dsc_lt_dense_math(0, 0) == 0 && dsc_lt_dense_math(0, 1) == 0, "bf16 operands: one mode");
  DscLtProblem exact = dense_problem(1, 0), fast = dense_problem(1, 1);
  DscLtKey ke = dsc_lt_make_key(exact, 1), kf = dsc_lt_make_key(fast, 1);
  CHECK(ke.w[LTK_MATH] == 0 && kf.w[LTK_MATH] == 1, "math word %lld / %lld", (long long)ke.w[LTK_MATH],
        (long long)kf.w[LTK_MATH]);
  CHECK(!dsc_lt_key_eq(&ke, &kf) && dsc_lt_key_hash(&ke) != dsc_lt_key_hash(&kf), "keys differ by mode");
  /* the mode alone (same compute type) still separates the keys */
  DscLtProblem only_mode = exact;
  only_mode.math_mode = 1;
  DscLtKey km = dsc_lt_make_key(only_mode, 1);
  CHECK(!dsc_lt_key_eq(&ke, &km), "the math word alone separates keys");
  static DscLtCache c;
  dsc_lt_cache_init(&c);
  dsc_lt_cache_insert(&c, &ke, (void *)(intptr_t)1);
  CHECK(dsc_lt_cache_find(&c, &kf) == NULL, "a BF16-operand problem misses the exact plan");
  dsc_lt_cache_insert(&c, &kf, (void *)(intptr_t)2);
  CHECK(dsc_lt_cache_find(&c, &ke) == (void *)(intptr_t)1 && dsc_lt_cache_find(&c, &kf) == (void *)(intptr_t)2,
        "each mode finds its own plan");
  DscLtProblem b0 = dense_problem(0, 0), b1 = dense_problem(0, 1);
  DscLtKey kb0 = dsc_lt_make_key(b0, 1), kb1 = dsc_lt_make_key(b1, 1);
  CHECK(dsc_lt_key_eq(&kb0, &kb1), "bf16 operands: the same key in both modes");
  /* every field reaches the key: same problem, same key; a changed field, another key */
  DscLtKey again = dsc_lt_make_key(dense_problem(1, 0), 1);
  CHECK(dsc_lt_key_eq(&ke, &again), "the key is a function of the problem");
  DscLtProblem v = exact;
  v.k = 257;
  DscLtKey kk = dsc_lt_make_key(v, 1);
  CHECK(!dsc_lt_key_eq(&ke, &kk) && kk.w[LTK_K] == 257, "k reaches the key");
  DscLtKey kep = dsc_lt_make_key(exact, 2);
  CHECK(!dsc_lt_key_eq(&ke, &kep), "the epilogue reaches the key");
  v = exact;
  v.scale_a = 4;
  CHECK(dsc_lt_make_key(v, 1).w[LTK_KIND] == 2 && ke.w[LTK_KIND] == 1, "scale modes make an fp8 key");
}

static void test_fp8_rules(void) {
  const int CV = 12090;
  const int64_t LV = 120900;
  CHECK(dsc_lt_fp8_block_rule(CV, LV, 9, 4096, 7168, 16384, 1, 128, 0, 0, 1, 1) == NULL,
        "DeepSeek's shape qualifies");
  CHECK(dsc_lt_fp8_block_rule(13000, 130000, 9, 4, 16, 128, 128, 1, 0, 1, 1, 1) == NULL,
        "128x128 a, 1x128 b, one E5M2");
  struct {
    int cv;
    int64_t lv;
    int major;
    int64_t M, N, K, abr, bbr;
    int ae5, be5, al, work;
    const char *part;
  } bad[] = {
      {12080, LV, 9, 64, 64, 128, 1, 128, 0, 0, 1, 1, "CUDA < 12.9"},
      {CV, 120800, 9, 64, 64, 128, 1, 128, 0, 0, 1, 1, "older than 12.9"},
      {CV, LV, 8, 64, 64, 128, 1, 128, 0, 0, 1, 1, "Hopper"},
      {CV, LV, 10, 64, 64, 128, 1, 128, 0, 0, 1, 1, "Hopper"},
      {CV, LV, 9, 64, 64, 128, 1, 128, 0, 0, 1, 0, "work"},
      {CV, LV, 9, 64, 64, 128, 1, 128, 0, 0, 0, 1, "aligned"},
      {CV, LV, 9, 64, 64, 128, 64, 128, 0, 0, 1, 1, "neither"},
      {CV, LV, 9, 64, 64, 128, 128, 128, 0, 0, 1, 1, "both operands"},
      {CV, LV, 9, 64, 64, 128, 1, 128, 1, 1, 1, 1, "E5M2"},
      {CV, LV, 9, 64, 64, 192, 1, 128, 0, 0, 1, 1, "K"},
      {CV, LV, 9, 64, 64, 0, 1, 128, 0, 0, 1, 1, "K"},
      {CV, LV, 9, 66, 64, 128, 1, 128, 0, 0, 1, 1, "M"},
      {CV, LV, 9, 64, 72, 128, 1, 128, 0, 0, 1, 1, "N"},
      {CV, LV, 9, (int64_t)1 << 32, 64, 128, 1, 128, 0, 0, 1, 1, "int32"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
    const char *why = dsc_lt_fp8_block_rule(bad[i].cv, bad[i].lv, bad[i].major, bad[i].M, bad[i].N, bad[i].K,
                                            bad[i].abr, bad[i].bbr, bad[i].ae5, bad[i].be5, bad[i].al,
                                            bad[i].work);
    CHECK(why && strstr(why, bad[i].part), "rule %zu: expected a reason with '%s', got '%s'", i, bad[i].part,
          why ? why : "(none)");
  }
}

int main(void) {
  test_cache();
  test_math_mode_key();
  test_fp8_rules();
  printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}
