"""Process-level set-up: the `info` command, the threading layer, fork safety and the kernel cache.

The subprocess tests run a fresh interpreter so they see fastact's import-time set-up, with a timeout so
that a hang (OpenMP after fork, say) fails the test instead of stalling the suite.
"""

import os
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest

import fastact
from fastact import config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_python(code, env=None, timeout=120):
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = REPO + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.pop("NUMBA_THREADING_LAYER", None)
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_info_command_prints_threading_layer():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("NUMBA_THREADING_LAYER", None)
    r = subprocess.run([sys.executable, "-m", "fastact", "info"], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = {ln[:20].strip(): ln[20:].strip() for ln in r.stdout.splitlines() if ln.strip()}
    assert lines.get("fastact") == fastact.__version__
    assert "tbb" in lines["threading layer"], r.stdout
    assert lines["numba"] == numba.__version__
    assert "JIT cache" in lines and "CUDA" in lines


def test_threading_layer_is_tbb_after_a_parallel_call():
    x = np.linspace(-1, 1, config.PARALLEL_MIN_SIZE + 1)
    np.testing.assert_array_equal(fastact.relu(x), np.maximum(x, 0))
    if os.environ.get("NUMBA_THREADING_LAYER"):
        pytest.skip("the user chose a threading layer")
    assert numba.threading_layer() == "tbb"
    assert fastact.system.threading_layer() == "tbb"


def test_threading_layer_in_a_fresh_process():
    r = _run_python("""
        import numpy as np, numba, fastact
        x = np.linspace(-1, 1, fastact.config.PARALLEL_MIN_SIZE * 2)
        assert (fastact.gelu(x)[-1] > 0.8)
        print(numba.threading_layer())
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == "tbb"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_fork_child_can_run_parallel_kernels():
    # The parent runs a parallel kernel first (starting the thread pool), then forks; the child must not
    # hang (OpenMP would) and must compute the right values. The timeout turns a hang into a failure.
    r = _run_python("""
        import os, sys
        import numpy as np, fastact
        n = fastact.config.PARALLEL_MIN_SIZE * 2
        x = np.linspace(-3, 3, n)
        expected = fastact.gelu(x)
        fastact.softmax(x.reshape(16, -1))
        pid = os.fork()
        if pid == 0:
            ok = np.array_equal(fastact.gelu(x), expected)
            ok &= bool(np.allclose(fastact.softmax(x.reshape(16, -1)).sum(axis=1), 1.0))
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        assert np.array_equal(fastact.gelu(x), expected)
    """, timeout=90)
    assert r.returncode == 0, r.stderr
    assert "child 0" in r.stdout, r.stdout + r.stderr


def test_multiprocessing_fork_pool():
    r = _run_python("""
        import multiprocessing as mp
        import numpy as np, fastact
        n = fastact.config.PARALLEL_MIN_SIZE * 2

        def work(seed):
            x = np.random.default_rng(seed).uniform(-3, 3, n)
            return float(np.abs(fastact.tanh(x) - np.tanh(x)).max())

        if __name__ == "__main__":
            fastact.tanh(np.zeros(n))          # thread pool started before the fork
            with mp.get_context("fork").Pool(2) as pool:
                errs = pool.map_async(work, range(4)).get(timeout=60)
            print(max(errs))
    """, timeout=90)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout.split()[-1]) < 1e-12


def _unwritable_dir(tmp_path):
    """A cache directory fastact cannot create or write, for root too (a path below a regular file)."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        return str(d / "cache")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    return str(blocker / "cache")


def test_read_only_cache_dir_falls_back(tmp_path):
    ro = _unwritable_dir(tmp_path)
    r = _run_python("""
        import numpy as np, fastact
        x = np.linspace(-3, 3, 7)
        y = fastact.elu(x, alpha=0.5)
        assert np.allclose(y, np.where(x > 0, x, 0.5 * np.expm1(x)), rtol=1e-12, atol=1e-12)
        print("CACHE", fastact.system.cache_dir())
    """, env={"FASTACT_CACHE_DIR": ro, "TMPDIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    path = r.stdout.split("CACHE", 1)[1].strip()
    assert not path.startswith(ro)
    assert path == "None" or os.path.isdir(path)


def test_cache_dir_is_used_and_named_by_version(tmp_path):
    d = tmp_path / "cache"
    r = _run_python("""
        import numpy as np, fastact
        fastact.hardswish(np.linspace(-4, 4, 9))
        print("CACHE", fastact.system.cache_dir())
    """, env={"FASTACT_CACHE_DIR": str(d)})
    assert r.returncode == 0, r.stderr
    path = r.stdout.split("CACHE", 1)[1].strip()
    assert path.startswith(str(d))
    assert fastact.__version__ in os.path.basename(path)
    assert any(os.scandir(path)), "nothing was cached"


def test_cache_dir_name_contains_version_in_process():
    path = fastact.system.cache_dir()
    if path is None:
        pytest.skip("caching disabled")
    assert fastact.__version__ in os.path.basename(path)


def test_submodules_are_attributes():
    import fastact
    for name in fastact._LAZY_SUBMODULES:
        assert getattr(fastact, name).__name__ == f"fastact.{name}"
        assert name in dir(fastact)
    assert isinstance(fastact.ufuncs.relu, np.ufunc)
    with pytest.raises(AttributeError):
        fastact.no_such_thing


def test_a_threading_layer_the_user_chose_before_import_is_kept():
    code = ("import numba, numpy as np; numba.config.THREADING_LAYER = 'workqueue'; import fastact; "
            "fastact.relu(np.ones(1 << 18)); print(numba.threading_layer())")
    env = dict(os.environ)
    env.pop("NUMBA_THREADING_LAYER", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "workqueue"
