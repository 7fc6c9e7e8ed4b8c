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

_ROUND = 6755399441055744.0            # 1.5 * 2**52: x + _ROUND holds round(x) in its low mantissa bits
_ROUND_BITS = 0x4338000000000000       # its bit pattern
_TWO52_BITS = 0x4330000000000000       # 2**52: OR-ing a small integer n into it gives 2**52 + n
_MANTISSA = 0x000FFFFFFFFFFFFF
_ONE_BITS = 0x3FF0000000000000

#: How every scalar function of the kernels is compiled: NumPy's error model (x / 0 is inf or NaN, not
#: an exception), without which a division keeps LLVM from inlining and vectorising the caller's loop.
_scalar = njit(cache=False, error_model="numpy")
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


# --------------------------------------------------------------------------------------------------
# The exact set: what the activation table calls. The plain-Python bodies run only outside Numba;
# inside, the overloads below replace them (libm for float64; a float32 argument goes through the fast
# set in float64 and is rounded once).


def exp(x):
    return math.exp(x)


def expm1(x):
    return math.expm1(x)


def log1p(x):
    return math.log1p(x)


def tanh(x):
    return math.tanh(x)


def erfc(x):
    return math.erfc(x)


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _f32_via(fast):
    def impl(x):
        return np.float32(fast(np.float64(x)))
    return impl


@overload(exp)
def _ol_exp(x):
    if x == types.float32:
        return _f32_via(fexp)
    return lambda x: math.exp(x)


@overload(expm1)
def _ol_expm1(x):
    if x == types.float32:
        return _f32_via(fexpm1)
    return lambda x: math.expm1(x)


@overload(log1p)
def _ol_log1p(x):
    if x == types.float32:
        return _f32_via(flog1p)
    return lambda x: math.log1p(x)


@overload(tanh)
def _ol_tanh(x):
    if x == types.float32:
        return _f32_via(ftanh)
    return lambda x: math.tanh(x)


@overload(erfc)
def _ol_erfc(x):
    if x == types.float32:
        return _f32_via(ferfc)
    return lambda x: math.erfc(x)


@overload(sigmoid)
def _ol_sigmoid(x):
    if x == types.float32:
        return _f32_via(fsigmoid)

    def impl(x):
        # Two forms so that neither exp overflows to inf/inf.
        if x >= 0:
            return 1.0 / (1.0 + math.exp(-x))
        e = math.exp(x)
        return e / (1.0 + e)
    return impl


#: The fast set under the exact set's names, as a module: ``fastact._table.fast_variant`` recompiles a
#: table function with ``fm`` bound to this, which turns every ``fm.exp`` in it into ``fexp``.
FAST = pytypes.ModuleType(__name__ + ".FAST")
FAST.__dict__.update(
    exp=fexp, expm1=fexpm1, log1p=flog1p, tanh=ftanh, erfc=ferfc, sigmoid=fsigmoid,
    LOG2E=LOG2E, LN2=LN2, SQRT2=SQRT2, SQRT_HALF=SQRT_HALF, SQRT_2_OVER_PI=SQRT_2_OVER_PI,
    INV_SQRT_2PI=INV_SQRT_2PI)
sys.modules[FAST.__name__] = FAST
