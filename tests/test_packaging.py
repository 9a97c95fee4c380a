"""The built wheel in a fresh environment, used from a project with its own ``models/`` package.

The environment (tests/wheel_env.py) has the wheel, a top-level package ``datasets`` of another
distribution (as Hugging Face's), and no checkout on its path. From a user's folder that holds
its own ``models/``, the public API builds a model, loads every shipped checkpoint (their logits
match those computed in the checkout) and lists the models. The wheel's metadata declares
ranges that include the pinned torch and its successor, and the extras.
"""

from __future__ import annotations

import email
import json
import textwrap
import zipfile

import pytest
import torch
from packaging.requirements import Requirement

from tests.conftest import REPO_ROOT
from tests.test_gsa_layers import PAPER_PARAMETER_COUNTS

SHIPPED = sorted((REPO_ROOT / "saved").glob("*.pt")) + sorted((REPO_ROOT / "saved" / "pretrained").glob("*.pt"))


def _input_side(path) -> int:
    """The image side of a shipped model: 16 for rotDigits, 28 for rotMNIST5k."""
    return 16 if path.name.startswith("rotDigits") else 28

USER_SCRIPT = textwrap.dedent("""\
    import json, sys
    import torch

    import datasets, models
    assert models.OWNER == "user", models.__file__          # the user's own models/ package
    assert datasets.STAND_IN, datasets.__file__              # the other distribution's datasets

    import g_selfatt, g_selfatt_models
    from g_selfatt_models import create_model, list_models, load_model

    model = create_model("p4sa", dataset="rotMNIST")
    result = {
        "files": [g_selfatt.__file__, g_selfatt_models.__file__],
        "p4sa_rotMNIST_parameters": sum(p.numel() for p in model.parameters()),
        "gsa_models": list_models("*sa"),
        "logits": {},
    }
    for argument in sys.argv[1:]:
        path, size = argument.rsplit(":", 1)
        loaded = load_model(path)
        torch.manual_seed(0)
        with torch.no_grad():
            result["logits"][path] = loaded(torch.randn(2, 1, int(size), int(size))).tolist()
    print(json.dumps(result))
""")


def _metadata(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(archive.read(name)), archive.namelist()


def test_the_wheel_ships_the_libraries_and_models_under_their_own_names(wheel_env):
    _, names = _metadata(wheel_env.wheel)
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"g_selfatt", "attgconv", "g_selfatt_models", "g_selfatt_cli.py"}
    assert "g_selfatt/nn/fused_attention.cpp" in names
    assert not any(name.startswith(("models/", "datasets/", "runner/")) for name in names)


def test_the_wheel_declares_ranges_and_extras(wheel_env):
    metadata, _ = _metadata(wheel_env.wheel)
    requirements = [Requirement(line) for line in metadata.get_all("Requires-Dist")]
    torch_requirement = next(r for r in requirements if r.name == "torch" and r.marker is None)
    assert torch_requirement.specifier.contains("2.13.0") and torch_requirement.specifier.contains("2.14.1")
    assert not torch_requirement.specifier.contains("1.13.1")
    assert set(metadata.get_all("Provides-Extra")) == {"plots", "notebooks", "wandb", "gpu", "tests"}
    assert metadata["License-Expression"] == "MIT"


@pytest.mark.slow
def test_a_user_project_with_its_own_models_uses_the_wheel(wheel_env, tmp_path):
    project = tmp_path / "my_project"
    (project / "models").mkdir(parents=True)
    (project / "models" / "__init__.py").write_text('OWNER = "user"\n')
    (project / "use.py").write_text(USER_SCRIPT)
    completed = wheel_env.run(["use.py", *(f"{path}:{_input_side(path)}" for path in SHIPPED)], cwd=project)
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])

    assert all(str(wheel_env.site_packages) in path for path in result["files"]), result["files"]
    assert result["p4sa_rotMNIST_parameters"] == PAPER_PARAMETER_COUNTS["rotMNIST"]["p4sa"]
    assert {"z2sa", "p4sa", "p4msa"} <= set(result["gsa_models"])

    import g_selfatt_models

    for path in SHIPPED:
        model = g_selfatt_models.load_model(path)
        torch.manual_seed(0)
        with torch.no_grad():
            expected = model(torch.randn(2, 1, _input_side(path), _input_side(path)))
        got = torch.tensor(result["logits"][str(path)])
        scale = expected.abs().max()
        assert torch.allclose(got, expected, rtol=0, atol=1e-5 * float(scale)), path.name


def test_the_command_says_what_a_wheel_lacks(wheel_env, tmp_path):
    completed = wheel_env.run(["-c", "import g_selfatt_cli; g_selfatt_cli.main()"], cwd=tmp_path)
    assert completed.returncode == 2
    assert "does not contain" in completed.stderr and "make setup" in completed.stderr
    assert "Traceback" not in completed.stderr
