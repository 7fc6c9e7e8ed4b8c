"""Benchmarking fastact against NumPy and PyTorch: the timer, the machine description and the cases.

``python -m fastact bench`` prints, for every activation's forward and backward at 1e3, 1e5 and 1e7
float32 values, fastact's and NumPy's throughput, the ratios (NumPy time / fastact time, PyTorch time /
fastact time: above 1.00x fastact is faster) and fastact's throughput as a share of the copy bandwidth
measured in the same run. The scripts and pytest-benchmark suites under ``bench/`` use this module's
timer (:func:`time_pair`, :func:`median_time`), PyTorch loader (:func:`load_torch`) and machine
description (:func:`machine`), so that every figure of ``docs/performance.md`` is measured one way.

**Timing.** Every sample is the *second of two back-to-back calls* of one implementation, and each
figure is the median of samples taken round-robin (fastact, NumPy, PyTorch, fastact, ...). On a 2-core
machine a thread pool is still spinning for a while after the call that used it: OpenBLAS's threads
busy-wait ~70-100 ms after a GEMM, PyTorch's OpenMP pool spins after each parallel region, and Numba's
TBB workers take time to go to sleep and to wake up. Timed straight after another library, a call would
pay for those spinning threads (and for waking its own); the untimed first call of the pair lets the
other pool settle and wakes this one, so each implementation is charged for its own work only.
Interleaving makes a burst of noise from other processes hit all implementations alike: compare the
ratios of one run, never absolute times across runs.

**The floor.** An elementwise forward on n float32 values reads x and writes y, 8n bytes; a backward
reads dy and x and writes dx, 12n bytes. No implementation beats ``np.copyto(y, x)`` (8n bytes streamed,
:func:`copy_fn`), so "% of copy" says how close a kernel is to the memory-bound limit. Transcendental
kernels (GELU, SiLU, ...) are compute-bound on two cores and sit below it.

**The cases** come from the activation table: each entry's ``numpy_baseline``,
``numpy_backward_baseline`` and ``numpy_out_baseline`` (the NumPy formulations a user would write) and
``torch_baseline`` (default ``F.<torch_name>(x)``), ``torch_backward_baseline`` (the aten kernel autograd
calls) and ``torch_out_baseline``; a new activation is benchmarked without an edit here. PReLU and
softmax, which are not elementwise table entries, are the two cases defined in this module.

>>> from fastact import benchmark
>>> [c.label for c in benchmark.cases(["relu6"])]
['relu6', 'relu6_backward', 'relu6(out=)']
>>> benchmark.size_label(10**5), benchmark.format_ratio(1.234), benchmark.format_ratio(None)
('1e5', '1.23x', '-')

A run from Python, and its tables::

    rows = benchmark.run(sizes=[10**7], repeat=5, only=["gelu"])
    print(benchmark.format_table(rows))
    benchmark.write_markdown("out.md", rows)
"""

import argparse
import functools
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from .table import ENTRIES

__all__ = ["DEFAULT_SIZES", "BYTES_PER_ELEMENT", "time_pair", "median_time", "load_torch",
           "load_torchvision_models", "machine",
           "Case", "cases", "inputs", "copy_fn", "warm_up", "run", "serial_parallel_times", "startup",
           "size_label", "format_ratio", "format_table", "markdown_table", "write_markdown",
           "add_arguments", "main"]

DEFAULT_SIZES = (10**3, 10**5, 10**7)
#: bytes moved per float32 element: read x (and dy), write y (dx)
BYTES_PER_ELEMENT = {"fwd": 8, "bwd": 12}

# The two benchmarked functions that are not elementwise table entries, with their baselines in the
# table's notation (NumPy expressions of x, dy, y; w the PReLU slopes with shape (C, 1); for
# softmax_backward y is the forward's output). Their PyTorch calls are in Case._torch_fn.
_NON_TABLE = {
    "prelu": {"numpy": "np.where(x > 0, x, w * x)",
              "numpy_backward": "(np.where(x > 0, dy, w * dy), (dy * np.minimum(x, 0)).sum(axis=(0, 2)))"},
    "softmax": {"numpy": "(e := np.exp(x - x.max(-1, keepdims=True))) / e.sum(-1, keepdims=True)",
                "numpy_backward": "y * (dy - (dy * y).sum(-1, keepdims=True))"},
}


# ------------------------------------------------------------------------------------------- timing

