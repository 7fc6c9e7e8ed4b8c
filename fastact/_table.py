"""The activation table: every elementwise activation defined once.

An entry holds the scalar forward ``f(x, *params)`` and derivative ``f'(x, *params, *backward_params)``
(Numba-compiled, called by every generated kernel: CPU loops, ufuncs, and later CUDA and C-ABI), the
parameter names and defaults, the kinks, and a float64 NumPy/SciPy reference of both, which the tests
use. Adding an activation is one ``_add(Activation(...))`` below; the public functions, ufuncs, tests
and benchmarks pick it up from :data:`ACTIVATIONS`.

Conventions every scalar function keeps (tests check them):

* NaN in gives NaN out, in the forward and in the derivative (so ``dy * f'(x)`` is NaN too);
* at a kink the derivative is the one PyTorch 2.13's autograd gives (the left derivative, except 0 at
  an upper cap -- ``max_value``, both ends of hardtanh/relu6/hardsigmoid -- and hardswish'(3) = 1),
  unless the caller passes ``subgradient=``; the tests compare every kink with PyTorch;
* at x = +-inf the result is the mathematical limit (``limits``), e.g. gelu(-inf) = 0, even where the
  formula gives -inf * 0;
* accuracy: within ``max_ulp`` ulps of the exact value over the whole range (tests/test_accuracy.py
  compares with 60-digit mpmath).
* float32 kernels evaluate the same functions in float64 and round once, except where an entry gives
  ``float32=`` variants: the same formulas in float32 arithmetic (every constant ``F32(...)``), for
  the activations where the float64 evaluation made fastact slower than PyTorch.
* the derivative returns ``f'(x)``; the kernels multiply by ``dy``.
"""

import math
import types
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from . import _math as fm
from ._math import F32, scalar

#: the ``float32=`` variants: FMA contraction as in the fast set, and inlined at the IR level (a helper
#: left as a call keeps the loop around it from vectorising)
_scalar32 = njit(cache=False, error_model="numpy", inline="always", fastmath={"contract"})

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
GELU_TANH_C = 0.044715


@dataclass(frozen=True)
class Param:
    """One scalar parameter of an activation.

    ``default`` is the public default; ``none_value`` is what ``None`` means (``max_value=None`` is
    +inf); ``choices`` maps string values to the float the kernels see (``approximate='tanh'`` -> 1).
    """
    name: str
    default: object
    doc: str = ""
    none_value: float = None
    choices: dict = None

    def to_float(self, value):
        if value is None:
            if self.none_value is None:
                raise TypeError(f"parameter {self.name!r} may not be None")
            return self.none_value
        if self.choices is not None:
            if not isinstance(value, str) or value not in self.choices:
                raise ValueError(f"{self.name} must be one of {sorted(self.choices)}, got {value!r}")
            return self.choices[value]
        return value


@dataclass(frozen=True)
class Activation:
    name: str
    forward: object              # njit scalar f(x, *params)
    derivative: object           # njit scalar f'(x, *params, *backward_params)
    reference: object            # float64 NumPy reference f(x, *params) on arrays
    reference_derivative: object  # float64 NumPy reference f'(x, *params, *backward_params)
    formula: str
    params: tuple = ()
    backward_params: tuple = ()
    kinks: object = lambda *p: ()   # kinks(*params) -> x values where f' jumps
    transcendental: bool = False  # evaluates exp/erf/tanh: compute-bound, not memory-bound
    #: ``(forward, derivative)`` written in float32 arithmetic, which the float32 kernels call instead
    #: of evaluating ``forward``/``derivative`` in float64 and rounding once: twice the SIMD lanes,
    #: for up to 2.5-3.5 float32 ulps instead of 1 (``max_ulp`` holds the measured bound); None for a
    #: direction that keeps the float64 evaluation
    float32: tuple = None
    aliases: tuple = ()
    citation: str = ""
    torch_name: str = None        # torch.nn.functional name, for the optional PyTorch comparisons
    torch_module: str = None      # torch.nn class name ("ReLU6", "SiLU"): also fastact.nn's module name
    # Benchmark baselines (fastact.benchmark), Python expressions evaluated with the defaults of every
    # parameter. NumPy: over float32 arrays x, dy and y (the preallocated output), with np and scipy in
    # scope; PyTorch: over tensors x, dy and y, with torch, F (torch.nn.functional) and aten
    # (torch.ops.aten) in scope.
    numpy_baseline: str = ""      # forward f(x), the NumPy formulation a user would write
    numpy_backward_baseline: str = ""  # backward dx(dy, x)
    numpy_out_baseline: str = ""  # forward into y; set only where NumPy has a one-pass out= form,
    #                               and then fastact's out= is benchmarked as well
    torch_baseline: str = ""      # forward of x; empty: F.<torch_name>(x)
    torch_backward_baseline: str = ""  # dx(dy, x, y = forward's output): the aten kernel autograd calls
    torch_out_baseline: str = ""  # forward of x into the preallocated tensor y
    domain: tuple = (-6.0, 6.0)   # where tests sample points
    #: ``limits(*params) -> ((f(-inf), f(+inf)), (f'(-inf), f'(+inf)))``: the mathematical limits, which
    #: the kernels return at +-inf (tests check both against mpmath far beyond the float range)
    limits: object = None
    #: interior zeros of f' (where f' changes sign smoothly): relative accuracy is impossible right
    #: there in any fixed precision, so within 1/8 of them errors count in ulps of 1/2 (docs/accuracy.md)
    derivative_zeros: tuple = ()
    #: worst error in ulps against 60-digit mpmath, {dtype name: (forward, backward)}, measured by
    #: ``bench/accuracy_report.py`` over dense grids (kinks, tails, subnormals) and enforced by the tests
    #: (a function of the parameters where they matter, e.g. GELU's ``approximate``)
    max_ulp: object = field(default_factory=lambda: {"float32": (1.0, 1.0), "float64": (2.0, 2.0)})

    extra: dict = field(default_factory=dict)

    def ulp_bounds(self, *params):
        """``{dtype name: (forward, backward)}``: the worst ulp errors the kernels are held to."""
        return self.max_ulp(*params) if callable(self.max_ulp) else self.max_ulp

    @property
    def param_names(self):
        return tuple(p.name for p in self.params)

    @property
    def nparams(self):
        return len(self.params)


