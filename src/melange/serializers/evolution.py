"""Schema evolution: the version each typed message carries, and upcasters.

A typed serializer writes the schema version of the message's class in the
``melange_schema_version`` header of every message. When a consumer receives an older
version, the upcasters registered for that type move the payload forward one version at a
time (1 → 2, 2 → 3, ...) before it is validated and handed to the consumer, so consumers only
ever see the current shape. A message of a version newer than the consumer's class is refused
(and dead-lettered) unless the serializer was told to decode it as the current shape.

A message without the header is version 1: what a publisher wrote before its type declared
versions, or a producer that does not write it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from melange.exceptions import ConfigurationError, SerializationError

#: The header that carries a typed message's schema version (a decimal number).
SCHEMA_VERSION_HEADER = "melange_schema_version"

#: Turns a payload (the decoded JSON object) of one version into the shape of the next.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

#: What a consumer does with a message newer than the version its class declares:
#: ``"dead_letter"`` refuses it, ``"decode"`` decodes it as the current shape (fields the
#: class does not know are dropped; a payload that does not validate is still refused).
NewerVersions = Literal["dead_letter", "decode"]


class SchemaVersionError(SerializationError):
    """A message's schema version cannot be read, or no upcaster leads to the current one."""


class NewerSchemaVersionError(SchemaVersionError):
    """A message is of a newer schema version than the consumer's class.

    Attributes:
        manifest: The message's type.
        version: The version it carries.
        known: The newest version the consumer knows.
    """

    def __init__(self, manifest: str, version: int, known: int) -> None:
        self.manifest = manifest
        self.version = version
        self.known = known
        super().__init__(
            f"{manifest} version {version} is newer than version {known}, the newest this "
            "consumer knows; deploy the consumer with the new version, or let it decode newer "
            "versions (newer_versions='decode')"
        )


def read_version(headers: Mapping[str, str]) -> int:
    """The schema version in ``headers`` (1 when absent)."""
    raw = headers.get(SCHEMA_VERSION_HEADER)
    if raw is None:
        return 1
    text = str(raw).strip()
    if not text.isdigit() or int(text) < 1:
        raise SchemaVersionError(
            f"header {SCHEMA_VERSION_HEADER} is {str(raw)[:20]!r}, not a version number from 1"
        )
    return int(text)


class Upcasters:
    """The upcasters of some message types, keyed by (manifest, version they read)."""

    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], Upcaster] = {}

    def add(self, manifest: str, from_version: int, upcaster: Upcaster) -> None:
        """Register ``upcaster`` to turn version ``from_version`` of ``manifest`` into the
        next version."""
        if isinstance(from_version, bool) or not isinstance(from_version, int) or from_version < 1:
            raise ConfigurationError(
                f"from_version must be a whole number from 1: {from_version!r}"
            )
        key = (manifest, from_version)
        if key in self._steps and self._steps[key] is not upcaster:
            raise ConfigurationError(
                f"an upcaster from version {from_version} of {manifest} is already registered"
            )
        self._steps[key] = upcaster

    def versions(self, manifest: str) -> list[int]:
        """The versions of ``manifest`` that an upcaster reads, in order."""
        return sorted(version for name, version in self._steps if name == manifest)

    def upcast(
        self, manifest: str, payload: dict[str, Any], version: int, current: int
    ) -> dict[str, Any]:
        """Move ``payload`` from ``version`` to ``current``, one upcaster at a time."""
        for step in range(version, current):
            upcaster = self._steps.get((manifest, step))
            if upcaster is None:
                raise SchemaVersionError(
                    f"{manifest} version {version} cannot be read: no upcaster from version "
                    f"{step} to {step + 1} is registered"
                )
            try:
                payload = upcaster(payload)
            except Exception as exc:
                raise SchemaVersionError(
                    f"the upcaster of {manifest} from version {step} failed: {exc!r}"
                ) from exc
            if not isinstance(payload, dict):
                raise SchemaVersionError(
                    f"the upcaster of {manifest} from version {step} returned "
                    f"{type(payload).__name__}, not a dict"
                )
        return payload


__all__ = [
    "SCHEMA_VERSION_HEADER",
    "NewerSchemaVersionError",
    "NewerVersions",
    "SchemaVersionError",
    "Upcaster",
    "Upcasters",
    "read_version",
]
