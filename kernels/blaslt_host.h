/*
 * kernels/blaslt_host.h -- the host-only parts of the shared cuBLASLt layer (blaslt.cu),
 * plain C++ without CUDA so tests/c/test_blaslt_host.cpp checks them with g++:
 *  - the problem (DscLtProblem) and its plan-cache key (dsc_lt_make_key, the math mode
 *    included: dsc_lt_dense_math);
 *  - the plan cache: per context, DSC_LT_SLOTS fixed slots keyed by the whole problem
 *    (DscLtKey), least-recently-used eviction; the plans are opaque here (blaslt.cu owns
 *    the cuBLASLt descriptors in them and destroys what insert evicts);
 *  - the rules for cuBLASLt's block-scaled FP8 GEMM (CUDA >= 12.9, compute capability 9.x).
 * Legend: M, N, K of our row-major problem C [M,N] = A [M,K] B[N,K]^T (FP8) or the
 * column-major one cuBLASLt sees (dense: the caller fills the key with what it passes).
 */
#ifndef DSC_KERNELS_BLASLT_HOST_H_
#define DSC_KERNELS_BLASLT_HOST_H_

#include <stdint.h>
#include <string.h>

#define DSC_LT_SLOTS 64
#define DSC_LT_KEY_WORDS 25

/* Everything that changes the descriptors, the layouts or the algorithm choice, as
 * 64-bit words (unused words 0): compare and hash the words, no struct padding involved. */
struct DscLtKey {
  int64_t w[DSC_LT_KEY_WORDS];
};

/* Word positions of DscLtKey (dsc_lt_key_* fill them). */
enum {
  LTK_KIND = 0,   /* 1 dense, 2 fp8 block-scaled */
  LTK_OPA, LTK_OPB, LTK_TA, LTK_TB, LTK_TC, LTK_COMPUTE,
  LTK_M, LTK_N, LTK_K, LTK_LDA, LTK_LDB, LTK_LDC,
  LTK_BATCH, LTK_SA, LTK_SB, LTK_SC,
  LTK_SCALE_A, LTK_SCALE_B, /* cuBLASLt scale modes, -1: none */
  LTK_AL_A, LTK_AL_B, LTK_AL_C, /* byte alignments the heuristic may assume */
  LTK_WS,         /* workspace bytes */
  LTK_EPILOGUE,
  LTK_MATH        /* the context's dsc_math_mode, where it changes the problem (dense FP32) */
};

static inline void dsc_lt_key_clear(DscLtKey *k) { memset(k, 0, sizeof *k); }

static inline int dsc_lt_key_eq(const DscLtKey *a, const DscLtKey *b) {
  return memcmp(a->w, b->w, sizeof a->w) == 0;
}

/* A problem as cuBLASLt sees it (column-major): D [m,n] = op(A) op(B), A with leading dim
 * lda, etc.; D = C (in place). The cuBLASLt enums are held as their int32 values so this
 * header needs no CUDA (blaslt.cu casts them back). */
struct DscLtProblem {
  int32_t compute;        /* cublasComputeType_t */
  int32_t opa, opb;       /* cublasOperation_t */
  int32_t ta, tb, tc;     /* cudaDataType_t */
  int64_t m, n, k;        /* D [m,n], inner dim k */
  int64_t lda, ldb, ldc;  /* leading dims (column-major) */
  int64_t batch;          /* >= 1 (<= INT32_MAX) */
  int64_t sa, sb, sc;     /* batch strides in elements (batch > 1) */
  int32_t scale_a, scale_b; /* cublasLtMatmulMatrixScale_t, -1: none */
  uint32_t al_a, al_b, al_c; /* byte alignment of each matrix (pointer and strides) */
  size_t ws_bytes;        /* workspace the algorithm may use */
  int32_t math_mode = 0;  /* dsc_math_mode the problem runs under (dsc_lt_dense_math) */
};

/* The math mode a dense GEMM runs under: the context's mode (0 DSC_MATH_DEFAULT, 1
 * DSC_MATH_BF16_OPERANDS) for float32 operands, which BF16_OPERANDS lets cuBLASLt round to
 * BF16 (CUBLAS_COMPUTE_32F_FAST_16BF); 0 for BF16 operands, whose GEMM is the same in both
 * modes (so both share one plan). */
static inline int32_t dsc_lt_dense_math(int operands_fp32, int32_t ctx_math_mode) {
  return operands_fp32 && ctx_math_mode == 1 ? 1 : 0;
}

/* The plan-cache key of pr: every field that shapes the descriptors, the layouts, the
 * algorithm choice or the numerics. epilogue: cublasLtEpilogue_t (the default is 1). */
static inline DscLtKey dsc_lt_make_key(const DscLtProblem &pr, int64_t epilogue) {
  DscLtKey k;
  memset(&k, 0, sizeof k);
  k.w[LTK_KIND] = pr.scale_a >= 0 || pr.scale_b >= 0 ? 2 : 1;
  k.w[LTK_OPA] = pr.opa;
  k.w[LTK_OPB] = pr.opb;
  k.w[LTK_TA] = pr.ta;
  k.w[LTK_TB] = pr.tb;
  k.w[LTK_TC] = pr.tc;
  k.w[LTK_COMPUTE] = pr.compute;
  k.w[LTK_M] = pr.m;
  k.w[LTK_N] = pr.n;
  k.w[LTK_K] = pr.k;
  k.w[LTK_LDA] = pr.lda;
  k.w[LTK_LDB] = pr.ldb;
  k.w[LTK_LDC] = pr.ldc;
  k.w[LTK_BATCH] = pr.batch;
  k.w[LTK_SA] = pr.batch > 1 ? pr.sa : 0;
  k.w[LTK_SB] = pr.batch > 1 ? pr.sb : 0;
  k.w[LTK_SC] = pr.batch > 1 ? pr.sc : 0;
  k.w[LTK_SCALE_A] = pr.scale_a;
  k.w[LTK_SCALE_B] = pr.scale_b;
  k.w[LTK_AL_A] = pr.al_a;
  k.w[LTK_AL_B] = pr.al_b;
  k.w[LTK_AL_C] = pr.al_c;
  k.w[LTK_WS] = (int64_t)pr.ws_bytes;
  k.w[LTK_EPILOGUE] = epilogue;
  k.w[LTK_MATH] = pr.math_mode;
  return k;
}

