"""JSON Schema regexes matched in linear time.

jsonschema matches `pattern` and `patternProperties` with Python's backtracking `re`, under
the interpreter lock: a seller's output schema holding `^(a+)+$`, checked against forty
characters at a redeem, would stop every thread of the node (and of a buyer checking that
seller's answers) for hours. Here those matches run on RE2, whose time is linear in the input:
`install()` points jsonschema's keyword code at `search` below. A pattern RE2 cannot run
(backreferences, lookaround) is refused where a schema enters, at Advertise (`problem`); met
anyway, it matches nothing, so a check fails closed instead of hanging.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import re2

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False
_MODULES = ("jsonschema._keywords", "jsonschema._utils", "jsonschema._legacy_keywords")


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str) -> Any:
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error:
        return None


def search(pattern: str, text: str) -> Any:
    """`re.search`, in linear time; None for a pattern RE2 cannot run."""
    compiled = _compiled(pattern)
    return compiled.search(text) if compiled is not None else None


class _Linear:
    """What jsonschema's keyword modules call `re` (they use only `search`)."""

    search = staticmethod(search)


def install() -> None:
    """Make jsonschema's `pattern`, `patternProperties` and `additionalProperties` match
    with RE2 (idempotent)."""
    import importlib

    for name in _MODULES:
        importlib.import_module(name).re = _Linear  # type: ignore[attr-defined]


def _patterns(schema: Any) -> Iterator[str]:
    if isinstance(schema, dict):
        if isinstance(schema.get("pattern"), str):
            yield schema["pattern"]
        if isinstance(schema.get("patternProperties"), dict):
            yield from schema["patternProperties"]
        for value in schema.values():
            yield from _patterns(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _patterns(value)


def problem(schema: Any) -> str:
    """Why a schema's patterns cannot be matched in linear time ("" if they can)."""
    for pattern in _patterns(schema):
        if _compiled(pattern) is None:
            return (f"pattern {pattern[:80]!r} is not supported (RE2 syntax: no "
                    "backreferences or lookaround)")
    return ""


install()

__all__ = ["install", "problem", "search"]
