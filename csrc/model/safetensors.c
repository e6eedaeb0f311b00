/*
 * model/safetensors.c -- the project's own safetensors reader and writer.
 *
 * Format (public, Hugging Face): 8 bytes little-endian u64 N, then N bytes of UTF-8 JSON
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 *  "__metadata__": {"key": "value", ...}} (whitespace may pad it), then the data block;
 * offsets are relative to the data block.
 *
 * The reader accepts exactly the files the reference reader (the `safetensors` package)
 * accepts, with the exceptions listed below, and rejects everything else with
 * DSC_ERR_FORMAT naming the file, the tensor and the byte offset in the file:
 *  - N <= 100,000,000 and 8 + N <= file size;
 *  - the header is one strict JSON object (json.h: valid UTF-8, no lone surrogates, no
 *    leading zeros, no trailing data but whitespace, nesting at most 127 levels, as
 *    serde_json) -- values under unknown keys are ignored but must be valid JSON too;
 *  - "__metadata__" is null or a map of strings to strings;
 *  - every other member is a tensor {"dtype": a name, "shape": [dims], "data_offsets":
 *    [begin, end]}, dims and offsets plain non-negative integers (no 1.0, 1e0, -0),
 *    data_offsets exactly two, unknown members ignored;
 *  - numel (product of the dims, checked for overflow in order) * bits per element fits
 *    in 64 bits, and end - begin is exactly numel * itemsize;
 *  - the tensors, sorted by (begin, end), cover the data block exactly: the first begins
 *    at 0, each begins where the previous ends, the last ends at the end of the file (no
 *    gap, no overlap, no aliasing, no trailing bytes).
 * Stricter than the reference, on purpose (files it never writes):
 *  - a member name given twice in any object (the reference keeps the last tensor or
 *    metadata key silently, and ignores repeats inside ignored values);
 *  - a NUL (\u0000) in a tensor name or a metadata key or value: the C API hands out
 *    NUL-terminated names, which would cut "a\u0000b" to "a";
 *  - dtypes this library has no type for (I16, U16, U32, U64, F8_E8M0, F4, ...), more
 *    than 16 dims, or a shape whose nonzero dims times the itemsize exceed 2^63 - 1
 *    bytes (no DLPack or NumPy array can have it; the reference accepts [2^62, 0]);
 *  - two spellings only serde's generic decoding lets through, which no writer produces:
 *    a tensor entry as an array ["F32", [1], [0, 4]], and a dtype as {"F32": null}.
 *
 * The file is read whole into memory placed so that the data block starts 64-byte
 * aligned, whatever N is; tensor data are views into it until the file is closed.
 * Lookups by name are binary searches over the names sorted once at open; the
 * duplicate check sorts too, so a header of n tensors costs O(n log n), never O(n^2).
 *
 * Writing goes to a temporary file in the same directory, is flushed and fsync'ed, then
 * renamed over the target, so a reader sees either the old file or the new one, never
 * half of one. The writer refuses what the reader would refuse (names that are not
 * UTF-8, a name or metadata key given twice, a header over the limit).
 */
#define _POSIX_C_SOURCE 200809L
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "json.h"

#define MAX_HEADER_BYTES ((uint64_t)100000000) /* the reference's limit (decimal, not MiB) */
#define MAX_DIMS 16
#define DATA_ALIGN 64 /* the data block's alignment in memory */
#define HEADER_MAX_DEPTH 127 /* as serde_json (the reference): 127 nested containers, not 128 */

typedef struct {
  const char *name; /* in the file's decoded strings: NUL-terminated, no NUL inside */
  size_t name_len;
  dsc_dtype dtype;
  int32_t ndim;
  int64_t shape[MAX_DIMS];
  uint64_t begin, end; /* byte range in the data block */
  size_t at;           /* byte offset of the entry in the file (messages) */
} st_entry;

struct dsc_safetensors {
  char *path;
  unsigned char *mem;   /* the allocation, owned */
  unsigned char *bytes; /* the file: inside mem, placed so that the data block is aligned */
  uint64_t size;
  uint64_t data_start;  /* 8 + N */
  char *strings;        /* the header's decoded strings, owned; names and metadata point in */
  st_entry *entries;    /* [n] in header order */
  int64_t n, cap;
  int64_t *by_name;     /* [n] entry indices sorted by name */
  const char **meta;    /* key, value, key, value ... (into strings) */
  int64_t n_meta, cap_meta;
};

/* ------------------------------------------------------------------ dtypes */

static const struct {
  const char *name;
  dsc_dtype dtype;
} DTYPES[] = {
    {"F32", DSC_DTYPE_FLOAT32},      {"BF16", DSC_DTYPE_BFLOAT16}, {"F16", DSC_DTYPE_FLOAT16},
    {"F8_E4M3", DSC_DTYPE_FLOAT8_E4M3FN}, {"F8_E5M2", DSC_DTYPE_FLOAT8_E5M2},
    {"I32", DSC_DTYPE_INT32},        {"I64", DSC_DTYPE_INT64},     {"U8", DSC_DTYPE_UINT8},
    {"BOOL", DSC_DTYPE_BOOL},        {"F64", DSC_DTYPE_FLOAT64},   {"I8", DSC_DTYPE_INT8},
};

static dsc_dtype dtype_from_name(const char *s, size_t n) {
  for (size_t i = 0; i < sizeof DTYPES / sizeof DTYPES[0]; ++i)
    if (strlen(DTYPES[i].name) == n && !memcmp(DTYPES[i].name, s, n)) return DTYPES[i].dtype;
  return DSC_DTYPE_INVALID;
}

