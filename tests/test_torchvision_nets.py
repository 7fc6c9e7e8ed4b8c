"""ResNet-18/34, MobileNetV2 and MobileNetV3 against torchvision 0.28's own model code (imported
without its compiled ops, see conftest.torchvision_models_or_skip), torchvision's published parameter
counts, and finite differences."""

import numpy as np
import pytest

from fastact import gradcheck_module, models, nn, optim

from conftest import torch_or_skip, torchvision_models_or_skip

NETS = ["resnet18", "resnet34", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"]

#: torchvision's documented ``num_params`` of the ImageNet (1000-class) models
PUBLISHED_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "mobilenet_v2": 3_504_872,
                    "mobilenet_v3_small": 2_542_856, "mobilenet_v3_large": 5_483_032}


def _no_dropout(fa_net, t_net=None):
    for m in fa_net.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    if t_net is not None:
        import torch
        for m in t_net.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0


def _pair(name, dtype, num_classes=10, seed=0):
    """(torchvision net, fastact net holding its weights, with BatchNorm statistics that are not the
    initial 0 and 1, so that eval mode is tested)."""
    torch = torch_or_skip()
    tv = torchvision_models_or_skip()
    torch.manual_seed(seed)
    t = getattr(tv, name)(num_classes=num_classes)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in t.state_dict().items():
            if k.endswith("running_mean"):
                v.copy_(0.1 * torch.randn(v.shape, generator=g))
            elif k.endswith("running_var"):
                v.copy_(0.5 + torch.rand(v.shape, generator=g))
            elif k.endswith("bn2.weight") or k.endswith(".1.weight") and v.ndim == 1:
                v.copy_(0.5 + torch.rand(v.shape, generator=g))  # BatchNorm weights away from 1
    t = t.to(torch.float64 if dtype == np.float64 else torch.float32)
    f = getattr(models, name)(num_classes=num_classes, dtype=dtype)
    f.load_state_dict({k: v.numpy() for k, v in t.state_dict().items()})
    return t, f


@pytest.mark.parametrize("name", NETS)
def test_parameter_count_as_published(name):
    net = getattr(models, name)()
    assert sum(p.data.size for p in net.parameters()) == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("name", NETS)
def test_module_tree_keys_shapes_and_init_as_torchvision(name):
    torch = torch_or_skip()
    tv = torchvision_models_or_skip()
    torch.manual_seed(0)
    t = getattr(tv, name)(num_classes=7)
    f = getattr(models, name)(num_classes=7)
    ts, fs = t.state_dict(), f.state_dict()
    assert list(ts) == list(fs)
    for k, v in ts.items():
        assert fs[k].shape == tuple(v.shape), k
        assert fs[k].dtype == (np.int64 if k.endswith("num_batches_tracked") else np.float32), k
    # the module trees: the same names, the same class names (torchvision's Conv2dNormActivation and
    # InvertedResidual, fastact's InvertedResidualV3 for MobileNetV3's)
    t_mods = {n: type(m).__name__ for n, m in t.named_modules()}
    f_mods = {n: type(m).__name__ for n, m in f.named_modules()}
    assert set(t_mods) == set(f_mods)
    for n, cls in t_mods.items():
        assert f_mods[n] == cls or (cls, f_mods[n]) in {("InvertedResidual", "InvertedResidualV3"),
                                                        ("ResNet", "ResNet")}, n
    # the initialisation's distributions: Kaiming-normal fan-out convs, N(0, 0.01) or PyTorch's default
    # Linear, BatchNorm 1 and 0 (std within 10% on the larger tensors, identical constants)
    for k, v in ts.items():
        v = v.numpy()
        if v.size >= 2000 and v.dtype == np.float32:
            assert np.std(fs[k]) == pytest.approx(np.std(v), rel=0.1), k
            assert abs(np.mean(fs[k])) < 0.1 * np.std(v) + 1e-12, k
        elif k.endswith(("running_var", "running_mean", "num_batches_tracked")) or ".bias" in k and "fc" not in k \
                and "classifier" not in k:
            np.testing.assert_array_equal(fs[k], v, err_msg=k)


