/*
 * module.c -- the deepseek_c._C module: its definition (state, exception types, the dsc.Tensor
 * type and every family's functions registered at exec) and the core functions (build info,
 * devices, memory, copies, counters, streams). The top of the glue: the runtime (runtime.c)
 * and dsc.Tensor (tensor.c) are below it.
 */
#define PY_ARRAY_UNIQUE_SYMBOL dsc_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include "glue.h"

#include <numpy/arrayobject.h>
#include <string.h>

/* ---------------------------------------------------------------- functions */

static PyObject *py_build_info(PyObject *m, PyObject *unused) {
  dsc_build_info bi;
  memset(&bi, 0, sizeof bi);
  bi.size = sizeof bi;
  dsc_status s = dsc_get_build_info(&bi);
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
  return Py_BuildValue("{s:s,s:O,s:s,s:s,s:O,s:O,s:s,s:O,s:i,s:O,s:s}", "version", bi.version, "cuda",
                       bi.cuda ? Py_True : Py_False, "cuda_version", bi.cuda_version,
                       "cuda_archs", bi.cuda_archs, "cublaslt", bi.cublaslt ? Py_True : Py_False,
                       "nccl", bi.nccl ? Py_True : Py_False, "blas", bi.blas, "openmp",
                       bi.openmp ? Py_True : Py_False, "max_threads", (int)bi.max_threads, "mpi",
                       bi.mpi ? Py_True : Py_False, "mpi_library", bi.mpi_library);
}

/* (count, reason): reason is None when devices were queried successfully. */
static PyObject *py_cuda_device_count(PyObject *m, PyObject *unused) {
  int32_t n = 0;
  dsc_status s;
  Py_BEGIN_ALLOW_THREADS s = dsc_cuda_device_count(&n);
  Py_END_ALLOW_THREADS
  if (s != DSC_OK) return Py_BuildValue("(is)", 0, dsc_last_error());
  return Py_BuildValue("(iO)", (int)n, Py_None);
}

static PyObject *py_cuda_device_name(PyObject *m, PyObject *args) {
  int index;
  if (!PyArg_ParseTuple(args, "i", &index)) return NULL;
  char name[256];
  int32_t major = 0, minor = 0;
  dsc_status s = dsc_cuda_device_name(index, name, sizeof name, &major, &minor);
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
  return Py_BuildValue("(sii)", name, (int)major, (int)minor);
}

static int parse_dtype(const char *name, dsc_dtype *out) {
  static const dsc_dtype all[] = {DSC_DTYPE_FLOAT32, DSC_DTYPE_BFLOAT16, DSC_DTYPE_FLOAT16,
                                  DSC_DTYPE_FLOAT8_E4M3FN, DSC_DTYPE_FLOAT8_E5M2,
                                  DSC_DTYPE_INT32, DSC_DTYPE_INT64, DSC_DTYPE_UINT8,
                                  DSC_DTYPE_BOOL, DSC_DTYPE_FLOAT64, DSC_DTYPE_INT8};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; ++i) {
    if (!strcmp(dsc_dtype_name(all[i]), name)) {
      *out = all[i];
      return 0;
    }
  }
  return -1;
}

