"""Models, the registry of their command-line names, and loading their checkpoints."""

from g_selfatt_models import attgconv_zoo, gsa_zoo
from g_selfatt_models.checkpoints import CheckpointError, load_model
from g_selfatt_models.cnn import CNN
from g_selfatt_models import transformer
from g_selfatt_models.group_transformer import GroupTransformer
# The original's enums, and its attributes attached to GroupTransformer.
from g_selfatt_models.compat.group_transformer import Activation, NormType
from g_selfatt_models.transformer import Transformer
from g_selfatt_models.registry import (
    DATA_SPECS,
    DataSpec,
    ModelSpec,
    check_defined_for,
    create_model,
    get_data_spec,
    get_model_spec,
    list_models,
    register_model,
)

__all__ = [
    "Activation",
    "CNN",
    "CheckpointError",
    "DATA_SPECS",
    "attgconv_zoo",
    "DataSpec",
    "GroupTransformer",
    "ModelSpec",
    "NormType",
    "Transformer",
    "check_defined_for",
    "create_model",
    "get_data_spec",
    "get_model_spec",
    "gsa_zoo",
    "list_models",
    "load_model",
    "register_model",
    "transformer",
]
