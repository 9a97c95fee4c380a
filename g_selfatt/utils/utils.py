"""Parameter counts and the normalisations of the original ``g_selfatt.utils.utils``."""

import torch
from torch import Tensor


def normalize_tensor_one_minone(pp: Tensor) -> Tensor:
    """``pp`` (float) mapped linearly so that ``0 -> -1`` and ``max -> 1`` when its minimum is 0.

    For ``arange(P)`` this is the offset ``(x - r) / r`` of a patch of radius ``r = (P - 1) / 2``.
    """
    values = pp.float()
    return values / (values.max() / 2.0 - values.min()) - 1.0


def normalize_tensor(pp: Tensor) -> Tensor:
    """``pp`` (float) divided by its range."""
    values = pp.float()
    return values / (values.max() - values.min())


def num_params(model: torch.nn.Module) -> int:
    """The number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
