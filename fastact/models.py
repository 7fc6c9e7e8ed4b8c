"""Model builders whose ``state_dict`` keys are those of the PyTorch originals, so weights move both ways.

* ``vgg(cfg)``: a small VGG-style ``nn.Sequential`` (the ``python -m fastact train`` default);
* ``vgg11``, ``vgg13``, ``vgg16``, ``vgg19`` (``batch_norm=True`` for the ``_bn`` variants): torchvision's
  VGG module tree (``features``, ``avgpool``, ``classifier``) and initialisation;
* ``resnet18``, ``resnet34`` (:mod:`fastact.resnet`), ``mobilenet_v2``, ``mobilenet_v3_small``,
  ``mobilenet_v3_large`` (:mod:`fastact.mobilenet`): torchvision's module trees, keys and initialisation,
  so torchvision's weights load unchanged;
* ``net_depth``, ``net_res``, ``net_res_deep``: the reference networks of *Deep Learning with PyTorch*
  (Stevens, Antiga, Viehmann, 2020, chapter 8) for 3x32x32 CIFAR-10 images and 2 classes (airplane,
  bird): a deeper plain CNN, the same with one skip connection, and a 10-block ResNet with BatchNorm.

The reference networks are ``nn.Module`` subclasses written the PyTorch way (children assigned as
attributes, ``forward``), plus the explicit ``backward``; they run the work as fused kernels: every
conv + bias + ReLU is one :func:`fastact.conv2d` with its activation epilogue, a ResBlock's BatchNorm +
ReLU + skip add is one pass forward and one backward (:mod:`fastact.batchnorm`), and in eval mode the
BatchNorm is folded into the convolution (``w * gamma / sqrt(var + eps)``, bias
``beta - mean * gamma / sqrt(var + eps)``), so a block is one conv with a fused ReLU and the add.
"""

import inspect

import numpy as np

from . import nn
from . import table as _table  # the public table (fastact.table)
from .conv import conv2d
from .mobilenet import MobileNetV2, MobileNetV3, mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small
from .pool import max_pool2d, max_pool2d_backward
from .resnet import ResNet, resnet18, resnet34

__all__ = ["to_torch", "vgg", "vgg_output_size", "VGG", "VGG_CFGS", "vgg11", "vgg13", "vgg16", "vgg19",
           "NetDepth", "NetRes", "ResBlock", "NetResDeep", "net_depth", "net_res", "net_res_deep",
           "REFERENCE_NETS", "ResNet", "resnet18", "resnet34", "MobileNetV2", "MobileNetV3", "mobilenet_v2",
           "mobilenet_v3_small", "mobilenet_v3_large", "TORCHVISION_NETS", "replace_activations"]


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


# ------------------------------------------------------------------------ the reference networks

#: input of the reference networks: CIFAR-10 images
REFERENCE_INPUT = (3, 32, 32)


def _check_input(name, x, dtype):
    """``x`` as a contiguous array of ``dtype``; ValueError naming the shapes unless it is (N, 3, 32, 32)."""
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1:] != REFERENCE_INPUT:
        raise ValueError(f"{name}: expected input of shape (N, {', '.join(map(str, REFERENCE_INPUT))}) "
                         f"(CIFAR-10 images), got {x.shape}")
    return np.ascontiguousarray(x, dtype=dtype)


def _check_width(name, n_chans1, even=False):
    if int(n_chans1) != n_chans1 or n_chans1 < (2 if even else 1):
        raise ValueError(f"{name}: n_chans1 must be a positive integer{' >= 2' if even else ''}, "
                         f"got {n_chans1!r}")
    if even and n_chans1 % 2:
        # PyTorch's view(-1, 4 * 4 * n_chans1 // 2) only matches conv3's n_chans1 // 2 channels then
        raise ValueError(f"{name}: n_chans1 must be even (conv2 and conv3 have n_chans1 // 2 channels "
                         f"and fc1 reads 4 * 4 * n_chans1 // 2 features), got {n_chans1}")
    return int(n_chans1)


