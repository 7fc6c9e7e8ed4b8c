"""The kernel factory: compiles each table entry into loops and ufuncs, lazily, cached on disk.

For an activation ``name`` with scalar forward ``F(x, *p)`` and derivative ``D(x, *p, *b)`` we build

* ``forward_loop(name, parallel)``: ``(x, y, *p)`` over 1-D contiguous arrays, ``y[i] = F(x[i], *p)``;
* ``backward_loop(name, parallel)``: ``(dy, x, dx, *p, *b)``, ``dx[i] = dy[i] * D(x[i], *p, *b)``;
* ``ufunc(name, backward)``: a real NumPy ufunc (``@vectorize``, float32 and float64 loops) taking the
  parameters as broadcasting inputs.

The loop bodies are generated as source text because Numba needs a fixed arity per function; each
generated function gets a unique name so the on-disk cache (see ``_runtime``) keeps them apart.
Nothing is compiled until first use, and then only for the dtype that is used.

The per-element source (:func:`loop_source`, :func:`element`) and the parameter names
(:func:`param_names`) are written here once; the C-ABI functions (``fastact.capi``), the GEMM
epilogues (``fastact._epilogue``) and the CUDA kernels (``fastact.cuda``) generate from them too, each
choosing its own signature, prologue and index range (``range``, ``prange``, a CUDA grid-stride loop).
"""

import threading

import numpy as np
from numba import float32, float64, njit, prange, vectorize
from numba.extending import overload

from . import _runtime, _table
from ._table import ACTIVATIONS

_lock = threading.RLock()
_built = {}
_keepalive = []  # DUFuncs whose np.ufunc we hand out (see _build_ufunc)


def param_names(act, backward=False):
    """Argument names of an activation's parameters in generated code: ``p0, p1, ...`` for the
    forward's, then ``b0, ...`` for the backward-only ones (relu's subgradient) when ``backward``.
    ``act`` None (the identity of an unfused layer) has none."""
    if act is None:
        return []
    names = [f"p{i}" for i in range(act.nparams)]
    if backward:
        names += [f"b{i}" for i in range(len(act.backward_params))]
    return names


def args(names):
    """``", a, b"``: names appended to an argument list (empty for none)."""
    return "".join(f", {n}" for n in names)


def element(backward, params, i="[i]", x="x", dy="dy"):
    """The per-element expression of every kernel: ``F(x[i], *p)`` or ``dy[i] * D(x[i], *p, *b)``.

    ``i`` is the subscript (``""`` for a scalar, as in a ufunc), ``x`` the input's name (an epilogue
    passes its pre-activation ``v``), ``dy`` the incoming gradient's, ``params`` the parameter names.
    """
    if backward:
        return f"{dy}{i} * D({x}{i}{args(params)})"
    return f"F({x}{i}{args(params)})"


_LOOP_SRC = """\
def {fname}({arrays}{signature}):
{prologue}    for i in {index}:
        {out}[i] = {expr}
"""


def loop_source(fname, act, backward, *, index="range(x.size)", signature=None, prologue=""):
    """Source of the per-element loop ``y[i] = F(x[i], *p)`` (arguments ``x, y, ...``) or
    ``dx[i] = dy[i] * D(x[i], *p, *b)`` (arguments ``dy, x, dx, ...``), the one template of every
    elementwise kernel.

    Parameters
    ----------
    fname : str
        The function's name (unique per kernel: the on-disk cache keys on it).
    act : Activation
    backward : bool
    index : str
        The loop's iterable: ``range(x.size)``, ``prange(x.size)``, a CUDA grid-stride range, ...
    signature : str, optional
        What follows the arrays in the argument list; default the parameter names. A target that
        passes its parameters otherwise (the C ABI's ``n, params``) defines them in ``prologue``.
    prologue : str
        Lines, indented four spaces and ending in a newline, run before the loop.
    """
    params = param_names(act, backward)
    if signature is None:
        signature = ", ".join(params)
    return _LOOP_SRC.format(fname=fname, arrays="dy, x, dx" if backward else "x, y",
                            signature=f", {signature}" if signature else "", prologue=prologue,
                            index=index, out="dx" if backward else "y", expr=element(backward, params))


def bias_act_rows(src, dst, z, bias, n, fv, indent, idx="j"):
    """The bias + activation row loop of every epilogue (convolution, fused convolution, linear),
    written once: ``v = src[j] + bias; dst[j] = F(v)``, and ``z[j] = v`` too when ``keep`` (training
    keeps the pre-activation). ``src`` may be ``dst`` (in place). A source template, not a closure:
    each activation's ``F`` takes its own number of parameters, and the kernels must stay cacheable
    (see :func:`compile_source`)."""
    pad = " " * indent
    return (f"{pad}if keep:\n"
            f"{pad}    zr = {z}\n"
            f"{pad}    for {idx} in range({n}):\n"
            f"{pad}        v = {src}[{idx}] + {bias}\n"
            f"{pad}        zr[{idx}] = v\n"
            f"{pad}        {dst}[{idx}] = {fv}\n"
            f"{pad}else:\n"
            f"{pad}    for {idx} in range({n}):\n"
            f"{pad}        v = {src}[{idx}] + {bias}\n"
            f"{pad}        {dst}[{idx}] = {fv}\n")


