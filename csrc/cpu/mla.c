/*
 * cpu/mla.c -- the attention core of Multi-head Latent Attention on the CPU (the
 * reference for kernels/mla.cu): causal training attention forward/backward, and the
 * paged latent cache (write, read, absorbed decode attention). The projections around
 * it are orchestrated by csrc/ops/mla.c through the gemm / rms_norm / rope backends.
 *
 * Legend: B batch, T tokens, H heads, dn / dr / dv the nope / rope / value head dims,
 *         dqk = dn + dr, R kv_lora_rank, NQ query rows, S keys of a row.
 *
 * Training (per batch b, head h; t query, j key, j <= t):
 *   s_tj = scale * (q[b,t,h,:dn] . kv[b,j,h,:dn] + q_pe[b,t,h] . kpe[b,j])
 *   P = softmax_j(s), o[b,t,h] = sum_j P_tj kv[b,j,h,dn:], lse = m + log(sum exp(s - m))
 * Backward (the usual one, P recomputed from lse):
 *   dP_tj = dO_t . v_j,  D_t = dO_t . o_t,  dS_tj = P_tj (dP_tj - D_t)
 *   dq_t = scale sum_j dS_tj k_j,  dk_j = scale sum_t dS_tj q_t,  dv_j = sum_t P_tj dO_t
 *   the shared kpe gets the sum over heads (per-head partials in the workspace, then a
 *   fixed-order reduction: deterministic). Both passes run as GEMMs per (b, h) in query
 *   blocks (see "training attention through BLAS").
 * Decode (absorbed): s_j = scale * (q_lat . ckv_j + q_pe . kpe_j), o_lat = softmax(s) @ ckv,
 *   one pass with an online softmax, reading each latent row once per group of heads
 *   (generation's row-invariant steps); prefill runs of a sequence go through GEMMs over
 *   all heads at once (see "prefill through BLAS").
 *
 * Cache rows (one token of one layer): FLOAT32 / BFLOAT16: [ckv (R) | kpe (dr)];
 * FLOAT8_E4M3FN: ckv in E4M3 (R bytes), then ceil(R/128) float32 scales at byte
 * offset round4(R) (scale = max(amax, 1e-4) / 448 per 128 values), then kpe in bf16.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_common.h"
#include "fp8_format.h"
#include "vmath.h"

#define MLA_HEAD_GROUP 8 /* heads sharing one read of a latent row in decode */
/* Multiply-adds (latent rows x heads x (R + dr)) below which decode attention runs on one
 * thread: ~2^20 is ~100 us of serial work, well above a parallel region's cost. */
#define MLA_DECODE_PAR_MIN ((int64_t)1 << 20)

