"""2-D batch normalisation, forward and backward, optionally fused with a ReLU and a residual add.

Shape key: N batch, C channels, H x W image, L = H*W, M = N*L values per channel. x, y (N, C, H, W);
per-channel arrays (C,). PyTorch's semantics (``torch.nn.functional.batch_norm``):

* training: ``mean`` and the biased ``var`` of each channel over (N, H, W) normalise,
  ``x_hat = (x - mean) / sqrt(var + eps)``, ``y = weight * x_hat + bias``; the running statistics
  move by ``running = (1 - momentum) * running + momentum * batch`` with the *unbiased* variance
  ``var * M / (M - 1)``;
* eval: the running statistics normalise.

Fusion, for the residual block ``y = relu(bn(x)) + skip`` (BatchNorm -> ReLU -> add): the forward is
a statistics pass (training only) and one elementwise pass that writes y; the backward is one
reduction pass (``sum dz`` and ``sum dz * x_hat`` per channel, ``dz = dy * relu'(bn(x))``
recomputed from x, so nothing but x is kept) and one elementwise pass that writes dx. The skip's
gradient is dy itself.

Statistics are accumulated in float64 whatever the input dtype, per (n, c) row (a sum, then the sum
of squared deviations from the row mean, both while the row is in L1: no cancellation of
``E[x^2] - E[x]^2``), and the rows of a channel are combined exactly
(``M2 = sum M2_row + L * sum (mean_row - mean)^2``). The row loops run in parallel over the N*C rows,
so even a layer with few channels uses every core. The elementwise passes compute
``x * scale + shift`` with per-channel ``scale = weight / sigma``, ``shift = bias - mean * scale`` in
the input dtype (PyTorch's CPU kernel does the same), so float32 stays float32 and vectorises.
"""

from collections import namedtuple

import numpy as np

from . import _runtime
from ._util import compute_dtype as _compute_dtype

__all__ = ["batch_norm2d", "batch_norm2d_backward", "BatchNormSaved"]

#: What :func:`batch_norm2d` hands to :func:`batch_norm2d_backward`: the per-channel ``mean`` and
#: ``invstd = 1 / sqrt(var + eps)`` (float64, batch statistics in training, running ones in eval), and
#: the forward's mode: ``training``, ``activation`` (None or 'relu') and ``residual`` (whether a skip
#: was added, so the backward also returns its gradient).
BatchNormSaved = namedtuple("BatchNormSaved", ["mean", "invstd", "training", "activation", "residual"])

_ACTIVATIONS = (None, "relu")


# ------------------------------------------------------------------------------------------ kernels

@_runtime.jit()
def _sum8(r, shift):
    """sum(r - shift) and sum((r - shift)^2) of a 1-D row in float64, eight independent accumulators
    each (one float accumulator is a serial dependency chain that LLVM may not reorder without
    fast-math; eight let the SLP vectoriser pack them)."""
    n = r.size
    n8 = n - n % 8
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
    b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = 0.0
    for j in range(0, n8, 8):
        v0 = np.float64(r[j]) - shift
        v1 = np.float64(r[j + 1]) - shift
        v2 = np.float64(r[j + 2]) - shift
        v3 = np.float64(r[j + 3]) - shift
        v4 = np.float64(r[j + 4]) - shift
        v5 = np.float64(r[j + 5]) - shift
        v6 = np.float64(r[j + 6]) - shift
        v7 = np.float64(r[j + 7]) - shift
        a0 += v0
        a1 += v1
        a2 += v2
        a3 += v3
        a4 += v4
        a5 += v5
        a6 += v6
        a7 += v7
        b0 += v0 * v0
        b1 += v1 * v1
        b2 += v2 * v2
        b3 += v3 * v3
        b4 += v4 * v4
        b5 += v5 * v5
        b6 += v6 * v6
        b7 += v7 * v7
    for j in range(n8, n):
        v = np.float64(r[j]) - shift
        a0 += v
        b0 += v * v
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)), \
        ((b0 + b1) + (b2 + b3)) + ((b4 + b5) + (b6 + b7))


