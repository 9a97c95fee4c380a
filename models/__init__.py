"""Models and the registry of their command-line names."""

from models import attgconv_zoo, gsa_zoo
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
    "register_model",
]
