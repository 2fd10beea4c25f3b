"""Backends named by URL, so a service picks its broker from configuration.

| URL | backend |
|---|---|
| `memory://` | `InMemoryMessagingBackend` |
| `sqlite:///relative/path.db` | `SQLiteBackend` on `relative/path.db` |
| `sqlite:////absolute/path.db` | `SQLiteBackend` on `/absolute/path.db` |
| `sqlite://:memory:` (or `sqlite://`) | an SQLite broker inside this process only |
| `sqs://?region=eu-west-1` | `AWSBackend` (add `endpoint_url=...` for a compatible server) |
| `sqs://localhost:9324` | `LocalSQSBackend` on that host and port (see `sns_host`, `sns_port`) |
| `amqp://user:password@host:5672/vhost` | `RabbitMQBackend` (`amqps://` for TLS) |
| `nats://host:4222` | `NATSBackend` on NATS JetStream (`nats://h1:4222,h2:4222` for a cluster) |
| `redis+streams://[:password@]host:6379/0` | `RedisStreamsBackend` (`rediss+streams://` for TLS) |
| `kafka://host:9092,host:9092` | `KafkaBackend` on those brokers |
| `kombu+redis://host:6379/0` | `KombuBackend` on kombu's Redis transport |
| `kombu+amqp://user:password@host:5672/vhost` | `KombuBackend` on kombu's AMQP transport |

As with other database URLs, the path of an ``sqlite`` URL is what follows the third slash:
three slashes for a relative path, four for an absolute one.

Query parameters set the backend's keyword options, converted to the type of the option's
default value (``sqlite:///melange.db?synchronous=FULL&visibility_timeout=60``,
``amqp://guest:guest@localhost/%2F?prefetch_count=50``); ``region`` and ``endpoint`` are
short for ``region_name`` and ``endpoint_url``. An option the backend does not take is an
error naming the ones it does. Query parameters of an ``amqp`` URL that are not options of
``RabbitMQBackend`` (``channel_max``, ``frame_max``...) stay in the URL for the AMQP client
to read. ``sqs://ACCESS_KEY_ID:SECRET_ACCESS_KEY@...`` passes AWS credentials.

:func:`backend_from_env` reads the URL from ``MELANGE_BACKEND_URL`` and falls back to
:func:`default_backend_url`, an SQLite file ``melange.db`` in the current directory: the
embedded default, which needs no server. Broker clients are imported only when their scheme
is used.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from melange.backends.interfaces import MessagingBackend
from melange.exceptions import ConfigurationError
from melange.redaction import redact_text, redact_url

#: The environment variable :func:`backend_from_env` reads.
ENV_VARIABLE = "MELANGE_BACKEND_URL"

#: The forms a backend URL may take, for error messages.
URL_FORMS = (
    "memory://",
    "sqlite:///relative/path.db",
    "sqlite:////absolute/path.db",
    "sqlite://:memory:",
    "sqs://?region=eu-west-1[&endpoint_url=http://host:port]",
    "sqs://host:port",
    "amqp://user:password@host:port/vhost",
    "redis+streams://[:password@]host:port/db",
    "nats://host:4222",
    "kafka://host:port,host:port",
    "kombu+<kombu transport>://... (kombu+redis://host:port/db, kombu+amqp://host:port/vhost)",
)

_ALIASES = {"region": "region_name", "endpoint": "endpoint_url"}

# Options that a URL cannot express (objects, callables) or that the URL itself sets.
_NOT_FROM_QUERY = {
    "memory": {"clock"},
    "sqlite": {"clock", "path"},
    "sqs": {"session", "config"},
    "localsqs": {"session", "config", "host", "port"},
    "amqp": {"url", "credentials", "host", "port", "virtual_host", "username", "password"},
    "redis+streams": {"url", "client"},
    "nats": {"url"},
    "kafka": {"url", "client_config"},
    "kombu": {"url", "transport_options"},
}


def default_backend_url() -> str:
    """The embedded default: an SQLite file ``melange.db`` in the current directory."""
    return "sqlite:///melange.db"


def backend_from_env(
    environ: Mapping[str, str] | None = None, *, default: str | None = None
) -> MessagingBackend:
    """The backend named by ``MELANGE_BACKEND_URL``.

    Args:
        environ: Where to read the variable (default: ``os.environ``).
        default: URL to use when the variable is unset or empty (default:
            :func:`default_backend_url`).
    """
    env = os.environ if environ is None else environ
    url = (env.get(ENV_VARIABLE) or "").strip()
    if url:
        try:
            return backend_from_url(url)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{ENV_VARIABLE}={_redact(url)!r}: {exc}") from exc
    return backend_from_url(default or default_backend_url())


def backend_from_url(url: str) -> MessagingBackend:
    """Create the backend a URL names (see the module documentation for the forms).

    Raises:
        ConfigurationError: the scheme is unknown, a part is missing, or an option is not one
            the backend takes; the message shows the expected form.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"backend URL {_redact(url)!r} has no scheme; expected one of: {', '.join(URL_FORMS)}"
        )
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    resolver = _RESOLVERS.get(scheme)
    if resolver is None and scheme.startswith("kombu+"):
        resolver = _kombu  # any kombu transport: kombu+redis, kombu+amqp, kombu+sqs...
    if resolver is None:
        raise ConfigurationError(
            f"unknown backend URL scheme {scheme!r} in {_redact(url)!r}; expected one of: "
            f"{', '.join(URL_FORMS)}"
        )
    if parts.fragment:
        raise ConfigurationError(f"backend URL {_redact(url)!r} must not have a #fragment")
    return resolver(url.strip())


