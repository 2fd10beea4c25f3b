"""``melange queues`` and ``melange dlq``: look into queues, purge them, redrive dead letters."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import click

from melange.backends.interfaces import MessagingBackend
from melange.cli._common import (
    CommandError,
    backend_url_option,
    body_preview,
    open_backend,
    printable,
    reported_errors,
    table,
)
from melange.cli.inspector import Inspector, json_text
from melange.models import (
    FAILURE_ATTEMPTS,
    FAILURE_CONSUMER,
    FAILURE_EXCEPTION,
    FAILURE_QUEUE,
    FAILURE_REASON,
    Message,
    QueueWrapper,
)

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar

#: Prefix of the headers the failure policy adds to a dead-lettered message.
FAILURE_PREFIX = "melange_failure_"

#: ``--json`` on a command: print one JSON document instead of a table.
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document instead of a table."
)


@click.group()
def queues() -> None:
    """List queues, show their message counts, purge them."""


@queues.command("list")
@json_option
@backend_url_option
def list_queues(as_json: bool, backend_url: str | None) -> None:
    """List every queue and topic with how many messages each queue holds."""
    backend = open_backend(backend_url)
    try:
        with reported_errors():
            inspector = Inspector(backend)
            names = inspector.queue_names()
            rows = [(name, inspector.stats(name)["total"]) for name in names]
            topics = inspector.topic_names()
    finally:
        backend.close_connection()
    if as_json:
        listed = [{"name": name, "messages": total} for name, total in rows]
        click.echo(json_text({"queues": listed, "topics": topics}))
        return
    if not rows:
        click.echo("no queues (create some with `melange init FILE`)")
    else:
        click.echo(table(["queue", "messages"], rows))
    if topics is not None:
        click.echo(f"\ntopics: {printable(', '.join(topics)) if topics else '(none)'}")


@queues.command("stats")
@click.argument("names", nargs=-1, metavar="[QUEUE]...")
@json_option
@backend_url_option
def stats(names: tuple[str, ...], as_json: bool, backend_url: str | None) -> None:
    """Show ready, in-flight and delayed messages of the queues (default: all)."""
    backend = open_backend(backend_url)
    try:
        with reported_errors():
            inspector = Inspector(backend)
            selected = list(names) or inspector.queue_names()
            rows = []
            listed = []
            for name in selected:
                counts = inspector.stats(name)
                listed.append({"name": name, **counts})
                rows.append(
                    (name, counts["ready"], counts["in_flight"], counts["delayed"], counts["total"])
                )
    finally:
        backend.close_connection()
    if as_json:
        click.echo(json_text({"queues": listed}))
        return
    if not rows:
        click.echo("no queues")
        return
    click.echo(table(["queue", "ready", "in flight", "delayed", "total"], rows))


@queues.command("purge")
@click.argument("name", metavar="QUEUE")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
@backend_url_option
def purge(name: str, yes: bool, as_json: bool, backend_url: str | None) -> None:
    """Delete the messages of QUEUE (those in flight too, where the broker can)."""
    backend = open_backend(backend_url)
    try:
        with reported_errors():
            inspector = Inspector(backend)
            total = inspector.stats(name)["total"]
            if not yes:
                click.confirm(f"delete the {total} message(s) of {name}?", abort=True)
            deleted = inspector.purge(name)
    finally:
        backend.close_connection()
    count = deleted if deleted is not None else total
    if as_json:
        click.echo(json_text({"queue": name, "deleted": count}))
        return
    click.echo(f"purged {printable(name)}: {count} message(s) deleted")


@click.group()
def dlq() -> None:
    """Inspect dead-lettered messages and move them back to their queue."""


@dlq.command("show")
@click.argument("name", metavar="DEAD_LETTER_QUEUE")
@click.option("--limit", "-n", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--body/--no-body", default=False, help="Show each message's body too.")
@json_option
@backend_url_option
def show(name: str, limit: int, body: bool, as_json: bool, backend_url: str | None) -> None:
    """Show the messages of DEAD_LETTER_QUEUE and why each failed, oldest first.

    Copies with the same message id (left by a consumer stopped between dead-lettering a
    message and acknowledging it) are shown once, with how many copies there are. Where the
    broker tells, the queues that dead-letter into DEAD_LETTER_QUEUE are named too. With
    ``--json``, every message comes with its headers and body.
    """
    backend = open_backend(backend_url)
    try:
        with reported_errors():
            inspector = Inspector(backend)
            total = inspector.stats(name)["total"]
            messages, copies = _peek_distinct(inspector, name, limit)
            sources = inspector.dead_letter_sources(name)
    finally:
        backend.close_connection()
    if as_json:
        listed = [
            {
                "message_id": m.message_id,
                "manifest": m.manifest,
                "from_queue": m.headers.get(FAILURE_QUEUE),
                "attempts": m.headers.get(FAILURE_ATTEMPTS),
                "exception": m.headers.get(FAILURE_EXCEPTION) or None,
                "reason": m.headers.get(FAILURE_REASON),
                "consumer": m.headers.get(FAILURE_CONSUMER),
                "copies": copies[m.message_id],
                "headers": dict(m.headers),
                "body": m.content,
            }
            for m in messages
        ]
        document = {"queue": name, "total": total, "sources": sources, "messages": listed}
        click.echo(json_text(document))
        return
    if sources:
        click.echo(f"dead letters of: {printable(', '.join(sources))}")
    if not messages:
        click.echo(f"{printable(name)} is empty")
        return
    collapsed = any(copies[m.message_id] > 1 for m in messages)
    rows = []
    for message in messages:
        h = message.headers
        row: list[object] = [
            message.message_id[:12],
            message.manifest,
            h.get(FAILURE_QUEUE),
            h.get(FAILURE_ATTEMPTS),
            h.get(FAILURE_EXCEPTION) or None,
            h.get(FAILURE_REASON),
        ]
        if collapsed:
            row.append(copies[message.message_id])
        if body:
            row.append(body_preview(message))
        rows.append(row)
    headers = ["message", "manifest", "from queue", "attempts", "exception", "reason"]
    if collapsed:
        headers.append("copies")
    if body:
        headers.append("body")
    click.echo(table(headers, rows))
    if collapsed:
        read = sum(copies[m.message_id] for m in messages)
        duplicates = read - len(messages)
        click.echo(
            f"\n{len(messages)} message(s) shown, from {read} of {total} stored copies: "
            f"{duplicates} duplicate copy(ies) with the same message id collapsed "
            "(redrive moves each message once)"
        )
    else:
        click.echo(f"\n{len(messages)} of {total} message(s) shown")
    consumers = sorted(
        {m.headers[FAILURE_CONSUMER] for m in messages if m.headers.get(FAILURE_CONSUMER)}
    )
    if consumers:
        click.echo(f"failing consumer(s): {printable(', '.join(consumers))}")


def _peek_distinct(
    inspector: Inspector, queue: str, limit: int
) -> tuple[list[Message], Counter[str]]:
    """Up to ``limit`` distinct messages of ``queue`` (the oldest copy of each message id),
    oldest first, and how many copies of each message id were read."""
    wanted = limit
    while True:
        read = inspector.peek(queue, wanted)
        copies = Counter(m.message_id for m in read)
        if len(copies) >= limit or len(read) < wanted:
            break
        wanted *= 2  # duplicates took some of the places: read further
    first: dict[str, Message] = {}
    for message in read:
        first.setdefault(message.message_id, message)
    return list(first.values())[:limit], copies


def _redriven(message: Message) -> Message:
    """A copy of ``message`` to publish again: same id and body, failure headers dropped."""
    headers = {k: v for k, v in message.headers.items() if not k.startswith(FAILURE_PREFIX)}
    copy = Message(
        message.message_id, message.content, None, message.serializer_id, message.manifest, headers
    )
    copy.group_id = message.group_id
    return copy


def redrive_messages(
    backend: MessagingBackend,
    dead_letter_queue: str,
    to: str | None,
    limit: int | None,
    progress: ProgressBar[int] | None = None,
    fallback: str | None = None,
) -> tuple[int, int, int]:
    """Move messages from ``dead_letter_queue`` back to their source queue.

    Each message is published to its source queue before it is acknowledged on the
    dead-letter queue, so a crash in between duplicates it rather than losing it. Messages
    whose source is unknown (no ``to``, no failure header: for example dead-lettered by the
    broker itself) go to ``fallback``, the queue's only dead-letter source where the broker
    tells, or else stay where they are. A message is moved
    once: further copies with the id of a message already moved (left by a consumer stopped
    between dead-lettering and acknowledging) are deleted without being published again.

    Returns how many were moved, how many were left and how many duplicate copies deleted.
    """
    dlq_wrapper = backend.get_queue(dead_letter_queue)
    targets: dict[str, QueueWrapper] = {}
    moved = 0
    moved_ids: set[str] = set()
    duplicates = 0
    # Received and not settled: given back at the end, whatever happens, so that nothing
    # stays in flight (unsourced messages are held until then so they are not received again).
    in_hand: list[Message] = []
    unsourced = 0
    try:
        while limit is None or moved < limit:
            size = 10 if limit is None else min(10, limit - moved)
            batch = backend.retrieve_messages(dlq_wrapper, max_messages=size)
            if not batch:
                # A broker that pushes deliveries (RabbitMQ) may answer before the first of
                # them arrived: only a receive that waited tells that the queue is empty.
                batch = backend.retrieve_messages(dlq_wrapper, max_messages=size, wait_seconds=1)
            if not batch:
                break
            in_hand.extend(batch)
            for message in batch:
                if message.message_id in moved_ids:
                    backend.acknowledge(message)
                    in_hand.remove(message)
                    duplicates += 1
                    if progress is not None:
                        progress.update(1)
                    continue
                target = to or message.headers.get(FAILURE_QUEUE) or fallback
                if not target or target == dead_letter_queue:
                    unsourced += 1
                    continue
                if target not in targets:
                    targets[target] = backend.get_queue(target)
                backend.publish_to_queue(_redriven(message), targets[target])
                backend.acknowledge(message)
                in_hand.remove(message)
                moved_ids.add(message.message_id)
                moved += 1
                if progress is not None:
                    progress.update(1)
    finally:
        for message in in_hand:
            backend.nack(message, 0.0)
    return moved, unsourced, duplicates


@dlq.command("redrive")
@click.argument("name", metavar="DEAD_LETTER_QUEUE")
@click.option(
    "--to",
    metavar="QUEUE",
    help="Move the messages to this queue [default: the queue each one failed in].",
)
@click.option("--limit", "-n", type=click.IntRange(min=1), help="Move at most this many.")
@json_option
@backend_url_option
def redrive(
    name: str, to: str | None, limit: int | None, as_json: bool, backend_url: str | None
) -> None:
    """Move the messages of DEAD_LETTER_QUEUE back to the queue they failed in.

    A message that does not say where it failed (dead-lettered by the broker itself) goes
    back to the one queue that dead-letters into DEAD_LETTER_QUEUE, where the broker tells
    (SQS's redrive policies, RabbitMQ's management API), or else needs ``--to``.
    """
    if to == name:
        raise CommandError(f"--to names the dead-letter queue {name} itself")
    backend = open_backend(backend_url)
    try:
        with reported_errors():
            inspector = Inspector(backend)
            total: int | None
            try:
                total = inspector.stats(name)["total"]
            except CommandError:
                total = None  # the backend cannot count: no progress bar
            sources = inspector.dead_letter_sources(name) if to is None else None
            fallback = sources[0] if sources and len(sources) == 1 else None
            if limit is not None and total is not None:
                total = min(total, limit)
            if total and not as_json:
                with click.progressbar(length=total, label=f"redriving {name}") as bar:
                    moved, left, duplicates = redrive_messages(
                        backend, name, to, limit, bar, fallback
                    )
            else:
                moved, left, duplicates = redrive_messages(
                    backend, name, to, limit, fallback=fallback
                )
    finally:
        backend.close_connection()
    if as_json:
        click.echo(
            json_text({"queue": name, "moved": moved, "left": left, "duplicates": duplicates})
        )
    else:
        click.echo(f"moved {moved} message(s) out of {printable(name)}")
        if duplicates:
            click.echo(
                f"deleted {duplicates} duplicate copy(ies) of message(s) already moved "
                "(same message id)"
            )
    if left:
        raise CommandError(
            f"{left} message(s) do not say which queue they failed in and were left in {name}; "
            "pass --to QUEUE to move them"
        )
