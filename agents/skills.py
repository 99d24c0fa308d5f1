"""Skills: a priced function, async function, generator or LangGraph graph a seller exposes.

    @skill(price=per_call("0.002", "USD"), description="Summarise a text.")
    def summarize(text: str, max_words: int = 50) -> Summary: ...

    @skill(price=model_price("gpt-4o-mini", "USD", markup_bps=2_000),
           max_input_tokens=2_000, max_output_tokens=200)
    async def translate(text: str, language: str) -> Translation: ...   # async works the same

    @skill(price=per_1k_tokens("0.0002", "0.0008", "USD"), max_input_tokens=500,
           max_output_tokens=400)
    def write(topic: str) -> Iterator[str]: ...         # a generator streams (InvokeStream)

    research = skill(compiled_graph, price=per_call("0.01", "USD"), name="research")

Input and output JSON Schemas come from the type hints (pydantic models, TypedDicts, dataclasses,
plain types); for a graph, from its input/output (or state) schema, or explicit pydantic models.
Metered skills declare bounds (`max_input_tokens`/`max_output_tokens`, `max_units`) that fix the
most one call can cost: the buyer prepays that, the seller charges what was used.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, TypeAdapter

from agents import _async, _inputs
from agents._schemas import STREAM_OUTPUT_SCHEMA, function_models, graph_models, is_graph
from agents.errors import InvalidArgument
from agents.metering import (
    CALLS,
    TOKENS,
    UNITS,
    Tariff,
    model_price_per_1k_atomic,
    token_charge_atomic,
)
from marketplace import pricing
from marketplace.schema_validators import validator
from marketplace.v1 import registry_pb2
from wallets.currencies import currency

SCHEMA = registry_pb2.VERIFICATION_METHOD_SCHEMA
USD_PEGGED = ("USD", "USDC")


@dataclass(frozen=True)
class Price:
    """A list price: atomic units of `currency` per `unit` (per call, per 1k input tokens with
    `output_amount_atomic` per 1k output tokens, or per named unit)."""

    amount_atomic: int
    currency: str
    unit: int = CALLS
    unit_name: str = ""
    output_amount_atomic: int = 0
    tiers: tuple[tuple[int, int, int], ...] = ()  # (min quantity, amount, output amount)
    model: str = ""  # the model whose cost this price follows (`model_price`)

    def message(self) -> registry_pb2.Price:
        return registry_pb2.Price(
            amount_atomic=self.amount_atomic, currency=self.currency, unit=self.unit,
            unit_name=self.unit_name, output_amount_atomic=self.output_amount_atomic,
            tiers=[registry_pb2.PriceTier(min_quantity=q, amount_atomic=a,
                                          output_amount_atomic=o) for q, a, o in self.tiers])

    def tiered(self, *tiers: tuple[Any, ...]) -> Price:
        """Volume tiers as decimal amounts: per_unit("0.0006", "USD", "gpu_second")
        .tiered((3600, "0.0005")) prices every unit at 0.0005 from 3,600 units on (token
        prices take (min_quantity, input, output))."""
        cur = currency(self.currency)
        exact = tuple((int(t[0]), cur.atomic(t[1]), cur.atomic(t[2]) if len(t) > 2 else 0)
                      for t in tiers)
        return replace(self, tiers=exact)

    def quote(self, quantity: int) -> tuple[int, int]:
        """(unit price, output unit price) the list quotes for `quantity` (its volume tier)."""
        return pricing.quote(self.message(), quantity)


def per_call(amount: str | Decimal | int, currency_code: str) -> Price:
    """A price per call from a decimal amount: per_call("0.00001", "USD") is exact."""
    cur = currency(currency_code)
    return Price(cur.atomic(amount), cur.code)


def free() -> Price:
    """No price: any A2A client calls the skill without paying or an agreement. A free skill
    is on the seller's Agent Card, not in its marketplace listing (which lists what is sold)."""
    return Price(0, "")


def per_1k_tokens(input_amount: str | Decimal | int, output_amount: str | Decimal | int,
                  currency_code: str) -> Price:
    """Prices per 1,000 input and per 1,000 output tokens, as exact decimal amounts."""
    cur = currency(currency_code)
    return Price(cur.atomic(input_amount), cur.code, TOKENS,
                 output_amount_atomic=cur.atomic(output_amount))


def per_unit(amount: str | Decimal | int, currency_code: str, unit_name: str) -> Price:
    """A price per named unit: per_unit("0.0005", "USD", "gpu_second")."""
    if not unit_name or len(unit_name) > 64:
        raise InvalidArgument("a unit needs a name of 1..64 characters")
    cur = currency(currency_code)
    return Price(cur.atomic(amount), cur.code, UNITS, unit_name=unit_name)


