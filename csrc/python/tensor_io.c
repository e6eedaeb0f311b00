/*
 * tensor_io.c -- turning Python arrays into DLTensor views for one call.
 *
 * NumPy arrays are read through the NumPy C API directly (any dtype, including
 * ml_dtypes' bfloat16 / float8 that NumPy cannot pass over DLPack; byte strides
 * become element strides). dsc.Tensor is read from its struct. Everything else
 * goes through __dlpack__: a versioned capsule first, the legacy one as fallback;
 * for CUDA producers we pass the stream the call runs on (the DLPack stream handshake).
 * The stream of a call: streams.c.
 */
#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL dsc_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include "glue.h"

#include <numpy/arrayobject.h>
#include <string.h>

static const char *const CAPSULE_V = "dltensor_versioned";
static const char *const CAPSULE_V_USED = "used_dltensor_versioned";
static const char *const CAPSULE_L = "dltensor";
static const char *const CAPSULE_L_USED = "used_dltensor";

/* DLPack dtype of a NumPy descr, or lanes = 0 when it has none. */
static DLDataType numpy_dtype(PyArray_Descr *d) {
  DLDataType t = {0, 0, 0};
  int n = d->type_num;
  switch (n) {
    case NPY_FLOAT32: t.code = kDLFloat; t.bits = 32; break;
    case NPY_FLOAT64: t.code = kDLFloat; t.bits = 64; break;
    case NPY_FLOAT16: t.code = kDLFloat; t.bits = 16; break;
    case NPY_INT32: t.code = kDLInt; t.bits = 32; break;
    case NPY_INT64: t.code = kDLInt; t.bits = 64; break;
    case NPY_INT8: t.code = kDLInt; t.bits = 8; break;
    case NPY_UINT8: t.code = kDLUInt; t.bits = 8; break;
    case NPY_BOOL: t.code = kDLBool; t.bits = 8; break;
    default: break;
  }
  if (t.bits) {
    t.lanes = 1;
    return t;
  }
  if (n == NPY_LONG && sizeof(long) == 8) { t.code = kDLInt; t.bits = 64; t.lanes = 1; return t; }
  if (n == NPY_LONGLONG) { t.code = kDLInt; t.bits = 64; t.lanes = 1; return t; }
  if (n == NPY_INT && sizeof(int) == 4) { t.code = kDLInt; t.bits = 32; t.lanes = 1; return t; }
  if (n >= NPY_USERDEF) { /* ml_dtypes registers its types as user dtypes */
    PyObject *name = PyObject_GetAttrString((PyObject *)d, "name");
    if (!name) {
      PyErr_Clear();
      return t;
    }
    const char *s = PyUnicode_AsUTF8(name);
    if (s) {
      if (!strcmp(s, "bfloat16")) { t.code = kDLBfloat; t.bits = 16; t.lanes = 1; }
      else if (!strcmp(s, "float8_e4m3fn")) { t.code = kDLFloat8_e4m3fn; t.bits = 8; t.lanes = 1; }
      else if (!strcmp(s, "float8_e5m2")) { t.code = kDLFloat8_e5m2; t.bits = 8; t.lanes = 1; }
    }
    PyErr_Clear();
    Py_DECREF(name);
  }
  return t;
}

static int import_numpy(dsc_py_frame *f, dsc_py_tensor *v, PyArrayObject *a, const char *arg,
                        int writable) {
  PyArray_Descr *d = PyArray_DESCR(a);
  DLDataType dt = numpy_dtype(d);
  if (dt.lanes == 0) {
    PyObject *r = PyObject_Str((PyObject *)d);
    PyErr_Format(PyExc_TypeError,
                 "%s: %s: expected float32, bfloat16, float8, int32 or int64 data, got dtype %s",
                 f->fn, arg, r ? PyUnicode_AsUTF8(r) : "?");
    Py_XDECREF(r);
    return -1;
  }
  int nd = PyArray_NDIM(a);
  if (nd > DSC_PY_MAX_DIMS) {
    PyErr_Format(PyExc_ValueError, "%s: %s: expected at most %d dims, got %d", f->fn, arg,
                 DSC_PY_MAX_DIMS, nd);
    return -1;
  }
  if (writable && !PyArray_ISWRITEABLE(a)) {
    PyErr_Format(PyExc_ValueError, "%s: %s: expected a writable array, got a read-only one",
                 f->fn, arg);
    return -1;
  }
  if (!PyArray_ISALIGNED(a) || PyArray_ISBYTESWAPPED(a)) {
    PyErr_Format(PyExc_ValueError,
                 "%s: %s: expected an aligned array in native byte order, got one that is not",
                 f->fn, arg);
    return -1;
  }
  npy_intp item = PyArray_ITEMSIZE(a);
  for (int i = 0; i < nd; ++i) {
    npy_intp s = PyArray_STRIDE(a, i);
    v->shape[i] = PyArray_DIM(a, i);
    if (s % item != 0) {
      PyErr_Format(PyExc_ValueError,
                   "%s: %s: expected strides that are a multiple of the item size %zd, got %zd "
                   "bytes in dim %d",
                   f->fn, arg, (Py_ssize_t)item, (Py_ssize_t)s, i);
      return -1;
    }
    v->strides[i] = s / item;
  }
  v->t.data = PyArray_DATA(a);
  v->t.device.device_type = kDLCPU;
  v->t.device.device_id = 0;
  v->t.ndim = nd;
  v->t.dtype = dt;
  v->t.shape = v->shape;
  v->t.strides = v->strides;
  v->t.byte_offset = 0;
  v->owner = Py_NewRef((PyObject *)a);
  return 0;
}

