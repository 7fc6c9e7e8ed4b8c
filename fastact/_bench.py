"""Speed of the elementwise activations against NumPy and PyTorch, measured side by side.

``python -m fastact bench`` prints, for every activation's forward and backward at each size, fastact's
and NumPy's throughput, the ratios (NumPy time / fastact time, PyTorch time / fastact time: above 1.00x
fastact is faster) and fastact's throughput as a share of the copy bandwidth measured in the same run.

Napkin math (the floor): an elementwise forward on n float32 values reads x and writes y, 8n bytes; a
backward reads dy and x and writes dx, 12n bytes. No implementation beats ``np.copyto(y, x)`` (8n bytes
streamed), so "% of copy" is how close a kernel is to the memory-bound limit. Transcendental kernels
(GELU, SiLU, ...) are compute-bound on two cores and sit below it.

The machine is noisy, so every figure is a median of repeats, and the implementations are timed
interleaved (fastact, NumPy, PyTorch, fastact, ...) so that a burst of noise hits all of them alike:
compare the ratios of one run, never absolute times across runs.

The same cases drive ``bench/test_activations.py`` (pytest-benchmark) and :func:`markdown_table` (the
tables of ``docs/performance.md``)::

    from fastact import _bench
    rows = _bench.run(sizes=[10**7], repeat=5)
    print(_bench.markdown_table(rows))

``python -m fastact._bench --markdown out.md --startup`` writes those tables and the start-up times.
"""

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

from ._table import ACTIVATIONS

DEFAULT_SIZES = (10**3, 10**5, 10**7)
#: bytes moved per float32 element: read x (and dy), write y (dx)
BYTES_PER_ELEMENT = {"fwd": 8, "bwd": 12}
#: memory-bound activations also benchmarked forward into a preallocated ``out=``
RELU_FAMILY = ("relu", "leaky_relu", "relu6", "hardtanh", "threshold")

# The NumPy formulations a user would write, as expressions of x, dy (and y, the preallocated output or,
# for softmax_backward, the forward's output; w the PReLU slopes with shape (C, 1)). The forwards of the
# table's activations come from ``Activation.numpy_baseline``; the defaults of every parameter are used.
NUMPY_FORWARD = {
    "prelu": "np.where(x > 0, x, w * x)",
    "softmax": "(e := np.exp(x - x.max(-1, keepdims=True))) / e.sum(-1, keepdims=True)",
}
NUMPY_BACKWARD = {
    "relu": "dy * (x > 0)",
    "leaky_relu": "np.where(x > 0, dy, 0.01 * dy)",
    "relu6": "dy * ((x > 0) & (x < 6))",
    "hardtanh": "dy * ((x > -1) & (x < 1))",
    "threshold": "dy * (x > 0)",
    "elu": "np.where(x > 0, dy, dy * np.exp(x))",
    "celu": "np.where(x > 0, dy, dy * np.exp(x))",
    "selu": "dy * np.where(x > 0, 1.0507, 1.0507 * 1.6733 * np.exp(x))",
    "gelu": "dy * (0.5 * scipy.special.erfc(-0.7071067811865476 * x)"
            " + 0.3989422804014327 * x * np.exp(-0.5 * x * x))",
    "silu": "dy * (s := 1 / (1 + np.exp(-x))) * (1 + x * (1 - s))",
    "mish": "dy * ((t := np.tanh(np.log1p(np.exp(x)))) + x * (1 - t * t) / (1 + np.exp(-x)))",
    "hardswish": "dy * np.where(x <= -3, 0, np.where(x <= 3, x / 3 + 0.5, 1))",
    "hardsigmoid": "np.where((x > -3) & (x < 3), dy / 6, 0)",
    "sigmoid": "dy * (s := 1 / (1 + np.exp(-x))) * (1 - s)",
    "tanh": "dy * (1 - (t := np.tanh(x)) * t)",
    "softsign": "dy / (1 + np.abs(x)) ** 2",
    "softplus": "dy / (1 + np.exp(-x))",
    "prelu": "(np.where(x > 0, dy, w * dy), (dy * np.minimum(x, 0)).sum(axis=(0, 2)))",
    "softmax": "y * (dy - (dy * y).sum(-1, keepdims=True))",
}
#: the ReLU family into a preallocated y, as NumPy offers it (one pass where a ufunc exists)
NUMPY_OUT = {
    "relu": "np.maximum(x, 0, out=y)",
    "leaky_relu": "np.maximum(x, 0.01 * x, out=y)",
    "relu6": "np.clip(x, 0, 6, out=y)",
    "hardtanh": "np.clip(x, -1, 1, out=y)",
    "threshold": "np.maximum(x, 0, out=y)",
}


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _torch_forward(torch, name):
    """``f(t)`` through torch.nn.functional with the defaults fastact uses."""
    F = torch.nn.functional
    if name == "threshold":
        return lambda t: F.threshold(t, 0.0, 0.0)
    return getattr(F, ACTIVATIONS[name].torch_name)


