"""The ``melange`` command: run consumers, publish, inspect queues, redrive dead letters,
declare a topology, and run the demo.

Every command takes ``--backend-url`` (default: ``$MELANGE_BACKEND_URL``, else the embedded
SQLite database) and reports errors as one line; set ``MELANGE_TRACEBACK=1`` for the full
traceback.
"""

from __future__ import annotations

import os
from typing import Any

import click

from melange import __version__
from melange.cli._common import TRACEBACK_ENV, CommandError
from melange.cli.asyncapi import asyncapi
from melange.cli.consume import consume
from melange.cli.demo import demo
from melange.cli.publish import publish
from melange.cli.queues import dlq, queues
from melange.cli.relay import relay
from melange.cli.topology import init


class _Group(click.Group):
    """Reports any error a command did not expect as one line, like the expected ones."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if os.environ.get(TRACEBACK_ENV):
                raise
            raise CommandError(
                f"unexpected {type(exc).__name__}: {exc} (set {TRACEBACK_ENV}=1 to see where)"
            ) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="melange")
def cli() -> None:
    """Melange: publish and consume messages between services."""


cli.add_command(consume)
cli.add_command(publish)
cli.add_command(queues)
cli.add_command(dlq)
cli.add_command(init)
cli.add_command(demo)
cli.add_command(asyncapi)
cli.add_command(relay)


def main() -> None:
    """Entry point of the ``melange`` console script."""
    cli(prog_name="melange")


__all__ = ["cli", "main"]
