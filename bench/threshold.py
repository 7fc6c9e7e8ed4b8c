"""Where should elementwise kernels switch from the serial to the parallel loop?

Times the compiled serial and parallel (both cores) loops of a memory-bound kernel (ReLU) and a
transcendental one (GELU) over contiguous float32 arrays of 2^10 .. 2^22 elements, calling
``fastact._codegen.get("loop", name, backward=False, parallel=...)`` directly (no Python driver), and
prints the parallel/serial time ratio per size, each kernel's crossover, and for each kind of kernel the
threshold that minimises the worst slowdown against the better loop over all sizes: the values for
``fastact.config.PARALLEL_MIN_SIZE`` (memory-bound) and ``PARALLEL_MIN_SIZE_TRANSCENDENTAL``.

    PYTHONPATH=. python bench/threshold.py [--repeat 15]

Serial and parallel samples are interleaved and each figure is a median, because the machine is noisy.
"""

import argparse
import statistics
import time

import numpy as np

from fastact import _codegen

KERNELS = {"relu": (0.0, np.inf, 0.0), "gelu": (0.0,)}  # default parameters
EXPONENTS = range(10, 23)


def _sample(fn, args, number):
    t0 = time.perf_counter()
    for _ in range(number):
        fn(*args)
    return (time.perf_counter() - t0) / number


def measure(repeat=15, min_sample=2e-3):
    """{name: [(n, serial seconds, parallel seconds), ...]}"""
    res = {}
    rng = np.random.default_rng(0)
    for name, params in KERNELS.items():
        ser = _codegen.get("loop", name, backward=False, parallel=False)
        par = _codegen.get("loop", name, backward=False, parallel=True)
        rows = []
        for e in EXPONENTS:
            n = 1 << e
            x = (3.0 * rng.standard_normal(n)).astype(np.float32)
            y = np.empty_like(x)
            args = (x, y, *(np.float32(p) for p in params))
            ser(*args), par(*args)  # compile / load, fault in y
            number = {k: max(1, int(min_sample / max(_sample(f, args, 1), 1e-7))) for k, f in
                      (("ser", ser), ("par", par))}
            s, p = [], []
            for _ in range(repeat):
                s.append(_sample(ser, args, number["ser"]))
                p.append(_sample(par, args, number["par"]))
            rows.append((n, statistics.median(s), statistics.median(p)))
        res[name] = rows
    return res


def crossover(rows):
    """Smallest n from which the parallel loop is faster at every larger measured size (None: never)."""
    best = None
    for n, s, p in reversed(rows):
        if p < s:
            best = n
        else:
            break
    return best


def choose(res):
    """(threshold, worst slowdown): the power of two minimising max over the kernels in ``res`` and
    sizes of time(loop chosen by the threshold) / time(better loop)."""
    cands = [1 << e for e in EXPONENTS] + [1 << (EXPONENTS[-1] + 1)]
    scored = []
    for t in cands:
        worst = max((p if n >= t else s) / min(s, p) for rows in res.values() for n, s, p in rows)
        scored.append((worst, t))
    worst, t = min(scored)
    return t, worst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=15)
    a = ap.parse_args(argv)
    import numba

    from fastact import _runtime
    res = measure(a.repeat)
    print(f"threading layer {_runtime.threading_layer()}, {numba.get_num_threads()} threads")
    print(f"{'n':>9s}  " + "  ".join(f"{k + ' ser us':>12s} {k + ' par us':>12s} {'par/ser':>7s}" for k in res))
    for i, e in enumerate(EXPONENTS):
        cells = []
        for rows in res.values():
            n, s, p = rows[i]
            cells.append(f"{s * 1e6:12.1f} {p * 1e6:12.1f} {p / s:7.2f}")
        print(f"{'2^' + str(e):>9s}  " + "  ".join(cells))
    for k, rows in res.items():
        c = crossover(rows)
        print(f"{k}: parallel faster from {c if c else 'never (up to 2^22)'}")
    # one threshold per kind of kernel: memory-bound (ReLU) and transcendental (GELU)
    for var, k in (("PARALLEL_MIN_SIZE", "relu"), ("PARALLEL_MIN_SIZE_TRANSCENDENTAL", "gelu")):
        t, worst = choose({k: res[k]})
        print(f"{var} = {t} (2^{t.bit_length() - 1}): worst case {worst:.2f}x the better loop")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
