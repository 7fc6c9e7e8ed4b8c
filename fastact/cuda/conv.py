"""2-D convolution on device arrays: im2col, the tiled GEMM, then bias + activation in the epilogue
kernel that writes ``y``; the backward with the activation's backward fused with the bias sum.

Shape key: N batch, C input channels, H x W input, K output channels, R x S kernel, P x Q output,
L = P*Q. Layouts are PyTorch's: x (N, C, H, W), weight (K, C, R, S), y (N, K, P, Q).

Forward: im2col writes col (C*R*S, N*L); ``g = weight (K, C*R*S) @ col`` (K, N*L); the epilogue writes
``y = act(g + bias)`` in NCHW order (and the pre-activation when asked).
Backward: ``dz = dy * act'(z)`` and the bias gradient in one prologue pass; ``g = dz`` as (K, N*L);
``dweight = g @ col.T``; ``dcol = weight.T @ g`` and col2im gathers it into dx (each dx element sums
the columns that read it: no atomics).
"""

import numpy as np

from .._epilogue import param_values
from .._util import pair
from ..conv import conv_output_shape
from . import _epilogue
from ._device import (as_device, cached, device_bias, device_preactivation, kernel, launch_1d, require, same_dtype,
                      setting, transposed, zeros)
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


def _kernels():
    return cached("conv", lambda: {name: kernel(fn) for name, fn in (
        ("im2col", _k_im2col), ("col2im", _k_col2im), ("to_kl", _k_to_kl))})


def _geometry(x, w, stride, padding):
    if isinstance(padding, str):
        raise ValueError(f"fastact.cuda.conv2d: padding must be an int or a pair here, got {padding!r}")
    shape = conv_output_shape(x.shape, w.shape, stride, padding)
    sh, sw = pair(stride, "stride")
    ph, pw = pair(padding, "padding")
    return shape, (sh, sw, ph, pw)


def _im2col(x, R, S, geom, P, Q):
    N, C = x.shape[0], x.shape[1]
    col = require().device_array((C * R * S, N * P * Q), dtype=x.dtype)
    blocks, threads = launch_1d(col.size)
    _kernels()["im2col"][blocks, threads](x, R, S, *geom, P, Q, col)
    return col


def conv2d(x, weight, bias=None, stride=1, padding=0, *, activation=None, activation_params=None,
           return_preactivation=False):
    """:func:`fastact.conv2d` on device arrays, bias and activation fused into the GEMM's epilogue.

    Parameters
    ----------
    x : device array, shape (N, C, H, W), float32 or float64
    weight : device array, shape (K, C, R, S), of ``x``'s dtype
    bias : device array, shape (K,), optional
    stride, padding : int or (int, int)
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
    (N, K, P, Q), geom = _geometry(x, w, stride, padding)
    same_dtype("conv2d", x=x, weight=w)
    _, _, R, S = w.shape
    dt = x.dtype
    b = device_bias("conv2d", bias, K, w, x)
    pv = [dt.type(v) for v in param_values(activation, activation_params)]
    keep = return_preactivation and activation is not None
    y = cuda.device_array((N, K, P, Q), dtype=dt)
    z = cuda.device_array((N, K, P, Q) if keep else (0, 0, 0), dtype=dt)
    if N * P * Q:
        col = _im2col(x, R, S, geom, P, Q)
        g = matmul(w.reshape(K, w.size // K), col)
        blocks, threads = launch_1d(y.size)
        _epilogue.forward(activation, "conv")[blocks, threads](
            g, b, y.reshape(N, K, P * Q), z.reshape(N, K, P * Q) if keep else z, *pv)
    if not return_preactivation:
        return y
    return y, (z if keep else y)


def conv2d_backward(dy, x, weight, stride=1, padding=0, *, preactivation=None, activation=None,
                    activation_params=None, need_input_grad=True):
    """Gradients ``(dx, dweight, dbias)`` of :func:`conv2d` on device arrays.

    Parameters
    ----------
    dy : device array, shape (N, K, P, Q)
        Without ``activation``, the gradient of the conv's output (its pre-activation); with it, the
        gradient of the activation's output.
    x, weight, stride, padding
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
    dweight : device array, shape (K, C, R, S)
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
    shape, geom = _geometry(x, w, stride, padding)
    if tuple(dy.shape) != shape:
        raise ValueError(f"conv2d_backward: dy has shape {tuple(dy.shape)}, but conv2d of x "
                         f"{tuple(x.shape)} with weight {tuple(w.shape)} (stride {stride!r}, padding "
                         f"{padding!r}) gives {shape}")
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
    # the GEMMs: g = dz as (K, N*L)
    ks = _kernels()
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
