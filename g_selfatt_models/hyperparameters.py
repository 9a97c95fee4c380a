"""Typed records of the hyper-parameters of each model family: the one source of their defaults.

A record is a frozen dataclass, so its fields are named, typed and documented in one place, and
it is also a read-only mapping from field name to value, so a model's defaults can be passed on
as keyword arguments or merged into a configuration::

    GSAHyperParameters(lr=3e-3).lr              # 0.003
    dict(GSAHyperParameters(), patch_size=9)    # every field, one changed

The defaults of the fields are the values the runner uses where neither the command line nor the
model's defaults for the dataset set one (``runner.defaults.FALLBACKS`` reads them): a short run
that a laptop CPU finishes in minutes. The paper's hyper-parameters of each model and dataset are
instances of these records, in the model zoos (``gsa_zoo.GSA_DEFAULTS``, ``attgconv_zoo.zoo.DEFAULTS``)
and in :mod:`g_selfatt_models.protocols`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Iterator, Optional, Tuple

from g_selfatt.nn.init import WHITENING_SCALE


class _Record(Mapping):
    """A frozen dataclass read as a mapping of its fields (for ``**record`` and ``dict(record)``)."""

    def __getitem__(self, name: str) -> Any:
        if name not in self._names():
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    @classmethod
    def _names(cls) -> Tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))


@dataclasses.dataclass(frozen=True, eq=True)
class TrainingHyperParameters(_Record):
    """How a model is trained; the fields every family shares.

    Attributes:
        optimizer: ``"SGD"``, ``"Adam"`` or ``"AdamW"``.
        optimizer_momentum: momentum of SGD (Adam and AdamW ignore it).
        lr: learning rate at the start (after the warm-up for ``linear_warmup_cosine``).
        weight_decay: an L2 penalty for SGD and Adam, decoupled for AdamW.
        batch_size: examples per optimizer step.
        epochs: passes over the training split.
        scheduler: ``"constant"``, ``"multistep"``, ``"linear_warmup_cosine"`` or ``"plateau"``.
        sched_decay_steps: ``multistep``: epochs after which the rate is divided by ``sched_decay_factor``.
        sched_decay_factor: ``multistep`` and ``plateau``: the divisor of each decay.
        sched_patience: ``plateau``: epochs without a better validation accuracy before a decay.
        warmup_epochs: ``linear_warmup_cosine``: epochs of linear warm-up from 0.
        augment: the dataset's random augmentation of training batches (CIFAR10: random crop and
            horizontal flip; rotMNIST5k: random rotation), where it defines one.
    """

    optimizer: str = "Adam"
    optimizer_momentum: float = 0.9
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    epochs: int = 3
    scheduler: str = "constant"
    sched_decay_steps: Tuple[int, ...] = ()
    sched_decay_factor: float = 2.0
    sched_patience: int = 20
    warmup_epochs: float = 10.0
    augment: bool = False


@dataclasses.dataclass(frozen=True, eq=True)
class GSAHyperParameters(TrainingHyperParameters):
    """A GSA-Net (:class:`~g_selfatt_models.group_transformer.GroupTransformer`) and its training.

    Attributes:
        norm_type: normalisation between layers, ``"LayerNorm"`` or ``"BatchNorm"``.
        activation_function: ``"Swish"`` or ``"ReLU"``.
        whitening_scale: initial weights ``N(0, (whitening_scale / sqrt(fan_in))^2)``.
        attention_type: ``"Local"`` (within a patch) or ``"Global"`` (the whole image).
        patch_size: side of the neighbourhood of local attention.
        dropout_att: dropout rate on the attention coefficients.
        dropout_values: dropout rate on the output values of every attention layer.
        num_channels: channels after the lifting layer; ``None``: the dataset's layout.
        num_heads: heads of every attention layer; ``None``: the dataset's layout.
        block_sizes: transformer blocks per stage; ``None``: the dataset's layout.
    """

    norm_type: str = "LayerNorm"
    activation_function: str = "Swish"
    whitening_scale: float = WHITENING_SCALE
    attention_type: str = "Local"
    patch_size: int = 5
    dropout_att: float = 0.1
    dropout_values: float = 0.1
    num_channels: Optional[int] = None
    num_heads: Optional[int] = None
    block_sizes: Optional[Tuple[int, ...]] = None


def gsa_from(training: TrainingHyperParameters, **fields: Any) -> GSAHyperParameters:
    """The GSA-Net record that trains as ``training`` does, with its own ``fields``."""
    return GSAHyperParameters(**{**training, **fields})
