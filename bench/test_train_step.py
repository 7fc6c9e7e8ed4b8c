"""Benchmarks: one SGD training step (batch 64, float32) of the reference nets of docs/performance.md
("Floors and peers": the three VGG-style nets and the ResNet net_res_deep(32, 10)), fastact against
PyTorch (skipped without it). Groups are ``f"step|{net}"``; ``extra_info`` holds images/s. The nets and
the two step functions live in ``bench/step_report.py``, which prints the same comparison as a table (and
a per-layer profile with ``--profile``).

    pytest bench/test_train_step.py --benchmark-group-by=group
"""

import pytest

import step_report as sr  # bench/ is on sys.path (pytest inserts the directory of bench/conftest.py)

NET_IDS = {name: name.split()[0] for name in sr.NETS}


@pytest.mark.parametrize("impl", ["fastact", "torch"])
@pytest.mark.parametrize("net", list(sr.NETS), ids=NET_IDS.get)
def test_train_step(benchmark, net, impl):
    spec = sr.NETS[net]
    step = sr.fastact_step(spec) if impl == "fastact" else sr.torch_step(spec)
    if step is None:
        pytest.skip("PyTorch is not installed")
    step(), step()  # compile (or load from the cache) and warm up outside the timing
    benchmark.group = f"step|{NET_IDS[net]}"
    benchmark.extra_info["impl"] = impl
    benchmark.pedantic(step, rounds=20, iterations=1, warmup_rounds=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["images/s"] = round(sr.BATCH / benchmark.stats.stats.median, 1)