static const char *dtype_to_name(dsc_dtype t) {
  for (size_t i = 0; i < sizeof DTYPES / sizeof DTYPES[0]; ++i)
    if (DTYPES[i].dtype == t) return DTYPES[i].name;
  return NULL;
}

/* ------------------------------------------------------------------ reader */

/* Reading state: the file and the JSON cursor over its header. */
typedef struct {
  dsc_safetensors *f;
  dsc_json_cursor c;
  const char *fn;
} reader;

#define QNAME(buf, e) dsc_json_quote((buf), sizeof(buf), (e)->name, (e)->name_len)

/* "<fn>: path: <file>: tensor "<name>" (header byte B): <message>" */
static dsc_status bad_tensor(const reader *r, const char *name, size_t name_len, size_t at, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;

static dsc_status bad_tensor(const reader *r, const char *name, size_t name_len, size_t at, const char *fmt, ...) {
  char msg[512], q[128];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return dsc_error(DSC_ERR_FORMAT, r->fn, "path: %s: tensor \"%s\" (at byte %llu): %s", r->f->path,
                   dsc_json_quote(q, sizeof q, name, name_len), (unsigned long long)(8 + at), msg);
}

static dsc_status oom(const reader *r) {
  return dsc_error(DSC_ERR_OUT_OF_MEMORY, r->fn, "path: %s: out of host memory", r->f->path);
}

static dsc_status no_nul(const reader *r, const char *s, size_t n, size_t at, const char *what) {
  if (!memchr(s, '\0', n)) return DSC_OK;
  char q[128];
  return dsc_error(DSC_ERR_FORMAT, r->fn,
                   "path: %s: %s \"%s\" (at byte %llu) contains a NUL character (\\u0000), which "
                   "names in the C API (NUL-terminated strings) cannot carry",
                   r->f->path, what, dsc_json_quote(q, sizeof q, s, n), (unsigned long long)(8 + at));
}

/* "shape": [d0, d1, ...] */
static dsc_status read_shape(reader *r, st_entry *e) {
  dsc_json_cursor *c = &r->c;
  if (dsc_json_next_type(c) != DSC_JSON_ARRAY)
    return bad_tensor(r, e->name, e->name_len, c->pos, "shape: expected an array of dims");
  int more;
  DSC_TRY(dsc_json_begin(c, '[', &more));
  e->ndim = 0;
  while (more) {
    const size_t at = c->pos;
    uint64_t v;
    DSC_TRY(dsc_json_uint(c, "a dim", &v));
    if (e->ndim >= MAX_DIMS)
      return bad_tensor(r, e->name, e->name_len, at, "shape: more than %d dims (the most this library supports)",
                        MAX_DIMS);
    if (v > (uint64_t)INT64_MAX)
      return bad_tensor(r, e->name, e->name_len, at, "shape: dim %llu is too large for this library (above 2^63 - 1)",
                        (unsigned long long)v);
    e->shape[e->ndim++] = (int64_t)v;
    DSC_TRY(dsc_json_more(c, &more));
  }
  return DSC_OK;
}

/* "data_offsets": [begin, end] */
static dsc_status read_offsets(reader *r, st_entry *e) {
  dsc_json_cursor *c = &r->c;
  dsc_json_peek(c);
  const size_t at = c->pos;
  if (dsc_json_next_type(c) != DSC_JSON_ARRAY)
    return bad_tensor(r, e->name, e->name_len, at, "data_offsets: expected an array [begin, end]");
  uint64_t v[2];
  int n = 0, more;
  DSC_TRY(dsc_json_begin(c, '[', &more));
  while (more) {
    if (n == 2) return bad_tensor(r, e->name, e->name_len, at, "data_offsets: expected exactly two offsets [begin, end]");
    DSC_TRY(dsc_json_uint(c, "an offset", &v[n]));
    n++;
    DSC_TRY(dsc_json_more(c, &more));
  }
  if (n != 2) return bad_tensor(r, e->name, e->name_len, at, "data_offsets: expected exactly two offsets [begin, end]");
  e->begin = v[0];
  e->end = v[1];
  return DSC_OK;
}

/* numel * itemsize bytes as the reference computes it (numel over the dims in order,
 * then numel * bits per element, each step checked), plus this library's own limit:
 * the nonzero dims times the itemsize fit in int64 (what DLPack and NumPy can hold). */
static dsc_status entry_bytes(const reader *r, const st_entry *e, uint64_t *bytes) {
  const uint64_t item = dsc_dtype_size(e->dtype);
  uint64_t numel = 1, addressable = item;
  for (int i = 0; i < e->ndim; ++i) {
    const uint64_t d = (uint64_t)e->shape[i];
    if (d != 0 && numel > UINT64_MAX / d)
      return bad_tensor(r, e->name, e->name_len, e->at, "the number of elements overflows 64 bits");
    numel *= d;
    if (d != 0) {
      if (addressable > (uint64_t)INT64_MAX / d)
        return bad_tensor(r, e->name, e->name_len, e->at,
                          "its shape is too large for this library: its nonzero dims span more than 2^63 - 1 bytes "
                          "(no DLPack or NumPy array can have it)");
      addressable *= d;
    }
  }
  if (numel > UINT64_MAX / (8 * item))
    return bad_tensor(r, e->name, e->name_len, e->at, "the number of bits overflows 64 bits");
  *bytes = numel * item;
  return DSC_OK;
}

/* One tensor entry: the object after its name. */
static dsc_status read_entry(reader *r, const char *name, size_t name_len) {
  dsc_json_cursor *c = &r->c;
  dsc_safetensors *f = r->f;
  st_entry e;
  memset(&e, 0, sizeof e);
  e.name = name;
  e.name_len = name_len;
  dsc_json_peek(c);
  e.at = c->pos;
  DSC_TRY(no_nul(r, name, name_len, e.at, "tensor name"));
  const int t = dsc_json_next_type(c);
  if (t != DSC_JSON_OBJECT)
    return bad_tensor(r, name, name_len, e.at, "expected an object {\"dtype\", \"shape\", \"data_offsets\"}, got %s",
                      t < 0 ? "no JSON value" : dsc_json_type_name((dsc_json_type)t));
  int have_dtype = 0, have_shape = 0, have_off = 0, more;
  DSC_TRY(dsc_json_begin(c, '{', &more));
  while (more) {
    const char *k;
    size_t kn;
    DSC_TRY(dsc_json_key(c, &k, &kn));
    dsc_json_peek(c);
    const size_t at = c->pos;
    if (kn == 5 && !memcmp(k, "dtype", 5)) {
      if (dsc_json_next_type(c) != DSC_JSON_STRING)
        return bad_tensor(r, name, name_len, at, "dtype: expected a string such as \"F32\"");
      const char *s;
      size_t sn;
      DSC_TRY(dsc_json_string(c, &s, &sn));
      e.dtype = dtype_from_name(s, sn);
      if (e.dtype == DSC_DTYPE_INVALID) {
        char q[64];
        return bad_tensor(r, name, name_len, at,
                          "unsupported dtype \"%s\" (this library reads F32, F64, F16, BF16, F8_E4M3, "
                          "F8_E5M2, I64, I32, I8, U8 and BOOL)",
                          dsc_json_quote(q, sizeof q, s, sn));
      }
      have_dtype = 1;
    } else if (kn == 5 && !memcmp(k, "shape", 5)) {
      DSC_TRY(read_shape(r, &e));
      have_shape = 1;
    } else if (kn == 12 && !memcmp(k, "data_offsets", 12)) {
      DSC_TRY(read_offsets(r, &e));
      have_off = 1;
    } else {
      DSC_TRY(dsc_json_skip(c)); /* unknown members are allowed, if they are valid JSON */
    }
    DSC_TRY(dsc_json_more(c, &more)); /* rejects a member given twice ("shape" twice, ...) */
  }
  if (!have_dtype || !have_shape || !have_off)
    return bad_tensor(r, name, name_len, e.at, "missing \"%s\"",
                      !have_dtype ? "dtype" : !have_shape ? "shape" : "data_offsets");
  uint64_t bytes = 0;
  DSC_TRY(entry_bytes(r, &e, &bytes));
  if (e.end < e.begin)
    return bad_tensor(r, name, name_len, e.at, "data_offsets [%llu, %llu]: the end is before the begin",
                      (unsigned long long)e.begin, (unsigned long long)e.end);
  if (e.end - e.begin != bytes)
    return bad_tensor(r, name, name_len, e.at,
                      "data_offsets [%llu, %llu] span %llu bytes, its dtype and shape need %llu",
                      (unsigned long long)e.begin, (unsigned long long)e.end,
                      (unsigned long long)(e.end - e.begin), (unsigned long long)bytes);
  if (f->n == f->cap) {
    int64_t cap = f->cap ? 2 * f->cap : 64;
    st_entry *ne = (st_entry *)realloc(f->entries, sizeof *ne * (size_t)cap);
    if (!ne) return oom(r);
    f->entries = ne;
    f->cap = cap;
  }
  f->entries[f->n++] = e;
  return DSC_OK;
}

/* "__metadata__": null or {"key": "value", ...} */
static dsc_status read_metadata(reader *r) {
  dsc_json_cursor *c = &r->c;
  dsc_safetensors *f = r->f;
  const int t = dsc_json_next_type(c);
  const size_t at = c->pos;
  if (t == DSC_JSON_NULL) {
    dsc_json_type lt;
    return dsc_json_literal(c, &lt);
  }
  if (t != DSC_JSON_OBJECT)
    return dsc_error(DSC_ERR_FORMAT, r->fn, "path: %s: __metadata__ (at byte %llu): expected null or an "
                     "object of strings, got %s", f->path, (unsigned long long)(8 + at),
                     t < 0 ? "no JSON value" : dsc_json_type_name((dsc_json_type)t));
  int more;
  DSC_TRY(dsc_json_begin(c, '{', &more));
  while (more) {
    const char *k, *v;
    size_t kn, vn;
    dsc_json_peek(c);
    const size_t kat = c->pos;
    DSC_TRY(dsc_json_key(c, &k, &kn));
    DSC_TRY(no_nul(r, k, kn, kat, "__metadata__ key"));
    dsc_json_peek(c);
    const size_t vat = c->pos;
    if (dsc_json_next_type(c) != DSC_JSON_STRING) {
      char q[128];
      return dsc_error(DSC_ERR_FORMAT, r->fn, "path: %s: __metadata__ \"%s\" (at byte %llu): expected a "
                       "string value", f->path, dsc_json_quote(q, sizeof q, k, kn), (unsigned long long)(8 + vat));
    }
    DSC_TRY(dsc_json_string(c, &v, &vn));
    DSC_TRY(no_nul(r, v, vn, vat, "__metadata__ value"));
    if (f->n_meta == f->cap_meta) {
      int64_t cap = f->cap_meta ? 2 * f->cap_meta : 8;
      const char **nm = (const char **)realloc((void *)f->meta, sizeof(char *) * 2 * (size_t)cap);
      if (!nm) return oom(r);
      f->meta = nm;
      f->cap_meta = cap;
    }
    f->meta[2 * f->n_meta] = k;
    f->meta[2 * f->n_meta + 1] = v;
    f->n_meta++;
    DSC_TRY(dsc_json_more(c, &more)); /* rejects a key given twice */
  }
  return DSC_OK;
}

/* qsort helpers: entries by (begin, end) and by name, through index arrays whose
 * elements carry what they are sorted by (C11 qsort takes no context). */
typedef struct {
  uint64_t begin, end;
  int64_t index;
} by_offset;

static int offset_cmp(const void *pa, const void *pb) {
  const by_offset *a = (const by_offset *)pa, *b = (const by_offset *)pb;
  if (a->begin != b->begin) return a->begin < b->begin ? -1 : 1;
  if (a->end != b->end) return a->end < b->end ? -1 : 1;
  return a->index < b->index ? -1 : a->index > b->index;
}

typedef struct {
  const char *s;
  size_t n;
  int64_t index;
} by_name;

static int name_cmp(const char *a, size_t an, const char *b, size_t bn) {
  int r = memcmp(a, b, an < bn ? an : bn);
  if (r) return r;
  return an < bn ? -1 : an > bn;
}

static int name_sort_cmp(const void *pa, const void *pb) {
  const by_name *a = (const by_name *)pa, *b = (const by_name *)pb;
  return name_cmp(a->s, a->n, b->s, b->n);
}

/* The offsets, sorted, must tile the data block exactly (what the reference checks). */
static dsc_status check_layout(reader *r) {
  dsc_safetensors *f = r->f;
  const uint64_t data_size = f->size - f->data_start;
  if (f->n == 0) {
    if (data_size != 0)
      return dsc_error(DSC_ERR_FORMAT, r->fn, "path: %s: %llu bytes after a header that declares no tensor",
                       f->path, (unsigned long long)data_size);
    return DSC_OK;
  }
  by_offset *o = (by_offset *)malloc(sizeof *o * (size_t)f->n);
  if (!o) return oom(r);
  for (int64_t i = 0; i < f->n; ++i) {
    o[i].begin = f->entries[i].begin;
    o[i].end = f->entries[i].end;
    o[i].index = i;
  }
  qsort(o, (size_t)f->n, sizeof *o, offset_cmp);
  dsc_status st = DSC_OK;
  uint64_t at = 0;
  int64_t prev = -1;
  for (int64_t i = 0; i < f->n && st == DSC_OK; ++i) {
    const st_entry *e = &f->entries[o[i].index];
    if (e->begin != at) {
      char q[128];
      if (prev < 0)
        st = bad_tensor(r, e->name, e->name_len, e->at,
                        "data_offsets [%llu, %llu]: the first tensor of the data block must begin at 0",
                        (unsigned long long)e->begin, (unsigned long long)e->end);
      else
        st = bad_tensor(r, e->name, e->name_len, e->at,
                        "data_offsets [%llu, %llu] %s the previous tensor \"%s\", which ends at %llu "
                        "(tensors must tile the data block: no gap, no overlap)",
                        (unsigned long long)e->begin, (unsigned long long)e->end,
                        e->begin < at ? "overlap" : "leave a gap after",
                        QNAME(q, &f->entries[prev]), (unsigned long long)at);
    }
    at = e->end;
    prev = o[i].index;
  }
  if (st == DSC_OK && at != data_size) {
    const st_entry *e = &f->entries[prev];
    if (at > data_size)
      st = bad_tensor(r, e->name, e->name_len, e->at,
                      "data_offsets [%llu, %llu] outside the %llu-byte data block (truncated file?)",
                      (unsigned long long)e->begin, (unsigned long long)e->end, (unsigned long long)data_size);
    else
      st = dsc_error(DSC_ERR_FORMAT, r->fn,
                     "path: %s: the tensors end at byte %llu of the %llu-byte data block: %llu bytes after "
                     "them belong to no tensor",
                     f->path, (unsigned long long)at, (unsigned long long)data_size,
                     (unsigned long long)(data_size - at));
  }
  free(o);
  return st;
}

static dsc_status index_names(reader *r) {
  dsc_safetensors *f = r->f;
  by_name *b = (by_name *)malloc(sizeof *b * (size_t)(f->n ? f->n : 1));
  f->by_name = (int64_t *)malloc(sizeof *f->by_name * (size_t)(f->n ? f->n : 1));
  if (!b || !f->by_name) {
    free(b);
    return oom(r);
  }
  for (int64_t i = 0; i < f->n; ++i) {
    b[i].s = f->entries[i].name;
    b[i].n = f->entries[i].name_len;
    b[i].index = i;
  }
  qsort(b, (size_t)f->n, sizeof *b, name_sort_cmp);
  for (int64_t i = 0; i < f->n; ++i) f->by_name[i] = b[i].index;
  free(b);
  return DSC_OK;
}

/* Parse and check f->bytes[0..size). */
static dsc_status parse_file(dsc_safetensors *f, const char *fn) {
  reader r;
  memset(&r, 0, sizeof r);
  r.f = f;
  r.fn = fn;
  if (f->size < 8)
    return dsc_error(DSC_ERR_FORMAT, fn, "path: %s: %llu bytes is too short for a safetensors file (truncated?)",
                     f->path, (unsigned long long)f->size);
  uint64_t hn = 0;
  for (int i = 7; i >= 0; --i) hn = (hn << 8) | f->bytes[i];
  if (hn > MAX_HEADER_BYTES)
    return dsc_error(DSC_ERR_FORMAT, fn,
                     "path: %s: header length %llu exceeds the format's limit of %llu bytes (corrupt, or not "
                     "safetensors)", f->path, (unsigned long long)hn, (unsigned long long)MAX_HEADER_BYTES);
  if (hn > f->size - 8)
    return dsc_error(DSC_ERR_FORMAT, fn,
                     "path: %s: header length %llu does not fit in the %llu-byte file (truncated or not safetensors)",
                     f->path, (unsigned long long)hn, (unsigned long long)f->size);
  f->data_start = 8 + hn;
  f->strings = (char *)malloc((size_t)hn + 1);
  size_t what_cap = strlen(f->path) + 32;
  char *what = (char *)malloc(what_cap);
  if (!f->strings || !what) {
    free(what);
    return oom(&r);
  }
  snprintf(what, what_cap, "path: %s: header", f->path);
  dsc_json_cursor *c = &r.c;
  dsc_json_cursor_init(c, (const char *)f->bytes + 8, (size_t)hn, 8, HEADER_MAX_DEPTH, f->strings, fn, what);
  dsc_status st = DSC_OK;
  const int t = dsc_json_next_type(c);
  if (t != DSC_JSON_OBJECT)
    st = t < 0 ? dsc_json_fail(c, c->pos, hn == 0 ? "the header is empty (expected a JSON object)"
                                                  : "expected the header's JSON object")
               : dsc_json_fail(c, c->pos, "the header must be a JSON object");
  int more = 0;
  if (st == DSC_OK) st = dsc_json_begin(c, '{', &more);
  while (st == DSC_OK && more) {
    const char *k;
    size_t kn;
    st = dsc_json_key(c, &k, &kn);
    if (st != DSC_OK) break;
    if (kn == 12 && !memcmp(k, "__metadata__", 12)) st = read_metadata(&r);
    else st = read_entry(&r, k, kn);
    if (st == DSC_OK) st = dsc_json_more(c, &more); /* a tensor name or __metadata__ twice fails here */
  }
  if (st == DSC_OK) st = dsc_json_end(c); /* whitespace padding only */
  dsc_json_cursor_free(c);
  free(what);
  if (st == DSC_OK) st = check_layout(&r);
  if (st == DSC_OK) st = index_names(&r);
  return st;
}

void dsc_safetensors_close(dsc_safetensors *f) {
  if (!f) return;
  free(f->entries);
  free(f->by_name);
  free((void *)f->meta);
  free(f->strings);
  free(f->mem);
  free(f->path);
  free(f);
}

/* A file record with room for `size` bytes placed so that byte data_start (8 + the
 * header length in `len8`, when sane) lands on a DATA_ALIGN boundary. */
static dsc_status new_file(const char *fn, const char *path, uint64_t size, const unsigned char *len8,
                           dsc_safetensors **out) {
  *out = NULL;
  dsc_safetensors *f = (dsc_safetensors *)calloc(1, sizeof *f);
  if (!f) return dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
  f->path = strdup(path);
  size_t pad = 0;
  if (len8 && size >= 8) {
    uint64_t hn = 0;
    for (int i = 7; i >= 0; --i) hn = (hn << 8) | len8[i];
    if (hn <= MAX_HEADER_BYTES) pad = (size_t)((DATA_ALIGN - (8 + hn) % DATA_ALIGN) % DATA_ALIGN);
  }
  if (size > (uint64_t)SIZE_MAX - DATA_ALIGN - pad) {
    dsc_safetensors_close(f);
    return dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "path: %s: %llu bytes do not fit in memory", path,
                     (unsigned long long)size);
  }
  /* malloc is at least 16-aligned; DATA_ALIGN more bytes let us round up to 64 */
  f->mem = (unsigned char *)malloc((size_t)size + pad + DATA_ALIGN);
  if (!f->mem || !f->path) {
    dsc_safetensors_close(f);
    return dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory for %s (%llu bytes)", path,
                     (unsigned long long)size);
  }
  const size_t mis = (size_t)((uintptr_t)f->mem % DATA_ALIGN);
  f->bytes = f->mem + (mis ? DATA_ALIGN - mis : 0) + pad;
  f->size = size;
  *out = f;
  return DSC_OK;
}