ACTIVATIONS = {}


def _add(act):
    ACTIVATIONS[act.name] = act
    return act


def _nan_where(x, y):
    """Reference helper: NaN wherever x is NaN (the float64 references use np.where, which would not)."""
    return np.where(np.isnan(x), np.nan, y)


class _LazySpecial:
    """scipy.special, imported on first use: only the references use it, and it costs 0.2 s."""

    def __getattr__(self, name):
        import scipy.special
        return getattr(scipy.special, name)


sp = _LazySpecial()


def _ref_errstate(fn):
    def wrapped(*a):
        with np.errstate(all="ignore"):
            return fn(*a)
    return wrapped


# ------------------------------------------------------------------------------------------------ ReLU


@scalar
def relu_f(x, negative_slope, max_value, threshold):
    if x > threshold:
        return min(x, max_value)
    if x <= threshold:
        if negative_slope != 0:
            return negative_slope * (x - threshold)
        return 0.0  # not 0 * (x - threshold): that is NaN for x = -inf
    return x


@scalar
def relu_d(x, negative_slope, max_value, threshold, subgradient):
    # selects, not branches: on real data the sign of x is unpredictable. Without a cap (max_value
    # inf) the derivative at x = +inf is 1, as PyTorch's; with one, 0 from the cap on.
    d = (1.0 if (x < max_value or max_value == math.inf) else 0.0) if x > threshold else negative_slope
    at = negative_slope if subgradient != subgradient else subgradient
    d = at if x == threshold else d
    return d if x == x else x


@_ref_errstate
def _relu_ref(x, negative_slope, max_value, threshold):
    neg = np.where(x == -np.inf, -np.inf * np.sign(negative_slope) if negative_slope else 0.0,
                   negative_slope * (x - threshold))
    return _nan_where(x, np.where(x > threshold, np.minimum(x, max_value), neg))


@_ref_errstate
def _relu_dref(x, negative_slope, max_value, threshold, subgradient):
    at = negative_slope if np.isnan(subgradient) else subgradient
    d = np.where(x > threshold, np.where((x < max_value) | (max_value == np.inf), 1.0, 0.0),
                 np.where(x < threshold, negative_slope, at))
    return _nan_where(x, d)


_add(Activation(
    "relu", relu_f, relu_d, _relu_ref, _relu_dref,
    formula="min(x, max_value) if x > threshold else negative_slope * (x - threshold)",
    params=(Param("negative_slope", 0.0, "slope below the threshold (Keras' alpha)"),
            Param("max_value", None, "saturation value; None means no cap", none_value=math.inf),
            Param("threshold", 0.0, "values at or below it take the negative slope")),
    backward_params=(Param("subgradient", None, "derivative used at x == threshold; None means the "
                           "left derivative (negative_slope), as PyTorch", none_value=math.nan),),
    kinks=lambda a, m, t: (t, m), torch_name="relu", numpy_baseline="np.maximum(x, 0)",
    numpy_backward_baseline="dy * (x > 0)", numpy_out_baseline="np.maximum(x, 0, out=y)",
    torch_module="ReLU", torch_backward_baseline="aten.threshold_backward(dy, x, 0.0)",
    torch_out_baseline="torch.clamp_min(x, 0.0, out=y)",
    limits=lambda a, m, t: ((-math.inf * math.copysign(1.0, a) if a else 0.0, m), (a, 1.0 if m == math.inf else 0.0)),
    max_ulp={"float32": (2.0, 1.0), "float64": (1.0, 0.0)}))


@scalar
def leaky_relu_f(x, negative_slope):
    if x > 0:
        return x
    return negative_slope * x


@scalar
def leaky_relu_d(x, negative_slope):
    if x > 0:
        return 1.0
    if x <= 0:
        return negative_slope
    return x


@_ref_errstate
def _leaky_ref(x, a):
    return _nan_where(x, np.where(x > 0, x, a * x))


@_ref_errstate
def _leaky_dref(x, a):
    return _nan_where(x, np.where(x > 0, 1.0, a))