def time_pair(fn, number=1):
    """Seconds per call of ``fn``, measured as the second of two back-to-back runs.

    Parameters
    ----------
    fn : callable
        Called with no arguments.
    number : int, optional
        Calls timed together (after the one untimed call), so that calls of a few microseconds are not
        dominated by the timer's resolution.

    Returns
    -------
    float
        Seconds per timed call.

    Notes
    -----
    The untimed first call lets the thread pool of whatever ran before settle (OpenBLAS spins ~70-100
    ms after a GEMM, PyTorch's OpenMP pool after each parallel region) and wakes ``fn``'s own (Numba's
    TBB workers), so that ``fn`` is charged for its own work only; see the module docstring.

    Examples
    --------
    >>> t = time_pair(lambda: sum(range(100)), number=10)
    >>> 0 < t < 1
    True
    """
    fn()
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def median_time(fns, repeat=7, *, min_sample=2e-3, budget=None):
    """Median seconds per call of each function of ``fns``, sampled round-robin with :func:`time_pair`.

    Parameters
    ----------
    fns : dict of str to callable
        The implementations to compare, each called with no arguments.
    repeat : int, optional
        Samples per implementation (the median is taken over them).
    min_sample : float, optional
        Seconds a sample should at least last: calls faster than that are timed ``number`` at a time.
    budget : float or None, optional
        Seconds one measurement may take: fewer samples (at least 3) when ``repeat`` rounds would take
        longer. None: always ``repeat``.

    Returns
    -------
    dict of str to float
        Median seconds per call, by the keys of ``fns``.

    Notes
    -----
    Each function is called once first (JIT compilation or cache load, page faults of fresh buffers,
    allocator warm-up) and timed once to choose ``number``; neither counts. Samples are interleaved
    (a, b, c, a, b, c, ...) so that a burst of noise from other processes hits every implementation.

    Examples
    --------
    >>> t = median_time({"sum": lambda: sum(range(100)), "max": lambda: max(range(100))}, repeat=3)
    >>> sorted(t), all(v > 0 for v in t.values())
    (['max', 'sum'], True)
    """
    for f in fns.values():
        f()
    single = {k: max(time_pair(f), 1e-9) for k, f in fns.items()}
    number = {k: max(1, int(min_sample / s)) for k, s in single.items()}
    rounds = repeat
    if budget is not None:
        per_round = sum((number[k] + 1) * s for k, s in single.items())
        rounds = max(3, min(repeat, int(budget / per_round)))
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            samples[k].append(time_pair(f, number[k]))
    return {k: statistics.median(v) for k, v in samples.items()}


# ------------------------------------------------------------------------------------------- peers

def load_torch(num_threads=None):
    """PyTorch, if it is installed, for the optional comparisons.

    Parameters
    ----------
    num_threads : int or None, optional
        Passed to ``torch.set_num_threads`` (the layer and training-step reports use the machine's
        2 cores); None leaves PyTorch's default.

    Returns
    -------
    module or None
        The ``torch`` module, or None when it cannot be imported (every benchmark then omits PyTorch).

    Examples
    --------
    >>> torch = load_torch()
    >>> torch is None or hasattr(torch, "from_numpy")
    True
    """
    try:
        import torch
    except ImportError:
        return None
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    return torch


