"""A fresh virtual environment with the built wheel installed, as a user outside the checkout has it.

The environment gets the wheel built from this checkout, a stand-in distribution named
``datasets`` (a top-level package of that name, as Hugging Face's is), and the third-party
packages of the test environment (torch, numpy, matplotlib, ipykernel, ...) through a
``.pth`` file, so that nothing is downloaded; the checkout itself is not on its path.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from typing import Sequence

from tests.conftest import REPO_ROOT

# The test environment's own install of this project, left out of the new environment.
_PROJECT_ENTRIES = ("__editable__", "g_selfatt", "distutils-precedence.pth")


@dataclasses.dataclass(frozen=True)
class WheelEnv:
    root: pathlib.Path
    python: pathlib.Path
    wheel: pathlib.Path
    site_packages: pathlib.Path

    def run(self, args: Sequence[str], cwd: pathlib.Path, timeout: float = 600) -> subprocess.CompletedProcess:
        """Runs the environment's interpreter with ``args`` in ``cwd``, without PYTHONPATH."""
        env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
        return subprocess.run([str(self.python), *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet", *args],
                   check=True, capture_output=True, text=True)


# What a build of the wheel reads: the packaging files and the packages.
_BUILD_FILES = ("pyproject.toml", "README.md", "LICENSE", "g_selfatt_cli.py")
_PACKAGES = ("g_selfatt", "attgconv", "g_selfatt_models")


def _source_copy(target: pathlib.Path) -> pathlib.Path:
    """The files a build reads, copied (a build writes into its source folder)."""
    target.mkdir(parents=True)
    for name in _BUILD_FILES:
        shutil.copy2(REPO_ROOT / name, target / name)
    for package in _PACKAGES:
        shutil.copytree(REPO_ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def build_wheel(work: pathlib.Path) -> pathlib.Path:
    """The project's wheel, built from a copy of the checkout."""
    source = _source_copy(work / "source")
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(work / "dist"), str(source))
    (wheel,) = (work / "dist").glob("g_selfatt-*.whl")
    return wheel


def _stand_in_datasets(work: pathlib.Path) -> pathlib.Path:
    """A wheel of a distribution ``datasets`` whose top-level package is ``datasets``."""
    project = work / "datasets_project"
    (project / "datasets").mkdir(parents=True)
    (project / "datasets" / "__init__.py").write_text('"""Stand-in for Hugging Face datasets."""\nSTAND_IN = True\n')
    (project / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = ["setuptools>=77"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "datasets"
        version = "99.0"
        [tool.setuptools]
        packages = ["datasets"]
    """))
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(work / "dist"), str(project))
    (wheel,) = (work / "dist").glob("datasets-*.whl")
    return wheel


def _third_party(work: pathlib.Path) -> pathlib.Path:
    """Links to the test environment's installed packages, without this project's install."""
    farm = work / "third_party"
    farm.mkdir()
    for entry in pathlib.Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(_PROJECT_ENTRIES) and entry.name != "__pycache__":
            (farm / entry.name).symlink_to(entry)
    return farm


def create(work: pathlib.Path) -> WheelEnv:
    """Builds the wheel and a virtual environment in ``work`` with it (and the stand-in) installed."""
    wheel = build_wheel(work)
    root = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    site_packages = pathlib.Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip())
    (site_packages / "zz_third_party.pth").write_text(f"{_third_party(work)}\n")
    _pip("--python", str(python), "install", "--no-deps", "--no-index", str(wheel), str(_stand_in_datasets(work)))
    return WheelEnv(root, python, wheel, site_packages)
