/*
 * cpu/gemm.c -- row-major GEMM on the CPU through CBLAS (scipy-openblas32, whose symbols
 * carry the scipy_ prefix). The reference for the cuBLASLt path in kernels/gemm.cu.
 *
 * Legend: M rows of C, N columns of C, K the inner dim; Bt the batch (`batch`).
 *   op(A) [M,K] is A stored [M,K] (lda >= K), or A stored [K,M] (lda >= M) with trans_a;
 *   op(B) [K,N] is B stored [K,N] (ldb >= N), or B stored [N,K] (ldb >= K) with trans_b;
 *   C [M,N] (ldc >= N).  lda/ldb/ldc are row strides, sA/sB/sC batch strides, in elements.
 *
 *   C = alpha * op(A) @ op(B) + beta * C, accumulated in float32 by sgemm.
 *   float32: sgemm straight on the caller's memory.
 *   bfloat16: A and B are widened exactly to float32 in the workspace, sgemm writes a
 *   float32 C (widened from C first when beta != 0), which is rounded once to bf16.
 *   beta == 0 overwrites C (a NaN in C does not leak), as BLAS specifies.
 *
 * BLAS integers (blasint) are 32-bit here: dims and strides >= 2^31 are UNSUPPORTED.
 * Threads: OpenBLAS is always called single-threaded (one thread pool: ours); a large product
 * is split into row (or column) blocks that depend on its shape only, each block one
 * single-threaded sgemm, run over the context's OpenMP team: results are bitwise the same
 * for a given CPU and build whatever the thread count (the demo's accuracy and a resumed
 * run do not depend on OMP_NUM_THREADS).
 *
 * Small M (decode: 1..SMALL_M_MAX tokens; any M in generation's decode steps) with
 * op(A) = A: sgemm would re-pack the whole weight B for every call (sgemm_incopy was ~40%
 * of decode time), so these GEMMs are computed here directly instead (see small_gemm
 * below), bitwise independent of M and of the thread count.  The AVX2 kernels are chosen
 * at run time (ctx->cpu_avx2; DSC_CPU_ISA=generic forces the portable ones) and give the
 * portable kernels' bits.
 */
#include <cblas.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define SMALL_AVX2 1 /* the AVX2 small-M kernels below exist (used when ctx->cpu_avx2) */
#endif

#include "cpu_common.h"

static const char *const FN_GEMM = "dsc_cpu_gemm";

void dsc_cpu_blas_serial(void) {
  if (scipy_openblas_get_num_threads() != 1) scipy_openblas_set_num_threads(1);
}

void dsc_cpu_sgemm_raw(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                       const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                       float *C, int64_t ldc) {
  scipy_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, (blasint)M, (blasint)N, (blasint)K,
                    alpha, A, (blasint)lda, B, (blasint)ldb, beta, C, (blasint)ldc);
}

/* All of a BLAS call's integers must fit in the 32-bit blasint. */
static dsc_status check_blasint(const char *fn, int64_t M, int64_t N, int64_t K, int64_t lda,
                                int64_t ldb, int64_t ldc) {
  const int64_t lim = INT32_MAX;
  if (M > lim || N > lim || K > lim || lda > lim || ldb > lim || ldc > lim)
    return dsc_error(DSC_ERR_UNSUPPORTED, fn,
                     "M, N, K, lda, ldb, ldc: expected values < 2^31 (32-bit BLAS), got %lld, "
                     "%lld, %lld, %lld, %lld, %lld",
                     (long long)M, (long long)N, (long long)K, (long long)lda, (long long)ldb,
                     (long long)ldc);
  return DSC_OK;
}

/* dst[r, c] = (float)src[r, c] for a rows x cols block; src has row stride ld (elements),
 * dst is packed (row stride cols). */
static void widen(const dsc_context *ctx, dsc_dtype dt, int64_t rows, int64_t cols,
                  const void *src /* [rows, ld] dt */, int64_t ld,
                  float *dst /* [rows, cols] */) {
  (void)ctx; /* read only by the OpenMP pragmas */
  const int64_t es = dsc_cpu_esize(dt);
  DSC_CPU_FOR(rows * cols >= DSC_CPU_PAR_MIN, ctx->num_threads, r, rows,
    const void *s = (const char *)src + r * ld * es; /* [cols] */
    for (int64_t c = 0; c < cols; ++c) dst[r * cols + c] = dsc_cpu_ld(dt, s, c);
  );
}

/* dst[r, c] = round(src[r, c]); src packed float32, dst with row stride ld. */
static void narrow(const dsc_context *ctx, dsc_dtype dt, int64_t rows, int64_t cols,
                   const float *src /* [rows, cols] */, void *dst /* [rows, ld] dt */,
                   int64_t ld) {
  (void)ctx; /* read only by the OpenMP pragmas */
  const int64_t es = dsc_cpu_esize(dt);
  DSC_CPU_FOR(rows * cols >= DSC_CPU_PAR_MIN, ctx->num_threads, r, rows,
    void *d = (char *)dst + r * ld * es; /* [cols] */
    for (int64_t c = 0; c < cols; ++c) dsc_cpu_st(dt, d, c, src[r * cols + c]);
  );
}

/* C = beta * C for a K == 0 product (BLAS would reject lda = 0); beta == 0 writes zeros. */
static void scale_c(dsc_dtype dt, int64_t M, int64_t N, float beta, void *C /* [M, ldc] dt */,
                    int64_t ldc) {
  const int64_t es = dsc_cpu_esize(dt);
  for (int64_t r = 0; r < M; ++r) {
    void *c = (char *)C + r * ldc * es; /* [N] */
    for (int64_t j = 0; j < N; ++j)
      dsc_cpu_st(dt, c, j, beta == 0.0f ? 0.0f : beta * dsc_cpu_ld(dt, c, j));
  }
}

