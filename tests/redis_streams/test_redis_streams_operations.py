"""The Redis Streams operations as steps (what they ask Redis to do, and how they read the
replies), and the round trips that follow from them on a Redis of the test's own."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.exceptions import NoScriptError

from melange.backends.redis_streams import RedisStreamsBackend, scripts
from melange.backends.redis_streams.operations import (
    Command,
    Operations,
    Script,
    Steps,
    Wait,
    failure,
    publish_script,
)
from melange.backends.redis_streams.shared import Progress
from melange.exceptions import BackendError, ConfigurationError, QueueNotFoundError
from melange.models import Message, QueueWrapper


def _answer(*entries: tuple[str, str], last: str = "9-0", vt_ms: int = 30000) -> list[Any]:
    """A receive script's reply delivering ``entries`` (entry id, body) for the first time."""
    deliveries = [
        [entry_id, 1, "0", ["i", f"m-{entry_id}", "b", body]] for entry_id, body in entries
    ]
    return [deliveries, -1, last, "0-0", 0, vt_ms]


def _first(steps: Steps[Any]) -> Any:
    return next(steps)


def _result(steps: Steps[Any], reply: Any) -> Any:
    """Send the last reply an operation needs; fails when it asks for another step."""
    try:
        step = steps.send(reply)
    except StopIteration as done:
        return done.value
    pytest.fail(f"the operation asked for another step: {step!r}")


@pytest.fixture
def ops() -> Operations:
    return Operations("p:", 30.0, 300.0, None)


def _received_once(ops: Operations) -> None:
    """A first receive that delivered less than it asked for: the next one waits first."""
    steps = ops.retrieve("q", {"max_messages": 10})
    assert _first(steps) == Script("RECEIVE", ("q", ops.consumer, 10))
    assert len(_result(steps, _answer(("1-0", "a"), last="1-0"))) == 1


def test_a_waiting_receive_runs_its_script_in_the_same_round_trip(ops: Operations) -> None:
    _received_once(ops)
    steps = ops.retrieve("q", {"max_messages": 10, "wait_seconds": 2})
    wait = _first(steps)
    assert isinstance(wait, Wait)
    assert wait.then == Script("RECEIVE", ("q", ops.consumer, 10))
    assert wait.command[:2] == ["XREAD", "BLOCK"]
    assert wait.command[-4:] == ["p:s:q", "p:b:q", "1-0", "0-0"]
    [message] = _result(steps, (True, _answer(("2-0", "b"), last="2-0")))
    assert (message.message_id, message.content, message.attempt) == ("m-2-0", "b", 1)
    assert message.metadata.entry_id == "2-0"
    assert message.metadata.lease == 30.0


def test_a_wait_whose_script_did_not_answer_runs_the_script_again(ops: Operations) -> None:
    _received_once(ops)
    steps = ops.retrieve("q", {"wait_seconds": 2})
    assert isinstance(_first(steps), Wait)
    again = steps.send((True, None))
    assert again == Script("RECEIVE", ("q", ops.consumer, 10))
    assert [m.content for m in _result(steps, _answer(("2-0", "b")))] == ["b"]


def test_an_interrupted_wait_returns_what_its_script_found(ops: Operations) -> None:
    _received_once(ops)
    steps = ops.retrieve("q", {"wait_seconds": 2})
    assert isinstance(_first(steps), Wait)
    assert _result(steps, (False, None)) == []
    steps = ops.retrieve("q", {"wait_seconds": 2})
    assert isinstance(_first(steps), Wait)
    assert [m.content for m in _result(steps, (False, _answer(("3-0", "c"))))] == ["c"]


def test_a_full_batch_receives_again_without_waiting(ops: Operations) -> None:
    steps = ops.retrieve("q", {"max_messages": 1, "wait_seconds": 2})
    _first(steps)
    assert len(_result(steps, _answer(("1-0", "a")))) == 1
    steps = ops.retrieve("q", {"max_messages": 1, "wait_seconds": 2})
    assert _first(steps) == Script("RECEIVE", ("q", ops.consumer, 1))


def test_publishes_without_deduplication_take_the_short_script() -> None:
    plain = Message("a", "body", None, None, None, {}, None, None, None)
    grouped = Message("b", "body", None, None, None, {}, None, "g", None)
    deduplicated = Message("c", "body", None, None, None, {}, None, "g", "d")
    assert publish_script("q", "q1", "300000", [plain]) == Script(
        "PUBLISH_QUEUE", ("q1", "i", "a", "b", "body")
    )
    assert publish_script("q", "q1", "300000", [grouped, plain]) == Script(
        "PUBLISH_QUEUE", ("q1", "i", "b", "b", "body", "g", "g", "i", "a", "b", "body")
    )
    assert publish_script("q", "q1", "300000", [grouped, deduplicated]).name == "PUBLISH"
    assert publish_script("t", "t1", "300000", [plain]).name == "PUBLISH"