def load_torchvision_models():
    """torchvision's model definitions (``resnet18``, ``resnet34``, ``mobilenet_v2``,
    ``mobilenet_v3_small``, ``mobilenet_v3_large``) as a namespace, or None without PyTorch or
    torchvision: the peers of fastact's networks in the benchmarks and tests.

    torchvision's package does not import with a CPU build of PyTorch that lacks its compiled ops
    (``operator torchvision::nms does not exist``), but its model definitions are pure Python:
    ``torchvision``, ``torchvision.models`` and ``torchvision.ops`` are registered as bare packages
    over its files (when torchvision is not imported already) and the three model modules imported
    from them. Install it with ``pip install --no-deps torchvision``; fastact never needs it.
    """
    import importlib
    import importlib.util
    import types
    if load_torch() is None:
        return None
    if "torchvision" not in sys.modules:
        spec = importlib.util.find_spec("torchvision")
        if spec is None or spec.origin is None:
            return None
        root = os.path.dirname(spec.origin)
        for name, sub in (("torchvision", ""), ("torchvision.models", "models"), ("torchvision.ops", "ops")):
            pkg = types.ModuleType(name)
            pkg.__path__ = [os.path.join(root, sub)]
            sys.modules[name] = pkg
    try:
        mods = [importlib.import_module(f"torchvision.models.{m}") for m in ("resnet", "mobilenetv2", "mobilenetv3")]
    except Exception:  # noqa: BLE001 -- another torchvision whose model files need its compiled ops
        return None
    names = ("resnet18", "resnet34", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")
    return types.SimpleNamespace(**{n: getattr(m, n) for m in mods for n in names if hasattr(m, n)})


def _cpu():
    """(model name, the flags among avx2/avx512f/fma, memory) from /proc, or what platform knows."""
    cpu, flags, mem = platform.processor() or "unknown", [], "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    flags = [f for f in ("avx2", "avx512f", "fma") if f in have]
                    break
        with open("/proc/meminfo") as fh:
            mem = f"{int(fh.readline().split()[1]) / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return cpu, flags, mem


def _blas():
    """NumPy's BLAS as threadpoolctl reports it: library, version, kernel architecture, threads."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed)"
    libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    if not libs:
        return "unknown"
    return "; ".join(f"{i.get('internal_api')} {i.get('version') or ''} ({i.get('architecture') or '?'} "
                     f"kernels, {i.get('num_threads')} threads)".replace("  ", " ") for i in libs)


def machine():
    """This machine and the software measured, as (label, value) pairs for a report's header.

    Returns
    -------
    list of (str, str)
        CPU model with the SIMD flags that matter here (avx2, avx512f, fma), cores, memory, versions,
        NumPy's BLAS and the kernels it picked (OpenBLAS's SkylakeX kernels run SGEMM ~1.9x faster
        than its Haswell ones on a Zen 5), Numba's threading layer and threads, fastact's parallel
        thresholds, and PyTorch's version and threads when it is installed.

    Examples
    --------
    >>> rows = dict(machine())
    >>> "cpu" in rows and "BLAS" in rows and "threading layer" in rows
    True
    """
    import numba

    from . import __version__, system
    cpu, flags, mem = _cpu()
    rows = [("cpu", f"{cpu} ({', '.join(flags)})" if flags else cpu), ("cores", str(os.cpu_count())),
            ("memory", mem), ("python", platform.python_version()), ("numpy", np.__version__),
            ("BLAS", _blas()), ("numba", numba.__version__), ("fastact", __version__),
            ("threading layer", system.threading_layer()), ("numba threads", str(numba.get_num_threads())),
            ("parallel threshold", system.info()["parallel threshold"])]
    torch = load_torch()
    if torch is not None:
        rows.append(("torch", f"{torch.__version__} ({torch.get_num_threads()} threads)"))
    return rows


# ------------------------------------------------------------------------------------------- cases

def _numpy_fn(expr):
    import scipy
    import scipy.special  # noqa: F401  (the GELU baselines use scipy.special.erfc)
    return eval(f"lambda x, dy, y, w: {expr}", {"np": np, "scipy": scipy})


def _torch_expr(torch, expr):
    return eval(f"lambda x, dy, y: {expr}",
                {"torch": torch, "F": torch.nn.functional, "aten": torch.ops.aten})


@functools.lru_cache(maxsize=2)
def inputs(n, seed=0):
    """(x, dy): n float32 values each, x ~ N(0, 3^2) so that every branch of every kink is taken.

    The arrays are shared between cases and read-only.
    """
    rng = np.random.default_rng(seed)
    x = (3.0 * rng.standard_normal(n)).astype(np.float32)
    dy = rng.standard_normal(n).astype(np.float32)
    x.flags.writeable = dy.flags.writeable = False
    return x, dy


@dataclass(frozen=True)
class Case:
    """One benchmarked function: activation ``name``, ``direction`` 'fwd' or 'bwd', ``out`` into a
    preallocated array (forward only)."""
    name: str
    direction: str
    out: bool = False

    @property
    def label(self):
        """``relu``, ``relu_backward`` or ``relu(out=)``: the function's name in the tables."""
        return self.name + ("_backward" if self.direction == "bwd" else "") + ("(out=)" if self.out else "")

    @property
    def transcendental(self):
        return self.name == "softmax" or (self.name in ENTRIES and ENTRIES[self.name].transcendental)

    def nbytes(self, n):
        """Bytes an ideal implementation moves on n float32 values (8n forward, 12n backward)."""
        return BYTES_PER_ELEMENT[self.direction] * n

    def numpy_expr(self):
        """The NumPy baseline, an expression of x, dy, y (and w for PReLU)."""
        if self.name in _NON_TABLE:
            return _NON_TABLE[self.name]["numpy_backward" if self.direction == "bwd" else "numpy"]
        act = ENTRIES[self.name]
        if self.out:
            return act.numpy_out_baseline
        return act.numpy_backward_baseline if self.direction == "bwd" else act.numpy_baseline

    def torch_expr(self):
        """The PyTorch baseline of a table activation (expression of x, dy, y), or '' when it has none."""
        act = ENTRIES[self.name]
        if self.out:
            return act.torch_out_baseline
        if self.direction == "bwd":
            return act.torch_backward_baseline
        return act.torch_baseline or (f"F.{act.torch_name}(x)" if act.torch_name else "")

    def setup(self, n, libs=("fastact", "numpy", "torch")):
        """{'fastact': fn, 'numpy': fn, 'torch': fn}: zero-argument callables doing the work once on n
        float32 values ('torch' only when PyTorch imports and has a baseline), for the libraries in
        ``libs`` (a library left out is not imported or run). Nothing is compiled or timed here (the
        forward output a softmax backward takes is computed by NumPy)."""
        x, dy = inputs(n)
        w = None
        if self.name == "prelu":  # NCHW-like (10, 10, n/100), one slope per channel
            shape = (10, 10, n // 100) if n % 100 == 0 else (1, 1, n)
            x, dy = x[:math.prod(shape)].reshape(shape), dy[:math.prod(shape)].reshape(shape)
            w = np.linspace(0.05, 0.5, shape[1], dtype=np.float32)
        elif self.name == "softmax":  # rows of 1000 logits
            x, dy = (x.reshape(-1, 1000), dy.reshape(-1, 1000)) if n % 1000 == 0 else (x[None], dy[None])
        y = np.empty_like(x)
        if self.name == "softmax" and self.direction == "bwd":  # the backward takes the forward's output
            e = np.exp(x - x.max(axis=-1, keepdims=True))
            y = e / e.sum(axis=-1, keepdims=True)
        fns = {}
        if "fastact" in libs:
            fns["fastact"] = self._fastact_fn(x, dy, y, w)
        if "numpy" in libs:
            f_np = _numpy_fn(self.numpy_expr())
            w_np = None if w is None else w[:, None]
            fns["numpy"] = lambda: f_np(x, dy, y, w_np)
        torch = load_torch() if "torch" in libs else None
        if torch is not None:
            fn = self._torch_fn(torch, x, dy, w)
            if fn is not None:
                fns["torch"] = fn
        return fns

    def _fastact_fn(self, x, dy, y, w):
        import fastact as fa
        if self.direction == "fwd":
            f = getattr(fa, self.name)
            if self.out:
                return lambda: f(x, out=y)
            if w is not None:
                return lambda: f(x, w)
            return lambda: f(x)
        b = getattr(fa, self.name + "_backward")
        if w is not None:
            return lambda: b(dy, x, w)
        if self.name == "softmax":
            return lambda: b(dy, y)
        return lambda: b(dy, x)

    def _torch_fn(self, torch, x, dy, w):
        t, g = torch.from_numpy(x.copy()), torch.from_numpy(dy.copy())
        if self.name == "prelu":
            tw = torch.from_numpy(w)
            if self.direction == "fwd":
                return lambda: torch.nn.functional.prelu(t, tw)
            kb, tw2 = torch.ops.aten._prelu_kernel_backward, tw.reshape(-1, 1)

            def prelu_bwd():
                dx, dw = kb(g, t, tw2)
                return dx, dw.sum((0, 2))
            return prelu_bwd
        if self.name == "softmax":
            if self.direction == "fwd":
                return lambda: torch.softmax(t, -1)
            ty = torch.softmax(t, -1)
            return lambda: torch.ops.aten._softmax_backward_data(g, ty, -1, torch.float32)
        expr = self.torch_expr()
        if not expr:
            return None
        f = _torch_expr(torch, expr)
        if self.out:
            o = torch.from_numpy(np.empty_like(x))
            return lambda: f(t, None, o)
        if self.direction == "fwd":
            return lambda: f(t, None, None)
        ty = _torch_expr(torch, Case(self.name, "fwd").torch_expr())(t, None, None)
        return lambda: f(t, g, ty)


def cases(only=None):
    """Every benchmarked case, in table order: forward, backward, then forward with ``out=`` for the
    activations whose table entry has a ``numpy_out_baseline``; then PReLU and softmax.

    Parameters
    ----------
    only : list of str or None, optional
        Activation names or aliases to keep (default: all).

    Returns
    -------
    list of Case
    """
    names = list(ENTRIES) + list(_NON_TABLE)
    if only:
        from .table import get
        wanted = {n if n in _NON_TABLE else get(n).name for n in only}
        names = [n for n in names if n in wanted]
    out = []
    for n in names:
        out.append(Case(n, "fwd"))
        out.append(Case(n, "bwd"))
        if n in ENTRIES and ENTRIES[n].numpy_out_baseline:
            out.append(Case(n, "fwd", out=True))
    return out


def copy_fn(n):
    """The bandwidth floor: a zero-argument callable doing ``np.copyto(y, x)`` over n float32 values
    (8n bytes)."""
    x, _ = inputs(n)
    y = np.empty_like(x)
    return lambda: np.copyto(y, x)


def warm_up(case_list, sizes):
    """Compile (or load from the cache) every fastact kernel the run will call; returns seconds taken.

    The smallest size and the smallest from each parallel threshold on (``fastact.config``) are
    probed: the serial and the parallel loops of every kind.
    """
    from . import config
    t0 = time.perf_counter()
    cuts = (config.PARALLEL_MIN_SIZE, config.PARALLEL_MIN_SIZE_BACKWARD,
            config.PARALLEL_MIN_SIZE_TRANSCENDENTAL)
    points = {min(sizes)} | {min(s for s in sizes if s >= c) for c in cuts if max(sizes) >= c}
    for n in sorted(points):
        for c in case_list:
            c.setup(n)["fastact"]()
    return time.perf_counter() - t0


def run(sizes=None, repeat=7, only=None, progress=None, separate=False, peer_only=False):
    """Measure every case at every size.

    Parameters
    ----------
    sizes : list of int, optional
        Numbers of float32 values (default :data:`DEFAULT_SIZES`).
    repeat : int, optional
        Samples per median (fewer for calls that would take over a second in all, at least 3).
    only : list of str, optional
        Activation names to run (default: all).
    progress : callable, optional
        Called with each row as it is measured.
    separate : bool, optional
        Measure PyTorch in a process of its own (:func:`_alone`), where no fastact thread ever ran,
        instead of interleaved with fastact and NumPy in this one.
    peer_only : bool, optional
        Measure PyTorch alone and return ``{"case", "size", "t_torch"}`` rows (``--separate``'s child).

    Returns
    -------
    list of dict
        One row per case and size: times (``t_fastact``, ``t_numpy``, ``t_torch``), GB/s, ratios
        (``ratio_numpy`` = NumPy time / fastact time; above 1 fastact is faster; ``ratio_torch`` None
        without PyTorch) and ``pct_copy``, fastact's GB/s as a share of the copy bandwidth measured
        before and after the size's cases.
    """
    sizes = list(sizes or DEFAULT_SIZES)
    case_list = cases(only)
    if peer_only:
        return [{"case": c.label, "size": n, "t_torch": median_time(fns, repeat, budget=1.0)["torch"]}
                for n in sizes for c in case_list if (fns := c.setup(n, libs=("torch",)))]
    libs = ("fastact", "numpy") if separate else ("fastact", "numpy", "torch")
    peer = {}
    if separate and load_torch() is not None:
        peer = {(r["case"], r["size"]): r["t_torch"] for r in _alone("elementwise", repeat, only, sizes)}
    rows = []
    for n in sizes:
        copy = copy_fn(n)
        copy_times = [median_time({"copy": copy}, 2 * repeat, budget=1.0)["copy"]]
        first_gbps = 8 * n / copy_times[0] / 1e9  # provisional, for progress lines
        for c in case_list:
            t = median_time(c.setup(n, libs), repeat, budget=1.0)
            tf, tn, tt = t["fastact"], t["numpy"], t.get("torch", peer.get((c.label, n)))
            rows.append({
                "case": c.label, "name": c.name, "direction": c.direction, "out": c.out, "size": n,
                "transcendental": c.transcendental, "bytes": c.nbytes(n),
                "t_fastact": tf, "t_numpy": tn, "t_torch": tt,
                "gbps_fastact": c.nbytes(n) / tf / 1e9, "gbps_numpy": c.nbytes(n) / tn / 1e9,
                "gbps_torch": None if tt is None else c.nbytes(n) / tt / 1e9,
                "ratio_numpy": tn / tf, "ratio_torch": None if tt is None else tt / tf,
                "gbps_copy": first_gbps, "pct_copy": 100 * c.nbytes(n) / tf / 1e9 / first_gbps,
                "torch_process": "own" if separate else "same",
            })
            if progress:
                progress(rows[-1])
        copy_times.append(median_time({"copy": copy}, 2 * repeat, budget=1.0)["copy"])
        copy_gbps = 8 * n / statistics.median(copy_times) / 1e9
        for r in rows:
            if r["size"] == n:
                r["gbps_copy"] = copy_gbps
                r["pct_copy"] = 100 * r["gbps_fastact"] / copy_gbps
    return rows


def serial_parallel_times(name, sizes, repeat=15, backward=False, seed=0):
    """Seconds of the compiled serial and parallel loops of one activation, without the Python driver.

    This is the measurement behind ``fastact.config.PARALLEL_MIN_SIZE`` and
    ``PARALLEL_MIN_SIZE_TRANSCENDENTAL`` (``bench/threshold.py``): where the parallel loop, which pays
    a thread pool's fork/join, starts to beat the serial one.

    Parameters
    ----------
    name : str
        Activation name (or alias) of the table; the defaults of its parameters are used.
    sizes : iterable of int
        Numbers of contiguous float32 values.
    repeat : int, optional
        Samples per median; serial and parallel samples are interleaved (:func:`median_time`).
    backward : bool, optional
        Time the backward loop ``dx = dy * f'(x)`` instead of the forward ``y = f(x)``.
    seed : int, optional
        Seed of the random inputs, x ~ N(0, 3^2).

    Returns
    -------
    list of (int, float, float)
        (n, serial seconds, parallel seconds) per size.
    """
    from . import table
    act = table.get(name)
    params = [np.float32(p.to_float(p.default)) for p in act.params]
    if backward:
        params += [np.float32(p.to_float(p.default)) for p in act.backward_params]
    loops = {k: table.loop(act.name, backward=backward, parallel=k == "parallel")
             for k in ("serial", "parallel")}
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        x = (3.0 * rng.standard_normal(n)).astype(np.float32)
        out = np.empty_like(x)
        args = (rng.standard_normal(n).astype(np.float32), x, out) if backward else (x, out)
        t = median_time({k: functools.partial(f, *args, *params) for k, f in loops.items()}, repeat)
        rows.append((n, t["serial"], t["parallel"]))
    return rows


# ------------------------------------------------------------------------------------------ start-up

_STARTUP_SNIPPETS = {
    "import": "import fastact",
    "relu": "import numpy as np, fastact; fastact.relu(np.ones(1000, np.float32))",
}


def _wall(code, env):
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return time.perf_counter() - t0


def startup(repeat=5):
    """Wall time of fresh processes (Python start-up included), medians of ``repeat``.

    Returns
    -------
    dict of str to float
        ``python``: ``python -c pass``, the interpreter alone; ``import``: ``import fastact``;
        ``cold``: import fastact and call relu once on 1000 float32 values, with an empty cache
        directory; ``warm``: the same again with the cache the cold run filled.
    """
    env = dict(os.environ)
    res = {"python": [], "import": [], "cold": [], "warm": []}
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="fastact-startup-") as d:
            env["FASTACT_CACHE_DIR"] = d
            res["python"].append(_wall("pass", env))
            res["import"].append(_wall(_STARTUP_SNIPPETS["import"], env))
            res["cold"].append(_wall(_STARTUP_SNIPPETS["relu"], env))
            res["warm"].append(_wall(_STARTUP_SNIPPETS["relu"], env))
    return {k: statistics.median(v) for k, v in res.items()}


