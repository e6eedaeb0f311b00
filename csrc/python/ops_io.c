/*
 * ops_io.c -- Python wrappers of the safetensors reader and writer. An open file is a
 * capsule; its tensors are exported as zero-copy deepseek_c.Tensor views that keep
 * the capsule (and so the file's memory) alive.
 */
#include "glue.h"

#include <string.h>

static const char *const FILE_CAPSULE = "deepseek_c.safetensors";

static void file_capsule_destructor(PyObject *cap) {
  dsc_safetensors *f = (dsc_safetensors *)PyCapsule_GetPointer(cap, FILE_CAPSULE);
  if (f) dsc_safetensors_close(f);
  else PyErr_Clear();
}

static dsc_safetensors *file_of(PyObject *cap) {
  return (dsc_safetensors *)PyCapsule_GetPointer(cap, FILE_CAPSULE);
}

/* safetensors_open(path) -> capsule */
static PyObject *py_open(PyObject *m, PyObject *args) {
  PyObject *path_obj;
  if (!PyArg_ParseTuple(args, "O&", PyUnicode_FSConverter, &path_obj)) return NULL;
  dsc_safetensors *f = NULL;
  dsc_status s;
  const char *path = PyBytes_AS_STRING(path_obj);
  Py_BEGIN_ALLOW_THREADS s = dsc_safetensors_open(path, &f);
  Py_END_ALLOW_THREADS
  Py_DECREF(path_obj);
  if (s != DSC_OK) {
    /* a missing file is an OSError-like failure: report it as deepseek_c.Error */
    return dsc_py_raise(dsc_py_get_state(m), s);
  }
  PyObject *cap = PyCapsule_New(f, FILE_CAPSULE, file_capsule_destructor);
  if (!cap) dsc_safetensors_close(f);
  return cap;
}

/* safetensors_entries(file) -> [(name, dtype, shape)], {metadata} */
static PyObject *py_entries(PyObject *m, PyObject *args) {
  PyObject *cap;
  if (!PyArg_ParseTuple(args, "O", &cap)) return NULL;
  dsc_safetensors *f = file_of(cap);
  if (!f) return NULL;
  int64_t n = dsc_safetensors_count(f);
  PyObject *list = PyList_New((Py_ssize_t)n);
  PyObject *meta = PyDict_New();
  if (!list || !meta) goto fail;
  for (int64_t i = 0; i < n; ++i) {
    const char *name;
    dsc_dtype dt;
    int32_t nd;
    const int64_t *shape;
    if (dsc_safetensors_tensor(f, i, &name, &dt, &nd, &shape, NULL, NULL) != DSC_OK) {
      dsc_py_raise(dsc_py_get_state(m), DSC_ERR_INTERNAL);
      goto fail;
    }
    PyObject *sh = PyTuple_New(nd);
    if (!sh) goto fail;
    for (int d = 0; d < nd; ++d) {
      PyObject *v = PyLong_FromLongLong(shape[d]);
      if (!v) {
        Py_DECREF(sh);
        goto fail;
      }
      PyTuple_SET_ITEM(sh, d, v);
    }
    PyObject *item = Py_BuildValue("(ssN)", name, dsc_dtype_name(dt), sh);
    if (!item) goto fail;
    PyList_SET_ITEM(list, (Py_ssize_t)i, item);
  }
  for (int64_t i = 0; i < dsc_safetensors_metadata_count(f); ++i) {
    const char *k, *v;
    if (dsc_safetensors_metadata(f, i, &k, &v) != DSC_OK) continue;
    PyObject *pv = PyUnicode_FromString(v);
    if (!pv || PyDict_SetItemString(meta, k, pv) < 0) {
      Py_XDECREF(pv);
      goto fail;
    }
    Py_DECREF(pv);
  }
  return Py_BuildValue("(NN)", list, meta);
fail:
  Py_XDECREF(list);
  Py_XDECREF(meta);
  return NULL;
}

/* safetensors_tensor(file, index) -> Tensor view (host memory of the open file) */
static PyObject *py_tensor(PyObject *m, PyObject *args) {
  PyObject *cap;
  long long index;
  if (!PyArg_ParseTuple(args, "OL", &cap, &index)) return NULL;
  dsc_safetensors *f = file_of(cap);
  if (!f) return NULL;
  dsc_dtype dt;
  int32_t nd;
  const int64_t *shape;
  const void *data;
  dsc_status s = dsc_safetensors_tensor(f, (int64_t)index, NULL, &dt, &nd, &shape, &data, NULL);
  if (s != DSC_OK) return dsc_py_raise(dsc_py_get_state(m), s);
  DLDevice host = {kDLCPU, 0};
  return dsc_py_tensor_new_view(m, (void *)data, host, dt, nd, shape, cap);
}

/* The UTF-8 of a str that becomes a C string in the file's header, or NULL with
 * TypeError (not a str) or ValueError (a NUL inside, which a C string would cut off and
 * the reader refuses; or a lone surrogate, which UTF-8 cannot hold). Borrowed: valid
 * while the str lives. */
