"""High-precision references for the activations, written with mpmath, independent of fastact's table.

Each entry maps an activation name to ``(f, df)``: ``f(x, *params)`` and ``df(x, *params)`` on mpmath
numbers (the parameters are the table's float parameters, ``max_value=None`` as ``inf``). They are
the textbook formulas evaluated at 60 significant digits, with no attempt at numerical care, so they
share no code and no rounding with the kernels. Where fastact defines the function differently from
the formula (softplus is linear above its threshold, as PyTorch), the reference does the same.

The values at +-inf are the mathematical limits, taken numerically at +-1e400 (see :data:`FAR`).
"""

import mpmath as mp
import numpy as np

mp.mp.dps = 60

SELU_ALPHA = mp.mpf("1.6732632423543772848170429916717")
SELU_SCALE = mp.mpf("1.0507009873554804934193349852946")


def _sig(z):
    return 1 / (1 + mp.exp(-z))


def _relu(x, a, m, t):
    return mp.mpf(min(x, m)) if x > t else a * (x - t)


def _relu_d(x, a, m, t):
    if x > t:
        return mp.mpf(1) if (x < m or m == mp.inf) else mp.mpf(0)
    return mp.mpf(a)


def _gelu(x, approx):
    if approx == 0:
        if abs(x) > 1e4:  # |f - relu(x)| < e^(-x^2/2): far below float64; mpmath's erfc overflows
            return x if x > 0 else mp.mpf(0)
        return x / 2 * mp.erfc(-x / mp.sqrt(2))
    return x / 2 * (1 + mp.tanh(mp.sqrt(2 / mp.pi) * (x + mp.mpf("0.044715") * x ** 3)))


def _gelu_d(x, approx):
    if approx == 0:
        if abs(x) > 1e4:
            return mp.mpf(1) if x > 0 else mp.mpf(0)
        return mp.erfc(-x / mp.sqrt(2)) / 2 + x * mp.exp(-x * x / 2) / mp.sqrt(2 * mp.pi)
    c, k = mp.sqrt(2 / mp.pi), mp.mpf("0.044715")
    u = c * (x + k * x ** 3)
    return (1 + mp.tanh(u)) / 2 + x / 2 * mp.sech(u) ** 2 * c * (1 + 3 * k * x * x)


def _softplus(x, b, t):
    return x if b * x > t else mp.log1p(mp.exp(b * x)) / b


def _softplus_d(x, b, t):
    return mp.mpf(1) if b * x > t else _sig(b * x)


def _mish(x):
    return x * mp.tanh(mp.log1p(mp.exp(x)))


def _mish_d(x):
    sp = mp.log1p(mp.exp(x))
    return mp.tanh(sp) + x * mp.sech(sp) ** 2 * _sig(x)


def _step(cond, a, b):
    return mp.mpf(a) if cond else mp.mpf(b)


#: name -> (f(x, *params), f'(x, *params)) on finite mpmath x
REFS = {
    "relu": (_relu, _relu_d),
    "leaky_relu": (lambda x, a: x if x > 0 else a * x, lambda x, a: _step(x > 0, 1, a)),
    "relu6": (lambda x: min(max(x, mp.mpf(0)), mp.mpf(6)), lambda x: _step(0 < x < 6, 1, 0)),
    "hardtanh": (lambda x, lo, hi: min(max(x, mp.mpf(lo)), mp.mpf(hi)),
                 lambda x, lo, hi: _step(lo < x < hi, 1, 0)),
    "threshold": (lambda x, t, v: x if x > t else mp.mpf(v), lambda x, t, v: _step(x > t, 1, 0)),
    "elu": (lambda x, a: x if x > 0 else a * mp.expm1(x), lambda x, a: mp.mpf(1) if x > 0 else a * mp.exp(x)),
    "celu": (lambda x, a: x if x > 0 else a * mp.expm1(x / a),
             lambda x, a: mp.mpf(1) if x > 0 else mp.exp(x / a)),
    "selu": (lambda x: SELU_SCALE * (x if x > 0 else SELU_ALPHA * mp.expm1(x)),
             lambda x: SELU_SCALE * (1 if x > 0 else SELU_ALPHA * mp.exp(x))),
    "gelu": (_gelu, _gelu_d),
    "silu": (lambda x: x * _sig(x), lambda x: _sig(x) * (1 + x * (1 - _sig(x)))),
    "mish": (_mish, _mish_d),
    # PyTorch 2.13's one-sided choices at the kinks: hardswish'(-3) = 0, hardswish'(3) = 1
    "hardswish": (lambda x: mp.mpf(0) if x <= -3 else (x if x >= 3 else x * (x + 3) / 6),
                  lambda x: mp.mpf(0) if x <= -3 else (mp.mpf(1) if x >= 3 else (2 * x + 3) / 6)),
    "hardsigmoid": (lambda x: mp.mpf(0) if x <= -3 else (mp.mpf(1) if x >= 3 else (x + 3) / 6),
                    lambda x: _step(-3 < x < 3, mp.mpf(1) / 6, 0)),
    "sigmoid": (_sig, lambda x: _sig(x) * _sig(-x)),
    "tanh": (mp.tanh, lambda x: mp.sech(x) ** 2),
    "softsign": (lambda x: x / (1 + abs(x)), lambda x: 1 / (1 + abs(x)) ** 2),
    "softplus": (_softplus, _softplus_d),
}

