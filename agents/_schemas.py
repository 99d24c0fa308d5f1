"""JSON Schemas for skills: from a function's type hints, a pydantic model or a graph's state.

Python 3.11's `typing.TypedDict` is not accepted by pydantic, and LangGraph state schemas are
usually one: such a class is turned into an equivalent pydantic model (required keys required,
the others optional).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, get_type_hints, is_typeddict

from pydantic import BaseModel, TypeAdapter, create_model

from agents.errors import InvalidArgument

STREAM_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"],
    "title": "StreamedText",
}


def model_for(schema: Any, name: str) -> type[BaseModel]:
    """A pydantic model for a pydantic model (itself) or a TypedDict class."""
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return schema
    if is_typeddict(schema):
        hints = get_type_hints(schema)
        required = getattr(schema, "__required_keys__", frozenset(hints))
        fields: dict[str, Any] = {
            key: (hint, ... if key in required else None) for key, hint in hints.items()
        }
        return create_model(name, **fields)  # type: ignore[call-overload,no-any-return]
    raise TypeError(f"{schema!r} is neither a pydantic model nor a TypedDict; pass "
                    "input_model/output_model explicitly")


def function_models(fn: Callable[..., Any], *, streams: bool = False,
                    inputs_given: bool = False, output_given: bool = False
                    ) -> tuple[type[BaseModel], TypeAdapter[Any] | None]:
    """(input model from the parameters, adapter of the return annotation; None for a
    generator, whose output is the streamed text). The schemas buyers check calls against
    come from the hints, so a parameter or return without one is refused (unless an
    `input_model` / `output_model` is given instead)."""
    hints = get_type_hints(fn)
    params = inspect.signature(fn).parameters
    name = getattr(fn, "__name__", "skill")
    if not inputs_given:
        for missing in (p for p in params if p not in hints):
            raise InvalidArgument(f"skill {name}: parameter {missing!r} has no type hint; the "
                                  f"input schema is made from them (e.g. `{missing}: str`)")
    if not (streams or output_given or "return" in hints):
        raise InvalidArgument(f"skill {name} has no return type hint; the output schema buyers "
                              "check is made from it (e.g. `-> MyModel`)")
    fields: dict[str, Any] = {
        p: (hints.get(p, Any), ... if spec.default is inspect.Parameter.empty else spec.default)
        for p, spec in params.items()
    }
    input_model = create_model(f"{fn.__name__}_input", **fields)  # type: ignore[call-overload]
    return input_model, None if streams else TypeAdapter(hints.get("return", Any))


def is_graph(target: Any) -> bool:
    """A compiled LangGraph graph (anything with invoke() and the builder's schemas)."""
    builder = getattr(target, "builder", None)
    return callable(getattr(target, "invoke", None)) and hasattr(builder, "state_schema")


def graph_models(graph: Any, input_model: Any = None, output_model: Any = None
                 ) -> tuple[type[BaseModel], type[BaseModel]]:
    builder = graph.builder
    name = getattr(graph, "name", None) or "graph"
    inputs = model_for(input_model or getattr(builder, "input_schema", None)
                       or builder.state_schema, f"{name}_input")
    outputs = model_for(output_model or getattr(builder, "output_schema", None)
                        or builder.state_schema, f"{name}_output")
    return inputs, outputs