def _compare_train_step(t, f, x, dtype):
    """Train-mode logits, the input's and every parameter's gradient, the running statistics."""
    import torch
    t.train()
    f.train()
    _no_dropout(f, t)
    xt = torch.tensor(x, requires_grad=True)
    yt = t(xt)
    y = f(x)
    rtol = 1e-8 if dtype == np.float64 else 2e-3  # float64: rounding amplified by 20-50 BatchNorms
    scale = np.abs(yt.detach().numpy()).max()
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=0, atol=rtol * scale)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    yt.backward(torch.tensor(dy))
    dx = f.backward(dy)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=0, atol=rtol * 10 * np.abs(xt.grad.numpy()).max())
    tp = dict(t.named_parameters())
    # a parameter's gradient against the largest of its layer's and a share of the whole network's:
    # some are zero in exact arithmetic (a projection BatchNorm's bias feeding another BatchNorm), and
    # both libraries leave rounding noise there
    big = max(np.abs(p.grad.numpy()).max() for p in tp.values())
    for n, p in f.named_parameters():
        g = tp[n].grad.numpy()
        np.testing.assert_allclose(p.grad, g, rtol=0, atol=rtol * 10 * max(np.abs(g).max(), 1e-3 * big),
                                   err_msg=n)
    ts = t.state_dict()
    for k, v in f.state_dict().items():
        if "running" in k or "num_batches" in k:
            np.testing.assert_allclose(v, ts[k].numpy(), rtol=rtol, atol=rtol, err_msg=k)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"])
def test_train_and_eval_as_torchvision_float64(name):
    t, f = _pair(name, np.float64)
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64))
    t.eval()
    f.eval()
    import torch
    with torch.no_grad():
        ref = t(torch.tensor(x)).numpy()
    np.testing.assert_allclose(f(x), ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())
    _compare_train_step(t, f, x, np.float64)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_train_and_eval_as_torchvision_float32(name):
    import torch
    t, f = _pair(name, np.float32)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    t.eval()
    f.eval()
    with torch.no_grad():
        ref = t(torch.tensor(x)).numpy()
    np.testing.assert_allclose(f(x), ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    _compare_train_step(t, f, np.random.default_rng(2).standard_normal((8, 3, 48, 48)).astype(np.float32), np.float32)


@pytest.mark.parametrize("name,shape", [("resnet18", (1, 3, 33, 47)), ("mobilenet_v2", (2, 3, 17, 29)),
                                        ("mobilenet_v3_large", (1, 3, 1, 1)), ("resnet34", (2, 3, 8, 8))])
def test_any_input_size(name, shape):
    import torch
    t, f = _pair(name, np.float64)
    x = np.random.default_rng(0).standard_normal(shape)
    with torch.no_grad():
        ref = t.eval()(torch.tensor(x)).numpy()
    np.testing.assert_allclose(f.eval()(x), ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())


def test_sgd_steps_with_running_statistics_as_pytorch():
    """Three SGD steps (momentum, weight decay) in train mode, then eval logits: weights, running
    statistics and num_batches_tracked as PyTorch's."""
    import torch
    t, f = _pair("mobilenet_v3_small", np.float64, num_classes=5)
    _no_dropout(f, t)
    t.train()
    f.train()
    topt = torch.optim.SGD(t.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    fopt = optim.SGD(f.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.standard_normal((6, 3, 40, 40))
        y = rng.integers(0, 5, 6)
        topt.zero_grad()
        torch.nn.functional.cross_entropy(t(torch.tensor(x)), torch.tensor(y)).backward()
        topt.step()
        f.zero_grad()
        loss_fn(f(x), y)
        f.backward(loss_fn.backward())
        fopt.step()
    ts = t.state_dict()
    for k, v in f.state_dict().items():
        np.testing.assert_allclose(v, ts[k].numpy(), rtol=1e-8, atol=1e-10, err_msg=k)
    x = rng.standard_normal((2, 3, 40, 40))
    with torch.no_grad():
        ref = t.eval()(torch.tensor(x)).numpy()
    np.testing.assert_allclose(f.eval()(x), ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_state_dict_into_torchvision(name):
    """fastact's weights (trained a step, so not the initial ones) load strictly into torchvision's
    network, which then computes the same eval logits."""
    import torch
    tv = torchvision_models_or_skip()
    f = getattr(models, name)(num_classes=4, seed=3, dtype=np.float64)
    _no_dropout(f)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32))
    f(x)
    f.backward(np.ones((4, 4)))
    optim.SGD(f.parameters(), lr=0.1).step()
    t = getattr(tv, name)(num_classes=4).double()
    t.load_state_dict({k: torch.from_numpy(v) for k, v in f.state_dict().items()}, strict=True)
    with torch.no_grad():
        ref = t.eval()(torch.tensor(x)).numpy()
    np.testing.assert_allclose(f.eval()(x), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,kwargs,shape", [
    ("mobilenet_v3_small", dict(width_mult=0.25), (3, 3, 40, 40)),
    ("mobilenet_v2", dict(width_mult=0.1), (3, 3, 40, 40)),
    ("resnet18", {}, (2, 3, 40, 40)),
])
def test_finite_differences(name, kwargs, shape):
    net = getattr(models, name)(num_classes=3, dropout=0.0, **kwargs) if kwargs else \
        getattr(models, name)(num_classes=3)
    x = np.random.default_rng(0).standard_normal(shape)
    # a small step: thousands of ReLU6 units, and a step of 1e-5 moves some across 0 or 6
    assert gradcheck_module(net, x, np.arange(shape[0]) % 3, max_elements=1, eps=1e-7, atol=1e-6, rtol=1e-4)


def test_eval_folds_batchnorm_where_it_pays():
    conv = nn.Conv2d(8, 16, 3, padding=1, seed=0)
    assert nn.folding_pays(conv, (8, 8, 7, 7))      # 784 output values per channel, 72 weights a filter
    assert not nn.folding_pays(nn.Conv2d(512, 512, 3, padding=1), (1, 512, 7, 7))  # 49 vs 4608
    # folded = unfolded: conv with bias, BatchNorm with statistics and affine parameters
    bn = nn.BatchNorm2d(16, dtype=np.float64)
    conv.astype(np.float64)
    rng = np.random.default_rng(0)
    bn.running_mean[...] = rng.standard_normal(16)
    bn.running_var[...] = rng.uniform(0.5, 2, 16)
    bn.weight.data[...] = rng.uniform(0.5, 2, 16)
    bn.bias.data[...] = rng.standard_normal(16)
    x = rng.standard_normal((8, 8, 7, 7))
    seq = nn.Sequential(conv, bn, nn.Hardswish()).eval()
    ref = nn.Hardswish()(bn.eval()(conv.eval()(x)))
    np.testing.assert_allclose(seq(x), ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="fold_batchnorm"):
        nn.fold_batchnorm(conv, nn.BatchNorm2d(16, track_running_stats=False))


def test_conv2d_norm_activation():
    block = nn.Conv2dNormActivation(4, 6, kernel_size=5, stride=2, dilation=2, groups=2)
    conv, bn, act = block
    assert (conv.padding, conv.dilation, conv.groups, conv.bias) == (4, 2, 2, None)
    assert type(act) is nn.ReLU and bn.num_features == 6 and block.out_channels == 6
    plain = nn.Conv2dNormActivation(3, 5, 1, norm_layer=None, activation_layer=None)
    assert len(plain) == 1 and plain[0].bias is not None


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "mobilenet_v3_small"])
def test_bad_input_names_the_shape(name):
    net = getattr(models, name)(num_classes=3)
    with pytest.raises(ValueError, match=r"\(2, 1, 32, 32\)"):
        net(np.zeros((2, 1, 32, 32), np.float32))
    with pytest.raises(ValueError, match="num_classes"):
        getattr(models, name)(num_classes=0)
    with pytest.raises(RuntimeError, match="without a forward"):
        getattr(models, name)(num_classes=3).backward(np.zeros((1, 3), np.float32))


