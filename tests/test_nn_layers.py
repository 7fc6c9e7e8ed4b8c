"""nn infrastructure for residual networks (buffers, user modules, Residual, nn.init) and the
pooling / dropout layers, against float64 NumPy references, finite differences and PyTorch.

Tolerances as in tests/test_layers.py: float64 1e-12, float32 against the float64 reference of the
same inputs rtol 1e-5 (a window mean of at most a few dozen values, summed in float64).
"""

import math

import numpy as np
import pytest

import fastact as fa
from fastact import nn
from fastact.nn import init
from conftest import tol, torch_or_skip

RNG = np.random.default_rng(5)
DTYPES = (np.float32, np.float64)


def close(a, b, dtype):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), equal_nan=True,
                               **tol(dtype, "forward"))


# ------------------------------------------------------------------------------ a user module

class Block(nn.Module):
    """conv (no bias) -> BN -> ReLU -> + x, the residual block of NetResDeep."""

    def __init__(self, c, dtype=np.float64, seed=0):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False, dtype=dtype, seed=seed)
        self.batch_norm = nn.BatchNorm2d(c, dtype=dtype)

    def forward(self, x):
        return self.batch_norm(self.conv(x), activation="relu", residual=x)

    def backward(self, dy):
        return self.conv.backward(self.batch_norm.backward(dy)) + dy


class Net(nn.Module):
    def __init__(self, dtype=np.float64):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1, dtype=dtype, seed=1)
        self.resblocks = nn.Sequential(*[Block(3, dtype, seed=i) for i in range(2)])
        self.scale = nn.Parameter(np.ones(1, dtype))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(3, 4, dtype=dtype, seed=3)

    def forward(self, x):
        h = self.resblocks(self.conv1(x)) * self.scale.data
        self._h = h
        return self.fc(self.flat(self.pool(h)))

    def backward(self, dy):
        dh = self.pool.backward(self.flat.backward(self.fc.backward(dy)))
        self.scale.grad += np.sum(dh * self._h / self.scale.data)
        return self.conv1.backward(self.resblocks.backward(dh * self.scale.data))


def test_user_module_keys_follow_assignment_order():
    net = Net()
    keys = list(net.state_dict())
    assert keys[:3] == ["scale", "conv1.weight", "conv1.bias"]  # own parameters first, as PyTorch
    assert keys[3:9] == ["resblocks.0.conv.weight", "resblocks.0.batch_norm.weight",
                         "resblocks.0.batch_norm.bias", "resblocks.0.batch_norm.running_mean",
                         "resblocks.0.batch_norm.running_var", "resblocks.0.batch_norm.num_batches_tracked"]
    assert "resblocks.1.batch_norm.running_var" in keys and keys[-2:] == ["fc.weight", "fc.bias"]
    assert [k for k, _ in net.named_parameters()][:2] == ["scale", "conv1.weight"]
    assert all("running" not in k and "tracked" not in k for k, _ in net.named_parameters())
    assert [k for k, _ in net.named_buffers()][0] == "resblocks.0.batch_norm.running_mean"
    assert len(net.buffers()) == 6


