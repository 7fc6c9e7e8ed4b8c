"""fastact.cuda against the CPU results, on small shapes.

Without a GPU these run on Numba's CUDA simulator, in their own process (``.ci/run``)::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/test_cuda.py

Block and tile sizes are made small (set on the package: the kernels read them at each launch) (32 threads per block, at most 3 blocks, 4x4 GEMM tiles) so that every
kernel runs over several blocks and its grid-stride loop goes round more than once. The same tests run
unchanged on a real GPU. In the ordinary test run (no GPU, no simulator) they skip, except the check
that the package imports and explains itself without one.
"""

import os

import numpy as np
import pytest

import fastact
from fastact import cuda as fcuda
from fastact.table import ENTRIES, NAMES
from fastact.cuda._device import transposed

from conftest import assert_close, default_kwargs

needs_device = pytest.mark.skipif(not fcuda.is_available(),
                                  reason="no CUDA GPU and NUMBA_ENABLE_CUDASIM is not set")

fcuda.THREADS_PER_BLOCK = 32
fcuda.MAX_BLOCKS = 3
fcuda.TILE = 4

DTYPES = [np.float32, np.float64]
IDS = ["f32", "f64"]


def _numba_cuda():
    from numba import cuda
    return cuda


def dev(a):
    return fcuda.to_device(a, dtype=a.dtype)


def host(d):
    return d.copy_to_host()


@needs_device
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name", NAMES)
def test_activation_forward_and_backward_match_cpu(name, dtype):
    act = ENTRIES[name]
    rng = np.random.default_rng(1)
    lo, hi = act.domain
    x = rng.uniform(lo, hi, 300).astype(dtype)   # > 3 blocks x 32 threads: the grid-stride loop runs
    x[:4] = [np.nan, 0.0, -0.0, 1e-30]
    dy = rng.standard_normal(x.size).astype(dtype)
    kw = default_kwargs(act)
    y = getattr(fcuda, name)(dev(x), **kw)
    dx = getattr(fcuda, f"{name}_backward")(dev(dy), dev(x), **kw)
    assert y.dtype == dtype and dx.dtype == dtype
    assert_close(host(y), getattr(fastact, name)(x, **kw), dtype, err_msg=f"{name} forward")
    assert_close(host(dx), getattr(fastact, f"{name}_backward")(dy, x, **kw), dtype, "backward",
                 err_msg=f"{name} backward")


