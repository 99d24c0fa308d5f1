"""Compiled JSON Schema validators, built once per schema: every paid call validates an input
or an output, and a redeem checks every receipt's output: the generic validator costs more
than the call itself.

A schema that uses only keywords whose meaning draft 7 and draft 2020-12 share (what pydantic
emits for plain models) is compiled to Python code by fastjsonschema, about ten times faster;
any other schema (formats, tuples, conditionals, unknown keywords...) goes to jsonschema's
validator for its own draft. Both raise `jsonschema.ValidationError`, so callers see one kind
of error; tests/test_schema_validators.py checks that both agree.

jsonschema's validator walks a schema as written: refs that a combinator applies twice at each
of n levels (`allOf: [{$ref: next}, {$ref: next}]`) cost 2^n steps, which a 64 KB schema can
make centuries. A schema is a stranger's input (a seller's output schema is checked by the
node at every redeem), so that validator runs on a budget of keyword steps in proportion to
the value: for each of its JSON values, as many steps as the schema has subschemas (a union's
every branch may be tried on each value), at least `STEPS_PER_NODE` and at most
`MAX_STEPS_PER_NODE`, and `BASE_STEPS` more. Polynomial in the value and the schema, never
exponential; a value it cannot check within that is invalid.
"""

from __future__ import annotations

import contextvars
import functools
import json
from collections.abc import Callable, Iterator
from typing import Any

import fastjsonschema
from jsonschema import ValidationError
from jsonschema.validators import extend, validator_for

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


STEPS_PER_NODE = 16  # keyword applications per JSON value, at least
MAX_STEPS_PER_NODE = 512
BASE_STEPS = 1_000
_STEPS_LEFT: contextvars.ContextVar[list[int]] = contextvars.ContextVar("schema_steps")


class _OverBudget(Exception):
    """Raised inside a keyword, so the walk stops at once."""


def _counted(keyword: Callable[..., Any]) -> Callable[..., Iterator[Any]]:
    def run(validator: Any, value: Any, instance: Any, schema: Any) -> Iterator[Any]:
        left = _STEPS_LEFT.get(None)
        if left is not None:
            left[0] -= 1
            if left[0] < 0:
                raise _OverBudget
        yield from keyword(validator, value, instance, schema) or ()
    return run


@functools.cache
def _budgeted_class(cls: type) -> Any:
    """`cls` with every keyword counted against the running value's budget."""
    return extend(cls, validators={name: _counted(keyword)
                                   for name, keyword in cls.VALIDATORS.items()})


class _Budgeted:
    """jsonschema's validator for a schema, run on a budget of steps (see the module)."""

    def __init__(self, schema: Any) -> None:
        self._validator = _budgeted_class(validator_for(schema))(schema)
        self._per_node = min(max(STEPS_PER_NODE, _nodes(schema)), MAX_STEPS_PER_NODE)

    def validate(self, instance: Any) -> None:
        budget = BASE_STEPS + self._per_node * _nodes(instance)
        token = _STEPS_LEFT.set([budget])
        try:
            self._validator.validate(instance)
        except _OverBudget:
            raise ValidationError(f"checking this value against the schema takes more than "
                                  f"{budget} steps ({self._per_node} per JSON value)") from None
        finally:
            _STEPS_LEFT.reset(token)

    def is_valid(self, instance: Any) -> bool:
        try:
            self.validate(instance)
        except ValidationError:
            return False
        return True


def _nodes(value: Any) -> int:
    """How many JSON values `value` holds (itself included), without recursion."""
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


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
    return _Budgeted(schema)


def validator(schema: dict[str, Any]) -> Any:
    """The validator of `schema` (cached by its canonical JSON text); `.validate(instance)`
    raises `jsonschema.ValidationError`."""
    return validator_of_json(json.dumps(schema, sort_keys=True))
