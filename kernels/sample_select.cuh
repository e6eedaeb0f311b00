/*
 * kernels/sample_select.cuh -- the threshold searches of the sampling kernel
 * (kernels/sample.cu) that replace a sort for top_k and top_p, as C++ templates the kernel
 * calls with block reductions and tests/c/test_sample_select.cpp runs on the CPU with plain
 * loops (against a sort).
 *
 * Order of the elements: probability p descending, then id ascending (the CPU's sort). For
 * p > 0 the IEEE bits of a double order like its value, so a threshold on the value is a
 * threshold on a uint64 found bit by bit (64 questions), and a cut among equal values a
 * threshold on the id (31 questions, ids < 2^31). The callables answer the questions:
 *   ge(t)         elements kept so far with bits >= t (a count, or a mass)
 *   tie_below(x)  elements kept so far with bits == the threshold and id < x
 * Every question is asked the same way by every thread (block-uniform answers).
 */
#ifndef DSC_KERNELS_SAMPLE_SELECT_CUH_
#define DSC_KERNELS_SAMPLE_SELECT_CUH_

#include <stdint.h>

#if defined(__CUDACC__)
#define SS_HD __host__ __device__ __forceinline__
#else
#define SS_HD inline
#endif

/* The largest t with ge(t) >= want (ge non-increasing in t, ge(0) >= want): for counts and
 * want = k, the bits of the k-th largest value; for masses and want = top_p * total, the
 * value at which the running mass in the order first reaches the target. */
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename T, typename Ge>
SS_HD uint64_t ss_threshold_bits(Ge ge, T want) {
  uint64_t t = 0;
  for (int bit = 63; bit >= 0; --bit) {
    const uint64_t cand = t | ((uint64_t)1 << bit);
    if (ge(cand) >= want) t = cand;
  }
  return t;
}

/* The largest id bound x with base + tie_below(x) < want (tie_below non-decreasing in x):
 * the id of the tie whose inclusion reaches want, so the ties kept are those with id <= x.
 * Counts: base 0, want = k - (elements above the threshold). Masses: base = the mass above
 * the threshold, want = the target. */
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename T, typename Below>
SS_HD int64_t ss_tie_cut(Below tie_below, T base, T want) {
  int64_t x = 0;
  for (int bit = 30; bit >= 0; --bit) {
    const int64_t cand = x | ((int64_t)1 << bit);
    if (base + tie_below(cand) < want) x = cand;
  }
  return x;
}

/* Element (bits b, id v) is inside the cut (t, x): above t, or at t with id <= x. */
SS_HD bool ss_inside(uint64_t b, int64_t v, uint64_t t, int64_t x) { return b > t || (b == t && v <= x); }

#endif /* DSC_KERNELS_SAMPLE_SELECT_CUH_ */