static const char *c_string(PyObject *s, const char *arg, Py_ssize_t i, const char *part) {
  if (!PyUnicode_Check(s)) {
    PyErr_Format(PyExc_TypeError, "dsc_safetensors_save: %s[%zd]%s: expected a str, got %s", arg, i, part,
                 Py_TYPE(s)->tp_name);
    return NULL;
  }
  Py_ssize_t n = 0;
  const char *u = PyUnicode_AsUTF8AndSize(s, &n);
  if (!u) {
    PyErr_Clear();
    PyErr_Format(PyExc_ValueError,
                 "dsc_safetensors_save: %s[%zd]%s: expected a str encodable as UTF-8 (no lone surrogates), "
                 "got %R", arg, i, part, s);
    return NULL;
  }
  if ((size_t)n != strlen(u)) {
    PyErr_Format(PyExc_ValueError,
                 "dsc_safetensors_save: %s[%zd]%s: %R contains a NUL character, which the C API's strings "
                 "cannot hold (they would end there)", arg, i, part, s);
    return NULL;
  }
  return u;
}

/* safetensors_save(path, names, arrays, metadata_items) */
static PyObject *py_save(PyObject *m, PyObject *args) {
  PyObject *path_obj, *names, *arrays, *meta;
  if (!PyArg_ParseTuple(args, "O&OOO", PyUnicode_FSConverter, &path_obj, &names, &arrays, &meta))
    return NULL;
  dsc_py_frame f;
  memset(&f, 0, sizeof f);
  f.st = dsc_py_get_state(m);
  f.fn = "dsc_safetensors_save";
  PyObject *ret = NULL;
  const char **cnames = NULL, **kv = NULL;
  const DLTensor **ts = NULL;
  Py_ssize_t n = PySequence_Size(names), nm = PySequence_Size(meta);
  if (n < 0 || nm < 0 || PySequence_Size(arrays) != n) {
    PyErr_SetString(PyExc_TypeError, "dsc_safetensors_save: names, arrays: expected sequences of equal length");
    goto out;
  }
  cnames = (const char **)PyMem_Calloc((size_t)n + 1, sizeof(char *));
  ts = (const DLTensor **)PyMem_Calloc((size_t)n + 1, sizeof(DLTensor *));
  kv = (const char **)PyMem_Calloc(2 * (size_t)nm + 1, sizeof(char *));
  if (!cnames || !ts || !kv) {
    PyErr_NoMemory();
    goto out;
  }
  /* borrowed UTF-8 buffers stay valid while the sequences hold the str objects */
  PyObject *name_seq = PySequence_Fast(names, "names: expected a sequence");
  PyObject *arr_seq = name_seq ? PySequence_Fast(arrays, "arrays: expected a sequence") : NULL;
  PyObject *meta_seq = arr_seq ? PySequence_Fast(meta, "metadata: expected a sequence") : NULL;
  if (!meta_seq) {
    Py_XDECREF(name_seq);
    Py_XDECREF(arr_seq);
    goto out;
  }
  int ok = 1;
  for (Py_ssize_t i = 0; i < n && ok; ++i) {
    cnames[i] = c_string(PySequence_Fast_GET_ITEM(name_seq, i), "names", i, "");
    ok = cnames[i] != NULL;
    if (ok) ok = (ts[i] = dsc_py_frame_add(&f, PySequence_Fast_GET_ITEM(arr_seq, i), cnames[i], 0, 0)) != NULL;
  }
  for (Py_ssize_t i = 0; i < nm && ok; ++i) {
    PyObject *pair = PySequence_Fast_GET_ITEM(meta_seq, i);
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
      PyErr_Format(PyExc_TypeError, "dsc_safetensors_save: metadata[%zd]: expected a (str, str) pair", i);
      ok = 0;
      break;
    }
    kv[2 * i] = c_string(PyTuple_GET_ITEM(pair, 0), "metadata", i, " key");
    kv[2 * i + 1] = kv[2 * i] ? c_string(PyTuple_GET_ITEM(pair, 1), "metadata", i, " value") : NULL;
    ok = kv[2 * i + 1] != NULL;
  }
  if (ok) {
    dsc_status s;
    const char *path = PyBytes_AS_STRING(path_obj);
    Py_BEGIN_ALLOW_THREADS s = dsc_safetensors_save(path, (int64_t)n, cnames, ts, (int64_t)nm, kv);
    Py_END_ALLOW_THREADS
    if (s != DSC_OK) dsc_py_raise(f.st, s);
    else ret = Py_NewRef(Py_None);
  }
  Py_DECREF(name_seq);
  Py_DECREF(arr_seq);
  Py_DECREF(meta_seq);
out:
  dsc_py_frame_release(&f);
  PyMem_Free(cnames);
  PyMem_Free(ts);
  PyMem_Free(kv);
  Py_DECREF(path_obj);
  return ret;
}

PyMethodDef dsc_py_io_methods[] = {
    {"safetensors_open", py_open, METH_VARARGS, "safetensors_open(path) -> file capsule"},
    {"safetensors_entries", py_entries, METH_VARARGS,
     "safetensors_entries(file) -> ([(name, dtype, shape)], metadata)"},
    {"safetensors_tensor", py_tensor, METH_VARARGS, "safetensors_tensor(file, index) -> Tensor view"},
    {"safetensors_save", py_save, METH_VARARGS, "safetensors_save(path, names, arrays, metadata_items)"},
    {NULL, NULL, 0, NULL},
};