/* empty(shape: tuple, dtype: str, device_type: int, device_id: int) -> Tensor */
static PyObject *py_empty(PyObject *m, PyObject *args) {
  PyObject *shape_obj;
  const char *dtype_name;
  int dev_type, dev_id;
  if (!PyArg_ParseTuple(args, "Osii", &shape_obj, &dtype_name, &dev_type, &dev_id)) return NULL;
  dsc_dtype dt;
  if (parse_dtype(dtype_name, &dt) < 0) {
    PyErr_Format(PyExc_TypeError, "empty: dtype: expected one of float32, bfloat16, float16, "
                 "float8_e4m3fn, float8_e5m2, int32, int64, uint8, bool, float64, int8, got '%s'",
                 dtype_name);
    return NULL;
  }
  PyObject *seq = PySequence_Fast(shape_obj, "empty: shape: expected a sequence of ints");
  if (!seq) return NULL;
  Py_ssize_t nd = PySequence_Fast_GET_SIZE(seq);
  if (nd > DSC_PY_MAX_DIMS) {
    Py_DECREF(seq);
    PyErr_Format(PyExc_ValueError, "empty: shape: expected at most %d dims, got %zd",
                 DSC_PY_MAX_DIMS, nd);
    return NULL;
  }
  int64_t shape[DSC_PY_MAX_DIMS];
  for (Py_ssize_t i = 0; i < nd; ++i) {
    long long v = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
    if (v == -1 && PyErr_Occurred()) {
      Py_DECREF(seq);
      return NULL;
    }
    if (v < 0) {
      Py_DECREF(seq);
      PyErr_Format(PyExc_ValueError, "empty: shape: expected non-negative dims, got %lld", v);
      return NULL;
    }
    shape[i] = v;
  }
  Py_DECREF(seq);
  size_t bytes = 0;
  if (!dsc_py_shape_bytes(dt, (int)nd, shape, &bytes)) {
    char buf[512];
    PyErr_Format(PyExc_ValueError,
                 "empty: shape: expected a shape whose size in bytes fits in 64 bits, got %s of %s",
                 dsc_py_shape_str((int)nd, shape, buf, sizeof buf), dsc_dtype_name(dt));
    return NULL;
  }
  DLDevice dev = {(DLDeviceType)dev_type, dev_id};
  return dsc_py_tensor_new_owned(m, dev, dt, (int)nd, shape);
}

/* copy(dst, src): same number of bytes, both contiguous; host <-> device allowed. */
static PyObject *py_copy(PyObject *m, PyObject *args) {
  PyObject *dst_o, *src_o;
  if (!PyArg_ParseTuple(args, "OO", &dst_o, &src_o)) return NULL;
  dsc_py_frame f = {.st = dsc_py_get_state(m), .fn = "dsc_memcpy"};
  PyObject *ret = NULL;
  DLTensor *dst = dsc_py_frame_add(&f, dst_o, "dst", 1, 0);
  DLTensor *src = dst ? dsc_py_frame_add(&f, src_o, "src", 0, 0) : NULL;
  if (!src) goto out;
  size_t nd = (size_t)dsc_dtype_size(dsc_dtype_from_dlpack(dst->dtype));
  size_t ns = (size_t)dsc_dtype_size(dsc_dtype_from_dlpack(src->dtype));
  /* byte counts of arrays from any DLPack producer: checked, not trusted */
  size_t bd = 0, bs = 0;
  if (!dsc_py_shape_bytes(dsc_dtype_from_dlpack(dst->dtype), dst->ndim, dst->shape, &bd) ||
      !dsc_py_shape_bytes(dsc_dtype_from_dlpack(src->dtype), src->ndim, src->shape, &bs)) {
    PyErr_Format(PyExc_ValueError, "copy: dst, src: expected shapes whose size in bytes fits in 64 bits");
    goto out;
  }
  if (nd == 0 || ns == 0 || bd != bs) {
    PyErr_Format(PyExc_ValueError, "copy: dst: expected %lld bytes like src, got %lld",
                 (long long)bs, (long long)bd);
    goto out;
  }
  /* Contiguity is checked through a throwaway element-wise view; an empty array has no
   * bytes to lay out (NumPy gives (0,) a stride of 0), and nothing is copied then. */
  for (int k = 0; k < 2 && bd > 0; ++k) {
    DLTensor *t = k ? src : dst;
    int64_t expect = 1;
    for (int i = t->ndim - 1; i >= 0; --i) {
      if (t->shape[i] != 1 && t->strides[i] != expect) {
        PyErr_Format(PyExc_ValueError, "copy: %s: expected a C-contiguous array", k ? "src" : "dst");
        goto out;
      }
      expect *= t->shape[i];
    }
  }
  DLDevice dev = dst->device.device_type == kDLCPU ? src->device : dst->device;
  PyObject *pc = dsc_py_pool_take(f.st, dev, "dsc_memcpy");
  if (!pc) goto out;
  dsc_py_ctx *c = dsc_py_ctx_get(pc);
  dsc_status s;
  void *dp = (char *)dst->data + dst->byte_offset;
  const void *sp = (const char *)src->data + src->byte_offset;
  DLDevice dd = dst->device, sd = src->device;
  size_t bytes = bd;
  DSC_PY_CALL(s, dsc_memcpy(c->ctx, dp, dd, sp, sd, bytes));
  if (s == DSC_OK) DSC_PY_CALL(s, dsc_context_synchronize(c->ctx));
  dsc_py_ctx_leave(c);
  Py_DECREF(pc);
  if (s != DSC_OK) {
    dsc_py_raise(f.st, s);
    goto out;
  }
  ret = Py_NewRef(Py_None);
out:
  dsc_py_frame_release(&f);
  return ret;
}

