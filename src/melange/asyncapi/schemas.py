"""The JSON Schema of a message type, as its typed serializer writes it.

A message class is described by the typed serializer it was given to among the service's
serializers, else by the typed serializer of its kind (dataclass, pydantic model, msgspec
Struct). Only in the first case does the description claim a serializer id and the
``melange_schema_version`` header: those are facts about the serializer in use.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from melange.exceptions import ConfigurationError
from melange.models import CAUSATION_ID, CORRELATION_ID, PUBLISHED_AT
from melange.serializers.dataclass import DataclassSerializer
from melange.serializers.evolution import SCHEMA_VERSION_HEADER
from melange.serializers.interfaces import Serializer
from melange.serializers.message_types import manifest_of, schema_version_of
from melange.serializers.typed import TypedSerializer


@dataclass(frozen=True)
class MessageSchema:
    """What the document says of one message type.

    Attributes:
        message_class: The class.
        manifest: The manifest it travels under.
        version: Its current schema version.
        serializer_id: The id of the service's serializer for it, if the service gave one.
        payload: The JSON Schema of its payload.
        definitions: Schemas the payload refers to, by name.
        headers: The JSON Schema of the headers it travels with.
    """

    message_class: type[Any]
    manifest: str
    version: int
    serializer_id: int | None
    payload: dict[str, Any]
    definitions: dict[str, dict[str, Any]]
    headers: dict[str, Any]

    @property
    def description(self) -> str:
        """The class's docstring, on one line ("" for a dataclass without one)."""
        doc = self.message_class.__doc__ or ""
        generated = f"{self.message_class.__name__}("
        if dataclasses.is_dataclass(self.message_class) and doc.startswith(generated):
            return ""
        return " ".join(doc.split())


def _by_kind(cls: type[Any]) -> TypedSerializer | None:
    if dataclasses.is_dataclass(cls):
        return DataclassSerializer()
    # Only when the class's library is loaded already: the class could not exist otherwise.
    if "pydantic" in sys.modules:
        from melange.serializers.pydantic import PydanticSerializer

        if PydanticSerializer.handles(cls):
            return PydanticSerializer()
    if "msgspec" in sys.modules:
        from melange.serializers.msgspec import MsgspecSerializer

        if MsgspecSerializer.handles(cls):
            return MsgspecSerializer()
    return None


def message_schema(
    cls: type[Any], serializers: Sequence[Serializer[Any]], ref_prefix: str
) -> MessageSchema:
    """Describe ``cls`` with the service's ``serializers`` (see the module docstring).

    Raises:
        ConfigurationError: ``cls`` is not a dataclass, a pydantic model or a msgspec Struct.
    """
    typed = [s for s in serializers if isinstance(s, TypedSerializer)]
    own = next((s for s in typed if cls in s.message_types), None) or next(
        (s for s in typed if s.handles(cls)), None
    )
    serializer = own or _by_kind(cls)
    if serializer is None:
        raise ConfigurationError(
            f"{cls.__qualname__} is not a dataclass, a pydantic model or a msgspec Struct: "
            "its payload has no JSON Schema to describe"
        )
    payload, definitions = serializer.json_schema(cls, ref_prefix)
    version = schema_version_of(cls)
    headers: dict[str, Any] = {
        CORRELATION_ID: {
            "type": "string",
            "description": "The id shared by every message of one conversation.",
        },
        CAUSATION_ID: {
            "type": "string",
            "description": "The id of the message whose handling published this one.",
        },
        PUBLISHED_AT: {
            "type": "string",
            "description": "When it was published: Unix time in seconds, as a decimal.",
        },
    }
    if own is not None:
        headers[SCHEMA_VERSION_HEADER] = {
            "type": "string",
            "const": str(version),
            "description": "The schema version of the payload; older ones are upcast.",
        }
    return MessageSchema(
        message_class=cls,
        manifest=manifest_of(cls),
        version=version,
        serializer_id=own.identifier() if own is not None else None,
        payload=payload,
        definitions=definitions,
        headers={"type": "object", "properties": headers},
    )


__all__ = ["MessageSchema", "message_schema"]