/* ---- small-M float32 GEMM -------------------------------------------------------------
 *
 * C [M,N] = alpha * A [M,K] @ op(B) + beta * C for M <= SMALL_M_MAX rows (any M in the
 * row-invariant mode of generation, see sgemm), A not transposed (decode: one row per token).  sgemm would first
 * re-pack all of B, the weight, which costs more than the product itself at these M; here
 * every C element is computed straight from the caller's memory:
 *   trans_b (y = x @ w^T, w [N,K] row-major: the linear layer): C[m,n] is the dot product
 *     of A row m and B row n, both contiguous.  It is accumulated in SMALL_LANES = 8
 *     float32 partial sums, lane j adding the products k = j, j + 8, j + 16, ... in
 *     increasing k (the K % 8 last products come from zero-padded copies), and the lanes
 *     are then added in one fixed tree (lanes_sum).
 *   no trans_b (B [K,N], only while B is at most SMALL_NN_MAX_B floats; a larger one goes
 *     to sgemm, which streams it better): C[m,n] is summed over k in increasing order,
 *     8 columns per vector.
 *   Then C = alpha * sum, + beta * C when beta != 0 (C is not read when beta == 0, and
 *   alpha == 0 gives beta * C without reading A and B, as in BLAS).  Accumulation is
 *   float32, as in sgemm; the last bits differ from sgemm's (another summation order).
 *   The inner loops are written on `lanes` (below) so that gcc -O3 keeps the
 *   accumulators in vector registers; on x86 with AVX2 (ctx->cpu_avx2) the same float
 *   operations run in AVX2 kernels instead (see "AVX2 small-M kernels"), which read B once
 *   for 3 rows of A and give the same bits.
 *   op(A) transposed (A stored [K, M]) is not a decode shape: it stays with sgemm.
 *
 * Determinism: the float operations that produce C[m,n] depend only on A row m, B row
 * (trans_b) or column n, and K -- never on M, on which register tile (portable: 1 or 2 rows
 * of A, 1, 2 or 4 rows of B; AVX2: 1 to 3 rows of A, 1 or 4 rows of B) or column block the
 * element falls in, nor on the OpenMP thread that computes it (threads split N, never K),
 * nor on the kernels' ISA.  So a row of C is bitwise the same whether it is computed alone
 * (decoding one token) or with others (verifying draft tokens, a batch of prompts), for
 * every M the small kernels take, and every ctx->num_threads; and DSC_CPU_ISA=generic
 * gives the AVX2 kernels' bits.  This relies on the compiler not
 * contracting x * y + acc into an FMA in one tile and not in another: gcc does not
 * contract at all under -std=c11 (the build's flag), clang contracts each statement alike
 * in every portable tile (but not across the AVX2 kernels' intrinsics: a clang build whose
 * target has FMA gives other bits with DSC_CPU_ISA=generic).
 *
 * Thresholds, measured on the 2-core AMD EPYC (Zen 5) build machine against
 * scipy-openblas32 0.3.x (AVX-512 kernels), one thread, shapes N x K from 64x32 to
 * 32000x512.  Portable kernels, default (SSE2) code generation: trans_b M = 1: 1.3-4.9x
 * faster than sgemm, M = 2: 1.2-2.4x, M = 3: 1.2-2.4x, M = 4: 0.87-1.08x, M = 8: 0.3-0.7x;
 * no trans_b M = 1..3: 1.0-2.4x (0.9x at 64x32, a few microseconds either way), M = 4:
 * 0.5-1.1x.  Hence SMALL_M_MAX = 3: beyond it OpenBLAS's wider kernels win once its packing
 * is shared by 4 rows.  AVX2 kernels (trans_b 23-35 GMAC/s at M = 1 with B in L2 or L3,
 * 45-56 at M = 3; the portable ones 18-23): trans_b M = 1..3: 2.3-7.9x faster than
 * sgemm, M = 4: 1.7-2.8x, M = 8: 1.05-2.0x, M = 16: 1.0-1.4x; no trans_b M = 1..3:
 * 1.7-5.6x, M = 4: 0.86-2.3x, M = 8: 0.92-1.7x, M = 12: 0.86-1.4x.  Hence
 * SMALL_M_MAX_AVX2 = 8 rows per no-trans_b chunk in the row-invariant mode (a C program
 * timing dsc_linear_forward and dsc_matmul against scipy_cblas_sgemm on the same operands,
 * best of 7 runs of >= 20 ms each).  Two threads
 * (OMP_NUM_THREADS=2), AVX2 kernels: under OMP_WAIT_POLICY=PASSIVE (the Python package's
 * default) every parallel region wakes the team, ~40 us here, and two threads break even
 * at ~2^21 multiply-adds (2^22: 0.87x with B in L2 at 1024x512 M = 8, 1.8x with B from L3
 * at 4096x1024 M = 1); batch-8 decode of the demo model (M = 8 rows of 384x128: 2^18.6)
 * ran 32-40k tok/s with SMALL_PAR_MIN = 2^18 against 42-43k with 2^21 (bench_decode.py
 * --batches 8).  libgomp's default (spinning) policy pays off from ~2^16 (1.2-1.6x at
 * 2^17).  Hence SMALL_PAR_MIN = 2^21 multiply-adds, as for the portable kernels. */
/* Products split over the OpenMP team (sgemm below): at least this many multiply-adds (a
 * parallel region costs ~40 us to wake under OMP_WAIT_POLICY=PASSIVE, ~2^21 multiply-adds of
 * single-threaded sgemm here), in chunks of a multiple of SPLIT_ALIGN rows or columns. */
#define SPLIT_MIN_MACS 4194304.0
#define SPLIT_ALIGN 16
#define SPLIT_BLOCK 64       /* fewest rows (columns) of a block */
#define SPLIT_MAX_BLOCKS 8   /* most blocks of one product (enough for up to 8 threads) */

