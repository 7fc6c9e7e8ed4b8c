"""Elementwise activations, generated from the activation table.

Every forward and backward is compared with the table's independent float64 NumPy/SciPy reference
(tolerances in conftest.TOL), every backward with central differences (``fastact.gradcheck``), every kink
with the documented derivative, and the NumPy-ufunc conventions (dtypes, layouts, ``out=``,
broadcasting) with what NumPy itself does.
"""

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastact
from fastact import config, table, ufuncs
from fastact.table import ENTRIES, BY_NAME

from conftest import (DTYPES, NAMES, assert_close, awkward_arrays, default_kwargs, finite_kinks, floats_of,
                      param_cases, public, reference, reference_backward, sample_points, tol, torch_or_skip)

CASES = param_cases()


def _grid(act, kwargs, dtype, n=64, seed=0):
    """Random points over the domain plus every kink and its float neighbours."""
    x = sample_points(act, kwargs, n, np.float64, seed=seed)
    extra = []
    for k in finite_kinks(act, kwargs):
        kd = dtype.type(k)
        extra += [kd, np.nextafter(kd, dtype.type(-np.inf)), np.nextafter(kd, dtype.type(np.inf))]
    return np.concatenate([x.astype(dtype), np.array(extra, dtype=dtype)]).astype(dtype)


# ------------------------------------------------------------------------------------ against reference


@pytest.mark.parametrize("name,kwargs", CASES)
def test_forward_matches_reference(name, kwargs, dtype):
    act = ENTRIES[name]
    f, _ = public(name)
    x = _grid(act, kwargs, dtype)
    y = f(x, **kwargs)
    assert isinstance(y, np.ndarray) and y.shape == x.shape
    assert_close(y, reference(act, x, kwargs), dtype, err_msg=f"{name}{kwargs}")


@pytest.mark.parametrize("name,kwargs", CASES)
def test_backward_matches_reference(name, kwargs, dtype):
    act = ENTRIES[name]
    _, fb = public(name)
    x = _grid(act, kwargs, dtype, seed=1)
    dy = np.random.default_rng(2).standard_normal(x.shape).astype(dtype)
    dx = fb(dy, x, **kwargs)
    assert dx.shape == x.shape
    assert_close(dx, reference_backward(act, dy, x, kwargs), dtype, "backward", err_msg=f"{name}{kwargs}")


@pytest.mark.parametrize("name,kwargs", CASES)
def test_backward_by_finite_differences(name, kwargs):
    act = ENTRIES[name]
    f, fb = public(name)
    x = sample_points(act, kwargs, 24, np.float64, seed=3, kink_gap=1e-3).reshape(-1, 1)
    assert x.size >= 12
    assert fastact.gradcheck(lambda v: f(v, **kwargs), lambda dy, v: fb(dy, v, **kwargs), (x,))


@pytest.mark.parametrize("name,kwargs", CASES)
def test_derivative_at_kinks_is_the_documented_one(name, kwargs, dtype):
    act = ENTRIES[name]
    _, fb = public(name)
    kinks = finite_kinks(act, kwargs)
    if not kinks:
        pytest.skip("smooth everywhere")
    x = np.array(kinks, dtype=dtype)
    dy = np.full(x.shape, 1.75, dtype=dtype)
    assert_close(fb(dy, x, **kwargs), reference_backward(act, dy, x, kwargs), dtype, "backward")


# Independent of the table's references: the documented kink values (PyTorch 2.13's), written out by hand.
KINK_CASES = [
    ("relu", {}, 0.0, 0.0),                                      # ReLU'(0) = 0, as PyTorch
    ("relu", dict(max_value=6.0), 6.0, 0.0),                     # 0 at the cap
    ("relu", dict(negative_slope=0.1, max_value=6.0, threshold=-0.5), -0.5, 0.1),  # left derivative
    ("relu", dict(negative_slope=0.1, max_value=6.0, threshold=-0.5), 6.0, 0.0),
    ("leaky_relu", {}, 0.0, 0.01),                               # LeakyReLU'(0) = slope
    ("leaky_relu", dict(negative_slope=0.2), 0.0, 0.2),
    ("relu6", {}, 0.0, 0.0),
    ("relu6", {}, 6.0, 0.0),
    ("hardtanh", {}, -1.0, 0.0),
    ("hardtanh", {}, 1.0, 0.0),
    ("hardtanh", dict(min_val=-2.0, max_val=0.5), 0.5, 0.0),
    ("threshold", dict(threshold=0.5, value=-3.0), 0.5, 0.0),
    ("elu", dict(alpha=0.5), 0.0, 0.5),                          # left: alpha * e^0
    ("celu", dict(alpha=2.0), 0.0, 1.0),                         # left: e^(0 / alpha)
    ("selu", {}, 0.0, 1.0507009873554805 * 1.6732632423543772),
    ("hardswish", {}, -3.0, 0.0),                                # PyTorch 2.13's one-sided values
    ("hardswish", {}, 3.0, 1.0),
    ("hardsigmoid", {}, -3.0, 0.0),
    ("hardsigmoid", {}, 3.0, 0.0),
    ("softplus", {}, 20.0, 1.0 / (1.0 + np.exp(-20.0))),        # left: sigmoid(threshold)
    ("softplus", dict(beta=2.0, threshold=5.0), 2.5, 1.0 / (1.0 + np.exp(-5.0))),
]


@pytest.mark.parametrize("name,kwargs,x0,expected", KINK_CASES)
def test_kink_values_by_hand(name, kwargs, x0, expected, dtype):
    _, fb = public(name)
    dx = fb(np.full(3, 2.0, dtype), np.full(3, x0, dtype), **kwargs)
    assert_close(dx, np.full(3, 2.0 * expected), dtype, "backward")


@pytest.mark.parametrize("kwargs", [{}, dict(negative_slope=0.1, max_value=6.0, threshold=-0.5),
                                    dict(threshold=1.0)])
def test_relu_subgradient_at_threshold(kwargs, dtype):
    t = kwargs.get("threshold", 0.0)
    x = np.array([t, t, t - 1.0, t + 0.5], dtype=dtype)
    dy = np.array([1.0, -4.0, 1.0, 1.0], dtype=dtype)
    dx = fastact.relu_backward(dy, x, **kwargs, subgradient=0.5)
    slope = kwargs.get("negative_slope", 0.0)
    assert_close(dx, [0.5, -2.0, slope, 1.0], dtype, "backward")
    # without subgradient: the left derivative (the negative slope)
    assert_close(fastact.relu_backward(dy, x, **kwargs), [slope, -4.0 * slope, slope, 1.0], dtype,
                 "backward")


