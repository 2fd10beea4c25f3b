"""Pickle serializer (id 2): any Python object, base64-encoded.

Warning:
    Unpickling data runs arbitrary code. Only give a ``PickleSerializer`` to a dispatcher that
    reads queues no untrusted party can write to. Melange never unpickles a message unless the
    dispatcher was given this serializer explicitly.
"""

from __future__ import annotations

import base64
import binascii
import pickle
from typing import Any, ClassVar

from melange.exceptions import SerializationError
from melange.serializers.interfaces import Serializer


class PickleSerializer(Serializer[Any]):
    """Serializes any picklable object; the manifest is the object's class ``__qualname__``."""

    # The most general binding: chosen for anything a more specific serializer does not take.
    bound_types: ClassVar[tuple[type, ...]] = (object,)

    def __init__(self, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
        self._protocol = protocol

    def identifier(self) -> int:
        return 2

    def manifest(self, data: Any) -> str:
        return str(type(data).__qualname__)

    def serialize(self, data: Any) -> str:
        try:
            return base64.b64encode(pickle.dumps(data, protocol=self._protocol)).decode("ascii")
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise SerializationError(
                f"PickleSerializer cannot serialize {type(data).__qualname__}: {exc}"
            ) from exc

    def deserialize(self, data: str, manifest: str | None = None) -> Any:
        try:
            raw = base64.b64decode(data.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
            raise SerializationError(f"body is not base64-encoded pickle: {exc}") from exc
        try:
            return pickle.loads(raw)
        except Exception as exc:
            raise SerializationError(f"body could not be unpickled: {exc!r}") from exc
