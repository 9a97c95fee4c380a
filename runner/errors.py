"""Errors caused by the user's input rather than by a bug.

``main.py`` prints these as one paragraph and exits non-zero without a traceback.
"""


class RunnerError(Exception):
    """Base class of the runner's user-facing errors."""


class ConfigError(RunnerError):
    """An invalid or inconsistent configuration value."""


class CheckpointError(RunnerError):
    """A checkpoint that is missing, unreadable or made for another model."""


class DeviceError(RunnerError):
    """A requested device that is not available."""