def _torch_backward(torch, name):
    """``dx(g, t, y)``: the aten kernel autograd itself calls (no forward re-run, no graph overhead)."""
    a = torch.ops.aten
    return {
        "relu": lambda g, t, y: a.threshold_backward(g, t, 0.0),
        "threshold": lambda g, t, y: a.threshold_backward(g, t, 0.0),
        "leaky_relu": lambda g, t, y: a.leaky_relu_backward(g, t, 0.01, False),
        "relu6": lambda g, t, y: a.hardtanh_backward(g, t, 0.0, 6.0),
        "hardtanh": lambda g, t, y: a.hardtanh_backward(g, t, -1.0, 1.0),
        "elu": lambda g, t, y: a.elu_backward(g, 1.0, 1, 1, False, t),
        "celu": lambda g, t, y: a.elu_backward(g, 1.0, 1, 1.0, False, t),
        "selu": lambda g, t, y: a.elu_backward(g, 1.6732632423543772, 1.0507009873554805, 1, False, t),
        "gelu": lambda g, t, y: a.gelu_backward(g, t),
        "silu": lambda g, t, y: a.silu_backward(g, t),
        "mish": lambda g, t, y: a.mish_backward(g, t),
        "hardswish": lambda g, t, y: a.hardswish_backward(g, t),
        "hardsigmoid": lambda g, t, y: a.hardsigmoid_backward(g, t),
        "sigmoid": lambda g, t, y: a.sigmoid_backward(g, y),
        "tanh": lambda g, t, y: a.tanh_backward(g, y),
        "softsign": lambda g, t, y: g / (1 + t.abs()) ** 2,  # composite in PyTorch too
        "softplus": lambda g, t, y: a.softplus_backward(g, t, 1.0, 20.0),
    }[name]


def _torch_out(torch, name):
    a = torch.ops.aten
    return {
        "relu": lambda t, o: torch.clamp_min(t, 0.0, out=o),
        "leaky_relu": lambda t, o: a.leaky_relu.out(t, 0.01, out=o),
        "relu6": lambda t, o: a.hardtanh.out(t, 0.0, 6.0, out=o),
        "hardtanh": lambda t, o: a.hardtanh.out(t, -1.0, 1.0, out=o),
        "threshold": lambda t, o: a.threshold.out(t, 0.0, 0.0, out=o),
    }[name]


def _numpy_fn(expr):
    import scipy.special  # noqa: F401  (the GELU baselines use scipy.special.erfc)
    import scipy
    return eval(f"lambda x, dy, y, w: {expr}", {"np": np, "scipy": scipy})


