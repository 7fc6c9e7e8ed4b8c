"""Depthwise convolution (``groups == in_channels``): each output channel reads one input channel.

im2col would unfold every input channel into R*S rows only to multiply each by one weight row, so
these kernels loop directly: per (image, output channel) plane, for each tap (r, s) of the kernel, the
range of output columns whose input column lies inside the image is computed once, and the loop over
those columns is a plain multiply-add that vectorises at stride 1. Taps outside the image are skipped,
not multiplied by a zero (a NaN or inf there stays out of the sum, as in the direct definition).

The layout is PyTorch's: ``x`` (N, C, H, W), ``weight`` (K, 1, R, S) with ``K = C * m`` (output channel
``k`` reads input channel ``k // m``), ``y`` (N, K, P, Q). The bias and the activation are applied
afterwards by the convolution's in-place epilogue (:func:`fastact.conv2d`).

Those kernels work plane by plane, which small planes (MobileNet's 8x8 down to 1x1 at CIFAR size) and
strides do not suit: a 2x2 plane is 4 values per loop. With a multiplier of 1 (``K == C``, every
MobileNet), :func:`conv_forward` and :func:`conv_backward` run channels-last kernels instead
(:func:`forward_cl`, :func:`backward_cl`): each image is transposed into a (pixels, channels) buffer
by 8x8 register tiles (:func:`_tile`: AVX shuffles emitted as LLVM shufflevectors), so every loop runs
over a row of pixels times the channels, whatever the plane's size or stride; the weight and bias
gradients come out of the same pass as the input gradient. The plane kernels stay the general path
(multipliers above 1).
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import _runtime

__all__ = ["forward", "forward_s1", "backward_input", "backward_input_s1", "backward_weight", "forward_cl",
           "backward_cl"]


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


# Channels-last (multiplier 1), for small planes and strides > 1. Each image's block of cb channels is
# transposed into a local zero-bordered buffer of Hp rows, Wp columns and cb values per pixel, the
# columns stored by phase of the stride (padded column j at (j % sw) * Ws + j // sw), so that the
# pixels one tap reads for a row of outputs are contiguous: every (output row, tap) is then ONE loop
# over Q*cb values, against the tap's weights tiled Q times ("lanes"), which vectorises whatever the
# plane's size or the stride. A 3x3 kernel sums its 9 taps per output in registers (one store per
# output); other kernels add tap by tap. The result is transposed back into the NCHW output. A chunk of
# images per parallel iteration: one fork/join per call.

@_runtime.jit(inline="always")
def _col(j, sw, Ws):
    """Where padded column j is stored: by phase of the stride."""
    return (j % sw) * Ws + j // sw


def _shuffle(builder, a, b, mask):
    i32 = ir.IntType(32)
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(i32, len(mask)), [ir.Constant(i32, m) for m in mask]))


@intrinsic
def _tile(typingctx, src, soff, dst, doff, A, B):
    """Transpose one A x B tile: ``dst[doff[k] + j] = src[soff[j] + k]`` for j < A, k < B, with A and B
    literal: A vector loads of B values, B vector stores of A values. An 8 x 8 float32 or 4 x 4 float64
    tile (one AVX register a row) goes through the classic unpack / shuffle / 128-bit-permute network,
    as LLVM shufflevectors (vunpcklps, vshufps, vperm2f128 on x86-64; any target lowers them); other
    shapes (8 x 4, 4 x 8) through one shuffle per stored row of the rows concatenated. Unchecked: the
    caller keeps every row inside its array."""
    if not all(isinstance(a, types.Array) and a.ndim == 1 for a in (src, soff, dst, doff)):
        return None
    if src.dtype != dst.dtype or src.dtype not in (types.float32, types.float64) \
            or soff.dtype != types.int64 or doff.dtype != types.int64:
        return None
    if not (isinstance(A, types.IntegerLiteral) and isinstance(B, types.IntegerLiteral)):
        return None
    sig = types.void(src, soff, dst, doff, A, B)
    A, B = A.literal_value, B.literal_value
    if A not in (4, 8) or B not in (4, 8):
        return None

    def codegen(context, builder, signature, args):
        sdata, soffs, ddata, doffs = (context.make_array(t)(context, builder, v).data
                                      for t, v in zip(signature.args[:4], args[:4]))
        ety = context.get_data_type(src.dtype)
        align = 4 if src.dtype == types.float32 else 8   # unaligned vectors: the values' own alignment
        vin, vout = ir.VectorType(ety, B), ir.VectorType(ety, A)
        rows = []
        for j in range(A):
            p = cgutils.gep(builder, sdata, builder.load(cgutils.gep(builder, soffs, j)))
            rows.append(builder.load(builder.bitcast(p, vin.as_pointer()), align=align, typ=vin))
        if A == B == 8:
            t = []
            for j in range(0, 8, 2):
                t += [_shuffle(builder, rows[j], rows[j + 1], [0, 8, 1, 9, 4, 12, 5, 13]),
                      _shuffle(builder, rows[j], rows[j + 1], [2, 10, 3, 11, 6, 14, 7, 15])]
            lo, hi = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
            u = [_shuffle(builder, t[a], t[a + 2], m) for a in (0, 1, 4, 5) for m in (lo, hi)]
            out = [_shuffle(builder, u[k], u[k + 4], [0, 1, 2, 3, 8, 9, 10, 11]) for k in range(4)] + \
                  [_shuffle(builder, u[k], u[k + 4], [4, 5, 6, 7, 12, 13, 14, 15]) for k in range(4)]
        elif A == B == 4:
            t = [_shuffle(builder, rows[a], rows[a + 1], m) for a in (0, 2) for m in ([0, 4, 2, 6], [1, 5, 3, 7])]
            out = [_shuffle(builder, t[0], t[2], [0, 1, 4, 5]), _shuffle(builder, t[1], t[3], [0, 1, 4, 5]),
                   _shuffle(builder, t[0], t[2], [2, 3, 6, 7]), _shuffle(builder, t[1], t[3], [2, 3, 6, 7])]
        else:
            cat = rows
            while len(cat) > 1:   # concatenate: pairs of n-vectors into 2n-vectors
                n = cat[0].type.count
                cat = [_shuffle(builder, cat[i], cat[i + 1], list(range(2 * n))) for i in range(0, len(cat), 2)]
            whole = cat[0]
            out = [_shuffle(builder, whole, whole, [j * B + k for j in range(A)]) for k in range(B)]
        for k in range(B):
            p = cgutils.gep(builder, ddata, builder.load(cgutils.gep(builder, doffs, k)))
            builder.store(out[k], builder.bitcast(p, vout.as_pointer()), align=align)
        return context.get_dummy_value()

    return sig, codegen


@_runtime.jit(inline="always")
def _pixmap(H, W, Wp, sw, top, left):
    """Where each of the H*W pixels of a plane is stored in a buffer of Wp columns by phase of the stride
    (:func:`_col`), ``top`` rows and ``left`` columns in; computed once per call (an integer division
    per value would cost more than the copy)."""
    Ws = (Wp + sw - 1) // sw
    pix = np.empty(H * W, dtype=np.int64)
    for h in range(H):
        for v in range(W):
            pix[h * W + v] = (h + top) * Wp + _col(v + left, sw, Ws)
    return pix


@_runtime.jit()
def _to_cl(src, base, HW, cb, dst, pix, so, do):
    """dst[pix[j] * cb + c] = src[base + c * HW + j] for the cb channels and HW pixels of a plane:
    T x T tiles (:func:`_tile`) where HW is a multiple of T, and one loop per pixel over the channels
    (reads HW apart) on small planes and for the channels left over."""
    T = so.size
    cT = cb - cb % T if HW % T == 0 or (T == 8 and HW == 4) else 0
    if T == 8 and HW == 4:   # 2x2 float32 planes: 8 channels x 4 pixels a tile
        for c0 in range(0, cT, 8):
            for j in range(8):
                so[j] = base + (c0 + j) * 4
            for j in range(4):
                do[j] = pix[j] * cb + c0
            _tile(src, so, dst, do, 8, 4)
    elif T == 8:
        for c0 in range(0, cT, 8):
            for j0 in range(0, HW, 8):
                for j in range(8):
                    so[j] = base + (c0 + j) * HW + j0
                    do[j] = pix[j0 + j] * cb + c0
                _tile(src, so, dst, do, 8, 8)
    else:
        for c0 in range(0, cT, 4):
            for j0 in range(0, HW, 4):
                for j in range(4):
                    so[j] = base + (c0 + j) * HW + j0
                    do[j] = pix[j0 + j] * cb + c0
                _tile(src, so, dst, do, 4, 4)
    if HW == 1:   # 1x1 planes: NCHW is channels-last already
        d = dst[pix[0] * cb:pix[0] * cb + cb]
        sr = src[base:base + cb]
        for c in range(cb):
            d[c] = sr[c]
        return
    for j in range(HW):
        d = dst[pix[j] * cb:pix[j] * cb + cb]
        for c in range(cT, cb):
            d[c] = src[base + c * HW + j]


@_runtime.jit()
def _from_cl(src, HW, cb, pix, dst, base, so, do):
    """The inverse of :func:`_to_cl`: dst[base + c * HW + j] = src[pix[j] * cb + c]."""
    T = so.size
    cT = cb - cb % T if HW % T == 0 or (T == 8 and HW == 4) else 0
    if T == 8 and HW == 4:
        for c0 in range(0, cT, 8):
            for j in range(4):
                so[j] = pix[j] * cb + c0
            for j in range(8):
                do[j] = base + (c0 + j) * 4
            _tile(src, so, dst, do, 4, 8)
    elif T == 8:
        for c0 in range(0, cT, 8):
            for j0 in range(0, HW, 8):
                for j in range(8):
                    so[j] = pix[j0 + j] * cb + c0
                    do[j] = base + (c0 + j) * HW + j0
                _tile(src, so, dst, do, 8, 8)
    else:
        for c0 in range(0, cT, 4):
            for j0 in range(0, HW, 4):
                for j in range(4):
                    so[j] = pix[j0 + j] * cb + c0
                    do[j] = base + (c0 + j) * HW + j0
                _tile(src, so, dst, do, 4, 4)
    if HW == 1:
        sr = src[pix[0] * cb:pix[0] * cb + cb]
        d = dst[base:base + cb]
        for c in range(cb):
            d[c] = sr[c]
        return
    for j in range(HW):
        sr = src[pix[j] * cb:pix[j] * cb + cb]
        for c in range(cT, cb):
            dst[base + c * HW + j] = sr[c]


@_runtime.jit(inline="always")
def _chunks(N, size):
    """Chunks of images the channels-last kernels split a batch into: up to 16 (load balance on a
    loaded machine), fewer for small inputs (each chunk zeroes its buffers and adds up its weight
    gradient lanes: 1x1 planes spent more on that than on the convolution)."""
    return max(1, min(N, 16, size // 32768))


@_runtime.jit(inline="always")
def _lanes(wt, C, R, S, Q, c0, cb, wl):
    """wl[(rs * Q + q) * cb + c] = wt[rs, c0 + c]: each tap's weights of the block tiled Q times."""
    for rs in range(R * S):
        for q in range(Q):
            d = wl[(rs * Q + q) * cb:(rs * Q + q + 1) * cb]
            for c in range(cb):
                d[c] = wt[rs, c0 + c]


