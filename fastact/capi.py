"""The activation kernels as C-ABI functions (``numba.cfunc``), for C, ctypes and ``scipy.LowLevelCallable``.

Every activation of the table, forward and backward, float32 and float64, has a C function::

    void fastact_<name>_<f32|f64>(const T *x, T *y, int64_t n, const double *params);
    void fastact_<name>_backward_<f32|f64>(const T *dy, const T *x, T *dx, int64_t n,
                                          const double *params);

``params`` holds the forward's parameters in signature order (``max_value=None`` is ``+INFINITY``;
``approximate='tanh'`` is 1.0, ``'none'`` 0.0); ``NULL`` selects the defaults. The backward takes the same
``params`` (the relu backward uses the left derivative at the threshold, as the Python default).
Parameters are rounded to ``T`` first, as the Python functions do, and the loop calls the same scalar
code as the ufuncs, so a C call and a ufunc call give bit-identical results. ``y`` may be ``x``
(in-place); other overlaps are undefined.

The functions are compiled on first request (and cached on disk like every fastact kernel); they live
in this process: C code receives their addresses, e.g. through ctypes. See ``kernels/README.md``.

>>> import ctypes, numpy as np
>>> from fastact import capi
>>> f = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
...                      ctypes.c_void_p)(capi.address("relu", "float64"))
>>> x = np.array([-1.0, 2.0]); y = np.empty_like(x)
>>> f(x.ctypes.data, y.ctypes.data, x.size, None); y
array([0., 2.])
"""

import threading

import numpy as np
from llvmlite import ir
from numba import cfunc, types
from numba.extending import intrinsic

from . import _codegen, _runtime, _table

__all__ = ["address", "header", "scalar", "signature", "KERNEL_NAMES"]

_DTYPES = {"float32": ("f32", types.float32, "float"), "float64": ("f64", types.float64, "double")}
_lock = threading.RLock()
_built = {}


@intrinsic
def _is_null(typingctx, ptr):
    """True when a ``void *`` is NULL."""
    if ptr != types.voidptr:
        return None

    def codegen(context, builder, sig, args):
        return builder.icmp_unsigned("==", args[0], ir.Constant(args[0].type, None))

    return types.boolean(types.voidptr), codegen


@intrinsic
def _load_param(typingctx, ptr, i):
    """``((const double *) ptr)[i]``."""
    if ptr != types.voidptr or not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        p = builder.bitcast(args[0], ir.PointerType(ir.DoubleType()))
        idx = context.cast(builder, args[1], sig.args[1], types.intp)
        return builder.load(builder.gep(p, [idx]))

    return types.float64(types.voidptr, i), codegen


def _dtype_key(dtype):
    key = np.dtype(dtype).name
    if key not in _DTYPES:
        raise TypeError(f"fastact.capi: dtype must be float32 or float64, got {np.dtype(dtype)}")
    return key


def kernel_name(name, dtype="float32", backward=False):
    """The C name of a kernel, e.g. ``fastact_relu_backward_f32``."""
    act = _table.get(name)
    suffix = _DTYPES[_dtype_key(dtype)][0]
    return f"fastact_{act.name}{'_backward' if backward else ''}_{suffix}"


def signature(backward=False, dtype="float32"):
    """The Numba signature of a forward or backward kernel."""
    t = _DTYPES[_dtype_key(dtype)][1]
    ptr = types.CPointer(t)
    if backward:
        return types.void(ptr, ptr, ptr, types.int64, types.voidptr)
    return types.void(ptr, ptr, types.int64, types.voidptr)


def _defaults(act, backward):
    specs = act.params + (act.backward_params if backward else ())
    return [float(s.to_float(s.default)) for s in specs]


def _source(act, fname, backward):
    """The C kernel: the common per-element loop over ``range(n)``, its parameters read in a prologue
    from ``params`` (or the defaults when it is NULL)."""
    n = act.nparams
    names = _codegen.param_names(act)
    lines = []
    if n:
        lines.append("    if _is_null(params):")
        lines += [f"        {v} = T(DEF{i})" for i, v in enumerate(names)]
        lines.append("    else:")
        lines += [f"        {v} = T(_load_param(params, {i}))" for i, v in enumerate(names)]
    # backward-only parameters (relu's subgradient) keep their defaults: params holds the forward's
    bnames = _codegen.param_names(act, backward)[n:]
    lines += [f"    {v} = T(DEF{n + i})" for i, v in enumerate(bnames)]
    prologue = "".join(line + "\n" for line in lines)
    return _codegen.loop_source(fname, act, backward, index="range(n)", signature="n, params",
                                prologue=prologue)


def _build(act, dtype, backward):
    fname = kernel_name(act.name, dtype, backward)
    glb = {"F": _codegen.scalar(act), "D": _codegen.scalar(act, True), "T": np.dtype(dtype).type,
           "_is_null": _is_null, "_load_param": _load_param}
    for i, v in enumerate(_defaults(act, backward)):
        glb[f"DEF{i}"] = v
    py = _codegen.compile_source(fname, _source(act, fname, backward), glb)
    return cfunc(signature(backward, dtype), cache=_runtime.caching_enabled(), error_model="numpy")(py)


