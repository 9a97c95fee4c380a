"""Activation functions and the table of their config names."""

from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch import nn


class Swish(nn.Module):
    """``x * sigmoid(x)`` (also called SiLU), by torch's fused ``silu`` (one pass each way, and
    only ``x`` kept for the backward pass)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)


ACTIVATIONS: Dict[str, Callable[[], nn.Module]] = {"ReLU": nn.ReLU, "Swish": Swish}


def get_activation(name: str) -> nn.Module:
    """Builds the activation named ``name`` (``"ReLU"`` or ``"Swish"``)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation_function {name!r}; expected one of {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]()
