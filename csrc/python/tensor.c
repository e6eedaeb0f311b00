/*
 * tensor.c -- deepseek_c.Tensor: memory owned by the C core (or by an object that
 * owns C memory, like a model), exported zero-copy through DLPack.
 *
 * Ownership: an owned Tensor frees its data through the module's memory context for its
 * device and holds a reference to the module so that context outlives it. A view
 * Tensor (owns == 0) holds `base` alive instead. Every exported capsule holds a
 * reference to the Tensor until the consumer calls the deleter.
 */
#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL dsc_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include "glue.h"
#include "../core/checked.h"

#include <numpy/arrayobject.h>
#include <string.h>

typedef dsc_py_tensor_obj T;

static const char *device_str(DLDevice d, char *buf, size_t n) {
  if (d.device_type == kDLCPU) snprintf(buf, n, "cpu");
  else if (d.device_type == kDLCUDA) snprintf(buf, n, "cuda:%d", (int)d.device_id);
  else snprintf(buf, n, "device%d:%d", (int)d.device_type, (int)d.device_id);
  return buf;
}

/* Tensors are only made by the constructors below, which reject shapes whose bytes do not
 * fit in int64: the product cannot overflow here. */
static int64_t numel(const T *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; ++i) n *= t->shape[i];
  return n;
}

int dsc_py_shape_bytes(dsc_dtype dtype, int ndim, const int64_t *shape, size_t *bytes) {
  /* the product of the non-zero dims too: every partial product (rows, strides) then fits */
  int ok = 1;
  int64_t all = 1, nonzero = (int64_t)dsc_dtype_size(dtype);
  for (int i = 0; i < ndim; ++i) {
    all = dsc_cmul(all, shape[i], &ok);
    if (shape[i] > 0) nonzero = dsc_cmul(nonzero, shape[i], &ok);
  }
  *bytes = dsc_cbytes(all, dsc_dtype_size(dtype), &ok);
  return ok;
}

const char *dsc_py_shape_str(int ndim, const int64_t *shape, char *buf, size_t n) {
  size_t used = 0;
  int w = snprintf(buf, n, "(");
  used = w > 0 ? (size_t)w : 0;
  for (int i = 0; i < ndim && used < n; ++i) {
    w = snprintf(buf + used, n - used, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (w > 0) used += (size_t)w;
  }
  if (used < n) snprintf(buf + used, n - used, ndim == 1 ? ",)" : ")");
  return buf;
}

PyObject *dsc_py_tensor_new_owned(PyObject *module, DLDevice dev, dsc_dtype dtype, int ndim,
                                  const int64_t *shape) {
  dsc_py_state *st = dsc_py_get_state(module);
  if (!dsc_py_device_of(st, dev)) return NULL;
  size_t bytes = 0;
  if (!dsc_py_shape_bytes(dtype, ndim, shape, &bytes)) {
    char buf[512];
    PyErr_Format(PyExc_ValueError,
                 "shape: expected a shape whose size in bytes fits in 64 bits, got %s of %s",
                 dsc_py_shape_str(ndim, shape, buf, sizeof buf), dsc_dtype_name(dtype));
    return NULL;
  }
  T *t = (T *)st->tensor_type->tp_alloc(st->tensor_type, 0);
  if (!t) return NULL;
  t->device = dev.device_type == kDLCPU ? (DLDevice){kDLCPU, 0} : dev;
  t->dtype = dtype;
  t->ndim = ndim;
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; --i) {
    t->shape[i] = shape[i];
    t->strides[i] = s;
    s *= shape[i];
  }
  void *p = NULL;
  if (dsc_py_mem_alloc(st, t->device, bytes ? bytes : 1, &p) < 0) {
    Py_DECREF(t);
    return NULL;
  }
  t->data = p;
  t->owns = 1;
  t->module = Py_NewRef(module);
  return (PyObject *)t;
}

