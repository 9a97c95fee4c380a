"""Nothing lost, nothing silent: run identity, damaged files, configuration and record checks.

Each case uses real files: checkpoints written by a real run and then cut, overwritten with
text, or changed by one bit; the shipped checkpoints; data files with bad records.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import config as config_file
import fixture_data
import main
from datasets import pcam
from g_selfatt_models import released
from g_selfatt_models import checkpoints
from runner import files, paths
from g_selfatt_models.checkpoints import CheckpointError
from runner.defaults import FALLBACKS
from runner.errors import ConfigError
from test_main_e2e import make_config

from conftest import REFERENCE_DIR, REPO_ROOT

TINY = dict(dataset="rotDigits", model="z2sa", max_examples=8, batch_size=4, rotation_angles=0)
SHIPPED_Z2SA = next((REPO_ROOT / "saved").glob("rotDigits_model_z2sa_*_ep_30_*.pt"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The best checkpoint of a finished tiny run."""
    tmp_path = tmp_path_factory.mktemp("trained")
    return main.run(make_config(tmp_path, **TINY)).checkpoint


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _test_with(tmp_path, source, capsys, **overrides):
    """``main.run_cli`` testing the checkpoint ``source``; returns (status, stderr)."""
    config = make_config(tmp_path / "use", **TINY, train=False, pretrained=True,
                         checkpoint=str(source), **overrides)
    status = main.run_cli(config)
    return status, capsys.readouterr().err


# ----- run identity -----------------------------------------------------------------------------
def test_every_field_that_changes_the_run_changes_its_name():
    base = make_config(REPO_ROOT / "unused", **TINY)
    name = paths.run_name(base, "gsa")
    for field, value in [("max_steps", 3), ("max_examples", 4), ("grad_clip", 0.5), ("amp", "bf16"),
                         ("data_root", "elsewhere"), ("valid_size", 10), ("warmup_epochs", 2.0),
                         ("dropout_att", 0.3), ("image_size", 20), ("seed", 4)]:
        other = make_config(REPO_ROOT / "unused", **{**TINY, field: value})
        assert paths.run_name(other, "gsa") != name, field
    for field, value in [("num_workers", 2), ("device", "auto"), ("log_every", 7),
                         ("attention_impl", "reference"), ("checkpoint_every", "5")]:
        other = make_config(REPO_ROOT / "unused", **{**TINY, field: value})
        assert paths.run_name(other, "gsa") == name, field


def test_a_smoke_run_next_to_a_finished_run_leaves_it_alone(tmp_path):
    save_dir = tmp_path / "saved"
    save_dir.mkdir()
    finished = save_dir / SHIPPED_Z2SA.name
    shutil.copy(SHIPPED_Z2SA, finished)
    before = _digest(finished)
    config = make_config(tmp_path, dataset="rotDigits", model="z2sa", epochs=30, max_steps=3,
                         batch_size=16, lr=2e-3, rotation_angles=0)
    result = main.run(config)
    assert result.checkpoint != finished and _digest(finished) == before
    assert checkpoints.read(finished)["best_metric"] == pytest.approx(0.4983, abs=1e-4)


def test_the_shipped_checkpoints_are_never_written(capsys):
    manifest = paths.shipped_checkpoints()
    assert SHIPPED_Z2SA.name in manifest
    before = _digest(SHIPPED_Z2SA)
    assert before == manifest[SHIPPED_Z2SA.name]["sha256"]
    config = make_config(REPO_ROOT / "unused", dataset="rotDigits", model="z2sa", epochs=30,
                         batch_size=16, lr=2e-3, rotation_angles=0, overwrite=True)
    config.save_dir = str(REPO_ROOT / "saved")
    config.data_root = "./data"
    assert main.run_cli(config) == 2
    assert "shipped with the project; a run never writes it" in capsys.readouterr().err
    assert _digest(SHIPPED_Z2SA) == before


