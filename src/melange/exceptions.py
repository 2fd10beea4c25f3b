"""Every error Melange raises, in one tree.

```
MelangeError
├── ConfigurationError          the library was set up wrongly (no default backend, bad URL, ...)
├── SerializationError          a message could not be serialized or deserialized
│   ├── UnknownSerializerError  a message names a serializer the dispatcher was not given
│   └── NoSerializerFoundError  no serializer is bound to the type being published
├── DestinationNotFoundError    a queue or topic does not exist
│   ├── QueueNotFoundError
│   └── TopicNotFoundError
├── PublishError                the broker did not take a message
│   ├── MessageTooLargeError    the body exceeds the backend's size limit
│   └── BatchPublishError       some messages of a batch were refused (see ``failures``)
├── BackendError                the broker failed or could not be reached
│   ├── BackendConnectionError
│   └── WouldBlock              a call tried inline would have waited (nothing was done)
├── DeduplicationCacheError     the deduplication store could not be reached
└── InvalidDeduplicationKeyError  the store refuses a message's key (poison, not an outage)
```

Catch ``MelangeError`` to handle every failure the library itself reports.
"""

from __future__ import annotations

from collections.abc import Mapping


class MelangeError(Exception):
    """Base class of every error raised by Melange."""


class ConfigurationError(MelangeError):
    """Melange was configured in a way that cannot work; the message says how to fix it."""


class SerializationError(MelangeError):
    """A message could not be serialized or deserialized."""


class UnknownSerializerError(SerializationError):
    """A received message names a serializer id that this dispatcher was not given.

    Such a message is never decoded by guesswork: it is dead-lettered.
    """

    def __init__(self, serializer_id: int | None, known: list[int]) -> None:
        self.serializer_id = serializer_id
        self.known = known
        if serializer_id is None:
            text = "the message carries no serializer id"
        else:
            text = f"serializer id {serializer_id} is not one this dispatcher was given"
        super().__init__(
            f"{text} (known ids: {known}); pass the matching serializer to the dispatcher"
        )


class NoSerializerFoundError(SerializationError):
    """No serializer is bound to the type of the object being published."""


class DestinationNotFoundError(MelangeError):
    """A queue or topic does not exist on the backend."""

    kind = "destination"

    def __init__(self, name: str, hint: str | None = None) -> None:
        self.name = name
        create = hint or f"MessagingBackendFactory(backend).init_{self.kind}({name!r})"
        super().__init__(f"{self.kind} {name!r} does not exist; create it with {create}")


class QueueNotFoundError(DestinationNotFoundError):
    """The named queue does not exist."""

    kind = "queue"


class TopicNotFoundError(DestinationNotFoundError):
    """The named topic does not exist."""

    kind = "topic"


class PublishError(MelangeError):
    """The broker did not accept a message."""


class MessageTooLargeError(PublishError):
    """The serialized message exceeds the backend's maximum message size."""

    def __init__(self, size: int, limit: int, backend: str) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"message of {size} bytes exceeds the {limit}-byte limit of the {backend} backend"
        )


class BatchPublishError(PublishError):
    """Some messages of a batch were refused.

    ``failures`` maps the index of each refused message in the batch to the broker's reason;
    every message not listed was published.
    """

    def __init__(self, failures: Mapping[int, str]) -> None:
        self.failures = dict(failures)
        summary = "; ".join(f"#{i}: {reason}" for i, reason in sorted(self.failures.items()))
        super().__init__(f"{len(self.failures)} message(s) of the batch were refused: {summary}")


class BackendError(MelangeError):
    """The messaging backend failed."""


class BackendConnectionError(BackendError):
    """The broker could not be reached or refused the connection."""


class WouldBlock(BackendError):
    """A call tried with :meth:`~melange.backends.interfaces.MessagingBackend.run_inline`
    would have had to wait (for a lock, a connection or the network); nothing was done, and
    the caller makes the call again where waiting is allowed."""


class DeduplicationCacheError(MelangeError):
    """The deduplication cache could not be reached or answered wrongly."""


class InvalidDeduplicationKeyError(MelangeError, ValueError):
    """The deduplication cache cannot store this key (e.g. a NUL character on PostgreSQL).

    It says nothing about the cache's health: the message whose id made the key is poison,
    dead-lettered with this error as the reason, while the other messages go on.
    """
