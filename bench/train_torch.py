"""The PyTorch twin of ``python -m fastact train`` (default arguments), for bench/startup.py.

    python bench/train_torch.py [--epochs 12] [--quiet]

The same job: scikit-learn's digits (1,438 training and 359 test images, read from the same file, with
the same seeded split and standardisation as ``fastact.data.load_digits``), the same VGG-style net (conv3x3 16, ReLU, conv3x3 16,
ReLU, max-pool, conv3x3 32, ReLU, max-pool, Linear 128, ReLU, Linear 10), Adam at lr 2e-3, batch 32,
the same per-epoch shuffle, a tqdm progress bar per epoch, the test accuracy after every epoch, and
the training curves saved as a PNG with matplotlib at the end. PyTorch on 2 threads (the machine's
cores). Not part of fastact; PyTorch is optional and only this script needs it.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np


def load_digits(seed=0, test_fraction=0.2):
    """fastact.data.load_digits, restated so that this process never imports fastact: scikit-learn's
    digits file read as fastact reads it (without importing scikit-learn, 1.2 s)."""
    import gzip
    import importlib.util
    root = importlib.util.find_spec("sklearn").submodule_search_locations[0]
    with gzip.open(os.path.join(root, "datasets", "data", "digits.csv.gz"), "rt") as fh:
        data = np.loadtxt(fh, delimiter=",")
    x = data[:, :-1].reshape(-1, 1, 8, 8).astype(np.float32) / 16.0
    y = data[:, -1].astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test, train = perm[:n_test], perm[n_test:]
    mean = x[train].mean(dtype=np.float64)
    std = x[train].std(dtype=np.float64) or 1.0
    return (((x[train] - mean) / std).astype(np.float32), y[train],
            ((x[test] - mean) / std).astype(np.float32), y[test])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    import torch
    from torch import nn
    from tqdm import tqdm
    torch.set_num_threads(2)
    torch.manual_seed(0)
    xtr, ytr, xte, yte = load_digits()
    xtr, ytr, xte, yte = map(torch.from_numpy, (xtr, ytr, xte, yte))
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(32 * 2 * 2, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    for epoch in range(1, args.epochs + 1):
        net.train()
        order = np.random.default_rng([0, epoch]).permutation(len(ytr))
        batches = range(0, len(ytr), 32)
        bar = None if args.quiet else tqdm(total=len(batches), desc=f"epoch {epoch}/{args.epochs}",
                                           unit="batch", file=sys.stdout)
        t0, total, correct = time.perf_counter(), 0.0, 0
        for i in batches:
            idx = torch.from_numpy(order[i:i + 32])
            xb, yb = xtr[idx], ytr[idx]
            logits = net(xb)
            loss = loss_fn(logits, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        net.eval()
        with torch.no_grad():
            test_acc = float((net(xte).argmax(1) == yte).float().mean())
        history.append((total / len(ytr), correct / len(ytr), test_acc))
        print(f"epoch {epoch}: loss {history[-1][0]:.4f}, train acc {history[-1][1]:.2%}, test acc "
              f"{test_acc:.2%}, {len(ytr) / (time.perf_counter() - t0):.0f} images/s")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    axes[0].plot([h[0] for h in history], "o-")
    axes[1].plot([h[1] for h in history], "o-")
    axes[1].plot([h[2] for h in history], "s-")
    path = os.path.join(tempfile.gettempdir(), f"train-torch-{os.getpid()}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    os.remove(path)
    print(f"final test accuracy: {history[-1][2]:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