# -- resolvers ------------------------------------------------------------------------------


def _memory(url: str) -> MessagingBackend:
    from melange.backends.memory import InMemoryMessagingBackend

    parts = urlsplit(url)
    if parts.netloc or parts.path not in ("", "/"):
        raise ConfigurationError(
            f"the in-memory backend takes no host or path, got {_redact(url)!r}; use memory://"
        )
    options = _options(url, _query(parts.query), InMemoryMessagingBackend, "memory")
    return InMemoryMessagingBackend(**options)


def _sqlite(url: str) -> MessagingBackend:
    from melange.backends.sqlite import SQLiteBackend

    parts = urlsplit(url)
    if (parts.netloc == ":memory:" and not parts.path) or (
        not parts.netloc and parts.path in ("", "/:memory:")
    ):
        path = ":memory:"
    elif parts.netloc:
        raise ConfigurationError(
            f"an sqlite URL has no host, got {_redact(url)!r}; use "
            "sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    else:
        # What follows the third slash: "/data/m.db" -> "data/m.db", "//var/m.db" -> "/var/m.db".
        path = unquote(parts.path[1:])
    if not path or path.endswith("/"):
        raise ConfigurationError(
            f"sqlite URL {_redact(url)!r} names no database file; use "
            "sqlite:///relative/path.db, "
            "sqlite:////absolute/path.db or sqlite://:memory:"
        )
    options = _options(url, _query(parts.query), SQLiteBackend, "sqlite")
    return SQLiteBackend(path, **options)


def _sqs(url: str) -> MessagingBackend:
    from melange.backends.sqs.backend import AWSBackend

    parts = urlsplit(url)
    query = _query(parts.query)
    if parts.path not in ("", "/"):
        raise ConfigurationError(
            f"an sqs URL has no path, got {parts.path!r} in {_redact(url)!r}; use "
            "sqs://?region=eu-west-1 or sqs://host:port"
        )
    # Credentials may come as user:password (access key id and secret key).
    credentials: dict[str, str] = {}
    if parts.username is not None or parts.password is not None:
        if not parts.username or not parts.password:
            raise ConfigurationError(
                f"sqs URL {_redact(url)!r} gives only part of the credentials; use "
                "sqs://ACCESS_KEY_ID:SECRET_ACCESS_KEY@... or none"
            )
        credentials = {
            "aws_access_key_id": unquote(parts.username),
            "aws_secret_access_key": unquote(parts.password),
        }
        if set(credentials) & set(query):
            raise ConfigurationError(
                f"sqs URL {_redact(url)!r} gives the credentials twice (user:password and "
                "in the query); give them once"
            )
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"sqs URL {_redact(url)!r} has a bad port: {exc}") from exc
    if not parts.hostname:
        if port is not None:
            raise ConfigurationError(f"sqs URL {_redact(url)!r} has a port but no host")
        options: dict[str, Any] = {**_options(url, query, AWSBackend, "sqs"), **credentials}
        return AWSBackend(**options)
    from melange.backends.sqs.localsqs import LocalSQSBackend

    if port is None:
        raise ConfigurationError(
            f"sqs URL {_redact(url)!r} needs a host and a port for a local SQS server, e.g. "
            "sqs://localhost:9324 (or sqs://?region=eu-west-1 for AWS)"
        )
    if "endpoint_url" in query:
        raise ConfigurationError(
            f"sqs URL {_redact(url)!r} gives both host:port and endpoint_url; give one"
        )
    extra: dict[str, Callable[[str], Any]] = {"sns_host": str, "sns_port": int}
    options = {**_options(url, query, AWSBackend, "localsqs", extra), **credentials}
    return LocalSQSBackend(parts.hostname, port, **options)


