"""The activation table's scalar functions, for the user's own ``@njit`` code.

``fastact.jit.<name>(v, *params)`` is the activation at one value and ``fastact.jit.<name>_grad(v,
*params)`` its derivative ``f'(v)`` (not multiplied by anything), callable from nopython code (and
from Python). They are the functions every fastact kernel is generated from, so results are bit for
bit those of ``fastact.<name>`` and ``fastact.<name>_backward`` with ``dy = 1``: float64 arguments
use libm's accuracy, float32 ones the vectorisable float64 polynomials rounded once (see
docs/accuracy.md), and LLVM inlines and vectorises them inside the caller's loop.

Parameters are positional or keyword, with the public functions' names and defaults, as floats:
``max_value=None`` is ``math.inf`` here, and GELU's ``approximate`` is ``0.0`` for 'none' and ``1.0``
for 'tanh' (``GELU_NONE``, ``GELU_TANH``). ``relu_grad`` also takes ``subgradient`` (NaN, the
default, means PyTorch's value at the threshold).

Example: a GELU-gated product, fused into one parallel pass (docs/jit.md times it against NumPy)

>>> import numpy as np
>>> from numba import njit, prange
>>> import fastact
>>> from fastact import jit as fj
>>> @njit(parallel=True)
... def gelu_gate(a, b, out):
...     for i in prange(a.size):
...         out[i] = a[i] * fj.gelu(b[i])
...     return out
>>> a = np.array([1.0, 2.0, 3.0]); b = np.array([-1.0, 0.0, 1.0])
>>> np.allclose(gelu_gate(a, b, np.empty(3)), a * fastact.gelu(b))
True

Slot kernels: ``run_slots(kernel, nslots, args)`` runs a serial ``@njit(nogil=True)`` kernel on every
core, each thread taking the next slot from an atomic counter with ``next_slot(counter)``, as fastact's
convolution does. It compiles the loop once (a ``parallel=True`` kernel compiles its body twice, and a
serial twin for small calls a third time: 3x the compile time for the convolution), and the result
does not depend on which thread ran which slot when each slot writes only its own part:

>>> @njit(nogil=True)
... def row_sums(counter, nslots, x, out):
...     sl = fj.next_slot(counter)
...     while sl < nslots:          # slot sl: row sl
...         out[sl] = x[sl].sum()
...         sl = fj.next_slot(counter)
>>> x = np.arange(12.0).reshape(4, 3); out = np.empty(4)
>>> fj.run_slots(row_sums, 4, (x, out))
>>> out
array([ 3., 12., 21., 30.])

The layer functions (convolution, pooling, linear) are not here: they validate shapes, choose tiles
and allocate outputs in Python before their kernels run, so they are called as ``fastact.conv2d`` and
friends, not from nopython code.
"""

import math

from numba import njit

from . import _codegen
from ._runtime import next_slot, run_slots
from ._table import ACTIVATIONS

GELU_NONE = 0.0
GELU_TANH = 1.0

__all__ = ["GELU_NONE", "GELU_TANH", "next_slot", "run_slots"]

_SRC = """\
def {fname}(v{sig}):
    return F(v{call})
"""


def _make(act, backward):
    # Source text rather than a closure: Numba needs the parameters' defaults in the function's own
    # signature (a closure over ``*p`` would make every parameter mandatory), and each activation has
    # its own number of them.
    params = list(act.params) + (list(act.backward_params) if backward else [])
    fname = f"{act.name}_grad" if backward else act.name
    sig = "".join(f", {p.name}={float(p.to_float(p.default))!r}" for p in params).replace("inf", "math.inf") \
        .replace("nan", "math.nan")
    call = "".join(f", {p.name}" for p in params)
    glb = {"F": _codegen.scalar(act, backward), "math": math, "__name__": __name__}
    ns = {}
    exec(compile(_SRC.format(fname=fname, sig=sig, call=call), f"<fastact.jit.{fname}>", "exec"), glb, ns)
    fn = ns[fname]
    kind = "Derivative f'(v)" if backward else "Value"
    fn.__doc__ = (f"{kind} of {act.name} at one number, for nopython code: {act.formula}.\n\n"
                  f"Parameters: v{''.join(', ' + p.name for p in params)} (floats; see fastact.jit).")
    # inline at Numba's IR level, like the table functions themselves: the caller's loop vectorises
    return njit(fn, inline="always", error_model="numpy", cache=False)


for _act in ACTIVATIONS.values():
    for _backward in (False, True):
        _fn = _make(_act, _backward)
        for _alias in (_act.name, *_act.aliases):
            _public = f"{_alias}_grad" if _backward else _alias
            globals()[_public] = _fn
            __all__.append(_public)
del _act, _backward, _fn, _alias, _public
