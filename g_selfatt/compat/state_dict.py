"""How the self-attention layers' state dicts are saved and loaded (attached to the layers).

Two things are not in the weights:

* **Derived index tables.** ``row_indices``, ``col_indices`` and ``g_indices`` are functions of
  the constructor arguments, so they are not saved. Checkpoints of the original code (and older
  ones of this project) hold them: loading accepts them where their shape is the layer's own (a
  different patch size or image side shows only there) and never takes their values (the
  original's group index is not equivariant).
* **The group-axis index the weights were trained with.** A state dict can record it only
  through the version torch keeps per module in its metadata: these layers save version
  :data:`STATE_VERSION`. A state dict without it (the original implementation's, or this
  project's before the version existed) loads with ``group_axis_index="original"``, which
  reproduces the outputs it was trained to give, and one notice says so;
  :func:`set_group_axis_index` (``"relative"``) gives the equivariant variant. Code that knows
  the index (this project's runner, which records it with the weights) loads inside
  :func:`recorded_group_axis_index`, which keeps the index the layers were built with.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from typing import Dict, Iterator

import torch
from torch import nn

from g_selfatt.compat.attach import attach
from g_selfatt.nn.attention import SelfAttentionCore

logger = logging.getLogger(__name__)

# Index tables that are functions of the constructor arguments, so they are not saved. Checkpoints
# of the original code (and older ones of this project) hold them: loading accepts them where their
# shape is the layer's own (a different patch size or image side shows only there) and never takes
# their values (the original's group index is not equivariant). Only g_indices is used (a
# non-persistent buffer); the original's row and column tables are read by nothing, so only their
# shapes are known here.
DERIVED_BUFFERS = ("row_indices", "col_indices", "g_indices")


# The state_dict version of the attention layers: 2 marks the files of this project.
STATE_VERSION = 2
_INDEX_IS_RECORDED = contextvars.ContextVar("group_axis_index_is_recorded", default=False)
_last_notice = [0]  # id of the last state dict the notice was given for (one notice per load)

ORIGINAL_INDEX_NOTICE = (
    "Loaded a state dict without a record of its group-axis index (the original implementation's, or "
    "one written before this project recorded it): its group self-attention layers use "
    "group_axis_index='original', which reproduces the outputs it was trained to give. For the exactly "
    "equivariant variant call g_selfatt.nn.set_group_axis_index(model, 'relative') (and fine-tune).")


@contextlib.contextmanager
def recorded_group_axis_index() -> Iterator[None]:
    """Loads inside keep the index the layers were built with (for callers that recorded it)."""
    token = _INDEX_IS_RECORDED.set(True)
    try:
        yield
    finally:
        _INDEX_IS_RECORDED.reset(token)


def set_group_axis_index(model: nn.Module, group_axis_index: str) -> nn.Module:
    """Switches every group self-attention layer of ``model`` to ``group_axis_index``; returns ``model``."""
    for module in model.modules():
        if isinstance(module, SelfAttentionCore) and not module.lifting:
            module.use_group_axis_index(group_axis_index)
    return model


class StateDictCompatibility:
    """Attached to :class:`~g_selfatt.nn.attention.SelfAttentionCore`: its state-dict version and loading."""

    _version = STATE_VERSION

    def derived_buffer_shapes(self) -> Dict[str, torch.Size]:
        """Name -> shape of the derived tables a checkpoint may hold for this layer.

        The original's ``row_indices`` / ``col_indices``: ``(V, P, P)`` for local layers,
        ``(V, M, M, M, M)`` (``M = max_pos_embedding``) for global ones; ``g_indices``: ``(V, G, M)``.
        """
        elements = self.group.num_elements
        extent = (self.patch_size,) * 2 if self.local else (self.max_pos_embedding,) * 4
        shapes = {name: torch.Size((elements, *extent)) for name in ("row_indices", "col_indices")}
        if not self.lifting:
            shapes["g_indices"] = self.g_indices.shape
        return shapes

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        own = self.derived_buffer_shapes()
        for name in DERIVED_BUFFERS:
            key = prefix + name
            if key not in state_dict:
                continue
            saved = state_dict.pop(key).shape
            if name not in own:
                unexpected_keys.append(key)
            elif saved != own[name]:
                error_msgs.append(f"size mismatch for {key}: copying a param with shape {saved} from checkpoint, "
                                  f"the shape in current model is {own[name]}.")
        if self._trained_with_original_index(local_metadata):
            self.use_group_axis_index("original")
            if _last_notice[0] != id(state_dict):
                _last_notice[0] = id(state_dict)
                logger.warning(ORIGINAL_INDEX_NOTICE)
        nn.Module._load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                                        unexpected_keys, error_msgs)

    def _trained_with_original_index(self, local_metadata: Dict) -> bool:
        """A state dict of unknown index (no version 2) loaded where no caller vouches for the index."""
        unknown = (local_metadata.get("version") or 1) < STATE_VERSION
        return (unknown and not self.lifting and self.group_axis_index == "relative"
                and not _INDEX_IS_RECORDED.get())


def derived_state_shapes(model: nn.Module) -> Dict[str, torch.Size]:
    """State_dict key -> shape of every derived buffer of ``model``'s attention layers.

    These keys are not in ``model.state_dict()``, but ``model.load_state_dict`` accepts them (see
    :data:`DERIVED_BUFFERS`); a strict check of a checkpoint's keys must allow them too.
    """
    return {f"{prefix}{'.' if prefix else ''}{name}": shape
            for prefix, module in model.named_modules() if isinstance(module, SelfAttentionCore)
            for name, shape in module.derived_buffer_shapes().items()}


attach(SelfAttentionCore, StateDictCompatibility)
