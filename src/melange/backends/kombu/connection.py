"""Backend URLs and kombu connections: which transport, with which options, and the
:class:`Link` a backend holds to it.

A backend URL names the kombu transport after ``kombu+``: ``kombu+redis://host:6379/0``,
``kombu+amqp://user:password@host:5672/vhost`` (``kombu+pyamqp://`` is the same), or any
other transport kombu knows (``kombu+memory://``, ``kombu+sqs://``, ...). What follows the
``kombu+`` is handed to ``kombu.Connection`` as it is.
"""

from __future__ import annotations

import contextlib
import select
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from kombu import connection as kombu_connection
from melange.exceptions import BackendConnectionError, BackendError, ConfigurationError, WouldBlock
from melange.redaction import redact_url

_T = TypeVar("_T")

# kombu has no type information: its classes are used untyped.
_Connection: Any = kombu_connection.Connection

#: The prefix of backend URLs naming a kombu transport.
SCHEME_PREFIX = "kombu+"

#: Seconds a read or write on the broker's connection may take.
IO_TIMEOUT = 10.0

#: AMQP's reply code for a missing queue or exchange.
NOT_FOUND = 404

#: The socket timeout of a read that must not wait (py-amqp keeps a partial frame for the
#: next read on a timeout; a non-blocking socket would make it spin instead).
_NO_WAIT = 0.0001


