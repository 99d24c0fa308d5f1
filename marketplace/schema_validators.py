"""Compiled JSON Schema validators, built once per schema: every paid call validates an input
or an output, and a redeem checks every receipt's output: the generic validator costs more
than the call itself.

A schema that uses only keywords whose meaning draft 7 and draft 2020-12 share (what pydantic
emits for plain models) is compiled to Python code by fastjsonschema, about ten times faster;
any other schema (formats, tuples, conditionals, unknown keywords...) goes to jsonschema's
validator for its own draft. Both raise `jsonschema.ValidationError`, so callers see one kind
of error; tests/test_schema_validators.py checks that both agree.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import fastjsonschema
from jsonschema import ValidationError
from jsonschema.validators import validator_for

from marketplace import schema_regex

schema_regex.install()  # patterns match in linear time: a schema is a stranger's input

# Keywords that validate alike in draft 7 (fastjsonschema) and 2020-12, and annotations
_VALIDATING = frozenset({
    "type", "properties", "required", "items", "additionalProperties", "enum", "const",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minLength",
    "maxLength", "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties",
    "anyOf", "allOf", "oneOf", "not", "$ref"})
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$comment",
                          "deprecated", "readOnly", "writeOnly", "$schema", "$id"})
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "allOf", "oneOf")


def _compilable(schema: Any, *, root: bool = True) -> bool:
    """Whether every (sub)schema uses only the shared keywords (a `$ref` only beside
    annotations: draft 7 ignores its siblings; arrays of items are draft-specific)."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict):
        return False
    allowed = _VALIDATING | _ANNOTATIONS | ({"$defs", "definitions"} if root else set())
    if not set(schema) <= allowed:
        return False
    if "$ref" in schema and not (set(schema) - {"$ref", "$defs", "definitions"}) \
            <= _ANNOTATIONS:
        return False
    if "$ref" in schema and not str(schema["$ref"]).startswith("#/"):
        return False  # a remote reference: let jsonschema refuse or resolve it
    for key in _SUBSCHEMA_MAPS:
        if key in schema and not all(_compilable(s, root=False)
                                     for s in schema[key].values()):
            return False
    for key in _SUBSCHEMA_LISTS:
        if key in schema and not all(_compilable(s, root=False) for s in schema[key]):
            return False
    for key in ("items", "additionalProperties", "not"):
        if key in schema and not _compilable(schema[key], root=False):
            return False
    return True


class _Compiled:
    """A fastjsonschema function behind jsonschema's `validate` interface."""

    def __init__(self, check: Callable[[Any], Any]) -> None:
        self._check = check

    def validate(self, instance: Any) -> None:
        try:
            self._check(instance)
        except fastjsonschema.JsonSchemaValueException as error:
            raise ValidationError(error.message) from None

    def is_valid(self, instance: Any) -> bool:
        try:
            self._check(instance)
        except fastjsonschema.JsonSchemaValueException:
            return False
        return True


@functools.lru_cache(maxsize=1024)
def validator_of_json(schema_json: str) -> Any:
    """The validator of a schema given as JSON text ("" is the empty schema: anything goes);
    cached by that text, so a listing's schema copied into each agreement compiles once."""
    schema = json.loads(schema_json) if schema_json else {}
    if _compilable(schema):
        try:
            draft7 = {k: v for k, v in schema.items() if k != "$schema"} \
                if isinstance(schema, dict) else schema
            return _Compiled(fastjsonschema.compile(draft7, use_formats=False,
                                                    use_default=False))
        except (fastjsonschema.JsonSchemaDefinitionException, RecursionError):
            pass  # jsonschema decides what the schema means
    return validator_for(schema)(schema)


def validator(schema: dict[str, Any]) -> Any:
    """The validator of `schema` (cached by its canonical JSON text); `.validate(instance)`
    raises `jsonschema.ValidationError`."""
    return validator_of_json(json.dumps(schema, sort_keys=True))
