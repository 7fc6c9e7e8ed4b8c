"""Elementwise activations with NumPy ufunc semantics, generated from the activation table.

The drivers here take the public arguments, apply NumPy's conventions (dtype resolution, broadcasting,
``out=``) and send the common case -- scalar parameters, contiguous arrays -- to a compiled 1-D loop
over the raw buffer (serial below ``config.PARALLEL_MIN_SIZE`` elements, ``PARALLEL_MIN_SIZE_BACKWARD``
for the backwards of the non-transcendental activations, or ``PARALLEL_MIN_SIZE_TRANSCENDENTAL`` for
exp/erf-based activations, both cores above). Array-valued
parameters go through the real ufunc, which broadcasts them.

Dtypes: float32 and float64 compute natively; float16 computes in and returns float32 (Numba has no
float16 arithmetic); integers and bools compute in float64, as NumPy's ``np.exp`` does; complex input is
a TypeError.
"""

import numpy as np

from . import _codegen, _epilogue, _runtime, config
from . import duck as _duck
from ._table import ACTIVATIONS, leaky_relu_d, leaky_relu_f
from ._util import compute_dtype as _compute_dtype
from ._util import FLOATS as _FLOATS
from ._util import check_out as _check_out
from ._util import prelu_layout

__all__ = []  # filled by _publish()

def _same_buffer(a, b):
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.strides == b.strides and a.shape == b.shape)


_PARAM_CACHE = {}


def _typed_params(dt, pvals):
    """The parameters as scalars of the compute dtype (what the compiled loops take), memoised by their
    exact values: the conversion costs more than a small kernel call."""
    key = (dt.char, *(float(v).hex() for v in pvals))  # exact: -0.0 and 0.0 differ, all NaNs agree
    pv = _PARAM_CACHE.get(key)
    if pv is None:
        if len(_PARAM_CACHE) > 4096:
            _PARAM_CACHE.clear()
        pv = _PARAM_CACHE[key] = tuple(dt.type(v) for v in pvals)
    return pv


@_runtime.jit(parallel=True)
def _step_backward(dy, x, dx, t, zero, one):
    # dx = dy * step(x): the backward of threshold and of relu with its default parameters
    for i in _runtime.prange(x.size):
        dx[i] = dy[i] * _epilogue.step_d(x[i], t, zero, one)


def _kernel(name, backward, pv):
    """(kernel(parallel) -> compiled loop, its parameters, the size from which it runs in parallel):
    the dtype-native step kernel for the backward of threshold and of relu with its default
    parameters, else the table's loop."""
    step = _epilogue.step_params(name, pv, type(pv[0])) if backward and pv else None
    if step is not None:
        return ((lambda par: _step_backward.parallel if par else _step_backward.serial), step,
                config.PARALLEL_MIN_SIZE_BACKWARD)
    return ((lambda par: _codegen.get("loop", name, backward, par)), tuple(pv),
            _parallel_min_size(name, backward))


def _call_loop(name, backward, n, flat, pv):
    kernel, params, nmin = _kernel(name, backward, pv)
    args = (*flat, *params)
    parallel = n >= nmin
    if not (parallel and _runtime.NEEDS_SLOT):
        kernel(parallel)(*args)
        return
    with _runtime.parallel_slot() as may_parallel:  # workqueue: one parallel region at a time
        kernel(may_parallel)(*args)