/* FNV-1a over the bytes of the words. */
static inline uint64_t dsc_lt_key_hash(const DscLtKey *k) {
  uint64_t h = 1469598103934665603ull;
  const unsigned char *p = (const unsigned char *)k->w;
  for (size_t i = 0; i < sizeof k->w; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

struct DscLtSlot {
  DscLtKey key;
  uint64_t hash;
  uint64_t last_use; /* 0: empty */
  void *plan;
};

struct DscLtCache {
  DscLtSlot slot[DSC_LT_SLOTS];
  uint64_t tick;
  uint64_t hits, misses, evictions; /* for tests and debug logs */
};

static inline void dsc_lt_cache_init(DscLtCache *c) { memset(c, 0, sizeof *c); }

/* The plan stored for key (it becomes the most recently used), or NULL. */
static inline void *dsc_lt_cache_find(DscLtCache *c, const DscLtKey *key) {
  const uint64_t h = dsc_lt_key_hash(key);
  for (int i = 0; i < DSC_LT_SLOTS; ++i) {
    DscLtSlot *s = &c->slot[i];
    if (s->last_use && s->hash == h && dsc_lt_key_eq(&s->key, key)) {
      s->last_use = ++c->tick;
      ++c->hits;
      return s->plan;
    }
  }
  ++c->misses;
  return NULL;
}

/* Stores plan under key (not present: find first) in an empty slot or in place of the
 * least recently used one; returns the plan it evicted (the caller destroys it) or NULL. */
static inline void *dsc_lt_cache_insert(DscLtCache *c, const DscLtKey *key, void *plan) {
  int victim = 0;
  for (int i = 0; i < DSC_LT_SLOTS; ++i) {
    if (!c->slot[i].last_use) {
      victim = i;
      break;
    }
    if (c->slot[i].last_use < c->slot[victim].last_use) victim = i;
  }
  DscLtSlot *s = &c->slot[victim];
  void *old = s->last_use ? s->plan : NULL;
  if (old) ++c->evictions;
  s->key = *key;
  s->hash = dsc_lt_key_hash(key);
  s->last_use = ++c->tick;
  s->plan = plan;
  return old;
}

/* Empties the cache; destroy(plan) for each stored plan. */
static inline void dsc_lt_cache_clear(DscLtCache *c, void (*destroy)(void *plan)) {
  for (int i = 0; i < DSC_LT_SLOTS; ++i)
    if (c->slot[i].last_use && destroy) destroy(c->slot[i].plan);
  dsc_lt_cache_init(c);
}

/* ---- cuBLASLt block-scaled FP8 ------------------------------------------------------- */

/* NULL when cuBLASLt's block-scaled FP8 GEMM (VEC128_32F for 1x128 scales, BLK128x128_32F
 * for 128x128) may run C [M,N] = A [M,K] B [N,K]^T; otherwise the first rule that fails,
 * for the debug log. cuda_version: CUDART_VERSION at build time (12090 = 12.9); lt_version:
 * cublasLtGetVersion() (120900 = 12.9); cc_major: the device's compute capability major;
 * a_br, b_br: rows per scale row (1 or 128); ae5, be5: the operand is E5M2; aligned16: a,
 * b, c and the work buffer are 16-byte aligned; have_work: the caller passed the buffer. */
static inline const char *dsc_lt_fp8_block_rule(int cuda_version, int64_t lt_version, int cc_major,
                                                int64_t M, int64_t N, int64_t K, int64_t a_br,
                                                int64_t b_br, int ae5, int be5, int aligned16,
                                                int have_work) {
  if (cuda_version < 12090) return "built with CUDA < 12.9 (no cuBLASLt block scaling)";
  if (lt_version < 120900) return "the cuBLASLt library is older than 12.9";
  if (cc_major != 9) return "the device is not compute capability 9.x (Hopper)";
  if (!have_work) return "no work buffer";
  if (!aligned16) return "a, b, c or the work buffer is not 16-byte aligned";
  if ((a_br != 1 && a_br != 128) || (b_br != 1 && b_br != 128)) return "scales neither 1x128 nor 128x128";
  if (a_br == 128 && b_br == 128) return "both operands with 128x128 scales";
  if (ae5 && be5) return "two E5M2 operands";
  if (K <= 0 || K % 128 != 0) return "K is not a positive multiple of 128";
  if (M <= 0 || M % 4 != 0) return "M is not a positive multiple of 4";
  if (N <= 0 || N % 16 != 0) return "N is not a positive multiple of 16";
  if (M > INT32_MAX || N > INT32_MAX || K > INT32_MAX) return "a dimension exceeds int32";
  return NULL;
}

#endif /* DSC_KERNELS_BLASLT_HOST_H_ */
