"""Scalar math for the kernels: exp, expm1, log1p, tanh, sigmoid, erfc, in two precisions.

Why not plain ``math.exp`` everywhere: without Intel SVML (llvmlite from pip has none) LLVM cannot
vectorise a loop that calls libm, and a scalar libm call per element costs 4-30 ns, slower than NumPy's
own SIMD loops. So there are two sets of functions:

* the **exact** set (``exp``, ``expm1``, ...): libm, full float64 accuracy; the float64 kernels use it;
* the **fast** set (``fexp``, ``fexpm1``, ...): branch-free float64 polynomials that LLVM vectorises
  (4 lanes with AVX2, no AVX-512 instruction needed), with FMA contraction allowed. Largest relative
  errors found by a dense scan against ``math`` (2026-11-23): fexp 7.0e-9, fexpm1 2.4e-8, ftanh 2.0e-8,
  fsigmoid 7e-9, flog1p 1.3e-12, ferfc 1.11e-7 (its fit's bound is 1.2e-7). The
  float32 kernels of the transcendental activations compute in float64 with this set and round once
  to float32 (see ``FAST`` and ``fastact._table.fast_variant``), so results are within about one
  float32 ulp of the correctly rounded value (GELU, through erfc's 1.2e-7: two; a derivative near one
  of its zeros, e.g. GELU's at x = -0.75, loses more by cancellation, as any float32 evaluation would).
* ``fexpf`` / ``fexpf_parts``: exp in float32 arithmetic (16 AVX-512 lanes, 8 with AVX2; within
  about one ulp), for the entries whose float32 kernels are written in float32 itself
  (``Activation.float32``: sigmoid, SiLU's forward, tanh's derivative) and for softmax, where the
  float64 evaluation left fastact slower than PyTorch: those activations run 1.5-1.8x faster per
  element than evaluated in float64 with ``fexp``, for up to 2.2-3.2 ulps instead of 0.6
  (``bench/float32_paths.py``).

What makes the fast set vectorisable on this machine (AVX2 + FMA, no AVX-512DQ): no branches (both
sides are computed and selected), no float64 <-> int64 conversions (rounding by adding 1.5 * 2**52 and
reading the integer from the mantissa bits instead), no 64-bit arithmetic right shifts.

Domains: the fast set exists for float32 results. ``fexp`` is exp on [-708, 709], 0 below (no
float64 subnormals, which are 0 in float32 anyway) and inf above, so limits at +-inf are exact. Every fast function returns NaN for
NaN input: the clamps are written so that NaN passes through them (``709 if d > 709 else d``), and
every later step propagates it. We never compile with ``fastmath``, which would delete that.
"""

import math
import sys
import types as pytypes
from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
SQRT2 = 1.4142135623730951
SQRT_HALF = 0.7071067811865476
SQRT_2_OVER_PI = 0.7978845608028654
INV_SQRT_2PI = 0.3989422804014327
TWO_OVER_SQRT_PI = 1.1283791670955126
#: 1/sqrt(2) - SQRT_HALF: the rounding error of the constant, for error-free products
SQRT_HALF_LO = -4.833646656726457e-17
#: True in the exact set, False in the fast set: the table's functions add corrections that only a
#: float64 result needs (the rounding of x / sqrt(2) in GELU's tail costs ~50 float64 ulps and nothing
#: in float32) under ``if fm.PRECISE:``, which Numba folds away in the fast variant.
PRECISE = True

_ROUND = 6755399441055744.0            # 1.5 * 2**52: x + _ROUND holds round(x) in its low mantissa bits
_ROUND_BITS = 0x4338000000000000       # its bit pattern
_TWO52_BITS = 0x4330000000000000       # 2**52: OR-ing a small integer n into it gives 2**52 + n
_MANTISSA = 0x000FFFFFFFFFFFFF
_ONE_BITS = 0x3FF0000000000000

#: How every scalar function of the kernels is compiled: NumPy's error model (x / 0 is inf or NaN, not
#: an exception), without which a division keeps LLVM from inlining and vectorising the caller's loop.
scalar = njit(cache=False, error_model="numpy")
#: The fast set also lets LLVM fuse a * b + c into one FMA ('contract' is the only fast-math flag used:
#: it changes rounding, for the better, and leaves NaN and inf semantics alone).
_fast = njit(cache=False, error_model="numpy", fastmath={"contract"})


