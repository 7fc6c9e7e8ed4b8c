"""Every layer op of the table (``fastact.ops``), every case, float32 and float64: one helper checks
the forward and every gradient against the float64 reference, against PyTorch (when installed) and,
in float64, against finite differences, with the op's own tolerances (tinygrad's ``helper_test_op``
is the model). Adding an op to the table adds its tests here."""

import os

import numpy as np
import pytest

import fastact
from fastact import ops
from conftest import torch_or_none, torch_or_skip

DTYPES = (np.float32, np.float64)
CASES = [(op.name, c.name) for op in ops.OPS.values() for c in op.cases]


def _close(actual, expected, op, dtype, what):
    rtol, atol = op.tol[np.dtype(dtype).name]
    if op.atol_scaled:
        atol *= max(1.0, float(np.abs(expected).max(initial=0.0)))
    actual = np.asarray(actual)
    assert actual.dtype == np.dtype(dtype) or actual.ndim == 0, f"{op.name} {what}: dtype {actual.dtype}"
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=rtol,
                               atol=atol, err_msg=f"{op.name} {what} ({np.dtype(dtype).name})")


def helper_test_op(op, case, dtype, torch=None):
    """Forward and every gradient of ``op`` on ``case`` against the reference and PyTorch."""
    arrays = ops.make_inputs(op, case, dtype)
    y = op.forward(arrays, case.params)
    _close(y, op.reference(arrays, case.params), op, dtype, "forward")
    y_train, saved = op.train_forward(arrays, case.params)
    _close(y_train, y, op, dtype, "training forward")
    dy = np.asarray(np.random.default_rng(1).standard_normal(np.shape(y)), dtype=dtype)
    dy = dy if np.ndim(y) else dtype(dy)
    grads = op.backward(dy, arrays, case.params, saved)
    assert set(grads) == set(op.grads) - set(case.omit), f"{op.name}: gradients of {sorted(grads)}"
    want = op.reference_backward(dy, arrays, case.params)
    for name in grads:
        _close(grads[name], want[name], op, dtype, f"gradient of {name}")
    if torch is None:
        return
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    for k in grads:
        t[k].requires_grad_(True)
    ty = op.torch(torch, t, case.params)
    _close(y, ty.detach().numpy(), op, dtype, "forward against PyTorch")
    ty.backward(torch.from_numpy(np.asarray(dy)) if np.ndim(y) else torch.tensor(float(dy), dtype=ty.dtype))
    for name in grads:
        _close(grads[name], t[name].grad.numpy(), op, dtype, f"gradient of {name} against PyTorch")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name,case", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_op_against_reference(name, case, dtype):
    op = ops.get(name)
    helper_test_op(op, op.case(case), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name,case", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_op_against_torch(name, case, dtype):
    torch = torch_or_skip()
    op = ops.get(name)
    helper_test_op(op, op.case(case), dtype, torch)


@pytest.mark.parametrize("name,case", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_op_gradients_against_finite_differences(name, case):
    op = ops.get(name)
    c = op.case(case)
    arrays = ops.make_inputs(op, c, np.float64)
    names = [k for k in op.inputs if k in arrays]

    def fn(*values):
        return op.forward(dict(zip(names, values)), c.params)

    def backward(dy, *values):
        a = dict(zip(names, values))
        g = op.backward(dy, a, c.params, op.train_forward(a, c.params)[1])
        return tuple(g.get(k) for k in names)

    assert fastact.gradcheck(fn, backward, [arrays[k] for k in names])


def test_every_case_name_is_unique_and_every_op_has_cases():
    for op in ops.OPS.values():
        names = [c.name for c in op.cases + op.bench]
        assert len(names) == len(set(names)), op.name
        assert op.cases and op.bench, op.name
        assert set(op.grads) <= set(op.inputs), op.name


def test_every_cuda_counterpart_exists():
    import importlib.util
    if importlib.util.find_spec("numba_cuda") is None:
        pytest.skip("needs the cuda extra")
    from fastact import cuda
    for op in ops.OPS.values():
        if op.cuda:
            assert callable(getattr(cuda, op.cuda)), op.name


def test_unknown_op_names_the_table():
    with pytest.raises(ValueError, match="conv2d"):
        ops.get("conv3d")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _design():
    with open(f"{ROOT}/docs/design.md", encoding="utf-8") as fh:
        return fh.read()


def test_design_table_is_current():
    text = _design()
    begin, end = "<!-- layer ops table: begin -->\n", "<!-- layer ops table: end -->"
    assert text[text.index(begin) + len(begin):text.index(end)] == ops.markdown_table(), \
        "docs/design.md's layer-op table is stale: paste fastact.ops.markdown_table() between its markers"


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_worked_example_entry_gets_every_check(dtype):
    """docs/design.md's global_max_pool2d entry, evaluated where the table's entries are written, passes
    the same helper and finite-difference check as every entry of the table."""
    text = _design()
    block = text[text.index("<!-- global_max_pool2d entry: begin -->"):
                 text.index("<!-- global_max_pool2d entry: end -->")]
    code = block.split("```python", 1)[1].split("```", 1)[0]
    entry = eval(code, vars(ops))  # the names of fastact/ops.py, as for an entry of _ENTRIES
    assert isinstance(entry, ops.LayerOp) and entry.name == "global_max_pool2d"
    for case in entry.cases:
        helper_test_op(entry, case, dtype, torch_or_none())
        if dtype is np.float64:
            x = ops.make_inputs(entry, case, np.float64)["x"]
            assert fastact.gradcheck(lambda v: entry.forward({"x": v}, {}),
                                     lambda dy, v: entry.backward(dy, {"x": v}, {},
                                                                  entry.train_forward({"x": v}, {})[1])["x"],
                                     [x])
