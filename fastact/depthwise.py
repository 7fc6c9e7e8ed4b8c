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


# Channels-last, for small planes and strides > 1 (channel multiplier 1). Each image's block of channels
# is transposed into a local (H*W, Cb) buffer, so that every tap of every output pixel is one loop over
# the block's channels (unit stride, vectorises whatever the plane's size or the stride); taps outside
# the image are skipped per output row, as in :func:`forward`. The result is transposed back into the
# NCHW output. A chunk of images per parallel iteration: one fork/join per call.

@_runtime.jit(parallel=True)
def forward_cl(x, wt, y, sh, sw, pt, pl, dh, dw, R, S, CB):
    """:func:`forward` for ``K == C``: ``wt`` (R*S, C) is the weight transposed, ``CB`` the channels
    per block."""
    N, C, H, W = x.shape
    P, Q = y.shape[2], y.shape[3]
    HW = H * W
    PQ = P * Q
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    wf = wt.reshape(-1)
    nch = min(N, 16)
    for ch in _runtime.prange(nch):
        xt = np.empty(HW * CB, dtype=x.dtype)
        yt = np.empty(PQ * CB, dtype=x.dtype)
        for n in range(ch * N // nch, (ch + 1) * N // nch):
            for c0 in range(0, C, CB):
                cb = min(CB, C - c0)
                xb = (n * C + c0) * HW
                for j in range(HW):
                    xr = xt[j * cb:(j + 1) * cb]
                    for c in range(cb):
                        xr[c] = xf[xb + c * HW + j]
                for i in range(PQ * cb):
                    yt[i] = 0.0
                for p in range(P):
                    for r in range(R):
                        h = p * sh - pt + r * dh
                        if 0 <= h < H:
                            for s in range(S):
                                q0, q1 = _columns(Q, W, sw, pl, s, dw)
                                ws = wf[(r * S + s) * C + c0:(r * S + s) * C + c0 + cb]
                                for q in range(q0, q1):
                                    v = h * W + q * sw - pl + s * dw
                                    xs = xt[v * cb:(v + 1) * cb]
                                    ys = yt[(p * Q + q) * cb:(p * Q + q + 1) * cb]
                                    for c in range(cb):
                                        ys[c] += ws[c] * xs[c]
                yb = (n * C + c0) * PQ
                for c in range(cb):
                    for t in range(PQ):
                        yf[yb + c * PQ + t] = yt[t * cb + c]


@_runtime.jit(parallel=True)
def backward_cl(dz, x, wt, dx, dwt, db, sh, sw, pt, pl, dh, dw, R, S, CB, need_input_grad):
    """Both gradients of :func:`forward_cl` in one pass over the images: ``dx`` (N, C, H, W) overwritten
    when ``need_input_grad``; ``dwt`` (R*S*C,) and ``db`` (C,) float64, overwritten with
    ``sum dz * x`` per tap and ``sum dz`` (the bias gradient), accumulated in float64 per chunk of
    images."""
    N, C, H, W = x.shape
    P, Q = dz.shape[2], dz.shape[3]
    HW = H * W
    PQ = P * Q
    xf = x.reshape(-1)
    zf = dz.reshape(-1)
    dxf = dx.reshape(-1)
    wf = wt.reshape(-1)
    nch = min(N, 16)
    dwp = np.zeros((nch, R * S * C))
    dbp = np.zeros((nch, C))
    for ch in _runtime.prange(nch):
        xt = np.empty(HW * CB, dtype=x.dtype)
        zt = np.empty(PQ * CB, dtype=x.dtype)
        gt = np.empty(HW * CB if need_input_grad else 0, dtype=x.dtype)
        dwc = dwp[ch]
        dbc = dbp[ch]
        for n in range(ch * N // nch, (ch + 1) * N // nch):
            for c0 in range(0, C, CB):
                cb = min(CB, C - c0)
                xb = (n * C + c0) * HW
                zb = (n * C + c0) * PQ
                for j in range(HW):
                    xr = xt[j * cb:(j + 1) * cb]
                    for c in range(cb):
                        xr[c] = xf[xb + c * HW + j]
                for t in range(PQ):
                    zr = zt[t * cb:(t + 1) * cb]
                    for c in range(cb):
                        zr[c] = zf[zb + c * PQ + t]
                dbs = dbc[c0:c0 + cb]
                for t in range(PQ):
                    zr = zt[t * cb:(t + 1) * cb]
                    for c in range(cb):
                        dbs[c] += np.float64(zr[c])
                if need_input_grad:
                    for i in range(HW * cb):
                        gt[i] = 0.0
                for p in range(P):
                    for r in range(R):
                        h = p * sh - pt + r * dh
                        if 0 <= h < H:
                            for s in range(S):
                                q0, q1 = _columns(Q, W, sw, pl, s, dw)
                                rs = (r * S + s) * C + c0
                                ws = wf[rs:rs + cb]
                                dws = dwc[rs:rs + cb]
                                for q in range(q0, q1):
                                    v = h * W + q * sw - pl + s * dw
                                    xs = xt[v * cb:(v + 1) * cb]
                                    zs = zt[(p * Q + q) * cb:(p * Q + q + 1) * cb]
                                    for c in range(cb):
                                        dws[c] += np.float64(zs[c]) * np.float64(xs[c])
                                    if need_input_grad:
                                        gs = gt[v * cb:(v + 1) * cb]
                                        for c in range(cb):
                                            gs[c] += ws[c] * zs[c]
                if need_input_grad:
                    for c in range(cb):
                        for j in range(HW):
                            dxf[xb + c * HW + j] = gt[j * cb + c]
    dwt[:] = 0.0
    db[:] = 0.0
    for ch in range(nch):
        for i in range(R * S * C):
            dwt[i] += dwp[ch, i]
        for c in range(C):
            db[c] += dbp[ch, c]
