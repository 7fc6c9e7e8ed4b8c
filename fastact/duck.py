"""Duck arrays -- Dask, xarray, any array type following NEP 13 (``__array_ufunc__``) -- through
fastact's functions, returning the input's own type, lazily where it is lazy.

The public functions test for a duck array only after their input failed ``type(x) is np.ndarray``
(see :func:`is_duck`), so NumPy input pays one type comparison for all of this. Routes:

* Elementwise activations and their backwards (``fastact.<act>``, ``fastact.<act>_backward``):
  a Dask array runs the NumPy path itself on each chunk (``dask.array.core.elemwise``: the same
  compiled loops, so the same values bit for bit, and no floating-point warnings), or with
  array-valued parameters the real ufunc per chunk (Dask broadcasts and chunks the parameters); any
  other duck array goes to the real ufunc ``fastact.ufuncs.<name>`` with the parameters as the
  kernels see them (``Param.to_float``), which hands it to the array's ``__array_ufunc__`` (``out=``
  too). The ufunc's loops compute the same values as the NumPy path; a lazy duck array other than
  Dask's, evaluated outside fastact, may warn about NaN or infinite input there.
* ``softmax``/``log_softmax`` and their backwards: Dask only (a row needs all of its values): the
  softmax axis is rechunked into one chunk, then each chunk runs the NumPy path (``map_blocks``).
* ``prelu``: Dask only, the channel axis rechunked into one chunk.
* ``module(x)`` (:func:`module_call`): eval-mode inference over a Dask array chunked along the batch
  axis, one task per chunk.

Dask is imported only when the input is a Dask array (then it is already imported).
"""

import functools
import numbers
import sys
import uuid

import numpy as np

from ._util import compute_dtype as _compute_dtype
from ._util import prelu_layout

__all__ = ["is_duck", "any_duck", "elementwise", "softmax", "softmax_backward", "prelu", "module_call"]

_NOT_DUCK = (np.ndarray, np.generic, numbers.Number, list, tuple)
_SCALARS = (float, int, np.floating, np.integer)


def is_duck(x):
    """True for an array of another library that implements NEP 13's ``__array_ufunc__`` (not
    NumPy's own arrays and scalars, Python numbers, lists or tuples, and not a type that sets
    ``__array_ufunc__ = None`` to opt out of ufuncs)."""
    t = type(x)
    return (t is not np.ndarray and getattr(t, "__array_ufunc__", None) is not None
            and not isinstance(x, _NOT_DUCK))


def any_duck(values):
    return any(is_duck(v) for v in values)


def _is_dask(x):
    mod = sys.modules.get("dask.array")
    return mod is not None and isinstance(x, mod.Array)


def _type_name(x):
    t = type(x)
    return f"{t.__module__}.{t.__qualname__}"


def _dtype_of(a):
    dt = getattr(a, "dtype", None)
    if dt is None:
        raise TypeError(f"fastact: a duck array needs a dtype attribute; {_type_name(a)} has none")
    return np.dtype(dt)


def _cast(a, dt):
    """``a`` (duck or array_like) in dtype ``dt``; a duck array stays one (``astype`` is lazy for Dask)."""
    if is_duck(a):
        return a if _dtype_of(a) == dt else a.astype(dt)
    return np.asarray(a, dtype=dt)


def _check_no_numpy_out(out, what, arrays):
    if out is not None and not is_duck(out):
        raise TypeError(f"{what}: out= must be an array of the input's kind for {_type_name(arrays)} "
                        f"input (a lazy result cannot be written into a NumPy array); got "
                        f"{type(out).__name__}. Compute the input first, or drop out=")


# ------------------------------------------------------------------------------------ elementwise

def _elementwise_block(numpy_path, name, backward, values, *blocks):
    """One chunk through the NumPy path of activation ``name`` (module-level functions, so that a
    distributed scheduler pickles them by reference)."""
    from ._table import ACTIVATIONS
    return np.asarray(numpy_path(ACTIVATIONS[name], backward, blocks, values, None))


