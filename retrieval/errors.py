"""Errors meant for users: every message says what went wrong and what to do.

Each class carries how it reaches a user: ``exit_code`` for the command line (one line on
stderr, then that status) and ``http_status`` with a short ``code`` for the HTTP service
(``{"error": code, "message": ...}``). The CLI and the service each map them in one
place. Any other exception is a bug and keeps its traceback (on the CLI with
``--debug``; in the server log under the request id).
"""

from __future__ import annotations


class RetrievalError(Exception):
    """Base class of every error a user can act on."""

    exit_code = 1
    http_status = 422
    code = "invalid_request"


class ConfigError(RetrievalError):
    """A setting is unknown, has the wrong type, or a config file cannot be read."""

    exit_code = 2
    http_status = 500
    code = "config_error"


class InvalidInputError(RetrievalError):
    """Input records failed validation; nothing was written.

    ``problems`` holds one ``file:line: reason`` string per invalid record.
    """

    code = "invalid_input"

    def __init__(self, problems: list[str], total: int) -> None:
        self.problems = problems
        self.total = total
        super().__init__(
            f"{len(problems)} of {total} records are invalid; nothing was written "
            "(fix them, or pass --skip-invalid to store the valid ones)"
        )


class ModelMismatchError(RetrievalError):
    """The configured model is not the model the index was built with."""

    http_status = 409
    code = "model_mismatch"


class IndexCorruptError(RetrievalError):
    """An index version on disk failed its checks (checksum, size, count)."""

    http_status = 503
    code = "index_corrupt"


class IndexWriteError(RetrievalError):
    """A new index version could not be written (disk full, permissions); the previous
    version is untouched and keeps serving."""

    http_status = 507
    code = "index_write_failed"


class StoreError(RetrievalError):
    """The database cannot be opened, is locked for too long, or is of a newer schema."""

    http_status = 503
    code = "store_unavailable"


class NotFoundError(RetrievalError):
    """A document with the given external id does not exist."""

    http_status = 404
    code = "not_found"


class BackendUnavailableError(RetrievalError):
    """An encoder backend or precision cannot run here (runtime missing, unsupported model
    or CPU)."""

    http_status = 503
    code = "backend_unavailable"


class ExportError(RetrievalError):
    """Exporting a model to ONNX failed, or its outputs do not match torch."""

    http_status = 503
    code = "export_failed"


class WorkerBusyError(RetrievalError):
    """Another worker holds this store."""

    exit_code = 3
    http_status = 409
    code = "worker_busy"


class ServiceError(RetrievalError):
    """The retrieval service could not be reached or refused a request."""

    http_status = 502
    code = "upstream_error"


class EvalDataError(RetrievalError):
    """A queries, qrels or corpus file is missing or malformed."""

    exit_code = 2
    code = "invalid_eval_data"
