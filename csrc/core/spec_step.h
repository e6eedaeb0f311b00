/*
 * core/spec_step.h -- the batch layouts of generation's device-resident speculative (MTP)
 * decode step, one row at a time, shared by the CPU (cpu/sample.c) and the CUDA kernels
 * (kernels/sample.cu): both loop over rows and call these, so the CPU tests run the
 * kernels' own index math. backend.h states the ops (spec_inputs, spec_verify, spec_draft).
 *
 * Legend: B sequences (row b = sequence b in every batch), K num_draft, Tv = 1 + K,
 * mx max_new_tokens. Per sequence (device): state [2B] = alive, ngen; out [B, mx];
 * drafts [B, K]; nd [B] the drafts made for (or, after verification, wanted for) the next
 * verification; acc [B] the drafts accepted by the last verification; plen [B].
 * The pending token (emitted, not yet fed) is out[ngen - 1] at position P = plen + ngen - 1.
 * Padding rows: position -1, id 0 (every index stays in range).
 */
#ifndef DSC_CORE_SPEC_STEP_H_
#define DSC_CORE_SPEC_STEP_H_

#include <stdint.h>

#include "numeric.h" /* DSC_HD */

enum {
  DSC_SPEC_MAIN = 0,  /* main model [B, Tv]: the pending token + its nd drafts at P .. P + nd */
  DSC_SPEC_CATCH = 1, /* MTP catch-up [B, Tv] after verification: the acc + 1 positions just
                       * kept, P_old .. P_old + acc, tokens one ahead, hidden rows b*Tv + j of
                       * the main pass; drafting row b*Tv + acc; only sequences with nd > 0 */
  DSC_SPEC_CHAIN = 2  /* MTP chain [B, 1], draft j >= 1: the token draft j - 1 at P + j - 1,
                       * hidden row b (the previous MTP pass's output); sequences with nd > j */
};

/* The record of one verification of a sequence (what the host replays per chunk): emitted
 * tokens, accepted drafts among them (they come first), drafts verified. 0: not alive. */
static inline DSC_HD int32_t dsc_spec_rec(int32_t ne, int32_t a, int32_t kb) { return ne | (a << 8) | (kb << 16); }
static inline DSC_HD int32_t dsc_spec_rec_ne(int32_t r) { return r & 0xff; }
static inline DSC_HD int32_t dsc_spec_rec_acc(int32_t r) { return (r >> 8) & 0xff; }
static inline DSC_HD int32_t dsc_spec_rec_kb(int32_t r) { return (r >> 16) & 0xff; }

/* Drafts wanted for the next step: never past max_new_tokens (generate.c: plan_drafts). */
static inline DSC_HD int32_t dsc_spec_wanted(int32_t alive, int32_t ngen, int32_t K, int32_t mx) {
  int32_t k = K;
  const int32_t room = mx - ngen - 1;
  if (k > room) k = room;
  return alive && k > 0 ? k : 0;
}

/* Row j of sequence b of a layout (T = Tv, or 1 for the chain; j < T): ids, pos [B*T] and
 * for the MTP layouts gidx [B*T] (the hidden row) and last [B] (written at j == 0). */
static inline DSC_HD void dsc_spec_inputs_row(int32_t mode, int64_t b, int32_t j, int32_t T, int32_t K,
                                              int32_t dj, int32_t mx, const int32_t *plen, const int32_t *state,
                                              int64_t B, const int32_t *out, const int32_t *drafts,
                                              const int32_t *nd, const int32_t *acc, int32_t *ids, int32_t *pos,
                                              int32_t *gidx, int32_t *last) {
  const int64_t r = b * T + j;
  const int32_t alive = state[b], ngen = state[B + b];
  const int32_t P = plen[b] + ngen - 1; /* the pending token's position (valid when alive) */
  int32_t id = 0, p = -1, g = (int32_t)r;
  if (mode == DSC_SPEC_MAIN) {
    if (alive && j <= nd[b]) {
      id = j == 0 ? out[b * mx + ngen - 1] : drafts[b * K + j - 1];
      p = P + j;
    }
  } else if (mode == DSC_SPEC_CATCH) {
    const int32_t a = acc[b];
    if (alive && nd[b] > 0 && j <= a) {
      id = out[b * mx + ngen - 1 - a + j]; /* the tokens emitted by the verification */
      p = P - a - 1 + j;
    }
    if (j == 0) last[b] = (int32_t)(b * T) + (alive && nd[b] > 0 ? a : 0);
  } else {
    g = (int32_t)b;
    if (alive && nd[b] > dj) {
      id = drafts[b * K + dj - 1];
      p = P + dj - 1;
    }
    last[b] = (int32_t)b;
  }
  ids[r] = id >= 0 ? id : 0; /* a draft -1 (nothing to sample): its verification ends the row */
  pos[r] = p;
  if (gidx) gidx[r] = g;
}

#endif /* DSC_CORE_SPEC_STEP_H_ */
