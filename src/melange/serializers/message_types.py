"""Declaring a message type: the name it travels under and the version of its shape.

A typed message travels with a *manifest* naming its type and a *schema version* header. Both
are facts about the class, declared once where the class is defined::

    @message_type("orders.OrderPlaced", version=2)
    @dataclass
    class OrderPlaced:
        order_id: int
        currency: str

or, equivalently, as class attributes::

    class OrderPlaced(BaseModel):
        __melange_manifest__ = "orders.OrderPlaced"
        __melange_schema_version__ = 2

An undeclared class travels under its ``__qualname__`` (``"OrderPlaced"``, or
``"Outer.Inner"`` for a nested class) at version 1. Neither depends on the module the class
lives in, so moving a message class to another module leaves queued messages readable;
renaming the class does not, unless the old name is declared.

Declarations are read from the class itself, never inherited: a subclass is a type of its
own and travels under its own name unless it declares one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from melange.exceptions import ConfigurationError

C = TypeVar("C", bound=type[Any])

#: Class attribute holding the declared manifest.
MANIFEST_ATTRIBUTE = "__melange_manifest__"
#: Class attribute holding the declared schema version.
VERSION_ATTRIBUTE = "__melange_schema_version__"

# Printable ASCII without spaces: a manifest travels as a broker attribute and in filters.
_MANIFEST = re.compile(r"^[A-Za-z0-9_.:/@-]{1,200}$")


def message_type(name: str | None = None, *, version: int = 1) -> Callable[[C], C]:
    """Declare the manifest (``name``) and the schema version of a message class.

    Args:
        name: The manifest the class travels under; default its ``__qualname__``. Letters,
            digits and ``_ . : / @ -``, at most 200 characters.
        version: The version of the class's current shape, from 1; raise it when the shape
            changes and register an upcaster from the previous version.

    Raises:
        ConfigurationError: The name or the version cannot travel.
    """
    if name is not None:
        _check_manifest(name)
    _check_version(version)

    def declare(cls: C) -> C:
        setattr(cls, MANIFEST_ATTRIBUTE, name if name is not None else cls.__qualname__)
        setattr(cls, VERSION_ATTRIBUTE, version)
        return cls

    return declare


def manifest_of(cls: type[Any]) -> str:
    """The manifest instances of ``cls`` travel under (declared, else ``__qualname__``)."""
    declared = vars(cls).get(MANIFEST_ATTRIBUTE)
    if declared is None:
        return cls.__qualname__
    if not isinstance(declared, str):
        raise ConfigurationError(f"{cls.__qualname__}.{MANIFEST_ATTRIBUTE} must be a string")
    _check_manifest(declared)
    return declared


def schema_version_of(cls: type[Any]) -> int:
    """The current schema version of ``cls`` (declared, else 1)."""
    declared = vars(cls).get(VERSION_ATTRIBUTE, 1)
    _check_version(declared, cls)
    return int(declared)


def _check_manifest(name: str) -> None:
    if not _MANIFEST.match(name):
        raise ConfigurationError(
            f"message type name {name!r} cannot travel as a manifest: use 1 to 200 letters, "
            "digits and the characters _ . : / @ -"
        )


def _check_version(version: object, cls: type[Any] | None = None) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        owner = f" of {cls.__qualname__}" if cls is not None else ""
        raise ConfigurationError(
            f"schema version{owner} must be a whole number from 1: {version!r}"
        )


__all__ = [
    "MANIFEST_ATTRIBUTE",
    "VERSION_ATTRIBUTE",
    "manifest_of",
    "message_type",
    "schema_version_of",
]
