"""Exception types of `workbench.train`. Every message names the column, value, path or parameter at fault."""

from __future__ import annotations

from ..core.errors import AdapterError


class TrainingError(AdapterError):
    """Base class for every error a training run raises on purpose."""


class ConfigError(TrainingError, ValueError):
    """A `TrainConfig` field (or `train()` argument) with a bad value; `problems` lists every one found."""

    def __init__(self, message: str, problems=()):
        super().__init__(message)
        self.problems = tuple(problems) or (message,)


class DataError(TrainingError, ValueError):
    """The data cannot be used for the task (base class of the data errors below).

    Raised by the checks before training (`workbench.train.checks`), `problems` holds every finding."""

    problems: tuple = ()


class MissingColumnError(DataError, KeyError):
    """A column the task needs is not in the data."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownLabelError(DataError):
    """A label value outside the head's label set."""


class DataCheckError(DataError):
    """The checks before training found problems of several kinds (each listed in the message)."""


class EmptyDatasetError(DataError):
    """A split (train or validation) with no rows."""


class NonFiniteLossError(TrainingError, FloatingPointError):
    """The loss (or a trained weight) became NaN or infinite; the checkpoints written before are kept."""


class OutputDirError(TrainingError, OSError):
    """The output folder cannot be created or written."""


class CheckpointError(TrainingError, OSError):
    """A checkpoint folder that is missing or does not fit the model being trained."""


class RunFolderInUseError(OutputDirError):
    """The output folder already holds another run's checkpoints or `final/` (pass resume=True or overwrite=True,
    or choose `suggestion`, a free folder)."""

    def __init__(self, message: str, folder=None, suggestion=None, last_checkpoint=None):
        super().__init__(message)
        self.folder, self.suggestion, self.last_checkpoint = folder, suggestion, last_checkpoint


class RunLockedError(OutputDirError):
    """Another `train()` is writing into the output folder now: `holder` is its lock's record (pid, host, start)."""

    def __init__(self, message: str, folder=None, holder=None):
        super().__init__(message)
        self.folder, self.holder = folder, dict(holder or {})