PyObject *dsc_py_tensor_new_view(PyObject *module, void *data, DLDevice dev, dsc_dtype dtype,
                                 int ndim, const int64_t *shape, PyObject *base) {
  dsc_py_state *st = dsc_py_get_state(module);
  size_t bytes = 0;
  if (!dsc_py_shape_bytes(dtype, ndim, shape, &bytes)) {
    char buf[512];
    PyErr_Format(PyExc_ValueError,
                 "shape: expected a shape whose size in bytes fits in 64 bits, got %s of %s",
                 dsc_py_shape_str(ndim, shape, buf, sizeof buf), dsc_dtype_name(dtype));
    return NULL;
  }
  T *t = (T *)st->tensor_type->tp_alloc(st->tensor_type, 0);
  if (!t) return NULL;
  t->device = dev;
  t->dtype = dtype;
  t->ndim = ndim;
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; --i) {
    t->shape[i] = shape[i];
    t->strides[i] = s;
    s *= shape[i];
  }
  t->data = data;
  t->owns = 0;
  t->base = Py_NewRef(base);
  t->module = Py_NewRef(module);
  return (PyObject *)t;
}

static void tensor_dealloc(T *t) {
  PyTypeObject *tp = Py_TYPE(t);
  PyObject_GC_UnTrack(t);
  if (t->owns && t->data && t->module) {
    dsc_py_state *st = dsc_py_get_state(t->module);
    if (st) dsc_py_mem_free(st, t->device, t->data);
  }
  t->data = NULL;
  Py_CLEAR(t->base);
  Py_CLEAR(t->module);
  tp->tp_free((PyObject *)t);
  Py_DECREF(tp);
}

static int tensor_traverse(T *t, visitproc visit, void *arg) {
  Py_VISIT(Py_TYPE(t));
  Py_VISIT(t->base);
  Py_VISIT(t->module);
  return 0;
}

static int tensor_clear(T *t) {
  Py_CLEAR(t->base);
  return 0;
}

/* ------------------------------------------------------------ DLPack export */

typedef struct {
  DLManagedTensorVersioned m;
  int64_t shape[DSC_PY_MAX_DIMS];
  int64_t strides[DSC_PY_MAX_DIMS];
} export_versioned;

typedef struct {
  DLManagedTensor m;
  int64_t shape[DSC_PY_MAX_DIMS];
  int64_t strides[DSC_PY_MAX_DIMS];
} export_legacy;

/* Deleters may run on any thread, with or without the GIL, even at shutdown. */
static void delete_versioned(DLManagedTensorVersioned *m) {
  if (!m) return;
  if (!Py_IsInitialized()) return; /* the interpreter is gone: leaking is all we can do */
  PyGILState_STATE g = PyGILState_Ensure();
  Py_XDECREF((PyObject *)m->manager_ctx);
  PyMem_RawFree(m);
  PyGILState_Release(g);
}

static void delete_legacy(DLManagedTensor *m) {
  if (!m) return;
  if (!Py_IsInitialized()) return;
  PyGILState_STATE g = PyGILState_Ensure();
  Py_XDECREF((PyObject *)m->manager_ctx);
  PyMem_RawFree(m);
  PyGILState_Release(g);
}

static void capsule_versioned_destructor(PyObject *cap) {
  if (PyCapsule_IsValid(cap, "used_dltensor_versioned")) return;
  PyObject *et, *ev, *tb;
  PyErr_Fetch(&et, &ev, &tb);
  DLManagedTensorVersioned *m =
      (DLManagedTensorVersioned *)PyCapsule_GetPointer(cap, "dltensor_versioned");
  if (m) {
    if (m->deleter) m->deleter(m);
  } else {
    PyErr_WriteUnraisable(cap);
  }
  PyErr_Restore(et, ev, tb);
}

static void capsule_legacy_destructor(PyObject *cap) {
  if (PyCapsule_IsValid(cap, "used_dltensor")) return;
  PyObject *et, *ev, *tb;
  PyErr_Fetch(&et, &ev, &tb);
  DLManagedTensor *m = (DLManagedTensor *)PyCapsule_GetPointer(cap, "dltensor");
  if (m) {
    if (m->deleter) m->deleter(m);
  } else {
    PyErr_WriteUnraisable(cap);
  }
  PyErr_Restore(et, ev, tb);
}

