"""User-facing errors: one line that names the file, record or flag and says what to do."""

from __future__ import annotations


class HftoolError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback.

    The CLI catches it, prints ``error: <message>`` to stderr and exits with ``exit_code``.
    """

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class TrainingDivergedError(HftoolError):
    """The loss became NaN or infinite; the run stops and no checkpoint is written after it."""

    exit_code = 3
