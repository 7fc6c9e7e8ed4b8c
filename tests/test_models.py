"""fastact.models' reference networks and torchvision VGGs against PyTorch; train CLI for every model.

The PyTorch classes below are the reference networks as published (*Deep Learning with PyTorch*,
chapter 8), except that NetResDeep's blocks are independent modules (see fastact.models.NetResDeep).
"""

import pickle

import numpy as np
import pytest

import fastact as fa
from fastact import checkpoint, data, models, nn, optim
from fastact.__main__ import main as cli
from conftest import tol, torch_or_none

torch = torch_or_none()  # without PyTorch its comparisons skip; the rest runs
F = torch.nn.functional if torch is not None else None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")



def _torch_classes():
    """The PyTorch reference classes (defined on demand: no torch import at collection)."""
    tnn = torch.nn

    class NetDepth(tnn.Module):
        def __init__(self, n_chans1=32):
            super().__init__()
            self.n_chans1 = n_chans1
            self.conv1 = tnn.Conv2d(3, n_chans1, kernel_size=3, padding=1)
            self.conv2 = tnn.Conv2d(n_chans1, n_chans1 // 2, kernel_size=3, padding=1)
            self.conv3 = tnn.Conv2d(n_chans1 // 2, n_chans1 // 2, kernel_size=3, padding=1)
            self.fc1 = tnn.Linear(4 * 4 * n_chans1 // 2, 32)
            self.fc2 = tnn.Linear(32, 2)

        def forward(self, x):
            out = F.max_pool2d(torch.relu(self.conv1(x)), 2)
            out = F.max_pool2d(torch.relu(self.conv2(out)), 2)
            out = F.max_pool2d(torch.relu(self.conv3(out)), 2)
            out = out.view(-1, 4 * 4 * self.n_chans1 // 2)
            out = torch.relu(self.fc1(out))
            return self.fc2(out)

    class NetRes(NetDepth):
        def forward(self, x):
            out = F.max_pool2d(torch.relu(self.conv1(x)), 2)
            out = F.max_pool2d(torch.relu(self.conv2(out)), 2)
            out1 = out
            out = F.max_pool2d(torch.relu(self.conv3(out)) + out1, 2)
            out = out.view(-1, 4 * 4 * self.n_chans1 // 2)
            out = torch.relu(self.fc1(out))
            return self.fc2(out)

    class ResBlock(tnn.Module):
        def __init__(self, n_chans):
            super().__init__()
            self.conv = tnn.Conv2d(n_chans, n_chans, kernel_size=3, padding=1, bias=False)
            self.batch_norm = tnn.BatchNorm2d(num_features=n_chans)
            tnn.init.kaiming_normal_(self.conv.weight, nonlinearity="relu")
            tnn.init.constant_(self.batch_norm.weight, 0.5)
            tnn.init.zeros_(self.batch_norm.bias)

        def forward(self, x):
            out = self.conv(x)
            out = self.batch_norm(out)
            out = torch.relu(out)
            return out + x

    class NetResDeep(tnn.Module):
        def __init__(self, n_chans1=32, n_blocks=10):
            super().__init__()
            self.n_chans1 = n_chans1
            self.conv1 = tnn.Conv2d(3, n_chans1, kernel_size=3, padding=1)
            self.resblocks = tnn.Sequential(*[ResBlock(n_chans=n_chans1) for _ in range(n_blocks)])
            self.fc1 = tnn.Linear(8 * 8 * n_chans1, 32)
            self.fc2 = tnn.Linear(32, 2)

        def forward(self, x):
            out = F.max_pool2d(torch.relu(self.conv1(x)), 2)
            out = self.resblocks(out)
            out = F.max_pool2d(out, 2)
            out = out.view(-1, 8 * 8 * self.n_chans1)
            out = torch.relu(self.fc1(out))
            return self.fc2(out)

    return {"net_depth": NetDepth, "net_res": NetRes, "net_res_deep": NetResDeep}


#: (builder kwargs for fastact and PyTorch) per reference network, small enough for quick tests
SMALL = {"net_depth": dict(n_chans1=8), "net_res": dict(n_chans1=8),
         "net_res_deep": dict(n_chans1=8, n_blocks=3)}


def _pair(name, dtype, seed=0):
    """(fastact net, PyTorch net with the same weights) in training mode."""
    kw = SMALL[name]
    net = models.REFERENCE_NETS[name](**kw, seed=seed, dtype=dtype)
    tnet = _torch_classes()[name](**kw).to(torch.float64 if dtype == np.float64 else torch.float32)
    tnet.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
    return net, tnet


def _batch(n=6, dtype=np.float32, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 32, 32)).astype(dtype), rng.integers(0, 2, n)


def _close(a, b, dtype, what):
    rtol, atol = tol(dtype, "model")["rtol"], tol(dtype, "model")["atol"]
    scale = max(1.0, float(np.abs(b).max())) if np.size(b) else 1.0
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * scale, err_msg=what)


# ---------------------------------------------------------------------------------- structure

def test_reference_keys_and_shapes():
    d = models.net_depth().state_dict()
    assert list(d) == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "conv3.weight",
                       "conv3.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert d["fc1.weight"].shape == (32, 4 * 4 * 16) and d["conv2.weight"].shape == (16, 32, 3, 3)
    s = models.net_res_deep(n_chans1=32, n_blocks=10).state_dict()
    block = ["conv.weight", "batch_norm.weight", "batch_norm.bias", "batch_norm.running_mean",
             "batch_norm.running_var", "batch_norm.num_batches_tracked"]
    assert list(s) == ["conv1.weight", "conv1.bias"] + [f"resblocks.{i}.{k}" for i in range(10)
                                                        for k in block] + \
        ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert s["fc1.weight"].shape == (32, 8 * 8 * 32)
    assert s["resblocks.3.batch_norm.num_batches_tracked"].dtype == np.int64
    assert np.all(s["resblocks.3.batch_norm.weight"] == 0.5) and np.all(s["resblocks.3.batch_norm.bias"] == 0)
    # independent blocks (not one object repeated), each Kaiming-normal: std sqrt(2 / (32 * 9))
    w0, w1 = s["resblocks.0.conv.weight"], s["resblocks.1.conv.weight"]
    assert not np.array_equal(w0, w1)
    assert abs(w0.std() / np.sqrt(2 / (32 * 9)) - 1) < 0.1
    # reproducible from the seed, float64 on request
    a, b = models.net_res_deep(4, 2, seed=3), models.net_res_deep(4, 2, seed=3)
    assert all(np.array_equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    assert models.net_res(dtype=np.float64).fc2.weight.data.dtype == np.float64


def test_reference_errors():
    with pytest.raises(ValueError, match="even"):
        models.net_depth(n_chans1=5)
    with pytest.raises(ValueError, match="n_blocks"):
        models.net_res_deep(n_blocks=-1)
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\).*\(2, 3, 28, 28\)"):
        models.net_res_deep(4, 1)(np.zeros((2, 3, 28, 28), np.float32))
    net = models.net_res(8)
    net.eval()(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(RuntimeError, match="without a forward"):
        net.backward(np.zeros((1, 2), np.float32))


def test_num_classes_option():
    net = models.net_res_deep(4, 1, num_classes=10)
    assert net(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 10)


def test_eval_fold_equals_batchnorm():
    """The folded eval conv equals conv -> BatchNorm (running statistics) -> ReLU -> + x."""
    for dtype, rtol in ((np.float32, 1e-5), (np.float64, 1e-12)):
        block = models.ResBlock(6, seed=2, dtype=dtype)
        rng = np.random.default_rng(0)
        block.batch_norm.running_mean[...] = rng.standard_normal(6)
        block.batch_norm.running_var[...] = rng.uniform(0.5, 2.0, 6)
        block.batch_norm.bias.data[...] = rng.standard_normal(6)
        x = rng.standard_normal((3, 6, 8, 8)).astype(dtype)
        block.eval()
        folded = block(x)
        bn = block.batch_norm
        ref = np.maximum(bn(block.conv(x)), 0) + x
        assert folded.dtype == dtype
        np.testing.assert_allclose(folded, ref, rtol=rtol, atol=rtol)
        assert int(bn.num_batches_tracked) == 0  # eval moves no statistics


# --------------------------------------------------------------------------- against PyTorch

@needs_torch
def test_state_dict_both_ways():
    classes = _torch_classes()
    for name, kw in SMALL.items():
        tnet = classes[name](**kw)
        net = models.REFERENCE_NETS[name](**kw)
        tstate = {k: v.detach().numpy() for k, v in tnet.state_dict().items()}
        assert list(net.state_dict()) == list(tstate)
        net.load_state_dict(tstate)  # PyTorch -> fastact
        for k, v in net.state_dict().items():
            np.testing.assert_array_equal(v, tstate[k])
            assert v.dtype == tstate[k].dtype, k
        back = classes[name](**kw)
        back.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})  # and back
        for k, v in back.state_dict().items():
            np.testing.assert_array_equal(v.numpy(), tstate[k])


@needs_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(SMALL))
def test_training_equals_torch(name, dtype):
    """Train-mode logits and every gradient, four SGD steps (momentum 0.9) with the running
    statistics, then eval logits: all as PyTorch's."""
    net, tnet = _pair(name, dtype)
    opt = optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    topt = torch.optim.SGD(tnet.parameters(), lr=0.05, momentum=0.9)
    loss_fn, tloss_fn = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    for step in range(4):
        x, y = _batch(6, dtype, seed=step)
        logits = net(x)
        loss = loss_fn(logits, y)
        opt.zero_grad()
        dx = net.backward(loss_fn.backward())
        tx = torch.from_numpy(x).requires_grad_(True)
        tlogits = tnet(tx)
        tloss = tloss_fn(tlogits, torch.from_numpy(y))
        topt.zero_grad()
        tloss.backward()
        _close(logits, tlogits.detach().numpy(), dtype, f"{name} step {step} logits")
        assert abs(loss - tloss.item()) <= 10 * tol(dtype, "model")["rtol"]
        _close(dx, tx.grad.numpy(), dtype, f"{name} step {step} input gradient")
        tgrads = {k: p.grad.numpy() for k, p in tnet.named_parameters()}
        for k, p in net.named_parameters():
            assert p.grad.dtype == dtype
            _close(p.grad, tgrads[k], dtype, f"{name} step {step} gradient of {k}")
        opt.step()
        topt.step()
    tstate = tnet.state_dict()
    for k, v in net.state_dict().items():  # parameters, running statistics, num_batches_tracked
        if v.dtype.kind == "i":
            assert int(v) == int(tstate[k]) == 4, k
        else:
            _close(v, tstate[k].numpy(), dtype, f"{name} {k} after 4 steps")
    net.eval()
    tnet.eval()
    x, _ = _batch(5, dtype, seed=9)
    with torch.no_grad():
        _close(net(x), tnet(torch.from_numpy(x)).numpy(), dtype, f"{name} eval logits")


def test_gradcheck_net_res_deep():
    net = models.net_res_deep(n_chans1=4, n_blocks=2, seed=1, dtype=np.float64)
    x, y = _batch(2, np.float64, seed=4)
    assert fa.gradcheck_module(net, x, y, max_elements=24)


@pytest.mark.parametrize("name", ["net_depth", "net_res"])
def test_gradcheck_net_depth_and_res(name):
    net = models.REFERENCE_NETS[name](n_chans1=4, seed=1, dtype=np.float64)
    x, y = _batch(2, np.float64, seed=5)
    assert fa.gradcheck_module(net, x, y, max_elements=24)


# ------------------------------------------------------------------------------ torchvision VGG

#: torchvision's documented layout: indices of the Conv2d modules in ``features`` (vgg16: conv, ReLU
#: pairs and 'M' pools; vgg16_bn: conv, BatchNorm2d, ReLU triples), their (out, in) channels, and the
#: classifier's Linear indices 0, 3, 6
TV_VGG16_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
TV_VGG16_BN_CONVS = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]
TV_VGG11_CONVS = [0, 3, 6, 8, 11, 13, 16, 18]
TV_VGG16_CHANNELS = [(64, 3), (64, 64), (128, 64), (128, 128), (256, 128), (256, 256), (256, 256),
                     (512, 256), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]


