"""Layer kernels (conv2d, max_pool2d, linear, cross_entropy) against independent references.

Every expected value comes from something fastact does not share code with: the naive direct-loop
float64 references of the layer-op table (``fastact.ops``, which shares no code with the kernels), central finite differences (``fastact.gradcheck``), or PyTorch when it
is installed. Shape key as in fastact/conv.py: N batch, C in channels, H x W input, K out channels,
R x S kernel, P x Q output.

Tolerances (``|actual - expected| <= atol + rtol * |expected|``, expected in float64):
  * float64 vs the naive reference: 1e-12. A conv output sums at most C*R*S = 75 products of O(1) values
    in a different order than the reference's loops, which moves the result by a few 1e-16.
  * float32 vs the float64 reference of the same (float32-representable) inputs: rtol 1e-4, atol 1e-5.
    float32 GEMM accumulation over 75 terms loses ~1e-6 relative; 1e-4 leaves room and still catches any
    wrong index (which moves values by O(1)).
  * fused vs unfused, tiled vs single tile: the same float operations in the same dtype, only the BLAS
    blocking may differ: float64 1e-12, float32 rtol 1e-5.
"""

import itertools
import math
import re

import numpy as np
import pytest

import fastact as fa
from conftest import tol, torch_or_skip
from fastact import ops
from fastact.conv import conv_output_shape
from fastact.table import ENTRIES


DTYPES = (np.float32, np.float64)


def assert_ref(actual, expected, dtype, err_msg=""):
    """``actual`` has ``dtype`` and matches the float64 ``expected`` (NaN where NaN)."""
    actual = np.asarray(actual)
    assert actual.dtype == np.dtype(dtype), f"dtype {actual.dtype}, expected {np.dtype(dtype)} {err_msg}"
    np.testing.assert_allclose(actual.astype(np.float64), np.asarray(expected, np.float64), equal_nan=True,
                               err_msg=err_msg, **tol(dtype, "layer"))


