"""The model layer under the top-level name of a checkout, ``models``.

The package is :mod:`g_selfatt_models`; this folder only gives it the name that scripts run
from the repository root (and the originals' clients) import. Installed, the distribution
ships ``g_selfatt_models`` alone, so a project with its own ``models/`` folder is unaffected.
"""

from g_selfatt_models import *  # noqa: F401,F403  (the same objects, not a second copy)
from g_selfatt_models import __all__  # noqa: F401
