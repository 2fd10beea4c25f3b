from __future__ import annotations

from dataclasses import dataclass

import pytest

from melange.examples.common.serializer import EXAMPLES_SERIALIZER_ID, DataclassSerializer
from melange.exceptions import SerializationError


@dataclass(frozen=True)
class Shipped:
    order_id: str
    parcels: int
    items: dict[str, int]


@dataclass(frozen=True)
class Unregistered:
    order_id: str


def test_event_round_trips_through_json_with_its_class_name_as_manifest() -> None:
    serializer = DataclassSerializer(Shipped)
    event = Shipped("o-1", 2, {"book": 1})

    text = serializer.serialize(event)

    assert serializer.manifest(event) == "Shipped"
    assert text == '{"items": {"book": 1}, "order_id": "o-1", "parcels": 2}'
    assert serializer.deserialize(text, "Shipped") == event
    assert serializer.identifier() == EXAMPLES_SERIALIZER_ID


def test_unknown_manifest_is_refused_naming_the_known_classes() -> None:
    serializer = DataclassSerializer(Shipped)
    with pytest.raises(SerializationError, match=r"'Cancelled'.*\['Shipped'\]"):
        serializer.deserialize('{"order_id": "o-1"}', "Cancelled")


def test_body_that_does_not_fit_the_class_is_a_serialization_error() -> None:
    serializer = DataclassSerializer(Shipped)
    with pytest.raises(SerializationError, match="not a valid Shipped"):
        serializer.deserialize('{"order_id": "o-1"}', "Shipped")
    with pytest.raises(SerializationError, match="not a valid Shipped"):
        serializer.deserialize("not json", "Shipped")


def test_unregistered_class_cannot_be_published() -> None:
    with pytest.raises(SerializationError, match="Unregistered is not registered"):
        DataclassSerializer(Shipped).serialize(Unregistered("o-1"))


def test_only_dataclasses_with_unique_names_can_be_registered() -> None:
    with pytest.raises(TypeError, match="not a dataclass"):
        DataclassSerializer(dict)

    @dataclass
    class Shipped:  # same name as the module-level class
        order_id: str

    with pytest.raises(ValueError, match="named 'Shipped'"):
        DataclassSerializer(globals()["Shipped"], Shipped)
