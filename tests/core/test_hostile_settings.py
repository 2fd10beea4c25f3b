"""Hostile settings on the embedded backends: names each backend would choke on, numbers that
are not finite or out of range, and URLs holding secrets are refused with a clear error that
never shows the secret."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from melange.backends.factory import MessagingBackendFactory
from melange.backends.interfaces import MessagingBackend
from melange.backends.memory import InMemoryMessagingBackend
from melange.backends.sqlite import SQLiteBackend
from melange.backends.urls import backend_from_env, backend_from_url
from melange.exceptions import ConfigurationError
from melange.redaction import redact_text, redact_url

EMBEDDED = ["memory", "sqlite"]


@pytest.fixture(params=EMBEDDED)
def make_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., MessagingBackend]]:
    made: list[MessagingBackend] = []

    def make(**options: object) -> MessagingBackend:
        backend: MessagingBackend
        if request.param == "memory":
            backend = InMemoryMessagingBackend(**options)  # type: ignore[arg-type]
        else:
            backend = SQLiteBackend(tmp_path / f"b{len(made)}.db", **options)  # type: ignore[arg-type]
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close_connection()


# -- names ------------------------------------------------------------------------------------

BAD_NAMES = {
    "newline": ("bad\nname", "control character"),
    "escape": ("bad\x1b[31mname", "control character"),
    "nul": ("bad\x00name", "control character"),
    "too long": ("é" * 128, "at most 255 bytes"),
}


@pytest.mark.parametrize("case", sorted(BAD_NAMES))
def test_queue_and_topic_names_the_embedded_backends_cannot_show_are_refused(
    make_backend: Callable[..., MessagingBackend], case: str
) -> None:
    name, says = BAD_NAMES[case]
    backend = make_backend()
    factory = MessagingBackendFactory(backend)
    with pytest.raises(ConfigurationError, match=says):
        factory.init_queue(name)
    with pytest.raises(ConfigurationError, match=says):
        backend.declare_queue(name)
    with pytest.raises(ConfigurationError, match=says):
        factory.init_queue("fine", dead_letter_queue_name=name)
    with pytest.raises(ConfigurationError, match=says):
        factory.init_topic(name)
    with pytest.raises(ConfigurationError, match=says):
        backend.declare_topic(name)


def test_names_within_the_rules_are_taken(make_backend: Callable[..., MessagingBackend]) -> None:
    backend = make_backend()
    factory = MessagingBackendFactory(backend)
    for name in ("orders", "a b.c/d:é", "x" * 255, "q.fifo"):
        factory.init_queue(name)
        factory.init_topic(name)
        assert backend.get_queue(name).name == name


# -- numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0, -1])
def test_a_visibility_timeout_not_finite_and_positive_is_refused_everywhere(
    make_backend: Callable[..., MessagingBackend], value: float
) -> None:
    with pytest.raises(ConfigurationError, match="visibility_timeout"):
        make_backend(visibility_timeout=value)
    backend = make_backend()
    with pytest.raises(ConfigurationError, match="visibility_timeout"):
        MessagingBackendFactory(backend).init_queue("q", visibility_timeout=value)
    with pytest.raises(ConfigurationError, match="visibility_timeout"):
        backend.declare_queue("q2", visibility_timeout=value)


@pytest.mark.parametrize(
    ("option", "value"),
    [("delay_seconds", math.nan), ("delay_seconds", math.inf), ("max_receive_count", math.nan)],
)
def test_other_queue_numbers_must_be_finite(
    make_backend: Callable[..., MessagingBackend], option: str, value: float
) -> None:
    backend = make_backend()
    with pytest.raises(ConfigurationError, match=option):
        MessagingBackendFactory(backend).init_queue(
            "q", dead_letter_queue_name="q-dlq", **{option: value}
        )


@pytest.mark.parametrize("scheme", ["memory://", "sqlite://:memory:"])
@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "NaN", "1e999"])
def test_url_numbers_must_be_finite(scheme: str, raw: str) -> None:
    with pytest.raises(ConfigurationError, match="finite") as caught:
        backend_from_url(f"{scheme}?visibility_timeout={raw}")
    assert "visibility_timeout" in str(caught.value)


def test_sqlite_busy_and_poll_numbers_must_be_finite(tmp_path: Path) -> None:
    for option in ("busy_timeout", "poll_interval", "max_poll_interval"):
        with pytest.raises(ConfigurationError, match=option):
            SQLiteBackend(tmp_path / "x.db", **{option: math.nan})  # type: ignore[arg-type]


# -- secrets ----------------------------------------------------------------------------------

SECRET = "s3cretpw"


@pytest.mark.parametrize(
    "url",
    [
        f"memory://guest:{SECRET}@host",
        f"memory://?visibility_timeout=x&password={SECRET}",
        f"sqlite://guest:{SECRET}@host/x.db",
        f"sqlite://guest:{SECRET}@/",
        f"guest:{SECRET}@localhost",
        f"bogus://guest:{SECRET}@localhost",
        f"sqs://AKID:{SECRET}@localhost:9324?bogus=1",
        f"sqs://AKID:{SECRET}@localhost:notaport",
        f"sqs://?aws_secret_access_key={SECRET}&bogus=1",
        f"sqs://?aws_secret_access_key={SECRET}&region=x&visibility_timeout=nan",
        f"amqp://guest:{SECRET}@:5672/",
    ],
)
def test_a_url_error_never_shows_the_secret(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        backend_from_url(url)
    text = str(caught.value)
    assert SECRET not in text
    assert SECRET not in repr(caught.value)
    with pytest.raises(ConfigurationError) as from_env:
        backend_from_env({"MELANGE_BACKEND_URL": url})
    assert SECRET not in str(from_env.value)
    assert "MELANGE_BACKEND_URL" in str(from_env.value)


def test_redaction_keeps_what_helps_and_hides_what_does_not() -> None:
    assert redact_url(f"amqp://guest:{SECRET}@host:5672/%2F?heartbeat=5") == (
        "amqp://guest:***@host:5672/%2F?heartbeat=5"
    )
    assert redact_url(f"redis://:p@ss{SECRET}@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redact_url(f"sqs://?region=x&aws_secret_access_key={SECRET}") == (
        "sqs://?region=x&aws_secret_access_key=***"
    )
    assert redact_url("sqlite:///data/m.db") == "sqlite:///data/m.db"
    url = f"amqp://u:{SECRET}%21@h/"
    assert SECRET not in redact_text(f"bad {url} and {SECRET}! again", url)


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@127.0.0.1:notaport/0",
        f"redis://:p@ss{SECRET}@127.0.0.1:notaport/0",
        f"redis://user:{SECRET}@127.0.0.1:99999/0",
        f"redis://127.0.0.1:6379/0?password={SECRET}&db=x",
    ],
)
def test_a_redis_url_error_never_shows_the_password(url: str) -> None:
    pytest.importorskip("redis")
    from melange.deduplication.redis_cache import RedisCache

    with pytest.raises(ConfigurationError) as caught:
        RedisCache.from_url(url)
    assert SECRET not in str(caught.value)
    assert "ss" + SECRET not in repr(caught.value)
    assert caught.value.__cause__ is None or SECRET not in str(caught.value.__cause__)
