"""Winograd F(4x4, 3x3) (fastact.winograd): the transforms against exact rational arithmetic, the
convolution against the float64 direct reference and PyTorch, its float32 error bound, NaN and inf
semantics, and how conv2d chooses it."""

import itertools
from fractions import Fraction

import numpy as np
import pytest

import fastact as fa
from fastact import _gemm, config, ops, winograd

from conftest import torch_or_skip

needs_blas = pytest.mark.skipif(not _gemm.available(), reason="Winograd needs BLAS from compiled code")


def test_matrices_compute_the_3x3_correlation_exactly():
    # A^T [(G g G^T) * (B^T d B)] A == the 4x4 valid correlation of a 6x6 tile with a 3x3 kernel, in
    # exact rational arithmetic (an independent check of the published matrices, Lavin and Gray 2016)
    rng = np.random.default_rng(0)
    F = np.vectorize(Fraction)
    BT = F(winograd.BT.astype(int))
    AT = F(winograd.AT.astype(int))
    G = np.array([[Fraction(1, 4), 0, 0], [Fraction(-1, 6)] * 3, [Fraction(-1, 6), Fraction(1, 6), Fraction(-1, 6)],
                  [Fraction(1, 24), Fraction(1, 12), Fraction(1, 6)], [Fraction(1, 24), Fraction(-1, 12), Fraction(1, 6)],
                  [0, 0, 1]], dtype=object)
    assert np.array_equal(winograd.G, G.astype(float))
    for _ in range(3):
        d = F(rng.integers(-9, 10, (6, 6)))
        g = F(rng.integers(-9, 10, (3, 3)))
        y = AT.dot((G.dot(g).dot(G.T)) * (BT.dot(d).dot(BT.T))).dot(AT.T)
        direct = np.array([[sum(g[r, s] * d[p + r, q + s] for r in range(3) for s in range(3)) for q in range(4)]
                           for p in range(4)], dtype=object)
        assert (y == direct).all()


def test_transform_weight_matches_the_formula():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((5, 3, 3, 3))
    u = winograd.transform_weight(w)
    want = np.einsum("ar,kcrs,bs->abkc", winograd.G, w, winograd.G).reshape(36, 5, 3)
    np.testing.assert_allclose(u, want, rtol=1e-14, atol=1e-15)
    assert winograd.transform_weight(w.astype(np.float32)).dtype == np.float32
    with pytest.raises(ValueError, match=r"\(K, C, 3, 3\).*\(5, 3, 2, 2\)"):
        winograd.transform_weight(np.zeros((5, 3, 2, 2)))


SHAPES = [  # (N, C, H, W, K, padding): partial tiles, one channel, one output, padding 0/1/2/(1, 2)
    (1, 1, 4, 4, 1, 1), (2, 3, 7, 6, 4, 0), (2, 3, 7, 6, 4, 2), (3, 5, 9, 11, 6, (1, 2)),
    (1, 2, 3, 3, 2, 0), (4, 16, 10, 10, 8, 1),
]


def _bound(x, w, padding, b=None):
    """The layer's scale: the largest direct sum of |w| |x| (+ |b|) over an output's window. Winograd's
    rounding errors are a few ulps of it at every output (the transforms mix a tile's 36 inputs), where
    im2col's are below one ulp of each output's own sum (measured in docs/accuracy.md: at most 12 and
    0.83 ulps of this scale over the shapes of this file)."""
    s = ops.conv2d_reference(np.abs(x), np.abs(w), None if b is None else np.abs(b), 1, padding)
    return s.max()


def _layer(shape, dtype, seed):
    """x, weight, bias and the output's (P, Q) of a SHAPES entry, standard normal."""
    N, C, H, W, K, padding = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, 3, 3)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    return x, w, b, fa.conv_output_shape(x.shape, w.shape, 1, padding)[2:], rng


@needs_blas
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_against_the_float64_reference(shape, dtype):
    padding = shape[-1]
    x, w, b, _, _ = _layer(shape, dtype, 2)
    want = ops.conv2d_reference(x, w, b, 1, padding)
    got = fa.conv2d(x, w, b, padding=padding, algorithm="winograd")
    assert got.dtype == dtype and got.shape == want.shape
    eps = np.finfo(dtype).eps
    # the bound this test holds the algorithm to, and what docs/accuracy.md states
    assert np.abs(got - want).max() <= 32 * eps * _bound(x, w, padding, b)


