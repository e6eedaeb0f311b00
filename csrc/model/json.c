/*
 * model/json.c -- the strict, bounded JSON reader declared in json.h.
 *
 * The cursor does all the reading; the tree parser is a recursive walk over it. The
 * recursion (tree parser, dsc_json_skip) is bounded by the cursor's max_depth, which
 * dsc_json_begin enforces before it opens a container.
 *
 * Duplicate member names: each open object's names sit on one stack (c->keys); when the
 * object closes its slice is checked -- pairwise when small, else sorted (n log n, so a
 * header of 160k tensors takes milliseconds and no crafted input turns it quadratic) --
 * and popped.
 *
 * Decoded strings go to the caller's buffer of len + 1 bytes: a string never decodes to
 * more bytes than it takes in the text (escapes only shrink) and its two quotes leave
 * room for the NUL, so that buffer never overflows or moves.
 */
#include "json.h"

#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ------------------------------------------------------------------ errors */

const char *dsc_json_quote(char *out, size_t cap, const char *s, size_t n) {
  static const char HEX[] = "0123456789abcdef";
  size_t k = 0;
  if (cap == 0) return out;
  for (size_t i = 0; i < n; ++i) {
    unsigned char b = (unsigned char)s[i];
    if (i >= 80 || k + 8 >= cap) {
      if (k + 4 <= cap) {
        memcpy(out + k, "...", 3);
        k += 3;
      }
      break;
    }
    if (b < 0x20 || b == 0x7f || b == '\\') {
      out[k++] = '\\';
      if (b == '\\') {
        out[k++] = '\\';
      } else {
        out[k++] = 'x';
        out[k++] = HEX[b >> 4];
        out[k++] = HEX[b & 15];
      }
    } else {
      out[k++] = (char)b;
    }
  }
  out[k] = '\0';
  return out;
}

static dsc_status fail_v(const dsc_json_cursor *c, size_t at, const char *fmt, va_list ap) {
  char msg[512];
  vsnprintf(msg, sizeof msg, fmt, ap);
  long line = 1, col = 1;
  for (size_t i = 0; i < at && i < c->len; ++i) {
    if (c->text[i] == '\n') {
      ++line;
      col = 1;
    } else {
      ++col;
    }
  }
  return dsc_error(DSC_ERR_FORMAT, c->fn, "%s: invalid JSON at byte %llu (line %ld, column %ld): %s",
                   c->what, (unsigned long long)(c->base + at), line, col, msg);
}

