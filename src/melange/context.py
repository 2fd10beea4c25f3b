"""The message being processed, for code called by a consumer.

While a dispatcher runs a consumer, :func:`current_message` returns the envelope of the
message in hand (its id, headers, attempt). Publishers use it to stamp what they publish from
inside a consumer with the causation id (the message that caused it) and the correlation id
(the conversation it belongs to), so a chain of events can be traced end to end.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from melange.models import Message

_current: ContextVar[Message | None] = ContextVar("melange_current_message", default=None)


def current_message() -> Message | None:
    """The envelope of the message being processed in this context, or ``None``."""
    return _current.get()


@contextmanager
def processing(message: Message) -> Iterator[None]:
    """Make ``message`` the current message for the duration of the block."""
    token = _current.set(message)
    try:
        yield
    finally:
        _current.reset(token)
