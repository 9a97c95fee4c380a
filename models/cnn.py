"""The original module path ``models.cnn`` in a checkout: :mod:`g_selfatt_models.cnn`."""

from g_selfatt_models.cnn import *  # noqa: F401,F403
