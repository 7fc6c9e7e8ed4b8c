"""Every activation of the table, forward and backward, on device arrays.

``fastact.cuda.<name>(x, **params)`` and ``<name>_backward(dy, x, **params)`` are generated from the
table like their CPU counterparts; each kernel is the common per-element loop of
``fastact._codegen.loop_source`` over a 64-bit grid-stride range, calling the table's scalar functions
compiled as device functions (their ``fm.*`` math mapped to libdevice, see ``_device``).
"""

from .. import _codegen, _table
from ._device import GRID_STRIDE, as_device, cached, compile_source, flat, launch_1d, require, scalar_fns

__all__ = []


def _kernel(name, backward):
    def build():
        f, d, act = scalar_fns(name)
        fname = f"cuda_{act.name}_{'bwd' if backward else 'fwd'}"
        src = _codegen.loop_source(fname, act, backward, index=GRID_STRIDE.format(n="x.size"))
        return require().jit(compile_source(fname, src, {"F": f, "D": d}))
    return cached(("ew", _table.get(name).name, backward), build)


def _apply(name, backward, arrays, kwargs):
    act = _table.get(name)
    specs = act.params + (act.backward_params if backward else ())
    unknown = set(kwargs) - {s.name for s in specs}
    if unknown:
        raise TypeError(f"{name}{'_backward' if backward else ''}: unexpected parameters {sorted(unknown)}")
    arrs = [as_device(a, n) for a, n in zip(arrays, ("dy", "x") if backward else ("x",))]
    x = arrs[-1]
    if backward and arrs[0].shape != x.shape:
        raise ValueError(f"{name}_backward: dy has shape {arrs[0].shape} but x has shape {x.shape}")
    if backward and arrs[0].dtype != x.dtype:
        raise TypeError(f"{name}_backward: dy is {arrs[0].dtype} but x is {x.dtype}")
    pv = [x.dtype.type(s.to_float(kwargs.get(s.name, s.default))) for s in specs]
    out = require().device_array(x.shape, dtype=x.dtype)
    if x.size:
        blocks, threads = launch_1d(x.size)
        _kernel(name, backward)[blocks, threads](*[flat(a) for a in arrs], flat(out), *pv)
    return out


def _publish(act):
    def fwd(x, **kwargs):
        return _apply(act.name, False, (x,), kwargs)

    def bwd(dy, x, **kwargs):
        return _apply(act.name, True, (dy, x), kwargs)

    fwd.__name__, bwd.__name__ = act.name, f"{act.name}_backward"
    fwd.__qualname__, bwd.__qualname__ = fwd.__name__, bwd.__name__
    fwd.__module__ = bwd.__module__ = "fastact.cuda"
    fwd.__doc__ = (f"{act.name} on a device array: ``{act.formula}``. Keyword parameters as "
                   f"``fastact.{act.name}`` (scalars). Returns a new device array of ``x``'s dtype.")
    bwd.__doc__ = (f"Gradient of :func:`{act.name}` on device arrays: ``dx = dy * f'(x)``. Keyword "
                   f"parameters as ``fastact.{act.name}_backward``.")
    out = {act.name: fwd, f"{act.name}_backward": bwd}
    for alias in act.aliases:
        out[alias], out[f"{alias}_backward"] = fwd, bwd
    return out


def activation_functions(name):
    """``(forward, backward)`` public functions of an activation name or alias."""
    act = _table.get(name)
    return globals()[act.name], globals()[f"{act.name}_backward"]


for _act in _table.ACTIVATIONS.values():
    _fns = _publish(_act)
    globals().update(_fns)
    __all__.extend(_fns)
del _act, _fns
