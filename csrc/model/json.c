/*
 * model/json.c -- the bounded JSON reader declared in json.h.
 *
 * A recursive-descent parser (depth-limited, so the recursion is bounded) that builds
 * the tree in two growable arrays: the values, and their (child, next) links as
 * indices. Indices survive the arrays' reallocation; once parsing is done they are
 * turned into pointers. Decoded strings go to one buffer of len + 1 bytes allocated up
 * front: a string never decodes to more bytes than it takes in the text (escapes only
 * shrink) and its two quotes leave room for the NUL, so that buffer never moves.
 */
#include "json.h"

#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct dsc_json_doc {
  dsc_json *values; /* values[0] is the root */
  int64_t n;
  char *strings;    /* decoded strings, pointed to by the values */
};

typedef struct {
  const char *text;
  size_t len, pos;
  const char *fn, *what;
  dsc_json *values;
  int64_t *child, *next; /* links by index, -1 = none */
  int64_t n, cap;
  char *strings;
  size_t str_used, str_cap;
} parser;

/* ------------------------------------------------------------------ errors */

static dsc_status fail_at(const parser *p, size_t at, const char *msg) {
  long line = 1, col = 1;
  for (size_t i = 0; i < at && i < p->len; ++i) {
    if (p->text[i] == '\n') {
      ++line;
      col = 1;
    } else {
      ++col;
    }
  }
  return dsc_error(DSC_ERR_FORMAT, p->fn, "%s: invalid JSON at line %ld, column %ld: %s", p->what,
                   line, col, msg);
}

static dsc_status fail(const parser *p, const char *msg) { return fail_at(p, p->pos, msg); }

static dsc_status oom(const parser *p) {
  return dsc_error(DSC_ERR_OUT_OF_MEMORY, p->fn, "%s: out of host memory while parsing JSON", p->what);
}

/* ------------------------------------------------------------------ scanning */

static void skip_ws(parser *p) {
  while (p->pos < p->len) {
    char c = p->text[p->pos];
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
    p->pos++;
  }
}

static int peek(const parser *p) { return p->pos < p->len ? (unsigned char)p->text[p->pos] : -1; }

/* A new value; its index in *idx. */
static dsc_status new_value(parser *p, dsc_json_type type, size_t offset, int64_t *idx) {
  if (p->n == p->cap) {
    int64_t cap = p->cap ? 2 * p->cap : 64;
    dsc_json *v = (dsc_json *)realloc(p->values, (size_t)cap * sizeof *v);
    if (v) p->values = v;
    int64_t *c = v ? (int64_t *)realloc(p->child, (size_t)cap * sizeof *c) : NULL;
    if (c) p->child = c;
    int64_t *nx = c ? (int64_t *)realloc(p->next, (size_t)cap * sizeof *nx) : NULL;
    if (nx) p->next = nx;
    if (!nx) return oom(p);
    p->cap = cap;
  }
  dsc_json *v = &p->values[p->n];
  memset(v, 0, sizeof *v);
  v->type = type;
  v->offset = offset;
  p->child[p->n] = -1;
  p->next[p->n] = -1;
  *idx = p->n++;
  return DSC_OK;
}

/* Append bytes to the string buffer (sized so that this cannot overflow; checked anyway). */
static dsc_status put_bytes(parser *p, const char *b, size_t n) {
  if (p->str_used + n > p->str_cap)
    return dsc_error(DSC_ERR_INTERNAL, p->fn, "%s: JSON string buffer overflow", p->what);
  memcpy(p->strings + p->str_used, b, n);
  p->str_used += n;
  return DSC_OK;
}

static int hex4(const char *s, unsigned *out) {
  unsigned v = 0;
  for (int i = 0; i < 4; ++i) {
    char c = s[i];
    int h = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
          : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (h < 0) return 0;
    v = v * 16 + (unsigned)h;
  }
  *out = v;
  return 1;
}

