"""The typed serializers: manifests, choice by type, validation as poison, upcasting."""

from __future__ import annotations

import sys
import textwrap
import types
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import msgspec
import pydantic
import pytest

from melange import Consumer, InMemoryMessagingBackend, MessagingBackendFactory, QueuePublisher
from melange.exceptions import ConfigurationError, SerializationError
from melange.message_dispatcher import MessageDispatcher
from melange.models import FAILURE_EXCEPTION, FAILURE_REASON, Message
from melange.serializers import (
    SCHEMA_VERSION_HEADER,
    DataclassSerializer,
    JsonSerializer,
    MessageValidationError,
    NewerSchemaVersionError,
    PickleSerializer,
    SchemaVersionError,
    SerializerRegistry,
    manifest_of,
    message_type,
    schema_version_of,
)
from melange.serializers.msgspec import MsgspecSerializer
from melange.serializers.pydantic import PydanticSerializer
from melange.serializers.typed import TypedSerializer


@message_type("billing.PaymentRequested", version=3)
@dataclass(frozen=True)
class DataclassPayment:
    order_id: int
    amount_cents: int


@message_type("billing.PaymentRequested", version=3)
class PydanticPayment(pydantic.BaseModel):
    order_id: int
    amount_cents: int


@message_type("billing.PaymentRequested", version=3)
class MsgspecPayment(msgspec.Struct, frozen=True):
    order_id: int
    amount_cents: int


KINDS: dict[str, tuple[type[TypedSerializer], type[Any]]] = {
    "dataclass": (DataclassSerializer, DataclassPayment),
    "pydantic": (PydanticSerializer, PydanticPayment),
    "msgspec": (MsgspecSerializer, MsgspecPayment),
}


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> tuple[TypedSerializer, type[Any]]:
    serializer_class, payment = KINDS[request.param]
    return serializer_class(payment), payment


def test_round_trip_with_declared_manifest_and_version(
    kind: tuple[TypedSerializer, type[Any]],
) -> None:
    serializer, payment = kind
    sent = payment(order_id=1, amount_cents=250)
    text = serializer.serialize(sent)
    assert text.replace(" ", "") == '{"order_id":1,"amount_cents":250}'
    assert serializer.manifest(sent) == "billing.PaymentRequested"
    assert serializer.message_headers(sent) == {SCHEMA_VERSION_HEADER: "3"}
    headers = {SCHEMA_VERSION_HEADER: "3"}
    assert serializer.deserialize_message(text, "billing.PaymentRequested", headers) == sent
    assert serializer.deserialize(text, "billing.PaymentRequested") == sent


def test_the_serializer_ids_are_distinct_and_reserved() -> None:
    ids = [cls(*()).identifier() for cls, _ in KINDS.values()]
    assert ids == [3, 4, 5]
    assert DataclassSerializer(identifier=77).identifier() == 77


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('{"order_id": "one", "amount_cents": 1}', "order_id"),
        ('{"order_id": 1}', "amount_cents"),
        ("[1, 2]", ""),
        ("not json", ""),
    ],
)
def test_a_payload_that_does_not_validate_raises_a_serialization_error(
    kind: tuple[TypedSerializer, type[Any]], body: str, problem: str
) -> None:
    serializer, _ = kind
    with pytest.raises(MessageValidationError) as caught:
        serializer.deserialize_message(
            body, "billing.PaymentRequested", {SCHEMA_VERSION_HEADER: "3"}
        )
    assert isinstance(caught.value, SerializationError)
    assert "billing.PaymentRequested" in str(caught.value)
    assert problem in str(caught.value)


def test_an_unknown_manifest_is_refused(kind: tuple[TypedSerializer, type[Any]]) -> None:
    serializer, _ = kind
    with pytest.raises(SerializationError, match=r"no message type 'billing\.Other'"):
        serializer.deserialize('{"order_id": 1}', "billing.Other")


def test_a_class_of_another_kind_is_refused_at_registration(
    kind: tuple[TypedSerializer, type[Any]],
) -> None:
    serializer, _ = kind
    with pytest.raises(ConfigurationError, match="cannot use it"):
        serializer.register(int)


