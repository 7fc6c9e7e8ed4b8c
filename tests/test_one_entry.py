"""Adding an activation is one table entry: the worked example of docs/design.md (``relu_squared``),
appended to a copy of ``fastact/_table.py``, reaches every target with no other change."""

import os
import shutil
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- relu_squared entry: begin -->", "<!-- relu_squared entry: end -->"

CHECK = textwrap.dedent("""
    import math
    import numpy as np
    import fastact as fa
    from fastact import capi, jit, nn, ufuncs, benchmark

    x = np.array([-2.0, -0.0, 0.0, 0.5, 3.0, np.nan, np.inf, -np.inf])
    np.testing.assert_array_equal(fa.relu_squared(x), [0, 0, 0, 0.25, 9, np.nan, np.inf, 0])
    np.testing.assert_array_equal(fa.relu_squared_backward(np.ones(8), x), [0, 0, 0, 1, 6, np.nan, np.inf, 0])
    assert fa.relu_squared(x.astype(np.float32)).dtype == np.float32
    assert fa.gradcheck(fa.relu_squared, fa.relu_squared_backward, (np.array([-1.0, 0.3, 2.0]),))
    assert "max(x, 0)^2" in fa.relu_squared.__doc__
    assert isinstance(ufuncs.relu_squared, np.ufunc) and ufuncs.relu_squared(3.0) == 9.0
    assert jit.relu_squared(3.0) == 9.0 and jit.relu_squared_grad(3.0) == 6.0
    assert capi.address("relu_squared", "float32") and capi.address("relu_squared", "float64", backward=True)
    assert "fastact_relu_squared_f32" in capi.header()
    w = np.random.default_rng(0).standard_normal((4, 2, 3, 3))
    xi = np.random.default_rng(1).standard_normal((2, 2, 5, 5))
    y = fa.conv2d(xi, w, padding=1, activation="relu_squared")
    np.testing.assert_allclose(y, fa.relu_squared(fa.conv2d(xi, w, padding=1)), rtol=1e-12)
    net = nn.Sequential(nn.Linear(3, 4, dtype=np.float64), nn.ReluSquared())
    assert net(np.ones((2, 3))).shape == (2, 4)
    assert any(c.name == "relu_squared" for c in benchmark.cases())
    assert "relu_squared" in fa.ACTIVATIONS
    print("ok")
""")


def test_one_table_entry_reaches_every_target(tmp_path):
    doc = open(os.path.join(ROOT, "docs", "design.md")).read()
    block = doc[doc.index(BEGIN) + len(BEGIN):doc.index(END)]
    code = block.split("```python", 1)[1].split("```", 1)[0]
    pkg = tmp_path / "fastact"
    shutil.copytree(os.path.join(ROOT, "fastact"), pkg, ignore=shutil.ignore_patterns("__pycache__"))
    with open(pkg / "_table.py") as fh:
        table = fh.read()
    marker = "#: names of the activations, in table order"
    assert marker in table
    with open(pkg / "_table.py", "w") as fh:
        fh.write(table.replace(marker, code + "\n\n" + marker, 1))
    env = dict(os.environ, PYTHONPATH=str(tmp_path), FASTACT_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env,
                         cwd=str(tmp_path), timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.strip().endswith("ok")