def _check_classes(name, num_classes):
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"{name}: num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def _pool(x, training, saved):
    """2x2 max-pool; in training mode the input's shape and the winners' indices are appended to
    ``saved`` for :func:`_unpool`."""
    if not training:
        return max_pool2d(x, 2)
    y, idx = max_pool2d(x, 2, return_indices="window")
    saved.append((x.shape, idx))
    return y


def _unpool(dy, saved):
    """Backward of :func:`_pool` from what it saved."""
    shape, idx = saved
    return max_pool2d_backward(dy, shape, 2, indices=idx)


def _flatten(x):
    return x.reshape(x.shape[0], -1)


def _head(net, out, pools):
    """The reference nets' tail: 2x2 max-pool, flatten, ``fc1`` + ReLU, ``fc2``; in training mode what
    the pools saved (``pools`` plus this one's) is kept on ``net`` for :func:`_head_backward`."""
    out = _pool(out, net.training, pools)
    out = net.fc1.forward(_flatten(out), activation="relu")
    net._saved = tuple(pools) if net.training else None
    return net.fc2(out)


def _head_backward(net, dy):
    """Backward of :func:`_head`: (what the earlier pools saved, the gradient of the last pool's input)."""
    if net._saved is None:
        raise RuntimeError(f"{type(net).__name__}.backward called without a forward in training mode")
    *earlier, p = net._saved
    d = net.fc1.backward(net.fc2.backward(dy))
    N, C, H, W = p[0]
    return earlier, _unpool(d.reshape(N, C, H // 2, W // 2), p)


class NetDepth(nn.Module):
    """Three conv3x3 + ReLU + 2x2 max-pool stages, then two fully connected layers.

    PyTorch's ``NetDepth`` (*Deep Learning with PyTorch*, chapter 8) with the same attribute names,
    hence the same ``state_dict`` keys::

        conv1 = Conv2d(3, n_chans1, 3, padding=1)             # 32x32 -> pool -> 16x16
        conv2 = Conv2d(n_chans1, n_chans1 // 2, 3, padding=1)  # 16x16 -> pool -> 8x8
        conv3 = Conv2d(n_chans1 // 2, n_chans1 // 2, 3, padding=1)  # 8x8 -> pool -> 4x4
        fc1 = Linear(4 * 4 * n_chans1 // 2, 32); fc2 = Linear(32, num_classes)

    Each conv + bias + ReLU runs as one fused kernel, and so does ``fc1`` + ReLU. Layers are
    initialised as PyTorch's defaults (uniform, bound ``1 / sqrt(fan_in)``) from one generator seeded
    with ``seed``. ``num_classes`` defaults to the original's 2 outputs.

    Examples
    --------
    >>> import numpy as np
    >>> from fastact import models
    >>> net = models.net_depth(n_chans1=8)
    >>> list(net.state_dict())[:3], net.fc1.in_features
    (['conv1.weight', 'conv1.bias', 'conv2.weight'], 64)
    >>> net(np.zeros((5, 3, 32, 32), np.float32)).shape
    (5, 2)
    """

    #: NetRes adds conv3's input to its output before the third pool
    skip = False

    def __init__(self, n_chans1=32, *, num_classes=2, seed=0, dtype=np.float32):
        super().__init__()
        name = type(self).__name__
        self.n_chans1 = n = _check_width(name, n_chans1, even=True)
        num_classes = _check_classes(name, num_classes)
        rng = np.random.default_rng(seed)
        c, side = REFERENCE_INPUT[0], REFERENCE_INPUT[1] // 2 ** 3  # three 2x2 pools
        self.conv1 = nn.Conv2d(c, n, 3, padding=1, dtype=dtype, seed=rng)
        self.conv2 = nn.Conv2d(n, n // 2, 3, padding=1, dtype=dtype, seed=rng)
        self.conv3 = nn.Conv2d(n // 2, n // 2, 3, padding=1, dtype=dtype, seed=rng)
        self.fc1 = nn.Linear(side * side * (n // 2), 32, dtype=dtype, seed=rng)
        self.fc2 = nn.Linear(32, num_classes, dtype=dtype, seed=rng)

    def extra_repr(self):
        return f"n_chans1={self.n_chans1}"

    def forward(self, x):
        """Logits (N, num_classes) of images x (N, 3, 32, 32)."""
        x = _check_input(type(self).__name__, x, self.conv1.weight.data.dtype)
        pools = []  # the pools' inputs, for the backward
        out = _pool(self.conv1.forward(x, activation="relu"), self.training, pools)
        out = _pool(self.conv2.forward(out, activation="relu"), self.training, pools)
        h = self.conv3.forward(out, activation="relu")
        if self.skip:
            h += out  # relu(conv3(out)) + out; h is conv3's fresh output, so in place is safe
        return _head(self, h, pools)

    def backward(self, dy, need_input_grad=True):
        """Gradient of the images; parameter gradients accumulate into ``.grad``."""
        (p1, p2), d = _head_backward(self, dy)
        d_in = self.conv3.backward(d)
        if self.skip:
            d_in += d
        d = _unpool(self.conv2.backward(_unpool(d_in, p2)), p1)
        return self.conv1.backward(d, need_input_grad=need_input_grad)


class NetRes(NetDepth):
    """:class:`NetDepth` with a skip connection around the third conv: ``pool(relu(conv3(x)) + x)``.

    The same layers and keys as NetDepth (PyTorch's ``NetRes``); the add happens in place on conv3's
    fused conv + ReLU output, and the backward adds the pooled gradient to conv3's input gradient.

    Examples
    --------
    >>> import numpy as np
    >>> from fastact import models
    >>> models.net_res(n_chans1=8)(np.ones((1, 3, 32, 32), np.float32)).shape
    (1, 2)
    """

    skip = True


class ResBlock(nn.Module):
    """``relu(batch_norm(conv(x))) + x``: a 3x3 conv without bias, BatchNorm, ReLU and the skip.

    PyTorch's ``ResBlock`` of the reference: the conv is Kaiming-normal (fan-in, ReLU gain), the
    BatchNorm starts at weight 0.5 and bias 0, so each block starts close to the identity.

    Training runs the conv as one GEMM kernel and BatchNorm + ReLU + skip add as one fused pass
    (:meth:`fastact.nn.BatchNorm2d.forward` with ``activation='relu', residual=x``), whose backward
    is one reduction pass and one pass writing the conv's output gradient. In eval mode the BatchNorm
    is folded into the conv (:meth:`fold`), so the block is one conv with a fused ReLU, then the add:
    the same result up to rounding.

    Examples
    --------
    >>> import numpy as np
    >>> from fastact import models
    >>> block = models.ResBlock(4)
    >>> list(block.state_dict())
    ['conv.weight', 'batch_norm.weight', 'batch_norm.bias', 'batch_norm.running_mean', 'batch_norm.running_var', 'batch_norm.num_batches_tracked']
    >>> x = np.random.default_rng(0).standard_normal((2, 4, 6, 6)).astype(np.float32)
    >>> y_train = block(x)
    >>> bool(np.allclose(block.eval()(x), block.batch_norm(block.conv(x), "relu", x), atol=1e-6))
    True
    """

    def __init__(self, n_chans, *, seed=0, dtype=np.float32):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.conv = nn.Conv2d(n_chans, n_chans, 3, padding=1, bias=False, dtype=dtype, seed=rng)
        self.batch_norm = nn.BatchNorm2d(num_features=n_chans, dtype=dtype)
        nn.init.kaiming_normal_(self.conv.weight, nonlinearity="relu", rng=rng)
        nn.init.constant_(self.batch_norm.weight, 0.5)
        nn.init.zeros_(self.batch_norm.bias)

    def fold(self):
        """(weight, bias) of the one conv equal to conv + BatchNorm with the running statistics.

        ``s = gamma / sqrt(running_var + eps)``; ``weight = conv.weight * s`` per output channel,
        ``bias = beta - running_mean * s``, computed in float64 and rounded once to the conv's dtype.
        """
        bn = self.batch_norm
        w = self.conv.weight.data
        s = 1.0 / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
        shift = -bn.running_mean.astype(np.float64) * s
        if bn.affine:
            s = s * bn.weight.data
            shift = shift * bn.weight.data + bn.bias.data
        weight = (w * s[:, None, None, None]).astype(w.dtype)
        return weight, shift.astype(w.dtype)

    def forward(self, x):
        x = np.ascontiguousarray(x, dtype=self.conv.weight.data.dtype)
        if not self.training and self.batch_norm.track_running_stats:
            w, b = self.fold()
            y = conv2d(x, w, b, padding=self.conv.padding, activation="relu")
            y += x
            return y
        return self.batch_norm.forward(self.conv.forward(x), activation="relu", residual=x)

    def backward(self, dy, need_input_grad=True):
        # y = relu(bn(conv(x))) + x: the skip's gradient is dy itself
        dx = self.conv.backward(self.batch_norm.backward(dy))
        dx += dy
        return dx


class NetResDeep(nn.Module):
    """conv3x3 + ReLU + pool, ``n_blocks`` :class:`ResBlock` s at 16x16, pool, two fully connected layers.

    PyTorch's ``NetResDeep`` of the reference, with the same keys (``conv1.weight``,
    ``resblocks.3.conv.weight``, ``resblocks.3.batch_norm.running_var``, ``fc2.bias``)::

        conv1 = Conv2d(3, n_chans1, 3, padding=1)                  # 32x32 -> pool -> 16x16
        resblocks = Sequential(*[ResBlock(n_chans1) for _ in range(n_blocks)])  # 16x16 -> pool -> 8x8
        fc1 = Linear(8 * 8 * n_chans1, 32); fc2 = Linear(32, num_classes)

    The blocks are independent modules. (The book writes ``nn.Sequential(*(n_blocks *
    [ResBlock(n_chans=n_chans1)]))``, which repeats *one* ResBlock object: all blocks then share one
    conv and one BatchNorm, and the state dict holds ``n_blocks`` keys per tensor that alias one
    array. Its text describes ten distinct blocks, which is what we build.)

    Examples
    --------
    >>> import numpy as np
    >>> from fastact import models
    >>> net = models.net_res_deep(n_chans1=4, n_blocks=2)
    >>> [k for k in net.state_dict() if k.startswith("resblocks.1")][:2]
    ['resblocks.1.conv.weight', 'resblocks.1.batch_norm.weight']
    >>> net(np.zeros((3, 3, 32, 32), np.float32)).shape
    (3, 2)
    """

    def __init__(self, n_chans1=32, n_blocks=10, *, num_classes=2, seed=0, dtype=np.float32):
        super().__init__()
        name = type(self).__name__
        self.n_chans1 = n = _check_width(name, n_chans1)
        if int(n_blocks) != n_blocks or n_blocks < 0:
            raise ValueError(f"{name}: n_blocks must be an integer >= 0, got {n_blocks!r}")
        num_classes = _check_classes(name, num_classes)
        rng = np.random.default_rng(seed)
        c, side = REFERENCE_INPUT[0], REFERENCE_INPUT[1] // 2 ** 2  # two 2x2 pools
        self.conv1 = nn.Conv2d(c, n, 3, padding=1, dtype=dtype, seed=rng)
        self.resblocks = nn.Sequential(*[ResBlock(n, seed=rng, dtype=dtype) for _ in range(int(n_blocks))])
        self.fc1 = nn.Linear(side * side * n, 32, dtype=dtype, seed=rng)
        self.fc2 = nn.Linear(32, num_classes, dtype=dtype, seed=rng)

    def extra_repr(self):
        return f"n_chans1={self.n_chans1}"

    def forward(self, x):
        """Logits (N, num_classes) of images x (N, 3, 32, 32)."""
        x = _check_input(type(self).__name__, x, self.conv1.weight.data.dtype)
        pools = []
        out = _pool(self.conv1.forward(x, activation="relu"), self.training, pools)
        return _head(self, self.resblocks(out), pools)

    def backward(self, dy, need_input_grad=True):
        """Gradient of the images; parameter gradients accumulate into ``.grad``."""
        (p1,), d = _head_backward(self, dy)
        d = _unpool(self.resblocks.backward(d), p1)
        return self.conv1.backward(d, need_input_grad=need_input_grad)


def net_depth(n_chans1=32, seed=0, dtype=np.float32, *, num_classes=2):
    """:class:`NetDepth` (three conv stages, two FC layers) for 3x32x32 images.

    Examples
    --------
    >>> from fastact import models
    >>> sum(p.data.size for p in models.net_depth().parameters())
    16130
    """
    return NetDepth(n_chans1, num_classes=num_classes, seed=seed, dtype=dtype)


def net_res(n_chans1=32, seed=0, dtype=np.float32, *, num_classes=2):
    """:class:`NetRes` (NetDepth with a skip around the third conv) for 3x32x32 images.

    Examples
    --------
    >>> from fastact import models
    >>> models.net_res().state_dict().keys() == models.net_depth().state_dict().keys()
    True
    """
    return NetRes(n_chans1, num_classes=num_classes, seed=seed, dtype=dtype)


def net_res_deep(n_chans1=32, n_blocks=10, seed=0, dtype=np.float32, *, num_classes=2):
    """:class:`NetResDeep` (``n_blocks`` independent residual blocks) for 3x32x32 images.

    Examples
    --------
    >>> from fastact import models
    >>> net = models.net_res_deep()
    >>> len(net.resblocks), len(net.state_dict())
    (10, 66)
    """
    return NetResDeep(n_chans1, n_blocks, num_classes=num_classes, seed=seed, dtype=dtype)


#: name -> builder of the reference networks (``python -m fastact train --model NAME``)
REFERENCE_NETS = {"net_depth": net_depth, "net_res": net_res, "net_res_deep": net_res_deep}

#: torchvision's networks by name (each ``f(num_classes=1000, ..., seed=0, dtype=np.float32)``)
TORCHVISION_NETS = {"resnet18": resnet18, "resnet34": resnet34, "mobilenet_v2": mobilenet_v2,
                    "mobilenet_v3_small": mobilenet_v3_small, "mobilenet_v3_large": mobilenet_v3_large}


# ---------------------------------------------------------------------------- torchvision's VGG

#: torchvision's configurations: an int is a 3x3 conv (padding 1) to that many channels (+ BatchNorm
#: with ``batch_norm``) + ReLU, 'M' a 2x2 max-pool (Simonyan and Zisserman, arXiv:1409.1556, table 1)
VGG_CFGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512,
              512, "M"],
}


class VGG(nn.Module):
    """torchvision's ``VGG``: ``features`` (convs, BatchNorms, ReLUs, pools), ``avgpool``
    (``AdaptiveAvgPool2d((7, 7))``), flatten, ``classifier`` (Linear 4096, ReLU, Dropout, Linear 4096,
    ReLU, Dropout, Linear ``num_classes``).

    The module indices, hence the ``state_dict`` keys (``features.0.weight``, ``features.1.running_mean``
    with ``batch_norm``, ``classifier.6.bias``), are torchvision's, and so is the initialisation:
    convs Kaiming-normal (fan-out, ReLU gain) with zero bias, BatchNorm weight 1 and bias 0, Linear
    N(0, 0.01) with zero bias, drawn from one generator seeded with ``seed`` (the Dropouts draw their
    masks from it too). ``nn.Sequential`` runs every conv + ReLU, BatchNorm + ReLU and Linear + ReLU
    pair as one fused kernel.

    Input (N, 3, H, W) with H, W >= 32 (five 2x2 pools); 224x224 gives the 7x7 map the classifier was
    designed for, and other sizes are averaged (or repeated) to 7x7 by ``avgpool``, as in torchvision.
    """

    def __init__(self, cfg, num_classes=1000, batch_norm=False, *, dropout=0.5, seed=0, dtype=np.float32):
        super().__init__()
        rng = np.random.default_rng(seed)
        layers, c = [], REFERENCE_INPUT[0]
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"VGG: cfg entries must be positive ints or 'M', got {v!r}")
            conv = nn.Conv2d(c, int(v), 3, padding=1, dtype=dtype, seed=rng)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu", rng=rng)
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.BatchNorm2d(int(v), dtype=dtype), nn.ReLU()] if batch_norm else [conv, nn.ReLU()]
            c = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        num_classes = _check_classes("VGG", num_classes)
        fcs = [nn.Linear(c * 7 * 7, 4096, dtype=dtype, seed=rng), nn.Linear(4096, 4096, dtype=dtype, seed=rng),
               nn.Linear(4096, num_classes, dtype=dtype, seed=rng)]
        for fc in fcs:
            w = fc.weight.data
            w[...] = rng.standard_normal(w.shape, dtype=np.float32 if w.dtype == np.float32 else np.float64)
            w *= w.dtype.type(0.01)
            nn.init.zeros_(fc.bias)
        self.classifier = nn.Sequential(fcs[0], nn.ReLU(), nn.Dropout(dropout, seed=rng),
                                        fcs[1], nn.ReLU(), nn.Dropout(dropout, seed=rng), fcs[2])

    def forward(self, x):
        """Logits (N, num_classes) of images x (N, 3, H, W)."""
        out = self.avgpool(self.features(x))
        self._saved = (out.shape,) if self.training else None
        return self.classifier(out.reshape(out.shape[0], -1))

    def backward(self, dy, need_input_grad=True):
        """Gradient of the images; parameter gradients accumulate into ``.grad``."""
        if self._saved is None:
            raise RuntimeError("VGG.backward called without a forward in training mode")
        (shape,) = self._saved
        d = self.avgpool.backward(self.classifier.backward(dy).reshape(shape))
        return self.features.backward(d, need_input_grad=need_input_grad)


def _vgg(name, num_classes, batch_norm, dropout, seed, dtype):
    return VGG(VGG_CFGS[name], num_classes=num_classes, batch_norm=batch_norm, dropout=dropout, seed=seed,
               dtype=dtype)


def vgg11(num_classes=1000, batch_norm=False, seed=0, dtype=np.float32, *, dropout=0.5):
    """torchvision's VGG 11 (configuration "A"; ``batch_norm=True``: vgg11_bn), 132.9M parameters.

    Examples
    --------
    >>> from fastact import models
    >>> [k for k in models.vgg11(num_classes=10).state_dict()][:4]
    ['features.0.weight', 'features.0.bias', 'features.3.weight', 'features.3.bias']
    """
    return _vgg("vgg11", num_classes, batch_norm, dropout, seed, dtype)


def vgg13(num_classes=1000, batch_norm=False, seed=0, dtype=np.float32, *, dropout=0.5):
    """torchvision's VGG 13 (configuration "B"; ``batch_norm=True``: vgg13_bn), 133.0M parameters."""
    return _vgg("vgg13", num_classes, batch_norm, dropout, seed, dtype)


def vgg16(num_classes=1000, batch_norm=False, seed=0, dtype=np.float32, *, dropout=0.5):
    """torchvision's VGG 16 (configuration "D"; ``batch_norm=True``: vgg16_bn), 138.4M parameters.

    Examples
    --------
    >>> from fastact import models
    >>> net = models.vgg16(batch_norm=True)
    >>> list(net.state_dict())[:3], type(net.avgpool).__name__, net.classifier[6].out_features
    (['features.0.weight', 'features.0.bias', 'features.1.weight'], 'AdaptiveAvgPool2d', 1000)
    """
    return _vgg("vgg16", num_classes, batch_norm, dropout, seed, dtype)


def vgg19(num_classes=1000, batch_norm=False, seed=0, dtype=np.float32, *, dropout=0.5):
    """torchvision's VGG 19 (configuration "E"; ``batch_norm=True``: vgg19_bn), 143.7M parameters."""
    return _vgg("vgg19", num_classes, batch_norm, dropout, seed, dtype)


def replace_activations(model, activation, **params):
    """Put ``nn.Activation(activation, **params)`` (a new module each time) in place of every activation
    module of ``model``'s tree, except inside squeeze-and-excitation blocks (their ReLU and gate are
    the block's mechanism, not the network's activation); returns ``model``. ``'prelu'`` puts an
    ``nn.PReLU()`` (one slope) there, where the network takes a module with parameters (not in ResNet).

    This is how the activation study trains one architecture with each activation: ResNet's ReLUs,
    MobileNetV2's ReLU6 and MobileNetV3's ReLU and Hard-Swish become the one under study.

    >>> from fastact import models, nn
    >>> net = models.replace_activations(models.mobilenet_v3_small(num_classes=3), "gelu", approximate="tanh")
    >>> sorted({type(m).__name__ for m in net.modules() if isinstance(m, nn.Activation)})
    ['GELU', 'Hardsigmoid', 'ReLU']
    >>> type(net.features[1].block[1].activation).__name__   # the squeeze-and-excitation block keeps its own
    'ReLU'
    """
    dtype = next((p.data.dtype for p in model.parameters()), np.dtype(np.float32))

    def make():
        if activation == "prelu":
            return nn.PReLU(1, **params, dtype=dtype)
        return nn.Activation(activation, **params)

    make()  # an unknown name or parameter raises here, before anything changes

    def swap(module):
        if isinstance(module, nn.SqueezeExcitation):
            return
        for name, child in list(module.named_children()):
            if isinstance(child, (nn.Activation, nn.PReLU)):
                setattr(module, name, make())
            else:
                swap(child)

    swap(model)
    return model


# ------------------------------------------------------------------------------------ to PyTorch

def _torch_module(torch, m):
    """The torch.nn module doing what the fastact module ``m`` does (its configuration, not weights)."""
    tnn = torch.nn
    if isinstance(m, nn.Conv2d):
        return tnn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                          m.groups, bias=m.bias is not None)
    if isinstance(m, nn.Linear):
        return tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    if isinstance(m, nn.BatchNorm2d):
        return tnn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
    if isinstance(m, nn.MaxPool2d):
        return tnn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, bool(m.return_indices),
                             bool(m.ceil_mode))
    if isinstance(m, nn.AvgPool2d):
        return tnn.AvgPool2d(m.kernel_size, m.stride, m.padding, bool(m.ceil_mode), bool(m.count_include_pad),
                             m.divisor_override)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return tnn.AdaptiveAvgPool2d(m.output_size)
    if isinstance(m, nn.Dropout):
        return tnn.Dropout(m.p)
    if isinstance(m, nn.Flatten):
        return tnn.Flatten()
    if isinstance(m, nn.PReLU):
        return tnn.PReLU(m.weight.data.size)
    if isinstance(m, nn.Sequential):
        return tnn.Sequential(*(_torch_module(torch, c) for c in m))
    if isinstance(m, nn.Activation):
        cls = getattr(tnn, type(m).__name__)
        accepted = inspect.signature(cls).parameters  # Keras-style ReLU parameters have no torch twin
        defaults = {p.name: p.default for p in _table.get(m.name).params}
        extra = [k for k, v in m.params.items() if k not in accepted and v != defaults.get(k)]
        if extra:
            raise ValueError(f"to_torch: torch.nn.{cls.__name__} has no parameter {sorted(extra)}")
        return cls(**{k: v for k, v in m.params.items() if k in accepted})
    raise TypeError(f"to_torch: no PyTorch counterpart for {type(m).__name__}")