def test_two_classes_with_one_manifest_are_refused() -> None:
    @dataclass
    class Other:
        order_id: int

    message_type("billing.PaymentRequested")(Other)
    with pytest.raises(ConfigurationError, match=r"both travel as 'billing\.PaymentRequested'"):
        DataclassSerializer(DataclassPayment, Other)


def test_undeclared_classes_travel_under_their_qualname_at_version_1() -> None:
    @dataclass
    class Shipped:
        parcel: str

    assert manifest_of(Shipped).endswith("Shipped")
    assert "." not in manifest_of(DataclassV0)
    assert schema_version_of(Shipped) == 1
    assert DataclassSerializer().message_headers(Shipped("p")) == {SCHEMA_VERSION_HEADER: "1"}


@dataclass
class DataclassV0:
    note: str


def test_declarations_are_not_inherited() -> None:
    @message_type("base.Event", version=2)
    @dataclass
    class Base:
        id: int

    @dataclass
    class Child(Base):
        extra: int = 0

    assert (manifest_of(Child), schema_version_of(Child)) == (Child.__qualname__, 1)
    assert (manifest_of(Base), schema_version_of(Base)) == ("base.Event", 2)


@pytest.mark.parametrize("name", ["has space", "", "x" * 201, "semi;colon"])
def test_a_manifest_that_cannot_travel_is_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match="cannot travel"):
        message_type(name)


@pytest.mark.parametrize("version", [0, -1, True, "2"])
def test_a_bad_version_is_refused(version: Any) -> None:
    with pytest.raises(ConfigurationError, match="whole number from 1"):
        message_type("x.Y", version=version)


def test_class_attributes_declare_like_the_decorator() -> None:
    class Declared(pydantic.BaseModel):
        __melange_manifest__ = "crm.CustomerRegistered"
        __melange_schema_version__ = 4
        name: str

    assert (manifest_of(Declared), schema_version_of(Declared)) == ("crm.CustomerRegistered", 4)
    assert list(Declared.model_fields) == ["name"]


@pytest.fixture
def module_factory() -> Iterator[Any]:
    made: list[str] = []

    def make(module_name: str) -> types.ModuleType:
        # A message module as a service ships it: the class is the same, the module moves.
        module = types.ModuleType(module_name)
        sys.modules[module_name] = module
        made.append(module_name)
        source = textwrap.dedent(
            """
            from dataclasses import dataclass
            from melange.serializers import message_type

            @message_type("shop.OrderShipped")
            @dataclass
            class OrderShipped:
                order_id: int

            @dataclass
            class OrderPacked:
                order_id: int
            """
        )
        exec(compile(source, f"<{module_name}>", "exec"), module.__dict__)
        return module

    yield make
    for name in made:
        sys.modules.pop(name, None)


def test_moving_message_classes_to_another_module_keeps_queued_messages_readable(
    module_factory: Any,
) -> None:
    before = module_factory("shop.events")
    after = module_factory("shop.messages.orders")
    backend = InMemoryMessagingBackend()
    MessagingBackendFactory(backend).init_queue("orders", dead_letter_queue_name="orders-dlq")
    publisher = QueuePublisher(DataclassSerializer(), backend)
    queued = [
        publisher.publish("orders", before.OrderShipped(1)),
        publisher.publish("orders", before.OrderPacked(2)),
    ]
    assert [m.manifest for m in queued] == ["shop.OrderShipped", "OrderPacked"]
    assert all("shop.events" not in m.content + (m.manifest or "") for m in queued)

    handled: list[Any] = []
    serializer = DataclassSerializer(after.OrderShipped, after.OrderPacked)
    MessageDispatcher(
        serializer, backend=backend, consumers=[Consumer(on_message=handled.append)]
    ).consume_event("orders")
    assert handled == [after.OrderShipped(1), after.OrderPacked(2)]
    assert [type(h).__module__ for h in handled] == ["shop.messages.orders"] * 2


