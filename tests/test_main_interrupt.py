"""A run killed with SIGKILL mid-training leaves readable checkpoints and resumes from them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from runner import checkpoint

from conftest import REPO_ROOT

FLAGS = ["--config.model=z2sa", "--config.max_examples=64", "--config.batch_size=4",
         "--config.epochs=50", "--config.rotation_angles=0", "--config.device=cpu",
         "--config.num_threads=1"]
STEPS_PER_EPOCH = 16  # 64 examples in batches of 4


def start_main(save_dir, *extra):
    """``python main.py`` with :data:`FLAGS` in the background."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "main.py", *FLAGS, f"--config.save_dir={save_dir}",
                             *extra], cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(process, save_dir, timeout_s=240.0):
    """Waits until the run has written its first ``last`` checkpoint."""
    deadline = time.monotonic() + timeout_s
    while not list(save_dir.glob("*.last.pt")):
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint written in time"
        time.sleep(0.05)


def test_sigkill_mid_epoch_leaves_readable_checkpoints_that_resume(tmp_path):
    save_dir = tmp_path / "saved"
    process = start_main(save_dir)
    try:
        wait_for_checkpoint(process, save_dir)
        time.sleep(0.5)  # into the second epoch (or its checkpoint writes)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    assert process.returncode == -signal.SIGKILL

    # A kill during a write can leave a temporary file, never a partial checkpoint.
    files = [path for path in save_dir.iterdir() if not path.name.endswith(".tmp")]
    (last_path,) = [path for path in files if path.name.endswith(".last.pt")]
    (best_path,) = [path for path in files if path != last_path]
    last = checkpoint.read(last_path)
    assert checkpoint.read(best_path)["best_metric"] >= last["best_metric"]
    assert last["epoch"] >= 1 and last["step"] == last["epoch"] * STEPS_PER_EPOCH

    target = last["step"] + 3
    resumed = start_main(save_dir, "--config.resume=True", f"--config.max_steps={target}")
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]
    assert f"Resumed from {last_path}" in stderr
    after = checkpoint.read(last_path)
    assert after["step"] == target and after["epoch"] == last["epoch"]
    before = last["train_state"]["history"]
    assert after["train_state"]["history"][:len(before)] == before
