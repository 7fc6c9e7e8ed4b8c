"""What every ``fastact.cuda`` module shares: the device's availability, its math, array checks and
launches, and the compile helpers.

Nothing here imports ``numba.cuda`` at import time: ``import fastact.cuda`` works without numba-cuda
and without a GPU, and :func:`require` raises the ``RuntimeError`` that says which is missing when a
kernel is first needed.

Launch settings (``THREADS_PER_BLOCK``, ``MAX_BLOCKS``, ``TILE``) are read from the ``fastact.cuda``
package at each launch, so that setting ``fastact.cuda.TILE = 8`` (the tests make every size small to
run every grid-stride loop more than once) takes effect although this module holds the defaults.
"""

import sys
import threading
import types

import numpy as np

from .. import _codegen, _table
from .. import _math as fm

#: threads per block of the 1-D kernels (a multiple of 32)
THREADS_PER_BLOCK = 256
#: upper bound on the blocks of a 1-D launch; the grid-stride loops cover any size beyond it
MAX_BLOCKS = 4096
#: GEMM tile edge (threads per block = TILE * TILE, shared memory = 2 * TILE^2 elements)
TILE = 16

#: compiled kernels and device functions, keyed by what they were built from (and the settings baked
#: into them); guarded by ``lock`` for the check-then-build
built = {}
lock = threading.RLock()


def setting(name):
    """A launch setting as ``fastact.cuda`` holds it now (this module's default before it is set)."""
    return getattr(sys.modules.get(__package__), name, globals()[name])


# --------------------------------------------------------------------------- availability, set-up

def _import_cuda():
    # numba-cuda 0.30.4 (the newest release) registers an overload for np.row_stack, which NumPy 2.5
    # removed, and fails at import with an AttributeError; it is vstack's old name, so give it back
    # (seen on the H100 test machine with NumPy 2.5.2).
    if not hasattr(np, "row_stack"):
        np.row_stack = np.vstack
    import importlib.util
    try:
        # numba-cuda replaces the numba.cuda that older Numba releases bundle; fastact's kernels need
        # the former (numba.cuda.core is its own), the latter fails in them with a ModuleNotFoundError
        if importlib.util.find_spec("numba.cuda.core") is None:
            raise ImportError("numba.cuda.core")
        from numba import cuda
    except ImportError as e:
        raise RuntimeError("fastact.cuda needs the cuda extra (numba-cuda): pip install 'fastact[cuda]'") \
            from e
    return cuda


def status():
    """``(available, why)``: whether the kernels can run, and in words what runs them or what is missing
    (``python -m fastact info`` prints it).

    Examples
    --------
    >>> from fastact import cuda
    >>> ok, why = cuda.status()
    >>> ok == cuda.is_available() and isinstance(why, str)
    True
    """
    try:
        cuda = _import_cuda()
    except RuntimeError as exc:
        return False, str(exc)
    try:
        if not cuda.is_available():
            return False, "no NVIDIA GPU or driver was found"
    except Exception as exc:  # noqa: BLE001  (a broken driver raises its own errors: say what it said)
        return False, f"the CUDA driver failed: {exc}"
    from numba import config
    if getattr(config, "ENABLE_CUDASIM", False):
        return True, "on Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1: correct but slow, for tests)"
    try:
        name = cuda.get_current_device().name
        name = name.decode() if isinstance(name, bytes) else name  # bytes before numba-cuda 0.2x
    except Exception:  # noqa: BLE001  (the name is a courtesy)
        name = "an NVIDIA GPU"
    return True, f"on {name}"


def is_available():
    """True when numba-cuda is installed and a GPU (or Numba's CUDA simulator) can run kernels
    (:func:`status` says why not).

    Examples
    --------
    >>> from fastact import cuda
    >>> cuda.is_available() in (True, False)
    True
    """
    return status()[0]


