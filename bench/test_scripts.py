"""The report scripts of bench/, each run once in its smallest form, so that none rots between the
sessions that record their figures (``pytest bench --benchmark-disable`` runs these too). They check
that a script runs and prints its table, not its numbers."""

import subprocess
import sys
from pathlib import Path

import pytest

from fastact import benchmark

BENCH = Path(__file__).parent


def _run(*args, timeout=300):
    done = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=BENCH.parent)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_overhead():
    out = _run(BENCH / "overhead.py")
    assert "fa.relu(x, out=y)" in out and "np.maximum(x, 0)" in out


@pytest.mark.skipif(benchmark.load_torch() is None, reason="PyTorch is the peer here")
def test_arrays_separate():
    out = _run(BENCH / "arrays_separate.py", "--size", "1000", "--repeat", "1", "--only", "relu")
    assert "| relu_backward |" in out


def test_pool_fastact_alone():
    out = _run(BENCH / "pool_torch.py", "--fastact", "--repeat", "1")
    assert out.count(" bwd ") == 3


def test_mpi_throughput_one_process():
    out = _run(BENCH / "mpi_throughput.py", "--steps", "1", "--warmup", "0")
    assert "| digits VGG | 1 |" in out and "| net_res_deep(32, 10) | 1 |" in out


def test_float32_paths():
    out = _run(BENCH / "float32_paths.py", "--n", "1000", "--points", "4096", "--repeat", "1")
    assert "| sigmoid |" in out and "| tanh' |" in out


def test_startup():
    out = _run(BENCH / "startup.py", "--repeat", "1", "--epochs", "1", "--no-torch", timeout=600)
    assert "fastact train, cold" in out and "Compile cost of the default job" in out


def test_slots():
    out = _run(BENCH / "slots.py", "--repeat", "2")
    assert "run_slots, calling thread + helper" in out and "forward MFLOP" in out


def test_step_ab():
    out = _run(BENCH / "step_ab.py", BENCH.parent, "--repeat", "1", "--only", "digits")
    assert "| digits 1x8x8 |" in out and "this / other" in out


def test_compile_profile():
    done = subprocess.run([sys.executable, str(BENCH / "compile_profile.py"), "info"], capture_output=True,
                          text=True, timeout=300, cwd=BENCH.parent)
    assert done.returncode == 0 and "top-level compilations" in done.stderr, done.stderr
