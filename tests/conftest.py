"""Shared helpers for the fastact tests: tolerances, parameter sets, awkward arrays, references.

Everything here is derived from the activation table (``fastact.table.ENTRIES``): a new table
entry is picked up by every test without touching this file, except that it may add non-default
parameter sets to :data:`PARAM_SETS`.
"""

import numpy as np
import pytest

from fastact.table import ENTRIES

NAMES = tuple(ENTRIES)
DTYPES = (np.float32, np.float64)

# ------------------------------------------------------------------------------------------ tolerances

#: Per-dtype tolerances ``|actual - expected| <= atol + rtol * |expected|`` against the float64 reference.
#: float32 forwards: the kernels evaluate exp/erfc/tanh with float64 polynomials and round once, so
#: results are within a few float32 ulps (1 ulp = 6e-8 relative); 1e-5 leaves room for the float32
#: arithmetic around them (x * a / (a + 2) in mish, x + c x^3 in gelu-tanh). float32 backwards are looser:
#: derivative formulas such as ``1 - t*t`` (tanh), ``s * (1 - s)`` (sigmoid) and the sums in gelu'/silu'/
#: mish' cancel in float32, which loses absolute accuracy of ~1 ulp of 1 (6e-8) times a few terms, and dy
#: is a standard normal multiplier on top.
#: "layer": a layer (convolution, pooling, batch norm...) against a float64 reference that sums in
#: another order: float32 accumulates rounding over the reduction. "model": a whole network's logits,
#: gradients and parameters after several optimizer steps against PyTorch.
TOL = {
    np.dtype(np.float32): {"forward": dict(rtol=1e-5, atol=1e-6),
                           "backward": dict(rtol=1e-4, atol=1e-5),
                           "layer": dict(rtol=1e-4, atol=1e-5),
                           "model": dict(rtol=2e-4, atol=2e-5)},
    np.dtype(np.float64): {"forward": dict(rtol=1e-12, atol=1e-12),
                           "backward": dict(rtol=1e-12, atol=1e-12),
                           "layer": dict(rtol=1e-12, atol=1e-12),
                           "model": dict(rtol=1e-9, atol=1e-11)},
}


_TORCH = []


def torch_or_none():
    """PyTorch, the tests' optional second reference (on 2 threads), or None when it is not installed:
    the one place the tests load it."""
    if not _TORCH:
        try:
            import torch
            torch.set_num_threads(2)
        except ImportError:
            torch = None
        _TORCH.append(torch)
    return _TORCH[0]


def torch_or_skip():
    """PyTorch, or skip the calling test when it is not installed."""
    torch = torch_or_none()
    if torch is None:
        pytest.skip("PyTorch is not installed: its comparisons skip")
    return torch


def torchvision_models_or_skip():
    """torchvision's model definitions (:func:`fastact.benchmark.load_torchvision_models`: its pure-Python
    model modules, imported without its compiled ops), or skip: an optional reference written
    elsewhere, never a dependency."""
    from fastact import benchmark
    torch_or_skip()
    tv = benchmark.load_torchvision_models()
    if tv is None:
        pytest.skip("torchvision's model modules are not importable here: their comparisons skip")
    return tv


def tol(dtype, kind="forward"):
    """``dict(rtol=..., atol=...)`` of :data:`TOL` for ``dtype`` and ``kind``: the one tolerance table
    of the tests (the layer ops carry their own in ``fastact.ops``)."""
    return TOL[np.dtype(dtype)][kind]


def assert_close(actual, expected, dtype, kind="forward", err_msg=""):
    """``actual`` has dtype ``dtype`` and matches ``expected`` (float64) within the table's tolerance.

    NaN must be NaN in both, and infinities must match exactly (assert_allclose checks both).
    ``expected`` is rounded to ``dtype`` first, so a value that overflows ``dtype`` must be infinite.
    """
    actual = np.asarray(actual)
    assert actual.dtype == np.dtype(dtype), f"dtype {actual.dtype}, expected {np.dtype(dtype)}. {err_msg}"
    # The exact result rounded to ``dtype``: a float32 result beyond float32's range is +-inf.
    with np.errstate(over="ignore"):
        expected = np.asarray(expected, dtype=np.float64).astype(dtype).astype(np.float64)
    np.testing.assert_allclose(actual.astype(np.float64), expected,
                               equal_nan=True, err_msg=err_msg, **tol(dtype, kind))


# ---------------------------------------------------------------------------------------- parameters

def default_kwargs(act):
    """The public defaults, as keyword arguments (``max_value=None`` stays None)."""
    return {p.name: p.default for p in act.params}


def floats_of(act, kwargs, backward_kwargs=None):
    """The float values the reference functions (and the ufuncs) take for public keyword arguments."""
    vals = [p.to_float(kwargs.get(p.name, p.default)) for p in act.params]
    if backward_kwargs is not None:
        vals += [p.to_float(backward_kwargs.get(p.name, p.default)) for p in act.backward_params]
    return tuple(vals)


