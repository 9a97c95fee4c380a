"""The original module path ``attgconv.attention_layers``: :mod:`attgconv.compat.attention_layers`."""

from attgconv.compat.attention_layers import *  # noqa: F401,F403
