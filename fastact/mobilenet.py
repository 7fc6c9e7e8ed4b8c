"""torchvision's MobileNetV2 (ReLU6) and MobileNetV3 (Hard-Swish, Hard-Sigmoid), with their module trees,
``state_dict`` keys and initialisation.

MobileNetV2 (Sandler et al., 2018) is where ReLU6 earns its place: inverted residual blocks (a 1x1
expansion, a 3x3 depthwise convolution, a linear 1x1 projection) with ReLU6 after the first two, whose
bounded range suits low-precision inference. MobileNetV3 (Howard et al., 2019) swaps in Hard-Swish in
the later stages and Hard-Sigmoid in its squeeze-and-excitation blocks: piecewise-linear stand-ins for
Swish and the sigmoid that cost a few comparisons.

Keys as torchvision's (``features.0.0.weight``, ``features.1.conv.0.0.weight``,
``features.4.block.2.fc1.bias``, ``classifier.1.weight``), so its weights load unchanged. Depthwise
convolutions run by fastact's direct kernels; in eval mode every BatchNorm is folded into the
convolution before it and the activation runs in that convolution's epilogue.

>>> import numpy as np
>>> from fastact import models
>>> net = models.mobilenet_v2(num_classes=10)
>>> list(net.state_dict())[:2], net.classifier[1].out_features
(['features.0.0.weight', 'features.0.1.weight'], 10)
>>> net(np.zeros((2, 3, 32, 32), np.float32)).shape
(2, 10)
"""

from functools import partial

import numpy as np

from . import nn
from .pool import adaptive_avg_pool2d, adaptive_avg_pool2d_backward

__all__ = ["make_divisible", "InvertedResidual", "MobileNetV2", "InvertedResidualConfig", "InvertedResidualV3",
           "MobileNetV3", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"]


def make_divisible(v, divisor=8, min_value=None):
    """The channel count nearest ``v`` that is a multiple of ``divisor`` (at least ``min_value``, by
    default ``divisor``), rounded up by ``divisor`` where rounding would lose more than 10%: the rule
    of TensorFlow's and torchvision's MobileNets for ``width_mult``.

    >>> from fastact.mobilenet import make_divisible
    >>> make_divisible(32 * 0.35), make_divisible(1280 * 1.0), make_divisible(88 // 4)
    (16, 1280, 24)
    """
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _init(model, rng):
    """torchvision's MobileNet initialisation: convs Kaiming-normal (fan-out), zero conv biases,
    BatchNorm 1 and 0, Linear N(0, 0.01) with zero bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", rng=rng)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01, rng=rng)
            nn.init.zeros_(m.bias)


def _check_classes(name, num_classes, dropout):
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"{name}: num_classes must be a positive integer, got {num_classes!r}")
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"{name}: dropout must be in [0, 1], got {dropout!r}")
    return int(num_classes)


def _check_images(name, x, dtype):
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{name}: expected images of shape (N, 3, H, W), got {x.shape}")
    return np.ascontiguousarray(x, dtype=dtype)


class _Residual(nn.Module):
    """An inverted residual block's forward and backward around its Sequential child (``conv`` in V2,
    ``block`` in V3): the skip adds the input when ``use_res_connect`` (stride 1, same channels)."""

    _body = None

    def forward(self, x):
        y = getattr(self, self._body)(x)
        if self.use_res_connect:
            y += x
        return y

    def backward(self, dy, need_input_grad=True):
        dx = getattr(self, self._body).backward(dy)
        if self.use_res_connect:
            dx += dy
        return dx


class InvertedResidual(_Residual):
    """MobileNetV2's block, torchvision's tree: ``conv`` = [1x1 expansion Conv2dNormActivation with ReLU6
    (left out when ``expand_ratio == 1``), 3x3 depthwise Conv2dNormActivation with ReLU6 and ``stride``,
    1x1 projection Conv2d, BatchNorm2d]; the input is added when the stride is 1 and the channels match."""

    _body = "conv"

    def __init__(self, inp, oup, stride, expand_ratio, *, dtype=np.float32):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual: stride should be 1 or 2 instead of {stride}")
        hidden_dim = int(round(inp * expand_ratio))
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        cna = partial(nn.Conv2dNormActivation, activation_layer=nn.ReLU6, dtype=dtype)
        layers = [cna(inp, hidden_dim, kernel_size=1)] if expand_ratio != 1 else []
        layers += [cna(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
                   nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False, dtype=dtype),
                   nn.BatchNorm2d(oup, dtype=dtype)]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup


class MobileNetV2(nn.Module):
    """torchvision's ``MobileNetV2``: ``features`` (a stride-2 3x3 Conv2dNormActivation to 32 channels,
    17 :class:`InvertedResidual` blocks, a 1x1 Conv2dNormActivation to 1280), a global average pool
    and ``classifier`` = [Dropout(``dropout``), Linear(1280, ``num_classes``)]. ``width_mult`` scales
    every width (:func:`make_divisible` by 8; the last layer never below 1280). Overall stride 32:
    224x224 gives 7x7 features, 32x32 gives 1x1."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))  #: (expansion t, channels c, blocks n, first stride s) per stage

    def __init__(self, num_classes=1000, width_mult=1.0, dropout=0.2, *, seed=0, dtype=np.float32):
        super().__init__()
        num_classes = _check_classes("MobileNetV2", num_classes, dropout)
        if not width_mult > 0:
            raise ValueError(f"MobileNetV2: width_mult must be > 0, got {width_mult!r}")
        rng = np.random.default_rng(seed)
        input_channel = make_divisible(32 * width_mult)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult))
        features = [nn.Conv2dNormActivation(3, input_channel, stride=2, activation_layer=nn.ReLU6, dtype=dtype)]
        for t, c, n, s in self.SETTINGS:
            output_channel = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t, dtype=dtype))
                input_channel = output_channel
        features.append(nn.Conv2dNormActivation(input_channel, self.last_channel, kernel_size=1,
                                                activation_layer=nn.ReLU6, dtype=dtype))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout, seed=rng),
                                        nn.Linear(self.last_channel, num_classes, dtype=dtype))
        _init(self, rng)

    def forward(self, x):
        """Logits (N, num_classes) of images x (N, 3, H, W)."""
        x = _check_images("MobileNetV2", x, self.features[0][0].weight.data.dtype)
        f = self.features(x)
        self._saved = (f.shape,) if self.training else None
        return self.classifier(adaptive_avg_pool2d(f, 1).reshape(f.shape[0], -1))

    def backward(self, dy, need_input_grad=True):
        """Gradient of the images; parameter gradients accumulate into ``.grad``."""
        if self._saved is None:
            raise RuntimeError("MobileNetV2.backward called without a forward in training mode")
        (shape,) = self._saved
        d = self.classifier.backward(dy).reshape(shape[0], shape[1], 1, 1)
        return self.features.backward(adaptive_avg_pool2d_backward(d, shape), need_input_grad=need_input_grad)


