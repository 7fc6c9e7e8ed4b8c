"""The kernel cache serves compiled code only for the sources it was compiled from: a second process
with unchanged sources compiles nothing, and after a kernel's source changes the next process
compiles it again and runs the new code (never the stale machine code)."""

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CALL = """
import numpy as np
from fastact import warmup
with warmup.compile_counter() as c:
    import fastact as fa
    y = fa.softsign(np.array([1.0, -3.0]))
print(c.count, y[0], y[1])
"""


def _run(pkg_root, cache):
    env = dict(os.environ, PYTHONPATH=str(pkg_root), FASTACT_CACHE_DIR=str(cache))
    out = subprocess.run([sys.executable, "-c", CALL], capture_output=True, text=True, env=env,
                         cwd=str(pkg_root), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    count, y0, y1 = out.stdout.split()
    return int(count), float(y0), float(y1)


def test_unchanged_sources_reuse_the_cache_and_a_changed_kernel_recompiles(tmp_path):
    shutil.copytree(os.path.join(ROOT, "fastact"), tmp_path / "fastact",
                    ignore=shutil.ignore_patterns("__pycache__"))
    cache = tmp_path / "cache"
    first = _run(tmp_path, cache)
    assert first[0] > 0 and first[1:] == (0.5, -0.75)  # compiled into the empty cache
    again = _run(tmp_path, cache)
    assert again == (0, 0.5, -0.75)  # the same sources: everything from the cache
    table = tmp_path / "fastact" / "_table.py"
    src = table.read_text()
    assert "    r = x / (1.0 + abs(x))\n" in src
    table.write_text(src.replace("    r = x / (1.0 + abs(x))\n", "    r = 2.0 * x / (1.0 + abs(x))\n", 1))
    changed = _run(tmp_path, cache)
    assert changed[0] > 0 and changed[1:] == (1.0, -1.5)  # recompiled: the new kernel's values
