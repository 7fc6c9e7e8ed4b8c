"""fastact on NVIDIA GPUs: ``@cuda.jit`` kernels compiled from the activation table's scalar functions.

Every activation's forward and backward, the bias + activation epilogues, im2col/col2im, a tiled
shared-memory GEMM and max-pooling are CUDA kernels built from the same Python definitions as the CPU
kernels (``fastact._table``; the table's ``fm.exp``/``fm.erfc``/... map to CUDA's libdevice here,
declared once in ``fastact._math.PRIMITIVES``). On top of them, with the CPU layers' signatures:
``conv2d`` / ``conv2d_backward``, ``linear`` / ``linear_backward`` (activation fused, forward and
backward), ``max_pool2d`` (+ backward), ``cross_entropy``, and :class:`DeviceNet`, which runs a whole
``fastact.nn.Sequential`` (a VGG from ``fastact.models.vgg``) forward and backward on the device.

Modules: ``_device`` (availability, device math, array checks, launches), ``elementwise``, ``gemm``,
``conv``, ``linear``, ``pool``, ``loss``, ``net``; this package only re-exports them.

Inputs are Numba device arrays or any object exposing ``__cuda_array_interface__`` (CuPy, PyTorch);
results are Numba device arrays (``.copy_to_host()``, or ``torch.as_tensor(result, device='cuda')``).
All kernels use grid-stride loops with 64-bit indices. Without a GPU, set ``NUMBA_ENABLE_CUDASIM=1``
to run them on Numba's CUDA simulator (slow: for tests on small arrays).

Needs the ``cuda`` extra (``pip install 'fastact[cuda]'``, i.e. numba-cuda); without it, or without a GPU,
:func:`is_available` is False, :func:`status` says why in words, and every other function raises a
``RuntimeError`` that says the same.

The launch settings ``THREADS_PER_BLOCK``, ``MAX_BLOCKS`` and ``TILE`` may be set on this package
(``fastact.cuda.TILE = 8``); they are read at each launch.
"""

from . import elementwise as _elementwise
from ._device import MAX_BLOCKS, THREADS_PER_BLOCK, TILE, is_available, status, to_device
from .conv import conv2d, conv2d_backward
from .elementwise import *  # noqa: F401,F403  (every activation and its backward)
from .gemm import matmul
from .linear import linear, linear_backward
from .loss import cross_entropy
from .net import DeviceNet
from .pool import max_pool2d, max_pool2d_backward

__all__ = ["is_available", "status", "to_device", "conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward",
           "linear", "linear_backward", "matmul", "cross_entropy", "DeviceNet", "THREADS_PER_BLOCK",
           "MAX_BLOCKS", "TILE", *_elementwise.__all__]