def _amqp(url: str) -> MessagingBackend:
    from melange.backends.rabbitmq.rabbitmq_backend import RabbitMQBackend

    parts = urlsplit(url)
    if not parts.hostname:
        raise ConfigurationError(
            f"amqp URL {_redact(url)!r} needs a host, e.g. amqp://guest:guest@localhost:5672/%2F"
        )
    query = _query(parts.query)
    accepted = _accepted(RabbitMQBackend, "amqp")
    ours = {name: value for name, value in query.items() if name in accepted}
    # The rest are connection parameters the AMQP client reads from the URL itself.
    rest = [(name, value) for name, value in query.items() if name not in accepted]
    client_url = urlunsplit(parts._replace(query=urlencode(rest)))
    return RabbitMQBackend(client_url, **_options(url, ours, RabbitMQBackend, "amqp"))


def _redis_streams(url: str) -> MessagingBackend:
    from melange.backends.redis_streams import RedisStreamsBackend

    parts = urlsplit(url)
    if not parts.hostname:
        raise ConfigurationError(
            f"redis+streams URL {_redact(url)!r} needs a host, e.g. redis+streams://localhost:6379/0"
        )
    options = _options(url, _query(parts.query), RedisStreamsBackend, "redis+streams")
    # The query holds only the backend's options; the client reads host, port, db, password.
    return RedisStreamsBackend(urlunsplit(parts._replace(query="")), **options)


def _nats(url: str) -> MessagingBackend:
    from melange.backends.nats.backend import NATSBackend

    parts = urlsplit(url)
    if not parts.netloc or parts.path not in ("", "/"):
        raise ConfigurationError(
            f"nats URL {_redact(url)!r} needs a host and no path, e.g. nats://localhost:4222"
        )
    options = _options(url, _query(parts.query), NATSBackend, "nats")
    return NATSBackend(urlunsplit(parts._replace(query="")), **options)


def _kafka(url: str) -> MessagingBackend:
    from melange.backends.kafka import KafkaBackend

    parts = urlsplit(url)
    if not parts.netloc or parts.path not in ("", "/"):
        raise ConfigurationError(
            f"kafka URL {_redact(url)!r} needs brokers and no path, e.g. "
            "kafka://host:9092,host:9092"
        )
    options = _options(url, _query(parts.query), KafkaBackend, "kafka")
    return KafkaBackend(urlunsplit(parts._replace(query="")), **options)


