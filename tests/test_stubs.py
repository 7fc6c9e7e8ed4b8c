"""The type stubs of the generated functions (fastact/elementwise.pyi, fastact/jit.pyi): current,
complete, installed with the package, and what mypy reads for a user's script."""

import importlib.resources
import importlib.util
import os
import subprocess
import sys

import pytest

from fastact import elementwise, jit, stubs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", sorted(stubs.STUBS))
def test_stub_files_are_current(name):
    with open(os.path.join(ROOT, "fastact", name), encoding="utf-8") as fh:
        assert fh.read() == stubs.STUBS[name](), "regenerate with python -m fastact.stubs --write"


@pytest.mark.parametrize("module", [elementwise, jit], ids=["elementwise", "jit"])
def test_every_public_name_has_a_stub(module):
    text = stubs.STUBS[module.__name__.rsplit(".", 1)[1] + ".pyi"]()
    missing = [n for n in module.__all__ if f"def {n}(" not in text and f"\n{n}:" not in text]
    assert not missing, f"{module.__name__}: no stub for {missing}"


def test_the_package_ships_its_stubs_and_marker():
    files = importlib.resources.files("fastact")
    for name in ("py.typed", *stubs.STUBS):
        assert files.joinpath(name).is_file(), f"{name} is not installed with fastact"


USER = '''
import numpy as np
import fastact as fa
from fastact import jit, models, nn

x = np.linspace(-3, 3, 7, dtype=np.float32)
y = fa.gelu(x, approximate="tanh")
dx = fa.relu_backward(np.ones_like(x), x)
v: float = jit.gelu(0.5)
conv = nn.Conv2d(3, 8, 3, padding=1)
net = models.net_res_deep()
z = y + dx
'''

WRONG = '''
import numpy as np
import fastact as fa
from fastact import jit
y = fa.gelu(np.ones(3), approximate="fast")
w: str = jit.relu(1.0)
fa.relu_backward(np.ones(3))
'''


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="needs mypy (the test extra)")
def test_mypy_reads_the_stubs(tmp_path):
    def mypy(code):
        script = tmp_path / "script.py"
        script.write_text(code)
        env = dict(os.environ, MYPYPATH=ROOT)
        return subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports",
                               "--no-incremental", "--strict-optional", str(script)], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=300)
    ok = mypy(USER)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = mypy(WRONG)
    assert bad.returncode == 1, bad.stdout
    for what in ("approximate", 'variable has type "str"', 'Missing positional argument "x"'):
        assert what in bad.stdout, bad.stdout
