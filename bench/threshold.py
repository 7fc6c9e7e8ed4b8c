"""Where should elementwise kernels switch from the serial to the parallel loop?

Times the compiled serial and parallel (both cores) loops of a memory-bound kernel (ReLU), a
transcendental one (GELU) and the backwards of four non-transcendental activations (ReLU, leaky ReLU,
ReLU6, hardswish) over contiguous float32 arrays of 2^10 .. 2^22 elements with
:func:`fastact.benchmark.serial_parallel_times` (no Python driver, the defaults of every parameter), and
prints the parallel/serial time ratio per size, each kernel's crossover, and for each kind of kernel the
threshold that minimises the worst slowdown against the better loop over all sizes: the values for
``fastact.config.PARALLEL_MIN_SIZE`` (memory-bound), ``PARALLEL_MIN_SIZE_BACKWARD`` and
``PARALLEL_MIN_SIZE_TRANSCENDENTAL``.

    PYTHONPATH=. python bench/threshold.py [--repeat 15]

Serial and parallel samples are interleaved, each the second of two back-to-back calls, and each figure
is a median, because the machine is noisy (:mod:`fastact.benchmark`).
"""

import argparse

from fastact import benchmark

#: (label, activation, backward) and the config value each group of labels sets
KERNELS = (("relu", "relu", False), ("gelu", "gelu", False), ("relu'", "relu", True),
           ("leaky_relu'", "leaky_relu", True), ("relu6'", "relu6", True), ("hardswish'", "hardswish", True))
GROUPS = (("PARALLEL_MIN_SIZE", ("relu",)), ("PARALLEL_MIN_SIZE_TRANSCENDENTAL", ("gelu",)),
          ("PARALLEL_MIN_SIZE_BACKWARD", ("relu'", "leaky_relu'", "relu6'", "hardswish'")))
EXPONENTS = range(10, 23)


def measure(repeat=15):
    """{label: [(n, serial seconds, parallel seconds), ...]}"""
    return {label: benchmark.serial_parallel_times(name, [1 << e for e in EXPONENTS], repeat, backward=bw)
            for label, name, bw in KERNELS}


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
    res = measure(a.repeat)
    for k, v in benchmark.machine():
        print(f"{k:20s} {v}")
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
    # one threshold per kind of kernel: memory-bound (ReLU), transcendental (GELU), memory-bound backwards
    for var, labels in GROUPS:
        t, worst = choose({k: res[k] for k in labels})
        print(f"{var} = {t} (2^{t.bit_length() - 1}): worst case {worst:.2f}x the better loop")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
