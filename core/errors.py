"""User-facing errors.

A :class:`UserError` is a problem the user can fix (missing file, wrong format, bad config,
mismatched checkpoint). The CLI prints its message on one line and exits non-zero without a
traceback; library callers can catch it like any exception.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by user input; its message is one line that names the file/key and the problem."""

    exit_code = 2

    def __init__(self, message: str, *, path: object | None = None):
        self.path = path
        if path is not None and str(path) not in message:
            message = f"{path}: {message}"
        super().__init__(message)


class ConfigError(UserError):
    """A configuration file or ``--set`` override is invalid."""


class CheckpointError(UserError):
    """A checkpoint cannot be read or does not fit the model."""


class InputError(UserError):
    """An input file is missing, corrupt, or has the wrong shape/content."""