def test_batchnorm_and_relu6_run_fused_in_mobilenet_v2():
    """Conv2dNormActivation(..., ReLU6): the BatchNorm and the ReLU6 run as one pass in training, and the
    dead-unit record counts a unit alive where 0 < y < 6."""
    block = nn.Conv2dNormActivation(4, 6, activation_layer=nn.ReLU6, dtype=np.float64)
    assert block.fusion_plan() == [(0, None), (1, 2)]
    x = np.random.default_rng(0).standard_normal((3, 4, 5, 5))
    block[1].weight.data[...] = 10.0  # normalised values times 10: both ends of ReLU6 are reached
    block.activity = {}
    y = block(x)
    bn, act = block[1], block[2]
    assert y.min() == 0 and y.max() == 6  # both ends of ReLU6 reached
    np.testing.assert_array_equal(block.activity[2], np.any((y > 0) & (y < 6), axis=0))
    dx = block.backward(np.ones_like(y))
    unfused = nn.Sequential(block[0], nn.BatchNorm2d(6, dtype=np.float64), nn.ReLU(max_value=6.0))
    unfused[1].load_state_dict(bn.state_dict())
    np.testing.assert_allclose(unfused(x), y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(unfused.backward(np.ones_like(y)), dx, rtol=1e-10, atol=1e-12)
    assert act.name == "relu6"
