"""What ``melange consume`` sets up to be watched: JSON logs, metrics, probes, tracing."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from contextlib import ExitStack

from melange.backends.interfaces import MessagingBackend
from melange.cli._common import CommandError, _given_urls
from melange.dispatch.base import DispatcherBase
from melange.dispatch.middleware import Middleware
from melange.observability.health import Health
from melange.observability.http import ProbeServer
from melange.observability.logs import JsonFormatter
from melange.publish_middleware import install_publish_middleware
from melange.redaction import redact_text


def json_logging(level: str, tracebacks: bool) -> None:
    """Send log records to standard error at ``level``, one JSON object per line, with the
    secrets of the URLs given to this process hidden."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter(tracebacks=tracebacks, redact=lambda text: redact_text(text, *_given_urls()))
    )
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())


def _require(module: str, extra: str, option: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise CommandError(f"{option} needs {module}: pip install 'melange[{extra}]'")


def observe(
    dispatcher: DispatcherBase,
    servers: ExitStack,
    *,
    metrics_port: int | None,
    health_port: int | None,
    liveness_timeout: float,
    tracing: bool,
    queues: Sequence[str] = (),
) -> None:
    """Add the metrics and tracing middleware to ``dispatcher`` and start the HTTP servers
    (one when both ports are the same), closed when ``servers`` is. With metrics, the depth
    of ``queues`` and of their dead-letter queues is exported too, where the backend can
    tell."""
    added: list[Middleware] = []
    if metrics_port is not None:
        _require("prometheus_client", "prometheus", "--metrics-port")
        from melange.observability.metrics import PrometheusMetrics

        added.append(PrometheusMetrics())
    if tracing:
        _require("opentelemetry", "otel", "--tracing")
        from melange.observability.tracing import Tracing

        tracer = Tracing.for_backend(dispatcher.backend)
        added.append(tracer)
        # What the consumers publish carries the trace on, whatever publisher they use.
        install_publish_middleware(tracer)
    if added:
        dispatcher.add_middleware(*added)
    opened: dict[int, ProbeServer] = {}

    def server(port: int) -> ProbeServer:
        if port not in opened:
            try:
                opened[port] = servers.enter_context(ProbeServer(port))
            except OSError as exc:
                raise CommandError(f"cannot listen on port {port}: {exc.strerror}") from exc
        return opened[port]

    if metrics_port is not None:
        from prometheus_client import REGISTRY

        from melange.observability.metrics import QueueDepth, serve_metrics

        if queues and isinstance(dispatcher.backend, MessagingBackend):
            servers.callback(
                REGISTRY.unregister, QueueDepth(dispatcher.backend, queues, None, REGISTRY)
            )
        serve_metrics(server(metrics_port))
    if health_port is not None:
        Health(dispatcher, liveness_timeout=liveness_timeout).serve(server(health_port))


__all__ = ["json_logging", "observe"]