def _run(name, backward, arrays, pvals, out):
    """Apply the compiled loop to ``arrays`` ((x,) or (dy, x)) with scalar parameters ``pvals``."""
    x = arrays[-1]
    dt = x.dtype
    if dt in _FLOATS and x.flags.c_contiguous and all(
            a.dtype == dt and a.shape == x.shape and a.flags.c_contiguous for a in arrays[:-1]):
        # the common cases, without the general path's conversions and checks (~20 us of Python per
        # call for a fresh result, ~6 us with out=): a fresh result, or an out= of the same dtype and
        # layout that is one of the inputs or overlaps none of them
        if out is None:
            res = np.empty(x.shape, dtype=dt)
        elif (type(out) is np.ndarray and out.dtype == dt and out.shape == x.shape
              and out.flags.c_contiguous and out.flags.writeable
              and all(a is out or not np.may_share_memory(out, a) for a in arrays)):
            res = out
        else:
            res = None
        if res is not None:
            if res.size:
                flat = [a.reshape(-1) for a in arrays] + [res.reshape(-1)]
                _call_loop(name, backward, res.size, flat, _typed_params(dt, pvals))
            return res if out is not None or res.ndim else res[()]
    dt = _compute_dtype(*(a.dtype for a in arrays))
    shape = arrays[0].shape if len(arrays) == 1 else np.broadcast_shapes(*(a.shape for a in arrays))
    if out is not None:
        _check_out(out, shape)
    x = arrays[-1]
    order = "F" if (x.flags.f_contiguous and not x.flags.c_contiguous) else "C"
    ins = []
    for a in arrays:
        if a.shape != shape:
            a = np.broadcast_to(a, shape)
        ins.append(np.asarray(a, dtype=dt, order=order))
    direct = (out is not None and out.dtype == dt
              and (out.flags.c_contiguous if order == "C" else out.flags.f_contiguous)
              and not any(np.may_share_memory(out, a) and not _same_buffer(out, a) for a in ins))
    res = out if direct else np.empty(shape, dtype=dt, order=order)
    n = res.size
    if n:
        flat = [a.reshape(-1, order=order) for a in ins] + [res.reshape(-1, order=order)]
        _call_loop(name, backward, n, flat, _typed_params(dt, pvals))
    if out is None:
        return res if res.ndim else res[()]
    if res is not out:
        np.copyto(out, res, casting="same_kind")
    return out


def _parallel_min_size(name, backward=False):
    """Elements from which the activation's loop runs on all cores (see ``fastact.config``)."""
    if ACTIVATIONS[name].transcendental:
        return config.PARALLEL_MIN_SIZE_TRANSCENDENTAL
    return config.PARALLEL_MIN_SIZE_BACKWARD if backward else config.PARALLEL_MIN_SIZE


def _param_values(specs, values):
    return [spec.to_float(v) for spec, v in zip(specs, values)]


_SCALARS = (float, int, np.floating, np.integer)


_ndarray = np.ndarray


def _apply(act, backward, arrays, values, out):
    # Duck arrays (Dask, xarray, ...: fastact.duck) keep their type; NumPy input pays one exact type
    # test per array (~20 ns each).
    if (type(arrays[-1]) is not _ndarray or (backward and type(arrays[0]) is not _ndarray)) \
            and _duck.any_duck(arrays):
        return _duck.elementwise(act, backward, arrays, values, out, _apply)
    specs = act.params + (act.backward_params if backward else ())
    pvals = _param_values(specs, values)
    arrays = [a if type(a) is np.ndarray else np.asarray(a) for a in arrays]
    if all(isinstance(v, _SCALARS) or np.ndim(v) == 0 for v in pvals):
        return _run(act.name, backward, arrays, [float(v) for v in pvals], out)
    if _duck.any_duck(pvals):  # a duck array as a parameter: the result is a duck array too
        return _duck.elementwise(act, backward, arrays, values, out, _apply)
    # Array-valued parameters: the real ufunc broadcasts them against the inputs. Parameters are cast
    # to the inputs' compute dtype, as scalars are on the path above and as the C kernels do: float32
    # in, float32 out, whatever the parameters' dtype.
    dt = _compute_dtype(*(a.dtype for a in arrays))
    args = [a.astype(dt, copy=False) for a in arrays] + [np.asarray(v, dtype=dt) for v in pvals]
    if out is not None:
        _check_out(out, np.broadcast_shapes(*(a.shape for a in args)))
    with np.errstate(all="ignore"):
        return _codegen.get("ufunc", act.name, backward)(*args, out=out)


# --------------------------------------------------------------------------------------- publishing

_DOC = """{title}.

    ``{formula}``
{citation}
    Parameters
    ----------
    x : array_like
        Input of any shape; float32 and float64 are computed natively, float16 in float32, integers in
        float64. Parameters (scalars or arrays) are cast to that dtype.
{pdoc}    out : ndarray, optional
        Where to write the result (may be ``x`` itself); must have the result's shape.

    Returns
    -------
    ndarray
        ``f(x)``, same shape as ``x``; float32 for float32 or float16 input, float64 for float64 or
        integer input, whatever the parameters' dtype; a scalar for 0-d input.
        A Dask array (or another NEP 13 array type, such as xarray's) gives that type, lazily where
        it is lazy, with the same values.

    See Also
    --------
    {name}_backward

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> x = np.array({points})
    >>> np.round(fa.{name}(x), 4)
    {values}
"""