static dsc_status failf(const dsc_json_cursor *c, size_t at, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static dsc_status failf(const dsc_json_cursor *c, size_t at, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  dsc_status st = fail_v(c, at, fmt, ap);
  va_end(ap);
  return st;
}

dsc_status dsc_json_fail(const dsc_json_cursor *c, size_t at, const char *msg) {
  return failf(c, at, "%s", msg);
}

static dsc_status oom(const dsc_json_cursor *c) {
  return dsc_error(DSC_ERR_OUT_OF_MEMORY, c->fn, "%s: out of host memory while parsing JSON", c->what);
}

/* "unexpected end of input" or "unexpected character 'x' (expected <what>)" at pos. */
static dsc_status unexpected(const dsc_json_cursor *c, const char *expected) {
  if (c->pos >= c->len) return failf(c, c->pos, "unexpected end of input (expected %s)", expected);
  char q[16];
  dsc_json_quote(q, sizeof q, c->text + c->pos, 1);
  return failf(c, c->pos, "unexpected character '%s' (expected %s)", q, expected);
}

/* ------------------------------------------------------------------ the cursor */

void dsc_json_cursor_init(dsc_json_cursor *c, const char *text, size_t len, size_t base,
                          int max_depth, char *strings, const char *fn, const char *what) {
  memset(c, 0, sizeof *c);
  c->text = text ? text : "";
  c->len = text ? len : 0;
  c->base = base;
  c->max_depth = max_depth < 1 ? 1 : max_depth > DSC_JSON_DEPTH_LIMIT ? DSC_JSON_DEPTH_LIMIT : max_depth;
  c->strings = strings;
  c->fn = fn ? fn : "dsc_json";
  c->what = what ? what : "json";
}

void dsc_json_cursor_free(dsc_json_cursor *c) {
  if (!c) return;
  free(c->keys);
  c->keys = NULL;
  c->n_keys = c->cap_keys = 0;
}

int dsc_json_peek(dsc_json_cursor *c) {
  while (c->pos < c->len) {
    char ch = c->text[c->pos];
    if (ch != ' ' && ch != '\t' && ch != '\n' && ch != '\r') return (unsigned char)ch;
    c->pos++;
  }
  return -1;
}

int dsc_json_next_type(dsc_json_cursor *c) {
  int ch = dsc_json_peek(c);
  switch (ch) {
    case '{': return DSC_JSON_OBJECT;
    case '[': return DSC_JSON_ARRAY;
    case '"': return DSC_JSON_STRING;
    case 't': return DSC_JSON_TRUE;
    case 'f': return DSC_JSON_FALSE;
    case 'n': return DSC_JSON_NULL;
    default: return ch == '-' || (ch >= '0' && ch <= '9') ? DSC_JSON_NUMBER : -1;
  }
}

dsc_status dsc_json_begin(dsc_json_cursor *c, char open, int *more) {
  const char close = open == '{' ? '}' : ']';
  if (dsc_json_peek(c) != (unsigned char)open)
    return unexpected(c, open == '{' ? "'{'" : "'['");
  if (c->depth >= c->max_depth)
    return failf(c, c->pos, "nesting deeper than %d levels", c->max_depth);
  c->pos++;
  c->close[c->depth] = close;
  c->key_mark[c->depth] = c->n_keys;
  c->depth++;
  if (dsc_json_peek(c) == (unsigned char)close) {
    c->pos++;
    c->depth--;
    *more = 0;
  } else {
    *more = 1;
  }
  return DSC_OK;
}

/* Store the bytes of a decoded string (the buffer cannot overflow; checked anyway). */
static dsc_status put_bytes(dsc_json_cursor *c, const char *b, size_t n) {
  if (!c->strings || c->str_used + n > c->len + 1)
    return dsc_error(DSC_ERR_INTERNAL, c->fn, "%s: JSON string buffer overflow", c->what);
  memcpy(c->strings + c->str_used, b, n);
  c->str_used += n;
  return DSC_OK;
}

static int hex4(const char *s, unsigned *out) {
  unsigned v = 0;
  for (int i = 0; i < 4; ++i) {
    char ch = s[i];
    int h = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
          : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
    if (h < 0) return 0;
    v = v * 16 + (unsigned)h;
  }
  *out = v;
  return 1;
}

/* Length of the well-formed UTF-8 sequence at s[0..n) (1..4), or 0: no overlongs, no
 * surrogates, nothing above U+10FFFF, no truncated sequence. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
  unsigned char b = s[0];
  if (b < 0x80) return 1;
  size_t len;
  unsigned char lo = 0x80, hi = 0xbf; /* range of the second byte */
  if (b >= 0xc2 && b <= 0xdf) {
    len = 2;
  } else if (b >= 0xe0 && b <= 0xef) {
    len = 3;
    if (b == 0xe0) lo = 0xa0;
    if (b == 0xed) hi = 0x9f; /* U+D800..DFFF are not characters */
  } else if (b >= 0xf0 && b <= 0xf4) {
    len = 4;
    if (b == 0xf0) lo = 0x90;
    if (b == 0xf4) hi = 0x8f;
  } else {
    return 0;
  }
  if (len > n || s[1] < lo || s[1] > hi) return 0;
  for (size_t k = 2; k < len; ++k)
    if ((s[k] & 0xc0) != 0x80) return 0;
  return len;
}

int dsc_json_utf8_valid(const char *s, size_t n) {
  for (size_t i = 0; i < n;) {
    size_t k = utf8_seq((const unsigned char *)s + i, n - i);
    if (k == 0) return 0;
    i += k;
  }
  return 1;
}

