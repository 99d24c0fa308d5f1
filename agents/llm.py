"""LLM calls through litellm, metered for billing; offline by default.

Inside a skill, `complete()` (`acomplete()` in an async skill) and `stream()` call any litellm
model and record its token usage on the call's meter (`agents.metering`), which prices it under
the agreement:

    @skill(price=model_price("gpt-4o-mini", "USD", markup_bps=2_000),
           max_input_tokens=2_000, max_output_tokens=200)
    def summarize(text: str) -> Summary:
        reply = complete(default_model(), [{"role": "user", "content": text}],
                         mock_response="A short summary.")
        return Summary(summary=reply.choices[0].message.content)

A skill priced per token must declare `max_input_tokens` and `max_output_tokens`: they fix
what a buyer prepays per call. `complete` refuses a longer prompt before the model runs and
caps `max_tokens`. Calls that bypass these helpers (`litellm.completion`, `acompletion`,
streams of either) are metered too, through litellm's callback API (`agents._litellm_hooks`).

Offline by default: `mock_response` goes to litellm (its real code path, usage and cost, no
network) unless `AGENTMARKET_MODEL` names a model whose API key is in the environment; then the
same code calls that real model and `mock_response` is ignored. `agents` sets
LITELLM_LOCAL_MODEL_COST_MAP=True before litellm is imported, so the cost map is not fetched.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from agents import _litellm_hooks
from agents._context import Scoped
from agents._tokens import DEFAULT_MODEL, count_tokens, load_litellm
from agents.metering import Meter, _current, usage_of

_tracer_provider: ContextVar[Any] = ContextVar("agentmarket_llm_tracer_provider", default=None)

MODEL_ENV = "AGENTMARKET_MODEL"
WARM_PROMPT = [{"role": "user", "content": "warm up"}]

__all__ = ["DEFAULT_MODEL", "MODEL_ENV", "acomplete", "complete", "count_tokens",
           "default_model", "is_live", "llm_span", "record_usage", "stream", "text_of",
           "traced_by", "warm"]


def _litellm() -> Any:
    """litellm, loaded offline, with the metering callback installed."""
    litellm = load_litellm()
    if not _litellm_hooks.installed():
        _litellm_hooks.install()
    return litellm


def default_model() -> str:
    """The model examples and defaults use: $AGENTMARKET_MODEL, else gpt-4o-mini (mocked)."""
    return os.environ.get(MODEL_ENV) or DEFAULT_MODEL


def is_live(model: str) -> bool:
    """True when `model` is the one named in $AGENTMARKET_MODEL and its API key is set."""
    if not os.environ.get(MODEL_ENV) or os.environ[MODEL_ENV] != model:
        return False
    try:
        return bool(_litellm().validate_environment(model)["keys_in_environment"])
    except Exception:  # an unknown provider: no key we could check, stay offline
        return False


def _offline_kwargs(model: str, mock_response: Any) -> dict[str, Any]:
    if mock_response is None or is_live(model):
        return {}
    return {"mock_response": mock_response}


def complete(model: str, messages: list[dict[str, Any]], *, max_tokens: int | None = None,
             mock_response: Any = None, **kwargs: Any) -> Any:
    """litellm.completion, metered: inside a paid call, the usage litellm reports is billed.

    The skill's `max_output_tokens` caps `max_tokens`, and a prompt above its
    `max_input_tokens` (counted before the call) is refused without calling the model."""
    litellm = _litellm()
    meter = _current.get()
    max_tokens = _bounded(meter, model, messages, max_tokens)
    if max_tokens is not None:
        kwargs["max_tokens"] = max_tokens
    with llm_span(model) as span, _litellm_hooks.sdk_call():
        response = litellm.completion(model=model, messages=messages,
                                      **_offline_kwargs(model, mock_response), **kwargs)
        input_tokens, output_tokens = usage_of(response)
        record_usage(span, response, input_tokens, output_tokens)
    if meter is not None:
        meter.add_tokens(input_tokens, output_tokens, model)
    return response


async def acomplete(model: str, messages: list[dict[str, Any]], *,
                    max_tokens: int | None = None, mock_response: Any = None,
                    **kwargs: Any) -> Any:
    """`complete` for async skills: litellm.acompletion, metered the same way."""
    litellm = _litellm()
    meter = _current.get()
    max_tokens = _bounded(meter, model, messages, max_tokens)
    if max_tokens is not None:
        kwargs["max_tokens"] = max_tokens
    with llm_span(model) as span, _litellm_hooks.sdk_call():
        response = await litellm.acompletion(model=model, messages=messages,
                                             **_offline_kwargs(model, mock_response), **kwargs)
        input_tokens, output_tokens = usage_of(response)
        record_usage(span, response, input_tokens, output_tokens)
    if meter is not None:
        meter.add_tokens(input_tokens, output_tokens, model)
    return response


def _bounded(meter: Meter | None, model: str, messages: list[dict[str, Any]],
             max_tokens: int | None) -> int | None:
    """Inside a paid call: refuse a prompt past the skill's bound or the call's prepayment,
    and cap max_tokens at the skill's max_output_tokens."""
    if meter is None:
        return max_tokens
    meter.check_input(count_tokens(model, messages=messages))
    if meter.max_output_tokens:
        return min(max_tokens or meter.max_output_tokens, meter.max_output_tokens)
    return max_tokens


