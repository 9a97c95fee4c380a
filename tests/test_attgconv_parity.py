"""Parity of attgconv with the original attentive G-CNN code on the shared reference data.

Every ``att_*.pt`` record is rebuilt with :mod:`attgconv.compat`, loaded strictly and
run in float32 (README tolerance) and float64 (against ``output_float64``). The
authors' released checkpoints are loaded into the registered models and must
reproduce the recorded outputs.
"""

from __future__ import annotations

import pathlib
from typing import Dict

import pytest
import torch

from attgconv.compat import build_from_record, convert_state_dict, strip_prefix
from models.registry import DataSpec, create_model, get_model_spec

REFERENCE = pathlib.Path("/work/shared/reference")
RECORDS = sorted(REFERENCE.glob("att_*.pt"))

# Extra (input, output) pairs stored in some records.
EXTRA_PAIRS = [("input_rot90", "output_rot90"), ("input_flip", "output_flip"),
               ("input_standardized", "output_standardized"), ("input_mnistlike", "output_mnistlike")]
# Samples of the extra inputs that are checked (the modules are in eval mode, so
# every sample is computed independently of the others).
EXTRA_SAMPLES = 4

pytestmark = pytest.mark.skipif(not RECORDS, reason="reference data not available")


def _load(path: pathlib.Path) -> Dict:
    return torch.load(path, weights_only=True)


def assert_matches_float32(out: torch.Tensor, ref: torch.Tensor) -> None:
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=5e-5 * max(1.0, ref.abs().max().item()))


def assert_matches_float64(out: torch.Tensor, ref: torch.Tensor) -> None:
    torch.testing.assert_close(out, ref, rtol=1e-7, atol=1e-7 * max(1.0, ref.abs().max().item()))


def _rebuilt(record: Dict) -> torch.nn.Module:
    module = build_from_record(record)
    module.load_state_dict(convert_state_dict(record, record["state_dict"]), strict=True)
    return module.eval()


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.stem)
def test_record_float32(path):
    record = _load(path)
    assert record["origin"] == "att_gconvs"
    module = _rebuilt(record)
    with torch.no_grad():
        assert_matches_float32(module(record["input"]), record["output"])
        for inputs, outputs in EXTRA_PAIRS:
            if inputs in record:
                samples = slice(EXTRA_SAMPLES)
                assert_matches_float32(module(record[inputs][samples]), record[outputs][samples])


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.stem)
def test_record_float64(path):
    record = _load(path)
    module = _rebuilt(record).double()
    with torch.no_grad():
        assert_matches_float64(module(record["input"].double()), record["output_float64"])
        if "output_rot90_float64" in record:
            samples = slice(EXTRA_SAMPLES)
            assert_matches_float64(module(record["input_rot90"][samples].double()),
                                   record["output_rot90_float64"][samples])


def test_unknown_module_is_named():
    with pytest.raises(ValueError, match="NoSuchLayer"):
        build_from_record({"module": "NoSuchLayer", "kwargs": {}})


def test_unsupported_group_is_explained():
    record = {"module": "ConvRnGLayer",
              "kwargs": {"group": "SE2", "N_in": 1, "N_out": 1, "kernel_size": 3, "h_grid": 8}}
    with pytest.raises(ValueError, match="p4 and p4m"):
        build_from_record(record)


# ------------------------------------------------------ released checkpoints

# Registered model and data of each pretrained record.
PRETRAINED = {
    "att_rotmnist_pretrained_z2cnn": ("z2cnn", DataSpec("rotMNIST", 1, 10, 28, "rotMNIST")),
    "att_rotmnist_pretrained_p4cnn": ("p4cnn", DataSpec("rotMNIST", 1, 10, 28, "rotMNIST")),
    "att_rotmnist_pretrained_att_p4cnn": ("att_p4cnn", DataSpec("rotMNIST", 1, 10, 28, "rotMNIST")),
    "att_rotmnist_pretrained_f_att_p4cnn": ("f_att_p4cnn", DataSpec("rotMNIST", 1, 10, 28, "rotMNIST")),
    "att_pcam_pretrained_p4mdensenet": ("p4m_densenet", DataSpec("PCam", 3, 2, 96, "PCam")),
}


def _checkpoint(record: Dict) -> Dict[str, torch.Tensor]:
    path = REFERENCE / record["pretrained_file"]
    return strip_prefix(torch.load(path, map_location="cpu", weights_only=True))


@pytest.mark.parametrize("case", sorted(PRETRAINED))
def test_released_checkpoint_reproduces_outputs(case):
    import models.attgconv_zoo  # noqa: F401  (registers the models)

    record = _load(REFERENCE / f"{case}.pt")
    name, data = PRETRAINED[case]
    spec = get_model_spec(name)
    state_dict = _checkpoint(record)
    if spec.convert_checkpoint is not None:
        state_dict = spec.convert_checkpoint(state_dict)
    model = create_model(name, config=None, data=data)
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    samples = slice(EXTRA_SAMPLES)
    with torch.no_grad():
        assert_matches_float32(model(record["input"][samples]), record["output"][samples])


def test_plain_pcam_checkpoint_is_refused_by_the_attentive_model():
    import models.attgconv_zoo  # noqa: F401

    record = _load(REFERENCE / "att_pcam_pretrained_p4mdensenet.pt")
    convert = get_model_spec("f_att_p4m_densenet").convert_checkpoint
    with pytest.raises(ValueError, match="p4m_densenet"):
        convert(_checkpoint(record))
