"""Accuracy against references written elsewhere: 60-digit mpmath, PyTorch's autograd at the kinks,
and the mathematical limits at +-inf.

The float64 NumPy references in the table share formulas (and so bugs) with the kernels; these tests
do not. Every activation x parameter set x dtype is scanned over a dense grid (every kink from both
sides, both tails out to the largest float, +-inf, subnormals) and held to the ulp bound the table
states (``Activation.max_ulp``, the figures of docs/accuracy.md).
"""

import importlib.util
import os

import mpmath as mp
import numpy as np
import pytest

import fastact
from fastact.table import ENTRIES

import mpref
from conftest import floats_of, param_cases, public, torch_or_skip

CASES = param_cases()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name,kwargs", CASES)
def test_ulp_error_against_mpmath_within_the_table_bound(name, kwargs, dtype):
    act = ENTRIES[name]
    f, fb = public(name)
    bound = act.ulp_bounds(*floats_of(act, kwargs))[dtype.name]
    got = mpref.scan(act, kwargs, dtype, f, fb)
    for kind, limit in zip(("forward", "backward"), bound):
        ulps, x = got[kind]
        assert ulps <= limit, f"{name}{kwargs} {kind} {dtype}: {ulps:.3g} ulps at x = {x!r} (bound {limit})"


@pytest.mark.parametrize("name,kwargs", CASES)
def test_float32_dense_sample_within_the_table_bound(name, kwargs):
    # The mpmath grid is dense at kinks, tails and subnormals but has ~200 points elsewhere; the float32
    # kernels (some in float32 arithmetic, ``Activation.float32``) are also held to the bound on 2^17
    # random points, against the float64 kernels (themselves within a few float64 ulps of mpmath, by
    # the test above: ~1e-9 of a float32 ulp), with the same rule next to a derivative's zero.
    act = ENTRIES[name]
    f, fb = public(name)
    bound = act.ulp_bounds(*floats_of(act, kwargs))["float32"]
    x = mpref.dense_float32_sample()
    x64 = x.astype(np.float64)
    for kind, limit in zip(("forward", "backward"), bound):
        if kind == "forward":
            got, exact = f(x, **kwargs), f(x64, **kwargs)
        else:
            got, exact = fb(np.ones_like(x), x, **kwargs), fb(np.ones_like(x64), x64, **kwargs)
        err = mpref.errors(act, x, got, exact, np.float32, kind == "backward")
        i = int(np.argmax(err))
        assert err[i] <= limit, (f"{name}{kwargs} {kind} float32: {err[i]:.3g} ulps at x = {x[i]!r} "
                                 f"(bound {limit})")


@pytest.mark.parametrize("name,kwargs", CASES)
def test_limits_at_infinity(name, kwargs, dtype):
    act = ENTRIES[name]
    f, fb = public(name)
    params = floats_of(act, kwargs)
    (fl, fh), (dl, dh) = act.limits(*params)
    x = np.array([-np.inf, np.inf], dtype=dtype)
    np.testing.assert_array_equal(f(x, **kwargs), np.array([fl, fh], dtype=dtype))
    np.testing.assert_array_equal(fb(np.ones(2, dtype), x, **kwargs), np.array([dl, dh], dtype=dtype))
    # the table's limits are the mathematical ones: mpmath far beyond the float range
    for backward, (lo, hi) in ((False, (fl, fh)), (True, (dl, dh))):
        ref = mpref.REFS[name][backward]
        mparams = [mp.mpf(p) if np.isfinite(p) else mp.inf * np.sign(p) for p in params]
        for xv, want in ((-mpref.FAR, lo), (mpref.FAR, hi)):
            got = float(ref(xv, *mparams))
            assert got == want or abs(got - want) <= 1e-15 * abs(want), (name, backward, xv, got, want)


def _torch_fn(torch, act, kwargs):
    if act.torch_name is None or (act.name == "relu" and any(
            kwargs[p.name] != p.default for p in act.params)):
        return None  # torch.nn.functional.relu has no Keras parameters
    tf = getattr(torch.nn.functional, act.torch_name)
    return (lambda t: tf(t)) if act.name == "relu" else (lambda t: tf(t, **kwargs))


@pytest.mark.parametrize("name,kwargs", CASES)
def test_derivative_at_every_kink_is_pytorchs(name, kwargs, dtype):
    torch = torch_or_skip()
    act = ENTRIES[name]
    kinks = [k for k in act.kinks(*floats_of(act, kwargs)) if np.isfinite(k)]
    tf = _torch_fn(torch, act, kwargs)
    if not kinks or tf is None:
        pytest.skip("no kink, or no PyTorch counterpart with these parameters")
    x = np.array(kinks, dtype=dtype)
    tx = torch.tensor(x, requires_grad=True)
    tf(tx).backward(torch.ones_like(tx))
    got = public(name)[1](np.ones_like(x), x, **kwargs)
    np.testing.assert_allclose(got, tx.grad.numpy(), rtol=1e-7 if dtype == np.float64 else 1e-6,
                               err_msg=f"{name}{kwargs} at {kinks}")


def _report():
    spec = importlib.util.spec_from_file_location("accuracy_report",
                                                  os.path.join(ROOT, "bench", "accuracy_report.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_docs_kink_and_limit_tables_are_current():
    """docs/accuracy.md's kink and limit tables are generated from the table: regenerate them with
    ``python bench/accuracy_report.py --write`` when this fails."""
    report = _report()
    doc = open(os.path.join(ROOT, "docs", "accuracy.md")).read()
    for begin, end, text in report.generated_sections(include_ulps=False):
        assert doc[doc.index(begin) + len(begin):doc.index(end)].strip() == text.strip(), begin


def test_fixed_defects_stay_fixed():
    """The defects that outside references found (each was wrong before): gelu at -inf, the rounding
    of x / 6 + 1/2 just above -3, hardswish'(3)."""
    for approximate in ("none", "tanh"):
        for dt in (np.float32, np.float64):
            x = np.array([-np.inf, np.inf], dt)
            assert fastact.gelu(x, approximate=approximate).tolist() == [0.0, np.inf]
            assert fastact.gelu_backward(np.ones(2, dt), x, approximate=approximate).tolist() == [0.0, 1.0]
    x = np.array([-3.0 + 2.0 ** -30])
    exact = float((mp.mpf(x[0]) + 3) / 6)
    assert abs(fastact.hardsigmoid(x)[0] - exact) <= np.spacing(exact)
    assert abs(fastact.hardswish(x)[0] - float(mp.mpf(x[0]) * (mp.mpf(x[0]) + 3) / 6)) <= np.spacing(exact)
    assert fastact.hardswish_backward(np.ones(1), np.array([3.0]))[0] == 1.0
