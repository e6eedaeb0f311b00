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
 *   fixed-order reduction: deterministic).
 * Decode (absorbed): s_j = scale * (q_lat . ckv_j + q_pe . kpe_j), o_lat = softmax(s) @ ckv,
 *   one pass with an online softmax, reading each latent row once per group of heads.
 *
 * Cache rows (one token of one layer): FLOAT32 / BFLOAT16: [ckv (R) | kpe (dr)];
 * FLOAT8_E4M3FN: ckv in E4M3 (R bytes), then ceil(R/128) float32 scales at byte
 * offset round4(R) (scale = max(amax, 1e-4) / 448 per 128 values), then kpe in bf16.
 */
#include <math.h>
#include <string.h>

#include "cpu_common.h"
#include "fp8_format.h"

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

dsc_status dsc_cpu_mla_attn_fwd(dsc_context *ctx, int64_t B, int64_t T, int64_t H, int64_t dn,
                                int64_t dr, int64_t dv, float scale,
                                const float *q /* [B,T,H,dqk] */, const float *q_pe /* [B,T,H,dr] */,
                                const float *kv /* [B,T,H,dn+dv] */, const float *kpe /* [B,T,dr] */,
                                float *o /* [B,T,H,dv] */, float *lse /* [B,H,T] */) {
  const int64_t dqk = dn + dr, dkv = dn + dv, nthr = ctx->num_threads > 0 ? ctx->num_threads : 1;
  if (B * T * H == 0) return DSC_OK;
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, (size_t)(nthr * T) * sizeof(float), &ws));
  float *sbuf = (float *)ws; /* [nthr, T] scores of one query row */
  DSC_CPU_FOR_DYN(B * H * T * T >= DSC_CPU_PAR_MIN, ctx->num_threads, bh, B * H,
    const int64_t b = bh / H, h = bh % H;
    float *s = sbuf + thread_id() * T; /* [T] */
    for (int64_t t = 0; t < T; ++t) {
      const float *qn = q + ((b * T + t) * H + h) * dqk;   /* [dn] */
      const float *qp = q_pe + ((b * T + t) * H + h) * dr; /* [dr] */
      float m = -INFINITY;
      for (int64_t j = 0; j <= t; ++j) {
        const float *kn = kv + ((b * T + j) * H + h) * dkv; /* [dn] */
        const float *kp = kpe + (b * T + j) * dr;           /* [dr] */
        s[j] = scale * (dotf(qn, kn, dn) + dotf(qp, kp, dr));
        if (s[j] > m) m = s[j];
      }
      float l = 0.0f;
      for (int64_t j = 0; j <= t; ++j) {
        s[j] = expf(s[j] - m);
        l += s[j];
      }
      float *ot = o + ((b * T + t) * H + h) * dv; /* [dv] */
      for (int64_t c = 0; c < dv; ++c) ot[c] = 0.0f;
      for (int64_t j = 0; j <= t; ++j) {
        const float *vj = kv + ((b * T + j) * H + h) * dkv + dn; /* [dv] */
        const float pj = s[j] / l;
        for (int64_t c = 0; c < dv; ++c) ot[c] += pj * vj[c];
      }
      lse[(b * H + h) * T + t] = m + logf(l);
    }
  );
  return DSC_OK;
}

