"""PyTorch's layer-function options: max_pool2d's dilation, ceil_mode and return_indices (PyTorch's flat
int64 indices), avg_pool2d's ceil_mode, count_include_pad and divisor_override, unbatched (C, H, W)
inputs to the convolution, the pools and their modules, and linear on any leading shape.

Every option runs over a grid against float64 references written here from the definitions (loops, so
the tests run without PyTorch too), then against PyTorch where it is installed; the average pool's
gradients also against finite differences."""

import itertools
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastact as fa
from fastact import models, nn, pool
from conftest import torch_or_skip

DTYPES = (np.float32, np.float64)
TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-13, atol=1e-14)}
SHAPES = ((2, 3, 7, 9), (1, 2, 8, 6))  # odd sizes (rows/columns no window covers; ceil_mode windows
                                       # past the input), and even ones (the 2x2 fast path)
# kernel, stride, padding: the grid, then non-square windows
GRID = list(itertools.product((2, 3), (1, 2, 3), (0, 1)))
MAX_EXTRA = [((3, 2), (2, 1), (1, 0), (1, 2)), ((2, 3), (1, 3), (1, 1), (2, 1))]
AVG_EXTRA = [((3, 2), (2, 1), (1, 0)), ((2, 3), (1, 3), (1, 1))]