def test_publishers_choose_the_typed_serializer_by_type() -> None:
    serializers = [
        JsonSerializer(),
        DataclassSerializer(DataclassPayment),
        PydanticSerializer(),
        MsgspecSerializer(),
    ]
    registry = SerializerRegistry.coerce(serializers)
    assert registry.find_serializer_for({"a": 1}).identifier() == 1
    assert registry.find_serializer_for(DataclassPayment(1, 2)).identifier() == 3
    # Any model and any Struct, listed or not: their base classes are bound.
    assert (
        registry.find_serializer_for(PydanticPayment(order_id=1, amount_cents=2)).identifier() == 4
    )
    assert registry.find_serializer_for(MsgspecPayment(1, 2)).identifier() == 5

    backend = InMemoryMessagingBackend()
    MessagingBackendFactory(backend).init_queue("mixed")
    publisher = QueuePublisher(serializers, backend)
    sent = [
        publisher.publish("mixed", {"plain": True}),
        publisher.publish("mixed", MsgspecPayment(3, 4)),
    ]
    assert [(m.serializer_id, m.manifest) for m in sent] == [
        (1, "json"),
        (5, "billing.PaymentRequested"),
    ]
    assert SCHEMA_VERSION_HEADER not in sent[0].headers
    assert sent[1].headers[SCHEMA_VERSION_HEADER] == "3"


def test_a_publisher_header_overrides_the_serializer_one() -> None:
    backend = InMemoryMessagingBackend()
    MessagingBackendFactory(backend).init_queue("override")
    sent = QueuePublisher(DataclassSerializer(), backend).publish(
        "override", DataclassPayment(1, 2), headers={SCHEMA_VERSION_HEADER: "2"}
    )
    assert sent.headers[SCHEMA_VERSION_HEADER] == "2"


def test_a_payload_failing_validation_is_dead_lettered_and_never_consumed(
    kind: tuple[TypedSerializer, type[Any]],
) -> None:
    serializer, payment = kind
    backend = InMemoryMessagingBackend()
    factory = MessagingBackendFactory(backend)
    factory.init_queue("payments", dead_letter_queue_name="payments-dlq")
    bad = Message.create(
        '{"order_id": "forty-two", "amount_cents": 100}',
        "billing.PaymentRequested",
        serializer.identifier(),
        {SCHEMA_VERSION_HEADER: "3"},
    )
    backend.publish_to_queue(bad, backend.get_queue("payments"))
    QueuePublisher(serializer, backend).publish("payments", payment(order_id=42, amount_cents=100))

    handled: list[Any] = []
    dispatcher = MessageDispatcher(
        serializer, backend=backend, consumers=[Consumer(on_message=handled.append)]
    )
    dispatcher.consume_event("payments")
    assert handled == [payment(order_id=42, amount_cents=100)]
    dead = backend.retrieve_messages(backend.get_queue("payments-dlq"))
    assert [m.message_id for m in dead] == [bad.message_id]
    reason = dead[0].headers[FAILURE_REASON]
    assert reason.startswith("undecodable message: billing.PaymentRequested failed validation")
    assert "order_id" in reason
    assert dead[0].headers[FAILURE_EXCEPTION] == "MessageValidationError"


