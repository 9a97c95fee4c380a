"""The models package's public API: create_model without a configuration, list_models patterns."""

import sys

import pytest
import torch

import datasets
import g_selfatt_models as models
from g_selfatt_models.gsa_zoo import GSA_DEFAULTS
from tests.test_gsa_layers import PAPER_PARAMETER_COUNTS


def _parameters(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["z2cnn", "z2sa", "p4sa", "p8sa", "p4msa"])
def test_create_model_by_dataset_name_builds_the_papers_rotmnist_models(name):
    # The parameter counts of the original models, computed by building them (shared/docs).
    assert _parameters(models.create_model(name, dataset="rotMNIST")) == PAPER_PARAMETER_COUNTS["rotMNIST"][name]


def test_create_model_uses_the_models_defaults_and_the_overrides():
    model = models.create_model("p4sa", dataset="rotMNIST")
    assert model.patch_size == GSA_DEFAULTS["rotMNIST"]["patch_size"] == 9
    assert model.attention_dropout_rate == 0.1 and model.group_axis_index == "relative"
    changed = models.create_model("p4sa", dataset="rotMNIST", patch_size=5, group_axis_index="original",
                                  dropout_att=0.0)
    assert (changed.patch_size, changed.group_axis_index, changed.attention_dropout_rate) == (5, "original", 0.0)


def test_create_model_by_name_computes_what_the_runners_way_computes():
    torch.manual_seed(0)
    by_name = models.create_model("f_att_p4cnn", dataset="rotMNIST5k").eval()
    torch.manual_seed(0)
    by_config = models.create_model("f_att_p4cnn", None, datasets.get_data_spec("rotMNIST5k")).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(by_name(x), by_config(x), rtol=0, atol=0)


def test_create_model_names_the_bad_argument():
    with pytest.raises(ValueError, match=r"Unknown setting\(s\) \['patch'\].*'patch_size'"):
        models.create_model("p4sa", dataset="rotMNIST", patch=5)
    with pytest.raises(ValueError, match=r"Unknown dataset 'ImageNet'.*'rotMNIST5k'"):
        models.create_model("p4sa", dataset="ImageNet")
    with pytest.raises(ValueError, match=r"create_model\(name, dataset=\.\.\., \*\*overrides\)"):
        models.create_model("p4sa")
    with pytest.raises(ValueError, match="defined for"):
        models.create_model("z2cnn", dataset="CIFAR10")


def test_every_dataset_of_the_runner_has_the_models_data_spec():
    assert tuple(models.DATA_SPECS) == datasets.DATASET_NAMES
    assert all(datasets.get_data_spec(name) is models.get_data_spec(name) for name in datasets.DATASET_NAMES)


def test_list_models_filters_by_pattern_and_family():
    assert models.list_models("*p4m*") == ["f_att_p4m_allcnnc", "f_att_p4m_densenet", "f_att_p4m_resnet44",
                                           "p4m_allcnnc", "p4m_densenet", "p4m_resnet44", "p4msa"]
    assert models.list_models("p4*", family="gsa") == ["p4msa", "p4sa"]
    assert set(models.list_models(family="cnn")) == {"z2cnn"}
    assert models.list_models() == sorted(models.list_models("*"))


def test_load_model_rebuilds_a_checkpoint_with_the_models_package_alone():
    """In a fresh interpreter: no module of the runner, the datasets or main is imported."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    shipped = next((REPO_ROOT / "saved").glob("rotDigits_model_z2sa_*_ep_30_*.pt"))
    code = ("import sys, models; m = models.load_model(sys.argv[1]); "
            "print(sum(p.numel() for p in m.parameters()), "
            "sorted({n.split('.')[0] for n in sys.modules} & {'runner', 'datasets', 'main', 'trainer', 'tester'}))")
    result = subprocess.run([sys.executable, "-c", code, str(shipped)], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["7560", "[]"]


def test_load_model_of_an_original_state_dict_needs_the_names(tmp_path):
    state = models.create_model("p4cnn", dataset="rotMNIST").state_dict()
    torch.save({f"module.{key}": value for key, value in state.items()}, tmp_path / "model.pth")
    with pytest.raises(models.CheckpointError, match="model=..., dataset=..."):
        models.load_model(tmp_path / "model.pth")
    loaded = models.load_model(tmp_path / "model.pth", model="p4cnn", dataset="rotMNIST")
    assert all(torch.equal(value, state[key]) for key, value in loaded.state_dict().items())
    with pytest.raises(ValueError, match="Unknown model 'p5cnn'"):
        models.load_model(tmp_path / "model.pth", model="p5cnn", dataset="rotMNIST")


@pytest.mark.parametrize("name", models.list_models())
def test_every_model_is_the_function_of_its_name(name):
    # As in timm: a reader finds `def f_att_p4m_densenet` in the module that registers it.
    builder = models.get_model_spec(name).builder
    assert builder.__name__ == name
    assert getattr(sys.modules[builder.__module__], name) is builder
    assert models.get_model_spec(name).description


def test_every_group_has_its_gsa_net():
    from g_selfatt.groups import GROUPS

    assert set(models.list_models(family="gsa")) == {f"{group}sa" for group in GROUPS}


def test_zoo_names_are_parsed_into_attention_group_and_architecture():
    from g_selfatt_models.attgconv_zoo.zoo import parse_name

    assert parse_name("f_att_p4m_densenet") == ("feature", "p4m", "densenet")
    assert parse_name("ch_att_p4cnn") == ("channel", "p4", "rotMNIST")
    assert parse_name("allcnnc") == ("none", None, "allcnnc")
    with pytest.raises(ValueError, match="does not follow"):
        parse_name("att_p8_allcnnc")
