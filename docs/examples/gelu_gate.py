"""A user's own fused kernel built from fastact's scalar activations: the GELU-gated product
``out = a * gelu(b)`` (the gate of GEGLU layers), and its gradient, each in one parallel pass.

    python docs/examples/gelu_gate.py

NumPy needs a temporary per step (``gelu(b)``, then the product) and, for the gradient, two more;
the Numba loop reads ``a`` and ``b`` once and writes ``out`` once. fastact.jit's functions inline into
the loop, so LLVM vectorises it (float32 through fastact's polynomials, see docs/accuracy.md).
"""

import time

import numpy as np
from numba import njit, prange

import fastact as fa
from fastact import jit as fj


@njit(parallel=True)
def gelu_gate(a, b, out):
    """out = a * gelu(b); a, b, out are 1-D arrays of one length."""
    for i in prange(a.size):
        out[i] = a[i] * fj.gelu(b[i])
    return out


@njit(parallel=True)
def gelu_gate_backward(dout, a, b, da, db):
    """da = dout * gelu(b), db = dout * a * gelu'(b)."""
    for i in prange(a.size):
        da[i] = dout[i] * fj.gelu(b[i])
        db[i] = dout[i] * a[i] * fj.gelu_grad(b[i])
    return da, db


def gelu_gate_numpy(a, b):
    """The same with NumPy and fastact's array functions: two passes, one temporary."""
    return a * fa.gelu(b)


def _median_ms(fn, repeat=15):
    fn()  # the first of each back-to-back pair pays for a thread pool that is still spinning
    times = []
    for _ in range(repeat):
        fn()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def main(n=10_000_000):
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
    out = np.empty_like(a)
    np.testing.assert_allclose(gelu_gate(a, b, out), gelu_gate_numpy(a, b), rtol=1e-6, atol=1e-7)
    fused = _median_ms(lambda: gelu_gate(a, b, out))
    numpy = _median_ms(lambda: gelu_gate_numpy(a, b))
    print(f"n = {n:.0e} float32: fused {fused:.2f} ms, a * fa.gelu(b) {numpy:.2f} ms "
          f"({numpy / fused:.2f}x)")


if __name__ == "__main__":
    main()
