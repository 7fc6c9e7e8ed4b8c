"""Model builders. ``vgg(cfg)`` builds a VGG-style ``nn.Sequential`` whose indices match torch's."""

import numpy as np

from . import _table, nn

__all__ = ["vgg", "vgg_output_size"]


def vgg_output_size(cfg, input_size):
    """Spatial size after the feature layers: each 'M' halves it (floor), 3x3 pad-1 convs keep it."""
    s = int(input_size)
    for v in cfg:
        if v == "M":
            s //= 2
            if s < 1:
                raise ValueError(f"vgg: input_size {input_size} is too small for the pools of cfg {cfg}")
    return s


def _activation(name, dtype):
    if name == "prelu":
        return nn.PReLU(1, dtype=dtype)
    return nn.ACTIVATION_MODULES[_table.get(name).name]()


def vgg(cfg, in_channels=3, num_classes=10, input_size=32, hidden=(128,), activation="relu", seed=0,
        dtype=np.float32):
    """A VGG-style network as ``nn.Sequential``.

    ``cfg`` as torchvision's: an int is a 3x3 conv (padding 1) to that many channels plus the
    activation, ``'M'`` a 2x2 max-pool; then ``Flatten``, a ``Linear`` + activation per ``hidden`` size,
    and a final ``Linear`` to ``num_classes``. Weights are Kaiming-normal (fan-in, ReLU gain
    ``sqrt(2)``), biases zero, drawn from ``np.random.default_rng(seed)``.

    Examples
    --------
    >>> from fastact import models
    >>> net = models.vgg([8, "M"], in_channels=1, num_classes=10, input_size=8, hidden=(32,))
    >>> [type(m).__name__ for m in net]
    ['Conv2d', 'ReLU', 'MaxPool2d', 'Flatten', 'Linear', 'ReLU', 'Linear']
    """
    if activation != "prelu":
        _table.get(activation)  # ValueError naming the valid activations
    rng = np.random.default_rng(seed)
    layers = []
    c = int(in_channels)
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        elif isinstance(v, (int, np.integer)) and v > 0:
            conv = nn.Conv2d(c, int(v), 3, padding=1, dtype=dtype)
            _kaiming(conv, rng)
            layers += [conv, _activation(activation, dtype)]
            c = int(v)
        else:
            raise ValueError(f"vgg: cfg entries must be positive ints or 'M', got {v!r}")
    features = c * vgg_output_size(cfg, input_size) ** 2
    layers.append(nn.Flatten())
    for h in hidden:
        lin = nn.Linear(features, int(h), dtype=dtype)
        _kaiming(lin, rng)
        layers += [lin, _activation(activation, dtype)]
        features = int(h)
    head = nn.Linear(features, int(num_classes), dtype=dtype)
    _kaiming(head, rng)
    layers.append(head)
    return nn.Sequential(*layers)


def _kaiming(layer, rng):
    w = layer.weight.data
    fan_in = int(np.prod(w.shape[1:]))
    layer.weight.data = (rng.standard_normal(w.shape) * np.sqrt(2.0 / fan_in)).astype(w.dtype)
    layer.weight.grad = np.zeros_like(layer.weight.data)
    if layer.bias is not None:
        layer.bias.data[...] = 0