dsc_status dsc_json_string(dsc_json_cursor *c, const char **out, size_t *out_len) {
  if (dsc_json_peek(c) != '"') return unexpected(c, "a string");
  const size_t start = c->pos;
  c->pos++; /* the quote */
  const size_t used0 = c->str_used;
  for (;;) {
    if (c->pos >= c->len) return failf(c, start, "unterminated string");
    unsigned char ch = (unsigned char)c->text[c->pos];
    if (ch == '"') {
      c->pos++;
      break;
    }
    if (ch < 0x20) return failf(c, c->pos, "control character 0x%02x in a string (escape it)", ch);
    if (ch != '\\') {
      size_t n = utf8_seq((const unsigned char *)c->text + c->pos, c->len - c->pos);
      if (n == 0) return failf(c, c->pos, "invalid UTF-8 in a string (byte 0x%02x)", ch);
      DSC_TRY(put_bytes(c, c->text + c->pos, n));
      c->pos += n;
      continue;
    }
    if (c->pos + 1 >= c->len) return failf(c, c->pos, "unterminated escape");
    char e = c->text[c->pos + 1];
    char one = 0;
    switch (e) {
      case '"': case '\\': case '/': one = e; break;
      case 'b': one = '\b'; break;
      case 'f': one = '\f'; break;
      case 'n': one = '\n'; break;
      case 'r': one = '\r'; break;
      case 't': one = '\t'; break;
      case 'u': break;
      default: return failf(c, c->pos, "unknown escape");
    }
    if (e != 'u') {
      DSC_TRY(put_bytes(c, &one, 1));
      c->pos += 2;
      continue;
    }
    unsigned cp;
    if (c->len - c->pos < 6 || !hex4(c->text + c->pos + 2, &cp))
      return failf(c, c->pos, "\\u needs four hex digits");
    c->pos += 6;
    if (cp >= 0xdc00 && cp <= 0xdfff) return failf(c, c->pos - 6, "lone low surrogate \\u%04x", cp);
    if (cp >= 0xd800 && cp <= 0xdbff) {
      unsigned lo;
      if (c->len - c->pos < 6 || c->text[c->pos] != '\\' || c->text[c->pos + 1] != 'u' ||
          !hex4(c->text + c->pos + 2, &lo) || lo < 0xdc00 || lo > 0xdfff)
        return failf(c, c->pos - 6, "lone high surrogate \\u%04x (no low surrogate follows)", cp);
      c->pos += 6;
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
    DSC_TRY(put_bytes(c, u, un));
  }
  DSC_TRY(put_bytes(c, "", 1));
  if (out) *out = c->strings + used0;
  if (out_len) *out_len = c->str_used - used0 - 1;
  return DSC_OK;
}

dsc_status dsc_json_key(dsc_json_cursor *c, const char **s, size_t *n) {
  if (dsc_json_peek(c) != '"') return unexpected(c, "a member name (a string)");
  const size_t at = c->pos;
  const char *k;
  size_t kn;
  DSC_TRY(dsc_json_string(c, &k, &kn));
  if (c->n_keys == c->cap_keys) {
    int64_t cap = c->cap_keys ? 2 * c->cap_keys : 64;
    dsc_json_name *nk = (dsc_json_name *)realloc(c->keys, (size_t)cap * sizeof *nk);
    if (!nk) return oom(c);
    c->keys = nk;
    c->cap_keys = cap;
  }
  c->keys[c->n_keys].s = k;
  c->keys[c->n_keys].n = kn;
  c->keys[c->n_keys].at = at;
  c->n_keys++;
  if (dsc_json_peek(c) != ':') return unexpected(c, "':' after a member name");
  c->pos++;
  if (s) *s = k;
  if (n) *n = kn;
  return DSC_OK;
}

static int key_cmp(const void *pa, const void *pb) {
  const dsc_json_name *a = (const dsc_json_name *)pa, *b = (const dsc_json_name *)pb;
  int r = memcmp(a->s, b->s, a->n < b->n ? a->n : b->n);
  if (r) return r;
  if (a->n != b->n) return a->n < b->n ? -1 : 1;
  return a->at < b->at ? -1 : a->at > b->at;
}

static int key_eq(const dsc_json_name *a, const dsc_json_name *b) {
  return a->n == b->n && memcmp(a->s, b->s, a->n) == 0;
}

/* keys[0..m) of one object: a name given twice is an error at its second place. */
static dsc_status check_unique(const dsc_json_cursor *c, dsc_json_name *k, int64_t m) {
  const dsc_json_name *first = NULL, *again = NULL;
  if (m <= 16) {
    for (int64_t i = 1; i < m && !again; ++i)
      for (int64_t j = 0; j < i; ++j)
        if (key_eq(&k[i], &k[j])) {
          first = &k[j];
          again = &k[i];
          break;
        }
  } else {
    qsort(k, (size_t)m, sizeof *k, key_cmp); /* equal names adjacent, in text order */
    for (int64_t i = 1; i < m; ++i)
      if (key_eq(&k[i], &k[i - 1]) && (!again || k[i].at < again->at)) {
        first = &k[i - 1];
        again = &k[i];
      }
  }
  if (!again) return DSC_OK;
  char q[128];
  return failf(c, again->at, "member name \"%s\" appears twice in an object (first at byte %llu)",
               dsc_json_quote(q, sizeof q, again->s, again->n), (unsigned long long)(c->base + first->at));
}

dsc_status dsc_json_more(dsc_json_cursor *c, int *more) {
  if (c->depth <= 0) return dsc_error(DSC_ERR_INTERNAL, c->fn, "%s: JSON cursor: no open container", c->what);
  const int d = c->depth - 1;
  const char close = c->close[d];
  const int ch = dsc_json_peek(c);
  if (ch == ',') {
    c->pos++;
    *more = 1;
    return DSC_OK;
  }
  if (ch != (unsigned char)close) return unexpected(c, close == '}' ? "',' or '}'" : "',' or ']'");
  c->pos++;
  if (close == '}') {
    const int64_t mark = c->key_mark[d];
    DSC_TRY(check_unique(c, c->keys + mark, c->n_keys - mark));
    c->n_keys = mark;
  }
  c->depth--;
  *more = 0;
  return DSC_OK;
}

/* The number token at pos: checked against the JSON grammar; *end its end, *plain set
 * when it is a bare non-negative integer (no sign, fraction or exponent). */
static dsc_status scan_number(const dsc_json_cursor *c, size_t *end, int *plain) {
  const char *t = c->text;
  const size_t start = c->pos;
  size_t i = start;
  int pl = 1;
#define DIGIT(k) ((k) < c->len && t[k] >= '0' && t[k] <= '9')
  if (i < c->len && t[i] == '-') {
    ++i;
    pl = 0;
  }
  if (i < c->len && t[i] == '0') {
    ++i;
    if (DIGIT(i)) return failf(c, start, "invalid number (leading zeros are not allowed)");
  } else if (DIGIT(i)) {
    while (DIGIT(i)) ++i;
  } else {
    return failf(c, start, "invalid number");
  }
  if (i < c->len && t[i] == '.') {
    ++i;
    pl = 0;
    if (!DIGIT(i)) return failf(c, i, "invalid number (a digit must follow the decimal point)");
    while (DIGIT(i)) ++i;
  }
  if (i < c->len && (t[i] == 'e' || t[i] == 'E')) {
    ++i;
    pl = 0;
    if (i < c->len && (t[i] == '+' || t[i] == '-')) ++i;
    if (!DIGIT(i)) return failf(c, i, "invalid number (a digit must follow the exponent)");
    while (DIGIT(i)) ++i;
  }
#undef DIGIT
  *end = i;
  *plain = pl;
  return DSC_OK;
}

/* The value by strtod on a bounded, NUL-terminated copy whose '.' is the C locale's
 * decimal point (strtod follows the process locale, which the host application may
 * have changed). */
dsc_status dsc_json_number(dsc_json_cursor *c, double *out) {
  if (dsc_json_next_type(c) != DSC_JSON_NUMBER) return unexpected(c, "a number");
  const size_t start = c->pos;
  size_t i;
  int plain;
  DSC_TRY(scan_number(c, &i, &plain));
  const char *t = c->text;
  const size_t n = i - start;
  const char *dp = localeconv()->decimal_point;
  const size_t dpn = dp && dp[0] ? strlen(dp) : 1;
  char small[128];
  const size_t need = n * dpn + 1;
  char *buf = need <= sizeof small ? small : (char *)malloc(need);
  if (!buf) return oom(c);
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
  char *endp = NULL;
  double v = strtod(buf, &endp);
  const int whole = endp == buf + k;
  if (buf != small) free(buf);
  if (!whole) return failf(c, start, "invalid number");
  if (!isfinite(v)) return failf(c, start, "number out of the double range");
  c->pos = i;
  *out = v;
  return DSC_OK;
}

dsc_status dsc_json_uint(dsc_json_cursor *c, const char *what, uint64_t *out) {
  if (!what) what = "an integer";
  if (dsc_json_next_type(c) != DSC_JSON_NUMBER) return unexpected(c, what);
  const size_t start = c->pos;
  size_t i;
  int plain;
  DSC_TRY(scan_number(c, &i, &plain));
  char tok[40];
  dsc_json_quote(tok, sizeof tok, c->text + start, i - start < 24 ? i - start : 24);
  if (!plain)
    return failf(c, start, "expected %s (a non-negative integer without sign, fraction or exponent), got %s%s",
                 what, tok, i - start > 24 ? "..." : "");
  uint64_t v = 0;
  for (size_t j = start; j < i; ++j) {
    uint64_t d = (uint64_t)(c->text[j] - '0');
    if (v > (UINT64_MAX - d) / 10)
      return failf(c, start, "expected %s of at most 18446744073709551615, got %s%s", what, tok,
                   i - start > 24 ? "..." : "");
    v = v * 10 + d;
  }
  c->pos = i;
  *out = v;
  return DSC_OK;
}

dsc_status dsc_json_literal(dsc_json_cursor *c, dsc_json_type *type) {
  static const struct {
    const char *word;
    dsc_json_type type;
  } LIT[] = {{"null", DSC_JSON_NULL}, {"true", DSC_JSON_TRUE}, {"false", DSC_JSON_FALSE}};
  dsc_json_peek(c);
  for (int k = 0; k < 3; ++k) {
    size_t n = strlen(LIT[k].word);
    if (c->len - c->pos >= n && memcmp(c->text + c->pos, LIT[k].word, n) == 0) {
      c->pos += n;
      *type = LIT[k].type;
      return DSC_OK;
    }
  }
  return unexpected(c, "a value");
}

dsc_status dsc_json_skip(dsc_json_cursor *c) {
  const int t = dsc_json_next_type(c);
  switch (t) {
    case DSC_JSON_OBJECT:
    case DSC_JSON_ARRAY: {
      const int obj = t == DSC_JSON_OBJECT;
      int more;
      DSC_TRY(dsc_json_begin(c, obj ? '{' : '[', &more));
      while (more) {
        if (obj) DSC_TRY(dsc_json_key(c, NULL, NULL));
        DSC_TRY(dsc_json_skip(c)); /* depth-bounded: dsc_json_begin checks max_depth */
        DSC_TRY(dsc_json_more(c, &more));
      }
      return DSC_OK;
    }
    case DSC_JSON_STRING: return dsc_json_string(c, NULL, NULL);
    case DSC_JSON_NUMBER: {
      double v;
      return dsc_json_number(c, &v);
    }
    case DSC_JSON_NULL:
    case DSC_JSON_TRUE:
    case DSC_JSON_FALSE: {
      dsc_json_type lt;
      return dsc_json_literal(c, &lt);
    }
    default: return unexpected(c, "a value");
  }
}

dsc_status dsc_json_end(dsc_json_cursor *c) {
  if (dsc_json_peek(c) >= 0) {
    char q[16];
    dsc_json_quote(q, sizeof q, c->text + c->pos, 1);
    return failf(c, c->pos, "unexpected data after the JSON value ('%s')", q);
  }
  return DSC_OK;
}

/* ------------------------------------------------------------------ the tree */

struct dsc_json_doc {
  dsc_json *values; /* values[0] is the root */
  int64_t n;
  char *strings;    /* decoded strings, pointed to by the values */
};

typedef struct {
  dsc_json_cursor c;
  dsc_json *values;
  int64_t *child, *next; /* links by index, -1 = none */
  int64_t n, cap;
} parser;

/* A new value; its index in *idx. */
static dsc_status new_value(parser *p, dsc_json_type type, size_t offset, int64_t *idx) {
  if (p->n == p->cap) {
    int64_t cap = p->cap ? 2 * p->cap : 64;
    dsc_json *v = (dsc_json *)realloc(p->values, (size_t)cap * sizeof *v);
    if (v) p->values = v;
    int64_t *ch = v ? (int64_t *)realloc(p->child, (size_t)cap * sizeof *ch) : NULL;
    if (ch) p->child = ch;
    int64_t *nx = ch ? (int64_t *)realloc(p->next, (size_t)cap * sizeof *nx) : NULL;
    if (nx) p->next = nx;
    if (!nx) return oom(&p->c);
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

/* Recursion bounded by the cursor's max_depth (checked by dsc_json_begin). */
static dsc_status parse_value(parser *p, int64_t *idx) {
  dsc_json_cursor *c = &p->c;
  const int t = dsc_json_next_type(c);
  const size_t at = c->pos;
  if (t < 0) return unexpected(c, "a value");
  if (t == DSC_JSON_OBJECT || t == DSC_JSON_ARRAY) {
    const int obj = t == DSC_JSON_OBJECT;
    int64_t self = -1, last = -1;
    DSC_TRY(new_value(p, (dsc_json_type)t, at, &self));
    *idx = self;
    int more;
    DSC_TRY(dsc_json_begin(c, obj ? '{' : '[', &more));
    while (more) {
      const char *key = NULL;
      size_t key_len = 0;
      if (obj) DSC_TRY(dsc_json_key(c, &key, &key_len));
      int64_t ch;
      DSC_TRY(parse_value(p, &ch));
      p->values[ch].key = key;
      p->values[ch].key_len = key_len;
      if (last < 0) p->child[self] = ch;
      else p->next[last] = ch;
      last = ch;
      p->values[self].n_children++;
      DSC_TRY(dsc_json_more(c, &more));
    }
    return DSC_OK;
  }
  if (t == DSC_JSON_STRING) {
    const char *s;
    size_t n;
    DSC_TRY(dsc_json_string(c, &s, &n));
    DSC_TRY(new_value(p, DSC_JSON_STRING, at, idx));
    p->values[*idx].str = s;
    p->values[*idx].str_len = n;
    return DSC_OK;
  }
  if (t == DSC_JSON_NUMBER) {
    double v = 0.0;
    DSC_TRY(dsc_json_number(c, &v));
    DSC_TRY(new_value(p, DSC_JSON_NUMBER, at, idx));
    p->values[*idx].num = v;
    return DSC_OK;
  }
  dsc_json_type lt;
  DSC_TRY(dsc_json_literal(c, &lt));
  return new_value(p, lt, at, idx);
}

dsc_status dsc_json_parse(const char *text, size_t len, const char *fn, const char *what,
                          dsc_json_doc **out) {
  if (!fn) fn = "dsc_json_parse";
  if (!what) what = "json";
  DSC_CHECK(out != NULL, DSC_ERR_INVALID_ARGUMENT, fn, "out: expected a pointer, got NULL");
  *out = NULL;
  DSC_CHECK(text != NULL || len == 0, DSC_ERR_INVALID_ARGUMENT, fn,
            "%s: expected JSON text, got NULL", what);
  DSC_CHECK(len < SIZE_MAX, DSC_ERR_INVALID_ARGUMENT, fn, "%s: length %zu is too large", what, len);
  parser p;
  memset(&p, 0, sizeof p);
  char *strings = (char *)malloc(len + 1);
  dsc_json_cursor_init(&p.c, text, len, 0, DSC_JSON_MAX_DEPTH, strings, fn, what);
  dsc_json_doc *doc = (dsc_json_doc *)calloc(1, sizeof *doc);
  dsc_status st = (strings && doc) ? DSC_OK : oom(&p.c);
  int64_t root = -1;
  if (st == DSC_OK) st = parse_value(&p, &root);
  if (st == DSC_OK) st = dsc_json_end(&p.c);
  if (st == DSC_OK) {
    /* root is values[0]: it is the first value created */
    for (int64_t i = 0; i < p.n; ++i) {
      p.values[i].child = p.child[i] >= 0 ? &p.values[p.child[i]] : NULL;
      p.values[i].next = p.next[i] >= 0 ? &p.values[p.next[i]] : NULL;
    }
    doc->values = p.values;
    doc->n = p.n;
    doc->strings = strings;
    p.values = NULL;
    strings = NULL;
    *out = doc;
    doc = NULL;
  }
  dsc_json_cursor_free(&p.c);
  free(p.values);
  free(p.child);
  free(p.next);
  free(strings);
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
  for (const dsc_json *c = obj->child; c; c = c->next)
    if (c->key_len == n && memcmp(c->key, key, n) == 0) return c;
  return NULL;
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