#define SMALL_M_MAX 3      /* most rows of A for the portable kernels */
#define SMALL_M_MAX_AVX2 8 /* rows of an AVX2 no-trans_b chunk (row-invariant mode) */
#define SMALL_LANES 8
#define SMALL_NB 256                       /* columns of C per OpenMP work item */
#define SMALL_PAR_MIN ((int64_t)1 << 21)   /* multiply-adds worth a parallel region */
#define SMALL_NN_MAX_B ((int64_t)1 << 22)  /* floats of a [K, N] B (16 MiB) */

/* `lanes`: SMALL_LANES float32 partial sums.  With gcc/clang a generic vector (the compiler
 * splits it into the registers the target has); elsewhere a struct of floats.  Both do the
 * same lane-wise float operations, so give the same results.  Tiles keep their
 * accumulators in named variables: gcc leaves arrays of them in memory. */
#if defined(__GNUC__) && !defined(DSC_GEMM_PORTABLE)
typedef float lanes4 __attribute__((vector_size(4 * sizeof(float))));
typedef struct {
  lanes4 lo, hi; /* lanes 0-3, 4-7 */
} lanes;
static inline lanes lanes_zero(void) {
  const lanes4 z = {0.0f, 0.0f, 0.0f, 0.0f};
  return (lanes){z, z};
}
static inline lanes lanes_madd(lanes acc, lanes x, lanes y) {
  return (lanes){acc.lo + x.lo * y.lo, acc.hi + x.hi * y.hi};
}
static inline lanes lanes_smadd(lanes acc, float s, lanes y) {
  const lanes4 sv = {s, s, s, s};
  return (lanes){acc.lo + sv * y.lo, acc.hi + sv * y.hi};
}
#else
typedef struct {
  float v[SMALL_LANES];
} lanes;
static inline lanes lanes_zero(void) {
  lanes v;
  for (int j = 0; j < SMALL_LANES; ++j) v.v[j] = 0.0f;
  return v;
}
static inline lanes lanes_madd(lanes acc, lanes x, lanes y) {
  for (int j = 0; j < SMALL_LANES; ++j) acc.v[j] += x.v[j] * y.v[j];
  return acc;
}
static inline lanes lanes_smadd(lanes acc, float s, lanes y) {
  for (int j = 0; j < SMALL_LANES; ++j) acc.v[j] += s * y.v[j];
  return acc;
}
#endif
static inline lanes lanes_load(const float *p) {
  lanes v;
#if defined(__GNUC__) && !defined(DSC_GEMM_PORTABLE)
  memcpy(&v.lo, p, sizeof v.lo);
  memcpy(&v.hi, p + 4, sizeof v.hi);
#else
  memcpy(&v, p, sizeof v);
#endif
  return v;
}
/* p[0 .. n-1] (n <= SMALL_LANES), zero-padded. */
static inline lanes lanes_load_part(const float *p, int64_t n) {
  float t[SMALL_LANES] = {0.0f};
  memcpy(t, p, (size_t)n * sizeof(float));
  return lanes_load(t);
}
/* The lanes' total, in a fixed tree. */
static inline float lanes_sum(lanes v) {
  float a[SMALL_LANES];
  memcpy(a, &v, sizeof a);
  return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

/* Dot-product tiles for trans_b: o[r * RN + c] = A row r . B row c over K, for RM rows of A
 * (a0, a1) and RN rows of B (b0 .. b3).  Lane j sums the products k = j, j + 8, ... in
 * increasing k; the K % 8 last ones are read from zero-padded copies (lanes_load_part).
 * NT_STEP is one k-chunk; LD(p) loads 8 floats at p. */
#define NT_STEP_1x1(LD) c00 = lanes_madd(c00, LD(a0), LD(b0))
#define NT_STEP_2x1(LD)                                                                       \
  do {                                                                                        \
    const lanes y0 = LD(b0);                                                                  \
    c00 = lanes_madd(c00, LD(a0), y0);                                                        \
    c10 = lanes_madd(c10, LD(a1), y0);                                                        \
  } while (0)
#define NT_STEP_1x4(LD)                                                                       \
  do {                                                                                        \
    const lanes x0 = LD(a0);                                                                  \
    c00 = lanes_madd(c00, x0, LD(b0));                                                        \
    c01 = lanes_madd(c01, x0, LD(b1));                                                        \
    c02 = lanes_madd(c02, x0, LD(b2));                                                        \
    c03 = lanes_madd(c03, x0, LD(b3));                                                        \
  } while (0)
#define NT_STEP_2x2(LD)                                                                       \
  do {                                                                                        \
    const lanes x0 = LD(a0), x1 = LD(a1), y0 = LD(b0), y1 = LD(b1);                          \
    c00 = lanes_madd(c00, x0, y0);                                                            \
    c01 = lanes_madd(c01, x0, y1);                                                            \
    c10 = lanes_madd(c10, x1, y0);                                                            \
    c11 = lanes_madd(c11, x1, y1);                                                            \
  } while (0)
/* The k loop of a tile: full chunks, then the zero-padded tail. */
#define NT_LOOP(STEP)                                                                         \
  do {                                                                                        \
    int64_t k = 0;                                                                            \
    for (; k + SMALL_LANES <= K; k += SMALL_LANES) {                                          \
      STEP(NT_LD_FULL);                                                                       \
    }                                                                                         \
    if (k < K) STEP(NT_LD_PART);                                                              \
  } while (0)
#define NT_LD_FULL(p) lanes_load((p) + k)
#define NT_LD_PART(p) lanes_load_part((p) + k, K - k)

static void nt_1x1(int64_t K, const float *a0, const float *b0, float *o) {
  lanes c00 = lanes_zero();
  NT_LOOP(NT_STEP_1x1);
  o[0] = lanes_sum(c00);
}
static void nt_2x1(int64_t K, const float *a0, const float *a1, const float *b0, float *o) {
  lanes c00 = lanes_zero(), c10 = c00;
  NT_LOOP(NT_STEP_2x1);
  o[0] = lanes_sum(c00);
  o[1] = lanes_sum(c10);
}
static void nt_1x4(int64_t K, const float *a0, const float *b0, const float *b1,
                   const float *b2, const float *b3, float *o) {
  lanes c00 = lanes_zero(), c01 = c00, c02 = c00, c03 = c00;
  NT_LOOP(NT_STEP_1x4);
  o[0] = lanes_sum(c00);
  o[1] = lanes_sum(c01);
  o[2] = lanes_sum(c02);
  o[3] = lanes_sum(c03);
}
static void nt_2x2(int64_t K, const float *a0, const float *a1, const float *b0,
                   const float *b1, float *o) {
  lanes c00 = lanes_zero(), c01 = c00, c10 = c00, c11 = c00;
  NT_LOOP(NT_STEP_2x2);
  o[0] = lanes_sum(c00);
  o[1] = lanes_sum(c01);
  o[2] = lanes_sum(c10);
  o[3] = lanes_sum(c11);
}
#undef NT_STEP_1x1
#undef NT_STEP_2x1
#undef NT_STEP_1x4
#undef NT_STEP_2x2
#undef NT_LOOP
#undef NT_LD_FULL
#undef NT_LD_PART

/* C[m, n] = alpha * s + beta * C[m, n] (C not read when beta == 0). */
static inline void small_store(float *c, float s, float alpha, float beta) {
  *c = beta == 0.0f ? alpha * s : alpha * s + beta * *c;
}

/* Columns [n0, n1) of C = alpha * A @ B^T + beta * C, B stored [N, K]: 4 columns (B rows,
 * kept hot in L1) at a time against every row of A, 2 rows per tile. */
static void small_nt_cols(int64_t M, int64_t n0, int64_t n1, int64_t K, float alpha,
                          const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                          float *C, int64_t ldc) {
  float o[4];
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    const float *b = B + n * ldb;
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) {
      const float *a = A + m * lda;
      float *c = C + m * ldc + n;
      for (int h = 0; h < 4; h += 2) {
        nt_2x2(K, a, a + lda, b + h * ldb, b + (h + 1) * ldb, o);
        small_store(c + h, o[0], alpha, beta);
        small_store(c + h + 1, o[1], alpha, beta);
        small_store(c + ldc + h, o[2], alpha, beta);
        small_store(c + ldc + h + 1, o[3], alpha, beta);
      }
    }
    if (m < M) {
      nt_1x4(K, A + m * lda, b, b + ldb, b + 2 * ldb, b + 3 * ldb, o);
      for (int c = 0; c < 4; ++c) small_store(C + m * ldc + n + c, o[c], alpha, beta);
    }
  }
  for (; n < n1; ++n) {
    const float *b = B + n * ldb;
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) {
      nt_2x1(K, A + m * lda, A + (m + 1) * lda, b, o);
      small_store(C + m * ldc + n, o[0], alpha, beta);
      small_store(C + (m + 1) * ldc + n, o[1], alpha, beta);
    }
    if (m < M) {
      nt_1x1(K, A + m * lda, b, o);
      small_store(C + m * ldc + n, o[0], alpha, beta);
    }
  }
}

