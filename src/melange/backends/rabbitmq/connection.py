"""One AMQP connection owned by one I/O thread, with automatic reconnection.

pika's ``BlockingConnection`` must only be used from the thread that created it, and it only
answers heartbeats while that thread is inside pika. :class:`ConnectionThread` therefore keeps
the connection on a dedicated thread that spends its idle time in ``process_data_events``
(so heartbeats are always answered, however long message handlers run) and runs operations
that other threads submit with :meth:`ConnectionThread.call`. Callers block until their
operation finished on the I/O thread and get its result or exception. Operations whose outcome
nobody needs (acknowledgements) are queued with :meth:`ConnectionThread.post` instead and run
in the same order without the caller waiting.

When the connection drops, the thread reconnects with exponential backoff. An operation that
was interrupted by the drop is run again on the new connection, so every operation must be
safe to repeat (declarations are idempotent; a publish repeated after a lost confirm may
duplicate a message, which at-least-once delivery allows).
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import pika
import pika.exceptions

from melange.exceptions import BackendConnectionError

logger = logging.getLogger("melange.backends.rabbitmq")

T = TypeVar("T")

#: Errors after which the connection is unusable and must be re-established.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.StreamLostError,
    ConnectionError,
    OSError,
)

#: Errors that a reconnection cannot fix: wrong credentials, unknown vhost.
FATAL_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.ProbableAuthenticationError,
    pika.exceptions.ProbableAccessDeniedError,
    pika.exceptions.AuthenticationError,
)


#: Operations posted without waiting (acknowledgements) that may be queued for the I/O
#: thread before posting waits for it.
MAX_QUEUED_POSTS = 16


class _Op(Generic[T]):
    """An operation waiting to run on the I/O thread.

    ``done`` is a lock held until the operation finished (cheaper than an ``Event``, which
    wraps a condition variable); ``None`` for operations nobody waits for (:meth:`post`).
    """

    __slots__ = ("done", "error", "fn", "result", "state")

    def __init__(self, fn: Callable[[Any], T], waited: bool = True) -> None:
        self.fn = fn
        self.done: threading.Lock | None = None
        if waited:
            self.done = threading.Lock()
            self.done.acquire()
        self.result: T | None = None
        self.error: BaseException | None = None
        # pending -> running -> done, or pending -> cancelled (the caller gave up).
        self.state = "pending"

    def finish(self) -> None:
        """Mark the operation done and release its caller."""
        self.state = "done"
        if self.done is not None:
            self.done.release()


class ConnectionThread:
    """Owns a ``BlockingConnection`` on a private thread and runs submitted operations.

    Args:
        parameters: pika connection parameters.
        on_connect: Called on the I/O thread with the new connection after every (re)connect,
            before any queued operation runs; it returns the session object passed to
            operations. If it raises a connection error, the thread reconnects.
        on_disconnect: Called on the I/O thread after the connection was lost.
        describe: Text naming the broker (host, port, vhost) for error messages.
        reconnect_max_delay: Longest pause between reconnection attempts, in seconds.
        poll_interval: Longest time the thread stays in pika before checking for new
            operations without being woken; operations normally wake it at once.
        on_idle: Called on the I/O thread with the session between rounds of I/O (at least
            every ``poll_interval``), for housekeeping.
        after_io: Called on the I/O thread with the session after each round of I/O, to
            hand over what that round received.
    """

    def __init__(
        self,
        parameters: pika.ConnectionParameters,
        on_connect: Callable[[Any], Any],
        on_disconnect: Callable[[], None],
        describe: str,
        *,
        reconnect_max_delay: float = 10.0,
        poll_interval: float = 1.0,
        on_idle: Callable[[Any], None] | None = None,
        after_io: Callable[[Any], None] | None = None,
        name: str = "melange-rabbitmq-io",
    ) -> None:
        self._parameters = parameters
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self.describe = describe
        self._reconnect_max_delay = reconnect_max_delay
        self._poll_interval = poll_interval
        self._on_idle = on_idle
        self._after_io = after_io
        self._ops: collections.deque[_Op[Any]] = collections.deque()
        self._lock = threading.Lock()
        # Posters waiting for the queue of operations to shrink (see post()).
        self._shrunk = threading.Condition(self._lock)
        self._posters_waiting = 0
        # True while the thread waits (or is about to wait) in pika with nothing queued:
        # only then does a new operation need to wake it. Written under _lock.
        self._sleeping = False
        self._closing = threading.Event()
        self._connected = threading.Event()
        self._first_attempt_done = threading.Event()
        self._connection: Any = None
        self._session: Any = None
        self.last_error: BaseException | None = None
        #: Increases with every successful connection; receipts from older ones are stale.
        self.generation = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float) -> None:
        """Start the thread and wait for the first connection, raising if it fails."""
        self._thread.start()
        if not self._first_attempt_done.wait(timeout):
            self.close()
            raise BackendConnectionError(
                f"could not connect to RabbitMQ at {self.describe} within {timeout:.0f}s"
            )
        if not self._connected.is_set():
            error = self.last_error
            self.close()
            raise BackendConnectionError(
                f"could not connect to RabbitMQ at {self.describe}: {_explain(error)}"
            ) from error

    def close(self, timeout: float = 10.0) -> None:
        """Close the connection and stop the thread. Queued operations fail."""
        self._closing.set()
        self._wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closing.is_set()

    @property
    def connected(self) -> bool:
        """Whether the connection is up right now."""
        return self._connected.is_set()

    def on_io_thread(self) -> bool:
        """Whether the caller runs on the I/O thread."""
        return threading.current_thread() is self._thread

    # -- operations -------------------------------------------------------------------------

    def call(self, fn: Callable[[Any], T], timeout: float) -> T:
        """Run ``fn(session)`` on the I/O thread and return its result.

        Raises what ``fn`` raised, or :class:`BackendConnectionError` when the broker could
        not be reached within ``timeout`` seconds.
        """
        if self.on_io_thread():
            return fn(self._session)
        if self._closing.is_set():
            raise BackendConnectionError(f"the RabbitMQ backend for {self.describe} is closed")
        op: _Op[T] = _Op(fn)
        self._enqueue(op)
        done = op.done
        assert done is not None
        if not done.acquire(timeout=timeout):
            with self._lock:
                if op.state == "pending":
                    op.state = "cancelled"
                    self._ops.remove(op)
            if op.state == "cancelled":
                raise BackendConnectionError(
                    f"RabbitMQ at {self.describe} did not complete the operation within "
                    f"{timeout:.0f}s (connected: {self.connected}; last error: "
                    f"{_explain(self.last_error)})"
                )
            done.acquire()  # already running: it has its own deadline
        if op.error is not None:
            raise op.error
        return op.result  # type: ignore[return-value]

    def post(self, fn: Callable[[Any], object]) -> None:
        """Queue ``fn(session)`` to run on the I/O thread, without waiting for it.

        Posted operations run in order with those of :meth:`call`, are repeated after a
        reconnection like them, and still run when :meth:`close` is called while the
        connection is up. Errors they raise are logged.
        """
        if self.on_io_thread():
            fn(self._session)
            return
        if self._closing.is_set():
            raise BackendConnectionError(f"the RabbitMQ backend for {self.describe} is closed")
        with self._lock:
            # Backpressure: an acknowledgement still queued when the connection drops is
            # lost, and its message handled again. When the I/O thread falls behind (a busy
            # machine), posters wait, so a lost connection repeats at most this many.
            # Not while disconnected: those operations wait for the next connection anyway.
            while len(self._ops) >= MAX_QUEUED_POSTS and self._connected.is_set():
                self._posters_waiting += 1
                try:
                    self._shrunk.wait(0.1)
                finally:
                    self._posters_waiting -= 1
        self._enqueue(_Op(fn, waited=False))

    def _enqueue(self, op: _Op[Any]) -> None:
        with self._lock:
            self._ops.append(op)
            sleeping = self._sleeping
            # One wake-up is enough: the woken thread runs everything queued meanwhile.
            self._sleeping = False
        # Waking costs a write to the I/O loop's pipe and a poller round. A thread that is
        # not waiting (running operations, handing over deliveries, waiting for confirms)
        # looks at the queue under the lock before it waits again, so it needs no wake-up.
        if sleeping:
            self._wake()

    def _wake(self) -> None:
        connection = self._connection
        if connection is not None:
            try:
                connection.add_callback_threadsafe(_noop)
            except Exception:  # closed meanwhile: the thread notices on its own
                logger.debug("could not wake the I/O thread", exc_info=True)

    def process(self, time_limit: float) -> None:
        """Let pika do I/O for up to ``time_limit`` seconds (I/O thread only)."""
        self._connection.process_data_events(time_limit=time_limit)

    # -- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        while not self._closing.is_set():
            try:
                self._connection = pika.BlockingConnection(self._parameters)
            except Exception as exc:
                self.last_error = exc
                if not self._first_attempt_done.is_set():
                    # Fail the constructor now: no endless retries on a wrong configuration.
                    self._first_attempt_done.set()
                    self._fail_pending(exc)
                    return
                attempt += 1
                pause = min(self._reconnect_max_delay, 0.2 * 2 ** min(attempt, 8))
                logger.warning(
                    "reconnecting to RabbitMQ at %s failed (%s); next attempt in %.1fs",
                    self.describe,
                    _explain(exc),
                    pause,
                )
                self._closing.wait(pause)
                continue
            try:
                self.generation += 1
                self._session = self._on_connect(self._connection)
                self._connected.set()
                self._first_attempt_done.set()
                if attempt:
                    logger.warning("reconnected to RabbitMQ at %s", self.describe)
                attempt = 0
                self._serve()
            except CONNECTION_ERRORS as exc:
                self.last_error = exc
                attempt += 1
                logger.warning(
                    "connection to RabbitMQ at %s lost (%s); reconnecting",
                    self.describe,
                    _explain(exc),
                )
            except Exception as exc:  # a bug: keep the thread alive, report it
                self.last_error = exc
                attempt += 1
                logger.exception("unexpected error on the RabbitMQ I/O thread; reconnecting")
            finally:
                self._connected.clear()
                self._session = None
                self._close_quietly()
                self._on_disconnect()
            if attempt and not self._closing.is_set():
                self._closing.wait(min(self._reconnect_max_delay, 0.1 * 2 ** min(attempt, 8)))
        self._fail_pending(BackendConnectionError(f"RabbitMQ backend for {self.describe} closed"))

    def _serve(self) -> None:
        while not self._closing.is_set():
            self._run_ops()
            if self._on_idle is not None:
                self._on_idle(self._session)
            with self._lock:
                # Decided under the lock, so that _enqueue either sees the thread asleep
                # (and wakes it) or the thread sees the new operation (and does not wait).
                busy = bool(self._ops)
                self._sleeping = not busy
            try:
                self.process(0 if busy else self._poll_interval)
            finally:
                self._sleeping = False
            if self._after_io is not None:
                self._after_io(self._session)
        # Closing: what was queued before close() (acknowledgements posted without waiting,
        # above all) still goes out; the connection's close flushes it in order.
        self._run_ops()

    def _run_ops(self) -> None:
        while True:
            with self._lock:
                if not self._ops:
                    return
                op = self._ops[0]
                op.state = "running"
            try:
                op.result = op.fn(self._session)
            except CONNECTION_ERRORS:
                # Leave it at the head of the queue: it runs again after reconnecting.
                with self._lock:
                    op.state = "pending"
                raise
            except BaseException as exc:
                if self._connection is not None and self._connection.is_closed:
                    with self._lock:
                        op.state = "pending"
                    raise pika.exceptions.ConnectionWrongStateError(str(exc)) from exc
                op.error = exc
                if op.done is None:
                    logger.error("a queued RabbitMQ operation failed: %s", exc, exc_info=exc)
            with self._lock:
                self._ops.popleft()
                op.finish()
                if self._posters_waiting and len(self._ops) < MAX_QUEUED_POSTS:
                    self._shrunk.notify_all()

    def _fail_pending(self, error: BaseException) -> None:
        with self._lock:
            ops = list(self._ops)
            self._ops.clear()
        for op in ops:
            op.error = BackendConnectionError(
                f"could not reach RabbitMQ at {self.describe}: {_explain(error)}"
            )
            op.finish()

    def _close_quietly(self) -> None:
        connection = self._connection
        self._connection = None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception:
                logger.debug("closing the connection failed", exc_info=True)


def _noop() -> None:
    """Wakes the I/O thread; the work itself is in the operation queue."""


def _explain(error: BaseException | None) -> str:
    """A readable reason for a connection failure."""
    if error is None:
        return "no error recorded"
    if isinstance(error, FATAL_CONNECT_ERRORS):
        return (
            f"access refused ({type(error).__name__}: {error}); check the username, password "
            "and that the user may access this virtual host"
        )
    if isinstance(error, pika.exceptions.AMQPConnectionError) and error.args:
        inner = error.args[0]
        if isinstance(inner, BaseException):
            return f"{type(inner).__name__}: {inner}"
    text = str(error) or repr(error)
    return f"{type(error).__name__}: {text}"
