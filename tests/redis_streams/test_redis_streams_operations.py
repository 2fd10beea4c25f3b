"""The Redis Streams operations as steps (what they ask Redis to do, and how they read the
replies), and the round trips that follow from them on a Redis of the test's own."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.exceptions import NoScriptError

from melange.backends.gathering import BUSY_WINDOW, GATHER_SECONDS, BusyQueues
from melange.backends.redis_streams import AsyncRedisStreamsBackend, RedisStreamsBackend, scripts
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


def _answer(*entries: tuple[str, str], last: str = "9-0", vt_ms: int = 30000) -> str:
    """A receive script's reply delivering ``entries`` (entry id, body) for the first time."""
    deliveries = [
        [entry_id, 1, "0", ["i", f"m-{entry_id}", "b", body]] for entry_id, body in entries
    ]
    return json.dumps([deliveries, -1, last, "0-0", 0, vt_ms])


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


def test_a_wait_on_a_queue_that_just_delivered_pauses_first_and_a_quiet_one_does_not(
    ops: Operations,
) -> None:
    clock = [50.0]
    ops.busy = BusyQueues(lambda: clock[0])
    _received_once(ops)
    steps = ops.retrieve("q", {"wait_seconds": 2})
    wait = _first(steps)
    assert isinstance(wait, Wait) and wait.gather == GATHER_SECONDS
    assert _result(steps, (False, None)) == []  # interrupted
    # Nothing delivered since: once the window has passed, the queue is quiet.
    clock[0] += 2 * BUSY_WINDOW
    steps = ops.retrieve("q", {"wait_seconds": 2})
    wait = _first(steps)
    assert isinstance(wait, Wait) and wait.gather == 0.0


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
        # The receive can return before the publisher read its reply: closing under it
        # would fail its publish.
        publisher.join()
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
            publisher = threading.Timer(0.05, lambda n=n: _publish(backend, queue, f"m{n}"))
            publisher.start()
            [message] = backend.retrieve_messages(queue, wait_seconds=5)
            # The receive can return before the publisher read its reply (see above).
            publisher.join()
            assert message.content == f"m{n}"
            backend.acknowledge(message)
        counted = stats.info("commandstats")
        # Per message: the wait, then one script each for the publish, the receive (sent
        # behind the wait) and the acknowledgement; no script ran twice.
        assert counted["cmdstat_xread"]["calls"] == 5
        assert counted["cmdstat_evalsha"]["calls"] == 15
        # The connection's client id is asked at its first wait only.
        assert counted["cmdstat_client|id"]["calls"] == 1
        assert "cmdstat_xinfo|stream" not in counted
    finally:
        stats.close()
        backend.close()


@pytest.mark.redis
def test_a_batch_is_leased_and_settled_with_one_command_of_each_kind(own_redis: str) -> None:
    first = RedisStreamsBackend(own_redis, prefix="ops-batch:", visibility_timeout=1)
    second = RedisStreamsBackend(own_redis, prefix="ops-batch:", visibility_timeout=30)
    stats = redis.Redis.from_url(own_redis, decode_responses=True)
    try:
        queue, _ = first.declare_queue("jobs", visibility_timeout=1)
        messages = [Message.create(f"m{n}", None, None) for n in range(11)]
        first.publish_batch_to_queue(messages, queue)
        stats.config_resetstat()
        got = first.retrieve_messages(queue, max_messages=10)
        assert [m.content for m in got] == [f"m{n}" for n in range(10)]
        assert [m.attempt for m in got] == [1] * 10
        counted = stats.info("commandstats")
        # Ten leases in one ZADD; the earliest lease says none is due; new messages have no
        # attempts or delays to look up; a full batch looks up no wait point.
        assert counted["cmdstat_zadd"]["calls"] == 1
        assert counted["cmdstat_zrange"]["calls"] == 1
        for unneeded in ("zrangebyscore", "hget", "hdel", "xinfo|stream", "xrevrange"):
            assert f"cmdstat_{unneeded}" not in counted
        # The first message's lease runs out and another receive takes it over: a late
        # acknowledgement of it within the batch leaves it to its new receiver.
        time.sleep(1.2)
        [taken] = second.retrieve_messages(queue, max_messages=1)
        assert taken.message_id == got[0].message_id
        stats.config_resetstat()
        first.acknowledge_batch([*got, got[1]])
        counted = stats.info("commandstats")
        for command in ("xack", "xdel", "zrem"):
            assert counted[f"cmdstat_{command}"]["calls"] == 1
        # The receiving consumer's pending entries in one XPENDING; the one taken over is
        # not among them and is looked up alone. No message was given back: no HDEL.
        assert counted["cmdstat_xpending"]["calls"] == 2
        assert "cmdstat_hdel" not in counted
        assert first.queue_stats("jobs").total == 2
        assert first.queue_stats("jobs").in_flight == 1
        second.acknowledge(taken)
        [last] = second.retrieve_messages(queue, max_messages=10)
        assert (last.content, last.attempt) == ("m10", 1)
        second.acknowledge(last)
        assert first.queue_stats("jobs").total == 0
    finally:
        stats.close()
        first.close()
        second.close()


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


