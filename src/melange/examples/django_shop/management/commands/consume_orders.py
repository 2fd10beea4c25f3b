"""``python manage.py consume_orders``: consume the shop's queues until SIGINT or SIGTERM.

Each queue's messages are handled on threads of this process, as ``melange consume`` does;
on SIGTERM every queue finishes the messages in hand and the command returns.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from melange.dispatch.base import DispatcherBase
from melange.examples.django_shop.messaging import build_service, declare_queues, open_backend


class Command(BaseCommand):  # type: ignore[misc]  # Django ships no type information
    help = "Consume the shop's queues until SIGINT or SIGTERM (finishing the messages in hand)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--workers", type=int, default=None, help="messages handled at once on each queue"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        service = build_service()
        backend = open_backend()
        try:
            declare_queues(backend)
        finally:
            backend.close_connection()

        def started(dispatchers: dict[str, DispatcherBase]) -> None:
            self.stdout.write(f"consuming {', '.join(dispatchers)}; Ctrl-C to stop")
            self.stdout.flush()

        stats = service.run(open_backend, workers=options["workers"], on_start=started)
        for queue, counts in stats.items():
            self.stdout.write(
                f"stopped {queue}: received {counts['received']}, "
                f"acknowledged {counts['acknowledged']}, dead lettered {counts['dead_lettered']}"
            )
