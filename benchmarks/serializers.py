"""``python -m benchmarks.serializers``: what each serializer costs a publish and a consume.

The same order (eight fields, two of them nested lines) is published and consumed on the
in-memory backend with each serializer: JSON on a dict, and the typed serializers on a
dataclass, a pydantic model and a msgspec Struct. The backend does no I/O, so the differences
are the serializers' (plus the validation the typed ones do on consume). Contenders run in
interleaved rounds; the figures are medians over the rounds, in microseconds per message of
the process's CPU time (``--clock wall`` for elapsed time, which other load on the machine
inflates):

- ``publish``: ``QueuePublisher.publish`` (serialize, build the envelope, enqueue);
- ``consume``: ``MessageDispatcher.consume_event`` draining the queue into a no-op consumer
  (receive, decode and validate, route, acknowledge);
- ``codec``: serialize then deserialize alone, without Melange's envelope or backend.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pydantic

from melange.backends.factory import MessagingBackendFactory
from melange.backends.memory import InMemoryMessagingBackend
from melange.consumers import Consumer
from melange.dispatch.threaded import MessageDispatcher
from melange.publishers import QueuePublisher
from melange.serializers import DataclassSerializer, JsonSerializer, Serializer, message_type
from melange.serializers.msgspec import MsgspecSerializer
from melange.serializers.pydantic import PydanticSerializer


@dataclasses.dataclass
class LineD:
    sku: str
    quantity: int
    price_cents: int


@message_type("bench.OrderPlaced")
@dataclasses.dataclass
class OrderD:
    order_id: int
    reference: str
    customer: str
    amount_cents: int
    currency: str
    express: bool
    note: str | None
    lines: list[LineD]


class LineP(pydantic.BaseModel):
    sku: str
    quantity: int
    price_cents: int


@message_type("bench.OrderPlaced")
class OrderP(pydantic.BaseModel):
    order_id: int
    reference: str
    customer: str
    amount_cents: int
    currency: str
    express: bool
    note: str | None
    lines: list[LineP]


class LineM(msgspec.Struct):
    sku: str
    quantity: int
    price_cents: int


@message_type("bench.OrderPlaced")
class OrderM(msgspec.Struct):
    order_id: int
    reference: str
    customer: str
    amount_cents: int
    currency: str
    express: bool
    note: str | None
    lines: list[LineM]


def _fields(i: int) -> dict[str, Any]:
    return {
        "order_id": i,
        "reference": f"R-{i:06d}",
        "customer": "alice@example.com",
        "amount_cents": 12_50 + i,
        "currency": "EUR",
        "express": i % 2 == 0,
        "note": None,
        "lines": [
            {"sku": "book", "quantity": 1, "price_cents": 10_00},
            {"sku": "pen", "quantity": 2, "price_cents": 1_25},
        ],
    }


def _dataclass(i: int) -> OrderD:
    fields = _fields(i)
    fields["lines"] = [LineD(**line) for line in fields["lines"]]
    return OrderD(**fields)


#: The clock the rounds are timed with (see ``--clock``).
CLOCK: Callable[[], float] = time.process_time

#: Contender name -> (serializer, a function making message number i).
CONTENDERS: dict[str, tuple[Serializer[Any], Callable[[int], Any]]] = {
    "json (dict)": (JsonSerializer(), _fields),
    "dataclass": (DataclassSerializer(OrderD), _dataclass),
    "pydantic": (PydanticSerializer(OrderP), lambda i: OrderP.model_validate(_fields(i))),
    "msgspec": (MsgspecSerializer(OrderM), lambda i: msgspec.convert(_fields(i), OrderM)),
}


def run_round(
    serializer: Serializer[Any], make: Callable[[int], Any], count: int
) -> dict[str, float]:
    """One round of ``count`` messages: microseconds per message of each measurement."""
    payloads = [make(i) for i in range(count)]
    backend = InMemoryMessagingBackend()
    MessagingBackendFactory(backend).init_queue("bench", dead_letter_queue_name="bench-dlq")
    publisher = QueuePublisher(serializer, backend)
    started = CLOCK()
    for payload in payloads:
        publisher.publish("bench", payload)
    published = CLOCK() - started

    received: list[Any] = []
    dispatcher = MessageDispatcher(
        serializer, backend=backend, consumers=[Consumer(on_message=received.append)]
    )
    started = CLOCK()
    while len(received) < count:
        if not dispatcher.consume_event("bench"):
            raise RuntimeError(f"the queue ran dry after {len(received)} of {count} messages")
    consumed = CLOCK() - started
    dispatcher.close()
    if received[-1] != payloads[-1]:
        raise RuntimeError(f"{serializer!r} did not give back what was published")

    manifest = serializer.manifest(payloads[0])
    started = CLOCK()
    for payload in payloads:
        serializer.deserialize(serializer.serialize(payload), manifest)
    codec = CLOCK() - started
    return {
        "publish": published / count * 1e6,
        "consume": consumed / count * 1e6,
        "codec": codec / count * 1e6,
    }


def measure(count: int, rounds: int) -> dict[str, dict[str, float]]:
    """Median microseconds per message of each contender and measurement."""
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in CONTENDERS}
    for _ in range(rounds):
        for name, (serializer, make) in CONTENDERS.items():  # interleaved: drift hits all
            samples[name].append(run_round(serializer, make, count))
    return {
        name: {key: statistics.median(r[key] for r in rounds_) for key in rounds_[0]}
        for name, rounds_ in samples.items()
    }


def table(results: dict[str, dict[str, float]]) -> str:
    """The results as a Markdown table, with publish + consume relative to JSON's."""
    base = results["json (dict)"]["publish"] + results["json (dict)"]["consume"]
    lines = [
        "| serializer | publish µs/msg | consume µs/msg | publish + consume vs JSON "
        "| codec µs/msg |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        total = r["publish"] + r["consume"]
        lines.append(
            f"| {name} | {r['publish']:.1f} | {r['consume']:.1f} | {total / base:.2f}x "
            f"| {r['codec']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serializers", description=__doc__)
    parser.add_argument("--messages", type=int, default=5000, help="messages per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument(
        "--clock", choices=["cpu", "wall"], default="cpu", help="CPU time or elapsed time"
    )
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.messages < 1 or args.rounds < 1:
        parser.error("--messages and --rounds must be at least 1")
    print(table(measure(args.messages, args.rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
