"""main.load_model: the runner's checkpoints and the original implementations' state_dicts."""

from __future__ import annotations

import pytest
import torch

import main
from conftest import REFERENCE_DIR, REPO_ROOT
from g_selfatt_models import GroupTransformer
from g_selfatt_models.checkpoints import CheckpointError
from runner.errors import ConfigError

RELEASED = REFERENCE_DIR / "att_gconvs_pretrained"


def test_loads_a_shipped_checkpoint_from_its_path_alone():
    path = next((REPO_ROOT / "saved").glob("rotDigits_model_p4sa_*.pt"))
    model = main.load_model(path)
    assert isinstance(model, GroupTransformer) and model.group.num_elements == 4
    saved = torch.load(path, map_location="cpu", weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved["state_dict"][key]), key


@pytest.mark.parametrize("name, folder", [("att_p4cnn", "model_att_p4cnn_optim_adam_lr_0.001_wd_0.0001_seed_0"),
                                          ("z2cnn", "model_z2cnn_optim_adam_lr_0.001_wd_0.0001_seed_0")])
def test_loads_a_released_original_checkpoint_with_model_and_dataset(name, folder):
    model = main.load_model(RELEASED / folder / "model.pth", model=name, dataset="rotMNIST").eval()
    record = torch.load(REFERENCE_DIR / f"att_rotmnist_pretrained_{name}.pt", weights_only=True)
    with torch.no_grad():
        out = model(record["input"])
    ref = record["output"]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=5e-5 * max(1.0, ref.abs().max().item()))


def test_bad_requests_name_the_problem():
    released = RELEASED / "model_att_p4cnn_optim_adam_lr_0.001_wd_0.0001_seed_0" / "model.pth"
    with pytest.raises(CheckpointError, match="model=..., dataset=..."):
        main.load_model(released)
    with pytest.raises(CheckpointError, match="Unexpected keys"):
        main.load_model(released, model="p4cnn", dataset="rotMNIST")
    with pytest.raises(ConfigError, match="Unknown model 'p5cnn'"):
        main.load_model(released, model="p5cnn", dataset="rotMNIST")
    with pytest.raises(CheckpointError, match="No checkpoint"):
        main.load_model(REPO_ROOT / "saved" / "missing.pt")
    shipped = next((REPO_ROOT / "saved").glob("rotDigits_model_z2sa_*.pt"))
    with pytest.raises(CheckpointError, match="holds z2sa trained on rotDigits, not the model 'p4cnn'"):
        main.load_model(shipped, model="p4cnn")
    with pytest.raises(CheckpointError, match="not the dataset 'rotMNIST'"):
        main.load_model(shipped, model="z2sa", dataset="rotMNIST")
    assert type(main.load_model(shipped, model="z2sa", dataset="rotDigits")).__name__ == "GroupTransformer"


def test_original_gsa_weights_reproduce_the_original_logits_by_default(caplog):
    import g_selfatt_models as models
    from g_selfatt_models.checkpoints import load_strict

    record = torch.load(REFERENCE_DIR / "gsa_gt_rotmnist_p4sa.pt", weights_only=True)
    ref = record["output"]
    bound = dict(rtol=1e-4, atol=5e-5 * max(1.0, ref.abs().max().item()))  # the reference README's
    outputs = {}
    for recorded in (False, True):
        model = models.create_model("p4sa", dataset="rotMNIST", patch_size=5, dropout_att=0.0, dropout_values=0.0,
                                    whitening_scale=1.0)
        load_strict(model, dict(record["state_dict"]), REFERENCE_DIR / "x.pt", index_recorded=recorded)
        with torch.no_grad():
            outputs[recorded] = model.eval()(record["input"])
        assert model.group_axis_index == ("relative" if recorded else "original")
    torch.testing.assert_close(outputs[False], ref, **bound)
    with pytest.raises(AssertionError):  # the equivariant index computes other logits from the same weights
        torch.testing.assert_close(outputs[True], ref, **bound)


def test_load_model_of_a_plain_state_dict_uses_the_original_index_and_of_a_checkpoint_its_own(tmp_path, caplog):
    import g_selfatt_models as models

    shipped = models.load_model(next((REPO_ROOT / "saved").glob("rotDigits_model_p4sa_*.pt")))
    assert shipped.group_axis_index == "relative"
    plain = tmp_path / "model.pth"
    torch.save(dict(shipped.state_dict()), plain)  # the originals' torch.save(model.state_dict()), no versions
    with caplog.at_level("WARNING"):
        loaded = models.load_model(plain, model="p4sa", dataset="rotDigits")
    assert loaded.group_axis_index == "original"
    assert any("group_axis_index='original'" in record.getMessage() for record in caplog.records)


def test_a_released_run_folder_loads_as_it_is():
    # The originals' layout: saved/model_<name>_..._seed_0/model.pth; the folder is given.
    folder = RELEASED / "model_att_p4cnn_optim_adam_lr_0.001_wd_0.0001_seed_0"
    model = main.load_model(folder, model="att_p4cnn", dataset="rotMNIST").eval()
    record = torch.load(REFERENCE_DIR / "att_rotmnist_pretrained_att_p4cnn.pt", weights_only=True)
    with torch.no_grad():
        out = model(record["input"])
    ref = record["output"]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=5e-5 * max(1.0, ref.abs().max().item()))


def test_the_runner_tests_a_released_run_folder_given_as_it_is(tmp_path):
    import fixture_data
    from test_main_e2e import make_config

    fixture_data.make_rotmnist5k(tmp_path / "data")
    folder = RELEASED / "model_att_p4cnn_optim_adam_lr_0.001_wd_0.0001_seed_0"
    config = make_config(tmp_path, dataset="rotMNIST5k", model="att_p4cnn", train=False, pretrained=True,
                         checkpoint=str(folder), max_examples=4, valid_size=2, rotation_angles=0)
    assert main.run_cli(config) == 0
