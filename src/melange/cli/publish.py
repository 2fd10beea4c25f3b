"""``melange publish``: send one JSON message to a queue or a topic."""

from __future__ import annotations

import json

import click

from melange.cli._common import CommandError, backend_url_option, open_backend, reported_errors
from melange.publishers import QueuePublisher, TopicPublisher
from melange.serializers.json import JsonSerializer


def parse_json(text: str) -> object:
    """``text`` parsed as JSON, or a ``CommandError`` pointing at the mistake."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        snippet = text[max(0, exc.pos - 15) : exc.pos + 15]
        raise CommandError(
            f"--json is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno} "
            f"(near {snippet!r})"
        ) from None


def parse_headers(pairs: tuple[str, ...]) -> dict[str, str]:
    """``NAME=VALUE`` pairs as a dict."""
    headers: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CommandError(f"--header {pair!r} is not of the form NAME=VALUE")
        headers[name] = value
    return headers


@click.command()
@click.argument("destination", metavar="QUEUE_OR_TOPIC")
@click.option("--json", "payload", required=True, metavar="JSON", help="The message body.")
@click.option("--topic", is_flag=True, help="DESTINATION is a topic, not a queue.")
@click.option(
    "--header", "-H", "headers", multiple=True, metavar="NAME=VALUE", help="A header (repeatable)."
)
@backend_url_option
def publish(
    destination: str, payload: str, topic: bool, headers: tuple[str, ...], backend_url: str | None
) -> None:
    """Publish one JSON message to a queue (or, with --topic, to a topic), e.g.

    melange publish orders --json '{"order_id": 42}'
    """
    data = parse_json(payload)
    header_map = parse_headers(headers)
    backend = open_backend(backend_url)
    try:
        with reported_errors():
            publisher: QueuePublisher | TopicPublisher
            publisher = (TopicPublisher if topic else QueuePublisher)(JsonSerializer(), backend)
            message = publisher.publish(destination, data, headers=header_map)
    finally:
        backend.close_connection()
    kind = "topic" if topic else "queue"
    click.echo(f"published message {message.message_id} to {kind} {destination}")
