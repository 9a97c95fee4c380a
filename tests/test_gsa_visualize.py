"""The visualisation module: attention maps, pixel and element bookkeeping, figures."""

from __future__ import annotations

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

import attgconv as ag  # noqa: E402
from g_selfatt import visualize as viz  # noqa: E402
from g_selfatt.groups import get_group  # noqa: E402
from g_selfatt.nn import (GroupLocalSelfAttention, GroupSelfAttention, LiftLocalSelfAttention,  # noqa: E402
                          LiftSelfAttention, whitening_init_)


def layer_of(kind: str, group_name: str, group_axis_index: str = "relative"):
    group = get_group(group_name)
    builders = {
        "lift global": lambda: LiftSelfAttention(group, 2, 4, 4, 2, 7, 0.0),
        "lift local": lambda: LiftLocalSelfAttention(group, 2, 4, 4, 2, 3, 0.0),
        "group global": lambda: GroupSelfAttention(group, 2, 3, 4, 2, 7, 0.0, group_axis_index=group_axis_index),
        "group local": lambda: GroupLocalSelfAttention(group, 2, 3, 4, 2, 3, 0.0,
                                                       group_axis_index=group_axis_index),
    }
    return whitening_init_(builders[kind]()).eval()


def input_of(layer) -> torch.Tensor:
    shape = (1, 2, 7, 7) if layer.lifting else (1, 2, layer.group.num_elements, 7, 7)
    return torch.randn(shape)


def test_element_labels():
    assert viz.element_labels(get_group("p4m")) == ["0°", "90°", "180°", "270°", "m 0°", "m 90°", "m 180°", "m 270°"]
    assert viz.element_labels(get_group("p8"))[1] == "45°"


def test_transform_pixel_follows_the_image_transform():
    group = get_group("p4m")
    for element in group.grid_exact():
        for pixel in [(0, 4), (2, 1), (3, 3)]:
            moved = viz.transform_pixel(group.transform_image, element, pixel, (5, 5))
            marker = torch.zeros(5, 5)
            marker[pixel] = 1
            assert group.transform_image(marker, element)[moved] == 1
    assert viz.transform_pixel(group.transform_image, 1, (0, 4), (5, 5)) == (0, 0)  # top right -> top left


def test_right_translate_inverts_the_right_action():
    group = get_group("p4m")
    table = group.cayley_table()
    for element in range(group.num_elements):
        for by in range(group.num_elements):
            assert viz.right_translate(group, int(table[element, by]), by) == element


@pytest.mark.parametrize("kind", ["lift global", "lift local", "group global", "group local"])
def test_attention_map_is_a_distribution_over_the_keys(kind):
    layer = layer_of(kind, "p4")
    x = input_of(layer)
    probs = layer.attention_probabilities(x)  # (B, N, V, G, H, W, M, K)
    torch.testing.assert_close(probs.sum(dim=(-2, -1)), torch.ones(probs.shape[:-2]))
    for pixel in [(0, 0), (3, 4), (6, 6)]:
        maps = viz.attention_map(layer, x, pixel, output_element=1, query_element=0 if layer.lifting else 2,
                                 head=1)
        assert maps.shape == (1 if layer.lifting else 4, 7, 7)
        torch.testing.assert_close(maps.sum(), torch.tensor(1.0))
        if layer.local:
            row, col = pixel
            outside = torch.ones(7, 7, dtype=torch.bool)
            outside[max(0, row - 1):row + 2, max(0, col - 1):col + 2] = False
            assert maps[:, outside].abs().max() == 0
            # The key at offset (+1, -1) of the neighbourhood is entry (2, 0) of the 3 x 3 patch.
            if row < 6 and col > 0:
                expected = probs[0, 1, 1, 0 if layer.lifting else 2, row, col, :, 2 * 3 + 0]
                torch.testing.assert_close(maps[:, row + 1, col - 1], expected)


@pytest.mark.parametrize("kind", ["lift global", "lift local", "group global", "group local"])
@pytest.mark.parametrize("group_name", ["p4", "p4m"])
def test_attention_maps_move_with_the_input(kind, group_name):
    layer = layer_of(kind, group_name)
    x = input_of(layer)
    for element in (1, 5) if group_name == "p4m" else (1, 3):
        figure, error = viz.plot_attention_equivariance(layer, x, element, (1, 4), output_element=1,
                                                        query_element=2)
        assert error < 1e-5
        matplotlib.pyplot.close(figure)


def test_original_group_axis_index_moves_attention_wrongly():
    layer = layer_of("group local", "p4", group_axis_index="original")
    figure, error = viz.plot_attention_equivariance(layer, input_of(layer), 1, (3, 3), output_element=1,
                                                    query_element=2)
    matplotlib.pyplot.close(figure)
    assert error > 1e-3


def test_plot_equivariance_reports_the_error():
    group = get_group("p4")
    layer = layer_of("lift local", "p4")
    x = torch.randn(1, 2, 7, 7)
    figure, error = viz.plot_equivariance(layer, x, group, 1, input_kind="image")
    assert error < 1e-5
    assert len(figure.axes) == 3 * 4 + 1  # three rows of four elements and a colour bar
    matplotlib.pyplot.close(figure)
    z2_layer = layer_of("lift local", "z2")
    rotate = lambda t, _: group.transform_image(t, 1)  # noqa: E731
    figure, error = viz.plot_equivariance(z2_layer, x, get_group("z2"), 0, input_kind="image",
                                          transform_in=rotate, transform_out=rotate)
    assert error > 1e-2
    matplotlib.pyplot.close(figure)


def test_record_outputs_joins_the_blocks_of_a_chunked_layer():
    grid = ag.get_grid("p4")
    torch.manual_seed(0)
    chunked = ag.AttentiveGroupConv(grid, 3, 5, 3, padding=1, chunk_size=2,
                                    spatial_attention=ag.GroupSpatialAttention(grid, 5, 3))
    full = ag.AttentiveGroupConv(grid, 3, 5, 3, padding=1, formulation="full",
                                 spatial_attention=ag.GroupSpatialAttention(grid, 5, 3))
    full.load_state_dict(chunked.state_dict())
    x = torch.randn(2, 3, 4, 6, 6)
    recorded = viz.record_outputs(chunked, x, (ag.GroupSpatialAttention,))
    reference = viz.record_outputs(full, x, (ag.GroupSpatialAttention,))
    assert list(recorded) == ["spatial_attention"]
    assert recorded["spatial_attention"].shape == (2, 5, 4, 1, 4, 6, 6)  # (B, O, G, 1, K, H, W)
    torch.testing.assert_close(recorded["spatial_attention"], reference["spatial_attention"])
    assert not chunked.spatial_attention._forward_hooks  # the hooks are removed


def test_plot_error_vs_angle_and_images():
    figure = viz.plot_error_vs_angle({"p4": {0.0: 0.0, 45.0: 0.1, 90.0: 1e-7}}, title="t",
                                     styles={"p4": {"linestyle": "--"}})
    assert figure.axes[0].get_yscale() == "log"
    matplotlib.pyplot.close(figure)
    figure = viz.plot_images({"a": torch.zeros(1, 4, 4), "b": torch.ones(4, 4)})
    assert [ax.get_title() for ax in figure.axes] == ["a", "b"]
    matplotlib.pyplot.close(figure)
