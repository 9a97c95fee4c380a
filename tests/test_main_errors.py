"""User errors end the run with a one-paragraph message, a non-zero status and no traceback."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import fixture_data
import main
from datasets import rot_mnist

from conftest import REPO_ROOT
from test_main_e2e import make_config as e2e_config


def make_config(tmp_path, **overrides):
    """:func:`test_main_e2e.make_config` with 4 examples and no rotation curve."""
    return e2e_config(tmp_path, **{"rotation_angles": 0, "max_examples": 4, **overrides})


def assert_user_error(config, capsys, *fragments):
    """``main.run_cli`` reports the error (status 2) and every fragment is in the message."""
    assert main.run_cli(config) == 2
    message = capsys.readouterr().err
    assert "Traceback" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def run_main(*flags):
    """``python main.py <flags>`` in a subprocess."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "main.py", *flags], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


# ----- through the command line --------------------------------------------------------------
def test_cli_unknown_model_lists_the_registered_ones():
    result = run_main("--config.model=p5sa", "--config.device=cpu")
    assert result.returncode == 2
    assert "Unknown model 'p5sa'" in result.stderr and "'p4sa'" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_missing_dataset_files_says_where_and_how(tmp_path):
    result = run_main("--config.dataset=rotMNIST", f"--config.data_root={tmp_path}",
                      "--config.device=cpu", f"--config.save_dir={tmp_path}")
    assert result.returncode == 2
    assert "not found" in result.stderr and "--config.download=True" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_cuda_absent_names_the_fix():
    result = run_main("--config.device=cuda")
    assert result.returncode == 2
    assert "--config.device=cpu" in result.stderr and "Traceback" not in result.stderr


def test_cli_mistyped_field_fails():
    result = run_main("--config.lrr=0.1")
    assert result.returncode != 0 and "lrr" in result.stderr


# ----- in process ----------------------------------------------------------------------------
def test_unknown_dataset_lists_the_valid_ones(tmp_path, capsys):
    assert_user_error(make_config(tmp_path, dataset="ImageNet"), capsys,
                      "Unknown dataset 'ImageNet'", "'rotMNIST'", "'rotDigits'")


def test_bad_choice_value(tmp_path, capsys):
    assert_user_error(make_config(tmp_path, optimizer="Adamw"), capsys,
                      "Unknown optimizer 'Adamw'", "'SGD'")


def test_augmentation_where_the_dataset_has_none(tmp_path, capsys):
    assert_user_error(make_config(tmp_path, dataset="rotDigits", model="z2sa", augment=True), capsys,
                      "defines no training augmentation")


def test_checksum_mismatch(tmp_path, capsys):
    fixture_data.make_rotmnist(tmp_path / "data")
    assert_user_error(make_config(tmp_path, dataset="rotMNIST", download=True, valid_size=4),
                      capsys, "Checksum mismatch")


def test_corrupt_archive(tmp_path, capsys):
    folder = tmp_path / "data" / rot_mnist.FOLDER
    folder.mkdir(parents=True)
    (folder / rot_mnist.ARCHIVE.filename).write_bytes(b"PK\x03\x04 truncated")
    assert_user_error(make_config(tmp_path, dataset="rotMNIST", valid_size=4), capsys,
                      "corrupt")


def test_failed_download(tmp_path, capsys, monkeypatch):
    unreachable = (tmp_path / "nowhere" / "archive.zip").as_uri()
    monkeypatch.setattr(rot_mnist, "ARCHIVE",
                        dataclasses.replace(rot_mnist.ARCHIVE, urls=(unreachable,)))
    assert_user_error(make_config(tmp_path, dataset="rotMNIST", download=True, valid_size=4),
                      capsys, "download")


def _train_tiny(tmp_path):
    """Trains z2sa on rotDigits for one step; returns its best checkpoint."""
    config = make_config(tmp_path, dataset="rotDigits", model="z2sa", max_steps=1)
    return main.run(config).checkpoint


