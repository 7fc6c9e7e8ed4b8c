"""Tunables, each with the reason for its value.

Everything here is read at call time, so a user (or a benchmark) may change it after import::

    import fastact
    fastact.config.PARALLEL_MIN_SIZE = 1 << 20
"""

import os

#: Elementwise kernels switch from the serial to the parallel (both cores) loop at this many elements.
#: Measured in bench/test_threshold.py on the 2-core EPYC: the TBB fork/join costs ~10-20 us, which a
#: transcendental kernel (GELU, ~2 ns/element/core) earns back from ~16k elements and a memory-bound
#: ReLU (one core already near bandwidth) only from ~256k. 65536 is a compromise that never costs more
#: than a few microseconds on either kind.
PARALLEL_MIN_SIZE = 1 << 16

#: Row-wise kernels (softmax) go parallel over rows when rows * row_length reaches this.
PARALLEL_MIN_SIZE_ROWS = 1 << 15

#: Threading layer requested from Numba unless the user set NUMBA_THREADING_LAYER. TBB is the only layer
#: that is fast for parallel loops here, safe when several Python threads call in at once (workqueue
#: aborts the process) and safe after fork() (OpenMP hangs the child). See docs/design.md.
THREADING_LAYER = os.environ.get("FASTACT_THREADING_LAYER", "tbb")

#: Where compiled kernels are cached on disk. A per-version, per-source-hash subdirectory is used below
#: it so that a new fastact never loads machine code compiled from older sources.
CACHE_DIR = os.environ.get("FASTACT_CACHE_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "fastact")

#: Set FASTACT_DISABLE_CACHE=1 to compile in memory only (e.g. when measuring cold start).
DISABLE_CACHE = os.environ.get("FASTACT_DISABLE_CACHE", "0") not in ("", "0")

#: Upper bound on the im2col column buffer of one conv tile (bytes). The batch is cut into tiles of
#: as many images as fit: large enough that the GEMM's N dimension (images x output pixels) keeps BLAS
#: efficient, small enough that the buffer stays in the 32 MiB L3 and is reused across calls.
CONV_WORKSPACE_BYTES = 8 << 20

#: GEMMs below this many FLOPs run on one BLAS thread (see fastact/_blas.py for the measurement):
#: ~2e7 FLOPs take ~0.3 ms on one core, about where a second thread starts to pay.
BLAS_PARALLEL_MIN_FLOPS = 20_000_000
