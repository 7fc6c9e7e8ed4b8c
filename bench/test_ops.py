"""Benchmarks generated from the layer-op table (``fastact.ops``): every op's network-sized cases
(``LayerOp.bench``), float32, the forward and the backward of fastact, and PyTorch's forward and
autograd backward on the same inputs (skipped without PyTorch). Adding an op to the table adds its
benchmarks here.

    pytest bench/test_ops.py --benchmark-group-by=group
    pytest bench/test_ops.py -k conv2d --benchmark-group-by=group

Groups are ``f"op|{op}|{case}"``; each sample is the second of two back-to-back calls
(``fastact.benchmark.time_pair``), so that a thread pool still spinning from one call does not slow
the next one being timed.
"""

import numpy as np
import pytest

from fastact import benchmark as fbench  # "benchmark" is pytest-benchmark's fixture
from fastact import ops

CASES = [pytest.param(op.name, c.name, id=f"{op.name}-{c.name}".replace(" ", "").replace("->", "to"))
         for op in ops.OPS.values() for c in op.bench]
#: seconds of pedantic rounds each benchmark aims at (at least 3 rounds, at most 20)
TARGET_S = 0.4


def _run(benchmark, fn, group, impl):
    benchmark.group = group
    benchmark.extra_info.update(op_impl=impl)  # not "impl": the elementwise summary reads those
    fn()  # warm-up: compilation or the cache load, first touch of the buffers
    rounds = max(3, min(20, int(TARGET_S / max(fbench.time_pair(fn), 1e-6))))
    # the untimed setup call makes each timed call the second of two back-to-back calls
    benchmark.pedantic(fn, setup=lambda: (fn(), None)[1], rounds=rounds, iterations=1, warmup_rounds=0)


def _fns(op, case, impl):
    """fastact's or PyTorch's callables of one case (``fastact.benchmark.layer_fns``: the same as
    ``python -m fastact bench --suite layers`` times)."""
    if impl == "fastact":
        fns = fbench.layer_fns(op, case)
        return fns["forward"], fns["backward"]
    torch = fbench.load_torch(2)
    if torch is None:
        pytest.skip("PyTorch is not installed")
    fns = fbench.layer_fns(op, case, torch)
    return fns["torch forward"], fns["torch train"]


@pytest.mark.parametrize("impl", ["fastact", "torch"])
@pytest.mark.parametrize("name,case", CASES)
def test_op_forward(benchmark, name, case, impl):
    op = ops.get(name)
    fwd = _fns(op, op.case(case), impl)[0]
    _run(benchmark, fwd, f"op|{name}|{case}|forward", impl)


@pytest.mark.parametrize("impl", ["fastact", "torch"])
@pytest.mark.parametrize("name,case", CASES)
def test_op_backward(benchmark, name, case, impl):
    """fastact: the backward alone (its forward ran once); PyTorch: forward + autograd backward, since
    autograd's backward needs its own forward each time."""
    op = ops.get(name)
    bwd = _fns(op, op.case(case), impl)[1]
    _run(benchmark, bwd, f"op|{name}|{case}|backward", impl)