# -------------------------------------------------------------------------------- special values


@pytest.mark.parametrize("name,kwargs", CASES)
def test_nan_propagates(name, kwargs, dtype):
    act = ENTRIES[name]
    f, fb = public(name)
    x = np.array([np.nan, -1.5, 0.0, 2.5, np.nan, 0.75], dtype=dtype)
    y = f(x, **kwargs)
    assert np.array_equal(np.isnan(y), np.isnan(x)), y
    assert_close(y, reference(act, x, kwargs), dtype)
    dy = np.ones_like(x)
    dx = fb(dy, x, **kwargs)
    assert np.array_equal(np.isnan(dx), np.isnan(x)), dx
    # NaN in dy gives NaN in dx whatever f'(x) is (NaN * 0 is NaN)
    dx = fb(np.full_like(x, np.nan), x, **kwargs)
    assert np.isnan(dx).all(), dx


@pytest.mark.parametrize("name", NAMES)
def test_errstate_raise_does_not_raise(name):
    act = ENTRIES[name]
    f, fb = public(name)
    x = np.array([np.nan, np.inf, -np.inf, 1e300, -1e300, 0.0, -0.0, 5e-324])
    kw = default_kwargs(act)
    with np.errstate(all="ignore"):
        x32 = x.astype(np.float32)  # the cast itself overflows
    with np.errstate(all="raise"):
        y = f(x, **kw)
        dx = fb(np.ones_like(x), x, **kw)
        f(x32, **kw)
        f(np.float64(np.nan), **kw)
        fb(np.nan, np.nan, **kw)
        if act.params and act.params[0].choices is None:
            # the array-parameter path (a real ufunc) too
            p0 = act.params[0]
            kw2 = dict(kw, **{p0.name: np.full(x.shape, p0.to_float(p0.default))})
            y2 = f(x, **kw2)
            np.testing.assert_array_equal(y2, y)
            dx2 = fb(np.ones_like(x), x, **kw2)
            np.testing.assert_array_equal(dx2, dx)
    assert np.isnan(y[0]) and np.isnan(dx[0])


def _special(dtype):
    fi = np.finfo(dtype)
    tiny_sub = fi.smallest_subnormal
    return np.array([np.inf, -np.inf, -0.0, 0.0, tiny_sub, -tiny_sub, 3 * tiny_sub, fi.tiny, -fi.tiny,
                     1e-30, -1e-30, 1e3, -1e3, 1e30, -1e30, fi.max / 2, -fi.max / 2, fi.max, -fi.max],
                    dtype=dtype)


@pytest.mark.parametrize("name,kwargs", CASES)
def test_special_values_match_reference(name, kwargs, dtype):
    act = ENTRIES[name]
    f, fb = public(name)
    x = _special(dtype)
    y = f(x, **kwargs)
    assert_close(y, reference(act, x, kwargs), dtype, err_msg=f"{name}{kwargs} at {x}")
    dy = np.ones_like(x)
    assert_close(fb(dy, x, **kwargs), reference_backward(act, dy, x, kwargs), dtype, "backward",
                 err_msg=f"{name}{kwargs} at {x}")


# ------------------------------------------------------------------------------ shapes and layouts


@pytest.mark.parametrize("name", NAMES)
def test_awkward_layouts(name, dtype):
    act = ENTRIES[name]
    f, fb = public(name)
    kw = default_kwargs(act)
    rng = np.random.default_rng(4)
    lo, hi = act.domain
    base = rng.uniform(lo, hi, (6, 7)).astype(dtype)
    for label, x in awkward_arrays(base):
        xc = np.ascontiguousarray(x)
        y = f(x, **kw)
        assert y.shape == x.shape, label
        assert_close(y, reference(act, xc, kw), dtype, err_msg=label)
        # dy in another awkward layout than x
        dy = np.asfortranarray(rng.standard_normal(x.shape).astype(dtype))[..., ::-1] if x.ndim else \
            rng.standard_normal(()).astype(dtype)
        dx = fb(dy, x, **kw)
        assert dx.shape == x.shape, label
        assert_close(dx, reference_backward(act, np.ascontiguousarray(dy), xc, kw), dtype, "backward",
                     err_msg=label)


@pytest.mark.parametrize("name", NAMES)
def test_zero_d_returns_numpy_scalar_like_a_ufunc(name, dtype):
    act = ENTRIES[name]
    f, fb = public(name)
    kw = default_kwargs(act)
    for x in (dtype.type(0.75), np.array(-0.5, dtype=dtype)):
        y = f(x, **kw)
        assert isinstance(y, np.generic) and not isinstance(y, np.ndarray), type(y)
        assert y.dtype == dtype
        assert_close(y, reference(act, x, kw), dtype)
        dx = fb(dtype.type(2.0), x, **kw)
        assert isinstance(dx, np.generic) and dx.dtype == dtype
        assert_close(dx, reference_backward(act, 2.0, x, kw), dtype, "backward")
    # Python floats compute in float64, as np.exp(0.5) does
    assert f(0.5, **kw).dtype == np.float64


@pytest.mark.parametrize("name", NAMES)
def test_empty(name, dtype):
    f, fb = public(name)
    for shape in [(0,), (3, 0, 2)]:
        x = np.empty(shape, dtype=dtype)
        y = f(x)
        assert y.shape == shape and y.dtype == dtype
        dx = fb(x, x)
        assert dx.shape == shape and dx.dtype == dtype


@pytest.mark.parametrize("name", ["relu", "gelu", "softplus", "hardtanh"])
def test_backward_broadcasts_dy_against_x(name, dtype):
    act = ENTRIES[name]
    _, fb = public(name)
    kw = default_kwargs(act)
    x = np.linspace(-2, 2, 12, dtype=dtype).reshape(3, 4)
    dy = np.array([1.0, -2.0, 0.5, 3.0], dtype=dtype)
    dx = fb(dy, x, **kw)
    assert dx.shape == (3, 4)
    assert_close(dx, reference_backward(act, np.broadcast_to(dy, x.shape), x, kw), dtype, "backward")


# ------------------------------------------------------------------------------ array parameters