static PyObject *py_synchronize(PyObject *m, PyObject *args) {
  int dev_type, dev_id;
  if (!PyArg_ParseTuple(args, "ii", &dev_type, &dev_id)) return NULL;
  dsc_py_state *st = dsc_py_get_state(m);
  DLDevice dev = {(DLDeviceType)dev_type, dev_id};
  /* Waits for the calling thread's stream (deepseek_c.cuda_stream, else the legacy default
   * stream, which also waits for every blocking stream). */
  uintptr_t mine = 0;
  if (dsc_py_thread_stream(&mine) < 0) return NULL;
  PyObject *pc = dsc_py_pool_take(st, dev, "dsc_context_synchronize");
  if (!pc) return NULL;
  dsc_py_ctx *c = dsc_py_ctx_get(pc);
  dsc_status s = dev.device_type == kDLCUDA ? dsc_context_set_stream(c->ctx, (void *)mine) : DSC_OK;
  if (s == DSC_OK) DSC_PY_CALL(s, dsc_context_synchronize(c->ctx));
  dsc_py_ctx_leave(c);
  Py_DECREF(pc);
  if (s != DSC_OK) return dsc_py_raise(st, s);
  Py_RETURN_NONE;
}

/* context_pool_size(device_type, device_id) -> int: contexts in the device's op pool (the
 * most ops that ever ran at once there; for tests). */
static PyObject *py_context_pool_size(PyObject *m, PyObject *args) {
  int dev_type, dev_id;
  if (!PyArg_ParseTuple(args, "ii", &dev_type, &dev_id)) return NULL;
  DLDevice dev = {(DLDeviceType)dev_type, dev_id};
  dsc_py_device *d = dsc_py_device_of(dsc_py_get_state(m), dev);
  if (!d) return NULL;
  return PyLong_FromSsize_t(d->pool ? PyList_GET_SIZE(d->pool) : 0);
}

/* ---------------------------------------------------------------- counters */

static PyObject *counters_dict(const dsc_context_counters *c) {
  return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K}", "syncs", (unsigned long long)c->syncs,
                       "copies_to_device", (unsigned long long)c->copies_to_device,
                       "copies_to_host", (unsigned long long)c->copies_to_host, "allocs",
                       (unsigned long long)c->allocs, "frees", (unsigned long long)c->frees,
                       "workspace_grows", (unsigned long long)c->workspace_grows, "index_checks",
                       (unsigned long long)c->index_checks, "deferred_checks",
                       (unsigned long long)c->deferred_checks, "check_reads",
                       (unsigned long long)c->check_reads);
}

/* Read (and with reset zero) the counters of one context, entered so that no call of
 * another thread runs on it meanwhile. */