def _tv_keys(convs, channels, num_classes, batch_norm=False):
    keys = {}
    for i, (k, c) in zip(convs, channels):
        keys[f"features.{i}.weight"] = (k, c, 3, 3)
        keys[f"features.{i}.bias"] = (k,)
        if batch_norm:
            for b in ("weight", "bias", "running_mean", "running_var"):
                keys[f"features.{i + 1}.{b}"] = (k,)
            keys[f"features.{i + 1}.num_batches_tracked"] = ()
    for i, (o, n) in zip((0, 3, 6), ((4096, 512 * 7 * 7), (4096, 4096), (num_classes, 4096))):
        keys[f"classifier.{i}.weight"] = (o, n)
        keys[f"classifier.{i}.bias"] = (o,)
    return keys


@pytest.mark.parametrize("batch_norm", [False, True])
def test_vgg16_keys_as_torchvision(batch_norm):
    net = models.vgg16(num_classes=1000, batch_norm=batch_norm)
    state = net.state_dict()
    expect = _tv_keys(TV_VGG16_BN_CONVS if batch_norm else TV_VGG16_CONVS, TV_VGG16_CHANNELS, 1000,
                      batch_norm)
    assert list(state) == list(expect)
    assert {k: v.shape for k, v in state.items()} == expect
    assert type(net.avgpool) is nn.AdaptiveAvgPool2d and net.avgpool.output_size == (7, 7)
    assert [type(m).__name__ for m in net.classifier] == ["Linear", "ReLU", "Dropout", "Linear", "ReLU",
                                                          "Dropout", "Linear"]
    # torchvision's initialisation: Kaiming-normal fan-out for convs, N(0, 0.01) for Linear, zero biases
    w = state["features.0.weight"]
    assert abs(w.std() / np.sqrt(2 / (64 * 9)) - 1) < 0.1
    assert abs(state["classifier.3.weight"].std() / 0.01 - 1) < 0.01
    assert not any(np.any(v) for k, v in state.items() if k.endswith("bias"))
    if batch_norm:
        assert np.all(state["features.1.weight"] == 1) and state["features.1.num_batches_tracked"].dtype == np.int64


