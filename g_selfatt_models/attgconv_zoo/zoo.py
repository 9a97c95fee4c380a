"""Attentive G-CNN models registered under the command-line names of the original experiments.

rotMNIST (the original's own names): ``p4cnn``, ``att_p4cnn`` (full attention),
``ch_att_p4cnn`` (channel only), ``sp_att_p4cnn`` (spatial only), ``f_att_p4cnn``
(feature-map attention), ``RomHog_att_p4cnn`` (the original's rebuttal experiment,
``RomHog_fA_P4CNN``: feature-map attention with 1x1 spatial attention). The plain ``z2cnn`` baseline is registered with the GSA
models (:mod:`g_selfatt_models.gsa_zoo`).

CIFAR-10 and PCam follow one pattern, that of the original ``--model`` choices::

    [<attention>_][<group>_]<architecture>

    attention     ""  plain | att  full (channel + spatial) | ch_att  channel only
                  | sp_att  spatial only | f_att  feature-map attention ("fA")
    group         ""  no symmetry (plain CNN) | p4 | p4m
    architecture  allcnnc (CIFAR-10) | resnet44 (CIFAR-10) | densenet (PCam)

Each model is the function of its name below (``f_att_p4m_densenet``, ...), registered by
:func:`_zoo_model`, which reads the attention, group and architecture from that name.

Every model accepts any number of input channels and classes
(``data.in_channels``, ``data.num_classes``) and raises a ValueError naming the
minimum image side where an architecture cannot shrink that far (rotMNIST CNN:
28, DenseNet: 80); each registers that side as ``min_image_size``, to which the
runner enlarges smaller images. The full attentive All-CNN-C here downsamples with max-pools
like the other All-CNN-C models and uses the memory-lean ``"chunked"`` formulation;
``config.attention_formulation = "full"`` selects the original one.

``config.original_architecture = True`` builds, for each name, the network the original
experiment scripts built for it (:data:`ORIGINAL_ALLCNNC_DOWNSAMPLING`,
:data:`ORIGINAL_ATTENTION`, the mirrored input of ``f_att_p4m_resnet44``); the other names are
already the original networks.

``defaults`` are the hyper-parameters of the paper and the original scripts, per
architecture (``sched_decay_factor`` divides the learning rate; the plateau
scheduler of PCam watches the validation accuracy with ``sched_patience`` epochs;
the CIFAR-10 runs train with random crops and flips, as the authors' released run did).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from attgconv import get_grid
from g_selfatt_models import protocols
from g_selfatt_models.hyperparameters import TrainingHyperParameters
from g_selfatt_models.attgconv_zoo.layers import LayerFactory
from g_selfatt_models.attgconv_zoo.networks import AllCNNC, DenseNet, ResNet, RotMNISTCNN
from g_selfatt_models.registry import Builder, DataSpec, register_model

# The original scripts' hyper-parameters; the fields not given keep the defaults of
# TrainingHyperParameters.
_Hyper = functools.partial(TrainingHyperParameters, optimizer_momentum=0.0, scheduler="constant",
                           sched_decay_steps=(), sched_decay_factor=1.0)
DEFAULTS: Dict[str, TrainingHyperParameters] = {
    "rotMNIST": _Hyper(optimizer="Adam", lr=1e-3, weight_decay=1e-4, batch_size=128, epochs=100),
    "allcnnc": _Hyper(optimizer="SGD", optimizer_momentum=0.9, lr=0.05, weight_decay=1e-3,
                      batch_size=128, epochs=350, scheduler="multistep", sched_decay_steps=(200, 250, 300),
                      sched_decay_factor=10.0, augment=True),
    "resnet44": _Hyper(optimizer="SGD", optimizer_momentum=0.9, lr=0.05, weight_decay=0.0,
                       batch_size=128, epochs=300, scheduler="multistep", sched_decay_steps=(50, 100, 150),
                       sched_decay_factor=10.0, augment=True),
    "densenet": _Hyper(optimizer="Adam", lr=1e-3, weight_decay=1e-4, batch_size=64, epochs=100,
                       scheduler="plateau", sched_decay_factor=2.0, sched_patience=20),
}

# The smallest image side of each architecture (the runner enlarges smaller images to it): valid
# convolutions shrink the images of the rotMNIST CNN and of DenseNet; All-CNN-C and ResNet44 pad
# their convolutions and pool twice by 2.
MIN_IMAGE_SIZES = {"rotMNIST": RotMNISTCNN.min_size, "allcnnc": AllCNNC.min_size, "resnet44": ResNet.min_size,
                   "densenet": DenseNet.minimum_input_size(5)}

ATTENTION_PREFIXES = {"": "none", "att_": "full", "ch_att_": "channel", "sp_att_": "spatial", "f_att_": "feature",
                      "RomHog_att_": "romhog"}


# The downsampling of the original attentive All-CNN-C classes (A_P4AllCNNC, A_Ch_P4AllCNNC,
# A_Sp_P4AllCNNC): their forward reads an attribute their constructors never set, so they ran
# with it False (stride-2 convolutions), except A_Sp_, which sets it and so strides *and* pools.
# (The original CIFAR-10 script had these three names commented out, as too large for its GPUs.)
ORIGINAL_ALLCNNC_DOWNSAMPLING = {"full": "stride", "channel": "stride", "spatial": "stride_and_pool"}
# (architecture, group, attention) -> the attention the original script built for that name:
# its PCam script trained a plain P4MDenseNet under the name f_att_p4m_densenet.
ORIGINAL_ATTENTION = {("densenet", "p4m", "feature"): "none"}


def _as_original(config: Any) -> bool:
    """Whether ``config`` asks for the original scripts' network (``original_architecture``)."""
    return bool(getattr(config, "original_architecture", False))


