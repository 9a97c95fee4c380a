"""The rotDigits models shipped in saved/ load strictly and behave as the README says."""

import ast
import copy
import functools
import re
import shlex

import pytest
import torch
from ml_collections import ConfigDict

import config as config_file
import datasets
import main
import tester
from models import create_model
from runner import checkpoint, paths
from runner.defaults import resolve_config
from tests.conftest import REPO_ROOT

SHIPPED = {name: next((REPO_ROOT / "saved").glob(f"rotDigits_model_{name}_*_ep_30_*.pt"), None)
           for name in ("p4sa", "z2sa")}
README_COMMAND = ".venv/bin/python main.py "
ONE_IMAGE = 1  # predictions of float32 runs on two CPUs may differ by one near-tie


@functools.lru_cache(maxsize=None)
def _load(name):
    path = SHIPPED[name]
    assert path is not None, f"the shipped {name} checkpoint is missing from saved/"
    saved = checkpoint.read(path)
    splits = datasets.load_splits("rotDigits", REPO_ROOT / "data")
    model = create_model(saved["model"], ConfigDict(saved["config"]), splits.spec)
    checkpoint.load_strict(model, saved["state_dict"], path)
    return saved, model.eval(), splits


@torch.no_grad()
def _predictions(model, splits, dataset, rotation=0):
    images = torch.stack([image for image, _ in dataset])
    images = torch.rot90(splits.batch_transform(images), rotation, dims=(-2, -1))
    return model(images).argmax(dim=1), torch.tensor([label for _, label in dataset])


@functools.lru_cache(maxsize=None)
def _rotated_test_predictions(name, quarter_turns):
    """Predicted labels of the test split turned by ``quarter_turns`` * 90 degrees."""
    _, model, splits = _load(name)
    return _predictions(model, splits, splits.test, quarter_turns)[0]


@functools.lru_cache(maxsize=None)
def _test_predictions(name):
    """Predicted and true labels of the test split, computed as ``main.py`` tests."""
    _, model, splits = _load(name)
    loader = torch.utils.data.DataLoader(splits.test, batch_size=64)
    outputs = tester.predict(model, loader, splits.batch_transform, torch.device("cpu"))
    return outputs.logits.argmax(dim=1), outputs.labels


def _readme_section():
    text = (REPO_ROOT / "README.md").read_text()
    return text.split("## Pretrained models", 1)[1].split("\n## ", 1)[0]


def _readme_commands():
    """model name -> the flags of the README's test command for it."""
    commands = {}
    for line in _readme_section().splitlines():
        if line.startswith(README_COMMAND):
            flags = dict(flag[len("--config."):].split("=", 1)
                         for flag in shlex.split(line[len(README_COMMAND):]))
            commands[flags["model"]] = flags
    return commands


def _readme_table():
    """model name -> (parameters, test accuracy, accuracies after 90 / 180 / 270 degrees)."""
    table = {}
    for line in _readme_section().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) >= 4 and cells[0] in SHIPPED:
            percents = [float(p) for p in re.findall(r"([\d.]+)%", " ".join(cells[2:4]))]
            table[cells[0]] = (int(cells[1].replace(",", "")), percents[0], percents[1:4])
    return table


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_checkpoint_reproduces_its_validation_accuracy(name):
    saved, model, splits = _load(name)
    predicted, labels = _predictions(model, splits, splits.valid)
    assert saved["model"] == name and saved["config"]["epochs"] == 30
    # Float32 round-off differs between CPUs and may flip the argmax of one near-tie.
    assert (predicted == labels).double().mean().item() == pytest.approx(saved["best_metric"],
                                                                         abs=ONE_IMAGE / len(labels))


def test_shipped_p4sa_is_invariant_to_quarter_turns_and_beats_z2sa():
    """Exact invariance, checked in float64: its round-off (1e-16) flips no prediction."""
    _, model, splits = _load("p4sa")
    model64 = copy.deepcopy(model).double()
    images = torch.stack([image for image, _ in splits.test]).double()
    with torch.no_grad():
        logits = model64(splits.batch_transform(images))
        for quarter_turns in (1, 2, 3):
            turned = torch.rot90(splits.batch_transform(images), quarter_turns, dims=(-2, -1))
            assert torch.equal(model64(turned).argmax(dim=1), logits.argmax(dim=1))
    predicted, labels = _test_predictions("p4sa")
    baseline, _ = _test_predictions("z2sa")
    assert (predicted == labels).float().mean() > (baseline == labels).float().mean()


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_readme_command_finds_the_shipped_checkpoint(name):
    flags = _readme_commands()[name]
    assert (flags["pretrained"], flags["train"]) == ("True", "False")
    config = config_file.get_config()
    for field, text in flags.items():
        config[field] = text if field == "model" else ast.literal_eval(text)
    data = main.data_spec(config)
    spec = main.model_spec(config, data.architecture)
    resolve_config(config, spec.defaults[data.architecture])
    assert paths.best_checkpoint_path(config, spec.family).name == SHIPPED[name].name


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_readme_states_the_shipped_test_accuracies(name):
    _, model, _ = _load(name)
    parameters, percent, rotated_percents = _readme_table()[name]
    predicted, labels = _test_predictions(name)

    def assert_states(labels_predicted, stated_percent):
        # The README rounds to 0.1%; float32 round-off on another CPU may flip one near-tie.
        correct = (labels_predicted == labels).sum().item()
        allowed = ONE_IMAGE + 0.05 / 100 * len(labels)
        assert abs(correct - stated_percent / 100 * len(labels)) <= allowed, (correct, stated_percent)

    assert parameters == sum(p.numel() for p in model.parameters())
    assert_states(predicted, percent)
    for quarter_turns, stated in zip((1, 2, 3), rotated_percents):
        assert_states(_rotated_test_predictions(name, quarter_turns), stated)
