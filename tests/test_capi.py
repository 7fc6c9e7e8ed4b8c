"""The C ABI: every kernel called through its pointer, from ctypes and from C code compiled here."""

import ctypes
import math
import os
import shutil
import subprocess

import numpy as np
import pytest

import fastact
from fastact import capi
from fastact.table import ENTRIES, NAMES

from conftest import default_kwargs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = os.path.join(ROOT, "kernels")
CC = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
DTYPES = [np.float32, np.float64]

needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler on this machine")


def _ptr(a):
    return ctypes.c_void_p(a.ctypes.data)


def _params(act, kwargs):
    """The forward's parameters as the C kernels take them (a double array in signature order)."""
    vals = [spec.to_float(kwargs.get(spec.name, spec.default)) for spec in act.params]
    return np.array(vals, dtype=np.float64)


def _points(act, dtype, n=257):
    rng = np.random.default_rng(5)
    lo, hi = act.domain
    x = rng.uniform(lo, hi, n)
    x[:6] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30]
    return x.astype(dtype)


# a non-default parameter set for every activation that has parameters
NON_DEFAULT = {"relu": {"negative_slope": 0.1, "max_value": 4.0, "threshold": 0.5},
               "leaky_relu": {"negative_slope": 0.2}, "hardtanh": {"min_val": -2.0, "max_val": 0.5},
               "threshold": {"threshold": 0.3, "value": -1.0}, "elu": {"alpha": 0.7},
               "celu": {"alpha": 1.5}, "gelu": {"approximate": "tanh"},
               "softplus": {"beta": 2.0, "threshold": 5.0}}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", NAMES)
def test_every_kernel_through_ctypes_matches_the_ufuncs(name, dtype):
    act = ENTRIES[name]
    t = ctypes.c_void_p
    fwd = ctypes.CFUNCTYPE(None, t, t, ctypes.c_int64, t)(capi.address(name, dtype))
    bwd = ctypes.CFUNCTYPE(None, t, t, t, ctypes.c_int64, t)(capi.address(name, dtype, backward=True))
    x = _points(act, dtype)
    dy = np.random.default_rng(6).standard_normal(x.size).astype(dtype)
    f, fb = getattr(fastact, name), getattr(fastact, f"{name}_backward")
    for kwargs, params in [({}, None)] + ([(NON_DEFAULT[name], _params(act, NON_DEFAULT[name]))]
                                           if name in NON_DEFAULT else []):
        y = np.empty_like(x)
        dx = np.empty_like(x)
        fwd(_ptr(x), _ptr(y), x.size, None if params is None else _ptr(params))
        bwd(_ptr(dy), _ptr(x), _ptr(dx), x.size, None if params is None else _ptr(params))
        # the same scalar code as the ufuncs: bit-identical, NaN where they give NaN
        np.testing.assert_array_equal(y, f(x, **kwargs), err_msg=f"{name} {kwargs}")
        np.testing.assert_array_equal(dx, fb(dy, x, **kwargs), err_msg=f"{name} backward {kwargs}")


def test_in_place_and_empty_calls():
    t = ctypes.c_void_p
    fwd = ctypes.CFUNCTYPE(None, t, t, ctypes.c_int64, t)(capi.address("relu", "float32"))
    x = np.array([-1.0, 2.0, np.nan], np.float32)
    fwd(_ptr(x), _ptr(x), x.size, None)
    np.testing.assert_array_equal(x, [0.0, 2.0, np.nan])
    fwd(_ptr(x), _ptr(x), 0, None)   # n = 0 and n < 0 do nothing
    fwd(_ptr(x), _ptr(x), -5, None)
    np.testing.assert_array_equal(x, [0.0, 2.0, np.nan])


def test_address_errors_and_names():
    assert capi.address("swish") == capi.address("silu")
    assert capi.kernel_name("relu", np.float64, backward=True) == "fastact_relu_backward_f64"
    assert len(capi.KERNEL_NAMES) == 4 * len(NAMES)
    with pytest.raises(ValueError, match="unknown activation"):
        capi.address("nope")
    with pytest.raises(TypeError, match="float32 or float64"):
        capi.address("relu", np.int32)


# ------------------------------------------------------------------------------------ the header

def test_header_file_is_the_generated_header():
    with open(os.path.join(KERNELS, "fastact.h")) as fh:
        on_disk = fh.read()
    assert on_disk == capi.header(), "kernels/fastact.h is stale: python -m fastact.capi > kernels/fastact.h"
    for name in capi.KERNEL_NAMES:
        assert name in on_disk
    for name in NAMES:
        assert f"FASTACT_{name.upper()}_NPARAMS {ENTRIES[name].nparams}" in on_disk


@needs_cc
def test_header_compiles_as_strict_c99(tmp_path):
    src = tmp_path / "use.c"
    src.write_text('#include "fastact.h"\nint main(void) { fastact_forward_f32 f = 0; (void)f; '
                   "return FASTACT_RELU_NPARAMS == 3 ? 0 : 1; }\n")
    subprocess.run([CC, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I", KERNELS,
                    str(src), "-o", str(tmp_path / "use")], check=True)
    subprocess.run([str(tmp_path / "use")], check=True)


# ------------------------------------------------------------------- C code calling the kernels

