"""BLAS GEMM callable from nopython code, so one thread pool (Numba's TBB) drives both the GEMMs and the
loops around them.

Why: calling ``np.matmul`` per image from Python costs ~0.7 us of dispatch per call and hands every GEMM
to OpenBLAS's own thread pool, whose workers then spin ~100 ms after each call and slow the Numba (TBB)
kernel that runs next (1.56 ms idle -> 2.6-3.0 ms measured right after a GEMM). Here the convolution's
per-image GEMMs run inside one ``prange`` over images, each on one BLAS thread (~0.02 us per call), so
im2col -> GEMM -> epilogue stay in the worker's cache and only TBB's pool ever runs.

Where the GEMM comes from: SciPy's ``scipy.linalg.cython_blas`` exports the Fortran ``sgemm``/``dgemm``
pointers of the BLAS SciPy links (its bundled OpenBLAS) as PyCapsules. We register those addresses under
the names ``fastact_sgemm_``/``fastact_dgemm_`` with LLVM (``llvmlite.binding.add_symbol``) and declare
them as external functions, so the compiled kernels refer to a name, not an address: a kernel loaded from
the on-disk cache is linked against whatever this process registered. The Fortran interface (LP64
``int`` dimensions, every argument by pointer, column-major) is checked from the capsule's signature and
is the same for every BLAS SciPy may link, so a cache built against one library is valid with another.

SciPy's OpenBLAS must run those calls on one thread (the parallelism is the ``prange``):
:func:`single_threaded` sets its thread count to 1 for the duration of a kernel (threadpoolctl, ~4 us per
switch, nested and concurrent callers counted) and restores the user's setting afterwards. NumPy links a
different OpenBLAS (``scipy_openblas64_``), which this leaves alone.

The symbols are set up by :func:`available`, on the first convolution (importing SciPy's BLAS costs
0.1 s, which ``import fastact`` does not pay). When they cannot be (SciPy without ``cython_blas``, an
unexpected signature), ``available()`` is False, ``REASON`` says why, and the convolution runs its NumPy
path (``fastact.system.info()`` shows which path is active).
"""

import contextlib
import ctypes
import sys
import threading

from numba import types

from . import _runtime

AVAILABLE = False
REASON = ""
LIBRARY = ""

_INT32_MAX = 2 ** 31 - 1
_ptr = types.intp
_sig = types.void(*([_ptr] * 13))
_sgemm = types.ExternalFunction("fastact_sgemm_", _sig)
_dgemm = types.ExternalFunction("fastact_dgemm_", _sig)


def _capsule(capi, name):
    """(address, C signature) of a Cython C-API capsule."""
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype = ctypes.c_char_p
    get_name.argtypes = [ctypes.py_object]
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype = ctypes.c_void_p
    get_ptr.argtypes = [ctypes.py_object, ctypes.c_char_p]
    cap = capi[name]
    sig = get_name(cap)
    return get_ptr(cap, sig), sig.decode()


_setup_lock = threading.Lock()
_setup_done = False


def available():
    """True when the kernels can call BLAS (the symbols are registered on the first call)."""
    global _setup_done
    if not _setup_done:
        with _setup_lock:
            if not _setup_done:
                _setup()
                _setup_done = True
    return AVAILABLE


def _setup():
    global AVAILABLE, REASON, LIBRARY
    if sys.byteorder != "little":
        REASON = "big-endian machine (the kernels pass BLAS its 'N'/'T' flags as the low byte of an int)"
        return
    try:
        import llvmlite.binding as llb
        import scipy.linalg.cython_blas as cb
        addrs = {}
        for name in ("sgemm", "dgemm"):
            addr, sig = _capsule(cb.__pyx_capi__, name)
            args = [a.strip() for a in sig[sig.index("(") + 1:sig.rindex(")")].split(",")]
            if len(args) != 13 or args[:2] != ["char *", "char *"] or args[2:5] != ["int *"] * 3 or \
                    not addr:
                REASON = f"scipy.linalg.cython_blas.{name} has an unexpected signature {sig!r}"
                return
            addrs[name] = addr
        llb.add_symbol("fastact_sgemm_", addrs["sgemm"])
        llb.add_symbol("fastact_dgemm_", addrs["dgemm"])
    except Exception as e:  # no SciPy, or a SciPy without cython_blas: the NumPy path
        REASON = f"no BLAS for nopython code ({type(e).__name__}: {e})"
        return
    AVAILABLE = True
    LIBRARY = _scipy_blas_path() or "scipy.linalg.cython_blas"