# ------------------------------------------------------------------------------------------- output

def format_ratio(v):
    """``'1.23x'``, or ``'-'`` for None (no peer)."""
    return "-" if v is None else f"{v:.2f}x"


def size_label(n):
    """``'1e5'`` for powers of ten, else the number."""
    e = int(round(math.log10(n))) if n > 0 else 0
    return f"1e{e}" if 10**e == n else str(n)


COLUMNS = ("function", "size", "fastact GB/s", "NumPy GB/s", "vs NumPy", "vs torch", "% of copy")


def _cells(r):
    return (r["case"], size_label(r["size"]), f"{r['gbps_fastact']:.2f}", f"{r['gbps_numpy']:.2f}",
            format_ratio(r["ratio_numpy"]), format_ratio(r["ratio_torch"]), f"{r['pct_copy']:.0f}%")


def format_table(rows):
    """Plain-text table of :func:`run`'s rows, one line per case and size, copy bandwidth per size."""
    cells = [COLUMNS] + [_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = []
    for i, c in enumerate(cells):
        lines.append("  ".join(v.ljust(w) if j == 0 else v.rjust(w)
                               for j, (v, w) in enumerate(zip(c, widths))))
        if i == 0:
            lines.append("-" * len(lines[0]))
    for n in sorted({r["size"] for r in rows}):
        g = next(r["gbps_copy"] for r in rows if r["size"] == n)
        lines.append(f"copy bandwidth (np.copyto, 8n bytes) at {size_label(n)}: {g:.2f} GB/s")
    return "\n".join(lines)


def markdown_table(rows):
    """The same table in Markdown, as in docs/performance.md (``fastact.plots`` reads it back)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        c = _cells(r)
        lines.append("| " + " | ".join((f"`{c[0]}`",) + c[1:]) + " |")
    return "\n".join(lines)


def write_markdown(path, rows, startup_times=None, layer_rows=None, step_rows=None):
    """Write the machine description, one Markdown table per size, the layer ops' table and the
    start-up times to ``path``: the ``activations.md`` of a ``bench/results/<date>/`` directory."""
    with open(path, "w") as fh:
        fh.write("| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in machine()))
        fh.write(f"\ndate: {time.strftime('%Y-%m-%d %H:%M')}\n")
        if any(r.get("torch_process") == "own" for r in rows):
            fh.write("\nPyTorch measured in a process of its own (--separate)\n")
        for n in sorted({r["size"] for r in rows}):
            part = [r for r in rows if r["size"] == n]
            fh.write(f"\n### {size_label(n)} float32 values (copy: {part[0]['gbps_copy']:.2f} GB/s)\n\n")
            fh.write(markdown_table(part) + "\n")
        if layer_rows:
            fh.write("\n### Layer ops, float32\n\n" + layers_markdown(layer_rows) + "\n")
        if step_rows:
            fh.write(f"\n### One SGD step, batch {STEP_BATCH}, float32\n\n" + step_markdown(step_rows) + "\n")
        if startup_times:
            fh.write("\n| start-up | median s |\n|---|---|\n" +
                     "".join(f"| {k} | {v:.2f} |\n" for k, v in startup_times.items()))


# ------------------------------------------------------------------------------------------ layers

def layer_fns(op, case, torch=None, dtype=np.float32):
    """The callables the layer benchmarks time for one case of a layer op (``fastact.ops``): without
    ``torch``, fastact's ``forward``, ``train`` (the training forward, keeping what the backward needs,
    then the backward) and ``backward``; with ``torch``, PyTorch's ``torch forward`` (no autograd) and ``torch train`` (forward
    + autograd backward), and nothing of fastact's (no fastact kernel runs)."""
    from . import ops
    arrays = ops.make_inputs(op, case, dtype)
    fns = {}
    if torch is None:
        y, saved = op.train_forward(arrays, case.params)
        dy = np.ones_like(y) if np.ndim(y) else 1.0

        def train():
            return op.backward(dy, arrays, case.params, op.train_forward(arrays, case.params)[1])

        fns = {"forward": lambda: op.forward(arrays, case.params), "train": train,
               "backward": lambda: op.backward(dy, arrays, case.params, saved)}
    if torch is not None:
        t = {k: torch.from_numpy(v) for k, v in arrays.items()}
        grads = [k for k in op.grads if k in t]
        for k in grads:
            t[k].requires_grad_(True)

        def torch_forward():
            with torch.no_grad():
                return op.torch(torch, t, case.params)

        def torch_train():
            out = op.torch(torch, t, case.params)
            out.backward(torch.ones_like(out))
            for k in grads:
                t[k].grad = None

        fns.update({"torch forward": torch_forward, "torch train": torch_train})
    return fns


