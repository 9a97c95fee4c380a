"""Linear warm-up followed by a cosine decay of the learning rate (the runner's ``linear_warmup_cosine``)."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine_factor(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """The multiplier of the base learning rate after ``step`` steps: 0 to 1 linearly over
    ``warmup_steps``, then half a cosine down to 0 at ``total_steps`` (and 0 after it)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def linear_warmup_cosine_lr_scheduler(optimizer: torch.optim.Optimizer, warmup_time_ratio: float,
                                      T_max: int) -> LambdaLR:
    """The original's scheduler: :func:`warmup_cosine_factor` with ``int(T_max * warmup_time_ratio)``
    warm-up steps of ``T_max``, stepped once per iteration."""
    return LambdaLR(optimizer, lr_lambda=warmup_cosine_factor(int(T_max * warmup_time_ratio), T_max))
