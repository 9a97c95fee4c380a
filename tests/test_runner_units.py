"""Unit tests of the runner: configuration, checkpoints, schedules, sampler, trainer, tester."""

from __future__ import annotations

import csv
import math
import os
import pathlib
import sys
import time

import pytest
import torch
from ml_collections import config_dict
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import config as config_file
import g_selfatt_models as models
import g_selfatt_models.attgconv_zoo  # noqa: F401  (registers the attentive G-CNNs)
import tester
import trainer
from g_selfatt_models.registry import DataSpec
from g_selfatt_models import checkpoints
from runner import distributed, files, paths
from runner.data import Loaders, ShardSampler
from runner.defaults import FALLBACKS, placeholder_fields, resolve_config
from g_selfatt_models.checkpoints import CheckpointError
from runner.errors import ConfigError, TrainingDiverged
from runner import reporting
from runner.reporting import MetricLogger
from runner.schedulers import build_schedule, warmup_cosine_factor

ORIGINAL_KEYS = (
    "dataset model optimizer optimizer_momentum device scheduler sched_decay_steps "
    "sched_decay_factor lr norm_type attention_type activation_function patch_size dropout_att "
    "dropout_values whitening_scale weight_decay batch_size epochs seed comment pretrained train "
    "augment path"
).split()


def resolved(**overrides) -> config_dict.ConfigDict:
    """The default config with ``overrides``, unset fields from the fallbacks only."""
    config = config_file.get_config()
    for key, value in overrides.items():
        config[key] = value
    resolve_config(config, {})
    return config


# ----- configuration ---------------------------------------------------------------------
def test_config_has_every_key_of_the_original_runner():
    config = config_file.get_config()
    missing = [key for key in ORIGINAL_KEYS if key not in config]
    assert not missing


def test_every_config_field_has_a_comment():
    lines = pathlib.Path(config_file.__file__).read_text().splitlines()
    assigned = [(number, line.split("=", 1)[0].strip()[len("config."):])
                for number, line in enumerate(lines)
                if line.strip().startswith("config.") and "=" in line.split("(", 1)[0]]
    assert {name for _, name in assigned} == set(config_file.get_config().keys())
    uncommented = [name for number, name in assigned
                   if not lines[number - 1].strip().startswith("#")]
    assert not uncommented


def test_config_is_locked_against_typos():
    config = config_file.get_config()
    with pytest.raises(AttributeError, match="lrr"):
        config.lrr = 0.1


def test_every_placeholder_has_a_fallback():
    assert placeholder_fields() == set(FALLBACKS)


def test_flag_beats_model_default_beats_fallback():
    config = config_file.get_config()
    config.lr = 0.5
    origins = resolve_config(config, {"lr": 0.1, "batch_size": 7})
    assert (config.lr, config.batch_size, config.epochs) == (0.5, 7, FALLBACKS["epochs"])
    assert origins["batch_size"] == "model" and origins["epochs"] == "fallback"
    assert "lr" not in origins


def test_model_defaults_may_only_set_placeholders():
    with pytest.raises(ValueError, match="seed"):
        resolve_config(config_file.get_config(), {"seed": 3})


@pytest.mark.parametrize("name", models.list_models())
def test_registered_defaults_resolve(name):
    for architecture, defaults in models.get_model_spec(name).defaults.items():
        config = config_file.get_config()
        resolve_config(config, defaults)
        assert config.batch_size >= 1, architecture


@pytest.mark.parametrize("field,value", [("optimizer", "Adamw"), ("scheduler", "cosine"),
                                         ("amp", "fp8"), ("validation", "train")])
def test_bad_choice_is_a_config_error_naming_the_valid_ones(field, value):
    config = config_file.get_config()
    config[field] = value
    with pytest.raises(ConfigError, match=value) as error:
        resolve_config(config, {})
    assert f"--config.{field}" in str(error.value)


def test_checkpoint_name_follows_the_original_scheme():
    config = resolved(dataset="rotMNIST", model="p4sa", patch_size=9, dropout_att=0.1,
                      dropout_values=0.1, lr=0.001, batch_size=8, epochs=300)
    assert paths.checkpoint_stem(config, "gsa") == (
        "rotMNIST_model_p4sa_type_Local_patch_9_dpatt_0.1_dpval_0.1_activ_Swish_norm_LayerNorm"
        "_white_1.41421356_optim_Adam_lr_0.001_bs_8_ep_300_wd_0.0001_seed_0_sched_constant")
    config.validation = "test"
    config.scheduler = "multistep"
    config.sched_decay_steps = (10, 20)
    assert paths.checkpoint_stem(config, "cnn").endswith(
        "_sched_multistep_schdec_2.0_schsteps_(10, 20)_select_test")


def test_original_architecture_names_and_identifies_a_run_only_when_set():
    config = resolved(dataset="CIFAR10", model="att_p4_allcnnc")
    before = paths.run_identity(config, "attgconv")
    assert "original_architecture" not in before  # the names of runs made before it existed stay valid
    config.original_architecture = True
    assert paths.run_identity(config, "attgconv") == {**before, "original_architecture": True}
    assert "_arch_original" in paths.checkpoint_stem(config, "attgconv")
    assert paths.run_name(config, "attgconv") != paths.run_name(resolved(dataset="CIFAR10", model="att_p4_allcnnc"),
                                                                  "attgconv")