def elementwise(act, backward, arrays, values, out, numpy_path):
    """``fastact.<act>(x, ...)`` (``arrays`` (x,)) or ``<act>_backward(dy, x, ...)`` (``arrays``
    (dy, x)) for duck arrays; ``values`` are the public parameter values in the table's order.
    ``numpy_path(act, backward, arrays, values, out)`` is the NumPy implementation each chunk runs
    (handed in by the caller, so that this module imports none of the modules that call it)."""
    fname = act.name + ("_backward" if backward else "")
    specs = act.params + (act.backward_params if backward else ())
    pvals = [spec.to_float(v) for spec, v in zip(specs, values)]  # ValueError/TypeError now, not lazily
    arrays = [a if is_duck(a) else np.asarray(a) for a in arrays]
    scalar = all(isinstance(v, _SCALARS) or (not is_duck(v) and np.ndim(v) == 0) for v in pvals)
    dt = _compute_dtype(*(_dtype_of(a) for a in arrays))  # parameters are cast to it, as for NumPy
    duck = next(a for a in [*arrays, *pvals] if is_duck(a))
    _check_no_numpy_out(out, f"fastact.{fname}", duck)
    dask_only = all(_is_dask(a) or not is_duck(a) for a in [*arrays, *pvals]) and (out is None or _is_dask(out))
    if dask_only and scalar:
        from dask.array.core import elemwise
        from dask.base import tokenize
        values = tuple(float(v) if isinstance(v, (np.floating, np.integer)) else v for v in values)
        op = functools.partial(_elementwise_block, numpy_path, act.name, backward, values)
        name = f"fastact-{fname}-{tokenize(act.name, backward, values, *arrays)}"
        return elemwise(op, *arrays, dtype=dt, name=name, out=out)
    # The real ufunc: its loops exist for float32 and float64, so cast to the dtype the NumPy path
    # computes in first (an int16 array would otherwise select the float32 loop).
    args = [_cast(a, dt) for a in arrays]
    args += [float(v) if isinstance(v, _SCALARS) else _cast(v, dt) for v in pvals]
    if dask_only:  # array-valued parameters: Dask broadcasts and chunks them with the inputs
        from dask.array.core import elemwise
        from dask.base import tokenize
        name = f"fastact-{fname}-{tokenize(act.name, backward, *args)}"
        return elemwise(functools.partial(_ufunc_block, act.name, backward), *args, dtype=dt, name=name,
                        out=out)
    from . import _codegen
    ufunc = _codegen.get("ufunc", act.name, backward)
    with np.errstate(all="ignore"):  # as the NumPy path: NaN in, NaN out, silently
        return ufunc(*args) if out is None else ufunc(*args, out=out)


def _ufunc_block(name, backward, *blocks):
    """One chunk through the real ufunc, without NumPy's floating-point warnings (the NumPy path
    gives NaN for NaN silently)."""
    from . import _codegen
    with np.errstate(all="ignore"):
        return _codegen.get("ufunc", name, backward)(*blocks)


# ---------------------------------------------------------------------------------------- softmax

def _require_dask(x, what):
    if not _is_dask(x):
        raise TypeError(f"{what} takes NumPy or Dask arrays, got {_type_name(x)}; pass np.asarray(x) "
                        f"(or, for xarray, use xarray.apply_ufunc)")


def _axis(axis, ndim, shape):
    n = max(ndim, 1)
    if not isinstance(axis, (int, np.integer)) or not -n <= axis < n:
        axis_error = getattr(getattr(np, "exceptions", np), "AxisError")
        raise axis_error(f"axis {axis!r} is out of bounds for an array of shape {shape}")
    return int(axis) % n


def _softmax_block(block, numpy_path, axis, log):
    return np.asarray(numpy_path(block, axis, None, log))


def _softmax_backward_block(dy, y, numpy_path, axis, log):
    return np.asarray(numpy_path(dy, y, axis, None, log))


def _one_chunk_along(x, axis):
    """``x`` rechunked so that ``axis`` is one chunk (a softmax row must see all its values)."""
    if x.ndim and len(x.chunks[axis]) > 1:
        return x.rechunk({axis: -1})
    return x


def softmax(x, axis, out, log, numpy_path):
    """``fastact.softmax``/``log_softmax`` of a Dask array: lazy, the ``axis`` rechunked into one
    chunk first, then ``numpy_path(block, axis, out, log)`` per chunk."""
    what = "fastact.log_softmax" if log else "fastact.softmax"
    _require_dask(x, what)
    _check_no_numpy_out(out, what, x)
    if out is not None:
        raise TypeError(f"{what}: out= is not supported for Dask input; assign the result instead")
    ax = _axis(axis, x.ndim, x.shape)
    dt = _compute_dtype(x.dtype)
    x = _one_chunk_along(x, ax)
    return x.map_blocks(_softmax_block, numpy_path, axis=ax, log=log, dtype=dt,
                        meta=np.empty((0,) * x.ndim, dt))


def softmax_backward(dy, y, axis, out, log, numpy_path):
    """``fastact.softmax_backward``/``log_softmax_backward`` with a Dask ``dy`` or ``y``;
    ``numpy_path(dy, y, axis, out, log)`` runs per chunk."""
    import dask.array as da
    what = "fastact.log_softmax_backward" if log else "fastact.softmax_backward"
    for a in (dy, y):
        if is_duck(a):
            _require_dask(a, what)
    if out is not None:
        raise TypeError(f"{what}: out= is not supported for Dask input; assign the result instead")
    if tuple(dy.shape) != tuple(y.shape):
        raise ValueError(f"dy has shape {tuple(dy.shape)} but y has shape {tuple(y.shape)}")
    ax = _axis(axis, y.ndim, y.shape)
    dt = _compute_dtype(np.dtype(dy.dtype), np.dtype(y.dtype))
    lazy = y if _is_dask(y) else dy
    lazy = _one_chunk_along(lazy, ax)
    dy = _one_chunk_along(da.asarray(dy), ax).rechunk(lazy.chunks)
    y = _one_chunk_along(da.asarray(y), ax).rechunk(lazy.chunks)
    return da.map_blocks(_softmax_backward_block, dy, y, numpy_path, axis=ax, log=log, dtype=dt,
                         meta=np.empty((0,) * y.ndim, dt))


