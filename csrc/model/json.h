/*
 * model/json.h -- a small, bounded JSON reader (RFC 8259) for config files.
 *
 * dsc_json_parse reads `len` bytes (never more, no NUL terminator needed) into a
 * read-only tree owned by a dsc_json_doc. Strict grammar: one value, optional
 * whitespace around it, no trailing commas, no comments, nesting at most
 * DSC_JSON_MAX_DEPTH, strings valid UTF-8 with escapes decoded (\u surrogate pairs
 * joined, lone surrogates rejected), numbers finite doubles. Any violation is
 * DSC_ERR_FORMAT with the line and column.
 *
 * Library-internal (not part of the public ABI).
 */
#ifndef DSC_MODEL_JSON_H_
#define DSC_MODEL_JSON_H_

#include <stddef.h>
#include <stdint.h>

#include "deepseek_c.h"

#define DSC_JSON_MAX_DEPTH 64

typedef enum dsc_json_type {
  DSC_JSON_NULL = 0,
  DSC_JSON_FALSE = 1,
  DSC_JSON_TRUE = 2,
  DSC_JSON_NUMBER = 3,
  DSC_JSON_STRING = 4,
  DSC_JSON_ARRAY = 5,
  DSC_JSON_OBJECT = 6,
} dsc_json_type;

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

/* Parse text[0..len). Errors are recorded as "<fn>: <what>: invalid JSON at line L,
 * column C: ..." (what: e.g. a file name). *out is NULL on failure. */
dsc_status dsc_json_parse(const char *text, size_t len, const char *fn, const char *what,
                          dsc_json_doc **out);
void dsc_json_free(dsc_json_doc *doc);
const dsc_json *dsc_json_root(const dsc_json_doc *doc);

/* The member `key` of an object (the last one when a key repeats, as Python does);
 * NULL when absent or when obj is not an object. */
const dsc_json *dsc_json_get(const dsc_json *obj, const char *key);

/* "null", "a boolean", "a number", "a string", "an array", "an object" (for messages). */
const char *dsc_json_type_name(dsc_json_type t);

#endif /* DSC_MODEL_JSON_H_ */
