"""2-D pooling, forward and backward (PyTorch semantics): max, average and adaptive average.

Shape key: N batch, C channels, H x W input, kh x kw window, P x Q output. x (N, C, H, W), y (N, C, P, Q);
an unbatched x (C, H, W) runs as N = 1 and gives (C, P, Q), as PyTorch.

Window pools take PyTorch's options: ``stride`` (default: the kernel size), ``padding`` (at most half
the kernel), ``ceil_mode`` (round the output size up; the last window must start inside the input or
its top/left padding, PyTorch's ``pooling_output_shape``), and ``dilation`` for max pooling.

Max: padding is implicit -inf (a padded position never wins). NaN propagates: a window holding NaN
gives NaN, and its gradient goes to the first NaN. A tie sends the gradient to the first maximum in
row-major order.
``max_pool2d(..., return_indices=True)`` also returns, per output, PyTorch's flat int64 index
``h * W + w`` of the element it picked; ``return_indices='window'`` returns the compact window-local
position ``i * kw + j`` instead (window row i and column j; uint8 for windows of up to 255 positions,
int32 beyond), what ``nn.MaxPool2d`` keeps. ``max_pool2d_backward(..., indices=)`` takes either (by
dtype), zeroes dx and adds each ``dy`` element at that position instead of searching the windows
again; from the window form, the 2x2 path stores one image at a time.

Average: padding counts as zeros in the divisor (``count_include_pad=True``, PyTorch's default), so
every window divides by kh*kw; with ``ceil_mode`` a window past the padded input divides by its part
up to the padded edge, with ``count_include_pad=False`` by its input elements only, and
``divisor_override`` replaces the divisor. Adaptive average: output row p averages input rows
``[floor(p*H/P), ceil((p+1)*H/P))`` (bins may overlap or differ in size by one), columns likewise;
``output_size=1`` is the global average pool. Window sums are accumulated in float64.
All kernels run in parallel over the N*C images; a backward scatters within one image, so no two
threads write the same element. Index arithmetic is int64.
"""

import numpy as np

from . import _runtime
from ._util import compute_dtype as _compute_dtype
from ._util import argmax_window as _argmax_window
from ._util import pair as _pair
from ._util import pool_window

__all__ = ["max_pool2d", "max_pool2d_backward", "max_pool2d_flat_indices", "pool_index_dtype", "avg_pool2d", "avg_pool2d_backward", "adaptive_avg_pool2d",
           "adaptive_avg_pool2d_backward", "pool_output_shape", "adaptive_pool_output_shape"]


def _flag(v, name, fn):
    """``v`` as a bool (True/False, NumPy's bools, 0 or 1); TypeError naming it otherwise."""
    if isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and v in (0, 1)):
        return bool(v)
    raise TypeError(f"{fn}: {name} must be a bool, got {v!r}")


def _out_size(n, k, s, pad, d, ceil):
    """PyTorch's ``pooling_output_shape``: windows of effective size ``d*(k-1)+1``; with ``ceil`` the
    last window may run past the padded input but must start inside the input or the left padding."""
    num = n + 2 * pad - d * (k - 1) - 1 + (s - 1 if ceil else 0)
    out = num // s + 1
    if ceil and (out - 1) * s >= n + pad:
        out -= 1
    return out


def _batch_dims(x_shape, name):
    """(squeeze, 4-D shape): ``x_shape`` (N, C, H, W), or an unbatched (C, H, W) with N = 1."""
    if len(x_shape) == 4:
        return False, tuple(x_shape)
    if len(x_shape) == 3:
        return True, (1,) + tuple(x_shape)
    raise ValueError(f"{name}: x must be 4-D (N, C, H, W) or 3-D (C, H, W), got shape {tuple(x_shape)}")