_BDOC = """Gradient of :func:`{name}`: ``dx = dy * f'(x)``.

    At a kink the derivative is the one PyTorch 2.13's autograd gives (docs/accuracy.md lists them);
    at +-inf the mathematical limit. NaN in ``dy`` or ``x`` gives NaN in ``dx``.

    Parameters
    ----------
    dy : array_like
        Gradient of the loss with respect to the output ``f(x)``; broadcasts against ``x``.
    x : array_like
        The forward's input.
{pdoc}    out : ndarray, optional
        Where to write ``dx``.

    Returns
    -------
    ndarray
        ``dx``, with the broadcast shape of ``dy`` and ``x``.

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> x = np.array({points})
    >>> np.round(fa.{name}_backward(np.ones_like(x), x), 4)
    {values}
"""


def _pdoc(params):
    lines = []
    for p in params:
        lines.append(f"    {p.name} : float or array_like, default {p.default!r}\n        {p.doc}\n")
    return "".join(lines)


#: Each activation's docstring example: (points, forward values, derivative values), as NumPy prints
#: them rounded to 4 decimals: the float64 references' values (:func:`docstring_example` computes them
#: for an entry not listed here), written out so that importing fastact evaluates nothing (the
#: references of GELU and others import scipy.special). tests/test_doctests.py checks them against the
#: references, and the doctests check the compiled kernels against them.
EXAMPLES = {
    'relu': ('[-2.0, -0.5, 0.0, 0.5, 2.0]',
        'array([0. , 0. , 0. , 0.5, 2. ])',
        'array([0., 0., 0., 1., 1.])'),
    'leaky_relu': ('[-2.0, -0.5, 0.0, 0.5, 2.0]',
        'array([-0.02 , -0.005,  0.   ,  0.5  ,  2.   ])',
        'array([0.01, 0.01, 0.01, 1.  , 1.  ])'),
    'relu6': ('[-2.0, -0.5, 0.0, 0.5, 2.0]',
        'array([0. , 0. , 0. , 0.5, 2. ])',
        'array([0., 0., 0., 1., 1.])'),
    'hardtanh': ('[-2.0, -0.5, 0.0, 0.5, 2.0]',
        'array([-1. , -0.5,  0. ,  0.5,  1. ])',
        'array([0., 1., 1., 1., 0.])'),
    'threshold': ('[-2.0, -0.5, 0.0, 0.5, 2.0]',
        'array([0. , 0. , 0. , 0.5, 2. ])',
        'array([0., 0., 0., 1., 1.])'),
    'elu': ('[-2.0, -0.5, 0.0, 0.5, 2.0]',
        'array([-0.8647, -0.3935,  0.    ,  0.5   ,  2.    ])',
        'array([0.1353, 0.6065, 1.    , 1.    , 1.    ])'),
    'celu': ('[-2.0, -0.5, 0.0, 0.5, 2.0]',
        'array([-0.8647, -0.3935,  0.    ,  0.5   ,  2.    ])',
        'array([0.1353, 0.6065, 1.    , 1.    , 1.    ])'),
    'selu': ('[-2.0, -0.5, 0.0, 0.5, 2.0]',
        'array([-1.5202, -0.6918,  0.    ,  0.5254,  2.1014])',
        'array([0.2379, 1.0663, 1.7581, 1.0507, 1.0507])'),
    'gelu': ('[-2.0, -0.5, 0.0, 0.5, 2.0]',
        'array([-0.0455, -0.1543,  0.    ,  0.3457,  1.9545])',
        'array([-0.0852,  0.1325,  0.5   ,  0.8675,  1.0852])'),
    'silu': ('[-2.0, -0.5, 0.0, 0.5, 2.0]',
        'array([-0.2384, -0.1888,  0.    ,  0.3112,  1.7616])',
        'array([-0.0908,  0.26  ,  0.5   ,  0.74  ,  1.0908])'),
    'mish': ('[-2.0, -0.5, 0.0, 0.5, 2.0]',
        'array([-0.2525, -0.2207,  0.    ,  0.3752,  1.944 ])',
        'array([-0.1084,  0.2895,  0.6   ,  0.8864,  1.0693])'),
    'hardswish': ('[-2.0, -0.5, 0.0, 0.5, 2.0]',
        'array([-0.3333, -0.2083,  0.    ,  0.2917,  1.6667])',
        'array([-0.1667,  0.3333,  0.5   ,  0.6667,  1.1667])'),
    'hardsigmoid': ('[-2.0, -0.5, 0.0, 0.5, 2.0]',
        'array([0.1667, 0.4167, 0.5   , 0.5833, 0.8333])',
        'array([0.1667, 0.1667, 0.1667, 0.1667, 0.1667])'),
    'sigmoid': ('[-2.0, -0.5, 0.0, 0.5, 2.0]',
        'array([0.1192, 0.3775, 0.5   , 0.6225, 0.8808])',
        'array([0.105, 0.235, 0.25 , 0.235, 0.105])'),
    'tanh': ('[-2.0, -0.5, 0.0, 0.5, 2.0]',
        'array([-0.964 , -0.4621,  0.    ,  0.4621,  0.964 ])',
        'array([0.0707, 0.7864, 1.    , 0.7864, 0.0707])'),
    'softsign': ('[-2.0, -0.5, 0.0, 0.5, 2.0]',
        'array([-0.6667, -0.3333,  0.    ,  0.3333,  0.6667])',
        'array([0.1111, 0.4444, 1.    , 0.4444, 0.1111])'),
    'softplus': ('[-2.0, -0.5, 0.0, 0.5, 2.0]',
        'array([0.1269, 0.4741, 0.6931, 0.9741, 2.1269])',
        'array([0.1192, 0.3775, 0.5   , 0.6225, 0.8808])'),
}


