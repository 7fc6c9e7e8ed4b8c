"""Dask and other duck arrays (NEP 13) through fastact's public functions (fastact/duck.py).

Every elementwise activation and backward, softmax and ``module(x)`` keep a Dask array lazy, compute
exactly the NumPy path's values chunk by chunk, and run on a distributed cluster whose workers hold
less memory than the array. Skipped when Dask is not installed (``pip install "fastact[dask]"``).
"""

import math
import os
import threading
import time

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

import fastact as fa  # noqa: E402
from fastact import models, nn  # noqa: E402
from fastact.table import ENTRIES  # noqa: E402

from conftest import DTYPES, PARAM_SETS, default_kwargs  # noqa: E402

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")  # the NumPy path warns about nothing

#: uneven chunks: the last chunk of each axis is shorter, and one is a single element
CHUNKS = ((7, 1, 13, 19), (5, 6))


def _values(dtype, seed=0):
    """A 40 x 11 array: normal values over a wide range, and NaN, +-inf, +-0 and extremes."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((40, 11)) * 6).astype(dtype)
    fi = np.finfo(dtype)
    x.flat[:9] = [np.nan, np.inf, -np.inf, 0.0, -0.0, fi.max, -fi.max, fi.tiny, -1.0]
    return x


def _same(actual, expected):
    """Bit-for-bit equality, dtype and shape included (the sign of zero too); NaN where NaN, whatever
    its sign bit and payload (neither is specified: serial and SIMD loops may differ there)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(actual), nan)
    assert actual[~nan].tobytes() == expected[~nan].tobytes()


def _counting(a, chunks):
    """(dask array of ``a``, counter): the counter's ``n`` counts the chunks computed so far."""
    class Counter:
        n = 0
    lock = threading.Lock()

    def count(block):
        with lock:
            Counter.n += 1
        return block
    meta = np.empty((0,) * a.ndim, a.dtype)  # no call to infer the chunk type
    return da.from_array(a, chunks=chunks).map_blocks(count, dtype=a.dtype, meta=meta), Counter


ALL_NAMES = [n for name, act in ENTRIES.items() for n in (name, *act.aliases)]


# ------------------------------------------------------------------------------------ elementwise

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_activation_and_backward_is_lazy_and_exact(name, dtype):
    fwd, bwd = getattr(fa, name), getattr(fa, f"{name}_backward")
    x = _values(dtype)
    dy = _values(dtype, seed=1)
    xd, calls = _counting(x, CHUNKS)
    dyd = da.from_array(dy, chunks=((20, 20), (11,)))  # different chunks: aligned by Dask
    y, dx = fwd(xd), bwd(dyd, xd)
    assert isinstance(y, da.Array) and isinstance(dx, da.Array)
    assert calls.n == 0, "building the graph computed the input"
    assert y.dtype == x.dtype and dx.dtype == x.dtype and y.shape == x.shape
    _same(y.compute(), fwd(x))
    _same(dx.compute(), bwd(dy, x))
    _same(bwd(dy, xd).compute(), bwd(dy, x))  # a NumPy dy against a Dask x
    assert calls.n == 3 * len(CHUNKS[0]) * len(CHUNKS[1])


@pytest.mark.parametrize("name", [n for n in PARAM_SETS])
def test_keyword_parameters(name):
    act = ENTRIES[name]
    x = _values(np.float32)
    dy = _values(np.float32, seed=2)
    xd = da.from_array(x, chunks=CHUNKS)
    for kw in [default_kwargs(act), *PARAM_SETS[name]]:
        fwd, bwd = getattr(fa, name), getattr(fa, f"{name}_backward")
        _same(fwd(xd, **kw).compute(), fwd(x, **kw))
        _same(bwd(dy, xd, **kw).compute(), bwd(dy, x, **kw))
    if name == "relu":
        kw = dict(negative_slope=0.1, max_value=None, subgradient=1.0)
        _same(fa.relu_backward(dy, xd, **kw).compute(), fa.relu_backward(dy, x, **kw))
        _same(fa.relu(xd, negative_slope=np.float64(0.1)).compute(), fa.relu(x, negative_slope=0.1))