#: one parameter per activation given as an array (along the last axis of x), non-default values
BROADCAST_PARAM = {
    "relu": ("negative_slope", [0.0, 0.1, 0.2, -0.3, 1.0]),
    "leaky_relu": ("negative_slope", [0.0, 0.01, 0.2, -0.5, 2.0]),
    "hardtanh": ("min_val", [-2.0, -1.5, -1.0, -0.5, 0.0]),
    "threshold": ("threshold", [-1.0, -0.5, 0.0, 0.5, 1.0]),
    "elu": ("alpha", [0.5, 1.0, 1.5, 2.0, 3.0]),
    "celu": ("alpha", [0.5, 1.0, 1.5, 2.0, 3.0]),
    "softplus": ("beta", [0.5, 1.0, 1.5, 2.0, 3.0]),
}


def _per_column(fn, x, col_kwargs):
    """Apply a reference column by column, each column with its own scalar parameters."""
    return np.stack([fn(x[..., j], kw) for j, kw in enumerate(col_kwargs)], axis=-1)


@pytest.mark.parametrize("name", sorted(BROADCAST_PARAM))
def test_broadcast_array_parameters(name, dtype):
    act = ENTRIES[name]
    f, fb = public(name)
    pname, values = BROADCAST_PARAM[name]
    kw = default_kwargs(act)
    rng = np.random.default_rng(5)
    x = rng.uniform(-4, 4, (6, 5)).astype(dtype)
    x[0] = [np.nan, -np.inf, np.inf, 0.0, -1.0]
    dy = rng.standard_normal(x.shape).astype(dtype)
    cols = [dict(kw, **{pname: v}) for v in values]
    p = np.array(values, dtype=dtype)

    y = f(x, **dict(kw, **{pname: p}))
    assert y.dtype == dtype  # a float32 parameter array keeps float32 x in float32 (NumPy casting)
    assert_close(y, _per_column(lambda c, k: reference(act, c, k), x, cols), dtype)
    dx = fb(dy, x, **dict(kw, **{pname: p}))
    assert dx.dtype == dtype
    expected = _per_column(lambda c, k: reference_backward(act, 1.0, c, k), x, cols) * dy
    assert_close(dx, expected, dtype, "backward")

    # a parameter broadcasting to a larger shape than x gives the broadcast shape, as a ufunc
    y2 = f(x[0, :], **dict(kw, **{pname: np.broadcast_to(p, (3, 5))}))
    assert y2.shape == (3, 5)
    assert_close(y2, np.broadcast_to(y[0], (3, 5)), dtype)

    # out= with an array parameter: wrong shape is refused before anything is written
    out = np.full((4, 5), 7.0, dtype=dtype)
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        f(x, **dict(kw, **{pname: p}), out=out)
    assert (out == 7.0).all()
    out = np.empty_like(x)
    assert f(x, **dict(kw, **{pname: p}), out=out) is out
    assert_close(out, y, dtype)


def test_relu_all_parameters_as_arrays(dtype):
    act = ENTRIES["relu"]
    x = np.linspace(-3, 8, 40, dtype=dtype).reshape(8, 5)
    slope = np.array([[0.0], [0.1], [0.2], [0.3], [-0.1], [0.0], [0.05], [1.0]], dtype=dtype)
    cap = np.array([6.0, np.inf, 1.0, 2.5, 4.0], dtype=dtype)
    thr = dtype.type(-0.5)
    y = fastact.relu(x, negative_slope=slope, max_value=cap, threshold=thr)
    expected = np.empty(x.shape)
    for i in range(8):
        for j in range(5):
            expected[i, j] = act.reference(np.float64(x[i, j]), float(slope[i, 0]), float(cap[j]), -0.5)
    assert_close(y, expected, dtype)


# -------------------------------------------------------------------------------------------- out=


@pytest.mark.parametrize("name", NAMES)
def test_out_argument(name, dtype):
    act = ENTRIES[name]
    f, fb = public(name)
    kw = default_kwargs(act)
    x = sample_points(act, kw, 30, dtype, seed=6).reshape(5, 6)
    dy = np.random.default_rng(7).standard_normal(x.shape).astype(dtype)
    yref = reference(act, x, kw)
    dref = reference_backward(act, dy, x, kw)

    out = np.empty_like(x)
    assert f(x, **kw, out=out) is out
    assert_close(out, yref, dtype)
    out = np.empty_like(x)
    assert fb(dy, x, **kw, out=out) is out
    assert_close(out, dref, dtype, "backward")

    # in place: out is x (forward), x or dy (backward)
    xi = x.copy()
    assert f(xi, **kw, out=xi) is xi
    assert_close(xi, yref, dtype)
    xi = x.copy()
    assert fb(dy, xi, **kw, out=xi) is xi
    assert_close(xi, dref, dtype, "backward")
    di = dy.copy()
    assert fb(di, x, **kw, out=di) is di
    assert_close(di, dref, dtype, "backward")

    # in place on a non-contiguous view: the rest of the buffer is untouched
    buf = np.full((x.shape[0], 2 * x.shape[1]), 42.0, dtype=dtype)
    buf[:, ::2] = x
    view = buf[:, ::2]
    assert f(view, **kw, out=view) is view
    assert_close(buf[:, ::2], yref, dtype)
    assert (buf[:, 1::2] == 42.0).all()

    # out of the other float dtype: computed in x's dtype, cast into out
    other = np.float64 if dtype == np.float32 else np.float32
    out = np.empty(x.shape, dtype=other)
    assert f(x, **kw, out=out) is out
    assert out.dtype == other
    assert_close(out.astype(np.float32 if other == np.float32 else dtype), yref,
                 np.float32 if other == np.float32 else dtype)

    # F-order out for C-order x
    out = np.empty(x.shape, dtype=dtype, order="F")
    assert f(x, **kw, out=out) is out
    assert_close(out, yref, dtype)


@pytest.mark.parametrize("name", ["relu", "gelu", "sigmoid", "hardswish"])
def test_out_rejects_bad_out_before_writing(name, dtype):
    f, fb = public(name)
    x = np.linspace(-3, 3, 12, dtype=dtype).reshape(3, 4)
    for bad in (np.full((3, 4), 9, dtype=np.int64), np.full((3, 4), 9, dtype=np.complex128)):
        with pytest.raises(TypeError, match="out"):
            f(x, out=bad)
        with pytest.raises(TypeError, match="out"):
            fb(x, x, out=bad)
        assert (bad == 9).all()
    with pytest.raises(TypeError):
        f(x, out=[0.0] * 12)
    for shape in [(4, 3), (12,), (3, 4, 1), (1, 3, 4)]:
        bad = np.full(shape, 9.0, dtype=dtype)
        with pytest.raises(ValueError, match=r"shape"):
            f(x, out=bad)
        with pytest.raises(ValueError, match=r"shape"):
            fb(x, x, out=bad)
        assert (bad == 9.0).all()
    ro = np.zeros((3, 4), dtype=dtype)
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        f(x, out=ro)


