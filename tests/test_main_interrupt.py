"""Real processes stopped by real signals: SIGTERM and SIGINT save and resume; SIGKILL loses at
most ``checkpoint_every`` steps; either way the resumed run ends with the uninterrupted run's
weights, bit for bit (dropout on); under torchrun every rank stops at the same step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from g_selfatt_models import checkpoints

from conftest import REPO_ROOT

# z2sa with dropout, 64 examples in batches of 4: 16 steps per epoch, 96 in all (a signal sent
# during the second epoch leaves four to resume).
FLAGS = ["--config.model=z2sa", "--config.max_examples=64", "--config.batch_size=4",
         "--config.epochs=6", "--config.rotation_angles=0", "--config.device=cpu",
         "--config.num_threads=1", "--config.dropout_att=0.1", "--config.dropout_values=0.1"]
TOTAL_STEPS = 96


def start_main(save_dir, *extra, launcher=(sys.executable,)):
    """``python main.py`` with :data:`FLAGS` in the background."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([*launcher, "main.py", *FLAGS, f"--config.save_dir={save_dir}", *extra],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_for(process, condition, timeout_s=240.0):
    """Waits until ``condition()`` holds while ``process`` runs."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def last_file(save_dir):
    (path,) = save_dir.glob("*.last.pt")
    return path


def finish(process, timeout_s=300):
    _, stderr = process.communicate(timeout=timeout_s)
    return process.returncode, stderr


# The tests that compare with the uninterrupted run go to one test process (make test: --dist
# loadgroup), so that it is made once.
with_the_uninterrupted_run = pytest.mark.xdist_group("uninterrupted_run")


@pytest.fixture(scope="session")  # session: kept while other modules' tests run on this worker
def uninterrupted(tmp_path_factory):
    """The final ``last`` checkpoint of the run that nothing stopped."""
    save_dir = tmp_path_factory.mktemp("straight")
    returncode, stderr = finish(start_main(save_dir))
    assert returncode == 0, stderr[-3000:]
    return checkpoints.read(last_file(save_dir))


def assert_same_final_weights(save_dir, expected):
    final = checkpoints.read(last_file(save_dir))
    assert final["step"] == expected["step"] == TOTAL_STEPS
    for key, value in expected["state_dict"].items():
        assert torch.equal(final["state_dict"][key], value), key


@with_the_uninterrupted_run
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])  # SIGUSR1: SLURM's --signal=USR1
def test_a_signal_saves_reports_and_exits_then_resume_finishes_exactly(tmp_path, uninterrupted, sig):
    process = start_main(tmp_path)
    wait_for(process, lambda: list(tmp_path.glob("*.last.pt")))  # past the first epoch
    time.sleep(0.3)  # into the middle of an epoch
    process.send_signal(sig)
    returncode, stderr = finish(process)
    assert returncode == 128 + sig, stderr[-3000:]
    assert "Traceback" not in stderr
    stopped = [line for line in stderr.splitlines() if "Stopped by" in line]
    assert len(stopped) == 1 and f"Stopped by {sig.name}" in stopped[0]
    assert "Resume with: python main.py" in stopped[0] and stopped[0].endswith("--config.resume=True")
    saved = checkpoints.read(last_file(tmp_path))
    assert 0 < saved["step"] < TOTAL_STEPS
    assert f"step {saved['step']})" in stopped[0]

    returncode, stderr = finish(start_main(tmp_path, "--config.resume=True"))
    assert returncode == 0, stderr[-3000:]
    assert_same_final_weights(tmp_path, uninterrupted)


@with_the_uninterrupted_run
def test_sigkill_loses_at_most_checkpoint_every_steps_and_resumes_exactly(tmp_path, uninterrupted):
    process = start_main(tmp_path, "--config.checkpoint_every=7")
    wait_for(process, lambda: list(tmp_path.glob("*.last.pt")))
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    finish(process)
    assert process.returncode == -signal.SIGKILL
    # A kill during a write can leave a temporary file, never a partial checkpoint.
    saved = checkpoints.read(last_file(tmp_path))
    assert saved["step"] % 7 == 0 or saved["step"] % 16 == 0

    returncode, stderr = finish(start_main(tmp_path, "--config.checkpoint_every=7",
                                           "--config.resume=True"))
    assert returncode == 0, stderr[-3000:]
    assert f"at epoch {saved['epoch']}, batch {saved['train_state']['batch_in_epoch']}" in stderr
    assert_same_final_weights(tmp_path, uninterrupted)


def test_two_runs_of_one_configuration_cannot_share_its_files(tmp_path):
    first = start_main(tmp_path)
    try:
        wait_for(first, lambda: list(tmp_path.glob("*.lock")))
        returncode, stderr = finish(start_main(tmp_path))
        assert returncode == 2 and "Traceback" not in stderr
        assert "Another run of this configuration is training into" in stderr
        assert f"process {first.pid}" in stderr
    finally:
        first.kill()
        first.communicate()


def test_under_torchrun_every_rank_stops_at_the_same_step(tmp_path):
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    process = start_main(tmp_path, launcher=launcher)
    wait_for(process, lambda: list(tmp_path.glob("*.last.pt")))
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)  # the launcher passes it on to both workers
    returncode, stderr = finish(process)
    assert returncode != 0
    stopped = {line.split("Stopped by SIGTERM at ", 1)[1].split(";")[0]
               for line in stderr.splitlines() if "Stopped by SIGTERM" in line}
    assert len(stopped) == 1, stderr[-3000:]  # both ranks name the same epoch, batch and step
    saved = checkpoints.read(last_file(tmp_path))
    assert len(saved["random_states"]) == 2 and f"(step {saved['step']})" in stopped.pop()


def test_a_signal_during_the_test_says_training_finished_and_how_to_test(tmp_path):
    process = start_main(tmp_path, "--config.epochs=1", "--config.rotation_angles=720")

    def testing():
        logs = list(tmp_path.glob("*.log"))
        return bool(logs) and "Test accuracy on" in logs[0].read_text()

    wait_for(process, testing)
    process.send_signal(signal.SIGTERM)
    returncode, stderr = finish(process)
    assert returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "Stopped by SIGTERM during the test; training had finished" in stderr
    assert "Test it with: python main.py" in stderr and "--config.train=False --config.pretrained=True" in stderr
    assert not list(tmp_path.glob("*.lock")) and not list(tmp_path.glob("*.test.json"))
