"""A run that crashes at any step and is resumed repeats the uninterrupted run bit for bit.

Dropout is on (attention and values for GSA-Nets, the P4CNN's and All-CNN-C's own dropout),
so every random state must be restored: torch's generator (dropout masks, the seeds of the
attention-dropout masks), the augmentation generator (CIFAR10), the data order and the
position in the epoch. The crash is an exception raised before a step, as a kill would leave
it: nothing is saved after the last periodic checkpoint.
"""

from __future__ import annotations

import time

import pytest
import torch

import fixture_data
import main
import trainer
from g_selfatt_models import checkpoints
from runner import machine, paths
from g_selfatt_models.checkpoints import CheckpointError
from test_main_e2e import make_config

# name -> (dataset, fixture writer, model, overrides). 16 examples in batches of 4: 4 steps per
# epoch, 2 epochs; a checkpoint every 3 steps.
CASES = {
    "gsa": ("rotDigits", None, "z2sa", {"dropout_att": 0.1, "dropout_values": 0.1}),
    "attentive-gcnn": ("rotDigits", None, "f_att_p4cnn", {}),
    "augmented": ("CIFAR10", fixture_data.make_cifar10, "allcnnc",
                  {"augment": True, "valid_size": 4}),
}
COMMON = dict(max_examples=16, batch_size=4, epochs=2, rotation_angles=0, checkpoint_every="3")


class SimulatedCrash(BaseException):
    """Stands for a SIGKILL: nothing in the runner handles it."""


def _config(tmp_path, case, **overrides):
    dataset, writer, model, extra = CASES[case]
    if writer is not None and not (tmp_path / "data" / dataset).exists():
        writer(tmp_path / "data", n_per_batch=4) if dataset == "CIFAR10" else writer(tmp_path / "data")
    return make_config(tmp_path, dataset=dataset, model=model, **{**COMMON, **extra, **overrides})


def _crash_before_step(monkeypatch, step):
    original = trainer.Trainer._train_step

    def train_step(self, *args):
        if self.state.step + 1 == step:
            raise SimulatedCrash
        return original(self, *args)

    monkeypatch.setattr(trainer.Trainer, "_train_step", train_step)
    return original


def _run_until_crash(monkeypatch, config, step):
    """Runs ``config`` until it crashes before ``step``; later runs in the test train normally."""
    original = _crash_before_step(monkeypatch, step)
    with pytest.raises(SimulatedCrash):
        main.run(config)
    monkeypatch.setattr(trainer.Trainer, "_train_step", original)


def _without_timing(history):
    """The history without its wall-clock seconds, the one part that no resume can reproduce."""
    return [{key: value for key, value in row.items() if key != "train_seconds"} for row in history]


def _files(result):
    best = checkpoints.read(result.checkpoint)
    last = checkpoints.read(paths.last_checkpoint_path(result.checkpoint))
    return best, last


def _assert_same_weights(actual, expected):
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("case", sorted(CASES))
# Checkpoints are written after steps 3 (periodic), 4 (end of epoch 1), 6 (periodic) and 8:
# a crash before step 2 finds none, a crash before step 8 resumes in the middle of epoch 2.
@pytest.mark.parametrize("crash_step", [2, 8])
def test_crash_and_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch, case,
                                                           num_workers, crash_step):
    straight_best, straight_last = _files(main.run(_config(tmp_path / "straight", case,
                                                           num_workers=num_workers)))

    config = _config(tmp_path / "cut", case, num_workers=num_workers)
    _run_until_crash(monkeypatch, config, crash_step)
    last_path = paths.last_checkpoint_path(paths.best_checkpoint_path(config, "any"))
    if crash_step <= 3:  # crashed before the first checkpoint: start again
        assert not last_path.exists()
        resumed = main.run(_config(tmp_path / "cut", case, num_workers=num_workers))
    else:
        saved = checkpoints.read(last_path)
        assert (saved["step"], saved["train_state"]["batch_in_epoch"]) == (6, 2)
        resumed = main.run(_config(tmp_path / "cut", case, num_workers=num_workers, resume=True))
    best, last = _files(resumed)
    assert last["step"] == straight_last["step"] == 8
    _assert_same_weights(last["state_dict"], straight_last["state_dict"])
    _assert_same_weights(best["state_dict"], straight_best["state_dict"])
    assert _without_timing(last["train_state"]["history"]) == _without_timing(straight_last["train_state"]["history"])
    assert last["optimizer"]["state"].keys() == straight_last["optimizer"]["state"].keys()