static int thread_id(void) {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

/* Dot product with 8 independent partial sums (a fixed order, so deterministic; lets the
 * compiler vectorize without -ffast-math). */
static float dotf(const float *a, const float *b, int64_t n) {
  float p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) p[k] += a[i + k] * b[i + k];
  float s = ((p[0] + p[4]) + (p[1] + p[5])) + ((p[2] + p[6]) + (p[3] + p[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

dsc_status dsc_cpu_mla_copy_cols(dsc_context *ctx, int64_t rows, int64_t C,
                                 const float *src /* [rows, lds] */, int64_t lds,
                                 float *dst /* [rows, ldd] */, int64_t ldd) {
  (void)ctx;
  DSC_CPU_FOR(rows * C >= DSC_CPU_PAR_MIN, ctx->num_threads, r, rows,
    memcpy(dst + r * ldd, src + r * lds, (size_t)C * sizeof(float));
  );
  return DSC_OK;
}

/* ---- training attention through BLAS ------------------------------------------------
 *
 * Per (b, h) task, in query blocks of MLA_QB rows [t0, t1) against keys [0, t1) (causal: the
 * blocks above the diagonal are skipped; within a block, keys j > t are masked):
 *   forward:  S = scale * Qc[t0:t1] Kc[0:t1]^T            (sgemm, Qc = [q_nope | q_pe],
 *             P = softmax_row(S) (masked), lse              Kc = [k_nope | kpe], [T, dqk])
 *             o[t0:t1] = P V[0:t1]                          (sgemm, straight into o)
 *   backward (last block first, so its beta-0 products initialize dK and dV for all keys):
 *             S again, P = exp(S - lse),  dP = dO[t0:t1] V[0:t1]^T,
 *             dS = (scale P) (dP - D_t),  D_t = dO_t . o_t
 *             dQc[t0:t1] = dS Kc[0:t1],  dKc[0:t1] += dS^T Qc[t0:t1],  dv[0:t1] += P^T dO[t0:t1]
 * Each task runs on one thread and calls a single-threaded sgemm (dsc_cpu_blas_serial), so
 * its results do not depend on the thread count; the softmax loops use vmath.h's exp in 8
 * lanes (AVX2 or the same operations portably: the same bits). */
#define MLA_QB 64

/* e_j = exp(s_j - m) over j < n (m = max), s_j = e_j / l for j < n and 0 for n <= j < nk;
 * returns m + log(l). l sums 8 lanes (lane r: j = r, r + 8, ...) then a fixed tree. */
static float softmax_row(int64_t n, int64_t nk, float *s /* [nk] */) {
  float m = -INFINITY;
  for (int64_t j = 0; j < n; ++j) m = s[j] > m ? s[j] : m;
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t j = 0; j < n; ++j) {
    s[j] = dsc_vm_exp(s[j] - m);
    acc[j % 8] += s[j];
  }
  const float l = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
  const float inv = 1.0f / l;
  for (int64_t j = 0; j < n; ++j) s[j] *= inv;
  for (int64_t j = n; j < nk; ++j) s[j] = 0.0f;
  return m + logf(l);
}

/* Backward of one row: p_j = exp(s_j - L) into s, ds_j = (scale p_j)(dp_j - D) into dp, for
 * j < n; both 0 for n <= j < nk. */
static void dsoftmax_row(int64_t n, int64_t nk, float L, float D, float scale, float *s /* [nk] */,
                         float *dp /* [nk] */) {
  for (int64_t j = 0; j < n; ++j) {
    const float pj = dsc_vm_exp(s[j] - L);
    s[j] = pj;
    dp[j] = (scale * pj) * (dp[j] - D);
  }
  for (int64_t j = n; j < nk; ++j) s[j] = dp[j] = 0.0f;
}

#ifdef DSC_VM_AVX2
DSC_VM_AVX2_FN static float softmax_row_avx2(int64_t n, int64_t nk, float *s) {
  __m256 mv = _mm256_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) mv = _mm256_max_ps(_mm256_loadu_ps(s + j), mv);
  float t[8];
  _mm256_storeu_ps(t, mv);
  float m = -INFINITY;
  for (int r = 0; r < 8; ++r) m = t[r] > m ? t[r] : m;
  for (; j < n; ++j) m = s[j] > m ? s[j] : m;
  const __m256 mb = _mm256_set1_ps(m);
  __m256 acc = _mm256_setzero_ps();
  for (j = 0; j + 8 <= n; j += 8) {
    const __m256 e = dsc_vm_exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), mb));
    _mm256_storeu_ps(s + j, e);
    acc = _mm256_add_ps(acc, e);
  }
  _mm256_storeu_ps(t, acc);
  for (int r = 0; j < n; ++j, ++r) {
    s[j] = dsc_vm_exp(s[j] - m);
    t[r] += s[j];
  }
  const float l = ((t[0] + t[4]) + (t[2] + t[6])) + ((t[1] + t[5]) + (t[3] + t[7]));
  const float inv = 1.0f / l;
  const __m256 iv = _mm256_set1_ps(inv);
  for (j = 0; j + 8 <= n; j += 8) _mm256_storeu_ps(s + j, _mm256_mul_ps(_mm256_loadu_ps(s + j), iv));
  for (; j < n; ++j) s[j] *= inv;
  for (j = n; j < nk; ++j) s[j] = 0.0f;
  return m + logf(l);
}

DSC_VM_AVX2_FN static void dsoftmax_row_avx2(int64_t n, int64_t nk, float L, float D, float scale,
                                             float *s, float *dp) {
  const __m256 Lb = _mm256_set1_ps(L), Db = _mm256_set1_ps(D), sc = _mm256_set1_ps(scale);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 p = dsc_vm_exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), Lb));
    _mm256_storeu_ps(s + j, p);
    _mm256_storeu_ps(dp + j, _mm256_mul_ps(_mm256_mul_ps(sc, p), _mm256_sub_ps(_mm256_loadu_ps(dp + j), Db)));
  }
  for (; j < n; ++j) {
    const float pj = dsc_vm_exp(s[j] - L);
    s[j] = pj;
    dp[j] = (scale * pj) * (dp[j] - D);
  }
  for (j = n; j < nk; ++j) s[j] = dp[j] = 0.0f;
}
#endif

