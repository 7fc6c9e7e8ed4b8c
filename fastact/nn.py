"""Modules with explicit backward passes, PyTorch-shaped: ``forward(x)``, ``backward(dy) -> dx``.

``backward`` accumulates parameter gradients into ``param.grad`` (as ``loss.backward()`` does in
PyTorch) and returns the gradient of the module's input. Each module keeps what its backward needs from
the last forward in ``self._saved`` (an explicit tuple, dropped in eval mode where nothing is saved).

:class:`Sequential` runs a ``Conv2d``/``Linear`` followed by an activation module as one fused kernel
(GEMM + bias + activation in one epilogue, and activation backward + bias gradient in one pass); its
``state_dict`` keys are those of the same ``torch.nn.Sequential`` ("0.weight", "0.bias", "3.weight"...).
A :class:`BatchNorm2d` followed by a default :class:`ReLU` or a :class:`ReLU6` runs as one fused pass
too.

Modules hold parameters (:class:`Parameter`: trained, in ``parameters()``) and buffers (plain arrays
registered with :meth:`Module.register_buffer`: state that is saved but not trained, such as
BatchNorm's running statistics). ``state_dict()`` lists, as PyTorch does, a module's parameters, then
its buffers, then each child's entries under ``<child name>.`` in assignment order.

Writing your own module: subclass :class:`Module`, call ``super().__init__()``, assign children and
parameters as attributes (their names become the state_dict keys), and write ``forward`` and
``backward`` (``backward(dy)`` accumulates the parameters' ``grad`` and returns the input's gradient).
``train()``, ``eval()``, ``zero_grad()``, ``astype()`` and ``load_state_dict()`` then cover the children:

>>> import numpy as np
>>> from fastact import nn
>>> class Block(nn.Module):
...     def __init__(self, channels):
...         super().__init__()
...         self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False, seed=0)
...         self.bn = nn.BatchNorm2d(channels)
...     def forward(self, x):
...         return self.bn(self.conv(x), activation="relu", residual=x)
...     def backward(self, dy):
...         # y = relu(bn(conv(x))) + x: the skip's gradient is dy itself
...         return self.conv.backward(self.bn.backward(dy)) + dy
>>> net = nn.Sequential(Block(4), Block(4))
>>> list(net.state_dict())[:5]
['0.conv.weight', '0.bn.weight', '0.bn.bias', '0.bn.running_mean', '0.bn.running_var']
>>> x = np.random.default_rng(0).standard_normal((2, 4, 5, 5)).astype(np.float32)
>>> net(x).shape, net.backward(np.ones_like(x)).shape
((2, 4, 5, 5), (2, 4, 5, 5))
>>> int(net[1].bn.num_batches_tracked)
1
"""

import sys

import numpy as np

from . import table as _table  # the public table (fastact.table)
from . import elementwise as ew
from . import init
from .batchnorm import batch_norm2d, batch_norm2d_backward
from .conv import ALGORITHMS, conv2d, conv2d_backward
from .linear import linear, linear_backward
from .loss import cross_entropy, cross_entropy_backward
from .pool import (adaptive_avg_pool2d, adaptive_avg_pool2d_backward, avg_pool2d, avg_pool2d_backward,
                   max_pool2d, max_pool2d_backward, max_pool2d_flat_indices)

__all__ = ["Parameter", "Module", "Sequential", "Residual", "Identity", "SqueezeExcitation", "Conv2d", "Linear",
           "BatchNorm2d",
           "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Dropout", "Flatten", "Activation", "PReLU",
           "CrossEntropyLoss", "ACTIVATION_MODULES", "can_die", "is_plain_relu", "fold_batchnorm", "folding_pays",
           "Conv2dNormActivation", "init"]


