"""2-D batch normalisation, forward and backward, optionally fused with a ReLU or ReLU6 and a residual add.

Shape key: N batch, C channels, H x W image, L = H*W, M = N*L values per channel. x, y (N, C, H, W);
per-channel arrays (C,). PyTorch's semantics (``torch.nn.functional.batch_norm``):

* training: ``mean`` and the biased ``var`` of each channel over (N, H, W) normalise,
  ``x_hat = (x - mean) / sqrt(var + eps)``, ``y = weight * x_hat + bias``; the running statistics
  move by ``running = (1 - momentum) * running + momentum * batch`` with the *unbiased* variance
  ``var * M / (M - 1)``;
* eval: the running statistics normalise.

Fusion, for the residual block ``y = relu(bn(x)) + skip`` (BatchNorm -> ReLU -> add) and for
MobileNet's ``relu6(bn(x))`` (BatchNorm -> ReLU6, ``min(max(u, 0), 6)``, NaN kept): the forward is
two statistics passes (training only: the mean, then the variance) and one elementwise pass that
writes y; the backward is one reduction pass (``sum dz`` and ``sum dz * x_hat`` per channel,
``dz = dy * act'(bn(x))`` recomputed from x, so nothing but x is kept) and one elementwise pass that
writes dx. ReLU6's derivative is 1 on (0, 6) and 0 elsewhere (PyTorch's ``hardtanh_backward``); at a
NaN pre-activation both fused activations pass dy. The skip's gradient is dy itself.

Each direction is one kernel, parallel over blocks of channels, that runs a block's passes back to
back while its values are in L2 (``_BLOCK_BYTES``). Within a block each image's values are one
contiguous row, so every pass is one loop over that row per image with per-value "lanes" of the
channel's coefficients: a 2x2 or 1x1 plane vectorises across channels as a large plane does along
itself. Statistics are accumulated in float64 whatever the input dtype, in two passes (the sum gives
the mean, then the sum of squared deviations from it: no cancellation of ``E[x^2] - E[x]^2``), into
float64 lanes (``acc[i] += x[n, i]`` over n vectorises; one scalar accumulator would be a serial
dependency chain that LLVM may not reorder without fast-math). The elementwise passes compute
``x * scale + shift`` with per-channel ``scale = weight / sigma`` and ``shift = bias - mean * scale``
rounded to the input dtype (PyTorch's CPU kernel does the same), so float32 stays float32 and
vectorises.
"""

from collections import namedtuple

import numpy as np

from . import _runtime
from ._util import compute_dtype as _compute_dtype

__all__ = ["batch_norm2d", "batch_norm2d_backward", "BatchNormSaved", "channel_stats"]

#: What :func:`batch_norm2d` hands to :func:`batch_norm2d_backward`: the per-channel ``mean`` and
#: ``invstd = 1 / sqrt(var + eps)`` (float64, batch statistics in training, running ones in eval), and
#: the forward's mode: ``training``, ``activation`` (None, 'relu' or 'relu6') and ``residual`` (whether a skip
#: was added, so the backward also returns its gradient).
BatchNormSaved = namedtuple("BatchNormSaved", ["mean", "invstd", "training", "activation", "residual"])

_ACTIVATIONS = (None, "relu", "relu6")


# ------------------------------------------------------------------------------------------ kernels
# One kernel per direction, parallel over blocks of channels; a block's passes follow each other while
# its N*CB*L values are still in L2 (CB channels, chosen by :func:`_block`). Within a block, the values
# of one image are contiguous (CB*L of them): every pass is one loop over them per image, with
# per-value "lanes" of the channel's statistics or coefficients (a small plane -- 2x2, 1x1 -- vectorises
# across channels as a large one does along its plane). Float64 reductions accumulate into those lanes
# (acc[i] += v over n: an elementwise loop that vectorises, where a scalar accumulator is a serial
# dependency chain LLVM may not reorder without fast-math), then add up each channel's L lanes.

#: the activations fused after the affine transform: their codes in the kernels
_ACT_CODES = {None: 0, "relu": 1, "relu6": 2}

#: bytes of x one channel block should hold at most (its passes then run in L2)
_BLOCK_BYTES = 64 << 10


