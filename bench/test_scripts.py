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
def test_elementwise_separate():
    out = _run("-m", "fastact", "bench", "--size", "1000", "--repeat", "1", "--only", "relu", "--separate")
    assert "relu_backward" in out and "vs torch" in out


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


def test_threshold():
    out = _run(BENCH / "threshold.py", "--repeat", "1")
    assert "parallel" in out.lower()


def test_conv_report_quick():
    out = _run(BENCH / "conv_report.py", "--quick", "--repeat", "1", timeout=600)
    assert "| layer |" in out and "SGEMM" in out


@pytest.mark.skipif(benchmark.load_torch() is None, reason="PyTorch is the peer here")
def test_conv_report_layers():
    out = _run(BENCH / "conv_report.py", "--layers", "--repeat", "1", timeout=600)
    assert out.count("| 64->64 @8 |") == 2 and "each library alone" in out


@pytest.mark.skipif(benchmark.load_torch() is None, reason="PyTorch is the peer here")
def test_conv_report_depthwise():
    out = _run(BENCH / "conv_report.py", "--depthwise", "--repeat", "1", timeout=600)
    assert "| 960 @1 stride 1 |" in out


def test_conv_report_rule():
    out = _run(BENCH / "conv_report.py", "--rule", "--repeat", "1", timeout=600)
    assert "| 64->64 @8 |" in out and "| 1->16 @8 |" in out


def test_conv_report_accuracy():
    out = _run(BENCH / "conv_report.py", "--accuracy", timeout=600)
    assert "| 64->64 @8 |" in out


def test_step_report_one_net():
    out = _run(BENCH / "step_report.py", "--repeat", "1", "--only", "digits", timeout=600)
    assert "| digits 1x8x8 |" in out


def test_vgg_report_small():
    out = _run(BENCH / "vgg_report.py", "--model", "vgg11", "--batch", "1", "--size", "32", "--repeat", "1",
               timeout=600)
    assert "fastact" in out


@pytest.mark.skipif(benchmark.load_torch() is None, reason="the PyTorch twin of the default job")
def test_train_torch_one_epoch():
    out = _run(BENCH / "train_torch.py", "--epochs", "1", "--quiet", timeout=600)
    assert "accuracy" in out.lower()


def test_accuracy_report_reads_without_writing():
    out = _run(BENCH / "accuracy_report.py", timeout=600)
    assert "| activation |" in out


def test_gpu_benchmark_on_the_simulator():
    import importlib.util
    if importlib.util.find_spec("numba_cuda") is None:
        pytest.skip("needs the cuda extra (numba-cuda)")
    done = subprocess.run([sys.executable, str(BENCH / "gpu" / "bench_gpu.py"), "--size", "1024", "--repeat", "1"],
                          capture_output=True, text=True, timeout=600, cwd=BENCH.parent,
                          env={**__import__("os").environ, "NUMBA_ENABLE_CUDASIM": "1"})
    assert done.returncode == 0, done.stderr[-2000:]


def test_nets_report():
    out = _run(BENCH / "nets_report.py", "--nets", "mobilenet_v3_small", "--size", "32", "--batches", "1",
               "--step-batch", "2", "--repeat", "1", "--no-separate", timeout=900)
    assert "| mobilenet_v3_small inference 32x32, batch 1 |" in out and "SGEMM rate" in out