def compile_source(fname, src, glb):
    """The function ``fname`` defined by the source ``src`` with the globals ``glb``.

    Why the generated kernels are source text and not closures made by a factory: Numba keys a cached
    function by its code and the pickled contents of its closure cells, and a captured dispatcher
    (the table's scalar ``F``) pickles differently in every process (numba/numba#6264), so a factory's
    closures would never be found in the kernel cache and every process would recompile them; a
    global ``F`` in generated source is looked up by name. Each kernel gets its own name, and each
    loop shape is one template (``loop_source``, :func:`bias_act_rows`, the fused convolutions)."""
    code = compile(src, _runtime.GENERATED_FILENAME, "exec")
    # A real module name: Numba re-imports it when it loads the function's environment from the cache.
    glb = dict(glb, __name__=__name__)
    ns = {}
    exec(code, glb, ns)
    fn = ns[fname]
    return fn


def _cache():
    return _runtime.caching_enabled()


_SCALAR_SRC = """\
def {fname}(x{a}):
    raise NotImplementedError("compiled code only")


def _typer(x{a}):
    if x == float32_t and NATIVE32:
        def native(x{a}):
            return FAST(x{a})
        return native
    if x == float32_t:
        def fast(x{a}):
            return np.float32(FAST(np.float64(x){a}))
        return fast

    def exact(x{a}):
        return EXACT(x{a})
    return exact
"""


def scalar(act, backward=False):
    """The scalar function every kernel of ``act`` calls: ``F(x, *p)`` or ``D(x, *p, *b)``.

    For a transcendental activation this is a Numba overload that picks, by the type of ``x``, the
    table function itself (float64: libm accuracy) or its fast variant evaluated in float64 and rounded
    once (float32: vectorisable polynomials, see ``fastact._math``), or, where the entry has
    ``float32=`` variants, those (float32 arithmetic). The ReLU family needs no such split: its table
    functions are used as they are.
    """
    exact = act.derivative if backward else act.forward
    if not act.transcendental and act.float32 is None:
        return exact
    key = ("scalar", act.name, backward)
    fn = _built.get(key)
    if fn is None:
        with _lock:
            fn = _built.get(key)
            if fn is None:
                a = args(param_names(act, backward))
                fname = f"{act.name}_{'d' if backward else 'f'}"
                ns = {}
                native = act.float32 is not None and act.float32[backward] is not None
                glb = {"np": np, "float32_t": float32, "EXACT": exact, "NATIVE32": native,
                       "FAST": act.float32[backward] if native else _table.fast_variant(exact),
                       "__name__": __name__}
                exec(compile(_SCALAR_SRC.format(fname=fname, a=a), _runtime.GENERATED_FILENAME,
                             "exec"), glb, ns)
                fn = ns[fname]
                overload(fn, jit_options={"error_model": "numpy"}, inline="always")(ns["_typer"])
                _built[key] = fn
    return fn


def _build_loop(act, backward, parallel):
    kind = "bwd" if backward else "fwd"
    fname = f"{act.name}_{kind}_{'par' if parallel else 'ser'}"
    src = loop_source(fname, act, backward, index="prange(x.size)" if parallel else "range(x.size)")
    fn = compile_source(fname, src, {"F": scalar(act), "D": scalar(act, True), "prange": prange})
    return njit(fn, parallel=parallel, cache=_cache(), nogil=True, error_model="numpy")


def _build_ufunc(act, backward):
    p = param_names(act, backward)
    fname = f"{act.name}_backward" if backward else act.name  # the ufunc's __name__
    inputs = ("dy, x" if backward else "x") + args(p)
    src = f"def {fname}({inputs}):\n    return {element(backward, p, i='')}\n"
    nin = (2 if backward else 1) + len(p)
    fn = compile_source(fname, src, {"F": scalar(act), "D": scalar(act, True)})
    fn.__doc__ = f"{'Derivative times dy of ' if backward else ''}{act.name}: {act.formula}"
    sigs = [float32(*([float32] * nin)), float64(*([float64] * nin))]
    # Numba >= 0.59 wraps even a fixed-signature ufunc in a DUFunc (not an np.ufunc, and it would try
    # to compile new loops for other input types); hand out the frozen np.ufunc inside it, and keep
    # the DUFunc alive, since it owns the compiled loops the np.ufunc points to.
    duf = vectorize(sigs, cache=_cache())(fn)
    _keepalive.append(duf)
    return getattr(duf, "ufunc", duf)


def get(kind, name, backward=False, parallel=False):
    """The compiled kernel ``kind`` ('loop' or 'ufunc') for activation ``name``, built on first use."""
    key = (kind, name, backward, parallel)
    fn = _built.get(key)
    if fn is None:
        with _lock:
            fn = _built.get(key)
            if fn is None:
                act = ACTIVATIONS[name]
                fn = _build_loop(act, backward, parallel) if kind == "loop" else _build_ufunc(act, backward)
                _built[key] = fn
    return fn
