"""Softmax, log-softmax and cross-entropy: the log-sum-exp family, in one place.

Every row is shifted by its maximum before ``exp`` (``fastact._util.row_max``, NaN when the row holds
NaN), so no magnitude overflows, and a row holding NaN gives NaN.

Shape key: R rows of length L (softmax: ``axis`` moved last, the other axes flattened into R);
N batch, C classes (cross-entropy: logits (N, C), target (N,) integers in [0, C)).

``softmax``/``log_softmax`` take any axis and ``out=`` like the elementwise activations, and their
backward takes the forward's output ``y`` (not ``x``): ``softmax_backward`` needs only ``y``, and
``log_softmax_backward`` recovers the probabilities as ``exp(y)``. ``cross_entropy`` is the mean over
the batch of ``logsumexp(logits[i]) - logits[i, target[i]]``, accumulated in float64.
"""

import math

import numpy as np

from . import _runtime
from . import duck as _duck
from . import _math as fm
from ._util import FLOATS as _FLOATS
from ._util import check_out as _check_out
from ._util import compute_dtype as _compute_dtype
from ._util import row_max as _row_max
from ._util import row_sum as _row_sum

__all__ = ["softmax", "log_softmax", "softmax_backward", "log_softmax_backward",
           "cross_entropy", "cross_entropy_backward"]


# ------------------------------------------------------------------------------------------ softmax

@_runtime.jit(parallel=True)
def _softmax_rows(x2, y2, log):
    # x2, y2 are (R, L): softmax (or log-softmax) of each row. exp(x - max) goes to y first, in a loop
    # of its own, which vectorises (float32: fexpf, 16 lanes); the float64 sum then reads it back with
    # row_sum's four accumulators (one float64 accumulator inside the exp loop keeps that loop scalar,
    # 3.4x slower on 100 rows of 1000: bench/results/2026-11-25/calls-session-ab.txt)
    R, L = x2.shape
    for r in _runtime.prange(R):
        xr = x2[r]
        yr = y2[r]
        m = _row_max(xr)
        for j in range(L):
            yr[j] = fm.exp_native(xr[j] - m)
        s = _row_sum(yr)
        if log:
            lse = m + math.log(s)
            for j in range(L):
                yr[j] = xr[j] - lse
        else:
            inv = 1.0 / s
            for j in range(L):
                yr[j] = yr[j] * inv


@_runtime.jit(parallel=True)
def _softmax_backward_rows(dy2, y2, dx2, log):
    # dy2, y2, dx2 are (R, L); y2 is the forward output (log-probabilities when log is True). The sums
    # by row_sum, the products for the softmax's first written to dx (as in the forward)
    R, L = y2.shape
    for r in _runtime.prange(R):
        dyr = dy2[r]
        yr = y2[r]
        dxr = dx2[r]
        if log:
            s = _row_sum(dyr)
            for j in range(L):
                dxr[j] = dyr[j] - fm.exp_native(yr[j]) * s
        else:
            for j in range(L):
                dxr[j] = dyr[j] * yr[j]
            s = _row_sum(dxr)
            for j in range(L):
                dxr[j] = yr[j] * (dyr[j] - s)


def _rows(a, axis, dt):
    """``a`` with ``axis`` moved last, as a contiguous (rows, L) array of dtype dt."""
    if a.ndim == 0:
        a = a.reshape(1)
        axis = 0 if axis in (0, -1) else axis
    moved = np.moveaxis(a, axis, -1)
    return np.ascontiguousarray(moved, dtype=dt), moved.shape


def _unrows(res, a, axis, out):
    """:func:`_rows` undone: the (..., L) result ``res`` back in ``a``'s layout, returned or copied into
    ``out`` (a 0-d input gives a scalar)."""
    res = np.moveaxis(res, -1, axis).reshape(a.shape) if a.ndim else res.reshape(())
    if out is None:
        return res if res.ndim else res[()]
    np.copyto(out, res, casting="same_kind")
    return out