/* No trans_b, B stored [K, N]: adds A[r, k] * B[k, j] for k in [k0, k1), in increasing k,
 * to acc[r * SMALL_NB + j] for RM = 1 or 2 rows r and w <= 2 * SMALL_LANES columns j; a
 * full strip in registers, a partial one in place. */
static void nn_strip(int RM, int64_t k0, int64_t k1, int64_t w, const float *A, int64_t lda,
                     const float *B, int64_t ldb, float *acc) {
  const float *a0 = A, *a1 = A + (RM == 2 ? lda : 0);
  if (w < 2 * SMALL_LANES) {
    for (int r = 0; r < RM; ++r) {
      const float *a = r ? a1 : a0;
      float *c = acc + r * SMALL_NB;
      for (int64_t k = k0; k < k1; ++k)
        for (int64_t j = 0; j < w; ++j) c[j] += a[k] * B[k * ldb + j];
    }
    return;
  }
  float *d0 = acc, *d1 = acc + (RM == 2 ? SMALL_NB : 0);
  lanes c00 = lanes_load(d0), c01 = lanes_load(d0 + SMALL_LANES);
  lanes c10 = lanes_load(d1), c11 = lanes_load(d1 + SMALL_LANES);
  for (int64_t k = k0; k < k1; ++k) {
    const lanes y0 = lanes_load(B + k * ldb), y1 = lanes_load(B + k * ldb + SMALL_LANES);
    c00 = lanes_smadd(c00, a0[k], y0);
    c01 = lanes_smadd(c01, a0[k], y1);
    c10 = lanes_smadd(c10, a1[k], y0); /* RM == 1: a duplicate of row 0, not stored */
    c11 = lanes_smadd(c11, a1[k], y1);
  }
  memcpy(d0, &c00, sizeof c00);
  memcpy(d0 + SMALL_LANES, &c01, sizeof c01);
  if (RM == 2) {
    memcpy(d1, &c10, sizeof c10);
    memcpy(d1 + SMALL_LANES, &c11, sizeof c11);
  }
}

/* Columns [n0, n1) (n1 - n0 <= SMALL_NB) of C = alpha * A @ B + beta * C, B stored [K, N]:
 * every C element is a sum over k in increasing order, kept in acc between blocks of
 * SMALL_NN_KB values of k (so a block's B rows are read from memory once, then from cache,
 * strip after strip). */
