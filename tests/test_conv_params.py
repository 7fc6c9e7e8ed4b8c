"""conv2d's groups, dilation and 'same'/'valid' padding: against a float64 reference written from the
definition, PyTorch, finite differences, and PyTorch's errors."""

import itertools

import numpy as np
import pytest

import fastact as fa
from fastact import nn

from conftest import torch_or_skip


def _pads(H, W, R, S, stride, padding, dilation):
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    if padding == "valid":
        return 0, 0, 0, 0
    if padding == "same":
        th, tw = dh * (R - 1), dw * (S - 1)
        return th // 2, th - th // 2, tw // 2, tw - tw // 2
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return ph, ph, pw, pw


def _taps(x_shape, w_shape, stride, padding, dilation, groups):
    """For each output (n-free) position: [(k, c, r, s, h, v)] with (h, v) inside the image."""
    _, C, H, W = x_shape
    K, Cg, R, S = w_shape
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    pt, pb, pl, pr = _pads(H, W, R, S, stride, padding, dilation)
    P = (H + pt + pb - dh * (R - 1) - 1) // sh + 1
    Q = (W + pl + pr - dw * (S - 1) - 1) // sw + 1
    Kg = K // groups
    out = {}
    for k, p, q in itertools.product(range(K), range(P), range(Q)):
        g = k // Kg
        out[k, p, q] = [(c, r, s, h, v) for c in range(Cg) for r in range(R) for s in range(S)
                        for h, v in [(p * sh - pt + r * dh, q * sw - pl + s * dw)]
                        if 0 <= h < H and 0 <= v < W]
        out[k, p, q] = [(g * Cg + c, c, r, s, h, v) for c, r, s, h, v in out[k, p, q]]
    return (P, Q), out


def reference(x, w, b, stride, padding, dilation, groups):
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    (P, Q), taps = _taps(x.shape, w.shape, stride, padding, dilation, groups)
    y = np.zeros((x.shape[0], w.shape[0], P, Q))
    for n in range(x.shape[0]):
        for (k, p, q), ts in taps.items():
            y[n, k, p, q] = sum(w[k, cw, r, s] * x[n, c, h, v] for c, cw, r, s, h, v in ts)
            y[n, k, p, q] += 0.0 if b is None else b[k]
    return y


def reference_backward(dy, x, w, stride, padding, dilation, groups):
    x, w, dy = (np.asarray(a, np.float64) for a in (x, w, dy))
    _, taps = _taps(x.shape, w.shape, stride, padding, dilation, groups)
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    for n in range(x.shape[0]):
        for (k, p, q), ts in taps.items():
            for c, cw, r, s, h, v in ts:
                dx[n, c, h, v] += w[k, cw, r, s] * dy[n, k, p, q]
                dw[k, cw, r, s] += x[n, c, h, v] * dy[n, k, p, q]
    return dx, dw, dy.sum(axis=(0, 2, 3))


