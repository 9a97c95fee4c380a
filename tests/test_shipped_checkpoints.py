"""The models shipped in saved/ load strictly and behave as the README says."""

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
from g_selfatt_models import create_model, list_models
from g_selfatt_models.released import file_sha256
from g_selfatt_models import checkpoints
from runner import paths
from runner.defaults import resolve_config
from tests.conftest import REPO_ROOT

# (dataset, model) -> file, for every checkpoint of saved/manifest.json.
SHIPPED = {(record["dataset"], record["model"]): REPO_ROOT / "saved" / name
           for name, record in paths.shipped_checkpoints().items()}
IDS = [f"{dataset}-{model}" for dataset, model in sorted(SHIPPED)]
GSA_NETS = list_models(family="gsa")
# The shipped GSA-Nets of a rotation group (all but the translation-only baseline).
ROTATION_GSA_NETS = sorted(key for key in SHIPPED if key[1] in GSA_NETS and key[1] != "z2sa")
README_COMMAND = ".venv/bin/python main.py "
ONE_IMAGE = 1  # predictions of float32 runs on two CPUs may differ by one near-tie


@functools.lru_cache(maxsize=None)
def _load(key):
    path = SHIPPED[key]
    assert path.is_file(), f"the shipped checkpoint {path.name} is missing from saved/"
    saved = checkpoints.read(path)
    splits = datasets.load_splits(key[0], REPO_ROOT / "data")
    model = create_model(saved["model"], ConfigDict(saved["config"]), splits.spec)
    checkpoints.load_strict(model, saved["state_dict"], path)
    return saved, model.eval(), splits


@torch.no_grad()
def _predictions(model, splits, dataset, rotation=0):
    images = torch.stack([image for image, _ in dataset])
    images = torch.rot90(splits.batch_transform(images), rotation, dims=(-2, -1))
    return model(images).argmax(dim=1), torch.tensor([label for _, label in dataset])


@functools.lru_cache(maxsize=None)
def _rotated_test_predictions(key, quarter_turns):
    """Predicted labels of the test split turned by ``quarter_turns`` * 90 degrees."""
    _, model, splits = _load(key)
    return _predictions(model, splits, splits.test, quarter_turns)[0]


@functools.lru_cache(maxsize=None)
def _test_predictions(key):
    """Predicted and true labels of the test split, computed as ``main.py`` tests."""
    _, model, splits = _load(key)
    loader = torch.utils.data.DataLoader(splits.test, batch_size=64)
    outputs = tester.predict(model, loader, splits.batch_transform, torch.device("cpu"))
    return outputs.logits.argmax(dim=1), outputs.labels


def _readme_section():
    text = (REPO_ROOT / "README.md").read_text()
    return text.split("## Pretrained models", 1)[1].split("\n## ", 1)[0]


def _readme_commands():
    """(dataset, model) -> the flags of the README's test command for it."""
    commands = {}
    for line in _readme_section().splitlines():
        if line.startswith(README_COMMAND):
            flags = dict(flag[len("--config."):].split("=", 1)
                         for flag in shlex.split(line[len(README_COMMAND):]))
            commands[flags["dataset"], flags["model"]] = flags
    return commands


def _readme_table():
    """(dataset, model) -> (parameters, test accuracy, accuracies after 90 / 180 / 270 degrees)."""
    table = {}
    for line in _readme_section().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) >= 5 and (cells[1], cells[0]) in SHIPPED:
            percents = [float(p) for p in re.findall(r"([\d.]+)%", " ".join(cells[3:5]))]
            table[cells[1], cells[0]] = (int(cells[2].replace(",", "")), percents[0], percents[1:4])
    return table


def test_every_shipped_checkpoint_is_in_the_manifest_and_the_readme():
    assert sorted(SHIPPED) == sorted(_readme_commands()) == sorted(_readme_table())
    assert {("rotDigits", "p4sa"), ("rotDigits", "z2sa")} <= set(SHIPPED)
    assert [model for dataset, model in SHIPPED if dataset == "rotMNIST5k" and model in GSA_NETS]  # the table's best
    for name, record in paths.shipped_checkpoints().items():
        assert file_sha256(REPO_ROOT / "saved" / name) == record["sha256"]


