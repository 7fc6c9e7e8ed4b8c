"""pytest-benchmark set-up for ``pytest bench/`` (never collected by ``pytest tests``).

Every benchmark is grouped ``f"{func}|{size}"`` (run with ``--benchmark-group-by=group``), so each group
holds fastact, NumPy and PyTorch on the same input; ``copy|{size}`` is the bandwidth floor. At the end of
the session a ratio table is printed: NumPy (PyTorch) median / fastact median (above 1.00x fastact is
faster) and fastact's bytes moved per second as a share of the copy bandwidth measured in the same run.
"""

import pytest

from fastact import benchmark as fbench  # "benchmark" is pytest-benchmark's fixture

#: seconds each benchmark of the small sizes may take (pytest-benchmark's default 1.0 would put the
#: ~430 benchmarks over 10 minutes on 2 cores); --benchmark-max-time on the command line wins.
DEFAULT_MAX_TIME = 0.2


def pytest_configure(config):
    given = " ".join(str(a) for a in config.invocation_params.args)
    if hasattr(config.option, "benchmark_max_time") and "--benchmark-max-time" not in given:
        config.option.benchmark_max_time = DEFAULT_MAX_TIME


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or not getattr(bs, "benchmarks", None):
        return
    med = {}
    for b in bs.benchmarks:
        if b.stats is None or not b.group:
            continue
        med[(b.group, b.extra_info.get("impl"))] = (b.stats.median, b.extra_info)
    copy = {g.split("|")[1]: 8 * info["size"] / t / 1e9 for (g, impl), (t, info) in med.items()
            if g.startswith("copy|")}
    lines = []
    for (g, impl), (t, info) in med.items():
        if impl != "fastact":
            continue
        size = g.split("|")[1]
        tn = med.get((g, "numpy"), (None,))[0]
        tt = med.get((g, "torch"), (None,))[0]
        gb = info["bytes"] / t / 1e9
        pct = f"{100 * gb / copy[size]:.0f}%" if size in copy else "-"
        lines.append(f"{g:32s} {gb:8.2f} GB/s  vs NumPy {fbench.format_ratio(tn and tn / t):>7s}  "
                     f"vs torch {fbench.format_ratio(tt and tt / t):>7s}  {pct:>5s} of copy")
    if lines:
        terminalreporter.section("fastact ratios (NumPy or PyTorch median / fastact median)")
        for size, g in sorted(copy.items()):
            terminalreporter.write_line(f"copy bandwidth at {size}: {g:.2f} GB/s (np.copyto, 8n bytes)")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def run_benchmark(benchmark):
    """``run_benchmark(fn, group, impl, size, nbytes)``: times ``fn`` (already warmed up) under pytest-
    benchmark; large sizes use a fixed number of rounds (a NumPy GELU on 1e7 values takes ~0.5 s)."""

    def run(fn, group, impl, size, nbytes):
        benchmark.group = group
        benchmark.extra_info.update(impl=impl, size=size, bytes=nbytes)
        if size >= 10**6:
            once = fbench.time_pair(fn)
            rounds = max(3, min(10, int(1.0 / max(once, 1e-6))))
            benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
        else:
            benchmark(fn)
        if benchmark.stats is not None:
            benchmark.extra_info["GB/s"] = round(nbytes / benchmark.stats.stats.median / 1e9, 3)
    return run
