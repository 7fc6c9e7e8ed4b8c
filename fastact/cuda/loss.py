"""Mean cross-entropy of device logits against integer labels, with its gradient in the same kernel.

One thread per row: the row's log-sum-exp shifted by its maximum (``fastact._util.row_max``, the CPU
loss's definition, compiled as a device function: NaN in a row gives NaN), the row's loss, and
``dlogits = (softmax - onehot) / N``.
"""

import math

import numpy as np

from .._util import row_max as _row_max
from ._device import as_device, cached, kernel, launch_1d, require

__all__ = ["cross_entropy"]


def _k_cross_entropy(logits, target, scale, loss_rows, d):
    # logits (N, C), target (N,): loss_rows[i] = logsumexp(row) - row[t]; d = (softmax - onehot) * scale
    N, C = logits.shape
    for i in range(np.int64(cuda.grid(1)), N, np.int64(cuda.gridsize(1))):
        m = row_max(logits[i])
        s = 0.0
        for j in range(C):
            s += math.exp(logits[i, j] - m)
        lse = m + math.log(s)
        t = target[i]
        loss_rows[i] = lse - logits[i, t]
        for j in range(C):
            p = math.exp(logits[i, j] - lse)
            d[i, j] = (p - (1.0 if j == t else 0.0)) * scale


def _kernel():
    return cached("cross_entropy", lambda: kernel(
        _k_cross_entropy, row_max=kernel(_row_max.py_func, device=True)))


def cross_entropy(logits, target):
    """Mean cross-entropy of device logits (N, C) against integer labels: ``(loss, dlogits)``.

    Parameters
    ----------
    logits : device array, shape (N, C)
    target : array of N integers in ``[0, C)``
        A host array (copied to the device) or a device array; labels outside ``[0, C)`` raise a
        ``ValueError`` (checked on a host copy).

    Returns
    -------
    loss : float
        NaN for N = 0.
    dlogits : device array, shape (N, C)
        The gradient of the mean loss.

    Examples
    --------
    >>> import numpy as np
    >>> from fastact import cuda
    >>> loss, d = cuda.cross_entropy(cuda.to_device(np.zeros((2, 4))), np.array([0, 3]))  # doctest: +SKIP
    >>> round(loss, 6)                                                                   # doctest: +SKIP
    1.386294
    """
    cuda = require()
    logits = as_device(logits, "logits")
    if len(logits.shape) != 2:
        raise ValueError(f"cross_entropy: logits must be (N, C), got shape {tuple(logits.shape)}")
    N, C = logits.shape
    t = np.asarray(target.copy_to_host() if hasattr(target, "copy_to_host") else target)
    if t.shape != (N,) or t.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy: target must be {N} integer labels, got shape {t.shape}, "
                         f"dtype {t.dtype}")
    if N and (t.min() < 0 or t.max() >= C):
        raise ValueError(f"cross_entropy: labels must lie in [0, {C}), got {t.min()}..{t.max()}")
    rows = cuda.device_array(N, dtype=np.float64)
    d = cuda.device_array((N, C), dtype=logits.dtype)
    if N == 0:
        return float("nan"), d
    blocks, threads = launch_1d(N)
    _kernel()[blocks, threads](logits, cuda.to_device(t.astype(np.int64)), logits.dtype.type(1.0 / N),
                               rows, d)
    return float(rows.copy_to_host().mean()), d
