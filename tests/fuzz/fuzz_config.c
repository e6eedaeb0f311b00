/*
 * fuzz_config.c -- libFuzzer target for config.json parsing: the strict JSON tree reader
 * (csrc/model/json.c) and dsc_model_config_from_json over it (csrc/model/config_json.c),
 * which ends in dsc_model_config_validate. Built and run by tests/fuzz/run_fuzz.sh under
 * ASan/UBSan: any crash, leak, overflow or undefined behaviour is a finding.
 *
 * Promises checked: a refusal is DSC_ERR_FORMAT / DSC_ERR_INVALID_ARGUMENT with a message
 * and leaves the config untouched; an accepted config passes dsc_model_config_validate.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deepseek_c.h"
#include "../../csrc/model/json.h"

#define REQUIRE(cond, what)                                      \
  do {                                                           \
    if (!(cond)) {                                               \
      fprintf(stderr, "fuzz_config: broken promise: %s\n", what); \
      abort();                                                   \
    }                                                            \
  } while (0)

/* Walk the tree (every string's length within reach). */
static unsigned walk(const dsc_json *v) {
  unsigned h = (unsigned)v->type;
  if (v->key) h += (unsigned)v->key_len + (unsigned char)v->key[v->key_len];
  if (v->type == DSC_JSON_STRING) h += (unsigned)v->str_len + (unsigned char)v->str[v->str_len];
  int64_t n = 0;
  for (const dsc_json *c = v->child; c; c = c->next, ++n) h += walk(c); /* depth <= 64 */
  if (v->type == DSC_JSON_ARRAY || v->type == DSC_JSON_OBJECT)
    if (n != v->n_children) abort();
  return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  dsc_json_doc *doc = NULL;
  dsc_status s = dsc_json_parse((const char *)data, size, "fuzz", "config.json", &doc);
  if (s == DSC_OK) {
    volatile unsigned h = walk(dsc_json_root(doc));
    (void)h;
  } else {
    REQUIRE(doc == NULL && (s == DSC_ERR_FORMAT || s == DSC_ERR_OUT_OF_MEMORY), "parse refusal");
  }
  dsc_json_free(doc);

  dsc_model_config c, before;
  memset(&c, 0, sizeof c); /* padding too: the comparison below is bytewise */
  dsc_model_config_default(&c);
  memcpy(&before, &c, sizeof c);
  s = dsc_model_config_from_json((const char *)data, size, &c);
  if (s == DSC_OK) {
    REQUIRE(dsc_model_config_validate(&c) == DSC_OK, "an accepted config is valid");
  } else {
    REQUIRE(s == DSC_ERR_FORMAT || s == DSC_ERR_INVALID_ARGUMENT || s == DSC_ERR_OUT_OF_MEMORY,
            "a refusal is FORMAT or INVALID_ARGUMENT");
    REQUIRE(dsc_last_error()[0] != '\0', "a refusal has a message");
    REQUIRE(memcmp(&c, &before, sizeof c) == 0, "a refused config is left as it was");
  }
  return 0;
}
