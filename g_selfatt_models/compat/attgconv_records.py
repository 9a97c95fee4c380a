"""Rebuilding modules of the original attentive G-CNN code (``att_gconvs``).

A *record* describes one original module: its class name (``record["module"]``)
and constructor arguments (``record["kwargs"]``), with the conventions of the
parity data: ``group`` is ``"SE2"`` (p4) or ``"E2"`` (p4m), ``h_grid`` /
``input_h_grid`` the number of group elements, nested attention modules are
``{"module": name, "kwargs": {...}}`` dicts (or ``None``), and the 1x1 attention
of Romero & Hoogendoorn (2020) is named ``attgconv.RomHog_attention.<class>``.

:func:`build_from_record` returns the equivalent module of this project and
:func:`convert_state_dict` maps an original ``state_dict`` onto it (parameter
names agree except for the ``Z2CNN`` baseline, a ``module.`` prefix is dropped).

Behaviours of the original reproduced here on purpose:

* ``ChannelAttentionGG`` shifts its input-group axis cyclically, which is the group
  action for p4 but not for p4m (``permutations="cyclic"``).
* ``AttConvGG`` weighs its sum with ``2 pi / |H|``, the other group convolutions
  with the ``haar_meas`` of the group (see :class:`attgconv.conv.GroupConv`).
* ``A_P4AllCNNC`` and ``A_Ch_P4AllCNNC`` downsample with stride-2 convolutions (their forward
  reads ``really_equivariant``, which their constructors never set, so the original runs them only
  with it set to False); ``A_Sp_P4AllCNNC`` strides *and* max-pools (its constructor sets it True);
  All-CNN-C nets ``squeeze()`` their output;
  ``fA_P4MResNet`` mirrors its input along the width first. (The zoo builds the same networks
  under their CLI names with ``original_architecture=True``.)

Layer and attention records are built by the original classes of :mod:`attgconv`'s
compatibility modules (``attgconv.layers``, ``attgconv.attention_layers``,
``attgconv.RomHog_attention``), model records by the model zoo's one builder per architecture
(:func:`~g_selfatt_models.attgconv_zoo.zoo.all_cnn_c` and its siblings) and, for ``Z2CNN``,
:class:`g_selfatt_models.cnn.CNN`.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Mapping, Optional, Union

from torch import Tensor, nn

from attgconv import RomHog_attention, attention_layers
from g_selfatt_models.attgconv_zoo import zoo
from g_selfatt_models.checkpoints import strip_wrapper_prefixes
from g_selfatt_models.cnn import CNN
from g_selfatt_models.compat.state_dicts import convert_z2cnn_checkpoint

ROMHOG = "attgconv.RomHog_attention."
# The original classes a record may name, from attgconv's modules of the original API.
_LAYERS = ("ConvRnRnLayer", "ConvRnGLayer", "ConvGGLayer", "AttConvRnGLayer", "AttConvGGLayer", "fAttConvRnGLayer",
           "fAttConvGGLayer")
_ATTENTION = ("ChannelAttention", "ChannelAttentionGG", "SpatialAttention", "SpatialAttentionGG",
              "fChannelAttention", "fChannelAttentionGG", "fSpatialAttention", "fSpatialAttentionGG")
_ROMHOG = ("fSpatialAttention", "fSpatialAttentionGG")

def _attention(spec: Optional[Mapping[str, Any]]) -> Optional[nn.Module]:
    return None if spec is None else build_from_record(spec)


def _original(cls: type) -> Callable[[Mapping[str, Any]], nn.Module]:
    """Builds the original class ``cls`` of :mod:`attgconv` from a record's keyword arguments."""

    def build(kw: Mapping[str, Any]) -> nn.Module:
        kw = dict(kw)
        for key in ("channel_attention", "spatial_attention"):
            if key in kw:
                kw[key] = _attention(kw[key])
        return cls(**kw)

    return build


# ------------------------------------------------------------ model builders


def _z2cnn(kw: Mapping[str, Any]) -> nn.Module:
    return CNN(in_channels=1, num_channels=20, bn_epsilon=2e-5, dropout_rate=0.3,
               use_bias=kw.get("use_bias", False))


def _rotmnist(attention: str) -> Callable[[Mapping[str, Any]], nn.Module]:
    return lambda kw: zoo.rotmnist_p4cnn(attention)