dsc_status dsc_safetensors_open_memory(const void *bytes, size_t size, const char *name, dsc_safetensors **out) {
  static const char *const FN = "dsc_safetensors_open_memory";
  DSC_CHECK(out != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "out: expected a pointer, got NULL");
  *out = NULL;
  DSC_CHECK(bytes != NULL || size == 0, DSC_ERR_INVALID_ARGUMENT, FN, "bytes: expected a buffer, got NULL");
  dsc_safetensors *f = NULL;
  DSC_TRY(new_file(FN, name ? name : "<memory>", size, (const unsigned char *)bytes, &f));
  if (size) memcpy(f->bytes, bytes, size);
  dsc_status st = parse_file(f, FN);
  if (st != DSC_OK) {
    dsc_safetensors_close(f);
    return st;
  }
  *out = f;
  return DSC_OK;
}

dsc_status dsc_safetensors_open(const char *path, dsc_safetensors **out) {
  static const char *const FN = "dsc_safetensors_open";
  DSC_CHECK(out != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "out: expected a pointer, got NULL");
  *out = NULL;
  DSC_CHECK(path != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "path: expected a file name, got NULL");
  FILE *fp = fopen(path, "rb");
  if (!fp) return dsc_error(DSC_ERR_IO, FN, "path: cannot open '%s': %s", path, strerror(errno));
  struct stat sb;
  if (fstat(fileno(fp), &sb) != 0 || !S_ISREG(sb.st_mode)) {
    fclose(fp);
    return dsc_error(DSC_ERR_IO, FN, "path: '%s' is not a regular file", path);
  }
  const uint64_t size = (uint64_t)sb.st_size;
  unsigned char len8[8];
  const size_t got8 = fread(len8, 1, size < 8 ? (size_t)size : 8, fp);
  dsc_safetensors *f = NULL;
  dsc_status st = got8 == (size < 8 ? (size_t)size : 8)
                      ? new_file(FN, path, size, size >= 8 ? len8 : NULL, &f)
                      : dsc_error(DSC_ERR_IO, FN, "path: short read of '%s'", path);
  if (st == DSC_OK) {
    memcpy(f->bytes, len8, got8);
    if (size > got8 && fread(f->bytes + got8, 1, (size_t)(size - got8), fp) != size - got8)
      st = dsc_error(DSC_ERR_IO, FN, "path: short read of '%s'", path);
  }
  fclose(fp);
  if (st == DSC_OK) st = parse_file(f, FN);
  if (st != DSC_OK) {
    dsc_safetensors_close(f);
    return st;
  }
  *out = f;
  return DSC_OK;
}

