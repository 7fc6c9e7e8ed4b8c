"""fastact.benchmark: the baselines read from the activation table compute what fastact computes (a
benchmark against a wrong baseline is worthless), every table entry has them, and the timer and CLI work.
Nothing here measures speed."""

import numpy as np
import pytest

from fastact import table as _table
from fastact import benchmark as fb
from fastact.__main__ import main

N = 1000


@pytest.mark.parametrize("name", _table.NAMES)
def test_every_activation_has_its_benchmark_baselines(name):
    act = _table.ENTRIES[name]
    assert act.numpy_baseline and act.numpy_backward_baseline
    assert act.torch_module and act.torch_backward_baseline
    assert bool(act.numpy_out_baseline) == bool(act.torch_out_baseline)


@pytest.mark.parametrize("case", fb.cases(), ids=lambda c: c.label)
def test_baselines_agree_with_fastact(case):
    fns = case.setup(N)
    want = fns.pop("fastact")()
    if isinstance(want, tuple):  # prelu_backward: (dx, dweight); dx is compared
        want = want[0]
    want = np.asarray(want, dtype=np.float64)
    for impl, fn in fns.items():
        got = fn()
        if isinstance(got, tuple):
            got = got[0]
        got = got.numpy() if hasattr(got, "numpy") else got  # PyTorch tensors
        np.testing.assert_allclose(np.asarray(got, dtype=np.float64).reshape(want.shape), want,
                                   rtol=2e-3, atol=2e-4, err_msg=f"{case.label} {impl}")


def test_out_cases_come_from_the_table():
    labels = {c.label for c in fb.cases()}
    for name, act in _table.ENTRIES.items():
        assert (f"{name}(out=)" in labels) == bool(act.numpy_out_baseline)


def test_median_time_interleaves_pairs_and_respects_the_budget():
    calls = []
    t = fb.median_time({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeat=5,
                       min_sample=0.0)
    assert set(t) == {"a", "b"} and all(v >= 0 for v in t.values())
    # warm-up (1), sizing pair (2), then 5 rounds of one untimed + one timed call each
    assert calls.count("a") == calls.count("b") == 3 + 2 * 5
    assert calls[-4:] == ["a", "a", "b", "b"]  # the pairs are back to back, the rounds interleaved


def test_machine_describes_cpu_blas_and_threading():
    rows = dict(fb.machine())
    for key in ("cpu", "BLAS", "threading layer", "numba threads"):
        assert rows[key]


def test_serial_parallel_times_runs_the_compiled_loops():
    rows = fb.serial_parallel_times("relu", [1024, 4096], repeat=3)
    assert [r[0] for r in rows] == [1024, 4096] and all(s > 0 and p > 0 for _, s, p in rows)


def test_cli_runs_one_activation_at_one_size(tmp_path, capsys):
    md = tmp_path / "act.md"
    assert main(["bench", "--only", "hardtanh", "--size", "1000", "--repeat", "3",
                 "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    assert "hardtanh_backward" in out and "copy bandwidth" in out
    from fastact import plots
    ratios = plots._read_ratio_tables(str(md))
    assert {k[0] for k in ratios} == {"hardtanh", "hardtanh_backward", "hardtanh(out=)"}


def test_cli_layers_suite_writes_markdown_and_json(tmp_path, capsys):
    import json
    md, js = tmp_path / "layers.md", tmp_path / "layers.json"
    assert main(["bench", "--suite", "layers", "--only", "cross_entropy", "softmax", "--repeat", "3",
                 "--markdown", str(md), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "| `cross_entropy` | 64x10 |" in out and "| `softmax` |" in out
    rows = json.loads(js.read_text())["layers"]
    assert [r["op"] for r in rows] == ["softmax", "cross_entropy"]
    assert all(r["forward_fastact_ms"] > 0 and r["train_fastact_ms"] > 0 for r in rows)
    assert "### Layer ops, float32" in md.read_text()


def test_layer_fns_compute_what_the_table_checks():
    from fastact import ops
    op = ops.get("linear")
    fns = fb.layer_fns(op, op.bench[0])
    y = fns["forward"]()
    grads = fns["train"]()
    assert y.shape == (64, 128) and set(grads) == {"x", "weight", "bias"}


def test_cli_step_suite_one_net(capsys):
    assert main(["bench", "--suite", "step", "--only", "digits", "--repeat", "3"]) == 0
    out = capsys.readouterr().out
    assert "| digits 1x8x8 |" in out and "mnist" not in out


def test_to_torch_twins_compute_what_fastact_computes():
    torch = fb.load_torch(2)
    if torch is None:
        pytest.skip("PyTorch is not installed")
    from fastact import models
    for spec in fb.STEP_NETS.values():
        if spec.get("model"):
            spec = dict(spec, n_chans1=8, n_blocks=2)
        net = fb.step_model(spec)
        tnet = models.to_torch(net, torch)
        x, _ = fb.step_batch(spec)
        with torch.no_grad():
            want = tnet(torch.from_numpy(x[:4])).numpy()
        np.testing.assert_allclose(net(x[:4]), want, rtol=1e-4, atol=1e-5)


def test_separate_measures_pytorch_in_its_own_process(capsys):
    if fb.load_torch() is None:
        pytest.skip("PyTorch is not installed")
    rows = fb.run_layers(3, ["cross_entropy"], separate=True)
    assert len(rows) == 1 and rows[0]["torch_process"] == "own"
    assert rows[0]["forward_torch_ms"] > 0 and rows[0]["train_ratio"] > 0
    assert "process of its own" in fb.layers_markdown(rows)