static void fill_dl(const T *t, DLTensor *d, int64_t *shape, int64_t *strides) {
  d->data = t->data;
  d->device = t->device;
  d->ndim = t->ndim;
  d->dtype = dsc_dtype_to_dlpack(t->dtype);
  memcpy(shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
  memcpy(strides, t->strides, sizeof(int64_t) * (size_t)t->ndim);
  d->shape = shape;
  d->strides = strides;
  d->byte_offset = 0;
}

/* A copy of t on `dev` (host or t's device). */
static T *tensor_copy_to(T *t, DLDevice dev) {
  T *c = (T *)dsc_py_tensor_new_owned(t->module ? t->module : NULL, dev, t->dtype, t->ndim,
                                      t->shape);
  if (!c) return NULL;
  dsc_py_state *st = dsc_py_get_state(t->module);
  DLDevice work = t->device.device_type == kDLCPU ? dev : t->device;
  PyObject *pc = dsc_py_pool_take(st, work, "dsc_memcpy");
  if (!pc) {
    Py_DECREF(c);
    return NULL;
  }
  dsc_py_ctx *x = dsc_py_ctx_get(pc);
  size_t bytes = (size_t)numel(t) * dsc_dtype_size(t->dtype);
  dsc_status s;
  DSC_PY_CALL(s, dsc_memcpy(x->ctx, c->data, c->device, t->data, t->device, bytes));
  if (s == DSC_OK) DSC_PY_CALL(s, dsc_context_synchronize(x->ctx));
  dsc_py_ctx_leave(x);
  Py_DECREF(pc);
  if (s != DSC_OK) {
    Py_DECREF(c);
    return (T *)dsc_py_raise(st, s);
  }
  return c;
}

static PyObject *tensor_dlpack(T *self, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"stream", "max_version", "dl_device", "copy", NULL};
  PyObject *stream = Py_None, *max_version = Py_None, *dl_device = Py_None, *copy = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$OOOO", kwlist, &stream, &max_version,
                                   &dl_device, &copy))
    return NULL;
  if (!self->module) {
    PyErr_SetString(PyExc_BufferError, "__dlpack__: this Tensor has no module (internal error)");
    return NULL;
  }
  dsc_py_state *st = dsc_py_get_state(self->module);
  int want_copy = copy == Py_True, forbid_copy = copy == Py_False;

  DLDevice target = self->device;
  if (dl_device != Py_None) {
    int dt = 0, di = 0;
    if (!PyArg_ParseTuple(dl_device, "ii;__dlpack__: dl_device: expected (device_type, device_id)",
                          &dt, &di))
      return NULL;
    target.device_type = (DLDeviceType)dt;
    target.device_id = di;
  }
  int same_device = target.device_type == self->device.device_type &&
                    (target.device_type == kDLCPU || target.device_id == self->device.device_id);
  if (!same_device) {
    if (target.device_type != kDLCPU || forbid_copy) {
      PyErr_Format(PyExc_BufferError,
                   "__dlpack__: dl_device: this Tensor can be exported on its own device or copied to "
                   "the CPU, got device (%d, %d)%s",
                   (int)target.device_type, (int)target.device_id,
                   forbid_copy ? " with copy=False" : "");
      return NULL;
    }
    want_copy = 1;
  }

  /* Stream handshake: a deepseek_c.Tensor is written on the stream of the calling thread
   * (deepseek_c.cuda_stream, else the legacy default stream; streams.c); when the consumer
   * names a stream (not -1) that stream's work is finished before handing over. */
  if (self->device.device_type == kDLCUDA && stream != Py_None) {
    long s = PyLong_AsLong(stream);
    if (s == -1 && PyErr_Occurred()) return NULL;
    if (s == 0) {
      PyErr_SetString(PyExc_ValueError, "__dlpack__: stream: 0 is ambiguous and not allowed by DLPack");
      return NULL;
    }
    if (s != -1) {
      PyObject *pc = dsc_py_pool_take(st, self->device, "dsc_context_synchronize");
      if (!pc) return NULL;
      dsc_py_ctx *x = dsc_py_ctx_get(pc);
      uintptr_t mine = 0;
      dsc_status rc = DSC_OK;
      if (dsc_py_thread_stream(&mine) < 0) {
        dsc_py_ctx_leave(x);
        Py_DECREF(pc);
        return NULL;
      }
      rc = dsc_context_set_stream(x->ctx, (void *)mine);
      if (rc == DSC_OK) DSC_PY_CALL(rc, dsc_context_synchronize(x->ctx));
      dsc_py_ctx_leave(x);
      Py_DECREF(pc);
      if (rc != DSC_OK) return dsc_py_raise(st, rc);
    }
  } else if (self->device.device_type == kDLCPU && stream != Py_None) {
    PyErr_SetString(PyExc_BufferError, "__dlpack__: stream: expected None for a CPU tensor");
    return NULL;
  }

  T *src = self;
  T *copied = NULL;
  if (want_copy) {
    copied = tensor_copy_to(self, target);
    if (!copied) return NULL;
    src = copied;
  }

  int versioned = 0;
  if (max_version != Py_None) {
    int major = 0, minor = 0;
    if (!PyArg_ParseTuple(max_version, "ii;__dlpack__: max_version: expected (major, minor)",
                          &major, &minor)) {
      Py_XDECREF(copied);
      return NULL;
    }
    versioned = major >= 1;
  }
  int fp8 = src->dtype == DSC_DTYPE_FLOAT8_E4M3FN || src->dtype == DSC_DTYPE_FLOAT8_E5M2;
  PyObject *cap = NULL;
  if (versioned) {
    export_versioned *e = (export_versioned *)PyMem_RawCalloc(1, sizeof *e);
    if (!e) {
      Py_XDECREF(copied);
      return PyErr_NoMemory();
    }
    e->m.version.major = DLPACK_MAJOR_VERSION;
    e->m.version.minor = DLPACK_MINOR_VERSION;
    e->m.manager_ctx = Py_NewRef((PyObject *)src);
    e->m.deleter = delete_versioned;
    e->m.flags = copied ? DLPACK_FLAG_BITMASK_IS_COPIED : 0;
    fill_dl(src, &e->m.dl_tensor, e->shape, e->strides);
    cap = PyCapsule_New(&e->m, "dltensor_versioned", capsule_versioned_destructor);
    if (!cap) delete_versioned(&e->m);
  } else {
    if (fp8) {
      PyErr_SetString(PyExc_BufferError,
                      "__dlpack__: float8 data needs a DLPack >= 1.1 consumer (pass max_version=(1, 1)); "
                      "older consumers cannot represent it");
      Py_XDECREF(copied);
      return NULL;
    }
    export_legacy *e = (export_legacy *)PyMem_RawCalloc(1, sizeof *e);
    if (!e) {
      Py_XDECREF(copied);
      return PyErr_NoMemory();
    }
    e->m.manager_ctx = Py_NewRef((PyObject *)src);
    e->m.deleter = delete_legacy;
    fill_dl(src, &e->m.dl_tensor, e->shape, e->strides);
    cap = PyCapsule_New(&e->m, "dltensor", capsule_legacy_destructor);
    if (!cap) delete_legacy(&e->m);
  }
  Py_XDECREF(copied); /* the capsule holds its own reference */
  return cap;
}