def require():
    """``numba.cuda``, with the device math registered; RuntimeError saying why when it cannot run."""
    cuda = _import_cuda()
    if not cuda.is_available():
        raise RuntimeError("fastact.cuda: no usable CUDA GPU or driver; on a machine without one, set "
                           "NUMBA_ENABLE_CUDASIM=1 to run the kernels on Numba's simulator")
    _register_math()
    return cuda


_math_done = False


def _device_typer(prim, cuda_types, libdevice):
    """The CUDA overload of one primitive: its libdevice function (float32: the ``f`` variant), or its
    exact definition compiled for the device when libdevice has none (sigmoid)."""
    if prim.libdevice is None:
        exact = prim.exact
        return lambda x: exact
    f64 = getattr(libdevice, prim.libdevice)
    f32 = getattr(libdevice, prim.libdevice + "f")

    def typer(x):
        if x == cuda_types.float32:
            return lambda x: f32(x)
        return lambda x: f64(x)
    return typer


def _register_math():
    """Give the table's ``fm.*`` primitives CUDA implementations, once, from ``fastact._math.PRIMITIVES``.

    On the simulator the kernels run as Python and call the primitives' plain-Python definitions, so the
    registration is only needed (and only done) for real devices.
    """
    global _math_done
    if _math_done:
        return
    with lock:
        if _math_done:
            return
        from numba.cuda.core import config
        if not config.ENABLE_CUDASIM:
            from numba.cuda import libdevice
            from numba.cuda import types as cuda_types
            from numba.cuda.extending import overload
            for prim in fm.PRIMITIVES:
                overload(fm.stub(prim.name), target="cuda")(_device_typer(prim, cuda_types, libdevice))
        _math_done = True


# ------------------------------------------------------------------------------ compile helpers

def compile_source(fname, src, glb):
    """A generated kernel's Python function (see ``fastact._codegen``), ``cuda`` bound in its globals."""
    return _codegen.compile_source(fname, src, dict(glb, cuda=require(), int64=np.int64))


def kernel(fn, device=False, **glb):
    """Compile a module-level kernel body with ``cuda`` (and ``glb``) bound as globals: kernels must not
    close over variables, and the simulator swaps a kernel's ``cuda`` global for its fake module."""
    cuda = require()
    g = dict(fn.__globals__, cuda=cuda, **glb)
    f = types.FunctionType(fn.__code__, g, fn.__name__.lstrip("_"))
    return cuda.jit(device=True)(f) if device else cuda.jit(f)


def cached(key, build):
    """``built[key]``, made by ``build()`` on first use."""
    k = built.get(key)
    if k is None:
        with lock:
            k = built.get(key)
            if k is None:
                k = built[key] = build()
    return k


def _identity(x):
    return x


def _one(x):
    return 1.0


def scalar_fns(activation):
    """``(F, D, act)``: the activation's forward and derivative as CUDA device functions and its table
    entry; None is the identity (an unfused layer), with ``act`` None."""
    cuda = require()
    if activation is None:
        f, d = cached(("identity",), lambda: (cuda.jit(device=True)(_identity),
                                              cuda.jit(device=True)(_one)))
        return f, d, None
    act = _table.get(activation)
    f = cached(("device", act.forward), lambda: cuda.jit(device=True)(act.forward.py_func))
    d = cached(("device", act.derivative), lambda: cuda.jit(device=True)(act.derivative.py_func))
    return f, d, act


#: a CUDA grid-stride range over ``n`` items with 64-bit indices, the ``index`` of generated loops
GRID_STRIDE = "range(int64(cuda.grid(1)), {n}, int64(cuda.gridsize(1)))"


# ---------------------------------------------------------------------------------- array helpers

