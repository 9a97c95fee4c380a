"""State dicts of the attentive G-CNN code's models whose parameter names differ from this project's.

Registered as the models' ``convert_checkpoint`` (see :mod:`g_selfatt_models.registry`), so
:func:`~g_selfatt_models.checkpoints.load_model` reads the original files in one call.
"""

from __future__ import annotations

from typing import Dict, Mapping

from torch import Tensor

# Positions in ``CNN.sequential`` of the convolutions and batch norms, in order.
_CONV_POSITIONS = (0, 4, 8, 12, 16, 20, 24)
_NORM_POSITIONS = (1, 5, 9, 13, 17, 21)


def convert_z2cnn_checkpoint(state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Maps a checkpoint of the attentive G-CNN code's ``Z2CNN`` onto :class:`~g_selfatt_models.cnn.CNN`.

    That model is the same network with its layers named ``c1..c7`` and ``bn1..bn6``;
    checkpoints that already use :class:`CNN`'s names pass through unchanged.
    """
    renames = {f"c{i + 1}.": f"sequential.{p}." for i, p in enumerate(_CONV_POSITIONS)}
    renames.update({f"bn{i + 1}.": f"sequential.{p}." for i, p in enumerate(_NORM_POSITIONS)})
    converted = {}
    for key, value in state_dict.items():
        head, _, rest = key.partition(".")
        new_prefix = renames.get(head + ".")
        converted[new_prefix + rest if new_prefix else key] = value
    return converted