_add(Activation(
    "leaky_relu", leaky_relu_f, leaky_relu_d, _leaky_ref, _leaky_dref,
    formula="x if x > 0 else negative_slope * x",
    params=(Param("negative_slope", 0.01, "slope for x <= 0"),),
    kinks=lambda a: (0.0,), torch_name="leaky_relu", numpy_baseline="np.where(x > 0, x, 0.01 * x)",
    numpy_backward_baseline="np.where(x > 0, dy, 0.01 * dy)",
    numpy_out_baseline="np.maximum(x, 0.01 * x, out=y)", torch_module="LeakyReLU",
    torch_backward_baseline="aten.leaky_relu_backward(dy, x, 0.01, False)",
    torch_out_baseline="aten.leaky_relu.out(x, 0.01, out=y)",
    citation="Maas, Hannun & Ng (2013), Rectifier nonlinearities improve neural network acoustic models",
    limits=lambda a: ((-math.inf * math.copysign(1.0, a) if a else 0.0, math.inf), (a, 1.0)),
    max_ulp={"float32": (1.0, 0.5), "float64": (0.5, 0.0)}))


@scalar
def relu6_f(x):
    if x > 0:
        return min(x, 6.0)
    if x <= 0:
        return 0.0
    return x


@scalar
def relu6_d(x):
    if x > 0:
        return 1.0 if x < 6.0 else 0.0
    if x <= 0:
        return 0.0
    return x


_add(Activation(
    "relu6", relu6_f, relu6_d,
    _ref_errstate(lambda x: _nan_where(x, np.clip(x, 0.0, 6.0))),
    _ref_errstate(lambda x: _nan_where(x, ((x > 0) & (x < 6)).astype(float))),
    formula="min(max(x, 0), 6)", kinks=lambda: (0.0, 6.0), torch_name="relu6",
    numpy_baseline="np.clip(x, 0, 6)", domain=(-3.0, 9.0),
    numpy_backward_baseline="dy * ((x > 0) & (x < 6))", numpy_out_baseline="np.clip(x, 0, 6, out=y)",
    torch_module="ReLU6", torch_backward_baseline="aten.hardtanh_backward(dy, x, 0.0, 6.0)",
    torch_out_baseline="aten.hardtanh.out(x, 0.0, 6.0, out=y)",
    limits=lambda: ((0.0, 6.0), (0.0, 0.0)),
    max_ulp={"float32": (0.0, 0.0), "float64": (0.0, 0.0)}))


@scalar
def hardtanh_f(x, min_val, max_val):
    if x < min_val:
        return min_val
    if x > max_val:
        return max_val
    return x


@scalar
def hardtanh_d(x, min_val, max_val):
    if x > min_val and x < max_val:
        return 1.0
    if x <= min_val or x >= max_val:
        return 0.0
    return x


_add(Activation(
    "hardtanh", hardtanh_f, hardtanh_d,
    _ref_errstate(lambda x, lo, hi: _nan_where(x, np.clip(x, lo, hi))),
    _ref_errstate(lambda x, lo, hi: _nan_where(x, ((x > lo) & (x < hi)).astype(float))),
    formula="min(max(x, min_val), max_val)",
    params=(Param("min_val", -1.0, "lower end"), Param("max_val", 1.0, "upper end")),
    kinks=lambda lo, hi: (lo, hi), torch_name="hardtanh", numpy_baseline="np.clip(x, -1, 1)",
    domain=(-3.0, 3.0), numpy_backward_baseline="dy * ((x > -1) & (x < 1))",
    numpy_out_baseline="np.clip(x, -1, 1, out=y)", torch_module="Hardtanh",
    torch_backward_baseline="aten.hardtanh_backward(dy, x, -1.0, 1.0)",
    torch_out_baseline="aten.hardtanh.out(x, -1.0, 1.0, out=y)",
    limits=lambda lo, hi: ((lo, hi), (0.0, 0.0)),
    max_ulp={"float32": (0.0, 0.0), "float64": (0.0, 0.0)}))


@scalar
def threshold_f(x, threshold, value):
    if x <= threshold:
        return value
    return x


@scalar
def threshold_d(x, threshold, value):
    if x > threshold:
        return 1.0
    if x <= threshold:
        return 0.0
    return x


_add(Activation(
    "threshold", threshold_f, threshold_d,
    _ref_errstate(lambda x, t, v: _nan_where(x, np.where(x > t, x, v))),
    _ref_errstate(lambda x, t, v: _nan_where(x, (x > t).astype(float))),
    formula="x if x > threshold else value",
    params=(Param("threshold", 0.0, "values at or below it are replaced"),
            Param("value", 0.0, "the replacement")),
    kinks=lambda t, v: (t,), torch_name="threshold", numpy_baseline="np.where(x > 0, x, 0)",
    numpy_backward_baseline="dy * (x > 0)", numpy_out_baseline="np.maximum(x, 0, out=y)",
    torch_module="Threshold", torch_baseline="F.threshold(x, 0.0, 0.0)",
    torch_backward_baseline="aten.threshold_backward(dy, x, 0.0)",
    torch_out_baseline="aten.threshold.out(x, 0.0, 0.0, out=y)",
    limits=lambda t, v: ((v, math.inf), (0.0, 1.0)),
    max_ulp={"float32": (0.0, 0.0), "float64": (0.0, 0.0)}))


# ----------------------------------------------------------------------------- exponential family


