"""Dataclass serializer (id 3): standard-library dataclasses as JSON objects, validated.

Fields may be annotated with ``str``, ``int``, ``float``, ``bool``, ``None``, ``Any``,
``Optional``/unions, ``Literal``, enums, ``datetime``/``date``/``time`` (ISO 8601 text),
``UUID`` and ``Decimal`` (text), nested dataclasses, and ``list``/``tuple``/``set``/
``frozenset``/``dict`` of those (``dict`` keys are strings). On consume the JSON object is
checked against the annotations: a missing field, a value of the wrong type or a value an enum
does not have is a :class:`~melange.serializers.typed.MessageValidationError`, and the message
is dead-lettered with it. Fields the class does not have are ignored.

The JSON Schema of a dataclass (for the AsyncAPI document) is derived from the same
annotations: a field with a default is optional, the others are required.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import types
import typing
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, Union

from melange.exceptions import ConfigurationError
from melange.serializers.evolution import NewerVersions
from melange.serializers.message_types import manifest_of
from melange.serializers.typed import DEFAULT_REF_PREFIX, MessageValidationError, TypedSerializer


class _Invalid(Exception):
    """A value does not match its annotation; ``path`` says where (``items[2].sku``)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path or 'payload'}: {problem}")


_TEXT_TYPES: dict[Any, Callable[[str], Any]] = {
    datetime.datetime: datetime.datetime.fromisoformat,
    datetime.date: datetime.date.fromisoformat,
    datetime.time: datetime.time.fromisoformat,
    uuid.UUID: uuid.UUID,
    decimal.Decimal: decimal.Decimal,
}
_FORMATS = {
    datetime.datetime: "date-time",
    datetime.date: "date",
    datetime.time: "time",
    uuid.UUID: "uuid",
}
_JSON_NATIVE = frozenset({str, int, float, bool, type(None)})
_LISTS = (list, Sequence, typing.Sequence, set, frozenset, typing.AbstractSet)
_MAPS = (dict, Mapping, typing.Mapping)


