"""torchvision's ResNet-18 and ResNet-34 (He et al., 2016), with its module tree, keys and initialisation.

``resnet18()`` has torchvision's ``state_dict`` keys (``conv1.weight``, ``bn1.running_mean``,
``layer2.0.downsample.0.weight``, ``fc.bias``) and shapes, so torchvision's weights, converted to NumPy
(or to a ``.safetensors`` file), load unchanged. The work runs as fastact's fused kernels: in training
each BatchNorm + ReLU is one pass, and a block's second BatchNorm adds the shortcut in the same pass;
in eval mode every BatchNorm is folded into the convolution before it where that pays
(:func:`fastact.nn.folding_pays`), so a block is two convolutions (the first with its ReLU fused), the
add and a ReLU. The ``relu`` children are the activations: put another activation module there
(:func:`fastact.models.replace_activations`) and the network uses it.

>>> import numpy as np
>>> from fastact import models
>>> net = models.resnet18(num_classes=10)
>>> [k for k in net.state_dict()][:3], net.fc.out_features
(['conv1.weight', 'bn1.weight', 'bn1.bias'], 10)
>>> net(np.zeros((2, 3, 32, 32), np.float32)).shape
(2, 10)
"""

import numpy as np

from . import elementwise as ew
from . import nn
from .conv import conv2d

__all__ = ["BasicBlock", "ResNet", "resnet18", "resnet34"]


def _conv_bn_act(conv, bn, act, x, training, residual=None):
    """``(y, z)``: ``y = act(bn(conv(x)) + residual)`` and the pre-activation ``z`` that the backward
    (:func:`_act_backward`) needs, None where there is none or BatchNorm's fused ReLU keeps it.

    In training (or in eval where folding does not pay) the modules run, so their backward works; a
    plain ReLU without a residual is BatchNorm's fused pass. In eval the BatchNorm is folded into the
    convolution, whose epilogue applies the activation when there is no residual."""
    if training or not nn.folding_pays(conv, x.shape):
        y = conv(x)
        if act is not None and residual is None and nn.is_plain_relu(act):
            return bn.forward(y, activation="relu"), None
        z = bn.forward(y, residual=residual)
    else:
        w, b = nn.fold_batchnorm(conv, bn)
        fuse = act is not None and residual is None
        z = conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups,
                   activation=act.name if fuse else None, activation_params=act.params if fuse else None,
                   algorithm=conv.algorithm)
        if residual is None:
            return z, None
        z += residual
    if act is None:
        return z, None
    return getattr(ew, act.name)(z, **act.params), (z if training else None)


def _act_backward(act, dy, z):
    """The gradient of the pre-activation from ``dy`` and the ``z`` that :func:`_conv_bn_act` returned."""
    return dy if z is None else getattr(ew, act.name + "_backward")(dy, z, **act.params)


