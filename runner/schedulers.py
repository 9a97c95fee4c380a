"""Learning-rate schedules behind one interface.

Each schedule is told about every optimizer step (:meth:`LRSchedule.after_step`) and every
validated epoch (:meth:`LRSchedule.after_epoch`) and reacts to the one it is defined on:

* ``constant``: the learning rate never changes.
* ``multistep``: divided by ``sched_decay_factor`` after each epoch in ``sched_decay_steps``.
* ``linear_warmup_cosine``: per step, linear warm-up from 0 over ``warmup_epochs`` epochs,
  then a cosine decay to 0 at the end of training (GSA-Nets on CIFAR10 and PCam).
* ``plateau``: divided by ``sched_decay_factor`` when the validation accuracy has not improved
  for ``sched_patience`` epochs (attentive G-CNNs on PCam).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from ml_collections import config_dict

from g_selfatt.utils.schedulers import warmup_cosine_factor

SCHEDULERS = ("constant", "multistep", "linear_warmup_cosine", "plateau")  # config.scheduler


class LRSchedule:
    """A torch scheduler with the moment it is stepped at ("step", "epoch" or "metric")."""

    def __init__(self, scheduler: Any, step_at: str):
        self.scheduler = scheduler
        self.step_at = step_at

    def after_step(self) -> None:
        """Called after every optimizer step (also a skipped one, to keep the schedule)."""
        if self.step_at == "step":
            self.scheduler.step()

    def after_epoch(self, val_accuracy: Optional[float]) -> None:
        """Called after every complete, validated epoch."""
        if self.step_at == "epoch":
            self.scheduler.step()
        elif self.step_at == "metric" and val_accuracy is not None:
            self.scheduler.step(val_accuracy)

    def state_dict(self) -> Dict[str, Any]:
        """The scheduler's state, for checkpoints."""
        return self.scheduler.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restores a state returned by :meth:`state_dict`."""
        self.scheduler.load_state_dict(state)


def build_schedule(optimizer: torch.optim.Optimizer, config: config_dict.ConfigDict,
                   steps_per_epoch: int) -> LRSchedule:
    """The schedule named by ``config.scheduler`` (checked by runner.defaults)."""
    lr_scheduler = torch.optim.lr_scheduler
    if config.scheduler == "multistep":
        return LRSchedule(lr_scheduler.MultiStepLR(
            optimizer, milestones=list(config.sched_decay_steps),
            gamma=1.0 / config.sched_decay_factor), "epoch")
    if config.scheduler == "linear_warmup_cosine":
        factor = warmup_cosine_factor(
            warmup_steps=int(config.warmup_epochs * steps_per_epoch),
            total_steps=config.epochs * steps_per_epoch)
        return LRSchedule(lr_scheduler.LambdaLR(optimizer, factor), "step")
    if config.scheduler == "plateau":
        return LRSchedule(lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=1.0 / config.sched_decay_factor,
            patience=config.sched_patience), "metric")
    return LRSchedule(lr_scheduler.LambdaLR(optimizer, lambda _: 1.0), "never")
