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


class ArgumentError(RetrievalError):
    """An argument of a call or a command is out of its range or of the wrong kind (k,
    an empty query, a mode, min_score, a filter): the same error, and the same exit status
    (2, as for any usage error), whether it comes from the CLI, HTTP or Python."""

    exit_code = 2
    http_status = 422
    code = "invalid_request"


class InvalidInputError(RetrievalError):
    """Input records failed validation; nothing was written.

    ``problems`` holds one ``source: reason`` string per invalid record (``file:line``
    from files, ``documents[i]`` from the Python API and HTTP). ``summary`` is the line
    the CLI prints after listing them; ``str()`` leads with the first problems, so that
    a Python traceback or an HTTP message says what is wrong.
    """

    code = "invalid_input"

    def __init__(self, problems: list[str], total: int, *, hint: str = "--skip-invalid stores the valid ones",
                 noun: str = "records") -> None:
        self.problems = problems
        self.total = total
        verb = "is" if len(problems) == 1 else "are"
        self.summary = f"{len(problems)} of {total} {noun} {verb} invalid; nothing was written" + (
            f" (fix them, or {hint})" if hint else "")
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        super().__init__(f"{shown}. {self.summary}" if shown else self.summary)


class ModelMismatchError(RetrievalError):
    """The configured model is not the model the index was built with."""

    http_status = 409
    code = "model_mismatch"


class SearchTimeoutError(RetrievalError):
    """A search ran past its deadline (``search_timeout_ms``) and was stopped."""

    http_status = 503
    code = "search_timeout"


class IndexCorruptError(RetrievalError):
    """An index version on disk failed its checks (checksum, size, count)."""

    http_status = 503
    code = "index_corrupt"


class IndexDivergedError(RetrievalError):
    """The index follows another database history than the database now holds (a
    restore, another store's copy): it must be rebuilt from the stored vectors, which a
    search or sync does by itself where it can write the index folder."""

    http_status = 503
    code = "index_diverged"


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


class OverloadedError(RetrievalError):
    """More requests wait than the service queues; retry shortly."""

    http_status = 503
    code = "overloaded"


class ServiceError(RetrievalError):
    """The retrieval service could not be reached or refused a request."""

    http_status = 502
    code = "upstream_error"


class EvalDataError(RetrievalError):
    """A queries, qrels or corpus file is missing or malformed."""

    exit_code = 2
    code = "invalid_eval_data"