def test_a_finished_run_is_replaced_only_with_overwrite(tmp_path, capsys):
    config = make_config(tmp_path, **TINY)
    first = main.run(config)
    prefix = paths.output_prefix(first.checkpoint)
    assert main.run_cli(make_config(tmp_path, **TINY)) == 2
    message = capsys.readouterr().err
    assert "A run of this configuration already exists" in message
    assert "--config.resume=True" in message and "--config.overwrite=True" in message
    report = paths.REPORT_SUFFIXES[0]
    (tmp_path / f"{prefix}{report}").write_text("{}")  # a report of the old run
    again = main.run(make_config(tmp_path, **TINY, overwrite=True, train=True))
    assert again.checkpoint == first.checkpoint and checkpoints.read(first.checkpoint)["step"] == 2
    assert (tmp_path / f"{prefix}{report}").read_text() != "{}"  # the new run's report
    assert not list(tmp_path.glob("saved/*.lock"))


def test_a_file_of_another_configuration_is_never_overwritten(tmp_path, trained):
    other = make_config(tmp_path, **TINY, lr=0.5, path=str(trained), overwrite=True)
    with pytest.raises(ConfigError, match=r"another configuration \(.*lr: 0.002 -> 0.5\)"):
        main.run(other)


@pytest.mark.parametrize("content", [b"my notes, not a checkpoint\n", b""])
def test_overwrite_never_deletes_a_file_it_cannot_read_as_its_own(tmp_path, content):
    mine = tmp_path / "notes.pt"
    mine.write_bytes(content)
    with pytest.raises(ConfigError, match="cannot be read as a checkpoint.*never deletes or replaces"):
        main.run(make_config(tmp_path, **TINY, path=str(mine), overwrite=True))
    assert mine.read_bytes() == content