# ------------------------------------------------------------------------------------------ PReLU

def _prelu_block(block, numpy_path, weight, axis):
    return np.asarray(numpy_path(block, weight, axis))


def prelu(x, weight, axis, out, numpy_path):
    """``fastact.prelu`` of a Dask array: lazy, the channel axis in one chunk (each chunk needs all of
    ``weight``) and ``numpy_path(block, weight, axis)`` per chunk."""
    _require_dask(x, "fastact.prelu")
    if out is not None:
        raise TypeError("fastact.prelu: out= is not supported for Dask input; assign the result instead")
    if is_duck(weight):
        raise TypeError(f"fastact.prelu: weight must be a NumPy array, got {_type_name(weight)}")
    w = np.asarray(weight)
    dt = _compute_dtype(x.dtype)  # the weight is cast to x's dtype, as for NumPy input
    prelu_layout(_ShapeOnly(x.shape), w, axis)  # ValueError naming the shapes, now
    if w.size > 1:
        x = _one_chunk_along(x, _axis(axis, x.ndim, x.shape))
    return x.map_blocks(_prelu_block, numpy_path, weight=w, axis=axis, dtype=dt,
                        meta=np.empty((0,) * x.ndim, dt))


class _ShapeOnly:
    """Stands in for an array in a shape check (``prelu_layout`` reads ``shape``, ``ndim``, ``size``)."""

    def __init__(self, shape):
        self.shape = tuple(int(s) for s in shape)
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape, dtype=np.int64))


# ---------------------------------------------------------------------------------------- modules

def _module_block(module, block):
    return np.asarray(module(block))


def module_call(module, x, args, kwargs):
    """``module(x)`` for a Dask ``x`` chunked along the batch axis (axis 0): a lazy Dask array, one
    task per batch chunk, each running ``module`` on its NumPy chunk. The other axes are rechunked
    into one chunk. The output's shape and dtype come from a one-sample forward, whose first axis
    must be the batch axis. Eval mode only: training keeps activations for a backward that takes
    NumPy arrays. The graph holds the module itself, not a copy of its weights: the weights it has
    when the result is computed are the ones used (copy the module first to freeze them)."""
    name = type(module).__name__
    if not _is_dask(x):
        raise TypeError(f"{name}: takes a NumPy array, or for inference a Dask array; got {_type_name(x)}")
    training = [m for m in module.modules() if m.training]
    if training:
        raise RuntimeError(f"{name}: a Dask array runs inference only (call .eval() first); in training "
                           f"mode the forward keeps what backward needs, and backward takes NumPy arrays")
    if any(isinstance(a, np.ndarray) or is_duck(a) for a in (*args, *kwargs.values())):
        raise TypeError(f"{name}: with a Dask input only x may be an array (arrays in the other "
                        f"arguments would not be split into the batch chunks)")
    if x.ndim == 0:
        raise ValueError(f"{name}: a Dask input needs a batch axis, got shape {x.shape}")
    x = x.rechunk({i: -1 for i in range(1, x.ndim)}) if any(len(c) > 1 for c in x.chunks[1:]) else x
    probe = np.asarray(module.forward(np.zeros((1,) + tuple(x.shape[1:]), dtype=x.dtype), *args, **kwargs))
    if probe.ndim == 0 or probe.shape[0] != 1:
        raise ValueError(f"{name}: the output of a one-sample forward has shape {probe.shape}; a Dask "
                         f"input needs the batch axis first in the output too")
    block = functools.partial(_module_block, module) if not (args or kwargs) else \
        functools.partial(_module_block_args, module, args, kwargs)
    ndim = probe.ndim
    chunks = (x.chunks[0],) + tuple((s,) for s in probe.shape[1:])
    extra = {}
    if ndim < x.ndim:
        extra["drop_axis"] = list(range(ndim, x.ndim))
    elif ndim > x.ndim:
        extra["new_axis"] = list(range(x.ndim, ndim))
    # a fresh name per call: the weights may change between calls (so one result must not be
    # mistaken for another's), and hashing them would cost a pass over every parameter
    return x.map_blocks(block, chunks=chunks, dtype=probe.dtype, meta=np.empty((0,) * ndim, probe.dtype),
                        name=f"fastact-{name.lower()}-{uuid.uuid4().hex}", **extra)


def _module_block_args(module, args, kwargs, block):
    return np.asarray(module(block, *args, **kwargs))
