"""The activation table, for reading: one :class:`Activation` record per activation.

Every elementwise activation of fastact is one entry here (``fastact/_table.py`` holds the
definitions): its scalar forward and derivative (the Numba functions every kernel is generated from),
its parameters (:class:`Param`), kinks, limits at +-inf, accuracy bounds, float64 NumPy references,
citation and benchmark baselines. The tests, the benchmarks and the documentation are generated from
it, and so can a user's own code be.

>>> from fastact import table
>>> act = table.get("gelu")
>>> act.formula.split(";")[0]
'x * Phi(x) = 0.5 * x * erfc(-x / sqrt(2))'
>>> [p.name for p in table.get("relu").params]
['negative_slope', 'max_value', 'threshold']
>>> table.get("relu").limits(0.0, float("inf"), 0.0)
((0.0, inf), (0.0, 1.0))
"""

from . import _codegen
from ._table import ACTIVATIONS as ENTRIES
from ._table import BY_NAME, NAMES, Activation, Param, fast_variant, get

__all__ = ["ENTRIES", "BY_NAME", "NAMES", "Activation", "Param", "fast_variant", "get", "loop"]


def loop(name, backward=False, parallel=False):
    """The compiled 1-D loop of activation ``name``, without the Python driver around it.

    Forward: ``loop(x, y, *params)`` sets ``y[i] = f(x[i], *params)``; backward: ``loop(dy, x, dx,
    *params, *backward_params)`` sets ``dx[i] = dy[i] * f'(x[i], ...)``. The arrays are contiguous,
    1-D and of one float dtype, the parameters scalars of that dtype, as the kernels see them
    (``max_value=None`` is inf, a choice its number, ``subgradient=None`` NaN: see
    :meth:`Param.to_float`). ``parallel=True`` is the ``prange`` loop, which ``fastact.<name>``
    picks above ``config.PARALLEL_MIN_SIZE`` elements. Compiled on first use.

    >>> import numpy as np
    >>> from fastact import table
    >>> x = np.array([-1.0, 2.0]); y = np.empty(2)
    >>> table.loop("relu")(x, y, 0.0, np.inf, 0.0); y
    array([0., 2.])
    """
    return _codegen.get("loop", get(name).name, backward, parallel)