def _get(name, dtype, backward):
    act = _table.get(name)
    key = (act.name, _dtype_key(dtype), bool(backward))
    fn = _built.get(key)
    if fn is None:
        with _lock:
            fn = _built.get(key)
            if fn is None:
                fn = _built[key] = _build(act, key[1], key[2])
    return fn


def cfunc_of(name, dtype="float32", backward=False):
    """The ``numba.cfunc`` object of a kernel (``.address``, ``.ctypes``, ``.native_name``)."""
    return _get(name, dtype, backward)


def address(name, dtype="float32", backward=False):
    """The integer address of ``fastact_<name>[_backward]_<f32|f64>``, compiled on first request.

    Parameters
    ----------
    name : str
        An activation of the table or an alias (``'swish'``).
    dtype : {'float32', 'float64'} or a NumPy float dtype
    backward : bool
        The backward kernel ``dx = dy * f'(x)`` instead of the forward.

    Returns
    -------
    int
        A function pointer with the C signature of the module docstring, valid while this process runs.
    """
    return _get(name, dtype, backward).address


def scalar(name):
    """``scipy.LowLevelCallable`` of ``double f(double)``: the forward with default parameters.

    Usable wherever SciPy takes a low-level callback, e.g. ``scipy.integrate.quad(capi.scalar('gelu'),
    -1, 1)``, which then integrates without calling back into Python.
    """
    import scipy

    act = _table.get(name)
    key = (act.name, "scalar")
    fn = _built.get(key)
    if fn is None:
        with _lock:
            fn = _built.get(key)
            if fn is None:
                fname = f"fastact_{act.name}_scalar"
                defaults = [f"DEF{i}" for i in range(act.nparams)]
                glb = {"F": _codegen.scalar(act)}
                for i, v in enumerate(_defaults(act, False)):
                    glb[f"DEF{i}"] = v
                src = f"def {fname}(x):\n    return {_codegen.element(False, defaults, i='')}\n"
                py = _codegen.compile_source(fname, src, glb)
                fn = _built[key] = cfunc(types.float64(types.float64),
                                         cache=_runtime.caching_enabled(), error_model="numpy")(py)
    return scipy.LowLevelCallable(fn.ctypes)


#: every kernel's C name, in table order
KERNEL_NAMES = tuple(kernel_name(a, dt, bw) for a in _table.ACTIVATIONS
                     for bw in (False, True) for dt in _DTYPES)


def _c_float(v):
    if v == np.inf:
        return "INFINITY"
    if v == -np.inf:
        return "-INFINITY"
    if v != v:
        return "NAN"
    return repr(float(v))


def header():
    """The C header describing every kernel: ``kernels/fastact.h`` is this text (a test keeps it so)."""
    out = [
        "/* fastact.h: the C ABI of fastact's activation kernels.",
        " *",
        " * Generated by fastact.capi.header() (python -m fastact.capi > kernels/fastact.h); do not edit.",
        " * The kernels are compiled by fastact inside a Python process; C code receives their addresses",
        " * (fastact.capi.address(name, dtype, backward)) and calls them through these pointer types.",
        " * params holds the forward's parameters in the order given below; NULL selects the defaults.",
        " * The backward takes the same params and computes dx[i] = dy[i] * f'(x[i]).",
        " * y may equal x (in place); other overlaps are undefined. n <= 0 does nothing.",
        " */",
        "#ifndef FASTACT_H",
        "#define FASTACT_H",
        "",
        "#include <stdint.h>",
        "",
        "typedef void (*fastact_forward_f32)(const float *x, float *y, int64_t n, const double *params);",
        "typedef void (*fastact_forward_f64)(const double *x, double *y, int64_t n, const double *params);",
        "typedef void (*fastact_backward_f32)(const float *dy, const float *x, float *dx, int64_t n,",
        "                                     const double *params);",
        "typedef void (*fastact_backward_f64)(const double *dy, const double *x, double *dx, int64_t n,",
        "                                     const double *params);",
        "",
        "/* scalar forward with default parameters, as handed to scipy.LowLevelCallable */",
        "typedef double (*fastact_scalar_f64)(double x);",
        "",
    ]
    for act in _table.ACTIVATIONS.values():
        up = act.name.upper()
        out.append(f"/* {act.name}: {act.formula}")
        names = ", ".join(kernel_name(act.name, dt, bw) for bw in (False, True) for dt in _DTYPES)
        out.append(f" *   kernels: {names}")
        for i, p in enumerate(act.params):
            default = _c_float(p.to_float(p.default))
            choices = ""
            if p.choices:
                choices = " (" + ", ".join(f"{k!r} = {_c_float(v)}" for k, v in p.choices.items()) + ")"
            out.append(f" *   params[{i}] {p.name}: {p.doc}; default {default}{choices}")
        out.append(" */")
        out.append(f"#define FASTACT_{up}_NPARAMS {act.nparams}")
        for i, p in enumerate(act.params):
            out.append(f"#define FASTACT_{up}_{p.name.upper()} {i}")
        out.append("")
    out += [f"#define FASTACT_NUM_ACTIVATIONS {len(_table.ACTIVATIONS)}", "", "#endif /* FASTACT_H */", ""]
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    sys.stdout.write(header())
