/*
 * check.h -- the tiny harness of the C test programs in tests/c: CHECK counts a pass or
 * prints the failure with its location; err_has looks into dsc_last_error(). Each program
 * ends with the line "N passed, N failed" that tests/test_c_abi.py and run_sanitized.sh read.
 */
#ifndef DSC_TEST_CHECK_H_
#define DSC_TEST_CHECK_H_

#include <stdio.h>
#include <string.h>

#include "deepseek_c.h"

static int g_pass = 0, g_fail = 0;

#define CHECK(cond, ...)                          \
  do {                                            \
    if (cond) {                                   \
      ++g_pass;                                   \
    } else {                                      \
      ++g_fail;                                   \
      printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      printf(__VA_ARGS__);                        \
      printf("\n");                               \
    }                                             \
  } while (0)

/* The last error message contains `part`. */
static inline int err_has(const char *part) { return strstr(dsc_last_error(), part) != NULL; }

#endif /* DSC_TEST_CHECK_H_ */