def test_original_architecture_of_a_gsa_net_names_the_group_axis_index(tmp_path):
    import main

    config = resolved(dataset="rotMNIST", model="p4sa", original_architecture=True, data_root=str(tmp_path))
    with pytest.raises(ConfigError, match="group_axis_index=original"):
        main.model_spec(config, "rotMNIST")


def test_layout_fields_name_and_identify_a_gsa_run_only_when_set():
    config = resolved(dataset="rotMNIST5k", model="p4sa")
    before = paths.run_identity(config, "gsa")
    assert not {"num_channels", "num_heads", "block_sizes"} & set(before)  # older names stay valid
    config.num_heads, config.block_sizes = 4, (0, 1, 2)
    assert paths.run_identity(config, "gsa") == {**before, "num_heads": 4, "block_sizes": [0, 1, 2]}
    assert "_white_1.41421356_heads_4_blocks_0-1-2_optim_" in paths.checkpoint_stem(config, "gsa")
    assert "num_heads" not in paths.run_identity(config, "cnn")
    same = resolved(dataset="rotMNIST5k", model="p4sa", num_channels=16, num_heads=2)  # the layout's own values
    assert paths.run_name(same, "gsa") == paths.run_name(resolved(dataset="rotMNIST5k", model="p4sa"), "gsa")


def test_layout_fields_change_the_network_and_bad_ones_say_how_to_fix_them():
    network = models.create_model("p4sa", dataset="rotMNIST5k", num_channels=8, num_heads=3, block_sizes=(0, 2, 1))
    lifting = network.lifting_self_attention
    assert (lifting.num_heads, lifting.mid_channels, lifting.out_channels) == (3, 4, 8)
    assert sum(type(m).__name__ == "TransformerBlock" for m in network.modules()) == 3
    default = models.create_model("p4sa", dataset="rotMNIST5k")
    assert (default.lifting_self_attention.num_heads, default.num_channels) == (3, 24)  # the model's defaults
    unset = models.create_model("p4sa", dataset="rotMNIST5k", num_channels=None, num_heads=None)
    assert (unset.lifting_self_attention.num_heads, unset.num_channels) == (2, 16)  # the dataset's layout
    with pytest.raises(ValueError, match="give 3 block counts"):
        models.create_model("p4sa", dataset="rotMNIST5k", block_sizes=(1, 1))
    with pytest.raises(ValueError, match="num_heads"):
        models.create_model("p4cnn", dataset="rotMNIST5k", num_heads=4)
    for field, value, fragment in (("num_channels", 6, "multiple of 4"), ("num_heads", 0, "at least 1"),
                                   ("block_sizes", (1, -1), "block counts")):
        with pytest.raises(ConfigError, match=fragment):
            resolved(**{field: value})


# ----- checkpoints -----------------------------------------------------------------------
def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "run.pt"
    files.save_checkpoint({"a": torch.ones(2)}, target)

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        files.save_checkpoint({"a": torch.zeros(2)}, target)
    monkeypatch.undo()
    assert torch.equal(checkpoints.read(target)["a"], torch.ones(2))
    assert os.listdir(tmp_path) == ["run.pt"]


def test_wrapper_prefixes_are_stripped():
    stripped = checkpoints.strip_wrapper_prefixes({"module.a.b": 1, "module._orig_mod.c": 2, "d": 3})
    assert stripped == {"a.b": 1, "c": 2, "d": 3}


def test_strict_load_lists_missing_unexpected_and_shape_mismatches():
    model = nn.Linear(3, 2)
    bad = {"weight": torch.zeros(2, 4), "extra": torch.zeros(1)}
    with pytest.raises(CheckpointError) as error:
        checkpoints.load_strict(model, bad, pathlib.Path("x.pt"))
    message = str(error.value)
    assert "Missing keys (1): bias" in message and "Unexpected keys (1): extra" in message
    assert "weight: checkpoint (2, 4) vs model (2, 3)" in message


def test_original_state_dict_goes_through_the_converter():
    raw = {"module.old_weight": torch.ones(1)}
    weights = checkpoints.weights_from(
        raw, model_name="m", architecture="a", source=pathlib.Path("x"),
        convert=lambda sd: {k.replace("old_", ""): v for k, v in sd.items()})
    assert list(weights) == ["weight"]


def test_project_checkpoint_of_another_model_is_refused():
    saved = checkpoints.make_checkpoint(model_name="z2sa", architecture="rotDigits", config={},
                                       state_dict={})
    with pytest.raises(CheckpointError, match="'z2sa' for the rotDigits"):
        checkpoints.weights_from(saved, model_name="p4sa", architecture="rotDigits", convert=None,
                                source=pathlib.Path("x"))


def test_unreadable_checkpoint_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="Cannot read"):
        checkpoints.read(path)