static int read_counters(dsc_py_state *st, dsc_py_ctx *c, int reset, dsc_context_counters *out) {
  const int r = dsc_py_ctx_enter(st, c, "dsc_context_get_counters", 1);
  if (r < 0) return -1;
  memset(out, 0, sizeof *out);
  out->size = sizeof *out;
  dsc_status s = dsc_context_get_counters(c->ctx, out, reset);
  if (r == 0) dsc_py_ctx_leave(c);
  if (s != DSC_OK) {
    dsc_py_raise(st, s);
    return -1;
  }
  return 0;
}

/* context_counters(obj, reset=False) -> dict: the counters of a context capsule, or of the
 * context a model (or other) capsule was created on. */
static PyObject *py_context_counters(PyObject *m, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"obj", "reset", NULL};
  PyObject *obj;
  int reset = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|p", kwlist, &obj, &reset)) return NULL;
  dsc_py_state *st = dsc_py_get_state(m);
  PyObject *cap = dsc_py_ctx_capsule_of(obj, "context_counters");
  if (!cap) return NULL;
  dsc_context_counters c;
  if (read_counters(st, dsc_py_ctx_get(cap), reset, &c) < 0) return NULL;
  return counters_dict(&c);
}

/* context_set_stream(obj, handle): run obj's context (a model's) on the CUDA stream `handle`
 * (a cudaStream_t as an int; 0: the legacy default stream). The new stream first waits for
 * the work queued on the old one (dsc_context_set_stream; no host wait). */
static PyObject *py_context_set_stream(PyObject *m, PyObject *args) {
  PyObject *obj;
  unsigned long long handle;
  if (!PyArg_ParseTuple(args, "OK", &obj, &handle)) return NULL;
  dsc_py_state *st = dsc_py_get_state(m);
  PyObject *cap = dsc_py_ctx_capsule_of(obj, "context_set_stream");
  if (!cap) return NULL;
  dsc_py_ctx *c = dsc_py_ctx_get(cap);
  const int r = dsc_py_ctx_enter(st, c, "dsc_context_set_stream", 0);
  if (r < 0) return NULL;
  dsc_status s = dsc_context_set_stream(c->ctx, (void *)(uintptr_t)handle);
  dsc_py_ctx_leave(c);
  if (s != DSC_OK) return dsc_py_raise(st, s);
  Py_RETURN_NONE;
}

/* thread_stream_set(handle | None) -> previous handle | None: the CUDA stream the calling
 * thread's ops run on (None: follow a PyTorch input's current stream, else the legacy
 * default stream). Python: deepseek_c.cuda_stream. */
static PyObject *py_thread_stream_set(PyObject *m, PyObject *args) {
  (void)m;
  PyObject *h = NULL;
  if (!PyArg_ParseTuple(args, "O", &h)) return NULL;
  unsigned long long v = 0;
  if (h != Py_None) {
    v = PyLong_AsUnsignedLongLong(h);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
  }
  uintptr_t prev = 0;
  const int had = dsc_py_thread_stream(&prev);
  if (had < 0) return NULL;
  if (dsc_py_thread_stream_set(h != Py_None, (uintptr_t)v) < 0) return NULL;
  if (!had) Py_RETURN_NONE;
  return PyLong_FromUnsignedLongLong((unsigned long long)prev);
}

/* context_get_stream(obj) -> int: the stream handle of obj's context (0: legacy default). */
static PyObject *py_context_get_stream(PyObject *m, PyObject *args) {
  PyObject *obj;
  if (!PyArg_ParseTuple(args, "O", &obj)) return NULL;
  PyObject *cap = dsc_py_ctx_capsule_of(obj, "context_get_stream");
  if (!cap) return NULL;
  void *stream = NULL;
  dsc_status s = dsc_context_get_stream(dsc_py_ctx_get(cap)->ctx, &stream);
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
  return PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)stream);
}

/* op_counters(device_type, device_id, reset=False) -> dict: the counters of the device's op
 * contexts (the pool the functional ops run on), summed. */
