"""Shared test configuration."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

# One thread per test process by default: the suite runs one process per core (pytest -n),
# and several OpenMP threads per process oversubscribe the cores and spin. TEST_NUM_THREADS
# runs the suite with more threads per process (the results must not depend on it).
TEST_NUM_THREADS = int(os.environ.get("TEST_NUM_THREADS", "1"))
torch.set_num_threads(TEST_NUM_THREADS)
os.environ.setdefault("OMP_NUM_THREADS", str(TEST_NUM_THREADS))

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference"


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Seeds every test and keeps the default dtype float32."""
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(torch.float32)


def load_script(relative_path: str):
    """A script of the repository (``tools/...``, ``benchmarks/...``) imported as a module."""
    path = REPO_ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_files(prefix: str):
    """The reference records with ``prefix`` (``gsa_`` or ``att_``), sorted."""
    files = sorted(REFERENCE_DIR.glob(f"{prefix}*.pt"))
    if not files:
        raise FileNotFoundError(
            f"No {prefix}*.pt records in {REFERENCE_DIR}; the shared reference data must sit beside the repository."
        )
    return files


@pytest.fixture(scope="session")
def main_server():
    """Runs ``main.py`` command lines forked from one process that imported everything once
    (:class:`forked_main.ForkedMain`; one thread per run), shared by the tests of a worker."""
    from forked_main import ForkedMain

    server = ForkedMain(dict(os.environ, OMP_NUM_THREADS="1"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def wheel_env(tmp_path_factory):
    """A fresh venv with the built wheel and a package named ``datasets`` (see tests/wheel_env.py)."""
    from tests import wheel_env as module

    return module.create(tmp_path_factory.mktemp("wheel_env"))
