"""Backend URLs: each scheme gives its backend with the options of the query, the environment
variable and the embedded default, and every malformed URL is refused with the expected form."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from melange.backends.backend_manager import BackendManager
from melange.backends.factory import MessagingBackendFactory
from melange.backends.interfaces import MessagingBackend
from melange.backends.memory import InMemoryMessagingBackend
from melange.backends.sqlite import SQLiteBackend
from melange.backends.urls import (
    backend_from_env,
    backend_from_url,
    default_backend_url,
)
from melange.exceptions import BackendError, ConfigurationError
from service_check import require_service


@pytest.fixture
def opened() -> Iterator[list[MessagingBackend]]:
    """Backends a test created; closed afterwards."""
    backends: list[MessagingBackend] = []
    yield backends
    for backend in backends:
        backend.close_connection()


def resolve(url: str, opened: list[MessagingBackend]) -> MessagingBackend:
    backend = backend_from_url(url)
    opened.append(backend)
    return backend


# -- memory and sqlite ------------------------------------------------------------------------


def test_memory_url_gives_an_in_memory_backend_with_query_options(
    opened: list[MessagingBackend],
) -> None:
    backend = resolve("memory://?max_message_size=100&auto_create=true", opened)
    assert isinstance(backend, InMemoryMessagingBackend)
    assert backend.capabilities.max_message_size == 100
    assert backend.get_queue("made-on-first-use").name == "made-on-first-use"


def test_sqlite_url_with_three_slashes_is_relative_to_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: list[MessagingBackend]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    backend = resolve("sqlite:///data/melange.db", opened)
    assert isinstance(backend, SQLiteBackend)
    assert backend.path == "data/melange.db"
    assert (tmp_path / "data" / "melange.db").is_file()
    assert backend.capabilities.persistent


def test_sqlite_url_with_four_slashes_is_absolute(
    tmp_path: Path, opened: list[MessagingBackend]
) -> None:
    target = tmp_path / "abs.db"
    backend = resolve(f"sqlite:///{target}", opened)  # tmp_path starts with "/"
    assert isinstance(backend, SQLiteBackend)
    assert backend.path == str(target)
    assert target.is_file()


def test_sqlite_url_path_is_percent_decoded(tmp_path: Path, opened: list[MessagingBackend]) -> None:
    backend = resolve(f"sqlite:///{tmp_path}/my%20queues.db", opened)
    assert isinstance(backend, SQLiteBackend)
    assert (tmp_path / "my queues.db").is_file()


def test_sqlite_url_options_are_converted_to_the_backend_types(
    tmp_path: Path, opened: list[MessagingBackend]
) -> None:
    backend = resolve(
        f"sqlite:///{tmp_path}/o.db?synchronous=full&visibility_timeout=7.5&max_message_size=64",
        opened,
    )
    assert isinstance(backend, SQLiteBackend)
    assert backend.synchronous == "FULL"
    assert backend.visibility_timeout == 7.5
    assert backend.capabilities.max_message_size == 64


@pytest.mark.parametrize("url", ["sqlite://:memory:", "sqlite://", "sqlite:///:memory:"])
def test_sqlite_memory_urls_keep_the_broker_in_the_process(
    url: str, opened: list[MessagingBackend]
) -> None:
    backend = resolve(url, opened)
    assert isinstance(backend, SQLiteBackend)
    assert backend.path == ":memory:"
    assert not backend.capabilities.persistent


# -- sqs and amqp -----------------------------------------------------------------------------


def test_sqs_url_without_host_gives_an_aws_backend_with_region_and_endpoint(
    opened: list[MessagingBackend],
) -> None:
    from melange.backends.sqs.backend import AWSBackend

    backend = resolve(
        "sqs://?region=eu-west-1&endpoint_url=http://127.0.0.1:9324&visibility_timeout=45", opened
    )
    assert type(backend) is AWSBackend
    assert backend.visibility_timeout == 45
    assert backend._sqs.meta.region_name == "eu-west-1"
    assert backend._sqs.meta.endpoint_url == "http://127.0.0.1:9324"


def test_sqs_url_with_host_and_port_gives_a_local_sqs_backend(
    opened: list[MessagingBackend],
) -> None:
    from melange.backends.sqs.localsqs import LocalSQSBackend

    backend = resolve("sqs://localhost:9324?sns_port=9911&wait_time_seconds=1", opened)
    assert isinstance(backend, LocalSQSBackend)
    assert backend.endpoint_url == "http://localhost:9324"
    assert backend.sns_endpoint_url == "http://localhost:9911"
    assert backend.wait_time_seconds == 1


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("sqs://AKID:s%2Fcret@?region=eu-west-1", "https://sqs.eu-west-1.amazonaws.com"),
        ("sqs://AKID:s%2Fcret@localhost:9324", "http://localhost:9324"),
    ],
)
def test_sqs_url_user_and_password_are_the_aws_credentials(
    url: str, endpoint: str, opened: list[MessagingBackend]
) -> None:
    backend = resolve(url, opened)
    client = backend._sqs  # type: ignore[attr-defined]
    credentials = client._request_signer._credentials
    assert (credentials.access_key, credentials.secret_key) == ("AKID", "s/cret")
    assert client.meta.endpoint_url == endpoint


def test_amqp_url_gives_a_rabbitmq_backend_with_its_options(
    opened: list[MessagingBackend],
) -> None:
    host, port = require_service("rabbitmq")
    from melange.backends.rabbitmq.rabbitmq_backend import RabbitMQBackend

    backend = resolve(
        f"amqp://guest:guest@{host}:{port}/%2F?prefetch_count=5&queue_type=classic", opened
    )
    assert isinstance(backend, RabbitMQBackend)
    assert backend.queue_type == "classic"
    assert backend.describe == f"{host}:{port}, vhost '/'"


# -- the environment and the default ----------------------------------------------------------


def test_default_url_is_an_sqlite_file_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: list[MessagingBackend]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_backend_url() == "sqlite:///melange.db"
    backend = backend_from_env({})
    opened.append(backend)
    assert isinstance(backend, SQLiteBackend)
    assert (tmp_path / "melange.db").is_file()


def test_env_variable_names_the_backend(opened: list[MessagingBackend]) -> None:
    backend = backend_from_env({"MELANGE_BACKEND_URL": "memory://"}, default="sqlite://")
    opened.append(backend)
    assert isinstance(backend, InMemoryMessagingBackend)
    fallback = backend_from_env({"MELANGE_BACKEND_URL": " "}, default="sqlite://")
    opened.append(fallback)
    assert isinstance(fallback, SQLiteBackend)


def test_a_bad_env_url_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="MELANGE_BACKEND_URL='pulsar://x'"):
        backend_from_env({"MELANGE_BACKEND_URL": "pulsar://x"})


def test_backend_manager_falls_back_to_the_env_url_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MELANGE_BACKEND_URL", f"sqlite:///{tmp_path}/env.db")
    manager = BackendManager()
    manager.reset()
    backend = manager.get_backend()
    assert isinstance(backend, SQLiteBackend)
    assert backend.path == f"{tmp_path}/env.db"
    assert manager.get_backend() is backend
    MessagingBackendFactory().init_queue("from-env")
    assert backend.queue_names() == ["from-env"]
    manager.reset()  # the manager created it, so it closes it
    with pytest.raises(BackendError, match="closed"):
        backend.queue_names()


def test_backend_manager_prefers_a_backend_it_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MELANGE_BACKEND_URL", "sqlite://")
    given = InMemoryMessagingBackend()
    BackendManager().use_backend(given)
    assert BackendManager().get_backend() is given
    BackendManager().reset()  # a backend it was given stays open: its owner closes it
    MessagingBackendFactory(given).init_queue("still-open")
    assert given.queue_names() == ["still-open"]


def test_backend_manager_without_backend_or_env_says_how_to_set_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MELANGE_BACKEND_URL", raising=False)
    BackendManager().reset()
    with pytest.raises(ConfigurationError, match="MELANGE_BACKEND_URL"):
        BackendManager().get_backend()


# -- malformed URLs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("pulsar://localhost:6650", r"unknown backend URL scheme 'pulsar'.*sqlite:///relative"),
        ("melange.db", r"has no scheme.*sqlite:///relative/path\.db"),
        ("sqlite:///", "names no database file"),
        ("sqlite:///data/", "names no database file"),
        ("sqlite://somehost/x.db", "has no host"),
        ("sqlite:///x.db?colour=red", r"unknown option 'colour'.*synchronous"),
        ("sqlite:///x.db?visibility_timeout=soon", "visibility_timeout='soon'"),
        ("sqlite:///x.db?synchronous=FULL&synchronous=OFF", "given twice"),
        ("memory://somewhere", "takes no host or path"),
        ("memory://?auto_create=maybe", "expected true or false"),
        ("sqs://localhost", r"needs a host and a port.*sqs://localhost:9324"),
        ("sqs://localhost:9324?endpoint_url=http://x:1", "both host:port and endpoint_url"),
        ("sqs://?region=eu-west-1&colour=red", r"unknown option 'colour'.*region_name"),
        ("sqs://localhost:9324/queue", "has no path"),
        ("sqs://AKID@localhost:9324", "only part of the credentials"),
        ("sqs://:9324", "has a port but no host"),
        ("sqs://localhost:port", "bad port"),
        (
            "sqs://AKID:key@localhost:9324?aws_access_key_id=AKID",
            "gives the credentials twice",
        ),
        ("amqp:///%2F", r"needs a host.*amqp://guest:guest@localhost:5672"),
        ("amqp://localhost/%2F?prefetch=5", "Unknown URL parameter: 'prefetch'"),
        ("amqp://localhost/%2F?prefetch_count=many", "prefetch_count='many'"),
        ("memory://#top", "fragment"),
    ],
)
def test_malformed_url_is_refused_with_the_expected_form(url: str, expected: str) -> None:
    with pytest.raises(ConfigurationError, match=expected):
        backend_from_url(url)


def test_errors_do_not_show_the_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        backend_from_url("sqs://user:s3cret@localhost/path")
    assert "s3cret" not in str(info.value)
    assert "***" in str(info.value)
