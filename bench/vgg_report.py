"""Inference of torchvision's VGG 16 at 224x224, fastact against PyTorch, side by side.

    PYTHONPATH=. python bench/vgg_report.py [--batch 4] [--repeat 5] [--model vgg16] [--batch-norm]

Both nets hold the same weights: :func:`fastact.models.vgg16` (seed 0) and the PyTorch model written out
below with torchvision's module tree (``features``, ``avgpool``, ``classifier``), loaded with fastact's
state dict. Eval mode, float32, PyTorch with 2 threads under ``torch.no_grad()``. The timer is
:func:`fastact.benchmark.median_time` (interleaved samples, each the second of two back-to-back calls).
The work is the 13 convolutions (30.7 GFLOP per 224x224 image for VGG 16, 2·K·C·9·P·Q each) and the
classifier's three GEMVs (124M weights, 0.5 GB of float32 read per forward whatever the batch), so the
floors are the SGEMM rate and the memory bandwidth; the report prints both and the GFLOP/s reached.
"""

import argparse

import numpy as np

import fastact
from fastact import benchmark, models


def conv_flops(cfg, size):
    """FLOPs of the convolutions of a VGG configuration on one size x size image."""
    flops, c, s = 0, 3, size
    for v in cfg:
        if v == "M":
            s //= 2
        else:
            flops += 2 * v * c * 9 * s * s
            c = v
    return flops


def torch_vgg(torch, cfg, batch_norm, num_classes):
    """torchvision's VGG written out in PyTorch (make_layers, AdaptiveAvgPool2d((7, 7)), classifier)."""
    tnn = torch.nn
    layers, c = [], 3
    for v in cfg:
        if v == "M":
            layers.append(tnn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(tnn.Conv2d(c, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(tnn.BatchNorm2d(v))
        layers.append(tnn.ReLU(inplace=True))
        c = v

    class VGG(tnn.Module):
        def __init__(self):
            super().__init__()
            self.features = tnn.Sequential(*layers)
            self.avgpool = tnn.AdaptiveAvgPool2d((7, 7))
            self.classifier = tnn.Sequential(
                tnn.Linear(c * 7 * 7, 4096), tnn.ReLU(True), tnn.Dropout(),
                tnn.Linear(4096, 4096), tnn.ReLU(True), tnn.Dropout(), tnn.Linear(4096, num_classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    return VGG()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(models.VGG_CFGS), default="vgg16")
    ap.add_argument("--batch-norm", action="store_true", help="the _bn variant")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args(argv)
    torch = benchmark.load_torch(num_threads=2)
    for k, v in benchmark.machine():
        print(f"{k:20s} {v}")
    cfg = models.VGG_CFGS[a.model]
    net = getattr(models, a.model)(batch_norm=a.batch_norm).eval()
    x = np.random.default_rng(0).standard_normal((a.batch, 3, a.size, a.size)).astype(np.float32)
    fns = {"fastact": lambda: net(x)}
    if torch is not None:
        tnet = torch_vgg(torch, cfg, a.batch_norm, 1000)
        tnet.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
        tnet.eval()
        tx = torch.from_numpy(x)

        def torch_forward():
            with torch.no_grad():
                return tnet(tx)
        fns["torch"] = torch_forward
        with torch.no_grad():
            ref = tnet(tx).numpy()
        err = float(np.abs(net(x) - ref).max() / max(np.abs(ref).max(), 1e-30))
        print(f"max |fastact - PyTorch| / max |PyTorch| of the logits: {err:.1e}")
    t = benchmark.median_time(fns, a.repeat)
    gflop = conv_flops(cfg, a.size) * a.batch / 1e9
    name = a.model + ("_bn" if a.batch_norm else "")
    print(f"fastact {fastact.__version__}, {name}, eval, batch {a.batch}, {a.size}x{a.size}, float32 "
          f"(median of {a.repeat}); conv work {gflop:.1f} GFLOP per forward")
    print("| impl | ms | images/s | conv GFLOP/s | ratio (PyTorch / fastact) |")
    print("|---|---|---|---|---|")
    for k, v in t.items():
        ratio = f"{t['torch'] / t['fastact']:.2f}x" if "torch" in t and k == "fastact" else "-"
        print(f"| {k} | {1e3 * v:.1f} | {a.batch / v:.1f} | {gflop / v:.1f} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
