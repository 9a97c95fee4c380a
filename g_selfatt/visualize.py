"""Pictures of group feature maps, attention maps and equivariance errors.

The functions here turn tensors into matplotlib figures; matplotlib is imported
only when a figure is made, so importing :mod:`g_selfatt` does not need it. The
demo notebooks and ``tools/equivariance_report.py`` draw all their figures with
these functions.

Letters as elsewhere: a group feature map is ``(G, H, W)`` (one channel of
``(B, C, G, H, W)``); an attention map is ``(M, H, W)``, the attention of one
query over the key positions ``(H, W)`` and key group elements ``M``.

Equivariance made visible: for a layer with the law ``SA(u . f) = u . SA(f)``,
the row ``SA(u . f)`` of :func:`plot_group_feature_maps` equals the row
``u . SA(f)``: the same pictures, rotated (or mirrored) and moved along the
group axis. :func:`attention_map` satisfies the same law for a query moved with
the input (see :meth:`g_selfatt.nn.SelfAttentionCore.attention_probabilities`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type

import torch
from torch import Tensor, nn

from g_selfatt.groups import Group
from g_selfatt.testing import Transform, relative_error, transforms_for

Pixel = Tuple[int, int]


def _pyplot():
    """matplotlib's pyplot, or an ImportError that says how to get it."""
    try:
        from matplotlib import pyplot
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("g_selfatt.visualize needs matplotlib: pip install matplotlib") from error
    return pyplot


# ------------------------------------------------------------------ group elements


def element_labels(group: Group) -> List[str]:
    """A short label per group element: its rotation in degrees, ``m`` for a mirror (``"m 90"``)."""
    labels = []
    for matrix in group.matrices():
        mirrored = bool(torch.det(matrix) < 0)
        rotation = matrix @ torch.diag(torch.tensor([1.0, -1.0 if mirrored else 1.0], dtype=torch.float64))
        degrees = math.degrees(math.atan2(float(rotation[1, 0]), float(rotation[0, 0]))) % 360
        text = f"{degrees:.4g}\N{DEGREE SIGN}"
        labels.append(f"m {text}" if mirrored else text)
    return labels


def transform_pixel(transform_image: Callable[[Tensor, int], Tensor], element: int, pixel: Pixel,
                    size: Tuple[int, int]) -> Pixel:
    """Where an image transform moves a pixel.

    Args:
        transform_image: e.g. :meth:`g_selfatt.groups.Group.transform_image`.
        element: the element index passed to ``transform_image``.
        pixel: ``(row, col)`` in the input.
        size: ``(H, W)`` of the image.

    Returns:
        ``(row, col)`` of the same point in the transformed image.
    """
    marker = torch.zeros(size, dtype=torch.float64)
    marker[pixel] = 1.0
    moved = transform_image(marker, element)
    row, col = divmod(int(moved.argmax()), moved.shape[-1])
    return row, col


def right_translate(group: Group, element: int, by: int) -> int:
    """The index of ``element by^-1``: where element ``element`` of ``f`` sits in ``by . f``.

    Group self-attention feature maps transform as ``[u . f](g) = f(g u)``, so the value
    at element ``g`` of ``f`` is found at ``g u^-1`` of ``u . f``.
    """
    return int(group.cayley_table()[element, group.inverse_indices()[by]])


# ------------------------------------------------------------------ attention


def attention_map(layer: nn.Module, x: Tensor, pixel: Pixel, *, output_element: int = 0,
                  query_element: int = 0, head: Optional[int] = None, sample: int = 0) -> Tensor:
    """The attention of one query over the key positions and key group elements.

    Args:
        layer: a self-attention layer (:class:`g_selfatt.nn.SelfAttentionCore`).
        x: its input, ``(B, C, H, W)`` or ``(B, C, G, H, W)``.
        pixel: ``(row, col)`` of the query.
        output_element: the output element ``v`` whose attention is shown.
        query_element: the query's group element ``g`` (0 for lifting layers).
        head: one head, or ``None`` for the mean over heads.
        sample: which image of the batch.

    Returns:
        ``(M, H, W)`` probabilities (a local layer's neighbourhood placed around the query,
        zero elsewhere); they sum to 1 (to 1 per head before the mean).
    """
    with torch.no_grad():
        probs = layer.attention_probabilities(x)[sample]  # (N, V, G, H, W, M, K)
    return _query_map(layer, probs[:, output_element, query_element], pixel, head)


def _query_map(layer: nn.Module, probs: Tensor, pixel: Pixel, head: Optional[int] = None) -> Tensor:
    """``(N, H, W, M, K)`` probabilities of one (output, query) element pair -> ``(M, H, W)`` at ``pixel``."""
    height, width = probs.shape[1:3]
    probs = probs[:, pixel[0], pixel[1]]  # (N, M, K)
    probs = probs.mean(dim=0) if head is None else probs[head]  # (M, K)
    if not layer.local:
        return probs.view(-1, height, width)  # (M, H, W)
    return _place_neighbourhood(probs, pixel, layer.patch_size, (height, width))