#define SMALL_NN_KB 64
static void small_nn_cols(int64_t M, int64_t n0, int64_t n1, int64_t K, float alpha,
                          const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                          float *C, int64_t ldc) {
  float acc[SMALL_M_MAX * SMALL_NB];
  const int64_t w = n1 - n0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < w; ++j) acc[m * SMALL_NB + j] = 0.0f;
  for (int64_t k0 = 0; k0 < K; k0 += SMALL_NN_KB) {
    const int64_t k1 = K - k0 < SMALL_NN_KB ? K : k0 + SMALL_NN_KB;
    for (int64_t j = 0; j < w; j += 2 * SMALL_LANES) {
      const int64_t sw = w - j < 2 * SMALL_LANES ? w - j : 2 * SMALL_LANES;
      for (int64_t m = 0; m < M; m += 2)
        nn_strip(M - m >= 2 ? 2 : 1, k0, k1, sw, A + m * lda, lda, B + n0 + j, ldb,
                 acc + m * SMALL_NB + j);
    }
  }
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < w; ++j)
      small_store(C + m * ldc + n0 + j, acc[m * SMALL_NB + j], alpha, beta);
}

#ifdef SMALL_AVX2
/* ---- AVX2 small-M kernels (x86, gcc/clang; run when ctx->cpu_avx2) ---------------------
 *
 * The portable kernels' float operations, lane for lane, hence the same bits: one __m256
 * holds the 8 lanes, each product is _mm256_mul_ps then _mm256_add_ps (never an FMA, which
 * would round once), the K % 8 tail is a masked load (zeros past K, as lanes_load_part),
 * the lanes are added in lanes_sum's tree, and no trans_b adds in increasing k as nn_strip.
 * Only the register tiles are wider: 3 rows of A x 4 rows of B (12 of the 16 ymm
 * registers) read each B row once for 3 rows of C; no trans_b, 3 rows x 32 columns.
 * Compiled for target("avx2") alone (no FMA, no AVX-512), whatever the build's flags; gcc's
 * code for `lanes` under -march=native was slower than the default build's. */
#define AVX2_FN __attribute__((target("avx2")))
#define AVX2_INLINE __attribute__((target("avx2"), always_inline)) static inline
#define AVX_RM 3 /* rows of A per trans_b tile */

/* Lanes j < n (1 <= n < 8) of a masked load: the others read as 0.0f, never touched. */
AVX2_INLINE __m256i avx_mask(int64_t n) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), lane);
}

/* lanes_sum of v0 .. v3 at once: [sum v0, sum v1, sum v2, sum v3], each in the tree
 * ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)). */
AVX2_INLINE __m128 avx_sum4(__m256 v0, __m256 v1, __m256 v2, __m256 v3) {
  /* s02 = [v0 lo + v0 hi | v2 lo + v2 hi], lanes (l0+l4, l1+l5, l2+l6, l3+l7) */
  const __m256 s02 = _mm256_add_ps(_mm256_permute2f128_ps(v0, v2, 0x20),
                                   _mm256_permute2f128_ps(v0, v2, 0x31));
  const __m256 s13 = _mm256_add_ps(_mm256_permute2f128_ps(v1, v3, 0x20),
                                   _mm256_permute2f128_ps(v1, v3, 0x31));
  /* t = [v0: s0+s2, s1+s3, v1: s0+s2, s1+s3 | the same for v2, v3] */
  const __m256 t = _mm256_add_ps(_mm256_shuffle_ps(s02, s13, _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm256_shuffle_ps(s02, s13, _MM_SHUFFLE(3, 2, 3, 2)));
  /* u = [sum v0, sum v1, (dup) | sum v2, sum v3, (dup)] */
  const __m256 u = _mm256_add_ps(_mm256_shuffle_ps(t, t, _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm256_shuffle_ps(t, t, _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm_movelh_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
}
AVX2_INLINE float avx_sum1(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s)); /* s0+s2, s1+s3 */
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

/* c[0..3] = alpha * s + beta * c (c not read when beta == 0), as small_store. */
AVX2_INLINE void avx_store4(float *c, __m128 s, float alpha, float beta) {
  __m128 r = _mm_mul_ps(_mm_set1_ps(alpha), s);
  if (beta != 0.0f) r = _mm_add_ps(r, _mm_mul_ps(_mm_set1_ps(beta), _mm_loadu_ps(c)));
  _mm_storeu_ps(c, r);
}

/* One trans_b tile: acc[r][c] = the 8 lanes of A row r . B row c (r < RM, c < RN; RM, RN
 * compile-time constants after inlining, so acc stays in registers). */
#define AVX_NT_STEP(LD)                                                                       \
  do {                                                                                        \
    __m256 y[4];                                                                              \
    for (int c = 0; c < RN; ++c) y[c] = LD(b + c * ldb + k);                                  \
    for (int r = 0; r < RM; ++r) {                                                            \
      const __m256 x = LD(a + r * lda + k);                                                   \
      for (int c = 0; c < RN; ++c)                                                            \
        acc[r][c] = _mm256_add_ps(acc[r][c], _mm256_mul_ps(x, y[c]));                         \
    }                                                                                         \
  } while (0)
AVX2_INLINE void avx_nt_tile(const int RM, const int RN, int64_t K, const float *a, int64_t lda,
                             const float *b, int64_t ldb, __m256 acc[AVX_RM][4]) {
  for (int r = 0; r < RM; ++r)
    for (int c = 0; c < RN; ++c) acc[r][c] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + SMALL_LANES <= K; k += SMALL_LANES) {
#define LD(p) _mm256_loadu_ps(p)
    AVX_NT_STEP(LD);
#undef LD
  }
  if (k < K) {
    const __m256i mask = avx_mask(K - k);
#define LD(p) _mm256_maskload_ps((p), mask)
    AVX_NT_STEP(LD);
#undef LD
  }
}
#undef AVX_NT_STEP

/* Columns [n0, n1) of C for RM rows of A (a, c: their first rows): 4 B rows per tile, then
 * one at a time. */
AVX2_INLINE void avx_nt_rows(const int RM, int64_t n0, int64_t n1, int64_t K, float alpha,
                             const float *a, int64_t lda, const float *B, int64_t ldb,
                             float beta, float *c, int64_t ldc) {
  __m256 acc[AVX_RM][4];
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    avx_nt_tile(RM, 4, K, a, lda, B + n * ldb, ldb, acc);
    for (int r = 0; r < RM; ++r)
      avx_store4(c + r * ldc + n, avx_sum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]), alpha,
                 beta);
  }
  for (; n < n1; ++n) {
    avx_nt_tile(RM, 1, K, a, lda, B + n * ldb, ldb, acc);
    for (int r = 0; r < RM; ++r) small_store(c + r * ldc + n, avx_sum1(acc[r][0]), alpha, beta);
  }
}

