"""``melange demo``: the payment-service and saga examples, end to end, one process per service.

For each example the demo declares the topology on a fresh SQLite database (or the backend
``--backend-url`` names), starts every service as its own process
(``python -m melange.examples...``), places the example's orders, and prints each service's
report as it happens. A tap queue subscribed to the example's topics tells when every order's
flow has ended. The demo exits 0 when every flow ended as the example expects.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import click

from melange.backends.factory import MessagingBackendFactory
from melange.backends.interfaces import MessagingBackend
from melange.backends.urls import ENV_VARIABLE
from melange.cli._common import (
    CommandError,
    backend_url_option,
    describe_backend,
    open_backend,
    reported_errors,
    table,
)
from melange.consumers import Consumer
from melange.examples.common.runtime import RETRY_NOTE, SENDER_HEADER
from melange.examples.common.serializer import DataclassSerializer
from melange.message_dispatcher import MessageDispatcher
from melange.publishers import QueuePublisher

#: Seconds to wait for a service process to stop after SIGTERM before killing it. A service
#: finishes its current receive first, which on SQS is a long poll of up to 20 seconds.
STOP_TIMEOUT = 30.0

_COLORS = {
    "demo": "white",
    "orders": "cyan",
    "order": "cyan",
    "payment": "yellow",
    "stock": "magenta",
}
_LINE = re.compile(r"^\[(?P<service>[\w-]+)\] (?P<text>.*)$")


@dataclass(frozen=True)
class Example:
    """One example the demo runs."""

    title: str
    services: tuple[tuple[str, str], ...]  # (service name, module run with python -m)
    order_queue: str
    topics: tuple[str, ...]
    declare: Callable[[MessagingBackend], None]
    serializer: DataclassSerializer
    orders: tuple[Any, ...]
    expected: dict[str, str]
    final_events: tuple[type[Any], ...]
    compensations: tuple[type[Any], ...] = ()


def _examples() -> dict[str, Example]:
    from melange.examples.payment_service import events as pay_events
    from melange.examples.payment_service import scenario as pay_scenario
    from melange.examples.payment_service import topology as pay_topology
    from melange.examples.saga import messages as saga_messages
    from melange.examples.saga import scenario as saga_scenario
    from melange.examples.saga import topology as saga_topology

    return {
        "payment": Example(
            "payment service: orders paid, retried and declined",
            (
                ("orders", "melange.examples.payment_service.orders"),
                ("payment", "melange.examples.payment_service.app"),
            ),
            pay_topology.ORDER_QUEUE,
            (pay_topology.ORDERS_TOPIC, pay_topology.PAYMENTS_TOPIC),
            pay_topology.declare_topology,
            pay_events.SERIALIZER,
            pay_scenario.DEMO_ORDERS,
            pay_scenario.EXPECTED,
            pay_events.FINAL_EVENTS,
        ),
        "saga": Example(
            "saga: order -> payment -> stock, with compensation",
            (
                ("order", "melange.examples.saga.order"),
                ("payment", "melange.examples.saga.payment"),
                ("stock", "melange.examples.saga.stock"),
            ),
            saga_topology.ORDER_QUEUE,
            (saga_topology.ORDERS_TOPIC, saga_topology.PAYMENTS_TOPIC, saga_topology.STOCK_TOPIC),
            saga_topology.declare_topology,
            saga_messages.SERIALIZER,
            saga_scenario.DEMO_ORDERS,
            saga_scenario.EXPECTED,
            saga_messages.FINAL_EVENTS,
            (saga_messages.PaymentRefunded,),
        ),
    }


class _Console:
    """Prints the lines of every process in arrival order, stamped with the elapsed time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self.retries = 0

    def line(self, text: str) -> None:
        match = _LINE.match(text)
        service, body = (match["service"], match["text"]) if match else ("?", text)
        if RETRY_NOTE in body:
            self.retries += 1
        stamp = f"{time.monotonic() - self._start:6.2f}s"
        label = click.style(f"{service:>8}", fg=_COLORS.get(service, "green"), bold=True)
        with self._lock:
            click.echo(f"{stamp} {label}  {body}")

    def say(self, text: str) -> None:
        self.line(f"[demo] {text}")


@dataclass
class _Service:
    name: str
    process: subprocess.Popen[str]
    errors: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)


def _pump(stream: TextIO, sink: Any) -> None:
    for raw in stream:
        sink(raw.rstrip("\n"))