# ----- schedules -------------------------------------------------------------------------
def _lrs(config, steps_per_epoch, epochs, metrics=None):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=config.lr)
    schedule = build_schedule(optimizer, config, steps_per_epoch)
    history = []
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            optimizer.step()
            schedule.after_step()
        schedule.after_epoch(metrics[epoch] if metrics else 0.5)
        history.append(optimizer.param_groups[0]["lr"])
    return history


def test_warmup_cosine_factor():
    factor = warmup_cosine_factor(warmup_steps=10, total_steps=30)
    assert factor(0) == 0 and factor(5) == 0.5 and factor(10) == 1.0
    assert factor(20) == pytest.approx(0.5) and factor(30) == pytest.approx(0.0)


def test_multistep_divides_by_the_decay_factor():
    config = resolved(scheduler="multistep", sched_decay_steps=(2, 3), sched_decay_factor=10.0,
                      lr=1.0)
    assert _lrs(config, 2, 4) == pytest.approx([1.0, 0.1, 0.01, 0.01])


def test_the_original_configurations_values_keep_their_meaning():
    # g_selfatt's config.py: device "" ran on the CPU; multistep with its default factor 1.0 kept the lr.
    assert resolved(device="").device == "cpu"
    config = resolved(scheduler="multistep", sched_decay_steps=(2,), sched_decay_factor=1.0, lr=1.0)
    assert _lrs(config, 2, 4) == pytest.approx([1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ConfigError, match="at least 1"):
        resolved(scheduler="multistep", sched_decay_factor=0.5)


def test_plateau_halves_after_patience():
    config = resolved(scheduler="plateau", sched_patience=1, lr=1.0)
    assert _lrs(config, 1, 4, metrics=[0.5, 0.5, 0.5, 0.9]) == pytest.approx([1, 1, 0.5, 0.5])


def test_linear_warmup_cosine_is_per_step():
    config = resolved(scheduler="linear_warmup_cosine", warmup_epochs=1.0, epochs=3, lr=1.0)
    assert _lrs(config, 2, 3) == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)


# ----- signals ---------------------------------------------------------------------------
def test_the_configured_signals_stop_a_run_and_others_are_refused():
    import signal

    from runner.signals import StopRequest, parse_stop_signals

    assert parse_stop_signals(config_file.get_config().stop_signals) == (signal.SIGUSR1, signal.SIGHUP)
    assert parse_stop_signals(" sighup ,") == (signal.SIGHUP,) and parse_stop_signals("") == ()
    previous = signal.getsignal(signal.SIGHUP)
    with StopRequest(parse_stop_signals("SIGHUP")) as request:
        os.kill(os.getpid(), signal.SIGHUP)
        assert request.signal_number == signal.SIGHUP
    assert signal.getsignal(signal.SIGHUP) is previous
    with pytest.raises(ConfigError, match=r"config.stop_signals='SIGKILL'.*some of \['SIGHUP', 'SIGUSR1'\]"):
        resolved(stop_signals="SIGKILL")


# ----- sampler ---------------------------------------------------------------------------
def test_shards_cover_the_data_and_resume_mid_epoch():
    shards = [ShardSampler(10, shuffle=True, seed=3, rank=r, world_size=3) for r in range(3)]
    for sampler in shards:
        sampler.set_epoch(1)
    indices = [list(sampler) for sampler in shards]
    assert {len(i) for i in indices} == {4}
    assert set(sum(indices, [])) == set(range(10))
    resumed = ShardSampler(10, shuffle=True, seed=3, rank=0, world_size=3)
    resumed.set_epoch(1, start=2)
    assert list(resumed) == indices[0][2:] and len(resumed) == 2
    shards[0].set_epoch(2)
    assert list(shards[0]) != indices[0]


# ----- trainer ---------------------------------------------------------------------------
class Tiny(nn.Module):
    """A linear classifier whose output can be made NaN."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.poison = False

    def forward(self, x):
        out = self.linear(x.flatten(1))
        return out * math.nan if self.poison else out


def _trainer(tmp_path, **overrides) -> trainer.Trainer:
    config = resolved(batch_size=2, epochs=1, rotation_angles=0, **overrides)
    data = TensorDataset(torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]))
    loader = DataLoader(data, batch_size=2, sampler=ShardSampler(4, shuffle=True))
    loaders = Loaders(loader, loader, loader, DataSpec("toy", 1, 2, 2, "toy"),
                      lambda x: x.float(), None)
    context = distributed.Context(torch.device("cpu"))
    return trainer.Trainer(Tiny(), loaders, config, context, tmp_path / "toy.pt",
                           MetricLogger(config), "cnn")


def test_non_finite_gradients_skip_the_step(tmp_path):
    run = _trainer(tmp_path)
    run.model.poison = True
    before = [p.clone() for p in run.model.parameters()]
    run.fit()
    assert run.state.skipped_steps == 2 and run.state.step == 2
    assert all(torch.equal(a, b) for a, b in zip(before, run.model.parameters()))


class TinyWithStatistics(Tiny):
    """Tiny behind a BatchNorm, whose running statistics a forward pass in training mode updates."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(4)

    def forward(self, x):
        return super().forward(self.norm(x.flatten(1)))


