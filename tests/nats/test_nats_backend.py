"""What the NATS backend does beyond the shared conformance suite."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable

import nats
import pytest

from melange.backends.nats import NATSBackend
from melange.models import FAILURE_QUEUE, FAILURE_REASON
from melange.testing.conformance import Topology, assert_empty, make_message, receive

pytestmark = pytest.mark.nats


@pytest.fixture
def backend(make_nats: Callable[..., NATSBackend]) -> NATSBackend:
    return make_nats()


@pytest.fixture
def topology(backend: NATSBackend) -> Topology:
    return Topology(backend)


def test_a_deduplication_id_drops_a_second_publish(
    backend: NATSBackend, topology: Topology
) -> None:
    queue = topology.queue()
    for _ in range(2):
        message = make_message('"once"')
        message.deduplication_id = "order-1"
        backend.publish_to_queue(message, queue)
    [got] = receive(backend, queue, 1)
    assert got.deduplication_id == "order-1"
    backend.acknowledge(got)
    assert_empty(backend, queue)


def test_a_queue_gets_only_what_its_topics_publish_after_it_subscribed(
    backend: NATSBackend, topology: Topology
) -> None:
    first, second = topology.topic(), topology.topic()
    backend.publish_to_topic(make_message('"before"'), backend.get_topic(first))
    queue = topology.queue(first, second)
    backend.publish_to_topic(make_message('"one"'), backend.get_topic(first))
    backend.publish_to_topic(make_message('"two"'), backend.get_topic(second))
    got = receive(backend, queue, 2)
    assert sorted(m.content for m in got) == ['"one"', '"two"']
    backend.acknowledge_batch(got)
    assert_empty(backend, queue)


def test_filter_events_with_several_manifests(backend: NATSBackend, topology: Topology) -> None:
    topic = topology.topic()
    queue = topology.queue(topic, filter_events=["Created", "Paid"])
    handle = backend.get_topic(topic)
    for manifest in ("Created", "Cancelled", "Paid", "Shipped"):
        backend.publish_to_topic(make_message(f'"{manifest}"', manifest=manifest), handle)
    got = receive(backend, queue, 2)
    assert sorted(m.manifest or "" for m in got) == ["Created", "Paid"]
    backend.acknowledge_batch(got)
    assert_empty(backend, queue, wait=1.5)


def test_a_lease_renewed_beyond_its_length_is_kept_up_until_settled(
    backend: NATSBackend, topology: Topology
) -> None:
    queue = topology.queue(visibility_timeout=1)
    backend.publish_to_queue(make_message('"long"'), queue)
    [held] = receive(backend, queue, 1)
    backend.extend_visibility(held, 3.5)
    time.sleep(3.0)
    assert backend.holds(held)
    assert backend.retrieve_messages(queue, wait_seconds=0) == []
    backend.acknowledge(held)
    assert_empty(backend, queue, wait=1.5)


def test_holds_turns_false_once_the_lease_ran_out(backend: NATSBackend, topology: Topology) -> None:
    queue = topology.queue(visibility_timeout=1)
    backend.publish_to_queue(make_message('"slow"'), queue)
    [held] = receive(backend, queue, 1)
    assert backend.holds(held)
    time.sleep(1.2)
    assert not backend.holds(held)
    [again] = receive(backend, queue, 1)
    assert again.attempt == 2
    backend.acknowledge(again)


def test_a_message_left_unread_past_half_its_lease_is_not_handed_out(
    backend: NATSBackend, topology: Topology
) -> None:
    # The receive returns with the first message while its pull request stays open; the
    # second message reaches the receiving connection while no call reads it, and its
    # lease runs from then, not from when a later receive reads it.
    queue = topology.queue(visibility_timeout=2)
    publish = threading.Timer(0.3, backend.publish_to_queue, (make_message('"first"'), queue))
    publish.start()
    [first] = backend.retrieve_messages(queue, wait_seconds=3, max_messages=10)
    publish.join()
    backend.publish_to_queue(make_message('"late"'), queue)
    time.sleep(1.3)
    assert backend.retrieve_messages(queue, wait_seconds=0) == []
    backend.acknowledge(first)
    [late] = receive(backend, queue, 1)
    assert (late.content, late.attempt) == ('"late"', 2)
    backend.acknowledge(late)
    assert_empty(backend, queue)


def test_an_acknowledgement_reaches_the_server_without_a_later_receive(
    backend: NATSBackend, topology: Topology
) -> None:
    # Queued acknowledgements go with the next pull request; with none coming, the loop
    # sends them.
    queue = topology.queue()
    backend.publish_to_queue(make_message('"done"'), queue)
    [got] = receive(backend, queue, 1)
    backend.acknowledge(got)
    deadline = time.monotonic() + 2.0
    while backend.queue_depth(queue.name) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.queue_depth(queue.name) == 0


def test_the_last_delivery_held_by_a_receiver_that_died_still_reaches_the_dead_letter_queue(
    backend: NATSBackend, topology: Topology, nats_url: str
) -> None:
    queue = topology.queue(dlq=True, max_receive_count=1, visibility_timeout=1)
    dlq = topology.dead_letter_queue_of(queue)
    backend.publish_to_queue(make_message('"poison"'), queue)
    [first] = receive(backend, queue, 1)
    backend.release(first)
    stream = backend.backend.names.queue_stream(queue.name)

    async def take_last_delivery_and_vanish() -> int:
        # A receiver that takes the delivery past max_receive_count and dies with it.
        nc = await nats.connect(nats_url)
        try:
            sub = await nc.jetstream().pull_subscribe_bind("melange", stream)
            [msg] = await sub.fetch(1, timeout=5)
            return int(msg.metadata.num_delivered)
        finally:
            await nc.close()

    assert asyncio.run(take_last_delivery_and_vanish()) == 2
    time.sleep(1.2)  # its lease runs out; the next pull makes the server give up on it
    assert backend.retrieve_messages(queue, wait_seconds=1) == []
    [dead] = receive(backend, dlq, 1)
    assert dead.content == '"poison"'
    assert dead.headers[FAILURE_QUEUE] == queue.name
    assert "max receive count exceeded" in dead.headers[FAILURE_REASON]
    backend.acknowledge(dead)
    assert backend.queue_depth(queue.name) == 0


def test_fifo_order_holds_across_receivers_of_two_processes_worth_of_backends(
    make_nats: Callable[..., NATSBackend],
) -> None:
    one, two = make_nats(), make_nats()
    topology = Topology(one)
    queue = topology.queue(fifo=True)
    for i in range(10):
        message = make_message(json.dumps(i), group="a" if i % 2 else "b")
        message.deduplication_id = f"d{i}"
        one.publish_to_queue(message, queue)
    seen: list[int] = []
    deadline = time.monotonic() + 30
    turn = 0
    while len(seen) < 10 and time.monotonic() < deadline:
        receiver = (one, two)[turn % 2]
        turn += 1
        batch = receiver.retrieve_messages(receiver.get_queue(queue.name), wait_seconds=1)
        # The other receiver gets nothing while this one holds the head.
        other = (one, two)[turn % 2]
        assert other.retrieve_messages(other.get_queue(queue.name), wait_seconds=0) == []
        seen += [int(m.content) for m in batch]
        receiver.acknowledge_batch(batch)
    assert seen == list(range(10))


def test_publish_keywords_called_directly_are_honoured_or_refused(
    backend: NATSBackend, topology: Topology
) -> None:
    from melange.exceptions import ConfigurationError

    queue = topology.queue(fifo=True)
    topic_name = topology.topic()
    topic = backend.get_topic(topic_name)
    backend.publish_to_queue(
        make_message('"a"'), queue, message_group_id="g", message_deduplication_id="d-1"
    )
    backend.publish_to_queue(
        make_message('"b"'), queue, message_group_id="g", message_deduplication_id="d-1"
    )
    [got] = receive(backend, queue, 1)
    assert (got.group_id, got.deduplication_id) == ("g", "d-1")
    backend.acknowledge(got)
    assert_empty(backend, queue)  # the repeated deduplication id was dropped
    for publish in (
        lambda: backend.publish_to_queue(
            make_message('"c"'), queue, message_group_id="g", delay_seconds=5
        ),
        lambda: backend.publish_to_topic(make_message('"c"'), topic, delay_seconds=5),
        lambda: backend.publish_batch_to_queue(
            [make_message('"c"')], queue, message_group_id="g", delay_seconds=1
        ),
    ):
        with pytest.raises(ConfigurationError, match="delay_seconds"):
            publish()
    assert_empty(backend, queue)


def test_closing_gives_back_what_an_open_pull_request_delivered_meanwhile(
    make_nats: Callable[..., NATSBackend], topology: Topology
) -> None:
    # The receive returns its one message while its pull request stays open for nine more;
    # what the server sends for it reaches the receiving connection while no call reads it,
    # and closing that connection must give those back, not leave them leased for 30 s.
    queue = topology.queue(visibility_timeout=30)
    publisher = topology.backend
    receiver = make_nats(visibility_timeout=30)
    # Published while the receive waits: its waiting request stays open until it expires.
    late = threading.Timer(0.3, publisher.publish_to_queue, (make_message('"first"'), queue))
    late.start()
    [first] = receiver.retrieve_messages(queue, wait_seconds=8, max_messages=10)
    late.join()
    receiver.acknowledge(first)
    for n in range(12):
        publisher.publish_to_queue(make_message(f'"m{n}"'), queue)
    time.sleep(0.3)  # the server answers the open request meanwhile
    receiver.close_connection()
    started = time.monotonic()
    got = receive(publisher, queue, 12, timeout=5)
    assert sorted(m.content for m in got) == sorted(f'"m{n}"' for n in range(12))
    assert time.monotonic() - started < 5
    for message in got:
        publisher.acknowledge(message)
    assert_empty(publisher, queue)


def send_a_pull_request_that_expires_before_its_answer(url: str, stream: str) -> None:
    """Pull one message of ``stream``'s consumer with a request that has expired by the time
    the server comes to answer it."""

    async def run() -> None:
        nc = await nats.connect(url)
        try:
            inbox = nc.new_inbox()
            await nc.subscribe(inbox)
            request = json.dumps({"batch": 1, "expires": 1}).encode()  # one nanosecond
            await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.melange", request, reply=inbox)
            await nc.flush()
            await asyncio.sleep(0.1)  # the server drops it
        finally:
            await nc.close()

    asyncio.run(run())


def test_a_message_delivered_again_as_new_while_its_lease_runs_is_not_handed_out_twice(
    backend: NATSBackend, topology: Topology, nats_url: str
) -> None:
    # nats-server before 2.10.16 steps its consumer back when the pull request a redelivery
    # was taken for has expired: it then delivers the message again as a first delivery
    # (count 1) to the next pull request, while the lease of its last delivery runs, or
    # after that delivery was acknowledged and before the server processed the
    # acknowledgement. A newer server does not: the test then passes as well.
    queue = topology.queue(visibility_timeout=1)
    stream = backend.backend.names.queue_stream(queue.name)
    backend.publish_to_queue(make_message('"once"'), queue)
    [first] = receive(backend, queue, 1)
    time.sleep(1.2)  # its lease ran out: the server has it ready for a redelivery
    send_a_pull_request_that_expires_before_its_answer(nats_url, stream)
    time.sleep(1.2)  # ready for a redelivery again
    [second] = receive(backend, queue, 1)
    assert second.message_id == first.message_id
    assert second.attempt > 1
    # Renewed through the second delivery, its lease outlasts the checks below on a slow
    # machine: only a repeat of the first delivery could hand the message out meanwhile.
    backend.extend_visibility(second, 30)
    # The second delivery's lease runs: no other receive gets the message meanwhile.
    assert backend.retrieve_messages(queue, wait_seconds=0.3) == []
    assert backend.retrieve_messages(queue, wait_seconds=0) == []
    backend.acknowledge(second)
    assert_empty(backend, queue)