/* Length of the well-formed UTF-8 sequence at s[0..n) (1..4), or 0: no overlongs, no
 * surrogates, nothing above U+10FFFF. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
  unsigned char c = s[0];
  if (c < 0x80) return 1;
  size_t len;
  unsigned char lo = 0x80, hi = 0xbf; /* range of the second byte */
  if (c >= 0xc2 && c <= 0xdf) {
    len = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    len = 3;
    if (c == 0xe0) lo = 0xa0;
    if (c == 0xed) hi = 0x9f; /* U+D800..DFFF are not characters */
  } else if (c >= 0xf0 && c <= 0xf4) {
    len = 4;
    if (c == 0xf0) lo = 0x90;
    if (c == 0xf4) hi = 0x8f;
  } else {
    return 0;
  }
  if (len > n || s[1] < lo || s[1] > hi) return 0;
  for (size_t k = 2; k < len; ++k)
    if ((s[k] & 0xc0) != 0x80) return 0;
  return len;
}

/* A string at p->pos (the opening quote); decoded into the buffer, NUL-terminated. */
static dsc_status parse_string(parser *p, const char **out, size_t *out_len) {
  const size_t start = p->pos;
  p->pos++; /* the quote */
  char *dst = p->strings + p->str_used;
  const size_t used0 = p->str_used;
  for (;;) {
    if (p->pos >= p->len) return fail_at(p, start, "unterminated string");
    unsigned char c = (unsigned char)p->text[p->pos];
    if (c == '"') {
      p->pos++;
      break;
    }
    if (c < 0x20) return fail(p, "control character in a string (escape it)");
    if (c != '\\') {
      size_t n = utf8_seq((const unsigned char *)p->text + p->pos, p->len - p->pos);
      if (n == 0) return fail(p, "invalid UTF-8 in a string");
      DSC_TRY(put_bytes(p, p->text + p->pos, n));
      p->pos += n;
      continue;
    }
    if (p->pos + 1 >= p->len) return fail(p, "unterminated escape");
    char e = p->text[p->pos + 1];
    char one = 0;
    switch (e) {
      case '"': case '\\': case '/': one = e; break;
      case 'b': one = '\b'; break;
      case 'f': one = '\f'; break;
      case 'n': one = '\n'; break;
      case 'r': one = '\r'; break;
      case 't': one = '\t'; break;
      case 'u': break;
      default: return fail(p, "unknown escape");
    }
    if (e != 'u') {
      DSC_TRY(put_bytes(p, &one, 1));
      p->pos += 2;
      continue;
    }
    unsigned cp;
    if (p->len - p->pos < 6 || !hex4(p->text + p->pos + 2, &cp))
      return fail(p, "\\u needs four hex digits");
    p->pos += 6;
    if (cp >= 0xdc00 && cp <= 0xdfff) return fail_at(p, p->pos - 6, "lone low surrogate");
    if (cp >= 0xd800 && cp <= 0xdbff) {
      unsigned lo;
      if (p->len - p->pos < 6 || p->text[p->pos] != '\\' || p->text[p->pos + 1] != 'u' ||
          !hex4(p->text + p->pos + 2, &lo) || lo < 0xdc00 || lo > 0xdfff)
        return fail_at(p, p->pos - 6, "high surrogate without a low surrogate");
      p->pos += 6;
      cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
    }
    char u[4];
    size_t un;
    if (cp < 0x80) {
      u[0] = (char)cp;
      un = 1;
    } else if (cp < 0x800) {
      u[0] = (char)(0xc0 | (cp >> 6));
      u[1] = (char)(0x80 | (cp & 0x3f));
      un = 2;
    } else if (cp < 0x10000) {
      u[0] = (char)(0xe0 | (cp >> 12));
      u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
      u[2] = (char)(0x80 | (cp & 0x3f));
      un = 3;
    } else {
      u[0] = (char)(0xf0 | (cp >> 18));
      u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
      u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
      u[3] = (char)(0x80 | (cp & 0x3f));
      un = 4;
    }
    DSC_TRY(put_bytes(p, u, un));
  }
  DSC_TRY(put_bytes(p, "", 1));
  *out = dst;
  *out_len = p->str_used - used0 - 1;
  return DSC_OK;
}

/* A number at p->pos: the JSON grammar checked here, the value by strtod on a bounded,
 * NUL-terminated copy whose '.' is the C locale's decimal point (strtod follows the
 * process locale, which the host application may have changed). */