@intrinsic
def _bits_to_f64(typingctx, i):
    """Reinterpret the bits of an int64 as a float64."""
    if i != types.int64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def _f64_to_bits(typingctx, x):
    """Reinterpret the bits of a float64 as an int64."""
    if x != types.float64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@njit(cache=False, inline="always", error_model="numpy", fastmath={"contract"})
def _reduce(d):
    """Split d (clamped to [-708, 709]) as k ln2 + r with |r| <= ln2/2; returns (r, 2**k)."""
    c = 709.0 if d > 709.0 else d
    c = -708.0 if c < -708.0 else c
    t = c * LOG2E + _ROUND
    k = t - _ROUND
    r = c - k * LN2
    ki = _f64_to_bits(t) - _ROUND_BITS      # k as an integer, without a float -> int conversion
    return r, _bits_to_f64((ki + 1023) << 52)


@_fast
def fexp(d):
    """exp(d) on [-708, 709] (Taylor degree 7, relative error ~7e-9); 0 below, inf above that range."""
    r, s = _reduce(d)
    p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (
        1.0 / 720.0 + r * (1.0 / 5040.0)))))))
    e = p * s
    # the exact limits, so that 1 / (1 + exp(-x)) is 0 at -inf and x * exp(x) notices exp(x) == 0
    e = 0.0 if d < -708.0 else e
    return math.inf if d > 709.0 else e


@_fast
def fexpm1(d):
    """expm1(d) = 2**k expm1(r) + (2**k - 1): accurate near 0 (k = 0) without a branch."""
    r, s = _reduce(d)
    em = r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (
        1.0 / 720.0 + r * (1.0 / 5040.0)))))))
    e = s * em + (s - 1.0)
    return math.inf if d > 709.0 else e


@_fast
def flog1p(u):
    """log1p(u), relative error ~1e-12: exponent bits plus an atanh series, with the first-order
    correction for the rounding of 1 + u (so tiny u keep full accuracy); inf at inf, -inf at -1, NaN
    below -1."""
    w = 1.0 + u
    corr = (u - (w - 1.0)) / w
    bits = _f64_to_bits(w)
    # the biased exponent as a float: (bits >> 52) & 0x7FF is non-negative, so OR-ing it into 2**52
    # converts it exactly (no int -> float conversion instruction needed)
    e = _bits_to_f64(((bits >> 52) & 0x7FF) | _TWO52_BITS) - (4503599627370496.0 + 1023.0)
    m = _bits_to_f64((bits & _MANTISSA) | _ONE_BITS)   # mantissa in [1, 2)
    big = m > SQRT2
    m = 0.5 * m if big else m
    e = e + 1.0 if big else e
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    series = 1.0 + s2 * (1.0 / 3.0 + s2 * (1.0 / 5.0 + s2 * (1.0 / 7.0 + s2 * (
        1.0 / 9.0 + s2 * (1.0 / 11.0 + s2 * (1.0 / 13.0))))))
    r = e * LN2 + 2.0 * s * series + corr
    r = math.inf if u == math.inf else r
    r = -math.inf if u == -1.0 else r
    return math.nan if u < -1.0 else r


@_fast
def ftanh(d):
    """tanh(d) = e / (e + 2) with e = expm1(2|d|), sign restored; relative error ~1e-9."""
    a = abs(d)
    a = 20.0 if a > 20.0 else a
    e = fexpm1(2.0 * a)
    return math.copysign(e / (e + 2.0), d)


@_fast
def fsigmoid(d):
    """1 / (1 + exp(-d)); exp is clamped, so no inf / inf at either end."""
    return 1.0 / (1.0 + fexp(-d))


@_fast
def ferfc(d):
    """erfc(d), relative error < 1.2e-7 (Numerical Recipes' Chebyshev fit 'erfcc')."""
    z = abs(d)
    t = 1.0 / (1.0 + 0.5 * z)
    r = t * fexp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277)))))))))
    return r if d >= 0 else 2.0 - r


