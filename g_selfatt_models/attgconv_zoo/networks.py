"""The attentive G-CNN architectures: rotMNIST CNN, All-CNN-C, ResNet44 and DenseNet.

Each network is written once and filled with layers by a
:class:`~g_selfatt_models.attgconv_zoo.layers.LayerFactory` (plain CNN, p4 or p4m G-CNN,
full, channel-only, spatial-only or feature-map attention). Module names follow
the original implementation (``c1``, ``bn1``, ``layers_nc16.0.c1``,
``block_layers.2.conv``, ...), so its checkpoints load unchanged.

Group networks end with a pooling over the group, so their logits are invariant
to rotations by 90 degrees (and mirrors for p4m) of the input image, exactly so
when every 2x2 pooling sees an even image side.
"""

from __future__ import annotations

import math
from typing import Callable, List, Sequence

import torch
from torch import Tensor, nn

from g_selfatt.functional import average_pooling_rd, average_pooling_rd_on_G, max_pooling_rd, max_pooling_rd_on_G
from g_selfatt_models.attgconv_zoo.layers import LayerFactory


def _pool2(x: Tensor, kind: str) -> Tensor:
    """2x2 pooling with stride 2 of ``(B, C, H, W)`` or ``(B, C, G, H, W)``."""
    pools = {"max": (max_pooling_rd, max_pooling_rd_on_G), "avg": (average_pooling_rd, average_pooling_rd_on_G)}
    pool = pools[kind][x.dim() == 5]
    return pool(x, kernel_size=2, stride=2, padding=0)


def _spatial_mean(x: Tensor) -> Tensor:
    """Mean over the plane, keeping it as a 1x1 map."""
    return x.mean(dim=(-2, -1), keepdim=True)


def _global_mean(x: Tensor) -> Tensor:
    """``(B, K, [G], H, W) -> (B, K)``: mean over the group and the plane."""
    return x.flatten(2).mean(dim=2)


def check_input_size(x: Tensor, minimum: int, name: str) -> None:
    """Raises a ValueError when the images of ``x`` are smaller than ``minimum`` pixels a side."""
    if min(x.shape[-2:]) < minimum:
        raise ValueError(f"{name} needs input images of at least {minimum}x{minimum} pixels, "
                         f"got {tuple(x.shape[-2:])}.")


