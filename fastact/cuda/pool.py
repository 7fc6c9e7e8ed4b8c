"""2-D max pooling on device arrays (PyTorch semantics, floor mode), forward and backward.

Shape key: N batch, C channels, P x Q output. One thread per output element finds its window's first
maximum (or first NaN) with the same definition the CPU kernels use (``fastact._util.argmax_window``,
compiled here as a device function), so both pick the same element on ties and NaN. The backward adds
``dy`` into that element with an atomic add: windows may overlap when the stride is below the window.
``return_indices='window'`` / ``indices=`` as on the CPU: the window-local position ``i * kw + j`` of each
maximum (``fastact.pool.pool_index_dtype``), so the backward adds without searching the window again.
"""

import math

import numpy as np

from .._util import argmax_window
from .._util import pool_window
from ..pool import pool_index_dtype, pool_output_shape
from ._device import as_device, cached, kernel, launch_1d, require, zeros

__all__ = ["max_pool2d", "max_pool2d_backward"]


# Kernel bodies, compiled by _kernels() with ``cuda``, ``dev_argmax`` and ``dev_nchw`` bound as globals.

def _k_nchw(t, C, P, Q):
    # the (n, c, p, q) of flat output element t (a device function)
    return t // (Q * P * C), (t // (Q * P)) % C, (t // Q) % P, t % Q


def _k_pool_forward_indices(x, kh, kw, sh, sw, ph, pw, y, idx):
    # y, idx (N, C, P, Q): one thread per output element; idx = i * kw + j in its window (an empty idx:
    # y only)
    N, C, P, Q = y.shape
    keep = idx.size != 0
    for t in range(np.int64(cuda.grid(1)), N * C * P * Q, np.int64(cuda.gridsize(1))):
        n, c, p, q = dev_nchw(t, C, P, Q)
        h, w = dev_argmax(x, n, c, p, q, kh, kw, sh, sw, ph, pw)
        y[n, c, p, q] = x[n, c, h, w] if h >= 0 else -math.inf
        if keep:
            idx[n, c, p, q] = (h - (p * sh - ph)) * kw + (w - (q * sw - pw)) if h >= 0 else 0


def _k_pool_backward_indices(dy, idx, kh, kw, sh, sw, ph, pw, dx):
    # dx zeroed by the caller; windows may overlap (stride below the window): atomics. An index
    # outside its window or in the padding is skipped (a device kernel cannot raise; the host's shape
    # and dtype checks catch the usual mistakes)
    N, C, P, Q = dy.shape
    H, W = dx.shape[2], dx.shape[3]
    for t in range(np.int64(cuda.grid(1)), N * C * P * Q, np.int64(cuda.gridsize(1))):
        n, c, p, q = dev_nchw(t, C, P, Q)
        k = np.int64(idx[n, c, p, q])
        i = k // kw
        h = p * sh - ph + i
        w = q * sw - pw + (k - i * kw)
        if 0 <= k < kh * kw and 0 <= h < H and 0 <= w < W:
            cuda.atomic.add(dx, (n, c, h, w), dy[n, c, p, q])


def _kernels():
    def build():
        argmax = kernel(argmax_window.py_func, device=True)
        nchw = kernel(_k_nchw, device=True)
        return {"forward_indices": kernel(_k_pool_forward_indices, dev_argmax=argmax, dev_nchw=nchw),
                "backward_indices": kernel(_k_pool_backward_indices, dev_nchw=nchw)}
    return cached("pool", build)


def _as_device_indices(a):
    """The forward's indices as a device array (as_device takes floats only)."""
    if hasattr(a, "copy_to_host") and hasattr(a, "is_c_contiguous"):
        return a
    if hasattr(a, "__cuda_array_interface__"):
        return require().as_cuda_array(a)
    raise TypeError(f"max_pool2d_backward: indices must be a device array (max_pool2d(..., "
                    f"return_indices='window')'s), got {type(a).__name__}")


def _args(x, kernel_size, stride, padding):
    return pool_output_shape(x.shape, kernel_size, stride, padding), pool_window(kernel_size, stride, padding)


