/*
 * module.c -- the deepseek_c._C module: state, contexts, status -> exception, and
 * the core functions (build info, devices, memory).
 */
#define PY_ARRAY_UNIQUE_SYMBOL dsc_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include "glue.h"

#include <numpy/arrayobject.h>
#include <string.h>

dsc_py_state *dsc_py_get_state(PyObject *module) {
  return (dsc_py_state *)PyModule_GetState(module);
}

PyObject *dsc_py_raise(dsc_py_state *st, dsc_status s) {
  const char *msg = dsc_last_error();
  if (!msg || !msg[0]) msg = dsc_status_string(s);
  PyObject *type;
  switch (s) {
    case DSC_ERR_INVALID_ARGUMENT:
    case DSC_ERR_SHAPE:
    case DSC_ERR_DEVICE: type = PyExc_ValueError; break;
    case DSC_ERR_DTYPE: type = PyExc_TypeError; break;
    case DSC_ERR_OUT_OF_MEMORY: type = PyExc_MemoryError; break;
    default: type = st->error_type; break;
  }
  /* messages may quote bytes from a corrupt file: decode leniently */
  PyObject *text = PyUnicode_DecodeUTF8(msg, (Py_ssize_t)strlen(msg), "replace");
  if (!text) return NULL;
  PyErr_SetObject(type, text);
  Py_DECREF(text);
  return NULL;
}

dsc_context *dsc_py_context(dsc_py_state *st, DLDevice dev, PyThread_type_lock *lock) {
  dsc_context **slot;
  PyThread_type_lock *lk;
  if (dev.device_type == kDLCPU) {
    slot = &st->cpu;
    lk = &st->cpu_lock;
  } else if (dev.device_type == kDLCUDA) {
    if (dev.device_id < 0 || dev.device_id >= DSC_PY_MAX_CUDA) {
      PyErr_Format(PyExc_ValueError, "device: expected a CUDA ordinal in [0, %d), got %d",
                   DSC_PY_MAX_CUDA, (int)dev.device_id);
      return NULL;
    }
    slot = &st->cuda[dev.device_id];
    lk = &st->cuda_lock[dev.device_id];
  } else {
    PyErr_Format(PyExc_ValueError,
                 "device: expected a CPU or CUDA array, got DLPack device type %d (only kDLCPU=1 "
                 "and kDLCUDA=2 are supported)",
                 (int)dev.device_type);
    return NULL;
  }
  if (!*slot) {
    dsc_context_options o;
    memset(&o, 0, sizeof o);
    o.size = sizeof o;
    o.device_type = dev.device_type;
    o.device_id = dev.device_id;
    dsc_context *ctx = NULL;
    dsc_status s = dsc_context_create(&o, &ctx);
    if (s != DSC_OK) return (dsc_context *)dsc_py_raise(st, s);
    PyThread_type_lock l = PyThread_allocate_lock();
    if (!l) {
      dsc_context_destroy(ctx);
      PyErr_NoMemory();
      return NULL;
    }
    *slot = ctx;
    *lk = l;
  }
  *lock = *lk;
  return *slot;
}

/* ---------------------------------------------------------------- functions */

static PyObject *py_build_info(PyObject *m, PyObject *unused) {
  dsc_build_info bi;
  memset(&bi, 0, sizeof bi);
  bi.size = sizeof bi;
  dsc_status s = dsc_get_build_info(&bi);
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
  return Py_BuildValue("{s:s,s:O,s:s,s:s,s:O,s:O,s:s,s:O,s:i}", "version", bi.version, "cuda",
                       bi.cuda ? Py_True : Py_False, "cuda_version", bi.cuda_version,
                       "cuda_archs", bi.cuda_archs, "cublaslt", bi.cublaslt ? Py_True : Py_False,
                       "nccl", bi.nccl ? Py_True : Py_False, "blas", bi.blas, "openmp",
                       bi.openmp ? Py_True : Py_False, "max_threads", (int)bi.max_threads);
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
  int64_t ed = 1, es = 1;
  for (int i = 0; i < dst->ndim; ++i) ed *= dst->shape[i];
  for (int i = 0; i < src->ndim; ++i) es *= src->shape[i];
  if (nd == 0 || ns == 0 || (size_t)ed * nd != (size_t)es * ns) {
    PyErr_Format(PyExc_ValueError, "copy: dst: expected %lld bytes like src, got %lld",
                 (long long)((size_t)es * ns), (long long)((size_t)ed * nd));
    goto out;
  }
  /* Contiguity is checked through a throwaway element-wise view. */
  for (int k = 0; k < 2; ++k) {
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
  PyThread_type_lock lock;
  dsc_context *ctx = dsc_py_context(f.st, dev, &lock);
  if (!ctx) goto out;
  dsc_status s;
  void *dp = (char *)dst->data + dst->byte_offset;
  const void *sp = (const char *)src->data + src->byte_offset;
  DLDevice dd = dst->device, sd = src->device;
  size_t bytes = (size_t)ed * nd;
  DSC_PY_CALL(lock, s, dsc_memcpy(ctx, dp, dd, sp, sd, bytes));
  if (s == DSC_OK) DSC_PY_CALL(lock, s, dsc_context_synchronize(ctx));
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
  PyThread_type_lock lock;
  dsc_context *ctx = dsc_py_context(st, dev, &lock);
  if (!ctx) return NULL;
  dsc_status s;
  DSC_PY_CALL(lock, s, dsc_context_synchronize(ctx));
  if (s != DSC_OK) return dsc_py_raise(st, s);
  Py_RETURN_NONE;
}

PyMethodDef dsc_py_core_methods[] = {
    {"build_info", py_build_info, METH_NOARGS, "build_info() -> dict: what this build contains."},
    {"cuda_device_count", py_cuda_device_count, METH_NOARGS,
     "cuda_device_count() -> (count, reason or None)"},
    {"cuda_device_name", py_cuda_device_name, METH_VARARGS,
     "cuda_device_name(index) -> (name, cc_major, cc_minor)"},
    {"empty", py_empty, METH_VARARGS, "empty(shape, dtype, device_type, device_id) -> Tensor"},
    {"copy", py_copy, METH_VARARGS, "copy(dst, src): byte copy between contiguous arrays"},
    {"synchronize", py_synchronize, METH_VARARGS, "synchronize(device_type, device_id)"},
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
  return 0;
}

static int module_traverse(PyObject *m, visitproc visit, void *arg) {
  dsc_py_state *st = dsc_py_get_state(m);
  if (st) {
    Py_VISIT(st->error_type);
    Py_VISIT(st->tensor_type);
  }
  return 0;
}

static int module_clear(PyObject *m) {
  dsc_py_state *st = dsc_py_get_state(m);
  if (st) {
    Py_CLEAR(st->error_type);
    Py_CLEAR(st->tensor_type);
  }
  return 0;
}

static void module_free(void *mp) {
  PyObject *m = (PyObject *)mp;
  module_clear(m);
  dsc_py_state *st = dsc_py_get_state(m);
  if (!st) return;
  /* Owned dsc.Tensors hold a reference to the module, so none is alive here. */
  dsc_context_destroy(st->cpu);
  st->cpu = NULL;
  if (st->cpu_lock) PyThread_free_lock(st->cpu_lock);
  for (int i = 0; i < DSC_PY_MAX_CUDA; ++i) {
    dsc_context_destroy(st->cuda[i]);
    st->cuda[i] = NULL;
    if (st->cuda_lock[i]) PyThread_free_lock(st->cuda_lock[i]);
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
