"""fastact: neural-network activations and small CNNs, fast, with Numba and no framework.

>>> import numpy as np, fastact as fa
>>> fa.relu(np.array([-1.0, 0.5, 7.0]), max_value=6.0)
array([0. , 0.5, 6. ])
"""

__version__ = "0.1.0"

from . import _runtime  # noqa: F401  (threading layer and kernel cache: before any kernel is built)
from . import config
from ._table import ACTIVATIONS as _TABLE
from .elementwise import *  # noqa: F401,F403
from .elementwise import __all__ as _elementwise_all
from .gradcheck import GradcheckError, gradcheck

#: names of the table's elementwise activations (tests and benchmarks parametrise over these)
ACTIVATIONS = tuple(_TABLE)

__all__ = ["__version__", "config", "ACTIVATIONS", "GradcheckError", "gradcheck", *_elementwise_all]
