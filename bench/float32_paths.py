"""float32 kernels in float32 arithmetic (``Activation.float32``) against the same table functions
evaluated in float64 and rounded once (``table.fast_variant``, every other float32 kernel's way): time
per element on one core, and the worst ulp error over random inputs against the float64 kernels.

    python bench/float32_paths.py [--n 100000] [--points 8388608]

The figures behind the ``float32=`` entries of the table (docs/design.md, docs/accuracy.md): each
loop is a plain serial ``@njit`` loop over ``--n`` float32 values (medians of interleaved samples),
the errors use the accuracy tests' rule (``tests/mpref.py``: ulps of max(|f'|, 1/2) next to a
derivative's zero) over ``--points`` inputs from ``mpref.dense_float32_sample``.
"""

import argparse
import os
import sys

import numpy as np
from numba import njit

import fastact as fa
from fastact import benchmark, table

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import mpref  # noqa: E402


def _loop(scalar, via_float64):
    """A serial loop applying ``scalar`` to float32 x: directly, or on float64 and rounded once."""
    if via_float64:
        @njit(error_model="numpy")
        def run(x, y):
            for i in range(x.size):
                y[i] = np.float32(scalar(np.float64(x[i])))
    else:
        @njit(error_model="numpy")
        def run(x, y):
            for i in range(x.size):
                y[i] = scalar(x[i])
    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--points", type=int, default=1 << 23)
    ap.add_argument("--repeat", type=int, default=41)
    a = ap.parse_args(argv)
    for k, v in benchmark.machine():
        print(f"{k:20s} {v}")
    print(f"\none core, {a.n} float32 values, median ns per element of {a.repeat}; worst ulps over "
          f"{a.points} random inputs against the float64 kernels\n")
    print("| function | float32 arithmetic ns | float64-evaluated ns | speed-up | float32 ulps | "
          "float64-evaluated ulps |")
    print("|---|---|---|---|---|---|")
    x = np.random.default_rng(0).standard_normal(a.n).astype(np.float32) * 4
    y = np.empty_like(x)
    xs = mpref.dense_float32_sample(a.points, seed=1)
    for act in table.ENTRIES.values():
        if act.float32 is None or act.params:
            continue
        for backward in (False, True):
            native = act.float32[backward]
            if native is None:
                continue
            loops = {"native": _loop(native, False),
                     "f64": _loop(table.fast_variant(act.derivative if backward else act.forward), True)}
            t = benchmark.median_time({k: (lambda f=f: f(x, y)) for k, f in loops.items()}, repeat=a.repeat)
            public = getattr(fa, act.name + ("_backward" if backward else ""))
            xd = xs.astype(np.float64)
            exact = public(np.ones_like(xd), xd) if backward else public(xd)
            ulps = {}
            for k, f in loops.items():
                got = np.empty_like(xs)
                f(xs, got)
                ulps[k] = float(np.max(mpref.errors(act, xs, got, exact, np.float32, backward)))
            label = act.name + ("'" if backward else "")
            print(f"| {label} | {t['native'] * 1e9 / a.n:.3f} | {t['f64'] * 1e9 / a.n:.3f} | "
                  f"{t['f64'] / t['native']:.2f}x | {ulps['native']:.2f} | {ulps['f64']:.2f} |")


if __name__ == "__main__":
    main()
