"""requirements.txt and conda_requirements.txt list the same packages, torch pinned, no torchvision."""

import re

from tests.conftest import REPO_ROOT


def _names(lines):
    names = set()
    for line in lines:
        line = line.split("#", 1)[0].strip().lstrip("- ").strip()
        match = re.match(r"([A-Za-z0-9_.\-]+)", line)
        if match and ":" not in line:
            names.add(match.group(1).lower().replace("_", "-"))
    return names


def test_requirement_files_agree_and_pin_torch():
    pip_lines = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    conda_lines = (REPO_ROOT / "conda_requirements.txt").read_text().splitlines()
    pip_names = _names(pip_lines)
    dependencies = conda_lines[conda_lines.index("dependencies:") + 1:]
    conda_names = _names(dependencies) - {"python", "pip"}
    assert pip_names == conda_names
    assert "torch==2.13.0" in [line.strip() for line in pip_lines]
    assert any(line.strip() == "- torch==2.13.0" for line in conda_lines)
    assert not any("torchvision" in line.split("#", 1)[0] for line in pip_lines + conda_lines)
