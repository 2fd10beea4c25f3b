"""Which earlier message each message of a FIFO group waits for, when messages run at once.

The drivers that run several messages at once (worker threads, asyncio tasks, the
simulation's workers) start each message as soon as a worker is free; a message of a FIFO
group first waits for the previous message of its group, and then
:meth:`~melange.dispatch.engine.Engine.may_go_ahead` decides whether it runs. This module
keeps, for each driver alike, what that previous message is: the one started before it in
the same batch, else the group's last one still running from an earlier batch. ``H`` is
whatever handle the driver waits on (a future, a task).
"""

from __future__ import annotations

from typing import Generic, TypeVar

H = TypeVar("H")


class GroupOrder(Generic[H]):
    """The handles of the messages each FIFO group's next message waits for."""

    __slots__ = ("_in_batch", "_tails")

    def __init__(self) -> None:
        self._tails: dict[str, H] = {}
        self._in_batch: dict[str, H] = {}

    def new_batch(self) -> None:
        """The messages that follow came in a new receive."""
        self._in_batch = {}

    def before(self, group: str | None) -> tuple[H | None, bool]:
        """The handle a message of ``group`` waits for (``None``: none), and whether it was
        started from the same batch."""
        if group is None:
            return None, False
        earlier = self._in_batch.get(group)
        if earlier is not None:
            return earlier, True
        return self._tails.get(group), False

    def started(self, group: str | None, handle: H) -> None:
        """A message of ``group`` was started as ``handle``."""
        if group is not None:
            self._in_batch[group] = self._tails[group] = handle

    def finished(self, group: str, handle: H) -> None:
        """``handle`` ended: unless a later message of its group took its place, the group's
        next message waits for nothing."""
        if self._tails.get(group) is handle:
            del self._tails[group]


__all__ = ["GroupOrder"]
