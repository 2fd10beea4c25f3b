"""The SQLite backend behaves like the in-memory reference backend.

Random sequences of publishes, receives, acknowledgements, delayed nacks, dead-letters, lease
extensions and clock steps run against both backends on one fake clock; after every step
both must hold the same messages and hand out the same deliveries (the same messages with
the same attempt counts; per group in the same order on FIFO queues).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections import defaultdict

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from melange.backends.interfaces import MessagingBackend
from melange.backends.memory import InMemoryMessagingBackend
from melange.backends.sqlite import SQLiteBackend
from melange.models import FAILURE_REASON, Message, QueueWrapper

GROUPS = ("a", "b", "c")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def delivered(messages: list[Message], fifo: bool) -> object:
    """What must match between the backends: contents and attempts, ordered per group."""
    if not fifo:
        return sorted((m.content, m.attempt) for m in messages)
    groups: dict[str | None, list[tuple[str, int | None]]] = defaultdict(list)
    for message in messages:
        groups[message.group_id].append((message.content, message.attempt))
    return dict(groups)


class SameAsReference(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.directory = tempfile.mkdtemp(prefix="melange-model-")
        self.counter = itertools.count()
        # Content -> the latest delivery of it, on the reference and on SQLite.
        self.held: dict[str, tuple[Message, Message]] = {}

    @initialize(fifo=st.booleans(), delay=st.sampled_from([0, 0, 3]))
    def declare(self, fifo: bool, delay: int) -> None:
        self.fifo = fifo
        name = "q.fifo" if fifo else "q"
        dlq_name = "dlq.fifo" if fifo else "dlq"
        self.reference = InMemoryMessagingBackend(visibility_timeout=10, clock=self.clock)
        self.sqlite = SQLiteBackend(
            f"{self.directory}/model.db", visibility_timeout=10, clock=self.clock
        )
        self.backends: tuple[MessagingBackend, MessagingBackend] = (self.reference, self.sqlite)
        for backend in self.backends:
            backend.declare_queue(
                name, dead_letter_queue_name=dlq_name, max_receive_count=3, delay_seconds=delay
            )
        self.queue = QueueWrapper(name, name)
        self.dlq = QueueWrapper(dlq_name, dlq_name)

    def teardown(self) -> None:
        if hasattr(self, "sqlite"):
            self.sqlite.close_connection()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _messages(self, count: int, group: str, dedup: bool) -> list[Message]:
        made = []
        for _ in range(count):
            number = next(self.counter)
            message = Message.create(f"m{number}", "json", 1, {"n": str(number)})
            if self.fifo:
                message.group_id = group
                # A repeated id within the window is dropped by both.
                message.deduplication_id = f"d{number // 2}" if dedup else None
            made.append(message)
        return made

    @rule(count=st.integers(1, 4), group=st.sampled_from(GROUPS), dedup=st.booleans())
    def publish(self, count: int, group: str, dedup: bool) -> None:
        messages = self._messages(count, group, dedup)
        for backend in self.backends:
            copies = [
                Message(
                    m.message_id,
                    m.content,
                    None,
                    m.serializer_id,
                    m.manifest,
                    m.headers,
                    None,
                    m.group_id,
                    m.deduplication_id,
                )
                for m in messages
            ]
            backend.publish_batch_to_queue(copies, self.queue)

    @rule()
    def receive_everything_visible(self) -> None:
        ref = self.reference.retrieve_messages(self.queue, max_messages=1000)
        got = self.sqlite.retrieve_messages(self.queue, max_messages=1000)
        assert delivered(got, self.fifo) == delivered(ref, self.fifo)
        by_content = {m.content: m for m in got}
        for message in ref:
            self.held[message.content] = (message, by_content[message.content])

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), action=st.sampled_from(["ack", "nack", "nack-later", "dead", "extend"]))
    def settle_one(self, data: st.DataObject, action: str) -> None:
        content = data.draw(st.sampled_from(sorted(self.held)))
        ref, got = self.held[content]
        if action == "ack":
            self.reference.acknowledge(ref)
            self.sqlite.acknowledge(got)
        elif action in ("nack", "nack-later"):
            delay = 0.0 if action == "nack" else 4.0
            self.reference.nack(ref, delay)
            self.sqlite.nack(got, delay)
        elif action == "dead":
            headers = {FAILURE_REASON: "model"}
            assert self.sqlite.dead_letter(got, headers) == self.reference.dead_letter(ref, headers)
        else:
            self.reference.extend_visibility(ref, 15)
            self.sqlite.extend_visibility(got, 15)
        # Settled or not, a later settle of this delivery is a late one on both backends.
        if action in ("ack", "dead"):
            del self.held[content]

    @rule(seconds=st.sampled_from([0.5, 2.0, 4.0, 10.0, 16.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def drain_dead_letters(self) -> None:
        ref = self.reference.retrieve_messages(self.dlq, max_messages=1000)
        got = self.sqlite.retrieve_messages(self.dlq, max_messages=1000)
        assert delivered(got, self.fifo) == delivered(ref, self.fifo)
        assert sorted(m.headers.get(FAILURE_REASON, "") for m in got) == sorted(
            m.headers.get(FAILURE_REASON, "") for m in ref
        )
        self.reference.acknowledge_batch(ref)
        self.sqlite.acknowledge_batch(got)

    @invariant()
    def same_depth(self) -> None:
        if hasattr(self, "sqlite"):
            for queue in (self.queue, self.dlq):
                assert self.sqlite.queue_depth(queue.name) == self.reference.queue_depth(queue.name)


SameAsReference.TestCase.settings = settings(
    max_examples=60,
    derandomize=True,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_sqlite_backend_behaves_like_the_reference = SameAsReference.TestCase