def docstring_example(act):
    """(points, forward values, derivative values) of ``act``'s docstring example."""
    if act.name in EXAMPLES:
        return EXAMPLES[act.name]
    lo, hi = act.domain
    pts = [-2.0, -0.5, 0.0, 0.5, 2.0] if (lo <= -2.0 and hi >= 2.0) else [lo / 2, 0.0, hi / 2]
    x = np.array(pts)
    p = [float(q.to_float(q.default)) for q in act.params]
    b = [float(q.to_float(q.default)) for q in act.backward_params]
    with np.printoptions(legacy=False):
        return (repr(pts), repr(np.round(act.reference(x, *p), 4) + 0.0),
                repr(np.round(act.reference_derivative(x, *p, *b), 4) + 0.0))


# ------------------------------------------------------------------------ the small-array fast path
# A call with the default parameters on a C-contiguous float32/float64 NumPy array below the parallel
# threshold (and out= absent, or of the same dtype, shape and layout, overlapping no input unless it is
# that input) skips the general driver: no parameter parsing, conversion or memo lookup, just an exact
# type test per argument, np.empty and the compiled serial loop (whose own dispatch costs ~0.5 us).
# It returns _MISS for anything else, and the general path takes over.

_MISS = object()
_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)


class _Plan:
    """The serial kernel and its typed default parameters for one (activation, direction, dtype)."""
    __slots__ = ("kernel", "params", "nmax")

    def __init__(self, act, backward, dt):
        pv = _typed_params(dt, [p.to_float(p.default) for p in
                                act.params + (act.backward_params if backward else ())])
        kernel, self.params, self.nmax = _kernel(act.name, backward, pv)  # the general path's choice
        self.kernel = kernel(False)


def _fast(plans, act, backward, x, dy, out):
    dt = x.dtype
    if dt is _F32:
        i = 0
    elif dt is _F64:
        i = 1
    else:
        return _MISS
    if not x.flags.c_contiguous:
        return _MISS
    plan = plans[i]
    if plan is None:
        plan = plans[i] = _Plan(act, backward, dt)
    if x.size >= plan.nmax or x.size == 0:
        return _MISS
    if out is None:
        res = np.empty(x.shape, dt)
    elif (type(out) is _ndarray and out.dtype is dt and out.shape == x.shape and out.flags.c_contiguous
          and out.flags.writeable and (out is x or not np.may_share_memory(out, x))
          and (dy is None or out is dy or not np.may_share_memory(out, dy))):
        res = out
    else:
        return _MISS
    if dy is None:
        if x.ndim == 1:
            plan.kernel(x, res, *plan.params)
        else:
            plan.kernel(x.reshape(-1), res.reshape(-1), *plan.params)
    else:
        if type(dy) is not _ndarray or dy.dtype is not dt or dy.shape != x.shape \
                or not dy.flags.c_contiguous:
            return _MISS
        if x.ndim == 1:
            plan.kernel(dy, x, res, *plan.params)
        else:
            plan.kernel(dy.reshape(-1), x.reshape(-1), res.reshape(-1), *plan.params)
    return res if res.ndim or out is not None else res[()]


