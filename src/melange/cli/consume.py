"""``melange consume``: run a dispatcher on a queue, or a service on its queues (in one
process or several supervised ones), until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import sys
from contextlib import ExitStack
from typing import Any

import click

from melange.backends.interfaces import MessagingBackend
from melange.cli._common import (
    TRACEBACK_ENV,
    CommandError,
    accepts_argument,
    backend_url_option,
    configure_logging,
    describe_backend,
    import_attribute,
    open_backend,
    reported_errors,
)
from melange.cli.observe import json_logging, observe
from melange.cli.serve import run_service
from melange.cli.supervise import Supervisor, command_line, stop_without_supervisor
from melange.consumers import Consumer, has_coroutine_handlers
from melange.dispatch.aio import AsyncMessageDispatcher
from melange.dispatch.base import DispatcherBase
from melange.dispatch.threaded import MessageDispatcher
from melange.serializers.json import JsonSerializer
from melange.service import Service

_log = logging.getLogger("melange.cli")


def build_dispatcher(
    target: Any,
    spec: str,
    backend_url: str | None,
    serializer_spec: str | None,
) -> tuple[DispatcherBase, MessagingBackend | None]:
    """The dispatcher ``target`` stands for, and the backend opened for it (if any).

    ``target`` is a dispatcher (threaded or asyncio), a consumer, or a callable returning
    one of them, called with the backend when it takes an argument. A consumer with
    ``async`` handlers gets an asyncio dispatcher.
    """
    if isinstance(target, DispatcherBase):
        if backend_url is not None:
            raise CommandError(
                f"{spec} is a dispatcher already bound to {describe_backend(target.backend)}, "
                "so --backend-url cannot apply; point at a factory function taking the "
                "backend instead"
            )
        return target, None
    backend = open_backend(backend_url)
    try:
        if not isinstance(target, Consumer) and callable(target):
            target = _call_factory(target, spec, backend)
        if isinstance(target, DispatcherBase):
            return target, backend
        if isinstance(target, Consumer):
            serializers: Any = JsonSerializer()
            if serializer_spec is not None:
                serializers = import_attribute(serializer_spec)
                if isinstance(serializers, type):
                    serializers = serializers()
            kind = AsyncMessageDispatcher if has_coroutine_handlers(target) else MessageDispatcher
            with reported_errors():
                return kind(serializers, backend=backend, consumers=[target]), backend
        raise CommandError(
            f"{spec} is a {type(target).__name__}, not a MessageDispatcher, a Consumer or a "
            "function returning one of them"
        )
    except BaseException:
        backend.close_connection()
        raise


def _call_factory(factory: Any, spec: str, backend: MessagingBackend) -> Any:
    with_backend = accepts_argument(factory)
    try:
        return factory(backend) if with_backend else factory()
    except Exception as exc:
        call = f"{spec}(backend)" if with_backend else f"{spec}()"
        raise CommandError(f"{call} failed: {type(exc).__name__}: {exc}") from exc


@click.command()
@click.argument("target", metavar="MODULE:ATTRIBUTE")
@click.option(
    "--queue",
    "-q",
    "queues",
    multiple=True,
    help="The queue to consume (needed for a dispatcher or consumer; for a Service: only "
    "this one of its queues; repeatable).",
)
@backend_url_option
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Messages processed at once, per queue (threads, or tasks for an asyncio "
    "dispatcher) [default: 1, or each Service queue's own].",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes, supervised: one that dies is started again; SIGTERM drains all.",
)
@click.option(
    "--reload",
    is_flag=True,
    help="Restart the workers when a .py file under the current directory changes "
    "(development; needs melange[reload]).",
)
@click.option(
    "--serializer",
    "serializer_spec",
    metavar="MODULE:ATTRIBUTE",
    help="Serializer(s) to decode with when TARGET is a plain consumer [default: JSON].",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="WARNING",
    show_default=True,
    help="Log messages shown on standard error (tracebacks with MELANGE_TRACEBACK=1).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: one readable line per record; json: one JSON object per line.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    help="Serve Prometheus metrics on this port at /metrics (needs melange[prometheus]).",
)
@click.option(
    "--health-port",
    type=click.IntRange(min=0, max=65535),
    help="Serve the liveness (/livez) and readiness (/readyz) probes on this port.",
)
@click.option(
    "--liveness-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds without a turn of the consume loop after which /livez fails.",
)
@click.option(
    "--tracing/--no-tracing",
    default=False,
    help="OpenTelemetry spans of every handled message (needs melange[otel]; spans go to "
    "the global tracer provider, e.g. under opentelemetry-instrument).",
)
def consume(
    target: str,
    queues: tuple[str, ...],
    backend_url: str | None,
    workers: int | None,
    processes: int,
    reload: bool,
    serializer_spec: str | None,
    log_level: str,
    log_format: str,
    metrics_port: int | None,
    health_port: int | None,
    liveness_timeout: float,
    tracing: bool,
) -> None:
    """Consume with the dispatcher, consumer or service MODULE:ATTRIBUTE names.

    The attribute is a MessageDispatcher or AsyncMessageDispatcher (run on an event loop), a
    Consumer (async handlers get an asyncio dispatcher), or a function returning one (given
    the backend when it takes an argument), e.g.

        melange consume melange.examples.saga.stock:create_dispatcher --queue saga-stock-service

    or a melange.service.Service, which consumes several queues in one process:

        melange consume billing.app:service --processes 2

    Runs until Ctrl-C or SIGTERM, finishing the messages in hand first; a second signal
    stops at once.
    """
    if log_format == "json":
        json_logging(log_level, tracebacks=bool(os.environ.get(TRACEBACK_ENV)))
    else:
        configure_logging(log_level)
    found = import_attribute(target)
    if processes > 1 or reload:
        sys.exit(supervised(click.get_current_context(), processes, reload))
    stop_without_supervisor()
    observing = {
        "metrics_port": metrics_port,
        "health_port": health_port,
        "liveness_timeout": liveness_timeout,
        "tracing": tracing,
    }
    if isinstance(found, Service):
        _consume_service(found, target, backend_url, queues, workers, observing, log_format)
        return
    if len(queues) != 1:
        raise CommandError(
            f"{target} is not a Service: name the one queue to consume with --queue QUEUE"
        )
    queue = queues[0]
    workers = workers or 1
    dispatcher, backend = build_dispatcher(found, target, backend_url, serializer_spec)
    where = describe_backend(dispatcher.backend)
    if log_format == "json":
        _log.info("consuming %s on %s", queue, where, extra={"queue": queue, "workers": workers})
    else:
        click.echo(
            f"consuming {queue} on {where} with {workers} worker(s); Ctrl-C to stop", err=True
        )
    try:
        with ExitStack() as servers, reported_errors():
            observe(
                dispatcher,
                servers,
                metrics_port=metrics_port,
                health_port=health_port,
                liveness_timeout=liveness_timeout,
                tracing=tracing,
                queues=[queue],
            )
            if isinstance(dispatcher, AsyncMessageDispatcher):
                asyncio.run(dispatcher.consume_loop(queue, concurrency=workers))
            elif isinstance(dispatcher, MessageDispatcher):
                dispatcher.consume_loop(queue, workers=workers)
            else:
                raise CommandError(f"{target} is a {type(dispatcher).__name__}: not runnable")
    finally:
        dispatcher.close()
        if backend is not None:
            backend.close_connection()
    stats = dispatcher.stats.as_dict()
    if log_format == "json":
        _log.info("stopped consuming %s: %s", queue, stats, extra={"queue": queue})
        return
    click.echo(
        "stopped: "
        + ", ".join(f"{name.replace('_', ' ')} {count}" for name, count in stats.items()),
        err=True,
    )


def supervised(ctx: click.Context, processes: int, reload: bool) -> int:
    """Run ``processes`` workers of this command (see :mod:`melange.cli.supervise`)."""
    if reload and importlib.util.find_spec("watchfiles") is None:
        raise CommandError("--reload needs watchfiles: pip install 'melange[reload]'")
    ports = {
        "--metrics-port": ctx.params.get("metrics_port") or 0,
        "--health-port": ctx.params.get("health_port") or 0,
    }
    arguments = command_line(ctx, {"processes", "reload", "metrics_port", "health_port"})
    return Supervisor(arguments, processes, ports=ports, reload=reload).run()


def _consume_service(
    service: Service,
    target: str,
    backend_url: str | None,
    queues: tuple[str, ...],
    workers: int | None,
    observing: dict[str, Any],
    log_format: str,
) -> None:
    def announce(text: str) -> None:
        if log_format == "json":
            _log.info(text)
        else:
            click.echo(f"{text}; Ctrl-C to stop", err=True)

    stats = run_service(
        service,
        target,
        backend_url=backend_url,
        queues=queues,
        workers=workers,
        observe_options=observing,
        announce=announce,
    )
    for queue, counts in stats.items():
        summary = ", ".join(f"{name.replace('_', ' ')} {count}" for name, count in counts.items())
        if log_format == "json":
            _log.info("stopped consuming %s: %s", queue, counts, extra={"queue": queue})
        else:
            click.echo(f"stopped {queue}: {summary}", err=True)