def _geometry(x_shape, kernel_size, stride, padding, dilation, ceil_mode, name):
    """((N, C, P, Q), (kh, kw, sh, sw, ph, pw), (dh, dw)) of a window pool of the 4-D ``x_shape``, with
    PyTorch's checks; ValueError naming the shapes and values."""
    N, C, H, W = x_shape
    kh, kw, sh, sw, ph, pw = pool_window(kernel_size, stride, padding)
    dh, dw = (1, 1) if type(dilation) is int and dilation == 1 else _pair(dilation, "dilation")
    if kh < 1 or kw < 1:
        raise ValueError(f"{name}: kernel_size must be >= 1, got {kernel_size!r}")
    if sh < 1 or sw < 1:
        raise ValueError(f"{name}: stride must be >= 1, got {stride!r}")
    if dh < 1 or dw < 1:
        raise ValueError(f"{name}: dilation must be >= 1, got {dilation!r}")
    if ph < 0 or pw < 0 or 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"{name}: padding must be between 0 and half the kernel size "
                         f"({kernel_size!r}), got {padding!r}")
    if ceil_mode is False and dh == 1 and dw == 1:  # the common case, without the calls
        P = (H + 2 * ph - kh) // sh + 1
        Q = (W + 2 * pw - kw) // sw + 1
    else:
        ceil = _flag(ceil_mode, "ceil_mode", name)
        P = _out_size(H, kh, sh, ph, dh, ceil)
        Q = _out_size(W, kw, sw, pw, dw, ceil)
    if P < 1 or Q < 1:
        eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
        what = f"window {kh}x{kw}" + ("" if (dh, dw) == (1, 1) else f" (dilation {dh}x{dw}: it spans {eh}x{ew})")
        raise ValueError(f"{name}: {what} is larger than the padded input {H + 2 * ph}x{W + 2 * pw} "
                         f"(x shape {tuple(x_shape)})")
    return (N, C, P, Q), (kh, kw, sh, sw, ph, pw), (dh, dw)


def pool_output_shape(x_shape, kernel_size=2, stride=None, padding=0, name="max_pool2d", *, dilation=1,
                      ceil_mode=False):
    """(N, C, P, Q) of max_pool2d (and avg_pool2d), (C, P, Q) for an unbatched (C, H, W); ValueError
    naming the shapes when they don't fit.

    ``P = (H + 2*ph - dh*(kh - 1) - 1) // sh + 1``, rounded up instead with ``ceil_mode`` as long as
    the last window starts inside the input or its top padding (PyTorch's rule); Q likewise.

    >>> from fastact.pool import pool_output_shape
    >>> pool_output_shape((1, 3, 7, 9), 2), pool_output_shape((3, 7, 9), 2, ceil_mode=True)
    ((1, 3, 3, 4), (3, 4, 5))
    """
    squeeze, shape4 = _batch_dims(x_shape, name)
    shape = _geometry(shape4, kernel_size, stride, padding, dilation, ceil_mode, name)[0]
    return shape[1:] if squeeze else shape


def pool_index_dtype(kernel_size):
    """dtype of :func:`max_pool2d`'s window-local indices for this window: uint8 when the window has
    at most 255 positions (every usual pool: 2x2 has 4), int32 beyond.

    >>> from fastact.pool import pool_index_dtype
    >>> pool_index_dtype(2), pool_index_dtype((15, 17)), pool_index_dtype(16)  # 4, 255, 256 positions
    (dtype('uint8'), dtype('uint8'), dtype('int32'))
    """
    kh, kw = _pair(kernel_size, "kernel_size")
    return _UINT8 if kh * kw <= 255 else _INT32


_UINT8, _INT32 = np.dtype(np.uint8), np.dtype(np.int32)


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
_INT64 = np.dtype(np.int64)


def _max_pool_forward(x, kh, kw, sh, sw, ph, pw, y):
    """y (N, C, P, Q) of any window, without the indices."""
    _max_pool_forward_indices(x, kh, kw, sh, sw, ph, pw, y, _NO_INDICES)


@_runtime.jit(parallel=True)
def _max_pool_dilated_forward_indices(x, kh, kw, sh, sw, ph, pw, dh, dw, y, idx):
    # x (N, C, H, W) -> y, idx (N, C, P, Q) for dilated windows: row i of a window is input row
    # p*sh - ph + i*dh. argmax_window's rule (the first maximum in row-major order, or the first NaN);
    # idx = i * kw + j, or kh * kw for a window that holds no input element (it can, with a dilation
    # that steps over the whole input: y is -inf there and no gradient flows).
    N, C, P, Q = y.shape
    H, W = x.shape[2], x.shape[3]
    keep = idx.size != 0
    for nc in _runtime.prange(N * C):
        n = nc // C
        c = nc - n * C
        for p in range(P):
            h0 = p * sh - ph
            for q in range(Q):
                w0 = q * sw - pw
                best = -np.inf
                bk = -1
                for i in range(kh):
                    h = h0 + i * dh
                    if h < 0 or h >= H:
                        continue
                    for j in range(kw):
                        w = w0 + j * dw
                        if w < 0 or w >= W:
                            continue
                        v = x[n, c, h, w]
                        if bk < 0 or v > best or (v != v and best == best):
                            best = v
                            bk = i * kw + j
                y[n, c, p, q] = best
                if keep:
                    idx[n, c, p, q] = bk if bk >= 0 else kh * kw


