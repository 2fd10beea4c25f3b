"""The shared part of the typed serializers: message classes in, validated objects out.

:class:`TypedSerializer` is the base of :class:`~melange.serializers.dataclass.DataclassSerializer`,
:class:`~melange.serializers.pydantic.PydanticSerializer` and
:class:`~melange.serializers.msgspec.MsgspecSerializer`. Each writes a message class's
instance as a JSON object, with the class's manifest (see
:mod:`melange.serializers.message_types`) and its schema version in the
``melange_schema_version`` header. On the consuming side it decodes only the classes it was
given, moves older versions forward with the registered upcasters (see
:mod:`melange.serializers.evolution`) and validates the payload against the class: a payload
that does not validate raises :class:`MessageValidationError`, a
:class:`~melange.exceptions.SerializationError`, so the dispatcher dead-letters the message
with the validation error and never hands it to a consumer.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from melange.exceptions import ConfigurationError, SerializationError
from melange.serializers.evolution import (
    SCHEMA_VERSION_HEADER,
    NewerSchemaVersionError,
    NewerVersions,
    Upcaster,
    Upcasters,
    read_version,
)
from melange.serializers.interfaces import Serializer
from melange.serializers.message_types import manifest_of, schema_version_of

U = TypeVar("U", bound=Upcaster)

#: Where the JSON Schema references of :meth:`TypedSerializer.json_schema` point by default.
DEFAULT_REF_PREFIX = "#/$defs/"


class MessageValidationError(SerializationError):
    """A received payload does not match its message class (the text says what differs)."""


class TypedSerializer(Serializer[Any]):
    """Base of the serializers of declared message classes (JSON objects on the wire).

    Args:
        *message_types: The classes this serializer decodes, and is chosen for in a list of
            serializers. Publishing needs no list (any instance of the kind this serializer
            handles is written); consuming decodes only the listed classes, by manifest.
        identifier: The serializer id written on every message (default: the class's own).
        newer_versions: What to do with a message newer than its class's version:
            ``"dead_letter"`` (the default) or ``"decode"`` as the current shape.

    Raises:
        ConfigurationError: Two classes share a manifest, or a class is not of the kind this
            serializer handles.
    """

    #: The serializer id of this kind, unless ``identifier=`` says otherwise.
    default_identifier: ClassVar[int]
    #: What the classes this serializer handles are called in errors ("a dataclass").
    kind: ClassVar[str]

    def __init__(
        self,
        *message_types: type[Any],
        identifier: int | None = None,
        newer_versions: NewerVersions = "dead_letter",
    ) -> None:
        if newer_versions not in ("dead_letter", "decode"):
            raise ConfigurationError(
                f"newer_versions must be 'dead_letter' or 'decode', not {newer_versions!r}"
            )
        self._identifier = identifier if identifier is not None else self.default_identifier
        self.newer_versions: NewerVersions = newer_versions
        self._types: dict[str, type[Any]] = {}
        self._versions: dict[str, int] = {}
        self._published: dict[type[Any], tuple[str, str]] = {}
        self.upcasters = Upcasters()
        for cls in message_types:
            self.register(cls)

    # -- configuration ---------------------------------------------------------------------

    def register(self, cls: type[Any]) -> None:
        """Decode messages of ``cls`` too (and choose this serializer for it in a list)."""
        if not (isinstance(cls, type) and self.handles(cls)):
            raise ConfigurationError(
                f"{cls!r} is not {self.kind}; {type(self).__name__} cannot use it"
            )
        name = manifest_of(cls)
        existing = self._types.get(name)
        if existing is not None and existing is not cls:
            raise ConfigurationError(
                f"{existing.__module__}.{existing.__qualname__} and "
                f"{cls.__module__}.{cls.__qualname__} both travel as {name!r}; declare distinct "
                "names with @message_type"
            )
        self._types[name] = cls
        self._versions[name] = schema_version_of(cls)

    def add_upcaster(self, cls: type[Any], from_version: int, upcaster: Upcaster) -> None:
        """Register ``upcaster`` to turn version ``from_version`` of ``cls``'s payload (a dict)
        into the shape of version ``from_version + 1``."""
        self.upcasters.add(manifest_of(cls), from_version, upcaster)

    def upcaster(self, cls: type[Any], from_version: int) -> Callable[[U], U]:
        """Decorator form of :meth:`add_upcaster`::

        @serializer.upcaster(OrderPlaced, from_version=1)
        def add_currency(payload: dict[str, Any]) -> dict[str, Any]:
            return {**payload, "currency": "EUR"}
        """

        def decorate(function: U) -> U:
            self.add_upcaster(cls, from_version, function)
            return function

        return decorate

    @property
    def message_types(self) -> list[type[Any]]:
        """The classes this serializer decodes."""
        return list(self._types.values())

    # -- the Serializer interface ----------------------------------------------------------

    def identifier(self) -> int:
        return self._identifier

    def bindings(self) -> tuple[type, ...]:
        return (*self._types.values(), *self.bound_types)

    def manifest(self, data: Any) -> str:
        return self._outgoing(type(data))[0]

    def message_headers(self, data: Any) -> dict[str, str]:
        return {SCHEMA_VERSION_HEADER: self._outgoing(type(data))[1]}

    def serialize(self, data: Any) -> str:
        cls = type(data)
        self._outgoing(cls)
        try:
            return self.encode(data)
        except SerializationError:
            raise
        except Exception as exc:
            raise SerializationError(
                f"{type(self).__name__} cannot serialize {cls.__qualname__}: {exc}"
            ) from exc

    def deserialize(self, data: str, manifest: str | None = None) -> Any:
        """Decode ``data`` as the current version of the class ``manifest`` names (with no
        headers, the version is taken to be the current one)."""
        cls = self._class_for(manifest)
        return self.decode_text(cls, data)

    def deserialize_message(
        self, data: str, manifest: str | None, headers: Mapping[str, str]
    ) -> Any:
        cls = self._class_for(manifest)
        name = manifest or ""
        current = self._versions[name]
        version = read_version(headers)
        if version == current:
            return self.decode_text(cls, data)
        payload = self._parse_object(name, data)
        if version > current:
            if self.newer_versions == "dead_letter":
                raise NewerSchemaVersionError(name, version, current)
        else:
            payload = self.upcasters.upcast(name, payload, version, current)
        return self.decode_payload(cls, payload)

    # -- what each kind provides -----------------------------------------------------------

    @classmethod
    @abstractmethod
    def handles(cls, message_type: type[Any]) -> bool:
        """Whether ``message_type`` is of the kind this serializer writes."""

    @abstractmethod
    def encode(self, data: Any) -> str:
        """``data`` as JSON text."""

    @abstractmethod
    def decode_text(self, cls: type[Any], text: str) -> Any:
        """Parse and validate ``text`` as an instance of ``cls``; raise
        :class:`MessageValidationError` when it is not one."""

    @abstractmethod
    def decode_payload(self, cls: type[Any], payload: dict[str, Any]) -> Any:
        """Validate ``payload`` (a decoded JSON object) as an instance of ``cls``; raise
        :class:`MessageValidationError` when it is not one. Fields ``cls`` does not have are
        ignored."""

    @abstractmethod
    def json_schema(
        self, cls: type[Any], ref_prefix: str = DEFAULT_REF_PREFIX
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """The JSON Schema of ``cls``'s payload, and the schemas it refers to by name.

        References take the form ``ref_prefix + name`` (e.g. ``"#/components/schemas/"``
        in an AsyncAPI document), and the second value maps each such name to its schema.
        """

    # -- helpers ---------------------------------------------------------------------------

    def _outgoing(self, cls: type[Any]) -> tuple[str, str]:
        # The manifest and version text of a class, read (and checked) once: publishing
        # asks for them on every message.
        facts = self._published.get(cls)
        if facts is None:
            if not self.handles(cls):
                raise SerializationError(
                    f"{type(self).__name__} cannot serialize {cls.__qualname__}: "
                    f"it is not {self.kind}"
                )
            facts = self._published[cls] = (manifest_of(cls), str(schema_version_of(cls)))
        return facts

    def _class_for(self, manifest: str | None) -> type[Any]:
        cls = self._types.get(manifest or "")
        if cls is None:
            raise SerializationError(
                f"no message type {manifest!r} is registered with this {type(self).__name__} "
                f"(registered: {sorted(self._types)})"
            )
        return cls

    @staticmethod
    def _parse_object(label: str | type[Any], text: str) -> dict[str, Any]:
        # ``label`` is the manifest, or the class (named only if the body is refused).
        try:
            payload = json.loads(text)
        except ValueError as exc:
            name = label if isinstance(label, str) else manifest_of(label)
            raise MessageValidationError(f"{name}: body is not valid JSON: {exc}") from exc
        if not isinstance(payload, dict):
            name = label if isinstance(label, str) else manifest_of(label)
            raise MessageValidationError(
                f"{name}: body is a JSON {type(payload).__name__}, not an object"
            )
        return payload

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self._identifier}, types={sorted(self._types)})"


__all__ = ["DEFAULT_REF_PREFIX", "MessageValidationError", "TypedSerializer"]