def as_device(a, name="array"):
    """``a`` as a C-contiguous float32/float64 Numba device array (zero-copy for
    ``__cuda_array_interface__`` objects); TypeError/ValueError naming ``name`` otherwise."""
    cuda = require()
    if hasattr(a, "copy_to_host") and hasattr(a, "is_c_contiguous"):
        arr = a  # a Numba device array (real, or the simulator's)
    elif hasattr(a, "__cuda_array_interface__") and hasattr(cuda, "as_cuda_array"):
        arr = cuda.as_cuda_array(a)  # CuPy, PyTorch, ...: a zero-copy view
    else:
        raise TypeError(f"{name} must be a device array (numba.cuda or __cuda_array_interface__), got "
                        f"{type(a).__name__}; copy host data with fastact.cuda.to_device(...)")
    if arr.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be float32 or float64, got {arr.dtype}")
    if not arr.is_c_contiguous():
        raise ValueError(f"{name} must be C-contiguous (shape {arr.shape}, strides {arr.strides})")
    return arr


def to_device(a, dtype=None):
    """Copy a host array to the GPU: C-contiguous, float32 unless it is float64 or ``dtype`` says.

    Examples
    --------
    >>> import numpy as np
    >>> from fastact import cuda
    >>> d = cuda.to_device(np.arange(3))            # doctest: +SKIP
    >>> d.dtype, d.copy_to_host()                   # doctest: +SKIP
    (dtype('float32'), array([0., 1., 2.], dtype=float32))
    """
    cuda = require()
    a = np.asarray(a)
    dt = np.dtype(dtype) if dtype is not None else (a.dtype if a.dtype == np.float64 else np.float32)
    return cuda.to_device(np.ascontiguousarray(a, dtype=dt))


def zeros(shape, dtype):
    """A zero-filled device array (written by a host copy: works on devices and the simulator alike)."""
    return require().to_device(np.zeros(shape, dtype=dtype))


def transposed(a):
    """The transpose of a 2-D device array as a view: numba-cuda's ``DeviceNDArray.T`` launches a
    kernel that copies, and the backward GEMMs only need the swapped strides (the simulator's ``.T``
    is a view already)."""
    from numba.cuda.core import config
    if config.ENABLE_CUDASIM:
        return a.T
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    return DeviceNDArray(shape=tuple(a.shape[::-1]), strides=tuple(a.strides[::-1]), dtype=a.dtype,
                         gpu_data=a.gpu_data)


def launch_1d(n):
    """``(blocks, threads)`` of a 1-D grid-stride launch over ``n`` items."""
    threads = setting("THREADS_PER_BLOCK")
    return max(1, min(setting("MAX_BLOCKS"), (n + threads - 1) // threads)), threads


def flat(a):
    """A C-contiguous device array viewed 1-D."""
    return a.reshape(a.size)


def same_dtype(where, **arrays):
    """TypeError naming the arrays when their dtypes differ."""
    dts = {n: a.dtype for n, a in arrays.items()}
    if len(set(dts.values())) > 1:
        raise TypeError(f"{where}: arrays must share one dtype, got "
                        + ", ".join(f"{n} {d}" for n, d in dts.items()))


def device_bias(where, bias, K, weight, x):
    """The layer's bias on the device, shape (K,) and x's dtype checked; zeros when None."""
    if bias is None:
        return zeros(K, x.dtype)
    b = as_device(bias, "bias")
    if b.shape != (K,):
        raise ValueError(f"{where}: bias must have shape ({K},) for weight of shape {weight.shape}, "
                         f"got {b.shape}")
    same_dtype(where, x=x, bias=b)
    return b


def device_preactivation(where, forward, activation, preactivation, dy):
    """``(z, dz)`` for a layer's backward: with an activation, the forward's preactivation on the device
    (shape and dtype checked against ``dy``) and an uninitialised ``dz`` of its shape; without one,
    ``(dy, None)`` (the identity's backward: dz is dy, only the bias sum runs)."""
    if activation is None:
        return dy, None
    if preactivation is None:
        raise ValueError(f"{where}: an activation needs the preactivation (the z of "
                         f"{forward}(..., return_preactivation=True))")
    z = as_device(preactivation, "preactivation")
    if tuple(z.shape) != tuple(dy.shape):
        raise ValueError(f"{where}: preactivation has shape {tuple(z.shape)}, but dy has {tuple(dy.shape)}")
    same_dtype(where, dy=dy, preactivation=z)
    return z, require().device_array(dy.shape, dtype=dy.dtype)
