"""Benchmarks: conv3x3 + bias + ReLU, forward and forward+backward, on the layer shapes of the peer table
in docs/performance.md, float32 and float64, against the NumPy baseline a user would write and PyTorch
(skipped without it).

Shapes (N, C -> K, H x W; all 3x3, padding 1): N=32 3->32 32x32; N=64 64->64 32x32; and the six layers of
the 3x32x32 VGG-style net at batch 64 (3->16 @32, 16->16 @32, 16->32 @16, 32->32 @16, 32->64 @8,
64->64 @8). They, the NumPy baseline (im2col via ``sliding_window_view`` + ``np.tensordot`` + bias +
``np.maximum``) and the PyTorch calls (``F.relu(F.conv2d(...))``, 2 threads) live in
``bench/conv_report.py``, which prints the same comparison as one markdown table.

Napkin math (the floor): a conv does 2*N*K*C*R*S*P*Q FLOPs; "im2col then BLAS" cannot beat the GEMM rate
of the BLAS, measured here by ``floor|sgemm|1024`` (and ``floor|dgemm|1024``). Every benchmark stores its
GFLOP/s in ``extra_info``, and at the end of the module a table of GFLOP/s, share of the GEMM floor and
ratios (peer median / fastact median: above 1.00x fastact is faster) is printed.

    pytest bench/test_layers.py --benchmark-group-by=group
    pytest bench/test_layers.py -k "N64 and float32" --benchmark-group-by=group

Max-pool (the three 2x2 pools of the cifar net at batch 64, float32): forward with and without the indices,
backward with and without them, against PyTorch's aten kernels; groups ``f"maxpool|{shape}|float32"``
(``pytest bench/test_layers.py -k max_pool --benchmark-group-by=group``).

Groups are ``f"conv|{shape}|{dtype}"``: each holds fastact, NumPy and PyTorch forward, and fastact and
PyTorch forward+backward, on the same inputs. JIT compilation (or the cache load) happens in a warm-up
call outside the timing. Large shapes run a few pedantic rounds so the module stays under ~8 minutes on
2 cores.
"""

import numpy as np
import pytest

import conv_report as cr  # bench/ is on sys.path (pytest inserts the directory of bench/conftest.py)
from fastact import benchmark as fbench  # "benchmark" is pytest-benchmark's fixture

SHAPE_IDS = {name: name.replace(" ", "-").replace("->", "to").replace("@", "at") for name in cr.SHAPES}
DTYPES = ("float32", "float64")
CASES = [pytest.param(name, dt, id=f"{SHAPE_IDS[name]}-{dt}") for name in cr.SHAPES for dt in DTYPES]

#: (group, impl) -> median seconds, for the summary printed at the end of the module
RESULTS = {}
#: seconds of pedantic rounds each benchmark aims at (at least 3 rounds, at most 20)
TARGET_S = 0.6

_inputs_cache = {}


def inputs(name, dtype):
    key = (name, dtype)
    if key not in _inputs_cache:
        _inputs_cache.clear()  # keep one shape's arrays alive at a time
        _inputs_cache[key] = cr.make_inputs(cr.SHAPES[name], np.dtype(dtype))
    return _inputs_cache[key]


def run_bench(benchmark, fn, group, impl, flops):
    benchmark.group = group
    benchmark.extra_info.update(conv_impl=impl, flops=flops)
    fn()  # warm-up: JIT compile or cache load, BLAS/oneDNN set-up, first-touch of buffers
    once = fbench.time_pair(fn)
    rounds = max(3, min(20, int(TARGET_S / max(once, 1e-6))))
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
    if benchmark.stats is not None:  # None under --benchmark-disable
        med = benchmark.stats.stats.median
        benchmark.extra_info["GFLOP/s"] = round(flops / med / 1e9, 2)
        RESULTS[(group, impl)] = med


def _torch():
    torch = fbench.load_torch(cr.TORCH_THREADS)
    if torch is None:
        pytest.skip("PyTorch is not installed")
    return torch


# ------------------------------------------------------------------------------------ floors

@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_floor(benchmark, dtype):
    """np.matmul of two 1024x1024 matrices: 2*1024^3 FLOPs, the rate "im2col then BLAS" cannot beat."""
    n = 1024
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    c = np.empty((n, n), dtype)
    kind = "sgemm" if dtype == "float32" else "dgemm"
    run_bench(benchmark, lambda: np.matmul(a, b, out=c), f"floor|{kind}|{n}", kind, 2 * n ** 3)


# ------------------------------------------------------------------------------------ forward

@pytest.mark.parametrize("impl", ["fastact", "numpy", "torch"])
@pytest.mark.parametrize("name, dtype", CASES)
def test_conv_forward(benchmark, name, dtype, impl):
    x, w, b, dy = inputs(name, dtype)
    if impl == "fastact":
        fn = lambda: cr.fastact_fwd(x, w, b)  # noqa: E731
        # a benchmark of a wrong result is worthless: check against the NumPy baseline once
        np.testing.assert_allclose(fn(), cr.numpy_conv_relu(x, w, b), rtol=1e-4, atol=1e-4)
    elif impl == "numpy":
        fn = lambda: cr.numpy_conv_relu(x, w, b)  # noqa: E731
    else:
        fn, _ = cr.torch_fns(_torch(), x, w, b, dy)
    run_bench(benchmark, fn, f"conv|{name}|{dtype}", impl, cr.flops(cr.SHAPES[name]))


# --------------------------------------------------------------------------- forward + backward

