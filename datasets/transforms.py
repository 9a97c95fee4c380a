"""Batch-wise image transforms that run on the images' device.

Datasets yield raw images: ``uint8`` in [0, 255] or floating point in [0, 1]. The training
loop turns a batch into network input with, in this order,

1. ``train_augment(images, generator)`` (optional, training batches only), then
2. ``batch_transform(images)``: conversion to float, scaling to [0, 1] and per-channel
   normalisation.

Shapes: images are (B, C, H, W) throughout.
"""

from __future__ import annotations

import abc
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from g_selfatt import functional
from g_selfatt.functional.rotation import Angles


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """Integer images divided by 255; floating images returned unchanged (assumed in [0, 1])."""
    if images.is_floating_point():
        return images
    return images.float().div_(255.0)


class BatchTransform(abc.ABC):
    """A callable applied to a whole batch of images on its device."""

    @abc.abstractmethod
    def __call__(self, images: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Transforms ``images`` of shape (B, C, H, W).

        Args:
            images: the batch, on any device.
            generator: source of randomness for random transforms; deterministic transforms
                ignore it.
        """


class Normalize(BatchTransform):
    """Converts to float in [0, 1] (see :func:`to_unit_float`) and normalises each channel.

    Args:
        mean: per-channel mean of the [0, 1] images.
        std: per-channel standard deviation of the [0, 1] images.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std):
            raise ValueError(f"mean {tuple(mean)} and std {tuple(std)} differ in length.")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(self, images: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != len(self.mean):
            raise ValueError(
                f"Expected images of shape (B, {len(self.mean)}, H, W), got {tuple(images.shape)}."
            )
        images = to_unit_float(images)
        dtype = images.dtype
        mean = torch.tensor(self.mean, dtype=dtype, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=dtype, device=images.device).view(1, -1, 1, 1)
        return (images - mean) / std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class RandomBatchTransform(BatchTransform):
    """A random transform with its own parameters per image: :meth:`sample` draws them from the
    generator (on its device), :meth:`apply` applies them, so a batch can be transformed again
    with the same draw."""

    @abc.abstractmethod
    def sample(self, batch: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Draws the parameters of ``batch`` images."""

    @abc.abstractmethod
    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Transforms ``images`` (B, C, H, W) with parameters returned by :meth:`sample`."""

    def __call__(self, images: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.apply(images, self.sample(images.shape[0], generator))


def _generator_device(generator: Optional[torch.Generator]) -> torch.device:
    """Where ``generator`` draws: its device, or the CPU without one."""
    return generator.device if generator is not None else torch.device("cpu")


class RandomCropFlip(RandomBatchTransform):
    """Random crop after zero padding, then a random horizontal flip, independently per image.

    The batch-wise equivalent of padding each image with ``padding`` zeros, cropping a window
    of the original size at a uniformly random offset and flipping left-right with
    probability 1/2. Apply it to the raw images (before :class:`Normalize`), so that the
    padding is black as in the papers' CIFAR10 pipeline.

    Args:
        padding: zeros added on every side; crop offsets are uniform in
            [-padding, padding] along each axis.
    """

    def __init__(self, padding: int = 4) -> None:
        if padding < 0:
            raise ValueError(f"padding must be non-negative, got {padding}.")
        self.padding = padding

    def sample(self, batch: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Draws per-image parameters.

        Returns:
            int64 tensor (batch, 3) on the generator's device (CPU without one): row and
            column offsets in [0, 2 * padding] into the padded image and a flip flag (0 or 1).
        """
        device = _generator_device(generator)
        offsets = torch.randint(0, 2 * self.padding + 1, (batch, 2), generator=generator,
                                device=device)
        flips = torch.randint(0, 2, (batch, 1), generator=generator, device=device)
        return torch.cat([offsets, flips], dim=1)

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Crops and flips ``images`` with the parameters returned by :meth:`sample`."""
        batch, _, height, width = images.shape
        params = params.to(images.device)
        pad = self.padding
        padded = F.pad(images, (pad, pad, pad, pad))  # (B, C, H + 2p, W + 2p)
        rows = params[:, 0:1] + torch.arange(height, device=images.device)  # (B, H)
        cols = params[:, 1:2] + torch.arange(width, device=images.device)  # (B, W)
        index = torch.arange(batch, device=images.device).view(batch, 1, 1)
        channels_last = padded.permute(0, 2, 3, 1)  # (B, H + 2p, W + 2p, C)
        crops = channels_last[index, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
        crops = crops.permute(0, 3, 1, 2)  # (B, C, H, W)
        flip = params[:, 2].bool().view(batch, 1, 1, 1)
        return torch.where(flip, crops.flip(-1), crops).contiguous()

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding})"


class RandomRotation(RandomBatchTransform):
    """Rotates each image about its centre by its own angle, uniform in [0, 360) degrees.

    Bilinear interpolation with zero fill (:func:`rotate_images`); integer images become float in
    [0, 1], so apply it to the raw images, before :class:`Normalize`. For datasets of digits
    rotated by uniform angles, the rotated digit follows the data's own distribution of
    orientations (interpolated once more).
    """

    def sample(self, batch: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Draws one angle per image: float64 tensor (batch,) in degrees, on the generator's device
        (CPU without one)."""
        return torch.rand(batch, generator=generator, device=_generator_device(generator),
                          dtype=torch.float64) * 360.0

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Rotates ``images`` (B, C, H, W) by the angles returned by :meth:`sample`."""
        return rotate_images(images, params.to(images.device))

    def __repr__(self) -> str:
        return "RandomRotation()"


class Resize(BatchTransform):
    """Converts to float in [0, 1] (see :func:`to_unit_float`) and resizes to ``size x size``.

    Bilinear interpolation; shrinking is antialiased. Apply it before :class:`Normalize`
    (or use :class:`Compose`), so that the interpolation sees the raw intensities.

    Args:
        size: the side of the output images.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}.")
        self.size = size

    def __call__(self, images: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        images = to_unit_float(images)
        if images.shape[-2:] == (self.size, self.size):
            return images
        shrink = min(images.shape[-2:]) > self.size
        return F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False,
                             antialias=shrink)

    def __repr__(self) -> str:
        return f"Resize(size={self.size})"


class Compose(BatchTransform):
    """Applies transforms one after the other (the generator is passed to each)."""

    def __init__(self, *transforms: BatchTransform) -> None:
        self.transforms = transforms

    def __call__(self, images: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        for transform in self.transforms:
            images = transform(images, generator)
        return images

    def __repr__(self) -> str:
        return f"Compose({', '.join(map(repr, self.transforms))})"


def rotate_images(images: torch.Tensor, angles_deg: Angles) -> torch.Tensor:
    """Rotates images about their centre with bilinear interpolation and zero fill.

    Integer images are converted to float in [0, 1] first, so rotate before normalising
    (zero fill = black); the rotation itself is :func:`g_selfatt.functional.rotate_images`:
    positive angles turn counter-clockwise as displayed, like ``torch.rot90``, and a single
    angle that is a multiple of 90 degrees is exact.

    Args:
        images: (B, C, H, W) or (C, H, W), on any device.
        angles_deg: one angle for all images or one per image, in degrees.

    Returns:
        Floating tensor of the input's shape.
    """
    return functional.rotate_images(to_unit_float(images), angles_deg)


__all__ = ["BatchTransform", "Compose", "Normalize", "RandomBatchTransform", "RandomCropFlip", "RandomRotation", "Resize", "rotate_images", "to_unit_float"]