def _torch_reference_net(torch, net):
    """The book's NetDepth, NetRes or NetResDeep in PyTorch, shaped like ``net``."""
    tnn, F = torch.nn, torch.nn.functional
    conv1, fc1, fc2 = (_torch_module(torch, getattr(net, k)) for k in ("conv1", "fc1", "fc2"))
    if isinstance(net, NetResDeep):
        blocks = []
        for b in net.resblocks:
            block = tnn.Module()
            block.conv, block.batch_norm = _torch_module(torch, b.conv), _torch_module(torch, b.batch_norm)
            block.forward = (lambda blk: lambda x: torch.relu(blk.batch_norm(blk.conv(x))) + x)(block)
            blocks.append(block)

        class TorchNetResDeep(tnn.Module):
            def forward(self, x):
                out = F.max_pool2d(self.resblocks(F.max_pool2d(torch.relu(self.conv1(x)), 2)), 2)
                return self.fc2(torch.relu(self.fc1(out.flatten(1))))

        t = TorchNetResDeep()
        t.conv1, t.resblocks, t.fc1, t.fc2 = conv1, tnn.Sequential(*blocks), fc1, fc2
        return t
    residual = isinstance(net, NetRes)

    class TorchNetDepth(tnn.Module):
        def forward(self, x):
            out = F.max_pool2d(torch.relu(self.conv1(x)), 2)
            out = F.max_pool2d(torch.relu(self.conv2(out)), 2)
            out = torch.relu(self.conv3(out)) + (out if residual else 0)
            return self.fc2(torch.relu(self.fc1(F.max_pool2d(out, 2).flatten(1))))

    t = TorchNetDepth()
    t.conv1, t.conv2, t.conv3 = conv1, _torch_module(torch, net.conv2), _torch_module(torch, net.conv3)
    t.fc1, t.fc2 = fc1, fc2
    return t