@_runtime.jit(parallel=True)
def _stats(x, row_mean, row_m2, mean, var):
    # x (N, C, L) -> row_mean, row_m2 (N, C) workspaces; mean, var (C,) float64 (biased variance).
    # Per row: the mean (first pass), then the squared deviations from it (second pass, the row still
    # in L1); the shifted sum of the second pass corrects the first pass's rounding of the mean.
    N, C, L = x.shape
    for nc in _runtime.prange(N * C):
        n = nc // C
        c = nc - n * C
        r = x[n, c]
        s, _ = _sum8(r, 0.0)
        m = s / L
        d, q = _sum8(r, m)
        m2 = q - d * d / L
        row_mean[n, c] = m + d / L
        row_m2[n, c] = m2 if m2 > 0.0 else 0.0 * m2
    for c in range(C):
        s = 0.0
        for n in range(N):
            s += row_mean[n, c]
        m = s / N
        q = 0.0
        for n in range(N):
            e = row_mean[n, c] - m
            q += row_m2[n, c] + L * e * e
        mean[c] = m
        var[c] = q / (N * L)


@_runtime.jit(parallel=True)
def _forward(x, scale, shift, skip, relu, y):
    # x, y (N, C, L); scale, shift (C,) in x's dtype; skip (N, C, L) or empty.
    # y = x * scale[c] + shift[c], then relu (NaN kept), then + skip
    N, C, L = x.shape
    add = skip.size != 0
    for nc in _runtime.prange(N * C):
        n = nc // C
        c = nc - n * C
        a = scale[c]
        b = shift[c]
        xr = x[n, c]
        yr = y[n, c]
        if relu and add:
            sr = skip[n, c]
            for j in range(L):
                v = xr[j] * a + b
                yr[j] = (v if (v > 0) | (v != v) else 0.0) + sr[j]
        elif relu:
            for j in range(L):
                v = xr[j] * a + b
                yr[j] = v if (v > 0) | (v != v) else 0.0
        elif add:
            sr = skip[n, c]
            for j in range(L):
                yr[j] = (xr[j] * a + b) + sr[j]
        else:
            for j in range(L):
                yr[j] = xr[j] * a + b


@_runtime.jit()
def _dz_sums(dyr, xr, a, b, relu, m):
    """sum(dz) and sum(dz * (x - m)) over one row in float64, dz = dy * relu'(x * a + b) (or dy)."""
    s0 = s1 = s2 = s3 = 0.0
    t0 = t1 = t2 = t3 = 0.0
    L = xr.size
    L4 = L - L % 4
    for j in range(0, L4, 4):
        g0, g1, g2, g3 = dyr[j], dyr[j + 1], dyr[j + 2], dyr[j + 3]
        x0, x1, x2, x3 = xr[j], xr[j + 1], xr[j + 2], xr[j + 3]
        if relu:
            v0, v1, v2, v3 = x0 * a + b, x1 * a + b, x2 * a + b, x3 * a + b
            g0 = g0 if (v0 > 0) | (v0 != v0) else 0.0 * g0
            g1 = g1 if (v1 > 0) | (v1 != v1) else 0.0 * g1
            g2 = g2 if (v2 > 0) | (v2 != v2) else 0.0 * g2
            g3 = g3 if (v3 > 0) | (v3 != v3) else 0.0 * g3
        d0, d1, d2, d3 = np.float64(g0), np.float64(g1), np.float64(g2), np.float64(g3)
        s0 += d0
        s1 += d1
        s2 += d2
        s3 += d3
        t0 += d0 * (np.float64(x0) - m)
        t1 += d1 * (np.float64(x1) - m)
        t2 += d2 * (np.float64(x2) - m)
        t3 += d3 * (np.float64(x3) - m)
    for j in range(L4, L):
        g0 = dyr[j]
        x0 = xr[j]
        if relu:
            v0 = x0 * a + b
            g0 = g0 if (v0 > 0) | (v0 != v0) else 0.0 * g0
        d0 = np.float64(g0)
        s0 += d0
        t0 += d0 * (np.float64(x0) - m)
    return (s0 + s1) + (s2 + s3), (t0 + t1) + (t2 + t3)


