"""Serializers: turn objects into strings with a manifest, and back.

The typed serializers for pydantic models and msgspec Structs live in
:mod:`melange.serializers.pydantic` and :mod:`melange.serializers.msgspec` (each behind its
extra), so that importing this package never imports either library.
"""

from melange.serializers.dataclass import DataclassSerializer
from melange.serializers.evolution import (
    SCHEMA_VERSION_HEADER,
    NewerSchemaVersionError,
    SchemaVersionError,
)
from melange.serializers.interfaces import MessageSerializer, Serializer
from melange.serializers.json import JSONSerializer, JsonSerializer
from melange.serializers.message_types import manifest_of, message_type, schema_version_of
from melange.serializers.pickle import PickleSerializer
from melange.serializers.registry import SerializerRegistry
from melange.serializers.typed import MessageValidationError, TypedSerializer

__all__ = [
    "SCHEMA_VERSION_HEADER",
    "DataclassSerializer",
    "JSONSerializer",
    "JsonSerializer",
    "MessageSerializer",
    "MessageValidationError",
    "NewerSchemaVersionError",
    "PickleSerializer",
    "SchemaVersionError",
    "Serializer",
    "SerializerRegistry",
    "TypedSerializer",
    "manifest_of",
    "message_type",
    "schema_version_of",
]