def _place_neighbourhood(probs: Tensor, pixel: Pixel, patch_size: int, size: Tuple[int, int]) -> Tensor:
    """``(M, P P)`` neighbourhood weights -> ``(M, H, W)`` image around ``pixel``."""
    radius = patch_size // 2
    height, width = size
    canvas = probs.new_zeros(probs.shape[0], height + 2 * radius, width + 2 * radius)  # (M, H + 2r, W + 2r)
    row, col = pixel
    canvas[:, row:row + patch_size, col:col + patch_size] = probs.view(-1, patch_size, patch_size)
    return canvas[:, radius:radius + height, radius:radius + width]


def attention_maps(layer: nn.Module, x: Tensor, pixel: Pixel, *, output_element: int = 0,
                   query_element: int = 0) -> Tensor:
    """The attention maps that one query of the first image shows per column of a picture, ``(G', H, W)``.

    For a lifting layer (one key element) the maps of every output element ``v`` are
    stacked, ``(V, H, W)``; for a group layer the map of ``(output_element, query_element)``
    over the key elements, ``(M, H, W)``. Either way the maps of ``u . f`` at the moved
    query are ``u`` applied to the maps of ``f`` (:meth:`Group.transform_feature_map`).
    """
    with torch.no_grad():
        probs = layer.attention_probabilities(x)[0]  # (N, V, G, H, W, M, K)
    if layer.lifting:
        return torch.cat([_query_map(layer, probs[:, v, 0], pixel) for v in range(probs.shape[1])])  # (V, H, W)
    return _query_map(layer, probs[:, output_element, query_element], pixel)


def record_outputs(model: nn.Module, x: Tensor, module_types: Tuple[Type[nn.Module], ...],
                   dim: int = 1) -> Dict[str, Tensor]:
    """Runs ``model(x)`` and returns the output of every submodule of the given types.

    A module called several times in one forward pass (e.g. once per block of output
    channels) has its outputs concatenated along ``dim``.

    Returns:
        ``{module name: output}`` in the order the modules ran.
    """
    outputs: Dict[str, List[Tensor]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, module_types):
            def hook(_module, _inputs, output, name=name):
                outputs.setdefault(name, []).append(output.detach())
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts, dim=dim) for name, parts in outputs.items()}


# ------------------------------------------------------------------ figures


def _shared_limits(maps: Iterable[Tensor], symmetric: bool) -> Tuple[float, float]:
    values = torch.cat([m.detach().flatten().float().cpu() for m in maps])
    if symmetric:
        bound = float(values.abs().max())
        return -bound, bound
    return float(values.min()), float(values.max())


def plot_images(images: Mapping[str, Tensor], *, cmap: str = "gray", size: float = 2.2):
    """One row of images ``(H, W)`` (or ``(1, H, W)``), each titled by its key.

    Returns:
        The matplotlib figure.
    """
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(images), figsize=(size * len(images), size), squeeze=False)
    for ax, (title, image) in zip(axes[0], images.items()):
        ax.imshow(image.detach().squeeze().float().cpu().numpy(), cmap=cmap)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    figure.tight_layout()
    return figure


