"""Depthwise convolution's channels-last kernels (fastact.depthwise) and BatchNorm2d's fused ReLU6: the
unit of MobileNetV2 (depthwise 3x3 + BatchNorm + ReLU6), forward and backward.

References: a float64 depthwise convolution written here from the definition (a sum over the taps of
the input's strided slices, only where the tap lies inside the image), a float64 BatchNorm + clip,
PyTorch when installed, and finite differences for the fused BatchNorm-ReLU6.
"""

import numpy as np
import pytest

import fastact as fa
from fastact import batchnorm, depthwise

from conftest import tol, torch_or_skip

DTYPES = (np.float32, np.float64)


# ------------------------------------------------------------------------------------------ references

def _out(n, k, stride, pad0, pad1, dil):
    return (n + pad0 + pad1 - dil * (k - 1) - 1) // stride + 1


def ref_depthwise(x, w, stride, pads, dil):
    """(y, backward) of the depthwise convolution in float64: ``y[n, k, p, q] = sum_{r, s} w[k, 0, r, s] *
    x[n, k // m, p*sh - pt + r*dh, q*sw - pl + s*dw]`` over the taps inside the image; ``backward(dz)``
    gives (dx, dw, db), every product taken only where the tap is inside the image (a NaN or inf
    anywhere else never enters)."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    m = K // C
    (sh, sw), (pt, pb, pl, pr), (dh, dw) = stride, pads, dil
    P, Q = _out(H, R, sh, pt, pb, dh), _out(W, S, sw, pl, pr, dw)
    xk = np.repeat(x, m, axis=1)  # input channel of each output channel

    def taps():
        for r in range(R):
            for s in range(S):
                h = np.arange(P) * sh - pt + r * dh
                v = np.arange(Q) * sw - pl + s * dw
                hi, vi = (h >= 0) & (h < H), (v >= 0) & (v < W)
                yield r, s, np.nonzero(hi)[0], h[hi], np.nonzero(vi)[0], v[vi]

    y = np.zeros((N, K, P, Q))
    with np.errstate(invalid="ignore"):   # inf - inf where the tests put infs
        for r, s, p, h, q, v in taps():
            y[:, :, p[:, None], q] += w[:, 0, r, s][None, :, None, None] * xk[:, :, h[:, None], v]

    def backward(dz):
        dz = np.asarray(dz, np.float64)
        dxk = np.zeros_like(xk)
        dwt = np.zeros_like(w)
        for r, s, p, h, q, v in taps():
            zs = dz[:, :, p[:, None], q]
            dxk[:, :, h[:, None], v] += w[:, 0, r, s][None, :, None, None] * zs
            dwt[:, 0, r, s] = (zs * xk[:, :, h[:, None], v]).sum(axis=(0, 2, 3))
        return dxk.reshape(N, C, m, H, W).sum(axis=2), dwt, dz.sum(axis=(0, 2, 3))

    return y, backward


def ref_bn_relu6(x, w, b, dy, eps=1e-5):
    """(y, dx, dw, db) of training-mode BatchNorm + clip(0, 6) in float64 (the textbook backward;
    ReLU6's derivative 1 on (0, 6), 0 elsewhere)."""
    x, w, b, dy = (np.asarray(a, np.float64) for a in (x, w, b, dy))
    e = (None, slice(None), None, None)
    mean = x.mean(axis=(0, 2, 3))
    var = ((x - mean[e]) ** 2).mean(axis=(0, 2, 3))
    sigma = np.sqrt(var + eps)
    xhat = (x - mean[e]) / sigma[e]
    u = w[e] * xhat + b[e]
    y = np.clip(u, 0.0, 6.0)
    dz = dy * ((u > 0) & (u < 6))
    dw = (dz * xhat).sum(axis=(0, 2, 3))
    db = dz.sum(axis=(0, 2, 3))
    dx = w[e] / sigma[e] * (dz - dz.mean(axis=(0, 2, 3))[e] - xhat * (dz * xhat).mean(axis=(0, 2, 3))[e])
    return y, dx, dw, db


def close(a, b, dtype, what=""):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), equal_nan=True,
                               err_msg=what, **tol(dtype, "layer"))


def _pads(padding, H, W, R, S, dil):
    if padding == "same":
        th, tw = dil[0] * (R - 1), dil[1] * (S - 1)
        return th // 2, th - th // 2, tw // 2, tw - tw // 2
    ph, pw = (padding, padding) if np.isscalar(padding) else padding
    return ph, ph, pw, pw


