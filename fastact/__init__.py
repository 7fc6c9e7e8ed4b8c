"""fastact: neural-network activations and small CNNs, fast, with Numba and no framework.

>>> import numpy as np, fastact as fa
>>> fa.relu(np.array([-1.0, 0.5, 7.0]), max_value=6.0)
array([0. , 0.5, 6. ])
"""

__version__ = "0.1.0"

from . import _runtime  # noqa: F401  (threading layer and kernel cache: before any kernel is built)
from . import config
from ._table import NAMES as _NAMES
from .elementwise import *  # noqa: F401,F403
from .elementwise import __all__ as _elementwise_all
from .batchnorm import batch_norm2d, batch_norm2d_backward
from .conv import conv2d, conv2d_backward, conv_output_shape, gemm_epilogue, im2col
from .gradcheck import GradcheckError, gradcheck, gradcheck_module
from .linear import linear, linear_backward
from .loss import (cross_entropy, cross_entropy_backward, log_softmax, log_softmax_backward, softmax,
                   softmax_backward)
from .pool import (adaptive_avg_pool2d, adaptive_avg_pool2d_backward, avg_pool2d, avg_pool2d_backward,
                   max_pool2d, max_pool2d_backward)
from . import models, nn, optim  # noqa: E402  (after the kernels they are built on)

#: names of the table's elementwise activations, in table order (``fastact.table.ENTRIES`` maps each
#: to its record: parameters, kinks, limits, references)
ACTIVATIONS = _NAMES

__all__ = ["__version__", "config", "nn", "optim", "models", "ACTIVATIONS",
           "GradcheckError", "gradcheck", "gradcheck_module", *_elementwise_all,
           "softmax", "log_softmax", "softmax_backward", "log_softmax_backward",
           "conv2d", "conv2d_backward", "conv_output_shape", "im2col", "gemm_epilogue",
           "max_pool2d", "max_pool2d_backward",
           "avg_pool2d", "avg_pool2d_backward", "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward",
           "batch_norm2d", "batch_norm2d_backward",
           "linear", "linear_backward", "cross_entropy", "cross_entropy_backward"]


#: submodules imported on first attribute access (``fastact.ufuncs``, ``fastact.capi``, ...): most
#: programs never need them, and some cost a second to import (capi builds cfuncs, cuda numba-cuda)
_LAZY_SUBMODULES = ("benchmark", "capi", "checkpoint", "cuda", "data", "distributed", "duck", "jit", "plots",
                    "safetensors_io", "stubs", "system", "table", "train", "ufuncs", "warmup")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