def test_user_module_keys_equal_torch():
    torch = torch_or_skip()
    tnn = torch.nn

    class TBlock(tnn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = tnn.Conv2d(c, c, 3, padding=1, bias=False)
            self.batch_norm = tnn.BatchNorm2d(c)

    class TNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(2, 3, 3, padding=1)
            self.resblocks = tnn.Sequential(*[TBlock(3) for _ in range(2)])
            self.scale = tnn.Parameter(torch.ones(1))
            self.pool = tnn.AdaptiveAvgPool2d(1)
            self.flat = tnn.Flatten()
            self.fc = tnn.Linear(3, 4)

    tsd = {k: v.numpy() for k, v in TNet().state_dict().items()}
    net = Net(np.float32)
    assert sorted(net.state_dict()) == sorted(tsd)
    net.load_state_dict(tsd)
    for k, v in net.state_dict().items():
        assert v.dtype == tsd[k].dtype and v.shape == tsd[k].shape, k


def test_user_module_gradcheck_train_eval_zero_grad():
    net = Net()
    x = RNG.standard_normal((3, 2, 4, 4))
    assert fa.gradcheck_module(net, x, np.array([0, 3, 1]))
    net.eval()
    assert all(not m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    net(x)
    net.backward(np.ones((3, 4)))
    assert any(np.any(p.grad != 0) for p in net.parameters())
    net.zero_grad()
    assert all(np.all(p.grad == 0) for p in net.parameters())
    assert int(net.resblocks[0].batch_norm.num_batches_tracked) > 0


def test_module_assignment_rules():
    class Early(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.zeros(2))
    with pytest.raises(AttributeError, match="super"):
        Early()
    m = nn.Module()
    m.w = nn.Parameter(np.zeros(2))
    with pytest.raises(TypeError, match="parameter 'w'"):
        m.w = np.zeros(2)
    m.w = None  # None removes it from the state dict, as PyTorch
    assert list(m.state_dict()) == []
    m.register_buffer("b", np.arange(3.0))
    m.b = np.zeros(3)  # an ndarray reassigns the buffer
    np.testing.assert_array_equal(m.state_dict()["b"], np.zeros(3))
    with pytest.raises(TypeError, match="buffer"):
        m.b = 3
    with pytest.raises(KeyError):
        m.c = nn.Parameter(np.zeros(1))
        m.register_buffer("c", np.zeros(1))
    with pytest.raises(TypeError):
        m.register_buffer("d", [1, 2])
    del m.b
    assert list(m.state_dict()) == ["c"]


def test_load_state_dict_errors_and_atomicity():
    net = Net()
    sd = net.state_dict()
    with pytest.raises(ValueError, match=r"missing keys \['scale'\]"):
        net.load_state_dict({k: v for k, v in sd.items() if k != "scale"})
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        net.load_state_dict(dict(sd, extra=np.zeros(1)))
    bad = {k: v + 1 for k, v in sd.items()}
    bad["fc.bias"] = np.zeros(7)
    with pytest.raises(ValueError, match=r"fc.bias has shape \(7,\)"):
        net.load_state_dict(bad)
    for k, v in net.state_dict().items():  # nothing written
        np.testing.assert_array_equal(v, sd[k])
    net.load_state_dict({"scale": np.full(1, 2.0)}, strict=False)
    assert net.scale.data[0] == 2.0


def test_conv_without_bias_and_astype():
    conv = nn.Conv2d(2, 3, 3, bias=False)
    assert list(conv.state_dict()) == ["weight"] and len(conv.parameters()) == 1
    x = RNG.standard_normal((1, 2, 5, 5)).astype(np.float32)
    y = conv(x)
    np.testing.assert_allclose(y, fa.conv2d(x, conv.weight.data), rtol=1e-6)
    conv.backward(np.ones_like(y))
    net = Net(np.float32).astype(np.float64)
    assert all(v.dtype == (np.int64 if k.endswith("num_batches_tracked") else np.float64)
               for k, v in net.state_dict().items())


# ----------------------------------------------------------------------------------------- Residual

def test_residual():
    block = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, seed=0, dtype=np.float64), nn.Tanh())
    r = nn.Residual(block)
    assert list(r.state_dict()) == ["block.0.weight", "block.0.bias"]
    x = RNG.standard_normal((2, 2, 4, 4))
    y = r(x)
    conv = fa.conv2d(x, block[0].weight.data, block[0].bias.data, padding=1)
    np.testing.assert_allclose(y, np.tanh(conv) + x, rtol=1e-12)
    net = nn.Sequential(r, nn.Flatten(), nn.Linear(32, 3, seed=1))
    assert fa.gradcheck_module(net, x, np.array([0, 2]))
    with pytest.raises(ValueError, match="shape"):
        nn.Residual(nn.Conv2d(2, 3, 1))(np.zeros((1, 2, 3, 3), np.float32))
    with pytest.raises(TypeError):
        nn.Residual(lambda x: x)


# -------------------------------------------------------------------------------------------- init

def test_calculate_gain_equals_torch():
    torch = torch_or_skip()
    for name in ["linear", "conv2d", "sigmoid", "tanh", "relu", "selu", "leaky_relu"]:
        assert init.calculate_gain(name) == pytest.approx(torch.nn.init.calculate_gain(name))
    assert init.calculate_gain("leaky_relu", 0.2) == \
        pytest.approx(torch.nn.init.calculate_gain("leaky_relu", 0.2))
    with pytest.raises(ValueError, match="Unsupported nonlinearity"):
        init.calculate_gain("gelu")
    with pytest.raises(ValueError, match="negative_slope"):
        init.calculate_gain("leaky_relu", "x")