# ----------------------------------------------------------------------------- depthwise convolution

CASES = [  # (N, C, H, W, m, R, S, stride, padding, dilation)
    (3, 8, 8, 8, 1, 3, 3, 1, 1, 1),        # MobileNet's unit, 8x8 tiles
    (2, 13, 7, 5, 1, 3, 3, 1, 1, 1),       # odd sizes, channels not a multiple of the tile
    (2, 24, 16, 16, 1, 3, 3, 2, 1, 1),     # stride 2, tiled transposes
    (2, 19, 9, 6, 1, 3, 3, 2, 1, 1),       # stride 2, odd sizes
    (3, 16, 4, 4, 1, 3, 3, 1, 1, 1),       # 4x4 planes: 16-pixel tiles across rows
    (4, 12, 2, 2, 1, 3, 3, 1, 1, 1),       # 2x2 planes: the taps inside the image only
    (4, 20, 2, 2, 1, 3, 3, 2, 1, 1),
    (5, 10, 1, 1, 1, 3, 3, 1, 1, 1),       # 1x1 planes
    (2, 9, 9, 9, 1, 3, 3, 1, 2, 2),        # dilation 2
    (2, 9, 11, 10, 1, 3, 3, 1, "same", 2),  # dilation 2, padding 'same'
    (2, 9, 12, 11, 1, 3, 3, 2, 2, 2),      # dilation 2, stride 2
    (2, 8, 9, 7, 1, 5, 5, 1, 2, 1),        # 5x5: tap by tap
    (2, 6, 10, 9, 1, 5, 3, (2, 1), (2, 0), (1, 2)),  # uneven strides, padding, dilation
    (2, 6, 8, 8, 1, 3, 3, 3, 0, 1),        # stride 3 without padding: rows and columns never read
    (2, 6, 7, 7, 1, 3, 3, 1, 3, 1),        # padding larger than the kernel reaches
    (2, 4, 7, 6, 2, 3, 3, 1, 1, 1),        # multiplier 2: the kernels by planes
    (2, 4, 8, 8, 2, 3, 3, 2, 1, 2),
]


def _case(case, dtype, seed=0):
    N, C, H, W, m, R, S, stride, padding, dil = case
    stride = (stride, stride) if np.isscalar(stride) else stride
    dil = (dil, dil) if np.isscalar(dil) else dil
    pads = _pads(padding, H, W, R, S, dil)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((C * m, 1, R, S)).astype(dtype)
    return x, w, stride, padding, dil, pads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_forward_backward_equal_the_definition(case, dtype):
    x, w, stride, padding, dil, pads = _case(case, dtype)
    C = x.shape[1]
    want, bwd = ref_depthwise(x, w, stride, pads, dil)
    y = fa.conv2d(x, w, None, stride, padding, dil, C)
    assert y.dtype == dtype and y.shape == want.shape
    close(y, want, dtype, "y")
    dz = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    dx, dw, db = fa.conv2d_backward(dz, x, w, stride, padding, dil, C)
    edx, edw, edb = bwd(dz)
    assert dx.dtype == dw.dtype == db.dtype == dtype
    close(dx, edx, dtype, "dx")
    close(dw, edw, dtype, "dweight")
    close(db, edb, dtype, "dbias")
    dx2, dw2, db2 = fa.conv2d_backward(dz, x, w, stride, padding, dil, C, need_input_grad=False)
    assert dx2 is None
    np.testing.assert_array_equal(dw2, dw)
    np.testing.assert_array_equal(db2, db)


@pytest.mark.parametrize("dtype", DTYPES)
def test_with_bias_and_fused_activation(dtype):
    x, w, stride, padding, dil, pads = _case((3, 16, 5, 6, 1, 3, 3, 2, 1, 1), dtype)
    b = np.linspace(-1, 1, 16).astype(dtype)
    want, bwd = ref_depthwise(x, w, stride, pads, dil)
    want = want + b[:, None, None]
    y, z = fa.conv2d(x, w, b, stride, padding, dil, 16, activation="relu6", return_preactivation=True)
    close(z, want, dtype, "z")
    close(y, np.clip(want, 0, 6), dtype, "y")
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(dtype)
    dx, dw, db = fa.conv2d_backward(dy, x, w, stride, padding, dil, 16, preactivation=z, activation="relu6")
    edx, edw, edb = bwd(dy * ((z > 0) & (z < 6)))
    close(dx, edx, dtype, "dx")
    close(dw, edw, dtype, "dweight")
    close(db, edb, dtype, "dbias")


