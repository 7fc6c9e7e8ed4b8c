"""Small helpers that several layers share: dtype rules, argument pairs, the row maximum and sum, the
pooling window's argmax.

They live here, below every layer module, so that no layer imports another layer's privates.
"""

import numpy as np

from . import _runtime

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def compute_dtype(*dtypes):
    """The dtype a kernel computes in for inputs of these dtypes (NumPy ufunc casting, float16 -> f32)."""
    dt = np.result_type(*dtypes)
    if dt in FLOATS:
        return dt
    if dt == np.float16:
        return np.dtype(np.float32)
    if dt.kind in "biuf":  # bool, ints, longdouble
        return np.dtype(np.float64)
    raise TypeError(f"fastact activations take real numbers; got an array of dtype {dt}")


def pair(v, name):
    """``v`` as a pair of ints (``3`` -> ``(3, 3)``); TypeError/ValueError naming ``name`` otherwise."""
    # the common cases first: every layer call parses three of these, and the general checks below
    # cost a pooling backward on 64x64x8x8 ~5 us (bench/results/2026-11-25/calls-session-ab.txt)
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
    # four independent running maxima (one is a chain of dependent compare-selects that cannot
    # overlap); "v > m or v != v" takes a NaN, and nothing replaces it afterwards
    n = row.size
    m0 = m1 = m2 = m3 = row[0]
    n4 = n - n % 4
    for j in range(0, n4, 4):
        a, b, c, d = row[j], row[j + 1], row[j + 2], row[j + 3]
        m0 = a if (a > m0 or a != a) else m0
        m1 = b if (b > m1 or b != b) else m1
        m2 = c if (c > m2 or c != c) else m2
        m3 = d if (d > m3 or d != d) else m3
    for j in range(n4, n):
        a = row[j]
        m0 = a if (a > m0 or a != a) else m0
    for v in (m1, m2, m3):
        m0 = v if (v > m0 or v != v) else m0
    return m0


@_runtime.jit()
def row_sum(r):
    """Sum of a 1-D array in float64 with four independent accumulators: a single float accumulator is
    a serial dependency chain that LLVM may not reorder (no fast-math), and would keep the loop that
    computes ``r`` from vectorising if fused into it (the bias sums of the fused backwards, softmax)."""
    n = r.size
    n4 = n - n % 4
    s0 = s1 = s2 = s3 = 0.0
    for j in range(0, n4, 4):
        s0 += r[j]
        s1 += r[j + 1]
        s2 += r[j + 2]
        s3 += r[j + 3]
    for j in range(n4, n):
        s0 += r[j]
    return (s0 + s1) + (s2 + s3)


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


def prelu_layout(x, weight, axis):
    """x viewed as (outer, C, inner) with C = weight.size; raises naming the shapes when they disagree."""
    if weight.ndim > 1:
        raise ValueError(f"prelu: weight must be 1-D (one slope per channel), got shape {weight.shape}")
    if weight.size == 0:
        raise ValueError("prelu: weight is empty")
    if weight.size == 1:
        return (x.size, 1, 1) if x.ndim == 0 else (x.shape[0], 1, x.size // max(x.shape[0], 1))
    ax = axis + x.ndim if axis < 0 else axis
    if not 0 <= ax < x.ndim:
        raise ValueError(f"prelu: axis {axis} is out of range for x of shape {x.shape}")
    if x.shape[ax] != weight.size:
        raise ValueError(f"prelu: weight has {weight.size} elements but x.shape[{axis}] is "
                         f"{x.shape[ax]} (x has shape {x.shape})")
    outer = int(np.prod(x.shape[:ax], dtype=np.int64))
    inner = int(np.prod(x.shape[ax + 1:], dtype=np.int64))
    return outer, weight.size, inner


def check_preactivation(fname, preactivation, shape, activation):
    """``preactivation`` as an array of ``shape``; ValueError naming it when missing or mis-shaped."""
    if preactivation is None:
        raise ValueError(f"{fname}: activation {activation!r} needs preactivation=, the pre-activation "
                         f"output (shape {shape}) that the forward returns with return_preactivation=True")
    z = np.asarray(preactivation)
    if z.shape != shape:
        raise ValueError(f"{fname}: preactivation has shape {z.shape} but dy has shape {shape}")
    return z


def pool_window(kernel_size, stride, padding):
    """(kh, kw, sh, sw, ph, pw) as ints (stride defaults to the kernel size)."""
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = pair(kernel_size if stride is None else stride, "stride")
    ph, pw = pair(padding, "padding")
    return kh, kw, sh, sw, ph, pw