@scalar
def elu_f(x, alpha):
    if x > 0:
        return x
    return alpha * fm.expm1(x)


@scalar
def elu_d(x, alpha):
    if x > 0:
        return 1.0
    return alpha * fm.exp(x)


_add(Activation(
    "elu", elu_f, elu_d,
    _ref_errstate(lambda x, a: np.where(x > 0, x, a * np.expm1(x))),
    _ref_errstate(lambda x, a: np.where(x > 0, 1.0, a * np.exp(x))),
    formula="x if x > 0 else alpha * (exp(x) - 1)",
    params=(Param("alpha", 1.0, "value approached as x -> -inf is -alpha"),),
    kinks=lambda a: (0.0,), transcendental=True, torch_name="elu",
    numpy_baseline="np.where(x > 0, x, np.expm1(x))",
    numpy_backward_baseline="np.where(x > 0, dy, dy * np.exp(x))", torch_module="ELU",
    torch_backward_baseline="aten.elu_backward(dy, 1.0, 1, 1, False, x)",
    citation="Clevert, Unterthiner & Hochreiter (2016), arXiv:1511.07289",
    limits=lambda a: ((-a, math.inf), (0.0, 1.0))))


@scalar
def celu_f(x, alpha):
    if x > 0:
        return x
    return alpha * fm.expm1(x / alpha)


@scalar
def celu_d(x, alpha):
    if x > 0:
        return 1.0
    return fm.exp(x / alpha)


_add(Activation(
    "celu", celu_f, celu_d,
    _ref_errstate(lambda x, a: np.where(x > 0, x, a * np.expm1(x / a))),
    _ref_errstate(lambda x, a: np.where(x > 0, 1.0, np.exp(x / a))),
    formula="x if x > 0 else alpha * (exp(x / alpha) - 1)",
    params=(Param("alpha", 1.0, "scale of the negative part"),),
    kinks=lambda a: (0.0,), transcendental=True, torch_name="celu",
    numpy_baseline="np.where(x > 0, x, np.expm1(x))",
    numpy_backward_baseline="np.where(x > 0, dy, dy * np.exp(x))", torch_module="CELU",
    torch_backward_baseline="aten.elu_backward(dy, 1.0, 1, 1.0, False, x)",
    citation="Barron (2017), arXiv:1704.07483",
    limits=lambda a: ((-a, math.inf), (0.0, 1.0))))


@scalar
def selu_f(x):
    if x > 0:
        return SELU_SCALE * x
    return (SELU_SCALE * SELU_ALPHA) * fm.expm1(x)


@scalar
def selu_d(x):
    if x > 0:
        return SELU_SCALE
    return (SELU_SCALE * SELU_ALPHA) * fm.exp(x)


_add(Activation(
    "selu", selu_f, selu_d,
    _ref_errstate(lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(x))),
    _ref_errstate(lambda x: SELU_SCALE * np.where(x > 0, 1.0, SELU_ALPHA * np.exp(x))),
    formula="scale * (x if x > 0 else alpha * (exp(x) - 1)), alpha = 1.6733, scale = 1.0507",
    kinks=lambda: (0.0,), transcendental=True, torch_name="selu",
    numpy_baseline="1.0507 * np.where(x > 0, x, 1.6733 * np.expm1(x))",
    numpy_backward_baseline="dy * np.where(x > 0, 1.0507, 1.0507 * 1.6733 * np.exp(x))",
    torch_module="SELU",
    torch_backward_baseline="aten.elu_backward(dy, 1.6732632423543772, 1.0507009873554805, 1, False, x)",
    citation="Klambauer et al. (2017), Self-normalizing neural networks, arXiv:1706.02515",
    limits=lambda: ((-SELU_SCALE * SELU_ALPHA, math.inf), (0.0, SELU_SCALE)),
    max_ulp={"float32": (1.0, 1.0), "float64": (3.0, 3.0)}))


@scalar
def _erfc_scaled_arg(x):
    """erfc(-x / sqrt(2)), with the rounding of -x / sqrt(2) corrected to first order in float64.

    In the left tail erfc(z) falls like exp(-z^2), so the argument's rounding error (half an ulp of z)
    becomes a relative error of ~2 z^2 ulps: 47 float64 ulps at x = -10.7. The exact argument is
    z + dz with dz from an error-free product, and erfc(z + dz) = erfc(z) - dz * 2/sqrt(pi) e^(-z^2).
    The fast (float32) variant skips it: there the error is far below a float32 ulp.
    """
    z = -x * fm.SQRT_HALF
    e = fm.erfc(z)
    if fm.PRECISE:
        if x < -2.0 and x > -40.0:  # below -40 the result is 0 in float64 anyway
            dz = -(fm.two_prod_err(x, fm.SQRT_HALF) + x * fm.SQRT_HALF_LO)
            e = e - dz * fm.TWO_OVER_SQRT_PI * fm.exp(-z * z)
    return e


@scalar
def _gauss_kernel(x):
    """exp(-x^2 / 2), with the rounding of x^2 corrected in float64 (its error, amplified by x^2 / 2,
    would cost ~50 float64 ulps at |x| = 10)."""
    h = x * x
    g = fm.exp(-0.5 * h)
    if fm.PRECISE:
        if abs(x) > 2.0 and abs(x) < 40.0:
            g = g * (1.0 - 0.5 * fm.two_prod_err(x, x))
    return g


