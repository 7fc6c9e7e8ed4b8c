"""max_pool2d's window-local indices path (return_indices='window' / indices=): the same winners as the recomputing path, bit
for bit, and PyTorch's indices and gradients; NaN, ties, padding, overlapping windows, errors."""

import numpy as np
import pytest

import fastact as fa
from fastact import pool
from conftest import torch_or_skip

DTYPES = (np.float32, np.float64)
# (kernel, stride, padding): the 2x2 fast path, overlapping windows, padding, non-square, a window of
# more than 255 positions (int32 indices)
CASES = [(2, None, 0), (2, 1, 0), (3, 2, 1), (3, 1, 1), ((3, 2), (1, 2), (1, 0)), ((2, 4), (3, 2), (1, 1)),
         (16, 1, 0), (3, None, 0)]
IDS = ["k2", "k2-s1", "k3-s2-p1", "k3-s1-p1", "k3x2-s1x2-p1x0", "k2x4-s3x2-p1x1", "k16-int32", "k3"]


def _x(rng, shape, dtype, nan=0.05):
    """Small integers (many ties), some -inf, some NaN."""
    x = rng.integers(-2, 3, shape).astype(dtype)
    x[rng.random(shape) < 0.05] = -np.inf
    x[rng.random(shape) < nan] = np.nan
    return x


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("kernel,stride,padding", CASES, ids=IDS)
def test_indices_path_equals_recompute_path(kernel, stride, padding, dtype):
    rng = np.random.default_rng(1)
    for shape in ((3, 4, 17, 18), (2, 3, 16, 17)):  # odd and even sizes: rows/columns no window covers
        x = _x(rng, shape, dtype)
        y = fa.max_pool2d(x, kernel, stride, padding)
        yi, idx = fa.max_pool2d(x, kernel, stride, padding, return_indices="window")
        assert idx.dtype == pool.pool_index_dtype(kernel) and idx.shape == y.shape
        np.testing.assert_array_equal(yi, y)
        # the indices point at the value the forward returned
        flat = pool.max_pool2d_flat_indices(idx, x, kernel, stride, padding)
        picked = np.take_along_axis(x.reshape(*shape[:2], -1), flat.reshape(*shape[:2], -1), 2)
        np.testing.assert_array_equal(picked.reshape(y.shape), y)
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx = fa.max_pool2d_backward(dy, x, kernel, stride, padding)
        dxi = fa.max_pool2d_backward(dy, x, kernel, stride, padding, indices=idx)
        assert dxi.dtype == dx.dtype == dtype
        np.testing.assert_array_equal(dxi, dx)
        # x given by its shape only
        np.testing.assert_array_equal(fa.max_pool2d_backward(dy, shape, kernel, stride, padding, indices=idx), dx)
        # the general (window-loop) kernels agree with the 2x2 fast paths (white-box on purpose: the
        # public functions pick the fast path for these shapes)
        a = pool.pool_window(kernel, stride, padding)
        y_gen, idx_gen = np.empty_like(y), np.empty_like(idx)
        pool._max_pool_forward_indices(np.ascontiguousarray(x), *a, y_gen, idx_gen)
        np.testing.assert_array_equal(y_gen, y)
        np.testing.assert_array_equal(idx_gen, idx)
        dx_gen = np.zeros_like(x)
        assert pool._max_pool_backward_indices(dy, idx, *a, dx_gen) == 0
        np.testing.assert_array_equal(dx_gen, dx)
        dx_rec = np.zeros_like(x)
        pool._max_pool_backward(dy, np.ascontiguousarray(x), *a, dx_rec)
        np.testing.assert_array_equal(dx_rec, dx)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_2x2_nan_ties_and_inf(dtype):
    x = np.zeros((1, 1, 4, 6), dtype)
    x[0, 0, :2, :2] = [[1, 3], [3, 3]]                  # tie: the first 3, position 1
    x[0, 0, :2, 2:4] = [[np.nan, 1], [np.nan, 9]]       # two NaNs: the first, position 0
    x[0, 0, :2, 4:] = [[1, 2], [np.nan, 9]]             # NaN beats 9: position 2
    x[0, 0, 2:, :2] = -np.inf                           # all -inf: the first
    x[0, 0, 2:, 2:4] = [[-1, -1], [-1, 0]]              # position 3
    x[0, 0, 2:, 4:] = [[5, 4], [5, 5]]                  # tie: position 0
    y, idx = fa.max_pool2d(x, 2, return_indices="window")
    np.testing.assert_array_equal(idx[0, 0], [[1, 0, 2], [0, 3, 0]])
    np.testing.assert_array_equal(y[0, 0], [[3, np.nan, np.nan], [-np.inf, 0, 5]])
    dy = np.arange(1, 7, dtype=dtype).reshape(1, 1, 2, 3)
    dx = fa.max_pool2d_backward(dy, x, 2, indices=idx)
    want = np.zeros((4, 6), dtype)
    want[0, 1], want[0, 2], want[1, 4], want[2, 0], want[3, 3], want[2, 4] = 1, 2, 3, 4, 5, 6
    np.testing.assert_array_equal(dx[0, 0], want)
    np.testing.assert_array_equal(fa.max_pool2d_backward(dy, x, 2), want[None, None])