def _last_axis_fast(a, axis):
    """True for the common case: a C-contiguous float32/float64 ndarray of at least one dimension,
    reduced along its last axis (no moving of axes, no copies: ~8 us of NumPy calls saved per call)."""
    return (type(a) is np.ndarray and a.ndim and (axis == -1 or axis == a.ndim - 1) and a.size
            and a.dtype in _FLOATS and a.flags.c_contiguous)


def _softmax_impl(x, axis, out, log):
    if out is None and _last_axis_fast(x, axis):
        res = np.empty_like(x)
        L = x.shape[-1]
        _softmax_rows(x.reshape(-1, L), res.reshape(-1, L), log)
        return res
    if type(x) is not np.ndarray and _duck.is_duck(x):
        return _duck.softmax(x, axis, out, log, _softmax_impl)  # Dask: lazy, the axis in one chunk
    x = np.asarray(x)
    dt = _compute_dtype(x.dtype)
    xr, mshape = _rows(x, axis, dt)
    if out is not None:
        _check_out(out, x.shape)
    res = np.empty(mshape, dtype=dt)
    if res.size:
        L = mshape[-1]
        _softmax_rows(xr.reshape(-1, L), res.reshape(-1, L), log)
    return _unrows(res, x, axis, out)


def _softmax_backward_impl(dy, y, axis, out, log):
    if (out is None and _last_axis_fast(y, axis) and type(dy) is np.ndarray and dy.dtype is y.dtype
            and dy.shape == y.shape and dy.flags.c_contiguous):
        res = np.empty_like(y)
        L = y.shape[-1]
        _softmax_backward_rows(dy.reshape(-1, L), y.reshape(-1, L), res.reshape(-1, L), log)
        return res
    if (type(y) is not np.ndarray or type(dy) is not np.ndarray) and _duck.any_duck((dy, y)):
        return _duck.softmax_backward(dy, y, axis, out, log, _softmax_backward_impl)
    dy = np.asarray(dy)
    y = np.asarray(y)
    if dy.shape != y.shape:
        raise ValueError(f"dy has shape {dy.shape} but y has shape {y.shape}")
    dt = _compute_dtype(dy.dtype, y.dtype)
    dyr, mshape = _rows(dy, axis, dt)
    yr, _ = _rows(y, axis, dt)
    if out is not None:
        _check_out(out, y.shape)
    res = np.empty(mshape, dtype=dt)
    if res.size:
        L = mshape[-1]
        _softmax_backward_rows(dyr.reshape(-1, L), yr.reshape(-1, L), res.reshape(-1, L), log)
    return _unrows(res, y, axis, out)


def softmax(x, axis=-1, *, out=None):
    """Softmax along ``axis``: ``exp(x - max) / sum(exp(x - max))`` (stable for any magnitude).

    A row holding NaN gives a row of NaN. See :func:`softmax_backward`, which takes the output ``y``.
    A Dask array gives a lazy Dask array: ``axis`` is rechunked into one chunk (a row needs all its
    values), then each chunk is computed as a NumPy array is.

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> np.round(fa.softmax(np.array([[1.0, 2.0, 3.0]])), 4)
    array([[0.09  , 0.2447, 0.6652]])
    """
    return _softmax_impl(x, axis, out, False)


def log_softmax(x, axis=-1, *, out=None):
    """Log-softmax along ``axis``: ``x - max - log(sum(exp(x - max)))``.

    A Dask array gives a lazy Dask array, ``axis`` rechunked into one chunk (as :func:`softmax`).

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> np.round(fa.log_softmax(np.array([[1.0, 2.0, 3.0]])), 4)
    array([[-2.4076, -1.4076, -0.4076]])
    """
    return _softmax_impl(x, axis, out, True)


def softmax_backward(dy, y, axis=-1, *, out=None):
    """Gradient of :func:`softmax` from its output ``y``: ``dx = y * (dy - sum(dy * y, axis))``.

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> y = fa.softmax(np.array([[1.0, 2.0, 3.0]]))
    >>> np.round(fa.softmax_backward(np.array([[1.0, 0.0, 0.0]]), y), 4)
    array([[ 0.0819, -0.022 , -0.0599]])
    """
    return _softmax_backward_impl(dy, y, axis, out, False)


