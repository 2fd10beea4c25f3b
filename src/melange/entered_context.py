"""The entered context of one middleware, left with its failure logged: shared by the
dispatcher's and the publishers' middleware chains."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from types import TracebackType


class EnteredContext:
    """Leaves ``context`` (already entered) when left, logging a failure to leave it on
    ``logger`` with ``message % item`` instead of raising: the wrapped work's own exception
    always goes on, and instrumentation never fails it."""

    __slots__ = ("_context", "_item", "_logger", "_message")

    def __init__(
        self,
        item: object,
        context: AbstractContextManager[None],
        logger: logging.Logger,
        message: str,
    ) -> None:
        self._item = item
        self._context = context
        self._logger = logger
        self._message = message

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self._context.__exit__(exc_type, exc, traceback)
        except Exception:
            self._logger.exception(self._message, self._item)


__all__ = ["EnteredContext"]
