"""Device GEMM epilogues and backward prologues: bias + activation in the pass that writes the output,
and the activation's backward in the pass that sums the bias gradient (as ``fastact._epilogue`` on
the CPU).

Shapes: N batch (rows), K output channels / features, L = P*Q output pixels.

* ``forward(activation, 'conv')(g, b, y, z, *p)``: ``g`` (K, N*L) the conv GEMM, ``y``/``z`` (N, K, L);
  ``y = act(g + b[k])`` in NCHW order, and the pre-activation ``z = g + b[k]`` when ``z.size``.
* ``forward(activation, 'linear')(g, b, y, z, *p)``: (N, K) arrays, bias along the last axis; ``y``
  may be ``g`` (in place: each element is read and written by one thread).
* ``backward(activation, 'rows')(dy, z, dz, part, *p, *b)``: (N, K, L) arrays; one block per (n, k)
  row writes ``dz = dy * act'(z)`` (when ``dz.size``) and ``part[n, k]``, the row's float64 sum,
  reduced in shared memory; :func:`col_sum` then gives the bias gradient.
* ``backward(activation, 'cols')(dy, z, dz, db, *p, *b)``: (N, K) arrays (a Linear); one thread per
  column ``k`` (coalesced across threads) writes ``dz[:, k]`` and ``db[k]``.

The per-element expression and the parameter names come from ``fastact._codegen``; ``activation`` is a
table name or None (identity, for an unfused layer: then ``dz`` is usually not written at all).
"""

import numpy as np

from .. import _codegen
from ._device import GRID_STRIDE, cached, compile_source, kernel, require, scalar_fns, setting


def _forward_src(kind, fname, p):
    a = _codegen.args(p)
    fv = _codegen.element(False, p, i="", x="v")  # F(v, *p)
    if kind == "conv":
        return (f"def {fname}(g, b, y, z{a}):\n"
                f"    N, K, L = y.shape\n"
                f"    keep = z.size != 0\n"
                f"    for t in {GRID_STRIDE.format(n='N * K * L')}:\n"
                f"        j = t % L\n"
                f"        k = (t // L) % K\n"
                f"        n = t // (L * K)\n"
                f"        v = g[k, n * L + j] + b[k]\n"
                f"        y[n, k, j] = {fv}\n"
                f"        if keep:\n"
                f"            z[n, k, j] = v\n")
    return (f"def {fname}(g, b, y, z{a}):\n"
            f"    N, K = y.shape\n"
            f"    keep = z.size != 0\n"
            f"    for t in {GRID_STRIDE.format(n='N * K')}:\n"
            f"        k = t % K\n"
            f"        n = t // K\n"
            f"        v = g[n, k] + b[k]\n"
            f"        if keep:\n"
            f"            z[n, k] = v\n"
            f"        y[n, k] = {fv}\n")


def _backward_src(kind, fname, p):
    a = _codegen.args(p)
    if kind == "rows":
        dv = _codegen.element(True, p, i="[n, k, j]", x="z")  # dy[n, k, j] * D(z[n, k, j], *p, *b)
        return (f"def {fname}(dy, z, dz, part{a}):\n"
                f"    acc = cuda.shared.array(NT, dtype=f64)\n"
                f"    tid = cuda.threadIdx.x\n"
                f"    N, K, L = z.shape\n"
                f"    keep = dz.size != 0\n"
                f"    for row in range(int64(cuda.blockIdx.x), N * K, int64(cuda.gridDim.x)):\n"
                f"        n = row // K\n"
                f"        k = row - n * K\n"
                f"        s = 0.0\n"
                f"        for j in range(int64(tid), L, int64(NT)):\n"
                f"            v = {dv}\n"
                f"            if keep:\n"
                f"                dz[n, k, j] = v\n"
                f"            s += v\n"
                f"        acc[tid] = s\n"
                f"        cuda.syncthreads()\n"
                # tree reduction; HALF is half the power of two >= NT, so any block size works
                f"        h = HALF\n"
                f"        while h > 0:\n"
                f"            if tid < h and tid + h < NT:\n"
                f"                acc[tid] += acc[tid + h]\n"
                f"            cuda.syncthreads()\n"
                f"            h //= 2\n"
                f"        if tid == 0:\n"
                f"            part[n, k] = acc[0]\n"
                f"        cuda.syncthreads()  # acc is reused by the block's next row\n")
    dv = _codegen.element(True, p, i="[n, k]", x="z")
    return (f"def {fname}(dy, z, dz, db{a}):\n"
            f"    N, K = z.shape\n"
            f"    keep = dz.size != 0\n"
            f"    for k in {GRID_STRIDE.format(n='K')}:\n"
            f"        s = 0.0\n"
            f"        for n in range(N):\n"
            f"            v = {dv}\n"
            f"            if keep:\n"
            f"                dz[n, k] = v\n"
            f"            s += v\n"
            f"        db[k] = s\n")


def forward(activation, kind):
    """The forward epilogue kernel ``kind`` ('conv' or 'linear') of ``activation`` (name or None)."""
    f, d, act = scalar_fns(activation)
    name = act.name if act is not None else "identity"

    def build():
        fname = f"cuda_{kind}_epilogue_{name}"
        src = _forward_src(kind, fname, _codegen.param_names(act))
        return require().jit(compile_source(fname, src, {"F": f}))
    return cached(("epilogue", name, kind), build)


def backward(activation, kind):
    """The backward prologue kernel ``kind`` ('rows' or 'cols') of ``activation`` (name or None).

    A 'rows' kernel must be launched with ``THREADS_PER_BLOCK`` threads (the size it was built for).
    """
    f, d, act = scalar_fns(activation)
    name = act.name if act is not None else "identity"
    nt = setting("THREADS_PER_BLOCK")

    def build():
        fname = f"cuda_{kind}_prologue_{name}"
        src = _backward_src(kind, fname, _codegen.param_names(act, backward=True))
        half = 1
        while 2 * half < nt:
            half *= 2
        glb = {"D": d, "NT": nt, "HALF": half if nt > 1 else 0, "f64": np.float64}
        return require().jit(compile_source(fname, src, glb))
    return cached(("prologue", name, kind, nt if kind == "rows" else None), build)


def _k_col_sum(part, db):
    # db[k] = sum over rows of part (N, K), in float64: one thread per k
    N, K = part.shape
    for k in range(np.int64(cuda.grid(1)), K, np.int64(cuda.gridsize(1))):
        acc = 0.0
        for n in range(N):
            acc += part[n, k]
        db[k] = acc


def col_sum():
    """The kernel ``(part (N, K), db (K,))``: column sums of ``part`` into ``db``."""
    return cached(("col_sum",), lambda: kernel(_k_col_sum))