@_runtime.jit()
def _load_cl(xf, base, H, W, h1, v1, cb, xt, pix, so, do):
    """:func:`_to_cl` of the first h1 rows and v1 columns of the plane (those some tap reads)."""
    if h1 == H and v1 == W:
        _to_cl(xf, base, H * W, cb, xt, pix, so, do)
    else:
        for c in range(cb):
            for h in range(h1):
                for v in range(v1):
                    xt[pix[h * W + v] * cb + c] = xf[base + (c * H + h) * W + v]


@_runtime.jit()
def _forward_images(x, wl, y, n0, n1, sh, sw, pt, pl, dh, dw, R, S, CB, pix, piy, dense):
    """:func:`forward_cl` of the images n0 to n1 (one chunk; ``wl`` the weight lanes, ``pix`` and
    ``piy`` the pixel maps of the input buffer and of the output). A function of its own, compiled once
    for the serial and the parallel kernel (the parallel one then only splits the batch)."""
    N, C, H, W = x.shape
    P, Q = y.shape[2], y.shape[3]
    Wp = (Q - 1) * sw + (S - 1) * dw + 1
    Hp = (P - 1) * sh + (R - 1) * dh + 1
    Ws = (Wp + sw - 1) // sw
    h1 = min(H, Hp - pt)   # the input rows and columns that some tap reads
    v1 = min(W, Wp - pl)
    T = 8 if x.itemsize == 4 else 4   # the values of a transposed tile (one AVX register)
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    xt = np.zeros(Hp * Wp * CB, dtype=x.dtype)   # the border stays 0: only the inside is written
    yt = np.empty(P * Q * CB, dtype=x.dtype)
    so = np.empty(T, dtype=np.int64)
    do = np.empty(T, dtype=np.int64)
    last = CB
    for n in range(n0, n1):
        for c0 in range(0, C, CB):
            cb = min(CB, C - c0)
            if cb != last:   # a narrower last block: another layout, whose border is zeroed anew
                xt[:] = 0.0
                last = cb
            _load_cl(xf, (n * C + c0) * H * W, H, W, h1, v1, cb, xt, pix, so, do)
            wb = wl[R * S * Q * c0:R * S * Q * (c0 + cb)]
            L = Q * cb
            if dense:
                # one view per tap (an index ``o + i`` would be signed, and its wraparound check
                # stops the vectoriser); two output rows per loop, which share the weights' loads
                # and, at stride 1, two input rows
                k1 = _col(dw, sw, Ws) * cb
                k2 = _col(2 * dw, sw, Ws) * cb
                w0 = wb[0:L]
                w1 = wb[L:2 * L]
                w2 = wb[2 * L:3 * L]
                w3 = wb[3 * L:4 * L]
                w4 = wb[4 * L:5 * L]
                w5 = wb[5 * L:6 * L]
                w6 = wb[6 * L:7 * L]
                w7 = wb[7 * L:8 * L]
                w8 = wb[8 * L:9 * L]
                rw = dh * Wp * cb   # one tap row down
                for p in range(0, P, 2):
                    a = p * sh * Wp * cb
                    x0 = xt[a:a + L]
                    x1 = xt[a + k1:a + k1 + L]
                    x2 = xt[a + k2:a + k2 + L]
                    x3 = xt[a + rw:a + rw + L]
                    x4 = xt[a + rw + k1:a + rw + k1 + L]
                    x5 = xt[a + rw + k2:a + rw + k2 + L]
                    x6 = xt[a + 2 * rw:a + 2 * rw + L]
                    x7 = xt[a + 2 * rw + k1:a + 2 * rw + k1 + L]
                    x8 = xt[a + 2 * rw + k2:a + 2 * rw + k2 + L]
                    ys = yt[p * L:(p + 1) * L]
                    if p + 1 == P:
                        for i in range(L):
                            ys[i] = (w0[i] * x0[i] + w1[i] * x1[i] + w2[i] * x2[i]
                                     + w3[i] * x3[i] + w4[i] * x4[i] + w5[i] * x5[i]
                                     + w6[i] * x6[i] + w7[i] * x7[i] + w8[i] * x8[i])
                        continue
                    a += sh * Wp * cb
                    u0 = xt[a:a + L]
                    u1 = xt[a + k1:a + k1 + L]
                    u2 = xt[a + k2:a + k2 + L]
                    u3 = xt[a + rw:a + rw + L]
                    u4 = xt[a + rw + k1:a + rw + k1 + L]
                    u5 = xt[a + rw + k2:a + rw + k2 + L]
                    u6 = xt[a + 2 * rw:a + 2 * rw + L]
                    u7 = xt[a + 2 * rw + k1:a + 2 * rw + k1 + L]
                    u8 = xt[a + 2 * rw + k2:a + 2 * rw + k2 + L]
                    yu = yt[(p + 1) * L:(p + 2) * L]
                    for i in range(L):
                        ys[i] = (w0[i] * x0[i] + w1[i] * x1[i] + w2[i] * x2[i]
                                 + w3[i] * x3[i] + w4[i] * x4[i] + w5[i] * x5[i]
                                 + w6[i] * x6[i] + w7[i] * x7[i] + w8[i] * x8[i])
                        yu[i] = (w0[i] * u0[i] + w1[i] * u1[i] + w2[i] * u2[i]
                                 + w3[i] * u3[i] + w4[i] * u4[i] + w5[i] * u5[i]
                                 + w6[i] * u6[i] + w7[i] * u7[i] + w8[i] * u8[i])
            else:
                for p in range(P):   # tap by tap, over the outputs whose input lies inside the image
                    ys = yt[p * L:(p + 1) * L]
                    for i in range(L):
                        ys[i] = 0.0
                    for r in range(R):
                        h = p * sh - pt + r * dh
                        if 0 <= h < H:
                            for s in range(S):
                                q0, q1 = _columns(Q, W, sw, pl, s, dw)
                                o = ((h + pt) * Wp + _col(s * dw, sw, Ws) + q0) * cb
                                xs = xt[o:o + (q1 - q0) * cb]
                                ws = wb[(r * S + s) * L + q0 * cb:(r * S + s) * L + q1 * cb]
                                yq = ys[q0 * cb:q1 * cb]
                                for i in range((q1 - q0) * cb):
                                    yq[i] += ws[i] * xs[i]
            _from_cl(yt, P * Q, cb, piy, yf, (n * C + c0) * P * Q, so, do)


