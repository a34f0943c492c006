"""The one exception type for user mistakes and environment problems.

Library code raises `FastCifarError` with a message a user can act on; the CLI turns it into one line
on stderr and a non-zero exit code, never a traceback. Anything else that escapes is a bug.
"""


class FastCifarError(Exception):
    """A problem the user can fix (bad option, missing or corrupt file, no GPU, missing library)."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class DataError(FastCifarError):
    """CIFAR-10 is missing, corrupt, unsafe or cannot be downloaded."""
