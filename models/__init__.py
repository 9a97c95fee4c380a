"""Models, the registry of their command-line names, and loading their checkpoints."""

from models import attgconv_zoo, gsa_zoo
from models.checkpoints import CheckpointError, load_model
from models.cnn import CNN
from models.group_transformer import GroupTransformer
from models.registry import (
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
    "CNN",
    "CheckpointError",
    "DATA_SPECS",
    "attgconv_zoo",
    "DataSpec",
    "GroupTransformer",
    "ModelSpec",
    "check_defined_for",
    "create_model",
    "get_data_spec",
    "get_model_spec",
    "gsa_zoo",
    "list_models",
    "load_model",
    "register_model",
]