class InvertedResidualConfig:
    """One row of MobileNetV3's tables 1 and 2: ``kernel``, the expanded and output channels (scaled by
    ``width_mult``), squeeze-and-excitation or not, ``activation`` 'RE' (ReLU) or 'HS' (Hard-Swish),
    ``stride`` and ``dilation``."""

    def __init__(self, input_channels, kernel, expanded_channels, out_channels, use_se, activation, stride,
                 dilation, width_mult=1.0):
        self.input_channels = self.adjust_channels(input_channels, width_mult)
        self.kernel = kernel
        self.expanded_channels = self.adjust_channels(expanded_channels, width_mult)
        self.out_channels = self.adjust_channels(out_channels, width_mult)
        self.use_se = use_se
        self.use_hs = activation == "HS"
        self.stride = stride
        self.dilation = dilation

    @staticmethod
    def adjust_channels(channels, width_mult):
        return make_divisible(channels * width_mult, 8)


class InvertedResidualV3(_Residual):
    """MobileNetV3's block, torchvision's tree: ``block`` = [1x1 expansion (left out when the widths are
    equal), depthwise ``kernel`` x ``kernel`` with ``stride`` (and ``dilation``), squeeze-and-excitation
    with Hard-Sigmoid (``use_se``), 1x1 linear projection], each a Conv2dNormActivation with ReLU or
    Hard-Swish; the input is added when the stride is 1 and the channels match."""

    _body = "block"

    def __init__(self, cnf, norm_layer, *, dtype=np.float32):
        super().__init__()
        if not 1 <= cnf.stride <= 2:
            raise ValueError("illegal stride value")
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        act = nn.Hardswish if cnf.use_hs else nn.ReLU
        cna = partial(nn.Conv2dNormActivation, norm_layer=norm_layer, dtype=dtype)
        layers = []
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(cna(cnf.input_channels, cnf.expanded_channels, kernel_size=1, activation_layer=act))
        layers.append(cna(cnf.expanded_channels, cnf.expanded_channels, kernel_size=cnf.kernel,
                          stride=1 if cnf.dilation > 1 else cnf.stride, dilation=cnf.dilation,
                          groups=cnf.expanded_channels, activation_layer=act))
        if cnf.use_se:
            layers.append(nn.SqueezeExcitation(cnf.expanded_channels, make_divisible(cnf.expanded_channels // 4, 8),
                                               scale_activation=nn.Hardsigmoid, dtype=dtype))
        layers.append(cna(cnf.expanded_channels, cnf.out_channels, kernel_size=1, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = cnf.out_channels


def _v3_settings(arch, width_mult):
    """(block configurations, last_channel) of torchvision's ``_mobilenet_v3_conf``."""
    bneck = partial(InvertedResidualConfig, width_mult=width_mult)
    if arch == "mobilenet_v3_large":
        rows = [(16, 3, 16, 16, False, "RE", 1, 1), (16, 3, 64, 24, False, "RE", 2, 1),
                (24, 3, 72, 24, False, "RE", 1, 1), (24, 5, 72, 40, True, "RE", 2, 1),
                (40, 5, 120, 40, True, "RE", 1, 1), (40, 5, 120, 40, True, "RE", 1, 1),
                (40, 3, 240, 80, False, "HS", 2, 1), (80, 3, 200, 80, False, "HS", 1, 1),
                (80, 3, 184, 80, False, "HS", 1, 1), (80, 3, 184, 80, False, "HS", 1, 1),
                (80, 3, 480, 112, True, "HS", 1, 1), (112, 3, 672, 112, True, "HS", 1, 1),
                (112, 5, 672, 160, True, "HS", 2, 1), (160, 5, 960, 160, True, "HS", 1, 1),
                (160, 5, 960, 160, True, "HS", 1, 1)]
        last = 1280
    else:
        rows = [(16, 3, 16, 16, True, "RE", 2, 1), (16, 3, 72, 24, False, "RE", 2, 1),
                (24, 3, 88, 24, False, "RE", 1, 1), (24, 5, 96, 40, True, "HS", 2, 1),
                (40, 5, 240, 40, True, "HS", 1, 1), (40, 5, 240, 40, True, "HS", 1, 1),
                (40, 5, 120, 48, True, "HS", 1, 1), (48, 5, 144, 48, True, "HS", 1, 1),
                (48, 5, 288, 96, True, "HS", 2, 1), (96, 5, 576, 96, True, "HS", 1, 1),
                (96, 5, 576, 96, True, "HS", 1, 1)]
        last = 1024
    return [bneck(*r) for r in rows], InvertedResidualConfig.adjust_channels(last, width_mult)


class MobileNetV3(nn.Module):
    """torchvision's ``MobileNetV3``: ``features`` (a stride-2 3x3 Conv2dNormActivation with Hard-Swish,
    the :class:`InvertedResidualV3` blocks, a 1x1 Conv2dNormActivation to 6x the last width with
    Hard-Swish), ``avgpool`` and ``classifier`` = [Linear, Hardswish, Dropout(``dropout``), Linear].
    BatchNorm with eps 0.001 and momentum 0.01, as torchvision's."""

    def __init__(self, inverted_residual_setting, last_channel, num_classes=1000, dropout=0.2, *, seed=0,
                 dtype=np.float32):
        super().__init__()
        num_classes = _check_classes("MobileNetV3", num_classes, dropout)
        if not inverted_residual_setting:
            raise ValueError("The inverted_residual_setting should not be empty")
        rng = np.random.default_rng(seed)
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01, dtype=dtype)
        first = inverted_residual_setting[0].input_channels
        layers = [nn.Conv2dNormActivation(3, first, kernel_size=3, stride=2, norm_layer=norm_layer,
                                          activation_layer=nn.Hardswish, dtype=dtype)]
        layers += [InvertedResidualV3(cnf, norm_layer, dtype=dtype) for cnf in inverted_residual_setting]
        last_in = inverted_residual_setting[-1].out_channels
        layers.append(nn.Conv2dNormActivation(last_in, 6 * last_in, kernel_size=1, norm_layer=norm_layer,
                                              activation_layer=nn.Hardswish, dtype=dtype))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(6 * last_in, last_channel, dtype=dtype), nn.Hardswish(),
                                        nn.Dropout(dropout, seed=rng), nn.Linear(last_channel, num_classes, dtype=dtype))
        _init(self, rng)

    def forward(self, x):
        """Logits (N, num_classes) of images x (N, 3, H, W)."""
        x = _check_images("MobileNetV3", x, self.features[0][0].weight.data.dtype)
        f = self.avgpool(self.features(x))
        self._saved = (f.shape,) if self.training else None
        return self.classifier(f.reshape(f.shape[0], -1))

    def backward(self, dy, need_input_grad=True):
        """Gradient of the images; parameter gradients accumulate into ``.grad``."""
        if self._saved is None:
            raise RuntimeError("MobileNetV3.backward called without a forward in training mode")
        (shape,) = self._saved
        d = self.avgpool.backward(self.classifier.backward(dy).reshape(shape))
        return self.features.backward(d, need_input_grad=need_input_grad)


def mobilenet_v2(num_classes=1000, width_mult=1.0, dropout=0.2, seed=0, dtype=np.float32):
    """MobileNetV2 with ReLU6, 3.5M parameters at ``width_mult=1``, torchvision's keys and initialisation."""
    return MobileNetV2(num_classes, width_mult, dropout, seed=seed, dtype=dtype)


def mobilenet_v3_small(num_classes=1000, dropout=0.2, seed=0, dtype=np.float32, *, width_mult=1.0):
    """MobileNetV3-Small (Hard-Swish, squeeze-and-excitation with Hard-Sigmoid), 2.5M parameters."""
    cfg, last = _v3_settings("mobilenet_v3_small", width_mult)
    return MobileNetV3(cfg, last, num_classes, dropout, seed=seed, dtype=dtype)


def mobilenet_v3_large(num_classes=1000, dropout=0.2, seed=0, dtype=np.float32, *, width_mult=1.0):
    """MobileNetV3-Large, 5.5M parameters, torchvision's keys and initialisation."""
    cfg, last = _v3_settings("mobilenet_v3_large", width_mult)
    return MobileNetV3(cfg, last, num_classes, dropout, seed=seed, dtype=dtype)