int64_t dsc_safetensors_count(const dsc_safetensors *f) { return f ? f->n : 0; }

dsc_status dsc_safetensors_tensor(const dsc_safetensors *f, int64_t index, const char **name,
                                  dsc_dtype *dtype, int32_t *ndim, const int64_t **shape,
                                  const void **data, size_t *nbytes) {
  static const char *const FN = "dsc_safetensors_tensor";
  DSC_CHECK(f != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "file: expected an open file, got NULL");
  DSC_CHECK(index >= 0 && index < f->n, DSC_ERR_INVALID_ARGUMENT, FN,
            "index: expected a value in [0, %lld), got %lld", (long long)f->n, (long long)index);
  const st_entry *e = &f->entries[index];
  if (name) *name = e->name;
  if (dtype) *dtype = e->dtype;
  if (ndim) *ndim = e->ndim;
  if (shape) *shape = e->shape;
  if (data) *data = f->bytes + f->data_start + e->begin;
  if (nbytes) *nbytes = (size_t)(e->end - e->begin);
  return DSC_OK;
}

dsc_status dsc_safetensors_find(const dsc_safetensors *f, const char *name, int64_t *index) {
  static const char *const FN = "dsc_safetensors_find";
  DSC_CHECK(f != NULL && name != NULL && index != NULL, DSC_ERR_INVALID_ARGUMENT, FN,
            "file, name, index: expected non-NULL pointers");
  const size_t n = strlen(name);
  int64_t lo = 0, hi = f->n; /* binary search over the names sorted at open */
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    const st_entry *e = &f->entries[f->by_name[mid]];
    const int r = name_cmp(e->name, e->name_len, name, n);
    if (r == 0) {
      *index = f->by_name[mid];
      return DSC_OK;
    }
    if (r < 0) lo = mid + 1;
    else hi = mid;
  }
  *index = -1;
  return dsc_error(DSC_ERR_INVALID_ARGUMENT, FN, "name: no tensor '%s' in %s", name, f->path);
}

