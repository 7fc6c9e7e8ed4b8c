"""BatchNorm2d (fastact.batchnorm and nn.BatchNorm2d) against a float64 NumPy reference and PyTorch.

The reference below is written from the definitions (mean and biased variance over (N, H, W), the
unbiased variance for the running update, the textbook backward), shares no code with fastact, and
runs in float64. Tolerances: float64 1e-12 (sums of a few hundred O(1) terms in another order);
float32 against the float64 reference of the same float32 inputs rtol 1e-4 / atol 1e-5 (float32
rounding of y = x * scale + shift and of dx is ~1e-7 relative; statistics are float64 in both).
"""

import numpy as np
import pytest

import fastact as fa
from fastact import nn
from fastact.batchnorm import BatchNormSaved
from conftest import tol, torch_or_skip

RNG = np.random.default_rng(11)
DTYPES = (np.float32, np.float64)


def close(a, b, dtype, err_msg=""):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), equal_nan=True,
                               err_msg=err_msg, **tol(dtype, "layer"))


def ref_forward(x, rm, rv, w, b, training, momentum, eps, relu=False, skip=None):
    """(y, new running mean, new running var, mean, var) in float64 from the definitions."""
    x = np.asarray(x, np.float64)
    C = x.shape[1]
    w = np.ones(C) if w is None else np.asarray(w, np.float64)
    b = np.zeros(C) if b is None else np.asarray(b, np.float64)
    M = x.shape[0] * x.shape[2] * x.shape[3]
    if training:
        mean = x.mean(axis=(0, 2, 3))
        var = ((x - mean[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))
        rm = None if rm is None else (1 - momentum) * np.asarray(rm, np.float64) + momentum * mean
        rv = None if rv is None else \
            (1 - momentum) * np.asarray(rv, np.float64) + momentum * var * M / (M - 1)
    else:
        mean, var = np.asarray(rm, np.float64), np.asarray(rv, np.float64)
    e = (None, slice(None), None, None)  # a (C,) array broadcast over (N, C, H, W)
    y = w[e] * (x - mean[e]) / np.sqrt(var[e] + eps) + b[e]
    if relu:
        y = np.maximum(y, 0)
    if skip is not None:
        y = y + np.asarray(skip, np.float64)
    return y, rm, rv, mean, var


def ref_backward(dy, x, w, b, mean, var, eps, training, relu=False):
    """(dx, dweight, dbias) in float64: dz = dy * relu'(bn(x)); training
    dx = w/sigma * (dz - mean(dz) - x_hat * mean(dz * x_hat)), eval dx = dz * w / sigma."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    C = x.shape[1]
    w = np.ones(C) if w is None else np.asarray(w, np.float64)
    b = np.zeros(C) if b is None else np.asarray(b, np.float64)
    e = (None, slice(None), None, None)
    sigma = np.sqrt(var + eps)[e]
    xhat = (x - mean[e]) / sigma
    dz = dy * ((w[e] * xhat + b[e]) > 0) if relu else dy
    dw = (dz * xhat).sum(axis=(0, 2, 3))
    db = dz.sum(axis=(0, 2, 3))
    if training:
        dx = w[e] / sigma * (dz - dz.mean(axis=(0, 2, 3))[e] - xhat * (dz * xhat).mean(axis=(0, 2, 3))[e])
    else:
        dx = dz * w[e] / sigma
    return dx, dw, db


def data(shape, dtype, scale=2.0, shift=0.5):
    return (RNG.standard_normal(shape) * scale + shift).astype(dtype)


# ------------------------------------------------------------------------------- functional kernels

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("fuse", ["none", "relu", "residual", "relu+residual"])
@pytest.mark.parametrize("affine", [True, False])
def test_functional_forward_backward_equals_reference(dtype, training, fuse, affine):
    shape = (3, 4, 5, 7)
    x = data(shape, dtype)
    C = shape[1]
    w = data(C, dtype, 1.0, 0.2) if affine else None
    b = data(C, dtype, 1.0, 0.0) if affine else None
    rm, rv = data(C, dtype, 0.5, 0.0), (RNG.random(C) + 0.5).astype(dtype)
    relu = "relu" in fuse
    skip = data(shape, dtype) if "residual" in fuse else None
    ey, erm, erv, mean, var = ref_forward(x, rm, rv, w, b, training, 0.1, 1e-5, relu, skip)
    rm2, rv2 = rm.copy(), rv.copy()
    y, saved = fa.batch_norm2d(x, rm2, rv2, w, b, training, 0.1, 1e-5, activation="relu" if relu else None,
                               residual=skip, return_saved=True)
    assert y.dtype == dtype and y.shape == shape
    close(y, ey, dtype, "y")
    close(rm2, erm, dtype, "running_mean")
    close(rv2, erv, dtype, "running_var")
    assert rm2.dtype == dtype and rv2.dtype == dtype
    dy = data(shape, dtype, 1.0, 0.3)
    out = fa.batch_norm2d_backward(dy, x, w, b, saved)
    assert len(out) == (4 if skip is not None else 3)
    edx, edw, edb = ref_backward(dy, x, w, b, mean, var, 1e-5, training, relu)
    assert out[0].dtype == dtype
    close(out[0], edx, dtype, "dx")
    if affine:
        close(out[1], edw, dtype, "dweight")
        close(out[2], edb, dtype, "dbias")
    else:
        assert out[1] is None and out[2] is None
    if skip is not None:
        np.testing.assert_array_equal(out[3], dy)
    assert fa.batch_norm2d_backward(dy, x, w, b, saved, need_input_grad=False)[0] is None


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("fuse", ["none", "relu", "relu+residual"])
def test_functional_gradcheck(training, fuse):
    # float64 central differences of the whole function: in training the batch statistics depend
    # on x, so this checks the full backward (the mean and variance terms included)
    shape = (2, 3, 3, 4)
    x = data(shape, np.float64)
    w, b = data(3, np.float64, 1.0, 0.5), data(3, np.float64, 0.5, 0.2)
    skip = data(shape, np.float64) if "residual" in fuse else None
    act = "relu" if "relu" in fuse else None
    rm, rv = np.zeros(3), np.ones(3) * 1.5

    def fn(x, w, b, *s):
        return fa.batch_norm2d(x, rm.copy(), rv.copy(), w, b, training, 0.1, 1e-5, activation=act,
                               residual=s[0] if s else None)

    def bwd(dy, x, w, b, *s):
        _, saved = fa.batch_norm2d(x, rm.copy(), rv.copy(), w, b, training, 0.1, 1e-5, activation=act,
                                   residual=s[0] if s else None, return_saved=True)
        return fa.batch_norm2d_backward(dy, x, w, b, saved)

    assert fa.gradcheck(fn, bwd, (x, w, b) + ((skip,) if skip is not None else ()))


def test_statistics_accurate_with_a_large_mean():
    # two-pass variance: a mean 1e4 times the std leaves the variance exact to float64 rounding,
    # where E[x^2] - E[x]^2 would lose 8 digits
    x = (RNG.standard_normal((8, 2, 6, 6)) + 1e4)
    _, saved = fa.batch_norm2d(x, None, None, training=True, return_saved=True, eps=0.0)
    var = x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(1 / saved.invstd ** 2, var, rtol=1e-10)
    xf = x.astype(np.float32)  # float32 input, float64 statistics
    _, saved = fa.batch_norm2d(xf, None, None, training=True, return_saved=True, eps=0.0)
    np.testing.assert_allclose(1 / saved.invstd ** 2, xf.astype(np.float64).var(axis=(0, 2, 3)), rtol=1e-9)


def test_nan_propagates_and_non_contiguous_input():
    x = data((2, 3, 4, 4), np.float64)
    x[1, 1, 2, 2] = np.nan
    y = fa.batch_norm2d(x, np.zeros(3), np.ones(3), training=True, activation="relu")
    assert np.isnan(y[:, 1]).all() and not np.isnan(y[:, [0, 2]]).any()
    y = fa.batch_norm2d(x, np.zeros(3), np.ones(3), training=False, activation="relu")
    assert np.isnan(y).sum() == 1
    base = data((3, 2, 4, 6), np.float32)
    xt = base.transpose(1, 0, 2, 3)  # (2, 3, 4, 6), not contiguous
    np.testing.assert_array_equal(fa.batch_norm2d(xt, None, None, training=True),
                                  fa.batch_norm2d(np.ascontiguousarray(xt), None, None, training=True))


def test_functional_errors():
    x = np.zeros((2, 3, 4, 4))
    with pytest.raises(ValueError, match="expected 4D input"):
        fa.batch_norm2d(np.zeros((2, 3)), None, None, training=True)
    with pytest.raises(ValueError, match=r"weight has shape \(4,\).*3 channels"):
        fa.batch_norm2d(x, None, None, np.ones(4), training=True)
    with pytest.raises(ValueError, match=r"residual has shape"):
        fa.batch_norm2d(x, None, None, training=True, residual=np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fa.batch_norm2d(np.zeros((1, 3, 1, 1)), None, None, training=True)
    with pytest.raises(ValueError, match="running_mean and running_var"):
        fa.batch_norm2d(x, None, None, training=False)
    with pytest.raises(ValueError, match="activation"):
        fa.batch_norm2d(x, None, None, training=True, activation="gelu")
    _, saved = fa.batch_norm2d(x, None, None, training=True, return_saved=True)
    with pytest.raises(ValueError, match="dy has shape"):
        fa.batch_norm2d_backward(np.zeros((2, 3, 4, 5)), x, None, None, saved)
    with pytest.raises(TypeError, match="BatchNormSaved"):
        fa.batch_norm2d_backward(x, x, None, None, (0, 1))
    assert isinstance(saved, BatchNormSaved)


# ----------------------------------------------------------------------------------------- module

def test_module_parameters_buffers_and_keys():
    bn = nn.BatchNorm2d(3)
    assert [k for k, _ in bn.named_parameters()] == ["weight", "bias"]
    assert [k for k, _ in bn.named_buffers()] == ["running_mean", "running_var", "num_batches_tracked"]
    sd = bn.state_dict()
    assert list(sd) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert sd["num_batches_tracked"].dtype == np.int64 and sd["num_batches_tracked"].shape == ()
    np.testing.assert_array_equal(sd["running_var"], np.ones(3, np.float32))
    assert list(nn.BatchNorm2d(3, affine=False).state_dict()) == ["running_mean", "running_var",
                                                                 "num_batches_tracked"]
    assert list(nn.BatchNorm2d(3, track_running_stats=False).state_dict()) == ["weight", "bias"]
    bn.astype(np.float64)
    assert bn.running_mean.dtype == np.float64 and bn.num_batches_tracked.dtype == np.int64
    assert bn.state_dict()["running_var"].dtype == np.float64


def test_module_errors():
    bn = nn.BatchNorm2d(3)
    with pytest.raises(ValueError, match=r"expected 4D input \(got 2D input\)"):
        bn(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"4 channels.*\(2, 4, 3, 3\).*num_features=3"):
        bn(np.zeros((2, 4, 3, 3)))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        bn(np.zeros((1, 3, 1, 1)))
    assert int(bn.num_batches_tracked) == 0  # a refused batch is not counted
    bn.eval()
    assert bn(np.zeros((1, 3, 1, 1), np.float32)).shape == (1, 3, 1, 1)  # eval: fine
    with pytest.raises(ValueError, match="num_features"):
        nn.BatchNorm2d(0)
    bn.train()  # an empty batch passes through, counted but leaving the statistics alone (PyTorch)
    assert bn(np.zeros((0, 3, 4, 4), np.float32)).shape == (0, 3, 4, 4)
    assert int(bn.num_batches_tracked) == 1
    np.testing.assert_array_equal(bn.running_mean, 0)
    np.testing.assert_array_equal(bn.running_var, 1)
    assert bn.backward(np.zeros((0, 3, 4, 4), np.float32)).shape == (0, 3, 4, 4)


def _torch_bn(torch, bn, dtype):
    t = torch.nn.BatchNorm2d(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                             track_running_stats=bn.track_running_stats)
    t = t.double() if dtype == np.float64 else t
    t.load_state_dict({k: torch.from_numpy(v) for k, v in bn.state_dict().items()})
    return t


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", [dict(), dict(momentum=None), dict(affine=False),
                                    dict(track_running_stats=False), dict(momentum=0.3, eps=1e-3)])
def test_module_training_steps_equal_torch(dtype, config):
    torch = torch_or_skip()
    bn = nn.BatchNorm2d(4, dtype=dtype, **config)
    if bn.affine:
        bn.weight.data[...] = data(4, dtype, 1.0, 0.3)
        bn.bias.data[...] = data(4, dtype, 1.0, 0.0)
    tbn = _torch_bn(torch, bn, dtype)
    for step in range(4):
        train = step < 3
        bn.train(train)
        tbn.train(train)
        x = data((5, 4, 3, 6), dtype, 1.5 + step, step - 1.0)
        dy = data(x.shape, dtype, 1.0, 0.2)
        y = bn(x)
        if bn.affine:
            bn.zero_grad()
        dx = bn.backward(dy)
        tx = torch.tensor(x, requires_grad=True)
        ty = tbn(tx)
        ty.backward(torch.tensor(dy))
        close(y, ty.detach().numpy(), dtype, f"y step {step}")
        close(dx, tx.grad.numpy(), dtype, f"dx step {step}")
        if bn.affine:
            close(bn.weight.grad, tbn.weight.grad.numpy(), dtype, "dweight")
            close(bn.bias.grad, tbn.bias.grad.numpy(), dtype, "dbias")
            tbn.weight.grad = tbn.bias.grad = None
        tsd = tbn.state_dict()
        sd = bn.state_dict()
        assert list(sd) == list(tsd)
        for k, v in sd.items():
            tv = tsd[k].numpy()
            assert v.dtype == tv.dtype, k
            close(v, tv, dtype, k)


def test_module_relu_residual_fused_equals_torch():
    torch = torch_or_skip()
    bn = nn.BatchNorm2d(3, dtype=np.float64)
    bn.weight.data[...] = [0.5, -1.0, 2.0]
    bn.bias.data[...] = [0.1, 0.2, -0.3]
    tbn = _torch_bn(torch, bn, np.float64)
    x, skip, dy = (data((4, 3, 5, 5), np.float64) for _ in range(3))
    y = bn(x, activation="relu", residual=skip)
    dx = bn.backward(dy)
    tx, ts = torch.tensor(x, requires_grad=True), torch.tensor(skip, requires_grad=True)
    ty = torch.relu(tbn(tx)) + ts
    ty.backward(torch.tensor(dy))
    close(y, ty.detach().numpy(), np.float64)
    close(dx, tx.grad.numpy(), np.float64)
    close(ts.grad.numpy(), dy, np.float64)  # the skip's gradient is dy
    close(bn.weight.grad, tbn.weight.grad.numpy(), np.float64)


def test_state_dict_round_trip_with_torch():
    torch = torch_or_skip()
    t = torch.nn.BatchNorm2d(5)
    t.train()
    for _ in range(3):
        t(torch.randn(4, 5, 3, 3) * 2 + 1)
    with torch.no_grad():
        t.weight.uniform_()
        t.bias.uniform_()
    tsd = {k: v.numpy().copy() for k, v in t.state_dict().items()}
    bn = nn.BatchNorm2d(5).load_state_dict(tsd)
    sd = bn.state_dict()
    assert list(sd) == list(tsd)
    for k in tsd:
        assert sd[k].dtype == tsd[k].dtype and sd[k].shape == tsd[k].shape, k
        np.testing.assert_array_equal(sd[k], tsd[k])
    assert int(bn.num_batches_tracked) == 3
    t2 = torch.nn.BatchNorm2d(5)
    t2.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    x = RNG.standard_normal((2, 5, 3, 3)).astype(np.float32)
    bn.eval()
    t2.eval()
    close(bn(x), t2(torch.tensor(x)).detach().numpy(), np.float32)
    bad = dict(tsd, running_var=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="running_var"):
        bn.load_state_dict(bad)


def test_module_gradcheck_in_a_network():
    # a conv -> BN -> ReLU -> pool -> linear network, BN in training mode: fastact.gradcheck_module
    # perturbs x and every parameter; the batch statistics move with them
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False, seed=1), nn.BatchNorm2d(3), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 3, seed=2))
    net[1].weight.data[...] = [0.7, 1.3, -0.8]
    net[1].bias.data[...] = [0.1, -0.2, 0.3]
    x = RNG.standard_normal((4, 2, 5, 5))
    assert fa.gradcheck_module(net, x, np.array([0, 1, 2, 1]))


def test_sequential_fuses_bn_relu_and_matches_unfused():
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False, seed=1, dtype=np.float64),
                        nn.BatchNorm2d(3, dtype=np.float64), nn.ReLU())
    assert net.fusion_plan() == [(0, None), (1, 2)]
    x = data((3, 2, 4, 4), np.float64)
    y = net(x)
    dy = data(y.shape, np.float64)
    dx = net.backward(dy)
    ref = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False, seed=1, dtype=np.float64),
                        nn.BatchNorm2d(3, dtype=np.float64), nn.ReLU())
    h = x
    for m in ref:
        h = m(h)
    g = dy
    for m in reversed(list(ref)):
        g = m.backward(g)
    np.testing.assert_allclose(y, h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, g, rtol=1e-12, atol=1e-12)
    for (k, p), (_, q) in zip(net.named_parameters(), ref.named_parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-12, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(net[1].running_var, ref[1].running_var, rtol=1e-12)
    # a ReLU with non-default parameters is not fused
    assert nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(max_value=6.0)).fusion_plan() == [(0, None), (1, None)]


def test_eval_backward_uses_running_statistics():
    bn = nn.BatchNorm2d(2, dtype=np.float64)
    bn.running_var[...] = [4.0, 0.25]
    bn.weight.data[...] = [3.0, 1.0]
    bn.eval()
    x = data((2, 2, 3, 3), np.float64)
    bn(x)
    dx = bn.backward(np.ones_like(x))
    np.testing.assert_allclose(dx[:, 0], 3.0 / np.sqrt(4.0 + 1e-5))
    np.testing.assert_allclose(dx[:, 1], 1.0 / np.sqrt(0.25 + 1e-5))