class TestUpcasting:
    @staticmethod
    def serializer(**options: Any) -> DataclassSerializer:
        @message_type("crm.CustomerRegistered", version=3)
        @dataclass
        class Customer:
            customer_id: int
            first_name: str
            last_name: str
            country: str

        serializer = DataclassSerializer(Customer, **options)

        @serializer.upcaster(Customer, from_version=1)
        def split_name(payload: dict[str, Any]) -> dict[str, Any]:
            first, _, last = payload.pop("name").partition(" ")
            return {**payload, "first_name": first, "last_name": last}

        serializer.add_upcaster(Customer, 2, lambda payload: {**payload, "country": "FR"})
        return serializer

    def test_each_older_version_is_moved_forward_step_by_step(self) -> None:
        serializer = self.serializer()
        v1 = serializer.deserialize_message(
            '{"customer_id": 5, "name": "Ada Lovelace"}',
            "crm.CustomerRegistered",
            {SCHEMA_VERSION_HEADER: "1"},
        )
        assert (v1.first_name, v1.last_name, v1.country) == ("Ada", "Lovelace", "FR")
        v2 = serializer.deserialize_message(
            '{"customer_id": 6, "first_name": "Alan", "last_name": "Turing"}',
            "crm.CustomerRegistered",
            {SCHEMA_VERSION_HEADER: "2"},
        )
        assert (v2.customer_id, v2.country) == (6, "FR")

    def test_a_message_without_a_version_header_is_version_1(self) -> None:
        found = self.serializer().deserialize_message(
            '{"customer_id": 5, "name": "Grace Hopper"}', "crm.CustomerRegistered", {}
        )
        assert found.last_name == "Hopper"

    def test_a_newer_version_is_refused_unless_decoding_newer_versions(self) -> None:
        body = (
            '{"customer_id": 1, "first_name": "A", "last_name": "B", "country": "NL", "vip": true}'
        )
        with pytest.raises(NewerSchemaVersionError, match="version 4 is newer than version 3"):
            self.serializer().deserialize_message(
                body, "crm.CustomerRegistered", {SCHEMA_VERSION_HEADER: "4"}
            )
        lenient = self.serializer(newer_versions="decode")
        found = lenient.deserialize_message(
            body, "crm.CustomerRegistered", {SCHEMA_VERSION_HEADER: "4"}
        )
        assert (found.customer_id, found.country) == (1, "NL")

    def test_a_missing_or_failing_upcaster_or_a_bad_version_is_a_schema_version_error(
        self,
    ) -> None:
        @message_type("x.Gap", version=3)
        @dataclass
        class Gap:
            value: int

        gap = DataclassSerializer(Gap)
        gap.add_upcaster(Gap, 2, lambda payload: payload)
        with pytest.raises(SchemaVersionError, match="no upcaster from version 1 to 2"):
            gap.deserialize_message('{"value": 1}', "x.Gap", {SCHEMA_VERSION_HEADER: "1"})
        with pytest.raises(SchemaVersionError, match="not a version number"):
            gap.deserialize_message('{"value": 1}', "x.Gap", {SCHEMA_VERSION_HEADER: "two"})
        broken = DataclassSerializer(Gap)
        broken.add_upcaster(Gap, 2, lambda payload: payload["absent"])
        with pytest.raises(SchemaVersionError, match=r"upcaster of x\.Gap from version 2 failed"):
            broken.deserialize_message('{"value": 1}', "x.Gap", {SCHEMA_VERSION_HEADER: "2"})

    def test_one_upcaster_per_type_and_version(self) -> None:
        serializer = self.serializer()
        customer = serializer.message_types[0]
        with pytest.raises(ConfigurationError, match="already registered"):
            serializer.add_upcaster(customer, 1, lambda payload: payload)


def test_the_outbox_writes_the_schema_version_like_a_publisher() -> None:
    from melange.outbox.writer import Outbox

    built = Outbox(DataclassSerializer(DataclassPayment)).build(DataclassPayment(1, 2))
    assert (built.manifest, built.serializer_id) == ("billing.PaymentRequested", 3)
    assert built.headers[SCHEMA_VERSION_HEADER] == "3"


def test_two_serializers_of_one_kind_with_different_classes_are_refused_together() -> None:
    @dataclass
    class Other:
        value: int

    with pytest.raises(ConfigurationError, match="give one serializer every message class"):
        SerializerRegistry.coerce(
            [DataclassSerializer(DataclassPayment), DataclassSerializer(Other)]
        )
    both = SerializerRegistry.coerce(
        [DataclassSerializer(DataclassPayment), DataclassSerializer(Other, identifier=103)]
    )
    assert both.identifiers == [3, 103]


def test_a_long_payload_value_is_shortened_in_the_reason() -> None:
    @dataclass
    class Dated:
        day: date

    with pytest.raises(MessageValidationError) as caught:
        DataclassSerializer(Dated).deserialize('{"day": "' + "x" * 500 + '"}', Dated.__qualname__)
    assert "x" * 40 not in str(caught.value)
    assert "..." in str(caught.value)


def test_a_class_bound_to_no_serializer_goes_to_the_typed_serializer_of_its_kind() -> None:
    @dataclass
    class Unlisted:
        value: int

    registry = SerializerRegistry.coerce(
        [JsonSerializer(), PickleSerializer(), DataclassSerializer(), MsgspecSerializer()]
    )
    assert registry.find_serializer_for(Unlisted(1)).identifier() == 3
    assert registry.find_serializer_for(MsgspecPayment(1, 2)).identifier() == 5
    # Anything else still goes to the binding to object (pickle) before the default (JSON).
    assert registry.find_serializer_for(object()).identifier() == 2
    assert registry.find_serializer_for({"a": 1}).identifier() == 1