@scalar
def gelu_f(x, approximate):
    if approximate == 0:
        e = _erfc_scaled_arg(x)
        # the limit 0 at x = -inf (-inf * 0 would be NaN); e is NaN for NaN x, so NaN passes
        return 0.5 * x * e if e != 0 else -0.0
    # 0.5 * (1 + tanh(u)) == sigmoid(2u): no cancellation for negative x. x^3 overflows to -inf
    # before u does, and sigmoid(-inf) = 0 again gives -inf * 0: the select keeps the limit 0.
    u = fm.SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x)
    s = fm.sigmoid(2.0 * u)
    return x * s if s != 0 else -0.0


@scalar
def gelu_d(x, approximate):
    if approximate == 0:
        # Phi(x) + x phi(x); x * phi(x) is inf * 0 at +-inf, where the limits 1 and 0 are selected
        d = 0.5 * _erfc_scaled_arg(x) + x * fm.INV_SQRT_2PI * _gauss_kernel(x)
        return d if abs(x) != math.inf else (1.0 if x > 0 else 0.0)
    u = fm.SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x)
    s = fm.sigmoid(2.0 * u)  # 0.5 * (1 + tanh(u))
    # s (1 - s) = sigmoid(2u) sigmoid(-2u): no cancellation where s is close to 1
    d = s + x * (2.0 * s * fm.sigmoid(-2.0 * u)) * fm.SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_C * x * x)
    # the limits 0 and 1 at -inf and +inf (and beyond x^3's overflow, where the formula is inf * 0)
    d = d if abs(x) < 1e100 else (1.0 if x > 0 else 0.0)
    return d if x == x else x


@_ref_errstate
def _gelu_ref(x, approximate):
    if approximate == 0:
        return 0.5 * x * sp.erfc(-x / np.sqrt(2.0))
    u = np.sqrt(2.0 / np.pi) * (x + GELU_TANH_C * x ** 3)
    return 0.5 * x * (1.0 + np.tanh(u))


@_ref_errstate
def _gelu_dref(x, approximate):
    if approximate == 0:
        return 0.5 * sp.erfc(-x / np.sqrt(2.0)) + x * np.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi)
    c = np.sqrt(2.0 / np.pi)
    t = np.tanh(c * (x + GELU_TANH_C * x ** 3))
    d = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * GELU_TANH_C * x * x)
    return np.where(np.abs(x) < 1e100, d, np.where(x > 0, 1.0, 0.0))  # inf * 0 beyond x^3's overflow


_add(Activation(
    "gelu", gelu_f, gelu_d, _gelu_ref, _gelu_dref,
    formula="x * Phi(x) = 0.5 * x * erfc(-x / sqrt(2)); approximate='tanh': "
            "0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))",
    params=(Param("approximate", "none", "'none' (exact, erf) or 'tanh'",
                  choices={"none": 0.0, "tanh": 1.0}),),
    transcendental=True, torch_name="gelu",
    numpy_baseline="0.5 * x * scipy.special.erfc(-x / np.sqrt(2))",
    numpy_backward_baseline="dy * (0.5 * scipy.special.erfc(-0.7071067811865476 * x)"
                            " + 0.3989422804014327 * x * np.exp(-0.5 * x * x))",
    torch_module="GELU", torch_backward_baseline="aten.gelu_backward(dy, x)",
    citation="Hendrycks & Gimpel (2016), Gaussian error linear units, arXiv:1606.08415",
    limits=lambda approximate: ((0.0, math.inf), (0.0, 1.0)), derivative_zeros=(-0.7517915246935645, -0.7524614220710163),
    max_ulp=lambda approximate: ({"float32": (2.5, 6.5), "float64": (5.0, 10.0)} if approximate == 0
                                  else {"float32": (1.0, 1.0), "float64": (40.0, 60.0)})))


@scalar
def silu_f(x):
    s = fm.sigmoid(x)
    return x * s if s != 0 else s  # the limit 0 at x = -inf (x * s would be -inf * 0 = NaN)


@scalar
def silu_d(x):
    # s = sigmoid(x) and c = 1 - s = sigmoid(-x) from one exp: 1 - s itself cancels for large x
    # (5 float64 ulps at x = 10)
    e = fm.exp(-abs(x))
    r = 1.0 / (1.0 + e)
    s = r if x >= 0 else e * r
    c = e * r if x >= 0 else r
    d = s * (1.0 + x * c) if s != 0 else s
    return d if x != math.inf else 1.0  # the limit (the formula is inf * 0 there)


@_scalar32
def silu_f32(x):
    # x * e / (1 + e), e = exp(-|x|) = a * b applied last: for x < -87.3 e is subnormal (few bits)
    # while x * e is still a normal float32
    a, b = fm.fexpf_parts(-abs(x))
    r = F32(1.0) / (F32(1.0) + a * b)
    v = x * r if x >= 0 else (x * a) * r * b
    return v if (a != 0 or x >= 0) else F32(0.0)  # the limit 0 where e is 0 (-inf * 0 at x = -inf)


@_ref_errstate
def _silu_ref(x):
    s = sp.expit(x)
    return np.where(s == 0, 0.0, x * s)