def model_price(model: str, currency_code: str = "USD", *, markup_bps: int = 0) -> Price:
    """litellm's cost for `model` (`litellm.model_cost[model]`, USD per token) per 1k tokens,
    plus a markup in basis points, converted once and rounded up (`agents.metering`)."""
    from agents.llm import _litellm

    cur = currency(currency_code)
    if cur.code not in USD_PEGGED:
        raise InvalidArgument(f"litellm's costs are in USD; price {model} in USD or USDC")
    cost = _litellm().model_cost.get(model)
    if not cost or "input_cost_per_token" not in cost:
        raise InvalidArgument(f"litellm's cost map has no per-token cost for {model!r}")
    return Price(model_price_per_1k_atomic(cost["input_cost_per_token"], cur.scale, markup_bps),
                 cur.code, TOKENS, output_amount_atomic=model_price_per_1k_atomic(
                     cost.get("output_cost_per_token", 0), cur.scale, markup_bps), model=model)


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
    kind: str = "function"  # function | async | stream | graph
    max_input_tokens: int = 0
    max_output_tokens: int = 0
    max_units: int = 0
    max_concurrency: int = 0
    typical_latency_ms: int = 0
    model: str = ""  # the LLM it calls, if any (tokens are counted with its tokenizer)
    warm_up: Callable[[], Any] | None = None  # loads what the skill needs, before serving
    _input_model: type[BaseModel] | None = None
    _output_adapter: TypeAdapter[Any] | None = None

    @functools.cached_property
    def input_validator(self) -> Any:
        """The compiled input-schema validator (every paid call uses it)."""
        return validator(self.input_schema)

    def message(self) -> registry_pb2.Skill:
        return registry_pb2.Skill(
            name=self.name, description=self.description, tags=self.tags,
            input_schema_json=json.dumps(self.input_schema),
            output_schema_json=json.dumps(self.output_schema),
            prices=[p.message() for p in self.prices],
            verification_methods=self.verification_methods,
            max_concurrency=self.max_concurrency, typical_latency_ms=self.typical_latency_ms)

    @property
    def free(self) -> bool:
        """Served to anyone, unpaid (`free()`)."""
        return all(p.amount_atomic == 0 and not p.currency for p in self.prices)

    @property
    def streams(self) -> bool:
        return self.kind == "stream"

    @property
    def priced_per_token(self) -> bool:
        return any(p.unit == TOKENS for p in self.prices)

    @property
    def llm_model(self) -> str:
        """The model the skill calls: declared, or its `model_price`'s, or for a skill priced
        per token the default model (`agents.llm.default_model`); '' for other skills."""
        if self.model:
            return self.model
        priced = next((p.model for p in self.prices if p.model), "")
        if priced or not self.priced_per_token:
            return priced
        from agents.llm import default_model

        return default_model()

    def warm(self) -> None:
        """Load what the first call would: the compiled validators, for an LLM skill litellm
        and its model's tokenizer (`agents.llm.warm`), and the skill's own `warm_up`."""
        _ = self.input_validator
        if self._output_adapter is not None:
            self._output_adapter.json_schema()
        if self.llm_model:
            from agents.llm import warm

            warm(self.llm_model)
        if self.warm_up is not None:
            self.warm_up()

    def price_in(self, currency_code: str) -> Price | None:
        code = currency(currency_code).code
        return next((p for p in self.prices if p.currency == code), None)

    def tariff(self, unit_price_atomic: int, currency_code: str) -> Tariff:
        """Billing at a negotiated unit price: a token skill's output price moves in proportion
        to its input price (rounded up); the per-call maximum follows from the skill's bounds."""
        price = self.price_in(currency_code)
        if price is None:
            raise InvalidArgument(f"skill {self.name} is not sold in {currency_code}")
        if price.unit == TOKENS:
            output = -(-unit_price_atomic * price.output_amount_atomic // price.amount_atomic)
            most = token_charge_atomic(self.max_input_tokens, self.max_output_tokens,
                                       unit_price_atomic, output)
            return Tariff(TOKENS, unit_price_atomic, output, most)
        if price.unit == UNITS:
            return Tariff(UNITS, unit_price_atomic, 0, unit_price_atomic * self.max_units)
        return Tariff(CALLS, unit_price_atomic, 0, unit_price_atomic)

    def tier_quantity(self, calls: int) -> int:
        """What `calls` calls amount to in the price's unit, for volume tiers: calls, units
        (calls x max_units) or 1k-token blocks (calls x the token bounds / 1000)."""
        if self.max_units:
            return calls * self.max_units
        if self.max_input_tokens or self.max_output_tokens:
            return calls * (self.max_input_tokens + self.max_output_tokens) // 1000
        return calls

    def parse(self, arguments: dict[str, Any]) -> dict[str, Any]:
        if self._input_model is None:
            return arguments
        parsed = self._input_model.model_validate(arguments)
        if self.kind == "graph":
            return parsed.model_dump(exclude_unset=True)
        return {name: getattr(parsed, name) for name in type(parsed).model_fields}

    def run(self, arguments: dict[str, Any]) -> Any:
        """Call the handler with validated arguments; return JSON-ready output."""
        arguments = self.parse(arguments)
        if self.kind == "stream":
            return {"text": "".join(self.iterate(arguments, parsed=True))}
        if self.kind == "graph":
            result = self.handler.invoke(arguments)
        elif self.kind == "async":
            result = _async.run(lambda: self.handler(**arguments))
        else:
            result = self.handler(**arguments)
        return self._output(result)

    async def run_async(self, arguments: dict[str, Any]) -> Any:
        """`run` for an async skill, awaited on the caller's own event loop (the aio seller's),
        not on the background loop `run` uses from a worker thread."""
        if self.kind != "async":
            raise InvalidArgument(f"skill {self.name} is not an async function")
        return self._output(await self.handler(**self.parse(arguments)))

    def _output(self, result: Any) -> Any:
        if self._output_adapter is not None:
            if self.kind == "graph":
                model = self._output_adapter.validate_python(
                    {k: v for k, v in dict(result).items() if k in self.output_fields})
                return self._output_adapter.dump_python(model, mode="json", exclude_unset=True)
            return self._output_adapter.dump_python(result, mode="json")
        return result

    @property
    def output_fields(self) -> set[str]:
        return set(self.output_schema.get("properties", {}))

    def iterate(self, arguments: dict[str, Any], *, parsed: bool = False) -> Iterator[str]:
        """A streaming skill's text pieces, as they are produced."""
        if self.kind != "stream":
            raise InvalidArgument(f"skill {self.name} does not stream")
        arguments = arguments if parsed else self.parse(arguments)
        produced = self.handler(**arguments)
        pieces = _async.iterate(produced) if inspect.isasyncgen(produced) else produced
        for piece in pieces:
            if not isinstance(piece, str):
                raise TypeError(f"streaming skill {self.name} yielded {type(piece).__name__}, "
                                "not str")
            yield piece


def _check_bounds(prices: list[Price], max_input_tokens: int, max_output_tokens: int,
                  max_units: int) -> None:
    if len(prices) > 1 and any(p.amount_atomic == 0 and not p.currency for p in prices):
        raise InvalidArgument("a free skill has free() as its only price")
    for price in prices:
        if price.unit == TOKENS and (max_input_tokens <= 0 or max_output_tokens <= 0):
            raise InvalidArgument("a skill priced per token needs max_input_tokens and "
                                  "max_output_tokens: they bound what a buyer prepays per call")
        if price.unit == TOKENS and price.amount_atomic <= 0:
            raise InvalidArgument("a token price needs a positive input price")
        if price.unit == UNITS and max_units <= 0:
            raise InvalidArgument("a skill priced per unit needs max_units per call")


def _check_options(*, name: Any, description: Any, tags: Any, max_input_tokens: Any,
                   max_output_tokens: Any, max_units: Any, verification: Any,
                   max_concurrency: Any, typical_latency_ms: Any, model: Any,
                   warm_up: Any) -> None:
    """Refuse a bad option when the skill is made, not when the seller serves or lists it."""
    if name is not None:
        _inputs.name(name, "skill name")
    if description is not None and not isinstance(description, str):
        raise InvalidArgument(f"a skill's description is text, got {_inputs.shown(description)}")
    if tags is not None and (not isinstance(tags, list)
                             or not all(isinstance(t, str) for t in tags)):
        raise InvalidArgument(f"a skill's tags are a list of strings, got {_inputs.shown(tags)}")
    for what, value in (("max_input_tokens", max_input_tokens),
                        ("max_output_tokens", max_output_tokens), ("max_units", max_units),
                        ("max_concurrency", max_concurrency),
                        ("typical_latency_ms", typical_latency_ms)):
        _inputs.count(value, what, minimum=0)
    methods = [m for m in registry_pb2.VerificationMethod.values() if m]
    if verification is not None and (
            not isinstance(verification, list) or not verification
            or any(isinstance(m, bool) or not isinstance(m, int) or m not in methods
                   for m in verification)):
        raise InvalidArgument(f"verification is a list of registry_pb2.VerificationMethod "
                              f"values, got {_inputs.shown(verification)}")
    if not isinstance(model, str):
        raise InvalidArgument(f"model names an LLM as text, got {_inputs.shown(model)}")
    if warm_up is not None and not callable(warm_up):
        raise InvalidArgument(f"warm_up is a function of no arguments, got "
                              f"{_inputs.shown(warm_up)}")


def _check_target(target: Any) -> None:
    """What @skill can wrap: a function (sync, async or generator), a method, or a graph."""
    if isinstance(target, Skill):
        raise InvalidArgument(f"{target.name} is already a skill: apply @skill once")
    if not (is_graph(target) or inspect.isfunction(target) or inspect.ismethod(target)):
        raise InvalidArgument(f"@skill wraps a function, async function, generator or "
                              f"compiled LangGraph graph, got {_inputs.shown(target)}")


def skill(target: Any = None, /, *, price: Price | list[Price] | None = None,
          name: str | None = None,
          description: str | None = None, tags: list[str] | None = None,
          max_input_tokens: int = 0, max_output_tokens: int = 0, max_units: int = 0,
          input_model: type[BaseModel] | None = None,
          output_model: type[BaseModel] | None = None,
          verification: list[int] | None = None, max_concurrency: int = 0,
          typical_latency_ms: int = 0, model: str = "",
          warm_up: Callable[[], Any] | None = None) -> Any:
    """Turn a function, async function, generator or compiled LangGraph graph into a priced
    skill: as a decorator (`@skill(price=...)`) or in one call (`skill(graph, price=...)`).

    `model`: the LLM the skill calls (its tokenizer counts tokens; `SellerAgent.serve` loads
    it); `warm_up`: a function run once before the seller serves, to load what the skill needs
    (a model, an index), so the first paid call is not the slow one."""
    if price is None:  # `@skill` alone, or no price given
        raise InvalidArgument("a skill needs its price: @skill(price=per_call(\"0.01\", "
                              "\"USD\")), or free() for a free one")
    prices = price if isinstance(price, list) else [price]
    if not prices or not all(isinstance(p, Price) for p in prices):
        raise InvalidArgument("price is a Price (per_call, per_1k_tokens, per_unit, "
                              "model_price) or a list of them")
    _check_options(name=name, description=description, tags=tags,
                   max_input_tokens=max_input_tokens, max_output_tokens=max_output_tokens,
                   max_units=max_units, verification=verification,
                   max_concurrency=max_concurrency, typical_latency_ms=typical_latency_ms,
                   model=model, warm_up=warm_up)
    _check_bounds(prices, max_input_tokens, max_output_tokens, max_units)
    common = dict(prices=prices, tags=tags or [], max_input_tokens=max_input_tokens,
                  max_output_tokens=max_output_tokens, max_units=max_units,
                  verification_methods=verification or [SCHEMA],
                  max_concurrency=max_concurrency, typical_latency_ms=typical_latency_ms,
                  model=model, warm_up=warm_up)

    def wrap(fn: Any) -> Skill:
        _check_target(fn)
        if is_graph(fn):
            inputs, outputs = graph_models(fn, input_model, output_model)
            label = name or getattr(fn, "name", None) or "graph"
            return Skill(name=label, description=description or f"The {label} graph.",
                         handler=fn, input_schema=inputs.model_json_schema(),
                         output_schema=outputs.model_json_schema(), kind="graph",
                         _input_model=inputs, _output_adapter=TypeAdapter(outputs),
                         **common)  # type: ignore[arg-type]
        streams = inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
        model, adapter = function_models(fn, streams=streams,
                                         inputs_given=input_model is not None,
                                         output_given=output_model is not None)
        if input_model is not None:
            model = input_model
        if streams:
            kind, output_schema = "stream", STREAM_OUTPUT_SCHEMA
        else:
            kind = "async" if inspect.iscoroutinefunction(fn) else "function"
            if output_model is not None:
                adapter = TypeAdapter(output_model)
            assert adapter is not None
            output_schema = adapter.json_schema()
        return Skill(name=name or fn.__name__, description=description or inspect.getdoc(fn)
                     or "", handler=fn, input_schema=model.model_json_schema(),
                     output_schema=output_schema, kind=kind, _input_model=model,
                     _output_adapter=adapter, **common)  # type: ignore[arg-type]

    return wrap(target) if target is not None else wrap



def warm_up(skills: list[Skill]) -> None:
    """Warm every skill (`Skill.warm`): a seller does it in `serve()`, before it advertises.
    A second skill on the same model costs a mocked completion (its modules are loaded)."""
    for each in skills:
        each.warm()
