"""The original module path ``attgconv.layers``: :mod:`attgconv.compat.layers`."""

from attgconv.compat.layers import *  # noqa: F401,F403
