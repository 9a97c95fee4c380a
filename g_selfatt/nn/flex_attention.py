"""Self-attention of :class:`~g_selfatt.nn.attention.SelfAttentionCore` on torch's FlexAttention (GPU path).

``attention_impl="flex"`` maps the layer's attention onto
:func:`torch.nn.attention.flex_attention.flex_attention`, which compiles one fused
kernel for the whole softmax attention (on CUDA, through Triton):

* each row of FlexAttention's queries is one ``(pixel i, output element v, query element
  g)`` triple carrying ``q[i, g]``; each key is one ``(pixel j, key element m)`` pair;
* ``score_mod`` adds the positional term ``<q_pos[i, g], E[v, offset(i, j)]>`` (a dot product
  of ``2 D`` gathered entries, never a table of all offsets) and the group term, which is
  precomputed per query, ``(BN, H W, V, G, M)``;
* local layers pass a block mask of the neighbourhood, so blocks of keys outside it are
  skipped;
* the output rows are summed over ``g``.

FlexAttention has no attention dropout, so this path runs only where attention dropout is
inactive (evaluation, or a rate of 0); see :func:`supports`. Its forward pass also runs on
the CPU (unfused, for testing); its backward pass needs a GPU.
"""

from __future__ import annotations

import functools
import warnings
from typing import Optional

import torch
from torch import Tensor

from g_selfatt.nn.fused_attention import FusedGeometry


def available() -> bool:
    """Whether this torch build has FlexAttention."""
    return _flex() is not None


def supports(t: Tensor, dropout: float) -> bool:
    """Whether FlexAttention can run this call: a CUDA tensor and no active attention dropout."""
    return t.device.type == "cuda" and dropout == 0.0 and available()


def _flex():
    try:
        from torch.nn.attention import flex_attention
    except ImportError:  # torch builds without FlexAttention
        return None
    return flex_attention


@functools.lru_cache(maxsize=None)
def _compiled():
    """FlexAttention compiled into one kernel (CUDA): without compilation it runs unfused."""
    return torch.compile(_flex().flex_attention, dynamic=False)


def _unfused(*args, **kwargs):
    """FlexAttention's reference implementation (CPU): materialises the scores; for testing."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        return _flex().flex_attention(*args, **kwargs)


def _attend(device: torch.device):
    return _compiled() if device.type == "cuda" else _unfused


def flex_self_attention(geometry: FusedGeometry, q: Tensor, k: Tensor, v: Tensor, pos_table: Tensor,
                        group_table: Optional[Tensor]) -> Tensor:
    """The attention before ``wout``.

    Args:
        geometry: sizes of the call (the fused kernel's; dropout is not used).
        q: queries ``(BN, H W, G, C)``, already divided by ``sqrt(C_in)``.
        k, v: keys and values ``(BN, H W, M, C)``.
        pos_table: encodings of the acted offsets, ``(V, T, 2D)`` with ``T = side^2``.
        group_table: ``(V, G, M, D_g)`` or ``None`` (lifting layers).

    Returns:
        ``(BN, H W, V, C)``.
    """
    flex = _flex()
    g = geometry
    bn, hw, elements, channels = q.shape
    rows_per_pixel = g.num_out * elements
    queries = q[:, :, None].expand(bn, hw, g.num_out, elements, channels)  # (BN, HW, V, G, C)
    queries = queries.reshape(bn, 1, hw * rows_per_pixel, channels)
    keys = k.reshape(bn, 1, hw * g.num_key_elements, channels)  # (BN, 1, HW M, C)
    values = v.reshape(bn, 1, hw * g.num_key_elements, channels)
    q_pos = q[..., :g.pos_channels]  # (BN, HW, G, 2D)
    if group_table is None:
        group_logits = q.new_zeros(bn, hw, g.num_out, elements, g.num_key_elements)
    else:
        group_logits = torch.einsum("bigc,vgmc->bivgm", q[..., g.pos_channels:], group_table)

    def pixel_of_query(q_idx):
        return q_idx // rows_per_pixel

    def score_mod(score, b, h, q_idx, kv_idx):
        i = pixel_of_query(q_idx)
        out_element = (q_idx // elements) % g.num_out
        query_element = q_idx % elements
        j = kv_idx // g.num_key_elements
        key_element = kv_idx % g.num_key_elements
        # Clamped: pairs outside a local neighbourhood are masked, but score_mod may still see them.
        row = (j // g.width - i // g.width + g.radius).clamp(0, g.side - 1)
        col = (j % g.width - i % g.width + g.radius).clamp(0, g.side - 1)
        offset = row * g.side + col
        for d in range(g.pos_channels):  # scalar gathers: score_mod is applied entry by entry
            score = score + q_pos[b, i, query_element, d] * pos_table[out_element, offset, d]
        return score + group_logits[b, i, out_element, query_element, key_element]

    block_mask = None
    if g.local:
        def inside(b, h, q_idx, kv_idx):
            i = pixel_of_query(q_idx)
            j = kv_idx // g.num_key_elements
            return ((j // g.width - i // g.width).abs() <= g.radius) & ((j % g.width - i % g.width).abs() <= g.radius)

        block_mask = flex.create_block_mask(inside, None, None, hw * rows_per_pixel, hw * g.num_key_elements,
                                            device=q.device.type)
    out = _attend(q.device)(queries, keys, values, score_mod=score_mod, block_mask=block_mask, scale=1.0)
    return out.view(bn, hw, g.num_out, elements, channels).sum(3)  # (BN, HW, V, C)