def _alone(suite, repeat, only, sizes=()):
    """PyTorch's rows of ``suite`` measured in a fresh process of its own (``--peer-only``), where no
    fastact thread has ever run: each library alone in its process."""
    import json
    cmd = [sys.executable, "-m", "fastact", "bench", "--suite", suite, "--repeat", str(repeat), "--peer-only"]
    for n in sizes:
        cmd += ["--size", str(n)]
    if only:
        cmd += ["--only", *only]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"the PyTorch process of the {suite} suite failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _libs(torch, peer_only, separate):
    if peer_only:
        return ("torch",)
    return ("fastact", "torch") if torch is not None and not separate else ("fastact",)


def run_layers(repeat=7, only=None, progress=None, separate=False, peer_only=False):
    """Every benchmark case of the layer-op table, float32: fastact and PyTorch (when installed),
    forward and training (forward + backward). All of fastact's cases are measured first, then all of
    PyTorch's: PyTorch's OpenMP threads spin for a while after each of its calls and would slow the
    fastact call that follows (measured: 2x on the convolutions), which interleaving would time. With
    ``separate``, PyTorch runs in a process of its own (:func:`_alone`). Returns one row per case."""
    from . import ops
    torch = load_torch(2)
    todo = [(op, case) for op in ops.OPS.values() if not only or op.name in only for case in op.bench]
    rows = [{"op": op.name, "case": case.name} for op, case in todo]
    for lib in _libs(torch, peer_only, separate):
        for row, (op, case) in zip(rows, todo):
            fns = layer_fns(op, case, torch if lib == "torch" else None)
            for kind in ("forward", "train"):
                fn = fns[kind if lib == "fastact" else f"torch {kind}"]
                fn()  # compilation or the cache load, first touch of the buffers
                row[f"{kind}_{lib}_ms"] = 1e3 * median_time({lib: fn}, repeat, budget=2.0)[lib]
    if peer_only:
        return rows
    if separate and torch is not None:
        for row, peer in zip(rows, _alone("layers", repeat, only)):
            row.update({k: v for k, v in peer.items() if k.endswith("_torch_ms")})
    for row in rows:
        row["torch_process"] = "own" if separate else "same"
        for kind in ("forward", "train"):
            t = row.get(f"{kind}_torch_ms")
            row.setdefault(f"{kind}_torch_ms", None)
            row[f"{kind}_ratio"] = None if t is None else t / row[f"{kind}_fastact_ms"]
        if progress:
            progress(row)
    return rows


