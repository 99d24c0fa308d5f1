"""Per-token billing through litellm: the charge is the agreed price x litellm's usage, exactly.

A real marketplace node (SQLite file, gRPC on port 0), a seller whose skill calls litellm with
`mock_response` (litellm's real code path and usage, no network), and a buyer. Every receipt,
the escrow and the ledger are checked to the atomic unit.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Any

import litellm
import pytest
from litellm import ModelResponse
from litellm.types.utils import Usage
from pydantic import BaseModel

from agents import BuyerAgent, SellerAgent, model_price, skill
from agents.llm import complete, text_of
from agents.metering import TOKENS, Meter, Tariff, token_charge_atomic
from marketplace import pricing
from marketplace.node import MarketplaceNode
from wallets.audit import check_balances
from wallets.currencies import currency, split

MODEL = "gpt-4o-mini"
MARKUP_BPS = 2_000
USAGES = [(1234, 567), (87, 3), (2999, 999)]


class Summary(BaseModel):
    summary: str


@dataclass
class Market:
    node: MarketplaceNode
    seller: SellerAgent
    buyer: BuyerAgent
    reported: list[Any] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)

    def wallet(self, owner: str) -> int:
        account = self.node.ledger.find_account(owner, "USD")
        return account.posted_atomic if account else 0


def _mock(prompt_tokens: int, completion_tokens: int, text: str) -> ModelResponse:
    return ModelResponse(model=MODEL, choices=[{"message": {"role": "assistant",
                                                            "content": text}}],
                         usage=Usage(prompt_tokens=prompt_tokens,
                                     completion_tokens=completion_tokens,
                                     total_tokens=prompt_tokens + completion_tokens))


@pytest.fixture
def market(tmp_path, monkeypatch) -> Iterator[Market]:
    monkeypatch.delenv("AGENTMARKET_MODEL", raising=False)
    reported: list[Any] = []
    costs: list[float] = []

    @skill(price=model_price(MODEL, "USD", markup_bps=MARKUP_BPS), max_input_tokens=4000,
           max_output_tokens=1000)
    def summarize(text: str, prompt_tokens: int, completion_tokens: int) -> Summary:
        """Summarise a text with an LLM (billed per token)."""
        reply = complete(MODEL, [{"role": "user", "content": f"Summarise: {text}"}],
                         mock_response=_mock(prompt_tokens, completion_tokens, text[:20]))
        reported.append(reply.usage)
        costs.append(litellm.completion_cost(completion_response=reply))
        return Summary(summary=text_of(reply))

    node = MarketplaceNode(f"sqlite:///{tmp_path / 'market.db'}", sweep_interval_s=3600).start()
    seller = SellerAgent("summarizer", skills=[summarize], marketplace=node.address).serve()
    buyer = BuyerAgent("researcher", marketplace=node.address)
    buyer.fund("1.00", "USD")
    yield Market(node, seller, buyer, reported, costs)
    seller.stop(0)
    buyer.close()
    node.stop(0)


def _deal(market: Market, quantity: int = 3):
    listing = market.buyer.discover("summarize", currency="USD")[0]
    deal = market.buyer.negotiate(listing, "summarize", quantity=quantity, budget="0.10",
                                  currency="USD")
    market.buyer.hire(deal)
    return deal


def test_the_list_price_is_litellms_model_cost_plus_markup_converted_once():
    listed = model_price(MODEL, "USD", markup_bps=MARKUP_BPS)
    cost = litellm.model_cost[MODEL]
    for per_token, per_1k_atomic in ((cost["input_cost_per_token"], listed.amount_atomic),
                                     (cost["output_cost_per_token"],
                                      listed.output_amount_atomic)):
        exact = Decimal(str(per_token)) * 1000 * 10**9 * (10_000 + MARKUP_BPS) / 10_000
        assert per_1k_atomic == int(exact.to_integral_value(rounding=ROUND_CEILING))
    assert isinstance(listed.amount_atomic, int) and listed.amount_atomic > 0


def test_each_charge_is_the_agreed_price_times_litellms_usage_to_the_atomic_unit(market):
    buyer_before = market.wallet(market.buyer.agent_id)
    deal = _deal(market, quantity=len(USAGES))
    terms = deal.body.terms
    assert terms.output_unit_price_atomic > 0
    charges = []
    for (prompt_tokens, completion_tokens), text in zip(USAGES, "abc", strict=True):
        result = market.buyer.invoke(deal, {"text": text * 50, "prompt_tokens": prompt_tokens,
                                            "completion_tokens": completion_tokens})
        reported = market.reported[-1]
        assert (result.usage.input_tokens, result.usage.output_tokens) == \
            (reported.prompt_tokens, reported.completion_tokens)
        assert (result.receipt.input_tokens, result.receipt.output_tokens) == \
            (prompt_tokens, completion_tokens)
        exact = prompt_tokens * terms.unit_price_atomic \
            + completion_tokens * terms.output_unit_price_atomic
        expected = -(-exact // 1000)  # ceil: the one rounding, once per call
        assert expected == pricing.charge_atomic(terms, input_tokens=prompt_tokens,
                                                 output_tokens=completion_tokens)
        assert result.usage.charged_atomic == result.receipt.charged_atomic == expected
        # at list price, the same money as litellm's own completion_cost plus the markup (the
        # per-1k prices convert exactly, so the two agree to the atomic unit); the negotiated
        # price is lower
        listed = model_price(MODEL, "USD", markup_bps=MARKUP_BPS)
        at_list = token_charge_atomic(prompt_tokens, completion_tokens, listed.amount_atomic,
                                      listed.output_amount_atomic)
        cost = Decimal(str(market.costs[-1])) * 10**9 * (10_000 + MARKUP_BPS) / 10_000
        assert at_list == int(cost.to_integral_value(rounding=ROUND_CEILING)) >= expected
        assert result.verified, result.problem
        charges.append(expected)
    escrow = market.buyer.finish(deal)
    total = sum(charges)
    seller_part, fee = split(total, market.node.settlement.fee_bps)
    assert (escrow.captured_atomic, escrow.fee_atomic) == (total, fee)
    assert escrow.refunded_atomic == terms.max_total_atomic - total
    assert market.wallet(market.seller.agent_id) == seller_part
    assert market.wallet(market.buyer.agent_id) == buyer_before - total
    assert check_balances(market.node.ledger).ok


def test_unspent_prepayment_carries_over_and_is_refunded(market):
    deal = _deal(market, quantity=3)
    session = market.buyer.sessions[deal.agreement_id]
    prepay = deal.call_max_atomic
    market.buyer.invoke(deal, {"text": "x", "prompt_tokens": 10, "completion_tokens": 5})
    first_paid = session.paid_atomic
    assert first_paid == prepay  # the first call prepays its maximum
    charged = session.charged_atomic
    assert 0 < charged < prepay
    assert market.seller.gate.unspent(deal.agreement_id) == prepay - charged
    market.buyer.invoke(deal, {"text": "y", "prompt_tokens": 10, "completion_tokens": 5})
    # the second voucher only tops the prepayment up to the maximum again
    assert session.paid_atomic - first_paid < prepay
    assert session.paid_atomic >= session.charged_atomic + 0
    assert market.seller.gate.unspent(deal.agreement_id) == \
        session.paid_atomic - session.charged_atomic
    escrow = market.buyer.finish(deal)
    assert escrow.captured_atomic == session.charged_atomic
    assert escrow.refunded_atomic == deal.body.terms.max_total_atomic - session.charged_atomic
    buyer_wallet = market.node.ledger.find_account(market.buyer.agent_id, "USD")
    assert buyer_wallet is not None and buyer_wallet.pending_debits_atomic == 0


def test_a_model_reporting_more_than_the_bounds_costs_the_seller_not_the_buyer(market):
    deal = _deal(market, quantity=1)
    result = market.buyer.invoke(deal, {"text": "z", "prompt_tokens": 3000,
                                        "completion_tokens": 5000})
    assert result.usage.charged_atomic == deal.call_max_atomic  # capped at the prepayment
    assert result.receipt.output_tokens == 5000 and result.verified, result.problem
    escrow = market.buyer.finish(deal)
    assert escrow.captured_atomic == result.usage.charged_atomic  # the marketplace agrees


def test_usd_amounts_format_exactly():
    usd = currency("USD")
    assert usd.format(123) == "0.000000123 USD"


def test_a_meter_settles_at_once_only_when_no_usage_report_is_awaited():
    """`settle_if_reported`: the aio seller bills on its loop only when billing cannot wait."""
    meter = Meter(Tariff(TOKENS, 1_000), 10_000)
    meter.begin_llm("call-1", 12)
    assert not meter.settle_if_reported()
    meter.end_llm("call-1", 10, 5)  # still open: the report counts
    assert (meter.input_tokens, meter.output_tokens) == (10, 5)
    assert meter.settle_if_reported()
    meter.begin_llm("late", 7)  # closed: a call started afterwards is not billed here
    meter.end_llm("late", 7, 7)
    assert (meter.input_tokens, meter.output_tokens) == (10, 5)
