"""Depthwise convolution (``groups == in_channels``): each output channel reads one input channel.

im2col would unfold every input channel into R*S rows only to multiply each by one weight row, so
these kernels loop directly: per (image, output channel) plane, for each tap (r, s) of the kernel, the
range of output columns whose input column lies inside the image is computed once, and the loop over
those columns is a plain multiply-add that vectorises at stride 1. Taps outside the image are skipped,
not multiplied by a zero (a NaN or inf there stays out of the sum, as in the direct definition).

The layout is PyTorch's: ``x`` (N, C, H, W), ``weight`` (K, 1, R, S) with ``K = C * m`` (output channel
``k`` reads input channel ``k // m``), ``y`` (N, K, P, Q). The bias and the activation are applied
afterwards by the convolution's in-place epilogue (:func:`fastact.conv2d`).
"""

import numpy as np

from . import _runtime

__all__ = ["forward", "backward_input", "backward_weight"]


@_runtime.jit(inline="always")
def _columns(Q, W, sw, pl, s, dw):
    """[q0, q1): the output columns whose input column ``q*sw - pl + s*dw`` lies in [0, W)."""
    off = s * dw - pl
    q0 = 0 if off >= 0 else (-off + sw - 1) // sw
    q1 = (W - 1 - off) // sw + 1 if W - 1 - off >= 0 else 0
    return q0, max(q0, min(Q, q1))


@_runtime.jit(parallel=True)
def forward(x, w, y, sh, sw, pt, pl, dh, dw):
    """``y[n, k, p, q] = sum_{r,s} w[k, 0, r, s] * x[n, k // m, p*sh - pt + r*dh, q*sw - pl + s*dw]``
    over the taps inside the image (no bias, no activation)."""
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = y.shape[2], y.shape[3]
    m = K // C
    xf = x.reshape(-1)   # flat offsets: a view per row or plane would cost more than the plane's work
    yf = y.reshape(-1)
    wf = w.reshape(-1)
    for nk in _runtime.prange(N * K):
        n = nk // K
        k = nk - n * K
        xb = (n * C + k // m) * H * W
        yb = nk * P * Q
        for t in range(P * Q):
            yf[yb + t] = 0.0
        for r in range(R):
            for s in range(S):
                wv = wf[(k * R + r) * S + s]
                q0, q1 = _columns(Q, W, sw, pl, s, dw)
                off = s * dw - pl
                for p in range(P):
                    h = p * sh - pt + r * dh
                    if 0 <= h < H:
                        yo = yb + p * Q
                        xo = xb + h * W + off
                        if sw == 1:   # unit stride known to the compiler: the loop vectorises
                            for q in range(q0, q1):
                                yf[yo + q] += wv * xf[xo + q]
                        else:
                            for q in range(q0, q1):
                                yf[yo + q] += wv * xf[xo + q * sw]


@_runtime.jit(parallel=True)
def backward_input(dz, w, dx, sh, sw, pt, pl, dh, dw):
    """``dx`` (N, C, H, W), overwritten: the gradient of :func:`forward`'s input given ``dz``."""
    N, C, H, W = dx.shape
    K, _, R, S = w.shape
    P, Q = dz.shape[2], dz.shape[3]
    m = K // C
    dxf = dx.reshape(-1)
    dzf = dz.reshape(-1)
    wf = w.reshape(-1)
    for nc in _runtime.prange(N * C):
        n = nc // C
        c = nc - n * C
        xb = nc * H * W
        for t in range(H * W):
            dxf[xb + t] = 0.0
        for k in range(c * m, (c + 1) * m):
            zb = (n * K + k) * P * Q
            for r in range(R):
                for s in range(S):
                    wv = wf[(k * R + r) * S + s]
                    q0, q1 = _columns(Q, W, sw, pl, s, dw)
                    off = s * dw - pl
                    for p in range(P):
                        h = p * sh - pt + r * dh
                        if 0 <= h < H:
                            zo = zb + p * Q
                            xo = xb + h * W + off
                            if sw == 1:
                                for q in range(q0, q1):
                                    dxf[xo + q] += wv * dzf[zo + q]
                            else:
                                for q in range(q0, q1):
                                    dxf[xo + q * sw] += wv * dzf[zo + q]


@_runtime.jit(parallel=True)
def backward_weight(dz, x, dw_out, sh, sw, pt, pl, dh, dw):
    """``dw_out`` (K, 1, R, S): the gradient of :func:`forward`'s weight given ``dz``, each sum over
    (n, p, q) accumulated in float64 per output column (so the loop over columns vectorises)."""
    N, C, H, W = x.shape
    K, _, R, S = dw_out.shape
    P, Q = dz.shape[2], dz.shape[3]
    m = K // C
    xf = x.reshape(-1)
    dzf = dz.reshape(-1)
    dwf = dw_out.reshape(-1)
    for krs in _runtime.prange(K * R * S):
        k = krs // (R * S)
        rs = krs - k * (R * S)
        r = rs // S
        s = rs - r * S
        c = k // m
        q0, q1 = _columns(Q, W, sw, pl, s, dw)
        off = s * dw - pl
        acc = np.zeros(max(q1 - q0, 1))
        for n in range(N):
            xb = (n * C + c) * H * W
            zb = (n * K + k) * P * Q
            for p in range(P):
                h = p * sh - pt + r * dh
                if 0 <= h < H:
                    zo = zb + p * Q
                    xo = xb + h * W + off
                    if sw == 1:
                        for q in range(q0, q1):
                            acc[q - q0] += np.float64(dzf[zo + q]) * np.float64(xf[xo + q])
                    else:
                        for q in range(q0, q1):
                            acc[q - q0] += np.float64(dzf[zo + q]) * np.float64(xf[xo + q * sw])
        dwf[krs] = acc.sum() if q1 > q0 else 0.0