def _shown(value: Any) -> str:
    # A payload value quoted in a reason (which lands in logs and dead-letter headers): short.
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _hints(cls: type[Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception as exc:
        raise ConfigurationError(
            f"the annotations of {cls.__qualname__} cannot be resolved: {exc!r}"
        ) from exc


#: Checks and converts one JSON value for an annotation; the second argument is the value's
#: path, for the error.
Converter = Callable[[Any, str], Any]


class _Plan:
    """How to check one dataclass: its fields, their converters, which are required."""

    __slots__ = ("cls", "fields", "required")

    def __init__(self, cls: type[Any], compile_hint: Callable[[Any], Converter]) -> None:
        hints = _hints(cls)
        self.cls = cls
        self.fields: list[tuple[str, Any, Converter]] = []
        self.required: set[str] = set()
        for item in dataclasses.fields(cls):
            if not item.init:
                continue
            hint = hints.get(item.name, Any)
            self.fields.append((item.name, hint, compile_hint(hint)))
            no_default = item.default is dataclasses.MISSING
            if no_default and item.default_factory is dataclasses.MISSING:
                self.required.add(item.name)


def _keep(value: Any, path: str) -> Any:
    return value


def _null(value: Any, path: str) -> Any:
    if value is not None:
        raise _Invalid(path, f"expected null, got {_type_name(value)}")
    return None


def _exactly(kind: type) -> Converter:
    # JSON gives exactly these types back (bool is not accepted as an int).
    def convert(value: Any, path: str) -> Any:
        if type(value) is kind:
            return value
        raise _Invalid(path, f"expected {kind.__name__}, got {_type_name(value)}")

    return convert


def _number(value: Any, path: str) -> Any:
    kind = type(value)
    if kind is float or kind is int:
        return float(value)
    raise _Invalid(path, f"expected float, got {_type_name(value)}")


def _any_of(hint: Any, options: list[Converter]) -> Converter:
    def convert(value: Any, path: str) -> Any:
        for option in options:
            try:
                return option(value, path)
            except _Invalid:
                continue
        raise _Invalid(path, f"{_type_name(value)} matches none of {hint}")

    return convert


def _one_of(allowed: tuple[Any, ...]) -> Converter:
    def convert(value: Any, path: str) -> Any:
        if not any(value == a and type(value) is type(a) for a in allowed):
            raise _Invalid(path, f"expected one of {list(allowed)}, got {_shown(value)}")
        return value

    return convert


def _member_of(enumeration: type[enum.Enum]) -> Converter:
    def convert(value: Any, path: str) -> Any:
        try:
            return enumeration(value)
        except ValueError:
            raise _Invalid(path, f"{_shown(value)} is not a {enumeration.__name__}") from None

    return convert


def _parsed(kind: type, parse: Callable[[str], Any]) -> Converter:
    numbers_too = kind is decimal.Decimal

    def convert(value: Any, path: str) -> Any:
        if not isinstance(value, str) and not (numbers_too and isinstance(value, int | float)):
            raise _Invalid(path, f"expected {kind.__name__} text, got {_type_name(value)}")
        try:
            return parse(str(value))
        except (ValueError, decimal.InvalidOperation):
            raise _Invalid(path, f"{_shown(value)} is not a {kind.__name__}") from None

    return convert


def _mapping(item: Converter) -> Converter:
    def convert(value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise _Invalid(path, f"expected an object, got {_type_name(value)}")
        return {k: item(v, f"{path}.{k}") for k, v in value.items()}

    return convert


def _fixed_tuple(items: list[Converter]) -> Converter:
    def convert(value: Any, path: str) -> Any:
        if not isinstance(value, list):
            raise _Invalid(path, f"expected an array, got {_type_name(value)}")
        if len(value) != len(items):
            raise _Invalid(path, f"expected {len(items)} items, got {len(value)}")
        return tuple(
            check(v, f"{path}[{i}]") for i, (v, check) in enumerate(zip(value, items, strict=True))
        )

    return convert


def _sequence(item: Converter, build: Callable[[list[Any]], Any]) -> Converter:
    def convert(value: Any, path: str) -> Any:
        if not isinstance(value, list):
            raise _Invalid(path, f"expected an array, got {_type_name(value)}")
        return build([item(v, f"{path}[{i}]") for i, v in enumerate(value)])

    return convert


def _instance_of(kind: type) -> Converter:
    def convert(value: Any, path: str) -> Any:
        if not isinstance(value, kind):
            raise _Invalid(path, f"expected {kind.__name__}, got {_type_name(value)}")
        return value

    return convert


class DataclassSerializer(TypedSerializer):
    """Serializes dataclass instances as JSON objects and validates them on the way back.

    See :class:`~melange.serializers.typed.TypedSerializer` for the arguments; messages
    travel with serializer id 3 unless ``identifier=`` says otherwise.
    """

    default_identifier: ClassVar[int] = 3
    kind: ClassVar[str] = "a dataclass"

    def __init__(
        self,
        *message_types: type[Any],
        identifier: int | None = None,
        newer_versions: NewerVersions = "dead_letter",
    ) -> None:
        self._plans: dict[type[Any], _Plan] = {}
        super().__init__(*message_types, identifier=identifier, newer_versions=newer_versions)

    def register(self, cls: type[Any]) -> None:
        super().register(cls)
        self._plan(cls)  # resolve the annotations now: a mistake shows at start-up

    @classmethod
    def handles(cls, message_type: type[Any]) -> bool:
        return dataclasses.is_dataclass(message_type)

    def _plan(self, cls: type[Any]) -> _Plan:
        plan = self._plans.get(cls)
        if plan is None:
            plan = self._plans[cls] = _Plan(cls, self._compile)
        return plan

    # -- writing ---------------------------------------------------------------------------

    def encode(self, data: Any) -> str:
        return json.dumps(self._to_json(data), separators=(",", ":"), ensure_ascii=False)

    def _to_json(self, value: Any) -> Any:
        # Exact types first, by one set lookup: they are nearly every value of a message.
        kind = type(value)
        if kind in _JSON_NATIVE:
            return value
        if kind is list or kind is tuple:
            return [self._to_json(item) for item in value]
        if kind is dict:
            return {str(k): self._to_json(v) for k, v in value.items()}
        plan = self._plans.get(kind)
        if plan is not None or dataclasses.is_dataclass(kind):
            plan = plan or self._plan(kind)
            return {name: self._to_json(getattr(value, name)) for name, _, _ in plan.fields}
        if isinstance(value, enum.Enum):
            return self._to_json(value.value)
        if isinstance(value, str | int | float):  # subclasses of the JSON types
            return value
        if isinstance(value, Mapping):
            return {str(k): self._to_json(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._to_json(item) for item in value]
        if isinstance(value, datetime.date | datetime.time):
            return value.isoformat()
        if isinstance(value, uuid.UUID | decimal.Decimal):
            return str(value)
        raise TypeError(f"{type(value).__qualname__} has no JSON form")

    # -- reading ---------------------------------------------------------------------------

    def decode_text(self, cls: type[Any], text: str) -> Any:
        return self.decode_payload(cls, self._parse_object(cls, text))

    def decode_payload(self, cls: type[Any], payload: dict[str, Any]) -> Any:
        try:
            return self._build(cls, payload, "")
        except _Invalid as exc:
            raise MessageValidationError(f"{manifest_of(cls)} failed validation: {exc}") from None

    def _build(self, cls: type[Any], value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise _Invalid(path, f"expected an object, got {_type_name(value)}")
        plan = self._plan(cls)
        missing = plan.required.difference(value)
        if missing:
            where = f"{path}." if path else ""
            raise _Invalid(
                path, f"missing field(s) {', '.join(where + m for m in sorted(missing))}"
            )
        kwargs = {
            name: convert(value[name], f"{path}.{name}" if path else name)
            for name, _, convert in plan.fields
            if name in value
        }
        try:
            return cls(**kwargs)
        except Exception as exc:  # __post_init__ checks of the class's own
            raise _Invalid(path, f"{cls.__qualname__} refused the values: {exc}") from exc

    def _compile(self, hint: Any) -> Converter:
        """The converter of ``hint``, built once per annotation (a message is checked by
        calling one closure per field rather than by inspecting the annotation again)."""
        if hint is Any or hint is object:
            return _keep
        if hint is None or hint is type(None):
            return _null
        if hint is str or hint is int or hint is bool:
            return _exactly(hint)
        if hint is float:
            return _number
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin is Union or origin is types.UnionType:
            return _any_of(hint, [self._compile(option) for option in args])
        if origin is Literal:
            return _one_of(args)
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return _member_of(hint)
        parse = _TEXT_TYPES.get(hint)
        if parse is not None:
            return _parsed(hint, parse)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            nested = hint  # its plan is made on first use, so a class may refer to itself

            def build(value: Any, path: str) -> Any:
                return self._build(nested, value, path)

            return build
        container = origin if origin is not None else hint
        if container in _MAPS:
            return _mapping(self._compile(args[1] if len(args) == 2 else Any))
        if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return _fixed_tuple([self._compile(a) for a in args])
        if container is tuple or container in _LISTS:
            item = self._compile(args[0] if args else Any)
            if container is tuple:
                return _sequence(item, tuple)
            if container is frozenset:
                return _sequence(item, frozenset)
            if container in (set, typing.AbstractSet):
                return _sequence(item, set)
            return _sequence(item, list)
        if isinstance(hint, type):
            return _instance_of(hint)
        raise ConfigurationError(f"DataclassSerializer does not support the annotation {hint!r}")

    # -- JSON Schema -----------------------------------------------------------------------

    def json_schema(
        self, cls: type[Any], ref_prefix: str = DEFAULT_REF_PREFIX
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        defs: dict[str, dict[str, Any]] = {}
        return self._object_schema(cls, ref_prefix, defs), defs

    def _object_schema(
        self, cls: type[Any], ref_prefix: str, defs: dict[str, dict[str, Any]]
    ) -> dict[str, Any]:
        plan = self._plan(cls)
        schema: dict[str, Any] = {
            "title": cls.__name__,
            "type": "object",
            "properties": {
                name: self._schema_of(hint, ref_prefix, defs) for name, hint, _ in plan.fields
            },
            "required": [name for name, _, _ in plan.fields if name in plan.required],
        }
        doc = cls.__doc__ or ""
        # The dataclass decorator writes the signature as the docstring of a class without one.
        if doc and not doc.startswith(f"{cls.__name__}("):
            schema["description"] = " ".join(doc.split())
        return schema

    def _schema_of(
        self, hint: Any, ref_prefix: str, defs: dict[str, dict[str, Any]]
    ) -> dict[str, Any]:
        if hint is Any or hint is object:
            return {}
        if hint is None or hint is type(None):
            return {"type": "null"}
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin is Union or origin is types.UnionType:
            return {"anyOf": [self._schema_of(a, ref_prefix, defs) for a in args]}
        if origin is Literal:
            return {"enum": list(args)}
        simple = {str: "string", int: "integer", float: "number", bool: "boolean"}.get(hint)
        if simple is not None:
            return {"type": simple}
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return {"title": hint.__name__, "enum": [member.value for member in hint]}
        if hint in _FORMATS:
            return {"type": "string", "format": _FORMATS[hint]}
        if hint is decimal.Decimal:
            return {"type": "string"}
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            name = hint.__name__
            if name not in defs:
                defs[name] = {}  # placed first, so that a recursive reference ends
                defs[name] = self._object_schema(hint, ref_prefix, defs)
            return {"$ref": f"{ref_prefix}{name}"}
        container = origin if origin is not None else hint
        if container in _MAPS:
            item = args[1] if len(args) == 2 else Any
            return {
                "type": "object",
                "additionalProperties": self._schema_of(item, ref_prefix, defs),
            }
        if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return {
                "type": "array",
                # The draft-07 form, which AsyncAPI's schema format extends.
                "items": [self._schema_of(a, ref_prefix, defs) for a in args],
                "minItems": len(args),
                "maxItems": len(args),
            }
        if container is tuple or container in _LISTS:
            item = args[0] if args else Any
            schema: dict[str, Any] = {
                "type": "array",
                "items": self._schema_of(item, ref_prefix, defs),
            }
            if container in (set, frozenset, typing.AbstractSet):
                schema["uniqueItems"] = True
            return schema
        return {}


__all__ = ["DataclassSerializer"]
