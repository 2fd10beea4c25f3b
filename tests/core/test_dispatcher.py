"""The dispatcher: acknowledgement rules, retries, dead letters, poison, dedup, the loop."""

from __future__ import annotations

import base64
import os
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from melange import (
    Consumer,
    InMemoryCache,
    InMemoryMessagingBackend,
    JsonSerializer,
    MessageDispatcher,
    MessagingBackendFactory,
    PickleSerializer,
    QueuePublisher,
    SimpleMessageDispatcher,
    current_message,
)
from melange.models import FAILURE_ATTEMPTS, FAILURE_CONSUMER, FAILURE_REASON, Message
from melange.policy import FailurePolicy
from melange.testing import wait_until

FAST = FailurePolicy.no_delay(max_attempts=3)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def backend() -> InMemoryMessagingBackend:
    b = InMemoryMessagingBackend()
    MessagingBackendFactory(b).init_queue("q", dead_letter_queue_name="q-dlq")
    return b


def publish(backend: InMemoryMessagingBackend, *items: Any) -> None:
    publisher = QueuePublisher(JsonSerializer(), backend)
    for item in items:
        publisher.publish("q", item)


def dlq(backend: InMemoryMessagingBackend) -> list[Message]:
    return backend.peek("q-dlq")


class Recorder(Consumer):
    def __init__(self, fail_times: int = 0, name: str | None = None, **kw: Any) -> None:
        super().__init__(name=name, **kw)
        self.calls: list[Any] = []
        self.fail_times = fail_times

    def process(self, message: Any, **kwargs: Any) -> None:
        self.calls.append(message)
        if len(self.calls) <= self.fail_times:
            raise RuntimeError(f"failure {len(self.calls)}")


def test_message_is_acknowledged_when_every_accepting_consumer_succeeds(backend) -> None:
    a, b = Recorder(), Recorder()
    publish(backend, {"n": 1})
    d = MessageDispatcher(JsonSerializer(), backend=backend, consumers=[a, b])
    assert d.consume_event("q") == 1
    assert a.calls == b.calls == [{"n": 1}]
    assert backend.queue_depth("q") == 0
    assert d.stats.acknowledged == 1


def test_one_failing_consumer_blocks_the_acknowledgement(backend) -> None:
    ok, failing = Recorder(name="ok"), Recorder(fail_times=1, name="failing")
    publish(backend, {"n": 1})
    d = MessageDispatcher(
        JsonSerializer(), backend=backend, consumers=[ok, failing], failure_policy=FAST
    )
    d.consume_event("q")
    assert backend.queue_depth("q") == 1
    d.consume_event("q")  # redelivered at once with a no-delay policy
    assert backend.queue_depth("q") == 0
    assert len(failing.calls) == 2
    assert len(ok.calls) == 2  # without deduplication, every consumer runs again


def test_message_no_consumer_accepts_is_acknowledged(backend) -> None:
    picky = Consumer(on_message=print, accepts=lambda m: m.get("kind") == "other")
    publish(backend, {"kind": "mine"})
    MessageDispatcher(JsonSerializer(), backend=backend, consumers=[picky]).consume_event("q")
    assert backend.queue_depth("q") == 0


def test_always_ack_acknowledges_despite_failures(backend) -> None:
    publish(backend, {"n": 1})
    d = MessageDispatcher(
        JsonSerializer(), backend=backend, always_ack=True, consumers=[Recorder(fail_times=5)]
    )
    d.consume_event("q")
    assert backend.queue_depth("q") == 0


def test_retries_then_dead_letters_with_failure_headers(backend) -> None:
    failing = Recorder(fail_times=99, name="payments")
    publish(backend, {"n": 1})
    d = MessageDispatcher(
        JsonSerializer(), backend=backend, consumers=[failing], failure_policy=FAST
    )
    for _ in range(5):
        d.consume_event("q")
    assert len(failing.calls) == 3
    [dead] = dlq(backend)
    assert dead.content == '{"n": 1}'
    assert dead.headers[FAILURE_ATTEMPTS] == "3"
    assert dead.headers[FAILURE_CONSUMER] == "payments"
    assert "RuntimeError: failure 3" in dead.headers[FAILURE_REASON]
    assert d.stats.retried == 2 and d.stats.dead_lettered == 1


