"""Winograd F(4x4, 3x3): the fast algorithm of :func:`fastact.conv2d` for 3x3, stride-1 convolutions.

A 3x3 convolution computes each output from 9 multiplies per (input, output) channel pair. Winograd's
minimal filtering (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016)
computes a 4x4 output tile from a 6x6 input tile with 36 multiplies, 2.25 per output, after linear
transforms of the tiles that cost a few additions each:

    Y = A^T [(G g G^T) (.) (B^T d B)] A

``g`` the 3x3 kernel, ``d`` the 6x6 input tile, ``(.)`` the elementwise product. Summed over the input
channels, the elementwise products of a tile position ``xi`` (one of 36) are one matrix product per
position: ``M[xi] (K, T) = U[xi] (K, C) @ V[xi] (C, T)`` over ``T`` tiles, run by BLAS.

The forward is one compiled loop over chunks of tiles (slots, shared by the calling thread and a
helper as in the im2col kernels), each chunk in this thread's cache: gather the 6x6 tiles of one input
channel and transform them (``V``), 36 GEMMs, transform each output channel's products back to 4x4
tiles and write them to ``y`` with the bias and the activation (and the pre-activation when training
keeps it). The transforms run along the chunk's tiles, so their loops are long and vectorise.

Accuracy: the transforms' constants (1/4, 1/6, 1/12, 1/24, 2, 4, 8) round in float32 and the products
are summed in another order than the direct sum; the error is a few float32 ulps of the output's
scale (measured and tested: ``tests/test_winograd.py``), not of each output, so an output much smaller
than its neighbours carries a larger relative error than the im2col path's. That is why
``algorithm="auto"`` uses it only for float32, where it pays; float64 stays on im2col unless asked.
"""

import threading

import numpy as np

from . import _blas, _codegen, _epilogue, _gemm, _runtime, config

__all__ = ["BT", "G", "AT", "KRON", "applies", "transform_weight", "conv2d_forward", "conv2d_backward", "tile_chunk"]

#: Input transform B^T (6x6), filter transform G (6x3), output transform A^T (4x6): the interpolation
#: points 0, 1, -1, 2, -2 and infinity.
BT = np.array([[4, 0, -5, 0, 1, 0],
               [0, -4, -4, 1, 1, 0],
               [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0],
               [0, 2, -1, -2, 1, 0],
               [0, 4, 0, -5, 0, 1]], dtype=np.float64)
G = np.array([[1 / 4, 0, 0],
              [-1 / 6, -1 / 6, -1 / 6],
              [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6],
              [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0],
               [0, 1, -1, 2, -2, 0],
               [0, 1, 1, 4, 4, 0],
               [0, 1, -1, 8, -8, 1]], dtype=np.float64)


def applies(weight_shape, stride, dilation=1):
    """True when Winograd F(4x4, 3x3) computes this convolution: a 3x3 kernel, stride 1, no dilation."""
    return tuple(weight_shape[2:]) == (3, 3) and stride == (1, 1) and dilation in (1, (1, 1))


#: ``vec(G g G^T) = KRON @ vec(g)`` (36 x 9): the filter transform of every channel pair as one product
KRON = np.kron(G, G)


def transform_weight(weight):
    """``U = G g G^T`` for every (output, input) channel pair, laid out for the GEMMs: (36, K, C), in
    the weight's dtype (one float64 product with :data:`KRON`, rounded once)."""
    w = np.asarray(weight)
    if w.ndim != 4 or w.shape[2:] != (3, 3):
        raise ValueError(f"transform_weight: weight must have shape (K, C, 3, 3), got {w.shape}")
    K, C = w.shape[:2]
    u = _blas.matmul(KRON, np.ascontiguousarray(w.reshape(K * C, 9).T, dtype=np.float64))
    return np.ascontiguousarray(u.reshape(36, K, C), dtype=w.dtype)


def tile_chunk(C, K, itemsize=4):
    """Tiles per slot: as many as keep one chunk's transformed input and products (36 values per tile
    per channel, ``V`` and ``M``) within ``config.WINOGRAD_CHUNK_BYTES``, a multiple of 16, at least 16."""
    per_tile = itemsize * (36 * (C + K) + 72)
    t = config.WINOGRAD_CHUNK_BYTES // per_tile
    return int(max(16, t - t % 16))