#: the nets of the step benchmarks: VGG-style (per width two conv3x3 + ReLU and a 2x2 max-pool, then
#: Linear + ReLU to 128 and Linear to 10) and the residual NetResDeep (32 channels, 10 blocks, 2 classes)
STEP_NETS = {
    "digits 1x8x8": dict(cfg=[16, 16, "M", 32, 32, "M"], in_channels=1, input_size=8),
    "mnist 1x28x28": dict(cfg=[16, 16, "M", 32, 32, "M", 64, 64, "M"], in_channels=1, input_size=28),
    "cifar 3x32x32": dict(cfg=[16, 16, "M", 32, 32, "M", 64, 64, "M"], in_channels=3, input_size=32),
    "net_res_deep 3x32x32": dict(model="net_res_deep", n_chans1=32, n_blocks=10, num_classes=2,
                                 in_channels=3, input_size=32),
}
STEP_BATCH = 64


def step_batch(spec, seed=0):
    """The fixed float32 batch (images, labels) of a :data:`STEP_NETS` spec."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((STEP_BATCH, spec["in_channels"], spec["input_size"], spec["input_size"]))
    return x.astype(np.float32), rng.integers(0, spec.get("num_classes", 10), STEP_BATCH)


def step_model(spec, lib=None):
    """The net of a :data:`STEP_NETS` spec (seed 0, float32), built by ``lib`` (fastact, or another
    checkout's package, to compare two versions in one process)."""
    if lib is None:
        import fastact as lib
    if spec.get("model") == "net_res_deep":
        return lib.models.net_res_deep(spec["n_chans1"], spec["n_blocks"], num_classes=spec["num_classes"])
    return lib.models.vgg(spec["cfg"], in_channels=spec["in_channels"], input_size=spec["input_size"],
                          hidden=(128,), num_classes=10, seed=0)


def step_fns(spec, torch=None, lib=None):
    """Zero-argument callables of one SGD step (forward, cross-entropy, backward, ``SGD(lr=0.01,
    momentum=0.9).step()``) on the spec's fixed batch: ``"fastact"``, and with ``torch`` ``"torch"``,
    the same net with the same weights (``fastact.models.to_torch``)."""
    if lib is None:
        import fastact as lib
    model = step_model(spec, lib)
    x, y = step_batch(spec)
    opt = lib.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = lib.nn.CrossEntropyLoss()

    def step():
        loss_fn(model(x), y)
        opt.zero_grad()
        model.backward(loss_fn.backward(), need_input_grad=False)
        opt.step()

    fns = {"fastact": step}
    if torch is not None:  # the same weights in PyTorch (the fastact step above is never called)
        from . import models
        tmodel = models.to_torch(step_model(spec), torch)
        topt = torch.optim.SGD(tmodel.parameters(), lr=0.01, momentum=0.9)
        tloss = torch.nn.CrossEntropyLoss()
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def torch_step():
            loss = tloss(tmodel(tx), ty)
            topt.zero_grad()
            loss.backward()
            topt.step()
        fns["torch"] = torch_step
    return fns


def run_step(repeat=7, only=None, progress=None, separate=False, peer_only=False):
    """One SGD step of every :data:`STEP_NETS` net (names starting with one of ``only``), fastact's
    nets first and then PyTorch's, or PyTorch in a process of its own with ``separate`` (as
    :func:`run_layers`); one row per net: ms, images/s, ratio."""
    torch = load_torch(2)
    names = [n for n in STEP_NETS if not only or any(n.startswith(o) for o in only)]
    rows = [{"net": n} for n in names]
    for lib in _libs(torch, peer_only, separate):
        for row in rows:
            fn = step_fns(STEP_NETS[row["net"]], torch if lib == "torch" else None)[lib]
            fn()
            row[f"{lib}_ms"] = 1e3 * median_time({lib: fn}, repeat, budget=5.0)[lib]
    if peer_only:
        return rows
    if separate and torch is not None:
        for row, peer in zip(rows, _alone("step", repeat, only)):
            row["torch_ms"] = peer["torch_ms"]
    for row in rows:
        row["torch_process"] = "own" if separate else "same"
        row.setdefault("torch_ms", None)
        row["images_per_s"] = STEP_BATCH / row["fastact_ms"] * 1e3
        row["ratio"] = None if row["torch_ms"] is None else row["torch_ms"] / row["fastact_ms"]
        if progress:
            progress(row)
    return rows


def step_markdown(rows):
    """:func:`run_step`'s rows as a Markdown table (ratio: PyTorch time / fastact time)."""
    lines = ["| net | fastact ms | PyTorch ms | ratio | fastact images/s |", "|---|---|---|---|---|"]
    for r in rows:
        t = "" if r["torch_ms"] is None else f"{r['torch_ms']:.2f}"
        lines.append(f"| {r['net']} | {r['fastact_ms']:.2f} | {t} | {format_ratio(r['ratio'])} | "
                     f"{r['images_per_s']:,.0f} |")
    return "\n".join(lines) + f"\n\n{_peer_where(rows)}."


LAYER_COLUMNS = ("op", "case", "forward ms", "PyTorch ms", "ratio", "forward + backward ms", "PyTorch ms",
                 "ratio")


def _peer_where(rows):
    """The sentence under a table saying where PyTorch was measured."""
    own = rows and rows[0].get("torch_process") == "own"
    return ("PyTorch measured in a process of its own (--separate)" if own else
            "PyTorch measured after fastact in the same process")


def layers_markdown(rows):
    """:func:`run_layers`'s rows as a Markdown table (ratio: PyTorch time / fastact time)."""
    def ms(v):
        return "" if v is None else f"{v:.3f}"
    lines = ["| " + " | ".join(LAYER_COLUMNS) + " |", "|" + "---|" * len(LAYER_COLUMNS)]
    for r in rows:
        lines.append(f"| `{r['op']}` | {r['case']} | {ms(r['forward_fastact_ms'])} | "
                     f"{ms(r['forward_torch_ms'])} "
                     f"| {format_ratio(r['forward_ratio'])} | {ms(r['train_fastact_ms'])} | "
                     f"{ms(r['train_torch_ms'])} | {format_ratio(r['train_ratio'])} |")
    return "\n".join(lines) + f"\n\n{_peer_where(rows)}."


# ---------------------------------------------------------------------------------------------- CLI

SUITES = ("elementwise", "layers", "step", "startup")


def add_arguments(p):
    """The options of ``python -m fastact bench`` on the argparse parser ``p``."""
    p.add_argument("--suite", choices=SUITES + ("all",), default="elementwise",
                   help="what to measure: the activations on arrays (elementwise, the default), the "
                        "layer ops of fastact.ops at network sizes (layers), one SGD step of the reference "
                        "nets (step), cold and warm start-up (startup), or all of them")
    p.add_argument("--size", type=int, action="append",
                   help="elementwise: array size, repeatable (default: 1e3, 1e5 and 1e7)")
    p.add_argument("--repeat", type=int, default=7, help="timed samples per median (default 7)")
    p.add_argument("--only", nargs="*", metavar="NAME",
                   help="activations (elementwise), layer ops (layers) or nets by the start of their "
                        "name (step) to run (default: all)")
    p.add_argument("--markdown", metavar="FILE",
                   help="also write the results as Markdown tables (what `fastact plot` reads)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON (machine, rows)")
    p.add_argument("--startup", action="store_true", help="also measure cold and warm start-up "
                                                          "(the same as adding the startup suite)")
    p.add_argument("--separate", action="store_true",
                   help="measure PyTorch in a process of its own, where no fastact thread ever ran (each "
                        "library alone), instead of beside fastact in the same process")
    p.add_argument("--peer-only", action="store_true", help=argparse.SUPPRESS)  # --separate's child


def main(args):
    """``python -m fastact bench``: ``args`` holds the options of :func:`add_arguments`; returns 0."""
    if args.peer_only:  # --separate's child: PyTorch's rows of one suite, as one JSON line
        import json
        if args.suite == "elementwise":
            rows = run(args.size or list(DEFAULT_SIZES), args.repeat, args.only or None, peer_only=True)
        else:
            rows = {"layers": run_layers, "step": run_step}[args.suite](args.repeat, args.only or None,
                                                                         peer_only=True)
        print(json.dumps(rows))
        return 0
    suites = SUITES if args.suite == "all" else (args.suite,)
    if args.startup and "startup" not in suites:
        suites = suites + ("startup",)
    only = args.only or None
    for k, v in machine():
        print(f"{k:20s} {v}")
    print("ratios are NumPy (PyTorch) time / fastact time: above 1.00x fastact is faster; medians of "
          "interleaved samples, each the second of two back-to-back calls")
    if load_torch() is None:
        print("PyTorch is not installed: no PyTorch columns")
    result = {"machine": dict(machine()), "date": time.strftime("%Y-%m-%d %H:%M")}
    rows = su = layer_rows = None
    if "elementwise" in suites:
        sizes = args.size or list(DEFAULT_SIZES)
        case_list = cases(only)
        print(f"warm-up (compile or load {len(case_list)} kernels' loops): {warm_up(case_list, sizes):.1f} s")
        rows = run(sizes, args.repeat, only, separate=args.separate)
        print(format_table(rows))
        print("bytes moved per float32 value: forward 8, backward 12; '% of copy' = fastact GB/s / copy GB/s")
        result["elementwise"] = rows
    if "layers" in suites:
        layer_rows = run_layers(args.repeat, only, separate=args.separate)
        print(layers_markdown(layer_rows))
        result["layers"] = layer_rows
    step_rows = None
    if "step" in suites:
        step_rows = run_step(args.repeat, only, separate=args.separate)
        print(step_markdown(step_rows))
        result["step"] = step_rows
    if "startup" in suites:
        su = startup()
        print("start-up (s):", ", ".join(f"{k} {v:.2f}" for k, v in su.items()))
        result["startup"] = su
    if args.markdown:
        write_markdown(args.markdown, rows or [], su, layer_rows, step_rows)
        print(f"wrote {args.markdown}")
    if args.json:
        import json
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1, default=float)
        print(f"wrote {args.json}")
    return 0