def _p(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# ------------------------------------------------------------------------------ references (float64)

def out_size(n, k, s, p, d, ceil):
    """PyTorch's pooling_output_shape written out: windows of span d*(k-1)+1; ceil_mode rounds up, but
    the last window must start inside the input or the left padding."""
    span = d * (k - 1) + 1
    if ceil:
        o = -(-(n + 2 * p - span) // s) + 1
        if (o - 1) * s >= n + p:
            o -= 1
        return o
    return (n + 2 * p - span) // s + 1


def ref_max_pool(x, kernel, stride, padding, dilation=1, ceil=False):
    """(y, flat indices): the first maximum of each window in row-major order, a NaN beating every
    number (the first NaN); -inf and index -1 for a window without any input element."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _p(kernel), _p(stride or kernel), _p(padding), _p(dilation)
    N, C, H, W = x.shape
    P, Q = out_size(H, kh, sh, ph, dh, ceil), out_size(W, kw, sw, pw, dw, ceil)
    y = np.full((N, C, P, Q), -np.inf)
    idx = np.full((N, C, P, Q), -1, np.int64)
    for n, c, p, q in itertools.product(range(N), range(C), range(P), range(Q)):
        best = None
        for i, j in itertools.product(range(kh), range(kw)):
            h, w = p * sh - ph + i * dh, q * sw - pw + j * dw
            if 0 <= h < H and 0 <= w < W:
                v = float(x[n, c, h, w])
                if best is None or v > best or (np.isnan(v) and not np.isnan(best)):
                    best, idx[n, c, p, q] = v, h * W + w
        if best is not None:
            y[n, c, p, q] = best
    return y, idx


def ref_max_pool_backward(dy, idx, x_shape):
    dx = np.zeros(x_shape)
    N, C, H, W = x_shape
    for n, c, p, q in itertools.product(*(range(s) for s in dy.shape)):
        if idx[n, c, p, q] >= 0:
            h, w = divmod(int(idx[n, c, p, q]), W)
            dx[n, c, h, w] += dy[n, c, p, q]
    return dx


def ref_avg_pool(x, dy, kernel, stride, padding, ceil=False, include_pad=True, divisor=None):
    """(y, dx): each window's sum over its input elements divided by ``divisor``, else by its size up
    to the padded input's edge (include_pad) or its count of input elements."""
    (kh, kw), (sh, sw), (ph, pw) = _p(kernel), _p(stride or kernel), _p(padding)
    N, C, H, W = x.shape
    P, Q = out_size(H, kh, sh, ph, 1, ceil), out_size(W, kw, sw, pw, 1, ceil)
    y = np.zeros((N, C, P, Q))
    dx = np.zeros(x.shape)
    for p, q in itertools.product(range(P), range(Q)):
        rows = [h for h in range(p * sh - ph, p * sh - ph + kh) if h < H + ph]
        cols = [w for w in range(q * sw - pw, q * sw - pw + kw) if w < W + pw]
        inside = [(h, w) for h in rows for w in cols if 0 <= h < H and 0 <= w < W]
        div = divisor or (len(rows) * len(cols) if include_pad else len(inside))
        for h, w in inside:
            y[:, :, p, q] += x[:, :, h, w] / div
            if dy is not None:
                dx[:, :, h, w] += dy[:, :, p, q] / div
    return y, dx


def _distinct(rng, shape, dtype):
    """Values without ties (PyTorch's indices and ours must then be the same)."""
    return (rng.permutation(int(np.prod(shape))).reshape(shape) / 7.0 - 3.0).astype(dtype)


def _ties(rng, shape, dtype):
    """Small integers (many ties: the first maximum wins) and some -inf."""
    x = rng.integers(-2, 3, shape).astype(dtype)
    x[rng.random(shape) < 0.05] = -np.inf
    return x


def _fits(shape, k, s, p, d=(1, 1), ceil=False):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _p(k), _p(s), _p(p), _p(d)
    return (2 * ph <= kh and 2 * pw <= kw and out_size(shape[2], kh, sh, ph, dh, ceil) >= 1
            and out_size(shape[3], kw, sw, pw, dw, ceil) >= 1)


def _max_cases():
    for (k, s, p), d in itertools.product(GRID, (1, 2)):
        yield k, s, p, d
    yield from MAX_EXTRA


# ------------------------------------------------------------------------------------- max pooling

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("ceil", [False, True], ids=["floor", "ceil"])
def test_max_pool_options_match_reference(ceil, dtype):
    rng = np.random.default_rng(0)
    for shape, (k, s, p, d) in itertools.product(SHAPES, _max_cases()):
        what = f"shape {shape} kernel {k} stride {s} padding {p} dilation {d} ceil_mode {ceil}"
        x = _ties(rng, shape, dtype)
        if not _fits(shape, k, s, p, d, ceil):
            with pytest.raises(ValueError, match=r"larger than the padded input|padding must be"):
                fa.max_pool2d(x, k, s, p, d, ceil)
            continue
        ry, ridx = ref_max_pool(x, k, s, p, d, ceil)
        y, idx = fa.max_pool2d(x, k, s, p, d, ceil, True)
        assert y.dtype == dtype and idx.dtype == np.int64, what
        np.testing.assert_array_equal(y, ry, err_msg=what)
        np.testing.assert_array_equal(idx, ridx, err_msg=what)
        np.testing.assert_array_equal(fa.max_pool2d(x, k, s, p, d, ceil), y, err_msg=what)
        y_w, idx_w = fa.max_pool2d(x, k, s, p, d, ceil, "window")
        assert idx_w.dtype == pool.pool_index_dtype(k), what
        np.testing.assert_array_equal(pool.max_pool2d_flat_indices(idx_w, shape, k, s, p, d, ceil), idx,
                                      err_msg=what)
        dy = rng.standard_normal(y.shape).astype(dtype)
        rdx = ref_max_pool_backward(dy.astype(np.float64), ridx, shape)
        dx = fa.max_pool2d_backward(dy, x, k, s, p, d, ceil)
        assert dx.dtype == dtype, what
        np.testing.assert_allclose(dx, rdx, **TOL[dtype], err_msg=what)
        # from the indices, either form, x given by its shape: the same dx, bit for bit
        np.testing.assert_array_equal(fa.max_pool2d_backward(dy, shape, k, s, p, d, ceil, indices=idx), dx,
                                      err_msg=what)
        np.testing.assert_array_equal(fa.max_pool2d_backward(dy, x, k, s, p, d, ceil, indices=idx_w), dx,
                                      err_msg=what)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("ceil", [False, True], ids=["floor", "ceil"])
def test_max_pool_options_match_torch(ceil, dtype):
    torch = torch_or_skip()
    F = torch.nn.functional
    rng = np.random.default_rng(1)
    for shape, (k, s, p, d) in itertools.product(SHAPES, _max_cases()):
        what = f"shape {shape} kernel {k} stride {s} padding {p} dilation {d} ceil_mode {ceil}"
        x = _distinct(rng, shape, dtype)
        tx = torch.tensor(x, requires_grad=True)
        if not _fits(shape, k, s, p, d, ceil):
            with pytest.raises(RuntimeError):
                F.max_pool2d(tx, k, s, p, d, ceil)
            continue
        ty, ti = F.max_pool2d(tx, k, s, p, d, ceil, True)
        y, idx = fa.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
        np.testing.assert_array_equal(y, ty.detach().numpy(), err_msg=what)
        np.testing.assert_array_equal(idx, ti.numpy(), err_msg=what)
        dy = rng.standard_normal(y.shape).astype(dtype)
        ty.backward(torch.tensor(dy))
        np.testing.assert_allclose(fa.max_pool2d_backward(dy, x, k, s, p, d, ceil), tx.grad.numpy(),
                                   **TOL[dtype], err_msg=what)
        # PyTorch's own indices drive our backward
        np.testing.assert_allclose(fa.max_pool2d_backward(dy, shape, k, s, p, d, ceil, indices=ti.numpy()),
                                   tx.grad.numpy(), **TOL[dtype], err_msg=what)


def test_max_pool_nan():
    torch = torch_or_skip()
    F = torch.nn.functional
    rng = np.random.default_rng(2)
    for k, s, p, d, ceil in ((2, 2, 0, 1, False), (3, 1, 1, 1, True), (3, 2, 1, 2, True), (2, 3, 1, 1, True)):
        x = _distinct(rng, (2, 2, 7, 9), np.float64)
        x[0, 0, 3, 4] = x[1, 1, 6, 8] = np.nan  # one NaN per image: at most one per window
        y, idx = fa.max_pool2d(x, k, s, p, d, ceil, True)
        ty, ti = F.max_pool2d(torch.tensor(x), k, s, p, d, ceil, True)
        np.testing.assert_array_equal(y, ty.numpy())
        np.testing.assert_array_equal(idx, ti.numpy())
        ry, ridx = ref_max_pool(x, k, s, p, d, ceil)
        np.testing.assert_array_equal(y, ry)
        np.testing.assert_array_equal(idx, ridx)
        assert np.isnan(y).any() or d > 1  # dilation 2 may step over the NaN
    # several NaNs in a window: NaN all the same; the gradient goes to the first (PyTorch's to the last)
    x = np.array([[[[np.nan, 1.0, np.nan, 2.0], [0.0, 5.0, 9.0, 3.0]]]])
    y, idx = fa.max_pool2d(x, (2, 4), return_indices=True)
    assert np.isnan(y).all() and idx.tolist() == [[[[0]]]]
    assert np.isnan(F.max_pool2d(torch.tensor(x), (2, 4)).numpy()).all()
    dx = fa.max_pool2d_backward(np.ones((1, 1, 1, 1)), x, (2, 4))
    assert dx[0, 0, 0, 0] == 1 and dx.sum() == 1


def test_max_pool_window_without_input():
    # dilation 3 with padding 1 steps over a 2x2 input: -inf, no gradient, index -1 (PyTorch returns an
    # index outside the image there)
    x = np.arange(4.0).reshape(1, 1, 2, 2)
    y, idx = fa.max_pool2d(x, 2, 1, 1, 3, return_indices=True)
    assert y.tolist() == [[[[-np.inf]]]] and idx.tolist() == [[[[-1]]]]
    _, idx_w = fa.max_pool2d(x, 2, 1, 1, 3, return_indices="window")
    for i in (idx, idx_w, None):
        np.testing.assert_array_equal(fa.max_pool2d_backward(np.ones((1, 1, 1, 1)), x, 2, 1, 1, 3, indices=i),
                                      np.zeros_like(x))
    torch = torch_or_skip()
    np.testing.assert_array_equal(torch.nn.functional.max_pool2d(torch.tensor(x), 2, 1, 1, 3).numpy(), y)


def test_bad_flat_indices():
    x = np.zeros((2, 3, 6, 6))
    y, idx = fa.max_pool2d(x, 3, 2, 1, return_indices=True)
    for where, v in (((0, 0, 0, 0), 35), ((1, 2, 1, 1), -1), ((0, 1, 2, 2), 36), ((0, 0, 1, 0), -5)):
        bad = idx.copy()
        bad[where] = v
        with pytest.raises(ValueError, match=r"1 of the indices \(shape \(2, 3, 3, 3\)\).*3x3 window"):
            fa.max_pool2d_backward(y, x, 3, 2, 1, indices=bad)
    y, idx = fa.max_pool2d(x, 2, 1, 0, 2, return_indices=True)
    bad = idx.copy()
    bad[0, 0, 0, 0] = 1  # inside the window's span, but between two dilated taps
    with pytest.raises(ValueError, match="1 of the indices"):
        fa.max_pool2d_backward(y, x, 2, 1, 0, 2, indices=bad)
    with pytest.raises(ValueError, match="indices has dtype int32.*int64.*uint8"):
        fa.max_pool2d_backward(y, x, 2, 1, 0, 2, indices=idx.astype(np.int32))
    with pytest.raises(ValueError, match="already PyTorch's flat form"):
        pool.max_pool2d_flat_indices(idx, x.shape, 2, 1, 0, 2)
    with pytest.raises(ValueError, match="return_indices must be True, False or 'window', got 'flat'"):
        fa.max_pool2d(x, 2, return_indices="flat")


# --------------------------------------------------------------------------------- average pooling

def _avg_cases():
    for (k, s, p), include, divisor in itertools.product(GRID, (True, False), (None, 3)):
        yield k, s, p, include, divisor
    for (k, s, p) in AVG_EXTRA:
        yield k, s, p, False, None


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("ceil", [False, True], ids=["floor", "ceil"])
def test_avg_pool_options_match_reference(ceil, dtype):
    rng = np.random.default_rng(3)
    for shape, (k, s, p, include, divisor) in itertools.product(SHAPES, _avg_cases()):
        what = (f"shape {shape} kernel {k} stride {s} padding {p} ceil_mode {ceil} count_include_pad "
                f"{include} divisor_override {divisor}")
        x = rng.standard_normal(shape).astype(dtype)
        if not _fits(shape, k, s, p, 1, ceil):
            with pytest.raises(ValueError):
                fa.avg_pool2d(x, k, s, p, ceil, include, divisor)
            continue
        y = fa.avg_pool2d(x, k, s, p, ceil, include, divisor)
        dy = rng.standard_normal(y.shape).astype(dtype)
        ry, rdx = ref_avg_pool(x.astype(np.float64), dy.astype(np.float64), k, s, p, ceil, include, divisor)
        assert y.dtype == dtype and y.shape == ry.shape, what
        np.testing.assert_allclose(y, ry, **TOL[dtype], err_msg=what)
        dx = fa.avg_pool2d_backward(dy, x, k, s, p, ceil, include, divisor)
        assert dx.dtype == dtype, what
        np.testing.assert_allclose(dx, rdx, **TOL[dtype], err_msg=what)
        np.testing.assert_array_equal(fa.avg_pool2d_backward(dy, shape, k, s, p, ceil, include, divisor), dx,
                                      err_msg=what)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("ceil", [False, True], ids=["floor", "ceil"])
def test_avg_pool_options_match_torch(ceil, dtype):
    torch = torch_or_skip()
    F = torch.nn.functional
    rng = np.random.default_rng(4)
    for shape, (k, s, p, include, divisor) in itertools.product(SHAPES, _avg_cases()):
        what = (f"shape {shape} kernel {k} stride {s} padding {p} ceil_mode {ceil} count_include_pad "
                f"{include} divisor_override {divisor}")
        if not _fits(shape, k, s, p, 1, ceil):
            continue
        x = rng.standard_normal(shape).astype(dtype)
        tx = torch.tensor(x, requires_grad=True)
        ty = F.avg_pool2d(tx, k, s, p, ceil, include, divisor)
        y = fa.avg_pool2d(x, k, s, p, ceil, include, divisor)
        np.testing.assert_allclose(y, ty.detach().numpy(), **TOL[dtype], err_msg=what)
        dy = rng.standard_normal(y.shape).astype(dtype)
        ty.backward(torch.tensor(dy))
        np.testing.assert_allclose(fa.avg_pool2d_backward(dy, x, k, s, p, ceil, include, divisor),
                                   tx.grad.numpy(), **TOL[dtype], err_msg=what)


@pytest.mark.parametrize("k,s,p,ceil,include,divisor", [
    (3, 2, 1, True, True, None), (3, 2, 1, True, False, None), (2, 3, 1, True, False, 3),
    (3, 1, 0, False, True, -2), ((3, 2), (2, 3), (1, 1), True, False, None)])
def test_avg_pool_gradcheck(k, s, p, ceil, include, divisor):
    x = np.random.default_rng(5).standard_normal((2, 2, 7, 9))
    assert fa.gradcheck(lambda a: fa.avg_pool2d(a, k, s, p, ceil, include, divisor),
                        lambda dy, a: fa.avg_pool2d_backward(dy, a, k, s, p, ceil, include, divisor), (x,))


def test_avg_pool_errors():
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(ValueError, match="avg_pool2d: divisor_override must not be zero"):
        fa.avg_pool2d(x, 2, divisor_override=0)
    with pytest.raises(ValueError, match="avg_pool2d_backward: divisor_override must not be zero"):
        fa.avg_pool2d_backward(np.zeros((1, 1, 2, 2)), x, 2, divisor_override=0)
    with pytest.raises(TypeError, match="divisor_override must be an int or None, got 1.5"):
        fa.avg_pool2d(x, 2, divisor_override=1.5)
    with pytest.raises(TypeError, match="count_include_pad must be a bool, got 'no'"):
        fa.avg_pool2d(x, 2, 2, 1, False, "no")
    with pytest.raises(TypeError, match="ceil_mode must be a bool, got 2"):
        fa.avg_pool2d(x, 2, ceil_mode=2)
    with pytest.raises(ValueError, match=r"padding must be between 0 and half the kernel size \(2\), got 2"):
        fa.avg_pool2d(x, 2, padding=2)
    with pytest.raises(ValueError, match=r"dy has shape \(1, 1, 2, 2\), but pooling x of shape \(1, 1, 4, 4\) "
                                         r"gives \(1, 1, 3, 3\)"):
        fa.avg_pool2d_backward(np.zeros((1, 1, 2, 2)), x, 2, 1, ceil_mode=True)


# ------------------------------------------------------------------------- shapes, hypothesis-drawn

@settings(max_examples=30, deadline=None)
@given(H=st.integers(1, 9), W=st.integers(1, 9), kh=st.integers(1, 4), kw=st.integers(1, 4),
       sh=st.integers(1, 4), sw=st.integers(1, 4), ph=st.integers(0, 2), pw=st.integers(0, 2),
       dh=st.integers(1, 3), dw=st.integers(1, 3), ceil=st.booleans())
def test_output_shape_rule(H, W, kh, kw, sh, sw, ph, pw, dh, dw, ceil):
    """Any geometry: the output shape is PyTorch's rule or a ValueError naming the sizes, and the values
    agree with the references."""
    args = ((kh, kw), (sh, sw), (ph, pw))
    x = np.random.default_rng(H * 10 + W).standard_normal((1, 2, H, W))
    if 2 * ph > kh or 2 * pw > kw:
        with pytest.raises(ValueError, match="padding must be between 0 and half the kernel size"):
            fa.max_pool2d(x, *args, (dh, dw), ceil)
        return
    P, Q = out_size(H, kh, sh, ph, dh, ceil), out_size(W, kw, sw, pw, dw, ceil)
    if P < 1 or Q < 1:
        with pytest.raises(ValueError, match=rf"larger than the padded input {H + 2 * ph}x{W + 2 * pw} "
                                             rf"\(x shape \(1, 2, {H}, {W}\)\)"):
            fa.max_pool2d(x, *args, (dh, dw), ceil)
        return
    assert pool.pool_output_shape(x.shape, *args, dilation=(dh, dw), ceil_mode=ceil) == (1, 2, P, Q)
    y, idx = fa.max_pool2d(x, *args, (dh, dw), ceil, True)
    ry, ridx = ref_max_pool(x, *args, (dh, dw), ceil)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(idx, ridx)
    if out_size(H, kh, sh, ph, 1, ceil) >= 1 and out_size(W, kw, sw, pw, 1, ceil) >= 1:
        dy = np.ones((1, 2) + (out_size(H, kh, sh, ph, 1, ceil), out_size(W, kw, sw, pw, 1, ceil)))
        for include in (True, False):
            ry, rdx = ref_avg_pool(x, dy, *args, ceil, include)
            np.testing.assert_allclose(fa.avg_pool2d(x, *args, ceil, include), ry, rtol=1e-13, atol=1e-14)
            np.testing.assert_allclose(fa.avg_pool2d_backward(dy, x, *args, ceil, include), rdx,
                                       rtol=1e-13, atol=1e-14)


# ------------------------------------------------------------------------------------- unbatched

def test_unbatched_pools_equal_batched():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 7, 9))
    x1 = x[None]
    for args in ((2,), (3, 2, 1, 2, True), (3, 1, 1, 1, False)):
        y, idx = fa.max_pool2d(x, *args, return_indices=True)
        y1, idx1 = fa.max_pool2d(x1, *args, return_indices=True)
        assert y.shape == y1.shape[1:] and idx.shape == idx1.shape[1:]
        np.testing.assert_array_equal(y, y1[0])
        np.testing.assert_array_equal(idx, idx1[0])
        np.testing.assert_array_equal(fa.max_pool2d(x, *args), y)
        _, idx_w = fa.max_pool2d(x, *args, return_indices="window")
        dy = rng.standard_normal(y.shape)
        want = fa.max_pool2d_backward(dy[None], x1, *args)[0]
        np.testing.assert_array_equal(fa.max_pool2d_backward(dy, x, *args), want)
        np.testing.assert_array_equal(fa.max_pool2d_backward(dy, x.shape, *args, indices=idx), want)
        np.testing.assert_array_equal(fa.max_pool2d_backward(dy, x.shape, *args, indices=idx_w), want)
    for args in ((2,), (3, 2, 1, True, False, None), (2, 1, 1, False, True, 3)):
        y = fa.avg_pool2d(x, *args)
        np.testing.assert_array_equal(y, fa.avg_pool2d(x1, *args)[0])
        dy = rng.standard_normal(y.shape)
        np.testing.assert_array_equal(fa.avg_pool2d_backward(dy, x.shape, *args),
                                      fa.avg_pool2d_backward(dy[None], x1, *args)[0])
    for out in (1, (3, 4)):
        y = fa.adaptive_avg_pool2d(x, out)
        np.testing.assert_array_equal(y, fa.adaptive_avg_pool2d(x1, out)[0])
        dy = rng.standard_normal(y.shape)
        np.testing.assert_array_equal(fa.adaptive_avg_pool2d_backward(dy, x), fa.adaptive_avg_pool2d_backward(
            dy[None], x1)[0])
        np.testing.assert_array_equal(fa.adaptive_avg_pool2d_backward(dy, x.shape, out),
                                      fa.adaptive_avg_pool2d_backward(dy[None], x1.shape, out)[0])
    assert pool.pool_output_shape((3, 7, 9), 3, 2, 1, ceil_mode=True) == (3, 4, 5)
    assert pool.adaptive_pool_output_shape((3, 7, 9), (2, None)) == (3, 2, 9)