@functools.lru_cache(maxsize=2)
def inputs(n, seed=0):
    """(x, dy): n float32 values each, x ~ N(0, 3^2) so that every branch of every kink is taken."""
    rng = np.random.default_rng(seed)
    x = (3.0 * rng.standard_normal(n)).astype(np.float32)
    dy = rng.standard_normal(n).astype(np.float32)
    x.flags.writeable = dy.flags.writeable = False  # shared between cases: nobody may write them
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
        return self.name + ("_backward" if self.direction == "bwd" else "") + ("(out=)" if self.out else "")

    @property
    def transcendental(self):
        return self.name == "softmax" or (self.name in ACTIVATIONS and ACTIVATIONS[self.name].transcendental)

    def nbytes(self, n):
        return BYTES_PER_ELEMENT[self.direction] * n

    def numpy_expr(self):
        if self.out:
            return NUMPY_OUT[self.name]
        if self.direction == "bwd":
            return NUMPY_BACKWARD[self.name]
        return NUMPY_FORWARD.get(self.name) or ACTIVATIONS[self.name].numpy_baseline

    def setup(self, n):
        """{'fastact': fn, 'numpy': fn, 'torch': fn}: zero-argument callables doing the work once on n
        float32 values ('torch' only when PyTorch imports). Nothing is compiled or timed here."""
        import fastact as fa
        x, dy = inputs(n)
        w = None
        if self.name == "prelu":  # NCHW-like (10, 10, n/100), one slope per channel
            shape = (10, 10, n // 100) if n % 100 == 0 else (1, 1, n)
            x, dy = x[:math.prod(shape)].reshape(shape), dy[:math.prod(shape)].reshape(shape)
            w = np.linspace(0.05, 0.5, shape[1], dtype=np.float32)
        elif self.name == "softmax":  # rows of 1000 logits
            x, dy = (x.reshape(-1, 1000), dy.reshape(-1, 1000)) if n % 1000 == 0 else (x[None], dy[None])
        y = np.empty_like(x)
        if self.name == "softmax" and self.direction == "bwd":
            y = fa.softmax(x)  # softmax_backward takes the forward's output
        fns = {}
        if self.direction == "fwd":
            f = getattr(fa, self.name)
            if self.out:
                fns["fastact"] = lambda: f(x, out=y)
            elif w is not None:
                fns["fastact"] = lambda: f(x, w)
            else:
                fns["fastact"] = lambda: f(x)
        else:
            b = getattr(fa, self.name + "_backward")
            if w is not None:
                fns["fastact"] = lambda: b(dy, x, w)
            elif self.name == "softmax":
                fns["fastact"] = lambda: b(dy, y)
            else:
                fns["fastact"] = lambda: b(dy, x)
        f_np = _numpy_fn(self.numpy_expr())
        w_np = None if w is None else w[:, None]
        fns["numpy"] = lambda: f_np(x, dy, y, w_np)
        torch = _torch()
        if torch is not None:
            fns["torch"] = self._torch_fn(torch, x, dy, y, w)
        return fns

    def _torch_fn(self, torch, x, dy, y, w):
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
        if self.out:
            fo, o = _torch_out(torch, self.name), torch.from_numpy(np.empty_like(x))
            return lambda: fo(t, o)
        f = _torch_forward(torch, self.name)
        if self.direction == "fwd":
            return lambda: f(t)
        fb, ty = _torch_backward(torch, self.name), f(t)
        return lambda: fb(g, t, ty)


def cases(only=None):
    """Every benchmarked case, in table order: forward, backward, then forward with out= (ReLU family)."""
    names = list(ACTIVATIONS) + ["prelu", "softmax"]
    if only:
        from ._table import get
        wanted = {n if n in ("prelu", "softmax") else get(n).name for n in only}
        names = [n for n in names if n in wanted]
    out = []
    for n in names:
        out.append(Case(n, "fwd"))
        out.append(Case(n, "bwd"))
        if n in RELU_FAMILY:
            out.append(Case(n, "fwd", out=True))
    return out


def copy_fn(n):
    """The bandwidth floor: ``np.copyto(y, x)`` over n float32 values, 8n bytes."""
    x, _ = inputs(n)
    y = np.empty_like(x)
    return lambda: np.copyto(y, x)


# ------------------------------------------------------------------------------------------- timing

def _time_once(fn, number):
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def time_interleaved(fns, repeat, min_sample=2e-3, max_seconds=1.0):
    """Median seconds per call of each of ``fns`` (a dict), sampled round-robin.

    Each sample runs a function ``number`` times so that a sample lasts ``min_sample`` seconds (calls of
    a few microseconds are otherwise dominated by the timer); expensive functions get fewer repeats (at
    least 3) so that one measurement stays under ``max_seconds``.
    """
    single = {k: _time_once(f, 1) for k, f in fns.items()}  # also the warm-up call
    number = {k: max(1, int(min_sample / max(s, 1e-9))) for k, s in single.items()}
    per_round = sum(max(s, 1e-9) * number[k] for k, s in single.items())
    rounds = max(3, min(repeat, int(max_seconds / per_round)))
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            samples[k].append(_time_once(f, number[k]))
    return {k: statistics.median(v) for k, v in samples.items()}


def machine():
    """(label, value) pairs describing this machine and the software measured."""
    import numba

    from . import __version__, _runtime, config
    cpu = "unknown"
    mem = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as fh:
            kb = int(fh.readline().split()[1])
            mem = f"{kb / 2**20:.0f} GiB"
    except OSError:
        cpu = platform.processor() or cpu
    flags = ""
    try:
        with open("/proc/cpuinfo") as fh:
            txt = fh.read()
        flags = ", ".join(f for f in ("avx2", "fma", "avx512f") if f" {f}" in txt)
    except OSError:
        pass
    rows = [("cpu", f"{cpu} ({flags})" if flags else cpu), ("cores", str(os.cpu_count())),
            ("memory", mem), ("python", platform.python_version()), ("numpy", np.__version__),
            ("numba", numba.__version__), ("fastact", __version__),
            ("threading layer", _runtime.threading_layer()), ("numba threads", str(numba.get_num_threads())),
            ("parallel threshold", f"{config.PARALLEL_MIN_SIZE} elements (transcendental: "
                                   f"{config.PARALLEL_MIN_SIZE_TRANSCENDENTAL})")]
    torch = _torch()
    if torch is not None:
        rows.append(("torch", f"{torch.__version__} ({torch.get_num_threads()} threads)"))
    return rows


def warm_up(case_list, sizes):
    """Compile (or load from the cache) every fastact kernel the run will call; returns seconds taken."""
    from . import config
    t0 = time.perf_counter()
    small = [s for s in sizes if s < config.PARALLEL_MIN_SIZE]
    large = [s for s in sizes if s >= config.PARALLEL_MIN_SIZE]
    probe = ([min(small)] if small else []) + ([min(large)] if large else [])
    for n in probe:  # one size below the threshold and one above: the serial and the parallel loops
        for c in case_list:
            c.setup(n)["fastact"]()
    return time.perf_counter() - t0


def run(sizes=None, repeat=7, only=None, progress=None):
    """Measure every case at every size; returns a list of row dicts (see :func:`format_table`).

    Times are medians of ``repeat`` interleaved samples (fewer for slow calls, at least 3); ratios are
    NumPy (PyTorch) time over fastact time, so above 1 fastact is faster.
    """
    sizes = list(sizes or DEFAULT_SIZES)
    case_list = cases(only)
    rows = []
    for n in sizes:
        copy = copy_fn(n)
        copy_times = [time_interleaved({"copy": copy}, 2 * repeat)["copy"]]
        first_gbps = 8 * n / copy_times[0] / 1e9  # provisional, for progress lines
        for c in case_list:
            fns = c.setup(n)
            t = time_interleaved(fns, repeat)
            tf, tn, tt = t["fastact"], t["numpy"], t.get("torch")
            rows.append({
                "case": c.label, "name": c.name, "direction": c.direction, "out": c.out, "size": n,
                "transcendental": c.transcendental, "bytes": c.nbytes(n),
                "t_fastact": tf, "t_numpy": tn, "t_torch": tt,
                "gbps_fastact": c.nbytes(n) / tf / 1e9, "gbps_numpy": c.nbytes(n) / tn / 1e9,
                "gbps_torch": None if tt is None else c.nbytes(n) / tt / 1e9,
                "ratio_numpy": tn / tf, "ratio_torch": None if tt is None else tt / tf,
                "gbps_copy": first_gbps, "pct_copy": 100 * c.nbytes(n) / tf / 1e9 / first_gbps,
            })
            if progress:
                progress(rows[-1])
        copy_times.append(time_interleaved({"copy": copy}, 2 * repeat)["copy"])  # before and after
        copy_gbps = 8 * n / statistics.median(copy_times) / 1e9
        for r in rows:
            if r["size"] == n:
                r["gbps_copy"] = copy_gbps
                r["pct_copy"] = 100 * r["gbps_fastact"] / copy_gbps
    return rows


# ------------------------------------------------------------------------------------------- output

def _x(v):
    return "-" if v is None else f"{v:.2f}x"


def size_label(n):
    e = int(round(math.log10(n))) if n > 0 else 0
    return f"1e{e}" if 10**e == n else str(n)


COLUMNS = ("function", "size", "fastact GB/s", "NumPy GB/s", "vs NumPy", "vs torch", "% of copy")


def _cells(r):
    return (r["case"], size_label(r["size"]), f"{r['gbps_fastact']:.2f}", f"{r['gbps_numpy']:.2f}",
            _x(r["ratio_numpy"]), _x(r["ratio_torch"]), f"{r['pct_copy']:.0f}%")


def format_table(rows):
    """Plain-text table of :func:`run`'s rows, one line per case and size, copy bandwidth per size."""
    cells = [COLUMNS] + [_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = []
    for i, c in enumerate(cells):
        lines.append("  ".join(v.ljust(w) if j == 0 else v.rjust(w) for j, (v, w) in enumerate(zip(c, widths))))
        if i == 0:
            lines.append("-" * len(lines[0]))
    for n in sorted({r["size"] for r in rows}):
        g = next(r["gbps_copy"] for r in rows if r["size"] == n)
        lines.append(f"copy bandwidth (np.copyto, 8n bytes) at {size_label(n)}: {g:.2f} GB/s")
    return "\n".join(lines)


def markdown_table(rows):
    """The same table in Markdown (docs/performance.md)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        c = _cells(r)
        lines.append("| " + " | ".join((f"`{c[0]}`",) + c[1:]) + " |")
    return "\n".join(lines)


def main(args):
    """``python -m fastact bench``: args has .size (list or None), .repeat (int), .only (list or None)."""
    sizes = args.size or list(DEFAULT_SIZES)
    only = args.only or None
    for k, v in machine():
        print(f"{k:20s} {v}")
    torch = _torch()
    case_list = cases(only)
    print(f"warm-up (compile or load {len(case_list)} kernels' loops): "
          f"{warm_up(case_list, sizes):.1f} s")
    print("ratios are NumPy (PyTorch) time / fastact time: above 1.00x fastact is faster; "
          "medians of interleaved repeats")
    if torch is None:
        print("PyTorch is not installed: no 'vs torch' column")
    rows = run(sizes, args.repeat, only)
    print(format_table(rows))
    print("bytes moved per float32 value: forward 8, backward 12; '% of copy' = fastact GB/s / copy GB/s")
    return 0


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
    """Wall time of fresh processes (Python start-up included), medians of ``repeat``:

    * ``python``: ``python -c pass``, the interpreter alone;
    * ``import``: ``import fastact``;
    * ``cold``: import fastact and call relu once on 1000 float32 values, with an empty cache directory;
    * ``warm``: the same again with the cache the cold run filled.
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


def _cli(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="python -m fastact._bench", description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, action="append")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--only", nargs="*")
    p.add_argument("--markdown", help="also write the results as Markdown tables to this file")
    p.add_argument("--startup", action="store_true", help="also measure cold and warm start-up")
    a = p.parse_args(argv)
    sizes = a.size or list(DEFAULT_SIZES)
    case_list = cases(a.only)
    for k, v in machine():
        print(f"{k:20s} {v}")
    print(f"warm-up: {warm_up(case_list, sizes):.1f} s")
    rows = run(sizes, a.repeat, a.only, progress=lambda r: print(" ", *_cells(r), flush=True))
    print(format_table(rows))
    su = startup() if a.startup else None
    if su:
        print("start-up (s):", ", ".join(f"{k} {v:.2f}" for k, v in su.items()))
    if a.markdown:
        with open(a.markdown, "w") as fh:
            fh.write("| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in machine()))
            fh.write(f"\ndate: {time.strftime('%Y-%m-%d %H:%M')}\n")
            for n in sizes:
                part = [r for r in rows if r["size"] == n]
                fh.write(f"\n### {size_label(n)} float32 values (copy: {part[0]['gbps_copy']:.2f} GB/s)\n\n")
                fh.write(markdown_table(part) + "\n")
            if su:
                fh.write("\n| start-up | median s |\n|---|---|\n" + "".join(f"| {k} | {v:.2f} |\n"
                                                                      for k, v in su.items()))
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