@pytest.mark.parametrize("case", [(2, 40, 8, 8, 1, 3, 3, 1, 1, 1), (3, 37, 6, 6, 1, 3, 3, 2, 1, 1),
                                  (2, 30, 2, 2, 1, 3, 3, 1, 1, 1)])
def test_channel_blocks(case, monkeypatch):
    # blocks of 8 or 16 channels (the last narrower, with a layout of its own) give what one block gives
    x, w, stride, padding, dil, pads = _case(case, np.float32)
    C = x.shape[1]
    y = fa.conv2d(x, w, None, stride, padding, dil, C)
    dz = np.random.default_rng(3).standard_normal(y.shape).astype(np.float32)
    grads = fa.conv2d_backward(dz, x, w, stride, padding, dil, C)
    monkeypatch.setattr(depthwise, "CL_BLOCK_BYTES", 1024)
    P, Q = y.shape[2:]
    assert depthwise._block(C, (P - 1) * stride[0] + 3, (Q - 1) * stride[1] + 3, 4) < C
    np.testing.assert_array_equal(fa.conv2d(x, w, None, stride, padding, dil, C), y)
    for a, b in zip(fa.conv2d_backward(dz, x, w, stride, padding, dil, C), grads):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride,H", [(1, 8), (2, 9), (1, 2), (2, 2), (1, 1)])
def test_nan_and_inf_stay_where_the_definition_puts_them(stride, H, dtype):
    # an inf input outside every window of a channel (stride 2 skips the last column of a 9-wide plane)
    # must not appear; a NaN input and a NaN dz reach exactly the outputs / weight taps the definition
    # says (a dz at the border reaches no weight tap that falls outside the image)
    N, C = 2, 16
    rng = np.random.default_rng(4)
    x = rng.standard_normal((N, C, H, H)).astype(dtype)
    w = rng.standard_normal((C, 1, 3, 3)).astype(dtype)
    x[0, 1, H // 2, H // 2] = np.nan
    if H == 9 and stride == 2:
        x[1, 3, :, 8] = np.inf   # padding 1, stride 2: column 8 is read by no output
        x[1, 4, 8, :] = -np.inf
    want, bwd = ref_depthwise(x, w, (stride, stride), (1, 1, 1, 1), (1, 1))
    y = fa.conv2d(x, w, None, stride, 1, 1, C)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    close(y, want, dtype, "y")
    dz = rng.standard_normal(y.shape).astype(dtype)
    dz[1, 5, 0, 0] = np.nan       # a corner: taps (0, *) and (*, 0) fall outside the image
    dz[1, 6, -1, -1] = np.inf
    x2 = np.nan_to_num(x, nan=0.5, posinf=1.0, neginf=-1.0)
    dx, dw, db = fa.conv2d_backward(dz, x2, w, stride, 1, 1, C)
    edx, edw, edb = ref_depthwise(x2, w, (stride, stride), (1, 1, 1, 1), (1, 1))[1](dz)
    for got, exp, name in ((dx, edx, "dx"), (dw, edw, "dweight"), (db, edb, "dbias")):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(exp), err_msg=name)
        np.testing.assert_array_equal(np.isinf(got), np.isinf(exp), err_msg=name)
        close(np.where(np.isfinite(exp), got, 0), np.where(np.isfinite(exp), exp, 0), dtype, name)


@pytest.mark.parametrize("case", [c for c in CASES if c[8] != "same"], ids=lambda c: "-".join(map(str, c)))
def test_equals_torch(case):
    torch = torch_or_skip()
    x, w, stride, padding, dil, pads = _case(case, np.float64)
    C = x.shape[1]
    tx, tw = (torch.from_numpy(a).requires_grad_(True) for a in (x, w))
    ty = torch.nn.functional.conv2d(tx, tw, None, stride, padding, dil, C)
    y = fa.conv2d(x, w, None, stride, padding, dil, C)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    dz = np.random.default_rng(5).standard_normal(y.shape)
    ty.backward(torch.from_numpy(dz))
    dx, dw, _ = fa.conv2d_backward(dz, x, w, stride, padding, dil, C)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-11, atol=1e-11)


