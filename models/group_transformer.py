"""The original module path ``models.group_transformer`` in a checkout: :mod:`g_selfatt_models.group_transformer`
and the original's enums (:mod:`g_selfatt_models.compat.group_transformer`)."""

from g_selfatt_models.compat.group_transformer import Activation, NormType  # noqa: F401
from g_selfatt_models.group_transformer import *  # noqa: F401,F403
