"""Generated GEMM epilogues and backward prologues: bias + activation in the pass that writes the output.

Shapes (one key for the file): K = output channels / features, M = columns of a GEMM tile.

* ``conv_epilogue(act)(g, b, y, z, *p)``: ``g`` is a conv GEMM tile viewed (K, nb, PQ), ``y`` and ``z``
  the NCHW output images it belongs to viewed (nb, K, PQ), all C-contiguous (so that every inner loop
  runs over unit-stride rows and vectorises); writes ``y[n, k] = act(g[k, n] + b[k])`` and, when
  ``z.size`` is not 0, the pre-activation ``z = g + b[k]`` in the same pass (training keeps z for the
  backward).
* ``conv_inplace_epilogue(act)(y, b, z, *p)``: the same when the GEMM wrote straight into ``y``
  (NCHW images viewed (nb, K, PQ)): ``y = act(y + b[k])`` in place, ``z`` as above.
* ``linear_epilogue(act)(g, b, y, z, *p)``: ``g``, ``y``, ``z`` are (N, K); bias along the last axis.
* ``act_backward_bias(act)(dy, z, dz, db_part, *p)``: (A, K, L) arrays; ``dz = dy * act'(z)`` and the
  per-(A, K) partial sums of dz for the bias gradient, row by row while the row is in L1 (a vectorised
  pass writing dz, then a float64 sum of that row): the NumPy-path convolution's.
* ``linear_backward(act)(dy, z, dz, db, *p)``: (N, K) arrays; ``dz = dy * act'(z)`` and the float64
  bias gradient ``db`` (K,) summed down the columns in the same pass (a linear layer's rows are short:
  the (A, K, L) kernel with L = 1 cost 15 ns per element).

``act`` is a name from the activation table or None (identity).
"""

import functools
import math
import threading

import numpy as np
from numba import njit, prange

from . import _codegen, _runtime
from ._table import get as _get_activation
from ._util import row_sum as _row_sum

_lock = threading.RLock()
_built = {}


def _identity(x):
    return x


def _identity_d(x):
    return 1.0


identity_jit = njit(_identity)
_identity_dj = njit(_identity_d)


@njit(error_model="numpy")
def step_d(x, t, zero, one):
    """The 0/1 step ``one if x > t else zero`` (NaN for NaN x) in the type of its arguments: the
    derivative of threshold, and of relu with its default parameters, without the general relu
    derivative's float64 selects on slope, cap and subgradient (0.20 vs 0.58 ns per element, serial,
    1e5 float32)."""
    d = one if x > t else zero
    return x if x != x else d


_RELU_DEFAULT = (0.0, math.inf, 0.0)


def step_params(activation, pvals, dtype):
    """``(t, zero, one)`` in ``dtype`` when the backward of ``activation`` with the parameter values
    ``pvals`` (forward then backward, as :func:`param_values` gives them) is the plain step
    :func:`step_d`, else None: threshold always; relu with its default slope, cap, threshold and
    subgradient (a slope of -0.0 gives -0.0 below the kink, so it keeps the general kernel)."""
    t = np.dtype(dtype).type
    if activation == "threshold":
        return t(pvals[0]), t(0), t(1)
    if (activation == "relu" and tuple(pvals[:3]) == _RELU_DEFAULT and pvals[3] != pvals[3]
            and math.copysign(1.0, pvals[0]) > 0):
        return t(0), t(0), t(1)
    return None


