"""What every command shares: the state the root group builds, the decorators that hand
it (or a Retriever) to a command, the one ``--json`` output helper, error reporting and
logging to stderr.

Heavy modules (FAISS, SQLAlchemy, the encoders) are imported inside the commands that
need them, so `retrieve --help` and `retrieve config` start at once.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import update_wrapper
from typing import Any, TypeVar, cast

import click

from retrieval.config import Settings, load_settings
from retrieval.documents import finite
from retrieval.errors import InvalidInputError, RetrievalError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class CliState:
    """What the root group's options decided, shared by every command (``ctx.obj``)."""

    config_path: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    debug: bool = False
    verbose: bool = False
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        """The effective settings, loaded once per invocation."""
        if self._settings is None:
            self._settings = load_settings(self.config_path, overrides=self.overrides)
        return self._settings


pass_state = click.make_pass_decorator(CliState, ensure=True)


def pass_retriever(f: F) -> F:
    """Build the Retriever from the effective settings and pass it as the first argument;
    it is closed when the command ends."""

    @pass_state
    @click.pass_context
    def wrapper(ctx: click.Context, state: CliState, *args: Any, **kwargs: Any) -> Any:
        from retrieval.retriever import Retriever

        retriever = Retriever.from_settings(state.settings)
        ctx.call_on_close(retriever.close)
        return ctx.invoke(f, retriever, *args, **kwargs)

    return cast(F, update_wrapper(wrapper, f))


# -- output -------------------------------------------------------------------------------


def json_option(f: F) -> F:
    """The ``--json`` flag, passed to the command as ``as_json``."""
    return click.option("--json", "as_json", is_flag=True, help="Print as JSON.")(f)


def echo_json(data: Any) -> None:
    """One line of standard JSON. A NaN or infinity (metadata a store took before they were
    refused; `retrieve verify` names such documents) is written as null, never as the
    ``NaN`` token no other JSON reader accepts."""
    try:
        text = json.dumps(data, ensure_ascii=False, default=str, allow_nan=False)
    except ValueError:
        text = json.dumps(finite(data), ensure_ascii=False, default=str)
    click.echo(text)


def emit(as_json: bool, data: Any, lines: Callable[[], Iterable[str]]) -> None:
    """Print ``data`` as one JSON line with ``--json``, else the human ``lines``."""
    if as_json:
        echo_json(data)
        return
    for line in lines():
        click.echo(line)


def shorten(text: str, width: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def size(n: int) -> str:
    """Bytes for people: 512 B, 3.4 MiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def warn(message: str) -> None:
    """One line on stderr, as every warning of the library reaches a user."""
    click.echo(f"retrieve: {message}", err=True)


# -- errors and logging -------------------------------------------------------------------


class RetrieveGroup(click.Group):
    """Turns library errors into one line on stderr and their exit status (tracebacks
    with --debug); every other exception is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InvalidInputError as exc:
            if _debug(ctx):
                raise
            for problem in exc.problems:
                click.echo(problem, err=True)
            click.echo(f"Error: {exc.summary}", err=True)
            ctx.exit(exc.exit_code)
        except RetrievalError as exc:
            if _debug(ctx):
                raise
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)


def _debug(ctx: click.Context) -> bool:
    state = ctx.find_object(CliState)
    return bool(state and state.debug)


class _UserFormatter(logging.Formatter):
    """Warnings and errors as ``retrieve: message`` lines; with -v, every record with its
    time, level and logger."""

    def __init__(self, verbose: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        if self.verbose:
            return super().format(record)
        return f"retrieve: {record.getMessage()}"


_HANDLER_NAME = "retrieve-cli"


def setup_logging(verbose: bool, *, timestamps: bool = False) -> Callable[[], None]:
    """Route the library's log records to stderr: warnings by default, everything with
    ``verbose``; ``timestamps`` gives every line its time and level (the worker's and the
    server's logs). Returns the function that undoes it (the root group calls it when
    the command ends, so that in-process callers such as tests get their logging back)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:
            root.removeHandler(old)
    # This invocation's stderr (Click's test runner swaps it per call; the handler is
    # made per call and removed when the command ends).
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(_UserFormatter(verbose or timestamps))
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)

    def undo() -> None:
        root.removeHandler(handler)
        root.setLevel(level)

    return undo
