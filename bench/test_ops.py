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


def _fastact(op, case):
    arrays = ops.make_inputs(op, case, np.float32)
    y = op.forward(arrays, case.params)
    dy = np.ones_like(y) if np.ndim(y) else 1.0
    return (lambda: op.forward(arrays, case.params),
            lambda: op.backward(dy, arrays, case.params, y))


def _torch(op, case):
    torch = fbench.load_torch(2)
    if torch is None:
        pytest.skip("PyTorch is not installed")
    arrays = ops.make_inputs(op, case, np.float32)
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    for k in op.grads:
        if k in t:
            t[k].requires_grad_(True)

    def forward():
        with torch.no_grad():
            return op.torch(torch, t, case.params)

    def forward_backward():
        y = op.torch(torch, t, case.params)
        y.backward(torch.ones_like(y))
        for k in op.grads:
            if k in t:
                t[k].grad = None

    return forward, forward_backward


@pytest.mark.parametrize("impl", ["fastact", "torch"])
@pytest.mark.parametrize("name,case", CASES)
def test_op_forward(benchmark, name, case, impl):
    op = ops.get(name)
    fwd = (_fastact if impl == "fastact" else _torch)(op, op.case(case))[0]
    _run(benchmark, fwd, f"op|{name}|{case}|forward", impl)


@pytest.mark.parametrize("impl", ["fastact", "torch"])
@pytest.mark.parametrize("name,case", CASES)
def test_op_backward(benchmark, name, case, impl):
    """fastact: the backward alone (its forward ran once); PyTorch: forward + autograd backward, since
    autograd's backward needs its own forward each time."""
    op = ops.get(name)
    bwd = (_fastact if impl == "fastact" else _torch)(op, op.case(case))[1]
    _run(benchmark, bwd, f"op|{name}|{case}|backward", impl)
