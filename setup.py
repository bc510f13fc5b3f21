"""Build script for flopscale.

    pip install -e .                          # pure Python on a CPU-only machine
    FLOPSCALE_BUILD_CUDA=1 pip install -e .   # force the CUDA extension flopscale._C

The top-level folders install under one import name (``kernels`` and ``engine`` would
collide with other packages as bare modules): kernels/ -> flopscale.kernels, and so on.

The CUDA extension ``flopscale._C`` is built from csrc/ only when a CUDA build of torch and
nvcc are both present, or when FLOPSCALE_BUILD_CUDA=1 forces it; build_ext is registered only
when there is an extension, so a GPU-less machine still installs (flash-attention's habit).
"""

import glob
import os
import shutil

from setuptools import setup

PACKAGE_DIR = {
    "flopscale": "flopscale",
    "flopscale.kernels": "kernels",
    "flopscale.engine": "engine",
    "flopscale.fitting": "fitting",
    "flopscale.bench": "bench",
}

# FLOPSCALE_BUILD_CUDA: "1" forces the extension (fail loudly if it cannot build), "0" skips
# it even on a GPU machine (fast pure-Python installs), unset means "build if we can".
BUILD_CUDA = os.environ.get("FLOPSCALE_BUILD_CUDA")
# FLOPSCALE_CUDA_ARCHS: semicolon list of compute capabilities to build for. Hopper's wgmma
# needs the arch-specific 90a target, Ampere-class cards take 80.
CUDA_ARCHS = os.environ.get("FLOPSCALE_CUDA_ARCHS", "80;90a")
# nvcc flags of the extension (.ci/check_cuda.sh reads them from here).  --use_fast_math: exp2f
# becomes one MUFU.EX2 in the attention softmax; -lineinfo: ncu and compute-sanitizer map
# SASS back to source lines.
NVCC_FLAGS = ["-O3", "--use_fast_math", "-lineinfo", "-U__CUDA_NO_HALF_OPERATORS__",
              "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "--expt-relaxed-constexpr"]


def _want_cuda() -> bool:
    if BUILD_CUDA == "0":
        return False
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        if BUILD_CUDA == "1":
            raise RuntimeError("FLOPSCALE_BUILD_CUDA=1 but torch is not importable at build time")
        return False
    have = torch.version.cuda is not None and CUDA_HOME is not None and shutil.which("nvcc") is not None
    if BUILD_CUDA == "1" and not have:
        raise RuntimeError("FLOPSCALE_BUILD_CUDA=1 but no CUDA build of torch or no nvcc was found")
    return have


def _cublaslt_paths():
    """Where cuBLASLt's header and library live: (include_dirs, library_dirs, link_args).

    A full CUDA toolkit has them under CUDA_HOME.  Machines whose torch came from pip often
    have nvcc without cuBLAS's headers; torch's own dependency, the nvidia-cublas wheel, ships
    them (nvidia/cu13/include, nvidia/cu13/lib/libcublasLt.so.13, no unversioned .so), so we
    link that exact file and add an rpath.  FLOPSCALE_CUBLAS_HOME overrides both (a folder
    with include/cublasLt.h and lib/ or lib64/).
    """
    from torch.utils.cpp_extension import CUDA_HOME

    roots = []
    if os.environ.get("FLOPSCALE_CUBLAS_HOME"):
        roots.append(os.environ["FLOPSCALE_CUBLAS_HOME"])
    if CUDA_HOME:
        roots.append(CUDA_HOME)
        roots += glob.glob(os.path.join(CUDA_HOME, "targets", "*"))
    try:
        import importlib.util

        spec = importlib.util.find_spec("nvidia")
        for base in (spec.submodule_search_locations or []) if spec else []:
            roots += sorted(glob.glob(os.path.join(base, "cu*"))) + [os.path.join(base, "cublas")]
    except ImportError:
        pass
    for root in roots:
        if not os.path.isfile(os.path.join(root, "include", "cublasLt.h")):
            continue
        for libdir in (os.path.join(root, "lib64"), os.path.join(root, "lib")):
            libs = sorted(glob.glob(os.path.join(libdir, "libcublasLt.so*")))
            if not libs:
                continue
            plain = os.path.join(libdir, "libcublasLt.so")
            name = "cublasLt" if plain in libs else ":" + os.path.basename(libs[0])
            return [os.path.join(root, "include")], [libdir], [f"-l{name}", f"-Wl,-rpath,{libdir}"]
    raise RuntimeError(
        "building flopscale._C needs cuBLASLt (cublasLt.h and libcublasLt.so*): none found under "
        "CUDA_HOME or the nvidia-cublas wheel; set FLOPSCALE_CUBLAS_HOME"
    )


def _cuda_extensions():
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*/*.cu")) + sorted(glob.glob("csrc/*.cpp"))
    # csrc/dev/ is the kernel-variant lab: standalone programs with their own main(), never part
    # of the extension.  What remains: attention/attention.cu, ffn/ffn.cu, layernorm/layernorm.cu
    # and bindings.cpp.
    sources = [s for s in sources if not s.startswith("csrc/dev/")]
    if not sources:
        return [], {}
    gencode = []
    for arch in CUDA_ARCHS.split(";"):
        arch = arch.strip()
        gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    cublas_inc, cublas_libdirs, cublas_link = _cublaslt_paths()
    # No -std flag: torch's BuildExtension picks the standard its headers need (C++17 or 20);
    # the kernels use C++17 (if constexpr) and build under either.
    # NVCC_FLAGS is read by .ci/check_cuda.sh's resource check so the registers it reports are
    # the ones the extension gets.
    ext = CUDAExtension(
        name="flopscale._C",
        sources=sources,
        include_dirs=[os.path.abspath("csrc")] + cublas_inc,
        library_dirs=cublas_libdirs,
        extra_compile_args={
            "cxx": ["-O3"],
            "nvcc": NVCC_FLAGS + gencode,
        },
        extra_link_args=cublas_link,
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = (_cuda_extensions() if _want_cuda() else ([], {}))

setup(
    packages=list(PACKAGE_DIR),
    package_dir=PACKAGE_DIR,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
