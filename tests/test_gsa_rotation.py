"""Interpolated rotations and the equivariance error against the rotation angle."""

from __future__ import annotations

import math

import pytest
import torch

from g_selfatt.functional import disc_mask, quarter_turns, rotate_images, smooth_disc_images
from g_selfatt.groups import get_group
from g_selfatt.nn import LiftLocalSelfAttention, whitening_init_
from g_selfatt.testing import rotation_errors


def gaussian_blob(size: int, centre_row: float, centre_col: float, width: float = 3.0) -> torch.Tensor:
    """A smooth blob sampled at the pixel centres, with the image centre at ``(size - 1) / 2``, ``(size, size)``."""
    coordinates = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    rows, cols = coordinates.view(-1, 1), coordinates.view(1, -1)
    return torch.exp(-((rows - centre_row) ** 2 + (cols - centre_col) ** 2) / (2 * width ** 2))


@pytest.mark.parametrize("turns", [0, 1, 2, 3, -1, 5])
def test_multiples_of_90_degrees_are_rot90_exactly(turns):
    images = torch.randn(2, 3, 7, 9)
    assert torch.equal(rotate_images(images, 90.0 * turns), torch.rot90(images, turns, dims=(-2, -1)))
    assert quarter_turns(90.0 * turns) == turns % 4
    assert quarter_turns(45.0) is None


@pytest.mark.parametrize("angle", [30.0, 45.0, 135.0, -60.0])
def test_rotation_matches_the_rotated_continuous_image(angle):
    """Sampling a rotated blob and rotating a sampled blob agree up to interpolation error."""
    size, radius = 33, 6.0
    image = gaussian_blob(size, -radius, 0.0)  # above the centre (row 0 is the top)
    theta = math.radians(angle)
    # Counter-clockwise as displayed, like torch.rot90: the point above the centre moves to the left.
    expected = gaussian_blob(size, -radius * math.cos(theta), -radius * math.sin(theta))
    rotated = rotate_images(image[None, None], angle)[0, 0]
    assert (rotated - expected).abs().max() < 0.03
    assert (rotate_images(image[None, None], -angle)[0, 0] - expected).abs().max() > 0.3


def test_per_image_angles_and_bad_input():
    images = torch.randn(3, 1, 8, 8)
    per_image = rotate_images(images, torch.tensor([0.0, 90.0, 30.0]))
    torch.testing.assert_close(per_image[1], torch.rot90(images[1], 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_image[2], rotate_images(images[2], 30.0))
    with pytest.raises(ValueError, match="2 angles for a batch of 3"):
        rotate_images(images, [1.0, 2.0])
    with pytest.raises(TypeError, match="floating-point"):
        rotate_images(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), 10.0)
    with pytest.raises(ValueError, match="shape"):
        rotate_images(torch.zeros(4, 4), 10.0)


def test_disc_mask_is_rotation_invariant():
    mask = disc_mask(11, 11, margin=1.0)
    assert torch.equal(mask, torch.rot90(mask, 1, dims=(0, 1)))
    assert mask[5, 5] and not mask[0, 0] and mask.sum() < 11 * 11


def test_smooth_disc_images():
    generator = torch.Generator().manual_seed(0)
    images = smooth_disc_images((2, 3, 16, 16), sigma=1.5, generator=generator, dtype=torch.float64)
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.float64
    outside = ~disc_mask(16, 16, margin=1.0)
    assert images[..., outside].abs().max() == 0
    torch.testing.assert_close(images.abs().amax(dim=(-2, -1)), torch.ones(2, 3, dtype=torch.float64))
    again = smooth_disc_images((2, 3, 16, 16), sigma=1.5, generator=torch.Generator().manual_seed(0),
                               dtype=torch.float64)
    assert torch.equal(images, again)
    with pytest.raises(ValueError, match="too small"):
        smooth_disc_images((1, 1, 4, 4))


def test_rotation_errors_of_a_pointwise_map_are_interpolation_only():
    """A pointwise map commutes with rotations; only interpolation separates f(R x) and R f(x)."""
    x = smooth_disc_images((1, 1, 33, 33), sigma=2.0, generator=torch.Generator().manual_seed(1),
                           dtype=torch.float64)
    errors = rotation_errors(torch.tanh, x, [0.0, 45.0, 90.0, 200.0], output_kind="image")
    assert errors[0.0] == 0 and errors[90.0] == 0
    assert 0 < errors[45.0] < 0.02 and errors[200.0] < 0.02
    flipped = rotation_errors(lambda t: torch.flip(torch.tanh(t), dims=[-1]), x, [45.0], output_kind="image")
    assert flipped[45.0] > 0.3


def test_rotation_errors_of_lifting_layers():
    x = smooth_disc_images((1, 1, 13, 13), sigma=1.5, generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64)
    errors = {}
    for name in ("z2", "p4"):
        torch.manual_seed(0)
        layer = whitening_init_(LiftLocalSelfAttention(get_group(name), 1, 4, 4, 2, 5, 0.0)).double().eval()
        errors[name] = rotation_errors(layer, x, [90.0, 45.0], output_kind="group")
    assert errors["p4"][90.0] < 1e-12
    assert errors["z2"][90.0] > 1e-2
    assert errors["p4"][45.0] > 1e-3  # interpolated: never exact
    with pytest.raises(ValueError, match="Unknown output kind"):
        rotation_errors(layer, x, [45.0], output_kind="vector")
