"""`python -m fastact train --model resnet18|mobilenet_v2|mobilenet_v3_small` and `python -m fastact study`."""

import argparse
import json

import numpy as np
import pytest

from fastact import checkpoint, models, nn, study, train
from fastact.__main__ import main

QUICK = ["--dataset", "digits", "--limit", "40", "--epochs", "1", "--batch-size", "20", "--quiet"]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "mobilenet_v3_small"])
def test_torchvision_nets_train_offline_on_the_digits(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--model", name, *QUICK, "--checkpoint", "ck.npz"]) == 0
    out = capsys.readouterr().out
    assert "digits (40 train" in out and f", {name}, sgd" in out and "final test accuracy" in out
    header, state, _ = checkpoint.load("ck.npz")
    assert list(state) == list(getattr(models, name)(num_classes=10).state_dict())
    if name == "mobilenet_v3_small":  # BatchNorm momentum 0.01: statistics re-estimated before evaluating
        assert "re-estimated from 40 training images" in out
    if name != "resnet18":  # the MobileNets' Sequentials record dead units; ResNet's fused blocks do not
        assert "dead units" in out and "activation layers" in out


def test_checkpoint_and_resume_continue_exactly(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    common = ["--model", "mobilenet_v3_small", "--dataset", "digits", "--limit", "40", "--batch-size", "20",
              "--quiet"]
    assert main(["train", *common, "--epochs", "2", "--checkpoint", "full.npz"]) == 0
    assert main(["train", *common, "--epochs", "1", "--checkpoint", "part.npz"]) == 0
    assert main(["train", "--resume", "part.npz", "--epochs", "2", "--checkpoint", "part.npz", "--limit", "40",
                 "--quiet"]) == 0
    h_full, m_full, _ = checkpoint.load("full.npz")
    h_part, m_part, _ = checkpoint.load("part.npz")
    assert [e["loss"] for e in h_full["history"]] == [e["loss"] for e in h_part["history"]]
    for k in m_full:
        np.testing.assert_array_equal(m_full[k], m_part[k], err_msg=k)


def test_another_activation_replaces_every_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--model", "resnet18", "--activation", "leaky_relu", *QUICK]) == 0
    assert "resnet18 with leaky_relu" in capsys.readouterr().out
    assert main(["train", "--model", "net_res", "--activation", "gelu", *QUICK]) == 2
    assert "fixed architecture" in capsys.readouterr().err
    net = models.replace_activations(models.resnet18(num_classes=3), "silu")
    kinds = {type(m).__name__ for m in net.modules() if isinstance(m, nn.Activation)}
    assert kinds == {"SiLU"}
    with pytest.raises(ValueError, match="nonesuch"):
        models.replace_activations(models.mobilenet_v2(num_classes=3), "nonesuch")
    with pytest.raises(TypeError, match="activation module"):
        models.replace_activations(models.resnet18(num_classes=3), "prelu")(np.zeros((1, 3, 8, 8), np.float32))


def test_resnet_with_another_activation_as_pytorch():
    """ResNet's blocks run the activation of their ``relu`` child (not only the fused ReLU): against the
    same network in PyTorch with every ReLU replaced by SiLU, train-mode forward and gradients."""
    from conftest import torch_or_skip, torchvision_models_or_skip
    torch = torch_or_skip()
    tv = torchvision_models_or_skip()
    torch.manual_seed(0)
    t = tv.resnet18(num_classes=5).double()
    for m in list(t.modules()):
        for n, c in list(m.named_children()):
            if isinstance(c, torch.nn.ReLU):
                setattr(m, n, torch.nn.SiLU())
    f = models.replace_activations(models.resnet18(num_classes=5, dtype=np.float64), "silu")
    f.load_state_dict({k: v.numpy() for k, v in t.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((3, 3, 40, 40))
    xt = torch.tensor(x, requires_grad=True)
    yt = t(xt)
    np.testing.assert_allclose(f(x), yt.detach().numpy(), rtol=1e-9, atol=1e-9)
    dy = np.random.default_rng(1).standard_normal((3, 5))
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(f.backward(dy), xt.grad.numpy(), rtol=1e-7, atol=1e-9)
    tp = dict(t.named_parameters())
    for n, p in f.named_parameters():
        np.testing.assert_allclose(p.grad, tp[n].grad.numpy(), rtol=1e-6, atol=1e-8, err_msg=n)
    t.eval()
    with torch.no_grad():
        ref = t(torch.tensor(x)).numpy()
    np.testing.assert_allclose(f.eval()(x), ref, rtol=1e-9, atol=1e-9)


def test_recompute_batchnorm_stats():
    rng = np.random.default_rng(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, seed=0), nn.BatchNorm2d(3, momentum=0.01), nn.ReLU(), nn.Dropout(0.5, seed=1))
    x = rng.standard_normal((8, 2, 6, 6)).astype(np.float32)
    net(x)  # one training step's statistics
    bn = net[1]
    before = int(bn.num_batches_tracked)
    drop_state = net[3].rng.bit_generator.state
    train.recompute_batchnorm_stats(net.eval(), x, batch_size=4)
    z = net[0](x).astype(np.float64)
    means = [z[i:i + 4].mean(axis=(0, 2, 3)) for i in (0, 4)]
    variances = [z[i:i + 4].var(axis=(0, 2, 3), ddof=1) for i in (0, 4)]
    np.testing.assert_allclose(bn.running_mean, np.mean(means, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var, np.mean(variances, axis=0), rtol=1e-5)
    assert int(bn.num_batches_tracked) == before and bn.momentum == 0.01 and not net.training
    assert net[3].rng.bit_generator.state == drop_state  # Dropout did not draw


def test_study_writes_table_json_and_figure(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["study", "--activations", "relu,gelu", "--seeds", "2", "--epochs", "2", "--limit", "48",
                 "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| relu |" in printed and "| gelu |" in printed and "study.png" in printed
    results = json.loads((out / "study.json").read_text())
    assert [(r["activation"], r["seed"]) for r in results["runs"]] == [("relu", 0), ("relu", 1), ("gelu", 0),
                                                                      ("gelu", 1)]
    assert all(len(r["history"]) == 2 for r in results["runs"])
    rows = {r["activation"]: r for r in study.summarise(results)}
    assert rows["relu"]["dead"] is not None and rows["gelu"]["dead"] is None  # GELU's derivative is never 0
    assert rows["relu"]["acc_min"] <= rows["relu"]["acc_mean"] <= rows["relu"]["acc_max"]
    assert (out / "study.md").read_text().startswith("vgg on digits (48 training")
    assert (out / "study.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.iterdir()) == ["study.json", "study.md", "study.png"]


def test_study_runs_start_from_the_same_weights():
    args = argparse.Namespace(
        model="mobilenet_v2", dataset=None, data_dir=None, epochs=None, batch_size=None, lr=None, optimizer=None,
        limit=None)
    a = train.build(study.run_config(args, "relu6", 1))[0].state_dict()
    b = train.build(study.run_config(args, "mish", 1))[0].state_dict()
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("argv, message", [
    (["--activations", "relu,nonesuch"], "nonesuch"),
    (["--activations", "relu,relu"], "twice"),
    (["--seeds", "0"], "--seeds"),
    (["--model", "net_res", "--activations", "gelu"], "fixed architecture"),
])
def test_study_refuses_bad_options(argv, message, tmp_path, capsys):
    assert main(["study", *argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
