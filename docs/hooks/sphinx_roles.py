"""Griffe extension: turn the reStructuredText roles in docstrings into API links.

Melange's docstrings refer to other objects with roles such as ``:class:`~melange.models.Message```
or ``:meth:`MessagingBackend.acknowledge```, which Markdown would show literally. Once the
package is loaded, each role becomes a cross-reference to the object it names (looked up as
written, then relative to the docstring's module and class); a ``~`` shows only the last part of
the name. References are *optional*: a target that is not on any page of the site renders as
plain code instead of failing the build, and a target that does not exist at all is plain code
from the start.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|mod|data|attr|exc|obj):`(?P<tilde>~?)(?P<target>[\w.]+)`")


class SphinxRoles(griffe.Extension):
    """Rewrites the roles of every docstring of the package as optional cross-references."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None and ":" in obj.docstring.value:
                obj.docstring.value = _ROLE.sub(_linker(obj), obj.docstring.value)


def _walk(obj: griffe.Object) -> Any:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)  # type: ignore[arg-type]


def _candidates(target: str, obj: griffe.Object) -> list[str]:
    scopes: list[str] = []
    current: griffe.Object | None = obj
    while current is not None:
        scopes.append(current.path)
        current = current.parent
    return [target] + [f"{scope}.{target}" for scope in scopes]


def _linker(obj: griffe.Object) -> Any:
    return lambda match: _link(match, obj)


def _link(match: re.Match[str], obj: griffe.Object) -> str:
    target = match.group("target")
    shown = target.rsplit(".", 1)[-1] if match.group("tilde") else target
    collection = obj.modules_collection
    for candidate in _candidates(target, obj):
        try:
            collection.get_member(candidate)
        except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        return f'<autoref identifier="{candidate}" optional><code>{shown}</code></autoref>'
    return f"`{shown}`"
