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


_PLAIN: dict[Any, tuple[type, ...]] = {
    str: (str,),
    int: (int,),
    float: (int, float),
    bool: (bool,),
}
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


class _Plan:
    """How to check one dataclass: its fields, their annotations, which are required."""

    __slots__ = ("cls", "fields", "required")

    def __init__(self, cls: type[Any]) -> None:
        hints = _hints(cls)
        self.cls = cls
        self.fields: list[tuple[str, Any]] = []
        self.required: set[str] = set()
        for item in dataclasses.fields(cls):
            if not item.init:
                continue
            self.fields.append((item.name, hints.get(item.name, Any)))
            no_default = item.default is dataclasses.MISSING
            if no_default and item.default_factory is dataclasses.MISSING:
                self.required.add(item.name)


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
            plan = self._plans[cls] = _Plan(cls)
        return plan

    # -- writing ---------------------------------------------------------------------------

    def encode(self, data: Any) -> str:
        return json.dumps(self._to_json(data), separators=(",", ":"), ensure_ascii=False)

    def _to_json(self, value: Any) -> Any:
        if value is None or isinstance(value, str | int | float | bool):
            return value.value if isinstance(value, enum.Enum) else value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            plan = self._plan(type(value))
            return {name: self._to_json(getattr(value, name)) for name, _ in plan.fields}
        if isinstance(value, enum.Enum):
            return self._to_json(value.value)
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
        return self.decode_payload(cls, self._parse_object(manifest_of(cls), text))

    def decode_payload(self, cls: type[Any], payload: dict[str, Any]) -> Any:
        try:
            return self._build(cls, payload, "")
        except _Invalid as exc:
            raise MessageValidationError(f"{manifest_of(cls)} failed validation: {exc}") from None

    def _build(self, cls: type[Any], value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise _Invalid(path, f"expected an object, got {_type_name(value)}")
        plan = self._plan(cls)
        missing = sorted(plan.required - value.keys())
        if missing:
            where = f"{path}." if path else ""
            raise _Invalid(path, f"missing field(s) {', '.join(where + m for m in missing)}")
        kwargs = {
            name: self._convert(value[name], hint, f"{path}.{name}" if path else name)
            for name, hint in plan.fields
            if name in value
        }
        try:
            return cls(**kwargs)
        except Exception as exc:  # __post_init__ checks of the class's own
            raise _Invalid(path, f"{cls.__qualname__} refused the values: {exc}") from exc

    def _convert(self, value: Any, hint: Any, path: str) -> Any:
        # The common fields first, by identity: JSON gives exactly these types back.
        kind = type(value)
        if hint is str or hint is int or hint is bool:
            if kind is hint:
                return value
            raise _Invalid(path, f"expected {hint.__name__}, got {_type_name(value)}")
        if hint is float and (kind is float or kind is int):
            return float(value)
        if hint is Any or hint is object:
            return value
        if hint is None or hint is type(None):
            if value is not None:
                raise _Invalid(path, f"expected null, got {_type_name(value)}")
            return None
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin is Union or origin is types.UnionType:
            for option in args:
                try:
                    return self._convert(value, option, path)
                except _Invalid:
                    continue
            raise _Invalid(path, f"{_type_name(value)} matches none of {hint}")
        if origin is Literal:
            if not any(value == a and type(value) is type(a) for a in args):
                raise _Invalid(path, f"expected one of {list(args)}, got {_shown(value)}")
            return value
        plain = _PLAIN.get(hint)
        if plain is not None:
            if not isinstance(value, plain) or (hint is not bool and isinstance(value, bool)):
                raise _Invalid(path, f"expected {hint.__name__}, got {_type_name(value)}")
            return float(typing.cast(float, value)) if hint is float else value
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            try:
                return hint(value)
            except ValueError:
                raise _Invalid(path, f"{_shown(value)} is not a {hint.__name__}") from None
        parse = _TEXT_TYPES.get(hint)
        if parse is not None:
            if not isinstance(value, str) and not (
                hint is decimal.Decimal and isinstance(value, int | float)
            ):
                raise _Invalid(path, f"expected {hint.__name__} text, got {_type_name(value)}")
            try:
                return parse(str(value))
            except (ValueError, decimal.InvalidOperation):
                raise _Invalid(path, f"{_shown(value)} is not a {hint.__name__}") from None
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            return self._build(hint, value, path)
        container = origin if origin is not None else hint
        if container in _MAPS:
            if not isinstance(value, dict):
                raise _Invalid(path, f"expected an object, got {_type_name(value)}")
            item = args[1] if len(args) == 2 else Any
            return {k: self._convert(v, item, f"{path}.{k}") for k, v in value.items()}
        if container is tuple:
            if not isinstance(value, list):
                raise _Invalid(path, f"expected an array, got {_type_name(value)}")
            if (len(args) == 2 and args[1] is Ellipsis) or not args:
                item = args[0] if args else Any
                return tuple(self._convert(v, item, f"{path}[{i}]") for i, v in enumerate(value))
            if len(value) != len(args):
                raise _Invalid(path, f"expected {len(args)} items, got {len(value)}")
            return tuple(
                self._convert(v, a, f"{path}[{i}]")
                for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        if container in _LISTS:
            if not isinstance(value, list):
                raise _Invalid(path, f"expected an array, got {_type_name(value)}")
            item = args[0] if args else Any
            items = [self._convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
            if container is frozenset:
                return frozenset(items)
            return set(items) if container in (set, typing.AbstractSet) else items
        if isinstance(hint, type):
            if not isinstance(value, hint):
                raise _Invalid(path, f"expected {hint.__name__}, got {_type_name(value)}")
            return value
        raise _Invalid(path, f"annotation {hint!r} is not supported")

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
                name: self._schema_of(hint, ref_prefix, defs) for name, hint in plan.fields
            },
            "required": [name for name, _ in plan.fields if name in plan.required],
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
