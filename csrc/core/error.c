/*
 * error.c -- dsc_status names and the thread-local "last error" message.
 * The message is the only per-thread state of the library; everything else lives
 * in a dsc_context.
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

#define DSC_ERROR_CAP 1024

static _Thread_local char tls_message[DSC_ERROR_CAP];

const char *dsc_last_error(void) { return tls_message; }

void dsc_clear_error(void) { tls_message[0] = '\0'; }

const char *dsc_status_string(dsc_status status) {
  switch (status) {
    case DSC_OK: return "DSC_OK";
    case DSC_ERR_INVALID_ARGUMENT: return "DSC_ERR_INVALID_ARGUMENT";
    case DSC_ERR_SHAPE: return "DSC_ERR_SHAPE";
    case DSC_ERR_DTYPE: return "DSC_ERR_DTYPE";
    case DSC_ERR_DEVICE: return "DSC_ERR_DEVICE";
    case DSC_ERR_OUT_OF_MEMORY: return "DSC_ERR_OUT_OF_MEMORY";
    case DSC_ERR_UNSUPPORTED: return "DSC_ERR_UNSUPPORTED";
    case DSC_ERR_CUDA: return "DSC_ERR_CUDA";
    case DSC_ERR_IO: return "DSC_ERR_IO";
    case DSC_ERR_FORMAT: return "DSC_ERR_FORMAT";
    case DSC_ERR_INTERNAL: return "DSC_ERR_INTERNAL";
    case DSC_ERR_COMM: return "DSC_ERR_COMM";
  }
  return "DSC_ERR_UNKNOWN";
}

dsc_status dsc_verror(dsc_status st, const char *fn, const char *fmt, va_list ap) {
  int n = snprintf(tls_message, DSC_ERROR_CAP, "%s: ", fn ? fn : "deepseek_c");
  if (n < 0) n = 0;
  if (n < DSC_ERROR_CAP) vsnprintf(tls_message + n, (size_t)(DSC_ERROR_CAP - n), fmt, ap);
  return st;
}

dsc_status dsc_error_set(dsc_status st, const char *message) {
  snprintf(tls_message, DSC_ERROR_CAP, "%s", message ? message : "");
  return st;
}

dsc_status dsc_error(dsc_status st, const char *fn, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  dsc_verror(st, fn, fmt, ap);
  va_end(ap);
  return st;
}

void dsc_log(const dsc_context *ctx, dsc_log_level level, const char *fmt, ...) {
  if (!ctx || !ctx->log_fn) return;
  char buf[DSC_ERROR_CAP];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  ctx->log_fn(level, buf, ctx->log_user_data);
}

dsc_status dsc_index_error(const dsc_index_site *site, int64_t lo, int64_t hi, int64_t skip,
                           int64_t pos, int64_t value) {
  const dsc_status st = DSC_ERR_INVALID_ARGUMENT;
  const char *fn = site->fn, *arg = site->arg ? site->arg : "indices";
  const long long l = (long long)lo, h = (long long)hi, sk = (long long)skip;
  const long long v = (long long)value, p = (long long)pos;
  switch (site->style) {
    case DSC_IDX_MSG_RANGE_OR_SKIP:
      return dsc_error(st, fn,
                       "%s: expected values in [%lld, %lld) or ignore_index (%lld), got %lld at "
                       "position %lld",
                       arg, l, h, sk, v, p);
    case DSC_IDX_MSG_RANGE_WHAT:
      return dsc_error(st, fn, "%s: expected values in [%lld, %lld) (%s), got %lld at flat position %lld",
                       arg, l, h, site->what ? site->what : "", v, p);
    case DSC_IDX_MSG_FINITE:
      return dsc_error(st, fn, "%s: expected finite values, got a NaN or infinity at index %lld", arg, p);
    case DSC_IDX_MSG_NONNEG:
      return dsc_error(st, fn, "%s: expected values >= 0, got %lld at position %lld", arg, v, p);
    case DSC_IDX_MSG_VOCAB:
      return dsc_error(st, fn,
                       "%s: expected ids in [%lld, %lld) (vocab_size), got %lld at position %lld",
                       arg, l, h, v, p);
    case DSC_IDX_MSG_VOCAB_OR_SKIP:
      return dsc_error(st, fn,
                       "%s: expected ids in [%lld, %lld) (vocab_size) or ignore_index %lld, got "
                       "%lld at position %lld",
                       arg, l, h, sk, v, p);
    default: /* DSC_IDX_MSG_RANGE */
      return dsc_error(st, fn, "%s: expected values in [%lld, %lld), got %lld at position %lld", arg,
                       l, h, v, p);
  }
}