def test_a_skipped_step_leaves_the_batchnorm_statistics_alone(tmp_path):
    run = _trainer(tmp_path)
    run.model = TinyWithStatistics()
    run.optimizer = trainer.build_optimizer(run.model, run.config)
    run.model.poison = True
    before = {name: buffer.clone() for name, buffer in run.model.named_buffers()}
    run.fit()
    assert run.state.skipped_steps == 2
    assert all(torch.equal(before[name], buffer) for name, buffer in run.model.named_buffers())
    run.model.poison, run.config.epochs = False, 2
    run.fit()  # a finite step does update them
    assert not torch.equal(before["norm.running_mean"], run.model.norm.running_mean)


def test_consecutive_non_finite_steps_stop_the_run(tmp_path):
    run = _trainer(tmp_path, max_nonfinite_steps=2)
    run.config.epochs = 3
    run.model.poison = True
    with pytest.raises(TrainingDiverged, match="not finite in 2 consecutive steps \\(1 to 2"):
        run.fit()
    assert not (tmp_path / "toy.pt").exists()


def test_fp16_scaler_overflows_do_not_count_as_divergence(tmp_path, monkeypatch):
    run = _trainer(tmp_path, amp="fp16", max_nonfinite_steps=1)
    monkeypatch.setattr(nn.utils, "clip_grad_norm_", lambda *args: torch.tensor(math.inf))
    state = run.fit()  # every step overflows; the scaler lowers its scale, nothing diverges
    assert state.skipped_steps == 2 and state.nonfinite_streak == 0


@pytest.mark.parametrize("amp", ["none", "fp16", "bf16"])
@pytest.mark.parametrize("scheduler", ["constant", "linear_warmup_cosine", "multistep", "plateau"])
def test_every_precision_with_every_schedule_trains(tmp_path, amp, scheduler):
    run = _trainer(tmp_path, amp=amp, scheduler=scheduler)
    before = [p.clone() for p in run.model.parameters()]
    state = run.fit()
    assert state.epoch == 1 and state.skipped_steps == 0
    assert not all(torch.equal(a, b) for a, b in zip(before, run.model.parameters()))
    saved = checkpoints.read(tmp_path / "toy.last.pt")
    assert saved["config"]["amp"] == amp and saved["epoch"] == 1 and saved["optimizer"]["state"]


def _interrupt_at_write(tmp_path, monkeypatch, failing_write):
    """Trains two epochs, killing the run (KeyboardInterrupt) at checkpoint write ``failing_write``.

    Returns:
        The number of writes of the run.
    """
    writes = []

    def save_or_die(payload, path):
        writes.append(path)
        if len(writes) == failing_write:
            raise KeyboardInterrupt
        save_checkpoint(payload, path)

    save_checkpoint = files.save_checkpoint
    monkeypatch.setattr(files, "save_checkpoint", save_or_die)
    run = _trainer(tmp_path, lr=0.5)
    run.config.epochs = 2
    try:
        run.fit()
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(files, "save_checkpoint", save_checkpoint)
    return len(writes)


def test_a_run_killed_between_two_writes_never_trusts_an_unsaved_best_model(tmp_path,
                                                                            monkeypatch):
    total = _interrupt_at_write(tmp_path / "complete", monkeypatch, failing_write=0)
    assert total >= 3  # the first epoch always writes best and last
    for failing_write in range(1, total + 1):
        folder = tmp_path / f"killed_at_{failing_write}"
        _interrupt_at_write(folder, monkeypatch, failing_write)
        if not (folder / "toy.last.pt").exists():
            continue
        last = checkpoints.read(folder / "toy.last.pt")
        best = checkpoints.read(folder / "toy.pt")  # resume ends by loading it
        assert best["best_metric"] >= last["best_metric"], failing_write


# ----- tester ----------------------------------------------------------------------------
def test_classification_metrics():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [3.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 1])
    result = tester.classification_metrics(tester.Predictions(logits, labels), 2)
    assert result["accuracy"] == 0.5
    assert result["per_class_accuracy"] == [1.0, pytest.approx(1 / 3)]
    assert result["confusion_matrix"] == [[1, 0], [2, 1]]
    assert result["roc_auc"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", range(3))
def test_metrics_agree_with_a_pair_count_and_scikit_learn(seed):
    """ROC-AUC against counting every positive/negative pair (ties one half) and scikit-learn; the
    confusion matrix against scikit-learn. Scores are drawn from few values, so ties are common."""
    from sklearn import metrics as sk_metrics

    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (60,), generator=generator)
    logits = torch.randint(-2, 3, (60, 2), generator=generator).float()
    result = tester.classification_metrics(tester.Predictions(logits, labels), 2)
    scores = logits.double().softmax(dim=1)[:, 1]
    positive, negative = scores[labels == 1], scores[labels == 0]
    difference = positive[:, None] - negative[None, :]
    pairs = ((difference > 0).double() + 0.5 * (difference == 0).double()).mean().item()
    assert result["roc_auc"] == pytest.approx(pairs, rel=1e-12)
    assert result["roc_auc"] == pytest.approx(sk_metrics.roc_auc_score(labels.numpy(), scores.numpy()), rel=1e-12)
    three = torch.randint(0, 3, (50,), generator=generator)
    predicted = torch.randn(50, 3, generator=generator)
    expected = sk_metrics.confusion_matrix(three.numpy(), predicted.argmax(1).numpy(), labels=range(3))
    assert tester.classification_metrics(tester.Predictions(predicted, three), 3)["confusion_matrix"] == expected.tolist()
    assert tester.binary_roc_auc(tester.Predictions(logits, torch.ones(60, dtype=torch.long))) is None


