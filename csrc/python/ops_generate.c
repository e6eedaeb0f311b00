/*
 * ops_generate.c -- the Python wrapper of dsc_model_generate (deepseek_c/generation.py
 * holds the defaults and argument checks):
 *
 *   model_generate(cap, prompts, max_new_tokens, temperature, top_k, top_p, seed, eos,
 *                  speculative, num_draft, cache_dtype, block_size, callback)
 *     -> (tokens: list of lists of int, stats: dict)
 *
 * prompts: a sequence of sequences of ints; eos: an id, -1 (none) or -2 (the config's);
 * cache_dtype: "float32" | "bfloat16" | "float8_e4m3fn"; callback: None or a callable
 * f(seq, token) -> None/False (go on), True / a positive int (stop that sequence), or a
 * negative int (stop every sequence). Generation runs with the GIL released on the
 * model's own context (entered: other threads calling this model wait); the callback takes
 * the GIL back for its call and may call ops and other models -- a call on this model from
 * it raises deepseek_c.Error (see dsc_py_ctx_enter). An exception in the callback stops the
 * generation and is re-raised once it has returned.
 */
#include "glue.h"

#include <limits.h>
#include <string.h>

#define MODEL_NAME "deepseek_c.model"

typedef struct {
  PyObject *fn;
  PyObject *et, *ev, *tb; /* the callback's exception, if any */
} gen_cb;

static int32_t call_token_fn(void *user, int32_t seq, int32_t token) {
  gen_cb *c = (gen_cb *)user;
  PyGILState_STATE gs = PyGILState_Ensure();
  int32_t ret = 0;
  if (c->et) { /* an earlier call failed: stop everything */
    PyGILState_Release(gs);
    return -1;
  }
  PyObject *r = PyObject_CallFunction(c->fn, "ii", (int)seq, (int)token);
  if (!r) {
    PyErr_Fetch(&c->et, &c->ev, &c->tb);
    ret = -1;
  } else {
    if (r == Py_None || r == Py_False) {
      ret = 0;
    } else if (r == Py_True) {
      ret = 1;
    } else if (PyLong_Check(r)) {
      const long v = PyLong_AsLong(r);
      if (v == -1 && PyErr_Occurred()) {
        PyErr_Fetch(&c->et, &c->ev, &c->tb);
        ret = -1;
      } else {
        ret = v < 0 ? -1 : (v > 0 ? 1 : 0);
      }
    } else {
      const int t = PyObject_IsTrue(r);
      if (t < 0) {
        PyErr_Fetch(&c->et, &c->ev, &c->tb);
        ret = -1;
      } else {
        ret = t ? 1 : 0;
      }
    }
    Py_DECREF(r);
  }
  PyGILState_Release(gs);
  return ret;
}

static int parse_cache_dtype(const char *s, int32_t *dt) {
  if (!strcmp(s, "float32")) *dt = DSC_DTYPE_FLOAT32;
  else if (!strcmp(s, "bfloat16")) *dt = DSC_DTYPE_BFLOAT16;
  else if (!strcmp(s, "float8_e4m3fn")) *dt = DSC_DTYPE_FLOAT8_E4M3FN;
  else {
    PyErr_Format(PyExc_ValueError,
                 "model_generate: cache_dtype: expected 'float32', 'bfloat16' or 'float8_e4m3fn', "
                 "got '%s'",
                 s);
    return 0;
  }
  return 1;
}