def _publish(act):
    """The public pair ``name(x, *params, out=None)`` and ``name_backward(dy, x, ...)`` of ``act``.

    Written as source text, not as a closure taking ``*args, **kwargs``: each function must have the
    entry's own signature (named parameters with their defaults, for ``help()``, editors and the stubs)
    and its fast path must test "every parameter is its default" without binding arguments, which on
    1,000 values is a measurable share of the call (``bench/overhead.py``)."""
    names = [p.name for p in act.params]
    bnames = [p.name for p in act.backward_params]
    allp = act.params + act.backward_params
    # the defaults are module-level objects of the generated code, so "param is its default" is an
    # identity test (an explicit 0.0 takes the general path, which gives the same result)
    fsig = "".join(f", {p.name}=_d{i}" for i, p in enumerate(act.params))
    bsig = "".join(f", {p.name}=_d{i}" for i, p in enumerate(allp))
    fdef = "".join(f" and {p.name} is _d{i}" for i, p in enumerate(act.params))
    bdef = "".join(f" and {p.name} is _d{i}" for i, p in enumerate(allp))
    tup = "(" + "".join(f"{n}, " for n in names) + ")"
    btup = "(" + "".join(f"{n}, " for n in names + bnames) + ")"
    src = (f"def {act.name}(x{fsig}, *, out=None):\n"
           f"    if type(x) is _nd{fdef}:\n"
           f"        r = _fast(_FWD, _ACT, False, x, None, out)\n"
           f"        if r is not _MISS:\n"
           f"            return r\n"
           f"    return _apply(_ACT, False, (x,), {tup}, out)\n"
           f"def {act.name}_backward(dy, x{bsig}, *, out=None):\n"
           f"    if type(x) is _nd{bdef}:\n"
           f"        r = _fast(_BWD, _ACT, True, x, dy, out)\n"
           f"        if r is not _MISS:\n"
           f"            return r\n"
           f"    return _apply(_ACT, True, (dy, x), {btup}, out)\n")
    ns = {}
    glb = {"_apply": _apply, "_ACT": act, "_fast": _fast, "_MISS": _MISS, "_nd": _ndarray,
           "_FWD": [None, None], "_BWD": [None, None], **{f"_d{i}": p.default for i, p in enumerate(allp)}}
    exec(compile(src, f"<fastact.{act.name}>", "exec"), glb, ns)
    fwd, bwd = ns[act.name], ns[f"{act.name}_backward"]
    citation = f"\n    Reference: {act.citation}.\n" if act.citation else ""
    points, fvals, dvals = docstring_example(act)
    fwd.__doc__ = _DOC.format(title=act.name.replace("_", " ").capitalize() + " activation",
                              formula=act.formula, citation=citation, pdoc=_pdoc(act.params),
                              name=act.name, points=points, values=fvals)
    bwd.__doc__ = _BDOC.format(name=act.name, pdoc=_pdoc(act.params + act.backward_params),
                               points=points, values=dvals)
    out = {act.name: fwd, f"{act.name}_backward": bwd}
    for alias in act.aliases:
        out[alias] = fwd
        out[f"{alias}_backward"] = bwd
    for fn in (fwd, bwd):
        fn.__module__ = "fastact"
    return out


for _act in ACTIVATIONS.values():
    _fns = _publish(_act)
    globals().update(_fns)
    __all__.extend(_fns)


# -------------------------------------------------------------------------------------------- PReLU


