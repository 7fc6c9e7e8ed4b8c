"""2-D convolution on device arrays: im2col, the tiled GEMM, then bias + activation in the epilogue
kernel that writes ``y``; the backward with the activation's backward fused with the bias sum.

Shape key: N batch, C input channels, H x W input, K output channels, R x S kernel, P x Q output,
L = P*Q. Layouts are PyTorch's: x (N, C, H, W), weight (K, C, R, S), y (N, K, P, Q).

Forward: im2col writes col (C*R*S, N*L); ``g = weight (K, C*R*S) @ col`` (K, N*L); the epilogue writes
``y = act(g + bias)`` in NCHW order (and the pre-activation when asked).
Backward: ``dz = dy * act'(z)`` and the bias gradient in one prologue pass; ``g = dz`` as (K, N*L);
``dweight = g @ col.T``; ``dcol = weight.T @ g`` and col2im gathers it into dx (each dx element sums
the columns that read it: no atomics).

Groups, dilation and uneven padding (``'same'`` with an even kernel) take direct kernels instead, with
the geometry and its errors from :func:`fastact.conv.conv_geometry` (weight (K, C // G, R, S), G
groups, output channel k reading the input channels of its group ``k // (K // G)``):

* forward: one thread per output element sums its group's ``C // G * R * S`` taps (one channel's
  ``R * S`` for a depthwise convolution), then adds the bias and applies the activation;
* dweight: one block per weight element, its threads striding over the ``N * P * Q`` outputs and
  reducing in shared memory;
* dx: one thread per input element gathers the ``K // G`` output channels of its group over the taps
  that read it (no atomics).
"""

import numpy as np

from .. import _codegen
from .._epilogue import param_values
from ..conv import _is_plain, conv_geometry
from . import _epilogue
from ._device import (GRID_STRIDE, as_device, cached, compile_source, device_bias, device_preactivation, kernel,
                      launch_1d, require, same_dtype, scalar_fns, setting, transposed, zeros)
from .gemm import matmul

__all__ = ["conv2d", "conv2d_backward"]


# The _k_* functions are kernel bodies, not called directly: _kernels() compiles each with ``cuda``
# bound in a copy of this module's globals.

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
    # the adjoint of im2col as a gather: each dx (N, C, H, W) element sums the columns that read it
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


