"""The factory's two call styles, and the process-wide default backend."""

from __future__ import annotations

import pytest

from melange import (
    BackendManager,
    InMemoryMessagingBackend,
    JsonSerializer,
    MessageDispatcher,
    MessagingBackendFactory,
    QueuePublisher,
)
from melange.exceptions import ConfigurationError


def test_init_queue_with_topics_as_arguments_and_keyword_dlq() -> None:
    backend = InMemoryMessagingBackend()
    queue = MessagingBackendFactory(backend).init_queue(
        "payments", "t1", "t2", dead_letter_queue_name="payments-dlq"
    )
    assert queue.name == "payments"
    assert {"payments", "payments-dlq"} <= set(backend.queue_names())
    backend.get_topic("t1")
    backend.get_topic("t2")


def test_init_queue_in_the_released_positional_form() -> None:
    backend = InMemoryMessagingBackend()
    MessagingBackendFactory(backend).init_queue("payments", ["t1", "t2"], "payments-dlq")
    assert "payments-dlq" in backend.queue_names()
    backend.get_topic("t2")


def test_init_queue_is_idempotent() -> None:
    backend = InMemoryMessagingBackend()
    factory = MessagingBackendFactory(backend)
    factory.init_queue("q", "t")
    QueuePublisher(JsonSerializer(), backend).publish("q", 1)
    factory.init_queue("q", "t")
    assert backend.queue_depth("q") == 1


def test_a_queue_cannot_be_its_own_dead_letter_queue() -> None:
    factory = MessagingBackendFactory(InMemoryMessagingBackend())
    with pytest.raises(ConfigurationError, match=r"'payment-updates-dlq\.fifo'"):
        factory.init_queue("payment-updates.fifo", dead_letter_queue_name="payment-updates.fifo")


def test_bad_names_are_reported() -> None:
    factory = MessagingBackendFactory(InMemoryMessagingBackend())
    with pytest.raises(ConfigurationError, match="queue name"):
        factory.init_queue("")
    with pytest.raises(ConfigurationError, match="topic name"):
        factory.init_queue("q", ["ok", 3])  # type: ignore[list-item]


def test_backend_manager_is_a_singleton_with_both_spellings() -> None:
    backend = InMemoryMessagingBackend()
    BackendManager().use_backend(backend)
    assert BackendManager() is BackendManager()
    assert BackendManager().get_backend() is backend
    assert BackendManager().get_default_backend() is backend
    other = InMemoryMessagingBackend()
    BackendManager().set_default_backend(other)
    assert BackendManager().get_backend() is other


def test_publishers_and_dispatchers_use_the_default_backend() -> None:
    backend = InMemoryMessagingBackend()
    BackendManager().use_backend(backend)
    MessagingBackendFactory().init_queue("q")
    QueuePublisher(JsonSerializer()).publish("q", {"n": 1})
    assert MessageDispatcher(JsonSerializer()).consume_event("q") == 1


def test_missing_default_backend_says_how_to_set_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MELANGE_BACKEND_URL", raising=False)
    with pytest.raises(ConfigurationError, match=r"use_backend\(backend\)"):
        QueuePublisher(JsonSerializer())


def test_topic_publisher_creates_a_missing_topic_once_unless_told_not_to(caplog) -> None:
    from melange import TopicPublisher
    from melange.exceptions import TopicNotFoundError

    backend = InMemoryMessagingBackend()
    TopicPublisher(JsonSerializer(), backend).publish("new-topic", {"n": 1})
    backend.get_topic("new-topic")
    assert "did not exist and was created" in caplog.text
    with pytest.raises(TopicNotFoundError, match="init_topic"):
        TopicPublisher(JsonSerializer(), backend, declare_topics=False).publish("other", 1)