def test_bad_parameters_raise_when_the_graph_is_built():
    xd = da.ones(10, chunks=3)
    with pytest.raises(ValueError, match="approximate"):
        fa.gelu(xd, approximate="fast")
    with pytest.raises(TypeError, match="may not be None"):
        fa.elu(xd, alpha=None)
    with pytest.raises(TypeError, match="dtype complex"):
        fa.relu(da.ones(4, chunks=2, dtype=np.complex64))
    with pytest.raises(ValueError):
        fa.relu_backward(da.ones(4, chunks=2), da.ones(5, chunks=2))


@pytest.mark.parametrize("dtype, expected", [(np.float16, np.float32), (np.int16, np.float64),
                                             (np.int64, np.float64), (np.bool_, np.float64)])
def test_dtype_rules_as_numpy(dtype, expected):
    x = (np.arange(-6, 6) % 3).astype(dtype)
    y = fa.gelu(da.from_array(x, chunks=5))
    assert y.dtype == expected
    _same(y.compute(), fa.gelu(x))


def test_array_valued_parameters_and_out():
    x = _values(np.float64)
    xd = da.from_array(x, chunks=CHUNKS)
    slopes = np.linspace(-0.5, 0.5, x.shape[1])  # one slope per column, broadcast by the real ufunc
    y = fa.leaky_relu(xd, negative_slope=slopes)
    assert isinstance(y, da.Array)
    _same(y.compute(), fa.leaky_relu(x, negative_slope=slopes))
    y = fa.leaky_relu(x, negative_slope=da.from_array(slopes, chunks=4))  # a Dask parameter: Dask out
    assert isinstance(y, da.Array)
    _same(y.compute(), fa.leaky_relu(x, negative_slope=slopes))
    # out= a Dask array: Dask's own out= semantics (the out array now holds the result's graph)
    target = da.zeros(x.shape, chunks=CHUNKS)
    assert fa.silu(xd, out=target) is target
    _same(target.compute(), fa.silu(x))
    with pytest.raises(TypeError, match="out= must be an array of the input's kind"):
        fa.silu(xd, out=np.empty(x.shape))


def test_0d_and_empty():
    x0 = np.float32(-2.5).reshape(())
    _same(fa.elu(da.from_array(x0)).compute(), np.asarray(fa.elu(x0)))
    e = np.empty((0, 3), np.float32)
    _same(fa.mish(da.from_array(e)).compute(), fa.mish(e))


def test_threaded_scheduler_matches_numpy():
    x = np.linspace(-8, 8, 3_000_001, dtype=np.float32)
    with dask.config.set(scheduler="threads", num_workers=2):
        y = fa.gelu(da.from_array(x, chunks=400_000), approximate="tanh").compute()
    _same(y, fa.gelu(x, approximate="tanh"))