def test_script_failures_become_melange_errors(ops: Operations) -> None:
    steps = ops.purge("missing")
    step = _first(steps)
    with pytest.raises(QueueNotFoundError):
        steps.throw(failure(step, redis.ResponseError("MELANGE_NO_QUEUE missing")))
    lost = failure(step, redis.ConnectionError("gone"))
    assert isinstance(lost, BackendError)
    assert "purge" in str(lost)


# -- on a Redis of the test's own ------------------------------------------------------------


def _throwaway_redis_class() -> Any:
    path = Path(__file__).resolve().parent.parent / "reliability" / "reliability_support.py"
    spec = importlib.util.spec_from_file_location("melange_tests_throwaway_redis", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module.ThrowawayRedis


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    with _throwaway_redis_class()(tmp_path) as server:
        yield f"redis://127.0.0.1:{server.port}/0"


@pytest.mark.redis
def test_a_waiting_receive_after_the_scripts_were_flushed_still_delivers(own_redis: str) -> None:
    backend = RedisStreamsBackend(own_redis, prefix="ops-flush:")
    try:
        queue, _ = backend.declare_queue("jobs")
        assert backend.retrieve_messages(queue, wait_seconds=0) == []
        # Its own Redis: no one else's scripts are flushed.
        backend.client.script_flush()
        publisher = threading.Timer(0.3, lambda: _publish(backend, queue, "late"))
        publisher.start()
        started = time.monotonic()
        [message] = backend.retrieve_messages(queue, wait_seconds=5)
        assert message.content == "late"
        assert time.monotonic() - started < 4
        backend.acknowledge(message)
        assert backend.queue_stats("jobs").total == 0
    finally:
        backend.close()


@pytest.mark.redis
def test_a_consumer_keeping_up_runs_each_script_once_and_no_stream_info(own_redis: str) -> None:
    backend = RedisStreamsBackend(own_redis, prefix="ops-trips:")
    stats = redis.Redis.from_url(own_redis, decode_responses=True)
    try:
        queue, _ = backend.declare_queue("jobs")
        # Once through, so every script is loaded (a first EVALSHA of each fails).
        _publish(backend, queue, "first")
        [message] = backend.retrieve_messages(queue, wait_seconds=0)
        backend.acknowledge(message)
        stats.config_resetstat()
        for n in range(5):
            threading.Timer(0.05, lambda n=n: _publish(backend, queue, f"m{n}")).start()
            [message] = backend.retrieve_messages(queue, wait_seconds=5)
            assert message.content == f"m{n}"
            backend.acknowledge(message)
        counted = stats.info("commandstats")
        # Per message: the wait, then one script each for the publish, the receive (sent
        # behind the wait) and the acknowledgement; no script ran twice.
        assert counted["cmdstat_xread"]["calls"] == 5
        assert counted["cmdstat_evalsha"]["calls"] == 15
        assert "cmdstat_xinfo|stream" not in counted
    finally:
        stats.close()
        backend.close()


def _publish(backend: RedisStreamsBackend, queue: QueueWrapper, body: str) -> None:
    backend.publish_to_queue(Message.create(body, None, None), queue)


def test_a_missing_queue_refuses_the_short_publish(streams: RedisStreamsBackend) -> None:
    with pytest.raises(QueueNotFoundError):
        streams.publish_to_queue(Message.create("x", None, None), QueueWrapper("nope", "nope"))


def test_a_fifo_batch_with_one_message_without_group_adds_none(
    streams: RedisStreamsBackend,
) -> None:
    queue, _ = streams.declare_queue("orders.fifo")
    grouped = [Message.create(f"g{n}", None, None) for n in range(2)]
    for message in grouped:
        message.group_id = "customer-1"
    loose = Message.create("loose", None, None)
    with pytest.raises(ConfigurationError, match="message_group_id"):
        streams.publish_batch_to_queue([grouped[0], loose, grouped[1]], queue)
    assert streams.queue_stats("orders.fifo").total == 0
    streams.publish_batch_to_queue(grouped, queue)
    received = streams.retrieve_messages(queue, max_messages=10)
    assert [(m.content, m.group_id) for m in received] == [
        ("g0", "customer-1"),
        ("g1", "customer-1"),
    ]


def _step(progress: Progress[Any]) -> Any:
    return progress.step


def test_a_script_the_server_lost_is_loaded_and_run_again(ops: Operations) -> None:
    progress = Progress(ops.purge("q"))
    assert _step(progress) == Script("PURGE", ("q",))
    progress.fail(NoScriptError("NOSCRIPT No matching script"))
    assert _step(progress) == Command(("SCRIPT LOAD", scripts.SOURCES["PURGE"]))
    progress.reply(scripts.SHA1["PURGE"])
    assert _step(progress) == Script("PURGE", ("q",))
    progress.reply(3)
    assert _step(progress) is None
    assert progress.result == 3
    # Lost again right after loading it: the error, not a loop.
    progress = Progress(ops.purge("q"))
    progress.fail(NoScriptError("NOSCRIPT No matching script"))
    progress.reply(scripts.SHA1["PURGE"])
    with pytest.raises(NoScriptError):
        progress.fail(NoScriptError("NOSCRIPT No matching script"))