def plot_group_feature_maps(rows: Mapping[str, Tensor], labels: Sequence[str], *, cmap: str = "RdBu_r",
                            symmetric: bool = True, size: float = 1.6,
                            markers: Optional[Mapping[str, Pixel]] = None):
    """Feature maps over the group, one row per map and one column per group element.

    All panels share one colour scale, so equal pictures mean equal values.

    Args:
        rows: ``{row title: (G, H, W) tensor}``.
        labels: one label per group element (:func:`element_labels`).
        cmap: colour map.
        symmetric: a colour scale symmetric around 0 (for signed features).
        size: inches per panel.
        markers: ``{row title: (row, col)}`` pixels to mark with a cross (e.g. a query).

    Returns:
        The matplotlib figure.
    """
    plt = _pyplot()
    columns = max(m.shape[0] for m in rows.values())
    vmin, vmax = _shared_limits(rows.values(), symmetric)
    figure, axes = plt.subplots(len(rows), columns, figsize=(size * columns + 1.2, size * len(rows)),
                                squeeze=False)
    image = None
    for r, (title, maps) in enumerate(rows.items()):
        for c in range(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= maps.shape[0]:
                ax.axis("off")
                continue
            image = ax.imshow(maps[c].detach().float().cpu().numpy(), cmap=cmap, vmin=vmin, vmax=vmax)
            if markers and title in markers:
                ax.plot(markers[title][1], markers[title][0], "x", color="black", markersize=6)
            if r == 0:
                ax.set_title(labels[c] if c < len(labels) else str(c), fontsize=9)
        axes[r, 0].set_ylabel(title, fontsize=9)
    figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
    return figure


def plot_equivariance(fn: Callable[[Tensor], Tensor], x: Tensor, group: Group, element: int, *,
                      input_kind: str, output_kind: str = "group", channel: Optional[int] = None,
                      transform_in: Optional[Transform] = None, transform_out: Optional[Transform] = None,
                      labels: Optional[Sequence[str]] = None):
    """Feature maps of an input and of its transform side by side.

    Rows: ``f(x)``, ``f(u x)`` and ``u . f(x)``; the last two are equal for an equivariant
    ``f``. One channel of the first sample is shown (by default the one that varies most).

    Args:
        fn: the map, e.g. a layer in eval mode.
        x: the input (a batch).
        group: the group; ``element`` indexes its elements.
        element: ``u``.
        input_kind, output_kind: as for :func:`g_selfatt.testing.assert_equivariant`
            (the output must be a group feature map).
        channel: the output channel to show.
        transform_in, transform_out: override the actions (e.g. the left action of attgconv).
        labels: column titles (default :func:`element_labels`).

    Returns:
        ``(figure, error)``: the figure and ``max |f(u x) - u . f(x)| / max |f(x)|``.
    """
    transform_in = transform_in or transforms_for(group, input_kind)
    transform_out = transform_out or transforms_for(group, output_kind)
    with torch.no_grad():
        out = fn(x)  # (B, C, G, H, W)
        out_transformed = fn(transform_in(x, element))
    expected = transform_out(out, element)
    if channel is None:
        channel = int(out[0].flatten(1).std(dim=1).argmax())
    rows = {"f(x)": out[0, channel], "f(u x)": out_transformed[0, channel], "u . f(x)": expected[0, channel]}
    figure = plot_group_feature_maps(rows, labels or element_labels(group), cmap="viridis", symmetric=False)
    figure.suptitle(f"channel {channel}; u = {element_labels(group)[element]}", fontsize=10)
    return figure, relative_error(out_transformed, expected)


def plot_attention_equivariance(layer: nn.Module, x: Tensor, element: int, pixel: Pixel, *,
                                output_element: int = 0, query_element: int = 0):
    """Attention maps of a query for an input and, at the moved query, for its transform.

    Rows: the maps of ``x`` (:func:`attention_maps`), those of ``u x`` at the query moved
    with the input (pixel ``M_u i``, elements ``v u^-1`` and ``g u^-1``), and ``u`` applied
    to the first row; the last two are equal for an equivariant layer.

    Args:
        layer: a self-attention layer in eval mode.
        x: its input, ``(B, C, H, W)`` or ``(B, C, G, H, W)``.
        element: ``u``, an element of ``layer.group`` that maps the grid onto itself.
        pixel: the query pixel in ``x``.
        output_element, query_element: ``v`` and ``g`` of the query (group layers).

    Returns:
        ``(figure, error)``, the error relative to the largest attention weight.
    """
    group = layer.group
    transform_in = transforms_for(group, "image" if layer.lifting else "group")
    moved_pixel = transform_pixel(group.transform_image, element, pixel, tuple(x.shape[-2:]))
    maps = attention_maps(layer, x, pixel, output_element=output_element, query_element=query_element)
    moved = attention_maps(layer, transform_in(x, element), moved_pixel,
                           output_element=right_translate(group, output_element, element),
                           query_element=right_translate(group, query_element, element))
    expected = transforms_for(group, "group")(maps, element)
    rows = {"x": maps, "u x": moved, "u . (maps of x)": expected}
    markers = {"x": pixel, "u x": moved_pixel, "u . (maps of x)": moved_pixel}
    figure = plot_group_feature_maps(rows, element_labels(group), cmap="viridis", symmetric=False, markers=markers)
    what = "output element v" if layer.lifting else "key element m"
    figure.suptitle(f"attention of the query x; columns: {what}; u = {element_labels(group)[element]}", fontsize=10)
    return figure, relative_error(moved, expected)


def plot_error_vs_angle(curves: Mapping[str, Mapping[float, float]], *, title: str = "",
                        styles: Optional[Mapping[str, Mapping[str, Any]]] = None, floor: float = 1e-17, ax=None,
                        legend: bool = True):
    """Equivariance error against the rotation angle, one line per curve, log scale.

    Args:
        curves: ``{label: {angle in degrees: relative error}}`` (e.g. from
            :func:`g_selfatt.testing.rotation_errors`).
        title: the axes' title.
        styles: optional line properties per label (e.g. ``{"linestyle": "--", "color": "C1"}``).
        floor: errors below it are drawn at it (exact zeros have no logarithm).
        ax: draw into these axes instead of a new figure.
        legend: draw a legend in the axes.

    Returns:
        The matplotlib figure.
    """
    if ax is None:
        figure, ax = _pyplot().subplots(figsize=(6.5, 3.6))
    else:
        figure = ax.figure
    for label, curve in curves.items():
        angles = sorted(curve)
        ax.plot(angles, [max(curve[a], floor) for a in angles], marker=".", label=label,
                **(styles or {}).get(label, {}))
    ax.set_yscale("log")
    ax.set(xlabel="rotation of the input (degrees)", ylabel="relative error", title=title)
    ax.set_xticks(range(0, 361, 45))
    ax.grid(alpha=0.3, which="both")
    if legend:
        ax.legend(fontsize=8, ncol=2)
    figure.tight_layout()
    return figure
