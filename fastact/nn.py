"""Modules with explicit backward passes, PyTorch-shaped: ``forward(x)``, ``backward(dy) -> dx``.

``backward`` accumulates parameter gradients into ``param.grad`` (as ``loss.backward()`` does in
PyTorch) and returns the gradient of the module's input. Each module keeps what its backward needs from
the last forward in ``self._saved`` (an explicit tuple, dropped in eval mode where nothing is saved).

:class:`Sequential` runs a ``Conv2d``/``Linear`` followed by an activation module as one fused kernel
(GEMM + bias + activation in one epilogue, and activation backward + bias gradient in one pass); its
``state_dict`` keys are those of the same ``torch.nn.Sequential`` ("0.weight", "0.bias", "3.weight"...).
"""

import numpy as np

from . import _table
from . import elementwise as ew
from .conv import conv2d, conv2d_backward
from .linear import linear, linear_backward
from .loss import cross_entropy, cross_entropy_backward
from .pool import max_pool2d, max_pool2d_backward

__all__ = ["Parameter", "Module", "Sequential", "Conv2d", "Linear", "MaxPool2d", "Flatten",
           "Activation", "PReLU", "CrossEntropyLoss", "ACTIVATION_MODULES"]


class Parameter:
    """A trainable array: ``.data`` and its gradient ``.grad`` (same shape and dtype, starts at 0)."""

    def __init__(self, data):
        self.data = np.ascontiguousarray(data)
        self.grad = np.zeros_like(self.data)

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: registers child modules and parameters in assignment order, like torch.nn.Module."""

    def __init__(self):
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_params", {})
        self.training = True
        self._saved = None

    def __setattr__(self, name, value):
        if isinstance(value, Parameter):
            self._params[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def __call__(self, x, *args, **kwargs):
        return self.forward(x, *args, **kwargs)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def named_parameters(self, prefix=""):
        for name, p in self._params.items():
            yield prefix + name, p
        for name, m in self._modules.items():
            yield from m.named_parameters(prefix + name + ".")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def modules(self):
        yield self
        for m in self._modules.values():
            yield from m.modules()

    def state_dict(self):
        """``{name: array}`` (copies), with PyTorch's key names."""
        return {name: p.data.copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state, strict=True):
        """Copy arrays into the parameters; shapes must match, dtypes are converted to the module's."""
        own = dict(self.named_parameters())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for k, p in own.items():
            if k not in state:
                continue
            v = np.asarray(state[k])
            if v.shape != p.data.shape:
                raise ValueError(f"load_state_dict: {k} has shape {v.shape} in the state dict but "
                                 f"{p.data.shape} in the module")
        for k, p in own.items():
            if k in state:
                p.data[...] = np.asarray(state[k])
        return self

    def zero_grad(self):
        for p in self.parameters():
            p.grad[...] = 0

    def train(self, mode=True):
        for m in self.modules():
            m.training = mode
            if not mode:
                m._saved = None
        return self

    def eval(self):
        return self.train(False)

    def astype(self, dtype):
        """Convert every parameter (and its gradient) to ``dtype``; returns the module."""
        for m in self.modules():
            for p in m._params.values():
                p.data = np.ascontiguousarray(p.data, dtype=dtype)
                p.grad = np.zeros_like(p.data)
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
    """2-D convolution, weight (out_channels, in_channels, k, k) as PyTorch.

    Initialised like ``torch.nn.Conv2d`` (Kaiming-uniform with a = sqrt(5)) from ``seed``;
    :func:`fastact.models.vgg` re-initialises with Kaiming-normal.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, *,
                 dtype=np.float32, seed=None):
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if np.isscalar(kernel_size) else tuple(kernel_size)
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("kh", kh), ("kw", kw)):
            if int(v) < 1:
                raise ValueError(f"Conv2d: {name} must be >= 1, got {v}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(in_channels * kh * kw)
        self.weight = Parameter(rng.uniform(-bound, bound, (out_channels, in_channels, kh, kw)).astype(dtype))
        if bias:
            self.bias = Parameter(rng.uniform(-bound, bound, out_channels).astype(dtype))
        else:
            self.bias = None

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")

    def forward(self, x, activation=None, activation_params=None):
        bias = None if self.bias is None else self.bias.data
        if not self.training:
            return conv2d(x, self.weight.data, bias, self.stride, self.padding, activation=activation,
                          activation_params=activation_params)
        # training keeps the pre-activation for the backward (without an activation it is y itself,
        # and the backward does not read it)
        y, z = conv2d(x, self.weight.data, bias, self.stride, self.padding, activation=activation,
                      activation_params=activation_params, return_preactivation=True)
        self._saved = (np.ascontiguousarray(x, dtype=y.dtype), None if activation is None else z,
                       activation, activation_params)
        return y

    def backward(self, dy, need_dx=True):
        x, z, activation, params = _need_saved(self)
        dx, dw, db = conv2d_backward(dy, x, self.weight.data, self.stride, self.padding, preactivation=z,
                                     activation=activation, activation_params=params, need_dx=need_dx)
        _accumulate(self.weight, dw)
        if self.bias is not None:
            _accumulate(self.bias, db)
        return dx


class Linear(Module):
    """Fully connected layer, weight (out_features, in_features) as PyTorch."""

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

    def backward(self, dy, need_dx=True):
        x, z, activation, params = _need_saved(self)
        dx, dw, db = linear_backward(dy, x, self.weight.data, preactivation=z, activation=activation,
                                     activation_params=params, need_dx=need_dx)
        _accumulate(self.weight, dw)
        if self.bias is not None:
            _accumulate(self.bias, db)
        return dx


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def forward(self, x):
        if self.training:
            self._saved = (x,)
        return max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def backward(self, dy, need_dx=True):
        (x,) = _need_saved(self)
        return max_pool2d_backward(dy, x, self.kernel_size, self.stride, self.padding)


class Flatten(Module):
    """(N, ...) -> (N, prod(...)), as torch.nn.Flatten()."""

    def forward(self, x):
        x = np.asarray(x)
        if self.training:
            self._saved = (x.shape,)
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, need_dx=True):
        (shape,) = _need_saved(self)
        return np.asarray(dy).reshape(shape)


class Activation(Module):
    """An elementwise activation of the table as a module (subclassed per activation below)."""

    name = None

    def __init__(self, *args, inplace=False, **kwargs):
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

    def backward(self, dy, need_dx=True):
        (x,) = _need_saved(self)
        return self._bwd(dy, x, **self.params)


#: table name -> activation module class (every entry of the table gets one), named as in torch.nn
#: (``Activation.torch_module``), else the CamelCase of the name
ACTIVATION_MODULES = {}
for _name in _table.NAMES:
    _cls_name = (_table.ACTIVATIONS[_name].torch_module
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

    def backward(self, dy, need_dx=True):
        (x,) = _need_saved(self)
        dx, dw = ew.prelu_backward(dy, x, self.weight.data, axis=1)
        _accumulate(self.weight, dw)
        return dx


ACTIVATION_MODULES["prelu"] = PReLU


class Sequential(Module):
    """Modules in order, keyed "0", "1", ...; a Conv2d/Linear followed by an activation runs fused.

    ``activity``: when set to a dict, forward records for every activation output a boolean mask of
    the units (channel x position) that were positive for at least one sample, keyed by module index;
    the trainer uses it to report dead units.
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

    def _plan(self):
        """[(index of the GEMM module or lone module, the fused activation module or None)]."""
        mods = list(self._modules.values())
        plan, i = [], 0
        while i < len(mods):
            m = mods[i]
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            if isinstance(m, (Conv2d, Linear)) and type(nxt) in ACTIVATION_MODULES.values() \
                    and isinstance(nxt, Activation):
                plan.append((i, i + 1))
                i += 2
            else:
                plan.append((i, None))
                i += 1
        return plan

    def forward(self, x):
        mods = list(self._modules.values())
        for i, j in self._plan():
            if j is None:
                x = mods[i](x)
                out_index = i
            else:
                act = mods[j]
                x = mods[i].forward(x, activation=act.name, activation_params=act.params)
                out_index = j
            if self.activity is not None and isinstance(mods[out_index], (Activation, PReLU)):
                fired = np.any(x > 0, axis=0)
                prev = self.activity.get(out_index)
                self.activity[out_index] = fired if prev is None else (prev | fired)
        return x

    def backward(self, dy, need_input_grad=True):
        mods = list(self._modules.values())
        plan = self._plan()
        for step, (i, j) in enumerate(reversed(plan)):
            first = step == len(plan) - 1
            if j is not None:
                dy = mods[i].backward(dy, need_dx=need_input_grad or not first)
            else:
                dy = mods[i].backward(dy)
        return dy


class CrossEntropyLoss(Module):
    """Mean cross-entropy of logits (N, C) against integer labels (N,); ``backward()`` -> dlogits."""

    def forward(self, logits, target):
        self._saved = (logits, target)
        return cross_entropy(logits, target)

    def backward(self, dy=1.0):
        logits, target = _need_saved(self)
        return cross_entropy_backward(logits, target) * np.asarray(dy, dtype=np.asarray(logits).dtype)