@_ref_errstate
def _silu_dref(x):
    s = sp.expit(x)
    return np.where(s == 0, 0.0, s * (1.0 + x * (1.0 - s)))


_add(Activation(
    "silu", silu_f, silu_d, _silu_ref, _silu_dref, formula="x * sigmoid(x)",
    transcendental=True, aliases=("swish",), torch_name="silu", numpy_baseline="x / (1 + np.exp(-x))",
    numpy_backward_baseline="dy * (s := 1 / (1 + np.exp(-x))) * (1 + x * (1 - s))",
    torch_module="SiLU", torch_backward_baseline="aten.silu_backward(dy, x)",
    citation="Elfwing, Uchibe & Doya (2018), arXiv:1702.03118; Ramachandran et al. (2017), "
             "arXiv:1710.05941",
    limits=lambda: ((0.0, math.inf), (0.0, 1.0)), derivative_zeros=(-1.2784645427610738,),
    # the derivative stays in float64: in float32 the cancellation in 1 + x (1 - s) next to its zero
    # turns the 1-2 ulps of 1 - s into 10 (x = -1.417)
    float32=(silu_f32, None), max_ulp={"float32": (3.5, 1.0), "float64": (3.0, 10.0)}))


@scalar
def mish_f(x):
    # tanh(softplus(x)) = n (n + 2) / (n (n + 2) + 2) with n = e^x: one exp, no log, no tanh.
    if x > 20.0:
        return x
    n = fm.exp(x)
    a = n * (n + 2.0)
    return x * a / (a + 2.0) if a != 0 else a


@scalar
def mish_d(x):
    if x > 20.0:
        return 1.0
    n = fm.exp(x)
    a = n * (n + 2.0)
    if a == 0:
        return a
    t = a / (a + 2.0)                       # tanh(softplus(x))
    sech2 = (4.0 * a + 4.0) / ((a + 2.0) * (a + 2.0))  # 1 - t^2
    return t + x * sech2 * (n / (1.0 + n))   # d softplus / dx = sigmoid(x)


@_ref_errstate
def _mish_ref(x):
    return np.where(x == -np.inf, 0.0, x * np.tanh(np.logaddexp(0.0, x)))


@_ref_errstate
def _mish_dref(x):
    t = np.tanh(np.logaddexp(0.0, x))
    # the limits at +-inf (1 and 0): the formula gives inf * 0 = NaN at +inf
    return np.where(x == -np.inf, 0.0, np.where(x == np.inf, 1.0, t + x * (1.0 - t * t) * sp.expit(x)))


_add(Activation(
    "mish", mish_f, mish_d, _mish_ref, _mish_dref, formula="x * tanh(softplus(x))",
    transcendental=True, torch_name="mish", numpy_baseline="x * np.tanh(np.log1p(np.exp(x)))",
    numpy_backward_baseline="dy * ((t := np.tanh(np.log1p(np.exp(x))))"
                            " + x * (1 - t * t) / (1 + np.exp(-x)))",
    torch_module="Mish", torch_backward_baseline="aten.mish_backward(dy, x)",
    citation="Misra (2019), Mish: a self regularized non-monotonic activation function, "
             "arXiv:1908.08681",
    limits=lambda: ((0.0, math.inf), (0.0, 1.0)), derivative_zeros=(-1.1924312145154952,),
    max_ulp={"float32": (1.0, 1.0), "float64": (4.0, 8.0)}))


#: 1/6 as a factor: a division by 6 costs as much as the whole memory traffic of a float32 hardswish
#: (a float64 vdivpd per element); the rounding of the constant adds at most half a float64 ulp
SIXTH = 1.0 / 6.0


@scalar
def hardswish_f(x):
    if x <= -3.0:
        return 0.0
    if x >= 3.0:
        return x
    return x * (x + 3.0) * SIXTH  # x + 3 is exact near -3 (Sterbenz), so no cancellation there


@scalar
def hardswish_d(x):
    # PyTorch 2.13's one-sided choices: 0 at x = -3, 1 at x = 3
    if x <= -3.0:
        return 0.0
    if x < 3.0:
        return (2.0 * x + 3.0) * SIXTH  # not x / 3 + 0.5, which cancels near its zero at x = -1.5
    if x >= 3.0:
        return 1.0
    return x


@_scalar32
def hardswish_f32(x):
    if x <= F32(-3.0):
        return F32(0.0)
    if x >= F32(3.0):
        return x
    return x * (x + F32(3.0)) * F32(SIXTH)


@_scalar32
def hardswish_d32(x):
    if x <= F32(-3.0):
        return F32(0.0)
    if x < F32(3.0):
        return (F32(2.0) * x + F32(3.0)) * F32(SIXTH)
    if x >= F32(3.0):
        return F32(1.0)
    return x


