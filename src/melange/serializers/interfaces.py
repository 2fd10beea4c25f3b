"""The serializer interface: turn objects into strings and back, with a manifest."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar, Generic, TypeVar

T = TypeVar("T")


class Serializer(ABC, Generic[T]):
    """Turns objects of some types into strings that travel on a queue, and back.

    Subclass it and implement :meth:`identifier`, :meth:`manifest`, :meth:`serialize` and
    :meth:`deserialize`. The identifier travels with every message so the consumer picks the
    same serializer; ids 0-40 are reserved for Melange (1 is JSON, 2 is pickle).

    ``bound_types`` lists the types this serializer is chosen for when it is one of several
    given to a publisher as a list (the most specific bound type of the published object
    wins). A :class:`~melange.serializers.registry.SerializerRegistry` configured with
    explicit bindings ignores it; a serializer whose bindings depend on how it was built
    (the typed serializers bind the message classes they were given) overrides
    :meth:`bindings` instead.

    Two optional hooks carry facts beside the body: :meth:`message_headers` adds headers to
    each published message (the typed serializers write the schema version there), and
    :meth:`deserialize_message` receives the headers of a received message; by default it
    calls :meth:`deserialize`, so a serializer written for 7.2.0 keeps working unchanged.
    """

    bound_types: ClassVar[tuple[type, ...]] = ()

    @abstractmethod
    def identifier(self) -> int:
        """A number unique among the serializers in use; travels as ``serializer_id``."""

    def bindings(self) -> tuple[type, ...]:
        """The types this serializer is chosen for in a list (default: ``bound_types``)."""
        return self.bound_types

    def manifest(self, data: T) -> str | None:
        """A short string telling the consumer the shape of the serialized data.

        It travels with the message (e.g. ``"json"``, or the class name of the object) and is
        handed back to :meth:`deserialize`; consumers and subscription filters may look at it.
        """
        return None

    @abstractmethod
    def deserialize(self, data: str, manifest: str | None = None) -> T:
        """Turn ``data`` (as produced by :meth:`serialize`) back into an object.

        Raise :class:`~melange.exceptions.SerializationError` (or any exception) when the data
        cannot be decoded: the dispatcher dead-letters such a message with the reason.
        """

    def deserialize_message(self, data: str, manifest: str | None, headers: Mapping[str, str]) -> T:
        """Decode a received message, knowing its headers (default: :meth:`deserialize`).

        The dispatcher calls this one; override it to read facts the publisher put in the
        headers through :meth:`message_headers`.
        """
        return self.deserialize(data, manifest)

    @abstractmethod
    def serialize(self, data: T) -> str:
        """Turn ``data`` into a string to publish."""

    def message_headers(self, data: T) -> dict[str, str]:
        """Headers to send with the message that carries ``data`` (default: none).

        The publisher adds them before its own and the caller's, which win on a clash.
        """
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.identifier()})"


#: The name the original documentation uses for the interface.
MessageSerializer = Serializer

__all__ = ["MessageSerializer", "Serializer"]
