"""Training loop: optimizer, schedule, mixed precision, model selection and checkpoints.

One code path serves full precision and both mixed precisions: ``torch.autocast`` and
``torch.amp.GradScaler`` are always called and are simply disabled when ``config.amp="none"``
(the scaler is enabled only for fp16). Steps whose gradients are not finite are skipped and
counted; after ``config.max_nonfinite_steps`` consecutive steps with a non-finite loss or
gradient (other than the fp16 scaler's own overflow skips) the run stops with
:class:`~runner.errors.TrainingDiverged`. After every epoch the model is validated; the best
validation accuracy (ties broken by the lower loss) of a finite model selects the model that
is saved as the ``best`` checkpoint, and the whole training state is saved as the ``last``
checkpoint, from which ``config.resume=True`` goes on. ``last`` is also written every
``config.checkpoint_every`` steps or minutes, and when SIGTERM or SIGINT stops the run.

A checkpoint holds every random state (:mod:`runner.random_state`) and the position in the
epoch, so a resumed run repeats the uninterrupted one bit for bit on the CPU.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import signal
import sys
import time
from typing import Any, Dict, List, Optional

import torch
from absl import logging
from ml_collections import config_dict
from torch import nn
from tqdm import tqdm

import tester
from g_selfatt_models import checkpoints
from runner import distributed, files, machine, paths, random_state
from runner.data import Loaders
from runner.defaults import parse_checkpoint_every
from runner.precision import AMP_DTYPES
from g_selfatt_models.checkpoints import CheckpointError
from runner.errors import RunInterrupted, TrainingDiverged
from runner.paths import last_checkpoint_path
from runner.reporting import MetricLogger, write_csv
from runner.schedulers import LRSchedule, build_schedule
from runner.signals import StopRequest, parse_stop_signals


@dataclasses.dataclass
class TrainState:
    """Progress of a run, saved in every checkpoint.

    Attributes:
        epoch: complete epochs.
        batch_in_epoch: batches already trained in the current (incomplete) epoch.
        step: optimizer steps taken (skipped steps included).
        skipped_steps: steps skipped because the gradients were not finite.
        best_metric: best validation accuracy so far (-inf before the first validation).
        best_loss: validation loss of the best model.
        best_epoch: epoch of the best model (fractional for an interrupted epoch).
        history: one dict of metrics per validation.
        epoch_totals: loss sum, correct predictions and examples of the current epoch so far.
        nonfinite_streak: consecutive steps, up to now, whose loss or gradient was not finite.
        epoch_seconds: wall-clock seconds of the current epoch's steps so far, so that an epoch
            stopped and resumed reports the seconds of both of its parts.
        machines: the machines (:func:`runner.machine.describe`) this process trained the run on,
            in the order of their first part of it; seconds per epoch compare only on one.
    """

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    skipped_steps: int = 0
    best_metric: float = -math.inf
    best_loss: float = math.inf
    best_epoch: float = -1.0
    history: List[Dict[str, float]] = dataclasses.field(default_factory=list)
    epoch_totals: List[float] = dataclasses.field(default_factory=lambda: [0.0, 0.0, 0.0])
    nonfinite_streak: int = 0
    epoch_seconds: float = 0.0
    machines: List[str] = dataclasses.field(default_factory=list)


def build_optimizer(model: nn.Module, config: config_dict.ConfigDict) -> torch.optim.Optimizer:
    """SGD (with ``optimizer_momentum``), Adam or AdamW, with ``weight_decay``.

    SGD and Adam add ``weight_decay`` times the parameters to the gradient (an L2 penalty, which
    Adam then divides by its running scale); AdamW shrinks the parameters by ``lr * weight_decay``
    per step apart from the gradient's update (decoupled weight decay).

    Where torch has a fused implementation for the parameters' device (CPU and CUDA among them) it
    is used: the same update in one kernel over all parameters instead of a few small operations per
    parameter tensor (for rotMNIST5k's p4sa, 95 tensors: 1.4 instead of 10 ms per Adam step on one
    thread). A run resumed from a checkpoint keeps the implementation it was started with (the
    optimizer's state restores its settings).
    """
    fused = _fused_supported(model) or None
    if config.optimizer == "SGD":
        return torch.optim.SGD(model.parameters(), lr=config.lr,
                               momentum=config.optimizer_momentum,
                               weight_decay=config.weight_decay, fused=fused)
    adam_class = torch.optim.AdamW if config.optimizer == "AdamW" else torch.optim.Adam
    return adam_class(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def _fused_supported(model: nn.Module) -> bool:
    """Whether every parameter is a floating-point tensor on a device with torch's fused optimizers."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    devices = set(_get_fused_kernels_supported_devices())
    parameters = list(model.parameters())
    return bool(parameters) and all(p.is_floating_point() and p.device.type in devices for p in parameters)


def is_better(accuracy: float, loss: float, state: TrainState) -> bool:
    """The first validation, a higher accuracy, or the same accuracy with a loss no higher."""
    if state.best_epoch < 0 or accuracy > state.best_metric:
        return True
    return accuracy == state.best_metric and loss <= state.best_loss


class Trainer:
    """Trains one model on one dataset as described by the configuration.

    Args:
        model: the bare model, already on ``context.device``.
        loaders: the run's data.
        config: the resolved configuration.
        context: device and process group of this process.
        best_path: file of the ``best`` checkpoint; ``last`` goes next to it.
        logger: the metric logger of this process.
        family: the model's family in the registry (it selects the run identity's fields).
    """

    def __init__(self, model: nn.Module, loaders: Loaders, config: config_dict.ConfigDict,
                 context: distributed.Context, best_path: pathlib.Path, logger: MetricLogger,
                 family: str):
        self.model = model
        self.family = family
        self.loaders = loaders
        self.config = config
        self.context = context
        self.best_path = pathlib.Path(best_path)
        self.last_path = last_checkpoint_path(self.best_path)
        self.metrics_path = pathlib.Path(f"{paths.output_prefix(self.best_path)}.metrics.csv")
        self.logger = logger
        self.steps_per_epoch = len(loaders.train)
        self.optimizer = build_optimizer(model, config)
        self.schedule: LRSchedule = build_schedule(self.optimizer, config, self.steps_per_epoch)
        self.amp_dtype = AMP_DTYPES[config.amp]
        self.scaler = torch.amp.GradScaler(context.device.type, enabled=config.amp == "fp16")
        self.criterion = nn.CrossEntropyLoss()
        self.augment_generator = torch.Generator(device=context.device)
        self.state = TrainState()
        self.checkpoint_steps, self.checkpoint_seconds = parse_checkpoint_every(
            config.checkpoint_every)
        self.last_save_time = time.monotonic()
        self.last_saved_step: Optional[int] = None  # the step of the last state this process saved
        self.stop_request = StopRequest(parse_stop_signals(config.get("stop_signals", "")))
        self.stop_signal: Optional[int] = None

    # ----- checkpoints -----------------------------------------------------------------------
    def resume(self) -> None:
        """Restores the weights and training state of the ``last`` checkpoint.

        Raises:
            CheckpointError: there is no ``last`` checkpoint, or it is for another model.
        """
        if not self.last_path.is_file():
            raise CheckpointError(
                f"--config.resume=True but there is no checkpoint to resume from at "
                f"{self.last_path}. Start the run without --config.resume, or give the "
                "--config.path of the interrupted run's best checkpoint."
            )
        saved = checkpoints.read(self.last_path)
        weights = checkpoints.weights_from(saved, model_name=self.config.model,
                                          architecture=self.loaders.spec.architecture,
                                          convert=None, source=self.last_path)
        checkpoints.check_resumable(saved, self.last_path)
        self._check_same_run(saved)
        checkpoints.load_strict(self.model, weights, self.last_path)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        self.state = TrainState(**saved["train_state"])
        if self.state.best_epoch >= 0 and not self.best_path.is_file():
            raise CheckpointError(
                f"Cannot resume: the run's best checkpoint {self.best_path} (epoch {self.state.best_epoch:g}) is "
                "missing, so the resumed run would train on and then have no selected model to test. "
                "Put the file back, or train again from the start with --config.overwrite=True.")
        self._restore_random_states(saved.get("random_states"))
        logging.info("Resumed from %s at epoch %d, batch %d, step %d.", self.last_path,
                     self.state.epoch, self.state.batch_in_epoch, self.state.step)

    def _check_same_run(self, saved: Dict[str, Any]) -> None:
        """Refuses to resume a checkpoint of another configuration.

        Raises:
            CheckpointError: listing the fields that differ.
        """
        differences = paths.identity_differences(
            paths.run_identity(saved["config"], self.family),
            paths.run_identity(self.config, self.family),
            allowed=paths.RESUMABLE_CHANGES)
        if differences:
            raise CheckpointError(
                f"Cannot resume {self.last_path}: it was trained with another configuration "
                f"({'; '.join(differences)}). Resume with the same settings, or start a new run "
                "without --config.resume.")

    def _restore_random_states(self, states: Optional[List[Dict[str, Any]]]) -> None:
        """This process's random states from the checkpoint (one entry per process)."""
        if states is None:
            logging.warning("%s holds no random states (written by an older version): the "
                            "resumed run is not an exact continuation.", self.last_path)
            return
        if len(states) != self.context.world_size:
            raise CheckpointError(
                f"{self.last_path} was written by a run of {len(states)} process(es); this one has "
                f"{self.context.world_size}, which would shard the data otherwise and not continue it "
                f"exactly. Resume with {len(states)} process(es)"
                + (f" (torchrun --nproc_per_node={len(states)} on one machine)." if len(states) > 1 else
                   " (python main.py, without torchrun)."))
        random_state.restore(states[self.context.rank], self._generators())

    def _generators(self) -> Dict[str, torch.Generator]:
        """The run's own generators, whose states checkpoints carry."""
        return {"augment": self.augment_generator}

    def restore_best(self) -> None:
        """Loads the weights of the ``best`` checkpoint (the selected model) into the model."""
        saved = checkpoints.read(self.best_path)
        weights = checkpoints.weights_from(saved, model_name=self.config.model,
                                          architecture=self.loaders.spec.architecture,
                                          convert=None, source=self.best_path)
        checkpoints.load_strict(self.model, weights, self.best_path)
        logging.info("Selected the model of epoch %.2f (validation accuracy %.4f).",
                     saved["train_state"]["best_epoch"], saved["train_state"]["best_metric"])

    def _payload(self, random_states: List[Dict[str, Any]]) -> Dict[str, Any]:
        """The checkpoint of the current model and training state."""
        return checkpoints.make_checkpoint(
            model_name=self.config.model, architecture=self.loaders.spec.architecture,
            config=self.config.to_dict(),
            state_dict=distributed.unwrap(self.model).state_dict(),
            train_state=dataclasses.asdict(self.state),
            optimizer=self.optimizer.state_dict(), scheduler=self.schedule.state_dict(),
            scaler=self.scaler.state_dict(), epoch=self.state.epoch, step=self.state.step,
            best_metric=self.state.best_metric, random_states=random_states)

    def _save(self, improved: bool) -> None:
        """Writes ``best`` (when the model improved), then ``last``, on the main process.

        Every process takes part: the random states of all are gathered into the checkpoint.
        In this order a run killed between the two writes resumes from the previous ``last``
        and repeats the period, instead of believing in a best model that was never saved.
        A model with non-finite weights is never saved.
        """
        random_states = distributed.gather_objects(random_state.capture(self._generators()),
                                                   self.context)
        self.last_save_time = time.monotonic()
        if not self.context.is_main:
            return
        if not model_is_finite(self.model):
            logging.warning("Not saving step %d: the model's weights are not finite.",
                            self.state.step)
            return
        payload = self._payload(random_states)
        if improved:
            files.save_checkpoint(payload, self.best_path)
        files.save_checkpoint(payload, self.last_path)
        self.last_saved_step = self.state.step

    # ----- training ----------------------------------------------------------------------------
    def fit(self) -> TrainState:
        """Trains until ``config.epochs`` epochs or ``config.max_steps`` steps are done.

        Raises:
            RunInterrupted: SIGTERM or SIGINT stopped the run (after saving ``last``).
            TrainingDiverged: the loss or gradients stayed non-finite.
        """
        train_model = distributed.wrap(self.model, self.context)
        self._record_machine()
        with self.stop_request:
            while self.state.epoch < self.config.epochs and not self._step_limit_reached():
                train_metrics = self._train_epoch(train_model)
                epoch_complete = self.state.batch_in_epoch >= self.steps_per_epoch
                if epoch_complete:
                    self.state.epoch += 1
                    self.state.batch_in_epoch = 0
                    self.state.epoch_totals = [0.0, 0.0, 0.0]
                    self.state.epoch_seconds = 0.0
                if epoch_complete or self._step_limit_reached():
                    self._end_of_training_period(train_metrics, epoch_complete)
                else:  # stopped by a signal in the middle of the epoch
                    self._save(improved=False)
                self._stop_if_requested()
        self._log_replica_agreement()
        if self.context.is_main:
            self.logger.summary({"best_val_accuracy": self.state.best_metric,
                                 "best_epoch": self.state.best_epoch,
                                 "skipped_steps": self.state.skipped_steps})
        return self.state

    def _record_machine(self) -> None:
        """Adds this machine to ``state.machines`` unless a part of the run trained on it already."""
        this_machine = machine.describe(self.context.device)
        if this_machine not in self.state.machines:
            self.state.machines.append(this_machine)

    def _step_limit_reached(self) -> bool:
        return 0 < self.config.max_steps <= self.state.step

    def _stop_if_requested(self) -> None:
        """Ends the run after a signal; the caller has saved ``last``.

        Raises:
            RunInterrupted: when a process of the run received SIGTERM or SIGINT.
        """
        if self.stop_signal is None:
            return
        if self.last_saved_step == self.state.step or not self.context.is_main:
            saved = f"the training state is saved in {self.last_path}"
        elif self.last_path.exists():
            saved = (f"the state of this step was not saved (its weights are not finite); {self.last_path} "
                     "holds the last state that was")
        else:
            saved = "nothing was saved (the weights are not finite), so the run cannot be resumed"
        raise RunInterrupted(
            f"Stopped by {signal.Signals(self.stop_signal).name} at epoch {self.state.epoch}, batch "
            f"{self.state.batch_in_epoch} of {self.steps_per_epoch} (step {self.state.step}); {saved}.",
            self.stop_signal, str(self.last_path))

    def _synchronise_flags(self, diverged: bool) -> tuple:
        """(stop, checkpoint due, diverged) after a step, agreed by all processes.

        Any process's signal or divergence stops all of them at the same step; a checkpoint
        is due after ``checkpoint_steps`` steps or ``checkpoint_seconds`` seconds.
        """
        due = (bool(self.checkpoint_steps) and self.state.step % self.checkpoint_steps == 0) or (
            bool(self.checkpoint_seconds)
            and time.monotonic() - self.last_save_time >= self.checkpoint_seconds)
        local = self.stop_request.signal_number or 0
        flags = torch.tensor([local, float(due), float(diverged)], dtype=torch.float64)
        if self.context.distributed:
            flags = distributed.max_over_processes(flags, self.context)
        signal_number, due, diverged = flags.tolist()
        return int(signal_number), bool(due), bool(diverged)

    def _end_of_training_period(self, train_metrics: Dict[str, float],
                                epoch_complete: bool) -> None:
        """Validates, steps epoch-wise schedules, selects the best model and saves."""
        val_loss, val_accuracy = self.validate()
        if epoch_complete:
            self.schedule.after_epoch(val_accuracy)
        epoch = self.state.epoch + self.state.batch_in_epoch / max(1, self.steps_per_epoch)
        # A model whose weights or validation loss are not finite is never selected.
        improved = (math.isfinite(val_loss) and model_is_finite(self.model)
                    and is_better(val_accuracy, val_loss, self.state))
        if improved:
            self.state.best_metric, self.state.best_loss = val_accuracy, val_loss
            self.state.best_epoch = epoch
        metrics = {"epoch": epoch, **train_metrics, "val_loss": val_loss,
                   "val_accuracy": val_accuracy, "best_val_accuracy": self.state.best_metric,
                   "lr": self.optimizer.param_groups[0]["lr"]}
        self.state.history.append(metrics)
        self.logger.log(metrics, step=self.state.step)
        self._save(improved)
        if self.context.is_main:
            write_csv(self.state.history, self.metrics_path)

    def _train_epoch(self, train_model: nn.Module) -> Dict[str, float]:
        """Trains the rest of the current epoch (or up to ``max_steps``).

        Returns:
            The epoch's training loss and accuracy so far, and ``train_seconds``: the wall-clock
            seconds of its optimizer steps (no validation), the part before a resume included.
        """
        train_model.train()
        started = time.monotonic() - self.state.epoch_seconds  # as if the saved part ran just now
        sampler = self.loaders.train_sampler
        sampler.set_epoch(self.state.epoch,
                          start=self.state.batch_in_epoch * self.config.batch_size)
        if self.state.batch_in_epoch == 0:  # a resumed epoch goes on with its saved state
            self.augment_generator.manual_seed(
                (self.config.seed * 100_003 + self.state.epoch) * self.context.world_size
                + self.context.rank)
        self.stop_signal = None
        # A progress bar only on a terminal: in a log file its carriage returns make one
        # endless line; there, the log_every lines below report progress.
        progress = tqdm(self.loaders.train, leave=False,
                        disable=not (self.context.is_main and sys.stderr.isatty()),
                        desc=f"epoch {self.state.epoch + 1}/{self.config.epochs}")
        for inputs, labels in progress:
            loss, correct, nonfinite = self._train_step(train_model, inputs, labels)
            totals = self.state.epoch_totals
            self.state.epoch_totals = [totals[0] + loss * len(labels), totals[1] + correct,
                                       totals[2] + len(labels)]
            self.state.epoch_seconds = time.monotonic() - started
            progress.set_postfix(loss=f"{loss:.4f}")
            if self.config.log_every and self.state.step % self.config.log_every == 0:
                self.logger.log({"train_loss_step": loss,
                                 "lr": self.optimizer.param_groups[0]["lr"]}, self.state.step)
            signal_number, due, diverged = self._synchronise_flags(nonfinite)
            self._count_nonfinite(diverged, loss)
            if signal_number:
                self.stop_signal = signal_number
                break
            if self._step_limit_reached():
                break
            if due and self.state.batch_in_epoch < self.steps_per_epoch:
                self._save(improved=False)  # the end of the epoch saves anyway
        progress.close()
        totals = torch.tensor(self.state.epoch_totals, dtype=torch.float64)
        loss_sum, correct, count = distributed.sum_over_processes(totals, self.context).tolist()
        return {"train_loss": loss_sum / max(count, 1), "train_accuracy": correct / max(count, 1),
                "train_seconds": self.state.epoch_seconds}

    def _count_nonfinite(self, nonfinite: bool, loss: float) -> None:
        """Counts consecutive non-finite steps.

        Raises:
            TrainingDiverged: after ``config.max_nonfinite_steps`` of them in a row.
        """
        self.state.nonfinite_streak = self.state.nonfinite_streak + 1 if nonfinite else 0
        if self.state.nonfinite_streak < self.config.max_nonfinite_steps:
            return
        first = self.state.step - self.state.nonfinite_streak + 1
        saved = (f"The last saved state is {self.last_path}." if self.last_path.exists()
                 else "No checkpoint of this run was saved.")
        precision = (f", or train in full precision (--config.amp=none, now {self.config.amp})"
                     if self.config.amp != "none" else "")
        raise TrainingDiverged(
            f"Training diverged: the loss or the gradient was not finite in "
            f"{self.state.nonfinite_streak} consecutive steps ({first} to {self.state.step}; last "
            f"loss {loss}); these steps changed no weight. {saved} Lower the learning rate "
            f"(--config.lr, now {self.config.lr:g}) or clip the gradients "
            f"(--config.grad_clip=1.0){precision}.")

    def _train_step(self, train_model: nn.Module, inputs: torch.Tensor,
                    labels: torch.Tensor) -> tuple:
        """One optimizer step.

        Returns:
            The batch's loss, its number of correct predictions, and whether the step was
            non-finite: a non-finite loss, or a non-finite gradient that is not an fp16 loss
            scaler overflow (which the scaler handles by lowering its scale).
        """
        device = self.context.device
        inputs = inputs.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if self.loaders.train_augment is not None:
            inputs = self.loaders.train_augment(inputs, self.augment_generator)
        inputs = self.loaders.batch_transform(inputs)
        buffers = [buffer.detach().clone() for buffer in self.model.buffers()]  # e.g. BatchNorm statistics
        with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.config.amp != "none"):
            logits = train_model(inputs)
        loss = self.criterion(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        finite_gradient = bool(torch.isfinite(grad_norm))
        if finite_gradient:
            self.scaler.step(self.optimizer)
        else:  # the step changes nothing: the forward pass's buffer updates are undone too
            self._skip_step(grad_norm)
            with torch.no_grad():
                for buffer, saved in zip(self.model.buffers(), buffers):
                    buffer.copy_(saved)
        self.scaler.update()
        self.schedule.after_step()
        self.state.step += 1
        self.state.batch_in_epoch += 1
        correct = (logits.detach().argmax(dim=1) == labels).sum().item()
        loss_value = loss.item()
        nonfinite = not math.isfinite(loss_value) or not (finite_gradient or self.scaler.is_enabled())
        return loss_value, correct, nonfinite

    def _skip_step(self, grad_norm: torch.Tensor) -> None:
        """Counts and reports a step skipped for non-finite gradients.

        With fp16 this is how the loss scale adapts: the first steps overflow until the scale
        has come down, and the scaler lowers it after each skipped step.
        """
        self.state.skipped_steps += 1
        if self.context.is_main:
            scale = (f", fp16 loss scale {self.scaler.get_scale():g}"
                     if self.scaler.is_enabled() else "")
            logging.warning("Step %d skipped: gradient norm is %s%s (%d skipped so far).",
                            self.state.step + 1, grad_norm.item(), scale,
                            self.state.skipped_steps)

    # ----- evaluation --------------------------------------------------------------------------
    def validate(self) -> tuple:
        """Loss and accuracy on the validation split, over all processes."""
        outputs = tester.predict(self.model, self.loaders.valid, self.loaders.batch_transform,
                                 self.context.device, self.config.amp)
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, examples
        if len(outputs.labels):  # a process's shard of a tiny split can be empty
            loss_sum = nn.functional.cross_entropy(outputs.logits, outputs.labels,
                                                   reduction="sum")
            correct = (outputs.logits.argmax(dim=1) == outputs.labels).sum()
            totals += torch.tensor([loss_sum.item(), correct.item(), len(outputs.labels)],
                                   dtype=torch.float64)
        loss_sum, correct, count = distributed.sum_over_processes(totals, self.context).tolist()
        return loss_sum / max(count, 1), correct / max(count, 1)

    def _log_replica_agreement(self) -> None:
        """Logs one parameter fingerprint per process (all equal when replicas agree)."""
        if self.context.distributed:
            fingerprints = distributed.parameter_fingerprints(self.model, self.context)
            if self.context.is_main:
                logging.info("Parameter fingerprints per process: %s", fingerprints)


def model_is_finite(model: nn.Module) -> bool:
    """Whether every parameter and buffer of ``model`` is finite."""
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values()
               if t.is_floating_point())