def _src(kind, fname, p):
    a = _codegen.args(p)
    fv = _codegen.element(False, p, i="", x="v")  # F(v, *p)
    rows = functools.partial(_codegen.bias_act_rows, fv=fv)
    if kind == "conv":
        return (f"def {fname}(g, b, y, z{a}):\n"
                f"    K, NB, L = g.shape\n"
                f"    keep = z.size != 0\n"
                f"    for kn in prange(K * NB):\n"
                f"        k = kn // NB\n"
                f"        n = kn - k * NB\n"
                f"        bk = b[k]\n"
                f"        gr = g[k, n]\n"
                f"        yr = y[n, k]\n"
                + rows("gr", "yr", "z[n, k]", "bk", "L", indent=8))
    if kind == "conv_inplace":
        return (f"def {fname}(y, b, z{a}):\n"
                f"    NB, K, L = y.shape\n"
                f"    keep = z.size != 0\n"
                f"    for nk in prange(NB * K):\n"
                f"        n = nk // K\n"
                f"        k = nk - n * K\n"
                f"        bk = b[k]\n"
                f"        yr = y[n, k]\n"
                + rows("yr", "yr", "z[n, k]", "bk", "L", indent=8))
    if kind == "linear":
        return (f"def {fname}(g, b, y, z{a}):\n"
                f"    N, K = g.shape\n"
                f"    keep = z.size != 0\n"
                f"    for i in prange(N):\n"
                f"        gr = g[i]\n"
                f"        yr = y[i]\n"
                + rows("gr", "yr", "z[i]", "b[k]", "K", indent=8, idx="k"))
    if kind == "linear_backward":
        # (N, K): dz row by row, the bias sums per column in float64 (each column's own accumulator,
        # so the loop over k vectorises); parallel over blocks of columns, each summed in row order
        return (f"def {fname}(dy, z, dz, db{a}):\n"
                f"    N, K = z.shape\n"
                f"    nb = (K + 255) // 256\n"
                f"    for blk in prange(nb):\n"
                f"        k0 = blk * 256\n"
                f"        k1 = min(K, k0 + 256)\n"
                f"        for k in range(k0, k1):\n"
                f"            db[k] = 0.0\n"
                f"        for i in range(N):\n"
                f"            dyr = dy[i]\n"
                f"            zr = z[i]\n"
                f"            dzr = dz[i]\n"
                f"            for k in range(k0, k1):\n"
                f"                d = {_codegen.element(True, p, i='[k]', x='zr', dy='dyr')}\n"
                f"                dzr[k] = d\n"
                f"                db[k] += d\n")
    # backward prologue
    return (f"def {fname}(dy, z, dz, db_part{a}):\n"
            f"    A, K, L = z.shape\n"
            f"    for ak in prange(A * K):\n"
            f"        i = ak // K\n"
            f"        k = ak - i * K\n"
            f"        dyr = dy[i, k]\n"
            f"        zr = z[i, k]\n"
            f"        dzr = dz[i, k]\n"
            f"        for j in range(L):\n"
            f"            dzr[j] = {_codegen.element(True, p, i='[j]', x='zr', dy='dyr')}\n"
            f"        db_part[i, k] = _row_sum(dzr)\n")


def get(kind, activation):
    """Compiled kernel ``kind`` ('conv', 'conv_inplace', 'linear', 'backward' or 'linear_backward')
    for ``activation`` (name or None)."""
    act = None if activation is None else _get_activation(activation)
    key = (kind, None if act is None else act.name)
    fn = _built.get(key)
    if fn is None:
        with _lock:
            fn = _built.get(key)
            if fn is None:
                p = _codegen.param_names(act, kind in ("backward", "linear_backward"))
                name = "identity" if act is None else act.name
                fname = f"{kind}_epilogue_{name}"
                glb = {"F": identity_jit if act is None else _codegen.scalar(act),
                       "D": _identity_dj if act is None else _codegen.scalar(act, True),
                       "prange": prange, "_row_sum": _row_sum}
                py = _codegen.compile_source(fname, _src(kind, fname, p), glb)
                fn = _runtime.jit(parallel=True)(py)
                _built[key] = fn
    return fn


def param_values(activation, activation_params, backward=False):
    """The activation's parameters as floats in table order, from a dict, a sequence or None."""
    if activation is None:
        if activation_params:
            raise ValueError("activation_params given without an activation")
        return []
    act = _get_activation(activation)
    specs = act.params + (act.backward_params if backward else ())
    if activation_params is None:
        given = {}
    elif isinstance(activation_params, dict):
        unknown = set(activation_params) - {s.name for s in specs}
        if unknown:
            raise ValueError(f"unknown parameters {sorted(unknown)} for activation {act.name!r}; "
                             f"it takes {[s.name for s in specs]}")
        given = activation_params
    else:
        seq = list(activation_params)
        if len(seq) > len(specs):
            raise ValueError(f"activation {act.name!r} takes {len(specs)} parameters, got {len(seq)}")
        given = {s.name: v for s, v in zip(specs, seq)}
    vals = []
    for s in specs:
        v = s.to_float(given.get(s.name, s.default))
        try:
            vals.append(float(v))
        except TypeError:
            raise ValueError(f"activation parameter {s.name} must be a scalar in a fused layer, "
                             f"got {type(v).__name__}") from None
    return vals
