"""Every activation at one array size, fastact and PyTorch each timed alone in its own process.

    python bench/arrays_separate.py [--size 100000] [--repeat 31] [--only relu gelu ...]

``python -m fastact bench`` times the libraries in one process, where PyTorch's OpenMP workers (still
spinning after its call) and Numba's TBB workers take the 2 cores from each other: at 1e5 values, where
a call lasts 5-100 us, that charges each library for the other's pool. Here each library runs in a
child process of its own (the same cases, inputs and baselines as ``fastact.benchmark``, median of
``--repeat`` samples, each the second of two back-to-back calls); the ratio is PyTorch time / fastact
time, above 1.00x fastact is faster.
"""

import argparse
import json
import subprocess
import sys

from fastact import benchmark


def _child(lib, size, repeat, only, threads):
    """{label: seconds} for one library, measured in this process (the other is never imported)."""
    if lib == "torch" and benchmark.load_torch(num_threads=threads) is None:
        return {}
    fns = {}
    for case in benchmark.cases(only):
        fn = case.setup(size, libs=(lib,)).get(lib)
        if fn is not None:
            fns[case.label] = fn
    return benchmark.median_time(fns, repeat=repeat)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=float, default=1e5)
    ap.add_argument("--repeat", type=int, default=31)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--torch-threads", type=int, default=2, help="PyTorch's threads (default: 2, the cores)")
    ap.add_argument("--child", choices=("fastact", "torch"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    size = int(a.size)
    if a.child:
        print(json.dumps(_child(a.child, size, a.repeat, a.only, a.torch_threads)))
        return
    for k, v in benchmark.machine():
        print(f"{k:20s} {v}")
    times = {}
    for lib in ("fastact", "torch"):
        cmd = [sys.executable, __file__, "--child", lib, "--size", str(size), "--repeat", str(a.repeat),
               "--torch-threads", str(a.torch_threads)]
        if a.only:
            cmd += ["--only", *a.only]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"the {lib} process failed (exit {done.returncode}):\n{done.stderr}")
        times[lib] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\n{benchmark.size_label(size)} float32 values, each library alone in its process, median us "
          f"of {a.repeat}; ratio = PyTorch / fastact\n")
    print("| function | fastact us | PyTorch us | ratio |")
    print("|---|---|---|---|")
    for label, t in times["fastact"].items():
        tt = times["torch"].get(label)
        peer = f"{tt * 1e6:.2f} | {tt / t:.2f}x" if tt else "- | -"
        print(f"| {label} | {t * 1e6:.2f} | {peer} |")


if __name__ == "__main__":
    main()