def warm(model: str) -> None:
    """Load what the first call to `model` would: litellm and its lazy modules (a mocked
    completion and stream, offline, unmetered), the metering callback and the tokenizer."""
    litellm = _litellm()
    count_tokens(model, "warm up")
    count_tokens(model, messages=WARM_PROMPT)
    with _litellm_hooks.sdk_call():
        litellm.completion(model=model, messages=WARM_PROMPT, mock_response="ok")
        for _chunk in litellm.completion(model=model, messages=WARM_PROMPT, stream=True,
                                         mock_response="ok"):
            pass


def traced_by(tracer_provider: Any) -> Scoped[Any]:
    """`with traced_by(provider):` LLM calls made inside report their spans to it (the
    seller's)."""
    return Scoped(_tracer_provider, tracer_provider)


@contextmanager
def llm_span(model: str, operation: str = "chat") -> Iterator[Any]:
    """A GenAI client span per LLM call (semantic conventions: `{operation} {model}`)."""
    from opentelemetry import trace

    tracer = trace.get_tracer("agentmarket.llm", tracer_provider=_tracer_provider.get())
    with tracer.start_as_current_span(f"{operation} {model}", kind=trace.SpanKind.CLIENT,
                                      attributes={"gen_ai.operation.name": operation,
                                                  "gen_ai.request.model": model}) as span:
        yield span


def record_usage(span: Any, response: Any, input_tokens: int, output_tokens: int) -> None:
    """Token usage and cost on the LLM span; the float USD cost litellm computes is turned into
    atomic USD once, rounded up (`marketplace.judge.cost_atomic_usd`). Nothing when tracing is
    off: the attributes would be thrown away, and pricing a response is not free."""
    from marketplace.judge import cost_atomic_usd

    if not span.is_recording():
        return
    span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
    span.set_attribute("gen_ai.response.model", getattr(response, "model", "") or "")
    cost = (getattr(response, "_hidden_params", None) or {}).get("response_cost")
    if not isinstance(cost, int | float):  # litellm did not price it during the call
        try:
            cost = _litellm().completion_cost(completion_response=response)
        except Exception:  # a model litellm has no price for: usage is still recorded
            return
    span.set_attribute("agentmarket.llm.cost_atomic", cost_atomic_usd(cost))
    span.set_attribute("agentmarket.currency", "USD")


def text_of(response: Any) -> str:
    """The first choice's message text of a litellm response."""
    return response.choices[0].message.content or ""


def stream(model: str, messages: list[dict[str, Any]], *, max_tokens: int | None = None,
           mock_response: Any = None, **kwargs: Any) -> Iterator[str]:
    """litellm.completion(stream=True) as text deltas, for a streaming skill to yield.

    Inside a paid call the prompt is counted and billed first (refused if the call's prepayment
    cannot pay for it); the seller bills the delivered text as it flows and closes this
    generator (and so litellm's stream) when the prepayment is spent."""
    litellm = _litellm()
    meter = _current.get()
    if meter is not None:
        input_tokens = count_tokens(model, messages=messages)
        meter.check_input(input_tokens)
        meter.add_tokens(input_tokens, 0, model)
        if meter.max_output_tokens:
            max_tokens = min(max_tokens or meter.max_output_tokens, meter.max_output_tokens)
    if max_tokens is not None:
        kwargs["max_tokens"] = max_tokens
    with _litellm_hooks.sdk_call():
        chunks = litellm.completion(model=model, messages=messages, stream=True,
                                    **_offline_kwargs(model, mock_response), **kwargs)
    try:
        for chunk in chunks:
            delta = chunk.choices[0].delta.content if chunk.choices else None
            if delta:
                yield delta
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