# The transforms multiply by 2, 4, 5 and 8 through additions: a float literal would promote float32
# arithmetic to float64 in Numba (half the SIMD lanes, and conversions); additions keep the input dtype.

@_runtime.jit(inline="always")
def _bt6(x0, x1, x2, x3, x4, x5):
    """``B^T (x0 .. x5)``: one row or column of the input transform."""
    a = x0 - x2
    a = a + a
    b = x1 + x2
    b = b + b
    c = x1 - x2
    c = c + c
    e = x3 - x1
    e = e + e
    f = x1 - x3
    f = f + f
    return (a + a + x4 - x2, x3 + x4 - b - b, x4 - x3 + c + c, x4 - x2 + e, x4 - x2 - e, f + f + x5 - x3)


@_runtime.jit(inline="always")
def _at6(x0, x1, x2, x3, x4, x5):
    """``A^T (x0 .. x5)``: one row or column of the output transform."""
    a = x1 + x2
    b = x1 - x2
    c = x3 + x4
    e = x3 - x4
    e2 = e + e
    c4 = c + c
    c4 = c4 + c4
    e8 = e2 + e2
    e8 = e8 + e8
    return (x0 + a + c, b + e2, a + c4, b + e8 + x5)


@_runtime.jit(inline="always")
def _input_tiles(xf, H, W, base, y0, x0, t1, j):
    """Rows of the 6x6 input tile at (y0, x0) of the image plane starting at ``xf[base]``, each
    transformed along its length: ``t1[a*6 + i, j] = (B^T d[a, :])[i]``; zero outside the plane."""
    inside = y0 >= 0 and x0 >= 0 and y0 + 6 <= H and x0 + 6 <= W
    # a zero of x's dtype (a float literal would be float64); NaN if x[0] is not finite, which flags
    # the call as non-finite and so recomputes it by im2col, as any non-finite input does
    zero = xf[0] - xf[0]
    for a in range(6):
        yy = y0 + a
        o = base + yy * W + x0
        if inside:
            d0, d1, d2, d3, d4, d5 = xf[o], xf[o + 1], xf[o + 2], xf[o + 3], xf[o + 4], xf[o + 5]
        elif yy < 0 or yy >= H:
            d0 = d1 = d2 = d3 = d4 = d5 = zero
        else:
            d0 = xf[o] if 0 <= x0 < W else zero
            d1 = xf[o + 1] if 0 <= x0 + 1 < W else zero
            d2 = xf[o + 2] if 0 <= x0 + 2 < W else zero
            d3 = xf[o + 3] if 0 <= x0 + 3 < W else zero
            d4 = xf[o + 4] if 0 <= x0 + 4 < W else zero
            d5 = xf[o + 5] if 0 <= x0 + 5 < W else zero
        r0, r1, r2, r3, r4, r5 = _bt6(d0, d1, d2, d3, d4, d5)
        t1[a * 6, j] = r0
        t1[a * 6 + 1, j] = r1
        t1[a * 6 + 2, j] = r2
        t1[a * 6 + 3, j] = r3
        t1[a * 6 + 4, j] = r4
        t1[a * 6 + 5, j] = r5


@_runtime.jit(inline="always")
def _bt_columns(t1, v, c, C, n):
    """Down each column of the chunk's row-transformed tiles, vectorised along the tiles:
    ``v[(i*6 + b)*C + c, :n] = sum_a BT[i, a] t1[a*6 + b, :n]``."""
    for b in range(6):
        for j in range(n):
            r0, r1, r2, r3, r4, r5 = _bt6(t1[b, j], t1[6 + b, j], t1[12 + b, j], t1[18 + b, j],
                                          t1[24 + b, j], t1[30 + b, j])
            v[b * C + c, j] = r0
            v[(6 + b) * C + c, j] = r1
            v[(12 + b) * C + c, j] = r2
            v[(18 + b) * C + c, j] = r3
            v[(24 + b) * C + c, j] = r4
            v[(30 + b) * C + c, j] = r5


