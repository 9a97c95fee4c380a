"""Resizing the images of a dataset to the size a model needs (config.image_size)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import config as config_file
import datasets
import main
import g_selfatt_models as models
from runner import paths
from runner.data import build_loaders
from runner.distributed import Context


def test_resize_converts_and_interpolates():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    resized = datasets.Resize(12)(images)
    expected = F.interpolate(images.float() / 255, size=(12, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resized, expected)
    assert datasets.Resize(8)(images).equal(images.float() / 255)
    with pytest.raises(ValueError, match="positive"):
        datasets.Resize(0)


def test_compose_resizes_before_normalising():
    images = torch.rand(2, 1, 16, 16)
    transform = datasets.Compose(datasets.Resize(28), datasets.Normalize([0.5], [0.25]))
    expected = (F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False) - 0.5) / 0.25
    torch.testing.assert_close(transform(images), expected)


def test_loaders_resize_to_the_model_input():
    config = config_file.get_config()
    config.update(dict(dataset="rotDigits", model="p4cnn", batch_size=4, max_examples=4))
    data = main.input_spec(config, main.data_spec(config), models.get_model_spec("p4cnn"))
    assert data.image_size == 28  # rotDigits is 16x16; the rotMNIST G-CNN needs 28x28
    context = Context(device=torch.device("cpu"))
    loaders = build_loaders(config, context, data.image_size)
    images, _ = next(iter(loaders.train))
    assert loaders.batch_transform(images).shape == (4, 1, 28, 28)
    assert build_loaders(config, context).batch_transform(images).shape == (4, 1, 16, 16)


def test_an_explicit_image_size_names_the_checkpoint():
    config = config_file.get_config()
    config.update(dict(optimizer="Adam", lr=1e-3, batch_size=8, epochs=1, weight_decay=0.0, scheduler="constant",
                       augment=False, attention_type="Local", patch_size=5, dropout_att=0.0, dropout_values=0.0,
                       activation_function="Swish", norm_type="LayerNorm", whitening_scale=1.0))
    plain = paths.checkpoint_stem(config, "gsa")
    config.image_size = 20
    assert paths.checkpoint_stem(config, "gsa") == plain.replace("model_p4sa_", "model_p4sa_img_20_")
