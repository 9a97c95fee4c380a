"""Equivariance of attgconv layers and invariance of the registered attentive G-CNNs.

All checks go through :func:`g_selfatt.testing.assert_equivariant` with exact
transforms (rotations by 90 degrees; mirrors for p4m), in float32 and float64.
attgconv feature maps transform under the left-regular action
``[u . f](g, x) = f(u^-1 g, M_u^-1 x)``
(:meth:`attgconv.grids.PlanarGrid.transform_feature_map`), which is passed as
``transform_in`` / ``transform_out``. Every layer kind is checked (plain, full,
channel-only, spatial-only and feature-map attentive lifting and group layers, the
1x1 spatial attention, the poolings), and the logits of every registered group model.
"""

from __future__ import annotations

import functools
from typing import Tuple

import pytest
import torch
from torch import nn

import attgconv as ag
import g_selfatt_models.attgconv_zoo  # noqa: F401  (registers the models)
from g_selfatt.testing import assert_equivariant, equivariance_errors
from g_selfatt_models.registry import DataSpec, create_model, get_model_spec, list_models

GROUPS = ("p4", "p4m")
DTYPES = (torch.float32, torch.float64)


def _feature_transform(grid: ag.PlanarGrid, group_dim: int = -3):
    return functools.partial(grid.transform_feature_map, group_dim=group_dim)


# Layer kinds: name -> (builder(grid), input shape without batch, input on the group?).
def _lifting(grid):
    return ag.LiftingConv(grid, 3, 4, 3, padding=1)


def _group(grid):
    return ag.GroupConv(grid, 3, 4, 3, padding=1)


def _attentive_lifting(grid):
    return ag.AttentiveLiftingConv(grid, 3, 5, 3, padding=1, chunk_size=2,
                                   channel_attention=ag.ChannelAttention(5, 3, 1),
                                   spatial_attention=ag.SpatialAttention(grid, 5, 5))


def _attentive_group(grid):
    return ag.AttentiveGroupConv(grid, 4, 3, 3, padding=1, chunk_size=2,
                                 channel_attention=ag.GroupChannelAttention(grid, 3, 4, 2),
                                 spatial_attention=ag.GroupSpatialAttention(grid, 3, 5))


def _feature_lifting(grid):
    return ag.FeatureAttentiveLiftingConv(grid, 3, 4, 3, padding=1,
                                          channel_attention=ag.FeatureChannelAttention(3, 1),
                                          spatial_attention=ag.FeatureSpatialAttention(grid, 5, dilation=2))


def _feature_group(grid):
    return ag.FeatureAttentiveGroupConv(grid, 4, 5, 3, padding=1,
                                        channel_attention=ag.FeatureGroupChannelAttention(grid, 4, 2),
                                        spatial_attention=ag.FeatureGroupSpatialAttention(grid, 5))


def _romhog_lifting(grid):
    return ag.FeatureAttentiveLiftingConv(grid, 3, 4, 3, padding=1,
                                          spatial_attention=ag.FeatureSpatialAttention(grid, 1, in_channels=3))


def _romhog_group(grid):
    return ag.FeatureAttentiveGroupConv(grid, 4, 5, 3, padding=1,
                                        spatial_attention=ag.FeatureGroupSpatialAttention(grid, 1, in_channels=4))


def _channel_attentive_lifting(grid):
    return ag.AttentiveLiftingConv(grid, 3, 5, 3, padding=1, chunk_size=2,
                                   channel_attention=ag.ChannelAttention(5, 3, 1))


def _spatial_attentive_lifting(grid):
    return ag.AttentiveLiftingConv(grid, 3, 5, 3, padding=1, chunk_size=2,
                                   spatial_attention=ag.SpatialAttention(grid, 5, 5))


def _channel_attentive_group(grid):
    return ag.AttentiveGroupConv(grid, 4, 3, 3, padding=1, chunk_size=2,
                                 channel_attention=ag.GroupChannelAttention(grid, 3, 4, 2))


def _spatial_attentive_group(grid):
    return ag.AttentiveGroupConv(grid, 4, 3, 3, padding=1, chunk_size=2,
                                 spatial_attention=ag.GroupSpatialAttention(grid, 3, 5, dilation=2))


def _spatial_max_pool(grid):
    return functools.partial(ag.max_pooling_rd_on_G, kernel_size=2, stride=2, padding=0)


def _spatial_average_pool(grid):
    return functools.partial(ag.average_pooling_rd_on_G, kernel_size=2, stride=2, padding=0)


def _group_max_pool(grid):
    return ag.max_pooling_group