def assert_same(actual, expected, dtype, err_msg=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == np.dtype(dtype) and expected.dtype == np.dtype(dtype), (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, equal_nan=True, err_msg=err_msg, **tol(dtype, "forward"))


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def rand(rng, shape, dtype=np.float64):
    """Standard normal values, exactly representable in ``dtype`` (so the float64 reference sees the
    same inputs as the float32 kernel)."""
    return rng.standard_normal(shape).astype(dtype)


# ------------------------------------------------------------------------------ naive references
# The float64 references of the layer-op table (direct loops over the definitions, fastact.ops).

ref_conv2d = ops.conv2d_reference
ref_conv2d_backward = ops.conv2d_backward_reference
ref_max_pool2d = ops.max_pool2d_reference
ref_max_pool2d_backward = ops.max_pool2d_backward_reference
ref_linear = ops.linear_reference
ref_linear_backward = ops.linear_backward_reference
ref_cross_entropy = ops.cross_entropy_reference
ref_cross_entropy_backward = ops.cross_entropy_backward_reference


def act_ref(name, params, z):
    """The activation table's float64 NumPy reference (independent of the compiled kernels)."""
    act = ENTRIES[name]
    vals = [p.to_float(params.get(p.name, p.default)) for p in act.params]
    return act.reference(np.asarray(z, np.float64), *vals)


def act_dref(name, params, z, backward_params=None):
    act = ENTRIES[name]
    vals = [p.to_float(params.get(p.name, p.default)) for p in act.params]
    vals += [p.to_float((backward_params or {}).get(p.name, p.default)) for p in act.backward_params]
    return act.reference_derivative(np.asarray(z, np.float64), *vals)


# ------------------------------------------------------------------------------------ the grid

KERNELS = (1, 3, 5)
STRIDES = (1, 2)
PADDINGS = (0, 1, 2)
GRID = list(itertools.product(KERNELS, STRIDES, PADDINGS))
GRID_IDS = [f"k{k}-s{s}-p{p}" for k, s, p in GRID]
# non-square kernels, strides and paddings given as pairs
EXTRA = [((3, 1), (2, 1), (1, 0)), ((1, 5), (1, 3), (0, 2)), ((2, 4), (3, 2), (1, 1))]
EXTRA_IDS = ["k3x1-s2x1-p1x0", "k1x5-s1x3-p0x2", "k2x4-s3x2-p1x1"]


def _fits(H, W, kernel, padding):
    (R, S), (ph, pw) = _pair(kernel), _pair(padding)
    return R <= H + 2 * ph and S <= W + 2 * pw


def _conv_inputs(rng, dtype, N=2, C=3, H=7, W=6, K=4, kernel=3):
    R, S = _pair(kernel)
    return rand(rng, (N, C, H, W), dtype), rand(rng, (K, C, R, S), dtype), rand(rng, (K,), dtype)


# ---------------------------------------------------------------------------------- conv2d

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("hw", [(7, 6), (3, 4)], ids=["7x6", "3x4"])
@pytest.mark.parametrize("kernel,stride,padding", GRID + EXTRA, ids=GRID_IDS + EXTRA_IDS)
def test_conv2d_output_matches_naive_loops(kernel, stride, padding, hw, dtype):
    rng = np.random.default_rng(hash((kernel, stride, padding, hw)) % 2**32)
    x, w, b = _conv_inputs(rng, dtype, H=hw[0], W=hw[1], kernel=kernel)
    if not _fits(*hw, kernel, padding):
        with pytest.raises(ValueError, match=re.escape(str(x.shape))):
            fa.conv2d(x, w, b, stride, padding)
        return
    expected = ref_conv2d(x, w, b, stride, padding)
    y = fa.conv2d(x, w, b, stride, padding)
    assert y.shape == expected.shape == conv_output_shape(x.shape, w.shape, stride, padding)
    assert_ref(y, expected, dtype)
    assert_ref(fa.conv2d(x, w, None, stride, padding), ref_conv2d(x, w, None, stride, padding), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("kernel,stride,padding", GRID + EXTRA, ids=GRID_IDS + EXTRA_IDS)
def test_conv2d_backward_matches_naive_loops(kernel, stride, padding, dtype):
    rng = np.random.default_rng(7)
    x, w, _ = _conv_inputs(rng, dtype, H=7, W=6, kernel=kernel)
    shape = conv_output_shape(x.shape, w.shape, stride, padding)
    dy = rand(rng, shape, dtype)
    dx, dw, db = fa.conv2d_backward(dy, x, w, stride, padding)
    rdx, rdw, rdb = ref_conv2d_backward(dy, x, w, stride, padding)
    assert_ref(dx, rdx, dtype, "dx")
    assert_ref(dw, rdw, dtype, "dweight")
    assert_ref(db, rdb, dtype, "dbias")


@pytest.mark.parametrize("kernel,stride,padding", GRID + EXTRA, ids=GRID_IDS + EXTRA_IDS)
def test_conv2d_gradcheck(kernel, stride, padding):
    # odd, non-square input; the 5x5 kernel without padding does not fit the 4 columns
    rng = np.random.default_rng(3)
    x, w, b = _conv_inputs(rng, np.float64, N=2, C=2, H=5, W=4, K=3, kernel=kernel)
    if not _fits(5, 4, kernel, padding):
        with pytest.raises(ValueError, match="larger than the padded input"):
            fa.conv2d(x, w, b, stride, padding)
        return
    assert fa.gradcheck(lambda x, w, b: fa.conv2d(x, w, b, stride, padding),
                        lambda dy, x, w, b: fa.conv2d_backward(dy, x, w, stride, padding),
                        (x, w, b))


def test_gradcheck_catches_a_wrong_conv_gradient():
    # the checker itself can fail: a dweight off by a factor must be reported
    rng = np.random.default_rng(0)
    x, w, b = _conv_inputs(rng, np.float64, N=1, C=1, H=4, W=4, K=1, kernel=3)

    def bad_backward(dy, x, w, b):
        dx, dw, db = fa.conv2d_backward(dy, x, w, 1, 1)
        return dx, 1.01 * dw, db

    with pytest.raises(fa.GradcheckError, match="input 1"):
        fa.gradcheck(lambda x, w, b: fa.conv2d(x, w, b, 1, 1), bad_backward, (x, w, b))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_conv2d_nan_propagates(dtype):
    rng = np.random.default_rng(1)
    x, w, b = _conv_inputs(rng, dtype, N=1, C=2, H=6, W=5, K=3, kernel=3)
    x[0, 1, 2, 3] = np.nan
    expected = act_ref("relu", {}, ref_conv2d(x, w, b, 1, 1))
    assert np.isnan(expected).sum() == 3 * 9  # every output whose window holds the NaN
    y = fa.conv2d(x, w, b, 1, 1, activation="relu")
    assert_ref(y, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_conv2d_noncontiguous_inputs(dtype):
    rng = np.random.default_rng(2)
    xb = rand(rng, (3, 4, 9, 14), dtype)
    x = xb[::2, 1:, :, ::2]                      # strided view (2, 3, 9, 7)
    w = np.asfortranarray(rand(rng, (4, 3, 3, 3), dtype))
    b = rand(rng, (8,), dtype)[::2]
    assert not x.flags.c_contiguous and not w.flags.c_contiguous
    assert_ref(fa.conv2d(x, w, b, 2, 1), ref_conv2d(x, w, b, 2, 1), dtype)
    dy = rand(rng, (2, 4, 5, 4, 2), dtype)[..., 0]
    for got, want in zip(fa.conv2d_backward(dy, x, w, 2, 1), ref_conv2d_backward(dy, x, w, 2, 1)):
        assert_ref(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_conv2d_empty_batch(dtype):
    x = np.zeros((0, 3, 5, 5), dtype)
    w = np.ones((2, 3, 3, 3), dtype)
    y = fa.conv2d(x, w, np.ones(2, dtype), 1, 1, activation="relu")
    assert y.shape == (0, 2, 5, 5) and y.dtype == dtype
    dx, dw, db = fa.conv2d_backward(np.zeros((0, 2, 5, 5), dtype), x, w, 1, 1)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == (2,)
    assert not dw.any() and not db.any()


# ---------------------------------------------------------------------------- fused epilogues

FUSED = [("relu", {}), ("relu", dict(negative_slope=0.1, max_value=1.5, threshold=-0.5)),
         ("leaky_relu", dict(negative_slope=0.2)), ("gelu", dict(approximate="tanh")), ("gelu", {}),
         ("silu", {}), ("hardtanh", dict(min_val=-2.0, max_val=0.5))]
FUSED_IDS = ["relu", "relu-leaky-capped-margin", "leaky_relu", "gelu-tanh", "gelu-erf", "silu", "hardtanh"]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("act,params", FUSED, ids=FUSED_IDS)
def test_conv2d_fused_equals_unfused(act, params, dtype):
    rng = np.random.default_rng(11)
    x, w, b = _conv_inputs(rng, dtype, N=3, C=3, H=7, W=6, K=4, kernel=3)
    fused = fa.conv2d(x, w, b, 2, 1, activation=act, activation_params=params)
    unfused = getattr(fa, act)(fa.conv2d(x, w, b, 2, 1), **params)
    assert_same(fused, unfused, dtype)
    # and both match the table's NumPy reference on the naive conv
    assert_ref(fused, act_ref(act, params, ref_conv2d(x, w, b, 2, 1)), dtype)
    # parameters may also be given positionally, in table order
    seq = [params.get(p.name, p.default) for p in ENTRIES[act].params]
    assert_same(fa.conv2d(x, w, b, 2, 1, activation=act, activation_params=seq), fused, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("act,params", FUSED, ids=FUSED_IDS)
def test_linear_fused_equals_unfused(act, params, dtype):
    rng = np.random.default_rng(12)
    x, w, b = rand(rng, (2, 3, 5), dtype), rand(rng, (4, 5), dtype), rand(rng, (4,), dtype)
    fused = fa.linear(x, w, b, activation=act, activation_params=params)
    assert fused.shape == (2, 3, 4)
    assert_same(fused, getattr(fa, act)(fa.linear(x, w, b), **params), dtype)
    assert_ref(fused, act_ref(act, params, ref_linear(x, w, b)), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("act,params", FUSED, ids=FUSED_IDS)
def test_conv2d_fused_backward_equals_unfused(act, params, dtype):
    rng = np.random.default_rng(13)
    x, w, b = _conv_inputs(rng, dtype, N=3, C=3, H=7, W=6, K=4, kernel=3)
    y, z = fa.conv2d(x, w, b, 2, 1, activation=act, activation_params=params, return_preactivation=True)
    assert_same(z, fa.conv2d(x, w, b, 2, 1), dtype, "saved pre-activation")
    assert_same(y, fa.conv2d(x, w, b, 2, 1, activation=act, activation_params=params), dtype, "y")
    dy = rand(rng, y.shape, dtype)
    dx, dw, db = fa.conv2d_backward(dy, x, w, 2, 1, preactivation=z, activation=act, activation_params=params)
    dz = getattr(fa, f"{act}_backward")(dy, z, **params)
    for name, got, want in zip(("dx", "dweight", "dbias"), (dx, dw, db), fa.conv2d_backward(dz, x, w, 2, 1)):
        assert_same(got, want, dtype, name)
    # independent: table derivative reference + naive conv backward
    for got, want in zip((dx, dw, db), ref_conv2d_backward(dy * act_dref(act, params, z), x, w, 2, 1)):
        assert_ref(got, want, dtype)
    dx2, dw2, db2 = fa.conv2d_backward(dy, x, w, 2, 1, preactivation=z, activation=act,
                                       activation_params=params, need_input_grad=False)
    assert dx2 is None
    assert_same(dw2, dw, dtype)
    assert_same(db2, db, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("act,params", FUSED, ids=FUSED_IDS)
def test_linear_fused_backward_equals_unfused(act, params, dtype):
    rng = np.random.default_rng(14)
    x, w, b = rand(rng, (2, 3, 5), dtype), rand(rng, (4, 5), dtype), rand(rng, (4,), dtype)
    y, z = fa.linear(x, w, b, activation=act, activation_params=params, return_preactivation=True)
    assert_same(z, fa.linear(x, w, b), dtype, "saved pre-activation")
    assert_same(y, fa.linear(x, w, b, activation=act, activation_params=params), dtype, "y")
    dy = rand(rng, y.shape, dtype)
    dx, dw, db = fa.linear_backward(dy, x, w, preactivation=z, activation=act, activation_params=params)
    dz = getattr(fa, f"{act}_backward")(dy, z, **params)
    for name, got, want in zip(("dx", "dweight", "dbias"), (dx, dw, db), fa.linear_backward(dz, x, w)):
        assert_same(got, want, dtype, name)
    for got, want in zip((dx, dw, db), ref_linear_backward(dy * act_dref(act, params, z), x, w)):
        assert_ref(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_layer_backward_takes_any_layout_of_z_and_dy(dtype):
    # a saved pre-activation that went through a copy in another memory order must give the same
    # gradients (regression: a Fortran-order z made the conv kernel write into a temporary)
    rng = np.random.default_rng(18)
    x, w, b = _conv_inputs(rng, dtype, N=2, C=3, H=6, W=5, K=4, kernel=3)
    y, z = fa.conv2d(x, w, b, 1, 1, activation="relu", return_preactivation=True)
    dy = rand(rng, y.shape, dtype)
    want = ref_conv2d_backward(dy * act_dref("relu", {}, z), x, w, 1, 1)
    for zz, dd in ((np.asfortranarray(z), dy), (z, np.asfortranarray(dy)),
                   (np.asfortranarray(z), dy[:, ::-1][:, ::-1])):
        for got, r in zip(fa.conv2d_backward(dd, x, w, 1, 1, preactivation=zz, activation="relu"), want):
            assert_ref(got, r, dtype)
    xl, wl, bl = rand(rng, (5, 4), dtype), rand(rng, (3, 4), dtype), rand(rng, (3,), dtype)
    yl, zl = fa.linear(xl, wl, bl, activation="relu", return_preactivation=True)
    dyl = rand(rng, yl.shape, dtype)
    want = ref_linear_backward(dyl * act_dref("relu", {}, zl), xl, wl)
    for zz, dd in ((np.asfortranarray(zl), dyl), (zl, np.asfortranarray(dyl))):
        for got, r in zip(fa.linear_backward(dd, xl, wl, preactivation=zz, activation="relu"), want):
            assert_ref(got, r, dtype)


@pytest.mark.parametrize("act,params", [("gelu", dict(approximate="tanh")), ("silu", {}),
                                        ("relu", dict(negative_slope=0.1, max_value=1.5, threshold=-0.5))],
                         ids=["gelu-tanh", "silu", "relu-params"])
def test_fused_layers_gradcheck(act, params):
    """The whole fused layer (conv/linear + bias + activation) against finite differences."""
    rng = np.random.default_rng(15)
    x, w, b = _conv_inputs(rng, np.float64, N=2, C=2, H=5, W=4, K=3, kernel=3)

    def conv_fn(x, w, b):
        return fa.conv2d(x, w, b, (2, 1), 1, activation=act, activation_params=params)

    def conv_bwd(dy, x, w, b):
        _, z = fa.conv2d(x, w, b, (2, 1), 1, activation=act, activation_params=params,
                         return_preactivation=True)
        return fa.conv2d_backward(dy, x, w, (2, 1), 1, preactivation=z, activation=act,
                                  activation_params=params)

    assert fa.gradcheck(conv_fn, conv_bwd, (x, w, b))

    xl, wl, bl = rand(rng, (3, 5)), rand(rng, (4, 5)), rand(rng, (4,))

    def lin_bwd(dy, x, w, b):
        _, z = fa.linear(x, w, b, activation=act, activation_params=params, return_preactivation=True)
        return fa.linear_backward(dy, x, w, preactivation=z, activation=act, activation_params=params)

    assert fa.gradcheck(lambda x, w, b: fa.linear(x, w, b, activation=act, activation_params=params),
                        lin_bwd, (xl, wl, bl))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_relu_kink_in_fused_backward(dtype):
    # small integers: the conv is exact, and many pre-activations are exactly 0 (the kink)
    rng = np.random.default_rng(16)
    x = rng.integers(-2, 3, (2, 2, 5, 5)).astype(dtype)
    w = rng.integers(-1, 2, (3, 2, 3, 3)).astype(dtype)
    b = np.zeros(3, dtype)
    # im2col: its sums of small integers are exact (Winograd's transforms round: 1/6, 1/24)
    y, z = fa.conv2d(x, w, b, 1, 1, activation="relu", return_preactivation=True, algorithm="im2col")
    assert (z == 0).sum() > 10
    dy = rand(rng, z.shape, dtype)
    for bparams, at0 in (({}, 0.0), ({"subgradient": 0.5}, 0.5)):
        dz = dy * np.where(z > 0, 1.0, np.where(z < 0, 0.0, at0))   # ReLU'(0) = 0, or the subgradient
        got = fa.conv2d_backward(dy, x, w, 1, 1, preactivation=z, activation="relu",
                                 activation_params=bparams)
        for g, want in zip(got, ref_conv2d_backward(dz, x, w, 1, 1)):
            assert_ref(g, want, dtype)
        zl = z.reshape(-1, 3)[:20]
        dyl = dy.reshape(-1, 3)[:20]
        xl = rand(rng, (20, 4), dtype)
        wl = rand(rng, (3, 4), dtype)
        got = fa.linear_backward(dyl, xl, wl, preactivation=zl, activation="relu", activation_params=bparams)
        dzl = dyl * np.where(zl > 0, 1.0, np.where(zl < 0, 0.0, at0))
        for g, want in zip(got, ref_linear_backward(dzl, xl, wl)):
            assert_ref(g, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_return_preactivation(dtype):
    rng = np.random.default_rng(19)
    x, w, b = _conv_inputs(rng, dtype, N=2, C=3, H=6, W=5, K=4, kernel=3)
    xl, wl, bl = rand(rng, (2, 3, 5), dtype), rand(rng, (4, 5), dtype), rand(rng, (4,), dtype)
    for fn, args in ((fa.conv2d, (x, w, b, 2, 1)), (fa.linear, (xl, wl, bl))):
        plain = fn(*args)
        assert isinstance(plain, np.ndarray)
        # with an activation: z is the un-activated output, y the same as without return_preactivation
        y, z = fn(*args, activation="gelu", return_preactivation=True)
        assert_same(z, plain, dtype, f"{fn.__name__} z")
        assert_same(y, fn(*args, activation="gelu"), dtype, f"{fn.__name__} y")
        assert z is not y and not np.shares_memory(y, z)
        # without one, z is y itself: no copy
        y, z = fn(*args, return_preactivation=True)
        assert z is y
        assert_same(y, plain, dtype, f"{fn.__name__} identity")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("act", [None, "relu"])
def test_backward_need_input_grad_false(dtype, act):
    # need_input_grad=False returns dx None and the same parameter gradients, fused or not
    rng = np.random.default_rng(20)
    x, w, b = _conv_inputs(rng, dtype, N=3, C=3, H=7, W=6, K=4, kernel=3)
    y, z = fa.conv2d(x, w, b, 2, 1, activation=act, return_preactivation=True)
    dy = rand(rng, y.shape, dtype)
    kw = dict(preactivation=z, activation=act)
    full = fa.conv2d_backward(dy, x, w, 2, 1, **kw)
    part = fa.conv2d_backward(dy, x, w, 2, 1, need_input_grad=False, **kw)
    assert full[0] is not None and part[0] is None
    for got, want in zip(part[1:], full[1:]):
        assert_same(got, want, dtype)
    xl, wl, bl = rand(rng, (2, 3, 5), dtype), rand(rng, (4, 5), dtype), rand(rng, (4,), dtype)
    yl, zl = fa.linear(xl, wl, bl, activation=act, return_preactivation=True)
    dyl = rand(rng, yl.shape, dtype)
    kw = dict(preactivation=zl, activation=act)
    full = fa.linear_backward(dyl, xl, wl, **kw)
    part = fa.linear_backward(dyl, xl, wl, need_input_grad=False, **kw)
    assert full[0].shape == xl.shape and part[0] is None
    for got, want in zip(part[1:], full[1:]):
        assert_same(got, want, dtype)


def test_preactivation_is_ignored_without_activation():
    # without an activation dy already is the pre-activation gradient: preactivation plays no part
    rng = np.random.default_rng(21)
    x, w, b = _conv_inputs(rng, np.float64, N=2, C=2, H=5, W=5, K=3, kernel=3)
    dy = rand(rng, (2, 3, 3, 3))
    for got, want in zip(fa.conv2d_backward(dy, x, w, preactivation=np.full(dy.shape, np.nan)),
                         fa.conv2d_backward(dy, x, w)):
        assert_same(got, want, np.float64)


# ---------------------------------------------------------------------------------- tiling

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("images_per_tile", [1, 2])
def test_conv2d_multi_tile_equals_single_tile(monkeypatch, dtype, images_per_tile):
    rng = np.random.default_rng(17)
    x, w, b = _conv_inputs(rng, dtype, N=5, C=3, H=7, W=6, K=4, kernel=3)
    stride, padding, act, params = (1, 2), 1, "leaky_relu", {"negative_slope": 0.2}
    N, K, P, Q = conv_output_shape(x.shape, w.shape, stride, padding)
    dy = rand(rng, (N, K, P, Q), dtype)
    # one image's column buffer (C*R*S, P*Q); tiles hold as many images as config's budget allows
    image_bytes = 3 * 9 * P * Q * np.dtype(dtype).itemsize
    assert fa.config.CONV_WORKSPACE_BYTES >= N * image_bytes  # the default budget holds the whole batch

    def run():
        y, z = fa.conv2d(x, w, b, stride, padding, activation=act, activation_params=params,
                         return_preactivation=True)
        plain = fa.conv2d(x, w, b, stride, padding)
        bwd = fa.conv2d_backward(dy, x, w, stride, padding)
        layer = fa.conv2d_backward(dy, x, w, stride, padding, preactivation=z, activation=act,
                                   activation_params=params)
        return (y, z, plain, *bwd, *layer)

    single = run()
    # images_per_tile images per tile; 5 images leave a remainder tile too
    monkeypatch.setattr(fa.config, "CONV_WORKSPACE_BYTES", images_per_tile * image_bytes)
    tiled = run()
    for i, (t, s) in enumerate(zip(tiled, single)):
        assert_same(t, s, dtype, f"output {i}")
    assert_ref(tiled[2], ref_conv2d(x, w, b, stride, padding), dtype)
    for t, r in zip(tiled[3:6], ref_conv2d_backward(dy, x, w, stride, padding)):
        assert_ref(t, r, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("images_per_tile", [1, 2, 5])
@pytest.mark.parametrize("act,params", [(None, None), ("gelu", None), ("relu", {"max_value": 1.0})])
def test_conv2d_gemm_into_output_equals_gemm_buffer(monkeypatch, dtype, images_per_tile, act, params):
    # the two forward paths: one GEMM per image straight into y (large images) and one GEMM per tile
    # into a buffer (small images), selected by config.CONV_GEMM_INTO_OUTPUT_MIN_PQ
    rng = np.random.default_rng(18)
    x, w, b = _conv_inputs(rng, dtype, N=5, C=3, H=7, W=6, K=4, kernel=3)
    N, K, P, Q = conv_output_shape(x.shape, w.shape, 1, 1)
    monkeypatch.setattr(fa.config, "CONV_WORKSPACE_BYTES", images_per_tile * 27 * P * Q *
                        np.dtype(dtype).itemsize)
    outs = {}
    for min_pq in (1, 10 ** 9):
        monkeypatch.setattr(fa.config, "CONV_GEMM_INTO_OUTPUT_MIN_PQ", min_pq)
        outs[min_pq] = fa.conv2d(x, w, b, 1, 1, activation=act, activation_params=params,
                                 return_preactivation=True)
    (y1, z1), (y2, z2) = outs[1], outs[10 ** 9]
    assert_same(y1, y2, dtype, "y")
    assert_same(z1, z2, dtype, "z")
    assert_ref(z1, ref_conv2d(x, w, b, 1, 1), dtype)


@pytest.mark.skipif(not fa.system.info()["conv GEMM"].startswith("nopython"), reason="no nopython BLAS")
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("geometry", [(1, 1, 9, 8), ((1, 2), (2, 1), 9, 11), ((2, 1), (0, 1), 12, 7)],
                         ids=["same-width", "strided", "vertical-stride"])
@pytest.mark.parametrize("act,params", [(None, None), ("relu", None), ("relu", {"negative_slope": 0.1}),
                                        ("threshold", {"threshold": 0.25, "value": -1.0}), ("gelu", None)])
def test_conv2d_fused_row_bands(monkeypatch, dtype, geometry, act, params):
    # the fused kernels split one-image chunks into bands of output rows
    # (config.CONV_BAND_BYTES_PER_CHANNEL); every band count, uneven last bands included, gives the
    # NumPy path's gradients (up to the order of the float32 sums) and the float64 reference's, and the
    # forward the unbanded output
    stride, padding, H, W = geometry
    rng = np.random.default_rng(19)
    x, w, b = _conv_inputs(rng, dtype, N=3, C=3, H=H, W=W, K=4, kernel=3)
    y, z = fa.conv2d(x, w, b, stride, padding, activation=act, activation_params=params,
                     return_preactivation=True)
    dy = rand(rng, y.shape, dtype)
    if act is not None:
        dy[0, 0, 0, :2] = 1.0
        z[0, 0, 0, :2] = (0.0, 0.25)  # the kinks of relu and threshold (exact in float32 too)

    def grads(need_input_grad=True):
        return fa.conv2d_backward(dy, x, w, stride, padding, preactivation=z, activation=act,
                                  activation_params=params, need_input_grad=need_input_grad)

    dz = dy if act is None else dy * act_dref(act, params or {}, z)
    ref = ref_conv2d_backward(dz, x, w, stride, padding)
    monkeypatch.setattr(fa.config, "CONV_NOPYTHON_GEMM", False)
    numpy_path = grads()
    monkeypatch.setattr(fa.config, "CONV_NOPYTHON_GEMM", True)
    monkeypatch.setattr(fa.config, "CONV_CHUNK_MIN_COLUMNS", 1)  # one image per chunk
    P = y.shape[2]
    image = 27 * P * y.shape[3] * np.dtype(dtype).itemsize  # the column buffer of one image
    for nbands in (1, 2, 3, P):
        # K = 4 output channels: the budget per channel that gives this many bands
        monkeypatch.setattr(fa.config, "CONV_BAND_BYTES_PER_CHANNEL", -(-image // (4 * nbands)))
        if nbands > 1:
            y2, z2 = fa.conv2d(x, w, b, stride, padding, activation=act, activation_params=params,
                               return_preactivation=True)  # the forward goes by the same bands
            assert_ref(y2, y.astype(np.float64), dtype, f"forward y, {nbands} bands")
            assert_ref(z2, ref_conv2d(x, w, b, stride, padding), dtype, f"forward z, {nbands} bands")
        for name, got, a, r in zip(("dx", "dweight", "dbias"), grads(), numpy_path, ref):
            assert_ref(got, a.astype(np.float64), dtype, f"{name}, {nbands} bands, NumPy path")
            assert_ref(got, r, dtype, f"{name}, {nbands} bands")
        dx, dw, db = grads(need_input_grad=False)
        assert dx is None
        assert_ref(dw, ref[1], dtype, f"dweight without dx, {nbands} bands")
        assert_ref(db, ref[2], dtype, f"dbias without dx, {nbands} bands")


@pytest.mark.skipif(not fa.system.info()["conv GEMM"].startswith("nopython"), reason="no nopython BLAS")
@pytest.mark.parametrize("kernel,stride,padding", GRID, ids=GRID_IDS)
def test_conv2d_gather_maps_equal_row_copies(monkeypatch, kernel, stride, padding):
    # the two ways of building the column buffer of multi-image chunks (config.CONV_GATHER_MAX_Q):
    # the same buffer, so bit for bit the same forward and backward
    rng = np.random.default_rng(20)
    x, w, b = _conv_inputs(rng, np.float32, N=5, C=3, H=7, W=6, K=4, kernel=kernel)
    try:
        shape = conv_output_shape(x.shape, w.shape, stride, padding)
    except ValueError:
        pytest.skip("the kernel does not fit")
    dy = rand(rng, shape, np.float32)
    out = {}
    for gmax in (0, 10 ** 6):
        monkeypatch.setattr(fa.config, "CONV_GATHER_MAX_Q", gmax)
        y, z = fa.conv2d(x, w, b, stride, padding, activation="relu", return_preactivation=True)
        out[gmax] = (y, z, *fa.conv2d_backward(dy, x, w, stride, padding, preactivation=z, activation="relu"))
    for a, c in zip(out[0], out[10 ** 6]):
        np.testing.assert_array_equal(a, c)
    assert_ref(out[0][1], ref_conv2d(x, w, b, stride, padding), np.float32)


# ---------------------------------------------------------------------------------- max_pool2d

POOL_GRID = GRID + [(2, None, 0), (2, None, 1), ((3, 2), (1, 2), (1, 0))]
POOL_IDS = GRID_IDS + ["k2-default-stride", "k2-default-stride-p1", "k3x2-s1x2-p1x0"]


def _pool_valid(H, W, k, p):
    (kh, kw), (ph, pw) = _pair(k), _pair(p)
    return 2 * ph <= kh and 2 * pw <= kw and kh <= H + 2 * ph and kw <= W + 2 * pw


def _distinct(rng, shape, dtype=np.float64):
    """Distinct values 0.1 apart, shuffled: a finite-difference step never changes a window's winner."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2) * 0.1).reshape(shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("kernel,stride,padding", POOL_GRID, ids=POOL_IDS)
def test_max_pool2d_matches_naive_loops(kernel, stride, padding, dtype):
    rng = np.random.default_rng(21)
    x = rand(rng, (2, 3, 7, 6), dtype) - 3.0  # mostly negative: a zero padding would win and show
    if not _pool_valid(7, 6, kernel, padding):
        with pytest.raises(ValueError, match="padding|larger"):
            fa.max_pool2d(x, kernel, stride, padding)
        return
    y = fa.max_pool2d(x, kernel, stride, padding)
    assert_ref(y, ref_max_pool2d(x, kernel, stride, padding), dtype)
    dy = rand(rng, y.shape, dtype)
    assert_ref(fa.max_pool2d_backward(dy, x, kernel, stride, padding),
               ref_max_pool2d_backward(dy, x, kernel, stride, padding), dtype)


@pytest.mark.parametrize("kernel,stride,padding", POOL_GRID, ids=POOL_IDS)
def test_max_pool2d_gradcheck(kernel, stride, padding):
    rng = np.random.default_rng(22)
    x = _distinct(rng, (2, 2, 5, 4))
    if not _pool_valid(5, 4, kernel, padding):
        with pytest.raises(ValueError):
            fa.max_pool2d(x, kernel, stride, padding)
        return
    assert fa.gradcheck(lambda x: fa.max_pool2d(x, kernel, stride, padding),
                        lambda dy, x: fa.max_pool2d_backward(dy, x, kernel, stride, padding), (x,))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_max_pool2d_ties_go_to_first_max(dtype):
    x = np.zeros((1, 1, 4, 4), dtype)
    x[0, 0, :2, :2] = [[1, 3], [3, 3]]       # window (0, 0): max 3 first at (0, 1)
    x[0, 0, :2, 2:] = 5                       # window (0, 1): all equal, first is (0, 2)
    x[0, 0, 2:, :2] = [[-1, -2], [-1, -1]]    # window (1, 0): first is (2, 0)
    x[0, 0, 2:, 2:] = [[0, 2], [2, 1]]        # window (1, 1): first is (2, 3)
    y = fa.max_pool2d(x, 2)
    np.testing.assert_array_equal(y[0, 0], [[3, 5], [-1, 2]])
    dy = np.array([[[[10, 20], [30, 40]]]], dtype)
    dx = fa.max_pool2d_backward(dy, x, 2)
    want = np.zeros((4, 4))
    want[0, 1], want[0, 2], want[2, 0], want[2, 3] = 10, 20, 30, 40
    assert dx.dtype == dtype
    np.testing.assert_array_equal(dx[0, 0], want)
    # overlapping windows (stride 1) on random small integers: many ties, compared with the reference
    rng = np.random.default_rng(23)
    xi = rng.integers(0, 3, (2, 2, 6, 5)).astype(dtype)
    dyi = rand(rng, fa.max_pool2d(xi, 3, 1, 1).shape, dtype)
    assert_ref(fa.max_pool2d_backward(dyi, xi, 3, 1, 1), ref_max_pool2d_backward(dyi, xi, 3, 1, 1), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_max_pool2d_nan_and_inf(dtype):
    x = np.arange(16, dtype=dtype).reshape(1, 1, 4, 4)
    x[0, 0, 1, 0] = np.nan                    # window (0, 0): NaN beats 5
    x[0, 0, 2, 3] = np.nan                    # window (1, 1): two NaNs, the first gets the gradient
    x[0, 0, 3, 2] = np.nan
    x[0, 0, 0, 2:] = -np.inf                  # window (0, 1): -inf present, max is finite
    x[0, 0, 2:, :2] = -np.inf                 # window (1, 0): all -inf: -inf, gradient to the first
    y = fa.max_pool2d(x, 2)
    assert np.isnan(y[0, 0, 0, 0]) and np.isnan(y[0, 0, 1, 1])
    assert y[0, 0, 0, 1] == 7 and y[0, 0, 1, 0] == -np.inf
    dx = fa.max_pool2d_backward(np.ones_like(y), x, 2)
    want = np.zeros((4, 4))
    want[1, 0] = want[2, 3] = want[1, 3] = want[2, 0] = 1
    np.testing.assert_array_equal(dx[0, 0], want)
    np.testing.assert_array_equal(y, ref_max_pool2d(x, 2))
    # padding is -inf, never 0: all-negative input with padding keeps negative maxima
    xn = -1.0 - np.arange(30, dtype=dtype).reshape(1, 1, 5, 6)
    yn = fa.max_pool2d(xn, 3, 2, 1)
    assert (yn < 0).all()
    assert_ref(yn, ref_max_pool2d(xn, 3, 2, 1), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_max_pool2d_2x2_fast_path_equals_general_kernel(dtype):
    from fastact import pool
    rng = np.random.default_rng(24)
    x = rng.integers(-2, 3, (3, 4, 9, 7)).astype(dtype)  # odd sizes, many ties
    x[rng.random(x.shape) < 0.05] = np.nan
    x[rng.random(x.shape) < 0.05] = -np.inf
    y = fa.max_pool2d(x, 2)
    y_gen = np.empty_like(y)
    pool._max_pool_forward(x, 2, 2, 2, 2, 0, 0, y_gen)
    np.testing.assert_array_equal(y, y_gen)
    dy = rand(rng, y.shape, dtype)
    dx_gen = np.zeros_like(x)
    pool._max_pool_backward(dy, x, 2, 2, 2, 2, 0, 0, dx_gen)
    np.testing.assert_array_equal(fa.max_pool2d_backward(dy, x, 2), dx_gen)


# ------------------------------------------------------------------------------------ linear

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("xshape", [(4, 6), (2, 3, 6), (6,)], ids=["2d", "3d", "1d"])
def test_linear_matches_naive_loops(xshape, dtype):
    rng = np.random.default_rng(31)
    x, w, b = rand(rng, xshape, dtype), rand(rng, (5, 6), dtype), rand(rng, (5,), dtype)
    assert_ref(fa.linear(x, w, b), ref_linear(x, w, b), dtype)
    assert_ref(fa.linear(x, w), ref_linear(x, w), dtype)
    dy = rand(rng, xshape[:-1] + (5,), dtype)
    for got, want in zip(fa.linear_backward(dy, x, w), ref_linear_backward(dy, x, w)):
        assert_ref(got, want, dtype)
    # a transposed (Fortran-order) weight view gives the same
    assert_ref(fa.linear(x, np.asfortranarray(w), b), ref_linear(x, w, b), dtype)


@pytest.mark.parametrize("xshape", [(3, 5), (2, 2, 5)], ids=["2d", "3d"])
def test_linear_gradcheck(xshape):
    rng = np.random.default_rng(32)
    x, w, b = rand(rng, xshape), rand(rng, (4, 5)), rand(rng, (4,))
    assert fa.gradcheck(lambda x, w, b: fa.linear(x, w, b),
                        lambda dy, x, w, b: fa.linear_backward(dy, x, w), (x, w, b))


# ---------------------------------------------------------------------------------- cross-entropy

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_cross_entropy_matches_reference(dtype):
    rng = np.random.default_rng(41)
    logits = (3 * rng.standard_normal((6, 5))).astype(dtype)
    target = rng.integers(0, 5, 6)
    loss = fa.cross_entropy(logits, target)
    assert isinstance(loss, float)
    t = tol(dtype, "layer")
    assert loss == pytest.approx(ref_cross_entropy(logits, target), rel=t["rtol"], abs=t["atol"])
    assert_ref(fa.cross_entropy_backward(logits, target), ref_cross_entropy_backward(logits, target), dtype)
    # large logits: no overflow (log-sum-exp with the row maximum)
    big = logits * 300
    assert math.isfinite(fa.cross_entropy(big, target))
    assert fa.cross_entropy(big, target) == pytest.approx(ref_cross_entropy(big, target), rel=1e-4)
    assert_ref(fa.cross_entropy_backward(big, target), ref_cross_entropy_backward(big, target), dtype)
    # unsigned and int32 labels are labels too
    assert fa.cross_entropy(logits, target.astype(np.uint8)) == loss
    assert fa.cross_entropy(logits, target.astype(np.int32)) == loss


def test_cross_entropy_gradcheck():
    rng = np.random.default_rng(42)
    logits, target = rand(rng, (4, 6)), rng.integers(0, 6, 4)
    assert fa.gradcheck(lambda l, t: fa.cross_entropy(l, t),
                        lambda dy, l, t: (dy * fa.cross_entropy_backward(l, t), None), (logits, target))


@pytest.mark.parametrize("bad", [np.array([0, 5, 1]), np.array([0, -1, 1]), np.array([7, 7, 7])],
                         ids=["too-large", "negative", "all-out"])
def test_cross_entropy_label_out_of_range(bad):
    logits = np.zeros((3, 5))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        fa.cross_entropy(logits, bad)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        fa.cross_entropy_backward(logits, bad)


def test_cross_entropy_bad_labels():
    logits = np.zeros((3, 5))
    for t in (np.array([0.0, 1.0, 2.0]), np.array([True, False, True])):
        with pytest.raises(TypeError, match=str(t.dtype)):
            fa.cross_entropy(logits, t)
        with pytest.raises(TypeError):
            fa.cross_entropy_backward(logits, t)
    with pytest.raises(ValueError, match=re.escape("(2,)")):
        fa.cross_entropy(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match=re.escape("(5,)")):
        fa.cross_entropy(np.zeros(5), np.array([0]))


# ------------------------------------------------------------------------------- bad input

def _bad_cases():
    x = np.zeros((2, 3, 5, 5))
    w = np.zeros((4, 3, 3, 3))
    return [
        ("conv-channels", lambda: fa.conv2d(x, np.zeros((4, 2, 3, 3))), ["(2, 3, 5, 5)", "(4, 2, 3, 3)"]),
        ("conv-kernel-too-large", lambda: fa.conv2d(x, np.zeros((4, 3, 6, 6))), ["6x6", "5x5", "(2, 3, 5, 5)"]),
        ("conv-kernel-too-large-padded", lambda: fa.conv2d(x, np.zeros((4, 3, 8, 3)), padding=1),
         ["8x3", "7x7"]),
        ("conv-x-2d", lambda: fa.conv2d(np.zeros((5, 5)), w), ["(5, 5)"]),
        ("conv-w-3d", lambda: fa.conv2d(x, np.zeros((3, 3, 3))), ["(3, 3, 3)"]),
        ("conv-unknown-activation", lambda: fa.conv2d(x, w, activation="nope"), ["'nope'"]),
        ("conv-unknown-param", lambda: fa.conv2d(x, w, activation="relu", activation_params={"alpha": 1}),
         ["alpha"]),
        ("conv-params-without-activation", lambda: fa.conv2d(x, w, activation_params={"a": 1}), ["activation"]),
        ("conv-bias-shape", lambda: fa.conv2d(x, w, np.zeros(3)), ["(3,)", "(4,)"]),
        ("conv-bias-2d", lambda: fa.conv2d(x, w, np.zeros((4, 1))), ["(4, 1)"]),
        ("conv-negative-padding", lambda: fa.conv2d(x, w, padding=-1), ["-1"]),
        ("conv-zero-stride", lambda: fa.conv2d(x, w, stride=0), ["0"]),
        ("conv-stride-triple", lambda: fa.conv2d(x, w, stride=(1, 1, 1)), ["(1, 1, 1)"]),
        ("conv-backward-dy", lambda: fa.conv2d_backward(np.zeros((2, 4, 5, 5)), x, w), ["(2, 4, 5, 5)",
                                                                                        "(2, 4, 3, 3)"]),
        ("conv-backward-channels", lambda: fa.conv2d_backward(np.zeros((2, 4, 3, 3)), x, np.zeros((4, 2, 3, 3))),
         ["(4, 2, 3, 3)"]),
        ("conv-backward-no-preactivation",
         lambda: fa.conv2d_backward(np.zeros((2, 4, 3, 3)), x, w, activation="relu"),
         ["preactivation", "(2, 4, 3, 3)"]),
        ("conv-backward-preactivation-shape",
         lambda: fa.conv2d_backward(np.zeros((2, 4, 3, 3)), x, w, preactivation=np.zeros((2, 4, 9)),
                                    activation="relu"), ["preactivation", "(2, 4, 9)", "(2, 4, 3, 3)"]),
        ("conv-backward-params-without-activation",
         lambda: fa.conv2d_backward(np.zeros((2, 4, 3, 3)), x, w, activation_params={"subgradient": 1}),
         ["activation"]),
        ("conv-backward-unknown-param",
         lambda: fa.conv2d_backward(np.zeros((2, 4, 3, 3)), x, w, preactivation=np.zeros((2, 4, 3, 3)),
                                    activation="relu", activation_params={"alpha": 1}), ["alpha"]),
        ("pool-2d", lambda: fa.max_pool2d(np.zeros((5, 5))), ["(5, 5)"]),
        ("pool-window-too-large", lambda: fa.max_pool2d(x, 7), ["7x7", "(2, 3, 5, 5)"]),
        ("pool-padding-over-half", lambda: fa.max_pool2d(x, 2, 1, 2), ["2"]),
        ("pool-backward-dy", lambda: fa.max_pool2d_backward(np.zeros((2, 3, 3, 3)), x, 2), ["(2, 3, 3, 3)",
                                                                                           "(2, 3, 2, 2)"]),
        ("linear-features", lambda: fa.linear(np.zeros((2, 5)), np.zeros((3, 4))), ["(2, 5)", "(3, 4)"]),
        ("linear-w-1d", lambda: fa.linear(np.zeros((2, 5)), np.zeros(5)), ["(5,)"]),
        ("linear-bias", lambda: fa.linear(np.zeros((2, 4)), np.zeros((3, 4)), np.zeros(4)), ["(4,)", "(3,)"]),
        ("linear-unknown-activation", lambda: fa.linear(np.zeros((2, 4)), np.zeros((3, 4)), activation="relu7"),
         ["'relu7'"]),
        ("linear-backward-dy", lambda: fa.linear_backward(np.zeros((2, 4)), np.zeros((2, 4)), np.zeros((3, 4))),
         ["(2, 4)", "(2, 3)"]),
        ("linear-backward-no-preactivation",
         lambda: fa.linear_backward(np.zeros((2, 3)), np.zeros((2, 4)), np.zeros((3, 4)), activation="gelu"),
         ["preactivation", "(2, 3)"]),
        ("linear-backward-preactivation-shape",
         lambda: fa.linear_backward(np.zeros((2, 3)), np.zeros((2, 4)), np.zeros((3, 4)),
                                    preactivation=np.zeros((3, 2)), activation="gelu"),
         ["preactivation", "(3, 2)", "(2, 3)"]),
    ]


_BAD = _bad_cases()


@pytest.mark.parametrize("i", range(len(_BAD)), ids=[c[0] for c in _BAD])
def test_bad_input_raises_value_error_naming_shapes(i):
    _, call, fragments = _BAD[i]
    with pytest.raises(ValueError) as info:
        call()
    for frag in fragments:
        assert frag in str(info.value), f"{frag!r} not in {str(info.value)!r}"


def test_non_integer_stride_is_a_type_error():
    with pytest.raises(TypeError, match="stride"):
        fa.conv2d(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3)), stride="a")
    with pytest.raises(TypeError, match="stride"):  # PyTorch rejects it too; never truncate to 1
        fa.conv2d(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3)), stride=1.5)
    with pytest.raises(TypeError, match="kernel_size"):
        fa.max_pool2d(np.zeros((1, 1, 4, 4)), kernel_size=(2, 2.5))
    assert fa.conv2d(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3)), stride=2.0).shape == (1, 1, 1, 1)


# -------------------------------------------------------------------------------------- dtypes

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_results_keep_their_dtype(dtype):
    rng = np.random.default_rng(51)
    x, w, b = _conv_inputs(rng, dtype, N=2, C=2, H=5, W=5, K=3, kernel=3)
    y = fa.conv2d(x, w, b, 1, 1, activation="gelu")
    assert y.dtype == dtype
    assert all(g.dtype == dtype for g in fa.conv2d_backward(y, x, w, 1, 1))
    yz = fa.conv2d(x, w, b, 1, 1, activation="relu", return_preactivation=True)
    assert all(a.dtype == dtype for a in yz)
    assert all(g.dtype == dtype
               for g in fa.conv2d_backward(y, x, w, 1, 1, preactivation=yz[1], activation="relu"))
    p = fa.max_pool2d(x, 2)
    assert p.dtype == dtype and fa.max_pool2d_backward(p, x, 2).dtype == dtype
    xl, wl, bl = rand(rng, (3, 4), dtype), rand(rng, (2, 4), dtype), rand(rng, (2,), dtype)
    yl = fa.linear(xl, wl, bl, activation="silu")
    assert yl.dtype == dtype
    assert all(g.dtype == dtype for g in fa.linear_backward(yl, xl, wl))
    assert fa.cross_entropy_backward(yl, np.array([0, 1, 1])).dtype == dtype
    assert isinstance(fa.cross_entropy(yl, np.array([0, 1, 1])), float)


def test_mixed_and_integer_dtypes_follow_numpy_casting():
    rng = np.random.default_rng(52)
    x32 = rand(rng, (1, 2, 4, 4), np.float32)
    w64 = rand(rng, (2, 2, 3, 3))
    assert fa.conv2d(x32, w64).dtype == np.float64
    assert fa.conv2d(x32, w64.astype(np.float32), w64[:, 0, 0, 0]).dtype == np.float64
    xi = rng.integers(-3, 4, (1, 2, 4, 4))
    y = fa.conv2d(xi, w64.astype(np.float32))
    assert y.dtype == np.float64
    assert_ref(y, ref_conv2d(xi, w64.astype(np.float32)), np.float64)
    assert fa.max_pool2d(xi).dtype == np.float64
    np.testing.assert_array_equal(fa.max_pool2d(xi), ref_max_pool2d(xi))
    assert fa.linear(np.ones((2, 3), np.int32), np.ones((4, 3), np.float32)).dtype == np.float64


# -------------------------------------------------------------------------------------- PyTorch



@pytest.mark.parametrize("kernel,stride,padding", GRID + EXTRA, ids=GRID_IDS + EXTRA_IDS)
def test_conv2d_matches_torch(kernel, stride, padding):
    torch = torch_or_skip()
    F = torch.nn.functional
    rng = np.random.default_rng(61)
    x, w, b = _conv_inputs(rng, np.float64, N=2, C=3, H=7, W=6, K=4, kernel=kernel)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = F.conv2d(tx, tw, tb, stride=stride, padding=padding)
    y = fa.conv2d(x, w, b, stride, padding)
    assert_ref(y, ty.detach().numpy(), np.float64)
    dy = rand(rng, y.shape)
    ty.backward(torch.tensor(dy))
    for name, got, t in zip(("dx", "dweight", "dbias"), fa.conv2d_backward(dy, x, w, stride, padding),
                            (tx, tw, tb)):
        assert_ref(got, t.grad.numpy(), np.float64, name)


@pytest.mark.parametrize("act,params,tfn", [
    ("relu", {}, lambda F, z: F.relu(z)),
    ("leaky_relu", dict(negative_slope=0.2), lambda F, z: F.leaky_relu(z, 0.2)),
    ("gelu", dict(approximate="tanh"), lambda F, z: F.gelu(z, approximate="tanh")),
    ("gelu", {}, lambda F, z: F.gelu(z)),
    ("hardtanh", dict(min_val=-2.0, max_val=0.5), lambda F, z: F.hardtanh(z, -2.0, 0.5)),
], ids=["relu", "leaky_relu", "gelu-tanh", "gelu-erf", "hardtanh"])
def test_fused_layers_match_torch(act, params, tfn):
    torch = torch_or_skip()
    F = torch.nn.functional
    rng = np.random.default_rng(62)
    x, w, b = _conv_inputs(rng, np.float64, N=2, C=3, H=7, W=6, K=4, kernel=3)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = tfn(F, F.conv2d(tx, tw, tb, stride=2, padding=1))
    y, z = fa.conv2d(x, w, b, 2, 1, activation=act, activation_params=params, return_preactivation=True)
    assert_ref(y, ty.detach().numpy(), np.float64)
    dy = rand(rng, y.shape)
    ty.backward(torch.tensor(dy))
    got = fa.conv2d_backward(dy, x, w, 2, 1, preactivation=z, activation=act, activation_params=params)
    for g, t in zip(got, (tx, tw, tb)):
        assert_ref(g, t.grad.numpy(), np.float64)
    # linear
    xl, wl, bl = rand(rng, (2, 3, 5)), rand(rng, (4, 5)), rand(rng, (4,))
    txl, twl, tbl = (torch.tensor(a, requires_grad=True) for a in (xl, wl, bl))
    tyl = tfn(F, F.linear(txl, twl, tbl))
    yl, zl = fa.linear(xl, wl, bl, activation=act, activation_params=params, return_preactivation=True)
    assert_ref(yl, tyl.detach().numpy(), np.float64)
    dyl = rand(rng, yl.shape)
    tyl.backward(torch.tensor(dyl))
    got = fa.linear_backward(dyl, xl, wl, preactivation=zl, activation=act, activation_params=params)
    for g, t in zip(got, (txl, twl, tbl)):
        assert_ref(g, t.grad.numpy(), np.float64)


@pytest.mark.parametrize("kernel,stride,padding", POOL_GRID, ids=POOL_IDS)
def test_max_pool2d_matches_torch(kernel, stride, padding):
    torch = torch_or_skip()
    rng = np.random.default_rng(63)
    if not _pool_valid(7, 6, kernel, padding):  # padding over half the window: both refuse it
        x = rand(rng, (2, 3, 7, 6))
        with pytest.raises(RuntimeError, match="half"):
            torch.nn.functional.max_pool2d(torch.tensor(x), kernel, stride, padding)
        with pytest.raises(ValueError, match="half"):
            fa.max_pool2d(x, kernel, stride, padding)
        return
    for x in (rand(rng, (2, 3, 7, 6)), rng.integers(0, 3, (2, 3, 7, 6)).astype(np.float64)):  # 2nd: ties
        tx = torch.tensor(x, requires_grad=True)
        ty = torch.nn.functional.max_pool2d(tx, kernel, stride, padding)
        y = fa.max_pool2d(x, kernel, stride, padding)
        assert_ref(y, ty.detach().numpy(), np.float64)
        dy = rand(rng, y.shape)
        ty.backward(torch.tensor(dy))
        assert_ref(fa.max_pool2d_backward(dy, x, kernel, stride, padding), tx.grad.numpy(), np.float64)


def test_linear_and_cross_entropy_match_torch():
    torch = torch_or_skip()
    F = torch.nn.functional
    rng = np.random.default_rng(64)
    x, w, b = rand(rng, (2, 3, 5)), rand(rng, (4, 5)), rand(rng, (4,))
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = F.linear(tx, tw, tb)
    assert_ref(fa.linear(x, w, b), ty.detach().numpy(), np.float64)
    dy = rand(rng, ty.shape)
    ty.backward(torch.tensor(dy))
    for g, t in zip(fa.linear_backward(dy, x, w), (tx, tw, tb)):
        assert_ref(g, t.grad.numpy(), np.float64)
    logits, target = 4 * rand(rng, (7, 5)), rng.integers(0, 5, 7)
    tl = torch.tensor(logits, requires_grad=True)
    loss = F.cross_entropy(tl, torch.tensor(target))
    assert fa.cross_entropy(logits, target) == pytest.approx(loss.item(), rel=1e-12, abs=1e-12)
    loss.backward()
    assert_ref(fa.cross_entropy_backward(logits, target), tl.grad.numpy(), np.float64)


# ----------------------------------------------------------------------- conv building blocks


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (2, 2, 0), ((3, 2), (2, 1), (1, 0)), (1, 1, 0)])
def test_im2col_and_gemm_epilogue_compose_conv2d(kernel, stride, padding, dtype):
    rng = np.random.default_rng(40)
    x = rng.standard_normal((3, 2, 7, 6)).astype(dtype)
    R, S = (kernel, kernel) if isinstance(kernel, int) else kernel
    w = rng.standard_normal((4, 2, R, S)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    N, K, P, Q = fa.conv_output_shape(x.shape, w.shape, stride, padding)
    col = fa.im2col(x, kernel, stride, padding)
    assert col.shape == (2 * R * S, N * P * Q) and col.dtype == dtype
    # against the definition, written with explicit padding and loops
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ref = np.empty_like(col)
    for c in range(2):
        for r in range(R):
            for s in range(S):
                ref[(c * R + r) * S + s] = xp[:, c, r:r + sh * P:sh, s:s + sw * Q:sw].reshape(-1)
    np.testing.assert_array_equal(col, ref)
    g = (w.reshape(K, -1) @ col).reshape(K, N, P * Q)
    y = np.empty((N, K, P * Q), dtype)
    fa.gemm_epilogue(g, b, y, activation="leaky_relu", activation_params={"negative_slope": 0.2})
    want = fa.conv2d(x, w, b, stride, padding, activation="leaky_relu", activation_params={"negative_slope": 0.2},
                     algorithm="im2col")  # the stages compose the im2col method, rounding included
    np.testing.assert_allclose(y.reshape(N, K, P, Q), want, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-5 if dtype == np.float32 else 1e-12)
    assert 1 <= fa.conv.images_per_tile(x.shape, w.shape, stride, padding, dtype) <= N


def test_building_blocks_reject_bad_input():
    x = np.ones((2, 3, 5, 5))
    with pytest.raises(TypeError, match="contiguous"):
        fa.im2col(x[:, :, ::2], 3)
    with pytest.raises(ValueError, match="out must be"):
        fa.im2col(x, 3, out=np.empty((5, 5)))
    with pytest.raises(ValueError, match="kernel"):
        fa.im2col(x, 7)
    with pytest.raises(ValueError, match="gemm_epilogue"):
        fa.gemm_epilogue(np.ones((2, 3, 4)), np.ones(3), np.empty((3, 2, 4)))