_add(Activation(
    "hardswish", hardswish_f, hardswish_d,
    # piecewise: x * clip(x + 3, 0, 6) / 6 is -inf * 0 = NaN at x = -inf and overflows for x > max / 6
    _ref_errstate(lambda x: _nan_where(x, np.where(x <= -3.0, 0.0, np.where(x >= 3.0, x,
                                                                             x * (x + 3.0) / 6.0)))),
    _ref_errstate(lambda x: _nan_where(x, np.where(x <= -3, 0.0, np.where(x < 3, (2 * x + 3) / 6, 1.0)))),
    formula="x * relu6(x + 3) / 6", kinks=lambda: (-3.0, 3.0), torch_name="hardswish",
    numpy_baseline="x * np.clip(x + 3, 0, 6) / 6",
    numpy_backward_baseline="dy * np.where(x <= -3, 0, np.where(x <= 3, x / 3 + 0.5, 1))",
    torch_module="Hardswish", torch_backward_baseline="aten.hardswish_backward(dy, x)",
    citation="Howard et al. (2019), Searching for MobileNetV3, arXiv:1905.02244",
    limits=lambda: ((0.0, math.inf), (0.0, 1.0)), float32=(hardswish_f32, hardswish_d32),
    max_ulp={"float32": (2.5, 1.5), "float64": (2.0, 2.0)}))


@scalar
def hardsigmoid_f(x):
    if x <= -3.0:
        return 0.0
    if x >= 3.0:
        return 1.0
    return (x + 3.0) * SIXTH  # not x / 6 + 0.5, which cancels just above x = -3


@scalar
def hardsigmoid_d(x):
    if x > -3.0 and x < 3.0:
        return SIXTH
    if x <= -3.0 or x >= 3.0:
        return 0.0
    return x


@_scalar32
def hardsigmoid_f32(x):
    if x <= F32(-3.0):
        return F32(0.0)
    if x >= F32(3.0):
        return F32(1.0)
    return (x + F32(3.0)) * F32(SIXTH)


_add(Activation(
    "hardsigmoid", hardsigmoid_f, hardsigmoid_d,
    _ref_errstate(lambda x: _nan_where(x, np.clip((x + 3.0) / 6.0, 0.0, 1.0))),
    _ref_errstate(lambda x: _nan_where(x, np.where((x > -3) & (x < 3), 1.0 / 6.0, 0.0))),
    formula="relu6(x + 3) / 6", kinks=lambda: (-3.0, 3.0), torch_name="hardsigmoid",
    numpy_baseline="np.clip(x / 6 + 0.5, 0, 1)",
    numpy_backward_baseline="np.where((x > -3) & (x < 3), dy / 6, 0)", torch_module="Hardsigmoid",
    torch_backward_baseline="aten.hardsigmoid_backward(dy, x)",
    # (its derivative, a constant or 0, runs as fast evaluated in float64: bench/float32_paths.py)
    limits=lambda: ((0.0, 1.0), (0.0, 0.0)), float32=(hardsigmoid_f32, None),
    max_ulp={"float32": (1.5, 1.0), "float64": (2.0, 2.0)}))


@scalar
def sigmoid_f(x):
    return fm.sigmoid(x)


@scalar
def sigmoid_d(x):
    # e / (1 + e)^2 with e = exp(-|x|): s * (1 - s) cancels where s is close to 1 (0 from x = 37 on)
    e = fm.exp(-abs(x))
    return e / ((1.0 + e) * (1.0 + e))


@_scalar32
def sigmoid_f32(x):
    # e = exp(-|x|) <= 1 and the result 1 / (1 + e) or e / (1 + e): 1 / (1 + exp(-x)) would overflow
    # exp(-x) to inf below x = -88.7, where the sigmoid is still a nonzero float32
    e = fm.fexpf(-abs(x))
    r = F32(1.0) / (F32(1.0) + e)
    return r if x >= 0 else e * r


@_scalar32
def sigmoid_d32(x):
    e = fm.fexpf(-abs(x))
    return e / (F32(1.0) + e * (F32(2.0) + e))  # (1 + e)^2 with one rounding fewer


_add(Activation(
    "sigmoid", sigmoid_f, sigmoid_d, _ref_errstate(lambda x: sp.expit(x)),
    _ref_errstate(lambda x: sp.expit(x) * (1.0 - sp.expit(x))),
    formula="1 / (1 + exp(-x))", transcendental=True, torch_name="sigmoid",
    numpy_baseline="1 / (1 + np.exp(-x))",
    numpy_backward_baseline="dy * (s := 1 / (1 + np.exp(-x))) * (1 - s)", torch_module="Sigmoid",
    torch_backward_baseline="aten.sigmoid_backward(dy, y)",
    limits=lambda: ((0.0, 1.0), (0.0, 0.0)), float32=(sigmoid_f32, sigmoid_d32),
    max_ulp={"float32": (3.0, 2.5), "float64": (3.0, 4.0)}))


@scalar
def tanh_f(x):
    return fm.tanh(x)


@scalar
def tanh_d(x):
    # sech^2 x = 4e / (1 + e)^2 with e = exp(-2|x|): 1 - tanh^2 cancels for |x| > 1 (0 from 19 on)
    e = fm.exp(-2.0 * abs(x))
    return 4.0 * e / ((1.0 + e) * (1.0 + e))


@_scalar32
def tanh_d32(x):
    # e = exp(-2|x|) = a * b, with b applied last: from |x| = 43.7 on e is subnormal (few bits) while
    # 4e is not; (1 + e)^2 as 1 + e (2 + e), one rounding fewer
    a, b = fm.fexpf_parts(F32(-2.0) * abs(x))
    e = a * b
    return F32(4.0) * a / (F32(1.0) + e * (F32(2.0) + e)) * b


