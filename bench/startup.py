"""First run against later runs: ``python -m fastact train`` cold and warm, ``import fastact``, and the same
job in PyTorch, each in its own process, interleaved; then where the compile time goes.

    python bench/startup.py [--repeat 3] [--epochs 12] [--out bench/results/DATE/startup.md]

Per repeat, in this order, each a fresh Python process timed from start to exit (wall seconds, and peak
resident memory):

* ``import numpy, numba`` and ``import fastact`` (warm cache): the import floor and fastact's import;
* ``python -m fastact train --quiet`` with an empty ``FASTACT_CACHE_DIR`` (cold: every kernel compiles),
  then again with that cache (warm);
* ``python bench/train_torch.py --quiet``: the same job in PyTorch (skipped without PyTorch).

Then, in two more processes, the compile cost of the default job (``fastact.train.warm_up`` on the
default configuration): every kernel it compiles with its seconds, grouped by family, and the split of
those seconds between Numba's passes (type inference, which includes compiling the kernel's callees,
and lowering, which is mostly LLVM's optimisation and code generation) from Numba's own per-kernel
metadata; and, warm, how long loading the kernels from the cache takes (``Cache.load_overload``,
the index lookups and the unpickling of the machine code).

Medians over the repeats; the machine (CPU model, flags, BLAS kernel) heads the report.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Runs a command in this interpreter and reports its peak memory on exit (also through sys.exit).
_LAUNCH = ("import atexit, resource, runpy, sys\n"
           "atexit.register(lambda: sys.stderr.write('MAXRSS %d\\n' % "
           "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
           "mode, target, *rest = sys.argv[1:]\n"
           "sys.argv = [target, *rest]\n"
           "if mode == '-c': exec(target)\n"
           "elif mode == '-m': runpy.run_module(target, run_name='__main__', alter_sys=True)\n"
           "else: runpy.run_path(target, run_name='__main__')\n")


def run(mode, target, *args, env=None, cwd=None):
    """(wall seconds, peak MB) of one process running ``python <mode> <target> args`` (mode ``-c``,
    ``-m``, or ``path`` for a script)."""
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _LAUNCH, mode, target, *args], env=env, cwd=cwd,
                       capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{mode} {target} {' '.join(args)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    rss = [int(line.split()[1]) for line in p.stderr.splitlines() if line.startswith("MAXRSS ")]
    return wall, (rss[-1] / 1024 if rss else float("nan"))


def has_torch():
    import importlib.util
    return importlib.util.find_spec("torch") is not None


FAMILIES = (("conv_fused", "convolution (fused im2col + GEMM + epilogue)"), ("_max_pool", "max-pool"),
            ("_avg_pool", "avg-pool"), ("linear", "linear + epilogue"), ("_ce_", "cross-entropy"),
            ("row_", "cross-entropy"), ("_adam", "optimizer"), ("_sgd", "optimizer"),
            ("batch_norm", "batch norm"), ("_bn", "batch norm"))


def family(name):
    for prefix, fam in FAMILIES:
        if name.startswith(prefix) or prefix in name:
            return fam
    return "other (" + name + ")"


_CHILD = r"""
import json, sys, time
from numba.core import caching, event
loads = [0, 0.0]
_orig = caching.Cache.load_overload
def _timed(self, *a, **k):
    t = time.perf_counter()
    try:
        return _orig(self, *a, **k)
    finally:
        loads[0] += 1
        loads[1] += time.perf_counter() - t
caching.Cache.load_overload = _timed
t0 = time.perf_counter()
import fastact
from fastact import train
from fastact.__main__ import main
t_import = time.perf_counter() - t0
top, depth, starts = [], [0], {}
class L(event.Listener):
    def on_start(self, ev):
        depth[0] += 1
        starts[id(ev.data["dispatcher"]), str(ev.data["args"])] = time.perf_counter()
    def on_end(self, ev):
        d = ev.data["dispatcher"]
        t = time.perf_counter() - starts.pop((id(d), str(ev.data["args"])))
        depth[0] -= 1
        if depth[0] == 0:
            top.append((d, t))
event.register("numba:compile", L())
import argparse
p = argparse.ArgumentParser(); train.add_arguments(p)
args = p.parse_args([])
cfg = train.config_from_args(args)
xtr, ytr, xte, yte = train.load_data(cfg, args)
report = train.warm_up(cfg, len(ytr), len(yte))
rows = []
for d, t in top:
    name = d.py_func.__name__
    passes = {}
    for sig in d.signatures:
        md = d.get_metadata(sig)
        for pipe in md.get("pipeline_times", {}).values():
            for key, v in pipe.items():
                k = key.split("_", 1)[1]
                passes[k] = passes.get(k, 0.0) + v.run
    rows.append(dict(name=name, seconds=t, passes=passes))