static int import_dsc_tensor(dsc_py_tensor *v, dsc_py_tensor_obj *o) {
  v->t.data = o->data;
  v->t.device = o->device;
  v->t.ndim = o->ndim;
  v->t.dtype = dsc_dtype_to_dlpack(o->dtype);
  memcpy(v->shape, o->shape, sizeof(int64_t) * (size_t)o->ndim);
  memcpy(v->strides, o->strides, sizeof(int64_t) * (size_t)o->ndim);
  v->t.shape = v->shape;
  v->t.strides = v->strides;
  v->t.byte_offset = 0;
  v->owner = Py_NewRef((PyObject *)o);
  return 0;
}

/* Copy a producer's DLTensor into our view (own shape/strides arrays). */
static int adopt(dsc_py_frame *f, dsc_py_tensor *v, const DLTensor *src, const char *arg) {
  if (src->ndim < 0 || src->ndim > DSC_PY_MAX_DIMS) {
    PyErr_Format(PyExc_ValueError, "%s: %s: expected at most %d dims, got %d", f->fn, arg,
                 DSC_PY_MAX_DIMS, (int)src->ndim);
    return -1;
  }
  v->t = *src;
  for (int i = 0; i < src->ndim; ++i) v->shape[i] = src->shape[i];
  if (src->strides) {
    for (int i = 0; i < src->ndim; ++i) v->strides[i] = src->strides[i];
  } else { /* pre-1.2 producers may omit strides for compact row-major data */
    int64_t s = 1;
    for (int i = src->ndim - 1; i >= 0; --i) {
      v->strides[i] = s;
      s *= src->shape[i];
    }
  }
  v->t.shape = v->shape;
  v->t.strides = v->strides;
  return 0;
}

static int import_dlpack(dsc_py_frame *f, dsc_py_tensor *v, PyObject *obj, const char *arg,
                         int writable) {
  PyObject *dev = PyObject_CallMethod(obj, "__dlpack_device__", NULL);
  if (!dev) return -1;
  long dev_type = 0, dev_id = 0;
  if (!PyArg_ParseTuple(dev, "ll", &dev_type, &dev_id)) {
    Py_DECREF(dev);
    return -1;
  }
  Py_DECREF(dev);

  /* For CUDA producers: ask them to make the data ready on the stream we will use. */
  PyObject *stream = Py_None;
  PyObject *stream_obj = NULL;
  if (dev_type == kDLCUDA) {
    if (dsc_py_call_stream(f, obj, dev_id) < 0) return -1;
    /* DLPack names the legacy default stream 1 (0 is ambiguous there) */
    stream_obj = f->stream ? PyLong_FromUnsignedLongLong((unsigned long long)f->stream) : PyLong_FromLong(1);
    if (!stream_obj) return -1;
    stream = stream_obj;
  }

  PyObject *kwargs = Py_BuildValue("{s:(ii),s:O}", "max_version", 1, 1, "stream", stream);
  PyObject *meth = kwargs ? PyObject_GetAttrString(obj, "__dlpack__") : NULL;
  PyObject *empty = PyTuple_New(0);
  PyObject *cap = (meth && empty) ? PyObject_Call(meth, empty, kwargs) : NULL;
  if (!cap && meth && empty && PyErr_ExceptionMatches(PyExc_TypeError)) {
    /* A producer that predates DLPack 1.0 keywords. */
    PyErr_Clear();
    PyObject *kw2 = Py_BuildValue("{s:O}", "stream", stream);
    cap = kw2 ? PyObject_Call(meth, empty, kw2) : NULL;
    Py_XDECREF(kw2);
  }
  Py_XDECREF(kwargs);
  Py_XDECREF(meth);
  Py_XDECREF(empty);
  Py_XDECREF(stream_obj);
  if (!cap) return -1;

  int rc = -1;
  if (PyCapsule_IsValid(cap, CAPSULE_V)) {
    DLManagedTensorVersioned *m = (DLManagedTensorVersioned *)PyCapsule_GetPointer(cap, CAPSULE_V);
    if (!m) goto done;
    if (PyCapsule_SetName(cap, CAPSULE_V_USED) < 0) goto done;
    v->versioned = m; /* ours now: the deleter runs at release */
    if (m->version.major != DLPACK_MAJOR_VERSION) {
      PyErr_Format(PyExc_BufferError, "%s: %s: expected a DLPack %d.x tensor, got version %u.%u",
                   f->fn, arg, DLPACK_MAJOR_VERSION, m->version.major, m->version.minor);
      goto done;
    }
    if (writable && (m->flags & DLPACK_FLAG_BITMASK_READ_ONLY)) {
      PyErr_Format(PyExc_ValueError, "%s: %s: expected a writable array, got a read-only one",
                   f->fn, arg);
      goto done;
    }
    rc = adopt(f, v, &m->dl_tensor, arg);
  } else if (PyCapsule_IsValid(cap, CAPSULE_L)) {
    DLManagedTensor *m = (DLManagedTensor *)PyCapsule_GetPointer(cap, CAPSULE_L);
    if (!m) goto done;
    if (PyCapsule_SetName(cap, CAPSULE_L_USED) < 0) goto done;
    v->legacy = m;
    rc = adopt(f, v, &m->dl_tensor, arg);
  } else {
    PyErr_Format(PyExc_BufferError, "%s: %s: __dlpack__ returned something that is not a DLPack capsule",
                 f->fn, arg);
  }
done:
  Py_DECREF(cap);
  return rc;
}

