"""The registered attentive G-CNNs: architectures, sizes, defaults and documented commands.

* The models registered under the CIFAR10 and PCam names load the original's random-weight
  model records strictly and reproduce their outputs (so each name builds the architecture
  the original builds for it).
* rotMNIST parameter counts are those of the paper.
* The per-model defaults are the hyper-parameters of the paper and the original scripts,
  and every attentive G-CNN command of runs/README.md agrees with them.
* ``config.attention_formulation`` reaches every full attentive layer of a model, and both
  formulations give the same logits and gradients.
"""

from __future__ import annotations

import ast
import math
import shlex
from typing import Dict, List, Tuple

import pytest
import torch
from ml_collections import ConfigDict

import g_selfatt_models as models
from attgconv import AttentiveGroupConv, AttentiveLiftingConv
from g_selfatt_models import protocols
from g_selfatt_models.registry import DataSpec, create_model, get_model_spec
from tests.conftest import REFERENCE_DIR, REPO_ROOT

ATTGCONV_MODELS = models.list_models(family="attgconv")
CIFAR10 = DataSpec("CIFAR10", 3, 10, 32, "CIFAR10")
PCAM = DataSpec("PCam", 3, 2, 96, "PCam")
ROTMNIST = DataSpec("rotMNIST", 1, 10, 28, "rotMNIST")

# Random-weight records of the original models -> registered name and data.
RECORD_MODELS = {
    "att_model_allcnnc": ("allcnnc", CIFAR10),
    "att_model_p4allcnnc": ("p4_allcnnc", CIFAR10),
    "att_model_fa_p4allcnnc": ("f_att_p4_allcnnc", CIFAR10),
    "att_model_resnet": ("resnet44", CIFAR10),
    "att_model_p4mresnet": ("p4m_resnet44", CIFAR10),
    "att_model_densenet": ("densenet", PCAM),
    "att_model_p4densenet": ("p4_densenet", PCAM),
    "att_model_fa_p4densenet": ("f_att_p4_densenet", PCAM),
}


@pytest.mark.parametrize("case", sorted(RECORD_MODELS))
def test_registered_model_reproduces_the_original_record(case):
    record = torch.load(REFERENCE_DIR / f"{case}.pt", weights_only=True)
    name, data = RECORD_MODELS[case]
    model = create_model(name, config=None, data=data)
    model.load_state_dict(record["state_dict"], strict=True)
    model.eval()
    with torch.no_grad():
        out = model(record["input"])
    reference = record["output"].reshape(out.shape)  # the original All-CNN-C squeezes its output
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=5e-5 * max(1.0, reference.abs().max().item()))


# Parameters of the rotMNIST models, Table 1 of the paper (in thousands, rounded to 10).
PAPER_PARAMETERS_K = {"p4cnn": 24.61, "att_p4cnn": 73.13, "f_att_p4cnn": 29.46}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMETERS_K))
def test_rotmnist_parameter_count_is_the_papers(name):
    model = create_model(name, config=None, data=ROTMNIST)
    count = sum(parameter.numel() for parameter in model.parameters())
    assert round(count / 1000, 2) == PAPER_PARAMETERS_K[name]


# ------------------------------------------------------------------ defaults

_ADAM = dict(optimizer="Adam", lr=1e-3, weight_decay=1e-4)
_SGD = dict(optimizer="SGD", optimizer_momentum=0.9, lr=0.05, batch_size=128, scheduler="multistep",
            sched_decay_factor=10.0, augment=True)
# The paper's hyper-parameters (../shared/docs/papers.md; momentum, lr, ResNet44's weight
# decay and the CIFAR10 augmentation as in the original scripts and the released run logs).
PAPER = {
    "p4cnn": ("rotMNIST", dict(_ADAM, batch_size=128, epochs=100, scheduler="constant")),
    "allcnnc": ("CIFAR10", dict(_SGD, weight_decay=1e-3, epochs=350, sched_decay_steps=(200, 250, 300))),
    "resnet44": ("CIFAR10", dict(_SGD, weight_decay=0.0, epochs=300, sched_decay_steps=(50, 100, 150))),
    "densenet": ("PCam", dict(_ADAM, batch_size=64, epochs=100, scheduler="plateau", sched_decay_factor=2.0,
                              sched_patience=20)),
}


def _architecture(name: str) -> str:
    return next(suffix for suffix in PAPER if name.endswith(suffix))