print(json.dumps(dict(import_s=t_import, warmup_s=report.seconds, kernels=report.kernels, rows=rows,
                      loads=loads[0], load_s=loads[1])))
"""


def breakdown(cache_dir):
    """The child's JSON: compile events of the default job's warm-up in ``cache_dir``."""
    env = dict(os.environ, FASTACT_CACHE_DIR=cache_dir)
    p = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def machine():
    from fastact import benchmark
    return "; ".join(f"{k}: {v}" for k, v in benchmark.machine())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--epochs", type=int, help="train this many epochs instead of the default (12)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch twin")
    ap.add_argument("--out", help="also write the report (markdown) here")
    args = ap.parse_args(argv)
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    torch = has_torch() and not args.no_torch
    work = tempfile.mkdtemp(prefix="fastact-startup-")  # runs/ plots and the caches go here
    samples = {k: [] for k in ("import numpy, numba", "import fastact", "fastact train, cold",
                               "fastact train, warm", "PyTorch twin")}
    try:
        warm_env = dict(os.environ, FASTACT_CACHE_DIR=os.path.join(work, "warm-cache"))
        run("-m", "fastact", "warmup", env=warm_env, cwd=work)  # the imports' runs find a warm cache
        for r in range(args.repeat):
            samples["import numpy, numba"].append(run("-c", "import numpy, numba", cwd=work))
            samples["import fastact"].append(run("-c", "import fastact", env=warm_env, cwd=work))
            env = dict(os.environ, FASTACT_CACHE_DIR=os.path.join(work, f"cache-{r}"))
            samples["fastact train, cold"].append(run("-m", "fastact", "train", "--quiet", *epochs, env=env,
                                                      cwd=work))
            samples["fastact train, warm"].append(run("-m", "fastact", "train", "--quiet", *epochs, env=env,
                                                      cwd=work))
            if torch:
                samples["PyTorch twin"].append(run("path", os.path.join(HERE, "train_torch.py"), "--quiet", *epochs,
                                                   cwd=work))
            print(f"repeat {r + 1}/{args.repeat}: " + ", ".join(
                f"{k} {v[-1][0]:.2f} s" for k, v in samples.items() if v), flush=True)
        cold = breakdown(os.path.join(work, "breakdown-cache"))
        warm = breakdown(os.path.join(work, "breakdown-cache"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {k: (statistics.median(w for w, _ in v), statistics.median(m for _, m in v))
           for k, v in samples.items() if v}
    lines = [f"Machine: {machine()}", "",
             f"Wall seconds from process start to exit, median of {args.repeat} (each run its own process, "
             "the kinds interleaved), and peak memory:", "",
             "| run | seconds | peak MB | vs PyTorch twin |", "|---|---|---|---|"]
    peer = med.get("PyTorch twin", (None,))[0]
    for k, (w, m) in med.items():
        ratio = f"{peer / w:.2f}x" if peer and k.startswith("fastact train") else ""
        lines.append(f"| {k} | {w:.2f} | {m:.0f} | {ratio} |")
    if "fastact train, warm" in med:
        lines += ["", f"Cold / warm: {med['fastact train, cold'][0] / med['fastact train, warm'][0]:.2f}x. "
                  "'vs PyTorch twin' is PyTorch's seconds over fastact's (above 1: fastact is faster)."]
    fams = {}
    for row in cold["rows"]:
        f = fams.setdefault(family(row["name"]), [0, 0.0, 0.0, 0.0])
        f[0] += 1
        f[1] += row["seconds"]
        f[2] += row["passes"].get("nopython_type_inference", 0.0)
        f[3] += sum(v for k, v in row["passes"].items() if "lowering" in k)
    total = sum(f[1] for f in fams.values())
    lines += ["", f"Compile cost of the default job, cold (`fastact.train.warm_up`, one process): "
              f"{cold['kernels']} kernels in {cold['warmup_s']:.2f} s ({total:.2f} s of it compiling):", "",
              "| family | kernels | seconds | type inference (with callees) | lowering (LLVM) |",
              "|---|---|---|---|---|"]
    for name, (n, s, ti, lo) in sorted(fams.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"| {name} | {n} | {s:.2f} | {ti:.2f} | {lo:.2f} |")
    lines += ["", f"Warm, the same warm-up loads its kernels from the cache: {warm['warmup_s']:.2f} s, "
              f"{warm['loads']} cache lookups taking {warm['load_s']:.2f} s, {warm['kernels']} compiled; "
              f"`import fastact` in that process: {warm['import_s']:.2f} s."]
    report = "\n".join(lines)
    print(report)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(report + "\n")
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
