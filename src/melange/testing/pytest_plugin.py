"""The pytest plugin of Melange: fixtures for testing services that use it.

Installed with Melange (the ``pytest11`` entry point ``melange``; ``pip install
melange[testing]`` brings pytest), it gives every test suite these fixtures:

- ``melange_backend``: a backend for the test. By default a fresh in-memory backend on
  ``melange_clock``; with ``--melange-backend=URL`` (or the ``melange_backend`` ini option),
  the backend that URL names (``sqlite:///...``, ``amqp://...``, ...; see
  :mod:`melange.backends.urls`), so the same tests run against a real broker. The queues
  and topics the test created on it are deleted afterwards (not those that existed
  before), and it is closed.
- ``melange_harness``: a started :class:`~melange.testing.harness.Harness` on that backend,
  closed after the test (stopping the dispatchers it runs in the background).
- ``melange_clock``: the :class:`~melange.testing.clock.FakeClock` the in-memory backend
  counts delays on.
- ``melange_serializers``: what the harness publishes test inputs with and decodes with;
  JSON unless a suite overrides this fixture (e.g. to return its own serializer).
- ``melange_backend_url``: the URL given, or ``None`` for the in-memory default.

``pytest -p no:melange`` disables the plugin. Its fixtures are all named ``melange_*``, so
they never shadow a suite's own ``backend`` or ``harness`` fixtures.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from melange.backends.interfaces import MessagingBackend
    from melange.serializers.registry import SerializerSource
    from melange.testing.clock import FakeClock
    from melange.testing.harness import Harness

_OPTION = "--melange-backend"
_INI = "melange_backend"


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--melange-backend=URL`` and the ``melange_backend`` ini option."""
    group = parser.getgroup("melange", "Melange messaging")
    group.addoption(
        _OPTION,
        dest="melange_backend",
        default=None,
        metavar="URL",
        help="run the melange_backend fixture on the backend this URL names "
        "(sqlite:///path.db, amqp://..., sqs://...); default: in memory",
    )
    parser.addini(_INI, "default backend URL of the melange_backend fixture", default="")


@pytest.fixture
def melange_backend_url(request: pytest.FixtureRequest) -> str | None:
    """The backend URL given with ``--melange-backend`` (or the ini option), else ``None``."""
    given = request.config.getoption("melange_backend") or request.config.getini(_INI)
    return str(given) if given else None


@pytest.fixture
def melange_clock() -> FakeClock:
    """The fake clock of the in-memory backend (see :class:`~melange.testing.clock.FakeClock`)."""
    from melange.testing.clock import FakeClock

    return FakeClock()


@pytest.fixture
def melange_serializers() -> SerializerSource | None:
    """The serializers of the harness (``None``: JSON); override it to give yours."""
    return None


@pytest.fixture
def melange_backend(
    melange_backend_url: str | None, melange_clock: FakeClock
) -> Iterator[MessagingBackend]:
    """The test's backend: in memory, or the one ``--melange-backend`` names; what the test
    declared on it is deleted afterwards."""
    if melange_backend_url is None:
        from melange.backends.memory import InMemoryMessagingBackend

        yield InMemoryMessagingBackend(clock=melange_clock)
        return
    from melange.backends.urls import backend_from_url

    backend = backend_from_url(melange_backend_url)
    declared = _track_declarations(backend)
    try:
        yield backend
    finally:
        try:
            _delete_declared(backend, declared)
        finally:
            backend.close_connection()


@pytest.fixture
def melange_harness(
    melange_backend: MessagingBackend,
    melange_backend_url: str | None,
    melange_clock: FakeClock,
    melange_serializers: SerializerSource | None,
) -> Iterator[Harness]:
    """A started :class:`~melange.testing.harness.Harness` on ``melange_backend``, with
    ``melange_serializers``."""
    from melange.testing.harness import Harness

    clock = melange_clock if melange_backend_url is None else None
    harness = Harness(melange_backend, clock=clock, serializers=melange_serializers).start()
    try:
        yield harness
    finally:
        harness.close()


class _Declared:
    """The queues and topics declared on a backend, in order."""

    def __init__(self) -> None:
        self.queues: list[str] = []
        self.topics: list[str] = []


def _track_declarations(backend: MessagingBackend) -> _Declared:
    """Record the names the test makes ``backend`` create (on this instance only): a queue
    or topic that existed before the test is not the test's to delete."""
    from melange.exceptions import DestinationNotFoundError

    declared = _Declared()
    declare_queue: Callable[..., Any] = backend.declare_queue
    declare_topic: Callable[..., Any] = backend.declare_topic

    def new(look_up: Callable[[str], Any], name: str) -> bool:
        try:
            look_up(name)
        except DestinationNotFoundError:
            return True
        return False

    def queue(queue_name: str, *topics: Any, **kwargs: Any) -> Any:
        names = [queue_name, kwargs.get("dead_letter_queue_name")]
        created = [n for n in names if n and n not in declared.queues and new(get_queue, n)]
        result = declare_queue(queue_name, *topics, **kwargs)
        declared.queues.extend(created)
        return result

    def topic(topic_name: str) -> Any:
        created = topic_name not in declared.topics and new(get_topic, topic_name)
        result = declare_topic(topic_name)
        if created:
            declared.topics.append(topic_name)
        return result

    get_queue, get_topic = backend.get_queue, backend.get_topic
    # Instance attributes shadow the methods: the backend's class is left alone.
    backend.declare_queue = queue  # type: ignore[method-assign]
    backend.declare_topic = topic  # type: ignore[method-assign]
    return declared


def _delete_declared(backend: MessagingBackend, declared: _Declared) -> None:
    """Delete what the test declared: queues first (their subscriptions go with them)."""
    from melange.exceptions import DestinationNotFoundError

    # A name the test deleted itself is gone already.
    for name in reversed(declared.queues):
        with contextlib.suppress(DestinationNotFoundError):
            backend.delete_queue(backend.get_queue(name))
    for name in reversed(declared.topics):
        with contextlib.suppress(DestinationNotFoundError):
            backend.delete_topic(backend.get_topic(name))


__all__ = [
    "melange_backend",
    "melange_backend_url",
    "melange_clock",
    "melange_harness",
    "melange_serializers",
]
