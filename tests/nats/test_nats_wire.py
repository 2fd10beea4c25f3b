"""The NATS layout and message format, without a server: names, headers, settings, URLs."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from melange.backends.nats import NATSBackend
from melange.backends.nats.topology import Names, QueueSettings, queue_options, token, untoken
from melange.backends.nats.wire import decode_message, encode_headers
from melange.backends.urls import backend_from_url
from melange.exceptions import BackendConnectionError, ConfigurationError
from melange.models import Message


@given(st.text(max_size=40))
def test_any_name_becomes_a_subject_token_and_back(name: str) -> None:
    written = token(name)
    assert written
    assert not set(written) & set(". *>\t\r\n/\\")
    assert untoken(written) == name


def test_names_keep_queues_topics_and_prefixes_apart() -> None:
    names = Names("app")
    assert names.queue_stream("orders.fifo") == "app_q_orders~2efifo"
    assert names.queue_subject("orders.fifo") == "app.q.orders~2efifo"
    assert names.topic_subject("events", "OrderCreated") == "app.t.events.OrderCreated"
    assert names.queue_of_stream("app_q_orders~2efifo") == "orders.fifo"
    assert names.queue_of_stream("app_t_events") is None
    assert names.queue_of_stream("other_q_orders") is None
    assert names.topic_of_stream("app_t_events") == "events"


@given(
    st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=40), max_size=5),
    st.text(max_size=30),
)
def test_headers_and_envelope_survive_the_wire(headers: dict[str, str], manifest: str) -> None:
    message = Message(None, "body", None, 7, manifest, headers, group_id="g 1")
    message.deduplication_id = "d\n1"
    encoded = encode_headers(message)
    for key, value in encoded.items():
        assert key.isascii() and value.isascii()
        assert value == value.strip() and "\n" not in value and "\r" not in value
    decoded = decode_message(b"body", encoded, 3, None)
    expected = {k: v for k, v in headers.items() if not k.lower().startswith("nats-")}
    assert decoded.headers == expected
    assert decoded.manifest == manifest
    assert decoded.serializer_id == 7
    assert decoded.message_id == message.message_id
    assert decoded.group_id == "g 1"
    assert decoded.deduplication_id == "d\n1"
    assert decoded.attempt == 3


def test_queue_settings_round_trip_through_the_stream_description() -> None:
    settings = QueueSettings("q", "q-dlq", 5, 2.5, True, {"t": ("A", "B")})
    assert QueueSettings.read("q", settings.describe()) == settings
    assert not settings.wants("p.t.t.C", "C", Names("p"))
    assert settings.wants("p.t.t.A", "A", Names("p"))
    assert settings.wants("p.t.other.C", "C", Names("p"))


def test_queue_options_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="unknown option"):
        queue_options("q", {"delay_seconds": 3}, 30.0, 100)
    assert queue_options("q.fifo", {}, 30.0, 100).max_ack_pending == 1
    assert queue_options("q", {}, 30.0, 100).max_ack_pending == 100


def test_nats_urls_name_the_backend_and_refuse_what_it_does_not_take() -> None:
    with pytest.raises(ConfigurationError, match="NATSBackend takes"):
        backend_from_url("nats://127.0.0.1:4222?queue_type=quorum")
    with pytest.raises(ConfigurationError, match="prefix"):
        backend_from_url("nats://127.0.0.1:4222?prefix=a.b")
    backend = backend_from_url("nats://u:secret@127.0.0.1:4222?prefix=p&visibility_timeout=4")
    try:
        assert backend.visibility_timeout == 4.0
        assert "secret" not in repr(backend)
    finally:
        backend.close_connection()


def test_the_core_does_not_import_nats() -> None:
    code = (
        "import sys, melange, melange.backends, melange.backends.urls, melange.cli, "
        "melange.backends.nats; print('nats' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_unreachable_server_fails_soon_without_showing_the_password() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = NATSBackend(f"nats://user:secret@127.0.0.1:{port}", connect_timeout=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(BackendConnectionError) as caught:
            backend.get_queue("orders")
    finally:
        backend.close_connection()
    assert time.monotonic() - started < 10
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "secret" not in str(caught.value)
