"""2-D max pooling, forward and backward (PyTorch semantics, floor mode).

Shape key: N batch, C channels, H x W input, kh x kw window, P x Q output. x (N, C, H, W), y (N, C, P, Q).
Padding is implicit -inf (a padded position never wins). NaN propagates: a window holding NaN gives NaN,
and its gradient goes to the first NaN. A tie sends the gradient to the first maximum in row-major order.
"""

import numpy as np

from . import _runtime
from ._util import compute_dtype as _compute_dtype
from ._util import argmax_window as _argmax_window
from ._util import pair as _pair

__all__ = ["max_pool2d", "max_pool2d_backward", "pool_output_shape"]


def pool_output_shape(x_shape, kernel_size=2, stride=None, padding=0):
    """(N, C, P, Q) of max_pool2d; ValueError naming the shapes when they don't fit."""
    if len(x_shape) != 4:
        raise ValueError(f"max_pool2d: x must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(kernel_size if stride is None else stride, "stride")
    ph, pw = _pair(padding, "padding")
    if kh < 1 or kw < 1:
        raise ValueError(f"max_pool2d: kernel_size must be >= 1, got {kernel_size!r}")
    if sh < 1 or sw < 1:
        raise ValueError(f"max_pool2d: stride must be >= 1, got {stride!r}")
    if ph < 0 or pw < 0 or 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"max_pool2d: padding must be between 0 and half the kernel size "
                         f"({kernel_size!r}), got {padding!r}")
    N, C, H, W = x_shape
    if kh > H + 2 * ph or kw > W + 2 * pw:
        raise ValueError(f"max_pool2d: window {kh}x{kw} is larger than the padded input "
                         f"{H + 2 * ph}x{W + 2 * pw} (x shape {tuple(x_shape)})")
    return N, C, (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1


@_runtime.jit(parallel=True)
def _max_pool_forward(x, kh, kw, sh, sw, ph, pw, y):
    # x (N, C, H, W) -> y (N, C, P, Q)
    N, C, P, Q = y.shape
    for nc in _runtime.prange(N * C):
        n = nc // C
        c = nc - n * C
        for p in range(P):
            for q in range(Q):
                h, w = _argmax_window(x, n, c, p, q, kh, kw, sh, sw, ph, pw)
                y[n, c, p, q] = x[n, c, h, w] if h >= 0 else -np.inf


@_runtime.jit()
def _pick(a, b):
    """max(a, b) keeping the first on ties and propagating NaN (the first NaN wins)."""
    return a if (a >= b) | (a != a) else b  # '|', not 'or': no branch, the loop stays vectorisable


@_runtime.jit(parallel=True)
def _max_pool_2x2_forward(x, y):
    # the VGG case (2x2 window, stride 2, no padding) without the window loops and bounds checks,
    # over 1-D row views (unit stride known to the compiler)
    N, C, P, Q = y.shape
    for ncp in _runtime.prange(N * C * P):
        nc = ncp // P
        p = ncp - nc * P
        n = nc // C
        c = nc - n * C
        r0 = x[n, c, 2 * p]
        r1 = x[n, c, 2 * p + 1]
        yr = y[n, c, p]
        for q in range(Q):
            m = _pick(_pick(r0[2 * q], r0[2 * q + 1]), r1[2 * q])
            yr[q] = _pick(m, r1[2 * q + 1])


@_runtime.jit(parallel=True)
def _max_pool_2x2_backward(dy, x, dx):
    # windows do not overlap: each dx element receives from at most one window
    N, C, P, Q = dy.shape
    for ncp in _runtime.prange(N * C * P):
        nc = ncp // P
        p = ncp - nc * P
        n = nc // C
        c = nc - n * C
        r0 = x[n, c, 2 * p]
        r1 = x[n, c, 2 * p + 1]
        d0 = dx[n, c, 2 * p]
        d1 = dx[n, c, 2 * p + 1]
        dyr = dy[n, c, p]
        for q in range(Q):
            a, b = r0[2 * q], r0[2 * q + 1]
            d, e = r1[2 * q], r1[2 * q + 1]
            m = _pick(_pick(_pick(a, b), d), e)
            g = dyr[q]
            # the first element equal to the maximum (or the first NaN) in row-major order; all
            # four are written, so dx needs no zeroing beyond the rows/columns no window covers.
            # Bitwise operators, not 'and'/'or': random data would mispredict every branch.
            nan = m != m
            ta = (a == m) | ((a != a) & nan)
            tb = (not ta) & ((b == m) | ((b != b) & nan))
            td = (not (ta | tb)) & ((d == m) | ((d != d) & nan))
            te = not (ta | tb | td)
            d0[2 * q] = g if ta else 0.0
            d0[2 * q + 1] = g if tb else 0.0
            d1[2 * q] = g if td else 0.0
            d1[2 * q + 1] = g if te else 0.0


def _is_2x2(a):
    return a == (2, 2, 2, 2, 0, 0)


@_runtime.jit(parallel=True)
def _max_pool_backward(dy, x, kh, kw, sh, sw, ph, pw, dx):
    # dy (N, C, P, Q), x and dx (N, C, H, W); dx zeroed by the caller, overlapping windows accumulate
    N, C, P, Q = dy.shape
    for nc in _runtime.prange(N * C):
        n = nc // C
        c = nc - n * C
        for p in range(P):
            for q in range(Q):
                h, w = _argmax_window(x, n, c, p, q, kh, kw, sh, sw, ph, pw)
                if h >= 0:
                    dx[n, c, h, w] += dy[n, c, p, q]


def _args(x, kernel_size, stride, padding):
    x = np.asarray(x)
    shape = pool_output_shape(x.shape, kernel_size, stride, padding)
    dt = _compute_dtype(x.dtype)
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(kernel_size if stride is None else stride, "stride")
    ph, pw = _pair(padding, "padding")
    return np.ascontiguousarray(x, dtype=dt), shape, (kh, kw, sh, sw, ph, pw)


def max_pool2d(x, kernel_size=2, stride=None, padding=0):
    """Max over ``kernel_size`` windows moved by ``stride`` (default: the kernel size).

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
    kernel_size, stride, padding : int or (int, int)

    Returns
    -------
    ndarray, shape (N, C, P, Q), ``P = (H + 2*ph - kh) // sh + 1``.

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> fa.max_pool2d(np.arange(16.0).reshape(1, 1, 4, 4))
    array([[[[ 5.,  7.],
             [13., 15.]]]])
    """
    xc, shape, a = _args(x, kernel_size, stride, padding)
    y = np.empty(shape, dtype=xc.dtype)
    if y.size:
        if _is_2x2(a):
            _max_pool_2x2_forward(xc, y)
        else:
            _max_pool_forward(xc, *a, y)
    return y


def max_pool2d_backward(dy, x, kernel_size=2, stride=None, padding=0):
    """Gradient of :func:`max_pool2d`: each ``dy`` element goes to its window's first maximum.

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> fa.max_pool2d_backward(np.array([[[[5.0]]]]), np.array([[[[1.0, 3.0], [2.0, 0.0]]]]))
    array([[[[0., 5.],
             [0., 0.]]]])
    """
    xc, shape, a = _args(x, kernel_size, stride, padding)
    dy = np.asarray(dy)
    if dy.shape != shape:
        raise ValueError(f"max_pool2d_backward: dy has shape {dy.shape}, but pooling x of shape "
                         f"{xc.shape} gives {shape}")
    dt = _compute_dtype(xc.dtype, dy.dtype)
    if dy.size and _is_2x2(a):
        dx = np.empty(xc.shape, dtype=dt)
        _max_pool_2x2_backward(np.ascontiguousarray(dy, dtype=dt), xc.astype(dt, copy=False), dx)
        dx[:, :, 2 * shape[2]:, :] = 0  # an odd last row / column belongs to no window
        dx[:, :, :, 2 * shape[3]:] = 0
        return dx
    dx = np.zeros(xc.shape, dtype=dt)
    if dy.size:
        _max_pool_backward(np.ascontiguousarray(dy, dtype=dt), xc.astype(dt, copy=False), *a, dx)
    return dx
