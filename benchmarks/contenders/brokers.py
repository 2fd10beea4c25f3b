"""Melange on a network broker whose benchmark resources are named by a prefix.

The NATS, Redis Streams and Kafka contenders differ only in the backend they build, how
they name what they create and how they delete it; the rest is here.
"""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import version
from typing import Any

from benchmarks.contenders.melange_common import MelangeContender


class MelangeBrokerContender(MelangeContender):
    """Melange on ``module.blocking_class`` (``module.native_class`` for asyncio), built with the
    contender's URL and :meth:`backend_options`.

    Subclasses set the class attributes, :meth:`naming` and :meth:`deleting` included.
    """

    label = "Melange"
    #: The backend package, and its blocking and asyncio-native backend classes.
    module = ""
    blocking_class = ""
    native_class = ""
    #: The broker's URL.
    url = ""
    #: Names this contender's resources when the parameters name no queue.
    default_prefix = "bench"
    #: Client libraries whose versions the report shows (the first: of the threaded row).
    clients: tuple[str, ...] = ()

    @staticmethod
    def naming(params: dict[str, Any], default: str) -> str:
        """The prefix of everything a contender creates, from its parameters."""
        return str(params.get("queue", default))

    @staticmethod
    def deleting(prefix: str) -> None:
        """Delete what a run of a contender with ``prefix`` created (an interrupted one's
        too)."""

    def backend_options(self) -> dict[str, Any]:
        """Keyword arguments of both backend classes."""
        return {"prefix": self.prefix}

    def make_backend(self) -> Any:
        backend = getattr(importlib.import_module(self.module), self.blocking_class)
        return backend(self.url, **self.backend_options())

    def make_async_backend(self) -> Any:
        backend = getattr(importlib.import_module(self.module), self.native_class)
        return backend(self.url, **self.backend_options())

    def setup(self) -> dict[str, str]:
        self.prefix = self.naming(self.params, self.default_prefix)
        self.deleting(self.prefix)
        self.params.setdefault("queue", "work")
        versions = super().setup()
        return {**versions, **{name: version(name) for name in self.clients}}

    def purge(self) -> None:
        purged = self.pub_backend.purge(self.queue_name)
        if inspect.isawaitable(purged):
            assert self.loop is not None
            self.loop.run_until_complete(purged)

    def teardown(self) -> None:
        super().teardown()
        self.deleting(self.prefix)
