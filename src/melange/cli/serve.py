"""``melange consume module:service``: run a :class:`~melange.service.Service` (several
queues in one process), with the same probes, metrics and tracing as one dispatcher."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any, cast

from melange.backends.interfaces import MessagingBackend
from melange.cli._common import CommandError, describe_backend, open_backend, reported_errors
from melange.cli.observe import observe
from melange.dispatch.base import DispatcherBase
from melange.dispatch.middleware import Middleware
from melange.service import Service


class _Backends:
    """The backends of several dispatchers, as one: ``connected`` only while every backend
    that knows its connection has it; anything else is the first backend's."""

    def __init__(self, backends: Sequence[Any]) -> None:
        self._backends = list(backends)

    @property
    def connected(self) -> bool | None:
        known = [b.connected for b in self._backends if hasattr(b, "connected")]
        return all(known) if known else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backends[0], name)


class DispatcherGroup:
    """The dispatchers of a service seen as one by the probes and the middleware: live while
    every queue's loop turns, ready while every queue's is; middleware goes to each."""

    def __init__(self, dispatchers: Sequence[DispatcherBase]) -> None:
        self.dispatchers = list(dispatchers)
        self.backend = _Backends([d.backend for d in self.dispatchers])

    def add_middleware(self, *middleware: Middleware) -> None:
        for dispatcher in self.dispatchers:
            dispatcher.add_middleware(*middleware)

    @property
    def last_turn(self) -> float:
        return min(d.last_turn for d in self.dispatchers)

    @property
    def stopping(self) -> bool:
        return any(d.stopping for d in self.dispatchers)

    @property
    def receive_failing(self) -> bool:
        return any(d.receive_failing for d in self.dispatchers)

    @property
    def cache_unreachable(self) -> bool:
        return any(d.cache_unreachable for d in self.dispatchers)


def run_service(
    service: Service,
    spec: str,
    *,
    backend_url: str | None,
    queues: Sequence[str],
    workers: int | None,
    observe_options: dict[str, Any],
    announce: Callable[[str], None],
) -> dict[str, dict[str, int]]:
    """Consume the service's queues (or ``queues``) until SIGINT/SIGTERM; the statistics of
    each queue."""
    if not service.queue_names:
        raise CommandError(f"{spec} declares no queue: add some with consume() or consumer()")
    unknown = [q for q in queues if q not in service.queue_names]
    if unknown:
        raise CommandError(
            f"{spec} does not consume {', '.join(unknown)}; its queues: "
            f"{', '.join(service.queue_names)}"
        )
    source: MessagingBackend | Callable[[], MessagingBackend] | None = service.backend
    if backend_url is not None or source is None:
        if source is not None:
            raise CommandError(
                f"{spec} has a backend of its own, so --backend-url cannot apply; leave the "
                "service's backend out to choose it on the command line"
            )
        # One backend per queue: each dispatcher interrupts and closes its own.
        source = functools.partial(open_backend, backend_url)

    selected = list(queues) or service.queue_names
    with ExitStack() as servers, reported_errors():

        def started(dispatchers: dict[str, DispatcherBase]) -> None:
            group = DispatcherGroup(list(dispatchers.values()))
            # The probes and the middleware only use what DispatcherGroup offers.
            observe(cast(DispatcherBase, group), servers, **observe_options)
            first = next(iter(dispatchers.values())).backend
            if observe_options.get("metrics_port") is not None and isinstance(
                first, MessagingBackend
            ):
                # The depth of every queue of the service (one backend reads them all).
                from prometheus_client import REGISTRY

                from melange.observability.metrics import QueueDepth

                depth = QueueDepth(first, list(dispatchers), None, REGISTRY)
                servers.callback(REGISTRY.unregister, depth)
            where = describe_backend(next(iter(dispatchers.values())).backend)
            announce(f"consuming {', '.join(dispatchers)} on {where}")

        try:
            return service.run(source, queues=selected, workers=workers, on_start=started)
        except (KeyboardInterrupt, SystemExit):
            raise
        except ValueError as exc:
            raise CommandError(str(exc)) from exc


__all__ = ["DispatcherGroup", "run_service"]
