"""End-to-end runs of main.py on tiny fixture data: every dataset format, pretrained weights."""

from __future__ import annotations

import json
import pathlib
import re

import pytest
import torch

import config as config_file
import fixture_data
import main
from g_selfatt.nn.attention import SelfAttentionCore
import g_selfatt_models.attgconv_zoo  # noqa: F401  (registers allcnnc and densenet)
from g_selfatt_models import checkpoints
from runner import paths
from tests.attention_checks import OPENMP_EXPECTED
from g_selfatt_models.checkpoints import CheckpointError

# dataset -> (fixture writer, its keyword arguments, model, config overrides). Small, fast
# models: the point is the data path, not the architecture.
FORMATS = {
    "rotMNIST-zip": ("rotMNIST", fixture_data.make_rotmnist, {}, "z2cnn", {"valid_size": 4}),
    "rotMNIST-amat": ("rotMNIST", fixture_data.make_rotmnist, {"archive": False}, "z2cnn",
                      {"valid_size": 4}),
    "CIFAR10": ("CIFAR10", fixture_data.make_cifar10, {"n_per_batch": 2}, "allcnnc",
                {"valid_size": 4, "augment": True}),
    "PCam-hdf5": ("PCam", fixture_data.make_pcam_hdf5, {}, "densenet", {}),
    "PCam-imagefolder": ("PCam", fixture_data.make_pcam_imagefolder, {}, "densenet", {}),
    "MNIST": ("MNIST", fixture_data.make_mnist, {}, "z2cnn", {"valid_size": 4}),
    "rotDigits": ("rotDigits", None, {}, "z2sa", {}),
}


def make_config(tmp_path, **overrides):
    """A small CPU run writing into ``tmp_path``."""
    config = config_file.get_config()
    config.data_root = str(tmp_path / "data")
    config.save_dir = str(tmp_path / "saved")
    config.device = "cpu"
    config.batch_size = 2
    config.epochs = 1
    config.rotation_angles = 2
    config.num_threads = 1
    for key, value in overrides.items():
        config[key] = value
    return config


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_one_epoch_on_every_dataset_format(tmp_path, fmt):
    dataset, writer, writer_args, model, overrides = FORMATS[fmt]
    if writer is not None:
        writer(tmp_path / "data", **writer_args)
    config = make_config(tmp_path, dataset=dataset, model=model, max_examples=4, **overrides)
    result = main.run(config)
    saved = checkpoints.read(result.checkpoint)
    assert saved["model"] == model and saved["epoch"] == 1 and saved["step"] == 2
    prefix = paths.output_prefix(result.checkpoint)
    report = json.loads(pathlib.Path(f"{prefix}.test.json").read_text())
    assert report["num_examples"] == result.metrics["num_examples"] > 0
    assert len(report["rotation_curve"]) == 2
    assert pathlib.Path(f"{prefix}.rotation.png").is_file()
    log = pathlib.Path(f"{prefix}.log").read_text()  # every line of the run, test results included
    assert "Configuration (unset values filled from" in log and "parameters" in log and "Test accuracy" in log
    assert ("roc_auc" in report) == (dataset == "PCam")
    if model.endswith("sa"):  # one entry per self-attention layer, "auto" resolved
        layers = [name for name, m in result.model.named_modules() if isinstance(m, SelfAttentionCore)]
        line = next(line for line in log.splitlines() if "Attention implementation of each layer" in line)
        entries = dict(entry.split("=") for entry in line.split(": ", 1)[1].rstrip(".").split(", "))
        assert list(entries) == layers and set(entries.values()) <= {"fused", "efficient"}


def _trained_model(tmp_path, **overrides):
    config = make_config(tmp_path, dataset="rotDigits", model="z2sa", train=False,
                         rotation_angles=0, max_examples=8, **overrides)
    return main.run(config).model


def test_pretrained_loads_an_original_style_module_prefixed_state_dict(tmp_path):
    source = _trained_model(tmp_path / "a", seed=1)
    original = {f"module.{k}": v for k, v in source.state_dict().items()}
    path = tmp_path / "original.pth"
    torch.save(original, path)
    config = make_config(tmp_path / "b", dataset="rotDigits", model="z2sa", train=False,
                         pretrained=True, checkpoint=str(path), rotation_angles=0,
                         max_examples=8, seed=2)
    loaded = main.run(config).model
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_a_test_of_another_checkpoint_writes_reports_of_its_own(tmp_path):
    tiny = dict(dataset="rotDigits", model="z2sa", max_examples=8, rotation_angles=0)
    own = main.run(make_config(tmp_path, **tiny))
    other = main.run(make_config(tmp_path, seed=1, **tiny)).checkpoint
    own_report = pathlib.Path(f"{paths.output_prefix(own.checkpoint)}.test.json")
    before = own_report.read_bytes()
    main.run(make_config(tmp_path, train=False, pretrained=True, checkpoint=str(other), **tiny))
    assert own_report.read_bytes() == before
    theirs = list(own_report.parent.glob(f"{paths.output_prefix(own.checkpoint).name}.tested/*.test.json"))
    assert len(theirs) == 1 and theirs[0].name.startswith(other.stem[:180])
    main.run(make_config(tmp_path, train=False, pretrained=True, checkpoint=str(own.checkpoint), **tiny))
    assert len(list(own_report.parent.rglob("*.test.json"))) == 3  # its own checkpoint: its own report


def test_pretrained_state_dict_of_another_model_reports_the_keys(tmp_path):
    other = _trained_model(tmp_path / "a")
    path = tmp_path / "other.pth"
    torch.save({f"module.{k}": v for k, v in other.state_dict().items()}, path)
    config = make_config(tmp_path / "b", dataset="rotDigits", model="p4sa", train=False,
                         pretrained=True, checkpoint=str(path), rotation_angles=0,
                         max_examples=8)
    with pytest.raises(CheckpointError, match="Missing keys|Shape mismatches") as error:
        main.run(config)
    assert "does not fit the model" in str(error.value)


def test_the_log_file_holds_one_run_and_a_refused_run_writes_nothing_to_it(tmp_path):
    from runner.errors import ConfigError

    config = make_config(tmp_path, dataset="rotDigits", model="z2sa", max_examples=4, rotation_angles=0)
    log = pathlib.Path(f"{paths.output_prefix(main.run(config).checkpoint)}.log")
    first = log.read_text()
    assert first.count("Configuration (unset values filled from") == 1
    assert ("runs on torch's OpenMP threads" if OPENMP_EXPECTED else "runs on threads of its own") in first
    assert re.search(r"parameters; \d+ CPU threads; freed memory: (kept|set by \$\w+|unchanged \(.+\))\.", first)
    with pytest.raises(ConfigError, match="already exists"):
        main.run(make_config(tmp_path, dataset="rotDigits", model="z2sa", max_examples=4, rotation_angles=0))
    assert log.read_text() == first
    main.run(make_config(tmp_path, dataset="rotDigits", model="z2sa", max_examples=4, rotation_angles=0,
                         overwrite=True))
    assert log.read_text().count("Configuration (unset values filled from") == 1  # the old run's lines are gone