def _layers(group: Optional[str], attention: str, wscale: float, formulation: str, bias: bool = False
            ) -> LayerFactory:
    return LayerFactory(None if group is None else get_grid(group), attention, wscale, wscale, formulation, bias=bias)


def _inputs(config: Any, data: DataSpec, minimum: int, name: str) -> Dict[str, Any]:
    """The builders' data and configuration arguments; raises where the images are too small."""
    if data.image_size < minimum:
        raise ValueError(f"{name} needs images of at least {minimum}x{minimum} pixels; "
                         f"{data.name} has {data.image_size}x{data.image_size}.")
    return dict(in_channels=data.in_channels, num_classes=data.num_classes,
                formulation=getattr(config, "attention_formulation", "chunked"))


ARCHITECTURE_DATASETS = {"rotMNIST": "rotMNIST", "allcnnc": "CIFAR10", "resnet44": "CIFAR10", "densenet": "PCam"}


def parse_name(name: str) -> Tuple[str, Optional[str], str]:
    """``(attention, group, architecture)`` of a zoo name ``[<attention>_][<group>_]<architecture>``.

    ``p4cnn`` and its attentive variants are the rotMNIST architecture on p4.
    """
    prefix = max((p for p in ATTENTION_PREFIXES if name.startswith(p)), key=len)
    rest = name[len(prefix):]
    if rest == "p4cnn":
        return ATTENTION_PREFIXES[prefix], "p4", "rotMNIST"
    group, _, architecture = rest.rpartition("_")
    if architecture not in ARCHITECTURE_DATASETS or group not in ("", "p4", "p4m"):
        raise ValueError(f"{name!r} does not follow [<attention>_][<group>_]<architecture>.")
    return ATTENTION_PREFIXES[prefix], group or None, architecture


def _zoo_model(builder: Builder) -> Builder:
    """Registers an attentive G-CNN builder under its own name, described and defaulted by that name."""
    attention, group, architecture = parse_name(builder.__name__)
    dataset = ARCHITECTURE_DATASETS[architecture]
    plain_name = "p4cnn" if architecture == "rotMNIST" else f"{group}_{architecture}" if group else architecture
    defaults = {dataset: DEFAULTS[architecture]}
    if architecture == "rotMNIST":  # the rotMNIST CNNs also train on rotMNIST5k, under its protocol
        defaults["rotMNIST5k"] = protocols.ROTMNIST5K
    return register_model(
        family="attgconv", defaults=defaults, min_image_size=MIN_IMAGE_SIZES[architecture],
        description=(f"rotMNIST P4CNN, attention: {attention}" if architecture == "rotMNIST" else
                     f"{dataset} {architecture} on {group or 'Z2'}, attention: {attention}"),
        plain_model="" if attention == "none" else plain_name,
    )(builder)