static PyObject *py_op_counters(PyObject *m, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"device_type", "device_id", "reset", NULL};
  int dev_type, dev_id, reset = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "ii|p", kwlist, &dev_type, &dev_id, &reset))
    return NULL;
  dsc_py_state *st = dsc_py_get_state(m);
  DLDevice dev = {(DLDeviceType)dev_type, dev_id};
  dsc_py_device *d = dsc_py_device_of(st, dev);
  if (!d) return NULL;
  dsc_context_counters sum;
  memset(&sum, 0, sizeof sum);
  PyObject *pool = d->pool ? Py_NewRef(d->pool) : NULL;
  for (Py_ssize_t i = 0; pool && i < PyList_GET_SIZE(pool); ++i) {
    PyObject *cap = Py_NewRef(PyList_GET_ITEM(pool, i));
    dsc_context_counters c;
    const int r = read_counters(st, dsc_py_ctx_get(cap), reset, &c);
    Py_DECREF(cap);
    if (r < 0) {
      Py_DECREF(pool);
      return NULL;
    }
    sum.syncs += c.syncs;
    sum.copies_to_device += c.copies_to_device;
    sum.copies_to_host += c.copies_to_host;
    sum.allocs += c.allocs;
    sum.frees += c.frees;
    sum.workspace_grows += c.workspace_grows;
    sum.index_checks += c.index_checks;
    sum.deferred_checks += c.deferred_checks;
    sum.check_reads += c.check_reads;
  }
  Py_XDECREF(pool);
  return counters_dict(&sum);
}

/* ---------------------------------------------------------------- deferred checks */

static int parse_check_mode(PyObject *m, int mode, const char *fn) {
  (void)m;
  if (mode == DSC_CHECK_IMMEDIATE || mode == DSC_CHECK_DEFERRED) return 0;
  PyErr_Format(PyExc_ValueError,
               "%s: mode: expected DSC_CHECK_IMMEDIATE (0) or DSC_CHECK_DEFERRED (1), got %d", fn, mode);
  return -1;
}

/* Set the check mode of, or read the record of, one context (entered). op: 0 set mode,
 * 1 check. */
static int ctx_check_op(dsc_py_state *st, dsc_py_ctx *c, int op, int mode, const char *fn) {
  const int r = dsc_py_ctx_enter(st, c, fn, 0);
  if (r < 0) return -1;
  dsc_status s;
  if (op == 0) s = dsc_context_set_check_mode(c->ctx, mode);
  else DSC_PY_CALL(s, dsc_context_check(c->ctx)); /* may wait for the device */
  dsc_py_ctx_leave(c);
  if (s != DSC_OK) {
    dsc_py_raise(st, s);
    return -1;
  }
  return 0;
}

/* context_set_check_mode(obj, mode): the dsc_check_mode of obj's context. */
static PyObject *py_context_set_check_mode(PyObject *m, PyObject *args) {
  PyObject *obj;
  int mode;
  if (!PyArg_ParseTuple(args, "Oi", &obj, &mode)) return NULL;
  if (parse_check_mode(m, mode, "context_set_check_mode") < 0) return NULL;
  PyObject *cap = dsc_py_ctx_capsule_of(obj, "context_set_check_mode");
  if (!cap) return NULL;
  if (ctx_check_op(dsc_py_get_state(m), dsc_py_ctx_get(cap), 0, mode, "dsc_context_set_check_mode") < 0)
    return NULL;
  Py_RETURN_NONE;
}

/* context_get_check_mode(obj) -> int: the mode obj's context runs its checks in now. */
static PyObject *py_context_get_check_mode(PyObject *m, PyObject *args) {
  PyObject *obj;
  if (!PyArg_ParseTuple(args, "O", &obj)) return NULL;
  PyObject *cap = dsc_py_ctx_capsule_of(obj, "context_get_check_mode");
  if (!cap) return NULL;
  int32_t mode = 0;
  dsc_status s = dsc_context_get_check_mode(dsc_py_ctx_get(cap)->ctx, &mode);
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
  return PyLong_FromLong(mode);
}