class Wrapped:
    """The smallest NEP 13 duck array: wraps an ndarray, unwraps ufunc inputs and wraps the result."""

    def __init__(self, a):
        self.a = np.asarray(a)

    dtype = property(lambda self: self.a.dtype)
    shape = property(lambda self: self.a.shape)

    def astype(self, dtype):
        return Wrapped(self.a.astype(dtype))

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = [i.a if isinstance(i, Wrapped) else i for i in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(o.a if isinstance(o, Wrapped) else o for o in kwargs["out"])
        return Wrapped(getattr(ufunc, method)(*inputs, **kwargs))


@pytest.mark.parametrize("name", ["relu", "gelu", "softplus", "hardswish"])
def test_any_nep13_array_goes_through_the_ufunc(name):
    fwd, bwd = getattr(fa, name), getattr(fa, f"{name}_backward")
    x = _values(np.float32)
    dy = _values(np.float32, seed=3)
    y = fwd(Wrapped(x))
    assert isinstance(y, Wrapped)
    _same(y.a, fwd(x))  # the ufunc's loops give the NumPy path's values, and no NaN warnings
    _same(bwd(dy, Wrapped(x)).a, bwd(dy, x))
    i16 = np.arange(-50, 50, dtype=np.int16)
    _same(fwd(Wrapped(i16)).a, fwd(i16))  # int16 computes in float64, as the NumPy path
    out = Wrapped(np.empty_like(x))
    fwd(Wrapped(x), out=out)
    _same(out.a, fwd(x))


def test_numpy_subclasses_and_scalars_stay_numpy():
    m = np.ma.masked_array([-1.0, 2.0], mask=[False, True])
    assert type(fa.relu(m)) is np.ndarray  # unchanged: an ndarray subclass is not a duck array
    assert isinstance(fa.relu(np.float32(-1.0)), np.float32)
    assert fa.relu([-1.0, 1.0]).tolist() == [0.0, 1.0]


def test_prelu():
    x = _values(np.float32).reshape(40, 11, 1)
    w = np.linspace(0.05, 0.5, 11, dtype=np.float32)
    xd = da.from_array(x, chunks=((10, 30), (4, 7), 1))  # the channel axis split: rechunked
    _same(fa.prelu(xd, w).compute(), fa.prelu(x, w))
    _same(fa.prelu(xd, w[:1]).compute(), fa.prelu(x, w[:1]))
    with pytest.raises(ValueError, match=r"weight has 3 elements but x.shape\[1\] is 11"):
        fa.prelu(xd, w[:3])
    with pytest.raises(TypeError, match="prelu_backward takes NumPy arrays"):
        fa.prelu_backward(xd, xd, w)  # no silent compute


# ---------------------------------------------------------------------------------------- softmax

@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_softmax_over_a_split_axis(axis, dtype):
    x = _values(dtype)[:, 1:] * dtype(0.1)  # no inf: a finite row per axis
    x[3, 4] = np.nan
    dy = _values(dtype, seed=4)[:, 1:]
    xd, calls = _counting(x, CHUNKS[0:1] + ((4, 6),))
    for f, fb in ((fa.softmax, fa.softmax_backward), (fa.log_softmax, fa.log_softmax_backward)):
        before = calls.n
        y = f(xd, axis=axis)
        assert isinstance(y, da.Array) and calls.n == before
        assert len(y.chunks[axis % 2]) == 1  # the softmax axis in one chunk, the other one still split
        assert len(y.chunks[1 - axis % 2]) > 1
        _same(y.compute(), f(x, axis=axis))
        yn = f(x, axis=axis)
        _same(fb(da.from_array(dy, chunks=7), y, axis=axis).compute(), fb(dy, yn, axis=axis))
        _same(fb(dy, y, axis=axis).compute(), fb(dy, yn, axis=axis))
    with pytest.raises(ValueError, match="out of bounds"):
        fa.softmax(xd, axis=2)
    with pytest.raises(ValueError, match="dy has shape"):
        fa.softmax_backward(xd[:3], xd)
    with pytest.raises(TypeError, match="NumPy or Dask"):
        fa.softmax(Wrapped(x))


# ---------------------------------------------------------------------------------------- modules

def _small_vgg():
    return models.vgg([8, "M", 16, "M"], in_channels=3, num_classes=10, input_size=16, hidden=(32,))


def test_module_eval_over_batch_chunks_is_lazy_one_task_per_chunk():
    net = _small_vgg().eval()
    x = np.random.default_rng(0).standard_normal((23, 3, 16, 16)).astype(np.float32)
    xd, calls = _counting(x, ((8, 8, 7), 3, 16, 16))
    y = net(xd)
    assert isinstance(y, da.Array) and calls.n == 0
    assert y.shape == (23, 10) and y.dtype == np.float32 and y.chunks == ((8, 8, 7), (10,))
    assert len(y.dask.layers[y.name]) == 3  # one task per batch chunk
    expected = np.concatenate([net(x[i:i + 8]) for i in range(0, 23, 8)])
    _same(y.compute(), expected)  # each chunk is exactly the NumPy forward of its images
    np.testing.assert_allclose(y.compute(), net(x), rtol=1e-4, atol=1e-5)  # GEMM blocking differs
    # chunks along other axes are merged first
    _same(net(da.from_array(x, chunks=(8, 2, 5, 16))).compute(), expected)
    # a single child module too (Module.__call__ of any module)
    _same(net[0](xd).compute(), net[0](x))


def test_module_training_mode_and_bad_calls_raise():
    net = _small_vgg()
    xd = da.zeros((4, 3, 16, 16), chunks=2, dtype=np.float32)
    with pytest.raises(RuntimeError, match="inference only"):
        net(xd)
    net.eval()
    net[1].train()  # one child in training mode is enough to refuse
    with pytest.raises(RuntimeError, match=r"call \.eval\(\) first"):
        net(xd)
    net.eval()
    with pytest.raises(TypeError, match="takes a NumPy array, or for inference a Dask array"):
        net(Wrapped(np.zeros((4, 3, 16, 16), np.float32)))
    with pytest.raises(ValueError, match="batch axis"):
        nn.Flatten().eval()(da.zeros((), dtype=np.float32))


def test_reference_model_eval():
    net = models.net_depth(n_chans1=8).eval()
    x = np.random.default_rng(1).standard_normal((6, 3, 32, 32)).astype(np.float32)
    y = net(da.from_array(x, chunks=(4, 3, 32, 32)))
    assert y.chunks == ((4, 2), (2,))
    _same(y.compute(), np.concatenate([net(x[:4]), net(x[4:])]))


# ------------------------------------------------------------------------------ distributed cluster

def _rss_sampler_start():
    """Runs on a worker: sample the process's resident memory every 5 ms, keeping the peak."""
    import psutil
    import threading as th
    state = {"peak": psutil.Process().memory_info().rss, "stop": False}

    def sample():
        p = psutil.Process()
        while not state["stop"]:
            state["peak"] = max(state["peak"], p.memory_info().rss)
            time.sleep(0.005)
    th.Thread(target=sample, daemon=True).start()
    globals()["_fastact_rss"] = state
    return os.getpid()


def _rss_sampler_stop():
    state = globals()["_fastact_rss"]
    state["stop"] = True
    return os.getpid(), state["peak"]


def _gelu_sum_exact(a, b, n):
    """The sum of gelu over ``np.linspace(a, b, n)``: the integral of x Phi(x), whose antiderivative is
    ((x^2 - 1) Phi(x) + x phi(x)) / 2, times (n - 1) / (b - a), plus the trapezoid rule's end terms
    (exact to O(h^2) relative, h = (b - a) / (n - 1))."""
    def phi(x):
        return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)

    def Phi(x):
        return 0.5 * math.erfc(-x / math.sqrt(2))

    def F(x):
        return ((x * x - 1) * Phi(x) + x * phi(x)) / 2

    return (F(b) - F(a)) * (n - 1) / (b - a) + (a * Phi(a) + b * Phi(b)) / 2


