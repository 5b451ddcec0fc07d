"""Errors meant for users: every message says what went wrong and what to do.

The CLI turns any :class:`RetrievalError` into one line on stderr and a non-zero exit
status. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class RetrievalError(Exception):
    """Base class of every error a user can act on."""

    exit_code = 1


class ConfigError(RetrievalError):
    """A setting is unknown, has the wrong type, or a config file cannot be read."""

    exit_code = 2


class InvalidInputError(RetrievalError):
    """Input records failed validation; nothing was written.

    ``problems`` holds one ``file:line: reason`` string per invalid record.
    """

    def __init__(self, problems: list[str], total: int) -> None:
        self.problems = problems
        self.total = total
        super().__init__(
            f"{len(problems)} of {total} records are invalid; nothing was written "
            "(fix them, or pass --skip-invalid to store the valid ones)"
        )


class ModelMismatchError(RetrievalError):
    """The configured model is not the model the index was built with."""


class IndexCorruptError(RetrievalError):
    """An index version on disk failed its checks (checksum, size, count)."""


class IndexWriteError(RetrievalError):
    """A new index version could not be written (disk full, permissions); the previous
    version is untouched and keeps serving."""


class StoreError(RetrievalError):
    """The database cannot be opened, is locked for too long, or is of a newer schema."""


class NotFoundError(RetrievalError):
    """A document with the given external id does not exist."""