def test_unbatched_conv_equals_batched():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 8, 7))
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    for kw in (dict(padding=1), dict(stride=2, dilation=2), dict(padding="same")):
        y, z = fa.conv2d(x, w, b, **kw, activation="relu", return_preactivation=True)
        y1, z1 = fa.conv2d(x[None], w, b, **kw, activation="relu", return_preactivation=True)
        assert y.shape == y1.shape[1:]
        np.testing.assert_array_equal(y, y1[0])
        np.testing.assert_array_equal(z, z1[0])
        np.testing.assert_array_equal(fa.conv2d(x, w, b, **kw), fa.conv2d(x[None], w, b, **kw)[0])
        dy = rng.standard_normal(y.shape)
        got = fa.conv2d_backward(dy, x, w, **kw, preactivation=z, activation="relu")
        want = fa.conv2d_backward(dy[None], x[None], w, **kw, preactivation=z1, activation="relu")
        assert got[0].shape == x.shape
        for g, r in zip(got, (want[0][0],) + want[1:]):
            np.testing.assert_array_equal(g, r)
        dx, dw, db = fa.conv2d_backward(dy, x, w, **kw, need_input_grad=False)
        assert dx is None
        np.testing.assert_array_equal(dw, fa.conv2d_backward(dy[None], x[None], w, **kw)[1])