DLTensor *dsc_py_frame_add(dsc_py_frame *f, PyObject *obj, const char *arg, int writable,
                           int optional) {
  if (obj == Py_None && optional) return NULL;
  if (f->n == f->cap) {
    int cap = f->cap ? 2 * f->cap : 8;
    dsc_py_tensor **nv = (dsc_py_tensor **)PyMem_Realloc(f->v, sizeof(*nv) * (size_t)cap);
    if (!nv) {
      PyErr_NoMemory();
      return NULL;
    }
    f->v = nv;
    f->cap = cap;
  }
  dsc_py_tensor *v = (dsc_py_tensor *)PyMem_Calloc(1, sizeof *v);
  if (!v) {
    PyErr_NoMemory();
    return NULL;
  }
  f->v[f->n] = v;
  int rc;
  if (PyArray_Check(obj)) {
    rc = import_numpy(f, v, (PyArrayObject *)obj, arg, writable);
  } else if (PyObject_TypeCheck(obj, f->st->tensor_type)) {
    rc = import_dsc_tensor(v, (dsc_py_tensor_obj *)obj);
    if (rc == 0 && v->t.device.device_type == kDLCUDA) rc = dsc_py_call_stream(f, obj, v->t.device.device_id);
  } else if (PyObject_HasAttrString(obj, "__dlpack__") &&
             PyObject_HasAttrString(obj, "__dlpack_device__")) {
    /* PyTorch refuses to export a tensor that requires grad with its own BufferError that
     * names no deepseek_c function: say which call and argument, and what to do. */
    PyObject *rg = PyObject_HasAttrString(obj, "requires_grad") ? PyObject_GetAttrString(obj, "requires_grad") : NULL;
    const int needs_grad = rg != NULL && PyObject_IsTrue(rg) == 1;
    Py_XDECREF(rg);
    PyErr_Clear();
    if (needs_grad) {
      PyErr_Format(PyExc_TypeError,
                   "%s: %s: expected a tensor without requires_grad (this call computes outside PyTorch's "
                   "autograd, so no gradient would flow back), got one that requires grad: pass %s.detach()",
                   f->fn, arg, arg);
      rc = -1;
    } else {
      rc = import_dlpack(f, v, obj, arg, writable);
    }
  } else {
    PyErr_Format(PyExc_TypeError,
                 "%s: %s: expected an array (NumPy, PyTorch, CuPy, JAX or deepseek_c.Tensor), got %s",
                 f->fn, arg, Py_TYPE(obj)->tp_name);
    rc = -1;
  }
  f->n++; /* released even when the import failed half way */
  if (rc < 0) return NULL;
  return &v->t;
}

void dsc_py_frame_release(dsc_py_frame *f) {
  for (int i = 0; i < f->n; ++i) {
    dsc_py_tensor *v = f->v[i];
    if (v->versioned && v->versioned->deleter) v->versioned->deleter(v->versioned);
    if (v->legacy && v->legacy->deleter) v->legacy->deleter(v->legacy);
    Py_CLEAR(v->owner);
    PyMem_Free(v);
  }
  PyMem_Free(f->v);
  f->v = NULL;
  f->n = f->cap = 0;
}
