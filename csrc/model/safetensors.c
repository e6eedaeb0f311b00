/*
 * model/safetensors.c -- the project's own safetensors reader and writer.
 *
 * Format (public, Hugging Face): 8 bytes little-endian u64 N, then N bytes of UTF-8 JSON
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 *  "__metadata__": {"key": "value", ...}}, then the data block; offsets are relative to
 * the data block and end - begin == numel * itemsize.
 *
 * Reading is bounds-checked everywhere: a corrupt or truncated file is DSC_ERR_FORMAT
 * naming the file and the tensor, never a crash. Writing goes to a temporary file in
 * the same directory, is flushed and fsync'ed, then renamed over the target, so a
 * reader sees either the old file or the new one, never half of one.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define MAX_HEADER_BYTES ((uint64_t)100 << 20) /* 100 MiB, far above any real header */
#define MAX_DIMS 16

typedef struct {
  char *name;
  dsc_dtype dtype;
  int32_t ndim;
  int64_t shape[MAX_DIMS];
  uint64_t begin, end; /* byte range in the data block */
} st_entry;

struct dsc_safetensors {
  char *path;
  unsigned char *bytes; /* the whole file, owned */
  uint64_t size;
  uint64_t data_start; /* 8 + N */
  st_entry *entries;
  int64_t n, cap;
  char **meta; /* key, value, key, value ... */
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

static dsc_dtype dtype_from_name(const char *s) {
  for (size_t i = 0; i < sizeof DTYPES / sizeof DTYPES[0]; ++i)
    if (!strcmp(DTYPES[i].name, s)) return DTYPES[i].dtype;
  return DSC_DTYPE_INVALID;
}

static const char *dtype_to_name(dsc_dtype t) {
  for (size_t i = 0; i < sizeof DTYPES / sizeof DTYPES[0]; ++i)
    if (DTYPES[i].dtype == t) return DTYPES[i].name;
  return NULL;
}

/* ------------------------------------------------------------------ a small JSON reader */

typedef struct {
  const char *s, *end;
  const char *fn, *path;
  const char *start; /* first byte of the JSON, for error offsets */
} json;

static void skip_ws(json *j) {
  while (j->s < j->end && (*j->s == ' ' || *j->s == '\n' || *j->s == '\r' || *j->s == '\t')) j->s++;
}

static dsc_status bad(json *j, const char *what) {
  return dsc_error(DSC_ERR_FORMAT, j->fn, "path: %s: corrupt header: %s at byte %lld of the JSON",
                   j->path, what, (long long)(j->s - j->start));
}

static dsc_status expect(json *j, char c) {
  skip_ws(j);
  if (j->s >= j->end || *j->s != c) {
    char msg[48];
    snprintf(msg, sizeof msg, "expected '%c'", c);
    return bad(j, msg);
  }
  j->s++;
  return DSC_OK;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* 1 when s[0..n) is well-formed UTF-8 (no overlongs checked beyond lead bytes). */
static int utf8_valid(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned char c = s[i];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (len == 0 || (len == 2 && c < 0xc2) || i + len > n) return 0;
    for (size_t k = 1; k < len; ++k)
      if ((s[i + k] & 0xc0) != 0x80) return 0;
    i += len;
  }
  return 1;
}

/* A JSON string, unescaped into a new heap string (*out, owned by the caller). */
static dsc_status parse_string(json *j, char **out) {
  *out = NULL;
  DSC_TRY(expect(j, '"'));
  size_t cap = 16, n = 0;
  char *buf = (char *)malloc(cap);
  if (!buf) return dsc_error(DSC_ERR_OUT_OF_MEMORY, j->fn, "out of host memory");
  for (;;) {
    if (j->s >= j->end) {
      free(buf);
      return bad(j, "unterminated string");
    }
    unsigned char c = (unsigned char)*j->s++;
    char tmp[4];
    size_t tn = 0;
    if (c == '"') break;
    if (c < 0x20) {
      free(buf);
      return bad(j, "control character in a string");
    }
    if (c != '\\') {
      tmp[tn++] = (char)c;
    } else {
      if (j->s >= j->end) {
        free(buf);
        return bad(j, "unterminated escape");
      }
      char e = *j->s++;
      switch (e) {
        case '"': case '\\': case '/': tmp[tn++] = e; break;
        case 'b': tmp[tn++] = '\b'; break;
        case 'f': tmp[tn++] = '\f'; break;
        case 'n': tmp[tn++] = '\n'; break;
        case 'r': tmp[tn++] = '\r'; break;
        case 't': tmp[tn++] = '\t'; break;
        case 'u': {
          if (j->end - j->s < 4) {
            free(buf);
            return bad(j, "short \\u escape");
          }
          unsigned cp = 0;
          for (int i = 0; i < 4; ++i) {
            int h = hexval(j->s[i]);
            if (h < 0) {
              free(buf);
              return bad(j, "bad \\u escape");
            }
            cp = cp * 16 + (unsigned)h;
          }
          j->s += 4;
          /* surrogate pairs are kept as two 3-byte sequences: names never use them */
          if (cp < 0x80) {
            tmp[tn++] = (char)cp;
          } else if (cp < 0x800) {
            tmp[tn++] = (char)(0xc0 | (cp >> 6));
            tmp[tn++] = (char)(0x80 | (cp & 0x3f));
          } else {
            tmp[tn++] = (char)(0xe0 | (cp >> 12));
            tmp[tn++] = (char)(0x80 | ((cp >> 6) & 0x3f));
            tmp[tn++] = (char)(0x80 | (cp & 0x3f));
          }
          break;
        }
        default: free(buf); return bad(j, "unknown escape");
      }
    }
    if (n + tn + 1 > cap) {
      cap = 2 * (n + tn + 1);
      char *nb = (char *)realloc(buf, cap);
      if (!nb) {
        free(buf);
        return dsc_error(DSC_ERR_OUT_OF_MEMORY, j->fn, "out of host memory");
      }
      buf = nb;
    }
    memcpy(buf + n, tmp, tn);
    n += tn;
  }
  buf[n] = '\0';
  if (!utf8_valid((const unsigned char *)buf, n)) {
    free(buf);
    return bad(j, "invalid UTF-8 in a string");
  }
  *out = buf;
  return DSC_OK;
}

/* A non-negative integer (all the header's numbers are). */
static dsc_status parse_u64(json *j, uint64_t *out) {
  skip_ws(j);
  if (j->s >= j->end || *j->s < '0' || *j->s > '9') return bad(j, "expected a non-negative integer");
  uint64_t v = 0;
  while (j->s < j->end && *j->s >= '0' && *j->s <= '9') {
    uint64_t d = (uint64_t)(*j->s - '0');
    if (v > (UINT64_MAX - d) / 10) return bad(j, "integer overflow");
    v = v * 10 + d;
    j->s++;
  }
  if (j->s < j->end && (*j->s == '.' || *j->s == 'e' || *j->s == 'E')) return bad(j, "expected an integer");
  *out = v;
  return DSC_OK;
}

/* Skip any JSON value (unknown keys are ignored, as the format allows). */
static dsc_status skip_value(json *j, int depth) {
  if (depth > 64) return bad(j, "nesting too deep");
  skip_ws(j);
  if (j->s >= j->end) return bad(j, "unexpected end");
  char c = *j->s;
  if (c == '"') {
    char *tmp;
    DSC_TRY(parse_string(j, &tmp));
    free(tmp);
    return DSC_OK;
  }
  if (c == '{' || c == '[') {
    char close = c == '{' ? '}' : ']';
    j->s++;
    skip_ws(j);
    if (j->s < j->end && *j->s == close) {
      j->s++;
      return DSC_OK;
    }
    for (;;) {
      if (c == '{') {
        char *k;
        DSC_TRY(parse_string(j, &k));
        free(k);
        DSC_TRY(expect(j, ':'));
      }
      DSC_TRY(skip_value(j, depth + 1));
      skip_ws(j);
      if (j->s < j->end && *j->s == ',') {
        j->s++;
        continue;
      }
      return expect(j, close);
    }
  }
  /* number, true, false, null */
  const char *start = j->s;
  while (j->s < j->end && (strchr("+-.eE0123456789", *j->s) || (*j->s >= 'a' && *j->s <= 'z'))) j->s++;
  if (j->s == start) return bad(j, "unexpected character");
  return DSC_OK;
}

/* ------------------------------------------------------------------ reader */

void dsc_safetensors_close(dsc_safetensors *f) {
  if (!f) return;
  for (int64_t i = 0; i < f->n; ++i) free(f->entries[i].name);
  for (int64_t i = 0; i < 2 * f->n_meta; ++i) free(f->meta[i]);
  free(f->entries);
  free(f->meta);
  free(f->bytes);
  free(f->path);
  free(f);
}

static dsc_status parse_entry(json *j, dsc_safetensors *f, char *name) {
  st_entry e;
  memset(&e, 0, sizeof e);
  e.name = name;
  int have_dtype = 0, have_shape = 0, have_off = 0;
  dsc_status st = expect(j, '{');
  while (st == DSC_OK) {
    char *key = NULL;
    st = parse_string(j, &key);
    if (st == DSC_OK) st = expect(j, ':');
    if (st == DSC_OK && !strcmp(key, "dtype")) {
      char *dt = NULL;
      st = parse_string(j, &dt);
      if (st == DSC_OK) {
        e.dtype = dtype_from_name(dt);
        if (e.dtype == DSC_DTYPE_INVALID)
          st = dsc_error(DSC_ERR_FORMAT, j->fn, "path: %s: tensor '%s': unsupported dtype '%s'", j->path,
                         name, dt);
        have_dtype = 1;
      }
      free(dt);
    } else if (st == DSC_OK && !strcmp(key, "shape")) {
      st = expect(j, '[');
      skip_ws(j);
      if (st == DSC_OK && j->s < j->end && *j->s == ']') {
        j->s++;
      } else {
        while (st == DSC_OK) {
          uint64_t v;
          st = parse_u64(j, &v);
          if (st != DSC_OK) break;
          if (e.ndim >= MAX_DIMS || v > (uint64_t)INT64_MAX) {
            st = dsc_error(DSC_ERR_FORMAT, j->fn, "path: %s: tensor '%s': shape has more than %d dims or a huge dim",
                           j->path, name, MAX_DIMS);
            break;
          }
          e.shape[e.ndim++] = (int64_t)v;
          skip_ws(j);
          if (j->s < j->end && *j->s == ',') {
            j->s++;
            continue;
          }
          st = expect(j, ']');
          break;
        }
      }
      have_shape = 1;
    } else if (st == DSC_OK && !strcmp(key, "data_offsets")) {
      st = expect(j, '[');
      if (st == DSC_OK) st = parse_u64(j, &e.begin);
      if (st == DSC_OK) st = expect(j, ',');
      if (st == DSC_OK) st = parse_u64(j, &e.end);
      if (st == DSC_OK) st = expect(j, ']');
      have_off = 1;
    } else if (st == DSC_OK) {
      st = skip_value(j, 1);
    }
    free(key);
    if (st != DSC_OK) break;
    skip_ws(j);
    if (j->s < j->end && *j->s == ',') {
      j->s++;
      continue;
    }
    st = expect(j, '}');
    break;
  }
  if (st == DSC_OK && !(have_dtype && have_shape && have_off))
    st = dsc_error(DSC_ERR_FORMAT, j->fn, "path: %s: tensor '%s': expected dtype, shape and data_offsets", j->path,
                   name);
  if (st == DSC_OK) {
    /* numel * itemsize must equal the byte range, computed without overflow; the product
     * of the non-zero dims must fit too (a (0, 2^62, 2^62) tensor has no bytes, but its
     * shape would wrap the size arithmetic of whoever uses it) */
    uint64_t bytes = dsc_dtype_size(e.dtype);
    int64_t nonzero = (int64_t)bytes;
    for (int i = 0; i < e.ndim && st == DSC_OK; ++i) {
      if ((e.shape[i] != 0 && bytes > UINT64_MAX / (uint64_t)e.shape[i]) ||
          (e.shape[i] != 0 && !dsc_mul_i64(nonzero, e.shape[i], &nonzero)))
        st = dsc_error(DSC_ERR_FORMAT, j->fn, "path: %s: tensor '%s': size overflows", j->path, name);
      else
        bytes *= (uint64_t)e.shape[i];
    }
    uint64_t data_size = f->size - f->data_start;
    if (st == DSC_OK && (e.begin > e.end || e.end > data_size))
      st = dsc_error(DSC_ERR_FORMAT, j->fn,
                     "path: %s: tensor '%s': data_offsets [%llu, %llu] outside the %llu-byte data block "
                     "(truncated file?)",
                     j->path, name, (unsigned long long)e.begin, (unsigned long long)e.end,
                     (unsigned long long)data_size);
    if (st == DSC_OK && e.end - e.begin != bytes)
      st = dsc_error(DSC_ERR_FORMAT, j->fn,
                     "path: %s: tensor '%s': data_offsets span %llu bytes, its dtype and shape need %llu",
                     j->path, name, (unsigned long long)(e.end - e.begin), (unsigned long long)bytes);
  }
  if (st != DSC_OK) {
    free(name);
    return st;
  }
  if (f->n == f->cap) {
    int64_t cap = f->cap ? 2 * f->cap : 64;
    st_entry *ne = (st_entry *)realloc(f->entries, sizeof *ne * (size_t)cap);
    if (!ne) {
      free(name);
      return dsc_error(DSC_ERR_OUT_OF_MEMORY, j->fn, "out of host memory");
    }
    f->entries = ne;
    f->cap = cap;
  }
  f->entries[f->n++] = e;
  return DSC_OK;
}

static dsc_status parse_metadata(json *j, dsc_safetensors *f) {
  DSC_TRY(expect(j, '{'));
  skip_ws(j);
  if (j->s < j->end && *j->s == '}') {
    j->s++;
    return DSC_OK;
  }
  for (;;) {
    char *k = NULL, *v = NULL;
    dsc_status st = parse_string(j, &k);
    if (st == DSC_OK) st = expect(j, ':');
    if (st == DSC_OK) st = parse_string(j, &v);
    if (st == DSC_OK && f->n_meta == f->cap_meta) {
      int64_t cap = f->cap_meta ? 2 * f->cap_meta : 8;
      char **nm = (char **)realloc(f->meta, sizeof(char *) * 2 * (size_t)cap);
      if (!nm) st = dsc_error(DSC_ERR_OUT_OF_MEMORY, j->fn, "out of host memory");
      else {
        f->meta = nm;
        f->cap_meta = cap;
      }
    }
    if (st != DSC_OK) {
      free(k);
      free(v);
      return st;
    }
    f->meta[2 * f->n_meta] = k;
    f->meta[2 * f->n_meta + 1] = v;
    f->n_meta++;
    skip_ws(j);
    if (j->s < j->end && *j->s == ',') {
      j->s++;
      continue;
    }
    return expect(j, '}');
  }
}

dsc_status dsc_safetensors_open(const char *path, dsc_safetensors **out) {
  static const char *const FN = "dsc_safetensors_open";
  DSC_CHECK(out != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "out: expected a pointer, got NULL");
  *out = NULL;
  DSC_CHECK(path != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "path: expected a file name, got NULL");
  FILE *fp = fopen(path, "rb");
  if (!fp) return dsc_error(DSC_ERR_IO, FN, "path: cannot open '%s': %s", path, strerror(errno));
  dsc_safetensors *f = (dsc_safetensors *)calloc(1, sizeof *f);
  dsc_status st = DSC_OK;
  if (!f) {
    fclose(fp);
    return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  }
  f->path = strdup(path);
  struct stat sb;
  if (fstat(fileno(fp), &sb) != 0 || !S_ISREG(sb.st_mode)) {
    st = dsc_error(DSC_ERR_IO, FN, "path: '%s' is not a regular file", path);
  } else {
    f->size = (uint64_t)sb.st_size;
    f->bytes = (unsigned char *)malloc(f->size ? f->size : 1);
    if (!f->bytes || !f->path) st = dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory for %s", path);
    else if (f->size && fread(f->bytes, 1, f->size, fp) != f->size)
      st = dsc_error(DSC_ERR_IO, FN, "path: short read of '%s'", path);
  }
  fclose(fp);
  if (st == DSC_OK && f->size < 8)
    st = dsc_error(DSC_ERR_FORMAT, FN, "path: %s: %llu bytes is too short for a safetensors file (truncated?)",
                   path, (unsigned long long)f->size);
  uint64_t hn = 0;
  if (st == DSC_OK) {
    for (int i = 7; i >= 0; --i) hn = (hn << 8) | f->bytes[i];
    if (hn > MAX_HEADER_BYTES || hn > f->size - 8)
      st = dsc_error(DSC_ERR_FORMAT, FN,
                     "path: %s: header length %llu does not fit in the %llu-byte file (truncated or not safetensors)",
                     path, (unsigned long long)hn, (unsigned long long)f->size);
  }
  if (st == DSC_OK) {
    f->data_start = 8 + hn;
    json j = {(const char *)f->bytes + 8, (const char *)f->bytes + 8 + hn, FN, path,
              (const char *)f->bytes + 8};
    st = expect(&j, '{');
    skip_ws(&j);
    if (st == DSC_OK && j.s < j.end && *j.s == '}') {
      j.s++;
    } else {
      while (st == DSC_OK) {
        char *name = NULL;
        st = parse_string(&j, &name);
        if (st == DSC_OK) st = expect(&j, ':');
        if (st != DSC_OK) {
          free(name);
          break;
        }
        if (!strcmp(name, "__metadata__")) {
          free(name);
          st = parse_metadata(&j, f);
        } else {
          for (int64_t i = 0; i < f->n && st == DSC_OK; ++i)
            if (!strcmp(f->entries[i].name, name))
              st = dsc_error(DSC_ERR_FORMAT, FN, "path: %s: tensor '%s' appears twice", path, name);
          if (st == DSC_OK) st = parse_entry(&j, f, name);
          else free(name);
        }
        if (st != DSC_OK) break;
        skip_ws(&j);
        if (j.s < j.end && *j.s == ',') {
          j.s++;
          continue;
        }
        st = expect(&j, '}');
        break;
      }
    }
  }
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
  for (int64_t i = 0; i < f->n; ++i) {
    if (!strcmp(f->entries[i].name, name)) {
      *index = i;
      return DSC_OK;
    }
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
  for (int64_t i = 0; i < n; ++i) {
    const DLTensor *t = tensors[i];
    DSC_CHECK(names[i] && names[i][0], DSC_ERR_INVALID_ARGUMENT, FN, "names[%lld]: expected a name", (long long)i);
    DSC_CHECK(strcmp(names[i], "__metadata__") != 0, DSC_ERR_INVALID_ARGUMENT, FN,
              "names[%lld]: '__metadata__' is reserved", (long long)i);
    for (int64_t k = 0; k < i; ++k)
      DSC_CHECK(strcmp(names[k], names[i]) != 0, DSC_ERR_INVALID_ARGUMENT, FN,
                "names[%lld]: '%s' appears twice", (long long)i, names[i]);
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
    for (int d = 0; d < t->ndim; ++d)
      DSC_CHECK(t->shape[d] >= 0, DSC_ERR_SHAPE, FN, "tensors[%lld]: negative dim", (long long)i);
    DSC_CHECK(dsc_tensor_size_ok(t), DSC_ERR_SHAPE, FN,
              "tensors[%lld] ('%s'): expected a shape whose size fits in 64 bits", (long long)i, names[i]);
    int64_t expect_stride = 1;
    for (int d = t->ndim - 1; d >= 0; --d) {
      DSC_CHECK(!t->strides || t->shape[d] == 1 || dsc_numel(t) == 0 || t->strides[d] == expect_stride,
                DSC_ERR_INVALID_ARGUMENT,
                FN, "tensors[%lld] ('%s'): expected a C-contiguous tensor", (long long)i, names[i]);
      expect_stride *= t->shape[d];
    }
    DSC_CHECK(t->data || dsc_numel(t) == 0, DSC_ERR_INVALID_ARGUMENT, FN, "tensors[%lld]: NULL data",
              (long long)i);
  }
  for (int64_t i = 0; i < 2 * n_meta; ++i)
    DSC_CHECK(meta_kv[i] != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "meta_kv[%lld]: expected a string, got NULL",
              (long long)i);

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