def test_local_cluster_processes_2gb_chunk_by_chunk_within_worker_memory():
    """2 GB of float32 through fa.gelu on two worker processes limited to 600 MB each: 64 MB chunks
    flow through the workers and are reduced as they go, and no worker is restarted."""
    distributed = pytest.importorskip("distributed")
    pytest.importorskip("psutil")
    limit = 600 * 2**20
    n = 2**29  # 2 GiB of float32, 32 chunks of 64 MiB
    a, b = -6.0, 6.0
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit=limit,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        pids = client.run(_rss_sampler_start)
        x = da.linspace(a, b, n, chunks=2**24, dtype=np.float32)
        t0 = time.perf_counter()
        total = fa.gelu(x).sum(dtype=np.float64).compute()
        seconds = time.perf_counter() - t0
        peaks = client.run(_rss_sampler_stop)
        # a small model over batch chunks on the same cluster (the module pickles to the workers)
        net = _small_vgg().eval()
        imgs = np.random.default_rng(2).standard_normal((12, 3, 16, 16)).astype(np.float32)
        logits = net(da.from_array(imgs, chunks=(4, 3, 16, 16))).compute()
        after = client.run(os.getpid)
    assert x.nbytes > 3 * limit
    expected = _gelu_sum_exact(a, b, n)
    assert total == pytest.approx(expected, rel=1e-6), (total, expected)
    assert sorted(after.values()) == sorted(pids.values()), "a worker was restarted"
    peak = {addr: p for addr, (pid, p) in peaks.items()}
    print(f"\n2 GiB gelu+sum on 2 workers x 1 thread: {seconds:.1f} s, peak worker RSS "
          f"{', '.join(f'{p / 2**20:.0f} MiB' for p in peak.values())} (limit {limit / 2**20:.0f} MiB)")
    assert max(peak.values()) < limit
    _same(logits, np.concatenate([net(imgs[i:i + 4]) for i in range(0, 12, 4)]))