class Parameter:
    """A trainable array: ``.data`` and its gradient ``.grad`` (same shape and dtype, starts at 0)."""

    def __init__(self, data):
        self.data = np.ascontiguousarray(data)
        self.grad = np.zeros_like(self.data)

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: registers child modules, parameters and buffers in assignment order, like
    torch.nn.Module (see the module docstring for writing one)."""

    def __init__(self):
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_params", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_non_persistent", set())
        self.training = True
        self._saved = None

    def __setattr__(self, name, value):
        if "_params" not in self.__dict__:
            if isinstance(value, (Parameter, Module)):
                raise AttributeError(f"cannot assign {name!r} before Module.__init__() is called "
                                     f"(call super().__init__() first in {type(self).__name__}.__init__)")
            object.__setattr__(self, name, value)
            return
        params, modules, buffers = self._params, self._modules, self._buffers
        if isinstance(value, Parameter):
            modules.pop(name, None)
            buffers.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None)
            buffers.pop(name, None)
            modules[name] = value
        elif name in params:
            if value is not None:
                raise TypeError(f"cannot assign a {type(value).__name__} as parameter {name!r} "
                                f"(a fastact.nn.Parameter or None expected)")
            del params[name]
        elif name in modules:
            if value is not None:
                raise TypeError(f"cannot assign a {type(value).__name__} as child module {name!r} "
                                f"(a fastact.nn.Module or None expected)")
            del modules[name]
        elif name in buffers:
            if value is None:
                del buffers[name]
            else:
                if not isinstance(value, np.ndarray):
                    raise TypeError(f"cannot assign a {type(value).__name__} as buffer {name!r} "
                                    f"(a NumPy array or None expected)")
                buffers[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        for d in (self._params, self._modules, self._buffers):
            d.pop(name, None)
        object.__delattr__(self, name)

    def register_buffer(self, name, array, persistent=True):
        """Register ``array`` (an ndarray, kept as is: no copy) as buffer ``name``: saved in
        ``state_dict`` (unless ``persistent=False``) and converted by ``astype`` (floating-point
        buffers only), not trained.

        Examples
        --------
        >>> import numpy as np
        >>> from fastact import nn
        >>> m = nn.Module()
        >>> m.register_buffer("count", np.zeros((), np.int64))
        >>> m.state_dict()
        {'count': array(0)}
        """
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"register_buffer: buffer name must be a non-empty string without '.', "
                             f"got {name!r}")
        if name in self._params or name in self._modules:
            raise KeyError(f"register_buffer: attribute {name!r} already exists as a "
                           f"{'parameter' if name in self._params else 'child module'}")
        if array is not None and not isinstance(array, np.ndarray):
            raise TypeError(f"register_buffer: {name!r} must be a NumPy array or None, got "
                            f"{type(array).__name__}")
        self._buffers[name] = array
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)
        object.__setattr__(self, name, array)

    def __call__(self, x, *args, **kwargs):
        if type(x) is not np.ndarray:
            from .duck import is_duck, module_call
            if is_duck(x):  # a Dask array: lazy eval-mode inference, one task per batch chunk
                return module_call(self, x, args, kwargs)
        return self.forward(x, *args, **kwargs)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def named_children(self):
        yield from self._modules.items()

    def children(self):
        return list(self._modules.values())

    def named_parameters(self, prefix=""):
        for name, p in self._params.items():
            yield prefix + name, p
        for name, m in self._modules.items():
            yield from m.named_parameters(prefix + name + ".")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        for name, b in self._buffers.items():
            if b is not None:
                yield prefix + name, b
        for name, m in self._modules.items():
            yield from m.named_buffers(prefix + name + ".")

    def buffers(self):
        return [b for _, b in self.named_buffers()]

    def modules(self):
        yield self
        for m in self._modules.values():
            yield from m.modules()

    def named_modules(self, prefix=""):
        """(name, module) for this module ("" or ``prefix``) and every descendant ("resblocks.0.conv")."""
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(prefix + ("." if prefix else "") + name)

    def apply(self, fn):
        """Call ``fn(module)`` on every descendant, then on this module (as PyTorch); returns self."""
        for m in self._modules.values():
            m.apply(fn)
        fn(self)
        return self

    def _state_items(self, prefix=""):
        """(key, owner dict, name) in PyTorch's state_dict order: own parameters, own buffers, then
        each child recursively."""
        for name, p in self._params.items():
            yield prefix + name, self._params, name
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent:
                yield prefix + name, self._buffers, name
        for name, m in self._modules.items():
            yield from m._state_items(prefix + name + ".")

    def state_dict(self):
        """``{name: array}`` (copies), with PyTorch's key names and order (parameters, then buffers,
        then children)."""
        out = {}
        for key, owner, name in self._state_items():
            v = owner[name]
            out[key] = (v.data if isinstance(v, Parameter) else v).copy()
        return out

    def load_state_dict(self, state, strict=True):
        """Copy arrays into the parameters and buffers; shapes must match, dtypes are converted to
        the module's (``num_batches_tracked`` stays int64). Nothing is written unless every check
        passes. ``strict=False`` ignores missing and unexpected keys."""
        own = {key: (owner, name) for key, owner, name in self._state_items()}
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):  # as PyTorch's strict=True: every key named
            named = [f"{what} keys {keys}" for what, keys in (("missing", missing), ("unexpected", unexpected))
                     if keys]
            raise ValueError(f"load_state_dict into {type(self).__name__}: {', '.join(named)} "
                             f"(strict=False ignores them)")
        targets = []
        for k, (owner, name) in own.items():
            if k not in state:
                continue
            dst = owner[name]
            dst = dst.data if isinstance(dst, Parameter) else dst
            v = np.asarray(state[k])
            if v.shape != dst.shape:
                raise ValueError(f"load_state_dict: {k} has shape {v.shape} in the state dict but "
                                 f"{dst.shape} in the module")
            if v.dtype.kind not in "biuf":
                raise TypeError(f"load_state_dict: {k} has dtype {v.dtype}, not a number type")
            targets.append((dst, v))
        for dst, v in targets:
            dst[...] = v
        return self

    def zero_grad(self):
        for p in self.parameters():
            p.grad[...] = 0

    def train(self, mode=True):
        for m in self.modules():
            m.training = bool(mode)
            if not mode:
                m._saved = None
        return self

    def eval(self):
        return self.train(False)

    def astype(self, dtype):
        """Convert every parameter (and its gradient) and every floating-point buffer to ``dtype``
        (integer buffers such as ``num_batches_tracked`` keep theirs); returns the module."""
        for m in self.modules():
            for p in m._params.values():
                p.data = np.ascontiguousarray(p.data, dtype=dtype)
                p.grad = np.zeros_like(p.data)
            for name, b in list(m._buffers.items()):
                if b is not None and b.dtype.kind == "f":
                    setattr(m, name, np.ascontiguousarray(b, dtype=dtype))
            m._saved = None
        return self

    def extra_repr(self):
        return ""

    def __repr__(self):
        if not self._modules:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"  ({k}): {m!r}".replace("\n", "\n  ") for k, m in self._modules.items()]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


def _accumulate(param, g):
    param.grad += g


def _need_saved(module):
    if module._saved is None:
        raise RuntimeError(f"{type(module).__name__}.backward called without a forward in training mode")
    return module._saved


class Conv2d(Module):
    """2-D convolution, weight (out_channels, in_channels // groups, kh, kw) as PyTorch
    (:func:`fastact.conv2d`: ``padding`` an int, a pair, ``'same'`` or ``'valid'``; ``dilation``;
    ``groups``, ``groups == in_channels`` being a depthwise convolution).

    Initialised like ``torch.nn.Conv2d`` (Kaiming-uniform with a = sqrt(5)) from ``seed``;
    :func:`fastact.models.vgg` re-initialises with Kaiming-normal. ``algorithm`` is the method of its
    forward and backward, as :func:`fastact.conv2d`'s (``'auto'``, ``'im2col'`` or ``'winograd'``).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, *, dtype=np.float32, seed=None, algorithm="auto"):
        super().__init__()
        if algorithm not in ALGORITHMS:
            raise ValueError(f"Conv2d: algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        self.algorithm = algorithm
        kh, kw = (kernel_size, kernel_size) if np.isscalar(kernel_size) else tuple(kernel_size)
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("kh", kh), ("kw", kw)):
            if int(v) < 1:
                raise ValueError(f"Conv2d: {name} must be >= 1, got {v}")
        if int(groups) < 1:
            raise ValueError(f"Conv2d: groups must be >= 1, got {groups}")
        if in_channels % groups:
            raise ValueError(f"Conv2d: in_channels must be divisible by groups ({in_channels}, {groups})")
        if out_channels % groups:
            raise ValueError(f"Conv2d: out_channels must be divisible by groups ({out_channels}, {groups})")
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise ValueError(f"Conv2d: padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
        if padding == "same" and stride not in (1, (1, 1)):
            raise ValueError("Conv2d: padding='same' is not supported for strided convolutions")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        self.dilation, self.groups = dilation, int(groups)
        rng = np.random.default_rng(seed)
        fan_in = in_channels // groups * kh * kw
        bound = 1.0 / np.sqrt(fan_in)
        self.weight = Parameter(rng.uniform(-bound, bound, (out_channels, in_channels // groups, kh, kw))
                                .astype(dtype))
        if bias:
            self.bias = Parameter(rng.uniform(-bound, bound, out_channels).astype(dtype))
        else:
            self.bias = None

    def extra_repr(self):
        extra = "" if self.dilation in (1, (1, 1)) else f", dilation={self.dilation}"
        extra += "" if self.groups == 1 else f", groups={self.groups}"
        extra += "" if self.algorithm == "auto" else f", algorithm={self.algorithm!r}"
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}{extra}")

    def forward(self, x, activation=None, activation_params=None):
        bias = None if self.bias is None else self.bias.data
        if not self.training:
            return conv2d(x, self.weight.data, bias, self.stride, self.padding, self.dilation, self.groups,
                          activation=activation, activation_params=activation_params, algorithm=self.algorithm)
        # training keeps the pre-activation for the backward (without an activation it is y itself,
        # and the backward does not read it)
        y, z = conv2d(x, self.weight.data, bias, self.stride, self.padding, self.dilation, self.groups,
                      activation=activation, activation_params=activation_params, return_preactivation=True,
                      algorithm=self.algorithm)
        self._saved = (np.ascontiguousarray(x, dtype=y.dtype), None if activation is None else z,
                       activation, activation_params)
        return y

    def backward(self, dy, need_input_grad=True):
        x, z, activation, params = _need_saved(self)
        dx, dw, db = conv2d_backward(dy, x, self.weight.data, self.stride, self.padding, self.dilation,
                                     self.groups, preactivation=z,
                                     activation=activation, activation_params=params, need_input_grad=need_input_grad,
                                     algorithm=self.algorithm)
        _accumulate(self.weight, dw)
        if self.bias is not None:
            _accumulate(self.bias, db)
        return dx


class Linear(Module):
    """Fully connected layer, weight (out_features, in_features) as PyTorch; x (*, in_features) of any
    leading shape ((in_features,) and empty batches too) gives (*, out_features)."""

    def __init__(self, in_features, out_features, bias=True, *, dtype=np.float32, seed=None):
        super().__init__()
        if int(in_features) < 1 or int(out_features) < 1:
            raise ValueError(f"Linear: sizes must be >= 1, got {in_features}, {out_features}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(in_features)
        self.weight = Parameter(rng.uniform(-bound, bound, (out_features, in_features)).astype(dtype))
        self.bias = Parameter(rng.uniform(-bound, bound, out_features).astype(dtype)) if bias else None

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}"

    def forward(self, x, activation=None, activation_params=None):
        bias = None if self.bias is None else self.bias.data
        if not self.training:
            return linear(x, self.weight.data, bias, activation=activation,
                          activation_params=activation_params)
        y, z = linear(x, self.weight.data, bias, activation=activation,
                      activation_params=activation_params, return_preactivation=True)
        self._saved = (np.asarray(x, dtype=y.dtype), None if activation is None else z, activation,
                       activation_params)
        return y

    def backward(self, dy, need_input_grad=True):
        x, z, activation, params = _need_saved(self)
        dx, dw, db = linear_backward(dy, x, self.weight.data, preactivation=z, activation=activation,
                                     activation_params=params, need_input_grad=need_input_grad)
        _accumulate(self.weight, dw)
        if self.bias is not None:
            _accumulate(self.bias, db)
        return dx


class _Pool2d(Module):
    """A window pool's hyperparameters, shared by MaxPool2d and AvgPool2d: ``stride`` defaults to the
    kernel size (stored so, as PyTorch)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False):
        super().__init__()
        self.kernel_size, self.padding, self.ceil_mode = kernel_size, padding, ceil_mode
        self.stride = kernel_size if stride is None else stride

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Maximum over windows, as ``torch.nn.MaxPool2d`` (the same arguments in the same order);
    x (N, C, H, W) or unbatched (C, H, W). With ``return_indices`` the forward returns ``(y, indices)``,
    the indices as PyTorch's (flat ``h * W + w``, int64); the module itself keeps the compact
    window-local ones for its backward."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__(kernel_size, stride, padding, ceil_mode)
        self.dilation, self.return_indices = dilation, return_indices

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")

    def _window(self):
        return self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode

    def forward(self, x):
        if not self.training and not self.return_indices:
            return max_pool2d(x, *self._window())
        # the winners' positions, so that backward scatters dy without searching the windows again
        y, indices = max_pool2d(x, *self._window(), return_indices="window")
        if self.training:
            # x's shape and dtype, not x: the input would otherwise stay alive until the backward only
            # for them (the next layer keeps y, and the indices are a quarter of y's bytes or less)
            self._saved = (np.shape(x), np.result_type(x), indices)
        if self.return_indices:
            return y, max_pool2d_flat_indices(indices, np.shape(x), *self._window())
        return y

    def backward(self, dy, need_input_grad=True):
        shape, dtype, indices = _need_saved(self)
        dy = np.asarray(dy)
        dy = dy.astype(np.result_type(dy.dtype, dtype), copy=False)  # dx's dtype as from x itself
        return max_pool2d_backward(dy, shape, *self._window(), indices=indices)


class AvgPool2d(_Pool2d):
    """Average over windows, as ``torch.nn.AvgPool2d`` (the same arguments in the same order:
    ``ceil_mode``, ``count_include_pad``, ``divisor_override``); x (N, C, H, W) or unbatched (C, H, W)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__(kernel_size, stride, padding, ceil_mode)
        self.count_include_pad, self.divisor_override = count_include_pad, divisor_override

    def _window(self):
        return (self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                self.divisor_override)

    def forward(self, x):
        y = avg_pool2d(x, *self._window())
        if self.training:
            self._saved = (np.shape(x),)
        return y

    def backward(self, dy, need_input_grad=True):
        (shape,) = _need_saved(self)
        return avg_pool2d_backward(dy, shape, *self._window())


class AdaptiveAvgPool2d(Module):
    """Average over ``output_size`` bins, as ``torch.nn.AdaptiveAvgPool2d``; ``1`` is the global
    average pool. Bin i of H spans ``[floor(i*H/out), ceil((i+1)*H/out))``."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def extra_repr(self):
        return f"output_size={self.output_size}"

    def forward(self, x):
        y = adaptive_avg_pool2d(x, self.output_size)
        if self.training:
            self._saved = (np.shape(x),)
        return y

    def backward(self, dy, need_input_grad=True):
        (shape,) = _need_saved(self)
        return adaptive_avg_pool2d_backward(dy, shape)


class Dropout(Module):
    """Zeroes each element with probability ``p`` in training and scales the others by ``1/(1-p)``
    (inverted dropout, as ``torch.nn.Dropout``); the identity in eval. The mask comes from
    ``np.random.default_rng(seed)``, one generator per module, and the backward uses the same mask."""

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.integer, np.floating)) \
                or not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p!r}")
        self.p = float(p)
        self.rng = np.random.default_rng(seed)

    def extra_repr(self):
        return f"p={self.p}"

    def forward(self, x):
        x = np.asarray(x)
        if not self.training or self.p == 0.0:
            if self.training:
                self._saved = (None,)
            return x.copy()
        dt = x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)
        if self.p == 1.0:
            mask = np.zeros(x.shape, dtype=dt)
        else:
            keep = self.rng.random(x.shape, dtype=np.float32 if dt == np.float32 else np.float64)
            mask = (keep >= self.p).astype(dt)  # P(keep) = 1 - p
            mask *= dt.type(1.0 / (1.0 - self.p))
        self._saved = (mask,)
        return x * mask  # NaN stays NaN where it is dropped, as in PyTorch

    def backward(self, dy, need_input_grad=True):
        (mask,) = _need_saved(self)
        dy = np.asarray(dy)
        return dy.copy() if mask is None else dy * mask


class BatchNorm2d(Module):
    """Batch normalisation over (N, H, W) per channel, as ``torch.nn.BatchNorm2d``.

    Parameters ``weight`` (ones) and ``bias`` (zeros) when ``affine``; buffers ``running_mean``
    (zeros), ``running_var`` (ones) and ``num_batches_tracked`` (int64 0-d) when
    ``track_running_stats``. In training the batch statistics normalise and the running ones move by
    ``momentum`` (with the unbiased variance), or by the cumulative average ``1/num_batches_tracked``
    when ``momentum`` is None; in eval the running statistics normalise (the batch ones without
    ``track_running_stats``).

    ``forward(x, activation=None, residual=None)``: ``activation='relu'`` (or ``'relu6'``) and a
    ``residual`` array fuse ``relu(bn(x)) + residual`` in the same pass (:func:`fastact.batch_norm2d`); ``backward(dy)``
    returns dx, and the residual's gradient is ``dy`` itself. The forward keeps its input for the
    backward in eval mode too (a backward with frozen statistics, ``dx = dy * weight / sigma``).

    ``sync``: None (the default: the statistics of this process's batch, as PyTorch's DDP), or an
    object that synchronises the training statistics over processes (SyncBatchNorm):
    ``sync.stats(x) -> (mean, var, count)`` of the whole batch, x being one part of it, and
    ``sync.sums(sums, count) -> (sums, count)`` for the backward's per-channel sums
    (:func:`fastact.batch_norm2d_backward`'s ``reduce``). :func:`fastact.distributed.sync_batchnorm`
    sets it on every BatchNorm2d of a model; it is not part of the state.

    Examples
    --------
    >>> import numpy as np
    >>> from fastact import nn
    >>> bn = nn.BatchNorm2d(2)
    >>> y = bn(np.arange(16, dtype=np.float32).reshape(2, 2, 2, 2))
    >>> y.mean(axis=(0, 2, 3)).round(6) + 0.0, bn.running_mean, bn.num_batches_tracked
    (array([0., 0.], dtype=float32), array([0.55, 0.95], dtype=float32), array(1))
    >>> list(bn.state_dict())
    ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked']
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 dtype=np.float32):
        super().__init__()
        if isinstance(num_features, (bool, np.bool_)) or not isinstance(num_features, (int, np.integer)) \
                or num_features < 1:
            raise ValueError(f"BatchNorm2d: num_features must be a positive int, got {num_features!r}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        C = self.num_features
        if self.affine:
            self.weight = Parameter(np.ones(C, dtype=dtype))
            self.bias = Parameter(np.zeros(C, dtype=dtype))
        else:
            self.weight = None
            self.bias = None
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(C, dtype=dtype))
            self.register_buffer("running_var", np.ones(C, dtype=dtype))
            self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self.sync = None

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            self.weight.data[...] = 1
            self.bias.data[...] = 0

    def forward(self, x, activation=None, residual=None):
        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"expected 4D input (got {x.ndim}D input)")
        if x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2d: x has {x.shape[1]} channels (shape {x.shape}), but the "
                             f"module has num_features={self.num_features}")
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            if x.shape[0] * x.shape[2] * x.shape[3] == 1:
                raise ValueError(f"Expected more than 1 value per channel when training, got input "
                                 f"size {x.shape}")
            self.num_batches_tracked += 1
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        use_batch = self.training or not self.track_running_stats
        track = self.track_running_stats and (self.training or not use_batch)
        w = None if self.weight is None else self.weight.data
        b = None if self.bias is None else self.bias.data
        stats = self.sync.stats(x) if self.sync is not None and self.training else None
        y, saved = batch_norm2d(x, self.running_mean if track else None,
                                self.running_var if track else None, w, b, use_batch, momentum,
                                self.eps, activation=activation, residual=residual, return_saved=True,
                                batch_stats=stats)
        self._saved = (x, saved)
        return y

    def backward(self, dy, need_input_grad=True):
        x, saved = _need_saved(self)
        w = None if self.weight is None else self.weight.data
        b = None if self.bias is None else self.bias.data
        reduce = self.sync.sums if self.sync is not None and saved.training else None
        dx, dw, db = batch_norm2d_backward(dy, x, w, b, saved, need_input_grad=need_input_grad, reduce=reduce)[:3]
        if self.affine:
            _accumulate(self.weight, dw)
            _accumulate(self.bias, db)
        return dx


class Residual(Module):
    """``block(x) + x``; backward ``dy + block.backward(dy)``.

    The block is the child ``block``, so its state_dict keys are ``block.<key>`` (``block.0.weight``
    for a Sequential block): the name a hand-written ``self.block = block`` gives, which keeps the
    keys unambiguous when a Residual sits beside other children, and loads into a PyTorch module
    written that way. (PyTorch has no Residual module to copy keys from.)

    Examples
    --------
    >>> import numpy as np
    >>> from fastact import nn
    >>> r = nn.Residual(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, seed=0), nn.ReLU()))
    >>> list(r.state_dict())
    ['block.0.weight', 'block.0.bias']
    >>> r(np.zeros((1, 2, 4, 4), np.float32)).shape
    (1, 2, 4, 4)
    """

    def __init__(self, block):
        super().__init__()
        if not isinstance(block, Module):
            raise TypeError(f"Residual: block must be a Module, got {type(block).__name__}")
        self.block = block

    def forward(self, x):
        x = np.asarray(x)
        y = self.block(x)
        if np.shape(y) != x.shape:
            raise ValueError(f"Residual: the block maps shape {x.shape} to {np.shape(y)}; the skip "
                             f"needs them equal")
        return y + x

    def backward(self, dy, need_input_grad=True):
        dy = np.asarray(dy)
        return self.block.backward(dy) + dy


class Identity(Module):
    """``y = x``, as ``torch.nn.Identity`` (its arguments are accepted and ignored): the placeholder a
    network puts where a block has nothing to do (a shortcut without projection, a removed head).

    >>> import numpy as np
    >>> from fastact import nn
    >>> nn.Identity(54, unused="x")(np.ones(3)).tolist()
    [1.0, 1.0, 1.0]
    """

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x

    def backward(self, dy, need_input_grad=True):
        return dy


class SqueezeExcitation(Module):
    """Squeeze-and-excitation (Hu et al., 2018) with torchvision's semantics and keys:
    ``x * scale_activation(fc2(activation(fc1(avgpool(x)))))``, ``avgpool`` the global average pool,
    ``fc1`` (``input_channels -> squeeze_channels``) and ``fc2`` (back) 1x1 convolutions with bias.

    ``activation`` and ``scale_activation`` are module classes (or any callable returning a module),
    called without arguments: MobileNetV3 uses ``nn.ReLU`` and ``nn.Hardsigmoid``. Keys ``fc1.weight``,
    ``fc1.bias``, ``fc2.weight``, ``fc2.bias``, so torchvision's weights load unchanged. The two
    convolutions are initialised as ``nn.Conv2d`` from seeds drawn from ``seed``.

    >>> import numpy as np
    >>> from fastact import nn
    >>> se = nn.SqueezeExcitation(16, 4, scale_activation=nn.Hardsigmoid, seed=0)
    >>> list(se.state_dict())
    ['fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias']
    >>> se(np.ones((2, 16, 5, 5), np.float32)).shape
    (2, 16, 5, 5)
    """

    def __init__(self, input_channels, squeeze_channels, activation=None, scale_activation=None, *,
                 dtype=np.float32, seed=None):
        super().__init__()
        s1, s2 = np.random.SeedSequence(seed).spawn(2) if seed is not None else (None, None)
        self.avgpool = AdaptiveAvgPool2d(1)
        self.fc1 = Conv2d(input_channels, squeeze_channels, 1, dtype=dtype, seed=s1)
        self.fc2 = Conv2d(squeeze_channels, input_channels, 1, dtype=dtype, seed=s2)
        self.activation = _make_module("activation", activation or ACTIVATION_MODULES["relu"])
        self.scale_activation = _make_module("scale_activation", scale_activation or ACTIVATION_MODULES["sigmoid"])

    def _scale(self, x):
        return self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))

    def forward(self, x):
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[1] != self.fc1.in_channels:
            raise ValueError(f"SqueezeExcitation: x must be (N, {self.fc1.in_channels}, H, W), got shape "
                             f"{x.shape}")
        scale = self._scale(x)
        if self.training:
            self._saved = (x, scale)
        return scale * x

    def backward(self, dy, need_input_grad=True):
        x, scale = _need_saved(self)
        dy = np.asarray(dy)
        dscale = (dy * x).sum(axis=(2, 3), keepdims=True, dtype=np.float64).astype(x.dtype)
        d = self.fc1.backward(self.activation.backward(self.fc2.backward(self.scale_activation.backward(dscale))))
        return dy * scale + self.avgpool.backward(d)


