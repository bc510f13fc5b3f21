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


def _cuda_extensions():
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*/*.cu")) + sorted(glob.glob("csrc/*.cpp"))
    sources = [s for s in sources if not s.startswith("csrc/dev/")]
    if not sources:
        return [], {}
    gencode = []
    for arch in CUDA_ARCHS.split(";"):
        arch = arch.strip()
        gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    ext = CUDAExtension(
        name="flopscale._C",
        sources=sources,
        include_dirs=[os.path.abspath("csrc")],
        extra_compile_args={
            "cxx": ["-O3", "-std=c++17"],
            "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo",
                     "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
                     "--expt-relaxed-constexpr"] + gencode,
        },
        libraries=["cublasLt", "cublas"],
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = (_cuda_extensions() if _want_cuda() else ([], {}))

setup(
    packages=list(PACKAGE_DIR),
    package_dir=PACKAGE_DIR,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
