"""fastact.jit: the table's scalar functions called from nopython code give exactly what the array
functions give, in float32 and float64, with the public parameters; and the documented example runs."""

import importlib.util
import math
import os

import numpy as np
import pytest
from numba import njit, prange

import fastact
from fastact import jit as fj
from fastact.table import ENTRIES

from conftest import param_cases, public, sample_points

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _jit_kwargs(act, kwargs):
    """Public keyword arguments as fastact.jit takes them: floats (None -> inf, choices -> numbers)."""
    return {p.name: p.to_float(kwargs.get(p.name, p.default)) for p in act.params}


@pytest.mark.parametrize("name,kwargs", param_cases())
def test_scalar_functions_equal_the_array_kernels_bit_for_bit(name, kwargs, dtype):
    act = ENTRIES[name]
    f, fb = public(name)
    x = np.concatenate([sample_points(act, kwargs, 32, dtype), np.array([np.nan, np.inf, -np.inf, 0.0], dtype)])
    jk = tuple(_jit_kwargs(act, kwargs).values())
    fwd, grad = getattr(fj, name), getattr(fj, name + "_grad")

    # the parameters spelled out (inlined functions take no *args), as a user's kernel would
    ps = "".join(f", p{i}" for i in range(len(jk)))
    ns = {}
    exec(f"def apply(x, y, d{ps}):\n    for i in range(x.size):\n        y[i] = fwd(x[i]{ps})\n"
         f"        d[i] = grad(x[i]{ps})\n", {"fwd": fwd, "grad": grad}, ns)
    y, d = np.empty_like(x), np.empty_like(x)
    njit(ns["apply"])(x, y, d, *(dtype.type(v) for v in jk))
    np.testing.assert_array_equal(y, f(x, **kwargs))
    np.testing.assert_array_equal(d, fb(np.ones_like(x), x, **kwargs))


def test_keyword_parameters_defaults_and_aliases():
    assert fj.relu(-2.0) == 0.0 and fj.relu(-2.0, negative_slope=0.1) == -0.2
    assert fj.relu(7.0, max_value=6.0) == 6.0 and fj.relu(7.0) == 7.0
    assert fj.relu_grad(0.0, subgradient=0.5) == 0.5 and fj.relu_grad(0.0) == 0.0
    assert fj.gelu(1.0, approximate=fj.GELU_TANH) == fastact.gelu(np.array([1.0]), approximate="tanh")[0]
    assert fj.swish is fj.silu and fj.swish_grad is fj.silu_grad
    assert isinstance(fj.gelu(np.float32(1.0)), (float, np.floating))

    @njit
    def kw(v):
        return fj.softplus(v, beta=2.0, threshold=5.0) + fj.elu_grad(v, alpha=0.5)

    assert kw(-1.0) == pytest.approx(
        fastact.softplus(np.array([-1.0]), beta=2.0, threshold=5.0)[0] + 0.5 * math.exp(-1.0))


def test_inside_prange_matches_numpy():
    @njit(parallel=True)
    def mish_times(a, b, out):
        for i in prange(a.size):
            out[i] = fj.mish(a[i]) * b[i]
        return out

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 50_000))
    np.testing.assert_allclose(mish_times(a, b, np.empty_like(a)), fastact.mish(a) * b, rtol=1e-15)


def test_every_activation_is_there():
    for name, act in ENTRIES.items():
        for spelling in (name, *act.aliases):
            assert spelling in fj.__all__ and spelling + "_grad" in fj.__all__


def test_documented_example_runs():
    spec = importlib.util.spec_from_file_location("gelu_gate", os.path.join(ROOT, "docs", "examples",
                                                                            "gelu_gate.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 1000)).astype(np.float32)
    np.testing.assert_allclose(mod.gelu_gate(a, b, np.empty_like(a)), a * fastact.gelu(b), rtol=1e-6)
    dout = rng.standard_normal(1000).astype(np.float32)
    da, db = mod.gelu_gate_backward(dout, a, b, np.empty_like(a), np.empty_like(a))
    np.testing.assert_allclose(da, dout * fastact.gelu(b), rtol=1e-6)
    np.testing.assert_allclose(db, fastact.gelu_backward(dout * a, b), rtol=1e-5, atol=1e-7)
    mod.main(n=10_000)  # the timing printout runs
