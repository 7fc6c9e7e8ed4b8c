"""2-D convolution by im2col + GEMM with a fused bias + activation epilogue, and its backward.

Shape key: N batch, C input channels, H x W input, K output channels, R x S kernel, P x Q output,
nb images per tile. Layouts are PyTorch's: x (N, C, H, W), weight (K, C, R, S), y (N, K, P, Q).

Two ways to run it. By default (when fastact/_gemm.py could set up a BLAS callable from nopython code)
the whole convolution is one compiled loop over chunks of images, run by both cores, each chunk doing
im2col -> one GEMM on its thread -> epilogue (backward: dz = dy * act'(z) and the bias sums -> im2col
-> dweight partial GEMM -> dcol GEMM -> col2im) in cache; see "fused per-chunk kernels" below. Otherwise (the NumPy path), per tile of nb images:

Forward, per tile of nb images:
  1. im2col writes col (C*R*S, nb*P*Q) from x (parallel over the C*R*S rows; each row is a shifted copy
     of input rows, so the inner loop is a plain strided copy);
  2. the GEMM weight (K, C*R*S) @ col, through NumPy's BLAS, and
  3. the epilogue y[n, k] = act(g[k, n] + bias[k]) (and the pre-activation z when asked), the output
     written once. Two ways, chosen by the image size:
     * images of ``config.CONV_GEMM_INTO_OUTPUT_MIN_PQ`` (256) or more output pixels: one GEMM per image
       straight into its NCHW output block y[n] (K, P*Q), then the epilogue in place on y, so a forward
       needs no memory beyond the column buffer;
     * smaller images: one GEMM per tile into a workspace g (K, nb*P*Q), since per-image GEMMs of a few
       dozen columns lose BLAS efficiency, then the epilogue reads g and writes y.
The column buffer and the GEMM tile g live in a per-thread workspace reused across calls; the tile is
sized so the column buffer stays under ``config.CONV_WORKSPACE_BYTES``.

Backward (``dz`` the gradient of the pre-activation z = conv + bias; with a fused activation,
``dz = dy * act'(z)`` and the bias gradient come out of one pass over dy and z):
  dbias = sum of dz over (n, p, q); dweight += dz_tile (K, nb*P*Q) @ col.T; dcol = weight.T @ dz_tile,
  and col2im scatters dcol into dx (parallel over channels, so no two threads write one element).
  ``need_input_grad=False`` (a network's first layer) skips the dcol GEMM and the col2im.
"""

import threading

import numba
import numpy as np

from . import _blas, _epilogue, _gemm, _runtime, config, depthwise, winograd
from ._util import check_preactivation
from ._util import compute_dtype as _compute_dtype
from ._util import pair as _pair
from ._util import row_sum as _row_sum

__all__ = ["conv2d", "conv2d_backward", "conv_output_shape", "conv_geometry", "images_per_tile", "im2col",
           "gemm_epilogue", "release_workspaces", "ALGORITHMS", "choose_algorithm"]


def conv_output_shape(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1):
    """(N, K, P, Q) of conv2d for these shapes; ValueError naming the shapes when they don't fit.

    >>> import fastact as fa
    >>> fa.conv_output_shape((8, 3, 32, 32), (16, 3, 3, 3), stride=2, padding=1)
    (8, 16, 16, 16)
    >>> fa.conv_output_shape((8, 32, 15, 15), (32, 1, 3, 3), padding="same", dilation=2, groups=32)
    (8, 32, 15, 15)
    """
    return conv_geometry(x_shape, w_shape, stride, padding, dilation, groups)[0]


