"""JSON serializer (id 1, manifest ``"json"``): dicts, lists and plain values."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar

from melange.exceptions import SerializationError
from melange.serializers.interfaces import Serializer

# What json.dumps and json.loads call with their default arguments, without the call of
# json.dumps/json.loads around them (a frame per message saved on each side).
_encode = json.JSONEncoder().encode
_decoder = json.JSONDecoder()
_decode = _decoder.decode
# The scanner behind ``decode``: a body that is one document with nothing around it (what
# every serializer writes) is read by it alone, without decode's two whitespace matches.
_scan: Callable[[str, int], tuple[Any, int]] = _decoder.scan_once  # type: ignore[attr-defined]


class JsonSerializer(Serializer[Any]):
    """Serializes JSON-compatible values (dicts, lists, strings, numbers, booleans, None).

    The wire format is plain ``json.dumps`` text, readable by any language.
    """

    bound_types: ClassVar[tuple[type, ...]] = (dict, list, str, int, float, bool, type(None))

    def identifier(self) -> int:
        return 1

    def manifest(self, data: Any) -> str:
        return "json"

    def serialize(self, data: Any) -> str:
        try:
            return _encode(data)
        except (TypeError, ValueError) as exc:
            raise SerializationError(
                f"JsonSerializer cannot serialize {type(data).__qualname__}: {exc}"
            ) from exc

    def deserialize(self, data: str, manifest: str | None = None) -> Any:
        try:
            if type(data) is str:
                try:
                    value, end = _scan(data, 0)
                except StopIteration:
                    pass  # leading whitespace or not JSON: decode's own handling and error
                else:
                    if end == len(data):
                        return value
                return _decode(data)
            return json.loads(data)  # bytes, or a wrong type for its error
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"body is not valid JSON: {exc}") from exc


#: The spelling used in the original documentation.
JSONSerializer = JsonSerializer