/* context_check(obj): read (and clear) the deferred checks' record of obj's context; raise
 * the recorded failure. */
static PyObject *py_context_check(PyObject *m, PyObject *args) {
  PyObject *obj;
  if (!PyArg_ParseTuple(args, "O", &obj)) return NULL;
  PyObject *cap = dsc_py_ctx_capsule_of(obj, "context_check");
  if (!cap) return NULL;
  if (ctx_check_op(dsc_py_get_state(m), dsc_py_ctx_get(cap), 1, 0, "dsc_context_check") < 0) return NULL;
  Py_RETURN_NONE;
}

/* op_set_check_mode(device_type, device_id, mode): the mode of every op context of the
 * device, now and created later. */
static PyObject *py_op_set_check_mode(PyObject *m, PyObject *args) {
  int dev_type, dev_id, mode;
  if (!PyArg_ParseTuple(args, "iii", &dev_type, &dev_id, &mode)) return NULL;
  if (parse_check_mode(m, mode, "op_set_check_mode") < 0) return NULL;
  dsc_py_state *st = dsc_py_get_state(m);
  DLDevice dev = {(DLDeviceType)dev_type, dev_id};
  dsc_py_device *d = dsc_py_device_of(st, dev);
  if (!d) return NULL;
  d->check_mode = mode;
  PyObject *pool = d->pool ? Py_NewRef(d->pool) : NULL;
  for (Py_ssize_t i = 0; pool && i < PyList_GET_SIZE(pool); ++i) {
    PyObject *cap = Py_NewRef(PyList_GET_ITEM(pool, i));
    const int r = ctx_check_op(st, dsc_py_ctx_get(cap), 0, mode, "dsc_context_set_check_mode");
    Py_DECREF(cap);
    if (r < 0) {
      Py_DECREF(pool);
      return NULL;
    }
  }
  Py_XDECREF(pool);
  Py_RETURN_NONE;
}

/* op_get_check_mode(device_type, device_id) -> int: the mode set for the device's ops. */
static PyObject *py_op_get_check_mode(PyObject *m, PyObject *args) {
  int dev_type, dev_id;
  if (!PyArg_ParseTuple(args, "ii", &dev_type, &dev_id)) return NULL;
  DLDevice dev = {(DLDeviceType)dev_type, dev_id};
  dsc_py_device *d = dsc_py_device_of(dsc_py_get_state(m), dev);
  if (!d) return NULL;
  return PyLong_FromLong(d->check_mode);
}

/* op_check(device_type, device_id): read (and clear) the record of every op context of the
 * device; raise the failure of the first context (in pool order) that has one (the records
 * of all are read and cleared first). */
static PyObject *py_op_check(PyObject *m, PyObject *args) {
  int dev_type, dev_id;
  if (!PyArg_ParseTuple(args, "ii", &dev_type, &dev_id)) return NULL;
  dsc_py_state *st = dsc_py_get_state(m);
  DLDevice dev = {(DLDeviceType)dev_type, dev_id};
  dsc_py_device *d = dsc_py_device_of(st, dev);
  if (!d) return NULL;
  PyObject *pool = d->pool ? Py_NewRef(d->pool) : NULL;
  PyObject *et = NULL, *ev = NULL, *tb = NULL;
  for (Py_ssize_t i = 0; pool && i < PyList_GET_SIZE(pool); ++i) {
    PyObject *cap = Py_NewRef(PyList_GET_ITEM(pool, i));
    const int r = ctx_check_op(st, dsc_py_ctx_get(cap), 1, 0, "dsc_context_check");
    Py_DECREF(cap);
    if (r < 0) {
      if (!et) PyErr_Fetch(&et, &ev, &tb);
      else PyErr_Clear();
    }
  }
  Py_XDECREF(pool);
  if (et) {
    PyErr_Restore(et, ev, tb);
    return NULL;
  }
  Py_RETURN_NONE;
}


