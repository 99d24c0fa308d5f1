"""Skills: a priced function a seller exposes, with JSON Schemas taken from its type hints.

    @skill(price=per_call("0.002", "USD"), description="Summarise a text.")
    def summarize(text: str, max_words: int = 50) -> Summary: ...

The input schema comes from the parameters, the output schema from the return annotation
(a pydantic model, TypedDict, dataclass or plain type), both via pydantic.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, get_type_hints

from pydantic import BaseModel, TypeAdapter, create_model

from marketplace.v1 import registry_pb2
from wallets.currencies import currency

SCHEMA = registry_pb2.VERIFICATION_METHOD_SCHEMA


@dataclass(frozen=True)
class Price:
    """A list price: atomic units of `currency` per `unit`."""

    amount_atomic: int
    currency: str
    unit: int = registry_pb2.PRICE_UNIT_CALL
    unit_name: str = ""

    def message(self) -> registry_pb2.Price:
        return registry_pb2.Price(amount_atomic=self.amount_atomic, currency=self.currency,
                                  unit=self.unit, unit_name=self.unit_name)


def per_call(amount: str | Decimal | int, currency_code: str) -> Price:
    """A price per call from a decimal amount: per_call("0.00001", "USD") is exact."""
    cur = currency(currency_code)
    return Price(cur.atomic(amount), cur.code)


@dataclass
class Skill:
    name: str
    description: str
    handler: Callable[..., Any]
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    prices: list[Price]
    tags: list[str] = field(default_factory=list)
    verification_methods: list[int] = field(default_factory=lambda: [SCHEMA])
    _input_model: type[BaseModel] | None = None
    _output_adapter: TypeAdapter[Any] | None = None

    def message(self) -> registry_pb2.Skill:
        return registry_pb2.Skill(
            name=self.name, description=self.description, tags=self.tags,
            input_schema_json=json.dumps(self.input_schema),
            output_schema_json=json.dumps(self.output_schema),
            prices=[p.message() for p in self.prices],
            verification_methods=self.verification_methods)

    def price_in(self, currency_code: str) -> Price | None:
        code = currency(currency_code).code
        return next((p for p in self.prices if p.currency == code), None)

    def run(self, arguments: dict[str, Any]) -> Any:
        """Call the handler with validated arguments; return JSON-ready output."""
        if self._input_model is not None:
            parsed = self._input_model.model_validate(arguments)
            arguments = {name: getattr(parsed, name) for name in type(parsed).model_fields}
        result = self.handler(**arguments)
        if self._output_adapter is not None:
            return self._output_adapter.dump_python(result, mode="json")
        return result


def skill(*, price: Price | list[Price], name: str | None = None, description: str | None = None,
          tags: list[str] | None = None) -> Callable[[Callable[..., Any]], Skill]:
    """Turn a function into a priced skill with schemas from its type hints."""

    def wrap(fn: Callable[..., Any]) -> Skill:
        hints = get_type_hints(fn)
        params = inspect.signature(fn).parameters
        fields: dict[str, Any] = {
            p: (hints.get(p, Any), ... if spec.default is inspect.Parameter.empty else spec.default)
            for p, spec in params.items()
        }
        input_model = create_model(f"{fn.__name__}_input", **fields)  # type: ignore[call-overload]
        output_adapter = TypeAdapter(hints.get("return", Any))
        return Skill(
            name=name or fn.__name__, description=description or inspect.getdoc(fn) or "",
            handler=fn, input_schema=input_model.model_json_schema(),
            output_schema=output_adapter.json_schema(),
            prices=price if isinstance(price, list) else [price], tags=tags or [],
            _input_model=input_model, _output_adapter=output_adapter)

    return wrap