def _make_module(name, factory):
    m = factory() if not isinstance(factory, Module) else factory
    if not isinstance(m, Module):
        raise TypeError(f"SqueezeExcitation: {name} must make a fastact.nn Module, got {type(m).__name__}")
    return m


class Flatten(Module):
    """(N, ...) -> (N, prod(...)), as torch.nn.Flatten()."""

    def forward(self, x):
        x = np.asarray(x)
        if self.training:
            self._saved = (x.shape,)
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, need_input_grad=True):
        (shape,) = _need_saved(self)
        return np.asarray(dy).reshape(shape)


class Activation(Module):
    """An elementwise activation of the table as a module (subclassed per activation below).

    ``Activation(name, *params, **params)`` builds the module of the activation ``name``:
    ``nn.Activation("gelu", approximate="tanh")`` is ``nn.GELU(approximate="tanh")``.

    >>> from fastact import nn
    >>> nn.Activation("leaky_relu", 0.2)
    LeakyReLU(negative_slope=0.2)
    """

    name = None

    def __new__(cls, *args, **kwargs):
        if cls is not Activation:
            return super().__new__(cls)
        if not args or not isinstance(args[0], str):
            raise TypeError("nn.Activation(name, *params) takes the activation's name first, e.g. "
                            "nn.Activation('gelu') (or its module, nn.GELU())")
        inst = super().__new__(ACTIVATION_MODULES[_table.get(args[0]).name])  # ValueError naming it
        object.__setattr__(inst, "_named", True)  # __init__ drops the name from its arguments
        return inst

    def __init__(self, *args, inplace=False, **kwargs):
        if self.__dict__.pop("_named", False):
            args = args[1:]
        super().__init__()
        act = _table.get(self.name)
        names = act.param_names
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes at most {len(names)} parameters {names}")
        values = {p.name: p.default for p in act.params}
        values.update(zip(names, args))
        for k, v in kwargs.items():
            if k not in values:
                raise TypeError(f"{type(self).__name__} got an unexpected parameter {k!r}")
            values[k] = v
        self.params = values
        self._fwd = getattr(ew, act.name)
        self._bwd = getattr(ew, act.name + "_backward")

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.params.items())

    def forward(self, x):
        if self.training:
            self._saved = (x,)
        return self._fwd(x, **self.params)

    def backward(self, dy, need_input_grad=True):
        (x,) = _need_saved(self)
        return self._bwd(dy, x, **self.params)