CASES = [  # (C, K, groups, stride, padding, dilation, bias)
    (4, 4, 1, 1, 1, 2, True),
    (4, 6, 2, 1, "same", 1, True),
    (4, 8, 4, 2, 1, 1, False),          # depthwise, multiplier 2, stride 2
    (4, 4, 4, 1, "same", 2, True),      # depthwise, dilation 2
    (6, 6, 3, 2, (1, 2), 2, True),
    (4, 4, 2, 1, "valid", 1, False),
    (3, 6, 1, 1, "same", (1, 2), True),
    (4, 4, 4, 1, 0, 1, True),           # depthwise, no padding
]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_against_the_reference(case, dtype):
    C, K, groups, stride, padding, dilation, bias = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, C, 7, 6)).astype(dtype)
    w = rng.standard_normal((K, C // groups, 3, 3)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype) if bias else None
    want = reference(x, w, b, stride, padding, dilation, groups)
    assert fa.conv_output_shape(x.shape, w.shape, stride, padding, dilation, groups) == want.shape
    y, z = fa.conv2d(x, w, b, stride, padding, dilation, groups, activation="relu", return_preactivation=True)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    assert y.dtype == dtype
    np.testing.assert_allclose(z, want, **tol)
    np.testing.assert_array_equal(y, np.maximum(z, 0))
    dy = rng.standard_normal(want.shape).astype(dtype)
    got = fa.conv2d_backward(dy, x, w, stride, padding, dilation, groups)
    for g, r, name in zip(got, reference_backward(dy, x, w, stride, padding, dilation, groups),
                          ("dx", "dweight", "dbias")):
        assert g.dtype == dtype, name
        np.testing.assert_allclose(g, r, **tol, err_msg=name)
    # through the fused activation, and without the input gradient
    dx, dw, db = fa.conv2d_backward(dy, x, w, stride, padding, dilation, groups, preactivation=z,
                                    activation="relu", need_input_grad=False)
    assert dx is None
    want_dw = reference_backward(dy * (z > 0), x, w, stride, padding, dilation, groups)[1]
    np.testing.assert_allclose(dw, want_dw, **tol)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_against_pytorch(case):
    torch = torch_or_skip()
    C, K, groups, stride, padding, dilation, bias = case
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, C, 9, 8))
    w = rng.standard_normal((K, C // groups, 3, 3))
    b = rng.standard_normal(K) if bias else None
    dy_shape = fa.conv_output_shape(x.shape, w.shape, stride, padding, dilation, groups)
    dy = rng.standard_normal(dy_shape)
    tx, tw = (torch.from_numpy(a).requires_grad_(True) for a in (x, w))
    tb = None if b is None else torch.from_numpy(b).requires_grad_(True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride, padding, dilation, groups)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(fa.conv2d(x, w, b, stride, padding, dilation, groups), ty.detach().numpy(),
                               rtol=1e-12, atol=1e-12)
    dx, dw, db = fa.conv2d_backward(dy, x, w, stride, padding, dilation, groups)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-12, atol=1e-12)
    if b is not None:
        np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("groups,dilation,padding", [(2, 2, "same"), (4, 1, 1), (1, 2, "valid")])
def test_finite_differences_through_a_module(groups, dilation, padding):
    conv = nn.Conv2d(4, 8, 3, 1, padding, dilation, groups, dtype=np.float64, seed=0)
    net = nn.Sequential(conv, nn.GELU(), nn.Flatten())
    x = np.random.default_rng(2).standard_normal((2, 4, 6, 5))
    assert fa.gradcheck_module(net, x, np.array([3, 11]))


def test_nn_conv2d_parameters():
    m = nn.Conv2d(8, 16, 3, 1, "same", 2, 8, bias=False, seed=0)
    assert m.weight.data.shape == (16, 1, 3, 3) and m.bias is None
    assert "dilation=2" in repr(m) and "groups=8" in repr(m)
    x = np.random.default_rng(3).standard_normal((2, 8, 7, 7)).astype(np.float32)
    np.testing.assert_array_equal(m(x), fa.conv2d(x, m.weight.data, None, 1, "same", 2, 8))
    # PyTorch's initialisation bound: 1 / sqrt(fan_in), fan_in = in_channels // groups * kh * kw
    assert np.abs(m.weight.data).max() <= 1 / 3
    with pytest.raises(ValueError, match="in_channels must be divisible by groups"):
        nn.Conv2d(6, 8, 3, groups=4)
    with pytest.raises(ValueError, match="out_channels must be divisible by groups"):
        nn.Conv2d(8, 6, 3, groups=4)
    with pytest.raises(ValueError, match="strided"):
        nn.Conv2d(8, 8, 3, stride=2, padding="same")


def test_errors_name_the_shapes():
    x = np.zeros((2, 6, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r"in_channels must be divisible by groups.*\(2, 6, 8, 8\).*groups=4"):
        fa.conv2d(x, np.zeros((4, 1, 3, 3), np.float32), groups=4)
    with pytest.raises(ValueError, match=r"out_channels must be divisible by groups.*\(5, 3, 3, 3\)"):
        fa.conv2d(x, np.zeros((5, 3, 3, 3), np.float32), groups=2)
    with pytest.raises(ValueError, match=r"weight expects 4 \(shape \(4, 2, 3, 3\), groups=2\)"):
        fa.conv2d(x, np.zeros((4, 2, 3, 3), np.float32), groups=2)
    with pytest.raises(ValueError, match="not supported for strided convolutions"):
        fa.conv2d(x, np.zeros((4, 6, 3, 3), np.float32), stride=2, padding="same")
    with pytest.raises(ValueError, match="'same' or 'valid'"):
        fa.conv2d(x, np.zeros((4, 6, 3, 3), np.float32), padding="full")
    with pytest.raises(ValueError, match="dilation must be >= 1"):
        fa.conv2d(x, np.zeros((4, 6, 3, 3), np.float32), dilation=0)
    with pytest.raises(ValueError, match=r"dilation 4x4: 9x9\) is larger than the padded input 8x8"):
        fa.conv2d(x, np.zeros((4, 6, 3, 3), np.float32), dilation=4)
    with pytest.raises(ValueError, match="algorithm='winograd' needs one group"):
        fa.conv2d(x, np.zeros((6, 1, 3, 3), np.float32), groups=6, padding=1, algorithm="winograd")


def test_depthwise_keeps_nan_where_the_direct_sum_does():
    x = np.ones((1, 2, 6, 6), np.float32)
    x[0, 1, 2, 3] = np.nan
    y = fa.conv2d(x, np.ones((2, 1, 3, 3), np.float32), padding=1, groups=2)
    assert np.isfinite(y[0, 0]).all()
    assert np.isnan(y[0, 1]).sum() == 9 and np.isnan(y[0, 1, 1:4, 2:5]).all()
