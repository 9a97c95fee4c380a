"""The rotDigits models shipped in saved/ load strictly and behave as the README says."""

import pytest
import torch
from ml_collections import ConfigDict

import datasets
from models import create_model
from runner import checkpoint
from tests.conftest import REPO_ROOT

SHIPPED = {name: next((REPO_ROOT / "saved").glob(f"rotDigits_model_{name}_*_ep_30_*.pt"), None)
           for name in ("p4sa", "z2sa")}


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


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_checkpoint_reproduces_its_validation_accuracy(name):
    saved, model, splits = _load(name)
    predicted, labels = _predictions(model, splits, splits.valid)
    assert saved["model"] == name and saved["config"]["epochs"] == 30
    assert (predicted == labels).double().mean().item() == pytest.approx(saved["best_metric"], abs=1e-12)


def test_shipped_p4sa_is_invariant_to_quarter_turns_and_beats_z2sa():
    _, p4sa, splits = _load("p4sa")
    _, z2sa, _ = _load("z2sa")
    predicted, labels = _predictions(p4sa, splits, splits.test)
    for quarter_turns in (1, 2, 3):
        rotated, _ = _predictions(p4sa, splits, splits.test, quarter_turns)
        assert torch.equal(rotated, predicted)
    baseline, _ = _predictions(z2sa, splits, splits.test)
    assert (predicted == labels).float().mean() > (baseline == labels).float().mean()
