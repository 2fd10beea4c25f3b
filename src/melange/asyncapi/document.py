"""Building the AsyncAPI 3.0 document of a :class:`ServiceDescription`, and writing it.

The document maps Melange's concepts onto AsyncAPI's:

- every topic and every queue (dead-letter queues included) is a *channel* whose address is
  its name; a queue's subscriptions to topics are told in its description and in the
  ``x-melange-subscriptions`` extension (topic and manifest filter of each);
- every message type is a *message* under ``components.messages``, named by its manifest,
  with the JSON Schema of its payload, the headers Melange sends, and the extensions
  ``x-melange-manifest``, ``x-melange-schema-version`` and (when the service's serializer for
  it is known) ``x-melange-serializer-id``;
- what the service publishes and consumes are ``send`` and ``receive`` *operations*.
"""

from __future__ import annotations

import importlib
import json
import re
from typing import Any, Literal

from melange.asyncapi.description import QueueSpec, ServiceDescription
from melange.asyncapi.schemas import MessageSchema, message_schema
from melange.exceptions import ConfigurationError
from melange.serializers.message_types import manifest_of

#: The AsyncAPI version of the documents written.
ASYNCAPI_VERSION = "3.0.0"
#: Where payload schemas refer to each other.
SCHEMAS_PREFIX = "#/components/schemas/"

#: The output formats.
DocumentFormat = Literal["json", "yaml"]

_KEY = re.compile(r"[^\w.\-]")


def component_key(name: str) -> str:
    """``name`` as an AsyncAPI map key (letters, digits, ``_ . -``; others become ``_``)."""
    return _KEY.sub("_", name)


def _operation_id(action: str, destination: str) -> str:
    words = re.split(r"[^A-Za-z0-9]+", destination)
    return action + "".join(word[:1].upper() + word[1:] for word in words if word)


def build_document(
    description: ServiceDescription, servers: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``description`` as a dict (ready for JSON or YAML).

    Args:
        description: What the service declares.
        servers: AsyncAPI server objects by name (see :func:`server_from_url`).

    Raises:
        ConfigurationError: A message type has no JSON Schema, two message types travel
            under one manifest, or two differ under one schema name.
    """
    messages: dict[type[Any], MessageSchema] = {}
    schemas: dict[str, dict[str, Any]] = {}
    keys: dict[str, type[Any]] = {}

    def message_ref(cls: type[Any]) -> str:
        found = messages.get(cls)
        if found is None:
            found = messages[cls] = message_schema(cls, description.serializers, SCHEMAS_PREFIX)
            key = component_key(found.manifest)
            if keys.setdefault(key, cls) is not cls:
                raise ConfigurationError(
                    f"{keys[key].__qualname__} and {cls.__qualname__} both travel as "
                    f"{found.manifest!r}"
                )
            for name, schema in found.definitions.items():
                if schemas.setdefault(name, schema) != schema:
                    raise ConfigurationError(
                        f"two different schemas are named {name!r}; rename one of the classes"
                    )
        return component_key(found.manifest)

    channels: dict[str, dict[str, Any]] = {}

    def channel(name: str, text: str, carried: list[type[Any]]) -> dict[str, Any]:
        entry: dict[str, Any] = {"address": name, "description": text}
        if carried:
            entry["messages"] = {
                message_ref(cls): {"$ref": f"#/components/messages/{message_ref(cls)}"}
                for cls in carried
            }
        channels[component_key(name)] = entry
        return entry

    for topic in description.topics.values():
        carried = list(topic.messages)
        for operation in description.operations:
            if operation.destination == topic.name:
                carried.extend(c for c in operation.messages if c not in carried)
        channel(topic.name, topic.description or f"Topic {topic.name}.", carried)
    for queue in description.queues.values():
        entry = channel(queue.name, _queue_text(queue), _queue_messages(description, queue))
        if queue.topics:
            entry["x-melange-subscriptions"] = [
                {"topic": topic, "filterEvents": list(queue.filter_events)}
                for topic in queue.topics
            ]
        if queue.dead_letter_queue:
            entry["x-melange-dead-letter-queue"] = queue.dead_letter_queue
            if component_key(queue.dead_letter_queue) not in channels:
                channel(
                    queue.dead_letter_queue,
                    f"Dead-letter queue of {queue.name}: the messages its consumers could not "
                    "handle or decode, with the reason in their melange_failure_* headers.",
                    [],
                )

    operations: dict[str, dict[str, Any]] = {}
    for operation in description.operations:
        key = component_key(operation.destination)
        carried = operation.messages or _channel_classes(description, operation.destination)
        entry = {
            "action": operation.action,
            "channel": {"$ref": f"#/channels/{key}"},
            "messages": [
                {"$ref": f"#/channels/{key}/messages/{message_ref(cls)}"} for cls in carried
            ],
        }
        if operation.summary:
            entry["summary"] = operation.summary
        operations[_operation_id(operation.action, operation.destination)] = entry

    document: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {"title": description.title, "version": description.version},
        "defaultContentType": "application/json",
    }
    if description.description:
        document["info"]["description"] = description.description
    if servers:
        document["servers"] = servers
    document["channels"] = channels
    document["operations"] = operations
    document["components"] = {
        "messages": {component_key(m.manifest): _message(m) for m in messages.values()},
        "schemas": schemas,
    }
    return document


def _queue_text(queue: QueueSpec) -> str:
    text = f"Queue {queue.name}"
    if queue.topics:
        text += f", subscribed to {', '.join(queue.topics)}"
        if queue.filter_events:
            text += f" (only {', '.join(queue.filter_events)})"
    return queue.description or text + "."


def _queue_messages(description: ServiceDescription, queue: QueueSpec) -> list[type[Any]]:
    carried = list(queue.messages)
    wanted = set(queue.filter_events)
    for topic in queue.topics:
        for cls in _channel_classes(description, topic):
            if cls in carried:
                continue
            if not wanted or manifest_of(cls) in wanted:
                carried.append(cls)
    return carried


def _channel_classes(description: ServiceDescription, name: str) -> list[type[Any]]:
    found: list[type[Any]] = []
    if name in description.topics:
        found.extend(description.topics[name].messages)
    if name in description.queues:
        found.extend(description.queues[name].messages)
    for operation in description.operations:
        if operation.destination == name:
            found.extend(c for c in operation.messages if c not in found)
    return found


def _message(schema: MessageSchema) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": schema.manifest,
        "title": schema.message_class.__name__,
        "contentType": "application/json",
        "headers": schema.headers,
        "payload": schema.payload,
        "x-melange-manifest": schema.manifest,
        "x-melange-schema-version": schema.version,
    }
    if schema.description:
        message["summary"] = schema.description
    if schema.serializer_id is not None:
        message["x-melange-serializer-id"] = schema.serializer_id
    return message


def dump(document: dict[str, Any], fmt: DocumentFormat = "yaml") -> str:
    """``document`` as YAML (needs PyYAML: ``pip install 'melange[asyncapi]'``) or JSON."""
    if fmt == "json":
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    try:
        # Imported by name: PyYAML is optional and ships no type information.
        yaml = importlib.import_module("yaml")
    except ImportError as exc:
        raise ConfigurationError(
            "writing YAML needs PyYAML: pip install 'melange[asyncapi]' (or ask for JSON)"
        ) from exc
    text: str = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    return text


__all__ = [
    "ASYNCAPI_VERSION",
    "DocumentFormat",
    "build_document",
    "component_key",
    "dump",
]
