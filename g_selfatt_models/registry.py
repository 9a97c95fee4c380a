"""A registry of models keyed by the name users type on the command line.

Every model is built by a function ``builder(config, data) -> nn.Module``
registered under its CLI name, the function's own name, e.g. ``p4sa`` or ``p4cnn``::

    @register_model(family="gsa")
    def p4sa(config, data):
        '''GSA-Net on p4.'''  # the first line of the docstring is the description
        ...

Models are built in one of two ways::

    model = create_model("p4sa", dataset="rotMNIST", patch_size=5)  # no configuration object
    model = create_model("p4sa", config, data)                      # as the experiment runner does

``config`` is the experiment configuration (an ``ml_collections.ConfigDict``
or any object with the same attributes) and ``data`` a :class:`DataSpec`; without them the
model's own defaults for the dataset's architecture are used, changed by ``overrides``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import types
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from torch import nn

from g_selfatt.nn.attention import DEFAULT_GROUP_AXIS_INDEX


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


# What a model needs to know about each dataset of the project (the datasets package reads its
# files; the models only need these numbers).
DATA_SPECS: Dict[str, DataSpec] = {spec.name: spec for spec in (
    DataSpec("rotMNIST", 1, 10, 28, "rotMNIST"),
    DataSpec("CIFAR10", 3, 10, 32, "CIFAR10"),
    DataSpec("PCam", 3, 2, 96, "PCam"),
    DataSpec("MNIST", 1, 10, 28, "rotMNIST"),
    DataSpec("rotDigits", 1, 10, 16, "rotDigits"),
    DataSpec("rotMNIST5k", 1, 10, 28, "rotMNIST5k"),
)}

# Settings of the builders that no model's defaults set: the equivariant group-axis index, the
# automatic attention implementation, the memory-lean attentive convolutions.
BUILD_DEFAULTS: Dict[str, Any] = {"group_axis_index": DEFAULT_GROUP_AXIS_INDEX, "attention_impl": "auto",
                                  "attention_formulation": "chunked", "original_architecture": False}

Builder = Callable[[Any, DataSpec], nn.Module]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    Attributes:
        name: the CLI name.
        builder: ``builder(config, data) -> nn.Module``.
        family: ``"gsa"`` (self-attention) or ``"attgconv"`` (attentive G-CNN) or ``"cnn"``.
        description: one line for ``list_models``.
        defaults: the paper's hyper-parameters for this model, per architecture, as records of
            :mod:`g_selfatt_models.hyperparameters` (``{"rotMNIST": GSAHyperParameters(lr=1e-3,
            ...)}``, read as mappings); the runner applies them where the user did not set a value.
        datasets: architectures the model is defined for (empty = all).
        convert_checkpoint: maps a state_dict saved by the original implementation
            (its key names, ``module.`` prefix already stripped) to this model's key
            names; ``None`` when the names already agree.
        min_image_size: the smallest image side the model accepts; the runner enlarges
            smaller images of a dataset to it.
        plain_model: for an attentive model, the name of the same network without attention
            (where a checkpoint without attention weights belongs); ``""`` otherwise.
    """

    name: str
    builder: Builder
    family: str
    description: str = ""
    defaults: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    datasets: Tuple[str, ...] = ()
    convert_checkpoint: Optional[Callable[[Mapping[str, Any]], Dict[str, Any]]] = None
    min_image_size: int = 1
    plain_model: str = ""


_REGISTRY: Dict[str, ModelSpec] = {}


def register_model(name: Optional[str] = None, *, family: str, description: str = "",
                   defaults: Optional[Mapping[str, Mapping[str, Any]]] = None,
                   datasets: Tuple[str, ...] = (),
                   convert_checkpoint: Optional[Callable[[Mapping[str, Any]], Dict[str, Any]]] = None,
                   min_image_size: int = 1, plain_model: str = "") -> Callable[[Builder], Builder]:
    """Registers the decorated builder under ``name`` (default: the builder's own name).

    The description defaults to the first line of the builder's docstring.

    Raises:
        ValueError: the name is taken.
    """

    def decorator(builder: Builder) -> Builder:
        key = name or builder.__name__
        if key in _REGISTRY:
            raise ValueError(f"A model named {key!r} is already registered.")
        summary = description or (builder.__doc__ or "").strip().split("\n", 1)[0]
        _REGISTRY[key] = ModelSpec(key, builder, family, summary, dict(defaults or {}),
                                   tuple(datasets), convert_checkpoint, min_image_size, plain_model)
        return builder

    return decorator


def list_models(pattern: str = "*", *, family: Optional[str] = None) -> List[str]:
    """Sorted names of the registered models that match the shell-style ``pattern``.

    Args:
        pattern: e.g. ``"*p4m*"`` or ``"f_att_*"``; the default lists every model.
        family: only models of this family (``"gsa"``, ``"attgconv"`` or ``"cnn"``).
    """
    return sorted(name for name, spec in _REGISTRY.items()
                  if fnmatch.fnmatchcase(name, pattern) and (family is None or spec.family == family))


def get_model_spec(name: str) -> ModelSpec:
    """The registered model ``name``; an unknown name raises with the valid ones."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model {name!r}; expected one of {list_models()}.")
    return _REGISTRY[name]


def get_data_spec(dataset: str) -> DataSpec:
    """The :class:`DataSpec` of a dataset name; an unknown name raises with the valid ones."""
    if dataset not in DATA_SPECS:
        raise ValueError(f"Unknown dataset {dataset!r}; expected one of {list(DATA_SPECS)}.")
    return DATA_SPECS[dataset]


def model_settings(name: str, data: DataSpec, overrides: Mapping[str, Any]) -> types.SimpleNamespace:
    """The settings ``create_model`` builds ``name`` with when no configuration is given.

    The model's defaults for ``data.architecture`` (the paper's hyper-parameters), then
    :data:`BUILD_DEFAULTS`, changed by ``overrides``.

    Raises:
        ValueError: an override that neither the model's defaults nor the builders know, with
            the valid names.
    """
    settings = {**BUILD_DEFAULTS, **get_model_spec(name).defaults.get(data.architecture, {})}
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise ValueError(f"Unknown setting(s) {unknown} for {name!r} on {data.architecture!r}; "
                         f"expected some of {sorted(settings)}.")
    return types.SimpleNamespace(**{**settings, **overrides})


def create_model(name: str, config: Any = None, data: Optional[DataSpec] = None, *,
                 dataset: Optional[str] = None, **overrides: Any) -> nn.Module:
    """Builds the model ``name``.

    Either from an experiment configuration and a :class:`DataSpec` (``create_model(name,
    config, data)``, the runner's way), or from a dataset name and keyword overrides of the
    model's defaults (``create_model("p4sa", dataset="rotMNIST", patch_size=5)``).

    Raises:
        ValueError: an unknown model or dataset, a model not defined for the dataset, a bad
            override, or both or neither of ``data`` and ``dataset``.
    """
    if (data is None) == (dataset is None) or (overrides and data is not None):
        raise ValueError("Call create_model(name, config, data) or create_model(name, dataset=..., **overrides).")
    spec = get_model_spec(name)
    if data is None:
        data = get_data_spec(dataset)
        config = model_settings(name, data, overrides)
    check_defined_for(spec, data.architecture)
    return spec.builder(config, data)


def check_defined_for(spec: ModelSpec, architecture: str) -> None:
    """Raises ``ValueError`` when the model ``spec`` is not defined for ``architecture``."""
    if spec.datasets and architecture not in spec.datasets:
        raise ValueError(f"Model {spec.name!r} is defined for {list(spec.datasets)}, not for {architecture!r}.")
