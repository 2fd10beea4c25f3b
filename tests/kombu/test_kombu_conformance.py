"""The kombu backend passes the shared conformance suite on kombu's Redis and AMQP
transports: blocking, and asyncio (``AsyncKombuBackend`` driven from a loop thread by
``BlockingAsyncBackend``: ``as_blocking`` would unwrap it into its ``KombuBackend``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from melange.backends.interfaces import MessagingBackend
from melange.backends.kombu import AsyncKombuBackend, KombuBackend
from melange.testing.blocking import BlockingAsyncBackend
from melange.testing.conformance import BackendConformance


class TestKombuConformance(BackendConformance):
    @pytest.fixture
    def backend(self, make_kombu: Callable[..., KombuBackend]) -> KombuBackend:
        return make_kombu()

    @pytest.fixture
    def make_backend(
        self, make_kombu: Callable[..., KombuBackend]
    ) -> Callable[[], MessagingBackend]:
        # Each concurrent consumer receives on a connection of its own.
        return make_kombu


class TestAsyncKombuConformance(BackendConformance):
    @pytest.fixture
    def make_backend(
        self, make_kombu: Callable[..., KombuBackend]
    ) -> Iterator[Callable[[], MessagingBackend]]:
        opened: list[MessagingBackend] = []

        def make() -> MessagingBackend:
            made = BlockingAsyncBackend(AsyncKombuBackend(backend=make_kombu()))
            opened.append(made)
            return made

        yield make
        for made in opened:
            made.close_connection()

    @pytest.fixture
    def backend(self, make_backend: Callable[[], MessagingBackend]) -> MessagingBackend:
        return make_backend()