def test_non_retryable_exception_goes_straight_to_the_dead_letter_queue(backend) -> None:
    def reject(message: Any) -> None:
        raise ValueError("invalid order")

    publish(backend, {"n": 1})
    policy = FailurePolicy(non_retryable=(ValueError,), initial_delay=0)
    MessageDispatcher(
        JsonSerializer(), backend=backend, consumers=[Consumer(reject)], failure_policy=policy
    ).consume_event("q")
    [dead] = dlq(backend)
    assert dead.headers[FAILURE_REASON].startswith("non-retryable exception: ValueError")


def test_immediate_retries_run_in_process_before_counting_a_failure(backend) -> None:
    flaky = Recorder(fail_times=2)
    publish(backend, {"n": 1})
    d = MessageDispatcher(
        JsonSerializer(),
        backend=backend,
        consumers=[flaky],
        failure_policy=FailurePolicy(immediate_retries=2),
    )
    d.consume_event("q")
    assert len(flaky.calls) == 3
    assert backend.queue_depth("q") == 0
    assert d.stats.retried == 0


def test_retry_delay_follows_the_backoff() -> None:
    clock = Clock()
    backend = InMemoryMessagingBackend(clock=clock)
    MessagingBackendFactory(backend).init_queue("q")
    failing = Recorder(fail_times=1)
    publish(backend, {"n": 1})
    policy = FailurePolicy(initial_delay=10, jitter=0)
    d = MessageDispatcher(
        JsonSerializer(), backend=backend, consumers=[failing], failure_policy=policy
    )
    d.consume_event("q")
    clock.now += 9.9
    assert d.consume_event("q") == 0
    clock.now += 0.2
    assert d.consume_event("q") == 1
    assert backend.queue_depth("q") == 0


def test_consumer_policy_overrides_the_dispatcher_policy(backend) -> None:
    stubborn = Recorder(fail_times=99, failure_policy=FailurePolicy.no_delay(max_attempts=1))
    publish(backend, {"n": 1})
    MessageDispatcher(
        JsonSerializer(),
        backend=backend,
        consumers=[stubborn],
        failure_policy=FailurePolicy.no_delay(max_attempts=10),
    ).consume_event("q")
    assert len(dlq(backend)) == 1


def test_without_dead_letter_queue_a_spent_message_is_logged_and_left(caplog) -> None:
    backend = InMemoryMessagingBackend()
    MessagingBackendFactory(backend).init_queue("q")
    publish(backend, {"n": 1})
    d = MessageDispatcher(
        JsonSerializer(),
        backend=backend,
        consumers=[Recorder(99)],
        failure_policy=FailurePolicy.no_delay(max_attempts=1),
    )
    d.consume_event("q")
    assert backend.queue_depth("q") == 1
    assert "has no dead-letter queue" in caplog.text


