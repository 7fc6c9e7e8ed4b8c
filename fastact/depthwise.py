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

__all__ = ["forward", "forward_s1", "backward_input", "backward_input_s1", "backward_weight"]


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


# Stride 1, the common case, in a wide layout: each input plane is copied into a zero-bordered buffer of
# width Wp = Q + (S-1)*dw, and each output row is computed Wp wide (the extra columns are discarded), so
# that every tap is ONE loop over P*Wp elements, ``yw[i] += w * xp[i + shift]``, which vectorises;
# per-row loops of a few columns cost more in loop overhead than in arithmetic. The buffers are local to
# a chunk of planes, so the compiler sees that they do not alias.

@_runtime.jit(parallel=True)
def forward_s1(x, w, y, pt, pl, dh, dw):
    """:func:`forward` at stride 1 (``y`` (N, K, P, Q) with P = H + pt + pb - (R-1)*dh)."""
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = y.shape[2], y.shape[3]
    m = K // C
    Wp = Q + (S - 1) * dw
    Hp = P + (R - 1) * dh
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    wf = w.reshape(-1)
    planes = N * K
    nch = min(planes, 64)
    for ch in _runtime.prange(nch):
        xp = np.zeros(Hp * Wp + (S - 1) * dw, dtype=x.dtype)
        yw = np.empty(P * Wp, dtype=x.dtype)
        last = -1
        for nk in range(ch * planes // nch, (ch + 1) * planes // nch):
            n = nk // K
            k = nk - n * K
            nc = n * C + k // m
            if nc != last:   # a channel multiplier > 1 reuses the plane
                last = nc
                for h in range(H):
                    if 0 <= h + pt < Hp:
                        nv = min(W, Wp - pl)
                        xp[(h + pt) * Wp + pl:(h + pt) * Wp + pl + nv] = xf[(nc * H + h) * W:(nc * H + h) * W + nv]
            for i in range(P * Wp):
                yw[i] = 0.0
            for r in range(R):
                for s in range(S):
                    wv = wf[(k * R + r) * S + s]
                    shift = r * dh * Wp + s * dw
                    xs = xp[shift:shift + P * Wp]   # a view: i + shift would be a signed index, whose
                    for i in range(P * Wp):          # wraparound check stops the vectoriser (8x here)
                        yw[i] += wv * xs[i]
            for p in range(P):
                yf[(nk * P + p) * Q:(nk * P + p + 1) * Q] = yw[p * Wp:p * Wp + Q]


@_runtime.jit(parallel=True)
def backward_input_s1(dz, w, dx, pt, pl, dh, dw):
    """:func:`backward_input` at stride 1 with ``pt <= (R-1)*dh`` and ``pl <= (S-1)*dw`` (so that dz,
    placed in a zero-bordered buffer, covers every tap): ``dx`` is the convolution of dz with the
    flipped kernel, in the same wide layout as :func:`forward_s1`."""
    N, C, H, W = dx.shape
    K, _, R, S = w.shape
    P, Q = dz.shape[2], dz.shape[3]
    m = K // C
    a = (R - 1) * dh - pt
    b = (S - 1) * dw - pl
    Wq = W + (S - 1) * dw
    Hq = H + (R - 1) * dh
    dzf = dz.reshape(-1)
    dxf = dx.reshape(-1)
    wf = w.reshape(-1)
    planes = N * C
    nch = min(planes, 64)
    for ch in _runtime.prange(nch):
        zp = np.zeros(Hq * Wq + (S - 1) * dw, dtype=dz.dtype)
        xw = np.empty(H * Wq, dtype=dz.dtype)
        for nc in range(ch * planes // nch, (ch + 1) * planes // nch):
            n = nc // C
            c = nc - n * C
            for i in range(H * Wq):
                xw[i] = 0.0
            for k in range(c * m, (c + 1) * m):
                zb = (n * K + k) * P * Q
                for p in range(P):
                    if 0 <= p + a < Hq:
                        nq = min(Q, Wq - b)
                        zp[(p + a) * Wq + b:(p + a) * Wq + b + nq] = dzf[zb + p * Q:zb + p * Q + nq]
                for r in range(R):
                    for s in range(S):
                        wv = wf[(k * R + r) * S + s]
                        shift = (R - 1 - r) * dh * Wq + (S - 1 - s) * dw
                        zs = zp[shift:shift + H * Wq]   # a view, as in forward_s1
                        for i in range(H * Wq):
                            xw[i] += wv * zs[i]
            for h in range(H):
                dxf[(nc * H + h) * W:(nc * H + h + 1) * W] = xw[h * Wq:h * Wq + W]
