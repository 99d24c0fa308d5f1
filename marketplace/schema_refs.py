"""JSON Schema references a stranger's schema may hold: local ones that end.

A listing's schemas are checked by its buyers (each output) and by the node (each redeemed
receipt). jsonschema fetches a remote `$ref` over HTTP as it validates (the validating host
dials wherever the seller pointed it, and the check fails when the fetch does), and follows a
reference that leads back to itself without reading deeper into the value (`{"$ref": "#"}`,
`a -> allOf -> b -> a`) until Python's recursion limit. So Advertise refuses (`problem`) any
reference but a JSON pointer inside the schema itself ("#/$defs/...", as pydantic writes them)
that resolves to a schema, and any loop of such references and in-place keywords (allOf,
anyOf, oneOf, not, if/then/else, dependent schemas) that does not pass through a keyword that
reads a part of the value (properties, items...): recursive models stay allowed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import referencing
import referencing.jsonschema
from jsonschema.validators import validator_for
from referencing.exceptions import Unresolvable

_REFS = ("$ref", "$dynamicRef", "$recursiveRef")
_IN_PLACE_LISTS = ("allOf", "anyOf", "oneOf")
_IN_PLACE = ("not", "if", "then", "else")
_IN_PLACE_MAPS = ("dependentSchemas", "dependencies")


def problem(schema: Any) -> str:
    """Why a schema's references may not be followed ("" if they may)."""
    if not isinstance(schema, dict):
        return ""
    cls = validator_for(schema)
    specification = referencing.jsonschema.specification_with(
        cls.ID_OF(cls.META_SCHEMA) or "", default=referencing.Specification.OPAQUE)
    root = specification.create_resource(schema)
    try:
        return _Walk(specification).tree(root, referencing.Registry().resolver_with_root(root))
    except RecursionError:
        return "references nest too deeply"


class _Walk:
    def __init__(self, specification: Any) -> None:
        self.specification = specification
        self.done: set[int] = set()
        self.open: set[int] = set()

    def tree(self, resource: Any, resolver: Any) -> str:
        """Every subschema, each with the references it is checked through in place."""
        resolver = resolver.in_subresource(resource)
        found = self.in_place(resource.contents, resolver)
        for sub in resource.subresources():
            if found:
                break
            found = self.tree(sub, resolver)
        return found

    def in_place(self, schema: Any, resolver: Any) -> str:
        if not isinstance(schema, dict) or id(schema) in self.done:
            return ""
        if id(schema) in self.open:
            return "its references loop without reading into the value"
        self.open.add(id(schema))
        for key, ref in ((key, schema[key]) for key in _REFS if key in schema):
            if not isinstance(ref, str) or not ref.startswith("#/"):
                return (f"{key} {str(ref)[:80]!r} is not a local JSON pointer "
                        "(\"#/$defs/...\")")
            try:
                target = resolver.lookup(ref)
            except (Unresolvable, LookupError, ValueError):
                return f"{key} {ref[:80]!r} points to nothing in the schema"
            if not isinstance(target.contents, dict | bool):
                return f"{key} {ref[:80]!r} does not point to a schema"
            found = self.in_place(target.contents, target.resolver)
            if found:
                return found
        for sub in _in_place_subschemas(schema):
            found = self.in_place(
                sub, resolver.in_subresource(self.specification.create_resource(sub)))
            if found:
                return found
        self.open.discard(id(schema))
        self.done.add(id(schema))
        return ""


def _in_place_subschemas(schema: dict[str, Any]) -> Iterator[Any]:
    for key in _IN_PLACE_LISTS:
        if isinstance(schema.get(key), list):
            yield from schema[key]
    for key in _IN_PLACE:
        if key in schema:
            yield schema[key]
    for key in _IN_PLACE_MAPS:
        if isinstance(schema.get(key), dict):
            yield from schema[key].values()
