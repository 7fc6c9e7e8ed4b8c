"""Weight initialisation, PyTorch's formulas (``torch.nn.init``), in place on an ndarray or a Parameter.

Shape key for a weight: dim 0 = outputs, dim 1 = inputs, the rest the receptive field (a conv
kernel's R x S). ``fan_in = shape[1] * prod(shape[2:])``, ``fan_out = shape[0] * prod(shape[2:])``.

* ``kaiming_*``: ``std = gain / sqrt(fan)`` (He et al.), ``fan`` the fan-in (keeps the forward's
  variance) or the fan-out (the backward's);
* ``xavier_*``: ``std = gain * sqrt(2 / (fan_in + fan_out))`` (Glorot and Bengio);
* a uniform variant draws from ``[-sqrt(3) * std, sqrt(3) * std]`` (the same std).

Every function takes the array (or a :class:`fastact.nn.Parameter`, whose ``.data`` is written), fills
it in place and returns what it was given. ``rng`` is a ``np.random.Generator``, an int seed or None
(fresh entropy). Values are drawn in float64 and rounded once to the array's dtype.
"""

import math
import numbers
import warnings

import numpy as np

__all__ = ["calculate_gain", "kaiming_normal_", "kaiming_uniform_", "xavier_normal_", "xavier_uniform_",
           "normal_", "uniform_", "constant_", "zeros_", "ones_", "calculate_fan_in_and_fan_out"]

_LINEAR = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
           "conv_transpose3d", "sigmoid")


def calculate_gain(nonlinearity, param=None):
    """The recommended gain for a nonlinearity, as ``torch.nn.init.calculate_gain``.

    linear, conv*, conv_transpose*, sigmoid: 1; tanh: 5/3; relu: sqrt(2);
    leaky_relu: sqrt(2 / (1 + a^2)) with the negative slope ``a = param`` (default 0.01); selu: 3/4.

    Examples
    --------
    >>> from fastact.nn import init
    >>> init.calculate_gain("relu"), init.calculate_gain("leaky_relu", 1.0), init.calculate_gain("tanh")
    (1.4142135623730951, 1.0, 1.6666666666666667)
    """
    if nonlinearity in _LINEAR:
        return 1
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            negative_slope = 0.01
        elif not isinstance(param, bool) and isinstance(param, (numbers.Integral, numbers.Real)):
            negative_slope = param
        else:
            raise ValueError(f"negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + negative_slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def _array(w):
    """The ndarray to fill: ``w`` itself or a Parameter's ``.data``; TypeError otherwise."""
    a = getattr(w, "data", w) if not isinstance(w, np.ndarray) else w
    if not isinstance(a, np.ndarray):
        raise TypeError(f"init: expected a NumPy array or a fastact.nn.Parameter, got {type(w).__name__}")
    if not a.flags.writeable:
        raise ValueError("init: the array is read-only")
    return a


def _rng(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, (numbers.Integral, np.integer)) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise TypeError(f"init: rng must be a numpy.random.Generator, an int seed or None, "
                    f"got {type(rng).__name__}")


def calculate_fan_in_and_fan_out(w):
    """(fan_in, fan_out) of a weight of 2 or more dimensions; ValueError for fewer, as PyTorch.

    Examples
    --------
    >>> import numpy as np
    >>> from fastact.nn import init
    >>> init.calculate_fan_in_and_fan_out(np.empty((16, 8, 3, 3)))
    (72, 144)
    """
    shape = _array(w).shape if not isinstance(w, tuple) else w
    if len(shape) < 2:
        raise ValueError("Fan in and fan out can not be computed for tensor with fewer than 2 dimensions")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _fan(w, mode):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {mode} not supported, please use one of fan_in, fan_out")
    fan_in, fan_out = calculate_fan_in_and_fan_out(w)
    return fan_in if mode == "fan_in" else fan_out


def _fill_normal(w, std, rng):
    a = _array(w)
    a[...] = _rng(rng).standard_normal(a.shape) * std
    return w


def _fill_uniform(w, bound, rng):
    a = _array(w)
    a[...] = _rng(rng).uniform(-bound, bound, a.shape)
    return w


def _empty(w):
    """True (with PyTorch's warning) for a zero-element weight, which every initialiser leaves as is."""
    if _array(w).size == 0:
        warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=3)
        return True
    return False


