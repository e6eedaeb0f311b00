/*
 * streams.c -- which CUDA stream a Python call runs on, and how the glue's contexts follow it.
 *
 * The stream of a call is chosen at its first CUDA array, the same for all its arrays:
 *   1. the calling thread's choice (deepseek_c.cuda_stream, kept in the thread state
 *      dictionary: per thread, no C global), else
 *   2. for a PyTorch tensor, torch.cuda.current_stream() of its device, so ops follow the
 *      caller's stream as PyTorch's own ops do (torch is never imported here), else
 *   3. the legacy default stream (handle 0; DLPack calls it 1).
 * CUDA producers make their data ready on it (the DLPack stream handshake, tensor_io.c).
 * A pool context runs the call on it (dsc_py_use_stream). A model's context keeps its own
 * stream (Model.set_stream) and is joined to the call's by events both ways
 * (dsc_py_join_stream / dsc_py_unjoin_stream): no host wait anywhere.
 */
#include "glue.h"

static const char *const THREAD_KEY = "deepseek_c.cuda_stream";

int dsc_py_thread_stream(uintptr_t *handle) {
  *handle = 0;
  PyObject *d = PyThreadState_GetDict(); /* borrowed; per thread, owned by the interpreter */
  if (!d) return 0;
  PyObject *h = PyDict_GetItemString(d, THREAD_KEY); /* borrowed */
  if (!h) return 0;
  const unsigned long long v = PyLong_AsUnsignedLongLong(h);
  if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
  *handle = (uintptr_t)v;
  return 1;
}

int dsc_py_thread_stream_set(int has, uintptr_t handle) {
  PyObject *d = PyThreadState_GetDict();
  if (!d) {
    PyErr_SetString(PyExc_RuntimeError, "cuda_stream: no thread state dictionary");
    return -1;
  }
  if (!has) {
    if (PyDict_GetItemString(d, THREAD_KEY) && PyDict_DelItemString(d, THREAD_KEY) < 0) return -1;
    return 0;
  }
  PyObject *h = PyLong_FromUnsignedLongLong((unsigned long long)handle);
  if (!h) return -1;
  const int rc = PyDict_SetItemString(d, THREAD_KEY, h);
  Py_DECREF(h);
  return rc;
}

/* torch.cuda.current_stream(dev_id).cuda_stream when obj is a torch.Tensor (torch already
 * imported: never imports it): 1 and *handle; 0 when obj is no torch tensor; -1 on error. */
static int torch_current_stream(PyObject *obj, long dev_id, uintptr_t *handle) {
  *handle = 0;
  PyObject *name = PyUnicode_FromString("torch");
  if (!name) return -1;
  PyObject *torch = PyImport_GetModule(name); /* new ref, or NULL (not imported) */
  Py_DECREF(name);
  if (!torch) return PyErr_Occurred() ? -1 : 0;
  int rc = -1;
  PyObject *tensor_t = PyObject_GetAttrString(torch, "Tensor");
  if (!tensor_t) goto done;
  const int is = PyObject_IsInstance(obj, tensor_t);
  Py_DECREF(tensor_t);
  if (is <= 0) {
    rc = is;
    goto done;
  }
  PyObject *cuda = PyObject_GetAttrString(torch, "cuda");
  PyObject *cur = cuda ? PyObject_CallMethod(cuda, "current_stream", "l", dev_id) : NULL;
  PyObject *h = cur ? PyObject_GetAttrString(cur, "cuda_stream") : NULL;
  Py_XDECREF(cuda);
  Py_XDECREF(cur);
  if (!h) goto done;
  const unsigned long long v = PyLong_AsUnsignedLongLong(h);
  Py_DECREF(h);
  if (v == (unsigned long long)-1 && PyErr_Occurred()) goto done;
  *handle = (uintptr_t)v;
  rc = 1;
done:
  Py_DECREF(torch);
  return rc;
}

int dsc_py_call_stream(dsc_py_frame *f, PyObject *obj, long dev_id) {
  if (f->stream_known) return 0;
  uintptr_t h = 0;
  int rc = dsc_py_thread_stream(&h);
  if (rc == 0) rc = torch_current_stream(obj, dev_id, &h);
  if (rc < 0) return -1;
  f->stream = h;
  f->stream_known = 1;
  return 0;
}

/* ctx's stream, or -1 with the exception. */
static int ctx_stream(dsc_py_state *st, dsc_context *ctx, uintptr_t *h) {
  void *p = NULL;
  const dsc_status s = dsc_context_get_stream(ctx, &p);
  if (s != DSC_OK) {
    dsc_py_raise(st, s);
    return -1;
  }
  *h = (uintptr_t)p;
  return 0;
}

static int is_cuda(dsc_context *ctx) {
  DLDevice d = {kDLCPU, 0};
  return dsc_context_get_device(ctx, &d) == DSC_OK && d.device_type == kDLCUDA;
}

/* Switch ctx to stream h (the new stream waits for the old one's work: an event). */
static int switch_to(dsc_py_state *st, dsc_context *ctx, uintptr_t h) {
  const dsc_status s = dsc_context_set_stream(ctx, (void *)h);
  if (s != DSC_OK) {
    dsc_py_raise(st, s);
    return -1;
  }
  return 0;
}

int dsc_py_use_stream(dsc_py_state *st, dsc_context *ctx, dsc_py_frame *f) {
  if (!f->stream_known || !is_cuda(ctx)) return 0;
  uintptr_t cur = 0;
  if (ctx_stream(st, ctx, &cur) < 0) return -1;
  return cur == f->stream ? 0 : switch_to(st, ctx, f->stream);
}

int dsc_py_join_stream(dsc_py_state *st, dsc_context *ctx, dsc_py_frame *f) {
  if (!is_cuda(ctx)) return 0;
  uintptr_t own = 0;
  if (ctx_stream(st, ctx, &own) < 0) return -1;
  if (!f->stream_known) { /* arrays imported from here on come ready on the context's stream */
    f->stream = own;
    f->stream_known = 1;
    return 0;
  }
  if (own == f->stream) return 0;
  /* own waits for the call's stream (and, harmlessly, the call's stream for own) */
  if (switch_to(st, ctx, f->stream) < 0) return -1;
  return switch_to(st, ctx, own);
}

void dsc_py_unjoin_stream(dsc_py_state *st, dsc_context *ctx, dsc_py_frame *f, PyObject **ret) {
  if (!f->stream_known || !is_cuda(ctx)) return;
  uintptr_t own = 0;
  int rc = ctx_stream(st, ctx, &own);
  if (rc == 0 && own != f->stream) {
    /* the call's stream waits for the work just queued on own, then own is restored */
    rc = switch_to(st, ctx, f->stream);
    if (rc == 0) rc = switch_to(st, ctx, own);
  }
  if (rc < 0 && ret && *ret) Py_CLEAR(*ret); /* the exception is set */
}