def _kombu(url: str) -> MessagingBackend:
    from melange.backends.kombu import KombuBackend

    parts = urlsplit(url)
    if parts.scheme.lower() == "kombu+":
        raise ConfigurationError(
            f"kombu URL {_redact(url)!r} needs a transport, e.g. kombu+redis://localhost:6379/0"
        )
    query = _query(parts.query)
    accepted = _accepted(KombuBackend, "kombu")
    ours = {name: value for name, value in query.items() if name in accepted}
    # The rest are transport parameters kombu reads from the URL itself.
    rest = [(name, value) for name, value in query.items() if name not in accepted]
    client_url = urlunsplit(parts._replace(query=urlencode(rest)))
    options = _options(url, ours, KombuBackend, "kombu")
    try:
        return KombuBackend(client_url, **options)
    except TypeError as exc:  # kombu refused a transport parameter of the query
        raise ConfigurationError(
            f"backend URL {_redact(url)!r}: kombu refused a query parameter ({exc}); "
            f"KombuBackend takes: {', '.join(sorted(accepted))}"
        ) from None


_RESOLVERS: dict[str, Callable[[str], MessagingBackend]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "sqs": _sqs,
    "amqp": _amqp,
    "amqps": _amqp,
    "redis+streams": _redis_streams,
    "rediss+streams": _redis_streams,
    "nats": _nats,
    "kafka": _kafka,
}


# -- options --------------------------------------------------------------------------------


def _query(query: str) -> dict[str, str]:
    pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
    options: dict[str, str] = {}
    for name, value in pairs:
        key = _ALIASES.get(name, name)
        if key in options:
            raise ConfigurationError(f"backend URL option {name!r} is given twice")
        options[key] = value
    return options


def _accepted(cls: type, kind: str) -> dict[str, inspect.Parameter]:
    """The keyword options of ``cls`` a URL query may set."""
    excluded = _NOT_FROM_QUERY[kind]
    return {
        name: param
        for name, param in inspect.signature(cls).parameters.items()
        if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY) and name not in excluded
    }


def _options(
    url: str,
    query: Mapping[str, str],
    cls: type,
    kind: str,
    extra: Mapping[str, Callable[[str], Any]] | None = None,
) -> dict[str, Any]:
    accepted = _accepted(cls, kind)
    converters: dict[str, Callable[[str], Any]] = dict(extra or {})
    options: dict[str, Any] = {}
    for name, raw in query.items():
        if name in converters:
            convert = converters[name]
        elif name in accepted:
            convert = _converter(accepted[name])
        else:
            known = sorted({*accepted, *converters})
            raise ConfigurationError(
                f"unknown option {name!r} in backend URL {_redact(url)!r}; "
                f"{cls.__name__} takes: {', '.join(known)}"
            )
        shown = "***" if _secret_option(name) else repr(raw)
        try:
            options[name] = convert(raw)
        except ValueError as exc:
            reason = redact_text(str(exc), url) if shown != "***" else "not a valid value"
            raise ConfigurationError(
                f"option {name}={shown} in backend URL {_redact(url)!r}: {reason}"
            ) from None
    return options


def _converter(param: inspect.Parameter) -> Callable[[str], Any]:
    """Convert to the type of the option's default, or of its annotation when that is None."""
    default = param.default
    if default is None or default is param.empty:
        annotation = param.annotation
        text = str(getattr(annotation, "__name__", annotation))
        names = {part.strip() for part in text.split("|")}
        for name, convert in (("bool", _boolean), ("int", int), ("float", _finite)):
            if name in names:
                return convert
        return str
    if isinstance(default, bool):
        return _boolean
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return _finite
    return str


def _finite(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


def _secret_option(name: str) -> bool:
    return "secret" in name or "password" in name or "token" in name


def _boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _redact(url: str) -> str:
    """The URL without its password or secret parameters, for error messages."""
    return redact_url(url)


__all__ = [
    "ENV_VARIABLE",
    "URL_FORMS",
    "backend_from_env",
    "backend_from_url",
    "default_backend_url",
]