def test_rotation_reports_are_written(tmp_path):
    curve = [{"angle_deg": a, "accuracy": 0.5} for a in tester.rotation_angles(4)]
    written = tester.write_reports({"accuracy": 0.5, "rotation_curve": curve}, tmp_path / "r", "t")
    assert [p.name for p in written] == ["r.test.json", "r.rotation.csv", "r.rotation.png"]
    assert (tmp_path / "r.rotation.csv").read_text().splitlines()[1:3] == ["0.0,0.5", "90.0,0.5"]
    assert (tmp_path / "r.rotation.png").stat().st_size > 1000


def _rotated_digits(n: int = 12) -> "RotatedImageDataset":
    from datasets.base import RotatedImageDataset

    generator = torch.Generator().manual_seed(0)
    upright = (torch.rand(n, 1, 9, 9, generator=generator) * 255).to(torch.uint8)
    angles = torch.rand(n, generator=generator, dtype=torch.float64) * 360
    return RotatedImageDataset(upright, angles, torch.randint(0, 3, (n,), generator=generator))


class _PixelClassifier(nn.Module):
    """Class = the quantised brightness of three fixed pixels: sensitive to every interpolation."""

    def forward(self, images):
        return images[:, 0, [2, 4, 6], [3, 4, 5]] * 50


def test_rotated_image_dataset_rotates_each_source_once_by_its_angle_plus_the_test_angle():
    from datasets.base import rotate_sources
    from datasets.transforms import rotate_images

    data = _rotated_digits()
    part = data.subset(torch.tensor([5, 2]))
    row = rotate_images(data.upright[5:6], float(data.angles[5]) + 30.0).clamp(0, 1)
    torch.testing.assert_close(part.rotated_by(30.0).images[:1], row, rtol=0, atol=1e-6)
    torch.testing.assert_close(part.images, data.images[[5, 2]], rtol=0, atol=0)
    assert torch.equal(part.rotated_by(30.0).labels, data.labels[[5, 2]])
    twice = rotate_images(data.images, 30.0)  # what rotating the rotated image gives: not the same
    assert (twice - rotate_sources(data.upright, data.angles + 30.0)).abs().max() > 0.05


@pytest.mark.parametrize("wrap", ["plain", "subset"])
def test_rotation_curve_uses_the_sources_and_the_blur_curve_the_rotated_images(wrap):
    data = _rotated_digits()
    dataset = torch.utils.data.Subset(data, range(2, 10)) if wrap == "subset" else data
    loader = DataLoader(dataset, batch_size=5)
    model, device = _PixelClassifier(), torch.device("cpu")
    results = tester.test(model, loader, lambda x: x, device, amp="none", num_classes=3, num_angles=8, prefix=None)
    assert results["rotation_from"] == "upright sources"
    rows = slice(2, 10) if wrap == "subset" else slice(None)
    labels = data.labels[rows]

    def accuracy(images):
        return float((model(images).argmax(dim=1) == labels).float().mean())

    from datasets.base import rotate_sources
    from datasets.transforms import rotate_images

    for point in results["rotation_curve"]:
        expected = accuracy(rotate_sources(data.upright[rows], data.angles[rows] + point["angle_deg"]))
        assert point["accuracy"] == pytest.approx(expected)
    assert [point["angle_deg"] for point in results["blur_curve"]] == [45.0, 135.0, 225.0, 315.0]
    for point in results["blur_curve"]:
        assert point["accuracy"] == pytest.approx(accuracy(rotate_images(data.images[rows], point["angle_deg"])))
    once = {point["angle_deg"]: point["accuracy"] for point in results["rotation_curve"]}
    assert any(once[point["angle_deg"]] != pytest.approx(point["accuracy"]) for point in results["blur_curve"])
    plain = DataLoader(TensorDataset(data.images, data.labels), batch_size=5)
    other = tester.test(model, plain, lambda x: x, device, amp="none", num_classes=3, num_angles=4, prefix=None)
    assert other["rotation_from"] == "test images" and "blur_curve" not in other


