"""The AsyncAPI 3.0 document of a service: its channels, operations and message schemas.

``melange asyncapi module:app`` writes it; in code::

    from melange.asyncapi import ServiceDescription, build_document, dump

    description = ServiceDescription("payments").topic("orders", OrderPlaced)
    print(dump(build_document(description), "yaml"))

See :mod:`melange.asyncapi.description` for what a description holds and
:mod:`melange.asyncapi.adapters` for the objects ``module:app`` may name.
"""

from melange.asyncapi.adapters import describe, describe_service
from melange.asyncapi.description import OperationSpec, QueueSpec, ServiceDescription, TopicSpec
from melange.asyncapi.document import ASYNCAPI_VERSION, build_document, dump
from melange.asyncapi.servers import server_from_url

__all__ = [
    "ASYNCAPI_VERSION",
    "OperationSpec",
    "QueueSpec",
    "ServiceDescription",
    "TopicSpec",
    "build_document",
    "describe",
    "describe_service",
    "dump",
    "server_from_url",
]
