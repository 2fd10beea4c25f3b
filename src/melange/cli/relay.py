"""``melange relay``: send the committed rows of a transactional outbox to a backend until
SIGINT/SIGTERM (see :mod:`melange.outbox`)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import click

from melange.cli._common import (
    TRACEBACK_ENV,
    CommandError,
    backend_url_option,
    configure_logging,
    open_backend,
    reported_errors,
)
from melange.outbox.relay import Relay
from melange.outbox.schema import DEFAULT_TABLE
from melange.redaction import redact_text

#: The environment variable naming the outbox's database when ``--dsn`` is not given.
DSN_ENV = "MELANGE_OUTBOX_DSN"


@contextmanager
def _dsn_hidden(dsn: str) -> Iterator[None]:
    """Errors quoting the database string show it without its password."""
    try:
        yield
    except click.ClickException as exc:
        raise CommandError(redact_text(exc.format_message(), dsn)) from exc
    except Exception as exc:
        if not type(exc).__module__.startswith("psycopg") or os.environ.get(TRACEBACK_ENV):
            raise
        raise CommandError(f"the outbox database failed: {redact_text(str(exc), dsn)}") from exc


@click.command()
@click.option(
    "--dsn",
    metavar="DATABASE",
    help="The outbox's database: postgresql://user@host/db, or a SQLite file "
    f"[default: ${DSN_ENV}].",
)
@backend_url_option
@click.option("--table", default=DEFAULT_TABLE, show_default=True, help="The outbox table.")
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=100, show_default=True,
    help="Rows sent per round.",
)  # fmt: skip
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Seconds between looks at the table when no notification woke the relay.",
)
@click.option(
    "--listen/--no-listen",
    default=True,
    show_default=True,
    help="On PostgreSQL, wake on the outbox table's notifications.",
)
@click.option(
    "--lease-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="On SQLite, how long a relay holds the rows it took.",
)
@click.option(
    "--retry-delay",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Seconds before a row the broker refused is tried again.",
)
@click.option(
    "--keep-sent",
    type=click.FloatRange(min=0),
    help="Keep sent rows this many seconds before deleting them [default: delete at once].",
)
@click.option("--once", is_flag=True, help="Send what is committed now, then exit.")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="WARNING",
    show_default=True,
    help="Log messages shown on standard error (tracebacks with MELANGE_TRACEBACK=1).",
)
def relay(
    dsn: str | None,
    backend_url: str | None,
    table: str,
    batch_size: int,
    poll_interval: float,
    listen: bool,
    lease_seconds: float,
    retry_delay: float,
    keep_sent: float | None,
    once: bool,
    log_level: str,
) -> None:
    """Send the messages committed to the outbox table to the backend, e.g.

    melange relay --dsn postgresql://app@db/orders --backend-url amqp://guest:guest@mq/%2F
    """
    dsn = dsn or os.environ.get(DSN_ENV)
    if not dsn:
        raise CommandError(f"give the outbox's database with --dsn or ${DSN_ENV}")
    configure_logging(log_level)
    with _dsn_hidden(dsn):
        backend = open_backend(backend_url)
        try:
            with reported_errors():
                runner = Relay(
                    dsn,
                    backend,
                    table=table,
                    batch_size=batch_size,
                    poll_interval=poll_interval,
                    listen=listen,
                    lease_seconds=lease_seconds,
                    retry_delay=retry_delay,
                    keep_sent=keep_sent,
                )
                if once:
                    with runner:
                        sent = runner.drain()
                    click.echo(f"sent {sent} message(s)")
                    return
                _run_until_signalled(runner)
                click.echo(f"relay stopped after sending {runner.stats.sent} message(s)")
        finally:
            backend.close_connection()


def _run_until_signalled(runner: Relay) -> None:
    def stop(signum: int, frame: FrameType | None) -> None:
        runner.stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    runner.run()


__all__ = ["DSN_ENV", "relay"]
