"""GEMM through NumPy's BLAS, with the BLAS thread count chosen per call by the GEMM's size.

OpenBLAS runs every GEMM on all cores. For the small GEMMs of a small CNN (a few MFLOP) the fork/join
costs more than the work, and when the cores are busy with anything else its spinning threads stall:
one training step of the digits net measured 401 ms with 2 BLAS threads on a loaded 2-core machine and
19 ms with 1. Below ``config.BLAS_PARALLEL_MIN_FLOPS`` we therefore run the GEMM on one thread
(through threadpoolctl's handle on the BLAS library, ~4 us per switch) and restore the setting after.
"""

import threading

import numpy as np

from . import config

_libs = None
_lock = threading.Lock()
_switch_lock = threading.Lock()


def _blas_libs():
    global _libs
    if _libs is None:
        with _lock:
            if _libs is None:
                try:
                    from threadpoolctl import ThreadpoolController
                    _libs = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
                except Exception:  # threadpoolctl missing or the BLAS unknown: leave threads alone
                    _libs = []
    return _libs


def matmul(a, b, out=None):
    """``a @ b`` (2-D, or a 2-D ``a`` times a stack ``b``), on one BLAS thread when it is small."""
    flops = 2 * a.shape[-2] * a.shape[-1] * b.shape[-1] * (b.shape[0] if b.ndim == 3 else 1)
    if flops >= config.BLAS_PARALLEL_MIN_FLOPS:
        return np.matmul(a, b, out=out)
    libs = _blas_libs()
    with _switch_lock:  # the thread count is process-wide: one save/set/restore at a time
        saved = [c.num_threads for c in libs]
        for c in libs:
            c.set_num_threads(1)
        try:
            return np.matmul(a, b, out=out)
        finally:
            for c, n in zip(libs, saved):
                c.set_num_threads(n)
