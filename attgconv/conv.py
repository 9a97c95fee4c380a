"""Lifting and group convolutions on p4 and p4m: the one kernel core of attgconv.

A :class:`GroupKernel` holds a trainable kernel and builds the stack of its
copies transformed by every element ``h`` of the group (rotations by ``rot90``,
mirrors by flips, a permutation of the input-group axis for group kernels):

    lifting kernel   w: (O, C, k, k)     ->  [h . w](x)    = w(M_h^-1 x)
    group kernel     w: (O, C, G, k, k)  ->  [h . w](g, x) = w(h^-1 g, M_h^-1 x)

:class:`LiftingConv` and :class:`GroupConv` apply that stack with one
``conv2d``; the attention modules and the attentive convolutions reuse the same
stack. Every layer here is equivariant under the left-regular action of
:meth:`attgconv.grids.PlanarGrid.transform_feature_map`:

    LiftingConv(x(M_u^-1 .))  = u . LiftingConv(x)
    GroupConv(u . f)          = u . GroupConv(f)

for every element ``u`` of the group (exactly, for kernels centred on the pixel
grid and spatial sizes that strides and pools divide).

Shape letters: B batch, O output channels, C input channels, G output group
elements, K input group elements, H/W height and width, k kernel side.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attgconv.grids import PlanarGrid


def transform_kernels(weight: Tensor, grid: PlanarGrid, permutations: Optional[Tensor] = None) -> Tensor:
    """Stacks the copies of ``weight`` transformed by every element of ``grid``.

    Args:
        weight: a lifting kernel ``(O, C, k, k)`` or, with ``permutations``, a group kernel
            ``(O, C, K, k, k)``.
        grid: the group.
        permutations: ``(G, K)`` positions read on the input-group axis by each element
            (usually :meth:`PlanarGrid.left_permutations`); ``None`` for lifting kernels.

    Returns:
        ``(O, G, C, k, k)`` or ``(O, G, C, K, k, k)``.
    """
    copies = []
    for position, element in enumerate(grid.elements):
        copy = grid.group.transform_image(weight, element)
        if permutations is not None:
            copy = copy.index_select(2, permutations[position])
        copies.append(copy)
    return torch.stack(copies, dim=1)


class GroupKernel(nn.Module):
    """A trainable lifting or group kernel and its transformed copies.

    Args:
        grid: the group.
        in_channels: input channels ``C``.
        out_channels: output channels ``O``.
        kernel_size: spatial side ``k``.
        on_group: ``True`` for a kernel on the group (input ``(B, C, G, H, W)``),
            ``False`` for a lifting kernel (input ``(B, C, H, W)``).
        wscale: the kernel starts uniform in ``+- wscale / sqrt(C k^2)``.
    """

    def __init__(self, grid: PlanarGrid, in_channels: int, out_channels: int, kernel_size: int, *,
                 on_group: bool, wscale: float = 1.0):
        super().__init__()
        _check_positive(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size)
        self.grid = grid
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.on_group = on_group
        group_axis = (len(grid),) if on_group else ()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *group_axis, kernel_size, kernel_size))
        self.register_buffer("_permutations", grid.left_permutations(), persistent=False)
        self.reset_parameters(wscale)

    def reset_parameters(self, wscale: float = 1.0) -> None:
        bound = wscale / math.sqrt(self.in_channels * self.kernel_size ** 2)
        nn.init.uniform_(self.weight, -bound, bound)

    def kernel_stack(self, out_channels: slice = slice(None)) -> Tensor:
        """The transformed copies of the kernels of ``out_channels``, ``(O, G, C, [K], k, k)``."""
        return transform_kernels(self.weight[out_channels], self.grid,
                                 self._permutations if self.on_group else None)

    def extra_repr(self) -> str:
        return (f"{self.grid.name}, {self.in_channels}, {self.out_channels}, "
                f"kernel_size={self.kernel_size}, on_group={self.on_group}")


def permutation_table(grid: PlanarGrid, kind: str) -> Tensor:
    """``(G, G)`` positions read on an input-group axis: ``"left"`` (the group action) or ``"cyclic"``."""
    tables = {"left": grid.left_permutations, "cyclic": grid.cyclic_permutations}
    if kind not in tables:
        raise ValueError(f"Unknown group action on kernels {kind!r}; expected one of {sorted(tables)}.")
    return tables[kind]()


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


class ConvolutionBase(GroupKernel):
    """A :class:`GroupKernel` applied as a convolution with stride, padding and dilation."""

    def __init__(self, grid: PlanarGrid, in_channels: int, out_channels: int, kernel_size: int, *,
                 on_group: bool, stride: int = 1, padding: int = 0, dilation: int = 1, wscale: float = 1.0):
        super().__init__(grid, in_channels, out_channels, kernel_size, on_group=on_group, wscale=wscale)
        self.stride = stride
        self.padding = padding
        self.dilation = dilation

    def convolve(self, x: Tensor, kernels: Tensor, groups: int = 1) -> Tensor:
        """``conv2d`` of images ``(B, *, H, W)`` with kernels ``(N, *, k, k)``."""
        return F.conv2d(x, kernels, stride=self.stride, padding=self.padding, dilation=self.dilation,
                        groups=groups)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}")


class LiftingConv(ConvolutionBase):
    """Lifting convolution ``R^2 -> G``: ``(B, C, H, W) -> (B, O, G, H', W')``.

    ``out(o, h, x) = sum_c (x_c * [h . w_oc])(x)`` (cross-correlation).

    Equivariance: ``LiftingConv(x(M_u^-1 .)) = u . LiftingConv(x)`` with
    ``[u . f](g, x) = f(u^-1 g, M_u^-1 x)``.

    Args:
        grid: the group (p4 or p4m).
        in_channels, out_channels, kernel_size, stride, padding, dilation: as for ``conv2d``.
        wscale: initialisation scale.
    """

    def __init__(self, grid: PlanarGrid, in_channels: int, out_channels: int, kernel_size: int, *,
                 stride: int = 1, padding: int = 0, dilation: int = 1, wscale: float = 1.0):
        super().__init__(grid, in_channels, out_channels, kernel_size, on_group=False, stride=stride,
                         padding=padding, dilation=dilation, wscale=wscale)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, 4, "(B, C, H, W)", self.in_channels)
        stack = self.kernel_stack()
        out = self.convolve(x, stack.flatten(0, 1))  # (B, O * G, H', W')
        return out.unflatten(1, stack.shape[:2])  # (B, O, G, H', W')


class GroupConv(ConvolutionBase):
    """Group convolution ``G -> G``: ``(B, C, G, H, W) -> (B, O, G, H', W')``.

    ``out(o, h, x) = m * sum_{c, g} (f_cg * [h . w_oc](g))(x)``, where ``m`` is
    :attr:`PlanarGrid.haar_measure` (the original's integration weight).

    Equivariance: ``GroupConv(u . f) = u . GroupConv(f)`` with
    ``[u . f](g, x) = f(u^-1 g, M_u^-1 x)``.

    Args:
        grid: the group (p4 or p4m).
        in_channels, out_channels, kernel_size, stride, padding, dilation: as for ``conv2d``.
        wscale: initialisation scale.
    """

    def __init__(self, grid: PlanarGrid, in_channels: int, out_channels: int, kernel_size: int, *,
                 stride: int = 1, padding: int = 0, dilation: int = 1, wscale: float = 1.0):
        super().__init__(grid, in_channels, out_channels, kernel_size, on_group=True, stride=stride,
                         padding=padding, dilation=dilation, wscale=wscale)
        self.integration_weight = grid.haar_measure

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, 5, "(B, C, G, H, W)", self.in_channels, len(self.grid))
        stack = self.kernel_stack()
        out = self.convolve(x.flatten(1, 2), stack.flatten(0, 1).flatten(1, 2))  # (B, O * G, H', W')
        return self.integration_weight * out.unflatten(1, stack.shape[:2])  # (B, O, G, H', W')


def check_input(x: Tensor, ndim: int, layout: str, channels: int, elements: Optional[int] = None) -> None:
    """Raises a ValueError naming the expected layout when ``x`` does not fit."""
    wrong = x.dim() != ndim or x.shape[1] != channels or (elements is not None and x.shape[2] != elements)
    if wrong:
        expected = layout.replace("C", f"C={channels}").replace("G,", f"G={elements},")
        raise ValueError(f"Expected an input of shape {expected}, got {tuple(x.shape)}.")