def conv_geometry(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1):
    """``((N, K, P, Q), (sh, sw), (top, bottom, left, right), (dh, dw), groups)`` of a convolution, with
    PyTorch's rules and errors: ``padding`` an int, a pair, ``"valid"`` (none) or ``"same"`` (stride 1
    only; the output keeps the input's size, the odd pixel of an even total padding at the bottom and
    right); ``weight`` (K, C // groups, R, S); C and K divisible by ``groups``."""
    if len(x_shape) != 4:
        raise ValueError(f"conv2d: x must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    if len(w_shape) != 4:
        raise ValueError(f"conv2d: weight must be 4-D (K, C // groups, R, S), got shape {tuple(w_shape)}")
    N, C, H, W = x_shape
    K, Cw, R, S = w_shape
    sh, sw = _pair(stride, "stride")
    dh, dw = _pair(dilation, "dilation")
    if type(groups) is not int and not (isinstance(groups, (int, np.integer)) and not isinstance(groups, bool)):
        raise TypeError(f"conv2d: groups must be an int, got {groups!r}")
    groups = int(groups)
    if sh < 1 or sw < 1:
        raise ValueError(f"conv2d: stride must be >= 1, got {stride!r}")
    if dh < 1 or dw < 1:
        raise ValueError(f"conv2d: dilation must be >= 1, got {dilation!r}")
    if groups < 1:
        raise ValueError(f"conv2d: groups must be >= 1, got {groups}")
    if C % groups:
        raise ValueError(f"conv2d: in_channels must be divisible by groups: x has {C} channels (shape "
                         f"{tuple(x_shape)}), groups={groups}")
    if K % groups:
        raise ValueError(f"conv2d: out_channels must be divisible by groups: weight has {K} (shape "
                         f"{tuple(w_shape)}), groups={groups}")
    if C // groups != Cw:
        raise ValueError(f"conv2d: x has {C} channels (shape {tuple(x_shape)}) but weight expects "
                         f"{Cw * groups} (shape {tuple(w_shape)}, groups={groups})")
    if R < 1 or S < 1 or K < 1:
        raise ValueError(f"conv2d: weight shape {tuple(w_shape)} has an empty dimension")
    Re, Se = dh * (R - 1) + 1, dw * (S - 1) + 1
    if isinstance(padding, str):
        if padding == "valid":
            pads = (0, 0, 0, 0)
        elif padding == "same":
            if (sh, sw) != (1, 1):
                raise ValueError(f"conv2d: padding='same' is not supported for strided convolutions "
                                 f"(stride {stride!r})")
            pads = ((Re - 1) // 2, Re - 1 - (Re - 1) // 2, (Se - 1) // 2, Se - 1 - (Se - 1) // 2)
        else:
            raise ValueError(f"conv2d: padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    else:
        ph, pw = _pair(padding, "padding")
        if ph < 0 or pw < 0:
            raise ValueError(f"conv2d: padding must be >= 0, got {padding!r}")
        pads = (ph, ph, pw, pw)
    Hp, Wp = H + pads[0] + pads[1], W + pads[2] + pads[3]
    if Re > Hp or Se > Wp:
        raise ValueError(f"conv2d: kernel {R}x{S} (dilation {dh}x{dw}: {Re}x{Se}) is larger than the "
                         f"padded input {Hp}x{Wp} (x shape {tuple(x_shape)}, padding {padding!r})")
    P = (Hp - Re) // sh + 1
    Q = (Wp - Se) // sw + 1
    return (N, K, P, Q), (sh, sw), pads, (dh, dw), groups


def _is_plain(pads, dilation, groups):
    """True for the convolutions of the im2col/Winograd kernels: one group, no dilation, the same
    padding on both sides of each axis."""
    return groups == 1 and dilation == (1, 1) and pads[0] == pads[1] and pads[2] == pads[3]


# ---------------------------------------------------------------------------------- im2col / col2im

@_runtime.jit()
def _valid_columns(Q, W, sw, pw, s):
    """[q_lo, q_hi): the output columns q whose input column q*sw - pw + s lies inside [0, W)."""
    q_lo = 0
    while q_lo < Q and q_lo * sw - pw + s < 0:
        q_lo += 1
    q_hi = Q
    while q_hi > q_lo and (q_hi - 1) * sw - pw + s >= W:
        q_hi -= 1
    return q_lo, q_hi


@_runtime.jit()
def _im2col_row(x, n0, nb, R, S, sh, sw, ph, pw, P, Q, col, row, p0, p1):
    # row (c, r, s) of col for images n0 .. n0+nb-1 and output rows p0 .. p1-1 (a row band; 0, P for
    # whole images): col[row, (n, p - p0, q)] = x[n0+n, c, p*sh-ph+r, q*sw-pw+s]
    N, C, H, W = x.shape
    BQ = (p1 - p0) * Q
    c = row // (R * S)
    rs = row - c * (R * S)
    r = rs // S
    s = rs - r * S
    q_lo, q_hi = _valid_columns(Q, W, sw, pw, s)
    if sh == 1 and sw == 1 and Q == W:
        # "same" width, unit stride (the VGG 3x3/pad-1 case): the image block of this row is the
        # flattened image shifted by delta, so copy it in one run of up to P*Q elements (short rows of
        # 8-32 elements cost more in loop overhead than in copying), then zero the columns whose
        # input column falls outside [0, W) and that picked up a neighbouring row's values.
        delta = (r - ph) * W + (s - pw)
        HW = H * W
        jb0, jb1 = p0 * Q, p1 * Q
        j_lo = min(max(jb0, -delta), jb1)
        j_hi = max(min(jb1, HW - delta), j_lo)
        dst = col[row]
        for n in range(nb):
            src = x[n0 + n, c].reshape(HW)
            base = n * BQ - jb0  # dst[base + j] holds flattened output pixel j of image n
            for j in range(jb0, j_lo):
                dst[base + j] = 0
            d0 = np.uint64(base + j_lo)
            s0 = np.uint64(j_lo + delta)
            for t in range(np.uint64(j_hi - j_lo)):
                dst[d0 + t] = src[s0 + t]
            for j in range(j_hi, jb1):
                dst[base + j] = 0
            if q_lo > 0 or q_hi < Q:
                for p in range(p0, p1):
                    o = base + p * Q
                    for q in range(q_lo):
                        dst[o + q] = 0
                    for q in range(q_hi, Q):
                        dst[o + q] = 0
        return
    for n in range(nb):
        base = n * BQ
        for p in range(p0, p1):
            h = p * sh - ph + r
            o = base + (p - p0) * Q
            if h < 0 or h >= H:
                for q in range(Q):
                    col[row, o + q] = 0
                continue
            for q in range(q_lo):
                col[row, o + q] = 0
            w0 = q_lo * sw - pw + s
            src = x[n0 + n, c, h]
            dst = col[row]
            if sw == 1:  # unit stride: a plain copy; unsigned indices skip the negative-index
                # wraparound checks, so LLVM vectorises it
                d0 = np.uint64(o + q_lo)
                s0 = np.uint64(w0)
                for t in range(np.uint64(q_hi - q_lo)):
                    dst[d0 + t] = src[s0 + t]
            else:
                for q in range(q_lo, q_hi):
                    dst[o + q] = src[w0 + (q - q_lo) * sw]
            for q in range(q_hi, Q):
                col[row, o + q] = 0


@_runtime.jit()
def _gather_maps(m, C, H, W, R, S, sh, sw, ph, pw, P, Q, maps):
    # maps (R*S, m*P*Q): for col[(c, r, s), (n, p, q)], the offset of its input element from
    # x[n0, c, 0, 0] (the same for every channel and chunk), or -1 where it falls in the padding
    CHW = C * H * W
    for r in range(R):
        for s in range(S):
            rs = r * S + s
            for n in range(m):
                for p in range(P):
                    h = p * sh - ph + r
                    for q in range(Q):
                        w = q * sw - pw + s
                        inside = h >= 0 and h < H and w >= 0 and w < W
                        maps[rs, (n * P + p) * Q + q] = n * CHW + h * W + w if inside else -1


@_runtime.jit()
def _im2col_gather(x, n0, nb, R, S, P, Q, col, maps):
    # col for images n0 .. n0+nb-1 through _gather_maps' offsets: one branch-free loop per row of col.
    # For tiny images (rows of 4) the per-row loops of _im2col_row cost more than the copying
    # (config.CONV_GATHER_MAX_Q has the measurement)
    N, C, H, W = x.shape
    xf = x.reshape(-1)
    cols = nb * P * Q
    for c in range(C):
        base = (n0 * C + c) * H * W
        for rs in range(R * S):
            dst = col[c * R * S + rs]
            mr = maps[rs]
            for t in range(cols):
                o = mr[t]
                v = xf[base + (o if o > 0 else 0)]
                dst[t] = v if o >= 0 else 0


@_runtime.jit(parallel=True)
def _im2col(x, n0, nb, R, S, sh, sw, ph, pw, P, Q, col):
    # x (N, C, H, W); col (C*R*S, nb*P*Q): col[(c, r, s), (n, p, q)] = x[n0+n, c, p*sh-ph+r, q*sw-pw+s]
    C = x.shape[1]
    for row in _runtime.prange(C * R * S):
        _im2col_row(x, n0, nb, R, S, sh, sw, ph, pw, P, Q, col, row, 0, P)


@_runtime.jit()
def _col2im_channel(dcol, n0, nb, R, S, sh, sw, ph, pw, P, Q, dx, c, p0, p1):
    # channel c of dx (N, C, H, W) accumulated from dcol (C*R*S, >= nb*(p1-p0)*Q) of output rows
    # p0 .. p1-1: the adjoint of _im2col_row
    N, C, H, W = dx.shape
    BQ = (p1 - p0) * Q
    for r in range(R):
        for s in range(S):
            row = (c * R + r) * S + s
            src = dcol[row]
            q_lo, q_hi = _valid_columns(Q, W, sw, pw, s)
            w0 = q_lo * sw - pw + s
            for n in range(nb):
                base = n * BQ
                for p in range(p0, p1):
                    h = p * sh - ph + r
                    if h < 0 or h >= H:
                        continue
                    dst = dx[n0 + n, c, h]
                    o = base + (p - p0) * Q
                    if sw == 1:  # unsigned indices: no wraparound checks, the loop vectorises
                        d0 = np.uint64(w0)
                        s0 = np.uint64(o + q_lo)
                        for t in range(np.uint64(q_hi - q_lo)):
                            dst[d0 + t] += src[s0 + t]
                    else:
                        for q in range(q_lo, q_hi):
                            dst[w0 + (q - q_lo) * sw] += src[o + q]


@_runtime.jit(parallel=True)
def _col2im(dcol, n0, nb, R, S, sh, sw, ph, pw, P, Q, dx):
    # dcol (C*R*S, nb*P*Q); dx (N, C, H, W) accumulated: the adjoint of _im2col. Parallel over channels,
    # so no two threads ever add into the same dx element.
    for c in _runtime.prange(dx.shape[1]):
        _col2im_channel(dcol, n0, nb, R, S, sh, sw, ph, pw, P, Q, dx, c, 0, P)


# ------------------------------------------------------------- fused per-chunk kernels (one pool)
# With a BLAS callable from nopython code (fastact/_gemm.py), a whole convolution is one loop over
# chunks of m images (one image when it has config.CONV_CHUNK_MIN_COLUMNS output pixels or more):
# each chunk runs im2col into a column buffer of its own (CRS x m*PQ: a few hundred KiB, so it stays in
# the core's L2), one GEMM on this thread, and the epilogue or the backward's col2im, while the data is
# still in cache; no Python between the images. The chunks are dealt to ``nslots`` slots, which the
# threads of _runtime.run_slots take one at a time (a serial kernel on each thread: as a prange the
# kernel cost 3x the compile time, see run_slots); a thread allocates its buffers once, and in the
# backward a slot owns one dweight and one dbias partial, so the reduction order (and the result)
# does not depend on the scheduling. The backward computes the
# chunk's dz = dy * act'(z) itself (K x m*PQ, 64 KiB for a 32x32 image of 16 channels: the whole
# (N, K, P, Q) dz is never allocated). Forward and backward go through a one-image chunk by bands of
# output rows (config.CONV_BAND_BYTES_PER_CHANNEL, see _band_rows), which keeps the GEMM's column
# panel small enough for OpenBLAS's single-thread SGEMM to run at its best rate, and the band's
# column buffer and dcol in L2.

_FWD_SRC = """\
def {fname}(counter, nslots, x, w2, b, y, z, R, S, sh, sw, ph, pw, P, Q, m, B, maps{a}):
    # slots taken from counter until nslots; maps: _gather_maps' offsets, or (0, L) for row copies
    N = x.shape[0]
    K, CRS = w2.shape
    PQ = P * Q
    L = m * PQ
    LB = m * min(B, P) * Q
    nchunks = (N + m - 1) // m
    keep = z.size != 0
    gather = maps.shape[0] != 0
    isz = x.itemsize
    # _im2col_row's arguments as variables: a literal (1 image, row 0) would compile another copy
    one, row0 = m, P - P
    col = np.empty((CRS, LB), dtype=x.dtype)  # this thread's buffers, for every slot it takes
    g = np.empty((K, L if m > 1 else 0), dtype=x.dtype)
    iw = np.empty(8, dtype=np.int32)
    fw = np.empty(2, dtype=x.dtype)
    sl = next_slot(counter)
    while sl < nslots:
        for ch in range(sl, nchunks, nslots):
            n0 = ch * m
            mm = min(m, N - n0)
            if m == 1:
                # by bands of B output rows (B = P: the whole image), each GEMM straight into its
                # columns of the NCHW output block y[n0] (K, PQ), then the epilogue in place
                for lo in range(0, P, B):
                    hi = min(P, lo + B)
                    for row in range(CRS):
                        _im2col_row(x, n0, one, R, S, sh, sw, ph, pw, P, Q, col, row, lo, hi)
                    gemm(0, 0, K, (hi - lo) * Q, CRS, w2.ctypes.data, CRS, col.ctypes.data, LB,
                         0.0, y.ctypes.data + (n0 * K * PQ + lo * Q) * isz, PQ, iw, fw)
                for k in range(K):
                    bk = b[k]
                    yr = y[n0, k]
{epilogue_in_place}            else:
                # small images: one GEMM for the chunk (K, mm*PQ), the epilogue writes each image
                if gather:
                    _im2col_gather(x, n0, mm, R, S, P, Q, col, maps)
                else:
                    for row in range(CRS):
                        _im2col_row(x, n0, mm, R, S, sh, sw, ph, pw, P, Q, col, row, row0, P)
                gemm(0, 0, K, mm * PQ, CRS, w2.ctypes.data, CRS, col.ctypes.data, L, 0.0,
                     g.ctypes.data, L, iw, fw)
                for i in range(mm):
                    for k in range(K):
                        bk = b[k]
                        gr = g[k, i * PQ:(i + 1) * PQ]
                        yr = y[n0 + i, k]
{epilogue_from_g}        sl = next_slot(counter)
"""

_fused_lock = threading.Lock()
_fused = {}


def _fused_kernel(key, build):
    """The fused kernel ``key`` ((direction, variant)), generated by ``build() -> (fname, src, globals)``
    and compiled once (a parallel kernel with its serial twin, cached on disk)."""
    from . import _codegen
    fn = _fused.get(key)
    if fn is None:
        with _fused_lock:
            fn = _fused.get(key)
            if fn is None:
                fname, src, glb = build()
                fn = _fused[key] = _runtime.jit()(_codegen.compile_source(fname, src, glb))
    return fn


def _fused_forward_kernel(activation):
    """The fused forward kernel for ``activation`` (a name or None)."""
    from . import _codegen
    from ._table import get as _get_activation
    act = None if activation is None else _get_activation(activation)

    def build():
        p = _codegen.param_names(act, False)
        fname = f"conv_fused_forward_{'identity' if act is None else act.name}"
        fv = _codegen.element(False, p, i="", x="v")
        rows = _codegen.bias_act_rows
        src = _FWD_SRC.format(fname=fname, a=_codegen.args(p),
                              epilogue_in_place=rows("yr", "yr", "z[n0, k]", "bk", "PQ", fv, 20),
                              epilogue_from_g=rows("gr", "yr", "z[n0 + i, k]", "bk", "PQ", fv, 24))
        return fname, src, {"F": _epilogue.identity_jit if act is None else _codegen.scalar(act), "np": np,
                            "gemm": _gemm.gemm, "next_slot": _runtime.next_slot,
                            "_im2col_row": _im2col_row, "_im2col_gather": _im2col_gather}
    return _fused_kernel(("forward", None if act is None else act.name), build)


_BWD_SRC = """\
def {fname}(counter, nslots, x, w2, dy, z, dx, dws, dbs, R, S, sh, sw, ph, pw, P, Q, m, B, maps,
             need_input_grad{a}):
    # slots taken from counter until nslots; dws (nslots, K, CRS), dbs (nslots, K): slot sl's
    # dweight and dbias partials over its chunks; dx (N, C, H, W) zeroed, accumulated; maps as forward
    N, C = x.shape[0], x.shape[1]
    K, CRS = w2.shape
    PQ = P * Q
    L = m * PQ
    nchunks = (N + m - 1) // m
    isz = x.itemsize
    LB = m * min(B, P) * Q
    gather = maps.shape[0] != 0
    col = np.empty((CRS, LB), dtype=x.dtype)  # this thread's buffers, for every slot it takes
    dcol = np.empty((CRS if need_input_grad else 0, LB), dtype=x.dtype)
    dzt = np.empty((K, L), dtype=x.dtype)
    iw = np.empty(8, dtype=np.int32)
    fw = np.empty(2, dtype=x.dtype)
    sl = next_slot(counter)
    while sl < nslots:
        dw_ptr = dws.ctypes.data + sl * K * CRS * isz
        beta = 0.0
        for k in range(K):
            dbs[sl, k] = 0.0
        for ch in range(sl, nchunks, nslots):
            n0 = ch * m
            mm = min(m, N - n0)
            # dz = dy * act'(z) of the chunk as the (K, mm*PQ) matrix the GEMMs read, and its row sums
            for k in range(K):
                for i in range(mm):
                    dyr = dy[n0 + i, k]
                    zr = z[n0 + i, k]
                    dzr = dzt[k, i * PQ:(i + 1) * PQ]
                    for j in range(PQ):
                        dzr[j] = {dv}
                    dbs[sl, k] += _row_sum(dzr)
            # a large image goes by bands of B output rows (see _band_rows; B = P otherwise): rows
            # lo .. hi-1 (not p0, p1: the activation's parameters have those names in generated code)
            for lo in range(0, P, B):
                hi = min(P, lo + B)
                cols = mm * (hi - lo) * Q
                if gather:  # (multi-image chunks only: one band)
                    _im2col_gather(x, n0, mm, R, S, P, Q, col, maps)
                else:
                    for row in range(CRS):
                        _im2col_row(x, n0, mm, R, S, sh, sw, ph, pw, P, Q, col, row, lo, hi)
                a = dzt.ctypes.data + lo * Q * isz  # the band's columns of dz (lo is 0 when mm > 1)
                # dweight partial (K, CRS) += dz (K, cols) @ col.T (cols, CRS)
                gemm(0, 1, K, CRS, cols, a, L, col.ctypes.data, LB, beta, dw_ptr, CRS, iw, fw)
                beta = 1.0
                if need_input_grad:
                    # dcol (CRS, cols) = weight.T (CRS, K) @ dz (K, cols), scattered back by col2im
                    gemm(1, 0, CRS, cols, K, w2.ctypes.data, CRS, a, L, 0.0, dcol.ctypes.data, LB,
                         iw, fw)
                    for c in range(C):
                        _col2im_channel(dcol, n0, mm, R, S, sh, sw, ph, pw, P, Q, dx, c, lo, hi)
        sl = next_slot(counter)
"""


def _fused_backward_kernel(activation, step):
    """The fused backward kernel for ``activation`` (a name or None; ``step``: its derivative is the
    plain 0/1 step, see ``_epilogue.step_params``)."""
    from . import _codegen
    from ._table import get as _get_activation
    act = None if activation is None else _get_activation(activation)
    variant = "step" if step else (None if act is None else act.name)

    def build():
        if step:
            p, d = ["t", "zero", "one"], _epilogue.step_d
            dv = _codegen.element(True, p, i="[j]", x="zr", dy="dyr")
        elif act is None:
            p, d, dv = [], None, "dyr[j]"  # dz = dy (z is dy itself, unread)
        else:
            p, d = _codegen.param_names(act, True), _codegen.scalar(act, True)
            dv = _codegen.element(True, p, i="[j]", x="zr", dy="dyr")
        fname = f"conv_fused_backward_{'identity' if variant is None else variant}"
        src = _BWD_SRC.format(fname=fname, a=_codegen.args(p), dv=dv)
        return fname, src, {"D": d, "np": np, "gemm": _gemm.gemm, "next_slot": _runtime.next_slot,
                            "_im2col_row": _im2col_row,
                            "_col2im_channel": _col2im_channel, "_row_sum": _row_sum,
                            "_im2col_gather": _im2col_gather}
    return _fused_kernel(("backward", variant), build)


def _use_fused(N, C, K, CRS, PQ, m):
    return (config.CONV_NOPYTHON_GEMM and _gemm.available()
            and _gemm.fits(N * PQ, C * PQ, K * PQ, CRS * m * PQ, K * m * PQ))


def _band_rows(m, K, CRS, P, Q, itemsize):
    """Output rows per band of a one-image chunk: the fewest equal bands whose column buffer (CRS x
    band pixels) stays within ``K * config.CONV_BAND_BYTES_PER_CHANNEL``; P (one band) for multi-image
    chunks. OpenBLAS's single-thread SGEMM of K x CRS by CRS x columns slows down once that panel
    outgrows a budget that grows with K (bench/results/2026-11-25/sgemm-panel-sweep.txt, GFLOP/s at
    128 / 256 / 512 / 1024 columns: K = 16, CRS = 144: 96 / 104 / 76 / 42; K = 32, CRS = 288: 83 / 88 /
    79 / 68; K = 64, CRS = 576: 97 / 93 / 94 / 75)."""
    if m > 1:
        return P
    budget = K * config.CONV_BAND_BYTES_PER_CHANNEL
    nbands = min(P, -(-CRS * P * Q * itemsize // budget))
    return -(-P // max(1, nbands))


def _gather(m, Q):
    """im2col through gather maps (``_im2col_gather``) for multi-image chunks of output rows of at most
    ``config.CONV_GATHER_MAX_Q`` pixels; the row copies of ``_im2col_row`` otherwise (faster from 8)."""
    return m > 1 and Q <= config.CONV_GATHER_MAX_Q


def _chunking(N, PQ):
    """(images per chunk m, slots): chunks of at least config.CONV_CHUNK_MIN_COLUMNS GEMM columns."""
    m = int(max(1, min(N, -(-config.CONV_CHUNK_MIN_COLUMNS // PQ))))
    nchunks = -(-N // m)
    return m, int(max(1, min(nchunks, config.CONV_SLOTS_PER_THREAD * numba.get_num_threads())))


def _maps(m, x_shape, R, S, sh, sw, ph, pw, P, Q):
    """The gather maps of a multi-image chunk of small images (see ``_gather``), computed once per call
    and read by every slot; an empty (0, m*P*Q) array where the kernel copies rows instead."""
    gather = _gather(m, Q)
    maps = np.empty((R * S if gather else 0, m * P * Q), dtype=np.int64)
    if gather:
        _gather_maps(m, x_shape[1], x_shape[2], x_shape[3], R, S, sh, sw, ph, pw, P, Q, maps)
    return maps


def _run(kernel, flops, nslots, *args):
    """``kernel(counter, nslots, *args)`` over its slots: on the worker threads of
    ``_runtime.run_slots`` when the work pays for it, else on this thread; SciPy's BLAS on one thread
    meanwhile. The slots' partial results do not depend on which thread ran them, so both ways give
    the same bits."""
    with _gemm.single_threaded():
        _runtime.run_slots(kernel, nslots, args, flops >= config.CONV_PARALLEL_MIN_FLOPS)


# ---------------------------------------------------------------------------------------- workspace

_ws = threading.local()


def _workspace(name, shape, dtype):
    """A reusable per-thread buffer of at least this size, viewed with this shape (contents garbage)."""
    n = int(np.prod(shape, dtype=np.int64))
    key = (name, np.dtype(dtype).str)
    bufs = getattr(_ws, "bufs", None)
    if bufs is None:
        bufs = _ws.bufs = {}
    buf = bufs.get(key)
    if buf is None or buf.size < n:
        buf = bufs[key] = np.empty(n, dtype=dtype)
    return buf[:n].reshape(shape)


def _tile(N, CRS, PQ, itemsize):
    per_image = max(CRS * PQ * itemsize, 1)
    return int(max(1, min(N, config.CONV_WORKSPACE_BYTES // per_image)))


# ------------------------------------------------------------------------------- building blocks
# The stages of conv2d, public for people who compose their own convolution (or time the stages, as
# bench/conv_report.py does).

def images_per_tile(x_shape, weight_shape, stride=1, padding=0, dtype=np.float32):
    """How many images conv2d processes per tile: as many as keep the column buffer (C*R*S, nb*P*Q)
    under ``config.CONV_WORKSPACE_BYTES`` (at least 1, at most N).

    >>> import fastact as fa
    >>> fa.conv.images_per_tile((64, 16, 32, 32), (16, 16, 3, 3), padding=1)  # 144 x 1024 floats per image
    14
    """
    N, _, P, Q = conv_output_shape(x_shape, weight_shape, stride, padding)
    _, C, R, S = weight_shape
    return _tile(N, C * R * S, P * Q, np.dtype(dtype).itemsize)


def im2col(x, kernel_size, stride=1, padding=0, *, out=None):
    """The patch matrix of a convolution: ``col[(c, r, s), (n, p, q)] = xpad[n, c, p*sh + r, q*sw + s]``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
        float32 or float64, C-contiguous (a slice ``x[n0:n0 + m]`` of a batch is).
    kernel_size, stride, padding : int or (int, int)
    out : ndarray, shape (C*R*S, N*P*Q), optional
        Written in place (the same dtype as ``x``, C-contiguous).

    Returns
    -------
    col : ndarray, shape (C*R*S, N*P*Q)
        ``weight.reshape(K, -1) @ col`` is the convolution, images side by side along the columns.

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> x = np.arange(9.0).reshape(1, 1, 3, 3)
    >>> fa.im2col(x, 2)
    array([[0., 1., 3., 4.],
           [1., 2., 4., 5.],
           [3., 4., 6., 7.],
           [4., 5., 7., 8.]])
    """
    x = np.asarray(x)
    R, S = _pair(kernel_size, "kernel_size")
    N, C = x.shape[:2] if x.ndim == 4 else (None, None)
    _, _, P, Q = conv_output_shape(x.shape, (1, C if C is not None else 1, R, S), stride, padding)
    if x.dtype not in (np.float32, np.float64) or not x.flags.c_contiguous:
        raise TypeError(f"im2col: x must be a C-contiguous float32/float64 array, got {x.dtype} "
                        f"{'contiguous' if x.flags.c_contiguous else 'non-contiguous'}")
    shape = (C * R * S, N * P * Q)
    if out is None:
        out = np.empty(shape, dtype=x.dtype)
    elif out.shape != shape or out.dtype != x.dtype or not out.flags.c_contiguous:
        raise ValueError(f"im2col: out must be a C-contiguous {x.dtype} array of shape {shape}, got "
                         f"{out.dtype} {out.shape}")
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    if out.size:
        _im2col(x, 0, N, R, S, sh, sw, ph, pw, P, Q, out)
    return out


def gemm_epilogue(g, bias, out, *, activation=None, activation_params=None):
    """The forward's last stage: ``out[n, k, :] = act(g[k, n, :] + bias[k])`` in one pass.

    ``g`` is the GEMM result ``weight.reshape(K, -1) @ im2col(x)`` viewed (K, N, P*Q), ``bias`` (K,)
    and ``out`` (N, K, P*Q), all of one float dtype, C-contiguous.

    >>> import numpy as np, fastact as fa
    >>> x = np.arange(9.0).reshape(1, 1, 3, 3); w = np.ones((2, 1, 2, 2))
    >>> g = (w.reshape(2, -1) @ fa.im2col(x, 2)).reshape(2, 1, 4)
    >>> y = np.empty((1, 2, 4)); fa.gemm_epilogue(g, np.array([0.0, -20.0]), y, activation="relu")
    >>> np.array_equal(y.reshape(1, 2, 2, 2), fa.conv2d(x, w, np.array([0.0, -20.0]), activation="relu"))
    True
    """
    K, N, PQ = g.shape
    if bias.shape != (K,) or out.shape != (N, K, PQ) or not (g.dtype == bias.dtype == out.dtype):
        raise ValueError(f"gemm_epilogue: expected g (K, N, PQ), bias (K,), out (N, K, PQ) of one dtype; "
                         f"got {g.dtype} {g.shape}, {bias.dtype} {bias.shape}, {out.dtype} {out.shape}")
    pv = [g.dtype.type(v) for v in _epilogue.param_values(activation, activation_params)]
    _epilogue.get("conv", activation)(g, bias, out, np.empty((0, 0, 0), dtype=g.dtype), *pv)


def release_workspaces():
    """Free this thread's column and GEMM buffers (conv2d allocates them again on its next call).

    >>> import numpy as np, fastact as fa
    >>> _ = fa.conv2d(np.ones((2, 3, 8, 8)), np.ones((4, 3, 3, 3)))
    >>> fa.conv.release_workspaces()  # e.g. before measuring a cold call's memory
    """
    _ws.__dict__.pop("bufs", None)


# ------------------------------------------------------------------------------------------ forward

def _cast(x, weight, bias):
    """(x, weight, bias, dt): the compute dtype of the inputs (NumPy's casting; float16 computes in
    float32, integers in float64), x and weight C-contiguous in it; bias checked against weight's K."""
    K = weight.shape[0]
    dt = _compute_dtype(x.dtype, weight.dtype)
    if bias is not None:
        bias = np.asarray(bias)
        if bias.shape != (K,):
            raise ValueError(f"conv2d: bias must have shape ({K},) for weight of shape {weight.shape}, "
                             f"got {bias.shape}")
        dt = _compute_dtype(dt, bias.dtype)
    x = np.ascontiguousarray(x, dtype=dt)
    weight = np.ascontiguousarray(weight, dtype=dt)
    return x, weight, bias, dt


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None,
           activation_params=None, return_preactivation=False, algorithm="auto"):
    """2-D convolution (cross-correlation, as PyTorch) with bias and activation fused into its epilogue.

    ``z[n, k, p, q] = bias[k] + sum_{c,r,s} weight[k, c, r, s] * xpad[n, g*C/G + c, p*sh + r*dh, q*sw + s*dw]``
    and ``y = act(z)``, where ``xpad`` is ``x`` zero-padded by ``padding``, ``g = k // (K/G)`` the group
    of output channel k and ``G = groups``.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W), or unbatched (C, H, W) (then y is (K, P, Q))
    weight : array_like, shape (K, C // groups, R, S)
    bias : array_like, shape (K,), optional
    stride : int or (int, int)
    padding : int, (int, int), 'same' or 'valid'
        Zero padding on each side; ``'valid'`` none, ``'same'`` (stride 1 only) what keeps the output
        the input's size (with an even total, the extra row and column at the bottom and right, as
        PyTorch).
    dilation : int or (int, int)
        Spacing between the kernel's taps.
    groups : int
        Input and output channels split into this many groups, each convolved on its own; C and K
        must be divisible by it. ``groups == C`` is a depthwise convolution (a direct kernel of its own,
        :mod:`fastact.depthwise`).
    activation : str, optional
        Any elementwise activation of the table (``'relu'``, ``'gelu'``, ...), applied in the same pass
        that writes ``y``.
    activation_params : dict or sequence, optional
        The activation's parameters (e.g. ``{'negative_slope': 0.1}``), scalars only.
    return_preactivation : bool, default False
        Also return the pre-activation ``z``, written in the same pass as ``y``: what
        :func:`conv2d_backward` needs to differentiate through the activation. Without an activation
        ``z`` is ``y`` itself (no copy).
    algorithm : {'auto', 'im2col', 'winograd'}, default 'auto'
        How to compute it. ``'im2col'``: unfold the input and multiply by the weights (any kernel,
        stride and dtype). ``'winograd'``: Winograd F(4x4, 3x3) (:mod:`fastact.winograd`), 3x3 kernels at
        stride 1 only, 2.25 multiplies per output and channel pair instead of 9, with a float32 error of
        a few ulps of the output's scale. ``'auto'``: Winograd for float32 3x3 stride-1 convolutions of
        8 or more input channels and at least 1 MFLOP per image (16 channels at 14x14, not at 8x8),
        im2col otherwise (the rule and its measurements: docs/performance.md).

    Returns
    -------
    y : ndarray, shape (N, K, P, Q)
        With ``P = (H + 2*ph - R) // sh + 1`` and likewise ``Q``; the dtype follows NumPy's casting of
        the inputs (float16 computes in float32, integers in float64).
    z : ndarray, shape (N, K, P, Q)
        Only with ``return_preactivation=True``.

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> x = np.ones((1, 1, 3, 3), np.float32); w = np.ones((2, 1, 2, 2), np.float32)
    >>> fa.conv2d(x, w, np.array([0.0, -5.0], np.float32), activation="relu")[:, :, 0, 0]
    array([[4., 0.]], dtype=float32)
    >>> y, z = fa.conv2d(x, w, np.array([0.0, -5.0], np.float32), activation="relu",
    ...                  return_preactivation=True)
    >>> z[:, :, 0, 0]
    array([[ 4., -1.]], dtype=float32)
    """
    keep_z = return_preactivation and activation is not None
    x, weight = np.asarray(x), np.asarray(weight)
    if x.ndim != 4:
        if x.ndim != 3:
            raise ValueError(f"conv2d: x must be 4-D (N, C, H, W) or 3-D (C, H, W), got shape {x.shape}")
        # unbatched (C, H, W), as PyTorch: one image, the batch axis added and removed
        out = conv2d(x[None], weight, bias, stride, padding, dilation, groups, activation=activation,
                     activation_params=activation_params, return_preactivation=return_preactivation,
                     algorithm=algorithm)
        return (out[0][0], out[1][0]) if return_preactivation else out[0]
    shape, stride, pads, dilation, groups = conv_geometry(x.shape, weight.shape, stride, padding, dilation,
                                                          groups)
    if _is_plain(pads, dilation, groups):
        y, z = _conv2d_forward(x, weight, bias, shape, stride, (pads[0], pads[2]), activation,
                               activation_params, keep_z, algorithm)
    else:
        _general_algorithm(algorithm)
        y, z = _conv2d_general(x, weight, bias, shape, stride, pads, dilation, groups, activation,
                               activation_params, keep_z)
    if not return_preactivation:
        return y
    return y, (z if keep_z else y)


ALGORITHMS = ("auto", "im2col", "winograd")


def choose_algorithm(algorithm, x_shape, weight_shape, stride, dtype):
    """The algorithm :func:`conv2d` runs: ``algorithm`` itself when it is ``'im2col'`` or
    ``'winograd'`` (ValueError if Winograd cannot compute this convolution), else the rule of
    ``'auto'``: Winograd F(4x4, 3x3) for float32 3x3 stride-1 convolutions of at least
    ``config.CONV_WINOGRAD_MIN_CHANNELS`` input channels, ``config.CONV_WINOGRAD_MIN_IMAGE_FLOPS`` of
    work per image, 4x4 tiles at least ``config.CONV_WINOGRAD_MIN_TILE_USE`` full and
    ``config.CONV_WINOGRAD_MIN_POSITIONS`` output positions in the call when the compiled BLAS call is
    available (``fastact._gemm``), im2col otherwise."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"conv2d: algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    stride = _pair(stride, "stride")
    fits = winograd.applies(weight_shape, stride)
    if algorithm == "winograd":
        if not fits:
            raise ValueError(f"conv2d: algorithm='winograd' needs a 3x3 kernel at stride 1, got weight of "
                             f"shape {tuple(weight_shape)} and stride {stride}")
        if not _gemm.available():
            raise ValueError(f"conv2d: algorithm='winograd' needs BLAS callable from compiled code, which "
                             f"is unavailable here ({_gemm.REASON}); use algorithm='im2col'")
        return "winograd"
    N, C, H, W = x_shape
    work = 2 * weight_shape[0] * C * 9 * H * W
    tile_use = H * W / (16 * -(-H // 4) * -(-W // 4)) if H and W else 0.0
    if algorithm == "auto" and fits and np.dtype(dtype) == np.float32 and config.CONV_WINOGRAD \
            and C >= config.CONV_WINOGRAD_MIN_CHANNELS and work >= config.CONV_WINOGRAD_MIN_IMAGE_FLOPS \
            and tile_use >= config.CONV_WINOGRAD_MIN_TILE_USE and N * H * W >= config.CONV_WINOGRAD_MIN_POSITIONS \
            and _gemm.available():
        return "winograd"
    return "im2col"


def _conv2d_forward(x, weight, bias, shape, stride, padding, activation, activation_params, keep_z,
                    algorithm="auto"):
    """conv2d of one group, no dilation, ``padding`` (ph, pw) on both sides, ``shape`` (N, K, P, Q) from
    :func:`conv_geometry`: (y, z), z the pre-activation output when keep_z (else None)."""
    x, weight, bias, dt = _cast(x, weight, bias)
    N, K, P, Q = shape
    pv = [dt.type(v) for v in _epilogue.param_values(activation, activation_params)]
    epi = _epilogue.get("conv", activation)
    _, C, H, W = x.shape
    _, _, R, S = weight.shape
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    CRS, PQ = C * R * S, P * Q
    y = np.empty((N, K, P, Q), dtype=dt)
    z = np.empty((N, K, P, Q), dtype=dt) if keep_z else None
    b = np.zeros(K, dtype=dt) if bias is None else np.ascontiguousarray(bias, dtype=dt)
    w2 = weight.reshape(K, CRS)
    algorithm = choose_algorithm(algorithm, x.shape, weight.shape, (sh, sw), dt)
    if N == 0 or PQ == 0:
        return y, z
    # Winograd mixes each 6x6 input tile, so an inf or NaN would spread over the tile's 16 outputs; where
    # an output is not finite the direct method recomputes it all, with its exact inf and NaN pattern
    if algorithm == "winograd" and winograd.conv2d_forward(
            x, winograd.transform_weight(weight), b, y, z if keep_z else np.empty((0, 0, 0, 0), dtype=dt),
            (ph, pw), activation, pv):
        return y, z
    no_z = np.empty((0, 0, 0), dtype=dt)
    m, nslots = _chunking(N, PQ)
    if _use_fused(N, C, K, CRS, PQ, m):
        kern = _fused_forward_kernel(activation)
        _run(kern, 2 * N * K * CRS * PQ, nslots, x, w2, b, y.reshape(N, K, PQ),
             z.reshape(N, K, PQ) if keep_z else no_z, R, S, sh, sw, ph, pw, P, Q, m,
             _band_rows(m, K, CRS, P, Q, dt.itemsize), _maps(m, x.shape, R, S, sh, sw, ph, pw, P, Q), *pv)
        return y, z
    nb = _tile(N, CRS, PQ, dt.itemsize)
    into_y = PQ >= config.CONV_GEMM_INTO_OUTPUT_MIN_PQ
    if into_y:
        epi = _epilogue.get("conv_inplace", activation)
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        col = _workspace("col", (CRS, m * PQ), dt)
        _im2col(x, n0, m, R, S, sh, sw, ph, pw, P, Q, col)
        zt = z[n0:n0 + m].reshape(m, K, PQ) if keep_z else no_z
        if into_y:
            # one GEMM per image, each writing its NCHW output block directly: no GEMM buffer, so a
            # forward needs no memory beyond the column buffer (the epilogue then works in place)
            yv = y[n0:n0 + m].reshape(m, K, PQ)
            _blas.matmul(w2, col.reshape(CRS, m, PQ).transpose(1, 0, 2), out=yv)
            epi(yv, b, zt, *pv)
            continue
        g = _workspace("gemm", (K, m * PQ), dt)
        _blas.matmul(w2, col, out=g)
        epi(g.reshape(K, m, PQ), b, y[n0:n0 + m].reshape(m, K, PQ), zt, *pv)
    return y, z


def _general_algorithm(algorithm):
    if algorithm not in ALGORITHMS:
        raise ValueError(f"conv2d: algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm == "winograd":
        raise ValueError("conv2d: algorithm='winograd' needs one group, no dilation and the same padding on "
                         "both sides")


def _unfold(xp, R, S, stride, dilation, P, Q):
    """im2col of an already padded ``xp`` (m, C, Hp, Wp) with dilation, by strided slices: (C*R*S, m*P*Q)."""
    m, C = xp.shape[:2]
    (sh, sw), (dh, dw) = stride, dilation
    col = np.empty((C, R, S, m, P, Q), dtype=xp.dtype)
    for r in range(R):
        for s in range(S):
            col[:, r, s] = xp[:, :, r * dh:r * dh + sh * (P - 1) + 1:sh,
                              s * dw:s * dw + sw * (Q - 1) + 1:sw].transpose(1, 0, 2, 3)
    return col.reshape(C * R * S, m * P * Q)


def _pad(x, pads):
    pt, pb, pl, pr = pads
    return np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))) if any(pads) else x


def _conv_unfold(x, w, stride, pads, dilation, out):
    """``out`` (N, K, P, Q) = the convolution of one group (no bias): im2col by slices of the padded
    input, tile by tile of images, and one GEMM per tile."""
    N, C = x.shape[:2]
    K, _, R, S = w.shape
    P, Q = out.shape[2:]
    xp = _pad(x, pads)
    w2 = np.ascontiguousarray(w.reshape(K, C * R * S))
    nb = _tile(N, C * R * S, P * Q, x.itemsize)
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        g = _blas.matmul(w2, _unfold(xp[n0:n0 + m], R, S, stride, dilation, P, Q))
        out[n0:n0 + m] = g.reshape(K, m, P, Q).transpose(1, 0, 2, 3)


def _conv_unfold_backward(dz, x, w, stride, pads, dilation, need_input_grad):
    """(dx or None, dweight) of :func:`_conv_unfold` given ``dz``: dweight = dz @ col^T per tile, and
    dcol = w^T @ dz added back through the same slices (one slice never repeats a pixel)."""
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = dz.shape[2:]
    (sh, sw), (dh, dw) = stride, dilation
    xp = _pad(x, pads)
    w2 = np.ascontiguousarray(w.reshape(K, C * R * S))
    dw2 = np.zeros((K, C * R * S), dtype=x.dtype)
    dxp = np.zeros(xp.shape, dtype=x.dtype) if need_input_grad else None
    nb = _tile(N, C * R * S, P * Q, x.itemsize)
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        col = _unfold(xp[n0:n0 + m], R, S, stride, dilation, P, Q)
        dzc = np.ascontiguousarray(dz[n0:n0 + m].transpose(1, 0, 2, 3)).reshape(K, m * P * Q)
        dw2 += _blas.matmul(dzc, col.T)
        if need_input_grad:
            dcol = _blas.matmul(w2.T, dzc).reshape(C, R, S, m, P, Q)
            for r in range(R):
                for s in range(S):
                    dxp[n0:n0 + m, :, r * dh:r * dh + sh * (P - 1) + 1:sh,
                        s * dw:s * dw + sw * (Q - 1) + 1:sw] += dcol[:, r, s].transpose(1, 0, 2, 3)
    dx = None
    if need_input_grad:
        pt, pl = pads[0], pads[2]
        dx = np.ascontiguousarray(dxp[:, :, pt:pt + H, pl:pl + W])
    return dx, dw2.reshape(w.shape)


def _groups(C, K, groups):
    """[(input channel slice, output channel slice)] of each group."""
    Cg, Kg = C // groups, K // groups
    return [(slice(g * Cg, (g + 1) * Cg), slice(g * Kg, (g + 1) * Kg)) for g in range(groups)]


def _is_depthwise(C, groups):
    return groups == C and groups > 1


def _conv2d_general(x, weight, bias, shape, stride, pads, dilation, groups, activation, activation_params,
                    keep_z):
    """conv2d with groups, dilation or uneven padding: depthwise by its direct kernel, other groups one
    by one through im2col by slices; then the bias and the activation in place."""
    N, K, P, Q = shape
    x, weight, bias, dt = _cast(x, weight, bias)
    pv = [dt.type(v) for v in _epilogue.param_values(activation, activation_params)]
    b = np.zeros(K, dtype=dt) if bias is None else np.ascontiguousarray(bias, dtype=dt)
    y = np.empty(shape, dtype=dt)
    z = np.empty(shape, dtype=dt) if keep_z else None
    if N == 0 or P * Q == 0:
        return y, z
    C = x.shape[1]
    if _is_depthwise(C, groups):
        depthwise.conv_forward(x, weight, y, stride, pads, dilation)
        if bias is None and activation is None:   # nothing to add: y is the result (BatchNorm follows)
            return y, z
    else:
        for cs, ks in _groups(C, K, groups):
            yg = np.empty((N, ks.stop - ks.start, P, Q), dtype=dt)
            _conv_unfold(np.ascontiguousarray(x[:, cs]), weight[ks], stride, pads, dilation, yg)
            y[:, ks] = yg
    zt = z.reshape(N, K, P * Q) if keep_z else np.empty((0, 0, 0), dtype=dt)
    _epilogue.get("conv_inplace", activation)(y.reshape(N, K, P * Q), b, zt, *pv)
    return y, z


def _conv2d_backward_general(dy, x, weight, shape, stride, pads, dilation, groups, preactivation, activation,
                             activation_params, need_input_grad):
    N, K, P, Q = shape
    x, weight, _, dt = _cast(x, weight, None)
    dy = np.asarray(dy)
    if dy.shape != shape:
        raise ValueError(f"conv2d_backward: dy has shape {dy.shape}, but conv2d of x {x.shape} with weight "
                         f"{weight.shape} gives {shape}")
    if activation is None:
        _epilogue.param_values(None, activation_params)
        z = None
    else:
        z = check_preactivation("conv2d_backward", preactivation, dy.shape, activation)
    C = x.shape[1]
    if _is_depthwise(C, groups) and activation is None and N * P * Q:
        # the depthwise kernel sums the bias gradient in its pass over dz
        dx, dw, dbias = depthwise.conv_backward(np.ascontiguousarray(dy, dtype=dt), x, weight, stride, pads,
                                                dilation, need_input_grad)
        if dbias is not None:
            return dx, dw, dbias
        return dx, dw, dy.sum(axis=(0, 2, 3), dtype=np.float64).astype(dt)
    dz, dbias = _dz_dbias(dy, z, dt, activation, activation_params)
    dx = np.zeros(x.shape, dtype=dt) if need_input_grad else None
    dw = np.zeros(weight.shape, dtype=dt)
    if N == 0 or P * Q == 0:
        return dx, dw, dbias
    if _is_depthwise(C, groups):
        dx, dw, _ = depthwise.conv_backward(dz, x, weight, stride, pads, dilation, need_input_grad)
        return dx, dw, dbias
    for cs, ks in _groups(C, K, groups):
        dxg, dw[ks] = _conv_unfold_backward(np.ascontiguousarray(dz[:, ks]), np.ascontiguousarray(x[:, cs]),
                                            weight[ks], stride, pads, dilation, need_input_grad)
        if need_input_grad:
            dx[:, cs] = dxg
    return dx, dw, dbias


# ----------------------------------------------------------------------------------------- backward

def conv2d_backward(dy, x, weight, stride=1, padding=0, dilation=1, groups=1, *, preactivation=None,
                    activation=None, activation_params=None, need_input_grad=True, algorithm="auto"):
    """Gradients of :func:`conv2d`: returns ``(dx, dweight, dbias)``.

    Without ``activation``, ``dy`` is the gradient of the pre-activation ``z`` (conv + bias). With
    ``activation``, ``dy`` is the gradient of the activation's output ``y = act(z)`` and
    ``preactivation`` must be the ``z`` of the forward (``conv2d(..., return_preactivation=True)``);
    ``dz = dy * act'(z)`` and the bias gradient then come out of one pass over ``dy`` and ``z``.
    From ``dz``: ``dbias[k] = sum_{n,p,q} dz[n, k, p, q]``, ``dweight`` correlates ``dz`` with the input
    patches, and ``dx`` scatters ``weight`` transposed times ``dz`` back through col2im.

    Parameters
    ----------
    dy : array_like, shape (N, K, P, Q), or (K, P, Q) for an unbatched x
    x : array_like, shape (N, C, H, W), or unbatched (C, H, W) (then dx is (C, H, W))
    weight : array_like, shape (K, C // groups, R, S)
    stride, padding, dilation, groups
        As in the forward.
    preactivation : array_like, shape (N, K, P, Q), optional
        The forward's ``z``; required with ``activation``, ignored without.
    activation : str, optional
        The activation the forward fused.
    activation_params : dict or sequence, optional
        Its parameters as in the forward, plus any backward parameters of the table (e.g. ReLU's
        ``subgradient``, the derivative used at the kink).
    need_input_grad : bool, default True
        False skips the input gradient (``dx`` is None), saving a GEMM and the col2im: a network's
        first layer never needs it.
    algorithm : {'auto', 'im2col', 'winograd'}, default 'auto'
        As in :func:`conv2d`, with the same rule for ``'auto'`` (and padding at most 2 for Winograd):
        by Winograd, ``dx`` is the 3x3 convolution of ``dz`` with the flipped kernel and ``dweight``
        sums the transformed tiles of ``dz`` against those of ``x`` (:func:`fastact.winograd.conv2d_backward`).

    Returns
    -------
    dx : ndarray, shape (N, C, H, W), or None
    dweight : ndarray, shape (K, C, R, S)
    dbias : ndarray, shape (K,)

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> x = np.arange(9.0).reshape(1, 1, 3, 3); w = np.ones((1, 1, 2, 2))
    >>> dx, dw, db = fa.conv2d_backward(np.ones((1, 1, 2, 2)), x, w)
    >>> dx[0, 0]
    array([[1., 2., 1.],
           [2., 4., 2.],
           [1., 2., 1.]])
    >>> dw[0, 0], db
    (array([[ 8., 12.],
           [20., 24.]]), array([4.]))

    Through a fused ReLU: only the outputs whose pre-activation was positive pass their gradient.

    >>> y, z = fa.conv2d(x, w, np.array([-20.0]), activation="relu", return_preactivation=True)
    >>> z[0, 0]
    array([[-12.,  -8.],
           [  0.,   4.]])
    >>> _, dw, db = fa.conv2d_backward(np.ones((1, 1, 2, 2)), x, w, preactivation=z, activation="relu",
    ...                                need_input_grad=False)
    >>> dw[0, 0], db
    (array([[4., 5.],
           [7., 8.]]), array([1.]))
    """
    x, weight = np.asarray(x), np.asarray(weight)
    if x.ndim != 4:
        if x.ndim != 3:
            raise ValueError(f"conv2d_backward: x must be 4-D (N, C, H, W) or 3-D (C, H, W), got shape "
                             f"{x.shape}")
        # unbatched (C, H, W): dy (K, P, Q) and the preactivation too
        dy = np.asarray(dy)
        if dy.ndim != 3:
            raise ValueError(f"conv2d_backward: x is unbatched (shape {x.shape}), so dy must be 3-D (K, P, Q), "
                             f"got shape {dy.shape}")
        z = None if preactivation is None else np.asarray(preactivation)
        if z is not None and z.ndim != 3:
            raise ValueError(f"conv2d_backward: x is unbatched (shape {x.shape}), so preactivation must be "
                             f"3-D (K, P, Q), got shape {z.shape}")
        dx, dw, db = conv2d_backward(dy[None], x[None], weight, stride, padding, dilation, groups,
                                     preactivation=None if z is None else z[None], activation=activation,
                                     activation_params=activation_params, need_input_grad=need_input_grad,
                                     algorithm=algorithm)
        return (None if dx is None else dx[0]), dw, db
    shape, stride, pads, dilation, groups = conv_geometry(x.shape, weight.shape, stride, padding, dilation,
                                                          groups)
    if not _is_plain(pads, dilation, groups):
        _general_algorithm(algorithm)
        return _conv2d_backward_general(dy, x, weight, shape, stride, pads, dilation, groups, preactivation,
                                        activation, activation_params, need_input_grad)
    padding = (pads[0], pads[2])
    x, weight, _, dt = _cast(x, weight, None)
    dy = np.asarray(dy)
    if dy.shape != shape:
        raise ValueError(f"conv2d_backward: dy has shape {dy.shape}, but conv2d of x {x.shape} with "
                         f"weight {weight.shape} (stride {stride!r}, padding {padding!r}) gives {shape}")
    N, K, P, Q = shape
    if activation is None:
        _epilogue.param_values(None, activation_params)  # ValueError for parameters without activation
    else:
        z = check_preactivation("conv2d_backward", preactivation, dy.shape, activation)
    _, C, R, S = weight.shape
    ph, pw = _pair(padding, "padding")
    if choose_algorithm(algorithm, x.shape, weight.shape, stride, dt) == "winograd" and N and P * Q:
        if max(ph, pw) > 2:
            if algorithm == "winograd":
                raise ValueError(f"conv2d_backward: algorithm='winograd' needs padding of at most 2, got "
                                 f"{padding!r}")
        else:
            grads = _backward_winograd(dy, z if activation is not None else None, x, weight, (ph, pw), dt,
                                       activation, activation_params, need_input_grad)
            if grads is not None:
                return grads
    if N and P * Q and _use_fused(N, C, K, C * R * S, P * Q, _chunking(N, P * Q)[0]):
        # dz = dy * act'(z) and the bias sums inside the chunk loop, while the chunk is in cache
        dy = np.ascontiguousarray(dy, dtype=dt)
        if activation is None:
            z, pv, step = dy, [], None
        else:
            z = np.ascontiguousarray(z, dtype=dt)
            pv = [dt.type(v) for v in _epilogue.param_values(activation, activation_params, backward=True)]
            from ._table import get as _get_activation
            step = _epilogue.step_params(_get_activation(activation).name, pv, dt)
        kern = _fused_backward_kernel(activation, step is not None)
        return _backward_fused(kern, dy, z, x, weight, stride, padding, need_input_grad, step or pv)
    dz, dbias = _dz_dbias(dy, z if activation is not None else None, dt, activation, activation_params)
    dx, dw = _conv2d_backward_data_weight(dz, x, weight, stride, padding, need_input_grad)
    return dx, dw, dbias


def _backward_winograd(dy, z, x, weight, padding, dt, activation, activation_params, need_input_grad):
    """(dx or None, dweight, dbias) by Winograd (:func:`fastact.winograd.conv2d_backward`), or None when
    a result was not finite (the caller recomputes by im2col)."""
    dz, dbias = _dz_dbias(dy, z, dt, activation, activation_params)
    dx, dw = winograd.conv2d_backward(dz, x, weight, padding, need_input_grad)
    if dw is None:
        return None
    return dx, dw, dbias


def _dz_dbias(dy, z, dt, activation, activation_params):
    """(dz, dbias) of a convolution: ``dz = dy * act'(z)`` (``dy`` itself without an activation) and
    its sums over (n, p, q), in one pass; dz C-contiguous in ``dt``, shaped as dy."""
    if activation is None:
        dz = np.ascontiguousarray(dy, dtype=dt)
        return dz, dz.sum(axis=(0, 2, 3), dtype=np.float64).astype(dt)
    N, K, P, Q = dy.shape
    dz, dbias = _activation_backward(dy.reshape(N, K, P * Q), z.reshape(N, K, P * Q), dt, activation,
                                     activation_params)
    return dz.reshape(dy.shape), dbias


def _activation_backward(dy, z, dt, activation, activation_params):
    """(dz, dbias): ``dz = dy * act'(z)`` and its sum over axes 0 and 2, in one pass; dy and z are
    (A, K, L) views (conv: (N, K, P*Q); linear: (rows, O, 1)), dz comes back (A, K, L)."""
    A, K, L = z.shape
    # C-contiguous dy, z and dz: the kernel writes dz in place, so it must be the array returned
    z = np.ascontiguousarray(z, dtype=dt)
    dz = np.empty(z.shape, dtype=dt)
    part = np.empty((A, K), dtype=np.float64)
    pv = [dt.type(v) for v in _epilogue.param_values(activation, activation_params, backward=True)]
    _epilogue.get("backward", activation)(np.ascontiguousarray(dy, dtype=dt), z, dz, part, *pv)
    return dz, part.sum(axis=0).astype(dt)


def _backward_fused(kern, dy, z, x, weight, stride, padding, need_input_grad, params):
    """(dx or None, dweight, dbias) by the fused backward ``kern``; dy, z, x, weight contiguous, one
    dtype, N and P*Q not 0."""
    dt = x.dtype
    N, C, H, W = x.shape
    K, _, R, S = weight.shape
    _, _, P, Q = dy.shape
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    CRS, PQ = C * R * S, P * Q
    m, nslots = _chunking(N, PQ)
    dx = np.zeros((N, C, H, W), dtype=dt) if need_input_grad else np.empty((0, 0, 0, 0), dtype=dt)
    dws = np.empty((nslots, K, CRS), dtype=dt)
    dbs = np.empty((nslots, K), dtype=np.float64)
    B = _band_rows(m, K, CRS, P, Q, dt.itemsize)
    _run(kern, (4 if need_input_grad else 2) * N * K * CRS * PQ, nslots, x, weight.reshape(K, CRS),
         dy.reshape(N, K, PQ), z.reshape(N, K, PQ), dx, dws, dbs, R, S, sh, sw, ph, pw, P, Q, m, B,
         _maps(m, x.shape, R, S, sh, sw, ph, pw, P, Q), need_input_grad, *params)
    dw = dws[0] if nslots == 1 else dws.sum(axis=0)
    return dx if need_input_grad else None, dw.reshape(weight.shape), dbs.sum(axis=0).astype(dt)


def _conv2d_backward_data_weight(dz, x, weight, stride, padding, need_input_grad):
    """(dx or None, dweight) from the pre-activation gradient dz by the NumPy path (tiles of images,
    GEMMs through NumPy's BLAS); all arrays contiguous, one dtype."""
    dt = x.dtype
    N, C, H, W = x.shape
    K, _, R, S = weight.shape
    _, _, P, Q = dz.shape
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    CRS, PQ = C * R * S, P * Q
    w2 = weight.reshape(K, CRS)
    dw = np.zeros((K, CRS), dtype=dt)
    dx = np.zeros((N, C, H, W), dtype=dt) if need_input_grad else None
    if N == 0 or PQ == 0:
        return dx, dw.reshape(weight.shape)
    nb = _tile(N, CRS, PQ, dt.itemsize)
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        col = _workspace("col", (CRS, m * PQ), dt)
        _im2col(x, n0, m, R, S, sh, sw, ph, pw, P, Q, col)
        dyt = _workspace("dyt", (K, m, PQ), dt)
        dyt[...] = dz[n0:n0 + m].reshape(m, K, PQ).transpose(1, 0, 2)
        dyt2 = dyt.reshape(K, m * PQ)
        dw += _blas.matmul(dyt2, col.T)
        if need_input_grad:
            dcol = _workspace("dcol", (CRS, m * PQ), dt)
            _blas.matmul(w2.T, dyt2, out=dcol)
            _col2im(dcol, n0, m, R, S, sh, sw, ph, pw, P, Q, dx)
    return dx, dw.reshape(weight.shape)