# --------------------------------------------------------------------- rotMNIST


def rotmnist_p4cnn(attention: str, *, in_channels: int = 1, num_classes: int = 10,
                   formulation: str = "chunked") -> RotMNISTCNN:
    """The rotMNIST P4CNN with ``attention`` (the feature-map variant lifts with dilation 4)."""
    return RotMNISTCNN(_layers("p4", attention, 1.0, formulation), in_channels, num_classes,
                       lifting_spatial_dilation=4 if attention == "feature" else 1)


def _p4cnn(config: Any, data: DataSpec, attention: str) -> nn.Module:
    return rotmnist_p4cnn(attention, **_inputs(config, data, RotMNISTCNN.min_size, "The rotMNIST G-CNN"))


@_zoo_model
def p4cnn(config: Any, data: DataSpec) -> nn.Module:
    return _p4cnn(config, data, "none")


@_zoo_model
def att_p4cnn(config: Any, data: DataSpec) -> nn.Module:
    return _p4cnn(config, data, "full")


@_zoo_model
def ch_att_p4cnn(config: Any, data: DataSpec) -> nn.Module:
    return _p4cnn(config, data, "channel")


@_zoo_model
def sp_att_p4cnn(config: Any, data: DataSpec) -> nn.Module:
    return _p4cnn(config, data, "spatial")


@_zoo_model
def f_att_p4cnn(config: Any, data: DataSpec) -> nn.Module:
    return _p4cnn(config, data, "feature")


@_zoo_model
def RomHog_att_p4cnn(config: Any, data: DataSpec) -> nn.Module:  # noqa: N802  (the original experiment's name)
    """The original's rebuttal model RomHog_fA_P4CNN: 1x1 feature-map attention (Romero & Hoogendoorn 2020)."""
    return _p4cnn(config, data, "romhog")


# -------------------------------------------------------------------- CIFAR-10

# Widths per group that keep the parameter count of the plain network.
ALLCNNC_WIDTHS = {None: 96, "p4": 48, "p4m": 32}
RESNET_WIDTHS = {None: (32, 64, 128), "p4m": (11, 23, 45)}


def all_cnn_c(group: Optional[str], attention: str, *, in_channels: int = 3, num_classes: int = 10,
              formulation: str = "chunked", bias: bool = False, downsampling: str = "pool") -> AllCNNC:
    """All-CNN-C on ``group`` (``None``: Z2) with ``attention``.

    ``bias`` puts biases in the plain convolutions; ``downsampling`` is one of
    :data:`~g_selfatt_models.attgconv_zoo.networks.DOWNSAMPLING` (``"pool"``: the equivariant one).
    """
    return AllCNNC(_layers(group, attention, 0.035, formulation, bias), in_channels, num_classes,
                   channels=ALLCNNC_WIDTHS[group], downsampling=downsampling)


def _allcnnc(config: Any, data: DataSpec, group: Optional[str], attention: str) -> nn.Module:
    downsampling = ORIGINAL_ALLCNNC_DOWNSAMPLING.get(attention, "pool") if _as_original(config) else "pool"
    return all_cnn_c(group, attention, downsampling=downsampling,
                     **_inputs(config, data, AllCNNC.min_size, "All-CNN-C"))


@_zoo_model
def allcnnc(config: Any, data: DataSpec) -> nn.Module:
    return _allcnnc(config, data, None, "none")


@_zoo_model
def p4_allcnnc(config: Any, data: DataSpec) -> nn.Module:
    return _allcnnc(config, data, "p4", "none")


@_zoo_model
def p4m_allcnnc(config: Any, data: DataSpec) -> nn.Module:
    return _allcnnc(config, data, "p4m", "none")


@_zoo_model
def att_p4_allcnnc(config: Any, data: DataSpec) -> nn.Module:
    return _allcnnc(config, data, "p4", "full")


@_zoo_model
def ch_att_p4_allcnnc(config: Any, data: DataSpec) -> nn.Module:
    return _allcnnc(config, data, "p4", "channel")