def _squeeze_output(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
    """Forward hook: the original All-CNN-C nets end with ``.squeeze()``."""
    return output.squeeze()


def _allcnnc(grid_name: Optional[str], attention: str = "none"):
    def build(kw: Mapping[str, Any]) -> nn.Module:
        # Only the plain AllCNNC uses its use_bias argument; the group versions ignore it.
        bias = grid_name is None and kw.get("use_bias", False)
        downsampling = zoo.ORIGINAL_ALLCNNC_DOWNSAMPLING.get(attention, "pool")
        model = zoo.all_cnn_c(grid_name, attention, bias=bias, downsampling=downsampling)
        model.register_forward_hook(_squeeze_output)
        return model

    return build


def _resnet(grid_name: Optional[str], attention: str = "none", mirror_input: bool = False):
    def build(kw: Mapping[str, Any]) -> nn.Module:
        widths = tuple(kw.get(key, default) for key, default in zip(("nc32", "nc16", "nc8"), zoo.RESNET_WIDTHS[grid_name]))
        return zoo.resnet_44(grid_name, attention, num_blocks=kw.get("num_blocks", 7), widths=widths,
                             mirror_input=mirror_input)

    return build


def _densenet(grid_name: Optional[str], attention: str = "none"):
    # The original DenseNet classes default to 24 channels, where the experiments passed their own.
    return lambda kw: zoo.dense_net(grid_name, attention, num_blocks=kw.get("num_blocks", 5),
                                    n_channels=kw.get("n_channels", 24))


BUILDERS: Dict[str, Callable[[Mapping[str, Any]], nn.Module]] = {
    # layers
    # layers and attention: the original classes of attgconv (attgconv.layers, .attention_layers)
    # (the module attgconv.layers; the package attribute of that name is its factory class)
    **{name: _original(getattr(importlib.import_module("attgconv.layers"), name)) for name in _LAYERS},
    **{name: _original(getattr(attention_layers, name)) for name in _ATTENTION},
    **{ROMHOG + name: _original(getattr(RomHog_attention, name)) for name in _ROMHOG},
    # rotMNIST
    "Z2CNN": _z2cnn,
    "P4CNN": _rotmnist("none"),
    "A_P4CNN": _rotmnist("full"),
    "A_Ch_P4CNN": _rotmnist("channel"),
    "A_Sp_P4CNN": _rotmnist("spatial"),
    "fA_P4CNN": _rotmnist("feature"),
    "RomHog_fA_P4CNN": _rotmnist("romhog"),
    # CIFAR-10
    "AllCNNC": _allcnnc(None),
    "P4AllCNNC": _allcnnc("p4"),
    "fA_P4AllCNNC": _allcnnc("p4", "feature"),
    "P4MAllCNNC": _allcnnc("p4m"),
    "fA_P4MAllCNNC": _allcnnc("p4m", "feature"),
    "A_P4AllCNNC": _allcnnc("p4", "full"),
    "A_Ch_P4AllCNNC": _allcnnc("p4", "channel"),
    "A_Sp_P4AllCNNC": _allcnnc("p4", "spatial"),
    "ResNet": _resnet(None),
    "P4MResNet": _resnet("p4m"),
    "fA_P4MResNet": _resnet("p4m", "feature", mirror_input=True),
    # PCam
    "DenseNet": _densenet(None),
    "P4DenseNet": _densenet("p4"),
    "P4MDenseNet": _densenet("p4m"),
    "fA_P4DenseNet": _densenet("p4", "feature"),
    "fA_P4MDenseNet": _densenet("p4m", "feature"),
}


def build_from_record(record: Mapping[str, Any]) -> nn.Module:
    """The module of this project equivalent to the original module of ``record``.

    Args:
        record: a dict with ``module`` (the original class name) and ``kwargs``.

    Raises:
        ValueError: for an unknown class or unsupported arguments.
    """
    name = record["module"]
    if name not in BUILDERS:
        raise ValueError(f"Unknown original module {name!r}; expected one of {sorted(BUILDERS)}.")
    return BUILDERS[name](dict(record.get("kwargs") or {}))


# Key converters of the modules whose parameter names differ from the original's.
CONVERTERS: Dict[str, Callable[[Mapping[str, Tensor]], Dict[str, Tensor]]] = {"Z2CNN": convert_z2cnn_checkpoint}


def convert_state_dict(record_or_module_name: Union[str, Mapping[str, Any]],
                       state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Maps an original ``state_dict`` onto the module :func:`build_from_record` builds.

    Args:
        record_or_module_name: the record, or the original class name.
        state_dict: the original state_dict (wrapper prefixes such as ``module.`` are removed).
    """
    name = record_or_module_name if isinstance(record_or_module_name, str) else record_or_module_name["module"]
    state_dict = strip_wrapper_prefixes(state_dict)
    return CONVERTERS[name](state_dict) if name in CONVERTERS else dict(state_dict)