@pytest.mark.parametrize("name", ["relu", "gelu", "tanh"])
def test_out_overlapping_input(name):
    act = ENTRIES[name]
    f, _ = public(name)
    kw = default_kwargs(act)
    buf = np.linspace(-3, 3, 101)
    expected = reference(act, buf[:-1], kw)
    f(buf[:-1], **kw, out=buf[1:])  # partially overlapping: result as if x were copied first (NumPy)
    assert_close(buf[1:], expected, np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["relu", "gelu", "hardswish"])
def test_small_out_in_place_and_overlapping(name, dtype):
    # small arrays with out= take the fast path when out is an input or overlaps none; a partial
    # overlap takes the general one: either way the result is that of fresh arrays
    f, fb = public(name)
    x = np.linspace(-4, 4, 257).astype(dtype)
    dy = np.linspace(2, -1, 257).astype(dtype)
    want, want_b = f(x), fb(dy, x)
    for target in ("x", "dy", "fresh"):
        xx, gg = x.copy(), dy.copy()
        out = {"x": xx, "dy": gg, "fresh": np.empty_like(x)}[target]
        assert fb(gg, xx, out=out) is out
        np.testing.assert_array_equal(out, want_b)
    xx = x.copy()
    assert f(xx, out=xx) is xx
    np.testing.assert_array_equal(xx, want)
    buf = np.concatenate([x, [0]]).astype(dtype)
    f(buf[:-1], out=buf[1:])
    np.testing.assert_array_equal(buf[1:], want)
    buf = np.concatenate([dy, [0]]).astype(dtype)
    fb(buf[:-1], x, out=buf[1:])
    np.testing.assert_array_equal(buf[1:], want_b)
    z = np.empty((), dtype)
    assert f(np.array(x[0]), out=z) is z and z == want[0]


# ------------------------------------------------------------------------------------------ dtypes


@pytest.mark.parametrize("name", NAMES)
def test_integer_and_bool_input_compute_in_float64(name):
    act = ENTRIES[name]
    f, fb = public(name)
    kw = default_kwargs(act)
    for x in (np.arange(-4, 5, dtype=np.int64), np.arange(-4, 5, dtype=np.int8),
              np.array([True, False]), [-2, -1, 0, 1, 2]):
        y = f(x, **kw)
        assert y.dtype == np.float64
        assert_close(y, reference(act, np.asarray(x, dtype=np.float64), kw), np.float64)
    x = np.arange(-4, 5)
    dx = fb(np.ones(9, dtype=np.int32), x, **kw)
    assert dx.dtype == np.float64
    assert_close(dx, reference_backward(act, 1.0, x, kw), np.float64, "backward")


@pytest.mark.parametrize("name", NAMES)
def test_float16_computes_in_float32(name):
    # documented in fastact.elementwise: Numba has no float16 arithmetic, so float16 returns float32
    act = ENTRIES[name]
    f, fb = public(name)
    kw = default_kwargs(act)
    x = np.linspace(-4, 4, 17).astype(np.float16)
    y = f(x, **kw)
    assert_close(y, reference(act, x, kw), np.float32)
    dy = np.full(x.shape, 0.5, dtype=np.float16)
    assert_close(fb(dy, x, **kw), reference_backward(act, dy, x, kw), np.float32, "backward")


def test_complex_input_is_a_type_error():
    with pytest.raises(TypeError):
        fastact.relu(np.array([1 + 1j]))


def test_mixed_float_inputs_follow_numpy_promotion():
    x32 = np.linspace(-2, 2, 7, dtype=np.float32)
    assert fastact.gelu_backward(np.ones(7, np.float64), x32).dtype == np.float64
    assert fastact.gelu_backward(np.ones(7, np.float32), x32).dtype == np.float32


def test_parameters_are_cast_to_the_inputs_dtype():
    """float32 in, float32 out, whatever the parameters' dtype: scalars and arrays alike, as the C
    kernels (double parameters, cast to the kernel's type) compute."""
    x32 = np.linspace(-2, 2, 7, dtype=np.float32)
    slope64 = np.array([[0.1]])
    for slope in (np.float64(0.1), 0.1, slope64, np.full(7, 0.1)):
        y = fastact.relu(x32, negative_slope=slope)
        assert y.dtype == np.float32, type(slope)
        np.testing.assert_array_equal(y.reshape(-1), fastact.relu(x32, negative_slope=0.1))
    assert fastact.leaky_relu_backward(x32, x32, slope64).dtype == np.float32
    assert fastact.prelu(x32.reshape(1, 7), np.full(7, 0.1)).dtype == np.float32
    dx, dw = fastact.prelu_backward(x32.reshape(1, 7), x32.reshape(1, 7), np.full(7, 0.1))
    assert dx.dtype == dw.dtype == np.float32 and dw.shape == (7,)
    # float16 computes in float32, integers in float64, with or without array parameters
    assert fastact.relu(x32.astype(np.float16), negative_slope=slope64).dtype == np.float32
    assert fastact.relu(np.arange(-3, 3), negative_slope=np.float32([0.5])).dtype == np.float64
    # the NumPy ufuncs themselves keep NumPy's promotion (the float64 parameter picks the float64 loop)
    assert ufuncs.leaky_relu(x32, slope64).dtype == np.float64


# ---------------------------------------------------------------------------------- aliases, ufuncs


def test_aliases():
    assert "swish" in BY_NAME and BY_NAME["swish"] is ENTRIES["silu"]
    x = np.linspace(-5, 5, 11)
    np.testing.assert_array_equal(fastact.swish(x), fastact.silu(x))
    np.testing.assert_array_equal(fastact.swish_backward(x, x), fastact.silu_backward(x, x))
    np.testing.assert_array_equal(ufuncs.swish(x), fastact.silu(x))
    for name, act in ENTRIES.items():
        for alias in act.aliases:
            assert getattr(fastact, alias) is getattr(fastact, name)