/* Qc, Kc [T, dqk] of task (b, h): [q_nope | q_pe] and [k_nope | kpe]. */
static void pack_qk(int64_t T, int64_t H, int64_t dn, int64_t dr, int64_t dv, int64_t b, int64_t h,
                    const float *q, const float *q_pe, const float *kv, const float *kpe,
                    float *Qc /* [T, dqk] */, float *Kc /* [T, dqk] */) {
  const int64_t dqk = dn + dr, dkv = dn + dv;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t row = (b * T + t) * H + h;
    memcpy(Qc + t * dqk, q + row * dqk, (size_t)dn * sizeof(float));
    memcpy(Qc + t * dqk + dn, q_pe + row * dr, (size_t)dr * sizeof(float));
    memcpy(Kc + t * dqk, kv + row * dkv, (size_t)dn * sizeof(float));
    memcpy(Kc + t * dqk + dn, kpe + (b * T + t) * dr, (size_t)dr * sizeof(float));
  }
}

dsc_status dsc_cpu_mla_attn_fwd(dsc_context *ctx, int64_t B, int64_t T, int64_t H, int64_t dn,
                                int64_t dr, int64_t dv, int bf16 /* ignored: float32 */, float scale,
                                const float *q /* [B,T,H,dqk] */, const float *q_pe /* [B,T,H,dr] */,
                                const float *kv /* [B,T,H,dn+dv] */, const float *kpe /* [B,T,dr] */,
                                float *o /* [B,T,H,dv] */, float *lse /* [B,H,T] */) {
  (void)bf16;
  const int64_t dqk = dn + dr, dkv = dn + dv, nthr = ctx->num_threads > 0 ? ctx->num_threads : 1;
  if (B * T * H == 0) return DSC_OK;
  const int64_t QB = T < MLA_QB ? T : MLA_QB;
  const int64_t per = 2 * T * dqk + QB * T; /* Qc, Kc, S */
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, (size_t)(nthr * per) * sizeof(float), &ws));
  const int par = nthr > 1 && B * H > 1 && B * H * T * T * (dqk + dv) >= 16 * DSC_CPU_PAR_MIN;
  const int avx2 = DSC_VM_USE_AVX2(ctx);
  (void)avx2;
  dsc_cpu_blas_serial();
  DSC_CPU_FOR_DYN(par, ctx->num_threads, bh, B * H,
    const int64_t b = bh / H, h = bh % H;
    float *Qc = (float *)ws + (par ? thread_id() : 0) * per; /* [T, dqk] */
    float *Kc = Qc + T * dqk;                                  /* [T, dqk] */
    float *S = Kc + T * dqk;                                   /* [QB, T] */
    pack_qk(T, H, dn, dr, dv, b, h, q, q_pe, kv, kpe, Qc, Kc);
    for (int64_t t0 = 0; t0 < T; t0 += QB) {
      const int64_t t1 = t0 + QB < T ? t0 + QB : T, nq = t1 - t0, nk = t1;
      dsc_cpu_sgemm_raw(0, 1, nq, nk, dqk, scale, Qc + t0 * dqk, dqk, Kc, dqk, 0.0f, S, nk);
      for (int64_t i = 0; i < nq; ++i) {
        float *srow = S + i * nk;
#ifdef DSC_VM_AVX2
        const float l = avx2 ? softmax_row_avx2(t0 + i + 1, nk, srow) : softmax_row(t0 + i + 1, nk, srow);
#else
        const float l = softmax_row(t0 + i + 1, nk, srow);
#endif
        lse[(b * H + h) * T + t0 + i] = l;
      }
      /* o rows t0..t1-1 of head h: [nq, dv] with row stride H*dv */
      dsc_cpu_sgemm_raw(0, 0, nq, dv, nk, 1.0f, S, nk, kv + ((b * T) * H + h) * dkv + dn, H * dkv,
                        0.0f, o + ((b * T + t0) * H + h) * dv, H * dv);
    }
  );
  return DSC_OK;
}