def _max_pool_backward(dy, x, kh, kw, sh, sw, ph, pw, dx, dh=1, dw=1):
    """dx (zeroed by the caller) from x, for any window: the forward's winners, then the scatter of
    the backward from indices (one definition of the winner, as the 2x2 path)."""
    idx = np.empty(dy.shape, dtype=np.int32)
    y = np.empty(dy.shape, dtype=x.dtype)
    if (dh, dw) == (1, 1):
        _max_pool_forward_indices(x, kh, kw, sh, sw, ph, pw, y, idx)
        _max_pool_backward_indices(dy, idx, kh, kw, sh, sw, ph, pw, dx)
    else:
        _max_pool_dilated_forward_indices(x, kh, kw, sh, sw, ph, pw, dh, dw, y, idx)
        _max_pool_scatter_dilated(dy, idx, kh, kw, sh, sw, ph, pw, dh, dw, dx)


@_runtime.jit()
def _axis_empty(s0, k, d, n):
    """True when none of s0 + i*d (0 <= i < k) lies in [0, n): a window row (or column) range that
    holds no input element."""
    i = 0 if s0 >= 0 else (d - 1 - s0) // d
    return i >= k or s0 + i * d >= n


@_runtime.jit(parallel=True)
def _max_pool_scatter_dilated(dy, idx, kh, kw, sh, sw, ph, pw, dh, dw, dx):
    # _max_pool_backward_indices for dilated windows: idx holds window-local positions i * kw + j
    # (kh * kw: a window without input element, skipped); dx zeroed by the caller.
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
            h0 = p * sh - ph
            for q in range(Q):
                w0 = q * sw - pw
                k = np.int64(idx[n, c, p, q])
                i = k // kw
                h = h0 + i * dh
                w = w0 + (k - i * kw) * dw
                if 0 <= k < kh * kw and 0 <= h < H and 0 <= w < W:
                    dx[n, c, h, w] += dy[n, c, p, q]
                elif not (k == kh * kw and (_axis_empty(h0, kh, dh, H) or _axis_empty(w0, kw, dw, W))):
                    nbad += 1
        bad += nbad
    return bad


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


@_runtime.jit(parallel=True)
def _max_pool_scatter_flat(dy, idx, kh, kw, sh, sw, ph, pw, dh, dw, dx):
    # As _max_pool_scatter_dilated from PyTorch's flat int64 indices h * W + w (-1: a window without
    # input element, skipped); an index outside its window is counted, never written.
    N, C, P, Q = dy.shape
    H, W = dx.shape[2], dx.shape[3]
    bad = 0
    for nc in _runtime.prange(N * C):
        n = nc // C
        c = nc - n * C
        nbad = 0
        for p in range(P):
            h0 = p * sh - ph
            for q in range(Q):
                w0 = q * sw - pw
                k = np.int64(idx[n, c, p, q])
                if k >= 0:
                    h = k // W
                    w = k - h * W
                    a = h - h0
                    b = w - w0
                    if h < H and 0 <= a <= (kh - 1) * dh and 0 <= b <= (kw - 1) * dw \
                            and (dh == 1 or a % dh == 0) and (dw == 1 or b % dw == 0):
                        dx[n, c, h, w] += dy[n, c, p, q]
                        continue
                elif k == -1 and (_axis_empty(h0, kh, dh, H) or _axis_empty(w0, kw, dw, W)):
                    continue
                nbad += 1
        bad += nbad
    return bad


@_runtime.jit(parallel=True)
def _window_to_flat(idx, kh, kw, sh, sw, ph, pw, dh, dw, W, out):
    # window-local idx (N, C, P, Q) -> PyTorch's flat int64 h * W + w (-1 for kh * kw: no input
    # element); a table of the kh * kw offsets from the window's corner instead of a division each
    N, C, P, Q = idx.shape
    m = kh * kw
    off = np.empty(m, dtype=np.int64)
    for k in range(m):
        i = k // kw
        off[k] = i * dh * W + (k - i * kw) * dw
    for nc in _runtime.prange(N * C):
        n = nc // C
        c = nc - n * C
        for p in range(P):
            r = (p * sh - ph) * W - pw
            for q in range(Q):
                k = np.int64(idx[n, c, p, q])
                out[n, c, p, q] = r + q * sw + off[k] if 0 <= k < m else -1


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


