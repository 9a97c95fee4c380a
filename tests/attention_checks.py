"""Comparisons of an attention implementation with ``attention_impl="reference"``, shared by the tests.

The implementations compute the same function in a different order, so they agree to round-off:

* float64: every output and gradient entry within ``1e-12 * scale`` of the reference.
* float32: each implementation is compared with the float64 result of the same weights and
  input (an estimate of the exact value), never with another implementation's float32
  round-off, which differs between CPUs (vector width, fused multiply-add, summation order).
  A float32 sum of ``n`` terms of size ``s`` misses its exact value by about
  ``eps * sqrt(n) * s`` (the rounding errors add like a random walk); every output and gradient
  of a layer is made of sums no longer than its number of score entries
  ``n = B * heads * V * H * W * keys``, so each float32 entry must lie within
  ``ROUND_OFF_FACTOR * eps * sqrt(n) * scale`` of the float64 one. A mistake in the
  computation is of the order of the scale itself, thousands of times more.

The scale of an output is its largest entry. The scale of a gradient is the largest gradient
entry of the top-level submodule that owns the parameter (``row_embedding``, ``key``, ...):
some gradients vanish exactly (a key bias or the last bias of a positional MLP shifts all
logits of a query equally, which the softmax ignores), so only their round-off is compared,
and that is the round-off of the sums that make the sibling weight's gradient. A submodule
whose whole gradient vanishes (the group encoding of ``z2``, a single element) is compared at
the scale of the largest gradient of the layer.
"""

import math
import os

import torch

from g_selfatt.groups import get_group
from g_selfatt.nn import (
    GroupLocalSelfAttention,
    GroupSelfAttention,
    LiftLocalSelfAttention,
    LiftSelfAttention,
)

# Whether the fused kernel should find torch's OpenMP runtime and run its tasks on it (Linux, with
# torch parallelising through OpenMP, as the pip wheels do).
OPENMP_EXPECTED = (os.path.exists("/proc/self/maps")
                   and "parallel backend: OpenMP" in torch.__config__.parallel_info())

FLOAT32_EPS = torch.finfo(torch.float32).eps
# The constant of the random-walk estimate eps * sqrt(n) * scale; it also covers the chains of a
# few operations (exp, the softmax normalisation, the MLP) that each sum passes through.
ROUND_OFF_FACTOR = 4

# (layer class, lifting, local); the extent is patch_size or max_pos_embedding.
KINDS = {
    "lift": (LiftSelfAttention, True, False),
    "lift_local": (LiftLocalSelfAttention, True, True),
    "group": (GroupSelfAttention, False, False),
    "group_local": (GroupLocalSelfAttention, False, True),
}


def pair(kind, group_name, side, patch, dtype, dropout=0.0, in_channels=3, mid_channels=6, heads=2,
          impl="efficient"):
    """A reference layer and an ``impl`` layer with the same weights, and a random input."""
    cls, lifting, local = KINDS[kind]
    group = get_group(group_name)
    extent = patch if local else side + 1
    layers = [cls(group, in_channels, mid_channels, 5, heads, extent, dropout, attention_impl=name).to(dtype)
              for name in ("reference", impl)]
    layers[1].load_state_dict(layers[0].state_dict())
    shape = (2, in_channels, side, side) if lifting else (2, in_channels, group.num_elements, side, side)
    return layers[0], layers[1], torch.randn(shape, dtype=dtype)


def gradients(layer, x, grad_out):
    x = x.clone().requires_grad_(True)
    names, params = zip(*layer.named_parameters())
    out = layer(x)
    grads = torch.autograd.grad(out, (x,) + params, grad_out)
    return out, dict(zip(("input",) + names, grads))


def gradient_scales(grads):
    """The scale of every gradient (see the module docstring)."""
    owners = {}
    for name, grad in grads.items():
        owner = name.split(".")[0]
        owners[owner] = max(owners.get(owner, 0.0), grad.abs().max().item())
    layer_scale = max(owners.values())
    owners = {owner: scale if scale > 1e-8 * layer_scale else layer_scale for owner, scale in owners.items()}
    return {name: owners[name.split(".")[0]] for name in grads}


def assert_close(actual, expected, scale, rtol, atol, what):
    error = (actual - expected).abs()
    assert torch.all(error <= rtol * expected.abs() + atol * scale), (
        f"{what}: max error {error.max().item():.3e}, scale {float(scale):.3e} "
        f"(worst error/scale {(error / scale).max().item():.3e})"
    )


def run(layer, dtype, x, grad_out):
    layer = layer.to(dtype)
    return gradients(layer, x.to(dtype), grad_out.to(dtype))


def score_entries(kind, group_name, side, patch, batch=2, heads=2) -> int:
    """``B * heads * V * H * W * keys``: the number of attention logits of a layer from :func:`pair`."""
    _, lifting, local = KINDS[kind]
    order = get_group(group_name).num_elements
    keys = (patch if local else side) ** 2 * (1 if lifting else order)
    return batch * heads * order * side * side * keys


def float32_bound(n_terms: int, scale) -> float:
    """The round-off allowed to a float32 result made of sums of at most ``n_terms`` terms."""
    return ROUND_OFF_FACTOR * FLOAT32_EPS * math.sqrt(n_terms) * float(torch.as_tensor(scale).detach())


def check_against_float64(impl, kind, group_name, side, patch, heads=2, float32_reference=True, **widths):
    """Float64 ``impl`` = reference to 1e-12 of scale; float32 of ``impl`` (and of the reference, if
    ``float32_reference``) within the round-off bound of float64. ``widths``: ``in_channels`` and
    ``mid_channels`` of :func:`pair`."""
    reference, efficient, x = pair(kind, group_name, side, patch, torch.float64, heads=heads, impl=impl, **widths)
    grad_out = torch.randn_like(reference(x))
    expected, expected_grads = run(reference, torch.float64, x, grad_out)
    actual, actual_grads = run(efficient, torch.float64, x, grad_out)
    scales = gradient_scales(expected_grads)

    assert_close(actual, expected, expected.abs().max(), 0.0, 1e-12, "float64 output")
    for name, grad in expected_grads.items():
        assert_close(actual_grads[name], grad, scales[name], 0.0, 1e-12, f"float64 gradient of {name}")

    n_terms = score_entries(kind, group_name, side, patch, heads=heads)
    layers = (("reference", reference),) if float32_reference else ()
    for name, layer in layers + ((impl, efficient),):
        output_32, grads_32 = run(layer, torch.float32, x, grad_out)
        out_bound = float32_bound(n_terms, expected.abs().max())
        assert_close(output_32.double(), expected, 1.0, 0.0, out_bound, f"{name} float32 output")
        for param, exact in expected_grads.items():
            bound = float32_bound(n_terms, scales[param])
            assert_close(grads_32[param].double(), exact, 1.0, 0.0, bound, f"{name} float32 gradient of {param}")