@_runtime.jit(parallel=True)
def forward_cl(x, wt, y, sh, sw, pt, pl, dh, dw, R, S, CB):
    """:func:`forward` for ``K == C`` in the channels-last layout: ``wt`` (R*S, C) is the weight
    transposed, ``CB`` the channels per block. The 3x3 sums add ``w * 0`` for taps that fall on the
    zero border, as :func:`forward_s1` does (a non-finite weight there gives NaN, as zero padding does
    in PyTorch); the input's values outside a tap's window never enter."""
    N, C, H, W = x.shape
    P, Q = y.shape[2], y.shape[3]
    Wp = (Q - 1) * sw + (S - 1) * dw + 1
    pix = _pixmap(H, W, Wp, sw, pt, pl)
    piy = _pixmap(P, Q, Q, 1, 0, 0)
    # 3x3: the 9 taps summed in registers, the border's zeros included; on planes of 4 pixels or fewer
    # most taps fall on the border, and adding only the others tap by tap costs less
    dense = R == 3 and S == 3 and H * W > 4
    wl = np.empty(R * S * Q * C, dtype=x.dtype)
    for c0 in range(0, C, CB):
        cb = min(CB, C - c0)
        _lanes(wt, C, R, S, Q, c0, cb, wl[R * S * Q * c0:R * S * Q * (c0 + cb)])
    nch = _chunks(N, x.size)
    for ch in _runtime.prange(nch):
        _forward_images(x, wl, y, ch * N // nch, (ch + 1) * N // nch, sh, sw, pt, pl, dh, dw, R, S, CB, pix, piy,
                        dense)


