/*
 * model/json.h -- a small, strict, bounded JSON reader (RFC 8259) for config.json and
 * safetensors headers.
 *
 * Two ways to read:
 *  - dsc_json_parse reads `len` bytes (never more, no NUL terminator needed) into a
 *    read-only tree owned by a dsc_json_doc (config.json);
 *  - a dsc_json_cursor walks the text value by value, for a reader that knows its
 *    schema and wants no tree (the safetensors header: 160k tensors would make a tree of
 *    a million values).
 * Both use the same grammar, which is strict: one value with optional whitespace (space,
 * tab, LF, CR) around it and nothing else after it; no trailing commas, comments, NaN,
 * leading zeros, '+' signs or bare '.'; strings valid UTF-8 (no overlongs, no encoded
 * surrogates, nothing above U+10FFFF, no truncated sequences, no raw control characters)
 * with escapes decoded and \u surrogate pairs joined (a lone surrogate is an error);
 * numbers finite as doubles; containers nested at most max_depth deep (the recursion is
 * bounded by it); no object with a member name twice. Any violation is DSC_ERR_FORMAT
 * "<fn>: <what>: invalid JSON at byte B (line L, column C): <why>", B counted from the
 * start of the file (the cursor's base), L and C within the JSON text.
 *
 * Library-internal (not part of the public ABI).
 */
#ifndef DSC_MODEL_JSON_H_
#define DSC_MODEL_JSON_H_

#include <stddef.h>
#include <stdint.h>

#include "deepseek_c.h"

#define DSC_JSON_MAX_DEPTH 64     /* dsc_json_parse: containers nested at most this deep */
#define DSC_JSON_DEPTH_LIMIT 128  /* the most any cursor allows */

typedef enum dsc_json_type {
  DSC_JSON_NULL = 0,
  DSC_JSON_FALSE = 1,
  DSC_JSON_TRUE = 2,
  DSC_JSON_NUMBER = 3,
  DSC_JSON_STRING = 4,
  DSC_JSON_ARRAY = 5,
  DSC_JSON_OBJECT = 6,
} dsc_json_type;

/* ------------------------------------------------------------------ the cursor */

/* A member name seen in an open object: decoded bytes and where it stood. */
typedef struct dsc_json_name {
  const char *s;
  size_t n;
  size_t at; /* offset in the text */
} dsc_json_name;

typedef struct dsc_json_cursor {
  const char *text; /* [len] the JSON */
  size_t len, pos;
  size_t base;      /* offset of text in its file, added to positions in messages */
  const char *fn, *what;
  int depth, max_depth;
  char close[DSC_JSON_DEPTH_LIMIT + 1];        /* ']' or '}' of each open container */
  int64_t key_mark[DSC_JSON_DEPTH_LIMIT + 1];  /* where each open object's keys start */
  char *strings;    /* decoded strings, NUL-terminated: the caller's buffer of len + 1 bytes */
  size_t str_used;
  dsc_json_name *keys; /* [n_keys] names of the open objects' members (duplicate check) */
  int64_t n_keys, cap_keys;
} dsc_json_cursor;

/* Start reading text[0..len). `strings` (len + 1 bytes, owned by the caller) receives
 * every decoded string: a string never decodes to more bytes than it takes in the text,
 * so it cannot overflow, and the strings returned stay valid as long as it does. */
void dsc_json_cursor_init(dsc_json_cursor *c, const char *text, size_t len, size_t base,
                          int max_depth, char *strings, const char *fn, const char *what);
void dsc_json_cursor_free(dsc_json_cursor *c); /* the key list; not `strings` */

/* DSC_ERR_FORMAT "<fn>: <what>: invalid JSON at byte B (line L, column C): <msg>" for
 * text offset `at`. */
dsc_status dsc_json_fail(const dsc_json_cursor *c, size_t at, const char *msg);

/* Skip whitespace; the next byte (0..255), or -1 at the end. */
int dsc_json_peek(dsc_json_cursor *c);

/* The type the next value will have (from its first byte), or -1 if none can start there. */
int dsc_json_next_type(dsc_json_cursor *c);

/* Containers. begin: '{' or '[' (open), with *more = 0 when it is empty (already closed).
 * In an object, each member starts with dsc_json_key. After each element or member
 * value, dsc_json_more: *more = 1 after a ',', 0 after the closing bracket -- where an
 * object's names are checked for duplicates. */
dsc_status dsc_json_begin(dsc_json_cursor *c, char open, int *more);
dsc_status dsc_json_key(dsc_json_cursor *c, const char **s, size_t *n);
dsc_status dsc_json_more(dsc_json_cursor *c, int *more);

/* Scalars. string: decoded, NUL-terminated in `strings` (may hold \u0000: use *n).
 * uint: a non-negative integer written without fraction, exponent or sign, <= 2^64 - 1
 * (what serde_json reads as an unsigned integer); anything else is a FORMAT error whose
 * message says "expected <what>". literal: null, true or false. */
dsc_status dsc_json_string(dsc_json_cursor *c, const char **s, size_t *n);
dsc_status dsc_json_number(dsc_json_cursor *c, double *v);
dsc_status dsc_json_uint(dsc_json_cursor *c, const char *what, uint64_t *v);
dsc_status dsc_json_literal(dsc_json_cursor *c, dsc_json_type *type);

/* Any value, checked and dropped. */
dsc_status dsc_json_skip(dsc_json_cursor *c);

/* Only whitespace may follow. */
dsc_status dsc_json_end(dsc_json_cursor *c);

/* 1 when s[0..n) is well-formed UTF-8 by the rule strings are read with, else 0. */
int dsc_json_utf8_valid(const char *s, size_t n);

/* Write s[0..n) into out[cap] for a message: printable ASCII and UTF-8 as they are,
 * other bytes as \xNN, cut with "..." past about 80 bytes. Returns out. */
const char *dsc_json_quote(char *out, size_t cap, const char *s, size_t n);

/* ------------------------------------------------------------------ the tree */

/* One value of the tree. Children of an array or object form a list (child, next). */
typedef struct dsc_json dsc_json;
struct dsc_json {
  dsc_json_type type;
  const char *key;       /* member of an object: its decoded name (NUL-terminated); else NULL */
  size_t key_len;
  const char *str;       /* STRING: decoded UTF-8, NUL-terminated (may also hold \u0000) */
  size_t str_len;
  double num;            /* NUMBER */
  int64_t n_children;    /* ARRAY / OBJECT: number of elements / members */
  const dsc_json *child; /* first element / member, NULL when empty */
  const dsc_json *next;  /* next sibling in the parent, NULL for the last */
  size_t offset;         /* byte offset of the value in the text (for messages) */
};

typedef struct dsc_json_doc dsc_json_doc;

/* Parse text[0..len) (nesting at most DSC_JSON_MAX_DEPTH). Errors are recorded as
 * "<fn>: <what>: invalid JSON at byte B (line L, column C): ..." (what: e.g. a file
 * name). *out is NULL on failure. */
dsc_status dsc_json_parse(const char *text, size_t len, const char *fn, const char *what,
                          dsc_json_doc **out);
void dsc_json_free(dsc_json_doc *doc);
const dsc_json *dsc_json_root(const dsc_json_doc *doc);

/* The member `key` of an object (names are unique: the parser rejects repeats); NULL
 * when absent or when obj is not an object. */
const dsc_json *dsc_json_get(const dsc_json *obj, const char *key);

/* "null", "a boolean", "a number", "a string", "an array", "an object" (for messages). */
const char *dsc_json_type_name(dsc_json_type t);

#endif /* DSC_MODEL_JSON_H_ */