# Layer kinds: name -> (builder(grid), input on the group?, output kind, input side).
# Pooling with stride 2 commutes with quarter turns and mirrors only on even sides.
LAYERS = {
    "lifting": (_lifting, False, "group", 7),
    "group": (_group, True, "group", 7),
    "attentive_lifting": (_attentive_lifting, False, "group", 7),
    "attentive_group": (_attentive_group, True, "group", 7),
    "channel_attentive_lifting": (_channel_attentive_lifting, False, "group", 7),
    "spatial_attentive_lifting": (_spatial_attentive_lifting, False, "group", 7),
    "channel_attentive_group": (_channel_attentive_group, True, "group", 7),
    "spatial_attentive_group": (_spatial_attentive_group, True, "group", 7),
    "feature_attentive_lifting": (_feature_lifting, False, "group", 7),
    "feature_attentive_group": (_feature_group, True, "group", 7),
    "romhog_lifting": (_romhog_lifting, False, "group", 7),
    "romhog_group": (_romhog_group, True, "group", 7),
    "spatial_max_pool": (_spatial_max_pool, True, "group", 8),
    "spatial_average_pool": (_spatial_average_pool, True, "group", 8),
    "group_max_pool": (_group_max_pool, True, "image", 8),
}


def _input(grid: ag.PlanarGrid, on_group: bool, channels: int, dtype: torch.dtype, size: int = 7) -> torch.Tensor:
    shape = (2, channels, len(grid), size, size) if on_group else (2, channels, size, size)
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_layer_is_equivariant(kind, group, dtype):
    grid = ag.get_grid(group)
    build, on_group, output_kind, size = LAYERS[kind]
    torch.manual_seed(0)
    layer = build(grid)
    if isinstance(layer, nn.Module):
        layer = layer.to(dtype).eval()
    x = _input(grid, on_group, getattr(layer, "in_channels", 3), dtype, size)
    assert_equivariant(layer, x, grid.group, input_kind="group" if on_group else "image", output_kind=output_kind,
                       transform_in=_feature_transform(grid) if on_group else None,
                       transform_out=_feature_transform(grid) if output_kind == "group" else None)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("group", GROUPS)
def test_response_attention_gates_are_equivariant(group, dtype):
    """Gates of responses ``(B, O, G, C, K, H, W)``: the group acts on G and K jointly."""
    grid = ag.get_grid(group)
    torch.manual_seed(0)
    channel = ag.GroupChannelAttention(grid, 3, 4, 2).to(dtype)
    spatial = ag.GroupSpatialAttention(grid, 3, 5).to(dtype)
    x = torch.randn(2, 3, len(grid), 4, len(grid), 7, 7, dtype=dtype)

    def act(t: torch.Tensor, element: int) -> torch.Tensor:
        return grid.group.transform_image(_permute_groups(grid, t, element), element)

    for gate in (channel, spatial):
        assert_equivariant(gate, x, grid.group, input_kind="group", output_kind="group", transform_in=act,
                           transform_out=act)


def _permute_groups(grid: ag.PlanarGrid, t: torch.Tensor, element: int) -> torch.Tensor:
    permutation = grid.group.axis_permutation(element, "left", grid.elements)
    return t.index_select(2, permutation).index_select(4, permutation)


def test_original_cyclic_channel_attention_breaks_p4m_equivariance():
    """The original ChannelAttentionGG shifts the p4m axis cyclically: not a group action."""
    grid = ag.get_grid("p4m")
    torch.manual_seed(0)
    layer = ag.AttentiveGroupConv(grid, 4, 3, 3, padding=1,
                                  channel_attention=ag.GroupChannelAttention(grid, 3, 4, 2, permutations="cyclic"))
    layer = layer.double()
    x = _input(grid, True, 4, torch.float64)
    errors = equivariance_errors(layer, x, _feature_transform(grid), _feature_transform(grid), grid.group.grid_exact())
    assert max(errors.values()) > 1e-3


@pytest.mark.parametrize("group", GROUPS)
def test_grid_layout_is_the_originals(group):
    # p4: rotations by 0..270 degrees; p4m: the rotations R^k, then F R^k (F flips the rows).
    grid = ag.get_grid(group)
    x = torch.arange(9.0).view(3, 3)
    expected = [torch.rot90(x, k, dims=(0, 1)) for k in range(4)]
    if group == "p4m":
        expected += [torch.flip(image, dims=[0]) for image in expected]
    for element, image in zip(grid.elements, expected):
        torch.testing.assert_close(grid.group.transform_image(x, element), image, rtol=0, atol=0)


@pytest.mark.parametrize("group", GROUPS)
def test_left_permutations_are_the_left_action_on_positions(group):
    # Independent of axis_permutation: look h^-1 g up by matrices, p and q being axis positions.
    grid = ag.get_grid(group)
    matrices = grid.group.matrices()
    for p, h in enumerate(grid.elements):
        for q, g in enumerate(grid.elements):
            product = torch.linalg.inv(matrices[h]) @ matrices[g]
            expected = grid.elements.index(grid.group.index_of_matrix(product))
            assert int(grid.left_permutations()[p, q]) == expected