@_runtime.jit()
def _backward_images(dz, x, wl, dx, dwc, dbc, n0, n1, sh, sw, pt, pl, dh, dw, R, S, CB, need_input_grad, gather,
                     a0, b0, pix, piy, pid):
    """:func:`backward_cl` of the images n0 to n1 (one chunk), their weight and bias gradients added
    into ``dwc`` and ``dbc`` (float64); compiled once for the serial and the parallel kernel."""
    N, C, H, W = x.shape
    P, Q = dz.shape[2], dz.shape[3]
    Wp = (Q - 1) * sw + (S - 1) * dw + 1
    Hp = (P - 1) * sh + (R - 1) * dh + 1
    Ws = (Wp + sw - 1) // sw
    h1 = min(H, Hp - pt)
    v1 = min(W, Wp - pl)
    Hz = H + (R - 1) * dh if gather else P
    Wz = W + (S - 1) * dw if gather else Q
    T = 8 if x.itemsize == 4 else 4
    xf = x.reshape(-1)
    zf = dz.reshape(-1)
    dxf = dx.reshape(-1)
    xt = np.zeros(Hp * Wp * CB, dtype=x.dtype)
    zt = np.zeros(Hz * Wz * CB, dtype=x.dtype)
    so = np.empty(T, dtype=np.int64)
    do = np.empty(T, dtype=np.int64)
    gt = np.empty((H * W if gather else Hp * Wp) * CB if need_input_grad else 0, dtype=x.dtype)
    # the chunk's sums in x's dtype, per (tap, output column, channel) as the weight lanes
    dwl = np.zeros(R * S * Q * C, dtype=x.dtype)
    dbl = np.zeros(Q * C, dtype=x.dtype)
    last = CB
    for n in range(n0, n1):
        for c0 in range(0, C, CB):
            cb = min(CB, C - c0)
            if cb != last:
                xt[:] = 0.0
                zt[:] = 0.0
                last = cb
            _load_cl(xf, (n * C + c0) * H * W, H, W, h1, v1, cb, xt, pix, so, do)
            _to_cl(zf, (n * C + c0) * P * Q, P * Q, cb, zt, piy, so, do)
            wb = wl[R * S * Q * c0:R * S * Q * (c0 + cb)]
            dwb = dwl[R * S * Q * c0:R * S * Q * (c0 + cb)]
            dbb = dbl[Q * c0:Q * (c0 + cb)]
            L = Q * cb
            if need_input_grad and not gather:   # the image's pixels (the taps never reach the border)
                for j in range(H * W):
                    gj = gt[pix[j] * cb:pix[j] * cb + cb]
                    for c in range(cb):
                        gj[c] = 0.0
            scatter = need_input_grad and not gather
            for p in range(0, P, 2):   # two output rows at a time: one pass over the gradient lanes
                zs = zt[((p + a0) * Wz + b0) * cb:((p + a0) * Wz + b0) * cb + L]
                zu = zt[((p + 1 + a0) * Wz + b0) * cb:((p + 1 + a0) * Wz + b0) * cb + L] if p + 1 < P else zs
                for i in range(L):
                    dbb[i] += zs[i]
                if p + 1 < P:
                    for i in range(L):
                        dbb[i] += zu[i]
                for r in range(R):
                    ha = p * sh - pt + r * dh
                    hb = ha + sh
                    oka = 0 <= ha < H
                    okb = p + 1 < P and 0 <= hb < H
                    if not (oka or okb):
                        continue
                    for s in range(S):
                        q0, q1 = _columns(Q, W, sw, pl, s, dw)
                        if q1 <= q0:
                            continue
                        rs = r * S + s
                        k = _col(s * dw, sw, Ws) + q0
                        oa = ((ha + pt) * Wp + k) * cb
                        ob = ((hb + pt) * Wp + k) * cb
                        m = (q1 - q0) * cb
                        dl = dwb[rs * L + q0 * cb:rs * L + q1 * cb]
                        ws = wb[rs * L + q0 * cb:rs * L + q1 * cb]
                        za = zs[q0 * cb:q1 * cb]
                        zb = zu[q0 * cb:q1 * cb]
                        if oka and okb:
                            xa = xt[oa:oa + m]
                            xb = xt[ob:ob + m]
                            for i in range(m):
                                dl[i] += za[i] * xa[i] + zb[i] * xb[i]
                            if scatter:
                                ga = gt[oa:oa + m]
                                gb = gt[ob:ob + m]
                                for i in range(m):
                                    ga[i] += ws[i] * za[i]
                                    gb[i] += ws[i] * zb[i]
                            continue
                        o = oa if oka else ob
                        zq = za if oka else zb
                        xs = xt[o:o + m]
                        for i in range(m):
                            dl[i] += zq[i] * xs[i]
                        if scatter:
                            gs = gt[o:o + m]
                            for i in range(m):
                                gs[i] += ws[i] * zq[i]
            if not need_input_grad:
                continue
            base = (n * C + c0) * H * W
            if gather:
                V = W * cb
                w0 = wb[0:V]
                w1 = wb[L:L + V]
                w2 = wb[2 * L:2 * L + V]
                w3 = wb[3 * L:3 * L + V]
                w4 = wb[4 * L:4 * L + V]
                w5 = wb[5 * L:5 * L + V]
                w6 = wb[6 * L:6 * L + V]
                w7 = wb[7 * L:7 * L + V]
                w8 = wb[8 * L:8 * L + V]
                k1 = dw * cb
                k2 = 2 * dw * cb
                for h in range(H):
                    e = h * Wz * cb          # tap row r reads row h + (2 - r) * dh, column v + (2 - s) * dw
                    b = e + dh * Wz * cb
                    a = b + dh * Wz * cb
                    z0 = zt[a + k2:a + k2 + V]
                    z1 = zt[a + k1:a + k1 + V]
                    z2 = zt[a:a + V]
                    z3 = zt[b + k2:b + k2 + V]
                    z4 = zt[b + k1:b + k1 + V]
                    z5 = zt[b:b + V]
                    z6 = zt[e + k2:e + k2 + V]
                    z7 = zt[e + k1:e + k1 + V]
                    z8 = zt[e:e + V]
                    gs = gt[h * V:(h + 1) * V]
                    for i in range(V):
                        gs[i] = (w0[i] * z0[i] + w1[i] * z1[i] + w2[i] * z2[i]
                                 + w3[i] * z3[i] + w4[i] * z4[i] + w5[i] * z5[i]
                                 + w6[i] * z6[i] + w7[i] * z7[i] + w8[i] * z8[i])
                _from_cl(gt, H * W, cb, pid, dxf, base, so, do)
            elif h1 == H and v1 == W:
                _from_cl(gt, H * W, cb, pix, dxf, base, so, do)
            else:   # rows or columns no tap reads: their gradient is 0
                for c in range(cb):
                    for h in range(H):
                        for v in range(W):
                            dxf[base + (c * H + h) * W + v] = \
                                gt[pix[h * W + v] * cb + c] if h < h1 and v < v1 else 0.0
    for c0 in range(0, C, CB):
        cb = min(CB, C - c0)
        for rs in range(R * S):
            dr = dwc[rs * C + c0:rs * C + c0 + cb]
            for q in range(Q):
                o = R * S * Q * c0 + (rs * Q + q) * cb
                dq = dwl[o:o + cb]
                for c in range(cb):
                    dr[c] += np.float64(dq[c])
        dr = dbc[c0:c0 + cb]
        for q in range(Q):
            dq = dbl[Q * c0 + q * cb:Q * c0 + (q + 1) * cb]
            for c in range(cb):
                dr[c] += np.float64(dq[c])