dsc_status dsc_cpu_mla_attn_bwd(dsc_context *ctx, int64_t B, int64_t T, int64_t H, int64_t dn,
                                int64_t dr, int64_t dv, int bf16, float scale, const float *q,
                                const float *q_pe, const float *kv, const float *kpe,
                                const float *o, const float *lse,
                                const float *dout /* [B,T,H,dv] */, float *dq /* [B,T,H,dqk] */,
                                float *dq_pe /* [B,T,H,dr] */, float *dkv /* [B,T,H,dn+dv] */,
                                float *dkpe /* [B,T,dr] */) {
  (void)bf16;
  const int64_t dqk = dn + dr, dkvw = dn + dv, nthr = ctx->num_threads > 0 ? ctx->num_threads : 1;
  if (B * T == 0) return DSC_OK;
  if (H == 0) {
    memset(dkpe, 0, (size_t)(B * T * dr) * sizeof(float));
    return DSC_OK;
  }
  const int64_t QB = T < MLA_QB ? T : MLA_QB;
  /* per thread: Qc, Kc, dKc [T, dqk], S, dP [QB, T], dQc [QB, dqk], D [T] */
  const int64_t per = 3 * T * dqk + 2 * QB * T + QB * dqk + T;
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, (size_t)(nthr * per + B * H * T * dr) * sizeof(float), &ws));
  float *dkpe_h = (float *)ws + nthr * per; /* [B,H,T,dr] per-head partials of dkpe */
  const int par = nthr > 1 && B * H > 1 && B * H * T * T * (dqk + dv) >= 16 * DSC_CPU_PAR_MIN;
  const int avx2 = DSC_VM_USE_AVX2(ctx);
  (void)avx2;
  dsc_cpu_blas_serial();
  DSC_CPU_FOR_DYN(par, ctx->num_threads, bh, B * H,
    const int64_t b = bh / H, h = bh % H;
    float *Qc = (float *)ws + (par ? thread_id() : 0) * per; /* [T, dqk] */
    float *Kc = Qc + T * dqk;                                  /* [T, dqk] */
    float *dKc = Kc + T * dqk;                                 /* [T, dqk] */
    float *S = dKc + T * dqk;                                  /* [QB, T] */
    float *dP = S + QB * T;                                    /* [QB, T] */
    float *dQc = dP + QB * T;                                  /* [QB, dqk] */
    float *Dv = dQc + QB * dqk;                                /* [T] */
    pack_qk(T, H, dn, dr, dv, b, h, q, q_pe, kv, kpe, Qc, Kc);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t row = (b * T + t) * H + h;
      const float *ot = o + row * dv, *dot = dout + row * dv;
      float acc = 0.0f;
      for (int64_t c = 0; c < dv; ++c) acc += dot[c] * ot[c];
      Dv[t] = acc;
    }
    const float *V = kv + ((b * T) * H + h) * dkvw + dn;      /* [T, dv], row stride H*dkvw */
    float *dV = dkv + ((b * T) * H + h) * dkvw + dn;          /* [T, dv], row stride H*dkvw */
    const float *dO = dout + ((b * T) * H + h) * dv;          /* [T, dv], row stride H*dv */
    const int64_t nblk = (T + QB - 1) / QB;
    for (int64_t ib = nblk - 1; ib >= 0; --ib) { /* the last block covers every key */
      const int64_t t0 = ib * QB, t1 = t0 + QB < T ? t0 + QB : T, nq = t1 - t0, nk = t1;
      const float beta = ib == nblk - 1 ? 0.0f : 1.0f;
      dsc_cpu_sgemm_raw(0, 1, nq, nk, dqk, scale, Qc + t0 * dqk, dqk, Kc, dqk, 0.0f, S, nk);
      dsc_cpu_sgemm_raw(0, 1, nq, nk, dv, 1.0f, dO + t0 * H * dv, H * dv, V, H * dkvw, 0.0f, dP, nk);
      for (int64_t i = 0; i < nq; ++i) {
        const int64_t t = t0 + i;
        const float L = lse[(b * H + h) * T + t];
#ifdef DSC_VM_AVX2
        if (avx2)
          dsoftmax_row_avx2(t + 1, nk, L, Dv[t], scale, S + i * nk, dP + i * nk);
        else
#endif
          dsoftmax_row(t + 1, nk, L, Dv[t], scale, S + i * nk, dP + i * nk);
      }
      dsc_cpu_sgemm_raw(0, 0, nq, dqk, nk, 1.0f, dP, nk, Kc, dqk, 0.0f, dQc, dqk);
      dsc_cpu_sgemm_raw(1, 0, nk, dqk, nq, 1.0f, dP, nk, Qc + t0 * dqk, dqk, beta, dKc, dqk);
      dsc_cpu_sgemm_raw(1, 0, nk, dv, nq, 1.0f, S, nk, dO + t0 * H * dv, H * dv, beta, dV, H * dkvw);
      for (int64_t i = 0; i < nq; ++i) {
        const int64_t row = (b * T + t0 + i) * H + h;
        memcpy(dq + row * dqk, dQc + i * dqk, (size_t)dn * sizeof(float));
        memcpy(dq_pe + row * dr, dQc + i * dqk + dn, (size_t)dr * sizeof(float));
      }
    }
    float *dkp_h = dkpe_h + (b * H + h) * T * dr; /* [T, dr] */
    for (int64_t j = 0; j < T; ++j) {
      memcpy(dkv + ((b * T + j) * H + h) * dkvw, dKc + j * dqk, (size_t)dn * sizeof(float));
      memcpy(dkp_h + j * dr, dKc + j * dqk + dn, (size_t)dr * sizeof(float));
    }
  );
  /* dkpe[b,j] = sum_h dkpe_h[b,h,j] in head order. */
  DSC_CPU_FOR(B * T * H * dr >= DSC_CPU_PAR_MIN, ctx->num_threads, bj, B * T,
    const int64_t b = bj / T, j = bj % T;
    float *d = dkpe + bj * dr;
    for (int64_t c = 0; c < dr; ++c) d[c] = 0.0f;
    for (int64_t h = 0; h < H; ++h) {
      const float *src = dkpe_h + ((b * H + h) * T + j) * dr;
      for (int64_t c = 0; c < dr; ++c) d[c] += src[c];
    }
  );
  return DSC_OK;
}

