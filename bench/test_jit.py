"""Benchmark: a user's fused kernel from fastact.jit (``out = a * gelu(b)`` in one prange pass, from
docs/examples/gelu_gate.py) against the same with NumPy: ``a * fastact.gelu(b)`` (two passes, one
temporary) and NumPy/SciPy alone (``a * 0.5 * b * erfc(-b / sqrt(2))``).

Floor: the pass reads a and b and writes out, 12 bytes per float32 element; at the machine's streaming
bandwidth (docs/performance.md, "Floors") that is ~0.5-0.8 ms per 1e7 elements, and GELU's
erfc makes the loop compute-bound above that.
"""

import importlib.util
import os

import numpy as np
import pytest
import scipy.special

import fastact

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("gelu_gate", os.path.join(HERE, "..", "docs", "examples",
                                                                          "gelu_gate.py"))
gelu_gate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gelu_gate)

SIZES = (10**5, 10**7)


def _inputs(n):
    rng = np.random.default_rng(0)
    return rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)


IMPLS = {
    "fastact.jit fused": lambda a, b, out: gelu_gate.gelu_gate(a, b, out),
    "a * fastact.gelu(b)": lambda a, b, out: a * fastact.gelu(b),
    "NumPy + SciPy": lambda a, b, out: a * (0.5 * b * scipy.special.erfc(-b / np.float32(np.sqrt(2)))),
}


@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"{n:.0e}")
@pytest.mark.parametrize("impl", list(IMPLS))
def test_gelu_gate(benchmark, impl, n):
    a, b = _inputs(n)
    out = np.empty_like(a)
    fn = IMPLS[impl]
    fn(a, b, out)  # compile / warm
    benchmark.group = f"gelu_gate|{n:.0e}"

    def pair():  # the second of two back-to-back calls (a spinning pool charges the first)
        fn(a, b, out)
        return fn(a, b, out)

    benchmark(pair)
