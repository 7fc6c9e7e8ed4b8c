"""Scalar math for the kernels: exp, expm1, log1p, tanh, sigmoid, erfc, specialised per dtype.

Why not plain ``math.exp``: without Intel SVML (llvmlite from pip has none) LLVM cannot vectorise a
loop that calls libm, and a scalar ``expf`` call per element runs at ~1 GB/s, no faster than NumPy's
temporaries. For float32 we therefore evaluate branch-free polynomials in float64 arithmetic (which
LLVM vectorises, 8 lanes with AVX-512) and round once to float32: the float64 intermediate keeps the
approximation error (<= 5e-9 relative) far below float32's half-ulp (3e-8), so results are within one
float32 ulp of the correctly rounded value. For float64 inputs we call libm (full accuracy).

Every function returns NaN for NaN input: each fast path ends in an explicit ``x == x`` select (we never
compile with ``fastmath``, which would delete it).
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
SQRT_HALF = 0.7071067811865476
SQRT_2_OVER_PI = 0.7978845608028654
INV_SQRT_2PI = 0.3989422804014327


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


@njit(cache=False)
def exp_poly(d):
    """exp(d) for float64 d, relative error <= 5e-9 (enough for a float32 result); NaN -> garbage.

    Cody-Waite reduction d = k ln2 + r, |r| <= ln2/2, Taylor polynomial of degree 8 for e^r, and 2^k
    assembled from its exponent bits. d is clamped to [-745, 709], where e^d under/overflows anyway.
    """
    c = d if d < 709.0 else 709.0
    c = c if c > -745.0 else -745.0
    k = math.floor(c * LOG2E + 0.5)
    r = c - k * LN2
    p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (
        1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0 + r * (1.0 / 40320.0))))))))
    ki = np.int64(k)
    # 2^k in two halves so that k down to -1075 (subnormal results) stays representable.
    k1 = ki >> 1
    k2 = ki - k1
    return p * _bits_to_f64((k1 + 1023) << 52) * _bits_to_f64((k2 + 1023) << 52)


@njit(cache=False)
def _expm1_poly(d):
    """expm1(d) for float64 d to ~2e-8 relative: Taylor series near 0, exp(d) - 1 elsewhere."""
    if abs(d) < 0.25:
        return d * (1.0 + d * (0.5 + d * (1.0 / 6.0 + d * (1.0 / 24.0 + d * (1.0 / 120.0 + d * (
            1.0 / 720.0 + d * (1.0 / 5040.0)))))))
    return exp_poly(d) - 1.0


@njit(cache=False)
def _log_poly(z):
    """log(z) for finite float64 z >= 1, ~1e-12 relative: exponent bits plus an atanh series."""
    bits = _f64_to_bits(z)
    e = ((bits >> 52) & 0x7FF) - 1023
    m = _bits_to_f64((bits & 0x000FFFFFFFFFFFFF) | (np.int64(1023) << 52))  # mantissa in [1, 2)
    big = m > 1.4142135623730951
    m = m * 0.5 if big else m
    e = e + 1 if big else e
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    series = 1.0 + s2 * (1.0 / 3.0 + s2 * (1.0 / 5.0 + s2 * (1.0 / 7.0 + s2 * (
        1.0 / 9.0 + s2 * (1.0 / 11.0 + s2 * (1.0 / 13.0))))))
    return e * LN2 + 2.0 * s * series


@njit(cache=False)
def _log1p_poly(u):
    """log1p(u) for float64 u >= 0 (used by softplus); series near 0 avoids the rounding of 1 + u."""
    if u < 1e-4:
        return u * (1.0 - u * (0.5 - u * (1.0 / 3.0)))
    return _log_poly(1.0 + u)


@njit(cache=False)
def _tanh_poly(d):
    """tanh(d) for float64 d to ~3e-8 relative."""
    a = abs(d)
    a = a if a < 20.0 else 20.0
    small = a < 0.125
    a2 = a * a
    ts = a * (1.0 - a2 * (1.0 / 3.0 - a2 * (2.0 / 15.0 - a2 * (17.0 / 315.0 - a2 * (62.0 / 2835.0)))))
    e = _expm1_poly(2.0 * a)
    tl = e / (e + 2.0)
    t = ts if small else tl
    return t if d >= 0 else -t


@njit(cache=False)
def _erfc_poly(d):
    """erfc(d) for float64 d, relative error < 1.2e-7 (Numerical Recipes' Chebyshev fit, 'erfcc')."""
    z = abs(d)
    t = 1.0 / (1.0 + 0.5 * z)
    r = t * exp_poly(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277)))))))))
    return r if d >= 0 else 2.0 - r


# --------------------------------------------------------------------------------------------------
# Public scalar functions: the activation table calls these; each picks the float32 fast path or libm.
# The plain-Python bodies run only outside Numba; inside, the overloads below replace them.


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


def _f32_via(poly):
    def impl(x):
        d = np.float64(x)
        r = np.float32(poly(d))
        return r if x == x else x
    return impl


@overload(exp)
def _ol_exp(x):
    if x == types.float32:
        return _f32_via(exp_poly)
    return lambda x: math.exp(x)


@overload(expm1)
def _ol_expm1(x):
    if x == types.float32:
        return _f32_via(_expm1_poly)
    return lambda x: math.expm1(x)


@overload(log1p)
def _ol_log1p(x):
    if x == types.float32:
        return _f32_via(_log1p_poly)
    return lambda x: math.log1p(x)


@overload(tanh)
def _ol_tanh(x):
    if x == types.float32:
        return _f32_via(_tanh_poly)
    return lambda x: math.tanh(x)


@overload(erfc)
def _ol_erfc(x):
    if x == types.float32:
        return _f32_via(_erfc_poly)
    return lambda x: math.erfc(x)


@njit(cache=False)
def _sigmoid_f64_poly(d):
    return 1.0 / (1.0 + exp_poly(-d))


@overload(sigmoid)
def _ol_sigmoid(x):
    if x == types.float32:
        return _f32_via(_sigmoid_f64_poly)

    def impl(x):
        # Two forms so that neither exp overflows to inf/inf.
        if x >= 0:
            return 1.0 / (1.0 + math.exp(-x))
        e = math.exp(x)
        return e / (1.0 + e)
    return impl