static dsc_status parse_number(parser *p, double *out) {
  const size_t start = p->pos;
  size_t i = p->pos;
  const char *t = p->text;
#define DIGIT(k) ((k) < p->len && t[k] >= '0' && t[k] <= '9')
  if (i < p->len && t[i] == '-') ++i;
  if (i < p->len && t[i] == '0') {
    ++i;
  } else if (DIGIT(i)) {
    while (DIGIT(i)) ++i;
  } else {
    return fail_at(p, start, "invalid number");
  }
  if (i < p->len && t[i] == '.') {
    ++i;
    if (!DIGIT(i)) return fail_at(p, i, "a digit must follow the decimal point");
    while (DIGIT(i)) ++i;
  }
  if (i < p->len && (t[i] == 'e' || t[i] == 'E')) {
    ++i;
    if (i < p->len && (t[i] == '+' || t[i] == '-')) ++i;
    if (!DIGIT(i)) return fail_at(p, i, "a digit must follow the exponent");
    while (DIGIT(i)) ++i;
  }
#undef DIGIT
  const size_t n = i - start;
  const char *dp = localeconv()->decimal_point;
  const size_t dpn = dp && dp[0] ? strlen(dp) : 1;
  char small[128];
  const size_t need = n * dpn + 1;
  char *buf = need <= sizeof small ? small : (char *)malloc(need);
  if (!buf) return oom(p);
  size_t k = 0;
  for (size_t j = start; j < i; ++j) {
    if (t[j] == '.' && dp && dp[0]) {
      memcpy(buf + k, dp, dpn);
      k += dpn;
    } else {
      buf[k++] = t[j];
    }
  }
  buf[k] = '\0';
  char *end = NULL;
  double v = strtod(buf, &end);
  const int whole = end == buf + k;
  if (buf != small) free(buf);
  if (!whole) return fail_at(p, start, "invalid number");
  if (!isfinite(v)) return fail_at(p, start, "number out of the double range");
  p->pos = i;
  *out = v;
  return DSC_OK;
}

static dsc_status parse_literal(parser *p, const char *word, dsc_json_type type, int64_t *idx) {
  size_t n = strlen(word);
  if (p->len - p->pos < n || memcmp(p->text + p->pos, word, n) != 0)
    return fail(p, "unexpected character (expected a value)");
  DSC_TRY(new_value(p, type, p->pos, idx));
  p->pos += n;
  return DSC_OK;
}

static dsc_status parse_value(parser *p, int depth, int64_t *idx);

/* An array or object at p->pos. Keys are decoded before the member's value exists, so
 * they are attached to the value once it is parsed. */
static dsc_status parse_container(parser *p, int depth, int64_t *idx) {
  const int is_obj = p->text[p->pos] == '{';
  const char close = is_obj ? '}' : ']';
  int64_t self = -1;
  DSC_TRY(new_value(p, is_obj ? DSC_JSON_OBJECT : DSC_JSON_ARRAY, p->pos, &self));
  *idx = self;
  p->pos++;
  skip_ws(p);
  if (peek(p) == close) {
    p->pos++;
    return DSC_OK;
  }
  int64_t last = -1;
  for (;;) {
    const char *key = NULL;
    size_t key_len = 0;
    if (is_obj) {
      skip_ws(p);
      if (peek(p) != '"') return fail(p, peek(p) < 0 ? "unexpected end of input" : "expected a member name");
      DSC_TRY(parse_string(p, &key, &key_len));
      skip_ws(p);
      if (peek(p) != ':') return fail(p, "expected ':' after a member name");
      p->pos++;
    }
    int64_t c;
    DSC_TRY(parse_value(p, depth + 1, &c));
    p->values[c].key = key;
    p->values[c].key_len = key_len;
    if (last < 0) p->child[self] = c;
    else p->next[last] = c;
    last = c;
    p->values[self].n_children++;
    skip_ws(p);
    int ch = peek(p);
    if (ch == ',') {
      p->pos++;
      continue;
    }
    if (ch == close) {
      p->pos++;
      return DSC_OK;
    }
    if (ch < 0) return fail(p, "unexpected end of input");
    return fail(p, is_obj ? "expected ',' or '}'" : "expected ',' or ']'");
  }
}

