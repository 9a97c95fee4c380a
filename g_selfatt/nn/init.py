"""Weight initialisation of GSA-Nets."""

from __future__ import annotations

from torch import nn

# sqrt(2) as the paper's command lines write it (it is part of the original run names).
WHITENING_SCALE = 1.41421356


def whitening_init_(module: nn.Module, whitening_scale: float = WHITENING_SCALE) -> nn.Module:
    """Draws the weights of every convolution in ``module`` from N(0, (whitening_scale / sqrt(fan_in))^2).

    Biases of those convolutions become zero. This is the initialisation of the GSA-Net
    models (``whitening_scale = sqrt(2)`` in the paper's experiments); it keeps the variance
    of the activations roughly constant through the layers, so that even untrained layers
    attend selectively instead of almost uniformly.

    Args:
        module: a layer or network; all its ``nn.Conv2d`` and ``nn.Conv3d`` submodules are reset.
        whitening_scale: the gain.

    Returns:
        ``module``, for chaining.
    """
    for submodule in module.modules():
        if isinstance(submodule, (nn.Conv2d, nn.Conv3d)):
            fan_in = submodule.weight[0].numel()
            nn.init.normal_(submodule.weight, 0.0, whitening_scale * fan_in ** -0.5)
            if submodule.bias is not None:
                nn.init.zeros_(submodule.bias)
    return module
