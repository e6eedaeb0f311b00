/*
 * call.h -- the bookkeeping of one Python wrapper call, shared by the csrc/python/ops_*.c
 * files: BEGIN declares the frame; IN/OUT import a required array; OPT_* allow None;
 * RUN calls the op on the context of the first array with the GIL released; END releases
 * everything. A wrapper is `PyObject *f(PyObject *m, PyObject *args)`: the macros use `m`.
 */
#ifndef DSC_PY_CALL_H_
#define DSC_PY_CALL_H_

#include <string.h>

#include "glue.h"

/* ---- one call's bookkeeping --------------------------------------------------
 * BEGIN declares the frame; IN/OUT import a required array; OPT_* allow None;
 * RUN calls the op on the context of the first array; END releases everything. */
#define BEGIN(fname)                                                   \
  dsc_py_frame f;                                                      \
  memset(&f, 0, sizeof f);                                             \
  f.st = dsc_py_get_state(m);                                          \
  f.fn = (fname);                                                      \
  PyObject *ret = NULL;                                                \
  PyThread_type_lock lock = NULL;                                      \
  dsc_context *ctx = NULL;                                             \
  dsc_status s = DSC_OK;                                               \
  (void)ctx;                                                           \
  (void)lock;                                                          \
  (void)s;

#define IMPORT(var, obj, name, writable, optional)                              \
  DLTensor *var = dsc_py_frame_add(&f, (obj), (name), (writable), (optional)); \
  if (!var && ((obj) != Py_None || !(optional))) goto out;

#define IN(var, obj, name) IMPORT(var, obj, name, 0, 0)
#define OUT(var, obj, name) IMPORT(var, obj, name, 1, 0)
#define OPT_IN(var, obj, name) IMPORT(var, obj, name, 0, 1)
#define OPT_OUT(var, obj, name) IMPORT(var, obj, name, 1, 1)

#define GET_CTX()                                             \
  do {                                                        \
    ctx = dsc_py_context(f.st, f.v[0]->t.device, &lock);      \
    if (!ctx) goto out;                                       \
  } while (0)

#define RUN(call)                        \
  do {                                   \
    GET_CTX();                           \
    DSC_PY_CALL(lock, s, call);          \
    if (s != DSC_OK) {                   \
      dsc_py_raise(f.st, s);             \
      goto out;                          \
    }                                    \
  } while (0)

#define END       \
  goto out;       \
  out:            \
  dsc_py_frame_release(&f); \
  return ret;

#endif /* DSC_PY_CALL_H_ */
