"""Every ``python main.py ...`` line of runs/README.md trains for one step on fixture data.

The test appends flags that point the run at tiny fixture files, limit it to one optimizer
step on two images and keep it on the CPU; everything else (model, optimizer, scheduler,
attention, precision, ...) is exactly the command of the README. Each command runs as its own
``main.py`` process, forked from one that imported everything once (:mod:`forked_main`).
"""

from __future__ import annotations

import ast
import shlex

import pytest

import config as config_file
import fixture_data
from g_selfatt_models import checkpoints

from conftest import REPO_ROOT

README = REPO_ROOT / "runs" / "README.md"
PREFIX = ("python", "main.py")

# dataset -> (fixture writer or None, flags its tiny files need)
FIXTURES = {
    "rotMNIST": (fixture_data.make_rotmnist, ["--config.valid_size=2"]),
    "CIFAR10": (fixture_data.make_cifar10, ["--config.valid_size=2"]),
    "PCam": (fixture_data.make_pcam_hdf5, []),
    "MNIST": (fixture_data.make_mnist, ["--config.valid_size=2"]),
    "rotDigits": (None, []),
    "rotMNIST5k": (fixture_data.make_rotmnist5k, ["--config.valid_size=2"]),
}
DEFAULT_DATASET = config_file.get_config().dataset


def readme_commands():
    """(line number, arguments after ``python main.py``) of every command in the README."""
    commands = []
    for number, line in enumerate(README.read_text().splitlines(), start=1):
        if line.strip().startswith(" ".join(PREFIX) + " "):
            commands.append((number, shlex.split(line.strip())[len(PREFIX):]))
    return commands


def flag_value(arguments, field, default):
    """The value of ``--config.<field>`` in ``arguments`` (the last one wins)."""
    values = [a.split("=", 1)[1] for a in arguments if a.startswith(f"--config.{field}=")]
    return values[-1] if values else default


# The GSA-Net command lines of the paper (shared/docs/papers.md), flag by flag.
PAPER_GSA_COMMON = {"norm_type": "LayerNorm", "activation_function": "Swish",
                    "whitening_scale": "1.41421356", "weight_decay": "1e-4", "augment": "False"}
PAPER_GSA_RUNS = {
    "rotMNIST": {"model": "p4sa", "attention_type": "Local", "patch_size": "9",
                 "dropout_att": "0.1", "dropout_values": "0.1", "optimizer": "Adam", "lr": "1e-3",
                 "scheduler": "constant", "batch_size": "8", "epochs": "300"},
    "CIFAR10": {"model": "mz2sa", "attention_type": "Local", "patch_size": "5",
                "dropout_att": "0.1", "dropout_values": "0.0", "optimizer": "SGD",
                "optimizer_momentum": "0.9", "lr": "0.01", "scheduler": "linear_warmup_cosine",
                "warmup_epochs": "10", "batch_size": "24", "epochs": "350"},
    "PCam": {"model": "p4sa", "attention_type": "Local", "patch_size": "5", "dropout_att": "0.1",
             "dropout_values": "0.1", "optimizer": "SGD", "optimizer_momentum": "0.9",
             "lr": "0.01", "scheduler": "linear_warmup_cosine", "warmup_epochs": "10",
             "batch_size": "16", "epochs": "100"},
}


def same_text(text: str, expected: str) -> bool:
    """Whether two flag values are equal, as numbers when both are numbers."""
    try:
        return float(text) == float(expected)
    except ValueError:
        return text == expected


@pytest.mark.parametrize("dataset", sorted(PAPER_GSA_RUNS))
def test_readme_has_the_papers_gsa_command(dataset):
    expected = {**PAPER_GSA_COMMON, **PAPER_GSA_RUNS[dataset]}
    matching = [number for number, arguments in readme_commands()
                if flag_value(arguments, "dataset", DEFAULT_DATASET) == dataset
                and all(same_text(flag_value(arguments, field, ""), value)
                        for field, value in expected.items())]
    assert matching, f"no {dataset} command of runs/README.md sets all of {expected}"


@pytest.mark.parametrize("number,arguments", readme_commands(),
                         ids=[f"line{n}" for n, _ in readme_commands()])
def test_readme_command_trains_one_step(tmp_path, main_server, number, arguments):
    assert all(a.startswith("--config.") for a in arguments), arguments
    dataset = flag_value(arguments, "dataset", DEFAULT_DATASET)
    writer, dataset_flags = FIXTURES[dataset]
    if writer is not None:
        writer(tmp_path / "data")
    smoke = [f"--config.data_root={tmp_path / 'data'}", f"--config.save_dir={tmp_path / 'saved'}",
             "--config.max_steps=1", "--config.epochs=1", "--config.max_examples=2",
             "--config.batch_size=2", "--config.rotation_angles=0", "--config.device=cpu",
             "--config.num_workers=0", "--config.num_threads=1", *dataset_flags]
    output = tmp_path / "output.txt"
    returncode = main_server.run([*arguments, *smoke], output)
    assert returncode == 0, f"runs/README.md line {number}:\n{output.read_text()[-4000:]}"
    (last,) = (tmp_path / "saved").glob("*.last.pt")
    saved = checkpoints.read(last)
    assert saved["step"] == 1
    for argument in arguments:
        field, value = argument[len("--config."):].split("=", 1)
        if field not in ("epochs", "batch_size"):
            assert same_value(saved["config"][field], value), (field, value)


def same_value(saved, text: str) -> bool:
    """Whether the saved config value is the command-line text ``text``."""
    if isinstance(saved, (bool, str)):
        return str(saved) == text
    if isinstance(saved, (tuple, list)):
        return tuple(saved) == tuple(ast.literal_eval(text))
    return float(saved) == float(text)