@_runtime.jit(parallel=True)
def backward_cl(dz, x, wt, dx, dwt, db, sh, sw, pt, pl, dh, dw, R, S, CB, need_input_grad):
    """The gradients of :func:`forward_cl`'s input, weight and (for the caller's bias) of a bias, in
    one pass over the images, in the same layout.

    ``dx`` (N, C, H, W) is overwritten when ``need_input_grad``; ``dwt`` (R*S*C,) and ``db`` (C,),
    float64, are overwritten with ``sum dz * x`` per tap and ``sum dz``. Only the taps inside the image
    count (as :func:`backward_weight` and :func:`backward_input`: a NaN or inf of dz reaches no weight
    through the border); each (tap, output column, channel) sums over the rows of a chunk's images in
    the input dtype (a chunk: N/16 images of a large input, up to all N of a small one,
    :func:`_chunks`), and those sums add up in float64. The input gradient adds each output's taps into a zero
    buffer, or, at stride 1 with a 3x3 kernel, gathers them from a
    zero-bordered copy of dz (the convolution with the flipped kernel, as :func:`backward_input_s1`;
    a non-finite weight meets the border's zeros there, as in the forward)."""
    N, C, H, W = x.shape
    P, Q = dz.shape[2], dz.shape[3]
    Wp = (Q - 1) * sw + (S - 1) * dw + 1
    # stride 1, 3x3: dx is the convolution of dz, zero-bordered by a0 rows and b0 columns, with the
    # flipped kernel, its 9 taps summed in registers (as the forward), when that border covers every
    # tap (and the weight lanes, Q long, cover a row of W)
    a0 = (R - 1) * dh - pt
    b0 = (S - 1) * dw - pl
    Hz = H + (R - 1) * dh
    Wz = W + (S - 1) * dw
    gather = need_input_grad and sh == 1 and sw == 1 and R == 3 and S == 3 and H * W > 4 and a0 >= 0 \
        and b0 >= 0 and P + a0 <= Hz and Q + b0 <= Wz and W <= Q
    if not gather:
        a0, b0, Hz, Wz = 0, 0, P, Q
    pix = _pixmap(H, W, Wp, sw, pt, pl)
    piy = _pixmap(P, Q, Wz, 1, a0, b0)
    pid = _pixmap(H, W, W, 1, 0, 0)
    wl = np.empty(R * S * Q * C, dtype=x.dtype)
    for c0 in range(0, C, CB):
        cb = min(CB, C - c0)
        _lanes(wt, C, R, S, Q, c0, cb, wl[R * S * Q * c0:R * S * Q * (c0 + cb)])
    nch = _chunks(N, x.size)
    dwp = np.zeros((nch, R * S * C))
    dbp = np.zeros((nch, C))
    for ch in _runtime.prange(nch):
        _backward_images(dz, x, wl, dx, dwp[ch], dbp[ch], ch * N // nch, (ch + 1) * N // nch, sh, sw, pt, pl,
                         dh, dw, R, S, CB, need_input_grad, gather, a0, b0, pix, piy, pid)
    for i in range(R * S * C):
        t = 0.0
        for ch in range(nch):
            t += dwp[ch, i]
        dwt[i] = t
    for c in range(C):
        t = 0.0
        for ch in range(nch):
            t += dbp[ch, c]
        db[c] = t


