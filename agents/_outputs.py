"""A paid call's answer as the buyer's `call` returns it: the output, typed as asked, or the
SDK's error when the answer failed the buyer's checks (shared by the sync and async buyers)."""

from __future__ import annotations

from typing import Any

from agents.errors import AgentmarketError, InvalidArgument, SchemaViolation, ServerError
from agents.results import CallResult

# how the buyer's checks name an output that its schema refuses (or cannot check)
SCHEMA_PROBLEMS = ("output does not match the schema",
                   "the listing's output schema cannot be checked")


def output_of(result: CallResult, output_type: Any) -> Any:
    """`call`'s answer: the output (as `output_type`), or the SDK's error when the answer
    failed its checks: SchemaViolation for an output not as its schema, ServerError
    (BAD_RECEIPT) for a receipt that does not hold. Either way the call was booked at no
    more than the terms allow and the problem is on `deal.problems` (finish keeps the
    confirm back); the error's `result` is the call as `invoke` returns it."""
    if not result.verified:
        schema = result.problem.startswith(SCHEMA_PROBLEMS)
        error: AgentmarketError = SchemaViolation(
            f"the seller's output failed its checks: {result.problem}") if schema \
            else ServerError(f"the seller's receipt failed its checks: {result.problem}",
                             reason="BAD_RECEIPT")
        error.result = result  # type: ignore[attr-defined]
        error.trace_id = result.trace_id
        raise error
    return typed(result.output, output_type)


def typed(output: Any, output_type: Any) -> Any:
    """The output as `output_type` (a pydantic model, dataclass, TypedDict ...)."""
    if output_type is None:
        return output
    from pydantic import TypeAdapter
    from pydantic import ValidationError as PydanticError

    try:
        return TypeAdapter(output_type).validate_python(output)
    except PydanticError as error:
        raise InvalidArgument(f"the output is not a {getattr(output_type, '__name__', '')}"
                              f": {error.errors()[0].get('msg', error)}") from None