def log_softmax_backward(dy, y, axis=-1, *, out=None):
    """Gradient of :func:`log_softmax` from its output ``y``: ``dx = dy - exp(y) * sum(dy, axis)``.

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> y = fa.log_softmax(np.array([[1.0, 2.0, 3.0]]))
    >>> np.round(fa.log_softmax_backward(np.array([[1.0, 0.0, 0.0]]), y), 4)
    array([[ 0.91  , -0.2447, -0.6652]])
    """
    return _softmax_backward_impl(dy, y, axis, out, True)


# ------------------------------------------------------------------------------------ cross-entropy

@_runtime.jit()
def _ce_forward(logits, target):
    # logits (N, C), target (N,) -> mean of logsumexp(logits[i]) - logits[i, target[i]], in float64
    N, C = logits.shape
    total = 0.0
    for i in range(N):
        m = _row_max(logits[i])
        s = 0.0
        for j in range(C):
            s += math.exp(float(logits[i, j] - m))
        total += m + math.log(s) - logits[i, target[i]]
    return total / N


@_runtime.jit(parallel=True)
def _ce_backward(logits, target, scale, d):
    # d (N, C) = scale * (softmax(logits) - onehot(target))
    N, C = logits.shape
    for i in _runtime.prange(N):
        m = _row_max(logits[i])
        s = 0.0
        for j in range(C):
            e = fm.exp(logits[i, j] - m)
            d[i, j] = e
            s += e
        inv = 1.0 / s
        for j in range(C):
            d[i, j] = d[i, j] * inv * scale
        d[i, target[i]] -= scale


def _check(logits, target):
    logits = np.asarray(logits)
    target = np.asarray(target)
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy: logits must be 2-D (N, C), got shape {logits.shape}")
    if target.shape != (logits.shape[0],):
        raise ValueError(f"cross_entropy: target must have shape ({logits.shape[0]},) for logits of "
                         f"shape {logits.shape}, got {target.shape}")
    if target.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: target must hold integer class labels, got dtype {target.dtype}")
    C = logits.shape[1]
    if target.size and (target.min() < 0 or target.max() >= C):
        raise ValueError(f"cross_entropy: labels must lie in [0, {C}), got range "
                         f"[{target.min()}, {target.max()}]")
    if C == 0:
        raise ValueError(f"cross_entropy: logits of shape {logits.shape} have no classes")
    dt = _compute_dtype(logits.dtype)
    return np.ascontiguousarray(logits, dtype=dt), np.ascontiguousarray(target, dtype=np.int64)


def cross_entropy(logits, target):
    """Mean cross-entropy ``mean_i(logsumexp(logits[i]) - logits[i, target[i]])`` as a Python float.

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> bool(round(fa.cross_entropy(np.zeros((2, 4)), np.array([0, 3])), 6) == round(np.log(4), 6))
    True
    """
    logits, target = _check(logits, target)
    if logits.shape[0] == 0:
        return float("nan")  # the mean of nothing, as PyTorch
    return float(_ce_forward(logits, target))


def cross_entropy_backward(logits, target, *, dy=1.0):
    """Gradient of the mean :func:`cross_entropy`: ``dy * (softmax(logits) - onehot(target)) / N``.

    The loss is a scalar, so its incoming gradient ``dy`` is one number: 1.0 (the default) when the
    loss is what is minimised, another value when it is a weighted term of a larger objective. It is
    a keyword, after the two inputs, because the loss is usually the end of the chain.

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> np.round(fa.cross_entropy_backward(np.zeros((2, 3)), np.array([0, 2])), 4)
    array([[-0.3333,  0.1667,  0.1667],
           [ 0.1667,  0.1667, -0.3333]])
    """
    if np.ndim(dy) != 0 or not np.isfinite(dy):
        raise ValueError(f"cross_entropy_backward: dy is the gradient of a scalar loss, one finite "
                         f"number; got {dy!r}")
    logits, target = _check(logits, target)
    d = np.empty_like(logits)
    if logits.shape[0]:
        _ce_backward(logits, target, logits.dtype.type(float(dy) / logits.shape[0]), d)
    return d
