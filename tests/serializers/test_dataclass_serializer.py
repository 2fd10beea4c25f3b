"""The dataclass serializer's own checks: annotations read back, and the JSON Schema."""

from __future__ import annotations

import datetime
import decimal
import enum
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema
import pytest

from melange.exceptions import ConfigurationError
from melange.serializers import DataclassSerializer, MessageValidationError


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Line:
    sku: str
    quantity: int


@dataclass(frozen=True)
class Everything:
    """An order with one field of each supported kind."""

    id: uuid.UUID
    at: datetime.datetime
    day: datetime.date
    price: decimal.Decimal
    ratio: float
    flag: bool
    colour: Colour
    mode: Literal["fast", "slow"]
    lines: list[Line]
    pair: tuple[int, str]
    tags: frozenset[str]
    scores: dict[str, float]
    note: str | None = None
    extra: Any = None
    history: tuple[int, ...] = field(default_factory=tuple)


SAMPLE = Everything(
    id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    at=datetime.datetime(2026, 5, 1, 12, 30, tzinfo=datetime.UTC),
    day=datetime.date(2026, 5, 1),
    price=decimal.Decimal("9.99"),
    ratio=0.5,
    flag=True,
    colour=Colour.BLUE,
    mode="slow",
    lines=[Line("a", 1), Line("b", 2)],
    pair=(1, "x"),
    tags=frozenset({"new"}),
    scores={"a": 1.0},
    history=(1, 2),
)


def test_every_supported_annotation_round_trips() -> None:
    serializer = DataclassSerializer(Everything)
    text = serializer.serialize(SAMPLE)
    assert '"colour":"blue"' in text
    assert '"price":"9.99"' in text
    assert serializer.deserialize(text, "Everything") == SAMPLE


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"ratio": "half"}, "ratio: expected float, got str"),
        ({"flag": 1}, "flag: expected bool, got int"),
        ({"colour": "green"}, "colour: 'green' is not a Colour"),
        ({"mode": "medium"}, "mode: expected one of"),
        ({"lines": [{"sku": "a", "quantity": "1"}]}, "lines[0].quantity: expected int"),
        ({"lines": [{"sku": "a"}]}, "missing field(s) lines[0].quantity"),
        ({"pair": [1]}, "pair: expected 2 items"),
        ({"day": "yesterday"}, "day: 'yesterday' is not a date"),
        ({"id": 5}, "id: expected UUID text"),
        ({"note": 3}, "note: int matches none of"),
        ({"scores": {"a": "x"}}, "scores.a: expected float"),
    ],
)
def test_a_value_of_the_wrong_type_names_its_path(change: dict[str, Any], where: str) -> None:
    serializer = DataclassSerializer(Everything)
    payload = json.loads(serializer.serialize(SAMPLE))
    payload.update(change)
    with pytest.raises(MessageValidationError) as caught:
        serializer.deserialize(json.dumps(payload), "Everything")
    assert where in str(caught.value)


def test_fields_the_class_does_not_have_are_ignored() -> None:
    serializer = DataclassSerializer(Line)
    assert serializer.deserialize('{"sku": "a", "quantity": 1, "new": 2}', "Line") == Line("a", 1)


def test_post_init_refusals_are_validation_errors() -> None:
    @dataclass
    class Positive:
        value: int

        def __post_init__(self) -> None:
            if self.value <= 0:
                raise ValueError("value must be positive")

    serializer = DataclassSerializer(Positive)
    with pytest.raises(MessageValidationError, match="value must be positive"):
        serializer.deserialize('{"value": -1}', Positive.__qualname__)


def test_unresolvable_annotations_fail_at_registration() -> None:
    @dataclass
    class Broken:
        value: NotDefined  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(ConfigurationError, match="cannot be resolved"):
        DataclassSerializer(Broken)


def test_the_json_schema_describes_what_the_serializer_writes() -> None:
    serializer = DataclassSerializer(Everything)
    schema, defs = serializer.json_schema(Everything)
    assert schema["description"] == "An order with one field of each supported kind."
    assert schema["required"][:3] == ["id", "at", "day"]
    assert "note" not in schema["required"]
    assert schema["properties"]["lines"]["items"] == {"$ref": "#/$defs/Line"}
    assert defs["Line"]["required"] == ["sku", "quantity"]
    document = {**schema, "$defs": defs}
    jsonschema.Draft7Validator.check_schema(document)
    instance = json.loads(serializer.serialize(SAMPLE))
    jsonschema.Draft7Validator(document).validate(instance)
    instance["colour"] = "green"
    assert list(jsonschema.Draft7Validator(document).iter_errors(instance))


def test_an_annotation_it_cannot_check_is_refused_at_registration() -> None:
    @dataclass
    class WithCallback:
        callback: Callable[[int], int]

    with pytest.raises(ConfigurationError, match="does not support the annotation"):
        DataclassSerializer(WithCallback)


@dataclass
class Node:
    name: str
    children: list[Node] = field(default_factory=list)


def test_a_class_may_refer_to_itself() -> None:
    serializer = DataclassSerializer(Node)
    tree = Node("a", [Node("b"), Node("c", [Node("d")])])
    assert serializer.deserialize(serializer.serialize(tree), Node.__qualname__) == tree
    with pytest.raises(MessageValidationError, match=r"children\[1\]\.children\[0\]\.name"):
        serializer.deserialize(
            '{"name": "a", "children": [{"name": "b"}, {"name": "c", "children": [{"name": 1}]}]}',
            Node.__qualname__,
        )