@pytest.mark.parametrize("fn, shape, kwargs, std", [
    (init.kaiming_normal_, (256, 64, 3, 3), {}, math.sqrt(2 / 576)),
    (init.kaiming_normal_, (256, 64, 3, 3), dict(mode="fan_out", nonlinearity="relu"), math.sqrt(2 / 2304)),
    (init.kaiming_uniform_, (300, 400), dict(a=math.sqrt(5)), math.sqrt(2 / 6) / math.sqrt(400)),
    (init.kaiming_normal_, (300, 400), dict(nonlinearity="tanh"), 5 / 3 / math.sqrt(400)),
    (init.xavier_uniform_, (300, 400), dict(gain=2.0), 2.0 * math.sqrt(2 / 700)),
    (init.xavier_normal_, (64, 32, 5, 5), {}, math.sqrt(2 / (32 * 25 + 64 * 25))),
])
@pytest.mark.parametrize("dtype", DTYPES)
def test_init_statistics(fn, shape, kwargs, std, dtype):
    w = np.empty(shape, dtype)
    out = fn(w, rng=0, **kwargs)
    assert out is w and w.dtype == dtype
    assert abs(w.std() / std - 1) < 0.02
    assert abs(w.mean()) < 0.02 * std
    if "uniform" in fn.__name__:
        assert np.abs(w).max() <= math.sqrt(3) * std * (1 + 1e-6)
    again = fn(np.empty(shape, dtype), rng=0, **kwargs)
    np.testing.assert_array_equal(again, w)  # an int seed is reproducible


def test_init_parameter_and_errors():
    p = nn.Parameter(np.zeros((4, 3), np.float32))
    assert init.kaiming_uniform_(p, rng=np.random.default_rng(1)) is p and np.any(p.data != 0)
    assert init.ones_(p) is p and np.all(p.data == 1)
    init.zeros_(p.data)
    assert np.all(p.data == 0)
    init.constant_(p, 0.25)
    assert np.all(p.data == np.float32(0.25))
    for fn in (init.kaiming_normal_, init.kaiming_uniform_, init.xavier_normal_, init.xavier_uniform_):
        with pytest.raises(ValueError, match="fewer than 2 dimensions"):
            fn(np.zeros(5))
    with pytest.raises(ValueError, match="Mode fan_avg not supported"):
        init.kaiming_normal_(np.zeros((2, 2)), mode="fan_avg")
    with pytest.raises(TypeError):
        init.zeros_([1.0, 2.0])
    with pytest.raises(TypeError, match="rng"):
        init.xavier_normal_(np.zeros((2, 2)), rng="seed")
    assert init.calculate_fan_in_and_fan_out(np.zeros((16, 8, 3, 3))) == (72, 144)
    with pytest.warns(UserWarning, match="zero-element"):
        assert init.kaiming_normal_(np.zeros((0, 3))).shape == (0, 3)
    assert nn.init is init


# ---------------------------------------------------------------------------------------- pooling

def ref_avg_pool(x, k, s, p):
    N, C, H, W = x.shape
    xp = np.zeros((N, C, H + 2 * p, W + 2 * p))
    xp[:, :, p:p + H, p:p + W] = x
    P, Q = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    y = np.zeros((N, C, P, Q))
    for i in range(P):
        for j in range(Q):
            y[:, :, i, j] = xp[:, :, i * s:i * s + k, j * s:j * s + k].mean(axis=(2, 3))
    return y