@needs_blas
def test_many_chunks_and_every_slot(monkeypatch):
    # more tiles than one chunk holds, so several slots (and both threads) write the output
    monkeypatch.setattr(config, "WINOGRAD_CHUNK_BYTES", 4096)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 4, 9, 13)).astype(np.float32)
    w = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    assert winograd.tile_chunk(4, 3) == 16 and 40 * 3 * 4 > 16 * 20
    want = ops.conv2d_reference(x, w, None, 1, 1)
    got = fa.conv2d(x, w, padding=1, algorithm="winograd")
    assert np.abs(got - want).max() <= 32 * np.finfo(np.float32).eps * _bound(x, w, 1)


@needs_blas
@pytest.mark.parametrize("activation,params", [("relu", None), ("leaky_relu", {"negative_slope": 0.1}),
                                               ("gelu", None), ("hardswish", None)])
def test_fused_activation_and_preactivation(activation, params):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 10, 7)).astype(np.float32)
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    y, z = fa.conv2d(x, w, b, padding=1, activation=activation, activation_params=params,
                     return_preactivation=True, algorithm="winograd")
    z_plain = fa.conv2d(x, w, b, padding=1, algorithm="winograd")
    np.testing.assert_array_equal(z, z_plain)
    act = getattr(fa, activation)
    np.testing.assert_array_equal(y, act(z, **(params or {})))


@needs_blas
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_inputs_give_the_direct_methods_pattern(bad):
    # Winograd would spread one bad input over its 6x6 tile; conv2d recomputes by im2col instead
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 12, 12)).astype(np.float32)
    x[1, 2, 5, 6] = bad
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    got = fa.conv2d(x, w, padding=1, algorithm="winograd")
    want = fa.conv2d(x, w, padding=1, algorithm="im2col")
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[np.isfinite(want)], want[np.isfinite(want)])
    assert np.isfinite(got).sum() == 2 * 4 * 12 * 12 - 4 * 9
    w[0, 0, 0, 0] = np.nan  # a bad weight: every output of that output channel, as the direct sum
    got = fa.conv2d(np.ones_like(x), w, padding=1, algorithm="winograd")
    assert np.isnan(got[:, 0]).all() and np.isfinite(got[:, 1:]).all()


@needs_blas
def test_winograd_kernel_reports_nonfinite():
    x = np.ones((1, 1, 6, 6), np.float32)
    x[0, 0, 0, 0] = np.inf
    y = np.empty((1, 1, 4, 4), np.float32)
    u = winograd.transform_weight(np.ones((1, 1, 3, 3), np.float32))
    assert not winograd.conv2d_forward(x, u, np.zeros(1, np.float32), y, np.empty((0, 0, 0, 0), np.float32), (0, 0))
    x[0, 0, 0, 0] = 1
    assert winograd.conv2d_forward(x, u, np.zeros(1, np.float32), y, np.empty((0, 0, 0, 0), np.float32), (0, 0))
    np.testing.assert_array_equal(y, 9)