@contextmanager
def _running(example: Example, backend_url: str, console: _Console) -> Iterator[list[_Service]]:
    # The URL travels in the environment, not on the command line, where any user of the
    # machine could read its password.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", ENV_VARIABLE: backend_url}
    services: list[_Service] = []
    try:
        for name, module in example.services:
            process = subprocess.Popen(
                [sys.executable, "-m", module],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            service = _Service(name, process)
            assert process.stdout is not None
            assert process.stderr is not None
            for stream, sink in (
                (process.stdout, console.line),
                (process.stderr, service.errors.append),
            ):
                thread = threading.Thread(target=_pump, args=(stream, sink), daemon=True)
                thread.start()
                service.threads.append(thread)
            services.append(service)
            console.say(f"started the {name} service (pid {process.pid}: python -m {module})")
        yield services
    finally:
        for service in services:
            if service.process.poll() is None:
                service.process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        # Most services stop at once; say so when some take longer (a long poll in progress).
        grace = time.monotonic() + 1.0
        while time.monotonic() < grace and any(s.process.poll() is None for s in services):
            time.sleep(0.05)
        waiting = [s.name for s in services if s.process.poll() is None]
        if waiting:
            console.say(f"waiting for {', '.join(waiting)} to finish the receive in progress")
        for service in services:
            try:
                service.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()
            for thread in service.threads:
                thread.join(5)
            for pipe in (service.process.stdout, service.process.stderr):
                if pipe is not None:
                    pipe.close()


class _Tap(Consumer):
    """Sees every event of the example: how each order's flow ended, and the compensations."""

    def __init__(self, example: Example) -> None:
        super().__init__()
        self._example = example
        self.outcomes: dict[str, tuple[str, str]] = {}
        self.compensations = 0

    def process(self, message: Any, **kwargs: Any) -> None:
        if isinstance(message, self._example.compensations):
            self.compensations += 1
        if isinstance(message, self._example.final_events):
            self.outcomes.setdefault(
                message.reference, (type(message).__name__, getattr(message, "reason", ""))
            )


@dataclass
class Result:
    """How an example ran."""

    example: Example
    ok: bool
    rows: list[tuple[str, str, str, str]]
    compensations: int


def run_example(
    example: Example, backend: MessagingBackend, backend_url: str, console: _Console, timeout: float
) -> Result:
    """Run one example: start its services, place its orders, wait for every flow to end."""
    example.declare(backend)
    tap_name = f"demo-tap-{uuid.uuid4().hex[:8]}"
    factory = MessagingBackendFactory(backend)
    factory.init_queue(tap_name, *example.topics)
    tap = _Tap(example)
    dispatcher = MessageDispatcher(example.serializer, backend=backend, consumers=[tap])
    failures: list[str] = []
    try:
        with _running(example, backend_url, console) as services:
            publisher = QueuePublisher(example.serializer, backend)
            for order in example.orders:
                publisher.publish(example.order_queue, order, headers={SENDER_HEADER: "demo"})
                console.say(f"sent {order!r} to queue {example.order_queue}")
            deadline = time.monotonic() + timeout
            while len(tap.outcomes) < len(example.expected) and time.monotonic() < deadline:
                dispatcher.consume_event(tap_name, wait_seconds=0.2)
                dead = [s for s in services if s.process.poll() is not None]
                if dead:
                    failures.extend(
                        f"the {s.name} service exited with status {s.process.returncode}"
                        for s in dead
                    )
                    break
        for service in services:
            code = service.process.returncode
            if code not in (0, None) and not failures:
                failures.append(f"the {service.name} service stopped with status {code}")
            if code not in (0, None) and service.errors:
                console.say(f"{service.name} service errors:")
                for text in service.errors[-15:]:
                    click.echo(f"          {text}", err=True)
    finally:
        dispatcher.close()
        backend.delete_queue(backend.get_queue(tap_name))
    rows = []
    ok = not failures
    for reference, expected in example.expected.items():
        outcome, detail = tap.outcomes.get(reference, ("(no outcome)", ""))
        if outcome != expected:
            ok = False
        rows.append((reference, expected, outcome, detail))
    if len(tap.outcomes) < len(example.expected) and not failures:
        console.say(f"timed out after {timeout:.0f}s waiting for the flows to end")
    for failure in failures:
        console.say(failure)
    return Result(example, ok, rows, tap.compensations)


@click.command()
@backend_url_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=45.0,
    show_default=True,
    help="Seconds each example may take.",
)
@click.option(
    "--example",
    "only",
    type=click.Choice(["payment", "saga"]),
    multiple=True,
    help="Run only this example (repeatable) [default: both].",
)
def demo(backend_url: str | None, timeout: float, only: Sequence[str]) -> None:
    """Run the payment-service and saga examples end to end, one process per service.

    Uses a temporary SQLite database unless --backend-url names a shared broker
    (memory:// cannot be shared between processes). Exits 0 when every flow ended as
    expected.
    """
    if backend_url is not None and backend_url.startswith("memory:"):
        raise CommandError(
            "the demo runs each service in its own process, and memory:// cannot be shared "
            "between processes; use sqlite:///path.db or a broker URL"
        )
    examples = _examples()
    chosen = [example for key, example in examples.items() if not only or key in only]
    with tempfile.TemporaryDirectory(prefix="melange-demo-") as tmp:
        url = backend_url or f"sqlite:///{Path(tmp) / 'demo.db'}"
        backend = open_backend(url)
        console = _Console()
        results: list[Result] = []
        try:
            console.say(f"backend: {describe_backend(backend)}")
            for example in chosen:
                click.echo(click.style(f"\n== {example.title} ==", bold=True))
                with reported_errors():
                    results.append(run_example(example, backend, url, console, timeout))
        finally:
            backend.close_connection()
    click.echo(click.style("\n== summary ==", bold=True))
    for result in results:
        verdict = click.style("ok", fg="green") if result.ok else click.style("FAILED", fg="red")
        click.echo(f"\n{result.example.title}: {verdict}")
        click.echo(table(["order", "expected", "outcome", "detail"], result.rows))
    compensations = sum(result.compensations for result in results)
    click.echo(f"\nretried deliveries: {console.retries}, compensations: {compensations}")
    if not all(result.ok for result in results):
        raise CommandError("some flows did not end as expected (see above)")
    click.echo("every flow ended as expected")
