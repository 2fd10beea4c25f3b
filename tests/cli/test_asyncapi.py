"""``melange asyncapi``: the documents validate against the official AsyncAPI 3.0 JSON Schema
(vendored in asyncapi_spec/, see its README) and say what the service does."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pydantic
import pytest
import yaml
from cli_support import run_melange
from click.testing import CliRunner

from melange.asyncapi import ServiceDescription, build_document, describe, dump, server_from_url
from melange.cli import cli
from melange.consumers import Consumer
from melange.exceptions import ConfigurationError
from melange.serializers import DataclassSerializer, JsonSerializer, message_type
from melange.serializers.msgspec import MsgspecSerializer
from melange.serializers.pydantic import PydanticSerializer

SPEC = Path(__file__).parent / "asyncapi_spec" / "asyncapi-3.0.0.schema.json"
SAGA = "melange.examples.saga.description:saga"


@cache
def official_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SPEC.read_text(encoding="utf-8"))
    assert schema["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    return jsonschema.Draft7Validator(schema)


def assert_valid_asyncapi(document: dict[str, Any]) -> None:
    """Valid for the official schema, and every reference points inside the document."""
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
        for e in official_validator().iter_errors(document)
    ]
    assert not errors, "\n".join(errors)
    for ref in _refs(document):
        assert ref.startswith("#/"), ref
        target: Any = document
        for part in ref[2:].split("/"):
            assert isinstance(target, dict) and part in target, f"dangling reference {ref}"
            target = target[part]
    for name, operation in document.get("operations", {}).items():
        channel = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel + "/messages/"), (name, message)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def test_the_saga_document_validates_in_yaml_and_json(tmp_path: Path) -> None:
    shown = run_melange("asyncapi", SAGA)
    assert shown.returncode == 0, shown.stderr
    from_yaml = yaml.safe_load(shown.stdout)
    assert_valid_asyncapi(from_yaml)

    written = run_melange("asyncapi", SAGA, "-o", str(tmp_path / "saga.json"))
    assert written.returncode == 0, written.stderr
    from_json = json.loads((tmp_path / "saga.json").read_text(encoding="utf-8"))
    assert from_json == from_yaml
    assert_valid_asyncapi(from_json)


def test_the_saga_document_says_what_flows_where() -> None:
    document = build_document(describe(SAGA_APP()))
    assert document["asyncapi"] == "3.0.0"
    channels = document["channels"]
    assert set(channels) == {
        "saga-orders",
        "saga-payments",
        "saga-stock",
        "saga-order-service",
        "saga-order-service-dlq",
        "saga-payment-service",
        "saga-payment-service-dlq",
        "saga-stock-service",
        "saga-stock-service-dlq",
    }
    assert set(channels["saga-payments"]["messages"]) == {
        "PaymentCompleted",
        "PaymentRejected",
        "PaymentRefunded",
    }
    assert channels["saga-stock-service"]["x-melange-subscriptions"] == [
        {"topic": "saga-payments", "filterEvents": ["PaymentCompleted"]}
    ]
    operations = document["operations"]
    assert operations["receiveSagaStockService"]["action"] == "receive"
    assert operations["sendSagaStock"]["messages"] == [
        {"$ref": "#/channels/saga-stock/messages/StockReserved"},
        {"$ref": "#/channels/saga-stock/messages/StockReservationFailed"},
    ]
    placed = document["components"]["messages"]["OrderPlaced"]
    assert placed["payload"]["required"] == ["order_id", "reference", "customer", "amount_cents"]
    assert placed["payload"]["properties"]["items"] == {
        "type": "object",
        "additionalProperties": {"type": "integer"},
    }
    assert placed["summary"].startswith("The order service created an order")


def SAGA_APP() -> ServiceDescription:
    from melange.examples.saga.description import describe_saga

    return describe_saga()


def test_the_validator_catches_a_broken_document() -> None:
    document = build_document(SAGA_APP())
    document["operations"]["sendSagaOrders"]["action"] = "publish"  # an AsyncAPI 2 word
    assert list(official_validator().iter_errors(document))
    del document["info"]
    assert len(list(official_validator().iter_errors(document))) >= 2


# -- typed messages of every kind ---------------------------------------------------------


@dataclass
class Address:
    street: str
    city: str


@message_type("crm.CustomerMoved", version=2)
@dataclass
class CustomerMoved:
    """A customer gave a new address."""

    customer_id: int
    address: Address
    previous: list[Address] = field(default_factory=list)


class Line(pydantic.BaseModel):
    sku: str
    quantity: int = pydantic.Field(gt=0)


@message_type("shop.CartCheckedOut", version=3)
class CartCheckedOut(pydantic.BaseModel):
    """A cart became an order."""

    cart_id: str
    lines: list[Line]


class Money(msgspec.Struct):
    cents: int
    currency: str


@message_type("billing.InvoiceIssued")
class InvoiceIssued(msgspec.Struct):
    invoice_id: str
    total: Money


def typed_description() -> ServiceDescription:
    dataclasses_ = DataclassSerializer(CustomerMoved)
    models = PydanticSerializer(CartCheckedOut)
    return (
        ServiceDescription(
            "shop", version="2.0.0", serializers=[JsonSerializer(), dataclasses_, models]
        )
        .queue("shop-inbox", topics=["crm"], dead_letter_queue="shop-inbox-dlq")
        .topic("crm", CustomerMoved)
        .receives("shop-inbox", CustomerMoved)
        .sends("shop-events", CartCheckedOut, InvoiceIssued)
    )


def test_typed_messages_of_every_kind_validate_and_describe_their_payloads() -> None:
    document = build_document(typed_description())
    assert_valid_asyncapi(document)
    messages = document["components"]["messages"]
    assert set(messages) == {"crm.CustomerMoved", "shop.CartCheckedOut", "billing.InvoiceIssued"}
    assert set(document["components"]["schemas"]) == {"Address", "Line", "InvoiceIssued", "Money"}
    moved = messages["crm.CustomerMoved"]
    assert (moved["x-melange-serializer-id"], moved["x-melange-schema-version"]) == (3, 2)
    version_header = moved["headers"]["properties"]["melange_schema_version"]
    assert version_header["const"] == "2"
    assert moved["summary"] == "A customer gave a new address."
    # InvoiceIssued was given to no serializer of the service: described by its kind, with
    # no claim on a serializer id or a version header.
    invoice = messages["billing.InvoiceIssued"]
    assert "x-melange-serializer-id" not in invoice
    assert "melange_schema_version" not in invoice["headers"]["properties"]
    assert document["channels"]["shop-inbox"]["messages"] == {
        "crm.CustomerMoved": {"$ref": "#/components/messages/crm.CustomerMoved"}
    }


@pytest.mark.parametrize(
    ("serializer", "good", "bad"),
    [
        (
            DataclassSerializer(CustomerMoved),
            CustomerMoved(1, Address("Main St", "Lyon")),
            {"customer_id": 1, "address": {"street": "Main St"}},
        ),
        (
            PydanticSerializer(CartCheckedOut),
            CartCheckedOut(cart_id="c", lines=[Line(sku="a", quantity=2)]),
            {"cart_id": "c", "lines": [{"sku": "a", "quantity": 0}]},
        ),
        (
            MsgspecSerializer(InvoiceIssued),
            InvoiceIssued("i", Money(100, "EUR")),
            {"invoice_id": "i", "total": {"cents": "100", "currency": "EUR"}},
        ),
    ],
    ids=["dataclass", "pydantic", "msgspec"],
)
def test_payload_schemas_accept_what_the_serializer_writes_and_refuse_the_rest(
    serializer: Any, good: Any, bad: dict[str, Any]
) -> None:
    document = build_document(
        ServiceDescription("one", serializers=[serializer]).sends("out", type(good))
    )
    message = next(iter(document["components"]["messages"].values()))
    # Validated with the document's components in reach of its references.
    schema = {**message["payload"], "components": document["components"]}
    validator = jsonschema.Draft7Validator(schema)
    validator.validate(json.loads(serializer.serialize(good)))
    assert list(validator.iter_errors(bad))


# -- what module:app may be -----------------------------------------------------------------


@dataclass
class _QueueSettings:
    queue: str
    consumers: list[Any] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class _ServiceShape:
    """Shaped like melange.service.Service: what describe() reads of one."""

    name: str
    serializers: Any
    queues: list[_QueueSettings]


def test_a_service_is_described_by_what_its_queues_consume() -> None:
    service = _ServiceShape(
        "crm",
        DataclassSerializer(CustomerMoved),
        [
            _QueueSettings("crm-moves", [Consumer(print, name="crm.moves")]),
            _QueueSettings(
                "crm-carts",
                [Consumer(print, name="crm.carts")],
                {"serializer_registry": [PydanticSerializer(CartCheckedOut)]},
            ),
        ],
    )
    document = build_document(describe(service))
    assert_valid_asyncapi(document)
    assert document["info"]["title"] == "crm"
    operations = document["operations"]
    assert operations["receiveCrmMoves"]["messages"] == [
        {"$ref": "#/channels/crm-moves/messages/crm.CustomerMoved"}
    ]
    assert operations["receiveCrmCarts"]["summary"] == "Consumed by crm.carts."
    assert set(document["components"]["messages"]) == {"crm.CustomerMoved", "shop.CartCheckedOut"}


class _WithDescribe:
    def describe(self) -> ServiceDescription:
        return ServiceDescription("described").topic("t", InvoiceIssued)


def test_describe_accepts_descriptions_describe_methods_and_factories() -> None:
    assert describe(_WithDescribe()).title == "described"
    assert describe(lambda: _WithDescribe()).title == "described"
    with pytest.raises(ConfigurationError, match="cannot describe a int"):
        describe(42)


def test_a_message_type_without_a_schema_is_refused() -> None:
    class Plain:
        pass

    with pytest.raises(ConfigurationError, match="has no JSON Schema"):
        build_document(ServiceDescription("x").topic("t", Plain))


# -- the command ------------------------------------------------------------------------------


def test_the_broker_is_the_server_without_credentials() -> None:
    result = CliRunner().invoke(
        cli,
        [
            "asyncapi",
            SAGA,
            "--format",
            "json",
            "--backend-url",
            "amqp://melange:s3cret-pw@rabbit.internal:5672/shop?heartbeat=30",
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["servers"] == {
        "broker": {
            "host": "rabbit.internal:5672",
            "protocol": "amqp",
            "pathname": "/shop",
            "description": "RabbitMQ, virtual host 'shop'.",
        }
    }
    assert "s3cret" not in result.output
    assert "heartbeat" not in result.output
    assert_valid_asyncapi(document)


@pytest.mark.parametrize(
    ("url", "server"),
    [
        ("sqlite:///melange.db", None),
        ("memory://", None),
        ("sqs://?region=eu-west-1", {"host": "sqs.amazonaws.com", "protocol": "sqs"}),
        ("kafka://k1:9092,k2:9092", {"host": "k1:9092,k2:9092", "protocol": "kafka"}),
        ("redis+streams://:pw@cache:6379/0", {"host": "cache:6379", "protocol": "redis"}),
        ("nats://user:pw@nats:4222", {"host": "nats:4222", "protocol": "nats"}),
    ],
)
def test_servers_from_backend_urls(url: str, server: dict[str, str] | None) -> None:
    assert server_from_url(url) == server


def test_options_title_version_and_errors(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["asyncapi", SAGA, "--title", "Saga", "--api-version", "9.1.0", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)["info"]
    assert (info["title"], info["version"]) == ("Saga", "9.1.0")
    failed = run_melange("asyncapi", "melange.models:Message")
    assert failed.returncode == 1
    assert failed.stderr.startswith("error: cannot describe")
    assert failed.stderr.count("\n") == 1


def test_dump_writes_yaml_that_reads_back_as_the_document() -> None:
    document = build_document(typed_description())
    assert yaml.safe_load(dump(document, "yaml")) == document
    assert json.loads(dump(document, "json")) == document


def test_a_list_is_merged_into_one_description() -> None:
    service = _ServiceShape(
        "crm", DataclassSerializer(CustomerMoved), [_QueueSettings("crm-moves", [])]
    )
    sends = ServiceDescription("ignored").sends("crm-events", InvoiceIssued)
    document = build_document(describe([service, sends]))
    assert_valid_asyncapi(document)
    assert document["info"]["title"] == "crm"
    assert set(document["operations"]) == {"receiveCrmMoves", "sendCrmEvents"}
    with pytest.raises(ConfigurationError, match="empty list"):
        describe([])
