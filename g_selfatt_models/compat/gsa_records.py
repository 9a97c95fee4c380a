"""Rebuilding modules from records of the original GSA-Nets implementation.

A record (see ``shared/reference/README.md`` for the format) names the original
class and its constructor arguments; the group is given as ``group`` ('SE2' or
'E2') and ``num_elements``. The modules built here use the original's
group-axis index (``group_axis_index="original"``) so that their outputs can be
compared with the recorded ones; state_dict key names are the same as the
original's, so no key conversion is needed.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping

from torch import nn

import g_selfatt.nn as gsa_nn
from g_selfatt.groups import E2, SE2, Group
from g_selfatt_models.cnn import CNN
from g_selfatt_models.group_transformer import GroupTransformer

_GROUP_CLASSES = {"SE2": SE2, "E2": E2}
_LIFTING = ("LiftSelfAttention", "LiftLocalSelfAttention")
_GROUP_LAYERS = ("GroupSelfAttention", "GroupLocalSelfAttention")


def group_from_kwargs(kwargs: Mapping[str, Any]) -> Group:
    """The group of a record's ``group``/``num_elements`` entries."""
    name = kwargs["group"]
    if name not in _GROUP_CLASSES:
        raise ValueError(f"Unknown group class {name!r}; expected one of {sorted(_GROUP_CLASSES)}.")
    return _GROUP_CLASSES[name](num_elements=int(kwargs["num_elements"]))


def _without_group(kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k not in ("group", "num_elements")}


def _attention_layer(module: str, kwargs: Mapping[str, Any], group_axis_index: str) -> nn.Module:
    cls = getattr(gsa_nn, module)
    extra = {"group_axis_index": group_axis_index} if module in _GROUP_LAYERS else {}
    return cls(group_from_kwargs(kwargs), **_without_group(kwargs), **extra)


def _transformer_block(kwargs: Mapping[str, Any], group_axis_index: str) -> nn.Module:
    inner = kwargs["attention_layer"]
    layer = _attention_layer(inner["module"], inner["kwargs"], group_axis_index)
    rest = {k: v for k, v in kwargs.items() if k != "attention_layer"}
    return gsa_nn.TransformerBlock(attention_layer=layer, **rest)


def _group_transformer(kwargs: Mapping[str, Any], group_axis_index: str) -> nn.Module:
    return GroupTransformer(group=group_from_kwargs(kwargs), group_axis_index=group_axis_index,
                            **_without_group(kwargs))


def _cnn(kwargs: Mapping[str, Any], group_axis_index: str) -> nn.Module:
    return CNN(**kwargs)


_BUILDERS: Dict[str, Callable[[Mapping[str, Any], str], nn.Module]] = {
    **{name: (lambda kw, idx, name=name: _attention_layer(name, kw, idx)) for name in _LIFTING + _GROUP_LAYERS},
    "TransformerBlock": _transformer_block,
    "GroupTransformer": _group_transformer,
    "CNN": _cnn,
}


def build_from_record(record: Mapping[str, Any], group_axis_index: str = "original") -> nn.Module:
    """Builds the module a record describes (not yet loaded).

    Args:
        record: a reference record with ``module`` and ``kwargs``.
        group_axis_index: ``"original"`` to reproduce the recorded outputs, or
            ``"relative"`` for the equivariant layers.

    Raises:
        ValueError: for a class this project does not provide.
    """
    module = record["module"]
    if module not in _BUILDERS:
        raise ValueError(f"Unknown g_selfatt module {module!r}; expected one of {sorted(_BUILDERS)}.")
    return _BUILDERS[module](record["kwargs"], group_axis_index)


def convert_state_dict(record: Mapping[str, Any], state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """The original state_dict in this project's key names (they are the same)."""
    return dict(state_dict)
