"""What the commands share: the backend option, one-line errors, tables, queue inspection."""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import sqlite3
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import click

from melange.backends.async_interfaces import AsyncMessagingBackend
from melange.backends.interfaces import MessagingBackend
from melange.backends.urls import ENV_VARIABLE, backend_from_env, backend_from_url
from melange.exceptions import MelangeError
from melange.models import Message
from melange.redaction import redact_text

F = TypeVar("F", bound=Callable[..., Any])

#: Set this environment variable to see the full traceback of an error.
TRACEBACK_ENV = "MELANGE_TRACEBACK"

BACKEND_URL_HELP = (
    "The backend: memory://, sqlite:///path.db, amqp://user:pass@host/vhost, sqs://... "
    "[default: $MELANGE_BACKEND_URL, else the embedded SQLite database]"
)


class CommandError(click.ClickException):
    """A failure reported as one line, with exit status 1."""

    def show(self, file: Any = None) -> None:
        # The URLs given to this process may hold passwords; a library's message may quote one.
        message = redact_text(self.format_message(), *_given_urls())
        click.echo(f"error: {printable(message)}", err=True)


def _given_urls() -> list[str]:
    return [url for url in (os.environ.get(ENV_VARIABLE, ""), *_OPENED_URLS) if url]


# The backend URLs this process was given on its command line.
_OPENED_URLS: list[str] = []


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\x1b``, ``\\n``...), so that what a
    message holds can never move the cursor, recolour or retitle the terminal."""
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() or char == " " else char.encode("unicode_escape").decode()
        for char in text
    )


def backend_url_option(func: F) -> F:
    """Add ``--backend-url`` to a command (passed to it as ``backend_url``)."""
    return click.option("--backend-url", "backend_url", metavar="URL", help=BACKEND_URL_HELP)(func)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn library errors into one-line ``CommandError`` messages (full traceback with
    ``MELANGE_TRACEBACK=1``)."""
    try:
        yield
    except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
        raise
    except (MelangeError, sqlite3.Error, OSError, ValueError, TypeError) as exc:
        if os.environ.get(TRACEBACK_ENV):
            traceback.print_exc()
        raise CommandError(_describe(exc)) from exc
    except ImportError as exc:
        if os.environ.get(TRACEBACK_ENV):
            traceback.print_exc()
        raise CommandError(
            f"{exc} (install the matching extra, e.g. pip install 'melange[all]')"
        ) from exc


class _OneLineFormatter(logging.Formatter):
    """Log records on one line each; tracebacks only when asked for."""

    def __init__(self, tracebacks: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        self._tracebacks = tracebacks

    def formatException(self, ei: Any) -> str:
        return super().formatException(ei) if self._tracebacks else ""


def configure_logging(level: str) -> None:
    """Send Melange's log records to standard error at ``level``, one line each
    (tracebacks too with ``MELANGE_TRACEBACK=1``)."""
    handler = logging.StreamHandler()
    handler.setFormatter(_OneLineFormatter(bool(os.environ.get(TRACEBACK_ENV))))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())


def _describe(exc: BaseException) -> str:
    if isinstance(exc, MelangeError | sqlite3.Error | OSError):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


def open_backend(url: str | None) -> MessagingBackend:
    """The backend ``url`` names, else the one ``MELANGE_BACKEND_URL`` names, else the
    embedded SQLite default. Errors come out as one line."""
    if url:
        _OPENED_URLS.append(url)
    with reported_errors():
        return backend_from_url(url) if url else backend_from_env()


def describe_backend(backend: MessagingBackend | AsyncMessagingBackend) -> str:
    """A short name of the backend for messages to the user."""
    return (
        repr(backend) if type(backend).__repr__ is not object.__repr__ else type(backend).__name__
    )


# -- importing user code -------------------------------------------------------------------


def import_attribute(spec: str) -> Any:
    """The object ``module:attribute`` names (the attribute may be dotted)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise CommandError(
            f"{spec!r} is not of the form module:attribute "
            "(e.g. myservice.consumers:create_dispatcher)"
        )
    # Code in the current directory is importable, as with ``python -m``.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        if missing is not None and (module_name + ".").startswith(missing + "."):
            raise CommandError(
                f"cannot import module {module_name!r}: {exc} (searched the current directory "
                f"{os.getcwd()} and the installed packages)"
            ) from exc
        # The module was found, but something it imports was not.
        raise CommandError(f"importing module {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        raise CommandError(
            f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise CommandError(
                f"module {module_name!r} ({getattr(module, '__file__', '?')}) has no attribute "
                f"{attribute!r}"
            ) from None
    return target


def accepts_argument(func: Callable[..., Any]) -> bool:
    """Whether ``func`` can be called with one positional argument."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return False
    try:
        signature.bind(None)
    except TypeError:
        return False
    return True


# -- tables --------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: columns padded to their widest cell, numbers right-aligned."""
    cells = [[str(c) for c in headers], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        bool(rows) and all(isinstance(row[i], int | float) for row in rows)
        for i in range(len(headers))
    ]

    def line(row: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(cells[0]), line(["-" * w for w in widths])]
    out.extend(line(row) for row in cells[1:])
    return "\n".join(out)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    text = printable(str(value))
    return text if len(text) <= 80 else text[:77] + "..."


# -- message bodies ------------------------------------------------------------------------


def body_preview(message: Message, width: int = 60) -> str:
    """The message body on one line, shortened; JSON is compacted."""
    text = message.content
    with suppress(ValueError):
        text = json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
    text = printable(text)
    return text if len(text) <= width else text[: width - 3] + "..."
