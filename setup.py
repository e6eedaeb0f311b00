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
DSC_SANITIZE=1 (ASan + UBSan), DSC_NVCC_THREADS (parallel nvcc jobs, default 2).
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
        nccl = bool(nvcc) and os.path.exists(os.path.join(cuda_home, "include", "nccl.h"))
        say(f"NCCL: {'found' if nccl else 'not used'}; OpenMP: yes; debug: {debug}; sanitize: {sanitize}")

        opt = ["-O0", "-g"] if debug else ["-O3"]
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"] if sanitize else []
        defines = [
            "-DDSC_BUILDING_LIBRARY",
            f'-DDSC_BLAS_NAME="{blas_desc}"',
        ]
        if nvcc:
            # DSC_WITH_CUDA_<FAMILY>: that family's kernels are in kernels/ (the ops layer
            # answers DSC_ERR_UNSUPPORTED on CUDA for a family without them).
            defines += ["-DDSC_WITH_CUDA", "-DDSC_WITH_CUDA_MOE", "-DDSC_WITH_CUDA_FP8",
                        "-DDSC_WITH_CUDA_MLA",
                        f'-DDSC_CUDA_ARCHS="{";".join("sm_" + a for a in archs)}"']
        includes = [f"-I{ROOT}/csrc/include", f"-I{ROOT}/csrc/core", f"-I{blas_inc}"]
        if nvcc:
            includes.append(f"-I{cuda_home}/include")
        cc = os.environ.get("CC", sysconfig.get_config_var("CC") or "cc").split()[0]
        cflags = ["-std=c11", "-fPIC", "-fopenmp", "-fvisibility=hidden", "-Wall", "-Wextra",
                  "-Wno-unused-parameter", *opt, *san, *defines, *includes]

        # Objects live in a directory named after the flags, so a CUDA and a CPU-only
        # build (or a debug build) never reuse each other's objects.
        import hashlib

        tag = hashlib.sha1(repr((cflags, bool(nvcc), archs, debug, sanitize)).encode()).hexdigest()[:10]
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
        link = [cc, "-shared", "-fopenmp", *san, "-o", libname, *objects,
                f"-L{blas_lib}", f"-l{blas_name}", "-Wl,-rpath,$ORIGIN", "-Wl,--no-undefined", "-lm"]
        if nvcc:
            cuda_lib = os.path.join(cuda_home, "lib64")
            link += [f"-L{cuda_lib}", "-lcublasLt", "-lcudart", "-lstdc++", f"-Wl,-rpath,{cuda_lib}"]
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