#: table name -> activation module class (every entry of the table gets one), named as in torch.nn
#: (``Activation.torch_module``), else the CamelCase of the name
ACTIVATION_MODULES = {}
for _name in _table.NAMES:
    _cls_name = (_table.ENTRIES[_name].torch_module
                 or "".join(w.capitalize() for w in _name.split("_")))
    _cls = type(_cls_name, (Activation,), {"name": _name, "__module__": __name__,
                                           "__doc__": f"Module form of :func:`fastact.{_name}`."})
    ACTIVATION_MODULES[_name] = _cls
    globals()[_cls_name] = _cls
    __all__.append(_cls_name)
SiLU = ACTIVATION_MODULES["silu"]
Swish = SiLU
__all__.append("Swish")


class PReLU(Module):
    """Parametric ReLU with ``num_parameters`` slopes (1 or the channel count), initialised to ``init``."""

    def __init__(self, num_parameters=1, init=0.25, *, dtype=np.float32):
        super().__init__()
        self.weight = Parameter(np.full(num_parameters, init, dtype=dtype))

    def extra_repr(self):
        return f"num_parameters={self.weight.data.size}"

    def forward(self, x):
        if self.training:
            self._saved = (x,)
        return ew.prelu(x, self.weight.data, axis=1)

    def backward(self, dy, need_input_grad=True):
        (x,) = _need_saved(self)
        dx, dw = ew.prelu_backward(dy, x, self.weight.data, axis=1)
        _accumulate(self.weight, dw)
        return dx


