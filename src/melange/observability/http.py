"""A small HTTP server, on a daemon thread, for probes and metrics scrapes.

Standard library only. Each path is served by a function returning the status, the content
type and the body; anything else is a 404. Health probes and the Prometheus endpoint share
one server when they are given the same port.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger("melange.observability")

#: What a route returns: HTTP status, content type, body.
Response = tuple[int, str, bytes]
Route = Callable[[], Response]


class ProbeServer:
    """Serves ``GET`` on a few paths from a daemon thread.

    Args:
        port: The port (0: any free one, see :attr:`port`).
        host: The address to listen on; all interfaces by default, as a probe from the
            orchestrator comes from outside the container.
    """

    def __init__(self, port: int, host: str = "0.0.0.0") -> None:
        self._routes: dict[str, Route] = {}
        routes = self._routes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = routes.get(self.path.split("?", 1)[0])
                if route is None:
                    status, kind, body = 404, "text/plain; charset=utf-8", b"not found\n"
                else:
                    try:
                        status, kind, body = route()
                    except Exception:
                        logger.exception("serving %s failed", self.path)
                        status, kind, body = 500, "text/plain; charset=utf-8", b"error\n"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a probe every few seconds is not worth a log line

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self._server.server_address[1])

    def add(self, path: str, route: Route) -> None:
        """Serve ``path`` with ``route``."""
        self._routes[path] = route

    def start(self) -> ProbeServer:
        """Start serving (once); returns the server."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="melange-probes", daemon=True
            )
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> ProbeServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


__all__ = ["ProbeServer", "Response", "Route"]