int64_t dsc_safetensors_metadata_count(const dsc_safetensors *f) { return f ? f->n_meta : 0; }

dsc_status dsc_safetensors_metadata(const dsc_safetensors *f, int64_t index, const char **key,
                                    const char **value) {
  static const char *const FN = "dsc_safetensors_metadata";
  DSC_CHECK(f != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "file: expected an open file, got NULL");
  DSC_CHECK(index >= 0 && index < f->n_meta, DSC_ERR_INVALID_ARGUMENT, FN,
            "index: expected a value in [0, %lld), got %lld", (long long)f->n_meta, (long long)index);
  if (key) *key = f->meta[2 * index];
  if (value) *value = f->meta[2 * index + 1];
  return DSC_OK;
}

/* ------------------------------------------------------------------ writer */

/* Append s to the growing buffer as a JSON string. */
typedef struct {
  char *p;
  size_t n, cap;
  int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t len) {
  if (b->oom) return;
  if (b->n + len + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + len + 1) cap *= 2;
    char *np = (char *)realloc(b->p, cap);
    if (!np) {
      b->oom = 1;
      return;
    }
    b->p = np;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, len);
  b->n += len;
  b->p[b->n] = '\0';
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_json_string(sbuf *b, const char *s) {
  sb_put(b, "\"", 1);
  for (; *s; ++s) {
    unsigned char c = (unsigned char)*s;
    char esc[8];
    if (c == '"' || c == '\\') {
      esc[0] = '\\';
      esc[1] = (char)c;
      sb_put(b, esc, 2);
    } else if (c < 0x20) {
      snprintf(esc, sizeof esc, "\\u%04x", c);
      sb_put(b, esc, 6);
    } else {
      sb_put(b, (const char *)&c, 1);
    }
  }
  sb_put(b, "\"", 1);
}

