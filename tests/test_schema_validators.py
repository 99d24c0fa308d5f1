"""The fast schema validators agree with jsonschema's 2020-12 validator (what the marketplace
verifies outputs with), and schemas outside the shared subset fall back to jsonschema."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import ValidationError
from jsonschema.validators import Draft202012Validator
from pydantic import BaseModel, Field

from marketplace.schema_validators import _Compiled, validator, validator_of_json
from marketplace.v1 import agreement_pb2
from marketplace.verification import _schema_results


class Inner(BaseModel):
    score: float = Field(ge=0, le=1)
    label: Literal["good", "bad"]


class Outer(BaseModel):
    text: str = Field(max_length=20)
    count: int = 0
    tags: list[str] = Field(default_factory=list, max_length=3)
    inner: Inner | None = None
    extra: dict[str, int] = Field(default_factory=dict)


SCHEMAS = [
    Outer.model_json_schema(),
    Inner.model_json_schema(),
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": 2}},
     "required": ["n"], "additionalProperties": False},
    {"anyOf": [{"type": "string", "minLength": 2}, {"type": "number", "multipleOf": 0.5}]},
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-3, 3, allow_nan=False)
    | st.sampled_from(["", "a", "good", "bad", "x" * 25]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["text", "count", "tags", "inner", "extra", "score",
                                       "label", "n", "other"]), children, max_size=5),
    max_leaves=12)


@pytest.mark.parametrize("schema", SCHEMAS, ids=["outer", "inner", "strict", "any-of"])
def test_plain_schemas_compile_to_the_fast_validator(schema: dict) -> None:
    assert isinstance(validator(schema), _Compiled)


@settings(max_examples=400, deadline=None)
@given(index=st.integers(0, len(SCHEMAS) - 1), instance=json_values)
def test_fast_validator_agrees_with_jsonschema(index: int, instance: object) -> None:
    schema = SCHEMAS[index]
    expected = Draft202012Validator(schema).is_valid(instance)
    fast = validator(schema)
    assert fast.is_valid(instance) is expected
    if not expected:
        with pytest.raises(ValidationError):
            fast.validate(instance)


def test_validation_never_fills_in_defaults() -> None:
    instance = {"text": "hi"}
    validator(Outer.model_json_schema()).validate(instance)
    assert instance == {"text": "hi"}


@pytest.mark.parametrize("schema", [
    {"type": "string", "format": "date-time"},  # formats: jsonschema's choice applies
    {"type": "array", "prefixItems": [{"type": "integer"}]},  # 2020-12 only
    {"type": "object", "patternProperties": {"^x": {"type": "integer"}}},
    {"$ref": "#/$defs/a", "minimum": 3, "$defs": {"a": {"type": "integer"}}},  # $ref siblings
    {"if": {"type": "integer"}, "then": {"minimum": 0}},
])
def test_other_schemas_fall_back_to_jsonschema(schema: dict) -> None:
    chosen = validator(schema)
    assert not isinstance(chosen, _Compiled)
    if "prefixItems" in schema:
        assert not chosen.is_valid(["one"])
    if "$ref" in schema:
        assert not chosen.is_valid(2) and chosen.is_valid(3)


def test_a_redeem_checks_outputs_with_the_compiled_validator() -> None:
    """The marketplace's verification takes the agreement's schema as JSON text: a plain one
    compiles once, and the empty text is the schema that accepts anything."""
    schema_json = json.dumps(Inner.model_json_schema(), sort_keys=True)
    assert isinstance(validator_of_json(schema_json), _Compiled)
    assert validator_of_json(schema_json) is validator_of_json(schema_json)
    validator_of_json("").validate({"anything": [1, "goes"]})
    receipts = [agreement_pb2.Receipt(sequence=1, output_json='{"score": 0.5, "label": "good"}'),
                agreement_pb2.Receipt(sequence=2, output_json='{"score": 2, "label": "good"}'),
                agreement_pb2.Receipt(sequence=3, output_json="not json")]
    results, values = _schema_results(schema_json, receipts)
    assert [r.passed for r in results] == [True, False, False]
    assert results[1].reason.startswith("output schema: ")
    assert results[2].reason == "output is not JSON"
    assert values[0] == {"score": 0.5, "label": "good"} and values[1:] == [None, None]


REDOS = "^(a+)+$"  # backtracking takes 2^n steps on n a's and a mismatch


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"text": {"type": "string", "pattern": REDOS}}},
    {"type": "object", "patternProperties": {REDOS: {"type": "string"}},
     "additionalProperties": False},
])
def test_patterns_match_in_linear_time(schema: dict) -> None:
    """A seller's schema is a stranger's input: its patterns run on RE2, so a catastrophic
    one answers at once (under Python's `re` this instance would take hours)."""
    hostile = "a" * 5000 + "!"
    check = validator(schema)
    instance = {"text": hostile} if "properties" in schema else {hostile: "x"}
    assert not check.is_valid(instance)
    assert check.is_valid({"text": "aaa"} if "properties" in schema else {"aaa": "x"})
    assert Draft202012Validator(schema).is_valid(instance) is False  # jsonschema's own too


@pytest.mark.parametrize("text", ["-1", "NaN", "Infinity", "null", "3.5", '"str"', "[]",
                                  json.dumps({"type": "string", "pattern": "(a)\\1"}),
                                  json.dumps({"patternProperties": {"(?=a)": {}}})])
def test_a_schema_that_is_not_an_object_or_runs_no_linear_regex_is_refused(text: str) -> None:
    from marketplace.errors import SchemaViolation
    from marketplace.listing_checks import check_schema

    with pytest.raises(SchemaViolation):
        check_schema(text, "output_schema_json")


def test_a_schema_whose_refs_double_at_each_level_is_checked_on_a_budget():
    """allOf of the same ref twice, 40 levels deep: 2^40 steps as written; a value is refused
    within a budget in proportion to its size (the generic validator: `format` is not
    compiled), and an honest value of the same size shape passes."""
    depth = 40
    defs: dict[str, Any] = {f"a{i}": {"allOf": [{"$ref": f"#/$defs/a{i + 1}"}] * 2}
                            for i in range(depth)}
    defs[f"a{depth}"] = {"type": "string", "format": "email"}
    with pytest.raises(ValidationError, match="takes more than"):  # not days of walking
        validator({"$defs": defs, "$ref": "#/$defs/a0"}).validate("x@example.com")
    honest = {"type": "array", "items": {"type": "string", "format": "email",
                                         "minLength": 1, "maxLength": 99}}
    validator(honest).validate(["x@example.com"] * 5_000)


def test_an_honest_union_the_budget_cannot_compile_still_passes():
    """A list of a 10-way discriminated union (pydantic's `discriminator` is not compiled):
    each value may try every branch, so the budget grows with the schema's size."""
    events = [type(f"Event{i}", (BaseModel,), {"__annotations__": {
        "kind": Literal[f"e{i}"], "value": int}}) for i in range(10)]
    event = Annotated[Union[tuple(events)], Field(discriminator="kind")]  # noqa: UP007

    class Out(BaseModel):
        events: list[event]  # type: ignore[valid-type]

    schema = Out.model_json_schema()
    assert not isinstance(validator(schema), _Compiled)
    validator(schema).validate({"events": [{"kind": f"e{j % 10}", "value": j}
                                           for j in range(3_000)]})