def _torch_vgg(cfg, num_classes, state):
    """torchvision's VGG written out in PyTorch (make_layers, AdaptiveAvgPool2d((7, 7)), classifier)."""
    tnn = torch.nn
    layers, c = [], 3
    for v in cfg:
        if v == "M":
            layers.append(tnn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [tnn.Conv2d(c, v, kernel_size=3, padding=1), tnn.ReLU(inplace=True)]
            c = v
    net = tnn.Module()
    net.features = tnn.Sequential(*layers)
    net.avgpool = tnn.AdaptiveAvgPool2d((7, 7))
    net.classifier = tnn.Sequential(tnn.Linear(512 * 7 * 7, 4096), tnn.ReLU(True), tnn.Dropout(),
                                    tnn.Linear(4096, 4096), tnn.ReLU(True), tnn.Dropout(),
                                    tnn.Linear(4096, num_classes))
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return net.eval()


def test_vgg11_forward_224():
    net = models.vgg11()
    state = net.state_dict()
    assert [int(k.split(".")[1]) for k in state if k.startswith("features") and k.endswith("weight")] \
        == TV_VGG11_CONVS
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    y = net.eval()(x)
    assert y.shape == (1, 1000) and y.dtype == np.float32 and np.all(np.isfinite(y))
    if torch is not None:
        tnet = _torch_vgg(models.VGG_CFGS["vgg11"], 1000, state)
        with torch.no_grad():
            t = tnet.classifier(torch.flatten(tnet.avgpool(tnet.features(torch.from_numpy(x))), 1))
        _close(y, t.numpy(), np.float32, "vgg11 logits")


# ------------------------------------------------------------------------------- train CLI

def _write_cifar(root, per_class=2, seed=0):
    """A tiny CIFAR-10 directory in the official format: five training batches, one test batch,
    each holding ``per_class`` images of every class (random pixels, class-dependent brightness)."""
    rng = np.random.default_rng(seed)
    root.mkdir(exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [c for c in range(10) for _ in range(per_class)]
        pixels = rng.integers(0, 128, (len(labels), 3 * 32 * 32)) + 12 * np.array(labels)[:, None]
        with open(root / name, "wb") as fh:
            pickle.dump({b"data": pixels.astype(np.uint8).tobytes(), b"labels": labels}, fh)
    return str(root)


def _cli(*args):
    return cli(["train", "--quiet", *args])


def test_classes_subset(tmp_path):
    d = _write_cifar(tmp_path / "cifar")
    xtr, ytr, xte, yte = data.load("cifar10", d)
    labels = data.class_indices("cifar10", "bird,airplane")
    assert labels == [2, 0]
    x, y = data.select_classes(xtr, ytr, labels)
    assert len(y) == 20 and set(y.tolist()) == {0, 1}
    np.testing.assert_array_equal(x[y == 0], xtr[ytr == 2])  # relabelled in the order given
    with pytest.raises(data.DataError, match="airplane, automobile"):
        data.class_indices("cifar10", "airplane,plane")
    with pytest.raises(data.DataError, match="two or more"):
        data.class_indices("cifar10", "bird,bird")


@pytest.mark.parametrize("model, extra", [("net_res_deep", ["--n-chans1", "4", "--n-blocks", "2"]),
                                          ("net_depth", ["--n-chans1", "4"]),
                                          ("net_res", ["--n-chans1", "4", "--dtype", "float64"])])
def test_cli_reference_nets_checkpoint_and_resume(tmp_path, monkeypatch, capsys, model, extra):
    """Three epochs in one run equal two epochs, then a resumed third (BatchNorm buffers included)."""
    monkeypatch.chdir(tmp_path)
    d = _write_cifar(tmp_path / "cifar")
    common = ["--model", model, "--data-dir", d, "--batch-size", "4", *extra]
    assert _cli(*common, "--epochs", "3", "--checkpoint", "full.npz") == 0
    out = capsys.readouterr().out
    assert "classes airplane,bird" in out and f"{model}(n_chans1=4" in out and "final test accuracy" in out
    assert (tmp_path / "full.png").exists()
    assert _cli(*common, "--epochs", "2", "--checkpoint", "part.npz") == 0
    assert _cli(*common, "--epochs", "3", "--resume", "part.npz", "--checkpoint", "part.npz") == 0
    h_full, m_full, o_full = checkpoint.load("full.npz")
    h_res, m_res, o_res = checkpoint.load("part.npz")
    assert h_full["config"]["model"] == model and h_full["config"]["num_classes"] == 2
    assert [e["loss"] for e in h_full["history"]] == [e["loss"] for e in h_res["history"]]
    assert list(m_full) == list(models.REFERENCE_NETS[model](n_chans1=4, **(
        {"n_blocks": 2} if model == "net_res_deep" else {})).state_dict())
    for k in m_full:
        assert m_full[k].dtype == m_res[k].dtype
        np.testing.assert_array_equal(m_full[k], m_res[k], err_msg=k)
    for k in o_full:
        np.testing.assert_array_equal(o_full[k], o_res[k], err_msg=k)
    if model == "net_res_deep":
        nbt = m_full["resblocks.1.batch_norm.num_batches_tracked"]
        assert nbt.dtype == np.int64 and int(nbt) == 3 * 5  # 20 images / batch 4, three epochs
        assert not np.all(m_full["resblocks.0.batch_norm.running_var"] == 1)


def test_cli_reference_net_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    d = _write_cifar(tmp_path / "cifar")
    assert _cli("--model", "net_res", "--dataset", "mnist") == 2
    assert "needs --dataset cifar10, or digits" in capsys.readouterr().err
    assert _cli("--model", "net_res", "--data-dir", d, "--classes", "airplane,plane") == 2
    assert "unknown cifar10 class" in capsys.readouterr().err
    assert _cli("--model", "net_depth", "--data-dir", d, "--activation", "gelu") == 2
    assert "ReLU" in capsys.readouterr().err
    # a checkpoint of another model is refused by name
    assert _cli("--model", "net_depth", "--n-chans1", "4", "--data-dir", d, "--epochs", "1",
                "--batch-size", "8", "--checkpoint", "a.npz") == 0
    capsys.readouterr()
    assert _cli("--model", "net_res", "--n-chans1", "4", "--data-dir", d, "--epochs", "2",
                "--batch-size", "8", "--resume", "a.npz") == 2
    assert "model 'net_depth' (now 'net_res')" in capsys.readouterr().err


def test_cli_all_ten_classes_and_vgg_on_cifar(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    d = _write_cifar(tmp_path / "cifar")
    assert _cli("--model", "net_res_deep", "--n-chans1", "4", "--n-blocks", "1", "--data-dir", d,
                "--classes", ",".join(data.CLASSES["cifar10"]), "--epochs", "1", "--batch-size", "25",
                "--checkpoint", "ten.npz") == 0
    assert checkpoint.load("ten.npz")[1]["fc2.weight"].shape == (10, 32)
    assert _cli("--dataset", "cifar10", "--data-dir", d, "--classes", "cat,dog", "--epochs", "1",
                "--batch-size", "10") == 0
    out = capsys.readouterr().out
    assert "vgg[" in out and "classes cat,dog" in out and "dead units" in out


def test_checkpoint_int64_buffer_round_trip(tmp_path):
    net = models.net_res_deep(4, 2)
    net(_batch(4)[0])
    p = str(tmp_path / "ck.npz")
    checkpoint.save(p, {"epoch": 1}, net.state_dict(), {})
    _, state, _ = checkpoint.load(p, expect_model={k: v.shape for k, v in net.state_dict().items()})
    other = models.net_res_deep(4, 2, seed=5).load_state_dict(state)
    for k, v in net.state_dict().items():
        assert other.state_dict()[k].dtype == v.dtype
        np.testing.assert_array_equal(other.state_dict()[k], v)
    assert int(other.resblocks[0].batch_norm.num_batches_tracked) == 1


def test_cli_resumes_a_checkpoint_written_before_the_model_option(tmp_path, monkeypatch, capsys):
    """Checkpoints of earlier versions have no model/classes/n_chans1/n_blocks in their config: they
    were VGG runs on all classes, and resume as such."""
    monkeypatch.chdir(tmp_path)
    common = ["--limit", "64", "--batch-size", "32"]
    assert _cli(*common, "--epochs", "1", "--checkpoint", "old.npz") == 0
    header, mstate, ostate = checkpoint.load("old.npz")
    for k in ("model", "classes", "n_chans1", "n_blocks"):
        del header["config"][k]
    checkpoint.save("old.npz", header, mstate, ostate)
    assert _cli(*common, "--epochs", "2", "--resume", "old.npz", "--checkpoint", "old.npz") == 0
    assert [h["epoch"] for h in checkpoint.load("old.npz")[0]["history"]] == [1, 2]
    assert _cli(*common, "--model", "net_res", "--epochs", "2", "--resume", "old.npz") == 2
    assert "model 'vgg' (now 'net_res')" in capsys.readouterr().err