/* names[0], names[stride], ... (n of them) all different, else INVALID_ARGUMENT naming
 * the repeated one. */
static dsc_status check_unique_names(const char *fn, const char *arg, int64_t n, const char *const *names,
                                     int stride) {
  if (n < 2) return DSC_OK;
  by_name *b = (by_name *)malloc(sizeof *b * (size_t)n);
  if (!b) return dsc_error(DSC_ERR_OUT_OF_MEMORY, fn, "out of host memory");
  for (int64_t i = 0; i < n; ++i) {
    b[i].s = names[stride * i];
    b[i].n = strlen(b[i].s);
    b[i].index = i;
  }
  qsort(b, (size_t)n, sizeof *b, name_sort_cmp);
  dsc_status st = DSC_OK;
  for (int64_t i = 1; i < n && st == DSC_OK; ++i)
    if (b[i].n == b[i - 1].n && !memcmp(b[i].s, b[i - 1].s, b[i].n)) {
      const int64_t a = b[i].index < b[i - 1].index ? b[i].index : b[i - 1].index;
      const int64_t z = b[i].index < b[i - 1].index ? b[i - 1].index : b[i].index;
      st = dsc_error(DSC_ERR_INVALID_ARGUMENT, fn, "%s[%lld]: '%s' appears twice (also at %s[%lld])", arg,
                     (long long)(stride * z), b[i].s, arg, (long long)(stride * a));
    }
  free(b);
  return st;
}