/* prompts -> one int32 buffer + row pointers + lengths (PyMem); 0 with an exception. */
static int parse_prompts(PyObject *obj, Py_ssize_t *n_out, int32_t **buf_out,
                         const int32_t ***rows_out, int32_t **lens_out) {
  PyObject *outer = PySequence_Fast(obj, "model_generate: prompts: expected a sequence of sequences of ints");
  if (!outer) return 0;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(outer);
  if (n > INT32_MAX) {
    Py_DECREF(outer);
    PyErr_SetString(PyExc_ValueError, "model_generate: prompts: too many prompts");
    return 0;
  }
  PyObject **inner = (PyObject **)PyMem_Calloc((size_t)(n ? n : 1), sizeof(PyObject *));
  int32_t *lens = (int32_t *)PyMem_Calloc((size_t)(n ? n : 1), sizeof(int32_t));
  const int32_t **rows = (const int32_t **)PyMem_Calloc((size_t)(n ? n : 1), sizeof(int32_t *));
  int32_t *buf = NULL;
  int ok = inner && lens && rows;
  if (!ok) PyErr_NoMemory();
  Py_ssize_t total = 0;
  for (Py_ssize_t i = 0; ok && i < n; ++i) {
    char msg[96];
    snprintf(msg, sizeof msg, "model_generate: prompts[%zd]: expected a sequence of ints", i);
    inner[i] = PySequence_Fast(PySequence_Fast_GET_ITEM(outer, i), msg);
    if (!inner[i]) {
      ok = 0;
      break;
    }
    const Py_ssize_t len = PySequence_Fast_GET_SIZE(inner[i]);
    if (len > INT32_MAX) {
      PyErr_Format(PyExc_ValueError, "model_generate: prompts[%zd]: too long", i);
      ok = 0;
      break;
    }
    lens[i] = (int32_t)len;
    total += len;
  }
  if (ok) {
    buf = (int32_t *)PyMem_Malloc((size_t)(total ? total : 1) * sizeof(int32_t));
    if (!buf) {
      PyErr_NoMemory();
      ok = 0;
    }
  }
  Py_ssize_t off = 0;
  for (Py_ssize_t i = 0; ok && i < n; ++i) {
    rows[i] = buf + off;
    for (Py_ssize_t j = 0; ok && j < lens[i]; ++j) {
      PyObject *idx = PyNumber_Index(PySequence_Fast_GET_ITEM(inner[i], j));
      long long v = idx ? PyLong_AsLongLong(idx) : -1;
      Py_XDECREF(idx);
      if (!idx || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "model_generate: prompts[%zd]: expected ints, got a %s at index %zd",
                     i, Py_TYPE(PySequence_Fast_GET_ITEM(inner[i], j))->tp_name, j);
        ok = 0;
      } else if (v < INT32_MIN || v > INT32_MAX) {
        PyErr_Format(PyExc_ValueError,
                     "dsc_model_generate: prompts[%zd]: expected ids in [0, vocab_size), got %lld "
                     "at index %zd",
                     i, v, j);
        ok = 0;
      } else {
        buf[off + j] = (int32_t)v;
      }
    }
    off += lens[i];
  }
  for (Py_ssize_t i = 0; inner && i < n; ++i) Py_XDECREF(inner[i]);
  PyMem_Free(inner);
  Py_DECREF(outer);
  if (!ok) {
    PyMem_Free(buf);
    PyMem_Free(lens);
    PyMem_Free(rows);
    return 0;
  }
  *n_out = n;
  *buf_out = buf;
  *rows_out = rows;
  *lens_out = lens;
  return 1;
}

