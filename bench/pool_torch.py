"""PyTorch's max-pool 2x2 forward and backward on the cifar pool shapes, alone in its process (in one
process with fastact, PyTorch's OpenMP pool and Numba's TBB pool stall each other on 2 cores): the
peer column of docs/performance.md's max-pool table; ``--fastact`` times fastact's training pair
(forward with indices, backward from them) the same way, in a process of its own.

    python bench/pool_torch.py [--threads 1] [--fastact]
"""

import argparse

import numpy as np

from fastact import benchmark

SHAPES = ((64, 16, 32, 32), (64, 32, 16, 16), (64, 64, 8, 8))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=41)
    ap.add_argument("--fastact", action="store_true", help="time fastact instead of PyTorch")
    a = ap.parse_args(argv)
    if a.fastact:
        return _fastact(a.repeat)
    torch = benchmark.load_torch(num_threads=a.threads)
    F = torch.nn.functional
    print(f"torch {torch.__version__}, {a.threads} thread(s), float32, median of {a.repeat}")
    for shape in SHAPES:
        x = torch.randn(*shape, requires_grad=True)
        y = F.max_pool2d(x, 2)
        dy = torch.randn_like(y)

        def fwd():
            with torch.no_grad():
                F.max_pool2d(x, 2)

        def bwd():
            x.grad = None
            y.backward(dy, retain_graph=True)

        t = benchmark.median_time({"fwd": fwd, "bwd": bwd}, repeat=a.repeat)
        print(f"{'x'.join(map(str, shape)):12s} fwd {t['fwd'] * 1e3:.3f} ms  bwd {t['bwd'] * 1e3:.3f} ms")


def _fastact(repeat):
    import numba

    import fastact as fa
    print(f"fastact {fa.__version__}, {numba.get_num_threads()} Numba threads, float32, median of {repeat}")
    for shape in SHAPES:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        _, idx = fa.max_pool2d(x, 2, return_indices=True)
        dy = np.random.default_rng(1).standard_normal(idx.shape).astype(np.float32)
        t = benchmark.median_time({"fwd": lambda: fa.max_pool2d(x, 2, return_indices=True),
                                   "bwd": lambda: fa.max_pool2d_backward(dy, x, 2, indices=idx)},
                                  repeat=repeat)
        print(f"{'x'.join(map(str, shape)):12s} fwd {t['fwd'] * 1e3:.3f} ms  bwd {t['bwd'] * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
