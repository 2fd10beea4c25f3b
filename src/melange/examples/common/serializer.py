"""A JSON serializer for dataclass events: a small showcase of the serializer interface.

Each event is a dataclass whose fields are JSON values. The manifest is the class name, so a
consumer (or a subscription filter) knows what arrived without reading the body, and the body
is plain JSON that services written in any language can read::

    serializer = DataclassSerializer(OrderCreated, OrderResponse)
    text = serializer.serialize(OrderCreated(...))        # '{"id": "...", ...}'
    serializer.manifest(OrderCreated(...))                # 'OrderCreated'
    serializer.deserialize(text, "OrderCreated")          # OrderCreated(...)

Only the registered classes can be decoded: an unknown manifest is refused (and the
dispatcher dead-letters the message) rather than guessed, which is what makes this safe where
pickle is not.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from melange.exceptions import SerializationError
from melange.serializers.interfaces import Serializer

#: The identifier the examples' serializer travels with (ids 0-40 are reserved for Melange).
EXAMPLES_SERIALIZER_ID = 101


class DataclassSerializer(Serializer[Any]):
    """Serializes instances of registered dataclasses to JSON, with the class name as manifest.

    Args:
        *event_classes: The dataclasses this serializer may encode and decode. Their names
            must be unique, since the name is what travels.
        identifier: The serializer id written on every message.
    """

    def __init__(self, *event_classes: type[Any], identifier: int = EXAMPLES_SERIALIZER_ID) -> None:
        self._identifier = identifier
        self._classes: dict[str, type[Any]] = {}
        for cls in event_classes:
            self.register(cls)

    def register(self, cls: type[Any]) -> None:
        """Allow instances of ``cls`` (a dataclass) to be serialized and deserialized."""
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise TypeError(f"{cls!r} is not a dataclass; decorate it with @dataclass")
        existing = self._classes.get(cls.__name__)
        if existing is not None and existing is not cls:
            raise ValueError(
                f"two event classes are named {cls.__name__!r} ({existing.__module__} and "
                f"{cls.__module__}); the name is the manifest, so it must be unique"
            )
        self._classes[cls.__name__] = cls

    @property
    def event_classes(self) -> list[type[Any]]:
        """The registered classes."""
        return list(self._classes.values())

    def identifier(self) -> int:
        return self._identifier

    def manifest(self, data: Any) -> str:
        return type(data).__name__

    def serialize(self, data: Any) -> str:
        cls = type(data)
        if self._classes.get(cls.__name__) is not cls:
            raise SerializationError(
                f"{cls.__qualname__} is not registered with this DataclassSerializer "
                f"(registered: {sorted(self._classes)})"
            )
        return json.dumps(dataclasses.asdict(data), sort_keys=True)

    def deserialize(self, data: str, manifest: str | None = None) -> Any:
        cls = self._classes.get(manifest or "")
        if cls is None:
            raise SerializationError(
                f"no event class for manifest {manifest!r} (registered: {sorted(self._classes)})"
            )
        try:
            fields = json.loads(data)
            return cls(**fields)
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"body is not a valid {manifest}: {exc}") from exc
