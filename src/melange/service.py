"""A consuming service: several queues, each with its consumers and dispatcher settings,
run together in one process (``melange consume module:service``).

::

    from melange import Consumer, FailurePolicy
    from melange.service import Service

    service = Service("billing")

    @service.consumer("payments", workers=4, failure_policy=FailurePolicy(max_attempts=5))
    def charge(payment: dict) -> None:
        ...

    service.consume("refunds", Consumer(refund, name="billing.refund"))

``melange consume billing.app:service`` then consumes ``payments`` with four workers and
``refunds`` with one. Each queue gets a dispatcher of its own (an
:class:`~melange.aio.AsyncMessageDispatcher` when its handlers are ``async``), running on a
thread of its own; SIGINT or SIGTERM stops them all, each finishing the messages in hand.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from melange.backends.interfaces import MessagingBackend
from melange.consumers import Consumer, has_coroutine_handlers
from melange.dispatch.aio import AsyncMessageDispatcher
from melange.dispatch.base import DispatcherBase
from melange.dispatch.middleware import Middleware
from melange.dispatch.policy import FailurePolicy
from melange.dispatch.threaded import MessageDispatcher
from melange.serializers.json import JsonSerializer

logger = logging.getLogger("melange.service")

#: What opens a backend: called once per queue unless the service was given one backend.
BackendSource = MessagingBackend | Callable[[], MessagingBackend]


@dataclass
class QueueSettings:
    """One queue of a :class:`Service`: its consumers and how its dispatcher runs.

    Attributes:
        queue: The queue consumed.
        consumers: The consumers its messages are dispatched to.
        workers: Messages processed at once (threads; tasks for ``async`` handlers).
        options: Further keyword arguments of the dispatcher (``failure_policy``, ``cache``,
            ``middleware``, ``serializer_registry``...).
    """

    queue: str
    consumers: list[Consumer] = field(default_factory=list)
    workers: int = 1
    options: dict[str, Any] = field(default_factory=dict)


class Service:
    """Queues and their consumers, consumed together by :meth:`run`.

    Args:
        name: The service's name, in log lines.
        serializers: What messages are decoded with (a serializer, a list of them or a
            registry; default JSON), unless a queue says otherwise.
        failure_policy: The failure policy of every queue that gives none of its own.
        middleware: Middleware of every queue's dispatcher (before a queue's own).
        backend: A backend shared by every queue, or a function opening one (called once
            per queue). ``None``: ``melange consume`` opens one per queue from
            ``--backend-url`` (or ``MELANGE_BACKEND_URL``).
    """

    def __init__(
        self,
        name: str = "melange",
        *,
        serializers: Any = None,
        failure_policy: FailurePolicy | None = None,
        middleware: Sequence[Middleware] = (),
        backend: BackendSource | None = None,
    ) -> None:
        self.name = name
        self.serializers = serializers if serializers is not None else JsonSerializer()
        self.failure_policy = failure_policy
        self.middleware = tuple(middleware)
        self.backend = backend
        self._queues: dict[str, QueueSettings] = {}
        self._dispatchers: dict[str, DispatcherBase] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Service({self.name!r}, queues={self.queue_names})"

    # -- declaring ----------------------------------------------------------------------------

    def consume(
        self, queue: str, *consumers: Consumer, workers: int | None = None, **options: Any
    ) -> QueueSettings:
        """Consume ``queue`` with ``consumers`` (added to those it has already).

        Args:
            queue: The queue.
            consumers: Its consumers.
            workers: Messages processed at once on this queue (default: as set before, else 1).
            **options: Dispatcher keyword arguments for this queue (``failure_policy``,
                ``cache``, ``middleware``, ``serializer_registry``, ``always_ack``...).
        """
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        settings = self._queues.setdefault(queue, QueueSettings(queue))
        settings.consumers.extend(consumers)
        if workers is not None:
            settings.workers = workers
        settings.options.update(options)
        return settings

    def consumer(
        self,
        queue: str,
        *,
        name: str | None = None,
        accepts: Callable[[Any], bool] | None = None,
        workers: int | None = None,
        **options: Any,
    ) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
        """Decorate a handler to consume ``queue`` with it (see :meth:`consume`); the handler
        is returned as it was."""

        def register(handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
            self.consume(queue, Consumer(handler, accepts, name=name), workers=workers, **options)
            return handler

        return register

    @property
    def queue_names(self) -> list[str]:
        """The queues this service consumes, in the order they were declared."""
        return list(self._queues)

    @property
    def queues(self) -> list[QueueSettings]:
        """The settings of every queue."""
        return list(self._queues.values())

    @property
    def dispatchers(self) -> dict[str, DispatcherBase]:
        """The dispatcher of each queue while :meth:`run` runs (for probes and metrics)."""
        with self._lock:
            return dict(self._dispatchers)

    # -- running ------------------------------------------------------------------------------

    def build_dispatcher(
        self, settings: QueueSettings, backend: MessagingBackend
    ) -> DispatcherBase:
        """The dispatcher of one queue on ``backend``."""
        if not settings.consumers:
            raise ValueError(f"queue {settings.queue!r} of {self!r} has no consumer")
        options = dict(settings.options)
        serializers = options.pop("serializer_registry", self.serializers)
        options.setdefault("failure_policy", self.failure_policy)
        options["middleware"] = (*self.middleware, *options.get("middleware", ()))
        asynchronous = any(has_coroutine_handlers(c) for c in settings.consumers)
        kind = AsyncMessageDispatcher if asynchronous else MessageDispatcher
        return kind(serializers, backend=backend, consumers=settings.consumers, **options)

    def run(
        self,
        backend: BackendSource | None = None,
        *,
        queues: Sequence[str] | None = None,
        workers: int | None = None,
        install_signal_handlers: bool = True,
        on_start: Callable[[dict[str, DispatcherBase]], Any] | None = None,
    ) -> dict[str, dict[str, int]]:
        """Consume every queue (or ``queues``) until :meth:`stop`, SIGINT or SIGTERM.

        Each queue's dispatcher runs on a thread of its own. On stop, every dispatcher
        finishes the messages in hand and returns; a second signal stops at once. A
        dispatcher that fails (its queue does not exist, say) stops the others and its error
        is raised, so that a supervisor restarts the process.

        Args:
            backend: Overrides the service's ``backend``.
            queues: Consume only these of the service's queues.
            workers: Overrides the workers of every queue.
            install_signal_handlers: Handle SIGINT/SIGTERM (only in the main thread).
            on_start: Called with the dispatchers once built, before consuming starts.

        Returns:
            The statistics of each queue's dispatcher.
        """
        source = backend if backend is not None else self.backend
        if source is None:
            raise ValueError(f"{self!r} has no backend: pass one to run() or to Service()")
        selected = self._select(queues)
        opened: list[MessagingBackend] = []
        self._stop.clear()
        try:
            built: dict[str, DispatcherBase] = {}
            for settings in selected:
                if isinstance(source, MessagingBackend):
                    queue_backend = source
                else:
                    queue_backend = source()
                    opened.append(queue_backend)
                built[settings.queue] = self.build_dispatcher(settings, queue_backend)
            with self._lock:
                self._dispatchers = built
            if on_start is not None:
                on_start(dict(built))
            with self._signals(install_signal_handlers):
                self._run_all(selected, built, workers)
            return {queue: d.stats.as_dict() for queue, d in built.items()}
        finally:
            with self._lock:
                dispatchers, self._dispatchers = self._dispatchers, {}
            for dispatcher in dispatchers.values():
                dispatcher.close()
            for opened_backend in opened:
                opened_backend.close_connection()

    def stop(self) -> None:
        """Ask every queue's dispatcher to finish the messages in hand and return."""
        self._stop.set()
        for dispatcher in self.dispatchers.values():
            dispatcher.stop()

    def _select(self, queues: Sequence[str] | None) -> list[QueueSettings]:
        if not self._queues:
            raise ValueError(f"{self!r} declares no queue: add some with consume() or consumer()")
        if queues is None:
            return list(self._queues.values())
        unknown = [q for q in queues if q not in self._queues]
        if unknown:
            raise ValueError(
                f"{self!r} does not consume {', '.join(map(repr, unknown))}; its queues: "
                f"{', '.join(self._queues)}"
            )
        return [self._queues[q] for q in queues]

    def _run_all(
        self,
        selected: list[QueueSettings],
        built: dict[str, DispatcherBase],
        workers: int | None,
    ) -> None:
        failures: list[BaseException] = []
        done = threading.Event()
        remaining = [len(selected)]

        def run_one(settings: QueueSettings) -> None:
            dispatcher = built[settings.queue]
            count = workers or settings.workers
            try:
                if isinstance(dispatcher, AsyncMessageDispatcher):
                    asyncio.run(
                        dispatcher.consume_loop(
                            settings.queue, concurrency=count, install_signal_handlers=False
                        )
                    )
                elif isinstance(dispatcher, MessageDispatcher):
                    dispatcher.consume_loop(
                        settings.queue, workers=count, install_signal_handlers=False
                    )
            except BaseException as exc:
                logger.error(
                    "consuming %s failed: %s: %s",
                    settings.queue,
                    type(exc).__name__,
                    exc,
                    extra={"queue": settings.queue},
                )
                failures.append(exc)
                self.stop()  # one queue down: the process stops, for its supervisor
            finally:
                with self._lock:
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        done.set()

        threads = [
            threading.Thread(target=run_one, args=(s,), name=f"melange-{s.queue}", daemon=True)
            for s in selected
        ]
        for thread in threads:
            thread.start()
        # Waiting with a timeout keeps the main thread able to take signals.
        while not done.wait(0.2):
            pass
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]

    @contextmanager
    def _signals(self, install: bool) -> Iterator[None]:
        if not install or threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            if self._stop.is_set():
                raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)
            logger.info(
                "signal %s received: every queue finishes the messages in hand", int(signum)
            )
            self.stop()

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


__all__ = ["BackendSource", "QueueSettings", "Service"]