def test_unbatched_modules_and_torch():
    torch = torch_or_skip()
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 9, 8)).astype(np.float32)
    for m in (nn.Conv2d(3, 4, 3, padding=1, seed=0), nn.MaxPool2d(3, 2, 1, ceil_mode=True),
              nn.MaxPool2d(2, dilation=2), nn.AvgPool2d(3, 2, 1, True, False),
              nn.AvgPool2d(2, divisor_override=3), nn.AdaptiveAvgPool2d((2, 3)), nn.Linear(8, 5, seed=0)):
        tm = models.to_torch(nn.Sequential(m))
        tx = torch.tensor(x, requires_grad=True)
        ty = tm(tx)
        y = m(x)
        assert y.shape == tuple(ty.shape), m
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=repr(m))
        dy = rng.standard_normal(y.shape).astype(np.float32)
        ty.backward(torch.tensor(dy))
        np.testing.assert_allclose(m.backward(dy), tx.grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=repr(m))


def test_wrong_ndim_names_the_shape():
    w = np.zeros((2, 3, 3, 3))
    for fn, args in ((fa.max_pool2d, (2,)), (fa.avg_pool2d, (2,)), (fa.adaptive_avg_pool2d, (1,)),
                     (fa.conv2d, (w,))):
        for shape in ((4, 4), (1, 1, 3, 4, 4)):
            msg = f"{fn.__name__}: x must be 4-D (N, C, H, W) or 3-D (C, H, W), got shape {shape}"
            with pytest.raises(ValueError, match=re.escape(msg)):
                fn(np.zeros(shape), *args)
    with pytest.raises(ValueError, match=r"max_pool2d_backward: dy has shape \(1, 3, 2, 2\), but pooling x "
                                         r"of shape \(3, 4, 4\) gives \(3, 2, 2\)"):
        fa.max_pool2d_backward(np.zeros((1, 3, 2, 2)), np.zeros((3, 4, 4)), 2)
    with pytest.raises(ValueError, match=r"indices has shape \(1, 3, 2, 2\), but pooling x of shape "
                                         r"\(3, 4, 4\) gives \(3, 2, 2\)"):
        fa.max_pool2d_backward(np.zeros((3, 2, 2)), (3, 4, 4), 2, indices=np.zeros((1, 3, 2, 2), np.int64))
    with pytest.raises(ValueError, match=r"avg_pool2d_backward: x must be 4-D .* got shape \(4, 4\)"):
        fa.avg_pool2d_backward(np.zeros((2, 2)), np.zeros((4, 4)), 2)
    with pytest.raises(ValueError, match=r"conv2d_backward: x is unbatched \(shape \(3, 5, 5\)\), so dy must "
                                         r"be 3-D \(K, P, Q\), got shape \(1, 2, 3, 3\)"):
        fa.conv2d_backward(np.zeros((1, 2, 3, 3)), np.zeros((3, 5, 5)), w)
    with pytest.raises(ValueError, match=r"conv2d_backward: x must be 4-D .* got shape \(5, 5\)"):
        fa.conv2d_backward(np.zeros((3, 3)), np.zeros((5, 5)), w)


