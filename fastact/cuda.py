"""fastact on NVIDIA GPUs: ``@cuda.jit`` kernels compiled from the activation table's scalar functions.

Every activation's forward and backward, the bias + activation epilogue, im2col/col2im, a tiled
shared-memory GEMM and max-pooling are CUDA kernels built from the same Python definitions as the CPU
ufuncs (``fastact._table``; the table's ``fm.exp``/``fm.erfc``/... map to CUDA's libdevice here). On
top of them: ``conv2d`` (+ ``conv2d_backward``), ``max_pool2d`` (+ backward), ``linear``,
``cross_entropy``, and :class:`DeviceNet`, which runs a whole ``fastact.nn.Sequential`` (a VGG from
``fastact.models.vgg``) forward and backward on the device.

Inputs are Numba device arrays or any object exposing ``__cuda_array_interface__`` (CuPy, PyTorch);
results are Numba device arrays (``.copy_to_host()``, or ``torch.as_tensor(result, device='cuda')``).
All kernels use grid-stride loops with 64-bit indices. Without a GPU, set ``NUMBA_ENABLE_CUDASIM=1``
to run them on Numba's CUDA simulator (slow: for tests on small arrays).

Needs the ``cuda`` extra (``pip install 'fastact[cuda]'``, i.e. numba-cuda); without it, or without a GPU,
:func:`is_available` is False and every other function raises a ``RuntimeError`` that says why.
"""

import math
import threading
import types

import numpy as np

from . import _math as fm
from . import _table
from ._epilogue import param_values
from ._util import pair as _pair

__all__ = ["is_available", "to_device", "conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward",
           "linear", "matmul", "cross_entropy", "DeviceNet", "THREADS_PER_BLOCK", "MAX_BLOCKS", "TILE"]

#: threads per block of the 1-D kernels (a multiple of 32)
THREADS_PER_BLOCK = 256
#: upper bound on the blocks of a 1-D launch; the grid-stride loops cover any size beyond it
MAX_BLOCKS = 4096
#: GEMM tile edge (threads per block = TILE * TILE, shared memory = 2 * TILE^2 elements)
TILE = 16

_lock = threading.RLock()
_built = {}


def _import_cuda():
    try:
        from numba import cuda
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError("fastact.cuda needs numba-cuda: pip install 'fastact[cuda]'") from e
    return cuda


def is_available():
    """True when numba-cuda is installed and a GPU (or Numba's CUDA simulator) can run kernels."""
    try:
        cuda = _import_cuda()
        return bool(cuda.is_available())
    except Exception:
        return False


def _cuda():
    cuda = _import_cuda()
    if not cuda.is_available():
        raise RuntimeError("fastact.cuda: no usable CUDA GPU or driver; on a machine without one, set "
                           "NUMBA_ENABLE_CUDASIM=1 to run the kernels on Numba's simulator")
    _register_math()
    return cuda


# ------------------------------------------------------------------------------------ device math

_math_done = False


def _register_math():
    """Give the table's fm.* functions CUDA implementations (libdevice), once."""
    global _math_done
    if _math_done:
        return
    from numba.extending import overload

    @overload(fm.exp, target="cuda")
    def _exp(x):
        return lambda x: math.exp(x)

    @overload(fm.expm1, target="cuda")
    def _expm1(x):
        return lambda x: math.expm1(x)

    @overload(fm.log1p, target="cuda")
    def _log1p(x):
        return lambda x: math.log1p(x)

    @overload(fm.tanh, target="cuda")
    def _tanh(x):
        return lambda x: math.tanh(x)

    @overload(fm.erfc, target="cuda")
    def _erfc(x):
        return lambda x: math.erfc(x)

    @overload(fm.sigmoid, target="cuda")
    def _sigmoid(x):
        def impl(x):
            if x >= 0:
                return 1.0 / (1.0 + math.exp(-x))
            e = math.exp(x)
            return e / (1.0 + e)
        return impl

    _math_done = True


def _device_fn(fn):
    """A table scalar function as a CUDA device function."""
    cuda = _cuda()
    key = ("device", fn)
    dev = _built.get(key)
    if dev is None:
        dev = _built[key] = cuda.jit(device=True)(fn.py_func)
    return dev


def _identity(x):
    return x


def _one(x):
    return 1.0