dsc_status dsc_cpu_mla_attn_bwd(dsc_context *ctx, int64_t B, int64_t T, int64_t H, int64_t dn,
                                int64_t dr, int64_t dv, float scale, const float *q,
                                const float *q_pe, const float *kv, const float *kpe,
                                const float *o, const float *lse,
                                const float *dout /* [B,T,H,dv] */, float *dq /* [B,T,H,dqk] */,
                                float *dq_pe /* [B,T,H,dr] */, float *dkv /* [B,T,H,dn+dv] */,
                                float *dkpe /* [B,T,dr] */) {
  const int64_t dqk = dn + dr, dkvw = dn + dv, nthr = ctx->num_threads > 0 ? ctx->num_threads : 1;
  if (B * T == 0) return DSC_OK;
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, (size_t)(nthr * T + B * H * T * dr) * sizeof(float), &ws));
  float *sbuf = (float *)ws;           /* [nthr, T] */
  float *dkpe_h = sbuf + nthr * T;     /* [B,H,T,dr] per-head partials of dkpe */
  DSC_CPU_FOR_DYN(B * H * T * T >= DSC_CPU_PAR_MIN, ctx->num_threads, bh, B * H,
    const int64_t b = bh / H, h = bh % H;
    float *p = sbuf + thread_id() * T;             /* [T] */
    float *dkp_h = dkpe_h + (b * H + h) * T * dr;  /* [T, dr] */
    memset(dkp_h, 0, (size_t)(T * dr) * sizeof(float));
    for (int64_t j = 0; j < T; ++j) memset(dkv + ((b * T + j) * H + h) * dkvw, 0, (size_t)dkvw * sizeof(float));
    for (int64_t t = 0; t < T; ++t) {
      const int64_t row = (b * T + t) * H + h;
      const float *qn = q + row * dqk, *qp = q_pe + row * dr;
      const float *ot = o + row * dv, *dot = dout + row * dv;
      float *dqn = dq + row * dqk, *dqp = dq_pe + row * dr;
      const float L = lse[(b * H + h) * T + t];
      const float Dt = dotf(dot, ot, dv);
      for (int64_t c = 0; c < dn; ++c) dqn[c] = 0.0f;
      for (int64_t c = 0; c < dr; ++c) dqp[c] = 0.0f;
      for (int64_t j = 0; j <= t; ++j) {
        const float *kn = kv + ((b * T + j) * H + h) * dkvw, *vj = kn + dn;
        const float *kp = kpe + (b * T + j) * dr;
        p[j] = expf(scale * (dotf(qn, kn, dn) + dotf(qp, kp, dr)) - L);
        const float ds = scale * p[j] * (dotf(dot, vj, dv) - Dt);
        float *dkn = dkv + ((b * T + j) * H + h) * dkvw, *dvj = dkn + dn;
        float *dkp = dkp_h + j * dr;
        for (int64_t c = 0; c < dn; ++c) {
          dqn[c] += ds * kn[c];
          dkn[c] += ds * qn[c];
        }
        for (int64_t c = 0; c < dr; ++c) {
          dqp[c] += ds * kp[c];
          dkp[c] += ds * qp[c];
        }
        for (int64_t c = 0; c < dv; ++c) dvj[c] += p[j] * dot[c];
      }
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
                                   int64_t row_bytes, int64_t n, const int64_t *slots /* [n] host */,
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
                                  int64_t row_bytes, int64_t n, const int64_t *slots /* [n] host */,
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

dsc_status dsc_cpu_mla_decode_attn(dsc_context *ctx, dsc_dtype cdt, int64_t R, int64_t dr,
                                   int64_t row_bytes, int64_t block_size, const void *pool,
                                   int64_t NQ, int64_t H, float scale,
                                   const float *q_lat /* [NQ,H,R] */, const float *q_pe /* [NQ,H,dr] */,
                                   const int64_t *kv_len /* [NQ] host */,
                                   const int64_t *table_off /* [NQ] host */,
                                   const int32_t *tables /* host */, float *o_lat /* [NQ,H,R] */) {
  const int64_t HG = MLA_HEAD_GROUP, ngrp = (H + HG - 1) / HG;
  const int64_t nthr = ctx->num_threads > 0 ? ctx->num_threads : 1;
  const int64_t per = R + dr + 2 * HG; /* row [R+dr], m [HG], l [HG] */
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, (size_t)(nthr * per) * sizeof(float), &ws));
  int64_t work = 0;
  for (int64_t r = 0; r < NQ; ++r) work += kv_len[r];
  /* Decode at batch 1 is 1..3 query rows over a few hundred latents: microseconds of work,
   * less than waking the OpenMP team (which also dominated the draft-verifying steps of
   * speculative decoding). Each task is computed by one thread either way, so the result
   * does not depend on this choice. */
  const int par = NQ * ngrp > 1 && work * H * (R + dr) >= MLA_DECODE_PAR_MIN;
  (void)par;
  DSC_CPU_FOR_DYN(par, ctx->num_threads, task, NQ * ngrp,
    const int64_t r = task / ngrp, h0 = (task % ngrp) * HG;
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
  return DSC_OK;
}
