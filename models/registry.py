"""A registry of models keyed by the name users type on the command line.

Every model is built by a function ``builder(config, data) -> nn.Module``
registered under its CLI name, e.g. ``p4sa`` or ``p4cnn``::

    @register_model("p4sa", family="gsa", description="GSA-Net on p4")
    def p4sa(config, data): ...

    model = create_model("p4sa", config, data)

``config`` is the experiment configuration (an ``ml_collections.ConfigDict``
or any object with the same attributes) and ``data`` a :class:`DataSpec`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from torch import nn


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its data.

    Attributes:
        name: dataset name as in the config (``"rotMNIST"``, ``"CIFAR10"``, ...).
        in_channels: image channels.
        num_classes: number of classes.
        image_size: side of the (square) input images.
        architecture: which per-dataset architecture the models use
            (``"rotMNIST"``, ``"CIFAR10"``, ``"PCam"``, ``"rotDigits"`` or ``"rotMNIST5k"``;
            MNIST uses ``"rotMNIST"``).
    """

    name: str
    in_channels: int
    num_classes: int
    image_size: int
    architecture: str


Builder = Callable[[Any, DataSpec], nn.Module]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    Attributes:
        name: the CLI name.
        builder: ``builder(config, data) -> nn.Module``.
        family: ``"gsa"`` (self-attention) or ``"attgconv"`` (attentive G-CNN) or ``"cnn"``.
        description: one line for ``list_models``.
        defaults: the paper's hyper-parameters for this model, per architecture
            (``{"rotMNIST": {"lr": 1e-3, ...}}``); the runner applies them where the user
            did not set a value.
        datasets: architectures the model is defined for (empty = all).
        convert_checkpoint: maps a state_dict saved by the original implementation
            (its key names, ``module.`` prefix already stripped) to this model's key
            names; ``None`` when the names already agree.
        min_image_size: the smallest image side the model accepts; the runner enlarges
            smaller images of a dataset to it.
    """

    name: str
    builder: Builder
    family: str
    description: str = ""
    defaults: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    datasets: Tuple[str, ...] = ()
    convert_checkpoint: Optional[Callable[[Mapping[str, Any]], Dict[str, Any]]] = None
    min_image_size: int = 1


_REGISTRY: Dict[str, ModelSpec] = {}


def register_model(name: str, *, family: str, description: str = "",
                   defaults: Optional[Mapping[str, Mapping[str, Any]]] = None,
                   datasets: Tuple[str, ...] = (),
                   convert_checkpoint: Optional[Callable[[Mapping[str, Any]], Dict[str, Any]]] = None,
                   min_image_size: int = 1) -> Callable[[Builder], Builder]:
    """Registers ``builder`` under ``name``; raises if the name is taken."""

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"A model named {name!r} is already registered.")
        _REGISTRY[name] = ModelSpec(name, builder, family, description, dict(defaults or {}),
                                    tuple(datasets), convert_checkpoint, min_image_size)
        return builder

    return decorator


def list_models(family: Optional[str] = None) -> List[str]:
    """Sorted names of the registered models, optionally of one family."""
    return sorted(name for name, spec in _REGISTRY.items() if family is None or spec.family == family)


def get_model_spec(name: str) -> ModelSpec:
    """The registered model ``name``; an unknown name raises with the valid ones."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model {name!r}; expected one of {list_models()}.")
    return _REGISTRY[name]


def create_model(name: str, config: Any, data: DataSpec) -> nn.Module:
    """Builds the model ``name`` for ``data`` with the settings in ``config``."""
    spec = get_model_spec(name)
    if spec.datasets and data.architecture not in spec.datasets:
        raise ValueError(
            f"Model {name!r} is defined for {list(spec.datasets)}, not for {data.architecture!r}."
        )
    return spec.builder(config, data)