/* small_nt_cols on AVX2: rows of A in tiles of up to AVX_RM. */
AVX2_FN static void avx_nt_cols(int64_t M, int64_t n0, int64_t n1, int64_t K, float alpha,
                                const float *A, int64_t lda, const float *B, int64_t ldb,
                                float beta, float *C, int64_t ldc) {
  for (int64_t m = 0; m < M; m += AVX_RM) {
    const float *a = A + m * lda;
    float *c = C + m * ldc;
    switch (M - m) {
      case 1: avx_nt_rows(1, n0, n1, K, alpha, a, lda, B, ldb, beta, c, ldc); break;
      case 2: avx_nt_rows(2, n0, n1, K, alpha, a, lda, B, ldb, beta, c, ldc); break;
      default: avx_nt_rows(3, n0, n1, K, alpha, a, lda, B, ldb, beta, c, ldc); break;
    }
  }
}

/* nn_strip on AVX2, for RM <= AVX_RM rows of A at once and NV * 8 columns (NV <= 4); the
 * same acc[r * SMALL_NB + j] += A[r, k] * B[k, j] in increasing k, kept in registers over
 * [k0, k1). */
AVX2_INLINE void avx_nn_strip(const int RM, const int NV, int64_t k0, int64_t k1,
                              const float *A, int64_t lda, const float *B, int64_t ldb,
                              float *acc) {
  __m256 c[AVX_RM][4];
  for (int r = 0; r < RM; ++r)
    for (int v = 0; v < NV; ++v) c[r][v] = _mm256_loadu_ps(acc + r * SMALL_NB + v * SMALL_LANES);
  for (int64_t k = k0; k < k1; ++k) {
    __m256 y[4];
    for (int v = 0; v < NV; ++v) y[v] = _mm256_loadu_ps(B + k * ldb + v * SMALL_LANES);
    for (int r = 0; r < RM; ++r) {
      const __m256 x = _mm256_broadcast_ss(A + r * lda + k);
      for (int v = 0; v < NV; ++v) c[r][v] = _mm256_add_ps(c[r][v], _mm256_mul_ps(x, y[v]));
    }
  }
  for (int r = 0; r < RM; ++r)
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(acc + r * SMALL_NB + v * SMALL_LANES, c[r][v]);
}

/* small_nn_cols's k blocks and strips for RM rows of A: 32 columns per strip, then 8, then
 * the w % 8 last columns in scalar code. */
AVX2_INLINE void avx_nn_rows(const int RM, int64_t k0, int64_t k1, int64_t w, const float *A,
                             int64_t lda, const float *B, int64_t ldb, float *acc) {
  int64_t j = 0;
  for (; j + 4 * SMALL_LANES <= w; j += 4 * SMALL_LANES)
    avx_nn_strip(RM, 4, k0, k1, A, lda, B + j, ldb, acc + j);
  for (; j + SMALL_LANES <= w; j += SMALL_LANES)
    avx_nn_strip(RM, 1, k0, k1, A, lda, B + j, ldb, acc + j);
  for (int r = 0; r < RM && j < w; ++r) {
    const float *a = A + r * lda;
    float *c = acc + r * SMALL_NB;
    for (int64_t k = k0; k < k1; ++k)
      for (int64_t i = j; i < w; ++i) c[i] += a[k] * B[k * ldb + i];
  }
}

/* small_nn_cols on AVX2. */
AVX2_FN static void avx_nn_cols(int64_t M, int64_t n0, int64_t n1, int64_t K, float alpha,
                                const float *A, int64_t lda, const float *B, int64_t ldb,
                                float beta, float *C, int64_t ldc) {
  float acc[SMALL_M_MAX_AVX2 * SMALL_NB];
  const int64_t w = n1 - n0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < w; ++j) acc[m * SMALL_NB + j] = 0.0f;
  for (int64_t k0 = 0; k0 < K; k0 += SMALL_NN_KB) {
    const int64_t k1 = K - k0 < SMALL_NN_KB ? K : k0 + SMALL_NN_KB;
    for (int64_t m = 0; m < M; m += AVX_RM) {
      const float *a = A + m * lda;
      float *c = acc + m * SMALL_NB;
      switch (M - m) {
        case 1: avx_nn_rows(1, k0, k1, w, a, lda, B + n0, ldb, c); break;
        case 2: avx_nn_rows(2, k0, k1, w, a, lda, B + n0, ldb, c); break;
        default: avx_nn_rows(3, k0, k1, w, a, lda, B + n0, ldb, c); break;
      }
    }
  }
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < w; ++j)
      small_store(C + m * ldc + n0 + j, acc[m * SMALL_NB + j], alpha, beta);
}
#endif /* SMALL_AVX2 */