/* ---- cache rows ------------------------------------------------------------ */

static int64_t fp8_scale_off(int64_t R) { return (R + 3) & ~(int64_t)3; }

static void row_store(dsc_dtype cdt, int64_t R, int64_t dr, const float *ckv, const float *kpe,
                      unsigned char *row) {
  if (cdt == DSC_DTYPE_FLOAT32) {
    memcpy(row, ckv, (size_t)R * 4);
    memcpy(row + R * 4, kpe, (size_t)dr * 4);
  } else if (cdt == DSC_DTYPE_BFLOAT16) {
    uint16_t *r16 = (uint16_t *)row;
    for (int64_t c = 0; c < R; ++c) r16[c] = dsc_f32_to_bf16(ckv[c]);
    for (int64_t c = 0; c < dr; ++c) r16[R + c] = dsc_f32_to_bf16(kpe[c]);
  } else { /* E4M3 latent in 1x128 tiles, bf16 rope */
    const int64_t nb = (R + 127) / 128, so = fp8_scale_off(R);
    for (int64_t kb = 0; kb < nb; ++kb) {
      const int64_t c0 = kb * 128, c1 = c0 + 128 < R ? c0 + 128 : R;
      float amax = 0.0f;
      for (int64_t c = c0; c < c1; ++c) amax = fmaxf(amax, fabsf(ckv[c]));
      const float sc = fmaxf(amax, 1e-4f) / DSC_FP8_E4M3_MAX;
      for (int64_t c = c0; c < c1; ++c) row[c] = dsc_f32_to_e4m3(ckv[c] / sc);
      memcpy(row + so + kb * 4, &sc, 4);
    }
    unsigned char *rp = row + so + nb * 4;
    for (int64_t c = 0; c < dr; ++c) {
      const uint16_t v = dsc_f32_to_bf16(kpe[c]);
      memcpy(rp + 2 * c, &v, 2);
    }
  }
}

