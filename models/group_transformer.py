"""The original module path ``models.group_transformer`` in a checkout: :mod:`g_selfatt_models.group_transformer`."""

from g_selfatt_models.group_transformer import *  # noqa: F401,F403