def test_non_contiguous_and_integer_input():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((4, 6, 20, 22))
    xv = base.astype(np.float32)[::2, 1::2, 1:, ::2]  # a strided view
    x = np.ascontiguousarray(xv)
    assert not xv.flags.c_contiguous
    for kernel, stride, padding in ((2, None, 0), (3, 2, 1)):
        y, idx = fa.max_pool2d(xv, kernel, stride, padding, return_indices="window")
        yc, idxc = fa.max_pool2d(x, kernel, stride, padding, return_indices="window")
        np.testing.assert_array_equal(y, yc)
        np.testing.assert_array_equal(idx, idxc)
        dy = rng.standard_normal(y.shape).astype(np.float32)[..., ::-1]  # a non-contiguous dy too
        idx_nc = np.asfortranarray(idx)  # non-contiguous indices too
        np.testing.assert_array_equal(fa.max_pool2d_backward(dy, xv, kernel, stride, padding, indices=idx_nc),
                                      fa.max_pool2d_backward(np.ascontiguousarray(dy), x, kernel, stride, padding))
    xi = rng.integers(0, 5, (2, 2, 6, 6))  # integers compute in float64, as the recomputing path
    y, idx = fa.max_pool2d(xi, return_indices="window")
    dx = fa.max_pool2d_backward(np.ones(y.shape, np.float32), xi, indices=idx)
    assert dx.dtype == np.float64
    np.testing.assert_array_equal(dx, fa.max_pool2d_backward(np.ones(y.shape, np.float32), xi))


def test_empty_batch():
    y, idx = fa.max_pool2d(np.zeros((0, 3, 4, 4), np.float32), return_indices="window")
    assert y.shape == idx.shape == (0, 3, 2, 2)
    assert fa.max_pool2d_backward(y, (0, 3, 4, 4), indices=idx).shape == (0, 3, 4, 4)


def test_bad_indices():
    x = np.zeros((2, 3, 6, 6), np.float32)
    y, idx = fa.max_pool2d(x, 2, return_indices="window")
    with pytest.raises(ValueError, match=r"indices has shape \(2, 3, 3, 2\).*\(2, 3, 6, 6\).*\(2, 3, 3, 3\)"):
        fa.max_pool2d_backward(y, x, 2, indices=idx[..., :2])
    with pytest.raises(ValueError, match="indices has dtype int32.*uint8"):
        fa.max_pool2d_backward(y, x, 2, indices=idx.astype(np.int32))
    with pytest.raises(ValueError, match="48 of the indices"):  # int64: read as PyTorch's flat indices
        fa.max_pool2d_backward(y, x, 2, indices=idx.astype(np.int64))
    with pytest.raises(ValueError, match="indices has dtype uint8.*int32"):
        fa.max_pool2d_backward(np.zeros((2, 3, 1, 1)), (2, 3, 16, 16), 16, indices=np.zeros((2, 3, 1, 1), np.uint8))
    with pytest.raises(ValueError, match=r"dy has shape \(2, 3, 2, 3\)"):
        fa.max_pool2d_backward(y[:, :, :2], x, 2, indices=idx)
    bad = idx.copy()
    bad[1, 2, 0, 1] = 4  # outside the 2x2 window
    with pytest.raises(ValueError, match=r"1 of the indices \(shape \(2, 3, 3, 3\)\).*2x2"):
        fa.max_pool2d_backward(y, x, 2, indices=bad)
    y3, idx3 = fa.max_pool2d(x, 3, 2, 1, return_indices="window")
    bad = idx3.copy()
    bad[0, 0, 0, 0] = 0  # window (0, 0) starts in the padding: position 0 is padding
    with pytest.raises(ValueError, match="padding"):
        fa.max_pool2d_backward(y3, x, 3, 2, 1, indices=bad)
    bad[0, 0, 0, 0] = 9
    with pytest.raises(ValueError, match="3x3"):
        fa.max_pool2d_backward(y3, x, 3, 2, 1, indices=bad)




