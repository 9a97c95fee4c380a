"""Every registered model trains one epoch through main.py on tiny fixture data of its dataset."""

from __future__ import annotations

import pytest

import config as config_file
import fixture_data
import main
import models
from runner import checkpoint

FIXTURES = {
    "rotDigits": (None, {}),
    "rotMNIST": (fixture_data.make_rotmnist, {"valid_size": 2}),
    "CIFAR10": (fixture_data.make_cifar10, {"valid_size": 2}),
    "PCam": (fixture_data.make_pcam_hdf5, {}),
}


def dataset_of(name: str) -> str:
    """The cheapest dataset the model is defined for (rotDigits where it can run)."""
    architectures = list(models.get_model_spec(name).defaults)
    return "rotDigits" if "rotDigits" in architectures else architectures[0]


@pytest.mark.parametrize("name", models.list_models())
def test_model_trains_one_epoch_through_main(tmp_path, name):
    dataset = dataset_of(name)
    writer, overrides = FIXTURES[dataset]
    if writer is not None:
        writer(tmp_path / "data")
    config = config_file.get_config()
    config.update(dict(dataset=dataset, model=name, data_root=str(tmp_path / "data"),
                       save_dir=str(tmp_path / "saved"), device="cpu", batch_size=2, epochs=1,
                       max_examples=2, rotation_angles=0, num_threads=1, **overrides))
    result = main.run(config)
    saved = checkpoint.read(result.checkpoint)
    assert (saved["model"], saved["epoch"], saved["step"]) == (name, 1, 1)
    assert 0.0 <= result.metrics["accuracy"] <= 1.0