def test_module_finite_differences():
    from fastact import nn
    conv = nn.Conv2d(6, 6, 3, 2, 1, 1, 6, bias=True, dtype=np.float64, seed=0)
    x = np.random.default_rng(6).standard_normal((2, 6, 5, 5))
    assert fa.gradcheck_module(nn.Sequential(conv, nn.Flatten()), x, np.array([0, 3]))


# ------------------------------------------------------------------------------- BatchNorm + ReLU6

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 6, 5, 7), (16, 24, 2, 2), (64, 40, 1, 1), (8, 16, 8, 8)])
def test_batchnorm_relu6_equals_reference(shape, dtype):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    C = shape[1]
    w = rng.uniform(0.5, 4.0, C).astype(dtype)   # wide: many values above 6 and below 0
    b = rng.uniform(-1.0, 3.0, C).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
    y, saved = fa.batch_norm2d(x, rm, rv, w, b, True, activation="relu6", return_saved=True)
    ey, edx, edw, edb = ref_bn_relu6(x, w, b, dy)
    assert saved.activation == "relu6" and y.dtype == dtype
    assert (y == 6).any() and (y == 0).any()
    close(y, ey, dtype, "y")
    close(rm, 0.1 * x.astype(np.float64).mean(axis=(0, 2, 3)), dtype, "running_mean")
    dx, dw, db = fa.batch_norm2d_backward(dy, x, w, b, saved)
    close(dx, edx, dtype, "dx")
    close(dw, edw, dtype, "dweight")
    close(db, edb, dtype, "dbias")
    # the fused pass equals BatchNorm, then ReLU6 and its backward, unfused
    u, s0 = fa.batch_norm2d(x, None, None, w, b, True, return_saved=True)
    np.testing.assert_array_equal(y, fa.relu6(u))
    ref = fa.batch_norm2d_backward(fa.relu6_backward(dy, u), x, w, b, s0)
    for a, e in zip((dx, dw, db), ref):
        np.testing.assert_allclose(a, e, **tol(dtype, "layer"))


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_relu6_gradcheck(training, residual):
    rng = np.random.default_rng(8)
    shape = (3, 4, 3, 2)
    x = rng.standard_normal(shape) * 2
    w, b = rng.uniform(1.0, 3.0, 4), rng.uniform(0.0, 4.0, 4)
    skip = rng.standard_normal(shape) if residual else None
    rm, rv = rng.standard_normal(4), rng.uniform(0.5, 2.0, 4)

    def fn(x, w, b, *s):
        return fa.batch_norm2d(x, rm.copy(), rv.copy(), w, b, training, activation="relu6",
                               residual=s[0] if s else None)

    def bwd(dy, x, w, b, *s):
        _, saved = fa.batch_norm2d(x, rm.copy(), rv.copy(), w, b, training, activation="relu6",
                                   residual=s[0] if s else None, return_saved=True)
        return fa.batch_norm2d_backward(dy, x, w, b, saved)

    if not residual:   # the data reach both sides of both kinks
        u = fn(x, w, b)
        assert (u == 0).any() and (u == 6).any() and ((u > 0) & (u < 6)).any()
    assert fa.gradcheck(fn, bwd, (x, w, b) + ((skip,) if residual else ()))


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_relu6_nan_and_kinks(dtype):
    # relu6(NaN) = NaN (as np.clip and hardtanh); the gradient passes where the pre-activation is
    # strictly inside (0, 6) or NaN (PyTorch's hardtanh_backward: 0 only where x <= 0 or x >= 6), and a
    # masked inf dy gives 0 * inf = NaN (as dy * relu6'(u) unfused)
    x = np.array([-3.0, 0.0, 1.0, 6.0, 9.0, 3.0]).reshape(6, 1, 1, 1).astype(dtype)
    saved = batchnorm.BatchNormSaved(np.zeros(1), np.ones(1), False, "relu6", False)
    y = fa.batch_norm2d(x, np.zeros(1, dtype), np.ones(1, dtype), eps=0.0, activation="relu6")
    np.testing.assert_array_equal(y.ravel(), [0, 0, 1, 6, 6, 3])
    dy = np.ones_like(x)
    dx = fa.batch_norm2d_backward(dy, x, None, None, saved)[0]
    np.testing.assert_array_equal(dx.ravel(), [0, 0, 1, 0, 0, 1])   # PyTorch's hardtanh_backward
    xn = x.copy()
    xn[2] = np.nan
    y = fa.batch_norm2d(xn, np.zeros(1, dtype), np.ones(1, dtype), eps=0.0, activation="relu6")
    assert np.isnan(y[2]).all() and not np.isnan(np.delete(y.ravel(), 2)).any()
    dx = fa.batch_norm2d_backward(dy, xn, None, None, saved)[0]   # a NaN input: a NaN gradient there only
    np.testing.assert_array_equal(dx.ravel(), [0, 0, np.nan, 0, 0, 1])
    y = fa.batch_norm2d(xn, None, None, training=True, activation="relu6")   # NaN statistics
    assert np.isnan(y).all()
    dyn = dy.copy()
    dyn[0] = np.inf      # masked: 0 * inf = NaN, as dy * relu6'(u)
    dx = fa.batch_norm2d_backward(dyn, x, None, None, saved)[0]
    assert np.isnan(dx[0]).all() and np.isfinite(dx[1:]).all()


