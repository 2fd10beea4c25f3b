"""From what ``melange asyncapi module:app`` points at to a :class:`ServiceDescription`.

``app`` may be:

- a :class:`ServiceDescription`;
- an object with a ``describe()`` method returning one (or anything else accepted here);
- a :class:`melange.service.Service`, or any object shaped like it (``name``, ``serializers``
  and ``queues``, each with ``queue``, ``consumers`` and ``options``): each queue becomes a
  ``receive`` operation of the message types of its typed serializers. A service does not
  say what it publishes, so chain ``sends(...)`` on :func:`describe_service`'s result for
  that;
- a function without arguments returning one of these;
- a list or tuple of these, merged into one description (the first one's title): e.g. a
  ``Service`` and a ``ServiceDescription`` of what it publishes.
"""

from __future__ import annotations

import inspect
from typing import Any

from melange.asyncapi.description import ServiceDescription
from melange.exceptions import ConfigurationError
from melange.serializers.registry import SerializerRegistry
from melange.serializers.typed import TypedSerializer


def describe(app: Any, _depth: int = 0) -> ServiceDescription:
    """The :class:`ServiceDescription` that ``app`` stands for (see the module docstring).

    Raises:
        ConfigurationError: ``app`` is none of the accepted objects.
    """
    if isinstance(app, ServiceDescription):
        return app
    if _depth > 3:
        raise ConfigurationError("describe() kept returning objects that must be described")
    method = getattr(app, "describe", None)
    if callable(method) and not isinstance(app, type):
        return describe(method(), _depth + 1)
    if isinstance(app, list | tuple):
        parts = [describe(item, _depth + 1) for item in app]
        if not parts:
            raise ConfigurationError("cannot describe an empty list")
        first = parts[0]
        merged = ServiceDescription(first.title, first.version, first.description)
        for part in parts:
            merged.merge(part)
        return merged
    if _looks_like_service(app):
        return describe_service(app)
    if callable(app) and _takes_no_argument(app):
        return describe(app(), _depth + 1)
    raise ConfigurationError(
        f"cannot describe a {type(app).__name__}: give a ServiceDescription, an object with a "
        "describe() method returning one, a Service, or a function returning one of them"
    )


def describe_service(service: Any) -> ServiceDescription:
    """A description of what ``service`` (a :class:`melange.service.Service`) consumes."""
    title = str(getattr(service, "name", "") or "melange service")
    description = ServiceDescription(title)
    default = getattr(service, "serializers", None)
    for settings in service.queues:
        source = settings.options.get("serializer_registry", default)
        serializers = SerializerRegistry.coerce(source).serializers if source is not None else []
        for serializer in serializers:
            if serializer not in description.serializers:
                description.serializers.append(serializer)
        messages = [
            cls
            for serializer in serializers
            if isinstance(serializer, TypedSerializer)
            for cls in serializer.message_types
        ]
        names = ", ".join(getattr(c, "name", type(c).__name__) for c in settings.consumers)
        summary = f"Consumed by {names}." if names else ""
        description.receives(settings.queue, *messages, summary=summary)
    return description


def _looks_like_service(app: Any) -> bool:
    queues = getattr(app, "queues", None)
    if isinstance(app, type) or not isinstance(queues, list | tuple):
        return False
    return all(hasattr(q, "queue") and hasattr(q, "options") for q in queues)


def _takes_no_argument(func: Any) -> bool:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return False
    return all(
        p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for p in signature.parameters.values()
    )


__all__ = ["describe", "describe_service"]