@pytest.mark.parametrize("key", sorted(SHIPPED), ids=IDS)
def test_shipped_checkpoint_reproduces_its_validation_accuracy(key):
    saved, model, splits = _load(key)
    predicted, labels = _predictions(model, splits, splits.valid)
    assert (saved["config"]["dataset"], saved["model"]) == key
    # Float32 round-off differs between CPUs and may flip the argmax of one near-tie.
    assert (predicted == labels).double().mean().item() == pytest.approx(saved["best_metric"],
                                                                         abs=ONE_IMAGE / len(labels))


@pytest.mark.parametrize("key", ROTATION_GSA_NETS, ids=[f"{dataset}-{model}" for dataset, model in ROTATION_GSA_NETS])
def test_shipped_gsa_net_is_invariant_to_the_rotations_of_the_grid(key):
    """Exact invariance to every group element that maps the pixel grid onto itself (the quarter
    turns), checked on the logits of the first 64 test images in float64: the network's round-off
    there is about 1e-13 of the largest logit, so a bound of 1e6 eps catches any broken symmetry
    (a non-equivariant layer changes logits by 1e-3 or more)."""
    _, model, splits = _load(key)
    model64 = copy.deepcopy(model).double()
    images = torch.stack([splits.test[index][0] for index in range(min(64, len(splits.test)))]).double()
    images = splits.batch_transform(images)  # (B, C, H, W)
    exact = model.group.grid_exact()
    assert len(exact) == 4  # the identity and three quarter turns
    with torch.no_grad():
        logits = model64(images)  # (B, classes)
        bound = 1e6 * torch.finfo(torch.float64).eps * logits.abs().max()
        for element in exact[1:]:
            assert (model64(model.group.transform_image(images, element)) - logits).abs().max() <= bound


def test_shipped_rotdigits_p4sa_beats_its_translation_only_baseline():
    predicted, labels = _test_predictions(("rotDigits", "p4sa"))
    baseline, _ = _test_predictions(("rotDigits", "z2sa"))
    assert (predicted == labels).float().mean() > (baseline == labels).float().mean()


@pytest.mark.parametrize("key", sorted(SHIPPED), ids=IDS)
def test_readme_command_finds_the_shipped_checkpoint(key):
    flags = _readme_commands()[key]
    assert (flags["pretrained"], flags["train"]) == ("True", "False")
    config = config_file.get_config()
    for field, text in flags.items():
        config[field] = text if field in ("model", "dataset", "save_dir") else ast.literal_eval(text)
    data = main.data_spec(config)
    spec = main.model_spec(config, data.architecture)
    resolve_config(config, spec.defaults[data.architecture])
    assert (REPO_ROOT / paths.best_checkpoint_path(config, spec.family)).resolve() == SHIPPED[key].resolve()


@pytest.mark.parametrize("key", sorted(SHIPPED), ids=IDS)
def test_readme_states_the_shipped_test_accuracies(key):
    _, model, _ = _load(key)
    parameters, percent, rotated_percents = _readme_table()[key]
    predicted, labels = _test_predictions(key)

    def assert_states(labels_predicted, stated_percent):
        # The README rounds to 0.1%; float32 round-off on another CPU may flip one near-tie.
        correct = (labels_predicted == labels).sum().item()
        allowed = ONE_IMAGE + 0.05 / 100 * len(labels)
        assert abs(correct - stated_percent / 100 * len(labels)) <= allowed, (correct, stated_percent)

    assert parameters == sum(p.numel() for p in model.parameters())
    assert_states(predicted, percent)
    for quarter_turns, stated in zip((1, 2, 3), rotated_percents):
        assert_states(_rotated_test_predictions(key, quarter_turns), stated)


@pytest.mark.parametrize("key", sorted(SHIPPED), ids=IDS)
def test_load_model_rebuilds_the_shipped_checkpoint(key):
    _, model, _ = _load(key)
    loaded = main.load_model(SHIPPED[key])
    assert type(loaded) is type(model)
    reference = model.state_dict()
    assert loaded.state_dict().keys() == reference.keys()
    assert all(torch.equal(value, reference[name]) for name, value in loaded.state_dict().items())
