"""Metering that cannot be bypassed: every litellm call a token-priced skill makes is billed,
through litellm's callback API, whether or not it goes through agents.llm.

Issue 15 finding 2: a token-priced skill that called `litellm.completion` directly answered and
billed nothing (the agreement ended REFUNDED with captured 0, no warning). Here skills call
litellm directly (sync, async, streamed, a stream cut short) or make no LLM call at all, over a
real node, seller and buyer; each receipt's usage is litellm's report (or the documented rule)
and its charge the agreed price of that usage.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import litellm
import pytest
from litellm import ModelResponse
from litellm.integrations.custom_logger import CustomLogger
from litellm.types.utils import Usage
from pydantic import BaseModel

from agents import AgreementState, BuyerAgent, SellerAgent, per_1k_tokens, skill
from agents.llm import count_tokens
from marketplace.node import MarketplaceNode

MODEL = "gpt-4o-mini"
PRICE = per_1k_tokens("0.0002", "0.0008", "USD")
BOUNDS = {"max_input_tokens": 2_000, "max_output_tokens": 300}


class Reply(BaseModel):
    text: str


def _mock(prompt_tokens: int, completion_tokens: int, text: str) -> ModelResponse:
    return ModelResponse(model=MODEL, choices=[{"message": {"role": "assistant",
                                                            "content": text}}],
                         usage=Usage(prompt_tokens=prompt_tokens,
                                     completion_tokens=completion_tokens,
                                     total_tokens=prompt_tokens + completion_tokens))


class Reports(CustomLogger):  # type: ignore[misc]
    """What litellm itself reported for each call (the test's own callback)."""

    def __init__(self) -> None:
        super().__init__()
        self.usages: list[tuple[int, int]] = []
        self.done = threading.Event()

    def log_success_event(self, kwargs, response_obj, start_time, end_time):  # type: ignore[no-untyped-def]
        usage = getattr(response_obj, "usage", None)
        if usage is not None:
            self.usages.append((usage.prompt_tokens, usage.completion_tokens))
            self.done.set()


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Answer: {text}"}]


@skill(price=PRICE, **BOUNDS)
def direct(text: str, prompt_tokens: int, completion_tokens: int) -> Reply:
    """litellm.completion, called directly."""
    reply = litellm.completion(model=MODEL, messages=_messages(text),
                               mock_response=_mock(prompt_tokens, completion_tokens, text))
    return Reply(text=reply.choices[0].message.content)


@skill(price=PRICE, **BOUNDS)
async def direct_async(text: str, prompt_tokens: int, completion_tokens: int) -> Reply:
    """litellm.acompletion, called directly from an async skill."""
    reply = await litellm.acompletion(model=MODEL, messages=_messages(text),
                                      mock_response=_mock(prompt_tokens, completion_tokens,
                                                          text))
    return Reply(text=reply.choices[0].message.content)


@skill(price=PRICE, **BOUNDS)
def direct_stream(text: str) -> Reply:
    """A litellm stream, called directly and read to its end inside a unary skill."""
    chunks = litellm.completion(model=MODEL, messages=_messages(text), stream=True,
                                mock_response=f"streamed words about {text}")
    return Reply(text="".join(c.choices[0].delta.content or "" for c in chunks))


@skill(price=PRICE, **BOUNDS)
def cut_stream(text: str) -> Reply:
    """A stream abandoned after its first piece: litellm never reports its usage."""
    chunks = litellm.completion(model=MODEL, messages=_messages(text), stream=True,
                                mock_response="one two three four five six")
    first = next(iter(chunks)).choices[0].delta.content or ""
    chunks.close() if hasattr(chunks, "close") else None
    return Reply(text=first)


@skill(price=PRICE, **BOUNDS)
def streamed_skill(text: str) -> Iterator[str]:
    """A streaming skill yielding a direct litellm stream."""
    for chunk in litellm.completion(model=MODEL, messages=_messages(text), stream=True,
                                    mock_response=f"pieces of {text} flow"):
        if chunk.choices and chunk.choices[0].delta.content:
            yield chunk.choices[0].delta.content


@skill(price=PRICE, **BOUNDS)
def no_model(text: str) -> Reply:
    """Token-priced, but calls no model at all."""
    return Reply(text=text[::-1])


@dataclass
class Market:
    node: MarketplaceNode
    seller: SellerAgent
    buyer: BuyerAgent
    reports: Reports

    def hire(self, name: str, quantity: int = 2) -> Any:
        listing = next(listing for listing in self.buyer.discover(name, currency="USD"))
        deal = self.buyer.negotiate(listing, name, quantity=quantity, budget="0.05",
                                    currency="USD")
        self.buyer.hire(deal)
        return deal


@pytest.fixture(scope="module")
def reports() -> Iterator[Reports]:
    """One for the module: litellm keeps one logger per class once it has seen it."""
    found = Reports()
    litellm.callbacks.append(found)
    yield found
    litellm.callbacks.remove(found)


@pytest.fixture
def market(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reports: Reports
           ) -> Iterator[Market]:
    monkeypatch.delenv("AGENTMARKET_MODEL", raising=False)
    skills = [direct, direct_async, direct_stream, cut_stream, streamed_skill, no_model]
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node, \
            SellerAgent("llm", skills=skills, marketplace=node.address,
                        dispute_window_s=0) as seller, \
            BuyerAgent("buyer", marketplace=node.address) as buyer:
        buyer.fund("1.00", "USD")
        yield Market(node, seller, buyer, reports)


def _charged_as_agreed(deal: Any, result: Any) -> None:
    tariff = deal.tariff
    assert result.verified, result.problem
    assert result.usage.charged_atomic == tariff.charge_atomic(
        input_tokens=result.usage.input_tokens, output_tokens=result.usage.output_tokens) > 0


@pytest.mark.parametrize("name", ["direct", "direct_async"])
def test_a_direct_litellm_call_is_billed_what_litellm_reported(market: Market, name: str):
    deal = market.hire(name)
    result = market.buyer.invoke(deal, {"text": "agents", "prompt_tokens": 1234,
                                        "completion_tokens": 56})
    assert (result.usage.input_tokens, result.usage.output_tokens) == (1234, 56)
    _charged_as_agreed(deal, result)
    escrow = market.buyer.finish(deal)
    assert escrow.state == AgreementState.SETTLED
    assert escrow.captured_atomic == result.usage.charged_atomic


def test_a_direct_stream_read_to_its_end_is_billed_what_litellm_reported(market: Market):
    deal = market.hire("direct_stream")
    market.reports.usages.clear()
    market.reports.done.clear()
    result = market.buyer.invoke(deal, {"text": "metering"})
    assert market.reports.done.wait(10), "litellm reported the stream's usage"
    assert (result.usage.input_tokens, result.usage.output_tokens) == market.reports.usages[-1]
    _charged_as_agreed(deal, result)


def test_a_stream_whose_usage_never_comes_is_billed_its_prompt_and_the_output_bound(
        market: Market):
    deal = market.hire("cut_stream")
    result = market.buyer.invoke(deal, {"text": "cut"})
    assert result.usage.input_tokens == count_tokens(MODEL, messages=_messages("cut"))
    assert result.usage.output_tokens == BOUNDS["max_output_tokens"]
    _charged_as_agreed(deal, result)


def test_a_streaming_skill_over_a_direct_stream_bills_prompt_and_delivered_text(
        market: Market):
    deal = market.hire("streamed_skill")
    stream = market.buyer.stream(deal, {"text": "rivers"})
    text = "".join(stream)
    assert text == "pieces of rivers flow"
    usage = stream.usage
    assert usage is not None
    assert usage.input_tokens == count_tokens(MODEL, messages=_messages("rivers"))
    assert usage.output_tokens == count_tokens(MODEL, text)
    assert usage.charged_atomic == deal.tariff.charge_atomic(
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens) > 0


def test_a_token_priced_call_that_reports_no_usage_is_billed_by_the_rule(market: Market):
    deal = market.hire("no_model")
    result = market.buyer.invoke(deal, {"text": "nothing to see"})
    assert result.output == {"text": "ees ot gnihton"}
    request_json = '{"text": "nothing to see"}'
    assert result.usage.input_tokens == count_tokens(MODEL, request_json)
    assert result.usage.output_tokens == count_tokens(MODEL, '{"text": "ees ot gnihton"}')
    _charged_as_agreed(deal, result)
    assert market.buyer.finish(deal).captured_atomic == result.usage.charged_atomic > 0


def test_the_metering_callback_is_installed_once_and_calls_outside_skills_bill_nothing(
        market: Market):
    from agents import _litellm_hooks

    hooks = [c for c in litellm.callbacks if type(c).__name__ == "MeteringCallback"]
    assert len(hooks) == 1 and _litellm_hooks.installed()
    # outside any paid call there is no meter: the callback records nothing anywhere
    litellm.completion(model=MODEL, messages=_messages("free"), mock_response=_mock(5, 5, "x"))