def _fast_2x2(a, d, shape, x_shape):
    """The 2x2 stride-2 kernels apply: no padding or dilation, and no ceil_mode window past the input."""
    return a == (2, 2, 2, 2, 0, 0) and d == (1, 1) and 2 * shape[2] <= x_shape[2] and 2 * shape[3] <= x_shape[3]


def _prepare(x, kernel_size, stride, padding, dilation, ceil_mode, name):
    """(squeeze, x as a C-contiguous 4-D array in its compute dtype, (N, C, P, Q), window, dilation)."""
    x = np.asarray(x)
    squeeze = x.ndim == 3
    if x.ndim != 4 and not squeeze:
        _batch_dims(x.shape, name)  # raises
    shape, a, d = _geometry((1,) + x.shape if squeeze else x.shape, kernel_size, stride, padding, dilation,
                            ceil_mode, name)
    xc = np.ascontiguousarray(x[None] if squeeze else x, dtype=_compute_dtype(x.dtype))
    return squeeze, xc, shape, a, d


def _indices_form(return_indices):
    """None, 'flat' (PyTorch's, for True) or 'window'; ValueError otherwise."""
    if isinstance(return_indices, str):
        if return_indices == "window":
            return "window"
    elif isinstance(return_indices, (bool, np.bool_, int, np.integer)) and return_indices in (0, 1):
        return "flat" if return_indices else None
    elif return_indices is None:
        return None
    raise ValueError(f"max_pool2d: return_indices must be True, False or 'window', got {return_indices!r}")


