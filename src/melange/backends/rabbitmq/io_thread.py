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

The operations themselves and the per-connection state they get are in
:mod:`~melange.backends.rabbitmq.session`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import pika
import pika.exceptions

from melange.backends.rabbitmq.connection import explain_connection_error
from melange.backends.rabbitmq.pika_io import (
    io_pending,
    noop,
    output_pending,
    readable,
    socket_of,
)
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

#: Operations posted without waiting (acknowledgements) that may be queued for the I/O
#: thread before posting waits for it.
MAX_QUEUED_POSTS = 16

#: While callers drive the connection themselves, the I/O thread leaves the socket to them
#: and looks at it this often (seconds), for what arrives while none of them does I/O.
PASSIVE_POLL = 0.05

#: Longest time (seconds) a receiving thread waits for the I/O thread to end its round of
#: I/O so that it can read the socket itself (see ConnectionThread.drive).
ROUND_WAIT = 0.1


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


class _FallBack(Exception):
    """An operation run on the caller's thread met a broken connection: queue it instead."""


class ConnectionThread:
    """Owns a ``BlockingConnection`` on a private thread and runs submitted operations.

    Whoever drives the connection holds ``_io``: the private thread while it does I/O, or a
    caller running its operation on its own thread. While the thread waits for the broker
    with nothing to do it does not hold ``_io`` (it waits on the socket itself), so a
    caller finding the connection up and free runs its operation at once, without handing
    it over and waking the thread: that hand-off was most of the cost of a publish or an
    acknowledgement. Operations queued before (and every operation while the connection is
    down) still run in order on the thread.

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
        # Held by whoever drives the connection (see the class documentation); _owner is
        # that thread's id.
        self._io = threading.Lock()
        self._owner: int | None = None
        # Set per connection: the socket to wait on without pika (None: wait in pika, and
        # callers always hand their operations over).
        self._socket: Any = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # Posters waiting for the queue of operations to shrink (see post()).
        self._shrunk = threading.Condition(self._lock)
        self._posters_waiting = 0
        # A receiving thread doing I/O itself while it waits for deliveries (see drive()),
        # and the callers waiting for the connection meanwhile. Written under _lock.
        self._leading = False
        self._contenders = 0
        # When a caller last drove the connection (time.monotonic()).
        self._last_driven = 0.0
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
                f"could not connect to RabbitMQ at {self.describe}: "
                f"{explain_connection_error(error)}"
            ) from error

    def close(self, timeout: float = 10.0) -> None:
        """Close the connection and stop the thread. Queued operations fail."""
        self._closing.set()
        self._wake()
        self.interrupt_leader()
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
        """Whether the caller drives the connection now (the I/O thread, or a caller running
        its operation inline)."""
        return self._owner == threading.get_ident() or threading.current_thread() is self._thread

    @contextlib.contextmanager
    def _driving(self) -> Any:
        """Hold ``_io`` as the thread driving the connection."""
        with self._io:
            self._owner = threading.get_ident()
            try:
                yield
            finally:
                self._owner = None

    def _try_inline(self, fn: Callable[[Any], T], timeout: float) -> tuple[bool, T | None]:
        """Run ``fn(session)`` on the caller's thread when the connection is up and the
        thread waits idle; ``(False, None)`` when it must be handed over instead."""
        if self._socket is None or not self._connected.is_set():
            return False, None
        with self._lock:
            self._contenders += 1
            leading = self._leading
        try:
            if leading:
                self.interrupt_leader()
            acquired = self._io.acquire(timeout=min(timeout, 1.0))
        finally:
            with self._lock:
                self._contenders -= 1
        if not acquired:
            return False, None
        self._owner = threading.get_ident()
        try:
            if self._socket is None or not self._connected.is_set() or self._closing.is_set():
                return False, None
            try:
                # What was queued before this operation goes first, as on the thread.
                self._run_ops()
                result = fn(self._session)
                # Writes what the operation left buffered (acknowledgements) and dispatches
                # what its I/O read for other channels (deliveries), which the thread, waiting
                # on the socket, would not see.
                if io_pending(self._connection):
                    self.process(0)
            except CONNECTION_ERRORS as exc:
                raise _FallBack from exc
            except BaseException as exc:
                connection = self._connection
                if connection is not None and connection.is_closed:
                    raise _FallBack from exc
                raise
            finally:
                if self._after_io is not None and self._session is not None:
                    with contextlib.suppress(*CONNECTION_ERRORS):
                        self._after_io(self._session)
            return True, result
        except _FallBack:
            # The thread notices the broken connection, reconnects and runs the operation.
            self._wake_pipe()
            return False, None
        finally:
            self._last_driven = time.monotonic()
            self._owner = None
            self._io.release()

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
        done_inline, result = self._try_inline(fn, timeout)
        if done_inline:
            return result  # type: ignore[return-value]
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
                    f"{explain_connection_error(self.last_error)})"
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
        try:
            done_inline, _ = self._try_inline(fn, 0.05)
        except Exception as exc:  # as when the thread runs it: logged
            logger.error("a RabbitMQ operation failed: %s", exc, exc_info=exc)
            return
        if done_inline:
            return
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
            leading = self._leading
        if leading:
            self.interrupt_leader()
        # Waking costs a write to the I/O loop's pipe and a poller round. A thread that is
        # not waiting (running operations, handing over deliveries, waiting for confirms)
        # looks at the queue under the lock before it waits again, so it needs no wake-up.
        if sleeping:
            self._wake()

    def drive(self, time_limit: float) -> bool:
        """Do the connection's I/O on the caller's thread for up to ``time_limit`` seconds,
        returning once something was received (its deliveries handed over), when the
        connection is up and free and nobody else waits for it; ``False`` otherwise. When
        the I/O thread is in a round of I/O, waits for it to end and returns ``True`` without
        doing I/O: that round may have handed over what the caller waits for.

        A receiving thread waiting for deliveries calls this instead of waiting for the I/O
        thread to hand them over, as a raw pika consumer reads its own socket. Callers that
        need the connection meanwhile, :meth:`close` and :meth:`interrupt_leader` end the
        wait early.
        """
        if self._socket is None or not self._connected.is_set() or self._closing.is_set():
            return False
        if not self._io.acquire(blocking=False):
            owner = self._owner
            if owner is not None and owner != self._thread.ident:
                # Another caller drives: what it reads for this caller is handed over.
                return False
            # The I/O thread's round of I/O (or a caller just taking the connection): short.
            # Waiting for the thread to hand over instead could last until its next look at
            # the socket, PASSIVE_POLL later, with the delivery unread meanwhile. Bounded, as
            # interrupt() cannot end a wait for the lock: after a longer round (queued
            # operations) the caller waits for the hand-over as before.
            if not self._io.acquire(timeout=min(time_limit, ROUND_WAIT)):
                return False
            # That round may have handed over what the caller waits for: it looks first.
            self._io.release()
            return True
        self._owner = threading.get_ident()
        try:
            with self._lock:
                if self._ops or self._contenders or self._closing.is_set():
                    return False
                if self._socket is None or not self._connected.is_set():
                    return False
                self._leading = True
            try:
                self._connection.process_data_events(time_limit=time_limit)
            except CONNECTION_ERRORS:
                # The thread notices the broken connection and reconnects.
                self._wake_pipe()
                return False
            finally:
                with self._lock:
                    self._leading = False
                if self._after_io is not None and self._session is not None:
                    with contextlib.suppress(*CONNECTION_ERRORS):
                        self._after_io(self._session)
            return True
        finally:
            self._last_driven = time.monotonic()
            self._owner = None
            self._io.release()

    def interrupt_leader(self) -> None:
        """End a :meth:`drive` in progress (from any thread)."""
        connection = self._connection
        if connection is not None and self._leading:
            with contextlib.suppress(Exception):  # closed meanwhile: it ends by itself
                connection.add_callback_threadsafe(noop)

    def _wake_pipe(self) -> None:
        with self._lock:
            if self._wake_w < 0:
                return  # the thread has ended
            with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
                os.write(self._wake_w, b"x")

    def _wake(self) -> None:
        if self._socket is not None:
            self._wake_pipe()
            return
        connection = self._connection
        if connection is not None:
            try:
                connection.add_callback_threadsafe(noop)
            except Exception:  # closed meanwhile: the thread notices on its own
                logger.debug("could not wake the I/O thread", exc_info=True)

    def process(self, time_limit: float) -> None:
        """Let pika do I/O for up to ``time_limit`` seconds (I/O thread only)."""
        connection = self._connection
        try:
            connection.process_data_events(time_limit=time_limit)
        except ValueError:
            # A caller doing its own I/O saw the broker close the connection first; pika
            # then fails on its closed timers. That is a lost connection, not a bug.
            if connection.is_closed:
                raise pika.exceptions.ConnectionWrongStateError(
                    "the connection was closed"
                ) from None
            raise

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
                    self._close_pipe()
                    return
                attempt += 1
                pause = min(self._reconnect_max_delay, 0.2 * 2 ** min(attempt, 8))
                logger.warning(
                    "reconnecting to RabbitMQ at %s failed (%s); next attempt in %.1fs",
                    self.describe,
                    explain_connection_error(exc),
                    pause,
                )
                self._closing.wait(pause)
                continue
            try:
                self.generation += 1
                self._session = self._on_connect(self._connection)
                self._socket = socket_of(self._connection)
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
                    explain_connection_error(exc),
                )
            except Exception as exc:  # a bug: keep the thread alive, report it
                self.last_error = exc
                attempt += 1
                logger.exception("unexpected error on the RabbitMQ I/O thread; reconnecting")
            finally:
                with self._driving():
                    self._connected.clear()
                    self._socket = None
                    self._session = None
                    self._close_quietly()
                    self._on_disconnect()
            if attempt and not self._closing.is_set():
                self._closing.wait(min(self._reconnect_max_delay, 0.1 * 2 ** min(attempt, 8)))
        self._fail_pending(BackendConnectionError(f"RabbitMQ backend for {self.describe} closed"))
        self._close_pipe()

    def _close_pipe(self) -> None:
        with self._lock:
            read, write = self._wake_r, self._wake_w
            self._wake_r = self._wake_w = -1
        for fd in (read, write):
            if fd >= 0:
                os.close(fd)

    def _serve(self) -> None:
        woke = "start"
        last_io = 0.0
        while not self._closing.is_set():
            idle = False
            with self._driving():
                ran = self._run_ops()
                if self._on_idle is not None:
                    self._on_idle(self._session)
                with self._lock:
                    # Decided under the lock, so that _enqueue either sees the thread asleep
                    # (and wakes it) or the thread sees the new operation (and does not wait).
                    busy = bool(self._ops)
                    self._sleeping = not busy
                try:
                    if busy or self._socket is None:
                        self.process(0 if busy else self._poll_interval)
                    else:
                        now = time.monotonic()
                        # A wake-up for data a caller running inline has read meanwhile
                        # needs no round of I/O; pika's timers (heartbeats) get one at least
                        # every poll_interval.
                        if (
                            ran
                            or woke != "socket"
                            or now - last_io >= self._poll_interval
                            or readable(self._socket)
                            or io_pending(self._connection)
                        ):
                            # Reads and writes what is ready, runs pika's due timers.
                            self.process(0)
                            last_io = now
                        idle = not output_pending(self._connection)
                finally:
                    if not idle:
                        self._sleeping = False
                if self._after_io is not None:
                    self._after_io(self._session)
            woke = "busy"
            if idle:
                try:
                    woke = self._wait_idle()
                finally:
                    self._sleeping = False
        # Closing: what was queued before close() (acknowledgements posted without waiting,
        # above all) still goes out; the connection's close flushes it in order.
        with self._driving():
            self._run_ops()

    def _wait_idle(self) -> str:
        """Wait, without holding ``_io``, until the broker sends something (``"socket"``), an
        operation is queued (``"wake"``) or ``poll_interval`` passed (``"timeout"``).

        While callers drove the connection within the last ``poll_interval`` (publishing,
        acknowledging, reading their deliveries), what the broker sends is mostly theirs:
        waking for it would only contend with them for the connection. The thread then
        looks at the socket every ``PASSIVE_POLL`` seconds instead (``"socket"``, checked).
        """
        passive = time.monotonic() - self._last_driven < self._poll_interval
        try:
            if passive:
                ready, _, _ = select.select([self._wake_r], [], [], PASSIVE_POLL)
            else:
                ready, _, _ = select.select(
                    [self._socket, self._wake_r], [], [], self._poll_interval
                )
        except (OSError, ValueError):  # closed meanwhile: the next round of I/O says why
            return "error"
        if self._wake_r in ready:
            with contextlib.suppress(OSError):
                while os.read(self._wake_r, 512):
                    pass
            return "wake"
        return "socket" if ready or passive else "timeout"

    def _run_ops(self) -> bool:
        """Run the queued operations; whether there were any."""
        ran = False
        while True:
            with self._lock:
                if not self._ops:
                    return ran
                ran = True
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
                f"could not reach RabbitMQ at {self.describe}: {explain_connection_error(error)}"
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
