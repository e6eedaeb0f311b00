/*
 * kernels/blaslt.cu -- the shared cuBLASLt layer (blaslt.cuh): the context's handle and
 * its plan cache. A plan holds one problem's matmul descriptor, its three layouts and the
 * algorithm the heuristic chose (or that it had none). Plans live in the context
 * (dsc_cuda_state::lt_cache), are evicted least-recently-used and all freed by
 * dsc_lt_release at context release: no global state.
 */
#include <stdlib.h>

#include <new>

#include "blaslt.cuh"

/* Return DSC_ERR_CUDA naming the cuBLASLt status of a failing call. */
#define LT_TRY(call, fn)                                                                  \
  do {                                                                                    \
    cublasStatus_t lt_s_ = (call);                                                        \
    if (lt_s_ != CUBLAS_STATUS_SUCCESS)                                                   \
      return dsc_error(DSC_ERR_CUDA, (fn), "%s: %s (cublasStatus_t %d)", #call,           \
                       cublasLtGetStatusName(lt_s_), (int)lt_s_);                         \
  } while (0)

namespace {

struct LtPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo;
  bool has_algo = false;
};

void plan_destroy(void *p) {
  LtPlan *pl = (LtPlan *)p;
  if (!pl) return;
  if (pl->c) cublasLtMatrixLayoutDestroy(pl->c);
  if (pl->b) cublasLtMatrixLayoutDestroy(pl->b);
  if (pl->a) cublasLtMatrixLayoutDestroy(pl->a);
  if (pl->op) cublasLtMatmulDescDestroy(pl->op);
  delete pl;
}

/* A preference, destroyed on every return path (only needed while planning). */
struct PrefGuard {
  cublasLtMatmulPreference_t p = nullptr;
  ~PrefGuard() {
    if (p) cublasLtMatmulPreferenceDestroy(p);
  }
};

dsc_status layout(const char *fn, cublasLtMatrixLayout_t *l, cudaDataType_t t, int64_t rows,
                  int64_t cols, int64_t ld, int64_t batch, int64_t stride) {
  LT_TRY(cublasLtMatrixLayoutCreate(l, t, (uint64_t)rows, (uint64_t)cols, ld), fn);
  if (batch > 1) {
    const int32_t bc = (int32_t)batch;
    LT_TRY(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc),
           fn);
    LT_TRY(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                            &stride, sizeof stride),
           fn);
  }
  return DSC_OK;
}

/* Creates pl's descriptors for pr and asks the heuristic once. */
dsc_status plan_build(cublasLtHandle_t h, const char *fn, const DscLtProblem &pr, LtPlan *pl) {
  const cublasComputeType_t compute = (cublasComputeType_t)pr.compute;
  LT_TRY(cublasLtMatmulDescCreate(&pl->op, compute, CUDA_R_32F), fn);
  LT_TRY(cublasLtMatmulDescSetAttribute(pl->op, CUBLASLT_MATMUL_DESC_TRANSA, &pr.opa, sizeof pr.opa),
         fn);
  LT_TRY(cublasLtMatmulDescSetAttribute(pl->op, CUBLASLT_MATMUL_DESC_TRANSB, &pr.opb, sizeof pr.opb),
         fn);
#if CUDART_VERSION >= 12090
  if (pr.scale_a >= 0)
    LT_TRY(cublasLtMatmulDescSetAttribute(pl->op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &pr.scale_a,
                                          sizeof pr.scale_a),
           fn);
  if (pr.scale_b >= 0)
    LT_TRY(cublasLtMatmulDescSetAttribute(pl->op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &pr.scale_b,
                                          sizeof pr.scale_b),
           fn);
#else
  if (pr.scale_a >= 0 || pr.scale_b >= 0)
    return dsc_error(DSC_ERR_INTERNAL, fn, "cuBLASLt scale modes need CUDA >= 12.9");
#endif
  /* op(A) is [m,k]: stored [m,k] (N) or [k,m] (T); likewise op(B) [k,n] */
  const bool ta = pr.opa != CUBLAS_OP_N, tb = pr.opb != CUBLAS_OP_N;
  const cudaDataType_t ta_ = (cudaDataType_t)pr.ta, tb_ = (cudaDataType_t)pr.tb,
                       tc_ = (cudaDataType_t)pr.tc;
  DSC_TRY(layout(fn, &pl->a, ta_, ta ? pr.k : pr.m, ta ? pr.m : pr.k, pr.lda, pr.batch, pr.sa));
  DSC_TRY(layout(fn, &pl->b, tb_, tb ? pr.n : pr.k, tb ? pr.k : pr.n, pr.ldb, pr.batch, pr.sb));
  DSC_TRY(layout(fn, &pl->c, tc_, pr.m, pr.n, pr.ldc, pr.batch, pr.sc));

  PrefGuard pref;
  LT_TRY(cublasLtMatmulPreferenceCreate(&pref.p), fn);
  const uint64_t ws = pr.ws_bytes;
  LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                              sizeof ws),
         fn);
  /* the real alignments, so no kernel assuming more (the default is 256 bytes) is chosen */
  LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                              &pr.al_a, sizeof pr.al_a),
         fn);
  LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                              &pr.al_b, sizeof pr.al_b),
         fn);
  LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                              &pr.al_c, sizeof pr.al_c),
         fn);
  LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                              &pr.al_c, sizeof pr.al_c),
         fn);
  cublasLtMatmulHeuristicResult_t res = {};
  int n_res = 0;
  const cublasStatus_t hs =
      cublasLtMatmulAlgoGetHeuristic(h, pl->op, pl->a, pl->b, pl->c, pl->c, pref.p, 1, &res, &n_res);
  if (hs == CUBLAS_STATUS_NOT_SUPPORTED || hs == CUBLAS_STATUS_INVALID_VALUE ||
      (hs == CUBLAS_STATUS_SUCCESS && n_res == 0)) {
    pl->has_algo = false; /* remembered: the caller falls back */
    return DSC_OK;
  }
  LT_TRY(hs, fn);
  pl->algo = res.algo;
  pl->has_algo = true;
  return DSC_OK;
}

}  // namespace