@needs_device
def test_activation_parameters_and_aliases():
    x = np.linspace(-3, 3, 101).astype(np.float32)
    np.testing.assert_allclose(host(fcuda.relu(dev(x), negative_slope=0.1, max_value=2.0)),
                               fastact.relu(x, negative_slope=0.1, max_value=2.0), rtol=1e-6)
    np.testing.assert_allclose(host(fcuda.swish(dev(x))), fastact.silu(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(host(fcuda.gelu(dev(x), approximate="tanh")),
                               fastact.gelu(x, approximate="tanh"), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="unexpected parameters"):
        fcuda.relu(dev(x), slope=1.0)


@needs_device
def test_bad_inputs_raise_clear_errors():
    x = np.ones((4, 5), np.float32)
    with pytest.raises(TypeError, match="device array"):
        fcuda.relu(x)
    with pytest.raises(ValueError, match="C-contiguous"):
        fcuda.relu(dev(x)[:, ::2])  # a strided view (a real device's .T copies into a new array)
    with pytest.raises(TypeError, match="float32 or float64"):
        fcuda.relu(_numba_cuda().to_device(np.ones(3, np.int32)))
    with pytest.raises(ValueError, match="shape"):
        fcuda.relu_backward(dev(np.ones(3, np.float32)), dev(x))
    with pytest.raises(ValueError, match="channels|shape"):
        fcuda.conv2d(dev(np.ones((1, 2, 5, 5), np.float32)), dev(np.ones((3, 4, 3, 3), np.float32)))


@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") == "1",
                    reason="the simulator's arrays have no __cuda_array_interface__")
@needs_device
def test_cuda_array_interface_objects_are_accepted():
    class Wrapped:  # what CuPy or PyTorch hand over: only the interface
        def __init__(self, d):
            self.__cuda_array_interface__ = d.__cuda_array_interface__
            self._keep = d

    x = np.linspace(-2, 2, 50).astype(np.float32)
    np.testing.assert_array_equal(host(fcuda.relu(Wrapped(dev(x)))), fastact.relu(x))


@needs_device
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_tiled_gemm_matches_numpy(dtype):
    rng = np.random.default_rng(2)
    for m, k, n in [(5, 7, 9), (1, 13, 4), (8, 4, 1), (9, 9, 9)]:
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        assert_close(host(fcuda.matmul(dev(a), dev(b))), a.astype(float) @ b, dtype)
        # transposed views, as the layer backwards pass them (strides swapped, no copy)
        at, bt = transposed(dev(a.T.copy())), transposed(dev(b.T.copy()))
        assert not at.is_c_contiguous() or 1 in at.shape  # a single row or column is both
        assert_close(host(fcuda.matmul(at, bt)), a.astype(float) @ b, dtype)


CONV_CASES = [(3, 1, 1), (3, 2, 1), (1, 1, 0), (5, 2, 2), (3, 1, 0)]


@needs_device
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("kernel,stride,padding", CONV_CASES)
def test_conv2d_forward_and_backward_match_cpu(kernel, stride, padding, dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    w = (0.3 * rng.standard_normal((4, 3, kernel, kernel))).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    y, z = fcuda.conv2d(dev(x), dev(w), dev(b), stride, padding, activation="gelu",
                        return_preactivation=True)
    assert_close(host(y), fastact.conv2d(x, w, b, stride, padding, activation="gelu"), dtype)
    assert_close(host(z), fastact.conv2d(x, w, b, stride, padding), dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, db = fcuda.conv2d_backward(dev(dy), dev(x), dev(w), stride, padding)
    rx, rw, rb = fastact.conv2d_backward(dy, x, w, stride, padding)
    for got, want in ((dx, rx), (dw, rw), (db, rb)):
        assert_close(host(got), want, dtype, "backward")
    # with the activation's backward fused in front
    dx, dw, db = fcuda.conv2d_backward(dev(dy), dev(x), dev(w), stride, padding, preactivation=z,
                                       activation="gelu")
    dz = fastact.gelu_backward(dy, host(z))
    rx, rw, rb = fastact.conv2d_backward(dz, x, w, stride, padding)
    for got, want in ((dx, rx), (dw, rw), (db, rb)):
        assert_close(host(got), want, dtype, "backward")


# (C, K, groups, kernel, stride, padding, dilation, activation, bias, dtype): groups 1, 2 and depthwise
# (channel multiplier 1 and 2), dilation 1, 2 and a pair, stride 1 and 2, padding an int, a pair, 'same'
# (odd kernels: even padding; even kernels: the extra row and column at the bottom and right) and
# 'valid', on 7x6 inputs. 'same' and 'valid' with groups 1, dilation 1 and an odd kernel take the
# im2col path, the rest the direct kernels.
CONV_PARAM_CASES = [
    (4, 6, 2, 3, 1, 1, 2, "relu6", True, np.float32),
    (3, 3, 3, 3, 2, (1, 0), 1, "hardswish", False, np.float64),
    (3, 6, 3, 2, 1, "same", 1, None, True, np.float32),
    (2, 4, 1, 4, 1, "same", (1, 2), "relu6", True, np.float64),
    (4, 4, 2, 3, 2, "valid", 2, None, False, np.float64),
    (2, 3, 1, 3, 1, "same", 1, "hardswish", True, np.float32),
    (2, 3, 1, 3, 2, "valid", 1, None, True, np.float64),
]


def _conv_param_id(case):
    C, K, groups, kernel, stride, padding, dilation, act, bias, dtype = case
    return (f"C{C}K{K}g{groups}k{kernel}s{stride}p{padding}d{dilation}-{act}"
            f"{'-bias' if bias else ''}-{np.dtype(dtype).name}").replace(" ", "")


@needs_device
@pytest.mark.parametrize("case", CONV_PARAM_CASES, ids=[_conv_param_id(c) for c in CONV_PARAM_CASES])
def test_conv2d_groups_dilation_and_padding_match_cpu(case):
    C, K, groups, kernel, stride, padding, dilation, act, with_bias, dtype = case
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, C, 7, 6)).astype(dtype)
    w = (0.3 * rng.standard_normal((K, C // groups, kernel, kernel))).astype(dtype)
    b = rng.standard_normal(K).astype(dtype) if with_bias else None
    geom = (stride, padding, dilation, groups)
    y, z = fcuda.conv2d(dev(x), dev(w), None if b is None else dev(b), *geom, activation=act,
                        return_preactivation=True)
    ry, rz = fastact.conv2d(x, w, b, *geom, activation=act, return_preactivation=True)
    assert y.shape == ry.shape
    assert_close(host(y), ry, dtype)
    assert_close(host(z), rz, dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    # through the activation when there is one (dz = dy * act'(z) fused with the bias sum)
    kw = {} if act is None else dict(preactivation=z, activation=act)
    got = fcuda.conv2d_backward(dev(dy), dev(x), dev(w), *geom, **kw)
    want = fastact.conv2d_backward(dy, x, w, *geom, **({} if act is None else dict(preactivation=rz,
                                                                                     activation=act)))
    for g, r, name in zip(got, want, ("dx", "dweight", "dbias")):
        assert g.shape == r.shape, name
        assert_close(host(g), r, dtype, "backward", err_msg=name)
    if act is None:  # (a third backward costs seconds on the simulator: not for every case)
        dx, dw, db = fcuda.conv2d_backward(dev(dy), dev(x), dev(w), *geom, need_input_grad=False)
        assert dx is None
        assert_close(host(dw), want[1], dtype, "backward")


@needs_device
def test_conv2d_parameter_errors_match_cpu():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((1, 6, 5, 5)).astype(np.float32)
    bad = [  # (weight shape, stride, padding, dilation, groups)
        ((4, 2, 3, 3), 1, 0, 1, 4),        # 6 input channels, groups 4
        ((3, 3, 3, 3), 1, 0, 1, 2),        # 3 output channels, groups 2
        ((4, 2, 3, 3), 1, 0, 1, 2),        # weight expects 4 input channels, x has 6
        ((4, 6, 3, 3), 2, "same", 1, 1),   # 'same' needs stride 1
        ((4, 6, 3, 3), 1, "full", 1, 1),
        ((4, 6, 3, 3), 1, 0, 0, 1),        # dilation 0
        ((4, 6, 3, 3), 1, 0, 3, 1),        # the dilated kernel (7x7) is larger than the input
    ]
    for wshape, stride, padding, dilation, groups in bad:
        w = np.ones(wshape, np.float32)
        with pytest.raises(ValueError) as cpu:
            fastact.conv2d(x, w, None, stride, padding, dilation, groups)
        msg = str(cpu.value)
        with pytest.raises(ValueError) as gpu:
            fcuda.conv2d(dev(x), dev(w), None, stride, padding, dilation, groups)
        assert str(gpu.value) == msg
        with pytest.raises(ValueError) as gpu:
            fcuda.conv2d_backward(dev(np.ones((1, 4, 3, 3), np.float32)), dev(x), dev(w), stride, padding,
                                  dilation, groups)
        assert str(gpu.value) == msg
    with pytest.raises(ValueError, match="dy has shape"):
        fcuda.conv2d_backward(dev(np.ones((1, 6, 5, 5), np.float32)), dev(x), dev(np.ones((6, 1, 3, 3), np.float32)),
                              1, 1, 2, 6)


@needs_device
def test_device_net_with_grouped_dilated_same_padded_convs_matches_cpu():
    from fastact import nn
    dt = np.float64
    net = nn.Sequential(nn.Conv2d(2, 4, 2, padding="same", groups=2, dtype=dt, seed=0), nn.Activation("relu6"),
                        nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4, dtype=dt, seed=1),
                        nn.Activation("hardswish"), nn.Flatten(), nn.Linear(4 * 5 * 5, 3, dtype=dt, seed=2))
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 2, 5, 5)).astype(dt)
    y = np.array([0, 2])
    loss_fn = nn.CrossEntropyLoss()
    logits = net(x)
    loss_fn(logits, y)
    net.backward(loss_fn.backward())
    cpu_grads = {k: p.grad for k, p in net.named_parameters()}
    dnet = fcuda.DeviceNet(net)
    d_logits = dnet.forward(dev(x))
    assert_close(host(d_logits), logits, dt)
    grads = dnet.backward(fcuda.cross_entropy(d_logits, y)[1])
    assert set(grads) == set(cpu_grads)
    for k, g in grads.items():
        assert_close(host(g), cpu_grads[k], dt, "backward", err_msg=k)


@needs_device
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("kernel,stride,padding", [(2, None, 0), (3, 1, 1), (3, 2, 1), (2, 1, 0)])
def test_max_pool2d_matches_cpu(kernel, stride, padding, dtype):
    rng = np.random.default_rng(4)
    x = rng.integers(-3, 4, (2, 3, 7, 6)).astype(dtype)   # many ties
    x[0, 0, 0, 0] = np.nan
    y = fcuda.max_pool2d(dev(x), kernel, stride, padding)
    np.testing.assert_array_equal(host(y), fastact.max_pool2d(x, kernel, stride, padding))
    dy = rng.standard_normal(y.shape).astype(dtype)
    assert_close(host(fcuda.max_pool2d_backward(dev(dy), dev(x), kernel, stride, padding)),
                 fastact.max_pool2d_backward(dy, x, kernel, stride, padding), dtype, "backward")



@needs_device
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("kernel,stride,padding", [(2, None, 0), (3, 1, 1), (3, 2, 1)])
def test_max_pool2d_indices_match_cpu(kernel, stride, padding, dtype):
    rng = np.random.default_rng(6)
    x = rng.integers(-3, 4, (2, 3, 7, 6)).astype(dtype)   # many ties
    x[0, 0, 0, 0] = np.nan
    y, idx = fcuda.max_pool2d(dev(x), kernel, stride, padding, return_indices="window")
    cy, cidx = fastact.max_pool2d(x, kernel, stride, padding, return_indices="window")
    np.testing.assert_array_equal(host(y), cy)
    np.testing.assert_array_equal(host(idx), cidx)
    dy = rng.standard_normal(cy.shape).astype(dtype)
    assert_close(host(fcuda.max_pool2d_backward(dev(dy), dev(x), kernel, stride, padding, indices=idx)),
                 fastact.max_pool2d_backward(dy, x, kernel, stride, padding, indices=cidx), dtype, "backward")
    with pytest.raises(ValueError, match="indices has dtype"):
        fcuda.max_pool2d_backward(dev(dy), dev(x), kernel, stride, padding,
                                  indices=_numba_cuda().to_device(cidx.astype(np.int64)))
    # PyTorch's flat form is the CPU's return_indices=True; the device refuses it rather than return
    # another form under the same flag, and the host copy converts
    with pytest.raises(ValueError, match="max_pool2d_flat_indices"):
        fcuda.max_pool2d(dev(x), kernel, stride, padding, return_indices=True)
    np.testing.assert_array_equal(fastact.pool.max_pool2d_flat_indices(host(idx), x, kernel, stride, padding),
                                  fastact.max_pool2d(x, kernel, stride, padding, return_indices=True)[1])

@needs_device
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_linear_forward_and_backward_match_cpu(dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 10)).astype(dtype)
    w = rng.standard_normal((40, 10)).astype(dtype)   # 40 columns: the per-column kernel grid-strides
    b = rng.standard_normal(40).astype(dtype)
    y, z = fcuda.linear(dev(x), dev(w), dev(b), activation="gelu", return_preactivation=True)
    assert_close(host(y), fastact.linear(x, w, b, activation="gelu"), dtype)
    assert_close(host(z), fastact.linear(x, w, b), dtype)
    assert_close(host(fcuda.linear(dev(x), dev(w))), fastact.linear(x, w), dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    for got, want in zip(fcuda.linear_backward(dev(dy), dev(x), dev(w)),
                         fastact.linear_backward(dy, x, w)):
        assert_close(host(got), want, dtype, "backward")
    # the activation's backward fused with the bias sum
    got = fcuda.linear_backward(dev(dy), dev(x), dev(w), preactivation=z, activation="gelu")
    want = fastact.linear_backward(fastact.gelu_backward(dy, host(z)), x, w)
    for g, r in zip(got, want):
        assert_close(host(g), r, dtype, "backward")
    dx, dw, db = fcuda.linear_backward(dev(dy), dev(x), dev(w), preactivation=z, activation="gelu",
                                       need_input_grad=False)
    assert dx is None
    assert_close(host(dw), want[1], dtype, "backward")


@needs_device
@pytest.mark.parametrize("layer", ["conv", "linear"])
def test_fused_backward_takes_backward_params_and_no_activation_gives_z_is_y(layer):
    # pre-activations exactly at relu's kink: the subgradient decides the derivative there
    rng = np.random.default_rng(8)
    dt = np.float64
    if layer == "conv":
        x = rng.integers(-2, 3, (2, 2, 5, 5)).astype(dt)
        w = rng.integers(-1, 2, (3, 2, 3, 3)).astype(dt)
        fwd, bwd = fcuda.conv2d, fcuda.conv2d_backward
        cpu_bwd = fastact.conv2d_backward
    else:
        x = rng.integers(-2, 3, (5, 6)).astype(dt)
        w = rng.integers(-1, 2, (4, 6)).astype(dt)
        fwd, bwd = fcuda.linear, fcuda.linear_backward
        cpu_bwd = fastact.linear_backward
    y, z = fwd(dev(x), dev(w), return_preactivation=True)
    assert z is y
    zh = host(z)
    assert (zh == 0).any()
    dy = rng.standard_normal(zh.shape)
    params = {"negative_slope": 0.1, "subgradient": 0.5}
    got = bwd(dev(dy), dev(x), dev(w), preactivation=z, activation="relu", activation_params=params)
    want = cpu_bwd(fastact.relu_backward(dy, zh, **params), x, w)
    for g, r in zip(got, want):
        assert_close(host(g), r, dt, "backward")
    dx, dw, db = bwd(dev(dy), dev(x), dev(w), need_input_grad=False)
    assert dx is None
    for g, r in zip((dw, db), cpu_bwd(dy, x, w)[1:]):
        assert_close(host(g), r, dt, "backward")


@needs_device
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_vgg_forward_loss_and_every_gradient_on_device_match_cpu(dtype):
    from fastact import models, nn
    net = models.vgg([3, "M", 4], in_channels=1, num_classes=3, input_size=6, hidden=(5,),
                     activation="relu", seed=0, dtype=dtype)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 1, 6, 6)).astype(dtype)
    y = np.array([0, 2])
    loss_fn = nn.CrossEntropyLoss()
    logits = net(x)
    loss = loss_fn(logits, y)
    net.backward(loss_fn.backward())
    cpu_grads = {k: p.grad for k, p in net.named_parameters()}

    dnet = fcuda.DeviceNet(net)
    d_logits = dnet.forward(dev(x))
    assert_close(host(d_logits), logits, dtype)
    d_loss, dlogits = fcuda.cross_entropy(d_logits, y)
    assert d_loss == pytest.approx(loss, rel=1e-5)
    grads = dnet.backward(dlogits)
    assert set(grads) == set(cpu_grads)
    for k, g in grads.items():
        assert_close(host(g), cpu_grads[k], dtype, "backward", err_msg=k)
    with pytest.raises(ValueError, match="labels"):
        fcuda.cross_entropy(d_logits, np.array([0, 3]))


