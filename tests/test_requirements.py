"""requirements.txt (running) and requirements-test.txt (the suite, on top of it) together list the
packages of conda_requirements.txt, torch pinned, no torchvision, nothing of the suite needed to run;
the test runner groups tests as ``make test`` asks."""

import os
import re
import subprocess
import sys

from tests.conftest import REPO_ROOT


def _names(lines):
    names = set()
    for line in lines:
        if line.strip().startswith("-r "):  # an included file, read on its own
            continue
        line = line.split("#", 1)[0].strip().lstrip("- ").strip()
        match = re.match(r"([A-Za-z0-9_.\-]+)", line)
        if match and ":" not in line:
            names.add(match.group(1).lower().replace("_", "-"))
    return names


def test_requirement_files_agree_and_pin_torch():
    run_lines = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    test_lines = (REPO_ROOT / "requirements-test.txt").read_text().splitlines()
    pip_lines = run_lines + test_lines
    conda_lines = (REPO_ROOT / "conda_requirements.txt").read_text().splitlines()
    dependencies = conda_lines[conda_lines.index("dependencies:") + 1:]
    conda_names = _names(dependencies) - {"python", "pip"}
    assert "-r requirements.txt" in [line.strip() for line in test_lines]
    assert _names(run_lines) | _names(test_lines) == conda_names
    assert not _names(run_lines) & {"pytest", "pytest-xdist", "nbclient", "nbformat", "ipykernel", "triton"}
    assert "torch==2.13.0" in [line.strip() for line in pip_lines]
    assert any(line.strip() == "- torch==2.13.0" for line in conda_lines)
    assert not any("torchvision" in line.split("#", 1)[0] for line in pip_lines + conda_lines)


GROUPED_TESTS = '''
import os
import pytest

@pytest.mark.xdist_group("one")
@pytest.mark.parametrize("index", range(6))
def test_grouped(index):
    with open(os.environ["WORKERS_FILE"], "a") as handle:
        handle.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
'''


def test_make_tests_xdist_groups_run_on_one_worker(tmp_path):
    """``make test`` (``-n 2 --dist loadgroup``) runs the tests of one ``xdist_group`` on one worker,
    which is what lets the suite make their shared, expensive fixtures once (a pytest that breaks the
    grouping would spread them out and run those fixtures twice)."""
    (tmp_path / "test_grouped.py").write_text(GROUPED_TESTS)
    workers = tmp_path / "workers.txt"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p",
                             "no:cacheprovider", "test_grouped.py"], cwd=tmp_path, capture_output=True, text=True,
                            env=dict(os.environ, WORKERS_FILE=str(workers)), timeout=300)
    assert result.returncode == 0, result.stdout[-2000:]
    names = workers.read_text().split()
    assert len(names) == 6 and len(set(names)) == 1, names
