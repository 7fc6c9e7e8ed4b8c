"""What fastact runs on: versions, the threading layer, threads, the kernel cache, the GPU.

``python -m fastact info`` prints :func:`info`; the tests and benchmarks read the same values.

>>> import fastact
>>> sorted(fastact.system.info())[:3]
['CUDA', 'JIT cache', 'conv GEMM']
"""

import os
import platform

from . import _runtime, config

__all__ = ["info", "threading_layer", "cache_dir"]


def threading_layer():
    """Numba's threading layer in use (``'tbb'`` normally), or the requested one, marked as such,
    before the first parallel kernel has run. One per process: the user's own parallel Numba code
    shares it (fastact keeps a layer the user chose before importing it)."""
    return _runtime.threading_layer()


def cache_dir():
    """The directory compiled kernels are cached in (``<FASTACT_CACHE_DIR>/<version>-<source hash>``),
    or None when caching is off or no location is writable."""
    return _runtime.cache_path()


def _cuda_status():
    """``fastact.cuda.status()`` as one line: "available on ..." or "not available: why"."""
    from .cuda import _device
    ok, why = _device.status()
    return f"available {why}" if ok else f"not available: {why}"


def _gemm_path():
    """Which GEMM path the convolutions take (fastact/_gemm.py), and why when it is the NumPy one."""
    from . import _gemm
    if not config.CONV_NOPYTHON_GEMM:
        return "np.matmul per tile (config.CONV_NOPYTHON_GEMM is False)"
    if _gemm.available():
        return f"nopython BLAS inside the parallel loop ({_gemm.LIBRARY}, one thread per call)"
    return f"np.matmul per tile ({_gemm.REASON})"


def info():
    """``{name: value}`` (strings) describing this installation and machine."""
    import llvmlite
    import numba
    import numpy as np

    from . import __version__
    return {
        "fastact": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "llvmlite": llvmlite.__version__,
        "threading layer": threading_layer(),
        "threads": str(numba.get_num_threads()),
        "cpu count": str(os.cpu_count()),
        "parallel threshold": f"{config.PARALLEL_MIN_SIZE} elements (backward: "
                              f"{config.PARALLEL_MIN_SIZE_BACKWARD}; transcendental: "
                              f"{config.PARALLEL_MIN_SIZE_TRANSCENDENTAL})",
        "JIT cache": cache_dir() or "disabled (no writable location)",
        "conv GEMM": _gemm_path(),
        "CUDA": _cuda_status(),
    }
