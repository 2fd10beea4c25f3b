"""Helpers that reach under a pika ``BlockingConnection``: its socket, its buffers, its loop.

pika has no public way to wait on a blocking connection's socket without it, to tell whether
it holds frames to write, or to write them at once. The I/O thread
(:mod:`~melange.backends.rabbitmq.io_thread`) and the session
(:mod:`~melange.backends.rabbitmq.session`) do so through these functions, which fall back
to pika's own I/O loop where its internals differ (other pika versions, TLS).
"""

from __future__ import annotations

import contextlib
import select
from typing import Any

import pika.exceptions

try:  # A pika internal: the plain TCP transport, whose frames send_now() writes at once.
    from pika.adapters.utils.io_services_utils import (
        _AsyncPlaintextTransport as _PlainTransport,
    )
except ImportError:  # pragma: no cover - other pika versions: pika's I/O loop writes them
    _PlainTransport = None


def noop() -> None:
    """Wakes the I/O thread; the work itself is in the operation queue."""


def socket_of(connection: Any) -> Any:
    """The socket under a ``BlockingConnection`` (``None`` where pika hides it)."""
    try:
        sock = connection._impl._transport._sock
        sock.fileno()
    except Exception:
        return None
    return sock


def readable(sock: Any) -> bool:
    """Whether ``sock`` has data to read now."""
    try:
        ready, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True  # let pika find out what is wrong
    return bool(ready)


def send_now(connection: Any) -> None:
    """Write the frames pika holds for the socket at once, in one ``send``.

    pika buffers each frame of a message apart (method, header, body) and writes them once
    its I/O loop reports the socket writable, with a ``send`` per frame: three system calls
    and a round of the loop per message. Whatever cannot be written now (a full socket
    buffer) stays buffered for the loop, as before. Connections whose transport is not
    pika's plain TCP one (TLS, other pika versions) are left to the loop.
    """
    try:
        transport = connection._impl._transport
        if type(transport) is not _PlainTransport:
            return
        buffers = transport._tx_buffers
        if len(buffers) > 1:
            joined = b"".join(buffers)
            buffers.clear()
            buffers.append(joined)
        if buffers:
            # Sends, and stops watching for writability once everything went out (failures
            # abort the connection, as when the loop calls it).
            transport._on_socket_writable()
    except AttributeError:
        return


def io_pending(connection: Any) -> bool:
    """Whether pika holds frames to write or events read but not yet dispatched."""
    try:
        return bool(
            connection._impl._transport.get_write_buffer_size()
            or connection._channels_pending_dispatch
            or connection._ready_events
        )
    except Exception:
        return True


def output_pending(connection: Any) -> bool:
    """Whether pika holds frames it could not write yet."""
    try:
        return bool(connection._impl._transport.get_write_buffer_size())
    except Exception:
        return True  # cannot tell: keep doing I/O through pika


def wake(connection: Any) -> None:
    """Make the running ``process_data_events`` return (unless the connection is closing)."""
    if connection.is_open:
        with contextlib.suppress(pika.exceptions.ConnectionWrongStateError):
            connection.add_callback_threadsafe(noop)