/* Widen one cache row into f32 [R + dr]. */
static void row_load(dsc_dtype cdt, int64_t R, int64_t dr, const unsigned char *row, float *out) {
  if (cdt == DSC_DTYPE_FLOAT32) {
    memcpy(out, row, (size_t)(R + dr) * 4);
  } else if (cdt == DSC_DTYPE_BFLOAT16) {
    const uint16_t *r16 = (const uint16_t *)row;
    for (int64_t c = 0; c < R + dr; ++c) out[c] = dsc_bf16_to_f32(r16[c]);
  } else {
    const int64_t nb = (R + 127) / 128, so = fp8_scale_off(R);
    for (int64_t kb = 0; kb < nb; ++kb) {
      float sc;
      memcpy(&sc, row + so + kb * 4, 4);
      const int64_t c0 = kb * 128, c1 = c0 + 128 < R ? c0 + 128 : R;
      for (int64_t c = c0; c < c1; ++c) out[c] = dsc_e4m3_to_f32(row[c]) * sc;
    }
    const unsigned char *rp = row + so + nb * 4;
    for (int64_t c = 0; c < dr; ++c) {
      uint16_t v;
      memcpy(&v, rp + 2 * c, 2);
      out[R + c] = dsc_bf16_to_f32(v);
    }
  }
}

dsc_status dsc_cpu_mla_cache_write(dsc_context *ctx, dsc_dtype cdt, int64_t R, int64_t dr,
                                   int64_t row_bytes, int64_t n, const int64_t *slots /* [n] */,
                                   const float *ckv /* [n,R] */, const float *kpe /* [n,dr] */,
                                   void *pool /* [n_slots, row_bytes] */) {
  (void)ctx;
  DSC_CPU_FOR(n * R >= DSC_CPU_PAR_MIN, ctx->num_threads, i, n,
    if (slots[i] < 0) continue;
    row_store(cdt, R, dr, ckv + i * R, kpe + i * dr, (unsigned char *)pool + slots[i] * row_bytes);
  );
  return DSC_OK;
}

dsc_status dsc_cpu_mla_cache_read(dsc_context *ctx, dsc_dtype cdt, int64_t R, int64_t dr,
                                  int64_t row_bytes, int64_t n, const int64_t *slots /* [n] */,
                                  const void *pool, float *ckv /* [n,R] */, float *kpe /* [n,dr] */) {
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, (size_t)(R + dr) * sizeof(float), &ws));
  float *row = (float *)ws; /* [R + dr] */
  for (int64_t i = 0; i < n; ++i) {
    row_load(cdt, R, dr, (const unsigned char *)pool + slots[i] * row_bytes, row);
    memcpy(ckv + i * R, row, (size_t)R * 4);
    memcpy(kpe + i * dr, row + R, (size_t)dr * 4);
  }
  return DSC_OK;
}

/* ---- prefill through BLAS ----------------------------------------------------------
 *
 * Outside generation's row-invariant steps (prefill, multi-token calls), a run of >=
 * MLA_PREFILL_MIN consecutive query rows of one sequence (same block table, kv_len growing by
 * one: a prompt) is attended with GEMMs: the sequence's latent rows are widened once into
 * Lc [S, R+dr], and for a chunk of rows, all heads at once (the latent is shared by the
 * heads): S = scale [q_lat | q_pe] Lc^T  [rows*H, S'], softmax per row up to its kv_len
 * (vector exp), o_lat = P Lc[:, :R]. Chunks of at most MLA_PREFILL_FLOATS scores, in
 * parallel over (run, chunk) with single-threaded sgemm: the result does not depend on the
 * thread count. Other rows take the one-pass loop below. */
#define MLA_PREFILL_MIN 4
#define MLA_PREFILL_FLOATS ((int64_t)1 << 19)

typedef struct {
  int64_t r0, r1; /* query rows [r0, r1) */
  int64_t lc;     /* first row of the run's latents in Lc */
} prefill_chunk;

/* The run of prefill rows starting at r ends at the returned row (exclusive). */
static int64_t run_end(int64_t NQ, const int64_t *kv_len, const int64_t *table_off, int64_t r) {
  int64_t e = r + 1;
  while (e < NQ && kv_len[r] > 0 && table_off[e] == table_off[r] && kv_len[e] == kv_len[e - 1] + 1) ++e;
  return e;
}

/* Query rows per chunk of a run attending to S keys with H heads. */
static int64_t chunk_rows(int64_t H, int64_t S) {
  const int64_t q = MLA_PREFILL_FLOATS / (H * S);
  return q > 1 ? q : 1;
}