def max_pool2d(x, kernel_size=2, stride=None, padding=0, *, return_indices=False):
    """:func:`fastact.max_pool2d` on a device array (NaN propagates, ties go to the first maximum).

    Parameters
    ----------
    x : device array, shape (N, C, H, W)
    kernel_size, stride, padding : int or (int, int)
        ``stride`` None is ``kernel_size``; padding is implicit -inf.
    return_indices : False or 'window', optional
        ``'window'``: also return each maximum's window-local position (as
        :func:`fastact.max_pool2d`'s ``return_indices='window'``, which :func:`max_pool2d_backward`
        takes). PyTorch's flat form (the CPU function's ``return_indices=True``) is not computed on the
        device: ``True`` raises ValueError, and :func:`fastact.pool.max_pool2d_flat_indices` converts
        the host copy of the window form.

    Returns
    -------
    device array, shape (N, C, P, Q); with ``return_indices``, also the indices (device array, same
    shape, uint8 up to 255 window positions, int32 beyond)

    Examples
    --------
    >>> import numpy as np
    >>> from fastact import cuda
    >>> x = cuda.to_device(np.arange(16.0).reshape(1, 1, 4, 4))  # doctest: +SKIP
    >>> cuda.max_pool2d(x).copy_to_host()[0, 0]                  # doctest: +SKIP
    array([[ 5.,  7.],
           [13., 15.]])
    """
    if return_indices is True:
        raise ValueError("cuda.max_pool2d: return_indices='window' gives the window-local positions that "
                         "cuda.max_pool2d_backward takes; PyTorch's flat indices (return_indices=True on the "
                         "CPU) are not computed on the device: fastact.pool.max_pool2d_flat_indices converts "
                         "the host copy")
    if return_indices not in (False, None, "window"):
        raise ValueError(f"cuda.max_pool2d: return_indices must be False or 'window', got {return_indices!r}")
    return_indices = bool(return_indices)
    x = as_device(x, "x")
    shape, a = _args(x, kernel_size, stride, padding)
    y = require().device_array(shape, dtype=x.dtype)
    idx = require().device_array(shape if return_indices else (0, 0, 0, 0), dtype=pool_index_dtype(kernel_size))
    if y.size:
        blocks, threads = launch_1d(y.size)
        _kernels()["forward_indices"][blocks, threads](x, *a, y, idx)
    return (y, idx) if return_indices else y


def max_pool2d_backward(dy, x, kernel_size=2, stride=None, padding=0, *, indices=None):
    """Gradient of :func:`max_pool2d`: each ``dy`` element goes to its window's first maximum.

    Parameters
    ----------
    dy : device array, shape (N, C, P, Q)
    x, kernel_size, stride, padding
        As given to :func:`max_pool2d` (with ``indices``, only x's shape and dtype are used).
    indices : device array, shape (N, C, P, Q), optional
        The forward's ``return_indices`` output: each ``dy`` element is added at its recorded position.
        ValueError if its shape or dtype is not the forward's.

    Returns
    -------
    device array, shape (N, C, H, W)

    Examples
    --------
    >>> import numpy as np
    >>> from fastact import cuda
    >>> x = cuda.to_device(np.arange(4.0).reshape(1, 1, 2, 2))                              # doctest: +SKIP
    >>> cuda.max_pool2d_backward(cuda.to_device(np.ones((1, 1, 1, 1))), x).copy_to_host()  # doctest: +SKIP
    array([[[[0., 0.],
             [0., 1.]]]])
    """
    x = as_device(x, "x")
    dy = as_device(dy, "dy")
    shape, a = _args(x, kernel_size, stride, padding)
    if tuple(dy.shape) != shape:
        raise ValueError(f"max_pool2d_backward: dy has shape {tuple(dy.shape)}, but pooling x of shape "
                         f"{tuple(x.shape)} gives {shape}")
    if dy.dtype != x.dtype:
        raise TypeError(f"max_pool2d_backward: dy is {dy.dtype} but x is {x.dtype}")
    dx = zeros(x.shape, x.dtype)
    if indices is not None:
        indices = _as_device_indices(indices)
        if tuple(indices.shape) != shape:
            raise ValueError(f"max_pool2d_backward: indices has shape {tuple(indices.shape)}, but pooling x "
                             f"of shape {tuple(x.shape)} gives {shape}")
        if indices.dtype != pool_index_dtype(kernel_size):
            raise ValueError(f"max_pool2d_backward: indices has dtype {indices.dtype}, but max_pool2d(..., "
                             f"return_indices='window') gives {pool_index_dtype(kernel_size)}")
        if dy.size:
            blocks, threads = launch_1d(dy.size)
            _kernels()["backward_indices"][blocks, threads](dy, indices, *a, dx)
        return dx
    if dy.size:  # the forward's winners first: one definition of the winner, as on the CPU
        _, idx = max_pool2d(x, kernel_size, stride, padding, return_indices="window")
        blocks, threads = launch_1d(dy.size)
        _kernels()["backward_indices"][blocks, threads](dy, idx, *a, dx)
    return dx
