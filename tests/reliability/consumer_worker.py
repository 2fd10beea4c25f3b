"""A consumer process for the fault tests: ``python consumer_worker.py '<json config>'``.

It consumes a queue with ``consume_loop`` until SIGTERM/SIGINT (or until it is killed) and
appends one line per handler step to a journal file, with ``O_APPEND`` writes that reach the
kernel at once and so survive a SIGKILL of the process::

    start <n> <message id> <pid> <attempt>
    end <n> <message id> <pid> <attempt>
    fail <n> <message id> <pid> <attempt>

Config keys: ``backend`` (see :func:`reliability_support.open_backend`), ``queue``,
``journal``, ``delay`` (seconds each handler takes), ``slow`` (payload number -> seconds
that handler takes instead), ``block_on`` (a payload number whose handler never returns),
``workers``, ``redis_prefix`` (enables a RedisCache), ``lease`` (deduplication lease
seconds; default the library's), ``max_messages``, ``heartbeat`` (false turns the visibility
heartbeat off), ``fail_first`` (the handler fails while ``attempt`` is at most this),
``crash_on`` (a payload number whose handler SIGKILLs the process once it has ended),
``policy`` (``FailurePolicy`` arguments; default: no delay, no attempt limit), ``driver``
(``"asyncio"``: an ``AsyncMessageDispatcher`` with a coroutine handler on the backend's
asyncio twin, ``workers`` its concurrency; default the threaded ``MessageDispatcher``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
from typing import Any

from reliability_support import open_async_backend, open_backend

from melange.aio import AsyncMessageDispatcher
from melange.consumers import Consumer
from melange.context import current_message
from melange.message_dispatcher import MessageDispatcher
from melange.policy import FailurePolicy
from melange.serializers.json import JsonSerializer


def main() -> int:
    config: dict[str, Any] = json.loads(sys.argv[1])
    journal = os.open(config["journal"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()
    delay = float(config.get("delay", 0.0))
    block_on = config.get("block_on")
    slow = {int(n): float(seconds) for n, seconds in config.get("slow", {}).items()}
    never = threading.Event()

    fail_first = int(config.get("fail_first", 0))
    crash_on = config.get("crash_on")

    def record(phase: str, n: int) -> int:
        message = current_message()
        message_id = message.message_id if message is not None else "-"
        attempt = (message.attempt or 1) if message is not None else 0
        os.write(journal, f"{phase} {n} {message_id} {pid} {attempt}\n".encode())
        return attempt

    def begin(payload: dict[str, Any]) -> tuple[int, int, float | None]:
        """The message's number, its attempt, and how long its handler works (``None``: for
        good, a handler stuck that only a second signal ends)."""
        n = int(payload["n"])
        attempt = record("start", n)
        return n, attempt, None if n == block_on else slow.get(n, delay)

    def finish(n: int, attempt: int) -> None:
        if attempt <= fail_first:
            record("fail", n)
            raise RuntimeError(f"attempt {attempt} of message {n} fails")
        record("end", n)
        if n == crash_on:
            os.kill(pid, signal.SIGKILL)  # dies after the side effect, before it is recorded

    def handle(payload: dict[str, Any]) -> None:
        n, attempt, seconds = begin(payload)
        if seconds != 0:
            never.wait(seconds)  # the handler's work
        finish(n, attempt)

    policy = FailurePolicy.no_delay(max_attempts=None)
    if config.get("policy"):
        policy = FailurePolicy(**config["policy"])
    # What both dispatchers are given besides their backend, cache and consumer.
    settings: dict[str, Any] = {
        "failure_policy": policy,
        "visibility_heartbeat": bool(config.get("heartbeat", True)),
    }
    if "lease" in config:
        settings["dedup_lease_seconds"] = float(config["lease"])
    kwargs: dict[str, Any] = {}
    if config.get("max_messages"):
        kwargs["max_messages"] = int(config["max_messages"])

    if config.get("driver") == "asyncio":

        async def handle_async(payload: dict[str, Any]) -> None:
            n, attempt, seconds = begin(payload)
            if seconds is None:
                await asyncio.Event().wait()  # never set
            elif seconds:
                await asyncio.sleep(seconds)
            finish(n, attempt)

        async def consume() -> None:
            backend = open_async_backend(config["backend"])
            async_cache = None
            if config.get("redis_prefix"):
                from melange.deduplication.redis_cache import AsyncRedisCache

                async_cache = AsyncRedisCache(key_prefix=config["redis_prefix"])
            dispatcher = AsyncMessageDispatcher(
                JsonSerializer(),
                cache=async_cache,
                backend=backend,
                consumers=[Consumer(handle_async, name="fault-consumer")],
                **settings,
            )
            os.write(journal, f"ready - - {pid} 0\n".encode())
            await dispatcher.consume_loop(
                config["queue"], concurrency=int(config.get("workers", 1)), **kwargs
            )
            dispatcher.close()
            await backend.aclose()
            if async_cache is not None:
                await async_cache.aclose()

        asyncio.run(consume())
        os.write(journal, f"exit - - {pid} 0\n".encode())
        return 0

    cache = None
    if config.get("redis_prefix"):
        from melange.deduplication.redis_cache import RedisCache

        cache = RedisCache(key_prefix=config["redis_prefix"])
    backend = open_backend(config["backend"])
    dispatcher = MessageDispatcher(
        JsonSerializer(),
        cache=cache,
        backend=backend,
        consumers=[Consumer(handle, name="fault-consumer")],
        **settings,
    )
    os.write(journal, f"ready - - {pid} 0\n".encode())
    dispatcher.consume_loop(config["queue"], workers=int(config.get("workers", 1)), **kwargs)
    dispatcher.close()
    backend.close_connection()
    os.write(journal, f"exit - - {pid} 0\n".encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