def test_rotation_reports_put_the_blur_curve_beside_the_rotation_curve(tmp_path):
    curve = [{"angle_deg": a, "accuracy": 0.5} for a in tester.rotation_angles(8)]
    blur = [{"angle_deg": a, "accuracy": 0.25} for a in (45.0, 135.0, 225.0, 315.0)]
    tester.write_reports({"accuracy": 0.5, "rotation_curve": curve, "blur_curve": blur}, tmp_path / "r", "t")
    lines = (tmp_path / "r.rotation.csv").read_text().splitlines()
    assert lines[:3] == ["angle_deg,accuracy,blur_accuracy", "0.0,0.5,", "45.0,0.5,0.25"]


# ----- wandb -----------------------------------------------------------------------------
class FakeWandbRun:
    """Records what the logger sends."""

    def __init__(self):
        self.logged, self.summary, self.finished = [], {}, False

    def log(self, metrics, step=None):
        self.logged.append((step, metrics))

    def finish(self):
        self.finished = True


def test_wandb_is_used_only_when_asked_and_gets_no_credentials(monkeypatch):
    calls = []

    class FakeWandb:
        @staticmethod
        def init(**kwargs):
            calls.append(kwargs)
            return FakeWandbRun()

    monkeypatch.setitem(sys.modules, "wandb", FakeWandb)
    MetricLogger(resolved()).log({"loss": 1.0}, step=1)
    assert not calls
    logger = MetricLogger(resolved(wandb=True, path="saved/rotDigits_model_z2sa_x_1234abcd.pt"))
    logger.log({"loss": 1.0}, step=3)
    run = logger._run
    logger.close()
    assert set(calls[0]) == {"project", "group", "name", "config"}
    assert calls[0]["name"] == "rotDigits_model_z2sa_x_1234abcd"  # the checkpoint's stem
    assert run.logged == [(3, {"loss": 1.0})] and run.finished


def test_wandb_gets_the_confusion_matrix_and_the_rotation_plot(monkeypatch, tmp_path):
    class FakeWandb:
        Table = staticmethod(lambda columns, data: ("table", columns, data))
        Image = staticmethod(lambda path: ("image", path))
        init = staticmethod(lambda **kwargs: FakeWandbRun())

    monkeypatch.setitem(sys.modules, "wandb", FakeWandb)
    logger = MetricLogger(resolved(wandb=True, path=str(tmp_path / "r.pt")))
    (tmp_path / "r.rotation.png").write_bytes(b"png")
    logger.test_report({"confusion_matrix": [[3, 1], [0, 2]]}, tmp_path / "r.rotation.png")
    (figures,) = [metrics for _, metrics in logger._run.logged]
    assert figures["test/confusion_matrix"] == ("table", ["true", "predicted", "count"],
                                                [[0, 0, 3], [0, 1, 1], [1, 0, 0], [1, 1, 2]])
    assert figures["test/accuracy_vs_rotation"] == ("image", str(tmp_path / "r.rotation.png"))


def test_tensorboard_events_next_to_the_checkpoint_when_tensorboard_is_installed(monkeypatch, tmp_path):
    import types

    writers = []

    class FakeWriter:
        def __init__(self, log_dir):
            self.log_dir, self.scalars, self.closed = log_dir, [], False
            writers.append(self)

        def add_scalar(self, name, value, step):
            self.scalars.append((name, value, step))

        def flush(self):
            pass

        def close(self):
            self.closed = True

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    logger = MetricLogger(resolved(path=str(tmp_path / "run.pt")))
    logger.log({"train_loss": 0.5, "epoch": 1, "note": "text"}, step=7)
    logger.close()
    assert writers[0].log_dir == str(tmp_path / "run.tensorboard") and writers[0].closed
    assert writers[0].scalars == [("train_loss", 0.5, 7), ("epoch", 1, 7)]
    MetricLogger(resolved(path=str(tmp_path / "run.pt"), train=False)).close()  # testing only: no events
    assert len(writers) == 1


def test_metrics_csv_has_one_rounded_row_per_validation(tmp_path):
    run = _trainer(tmp_path)
    run.config.epochs = 2
    run.fit()
    rows = list(csv.DictReader(open(tmp_path / "toy.metrics.csv")))
    assert [float(row["epoch"]) for row in rows] == [1.0, 2.0]
    assert set(rows[0]) >= {"train_loss", "val_loss", "val_accuracy", "lr", "train_seconds"}
    assert all(float(row["train_seconds"]) > 0 for row in rows)
    for row in rows:  # at most 6 significant digits: rounding again changes nothing
        assert all(text == str(reporting.rounded(float(text))) for text in row.values())


def test_write_csv_rounds_floats_and_replaces_atomically(tmp_path):
    path = tmp_path / "rotation.csv"
    reporting.write_csv([{"angle_deg": 0.20999999344348907, "accuracy": 0.5}], path)
    reporting.write_csv([{"angle_deg": 45.0, "accuracy": 1 / 3}, {"angle_deg": 90.0}], path)
    assert path.read_text().splitlines() == ["angle_deg,accuracy", "45.0,0.333333", "90.0,"]
    assert reporting.rounded(0.20999999344348907) == 0.21
    assert [p.name for p in tmp_path.iterdir()] == ["rotation.csv"]


