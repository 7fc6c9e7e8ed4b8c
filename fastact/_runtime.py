"""Process-wide set-up done once at import: the threading layer and the on-disk kernel cache.

Threading layer
    Numba picks OpenMP on this machine when left alone, and parallel loops then run ~10x slower; the
    workqueue layer aborts the process when two Python threads enter a parallel region at once. TBB is
    fast and thread- and fork-safe, but the ``tbb`` wheel installs ``libtbb.so.12`` under the
    environment's ``lib/`` and Numba's ``tbbpool`` extension has no RPATH to find it there. We load the
    library by its full path with ``RTLD_GLOBAL`` before Numba's first parallel call, so the dynamic
    loader resolves ``tbbpool``'s dependency to the copy already in the process. Without TBB we fall
    back to ``workqueue`` and serialise parallel calls with a lock (see :func:`parallel_slot`).

Cache
    ``cache=True`` in Numba keys a cache entry on the defining file's timestamp only, so a changed
    helper imported from another module would run stale machine code, and functions generated with
    ``exec`` cannot be cached at all. :class:`_FastactLocator` stores every fastact kernel under
    ``<CACHE_DIR>/<version>-<hash of fastact's sources>/``, so any change to any source file (or a new
    release) starts a fresh cache, and falls back to a temporary directory when that is read-only.
"""

import contextlib
import ctypes
import glob
import hashlib
import os
import sys
import tempfile
import threading
import types
import warnings

import numba
import numpy as np
from numba import njit, prange  # noqa: F401  (prange re-exported for the kernels)
from numba.core import types as nbtypes
from numba.core import caching
from numba.extending import intrinsic

from . import config

# The float32 kernels inline their scalar functions at the IR level (inline="always", see _codegen);
# inside a prange body Numba's SSA pass then runs a pedantic self-check that warns about a variable
# "not in scope" although the compiled code is right (tests/test_layers.py compares every fused
# kernel with the unfused ops). Silence that one internal check, for Numba's own module only.
warnings.filterwarnings("ignore", message=r"variable '.*' is not in scope",
                        category=numba.core.errors.NumbaIRAssumptionWarning, module=r"numba\.core\.ssa")

GENERATED_FILENAME = "<fastact-generated>"
_PKG_DIR = os.path.dirname(os.path.abspath(__file__))

# --------------------------------------------------------------------------------------------------
# threading layer


def _find_libtbb():
    """Path of libtbb.so.12 installed by the ``tbb`` wheel, or None."""
    try:
        from importlib import metadata
        files = metadata.files("tbb") or []
        for f in files:
            name = os.path.basename(str(f))
            if name.startswith("libtbb.so.12") or name == "tbb12.dll" or name.startswith("libtbb.12"):
                path = str(f.locate())
                if os.path.exists(path):
                    return path
    except Exception:  # metadata missing or unreadable: try the usual places below
        pass
    for prefix in (sys.prefix, sys.base_prefix, os.path.expanduser("~/.local")):
        hits = sorted(glob.glob(os.path.join(prefix, "lib", "libtbb.so.12*")))
        if hits:
            return hits[0]
    return None


def _setup_threading():
    """Choose the threading layer; return the name requested (the layer starts at first use).

    Numba has one threading layer per process, shared with the user's own parallel code, so a layer
    the user already chose wins: ``NUMBA_THREADING_LAYER`` in the environment, or
    ``numba.config.THREADING_LAYER`` set before ``import fastact``. Otherwise fastact asks for
    ``config.THREADING_LAYER`` (TBB), which then also serves the user's ``@njit(parallel=True)`` code.
    """
    if os.environ.get("NUMBA_THREADING_LAYER"):
        return os.environ["NUMBA_THREADING_LAYER"]  # the user's explicit choice wins
    if numba.config.THREADING_LAYER not in ("default", None, ""):
        return numba.config.THREADING_LAYER  # set by the user's code before importing fastact
    want = config.THREADING_LAYER
    if want == "tbb":
        lib = _find_libtbb()
        if lib is not None:
            try:
                ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                lib = None
        if lib is None:
            want = "workqueue"
    numba.config.THREADING_LAYER = want
    return want


REQUESTED_LAYER = _setup_threading()
_serial_lock = threading.Lock()
#: True when concurrent parallel regions must be serialised by parallel_slot() (workqueue)
NEEDS_SLOT = REQUESTED_LAYER not in ("tbb", "omp", "threadsafe", "forksafe", "safe")


