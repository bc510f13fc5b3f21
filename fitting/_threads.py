"""Run a block with OpenBLAS on one thread (no threadpoolctl dependency).

Why: L-BFGS-B's inner step calls BLAS on 5x10 matrices. A threaded OpenBLAS wakes its pool for
each call, and on a contended 2-core machine that made `setulb` ~280 us instead of ~10 us, a 10x
slowdown of the 4500-start Chinchilla fit. We find the OpenBLAS builds already loaded (numpy's and
scipy's wheels each bundle one, with prefixed symbols), set one thread, and restore on exit.
Anywhere this cannot work (not Linux, another BLAS) it does nothing.
"""

from __future__ import annotations

import ctypes
import contextlib

import scipy.optimize  # noqa: F401  (loads scipy's OpenBLAS, so single_thread_blas finds it)

_SYMBOLS = [  # (getter, setter) names across scipy-openblas builds and plain OpenBLAS
    ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
]
_handles = None


def _openblas_handles():
    global _handles
    if _handles is not None:
        return _handles
    _handles = []
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line})
    except OSError:
        return _handles
    for p in paths:
        try:
            lib = ctypes.CDLL(p)
        except OSError:
            continue
        for get, set_ in _SYMBOLS:
            if hasattr(lib, get) and hasattr(lib, set_):
                getf, setf = getattr(lib, get), getattr(lib, set_)
                getf.restype, setf.argtypes = ctypes.c_int, [ctypes.c_int]
                _handles.append((getf, setf))
                break
    return _handles


@contextlib.contextmanager
def single_thread_blas():
    saved = []
    for getf, setf in _openblas_handles():
        try:
            saved.append((setf, getf()))
            setf(1)
        except Exception:  # a foreign build with another ABI: leave it alone
            pass
    try:
        yield
    finally:
        for setf, n in saved:
            setf(n)
