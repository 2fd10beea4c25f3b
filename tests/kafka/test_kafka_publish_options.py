"""``delay_seconds`` and the FIFO keywords on Kafka: a direct ``publish_to_queue``/
``publish_to_topic`` call honours or refuses each exactly as the publishers do.

Kafka cannot hold a record back, so a positive delay is refused (the capabilities say
``delayed_publish=False``) and an invalid one is refused for what it is; 0 is no delay.
``message_group_id`` and ``message_deduplication_id`` become the message's group (its record
key) and deduplication id, checked as on every backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from melange.backends.kafka import KafkaBackend
from melange.exceptions import ConfigurationError
from melange.models import Message
from publish_delay_support import PUBLISHERS, publish, receive_all, unique

pytestmark = pytest.mark.kafka

#: Delays every way of publishing refuses, and the words the refusal must contain.
REFUSED_DELAYS: list[tuple[Any, str]] = [
    (1, "cannot delay"),
    (0.5, "cannot delay"),
    (-1, "finite number"),
    (float("nan"), "finite number"),
    (float("inf"), "finite number"),
    ("5", "finite number"),
    (True, "finite number"),
]


def direct(backend: KafkaBackend, name: str, topic: bool, batch: bool, **kwargs: Any) -> None:
    """Publish one message to ``name`` with the backend's own call."""
    message = Message.create('{"n": 1}', "json", 1)
    if topic:
        target = backend.get_topic(name)
        if batch:
            backend.publish_batch_to_topic([message], target, **kwargs)
        else:
            backend.publish_to_topic(message, target, **kwargs)
    else:
        queue = backend.get_queue(name)
        if batch:
            backend.publish_batch_to_queue([message], queue, **kwargs)
        else:
            backend.publish_to_queue(message, queue, **kwargs)


@pytest.mark.parametrize("topic", [False, True], ids=["queue", "topic"])
def test_a_delay_is_refused_the_same_way_directly_and_through_the_publishers(
    make_kafka: Callable[..., KafkaBackend], topic: bool
) -> None:
    backend = make_kafka()
    assert not backend.capabilities.delayed_publish
    assert not backend.capabilities.delayed_topic_publish
    queue, _ = backend.declare_queue(unique("kdelay"))
    target = queue.name
    topic_name = None
    if topic:
        topic_name = unique("kdelay-t")
        backend.declare_topic(topic_name)
        backend.declare_queue(queue.name, backend.get_topic(topic_name))
        target = topic_name
    try:
        for delay, words in REFUSED_DELAYS:
            for batch in (False, True):
                with pytest.raises(ConfigurationError, match=words):
                    direct(backend, target, topic, batch, delay_seconds=delay)
            for how in PUBLISHERS:
                with pytest.raises(ConfigurationError, match=words):
                    publish(how, backend, target, {"n": 1}, topic=topic, delay_seconds=delay)
        assert receive_all(backend, queue, 1.5) == [], "a refused publish stored something"
        # No delay (0) is honoured both ways.
        direct(backend, target, topic, False, delay_seconds=0)
        publish("blocking", backend, target, {"n": 1}, topic=topic, delay_seconds=0)
        got = receive_all(backend, queue, 10)
        while len(got) < 2:
            more = receive_all(backend, queue, 5)
            assert more, f"received {len(got)} of the 2 undelayed messages"
            got += more
        assert [m.content for m in got] == ['{"n": 1}', '{"n": 1}']
    finally:
        backend.close_connection()  # no consumer may read a topic being deleted (tansu)
        cleaner = make_kafka()
        cleaner.delete_queue(queue)
        if topic_name is not None:
            cleaner.delete_topic(cleaner.get_topic(topic_name))


def test_fifo_keywords_on_a_direct_call_set_the_group_and_the_deduplication_id(
    make_kafka: Callable[..., KafkaBackend],
) -> None:
    backend = make_kafka()
    queue, _ = backend.declare_queue(unique("kfifo") + ".fifo")
    try:
        for n in range(4):
            backend.publish_to_queue(
                Message.create(str(n), "text", 1),
                queue,
                message_group_id="group-1",
                message_deduplication_id=f"dedup-{n}",
            )
        batch = [Message.create(f"b{n}", "text", 1) for n in range(2)]
        backend.publish_batch_to_queue(batch, queue, message_group_id="group-2")
        got: list[Message] = []
        for _ in range(20):
            got += receive_all(backend, queue, 2)
            if len(got) >= 6:
                break
        one = [m for m in got if m.group_id == "group-1"]
        assert [m.content for m in one] == ["0", "1", "2", "3"]  # one partition: in order
        assert [m.deduplication_id for m in one] == [f"dedup-{n}" for n in range(4)]
        assert sorted(m.content for m in got if m.group_id == "group-2") == ["b0", "b1"]
        # Checked as on every backend: one deduplication id names one message.
        with pytest.raises(ConfigurationError, match="message_deduplication_id"):
            backend.publish_batch_to_queue(
                [Message.create("x", "text", 1), Message.create("y", "text", 1)],
                queue,
                message_deduplication_id="same",
            )
        for bad in ("", 7):
            with pytest.raises(ConfigurationError, match="message_group_id"):
                backend.publish_to_queue(
                    Message.create("x", "text", 1), queue, message_group_id=bad
                )
        assert receive_all(backend, queue, 1.5) == []
    finally:
        backend.close_connection()
        make_kafka().delete_queue(queue)
