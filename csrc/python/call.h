/*
 * call.h -- the bookkeeping of one Python wrapper call, shared by the csrc/python/ops_*.c
 * files: BEGIN declares the frame; IN/OUT import a required array; OPT_* allow None;
 * USE_CTX runs the call on a given context (a model's, a cache's, saved activations');
 * RUN calls the op with the GIL released, on that context or else on one taken from the
 * pool of the first array's device; END gives the context back and releases everything.
 * A wrapper is `PyObject *f(PyObject *m, PyObject *args)`: the macros use `m`.
 */
#ifndef DSC_PY_CALL_H_
#define DSC_PY_CALL_H_

#include <string.h>

#include "glue.h"

/* ---- one call's bookkeeping -------------------------------------------------- */
#define BEGIN(fname)                                                   \
  dsc_py_frame f;                                                      \
  memset(&f, 0, sizeof f);                                             \
  f.st = dsc_py_get_state(m);                                          \
  f.fn = (fname);                                                      \
  PyObject *ret = NULL;                                                \
  PyObject *call_pc = NULL; /* the context capsule, entered */         \
  dsc_py_ctx *call_c = NULL;                                           \
  dsc_context *ctx = NULL;                                             \
  dsc_status s = DSC_OK;                                               \
  int call_own = 0; /* call_c is USE_CTX's context (keeps its own stream) */ \
  (void)ctx;                                                           \
  (void)s;

#define IMPORT(var, obj, name, writable, optional)                              \
  DLTensor *var = dsc_py_frame_add(&f, (obj), (name), (writable), (optional)); \
  if (!var && ((obj) != Py_None || !(optional))) goto out;

#define IN(var, obj, name) IMPORT(var, obj, name, 0, 0)
#define OUT(var, obj, name) IMPORT(var, obj, name, 1, 0)
#define OPT_IN(var, obj, name) IMPORT(var, obj, name, 0, 1)
#define OPT_OUT(var, obj, name) IMPORT(var, obj, name, 1, 1)

/* Run on the context of capsule `cap` (may wait for another thread; raises instead of
 * waiting forever, see dsc_py_ctx_enter). A CUDA context keeps its own stream (a model's,
 * Model.set_stream); when the call's arrays came on another stream, the context's stream
 * first waits for that one and, at END, that one waits for the context's (events, no host
 * wait: dsc_py_join_stream). */
#define USE_CTX(cap)                                                   \
  do {                                                                 \
    dsc_py_ctx *c_ = dsc_py_ctx_get(cap);                              \
    if (!c_ || dsc_py_ctx_enter(f.st, c_, f.fn, 0) < 0) goto out;      \
    call_pc = Py_NewRef(cap);                                          \
    call_c = c_;                                                       \
    ctx = c_->ctx;                                                     \
    call_own = 1;                                                      \
    if (dsc_py_join_stream(f.st, ctx, &f) < 0) goto out;               \
  } while (0)

/* The context of the call: the one USE_CTX chose, else a pool context of the first
 * array's device (never waits), moved to the call's stream (dsc_context_set_stream: the
 * new stream waits for the context's earlier work, no host wait). */
#define GET_CTX()                                                      \
  do {                                                                 \
    if (!call_c) {                                                     \
      call_pc = dsc_py_pool_take(f.st, f.v[0]->t.device, f.fn);        \
      if (!call_pc) goto out;                                          \
      call_c = dsc_py_ctx_get(call_pc);                                \
      ctx = call_c->ctx;                                               \
      if (dsc_py_use_stream(f.st, ctx, &f) < 0) goto out;              \
    }                                                                  \
  } while (0)

#define RUN(call)                        \
  do {                                   \
    GET_CTX();                           \
    DSC_PY_CALL(s, call);                \
    if (s != DSC_OK) {                   \
      dsc_py_raise(f.st, s);             \
      goto out;                          \
    }                                    \
  } while (0)

/* Run `call` (setting s) like RUN without its check, with the context (taken already) in
 * math mode `math` (dsc_math_mode); the context's own mode is given back after: pool
 * contexts are shared by every op. */
#define RUN_IN_MODE(math, call)                                          \
  do {                                                                   \
    int32_t mode0_ = DSC_MATH_DEFAULT;                                   \
    s = dsc_context_get_math_mode(ctx, &mode0_);                         \
    if (s == DSC_OK) s = dsc_context_set_math_mode(ctx, (int32_t)(math)); \
    if (s == DSC_OK) {                                                   \
      DSC_PY_CALL(s, call);                                              \
      (void)dsc_context_set_math_mode(ctx, mode0_);                      \
    }                                                                    \
  } while (0)

#define END                       \
  goto out;                       \
  out:                            \
  if (call_c && call_own) dsc_py_unjoin_stream(f.st, call_c->ctx, &f, &ret); \
  if (call_c) dsc_py_ctx_leave(call_c); \
  Py_XDECREF(call_pc);            \
  dsc_py_frame_release(&f);       \
  return ret;

#endif /* DSC_PY_CALL_H_ */
