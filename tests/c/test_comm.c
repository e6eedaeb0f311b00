/*
 * test_comm.c -- the communicator ABI from C on a world of one (dsc_comm_create_self): every
 * collective against what it must be for one rank (a copy), the settings, the statistics,
 * split, bad arguments (an error naming the function and the argument, never a crash).
 * Multi-process MPI runs are tests/test_dist.py's. Also built with ASan/UBSan by
 * tests/c/run_sanitized.sh. Closing line: "N passed, N failed".
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "deepseek_c.h"

static const DLDataType F32 = {kDLFloat, 32, 1};

/* A CPU DLTensor over caller memory, contiguous (strides NULL). */
static DLTensor mk(void *data, DLDataType dt, int ndim, int64_t *shape) {
  DLTensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.device.device_type = kDLCPU;
  t.ndim = ndim;
  t.dtype = dt;
  t.shape = shape;
  return t;
}

static float frand(uint64_t *s) {
  *s = *s * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((double)(*s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void test_self_collectives(dsc_context *ctx) {
  dsc_comm *c = NULL;
  CHECK(dsc_comm_create_self(&c) == DSC_OK && c, "create_self: %s", dsc_last_error());
  if (!c) return;
  CHECK(dsc_comm_rank(c) == 0 && dsc_comm_size(c) == 1, "rank/size");
  CHECK(dsc_comm_backend_of(c) == DSC_COMM_BACKEND_SELF && dsc_comm_backend_of(NULL) == -1, "backend");
  DLDevice dev;
  CHECK(dsc_comm_device(c, &dev) == DSC_OK && dev.device_type == kDLCPU, "device");

  uint64_t seed = 42;
  float x[12], y[12];
  for (int i = 0; i < 12; ++i) x[i] = frand(&seed), y[i] = NAN;
  int64_t sh[2] = {3, 4}, sh1[1] = {4}, shg[3] = {1, 3, 4};
  DLTensor tx = mk(x, F32, 2, sh), ty = mk(y, F32, 2, sh);
  for (int32_t op = 0; op < 2; ++op) {
    for (int i = 0; i < 12; ++i) y[i] = NAN;
    CHECK(dsc_comm_all_reduce(c, ctx, &tx, &ty, op) == DSC_OK, "all_reduce: %s", dsc_last_error());
    CHECK(!memcmp(x, y, sizeof x), "all_reduce op %d of one rank is a copy", (int)op);
  }
  /* reduce_scatter: x [1, 4] -> y [4] */
  float ys[4] = {NAN, NAN, NAN, NAN};
  int64_t shs[2] = {1, 4};
  DLTensor txs = mk(x, F32, 2, shs), tys = mk(ys, F32, 1, sh1);
  CHECK(dsc_comm_reduce_scatter(c, ctx, &txs, &tys, DSC_REDUCE_SUM) == DSC_OK && !memcmp(ys, x, sizeof ys),
        "reduce_scatter: %s", dsc_last_error());
  /* all_gather: [3, 4] -> [1, 3, 4] */
  float yg[12];
  for (int i = 0; i < 12; ++i) yg[i] = NAN;
  DLTensor tyg = mk(yg, F32, 3, shg);
  CHECK(dsc_comm_all_gather(c, ctx, &tx, &tyg) == DSC_OK && !memcmp(yg, x, sizeof yg), "all_gather: %s",
        dsc_last_error());
  float keep[12];
  memcpy(keep, x, sizeof keep);
  CHECK(dsc_comm_broadcast(c, ctx, &tx, 0) == DSC_OK && !memcmp(x, keep, sizeof x), "broadcast: %s",
        dsc_last_error());
  /* all-to-all-v: 3 rows to myself */
  int64_t sc[1] = {3}, rc[1] = {-1};
  CHECK(dsc_comm_exchange_counts(c, ctx, sc, rc) == DSC_OK && rc[0] == 3, "exchange_counts: %s", dsc_last_error());
  for (int i = 0; i < 12; ++i) y[i] = NAN;
  CHECK(dsc_comm_all_to_all_v(c, ctx, &tx, sc, &ty, rc) == DSC_OK && !memcmp(x, y, sizeof x), "a2a: %s",
        dsc_last_error());
  CHECK(dsc_comm_barrier(c, ctx) == DSC_OK && dsc_comm_synchronize(c, ctx) == DSC_OK, "barrier/sync");

  dsc_comm_stats st;
  memset(&st, 0, sizeof st);
  st.size = sizeof st;
  CHECK(dsc_comm_get_stats(c, &st) == DSC_OK && st.ops >= 7 && st.bytes_sent == 0, "stats: ops %lld sent %lld",
        (long long)st.ops, (long long)st.bytes_sent);
  dsc_comm_reset_stats(c);
  CHECK(dsc_comm_get_stats(c, &st) == DSC_OK && st.ops == 0, "reset_stats");

  /* settings */
  CHECK(dsc_comm_set_timeout(c, 2.5) == DSC_OK && dsc_comm_get_timeout(c) == 2.5, "timeout");
  CHECK(dsc_comm_set_timeout(c, 0.0) == DSC_ERR_INVALID_ARGUMENT && err_has("dsc_comm_set_timeout") &&
            err_has("seconds"), "timeout 0: %s", dsc_last_error());
  CHECK(dsc_comm_set_timeout(c, NAN) == DSC_ERR_INVALID_ARGUMENT, "timeout NaN");
  dsc_comm *s = NULL;
  CHECK(dsc_comm_split(c, 7, 0, &s) == DSC_OK && s && dsc_comm_size(s) == 1, "split: %s", dsc_last_error());
  dsc_comm_destroy(s);

  /* bad arguments: a status and a message, never a crash */
  int64_t bad[2] = {4, 3};
  DLTensor tb = mk(y, F32, 2, bad);
  CHECK(dsc_comm_all_reduce(c, ctx, &tx, &tb, DSC_REDUCE_SUM) != DSC_OK && err_has("dsc_comm_all_reduce"),
        "shape mismatch: %s", dsc_last_error());
  CHECK(dsc_comm_all_reduce(c, ctx, &tx, &ty, 7) != DSC_OK && err_has("op"), "bad op: %s", dsc_last_error());
  CHECK(dsc_comm_all_reduce(NULL, ctx, &tx, &ty, 0) != DSC_OK && err_has("comm"), "NULL comm: %s",
        dsc_last_error());
  CHECK(dsc_comm_all_reduce(c, ctx, NULL, &ty, 0) != DSC_OK, "NULL x");
  CHECK(dsc_comm_broadcast(c, ctx, &tx, 1) != DSC_OK && err_has("root"), "root 1 of 1: %s", dsc_last_error());
  int64_t sc_bad[1] = {-1};
  CHECK(dsc_comm_exchange_counts(c, ctx, sc_bad, rc) != DSC_OK, "negative count: %s", dsc_last_error());
  int64_t sc_big[1] = {4};
  CHECK(dsc_comm_all_to_all_v(c, ctx, &tx, sc_big, &ty, sc_big) != DSC_OK, "counts beyond x: %s",
        dsc_last_error());
  CHECK(dsc_comm_create_self(NULL) != DSC_OK, "create_self(NULL)");
  dsc_comm_destroy(c);
  dsc_comm_destroy(NULL);
}

int main(void) {
  dsc_context *ctx = NULL;
  dsc_context_options o;
  memset(&o, 0, sizeof o);
  o.size = sizeof o;
  o.device_type = kDLCPU;
  if (dsc_context_create(&o, &ctx) != DSC_OK) {
    printf("FAIL: cannot create a CPU context: %s\n", dsc_last_error());
    printf("%d passed, %d failed\n", g_pass, g_fail + 1);
    return 1;
  }
  test_self_collectives(ctx);
  dsc_context_destroy(ctx);
  printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail != 0;
}
