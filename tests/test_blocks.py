"""Network blocks: nn.Identity and nn.SqueezeExcitation against a PyTorch twin written out as
torchvision's (``torchvision.ops.SqueezeExcitation``: its package does not import with the CPU build
of PyTorch here), and by finite differences."""

import numpy as np
import pytest

from fastact import gradcheck_module, nn

from conftest import torch_or_skip


def test_identity():
    m = nn.Identity(3, anything=True)
    x = np.arange(6.0).reshape(2, 3)
    assert m(x) is x
    assert m.backward(x) is x
    assert m.state_dict() == {}


def _torch_se(torch, fa_se, activation, scale_activation):
    """torchvision 0.28's SqueezeExcitation, written out, holding fa_se's weights."""
    tnn = torch.nn

    class SqueezeExcitation(tnn.Module):
        def __init__(self, input_channels, squeeze_channels):
            super().__init__()
            self.avgpool = tnn.AdaptiveAvgPool2d(1)
            self.fc1 = tnn.Conv2d(input_channels, squeeze_channels, 1)
            self.fc2 = tnn.Conv2d(squeeze_channels, input_channels, 1)
            self.activation = activation()
            self.scale_activation = scale_activation()

        def forward(self, x):
            scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
            return scale * x

    t = SqueezeExcitation(fa_se.fc1.in_channels, fa_se.fc1.out_channels).double()
    t.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in fa_se.state_dict().items()})
    return t


@pytest.mark.parametrize("kind", ["relu-sigmoid", "relu-hardsigmoid"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_squeeze_excitation_against_pytorch(kind, dtype):
    torch = torch_or_skip()
    scale_fa, scale_t = ((nn.Sigmoid, torch.nn.Sigmoid) if kind == "relu-sigmoid"
                         else (nn.Hardsigmoid, torch.nn.Hardsigmoid))
    se = nn.SqueezeExcitation(12, 4, scale_activation=scale_fa, dtype=dtype, seed=3)
    t = _torch_se(torch, se, torch.nn.ReLU, scale_t)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 12, 5, 7)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    y = se(x)
    dx = se.backward(dy)
    tx = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    ty = t(tx)
    ty.backward(torch.from_numpy(dy.astype(np.float64)))
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    if dtype == np.float64 and kind == "relu-hardsigmoid":
        # PyTorch's hardsigmoid backward multiplies by 1.0f / 6.0f, a float32 constant, in double too
        # (3e-8 relative); fastact's is 1/6 in float64, which the finite-difference test below checks
        tol = dict(rtol=1e-7, atol=1e-9)
    assert y.dtype == dtype and dx.dtype == dtype
    np.testing.assert_allclose(y, ty.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol)
    grads = {name: p.grad for name, p in se.named_parameters()}
    for name, p in t.named_parameters():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), **tol, err_msg=name)


def test_squeeze_excitation_keys_and_finite_differences():
    se = nn.SqueezeExcitation(6, 3, dtype=np.float64, seed=1)
    assert list(se.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert se.fc1.weight.data.shape == (3, 6, 1, 1) and se.fc2.weight.data.shape == (6, 3, 1, 1)
    x = np.random.default_rng(2).standard_normal((2, 6, 4, 3))
    # cross-entropy over the flattened output: the module maps (2, 6, 4, 3) to itself
    flat = nn.Sequential(se, nn.Flatten())
    assert gradcheck_module(flat, x, np.array([5, 40]))


def test_squeeze_excitation_seed_and_errors():
    a = nn.SqueezeExcitation(8, 2, seed=5).state_dict()
    b = nn.SqueezeExcitation(8, 2, seed=5).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["fc1.weight"].ravel()[:2], a["fc2.weight"].ravel()[:2])
    se = nn.SqueezeExcitation(8, 2)
    with pytest.raises(ValueError, match=r"\(N, 8, H, W\).*\(2, 4, 3, 3\)"):
        se(np.zeros((2, 4, 3, 3), np.float32))
    with pytest.raises(TypeError, match="activation must make a fastact.nn Module"):
        nn.SqueezeExcitation(8, 2, activation=lambda: "relu")
