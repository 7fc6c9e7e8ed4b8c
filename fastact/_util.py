"""Small helpers that several layers share: dtype rules, argument pairs, the row maximum, the
pooling window's argmax.

They live here, below every layer module, so that no layer imports another layer's privates.
"""

import numpy as np

from . import _runtime

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def compute_dtype(*dtypes):
    """The dtype a kernel computes in for inputs of these dtypes (NumPy ufunc casting, float16 -> f32)."""
    dt = np.result_type(*dtypes)
    if dt in _FLOATS:
        return dt
    if dt == np.float16:
        return np.dtype(np.float32)
    if dt.kind in "biuf":  # bool, ints, longdouble
        return np.dtype(np.float64)
    raise TypeError(f"fastact activations take real numbers; got an array of dtype {dt}")


def pair(v, name):
    """``v`` as a pair of ints (``3`` -> ``(3, 3)``); TypeError/ValueError naming ``name`` otherwise."""
    # the common cases first: every layer call parses three of these (the general checks below take
    # ~2 us per call, as much as a small pooling kernel)
    if type(v) is int:
        return v, v
    if type(v) is tuple and len(v) == 2 and type(v[0]) is int and type(v[1]) is int:
        return v
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair, got {v!r}")
        a, b = v
    else:
        a = b = v
    out = []
    for e in (a, b):
        if isinstance(e, (bool, np.bool_)) or not isinstance(e, (int, np.integer, float, np.floating)) \
                or e != int(e):
            raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
        out.append(int(e))
    return out[0], out[1]


def check_out(out, shape):
    """TypeError/ValueError unless ``out`` is a writeable float ndarray of ``shape`` (before any write)."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
    if out.dtype.kind != "f":
        raise TypeError(f"out must be a floating-point array, got dtype {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    if out.shape != shape:
        raise ValueError(f"out has shape {out.shape}, but the result has shape {shape}")


@_runtime.jit()
def row_max(row):
    """Maximum of a 1-D row, NaN if the row holds NaN (max(v, m) would drop it): the shift of every
    log-sum-exp here (softmax, log_softmax, cross-entropy, and fastact.cuda's cross-entropy)."""
    m = row[0]
    for j in range(1, row.size):
        v = row[j]
        if v > m or v != v:
            m = v
        if m != m:
            break
    return m


@_runtime.jit()
def argmax_window(x, n, c, p, q, kh, kw, sh, sw, ph, pw):
    """(h, w) of the first maximum (or first NaN) of one max-pooling window of x (N, C, H, W);
    (-1, -1) if the window is all padding. The one definition of which element a window picks (ties:
    the first in row-major order): the CPU pooling kernels and, compiled for the device, fastact.cuda's."""
    H, W = x.shape[2], x.shape[3]
    bh, bw = -1, -1
    best = -np.inf
    for i in range(kh):
        h = p * sh - ph + i
        if h < 0 or h >= H:
            continue
        for j in range(kw):
            w = q * sw - pw + j
            if w < 0 or w >= W:
                continue
            v = x[n, c, h, w]
            if bh < 0 or v > best or (v != v and best == best):
                best = v
                bh, bw = h, w
    return bh, bw
