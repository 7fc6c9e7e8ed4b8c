"""2-D pooling, forward and backward (PyTorch semantics, floor mode): max, average and adaptive average.

Shape key: N batch, C channels, H x W input, kh x kw window, P x Q output. x (N, C, H, W), y (N, C, P, Q).

Max: padding is implicit -inf (a padded position never wins). NaN propagates: a window holding NaN
gives NaN, and its gradient goes to the first NaN. A tie sends the gradient to the first maximum in
row-major order.
``max_pool2d(..., return_indices=True)`` also returns, per output, the window-local position of the
element it picked, ``i * kw + j`` for window row i and column j (uint8 for windows of up to 255
positions, int32 beyond); ``max_pool2d_backward(..., indices=)`` then zeroes dx and adds each ``dy``
element at that position instead of searching the windows again (:func:`max_pool2d_flat_indices`
turns them into PyTorch's flat int64 ``h * W + w``).

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
from ._util import pool_window

__all__ = ["max_pool2d", "max_pool2d_backward", "max_pool2d_flat_indices", "pool_index_dtype", "avg_pool2d", "avg_pool2d_backward", "adaptive_avg_pool2d",
           "adaptive_avg_pool2d_backward", "pool_output_shape", "adaptive_pool_output_shape"]


def pool_output_shape(x_shape, kernel_size=2, stride=None, padding=0, name="max_pool2d"):
    """(N, C, P, Q) of max_pool2d (and avg_pool2d); ValueError naming the shapes when they don't fit."""
    if len(x_shape) != 4:
        raise ValueError(f"{name}: x must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    kh, kw, sh, sw, ph, pw = pool_window(kernel_size, stride, padding)
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


def pool_index_dtype(kernel_size):
    """dtype of :func:`max_pool2d`'s window-local indices for this window: uint8 when the window has
    at most 255 positions (every usual pool: 2x2 has 4), int32 beyond.

    >>> from fastact.pool import pool_index_dtype
    >>> pool_index_dtype(2), pool_index_dtype((15, 17)), pool_index_dtype(16)  # 4, 255, 256 positions
    (dtype('uint8'), dtype('uint8'), dtype('int32'))
    """
    kh, kw = _pair(kernel_size, "kernel_size")
    return np.dtype(np.uint8) if kh * kw <= 255 else np.dtype(np.int32)


@_runtime.jit(parallel=True)
def _max_pool_forward_indices(x, kh, kw, sh, sw, ph, pw, y, idx):
    # x (N, C, H, W) -> y, idx (N, C, P, Q); idx = i * kw + j, the winner's row and column in its
    # window (argmax_window picks it: the one rule of every pooling kernel); an empty idx: y only.
    # Every window holds an input element (padding <= half the window), so h >= 0 always; the guard
    # keeps an all-padding window at -inf all the same.
    N, C, P, Q = y.shape
    keep = idx.size != 0
    for nc in _runtime.prange(N * C):
        n = nc // C
        c = nc - n * C
        for p in range(P):
            for q in range(Q):
                h, w = _argmax_window(x, n, c, p, q, kh, kw, sh, sw, ph, pw)
                y[n, c, p, q] = x[n, c, h, w] if h >= 0 else -np.inf
                if keep:
                    idx[n, c, p, q] = (h - (p * sh - ph)) * kw + (w - (q * sw - pw)) if h >= 0 else 0


_NO_INDICES = np.empty((0, 0, 0, 0), dtype=np.uint8)


def _max_pool_forward(x, kh, kw, sh, sw, ph, pw, y):
    """y (N, C, P, Q) of any window, without the indices."""
    _max_pool_forward_indices(x, kh, kw, sh, sw, ph, pw, y, _NO_INDICES)


def _max_pool_backward(dy, x, kh, kw, sh, sw, ph, pw, dx):
    """dx (zeroed by the caller) from x, for any window: the forward's winners, then the scatter of
    the backward from indices (one definition of the winner, as the 2x2 path)."""
    idx = np.empty(dy.shape, dtype=np.int32)
    _max_pool_forward_indices(x, kh, kw, sh, sw, ph, pw, np.empty(dy.shape, dtype=x.dtype), idx)
    _max_pool_backward_indices(dy, idx, kh, kw, sh, sw, ph, pw, dx)


@_runtime.jit(parallel=True)
def _max_pool_backward_indices(dy, idx, kh, kw, sh, sw, ph, pw, dx):
    # dy, idx (N, C, P, Q) -> dx (N, C, H, W), zeroed by the caller; overlapping windows accumulate.
    # Returns how many indices point outside their window or into the padding (nothing is written
    # for them: the caller raises), so that a wrong array can never write out of bounds.
    N, C, P, Q = dy.shape
    H, W = dx.shape[2], dx.shape[3]
    bad = 0
    for nc in _runtime.prange(N * C):
        n = nc // C
        c = nc - n * C
        nbad = 0
        for p in range(P):
            for q in range(Q):
                k = np.int64(idx[n, c, p, q])
                i = k // kw
                h = p * sh - ph + i
                w = q * sw - pw + (k - i * kw)
                if 0 <= k < kh * kw and 0 <= h < H and 0 <= w < W:
                    dx[n, c, h, w] += dy[n, c, p, q]
                else:
                    nbad += 1
        bad += nbad
    return bad


@_runtime.jit()
def _pick(a, b):
    """max(a, b) keeping the first on ties and propagating NaN (the first NaN wins)."""
    return a if (a >= b) | (a != a) else b  # '|', not 'or': no branch, the loop stays vectorisable


# The 2x2 fast paths (the VGG case: 2x2 window, stride 2, no padding) without the window loops and
# bounds checks, over 1-D row views (unit stride known to the compiler): the forward, the forward that
# also records the indices, and the backward from the indices (the backward without indices runs the
# second, then the third: one definition of the winner, and faster than searching again).

@_runtime.jit(parallel=True)
def _max_pool_2x2_forward(x, y):
    # x (N, C, H, W) -> y (N, C, P, Q), P = H // 2, Q = W // 2
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
def _max_pool_2x2_forward_indices(x, y, idx):
    # x (N, C, H, W) -> y, idx (N, C, P, Q); idx 0..3 = a, b (row 2p), d, e (row 2p + 1).
    # A running maximum in row-major order with _pick's rule (ties keep the first, a NaN once met
    # stays): each step is a compare and two selects, which vectorise, not a branch. Flat offsets
    # rather than row views: four views per output row cost 3x the whole kernel.
    N, C, P, Q = y.shape
    H, W = x.shape[2], x.shape[3]
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    idf = idx.reshape(-1)
    for ncp in _runtime.prange(N * C * P):
        nc = ncp // P
        p = ncp - nc * P
        o0 = nc * H * W + 2 * p * W
        o1 = o0 + W
        oy = ncp * Q
        for q in range(Q):
            m = xf[o0 + 2 * q]
            b = xf[o0 + 2 * q + 1]
            t = (m >= b) | (m != m)
            m = m if t else b
            k = 0 if t else 1
            d = xf[o1 + 2 * q]
            t = (m >= d) | (m != m)
            m = m if t else d
            k = k if t else 2
            e = xf[o1 + 2 * q + 1]
            t = (m >= e) | (m != m)
            yf[oy + q] = m if t else e
            idf[oy + q] = k if t else 3


@_runtime.jit(parallel=True)
def _max_pool_2x2_backward_indices(dy, idx, dx):
    # dy, idx (N, C, P, Q) -> dx (N, C, H, W), over one flat image at a time (it sits in L1): zeroed
    # in one contiguous sweep, then one store per output at row 2p + k // 2, column 2q + k % 2
    # (windows do not overlap: a store, not an add). Four selected stores per window after four
    # compares (stride 2: they do not vectorise) measured 3-6x slower. The bits
    # of k are masked, so a wrong index (> 3) stays inside its image; it is counted (the caller
    # raises) instead of branched on.
    N, C, P, Q = dy.shape
    H, W = dx.shape[2], dx.shape[3]
    dxf = dx.reshape(N * C, H * W)
    dyf = dy.reshape(N * C, P * Q)
    idf = idx.reshape(N * C, P * Q)
    bad = 0
    for nc in _runtime.prange(N * C):
        d = dxf[nc]
        g = dyf[nc]
        ii = idf[nc]
        for t in range(H * W):
            d[t] = 0.0
        nbad = 0
        for p in range(P):
            for q in range(Q):
                k = np.int64(ii[p * Q + q])
                nbad += k > 3
                d[(2 * p + ((k >> 1) & 1)) * W + 2 * q + (k & 1)] = g[p * Q + q]
        bad += nbad
    return bad


def _is_2x2(a):
    return a == (2, 2, 2, 2, 0, 0)


def _args(x, kernel_size, stride, padding, name="max_pool2d"):
    x = np.asarray(x)
    shape = pool_output_shape(x.shape, kernel_size, stride, padding, name)
    dt = _compute_dtype(x.dtype)
    return np.ascontiguousarray(x, dtype=dt), shape, pool_window(kernel_size, stride, padding)


def max_pool2d(x, kernel_size=2, stride=None, padding=0, *, return_indices=False):
    """Max over ``kernel_size`` windows moved by ``stride`` (default: the kernel size).

    ``y[n, c, p, q] = max x[n, c, p*sh - ph + i, q*sw - pw + j]`` over ``0 <= i < kh``, ``0 <= j < kw``;
    padding is -inf (never wins), a NaN in the window gives NaN.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
    kernel_size, stride, padding : int or (int, int)
    return_indices : bool, optional
        Also return where each maximum is, for :func:`max_pool2d_backward` (``indices=``).

    Returns
    -------
    y : ndarray, shape (N, C, P, Q), ``P = (H + 2*ph - kh) // sh + 1``.
    indices : ndarray, shape (N, C, P, Q), only with ``return_indices``
        The window-local position ``i * kw + j`` of the element each window picked: the first
        maximum in row-major order, or the first NaN. dtype ``fastact.pool.pool_index_dtype`` (uint8
        up to 255 window positions, int32 beyond). PyTorch's flat ``h * W + w`` (int64):
        ``fastact.pool.max_pool2d_flat_indices``.

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> fa.max_pool2d(np.arange(16.0).reshape(1, 1, 4, 4))
    array([[[[ 5.,  7.],
             [13., 15.]]]])
    >>> y, idx = fa.max_pool2d(np.array([[[[1.0, 3.0], [3.0, 0.0]]]]), return_indices=True)
    >>> y, idx  # the first 3 in row-major order: row 0, column 1
    (array([[[[3.]]]]), array([[[[1]]]], dtype=uint8))
    """
    xc, shape, a = _args(x, kernel_size, stride, padding)
    y = np.empty(shape, dtype=xc.dtype)
    if not return_indices:
        if y.size:
            if _is_2x2(a):
                _max_pool_2x2_forward(xc, y)
            else:
                _max_pool_forward(xc, *a, y)
        return y
    idx = np.empty(shape, dtype=pool_index_dtype(kernel_size))
    if y.size:
        if _is_2x2(a):
            _max_pool_2x2_forward_indices(xc, y, idx)
        else:
            _max_pool_forward_indices(xc, *a, y, idx)
    return y, idx


def _check_indices(indices, shape, x_shape, kernel_size, fn):
    """``indices`` as the contiguous array :func:`max_pool2d` returned for this pooling, or ValueError
    naming the shapes / dtypes."""
    indices = np.asarray(indices)
    if indices.shape != tuple(shape):
        raise ValueError(f"{fn}: indices has shape {indices.shape}, but pooling x of shape "
                         f"{tuple(x_shape)} gives {tuple(shape)}")
    want = pool_index_dtype(kernel_size)
    if indices.dtype != want:
        raise ValueError(f"{fn}: indices has dtype {indices.dtype}, but max_pool2d(..., return_indices=True) "
                         f"gives {want} for a {kernel_size!r} window (window-local positions; PyTorch's "
                         f"flat int64 indices are not accepted)")
    return np.ascontiguousarray(indices)


def max_pool2d_backward(dy, x, kernel_size=2, stride=None, padding=0, *, indices=None):
    """Gradient of :func:`max_pool2d`: each ``dy`` element goes to its window's first maximum.

    ``dx[n, c, h, w] = sum of dy[n, c, p, q]`` over the windows (p, q) that picked (h, w): one window
    at most unless the stride is below the window (then overlapping windows add, as PyTorch).

    Parameters
    ----------
    dy : array_like, shape (N, C, P, Q)
    x : array_like, shape (N, C, H, W), or its shape (a tuple of 4 ints) when ``indices`` is given
        The forward's input.
    kernel_size, stride, padding : int or (int, int)
        As given to :func:`max_pool2d`.
    indices : ndarray, shape (N, C, P, Q), optional
        The forward's ``return_indices`` output: dx is zeroed and each ``dy`` element stored at its
        window's recorded position, without reading x (the same dx, bit for bit, as without it, and
        several times faster). ValueError if it has another shape or dtype, or holds a position
        outside its window or in the padding. None: the windows are searched again in x.

    Returns
    -------
    ndarray, shape (N, C, H, W)

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> x = np.array([[[[1.0, 3.0], [2.0, 0.0]]]])
    >>> fa.max_pool2d_backward(np.array([[[[5.0]]]]), x)
    array([[[[0., 5.],
             [0., 0.]]]])
    >>> y, idx = fa.max_pool2d(x, return_indices=True)
    >>> fa.max_pool2d_backward(np.array([[[[5.0]]]]), x.shape, indices=idx)
    array([[[[0., 5.],
             [0., 0.]]]])
    """
    fn = "max_pool2d_backward"
    if indices is not None:
        x_shape = _x_shape(x, fn)
        shape = pool_output_shape(x_shape, kernel_size, stride, padding, "max_pool2d")
        dy = _check_dy(dy, shape, x_shape, fn)
        idx = _check_indices(indices, shape, x_shape, kernel_size, fn)
        dt = _grad_dtype(dy, x)
        dyc = np.ascontiguousarray(dy, dtype=dt)
        a = pool_window(kernel_size, stride, padding)
        if dy.size and _is_2x2(a):
            dx = np.empty(x_shape, dtype=dt)
            bad = _max_pool_2x2_backward_indices(dyc, idx, dx)  # zeroes dx itself
        else:
            dx = np.zeros(x_shape, dtype=dt)
            bad = _max_pool_backward_indices(dyc, idx, *a, dx) if dy.size else 0
        if bad:
            raise ValueError(f"{fn}: {bad} of the indices (shape {idx.shape}) point outside their "
                             f"{a[0]}x{a[1]} window or into the padding: not max_pool2d's indices for "
                             f"x of shape {tuple(x_shape)}")
        return dx
    xc, shape, a = _args(x, kernel_size, stride, padding)
    dy = _check_dy(dy, shape, xc.shape, fn)
    dt = _compute_dtype(xc.dtype, dy.dtype)  # the winner is found in x's own dtype, as the forward
    if dy.size and _is_2x2(a):
        idx = np.empty(shape, dtype=np.uint8)
        _max_pool_2x2_forward_indices(xc, np.empty(shape, dtype=xc.dtype), idx)
        dx = np.empty(xc.shape, dtype=dt)
        _max_pool_2x2_backward_indices(np.ascontiguousarray(dy, dtype=dt), idx, dx)
        return dx
    dx = np.zeros(xc.shape, dtype=dt)
    if dy.size:
        _max_pool_backward(np.ascontiguousarray(dy, dtype=dt), xc.astype(dt, copy=False), *a, dx)
    return dx


def max_pool2d_flat_indices(indices, x, kernel_size=2, stride=None, padding=0):
    """PyTorch's max-pool indices from :func:`max_pool2d`'s window-local ones: the flat position
    ``h * W + w`` of each maximum in its (H, W) image, int64, as ``F.max_pool2d(..., return_indices=True)``.

    ``h = p*sh - ph + idx // kw``, ``w = q*sw - pw + idx % kw``. ``x`` is the forward's input or its shape.

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> y, idx = fa.max_pool2d(x, return_indices=True)
    >>> fa.pool.max_pool2d_flat_indices(idx, x.shape)
    array([[[[ 5,  7],
             [13, 15]]]])
    """
    fn = "max_pool2d_flat_indices"
    x_shape = _x_shape(x, fn)
    shape = pool_output_shape(x_shape, kernel_size, stride, padding, "max_pool2d")
    idx = _check_indices(indices, shape, x_shape, kernel_size, fn).astype(np.int64)
    kh, kw, sh, sw, ph, pw = pool_window(kernel_size, stride, padding)
    i, j = np.divmod(idx, kw)
    h = (np.arange(shape[2], dtype=np.int64) * sh - ph)[:, None] + i
    w = np.arange(shape[3], dtype=np.int64) * sw - pw + j
    return h * x_shape[3] + w


# ------------------------------------------------------------------------------------ average pooling

@_runtime.jit()
def _window_span(p, s, pad, k, H):
    """[start, stop) of output p's window along one axis of length H, clipped to the input (the
    padding adds 0): one definition for the average pool's forward and backward (inlined by LLVM)."""
    return max(p * s - pad, 0), min(p * s - pad + k, H)


@_runtime.jit()
def _bin_span(p, H, P):
    """[floor(p*H/P), ceil((p+1)*H/P)): adaptive bin p of P along an axis of length H (int64)."""
    return (p * H) // P, ((p + 1) * H + P - 1) // P


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
            h0, h1 = _window_span(p, sh, ph, kh, H)
            for q in range(Q):
                w0, w1 = _window_span(q, sw, pw, kw, W)
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
            h0, h1 = _window_span(p, sh, ph, kh, H)
            for q in range(Q):
                w0, w1 = _window_span(q, sw, pw, kw, W)
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


def _grad_dtype(dy, x):
    """The dtype dx is computed in: dy's and x's (x given as its shape adds nothing)."""
    return _compute_dtype(dy.dtype, *([] if isinstance(x, tuple) else [np.asarray(x).dtype]))


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
    dt = _grad_dtype(dy, x)
    dx = np.zeros(x_shape, dtype=dt)
    if dy.size:
        _avg_pool_backward(np.ascontiguousarray(dy, dtype=dt), *pool_window(kernel_size, stride, padding), dx)
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
            h0, h1 = _bin_span(p, H, P)
            for q in range(Q):
                w0, w1 = _bin_span(q, W, Q)
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
            h0, h1 = _bin_span(p, H, P)
            for q in range(Q):
                w0, w1 = _bin_span(q, W, Q)
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
    dt = _grad_dtype(dy, x)
    dx = np.zeros(x_shape, dtype=dt)
    if dy.size:
        _adaptive_backward(np.ascontiguousarray(dy, dtype=dt), dx)
    return dx
