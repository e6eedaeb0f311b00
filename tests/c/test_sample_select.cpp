/*
 * test_sample_select.cpp -- the sampling kernel's top_k / top_p threshold searches
 * (kernels/sample_select.cuh, compiled here as plain C++) driven exactly as
 * kernels/sample.cu drives them, with the block reductions replaced by loops, against the
 * CPU's rule (a sort by probability descending, id ascending; cpu/sample.c). Probabilities
 * are dyadic (k / 1024, many ties, zeros), so every sum is exact in any order and the kept
 * sets must be equal element for element: top_k alone, top_p alone, both, k at and past the
 * number of positive entries, top_p near 0 and 1.
 * Build: g++ -std=c++17 -O1 -Icsrc/core -Ikernels -Icsrc/include -Itests/c
 * tests/c/test_sample_select.cpp (tests/test_sample.py does this). Closing line:
 * "N passed, N failed".
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "sample_select.cuh"

#include "check.h"

static uint64_t g_rng = 0x243F6A8885A308D3ull;
static uint64_t next_u64() {
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return g_rng;
}
static int64_t below(int64_t n) { return (int64_t)(next_u64() % (uint64_t)n); }

static uint64_t bits(double p) {
  uint64_t b;
  memcpy(&b, &p, sizeof b);
  return b;
}

/* The CPU rule: which ids keep their probability. */
static std::vector<char> rule(const std::vector<double> &p, int32_t top_k, float top_p) {
  const int64_t V = (int64_t)p.size();
  std::vector<int64_t> order;
  for (int64_t v = 0; v < V; ++v)
    if (p[v] > 0.0) order.push_back(v);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
  const int64_t n = (int64_t)order.size();
  int64_t keep = top_k > 0 && top_k < n ? top_k : n;
  if (top_p < 1.0f) {
    double tot = 0.0;
    for (int64_t i = 0; i < keep; ++i) tot += p[order[i]];
    const double target = (double)top_p * tot;
    double cum = 0.0;
    int64_t i = 0;
    while (i < keep) {
      cum += p[order[i++]];
      if (cum >= target) break;
    }
    keep = i;
  }
  std::vector<char> k(V, 0);
  for (int64_t i = 0; i < keep; ++i) k[order[i]] = 1;
  return k;
}

/* The kernel's steps 3-4 with loops for the block reductions. */
static std::vector<char> searched(const std::vector<double> &p, int32_t top_k, float top_p) {
  const int64_t V = (int64_t)p.size();
  long long n = 0;
  for (double x : p) n += x > 0.0;
  int use_k = 0;
  uint64_t tk = 0;
  int64_t ik = 0;
  if (top_k > 0 && top_k < n) {
    tk = ss_threshold_bits(
        [&](uint64_t cand) {
          long long c = 0;
          for (int64_t v = 0; v < V; ++v) c += bits(p[v]) >= cand;
          return c;
        },
        (long long)top_k);
    long long gt = 0;
    for (int64_t v = 0; v < V; ++v) gt += bits(p[v]) > tk;
    ik = ss_tie_cut(
        [&](int64_t cand) {
          long long c = 0;
          for (int64_t v = 0; v < V && v < cand; ++v) c += bits(p[v]) == tk;
          return c;
        },
        0LL, (long long)top_k - gt);
    use_k = 1;
  }
  auto kept = [&](uint64_t b, int64_t v) { return b != 0 && (!use_k || ss_inside(b, v, tk, ik)); };
  uint64_t tp = 0;
  int64_t ip = INT64_MAX;
  if (top_p < 1.0f) {
    auto mass_ge = [&](uint64_t cand) {
      double c = 0.0;
      for (int64_t v = 0; v < V; ++v)
        if (kept(bits(p[v]), v) && bits(p[v]) >= cand) c += p[v];
      return c;
    };
    const double target = (double)top_p * mass_ge(1);
    tp = ss_threshold_bits(mass_ge, target);
    double above = 0.0;
    for (int64_t v = 0; v < V; ++v)
      if (kept(bits(p[v]), v) && bits(p[v]) > tp) above += p[v];
    ip = ss_tie_cut(
        [&](int64_t cand) {
          double c = 0.0;
          for (int64_t v = 0; v < V && v < cand; ++v)
            if (kept(bits(p[v]), v) && bits(p[v]) == tp) c += p[v];
          return c;
        },
        above, target);
  }
  std::vector<char> k(V, 0);
  for (int64_t v = 0; v < V; ++v) k[v] = kept(bits(p[v]), v) && (top_p >= 1.0f || ss_inside(bits(p[v]), v, tp, ip));
  return k;
}

int main() {
  static const float tps[] = {0.01f, 0.1f, 0.3f, 0.5f, 0.77f, 0.9f, 0.999f, 1.0f};
  int cases = 0;
  for (int it = 0; it < 3000; ++it) {
    const int64_t V = 1 + below(it < 2000 ? 40 : 400);
    const int64_t levels = 1 + below(8); /* few distinct values: many ties */
    std::vector<double> p((size_t)V);
    for (int64_t v = 0; v < V; ++v) p[v] = below(4) == 0 ? 0.0 : (double)(1 + below(levels) * 37) / 1024.0;
    long long n = 0;
    for (double x : p) n += x > 0.0;
    if (n == 0) continue; /* the kernel returns -1 before searching */
    const int32_t k = below(3) == 0 ? 0 : (int32_t)below(n + 2);
    const float tp = tps[below(8)];
    const std::vector<char> want = rule(p, k, tp), got = searched(p, k, tp);
    CHECK(want == got, "V=%lld k=%d top_p=%g: kept sets differ", (long long)V, (int)k, (double)tp);
    ++cases;
  }
  printf("%d cases\n", cases);
  printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}