static dsc_status parse_value(parser *p, int depth, int64_t *idx) {
  if (depth > DSC_JSON_MAX_DEPTH) return fail(p, "nesting too deep");
  skip_ws(p);
  int c = peek(p);
  if (c < 0) return fail(p, "unexpected end of input");
  if (c == '{' || c == '[') return parse_container(p, depth, idx);
  if (c == '"') {
    size_t at = p->pos;
    const char *s;
    size_t n;
    DSC_TRY(parse_string(p, &s, &n));
    DSC_TRY(new_value(p, DSC_JSON_STRING, at, idx));
    p->values[*idx].str = s;
    p->values[*idx].str_len = n;
    return DSC_OK;
  }
  if (c == '-' || (c >= '0' && c <= '9')) {
    size_t at = p->pos;
    double v = 0.0;
    DSC_TRY(parse_number(p, &v));
    DSC_TRY(new_value(p, DSC_JSON_NUMBER, at, idx));
    p->values[*idx].num = v;
    return DSC_OK;
  }
  if (c == 't') return parse_literal(p, "true", DSC_JSON_TRUE, idx);
  if (c == 'f') return parse_literal(p, "false", DSC_JSON_FALSE, idx);
  if (c == 'n') return parse_literal(p, "null", DSC_JSON_NULL, idx);
  return fail(p, "unexpected character (expected a value)");
}

/* ------------------------------------------------------------------ public */

dsc_status dsc_json_parse(const char *text, size_t len, const char *fn, const char *what,
                          dsc_json_doc **out) {
  if (!fn) fn = "dsc_json_parse";
  if (!what) what = "json";
  DSC_CHECK(out != NULL, DSC_ERR_INVALID_ARGUMENT, fn, "out: expected a pointer, got NULL");
  *out = NULL;
  DSC_CHECK(text != NULL || len == 0, DSC_ERR_INVALID_ARGUMENT, fn,
            "%s: expected JSON text, got NULL", what);
  parser p;
  memset(&p, 0, sizeof p);
  p.text = text ? text : "";
  p.len = len;
  p.fn = fn;
  p.what = what;
  p.str_cap = len + 1;
  p.strings = (char *)malloc(p.str_cap);
  dsc_json_doc *doc = (dsc_json_doc *)calloc(1, sizeof *doc);
  dsc_status st = (p.strings && doc) ? DSC_OK : oom(&p);
  int64_t root = -1;
  if (st == DSC_OK) st = parse_value(&p, 0, &root);
  if (st == DSC_OK) {
    skip_ws(&p);
    if (p.pos != p.len) st = fail(&p, "unexpected data after the JSON value");
  }
  if (st == DSC_OK) {
    /* root is values[0]: it is the first value created */
    for (int64_t i = 0; i < p.n; ++i) {
      p.values[i].child = p.child[i] >= 0 ? &p.values[p.child[i]] : NULL;
      p.values[i].next = p.next[i] >= 0 ? &p.values[p.next[i]] : NULL;
    }
    doc->values = p.values;
    doc->n = p.n;
    doc->strings = p.strings;
    p.values = NULL;
    p.strings = NULL;
    *out = doc;
    doc = NULL;
  }
  free(p.values);
  free(p.child);
  free(p.next);
  free(p.strings);
  free(doc);
  return st;
}

void dsc_json_free(dsc_json_doc *doc) {
  if (!doc) return;
  free(doc->values);
  free(doc->strings);
  free(doc);
}

const dsc_json *dsc_json_root(const dsc_json_doc *doc) {
  return doc && doc->n > 0 ? &doc->values[0] : NULL;
}

const dsc_json *dsc_json_get(const dsc_json *obj, const char *key) {
  if (!obj || obj->type != DSC_JSON_OBJECT || !key) return NULL;
  const size_t n = strlen(key);
  const dsc_json *found = NULL;
  for (const dsc_json *c = obj->child; c; c = c->next)
    if (c->key_len == n && memcmp(c->key, key, n) == 0) found = c;
  return found;
}

const char *dsc_json_type_name(dsc_json_type t) {
  switch (t) {
    case DSC_JSON_NULL: return "null";
    case DSC_JSON_FALSE:
    case DSC_JSON_TRUE: return "a boolean";
    case DSC_JSON_NUMBER: return "a number";
    case DSC_JSON_STRING: return "a string";
    case DSC_JSON_ARRAY: return "an array";
    case DSC_JSON_OBJECT: return "an object";
  }
  return "an unknown value";
}