def _k_to_kl(dz, g):
    # dz (N, K, L) -> g (K, N*L): the GEMM operand of the backward
    N, K, L = dz.shape
    total = N * K * L
    for t in range(np.int64(cuda.grid(1)), total, np.int64(cuda.gridsize(1))):
        j = t % L
        k = (t // L) % K
        n = t // (L * K)
        g[k, n * L + j] = dz[n, k, j]


# The direct kernels of groups, dilation and uneven padding. Geometry: (sh, sw) stride, (pt, pl) the top
# and left padding (the bottom and right only show in the output's size P x Q), (dh, dv) dilation, G
# groups; weight (K, Cg, R, S) with Cg = C // G input channels per group, Kg = K // G output channels
# per group.

def _direct_forward_src(fname, p):
    # one thread per output element (n, k, op, oq), oq fastest: neighbouring threads read neighbouring
    # inputs and the same weights
    fv = _codegen.element(False, p, i="", x="v")  # F(v, *p)
    return (f"def {fname}(x, w, b, y, z, sh, sw, pt, pl, dh, dv, G, zero{_codegen.args(p)}):\n"
            f"    N, C, H, W = x.shape\n"
            f"    K, Cg, R, S = w.shape\n"
            f"    P = y.shape[2]\n"
            f"    Q = y.shape[3]\n"
            f"    Kg = K // G\n"
            f"    keep = z.size != 0\n"
            f"    for t in {GRID_STRIDE.format(n='N * K * P * Q')}:\n"
            f"        oq = t % Q\n"
            f"        op = (t // Q) % P\n"
            f"        k = (t // (Q * P)) % K\n"
            f"        n = t // (Q * P * K)\n"
            f"        c0 = (k // Kg) * Cg\n"
            f"        h0 = op * sh - pt\n"
            f"        u0 = oq * sw - pl\n"
            f"        acc = zero\n"
            f"        for c in range(Cg):\n"
            f"            for r in range(R):\n"
            f"                h = h0 + r * dh\n"
            f"                if h >= 0 and h < H:\n"
            f"                    for s in range(S):\n"
            f"                        u = u0 + s * dv\n"
            f"                        if u >= 0 and u < W:\n"
            f"                            acc += x[n, c0 + c, h, u] * w[k, c, r, s]\n"
            f"        v = acc + b[k]\n"
            f"        y[n, k, op, oq] = {fv}\n"
            f"        if keep:\n"
            f"            z[n, k, op, oq] = v\n")


def _direct_forward(activation):
    """The direct forward kernel of ``activation`` (a table name or None), bias + activation fused."""
    f, _, act = scalar_fns(activation)
    name = act.name if act is not None else "identity"

    def build():
        fname = f"cuda_conv_direct_{name}"
        src = _direct_forward_src(fname, _codegen.param_names(act))
        return require().jit(compile_source(fname, src, {"F": f}))
    return cached(("conv_direct", name), build)


def _k_direct_dweight(dz, x, sh, sw, pt, pl, dh, dv, G, zero, dwt):
    # dwt (K, Cg, R, S): one block per element (grid-strided); its NT threads stride over the N*P*Q
    # outputs (oq fastest: coalesced) and their partial sums are reduced in shared memory
    acc = cuda.shared.array(NT, dtype=dwt.dtype)
    tid = cuda.threadIdx.x
    N, K, P, Q = dz.shape
    H, W = x.shape[2], x.shape[3]
    Cg, R, S = dwt.shape[1], dwt.shape[2], dwt.shape[3]
    Kg = K // G
    PQ = P * Q
    for e in range(np.int64(cuda.blockIdx.x), K * Cg * R * S, np.int64(cuda.gridDim.x)):
        s = e % S
        r = (e // S) % R
        c = (e // (S * R)) % Cg
        k = e // (S * R * Cg)
        ci = (k // Kg) * Cg + c
        hr = r * dh - pt
        us = s * dv - pl
        part = zero
        for j in range(np.int64(tid), N * PQ, np.int64(NT)):
            n = j // PQ
            pq = j - n * PQ
            op = pq // Q
            oq = pq - op * Q
            h = op * sh + hr
            u = oq * sw + us
            if h >= 0 and h < H and u >= 0 and u < W:
                part += dz[n, k, op, oq] * x[n, ci, h, u]
        acc[tid] = part
        cuda.syncthreads()
        # tree reduction; HALF is half the power of two >= NT, so any block size works
        m = HALF
        while m > 0:
            if tid < m and tid + m < NT:
                acc[tid] += acc[tid + m]
            cuda.syncthreads()
            m //= 2
        if tid == 0:
            dwt[k, c, r, s] = acc[0]
        cuda.syncthreads()  # acc is reused by the block's next element


def _k_direct_dx(dz, w, sh, sw, pt, pl, dh, dv, G, zero, dx):
    # one thread per dx (N, C, H, W) element: it gathers dz * w over the taps (r, s) that read it and
    # the Kg output channels of its group
    N, C, H, W = dx.shape
    K, Cg, R, S = w.shape
    P, Q = dz.shape[2], dz.shape[3]
    Kg = K // G
    for t in range(np.int64(cuda.grid(1)), N * C * H * W, np.int64(cuda.gridsize(1))):
        u = t % W
        h = (t // W) % H
        ci = (t // (W * H)) % C
        n = t // (W * H * C)
        g = ci // Cg
        c = ci - g * Cg
        acc = zero
        for r in range(R):
            hp = h + pt - r * dh
            if hp < 0 or hp % sh != 0:
                continue
            op = hp // sh
            if op >= P:
                continue
            for s in range(S):
                uq = u + pl - s * dv
                if uq < 0 or uq % sw != 0:
                    continue
                oq = uq // sw
                if oq >= Q:
                    continue
                for kk in range(Kg):
                    k = g * Kg + kk
                    acc += dz[n, k, op, oq] * w[k, c, r, s]
        dx[n, ci, h, u] = acc


def _direct_dweight():
    """The dweight kernel, built for ``THREADS_PER_BLOCK`` threads (launch it with that many)."""
    nt = setting("THREADS_PER_BLOCK")
    half = 1
    while 2 * half < nt:
        half *= 2
    return nt, cached(("conv_direct_dweight", nt),
                      lambda: kernel(_k_direct_dweight, NT=nt, HALF=half if nt > 1 else 0))


def _kernels():
    return cached("conv", lambda: {name: kernel(fn) for name, fn in (
        ("im2col", _k_im2col), ("col2im", _k_col2im), ("to_kl", _k_to_kl), ("direct_dx", _k_direct_dx))})


def _geometry(x, w, stride, padding, dilation, groups):
    """``(shape, geom, general)``: conv_geometry's output shape; the im2col path's ``(sh, sw, ph, pw)``,
    or, for ``general`` (groups, dilation or uneven padding: the direct kernels), ``(sh, sw, top, left,
    dh, dw, groups)``."""
    shape, (sh, sw), pads, (dh, dw), groups = conv_geometry(x.shape, w.shape, stride, padding, dilation,
                                                            groups)
    if _is_plain(pads, (dh, dw), groups):
        return shape, (sh, sw, pads[0], pads[2]), False
    return shape, (sh, sw, pads[0], pads[2], dh, dw, groups), True


def _im2col(x, R, S, geom, P, Q):
    N, C = x.shape[0], x.shape[1]
    col = require().device_array((C * R * S, N * P * Q), dtype=x.dtype)
    blocks, threads = launch_1d(col.size)
    _kernels()["im2col"][blocks, threads](x, R, S, *geom, P, Q, col)
    return col


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None,
           activation_params=None, return_preactivation=False):
    """:func:`fastact.conv2d` on device arrays, bias and activation fused into the GEMM's epilogue.

    Parameters
    ----------
    x : device array, shape (N, C, H, W), float32 or float64
    weight : device array, shape (K, C // groups, R, S), of ``x``'s dtype
    bias : device array, shape (K,), optional
    stride : int or (int, int)
    padding : int, (int, int), 'same' or 'valid'
        As :func:`fastact.conv2d`: ``'same'`` (stride 1 only) puts the odd row and column of an even
        total padding at the bottom and right.
    dilation : int or (int, int)
    groups : int
        C and K must be divisible by it; ``groups == C`` is a depthwise convolution.
    activation : str, optional
        Any elementwise activation of the table, applied in the pass that writes ``y``.
    activation_params : dict or sequence, optional
        The activation's parameters (scalars).
    return_preactivation : bool
        Also return the pre-activation ``z = conv + bias`` (what :func:`conv2d_backward` needs with
        an activation); ``z`` is ``y`` itself when there is no activation.

    Returns
    -------
    y : device array, shape (N, K, P, Q)
    z : device array, shape (N, K, P, Q)
        Only with ``return_preactivation=True``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastact import cuda
    >>> x = cuda.to_device(np.ones((1, 1, 3, 3))); w = cuda.to_device(np.ones((2, 1, 2, 2)))  # doctest: +SKIP
    >>> b = cuda.to_device(np.array([0.0, -5.0]))                                              # doctest: +SKIP
    >>> cuda.conv2d(x, w, b, activation="relu").copy_to_host()[:, :, 0, 0]                    # doctest: +SKIP
    array([[4., 0.]])
    """
    cuda = require()
    x = as_device(x, "x")
    w = as_device(weight, "weight")
    (N, K, P, Q), geom, general = _geometry(x, w, stride, padding, dilation, groups)
    same_dtype("conv2d", x=x, weight=w)
    _, _, R, S = w.shape
    dt = x.dtype
    b = device_bias("conv2d", bias, K, w, x)
    pv = [dt.type(v) for v in param_values(activation, activation_params)]
    keep = return_preactivation and activation is not None
    y = cuda.device_array((N, K, P, Q), dtype=dt)
    z = cuda.device_array((N, K, P, Q) if keep else (0,) * (4 if general else 3), dtype=dt)
    if general and y.size:
        blocks, threads = launch_1d(y.size)
        _direct_forward(activation)[blocks, threads](x, w, b, y, z, *geom, dt.type(0), *pv)
    elif not general and y.size:
        col = _im2col(x, R, S, geom, P, Q)
        g = matmul(w.reshape(K, w.size // K), col)
        blocks, threads = launch_1d(y.size)
        _epilogue.forward(activation, "conv")[blocks, threads](
            g, b, y.reshape(N, K, P * Q), z.reshape(N, K, P * Q) if keep else z, *pv)
    if not return_preactivation:
        return y
    return y, (z if keep else y)


def conv2d_backward(dy, x, weight, stride=1, padding=0, dilation=1, groups=1, *, preactivation=None,
                    activation=None, activation_params=None, need_input_grad=True):
    """Gradients ``(dx, dweight, dbias)`` of :func:`conv2d` on device arrays.

    Parameters
    ----------
    dy : device array, shape (N, K, P, Q)
        Without ``activation``, the gradient of the conv's output (its pre-activation); with it, the
        gradient of the activation's output.
    x, weight, stride, padding, dilation, groups
        As given to :func:`conv2d`.
    preactivation : device array, shape (N, K, P, Q)
        The ``z`` of ``conv2d(..., return_preactivation=True)``; required with ``activation``.
    activation : str, optional
        The activation :func:`conv2d` fused; its backward ``dz = dy * act'(z)`` runs in the same pass
        that sums the bias gradient.
    activation_params : dict or sequence, optional
        Its parameters, backward ones (``subgradient``) included.
    need_input_grad : bool
        False skips the input gradient (a network's first layer) and returns ``dx=None``.

    Returns
    -------
    dx : device array, shape (N, C, H, W), or None
    dweight : device array, shape (K, C // groups, R, S)
    dbias : device array, shape (K,)

    Examples
    --------
    >>> import numpy as np
    >>> from fastact import cuda
    >>> x = cuda.to_device(np.arange(9.0).reshape(1, 1, 3, 3)); w = cuda.to_device(np.ones((1, 1, 2, 2)))  # doctest: +SKIP
    >>> dx, dw, db = cuda.conv2d_backward(cuda.to_device(np.ones((1, 1, 2, 2))), x, w)  # doctest: +SKIP
    >>> db.copy_to_host()                                                              # doctest: +SKIP
    array([4.])
    """
    cuda = require()
    x = as_device(x, "x")
    w = as_device(weight, "weight")
    dy = as_device(dy, "dy")
    shape, geom, general = _geometry(x, w, stride, padding, dilation, groups)
    if tuple(dy.shape) != shape:
        raise ValueError(f"conv2d_backward: dy has shape {tuple(dy.shape)}, but conv2d of x "
                         f"{tuple(x.shape)} with weight {tuple(w.shape)} (stride {stride!r}, padding "
                         f"{padding!r}, dilation {dilation!r}, groups {groups!r}) gives {shape}")
    same_dtype("conv2d_backward", dy=dy, x=x, weight=w)
    N, K, P, Q = shape
    _, C, H, W = x.shape
    _, _, R, S = w.shape
    L = P * Q
    dt = x.dtype
    pv = [dt.type(v) for v in param_values(activation, activation_params, backward=True)]
    z, dz = device_preactivation("conv2d_backward", "conv2d", activation, preactivation, dy)
    if N * L == 0:
        return (zeros((N, C, H, W), dt) if need_input_grad else None), zeros(w.shape, dt), zeros(K, dt)
    # dz and the bias gradient in one pass: per (n, k) row sums, then their sum over n
    part = cuda.device_array((N, K), dtype=np.float64)
    rows = min(setting("MAX_BLOCKS"), N * K)
    _epilogue.backward(activation, "rows")[rows, setting("THREADS_PER_BLOCK")](
        dy.reshape(N, K, L), z.reshape(N, K, L),
        cuda.device_array((0, 0, 0), dtype=dt) if dz is None else dz.reshape(N, K, L), part, *pv)
    dz = dy if dz is None else dz
    db = cuda.device_array(K, dtype=dt)
    blocks, threads = launch_1d(K)
    _epilogue.col_sum()[blocks, threads](part, db)
    ks = _kernels()
    if general:
        zero = dt.type(0)
        dw = cuda.device_array(w.shape, dtype=dt)
        if dw.size:
            nt, kern = _direct_dweight()
            kern[min(setting("MAX_BLOCKS"), dw.size), nt](dz, x, *geom, zero, dw)
        dx = None
        if need_input_grad:
            dx = cuda.device_array((N, C, H, W), dtype=dt)
            if dx.size:
                blocks, threads = launch_1d(dx.size)
                ks["direct_dx"][blocks, threads](dz, w, *geom, zero, dx)
        return dx, dw, db
    # the GEMMs: g = dz as (K, N*L)
    g = cuda.device_array((K, N * L), dtype=dt)
    blocks, threads = launch_1d(g.size)
    ks["to_kl"][blocks, threads](dz.reshape(N, K, L), g)
    col = _im2col(x, R, S, geom, P, Q)
    dw = matmul(g, transposed(col))
    dx = None
    if need_input_grad:
        dcol = matmul(transposed(w.reshape(K, C * R * S)), g)
        dx = cuda.device_array((N, C, H, W), dtype=dt)
        blocks, threads = launch_1d(dx.size)
        ks["col2im"][blocks, threads](dcol, R, S, *geom, P, Q, dx)
    return dx, dw.reshape(w.shape), db
