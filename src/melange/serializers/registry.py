"""Choosing a serializer: by type when publishing, by serializer id when consuming.

A :class:`SerializerRegistry` is built from whatever a publisher or dispatcher was given: one
serializer, a list of serializers, or a configuration dict in the 7.2.0 form::

    SerializerRegistry({
        "serializers": {"json": JsonSerializer, "pickle": PickleSerializer},
        "serializer_bindings": {dict: "json", MyEvent: "pickle"},
        "default": "json",
    })
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar, Union

from melange.exceptions import (
    ConfigurationError,
    NoSerializerFoundError,
    SerializationError,
    UnknownSerializerError,
)
from melange.serializers.interfaces import Serializer
from melange.serializers.typed import TypedSerializer

#: The default ``deserialize_message``, which only calls ``deserialize``.
_DEFAULT_WITH_HEADERS = Serializer.deserialize_message

#: What publishers and dispatchers accept where they need serializers.
SerializerSource = Union[
    Serializer[Any], Sequence[Serializer[Any]], "SerializerRegistry", Mapping[str, Any]
]


SortItem = TypeVar("SortItem")


def _type_of(item: object) -> type:
    # A bare class, or a pair whose first element is the class (7.2.0 sorted
    # ``(type, serializer)`` pairs).
    if isinstance(item, type):
        return item
    if isinstance(item, tuple) and item and isinstance(item[0], type):
        return item[0]
    raise TypeError(
        f"sort() takes classes or (class, serializer) pairs, got {type(item).__name__}: {item!r}"
    )


def sort(items: Iterable[SortItem]) -> list[SortItem]:
    """Order ``items`` so that every class comes before its base classes (most specific
    first).

    ``items`` are classes, or pairs whose first element is a class, such as the
    ``(type, serializer)`` bindings 7.2.0 sorted; each item comes back as it was given.
    Items of unrelated classes keep their order.
    """
    remaining = list(dict.fromkeys(items))
    types = {id(item): _type_of(item) for item in remaining}
    ordered: list[SortItem] = []
    while remaining:
        for candidate in remaining:
            own = types[id(candidate)]
            if not any(
                other is not candidate
                and types[id(other)] is not own
                and issubclass(types[id(other)], own)
                for other in remaining
            ):
                ordered.append(candidate)
                remaining.remove(candidate)
                break
        else:  # pragma: no cover - issubclass is a partial order, so this cannot happen
            ordered.extend(remaining)
            break
    return ordered


def _normalize_type(bound: Any) -> list[type]:
    # typing.Dict / typing.List and parametrized generics bind their runtime class too.
    origin = typing.get_origin(bound)
    if origin is not None and isinstance(origin, type):
        return [origin]
    if bound is typing.Dict:  # noqa: UP006 - 7.2.0 configurations use it
        return [dict]
    if isinstance(bound, type):
        return [bound]
    raise ConfigurationError(f"serializer binding {bound!r} is not a type")


class SerializerRegistry:
    """The serializers a publisher or dispatcher may use, and which one to pick.

    Publishing picks the serializer bound to the exact type of the object, else the one bound
    to its most specific bound base class, else a typed serializer of its kind (a
    :class:`~melange.serializers.dataclass.DataclassSerializer` for a dataclass, say), else
    the one bound to ``object``, else the default, else raises
    :class:`~melange.exceptions.NoSerializerFoundError`. Consuming picks strictly by the
    message's serializer id; an id not registered raises
    :class:`~melange.exceptions.UnknownSerializerError`.
    """

    def __init__(
        self,
        serializer_settings: Mapping[str, Any] | None = None,
        *,
        serializers: Iterable[Serializer[Any]] = (),
        default: Serializer[Any] | None = None,
    ) -> None:
        self._by_id: dict[int, Serializer[Any]] = {}
        self._bindings: dict[type, Serializer[Any]] = {}
        self._default: Serializer[Any] | None = None
        self._lookup_cache: dict[type, Serializer[Any]] = {}
        if serializer_settings is not None:
            self._load_settings(serializer_settings)
        for serializer in serializers:
            self.register(serializer, *serializer.bindings())
        if default is not None:
            self._add(default)
            self._default = default

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def coerce(cls, source: SerializerSource | None) -> SerializerRegistry:
        """Build a registry from one serializer, a list of them, a config dict or a registry."""
        if isinstance(source, SerializerRegistry):
            return source
        if isinstance(source, Serializer):
            return cls(serializers=[source], default=source)
        if isinstance(source, Mapping):
            return cls(source)
        if isinstance(source, Sequence) and not isinstance(source, str | bytes):
            items = list(source)
            bad = [s for s in items if not isinstance(s, Serializer)]
            if not items or bad:
                raise ConfigurationError(f"expected a list of Serializer instances, got {source!r}")
            return cls(serializers=items, default=items[0])
        raise ConfigurationError(
            "serializers must be a Serializer instance, a list of them, a SerializerRegistry "
            f"or a registry config dict; got {type(source).__name__}: {source!r}"
        )

    def _load_settings(self, settings: Mapping[str, Any]) -> None:
        unknown = set(settings) - {"serializers", "serializer_bindings", "default"}
        if unknown:
            raise ConfigurationError(f"unknown serializer settings: {sorted(unknown)}")
        named: dict[str, Serializer[Any]] = {}
        for name, spec in dict(settings.get("serializers", {})).items():
            instance = spec() if isinstance(spec, type) else spec
            if not isinstance(instance, Serializer):
                raise ConfigurationError(f"serializer {name!r} is not a Serializer: {spec!r}")
            named[name] = instance
            self._add(instance)
        for bound, name in dict(settings.get("serializer_bindings", {})).items():
            if name not in named:
                raise ConfigurationError(
                    f"binding {bound!r} names serializer {name!r}, which is not among "
                    f"the configured serializers {sorted(named)}"
                )
            for cls in _normalize_type(bound):
                self._bindings[cls] = named[name]
        default_name = settings.get("default")
        if default_name is not None:
            if default_name not in named:
                raise ConfigurationError(
                    f"default serializer {default_name!r} is not among {sorted(named)}"
                )
            self._default = named[default_name]

    def _add(self, serializer: Serializer[Any]) -> None:
        ident = serializer.identifier()
        existing = self._by_id.get(ident)
        if existing is not None and existing is not serializer:
            if type(existing) is type(serializer):
                # Two typed serializers of one kind would share an id while decoding
                # different classes: only one could be asked, so say so now.
                known = getattr(existing, "message_types", None)
                if known is not None and known != getattr(serializer, "message_types", None):
                    raise ConfigurationError(
                        f"{existing!r} and {serializer!r} share the identifier {ident}: give "
                        "one serializer every message class (or each its own identifier=)"
                    )
                return
            raise ConfigurationError(
                f"serializers {existing!r} and {serializer!r} share the identifier {ident}"
            )
        self._by_id[ident] = serializer

    def register(
        self, serializer: Serializer[Any], *types: type, default: bool = False
    ) -> SerializerRegistry:
        """Add ``serializer``, bound to ``types``; make it the default if asked. Chainable."""
        self._add(serializer)
        for bound in types:
            for cls in _normalize_type(bound):
                self._bindings.setdefault(cls, serializer)
        if default:
            self._default = serializer
        self._lookup_cache.clear()
        return self

    # -- lookups ---------------------------------------------------------------------------

    @property
    def serializers(self) -> list[Serializer[Any]]:
        """Every registered serializer."""
        return list(self._by_id.values())

    @property
    def identifiers(self) -> list[int]:
        """The ids this registry can decode."""
        return sorted(self._by_id)

    def find_serializer_for(self, data: Any) -> Serializer[Any]:
        """The serializer to publish ``data`` with (see the class docstring for the rule)."""
        cls = type(data)
        found = self._lookup_cache.get(cls)
        if found is not None:
            return found
        for base in cls.__mro__[:-1]:  # every class but object, most specific first
            bound = self._bindings.get(base)
            if bound is not None:
                found = bound
                break
        else:
            # A message class no one was bound to: a typed serializer of its kind takes it
            # (a dataclass has no base class to bind) before a binding to object (pickle's),
            # else the default.
            found = next(
                (
                    s
                    for s in self._by_id.values()
                    if isinstance(s, TypedSerializer) and s.handles(cls)
                ),
                self._bindings.get(object, self._default),
            )
        if found is None:
            raise NoSerializerFoundError(
                f"no serializer is bound to {cls.__qualname__} or its base classes and no "
                "default is set; add a binding or a default serializer"
            )
        self._lookup_cache[cls] = found
        return found

    def find_serializer_by_id(self, serializer_id: int | None) -> Serializer[Any]:
        """The serializer with ``serializer_id``; raises ``UnknownSerializerError`` otherwise."""
        found = self._by_id.get(serializer_id) if serializer_id is not None else None
        if found is None:
            raise UnknownSerializerError(serializer_id, self.identifiers)
        return found

    def serialize(self, data: Any) -> str:
        """Serialize ``data`` with the serializer chosen for its type."""
        return self.find_serializer_for(data).serialize(data)

    def deserialize(
        self,
        data: str,
        serializer_id: int | None,
        manifest: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Decode ``data`` with the serializer named by ``serializer_id`` and nothing else.

        ``headers`` are the received message's (the dispatcher passes them): given, the
        serializer's :meth:`~melange.serializers.interfaces.Serializer.deserialize_message`
        decodes, so that it can read what its publisher wrote there (a schema version).
        Any failure comes out as a :class:`~melange.exceptions.SerializationError`, which
        makes the dispatcher dead-letter the message.
        """
        serializer = self._by_id.get(serializer_id) if serializer_id is not None else None
        if serializer is None:
            serializer = self.find_serializer_by_id(serializer_id)  # raises, naming the ids
        try:
            if headers is None or type(serializer).deserialize_message is _DEFAULT_WITH_HEADERS:
                # The default deserialize_message calls deserialize: call it directly.
                return serializer.deserialize(data, manifest)
            return serializer.deserialize_message(data, manifest, headers)
        except SerializationError:
            raise
        except Exception as exc:
            raise SerializationError(
                f"{type(serializer).__name__} failed to deserialize the message: {exc!r}"
            ) from exc
