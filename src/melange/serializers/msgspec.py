"""msgspec serializer (id 5): msgspec Structs as JSON objects, validated while decoding.

Needs the ``msgspec`` extra (``pip install 'melange[msgspec]'``). The body is
``msgspec.json`` output; on consume a decoder typed with the Struct parses and validates in
one pass, and a :class:`msgspec.ValidationError` (or a body that is not JSON) becomes a
:class:`~melange.serializers.typed.MessageValidationError`, so the message is dead-lettered
with it. Of the typed serializers it is the fastest. The JSON Schema is
``msgspec.json.schema_components``'.
"""

from __future__ import annotations

from typing import Any, ClassVar

try:
    import msgspec
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("MsgspecSerializer needs msgspec: pip install 'melange[msgspec]'") from exc

from melange.serializers.evolution import NewerVersions
from melange.serializers.message_types import manifest_of
from melange.serializers.typed import DEFAULT_REF_PREFIX, MessageValidationError, TypedSerializer


class MsgspecSerializer(TypedSerializer):
    """Serializes msgspec Structs; validates received payloads against the Struct.

    In a list of serializers it is chosen for every ``msgspec.Struct``. See
    :class:`~melange.serializers.typed.TypedSerializer` for the arguments; messages travel
    with serializer id 5 unless ``identifier=`` says otherwise.
    """

    default_identifier: ClassVar[int] = 5
    kind: ClassVar[str] = "a msgspec Struct"
    bound_types: ClassVar[tuple[type, ...]] = (msgspec.Struct,)

    def __init__(
        self,
        *message_types: type[Any],
        identifier: int | None = None,
        newer_versions: NewerVersions = "dead_letter",
    ) -> None:
        self._encoder = msgspec.json.Encoder()
        self._decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}
        super().__init__(*message_types, identifier=identifier, newer_versions=newer_versions)

    @classmethod
    def handles(cls, message_type: type[Any]) -> bool:
        return issubclass(message_type, msgspec.Struct)

    def encode(self, data: Any) -> str:
        return self._encoder.encode(data).decode("utf-8")

    def decode_text(self, cls: type[Any], text: str) -> Any:
        decoder = self._decoders.get(cls)
        if decoder is None:
            decoder = self._decoders[cls] = msgspec.json.Decoder(cls)
        try:
            return decoder.decode(text)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise MessageValidationError(f"{manifest_of(cls)} failed validation: {exc}") from None

    def decode_payload(self, cls: type[Any], payload: dict[str, Any]) -> Any:
        try:
            return msgspec.convert(payload, cls)
        except msgspec.ValidationError as exc:
            raise MessageValidationError(f"{manifest_of(cls)} failed validation: {exc}") from None

    def json_schema(
        self, cls: type[Any], ref_prefix: str = DEFAULT_REF_PREFIX
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        (schema,), defs = msgspec.json.schema_components([cls], ref_template=ref_prefix + "{name}")
        return dict(schema), {name: dict(value) for name, value in defs.items()}


__all__ = ["MsgspecSerializer"]