# ------------------------------------------------------------------------------------------ entry points

#: bytes of one block's zero-bordered input buffer at most (a block of channels then stays in L2)
CL_BLOCK_BYTES = 256 << 10


def _block(C, Hp, Wp, itemsize):
    """Channels per block of the channels-last kernels: all of them, or a multiple of 8 whose input
    buffer fits :data:`CL_BLOCK_BYTES`, with the blocks as even as that allows."""
    per = Hp * Wp * itemsize
    nb = -(-C * per // CL_BLOCK_BYTES)   # blocks needed (ceil)
    if nb <= 1:
        return C
    cb = -(-C // nb)
    return min(C, max(8, -(-cb // 8) * 8))


def conv_forward(x, weight, y, stride, pads, dilation):
    """``y`` (N, K, P, Q) = the depthwise convolution of C-contiguous ``x`` (N, C, H, W) with ``weight``
    (K, 1, R, S) (no bias): channels-last for a multiplier of 1, else by planes (:func:`forward_s1`
    at stride 1, :func:`forward`)."""
    C = x.shape[1]
    K, _, R, S = weight.shape
    if K == C:
        P, Q = y.shape[2:]
        Hp = (P - 1) * stride[0] + (R - 1) * dilation[0] + 1
        Wp = (Q - 1) * stride[1] + (S - 1) * dilation[1] + 1
        wt = np.ascontiguousarray(weight.reshape(K, R * S).T)
        forward_cl(x, wt, y, *stride, pads[0], pads[2], *dilation, R, S, _block(C, Hp, Wp, x.itemsize))
    elif stride == (1, 1):
        forward_s1(x, weight, y, pads[0], pads[2], *dilation)
    else:
        forward(x, weight, y, *stride, pads[0], pads[2], *dilation)


def conv_backward(dz, x, weight, stride, pads, dilation, need_input_grad):
    """(dx or None, dweight, dbias or None) of :func:`conv_forward` given ``dz`` (C-contiguous, x's
    dtype): one channels-last pass for a multiplier of 1, which also sums the bias gradient; else
    :func:`backward_weight` and the input gradient by planes (dbias None: the caller sums it)."""
    N, C = x.shape[:2]
    K, _, R, S = weight.shape
    dx = np.empty(x.shape, dtype=x.dtype) if need_input_grad else None
    if K == C:
        P, Q = dz.shape[2:]
        Hp = (P - 1) * stride[0] + (R - 1) * dilation[0] + 1
        Wp = (Q - 1) * stride[1] + (S - 1) * dilation[1] + 1
        wt = np.ascontiguousarray(weight.reshape(K, R * S).T)
        dwt, db = np.empty(R * S * C), np.empty(C)
        backward_cl(dz, x, wt, dx if need_input_grad else np.empty((0, 0, 0, 0), x.dtype), dwt, db, *stride,
                    pads[0], pads[2], *dilation, R, S, _block(C, Hp, Wp, x.itemsize), bool(need_input_grad))
        dw = np.ascontiguousarray(dwt.reshape(R * S, C).T, dtype=x.dtype).reshape(weight.shape)
        return dx, dw, db.astype(x.dtype)
    dw = np.empty(weight.shape, dtype=x.dtype)
    backward_weight(dz, x, dw, *stride, pads[0], pads[2], *dilation)
    if need_input_grad and stride == (1, 1) and pads[0] <= (R - 1) * dilation[0] \
            and pads[2] <= (S - 1) * dilation[1]:
        backward_input_s1(dz, weight, dx, pads[0], pads[2], *dilation)
    elif need_input_grad:
        backward_input(dz, weight, dx, *stride, pads[0], pads[2], *dilation)
    return dx, dw, None