#: where the limits at +-inf are taken: far beyond float64's range, where every activation here has
#: reached its limit to far more digits than float64 holds (mpmath's exponents are unbounded)
FAR = mp.mpf(10) ** 400


def evaluate(name, x, params, backward=False):
    """The reference at float64 points ``x`` (NaN stays NaN, +-inf gives the limits), as float64.

    The exact value is rounded to float64 once; callers round again to float32 where needed (double
    rounding can move a float32 result by one ulp at most in rare ties, which the ulp bounds absorb).
    """
    f = REFS[name][1 if backward else 0]
    mparams = [mp.mpf(p) if np.isfinite(p) else (mp.inf if p > 0 else -mp.inf) for p in params]
    out = np.empty(np.shape(x), dtype=np.float64)
    for i, v in enumerate(np.asarray(x, dtype=np.float64).ravel()):
        if np.isnan(v):
            out.flat[i] = np.nan
        elif np.isinf(v):
            out.flat[i] = float(f(FAR if v > 0 else -FAR, *mparams))
        else:
            out.flat[i] = float(f(mp.mpf(float(v)), *mparams))
    return out


def ulp_error(got, exact, dtype):
    """|got - exact| in units of the ulp of ``exact`` in ``dtype`` (exact is a float64 array).

    Equal values (including equal infinities and both-NaN) count 0; a mismatch of NaN or infinity
    counts inf. The ulp of 0 is the smallest subnormal, so a nonzero result where the exact value is
    0 is a large error, as it should be.
    """
    got = np.asarray(got, dtype=np.float64)
    exact = np.asarray(exact, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        exact = np.where(np.isinf(exact.astype(dtype)), exact.astype(dtype), exact)  # overflows dtype
        spacing = np.abs(np.spacing(exact.astype(dtype))).astype(np.float64)
        err = np.abs(got - exact) / spacing
    same = (got == exact) | (np.isnan(got) & np.isnan(exact))
    err = np.where(same, 0.0, err)
    return np.where(np.isnan(err) | ~(np.isfinite(got) == np.isfinite(exact)), np.where(same, 0.0, np.inf), err)


#: within this distance of a zero of f', errors count in ulps of NEAR_ZERO_SCALE (see :func:`scan`)
NEAR_ZERO_WIDTH = 0.125
NEAR_ZERO_SCALE = 0.5


def scan(act, kwargs, dtype, forward, backward, n_uniform=200):
    """Worst ulp errors of ``forward(x, **kwargs)`` and ``backward(ones, x, **kwargs)`` in ``dtype``
    over :func:`accuracy_grid.grid`, against this module's references.

    Returns ``{"forward": (ulps, x), "backward": (ulps, x)}``. Near an interior zero of the derivative
    (``act.derivative_zeros``) the derivative's error is counted in ulps of max(|f'|, 1/2), the size
    of the terms of f' that cancel there, and no fixed-precision evaluation keeps a relative accuracy.
    """
    from accuracy_grid import grid

    params = tuple(p.to_float(kwargs.get(p.name, p.default)) for p in act.params)
    x = grid(act.domain, [*act.kinks(*params), *act.derivative_zeros], dtype, n_uniform)
    x = np.concatenate([x, [-np.inf, np.inf]])
    xd = x.astype(dtype)
    out = {}
    for kind in ("forward", "backward"):
        exact = evaluate(act.name, x, params, backward=kind == "backward")
        got = backward(np.ones_like(xd), xd, **kwargs) if kind == "backward" else forward(xd, **kwargs)
        err = errors(act, x, got, exact, dtype, kind == "backward")
        i = int(np.argmax(err))
        out[kind] = (float(err[i]), float(x[i]))
    return out


def errors(act, x, got, exact, dtype, backward):
    """:func:`ulp_error` of ``got`` at inputs ``x`` against ``exact``, with :func:`scan`'s rule next to
    an interior zero of the derivative (``backward``): there in ulps of max(|f'|, 1/2)."""
    err = ulp_error(got, exact, dtype)
    if backward and act.derivative_zeros:
        near = np.zeros(np.shape(x), dtype=bool)
        for z in act.derivative_zeros:
            near |= np.abs(np.asarray(x, np.float64) - z) < NEAR_ZERO_WIDTH
        floor = np.maximum(np.abs(exact), NEAR_ZERO_SCALE)
        err_abs = err * np.abs(np.spacing(np.asarray(exact).astype(dtype))) \
            / np.abs(np.spacing(floor.astype(dtype)))
        err = np.where(near & np.isfinite(err_abs), err_abs, err)
    return err


def dense_float32_sample(n=1 << 17, seed=0):
    """Random float32 inputs: uniform over [-110, 110] (every exponent range of exp's float32 inputs,
    the subnormal results between -104 and -87 included) and log-uniform magnitudes 1e-30 .. 1e38."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(-110, 110, n // 2)
    g = np.exp(rng.uniform(np.log(1e-30), np.log(1e38), n - n // 2)) * rng.choice([-1.0, 1.0], n - n // 2)
    return np.concatenate([u, g]).astype(np.float32)