ACTIVATION_MODULES["prelu"] = PReLU

# ``fastact.nn.init`` as an importable name too (``from fastact.nn.init import kaiming_normal_``, as
# with torch.nn.init), although nn is a module and init its sibling fastact/init.py
sys.modules.setdefault(__name__ + ".init", init)


def is_plain_relu(m):
    """True for a ReLU module with the default parameters (max(x, 0)), the activation that
    :meth:`BatchNorm2d.forward` fuses (``activation='relu'``).

    >>> from fastact import nn
    >>> nn.is_plain_relu(nn.ReLU()), nn.is_plain_relu(nn.ReLU6()), nn.is_plain_relu(nn.ReLU(max_value=6.0))
    (True, False, False)
    """
    return type(m) is ACTIVATION_MODULES["relu"] and \
        m.params == {p.name: p.default for p in _table.get("relu").params}


def can_die(module):
    """True when the activation module's derivative is exactly zero on a whole range of inputs (ReLU and
    ReLU6 at and below 0, hardtanh outside its range, threshold, hardsigmoid, hardswish below -3): a
    unit whose input stays there gets no gradient and learns nothing, it is "dead". False for
    activations whose derivative is never zero on [-6, 6] (Leaky ReLU, PReLU, ELU, GELU, SiLU, ...).

    >>> from fastact import nn
    >>> nn.can_die(nn.ReLU()), nn.can_die(nn.ReLU(negative_slope=0.01)), nn.can_die(nn.GELU())
    (True, False, False)
    """
    if not isinstance(module, Activation):
        return False
    key = (module.name, tuple(sorted(module.params.items())))
    hit = _CAN_DIE.get(key)
    if hit is None:  # the table's float64 NumPy reference of the derivative: nothing to compile
        act = _table.get(module.name)
        p = [q.to_float(module.params[q.name]) for q in act.params]
        b = [q.to_float(q.default) for q in act.backward_params]
        d = act.reference_derivative(np.linspace(-6.0, 6.0, 2401), *p, *b)
        hit = _CAN_DIE[key] = bool(np.any(d == 0))
    return hit