def prelu(x, weight, axis=1, *, out=None):
    """Parametric ReLU: ``x if x > 0 else weight[c] * x`` with ``c`` the index along ``axis``.

    Parameters
    ----------
    x : array_like
        Input, e.g. NCHW activations.
    weight : array_like
        One slope per channel (``x.shape[axis]`` elements), or a single slope shared by all.
    axis : int, default 1
        The channel axis.
    out : ndarray, optional
        Where to write the result.

    Returns
    -------
    ndarray

    References
    ----------
    He et al. (2015), Delving deep into rectifiers, arXiv:1502.01852.

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> fa.prelu(np.array([[-1.0, 2.0], [-3.0, 4.0]]), np.array([0.1, 0.5]))
    array([[-0.1,  2. ],
           [-0.3,  4. ]])
    """
    if type(x) is not _ndarray and _duck.is_duck(x):
        return _duck.prelu(x, weight, axis, out, prelu)  # Dask: lazy, per chunk
    x = np.asarray(x)
    w = np.asarray(weight)
    dt = _compute_dtype(x.dtype)  # the weight is cast to it, as every activation's parameters are
    outer, C, inner = prelu_layout(x, w, axis)
    if out is not None:
        _check_out(out, x.shape)
    xc = np.ascontiguousarray(x, dtype=dt)
    res = np.empty(x.shape, dtype=dt)
    if res.size:
        _prelu_forward_kernel(xc.reshape(outer, C, inner), np.ascontiguousarray(w, dtype=dt).reshape(C),
                              res.reshape(outer, C, inner))
    if out is None:
        return res if res.ndim else res[()]
    np.copyto(out, res, casting="same_kind")
    return out


def prelu_backward(dy, x, weight, axis=1, *, out=None):
    """Gradients of :func:`prelu`: returns ``(dx, dweight)``.

    ``dx = dy * (1 if x > 0 else weight[c])``; ``dweight[c]`` sums ``dy * x`` over the elements of
    channel ``c`` with ``x <= 0``. ``dweight`` has ``weight``'s shape and ``dx``'s dtype (accumulated in
    float64).

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> x = np.array([[-1.0, 2.0], [-3.0, 4.0]])
    >>> dx, dw = fa.prelu_backward(np.ones_like(x), x, np.array([0.1, 0.5]))
    >>> dx
    array([[0.1, 1. ],
           [0.1, 1. ]])
    >>> dw
    array([-4.,  0.])
    """
    if (type(x) is not _ndarray or type(dy) is not _ndarray) and _duck.any_duck((dy, x, weight)):
        raise TypeError("prelu_backward takes NumPy arrays (its weight gradient sums over the whole "
                        f"input); got {type(dy).__name__} and {type(x).__name__}")
    dy = np.asarray(dy)
    x = np.asarray(x)
    w = np.asarray(weight)
    if dy.shape != x.shape:
        raise ValueError(f"prelu_backward: dy has shape {dy.shape} but x has shape {x.shape}")
    dt = _compute_dtype(dy.dtype, x.dtype)
    outer, C, inner = prelu_layout(x, w, axis)
    if out is not None:
        _check_out(out, x.shape)
    dx = np.empty(x.shape, dtype=dt)
    part = np.zeros((outer, C), dtype=np.float64)
    if dx.size:
        shp = (outer, C, inner)
        _prelu_backward_kernel(np.ascontiguousarray(dy, dtype=dt).reshape(shp),
                               np.ascontiguousarray(x, dtype=dt).reshape(shp),
                               np.ascontiguousarray(w, dtype=dt).reshape(C), dx.reshape(shp), part)
    dw = part.sum(axis=0).astype(dt).reshape(w.shape)
    if out is not None:
        np.copyto(out, dx, casting="same_kind")
        dx = out
    elif dx.ndim == 0:
        dx = dx[()]
    return dx, dw


@_runtime.jit(parallel=True)
def _prelu_forward_kernel(x3, w, y3):
    # x3, y3 are (O, C, I); w is (C,)
    O, C, I = x3.shape
    for oc in _runtime.prange(O * C):
        o = oc // C
        c = oc - o * C
        a = w[c]
        for i in range(I):
            y3[o, c, i] = leaky_relu_f(x3[o, c, i], a)


@_runtime.jit(parallel=True)
def _prelu_backward_kernel(dy3, x3, w, dx3, dw_part):
    # dy3, x3, dx3 are (O, C, I); w is (C,); dw_part is (O, C) float64, summed over O by the caller
    O, C, I = x3.shape
    for oc in _runtime.prange(O * C):
        o = oc // C
        c = oc - o * C
        a = w[c]
        acc = 0.0
        for i in range(I):
            v = x3[o, c, i]
            g = dy3[o, c, i]
            dx3[o, c, i] = g * leaky_relu_d(v, a)
            if not v > 0:
                acc += g * v
        dw_part[o, c] = acc


__all__ += ["prelu", "prelu_backward"]