@_runtime.jit(inline="always")
def _at_rows(m, k, K, o, n):
    """Along each row of output channel k's products, vectorised along the tiles:
    ``o[a*4 + q, :n] = sum_b AT[q, b] m[(a*6 + b)*K + k, :n]``."""
    for a in range(6):
        r = a * 6 * K + k
        for j in range(n):
            q0, q1, q2, q3 = _at6(m[r, j], m[r + K, j], m[r + 2 * K, j], m[r + 3 * K, j], m[r + 4 * K, j],
                                  m[r + 5 * K, j])
            o[a * 4, j] = q0
            o[a * 4 + 1, j] = q1
            o[a * 4 + 2, j] = q2
            o[a * 4 + 3, j] = q3


@_runtime.jit(inline="always")
def _at_columns(o, d, n):
    """Down each column of the row-transformed products, vectorised along the tiles:
    ``d[p*4 + q, :n] = sum_a AT[p, a] o[a*4 + q, :n]``, the tiles' 4x4 outputs."""
    for q in range(4):
        for j in range(n):
            r0, r1, r2, r3 = _at6(o[q, j], o[4 + q, j], o[8 + q, j], o[12 + q, j], o[16 + q, j], o[20 + q, j])
            d[q, j] = r0
            d[4 + q, j] = r1
            d[8 + q, j] = r2
            d[12 + q, j] = r3


@_runtime.jit(inline="always")
def _store_tiles(d, yf, base, rows, cols, Q, j):
    """Write tile j's outputs ``d[:, j]`` (4x4) to the output plane from ``yf[base]``, its first
    ``rows`` x ``cols`` (fewer at the plane's right and bottom edges)."""
    if rows == 4 and cols == 4:
        for p in range(4):
            at = base + p * Q
            yf[at] = d[p * 4, j]
            yf[at + 1] = d[p * 4 + 1, j]
            yf[at + 2] = d[p * 4 + 2, j]
            yf[at + 3] = d[p * 4 + 3, j]
    else:
        for p in range(rows):
            for q in range(cols):
                yf[base + p * Q + q] = d[p * 4 + q, j]


@_runtime.jit(inline="always")
def _transform_chunk(xf, C, H, W, ph, pw, TY, TX, t0, nt, tn, tp, tq, t1, vt):
    """The input side of a chunk of tiles t0 .. t0 + nt, for the forward and the weight gradient alike:
    each tile's image and output corner (``tn``, ``tp``, ``tq``, divided out once per chunk), then every
    input channel's 6x6 tiles transformed into ``vt`` (36 * C, >= nt), ``t1`` the row-pass scratch."""
    TT = TY * TX
    for j in range(nt):
        t = t0 + j
        n = t // TT
        r = t - n * TT
        ty = r // TX
        tn[j] = n
        tp[j] = 4 * ty
        tq[j] = 4 * (r - ty * TX)
    for c in range(C):
        for j in range(nt):
            _input_tiles(xf, H, W, (tn[j] * C + c) * H * W, tp[j] - ph, tq[j] - pw, t1, j)
        _bt_columns(t1, vt, c, C, nt)