@contextlib.contextmanager
def parallel_slot():
    """Yield True when the caller may run a parallel kernel now, False when it must run serially.

    Under TBB (and OpenMP) parallel regions may be entered from several threads: always True. Under
    workqueue a second concurrent entry aborts the process, so only one thread at a time gets True.
    """
    layer = REQUESTED_LAYER
    if layer in ("tbb", "omp", "threadsafe", "forksafe", "safe"):
        yield True
        return
    got = _serial_lock.acquire(blocking=False)
    try:
        yield got
    finally:
        if got:
            _serial_lock.release()


# --------------------------------------------------------------------------------------------------
# worker threads for slot kernels

class _Worker:
    """One helper thread that runs jobs handed over by a pair of locks.

    A round trip (hand over, run almost nothing, wait) costs ~19 us here, against ~4 us for a TBB
    fork/join (bench/slots.py): Python wakes a sleeping thread through the OS, and the job then needs
    the GIL, whose hand-over wakes a thread the same way. Spinning on a flag before sleeping was
    tried and saved little (the job still waits for the GIL), not worth a core spinning after every call.
    """

    def __init__(self):
        self.go = threading.Lock()
        self.go.acquire()
        self.done = threading.Lock()
        self.done.acquire()
        self.job = self.error = None
        threading.Thread(target=self._loop, name="fastact-worker", daemon=True).start()

    def _loop(self):
        while True:
            self.go.acquire()
            fn, args = self.job
            try:
                fn(*args)
            except BaseException as e:  # re-raised in the caller's thread by wait()
                self.error = e
            self.job = None
            self.done.release()

    def start(self, fn, args):
        self.job = (fn, args)
        self.go.release()

    def wait(self):
        self.done.acquire()
        err, self.error = self.error, None
        if err is not None:
            raise err


_idle = []  # workers not running a job now
_idle_lock = threading.Lock()
_idle_pid = None


def _take_workers(n):
    """Up to n idle workers (fewer when other threads hold them), started on first use and anew in a
    forked child, whose parent's threads do not exist."""
    global _idle, _idle_pid
    with _idle_lock:
        if _idle_pid != os.getpid():
            _idle, _idle_pid = [], os.getpid()
            _idle.extend(_Worker() for _ in range(max(0, numba.config.NUMBA_NUM_THREADS - 1)))
        got, _idle[:] = _idle[:n], _idle[n:]
    return got


def _give_back(workers):
    with _idle_lock:
        if _idle_pid == os.getpid():
            _idle.extend(workers)


@intrinsic
def next_slot(typingctx, counter):
    """``counter[0]`` before adding 1 to it, atomically: the slot loops' work queue, so that every
    thread running a slot kernel takes the next slot when it is done with one (a core slowed by another
    process leaves its remaining slots to the other)."""
    if not (isinstance(counter, nbtypes.Array) and counter.dtype == nbtypes.int64):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        one = context.get_constant(nbtypes.int64, 1)
        return builder.atomic_rmw("add", ary.data, one, "monotonic")
    return nbtypes.int64(counter), codegen


def run_slots(kernel, nslots, args, parallel=True):
    """Run ``kernel(counter, nslots, *args)``, a serial ``nogil`` kernel that takes slots
    ``sl = next_slot(counter)`` until ``sl >= nslots``, on up to ``min(nslots, numba.get_num_threads())``
    threads: this one and helper threads, or on this thread alone when ``parallel`` is False.

    Why not a ``prange`` over the slots: Numba compiles a ``parallel=True`` kernel's loop body twice
    (into the parfor's function, then again linked into the caller), and the serial twin that small
    calls need a third time; the convolution's forward took 9.1 s + 6.5 s (its serial twin) to compile
    that way, against 4.2 s as one serial kernel in the same profile (bench/compile_profile.py,
    bench/results/2026-12-07/compile_profile-{before,after}.txt). Each slot owns its partial results, so
    the result does not depend on which thread ran which slot. Another Python thread calling meanwhile finds the helpers
    busy and runs its slots on its own thread.
    """
    counter = np.zeros(1, dtype=np.int64)
    want = min(nslots, numba.get_num_threads()) - 1 if parallel else 0
    helpers = _take_workers(want) if want > 0 else []
    if not helpers:
        kernel(counter, nslots, *args)
        return
    try:
        for w in helpers:
            w.start(kernel, (counter, nslots, *args))
        kernel(counter, nslots, *args)
    finally:
        errors = []
        for w in helpers:
            try:
                w.wait()
            except BaseException as e:  # noqa: PERF203  (every helper is waited for before any raise)
                errors.append(e)
        _give_back(helpers)
        if errors:
            raise errors[0]


