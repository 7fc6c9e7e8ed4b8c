"""What running a slot kernel on the helper threads costs, and when it pays, for the convolution.

    python bench/slots.py [--repeat 200]

1. A round trip with no work: ``fastact.jit.run_slots`` of a kernel summing 1,000 values in 2 slots
   (calling thread + one helper), against the same kernel on the calling thread alone and against a
   ``parallel=True`` kernel doing the same with a TBB ``prange`` (the threading layer in use).
2. The fused convolution (3x3, padding 1, ReLU, float32) forward and backward at the small shapes
   of the digits and CIFAR-10 networks, on the helper threads and on one thread
   (``config.CONV_PARALLEL_MIN_FLOPS`` set above the call's FLOPs), with the FLOPs of the forward:
   where two threads stop paying is where that threshold belongs.

Medians of ``--repeat`` samples, each the second of two back-to-back calls.
"""

import argparse
import statistics
import sys

import numpy as np
from numba import njit, prange

import fastact as fa
from fastact import benchmark
from fastact import jit as fj


@njit(nogil=True)
def _sum_slots(counter, nslots, a, out):
    sl = fj.next_slot(counter)
    while sl < nslots:
        s = 0.0
        for i in range(sl, a.size, nslots):
            s += a[i]
        out[sl] = s
        sl = fj.next_slot(counter)


@njit(parallel=True, nogil=True)
def _sum_prange(a, out):
    for t in prange(2):
        s = 0.0
        for i in range(t, a.size, 2):
            s += a[i]
        out[t] = s


def median_us(fn, repeat):
    """Median microseconds of ``repeat`` samples, each the second of two back-to-back calls."""
    fn()
    return statistics.median(benchmark.time_pair(fn) for _ in range(repeat)) * 1e6


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args(argv)
    print("; ".join(f"{k}: {v}" for k, v in benchmark.machine()))
    a, out = np.ones(1000), np.zeros(2)
    rows = [("run_slots, calling thread + helper", lambda: fj.run_slots(_sum_slots, 2, (a, out))),
            ("run_slots, calling thread alone", lambda: fj.run_slots(_sum_slots, 2, (a, out), False)),
            ("parallel=True prange (threading layer)", lambda: _sum_prange(a, out))]
    print("\nRound trip, 1,000 values in 2 slots (us):\n\n| how | us |\n|---|---|")
    for name, fn in rows:
        print(f"| {name} | {median_us(fn, args.repeat * 5):.1f} |")
    print("\nFused conv 3x3 + ReLU, float32 (us; threads: helper threads as configured, one: one thread):\n")
    print("| N, C -> K @ HxW | forward MFLOP | forward threads | forward one | backward threads | backward one |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    saved = fa.config.CONV_PARALLEL_MIN_FLOPS
    try:
        for n, c, k, h in [(32, 1, 16, 8), (32, 16, 16, 8), (32, 16, 32, 4), (32, 32, 32, 4), (64, 16, 32, 8),
                           (64, 16, 16, 32)]:
            x = rng.standard_normal((n, c, h, h)).astype(np.float32)
            w = (rng.standard_normal((k, c, 3, 3)) * 0.1).astype(np.float32)
            y, z = fa.conv2d(x, w, padding=1, activation="relu", return_preactivation=True)

            def fwd():
                fa.conv2d(x, w, padding=1, activation="relu", return_preactivation=True)

            def bwd():
                fa.conv2d_backward(y, x, w, padding=1, preactivation=z, activation="relu")
            times = []
            for threshold in (0, 10 ** 15):
                fa.config.CONV_PARALLEL_MIN_FLOPS = threshold
                times += [median_us(fwd, args.repeat), median_us(bwd, args.repeat)]
            flops = 2 * n * k * c * 9 * h * h / 1e6
            print(f"| {n}, {c} -> {k} @ {h}x{h} | {flops:.1f} | {times[0]:.0f} | {times[2]:.0f} | {times[1]:.0f} | "
                  f"{times[3]:.0f} |")
    finally:
        fa.config.CONV_PARALLEL_MIN_FLOPS = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