def ref_adaptive(x, out):
    N, C, H, W = x.shape
    P, Q = out
    y = np.zeros((N, C, P, Q))
    for i in range(P):
        h0, h1 = (i * H) // P, -((-(i + 1) * H) // P)
        for j in range(Q):
            w0, w1 = (j * W) // Q, -((-(j + 1) * W) // Q)
            y[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k, s, p", [(2, None, 0), (3, 2, 1), (3, 1, 1), (2, 3, 0)])
def test_avg_pool(dtype, k, s, p):
    x = RNG.standard_normal((2, 3, 7, 6)).astype(dtype)
    y = fa.avg_pool2d(x, k, s, p)
    assert y.dtype == dtype
    close(y, ref_avg_pool(x.astype(np.float64), k, s or k, p), dtype)
    x64 = x.astype(np.float64)
    assert fa.gradcheck(lambda a: fa.avg_pool2d(a, k, s, p),
                        lambda dy, a: fa.avg_pool2d_backward(dy, a, k, s, p), (x64,))
    m = nn.AvgPool2d(k, s, p)
    dy = RNG.standard_normal(y.shape).astype(dtype)
    m(x)
    close(m.backward(dy), fa.avg_pool2d_backward(dy, x.shape, k, s, p), dtype)
    torch = torch_or_skip()
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.avg_pool2d(tx, k, s, p)
    ty.backward(torch.tensor(dy))
    close(y, ty.detach().numpy(), dtype)
    close(fa.avg_pool2d_backward(dy, x, k, s, p), tx.grad.numpy(), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("out", [1, (2, 3), (3, 4), (5, 7), (4, None), (7, 9)])
def test_adaptive_avg_pool(dtype, out):
    x = RNG.standard_normal((2, 3, 5, 7)).astype(dtype)
    y = fa.adaptive_avg_pool2d(x, out)
    pq = (out, out) if isinstance(out, int) else (out[0], 7 if out[1] is None else out[1])
    assert y.shape == (2, 3) + pq and y.dtype == dtype
    close(y, ref_adaptive(x.astype(np.float64), pq), dtype)
    assert fa.gradcheck(lambda a: fa.adaptive_avg_pool2d(a, out),
                        lambda dy, a: fa.adaptive_avg_pool2d_backward(dy, a, out), (x.astype(np.float64),))
    m = nn.AdaptiveAvgPool2d(out)
    dy = RNG.standard_normal(y.shape).astype(dtype)
    m(x)
    close(m.backward(dy), fa.adaptive_avg_pool2d_backward(dy, x), dtype)
    torch = torch_or_skip()
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.adaptive_avg_pool2d(tx, out)
    ty.backward(torch.tensor(dy))
    close(y, ty.detach().numpy(), dtype)
    close(fa.adaptive_avg_pool2d_backward(dy, x, out), tx.grad.numpy(), dtype)


def test_pool_errors():
    with pytest.raises(ValueError, match="avg_pool2d: x must be 4-D"):
        fa.avg_pool2d(np.zeros((3, 4)), 2)
    with pytest.raises(ValueError, match="avg_pool2d: padding"):
        fa.avg_pool2d(np.zeros((1, 1, 4, 4)), 2, padding=2)
    with pytest.raises(ValueError, match="larger than the padded input"):
        fa.avg_pool2d(np.zeros((1, 1, 2, 2)), 3)
    with pytest.raises(ValueError, match="dy has shape"):
        fa.avg_pool2d_backward(np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 4, 4)), 2)
    with pytest.raises(ValueError, match="output_size must be >= 1"):
        fa.adaptive_avg_pool2d(np.zeros((1, 1, 4, 4)), 0)
    with pytest.raises(ValueError, match="4-D"):
        fa.adaptive_avg_pool2d(np.zeros((4, 4)), 1)
    with pytest.raises(ValueError, match="dy has shape"):
        fa.adaptive_avg_pool2d_backward(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 4, 4)), 3)
    x = np.full((1, 1, 2, 2), np.nan)
    assert np.isnan(fa.avg_pool2d(x)).all() and np.isnan(fa.adaptive_avg_pool2d(x)).all()


# ----------------------------------------------------------------------------------------- Dropout

def test_dropout():
    x = RNG.standard_normal((200, 500)).astype(np.float32)
    d = nn.Dropout(0.3, seed=1)
    y = d(x)
    assert y.dtype == np.float32
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(y[kept], x[kept] / np.float32(0.7), rtol=1e-6)
    dy = RNG.standard_normal(x.shape).astype(np.float32)
    dx = d.backward(dy)
    np.testing.assert_array_equal(dx != 0, kept)  # the forward's mask
    np.testing.assert_allclose(dx[kept], dy[kept] / np.float32(0.7), rtol=1e-6)
    np.testing.assert_array_equal(nn.Dropout(0.3, seed=1)(x), y)  # seeded
    assert not np.array_equal(d(x), y)  # the generator moves on
    d.eval()
    np.testing.assert_array_equal(d(x), x)
    np.testing.assert_array_equal(nn.Dropout(1.0)(x), np.zeros_like(x))
    np.testing.assert_array_equal(nn.Dropout(0.0)(x), x)
    for p in (-0.1, 1.5, "a", True):
        with pytest.raises(ValueError, match="between 0 and 1"):
            nn.Dropout(p)
    assert fa.gradcheck(lambda a: _fixed_dropout(a)[0], lambda dy, a: _fixed_dropout(a)[1].backward(dy),
                        (RNG.standard_normal((3, 4)),))


def _fixed_dropout(a):
    m = nn.Dropout(0.5, seed=3)
    return m(a), m


def test_module_helpers():
    net = Net()
    names = [n for n, _ in net.named_modules()]
    assert names[:4] == ["", "conv1", "resblocks", "resblocks.0"] and "resblocks.1.batch_norm" in names
    seen = []
    net.apply(lambda m: seen.append(type(m).__name__))
    assert seen[-1] == "Net" and seen.count("BatchNorm2d") == 2
    m = nn.Module()
    m.register_buffer("scratch", np.zeros(2), persistent=False)
    assert m.state_dict() == {} and len(m.buffers()) == 1

    class Plain(nn.Module):
        def __init__(self):
            self.width = 3  # a plain attribute before super().__init__() is fine, as in PyTorch
            super().__init__()
    assert Plain().width == 3
    from fastact.nn.init import kaiming_normal_  # importable like torch.nn.init
    assert kaiming_normal_ is init.kaiming_normal_