def _scipy_blas_path():
    c = _scipy_controller()
    return None if c is None else c.filepath


_controller = None
_controller_done = False


def _scipy_controller():
    """threadpoolctl's handle on the BLAS behind scipy.linalg.cython_blas, or None."""
    global _controller, _controller_done
    if not _controller_done:
        try:
            import scipy.linalg  # noqa: F401  (loads its BLAS)
            from threadpoolctl import ThreadpoolController
            libs = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
            # SciPy's OpenBLAS is the 32-bit-integer one ("libscipy_openblas-", NumPy's is "..64_");
            # with a single BLAS in the process (a system build) it is that one
            mine = [c for c in libs if "scipy.libs" in c.filepath or "scipy/" in c.filepath]
            _controller = (mine or (libs if len(libs) == 1 else [None]))[0]
        except Exception:  # threadpoolctl missing: the thread count stays as it is
            _controller = None
        _controller_done = True
    return _controller


_st_lock = threading.Lock()
_st_depth = 0
_st_saved = None


@contextlib.contextmanager
def single_threaded():
    """SciPy's BLAS on one thread inside the block (the kernels' prange is the parallelism).

    Re-entrant and safe with several Python threads: the first to enter saves the user's thread count
    and sets 1, the last to leave restores it.
    """
    global _st_depth, _st_saved
    c = _scipy_controller()
    if c is None:
        yield
        return
    with _st_lock:
        if _st_depth == 0:
            _st_saved = c.num_threads
            if _st_saved != 1:
                c.set_num_threads(1)
        _st_depth += 1
    try:
        yield
    finally:
        with _st_lock:
            _st_depth -= 1
            if _st_depth == 0 and _st_saved != 1:
                c.set_num_threads(_st_saved)


def fits(*dims):
    """True when every GEMM dimension fits the BLAS's 32-bit integers."""
    return all(int(d) <= _INT32_MAX for d in dims)


@_runtime.jit(inline="always")
def gemm(transa, transb, M, N, K, A, lda, B, ldb, beta, C, ldc, iw, fw):
    """Row-major ``C (M, N) = op(A) @ op(B) + beta * C`` on this thread, from nopython code.

    ``transa``/``transb`` are True for a transposed operand; ``A``, ``B``, ``C`` addresses
    (``arr.ctypes.data`` plus a byte offset) of row-major blocks with leading dimensions ``lda``, ``ldb``,
    ``ldc`` (elements). ``iw`` is an int32 scratch array of 8 and ``fw`` a scratch array of 2 in the
    operands' dtype (float32 -> sgemm, float64 -> dgemm): the Fortran interface takes every argument by
    pointer. Row-major C is column-major C^T = op(B)^T op(A)^T, so the operands swap and the flags stay.
    With ``beta == 0`` C is not read (BLAS semantics), so it may hold garbage.
    """
    iw[0] = N
    iw[1] = M
    iw[2] = K
    iw[3] = ldb
    iw[4] = lda
    iw[5] = ldc
    iw[6] = 84 if transb else 78  # 'T' / 'N' in the first byte (little-endian)
    iw[7] = 84 if transa else 78
    fw[0] = 1.0
    fw[1] = beta
    ip = iw.ctypes.data
    fp = fw.ctypes.data
    if fw.itemsize == 4:
        _sgemm(ip + 24, ip + 28, ip, ip + 4, ip + 8, fp, B, ip + 12, A, ip + 16, fp + 4, C, ip + 20)
    else:
        _dgemm(ip + 24, ip + 28, ip, ip + 4, ip + 8, fp, B, ip + 12, A, ip + 16, fp + 8, C, ip + 20)
