"""The documentation's SQS examples, run against the test endpoint as written.

Each script is the documentation's code with ``port=9324`` replaced by the test endpoint's
port (and its host when it is not ``localhost``). The examples that call ``AWSBackend()``
find the endpoint through ``AWS_ENDPOINT_URL``, as boto3 does. Where the documentation's code
cannot run as printed, the test says why and runs the smallest correction.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polling
import pytest
from hamcrest import assert_that, is_

from melange.backends.factory import MessagingBackendFactory
from melange.backends.sqs.backend import AWSBackend
from melange.backends.sqs.elasticmq import LocalSQSBackend
from melange.consumers import Consumer, SimpleMessageDispatcher
from melange.examples.doc_examples.probe import Probe
from melange.exceptions import ConfigurationError
from melange.publishers import QueuePublisher
from melange.serializers.pickle import PickleSerializer

MY_TEST_MESSAGE = """
class MyTestMessage:
    def __init__(self, message: str) -> None:
        self.message = message
"""


@pytest.fixture
def local_endpoint(sqs_endpoint: Any) -> Any:
    if not sqs_endpoint.port:
        pytest.skip("these examples need a local SQS endpoint (host and port)")
    return sqs_endpoint


@pytest.fixture
def run_example(
    local_endpoint: Any, tmp_path: Path
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Write ``code`` to ``tmp_path/<filename>`` (pointed at the test endpoint) and run it."""
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": local_endpoint.sqs_url,
        "AWS_REGION": local_endpoint.region,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }

    def run(filename: str, code: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        code = textwrap.dedent(code).replace("port=9324", f"port={local_endpoint.port}")
        code = code.replace('host="localhost"', f'host="{local_endpoint.host}"')
        (tmp_path / filename).write_text(code)
        result = subprocess.run(
            [sys.executable, filename],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        if check:
            assert result.returncode == 0, result.stderr
        return result

    return run


# -- tutorial --------------------------------------------------------------------------------

CREATE_QUEUE = """
from melange.backends.sqs.elasticmq import LocalSQSBackend
from melange.backends.factory import MessagingBackendFactory

backend = LocalSQSBackend(host="localhost", port=9324)
factory = MessagingBackendFactory(backend)
factory.init_queue("melangetutorial-queue")
"""

PUBLISH_EXAMPLE = f"""
from melange.message_publisher import QueuePublisher
from melange.backends.sqs.elasticmq import LocalSQSBackend
from melange.serializers.pickle import PickleSerializer

{MY_TEST_MESSAGE}

if __name__ == "__main__":
    backend = LocalSQSBackend(host="localhost", port=9324)
    serializer = PickleSerializer()
    publisher = QueuePublisher(serializer, backend)
    message = MyTestMessage("Hello World!")
    publisher.publish("melangetutorial-queue", message)
    print("Message sent successfully!")
"""

# The tutorial's consumer, with what it needs to run: the imports of SingleDispatchConsumer,
# listener and SimpleMessageDispatcher, the consumer passed to the dispatcher, and the
# dispatcher's variable name used for consume_loop.
CONSUMER_EXAMPLE = """
from melange.consumers import Consumer, ConsumerHandler, SingleDispatchConsumer, listener
from melange.consumers import SimpleMessageDispatcher
from melange.backends.sqs.elasticmq import LocalSQSBackend
from melange.serializers.pickle import PickleSerializer
from publish_example import MyTestMessage


class MyConsumer(SingleDispatchConsumer):
    @listener
    def on_my_test_message_received(self, event: MyTestMessage) -> None:
        print(event.message, flush=True)


if __name__ == "__main__":
    backend = LocalSQSBackend(host="localhost", port=9324, wait_time_seconds=1)
    serializer = PickleSerializer()
    consumer = MyConsumer()
    consumer_handler = SimpleMessageDispatcher(
        consumer,
        serializer,
        backend=backend,
    )
    print("Consuming...", flush=True)
    consumer_handler.consume_loop("melangetutorial-queue")
"""


def test_tutorial_creates_publishes_and_consumes(
    run_example: Callable[..., subprocess.CompletedProcess[str]],
    names: Any,
    tmp_path: Path,
    local_endpoint: Any,
) -> None:
    names.queues.append("melangetutorial-queue")
    run_example("create_queue.py", CREATE_QUEUE)
    published = run_example("publish_example.py", PUBLISH_EXAMPLE)
    assert "Message sent successfully!" in published.stdout
    code = CONSUMER_EXAMPLE.replace("port=9324", f"port={local_endpoint.port}")
    (tmp_path / "consumer_example.py").write_text(code)
    consumer = subprocess.Popen(
        [sys.executable, "consumer_example.py"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert consumer.stdout is not None
        for line in consumer.stdout:
            lines.append(line.strip())
            if line.strip() == "Hello World!":
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=60)
    consumer.terminate()  # SIGTERM: the loop settles what it holds and returns
    try:
        consumer.wait(timeout=30)
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait()
        if consumer.stdout is not None:
            consumer.stdout.close()
        if consumer.stderr is not None:
            consumer.stderr.close()
    assert lines[:2] == ["Consuming...", "Hello World!"], lines
    assert consumer.returncode == 0


# -- publishers and advanced topics ------------------------------------------------------------


def test_publishers_page_examples_publish_to_queue_and_topic(
    run_example: Callable[..., subprocess.CompletedProcess[str]],
    names: Any,
    make_aws_backend: Callable[..., AWSBackend],
    local_endpoint: Any,
) -> None:
    names.queues.append("melangetutorial-queue")
    names.topics.append("melangetutorial-topic")
    backend = make_aws_backend(wait_time_seconds=1)
    factory = MessagingBackendFactory(backend)
    factory.init_queue("melangetutorial-queue")
    # Topics are never created on publish: the topic must exist first.
    factory.init_queue("melangetutorial-topic-reader", "melangetutorial-topic")
    names.queues.append("melangetutorial-topic-reader")
    to_queue = run_example("queue_publisher.py", PUBLISH_EXAMPLE)
    to_topic = run_example(
        "topic_publisher.py",
        PUBLISH_EXAMPLE.replace("QueuePublisher", "TopicPublisher").replace(
            '"melangetutorial-queue"', '"melangetutorial-topic"'
        ),
    )
    assert "Message sent successfully!" in to_queue.stdout
    assert "Message sent successfully!" in to_topic.stdout
    for queue in ("melangetutorial-queue", "melangetutorial-topic-reader"):
        got = backend.retrieve_messages(backend.get_queue(queue), wait_seconds=5)
        assert [m.manifest for m in got] == ["MyTestMessage"]
        backend.acknowledge_batch(got)


BACKEND_MANAGER_EXAMPLE = f"""
from melange.message_publisher import QueuePublisher
from melange.backends.sqs.elasticmq import LocalSQSBackend
from melange.backends.sqs.backend_manager import BackendManager
from melange.serializers.pickle import PickleSerializer

{MY_TEST_MESSAGE}

if __name__ == "__main__":
    backend = LocalSQSBackend(host="localhost", port=9324)
    serializer = PickleSerializer()
    BackendManager().use_backend(backend)

    publisher = QueuePublisher(serializer)
    message = MyTestMessage("Hello World!")
    publisher.publish("melangetutorial-queue", message)
    print("Message sent successfully!")
"""


def test_backend_manager_example_publishes_without_passing_the_backend(
    run_example: Callable[..., subprocess.CompletedProcess[str]],
    names: Any,
    make_aws_backend: Callable[..., AWSBackend],
) -> None:
    names.queues.append("melangetutorial-queue")
    run_example("create_queue.py", CREATE_QUEUE)
    result = run_example("manager_example.py", BACKEND_MANAGER_EXAMPLE)
    assert "Message sent successfully!" in result.stdout
    backend = make_aws_backend(wait_time_seconds=1)
    got = backend.retrieve_messages(backend.get_queue("melangetutorial-queue"), wait_seconds=5)
    assert [m.manifest for m in got] == ["MyTestMessage"]
    backend.acknowledge_batch(got)


# -- factory ---------------------------------------------------------------------------------

FACTORY_HEADER = """
from melange.backends.sqs.backend import AWSBackend
from melange.backends.factory import MessagingBackendFactory

backend = AWSBackend()
factory = MessagingBackendFactory(backend)
"""


def test_factory_examples_create_fifo_queue_and_topic(
    run_example: Callable[..., subprocess.CompletedProcess[str]], names: Any, sqs: Any, sns: Any
) -> None:
    names.queues.append("payment-updates.fifo")
    names.topics.append("my-topic")
    run_example("fifo_queue.py", FACTORY_HEADER + 'factory.init_queue("payment-updates.fifo")\n')
    run_example("topic.py", FACTORY_HEADER + 'factory.init_topic("my-topic")\n')
    url = sqs.get_queue_url(QueueName="payment-updates.fifo")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["FifoQueue"])
    assert attributes["Attributes"]["FifoQueue"] == "true"
    arns = [t["TopicArn"] for t in sns.list_topics()["Topics"]]
    assert any(arn.endswith(":my-topic") for arn in arns)


def test_factory_examples_naming_the_queue_as_its_own_dead_letter_queue_are_refused(
    run_example: Callable[..., subprocess.CompletedProcess[str]], names: Any
) -> None:
    # The documentation passes dead_letter_queue_name="payment-updates.fifo" for the queue
    # payment-updates.fifo itself; a queue cannot be its own dead-letter queue.
    names.queues.append("payment-updates.fifo")
    for code in (
        'factory.init_queue("payment-updates.fifo", '
        'dead_letter_queue_name="payment-updates.fifo")\n',
        'factory.init_queue("payment-updates.fifo", "my-topic-1", "my-topic-2", "my-topic-3", '
        'dead_letter_queue_name="payment-updates.fifo")\n',
    ):
        result = run_example("own_dlq.py", FACTORY_HEADER + code, check=False)
        assert result.returncode != 0
        assert "cannot be its own dead-letter queue" in result.stderr


def test_factory_example_subscribing_a_queue_to_several_topics(
    make_aws_backend: Callable[..., AWSBackend], names: Any, sns: Any
) -> None:
    # The documented call with a distinct dead-letter queue name (and a standard queue, as SNS
    # only feeds FIFO queues from FIFO topics).
    backend = make_aws_backend(wait_time_seconds=1)
    queue, dlq = names.queue("payment-updates"), names.queue("payment-updates-dlq")
    topics = [names.topic("my-topic-1"), names.topic("my-topic-2"), names.topic("my-topic-3")]
    MessagingBackendFactory(backend).init_queue(queue, *topics, dead_letter_queue_name=dlq)
    for topic in topics:
        arn = backend.get_topic(topic).unwrapped_obj
        [subscription] = sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]
        assert subscription["Endpoint"].endswith(":" + queue)
    assert backend.get_queue(dlq).name == dlq
    with pytest.raises(ConfigurationError, match="FIFO topics"):
        MessagingBackendFactory(backend).init_queue(names.queue(fifo=True), *topics)


# -- testing page ----------------------------------------------------------------------------


class StateProbe(Probe):
    def __init__(self, state: State) -> None:
        self.state = state

    def sample(self) -> None:
        pass

    def can_be_measured(self) -> bool:
        self.sample()
        return self.state.value_set is not None

    def wait(self) -> None:
        try:
            polling.poll(self.can_be_measured, 1, timeout=60)
        except polling.TimeoutException as e:
            raise Exception("Timeout!") from e


@dataclass
class State:
    value_set: int | None = None


@pytest.fixture
def sqs_env(local_endpoint: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQSHOST", local_endpoint.host)
    monkeypatch.setenv("SQSPORT", str(local_endpoint.port))


def test_async_consumer(request: pytest.FixtureRequest, sqs_env: None) -> None:
    serializer = PickleSerializer()

    # We'll use the ElasticMQ as backend since it works like a real SQS queue
    backend = LocalSQSBackend(host=os.environ.get("SQSHOST"), port=os.environ.get("SQSPORT"))
    queue_name = "testqueue"

    # Initialize the queue
    queue = MessagingBackendFactory(backend).init_queue(queue_name)

    # Delete the queue upon finishing the execution of the test
    def teardown() -> None:
        backend.delete_queue(queue)

    request.addfinalizer(teardown)

    # Create a consumer that, upon receiving a message, will set
    # the variable "value set" to later assert that this value
    # has, indeed, been set by the consumer that is running on another thread
    state = State()

    def set_state(message: dict[str, Any]) -> None:
        state.value_set = message["value"]

    consumer = Consumer(on_message=set_state)
    handler = SimpleMessageDispatcher(consumer, serializer, backend=backend)
    # Start the consumer loop thread to run the consumer loop in the background
    threading.Thread(target=lambda: handler.consume_loop(queue_name), daemon=True).start()

    # Publish a message and...
    publisher = QueuePublisher(serializer, backend)
    publisher.publish(queue_name, {"value": 1})

    # ...wait until the value is set
    probe = StateProbe(state)
    probe.wait()

    assert_that(state.value_set, is_(1))
    handler.stop()
