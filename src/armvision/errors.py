"""Errors that speak to the user.

Everything a user can get wrong (a config key, a value, a dataset path, a checkpoint) raises a
:class:`UserError` subclass whose message says what was wrong, what was expected and what to do.
The command line (:mod:`armvision.cli._guard`) prints that message as one line and exits 2, without a Python
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Iterable

__all__ = ["UserError", "ConfigError", "DataError", "CheckpointError", "TrainingDiverged", "Preempted", "SaveError"]


class UserError(Exception):
    """Bad input: the message is meant for the user, the traceback is not."""


class ConfigError(UserError, ValueError):
    """A config file, preset or flag names an unknown key or holds a bad value."""


class DataError(UserError):
    """A dataset is missing, empty, unreadable or has the wrong layout."""


class CheckpointError(UserError, ValueError):
    """A checkpoint, model directory, run directory or state dict is missing, unreadable or does not fit.

    ``missing``, ``unexpected`` and ``mismatched`` (``(key, checkpoint shape, expected shape)``) list what a
    key check found (empty when the error is not about keys); the message names them.
    """

    def __init__(self, message: str, missing: Iterable[str] = (), unexpected: Iterable[str] = (),
                 mismatched: Iterable[tuple[str, tuple, tuple]] = ()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


class SaveError(CheckpointError, OSError):
    """A checkpoint or file could not be written (disk full, read-only, permission, file-size limit); the
    message names the path and the cause. Also an OSError, for code that catches write failures as such."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


class Preempted(Exception):
    """A stop signal (SIGTERM, SIGUSR1) ended the run after a checkpoint was saved: not an error, the job
    should be started again (``--resume auto``). ``checkpoint``: the folder saved; ``signal``: its name."""

    def __init__(self, message: str, checkpoint=None, signal: str | None = None):
        super().__init__(message)
        self.checkpoint = checkpoint
        self.signal = signal

