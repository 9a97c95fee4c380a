"""DistributedDataParallel training with torchrun: two CPU processes over gloo."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import torch

import config as config_file
import main
from g_selfatt_models import checkpoints

from conftest import REPO_ROOT

COMMON = {"dataset": "rotDigits", "model": "z2sa", "max_examples": 16, "epochs": 1,
          "rotation_angles": 0, "device": "cpu", "num_threads": 1,
          # SGD, not Adam: Adam's first step is lr * sign(grad), which turns round-off in
          # near-zero gradients into differences of 2 * lr.
          "optimizer": "SGD", "lr": 0.01}


def test_two_processes_agree_and_match_one_process_with_the_total_batch(tmp_path):
    flags = [f"--config.{k}={v}" for k, v in COMMON.items()]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "main.py", *flags, "--config.batch_size=4", f"--config.save_dir={tmp_path / 'ddp'}"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    fingerprints = re.search(r"Parameter fingerprints per process: (\[.*?\])", result.stderr)
    assert fingerprints, result.stderr[-3000:]
    rank0, rank1 = ast.literal_eval(fingerprints.group(1))
    assert rank0 == rank1

    written = sorted(p.name.rsplit("_", 1)[-1] for p in (tmp_path / "ddp").iterdir())
    run_hash = written[0].split(".")[0]  # the run's files share one name; no lock file remains
    assert written == [f"{run_hash}.last.pt", f"{run_hash}.log", f"{run_hash}.metrics.csv", f"{run_hash}.pt",
                       f"{run_hash}.test.json"]
    ddp_checkpoint = next((tmp_path / "ddp").glob("*.last.pt"))
    ddp = checkpoints.read(ddp_checkpoint)
    assert ddp["step"] == 2 and not any(k.startswith("module.") for k in ddp["state_dict"])

    # Each step of the two shards of 4 sees the same 8 examples as one process with batch 8.
    config = config_file.get_config()
    for key, value in COMMON.items():
        config[key] = value
    config.batch_size = 8
    config.save_dir = str(tmp_path / "single")
    single = checkpoints.read(main.run(config).checkpoint)
    assert single["step"] == 2
    for key, value in single["state_dict"].items():
        torch.testing.assert_close(ddp["state_dict"][key], value, rtol=2e-3, atol=1e-4)
