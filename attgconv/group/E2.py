"""The original ``attgconv.group.E2``: roto-translations by 90 degrees and mirrors (p4m)."""

from attgconv.compat.group_modules import group_classes

Rn, H, G = group_classes("p4m", "E(2)", "O(2)")
