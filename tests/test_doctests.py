"""Every example in fastact's docstrings runs and prints what it says (doctest)."""

import doctest
import importlib
import pkgutil

import pytest

import fastact

# fastact.cuda's examples need a GPU (tests/test_cuda.py covers it on the simulator)
MODULES = ["fastact"] + sorted(f"fastact.{m.name}" for m in pkgutil.iter_modules(fastact.__path__)
                               if m.name not in ("__main__", "cuda"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    # the generated activations live in fastact.elementwise but are published under fastact's name
    tests = finder.find(module, name)
    if name == "fastact.elementwise":
        for attr in module.__all__:
            fn = getattr(module, attr)
            tests += finder.find(fn, f"fastact.{attr}", module=False, globs={})
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for t in tests:
        runner.run(t)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 or name not in ("fastact", "fastact.elementwise"), "no examples found"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_every_public_function_has_an_example():
    missing = [n for n in fastact.__all__ if callable(getattr(fastact, n)) and not isinstance(
        getattr(fastact, n), type) and ">>>" not in (getattr(fastact, n).__doc__ or "")]
    assert not missing, f"public functions without a docstring example: {missing}"


@pytest.mark.parametrize("name", sorted(fastact.table.ENTRIES))
def test_docstring_example_values_match_the_reference(name):
    """The literal example values (fastact.elementwise.EXAMPLES) against the float64 NumPy/SciPy
    references of the table, written independently of the kernels the doctests run."""
    from fastact import elementwise
    assert name in elementwise.EXAMPLES, f"add {name!r} to fastact.elementwise.EXAMPLES: " \
        f"{elementwise.docstring_example(fastact.table.ENTRIES[name])!r}"
    want = elementwise.EXAMPLES.pop(name)
    try:
        # the references' values, as computed for an entry without a literal example
        assert want == elementwise.docstring_example(fastact.table.ENTRIES[name])
    finally:
        elementwise.EXAMPLES[name] = want
