"""Errors caused by the user's input rather than by a bug.

``main.py`` prints these as one paragraph and exits non-zero without a traceback, and so a
checkpoint that cannot be used (:class:`g_selfatt_models.checkpoints.CheckpointError`).
"""


class RunnerError(Exception):
    """Base class of the runner's user-facing errors."""


class ConfigError(RunnerError):
    """An invalid or inconsistent configuration value."""


class StorageError(RunnerError):
    """A file of the run could not be written (a full disk, a read-only folder)."""


class DeviceError(RunnerError):
    """A requested device that is not available."""


class TrainingDiverged(RunnerError):
    """The loss or the gradients stayed non-finite for several consecutive steps."""


class RunInterrupted(RunnerError):
    """A signal (SIGTERM, SIGINT) stopped the run after it saved a resumable checkpoint.

    Attributes:
        signal_number: the signal that stopped the run.
        checkpoint: the resumable checkpoint written before stopping.
        resumable: whether training was under way (else it had finished: the test was stopped).
    """

    def __init__(self, message: str, signal_number: int, checkpoint: str, resumable: bool = True):
        super().__init__(message)
        self.signal_number = signal_number
        self.checkpoint = checkpoint
        self.resumable = resumable

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signal_number