@_runtime.jit(parallel=True)
def _backward_sums(dy, x, mean, scale, shift, relu, row_s, row_t, sdz, sdzx):
    # dy, x (N, C, L); mean (C,) float64; scale, shift (C,) in x's dtype (the forward's, so the ReLU
    # mask is the forward's exactly). -> sdz = sum dz, sdzx = sum dz * (x - mean) (C,) float64,
    # through the (N, C) row workspaces row_s, row_t
    N, C, L = x.shape
    for nc in _runtime.prange(N * C):
        n = nc // C
        c = nc - n * C
        s, t = _dz_sums(dy[n, c], x[n, c], scale[c], shift[c], relu, mean[c])
        row_s[n, c] = s
        row_t[n, c] = t
    for c in range(C):
        s = 0.0
        t = 0.0
        for n in range(N):
            s += row_s[n, c]
            t += row_t[n, c]
        sdz[c] = s
        sdzx[c] = t


@_runtime.jit(parallel=True)
def _backward_dx(dy, x, scale, shift, relu, mean, k, gmean, g, dx):
    # dx = (dz - gmean[c] - (x - mean[c]) * k[c]) * g[c], dz = dy * relu'(x * scale + shift) (or dy);
    # per-channel values in x's dtype. Training: k = sum(dz x_hat) * invstd / M, gmean = sum(dz) / M,
    # g = weight * invstd; eval: k = gmean = 0 (dx = dz * weight * invstd).
    N, C, L = x.shape
    for nc in _runtime.prange(N * C):
        n = nc // C
        c = nc - n * C
        a = scale[c]
        b = shift[c]
        m = mean[c]
        kc = k[c]
        gm = gmean[c]
        gc = g[c]
        xr = x[n, c]
        dyr = dy[n, c]
        dxr = dx[n, c]
        if relu:
            for j in range(L):
                xv = xr[j]
                v = xv * a + b
                d = dyr[j]
                d = d if (v > 0) | (v != v) else 0.0 * d
                dxr[j] = (d - gm - (xv - m) * kc) * gc
        else:
            for j in range(L):
                dxr[j] = (dyr[j] - gm - (xr[j] - m) * kc) * gc


# --------------------------------------------------------------------------------------- functions

def _check_channel_array(a, name, C, fn):
    if a is None:
        return None
    a = np.asarray(a)
    if a.shape != (C,):
        raise ValueError(f"{fn}: {name} has shape {a.shape}, but x has {C} channels (expected ({C},))")
    return a


def _check_x(x, fn):
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"{fn}: expected 4D input (got {x.ndim}D input)")
    return x


def _as3(a, dt):
    """(N, C, H, W) -> C-contiguous (N, C, H*W) in dtype dt (a view when it already is)."""
    N, C, H, W = a.shape
    return np.ascontiguousarray(a, dtype=dt).reshape(N, C, H * W)


def _scale_shift(mean, invstd, weight, bias, dt):
    scale = invstd if weight is None else invstd * weight.astype(np.float64)
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.astype(np.float64)
    return scale.astype(dt), shift.astype(dt)


