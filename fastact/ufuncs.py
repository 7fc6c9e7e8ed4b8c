"""The activations as real NumPy ufuncs, built on first access.

``fastact.ufuncs.relu`` is an ``np.ufunc`` whose inputs are ``(x, negative_slope, max_value,
threshold)``; ``fastact.ufuncs.relu_backward`` takes ``(dy, x, negative_slope, max_value, threshold,
subgradient)`` (``subgradient`` NaN selects the left derivative). Every parameter is a broadcasting
input, so the usual ufunc machinery applies: ``out=``, ``where=``, ``.outer``, ``.at``, dtype casting.
Parameters that are None in the public API are +inf here (``max_value``), and string choices their
number (``gelu``'s ``approximate``: 0 for 'none', 1 for 'tanh').

Example
-------
>>> import numpy as np
>>> from fastact import ufuncs
>>> isinstance(ufuncs.relu, np.ufunc)
True
>>> ufuncs.relu(np.array([-2.0, 3.0]), 0.1, np.inf, 0.0)
array([-0.2,  3. ])
"""

from . import _codegen
from ._table import BY_NAME

__all__ = sorted(BY_NAME) + sorted(f"{n}_backward" for n in BY_NAME)


def __getattr__(attr):
    backward = attr.endswith("_backward")
    name = attr[: -len("_backward")] if backward else attr
    if name not in BY_NAME:
        raise AttributeError(f"module 'fastact.ufuncs' has no attribute {attr!r}")
    uf = _codegen.get("ufunc", BY_NAME[name].name, backward)
    globals()[attr] = uf
    return uf


def __dir__():
    return __all__