def kombu_url(url: str) -> str:
    """The URL kombu reads: the backend URL without its ``kombu+`` prefix."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"kombu backend URL {redacted(str(url))!r} must look like kombu+redis://host:6379/0 "
            "or kombu+amqp://user:password@host:5672/vhost"
        )
    if url.lower().startswith(SCHEME_PREFIX):
        return url[len(SCHEME_PREFIX) :]
    return url


def transport_name(url: str) -> str:
    """The transport part of a kombu URL (``redis``, ``amqp``...), lower case."""
    return urlsplit(kombu_url(url)).scheme.lower()


def redacted(url: str) -> str:
    """The URL without its password, for reprs and errors."""
    return redact_url(url)


def transport_options(
    driver: str, prefix: str, visibility_timeout: float, given: Mapping[str, Any] | None
) -> dict[str, Any]:
    """kombu ``transport_options`` for a transport whose ``driver_type`` is ``driver``.

    Redis: every key under ``prefix`` (kombu's ``global_keyprefix``, its unacknowledged
    index included, so backends on other prefixes, and other kombu applications, never
    restore each other's messages) and kombu's visibility timeout. AMQP: publisher confirms,
    so a publish returns once the broker has the message. Both: reads and writes time out
    after :data:`IO_TIMEOUT` seconds. ``given`` overrides them.
    """
    options: dict[str, Any] = {}
    # A half-open connection (a network that drops packets without a reset) would block a
    # read for good, holding the backend's lock: every call fails after this instead, and
    # the backend opens a new connection.
    if driver == "redis":
        options.update(global_keyprefix=prefix, visibility_timeout=float(visibility_timeout))
        options.update(socket_timeout=IO_TIMEOUT, socket_connect_timeout=IO_TIMEOUT)
    elif driver in ("amqp", "librabbitmq"):
        options.update(confirm_publish=True, read_timeout=IO_TIMEOUT, write_timeout=IO_TIMEOUT)
    options.update(given or {})
    return options


def driver_type(url: str) -> str:
    """kombu's ``driver_type`` of the URL's transport (``redis``, ``amqp``, ``memory``...)."""
    probe = _Connection(kombu_url(url))
    driver = str(probe.transport.driver_type)
    probe.release()
    return driver


class ChannelLost(Exception):
    """An AMQP channel error closed the channel named (``"consume"``/``"publish"``)."""

    def __init__(self, which: str, error: BaseException) -> None:
        super().__init__(which)
        self.which = which
        self.error = error


class ChannelWatcher(Protocol):
    """What keeps state tied to the channels of a :class:`Link`; told of their changes
    under the link's lock."""

    def connected(self) -> None:
        """The connection is up: the channels that are missing are opened next."""

    def publishing_opened(self, channel: Any) -> None:
        """``channel`` is a new publishing channel."""

    def channel_lost(self, which: str) -> None:
        """The ``"consume"`` or ``"publish"`` channel is gone, and what it held with it."""


class Link:
    """One kombu connection of a backend, with a channel for receiving and settling and one
    for publishing, opened when needed and used under :attr:`lock` (kombu channels are not
    thread-safe). A connection error drops both; the next call opens a new connection.

    Args:
        url: The backend URL.
        amqp: Whether the transport is AMQP (else one of kombu's virtual transports).
        options: kombu transport options.
        connect_timeout: Seconds a connection attempt may take.
        heartbeat: The AMQP heartbeat interval asked of the broker, in seconds (0: none).
        retries: How many times :meth:`io` tries again on a new connection.
    """

    def __init__(
        self,
        url: str,
        *,
        amqp: bool,
        options: Mapping[str, Any],
        connect_timeout: float,
        heartbeat: float,
        retries: int,
    ) -> None:
        self.url = redacted(url)
        self.transport = transport_name(url)
        self.amqp = amqp
        self.heartbeat = heartbeat
        self._retries = retries
        self.connection: Any = _Connection(
            kombu_url(url),
            transport_options=options,
            connect_timeout=connect_timeout,
            heartbeat=heartbeat,
        )
        #: What a new connection may cure (the same for every connection of the transport).
        self.recoverable: tuple[type[BaseException], ...] = (
            *self.connection.connection_errors,
            OSError,
        )
        self.lock = threading.RLock()
        #: Which connection is the current one (a message received on an earlier one can no
        #: longer be settled: the broker gives it to a consumer again).
        self.generation = 0
        self.consume: Any = None
        self.publish: Any = None
        #: On AMQP, py-amqp's connection under the kombu one, read directly on the receive
        #: path (kombu checks the connection again at each property access); set with the
        #: channels, dropped with them.
        self.raw: Any = None
        self.closed = False
        #: The exchanges declared or found on the current connection.
        self.exchanges: set[str] = set()
        #: Told when the channels open or are lost.
        self.watchers: list[ChannelWatcher] = []
        #: When the next heartbeat check of the connection is due (monotonic seconds).
        self._next_beat_check = 0.0

    def channels(self) -> tuple[Any, Any]:
        """The receiving and the publishing channel, opened when needed (under the lock)."""
        if self.closed:
            raise BackendError("the kombu backend is closed")
        if self.consume is None or self.publish is None:
            if self.consume is None and self.publish is not None:
                # Only the receiving channel closed: the messages it delivered are given
                # back by the broker.
                self.generation += 1
                self._lost("consume")
            self.connection.ensure_connection(max_retries=1)
            self.raw = self.connection.connection if self.amqp else None
            for watcher in self.watchers:
                watcher.connected()
            if self.consume is None:
                self.consume = self.connection.channel()
            if self.publish is None:
                self.publish = self.connection.channel()
                for watcher in self.watchers:
                    watcher.publishing_opened(self.publish)
        return self.consume, self.publish

    def _lost(self, which: str) -> None:
        for watcher in self.watchers:
            watcher.channel_lost(which)

    def reset(self) -> None:
        """Drop the connection after an error: the next call opens a new one."""
        self.generation += 1
        self.consume = self.publish = None
        self.raw = None
        self._lost("publish")
        self._lost("consume")
        self.exchanges.clear()
        with contextlib.suppress(Exception):
            self.connection.collect()
        self.connection = self.connection.clone()

    def io(self, operation: Callable[[Any, Any], _T], what: str) -> _T:
        """Run ``operation(receiving channel, publishing channel)`` under the lock, on a new
        connection again after a connection error (``retries`` times)."""
        recoverable = self.recoverable
        attempt = 0
        while True:
            with self.lock:
                try:
                    consume, publish = self.channels()
                    return operation(consume, publish)
                except ChannelLost as lost:
                    self.lose_channel(lost.which)
                    raise self.channel_error(lost.error, what) from None
                except recoverable as exc:
                    self.reset()
                    if attempt >= self._retries:
                        raise BackendConnectionError(
                            f"{what}: the {self.transport} transport at {self.url} is not "
                            f"reachable ({type(exc).__name__})"
                        ) from None
            time.sleep(min(2.0, 0.1 * 2**attempt))
            attempt += 1

    def drop(self) -> None:
        """Drop the connection (a confirm that never came): the next call opens another."""
        with self.lock:
            self.reset()

    def lose_channel(self, which: str) -> None:
        """Close the ``"consume"`` or ``"publish"`` channel after the broker refused a call
        on it: the next call opens another."""
        with contextlib.suppress(Exception):
            channel = self.consume if which == "consume" else self.publish
            if channel is not None:
                channel.close()
        if which == "consume":
            self.consume = None
        else:
            self.publish = None
        self._lost(which)

    def channel_error(self, error: BaseException, what: str) -> Exception:
        """What a call the broker refused with ``error`` raises."""
        return BackendError(f"{what}: the broker refused ({_describe(error)})")

    def guard(self, which: str, call: Callable[[], _T]) -> _T:
        """Run an AMQP call that may close its channel on a refusal (``which`` names it)."""
        try:
            return call()
        except self.connection.channel_errors as exc:
            if self.amqp:
                raise ChannelLost(which, exc) from exc
            raise

    @contextlib.contextmanager
    def spare_channel(self) -> Iterator[Any]:
        """A channel of its own for a call the broker may refuse by closing the channel
        (passive declarations, topology), so the receiving one and its messages live on."""
        with self.lock:
            self.channels()
            channel = self.connection.channel()
            try:
                yield channel
            finally:
                with contextlib.suppress(Exception):
                    channel.close()

    def on_spare(self, operation: Callable[[Any], _T], what: str) -> _T:
        """Run ``operation(spare channel)``, on a new connection after a connection error."""

        def run(consume: Any, publish: Any) -> _T:
            with self.spare_channel() as channel:
                return operation(channel)

        return self.io(run, what)

    @contextlib.contextmanager
    def free(self, opened: bool) -> Iterator[None]:
        """Hold the lock for a call on an event loop that must not wait: taken only if free
        (and, with ``opened``, the channels open).

        Raises:
            WouldBlock: another thread is using the connection, or it is not open.
        """
        if not self.lock.acquire(blocking=False):
            raise WouldBlock("another thread is using the kombu connection")
        try:
            if opened and (
                self.closed or self.consume is None or self.publish is None or self.raw is None
            ):
                raise WouldBlock("the kombu connection is not open")
            yield
        finally:
            self.lock.release()

    def drain(self) -> None:
        """Read every frame the AMQP connection has received, without waiting (deliveries go
        to their consumer's queue), and send or check heartbeats (under the lock)."""
        raw = self.raw if self.raw is not None else self.connection.connection
        transport = raw.transport
        sock = transport.sock
        if _readable(sock):
            # The frames of what arrived, read under one socket timeout (py-amqp's own loop
            # would set the timeout and restore it for each frame). The frames of a delivery
            # are sent together: the next one is read without asking the socket first.
            with transport.having_timeout(_NO_WAIT):
                while True:
                    try:
                        frame = transport.read_frame()
                    except TimeoutError:
                        break  # a partial frame stays in py-amqp's buffer for the next read
                    raw.on_inbound_frame(frame)
                    if not _followed(frame) and not _readable(sock):
                        break
        if self.heartbeat:
            now = time.monotonic()
            if now >= self._next_beat_check:
                # py-amqp sends a heartbeat when one is due and raises when the broker's are
                # missed: a few checks per interval are enough.
                self._next_beat_check = now + self.heartbeat / 4
                raw.heartbeat_tick(rate=2)

    def close(self) -> None:
        """Close the channels and release the connection (under the lock). Unsettled
        messages go back to their queues: at once on AMQP and on Redis (kombu gives back a
        closing channel's messages)."""
        for channel in (self.consume, self.publish):
            if channel is not None:
                with contextlib.suppress(Exception):
                    # Given back before the close: kombu's Redis channel would otherwise
                    # do it on a connection it opens after closing its pool (and leaks).
                    if not self.amqp:
                        channel.qos.restore_unacked_once()
                    channel.close()
        self.consume = self.publish = None
        self._lost("consume")
        with contextlib.suppress(Exception):
            self.connection.release()


#: The methods followed by a content header frame (class 60, basic: deliver, get-ok, return).
_CONTENT_METHODS = frozenset(
    struct.pack(">HH", 60, method) for method in (60, 71, 50)
)  # fmt: skip


def _followed(frame: tuple[int, int, Any]) -> bool:
    """Whether the broker sent more frames with ``frame``: a content method's header, or a
    header's body (a body of several frames is read on after asking the socket)."""
    kind, _, payload = frame
    if kind == 1:
        return bytes(payload[:4]) in _CONTENT_METHODS
    if kind == 2:
        return bool(struct.unpack_from(">Q", payload, 4)[0])
    return False


def _readable(sock: Any) -> bool:
    """Whether a read from ``sock`` returns at once (TLS may hold decrypted bytes)."""
    if sock is None:
        return False
    pending = getattr(sock, "pending", None)
    if pending is not None and pending():
        return True
    return bool(select.select([sock], [], [], 0)[0])


def raw_key(channel: Any, key: str) -> str:
    """A Redis key as stored: kombu prefixes only the commands it uses itself."""
    return f"{getattr(channel, 'global_keyprefix', '') or ''}{key}"


def reply_code(exc: BaseException) -> int | None:
    """The AMQP reply code of a channel error (:data:`NOT_FOUND` read from its text when
    it has none)."""
    code = getattr(exc, "reply_code", None) or getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    text = str(exc)
    return NOT_FOUND if "NOT_FOUND" in text or "(404)" in text else None


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{type(exc).__name__}: {text[:200]}"


__all__ = [
    "IO_TIMEOUT",
    "NOT_FOUND",
    "SCHEME_PREFIX",
    "ChannelLost",
    "ChannelWatcher",
    "Link",
    "driver_type",
    "kombu_url",
    "raw_key",
    "redacted",
    "reply_code",
    "transport_name",
    "transport_options",
]