# The slot kernel (its locals must not be named p0, p1, ... (the activation's parameters) or v (the epilogue's)).
# Source text for one reason only: the activation ``F`` takes its own number of
# parameters, and a kernel that calls a captured function would not be found in the on-disk cache by
# the next process (see fastact._codegen.compile_source); everything else is the plain functions above.
_FWD_SRC = """\
def {fname}(counter, nslots, x, u, b, y, z, ph, pw, TY, TX, tc, nonfinite{a}):
    N, C, H, W = x.shape
    K = u.shape[1]
    P, Q = y.shape[2], y.shape[3]
    T = N * TY * TX
    keep = z.size != 0
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    zf = z.reshape(-1)
    isz = x.itemsize
    t1 = np.empty((36, tc), dtype=x.dtype)    # this thread's buffers, for every slot it takes
    vt = np.empty((36 * C, tc), dtype=x.dtype)
    m = np.empty((36 * K, tc), dtype=x.dtype)
    o = np.empty((24, tc), dtype=x.dtype)
    d = np.empty((16, tc), dtype=x.dtype)
    dz = np.empty((16, tc if keep else 0), dtype=x.dtype)
    tn = np.empty(tc, dtype=np.int64)
    chk = np.zeros(tc, dtype=x.dtype)
    tp = np.empty(tc, dtype=np.int64)
    tq = np.empty(tc, dtype=np.int64)
    iw = np.empty(8, dtype=np.int32)
    fw = np.empty(2, dtype=x.dtype)
    sl = next_slot(counter)
    while sl < nslots:
        t0 = sl * tc
        nt = min(tc, T - t0)
        _transform_chunk(xf, C, H, W, ph, pw, TY, TX, t0, nt, tn, tp, tq, t1, vt)
        for xi in range(36):
            gemm(0, 0, K, nt, C, u.ctypes.data + xi * K * C * isz, C, vt.ctypes.data + xi * C * tc * isz,
                 tc, 0.0, m.ctypes.data + xi * K * tc * isz, tc, iw, fw)
        for k in range(K):
            bk = b[k]
            _at_rows(m, k, K, o, nt)
            _at_columns(o, d, nt)
            for i in range(16):   # stays 0 unless an output is inf or NaN
                for j in range(nt):
                    chk[j] += d[i, j] - d[i, j]
            for i in range(16):   # bias and activation along the tiles, where the loop vectorises
                dr = d[i]
{epilogue}            for j in range(nt):
                pr = tp[j]
                pc = tq[j]
                base = ((tn[j] * K + k) * P + pr) * Q + pc
                rows = min(4, P - pr)
                cols = min(4, Q - pc)
                _store_tiles(d, yf, base, rows, cols, Q, j)
                if keep:
                    _store_tiles(dz, zf, base, rows, cols, Q, j)
        for j in range(nt):
            if chk[j] != 0.0:
                nonfinite[0] = 1
        sl = next_slot(counter)
"""

_lock = threading.Lock()
_kernels = {}


def _forward_kernel(activation):
    from ._table import get as _get_activation
    act = None if activation is None else _get_activation(activation)
    key = None if act is None else act.name
    fn = _kernels.get(key)
    if fn is None:
        with _lock:
            fn = _kernels.get(key)
            if fn is None:
                p = _codegen.param_names(act, False)
                fname = f"winograd_forward_{'identity' if act is None else act.name}"
                fv = _codegen.element(False, p, i="", x="v")
                src = _FWD_SRC.format(fname=fname, a=_codegen.args(p),
                                      epilogue=_codegen.bias_act_rows("dr", "dr", "dz[i]", "bk", "nt", fv, 16))
                glb = {"F": _epilogue.identity_jit if act is None else _codegen.scalar(act), "np": np,
                       "gemm": _gemm.gemm, "next_slot": _runtime.next_slot, "_transform_chunk": _transform_chunk,
                       "_at_rows": _at_rows, "_at_columns": _at_columns, "_store_tiles": _store_tiles}
                fn = _kernels[key] = _runtime.jit()(_codegen.compile_source(fname, src, glb))
    return fn


