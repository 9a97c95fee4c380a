"""The original module path ``attgconv.RomHog_attention``: :mod:`attgconv.compat.romhog_attention`."""

from attgconv.compat.romhog_attention import *  # noqa: F401,F403