@pytest.mark.parametrize("name", ATTGCONV_MODELS)
def test_defaults_are_the_papers_hyper_parameters(name):
    dataset, expected = PAPER[_architecture(name)]
    defaults = get_model_spec(name).defaults
    # The rotMNIST networks also train on rotMNIST5k, under the protocol that dataset shares.
    assert list(defaults) == ([dataset, "rotMNIST5k"] if dataset == "rotMNIST" else [dataset])
    if dataset == "rotMNIST":
        assert defaults["rotMNIST5k"] == protocols.ROTMNIST5K
    for field, value in expected.items():
        assert defaults[dataset][field] == value, (name, field)


def test_z2cnn_defaults_are_the_papers():
    defaults = get_model_spec("z2cnn").defaults["rotMNIST"]
    assert {field: defaults[field] for field in ("optimizer", "lr", "weight_decay", "batch_size", "epochs")} == dict(
        _ADAM, batch_size=128, epochs=300)


# ------------------------------------------------------------------ runs/README.md

SECTION = "## Attentive group convolutional networks"


def _readme_section() -> str:
    text = (REPO_ROOT / "runs" / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:] if end < 0 else text[start:end]


def _commands() -> List[Dict[str, str]]:
    """The ``--config.<field>=<value>`` flags of every ``python main.py`` line of the section."""
    commands = []
    for line in _readme_section().splitlines():
        if line.startswith("python main.py "):
            flags = shlex.split(line)[2:]
            commands.append(dict(flag[len("--config."):].split("=", 1) for flag in flags))
    return commands


def _parsed(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {"True": True, "False": False}.get(text, text)


def _same(default, text: str) -> bool:
    value = _parsed(text)
    if isinstance(default, (tuple, list)):
        return tuple(default) == tuple(value)
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        return math.isclose(float(default), float(value))
    return default == value


def test_readme_commands_agree_with_the_defaults():
    commands = _commands()
    assert len(commands) >= 15
    for flags in commands:
        defaults = get_model_spec(flags["model"]).defaults[flags["dataset"]]
        for field, text in flags.items():
            if field not in ("dataset", "model"):
                assert field in defaults and _same(defaults[field], text), (flags["model"], field, text)


def test_readme_names_every_attentive_model():
    section = _readme_section()
    commanded = {flags["model"] for flags in _commands()}
    missing = [name for name in ATTGCONV_MODELS + ["z2cnn"] if name not in commanded and f"`{name}`" not in section]
    assert not missing, missing
    papers_models = {"z2cnn", "p4cnn", "att_p4cnn", "f_att_p4cnn", "allcnnc", "p4_allcnnc", "f_att_p4_allcnnc",
                     "p4m_allcnnc", "f_att_p4m_allcnnc", "resnet44", "p4m_resnet44", "f_att_p4m_resnet44",
                     "p4_densenet", "f_att_p4_densenet", "p4m_densenet", "f_att_p4m_densenet"}
    assert papers_models <= commanded, papers_models - commanded


# ------------------------------------------------------------ formulations


def _attentive_layers(model: torch.nn.Module) -> List[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, (AttentiveLiftingConv, AttentiveGroupConv))]


def _logits_and_gradients(name: str, formulation: str, x: torch.Tensor) -> Tuple[torch.Tensor, Dict]:
    torch.manual_seed(0)
    model = create_model(name, ConfigDict(dict(attention_formulation=formulation)), ROTMNIST).double().eval()
    layers = _attentive_layers(model)
    assert len(layers) == 7 and all(layer.formulation == formulation for layer in layers)
    for layer in layers:
        layer.chunk_size = 3  # several blocks for the 10 output channels of most layers
    logits = model(x)
    logits.square().sum().backward()
    return logits.detach(), {key: p.grad for key, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["att_p4cnn", "sp_att_p4cnn"])
def test_both_formulations_give_the_same_model(name):
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    chunked_logits, chunked_grads = _logits_and_gradients(name, "chunked", x)
    full_logits, full_grads = _logits_and_gradients(name, "full", x)
    torch.testing.assert_close(chunked_logits, full_logits, rtol=1e-12, atol=1e-12)
    for key, grad in full_grads.items():
        torch.testing.assert_close(chunked_grads[key], grad, rtol=1e-10, atol=1e-12, msg=key)