def _init_plain_convs(module: nn.Module, std: Callable[[nn.Conv2d], float]) -> None:
    """Normal initialisation of every ``nn.Conv2d`` (the plain CNN baselines), zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, std(m))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _he_std(conv: nn.Conv2d) -> float:
    return math.sqrt(2.0) / math.sqrt(conv.weight[0].numel())


# --------------------------------------------------------------------- rotMNIST


class RotMNISTCNN(nn.Module):
    """The 7-layer rotMNIST G-CNN (P4CNN of Cohen & Welling, 2016) and its attentive versions.

    lifting 3x3 -> 5 group 3x3 (2x2 max-pool after the second) -> group 4x4 to the
    classes -> max over the group -> mean over the remaining plane (1x1 for 28x28).

    Args:
        layers: the layer factory (its group must be set).
        in_channels: image channels.
        num_classes: logits.
        channels: hidden channels (10).
        dropout: dropout after layers 1, 3, 4, 5, 6.
        lifting_spatial_dilation: dilation of the first layer's spatial attention.
    """

    min_size = 28

    def __init__(self, layers: LayerFactory, in_channels: int = 1, num_classes: int = 10, channels: int = 10,
                 dropout: float = 0.3, lifting_spatial_dilation: int = 1):
        super().__init__()
        self.c1 = layers.lifting(in_channels, channels, 3, spatial_dilation=lifting_spatial_dilation)
        for index in range(2, 7):
            setattr(self, f"c{index}", layers.group(channels, channels, 3, ratio=2))
        self.c7 = layers.group(channels, num_classes, 4, ratio=2)
        self.dp = nn.Dropout(dropout)
        for index in range(1, 7):
            setattr(self, f"bn{index}", layers.norm(channels))

    def forward(self, x: Tensor) -> Tensor:
        check_input_size(x, self.min_size, type(self).__name__)
        out = self.dp(torch.relu(self.bn1(self.c1(x))))
        out = torch.relu(self.bn2(self.c2(out)))
        out = _pool2(out, "max")
        for index in range(3, 7):
            conv, norm = getattr(self, f"c{index}"), getattr(self, f"bn{index}")
            out = self.dp(torch.relu(norm(conv(out))))
        out = self.c7(out).amax(dim=2)  # (B, classes, H, W)
        return out.mean(dim=(-2, -1))  # (B, classes)


# -------------------------------------------------------------------- All-CNN-C

DOWNSAMPLING = ("pool", "stride", "stride_and_pool")


class AllCNNC(nn.Module):
    """All-CNN-C (Springenberg et al., 2014) as a CNN, a p4 or p4m G-CNN, with attention.

    Nine convolutions (3x3 x 7, then 1x1 x 2), batch norm, ReLU, dropout 0.2 on the
    input and 0.5 after each downsampling; global average pooling (over the plane and
    the group) of the last layer's ReLU gives the logits.

    Args:
        layers: the layer factory.
        in_channels: image channels.
        num_classes: logits.
        channels: width of the first stage (the second has twice as many).
        ratio: channel-attention ratio of the group layers.
        downsampling: ``"pool"`` (3x3 stride-1 convolution, then 2x2 max-pool; equivariant),
            ``"stride"`` (stride-2 convolution: the original full and channel attentive nets) or
            ``"stride_and_pool"`` (both, each halving the side: the original spatial attentive net).
    """

    min_size = 4

    def __init__(self, layers: LayerFactory, in_channels: int = 3, num_classes: int = 10, channels: int = 96,
                 ratio: int = 16, downsampling: str = "pool"):
        super().__init__()
        if downsampling not in DOWNSAMPLING:
            raise ValueError(f"Unknown downsampling {downsampling!r}; expected one of {DOWNSAMPLING}.")
        self.pool = downsampling in ("pool", "stride_and_pool")
        stride = 1 if downsampling == "pool" else 2
        wide = 2 * channels
        specs = [  # (in, out, kernel, stride)
            (channels, channels, 3, 1), (channels, channels, 3, stride), (channels, wide, 3, 1),
            (wide, wide, 3, 1), (wide, wide, 3, stride), (wide, wide, 3, 1), (wide, wide, 1, 1),
            (wide, num_classes, 1, 1),
        ]
        self.c1 = layers.lifting(in_channels, channels, 3, padding=1)
        for index, (c_in, c_out, kernel, step) in enumerate(specs, start=2):
            setattr(self, f"c{index}", layers.group(c_in, c_out, kernel, padding=kernel // 2, stride=step,
                                                    ratio=ratio))
        self.dp_init = nn.Dropout(0.2)
        self.dp = nn.Dropout(0.5)
        widths = [channels] * 3 + [wide] * 5 + [num_classes]
        for index, width in enumerate(widths, start=1):
            setattr(self, f"bn{index}", layers.norm(width))
        _init_plain_convs(self, lambda conv: 0.05)

    def _layer(self, index: int, x: Tensor) -> Tensor:
        return torch.relu(getattr(self, f"bn{index}")(getattr(self, f"c{index}")(x)))

    def _downsampling_layer(self, index: int, x: Tensor) -> Tensor:
        out = getattr(self, f"c{index}")(x)
        if self.pool:
            out = _pool2(out, "max")
        return self.dp(torch.relu(getattr(self, f"bn{index}")(out)))

    def forward(self, x: Tensor) -> Tensor:
        check_input_size(x, self.min_size, type(self).__name__)
        out = self._layer(1, self.dp_init(x))
        out = self._layer(2, out)
        out = self._downsampling_layer(3, out)
        out = self._layer(5, self._layer(4, out))
        out = self._downsampling_layer(6, out)
        for index in (7, 8, 9):
            out = self._layer(index, out)
        return _global_mean(out)


# --------------------------------------------------------------------- ResNet44


class ResBlock(nn.Module):
    """Pre-activation residual block; ``downsample`` adds a 2x2 max-pool and a 1x1 shortcut."""

    def __init__(self, layers: LayerFactory, in_channels: int, out_channels: int, downsample: bool):
        super().__init__()
        if not downsample and in_channels != out_channels:
            raise ValueError("A residual block without downsampling keeps its number of channels.")
        self.downsample = downsample
        self.bn1 = layers.norm(in_channels)
        self.c1 = layers.group(in_channels, out_channels, 3, padding=1, ratio=in_channels // 2)
        self.bn2 = layers.norm(out_channels)
        self.c2 = layers.group(out_channels, out_channels, 3, padding=1, ratio=out_channels // 2)
        self.fiber_map = (layers.group(in_channels, out_channels, 1, ratio=in_channels // 2)
                          if downsample else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        h = self.c1(torch.relu(self.bn1(x)))
        shortcut = self.fiber_map(x)
        if self.downsample:
            h, shortcut = _pool2(h, "max"), _pool2(shortcut, "max")
        return shortcut + self.c2(torch.relu(self.bn2(h)))


class ResNet(nn.Module):
    """ResNet with three stages of ``num_blocks`` residual blocks (ResNet44 for 7).

    Args:
        layers: the layer factory.
        in_channels: image channels.
        num_classes: logits.
        num_blocks: blocks per stage.
        widths: channels of the three stages.
    """

    min_size = 4

    def __init__(self, layers: LayerFactory, in_channels: int = 3, num_classes: int = 10, num_blocks: int = 7,
                 widths: Sequence[int] = (32, 64, 128)):
        super().__init__()
        self.c1 = layers.lifting(in_channels, widths[0], 3, padding=1)
        previous = widths[0]
        for stage, (name, width) in enumerate(zip(("layers_nc32", "layers_nc16", "layers_nc8"), widths)):
            blocks: List[nn.Module] = []
            for index in range(num_blocks):
                downsample = stage > 0 and index == 0
                blocks.append(ResBlock(layers, previous, width, downsample))
                previous = width
            setattr(self, name, nn.Sequential(*blocks))
        self.bn_out = layers.norm(previous)
        self.c_out = layers.group(previous, num_classes, 1, ratio=previous // 2)
        _init_plain_convs(self, _he_std)

    def forward(self, x: Tensor) -> Tensor:
        check_input_size(x, self.min_size, type(self).__name__)
        h = self.layers_nc8(self.layers_nc16(self.layers_nc32(self.c1(x))))
        return _global_mean(self.c_out(_spatial_mean(torch.relu(self.bn_out(h)))))


# --------------------------------------------------------------------- DenseNet

# Dilations of the feature-map spatial attention of the dense and transition blocks.
_BLOCK_DILATIONS = (4, 4, 3, 2)
_TRANSITION_DILATIONS = (4, 4, 3, 1)


class DenseBlock(nn.Module):
    """``cat([conv(relu(bn(x))), crop(x)])``: a 3x3 valid convolution adds ``growth`` channels."""

    def __init__(self, layers: LayerFactory, in_channels: int, growth: int, spatial_kernel: int,
                 spatial_dilation: int):
        super().__init__()
        self.bn = layers.norm(in_channels)
        self.conv = layers.group(in_channels, growth, 3, ratio=in_channels // 2, spatial_kernel=spatial_kernel,
                                 spatial_dilation=spatial_dilation)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.conv(torch.relu(self.bn(x))), x[..., 1:-1, 1:-1]], dim=1)


class TransitionBlock(nn.Module):
    """``avgpool2(conv1x1(relu(bn(x))))``."""

    def __init__(self, layers: LayerFactory, channels: int, spatial_dilation: int):
        super().__init__()
        self.bn = layers.norm(channels)
        self.conv = layers.group(channels, channels, 1, ratio=channels // 2, spatial_dilation=spatial_dilation)

    def forward(self, x: Tensor) -> Tensor:
        return _pool2(self.conv(torch.relu(self.bn(x))), "avg")


class DenseNet(nn.Module):
    """The PCam DenseNet (Veeling et al., 2018) with two output logits per class pair.

    Args:
        layers: the layer factory.
        in_channels: image channels.
        num_classes: logits.
        num_blocks: dense blocks (a transition block follows all but the last); at most 5
            with attention (the spatial-attention dilations are given for 5).
        n_channels: channels of the first layer and growth of each dense block.
    """

    def __init__(self, layers: LayerFactory, in_channels: int = 3, num_classes: int = 2, num_blocks: int = 5,
                 n_channels: int = 24):
        super().__init__()
        if num_blocks < 1 or (layers.attention != "none" and num_blocks > len(_BLOCK_DILATIONS) + 1):
            raise ValueError(f"DenseNet needs 1 to {len(_BLOCK_DILATIONS) + 1} blocks with attention "
                             f"(at least 1 without), got {num_blocks}.")
        self.num_blocks = num_blocks
        self.c1 = layers.lifting(in_channels, n_channels, 3, spatial_dilation=4)
        blocks: List[nn.Module] = []
        transitions: List[nn.Module] = []
        channels = n_channels
        for index in range(num_blocks - 1):
            dilation = _BLOCK_DILATIONS[index] if index < len(_BLOCK_DILATIONS) else 1
            blocks.append(DenseBlock(layers, channels, n_channels, 7, dilation))
            channels += n_channels
            dilation = _TRANSITION_DILATIONS[index] if index < len(_TRANSITION_DILATIONS) else 1
            transitions.append(TransitionBlock(layers, channels, dilation))
        blocks.append(DenseBlock(layers, channels, n_channels, 5, 1))
        channels += n_channels
        self.block_layers = nn.Sequential(*blocks)
        self.trans_layers = nn.Sequential(*transitions)
        self.bn_out = layers.norm(channels)
        self.c_out = layers.group(channels, num_classes, 1, ratio=channels // 2, spatial_kernel=3)
        self.min_size = self.minimum_input_size(num_blocks)
        _init_plain_convs(self, _he_std)

    @staticmethod
    def minimum_input_size(num_blocks: int) -> int:
        """The smallest image side for which every layer keeps at least one pixel."""

        def final_side(side: int) -> int:
            side -= 2  # c1
            for _ in range(num_blocks - 1):
                side = (side - 2) // 2  # dense block, transition pool
            return side - 2  # last dense block

        side = 3
        while final_side(side) < 1:
            side += 1
        return side

    def forward(self, x: Tensor) -> Tensor:
        check_input_size(x, self.min_size, type(self).__name__)
        h = self.c1(x)
        for block, transition in zip(self.block_layers, self.trans_layers):
            h = transition(block(h))
        h = torch.relu(self.bn_out(self.block_layers[-1](h)))
        return _global_mean(self.c_out(h))
