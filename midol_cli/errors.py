"""User-facing errors: one sentence, a non-zero exit code, never a traceback."""

from __future__ import annotations


class MidolError(Exception):
    """An error the user can fix. ``str(err)`` is printed as one line.

    exit_code 2 is for bad input (paths, recipes, flags), 1 for a run that
    failed on its own terms (non-finite loss, verification mismatch).
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(MidolError):
    """Bad flag, bad path, bad recipe value: exit code 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)


class RunFailed(MidolError):
    """The run itself could not finish (diverged, verification failed): exit code 1."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=1)
