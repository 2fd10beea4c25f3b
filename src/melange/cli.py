"""The ``melange`` command line."""

from __future__ import annotations

import click

from melange.backends.factory import MessagingBackendFactory
from melange.backends.memory import InMemoryMessagingBackend
from melange.consumers import Consumer
from melange.message_dispatcher import MessageDispatcher
from melange.publishers import QueuePublisher
from melange.serializers.json import JsonSerializer


@click.group()
def main() -> None:
    """Melange: publish and consume messages between services."""


@main.command()
def demo() -> None:
    """Publish a few messages and consume them, printing what happens."""
    backend = InMemoryMessagingBackend()
    MessagingBackendFactory(backend).init_queue("orders")
    publisher = QueuePublisher(JsonSerializer(), backend)
    for order_id in range(3):
        publisher.publish("orders", {"order_id": order_id})
        click.echo(f"published order {order_id}")
    dispatcher = MessageDispatcher(
        JsonSerializer(),
        backend=backend,
        consumers=[Consumer(lambda m: click.echo(f"consumed order {m['order_id']}"))],
    )
    dispatcher.consume_event("orders")
    click.echo(f"done: {dispatcher.stats.acknowledged} acknowledged")
