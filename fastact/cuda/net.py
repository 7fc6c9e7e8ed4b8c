"""A whole ``fastact.nn.Sequential`` (e.g. a VGG from ``fastact.models.vgg``) run forward and backward
on the GPU, with the same fusion as on the CPU: a Conv2d or Linear followed by an activation module is
one layer call with the activation in its epilogue, and one backward call with the activation's
backward fused with the bias sum.
"""

from . import elementwise
from ._device import as_device, to_device
from .conv import conv2d, conv2d_backward
from .linear import linear, linear_backward
from .pool import max_pool2d, max_pool2d_backward

__all__ = ["DeviceNet"]


def _kw(name, params):
    """An activation module's parameters as keyword arguments (from a dict, a sequence or None)."""
    from .. import _table
    if params is None:
        return {}
    if isinstance(params, dict):
        return dict(params)
    return {s.name: v for s, v in zip(_table.get(name).params, params)}


class DeviceNet:
    """A ``fastact.nn.Sequential`` (e.g. from ``fastact.models.vgg``) run forward and backward on the GPU.

    The parameters are copied to the device once (``sync_to_host()`` copies them back); ``forward``
    keeps what ``backward`` needs; ``backward(dlogits)`` returns the parameter gradients as device arrays
    keyed like ``state_dict()`` (PyTorch's names). A Conv2d or Linear followed by an activation runs
    fused (bias + activation in the GEMM epilogue, the activation's backward in the pass that sums the
    bias gradient). Supported modules: Conv2d (any padding, dilation and groups), Linear, MaxPool2d,
    Flatten and the table's activations.

    Parameters
    ----------
    model : fastact.nn.Sequential

    Examples
    --------
    >>> net = DeviceNet(models.vgg([8, "M"], in_channels=1, input_size=8, hidden=(16,)))  # doctest: +SKIP
    >>> loss, dlogits = cross_entropy(net.forward(to_device(x)), y)                       # doctest: +SKIP
    >>> grads = net.backward(dlogits)                                                     # doctest: +SKIP
    """

    def __init__(self, model):
        from .. import nn
        self.model = model
        self.params = {k: to_device(v, dtype=v.dtype) for k, v in model.state_dict().items()}
        self.plan = []
        mods = list(model)
        for i, j in model.fusion_plan():
            m = mods[i]
            act = None if j is None else mods[j]
            if not isinstance(m, (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.Flatten, nn.Activation)):
                raise TypeError(f"DeviceNet: module {i} ({type(m).__name__}) has no GPU implementation")
            if isinstance(m, nn.MaxPool2d) and (m.dilation not in (1, (1, 1)) or m.ceil_mode):
                raise ValueError(f"DeviceNet: module {i} ({m!r}): the GPU max-pool has no dilation or ceil_mode")
            self.plan.append((i, m, act))
        self._saved = None

    def forward(self, x):
        """Logits (device array) of the device batch ``x``; keeps the intermediates for backward."""
        from .. import nn
        h = as_device(x, "x")
        saved = []
        for i, m, act in self.plan:
            name, params = (None, None) if act is None else (act.name, act.params)
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                b = self.params.get(f"{i}.bias")
                w = self.params[f"{i}.weight"]
                if isinstance(m, nn.Conv2d):
                    y, z = conv2d(h, w, b, m.stride, m.padding, m.dilation, m.groups, activation=name,
                                  activation_params=params, return_preactivation=True)
                else:
                    y, z = linear(h, w, b, activation=name, activation_params=params,
                                  return_preactivation=True)
                saved.append((h, z))
            elif isinstance(m, nn.MaxPool2d):
                y = max_pool2d(h, m.kernel_size, m.stride, m.padding)
                saved.append((h, None))
            elif isinstance(m, nn.Flatten):
                y = h.reshape(h.shape[0], h.size // h.shape[0])
                saved.append((h.shape, None))
            else:  # a lone activation module
                y = elementwise.activation_functions(m.name)[0](h, **_kw(m.name, m.params))
                saved.append((h, None))
            h = y
        self._saved = saved
        return h

    def backward(self, dy):
        """Parameter gradients ``{state_dict key: device array}`` from the gradient of the logits."""
        from .. import nn
        if self._saved is None:
            raise RuntimeError("DeviceNet.backward: call forward first")
        grads = {}
        dy = as_device(dy, "dy")
        first = self.plan[0][0] if self.plan else None
        for (i, m, act), (inp, z) in zip(reversed(self.plan), reversed(self._saved)):
            name, params = (None, None) if act is None else (act.name, act.params)
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                kw = dict(preactivation=z, activation=name, activation_params=params,
                          need_input_grad=i != first)  # nothing needs the input's gradient
                w = self.params[f"{i}.weight"]
                if isinstance(m, nn.Conv2d):
                    dx, dw, db = conv2d_backward(dy, inp, w, m.stride, m.padding, m.dilation, m.groups, **kw)
                else:
                    dx, dw, db = linear_backward(dy, inp, w, **kw)
                grads[f"{i}.weight"] = dw
                if f"{i}.bias" in self.params:
                    grads[f"{i}.bias"] = db
                dy = dx
            elif isinstance(m, nn.MaxPool2d):
                dy = max_pool2d_backward(dy, inp, m.kernel_size, m.stride, m.padding)
            elif isinstance(m, nn.Flatten):
                dy = dy.reshape(*inp)
            else:
                dy = elementwise.activation_functions(m.name)[1](dy, inp, **_kw(m.name, m.params))
        return grads

    def sync_to_host(self):
        """Copy the device parameters back into the model (after updating them on the device)."""
        self.model.load_state_dict({k: v.copy_to_host() for k, v in self.params.items()})