def test_checkpoint_of_another_model_or_architecture(tmp_path, capsys):
    saved = _train_tiny(tmp_path / "a")
    assert_user_error(make_config(tmp_path, model="p4sa", train=False, pretrained=True,
                                  checkpoint=str(saved)),
                      capsys, "holds model 'z2sa'", "this run builds 'p4sa'")
    fixture_data.make_rotmnist(tmp_path / "data")
    assert_user_error(make_config(tmp_path, dataset="rotMNIST", model="z2sa", train=False,
                                  pretrained=True, checkpoint=str(saved), valid_size=4),
                      capsys, "rotDigits architecture")


def test_pretrained_without_checkpoint_names_the_path(tmp_path, capsys):
    config = make_config(tmp_path, dataset="rotDigits", model="z2sa", train=False, pretrained=True)
    assert_user_error(config, capsys, f"no checkpoint at {tmp_path / 'saved'}/rotDigits_model_z2sa",
                      "--config.checkpoint=PATH")
    missing = tmp_path / "missing.pt"
    assert_user_error(make_config(tmp_path, dataset="rotDigits", train=False, pretrained=True,
                                  checkpoint=str(missing)), capsys, str(missing))


def test_resume_without_checkpoint(tmp_path, capsys):
    assert_user_error(make_config(tmp_path, model="z2sa", resume=True), capsys,
                      "no checkpoint to resume from", ".last.pt")


def test_neither_training_nor_testing(tmp_path, capsys):
    assert_user_error(make_config(tmp_path, train=False, test=False), capsys, "config.train=False",
                      "config.test=False", "nothing to do")


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_wandb_missing(tmp_path, capsys):
    assert_user_error(make_config(tmp_path, model="z2sa", wandb=True), capsys,
                      "pip install wandb")


def test_valid_size_that_does_not_fit_the_data(tmp_path, capsys):
    fixture_data.make_rotmnist(tmp_path / "data")
    assert_user_error(make_config(tmp_path, dataset="rotMNIST", model="z2cnn"), capsys,
                      "valid_size=2000", "--config.valid_size=")
    fixture_data.make_pcam_hdf5(tmp_path / "data")
    assert_user_error(make_config(tmp_path, dataset="PCam", model="z2sa", valid_size=3), capsys,
                      "fixed validation split", "--config.valid_size unset")


@pytest.mark.parametrize("field", ["num_workers", "max_steps", "rotation_angles", "weight_decay", "image_size"])
def test_negative_counts_and_rates(tmp_path, capsys, field):
    assert_user_error(make_config(tmp_path, model="z2sa", **{field: -1}), capsys,
                      f"config.{field} must be 0 or more, got -1")


def test_checkpoint_folder_that_cannot_be_created_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    config = make_config(tmp_path, model="z2sa", save_dir=str(blocker / "saved"))
    assert_user_error(config, capsys, f"Cannot create the checkpoint folder {blocker / 'saved'}",
                      "--config.save_dir=PATH")


@pytest.mark.parametrize("split", ["test", "valid"])
def test_an_empty_split_is_refused_before_training(tmp_path, capsys, split):
    import shutil

    from datasets import pcam

    fixture_data.make_pcam_imagefolder(tmp_path / "data")
    for name in pcam.CLASSES:  # the folders are there, the images are not
        shutil.rmtree(tmp_path / "data" / pcam.FOLDER / split / name)
        (tmp_path / "data" / pcam.FOLDER / split / name).mkdir()
    config = make_config(tmp_path, dataset="PCam", model="densenet")
    word = "test" if split == "test" else "validation"
    assert_user_error(config, capsys, f"The {word} split of PCam", "is empty")
    assert not list((tmp_path / "saved").glob("*.pt"))


def test_a_class_missing_from_the_training_split_is_named_in_a_warning(tmp_path, caplog):
    import logging

    fixture = fixture_data.make_mnist(tmp_path / "data", n_train=20)
    config = make_config(tmp_path, dataset="MNIST", model="z2cnn", valid_size=4, max_examples=3)
    with caplog.at_level(logging.WARNING):
        main.run(config)
    present = set(fixture.labels["train"][:3].tolist())  # the first 3 training images
    absent = [label for label in range(10) if label not in present]
    assert f"has no image of class(es) {absent}: the model cannot learn them" in caplog.text
