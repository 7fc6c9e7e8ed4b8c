"""2-D pooling, forward and backward (PyTorch semantics, floor mode): max, average and adaptive average.

Shape key: N batch, C channels, H x W input, kh x kw window, P x Q output. x (N, C, H, W), y (N, C, P, Q).

Max: padding is implicit -inf (a padded position never wins). NaN propagates: a window holding NaN
gives NaN, and its gradient goes to the first NaN. A tie sends the gradient to the first maximum in
row-major order.

Average: padding counts as zeros in the divisor (``count_include_pad=True``, PyTorch's default), so
every window divides by kh*kw. Adaptive average: output row p averages input rows
``[floor(p*H/P), ceil((p+1)*H/P))`` (bins may overlap or differ in size by one), columns likewise;
``output_size=1`` is the global average pool. Window sums are accumulated in float64.
All kernels run in parallel over the N*C images; a backward scatters within one image, so no two
threads write the same element.
"""

import numpy as np

from . import _runtime
from ._util import compute_dtype as _compute_dtype
from ._util import argmax_window as _argmax_window
from ._util import pair as _pair

__all__ = ["max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward", "adaptive_avg_pool2d",
           "adaptive_avg_pool2d_backward", "pool_output_shape", "adaptive_pool_output_shape"]


def pool_output_shape(x_shape, kernel_size=2, stride=None, padding=0, name="max_pool2d"):
    """(N, C, P, Q) of max_pool2d (and avg_pool2d); ValueError naming the shapes when they don't fit."""
    if len(x_shape) != 4:
        raise ValueError(f"{name}: x must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(kernel_size if stride is None else stride, "stride")
    ph, pw = _pair(padding, "padding")
    if kh < 1 or kw < 1:
        raise ValueError(f"{name}: kernel_size must be >= 1, got {kernel_size!r}")
    if sh < 1 or sw < 1:
        raise ValueError(f"{name}: stride must be >= 1, got {stride!r}")
    if ph < 0 or pw < 0 or 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"{name}: padding must be between 0 and half the kernel size "
                         f"({kernel_size!r}), got {padding!r}")
    N, C, H, W = x_shape
    if kh > H + 2 * ph or kw > W + 2 * pw:
        raise ValueError(f"{name}: window {kh}x{kw} is larger than the padded input "
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


def _args(x, kernel_size, stride, padding, name="max_pool2d"):
    x = np.asarray(x)
    shape = pool_output_shape(x.shape, kernel_size, stride, padding, name)
    dt = _compute_dtype(x.dtype)
    return np.ascontiguousarray(x, dtype=dt), shape, _window(kernel_size, stride, padding)


def _window(kernel_size, stride, padding):
    """(kh, kw, sh, sw, ph, pw) as ints (stride defaults to the kernel size)."""
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(kernel_size if stride is None else stride, "stride")
    ph, pw = _pair(padding, "padding")
    return kh, kw, sh, sw, ph, pw


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


# ------------------------------------------------------------------------------------ average pooling

@_runtime.jit(parallel=True)
def _avg_pool_forward(x, kh, kw, sh, sw, ph, pw, y):
    # x (N, C, H, W) -> y (N, C, P, Q): window sum (padding adds 0) / (kh * kw)
    N, C, H, W = x.shape
    _, _, P, Q = y.shape
    inv = 1.0 / (kh * kw)
    for nc in _runtime.prange(N * C):
        n = nc // C
        c = nc - n * C
        for p in range(P):
            h0 = max(p * sh - ph, 0)
            h1 = min(p * sh - ph + kh, H)
            for q in range(Q):
                w0 = max(q * sw - pw, 0)
                w1 = min(q * sw - pw + kw, W)
                s = 0.0
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        s += x[n, c, h, w]
                y[n, c, p, q] = s * inv


@_runtime.jit(parallel=True)
def _avg_pool_backward(dy, kh, kw, sh, sw, ph, pw, dx):
    # dy (N, C, P, Q) -> dx (N, C, H, W), zeroed by the caller; overlapping windows accumulate
    N, C, H, W = dx.shape
    _, _, P, Q = dy.shape
    inv = 1.0 / (kh * kw)
    for nc in _runtime.prange(N * C):
        n = nc // C
        c = nc - n * C
        for p in range(P):
            h0 = max(p * sh - ph, 0)
            h1 = min(p * sh - ph + kh, H)
            for q in range(Q):
                w0 = max(q * sw - pw, 0)
                w1 = min(q * sw - pw + kw, W)
                g = dy[n, c, p, q] * inv
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        dx[n, c, h, w] += g


def _x_shape(x, fn):
    """The forward input's shape from the input itself or from its shape (a tuple of 4 ints)."""
    if isinstance(x, tuple) and len(x) == 4 and all(isinstance(v, (int, np.integer)) for v in x):
        return tuple(int(v) for v in x)
    shape = np.shape(x)
    if len(shape) != 4:
        raise ValueError(f"{fn}: x must be 4-D (N, C, H, W), got shape {shape}")
    return shape


def _check_dy(dy, shape, x_shape, fn):
    dy = np.asarray(dy)
    if dy.shape != tuple(shape):
        raise ValueError(f"{fn}: dy has shape {dy.shape}, but pooling x of shape {tuple(x_shape)} "
                         f"gives {tuple(shape)}")
    return dy


def avg_pool2d(x, kernel_size=2, stride=None, padding=0):
    """Mean over ``kernel_size`` windows moved by ``stride`` (default: the kernel size), as
    ``torch.nn.functional.avg_pool2d`` with ``count_include_pad=True``: padded positions count as 0.

    ``y[n, c, p, q] = sum of x over the window / (kh * kw)``.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
    kernel_size, stride, padding : int or (int, int)
        Padding at most half the kernel.

    Returns
    -------
    ndarray, shape (N, C, P, Q), ``P = (H + 2*ph - kh) // sh + 1``.

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> fa.avg_pool2d(np.arange(16.0).reshape(1, 1, 4, 4))
    array([[[[ 2.5,  4.5],
             [10.5, 12.5]]]])
    """
    xc, shape, a = _args(x, kernel_size, stride, padding, "avg_pool2d")
    y = np.empty(shape, dtype=xc.dtype)
    if y.size:
        _avg_pool_forward(xc, *a, y)
    return y


def avg_pool2d_backward(dy, x, kernel_size=2, stride=None, padding=0):
    """Gradient of :func:`avg_pool2d`: each ``dy`` element spreads ``dy / (kh * kw)`` over its window.

    ``x`` is the forward's input or its shape (only the shape is used).

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> fa.avg_pool2d_backward(np.array([[[[4.0]]]]), (1, 1, 2, 2))
    array([[[[1., 1.],
             [1., 1.]]]])
    """
    fn = "avg_pool2d_backward"
    x_shape = _x_shape(x, fn)
    shape = pool_output_shape(x_shape, kernel_size, stride, padding, "avg_pool2d")
    dy = _check_dy(dy, shape, x_shape, fn)
    dt = _compute_dtype(dy.dtype, *([] if isinstance(x, tuple) else [np.asarray(x).dtype]))
    dx = np.zeros(x_shape, dtype=dt)
    if dy.size:
        _avg_pool_backward(np.ascontiguousarray(dy, dtype=dt), *_window(kernel_size, stride, padding), dx)
    return dx


# --------------------------------------------------------------------------- adaptive average pooling

def adaptive_pool_output_shape(x_shape, output_size):
    """(N, C, P, Q) of adaptive_avg_pool2d: ``output_size`` an int or a pair (None keeps that input
    size); ValueError naming the shapes otherwise."""
    if len(x_shape) != 4:
        raise ValueError(f"adaptive_avg_pool2d: x must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    N, C, H, W = x_shape
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise ValueError(f"adaptive_avg_pool2d: output_size must be an int or a pair, got "
                             f"{output_size!r}")
        ph, pw = output_size
    else:
        ph = pw = output_size
    ph = H if ph is None else ph
    pw = W if pw is None else pw
    P, Q = _pair((ph, pw), "output_size")
    if P < 1 or Q < 1:
        raise ValueError(f"adaptive_avg_pool2d: output_size must be >= 1, got {output_size!r}")
    if H < 1 or W < 1:
        raise ValueError(f"adaptive_avg_pool2d: x has an empty image (shape {tuple(x_shape)})")
    return N, C, P, Q


@_runtime.jit(parallel=True)
def _adaptive_forward(x, y):
    # x (N, C, H, W) -> y (N, C, P, Q); int64 bin edges: [p*H // P, ceil((p+1)*H / P))
    N, C, H, W = x.shape
    _, _, P, Q = y.shape
    for nc in _runtime.prange(N * C):
        n = nc // C
        c = nc - n * C
        for p in range(P):
            h0 = (p * H) // P
            h1 = ((p + 1) * H + P - 1) // P
            for q in range(Q):
                w0 = (q * W) // Q
                w1 = ((q + 1) * W + Q - 1) // Q
                s = 0.0
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        s += x[n, c, h, w]
                y[n, c, p, q] = s / ((h1 - h0) * (w1 - w0))


@_runtime.jit(parallel=True)
def _adaptive_backward(dy, dx):
    # dy (N, C, P, Q) -> dx (N, C, H, W), zeroed by the caller; overlapping bins accumulate
    N, C, H, W = dx.shape
    _, _, P, Q = dy.shape
    for nc in _runtime.prange(N * C):
        n = nc // C
        c = nc - n * C
        for p in range(P):
            h0 = (p * H) // P
            h1 = ((p + 1) * H + P - 1) // P
            for q in range(Q):
                w0 = (q * W) // Q
                w1 = ((q + 1) * W + Q - 1) // Q
                g = dy[n, c, p, q] / ((h1 - h0) * (w1 - w0))
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        dx[n, c, h, w] += g


def adaptive_avg_pool2d(x, output_size=1):
    """Mean over ``output_size`` bins, as ``torch.nn.functional.adaptive_avg_pool2d``.

    Output row p averages input rows ``floor(p*H/P)`` to ``ceil((p+1)*H/P) - 1`` (columns likewise),
    so bins cover the image even when P does not divide H.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
    output_size : int or (int or None, int or None)
        (P, Q); ``1`` is the global average pool, None keeps that dimension.

    Returns
    -------
    ndarray, shape (N, C, P, Q)

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> fa.adaptive_avg_pool2d(np.arange(6.0).reshape(1, 1, 2, 3), 1)
    array([[[[2.5]]]])
    >>> fa.adaptive_avg_pool2d(np.arange(3.0).reshape(1, 1, 1, 3), (1, 2))  # bins [0, 2), [1, 3)
    array([[[[0.5, 1.5]]]])
    """
    x = np.asarray(x)
    shape = adaptive_pool_output_shape(x.shape, output_size)
    xc = np.ascontiguousarray(x, dtype=_compute_dtype(x.dtype))
    y = np.empty(shape, dtype=xc.dtype)
    if y.size:
        _adaptive_forward(xc, y)
    return y


def adaptive_avg_pool2d_backward(dy, x, output_size=None):
    """Gradient of :func:`adaptive_avg_pool2d`: each ``dy`` element spreads evenly over its bin.

    ``x`` is the forward's input or its shape; ``output_size`` defaults to dy's (P, Q).

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> fa.adaptive_avg_pool2d_backward(np.array([[[[6.0]]]]), (1, 1, 2, 3))
    array([[[[1., 1., 1.],
             [1., 1., 1.]]]])
    """
    fn = "adaptive_avg_pool2d_backward"
    x_shape = _x_shape(x, fn)
    dy = np.asarray(dy)
    if output_size is None:
        if dy.ndim != 4:
            raise ValueError(f"{fn}: dy must be 4-D (N, C, P, Q), got shape {dy.shape}")
        output_size = dy.shape[2:]
    shape = adaptive_pool_output_shape(x_shape, output_size)
    dy = _check_dy(dy, shape, x_shape, fn)
    dt = _compute_dtype(dy.dtype, *([] if isinstance(x, tuple) else [np.asarray(x).dtype]))
    dx = np.zeros(x_shape, dtype=dt)
    if dy.size:
        _adaptive_backward(np.ascontiguousarray(dy, dtype=dt), dx)
    return dx