_CAN_DIE = {}


def _fusable_activation(m):
    """True for an activation module of the table (a GEMM epilogue can apply it; PReLU cannot)."""
    return isinstance(m, Activation) and type(m) in ACTIVATION_MODULES.values()


def _fused_with(mods, i):
    """The index of the activation module that runs fused into ``mods[i]`` (a Conv2d or Linear followed
    by an activation of the table, a BatchNorm2d followed by a plain ReLU), or None."""
    nxt = mods[i + 1] if i + 1 < len(mods) else None
    if isinstance(mods[i], (Conv2d, Linear)) and _fusable_activation(nxt):
        return i + 1
    if isinstance(mods[i], BatchNorm2d) and _batchnorm_activation(nxt) is not None:
        return i + 1
    return None


def _batchnorm_activation(m):
    """'relu' or 'relu6' when the module ``m`` is one that :meth:`BatchNorm2d.forward` fuses (a plain
    ReLU, a ReLU6), else None."""
    if is_plain_relu(m):
        return "relu"
    if type(m) is ACTIVATION_MODULES["relu6"]:
        return "relu6"
    return None


def _run_fused(mods, i, j, x):
    """``mods[i]`` on x, with the activation ``mods[j]`` fused into it when j is not None."""
    if j is None:
        return mods[i](x)
    if isinstance(mods[i], BatchNorm2d):
        return mods[i].forward(x, activation=_batchnorm_activation(mods[j]))
    return mods[i].forward(x, activation=mods[j].name, activation_params=mods[j].params)