def test_load_strict_accepts_the_derived_buffers_of_older_files_and_checks_their_shape(tmp_path):
    model = models.create_model("p4sa", dataset="rotDigits")
    shape = model.lifting_self_attention.derived_buffer_shapes()["row_indices"]
    older = {**model.state_dict(), "lifting_self_attention.row_indices": torch.zeros(shape)}
    checkpoints.load_strict(models.create_model("p4sa", dataset="rotDigits"), older, tmp_path / "older.pt")
    wrong = dict(older, **{"lifting_self_attention.row_indices": torch.zeros(4, 3, 3)})
    with pytest.raises(checkpoints.CheckpointError, match=r"Shape mismatches \(1\): lifting_self_attention.row_indices"):
        checkpoints.load_strict(models.create_model("p4sa", dataset="rotDigits"), wrong, tmp_path / "wrong.pt")


# ----- lock --------------------------------------------------------------------------------------
def test_a_filesystem_without_flock_runs_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl
    import logging

    from runner.lock import RunLock

    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING), RunLock(tmp_path / "run.pt"):
        pass
    assert "does not support locks (No locks available)" in caplog.text and "start only one" in caplog.text


def test_a_lock_file_that_cannot_be_created_is_one_paragraph():
    from runner.lock import RunLock

    with pytest.raises(ConfigError, match=r"Cannot create the run's lock file .* writable folder"):
        RunLock(pathlib.Path("/proc/no-such-folder/run.pt")).acquire()


def test_the_resume_command_is_the_launch_command():
    import main

    argv = ["main.py", "--config.model=z2sa", "--config.overwrite=True"]
    assert main.resume_command(argv, {}) == "python main.py --config.model=z2sa --config.resume=True"
    two = {"TORCHELASTIC_RUN_ID": "x", "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2"}
    assert main.resume_command(argv, two) == ("torchrun --nproc_per_node=2 main.py --config.model=z2sa "
                                              "--config.resume=True")
    four = dict(two, WORLD_SIZE="4")
    assert main.resume_command(argv, four).startswith("torchrun --nproc_per_node=2 --nnodes=2 main.py ")


def test_resume_refuses_a_missing_best_checkpoint_and_another_number_of_processes(tmp_path):
    run = _trainer(tmp_path)
    run.fit()
    resumed = _trainer(tmp_path)
    resumed.context = distributed.Context(torch.device("cpu"), rank=0, world_size=2)
    with pytest.raises(CheckpointError, match=r"run of 1 process\(es\); this one has 2.*python main.py"):
        resumed.resume()
    (tmp_path / "toy.pt").unlink()
    with pytest.raises(CheckpointError, match="best checkpoint .*toy.pt \\(epoch 1\\) is missing"):
        _trainer(tmp_path).resume()


def test_a_signal_during_the_test_ends_the_run_with_the_command_that_tests_it():
    import main
    import signal

    from runner.errors import RunInterrupted
    from runner.signals import stop_at_once

    with pytest.raises(RunInterrupted) as stopped:
        with stop_at_once((signal.SIGUSR1,), lambda number: RunInterrupted("stopped", number, "x", resumable=False)):
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(1)  # the handler raises here
    assert stopped.value.signal_number == signal.SIGUSR1 and not stopped.value.resumable
    argv = ["main.py", "--config.model=z2sa", "--config.train=True", "--config.overwrite=True"]
    assert main.test_command(argv, {}) == "python main.py --config.model=z2sa --config.train=False --config.pretrained=True"


def test_a_signal_while_a_log_line_is_written_still_stops_the_test_phase():
    import io
    import logging
    import signal

    from runner.errors import RunInterrupted
    from runner.signals import stop_at_once

    class SignallingStream(io.StringIO):
        """A log stream that receives the signal while it writes (logging catches Exception there)."""

        def write(self, text):
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.5)  # the handler runs here, inside the logging handler's emit
            return super().write(text)

    log = logging.getLogger("stop_at_once_test")
    handler = logging.StreamHandler(SignallingStream())
    log.addHandler(handler)
    try:
        with pytest.raises(RunInterrupted) as stopped:
            with stop_at_once((signal.SIGUSR1,), lambda number: RunInterrupted("stopped", number, "x", resumable=False)):
                log.warning("testing")
                pytest.fail("the signal was swallowed by the logging handler")
    finally:
        log.removeHandler(handler)
    assert stopped.value.signal_number == signal.SIGUSR1


def test_the_process_group_gets_the_collective_timeout(monkeypatch):
    import datetime

    import torch.distributed as dist

    joined = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: joined.update(kwargs))
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    context = distributed.setup("cpu", timeout_minutes=1.5)
    assert joined == {"backend": "gloo", "timeout": datetime.timedelta(seconds=90)} and context.world_size == 2
    with pytest.raises(ConfigError, match="collective_timeout_minutes must be positive"):
        resolved(collective_timeout_minutes=0.0)