@pytest.mark.parametrize("name,kwargs", CASES)
def test_ufuncs_agree_with_functions(name, kwargs, dtype):
    act = ENTRIES[name]
    f, fb = public(name)
    uf = getattr(ufuncs, name)
    ub = getattr(ufuncs, f"{name}_backward")
    assert isinstance(uf, np.ufunc) and isinstance(ub, np.ufunc)
    assert uf.nin == 1 + act.nparams and ub.nin == 2 + act.nparams + len(act.backward_params)
    x = _grid(act, kwargs, dtype, n=40, seed=8)
    x[:2] = [np.nan, -np.inf]
    dy = np.random.default_rng(9).standard_normal(x.shape).astype(dtype)
    p = [dtype.type(v) for v in floats_of(act, kwargs)]
    pb = [dtype.type(v) for v in floats_of(act, kwargs, {})]
    with np.errstate(all="ignore"):
        yu = uf(x, *p)
        du = ub(dy, x, *pb)
    assert yu.dtype == dtype and du.dtype == dtype
    np.testing.assert_array_equal(yu, f(x, **kwargs))
    np.testing.assert_array_equal(du, fb(dy, x, **kwargs))


def test_ufunc_relu_subgradient_input():
    x = np.array([0.0, 0.0, -1.0, 2.0])
    np.testing.assert_array_equal(ufuncs.relu_backward(np.ones(4), x, 0.0, np.inf, 0.0, 0.5),
                                  [0.5, 0.5, 0.0, 1.0])
    np.testing.assert_array_equal(ufuncs.relu_backward(np.ones(4), x, 0.0, np.inf, 0.0, np.nan),
                                  [0.0, 0.0, 0.0, 1.0])


def test_unknown_ufunc_name():
    with pytest.raises(AttributeError):
        ufuncs.not_an_activation  # noqa: B018


# ------------------------------------------------------------------------------------------ properties

_settings = settings(max_examples=30, deadline=None)


def _float_arrays(dtype):
    width = 32 if dtype == np.float32 else 64
    elements = st.one_of(st.floats(-1e4, 1e4, width=width), st.just(np.nan),
                         st.sampled_from([0.0, -0.0, 1e-30, -1e-30]))
    return hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
                      elements=elements)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dt", DTYPES, ids=["f32", "f64"])
def test_property_forward_and_backward_match_reference(name, dt):
    act = ENTRIES[name]
    f, fb = public(name)
    kw = default_kwargs(act)

    @_settings
    @given(_float_arrays(np.dtype(dt)))
    def check(x):
        y = f(x, **kw)
        assert np.shape(y) == x.shape
        assert_close(y, reference(act, x, kw), dt)
        dy = np.ones_like(x)
        assert_close(fb(dy, x, **kw), reference_backward(act, dy, x, kw), dt, "backward")

    check()


@_settings
@given(_float_arrays(np.dtype(np.float64)))
def test_property_ranges(x):
    finite = ~np.isnan(x)
    r = fastact.relu(x)
    assert (r[finite] >= 0).all()
    np.testing.assert_array_equal(r[finite], np.maximum(x[finite], 0.0))
    assert np.isnan(r[~finite]).all()
    for name, lo, hi in [("sigmoid", 0, 1), ("tanh", -1, 1), ("softsign", -1, 1), ("hardsigmoid", 0, 1),
                         ("hardtanh", -1, 1), ("relu6", 0, 6), ("softplus", 0, np.inf),
                         ("elu", -1, np.inf)]:
        y = getattr(fastact, name)(x)
        assert ((y[finite] >= lo) & (y[finite] <= hi)).all(), name
    for name in ["leaky_relu", "relu6", "elu", "selu", "sigmoid", "tanh", "softsign", "softplus",
                 "hardsigmoid", "hardtanh"]:
        xs = np.sort(x[finite].ravel())
        ys = getattr(fastact, name)(xs)
        assert (np.diff(ys) >= -1e-15 * np.abs(ys[1:])).all(), f"{name} not monotone"
    for name in ["sigmoid", "tanh", "gelu", "silu", "mish", "softplus", "elu"]:
        fb = getattr(fastact, f"{name}_backward")
        assert np.isfinite(fb(np.ones_like(x[finite]), x[finite])).all(), name


# --------------------------------------------------------------------------- parallel loop and threads


@pytest.mark.parametrize("name", NAMES)
def test_parallel_loop_equals_serial(name, dtype, monkeypatch):
    act = ENTRIES[name]
    f, fb = public(name)
    kw = default_kwargs(act)
    n = config.PARALLEL_MIN_SIZE + 4099
    rng = np.random.default_rng(10)
    lo, hi = act.domain
    x = rng.uniform(lo, hi, n).astype(dtype)
    x[::997] = np.nan
    dy = rng.standard_normal(n).astype(dtype)
    if name == "relu":
        kw = dict(kw, negative_slope=0.01)  # the defaults take the step kernel (tested below)
    y_pub = f(x, **kw)  # above the threshold: the parallel loop
    dx_pub = fb(dy, x, **kw)
    p = [dtype.type(v) for v in floats_of(act, kw)]
    b = [dtype.type(v) for v in floats_of(act, kw, {})][len(p):]
    y_par, y_ser, dx_par, dx_ser = (np.empty_like(x) for _ in range(4))
    table.loop(name, parallel=True)(x, y_par, *p)
    table.loop(name, parallel=False)(x, y_ser, *p)
    table.loop(name, backward=True, parallel=True)(dy, x, dx_par, *p, *b)
    table.loop(name, backward=True, parallel=False)(dy, x, dx_ser, *p, *b)
    for a, c in ((y_pub, y_par), (y_par, y_ser), (dx_pub, dx_par), (dx_par, dx_ser)):
        np.testing.assert_array_equal(a, c)
    monkeypatch.setattr(config, "PARALLEL_MIN_SIZE", n + 1)  # the public functions' serial path
    monkeypatch.setattr(config, "PARALLEL_MIN_SIZE_BACKWARD", n + 1)
    monkeypatch.setattr(config, "PARALLEL_MIN_SIZE_TRANSCENDENTAL", n + 1)
    np.testing.assert_array_equal(f(x, **kw), y_par)
    np.testing.assert_array_equal(fb(dy, x, **kw), dx_par)
    assert_close(y_par, reference(act, x, kw), dtype)
    assert_close(dx_par, reference_backward(act, dy, x, kw), dtype, "backward")