def _foldable(conv, bn):
    return isinstance(bn, BatchNorm2d) and bn.track_running_stats and bn.num_features == conv.out_channels


def fold_batchnorm(conv, bn):
    """(weight, bias) of the one convolution equal to ``bn(conv(x))`` with ``bn``'s running statistics.

    ``s = gamma / sqrt(running_var + eps)`` per output channel; ``weight = conv.weight * s``,
    ``bias = beta + (conv.bias - running_mean) * s``, the per-channel factors computed in float64 and
    rounded once to the conv's dtype. What eval mode runs for a Conv2d followed by a BatchNorm2d
    (:class:`Sequential`, the ResNet and MobileNet blocks of :mod:`fastact.models`).

    >>> import numpy as np
    >>> from fastact import nn
    >>> conv, bn = nn.Conv2d(2, 3, 3, seed=0), nn.BatchNorm2d(3)
    >>> bn.running_var[...] = 4.0
    >>> w, b = nn.fold_batchnorm(conv, bn)
    >>> bool(np.allclose(w, conv.weight.data / np.sqrt(4.0 + 1e-5)))
    True
    """
    if not _foldable(conv, bn):
        raise ValueError(f"fold_batchnorm: needs a Conv2d and a BatchNorm2d with running statistics over "
                         f"its {getattr(conv, 'out_channels', '?')} output channels, got "
                         f"{type(conv).__name__} and {type(bn).__name__}")
    w = conv.weight.data
    s = 1.0 / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    shift = -bn.running_mean.astype(np.float64)
    if conv.bias is not None:
        shift = shift + conv.bias.data
    shift = shift * s
    if bn.affine:
        s = s * bn.weight.data
        shift = shift * bn.weight.data + bn.bias.data
    weight = w * s.astype(w.dtype)[:, None, None, None]
    return weight, shift.astype(w.dtype)


def folding_pays(conv, x_shape):
    """Whether eval mode folds a BatchNorm into ``conv`` for an input of ``x_shape``: folding costs one
    pass over the weights per call, a separate BatchNorm (and activation) one pass over the output,
    so it folds when the output has at least half as many values per channel as a filter has weights
    (every layer of a batch-8 224x224 MobileNet or ResNet; not ResNet's 7x7 stages at batch 1)."""
    n_out = int(np.prod(x_shape[:1] + x_shape[2:], dtype=np.int64)) if len(x_shape) == 4 else \
        int(np.prod(x_shape[1:], dtype=np.int64))
    sh, sw = (conv.stride, conv.stride) if np.isscalar(conv.stride) else conv.stride
    per_filter = conv.weight.data[0].size
    return 2 * n_out >= per_filter * sh * sw


