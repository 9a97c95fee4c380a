"""The typed hyper-parameter records: the one source of the models' and the runner's defaults."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from g_selfatt_models import GroupTransformer, get_model_spec, list_models
from g_selfatt_models.hyperparameters import GSAHyperParameters, TrainingHyperParameters, gsa_from
from runner.defaults import FALLBACKS


def test_a_record_reads_as_a_mapping_of_its_fields():
    record = GSAHyperParameters(lr=0.5, block_sizes=(0, 1))
    assert dict(record) == dataclasses.asdict(record)
    assert list(record) == [field.name for field in dataclasses.fields(GSAHyperParameters)]
    assert record["lr"] == record.lr == 0.5 and "patch_size" in record and "seed" not in record
    assert {**record, "lr": 1.0}["lr"] == 1.0
    with pytest.raises(KeyError):
        record["lrr"]


def test_a_record_is_frozen_and_rejects_unknown_fields():
    with pytest.raises(dataclasses.FrozenInstanceError):
        GSAHyperParameters().lr = 1.0
    with pytest.raises(TypeError, match="lrr"):
        GSAHyperParameters(lrr=1.0)


def test_gsa_from_keeps_the_training_fields_and_sets_its_own():
    training = TrainingHyperParameters(lr=0.25, epochs=7, scheduler="linear_warmup_cosine")
    record = gsa_from(training, patch_size=3)
    assert {name: record[name] for name in training} == dict(training)
    assert record.patch_size == 3 and record.norm_type == GSAHyperParameters.norm_type


@pytest.mark.parametrize("name", list_models())
def test_every_model_default_is_a_record_of_its_family(name):
    spec = get_model_spec(name)
    expected = GSAHyperParameters if spec.family == "gsa" else TrainingHyperParameters
    for architecture, record in spec.defaults.items():
        assert type(record) is expected, (architecture, type(record))


def test_the_runners_fallbacks_are_the_records_defaults():
    for field in dataclasses.fields(GSAHyperParameters):
        assert FALLBACKS[field.name] == field.default, field.name


def test_the_group_transformers_defaults_are_the_records():
    parameters = inspect.signature(GroupTransformer).parameters
    assert parameters["norm_type"].default == GSAHyperParameters.norm_type
    assert parameters["whitening_scale"].default == GSAHyperParameters.whitening_scale