static dsc_status prefill_blas(dsc_context *ctx, dsc_dtype cdt, int64_t R, int64_t dr, int64_t row_bytes,
                               int64_t block_size, const void *pool, int64_t NQ, int64_t H, float scale,
                               const float *q_lat, const float *q_pe, const int64_t *kv_len,
                               const int64_t *table_off, const int32_t *tables, float *o_lat,
                               uint8_t *done /* [NQ] */) {
  /* the runs: chunks, latent rows, the largest chunk */
  int64_t nrun_rows = 0, nchunk = 0, lat_rows = 0, maxq = 1, maxs = 1;
  for (int64_t r = 0, e; r < NQ; r = e) {
    e = run_end(NQ, kv_len, table_off, r);
    if (kv_len[r] <= 0 || e - r < MLA_PREFILL_MIN) continue;
    const int64_t S = kv_len[e - 1], q = chunk_rows(H, S), rows = q < e - r ? q : e - r;
    nchunk += (e - r + q - 1) / q;
    lat_rows += S;
    nrun_rows += e - r;
    maxq = rows > maxq ? rows : maxq;
    maxs = S > maxs ? S : maxs;
  }
  if (nchunk == 0) return DSC_OK;
  const int64_t W = R + dr, nthr = ctx->num_threads > 0 ? ctx->num_threads : 1;
  const int64_t per = maxq * H * W + maxq * H * maxs; /* Qc, S of one chunk */
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, (size_t)(lat_rows * W + nthr * per) * sizeof(float) +
                                 (size_t)nchunk * sizeof(prefill_chunk), &ws));
  float *Lc = (float *)ws;                                 /* [lat_rows, W] */
  float *scr = Lc + lat_rows * W;                          /* [nthr, per] */
  prefill_chunk *ch = (prefill_chunk *)(scr + nthr * per); /* [nchunk] */
  int64_t k = 0, lc = 0;
  for (int64_t r = 0, e; r < NQ; r = e) {
    e = run_end(NQ, kv_len, table_off, r);
    if (kv_len[r] <= 0 || e - r < MLA_PREFILL_MIN) continue;
    const int64_t S = kv_len[e - 1], q = chunk_rows(H, S);
    for (int64_t j = 0; j < S; ++j) {
      const int64_t blk = tables[table_off[r] + j / block_size];
      row_load(cdt, R, dr, (const unsigned char *)pool + (blk * block_size + j % block_size) * row_bytes,
               Lc + (lc + j) * W);
    }
    for (int64_t c0 = r; c0 < e; c0 += q) {
      ch[k].r0 = c0;
      ch[k].r1 = c0 + q < e ? c0 + q : e;
      ch[k].lc = lc;
      ++k;
    }
    for (int64_t i = r; i < e; ++i) done[i] = 1;
    lc += S;
  }
  const int avx2 = DSC_VM_USE_AVX2(ctx);
  (void)avx2;
  const int par = nthr > 1 && nchunk > 1 && nrun_rows * H * maxs * W >= 16 * DSC_CPU_PAR_MIN;
  dsc_cpu_blas_serial();
  DSC_CPU_FOR_DYN(par, ctx->num_threads, c, nchunk,
    const int64_t r0 = ch[c].r0, nq = ch[c].r1 - r0, S = kv_len[ch[c].r1 - 1];
    const float *L = Lc + ch[c].lc * W;              /* [S, W] */
    float *Qc = scr + (par ? thread_id() : 0) * per; /* [nq*H, W] */
    float *Sc = Qc + maxq * H * W;                   /* [nq*H, S] */
    for (int64_t i = 0; i < nq * H; ++i) {
      memcpy(Qc + i * W, q_lat + (r0 * H + i) * R, (size_t)R * sizeof(float));
      memcpy(Qc + i * W + R, q_pe + (r0 * H + i) * dr, (size_t)dr * sizeof(float));
    }
    dsc_cpu_sgemm_raw(0, 1, nq * H, S, W, scale, Qc, W, L, W, 0.0f, Sc, S);
    for (int64_t i = 0; i < nq * H; ++i) {
      const int64_t n = kv_len[r0 + i / H]; /* keys of this row's position */
#ifdef DSC_VM_AVX2
      if (avx2)
        (void)softmax_row_avx2(n, S, Sc + i * S);
      else
#endif
        (void)softmax_row(n, S, Sc + i * S);
    }
    dsc_cpu_sgemm_raw(0, 0, nq * H, R, S, 1.0f, Sc, S, L, W, 0.0f, o_lat + r0 * H * R, R);
  );
  return DSC_OK;
}