@needs_device
def test_shape_checks_of_the_conv_backward_and_matmul():
    rng = np.random.default_rng(7)
    x = dev(rng.standard_normal((1, 1, 3, 3)).astype(np.float32))
    w = dev(rng.standard_normal((1, 1, 2, 2)).astype(np.float32))
    dy = dev(np.ones((1, 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match="preactivation"):
        fcuda.conv2d_backward(dy, x, w, preactivation=dev(np.ones((1, 1, 1, 2), np.float32)),
                              activation="relu")
    with pytest.raises(ValueError, match="preactivation"):
        fcuda.conv2d_backward(dy, x, w, activation="relu")
    with pytest.raises(ValueError, match="preactivation"):
        fcuda.linear_backward(dev(np.ones((2, 3), np.float32)), dev(np.ones((2, 4), np.float32)),
                              dev(np.ones((3, 4), np.float32)), activation="relu")
    with pytest.raises(ValueError, match="dy has shape"):
        fcuda.linear_backward(dev(np.ones((2, 2), np.float32)), dev(np.ones((2, 4), np.float32)),
                              dev(np.ones((3, 4), np.float32)))
    with pytest.raises(TypeError, match="dtype"):
        fcuda.conv2d(x, dev(np.ones((1, 1, 2, 2), np.float64)))
    a = dev(np.ones((4, 4), np.float32))
    with pytest.raises(ValueError, match="out"):
        fcuda.matmul(a, a, out=dev(np.ones((2, 2), np.float32)))


def test_package_imports_and_explains_itself_without_a_device():
    # runs in every test process: without a GPU (or numba-cuda) the functions say why they cannot run
    assert {"conv2d", "linear_backward", "DeviceNet", "relu", "gelu_backward"} <= set(fcuda.__all__)
    if fcuda.is_available():
        return
    with pytest.raises(RuntimeError, match="NUMBA_ENABLE_CUDASIM|numba-cuda"):
        fcuda.relu(np.ones(3, np.float32))
