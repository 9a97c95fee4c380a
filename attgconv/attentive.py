"""Attentive lifting and group convolutions.

* **Full** (:class:`AttentiveLiftingConv`, :class:`AttentiveGroupConv`): the
  contribution ``r[o, h, c, (k)]`` of every input channel (and input element) to
  every output channel is kept apart, attenuated as ``r - att(r) * r`` and only then
  summed. Storing every contribution costs ``O * G * C * K * H * W`` values per
  sample (about 72 GB for the p4 All-CNN-C on CIFAR-10 at batch 128), so two
  formulations are offered:

  - ``"full"``: the original one, all contributions at once;
  - ``"chunked"`` (default): blocks of ``chunk_size`` output channels at a time; when
    gradients are needed each block is recomputed during the backward pass
    (``torch.utils.checkpoint``), so at most one block of contributions is alive.

  Both give the same outputs and gradients up to float round-off.
* **Feature-map** ("fA": :class:`FeatureAttentiveLiftingConv`,
  :class:`FeatureAttentiveGroupConv`): the input feature map is attenuated once,
  ``x - att(x) * x``, before an ordinary lifting or group convolution.

All are equivariant like the convolutions they extend: ``Layer(x(M_u^-1 .)) =
u . Layer(x)`` for lifting layers and ``Layer(u . f) = u . Layer(f)`` for group
layers, ``[u . f](g, x) = f(u^-1 g, M_u^-1 x)``, provided their attention
modules are the group versions of :mod:`attgconv.attention`.

Shape letters as in :mod:`attgconv.conv`.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from attgconv.conv import ConvolutionBase, GroupConv, LiftingConv, check_input
from attgconv.grids import PlanarGrid

Attention = Callable[[Tensor], Tensor]
FORMULATIONS = ("chunked", "full")


def attenuate(x: Tensor, channel_attention: Optional[Attention], spatial_attention: Optional[Attention]) -> Tensor:
    """``x - a`` with ``a = x * channel(x)``, then ``a = a * spatial(a)`` (each when given)."""
    if channel_attention is None and spatial_attention is None:
        return x
    attended = x
    if channel_attention is not None:
        attended = attended * channel_attention(attended)
    if spatial_attention is not None:
        attended = attended * spatial_attention(attended)
    return x - attended


class _InputAttention:
    """Mixin: attenuates the input of a convolution by its attention modules (fA layers)."""

    def __init__(self, *args, channel_attention: Optional[nn.Module] = None,
                 spatial_attention: Optional[nn.Module] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.channel_attention = channel_attention
        self.spatial_attention = spatial_attention

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(attenuate(x, self.channel_attention, self.spatial_attention))


class FeatureAttentiveLiftingConv(_InputAttention, LiftingConv):
    """``LiftingConv(x - att(x) * x)`` with feature-map attention on the input image.

    Args: those of :class:`attgconv.conv.LiftingConv`, plus ``channel_attention``
    (e.g. :class:`attgconv.attention.FeatureChannelAttention`) and ``spatial_attention``
    (e.g. :class:`attgconv.attention.FeatureSpatialAttention`), either may be ``None``.
    """


class FeatureAttentiveGroupConv(_InputAttention, GroupConv):
    """``GroupConv(f - att(f) * f)`` with feature-map attention on the input feature map.

    Args: those of :class:`attgconv.conv.GroupConv`, plus ``channel_attention``
    (e.g. :class:`attgconv.attention.FeatureGroupChannelAttention`) and
    ``spatial_attention`` (e.g. :class:`attgconv.attention.FeatureGroupSpatialAttention`).
    """


class _AttentiveConvolution(ConvolutionBase):
    """A convolution whose per-input contributions are attenuated before they are summed."""

    # Axes of the contributions tensor summed at the end (input channels, input elements).
    _input_dims: Tuple[int, ...]

    def __init__(self, grid: PlanarGrid, in_channels: int, out_channels: int, kernel_size: int, *,
                 on_group: bool, channel_attention: Optional[nn.Module], spatial_attention: Optional[nn.Module],
                 stride: int, padding: int, dilation: int, wscale: float, formulation: str, chunk_size: int):
        super().__init__(grid, in_channels, out_channels, kernel_size, on_group=on_group, stride=stride,
                         padding=padding, dilation=dilation, wscale=wscale)
        if formulation not in FORMULATIONS:
            raise ValueError(f"Unknown formulation {formulation!r}; expected one of {FORMULATIONS}.")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of output channels, got {chunk_size!r}.")
        self.channel_attention = channel_attention
        self.spatial_attention = spatial_attention
        self.formulation = formulation
        self.chunk_size = chunk_size
        self.integration_weight = 1.0

    def contributions(self, x: Tensor, stack: Tensor) -> Tensor:
        """The contribution of every input to the output channels of the kernels ``stack``.

        Args:
            x: the input.
            stack: transformed kernels of some output channels (see :meth:`kernel_stack`).

        Returns:
            ``(B, O, G, C, [K], H', W')``.
        """
        raise NotImplementedError

    def _attended_sum(self, x: Tensor, stack: Tensor, out_channels: slice) -> Tensor:
        responses = self.contributions(x, stack[out_channels])
        responses = attenuate(
            responses,
            _restricted(self.channel_attention, out_channels),
            _restricted(self.spatial_attention, out_channels),
        )
        return self.integration_weight * responses.sum(dim=self._input_dims)  # (B, O, G, H', W')

    def forward(self, x: Tensor) -> Tensor:
        stack = self.kernel_stack()
        if self.formulation == "full":
            return self._attended_sum(x, stack, slice(None))
        blocks = [slice(start, start + self.chunk_size) for start in range(0, self.out_channels, self.chunk_size)]
        if torch.is_grad_enabled():
            outputs = [checkpoint(self._attended_sum, x, stack, block, use_reentrant=False) for block in blocks]
        else:
            outputs = [self._attended_sum(x, stack, block) for block in blocks]
        return torch.cat(outputs, dim=1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, formulation={self.formulation!r}, chunk_size={self.chunk_size}"


def _restricted(attention: Optional[nn.Module], out_channels: slice) -> Optional[Attention]:
    return None if attention is None else functools.partial(attention, out_channels=out_channels)


class AttentiveLiftingConv(_AttentiveConvolution):
    """Full attentive lifting convolution ``(B, C, H, W) -> (B, O, G, H', W')``.

    ``out(o, h) = sum_c [r - att(r) * r](o, h, c)`` with ``r(o, h, c) = x_c * [h . w_oc]``.

    Equivariance: ``AttentiveLiftingConv(x(M_u^-1 .)) = u . AttentiveLiftingConv(x)``.

    Args:
        grid: the group.
        in_channels, out_channels, kernel_size, stride, padding, dilation: as for ``conv2d``.
        channel_attention: e.g. :class:`attgconv.attention.ChannelAttention`, or ``None``.
        spatial_attention: e.g. :class:`attgconv.attention.SpatialAttention`, or ``None``.
        wscale: initialisation scale.
        formulation: ``"chunked"`` (memory-lean) or ``"full"`` (the original).
        chunk_size: output channels per block of the chunked formulation.
    """

    _input_dims = (3,)

    def __init__(self, grid: PlanarGrid, in_channels: int, out_channels: int, kernel_size: int, *,
                 channel_attention: Optional[nn.Module] = None, spatial_attention: Optional[nn.Module] = None,
                 stride: int = 1, padding: int = 0, dilation: int = 1, wscale: float = 1.0,
                 formulation: str = "chunked", chunk_size: int = 16):
        super().__init__(grid, in_channels, out_channels, kernel_size, on_group=False,
                         channel_attention=channel_attention, spatial_attention=spatial_attention, stride=stride,
                         padding=padding, dilation=dilation, wscale=wscale, formulation=formulation,
                         chunk_size=chunk_size)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, 4, "(B, C, H, W)", self.in_channels)
        return super().forward(x)

    def contributions(self, x: Tensor, stack: Tensor) -> Tensor:
        per_input = stack.permute(2, 0, 1, 3, 4)  # (O, G, C, k, k) -> (C, O, G, k, k)
        out = self.convolve(x, per_input.reshape(-1, 1, *stack.shape[-2:]), groups=self.in_channels)
        out = out.view(x.shape[0], *per_input.shape[:3], *out.shape[-2:])  # (B, C, O, G, H', W')
        return out.permute(0, 2, 3, 1, 4, 5)  # (B, O, G, C, H', W')


class AttentiveGroupConv(_AttentiveConvolution):
    """Full attentive group convolution ``(B, C, G, H, W) -> (B, O, G, H', W')``.

    ``out(o, h) = (2 pi / G) sum_{c, k} [r - att(r) * r](o, h, c, k)`` with
    ``r(o, h, c, k) = f_ck * [h . w_oc](k)``; the weight ``2 pi / G`` is the original's
    (for p4m it is half the :attr:`PlanarGrid.haar_measure` of :class:`GroupConv`).

    Equivariance: ``AttentiveGroupConv(u . f) = u . AttentiveGroupConv(f)``.

    Args:
        grid: the group.
        in_channels, out_channels, kernel_size, stride, padding, dilation: as for ``conv2d``.
        channel_attention: e.g. :class:`attgconv.attention.GroupChannelAttention`, or ``None``.
        spatial_attention: e.g. :class:`attgconv.attention.GroupSpatialAttention`, or ``None``.
        wscale: initialisation scale.
        formulation: ``"chunked"`` (memory-lean) or ``"full"`` (the original).
        chunk_size: output channels per block of the chunked formulation.
    """

    _input_dims = (3, 4)

    def __init__(self, grid: PlanarGrid, in_channels: int, out_channels: int, kernel_size: int, *,
                 channel_attention: Optional[nn.Module] = None, spatial_attention: Optional[nn.Module] = None,
                 stride: int = 1, padding: int = 0, dilation: int = 1, wscale: float = 1.0,
                 formulation: str = "chunked", chunk_size: int = 16):
        super().__init__(grid, in_channels, out_channels, kernel_size, on_group=True,
                         channel_attention=channel_attention, spatial_attention=spatial_attention, stride=stride,
                         padding=padding, dilation=dilation, wscale=wscale, formulation=formulation,
                         chunk_size=chunk_size)
        self.integration_weight = 2 * math.pi / len(grid)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, 5, "(B, C, G, H, W)", self.in_channels, len(self.grid))
        return super().forward(x)

    def contributions(self, x: Tensor, stack: Tensor) -> Tensor:
        per_input = stack.permute(2, 3, 0, 1, 4, 5)  # (O, G, C, K, k, k) -> (C, K, O, G, k, k)
        out = self.convolve(x.flatten(1, 2), per_input.reshape(-1, 1, *stack.shape[-2:]),
                            groups=per_input.shape[:2].numel())
        out = out.view(x.shape[0], *per_input.shape[:4], *out.shape[-2:])  # (B, C, K, O, G, H', W')
        return out.permute(0, 3, 4, 1, 2, 5, 6)  # (B, O, G, C, K, H', W')