@pytest.mark.parametrize("n", [1000, config.PARALLEL_MIN_SIZE + 77], ids=["serial", "parallel"])
def test_step_kernel_equals_the_general_relu_and_threshold_kernels(n, dtype):
    rng = np.random.default_rng(12)
    x = rng.standard_normal(n).astype(dtype)
    x[:8] = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 3.0]
    dy = rng.standard_normal(n).astype(dtype)
    dy[7] = np.nan
    fast = fastact.relu_backward(dy, x)
    general = np.empty_like(x)
    table.loop("relu", backward=True)(dy, x, general, *(dtype.type(v) for v in [0.0, np.inf, 0.0, np.nan]))
    np.testing.assert_array_equal(fast, general)
    assert fast[2] == dy[2] and fast[3] == 0 and np.isnan(fast[4]) and np.isnan(fast[7])
    for t, v in [(0.0, 0.0), (0.5, -2.0), (-1.0, 3.0)]:
        general = np.empty_like(x)
        table.loop("threshold", backward=True)(dy, x, general, dtype.type(t), dtype.type(v))
        np.testing.assert_array_equal(fastact.threshold_backward(dy, x, threshold=t, value=v), general)


def test_concurrent_calls_from_threads():
    rng = np.random.default_rng(11)
    big = rng.uniform(-5, 5, config.PARALLEL_MIN_SIZE * 2)
    small = rng.uniform(-5, 5, 1000).astype(np.float32)
    work = [
        lambda: fastact.gelu(big),
        lambda: fastact.relu_backward(big, big, negative_slope=0.1, max_value=3.0),
        lambda: fastact.tanh(small),
        lambda: fastact.softmax(big.reshape(64, -1), axis=1),
        lambda: fastact.prelu(big.reshape(8, 4, -1), np.array([0.1, 0.2, 0.3, 0.4])),
        lambda: fastact.elu(big, alpha=np.full(big.shape, 0.5)),
    ]
    expected = [w() for w in work]
    results = {}
    errors = []

    def run(tid):
        try:
            for rep in range(5):
                for k, w in enumerate(work):
                    results[(tid, rep, k)] = w()
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors
    assert len(results) == 4 * 5 * len(work)
    for (tid, rep, k), r in results.items():
        np.testing.assert_array_equal(r, expected[k])


# -------------------------------------------------------------------------------------------- gradcheck


def test_gradcheck_catches_a_wrong_backward():
    x = np.linspace(-2, 2, 9)
    with pytest.raises(fastact.GradcheckError, match="input 0"):
        fastact.gradcheck(fastact.tanh, lambda dy, v: dy * (1.0 - np.tanh(v)), (x,))
    # a gradient wrong only for the second input names that input, the element and both values
    fn = lambda a, b: a * b  # noqa: E731
    with pytest.raises(fastact.GradcheckError, match=r"input 1.*index \(3,\).*analytic.*numerical"):
        fastact.gradcheck(fn, lambda dy, a, b: (dy * b, dy * a + (np.arange(5) == 3)), (x[:5], x[4:]))
    with pytest.raises(fastact.GradcheckError):  # NaN gradient never passes
        fastact.gradcheck(fastact.tanh, lambda dy, v: np.full_like(v, np.nan), (x,))
    with pytest.raises(fastact.GradcheckError, match="shape"):
        fastact.gradcheck(fastact.tanh, lambda dy, v: dy[:-1], (x,))
    # and a right one passes
    assert fastact.gradcheck(fn, lambda dy, a, b: (dy * b, dy * a), (x[:5], x[4:]))


# ------------------------------------------------------------------------------------------------ prelu