@pytest.mark.parametrize("impl", ["fastact", "torch"])
@pytest.mark.parametrize("name, dtype", CASES)
def test_conv_forward_backward(benchmark, name, dtype, impl):
    """Forward keeping the pre-activation, then dx, dweight, dbias through the fused ReLU backward
    (3x the forward's FLOPs: the forward GEMM, the dweight GEMM and the dx GEMM)."""
    x, w, b, dy = inputs(name, dtype)
    if impl == "fastact":
        fn = lambda: cr.fastact_fwd_bwd(x, w, b, dy)  # noqa: E731
    else:
        _, fn = cr.torch_fns(_torch(), x, w, b, dy)
    run_bench(benchmark, fn, f"conv|{name}|{dtype}", f"{impl} fwd+bwd", 3 * cr.flops(cr.SHAPES[name]))


# ------------------------------------------------------------------------------------ summary

def _summary_lines():
    floor = {"float32": RESULTS.get(("floor|sgemm|1024", "sgemm")),
             "float64": RESULTS.get(("floor|dgemm|1024", "dgemm"))}
    gemm = {dt: (2 * 1024 ** 3 / t / 1e9 if t else None) for dt, t in floor.items()}
    lines = ["GEMM floor (np.matmul 1024^2): " +
             ", ".join(f"{dt}: {g:.1f} GFLOP/s" for dt, g in gemm.items() if g)]
    lines.append(f"{'group':38s} {'fastact ms':>10s} {'GFLOP/s':>8s} {'% GEMM':>7s} {'vs NumPy':>9s} "
                 f"{'vs torch':>9s} {'fwd+bwd ms':>10s} {'vs torch':>9s}")
    groups = sorted({g for g, _ in RESULTS if g.startswith("conv|")}, key=lambda g: list(RESULTS).index(
        next(k for k in RESULTS if k[0] == g)))
    for g in groups:
        _, name, dt = g.split("|")
        t = {impl: v for (gg, impl), v in RESULTS.items() if gg == g}
        fa_t, fb = t.get("fastact"), t.get("fastact fwd+bwd")
        gf = fa_t and cr.flops(cr.SHAPES[name]) / fa_t / 1e9
        pct = f"{100 * gf / gemm[dt]:.0f}%" if gf and gemm.get(dt) else "-"
        lines.append(f"{g:38s} {cr._ms(fa_t):>10s} {(f'{gf:.1f}' if gf else '-'):>8s} {pct:>7s} "
                     f"{cr._x(fa_t and t.get('numpy') and t['numpy'] / fa_t):>9s} "
                     f"{cr._x(fa_t and t.get('torch') and t['torch'] / fa_t):>9s} {cr._ms(fb):>10s} "
                     f"{cr._x(fb and t.get('torch fwd+bwd') and t['torch fwd+bwd'] / fb):>9s}")
    return lines if groups else []


@pytest.fixture(scope="module", autouse=True)
def _print_summary(request):
    yield
    lines = _summary_lines()
    if not lines:
        return
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        print("\n\nconv3x3 + bias + ReLU: peer median / fastact median (above 1.00x fastact is faster)")
        for line in lines:
            print(line)


# ------------------------------------------------------------------------------------ max-pool

#: the three 2x2 max-pools of the cifar 3x32x32 net at batch 64 (N, C, H, W), float32
POOL_SHAPES = {"64x16x32x32": (64, 16, 32, 32), "64x32x16x16": (64, 32, 16, 16), "64x64x8x8": (64, 64, 8, 8)}


def _pool_inputs(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal((shape[0], shape[1], shape[2] // 2, shape[3] // 2)).astype(np.float32)
    return x, dy


@pytest.mark.parametrize("impl", ["fastact", "fastact indices", "torch", "torch indices"])
@pytest.mark.parametrize("name", list(POOL_SHAPES))
def test_max_pool_forward(benchmark, name, impl):
    """2x2 max-pool forward, alone and also returning the indices (PyTorch: max_pool2d_with_indices)."""
    import fastact as fa
    x, _ = _pool_inputs(POOL_SHAPES[name])
    if impl.startswith("fastact"):
        # the compact window-local indices that nn.MaxPool2d keeps (True: PyTorch's flat int64 ones)
        fn = lambda: fa.max_pool2d(x, 2, return_indices="window" if impl.endswith("indices") else False)  # noqa: E731
    else:
        torch = _torch()
        tx = torch.from_numpy(x)
        op = torch.ops.aten.max_pool2d_with_indices if impl.endswith("indices") else torch.ops.aten.max_pool2d
        fn = lambda: op(tx, [2, 2], [2, 2])  # noqa: E731
    run_bench(benchmark, fn, f"maxpool|{name}|float32", f"{impl} fwd", 0)


@pytest.mark.parametrize("impl", ["fastact", "fastact indices", "torch"])
@pytest.mark.parametrize("name", list(POOL_SHAPES))
def test_max_pool_backward(benchmark, name, impl):
    """2x2 max-pool backward: fastact searching the windows again (no indices) or from the forward's
    indices; PyTorch from its indices (the aten kernel autograd calls)."""
    import fastact as fa
    x, dy = _pool_inputs(POOL_SHAPES[name])
    if impl.startswith("fastact"):
        idx = fa.max_pool2d(x, 2, return_indices="window")[1] if impl.endswith("indices") else None
        fn = lambda: fa.max_pool2d_backward(dy, x, 2, indices=idx)  # noqa: E731
        np.testing.assert_array_equal(fn(), fa.max_pool2d_backward(dy, x, 2))
    else:
        torch = _torch()
        tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
        _, ti = torch.ops.aten.max_pool2d_with_indices(tx, [2, 2], [2, 2])
        bwd = torch.ops.aten.max_pool2d_with_indices_backward
        fn = lambda: bwd(tdy, tx, [2, 2], [2, 2], [0, 0], [1, 1], False, ti)  # noqa: E731
    run_bench(benchmark, fn, f"maxpool|{name}|float32", f"{impl} bwd", 0)
