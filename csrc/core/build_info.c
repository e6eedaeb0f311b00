/*
 * build_info.c -- what this build of the library contains, and which CUDA devices
 * it can see. The build system passes the facts in as macros.
 */
#ifdef _OPENMP
#include <omp.h>
#endif
#include <string.h>

#include "backend.h"
#ifdef DSC_WITH_MPI
#include <mpi.h> /* only for its version macros: the MPI this build compiled against */
#if defined(OMPI_MAJOR_VERSION)
#define DSC_MPI_NAME "Open MPI " DSC_STR(OMPI_MAJOR_VERSION) "." DSC_STR(OMPI_MINOR_VERSION) "." DSC_STR(OMPI_RELEASE_VERSION)
#elif defined(MPICH_VERSION)
#define DSC_MPI_NAME "MPICH " MPICH_VERSION
#else
#define DSC_MPI_NAME "MPI " DSC_STR(MPI_VERSION) "." DSC_STR(MPI_SUBVERSION)
#endif
#else
#define DSC_MPI_NAME ""
#endif

#ifndef DSC_CUDA_ARCHS
#define DSC_CUDA_ARCHS ""
#endif
#ifndef DSC_BLAS_NAME
#define DSC_BLAS_NAME "none"
#endif

#define DSC_STR2(x) #x
#define DSC_STR(x) DSC_STR2(x)

dsc_status dsc_get_build_info(dsc_build_info *info) {
  DSC_CHECK(info != NULL, DSC_ERR_INVALID_ARGUMENT, "dsc_get_build_info",
            "info: expected a pointer, got NULL");
  DSC_CHECK(info->size >= sizeof(dsc_build_info), DSC_ERR_INVALID_ARGUMENT, "dsc_get_build_info",
            "info->size: expected >= %zu, got %zu", sizeof(dsc_build_info), info->size);
  info->version = DSC_STR(DSC_VERSION_MAJOR) "." DSC_STR(DSC_VERSION_MINOR) "." DSC_STR(
      DSC_VERSION_PATCH);
#ifdef DSC_WITH_CUDA
  info->cuda = 1;
  info->cuda_version = dsc_cuda_build_version();
  info->cuda_archs = DSC_CUDA_ARCHS;
  info->cublaslt = 1;
#else
  info->cuda = 0;
  info->cuda_version = "";
  info->cuda_archs = "";
  info->cublaslt = 0;
#endif
#ifdef DSC_WITH_NCCL
  info->nccl = 1;
#else
  info->nccl = 0;
#endif
  info->blas = DSC_BLAS_NAME;
#ifdef DSC_WITH_MPI
  info->mpi = 1;
#else
  info->mpi = 0;
#endif
  info->mpi_library = DSC_MPI_NAME;
#ifdef _OPENMP
  info->openmp = 1;
  info->max_threads = omp_get_max_threads();
#else
  info->openmp = 0;
  info->max_threads = 1;
#endif
  return DSC_OK;
}

dsc_status dsc_cuda_device_count(int32_t *count) {
  DSC_CHECK(count != NULL, DSC_ERR_INVALID_ARGUMENT, "dsc_cuda_device_count",
            "count: expected a pointer, got NULL");
  *count = 0;
#ifdef DSC_WITH_CUDA
  return dsc_cuda_get_device_count(count);
#else
  return dsc_error(DSC_ERR_UNSUPPORTED, "dsc_cuda_device_count",
                   "this build of deepseek_c has no CUDA backend (nvcc was not found at build time "
                   "or DSC_CUDA=0)");
#endif
}

dsc_status dsc_cuda_device_name(int32_t index, char *name, size_t name_size, int32_t *cc_major,
                                int32_t *cc_minor) {
  DSC_CHECK(name != NULL && name_size > 0 && cc_major && cc_minor, DSC_ERR_INVALID_ARGUMENT,
            "dsc_cuda_device_name", "name, cc_major, cc_minor: expected non-NULL pointers");
  name[0] = '\0';
#ifdef DSC_WITH_CUDA
  return dsc_cuda_get_device_name(index, name, name_size, cc_major, cc_minor);
#else
  (void)index;
  return dsc_error(DSC_ERR_UNSUPPORTED, "dsc_cuda_device_name",
                   "this build of deepseek_c has no CUDA backend");
#endif
}