def test_a_wait_sends_what_redis_py_packs_and_keeps_few_packed_scripts() -> None:
    backend = RedisStreamsBackend(prefix="p:")
    connection = backend.client.connection_pool.make_connection()
    try:
        for n in range(300):
            receive = Script("RECEIVE", (f"q{n % 260}", "me", 10))
            block = ["XREAD", "BLOCK", 100 + n, "COUNT", 1, "STREAMS", "s", "b", f"{n}-0", "0-0"]
            wait = Wait(block, 0, receive)
            evalsha = ("EVALSHA", scripts.SHA1["RECEIVE"], 0, "p:", *receive.args)
            expected = connection.pack_commands([("CLIENT", "ID"), block, evalsha])
            # The connection's client id is not known: it is asked first.
            packed, client_id = backend._packed_wait(connection, wait)
            assert (b"".join(packed), client_id) == (b"".join(expected), None)
        assert 0 < len(backend._wait_packing) <= 256
    finally:
        backend.close()


@pytest.mark.redis
def test_a_wait_asks_a_connection_its_client_id_until_known_and_after_it_reconnects() -> None:
    backend = RedisStreamsBackend(prefix="ops-id:")
    connection = backend.client.connection_pool.make_connection()
    wait = Wait(["XREAD", "BLOCK", 1], 0, Script("RECEIVE", ("q", "me", 10)))
    evalsha = ("EVALSHA", scripts.SHA1["RECEIVE"], 0, "ops-id:", "q", "me", 10)
    try:
        connection.connect()
        connection.send_command("CLIENT", "ID")
        first = backend._learned_client_id(connection, connection.read_response())
        packed, client_id = backend._packed_wait(connection, wait)
        expected = connection.pack_commands([wait.command, evalsha])
        assert (b"".join(packed), client_id) == (b"".join(expected), first)
        # A new connection of the server: a new id, asked again.
        connection.disconnect()
        connection.connect()
        packed, client_id = backend._packed_wait(connection, wait)
        expected = connection.pack_commands([("CLIENT", "ID"), wait.command, evalsha])
        assert (b"".join(packed), client_id) == (b"".join(expected), None)
        connection.send_command("CLIENT", "ID")
        assert backend._learned_client_id(connection, connection.read_response()) != first
    finally:
        connection.disconnect()
        backend.close()


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


@pytest.mark.redis
def test_the_asyncio_backend_keeps_a_connection_for_calls_and_one_for_waits(
    own_redis: str,
) -> None:
    async def scenario() -> None:
        backend = AsyncRedisStreamsBackend(own_redis, prefix="ops-held:")
        pool: Any = backend.client.connection_pool
        try:
            queue, _ = await backend.declare_queue("jobs")
            for n in range(3):
                await backend.publish_to_queue(Message.create(f"m{n}", None, None), queue)
                [message] = await backend.retrieve_messages(queue, wait_seconds=1)
                await backend.acknowledge(message)
            # A wait that blocks until a publish: on the waits' connection, while the
            # publish (a call) goes on the calls' connection.
            waiting = asyncio.ensure_future(backend.retrieve_messages(queue, wait_seconds=5))
            await asyncio.sleep(0.1)
            await backend.publish_to_queue(Message.create("late", None, None), queue)
            [late] = await waiting
            await backend.acknowledge(late)
            assert len(pool._in_use_connections) == 2
            assert not pool._available_connections
            # Calls made at once: those finding the calls' connection busy take one of the
            # pool, which they give back.
            await asyncio.gather(*(backend.queue_stats("jobs") for _ in range(3)))
            assert len(pool._in_use_connections) == 2
            assert len(pool._available_connections) == 2
            # A call cancelled half way leaves nothing on the connection for the next.
            call = asyncio.ensure_future(backend.peek("jobs"))
            await asyncio.sleep(0)
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
            await backend.publish_to_queue(Message.create("after", None, None), queue)
            assert [m.content for m in await backend.peek("jobs")] == ["after"]
        finally:
            await backend.aclose()

    asyncio.run(scenario())