def _kaiming_std(w, a, mode, nonlinearity):
    fan = _fan(w, mode)
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_normal_(w, a=0, mode="fan_in", nonlinearity="leaky_relu", rng=None):
    """Fill ``w`` from N(0, std^2), ``std = gain / sqrt(fan)`` (He initialisation).

    ``a`` is the leaky ReLU's negative slope (the gain's parameter), ``mode`` 'fan_in' or 'fan_out'.

    Examples
    --------
    >>> import numpy as np
    >>> from fastact.nn import init
    >>> w = init.kaiming_normal_(np.empty((256, 128, 3, 3), np.float32), rng=0)
    >>> round(float(w.std() * np.sqrt(128 * 9 / 2)), 2)  # std = sqrt(2 / fan_in)
    1.0
    """
    if _empty(w):
        return w
    return _fill_normal(w, _kaiming_std(w, a, mode, nonlinearity), rng)


def kaiming_uniform_(w, a=0, mode="fan_in", nonlinearity="leaky_relu", rng=None):
    """Fill ``w`` from U(-bound, bound), ``bound = gain * sqrt(3 / fan)`` (He initialisation).

    Examples
    --------
    >>> import numpy as np
    >>> from fastact.nn import init
    >>> w = init.kaiming_uniform_(np.empty((64, 48)), a=np.sqrt(5), rng=0)  # torch's Linear default
    >>> bool(np.abs(w).max() <= 1 / np.sqrt(48))
    True
    """
    if _empty(w):
        return w
    return _fill_uniform(w, math.sqrt(3.0) * _kaiming_std(w, a, mode, nonlinearity), rng)


def xavier_normal_(w, gain=1.0, rng=None):
    """Fill ``w`` from N(0, std^2), ``std = gain * sqrt(2 / (fan_in + fan_out))`` (Glorot).

    Examples
    --------
    >>> import numpy as np
    >>> from fastact.nn import init
    >>> w = init.xavier_normal_(np.empty((300, 500)), rng=0)
    >>> round(float(w.std() / np.sqrt(2 / 800)), 2)
    1.0
    """
    fan_in, fan_out = calculate_fan_in_and_fan_out(w)
    if fan_in + fan_out == 0:  # a zero-element weight: nothing to fill
        return w
    return _fill_normal(w, gain * math.sqrt(2.0 / float(fan_in + fan_out)), rng)


def xavier_uniform_(w, gain=1.0, rng=None):
    """Fill ``w`` from U(-bound, bound), ``bound = gain * sqrt(6 / (fan_in + fan_out))`` (Glorot).

    Examples
    --------
    >>> import numpy as np
    >>> from fastact.nn import init
    >>> w = init.xavier_uniform_(np.empty((30, 50)), rng=0)
    >>> bool(np.abs(w).max() <= np.sqrt(6 / 80))
    True
    """
    fan_in, fan_out = calculate_fan_in_and_fan_out(w)
    if fan_in + fan_out == 0:  # a zero-element weight: nothing to fill
        return w
    return _fill_uniform(w, gain * math.sqrt(6.0 / float(fan_in + fan_out)), rng)


def normal_(w, mean=0.0, std=1.0, rng=None):
    """Fill ``w`` with draws from N(mean, std^2), as ``torch.nn.init.normal_`` (torchvision's VGG
    initialises its Linear layers with N(0, 0.01^2)).

    Examples
    --------
    >>> import numpy as np
    >>> from fastact.nn import init
    >>> w = init.normal_(np.empty((256, 256)), std=0.01, rng=0)
    >>> round(float(w.std()), 3)
    0.01
    """
    if _empty(w):
        return w
    a = _array(w)
    a[...] = _rng(rng).normal(mean, std, a.shape)
    return w


def uniform_(w, a=0.0, b=1.0, rng=None):
    """Fill ``w`` with draws from U(a, b), as ``torch.nn.init.uniform_``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastact.nn import init
    >>> w = init.uniform_(np.empty(1000), -2.0, 2.0, rng=0)
    >>> bool(w.min() >= -2.0 and w.max() < 2.0)
    True
    """
    if _empty(w):
        return w
    arr = _array(w)
    arr[...] = _rng(rng).uniform(a, b, arr.shape)
    return w


def constant_(w, val):
    """Fill ``w`` with ``val``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastact.nn import init
    >>> init.constant_(np.empty(3), 0.5)
    array([0.5, 0.5, 0.5])
    """
    _array(w)[...] = val
    return w


def zeros_(w):
    """Fill ``w`` with 0.

    Examples
    --------
    >>> import numpy as np
    >>> from fastact.nn import init
    >>> init.zeros_(np.empty(2))
    array([0., 0.])
    """
    return constant_(w, 0)


def ones_(w):
    """Fill ``w`` with 1.

    Examples
    --------
    >>> import numpy as np
    >>> from fastact.nn import init
    >>> init.ones_(np.empty(2))
    array([1., 1.])
    """
    return constant_(w, 1)