# --------------------------------------------------------------------------------------- modules

def test_pool_modules_arguments_and_repr_as_torch():
    torch = torch_or_skip()
    tnn = torch.nn
    pairs = [(nn.MaxPool2d(3, 2, 1, 2, False, True), tnn.MaxPool2d(3, 2, 1, 2, False, True)),
             (nn.MaxPool2d(2), tnn.MaxPool2d(2)),
             (nn.MaxPool2d((3, 2), dilation=(1, 2)), tnn.MaxPool2d((3, 2), dilation=(1, 2))),
             (nn.AvgPool2d(3, 2, 1, True, False, 4), tnn.AvgPool2d(3, 2, 1, True, False, 4)),
             (nn.AvgPool2d(2), tnn.AvgPool2d(2))]
    for m, t in pairs:
        assert repr(m) == repr(t)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 9, 7))
    for m, t in pairs:
        t = t.double()
        tx = torch.tensor(x, requires_grad=True)
        ty = t(tx)
        y = m(x)
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-13, atol=1e-14, err_msg=repr(m))
        dy = rng.standard_normal(y.shape)
        ty.backward(torch.tensor(dy))
        np.testing.assert_allclose(m.backward(dy), tx.grad.numpy(), rtol=1e-13, atol=1e-14, err_msg=repr(m))
        # to_torch passes every option
        assert repr(models.to_torch(nn.Sequential(m))[0]) == repr(t)
    m = nn.MaxPool2d(3, 2, 1, return_indices=True, ceil_mode=True)
    y, idx = m(x)
    ty, ti = tnn.MaxPool2d(3, 2, 1, return_indices=True, ceil_mode=True)(torch.tensor(x))
    np.testing.assert_array_equal(y, ty.numpy())
    np.testing.assert_array_equal(idx, ti.numpy())
    tm = models.to_torch(nn.Sequential(m))[0]
    assert tm.return_indices and tm.ceil_mode
    m.eval()
    y2, idx2 = m(x)
    np.testing.assert_array_equal(idx2, idx)


