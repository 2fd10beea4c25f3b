"""Pydantic serializer (id 4): pydantic v2 models as JSON objects, validated by the model.

Needs the ``pydantic`` extra (``pip install 'melange[pydantic]'``). The body is the model's
``model_dump_json()``; on consume the model validates it (``model_validate_json``), and a
:class:`pydantic.ValidationError` becomes a
:class:`~melange.serializers.typed.MessageValidationError` carrying pydantic's description, so
the message is dead-lettered with it. The JSON Schema is the model's ``model_json_schema()``.
"""

from __future__ import annotations

from typing import Any, ClassVar

try:
    import pydantic
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "PydanticSerializer needs pydantic v2: pip install 'melange[pydantic]'"
    ) from exc

from melange.serializers.message_types import manifest_of
from melange.serializers.typed import DEFAULT_REF_PREFIX, MessageValidationError, TypedSerializer


class PydanticSerializer(TypedSerializer):
    """Serializes pydantic v2 models; validates received payloads with the model.

    In a list of serializers it is chosen for every ``BaseModel``. See
    :class:`~melange.serializers.typed.TypedSerializer` for the arguments; messages travel
    with serializer id 4 unless ``identifier=`` says otherwise.
    """

    default_identifier: ClassVar[int] = 4
    kind: ClassVar[str] = "a pydantic model"
    bound_types: ClassVar[tuple[type, ...]] = (pydantic.BaseModel,)

    @classmethod
    def handles(cls, message_type: type[Any]) -> bool:
        return issubclass(message_type, pydantic.BaseModel)

    def encode(self, data: Any) -> str:
        text: str = data.model_dump_json()
        return text

    def decode_text(self, cls: type[Any], text: str) -> Any:
        try:
            return cls.model_validate_json(text)
        except pydantic.ValidationError as exc:
            raise _invalid(cls, exc) from None

    def decode_payload(self, cls: type[Any], payload: dict[str, Any]) -> Any:
        try:
            return cls.model_validate(payload)
        except pydantic.ValidationError as exc:
            raise _invalid(cls, exc) from None

    def json_schema(
        self, cls: type[Any], ref_prefix: str = DEFAULT_REF_PREFIX
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        schema: dict[str, Any] = cls.model_json_schema(ref_template=ref_prefix + "{model}")
        defs: dict[str, dict[str, Any]] = schema.pop("$defs", {})
        return schema, defs


def _invalid(cls: type[Any], exc: pydantic.ValidationError) -> MessageValidationError:
    # pydantic's text without its documentation links, one problem per clause.
    problems = "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or 'payload'}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False)
    )
    return MessageValidationError(f"{manifest_of(cls)} failed validation: {problems}")


__all__ = ["PydanticSerializer"]
