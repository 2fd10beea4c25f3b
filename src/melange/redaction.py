"""URLs with their secrets hidden, for errors, log lines and ``repr``.

Connection URLs carry passwords (``amqp://user:password@host``, ``redis://:password@host``),
AWS secret keys (``sqs://KEY_ID:SECRET@host:port``) and, in their query, tokens
(``?aws_secret_access_key=...``). Whatever Melange says about a URL goes through
:func:`redact_url` first.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

#: What stands in for a hidden secret.
MASK = "***"

# Query parameters whose value is a secret (compared in lower case).
_SECRET_PARAMETERS = frozenset(
    {
        "password",
        "passwd",
        "pass",
        "secret",
        "token",
        "aws_secret_access_key",
        "aws_session_token",
        "secret_access_key",
        "session_token",
        "sslpassword",
        "api_key",
        "apikey",
    }
)


def _secret_parameter(name: str) -> bool:
    lowered = name.lower()
    return lowered in _SECRET_PARAMETERS or "password" in lowered or "secret" in lowered


def _redact_query(query: str) -> str:
    pieces = []
    for piece in query.split("&"):
        name, sep, _value = piece.partition("=")
        pieces.append(f"{name}={MASK}" if sep and _secret_parameter(name) else piece)
    return "&".join(pieces)


def redact_url(url: str) -> str:
    """``url`` with the password of its user information and secret query values replaced
    by ``***``; the user name, host, port, path and other parameters are kept.

    Text that is not a URL, or that cannot be parsed, keeps nothing that could be a secret:
    what precedes a ``@`` is masked.
    """
    if not isinstance(url, str):
        return MASK
    if "://" not in url:
        return f"{MASK}@{url.rpartition('@')[2]}" if "@" in url else url
    try:
        parts = urlsplit(url)
    except ValueError:
        scheme = url.partition("://")[0]
        return f"{scheme}://{MASK}"
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.partition(":")[0]
        netloc = f"{user}:{MASK}@{hostport}"
    query = _redact_query(parts.query) if parts.query else parts.query
    # Rebuilt by hand: urlunsplit would drop the "//" of a URL without a host (sqs://?...).
    text = f"{parts.scheme}://{netloc}{parts.path}"
    if query:
        text += f"?{query}"
    if parts.fragment:
        text += f"#{parts.fragment}"
    return text


def redact_text(text: str, *urls: str) -> str:
    """``text`` with every occurrence of each of ``urls`` replaced by its redacted form
    (for messages of other libraries that quote a URL they were given)."""
    for url in urls:
        if not url:
            continue
        text = text.replace(url, redact_url(url))
        for secret in _secrets_of(url):
            text = text.replace(secret, MASK)
    return text


def _secrets_of(url: str) -> list[str]:
    """The secret values of ``url``, as written and percent-decoded (longest first)."""
    found: set[str] = set()
    try:
        parts = urlsplit(url)
        password = parts.password
        query = parts.query
    except ValueError:
        return []
    if password:
        found.add(password)
    for piece in query.split("&"):
        name, sep, value = piece.partition("=")
        if sep and value and _secret_parameter(name):
            found.add(value)
    found |= {unquote(secret) for secret in found}
    return sorted((secret for secret in found if secret), key=len, reverse=True)


__all__ = ["MASK", "redact_text", "redact_url"]