def test_pool_modules_keep_compact_indices():
    m = nn.MaxPool2d(3, 2, 1, dilation=2, ceil_mode=True)
    x = np.random.default_rng(10).standard_normal((2, 3, 9, 8)).astype(np.float32)
    y = m(x)
    shape, dtype, idx = m._saved
    assert shape == x.shape and idx.dtype == np.uint8 and idx.shape == y.shape
    dy = np.ones_like(y)
    np.testing.assert_array_equal(m.backward(dy), fa.max_pool2d_backward(dy, x, 3, 2, 1, 2, True))


# ---------------------------------------------------------------------------------------- linear

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(5,), (0, 5), (2, 3, 5), (2, 0, 5), (1, 5)], ids=str)
def test_linear_any_leading_shape(shape, dtype):
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((4, 5)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    y, z = fa.linear(x, w, b, activation="relu", return_preactivation=True)
    assert y.shape == shape[:-1] + (4,) and y.dtype == dtype
    x2 = x.reshape(-1, 5)
    y2, z2 = fa.linear(x2, w, b, activation="relu", return_preactivation=True)
    np.testing.assert_array_equal(y, y2.reshape(y.shape))
    np.testing.assert_allclose(z, x.astype(np.float64) @ w.T.astype(np.float64) + b, **TOL[dtype])
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, db = fa.linear_backward(dy, x, w, preactivation=z, activation="relu")
    dx2, dw2, db2 = fa.linear_backward(dy.reshape(-1, 4), x2, w, preactivation=z2, activation="relu")
    assert dx.shape == shape and dw.shape == (4, 5) and db.shape == (4,)
    np.testing.assert_array_equal(dx, dx2.reshape(shape))
    np.testing.assert_array_equal(dw, dw2)
    np.testing.assert_array_equal(db, db2)
    if x.size == 0:
        assert not dw.any() and not db.any()
    m = nn.Linear(5, 4, dtype=dtype, seed=1)
    ym = m(x)
    assert ym.shape == y.shape
    dxm = m.backward(dy)
    assert dxm.shape == shape and m.weight.grad.shape == (4, 5)
    torch = torch_or_skip()
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    ty = torch.nn.functional.linear(tx, tw, tb)
    np.testing.assert_allclose(z, ty.detach().numpy(), **TOL[dtype])
    ty.backward(torch.tensor(dy))
    dx, dw, db = fa.linear_backward(dy, x, w)
    for got, t in ((dx, tx), (dw, tw), (db, tb)):
        np.testing.assert_allclose(got, t.grad.numpy(), **TOL[dtype])


def test_linear_errors_name_the_shapes():
    w = np.zeros((4, 5))
    with pytest.raises(ValueError, match=r"x of shape \(3,\) does not match weight of shape \(4, 5\)"):
        fa.linear(np.zeros(3), w)
    with pytest.raises(ValueError, match=r"x of shape \(\) does not match"):
        fa.linear(np.float64(1.0), w)
    with pytest.raises(ValueError, match=r"dy has shape \(1, 4\), expected \(4,\) for x \(5,\)"):
        fa.linear_backward(np.zeros((1, 4)), np.zeros(5), w)
