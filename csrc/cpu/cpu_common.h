/*
 * cpu_common.h -- small helpers shared by the CPU backend files in csrc/cpu.
 *
 * The CPU backend computes in float32: a bfloat16 element is widened exactly when it
 * is loaded and rounded (nearest even) once when the float32 result is stored.
 * `dt` is DSC_DTYPE_FLOAT32 or DSC_DTYPE_BFLOAT16 (the ops layer has checked it).
 */
#ifndef DSC_CPU_COMMON_H_
#define DSC_CPU_COMMON_H_

#include <stdint.h>

#include "backend.h"
#include "numeric.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Below this many elements of work a parallel region costs more than it saves. */
#define DSC_CPU_PAR_MIN ((int64_t)16384)

/* Element i of a float32 or bfloat16 array, as float32. */
static inline float dsc_cpu_ld(dsc_dtype dt, const void *p, int64_t i) {
  return dt == DSC_DTYPE_BFLOAT16 ? dsc_bf16_to_f32(((const uint16_t *)p)[i])
                                  : ((const float *)p)[i];
}

/* Store float32 v as element i of a float32 or bfloat16 array (bf16: rounded). */
static inline void dsc_cpu_st(dsc_dtype dt, void *p, int64_t i, float v) {
  if (dt == DSC_DTYPE_BFLOAT16)
    ((uint16_t *)p)[i] = dsc_f32_to_bf16(v);
  else
    ((float *)p)[i] = v;
}

/* Bytes per element of a float dtype. */
static inline int64_t dsc_cpu_esize(dsc_dtype dt) { return dt == DSC_DTYPE_BFLOAT16 ? 2 : 4; }

#endif /* DSC_CPU_COMMON_H_ */