PyMethodDef dsc_py_core_methods[] = {
    {"context_set_check_mode", py_context_set_check_mode, METH_VARARGS,
     "context_set_check_mode(obj, mode): DSC_CHECK_IMMEDIATE (0) or DSC_CHECK_DEFERRED (1) for obj's context"},
    {"context_get_check_mode", py_context_get_check_mode, METH_VARARGS,
     "context_get_check_mode(obj) -> int: the check mode obj's context runs in"},
    {"context_check", py_context_check, METH_VARARGS,
     "context_check(obj): raise the failure recorded by deferred checks on obj's context (and clear it)"},
    {"op_set_check_mode", py_op_set_check_mode, METH_VARARGS,
     "op_set_check_mode(device_type, device_id, mode): the check mode of the device's op contexts"},
    {"op_get_check_mode", py_op_get_check_mode, METH_VARARGS,
     "op_get_check_mode(device_type, device_id) -> int"},
    {"op_check", py_op_check, METH_VARARGS,
     "op_check(device_type, device_id): raise the failure recorded by deferred checks of the device's ops"},
    {"context_counters", (PyCFunction)(void (*)(void))py_context_counters,
     METH_VARARGS | METH_KEYWORDS,
     "context_counters(obj, reset=False) -> dict: host waits, copies and allocations of the "
     "context of obj (a model capsule)"},
    {"context_set_stream", py_context_set_stream, METH_VARARGS,
     "context_set_stream(obj, handle): run the context of obj (a model capsule) on a CUDA stream"},
    {"thread_stream_set", py_thread_stream_set, METH_VARARGS,
     "thread_stream_set(handle | None) -> previous | None: the calling thread's CUDA stream for ops"},
    {"context_get_stream", py_context_get_stream, METH_VARARGS,
     "context_get_stream(obj) -> int: the CUDA stream handle of obj's context (0: legacy default)"},
    {"op_counters", (PyCFunction)(void (*)(void))py_op_counters, METH_VARARGS | METH_KEYWORDS,
     "op_counters(device_type, device_id, reset=False) -> dict: the same, summed over the "
     "device's op contexts"},
    {"build_info", py_build_info, METH_NOARGS, "build_info() -> dict: what this build contains."},
    {"cuda_device_count", py_cuda_device_count, METH_NOARGS,
     "cuda_device_count() -> (count, reason or None)"},
    {"cuda_device_name", py_cuda_device_name, METH_VARARGS,
     "cuda_device_name(index) -> (name, cc_major, cc_minor)"},
    {"empty", py_empty, METH_VARARGS, "empty(shape, dtype, device_type, device_id) -> Tensor"},
    {"copy", py_copy, METH_VARARGS, "copy(dst, src): byte copy between contiguous arrays"},
    {"synchronize", py_synchronize, METH_VARARGS, "synchronize(device_type, device_id)"},
    {"context_pool_size", py_context_pool_size, METH_VARARGS,
     "context_pool_size(device_type, device_id) -> contexts in the device's op pool"},
    {NULL, NULL, 0, NULL},
};

/* ---------------------------------------------------------------- module */

