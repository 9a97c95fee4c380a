"""Rotation of images by arbitrary angles (bilinear interpolation).

Only rotations by multiples of 90 degrees map the pixel grid onto itself; every
other angle needs interpolation, so no network on a pixel grid can be exactly
equivariant to it. :func:`rotate_images` is the interpolated rotation used to
measure how far from equivariant a network is at such angles
(:func:`g_selfatt.testing.rotation_errors`) and to rotate test images.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

Angles = Union[float, Sequence[float], Tensor]


def quarter_turns(angle_deg: float) -> Optional[int]:
    """The number of quarter turns in ``angle_deg`` if it is a multiple of 90 degrees, else ``None``."""
    turns = angle_deg / 90.0
    return round(turns) % 4 if abs(turns - round(turns)) < 1e-9 else None


def _angles_tensor(angles_deg: Angles, batch: int, device: torch.device) -> Tensor:
    """``angles_deg`` as a float64 tensor of shape ``(batch,)``."""
    angles = torch.as_tensor(angles_deg, dtype=torch.float64).flatten().to(device)
    if angles.numel() == 1:
        return angles.expand(batch)
    if angles.numel() != batch:
        raise ValueError(f"Got {angles.numel()} angles for a batch of {batch} images.")
    return angles


def rotate_images(images: Tensor, angles_deg: Angles) -> Tensor:
    """Rotates floating-point images about their centre, with bilinear interpolation and zero fill.

    Positive angles turn the image counter-clockwise as displayed (row 0 at the top), the
    direction of ``torch.rot90(images, 1, dims=(-2, -1))``. A single angle that is a multiple
    of 90 degrees is applied with ``torch.rot90`` (exact, no interpolation); pixels that
    any other rotation brings in from outside the image are 0.

    Args:
        images: ``(B, C, H, W)`` or ``(C, H, W)``, floating point, on any device.
        angles_deg: one angle for all images or one per image, in degrees.

    Returns:
        A tensor of the input's shape and dtype.
    """
    if not images.is_floating_point():
        raise TypeError(f"rotate_images needs floating-point images, got {images.dtype}; convert them first.")
    if images.dim() not in (3, 4):
        raise ValueError(f"Expected images of shape (B, C, H, W) or (C, H, W), got {tuple(images.shape)}.")
    if torch.as_tensor(angles_deg).numel() == 1:
        turns = quarter_turns(float(torch.as_tensor(angles_deg)))
        if turns is not None:
            return torch.rot90(images, turns, dims=(-2, -1))
    single = images.dim() == 3
    batch_images = images[None] if single else images  # (B, C, H, W)
    batch, _, height, width = batch_images.shape
    angles = torch.deg2rad(_angles_tensor(angles_deg, batch, batch_images.device))
    cos, sin = torch.cos(angles), torch.sin(angles)
    # Output pixel p samples the input at R(-angle) p; in normalised coordinates the axes are
    # scaled by W / 2 and H / 2, hence the aspect-ratio factors.
    theta = torch.stack([
        torch.stack([cos, -sin * height / width, torch.zeros_like(cos)], dim=1),
        torch.stack([sin * width / height, cos, torch.zeros_like(cos)], dim=1),
    ], dim=1).to(batch_images.dtype)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(batch_images.shape), align_corners=False)
    rotated = F.grid_sample(batch_images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return rotated[0] if single else rotated


def _centre_distances(height: int, width: int, device: Optional[torch.device] = None) -> Tensor:
    """The distance of every pixel centre from the image centre, ``(H, W)`` float64."""
    rows = torch.arange(height, device=device, dtype=torch.float64) - (height - 1) / 2.0
    cols = torch.arange(width, device=device, dtype=torch.float64) - (width - 1) / 2.0
    return (rows.view(-1, 1) ** 2 + cols.view(1, -1) ** 2).sqrt()


def disc_mask(height: int, width: int, margin: float = 0.0, device: Optional[torch.device] = None) -> Tensor:
    """The pixels of the disc inscribed in an ``H x W`` image, shrunk by ``margin`` pixels, ``(H, W)`` bool.

    Rotations about the image centre map this disc onto itself, so it is the region where a
    rotated image and a rotated output can be compared without the corners' zero fill.
    """
    radius = min(height, width) / 2.0 - margin
    return _centre_distances(height, width, device) <= radius


def smooth_disc_images(shape: Sequence[int], sigma: float = 1.0, generator: Optional[torch.Generator] = None,
                       dtype: torch.dtype = torch.float32) -> Tensor:
    """Random images that rotate well: Gaussian-smoothed noise, tapered to zero outside a disc.

    Smoothing removes the frequencies that bilinear interpolation cannot carry. The noise is
    then multiplied by a radial window that is 1 in the middle and falls smoothly (a raised
    cosine over ``2 sigma + 1`` pixels) to 0 at the inscribed disc shrunk by one pixel, which
    every rotation about the centre maps onto itself. Interpolated rotations of these images
    therefore lose little.

    Args:
        shape: ``(..., H, W)``.
        sigma: standard deviation of the Gaussian, in pixels.
        generator: random generator for the noise.
        dtype: floating dtype of the result.

    Returns:
        A tensor of ``shape``, scaled to unit maximum absolute value per image.

    Raises:
        ValueError: an image too small for a disc of at least one pixel.
    """
    *leading, height, width = shape
    outer = min(height, width) / 2.0 - 1.0
    if outer <= 1.0:
        raise ValueError(f"Images of {height}x{width} pixels are too small for a disc; use at least 6x6.")
    radius = max(1, math.ceil(3 * sigma))
    noise = torch.randn(math.prod(leading), 1, height + 2 * radius, width + 2 * radius, generator=generator,
                        dtype=torch.float64)
    steps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel_1d = torch.exp(-0.5 * (steps / sigma) ** 2)
    kernel_1d = kernel_1d / kernel_1d.sum()
    kernel = (kernel_1d.view(-1, 1) * kernel_1d.view(1, -1)).view(1, 1, 2 * radius + 1, 2 * radius + 1)
    smooth = F.conv2d(noise, kernel)  # (N, 1, H, W)
    distance = _centre_distances(height, width)  # (H, W)
    inner = max(0.0, outer - 2 * sigma - 1)
    ramp = ((distance - inner) / (outer - inner)).clamp(0.0, 1.0)
    window = 0.5 * (1 + torch.cos(math.pi * ramp))  # 1 inside ``inner``, 0 from ``outer`` on
    smooth = smooth * window
    smooth = smooth / smooth.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return smooth.view(*shape).to(dtype)
