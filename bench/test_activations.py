"""Benchmarks: every elementwise activation, forward and backward, at 1e3, 1e5 and 1e7 float32 values,
against the NumPy formulation a user would write and PyTorch (skipped without it).

Generated from ``fastact._table.ACTIVATIONS`` (plus prelu and softmax) through :mod:`fastact._bench`,
which also holds the NumPy formulations. Napkin math: a forward moves 8n bytes, a backward 12n; the
``copy|{size}`` group (``np.copyto``) is the bandwidth floor no elementwise kernel can beat.

    pytest bench/ --benchmark-group-by=group
    pytest bench/ -k "gelu and 1e7" --benchmark-group-by=group
"""

import pytest

from fastact import _bench

IMPLS = ("fastact", "numpy", "torch")
SIZES = _bench.DEFAULT_SIZES

# size outermost, so the shared 1e7 inputs are generated once
PARAMS = [pytest.param(case, impl, n, id=f"{case.label}-{impl}-{_bench.size_label(n)}")
          for n in SIZES for case in _bench.cases() for impl in IMPLS]


@pytest.mark.parametrize("case, impl, size", PARAMS)
def test_activation(run_benchmark, case, impl, size):
    fns = case.setup(size)
    if impl not in fns:
        pytest.skip("PyTorch is not installed")
    fn = fns[impl]
    fn()  # compile (or load from the cache) outside the timing
    run_benchmark(fn, f"{case.label}|{_bench.size_label(size)}", impl, size, case.nbytes(size))


@pytest.mark.parametrize("size", SIZES, ids=_bench.size_label)
def test_copy(run_benchmark, size):
    """The floor: np.copyto of n float32 values, 8n bytes."""
    run_benchmark(_bench.copy_fn(size), f"copy|{_bench.size_label(size)}", "copy", size, 8 * size)