def test_undecodable_messages_are_dead_lettered_with_the_reason(backend, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> Any:
            return (os.system, (f"touch {marker}",))

    q = backend.get_queue("q")
    evil = base64.b64encode(pickle.dumps(Exploit())).decode()
    backend.publish_to_queue(Message.create(evil, "Exploit", 2), q)
    backend.publish_to_queue(Message.create("{not json", "json", 1), q)
    backend.publish_to_queue(Message.create('"x"', "json", 99), q)
    backend.publish_to_queue(Message.create('"x"', "json", None), q)
    publish(backend, {"good": True})
    good = Recorder()
    d = MessageDispatcher(JsonSerializer(), backend=backend, consumers=[good])
    d.consume_event("q")
    assert good.calls == [{"good": True}]
    dead = dlq(backend)
    assert len(dead) == 4
    reasons = [m.headers[FAILURE_REASON] for m in dead]
    assert "serializer id 2 is not one this dispatcher was given" in reasons[0]
    assert "not valid JSON" in reasons[1]
    assert "serializer id 99" in reasons[2]
    assert "no serializer id" in reasons[3]
    assert not marker.exists(), "a pickle payload was unpickled by a JSON-only dispatcher"
    assert d.stats.poison == 4
    assert backend.queue_depth("q") == 0


def test_pickle_is_decoded_only_when_the_dispatcher_was_given_it(backend) -> None:
    q = backend.get_queue("q")
    body = PickleSerializer().serialize({"x": 1})
    backend.publish_to_queue(Message.create(body, "dict", 2), q)
    got = Recorder()
    MessageDispatcher(
        [JsonSerializer(), PickleSerializer()], backend=backend, consumers=[got]
    ).consume_event("q")
    assert got.calls == [{"x": 1}]


def test_deduplication_skips_a_redelivered_message_and_acknowledges_it(backend) -> None:
    cache = InMemoryCache()
    ok = Recorder(name="ok")
    failing_once = Recorder(fail_times=1, name="flaky")
    publish(backend, {"n": 1})
    d = MessageDispatcher(
        JsonSerializer(),
        cache=cache,
        backend=backend,
        consumers=[ok, failing_once],
        failure_policy=FAST,
    )
    d.consume_event("q")
    d.consume_event("q")
    assert len(ok.calls) == 1  # skipped on redelivery
    assert len(failing_once.calls) == 2
    assert backend.queue_depth("q") == 0
    assert d.stats.duplicates_skipped == 1


def test_dedup_keys_tell_apart_consumers_of_the_same_class(backend) -> None:
    cache = InMemoryCache()
    seen: list[str] = []

    def first(message: Any) -> None:
        seen.append("first")

    def second(message: Any) -> None:
        seen.append("second")

    publish(backend, {"n": 1})
    MessageDispatcher(
        JsonSerializer(),
        cache=cache,
        backend=backend,
        consumers=[Consumer(first), Consumer(second)],
    ).consume_event("q")
    assert seen == ["first", "second"]
    assert len(cache) == 2


def test_same_message_published_twice_with_same_id_is_processed_once(backend) -> None:
    cache = InMemoryCache()
    got = Recorder()
    q = backend.get_queue("q")
    m = Message.create('{"n": 1}', "json", 1)
    backend.publish_to_queue(m, q)
    backend.publish_to_queue(m, q)
    MessageDispatcher(
        JsonSerializer(), cache=cache, backend=backend, consumers=[got]
    ).consume_event("q")
    assert got.calls == [{"n": 1}]
    assert backend.queue_depth("q") == 0


def test_unreachable_cache_fails_closed_by_default() -> None:
    class DownCache(InMemoryCache):
        def claim(self, key: str, lease_seconds: float) -> Any:
            raise ConnectionError("cache down")

    clock = Clock()
    backend = InMemoryMessagingBackend(clock=clock)
    MessagingBackendFactory(backend).init_queue("q")
    got = Recorder()
    publish(backend, {"n": 1})
    d = MessageDispatcher(JsonSerializer(), cache=DownCache(), backend=backend, consumers=[got])
    d.consume_event("q")
    assert got.calls == []
    assert backend.queue_depth("q") == 1
    opened = MessageDispatcher(
        JsonSerializer(),
        cache=DownCache(),
        backend=backend,
        consumers=[got],
        dedup_fail_open=True,
        failure_policy=FAST,
    )
    clock.now += 2  # the fail-closed retry is delayed by the default policy
    opened.consume_event("q")
    assert got.calls == [{"n": 1}]
    assert backend.queue_depth("q") == 0


def test_hooks_see_exceptions_and_each_pass(backend) -> None:
    errors: list[Exception] = []
    passes: list[int] = []
    publish(backend, {"n": 1})
    d = MessageDispatcher(
        JsonSerializer(), backend=backend, consumers=[Recorder(fail_times=1)], failure_policy=FAST
    )

    def after() -> None:
        passes.append(1)
        if len(passes) >= 2:
            d.stop()

    d.consume_loop("q", on_exception=errors.append, after_consume=after)
    assert [str(e) for e in errors] == ["failure 1"]
    assert backend.queue_depth("q") == 0


def test_consume_loop_stops_from_another_thread_promptly(backend) -> None:
    got = Recorder()
    d = SimpleMessageDispatcher(got, JsonSerializer(), backend=backend)
    thread = threading.Thread(target=d.consume_loop, args=("q",), daemon=True)
    thread.start()
    publish(backend, {"n": 1}, {"n": 2})
    wait_until(lambda: len(got.calls) == 2, timeout=5)
    started = time.monotonic()
    d.stop()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 2
    assert backend.queue_depth("q") == 0


def test_stop_releases_received_but_unstarted_messages(backend) -> None:
    processed: list[Any] = []

    def slow(message: Any) -> None:
        processed.append(message)
        d.stop()

    publish(backend, {"n": 1}, {"n": 2}, {"n": 3})
    d = MessageDispatcher(JsonSerializer(), backend=backend, consumers=[Consumer(slow)])
    d.consume_loop("q")
    assert processed == [{"n": 1}]
    # The other two were handed back and are visible again right away.
    assert [m.content for m in backend.retrieve_messages(backend.get_queue("q"))] == [
        '{"n": 2}',
        '{"n": 3}',
    ]


def test_workers_process_messages_concurrently_and_keep_fifo_groups_in_order() -> None:
    backend = InMemoryMessagingBackend()
    MessagingBackendFactory(backend).init_queue("q.fifo")
    publisher = QueuePublisher(JsonSerializer(), backend)
    for i in range(40):
        publisher.publish("q.fifo", {"g": i % 4, "i": i}, message_group_id=f"g{i % 4}")
    order: dict[int, list[int]] = {g: [] for g in range(4)}
    active = {"now": 0, "max": 0}
    lock = threading.Lock()

    def handle(message: Any) -> None:
        with lock:
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
        time.sleep(0.005)
        with lock:
            active["now"] -= 1
            order[message["g"]].append(message["i"])
        if sum(map(len, order.values())) == 40:
            d.stop()

    d = MessageDispatcher(JsonSerializer(), backend=backend, consumers=[Consumer(handle)])
    d.consume_loop("q.fifo", workers=4)
    for g in range(4):
        assert order[g] == sorted(order[g]) and len(order[g]) == 10
    assert active["max"] > 1
    assert backend.queue_depth("q.fifo") == 0


def test_messages_published_while_consuming_carry_causation_and_correlation(backend) -> None:
    MessagingBackendFactory(backend).init_queue("out")
    publisher = QueuePublisher(JsonSerializer(), backend)

    def react(message: Any) -> None:
        here = current_message()
        assert here is not None and here.attempt == 1
        publisher.publish("out", {"reply": True})

    sent = publisher.publish("q", {"n": 1}, correlation_id="conversation-7")
    MessageDispatcher(JsonSerializer(), backend=backend, consumers=[Consumer(react)]).consume_event(
        "q"
    )
    [reply] = backend.peek("out")
    assert reply.causation_id == sent.message_id
    assert reply.correlation_id == "conversation-7"
    assert current_message() is None


def test_constructor_errors_say_what_is_wrong(backend) -> None:
    with pytest.raises(TypeError, match="serializer"):
        MessageDispatcher(backend=backend)
    with pytest.raises(TypeError, match="consumer first"):
        SimpleMessageDispatcher(JsonSerializer(), backend=backend)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Consumer"):
        MessageDispatcher(JsonSerializer(), backend=backend, consumers=[print])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="serializer"):
        QueuePublisher(backend)  # type: ignore[arg-type]