static int module_exec(PyObject *m) {
  dsc_py_state *st = dsc_py_get_state(m);
  memset(st, 0, sizeof *st);
  if (_import_array() < 0) return -1;
  st->error_type = PyErr_NewExceptionWithDoc(
      "deepseek_c.Error",
      "A deepseek_c failure that is not a bad argument (CUDA, I/O, format, internal).",
      PyExc_RuntimeError, NULL);
  if (!st->error_type) return -1;
  if (PyModule_AddObjectRef(m, "Error", st->error_type) < 0) return -1;
  /* A corrupt or malformed file is both a deepseek_c failure and a bad value: callers that
   * catch either (dsc.Error, or ValueError as for json/NumPy) see it. */
  PyObject *bases = PyTuple_Pack(2, st->error_type, PyExc_ValueError);
  if (!bases) return -1;
  st->format_type = PyErr_NewExceptionWithDoc(
      "deepseek_c.FormatError",
      "A corrupt, truncated or malformed file (safetensors, config.json): a deepseek_c.Error and a ValueError.",
      bases, NULL);
  Py_DECREF(bases);
  if (!st->format_type) return -1;
  if (PyModule_AddObjectRef(m, "FormatError", st->format_type) < 0) return -1;
  st->comm_type = PyErr_NewExceptionWithDoc(
      "deepseek_c.CommError",
      "A communicator failed: a peer rank did not answer in time (it died, hangs, or called another "
      "collective), or the ranks disagree (their configs differ). The communicator is unusable after it.",
      st->error_type, NULL);
  if (!st->comm_type) return -1;
  if (PyModule_AddObjectRef(m, "CommError", st->comm_type) < 0) return -1;
  if (dsc_py_tensor_type_init(m, st) < 0) return -1;
  if (PyModule_AddFunctions(m, dsc_py_core_methods) < 0) return -1;
  if (PyModule_AddFunctions(m, dsc_py_dense_methods) < 0) return -1;
  if (PyModule_AddFunctions(m, dsc_py_fp8_methods) < 0) return -1;
  if (PyModule_AddFunctions(m, dsc_py_io_methods) < 0) return -1;
  if (PyModule_AddFunctions(m, dsc_py_moe_methods) < 0) return -1;
  if (PyModule_AddFunctions(m, dsc_py_moe_layer_methods) < 0) return -1;
  if (PyModule_AddFunctions(m, dsc_py_mla_methods) < 0) return -1;
  if (PyModule_AddFunctions(m, dsc_py_model_methods) < 0) return -1;
  if (PyModule_AddFunctions(m, dsc_py_generate_methods) < 0) return -1;
  if (PyModule_AddFunctions(m, dsc_py_calc_methods) < 0) return -1;
  if (PyModule_AddFunctions(m, dsc_py_rl_methods) < 0) return -1;
  if (PyModule_AddFunctions(m, dsc_py_dist_methods) < 0) return -1;
  return 0;
}

static int module_traverse(PyObject *m, visitproc visit, void *arg) {
  dsc_py_state *st = dsc_py_get_state(m);
  if (st) {
    Py_VISIT(st->error_type);
    Py_VISIT(st->format_type);
    Py_VISIT(st->comm_type);
    Py_VISIT(st->tensor_type);
    for (int i = 0; i < DSC_PY_N_DEV; ++i) Py_VISIT(st->dev[i].pool);
  }
  return 0;
}

static int module_clear(PyObject *m) {
  dsc_py_state *st = dsc_py_get_state(m);
  if (st) {
    Py_CLEAR(st->error_type);
    Py_CLEAR(st->format_type);
    Py_CLEAR(st->comm_type);
    Py_CLEAR(st->tensor_type);
    /* pool contexts pinned by saved activations live on in those */
    for (int i = 0; i < DSC_PY_N_DEV; ++i) Py_CLEAR(st->dev[i].pool);
  }
  return 0;
}

static void module_free(void *mp) {
  PyObject *m = (PyObject *)mp;
  module_clear(m);
  dsc_py_state *st = dsc_py_get_state(m);
  if (!st) return;
  /* Owned dsc.Tensors hold a reference to the module, so none is alive here. */
  for (int i = 0; i < DSC_PY_N_DEV; ++i) {
    dsc_context_destroy(st->dev[i].mem);
    st->dev[i].mem = NULL;
    if (st->dev[i].mem_lock) PyThread_free_lock(st->dev[i].mem_lock);
    st->dev[i].mem_lock = NULL;
  }
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "deepseek_c._C",
    .m_doc = "CPython glue of deepseek_c: DLPack in, C ABI calls, DLPack out.",
    .m_size = sizeof(dsc_py_state),
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__C(void) { return PyModuleDef_Init(&module_def); }