@pytest.mark.parametrize("act", [None, "relu", "relu6"])
def test_batchnorm_channel_blocks_and_synchronised_sums(act, monkeypatch):
    # several channel blocks per call give what one gives; the reduce (SyncBatchNorm) path too
    rng = np.random.default_rng(9)
    x = rng.standard_normal((5, 11, 3, 4)) * 2
    w, b = rng.uniform(0.5, 3, 11), rng.uniform(0, 3, 11)
    dy = rng.standard_normal(x.shape)
    y, saved = fa.batch_norm2d(x, None, None, w, b, True, activation=act, return_saved=True)
    grads = fa.batch_norm2d_backward(dy, x, w, b, saved)
    monkeypatch.setattr(batchnorm, "_BLOCK_BYTES", 5 * 12 * 8 * 2)
    assert batchnorm._block(5, 11, 12, 8) == 2
    y2, saved2 = fa.batch_norm2d(x, None, None, w, b, True, activation=act, return_saved=True)
    np.testing.assert_array_equal(y2, y)
    for a, e in zip(fa.batch_norm2d_backward(dy, x, w, b, saved2), grads):
        np.testing.assert_array_equal(a, e)
    stats = batchnorm.channel_stats(x)
    y3, saved3 = fa.batch_norm2d(x, None, None, w, b, True, activation=act, return_saved=True, batch_stats=stats)
    np.testing.assert_allclose(y3, y, rtol=1e-12, atol=1e-12)
    g3 = fa.batch_norm2d_backward(dy, x, w, b, saved3, reduce=lambda sums, count: (sums, count))
    for a, e in zip(g3, grads):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)


def test_batchnorm_unknown_activation():
    with pytest.raises(ValueError, match="'relu6'"):
        fa.batch_norm2d(np.zeros((2, 1, 1, 1)), np.zeros(1), np.ones(1), activation="gelu")


# ------------------------------------------------------------------- the unit: depthwise + BN + ReLU6

@pytest.mark.parametrize("C,H,stride", [(32, 16, 1), (24, 8, 2), (40, 4, 1), (48, 2, 2), (64, 1, 1)])
def test_unit_equals_torch(C, H, stride):
    torch = torch_or_skip()
    F = torch.nn.functional
    rng = np.random.default_rng(10)
    x = rng.standard_normal((8, C, H, H))
    w = rng.standard_normal((C, 1, 3, 3)) / 3
    g, b = rng.uniform(0.5, 2.0, C), rng.uniform(-0.5, 1.0, C)
    rm, rv = np.zeros(C), np.ones(C)
    z = fa.conv2d(x, w, None, stride, 1, 1, C)
    y, saved = fa.batch_norm2d(z, rm, rv, g, b, True, activation="relu6", return_saved=True)
    tx, tw, tg, tb = (torch.from_numpy(a.copy()).requires_grad_(True) for a in (x, w, g, b))
    trm, trv = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    ty = F.hardtanh(F.batch_norm(F.conv2d(tx, tw, None, stride, 1, 1, C), trm, trv, tg, tb, True), 0.0, 6.0)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-12)
    dy = rng.standard_normal(y.shape)
    ty.backward(torch.from_numpy(dy))
    dz, dg, db = fa.batch_norm2d_backward(dy, z, g, b, saved)
    dx, dw, _ = fa.conv2d_backward(dz, x, w, stride, 1, 1, C)
    for got, t in ((dx, tx), (dw, tw), (dg, tg), (db, tb)):
        np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-9, atol=1e-10)