def test_consuming_a_missing_queue_names_it(backend) -> None:
    from melange.exceptions import QueueNotFoundError

    d = MessageDispatcher(JsonSerializer(), backend=backend)
    with pytest.raises(QueueNotFoundError, match=r"'nope'.*init_queue"):
        d.consume_event("nope")


def test_heartbeat_keeps_a_slow_message_from_being_delivered_twice() -> None:
    backend = InMemoryMessagingBackend(visibility_timeout=0.3)
    MessagingBackendFactory(backend).init_queue("q")
    publish(backend, {"n": 1})
    calls: list[Any] = []
    other_saw: list[Message] = []

    def slow(message: Any) -> None:
        calls.append(message)
        time.sleep(1.0)  # more than three visibility timeouts
        other_saw.extend(backend.retrieve_messages(backend.get_queue("q")))

    d = MessageDispatcher(JsonSerializer(), backend=backend, consumers=[Consumer(slow)])
    d.consume_event("q")
    assert calls == [{"n": 1}]
    assert other_saw == []
    assert backend.queue_depth("q") == 0
    d.close()


def test_heartbeat_follows_each_queues_own_visibility_timeout() -> None:
    backend = InMemoryMessagingBackend(visibility_timeout=30)
    MessagingBackendFactory(backend).init_queue("short", visibility_timeout=0.3)
    QueuePublisher(JsonSerializer(), backend).publish("short", {"n": 1})
    other_saw: list[Message] = []

    def slow(message: Any) -> None:
        time.sleep(1.0)
        other_saw.extend(backend.retrieve_messages(backend.get_queue("short")))

    d = MessageDispatcher(JsonSerializer(), backend=backend, consumers=[Consumer(slow)])
    d.consume_event("short")
    d.close()
    assert other_saw == []
    assert backend.queue_depth("short") == 0