@_zoo_model
def sp_att_p4_allcnnc(config: Any, data: DataSpec) -> nn.Module:
    return _allcnnc(config, data, "p4", "spatial")


@_zoo_model
def f_att_p4_allcnnc(config: Any, data: DataSpec) -> nn.Module:
    return _allcnnc(config, data, "p4", "feature")


@_zoo_model
def f_att_p4m_allcnnc(config: Any, data: DataSpec) -> nn.Module:
    return _allcnnc(config, data, "p4m", "feature")


def _mirror_width(module: nn.Module, inputs: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    """Forward pre-hook: mirrors the input images along their width, as the original fA_P4MResNet."""
    return (torch.flip(inputs[0], dims=[-1]),) + tuple(inputs[1:])


def resnet_44(group: Optional[str], attention: str, *, in_channels: int = 3, num_classes: int = 10,
              formulation: str = "chunked", num_blocks: int = 7,
              widths: Optional[Tuple[int, int, int]] = None, mirror_input: bool = False) -> ResNet:
    """ResNet44 (``num_blocks`` blocks a stage, widths of :data:`RESNET_WIDTHS`) on ``group``.

    ``mirror_input``: mirror every input along its width first, as the original fA_P4MResNet
    did: ``f(x) = g(mirror(x))``, which equals ``g(x)`` up to round-off, ``g`` on p4m being
    invariant to mirrors.
    """
    model = ResNet(_layers(group, attention, math.sqrt(2), formulation), in_channels, num_classes,
                   num_blocks=num_blocks, widths=widths or RESNET_WIDTHS[group])
    if mirror_input:
        model.register_forward_pre_hook(_mirror_width)
    return model


def _resnet44(config: Any, data: DataSpec, group: Optional[str], attention: str) -> nn.Module:
    mirror_input = _as_original(config) and attention == "feature"
    return resnet_44(group, attention, mirror_input=mirror_input,
                     **_inputs(config, data, ResNet.min_size, "ResNet44"))


@_zoo_model
def resnet44(config: Any, data: DataSpec) -> nn.Module:
    return _resnet44(config, data, None, "none")


@_zoo_model
def p4m_resnet44(config: Any, data: DataSpec) -> nn.Module:
    return _resnet44(config, data, "p4m", "none")


@_zoo_model
def f_att_p4m_resnet44(config: Any, data: DataSpec) -> nn.Module:
    return _resnet44(config, data, "p4m", "feature")


# ------------------------------------------------------------------------ PCam

DENSENET_CHANNELS = {None: 26, "p4": 13, "p4m": 9}


def dense_net(group: Optional[str], attention: str, *, in_channels: int = 3, num_classes: int = 2,
              formulation: str = "chunked", num_blocks: int = 5, n_channels: Optional[int] = None) -> DenseNet:
    """The PCam DenseNet on ``group`` with ``attention`` (growth of :data:`DENSENET_CHANNELS`)."""
    return DenseNet(_layers(group, attention, math.sqrt(2), formulation), in_channels, num_classes,
                    num_blocks=num_blocks, n_channels=n_channels or DENSENET_CHANNELS[group])


def _densenet(config: Any, data: DataSpec, group: Optional[str], attention: str) -> nn.Module:
    if _as_original(config):
        attention = ORIGINAL_ATTENTION.get(("densenet", group, attention), attention)
    return dense_net(group, attention, **_inputs(config, data, DenseNet.minimum_input_size(5), "DenseNet"))


@_zoo_model
def densenet(config: Any, data: DataSpec) -> nn.Module:
    return _densenet(config, data, None, "none")


@_zoo_model
def p4_densenet(config: Any, data: DataSpec) -> nn.Module:
    return _densenet(config, data, "p4", "none")


@_zoo_model
def p4m_densenet(config: Any, data: DataSpec) -> nn.Module:
    return _densenet(config, data, "p4m", "none")


@_zoo_model
def f_att_p4_densenet(config: Any, data: DataSpec) -> nn.Module:
    return _densenet(config, data, "p4", "feature")


@_zoo_model
def f_att_p4m_densenet(config: Any, data: DataSpec) -> nn.Module:
    return _densenet(config, data, "p4m", "feature")