def test_resuming_with_another_configuration_lists_the_differences(tmp_path, monkeypatch):
    config = _config(tmp_path, "gsa")
    _run_until_crash(monkeypatch, config, 5)
    path = paths.best_checkpoint_path(config, "gsa")
    other = _config(tmp_path, "gsa", resume=True, path=str(path), lr=0.5, dropout_att=0.2)
    with pytest.raises(CheckpointError, match=r"another configuration \(dropout_att: 0.1 -> 0.2; "
                                              r"lr: 0.002 -> 0.5\)"):
        main.run(other)


def test_a_finished_run_continues_for_more_epochs_under_its_old_name(tmp_path):
    first = main.run(_config(tmp_path, "gsa", max_steps=3))
    assert checkpoints.read(paths.last_checkpoint_path(first.checkpoint))["step"] == 3
    longer = _config(tmp_path, "gsa", resume=True, path=str(first.checkpoint), epochs=3)
    _, last = _files(main.run(longer))
    assert (last["epoch"], last["step"]) == (3, 12)
    assert last["config"]["epochs"] == 3 and last["config"]["max_steps"] == 0


def test_an_epoch_stopped_and_resumed_reports_the_seconds_of_both_parts(tmp_path, monkeypatch):
    original = trainer.Trainer._train_step

    def slow_then_crash(self, *args):  # the steps before the crash take at least 0.5 s each
        if self.state.step + 1 == 8:
            raise SimulatedCrash
        time.sleep(0.5)
        return original(self, *args)

    monkeypatch.setattr(trainer.Trainer, "_train_step", slow_then_crash)
    config = _config(tmp_path, "gsa")
    with pytest.raises(SimulatedCrash):
        main.run(config)
    monkeypatch.setattr(trainer.Trainer, "_train_step", original)
    saved = checkpoints.read(paths.last_checkpoint_path(paths.best_checkpoint_path(config, "any")))
    # The checkpoint after step 6 holds steps 5 and 6 of epoch 2, 1 s of sleep at least.
    assert saved["train_state"]["batch_in_epoch"] == 2 and saved["train_state"]["epoch_seconds"] >= 1.0
    _, last = _files(main.run(_config(tmp_path, "gsa", resume=True)))
    _, second = last["train_state"]["history"]
    assert second["train_seconds"] >= saved["train_state"]["epoch_seconds"]
    assert last["train_state"]["epoch_seconds"] == 0.0


def test_a_run_records_each_machine_it_trained_on_once(tmp_path, monkeypatch):
    config = _config(tmp_path, "gsa")
    _run_until_crash(monkeypatch, config, 8)
    best_path = paths.best_checkpoint_path(config, "any")
    this_machine = machine.describe(torch.device("cpu"))
    assert checkpoints.read(paths.last_checkpoint_path(best_path))["train_state"]["machines"] == [this_machine]
    # Resumed on another machine: both, in the order they trained; then on this one again: no repeat.
    monkeypatch.setattr(machine, "describe", lambda device: "Another CPU (AVX2), 64 logical CPUs")
    _, last = _files(main.run(_config(tmp_path, "gsa", resume=True, path=str(best_path), epochs=3)))
    assert last["train_state"]["machines"] == [this_machine, "Another CPU (AVX2), 64 logical CPUs"]
    monkeypatch.undo()
    _, last = _files(main.run(_config(tmp_path, "gsa", resume=True, path=str(best_path), epochs=4)))
    assert last["train_state"]["machines"] == [this_machine, "Another CPU (AVX2), 64 logical CPUs"]
