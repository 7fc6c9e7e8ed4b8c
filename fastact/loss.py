"""Cross-entropy from logits and integer labels (mean over the batch), log-sum-exp stable.

Shape key: N batch, C classes. logits (N, C), target (N,) integers in [0, C).
"""

import math

import numpy as np

from . import _runtime
from . import _math as fm
from ._util import compute_dtype as _compute_dtype
from ._util import row_max as _row_max

__all__ = ["cross_entropy", "cross_entropy_backward"]


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


def cross_entropy_backward(logits, target):
    """Gradient of the mean :func:`cross_entropy`: ``(softmax(logits) - onehot(target)) / N``.

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> np.round(fa.cross_entropy_backward(np.zeros((2, 3)), np.array([0, 2])), 4)
    array([[-0.3333,  0.1667,  0.1667],
           [ 0.1667,  0.1667, -0.3333]])
    """
    logits, target = _check(logits, target)
    d = np.empty_like(logits)
    if logits.shape[0]:
        _ce_backward(logits, target, logits.dtype.type(1.0 / logits.shape[0]), d)
    return d