/* Whether this context runs the AVX2 kernels (decided once, in dsc_context_create). */
static inline int small_avx2(const dsc_context *ctx) {
#ifdef SMALL_AVX2
  return ctx->cpu_avx2;
#else
  (void)ctx;
  return 0;
#endif
}

/* Columns [n0, n1) of the small-M GEMM, on this context's kernels. */
static void small_cols(int avx2, int trans_b, int64_t M, int64_t n0, int64_t n1, int64_t K,
                       float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                       float beta, float *C, int64_t ldc) {
#ifdef SMALL_AVX2
  if (avx2) {
    if (trans_b)
      avx_nt_cols(M, n0, n1, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else
      avx_nn_cols(M, n0, n1, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
#endif
  (void)avx2;
  if (trans_b)
    small_nt_cols(M, n0, n1, K, alpha, A, lda, B, ldb, beta, C, ldc);
  else
    small_nn_cols(M, n0, n1, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* The small-M GEMM (trans_a == 0), split over blocks of SMALL_NB columns. */
static void small_gemm(const dsc_context *ctx, int trans_b, int64_t M, int64_t N, int64_t K,
                       float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                       float beta, float *C, int64_t ldc) {
  if (alpha == 0.0f) { /* BLAS: A and B are not read */
    scale_c(DSC_DTYPE_FLOAT32, M, N, beta, C, ldc);
    return;
  }
  const int64_t nblk = (N + SMALL_NB - 1) / SMALL_NB;
  const int par = M * N * K >= SMALL_PAR_MIN && nblk > 1;
  (void)ctx, (void)par; /* read only by the OpenMP pragma */
  const int avx2 = small_avx2(ctx);
  DSC_CPU_FOR(par, ctx->num_threads, ib, nblk,
    const int64_t n0 = ib * SMALL_NB, n1 = n0 + SMALL_NB < N ? n0 + SMALL_NB : N;
    small_cols(avx2, trans_b, M, n0, n1, K, alpha, A, lda, B, ldb, beta, C, ldc);
  );
}

/* The one float32 GEMM call every path ends in: small_gemm for a few untransposed rows of
 * A, else sgemm.
 *
 * ctx->row_invariant (generation's decode and verify steps): the small kernels for every M,
 * so that a row of C has the same bits whether a step computes 1, 2 or 40 rows. Greedy MTP
 * speculative decoding relies on it to give exactly the plain tokens: the verify step runs
 * the main model on B * (1 + num_draft) rows, plain decoding on B, and an expert sees other
 * row counts in each; sgemm's result for a row depends on M (its kernels and blocking
 * change), and in an fp8 model one last-bit difference can move a 1x128 activation tile's
 * scale and with it every code of the tile. The trans_b kernels take any M in one pass over
 * B (its rows stay in L1 across the rows of A); the no-trans_b ones keep at most the small-M
 * limit of rows in their accumulators, so M is split into such chunks.
 *
 * Elsewhere (training, prefill, the ops) the small kernels take at most SMALL_M_MAX rows on
 * every CPU, though the AVX2 ones beat sgemm up to 8 rows: results then do not depend on the
 * CPU's ISA (the AVX2 kernels are bitwise the portable ones), and training keeps its
 * numerics: the demo trained to 52.5% exact match instead of 91.5% once 4-8 row GEMMs (small
 * experts) moved to the small kernels -- the same run, rounded differently. */
void dsc_cpu_sgemm(const dsc_context *ctx, int trans_a, int trans_b, int64_t M, int64_t N,
                  int64_t K, float alpha, const float *A, int64_t lda, const float *B,
                  int64_t ldb, float beta, float *C, int64_t ldc) {
  if (!trans_a && (M <= SMALL_M_MAX || ctx->row_invariant) && (trans_b || K * N <= SMALL_NN_MAX_B)) {
    const int64_t step = trans_b ? M : small_avx2(ctx) ? SMALL_M_MAX_AVX2 : SMALL_M_MAX;
    for (int64_t m0 = 0; m0 < M; m0 += step) {
      const int64_t rows = M - m0 < step ? M - m0 : step;
      small_gemm(ctx, trans_b, rows, N, K, alpha, A + m0 * lda, lda, B, ldb, beta, C + m0 * ldc, ldc);
    }
    return;
  }
  /* One thread pool: OpenBLAS always runs single-threaded, on the calling thread; a product
   * worth splitting (SPLIT_MIN_MACS) is split into a grid of blocks of C that depends on M, N
   * and K only -- never on the thread count or on being inside a parallel region -- and the
   * blocks run over the context's OpenMP team (or one after the other). sgemm's bits for an
   * element may depend on the shape of the call it is in (OpenBLAS picks other kernels for
   * small products), so a thread-dependent split would make the results depend on the
   * thread count; with this one they do not. */
  dsc_cpu_blas_serial();
  const double macs = (double)M * (double)N * (double)K;
  if (macs >= SPLIT_MIN_MACS && (M >= 2 * SPLIT_BLOCK || N >= 2 * SPLIT_BLOCK)) {
    /* the larger of M and N in blocks of a multiple of SPLIT_ALIGN, at least SPLIT_BLOCK, at
     * most SPLIT_MAX_BLOCKS of them: each block packs the whole other operand once, so the
     * packing overhead is about blocks / (the split dimension) of the multiply-adds */
    const int split_m = M >= N;
    const int64_t dim = split_m ? M : N;
    int64_t bs = (dim + SPLIT_MAX_BLOCKS - 1) / SPLIT_MAX_BLOCKS;
    bs = (bs + SPLIT_ALIGN - 1) / SPLIT_ALIGN * SPLIT_ALIGN;
    if (bs < SPLIT_BLOCK) bs = SPLIT_BLOCK;
    const int64_t g = (dim + bs - 1) / bs;
#ifdef _OPENMP
    const int nt = omp_in_parallel() ? 1 : (int)(ctx->num_threads < g ? ctx->num_threads : g);
#else
    const int nt = 1;
#endif
    DSC_CPU_FOR(nt > 1, nt, c, g,
      const int64_t o = c * bs, len = dim - o < bs ? dim - o : bs;
      if (split_m)
        dsc_cpu_sgemm_raw(trans_a, trans_b, len, N, K, alpha, trans_a ? A + o : A + o * lda, lda, B, ldb, beta,
                          C + o * ldc, ldc);
      else
        dsc_cpu_sgemm_raw(trans_a, trans_b, M, len, K, alpha, A, lda, trans_b ? B + o * ldb : B + o, ldb, beta,
                          C + o, ldc);
    );
    return;
  }
  dsc_cpu_sgemm_raw(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

dsc_status dsc_cpu_gemm(dsc_context *ctx, dsc_dtype dt, int trans_a, int trans_b, int64_t M,
                        int64_t N, int64_t K, float alpha,
                        const void *A /* [Bt] x op(A) [M,K], stored with row stride lda */,
                        int64_t lda,
                        const void *B /* [Bt or 1] x op(B) [K,N], stored with row stride ldb */,
                        int64_t ldb, float beta, void *C /* [Bt, M, ldc] */, int64_t ldc,
                        int64_t batch, int64_t sA, int64_t sB, int64_t sC) {
  if (M == 0 || N == 0 || batch == 0) return DSC_OK;
  const int64_t es = dsc_cpu_esize(dt);
  if (K == 0) { /* an empty sum: C = beta * C */
    for (int64_t b = 0; b < batch; ++b) scale_c(dt, M, N, beta, (char *)C + b * sC * es, ldc);
    return DSC_OK;
  }
  DSC_TRY(check_blasint(FN_GEMM, M, N, K, lda, ldb, ldc));

  if (dt == DSC_DTYPE_FLOAT32) {
    for (int64_t b = 0; b < batch; ++b) {
      dsc_cpu_sgemm(ctx, trans_a, trans_b, M, N, K, alpha, (const float *)A + b * sA, lda,
            (const float *)B + b * sB, ldb, beta, (float *)C + b * sC, ldc);
    }
    return DSC_OK;
  }

  /* bfloat16: stored shapes of one batch item of A and B. */
  const int64_t ra = trans_a ? K : M, ca = trans_a ? M : K; /* A stored [ra, ca] */
  const int64_t rb = trans_b ? N : K, cb = trans_b ? K : N; /* B stored [rb, cb] */
  /* One workspace request, split in three: fA [ra,ca], fB [rb,cb], fC [M,N] (float32).
   * One batch item at a time keeps it small; a shared B (sB == 0) is widened once. */
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, (size_t)(ra * ca + rb * cb + M * N) * sizeof(float), &ws));
  float *fA = (float *)ws;  /* [ra, ca] */
  float *fB = fA + ra * ca; /* [rb, cb] */
  float *fC = fB + rb * cb; /* [M, N] */
  for (int64_t b = 0; b < batch; ++b) {
    const void *Ab = (const char *)A + b * sA * es; /* stored [ra, lda] */
    const void *Bb = (const char *)B + b * sB * es; /* stored [rb, ldb] */
    void *Cb = (char *)C + b * sC * es;             /* [M, ldc] */
    widen(ctx, dt, ra, ca, Ab, lda, fA);
    if (b == 0 || sB != 0) widen(ctx, dt, rb, cb, Bb, ldb, fB);
    if (beta != 0.0f) widen(ctx, dt, M, N, Cb, ldc, fC); /* beta == 0: C is not read */
    dsc_cpu_sgemm(ctx, trans_a, trans_b, M, N, K, alpha, fA, ca, fB, cb, beta, fC, N);
    narrow(ctx, dt, M, N, fC, Cb, ldc);
  }
  return DSC_OK;
}

dsc_status dsc_cpu_gemm_f32out(dsc_context *ctx, dsc_dtype dt, int trans_a, int trans_b,
                               int64_t M, int64_t N, int64_t K, float alpha,
                               const void *A /* op(A) [M,K], stored with row stride lda, dt */,
                               int64_t lda,
                               const void *B /* op(B) [K,N], stored with row stride ldb, dt */,
                               int64_t ldb, float beta, float *C /* [M, ldc] float32 */,
                               int64_t ldc) {
  if (M == 0 || N == 0) return DSC_OK;
  if (K == 0) {
    scale_c(DSC_DTYPE_FLOAT32, M, N, beta, C, ldc);
    return DSC_OK;
  }
  DSC_TRY(check_blasint("dsc_cpu_gemm_f32out", M, N, K, lda, ldb, ldc));
  if (dt == DSC_DTYPE_FLOAT32) {
    dsc_cpu_sgemm(ctx, trans_a, trans_b, M, N, K, alpha, (const float *)A, lda, (const float *)B, ldb, beta,
          C, ldc);
    return DSC_OK;
  }
  /* bfloat16 operands: widen both, then sgemm straight into the float32 C. */
  const int64_t ra = trans_a ? K : M, ca = trans_a ? M : K; /* A stored [ra, ca] */
  const int64_t rb = trans_b ? N : K, cb = trans_b ? K : N; /* B stored [rb, cb] */
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, (size_t)(ra * ca + rb * cb) * sizeof(float), &ws));
  float *fA = (float *)ws;  /* [ra, ca] */
  float *fB = fA + ra * ca; /* [rb, cb] */
  widen(ctx, dt, ra, ca, A, lda, fA);
  widen(ctx, dt, rb, cb, B, ldb, fB);
  dsc_cpu_sgemm(ctx, trans_a, trans_b, M, N, K, alpha, fA, ca, fB, cb, beta, C, ldc);
  return DSC_OK;
}