def _check_activation(owner, act):
    if not isinstance(act, nn.Activation):
        raise TypeError(f"{owner}: relu must be an activation module of fastact.nn (an elementwise "
                        f"activation of the table), got {type(act).__name__}")
    return act


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, 3x3 convs
    without bias; ``shortcut`` is ``downsample`` (a 1x1 conv with ``stride`` and a BatchNorm: the
    projection shortcut) when the shape changes, else the identity.

    Children in torchvision's order: ``conv1``, ``bn1``, ``relu``, ``conv2``, ``bn2`` and, for a
    projection, ``downsample`` (keys ``downsample.0.weight``, ``downsample.1.running_var``, ...).
    The ``relu`` child is the block's activation: another activation module put there
    (:func:`fastact.models.replace_activations`) is used in both places.
    """

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, *, dtype=np.float32, seed=None):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False, dtype=dtype, seed=rng)
        self.bn1 = nn.BatchNorm2d(planes, dtype=dtype)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False, dtype=dtype, seed=rng)
        self.bn2 = nn.BatchNorm2d(planes, dtype=dtype)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        x = np.asarray(x)
        act = _check_activation("BasicBlock", self.relu)
        out, z1 = _conv_bn_act(self.conv1, self.bn1, act, x, self.training)
        shortcut = x if self.downsample is None else \
            _conv_bn_act(self.downsample[0], self.downsample[1], None, x, self.training)[0]
        y, z2 = _conv_bn_act(self.conv2, self.bn2, act, out, self.training, residual=shortcut)
        self._saved = (act, z1, z2) if self.training else None
        return y

    def backward(self, dy, need_input_grad=True):
        if self._saved is None:
            raise RuntimeError("BasicBlock.backward called without a forward in training mode")
        act, z1, z2 = self._saved
        dz = _act_backward(act, dy, z2)
        d = _act_backward(act, self.conv2.backward(self.bn2.backward(dz)), z1)
        dx = self.conv1.backward(self.bn1.backward(d))
        if self.downsample is None:
            dx += dz
        else:
            dx += self.downsample.backward(dz)
        return dx


class ResNet(nn.Module):
    """torchvision's ``ResNet`` with :class:`BasicBlock` s: a 7x7 stride-2 conv, BatchNorm, ReLU and a
    3x3 stride-2 max-pool, four stages ``layer1``..``layer4`` (64, 128, 256, 512 channels; the first
    block of stages 2-4 halves the size with a projection shortcut), a global average pool and ``fc``.

    Initialisation as torchvision's: convs Kaiming-normal (fan-out, ReLU gain), BatchNorm weight 1 and
    bias 0, ``fc`` as ``nn.Linear``; everything drawn from ``np.random.default_rng(seed)``. Any input
    of at least 1x1 pixels after the stem's strides (32x32 CIFAR-size images give a 1x1 map in
    ``layer4``; 224x224 the 7x7 map it was designed for).
    """

    def __init__(self, layers, num_classes=1000, *, seed=0, dtype=np.float32):
        super().__init__()
        if len(layers) != 4 or any(int(n) != n or n < 1 for n in layers):
            raise ValueError(f"ResNet: layers must be four block counts >= 1, got {layers!r}")
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"ResNet: num_classes must be a positive integer, got {num_classes!r}")
        rng = np.random.default_rng(seed)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False, dtype=dtype, seed=rng)
        self.bn1 = nn.BatchNorm2d(64, dtype=dtype)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            setattr(self, f"layer{i + 1}", self._make_layer(planes, int(n), 1 if i == 0 else 2, rng, dtype))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * BasicBlock.expansion, int(num_classes), dtype=dtype, seed=rng)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", rng=rng)

    def _make_layer(self, planes, blocks, stride, rng, dtype):
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * BasicBlock.expansion, 1, stride, bias=False, dtype=dtype,
                          seed=rng),
                nn.BatchNorm2d(planes * BasicBlock.expansion, dtype=dtype))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample, dtype=dtype, seed=rng)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes, dtype=dtype, seed=rng) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        """Logits (N, num_classes) of images x (N, 3, H, W)."""
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"ResNet: expected images of shape (N, 3, H, W), got {x.shape}")
        x = np.ascontiguousarray(x, dtype=self.conv1.weight.data.dtype)
        act = _check_activation("ResNet", self.relu)
        out, z = _conv_bn_act(self.conv1, self.bn1, act, x, self.training)
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.maxpool(out)))))
        out = self.avgpool(out)
        self._saved = (out.shape, act, z) if self.training else None
        return self.fc(out.reshape(out.shape[0], -1))

    def backward(self, dy, need_input_grad=True):
        """Gradient of the images; parameter gradients accumulate into ``.grad``."""
        if self._saved is None:
            raise RuntimeError("ResNet.backward called without a forward in training mode")
        shape, act, z = self._saved
        d = self.avgpool.backward(self.fc.backward(dy).reshape(shape))
        d = self.layer1.backward(self.layer2.backward(self.layer3.backward(self.layer4.backward(d))))
        d = self.bn1.backward(_act_backward(act, self.maxpool.backward(d), z))
        return self.conv1.backward(d, need_input_grad=need_input_grad)


def resnet18(num_classes=1000, seed=0, dtype=np.float32):
    """ResNet-18 (two BasicBlocks per stage), 11.7M parameters, torchvision's keys and initialisation."""
    return ResNet([2, 2, 2, 2], num_classes, seed=seed, dtype=dtype)


def resnet34(num_classes=1000, seed=0, dtype=np.float32):
    """ResNet-34 (3, 4, 6, 3 BasicBlocks per stage), 21.8M parameters, torchvision's keys and initialisation."""
    return ResNet([3, 4, 6, 3], num_classes, seed=seed, dtype=dtype)
