"""Serializers: turn objects into strings with a manifest, and back."""

from melange.serializers.interfaces import MessageSerializer, Serializer
from melange.serializers.json import JSONSerializer, JsonSerializer
from melange.serializers.pickle import PickleSerializer
from melange.serializers.registry import SerializerRegistry

__all__ = [
    "JSONSerializer",
    "JsonSerializer",
    "MessageSerializer",
    "PickleSerializer",
    "Serializer",
    "SerializerRegistry",
]