static PyObject *tensor_dlpack_device(T *self, PyObject *unused) {
  return Py_BuildValue("(ii)", (int)self->device.device_type, (int)self->device.device_id);
}

/* A NumPy view of host memory (bf16/float8 through ml_dtypes). */
static PyObject *tensor_numpy(T *self, PyObject *unused) {
  if (self->device.device_type != kDLCPU) {
    char d[32];
    PyErr_Format(PyExc_TypeError,
                 "numpy(): the Tensor is on %s; copy it to the host first (deepseek_c.to_numpy)",
                 device_str(self->device, d, sizeof d));
    return NULL;
  }
  PyArray_Descr *descr = NULL;
  switch (self->dtype) {
    case DSC_DTYPE_FLOAT32: descr = PyArray_DescrFromType(NPY_FLOAT32); break;
    case DSC_DTYPE_FLOAT64: descr = PyArray_DescrFromType(NPY_FLOAT64); break;
    case DSC_DTYPE_FLOAT16: descr = PyArray_DescrFromType(NPY_FLOAT16); break;
    case DSC_DTYPE_INT32: descr = PyArray_DescrFromType(NPY_INT32); break;
    case DSC_DTYPE_INT64: descr = PyArray_DescrFromType(NPY_INT64); break;
    case DSC_DTYPE_INT8: descr = PyArray_DescrFromType(NPY_INT8); break;
    case DSC_DTYPE_UINT8: descr = PyArray_DescrFromType(NPY_UINT8); break;
    case DSC_DTYPE_BOOL: descr = PyArray_DescrFromType(NPY_BOOL); break;
    default: {
      PyObject *mld = PyImport_ImportModule("ml_dtypes");
      if (!mld) return NULL;
      PyObject *ty = PyObject_GetAttrString(mld, dsc_dtype_name(self->dtype));
      Py_DECREF(mld);
      if (!ty) return NULL;
      int ok = PyArray_DescrConverter(ty, &descr);
      Py_DECREF(ty);
      if (!ok) return NULL;
    }
  }
  if (!descr) return NULL;
  npy_intp dims[DSC_PY_MAX_DIMS], strides[DSC_PY_MAX_DIMS];
  size_t item = dsc_dtype_size(self->dtype);
  for (int i = 0; i < self->ndim; ++i) {
    dims[i] = (npy_intp)self->shape[i];
    strides[i] = (npy_intp)(self->strides[i] * (int64_t)item);
  }
  PyObject *arr = PyArray_NewFromDescr(&PyArray_Type, descr, self->ndim, dims, strides, self->data,
                                       NPY_ARRAY_WRITEABLE, NULL);
  if (!arr) return NULL;
  if (PyArray_SetBaseObject((PyArrayObject *)arr, Py_NewRef((PyObject *)self)) < 0) {
    Py_DECREF(arr);
    return NULL;
  }
  return arr;
}