# ----- damaged checkpoints ----------------------------------------------------------------------
def _flip_one_weight_bit(source, target):
    """Copies ``source`` to ``target`` with one bit changed inside the largest tensor's bytes."""
    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        entry = max((e for e in archive.infolist() if "/data/" in e.filename), key=lambda e: e.file_size)
    header = entry.header_offset
    name_length = int.from_bytes(data[header + 26:header + 28], "little")
    extra_length = int.from_bytes(data[header + 28:header + 30], "little")
    start = header + 30 + name_length + extra_length
    data[start + entry.file_size // 2] ^= 0x10
    target.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, fragment", [
    ("empty", "is empty (0 bytes)"),
    ("cut_10", "is truncated"),
    ("cut_35", "is truncated"),
    ("cut_90", "is truncated"),
    ("text", "not a PyTorch checkpoint but a text file"),
    ("no_model", "lacks ['model']"),
    ("flipped_bit", "is damaged: its tensors do not match the sha256 checksum"),
    ("folder", "is a folder without a model.pth"),
])
def test_a_damaged_checkpoint_is_one_paragraph_that_names_the_file(tmp_path, trained, capsys,
                                                                   damage, fragment):
    path = tmp_path / "damaged.pt"
    content = trained.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage.startswith("cut_"):
        path.write_bytes(content[:len(content) * int(damage[4:]) // 100])
    elif damage == "text":
        path.write_text("epoch,accuracy\n1,0.5\n")
    elif damage == "no_model":
        saved = checkpoints.read(trained)
        del saved["model"]
        torch.save(saved, path)
    elif damage == "flipped_bit":
        _flip_one_weight_bit(trained, path)
        assert torch.load(path, weights_only=True)["model"] == "z2sa"  # torch itself sees nothing
    else:
        path.mkdir()
    status, message = _test_with(tmp_path, path, capsys)
    assert status == 2 and "Traceback" not in message
    assert str(path) in message and fragment in message, message
    assert len(message.strip().splitlines()) == 1
    with pytest.raises(CheckpointError, match="damaged|empty|truncated|text file|lacks|folder"):
        main.load_model(path)


def test_released_checkpoints_are_recognised_by_their_sha256(tmp_path, caplog):
    folder = "model_p4cnn_optim_adam_lr_0.001_wd_0.0001_seed_0"
    original = REFERENCE_DIR / "att_gconvs_pretrained" / folder / "model.pth"
    assert released.file_sha256(original) in released.RELEASED
    copy = tmp_path / folder / "model.pth"
    copy.parent.mkdir()
    shutil.copy(original, copy)
    with caplog.at_level(logging.INFO):
        main.load_model(copy, model="p4cnn", dataset="rotMNIST")
    assert "released p4cnn checkpoint (rotMNIST, sha256 verified)" in caplog.text
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="the copy is damaged or was changed"):
        main.load_model(copy, model="p4cnn", dataset="rotMNIST")


def test_checkpoints_follow_the_umask(tmp_path, trained):
    assert trained.stat().st_mode & 0o777 == 0o666 & ~files.umask()
    metrics = trained.with_name(trained.stem + ".metrics.csv")
    assert metrics.stat().st_mode & 0o777 == 0o666 & ~files.umask()


# ----- configuration ----------------------------------------------------------------------------
@pytest.mark.parametrize("field, value, fragment", [
    ("lr", float("nan"), "config.lr must be a finite number, got nan"),
    ("lr", float("inf"), "config.lr must be a finite number, got inf"),
    ("whitening_scale", -1.0, "config.whitening_scale must be positive"),
    ("sched_decay_steps", ("abc",), "config.sched_decay_steps must be increasing positive"),
    ("sched_decay_steps", (5, 2), "config.sched_decay_steps must be increasing positive"),
    ("patch_size", 0, "Local attention needs an odd config.patch_size of at least 3"),
    ("comment", "x/../../../escaped", "use only letters, digits"),
    ("dropout_att", 1.0, "config.dropout_att must lie in [0.0, 1.0)"),
    ("checkpoint_every", "often", "is neither a number of steps"),
    ("max_nonfinite_steps", 0, "config.max_nonfinite_steps must be at least 1"),
])
def test_bad_values_are_rejected_before_any_work(tmp_path, capsys, field, value, fragment):
    config = make_config(tmp_path, **TINY)
    config[field] = value
    assert main.run_cli(config) == 2
    message = capsys.readouterr().err
    assert fragment in message and "Traceback" not in message, message
    assert not (tmp_path / "saved").exists()


def test_a_folder_as_path_is_rejected_before_training(tmp_path, capsys):
    config = make_config(tmp_path, **TINY, path=str(tmp_path))
    assert main.run_cli(config) == 2
    assert "is a folder; it must name the checkpoint file" in capsys.readouterr().err


def test_an_unknown_field_is_one_line_with_a_suggestion():
    result = subprocess.run([sys.executable, "main.py", "--config.lrr=0.1"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "Error (ConfigError): Unknown field 'lrr'; did you mean 'lr'? The fields are listed by "
        "`python main.py --help` (and in config.py).")


def test_help_lists_every_field_with_its_default_and_meaning():
    result = subprocess.run([sys.executable, "main.py", "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    text = " ".join(result.stdout.split())  # absl's usage text, whatever its line breaks
    for name, value in config_file.get_config().items():
        shown = f"(the model's default, else {FALLBACKS[name]!r})" if value is None else repr(value)
        assert f"--config.{name}={shown}" in text, name
    assert "--config.checkpoint_every='10min' Write a resumable checkpoint every N" in text
    assert "Run control:" in text


def test_the_console_command_runs_main_from_a_users_folder(tmp_path):
    # `g-selfatt-train` (installed by `make setup`) from a folder with its own config.py and models/.
    command = pathlib.Path(sys.executable).with_name("g-selfatt-train")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("raise ImportError('the user models package')\n")
    (tmp_path / "config.py").write_text("raise ImportError('the user config')\n")
    help_text = subprocess.run([str(command), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    main_help = subprocess.run([sys.executable, "main.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=120)
    assert help_text.returncode == main_help.returncode  # absl exits 1 after --help
    # The checkout the command runs (this one after `make setup` here), as its installation says.
    command_checkout = subprocess.run([sys.executable, "-c", "import g_selfatt_cli; print(g_selfatt_cli.CHECKOUT)"],
                                      cwd=tmp_path, capture_output=True, text=True, timeout=60).stdout.strip()

    def fields(text: str, checkout) -> str:
        return text.split("--config:", 1)[1].replace(str(checkout), "<checkout>")

    assert fields(help_text.stdout, command_checkout) == fields(main_help.stdout, REPO_ROOT)

    run = subprocess.run([str(command), "--config.dataset=rotDigits", "--config.model=z2sa", "--config.max_examples=4",
                          "--config.epochs=1", "--config.rotation_angles=0", "--config.device=cpu",
                          f"--config.save_dir={tmp_path / 'saved'}", f"--config.data_root={tmp_path / 'data'}",
                          f"--log_dir={tmp_path / 'logs'}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr
    (run_log,) = (tmp_path / "saved").glob("rotDigits_model_z2sa_*.log")  # the run's own, next to its checkpoint
    assert "Test accuracy" in run_log.read_text() and "Test accuracy" in run.stderr
    absl_logs = [path for path in (tmp_path / "logs").iterdir() if path.is_file() and not path.is_symlink()]
    assert any("Test accuracy" in path.read_text() for path in absl_logs)  # --log_dir is honoured


def test_run_experiment_runs_main_with_the_original_configurations_values(tmp_path):
    # g_selfatt's entry point and config defaults: device "" (the CPU), multistep with factor 1.0.
    run = subprocess.run([sys.executable, "run_experiment.py", "--config.device=", "--config.dataset=rotDigits",
                          "--config.model=z2sa", "--config.max_examples=4", "--config.epochs=1",
                          "--config.rotation_angles=0", "--config.scheduler=multistep",
                          "--config.sched_decay_factor=1.0", f"--config.save_dir={tmp_path / 'saved'}"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr
    assert "config.device='' (the original configuration's value) means 'cpu' here." in run.stderr
    (saved,) = [path for path in (tmp_path / "saved").glob("rotDigits_model_z2sa_*_sched_multistep_*.pt")
                if not path.name.endswith(".last.pt")]
    assert checkpoints.read(saved)["config"]["device"] == "cpu"


# ----- data records -----------------------------------------------------------------------------
def _pcam_config(tmp_path):
    return make_config(tmp_path, dataset="PCam", model="densenet", max_examples=4)


def test_a_label_out_of_range_is_reported_with_its_file_before_training(tmp_path, capsys):
    fixture = fixture_data.make_pcam_hdf5(tmp_path / "data")
    with h5py.File(fixture.paths["train_y"], "r+") as handle:
        handle["y"][1, 0, 0, 0] = 7
    assert main.run_cli(_pcam_config(tmp_path)) == 2
    message = capsys.readouterr().err
    assert "1 label(s) outside 0..1 (row 1: 7)" in message and str(fixture.paths["train_y"]) in message
    assert not list((tmp_path / "saved").glob("*.pt"))


@pytest.mark.parametrize("damage, fragment", [("unreadable", "cannot be decoded"),
                                              ("small", "64x64 pixels, expected 96x96")])
def test_a_bad_image_file_is_reported_before_training(tmp_path, capsys, damage, fragment):
    fixture = fixture_data.make_pcam_imagefolder(tmp_path / "data")
    bad = fixture.paths["valid/1"]
    if damage == "unreadable":
        bad.write_bytes(bad.read_bytes()[:200])
    else:
        Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(bad)
    assert main.run_cli(_pcam_config(tmp_path)) == 2
    message = capsys.readouterr().err
    assert str(bad) in message and fragment in message and "Traceback" not in message
    assert pcam.FOLDER in message


# ----- divergence -------------------------------------------------------------------------------
def test_a_diverging_run_stops_with_an_error_and_saves_no_best_model(tmp_path):
    # 64 digits in batches of 32: two whole epochs (4 steps) end before the fifth non-finite step,
    # so the resumable checkpoint of the last one exists (and holds the finite weights).
    result = subprocess.run(
        [sys.executable, "main.py", "--config.optimizer=SGD", "--config.lr=1e8", "--config.batch_size=32",
         "--config.max_examples=64", "--config.rotation_angles=0", "--config.device=cpu",
         "--config.num_threads=1", f"--config.save_dir={tmp_path}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "Training diverged" in line]
    assert "not finite in 5 consecutive steps" in line and "--config.lr, now 1e+08" in line
    assert [path.name.endswith(".last.pt") for path in tmp_path.glob("*.pt")] == [True]
    saved = checkpoints.read(next(tmp_path.glob("*.last.pt")))
    assert all(bool(torch.isfinite(value).all()) for value in saved["state_dict"].values()
               if value.is_floating_point())


# ----- full and read-only folders -----------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A real 64 KiB filesystem (tmpfs), where the system lets the tests mount one."""
    import subprocess

    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (needs root); the full-disk path is covered by the simulated test")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_a_full_disk_is_one_paragraph_and_leaves_no_partial_file(tmp_path, small_disk, capsys):
    code = main.run_cli(make_config(tmp_path, **TINY, save_dir=str(small_disk)))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "Error (StorageError): Could not write" in err and "No space left on device" in err
    assert "--config.save_dir=DIR" in err
    assert not [path for path in small_disk.iterdir() if path.name.endswith(".tmp")]  # no partial file left


def test_a_write_error_of_torch_save_is_a_storage_error(tmp_path, monkeypatch):
    import errno

    from runner import files
    from runner.errors import StorageError

    target = tmp_path / "state.pt"
    target.write_bytes(b"old")

    def failing(handle):
        handle.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    with pytest.raises(StorageError, match="Could not write .*state.pt .*unexpected pos"):
        files.atomic_write(target, failing)
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]

    def disk_full(handle):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageError, match="No space left on device"):
        files.atomic_write(target, disk_full)
    with pytest.raises(ValueError):  # a bug in the writer stays a bug
        files.atomic_write(target, lambda handle: int("x"))


def test_a_read_only_save_folder_is_one_paragraph(tmp_path, small_disk, capsys):
    import subprocess

    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    code = main.run_cli(make_config(tmp_path, **TINY, save_dir=str(small_disk)))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "is not writable" in err and "--config.save_dir" in err


def test_a_killed_data_loader_worker_is_one_paragraph(tmp_path, monkeypatch, capsys):
    import signal as signals

    from datasets.base import TensorImageDataset

    original = TensorImageDataset.__getitem__

    def dies_in_a_worker(self, index):
        if torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signals.SIGKILL)  # what the out-of-memory killer does
        return original(self, index)

    monkeypatch.setattr(TensorImageDataset, "__getitem__", dies_in_a_worker)
    code = main.run_cli(make_config(tmp_path, **TINY, num_workers=1))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "a data loader worker process was killed" in err and "--config.num_workers" in err
    assert "--config.resume=True" in err


def test_a_log_file_that_cannot_be_written_warns_once(tmp_path, capsys):
    import logging as python_logging

    from absl import logging
    from runner.reporting import log_file

    with log_file(tmp_path / "run") as path:
        handler = next(h for h in logging.get_absl_logger().handlers if getattr(h, "baseFilename", "") == str(path))
        class FullDisk:
            def write(self, text):
                raise OSError(28, "No space left on device")

            flush = close = lambda self: None

        handler.stream.close()
        handler.stream = FullDisk()  # every later write fails, as on a full disk
        for _ in range(3):
            logging.info("a line")
    err = capsys.readouterr().err
    assert err.count("could not write the run's log file") == 1 and "Traceback" not in err
    assert python_logging.raiseExceptions  # nothing process-wide was changed
