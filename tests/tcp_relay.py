"""A TCP relay between a client and a broker that a test can cut, like a failing network.

Fault tests put it in front of a broker they did not start (never stopping or reconfiguring
the broker itself) or of a throwaway one whose advertised address is the relay's port.

Three ways to fail the network:

- :meth:`TcpRelay.cut` resets every relayed connection (a blip; reconnecting works at once);
- while :attr:`TcpRelay.refusing` is set, new connections are accepted and dropped at once,
  as when the broker is unreachable, without giving the port up (a port given up can be taken
  by a client's own connection attempt from the same ephemeral range);
- :meth:`TcpRelay.outage` resets everything and closes the listening socket for a while, so
  attempts are refused outright (some clients keep the socket of an accepted-then-dropped
  attempt open, and its warning would surface in whichever test runs when it is collected).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


class TcpRelay:
    """Relays every connection made to ``127.0.0.1:<port>`` to ``upstream``."""

    def __init__(self, upstream: tuple[str, int], port: int = 0) -> None:
        self.upstream = upstream
        self.refusing = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._listener = self._listen(port)
        self.port: int = self._listener.getsockname()[1]

    def _listen(self, port: int) -> socket.socket:
        listener = socket.create_server(("127.0.0.1", port))
        threading.Thread(
            target=self._accept, args=(listener,), daemon=True, name="test-relay"
        ).start()
        return listener

    def _accept(self, listener: socket.socket) -> None:
        while not self._closed:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed
            if self._closed or listener.fileno() == -1:
                client.close()  # accepted as the listener closed: refused like the ones after
                return
            if self.refusing.is_set():
                client.close()
                continue
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

    def _stop_listening(self) -> None:
        """Close the listening socket. Closing alone would leave the accept blocked on it
        listening (the call holds the socket) until it accepted one more connection; shutting
        it down first ends that call at once, so new connections are refused from now on."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

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
        self._stop_listening()
        assert self.cut() >= 2, "no connection went through the relay"

        def restore() -> None:
            if not self._closed:
                self._listener = self._listen(self.port)

        timer = threading.Timer(seconds, restore)
        timer.start()
        return timer

    def close(self) -> None:
        """Refuse new connections and reset the relayed ones."""
        self._closed = True
        self._stop_listening()
        self.cut()
