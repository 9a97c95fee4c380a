"""Every registered model trains one epoch through main.py on tiny fixture data of its dataset.

The attentive G-CNN architectures also build for every dataset of the runner (images smaller
than an architecture accepts are enlarged to its minimum side) and train through main.py on
datasets other than their own.
"""

from __future__ import annotations

import pytest
import torch

import config as config_file
import datasets
import fixture_data
import main
import g_selfatt_models as models
from g_selfatt_models import checkpoints
from runner.errors import ConfigError

FIXTURES = {
    "rotDigits": (None, {}),
    "rotMNIST": (fixture_data.make_rotmnist, {"valid_size": 2}),
    "MNIST": (fixture_data.make_mnist, {"valid_size": 2}),
    "CIFAR10": (fixture_data.make_cifar10, {"valid_size": 2}),
    "PCam": (fixture_data.make_pcam_hdf5, {}),
    "rotMNIST5k": (fixture_data.make_rotmnist5k, {"valid_size": 2}),
}


def dataset_of(name: str) -> str:
    """The cheapest dataset the model is defined for (rotDigits where it can run)."""
    architectures = list(models.get_model_spec(name).defaults)
    return "rotDigits" if "rotDigits" in architectures else architectures[0]


def train_one_epoch(tmp_path, name: str, dataset: str) -> main.RunResult:
    """Trains ``name`` for one step of one example on fixture data of ``dataset``, then tests it."""
    writer, overrides = FIXTURES[dataset]
    if writer is not None:
        writer(tmp_path / "data")
    config = config_file.get_config()
    config.update(dict(dataset=dataset, model=name, data_root=str(tmp_path / "data"),
                       save_dir=str(tmp_path / "saved"), device="cpu", batch_size=1, epochs=1,
                       max_examples=1, rotation_angles=0, num_threads=1, **overrides))
    result = main.run(config)
    saved = checkpoints.read(result.checkpoint)
    assert (saved["model"], saved["architecture"], saved["epoch"], saved["step"]) == (
        name, datasets.get_data_spec(dataset).architecture, 1, 1)
    assert 0.0 <= result.metrics["accuracy"] <= 1.0
    return result


@pytest.mark.parametrize("name", models.list_models())
def test_model_trains_one_epoch_through_main(tmp_path, name):
    train_one_epoch(tmp_path, name, dataset_of(name))


# ------------------------------------------------- attentive G-CNNs on every dataset

ATTGCONV_MODELS = models.list_models(family="attgconv")
# The smallest image side of each architecture: valid convolutions shrink the images of
# the rotMNIST CNN (28 -> 26 -> 24 -> pool 12 -> 10 -> 8 -> 6 -> 4 -> 4x4 kernel -> 1) and of
# DenseNet (80 -> 78 -> 76 -> pool 38 -> 36 -> 18 -> 16 -> 8 -> 6 -> 3 -> 1); All-CNN-C and
# ResNet44 pad their convolutions and pool twice by 2.
MINIMUM_SIDE = {"p4cnn": 28, "densenet": 80, "allcnnc": 4, "resnet44": 4}


def minimum_side(name: str) -> int:
    return next(side for suffix, side in MINIMUM_SIDE.items() if name.endswith(suffix))


@pytest.mark.parametrize("dataset", datasets.DATASET_NAMES)
@pytest.mark.parametrize("name", ATTGCONV_MODELS)
def test_model_builds_for_every_dataset(name, dataset):
    config = config_file.get_config()
    config.update(dict(dataset=dataset, model=name))
    native = main.data_spec(config)
    spec = models.get_model_spec(name)
    assert spec.min_image_size == minimum_side(name)
    data = main.input_spec(config, native, spec)
    assert data.image_size == max(native.image_size, minimum_side(name))
    model = main.build_model(config, data).eval()
    if data.architecture == dataset_of(name):
        return  # trained through main.py above
    # All-CNN-C and ResNet44 pad their convolutions and pool globally, so any side from their
    # minimum gives the same wiring; a 96x96 PCam image through an attentive All-CNN-C takes ~25 s.
    side = min(data.image_size, 32) if minimum_side(name) <= 4 else data.image_size
    images = torch.randn(2, data.in_channels, side, side)
    with torch.no_grad():
        assert model(images).shape == (2, data.num_classes)


def test_an_image_size_below_the_minimum_is_refused():
    config = config_file.get_config()
    config.update(dict(dataset="rotDigits", model="p4cnn", image_size=20))
    with pytest.raises(ConfigError, match="at least 28x28 .*--config.image_size=28"):
        main.input_spec(config, main.data_spec(config), models.get_model_spec("p4cnn"))


# One model of each architecture on datasets other than its own (other channels, classes
# and image sizes); on rotDigits the rotMNIST CNN sees 28x28 and DenseNet everywhere 80x80 images.
# Both families train on the real digits of rotMNIST5k (its own architecture and protocol).
OTHER_DATASETS = [("p4cnn", "PCam"), ("f_att_p4cnn", "rotDigits"), ("p4m_allcnnc", "rotDigits"),
                  ("att_p4cnn", "rotMNIST5k"), ("p4sa", "rotMNIST5k"),
                  ("f_att_p4m_resnet44", "MNIST"), ("resnet44", "rotMNIST"), ("p4_densenet", "rotDigits"),
                  ("p4m_densenet", "CIFAR10")]


@pytest.mark.parametrize("name,dataset", OTHER_DATASETS)
def test_model_trains_through_main_on_another_dataset(tmp_path, name, dataset):
    assert dataset != dataset_of(name)
    train_one_epoch(tmp_path, name, dataset)