@pytest.mark.parametrize("action", ["left", "right"])
@pytest.mark.parametrize("group", GROUPS)
def test_feature_map_action_is_a_representation(group, action):
    grid = ag.get_grid(group)
    x = torch.randn(1, 2, len(grid), 5, 5, dtype=torch.float64)
    table = grid.group.cayley_table()

    def act(t, u):
        return grid.group.transform_feature_map(t, u, action=action, axis_order=grid.elements)

    for a in grid.elements:
        for b in grid.elements:
            ab = int(table[a, b])
            torch.testing.assert_close(act(act(x, b), a), act(x, ab), rtol=0, atol=0)


# ------------------------------------------------------------ chunked vs full


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("kind", [kind for kind in sorted(LAYERS) if "attentive" in kind and "feature" not in kind])
def test_chunked_and_full_formulations_agree(kind, group):
    grid = ag.get_grid(group)
    build, on_group, _, size = LAYERS[kind]
    torch.manual_seed(0)
    chunked = build(grid).double()
    full = build(grid).double()
    full.load_state_dict(chunked.state_dict())
    full.formulation = "full"
    assert chunked.formulation == "chunked" and chunked.out_channels > chunked.chunk_size
    x = _input(grid, on_group, chunked.in_channels, torch.float64, size).requires_grad_()
    results = []
    for layer in (chunked, full):
        out = layer(x)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        results.append((out.detach(), x.grad.clone(), [p.grad.clone() for p in layer.parameters()]))
        x.grad = None
    (out_c, gx_c, gp_c), (out_f, gx_f, gp_f) = results
    torch.testing.assert_close(out_c, out_f, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx_c, gx_f, rtol=1e-12, atol=1e-12)
    for grad_c, grad_f in zip(gp_c, gp_f):
        torch.testing.assert_close(grad_c, grad_f, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------- models

# Smallest inputs (with even sides at every pooling) per architecture of the models.
SIZES = {"rotMNIST": 28, "CIFAR10": 8, "PCam": 80}
DATA = {"rotMNIST": DataSpec("rotMNIST", 1, 10, 28, "rotMNIST"), "CIFAR10": DataSpec("CIFAR10", 3, 10, 32, "CIFAR10"),
        "PCam": DataSpec("PCam", 3, 2, 96, "PCam")}
ATTGCONV_MODELS = list_models(family="attgconv")
GROUP_MODELS = [name for name in ATTGCONV_MODELS if "p4" in name]


def _model_and_input(name: str, batch: int, dtype: torch.dtype) -> Tuple[nn.Module, torch.Tensor]:
    architecture = next(iter(get_model_spec(name).defaults))
    data = DATA[architecture]
    torch.manual_seed(0)
    model = create_model(name, config=None, data=data).to(dtype)
    size = SIZES[architecture]
    x = torch.randn(batch, data.in_channels, size, size, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return model, x


def _grid_of(name: str) -> ag.PlanarGrid:
    return ag.get_grid("p4m" if "p4m" in name else "p4")


def _generators(grid: ag.PlanarGrid) -> list:
    """The rotation by 90 degrees and, for p4m, a mirror: invariance to both is invariance to all."""
    mirrors = [element for element in grid.elements if grid.group.is_mirror(element)]
    return [grid.elements[1]] + mirrors[:1]


def _with_batch_statistics(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """``model`` in eval mode with batch-norm statistics of a random batch shaped like ``x``.

    Freshly built nets have running statistics (0, 1) that let activations explode or
    vanish through tens of layers (logits up to 1e27); estimated statistics keep the
    logits of order one, as in a trained net, so that relative errors measure round-off.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batch
    model.train()
    batch = torch.randn(2, *x.shape[1:], generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    with torch.no_grad():
        model(batch)
    return model.eval()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", GROUP_MODELS)
def test_model_logits_are_invariant(name, dtype):
    model, x = _model_and_input(name, 1, dtype)
    model = _with_batch_statistics(model, x)
    grid = _grid_of(name)
    assert_equivariant(model, x, grid.group, input_kind="image", output_kind="invariant",
                       elements=_generators(grid))


@pytest.mark.parametrize("name", ATTGCONV_MODELS)
def test_every_parameter_receives_a_gradient(name):
    model, x = _model_and_input(name, 2, torch.float32)
    model.train()
    model(x).square().sum().backward()
    missing = [key for key, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a (finite) gradient: {missing}"


def test_every_registered_model_is_tested():
    architectures = {next(iter(get_model_spec(name).defaults)) for name in ATTGCONV_MODELS}
    assert architectures <= set(SIZES), architectures - set(SIZES)


def test_too_small_input_is_refused_with_the_minimum():
    model = create_model("p4cnn", config=None, data=DATA["rotMNIST"])
    with pytest.raises(ValueError, match="28x28"):
        model(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="80x80"):
        create_model("p4_densenet", config=None, data=DataSpec("CIFAR10", 3, 10, 32, "CIFAR10"))


def test_wrong_input_layout_is_explained():
    layer = ag.GroupConv(ag.get_grid("p4"), 3, 4, 3)
    with pytest.raises(ValueError, match=r"C=3, G=4"):
        layer(torch.randn(1, 3, 8, 9, 9))