class Sequential(Module):
    """Modules in order, keyed "0", "1", ...; a Conv2d/Linear followed by an activation runs fused.

    ``activity``: when set to a dict, training-mode forward records, for every activation module that
    :func:`can_die`, a boolean mask of its units (channel x position) whose derivative was nonzero for
    at least one sample, keyed by module index (units whose mask stays False got no gradient: dead).
    The trainer uses it to report dead units.
    """

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: item {i} is a {type(m).__name__}, not a Module")
            setattr(self, str(i), m)
        self.activity = None

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __iter__(self):
        return iter(self._modules.values())

    def fusion_plan(self):
        """How the modules run: [(index of a module, index of the activation fused into it, or None)];
        a ``Conv2d`` or ``Linear`` followed by an activation module runs as one kernel with it."""
        mods = list(self._modules.values())
        plan, i = [], 0
        while i < len(mods):
            j = _fused_with(mods, i)
            plan.append((i, j))
            i = (i if j is None else j) + 1
        return plan

    def forward(self, x):
        mods = list(self._modules.values())
        if not self.training:
            return self._forward_eval(mods, x)
        for i, j in self.fusion_plan():
            x = _run_fused(mods, i, j, x)
            out_index = i if j is None else j
            if self.activity is not None and can_die(mods[out_index]):
                self._record_activity(mods, i, j, out_index, x)
        return x

    def _forward_eval(self, mods, x):
        """Eval mode: training's plan, except that a Conv2d followed by a BatchNorm2d with running
        statistics (and an activation module) runs as one convolution with the BatchNorm folded in
        (:func:`fold_batchnorm`) and the activation in its epilogue, where that pays
        (:func:`folding_pays`)."""
        i = 0
        while i < len(mods):
            m = mods[i]
            bn = mods[i + 1] if i + 1 < len(mods) else None
            if isinstance(m, Conv2d) and _foldable(m, bn) and folding_pays(m, np.shape(x)):
                act = mods[i + 2] if i + 2 < len(mods) and _fusable_activation(mods[i + 2]) else None
                w, b = fold_batchnorm(m, bn)
                x = conv2d(x, w, b, m.stride, m.padding, m.dilation, m.groups,
                           activation=None if act is None else act.name,
                           activation_params=None if act is None else act.params, algorithm=m.algorithm)
                i += 2 if act is None else 3
                continue
            j = _fused_with(mods, i)
            x = _run_fused(mods, i, j, x)
            i = (i if j is None else j) + 1
        return x

    def _record_activity(self, mods, i, j, out_index, y):
        act = mods[out_index]
        if j is not None and isinstance(mods[i], BatchNorm2d):
            # the plain ReLU or the ReLU6 BatchNorm fuses: the derivative is 1 iff 0 < y (< 6)
            alive = np.any((y > 0) & (y < 6), axis=0) if _batchnorm_activation(act) == "relu6" else \
                np.any(y > 0, axis=0)
        else:
            # the pre-activation: a fused Conv2d/Linear keeps it for its backward, a lone activation
            # its input
            z = act._saved[0] if j is None else mods[i]._saved[1]
            alive = np.any(act._bwd(np.ones_like(z), z, **act.params) != 0, axis=0)
        prev = self.activity.get(out_index)
        self.activity[out_index] = alive if prev is None else (prev | alive)

    def backward(self, dy, need_input_grad=True):
        mods = list(self._modules.values())
        plan = self.fusion_plan()
        for step, (i, j) in enumerate(reversed(plan)):
            first = step == len(plan) - 1
            if j is not None:
                dy = mods[i].backward(dy, need_input_grad=need_input_grad or not first)
            else:
                dy = mods[i].backward(dy)
        return dy


class Conv2dNormActivation(Sequential):
    """``Conv2d``, a norm layer and an activation as one ``Sequential`` keyed "0", "1", "2":
    torchvision's ``Conv2dNormActivation`` (the unit of MobileNetV2 and V3).

    ``padding`` defaults to ``(kernel_size - 1) // 2 * dilation`` (the output keeps the input's size
    at stride 1) and ``bias`` to ``norm_layer is None``. ``norm_layer`` and ``activation_layer`` are
    module classes or factories (``norm_layer(out_channels)``, ``activation_layer()``; ReLU by
    default), None to leave the layer out; a BatchNorm2d ``norm_layer`` gets the block's ``dtype``.
    The convolution is initialised from ``seed`` as ``Conv2d``.

    >>> from fastact import nn
    >>> block = nn.Conv2dNormActivation(3, 8, stride=2, activation_layer=nn.ReLU6)
    >>> [type(m).__name__ for m in block], block[0].padding
    (['Conv2d', 'BatchNorm2d', 'ReLU6'], 1)
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=None, groups=1,
                 norm_layer=BatchNorm2d, activation_layer=ACTIVATION_MODULES["relu"], dilation=1, bias=None, *,
                 dtype=np.float32, seed=None):
        if padding is None:
            padding = (kernel_size - 1) // 2 * dilation
        if bias is None:
            bias = norm_layer is None
        layers = [Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         dtype=dtype, seed=seed)]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels, dtype=dtype) if norm_layer is BatchNorm2d
                          else norm_layer(out_channels))
        if activation_layer is not None:
            layers.append(activation_layer())
        super().__init__(*layers)
        self.out_channels = int(out_channels)


class CrossEntropyLoss(Module):
    """Mean cross-entropy of logits (N, C) against integer labels (N,); ``backward()`` -> dlogits."""

    def forward(self, logits, target):
        self._saved = (logits, target)
        return cross_entropy(logits, target)

    def backward(self, dy=1.0):
        logits, target = _need_saved(self)
        return cross_entropy_backward(logits, target, dy=dy)
