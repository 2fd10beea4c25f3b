"""The documented names and import paths are the public API; they must not drift."""

import importlib

import pytest

import melange

EXPECTED_TOP_LEVEL = {
    "AsyncMessageDispatcher",
    "AsyncQueuePublisher",
    "AsyncTopicPublisher",
    "BackendCapabilities",
    "BackendManager",
    "Consumer",
    "ConsumerHandler",
    "DeduplicationCache",
    "DispatcherStats",
    "FailurePolicy",
    "InMemoryCache",
    "InMemoryMessagingBackend",
    "JSONSerializer",
    "JsonSerializer",
    "MelangeError",
    "Message",
    "MessageDispatcher",
    "MessageSerializer",
    "MessagingBackend",
    "MessagingBackendFactory",
    "NullCache",
    "PickleSerializer",
    "QueuePublisher",
    "QueueWrapper",
    "Serializer",
    "SerializerRegistry",
    "SimpleMessageDispatcher",
    "SingleDispatchConsumer",
    "TopicPublisher",
    "TopicWrapper",
    "consumer",
    "current_message",
    "link_synchronously",
    "listener",
}


def test_top_level_all_is_exactly_the_public_api() -> None:
    assert set(melange.__all__) == EXPECTED_TOP_LEVEL
    assert melange.__all__ == sorted(melange.__all__, key=str)
    for name in melange.__all__:
        assert getattr(melange, name) is not None


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("melange.publishers", ["QueuePublisher", "TopicPublisher"]),
        ("melange.message_publisher", ["QueuePublisher", "TopicPublisher"]),
        (
            "melange.consumers",
            [
                "Consumer",
                "SingleDispatchConsumer",
                "consumer",
                "listener",
                "MessageDispatcher",
                "SimpleMessageDispatcher",
                "ConsumerHandler",
            ],
        ),
        (
            "melange.message_dispatcher",
            ["MessageDispatcher", "SimpleMessageDispatcher", "ConsumerHandler"],
        ),
        ("melange.backends.factory", ["MessagingBackendFactory"]),
        ("melange.backends.backend_manager", ["BackendManager"]),
        ("melange.backends.sqs.backend_manager", ["BackendManager"]),
        ("melange.backends.interfaces", ["MessagingBackend", "BackendCapabilities"]),
        ("melange.backends.testing", ["InMemoryMessagingBackend", "link_synchronously"]),
        ("melange.backends", ["MessagingBackend", "BackendManager", "InMemoryMessagingBackend"]),
        ("melange.serializers.interfaces", ["Serializer", "MessageSerializer"]),
        ("melange.serializers.json", ["JsonSerializer", "JSONSerializer"]),
        ("melange.serializers.pickle", ["PickleSerializer"]),
        ("melange.serializers.registry", ["SerializerRegistry", "sort"]),
        ("melange.models", ["Message", "QueueWrapper", "TopicWrapper"]),
        ("melange.deduplication.cache", ["DeduplicationCache", "NullCache", "InMemoryCache"]),
        ("melange.exceptions", ["SerializationError", "MelangeError"]),
        ("melange.examples.doc_examples.probe", ["Probe"]),
        ("melange.testing", ["Probe", "wait_until"]),
    ],
)
def test_documented_import_paths_work(module: str, names: list[str]) -> None:
    imported = importlib.import_module(module)
    for name in names:
        assert hasattr(imported, name), f"{module}.{name}"


def test_both_spellings_are_the_same_objects() -> None:
    from melange.backends.backend_manager import BackendManager as A
    from melange.backends.sqs.backend_manager import BackendManager as B
    from melange.consumers import ConsumerHandler, consumer, listener
    from melange.message_dispatcher import MessageDispatcher
    from melange.message_publisher import QueuePublisher as Q1
    from melange.publishers import QueuePublisher as Q2
    from melange.serializers.interfaces import MessageSerializer, Serializer
    from melange.serializers.json import JSONSerializer, JsonSerializer

    assert A is B
    assert Q1 is Q2
    assert consumer is listener
    assert ConsumerHandler is MessageDispatcher
    assert MessageSerializer is Serializer
    assert JSONSerializer is JsonSerializer


def test_importing_melange_imports_no_broker_client() -> None:
    import subprocess
    import sys

    code = (
        "import sys, melange, melange.backends, melange.consumers, melange.publishers;"
        "bad = [m for m in ('boto3', 'pika', 'redis', 'psycopg') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_package_is_typed() -> None:
    from importlib.resources import files

    assert files("melange").joinpath("py.typed").is_file()


@pytest.mark.parametrize(
    ("blocked", "statement", "extra"),
    [
        ("boto3", "from melange.backends.sqs.sqs_backend import AWSBackend", "aws"),
        ("boto3", "from melange.backends.sqs.backend import AWSBackend", "aws"),
        ("boto3", "from melange.backends import LocalSQSBackend", "aws"),
        ("redis", "from melange.deduplication.cache import RedisCache", "redis"),
        ("pika", "from melange.backends import RabbitMQBackend", "rabbitmq"),
    ],
)
def test_a_missing_broker_client_names_the_extra_to_install(
    blocked: str, statement: str, extra: str
) -> None:
    import subprocess
    import sys

    code = f"import sys; sys.modules[{blocked!r}] = None\n{statement}"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert f"melange[{extra}]" in result.stderr


def test_old_import_paths_of_the_dispatch_modules_and_link_synchronously_keep_working() -> None:
    import melange.backends
    import melange.backends.testing
    import melange.dispatch_core
    import melange.heartbeat
    import melange.message_dispatcher
    import melange.policy
    import melange.testing
    from melange.dispatch import decisions, leases, policy, threaded

    link = melange.testing.link_synchronously
    assert melange.backends.link_synchronously is link
    assert melange.backends.testing.link_synchronously is link
    assert melange.message_dispatcher.MessageDispatcher is threaded.MessageDispatcher
    assert melange.policy.FailurePolicy is policy.FailurePolicy
    assert melange.heartbeat.Heartbeat is leases.Heartbeat
    assert melange.dispatch_core.settle is decisions.settle


def test_the_import_paths_of_the_backends_before_they_became_packages_keep_working() -> None:
    pytest.importorskip("boto3")
    from melange.backends import memory, sqlite
    from melange.backends.memory.backend import InMemoryMessagingBackend
    from melange.backends.sqlite.backend import SQLiteBackend
    from melange.backends.sqlite.inspect import QueueStats
    from melange.backends.sqs import backend, sqs_backend, topology, wire

    assert memory.InMemoryMessagingBackend is InMemoryMessagingBackend
    assert sqlite.SQLiteBackend is SQLiteBackend
    assert sqlite.QueueStats is QueueStats
    assert {"DEDUPLICATION_WINDOW_SECONDS", "SCHEMA_VERSION"} <= set(sqlite.__all__)
    assert sqs_backend.AWSBackend is backend.AWSBackend
    assert sqs_backend.SQSReceipt is wire.SQSReceipt
    assert sqs_backend.QueueUrl is topology.QueueUrl
    assert sqs_backend.TopicArn is topology.TopicArn
    assert sqs_backend.QUEUE_ATTRIBUTE_OPTIONS is topology.QUEUE_ATTRIBUTE_OPTIONS
    assert sqs_backend.DEFAULT_MAX_RECEIVE_COUNT == 4
