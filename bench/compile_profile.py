"""Every kernel a fastact command compiles, with its seconds: ``python -m fastact ARGS`` under Numba's
compile events.

    FASTACT_CACHE_DIR=$(mktemp -d) python bench/compile_profile.py train --epochs 1

Runs the command in this process (so with an empty ``FASTACT_CACHE_DIR`` every kernel it needs
compiles) and prints, slowest first, each compilation: seconds, whether the kernel is a
``parallel=True`` one, its name and argument types. Compilations nest (a kernel compiles the
functions it calls), so a callee's seconds are also inside its caller's; ``top-level`` lines are the
outermost ones, whose seconds add up to the command's compile time. It uses nothing but
``python -m fastact``'s entry point and Numba's event API, so it profiles any checkout of fastact
(``PYTHONPATH=/path/to/checkout``), older ones included: that is how the CHANGELOG compares
the compile cost of two versions.
"""

import sys
import time

from numba.core import event


def main(argv):
    records, starts, depth = [], {}, [0]

    class Listener(event.Listener):
        def on_start(self, ev):
            depth[0] += 1
            starts[id(ev.data["dispatcher"]), str(ev.data["args"])] = (time.perf_counter(), depth[0])

        def on_end(self, ev):
            d = ev.data["dispatcher"]
            t0, level = starts.pop((id(d), str(ev.data["args"])))
            depth[0] -= 1
            name = getattr(getattr(d, "py_func", None), "__qualname__", None) or str(d)
            parallel = bool(getattr(d, "targetoptions", {}).get("parallel", False))
            records.append((time.perf_counter() - t0, level == 1, parallel, name, str(ev.data["args"])))

    event.register("numba:compile", Listener())
    t0 = time.perf_counter()
    import fastact  # noqa: F401  (timed with the import)
    from fastact.__main__ import main as fastact_main
    t1 = time.perf_counter()
    try:
        fastact_main(argv)
    except SystemExit:
        pass
    t2 = time.perf_counter()
    top = [r for r in records if r[1]]
    print(f"import fastact {t1 - t0:.2f} s; the command {t2 - t1:.2f} s; {len(top)} top-level "
          f"compilations, {sum(r[0] for r in top):.2f} s", file=sys.stderr)
    for t, outer, parallel, name, args in sorted(records, reverse=True):
        kind = f"{'top-level' if outer else 'nested   '}  {'parallel' if parallel else 'serial  '}"
        print(f"{t:7.3f} s  {kind}  {name}  {args[:100]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
