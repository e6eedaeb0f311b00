"""Build of deepseek_c: libdeepseek_c.so (C11 core + CUDA kernels) and deepseek_c._C.

What it does, in order (and prints each choice):
  1. finds nvcc (DSC_CUDA=auto|0|1) and the CUDA architectures (DSC_CUDA_ARCHS, default "80;90a");
  2. finds BLAS (scipy-openblas32, a build requirement) and copies its shared library
     into the package so the installed library needs nothing outside the package;
  3. compiles csrc/{core,ops,cpu,model,dist}/*.c with the C compiler (C11, -O3, OpenMP,
     -fvisibility=hidden) and kernels/*.cu with nvcc;
  4. links deepseek_c/lib/libdeepseek_c.so (rpath $ORIGIN), copies the public headers to
     deepseek_c/include/, and builds the CPython glue deepseek_c._C against the library.

Knobs (environment): DSC_CUDA=auto|0|1, DSC_CUDA_ARCHS="80;90a", DSC_DEBUG=1 (-O0 -g),
DSC_SANITIZE=1 (ASan + UBSan), DSC_NVCC_THREADS (parallel nvcc jobs, default 2),
DSC_MPI=auto|0|1 (the MPI backend of dsc_comm: found through mpicc (MPICC) or mpi.h in the
usual places), DSC_NCCL=auto|0|1 (the NCCL backend: nccl.h and libnccl in a CUDA build).
No network, git or torch at build time.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
C_DIRS = ["csrc/core", "csrc/ops", "csrc/cpu", "csrc/model", "csrc/dist"]


def say(msg: str) -> None:
    print(f"[deepseek_c build] {msg}", flush=True)


def find_nvcc() -> str | None:
    """nvcc from CUDA_HOME/CUDA_PATH, PATH, or /usr/local/cuda, per DSC_CUDA."""
    mode = os.environ.get("DSC_CUDA", "auto").lower()
    if mode in ("0", "off", "no", "false"):
        say("CUDA: disabled by DSC_CUDA=0")
        return None
    candidates = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "bin", "nvcc"))
    if shutil.which("nvcc"):
        candidates.append(shutil.which("nvcc"))
    candidates.append("/usr/local/cuda/bin/nvcc")
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    if mode in ("1", "on", "yes", "true"):
        raise RuntimeError("DSC_CUDA=1 but nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
    say("CUDA: nvcc not found, building the CPU backend only")
    return None


def nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    for tok in out.replace(",", " ").split():
        if tok.startswith("V") and tok[1:2].isdigit():
            return tok[1:]
    return "unknown"


def check_archs(nvcc: str, archs: list[str]) -> None:
    """Every requested architecture must be one this nvcc can build (sm_100a needs CUDA 12.8+)."""
    out = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True).stdout.split()
    known = {c[3:] for c in out if c.startswith("sm_")}
    if not known:
        return  # an nvcc too old to list them: let it decide
    bad = [a for a in archs if a.rstrip("af") not in known]
    if bad:
        raise RuntimeError(f"DSC_CUDA_ARCHS: {', '.join('sm_' + a for a in bad)} not supported by this nvcc "
                           f"(it builds {', '.join(sorted('sm_' + k for k in known))})")


def find_blas() -> tuple[str, str, str, str]:
    """(include_dir, lib_dir, link name, description) of scipy-openblas32."""
    try:
        import scipy_openblas32 as ob
    except ImportError as e:  # pragma: no cover - build requirement
        raise RuntimeError(
            "scipy-openblas32 is required to build deepseek_c (pip install scipy-openblas32)"
        ) from e
    version = getattr(ob, "__version__", "?")
    return ob.get_include_dir(), ob.get_lib_dir(), ob.get_library(), f"scipy-openblas32 {version}"


def _mode(var: str) -> str:
    v = os.environ.get(var, "auto").lower()
    return "0" if v in ("0", "off", "no", "false") else "1" if v in ("1", "on", "yes", "true") else "auto"


def find_mpi() -> tuple[list[str], list[str], str] | None:
    """(compile flags, link flags, description) of an MPI, or None (DSC_MPI=auto|0|1).

    mpicc (or $MPICC) is asked for its flags (Open MPI: --showme:compile/--showme:link;
    MPICH: -compile_info/-link_info); without one, mpi.h and libmpi in the usual Debian /
    Red Hat places. Only csrc/dist/comm_mpi.c uses MPI."""
    mode = _mode("DSC_MPI")
    if mode == "0":
        say("MPI: disabled by DSC_MPI=0")
        return None
    mpicc = os.environ.get("MPICC") or shutil.which("mpicc")

    def ask(*args: str) -> list[str] | None:
        try:
            out = subprocess.run([mpicc, *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.split() if out.returncode == 0 and out.stdout.strip() else None

    if mpicc:
        comp, link = ask("--showme:compile"), ask("--showme:link")
        if comp is None or link is None:
            comp, link = ask("-compile_info"), ask("-link_info")
        if comp is not None and link is not None:
            cflags = [t for t in comp if t.startswith(("-I", "-D", "-pthread"))]
            lflags = [t for t in link if t.startswith(("-L", "-l", "-Wl", "-pthread"))]
            lflags += [f"-Wl,-rpath,{t[2:]}" for t in lflags if t.startswith("-L")]
            if "-lmpi" in lflags or any(t.startswith("-lmpi") for t in lflags):
                return cflags, lflags, f"{mpicc}"
    for inc, libdir in (("/usr/lib/x86_64-linux-gnu/openmpi/include", "/usr/lib/x86_64-linux-gnu/openmpi/lib"),
                        ("/usr/include/x86_64-linux-gnu/mpich", "/usr/lib/x86_64-linux-gnu"),
                        ("/usr/include/mpich-x86_64", "/usr/lib64/mpich/lib"),
                        ("/usr/include/openmpi-x86_64", "/usr/lib64/openmpi/lib")):
        if os.path.exists(os.path.join(inc, "mpi.h")) and glob.glob(os.path.join(libdir, "libmpi.so*")):
            return [f"-I{inc}"], [f"-L{libdir}", "-lmpi", f"-Wl,-rpath,{libdir}"], f"mpi.h in {inc}"
    if mode == "1":
        raise RuntimeError("DSC_MPI=1 but no MPI was found (install one, e.g. apt-get install libopenmpi-dev, "
                           "or set MPICC to its mpicc)")
    say("MPI: not found (no mpicc, no mpi.h): dsc_comm without the MPI backend "
        "(apt-get install libopenmpi-dev for it)")
    return None


class DscBuildExt(build_ext):
    """Builds libdeepseek_c.so before the CPython extension that links it."""

    def build_extensions(self) -> None:
        ext = self.extensions[0]
        pkg_dir = os.path.dirname(self.get_ext_fullpath(ext.name))
        lib_dir = os.path.join(pkg_dir, "lib")
        inc_dir = os.path.join(pkg_dir, "include")
        for d in (lib_dir, inc_dir):
            os.makedirs(d, exist_ok=True)

        debug = os.environ.get("DSC_DEBUG") == "1"
        sanitize = os.environ.get("DSC_SANITIZE") == "1"
        nvcc = find_nvcc()
        archs = [a.strip() for a in os.environ.get("DSC_CUDA_ARCHS", "80;90a").split(";") if a.strip()]
        blas_inc, blas_lib, blas_name, blas_desc = find_blas()
        say(f"BLAS: {blas_desc} ({blas_lib})")
        cuda_home = os.path.dirname(os.path.dirname(nvcc)) if nvcc else None
        if nvcc:
            check_archs(nvcc, archs)
            say(f"CUDA: nvcc {nvcc_version(nvcc)} at {nvcc}; archs {', '.join('sm_' + a for a in archs)} "
                f"(+ PTX for the newest)")
        nccl_lib = None
        if nvcc and _mode("DSC_NCCL") != "0" and os.path.exists(os.path.join(cuda_home, "include", "nccl.h")):
            for d in (os.path.join(cuda_home, "lib64"), os.path.join(cuda_home, "lib"), "/usr/lib/x86_64-linux-gnu"):
                if glob.glob(os.path.join(d, "libnccl.so*")):
                    nccl_lib = d
                    break
        if _mode("DSC_NCCL") == "1" and not nccl_lib:
            raise RuntimeError("DSC_NCCL=1 but nccl.h / libnccl were not found in the CUDA toolkit")
        nccl = nccl_lib is not None
        mpi = find_mpi()
        say(f"NCCL: {'found (' + nccl_lib + ')' if nccl else 'not used'}; "
            f"MPI: {'found (' + mpi[2] + ')' if mpi else 'not used'}; OpenMP: yes; debug: {debug}; "
            f"sanitize: {sanitize}")

        opt = ["-O0", "-g"] if debug else ["-O3"]
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"] if sanitize else []
        defines = [
            "-DDSC_BUILDING_LIBRARY",
            f'-DDSC_BLAS_NAME="{blas_desc}"',
        ]
        if nvcc:
            defines += ["-DDSC_WITH_CUDA",
                        f'-DDSC_CUDA_ARCHS="{";".join("sm_" + a for a in archs)}"']
        if nccl:
            defines += ["-DDSC_WITH_NCCL"]
        if mpi:
            defines += ["-DDSC_WITH_MPI"]
        includes = [f"-I{ROOT}/csrc/include", f"-I{ROOT}/csrc/core", f"-I{blas_inc}"]
        if nvcc:
            includes.append(f"-I{cuda_home}/include")
        cc = os.environ.get("CC", sysconfig.get_config_var("CC") or "cc").split()[0]
        if mpi:
            includes += mpi[0]
        cflags = ["-std=c11", "-fPIC", "-fopenmp", "-pthread", "-fvisibility=hidden", "-Wall", "-Wextra",
                  "-Wno-unused-parameter", *opt, *san, *defines, *includes]

        # Objects live in a directory named after the flags, so a CUDA and a CPU-only
        # build (or a debug build) never reuse each other's objects.
        import hashlib

        tag = hashlib.sha1(repr((cflags, bool(nvcc), archs, debug, sanitize, nccl, bool(mpi))).encode()).hexdigest()[:10]
        obj_dir = os.path.join(self.build_temp, f"dsc_objs_{tag}")
        os.makedirs(obj_dir, exist_ok=True)
        c_sources = sorted(s for d in C_DIRS for s in glob.glob(os.path.join(ROOT, d, "*.c")))
        cu_sources = sorted(glob.glob(os.path.join(ROOT, "kernels", "*.cu"))) if nvcc else []
        jobs = []
        for src in c_sources:
            obj = os.path.join(obj_dir, os.path.relpath(src, ROOT).replace(os.sep, "_") + ".o")
            jobs.append(([cc, *cflags, "-c", src, "-o", obj], src, obj))
        if nvcc:
            gencode = []
            for a in archs:
                gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
            # PTX of the newest architecture as well, so that a newer GPU JIT-compiles it
            # instead of finding "no kernel image". Arch-specific targets ("90a") make PTX
            # that only runs on that exact architecture: embed the family's portable PTX.
            newest = max(archs, key=lambda a: int("".join(ch for ch in a if ch.isdigit())))
            base = "".join(ch for ch in newest if ch.isdigit())
            gencode += ["-gencode", f"arch=compute_{base},code=compute_{base}"]
            nvflags = ["-std=c++17", "-Xcompiler", "-fPIC,-fvisibility=hidden", "-lineinfo",
                       *(["-G"] if debug else ["-O3"]), *gencode, *defines, *includes]
            for src in cu_sources:
                obj = os.path.join(obj_dir, os.path.relpath(src, ROOT).replace(os.sep, "_") + ".o")
                jobs.append(([nvcc, *nvflags, "-c", src, "-o", obj], src, obj))

        say(f"compiling {len(c_sources)} C files and {len(cu_sources)} CUDA files")
        threads = max(1, int(os.environ.get("DSC_NVCC_THREADS", "2")))
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(lambda j: (j, self._needs(j[1], j[2]) and self._run(j[0])), jobs))
        del results
        objects = [j[2] for j in jobs]

        libname = os.path.join(lib_dir, "libdeepseek_c.so")
        link = [cc, "-shared", "-fopenmp", "-pthread", *san, "-o", libname, *objects,
                f"-L{blas_lib}", f"-l{blas_name}", "-Wl,-rpath,$ORIGIN", "-Wl,--no-undefined", "-lm"]
        if mpi:
            link += mpi[1]
        if nvcc:
            cuda_lib = os.path.join(cuda_home, "lib64")
            link += [f"-L{cuda_lib}", "-lcublasLt", "-lcudart", "-lstdc++", f"-Wl,-rpath,{cuda_lib}"]
            if nccl:
                link += [f"-L{nccl_lib}", "-lnccl", f"-Wl,-rpath,{nccl_lib}"]
        say("linking " + os.path.relpath(libname, ROOT if libname.startswith(ROOT) else os.getcwd()))
        self._run(link)
        blas_so = glob.glob(os.path.join(blas_lib, f"lib{blas_name}*.so*"))
        for so in blas_so:
            shutil.copy2(so, lib_dir)
        shutil.copy2(os.path.join(ROOT, "csrc/include/deepseek_c.h"), inc_dir)
        os.makedirs(os.path.join(inc_dir, "dlpack"), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, "csrc/include/dlpack/dlpack.h"), os.path.join(inc_dir, "dlpack"))

        import numpy as np

        ext.include_dirs += [os.path.join(ROOT, "csrc/include"), np.get_include()]
        ext.library_dirs += [lib_dir]
        ext.libraries += ["deepseek_c"]
        ext.extra_compile_args += ["-std=c11", *opt, *san, "-Wall", "-Wno-unused-parameter"]
        ext.extra_link_args += ["-Wl,-rpath,$ORIGIN/lib", *san]
        super().build_extensions()
        self._copy_into_source_tree(pkg_dir)
        say("done: CUDA " + ("yes" if nvcc else "no"))

    def _copy_into_source_tree(self, pkg_dir: str) -> None:
        """Put the built extension, library and headers beside the sources as well.

        Run from a clone's root, ``python -m deepseek_c ...`` imports ./deepseek_c (the
        current directory comes first on sys.path), not the installed copy; with the built
        files beside the sources that import works and is the same build. An in-place or
        editable build already writes there; a build from an unpacked sdist writes into
        its own temporary tree, which is harmless."""
        src_pkg = os.path.join(ROOT, "deepseek_c")
        if os.path.realpath(pkg_dir) == os.path.realpath(src_pkg) or not os.access(src_pkg, os.W_OK):
            return
        ext_file = os.path.basename(self.get_ext_fullpath(self.extensions[0].name))
        shutil.copy2(os.path.join(pkg_dir, ext_file), os.path.join(src_pkg, ext_file))
        for sub in ("lib", "include"):
            dst = os.path.join(src_pkg, sub)
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(os.path.join(pkg_dir, sub), dst, symlinks=True)
        say(f"also placed {ext_file}, lib/ and include/ in {src_pkg} (imports from the clone's root)")

    @staticmethod
    def _needs(src: str, obj: str) -> bool:
        """Recompile when the object is older than its source or any header."""
        if not os.path.exists(obj):
            return True
        newest = os.path.getmtime(src)
        for pattern in ("csrc/**/*.h", "kernels/*.cuh"):
            for h in glob.glob(os.path.join(ROOT, pattern), recursive=True):
                newest = max(newest, os.path.getmtime(h))
        return os.path.getmtime(obj) < newest

    @staticmethod
    def _run(cmd: list[str]) -> bool:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(" ".join(cmd) + "\n" + proc.stdout + proc.stderr)
            raise RuntimeError(f"build step failed: {cmd[0]} ... {cmd[-1]}")
        if proc.stderr.strip():
            sys.stderr.write(proc.stderr)
        return True


setup(
    ext_modules=[
        Extension(
            "deepseek_c._C",
            sources=sorted(glob.glob("csrc/python/*.c")),
        )
    ],
    cmdclass={"build_ext": DscBuildExt},
)
