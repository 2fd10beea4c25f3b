"""The message being processed, for code called by a consumer.

While a dispatcher runs a consumer, :func:`current_message` returns the envelope of the
message in hand (its id, headers, attempt). Publishers use it to stamp what they publish from
inside a consumer with the causation id (the message that caused it) and the correlation id
(the conversation it belongs to), so a chain of events can be traced end to end.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

from melange.models import Message

_current: ContextVar[Message | None] = ContextVar("melange_current_message", default=None)


def current_message() -> Message | None:
    """The envelope of the message being processed in this context, or ``None``."""
    return _current.get()


class processing:  # lower-case: used like a function, ``with processing(message):``
    """Make ``message`` the current message for the duration of the ``with`` block."""

    __slots__ = ("_message", "_token")
    _token: Token[Message | None]

    def __init__(self, message: Message) -> None:
        self._message = message

    def __enter__(self) -> None:
        self._token = _current.set(self._message)

    def __exit__(self, *exc_info: object) -> None:
        _current.reset(self._token)