dsc_status dsc_safetensors_save(const char *path, int64_t n, const char *const *names,
                                const DLTensor *const *tensors, int64_t n_meta,
                                const char *const *meta_kv) {
  static const char *const FN = "dsc_safetensors_save";
  DSC_CHECK(path != NULL && path[0], DSC_ERR_INVALID_ARGUMENT, FN, "path: expected a file name");
  DSC_CHECK(n >= 0 && (n == 0 || (names && tensors)), DSC_ERR_INVALID_ARGUMENT, FN,
            "names, tensors: expected %lld entries", (long long)n);
  DSC_CHECK(n_meta >= 0 && (n_meta == 0 || meta_kv), DSC_ERR_INVALID_ARGUMENT, FN,
            "meta_kv: expected %lld key/value pairs", (long long)n_meta);
  /* Validate everything before touching the file system. */
  uint64_t total = 0; /* bytes of the data block */
  for (int64_t i = 0; i < n; ++i) {
    const DLTensor *t = tensors[i];
    DSC_CHECK(names[i] && names[i][0], DSC_ERR_INVALID_ARGUMENT, FN, "names[%lld]: expected a name", (long long)i);
    DSC_CHECK(dsc_json_utf8_valid(names[i], strlen(names[i])), DSC_ERR_INVALID_ARGUMENT, FN,
              "names[%lld]: expected UTF-8 (the header is JSON), got invalid bytes", (long long)i);
    DSC_CHECK(strcmp(names[i], "__metadata__") != 0, DSC_ERR_INVALID_ARGUMENT, FN,
              "names[%lld]: '__metadata__' is reserved", (long long)i);
    DSC_CHECK(t != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "tensors[%lld] ('%s'): expected a tensor, got NULL",
              (long long)i, names[i]);
    DSC_CHECK(t->device.device_type == kDLCPU, DSC_ERR_DEVICE, FN,
              "tensors[%lld] ('%s'): expected host memory, got device type %d (copy it to the CPU first)",
              (long long)i, names[i], (int)t->device.device_type);
    DSC_CHECK(dtype_to_name(dsc_tensor_dtype(t)) != NULL, DSC_ERR_DTYPE, FN,
              "tensors[%lld] ('%s'): dtype %s has no safetensors name", (long long)i, names[i],
              dsc_dtype_name(dsc_tensor_dtype(t)));
    DSC_CHECK(t->ndim >= 0 && t->ndim <= MAX_DIMS, DSC_ERR_SHAPE, FN, "tensors[%lld] ('%s'): too many dims",
              (long long)i, names[i]);
    DSC_CHECK(t->ndim == 0 || t->shape, DSC_ERR_INVALID_ARGUMENT, FN, "tensors[%lld] ('%s'): NULL shape",
              (long long)i, names[i]);
    DSC_CHECK(dsc_tensor_size_ok(t), DSC_ERR_SHAPE, FN,
              "tensors[%lld] ('%s'): expected a shape whose size fits in 64 bits", (long long)i, names[i]);
    int64_t expect_stride = 1;
    uint64_t bytes = dsc_dtype_size(dsc_tensor_dtype(t)), nonzero = bytes;
    for (int d = t->ndim - 1; d >= 0; --d) {
      DSC_CHECK(t->shape[d] >= 0, DSC_ERR_SHAPE, FN, "tensors[%lld]: negative dim", (long long)i);
      const uint64_t sd = (uint64_t)t->shape[d];
      DSC_CHECK(sd == 0 || nonzero <= (uint64_t)INT64_MAX / sd, DSC_ERR_SHAPE, FN,
                "tensors[%lld] ('%s'): the shape spans more than 2^63 - 1 bytes", (long long)i, names[i]);
      if (sd) nonzero *= sd;
      bytes *= sd;
    }
    for (int d = t->ndim - 1; d >= 0; --d) {
      DSC_CHECK(!t->strides || t->shape[d] == 1 || bytes == 0 || t->strides[d] == expect_stride,
                DSC_ERR_INVALID_ARGUMENT,
                FN, "tensors[%lld] ('%s'): expected a C-contiguous tensor", (long long)i, names[i]);
      expect_stride *= t->shape[d];
    }
    DSC_CHECK(t->data || bytes == 0, DSC_ERR_INVALID_ARGUMENT, FN, "tensors[%lld]: NULL data",
              (long long)i);
    DSC_CHECK(total <= (uint64_t)INT64_MAX - bytes, DSC_ERR_SHAPE, FN,
              "tensors: more than 2^63 - 1 bytes in all");
    total += bytes;
  }
  for (int64_t i = 0; i < 2 * n_meta; ++i) {
    DSC_CHECK(meta_kv[i] != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "meta_kv[%lld]: expected a string, got NULL",
              (long long)i);
    DSC_CHECK(dsc_json_utf8_valid(meta_kv[i], strlen(meta_kv[i])), DSC_ERR_INVALID_ARGUMENT, FN,
              "meta_kv[%lld]: expected UTF-8 (the header is JSON), got invalid bytes", (long long)i);
  }
  /* names and metadata keys unique: sorted copies, so that 160k names take milliseconds */
  DSC_TRY(check_unique_names(FN, "names", n, names, 1));
  DSC_TRY(check_unique_names(FN, "meta_kv", n_meta, meta_kv, 2));

  sbuf h = {0};
  sb_str(&h, "{");
  if (n_meta > 0) {
    sb_str(&h, "\"__metadata__\":{");
    for (int64_t i = 0; i < n_meta; ++i) {
      if (i) sb_str(&h, ",");
      sb_json_string(&h, meta_kv[2 * i]);
      sb_str(&h, ":");
      sb_json_string(&h, meta_kv[2 * i + 1]);
    }
    sb_str(&h, "}");
  }
  uint64_t off = 0;
  char num[64];
  for (int64_t i = 0; i < n; ++i) {
    const DLTensor *t = tensors[i];
    uint64_t bytes = (uint64_t)dsc_numel(t) * dsc_dtype_size(dsc_tensor_dtype(t));
    if (n_meta > 0 || i) sb_str(&h, ",");
    sb_json_string(&h, names[i]);
    sb_str(&h, ":{\"dtype\":\"");
    sb_str(&h, dtype_to_name(dsc_tensor_dtype(t)));
    sb_str(&h, "\",\"shape\":[");
    for (int d = 0; d < t->ndim; ++d) {
      snprintf(num, sizeof num, d ? ",%lld" : "%lld", (long long)t->shape[d]);
      sb_str(&h, num);
    }
    snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
             (unsigned long long)(off + bytes));
    sb_str(&h, num);
    off += bytes;
  }
  sb_str(&h, "}");
  while (!h.oom && h.n % 8 != 0) sb_str(&h, " "); /* align the data block to 8 bytes */
  if (h.oom) {
    free(h.p);
    return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory for the header");
  }
  if ((uint64_t)h.n > MAX_HEADER_BYTES) {
    const size_t hn = h.n;
    free(h.p);
    return dsc_error(DSC_ERR_INVALID_ARGUMENT, FN,
                     "names, meta_kv: the header would take %zu bytes, over the format's limit of %llu "
                     "(readers refuse it)", hn, (unsigned long long)MAX_HEADER_BYTES);
  }

  /* temp file beside the target, then rename: atomic on POSIX file systems */
  size_t plen = strlen(path);
  char *tmp = (char *)malloc(plen + 32);
  if (!tmp) {
    free(h.p);
    return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  }
  snprintf(tmp, plen + 32, "%s.tmp.%ld", path, (long)getpid());
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) {
    dsc_status st = dsc_error(DSC_ERR_IO, FN, "path: cannot create '%s': %s", tmp, strerror(errno));
    free(tmp);
    free(h.p);
    return st;
  }
  unsigned char len8[8];
  for (int i = 0; i < 8; ++i) len8[i] = (unsigned char)((uint64_t)h.n >> (8 * i));
  int ok = 1;
  const void *chunks_p[2] = {len8, h.p};
  size_t chunks_n[2] = {8, h.n};
  for (int c = 0; c < 2 && ok; ++c) {
    const char *p = (const char *)chunks_p[c];
    size_t left = chunks_n[c];
    while (left && ok) {
      ssize_t w = write(fd, p, left);
      if (w < 0 && errno == EINTR) continue;
      ok = w > 0;
      if (ok) {
        p += w;
        left -= (size_t)w;
      }
    }
  }
  for (int64_t i = 0; i < n && ok; ++i) {
    const char *p = (const char *)dsc_data(tensors[i]);
    size_t left = (size_t)dsc_numel(tensors[i]) * dsc_dtype_size(dsc_tensor_dtype(tensors[i]));
    while (left && ok) {
      ssize_t w = write(fd, p, left > ((size_t)1 << 30) ? ((size_t)1 << 30) : left);
      if (w < 0 && errno == EINTR) continue;
      ok = w > 0;
      if (ok) {
        p += w;
        left -= (size_t)w;
      }
    }
  }
  int saved_errno = errno;
  if (ok && fsync(fd) != 0) {
    ok = 0;
    saved_errno = errno;
  }
  if (close(fd) != 0 && ok) {
    ok = 0;
    saved_errno = errno;
  }
  if (ok && rename(tmp, path) != 0) {
    ok = 0;
    saved_errno = errno;
  }
  dsc_status st = DSC_OK;
  if (!ok) {
    unlink(tmp);
    st = dsc_error(DSC_ERR_IO, FN, "path: writing '%s' failed: %s (the previous file, if any, is untouched)",
                   path, strerror(saved_errno));
  }
  free(tmp);
  free(h.p);
  return st;
}