def test_choose_algorithm():
    f32, f64 = np.float32, np.float64
    w3 = (8, 4, 3, 3)
    blas = _gemm.available()
    big = (2, 8, 32, 32)  # 2 * 8 * 8 * 9 * 32 * 32 = 1.2 MFLOP per image
    assert fa.conv.choose_algorithm("auto", big, (8, 8, 3, 3), 1, f32) == ("winograd" if blas else "im2col")
    assert fa.conv.choose_algorithm("auto", (2, 4, 32, 32), (8, 4, 3, 3), 1, f32) == "im2col"  # few channels
    assert fa.conv.choose_algorithm("auto", (512, 16, 8, 8), (16, 16, 3, 3), 1, f32) == "im2col"  # small images
    assert fa.conv.choose_algorithm("auto", (2, 4, 8, 8), w3, 1, f64) == "im2col"
    # tiles too empty: a 2x2 map fills a quarter of its 4x4 tile, 5x5 25/64; 6x6 fills 36/64
    assert fa.conv.choose_algorithm("auto", (64, 256, 2, 2), (256, 256, 3, 3), 1, f32) == "im2col"
    assert fa.conv.choose_algorithm("auto", (64, 256, 5, 5), (256, 256, 3, 3), 1, f32) == "im2col"
    assert fa.conv.choose_algorithm("auto", (64, 256, 6, 6), (256, 256, 3, 3), 1, f32) == \
        ("winograd" if blas else "im2col")
    assert fa.conv.choose_algorithm("auto", (2, 4, 8, 8), w3, 2, f32) == "im2col"
    # too few output positions in the call to repay the weights' transform: a 7x7 map at batch 1
    assert fa.conv.choose_algorithm("auto", (1, 512, 7, 7), (512, 512, 3, 3), 1, f32) == "im2col"
    assert fa.conv.choose_algorithm("auto", (32, 512, 7, 7), (512, 512, 3, 3), 1, f32) == \
        ("winograd" if blas else "im2col")
    assert fa.conv.choose_algorithm("auto", (2, 4, 8, 8), (8, 4, 5, 5), 1, f32) == "im2col"
    assert fa.conv.choose_algorithm("im2col", (2, 4, 8, 8), w3, 1, f32) == "im2col"
    with pytest.raises(ValueError, match=r"3x3 kernel at stride 1.*\(8, 4, 3, 3\).*\(2, 2\)"):
        fa.conv2d(np.zeros((2, 4, 8, 8), f32), np.zeros(w3, f32), stride=2, algorithm="winograd")
    with pytest.raises(ValueError, match=r"3x3 kernel at stride 1.*\(8, 4, 1, 1\)"):
        fa.conv2d(np.zeros((2, 4, 8, 8), f32), np.zeros((8, 4, 1, 1), f32), algorithm="winograd")
    with pytest.raises(ValueError, match="algorithm must be one of"):
        fa.conv2d(np.zeros((2, 4, 8, 8), f32), np.zeros(w3, f32), algorithm="fft")


@needs_blas
def test_config_switch_keeps_auto_on_im2col(monkeypatch):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    monkeypatch.setattr(config, "CONV_WINOGRAD", False)
    assert fa.conv.choose_algorithm("auto", x.shape, w.shape, 1, np.float32) == "im2col"
    np.testing.assert_array_equal(fa.conv2d(x, w, padding=1), fa.conv2d(x, w, padding=1, algorithm="im2col"))


@needs_blas
def test_empty_batch_and_noncontiguous_input():
    w = np.ones((2, 3, 3, 3), np.float32)
    assert fa.conv2d(np.zeros((0, 3, 5, 5), np.float32), w, padding=1, algorithm="winograd").shape == (0, 2, 5, 5)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 5, 3, 8)).astype(np.float32).transpose(0, 2, 1, 3)  # (2, 3, 5, 8), strided
    np.testing.assert_allclose(fa.conv2d(x, w, padding=1, algorithm="winograd"),
                               fa.conv2d(np.ascontiguousarray(x), w, padding=1, algorithm="winograd"),
                               rtol=0, atol=0)


@needs_blas
def test_gradients_by_finite_differences():
    # forward and backward by Winograd, in float64 (rounding far below the finite differences' step)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 2, 6, 5))
    w = rng.standard_normal((3, 2, 3, 3))
    b = rng.standard_normal(3)
    dy = rng.standard_normal((2, 3, 6, 5))

    def loss(x_, w_, b_):
        y = fa.conv2d(x_, w_, b_, padding=1, activation="gelu", algorithm="winograd")
        return float((y * dy).sum())

    _, z = fa.conv2d(x, w, b, padding=1, activation="gelu", return_preactivation=True, algorithm="winograd")
    dx, dw, db = fa.conv2d_backward(dy, x, w, padding=1, preactivation=z, activation="gelu", algorithm="winograd")
    h = 1e-6
    for arr, grad in ((x, dx), (w, dw), (b, db)):
        for idx in itertools.islice(np.ndindex(arr.shape), 0, None, 7):
            old = arr[idx]
            arr[idx] = old + h
            up = loss(x, w, b)
            arr[idx] = old - h
            down = loss(x, w, b)
            arr[idx] = old
            assert abs((up - down) / (2 * h) - grad[idx]) <= 1e-6 * (1 + abs(grad[idx]))