def to_torch(model, torch=None):
    """The same network as a PyTorch module, with a copy of ``model``'s weights and buffers.

    Works for an ``nn.Sequential`` of fastact's layers (``models.vgg`` included) and for the
    reference networks (``net_depth``, ``net_res``, ``net_res_deep``); the result has the same
    ``state_dict`` keys, dtype and train/eval mode. Needs PyTorch (``import torch``), which fastact
    never requires: this is how its tests and benchmarks build their PyTorch twins.

    Raises
    ------
    TypeError
        For a module with no PyTorch counterpart (a ``VGG`` from ``vgg16``: use torchvision's).
    ValueError
        For an activation parameter that PyTorch's module lacks (``ReLU(max_value=6)``).

    Examples
    --------
    >>> import numpy as np
    >>> from fastact import models
    >>> net = models.vgg([4, "M"], in_channels=1, num_classes=3, input_size=4, hidden=())
    >>> tnet = models.to_torch(net)                                   # doctest: +SKIP
    >>> sorted(tnet.state_dict()) == sorted(net.state_dict())         # doctest: +SKIP
    True
    """
    if torch is None:
        import torch
    if isinstance(model, (NetDepth, NetResDeep)):
        t = _torch_reference_net(torch, model)
    elif isinstance(model, nn.Sequential):
        t = _torch_module(torch, model)
    else:
        raise TypeError(f"to_torch: takes an nn.Sequential or a reference network, got {type(model).__name__}")
    state = model.state_dict()
    dtype = next((v.dtype for v in state.values() if v.dtype.kind == "f"), np.dtype(np.float32))
    t = t.to(torch.float64 if dtype == np.float64 else torch.float32)
    t.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
    return t.train(model.training)