dsc_status dsc_cpu_mla_decode_attn(dsc_context *ctx, dsc_dtype cdt, int64_t R, int64_t dr,
                                   int64_t row_bytes, int64_t block_size, const void *pool,
                                   int64_t NQ, int64_t H, int64_t max_kv, float scale,
                                   const float *q_lat /* [NQ,H,R] */, const float *q_pe /* [NQ,H,dr] */,
                                   const int64_t *kv_len /* [NQ] */,
                                   const int64_t *table_off /* [NQ] */,
                                   const int32_t *tables, float *o_lat /* [NQ,H,R] */) {
  (void)max_kv; /* the CPU walks each row's own length */
  const int64_t HG = MLA_HEAD_GROUP, ngrp = (H + HG - 1) / HG;
  const int64_t nthr = ctx->num_threads > 0 ? ctx->num_threads : 1;
  const int64_t per = R + dr + 2 * HG; /* row [R+dr], m [HG], l [HG] */
  uint8_t *done = NULL; /* [NQ] rows the BLAS prefill computed */
  if (!ctx->row_invariant && NQ >= MLA_PREFILL_MIN) {
    done = (uint8_t *)calloc((size_t)NQ, 1);
    if (!done) return dsc_error(DSC_ERR_OUT_OF_MEMORY, "dsc_cpu_mla_decode_attn", "out of host memory");
    const dsc_status st = prefill_blas(ctx, cdt, R, dr, row_bytes, block_size, pool, NQ, H, scale, q_lat,
                                       q_pe, kv_len, table_off, tables, o_lat, done);
    if (st != DSC_OK) {
      free(done);
      return st;
    }
  }
  void *ws = NULL;
  {
    const dsc_status st = dsc_workspace(ctx, (size_t)(nthr * per) * sizeof(float), &ws);
    if (st != DSC_OK) {
      free(done);
      return st;
    }
  }
  int64_t work = 0;
  for (int64_t r = 0; r < NQ; ++r) work += done && done[r] ? 0 : kv_len[r];
  /* Decode at batch 1 is 1..3 query rows over a few hundred latents: microseconds of work,
   * less than waking the OpenMP team (which also dominated the draft-verifying steps of
   * speculative decoding). Each task is computed by one thread either way, so the result
   * does not depend on this choice. */
  const int par = NQ * ngrp > 1 && work * H * (R + dr) >= MLA_DECODE_PAR_MIN;
  (void)par;
  DSC_CPU_FOR_DYN(par, ctx->num_threads, task, NQ * ngrp,
    const int64_t r = task / ngrp, h0 = (task % ngrp) * HG;
    if (done && done[r]) continue;
    const int64_t h1 = h0 + HG < H ? h0 + HG : H;
    float *row = (float *)ws + thread_id() * per; /* [R + dr] */
    float *m = row + R + dr, *l = m + HG;         /* [HG] each */
    for (int64_t h = h0; h < h1; ++h) {
      memset(o_lat + (r * H + h) * R, 0, (size_t)R * sizeof(float));
      m[h - h0] = -INFINITY;
      l[h - h0] = 0.0f;
    }
    const int64_t S = kv_len[r];
    for (int64_t j = 0; j < S; ++j) {
      const int64_t blk = tables[table_off[r] + j / block_size];
      row_load(cdt, R, dr, (const unsigned char *)pool + (blk * block_size + j % block_size) * row_bytes,
               row);
      for (int64_t h = h0; h < h1; ++h) {
        const float s = scale * (dotf(q_lat + (r * H + h) * R, row, R) +
                                 dotf(q_pe + (r * H + h) * dr, row + R, dr));
        float *acc = o_lat + (r * H + h) * R;
        const int64_t g = h - h0;
        if (s > m[g]) { /* rescale what was accumulated under the old maximum */
          const float c = expf(m[g] - s);
          for (int64_t k = 0; k < R; ++k) acc[k] *= c;
          l[g] *= c;
          m[g] = s;
        }
        const float pj = expf(s - m[g]);
        l[g] += pj;
        for (int64_t k = 0; k < R; ++k) acc[k] += pj * row[k];
      }
    }
    if (S > 0)
      for (int64_t h = h0; h < h1; ++h) {
        float *acc = o_lat + (r * H + h) * R;
        const float inv = 1.0f / l[h - h0];
        for (int64_t k = 0; k < R; ++k) acc[k] *= inv;
      }
  );
  free(done);
  return DSC_OK;
}