_add(Activation(
    "tanh", tanh_f, tanh_d, _ref_errstate(np.tanh), _ref_errstate(lambda x: 1.0 - np.tanh(x) ** 2),
    formula="tanh(x)", transcendental=True, torch_name="tanh", numpy_baseline="np.tanh(x)",
    numpy_backward_baseline="dy * (1 - (t := np.tanh(x)) * t)", torch_module="Tanh",
    torch_backward_baseline="aten.tanh_backward(dy, y)",
    limits=lambda: ((-1.0, 1.0), (0.0, 0.0)), float32=(None, tanh_d32),
    max_ulp={"float32": (1.0, 2.5), "float64": (3.0, 3.0)}))


@scalar
def softsign_f(x):
    r = x / (1.0 + abs(x))
    return math.copysign(1.0, x) if abs(x) == math.inf else r  # a select: the loop still vectorises


@scalar
def softsign_d(x):
    r = 1.0 / (1.0 + abs(x))
    return r * r  # not 1 / a^2: a^2 overflows for |x| > 1e154 where the result is still representable


_add(Activation(
    "softsign", softsign_f, softsign_d,
    _ref_errstate(lambda x: np.where(np.isinf(x), np.sign(x), x / (1.0 + np.abs(x)))),
    _ref_errstate(lambda x: 1.0 / (1.0 + np.abs(x)) ** 2),
    formula="x / (1 + |x|)", torch_name="softsign", numpy_baseline="x / (1 + np.abs(x))",
    numpy_backward_baseline="dy / (1 + np.abs(x)) ** 2", torch_module="Softsign",
    torch_backward_baseline="dy / (1 + x.abs()) ** 2",  # composite in PyTorch too
    limits=lambda: ((-1.0, 1.0), (0.0, 0.0)),
    max_ulp={"float32": (1.0, 1.0), "float64": (2.0, 3.0)}))


@scalar
def softplus_f(x, beta, threshold):
    z = beta * x
    if z > threshold:
        return x
    # max(z, 0) + log1p(exp(-|z|)): exp never overflows, so a threshold of inf still gives ~x
    return ((z if z > 0 else 0.0) + fm.log1p(fm.exp(-abs(z)))) / beta


@scalar
def softplus_d(x, beta, threshold):
    z = beta * x
    if z > threshold:
        return 1.0
    return fm.sigmoid(z)


_add(Activation(
    "softplus", softplus_f, softplus_d,
    _ref_errstate(lambda x, b, t: np.where(b * x > t, x, np.logaddexp(0.0, b * x) / b)),
    _ref_errstate(lambda x, b, t: np.where(b * x > t, 1.0, sp.expit(b * x))),
    formula="log(1 + exp(beta * x)) / beta, or x where beta * x > threshold",
    params=(Param("beta", 1.0, "sharpness"),
            Param("threshold", 20.0, "above beta * x > threshold the function is linear")),
    kinks=lambda b, t: (t / b,), transcendental=True, torch_name="softplus",
    numpy_baseline="np.log1p(np.exp(x))", numpy_backward_baseline="dy / (1 + np.exp(-x))",
    torch_module="Softplus", torch_backward_baseline="aten.softplus_backward(dy, x, 1.0, 20.0)",
    limits=lambda b, t: ((0.0, math.inf), (0.0, 1.0))))

#: names of the activations, in table order (tests and benchmarks parametrise over this)
NAMES = tuple(ACTIVATIONS)
#: every public spelling, aliases included -> table entry
BY_NAME = dict(ACTIVATIONS)
for _a in ACTIVATIONS.values():
    for _alias in _a.aliases:
        BY_NAME[_alias] = _a


_fast = {}


def fast_variant(fn):
    """``fn`` (a table function) recompiled with ``fm`` bound to the fast set, ``fastact._math.FAST``.

    The float32 kernels of transcendental activations call it on float64 arguments and round the
    result once to float32: every ``fm.exp``/``fm.erfc``/... in the body becomes the vectorisable
    polynomial, and all arithmetic stays in float64 (no float32/float64 mixing inside).
    """
    fast = _fast.get(fn)
    if fast is None:
        py = fn.py_func
        glb = dict(py.__globals__, fm=fm.FAST)
        # helpers of this module that the body calls (GELU's _erfc_scaled_arg, ...) get theirs too
        for name in py.__code__.co_names:
            g = glb.get(name)
            if g is not fn and getattr(getattr(g, "py_func", None), "__module__", None) == __name__:
                glb[name] = fast_variant(g)
        clone = types.FunctionType(py.__code__, glb, py.__name__ + "_fast", py.__defaults__,
                                   py.__closure__)
        clone.__qualname__ = py.__qualname__ + "_fast"
        # inlined at the IR level: a big body (erfc, log1p) would otherwise stay an opaque call that
        # keeps LLVM from vectorising the loop around it
        fast = _fast[fn] = njit(clone, cache=False, error_model="numpy", inline="always",
                                  fastmath={"contract"})
    return fast


def get(name):
    """The table entry for an activation name or alias; ValueError naming the valid ones otherwise."""
    try:
        return BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(BY_NAME)}") from None
