"""The original layers' methods and attributes, attached to this project's self-attention layers.

The original implementation exposed the steps of its computation; code written for it calls
them. :class:`OriginalLayerAPI` gives :class:`~g_selfatt.nn.attention.SelfAttentionCore` the
same names, each computed by the core (no second copy of the attention):

* ``compute_attention_scores(x)``: the scaled logits in the original's layout, ``-inf`` for keys
  outside the image: lifting ``(B, N, V, H, W, k, l)``, group ``(B, N, V, G, H, W, M, k, l)``,
  where ``(k, l)`` is the key pixel (global layers) or its place in the ``P x P`` patch (local).
* ``handle_values_outside_image(scores, height, width)``: sets those keys to ``-inf`` in place
  and keeps the mask as ``inf_outside`` (``+inf`` outside, 0 inside), as the original did.
* ``initialize_indices(extent)``: the acted positional tables for a new patch size (local) or
  largest image side (global).
* ``unfold`` (local layers), ``pos_encoding_dim``, ``group_encoding_dim``, ``attention_dropout``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from g_selfatt.compat.attach import attach
from g_selfatt.nn.attention import SelfAttentionCore


class OriginalLayerAPI:
    """The original layers' API, attached to :class:`~g_selfatt.nn.attention.SelfAttentionCore`."""

    inf_outside: Optional[Tensor] = None

    def compute_attention_scores(self, x: Tensor) -> Tensor:
        """The original's attention scores of ``x`` (before the softmax); see the module docstring."""
        self._check_input(x)
        height, width = x.shape[-2:]
        logits = self.attention_logits(self._project(self.query, x), self._project(self.key, x), x.shape[1])
        keys = (self.patch_size, self.patch_size) if self.local else (height, width)
        logits = logits.unflatten(-1, keys)  # (B, N, V, G, H, W, M, k, l)
        if self.lifting:
            return logits[:, :, :, 0, :, :, 0]  # (B, N, V, H, W, k, l)
        return logits

    def handle_values_outside_image(self, attention_scores: Tensor, height: int, width: int) -> None:
        """Sets the scores of keys outside the image to ``-inf`` in place (local layers)."""
        inside = self._inside_image(height, width, attention_scores.device)  # (H, W, P P)
        outside = (~inside).view(height, width, self.patch_size, self.patch_size)
        # (H, W, [M,] P, P): the group layers' scores have the key element between pixel and patch.
        shape = (height, width, self.patch_size, self.patch_size) if self.lifting else \
            (height, width, 1, self.patch_size, self.patch_size)
        self.inf_outside = torch.zeros(shape, device=attention_scores.device).masked_fill_(
            outside.view(shape), float("inf"))
        attention_scores -= self.inf_outside

    def initialize_indices(self, extent: int) -> None:
        """Rebuilds the acted positional tables for patch size (local) or image side (global) ``extent``."""
        if self.local:
            self.patch_size = extent
        else:
            self.max_pos_embedding = extent
        self._register_indices()

    @property
    def unfold(self) -> nn.Unfold:
        """The patch extractor of local layers: ``P x P`` patches, zero padding ``P // 2``."""
        if not self.local:
            raise AttributeError("Global self-attention layers have no patch extractor (unfold).")
        return nn.Unfold(kernel_size=self.patch_size, padding=self.patch_size // 2)

    @property
    def pos_encoding_dim(self) -> int:
        return self.dim_pos_encoding

    @property
    def group_encoding_dim(self) -> int:
        return self.dim_group_encoding

    @property
    def attention_dropout(self) -> nn.Dropout:
        return self.dropout_attention


attach(SelfAttentionCore, OriginalLayerAPI)
