"""The blocking NATS backend's two ways of publishing reach the same queue, whichever
thread publishes: its own connection driven by the publishing thread, or the loop's bridge
when that connection is busy or the thread runs an event loop of its own."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from melange.backends.nats import AsyncNATSBackend, NATSBackend
from melange.backends.nats import backend as blocking_module
from melange.exceptions import QueueNotFoundError
from melange.models import Message


def _drain(backend: NATSBackend, queue_name: str, expected: int) -> list[str]:
    queue = backend.get_queue(queue_name)
    seen: list[str] = []
    for _ in range(50):
        messages = backend.retrieve_messages(queue, max_messages=10, wait_seconds=0.5)
        seen.extend(str(m.content) for m in messages)
        backend.acknowledge_batch(messages)
        if len(seen) >= expected:
            break
    return seen


def test_threads_publishing_at_once_lose_and_repeat_nothing(
    make_nats: Callable[..., NATSBackend],
) -> None:
    backend = make_nats()
    queue, _ = backend.declare_queue("paths")
    errors: list[BaseException] = []

    def publish(worker: int) -> None:
        try:
            for i in range(40):
                backend.publish_to_queue(Message.create(f"{worker}-{i}", "t", 1), queue)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    seen = _drain(backend, "paths", 160)
    assert sorted(seen) == sorted(f"{w}-{i}" for w in range(4) for i in range(40))


def test_publish_from_a_thread_running_an_event_loop(
    make_nats: Callable[..., NATSBackend],
) -> None:
    backend = make_nats()
    queue, _ = backend.declare_queue("in-loop")

    async def inside_a_loop() -> None:
        # A blocking call inside a coroutine (bad manners, but it must not break).
        backend.publish_to_queue(Message.create("from a loop", "t", 1), queue)

    asyncio.run(inside_a_loop())
    assert _drain(backend, "in-loop", 1) == ["from a loop"]


def test_a_connection_unused_for_long_is_replaced(
    make_nats: Callable[..., NATSBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blocking_module, "_DIRECT_IDLE_SECONDS", 0.0)
    backend = make_nats()
    queue, _ = backend.declare_queue("idle")
    backend.publish_to_queue(Message.create("first", "t", 1), queue)
    first = backend._direct._backend
    backend.publish_to_queue(Message.create("second", "t", 1), queue)
    assert backend._direct._backend is not first
    assert sorted(_drain(backend, "idle", 2)) == ["first", "second"]


def test_publishing_after_close_is_refused(make_nats: Callable[..., NATSBackend]) -> None:
    backend = make_nats()
    queue, _ = backend.declare_queue("closed")
    backend.publish_to_queue(Message.create("before", "t", 1), queue)
    backend.close_connection()
    with pytest.raises(RuntimeError):
        backend.publish_to_queue(Message.create("after", "t", 1), queue)


def test_publishing_to_a_deleted_queue_raises_queue_not_found(
    make_nats: Callable[..., NATSBackend],
) -> None:
    backend, other = make_nats(), make_nats()
    queue, _ = backend.declare_queue("gone")
    backend.publish_to_queue(Message.create("kept", "t", 1), queue)
    other.delete_queue(other.get_queue("gone"))
    # Nobody takes the subject any more: the server answers the publish with its status.
    with pytest.raises(QueueNotFoundError):
        backend.publish_to_queue(Message.create("lost", "t", 1), queue)
    with pytest.raises(QueueNotFoundError):
        backend.publish_batch_to_queue([Message.create(str(i), "t", 1) for i in range(3)], queue)


def test_a_call_after_an_interrupted_one_runs_to_its_end(
    make_nats: Callable[..., NATSBackend],
) -> None:
    backend = make_nats()
    queue, _ = backend.declare_queue("interrupted")
    connection = backend._direct

    async def interrupted(_backend: AsyncNATSBackend) -> None:
        def interrupt() -> None:
            raise KeyboardInterrupt

        asyncio.get_running_loop().call_soon(interrupt)
        await asyncio.sleep(30)

    async def slow(_backend: AsyncNATSBackend) -> str:
        # Turns of the loop during which the interrupted call's task is cancelled.
        for _ in range(5):
            await asyncio.sleep(0)
        return "done"

    assert connection.acquire()
    with pytest.raises(KeyboardInterrupt):
        connection.run(interrupted)
    assert connection.acquire()
    assert connection.run(slow) == "done"
    backend.publish_to_queue(Message.create("after", "t", 1), queue)
    assert _drain(backend, "interrupted", 1) == ["after"]
