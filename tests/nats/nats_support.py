"""Helpers of the NATS tests that are not fixtures (importable by name from the tests)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading

import nats


def delete_streams(url: str, prefix: str) -> list[str]:
    """Delete the streams whose names start with ``prefix_`` (a test's own); returns them."""

    async def run() -> list[str]:
        nc = await nats.connect(url)
        try:
            names: list[str] = []
            offset = 0
            while True:
                reply = await nc.request(
                    "$JS.API.STREAM.NAMES", json.dumps({"offset": offset}).encode(), timeout=5
                )
                answer = json.loads(reply.data)
                page = answer.get("streams") or []
                names += [n for n in page if n.startswith(f"{prefix}_")]
                offset += len(page)
                if not page or offset >= answer.get("total", 0):
                    break
            for name in names:
                await nc.request(f"$JS.API.STREAM.DELETE.{name}", b"", timeout=5)
            return names
        finally:
            await nc.close()

    return asyncio.run(run())


class TcpRelay:
    """A TCP relay to the NATS server that a test can take down, like a network outage.

    :meth:`outage` resets every relayed connection and closes the listening socket for a
    while, so that reconnection attempts are refused (unlike a relay that accepts and drops
    them: nats-py leaves the socket of such an attempt open, and its warning would surface
    in whichever test runs when it is collected).
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._listener = self._listen(0)
        self.port: int = self._listener.getsockname()[1]

    def _listen(self, port: int) -> socket.socket:
        listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return listener

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets.update((client, server))
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            with self._lock:
                self._sockets.difference_update((source, target))

    def cut(self) -> int:
        """Reset every relayed connection; returns how many sockets were cut."""
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()  # with linger 0: a reset, as a failing network gives
        return len(sockets)

    def outage(self, seconds: float) -> threading.Timer:
        """Cut every connection and refuse new ones for ``seconds``; returns the timer that
        ends the outage (join it to wait for the end)."""
        self._listener.close()
        assert self.cut() >= 2, "no connection went through the relay"

        def restore() -> None:
            if not self._closed:
                self._listener = self._listen(self.port)

        timer = threading.Timer(seconds, restore)
        timer.start()
        return timer

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut()
