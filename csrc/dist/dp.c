/*
 * dist/dp.c -- what data parallelism needs besides the all-reduce itself: an agreement
 * check (every rank describes itself; all must match, or every rank gets the same error
 * naming what differs) and a hash for comparing replicated parameters across ranks.
 *
 * Legend: W ranks, n fields.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm_internal.h"
#include "dist.h"

dsc_status dsc_dist_agree(dsc_comm *c, dsc_context *ctx, const char *fn, int32_t n, const int64_t *fields,
                          const char *const *names) {
  const int32_t W = c->size;
  /* gathered through the communicator's device (NCCL needs device memory) */
  const size_t nb = (size_t)n * sizeof(int64_t);
  int64_t *all = (int64_t *)malloc((size_t)W * nb);
  void *dx = NULL, *dy = NULL;
  dsc_status st = all ? DSC_OK : dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
  const DLDevice host = {kDLCPU, 0};
  if (st == DSC_OK) st = dsc_malloc(ctx, nb, &dx);
  if (st == DSC_OK) st = dsc_malloc(ctx, (size_t)W * nb, &dy);
  if (st == DSC_OK) st = dsc_memcpy(ctx, dx, ctx->device, fields, host, nb);
  if (st == DSC_OK) st = dsc_comm_all_gather_raw(c, ctx, dx, dy, (int64_t)nb);
  if (st == DSC_OK && ctx->device.device_type != kDLCPU) st = dsc_comm_synchronize(c, ctx);
  if (st == DSC_OK) st = dsc_memcpy(ctx, all, host, dy, ctx->device, (size_t)W * nb);
  if (dx) dsc_free(ctx, dx);
  if (dy) dsc_free(ctx, dy);
  if (st != DSC_OK) {
    free(all);
    if (st == DSC_ERR_COMM) {
      char m[768];
      snprintf(m, sizeof m, "%s", dsc_last_error());
      return dsc_error(st, fn, "comm: the ranks could not compare their settings: %s", m);
    }
    return st;
  }
  for (int32_t i = 0; i < n; ++i) {
    int32_t bad = -1;
    for (int32_t q = 1; q < W && bad < 0; ++q)
      if (all[(size_t)q * n + i] != all[i]) bad = q;
    if (bad < 0) continue;
    char vals[320];
    size_t used = 0;
    for (int32_t q = 0; q < W && q < 16 && used < sizeof vals - 40; ++q) {
      int w = snprintf(vals + used, sizeof vals - used, "%srank %d: %lld", q ? ", " : "", (int)q,
                       (long long)all[(size_t)q * n + i]);
      if (w > 0) used += (size_t)w;
    }
    free(all);
    return dsc_error(DSC_ERR_COMM, fn,
                     "comm: the %d ranks disagree on %s (%s%s): every rank must pass the same settings", (int)W,
                     names[i], vals, W > 16 ? ", ..." : "");
  }
  free(all);
  return DSC_OK;
}

uint64_t dsc_dist_hash(const void *data, size_t n, uint64_t h) {
  /* FNV-1a over 8-byte words (then the tail), with a final mix: any changed bit changes it */
  const unsigned char *p = (const unsigned char *)data;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, p + i, 8);
    h ^= w;
    h *= 0x100000001B3ull;
    h ^= h >> 29;
  }
  for (; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001B3ull;
  }
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h;
}