@pytest.fixture(scope="module")
def clib(tmp_path_factory):
    if CC is None:
        pytest.skip("no C compiler on this machine")
    out = tmp_path_factory.mktemp("clib") / "libfastact_apply.so"
    subprocess.run([CC, "-std=c99", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-I", KERNELS,
                    os.path.join(KERNELS, "fastact_apply.c"), "-o", str(out), "-lm"], check=True)
    lib = ctypes.CDLL(str(out))
    v, i64 = ctypes.c_void_p, ctypes.c_int64
    for suffix in ("f32", "f64"):
        getattr(lib, f"fastact_apply_rows_{suffix}").argtypes = [v, v, v, i64, i64, v, i64]
        getattr(lib, f"fastact_backward_rows_{suffix}").argtypes = [v, v, v, v, i64, i64, v, i64]
    lib.fastact_check_gradient_f64.argtypes = [v, v, v, i64, v, ctypes.c_double]
    lib.fastact_check_gradient_f64.restype = ctypes.c_double
    return lib


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", NAMES)
def test_c_code_runs_every_kernel_through_its_pointer(clib, name, dtype):
    act = ENTRIES[name]
    suffix = "f32" if dtype is np.float32 else "f64"
    rows, cols = 3, 50
    x = _points(act, dtype, rows * cols).reshape(rows, cols)
    dy = np.random.default_rng(7).standard_normal((rows, cols)).astype(dtype)
    # row 0: defaults (a NULL block is not per row, so give each row its parameters explicitly)
    kw_rows = [default_kwargs(act), NON_DEFAULT.get(name, default_kwargs(act)), default_kwargs(act)]
    params = np.stack([_params(act, kw) for kw in kw_rows]) if act.nparams else np.zeros((rows, 0))
    params = np.ascontiguousarray(params)
    y = np.empty_like(x)
    dx = np.empty_like(x)
    getattr(clib, f"fastact_apply_rows_{suffix}")(
        capi.address(name, dtype), _ptr(x), _ptr(y), rows, cols,
        _ptr(params) if act.nparams else None, act.nparams)
    getattr(clib, f"fastact_backward_rows_{suffix}")(
        capi.address(name, dtype, True), _ptr(dy), _ptr(x), _ptr(dx), rows, cols,
        _ptr(params) if act.nparams else None, act.nparams)
    f, fb = getattr(fastact, name), getattr(fastact, f"{name}_backward")
    for r, kw in enumerate(kw_rows):
        np.testing.assert_array_equal(y[r], f(x[r], **kw), err_msg=f"{name} row {r}")
        np.testing.assert_array_equal(dx[r], fb(dy[r], x[r], **kw), err_msg=f"{name} backward row {r}")


def test_readme_ctypes_example_matches_the_python_function_bit_for_bit(clib):
    """kernels/README.md's example: per-row float64 slopes on float32 rows give what
    fastact.leaky_relu gives for the same float64 slopes (both cast them to float32)."""
    x = np.random.default_rng(0).standard_normal((4, 1000)).astype(np.float32)
    y = np.empty_like(x)
    slopes = np.array([[0.01], [0.1], [0.2], [0.3]])
    clib.fastact_apply_rows_f32(capi.address("leaky_relu", "float32"), x.ctypes.data, y.ctypes.data,
                                4, 1000, slopes.ctypes.data, 1)
    want = fastact.leaky_relu(x, slopes)
    assert want.dtype == np.float32
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("name", NAMES)
def test_c_finite_difference_check_of_every_backward(clib, name):
    act = ENTRIES[name]
    rng = np.random.default_rng(8)
    lo, hi = act.domain
    x = rng.uniform(lo, hi, 200)
    kinks = np.array(act.kinks(*[s.to_float(s.default) for s in act.params]), dtype=float)
    if kinks.size:
        x = x[np.min(np.abs(x[:, None] - kinks[None, :]), axis=1) > 1e-3]
    worst = clib.fastact_check_gradient_f64(capi.address(name, "float64"),
                                            capi.address(name, "float64", True), _ptr(x), x.size,
                                            None, 1e-6)
    assert 0 <= worst < 1e-6, f"{name}: worst |analytic - numeric| = {worst}"


# ------------------------------------------------------------------------- scipy.LowLevelCallable

def test_quad_over_low_level_callables_gives_known_integrals():
    from scipy.integrate import quad
    cases = [
        ("relu", -1.0, 2.0, 2.0),                                     # area of the ramp
        ("sigmoid", -3.0, 3.0, 3.0),                                  # sigmoid(x) + sigmoid(-x) = 1
        ("sigmoid", 0.0, 2.0, math.log1p(math.exp(2.0)) - math.log(2.0)),  # softplus(2) - softplus(0)
        ("tanh", 0.0, 1.5, math.log(math.cosh(1.5))),
        ("softplus", -40.0, 0.0, math.pi ** 2 / 12 - 0.0),            # -Li2(-1) = pi^2 / 12, tail ~e^-40
        ("hardsigmoid", -3.0, 3.0, 3.0),
        ("relu6", -1.0, 8.0, 18.0 + 12.0),                            # 0..6 ramp (18) + 6 * 2
        ("gelu", -1.0, 1.0, None),                                    # see below
    ]
    for name, a, b, want in cases:
        if name == "gelu":
            # gelu(x) + gelu(-x) = x (2 Phi(x) - 1) = x erf(x / sqrt 2): integrate that over [0, 1]
            from scipy.special import erf
            want = quad(lambda t: t * erf(t / math.sqrt(2.0)), 0.0, 1.0)[0]
        got, err = quad(capi.scalar(name), a, b, epsabs=1e-12, epsrel=1e-12, limit=200)
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), name
    # a LowLevelCallable is what SciPy got, not a Python callable
    from scipy import LowLevelCallable
    assert isinstance(capi.scalar("elu"), LowLevelCallable)
