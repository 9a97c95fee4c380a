"""The original module path ``models.transformer`` in a checkout: :mod:`g_selfatt_models.transformer`."""

from g_selfatt_models.transformer import *  # noqa: F401,F403