@needs_blas
@pytest.mark.parametrize("shape", [(64, 16, 16, 16, 16, 1), (8, 32, 8, 8, 64, 1), (4, 3, 32, 32, 16, 1)], ids=str)
def test_against_pytorch(shape):
    torch = torch_or_skip()
    N, C, H, W, K, padding = shape
    rng = np.random.default_rng(9)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = (rng.standard_normal((K, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    got = fa.conv2d(x, w, b, padding=padding, activation="relu", algorithm="winograd")
    want = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                                                 padding=padding)).numpy()
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-5 * scale


def test_nn_conv2d_takes_the_algorithm():
    x = np.random.default_rng(10).standard_normal((2, 3, 9, 9)).astype(np.float32)
    layer = fa.nn.Conv2d(3, 4, 3, padding=1, seed=0, algorithm="im2col")
    assert "algorithm='im2col'" in repr(layer)
    want = fa.conv2d(x, layer.weight.data, layer.bias.data, padding=1, algorithm="im2col")
    np.testing.assert_array_equal(layer(x), want)
    layer.eval()
    np.testing.assert_array_equal(layer(x), want)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        fa.nn.Conv2d(3, 4, 3, algorithm="direct")


@needs_blas
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_against_the_float64_reference(shape, dtype):
    N, C, H, W, K, padding = shape
    x, w, _, (P, Q), rng = _layer(shape, dtype, 11)
    dz = rng.standard_normal((N, K, P, Q)).astype(dtype)
    want = ops.conv2d_backward_reference(dz, x, w, 1, padding)
    got = fa.conv2d_backward(dz, x, w, 1, padding, algorithm="winograd")
    eps = np.finfo(dtype).eps
    # the same bound as the forward's: dx is a convolution of dz, dweight one of x with dz
    flipped = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    assert np.abs(got[0] - want[0]).max() <= 32 * eps * _bound(dz, flipped, (2 - ph, 2 - pw))
    dw_scale = np.einsum("nkpq,nchw->kc", np.abs(dz), np.abs(x)).max()
    assert np.abs(got[1] - want[1]).max() <= 32 * eps * dw_scale
    np.testing.assert_allclose(got[2], want[2], rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
    assert all(g.dtype == dtype for g in got)


@needs_blas
def test_backward_through_an_activation_and_without_input_grad():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((3, 8, 9, 10)).astype(np.float32)
    w = rng.standard_normal((6, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    y, z = fa.conv2d(x, w, b, padding=1, activation="silu", return_preactivation=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    kw = dict(padding=1, preactivation=z, activation="silu")
    got = fa.conv2d_backward(dy, x, w, algorithm="winograd", **kw)
    want = fa.conv2d_backward(dy, x, w, algorithm="im2col", **kw)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * np.abs(r).max())
    dx, dw, db = fa.conv2d_backward(dy, x, w, algorithm="winograd", need_input_grad=False, **kw)
    assert dx is None
    np.testing.assert_array_equal(dw, got[1])
    np.testing.assert_array_equal(db, got[2])

@needs_blas
def test_backward_auto_follows_the_rule(monkeypatch):
    rng = np.random.default_rng(14)
    x = rng.standard_normal((3, 8, 9, 10)).astype(np.float32)
    w = rng.standard_normal((6, 8, 3, 3)).astype(np.float32)
    dz = rng.standard_normal((3, 6, 9, 10)).astype(np.float32)
    by = {a: fa.conv2d_backward(dz, x, w, padding=1, algorithm=a)[1] for a in ("im2col", "winograd")}
    np.testing.assert_array_equal(fa.conv2d_backward(dz, x, w, padding=1)[1], by["im2col"])  # little work
    monkeypatch.setattr(config, "CONV_WINOGRAD_MIN_IMAGE_FLOPS", 0)
    monkeypatch.setattr(config, "CONV_WINOGRAD_MIN_POSITIONS", 0)
    np.testing.assert_array_equal(fa.conv2d_backward(dz, x, w, padding=1)[1], by["winograd"])


@needs_blas
def test_backward_nonfinite_and_padding_limits():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 8, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 8, 3, 3)).astype(np.float32)
    dz = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    dz[1, 2, 3, 3] = np.nan
    got = fa.conv2d_backward(dz, x, w, padding=1, algorithm="winograd")
    want = fa.conv2d_backward(dz, x, w, padding=1, algorithm="im2col")
    for g, r in zip(got, want):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(r))
    assert np.isfinite(got[0]).sum() == 2 * 8 * 64 - 8 * 9  # the direct pattern: 9 pixels per channel
    # padding 3 is beyond the flipped kernel's padding: auto falls back, Winograd is refused
    dz3 = rng.standard_normal((2, 4, 12, 12)).astype(np.float32)
    fa.conv2d_backward(dz3, x, w, padding=3)
    with pytest.raises(ValueError, match="padding of at most 2"):
        fa.conv2d_backward(dz3, x, w, padding=3, algorithm="winograd")
