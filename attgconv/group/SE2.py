"""The original ``attgconv.group.SE2``: roto-translations by multiples of 90 degrees (p4)."""

from attgconv.compat.group_modules import group_classes

Rn, H, G = group_classes("p4", "SE(2)", "SO(2)")
