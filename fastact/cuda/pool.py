"""2-D max pooling on device arrays (PyTorch semantics, floor mode), forward and backward.

Shape key: N batch, C channels, P x Q output. One thread per output element finds its window's first
maximum (or first NaN) with the same definition the CPU kernels use (``fastact._util.argmax_window``,
compiled here as a device function), so both pick the same element on ties and NaN. The backward adds
``dy`` into that element with an atomic add: windows may overlap when the stride is below the window.
"""

import math

import numpy as np

from .._util import argmax_window, pair
from ..pool import pool_output_shape
from ._device import as_device, cached, kernel, launch_1d, require, zeros

__all__ = ["max_pool2d", "max_pool2d_backward"]


# Kernel bodies, compiled by _kernels() with ``cuda`` and ``dev_argmax`` bound as globals.

def _k_pool_forward(x, kh, kw, sh, sw, ph, pw, y):
    # y (N, C, P, Q): one thread per output element
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


def _kernels():
    def build():
        argmax = kernel(argmax_window.py_func, device=True)
        return {"forward": kernel(_k_pool_forward, dev_argmax=argmax),
                "backward": kernel(_k_pool_backward, dev_argmax=argmax)}
    return cached("pool", build)


def _args(x, kernel_size, stride, padding):
    shape = pool_output_shape(x.shape, kernel_size, stride, padding)
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = pair(kernel_size if stride is None else stride, "stride")
    ph, pw = pair(padding, "padding")
    return shape, (kh, kw, sh, sw, ph, pw)


def max_pool2d(x, kernel_size=2, stride=None, padding=0):
    """:func:`fastact.max_pool2d` on a device array (NaN propagates, ties go to the first maximum).

    Parameters
    ----------
    x : device array, shape (N, C, H, W)
    kernel_size, stride, padding : int or (int, int)
        ``stride`` None is ``kernel_size``; padding is implicit -inf.

    Returns
    -------
    device array, shape (N, C, P, Q)

    Examples
    --------
    >>> import numpy as np
    >>> from fastact import cuda
    >>> x = cuda.to_device(np.arange(16.0).reshape(1, 1, 4, 4))  # doctest: +SKIP
    >>> cuda.max_pool2d(x).copy_to_host()[0, 0]                  # doctest: +SKIP
    array([[ 5.,  7.],
           [13., 15.]])
    """
    x = as_device(x, "x")
    shape, a = _args(x, kernel_size, stride, padding)
    y = require().device_array(shape, dtype=x.dtype)
    if y.size:
        blocks, threads = launch_1d(y.size)
        _kernels()["forward"][blocks, threads](x, *a, y)
    return y


def max_pool2d_backward(dy, x, kernel_size=2, stride=None, padding=0):
    """Gradient of :func:`max_pool2d`: each ``dy`` element goes to its window's first maximum.

    Parameters
    ----------
    dy : device array, shape (N, C, P, Q)
    x, kernel_size, stride, padding
        As given to :func:`max_pool2d`.

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
    if dy.size:
        blocks, threads = launch_1d(dy.size)
        _kernels()["backward"][blocks, threads](dy, x, *a, dx)
    return dx