def test_a_collective_timeout_is_told_from_other_runtime_errors():
    import main

    gloo = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting "
            "5000ms for recv operation to complete")  # what a rank waiting for a hung one raised here
    assert main._is_collective_timeout(RuntimeError(gloo))
    assert not main._is_collective_timeout(RuntimeError("DataLoader timed out after 5 seconds"))
    assert main._is_killed_worker(RuntimeError("DataLoader worker (pid 12) is killed by signal: Killed. "))


def test_flag_values_read_back_as_the_same_values():
    import ast

    from runner.defaults import flag_value

    for value in [(0, 1, 2), (3,), 0.005, 24, "LayerNorm"]:
        text = flag_value(value)
        assert " " not in text
        assert (text if isinstance(value, str) else ast.literal_eval(text)) == value


@pytest.mark.parametrize("optimizer", ["Adam", "AdamW", "SGD"])
def test_the_optimizer_is_fused_on_the_cpu_and_updates_as_the_per_tensor_one(optimizer):
    config = config_dict.ConfigDict({"optimizer": optimizer, "lr": 1e-2, "optimizer_momentum": 0.9,
                                     "weight_decay": 1e-4})
    torch.manual_seed(0)
    fused_model, plain_model = Tiny(), Tiny()
    plain_model.load_state_dict(fused_model.state_dict())
    fused = trainer.build_optimizer(fused_model, config)
    assert all(group["fused"] for group in fused.param_groups)
    plain_class = getattr(torch.optim, optimizer)
    plain = plain_class(plain_model.parameters(), **{key: value for key, value in fused.defaults.items()
                                                      if key not in ("fused", "foreach", "decoupled_weight_decay")},
                       foreach=False)  # decoupled_weight_decay: AdamW's own setting, not an argument of it
    for _ in range(5):
        gradients = [torch.randn_like(p) for p in fused_model.parameters()]
        for model in (fused_model, plain_model):
            for p, g in zip(model.parameters(), gradients):
                p.grad = g.clone()
        fused.step()
        plain.step()
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        # Five updates, each a few float32 operations on values of the parameters' scale: at most 20
        # eps of round-off per update (a wrong update would differ by about lr = 1e-2).
        bound = 5 * 20 * torch.finfo(torch.float32).eps * max(1.0, b.abs().max().item())
        assert (a - b).abs().max().item() <= bound


def test_adamw_decays_the_weights_apart_from_the_gradient():
    """With zero gradients Adam's L2 term is normalised into a step of about lr, while AdamW shrinks
    each weight by the factor 1 - lr * weight_decay per step and nothing else."""
    lr, decay, steps = 1e-2, 0.5, 3
    torch.manual_seed(0)
    start = Tiny()
    updated = {}
    for optimizer in ("Adam", "AdamW"):
        model = Tiny()
        model.load_state_dict(start.state_dict())
        step = trainer.build_optimizer(model, config_dict.ConfigDict(
            {"optimizer": optimizer, "lr": lr, "optimizer_momentum": 0.0, "weight_decay": decay}))
        for _ in range(steps):
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
            step.step()
        updated[optimizer] = model
    for before, adam, adamw in zip(start.parameters(), updated["Adam"].parameters(), updated["AdamW"].parameters()):
        expected = before.detach().double() * (1 - lr * decay) ** steps
        bound = steps * 4 * torch.finfo(torch.float32).eps * before.abs().max().item()
        assert (adamw.detach().double() - expected).abs().max().item() <= bound
        moved = (adam - before).abs()[before.abs() > 0.1]  # L2 through Adam: a step of about lr each time
        assert moved.numel() and (moved > 0.5 * lr * steps).all()


def test_a_checkpoint_of_an_unfused_optimizer_resumes_unfused():
    config = config_dict.ConfigDict({"optimizer": "Adam", "lr": 1e-3, "optimizer_momentum": 0.9,
                                     "weight_decay": 0.0})
    model = Tiny()
    older = torch.optim.Adam(model.parameters(), lr=1e-3)  # as runs made before the fused optimizer
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    older.step()
    resumed = trainer.build_optimizer(model, config)
    resumed.load_state_dict(older.state_dict())
    assert not any(group["fused"] for group in resumed.param_groups)


@pytest.mark.parametrize("cpuinfo, expected", [
    ("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx avx2 fma\n\n"
     "processor\t: 1\nmodel name\t: AMD EPYC 7B13\n", "AMD EPYC 7B13 (AVX2)"),
    ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: avx2 avx512f avx512bw\n",
     "Intel(R) Xeon(R) Processor (AVX-512)"),
    ("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm\nModel\t\t: Some Board\n", "Some Board (NEON)"),
])
def test_the_machine_is_named_by_its_cpu_and_widest_vector_extension(tmp_path, monkeypatch, cpuinfo, expected):
    from runner import machine

    (tmp_path / "cpuinfo").write_text(cpuinfo)
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "cpuinfo")
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 2)
    assert machine.cpu() == f"{expected}, 2 logical CPUs"
    assert machine.describe(torch.device("cpu")) == machine.cpu()
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "absent")  # no /proc: still a description
    assert machine.cpu().endswith(", 2 logical CPUs")
