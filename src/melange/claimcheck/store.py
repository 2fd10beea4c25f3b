"""The payload store contract, and the errors of a claim check.

A :class:`PayloadStore` keeps the bodies of messages too large for the broker, under keys the
claim check makes (:func:`new_key`). Three stores come with Melange: a directory
(:class:`~melange.claimcheck.directory.DirectoryPayloadStore`), a SQL table
(:class:`~melange.claimcheck.sql.SQLPayloadStore`, SQLite or PostgreSQL) and an S3 bucket
(:class:`~melange.claimcheck.s3.S3PayloadStore`). Any object with these four methods works.

A key arrives in a message header, so a store never trusts it: :func:`check_key` refuses
anything but the plain names :func:`new_key` makes (no path separators, no ``..``).
"""

from __future__ import annotations

import re
import time
import uuid
from abc import ABC, abstractmethod

from melange.exceptions import MelangeError, SerializationError


class ClaimCheckError(MelangeError):
    """A claim-checked payload could not be stored or fetched."""


class PayloadMissingError(ClaimCheckError):
    """The store holds no payload under the message's key (removed, expired, or never
    stored). The dispatcher retries the message, then dead-letters it with this reason."""


class PayloadUnreadableError(ClaimCheckError):
    """The store's payload does not match the reference (its size or SHA-256 digest), or the
    reference itself cannot be read."""


class InvalidReferenceError(PayloadUnreadableError, SerializationError):
    """A message's claim check header is not a reference this version can read (malformed,
    another format version, or a key no store would make). The message is undecodable: it
    is dead-lettered at once, as any poison message."""


class PayloadStoreError(ClaimCheckError):
    """The store failed or could not be reached."""


_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def new_key() -> str:
    """A fresh key: the UTC date of storing, then a random id (``20260101-3f2a...``), so that
    a listing sorts by age."""
    return f"{time.strftime('%Y%m%d', time.gmtime())}-{uuid.uuid4().hex}"


def check_key(key: object) -> str:
    """``key``, if it is a plain name of at most 128 letters, digits, ``.``, ``_``, ``-``
    (not starting with a dot or dash); else :class:`PayloadUnreadableError`."""
    if not isinstance(key, str) or not _KEY.match(key) or ".." in key:
        shown = key[:40] if isinstance(key, str) else type(key).__name__
        raise InvalidReferenceError(f"claim check key {shown!r} is not a valid payload key")
    return key


class PayloadStore(ABC):
    """Where claim-checked payloads are kept.

    Implementations must be safe to call from several threads, and :meth:`put` must make a
    payload visible whole or not at all (a reader never sees half a payload).
    """

    #: A short name for log lines and errors (``"s3"``, ``"directory"``, ``"sqlite"``).
    name: str = "store"

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``. Raises :class:`PayloadStoreError` on failure."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The payload under ``key``. Raises :class:`PayloadMissingError` when there is none,
        :class:`PayloadStoreError` when the store fails."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the payload under ``key``; nothing if there is none."""

    @abstractmethod
    def purge(self, stored_before: float) -> int:
        """Remove the payloads stored before the Unix time ``stored_before``; returns how many
        were removed."""


__all__ = [
    "ClaimCheckError",
    "InvalidReferenceError",
    "PayloadMissingError",
    "PayloadStore",
    "PayloadStoreError",
    "PayloadUnreadableError",
    "check_key",
    "new_key",
]
