"""One SGD step of the reference nets, this checkout against another one, interleaved in one process.

    python bench/step_ab.py OTHER_CHECKOUT [--repeat 21] [--only digits]

For judging a change by the warm step it leaves: ``git worktree add /tmp/base main`` and pass
``/tmp/base``. The other checkout's package is copied to a temporary directory as ``fastact_base``
(its modules import each other relatively, so both versions load side by side; each keys its kernel
cache on its own sources), and for every net of ``bench/step_report.py`` (batch 64, float32, the same
weights and batch for both) the two steps are timed alternately, each sample the second of two
back-to-back steps, after three steps of warm-up that compile or load the kernels. Interleaving in one
process puts both versions under the same machine noise, which moves separate processes' medians by
30% here. Prints the medians and this checkout's time over the other's.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("other", help="the other checkout (a directory holding fastact/)")
    ap.add_argument("--repeat", type=int, default=21)
    ap.add_argument("--only", help="nets whose name starts with this")
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="fastact-ab-")
    try:
        shutil.copytree(os.path.join(os.path.abspath(args.other), "fastact"), os.path.join(tmp, "fastact_base"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        sys.path.insert(0, tmp)
        sys.path.insert(0, ROOT)
        sys.path.insert(0, HERE)
        import fastact
        import fastact_base
        import step_report as sr
        from fastact import benchmark
        print("; ".join(f"{k}: {v}" for k, v in benchmark.machine()))
        print(f"\nms per step, batch {sr.BATCH}, median of {args.repeat} (this checkout {ROOT}, other "
              f"{os.path.abspath(args.other)}):\n")
        print("| net | this | other | this / other |\n|---|---|---|---|", flush=True)
        for name, spec in sr.NETS.items():
            if args.only and not name.startswith(args.only):
                continue
            a, b = sr.fastact_step(spec, fastact), sr.fastact_step(spec, fastact_base)
            for _ in range(3):
                a()
                b()
            ta, tb = [], []
            for i in range(args.repeat):
                for fn, ts in ((a, ta), (b, tb)) if i % 2 else ((b, tb), (a, ta)):
                    fn()
                    t = time.perf_counter()
                    fn()
                    ts.append(time.perf_counter() - t)
            ma, mb = statistics.median(ta) * 1e3, statistics.median(tb) * 1e3
            print(f"| {name} | {ma:.2f} | {mb:.2f} | {ma / mb:.2f} |", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
