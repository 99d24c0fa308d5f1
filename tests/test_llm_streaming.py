"""Streaming skills: billed as tokens flow, stopped when the voucher's prepaid budget is spent."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from collections.abc import Iterator

import pytest

from agents import BuyerAgent, SellerAgent, per_1k_tokens, skill
from agents.llm import count_tokens, stream
from marketplace.node import MarketplaceNode
from wallets.currencies import split

MODEL = "gpt-4o-mini"


@pytest.fixture
def market(tmp_path, monkeypatch):
    monkeypatch.delenv("AGENTMARKET_MODEL", raising=False)

    @skill(price=per_1k_tokens("0.001", "0.002", "USD"), max_input_tokens=200,
           max_output_tokens=400)
    def write(topic: str, words: int) -> Iterator[str]:
        """Write about a topic, streamed."""
        text = " ".join(f"{topic}{i}" for i in range(words))
        yield from stream(MODEL, [{"role": "user", "content": f"Write about {topic}"}],
                          mock_response=text)

    node = MarketplaceNode(f"sqlite:///{tmp_path / 'market.db'}", sweep_interval_s=3600).start()
    seller = SellerAgent("writer", skills=[write], marketplace=node.address).serve()
    buyer = BuyerAgent("reader", marketplace=node.address)
    buyer.fund("1.00", "USD")
    listing = buyer.discover("write", currency="USD")[0]
    deal = buyer.negotiate(listing, "write", quantity=2, budget="0.01", currency="USD")
    buyer.hire(deal)
    yield node, seller, buyer, deal
    seller.stop(0)
    buyer.close()
    node.stop(0)


def _charge(deal, input_tokens: int, output_tokens: int) -> int:
    terms = deal.body.terms
    return -(-(input_tokens * terms.unit_price_atomic
               + output_tokens * terms.output_unit_price_atomic) // 1000)


def test_a_stream_stops_at_the_prepaid_budget_with_a_receipt_for_what_was_delivered(market):
    node, _seller, buyer, deal = market
    budget = deal.call_max_atomic // 10
    call = buyer.stream(deal, {"topic": "agents", "words": 300}, max_atomic=budget)
    pieces = list(call)
    assert pieces and call.text == "".join(pieces)
    assert call.stop_reason == "budget"
    end = call.end
    assert end is not None and end.stop_reason == end.stop_reason.__class__(2)  # BUDGET
    usage = end.usage
    assert usage.charged_atomic <= usage.reserved_atomic
    prepaid = buyer.sessions[deal.agreement_id].paid_atomic
    assert usage.reserved_atomic == prepaid >= budget  # the voucher's budget (whole links)
    assert usage.output_tokens == count_tokens(MODEL, call.text)
    assert usage.charged_atomic == _charge(deal, usage.input_tokens, usage.output_tokens)
    # one more piece would have passed the budget
    assert _charge(deal, usage.input_tokens, usage.output_tokens + 1) > 0
    assert end.receipt.charged_atomic == usage.charged_atomic and not call.problem
    assert len(call.text.split()) < 300

    done = buyer.stream(deal, {"topic": "ok", "words": 20})
    assert len("".join(done).split()) == 20 and done.stop_reason == "complete"

    before = node.ledger.find_account(buyer.agent_id, "USD").posted_atomic
    escrow = buyer.finish(deal)
    total = call.charged_atomic + done.charged_atomic
    assert escrow.captured_atomic == total
    assert escrow.fee_atomic == split(total, node.settlement.fee_bps)[1]
    assert node.ledger.find_account(buyer.agent_id, "USD").posted_atomic == before - total
    assert node.ledger.find_account(buyer.agent_id, "USD").pending_debits_atomic == 0


def test_unary_invoke_of_a_streaming_skill_collects_and_bills_the_text(market):
    _node, _seller, buyer, deal = market
    result = buyer.invoke(deal, {"topic": "t", "words": 5})
    assert result.output["text"].split() == [f"t{i}" for i in range(5)]
    assert result.usage.output_tokens == count_tokens(MODEL, result.output["text"])
    assert result.usage.charged_atomic == _charge(deal, result.usage.input_tokens,
                                                  result.usage.output_tokens)
    assert result.verified, result.problem