@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("kernel,stride,padding", CASES, ids=IDS)
def test_indices_and_backward_match_torch(kernel, stride, padding, dtype):
    torch = torch_or_skip()
    rng = np.random.default_rng(3)
    # distinct values: one maximum per window, so the indices and gradients must be PyTorch's exactly
    x = rng.standard_normal((2, 3, 17, 18)).astype(dtype)
    tx = torch.tensor(x, requires_grad=True)
    ty, ti = torch.nn.functional.max_pool2d(tx, kernel, stride, padding, return_indices="window")
    y, idx = fa.max_pool2d(x, kernel, stride, padding, return_indices="window")
    np.testing.assert_array_equal(y, ty.detach().numpy())
    flat = pool.max_pool2d_flat_indices(idx, x.shape, kernel, stride, padding)
    assert flat.dtype == np.int64
    np.testing.assert_array_equal(flat, ti.numpy())
    dy = rng.standard_normal(y.shape).astype(dtype)
    ty.backward(torch.tensor(dy))
    # bit for bit where no two windows add into one element; the summation order may differ otherwise
    np.testing.assert_allclose(fa.max_pool2d_backward(dy, x, kernel, stride, padding, indices=idx),
                               tx.grad.numpy(), rtol=1e-6 if dtype == np.float32 else 1e-14, atol=0)
    # ties and NaN: PyTorch's vectorised CPU kernel does not promise the first of equal maxima, so only
    # the values must agree (ours is the first in row-major order, tested above against the recompute)
    xt = _x(rng, (2, 3, 16, 16), dtype)
    ty, ti = torch.nn.functional.max_pool2d(torch.tensor(xt), kernel, stride, padding, return_indices="window")
    y, idx = fa.max_pool2d(xt, kernel, stride, padding, return_indices="window")
    np.testing.assert_array_equal(y, ty.numpy())
    flat = pool.max_pool2d_flat_indices(idx, xt.shape, kernel, stride, padding)
    take = lambda i: np.take_along_axis(xt.reshape(2, 3, -1), i.reshape(2, 3, -1), 2)  # noqa: E731
    np.testing.assert_array_equal(take(flat), take(ti.numpy()))


def test_module_keeps_indices_and_sequential_trains():
    torch = torch_or_skip()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 3, 9, 8)).astype(np.float32)
    m = fa.nn.MaxPool2d(3, 2, 1)
    y = m(x)
    shape, dtype, idx = m._saved  # not x itself: it would stay alive until the backward
    assert shape == x.shape and dtype == x.dtype and idx.dtype == np.uint8 and idx.shape == y.shape
    dy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_array_equal(m.backward(dy), fa.max_pool2d_backward(dy, x, 3, 2, 1))
    m(x.astype(np.float64))  # dx takes the dtype of dy and x together, as without indices
    dx = m.backward(dy)
    assert dx.dtype == np.float64
    np.testing.assert_array_equal(dx, fa.max_pool2d_backward(dy, x.astype(np.float64), 3, 2, 1))
    m.eval()
    m._saved = None
    np.testing.assert_array_equal(m(x), y)
    assert m._saved is None
    seq = fa.nn.Sequential(fa.nn.Conv2d(3, 4, 3, padding=1), fa.nn.ReLU(), fa.nn.MaxPool2d(2))
    tseq = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2))
    tseq.load_state_dict({k: torch.tensor(v) for k, v in seq.state_dict().items()})
    tx = torch.tensor(x, requires_grad=True)
    ty = tseq(tx)
    y = seq(x)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(seq.backward(dy), tx.grad.numpy(), rtol=1e-4, atol=1e-5)