def _block(N, C, L, itemsize):
    """Channels per block: as many as fit :data:`_BLOCK_BYTES` (at least 1)."""
    return int(max(1, min(C, _BLOCK_BYTES // max(1, N * L * itemsize))))


@_runtime.jit()
def _lane_total(a):
    """Sum of a 1-D float64 array of lanes."""
    s = 0.0
    for j in range(a.size):
        s += a[j]
    return s


@_runtime.jit(inline="always")
def _act(t, act, zero, six):
    """relu (act 1) or relu6 (act 2: min(max(t, 0), 6)) of t, NaN kept; t itself for act 0. ``zero``
    and ``six`` are in t's type, so that a float32 select stays float32."""
    if act == 0:
        return t
    t = t if (t > zero) | (t != t) else zero
    if act == 2:
        t = six if t > six else t
    return t


@_runtime.jit(inline="always")
def _act_mask(d, u, act, zero, six):
    """d where the derivative of relu (act 1) or relu6 (act 2) at u is 1, or where u is NaN; ``0 * d``
    elsewhere (a NaN or inf dy stays NaN, as through the unfused activation's ``dy * act'(u)``)."""
    if act == 1:
        return d if (u > zero) | (u != u) else zero * d
    return d if ((u > zero) & (u < six)) | (u != u) else zero * d


@_runtime.jit(inline="always")
def _constants(a):
    """0 and 6 in a's dtype (``zero + 6`` would be a float64 for a float32 ``zero``)."""
    t = np.empty(2, dtype=a.dtype)
    t[0] = 0.0
    t[1] = 6.0
    return t[0], t[1]


@_runtime.jit(inline="always")
def _coefficients(w, b, mean, invstd, c, sc, sh, o, L):
    """sc, sh[o:o + L] = (scale, shift) = (w * invstd, b - mean * scale) of channel c, rounded to their
    dtype: the same machine code in the forward and the backward, so the backward's activation mask is
    the forward's."""
    s = w[c] * invstd[c]
    sc[o] = s
    sh[o] = b[c] - mean[c] * s
    for j in range(o + 1, o + L):
        sc[j] = sc[o]
        sh[j] = sh[o]


@_runtime.jit(parallel=True)
def _forward(x, w, b, eps, training, act, skip, mean, var, invstd, CB, y):
    # x, y (N, C*L) (the (N, C, L) values of each image in a row); w, b (C,) float64 (ones / zeros
    # without the affine transform); skip like x or empty; mean, var (C,) float64: outputs in training
    # (the biased batch variance), inputs in eval; invstd (C,) float64 out; CB channels per block.
    # Training: pass 1 sums x -> mean; pass 2 sums d = x - mean and d^2 (exact variance; the sum of d
    # corrects the rounding of the mean). Then y = act(x * scale + shift) + skip in one pass, with
    # scale = w * invstd and shift = b - mean * scale rounded to x's dtype.
    N = x.shape[0]
    C = mean.shape[0]
    L = x.shape[1] // C
    M = N * L
    add = skip.size != 0
    nb = (C + CB - 1) // CB
    for blk in _runtime.prange(nb):
        c0 = blk * CB
        c1 = min(C, c0 + CB)
        i0 = c0 * L
        nl = (c1 - c0) * L
        sc = np.empty(nl, dtype=x.dtype)
        sh = np.empty(nl, dtype=x.dtype)
        if training:
            a = np.zeros(nl)
            q = np.zeros(nl)
            ml = np.empty(nl)
            for n in range(N):
                xr = x[n, i0:i0 + nl]
                for i in range(nl):
                    a[i] += np.float64(xr[i])
            for c in range(c0, c1):
                o = (c - c0) * L
                m = _lane_total(a[o:o + L]) / M
                mean[c] = m
                for j in range(L):
                    ml[o + j] = m
            a[:] = 0.0
            for n in range(N):
                xr = x[n, i0:i0 + nl]
                for i in range(nl):
                    d = np.float64(xr[i]) - ml[i]
                    a[i] += d
                    q[i] += d * d
            for c in range(c0, c1):
                o = (c - c0) * L
                ds = _lane_total(a[o:o + L])
                v = (_lane_total(q[o:o + L]) - ds * ds / M) / M
                mean[c] += ds / M
                var[c] = v if v > 0.0 else 0.0 * v  # rounding never makes it negative; NaN stays
        for c in range(c0, c1):
            invstd[c] = 1.0 / np.sqrt(var[c] + eps)
            _coefficients(w, b, mean, invstd, c, sc, sh, (c - c0) * L, L)
        zero, six = _constants(sc)
        for n in range(N):  # one loop per activation: each vectorises with its select inlined
            xr = x[n, i0:i0 + nl]
            yr = y[n, i0:i0 + nl]
            sr = skip[n, i0:i0 + nl] if add else xr
            if act == 0 and not add:
                for i in range(nl):
                    yr[i] = xr[i] * sc[i] + sh[i]
            elif act == 0:
                for i in range(nl):
                    yr[i] = (xr[i] * sc[i] + sh[i]) + sr[i]
            elif act == 1 and not add:
                for i in range(nl):
                    yr[i] = _act(xr[i] * sc[i] + sh[i], 1, zero, six)
            elif act == 1:
                for i in range(nl):
                    yr[i] = _act(xr[i] * sc[i] + sh[i], 1, zero, six) + sr[i]
            elif not add:
                for i in range(nl):
                    yr[i] = _act(xr[i] * sc[i] + sh[i], 2, zero, six)
            else:
                for i in range(nl):
                    yr[i] = _act(xr[i] * sc[i] + sh[i], 2, zero, six) + sr[i]


@_runtime.jit(parallel=True)
def _backward(dy, x, w, b, mean, invstd, training, act, need_input_grad, given, Mt, CB, sdz, sdzx, dx):
    # dy, x, dx (N, C*L); w, b, mean, invstd (C,) float64; sdz, sdzx (C,) float64: out, or in when
    # ``given``. dz = dy * act'(x * scale + shift) (or dy). Pass 1: sdz = sum dz, sdzx = sum dz * (x -
    # mean) (skipped when ``given``: the sums of the whole batch that x is part of, over Mt values).
    # Pass 2: dx = (dz - gmean - (x - mean) * k) * g with g = w * invstd and, in training,
    # gmean = sdz / Mt, k = sdzx * invstd^2 / Mt (eval: both 0), in x's dtype. Mt is N * L unless given.
    N = x.shape[0]
    C = mean.shape[0]
    L = x.shape[1] // C
    nb = (C + CB - 1) // CB
    for blk in _runtime.prange(nb):
        c0 = blk * CB
        c1 = min(C, c0 + CB)
        i0 = c0 * L
        nl = (c1 - c0) * L
        sc = np.empty(nl, dtype=x.dtype)
        sh = np.empty(nl, dtype=x.dtype)
        ml = np.empty(nl)
        for c in range(c0, c1):
            _coefficients(w, b, mean, invstd, c, sc, sh, (c - c0) * L, L)
            for j in range((c - c0) * L, (c - c0 + 1) * L):
                ml[j] = mean[c]
        zero, six = _constants(sc)
        if not given:
            a = np.zeros(nl)
            t2 = np.zeros(nl)
            for n in range(N):
                xr = x[n, i0:i0 + nl]
                dyr = dy[n, i0:i0 + nl]
                if act == 1:
                    for i in range(nl):
                        xv = xr[i]
                        d64 = np.float64(_act_mask(dyr[i], xv * sc[i] + sh[i], 1, zero, six))
                        a[i] += d64
                        t2[i] += d64 * (np.float64(xv) - ml[i])
                elif act == 2:
                    for i in range(nl):
                        xv = xr[i]
                        d64 = np.float64(_act_mask(dyr[i], xv * sc[i] + sh[i], 2, zero, six))
                        a[i] += d64
                        t2[i] += d64 * (np.float64(xv) - ml[i])
                else:
                    for i in range(nl):
                        d64 = np.float64(dyr[i])
                        a[i] += d64
                        t2[i] += d64 * (np.float64(xr[i]) - ml[i])
            for c in range(c0, c1):
                o = (c - c0) * L
                sdz[c] = _lane_total(a[o:o + L])
                sdzx[c] = _lane_total(t2[o:o + L])
        if not need_input_grad:
            continue
        # per-lane coefficients of pass 2 in x's dtype: k, g, the mean and the gradient's mean
        kd = np.empty(nl, dtype=x.dtype)
        gc = np.empty(nl, dtype=x.dtype)
        md = np.empty(nl, dtype=x.dtype)
        gm = np.empty(nl, dtype=x.dtype)
        for c in range(c0, c1):
            o = (c - c0) * L
            kd[o] = sdzx[c] * invstd[c] * invstd[c] / Mt if training else 0.0
            gc[o] = w[c] * invstd[c]
            md[o] = mean[c]
            gm[o] = sdz[c] / Mt if training else 0.0
            for j in range(o + 1, o + L):
                kd[j] = kd[o]
                gc[j] = gc[o]
                md[j] = md[o]
                gm[j] = gm[o]
        for n in range(N):
            xr = x[n, i0:i0 + nl]
            dyr = dy[n, i0:i0 + nl]
            dxr = dx[n, i0:i0 + nl]
            if act == 1:
                for i in range(nl):
                    xv = xr[i]
                    d = _act_mask(dyr[i], xv * sc[i] + sh[i], 1, zero, six)
                    dxr[i] = (d - gm[i] - (xv - md[i]) * kd[i]) * gc[i]
            elif act == 2:
                for i in range(nl):
                    xv = xr[i]
                    d = _act_mask(dyr[i], xv * sc[i] + sh[i], 2, zero, six)
                    dxr[i] = (d - gm[i] - (xv - md[i]) * kd[i]) * gc[i]
            elif training:
                for i in range(nl):
                    dxr[i] = (dyr[i] - gm[i] - (xr[i] - md[i]) * kd[i]) * gc[i]
            else:
                for i in range(nl):
                    dxr[i] = dyr[i] * gc[i]


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


def batch_norm2d(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
                 momentum=0.1, eps=1e-5, *, activation=None, residual=None, return_saved=False,
                 batch_stats=None):
    """Batch normalisation of (N, C, H, W) over (N, H, W), optionally ``relu`` or ``relu6`` and ``+ residual``.

    ``y = act(weight * (x - mean) / sqrt(var + eps) + bias) + residual``, per channel, with ``mean``
    and the biased ``var`` of the batch in training (and the running statistics updated in place),
    the running statistics in eval, as ``torch.nn.functional.batch_norm`` followed by
    ``torch.relu`` (or ``relu6``) and the add.

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
    activation : None, 'relu' or 'relu6'
        Applied after the affine transform, in the same pass (``'relu6'``: ``min(max(u, 0), 6)``, as
        ``torch.nn.functional.relu6`` / ``hardtanh(u, 0, 6)``; NaN stays NaN).
    residual : array_like, shape (N, C, H, W), or None
        Added after the activation, in the same pass (the skip of a residual block).
    return_saved : bool
        Also return the :class:`BatchNormSaved` that :func:`batch_norm2d_backward` needs.
    batch_stats : (mean, var, count) or None
        Training only: the statistics of the whole batch that x is one part of -- per-channel float64
        ``mean`` and biased ``var``, and ``count``, the values per channel over all parts -- used
        instead of x's own (synchronised BatchNorm over processes, :mod:`fastact.distributed`; the
        running variance takes the unbiased ``var * count / (count - 1)``). :func:`channel_stats`
        gives a part's own.

    Returns
    -------
    y : ndarray, shape (N, C, H, W), in the compute dtype of x and weight (float32 or float64)
    saved : BatchNormSaved, only with ``return_saved=True``

    Raises
    ------
    ValueError
        x not 4-D, per-channel arrays not of shape (C,), a residual of another shape, training with
        one value per channel (M == 1), eval without running statistics, an unknown activation. An
        empty batch (M == 0) gives an empty y and leaves the running statistics alone, as PyTorch.

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
        raise ValueError(f"{fn}: activation must be None, 'relu' or 'relu6', got {activation!r}")
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
    Ms = M  # the values per channel that the statistics are over
    if training and batch_stats is not None:
        mean, var, Ms = batch_stats
        mean = np.array(_check_channel_array(mean, "batch_stats mean", C, fn), dtype=np.float64)
        var = np.array(_check_channel_array(var, "batch_stats var", C, fn), dtype=np.float64)
        Ms = int(Ms)
    if training:
        if Ms == 1:
            raise ValueError(f"{fn}: Expected more than 1 value per channel when training, got input "
                             f"size {x.shape}")
        for r in (running_mean, running_var):
            if r is not None and not (isinstance(r, np.ndarray) and r.flags.writeable):
                raise ValueError(f"{fn}: running statistics must be writeable ndarrays")
        if batch_stats is None:
            mean = np.empty(C)
            var = np.empty(C)
    else:
        if running_mean is None or running_var is None:
            raise ValueError(f"{fn}: eval mode (training=False) needs running_mean and running_var")
        mean = running_mean.astype(np.float64)
        var = running_var.astype(np.float64)
    x3 = _as3(x, dt)
    # (N, C*L) rows: one image's values of every channel in a row
    skip = _as3(residual, dt).reshape(N, C * H * W) if residual is not None else np.empty((0, 0), dt)
    invstd = np.empty(C)
    y = np.empty((N, C, H * W), dtype=dt)
    w64 = np.ones(C) if weight is None else weight.astype(np.float64)
    b64 = np.zeros(C) if bias is None else bias.astype(np.float64)
    if y.size:
        # given batch statistics normalise as running ones do (the kernel's eval path)
        _forward(x3.reshape(N, C * H * W), w64, b64, float(eps), bool(training) and batch_stats is None,
                 _ACT_CODES[activation], skip, mean, var, invstd, _block(N, C, H * W, y.itemsize),
                 y.reshape(N, C * H * W))
    else:  # an empty batch (as PyTorch: an empty y, the running statistics left alone)
        if training and batch_stats is None:
            mean[:] = 0.0
            var[:] = 1.0
        invstd[:] = 1.0 / np.sqrt(var + eps)
    if training and Ms:
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += momentum * mean
        if running_var is not None:
            running_var *= 1 - momentum
            running_var += momentum * var * (Ms / (Ms - 1))
    y = y.reshape(N, C, H, W)
    if return_saved:
        return y, BatchNormSaved(mean, invstd, bool(training), activation, residual is not None)
    return y


def batch_norm2d_backward(dy, x, weight, bias, saved, *, need_input_grad=True, reduce=None):
    """Gradients of :func:`batch_norm2d` (with its fused ReLU or ReLU6 and residual) in two passes.

    With ``x_hat = (x - mean) * invstd``, ``dz = dy * act'(weight * x_hat + bias)`` (``dz = dy``
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
    need_input_grad : bool
        False skips the second pass (dx is None).
    reduce : callable or None
        Training only, with the forward's ``batch_stats``: ``reduce(sums, count) -> (sums, count)``
        turns this part's per-channel sums, a (2, C) float64 array (``sum dz``,
        ``sum dz * (x - mean)``), and its M into those of the whole batch (an allreduce over the
        processes); dx then uses the whole batch's, as synchronised BatchNorm does. It is called
        even for an empty part. dweight and dbias stay this part's sums.

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
    x3, dy3 = _as3(x, dt), _as3(dy, dt)
    w64 = np.ones(C) if weight is None else weight.astype(np.float64)
    b64 = np.zeros(C) if bias is None else bias.astype(np.float64)
    sdz = np.zeros(C)
    sdzx = np.zeros(C)
    dx = np.empty((N, C, H * W), dtype=dt) if need_input_grad else np.empty((0, 0, 0), dt)
    M = N * H * W
    act = _ACT_CODES[saved.activation]
    CB = _block(N, C, H * W, x3.itemsize)
    x2, dy2 = x3.reshape(N, C * H * W), dy3.reshape(N, C * H * W)
    dx2 = dx.reshape(N, C * H * W) if need_input_grad else np.empty((0, 0), dt)
    if reduce is not None and saved.training:
        # this part's sums (pass 1 only), the whole batch's from ``reduce``, then pass 2 with them
        if x.size:
            _backward(dy2, x2, w64, b64, saved.mean, saved.invstd, True, act, False, False, float(M), CB,
                      sdz, sdzx, dx2)
        sums, total = reduce(np.stack([sdz, sdzx]), M)
        gsdz, gsdzx = (np.array(s, dtype=np.float64) for s in sums)
        if need_input_grad and x.size:
            _backward(dy2, x2, w64, b64, saved.mean, saved.invstd, True, act, True, True, float(total), CB,
                      gsdz, gsdzx, dx2)
    elif x.size:
        _backward(dy2, x2, w64, b64, saved.mean, saved.invstd, saved.training, act, bool(need_input_grad),
                  False, float(M), CB, sdz, sdzx, dx2)
    dxhat = sdzx * saved.invstd  # sum dz * x_hat
    dx = dx.reshape(N, C, H, W) if need_input_grad else None
    dweight = None if weight is None else dxhat.astype(dt)
    dbias = None if bias is None else sdz.astype(dt)
    if saved.residual:
        return dx, dweight, dbias, dy
    return dx, dweight, dbias


def channel_stats(x):
    """(mean, var, count) of each channel of x (N, C, H, W) over (N, H, W): float64 ``mean`` and biased
    ``var`` (two passes: no cancellation), and ``count = N*H*W`` -- one part's statistics, which
    synchronised BatchNorm combines over processes into ``batch_stats`` of :func:`batch_norm2d`.

    Examples
    --------
    >>> import numpy as np
    >>> from fastact.batchnorm import channel_stats
    >>> channel_stats(np.array([1.0, 2.0, 3.0, 4.0]).reshape(4, 1, 1, 1))
    (array([2.5]), array([1.25]), 4)
    """
    x = _check_x(x, "channel_stats")
    N, C, H, W = x.shape
    M = N * H * W
    if M == 0:
        return np.zeros(C), np.zeros(C), 0
    x3 = x.reshape(N, C, H * W)
    mean = x3.sum(axis=(0, 2), dtype=np.float64) / M
    d = x3.astype(np.float64, copy=False) - mean[None, :, None]
    ds = d.sum(axis=(0, 2))
    var = ((d * d).sum(axis=(0, 2)) - ds * ds / M) / M
    return mean + ds / M, np.maximum(var, 0.0), M