def _scalar_fns(activation):
    """(forward, derivative, n forward params, n backward params) device functions; None = identity."""
    cuda = _cuda()
    if activation is None:
        key = ("identity",)
        if key not in _built:
            _built[key] = (cuda.jit(device=True)(_identity), cuda.jit(device=True)(_one))
        f, d = _built[key]
        return f, d, 0, 0
    act = _table.get(activation)
    return (_device_fn(act.forward), _device_fn(act.derivative), act.nparams, len(act.backward_params))


def _exec(fname, src, glb):
    from ._codegen import _compile_source
    return _compile_source(fname, src, glb)


# ---------------------------------------------------------------------------------- array helpers

def _as_device(a, name="array"):
    cuda = _cuda()
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
    """Copy a host array to the GPU (C-contiguous, float32 unless it is float64 or ``dtype`` says)."""
    cuda = _cuda()
    a = np.asarray(a)
    dt = np.dtype(dtype) if dtype is not None else (a.dtype if a.dtype == np.float64 else np.float32)
    return cuda.to_device(np.ascontiguousarray(a, dtype=dt))


def _launch_1d(n):
    blocks = max(1, min(MAX_BLOCKS, (n + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK))
    return blocks, THREADS_PER_BLOCK


def _flat(a):
    return a.reshape(a.size)


# ------------------------------------------------------------------------------ elementwise kernels

def _elementwise_kernel(name, backward):
    cuda = _cuda()
    act = _table.get(name)
    key = ("ew", act.name, backward)
    k = _built.get(key)
    if k is None:
        with _lock:
            k = _built.get(key)
            if k is None:
                f, d, npar, nb = _scalar_fns(act.name)
                p = [f"p{i}" for i in range(npar + (nb if backward else 0))]
                a = "".join(f", {v}" for v in p)
                fname = f"cuda_{act.name}_{'bwd' if backward else 'fwd'}"
                if backward:
                    src = (f"def {fname}(dy, x, dx{a}):\n"
                           f"    start = cuda.grid(1)\n"
                           f"    step = cuda.gridsize(1)\n"
                           f"    for i in range(int64(start), x.size, int64(step)):\n"
                           f"        dx[i] = dy[i] * D(x[i]{a})\n")
                else:
                    src = (f"def {fname}(x, y{a}):\n"
                           f"    start = cuda.grid(1)\n"
                           f"    step = cuda.gridsize(1)\n"
                           f"    for i in range(int64(start), x.size, int64(step)):\n"
                           f"        y[i] = F(x[i]{a})\n")
                py = _exec(fname, src, {"cuda": cuda, "F": f, "D": d, "int64": np.int64})
                k = _built[key] = cuda.jit(py)
    return k


def _apply(name, backward, arrays, kwargs):
    act = _table.get(name)
    specs = act.params + (act.backward_params if backward else ())
    unknown = set(kwargs) - {s.name for s in specs}
    if unknown:
        raise TypeError(f"{name}{'_backward' if backward else ''}: unexpected parameters {sorted(unknown)}")
    arrs = [_as_device(a, n) for a, n in zip(arrays, ("dy", "x") if backward else ("x",))]
    x = arrs[-1]
    if backward and arrs[0].shape != x.shape:
        raise ValueError(f"{name}_backward: dy has shape {arrs[0].shape} but x has shape {x.shape}")
    if backward and arrs[0].dtype != x.dtype:
        raise TypeError(f"{name}_backward: dy is {arrs[0].dtype} but x is {x.dtype}")
    pv = [x.dtype.type(s.to_float(kwargs.get(s.name, s.default))) for s in specs]
    cuda = _cuda()
    out = cuda.device_array(x.shape, dtype=x.dtype)
    if x.size:
        blocks, threads = _launch_1d(x.size)
        kern = _elementwise_kernel(name, backward)
        flat = [_flat(a) for a in arrs] + [_flat(out)]
        kern[blocks, threads](*flat, *pv)
    return out


def _publish(act):
    def fwd(x, **kwargs):
        return _apply(act.name, False, (x,), kwargs)

    def bwd(dy, x, **kwargs):
        return _apply(act.name, True, (dy, x), kwargs)

    fwd.__name__, bwd.__name__ = act.name, f"{act.name}_backward"
    fwd.__doc__ = (f"{act.name} on a device array: ``{act.formula}``. Keyword parameters as "
                   f"``fastact.{act.name}`` (scalars). Returns a new device array.")
    bwd.__doc__ = f"Gradient of :func:`{act.name}` on device arrays: ``dx = dy * f'(x)``."
    out = {act.name: fwd, f"{act.name}_backward": bwd}
    for alias in act.aliases:
        out[alias], out[f"{alias}_backward"] = fwd, bwd
    return out


for _act in _table.ACTIVATIONS.values():
    _fns = _publish(_act)
    globals().update(_fns)
    __all__.extend(_fns)


# ----------------------------------------------------------------------------------------- GEMM

# The _k_* functions are kernel bodies, not called directly: _kernel() compiles each with ``cuda`` (and
# ``T``, ``dev_argmax``, ``row_max`` where used) bound in a copy of this module's globals.

def _k_gemm(a, b, c, zero):
    # c (M, N) = a (M, K) @ b (K, N); any strides (transposed views included); T x T tiles of a and b
    # staged in shared memory, one output element per thread, accumulation in c's dtype
    sa = cuda.shared.array((T, T), dtype=c.dtype)
    sb = cuda.shared.array((T, T), dtype=c.dtype)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    M, K = a.shape
    N = b.shape[1]
    for bi in range(cuda.blockIdx.y, (M + T - 1) // T, cuda.gridDim.y):
        for bj in range(cuda.blockIdx.x, (N + T - 1) // T, cuda.gridDim.x):
            i = bi * T + ty
            j = bj * T + tx
            acc = zero
            for k0 in range(0, K, T):
                sa[ty, tx] = a[i, k0 + tx] if (i < M and k0 + tx < K) else zero
                sb[ty, tx] = b[k0 + ty, j] if (k0 + ty < K and j < N) else zero
                cuda.syncthreads()
                for kk in range(T):
                    acc += sa[ty, kk] * sb[kk, tx]
                cuda.syncthreads()
            if i < M and j < N:
                c[i, j] = acc


def _kernel(fn, device=False, **glb):
    """Compile a module-level kernel with ``cuda`` (and ``glb``) bound as globals: kernels must not
    close over variables, and the simulator swaps a kernel's ``cuda`` global for its fake module."""
    cuda = _cuda()
    g = dict(fn.__globals__, cuda=cuda, **glb)
    f = types.FunctionType(fn.__code__, g, fn.__name__.lstrip("_"))
    return cuda.jit(device=True)(f) if device else cuda.jit(f)


def _gemm_kernel():
    k = _built.get(("gemm", TILE))
    if k is None:
        k = _built[("gemm", TILE)] = _kernel(_k_gemm, T=TILE)
    return k


def matmul(a, b, out=None):
    """``a @ b`` for 2-D device arrays (views such as ``a.T`` allowed) with the tiled GEMM kernel."""
    cuda = _cuda()
    if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} do not fit")
    M, N = a.shape[0], b.shape[1]
    if a.dtype != b.dtype:
        raise TypeError(f"matmul: a is {a.dtype} but b is {b.dtype}")
    if out is not None and (tuple(out.shape) != (M, N) or out.dtype != a.dtype):
        raise ValueError(f"matmul: out must be ({M}, {N}) {a.dtype}, got {tuple(out.shape)} {out.dtype}")
    c = cuda.device_array((M, N), dtype=a.dtype) if out is None else out
    if M and N:
        grid = (min(MAX_BLOCKS, (N + TILE - 1) // TILE), min(MAX_BLOCKS, (M + TILE - 1) // TILE))
        _gemm_kernel()[grid, (TILE, TILE)](a, b, c, c.dtype.type(0))
    return c


# ----------------------------------------------------------------------- conv: im2col, epilogues

def _k_im2col(x, R, S, sh, sw, ph, pw, P, Q, col):
    # col (C*R*S, N*P*Q): col[(c, r, s), (n, p, q)] = x[n, c, p*sh - ph + r, q*sw - pw + s] or 0
    N, C, H, W = x.shape
    cols = col.shape[1]
    total = col.shape[0] * cols
    for t in range(np.int64(cuda.grid(1)), total, np.int64(cuda.gridsize(1))):
        row = t // cols
        j = t - row * cols
        c = row // (R * S)
        rs = row - c * (R * S)
        r = rs // S
        s = rs - r * S
        n = j // (P * Q)
        pq = j - n * (P * Q)
        p = pq // Q
        q = pq - p * Q
        h = p * sh - ph + r
        w = q * sw - pw + s
        col[row, j] = x[n, c, h, w] if (h >= 0 and h < H and w >= 0 and w < W) else 0.0

def _k_col2im(dcol, R, S, sh, sw, ph, pw, P, Q, dx):
    # the adjoint of im2col as a gather: each dx element sums the columns that read it (no atomics)
    N, C, H, W = dx.shape
    total = N * C * H * W
    for t in range(np.int64(cuda.grid(1)), total, np.int64(cuda.gridsize(1))):
        w = t % W
        h = (t // W) % H
        c = (t // (W * H)) % C
        n = t // (W * H * C)
        acc = 0.0
        for r in range(R):
            hp = h + ph - r
            if hp < 0 or hp % sh != 0:
                continue
            p = hp // sh
            if p >= P:
                continue
            for s in range(S):
                wq = w + pw - s
                if wq < 0 or wq % sw != 0:
                    continue
                q = wq // sw
                if q >= Q:
                    continue
                acc += dcol[(c * R + r) * S + s, (n * P + p) * Q + q]
        dx[n, c, h, w] = acc

def _k_bias_sum(dz, db):
    # db[k] = sum over n, p, q of dz (N, K, L): one thread per k
    N, K, L = dz.shape
    for k in range(np.int64(cuda.grid(1)), K, np.int64(cuda.gridsize(1))):
        acc = 0.0
        for n in range(N):
            for j in range(L):
                acc += dz[n, k, j]
        db[k] = acc

def _k_to_nkl(g, y):
    # g (K, N*L) -> y (N, K, L)
    N, K, L = y.shape
    total = N * K * L
    for t in range(np.int64(cuda.grid(1)), total, np.int64(cuda.gridsize(1))):
        j = t % L
        k = (t // L) % K
        n = t // (L * K)
        y[n, k, j] = g[k, n * L + j]

def _k_to_kl(dz, g):
    # dz (N, K, L) -> g (K, N*L)
    N, K, L = dz.shape
    total = N * K * L
    for t in range(np.int64(cuda.grid(1)), total, np.int64(cuda.gridsize(1))):
        j = t % L
        k = (t // L) % K
        n = t // (L * K)
        g[k, n * L + j] = dz[n, k, j]


def _conv_kernels():
    k = _built.get("conv")
    if k is None:
        k = _built["conv"] = {name: _kernel(fn) for name, fn in (
            ("im2col", _k_im2col), ("col2im", _k_col2im), ("bias_sum", _k_bias_sum),
            ("to_nkl", _k_to_nkl), ("to_kl", _k_to_kl))}
    return k


def _epilogue_kernel(activation, kind):
    """kind 'conv': y (N, K, L) = act(g (K, N*L) + b[k]), z kept when z.size; kind 'linear': y (N, K)
    = act(g (N, K) + b[k]); kind 'backward': dz = dy * act'(z) on flat arrays."""
    cuda = _cuda()
    name = None if activation is None else _table.get(activation).name
    key = ("epi", name, kind)
    k = _built.get(key)
    if k is not None:
        return k
    f, d, npar, nb = _scalar_fns(name)
    p = [f"p{i}" for i in range(npar + (nb if kind == "backward" else 0))]
    a = "".join(f", {v}" for v in p)
    fname = f"cuda_{kind}_epilogue_{name or 'identity'}"
    head = ("    start = int64(cuda.grid(1))\n"
            "    step = int64(cuda.gridsize(1))\n")
    if kind == "conv":
        src = (f"def {fname}(g, b, y, z{a}):\n" + head +
               f"    N, K, L = y.shape\n"
               f"    keep = z.size != 0\n"
               f"    for t in range(start, N * K * L, step):\n"
               f"        j = t % L\n"
               f"        k = (t // L) % K\n"
               f"        n = t // (L * K)\n"
               f"        v = g[k, n * L + j] + b[k]\n"
               f"        y[n, k, j] = F(v{a})\n"
               f"        if keep:\n"
               f"            z[n, k, j] = v\n")
    elif kind == "linear":
        src = (f"def {fname}(g, b, y, z{a}):\n" + head +
               f"    N, K = y.shape\n"
               f"    keep = z.size != 0\n"
               f"    for t in range(start, N * K, step):\n"
               f"        k = t % K\n"
               f"        n = t // K\n"
               f"        v = g[n, k] + b[k]\n"
               f"        y[n, k] = F(v{a})\n"
               f"        if keep:\n"
               f"            z[n, k] = v\n")
    else:
        src = (f"def {fname}(dy, z, dz{a}):\n" + head +
               f"    for t in range(start, z.size, step):\n"
               f"        dz[t] = dy[t] * D(z[t]{a})\n")
    py = _exec(fname, src, {"cuda": cuda, "F": f, "D": d, "int64": np.int64})
    k = _built[key] = cuda.jit(py)
    return k


def conv2d(x, weight, bias=None, stride=1, padding=0, *, activation=None, activation_params=None,
           return_z=False):
    """:func:`fastact.conv2d` on device arrays: im2col, the tiled GEMM, then bias + activation in the
    epilogue kernel that writes ``y``. ``return_z=True`` also returns the pre-activation (for
    :func:`conv2d_backward` with an activation)."""
    from .conv import conv_output_shape
    cuda = _cuda()
    x = _as_device(x, "x")
    w = _as_device(weight, "weight")
    N, K, P, Q = conv_output_shape(x.shape, w.shape, stride, padding)
    if w.dtype != x.dtype:
        raise TypeError(f"conv2d: x is {x.dtype} but weight is {w.dtype}")
    _, C, _, _ = x.shape
    _, _, R, S = w.shape
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    dt = x.dtype
    if bias is None:
        b = cuda.to_device(np.zeros(K, dtype=dt))
    else:
        b = _as_device(bias, "bias")
        if b.shape != (K,):
            raise ValueError(f"conv2d: bias must have shape ({K},) for weight of shape {w.shape}, "
                             f"got {b.shape}")
    pv = [dt.type(v) for v in param_values(activation, activation_params)]
    y = cuda.device_array((N, K, P, Q), dtype=dt)
    z = cuda.device_array((N, K, P, Q) if return_z else (0, 0, 0), dtype=dt)
    if N * P * Q:
        ks = _conv_kernels()
        col = cuda.device_array((C * R * S, N * P * Q), dtype=dt)
        blocks, threads = _launch_1d(col.size)
        ks["im2col"][blocks, threads](x, R, S, sh, sw, ph, pw, P, Q, col)
        g = matmul(w.reshape(K, C * R * S), col)
        blocks, threads = _launch_1d(y.size)
        zz = z.reshape(N, K, P * Q) if return_z else z
        _epilogue_kernel(activation, "conv")[blocks, threads](g, b, y.reshape(N, K, P * Q), zz, *pv)
    return (y, z) if return_z else y


def conv2d_backward(dy, x, weight, stride=1, padding=0, *, z=None, activation=None,
                    activation_params=None):
    """Gradients ``(dx, dweight, dbias)`` of :func:`conv2d`. Without ``activation``, ``dy`` is the
    gradient of the pre-activation; with it, pass the ``z`` from ``conv2d(..., return_z=True)`` and
    ``dz = dy * act'(z)`` is formed on the device first."""
    from .conv import conv_output_shape
    cuda = _cuda()
    x = _as_device(x, "x")
    w = _as_device(weight, "weight")
    dy = _as_device(dy, "dy")
    shape = conv_output_shape(x.shape, w.shape, stride, padding)
    if tuple(dy.shape) != shape:
        raise ValueError(f"conv2d_backward: dy has shape {tuple(dy.shape)}, but conv2d of x "
                         f"{tuple(x.shape)} with weight {tuple(w.shape)} gives {shape}")
    N, K, P, Q = shape
    _, C, H, W = x.shape
    _, _, R, S = w.shape
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    dt = x.dtype
    if activation is not None:
        if z is None:
            raise ValueError("conv2d_backward: an activation needs the pre-activation z")
        z = _as_device(z, "z")
        if tuple(z.shape) != shape or z.dtype != dt or dy.dtype != dt:
            raise ValueError(f"conv2d_backward: z {tuple(z.shape)} {z.dtype} and dy {tuple(dy.shape)} "
                             f"{dy.dtype} must both be {shape} {dt} (the conv output)")
        pv = [dt.type(v) for v in param_values(activation, activation_params, backward=True)]
        dz = cuda.device_array(shape, dtype=dt)
        blocks, threads = _launch_1d(dz.size)
        _epilogue_kernel(activation, "backward")[blocks, threads](_flat(dy), _flat(z), _flat(dz), *pv)
    else:
        dz = dy
    ks = _conv_kernels()
    db = cuda.device_array(K, dtype=dt)
    dx = cuda.device_array((N, C, H, W), dtype=dt)
    dw = cuda.device_array((K, C * R * S), dtype=dt)
    if N * P * Q == 0:
        db.copy_to_device(np.zeros(K, dt))
        dx.copy_to_device(np.zeros((N, C, H, W), dt))
        dw.copy_to_device(np.zeros((K, C * R * S), dt))
        return dx, dw.reshape(w.shape), db
    blocks, threads = _launch_1d(K)
    ks["bias_sum"][blocks, threads](dz.reshape(N, K, P * Q), db)
    g = cuda.device_array((K, N * P * Q), dtype=dt)
    blocks, threads = _launch_1d(g.size)
    ks["to_kl"][blocks, threads](dz.reshape(N, K, P * Q), g)
    col = cuda.device_array((C * R * S, N * P * Q), dtype=dt)
    blocks, threads = _launch_1d(col.size)
    ks["im2col"][blocks, threads](x, R, S, sh, sw, ph, pw, P, Q, col)
    matmul(g, col.T, out=dw)
    dcol = matmul(w.reshape(K, C * R * S).T, g)
    blocks, threads = _launch_1d(dx.size)
    ks["col2im"][blocks, threads](dcol, R, S, sh, sw, ph, pw, P, Q, dx)
    return dx, dw.reshape(w.shape), db


def linear(x, weight, bias=None, *, activation=None, activation_params=None):
    """:func:`fastact.linear` on device arrays: ``act(x @ weight.T + bias)`` for 2-D ``x``."""
    cuda = _cuda()
    x = _as_device(x, "x")
    w = _as_device(weight, "weight")
    if len(x.shape) != 2 or len(w.shape) != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"linear: x {tuple(x.shape)} and weight {tuple(w.shape)} do not fit "
                         f"(x must be (N, in_features), weight (out_features, in_features))")
    N, K = x.shape[0], w.shape[0]
    dt = x.dtype
    b = cuda.to_device(np.zeros(K, dt)) if bias is None else _as_device(bias, "bias")
    if b.shape != (K,):
        raise ValueError(f"linear: bias must have shape ({K},), got {b.shape}")
    pv = [dt.type(v) for v in param_values(activation, activation_params)]
    g = matmul(x, w.T)
    y = cuda.device_array((N, K), dtype=dt)
    if y.size:
        blocks, threads = _launch_1d(y.size)
        _epilogue_kernel(activation, "linear")[blocks, threads](
            g, b, y, cuda.device_array((0, 0), dtype=dt), *pv)
    return y


# ------------------------------------------------------------------------------------ max-pooling

def _k_pool_forward(x, kh, kw, sh, sw, ph, pw, y):
    N, C, P, Q = y.shape
    for t in range(np.int64(cuda.grid(1)), N * C * P * Q, np.int64(cuda.gridsize(1))):
        q = t % Q
        p = (t // Q) % P
        c = (t // (Q * P)) % C
        n = t // (Q * P * C)
        h, w = dev_argmax(x, n, c, p, q, kh, kw, sh, sw, ph, pw)
        y[n, c, p, q] = x[n, c, h, w] if h >= 0 else -math.inf

def _k_pool_backward(dy, x, kh, kw, sh, sw, ph, pw, dx):
    # dx zeroed by the caller; overlapping windows may add into one element: atomics
    N, C, P, Q = dy.shape
    for t in range(np.int64(cuda.grid(1)), N * C * P * Q, np.int64(cuda.gridsize(1))):
        q = t % Q
        p = (t // Q) % P
        c = (t // (Q * P)) % C
        n = t // (Q * P * C)
        h, w = dev_argmax(x, n, c, p, q, kh, kw, sh, sw, ph, pw)
        if h >= 0:
            cuda.atomic.add(dx, (n, c, h, w), dy[n, c, p, q])


def _pool_kernels():
    k = _built.get("pool")
    if k is None:
        from .pool import _argmax_window  # the CPU kernels' own definition, compiled for the device
        argmax = _kernel(_argmax_window.py_func, device=True)
        k = _built["pool"] = {"forward": _kernel(_k_pool_forward, dev_argmax=argmax),
                              "backward": _kernel(_k_pool_backward, dev_argmax=argmax)}
    return k


def _pool_args(x, kernel_size, stride, padding):
    from .pool import pool_output_shape
    shape = pool_output_shape(x.shape, kernel_size, stride, padding)
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(kernel_size if stride is None else stride, "stride")
    ph, pw = _pair(padding, "padding")
    return shape, (kh, kw, sh, sw, ph, pw)


def max_pool2d(x, kernel_size=2, stride=None, padding=0):
    """:func:`fastact.max_pool2d` on a device array (NaN propagates, ties go to the first maximum)."""
    cuda = _cuda()
    x = _as_device(x, "x")
    shape, a = _pool_args(x, kernel_size, stride, padding)
    y = cuda.device_array(shape, dtype=x.dtype)
    if y.size:
        blocks, threads = _launch_1d(y.size)
        _pool_kernels()["forward"][blocks, threads](x, *a, y)
    return y


def max_pool2d_backward(dy, x, kernel_size=2, stride=None, padding=0):
    """Gradient of :func:`max_pool2d`: each ``dy`` element goes to its window's first maximum."""
    cuda = _cuda()
    x = _as_device(x, "x")
    dy = _as_device(dy, "dy")
    shape, a = _pool_args(x, kernel_size, stride, padding)
    if tuple(dy.shape) != shape:
        raise ValueError(f"max_pool2d_backward: dy has shape {tuple(dy.shape)}, but pooling x of shape "
                         f"{tuple(x.shape)} gives {shape}")
    dx = cuda.to_device(np.zeros(x.shape, dtype=x.dtype))
    if dy.size:
        blocks, threads = _launch_1d(dy.size)
        _pool_kernels()["backward"][blocks, threads](dy, x, *a, dx)
    return dx


# ------------------------------------------------------------------------ losses and whole networks

def _k_cross_entropy(logits, target, scale, loss_rows, d):
    # one thread per row: loss_rows[i] = logsumexp(row) - row[t]; d = (softmax(row) - onehot) * scale
    N, C = logits.shape
    for i in range(np.int64(cuda.grid(1)), N, np.int64(cuda.gridsize(1))):
        m = row_max(logits[i])
        s = 0.0
        for j in range(C):
            s += math.exp(logits[i, j] - m)
        lse = m + math.log(s)
        t = target[i]
        loss_rows[i] = lse - logits[i, t]
        for j in range(C):
            p = math.exp(logits[i, j] - lse)
            d[i, j] = (p - (1.0 if j == t else 0.0)) * scale


def _k_col_sum(dz, db):
    # db[k] = sum over rows of dz (N, K): one thread per k
    N, K = dz.shape
    for k in range(np.int64(cuda.grid(1)), K, np.int64(cuda.gridsize(1))):
        acc = 0.0
        for n in range(N):
            acc += dz[n, k]
        db[k] = acc


def _misc_kernels():
    k = _built.get("misc")
    if k is None:
        from ._util import row_max as _row_max
        row_max = _kernel(_row_max.py_func, device=True)
        k = _built["misc"] = {"ce": _kernel(_k_cross_entropy, row_max=row_max),
                              "col_sum": _kernel(_k_col_sum)}
    return k


def cross_entropy(logits, target):
    """Mean cross-entropy of device logits (N, C) against integer labels: ``(loss, dlogits)``.

    ``target`` may be a host array (it is copied) or a device array of integers; labels outside
    ``[0, C)`` raise a ``ValueError`` (checked on the host copy).
    """
    cuda = _cuda()
    logits = _as_device(logits, "logits")
    if len(logits.shape) != 2:
        raise ValueError(f"cross_entropy: logits must be (N, C), got shape {tuple(logits.shape)}")
    N, C = logits.shape
    t = np.asarray(target.copy_to_host() if hasattr(target, "copy_to_host") else target)
    if t.shape != (N,) or t.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy: target must be {N} integer labels, got shape {t.shape}, "
                         f"dtype {t.dtype}")
    if N and (t.min() < 0 or t.max() >= C):
        raise ValueError(f"cross_entropy: labels must lie in [0, {C}), got {t.min()}..{t.max()}")
    rows = cuda.device_array(N, dtype=np.float64)
    d = cuda.device_array((N, C), dtype=logits.dtype)
    if N == 0:
        return float("nan"), d
    blocks, threads = _launch_1d(N)
    _misc_kernels()["ce"][blocks, threads](logits, cuda.to_device(t.astype(np.int64)),
                                          logits.dtype.type(1.0 / N), rows, d)
    return float(rows.copy_to_host().mean()), d


class DeviceNet:
    """A ``fastact.nn.Sequential`` (e.g. from ``fastact.models.vgg``) run forward and backward on the GPU.

    The parameters are copied to the device once (``sync_to_host()`` copies them back); ``forward``
    keeps what ``backward`` needs; ``backward(dlogits)`` returns the parameter gradients as device arrays
    keyed like ``state_dict()`` (PyTorch's names). A Conv2d followed by an activation runs fused (bias +
    activation in the GEMM epilogue, the activation's backward in front of the conv backward); a Linear's
    activation runs as its own kernel. Supported modules: Conv2d, Linear, MaxPool2d, Flatten and the table's activations.

    >>> net = DeviceNet(models.vgg([8, "M"], in_channels=1, input_size=8, hidden=(16,)))  # doctest: +SKIP
    >>> loss, dlogits = cross_entropy(net.forward(to_device(x)), y)                       # doctest: +SKIP
    >>> grads = net.backward(dlogits)                                                     # doctest: +SKIP
    """

    def __init__(self, model):
        from . import nn
        self.model = model
        self.params = {k: to_device(v, dtype=v.dtype) for k, v in model.state_dict().items()}
        self.plan = []
        mods = list(model)
        for i, j in model._plan():
            m = mods[i]
            act = None if j is None else mods[j]
            if not isinstance(m, (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.Flatten, nn.Activation)):
                raise TypeError(f"DeviceNet: module {i} ({type(m).__name__}) has no GPU implementation")
            self.plan.append((i, m, act))
        self._saved = None

    def _act(self, act):
        return (None, None) if act is None else (act.name, act.params)

    def forward(self, x):
        """Logits (device array) of the device batch ``x``; keeps the intermediates for backward."""
        from . import nn
        h = _as_device(x, "x")
        saved = []
        for i, m, act in self.plan:
            name, params = self._act(act)
            if isinstance(m, nn.Conv2d):
                b = self.params.get(f"{i}.bias")
                y, z = conv2d(h, self.params[f"{i}.weight"], b, m.stride, m.padding, activation=name,
                              activation_params=params, return_z=True)
                saved.append((h, z))
            elif isinstance(m, nn.Linear):
                b = self.params.get(f"{i}.bias")
                z = linear(h, self.params[f"{i}.weight"], b)
                y = z if name is None else globals()[_table.get(name).name](z, **_kw(name, params))
                saved.append((h, z))
            elif isinstance(m, nn.MaxPool2d):
                y = max_pool2d(h, m.kernel_size, m.stride, m.padding)
                saved.append((h, None))
            elif isinstance(m, nn.Flatten):
                y = h.reshape(h.shape[0], h.size // h.shape[0])
                saved.append((h.shape, None))
            else:  # a lone activation module
                y = globals()[_table.get(m.name).name](h, **_kw(m.name, m.params))
                saved.append((h, None))
            h = y
        self._saved = saved
        return h

    def backward(self, dy):
        """Parameter gradients ``{state_dict key: device array}`` from the gradient of the logits."""
        from . import nn
        if self._saved is None:
            raise RuntimeError("DeviceNet.backward: call forward first")
        cuda = _cuda()
        grads = {}
        dy = _as_device(dy, "dy")
        for (i, m, act), (inp, z) in zip(reversed(self.plan), reversed(self._saved)):
            name, params = self._act(act)
            if isinstance(m, nn.Conv2d):
                dx, dw, db = conv2d_backward(dy, inp, self.params[f"{i}.weight"], m.stride, m.padding,
                                             z=z, activation=name, activation_params=params)
                grads[f"{i}.weight"] = dw
                if f"{i}.bias" in self.params:
                    grads[f"{i}.bias"] = db
                dy = dx
            elif isinstance(m, nn.Linear):
                dz = dy if name is None else globals()[f"{_table.get(name).name}_backward"](
                    dy, z, **_kw(name, params))
                w = self.params[f"{i}.weight"]
                grads[f"{i}.weight"] = matmul(dz.T, inp)
                if f"{i}.bias" in self.params:
                    db = cuda.device_array(dz.shape[1], dtype=dz.dtype)
                    blocks, threads = _launch_1d(dz.shape[1])
                    _misc_kernels()["col_sum"][blocks, threads](dz, db)
                    grads[f"{i}.bias"] = db
                dy = matmul(dz, w)
            elif isinstance(m, nn.MaxPool2d):
                dy = max_pool2d_backward(dy, inp, m.kernel_size, m.stride, m.padding)
            elif isinstance(m, nn.Flatten):
                dy = dy.reshape(*inp)
            else:
                dy = globals()[f"{_table.get(m.name).name}_backward"](dy, inp, **_kw(m.name, m.params))
        return grads

    def sync_to_host(self):
        """Copy the device parameters back into the model (after updating them on the device)."""
        self.model.load_state_dict({k: v.copy_to_host() for k, v in self.params.items()})


def _kw(name, params):
    """An activation module's parameters as keyword arguments (a dict, a sequence or None)."""
    act = _table.get(name)
    if params is None:
        return {}
    if isinstance(params, dict):
        return dict(params)
    return {s.name: v for s, v in zip(act.params, params)}