def batch_norm2d(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
                 momentum=0.1, eps=1e-5, *, activation=None, residual=None, return_saved=False):
    """Batch normalisation of (N, C, H, W) over (N, H, W), optionally ``relu`` and ``+ residual``.

    ``y = act(weight * (x - mean) / sqrt(var + eps) + bias) + residual``, per channel, with ``mean``
    and the biased ``var`` of the batch in training (and the running statistics updated in place),
    the running statistics in eval, as ``torch.nn.functional.batch_norm`` followed by
    ``torch.relu`` and the add.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
    running_mean, running_var : ndarray, shape (C,), or None
        Updated in place in training: ``running = (1 - momentum) * running + momentum * batch``, with
        the unbiased batch variance ``var * M / (M - 1)``, M = N*H*W. Required in eval.
    weight, bias : array_like, shape (C,), or None
        The affine transform (None: 1 and 0).
    training : bool
        Batch statistics (True) or running ones (False).
    momentum : float
        Weight of the batch in the running update (a module with ``momentum=None`` passes
        ``1 / num_batches_tracked``).
    eps : float
        Added to the variance.
    activation : None or 'relu'
        Applied after the affine transform, in the same pass.
    residual : array_like, shape (N, C, H, W), or None
        Added after the activation, in the same pass (the skip of a residual block).
    return_saved : bool
        Also return the :class:`BatchNormSaved` that :func:`batch_norm2d_backward` needs.

    Returns
    -------
    y : ndarray, shape (N, C, H, W), in the compute dtype of x and weight (float32 or float64)
    saved : BatchNormSaved, only with ``return_saved=True``

    Raises
    ------
    ValueError
        x not 4-D, per-channel arrays not of shape (C,), a residual of another shape, training with
        one value per channel (M == 1), eval without running statistics, an unknown activation.

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(4, 1, 1, 1)
    >>> rm, rv = np.zeros(1), np.ones(1)
    >>> fa.batch_norm2d(x, rm, rv, training=True, eps=0.0).ravel()
    array([-1.34164079, -0.4472136 ,  0.4472136 ,  1.34164079])
    >>> rm, rv  # 0.9 * 0 + 0.1 * 2.5, 0.9 * 1 + 0.1 * (5/3)
    (array([0.25]), array([1.06666667]))
    >>> fa.batch_norm2d(x, rm, rv, training=True, eps=0.0, activation="relu", residual=x).ravel()
    array([1.        , 2.        , 3.4472136 , 5.34164079])
    """
    fn = "batch_norm2d"
    x = _check_x(x, fn)
    N, C, H, W = x.shape
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{fn}: activation must be None or 'relu', got {activation!r}")
    running_mean = _check_channel_array(running_mean, "running_mean", C, fn)
    running_var = _check_channel_array(running_var, "running_var", C, fn)
    weight = _check_channel_array(weight, "weight", C, fn)
    bias = _check_channel_array(bias, "bias", C, fn)
    dt = _compute_dtype(x.dtype, *[a.dtype for a in (weight, bias) if a is not None])
    if residual is not None:
        residual = np.asarray(residual)
        if residual.shape != x.shape:
            raise ValueError(f"{fn}: residual has shape {residual.shape}, but x has shape {x.shape}")
        dt = _compute_dtype(dt, residual.dtype)
    M = N * H * W
    if training:
        if M <= 1:
            raise ValueError(f"{fn}: Expected more than 1 value per channel when training, got input "
                             f"size {x.shape}")
        x3 = _as3(x, dt)
        mean = np.empty(C)
        var = np.empty(C)
        _stats(x3, np.empty((N, C)), np.empty((N, C)), mean, var)
        for r in (running_mean, running_var):
            if r is not None and not (isinstance(r, np.ndarray) and r.flags.writeable):
                raise ValueError(f"{fn}: running statistics must be writeable ndarrays")
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += momentum * mean
        if running_var is not None:
            running_var *= 1 - momentum
            running_var += momentum * var * (M / (M - 1))
    else:
        if running_mean is None or running_var is None:
            raise ValueError(f"{fn}: eval mode (training=False) needs running_mean and running_var")
        x3 = _as3(x, dt) if x.size else np.zeros((N, C, H * W), dt)
        mean = running_mean.astype(np.float64)
        var = running_var.astype(np.float64)
    invstd = 1.0 / np.sqrt(var + eps)
    scale, shift = _scale_shift(mean, invstd, weight, bias, dt)
    y = np.empty((N, C, H * W), dtype=dt)
    skip = _as3(residual, dt) if residual is not None else np.empty((0, 0, 0), dt)
    if y.size:
        _forward(x3, scale, shift, skip, activation == "relu", y)
    y = y.reshape(N, C, H, W)
    if return_saved:
        return y, BatchNormSaved(mean, invstd, bool(training), activation, residual is not None)
    return y