static PyObject *tensor_array(T *self, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"dtype", "copy", NULL};
  PyObject *dtype = Py_None, *copy = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OO", kwlist, &dtype, &copy)) return NULL;
  PyObject *arr = tensor_numpy(self, NULL);
  if (!arr) return NULL;
  if (dtype != Py_None || copy == Py_True) {
    PyObject *r = PyObject_CallMethod(arr, "astype", "OO", dtype == Py_None ? (PyObject *)PyArray_DESCR((PyArrayObject *)arr) : dtype, Py_True);
    Py_DECREF(arr);
    return r;
  }
  return arr;
}

static PyObject *tensor_get_shape(T *self, void *c) {
  PyObject *t = PyTuple_New(self->ndim);
  if (!t) return NULL;
  for (int i = 0; i < self->ndim; ++i) {
    PyObject *v = PyLong_FromLongLong(self->shape[i]);
    if (!v) {
      Py_DECREF(t);
      return NULL;
    }
    PyTuple_SET_ITEM(t, i, v);
  }
  return t;
}

static PyObject *tensor_get_dtype(T *self, void *c) {
  return PyUnicode_FromString(dsc_dtype_name(self->dtype));
}

static PyObject *tensor_get_device(T *self, void *c) {
  char d[32];
  return PyUnicode_FromString(device_str(self->device, d, sizeof d));
}

static PyObject *tensor_get_ptr(T *self, void *c) { return PyLong_FromVoidPtr(self->data); }
static PyObject *tensor_get_ndim(T *self, void *c) { return PyLong_FromLong(self->ndim); }
static PyObject *tensor_get_nbytes(T *self, void *c) {
  return PyLong_FromLongLong(numel(self) * (int64_t)dsc_dtype_size(self->dtype));
}

static PyObject *tensor_repr(T *self) {
  char d[32], shape[256];
  size_t used = 0;
  shape[0] = '\0';
  for (int i = 0; i < self->ndim && used < sizeof shape; ++i) {
    int w = snprintf(shape + used, sizeof shape - used, i ? ", %lld" : "%lld",
                     (long long)self->shape[i]);
    if (w > 0) used += (size_t)w;
  }
  return PyUnicode_FromFormat("deepseek_c.Tensor(shape=(%s%s), dtype=%s, device=%s)", shape,
                              self->ndim == 1 ? "," : "", dsc_dtype_name(self->dtype),
                              device_str(self->device, d, sizeof d));
}

static Py_ssize_t tensor_len(T *self) {
  if (self->ndim == 0) {
    PyErr_SetString(PyExc_TypeError, "len() of a 0-d Tensor");
    return -1;
  }
  return (Py_ssize_t)self->shape[0];
}

