"""Regenerates docs/images/resnet_loss.png: NetDepth, NetRes and NetResDeep trained with fastact.

    PYTHONPATH=. python docs/examples/resnet_loss.py [--data-dir CIFAR_DIR] [--epochs 6] [--out docs/images]

Without ``--data-dir`` the nets train on scikit-learn's digits shown as 3x32x32 images (no download);
with the CIFAR-10 python batches, on airplane vs bird. About a minute on two cores (56 s on the
development machine, digits, 6 epochs).
"""

import argparse
import time

from fastact import plots


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", help="CIFAR-10 python batches (default: the digits stand-in)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--out", default="docs/images")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    for path in plots.resnet_loss(a.out, data_dir=a.data_dir, epochs=a.epochs):
        print(path)
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
