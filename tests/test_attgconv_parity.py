"""Parity of attgconv with the original attentive G-CNN code on the shared reference data.

Every ``att_*.pt`` record is rebuilt by ``tools/check_parity.py`` (through
:mod:`g_selfatt_models.compat.attgconv_records`), loaded strictly and run in float32 (README tolerance) and
float64 (against ``output_float64``). The authors' released checkpoints, read from
``../shared/reference/att_gconvs_pretrained/``, are loaded into the registered models,
directly and through ``main.py`` (``--config.pretrained=True --config.checkpoint=PATH``),
and must reproduce the recorded outputs.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Dict

import pytest
import torch

import config as config_file
import fixture_data
import main
from g_selfatt_models.checkpoints import strip_wrapper_prefixes
from g_selfatt_models.compat.attgconv_records import build_from_record, convert_state_dict
from g_selfatt_models.registry import DataSpec, create_model, get_model_spec
from g_selfatt_models.checkpoints import CheckpointError
from tests.conftest import REFERENCE_DIR, REPO_ROOT, reference_files
from tools import check_parity

REFERENCE = REFERENCE_DIR
RECORDS = reference_files("att_")

# Extra (input, output) pairs stored in some records.
EXTRA_PAIRS = [("input_rot90", "output_rot90"), ("input_flip", "output_flip"),
               ("input_standardized", "output_standardized"), ("input_mnistlike", "output_mnistlike")]
# Samples of the extra inputs that are checked (the modules are in eval mode, so
# every sample is computed independently of the others).
EXTRA_SAMPLES = 4


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
    result = check_parity.check_file(str(path))
    assert result.passed, result.line()
    module = _rebuilt(record)
    with torch.no_grad():
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


def test_parity_tool_fails_on_a_wrong_att_reference(tmp_path):
    record = _load(REFERENCE / "att_layer_attconvgg_se2_p4.pt")
    record["output"] = record["output"] * 1.01  # a 1% error must be caught
    bad = tmp_path / "bad.pt"
    torch.save(record, bad)
    assert not check_parity.check_file(str(bad)).passed


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
    return strip_wrapper_prefixes(torch.load(path, map_location="cpu", weights_only=True))


@pytest.mark.parametrize("case", sorted(PRETRAINED))
def test_released_checkpoint_reproduces_outputs(case):
    import g_selfatt_models.attgconv_zoo  # noqa: F401  (registers the models)

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
    import g_selfatt_models as models

    record = _load(REFERENCE / "att_pcam_pretrained_p4mdensenet.pt")
    with pytest.raises(CheckpointError, match="plain model 'p4m_densenet'.*original_architecture=True"):
        models.load_model(REFERENCE / record["pretrained_file"], model="f_att_p4m_densenet", dataset="PCam")


def test_released_pcam_folder_loads_under_its_name_as_the_original_script_built_it():
    # The original PCam script trained a plain P4MDenseNet (9 channels) for --model f_att_p4m_densenet.
    import g_selfatt_models as models

    record = _load(REFERENCE / "att_pcam_pretrained_p4mdensenet.pt")
    folder = (REFERENCE / record["pretrained_file"]).parent
    model = models.load_model(folder, model="f_att_p4m_densenet", dataset="PCam", original_architecture=True).eval()
    with torch.no_grad():
        assert_matches_float32(model(record["input"][:EXTRA_SAMPLES]), record["output"][:EXTRA_SAMPLES])


# ------------------------------------------- released checkpoints through main.py

# Fixture data (writer, config overrides) of the datasets of the released checkpoints.
FIXTURES = {"rotMNIST": (fixture_data.make_rotmnist, {"valid_size": 2}), "PCam": (fixture_data.make_pcam_hdf5, {})}


def _pretrained_config(tmp_path: pathlib.Path, name: str, dataset: str, checkpoint_file: pathlib.Path):
    """A test-only run of ``name`` on fixture data with ``checkpoint_file`` as its pretrained weights."""
    writer, overrides = FIXTURES[dataset]
    writer(tmp_path / "data")
    config = config_file.get_config()
    config.update(dict(dataset=dataset, model=name, data_root=str(tmp_path / "data"),
                       save_dir=str(tmp_path / "saved"), device="cpu", batch_size=2, max_examples=2,
                       rotation_angles=0, num_threads=1, train=False, pretrained=True,
                       checkpoint=str(checkpoint_file), **overrides))
    return config


@pytest.mark.parametrize("case", sorted(PRETRAINED))
def test_released_checkpoint_reproduces_outputs_through_main(tmp_path, case):
    record = _load(REFERENCE / f"{case}.pt")
    name, data = PRETRAINED[case]
    result = main.run(_pretrained_config(tmp_path, name, data.name, REFERENCE / record["pretrained_file"]))
    assert 0.0 <= result.metrics["accuracy"] <= 1.0
    model = result.model.eval()
    samples = slice(EXTRA_SAMPLES)
    with torch.no_grad():
        assert_matches_float32(model(record["input"][samples]), record["output"][samples])


def test_plain_pcam_checkpoint_is_refused_through_main(tmp_path, caplog):
    record = _load(REFERENCE / "att_pcam_pretrained_p4mdensenet.pt")
    config = _pretrained_config(tmp_path, "f_att_p4m_densenet", "PCam", REFERENCE / record["pretrained_file"])
    with caplog.at_level("WARNING"), pytest.raises(CheckpointError, match="'p4m_densenet'"):
        main.run(config)
    assert "loads into --config.model=p4m_densenet, or into --config.model=f_att_p4m_densenet" in caplog.text


def test_released_pcam_folder_runs_under_its_name_with_the_original_architecture(tmp_path, caplog):
    record = _load(REFERENCE / "att_pcam_pretrained_p4mdensenet.pt")
    folder = (REFERENCE / record["pretrained_file"]).parent
    config = _pretrained_config(tmp_path, "f_att_p4m_densenet", "PCam", folder)
    config.original_architecture = True
    with caplog.at_level("WARNING"):
        model = main.run(config).model.eval()
    assert "loads into" not in caplog.text  # no warning that the file holds another network
    with torch.no_grad():
        assert_matches_float32(model(record["input"][:EXTRA_SAMPLES]), record["output"][:EXTRA_SAMPLES])


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_released_checkpoints_are_not_copied_into_the_repository():
    released = [path for path in (REFERENCE / "att_gconvs_pretrained").rglob("*") if path.is_file()]
    assert any(path.name == "model.pth" for path in released)
    sizes = {path.stat().st_size for path in released}
    hashes = {_sha256(path) for path in released}
    copies = []
    for folder, subfolders, files in os.walk(REPO_ROOT):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]  # .venv, .git, caches
        for file_name in files:
            path = pathlib.Path(folder, file_name)
            if path.stat().st_size in sizes and _sha256(path) in hashes:
                copies.append(path)
    assert not copies, f"released checkpoint files copied into the repository: {copies}"