# ------------------------------------------------------------------------------- float32 arithmetic
# For the activations whose float32 kernels evaluate in float32 itself (16 AVX-512 lanes instead of 8;
# see ``Activation.float32`` in fastact._table): every constant is a float32 (a float64 literal would
# promote the whole expression back to float64).

F32 = np.float32
_LOG2E_F = F32(LOG2E)
_ROUND_F = F32(12582912.0)            # 1.5 * 2**23: t + _ROUND_F holds round(t) in its low mantissa bits
_ROUND_F_BITS = 0x4B400000
# Cody-Waite split of ln 2 (the high part has 9 significant bits, so k * _LN2_HI is exact for |k| < 2**15)
_LN2_HI_F = F32(0.693359375)
_LN2_LO_F = F32(-2.12194440e-4)
# Cephes' expf polynomial (S. L. Moshier, Cephes Math Library): exp(r) = 1 + r + r^2 P(r) on
# |r| <= ln2 / 2, relative error below one float32 ulp
_E0, _E1, _E2 = F32(1.9875691500e-4), F32(1.3981999507e-3), F32(8.3334519073e-3)
_E3, _E4, _E5 = F32(4.1665795894e-2), F32(1.6666665459e-1), F32(5.0000001201e-1)


@intrinsic
def _bits_to_f32(typingctx, i):
    """Reinterpret the low 32 bits of an integer as a float32 (Numba widens int32 arithmetic to
    int64; LLVM narrows it back, as only these bits are used)."""
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if v.type.width != 32:
            v = builder.trunc(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(i), codegen


@intrinsic
def _f32_to_bits(typingctx, x):
    """Reinterpret the bits of a float32 as an int32."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@_fast
def fexpf_parts(d):
    """exp(d) = a * b for a float32 d, in float32 arithmetic, with b = 2**h a power of two and both
    factors normal floats even where exp(d) itself is subnormal (d < -87.3): a caller that multiplies
    the result by a large factor (SiLU's x * sigmoid(x)) applies b last and keeps full precision.
    a * b is within about one ulp of exp(d); a is 0 below -112 (where even 64 exp(d) is below the
    smallest subnormal) and inf from 88.72 on (where exp(d) overflows), NaN for NaN."""
    c = F32(88.8) if d > F32(88.8) else d
    c = F32(-112.0) if c < F32(-112.0) else c
    t = c * _LOG2E_F + _ROUND_F
    k = t - _ROUND_F
    r = (c - k * _LN2_HI_F) - k * _LN2_LO_F
    p = ((((_E0 * r + _E1) * r + _E2) * r + _E3) * r + _E4) * r + _E5
    e = (p * (r * r) + r) + F32(1.0)
    # 2**k as 2**(k - h) * 2**h, h = k // 2, so that k from -162 (subnormal results) to 128 needs no
    # special case; k is read from the rounding constant's mantissa bits
    ki = _f32_to_bits(t) - _ROUND_F_BITS
    h = ki >> 1
    a = e * _bits_to_f32((ki - h + 127) << 23)
    a = F32(0.0) if d < F32(-112.0) else a
    a = F32(math.inf) if d > F32(88.8) else a
    return a, _bits_to_f32((h + 127) << 23)


@_fast
def fexpf(d):
    """exp(d) for a float32 d, in float32 arithmetic (within about one ulp): 0 from about -103.97 on
    (below half the smallest subnormal), inf from 88.72 on, NaN for NaN."""
    a, b = fexpf_parts(d)
    return a * b


def exp_native(x):
    """exp in the precision of ``x``: ``fexpf`` for a float32 (vectorises, 16 lanes), libm otherwise;
    for kernels whose float32 results may take the ~1 ulp of ``fexpf`` (softmax)."""
    return math.exp(x)


@overload(exp_native, jit_options={"error_model": "numpy"}, inline="always")
def _exp_native_typer(x):
    if x == types.float32:
        return lambda x: fexpf(x)
    return lambda x: math.exp(x)


_SPLIT = 134217729.0  # 2**27 + 1: Veltkamp's splitter for float64


@njit(cache=False, error_model="numpy", inline="always")
def two_prod_err(a, b):
    """The rounding error of ``a * b``: ``a * b - fl(a * b)`` exactly (Dekker's product, no FMA needed),
    for |a|, |b| below 1e150. Compiled without contraction, which would break it."""
    p = a * b
    t = _SPLIT * a
    ah = t - (t - a)
    al = a - ah
    t = _SPLIT * b
    bh = t - (t - b)
    bl = b - bh
    return ((ah * bh - p) + ah * bl + al * bh) + al * bl


# --------------------------------------------------------------------------------------------------
# The primitives: each declared once, with every implementation a target needs. The table calls the
# stubs generated below (``fm.exp``, ...); the CPU overloads here and the CUDA registration in
# ``fastact.cuda._device`` both iterate :data:`PRIMITIVES`, so a new primitive is one entry.


def _exp(x):
    return math.exp(x)


def _expm1(x):
    return math.expm1(x)


def _log1p(x):
    return math.log1p(x)


def _tanh(x):
    return math.tanh(x)


def _erfc(x):
    return math.erfc(x)


def _sigmoid(x):
    # two forms so that neither exp overflows to inf / inf
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@dataclass(frozen=True)
class Primitive:
    """One scalar math function of the table, in every implementation the targets use.

    ``exact`` is the float64 definition on libm (``math.*``): plain Python, so it runs as it is outside
    compiled code (and on Numba's CUDA simulator) and compiles for the CPU's float64 kernels. ``fast``
    is the vectorisable float64 polynomial the CPU's float32 kernels evaluate and round once.
    ``libdevice`` names CUDA's libdevice function (``numba.cuda.libdevice.<name>``, float32: ``<name>f``);
    None means the device compiles ``exact``, whose ``math.*`` calls CUDA maps to libdevice itself.
    """
    name: str
    exact: object
    fast: object
    libdevice: str = None


PRIMITIVES = (
    Primitive("exp", _exp, fexp, "exp"),
    Primitive("expm1", _expm1, fexpm1, "expm1"),
    Primitive("log1p", _log1p, flog1p, "log1p"),
    Primitive("tanh", _tanh, ftanh, "tanh"),
    Primitive("erfc", _erfc, ferfc, "erfc"),
    Primitive("sigmoid", _sigmoid, fsigmoid),
)


def _stub(prim):
    """The function the table calls, ``fm.<name>``: ``prim.exact`` in plain Python; in compiled code
    the overloads registered for it (below for the CPU, ``fastact.cuda`` for the GPU) replace it."""
    exact = prim.exact

    def stub(x):
        return exact(x)
    stub.__name__ = stub.__qualname__ = prim.name
    stub.__doc__ = f"{prim.name}(x): libm in float64; float32 through ``f{prim.name}`` (see module docstring)."
    return stub


def _f32_via(fast):
    def impl(x):
        return np.float32(fast(np.float64(x)))
    return impl


def _cpu_typer(prim):
    exact = scalar(prim.exact)  # a separate compiled function: the stub itself would resolve to this overload

    def typer(x):
        if x == types.float32:
            return _f32_via(prim.fast)
        return lambda x: exact(x)
    return typer


for _p in PRIMITIVES:
    globals()[_p.name] = _stub(_p)
    overload(globals()[_p.name])(_cpu_typer(_p))
del _p


def stub(name):
    """The ``fm.<name>`` stub of a primitive (the object the overloads are registered on)."""
    return globals()[name]


#: The fast set under the exact set's names, as a module: ``fastact._table.fast_variant`` recompiles a
#: table function with ``fm`` bound to this, which turns every ``fm.exp`` in it into ``fexp``.
FAST = pytypes.ModuleType(__name__ + ".FAST")
FAST.__dict__.update(
    {p.name: p.fast for p in PRIMITIVES},
    LOG2E=LOG2E, LN2=LN2, SQRT2=SQRT2, SQRT_HALF=SQRT_HALF, SQRT_2_OVER_PI=SQRT_2_OVER_PI,
    INV_SQRT_2PI=INV_SQRT_2PI, TWO_OVER_SQRT_PI=TWO_OVER_SQRT_PI, SQRT_HALF_LO=SQRT_HALF_LO,
    PRECISE=False, two_prod_err=two_prod_err)
sys.modules[FAST.__name__] = FAST