def conv2d_forward(x, u, bias, y, z, padding, activation=None, params=()):
    """Write ``y = act(conv(x, g) + bias)`` (and ``z``, the pre-activation, unless it is empty) for the
    3x3 stride-1 convolution whose transformed weight is ``u`` (:func:`transform_weight`).

    ``x`` (N, C, H, W) C-contiguous, ``u`` (36, K, C), ``bias`` (K,), ``y`` and ``z`` (N, K, P, Q) with
    ``P = H + 2*ph - 2``, all of one dtype (float32 or float64); ``params`` the activation's parameters
    in that dtype. Needs the BLAS callable from compiled code (``fastact._gemm.available()``).

    Returns
    -------
    bool
        True when every pre-activation output is finite. False when one is inf or NaN: the transforms
        spread a non-finite input over its whole 6x6 tile (and inf - inf is NaN), so the caller should
        recompute by the direct method to get its exact NaN and inf pattern (``conv2d`` does).
    """
    if not _gemm.available():
        raise RuntimeError(f"winograd.conv2d_forward needs BLAS callable from compiled code: {_gemm.REASON}")
    N, C, H, W = x.shape
    K = u.shape[1]
    ph, pw = padding
    P, Q = y.shape[2], y.shape[3]
    TY, TX = -(-P // 4), -(-Q // 4)
    T = N * TY * TX
    if T == 0 or K == 0:
        return True
    tc = tile_chunk(C, K, x.itemsize)
    tc = min(tc, -(-T // 16) * 16)
    nslots = -(-T // tc)
    nonfinite = np.zeros(1, dtype=np.int64)
    kern = _forward_kernel(activation)
    with _gemm.single_threaded():
        _runtime.run_slots(kern, nslots, (x, u, bias, y, z, ph, pw, TY, TX, tc, nonfinite, *params),
                           2 * 36 * K * C * T >= config.CONV_PARALLEL_MIN_FLOPS)
    return not nonfinite[0]


# ------------------------------------------------------------------------------------------ backward
# The weight gradient by the same transforms: with E = A dY A^T (6x6 from each 4x4 tile of dz, the
# transpose of the output transform), dU[xi] = sum over tiles E[xi] V[xi]^T, one GEMM per tile position
# again, and dW = G^T dU G. The input gradient is a 3x3 stride-1 convolution of dz with the kernel
# flipped and its channel axes swapped (padding 2 - p), which conv2d_forward computes.

@_runtime.jit(inline="always")
def _a6(d0, d1, d2, d3):
    """``A (d0 .. d3)`` (A = AT^T, 6x4): one row or column of dY's transform."""
    s = d0 + d2
    t = d1 + d3
    d2_2 = d2 + d2
    d2_4 = d2_2 + d2_2
    d1_2 = d1 + d1
    d3_8 = d3 + d3
    d3_8 = d3_8 + d3_8
    d3_8 = d3_8 + d3_8
    return (d0, s + t, s - t, d0 + d1_2 + d2_4 + d3_8, d0 - d1_2 + d2_4 - d3_8, d3)


@_runtime.jit(inline="always")
def _dz_tile_rows(dzf, base, rows, cols, Q, e1, j):
    """The 4x4 tile of dz at ``dzf[base]`` (its first ``rows`` x ``cols`` inside the plane, zero
    beyond), each row expanded along its length: ``e1[p*6 + i, j] = (A dz[p, :])[i]``."""
    zero = dzf[0] - dzf[0]  # as in _input_tiles
    for p in range(4):
        o = base + p * Q
        if p < rows and cols == 4:
            d0, d1, d2, d3 = dzf[o], dzf[o + 1], dzf[o + 2], dzf[o + 3]
        elif p < rows:
            d0 = dzf[o] if cols > 0 else zero
            d1 = dzf[o + 1] if cols > 1 else zero
            d2 = dzf[o + 2] if cols > 2 else zero
            d3 = zero
        else:
            d0 = d1 = d2 = d3 = zero
        r0, r1, r2, r3, r4, r5 = _a6(d0, d1, d2, d3)
        e1[p * 6, j] = r0
        e1[p * 6 + 1, j] = r1
        e1[p * 6 + 2, j] = r2
        e1[p * 6 + 3, j] = r3
        e1[p * 6 + 4, j] = r4
        e1[p * 6 + 5, j] = r5


@_runtime.jit(inline="always")
def _a_columns(e1, e, k, K, n):
    """Down each column, vectorised along the tiles: ``e[(i*6 + b)*K + k, :n] = sum_p A[i, p] e1[p*6 + b, :n]``."""
    for b in range(6):
        for j in range(n):
            r0, r1, r2, r3, r4, r5 = _a6(e1[b, j], e1[6 + b, j], e1[12 + b, j], e1[18 + b, j])
            e[b * K + k, j] = r0
            e[(6 + b) * K + k, j] = r1
            e[(12 + b) * K + k, j] = r2
            e[(18 + b) * K + k, j] = r3
            e[(24 + b) * K + k, j] = r4
            e[(30 + b) * K + k, j] = r5


@_runtime.jit()
def _weight_grad_slots(counter, nslots, x, dz, du, ph, pw, TY, TX, tc):
    """Slot kernel: ``du[sl] (36, K, C)`` = the sum over chunk sl's tiles of ``E[xi] V[xi]^T``."""
    N, C, H, W = x.shape
    K, P, Q = dz.shape[1], dz.shape[2], dz.shape[3]
    T = N * TY * TX
    xf = x.reshape(-1)
    dzf = dz.reshape(-1)
    isz = x.itemsize
    t1 = np.empty((36, tc), dtype=x.dtype)    # this thread's buffers, for every slot it takes
    vt = np.empty((36 * C, tc), dtype=x.dtype)
    e1 = np.empty((24, tc), dtype=x.dtype)
    e = np.empty((36 * K, tc), dtype=x.dtype)
    tn = np.empty(tc, dtype=np.int64)
    tp = np.empty(tc, dtype=np.int64)
    tq = np.empty(tc, dtype=np.int64)
    iw = np.empty(8, dtype=np.int32)
    fw = np.empty(2, dtype=x.dtype)
    sl = _runtime.next_slot(counter)
    while sl < nslots:
        t0 = sl * tc
        nt = min(tc, T - t0)
        _transform_chunk(xf, C, H, W, ph, pw, TY, TX, t0, nt, tn, tp, tq, t1, vt)
        for k in range(K):
            for j in range(nt):
                _dz_tile_rows(dzf, ((tn[j] * K + k) * P + tp[j]) * Q + tq[j], min(4, P - tp[j]),
                              min(4, Q - tq[j]), Q, e1, j)
            _a_columns(e1, e, k, K, nt)
        for xi in range(36):
            _gemm.gemm(0, 1, K, C, nt, e.ctypes.data + xi * K * tc * isz, tc, vt.ctypes.data + xi * C * tc * isz,
                 tc, 0.0, du.ctypes.data + (sl * 36 + xi) * K * C * isz, C, iw, fw)
        sl = _runtime.next_slot(counter)


def conv2d_backward(dz, x, weight, padding, need_input_grad=True):
    """``(dx or None, dweight)`` of the 3x3 stride-1 convolution of ``x`` by ``weight`` given ``dz``, the
    gradient of its pre-activation output; all C-contiguous, one dtype. ``dx`` is the convolution of
    ``dz`` with the flipped kernel by :func:`conv2d_forward`, ``dweight`` the Winograd weight gradient.
    Returns ``(None, None)`` when a result is not finite: the caller recomputes by im2col, which gives
    the direct method's inf and NaN pattern."""
    if not _gemm.available():
        raise RuntimeError(f"winograd.conv2d_backward needs BLAS callable from compiled code: {_gemm.REASON}")
    N, C, H, W = x.shape
    K, P, Q = dz.shape[1], dz.shape[2], dz.shape[3]
    ph, pw = padding
    dt = x.dtype
    dx = None
    if need_input_grad:
        flipped = np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        dx = np.empty(x.shape, dtype=dt)
        if not conv2d_forward(dz, transform_weight(flipped), np.zeros(C, dtype=dt), dx,
                              np.empty((0, 0, 0, 0), dtype=dt), (2 - ph, 2 - pw)):
            return None, None
    TY, TX = -(-P // 4), -(-Q // 4)
    T = N * TY * TX
    tc = min(tile_chunk(C, K, x.itemsize), -(-T // 16) * 16)
    nslots = -(-T // tc)
    du = np.empty((nslots, 36, K, C), dtype=dt)
    with _gemm.single_threaded():
        _runtime.run_slots(_weight_grad_slots, nslots, (x, dz, du, ph, pw, TY, TX, tc),
                           2 * 36 * K * C * T >= config.CONV_PARALLEL_MIN_FLOPS)
    du = (du[0] if nslots == 1 else du.sum(axis=0)).astype(np.float64).reshape(36, K * C)
    dw = _blas.matmul(np.ascontiguousarray(KRON.T), du)  # vec(G^T dU G) = KRON^T vec(dU), (9, K*C)
    dw = np.ascontiguousarray(dw.T.reshape(weight.shape), dtype=dt)
    if not np.isfinite(dw).all():
        return None, None
    return dx, dw
