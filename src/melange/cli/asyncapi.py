"""``melange asyncapi module:app``: write the service's AsyncAPI 3.0 document."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from melange.asyncapi import build_document, describe, dump, server_from_url
from melange.asyncapi.document import DocumentFormat
from melange.backends.urls import ENV_VARIABLE
from melange.cli._common import backend_url_option, import_attribute, reported_errors


def _format_for(output: str | None, chosen: str | None) -> DocumentFormat:
    if chosen == "json" or (chosen is None and output and output.endswith(".json")):
        return "json"
    return "yaml"


@click.command("asyncapi")
@click.argument("app", metavar="MODULE:APP")
@click.option(
    "-o",
    "--output",
    metavar="FILE",
    default=None,
    help="Write the document to FILE [default: standard output].",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["yaml", "json"]),
    default=None,
    help="yaml or json [default: json for a FILE ending .json, else yaml].",
)
@click.option("--title", default=None, help="The document's title [default: the service's name].")
@click.option(
    "--api-version", default=None, help="The service API's version (info.version) [default: 1.0.0]."
)
@backend_url_option
def asyncapi(
    app: str,
    output: str | None,
    fmt: str | None,
    title: str | None,
    api_version: str | None,
    backend_url: str | None,
) -> None:
    """Write the AsyncAPI 3.0 document of MODULE:APP.

    APP is a melange.asyncapi.ServiceDescription, an object whose describe() returns one, a
    melange.service.Service, or a function returning one of them. The document lists its
    topics and queues (with their subscriptions and dead-letter queues) as channels, what
    it sends and receives as operations, and the JSON Schema of each message type. With a
    broker URL (--backend-url or $MELANGE_BACKEND_URL), the broker is listed as the
    server, without its credentials.
    """
    with reported_errors():
        description = describe(import_attribute(app))
        if title:
            description.title = title
        if api_version:
            description.version = api_version
        url = backend_url if backend_url is not None else os.environ.get(ENV_VARIABLE)
        servers: dict[str, Any] = {}
        server = server_from_url(url) if url else None
        if server is not None:
            servers["broker"] = server
        text = dump(build_document(description, servers), _format_for(output, fmt))
        if output is None:
            click.echo(text, nl=False)
        else:
            Path(output).write_text(text, encoding="utf-8")
            click.echo(f"wrote {output}", err=True)


__all__ = ["asyncapi"]