def batch_norm2d_backward(dy, x, weight, bias, saved, *, need_dx=True):
    """Gradients of :func:`batch_norm2d` (with its fused ReLU and residual) in two passes.

    With ``x_hat = (x - mean) * invstd``, ``dz = dy * relu'(weight * x_hat + bias)`` (``dz = dy``
    without the activation) and M = N*H*W:

    * training: ``dx = weight * invstd * (dz - mean(dz) - x_hat * mean(dz * x_hat))`` (the batch
      statistics depend on x),
    * eval: ``dx = dz * weight * invstd`` (running statistics are constants),
    * ``dweight = sum(dz * x_hat)``, ``dbias = sum(dz)`` over (N, H, W),
    * the residual's gradient is ``dy`` itself (returned as is, not copied).

    The first pass sums ``dz`` and ``dz * (x - mean)`` per channel in float64; the second writes dx.

    Parameters
    ----------
    dy : array_like, shape (N, C, H, W)
    x : array_like, shape (N, C, H, W)
        The forward's input.
    weight, bias : array_like, shape (C,), or None
        The forward's affine transform.
    saved : BatchNormSaved
        From ``batch_norm2d(..., return_saved=True)``.
    need_dx : bool
        False skips the second pass (dx is None).

    Returns
    -------
    dx : ndarray (N, C, H, W) or None
    dweight, dbias : ndarray (C,) in the compute dtype, or None where weight / bias is None
    dresidual : ndarray (N, C, H, W), only when the forward added a residual (it is ``dy``)

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(4, 1, 1, 1)
    >>> w, b = np.ones(1), np.zeros(1)
    >>> y, saved = fa.batch_norm2d(x, np.zeros(1), np.ones(1), w, b, training=True, eps=0.0,
    ...                            return_saved=True)
    >>> dx, dw, db = fa.batch_norm2d_backward(np.ones((4, 1, 1, 1)), x, w, b, saved)
    >>> dx.ravel(), dw, db  # a constant dy moves nothing: the mean absorbs it
    (array([0., 0., 0., 0.]), array([0.]), array([4.]))
    """
    fn = "batch_norm2d_backward"
    if not isinstance(saved, BatchNormSaved):
        raise TypeError(f"{fn}: saved must be the BatchNormSaved returned by "
                        f"batch_norm2d(..., return_saved=True), got {type(saved).__name__}")
    x = _check_x(x, fn)
    N, C, H, W = x.shape
    dy = np.asarray(dy)
    if dy.shape != x.shape:
        raise ValueError(f"{fn}: dy has shape {dy.shape}, but x has shape {x.shape}")
    if saved.mean.shape != (C,):
        raise ValueError(f"{fn}: saved statistics are for {saved.mean.shape[0]} channels, x has {C}")
    weight = _check_channel_array(weight, "weight", C, fn)
    bias = _check_channel_array(bias, "bias", C, fn)
    dt = _compute_dtype(x.dtype, dy.dtype, *[a.dtype for a in (weight, bias) if a is not None])
    M = N * H * W
    x3, dy3 = _as3(x, dt), _as3(dy, dt)
    relu = saved.activation == "relu"
    scale, shift = _scale_shift(saved.mean, saved.invstd, weight, bias, dt)
    sdz = np.zeros(C)
    sdzx = np.zeros(C)
    if x.size:
        _backward_sums(dy3, x3, saved.mean, scale, shift, relu, np.empty((N, C)), np.empty((N, C)),
                       sdz, sdzx)
    dxhat = sdzx * saved.invstd  # sum dz * x_hat
    dx = None
    if need_dx:
        g = saved.invstd if weight is None else saved.invstd * weight.astype(np.float64)
        if saved.training:
            k = dxhat * saved.invstd / M
            gmean = sdz / M
        else:
            k = gmean = np.zeros(C)
        dx = np.empty((N, C, H * W), dtype=dt)
        if x.size:
            _backward_dx(dy3, x3, scale, shift, relu, saved.mean.astype(dt), k.astype(dt),
                         gmean.astype(dt), g.astype(dt), dx)
        dx = dx.reshape(N, C, H, W)
    dweight = None if weight is None else dxhat.astype(dt)
    dbias = None if bias is None else sdz.astype(dt)
    if saved.residual:
        return dx, dweight, dbias, dy
    return dx, dweight, dbias