/* t[i]: row i along the first dim, a view that keeps t alive (like NumPy's a[i]; the MoE
 * backward hands out per-expert gradients this way). Integer indices only. */
static PyObject *tensor_getitem(T *self, PyObject *key) {
  if (!PyIndex_Check(key)) {
    PyErr_Format(PyExc_TypeError,
                 "Tensor: index: expected an int (t[i] is a view of row i; for slices use "
                 ".numpy() or DLPack), got %s",
                 Py_TYPE(key)->tp_name);
    return NULL;
  }
  if (self->ndim == 0) {
    PyErr_SetString(PyExc_IndexError, "Tensor: index: a 0-d Tensor has no rows to index");
    return NULL;
  }
  Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
  if (i == -1 && PyErr_Occurred()) return NULL;
  const Py_ssize_t n = (Py_ssize_t)self->shape[0];
  if (i < 0) i += n;
  if (i < 0 || i >= n) {
    PyErr_Format(PyExc_IndexError, "Tensor: index: expected an index in [-%zd, %zd), got %zd", n, n,
                 i < 0 ? i - n : i);
    return NULL;
  }
  /* row-major (both constructors make it so): row i starts i * strides[0] elements in */
  char *row = (char *)self->data + (size_t)i * (size_t)self->strides[0] * dsc_dtype_size(self->dtype);
  return dsc_py_tensor_new_view(self->module, row, self->device, self->dtype, self->ndim - 1,
                                self->shape + 1, (PyObject *)self);
}

static PyMethodDef tensor_methods[] = {
    {"__dlpack__", (PyCFunction)(void (*)(void))tensor_dlpack, METH_VARARGS | METH_KEYWORDS,
     "__dlpack__(*, stream=None, max_version=None, dl_device=None, copy=None) -> PyCapsule"},
    {"__dlpack_device__", (PyCFunction)tensor_dlpack_device, METH_NOARGS,
     "__dlpack_device__() -> (device_type, device_id)"},
    {"numpy", (PyCFunction)tensor_numpy, METH_NOARGS,
     "numpy() -> a zero-copy ndarray view (host tensors only)"},
    {"__array__", (PyCFunction)(void (*)(void))tensor_array, METH_VARARGS | METH_KEYWORDS,
     "__array__(dtype=None, copy=None)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef tensor_getset[] = {
    {"shape", (getter)tensor_get_shape, NULL, "tuple of dims", NULL},
    {"dtype", (getter)tensor_get_dtype, NULL, "dtype name, e.g. 'bfloat16'", NULL},
    {"device", (getter)tensor_get_device, NULL, "'cpu' or 'cuda:N'", NULL},
    {"data_ptr", (getter)tensor_get_ptr, NULL, "address of the first element", NULL},
    {"ndim", (getter)tensor_get_ndim, NULL, "number of dims", NULL},
    {"nbytes", (getter)tensor_get_nbytes, NULL, "size in bytes", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot tensor_slots[] = {
    {Py_tp_dealloc, tensor_dealloc},
    {Py_tp_traverse, tensor_traverse},
    {Py_tp_clear, tensor_clear},
    {Py_tp_methods, tensor_methods},
    {Py_tp_getset, tensor_getset},
    {Py_tp_repr, tensor_repr},
    {Py_mp_length, tensor_len},
    {Py_mp_subscript, tensor_getitem},
    {Py_tp_doc, "Memory owned by the deepseek_c C core, exported zero-copy via DLPack.\n"
                "Create one with deepseek_c.empty / deepseek_c.tensor; consume it with\n"
                "numpy.from_dlpack, torch.from_dlpack, cupy.from_dlpack or .numpy()."},
    {0, NULL},
};

static PyType_Spec tensor_spec = {
    .name = "deepseek_c.Tensor",
    .basicsize = sizeof(T),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = tensor_slots,
};

int dsc_py_tensor_type_init(PyObject *module, dsc_py_state *st) {
  PyObject *tp = PyType_FromModuleAndSpec(module, &tensor_spec, NULL);
  if (!tp) return -1;
  st->tensor_type = (PyTypeObject *)tp;
  return PyModule_AddObjectRef(module, "Tensor", tp);
}