static PyObject *py_model_generate(PyObject *m, PyObject *args) {
  PyObject *cap, *prompts_o, *cb_o;
  int max_new, top_k, eos, speculative, num_draft, block_size;
  float temperature, top_p;
  unsigned long long seed;
  const char *cache_dtype;
  if (!PyArg_ParseTuple(args, "OOififKiiisiO:model_generate", &cap, &prompts_o, &max_new,
                        &temperature, &top_k, &top_p, &seed, &eos, &speculative, &num_draft,
                        &cache_dtype, &block_size, &cb_o))
    return NULL;
  dsc_model *mdl = (dsc_model *)PyCapsule_GetPointer(cap, MODEL_NAME);
  if (!mdl) return NULL;
  if (cb_o != Py_None && !PyCallable_Check(cb_o)) {
    PyErr_Format(PyExc_TypeError, "model_generate: callback: expected a callable or None, got %s",
                 Py_TYPE(cb_o)->tp_name);
    return NULL;
  }
  dsc_generate_options o;
  dsc_generate_options_default(&o);
  o.max_new_tokens = max_new;
  o.temperature = temperature;
  o.top_k = top_k;
  o.top_p = top_p;
  o.seed = (uint64_t)seed;
  o.eos_token_id = eos;
  o.speculative = speculative;
  o.num_draft = num_draft;
  o.block_size = block_size;
  if (!parse_cache_dtype(cache_dtype, &o.cache_dtype)) return NULL;

  dsc_py_ctx *c = dsc_py_ctx_get((PyObject *)PyCapsule_GetContext(cap));
  if (!c) return NULL;
  dsc_status s;

  Py_ssize_t n = 0;
  int32_t *buf = NULL, *lens = NULL;
  const int32_t **rows = NULL;
  if (!parse_prompts(prompts_o, &n, &buf, &rows, &lens)) return NULL;
  PyObject *ret = NULL, *toks = NULL, *stats = NULL;
  const size_t nout = (size_t)n * (size_t)(max_new > 0 ? max_new : 0);
  int32_t *out = (int32_t *)PyMem_Malloc((nout ? nout : 1) * sizeof(int32_t));
  int32_t *out_lens = (int32_t *)PyMem_Malloc((size_t)(n ? n : 1) * sizeof(int32_t));
  gen_cb cb = {cb_o, NULL, NULL, NULL};
  dsc_generate_stats st;
  memset(&st, 0, sizeof st);
  st.size = sizeof st;
  const dsc_token_fn fn = cb_o != Py_None ? call_token_fn : NULL;
  if (!out || !out_lens) {
    PyErr_NoMemory();
    goto done;
  }
  if (dsc_py_ctx_enter(dsc_py_get_state(m), c, "dsc_model_generate", 0) < 0) goto done;
  Py_INCREF(cb_o);
  DSC_PY_CALL(s, dsc_model_generate(mdl, &o, (int32_t)n, rows, lens, out, out_lens, fn, &cb, &st));
  Py_DECREF(cb_o);
  dsc_py_ctx_leave(c);
  if (cb.et) { /* the callback's exception wins */
    PyErr_Restore(cb.et, cb.ev, cb.tb);
    goto done;
  }
  if (s != DSC_OK) {
    dsc_py_raise(dsc_py_get_state(m), s);
    goto done;
  }
  toks = PyList_New(n);
  if (!toks) goto done;
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject *row = PyList_New(out_lens[i]);
    if (!row) {
      Py_DECREF(toks);
      goto done;
    }
    for (int32_t j = 0; j < out_lens[i]; ++j) {
      PyObject *v = PyLong_FromLong(out[(size_t)i * (size_t)max_new + (size_t)j]);
      if (!v) {
        Py_DECREF(row);
        Py_DECREF(toks);
        goto done;
      }
      PyList_SET_ITEM(row, j, v);
    }
    PyList_SET_ITEM(toks, i, row);
  }
  stats = Py_BuildValue(
      "{s:L,s:L,s:L,s:L,s:i,s:d,s:d}", "prompt_tokens", (long long)st.prompt_tokens, "new_tokens",
      (long long)st.new_tokens, "drafted", (long long)st.drafted, "accepted",
      (long long)st.accepted, "main_forwards", (int)st.main_forwards, "seconds", st.seconds,
      "tokens_per_s", st.tokens_per_s);
  if (!stats) {
    Py_DECREF(toks);
    goto done;
  }
  ret = Py_BuildValue("(NN)", toks, stats);
done:
  PyMem_Free(out);
  PyMem_Free(out_lens);
  PyMem_Free(buf);
  PyMem_Free(lens);
  PyMem_Free(rows);
  return ret;
}

PyMethodDef dsc_py_generate_methods[] = {
    {"model_generate", py_model_generate, METH_VARARGS,
     "dsc_model_generate: (tokens, stats) for a list of prompts (see deepseek_c.generation)."},
    {NULL, NULL, 0, NULL},
};