#: Non-default parameter sets (public spelling) per activation with parameters.
PARAM_SETS = {
    "relu": [dict(negative_slope=0.1, max_value=6.0, threshold=-0.5),   # leaky ReLU6 with a margin
             dict(negative_slope=0.0, max_value=1.5, threshold=0.25),
             dict(negative_slope=-0.3, max_value=None, threshold=1.0)],
    "leaky_relu": [dict(negative_slope=0.2), dict(negative_slope=-0.5)],
    "hardtanh": [dict(min_val=-2.0, max_val=0.5)],
    "threshold": [dict(threshold=0.5, value=-3.0), dict(threshold=-1.0, value=2.0)],
    "elu": [dict(alpha=0.5)],
    "celu": [dict(alpha=2.0)],
    "gelu": [dict(approximate="tanh")],
    "softplus": [dict(beta=2.0, threshold=5.0), dict(beta=0.5, threshold=20.0)],
}

for _n in PARAM_SETS:
    assert _n in ENTRIES, _n


def param_cases():
    """(name, kwargs, id) for every activation's defaults and its non-default sets."""
    cases = []
    for name, act in ENTRIES.items():
        cases.append(pytest.param(name, default_kwargs(act), id=f"{name}-default"))
        for i, kw in enumerate(PARAM_SETS.get(name, [])):
            cases.append(pytest.param(name, kw, id=f"{name}-p{i}"))
    return cases


def finite_kinks(act, kwargs):
    return tuple(k for k in act.kinks(*floats_of(act, kwargs)) if np.isfinite(k))


# ---------------------------------------------------------------------------------------- references

def _with_limits(act, x, y, kwargs, backward):
    """``y`` with the table's mathematical limits at x = +-inf (a formula evaluated at inf gives NaN
    where the limit exists, e.g. GELU's x * Phi(x) at -inf; tests/test_accuracy.py checks the
    table's limits against mpmath)."""
    (fl, fh), (dl, dh) = act.limits(*floats_of(act, kwargs))
    lo, hi = (dl, dh) if backward else (fl, fh)
    return np.where(x == np.inf, hi, np.where(x == -np.inf, lo, y))


def reference(act, x, kwargs):
    x = np.asarray(x, dtype=np.float64)
    return _with_limits(act, x, act.reference(x, *floats_of(act, kwargs)), kwargs, False)


def reference_backward(act, dy, x, kwargs, backward_kwargs=None):
    x = np.asarray(x, dtype=np.float64)
    d = act.reference_derivative(x, *floats_of(act, kwargs, backward_kwargs or {}))
    d = _with_limits(act, x, d, kwargs, True)
    with np.errstate(all="ignore"):
        return np.asarray(dy, dtype=np.float64) * d


def sample_points(act, kwargs, n, dtype, seed=0, kink_gap=0.0):
    """``n`` points of ``dtype`` spread over the activation's test domain, plus its kinks' surroundings,
    dropping points within ``kink_gap`` of a kink."""
    rng = np.random.default_rng(seed)
    lo, hi = act.domain
    kinks = finite_kinks(act, kwargs)
    lo = min([lo] + [k - 1.0 for k in kinks])
    hi = max([hi] + [k + 1.0 for k in kinks])
    x = rng.uniform(lo, hi, n)
    if kink_gap:
        for k in kinks:
            x = x[np.abs(x - k) > kink_gap]
    return x.astype(dtype)


# ---------------------------------------------------------------------------------------- awkward arrays

def awkward_arrays(base):
    """Views and copies of awkward layouts whose values are ``base``-derived: yields (label, array).

    ``base`` must be 2-D with at least 4 rows and 4 columns. The compared reference is computed on
    ``np.ascontiguousarray(array)`` (the values), so any layout gives the same expected values.
    """
    yield "c-order", np.ascontiguousarray(base)
    yield "f-order", np.asfortranarray(base)
    yield "transposed", base.T
    yield "strided", base[::2, 1::3]
    yield "negative-strides", base[::-1, ::-2]
    yield "row", base[1]
    yield "column", base[:, 2]
    yield "0-d", base[1, 1].copy().reshape(())
    yield "empty", base[:0]
    yield "empty-2", base[:, :0].T
    swapped = base.astype(base.dtype.newbyteorder(">" if base.dtype.byteorder in "=<" else "<"))
    yield "byteswapped", swapped
    padded = np.zeros((base.shape[0], base.shape[1], 2), dtype=base.dtype)
    padded[..., 0] = base
    yield "interleaved", padded[..., 0]
    yield "3-d-view", np.broadcast_to(base, (2,) + base.shape)[:, ::2]


@pytest.fixture(params=DTYPES, ids=["f32", "f64"])
def dtype(request):
    return np.dtype(request.param)


def public(name):
    """(forward, backward) public functions of activation ``name``."""
    import fastact
    return getattr(fastact, name), getattr(fastact, f"{name}_backward")

