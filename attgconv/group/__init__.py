"""The original group modules: ``attgconv.group.SE2`` (p4) and ``attgconv.group.E2`` (p4m)."""