def threading_layer():
    """The threading layer in use, or the one requested if no parallel kernel has run yet."""
    try:
        return numba.threading_layer()
    except ValueError:
        return REQUESTED_LAYER + " (requested; starts at the first parallel call)"


# --------------------------------------------------------------------------------------------------
# cache


def _source_hash():
    h = hashlib.sha256()
    h.update(numba.__version__.encode())
    for root, _dirs, files in sorted(os.walk(_PKG_DIR)):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                h.update(os.path.relpath(path, _PKG_DIR).encode())
                with open(path, "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()[:16]


def _writable_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe", delete=True)
        probe.close()
        return True
    except OSError:
        return False


_cache_path = None


def cache_path():
    """The directory compiled kernels are cached in (created on first use), or None if caching is off."""
    global _cache_path
    if config.DISABLE_CACHE:
        return None
    if _cache_path is None:
        from . import __version__
        leaf = f"{__version__}-{_source_hash()}"
        candidates = [os.path.join(config.CACHE_DIR, leaf),
                      os.path.join(tempfile.gettempdir(), f"fastact-cache-{os.getuid()}", leaf)]
        for c in candidates:
            if _writable_dir(c):
                _cache_path = c
                break
        else:
            _cache_path = ""
    return _cache_path or None


class _FastactLocator(caching._CacheLocator):
    """Numba cache locator for fastact's own (mostly generated) kernels."""

    def __init__(self, py_func, py_file):
        self._path = cache_path()

    def ensure_cache_path(self):
        os.makedirs(self._path, exist_ok=True)

    def get_cache_path(self):
        return self._path

    def get_source_stamp(self):
        return os.path.basename(self._path)

    def get_disambiguator(self):
        return "fa"

    @classmethod
    def from_function(cls, py_func, py_file):
        if py_file != GENERATED_FILENAME and not os.path.abspath(py_file).startswith(_PKG_DIR):
            return None
        if cache_path() is None:
            return None
        return cls(py_func, py_file)


caching.CacheImpl._locator_classes.insert(0, _FastactLocator)


def caching_enabled():
    return cache_path() is not None


class _ParallelKernel:
    """A ``parallel=True`` kernel plus a serial compile of the same function.

    Calls run serially when the arrays passed hold fewer than ``config.PARALLEL_MIN_SIZE`` elements in
    all (a TBB fork/join costs more than small work, and much more on a loaded machine), and when the
    threading layer cannot take another concurrent parallel region (workqueue, see parallel_slot).
    The serial variant is a copy of the function under another qualified name, so that the two
    compilations get separate cache files (Numba keys cache files by qualified name, not by flags).
    """

    def __init__(self, py_func, options):
        self.py_func = py_func
        self.__doc__ = py_func.__doc__
        self.__name__ = py_func.__name__
        serial = types.FunctionType(py_func.__code__, py_func.__globals__, py_func.__name__ + "_serial",
                                    py_func.__defaults__, py_func.__closure__)
        serial.__qualname__ = py_func.__qualname__ + "_serial"
        self.parallel = njit(py_func, parallel=True, cache=caching_enabled(), **options)
        self.serial = njit(serial, cache=caching_enabled(), **options)

    def __call__(self, *args):
        work = 0
        for a in args:
            size = getattr(a, "size", None)
            if size is not None:
                work += size
        if work >= config.PARALLEL_MIN_SIZE:
            with parallel_slot() as ok:
                if ok:
                    return self.parallel(*args)
        return self.serial(*args)


def jit(parallel=False, **options):
    """fastact's ``njit``: on-disk cache (when usable), no GIL, NumPy's division semantics.

    ``error_model='numpy'`` makes x / 0 give inf/NaN as NumPy does instead of raising, and keeps
    divisions free of the zero check that would stop vectorisation.
    """
    options.setdefault("nogil", True)
    options.setdefault("error_model", "numpy")

    def deco(fn):
        if parallel:
            return _ParallelKernel(fn, options)
        return njit(fn, cache=caching_enabled(), **options)
    return deco
