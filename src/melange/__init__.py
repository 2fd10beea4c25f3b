"""Melange: messaging for event-driven Python microservices.

Publish with :class:`QueuePublisher` / :class:`TopicPublisher`, consume with
:class:`Consumer` / :class:`SingleDispatchConsumer` attached to a :class:`MessageDispatcher`,
over any :class:`~melange.backends.interfaces.MessagingBackend`.
"""

from melange.aio import AsyncMessageDispatcher, AsyncQueuePublisher, AsyncTopicPublisher
from melange.backends.backend_manager import BackendManager
from melange.backends.factory import MessagingBackendFactory
from melange.backends.interfaces import BackendCapabilities, MessagingBackend
from melange.backends.memory import InMemoryMessagingBackend
from melange.backends.testing import link_synchronously
from melange.consumers import Consumer, SingleDispatchConsumer, consumer, listener
from melange.context import current_message
from melange.deduplication.cache import DeduplicationCache, InMemoryCache, NullCache
from melange.exceptions import MelangeError
from melange.message_dispatcher import (
    ConsumerHandler,
    DispatcherStats,
    MessageDispatcher,
    SimpleMessageDispatcher,
)
from melange.models import Message, QueueWrapper, TopicWrapper
from melange.policy import FailurePolicy
from melange.publishers import QueuePublisher, TopicPublisher
from melange.serializers import (
    JSONSerializer,
    JsonSerializer,
    MessageSerializer,
    PickleSerializer,
    Serializer,
    SerializerRegistry,
)

__version__ = "8.0.0.dev0"

__all__ = [
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
]
