"""Call overhead on small arrays: fastact's public functions against NumPy's ufunc call and the
compiled loop alone, on 1,000 float32 values (best of 15 repeats of 2,000 calls each).

    python bench/overhead.py

The floor is the compiled serial loop called directly (``fastact.table.loop``): what remains above it
is the Python driver (argument checks, the output allocation).
"""

import timeit

import numpy as np

import fastact as fa
from fastact import benchmark, table


def main(n=1000):
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    y = np.empty_like(x)
    f32 = np.float32
    relu_p, gelu_p = (f32(0), f32(np.inf), f32(0)), (f32(0),)
    relu_loop, gelu_loop = table.loop("relu"), table.loop("gelu")
    cases = {
        "np.maximum(x, 0)": lambda: np.maximum(x, 0),
        "fa.relu(x)": lambda: fa.relu(x),
        "relu loop alone": lambda: relu_loop(x, y, *relu_p),
        "fa.gelu(x)": lambda: fa.gelu(x),
        "gelu loop alone": lambda: gelu_loop(x, y, *gelu_p),
        "fa.relu(x, negative_slope=0.0) (general path)": lambda: fa.relu(x, negative_slope=0.0),
        "np.maximum(x, 0, out=y)": lambda: np.maximum(x, 0, out=y),
        "fa.relu(x, out=y)": lambda: fa.relu(x, out=y),
        "fa.gelu(x, out=y)": lambda: fa.gelu(x, out=y),
    }
    for fn in cases.values():
        fn()
    for key, value in benchmark.machine():
        print(f"{key}: {value}")
    print(f"n = {n} float32 values, best of 15 x 2000 calls")
    for name, fn in cases.items():
        t = min(timeit.repeat(fn, number=2000, repeat=15)) / 2000
        print(f"{name:48s} {t * 1e6:6.2f} us")


if __name__ == "__main__":
    main()