void dsc_lt_release(dsc_cuda_state *st) {
  if (st->lt_cache) {
    dsc_lt_cache_clear((DscLtCache *)st->lt_cache, plan_destroy);
    free(st->lt_cache);
    st->lt_cache = NULL;
  }
  if (st->lt) (void)cublasLtDestroy((cublasLtHandle_t)st->lt);
  st->lt = NULL;
}

dsc_status dsc_lt_handle(dsc_context *ctx, const char *fn, cublasLtHandle_t *h) {
  dsc_cuda_state *st = dsc_cuda_st(ctx);
  if (!st->lt) {
    cublasLtHandle_t nh = nullptr;
    LT_TRY(cublasLtCreate(&nh), fn);
    st->lt = (void *)nh;
  }
  *h = (cublasLtHandle_t)st->lt;
  return DSC_OK;
}

dsc_status dsc_lt_matmul(dsc_context *ctx, const char *fn, const DscLtProblem &pr,
                         const float *alpha, const void *A, const void *B, const float *beta,
                         void *C, const void *scale_a, const void *scale_b, void *ws,
                         bool *done) {
  *done = false;
  cublasLtHandle_t h = nullptr;
  DSC_TRY(dsc_lt_handle(ctx, fn, &h));
  dsc_cuda_state *st = dsc_cuda_st(ctx);
  if (!st->lt_cache) {
    DscLtCache *c = (DscLtCache *)malloc(sizeof(DscLtCache));
    if (!c) return dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "cuBLASLt plan cache: out of host memory");
    dsc_lt_cache_init(c);
    st->lt_cache = c;
  }
  DscLtCache *cache = (DscLtCache *)st->lt_cache;
  const DscLtKey key = dsc_lt_make_key(pr, CUBLASLT_EPILOGUE_DEFAULT);
  LtPlan *pl = (LtPlan *)dsc_lt_cache_find(cache, &key);
  if (!pl) {
    pl = new (std::nothrow) LtPlan();
    if (!pl) return dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "cuBLASLt plan: out of host memory");
    const dsc_status s = plan_build(h, fn, pr, pl);
    if (s != DSC_OK) {
      plan_destroy(pl);
      return s;
    }
    plan_destroy(dsc_lt_cache_insert(cache, &key, pl));
    dsc_log(ctx, DSC_LOG_DEBUG,
            "%s: cuBLASLt plan for m=%lld n=%lld k=%lld batch %lld%s (plan cache: %llu hits, "
            "%llu misses, %llu evictions)",
            fn, (long long)pr.m, (long long)pr.n, (long long)pr.k, (long long)pr.batch,
            pl->has_algo ? "" : ": no algorithm, the caller falls back",
            (unsigned long long)cache->hits, (unsigned long long)cache->misses,
            (unsigned long long)cache->evictions);
  }
  if (!pl->has_algo) return DSC_OK;
#if CUDART_VERSION >= 12090
  /* per call: the scale arrays move, the descriptor stays */
  if (pr.scale_a >= 0)
    LT_TRY(cublasLtMatmulDescSetAttribute(pl->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &scale_a,
                                          sizeof scale_a),
           fn);
  if (pr.scale_b >= 0)
    LT_TRY(cublasLtMatmulDescSetAttribute(pl->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &scale_b,
                                          sizeof scale_b),
           fn);
#else
  (void)scale_a;
  (void)scale_b;
#endif
  const cublasStatus_t ms = cublasLtMatmul(h, pl->op, alpha, A, pl->a, B, pl->b, beta, C, pl->c, C,
                                           pl->c, &pl->algo, ws, pr.ws_bytes, dsc_cuda_stream(ctx));
  if (ms == CUBLAS_STATUS_NOT_SUPPORTED) return DSC_OK; /* nothing ran: the caller falls back */
  LT_TRY(ms, fn);
  *done = true;
  return DSC_OK;
}