def _prelu_slope(x, w, axis):
    """The slope of each element of x: w broadcast along ``axis`` (a 1-element w everywhere)."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64).ravel()
    if w.size == 1:
        return np.full(x.shape, w[0])
    shape = [1] * x.ndim
    shape[axis] = -1
    return np.broadcast_to(w.reshape(shape), x.shape)


def _prelu_ref(x, w, axis):
    x = np.asarray(x, dtype=np.float64)
    return np.where(x > 0, x, _prelu_slope(x, w, axis) * x)


@pytest.mark.parametrize("shape,wsize,axis", [((2, 3, 4, 5), 3, 1), ((2, 3, 4, 5), 5, -1),
                                              ((2, 3, 4, 5), 1, 1), ((4, 6), 6, 1), ((7,), 7, 0),
                                              ((2, 3, 4), 2, 0), ((3,), 1, 1), ((), 1, 1)])
def test_prelu_forward_backward(shape, wsize, axis, dtype):
    rng = np.random.default_rng(12)
    x = rng.uniform(-3, 3, shape).astype(dtype)
    x[(0,) * x.ndim] = -1.25  # at least one negative element
    w = rng.uniform(-0.5, 0.5, wsize).astype(dtype)
    y = fastact.prelu(x, w, axis=axis)
    assert np.shape(y) == shape and y.dtype == dtype
    if not shape:
        assert isinstance(y, np.generic)
    assert_close(y, _prelu_ref(x, w, axis), dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    dx, dw = fastact.prelu_backward(dy, x, w, axis=axis)
    assert dx.dtype == dtype and dw.dtype == dtype and dw.shape == w.shape
    dy64 = dy.astype(np.float64)
    assert_close(dx, np.where(x > 0, dy64, dy64 * _prelu_slope(x, w, axis)), dtype, "backward")
    # dweight[c] = sum over channel c of dy * x where x <= 0
    xr = np.asarray(x, dtype=np.float64)
    contrib = np.where(xr > 0, 0.0, dy.astype(np.float64) * xr)
    if wsize == 1:
        expected_dw = np.array([contrib.sum()])
    else:
        ax = axis % x.ndim
        expected_dw = contrib.sum(axis=tuple(i for i in range(x.ndim) if i != ax))
    np.testing.assert_allclose(dw, expected_dw, **({"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32
                                                  else {"rtol": 1e-12, "atol": 1e-12}))


@pytest.mark.parametrize("shape,wsize,axis", [((2, 3, 4), 3, 1), ((3, 5), 5, -1), ((2, 3), 1, 1)])
def test_prelu_gradcheck_weight_and_input(shape, wsize, axis):
    rng = np.random.default_rng(13)
    x = rng.uniform(-3, 3, shape)
    x[np.abs(x) < 1e-2] = 0.5  # away from the kink
    w = rng.uniform(-0.5, 0.5, wsize)
    assert fastact.gradcheck(lambda a, b: fastact.prelu(a, b, axis=axis),
                             lambda dy, a, b: fastact.prelu_backward(dy, a, b, axis=axis), (x, w))


def test_prelu_nan_layouts_and_out():
    x = np.linspace(-3, 3, 24).reshape(2, 3, 4)
    x[1, 2, 3] = np.nan
    w = np.array([0.1, 0.2, 0.3])
    y = fastact.prelu(x, w)
    assert np.isnan(y[1, 2, 3]) and np.isnan(y).sum() == 1
    dx, dw = fastact.prelu_backward(np.ones_like(x), x, w)
    assert np.isnan(dx[1, 2, 3]) and np.isnan(dw[2]) and not np.isnan(dw[:2]).any()
    xf = np.asfortranarray(x)[:, ::-1]
    assert_close(fastact.prelu(xf, w), _prelu_ref(np.ascontiguousarray(xf), w, 1), np.float64)
    out = np.empty_like(x)
    assert fastact.prelu(x, w, out=out) is out
    assert_close(out, _prelu_ref(x, w, 1), np.float64)


def test_prelu_wrong_weight_size_names_shapes():
    x = np.zeros((2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"4.*\(2, 3, 4, 5\)"):
        fastact.prelu(x, np.ones(4))
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 5\)"):
        fastact.prelu_backward(x, x, np.ones(4))
    with pytest.raises(ValueError, match=r"\(3, 1\)"):
        fastact.prelu(x, np.ones((3, 1)))
    with pytest.raises(ValueError, match="axis"):
        fastact.prelu(x, np.ones(3), axis=7)
    with pytest.raises(ValueError, match="shape"):
        fastact.prelu_backward(np.zeros((2, 3)), x, np.ones(3))
    out = np.full((2, 3, 4), 5.0)
    with pytest.raises(ValueError):
        fastact.prelu(x, np.ones(3), out=out)
    assert (out == 5.0).all()


# ---------------------------------------------------------------------------------------------- softmax


def _softmax_ref(x, axis):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _log_softmax_ref(x, axis):
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))


AXES = [0, 1, 2, -1, -2]


@pytest.mark.parametrize("axis", AXES)
def test_softmax_every_axis(axis, dtype):
    x = np.random.default_rng(14).normal(0, 3, (3, 4, 5)).astype(dtype)
    y = fastact.softmax(x, axis=axis)
    assert y.shape == x.shape
    assert_close(y, _softmax_ref(x, axis), dtype)
    np.testing.assert_allclose(np.sum(y.astype(np.float64), axis=axis), 1.0, **tol(dtype))
    ly = fastact.log_softmax(x, axis=axis)
    assert_close(ly, _log_softmax_ref(x, axis), dtype)
    # awkward layouts give the same
    xf = np.asfortranarray(x)
    assert_close(fastact.softmax(xf, axis=axis), _softmax_ref(x, axis), dtype)
    xr = x[::-1, :, ::-2]
    assert_close(fastact.log_softmax(xr, axis=axis), _log_softmax_ref(xr, axis), dtype)


@pytest.mark.parametrize("axis", AXES)
def test_softmax_backward(axis, dtype):
    rng = np.random.default_rng(15)
    x = rng.normal(0, 2, (3, 4, 5))
    dy = rng.standard_normal(x.shape)
    for fwd, bwd, ref in [(fastact.softmax, fastact.softmax_backward, _softmax_ref),
                          (fastact.log_softmax, fastact.log_softmax_backward, _log_softmax_ref)]:
        if dtype == np.float64:
            assert fastact.gradcheck(lambda v: fwd(v, axis=axis),
                                     lambda g, v: bwd(g, fwd(v, axis=axis), axis=axis), (x,))
        y = ref(x, axis)
        xd, dyd, yd = x.astype(dtype), dy.astype(dtype), y.astype(dtype)
        dx = bwd(dyd, yd, axis=axis)
        if fwd is fastact.softmax:
            expected = yd * (dyd - np.sum(dyd.astype(np.float64) * yd, axis=axis, keepdims=True))
        else:
            expected = dyd - np.exp(yd.astype(np.float64)) * np.sum(dyd, axis=axis, keepdims=True,
                                                                     dtype=np.float64)
        assert_close(dx, expected, dtype, "backward")
        assert xd.dtype == dtype


def test_softmax_huge_inputs_are_stable(dtype):
    x = (np.random.default_rng(16).normal(0, 1, (4, 6)) * 1e4).astype(dtype)
    x[0] = 1e4
    x[1, 0] = -1e4
    y = fastact.softmax(x, axis=1)
    ly = fastact.log_softmax(x, axis=1)
    assert np.isfinite(y).all() and np.isfinite(ly).all()
    assert_close(y, _softmax_ref(x, 1), dtype)
    assert_close(ly, _log_softmax_ref(x, 1), dtype)
    assert_close(y[0], np.full(6, 1 / 6), dtype)


def test_softmax_nan_row(dtype):
    x = np.random.default_rng(17).normal(0, 1, (3, 4, 5)).astype(dtype)
    for pos in [(1, 0, 2), (1, 3, 2)]:  # NaN first in its row and later in it
        xn = x.copy()
        xn[pos] = np.nan
        for fn, ref in [(fastact.softmax, _softmax_ref), (fastact.log_softmax, _log_softmax_ref)]:
            y = fn(xn, axis=1)
            assert np.isnan(y[1, :, 2]).all()
            mask = np.ones(x.shape, bool)
            mask[1, :, 2] = False
            assert not np.isnan(y[mask]).any()
            assert_close(y[mask], ref(x, 1)[mask], dtype)
    dy = np.ones_like(x)
    dy[0, 0, 0] = np.nan
    assert np.isnan(fastact.softmax_backward(dy, fastact.softmax(x, axis=1), axis=1)[0, :, 0]).all()


def test_softmax_out_and_errors():
    x = np.random.default_rng(18).normal(0, 1, (2, 3))
    out = np.empty_like(x)
    assert fastact.softmax(x, out=out) is out
    assert_close(out, _softmax_ref(x, -1), np.float64)
    bad = np.full((3, 2), 4.0)
    with pytest.raises(ValueError, match="shape"):
        fastact.softmax(x, out=bad)
    assert (bad == 4.0).all()
    with pytest.raises(ValueError, match="shape"):
        fastact.softmax_backward(np.ones((2, 2)), x)
    with pytest.raises(ValueError):
        fastact.softmax(x, axis=2)
    assert fastact.softmax(np.zeros((2, 0))).shape == (2, 0)
    assert fastact.softmax(np.arange(4)).dtype == np.float64


# ---------------------------------------------------------------------------------------------- PyTorch

#: x values where fastact returns the mathematical limit and PyTorch 2.13 NaN (-inf * 0): silu, mish,
#: gelu and hardswish at -inf, softsign at +-inf, and float32 gelu at +inf (docs/accuracy.md lists
#: every limit).
TORCH_FORWARD_DIFFERS = {"silu": [-np.inf], "mish": [-np.inf], "softsign": [-np.inf, np.inf],
                         "hardswish": [-np.inf], "gelu": [-np.inf, np.inf]}
TORCH_BACKWARD_DIFFERS = {"silu": [-np.inf], "mish": [-np.inf], "softsign": [-np.inf, np.inf]}
#: PyTorch's hardsigmoid backward multiplies by 1/6 rounded to float32 even for float64 tensors
#: (relative error 3e-8); fastact uses the float64 1/6, which the table's reference confirms.
TORCH_BACKWARD_TOL = {("hardsigmoid", np.dtype(np.float64)): dict(rtol=1e-7, atol=1e-12)}


def _torch_cases():
    out = []
    for p in CASES:
        name, kwargs = p.values
        act = ENTRIES[name]
        if act.torch_name is None:
            continue
        if name == "relu" and kwargs != default_kwargs(act):
            continue  # torch.nn.functional.relu has no Keras parameters
        out.append(p)
    return out


@pytest.mark.parametrize("name,kwargs", _torch_cases())
def test_matches_torch(name, kwargs, dtype):
    torch = torch_or_skip()
    act = ENTRIES[name]
    f, fb = public(name)
    tf = getattr(torch.nn.functional, act.torch_name)
    tkw = {} if name == "relu" else dict(kwargs)
    x = _grid(act, kwargs, dtype, n=48, seed=19)
    x = np.concatenate([x, np.array([np.nan, np.inf, -np.inf, 0.0, 1e3, -1e3], dtype=dtype)])
    dy = np.random.default_rng(20).standard_normal(x.shape).astype(dtype)
    tx = torch.tensor(x, requires_grad=True)
    ty = tf(tx, **tkw)
    ty.backward(torch.tensor(dy))
    y_t = ty.detach().numpy()
    dx_t = tx.grad.numpy()
    y = f(x, **kwargs)
    dx = fb(dy, x, **kwargs)
    keep_f = ~np.isin(x, TORCH_FORWARD_DIFFERS.get(name, []))
    # PyTorch's threshold gives `value` for NaN; fastact keeps NaN (NaN in gives NaN out, always)
    if name == "threshold":
        keep_f &= ~np.isnan(x)
    keep_b = ~np.isin(x, TORCH_BACKWARD_DIFFERS.get(name, [])) & np.isfinite(x)
    assert_close(y[keep_f], y_t[keep_f].astype(np.float64), dtype, err_msg=f"{name} forward vs torch")
    if (name, dtype) in TORCH_BACKWARD_TOL:
        np.testing.assert_allclose(dx[keep_b], dx_t[keep_b], **TORCH_BACKWARD_TOL[(name, dtype)])
    else:
        assert_close(dx[keep_b], dx_t[keep_b].astype(np.float64), dtype, "backward",
                     err_msg=f"{name} backward vs torch")


def test_documented_differences_from_torch_hold():
    # fastact's values at the points skipped above, stated explicitly
    x = np.array([-np.inf])
    assert fastact.silu(x)[0] == 0.0 and fastact.mish(x)[0] == 0.0 and fastact.softsign(x)[0] == -1.0
    assert fastact.softsign(np.array([np.inf]))[0] == 1.0
    assert fastact.gelu(x)[0] == 0.0 and fastact.gelu(x, approximate="tanh")[0] == 0.0


def _mem_available_gib():
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return 0.0


@pytest.mark.skipif(_mem_available_gib() < 14, reason="needs ~9 GiB free for a 2**31-element array")
def test_more_than_2_31_elements_in_place():
    n = 2 ** 31 + 8
    x = np.empty(n, dtype=np.float32)
    x[:] = -1.0
    idx = [0, 2 ** 31 - 1, 2 ** 31, 2 ** 31 + 3, n - 1]  # both sides of the int32 boundary
    x[idx] = [3.0, 5.0, -4.0, 7.0, 2.0]
    fastact.leaky_relu(x, negative_slope=0.5, out=x)   # parallel loop over the whole buffer, in place
    np.testing.assert_array_equal(x[idx], [3.0, 5.0, -2.0, 7.0, 2.0])
    assert x[12345] == -0.5 and x[n - 2] == -0.5
    del x


def test_parameter_memo_keeps_the_sign_of_zero():
    x = np.array([-1.0, 0.0, 2.0])
    a = fastact.threshold(x, 0.0, 0.0)
    b = fastact.threshold(x, 0.0, -0.0)
    assert np.signbit(b[0]) and not np.signbit(a[0])
    assert np.signbit(fastact.leaky_relu(np.array([1.0, -1.0]), negative_slope=-0.0)[1]) == np.signbit(
        -0.0 * -1.0)
    assert np.signbit(fastact.relu_backward(np.array([1.0]), np.array([-1.0]), negative_slope=-0.0)[0])


@pytest.mark.parametrize("name", NAMES)
def test_small_array_fast_path_equals_the_general_path(name, dtype):
    # default parameters on small C-contiguous arrays take a shortcut; explicitly passed defaults (new
    # float objects) take the general driver: both must agree exactly, for every shape and dy layout
    act = ENTRIES[name]
    f, fb = public(name)
    explicit = {p.name: (float(p.default) if isinstance(p.default, float) else p.default) for p in act.params}
    explicit_b = {**explicit, **{p.name: p.default for p in act.backward_params}}
    rng = np.random.default_rng(30)
    for shape in [(7,), (3, 5), (2, 3, 4), ()]:
        x = rng.uniform(*act.domain, size=shape).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        for got, want in [(f(x), f(x, **explicit)), (fb(dy, x), fb(dy, x, **explicit_b)),
                          (fb(dy.T.copy().T if dy.ndim else dy, x), fb(dy, x, **explicit_b)),
                          (fb(dy[..., None][..., 0], x), fb(dy, x, **explicit_b))]:
            assert type(got) is type(want) and np.asarray(got).dtype == dtype
            np.testing.assert_array_equal(got, want)
    x = rng.standard_normal((4, 6)).astype(dtype)
    np.testing.assert_array_equal(f(x[:, ::2]), f(np.ascontiguousarray(x[:, ::2]), **explicit))
    np.testing.assert_array_equal(fb(np.float32(2.0), x), fb(np.full_like(x, 2.0), x, **explicit_b))