def max_pool2d(x, kernel_size=2, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max over ``kernel_size`` windows moved by ``stride`` (default: the kernel size), as
    ``torch.nn.functional.max_pool2d``.

    ``y[n, c, p, q] = max x[n, c, p*sh - ph + i*dh, q*sw - pw + j*dw]`` over ``0 <= i < kh``,
    ``0 <= j < kw``; padding is -inf (never wins), a NaN in the window gives NaN.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W) or (C, H, W)
        An unbatched (C, H, W) gives (C, P, Q).
    kernel_size, stride, padding, dilation : int or (int, int)
        Padding at most half the kernel size; ``dilation`` spaces the window's elements.
    ceil_mode : bool, default False
        Round the output size up: a last window that starts inside the input or its top/left padding
        but runs past the padded input is kept (it takes the maximum of what it covers).
    return_indices : bool or 'window', default False
        True: also return where each maximum is, as PyTorch (flat ``h * W + w`` in its (H, W) image,
        int64). ``'window'``: the compact window-local form ``i * kw + j`` (dtype
        :func:`fastact.pool.pool_index_dtype`: uint8 up to 255 window positions, int32 beyond), what
        ``nn.MaxPool2d`` keeps for its backward. :func:`max_pool2d_backward` takes either as ``indices=``.

    Returns
    -------
    y : ndarray, shape (N, C, P, Q), ``P = (H + 2*ph - dh*(kh - 1) - 1) // sh + 1`` (rounded up with
        ``ceil_mode``, :func:`fastact.pool.pool_output_shape`).
    indices : ndarray, shape (N, C, P, Q), only with ``return_indices``
        The element each window picked: the first maximum in row-major order, or the first NaN (PyTorch
        picks the last of several NaNs; the values agree). A window that holds no input element (a
        dilation that steps over the whole input) has -1 (``kh * kw`` in the window form).

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> fa.max_pool2d(np.arange(16.0).reshape(1, 1, 4, 4))
    array([[[[ 5.,  7.],
             [13., 15.]]]])
    >>> y, idx = fa.max_pool2d(np.array([[[[1.0, 3.0], [3.0, 0.0]]]]), return_indices=True)
    >>> y, idx  # the first 3 in row-major order: row 0, column 1
    (array([[[[3.]]]]), array([[[[1]]]]))
    >>> fa.max_pool2d(np.arange(25.0).reshape(1, 5, 5), 2, ceil_mode=True)  # unbatched, 3x3 windows out
    array([[[ 6.,  8.,  9.],
            [16., 18., 19.],
            [21., 23., 24.]]])
    """
    squeeze, xc, shape, a, d = _prepare(x, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d")
    y = np.empty(shape, dtype=xc.dtype)
    fast = a == (2, 2, 2, 2, 0, 0) and _fast_2x2(a, d, shape, xc.shape)
    form = None if return_indices is False else _indices_form(return_indices)
    if form is None:
        if y.size:
            if fast:
                _max_pool_2x2_forward(xc, y)
            elif d == (1, 1):
                _max_pool_forward(xc, *a, y)
            else:
                _max_pool_dilated_forward_indices(xc, *a, *d, y, _NO_INDICES)
        return y[0] if squeeze else y
    idx = np.empty(shape, dtype=pool_index_dtype(kernel_size))
    if y.size:
        if fast:
            _max_pool_2x2_forward_indices(xc, y, idx)
        elif d == (1, 1):
            _max_pool_forward_indices(xc, *a, y, idx)
        else:
            _max_pool_dilated_forward_indices(xc, *a, *d, y, idx)
    if form == "flat":
        flat = np.empty(shape, dtype=np.int64)
        if y.size:
            _window_to_flat(idx, *a, *d, xc.shape[3], flat)
        idx = flat
    return (y[0], idx[0]) if squeeze else (y, idx)


def _check_indices(indices, shape, x_shape, kernel_size, fn, squeeze=False):
    """(indices as a contiguous 4-D array, 'flat' or 'window'): PyTorch's int64 flat indices or the
    window-local ones of this pooling; ValueError naming the shapes / dtypes otherwise."""
    indices = np.asarray(indices)
    want_shape = shape[1:] if squeeze else tuple(shape)
    if indices.shape != want_shape:
        raise ValueError(f"{fn}: indices has shape {indices.shape}, but pooling x of shape "
                         f"{tuple(x_shape)} gives {want_shape}")
    want = pool_index_dtype(kernel_size)
    if indices.dtype == want:
        form = "window"
    elif indices.dtype == _INT64:
        form = "flat"
    else:
        raise ValueError(f"{fn}: indices has dtype {indices.dtype}: max_pool2d's indices are int64 (PyTorch's "
                         f"flat h * W + w, return_indices=True) or {want} for a {kernel_size!r} window "
                         f"(window-local, return_indices='window')")
    return np.ascontiguousarray(indices[None] if squeeze else indices), form


def max_pool2d_backward(dy, x, kernel_size=2, stride=None, padding=0, dilation=1, ceil_mode=False, *,
                        indices=None):
    """Gradient of :func:`max_pool2d`: each ``dy`` element goes to its window's first maximum.

    ``dx[n, c, h, w] = sum of dy[n, c, p, q]`` over the windows (p, q) that picked (h, w): one window
    at most unless the stride is below the window (then overlapping windows add, as PyTorch).

    Parameters
    ----------
    dy : array_like, shape (N, C, P, Q), or (C, P, Q) for an unbatched x
    x : array_like, shape (N, C, H, W) or (C, H, W), or its shape (a tuple of ints) when ``indices`` is
        given. The forward's input.
    kernel_size, stride, padding, dilation, ceil_mode
        As given to :func:`max_pool2d`.
    indices : ndarray, shape of dy, optional
        The forward's ``return_indices`` output, PyTorch's flat int64 indices or the ``'window'`` form:
        dx is zeroed and each ``dy`` element added at its window's recorded position, without reading
        x (the same dx as without it, and several times faster; fastest from the window form).
        ValueError if it has another shape or dtype, or holds a position outside its window or in the
        padding. None: the windows are searched again in x.

    Returns
    -------
    ndarray, shape of x

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
        squeeze, shape4 = _batch_dims(x_shape, fn)
        shape, a, d = _geometry(shape4, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d")
        dy = _check_dy(dy, shape, x_shape, fn, squeeze)
        idx, form = _check_indices(indices, shape, x_shape, kernel_size, fn, squeeze)
        dt = _grad_dtype(dy, x)
        dyc = np.ascontiguousarray(dy, dtype=dt)
        if dy.size and form == "window" and _fast_2x2(a, d, shape, shape4):
            dx = np.empty(shape4, dtype=dt)
            bad = _max_pool_2x2_backward_indices(dyc, idx, dx)  # zeroes dx itself
        else:
            dx = np.zeros(shape4, dtype=dt)
            if not dy.size:
                bad = 0
            elif form == "flat":
                bad = _max_pool_scatter_flat(dyc, idx, *a, *d, dx)
            elif d == (1, 1):
                bad = _max_pool_backward_indices(dyc, idx, *a, dx)
            else:
                bad = _max_pool_scatter_dilated(dyc, idx, *a, *d, dx)
        if bad:
            raise ValueError(f"{fn}: {bad} of the indices (shape {np.shape(indices)}) point outside their "
                             f"{a[0]}x{a[1]} window or into the padding: not max_pool2d's indices for "
                             f"x of shape {tuple(x_shape)}")
        return dx[0] if squeeze else dx
    squeeze, xc, shape, a, d = _prepare(x, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d")
    dy = _check_dy(dy, shape, xc.shape[1:] if squeeze else xc.shape, fn, squeeze)
    dt = _compute_dtype(xc.dtype, dy.dtype)  # the winner is found in x's own dtype, as the forward
    if dy.size and _fast_2x2(a, d, shape, xc.shape):
        idx = np.empty(shape, dtype=np.uint8)
        _max_pool_2x2_forward_indices(xc, np.empty(shape, dtype=xc.dtype), idx)
        dx = np.empty(xc.shape, dtype=dt)
        _max_pool_2x2_backward_indices(np.ascontiguousarray(dy, dtype=dt), idx, dx)
    else:
        dx = np.zeros(xc.shape, dtype=dt)
        if dy.size:
            _max_pool_backward(np.ascontiguousarray(dy, dtype=dt), xc.astype(dt, copy=False), *a, dx, *d)
    return dx[0] if squeeze else dx


def max_pool2d_flat_indices(indices, x, kernel_size=2, stride=None, padding=0, dilation=1, ceil_mode=False):
    """PyTorch's max-pool indices from :func:`max_pool2d`'s window-local ones (``return_indices='window'``):
    the flat position ``h * W + w`` of each maximum in its (H, W) image, int64, as
    ``F.max_pool2d(..., return_indices=True)`` and ``max_pool2d(..., return_indices=True)``.

    ``h = p*sh - ph + (idx // kw)*dh``, ``w = q*sw - pw + (idx % kw)*dw``. ``x`` is the forward's
    input or its shape.

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> y, idx = fa.max_pool2d(x, return_indices="window")
    >>> idx
    array([[[[3, 3],
             [3, 3]]]], dtype=uint8)
    >>> fa.pool.max_pool2d_flat_indices(idx, x.shape)
    array([[[[ 5,  7],
             [13, 15]]]])
    """
    fn = "max_pool2d_flat_indices"
    x_shape = _x_shape(x, fn)
    squeeze, shape4 = _batch_dims(x_shape, fn)
    shape, a, d = _geometry(shape4, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d")
    idx, form = _check_indices(indices, shape, x_shape, kernel_size, fn, squeeze)
    if form != "window":
        raise ValueError(f"{fn}: indices has dtype int64, already PyTorch's flat form; the window-local "
                         f"ones have dtype {pool_index_dtype(kernel_size)}")
    flat = np.empty(shape, dtype=np.int64)
    if flat.size:
        _window_to_flat(idx, *a, *d, shape4[3], flat)
    return flat[0] if squeeze else flat


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
    # x (N, C, H, W) -> y (N, C, P, Q): window sum (padding adds 0) / (kh * kw); every window lies
    # inside the padded input (the caller checks: otherwise _avg_pool_forward_general)
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


@_runtime.jit()
def _avg_divisor(p, q, sh, sw, ph, pw, kh, kw, H, W, include_pad, divisor):
    """(h0, h1, w0, w1, divisor) of output (p, q) as PyTorch's kernels: the window clipped to the
    input; the divisor ``divisor`` when nonzero (divisor_override), else the window's size up to the
    padded input's edge (count_include_pad: a ceil_mode window past it is clipped) or the count of
    its input elements."""
    hs = p * sh - ph
    ws = q * sw - pw
    he = min(hs + kh, H + ph)
    we = min(ws + kw, W + pw)
    h0, h1, w0, w1 = max(hs, 0), min(he, H), max(ws, 0), min(we, W)
    if divisor != 0:
        div = divisor
    elif include_pad:
        div = (he - hs) * (we - ws)
    else:
        div = (h1 - h0) * (w1 - w0)
    return h0, h1, w0, w1, div


@_runtime.jit(parallel=True)
def _avg_pool_forward_general(x, kh, kw, sh, sw, ph, pw, include_pad, divisor, y):
    # x (N, C, H, W) -> y (N, C, P, Q) with ceil_mode windows, count_include_pad=False or
    # divisor_override: window sum / _avg_divisor (an empty window gives 0, as PyTorch)
    N, C, H, W = x.shape
    _, _, P, Q = y.shape
    for nc in _runtime.prange(N * C):
        n = nc // C
        c = nc - n * C
        for p in range(P):
            for q in range(Q):
                h0, h1, w0, w1, div = _avg_divisor(p, q, sh, sw, ph, pw, kh, kw, H, W, include_pad, divisor)
                if h0 >= h1 or w0 >= w1:
                    y[n, c, p, q] = 0.0
                    continue
                s = 0.0
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        s += x[n, c, h, w]
                y[n, c, p, q] = s / div


@_runtime.jit(parallel=True)
def _avg_pool_backward_general(dy, kh, kw, sh, sw, ph, pw, include_pad, divisor, dx):
    # dy (N, C, P, Q) -> dx (N, C, H, W), zeroed by the caller: dy / _avg_divisor over each window
    N, C, H, W = dx.shape
    _, _, P, Q = dy.shape
    for nc in _runtime.prange(N * C):
        n = nc // C
        c = nc - n * C
        for p in range(P):
            for q in range(Q):
                h0, h1, w0, w1, div = _avg_divisor(p, q, sh, sw, ph, pw, kh, kw, H, W, include_pad, divisor)
                if h0 >= h1 or w0 >= w1:
                    continue
                g = dy[n, c, p, q] / div
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        dx[n, c, h, w] += g


def _x_shape(x, fn):
    """The forward input's shape from the input itself or from its shape (a tuple of 3 or 4 ints);
    ValueError naming it unless (N, C, H, W) or (C, H, W)."""
    if isinstance(x, tuple) and len(x) in (3, 4) and all(isinstance(v, (int, np.integer)) for v in x):
        return tuple(int(v) for v in x)
    shape = np.shape(x)
    _batch_dims(shape, fn)
    return shape


def _grad_dtype(dy, x):
    """The dtype dx is computed in: dy's and x's (x given as its shape adds nothing)."""
    return _compute_dtype(dy.dtype, *([] if isinstance(x, tuple) else [np.asarray(x).dtype]))


def _check_dy(dy, shape, x_shape, fn, squeeze=False):
    """dy as an array of the 4-D ``shape`` (given as (C, P, Q) when x is unbatched); ValueError naming
    the shapes otherwise."""
    dy = np.asarray(dy)
    want = tuple(shape[1:]) if squeeze else tuple(shape)
    if dy.shape != want:
        raise ValueError(f"{fn}: dy has shape {dy.shape}, but pooling x of shape {tuple(x_shape)} "
                         f"gives {want}")
    return dy[None] if squeeze else dy


def _avg_options(x_shape, shape, a, count_include_pad, divisor_override, fn):
    """None when the plain kernels apply (count_include_pad, no divisor_override, every window inside
    the padded input), else (include_pad, divisor) for the general ones (divisor 0: per window)."""
    kh, kw, sh, sw, ph, pw = a
    if count_include_pad is True and divisor_override is None and (shape[2] - 1) * sh + kh <= x_shape[2] + 2 * ph \
            and (shape[3] - 1) * sw + kw <= x_shape[3] + 2 * pw:
        return None
    include = count_include_pad is True or _flag(count_include_pad, "count_include_pad", fn)
    if divisor_override is not None:
        if isinstance(divisor_override, (bool, np.bool_)) or not isinstance(divisor_override, (int, np.integer)):
            raise TypeError(f"{fn}: divisor_override must be an int or None, got {divisor_override!r}")
        if divisor_override == 0:
            raise ValueError(f"{fn}: divisor_override must not be zero")
        return include, int(divisor_override)
    return include, 0  # count_include_pad=False, or a ceil_mode window past the padded input


def avg_pool2d(x, kernel_size=2, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """Mean over ``kernel_size`` windows moved by ``stride`` (default: the kernel size), as
    ``torch.nn.functional.avg_pool2d``.

    ``y[n, c, p, q] = sum of x over the window / divisor``: by default the window's size ``kh * kw``,
    padded positions counting as zeros.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W) or (C, H, W)
        An unbatched (C, H, W) gives (C, P, Q).
    kernel_size, stride, padding : int or (int, int)
        Padding at most half the kernel.
    ceil_mode : bool, default False
        Round the output size up (:func:`fastact.pool.pool_output_shape`); a last window that runs
        past the padded input is clipped to it.
    count_include_pad : bool, default True
        Divide by the window's size up to the padded input's edge (True) or by the number of input
        elements it covers (False).
    divisor_override : int, optional
        Divide every window by this instead (not 0).

    Returns
    -------
    ndarray, shape (N, C, P, Q), ``P = (H + 2*ph - kh) // sh + 1`` (rounded up with ``ceil_mode``).

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> fa.avg_pool2d(np.arange(16.0).reshape(1, 1, 4, 4))
    array([[[[ 2.5,  4.5],
             [10.5, 12.5]]]])
    >>> fa.avg_pool2d(np.ones((1, 3, 3)), 2, padding=1)  # padding counts in the divisor
    array([[[0.25, 0.5 ],
            [0.5 , 1.  ]]])
    >>> fa.avg_pool2d(np.ones((1, 3, 3)), 2, padding=1, count_include_pad=False)
    array([[[1., 1.],
            [1., 1.]]])
    """
    squeeze, xc, shape, a, _ = _prepare(x, kernel_size, stride, padding, 1, ceil_mode, "avg_pool2d")
    opt = _avg_options(xc.shape, shape, a, count_include_pad, divisor_override, "avg_pool2d")
    y = np.empty(shape, dtype=xc.dtype)
    if y.size:
        if opt is None:
            _avg_pool_forward(xc, *a, y)
        else:
            _avg_pool_forward_general(xc, *a, *opt, y)
    return y[0] if squeeze else y


def avg_pool2d_backward(dy, x, kernel_size=2, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                        divisor_override=None):
    """Gradient of :func:`avg_pool2d`: each ``dy`` element spreads ``dy / divisor`` over its window
    (clipped to the input), with the forward's options.

    ``x`` is the forward's input or its shape (only the shape is used); ``dy`` (C, P, Q) and dx
    (C, H, W) for an unbatched x.

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> fa.avg_pool2d_backward(np.array([[[[4.0]]]]), (1, 1, 2, 2))
    array([[[[1., 1.],
             [1., 1.]]]])
    """
    fn = "avg_pool2d_backward"
    x_shape = _x_shape(x, fn)
    squeeze, shape4 = _batch_dims(x_shape, fn)
    shape, a, _ = _geometry(shape4, kernel_size, stride, padding, 1, ceil_mode, "avg_pool2d")
    dy = _check_dy(dy, shape, x_shape, fn, squeeze)
    opt = _avg_options(shape4, shape, a, count_include_pad, divisor_override, fn)
    dt = _grad_dtype(dy, x)
    dx = np.zeros(shape4, dtype=dt)
    if dy.size:
        dyc = np.ascontiguousarray(dy, dtype=dt)
        if opt is None:
            _avg_pool_backward(dyc, *a, dx)
        else:
            _avg_pool_backward_general(dyc, *a, *opt, dx)
    return dx[0] if squeeze else dx


# --------------------------------------------------------------------------- adaptive average pooling

def adaptive_pool_output_shape(x_shape, output_size):
    """(N, C, P, Q) of adaptive_avg_pool2d ((C, P, Q) for an unbatched (C, H, W)): ``output_size`` an
    int or a pair (None keeps that input size); ValueError naming the shapes otherwise."""
    squeeze, (N, C, H, W) = _batch_dims(x_shape, "adaptive_avg_pool2d")
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
    return (C, P, Q) if squeeze else (N, C, P, Q)


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
    x : array_like, shape (N, C, H, W) or (C, H, W)
    output_size : int or (int or None, int or None)
        (P, Q); ``1`` is the global average pool, None keeps that dimension.

    Returns
    -------
    ndarray, shape (N, C, P, Q), or (C, P, Q) for an unbatched x

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
    squeeze = x.ndim == 3
    xc = np.ascontiguousarray(x[None] if squeeze else x, dtype=_compute_dtype(x.dtype))
    y = np.empty((1,) + shape if squeeze else shape, dtype=xc.dtype)
    if y.size:
        _adaptive_forward(xc, y)
    return y[0] if squeeze else y


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
    squeeze, shape4 = _batch_dims(x_shape, fn)
    dy = np.asarray(dy)
    if output_size is None:
        if dy.ndim != len(x_shape):
            raise ValueError(f"{fn}: dy must be {len(x_shape)}-D like x (shape {tuple(x_shape)}), got "
                             f"shape {dy.shape}")
        output_size = dy.shape[-2:]
    shape = adaptive_pool_output_shape(shape4, output_size)
    dy = _check_dy(dy, shape, x_shape, fn, squeeze)
    dt = _grad_dtype(dy, x)
    dx = np.zeros(shape4, dtype=dt)
    if dy.size:
        _adaptive_backward(np.ascontiguousarray(dy, dtype=dt), dx)
    return dx[0] if squeeze else dx
