"""Connection loss: publishers and consumers reconnect, and no message is lost."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from melange.backends.rabbitmq import RabbitMQBackend
from melange.consumers import Consumer
from melange.message_dispatcher import MessageDispatcher
from melange.publishers import QueuePublisher
from melange.serializers.json import JsonSerializer
from melange.testing.conformance import Topology, make_message, receive

pytestmark = pytest.mark.rabbitmq

#: Messages published after the connections were cut; the stream stops then.
AFTER_CUT = 200
MAX_MESSAGES = 5000


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
def test_every_message_is_consumed_when_connections_are_closed_mid_stream(
    make_rabbit: Callable[..., RabbitMQBackend],
    kill_connections: Callable[[], int],
    queue_type: str,
    record_property: Callable[[str, Any], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="melange")
    publisher_backend = make_rabbit(queue_type=queue_type)
    consumer_backend = make_rabbit(queue_type=queue_type)
    topology = Topology(publisher_backend)
    dispatcher: MessageDispatcher | None = None
    try:
        queue = topology.queue()
        published: list[int] = []
        consumed: list[int] = []
        lock = threading.Lock()
        publish_errors: list[BaseException] = []

        def handle(payload: dict[str, int]) -> None:
            with lock:
                consumed.append(payload["n"])

        dispatcher = MessageDispatcher(
            JsonSerializer(), backend=consumer_backend, consumers=[Consumer(on_message=handle)]
        )
        loop = threading.Thread(
            target=dispatcher.consume_loop,
            args=(queue.name,),
            kwargs={"install_signal_handlers": False},
        )
        loop.start()

        cut = threading.Event()

        def publish_all() -> None:
            # A steady stream that goes on for AFTER_CUT messages once the connections were cut.
            publisher = QueuePublisher(JsonSerializer(), publisher_backend)
            after_cut = 0
            try:
                for n in range(MAX_MESSAGES):
                    publisher.publish(queue.name, {"n": n})
                    with lock:
                        published.append(n)
                    if cut.is_set():
                        after_cut += 1
                        if after_cut >= AFTER_CUT:
                            return
                    time.sleep(0.002)
            except BaseException as exc:
                publish_errors.append(exc)

        producer = threading.Thread(target=publish_all)
        producer.start()
        # Strike while both sides are busy: some published, some consumed, more to come.
        wait_until(lambda: len(published) >= 100 and len(consumed) >= 30, 60, "traffic")
        closed = kill_connections()
        cut.set()
        assert closed >= 2, f"expected the publisher's and consumer's connections, closed {closed}"
        producer.join(120)
        assert not publish_errors, f"publishing failed: {publish_errors!r}"
        total = len(published)
        assert total < MAX_MESSAGES
        wait_until(lambda: set(consumed) >= set(published), 90, "every message to be consumed")
        dispatcher.stop()
        loop.join(30)
        assert not loop.is_alive()

        assert sorted(set(consumed)) == list(range(total))
        duplicates = sum(count - 1 for count in Counter(consumed).values())
        record_property("duplicates", duplicates)
        print(f"\n{queue_type}: {total} published, {len(consumed)} consumed, {duplicates} dup")
        # Both sides went through a reconnect.
        assert publisher_backend._link.generation >= 2
        assert consumer_backend._link.generation >= 2
        assert any("lost" in r.getMessage() for r in caplog.records)
    finally:
        if dispatcher is not None:
            dispatcher.stop()
        topology.cleanup()


def test_unacknowledged_messages_are_redelivered_after_the_connection_drops(
    make_rabbit: Callable[..., RabbitMQBackend],
    kill_connections: Callable[[], int],
    topology: Topology,
    rabbit: RabbitMQBackend,
) -> None:
    queue = topology.queue()
    rabbit.publish_batch_to_queue([make_message(str(i)) for i in range(5)], queue)
    held = receive(rabbit, queue, 5)
    assert len(held) == 5
    kill_connections()
    again = receive(rabbit, queue, 5, timeout=30)
    assert sorted(m.content for m in again) == [str(i) for i in range(5)]
    assert all(m.attempt == 1 for m in again)  # no handler failed: no attempt used up
    # Settling a message received on the old connection is a harmless no-op.
    rabbit.acknowledge_batch(held)
    rabbit.acknowledge_batch(again)
    assert rabbit.retrieve_messages(queue, wait_seconds=1) == []


def test_a_network_outage_is_survived_by_publishers_and_consumers(
    make_rabbit: Callable[..., RabbitMQBackend],
    proxy: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="melange")
    # Through the relay: the connections break like a network does, not by the broker's hand.
    via_proxy = {"port": proxy.port, "heartbeat": 2, "reconnect_max_delay": 0.5}
    publisher_backend = make_rabbit(**via_proxy)
    consumer_backend = make_rabbit(**via_proxy)
    topology = Topology(publisher_backend)
    consumed: list[int] = []
    lock = threading.Lock()
    dispatcher = MessageDispatcher(
        JsonSerializer(),
        backend=consumer_backend,
        consumers=[Consumer(on_message=lambda p: consumed.append(p["n"]))],
    )
    loop_errors: list[Exception] = []
    try:
        queue = topology.queue()
        loop = threading.Thread(
            target=dispatcher.consume_loop,
            args=(queue.name,),
            kwargs={"install_signal_handlers": False, "on_exception": loop_errors.append},
        )
        loop.start()
        publisher = QueuePublisher(JsonSerializer(), publisher_backend)
        for n in range(100):
            publisher.publish(queue.name, {"n": n})
        wait_until(lambda: len(consumed) >= 20, 30, "traffic")
        # The network fails, and stays down for two seconds.
        proxy.refusing.set()
        assert proxy.cut() >= 4
        outage = threading.Timer(2.0, proxy.refusing.clear)
        outage.start()
        # A publish during the outage waits for the connection to come back.
        for n in range(100, 150):
            publisher.publish(queue.name, {"n": n})
        outage.join()
        wait_until(lambda: set(consumed) >= set(range(150)), 60, "every message")
        with lock:
            duplicates = len(consumed) - len(set(consumed))
        print(f"\nnetwork outage: 150 published, {len(consumed)} consumed, {duplicates} dup")
        assert publisher_backend._link.generation >= 2
        assert consumer_backend._link.generation >= 2
    finally:
        dispatcher.stop()
        topology.cleanup()
    loop.join(30)
    assert not loop.is_alive()
