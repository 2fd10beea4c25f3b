"""``melange init``: declare topics, queues, subscriptions and dead-letter queues from TOML.

The file::

    # Topics to create even when no queue subscribes to them (optional).
    topics = ["audit"]

    [queues.payment-service]
    topics = ["orders"]                       # subscribe to these topics (created if needed)
    filter_events = ["OrderCreated"]          # only these manifests arrive from the topics
    dead_letter_queue = "payment-service-dlq"
    max_receive_count = 5                     # deliveries before the broker dead-letters
    visibility_timeout = 30                   # seconds

    [queues.audit-log]
    topics = ["orders", "payments"]

Every declaration is idempotent: running ``melange init`` again changes nothing that exists.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from melange.backends.factory import MessagingBackendFactory
from melange.backends.interfaces import MessagingBackend
from melange.backends.numbers import check_number
from melange.cli._common import (
    CommandError,
    backend_url_option,
    describe_backend,
    open_backend,
    reported_errors,
    table,
)
from melange.exceptions import ConfigurationError

#: The keys a queue table may have: the types allowed, and how to say so.
_QUEUE_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "topics": (list, "a list of topic names"),
    "filter_events": (list, "a list of manifests"),
    "dead_letter_queue": (str, "a queue name"),
    "max_receive_count": (int, "a whole number"),
    "visibility_timeout": ((int, float), "a number of seconds"),
}


@dataclass(frozen=True)
class QueueSpec:
    """One queue of a topology file."""

    name: str
    topics: tuple[str, ...] = ()
    dead_letter_queue: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Topology:
    """What a topology file declares."""

    topics: tuple[str, ...]
    queues: tuple[QueueSpec, ...]


def load_topology(path: Path) -> Topology:
    """Read and check a topology file; every mistake is a ``CommandError`` naming the key."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CommandError(f"topology file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise CommandError(f"{path} is not valid TOML: {exc}") from None
    unknown = set(raw) - {"topics", "queues"}
    if unknown:
        raise CommandError(
            f"{path}: unknown top-level key(s) {sorted(unknown)}; expected 'topics' and "
            "[queues.NAME] tables"
        )
    topics = _strings(raw.get("topics", []), f"{path}: topics")
    queues_raw = raw.get("queues", {})
    if not isinstance(queues_raw, dict):
        raise CommandError(f"{path}: 'queues' must be tables, e.g. [queues.orders]")
    queues = []
    for name, spec in queues_raw.items():
        where = f"{path}: queues.{name}"
        if not isinstance(spec, dict):
            raise CommandError(f"{where} must be a table, e.g. [queues.{name}]")
        bad = set(spec) - set(_QUEUE_KEYS)
        if bad:
            raise CommandError(
                f"{where}: unknown key(s) {sorted(bad)}; known: {sorted(_QUEUE_KEYS)}"
            )
        for key, (expected, description) in _QUEUE_KEYS.items():
            value = spec.get(key)
            if value is not None and (not isinstance(value, expected) or isinstance(value, bool)):
                raise CommandError(f"{where}.{key} must be {description}, got {value!r}")
        options: dict[str, Any] = {}
        if "filter_events" in spec:
            options["filter_events"] = list(
                _strings(spec["filter_events"], f"{where}.filter_events")
            )
        for key in ("max_receive_count", "visibility_timeout"):
            if key in spec:
                # TOML has nan and inf: a queue declared with them would never work.
                try:
                    check_number(
                        f"{where}.{key}",
                        spec[key],
                        positive=True,
                        integer=key == "max_receive_count",
                    )
                except ConfigurationError as exc:
                    raise CommandError(str(exc)) from None
                options[key] = spec[key]
        queues.append(
            QueueSpec(
                name,
                _strings(spec.get("topics", []), f"{where}.topics"),
                spec.get("dead_letter_queue"),
                options,
            )
        )
    if not topics and not queues:
        raise CommandError(f"{path} declares nothing: add topics = [...] or [queues.NAME] tables")
    return Topology(topics, tuple(queues))


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise CommandError(f"{where} must be a list of non-empty strings, got {value!r}")
    return tuple(value)


def apply_topology(backend: MessagingBackend, topology: Topology) -> list[tuple[str, str, str]]:
    """Declare everything ``topology`` lists; returns (kind, name, detail) rows."""
    factory = MessagingBackendFactory(backend)
    done: list[tuple[str, str, str]] = []
    for topic in topology.topics:
        factory.init_topic(topic)
        done.append(("topic", topic, ""))
    for queue in topology.queues:
        factory.init_queue(
            queue.name,
            *queue.topics,
            dead_letter_queue_name=queue.dead_letter_queue,
            **queue.options,
        )
        detail = []
        if queue.topics:
            detail.append("subscribed to " + ", ".join(queue.topics))
        if "filter_events" in queue.options:
            detail.append("only " + ", ".join(queue.options["filter_events"]))
        if queue.dead_letter_queue:
            detail.append(f"dead letters to {queue.dead_letter_queue}")
        done.append(("queue", queue.name, "; ".join(detail)))
    return done


@click.command("init")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@backend_url_option
def init(file: Path, backend_url: str | None) -> None:
    """Declare the topics and queues described in the TOML FILE (idempotent).

    \b
    topics = ["audit"]
    [queues.payment-service]
    topics = ["orders"]
    filter_events = ["OrderCreated"]
    dead_letter_queue = "payment-service-dlq"
    max_receive_count = 5
    visibility_timeout = 30
    """
    topology = load_topology(file)
    backend = open_backend(backend_url)
    try:
        with reported_errors():
            rows = apply_topology(backend, topology)
            where = describe_backend(backend)
    finally:
        backend.close_connection()
    click.echo(table(["kind", "name", "detail"], rows))
    click.echo(f"\ndeclared {len(rows)} item(s) on {where}")
